//! The search: cycles of generate → verdict → train → curate over a resumable run store, and the reports of a run.
//! It drives the front end, the delta engine and training through their public APIs; it re-implements none of them.
//!
//! - [`config`]: `run.toml`, with the paper's protocol as defaults.
//! - [`mutate`] and [`generate`]: the generators (`mutate`, `openai`) behind one interface.
//! - [`store`]: the run store (SQLite, `run.db` in the run folder), claimed → finished.
//! - [`run`]: the cycle driver, its workers and progress.
//! - [`curate`]: the supervised corpus after each cycle, the fine-tune step between cycles.

pub mod config;
pub mod corpus;
pub mod curate;
pub mod generate;
pub mod mutate;
pub mod report;
pub mod run;
pub mod store;
pub mod worker;

pub use config::{ConfigError, GeneratorKind, SearchConfig};
pub use run::{reeval, resume, start, Reeval, RunOptions, SearchError, Summary};
pub use store::Store;
