//! The worker end to end: real RabbitMQ, kube-sim clusters over real HTTP, the real kube-rs
//! client. Each test has its own queues and exchanges and removes them at the end.

mod broker;
mod cdevents;
mod check_connect;
mod compat;
mod dead;
mod end_to_end;
mod enqueue;
mod lifecycle;
mod operations;
mod protocol;
mod rbac;
mod resilience;
mod support;
mod tls;
