//! Operator commands besides `run`: `check-config --connect` ([`check`]), `enqueue`
//! ([`enqueue`]) and `dead` ([`dead`]).
//!
//! Each command owns its argument types (clap) and its output; `main.rs` only wires them in.
//! They reach the broker as the worker does ([`crate::preflight::broker::connect`]), publish
//! only with confirms ([`publish`]), refuse bad input before anything is sent, and never print a
//! secret (passwords are masked, build tokens never shown).

pub mod check;
pub mod dead;
pub mod enqueue;
pub mod publish;

use std::process::ExitCode;

/// Exit status of a command that could not do its work (the broker was unreachable, a
/// publish was refused).
pub fn failed() -> ExitCode {
    ExitCode::from(1)
}

/// Exit status for bad input (invalid messages, impossible filters) or failed checks, as
/// `check-config` uses it.
pub fn invalid() -> ExitCode {
    ExitCode::from(2)
}
