//! A tiny random Llama checkpoint written by test code, shared by the `nasc lm` and `nasc serve` tests.

use nasc_lm::gguf::write::GgufWriter;
use nasc_lm::gguf::{Value, ValueType};
use std::path::{Path, PathBuf};

fn strings(items: &[String]) -> Value {
    Value::Array(ValueType::String, items.iter().map(|s| Value::String(s.clone())).collect())
}

/// A tiny Llama checkpoint in one GGUF file: a byte-level BPE vocabulary (256 bytes, two merges,
/// three control tokens) and random weights for 2 layers, 4 heads sharing 2 key/value heads.
pub fn tiny_gguf(dir: &Path) -> PathBuf {
    // GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are shifted past 255.
    let mut shifted = 0;
    let mut tokens: Vec<String> = (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect();
    tokens.extend(["he", "ll"].map(String::from));
    tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
    let vocab = tokens.len();
    let types = (0..vocab).map(|i| Value::I32(if i >= vocab - 3 { 3 } else { 1 })).collect();
    let (h, ff, layers, heads, kv, d) = (32usize, 48usize, 2, 4usize, 2usize, 8usize);
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", strings(&tokens))
        .kv("tokenizer.ggml.merges", strings(&["h e".into(), "l l".into()]))
        .kv("tokenizer.ggml.token_type", Value::Array(ValueType::I32, types))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(vocab as u32 - 2))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(vocab as u32 - 1))
        .kv("llama.block_count", Value::U32(layers))
        .kv("llama.embedding_length", Value::U32(h as u32))
        .kv("llama.feed_forward_length", Value::U32(ff as u32))
        .kv("llama.attention.head_count", Value::U32(heads as u32))
        .kv("llama.attention.head_count_kv", Value::U32(kv as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.context_length", Value::U32(128));
    let mut state = 12345u64;
    let mut random = |shape: &[usize], offset: f32| -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                offset + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
            })
            .collect()
    };
    let mut tensors: Vec<(String, Vec<usize>, f32)> =
        vec![("token_embd.weight".into(), vec![vocab, h], 0.0), ("output_norm.weight".into(), vec![h], 1.0)];
    for l in 0..layers {
        for (name, shape, offset) in [
            ("attn_norm", vec![h], 1.0),
            ("ffn_norm", vec![h], 1.0),
            ("attn_q", vec![heads * d, h], 0.0),
            ("attn_k", vec![kv * d, h], 0.0),
            ("attn_v", vec![kv * d, h], 0.0),
            ("attn_output", vec![h, heads * d], 0.0),
            ("ffn_gate", vec![ff, h], 0.0),
            ("ffn_up", vec![ff, h], 0.0),
            ("ffn_down", vec![h, ff], 0.0),
        ] {
            tensors.push((format!("blk.{l}.{name}.weight"), shape, offset));
        }
    }
    for (name, shape, offset) in tensors {
        let values = random(&shape, offset);
        w = w.tensor_f32(&name, &shape, &values);
    }
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, w.finish()).unwrap();
    path
}
