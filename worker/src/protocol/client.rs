//! The asking side (filled in with the shell).
