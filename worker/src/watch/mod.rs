//! Watch: one pod watch per executor, run by the replica that holds the executor's reporter
//! Lease, turning pod phases into lifecycle events, failing builds that cannot start, and
//! collecting garbage.

pub mod assess;
mod gc;
pub mod handover;
pub mod lease;
pub mod plan;
pub mod reporter;
mod slim;
