//! Tests of the GGUF reader against tiny files written here, hand-built quantisation blocks, and the real SmolLM2 file.
//! They must not download anything: the real-file test runs only when NASC_SMOLLM2_GGUF names a local file.

use super::*;
use half::{bf16, f16};

pub(crate) use super::write::GgufWriter as Writer;

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn parse(bytes: Vec<u8>) -> GgufFile {
    GgufFile::from_bytes(bytes).unwrap_or_else(|e| panic!("test file should parse: {e}"))
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    GgufFile::from_bytes(bytes).expect_err("test file should be rejected")
}

// ---- hand-built quantisation blocks ----

/// A Q8_0 block with scale 0.5 and quants -16..16.
fn q8_0_block() -> (Vec<u8>, Vec<f32>) {
    let mut b = f16_bytes(0.5).to_vec();
    let q: Vec<i8> = (-16..16).collect();
    b.extend(q.iter().map(|&q| q as u8));
    (b, q.iter().map(|&q| 0.5 * q as f32).collect())
}

/// A Q4_0 block with scale 2: byte j holds j (low) and 15 - j (high).
fn q4_0_block() -> (Vec<u8>, Vec<f32>) {
    let mut b = f16_bytes(2.0).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let mut want: Vec<f32> = (0..16).map(|j| 2.0 * (j as f32 - 8.0)).collect();
    want.extend((0..16).map(|j| 2.0 * ((15 - j) as f32 - 8.0)));
    (b, want)
}

/// A Q4_1 block with scale 0.5 and minimum -1: same nibbles as the Q4_0 block.
fn q4_1_block() -> (Vec<u8>, Vec<f32>) {
    let mut b = f16_bytes(0.5).to_vec();
    b.extend(f16_bytes(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let mut want: Vec<f32> = (0..16).map(|j| 0.5 * j as f32 - 1.0).collect();
    want.extend((0..16).map(|j| 0.5 * (15 - j) as f32 - 1.0));
    (b, want)
}

/// A Q4_K block. Scales and minimums of the upper sub-blocks use all six bits,
/// so the packing of their top bits is exercised. The expected values are
/// computed element by element (sub-block i / 32), not by the decoder's loop.
fn q4_k_block() -> (Vec<u8>, Vec<f32>) {
    let (d, dmin) = (0.25f32, 0.125f32);
    let sc: [u8; 8] = [1, 7, 20, 63, 33, 17, 48, 62];
    let mn: [u8; 8] = [0, 5, 63, 9, 40, 31, 16, 2];
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] |= sc[j];
            packed[j + 4] |= mn[j];
        } else {
            packed[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
            packed[j - 4] |= (sc[j] >> 4) << 6;
            packed[j] |= (mn[j] >> 4) << 6;
        }
    }
    let q = |i: usize| ((i * 7 + 3) % 16) as u8;
    let mut qs = [0u8; 128];
    for i in 0..256 {
        let (sub, l) = (i / 32, i % 32);
        let byte = &mut qs[(sub / 2) * 32 + l];
        *byte |= if sub % 2 == 0 { q(i) } else { q(i) << 4 };
    }
    let mut b = f16_bytes(d).to_vec();
    b.extend(f16_bytes(dmin));
    b.extend(packed);
    b.extend(qs);
    let want = (0..256).map(|i| d * sc[i / 32] as f32 * q(i) as f32 - dmin * mn[i / 32] as f32).collect();
    (b, want)
}

/// A Q6_K block with negative and positive scales and quants spanning 0..64;
/// expected values are computed element by element (sub-block i / 16).
fn q6_k_block() -> (Vec<u8>, Vec<f32>) {
    let d = 0.5f32;
    let sc: Vec<i8> = (0..16).map(|k| (k * 9 - 70) as i8).collect();
    let q = |i: usize| ((i * 37 + 11) % 64) as u8;
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for i in 0..256 {
        let (half, r) = (i / 128, i % 128);
        let (k, l) = (r / 32, r % 32);
        let low = q(i) & 0xF;
        let ql_byte = &mut ql[half * 64 + l + 32 * (k % 2)];
        *ql_byte |= if k < 2 { low } else { low << 4 };
        qh[half * 32 + l] |= (q(i) >> 4) << (2 * k);
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(f16_bytes(d));
    let want = (0..256).map(|i| d * sc[i / 16] as f32 * (q(i) as f32 - 32.0)).collect();
    (b, want)
}

#[test]
fn hand_built_blocks_dequantise_to_their_values() {
    let cases = [
        (GgmlType::Q8_0, q8_0_block()),
        (GgmlType::Q4_0, q4_0_block()),
        (GgmlType::Q4_1, q4_1_block()),
        (GgmlType::Q4_K, q4_k_block()),
        (GgmlType::Q6_K, q6_k_block()),
    ];
    for (ty, (bytes, want)) in cases {
        assert_eq!(bytes.len() as u64, ty.block_bytes(), "{ty} block size");
        assert_eq!(dequantize(ty, &bytes).unwrap(), want, "{ty}");
        // Two blocks decode independently.
        let twice = [bytes.clone(), bytes].concat();
        assert_eq!(dequantize(ty, &twice).unwrap(), [want.clone(), want].concat(), "{ty} twice");
    }
}

#[test]
fn plain_float_types_dequantise_exactly() {
    let xs = [0.0f32, -1.5, 3.25, 6144.0, -0.0078125];
    let f32_bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16_b: Vec<u8> = xs.iter().flat_map(|&x| f16_bytes(x)).collect();
    let bf16_b: Vec<u8> = xs.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F32, &f32_bytes).unwrap(), xs);
    assert_eq!(dequantize(GgmlType::F16, &f16_b).unwrap(), xs);
    assert_eq!(dequantize(GgmlType::BF16, &bf16_b).unwrap(), xs);
}

#[test]
fn dequantize_refuses_unsupported_types_and_partial_blocks() {
    assert!(dequantize(GgmlType::Q5_K, &[0; 176]).is_none());
    assert!(dequantize(GgmlType::Q8_0, &[0; 33]).is_none());
}

// ---- whole files ----

/// Name, type, dimensions and dequantised values of a tensor in the sample file.
type Expected = (&'static str, GgmlType, Vec<u64>, Vec<f32>);

/// A file with metadata of every type and one tensor of each supported type.
fn sample() -> (Vec<u8>, Vec<Expected>) {
    let floats = [1.0f32, -2.0, 0.5, 8.0, -0.25, 3.0];
    let mut tensors = vec![
        (
            "f32",
            GgmlType::F32,
            vec![3, 2],
            floats.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            floats.to_vec(),
        ),
        ("f16", GgmlType::F16, vec![6], floats.iter().flat_map(|&x| f16_bytes(x)).collect(), floats.to_vec()),
        (
            "bf16",
            GgmlType::BF16,
            vec![2, 3],
            floats.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
            floats.to_vec(),
        ),
    ];
    for (name, ty, (block, want)) in [
        ("q8_0", GgmlType::Q8_0, q8_0_block()),
        ("q4_0", GgmlType::Q4_0, q4_0_block()),
        ("q4_1", GgmlType::Q4_1, q4_1_block()),
        ("q4_k", GgmlType::Q4_K, q4_k_block()),
        ("q6_k", GgmlType::Q6_K, q6_k_block()),
    ] {
        // Two rows of one block each.
        let n = ty.block_len();
        tensors.push((name, ty, vec![n, 2], [block.clone(), block].concat(), [want.clone(), want].concat()));
    }
    let mut w = Writer::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(30))
        .kv("u8", Value::U8(200))
        .kv("i8", Value::I8(-5))
        .kv("u16", Value::U16(60000))
        .kv("i16", Value::I16(-30000))
        .kv("i32", Value::I32(-7))
        .kv("f32", Value::F32(1e-5))
        .kv("bool", Value::Bool(true))
        .kv("u64", Value::U64(1 << 40))
        .kv("i64", Value::I64(-(1 << 40)))
        .kv("f64", Value::F64(10000.5))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(ValueType::String, vec![Value::String("<s>".into()), Value::String("é".into())]),
        )
        .kv("tokenizer.ggml.scores", Value::Array(ValueType::F32, vec![Value::F32(0.0), Value::F32(-1.5)]))
        .kv("tokenizer.ggml.token_type", Value::Array(ValueType::I32, vec![Value::I32(3), Value::I32(1)]))
        .kv("tokenizer.chat_template", Value::String("{% for m in messages %}{{ m.content }}{% endfor %}".into()))
        .kv("empty", Value::Array(ValueType::U64, vec![]))
        .kv(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U8, vec![Value::U8(1)]),
                    Value::Array(ValueType::Bool, vec![Value::Bool(false)]),
                ],
            ),
        );
    let mut expected = vec![];
    for (name, ty, dims, bytes, want) in tensors {
        w = w.tensor(name, &dims, ty, &bytes);
        expected.push((name, ty, dims, want));
    }
    (w.finish(), expected)
}

#[test]
fn metadata_of_every_type_round_trips() {
    let file = parse(sample().0);
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_offset() % 32, 0);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get("u8"), Some(&Value::U8(200)));
    assert_eq!(file.get("i8"), Some(&Value::I8(-5)));
    assert_eq!(file.get("u16"), Some(&Value::U16(60000)));
    assert_eq!(file.get("i16"), Some(&Value::I16(-30000)));
    assert_eq!(file.get_i64("i32").unwrap(), -7);
    assert_eq!(file.get_f32("f32").unwrap(), 1e-5);
    assert!(file.get_bool("bool").unwrap());
    assert_eq!(file.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(file.get_i64("i64").unwrap(), -(1 << 40));
    assert_eq!(file.get("f64"), Some(&Value::F64(10000.5)));
    assert_eq!(file.get_str_array("tokenizer.ggml.tokens").unwrap(), ["<s>", "é"]);
    assert_eq!(file.get_f32_array("tokenizer.ggml.scores").unwrap(), [0.0, -1.5]);
    assert_eq!(file.get_i32_array("tokenizer.ggml.token_type").unwrap(), [3, 1]);
    assert!(file.get_str("tokenizer.chat_template").unwrap().starts_with("{% for"));
    assert_eq!(file.get_array("empty").unwrap(), (ValueType::U64, &[][..]));
    let (ty, nested) = file.get_array("nested").unwrap();
    assert_eq!(ty, ValueType::Array);
    assert_eq!(nested[1], Value::Array(ValueType::Bool, vec![Value::Bool(false)]));
    // Integers widen and narrow when the value fits.
    assert_eq!(file.get_u32("u8").unwrap(), 200);
    assert_eq!(file.metadata().count(), 18);
}

#[test]
fn tensors_of_every_supported_type_round_trip() {
    let (bytes, expected) = sample();
    let file = parse(bytes);
    assert_eq!(file.tensors().len(), expected.len());
    for (name, ty, dims, want) in expected {
        let t = file.tensor(name).unwrap();
        assert_eq!((t.ty, &t.dims), (ty, &dims), "{name}");
        assert_eq!(t.offset % 32, 0, "{name}");
        assert_eq!(file.tensor_f32(name).unwrap(), want, "{name}");
    }
    assert_eq!(file.tensor("f32").unwrap().shape(), [2, 3]);
}

#[test]
fn open_maps_a_file_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, sample().0).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.tensor_f32("q4_k").unwrap(), [q4_k_block().1, q4_k_block().1].concat());
    let missing = GgufFile::open(dir.path().join("absent.gguf")).unwrap_err();
    assert!(matches!(missing, GgufError::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("absent.gguf"), "{missing}");
}

#[test]
fn version_2_and_custom_alignment_are_read() {
    let mut w = Writer::new().kv("general.alignment", Value::U32(64));
    w.version = 2;
    w.alignment = 64;
    let w =
        w.tensor("a", &[1], GgmlType::F32, &1f32.to_le_bytes()).tensor("b", &[1], GgmlType::F32, &2f32.to_le_bytes());
    let file = parse(w.finish());
    assert_eq!((file.version(), file.alignment()), (2, 64));
    assert_eq!(file.tensor("b").unwrap().offset, 64);
    assert_eq!(file.tensor_f32("b").unwrap(), [2.0]);
}

// ---- requests that fail ----

#[test]
fn missing_and_wrongly_typed_keys_are_named() {
    let file = parse(sample().0);
    let e = file.get_u32("llama.context_length").unwrap_err();
    assert!(matches!(&e, GgufError::MissingKey { key } if key == "llama.context_length"), "{e}");
    let e = file.get_u32("general.architecture").unwrap_err();
    assert_eq!(e.to_string(), "metadata key `general.architecture` is a string, expected an integer that fits in u32");
    let e = file.get_u32("i32").unwrap_err();
    assert_eq!(e.to_string(), "metadata key `i32` is i32 -7, expected an integer that fits in u32");
    let e = file.get_str_array("tokenizer.ggml.scores").unwrap_err();
    assert_eq!(e.to_string(), "metadata key `tokenizer.ggml.scores` is an array of 2 f32, expected an array of string");
    let e = file.get_f32("bool").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }), "{e}");
    let e = file.tensor_f32("output.weight").unwrap_err();
    assert_eq!(e.to_string(), "tensor `output.weight` is not in the file");
}

#[test]
fn a_type_without_a_dequantiser_is_named() {
    let file = parse(Writer::new().tensor("blk.0.ffn_down.weight", &[256], GgmlType::Q5_K, &[0; 176]).finish());
    assert_eq!(file.tensor_bytes("blk.0.ffn_down.weight").unwrap().len(), 176);
    let e = file.tensor_f32("blk.0.ffn_down.weight").unwrap_err();
    assert!(
        e.to_string().starts_with("tensor `blk.0.ffn_down.weight` is Q5_K, which this reader cannot dequantise"),
        "{e}"
    );
}

// ---- corrupt files ----

#[test]
fn bad_magic_is_rejected() {
    let mut bytes = sample().0;
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(parse_err(bytes), GgufError::BadMagic { .. }));
    assert!(matches!(parse_err(b"GG".to_vec()), GgufError::Truncated { what, .. } if what == "the header"));
}

#[test]
fn unsupported_versions_are_rejected_with_a_hint() {
    for (version, hint) in [(1, "32-bit counts"), (4, ""), (0x0300_0000, "big-endian")] {
        let mut w = Writer::new();
        w.version = version;
        let e = parse_err(w.finish());
        assert!(matches!(e, GgufError::UnsupportedVersion { version: v } if v == version), "{e}");
        assert!(e.to_string().contains(hint), "{e}");
    }
}

#[test]
fn truncation_anywhere_is_an_error_naming_the_part() {
    let bytes = Writer::new()
        .kv("general.name", Value::String("tiny".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(ValueType::String, vec![Value::String("a".into()); 4]))
        .tensor("token_embd.weight", &[32, 2], GgmlType::Q8_0, &[q8_0_block().0, q8_0_block().0].concat())
        .finish();
    let header_end = 24;
    let tokens_key = bytes.windows(21).position(|w| w == b"tokenizer.ggml.tokens").unwrap();
    let tensor_name = bytes.windows(17).position(|w| w == b"token_embd.weight").unwrap();
    // Every proper prefix fails, and none panics.
    for len in 0..bytes.len() {
        let e = parse_err(bytes[..len].to_vec());
        let text = e.to_string();
        if len < header_end {
            assert!(text.contains("the header"), "{len}: {text}");
        } else if len > tokens_key + 21 && len < tensor_name - 12 {
            assert!(text.contains("metadata key `tokenizer.ggml.tokens`"), "{len}: {text}");
        } else if len > tensor_name + 17 && len < tensor_name + 17 + 32 {
            assert!(text.contains("token_embd.weight"), "{len}: {text}");
        } else if len >= tensor_name + 17 + 32 {
            assert!(
                matches!(e, GgufError::TensorPastEnd { ref tensor, .. } if tensor == "token_embd.weight"),
                "{len}: {text}"
            );
        }
    }
}

#[test]
fn absurd_counts_fail_before_allocating() {
    let mut bytes = Writer::new().finish();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = parse_err(bytes);
    assert!(matches!(&e, GgufError::Truncated { what, .. } if what == "the metadata count"), "{e}");

    let mut bytes = Writer::new().finish();
    bytes[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = parse_err(bytes);
    assert!(matches!(&e, GgufError::Truncated { what, .. } if what == "the tensor count"), "{e}");

    let mut body = ValueType::Array.id().to_le_bytes().to_vec();
    body.extend(ValueType::String.id().to_le_bytes());
    body.extend((1u64 << 62).to_le_bytes());
    let e = parse_err(Writer::new().raw_kv("tokenizer.ggml.tokens", &body).finish());
    assert!(matches!(&e, GgufError::Truncated { what, .. } if what == "metadata key `tokenizer.ggml.tokens`"), "{e}");

    let mut body = ValueType::String.id().to_le_bytes().to_vec();
    body.extend(u64::MAX.to_le_bytes());
    let e = parse_err(Writer::new().raw_kv("general.name", &body).finish());
    assert!(matches!(&e, GgufError::Truncated { what, .. } if what == "metadata key `general.name`"), "{e}");
}

#[test]
fn unknown_value_types_are_named() {
    let e = parse_err(Writer::new().raw_kv("general.weird", &99u32.to_le_bytes()).finish());
    assert_eq!(e.to_string(), "metadata key `general.weird`: unknown metadata value type 99");
    let mut body = ValueType::Array.id().to_le_bytes().to_vec();
    body.extend(13u32.to_le_bytes());
    body.extend(0u64.to_le_bytes());
    let e = parse_err(Writer::new().raw_kv("general.weird", &body).finish());
    assert!(matches!(e, GgufError::UnknownValueType { id: 13, .. }), "{e}");
}

#[test]
fn deeply_nested_arrays_are_refused() {
    // The value's type, then 100 levels of (element type: array, length 1).
    let mut body = ValueType::Array.id().to_le_bytes().to_vec();
    for _ in 0..100 {
        body.extend(ValueType::Array.id().to_le_bytes());
        body.extend(1u64.to_le_bytes());
    }
    let e = parse_err(Writer::new().raw_kv("deep", &body).finish());
    assert!(matches!(&e, GgufError::NestingTooDeep { what } if what == "metadata key `deep`"), "{e}");
}

#[test]
fn invalid_utf8_and_duplicate_keys_are_named() {
    let mut body = ValueType::String.id().to_le_bytes().to_vec();
    body.extend(2u64.to_le_bytes());
    body.extend([0xC3, 0x28]);
    let e = parse_err(Writer::new().raw_kv("general.name", &body).finish());
    assert_eq!(e.to_string(), "metadata key `general.name`: string is not valid UTF-8");
    let e = parse_err(Writer::new().kv("a", Value::U8(1)).kv("a", Value::U8(2)).finish());
    assert!(matches!(&e, GgufError::DuplicateKey { key } if key == "a"), "{e}");
}

#[test]
fn bad_alignment_is_rejected() {
    let e = parse_err(Writer::new().kv("general.alignment", Value::U32(48)).finish());
    assert!(matches!(e, GgufError::BadAlignment { value: 48 }), "{e}");
    let e = parse_err(Writer::new().kv("general.alignment", Value::U64(32)).finish());
    assert!(matches!(&e, GgufError::WrongType { key, .. } if key == "general.alignment"), "{e}");
}

#[test]
fn bad_tensor_infos_are_named() {
    let e = parse_err(Writer::new().raw_tensor("blk.0.attn_q.weight", &[32], 4, &[0; 32]).finish());
    assert_eq!(e.to_string(), "tensor `blk.0.attn_q.weight`: unknown tensor type id 4");

    let e = parse_err(Writer::new().tensor("t", &[16, 2], GgmlType::Q8_0, &[0; 34]).finish());
    assert!(e.to_string().contains("row length 16 is not a multiple of the Q8_0 block length 32"), "{e}");

    let e = parse_err(Writer::new().tensor("t", &[1; 9], GgmlType::F32, &[0; 4]).finish());
    assert!(e.to_string().contains("9 dimensions"), "{e}");

    let e = parse_err(Writer::new().tensor("t", &[1 << 40, 1 << 40], GgmlType::F32, &[]).finish());
    assert!(matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "t"), "{e}");

    let e = parse_err(Writer::new().tensor("t", &[4], GgmlType::F32, &[0; 8]).finish());
    assert!(matches!(&e, GgufError::TensorPastEnd { tensor, .. } if tensor == "t"), "{e}");

    let e = parse_err(
        Writer::new().tensor("t", &[1], GgmlType::F32, &[0; 4]).tensor("t", &[1], GgmlType::F32, &[0; 4]).finish(),
    );
    assert!(matches!(&e, GgufError::DuplicateTensor { tensor } if tensor == "t"), "{e}");

    // An offset that is not a multiple of the alignment.
    let mut bytes = Writer::new().tensor("t", &[1], GgmlType::F32, &[0; 4]).finish();
    let offset_at = bytes.windows(1).position(|w| w == b"t").unwrap() + 1 + 4 + 8 + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
    let e = parse_err(bytes);
    assert!(e.to_string().contains("data offset 4 is not a multiple of the alignment 32"), "{e}");
}
