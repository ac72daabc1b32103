//! CIFAR-10 and CIFAR-100, binary versions: fixed-size records of label byte(s) then 3x32x32 pixels.
//! It must not read the Python (pickle) or MATLAB versions, and never drops a partial record.

use std::path::{Path, PathBuf};

use super::{bytes, read_file, Decoded};
use crate::catalog::Split;
use crate::error::DataError;

const PIXELS: usize = 3 * 32 * 32;
const RECORDS_PER_CIFAR10_FILE: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Record: label (0..10), pixels.
    Ten,
    /// Record: coarse label (0..20), fine label (0..100), pixels; nasc uses the fine label.
    Hundred,
}

impl Variant {
    fn record_len(self) -> usize {
        match self {
            Variant::Ten => 1 + PIXELS,
            Variant::Hundred => 2 + PIXELS,
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Variant::Ten => "cifar-10-batches-bin",
            Variant::Hundred => "cifar-100-binary",
        }
    }
}

/// The record files of a split, in the folder the archive unpacks to (or
/// directly under `root`), with the record count each must hold.
pub(crate) fn locate(root: &Path, variant: Variant, split: Split) -> Result<Vec<(PathBuf, usize)>, DataError> {
    let folder = root.join(variant.folder());
    let dir = if folder.is_dir() { folder } else { root.to_path_buf() };
    let files: Vec<(String, usize)> = match (variant, split) {
        (Variant::Ten, Split::Train) => {
            (1..=5).map(|i| (format!("data_batch_{i}.bin"), RECORDS_PER_CIFAR10_FILE)).collect()
        }
        (Variant::Ten, _) => vec![("test_batch.bin".to_string(), RECORDS_PER_CIFAR10_FILE)],
        (Variant::Hundred, Split::Train) => vec![("train.bin".to_string(), 50_000)],
        (Variant::Hundred, _) => vec![("test.bin".to_string(), 10_000)],
    };
    files
        .into_iter()
        .map(|(name, records)| {
            let path = dir.join(&name);
            if path.is_file() {
                Ok((path, records))
            } else {
                // Name the path inside the archive's folder: that is where a fetch puts it.
                Err(DataError::missing(&root.join(variant.folder()).join(&name), ""))
            }
        })
        .collect()
}

/// Reads the record files in order. With `check_counts`, each file must
/// hold the number of records the release has, which catches a file cut
/// exactly at a record boundary.
pub(crate) fn decode(files: &[(PathBuf, usize)], variant: Variant, check_counts: bool) -> Result<Decoded, DataError> {
    let record = variant.record_len();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (path, published) in files {
        let data = read_file(path)?;
        let whole = data.len() / record;
        let over = data.len() % record;
        if over != 0 {
            return Err(DataError::truncated(
                path,
                format!(
                    "holds {}, not a whole number of {record}-byte records ({} and {} over)",
                    bytes(data.len()),
                    records(whole),
                    bytes(over)
                ),
            ));
        }
        if check_counts && whole != *published {
            let detail = format!("holds {whole} records of {record} bytes, the published file has {published}");
            return Err(if whole < *published {
                DataError::truncated(path, detail)
            } else {
                DataError::corrupt(path, detail)
            });
        }
        images.reserve(whole * PIXELS);
        labels.reserve(whole);
        for (i, rec) in data.chunks_exact(record).enumerate() {
            let label = match variant {
                Variant::Ten => check_label(path, i, rec[0], 10, "label")?,
                Variant::Hundred => {
                    check_label(path, i, rec[0], 20, "coarse label")?;
                    check_label(path, i, rec[1], 100, "fine label")?
                }
            };
            labels.push(label);
            // The binary version already stores each image as R, G, B planes of 32 rows.
            images.extend_from_slice(&rec[record - PIXELS..]);
        }
    }
    Ok(Decoded { images, labels })
}

fn check_label(path: &Path, record: usize, label: u8, classes: u8, what: &str) -> Result<u16, DataError> {
    if label < classes {
        Ok(u16::from(label))
    } else {
        Err(DataError::corrupt(path, format!("record {record}: {what} {label} is out of range 0..={}", classes - 1)))
    }
}

fn records(n: usize) -> String {
    if n == 1 {
        "1 whole record".to_string()
    } else {
        format!("{n} whole records")
    }
}
