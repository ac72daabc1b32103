//! Builds a Llama from a checkpoint: a GGUF file, or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
//! It must check every tensor's presence and shape against the config and name the tensor when one is wrong; no panics.

use super::adapter::{BlockLora, Target};
use super::kernels::quant::{keeps_quantised, QuantMatrix};
use super::kernels::Kernels;
use super::{Block, Llama, LlamaConfig, ModelError, QuantisedBase};
use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A tensor read from a checkpoint: its row-major shape and values.
pub type Values = (Vec<usize>, Vec<f32>);

/// Where tensors come from, by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
pub trait WeightSource {
    /// The tensor's row-major shape and values, or `None` if the checkpoint has no such tensor.
    fn get(&self, name: &str) -> Result<Option<Values>, ModelError>;

    /// A linear weight (`[out, in]`) in its block-quantised form, or `None` when the checkpoint
    /// does not hold it quantised (then [`WeightSource::get`] gives its values).
    fn get_quantised(&self, _name: &str) -> Result<Option<QuantMatrix>, ModelError> {
        Ok(None)
    }
}

/// How to load a checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Keep the decoder blocks' projection weights in the GGUF file's block-quantised form
    /// (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and dequantise them on the fly (QLoRA's frozen base).
    /// CPU backend only; embeddings, norms and the output projection stay f32.
    pub quantised_base: bool,
    /// Which code runs the model's passes ([`Llama::kernels`]); the default is the CPU
    /// kernels with 8-bit inputs on a quantised base, VNNI where the CPU has it.
    pub kernels: Kernels,
}

/// A model with the tokenizer and chat template of its checkpoint.
pub struct Checkpoint<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl<B: Backend> Checkpoint<B> {
    /// Opens a `.gguf` file or a Hugging Face checkpoint folder.
    pub fn open(path: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        Self::open_with(path, device, &LoadOptions::default())
    }

    /// [`Checkpoint::open`] with options.
    pub fn open_with(path: impl AsRef<Path>, device: &B::Device, options: &LoadOptions) -> Result<Self, ModelError> {
        let path = path.as_ref();
        if path.is_dir() {
            if options.quantised_base {
                return Err(ModelError::Unsupported {
                    what: format!(
                        "{}: a quantised base needs a GGUF file with block-quantised weights, not a Hugging Face folder",
                        path.display()
                    ),
                });
            }
            let model = load_hf_dir(path, device)?.with_kernels(options.kernels);
            let tokenizer = Tokenizer::from_hf_json(path.join("tokenizer.json"))?;
            let config = path.join("tokenizer_config.json");
            let template =
                if config.exists() { ChatTemplate::from_tokenizer_config(config)? } else { ChatTemplate::chatml() };
            Ok(Checkpoint { model, tokenizer, template })
        } else {
            let file = GgufFile::open(path)?;
            let model = load_gguf_with(&file, device, options)?;
            let tokenizer = Tokenizer::from_gguf(&file)?;
            let template = ChatTemplate::from_gguf(&file)?;
            Ok(Checkpoint { model, tokenizer, template })
        }
    }
}

// ---- GGUF ----

struct GgufSource<'a> {
    file: &'a GgufFile,
    /// llama.cpp's converter interleaves the rotary halves of q and k for these architectures.
    permuted: bool,
    n_heads: usize,
    n_kv_heads: usize,
}

/// The GGUF name of a Hugging Face tensor name.
pub(crate) fn gguf_name(name: &str) -> Option<String> {
    let top = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undoes llama.cpp's reordering of q/k rows: within each head, its row `2i + j` is Hugging
/// Face's row `j * d/2 + i` (the converter pairs adjacent dimensions for ggml's rope).
fn unpermute_rows(values: &[f32], rows: usize, row_len: usize, heads: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len());
    for src in unpermute_order(rows, heads) {
        out.extend_from_slice(&values[src * row_len..(src + 1) * row_len]);
    }
    out
}

/// For each Hugging Face row of a q/k weight, the GGUF row it comes from.
fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                order[h * d + j * (d / 2) + i] = h * d + 2 * i + j;
            }
        }
    }
    order
}

impl GgufSource<'_> {
    /// The head count of q or k weights (and biases) that the converter permuted.
    fn permuted_heads(&self, g: &str) -> Option<usize> {
        if !self.permuted {
            None
        } else if g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias") {
            Some(self.n_heads)
        } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
            Some(self.n_kv_heads)
        } else {
            None
        }
    }
}

impl WeightSource for GgufSource<'_> {
    fn get_quantised(&self, name: &str) -> Result<Option<QuantMatrix>, ModelError> {
        let Some(g) = gguf_name(name) else { return Ok(None) };
        let Ok(info) = self.file.tensor(&g) else { return Ok(None) };
        if !keeps_quantised(info.ty) || info.dims.len() != 2 {
            return Ok(None);
        }
        let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
        let bytes = self.file.tensor_bytes(&g)?.to_vec();
        let q = QuantMatrix::new(info.ty, rows, cols, bytes)
            .map_err(|message| ModelError::Unsupported { what: format!("tensor {g}: {message}") })?;
        Ok(Some(match self.permuted_heads(&g) {
            Some(heads) => {
                if rows % heads != 0 || (rows / heads) % 2 != 0 {
                    return Err(ModelError::WrongShape { name: g, expected: vec![heads * 2], found: vec![rows, cols] });
                }
                q.permute_rows(&unpermute_order(rows, heads))
            }
            None => q,
        }))
    }

    fn get(&self, name: &str) -> Result<Option<Values>, ModelError> {
        let Some(g) = gguf_name(name) else { return Ok(None) };
        let Ok(info) = self.file.tensor(&g) else { return Ok(None) };
        let shape = info.shape();
        let values = self.file.tensor_f32(&g)?;
        let heads = if g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias") {
            Some(self.n_heads)
        } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
            Some(self.n_kv_heads)
        } else {
            None
        };
        let values = match heads {
            Some(heads) if self.permuted => {
                let rows = shape[0];
                if rows % heads != 0 || (rows / heads) % 2 != 0 {
                    return Err(ModelError::WrongShape { name: g, expected: vec![heads * 2], found: shape });
                }
                let row_len = values.len() / rows;
                unpermute_rows(&values, rows, row_len, heads)
            }
            _ => values,
        };
        Ok(Some((shape, values)))
    }
}

/// The model in a GGUF file, dequantised to f32.
pub fn load_gguf<B: Backend>(file: &GgufFile, device: &B::Device) -> Result<Llama<B>, ModelError> {
    load_gguf_with(file, device, &LoadOptions::default())
}

/// [`load_gguf`] with options.
pub fn load_gguf_with<B: Backend>(
    file: &GgufFile,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<Llama<B>, ModelError> {
    let config = LlamaConfig::from_gguf(file)?;
    // llama.cpp's LlamaModel converter (llama, and Mistral written as llama) permutes q/k;
    // Qwen2's converter keeps Hugging Face's order, as ggml's NeoX rope uses it.
    let permuted = match config.architecture.as_str() {
        "llama" | "mistral" => true,
        "qwen2" => false,
        other => {
            return Err(ModelError::Unsupported {
                what: format!("general.architecture = {other:?}: this loader runs llama, mistral and qwen2 GGUF files"),
            })
        }
    };
    let source = GgufSource { file, permuted, n_heads: config.n_heads, n_kv_heads: config.n_kv_heads };
    if options.quantised_base && super::kernels::cpu_backend::<B>().is_none() {
        return Err(ModelError::Unsupported { what: "a quantised base runs on the CPU backend only".into() });
    }
    let model = build(config, &source, device, options.quantised_base)?;
    if options.quantised_base && !model.has_quantised_base() {
        return Err(ModelError::Unsupported {
            what: "the file holds no block-quantised projection weights (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) to keep".into(),
        });
    }
    Ok(model.with_kernels(options.kernels))
}

// ---- Hugging Face safetensors ----

struct SafetensorsSource {
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name to shard index.
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    fn open(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|source| ModelError::Io { path: index_path.clone(), source })?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Safetensors { path: index_path.clone(), message: format!("not JSON: {e}") })?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Safetensors {
                path: index_path.clone(),
                message: "has no weight_map object".into(),
            })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    message: format!("weight_map[{name:?}] is not a file name"),
                })?;
                let file = dir.join(file);
                if !files.contains(&file) {
                    files.push(file);
                }
            }
            files.sort();
            files
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let f = File::open(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
            // SAFETY: the file is opened read-only; as with any memory map, it must not be
            // truncated by another process while the model loads.
            let map =
                unsafe { memmap2::Mmap::map(&f) }.map_err(|source| ModelError::Io { path: path.clone(), source })?;
            let (_, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| ModelError::Safetensors { path: path.clone(), message: e.to_string() })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push((path, map));
        }
        Ok(SafetensorsSource { shards, index })
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&self, name: &str) -> Result<Option<Values>, ModelError> {
        let Some(&i) = self.index.get(name) else { return Ok(None) };
        let (path, map) = &self.shards[i];
        let err = |e: safetensors::SafeTensorError| ModelError::Safetensors {
            path: path.clone(),
            message: format!("tensor {name}: {e}"),
        };
        let st = SafeTensors::deserialize(map).map_err(err)?;
        let view = st.tensor(name).map_err(err)?;
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(ModelError::UnsupportedDtype { name: name.into(), dtype: format!("{other:?}") }),
        };
        Ok(Some((view.shape().to_vec(), values)))
    }
}

/// The model in a Hugging Face checkpoint folder: `config.json` and `model.safetensors`, or
/// shards listed by `model.safetensors.index.json`.
pub fn load_hf_dir<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<Llama<B>, ModelError> {
    let dir = dir.as_ref();
    let config = LlamaConfig::from_hf_json(dir.join("config.json"))?;
    let source = SafetensorsSource::open(dir)?;
    build(config, &source, device, false)
}

/// Writes `model`'s weights as one `model.safetensors` (F32, Hugging Face names) and its `config.json` into `dir`.
pub fn save_safetensors<B: Backend>(model: &Llama<B>, dir: impl AsRef<Path>) -> Result<(), ModelError> {
    let dir = dir.as_ref();
    let io = |path: PathBuf| move |source| ModelError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io(dir.into()))?;
    let path = dir.join("model.safetensors");
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut failed = None;
    let mut put = |name: String, t: TensorData| {
        let shape = t.shape.to_vec();
        match t.convert::<f32>().to_vec::<f32>() {
            Ok(values) => {
                tensors.insert(name, (shape, values.iter().flat_map(|x| x.to_le_bytes()).collect()));
            }
            Err(e) => failed = Some(format!("cannot read {name} back from the device: {e:?}")),
        }
    };
    // Burn keeps linear weights [in, out]; checkpoints keep PyTorch's [out, in].
    let linear = |l: &Linear<B>, q: Option<&Arc<QuantMatrix>>| match q {
        Some(q) => TensorData::new(q.to_out_in(), [q.rows(), q.cols()]),
        None => l.weight.val().transpose().into_data(),
    };
    put("model.embed_tokens.weight".into(), model.embed.val().into_data());
    put("model.norm.weight".into(), model.norm.val().into_data());
    if !model.config.tie_word_embeddings {
        let head = match &model.quantised_head {
            Some(q) => TensorData::new(q.to_out_in(), [q.rows(), q.cols()]),
            None => model.lm_head.val().transpose().into_data(),
        };
        put("lm_head.weight".into(), head);
    }
    for (i, b) in model.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), b.attn_norm.val().into_data());
        put(format!("{p}.post_attention_layernorm.weight"), b.mlp_norm.val().into_data());
        for t in Target::ALL {
            let (l, q) = b.base(t);
            let name = t.path();
            put(format!("{p}.{name}.weight"), linear(l, q));
            if let Some(bias) = &l.bias {
                put(format!("{p}.{name}.bias"), bias.val().into_data());
            }
        }
    }
    if let Some(message) = failed {
        return Err(ModelError::Safetensors { path, message });
    }
    let st_err =
        |e: safetensors::SafeTensorError| ModelError::Safetensors { path: path.clone(), message: e.to_string() };
    let views = tensors
        .iter()
        .map(|(n, (shape, bytes))| {
            Ok((n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(st_err)?))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| ModelError::Safetensors { path: path.clone(), message: e.to_string() })?;
    std::fs::write(&path, bytes).map_err(io(path.clone()))?;
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&model.config.to_hf_value()).unwrap_or_default();
    std::fs::write(&config, text).map_err(io(config.clone()))?;
    Ok(())
}

// ---- building ----

/// Builds the model from `source`, checking every tensor's shape against `config`.
pub(crate) fn build<B: Backend>(
    config: LlamaConfig,
    source: &dyn WeightSource,
    device: &B::Device,
    quantised_base: bool,
) -> Result<Llama<B>, ModelError> {
    let c = &config;
    let fetch = |name: &str, expected: &[usize]| -> Result<Option<Vec<f32>>, ModelError> {
        let Some((shape, values)) = source.get(name)? else { return Ok(None) };
        if shape != expected {
            return Err(ModelError::WrongShape { name: name.into(), expected: expected.to_vec(), found: shape });
        }
        Ok(Some(values))
    };
    let need = |name: &str, expected: &[usize]| -> Result<Vec<f32>, ModelError> {
        fetch(name, expected)?.ok_or_else(|| ModelError::MissingTensor { name: name.into() })
    };
    let vector = |name: &str, n: usize| -> Result<Param<Tensor<B, 1>>, ModelError> {
        Ok(Param::from_data(TensorData::new(need(name, &[n])?, [n]), device))
    };
    // A PyTorch [out, in] weight becomes Burn's [in, out].
    // With a quantised base, a projection whose weight the file holds quantised keeps it so and
    // gets an empty placeholder weight.
    let linear = |prefix: &str, d_in: usize, d_out: usize, bias: bool, quantised: &mut Option<Arc<QuantMatrix>>| {
        let name = format!("{prefix}.weight");
        let kept = if quantised_base { source.get_quantised(&name)? } else { None };
        let weight = match kept {
            Some(q) => {
                if (q.rows(), q.cols()) != (d_out, d_in) {
                    return Err(ModelError::WrongShape {
                        name,
                        expected: vec![d_out, d_in],
                        found: vec![q.rows(), q.cols()],
                    });
                }
                *quantised = Some(Arc::new(q));
                Param::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]), device)
            }
            None => {
                let w = need(&name, &[d_out, d_in])?;
                Param::from_data(TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]), device)
            }
        };
        let bias = if bias { Some(vector(&format!("{prefix}.bias"), d_out)?) } else { None };
        Ok::<_, ModelError>(Linear { weight, bias })
    };
    let (h, qd, kvd, ff) = (c.hidden_size, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.intermediate_size);
    let embed_values = need("model.embed_tokens.weight", &[c.vocab_size, h])?;
    let head = if c.tie_word_embeddings {
        transpose(&embed_values, c.vocab_size, h)
    } else {
        match fetch("lm_head.weight", &[c.vocab_size, h])? {
            Some(w) => transpose(&w, c.vocab_size, h),
            None => return Err(ModelError::MissingTensor { name: "lm_head.weight".into() }),
        }
    };
    // A quantised base keeps the output projection quantised too when the file does: per decoded
    // token it is the largest single read of weights (the vocabulary times the width).
    let quantised_head = if quantised_base {
        let name = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        source.get_quantised(name)?.filter(|q| (q.rows(), q.cols()) == (c.vocab_size, h)).map(Arc::new)
    } else {
        None
    };
    let lm_head = match quantised_head {
        Some(_) => Param::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]), device),
        None => Param::from_data(TensorData::new(head, [h, c.vocab_size]), device),
    };
    let embed = Param::from_data(TensorData::new(embed_values, [c.vocab_size, h]), device);
    let mut blocks = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = format!("model.layers.{i}");
        let mut quantised = QuantisedBase::default();
        let [wq, wk, wv, wo, wg, wu, wd] = &mut quantised.weights;
        blocks.push(Block {
            attn_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
            q: linear(&format!("{p}.self_attn.q_proj"), h, qd, c.attention_bias, wq)?,
            k: linear(&format!("{p}.self_attn.k_proj"), h, kvd, c.attention_bias, wk)?,
            v: linear(&format!("{p}.self_attn.v_proj"), h, kvd, c.attention_bias, wv)?,
            o: linear(&format!("{p}.self_attn.o_proj"), qd, h, false, wo)?,
            mlp_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            gate: linear(&format!("{p}.mlp.gate_proj"), h, ff, false, wg)?,
            up: linear(&format!("{p}.mlp.up_proj"), h, ff, false, wu)?,
            down: linear(&format!("{p}.mlp.down_proj"), ff, h, false, wd)?,
            lora: BlockLora::default(),
            quantised,
        });
    }
    let norm = vector("model.norm.weight", h)?;
    Ok(Llama {
        embed,
        blocks,
        norm,
        lm_head,
        config,
        quantised_head,
        kernels: Kernels::default(),
        panels: Default::default(),
    })
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`, in tiles that stay in cache (a plain
/// double loop took a seventh of SmolLM2's load time).
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}
