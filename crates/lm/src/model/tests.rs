//! Tests of the decoder and its loaders on tiny random checkpoints written here, in both safetensors and GGUF.
//! They must not need a real model: the decoder is held to a plain f64 implementation of the same equations.

use super::weights::build;
use super::*;
use crate::generate::{generate, FinishReason, SamplingParams};
use crate::gguf::write::GgufWriter;
use crate::gguf::{GgufFile, Value};
use burn::backend::Flex;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

type B = Flex;

/// Tensors by Hugging Face name: row-major shape and values.
pub(crate) type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A tiny config with grouped-query attention (4 heads share 2 key/value heads).
pub(crate) fn tiny_config(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: "llama".into(),
        vocab_size: vocab,
        hidden_size: 32,
        intermediate_size: 48,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        // Exact in f32, so the GGUF (f32) and config.json (f64) copies agree.
        rms_norm_eps: 1.0 / 131072.0,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        attention_bias: false,
    }
}

/// Random weights for `c`, in Hugging Face's names and layout.
pub(crate) fn random_tensors(c: &LlamaConfig, seed: u64) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = Tensors::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let v =
            (0..n).map(|_| offset + scale * ((rng.next_u32() >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0)).collect();
        t.insert(name, (shape, v));
    };
    let (h, qd, kvd, ff) = (c.hidden_size, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.intermediate_size);
    put("model.embed_tokens.weight".into(), vec![c.vocab_size, h], 1.0, 0.0);
    put("model.norm.weight".into(), vec![h], 0.2, 1.0);
    if !c.tie_word_embeddings {
        put("lm_head.weight".into(), vec![c.vocab_size, h], 0.5, 0.0);
    }
    for i in 0..c.n_layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), vec![h], 0.2, 1.0);
        put(format!("{p}.post_attention_layernorm.weight"), vec![h], 0.2, 1.0);
        for (name, out, inp) in [
            ("self_attn.q_proj", qd, h),
            ("self_attn.k_proj", kvd, h),
            ("self_attn.v_proj", kvd, h),
            ("self_attn.o_proj", h, qd),
            ("mlp.gate_proj", ff, h),
            ("mlp.up_proj", ff, h),
            ("mlp.down_proj", h, ff),
        ] {
            put(format!("{p}.{name}.weight"), vec![out, inp], 1.0 / (inp as f32).sqrt() * 1.7, 0.0);
            if c.attention_bias && matches!(name, "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj") {
                put(format!("{p}.{name}.bias"), vec![out], 0.3, 0.0);
            }
        }
    }
    t
}

/// Writes a Hugging Face checkpoint folder (config.json, model.safetensors, F32) from raw tensors.
pub(crate) fn write_hf(dir: &std::path::Path, c: &LlamaConfig, tensors: &Tensors) {
    std::fs::write(dir.join("config.json"), serde_json::to_string(&c.to_hf_value()).unwrap()).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(n, s, b)| {
        (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
    });
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}

/// llama.cpp's converter order for q/k rows: within a head, Hugging Face's row `j*d/2 + i` goes to `2i + j`.
fn permute_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let row_len = values.len() / rows;
    let d = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (src, dst) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                out[dst * row_len..(dst + 1) * row_len].copy_from_slice(&values[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// The GGUF form of the same checkpoint, as llama.cpp's converter writes it (q/k permuted
/// for `llama`), added to `w` (which may already hold a tokenizer).
pub(crate) fn write_gguf(w: GgufWriter, c: &LlamaConfig, tensors: &Tensors) -> GgufWriter {
    write_gguf_as(w, c, tensors, |_, _| None)
}

/// [`write_gguf`], storing a tensor as the bytes `quantise(name, values)` returns (with their
/// type) where it returns some.
pub(crate) fn write_gguf_as(
    mut w: GgufWriter,
    c: &LlamaConfig,
    tensors: &Tensors,
    quantise: impl Fn(&str, &[f32]) -> Option<(crate::gguf::GgmlType, Vec<u8>)>,
) -> GgufWriter {
    let a = &c.architecture;
    w = w
        .kv("general.architecture", Value::String(a.clone()))
        .kv(&format!("{a}.block_count"), Value::U32(c.n_layers as u32))
        .kv(&format!("{a}.embedding_length"), Value::U32(c.hidden_size as u32))
        .kv(&format!("{a}.feed_forward_length"), Value::U32(c.intermediate_size as u32))
        .kv(&format!("{a}.attention.head_count"), Value::U32(c.n_heads as u32))
        .kv(&format!("{a}.attention.head_count_kv"), Value::U32(c.n_kv_heads as u32))
        .kv(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps as f32))
        .kv(&format!("{a}.rope.freq_base"), Value::F32(c.rope_theta as f32))
        .kv(&format!("{a}.context_length"), Value::U32(c.max_position_embeddings as u32));
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        w = w
            .kv(&format!("{a}.rope.scaling.type"), Value::String("linear".into()))
            .kv(&format!("{a}.rope.scaling.factor"), Value::F32(factor as f32));
    }
    for (name, (shape, values)) in tensors {
        let g = super::weights::gguf_name(name).unwrap();
        let heads = if name.contains("q_proj") {
            c.n_heads
        } else if name.contains("k_proj") {
            c.n_kv_heads
        } else {
            0
        };
        let values = if heads > 0 && a == "llama" { permute_rows(values, shape[0], heads) } else { values.clone() };
        w = match quantise(name, &values) {
            Some((ty, bytes)) => {
                let dims: Vec<u64> = shape.iter().rev().map(|&n| n as u64).collect();
                w.tensor(&g, &dims, ty, &bytes)
            }
            None => w.tensor_f32(&g, shape, &values),
        };
    }
    w
}

impl WeightSource for Tensors {
    fn get(&self, name: &str) -> Result<Option<super::weights::Values>, ModelError> {
        Ok(BTreeMap::get(self, name).cloned())
    }
}

/// A plain f64 implementation of the decoder's equations, straight from the raw tensors:
/// logits of every position of one sequence.
fn reference_logits(c: &LlamaConfig, t: &Tensors, tokens: &[u32]) -> Vec<Vec<f64>> {
    let get = |n: &str| -> Vec<f64> { t[n].1.iter().map(|&x| x as f64).collect() };
    // y = W x for a PyTorch [out, in] weight.
    let matvec = |w: &[f64], x: &[f64]| -> Vec<f64> {
        w.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    };
    let rms = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + c.rms_norm_eps).sqrt();
        x.iter().zip(w).map(|(v, g)| v * s * g).collect()
    };
    let d = c.head_dim;
    let inv_freq = c.inv_freq();
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..d / 2 {
            let a = pos as f64 * inv_freq[i];
            let (x0, x1) = (v[i], v[i + d / 2]);
            v[i] = x0 * a.cos() - x1 * a.sin();
            v[i + d / 2] = x1 * a.cos() + x0 * a.sin();
        }
    };
    let embed = get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| embed[tok as usize * c.hidden_size..(tok as usize + 1) * c.hidden_size].to_vec())
        .collect();
    for l in 0..c.n_layers {
        let p = format!("model.layers.{l}");
        let w = |n: &str| get(&format!("{p}.{n}"));
        let bias = |n: &str, v: Vec<f64>| -> Vec<f64> {
            if c.attention_bias {
                v.iter().zip(w(&format!("{n}.bias"))).map(|(a, b)| a + b).collect()
            } else {
                v
            }
        };
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in xs.iter().enumerate() {
            let h = rms(x, &w("input_layernorm.weight"));
            let mut q = bias("self_attn.q_proj", matvec(&w("self_attn.q_proj.weight"), &h));
            let mut k = bias("self_attn.k_proj", matvec(&w("self_attn.k_proj.weight"), &h));
            for head in q.chunks_mut(d) {
                rope(head, pos);
            }
            for head in k.chunks_mut(d) {
                rope(head, pos);
            }
            qs.push(q);
            ks.push(k);
            vs.push(bias("self_attn.v_proj", matvec(&w("self_attn.v_proj.weight"), &h)));
        }
        let rep = c.n_heads / c.n_kv_heads;
        for (pos, x) in xs.iter_mut().enumerate() {
            let mut out = vec![0.0; c.n_heads * d];
            for head in 0..c.n_heads {
                let kv = head / rep;
                let q = &qs[pos][head * d..(head + 1) * d];
                let scores: Vec<f64> = (0..=pos)
                    .map(|j| {
                        q.iter().zip(&ks[j][kv * d..(kv + 1) * d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..d {
                        out[head * d + i] += ej / z * vs[j][kv * d + i];
                    }
                }
            }
            let o = matvec(&w("self_attn.o_proj.weight"), &out);
            x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
            let h = rms(x, &w("post_attention_layernorm.weight"));
            let g = matvec(&w("mlp.gate_proj.weight"), &h);
            let u = matvec(&w("mlp.up_proj.weight"), &h);
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = matvec(&w("mlp.down_proj.weight"), &act);
            x.iter_mut().zip(down).for_each(|(a, b)| *a += b);
        }
    }
    let head = if c.tie_word_embeddings { embed } else { get("lm_head.weight") };
    xs.iter().map(|x| matvec(&head, &rms(x, &get("model.norm.weight")))).collect()
}

fn burn_logits(model: &Llama<B>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&model.config);
    let all = model.forward_all(tokens, 1, &mut cache).unwrap();
    let [_, n, v] = all.dims();
    let flat = all.into_data().to_vec::<f32>().unwrap();
    (0..n).map(|i| flat[i * v..(i + 1) * v].to_vec()).collect()
}

fn max_delta(a: &[Vec<f32>], b: &[Vec<f64>]) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

const TOKENS: [u32; 7] = [3, 17, 250, 9, 9, 101, 0];

#[test]
fn decoder_matches_a_plain_f64_implementation() {
    for (tie, bias, scaling) in [
        (false, false, RopeScaling::None),
        (true, true, RopeScaling::Linear { factor: 4.0 }),
        (
            false,
            false,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8.0,
            },
        ),
    ] {
        let mut c = tiny_config(268);
        c.tie_word_embeddings = tie;
        c.attention_bias = bias;
        c.rope_scaling = scaling.clone();
        let t = random_tensors(&c, 7);
        let model = build::<B>(c.clone(), &t, &Default::default(), false).unwrap();
        let delta = max_delta(&burn_logits(&model, &TOKENS), &reference_logits(&c, &t, &TOKENS));
        assert!(delta < 1e-4, "tie={tie} bias={bias} {scaling:?}: logits differ by {delta}");
    }
}

#[test]
fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
    let mut c = tiny_config(10);
    c.head_dim = 64;
    c.rope_theta = 500000.0;
    let plain = c.inv_freq();
    c.rope_scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    let scaled = c.inv_freq();
    assert_eq!(scaled[0], plain[0]);
    assert!((scaled[31] - plain[31] / 8.0).abs() < 1e-15);
    // Some frequencies fall between the bands and are interpolated.
    assert!(scaled.iter().zip(&plain).any(|(s, p)| *s < *p && *s > *p / 8.0));
}

#[test]
fn gguf_and_safetensors_give_the_same_logits() {
    for arch in ["llama", "qwen2"] {
        let mut c = tiny_config(268);
        c.architecture = arch.into();
        c.attention_bias = arch == "qwen2";
        let t = random_tensors(&c, 11);
        let dir = tempfile::tempdir().unwrap();
        write_hf(dir.path(), &c, &t);
        let hf = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap();
        let file = GgufFile::from_bytes(write_gguf(GgufWriter::new(), &c, &t).finish()).unwrap();
        let gg = load_gguf::<B>(&file, &Default::default()).unwrap();
        assert_eq!(hf.config, c);
        assert_eq!(gg.config, c);
        let (a, b) = (burn_logits(&hf, &TOKENS), burn_logits(&gg, &TOKENS));
        assert_eq!(a, b, "{arch}: the two loaders disagree");
        let delta = max_delta(&a, &reference_logits(&c, &t, &TOKENS));
        assert!(delta < 1e-4, "{arch}: {delta}");
    }
}

#[test]
fn sharded_safetensors_load_through_their_index() {
    let c = tiny_config(268);
    let t = random_tensors(&c, 5);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&c.to_hf_value()).unwrap()).unwrap();
    let mut map = serde_json::Map::new();
    for (shard, part) in [0, 1].iter().map(|&s| (s, t.iter().enumerate().filter(move |(i, _)| i % 2 == s))) {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = part
            .map(|(_, (n, (s, v)))| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        for (n, _, _) in &bytes {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        let views = bytes.iter().map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        });
        std::fs::write(dir.path().join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let model = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap();
    assert!(max_delta(&burn_logits(&model, &TOKENS), &reference_logits(&c, &t, &TOKENS)) < 1e-4);
}

#[test]
fn saved_safetensors_reload_to_the_same_model() {
    let mut c = tiny_config(268);
    c.tie_word_embeddings = true;
    let t = random_tensors(&c, 3);
    let model = build::<B>(c.clone(), &t, &Default::default(), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_safetensors(&model, dir.path()).unwrap();
    let back = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(back.config, c);
    assert_eq!(burn_logits(&back, &TOKENS), burn_logits(&model, &TOKENS));
}

#[test]
fn cached_decoding_gives_the_logits_of_a_full_forward() {
    let c = tiny_config(268);
    let model = build::<B>(c.clone(), &random_tensors(&c, 1), &Default::default(), false).unwrap();
    let full = burn_logits(&model, &TOKENS);
    let mut cache = KvCache::new(&c);
    // Prefill three tokens, then one at a time.
    let mut stepped = vec![];
    let first = model.forward_all(&TOKENS[..3], 1, &mut cache).unwrap();
    let flat = first.into_data().to_vec::<f32>().unwrap();
    stepped.extend(flat.chunks(c.vocab_size).map(<[f32]>::to_vec));
    for &t in &TOKENS[3..] {
        let row = model.forward_last(&[t], 1, &mut cache).unwrap().into_data().to_vec::<f32>().unwrap();
        stepped.push(row);
    }
    assert_eq!(cache.len(), TOKENS.len());
    let delta = full.iter().flatten().zip(stepped.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(delta < 1e-5, "cached decoding differs from the full forward by {delta}");

    // Two rows of a shared prefix decode like one.
    let mut shared = KvCache::new(&c);
    model.forward_last(&TOKENS[..3], 1, &mut shared).unwrap();
    let mut two = shared.repeat_rows(2);
    let rows = model.forward_last(&[TOKENS[3], 5], 2, &mut two).unwrap().into_data().to_vec::<f32>().unwrap();
    let d = rows[..c.vocab_size].iter().zip(&full[3]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-5, "row 0 of a repeated cache differs by {d}");
    let one = two.select_rows(&[0]);
    assert_eq!(one.batch(), 1);
    let next = model.forward_last(&[TOKENS[4]], 1, &mut one.clone()).unwrap().into_data().to_vec::<f32>().unwrap();
    let d = next.iter().zip(&full[4]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-5, "a selected row differs by {d}");
}

// ---- errors ----

fn hf_dir_with(edit: impl FnOnce(&mut LlamaConfig, &mut Tensors)) -> (tempfile::TempDir, String) {
    let mut c = tiny_config(268);
    let mut t = random_tensors(&c, 2);
    edit(&mut c, &mut t);
    let dir = tempfile::tempdir().unwrap();
    write_hf(dir.path(), &c, &t);
    let err = load_hf_dir::<B>(dir.path(), &Default::default()).expect_err("should be refused").to_string();
    (dir, err)
}

#[test]
fn a_missing_tensor_is_named() {
    let (_d, e) = hf_dir_with(|_, t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    assert_eq!(e, "tensor model.layers.1.mlp.up_proj.weight is missing from the checkpoint");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let (_d, e) = hf_dir_with(|_, t| {
        t.insert("model.layers.0.self_attn.k_proj.weight".into(), (vec![32, 32], vec![0.0; 1024]));
    });
    assert_eq!(e, "tensor model.layers.0.self_attn.k_proj.weight has shape [32, 32], the config needs [16, 32]");
}

#[test]
fn a_config_that_does_not_fit_is_named() {
    let (_d, e) = hf_dir_with(|c, _| c.n_kv_heads = 3);
    assert!(e.contains("num_key_value_heads") && e.contains("4 attention heads"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama", "hidden_size": 32}"#).unwrap();
    let e = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap_err().to_string();
    assert_eq!(e, "config num_attention_heads: missing from config.json");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let e = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("model_type \"gpt2\""), "{e}");
}

#[test]
fn an_unsupported_dtype_and_a_truncated_file_are_named() {
    let c = tiny_config(268);
    let t = random_tensors(&c, 2);
    let dir = tempfile::tempdir().unwrap();
    write_hf(dir.path(), &c, &t);
    // Rewrite one tensor as I32.
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = t
        .iter()
        .map(|(n, (s, v))| {
            (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), safetensors::Dtype::F32)
        })
        .collect();
    bytes.iter_mut().find(|b| b.0 == "model.norm.weight").unwrap().3 = safetensors::Dtype::I32;
    let views =
        bytes.iter().map(|(n, s, b, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()));
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "tensor model.norm.weight is stored as I32, which this loader does not read (it reads F32, F16 and BF16)"
    );

    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() - 100]).unwrap();
    let e = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn gguf_errors_name_the_key_or_tensor() {
    let c = tiny_config(268);
    let mut t = random_tensors(&c, 2);
    t.remove("model.layers.0.self_attn.v_proj.weight");
    let file = GgufFile::from_bytes(write_gguf(GgufWriter::new(), &c, &t).finish()).unwrap();
    let e = load_gguf::<B>(&file, &Default::default()).unwrap_err().to_string();
    assert_eq!(e, "tensor model.layers.0.self_attn.v_proj.weight is missing from the checkpoint");

    let w = GgufWriter::new().kv("general.architecture", Value::String("llama".into()));
    let file = GgufFile::from_bytes(w.finish()).unwrap();
    let e = load_gguf::<B>(&file, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("llama.embedding_length"), "{e}");

    let mut g = tiny_config(268);
    g.architecture = "gpt2".into();
    let file = GgufFile::from_bytes(write_gguf(GgufWriter::new(), &g, &random_tensors(&g, 2)).finish()).unwrap();
    let e = load_gguf::<B>(&file, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("general.architecture = \"gpt2\""), "{e}");
}

#[test]
fn a_token_outside_the_vocabulary_is_an_error() {
    let c = tiny_config(268);
    let model = build::<B>(c.clone(), &random_tensors(&c, 1), &Default::default(), false).unwrap();
    let e = model.forward_last(&[1, 268], 1, &mut KvCache::new(&c)).unwrap_err().to_string();
    assert_eq!(e, "token id 268 is outside the vocabulary of 268 tokens");
}

// ---- generation, with the tiny tokenizer of the tokenizer tests ----

/// A tiny checkpoint in one GGUF file: tokenizer (268 tokens, `<|im_end|>` = 267) and random weights.
pub(crate) fn tiny_gguf_checkpoint(seed: u64) -> Vec<u8> {
    let c = tiny_config(268);
    write_gguf(crate::tokenizer::tests::tiny_gguf(""), &c, &random_tensors(&c, seed)).finish()
}

fn tiny_checkpoint() -> (Llama<B>, crate::tokenizer::Tokenizer) {
    let file = GgufFile::from_bytes(tiny_gguf_checkpoint(4)).unwrap();
    (load_gguf(&file, &Default::default()).unwrap(), crate::tokenizer::Tokenizer::from_gguf(&file).unwrap())
}

fn sampled(params: &SamplingParams) -> Vec<Vec<u32>> {
    let (model, tok) = tiny_checkpoint();
    let prompt = tok.encode("hello world", false).unwrap();
    let g = generate(&model, &tok, &prompt, params, |_, _| {}).unwrap();
    g.completions.into_iter().map(|c| c.tokens).collect()
}

#[test]
fn the_same_seed_gives_the_same_samples() {
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        max_new_tokens: 12,
        seed: 42,
        n: 3,
        ..Default::default()
    };
    let a = sampled(&params);
    assert_eq!(a, sampled(&params));
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|s| s.len() == 12));
    // Different streams and different seeds draw differently.
    assert!(a[0] != a[1] || a[1] != a[2], "{a:?}");
    assert_ne!(a, sampled(&SamplingParams { seed: 43, ..params.clone() }));
    // A stream's draws do not depend on how many run beside it.
    assert_eq!(sampled(&SamplingParams { n: 1, ..params })[0], a[0]);
}

#[test]
fn greedy_replies_in_a_batch_equal_the_single_reply() {
    let params = SamplingParams { max_new_tokens: 10, ..Default::default() };
    let one = sampled(&params);
    let many = sampled(&SamplingParams { n: 4, temperature: 0.0, ..params });
    assert!(many.iter().all(|s| *s == one[0]), "{many:?} vs {one:?}");
}

#[test]
fn penalties_move_the_tokens_a_reply_has_drawn() {
    // Greedy replies of the tiny random model do not repeat a token in 16; a negative penalty
    // raises the drawn tokens until the reply does, a positive one keeps them apart.
    let distinct = |s: &[u32]| s.iter().collect::<std::collections::HashSet<_>>().len();
    let run = |frequency_penalty: f32, presence_penalty: f32| {
        sampled(&SamplingParams { max_new_tokens: 16, frequency_penalty, presence_penalty, ..Default::default() })
    };
    let greedy = run(0.0, 0.0);
    assert_eq!(distinct(&greedy[0]), 16, "{greedy:?}");
    for (f, p) in [(0.0, -2.0), (-2.0, 0.0)] {
        let pulled = run(f, p);
        assert!(distinct(&pulled[0]) < 16, "frequency {f}, presence {p}: {pulled:?}");
    }
    assert_eq!(distinct(&run(2.0, 2.0)[0]), 16);
}

#[test]
fn top_k_of_one_is_greedy() {
    let greedy = sampled(&SamplingParams { max_new_tokens: 10, ..Default::default() });
    let k1 = sampled(&SamplingParams { max_new_tokens: 10, temperature: 0.7, top_k: 1, seed: 9, ..Default::default() });
    assert_eq!(greedy, k1);
}

#[test]
fn stop_strings_stop_tokens_and_max_tokens_are_honoured() {
    let (model, tok) = tiny_checkpoint();
    let prompt = tok.encode("hello", false).unwrap();
    let base = SamplingParams { max_new_tokens: 20, ..Default::default() };
    let g = generate(&model, &tok, &prompt, &base, |_, _| {}).unwrap();
    let full = &g.completions[0];
    assert_eq!((full.tokens.len(), full.finish), (20, FinishReason::Length));

    // A stop token: the reply ends at its first occurrence, which is kept in tokens but not in text.
    let stop_id = full.tokens[5];
    let first = full.tokens.iter().position(|&t| t == stop_id).unwrap();
    let params = SamplingParams { stop_token_ids: vec![stop_id], ..base.clone() };
    let g = generate(&model, &tok, &prompt, &params, |_, _| {}).unwrap();
    let c = &g.completions[0];
    assert_eq!(c.tokens, full.tokens[..=first]);
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.text, tok.decode(&full.tokens[..first], true).unwrap());

    // A stop string taken from the middle of the full text: the reply is the text before it,
    // and the text streamed to the caller is the same.
    let text = tok.decode(&full.tokens, true).unwrap();
    let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = text[cut..].chars().take(2).collect();
    let params = SamplingParams { stop: vec![stop.clone()], ..base.clone() };
    let mut streamed = String::new();
    let g = generate(&model, &tok, &prompt, &params, |_, piece| streamed.push_str(piece)).unwrap();
    let c = &g.completions[0];
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.text, text[..text.find(&stop).unwrap()]);
    assert_eq!(streamed, c.text);
    assert!(c.tokens.len() < 20);

    // max_new_tokens.
    let g = generate(&model, &tok, &prompt, &SamplingParams { max_new_tokens: 3, ..base }, |_, _| {}).unwrap();
    assert_eq!(g.completions[0].tokens, full.tokens[..3]);
    assert_eq!(g.completions[0].finish, FinishReason::Length);
}

#[test]
fn bad_sampling_settings_are_refused() {
    let (model, tok) = tiny_checkpoint();
    for (params, want) in [
        (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature -1"),
        (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p 0"),
        (SamplingParams { n: 0, ..Default::default() }, "n must be at least 1"),
        (SamplingParams { stop: vec![String::new()], ..Default::default() }, "stop string"),
        (SamplingParams { presence_penalty: 2.5, ..Default::default() }, "presence_penalty 2.5"),
        (SamplingParams { frequency_penalty: f32::NAN, ..Default::default() }, "frequency_penalty NaN"),
    ] {
        let e = generate(&model, &tok, &[1], &params, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let e = generate(&model, &tok, &[], &SamplingParams::default(), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
}

#[test]
fn replies_stop_at_the_end_of_the_context() {
    let (model, tok) = tiny_checkpoint();
    let context = model.config.max_position_embeddings;
    let prompt = vec![40u32; context - 4];
    let params = SamplingParams { max_new_tokens: 20, n: 2, temperature: 1.0, ..Default::default() };
    let g = generate(&model, &tok, &prompt, &params, |_, _| {}).unwrap();
    // Four positions are left: four tokens are fed there, and a fifth is sampled from the last.
    for c in &g.completions {
        assert_eq!((c.tokens.len(), c.finish), (5, FinishReason::Length));
    }
    let e = generate(&model, &tok, &vec![40u32; context], &params, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("context holds 64"), "{e}");
}

#[test]
fn a_hugging_face_folder_generates_what_its_gguf_twin_does() {
    let gguf_dir = tempfile::tempdir().unwrap();
    let gguf_path = gguf_dir.path().join("tiny.gguf");
    std::fs::write(&gguf_path, tiny_gguf_checkpoint(8)).unwrap();
    let from_gguf = Checkpoint::<B>::open(&gguf_path, &Default::default()).unwrap();
    let hf = tempfile::tempdir().unwrap();
    save_safetensors(&from_gguf.model, hf.path()).unwrap();
    from_gguf.tokenizer.save_hf_json(hf.path().join("tokenizer.json")).unwrap();
    let from_hf = Checkpoint::<B>::open(hf.path(), &Default::default()).unwrap();

    let prompt = "hello world";
    let ids = from_gguf.tokenizer.encode(prompt, false).unwrap();
    assert_eq!(from_hf.tokenizer.encode(prompt, false).unwrap(), ids);
    let params = SamplingParams { max_new_tokens: 12, ..Default::default() };
    let a = generate(&from_gguf.model, &from_gguf.tokenizer, &ids, &params, |_, _| {}).unwrap();
    let b = generate(&from_hf.model, &from_hf.tokenizer, &ids, &params, |_, _| {}).unwrap();
    assert_eq!(a.completions, b.completions);

    std::fs::remove_file(hf.path().join("tokenizer.json")).unwrap();
    let e = Checkpoint::<B>::open(hf.path(), &Default::default()).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

/// Log-probabilities come from the raw distribution: each is at most 0, the alternatives are in
/// order, a greedy draw is the first of them, and they sum to at most 1 in probability.
#[test]
fn logprobs_are_the_models_own_and_greedy_draws_are_the_most_likely() {
    let (model, tok) = tiny_checkpoint();
    let prompt = tok.encode("hello world", false).unwrap();
    let params = SamplingParams { max_new_tokens: 8, logprobs: Some(5), n: 2, ..Default::default() };
    let g = generate(&model, &tok, &prompt, &params, |_, _| {}).unwrap();
    for c in &g.completions {
        assert_eq!(c.logprobs.len(), c.tokens.len());
        for (t, lp) in c.tokens.iter().zip(&c.logprobs) {
            assert_eq!(*t, lp.token);
            assert!(lp.logprob <= 0.0, "{lp:?}");
            assert_eq!(lp.top.len(), 5);
            assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "{lp:?}");
            assert_eq!(lp.top[0], (lp.token, lp.logprob), "a greedy draw is the most likely token");
            assert!(lp.top.iter().map(|&(_, v)| v.exp()).sum::<f32>() <= 1.0 + 1e-5);
        }
    }
    // Sampled at a temperature, the log-probabilities stay the model's (not the tempered ones).
    let hot = SamplingParams { temperature: 5.0, seed: 3, logprobs: Some(0), ..params };
    let g = generate(&model, &tok, &prompt, &hot, |_, _| {}).unwrap();
    assert!(g.completions[0].logprobs.iter().all(|lp| lp.top.is_empty() && lp.logprob <= 0.0));
    let none = generate(&model, &tok, &prompt, &SamplingParams { logprobs: None, ..hot }, |_, _| {}).unwrap();
    assert!(none.completions[0].logprobs.is_empty());
    assert!(SamplingParams { logprobs: Some(21), ..Default::default() }.validate().is_err());
}

// ---- continuous batching ----

/// Requests added to a running [`Batch`] at different steps, each with its own prompt length,
/// `n`, sampling and stop strings, reply exactly as they do alone, while their rows decode in
/// one pass; a request whose caller goes ends there without disturbing the others.
#[test]
fn requests_that_join_a_running_batch_reply_as_they_would_alone() {
    use crate::generate::{Batch, Generation};
    use std::cell::{Cell, RefCell};
    let (model, tok) = tiny_checkpoint();
    let asks = [
        ("hello world", SamplingParams { max_new_tokens: 12, ..Default::default() }),
        (
            "the quick brown fox jumps over",
            SamplingParams { temperature: 0.9, top_k: 40, max_new_tokens: 9, seed: 7, n: 3, ..Default::default() },
        ),
        (
            "a",
            SamplingParams {
                temperature: 1.0,
                max_new_tokens: 15,
                seed: 3,
                n: 2,
                stop: vec!["e".into()],
                logprobs: Some(2),
                frequency_penalty: 0.5,
                ..Default::default()
            },
        ),
    ];
    let ids: Vec<Vec<u32>> = asks.iter().map(|(p, _)| tok.encode(p, false).unwrap()).collect();
    let alone: Vec<Generation> =
        asks.iter().zip(&ids).map(|((_, p), ids)| generate(&model, &tok, ids, p, |_, _| {}).unwrap()).collect();

    let streamed: RefCell<Vec<Vec<String>>> =
        RefCell::new(asks.iter().map(|(_, p)| vec![String::new(); p.n]).collect());
    let mut batch = Batch::new(model.clone(), &tok);
    let mut done: Vec<Option<Generation>> = vec![None, None, None];
    let mut widest = 0;
    let mut step = 0;
    while done.iter().any(Option::is_none) {
        // The second request joins after two steps, the third after five.
        for (r, joins_at) in [(0, 0), (1, 2), (2, 5)] {
            if step == joins_at {
                let streamed = &streamed;
                let on_text = move |s: usize, piece: &str| streamed.borrow_mut()[r][s].push_str(piece);
                let id = batch.add(&ids[r], asks[r].1.clone(), None, on_text, || true).unwrap();
                assert_eq!(id, r as u64);
            }
        }
        widest = widest.max(batch.rows());
        for (id, g) in batch.step().unwrap() {
            done[id as usize] = Some(g);
        }
        step += 1;
        assert!(step < 100, "the batch never ended");
    }
    assert!(widest > asks[1].1.n + 1, "the requests decoded together ({widest} rows at most)");
    for (r, (together, alone)) in done.iter().map(Option::as_ref).map(Option::unwrap).zip(&alone).enumerate() {
        assert_eq!(together.completions, alone.completions, "request {r}");
        for (s, c) in together.completions.iter().enumerate() {
            assert_eq!(streamed.borrow()[r][s], c.text, "request {r} stream {s}: streamed text");
        }
    }

    // A request whose caller goes ends at the next step with what it has; the other goes on.
    let waits = Cell::new(true);
    let mut batch = Batch::new(model.clone(), &tok);
    let long = SamplingParams { max_new_tokens: 20, stop_token_ids: vec![], ..Default::default() };
    batch.add(&ids[0], long.clone(), None, |_, _| {}, || true).unwrap();
    batch.add(&ids[1], long.clone(), None, |_, _| {}, || waits.get()).unwrap();
    for _ in 0..4 {
        assert!(batch.step().unwrap().is_empty());
    }
    waits.set(false);
    let gone = batch.step().unwrap();
    assert_eq!(gone.len(), 1);
    let (id, g) = &gone[0];
    assert_eq!((*id, g.completions[0].finish, g.completions[0].tokens.len()), (1, FinishReason::Length, 4));
    let mut rest = Vec::new();
    while rest.is_empty() {
        rest = batch.step().unwrap();
    }
    let first = generate(&model, &tok, &ids[0], &long, |_, _| {}).unwrap();
    assert_eq!(rest[0].1.completions, first.completions, "the request left running");

    // Burn's passes keep one length for all rows: a request joins only an empty batch there.
    let burn = model.clone().with_kernels(crate::model::Kernels::burn());
    let mut batch = Batch::new(burn.clone(), &tok);
    batch.add(&ids[0], long.clone(), None, |_, _| {}, || true).unwrap();
    batch.step().unwrap();
    assert!(!batch.joinable());
    assert!(batch.add(&ids[1], long.clone(), None, |_, _| {}, || true).is_err());
    let mut rest = Vec::new();
    while rest.is_empty() {
        rest = batch.step().unwrap();
    }
    assert_eq!(rest[0].1.completions, generate(&burn, &tok, &ids[0], &long, |_, _| {}).unwrap().completions);
}

/// A prompt that starts as an earlier one in a batch that keeps its prefills computes only the
/// rest, and replies as it does from a prefill of its own: the same tokens, the same
/// log-probabilities to float rounding. Other models' prefills, forgotten ones and ones past the
/// budget are not reused.
#[test]
fn a_prompt_that_starts_as_an_earlier_one_reuses_its_prefill() {
    use crate::generate::{Batch, Generation, Prefixes};
    use std::cell::RefCell;
    let (model, tok) = tiny_checkpoint();
    let first = tok.encode("the quick brown fox jumps over the lazy dog", false).unwrap();
    let mut second = first[..first.len() - 3].to_vec();
    second.extend(tok.encode(" and runs", false).unwrap());
    let shared = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
    assert!(shared >= 4 && shared < second.len(), "the prompts share {shared} tokens");
    let params = SamplingParams { max_new_tokens: 8, logprobs: Some(2), stop_token_ids: vec![], ..Default::default() };
    let run = |batch: &mut Batch<'_, Flex>, prompt: &[u32]| -> Generation {
        let id = batch.add(prompt, params.clone(), None, |_, _| {}, || true).unwrap();
        loop {
            if let Some((_, g)) = batch.step().unwrap().into_iter().find(|(done, _)| *done == id) {
                return g;
            }
        }
    };
    let store = RefCell::new(Prefixes::new(1 << 30));
    let mut batch = Batch::new(model.clone(), &tok).reusing(&store, "base");
    assert_eq!(run(&mut batch, &first).cached_prompt_tokens, 0);
    let reused = run(&mut batch, &second);
    assert_eq!(reused.cached_prompt_tokens, shared);
    let own = generate(&model, &tok, &second, &params, |_, _| {}).unwrap();
    assert_eq!(own.cached_prompt_tokens, 0);
    let (a, b) = (&reused.completions[0], &own.completions[0]);
    assert_eq!(a.tokens, b.tokens, "reusing a prefill changed the reply");
    for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
        assert!((x.logprob - y.logprob).abs() < 1e-4, "log-probability {} against {}", x.logprob, y.logprob);
    }
    // The same prompt again: all but its last token come from the store.
    assert_eq!(run(&mut batch, &second).cached_prompt_tokens, second.len() - 1);

    // Another model's key finds nothing; after `forget`, neither does this one's.
    let mut other = Batch::new(model.clone(), &tok).reusing(&store, "adapter");
    assert_eq!(run(&mut other, &second).cached_prompt_tokens, 0);
    store.borrow_mut().forget("base");
    assert_eq!(run(&mut batch, &second).cached_prompt_tokens, 0);

    // A budget smaller than one prefill keeps none.
    let small = RefCell::new(Prefixes::new(1024));
    let mut batch = Batch::new(model.clone(), &tok).reusing(&small, "base");
    run(&mut batch, &first);
    assert_eq!(small.borrow().bytes(), 0);
    assert_eq!(run(&mut batch, &first).cached_prompt_tokens, 0);
}

#[test]
fn a_long_prompt_prefills_a_chunk_per_step_beside_the_replies_decoding() {
    use crate::generate::{Batch, Generation};
    use std::cell::Cell;
    use std::rc::Rc;
    let (model, tok) = tiny_checkpoint();
    let long = tok.encode("the quick brown fox jumps over the lazy dog", false).unwrap();
    let short = tok.encode("hi", false).unwrap();
    let chunk = 7;
    assert!(long.len() > 3 * chunk && short.len() <= chunk, "{} and {} tokens", long.len(), short.len());
    let params = SamplingParams { max_new_tokens: 6, logprobs: Some(2), stop_token_ids: vec![], ..Default::default() };
    let finish = |batch: &mut Batch<'_, Flex>, id| -> Generation {
        loop {
            if let Some((_, g)) = batch.step().unwrap().into_iter().find(|(done, _)| *done == id) {
                return g;
            }
        }
    };
    // Prefilled whole or a chunk at a time, the reply is the same.
    let mut whole = Batch::new(model.clone(), &tok).with_prefill_chunk(usize::MAX);
    let id = whole.add(&long, params.clone(), None, |_, _| {}, || true).unwrap();
    let alone = finish(&mut whole, id);
    let mut batch = Batch::new(model.clone(), &tok).with_prefill_chunk(chunk);
    // Beside a reply already decoding: the long prompt waits, a chunk per step, while the short
    // request draws a token every step.
    let a = batch.add(&short, params.clone(), None, |_, _| {}, || true).unwrap();
    assert_eq!((batch.requests(), batch.rows()), (1, 1));
    let b = batch.add(&long, params.clone(), None, |_, _| {}, || true).unwrap();
    assert_eq!((batch.requests(), batch.rows()), (2, 1), "the long prompt is not prefilled at once");
    let chunks = long.len().div_ceil(chunk);
    for _ in 0..chunks - 1 {
        assert!(batch.step().unwrap().is_empty());
        assert_eq!(batch.rows(), 1, "still prefilling");
    }
    let done = batch.step().unwrap();
    assert!(done.is_empty() || done.iter().all(|(id, _)| *id == a));
    assert_eq!(
        batch.rows(),
        usize::from(done.is_empty()) + 1,
        "the long prompt's reply decodes from its last chunk on"
    );
    let chunked = finish(&mut batch, b);
    let (x, y) = (&chunked.completions[0], &alone.completions[0]);
    assert_eq!(x.tokens, y.tokens, "prefilling in chunks changed the reply");
    for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
        assert!((p.logprob - q.logprob).abs() < 1e-4, "log-probability {} against {}", p.logprob, q.logprob);
    }
    // A caller that leaves while its prompt prefills: no more chunks run, and the request ends
    // with nothing drawn at the next step.
    let here = Rc::new(Cell::new(true));
    let waits = here.clone();
    let mut batch = Batch::new(model.clone(), &tok).with_prefill_chunk(chunk);
    let c = batch.add(&long, params.clone(), None, |_, _| {}, move || waits.get()).unwrap();
    assert!(batch.step().unwrap().is_empty());
    here.set(false);
    let ended = batch.step().unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, c);
    assert!(ended[0].1.completions.iter().all(|r| r.tokens.is_empty() && r.finish == FinishReason::Length));
    assert_eq!(batch.requests(), 0);
}
