//! The one error type of the crate: every failure names the file (or URL) and what is wrong.
//! It must not hide a cause behind a generic message, and nothing here may panic.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong while finding, reading, caching or downloading a dataset.
///
/// The `Display` text is the whole message a person needs: it starts with the
/// file or URL at fault, says what is wrong with it, and where there is a
/// remedy (fetching the data, say) it says which.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown dataset `{name}`; known datasets: {known}")]
    UnknownDataset { name: String, known: String },

    #[error("unknown split `{0}`; splits are train, test and val")]
    UnknownSplit(String),

    #[error("{dataset} has no {split} split; it has: {available}")]
    NoSuchSplit { dataset: String, split: String, available: String },

    #[error("{}: missing{}", path.display(), hint_suffix(hint))]
    Missing { path: PathBuf, hint: String },

    #[error("{}: truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },

    #[error("{}: corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },

    #[error("{}: unsupported: {detail}", path.display())]
    Unsupported { path: PathBuf, detail: String },

    /// An operating-system error; `action` says what was being done ("cannot read").
    #[error("{}: {action}: {error}", path.display())]
    Io { path: PathBuf, action: &'static str, error: io::Error },

    #[error("{}: checksum mismatch: expected sha256 {expected}, got {actual}; the download was removed, run the fetch again", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },

    #[error("{url}: {detail}")]
    Download { url: String, detail: String },

    /// A caller handed the crate inconsistent values (a batch buffer of the
    /// wrong length, an index past the end): a bug in the caller, reported as
    /// a value all the same.
    #[error("{0}")]
    Invalid(String),
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

impl DataError {
    pub(crate) fn io(path: &Path, action: &'static str, error: io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), action, error }
    }

    pub(crate) fn truncated(path: &Path, detail: impl fmt::Display) -> Self {
        DataError::Truncated { path: path.to_path_buf(), detail: detail.to_string() }
    }

    pub(crate) fn corrupt(path: &Path, detail: impl fmt::Display) -> Self {
        DataError::Corrupt { path: path.to_path_buf(), detail: detail.to_string() }
    }

    pub(crate) fn unsupported(path: &Path, detail: impl fmt::Display) -> Self {
        DataError::Unsupported { path: path.to_path_buf(), detail: detail.to_string() }
    }

    pub(crate) fn missing(path: &Path, hint: impl fmt::Display) -> Self {
        DataError::Missing { path: path.to_path_buf(), hint: hint.to_string() }
    }
}
