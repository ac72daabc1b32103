//! LoRA adapters on the decoder's projections: the layer, attaching it to a frozen base, PEFT's file format, merging.
//! It must not copy or train the base's weights, and every malformed adapter file must be an error naming the key or tensor.

//! Low-rank adapters (Hu et al., LoRA) on a [`Llama`]'s linear projections.
//!
//! A projection `y = x W` becomes `y = x W + (alpha / r) · dropout(x) A B`,
//! with `A` `[in, r]` drawn Kaiming-uniform and `B` `[r, out]` zero, as PEFT
//! initialises them, so a fresh adapter leaves the model's outputs unchanged.
//! [`attach`] freezes every base parameter (no gradients, so an optimizer never
//! sees them) and adds adapters to the chosen projections.
//!
//! Adapters are saved and loaded in PEFT's layout: `adapter_config.json` and
//! `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`[r, in]`)
//! and `...lora_B.weight` (`[out, r]`), PyTorch's `(out, in)` convention, which
//! PEFT and vLLM read.

pub use crate::model::adapter::{dropout, seed_dropout, BlockLora, LoraConfig, LoraLinear, Target};
use crate::model::{Llama, ModelError};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use half::{bf16, f16};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Parses a comma-separated list such as `q,k,v,o,gate,up,down`.
pub fn parse_targets(list: &str) -> Result<Vec<Target>, LoraError> {
    let mut out = BTreeSet::new();
    for name in list.split(',').filter(|s| !s.trim().is_empty()) {
        out.insert(Target::parse(name).ok_or_else(|| LoraError::Config {
            key: "target_modules".into(),
            message: format!("unknown projection {name:?} (known: q, k, v, o, gate, up, down)"),
        })?);
    }
    if out.is_empty() {
        return Err(LoraError::Config { key: "target_modules".into(), message: "no projection chosen".into() });
    }
    Ok(out.into_iter().collect())
}

/// The largest `lora_alpha` taken: adapters scale their product by alpha / rank, and one past
/// this makes the base's activations overflow (PEFT's adapters use 8 to a few hundred).
pub const MAX_ALPHA: f64 = 65536.0;

/// The most bytes an `adapter_config.json` may hold (a real one is under a few kB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The bytes of `path`, a regular file (after links) of at most `cap` bytes, which is what
/// `holds` says holds ("rank 8 adapters on 30 layers hold"). A FIFO, a device or a folder is
/// refused before it is opened: reading one could block or never end.
fn read_capped(path: &Path, cap: u64, holds: &str) -> Result<Vec<u8>, LoraError> {
    use std::io::Read;
    let err = |message: String| LoraError::File { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let over = |len: u64| err(format!("{len} bytes, more than {holds}"));
    if meta.len() > cap {
        return Err(over(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    // It grew after its size was read.
    if bytes.len() as u64 > cap {
        return Err(over(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Refuses a rank of 0, a non-positive alpha or one past [`MAX_ALPHA`], dropout outside [0, 1)
/// and no targets.
fn check(config: &LoraConfig) -> Result<(), LoraError> {
    let bad = |key: &str, message: String| Err(LoraError::Config { key: key.into(), message });
    if config.rank == 0 {
        return bad("r", "the rank must be at least 1".into());
    }
    if !(config.alpha.is_finite() && config.alpha > 0.0 && config.alpha <= MAX_ALPHA) {
        return bad("lora_alpha", format!("{} is not a positive number up to {MAX_ALPHA}", config.alpha));
    }
    if !(0.0..1.0).contains(&config.dropout) {
        return bad("lora_dropout", format!("{} is not in [0, 1)", config.dropout));
    }
    if config.targets.is_empty() {
        return bad("target_modules", "no projection chosen".into());
    }
    Ok(())
}

/// What went wrong with an adapter. Messages name the file, key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("adapter config {key}: {message}")]
    Config { key: String, message: String },
    #[error("adapter tensor {name}: {message}")]
    Tensor { name: String, message: String },
}

/// Whether any block of `model` carries an adapter.
pub fn has_adapters<B: Backend>(model: &Llama<B>) -> bool {
    model.blocks.iter().any(|b| !b.lora.is_empty())
}

/// Freezes every parameter of `model` and adds fresh adapters (B = 0) on `config`'s targets
/// in every block. `seed` draws the A matrices.
pub fn attach<B: Backend>(model: Llama<B>, config: &LoraConfig, seed: u64) -> Result<Llama<B>, LoraError> {
    check(config)?;
    if has_adapters(&model) {
        return Err(LoraError::Config {
            key: "target_modules".into(),
            message: "the model already carries adapters; merge them first".into(),
        });
    }
    let mut model = model.no_grad();
    let device = model.embed.val().device();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = model.config.clone();
    for block in &mut model.blocks {
        for &t in &config.targets {
            let (d_in, d_out) = t.dims(&c);
            *block.lora.slot(t) = Some(LoraLinear::new(d_in, d_out, config, &mut rng, &device));
        }
    }
    Ok(model)
}

/// The model with every adapter folded into its base weights (`W + (alpha/r) A B`) and removed.
pub fn merge<B: Backend>(mut model: Llama<B>) -> Llama<B> {
    for block in &mut model.blocks {
        let lora = std::mem::take(&mut block.lora);
        for t in Target::ALL {
            let Some(adapter) = lora.get(t) else { continue };
            let base = match t {
                Target::Q => &mut block.q,
                Target::K => &mut block.k,
                Target::V => &mut block.v,
                Target::O => &mut block.o,
                Target::Gate => &mut block.gate,
                Target::Up => &mut block.up,
                Target::Down => &mut block.down,
            };
            // A quantised base weight is dequantised first: the merged weight is f32.
            let weight = match block.quantised.weights[t as usize].take() {
                Some(q) => Tensor::from_data(TensorData::new(q.to_in_out(), [q.cols(), q.rows()]), &adapter.a.device()),
                None => base.weight.val(),
            };
            base.weight = Param::from_tensor((weight + adapter.delta()).detach());
        }
    }
    model
}

/// The adapter's config as read from or written to `adapter_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterFile {
    pub config: LoraConfig,
    pub base_model: String,
}

pub(crate) fn tensor_name(layer: usize, t: Target, which: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{which}.weight", t.path())
}

/// Writes `model`'s adapters into `dir` in PEFT's format. `base_model` goes into
/// `base_model_name_or_path`; `config` gives rank, alpha, dropout and targets.
pub fn save_peft<B: Backend>(
    model: &Llama<B>,
    config: &LoraConfig,
    base_model: &str,
    dir: impl AsRef<Path>,
) -> Result<(), LoraError> {
    let dir = dir.as_ref();
    let io = |path: &Path, e: std::io::Error| LoraError::File { path: path.into(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (i, block) in model.blocks.iter().enumerate() {
        for &t in &config.targets {
            let Some(adapter) = block.lora.get(t) else {
                return Err(LoraError::Tensor {
                    name: tensor_name(i, t, "A"),
                    message: "the model has no adapter here, but the config lists it".into(),
                });
            };
            // Burn's [in, r] and [r, out] are PyTorch's lora_A [r, in] and lora_B [out, r] transposed.
            for (which, p) in [("A", &adapter.a), ("B", &adapter.b)] {
                let name = tensor_name(i, t, which);
                tensors.insert(name.clone(), peft_layout(p.val(), &name)?);
            }
        }
    }
    let path = dir.join("adapter_model.safetensors");
    let bytes = serialize_f32(&path, &tensors, None)?;
    std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;

    let modules: Vec<&str> = config.targets.iter().map(|t| t.module_name()).collect();
    let json = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
    });
    let path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    Ok(())
}

/// Shape and little-endian f32 bytes of `t` in PEFT's layout: Burn's `[in, r]` and `[r, out]`
/// transposed to `lora_A`'s `[r, in]` and `lora_B`'s `[out, r]` (AdamW's moments alike).
pub(crate) fn peft_layout<B: Backend>(t: Tensor<B, 2>, name: &str) -> Result<(Vec<usize>, Vec<u8>), LoraError> {
    let data = t.transpose().into_data();
    let shape = data.shape.to_vec();
    let values = data
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| LoraError::Tensor { name: name.into(), message: format!("cannot read: {e:?}") })?;
    Ok((shape, values.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

/// The bytes of a safetensors file holding `tensors` (F32, by name) and `metadata`, for `path`.
pub(crate) fn serialize_f32(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, LoraError> {
    let st = |e: safetensors::SafeTensorError| LoraError::File { path: path.into(), message: e.to_string() };
    let views = tensors
        .iter()
        .map(|(n, (s, b))| Ok((n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).map_err(st)?)))
        .collect::<Result<Vec<_>, LoraError>>()?;
    safetensors::serialize(views, metadata).map_err(st)
}

/// Tensor `name` of `st` (the file `file`), stored in PEFT's layout as `[rows, cols]`, back in
/// Burn's layout `[cols, rows]`.
pub(crate) fn read_burn_layout(
    st: &SafeTensors,
    file: &str,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<TensorData, LoraError> {
    let values = read_tensor(st, file, name, &[rows, cols])?;
    Ok(TensorData::new(transpose(&values, rows, cols), [cols, rows]))
}

/// Reads `adapter_config.json`, checking the keys this crate honours.
pub fn read_peft_config(dir: impl AsRef<Path>) -> Result<AdapterFile, LoraError> {
    let path = dir.as_ref().join("adapter_config.json");
    let bytes = read_capped(&path, MAX_CONFIG_BYTES, "an adapter config holds (1 MiB)")?;
    let text = String::from_utf8(bytes)
        .map_err(|e| LoraError::File { path: path.clone(), message: format!("not UTF-8: {e}") })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LoraError::File { path: path.clone(), message: format!("not JSON: {e}") })?;
    let bad = |key: &str, message: String| LoraError::Config { key: key.into(), message };
    let get = |key: &str| json.get(key).filter(|v| !v.is_null());
    if let Some(p) = get("peft_type") {
        if p.as_str() != Some("LORA") {
            return Err(bad("peft_type", format!("{p} is not \"LORA\"")));
        }
    }
    let rank = get("r").and_then(|v| v.as_u64()).ok_or_else(|| bad("r", "missing or not a whole number".into()))?;
    let alpha = match get("lora_alpha") {
        Some(v) => v.as_f64().ok_or_else(|| bad("lora_alpha", format!("{v} is not a number")))?,
        None => 8.0, // PEFT's default
    };
    let dropout = get("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let targets = match get("target_modules") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                let name = v.as_str().unwrap_or_default();
                Target::parse(name).ok_or_else(|| bad("target_modules", format!("unknown module {v}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()?
            .into_iter()
            .collect(),
        Some(v) => return Err(bad("target_modules", format!("{v} is not a list of module names"))),
        None => return Err(bad("target_modules", "missing".into())),
    };
    if let Some(b) = get("bias") {
        if b.as_str() != Some("none") {
            return Err(bad("bias", format!("{b} is not supported (only \"none\")")));
        }
    }
    for key in ["use_rslora", "use_dora", "fan_in_fan_out", "lora_bias"] {
        if get(key).and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad(key, "true is not supported".into()));
        }
    }
    // Settings that change which layers carry adapters, or their rank or scale, per module: an
    // adapter using them would load with the wrong shapes or scale, so it is refused.
    for key in ["rank_pattern", "alpha_pattern"] {
        if get(key).and_then(|v| v.as_object()).is_some_and(|o| !o.is_empty()) {
            return Err(bad(key, "per-module ranks or alphas are not supported".into()));
        }
    }
    for key in ["layers_to_transform", "layers_pattern", "modules_to_save", "layer_replication"] {
        if get(key).is_some_and(|v| !(v.as_array().is_some_and(|a| a.is_empty()))) {
            return Err(bad(key, "is not supported (adapters on every layer, nothing else saved)".into()));
        }
    }
    let config = LoraConfig { rank: rank as usize, alpha, dropout, targets };
    check(&config)?;
    let base_model = get("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    Ok(AdapterFile { config, base_model })
}

/// Reads the adapter in `dir` (PEFT's format) onto `model`, which must carry none. The base
/// stays frozen; the adapters are trainable, so training can continue from them.
pub fn load_peft<B: Backend>(model: Llama<B>, dir: impl AsRef<Path>) -> Result<(Llama<B>, AdapterFile), LoraError> {
    let dir = dir.as_ref();
    let file = read_peft_config(dir)?;
    let path = dir.join("adapter_model.safetensors");
    // Nothing is allocated for the adapter until its config and tensors agree with the model: a
    // rank past the model's widths, or a file larger than that rank's tensors in f32 (with room
    // for the header), is refused first.
    let c = model.config.clone();
    let r = file.config.rank;
    let widest = file.config.targets.iter().map(|t| t.dims(&c)).map(|(i, o)| i.max(o)).max().unwrap_or(0);
    if r > widest {
        return Err(LoraError::Config {
            key: "r".into(),
            message: format!("rank {r} is more than the widest adapted projection ({widest})"),
        });
    }
    let expected_bytes: u64 =
        file.config.targets.iter().map(|t| t.dims(&c)).map(|(i, o)| (r * (i + o) * 4) as u64).sum::<u64>()
            * c.n_layers as u64;
    let holds = format!("rank {r} adapters on {} layers hold", c.n_layers);
    let bytes = read_capped(&path, expected_bytes + (1 << 20), &holds)?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| LoraError::File { path: path.clone(), message: e.to_string() })?;
    for i in 0..c.n_layers {
        for &t in &file.config.targets {
            let (d_in, d_out) = t.dims(&c);
            for (which, shape) in [("A", [r, d_in]), ("B", [d_out, r])] {
                let name = tensor_name(i, t, which);
                let found = st.tensor(&name).map(|v| v.shape().to_vec()).map_err(|_| LoraError::Tensor {
                    name: name.clone(),
                    message: "missing from adapter_model.safetensors".into(),
                })?;
                if found != shape {
                    return Err(LoraError::Tensor {
                        name,
                        message: format!("shape {found:?}, but rank {r} on this model needs {shape:?}"),
                    });
                }
            }
        }
    }
    let mut model = attach(model, &file.config, 0)?;
    let device = model.embed.val().device();
    let mut expected = BTreeSet::new();
    for (i, block) in model.blocks.iter_mut().enumerate() {
        for &t in &file.config.targets {
            let (d_in, d_out) = t.dims(&c);
            let adapter = block.lora.slot(t).as_mut().expect("attach put an adapter on every target");
            // lora_A [r, in] becomes Burn's [in, r]; lora_B [out, r] becomes [r, out].
            for (which, rows, cols) in [("A", r, d_in), ("B", d_out, r)] {
                let name = tensor_name(i, t, which);
                let p =
                    Param::from_data(read_burn_layout(&st, "adapter_model.safetensors", &name, rows, cols)?, &device);
                if which == "A" {
                    adapter.a = p;
                } else {
                    adapter.b = p;
                }
                expected.insert(name);
            }
        }
    }
    let mut names = st.names();
    names.sort();
    if let Some(name) = names.into_iter().find(|n| !expected.contains(*n)) {
        return Err(LoraError::Tensor {
            name: name.to_string(),
            message: format!(
                "not expected by adapter_config.json (layers 0..{}, modules {:?})",
                c.n_layers,
                file.config.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>()
            ),
        });
    }
    Ok((model, file))
}

fn read_tensor(st: &SafeTensors, file: &str, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoraError> {
    let err = |message: String| LoraError::Tensor { name: name.into(), message };
    let view = st.tensor(name).map_err(|_| err(format!("missing from {file}")))?;
    if view.shape() != shape {
        return Err(err(format!("has shape {:?}, the config and model need {shape:?}", view.shape())));
    }
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(err(format!("is stored as {other:?}; adapters are read as F32, F16 or BF16"))),
    };
    if let Some(at) = values.iter().position(|v: &f32| !v.is_finite()) {
        return Err(err(format!("holds {} at index {at}; an adapter's weights are finite numbers", values[at])));
    }
    Ok(values)
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests;
