//! Configuration: the typed tree of docs/interface.md §2, how it is loaded (YAML file plus `BCW_`
//! environment, Screwdriver spellings and, with `--compat screwdriver`, the original worker's
//! files and variables), how it is validated and how it is shown.
//!
//! Validation happens once, at start-up and in `check-config`: [`load`] returns either settings
//! that meet every rule or every problem found. Everything after that works with values that
//! cannot be wrong. This module never reads the process environment itself and never prints a
//! secret.
//!
//! - `schema`: the key tree, derived from the typed model; `normalize`: spellings onto it, layer
//!   merge;
//! - `load`: sources, layers, typing; `validate`: the rules; `compat`: the Screwdriver layout;
//! - `credentials`: broker URI and cluster token; `render`: the effective configuration as YAML.

mod compat;
mod credentials;
pub mod de;
mod issue;
mod load;
mod model;
mod normalize;
mod reference;
mod render;
mod schema;
mod validate;

pub use compat::{IGNORED, IgnoredKey, screwdriver_env_vars};
pub use credentials::mask_url;
pub use issue::{ConfigErrors, ConfigIssue};
pub use load::{Compat, LoadOptions, Loaded, NON_CONFIG_ENV, load, load_with_notices};
pub use model::*;
pub use reference::key_reference;
pub use render::render_effective;
pub use validate::SUPPORTED_PLUGINS;
