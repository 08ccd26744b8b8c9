//! The sequencer shell (filled in with the shell).
