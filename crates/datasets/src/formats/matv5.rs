//! A reader for the subset of MATLAB v5 MAT-files that SVHN uses: numeric matrices, plain or zlib-compressed.
//! It must not guess: cells, structs, sparse, complex and v7.3 (HDF5) files are reported, never half-read.

use std::path::Path;

use flate2::{Decompress, FlushDecompress, Status};

use super::{bytes, read_file};
use crate::error::DataError;

// Data types of the MAT-file format (MATLAB's "MAT-File Format", table 1-1).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// Array classes (table 1-3): 6 (double) to 15 (uint64) are the numeric ones.
pub(crate) const MX_DOUBLE: u8 = 6;
pub(crate) const MX_UINT8: u8 = 9;
const COMPLEX_FLAG: u32 = 0x0800;

const HEADER_LEN: usize = 128;

/// One variable of the file.
pub(crate) struct MatVar {
    pub name: String,
    /// The MATLAB class (6 = double, 9 = uint8, ...).
    pub class: u8,
    /// MATLAB's dimensions, first index fastest (column-major).
    pub dims: Vec<usize>,
    pub data: MatData,
}

pub(crate) enum MatData {
    /// Stored as bytes: the whole content, in column-major order.
    U8(Vec<u8>),
    /// Any other numeric storage, widened. MATLAB may store a double array
    /// as a narrower integer type when the values fit, so class and storage
    /// type are independent.
    F64(Vec<f64>),
    /// A variable this reader does not decode (cell, struct, char, sparse,
    /// complex); kept so that a caller can say what it found instead.
    Skipped(&'static str),
}

#[derive(Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn u64(self, b: &[u8]) -> u64 {
        let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.big {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
}

/// Reads every variable of a MAT-file (level 5, either byte order).
pub(crate) fn read(path: &Path) -> Result<Vec<MatVar>, DataError> {
    let data = read_file(path)?;
    let endian = check_header(path, &data)?;
    let mut vars = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < data.len() {
        let left = data.len() - pos;
        if left < 8 {
            return Err(DataError::truncated(
                path,
                format!("the data element at byte {pos} is cut off inside its 8-byte tag ({} left)", bytes(left)),
            ));
        }
        let ty = endian.u32(&data[pos..]);
        if ty >> 16 != 0 {
            // A small data element at the top level holds no variable.
            pos += 8;
            continue;
        }
        let size = endian.u32(&data[pos + 4..]) as usize;
        let body_start = pos + 8;
        if size > data.len() - body_start {
            return Err(DataError::truncated(
                path,
                format!(
                    "the data element at byte {pos} says it holds {}, the file ends {} after its tag",
                    bytes(size),
                    bytes(data.len() - body_start)
                ),
            ));
        }
        let body = &data[body_start..body_start + size];
        match ty {
            MI_MATRIX => vars.push(
                matrix(endian, body).map_err(|e| DataError::corrupt(path, format!("matrix at byte {pos}: {e}")))?,
            ),
            MI_COMPRESSED => {
                let inner = inflate(body).map_err(|e| match e {
                    Inflate::Truncated(out) => DataError::truncated(
                        path,
                        format!(
                            "the compressed element at byte {pos} ends before its zlib stream does ({} inflated)",
                            bytes(out)
                        ),
                    ),
                    Inflate::Corrupt(msg) => {
                        DataError::corrupt(path, format!("the compressed element at byte {pos}: {msg}"))
                    }
                })?;
                let var = compressed_matrix(endian, &inner)
                    .map_err(|e| DataError::corrupt(path, format!("the compressed element at byte {pos}: {e}")))?;
                if let Some(var) = var {
                    vars.push(var);
                }
            }
            _ => {}
        }
        // Compressed elements are not padded; every other element is padded
        // to 8 bytes (a matrix's own size is already a multiple of 8).
        pos = body_start + if ty == MI_COMPRESSED { size } else { size.next_multiple_of(8) };
    }
    Ok(vars)
}

fn check_header(path: &Path, data: &[u8]) -> Result<Endian, DataError> {
    if data.len() < HEADER_LEN {
        return Err(DataError::truncated(
            path,
            format!("holds {}, fewer than the {HEADER_LEN}-byte MAT-file header", bytes(data.len())),
        ));
    }
    let text = &data[..116];
    if !text.starts_with(b"MATLAB") {
        return Err(DataError::corrupt(path, "not a MATLAB MAT-file: the header does not start with \"MATLAB\""));
    }
    let endian = match &data[126..128] {
        b"IM" => Endian { big: false },
        b"MI" => Endian { big: true },
        other => {
            return Err(DataError::corrupt(
                path,
                format!("the header's byte-order mark is {:02x} {:02x}, not \"IM\" or \"MI\"", other[0], other[1]),
            ))
        }
    };
    let version = endian.u16(&data[124..126]);
    if version == 0x0200 || text.starts_with(b"MATLAB 7.3") {
        return Err(DataError::unsupported(
            path,
            "a v7.3 MAT-file (HDF5); SVHN's files are v5, save with -v7 or fetch them again",
        ));
    }
    if version != 0x0100 {
        return Err(DataError::unsupported(
            path,
            format!("MAT-file version 0x{version:04x}; only 0x0100 (level 5) is read"),
        ));
    }
    Ok(endian)
}

enum Inflate {
    /// The input ended first; how many bytes had come out.
    Truncated(usize),
    Corrupt(String),
}

/// Inflates a whole zlib stream and insists on seeing its end: flate2's
/// `Read` adaptors return a short result, not an error, when the input
/// stops early, which would make a cut file look merely small.
fn inflate(input: &[u8]) -> Result<Vec<u8>, Inflate> {
    let mut z = Decompress::new(true);
    let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(2).max(64));
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let (in_before, out_before) = (z.total_in(), z.total_out());
        let consumed = in_before as usize;
        let status = z
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::None)
            .map_err(|e| Inflate::Corrupt(format!("zlib stream is corrupt: {e}")))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        let stalled = z.total_in() == in_before && z.total_out() == out_before;
        if z.total_in() as usize == input.len() && (out.len() < out.capacity() || stalled) {
            return Err(Inflate::Truncated(out.len()));
        }
        if stalled && out.len() < out.capacity() {
            return Err(Inflate::Corrupt("zlib stream makes no progress".to_string()));
        }
    }
}

/// The element inside a compressed one: a matrix, or nothing of interest.
fn compressed_matrix(endian: Endian, inner: &[u8]) -> Result<Option<MatVar>, String> {
    if inner.len() < 8 {
        return Err(format!("inflates to {}, less than one element tag", bytes(inner.len())));
    }
    let ty = endian.u32(inner);
    if ty != MI_MATRIX {
        return Ok(None);
    }
    let size = endian.u32(&inner[4..]) as usize;
    if size > inner.len() - 8 {
        return Err(format!("its matrix says it holds {}, only {} inflated", bytes(size), bytes(inner.len() - 8)));
    }
    matrix(endian, &inner[8..8 + size]).map(Some)
}

/// Parses the sub-elements of a matrix: flags, dimensions, name, real part.
fn matrix(endian: Endian, body: &[u8]) -> Result<MatVar, String> {
    let mut pos = 0;
    let (ty, flags) = sub_element(endian, body, &mut pos)?;
    if ty != MI_UINT32 || flags.len() < 8 {
        return Err(format!("array flags have data type {ty} and {}, expected uint32 and 8 bytes", bytes(flags.len())));
    }
    let flags = endian.u32(flags);
    let class = (flags & 0xff) as u8;
    let (ty, dims) = sub_element(endian, body, &mut pos)?;
    if ty != MI_INT32 || dims.len() % 4 != 0 {
        return Err(format!("dimensions have data type {ty} and {}, expected int32", bytes(dims.len())));
    }
    let dims: Vec<usize> = dims
        .chunks_exact(4)
        .map(|d| usize::try_from(endian.u32(d) as i32).map_err(|_| "a dimension is negative".to_string()))
        .collect::<Result<_, _>>()?;
    let (ty, name) = sub_element(endian, body, &mut pos)?;
    if ty != MI_INT8 && ty != MI_UTF8 {
        return Err(format!("the array name has data type {ty}, expected int8"));
    }
    let name = String::from_utf8_lossy(name).into_owned();
    let skipped = |why| Ok(MatVar { name: name.clone(), class, dims: dims.clone(), data: MatData::Skipped(why) });
    if !(MX_DOUBLE..=15).contains(&class) {
        return skipped("not a numeric array (cell, struct, object, char or sparse)");
    }
    if flags & COMPLEX_FLAG != 0 {
        return skipped("a complex array");
    }
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("dimensions overflow")?;
    let (ty, real) = sub_element(endian, body, &mut pos)?;
    let width = match ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return Err(format!("variable {name}: its data has type {ty}, which is not numeric")),
    };
    let shape = dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    if real.len() != count * width {
        return Err(format!(
            "variable {name}: dimensions {shape} need {count} values of {}, the data holds {}",
            bytes(width),
            bytes(real.len())
        ));
    }
    let data = match ty {
        MI_UINT8 => MatData::U8(real.to_vec()),
        _ => MatData::F64(
            real.chunks_exact(width)
                .map(|b| match ty {
                    MI_INT8 => f64::from(b[0] as i8),
                    MI_INT16 => f64::from(endian.u16(b) as i16),
                    MI_UINT16 => f64::from(endian.u16(b)),
                    MI_INT32 => f64::from(endian.u32(b) as i32),
                    MI_UINT32 => f64::from(endian.u32(b)),
                    MI_SINGLE => f64::from(f32::from_bits(endian.u32(b))),
                    MI_DOUBLE => f64::from_bits(endian.u64(b)),
                    MI_INT64 => endian.u64(b) as i64 as f64,
                    _ => endian.u64(b) as f64,
                })
                .collect(),
        ),
    };
    Ok(MatVar { name, class, dims, data })
}

/// Reads one sub-element at `pos` and moves `pos` past it (and its padding).
/// A tag whose upper half is non-zero is the "small data element" form: up
/// to four bytes of data packed into the tag's second word.
fn sub_element<'a>(endian: Endian, body: &'a [u8], pos: &mut usize) -> Result<(u32, &'a [u8]), String> {
    let at = *pos;
    if body.len().saturating_sub(at) < 8 {
        return Err(format!("a sub-element tag at byte {at} runs past the end of the matrix"));
    }
    let first = endian.u32(&body[at..]);
    if first >> 16 != 0 {
        let len = (first >> 16) as usize;
        if len > 4 {
            return Err(format!("a small data element at byte {at} claims {len} bytes, at most 4 fit"));
        }
        *pos = at + 8;
        return Ok((first & 0xffff, &body[at + 4..at + 4 + len]));
    }
    let len = endian.u32(&body[at + 4..]) as usize;
    let start = at + 8;
    if len > body.len() - start {
        return Err(format!(
            "a sub-element at byte {at} says it holds {}, the matrix has {} left",
            bytes(len),
            bytes(body.len() - start)
        ));
    }
    *pos = (start + len.next_multiple_of(8)).min(body.len());
    Ok((first, &body[start..start + len]))
}
