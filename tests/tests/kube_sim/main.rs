//! kube-sim through the real kube-rs client: API semantics, watches, faults, scripts, the
//! objects the worker uses, and the `kube-sim` binary.

mod api;
mod binary;
mod faults;
mod handle;
mod objects;
mod scripts;
mod support;
mod watch;
