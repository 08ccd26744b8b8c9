package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
)

const (
	// buildsNamespace is where the worker's build pods run in tests and the demo.
	buildsNamespace = "builds"
	// workerIdentity names the ServiceAccount, Role and RoleBinding of deploy/base/.
	workerIdentity = "buildcluster-worker"
	// kwokNodeAnnotation marks the Nodes kwok plays the kubelet of.
	kwokNodeAnnotation = "kwok.x-k8s.io/node"
	// nodes is how many Nodes there are (more than one, so the scheduler chooses).
	nodes = 2
)

// podStages is how kwok moves pods: the image conventions of kube-sim (stages/pods.yaml).
//
//go:embed stages/pods.yaml
var podStages string

// imageClass is the jq expression naming a pod's class (stages/pods.yaml) from the image
// of its first container.
var imageClass = `(.spec.containers[0].image // "") as $i | ` +
	`if ($i | startswith("sim/forever")) then "forever" ` +
	`elif ($i | test("^sim/exit-[0-9]+")) then "exit" ` +
	`elif ($i | startswith("sim/oom")) then "oom" ` +
	`elif ($i | startswith("sim/crash-loop")) then "crash-loop" ` +
	`elif ($i | startswith("sim/init-fails")) then "init-fails" ` +
	`elif ($i | startswith("sim/invalid-image")) then "invalid-image" ` +
	`elif ($i | startswith("sim/no-such-image")) then "no-such-image" ` +
	`elif ($i | startswith("sim/config-error")) then "config-error" ` +
	`elif ($i | startswith("sim/create-error")) then "create-error" ` +
	`else "normal" end`

// deployFiles are applied from the project's deploy/base/ as shipped, into the builds
// namespace, as kustomize's `namespace:` would place them.
var deployFiles = []string{"serviceaccount.yaml", "role.yaml", "rolebinding.yaml"}

// bootstrap makes the cluster what the tests expect: Nodes that kwok runs, the builds
// namespace with the RuntimeClass kata, the worker's identity bound to the shipped Role, and
// a kubeconfig with that identity's token.
func bootstrap(ctx context.Context, l layout, repo string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.admin())
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: buildsNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("namespace %s: %w", buildsNamespace, err)
	}
	kata := &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: "kata"}, Handler: "kata"}
	if _, err := client.NodeV1().RuntimeClasses().Create(ctx, kata, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("RuntimeClass kata: %w", err)
	}
	for i := range nodes {
		if _, err := client.CoreV1().Nodes().Create(ctx, node(fmt.Sprintf("kwok-node-%d", i)), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	for _, f := range deployFiles {
		if err := applyShipped(ctx, client, filepath.Join(repo, "deploy", "base", f)); err != nil {
			return err
		}
	}
	// Pods need their namespace's `default` ServiceAccount (the ServiceAccount admission
	// plugin refuses them before the controller made it), and Ready, untainted Nodes.
	if err := poll(ctx, "the default ServiceAccount in "+buildsNamespace, func() error {
		_, err := client.CoreV1().ServiceAccounts(buildsNamespace).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	if err := poll(ctx, "Ready nodes without taints", func() error { return nodesReady(ctx, client) }); err != nil {
		return err
	}
	expiry := int64((48 * time.Hour).Seconds())
	tr, err := client.CoreV1().ServiceAccounts(buildsNamespace).CreateToken(ctx, workerIdentity,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token of ServiceAccount %s: %w", workerIdentity, err)
	}
	ca, err := os.ReadFile(l.path("ca.crt"))
	if err != nil {
		return err
	}
	port := strings.TrimPrefix(cfg.Host, "https://127.0.0.1:")
	var apiPort int
	if _, err := fmt.Sscanf(port, "%d", &apiPort); err != nil {
		return fmt.Errorf("API server address %q: %w", cfg.Host, err)
	}
	return writeKubeconfig(l.worker(), apiPort, ca, "system:serviceaccount:"+buildsNamespace+":"+workerIdentity, tr.Status.Token, buildsNamespace)
}

// applyShipped creates the objects of one deploy/base/ file in the builds namespace. A
// ServiceAccount subject without a namespace gets the builds namespace, as kustomize does.
func applyShipped(ctx context.Context, client kubernetes.Interface, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	reader := utilyaml.NewYAMLReader(bufioReader(data))
	for {
		doc, err := reader.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		switch o := obj.(type) {
		case *v1.ServiceAccount:
			o.Namespace = buildsNamespace
			_, err = client.CoreV1().ServiceAccounts(buildsNamespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			o.Namespace = buildsNamespace
			_, err = client.RbacV1().Roles(buildsNamespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			o.Namespace = buildsNamespace
			for i := range o.Subjects {
				if o.Subjects[i].Kind == rbacv1.ServiceAccountKind && o.Subjects[i].Namespace == "" {
					o.Subjects[i].Namespace = buildsNamespace
				}
			}
			_, err = client.RbacV1().RoleBindings(buildsNamespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			return fmt.Errorf("%s: unexpected kind %T", path, obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

// node is a Node that kwok plays the kubelet of, with room for many builds.
func node(name string) *v1.Node {
	capacity := v1.ResourceList{
		v1.ResourceCPU:    resource.MustParse("64"),
		v1.ResourceMemory: resource.MustParse("256Gi"),
		v1.ResourcePods:   resource.MustParse("250"),
	}
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{kwokNodeAnnotation: "fake"},
			Labels: map[string]string{
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
		},
		Status: v1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
}

func nodesReady(ctx context.Context, client kubernetes.Interface) error {
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(list.Items) < nodes {
		return fmt.Errorf("%d nodes", len(list.Items))
	}
	for _, n := range list.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			ready = ready || (c.Type == v1.NodeReady && c.Status == v1.ConditionTrue)
		}
		if !ready || len(n.Spec.Taints) > 0 {
			return fmt.Errorf("node %s: ready %v, taints %v", n.Name, ready, n.Spec.Taints)
		}
	}
	return nil
}

func poll(ctx context.Context, what string, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %v", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeKwokStages writes kwok's configuration: its own node stages (initialise, heartbeat
// by Lease) and this project's pod stages.
func writeKwokStages(l layout) error {
	pods := strings.ReplaceAll(podStages, "@CLASS@", imageClass)
	docs := []string{nodefast.DefaultNodeInit, nodeheartbeat.DefaultNodeHeartbeatWithLease, pods}
	return os.WriteFile(l.path("kwok-stages.yaml"), []byte(strings.Join(docs, "\n---\n")), 0o644)
}

// writeSchedulerConfig enables the never-schedulable filter in the default profile.
func writeSchedulerConfig(l layout) error {
	conf := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
leaderElection:
  leaderElect: false
profiles:
  - schedulerName: default-scheduler
    plugins:
      filter:
        enabled:
          - name: %s
`, l.path("scheduler.kubeconfig"), neverSchedulableName)
	return os.WriteFile(l.path("scheduler.yaml"), []byte(conf), 0o644)
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
