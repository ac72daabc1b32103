//! Why a reply's change could not be taken: the delta engine's errors, each with its verdict and a message.
//! Messages are read by people and fed back to the model on retry, so they say what failed, where, and what was expected; nothing here decides anything.

use std::fmt;

use serde::Serialize;

use super::Verdict;

/// At most this many lines of a hunk or of the program are quoted in a message: enough to
/// recognise the place, short enough to feed back to a model.
const QUOTE_LINES: usize = 12;

/// A failure of extraction or application. `verdict()` places it in the pipeline's taxonomy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum DeltaError {
    /// Nothing in the reply looks like a diff or a program.
    NoDiff { reason: String },
    /// Something diff-like that cannot be read as hunks, even tolerantly. `line` is 1-based
    /// in the diff text when known.
    MalformedDiff { line: Option<usize>, reason: String },
    /// An input over one of the `Limits`; judged a malformed diff.
    TooLarge { what: String, unit: String, size: usize, limit: usize },
    /// Hunk `hunk` (1-based, of `hunks`) matches nowhere in the program.
    DoesNotApply {
        hunk: usize,
        hunks: usize,
        reason: String,
        /// The hunk's context and removed lines, as the diff gives them.
        expected: Vec<String>,
        /// The most similar stretch of the program, when any line of it was similar.
        closest: Option<Closest>,
    },
    /// Hunk `hunk` matches equally well at two places (1-based lines of the program).
    Ambiguous { hunk: usize, hunks: usize, lines: [usize; 2], expected: Vec<String> },
}

/// The stretch of the program most like a hunk that did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closest {
    /// 1-based line of the program where the stretch starts.
    pub line: usize,
    pub lines: Vec<String>,
}

impl DeltaError {
    /// The verdict this failure yields.
    pub fn verdict(&self) -> Verdict {
        match self {
            DeltaError::NoDiff { .. } => Verdict::NoDiff,
            DeltaError::MalformedDiff { .. } | DeltaError::TooLarge { .. } => Verdict::MalformedDiff,
            DeltaError::DoesNotApply { .. } => Verdict::DoesNotApply,
            DeltaError::Ambiguous { .. } => Verdict::Ambiguous,
        }
    }

    pub(crate) fn malformed(line: Option<usize>, reason: impl Into<String>) -> Self {
        DeltaError::MalformedDiff { line, reason: reason.into() }
    }

    pub(crate) fn too_large(what: &str, unit: &str, size: usize, limit: usize) -> Self {
        DeltaError::TooLarge { what: what.to_string(), unit: unit.to_string(), size, limit }
    }
}

impl std::error::Error for DeltaError {}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::NoDiff { reason } => write!(
                f,
                "no diff found: {reason}. Reply with a unified diff (@@ hunk headers, lines \
                 starting with ' ', '-' or '+') inside a ```diff fence."
            ),
            DeltaError::MalformedDiff { line, reason } => {
                write!(f, "malformed diff")?;
                if let Some(line) = line {
                    write!(f, " at line {line} of the diff")?;
                }
                write!(f, ": {reason}")
            }
            DeltaError::TooLarge { what, unit, size, limit } => {
                write!(f, "the {what} is too large: {size} {unit}, over the limit of {limit} {unit}")
            }
            DeltaError::DoesNotApply { hunk, hunks, reason, expected, closest } => {
                writeln!(f, "hunk {hunk} of {hunks} does not apply: {reason}")?;
                if !expected.is_empty() {
                    writeln!(f, "The hunk expects these lines in the program:")?;
                    quote(f, expected)?;
                }
                if let Some(c) = closest {
                    writeln!(f, "The most similar lines of the program, from line {}:", c.line)?;
                    quote(f, &c.lines)?;
                }
                Ok(())
            }
            DeltaError::Ambiguous { hunk, hunks, lines, expected } => {
                writeln!(
                    f,
                    "hunk {hunk} of {hunks} is ambiguous: it matches equally well at line {} \
                     and at line {} of the program. Give correct @@ line numbers or more \
                     unchanged context lines so that it matches in one place.",
                    lines[0], lines[1]
                )?;
                if !expected.is_empty() {
                    writeln!(f, "The hunk's lines:")?;
                    quote(f, expected)?;
                }
                Ok(())
            }
        }
    }
}

fn quote(f: &mut fmt::Formatter<'_>, lines: &[String]) -> fmt::Result {
    for line in lines.iter().take(QUOTE_LINES) {
        writeln!(f, "    |{line}")?;
    }
    if lines.len() > QUOTE_LINES {
        writeln!(f, "    … {} more lines", lines.len() - QUOTE_LINES)?;
    }
    Ok(())
}
