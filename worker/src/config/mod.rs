//! Configuration: the typed tree of contract section 3, how it is loaded (YAML file plus `BCW_`
//! environment, Screwdriver spellings) and how it is validated.
//!
//! Validation happens once, at start-up and in `check-config`; everything after that works with
//! values that cannot be wrong.

pub mod de;
mod model;

pub use model::*;
