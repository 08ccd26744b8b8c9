//! Protocol: the I/O shell of the launch protocol (docs/protocol.md). The decisions themselves
//! are the pure state machines of the `bcw-protocol` crate, re-exported here; this module runs
//! the sequencer's table over the claims queue and the ledger ([`sequencer`]) and lets a handler
//! ask it ([`client`]). It never talks to a Kubernetes API.

mod asker;
pub mod client;
pub(crate) mod decider;
pub mod sequencer;

pub use bcw_protocol::*;
