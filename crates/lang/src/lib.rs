//! nasc-lang: the arch language, from text to a checked graph. The front end of nasc.
//! Pure computation on text and small trees: no I/O, no Burn, microseconds per program.
//!
//! - [`syntax`]: text ↔ tree (pest grammar, fast path, canonical form, printer).
//! - [`check`]: the shape checker; a checked program is a [`check::Graph`] the back end compiles.
//! - [`diag`]: diagnostics with spans, rendered for people and as JSON.

pub mod check;
pub mod diag;
pub mod span;
pub mod syntax;
