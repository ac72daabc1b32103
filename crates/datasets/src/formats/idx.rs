//! MNIST and Fashion-MNIST: the IDX files (raw or gzip) of LeCun's format, images and labels.
//! It must not accept a file whose header and content disagree, whatever the lengths.

use std::path::{Path, PathBuf};

use super::{bytes, read_maybe_gzip, Decoded};
use crate::catalog::Split;
use crate::error::DataError;

/// The IDX code of unsigned bytes, the only element type these datasets use.
const UBYTE: u8 = 0x08;
const SIDE: usize = 28;

/// The image and label files of a split: the raw name if present, else the
/// `.gz` one, as published.
pub(crate) fn locate(root: &Path, split: Split) -> Result<[PathBuf; 2], DataError> {
    let prefix = if split == Split::Train { "train" } else { "t10k" };
    Ok([find(root, &format!("{prefix}-images-idx3-ubyte"))?, find(root, &format!("{prefix}-labels-idx1-ubyte"))?])
}

fn find(root: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let raw = root.join(stem);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = root.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::missing(&gz, format!("nor is the uncompressed {stem} there")))
}

/// Reads both files and checks them against each other.
pub(crate) fn decode(images_path: &Path, labels_path: &Path, classes: usize) -> Result<Decoded, DataError> {
    let images = read_images(images_path)?;
    let labels = read_labels(labels_path, classes)?;
    let count = images.len() / (SIDE * SIDE);
    if labels.len() != count {
        return Err(DataError::corrupt(
            labels_path,
            format!("holds {} labels, but {} holds {count} images", labels.len(), images_path.display()),
        ));
    }
    Ok(Decoded { images, labels })
}

/// The dimensions in an IDX header and where the data starts.
fn header(path: &Path, data: &[u8], rank: usize) -> Result<(Vec<usize>, usize), DataError> {
    if data.len() < 4 {
        return Err(DataError::truncated(
            path,
            format!("holds {}, fewer than the 4-byte IDX magic", bytes(data.len())),
        ));
    }
    if data[0] != 0 || data[1] != 0 {
        return Err(DataError::corrupt(
            path,
            format!("not an IDX file: it starts {:02x} {:02x}, IDX starts 00 00", data[0], data[1]),
        ));
    }
    if data[2] != UBYTE {
        return Err(DataError::unsupported(
            path,
            format!("IDX element type 0x{:02x}; only 0x08 (unsigned byte) is read", data[2]),
        ));
    }
    let found_rank = usize::from(data[3]);
    if found_rank != rank {
        return Err(DataError::corrupt(path, format!("IDX data has {found_rank} dimensions, expected {rank}")));
    }
    let start = 4 + 4 * rank;
    if data.len() < start {
        return Err(DataError::truncated(
            path,
            format!("the IDX header needs {start} bytes, file holds {}", data.len()),
        ));
    }
    let dims = data[4..start].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    Ok((dims, start))
}

fn read_images(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut data = read_maybe_gzip(path)?;
    let (dims, start) = header(path, &data, 3)?;
    let (count, h, w) = (dims[0], dims[1], dims[2]);
    if (h, w) != (SIDE, SIDE) {
        return Err(DataError::corrupt(path, format!("images are {h}x{w}, expected {SIDE}x{SIDE}")));
    }
    let held = data.len() - start;
    let expected = count * h * w;
    if held != expected {
        let detail = format!("header says {count} images of {h}x{w}, file holds {} of pixel data", bytes(held));
        return Err(if held < expected {
            DataError::truncated(path, detail)
        } else {
            DataError::corrupt(path, format!("{detail}, {} more than that", bytes(held - expected)))
        });
    }
    data.drain(..start);
    Ok(data)
}

fn read_labels(path: &Path, classes: usize) -> Result<Vec<u16>, DataError> {
    let data = read_maybe_gzip(path)?;
    let (dims, start) = header(path, &data, 1)?;
    let count = dims[0];
    let held = data.len() - start;
    if held != count {
        let detail = format!("header says {count} labels, file holds {} of label data", bytes(held));
        return Err(if held < count {
            DataError::truncated(path, detail)
        } else {
            DataError::corrupt(path, format!("{detail}, {} more than that", bytes(held - count)))
        });
    }
    let labels = &data[start..];
    if let Some((i, &bad)) = labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= classes) {
        return Err(DataError::corrupt(path, format!("label {bad} of sample {i} is out of range 0..={}", classes - 1)));
    }
    Ok(labels.iter().map(|&l| u16::from(l)).collect())
}
