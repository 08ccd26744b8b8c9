//! Telemetry: every metric the worker exports (docs/interface.md §7 Metrics), and log set-up.
//!
//! Each observable occurrence has one function here that records the metric (vector's
//! "internal events" habit), so names and label sets live in one place. No label ever takes an
//! unbounded value: never a build id, a pod name or an error text.

pub mod logging;
pub mod metrics;
