//! Readers of the native file formats, each turning files into u8 CHW pixels and labels.
//! They must not cache, download or normalise: they only decode, and report what is wrong.

pub(crate) mod celeba;
pub(crate) mod cifar;
pub(crate) mod idx;
pub(crate) mod images;
pub(crate) mod matv5;
pub(crate) mod svhn;

use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// What a reader produces: samples in CHW order, back to back, and their labels.
pub(crate) struct Decoded {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
}

/// Reads a whole file; a file that is not there is `Missing`, not an I/O error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing(path, "")
        } else {
            DataError::io(path, "cannot read", e)
        }
    })
}

/// Gzip's two magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Returns the content of a file that may be gzip-compressed, judged by its
/// magic bytes rather than its name, so a `.gz` that was unpacked in place
/// (or a raw file named `.gz`) still reads.
pub(crate) fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_file(path)?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    // MultiGzDecoder so that a file of concatenated members reads whole, as gunzip does.
    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::truncated(path, format!("gzip stream ends early after {} bytes of content", out.len()))
        } else {
            DataError::corrupt(path, format!("gzip stream: {e}"))
        }
    })?;
    Ok(out)
}

/// "1 byte", "3 bytes".
pub(crate) fn bytes(n: usize) -> String {
    if n == 1 {
        "1 byte".to_string()
    } else {
        format!("{n} bytes")
    }
}
