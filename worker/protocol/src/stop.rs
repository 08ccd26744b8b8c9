//! A `stop` once the sequencer noted it: delete the build's pods, but only when no create
//! permitted before the stop can still land. Deleting earlier would free the pod's name for such
//! a create, and a second pod would exist (the model test shows it); the copy that holds the
//! permission finds the build stopped when it reports its launch, and deletes its own pod.

use super::table::Millis;

/// What to do with a noted stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopStep {
    /// No create is open: delete the build's pods everywhere now.
    Delete,
    /// A create permitted before the stop may still land: ask again after this long.
    Recheck {
        /// How long, at most (the open create may report before).
        after: Millis,
    },
}

/// How a stop handling ends once the deletes were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopEnd {
    /// No pod exists and none can appear: acknowledge.
    Settled,
    /// The executor where the build is placed did not answer: try again later.
    Unconfirmed,
}

/// The step after the sequencer's answer: `busy_for` is how long an open create may still land.
pub fn step(busy_for: Millis) -> StopStep {
    if busy_for > 0 {
        StopStep::Recheck { after: busy_for }
    } else {
        StopStep::Delete
    }
}

/// The end after the deletes: `answered` whether the executor the build is placed or launched
/// on answered.
pub fn settle(answered: bool) -> StopEnd {
    if answered {
        StopEnd::Settled
    } else {
        StopEnd::Unconfirmed
    }
}
