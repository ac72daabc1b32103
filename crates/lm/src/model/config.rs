//! The shape of a Llama-family decoder, read from a GGUF file's metadata or a Hugging Face config.json.
//! It must not guess silently: a missing or out-of-range value is an error naming the key.

use super::ModelError;
use crate::gguf::GgufFile;
use serde_json::Value as Json;
use std::path::Path;

/// How rotary frequencies are rescaled for contexts longer than training's (HF's `rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (HF `"linear"`).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's band-wise rescaling (HF `"llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// One divisor per frequency, as llama.cpp stores Llama 3.1's scaling (`rope_freqs.weight`).
    Factors(Vec<f32>),
}

/// Everything that decides a Llama-family decoder's shape and arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `qwen2`, `mistral`, ... as the checkpoint names it.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads; fewer than `n_heads` for grouped-query attention.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// The output projection is the token embedding.
    pub tie_word_embeddings: bool,
    /// q, k and v projections have biases (Qwen2).
    pub attention_bias: bool,
}

impl LlamaConfig {
    /// Checks that the numbers fit together; every loader calls it.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |key: &str, why: String| Err(ModelError::Config { key: key.into(), message: why });
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} attention heads cannot be shared evenly by {} key/value heads",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} is odd; rotary embeddings rotate pairs", self.head_dim));
        }
        if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            return bad("rms_norm_eps", format!("{} is not a small non-negative number", self.rms_norm_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad("rope_theta", format!("{} is not positive", self.rope_theta));
        }
        if let RopeScaling::Factors(f) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 {
                return bad(
                    "rope_freqs.weight",
                    format!("has {} factors, head_dim/2 is {}", f.len(), self.head_dim / 2),
                );
            }
        }
        Ok(())
    }

    /// The configuration in a GGUF file's metadata (`{arch}.block_count`, ...). The vocabulary
    /// size is the token embedding's row count; tied embeddings and q/k/v biases are read from
    /// which tensors are present.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = file.get_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize, ModelError> { Ok(file.get_u64(&key(k))? as usize) };
        let hidden_size = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads =
            if file.get(&key("attention.head_count_kv")).is_some() { u("attention.head_count_kv")? } else { n_heads };
        let head_dim = if file.get(&key("attention.key_length")).is_some() {
            u("attention.key_length")?
        } else {
            hidden_size.checked_div(n_heads).unwrap_or(0)
        };
        let embd = file.tensor("token_embd.weight")?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let rope_theta = match file.get(&key("rope.freq_base")) {
            Some(_) => file.get_f32(&key("rope.freq_base"))? as f64,
            None => 10000.0,
        };
        let rope_scaling = if file.tensor("rope_freqs.weight").is_ok() {
            RopeScaling::Factors(file.tensor_f32("rope_freqs.weight")?)
        } else {
            match file.get(&key("rope.scaling.type")) {
                None => RopeScaling::None,
                Some(_) => match file.get_str(&key("rope.scaling.type"))? {
                    "none" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: file.get_f32(&key("rope.scaling.factor"))? as f64 },
                    other => {
                        return Err(ModelError::Unsupported {
                            what: format!(
                                "{} = {other:?}: only none and linear are implemented",
                                key("rope.scaling.type")
                            ),
                        })
                    }
                },
            }
        };
        let config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            n_layers: u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
            rope_theta,
            rope_scaling,
            max_position_embeddings: u("context_length")?,
            tie_word_embeddings: file.tensor("output.weight").is_err(),
            attention_bias: file.tensor("blk.0.attn_q.bias").is_ok(),
            architecture: arch,
        };
        config.validate()?;
        Ok(config)
    }

    /// The configuration in a Hugging Face `config.json`.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let json: Json = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { key: path.display().to_string(), message: format!("not JSON: {e}") })?;
        Self::from_hf_value(&json)
    }

    /// The configuration in the parsed JSON of a Hugging Face `config.json`.
    pub fn from_hf_value(json: &Json) -> Result<Self, ModelError> {
        let missing = |key: &str| ModelError::Config { key: key.into(), message: "missing from config.json".into() };
        let wrong = |key: &str, want: &str| ModelError::Config { key: key.into(), message: format!("is not {want}") };
        let usize_of = |key: &str| -> Result<Option<usize>, ModelError> {
            match json.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| wrong(key, "a non-negative integer")),
            }
        };
        let f64_of = |key: &str| -> Result<Option<f64>, ModelError> {
            match json.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong(key, "a number")),
            }
        };
        let bool_of = |key: &str| -> Result<Option<bool>, ModelError> {
            match json.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong(key, "true or false")),
            }
        };
        let need = |key: &str| usize_of(key)?.ok_or_else(|| missing(key));
        let model_type = json.get("model_type").and_then(Json::as_str).unwrap_or("llama").to_string();
        const KNOWN: &[&str] = &["llama", "mistral", "qwen2", "smollm2"];
        if !KNOWN.contains(&model_type.as_str()) {
            return Err(ModelError::Unsupported {
                what: format!("model_type {model_type:?}: this loader runs {}", KNOWN.join(", ")),
            });
        }
        let hidden_size = need("hidden_size")?;
        let n_heads = need("num_attention_heads")?;
        let head_dim = match usize_of("head_dim")? {
            Some(d) => d,
            None if n_heads > 0 => hidden_size / n_heads,
            None => 0,
        };
        let rope_scaling = match json.get("rope_scaling") {
            None | Some(Json::Null) => RopeScaling::None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Json::as_str).unwrap_or("default");
                let num = |k: &str| -> Result<f64, ModelError> {
                    s.get(k).and_then(Json::as_f64).ok_or_else(|| wrong(&format!("rope_scaling.{k}"), "a number"))
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: num("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(ModelError::Unsupported {
                            what: format!(
                                "rope_scaling type {other:?}: only default, linear and llama3 are implemented"
                            ),
                        })
                    }
                }
            }
        };
        let config = LlamaConfig {
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            n_layers: need("num_hidden_layers")?,
            n_heads,
            n_kv_heads: usize_of("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            rms_norm_eps: f64_of("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: f64_of("rope_theta")?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: usize_of("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: bool_of("tie_word_embeddings")?.unwrap_or(false),
            // Qwen2's attention always has q/k/v biases; Llama's only when the config says so.
            attention_bias: model_type == "qwen2" || bool_of("attention_bias")?.unwrap_or(false),
            architecture: model_type,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config.json a Hugging Face checkpoint of this configuration carries.
    pub fn to_hf_value(&self) -> Json {
        let mut json = serde_json::json!({
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
        });
        let scaling = match &self.rope_scaling {
            RopeScaling::None | RopeScaling::Factors(_) => Json::Null,
            RopeScaling::Linear { factor } => serde_json::json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                serde_json::json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings})
            }
        };
        json["rope_scaling"] = scaling;
        json
    }

    /// The rotary inverse frequencies, one per pair of head dimensions, with scaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d)).collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Factors(div) => base.iter().zip(div).map(|(f, &k)| f / k as f64).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (old, lo, hi) = (*original_max_position_embeddings, *low_freq_factor, *high_freq_factor);
                let (low_freq_wavelen, high_freq_wavelen) = (old / lo, old / hi);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            // Between the bands: interpolate between scaled and unscaled.
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}
