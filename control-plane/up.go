package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// serviceIP is the first address of the service range: the `kubernetes` Service's address,
// named in the serving certificate. It is only data here; nothing listens on it.
const serviceIP = "10.96.0.1"

// components in start order; down stops them in reverse.
var components = []string{"etcd", "apiserver", "controller-manager", "scheduler", "kwok"}

// layout names the files of one control plane inside its state directory.
type layout struct{ dir string }

func (l layout) path(parts ...string) string {
	return filepath.Join(append([]string{l.dir}, parts...)...)
}
func (l layout) admin() string  { return l.path("admin.kubeconfig") }
func (l layout) worker() string { return l.path("worker.kubeconfig") }
func (l layout) log(name string) string {
	return l.path("logs", name+".log")
}
func (l layout) pidFile(name string) string { return l.path("pids", name+".pid") }

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	stateDir := fs.String("state", "", "state directory (certificates, kubeconfigs, data, logs)")
	repo := fs.String("repo", "", "the project's root: deploy/base/ is applied from there")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stateDir == "" || *repo == "" {
		return errors.New("--state and --repo are required")
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	root, err := filepath.Abs(*repo)
	if err != nil {
		return err
	}
	l := layout{dir}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// A control plane of this state directory that still answers is reused as it is.
	if allRunning(l) && apiReady(ctx, l.admin()) == nil {
		fmt.Fprintf(os.Stderr, "control plane already running (logs: %s)\n", l.path("logs"))
		printKubeconfigs(l)
		return nil
	}
	if err := stopAll(l); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	for _, d := range []string{"logs", "pids", "etcd"} {
		if err := os.MkdirAll(l.path(d), 0o755); err != nil {
			return err
		}
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort := ports[0], ports[1], ports[2]
	if err := writePKI(dir, apiPort); err != nil {
		return fmt.Errorf("certificates and kubeconfigs: %w", err)
	}
	if err := writeSchedulerConfig(l); err != nil {
		return err
	}
	if err := writeKwokStages(l); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "control plane: state and logs in %s\n", dir)

	if err := start(l, "etcd", "--data-dir="+l.path("etcd"), "--client-port="+strconv.Itoa(etcdPort), "--peer-port="+strconv.Itoa(peerPort)); err != nil {
		return err
	}
	if err := waitFor(ctx, l, "etcd", func() error { return dial(etcdPort) }); err != nil {
		return err
	}
	if err := start(l, "apiserver", apiserverArgs(l, etcdPort, apiPort)...); err != nil {
		return err
	}
	if err := waitFor(ctx, l, "apiserver", func() error { return apiReady(ctx, l.admin()) }); err != nil {
		return err
	}
	if err := start(l, "controller-manager", controllerManagerArgs(l)...); err != nil {
		return err
	}
	if err := start(l, "scheduler", "--config="+l.path("scheduler.yaml"), "--secure-port=0"); err != nil {
		return err
	}
	if err := start(l, "kwok", kwokArgs(l)...); err != nil {
		return err
	}
	if err := bootstrap(ctx, l, root); err != nil {
		return fmt.Errorf("bootstrap: %w (logs in %s)", err, l.path("logs"))
	}
	printKubeconfigs(l)
	return nil
}

// printKubeconfigs prints the two lines of docs/interface.md §9, and nothing else, on stdout.
func printKubeconfigs(l layout) {
	fmt.Printf("ADMIN_KUBECONFIG=%s\nWORKER_KUBECONFIG=%s\n", l.admin(), l.worker())
}

func apiserverArgs(l layout, etcdPort, apiPort int) []string {
	return []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + l.path("apiserver.crt"),
		"--tls-private-key-file=" + l.path("apiserver.key"),
		"--client-ca-file=" + l.path("ca.crt"),
		"--token-auth-file=" + l.path("tokens.csv"),
		"--authorization-mode=RBAC",
		// No --enable-admission-plugins: the API server's default set, as a cluster has it.
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + l.path("sa.pub"),
		"--service-account-signing-key-file=" + l.path("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		// Screwdriver's executors may run privileged builds (`privileged: true`).
		"--allow-privileged=true",
		"--profiling=false",
		// The `kubernetes` Service would point at 127.0.0.1, which Endpoints refuse.
		"--endpoint-reconciler-type=none",
	}
}

func controllerManagerArgs(l layout) []string {
	return []string{
		"--kubeconfig=" + l.path("controller-manager.kubeconfig"),
		"--secure-port=0",
		"--leader-elect=false",
		// Every default controller (among them the garbage collector, the service-account
		// controller that creates each namespace's `default`, and the node lifecycle one).
		"--controllers=*",
		// Each controller acts as its own ServiceAccount, bound to its system:controller:*
		// role, as in a kubeadm cluster (the manager's own user may do little by itself).
		"--use-service-account-credentials=true",
		"--root-ca-file=" + l.path("ca.crt"),
		"--service-account-private-key-file=" + l.path("sa.key"),
		"--cluster-name=bcw-control-plane",
	}
}

func kwokArgs(l layout) []string {
	return []string{
		"--kubeconfig=" + l.path("kwok.kubeconfig"),
		"--config=" + l.path("kwok-stages.yaml"),
		"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
		"--node-lease-duration-seconds=40",
		"--node-ip=127.0.0.1",
		"--cidr=10.244.0.1/16",
	}
}

// start runs `<this binary> <name> <args>` in a session of its own (it outlives `up`), its
// output to logs/<name>.log, its pid in pids/<name>.pid.
func start(l layout, name string, args ...string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logFile, err := os.Create(l.log(name))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Dir = l.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Process.Release(); err != nil {
		return err
	}
	return os.WriteFile(l.pidFile(name), []byte(strconv.Itoa(pid)), 0o644)
}

// waitFor polls check until it passes, failing early (with the log's tail) when the
// component exited.
func waitFor(ctx context.Context, l layout, name string, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		if pid, ok := readPid(l, name); !ok || !alive(pid) {
			return fmt.Errorf("%s exited during start-up; the end of %s:\n%s", name, l.log(name), tail(l.log(name), 30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready in time (last error: %v); see %s", name, err, l.log(name))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func apiReady(ctx context.Context, kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.Timeout = 5 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	_, err = client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err
}

func dial(port int) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	stateDir := fs.String("state", "", "state directory given to up")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stateDir == "" {
		return errors.New("--state is required")
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	return stopAll(layout{dir})
}

// stopAll stops every component of this state directory: SIGTERM in reverse start order,
// SIGKILL for any still there after 5 s (the API server's graceful shutdown waits for open
// watches; nothing here is worth keeping).
func stopAll(l layout) error {
	var pids []int
	for i := len(components) - 1; i >= 0; i-- {
		name := components[i]
		pid, ok := readPid(l, name)
		if ok && ours(l, pid) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			pids = append(pids, pid)
		}
		_ = os.Remove(l.pidFile(name))
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return nil
}

func allRunning(l layout) bool {
	for _, name := range components {
		pid, ok := readPid(l, name)
		if !ok || !ours(l, pid) {
			return false
		}
	}
	return true
}

func readPid(l layout, name string) (int, bool) {
	b, err := os.ReadFile(l.pidFile(name))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// ours is true when pid is a live process started for this state directory (a pid file
// left behind may name an unrelated process by now).
func ours(l layout, pid int) bool {
	if !alive(pid) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(cmdline), l.dir)
}

// alive is true for a running process (not a zombie).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
