//! Writes GGUF files: small ones built in memory, such as the tiny random checkpoints the tests load.
//! It must only write what the reader in this module accepts (or, through the crate-private entry points, break it on purpose).

use super::{GgmlType, Value};

/// Builds a GGUF v3 file in memory: metadata, then tensors, each at the next aligned offset.
/// Crate tests also use its raw entry points to write deliberately broken files.
pub struct GgufWriter {
    pub(crate) version: u32,
    pub(crate) alignment: usize,
    n_kv: u64,
    kvs: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { version: 3, alignment: 32, n_kv: 0, kvs: vec![], n_tensors: 0, infos: vec![], data: vec![] }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => Self::string(out, s),
            Value::Array(ty, items) => {
                out.extend(ty.id().to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    Self::value(out, item);
                }
            }
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    /// Adds a metadata key with its value.
    pub fn kv(self, key: &str, v: Value) -> Self {
        let mut body = v.value_type().id().to_le_bytes().to_vec();
        Self::value(&mut body, &v);
        self.raw_kv(key, &body)
    }

    /// A key followed by bytes written as given (type id and value), for corrupt entries.
    pub(crate) fn raw_kv(mut self, key: &str, body: &[u8]) -> Self {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(body);
        self.n_kv += 1;
        self
    }

    /// A tensor whose data is `bytes`, placed at the next aligned offset; `dims` in GGUF order (`dims[0]` fastest).
    pub fn tensor(self, name: &str, dims: &[u64], ty: GgmlType, bytes: &[u8]) -> Self {
        self.raw_tensor(name, dims, ty.id(), bytes)
    }

    pub(crate) fn raw_tensor(mut self, name: &str, dims: &[u64], type_id: u32, bytes: &[u8]) -> Self {
        self.data.resize(self.data.len().next_multiple_of(self.alignment), 0);
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(type_id.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        self.n_tensors += 1;
        self
    }

    /// An F32 tensor of row-major `shape` (as PyTorch writes it), stored in GGUF's reversed order.
    pub fn tensor_f32(self, name: &str, shape: &[usize], values: &[f32]) -> Self {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, &dims, GgmlType::F32, &bytes)
    }

    /// The file's bytes.
    pub fn finish(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend(&self.data);
        out
    }
}
