//! The search: cycles of generate → verdict → train → curate over a resumable run store, and the reports of a run.
//! It drives the front end, the delta engine and training through their public APIs; it re-implements none of them.

pub mod config;
pub mod mutate;

pub use config::{ConfigError, GeneratorKind, SearchConfig};
