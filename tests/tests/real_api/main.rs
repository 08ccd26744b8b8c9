//! The worker, and kube-sim, against a real Kubernetes control plane: kube-apiserver with
//! token authentication, RBAC and the default admission plugins, the controller-manager's
//! garbage collector, the scheduler, and kwok as the kubelet (`scripts/control-plane up`).
//!
//! `scripts/test` starts the control plane once and exports `ADMIN_KUBECONFIG` and
//! `WORKER_KUBECONFIG`; run by hand without them, every test here skips with a loud message
//! (with `REAL_API_REQUIRED=1`, as scripts/test sets, a missing variable fails instead).
//! All tests share the cluster's `builds` namespace: each uses executor names and build ids
//! of its own, so the pods, Leases and events of one test never meet another's.

mod conformance;
mod rbac;
mod support;
mod worker;
