package main

import (
	"context"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
)

// neverSchedulableName is the scheduler plugin that keeps kube-sim's "never schedulable"
// image convention on the real scheduler: no node fits such a pod, and the scheduler itself
// reports it (PodScheduled=False, reason Unschedulable) as it does for any other filter.
const neverSchedulableName = "BcwNeverSchedulable"

// neverSchedulableImage is the image prefix (of the first container) that no node accepts.
const neverSchedulableImage = "sim/unschedulable"

type neverSchedulable struct{}

func newNeverSchedulable(_ context.Context, _ runtime.Object, _ fwk.Handle) (fwk.Plugin, error) {
	return neverSchedulable{}, nil
}

func (neverSchedulable) Name() string { return neverSchedulableName }

func (neverSchedulable) Filter(_ context.Context, _ fwk.CycleState, pod *v1.Pod, _ fwk.NodeInfo) *fwk.Status {
	if len(pod.Spec.Containers) > 0 && strings.HasPrefix(pod.Spec.Containers[0].Image, neverSchedulableImage) {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node(s) do not run image "+neverSchedulableImage)
	}
	return nil
}
