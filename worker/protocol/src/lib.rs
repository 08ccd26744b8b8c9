//! The launch protocol of buildcluster-worker (docs/protocol.md) as pure state machines: facts in,
//! the next step out, no I/O. This crate has no I/O dependency at all, so it cannot do any.
//!
//! [`table`] is the sequencer's decision logic, [`start`] one handling of a `start`, [`stop`] the
//! end of a `stop`, and [`wire`] their encoding on the broker. `tests/model.rs` model-checks them
//! together with stateright; the worker's `protocol` module is the I/O shell around them.
#![forbid(unsafe_code)]

pub mod start;
pub mod stop;
pub mod table;
pub mod wire;

pub use start::{
    CreateFailure, DeadReason, Fact, Misconfiguration, Outcome, Start, Step, WaitReason,
};
pub use stop::{StopEnd, StopStep};
pub use table::{
    Answer, Bounds, Build, Decision, Entry, LaunchState, Millis, Question, Record, Table, Version,
};
