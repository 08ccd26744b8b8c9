// Command bcw-control-plane runs a real Kubernetes control plane on 127.0.0.1 for
// buildcluster-worker's tests and demo: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and kwok (the kubelet stand-in). One binary holds them all, as k3s does;
// `up` starts each as a process of its own and `down` stops them.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const usage = `usage: bcw-control-plane COMMAND [ARGS]

  up --state DIR --repo DIR   start everything, print ADMIN_KUBECONFIG= and WORKER_KUBECONFIG=
  down --state DIR            stop everything started by up with that state directory

  etcd | apiserver | controller-manager | scheduler | kwok [FLAGS]
                              one component (up starts these; FLAGS as the upstream binary's)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]
	var err error
	switch sub {
	case "up":
		err = up(args)
	case "down":
		err = down(args)
	case "etcd":
		err = runEtcd(args)
	case "apiserver":
		os.Exit(runCobra(apiserver.NewAPIServerCommand(), args))
	case "controller-manager":
		os.Exit(runCobra(controllermanager.NewControllerManagerCommand(), args))
	case "scheduler":
		os.Exit(runCobra(scheduler.NewSchedulerCommand(scheduler.WithPlugin(neverSchedulableName, newNeverSchedulable)), args))
	case "kwok":
		err = runKwok(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "bcw-control-plane: unknown command %q\n\n%s", sub, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bcw-control-plane %s: %v\n", sub, err)
		os.Exit(1)
	}
}

// runCobra runs an upstream component's command with its own flag handling (klog, feature
// gates), exactly as its main package does.
func runCobra(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
