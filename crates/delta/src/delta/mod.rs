//! The delta engine's text half: find the unified diff in a model's reply and apply it to the program it was made against.
//! It only ever transforms the text it is handed: it never reads or writes a file named in a diff, and never panics on any input.
//!
//! The pipeline is `extract` (reply → diff or whole program) then `apply` (base + diff → new
//! text, with every tolerance used recorded). `apply_reply` runs both. Every failure is a
//! `DeltaError` whose `verdict()` is one of the pipeline's verdicts. `judge` runs the whole
//! front half on a reply (extract, apply, parse, check, novelty) against a prepared `Base` and
//! returns a `Judgement`: the verdict, its explanation, and for `ok` the canonical program and
//! diff.

mod apply;
mod error;
mod extract;
pub mod grammar;
mod hunk;
mod locate;
pub mod verdict;

pub use apply::{apply, Applied, ApplyOptions, Tolerance};
pub use error::DeltaError;
pub use extract::{extract, Extracted};
pub use verdict::{judge, judge_reply, unified, Base, Judgement, Options, Timings, UnknownVerdict, Verdict};

/// Bounds on the work the engine does for one reply, so a pathological reply (a megabyte of
/// hunks, a program of identical lines) gets a verdict quickly instead of a hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest reply, diff or base program accepted, in bytes.
    pub max_bytes: usize,
    /// Most hunks in one diff.
    pub max_hunks: usize,
    /// Most lines in a diff or a base program.
    pub max_lines: usize,
    /// Most line comparisons the tolerant search may make for one diff.
    pub max_work: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 1 << 20, max_hunks: 10_000, max_lines: 100_000, max_work: 20_000_000 }
    }
}

/// Extracts the change from a model's `reply` and applies it to `base`.
///
/// A reply holding a whole program instead of a diff is taken as a full replacement and
/// recorded as the tolerance `full_program`.
pub fn apply_reply(base: &str, reply: &str, opts: ApplyOptions) -> Result<Applied, DeltaError> {
    match extract(reply, &opts.limits)? {
        Extracted::Diff { text, .. } => apply(base, &text, opts),
        Extracted::FullProgram { text } => Ok(Applied { text, tolerances: vec![Tolerance::FullProgram] }),
    }
}
