//! Reads GGUF model files (versions 2 and 3, little-endian): header, typed metadata, tensor infos, tensor data.
//! It must not trust the file: every count, length and offset is checked before use, and bad input is an error.

//! GGUF files as written by llama.cpp's converters.
//!
//! A GGUF file is a header (magic `GGUF`, version, tensor count, metadata
//! count), then the metadata key/values, then one info record per tensor
//! (name, dimensions, type, offset), then padding up to the alignment
//! (`general.alignment`, 32 when absent), then the tensor data. Tensor offsets
//! are relative to the start of the data section.
//!
//! Dimensions are kept in GGUF's order: `dims[0]` varies fastest, so a PyTorch
//! weight of shape `[out, in]` is stored with `dims == [in, out]`;
//! [`TensorInfo::shape`] gives the row-major order a Burn tensor wants.

mod dequant;
#[cfg(test)]
pub(crate) mod tests;
pub mod write;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub(crate) use dequant::half;
pub use dequant::{block_decoder, dequantize};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml itself allows 4 dimensions; a little slack for future files, while a corrupt count stays harmless.
pub const MAX_DIMS: u32 = 8;
/// Nested arrays recurse; a corrupt file could otherwise nest deep enough to exhaust the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Room reserved up front for `n` items read from the file. Counts are already
/// bounded by the bytes left, but an item in memory can be many times its size
/// on disk; growing as items are really read keeps memory in step with the file.
fn capacity(n: u64) -> usize {
    n.min(4096) as usize
}

/// What is wrong with a GGUF file, or with a request made of one. Each message
/// names the key or tensor at fault and, for truncation, the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic { found: Vec<u8> },

    #[error("GGUF version {version} is not supported: this reader reads versions 2 and 3{}", version_hint(*version))]
    UnsupportedVersion { version: u32 },

    #[error("file is truncated in {what}: needs {needed} bytes at byte {offset}, but only {available} remain")]
    Truncated { what: String, offset: u64, needed: u64, available: u64 },

    #[error("{what}: unknown metadata value type {id}")]
    UnknownValueType { what: String, id: u32 },

    #[error("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")]
    NestingTooDeep { what: String },

    #[error("{what}: string is not valid UTF-8")]
    InvalidUtf8 { what: String },

    #[error("metadata key `{key}` appears more than once")]
    DuplicateKey { key: String },

    #[error("general.alignment is {value}; it must be a power of two")]
    BadAlignment { value: u64 },

    #[error("tensor `{tensor}`: unknown tensor type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },

    #[error("tensor `{tensor}`: {reason}")]
    BadTensor { tensor: String, reason: String },

    #[error("tensor `{tensor}` appears more than once")]
    DuplicateTensor { tensor: String },

    #[error("tensor `{tensor}`: its data (bytes {start}..{end}) lies past the end of the file ({file_len} bytes)")]
    TensorPastEnd { tensor: String, start: u64, end: u64, file_len: u64 },

    #[error("tensor `{tensor}` is {ty}, which this reader cannot dequantise (it reads {})", dequant::SUPPORTED)]
    UnsupportedTensorType { tensor: String, ty: GgmlType },

    #[error("tensor `{tensor}` is not in the file")]
    MissingTensor { tensor: String },

    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },

    #[error("metadata key `{key}` is {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
}

fn version_hint(version: u32) -> &'static str {
    match version {
        1 => " (version 1 used 32-bit counts; convert the file again with a current llama.cpp)",
        // A v2/v3 version number read with the wrong byte order.
        0x0200_0000 | 0x0300_0000 => " (this looks like a big-endian file; only little-endian files are read)",
        _ => "",
    }
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// The type of a metadata value, with GGUF's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// GGUF's number for this type (what a writer puts in the file).
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in the file: a bound on how
    /// many elements an array can truthfully claim to have.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value. An array keeps its element type, so an empty array still says what it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value, widened; converters do not agree on integer widths
    /// (a block count may be u32 in one file and i32 or u64 in another).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// How the value is described in a wrong-type error: "u32 7", "array of 3 string".
    fn describe(&self) -> String {
        match self {
            Value::Array(ty, items) => format!("an array of {} {ty}", items.len()),
            Value::String(_) => "a string".to_owned(),
            other => format!("{} {}", other.value_type(), other.scalar_text()),
        }
    }

    fn scalar_text(&self) -> String {
        match self {
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            other => other.as_i128().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// A tensor type of ggml, with ggml's numbering. Every type ggml has defined
/// is known, so that the size of any tensor can be checked against the file;
/// only some can be dequantised (see [`dequantize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

impl GgmlType {
    /// (id, type, elements per block, bytes per block), from ggml's type traits.
    /// Ids 4, 5, 31-33 and 36-38 belonged to layouts ggml has since removed.
    const TABLE: [(u32, GgmlType, u64, u64); 34] = {
        use GgmlType::*;
        [
            (0, F32, 1, 4),
            (1, F16, 1, 2),
            (2, Q4_0, 32, 18),
            (3, Q4_1, 32, 20),
            (6, Q5_0, 32, 22),
            (7, Q5_1, 32, 24),
            (8, Q8_0, 32, 34),
            (9, Q8_1, 32, 36),
            (10, Q2_K, 256, 84),
            (11, Q3_K, 256, 110),
            (12, Q4_K, 256, 144),
            (13, Q5_K, 256, 176),
            (14, Q6_K, 256, 210),
            (15, Q8_K, 256, 292),
            (16, IQ2_XXS, 256, 66),
            (17, IQ2_XS, 256, 74),
            (18, IQ3_XXS, 256, 98),
            (19, IQ1_S, 256, 50),
            (20, IQ4_NL, 32, 18),
            (21, IQ3_S, 256, 110),
            (22, IQ2_S, 256, 82),
            (23, IQ4_XS, 256, 136),
            (24, I8, 1, 1),
            (25, I16, 1, 2),
            (26, I32, 1, 4),
            (27, I64, 1, 8),
            (28, F64, 1, 8),
            (29, IQ1_M, 256, 56),
            (30, BF16, 1, 2),
            (34, TQ1_0, 256, 54),
            (35, TQ2_0, 256, 66),
            (39, MXFP4, 32, 17),
            (40, NVFP4, 64, 36),
            (41, Q1_0, 128, 18),
        ]
    };

    pub fn from_id(id: u32) -> Option<Self> {
        Self::TABLE.iter().find(|row| row.0 == id).map(|row| row.1)
    }

    fn row(self) -> &'static (u32, GgmlType, u64, u64) {
        // Every variant has a row; the table and the enum are written together.
        Self::TABLE.iter().find(|row| row.1 == self).expect("every GgmlType is in GgmlType::TABLE")
    }

    /// ggml's number for this type (what a writer puts in the file).
    pub fn id(self) -> u32 {
        self.row().0
    }

    /// Elements per quantisation block (1 for plain number types).
    pub fn block_len(self) -> u64 {
        self.row().2
    }

    /// Bytes per quantisation block.
    pub fn block_bytes(self) -> u64 {
        self.row().3
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// In GGUF order: `dims[0]` varies fastest (the row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at load time not to overflow.
        self.dims.iter().product()
    }

    /// Bytes of data; checked at load time to be a whole number of blocks.
    pub fn n_bytes(&self) -> u64 {
        self.n_elements() / self.ty.block_len() * self.ty.block_bytes()
    }

    /// The dimensions in row-major order, slowest first, as PyTorch and Burn write shapes.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The bytes of a file: memory-mapped when opened from disk, owned when given.
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(vec) => vec,
        }
    }
}

/// A parsed GGUF file: its metadata and tensor infos, with the tensor data left
/// in place (mapped) until a tensor is asked for.
pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file, memory-mapping it so that tensor data is read only when used.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_error = |source| GgufError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only. Were another process to truncate or rewrite
        // the file while it is mapped, reads could fault or see changed bytes; model
        // files are not edited in place, and `from_bytes` exists for callers who
        // cannot accept that.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        Self::parse(Bytes::Mapped(map))
    }

    /// Parses a GGUF file already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self> {
        let mut r = Reader { bytes: &bytes, pos: 0 };
        let header = |e: Short| e.context("the header");
        let magic = r.take(4).map_err(header)?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic.to_vec() });
        }
        let version = r.u32().map_err(header)?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let n_tensors = r.u64().map_err(header)?;
        let n_kv = r.u64().map_err(header)?;

        // Each key/value takes at least 12 bytes (key length, type); a count the
        // rest of the file cannot hold is a truncation, found before allocating.
        r.check_room(n_kv, 12).map_err(|e| e.context("the metadata count"))?;
        let mut metadata = Vec::with_capacity(capacity(n_kv));
        let mut key_index = HashMap::with_capacity(capacity(n_kv));
        for i in 0..n_kv {
            let key = r.string().map_err(|e| e.into_error(|| format!("the name of metadata entry {i}")))?;
            let value = r.typed_value().map_err(|e| e.into_error(|| format!("metadata key `{key}`")))?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey { key });
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(Value::U32(a)) => return Err(GgufError::BadAlignment { value: (*a).into() }),
            Some(other) => {
                return Err(GgufError::WrongType {
                    key: "general.alignment".into(),
                    expected: "u32",
                    found: other.describe(),
                })
            }
        };

        // A tensor info takes at least 24 bytes: name length, dimension count, type, offset.
        r.check_room(n_tensors, 24).map_err(|e| e.context("the tensor count"))?;
        let mut tensors = Vec::with_capacity(capacity(n_tensors));
        let mut tensor_index = HashMap::with_capacity(capacity(n_tensors));
        for i in 0..n_tensors {
            let info = r.tensor_info(i, alignment)?;
            if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor { tensor: info.name });
            }
            tensors.push(info);
        }

        let file_len = bytes.len() as u64;
        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes()));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::TensorPastEnd {
                        tensor: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
        }

        Ok(GgufFile { bytes, version, alignment, data_offset, metadata, key_index, tensors, tensor_index })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data: `general.alignment`, or 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts, in bytes from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of a key, if present (for optional keys).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of a key that must be present.
    pub fn value(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.to_owned() })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType { key: key.to_owned(), expected, found: found.describe() }
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.value(key)?;
        v.as_i128().and_then(|i| T::try_from(i).ok()).ok_or_else(|| self.wrong(key, expected, v))
    }

    /// An integer key that fits in u32, whatever integer type the file stored it as.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "an integer that fits in u32")
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "an integer that fits in u64")
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.integer(key, "an integer that fits in i64")
    }

    /// A float key (f32, or f64 narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.value(key)?;
        v.as_f64().map(|f| f as f32).ok_or_else(|| self.wrong(key, "a float", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// A string key, such as `general.architecture` or `tokenizer.chat_template`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string", v)),
        }
    }

    /// An array key of any element type.
    pub fn get_array(&self, key: &str) -> Result<(ValueType, &[Value])> {
        match self.value(key)? {
            Value::Array(ty, items) => Ok((*ty, items)),
            v => Err(self.wrong(key, "an array", v)),
        }
    }

    fn array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        elem: ValueType,
        get: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        match self.value(key)? {
            Value::Array(ty, items) if *ty == elem => Ok(items.iter().filter_map(get).collect()),
            v => Err(self.wrong(key, expected, v)),
        }
    }

    /// A string array, such as `tokenizer.ggml.tokens` or `tokenizer.ggml.merges`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array_of(key, "an array of string", ValueType::String, |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// An f32 array, such as `tokenizer.ggml.scores`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array_of(key, "an array of f32", ValueType::F32, |v| match v {
            Value::F32(f) => Some(*f),
            _ => None,
        })
    }

    /// An i32 array, such as `tokenizer.ggml.token_type`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array_of(key, "an array of i32", ValueType::I32, |v| match v {
            Value::I32(i) => Some(*i),
            _ => None,
        })
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor { tensor: name.to_owned() })
    }

    /// A tensor's raw bytes, in its stored type.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        // In range: checked against the file length when the file was parsed.
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.bytes[start..start + t.n_bytes() as usize])
    }

    /// A tensor dequantised to f32, in GGUF element order (`dims[0]` fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        dequantize(t.ty, self.tensor_bytes(name)?)
            .ok_or_else(|| GgufError::UnsupportedTensorType { tensor: name.to_owned(), ty: t.ty })
    }
}

/// The file ended early: `needed` bytes were wanted at `offset`, `available` remained.
#[derive(Debug)]
struct Short {
    offset: u64,
    needed: u64,
    available: u64,
}

impl Short {
    fn context(self, what: &str) -> GgufError {
        GgufError::Truncated {
            what: what.to_owned(),
            offset: self.offset,
            needed: self.needed,
            available: self.available,
        }
    }
}

/// Why a value could not be read; the caller adds which key or tensor it was.
#[derive(Debug)]
enum ReadError {
    Short(Short),
    UnknownType(u32),
    TooDeep,
    Utf8,
}

impl From<Short> for ReadError {
    fn from(s: Short) -> Self {
        ReadError::Short(s)
    }
}

impl ReadError {
    fn into_error(self, what: impl FnOnce() -> String) -> GgufError {
        match self {
            ReadError::Short(s) => s.context(&what()),
            ReadError::UnknownType(id) => GgufError::UnknownValueType { what: what(), id },
            ReadError::TooDeep => GgufError::NestingTooDeep { what: what() },
            ReadError::Utf8 => GgufError::InvalidUtf8 { what: what() },
        }
    }
}

/// A little-endian cursor over the file that never reads past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn short(&self, needed: u64) -> Short {
        Short { offset: self.pos as u64, needed, available: self.remaining() }
    }

    /// Fails unless `count` items of at least `min_size` bytes each could fit in the rest of the file.
    fn check_room(&self, count: u64, min_size: u64) -> Result<(), Short> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            n => Err(self.short(n.unwrap_or(u64::MAX))),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        if n > self.remaining() {
            return Err(self.short(n));
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        // `take` returned exactly N bytes.
        Ok(self.take(N as u64)?.try_into().expect("take returns the length asked for"))
    }

    fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, ReadError> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ReadError::Utf8)
    }

    fn typed_value(&mut self) -> Result<Value, ReadError> {
        let id = self.u32()?;
        let ty = ValueType::from_id(id).ok_or(ReadError::UnknownType(id))?;
        self.value(ty, 0)
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value, ReadError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8()?),
            ValueType::I8 => Value::I8(self.u8()? as i8),
            ValueType::U16 => Value::U16(self.u16()?),
            ValueType::I16 => Value::I16(self.u16()? as i16),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(self.u32()? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32()?)),
            ValueType::Bool => Value::Bool(self.u8()? != 0),
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.u64()? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64()?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(ReadError::TooDeep);
                }
                let id = self.u32()?;
                let elem = ValueType::from_id(id).ok_or(ReadError::UnknownType(id))?;
                let len = self.u64()?;
                self.check_room(len, elem.min_size())?;
                let mut items = Vec::with_capacity(capacity(len));
                for _ in 0..len {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<TensorInfo> {
        let name = self.string().map_err(|e| e.into_error(|| format!("the name of tensor {index}")))?;
        let what = || format!("the info of tensor `{name}`");
        let bad = |reason: String| GgufError::BadTensor { tensor: name.clone(), reason };
        let n_dims = self.u32().map_err(|e| e.context(&what()))?;
        if n_dims > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions; at most {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64().map_err(|e| e.context(&what()))?);
        }
        let id = self.u32().map_err(|e| e.context(&what()))?;
        let ty = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), id })?;
        let offset = self.u64().map_err(|e| e.context(&what()))?;

        // ggml stores dimensions as signed 64-bit numbers; a "dimension" past i64::MAX is corruption.
        if dims.iter().any(|&d| d > i64::MAX as u64) {
            return Err(bad(format!("dimensions {dims:?} are out of range")));
        }
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(n_elements) = n_elements.filter(|&n| n <= i64::MAX as u64) else {
            return Err(bad(format!("dimensions {dims:?} hold more elements than a file can")));
        };
        // Blocks run along the row (dims[0]) and never straddle two rows.
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_len()) {
            return Err(bad(format!("row length {row} is not a multiple of the {ty} block length {}", ty.block_len())));
        }
        if (n_elements / ty.block_len()).checked_mul(ty.block_bytes()).is_none() {
            return Err(bad(format!("dimensions {dims:?} hold more bytes than a file can")));
        }
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        Ok(TensorInfo { name, dims, ty, offset })
    }
}
