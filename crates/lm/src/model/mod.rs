//! A Llama-family decoder in Burn, generic over the backend: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.
//! It must not know file formats (weights.rs turns GGUF and safetensors into the tensors it is built from) nor sample tokens.

//! The decoder that Llama 2/3, Mistral, Qwen2, DeepSeek-Coder and SmolLM2
//! share, chosen in its details by a [`LlamaConfig`].
//!
//! Hidden states are kept as `[rows, hidden]` matrices (a row per token of
//! every sequence in the batch); attention alone reshapes them to
//! `[batch, heads, tokens, head_dim]`. Rotary embeddings follow Hugging Face's
//! convention (dimension `i` pairs with `i + head_dim/2`); GGUF files of the
//! `llama` architecture, whose converter interleaves the pairs, are put back
//! in that order when loaded.

pub(crate) mod adapter;
mod config;
pub mod kernels;
pub(crate) mod loss;
mod weights;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
pub(crate) mod tests;

pub use config::{LlamaConfig, RopeScaling};
pub use kernels::{Inputs, Kernels, QuantMatrix};
pub use weights::{load_gguf, load_gguf_with, load_hf_dir, save_safetensors, Checkpoint, LoadOptions, WeightSource};

use crate::chat::ChatError;
use crate::gguf::GgufError;
use crate::tokenizer::TokenizerError;
use adapter::{BlockLora, Target};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong loading or running a model. Messages name the file, key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config {key}: {message}")]
    Config { key: String, message: String },
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, the config needs {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name} is stored as {dtype}, which this loader does not read (it reads F32, F16 and BF16)")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("{}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("not supported: {what}")]
    Unsupported { what: String },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("{what}")]
    Input { what: String },
}

/// One decoder block: attention then a SwiGLU MLP, each behind an RMSNorm and a residual.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attn_norm: Param<Tensor<B, 1>>,
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    pub mlp_norm: Param<Tensor<B, 1>>,
    pub gate: Linear<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
    /// LoRA adapters on some of the projections; empty for a plain model.
    pub lora: BlockLora<B>,
    /// Projections whose frozen weights stay block-quantised (QLoRA); their `Linear`'s weight is
    /// then an empty placeholder and only its bias is used.
    #[module(skip)]
    pub quantised: QuantisedBase,
}

/// The quantised weights of a block's projections, by [`Target`] (none for an f32 model).
#[derive(Debug, Clone, Default)]
pub struct QuantisedBase {
    pub weights: [Option<Arc<QuantMatrix>>; 7],
}

impl QuantisedBase {
    pub fn get(&self, target: Target) -> Option<&Arc<QuantMatrix>> {
        self.weights[target as usize].as_ref()
    }
    pub fn is_empty(&self) -> bool {
        self.weights.iter().all(Option::is_none)
    }
}

impl<B: Backend> Block<B> {
    /// A projection of `x` through `target`'s base weights plus its adapter, when it has one.
    fn proj(&self, target: Target, x: Tensor<B, 2>, pass: Pass) -> Tensor<B, 2> {
        let (linear, quantised) = self.base(target);
        if let Some(adapter) = self.lora.get(target) {
            if pass.fused {
                return kernels::lora_linear(x, linear, quantised, adapter);
            }
        }
        let Some(q) = quantised else {
            return match self.lora.get(target) {
                Some(adapter) => adapter.forward(linear, x),
                None => linear.forward(x),
            };
        };
        let mut y = kernels::quantised_product(q, x.clone(), pass.inputs);
        if let Some(bias) = &linear.bias {
            y = y + bias.val().unsqueeze::<2>();
        }
        match self.lora.get(target) {
            Some(adapter) => y + adapter.low_rank(x),
            None => y,
        }
    }

    /// `target`'s base projection, with its quantised weight when it keeps one.
    pub fn base(&self, target: Target) -> (&Linear<B>, Option<&Arc<QuantMatrix>>) {
        use Target::*;
        let linear = match target {
            Q => &self.q,
            K => &self.k,
            V => &self.v,
            O => &self.o,
            Gate => &self.gate,
            Up => &self.up,
            Down => &self.down,
        };
        (linear, self.quantised.get(target))
    }
}

/// A Llama-family decoder. Linear weights are stored `[in, out]` (Burn's
/// layout, the transpose of PyTorch's).
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub norm: Param<Tensor<B, 1>>,
    /// `[hidden, vocab]`; a copy of the embedding's transpose when the checkpoint ties them.
    pub lm_head: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub config: LlamaConfig,
    /// The output projection kept block-quantised (`[vocab, hidden]`), used by the CPU kernels
    /// instead of `lm_head` when the base is quantised.
    #[module(skip)]
    pub quantised_head: Option<Arc<QuantMatrix>>,
    /// Which code runs its passes ([`Kernels`]; from [`LoadOptions::kernels`]).
    #[module(skip)]
    pub kernels: Kernels,
    /// The f32 weights packed for decoding steps ([`Kernels::panels`]), built on first use and
    /// shared by the model's clones.
    #[module(skip)]
    pub(crate) panels: kernels::panels::PanelCache,
}

/// What a pass's layers take from the model's [`Kernels`] and backend.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// Training's fused operations ([`kernels::training`]).
    fused: bool,
    /// How products with a quantised weight take their inputs.
    inputs: Inputs,
}

/// Keys and values of every past position, per block: `[batch, kv_heads, positions, head_dim]`.
/// In Burn's passes every row of the batch holds the same number of positions; the CPU kernels'
/// cache keeps a number per row, so that requests that began at different times decode
/// together ([`KvCache::join`]), and `len` is then the longest row's.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// The CPU kernels' cache, preallocated and written in place; `layers` stay empty then.
    flat: Option<kernels::cpu::FlatKv>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(config: &LlamaConfig) -> Self {
        KvCache { layers: vec![None; config.n_layers], flat: None, len: 0 }
    }

    /// Positions held per row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of the batch it holds (0 when empty).
    pub fn batch(&self) -> usize {
        if let Some(flat) = &self.flat {
            return flat.batch();
        }
        self.layers.iter().flatten().next().map_or(0, |(k, _)| k.dims()[0])
    }

    /// The first `len` positions of a one-row cache of the CPU kernels (at most those it holds),
    /// as a new cache that goes on from there: the prefill of a prompt's first `len` tokens.
    /// `None` for other caches.
    pub fn prefix(&self, len: usize) -> Option<Self> {
        let flat = self.flat.as_ref().filter(|f| f.batch() == 1)?;
        let flat = flat.row_prefix(0, len);
        let len = flat.row_len(0);
        Some(KvCache { layers: self.layers.clone(), flat: Some(flat), len })
    }

    /// Bytes the cache's buffers hold (the CPU kernels' cache; 0 for others).
    pub fn bytes(&self) -> u64 {
        self.flat.as_ref().map_or(0, |f| f.bytes())
    }

    /// A cache of one row repeated `n` times: the prompt prefilled once, shared by `n` continuations.
    pub fn repeat_rows(&self, n: usize) -> Self {
        if let Some(flat) = &self.flat {
            let rows: Vec<usize> = (0..n).flat_map(|_| 0..flat.batch()).collect();
            return KvCache { layers: self.layers.clone(), flat: Some(flat.gather_rows(&rows)), len: self.len };
        }
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| (k.clone().repeat_dim(0, n), v.clone().repeat_dim(0, n))));
        KvCache { layers: layers.collect(), flat: None, len: self.len }
    }

    /// Whether other rows can [`join`](Self::join) this cache: it is the CPU kernels' (Burn's
    /// own passes keep one length for every row), or holds nothing yet.
    pub fn joinable(&self) -> bool {
        self.flat.is_some() || self.layers.iter().all(Option::is_none)
    }

    /// Positions row `r` holds (rows that joined at different times hold different numbers).
    pub fn row_len(&self, r: usize) -> usize {
        self.flat.as_ref().map_or(self.len, |f| f.row_len(r))
    }

    /// This cache's rows, then `other`'s, each going on from its own length: how a request joins
    /// the requests decoding (continuous batching). `None` unless both are the CPU kernels'
    /// caches (or one holds nothing).
    pub fn join(self, other: KvCache<B>) -> Option<KvCache<B>> {
        if self.batch() == 0 {
            return Some(other);
        }
        if other.batch() == 0 {
            return Some(self);
        }
        let flat = self.flat.as_ref()?.join(other.flat.as_ref()?);
        Some(KvCache { layers: self.layers, len: flat.longest(), flat: Some(flat) })
    }

    /// Keeps only the given rows, in that order (finished streams leave the batch).
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        if let Some(flat) = &self.flat {
            let flat = flat.gather_rows(rows);
            return KvCache { layers: self.layers.clone(), len: flat.longest(), flat: Some(flat) };
        }
        let Some((k0, _)) = self.layers.iter().flatten().next() else { return self.clone() };
        let device = k0.device();
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| (k.clone().select(0, idx.clone()), v.clone().select(0, idx.clone()))));
        KvCache { layers: layers.collect(), flat: None, len: self.len }
    }
}

impl<B: Backend> Llama<B> {
    /// Logits of the last position of each row, `[batch, vocab]`, after running `tokens`
    /// (`batch` rows of equal length, row-major) through the model on top of `cache`, which
    /// it extends.
    pub fn forward_last(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        self.check_input(tokens, batch, cache)?;
        if let Some(logits) = kernels::forward_last(self, tokens, batch, cache) {
            return Ok(logits);
        }
        let hidden = self.hidden(tokens, batch, cache, false)?;
        let [rows, width] = hidden.dims();
        let seq = rows / batch;
        let last = hidden.reshape([batch, seq, width]).narrow(1, seq - 1, 1).reshape([batch, width]);
        Ok(self.output(last))
    }

    /// Logits of every position, `[batch, tokens, vocab]`.
    pub fn forward_all(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        self.check_input(tokens, batch, cache)?;
        if let Some(logits) = kernels::forward_all(self, tokens, batch, cache) {
            return Ok(logits);
        }
        let hidden = self.hidden(tokens, batch, cache, false)?;
        let [rows, _] = hidden.dims();
        Ok(self.output(hidden).reshape([batch, rows / batch, self.config.vocab_size]))
    }

    /// The mean cross-entropy of the model's next-token predictions over `tokens` (`batch` rows
    /// of equal length, row-major) against `labels` (one per token: the token that position
    /// should predict, or [`loss::IGNORE`]), and the number of positions counted; with none
    /// counted the loss is zero. What training differentiates: on the CPU backend with autodiff
    /// and the kernels chosen, the output projection and the loss are one operation over the
    /// labelled positions alone ([`kernels::head_loss`]).
    pub fn loss(&self, tokens: &[u32], batch: usize, labels: &[i64]) -> Result<(Tensor<B, 1>, usize), ModelError> {
        if labels.len() != tokens.len() {
            return Err(ModelError::Input {
                what: format!("{} labels for {} tokens: one label per token", labels.len(), tokens.len()),
            });
        }
        let mut cache = KvCache::new(&self.config);
        self.check_input(tokens, batch, &cache)?;
        if let Some(logits) = kernels::forward_all(self, tokens, batch, &mut cache) {
            return Ok(loss::causal_lm_loss(logits, labels));
        }
        let hidden = self.hidden(tokens, batch, &mut cache, true)?;
        if kernels::training::<B>(&self.kernels) {
            let head = self.quantised_head.as_ref();
            if let Some(fused) = kernels::head_loss(&hidden, &self.lm_head.val(), head, labels) {
                return Ok(fused);
            }
        }
        let rows = hidden.dims()[0];
        let logits = self.output(hidden).reshape([batch, rows / batch, self.config.vocab_size]);
        Ok(loss::causal_lm_loss(logits, labels))
    }

    /// Logits of final-norm hidden states `[rows, hidden]`.
    fn output(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.quantised_head {
            Some(q) => kernels::quantised_product(q, hidden, self.kernels.inputs()),
            None => hidden.matmul(self.lm_head.val()),
        }
    }

    /// Which code runs this model's passes.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// This model with its passes run by `kernels`; it keeps its tensors (clone it first to
    /// keep both: a clone shares them).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// What the layers of a pass take from the options and the backend.
    fn pass(&self) -> Pass {
        Pass { fused: kernels::training::<B>(&self.kernels), inputs: self.kernels.inputs() }
    }

    /// Whether some projection keeps a quantised weight.
    pub fn has_quantised_base(&self) -> bool {
        self.blocks.iter().any(|b| !b.quantised.is_empty())
    }

    fn check_input(&self, tokens: &[u32], batch: usize, cache: &KvCache<B>) -> Result<(), ModelError> {
        let c = &self.config;
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(ModelError::Input {
                what: format!("{} tokens cannot be split into {batch} rows of equal length", tokens.len()),
            });
        }
        if cache.batch() != 0 && cache.batch() != batch {
            return Err(ModelError::Input {
                what: format!("the cache holds {} rows but {batch} were given", cache.batch()),
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        Ok(())
    }

    /// Final-norm hidden states, `[batch * tokens, hidden]`. `training`: the caller only
    /// differentiates them and drops `cache`, which then stays empty, so that attention may take
    /// the fused operation of [`kernels::attention`] on `Autodiff<Flex>`.
    fn hidden(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache<B>,
        training: bool,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let c = &self.config;
        let seq = tokens.len() / batch;
        let past = cache.len;
        let device = self.embed.val().device();
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &device);
        let mut x = self.embed.val().select(0, ids);

        // Training on the CPU backend takes the fused attention, which needs neither Burn's
        // rotary tables nor the mask tensor: its own tables, once for every layer.
        let pass = self.pass();
        let fused = training && pass.fused;
        let rotary = fused.then(|| std::sync::Arc::new(kernels::Rotary::new(&c.inv_freq(), seq)));
        let burn_path = (!fused).then(|| {
            let mask = (seq > 1).then(|| causal_mask::<B>(seq, past, c.n_heads / c.n_kv_heads, &device));
            (self.rope_tables(past, seq, &device), mask)
        });
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = rms_norm(x.clone(), block.attn_norm.val(), c.rms_norm_eps, pass);
            let attn = match (&rotary, &burn_path) {
                (Some(rotary), _) => {
                    use Target::{K, O, Q, V};
                    let shape =
                        kernels::AttentionShape { batch, seq, heads: c.n_heads, kv_heads: c.n_kv_heads, d: c.head_dim };
                    let (q, k, v) =
                        (block.proj(Q, h.clone(), pass), block.proj(K, h.clone(), pass), block.proj(V, h, pass));
                    block.proj(O, kernels::attention(q, k, v, shape, rotary), pass)
                }
                (None, Some(((cos, sin), mask))) => {
                    self.attention(block, h, (batch, seq), (cos, sin), mask.clone(), layer_cache, pass)
                }
                (None, None) => unreachable!("one of the two paths is prepared"),
            };
            x = x + attn;
            let h = rms_norm(x.clone(), block.mlp_norm.val(), c.rms_norm_eps, pass);
            let (gate, up) = (block.proj(Target::Gate, h.clone(), pass), block.proj(Target::Up, h, pass));
            let gated = if pass.fused { kernels::swiglu(gate, up) } else { silu(gate) * up };
            let mlp = block.proj(Target::Down, gated, pass);
            x = x + mlp;
        }
        cache.len += seq;
        Ok(rms_norm(x, self.norm.val(), c.rms_norm_eps, pass))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        block: &Block<B>,
        h: Tensor<B, 2>,
        (batch, seq): (usize, usize),
        (cos, sin): (&Tensor<B, 4>, &Tensor<B, 4>),
        mask: Option<Tensor<B, 4>>,
        layer_cache: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        pass: Pass,
    ) -> Tensor<B, 2> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let split = |t: Tensor<B, 2>, n: usize| t.reshape([batch, seq, n, d]).swap_dims(1, 2);
        let q = rope(split(block.proj(Target::Q, h.clone(), pass), heads), cos, sin);
        let k = rope(split(block.proj(Target::K, h.clone(), pass), kv_heads), cos, sin);
        let v = split(block.proj(Target::V, h, pass), kv_heads);
        let (k, v) = match layer_cache.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *layer_cache = Some((k.clone(), v.clone()));

        // Grouped-query attention without copying keys: the `rep` query heads that share a
        // key/value head are stacked along the token axis and meet it in one matmul.
        let rep = heads / kv_heads;
        let q = q.reshape([batch, kv_heads, rep * seq, d]);
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt());
        if let Some(mask) = mask {
            scores = scores + mask;
        }
        let out = softmax(scores, 3).matmul(v);
        let out = out.reshape([batch, heads, seq, d]).swap_dims(1, 2).reshape([batch * seq, heads * d]);
        block.proj(Target::O, out, pass)
    }

    /// cos and sin for positions `past..past + seq`, `[1, 1, seq, head_dim]`, each frequency
    /// repeated over both halves as Hugging Face's rotary embedding lays them out.
    fn rope_tables(&self, past: usize, seq: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let inv_freq = self.config.inv_freq();
        let d = self.config.head_dim;
        let (mut cos, mut sin) = (Vec::with_capacity(seq * d), Vec::with_capacity(seq * d));
        for p in past..past + seq {
            for half in 0..2 {
                let _ = half;
                for &f in &inv_freq {
                    // f32 angles, as transformers computes them, so long positions round alike.
                    let angle = p as f32 * f as f32;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let make = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, seq, d]), device);
        (make(cos), make(sin))
    }
}

/// `x * w / sqrt(mean(x²) + eps)` over the last dimension.
fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64, pass: Pass) -> Tensor<B, 2> {
    if pass.fused {
        return kernels::rms_norm(x, weight, eps);
    }
    let scale = x.clone().square().mean_dim(1).add_scalar(eps).sqrt().recip();
    x * scale * weight.unsqueeze::<2>()
}

/// Rotates pairs `(i, i + d/2)` of every head by the position's angles.
fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let lo = x.clone().narrow(3, 0, d / 2);
    let hi = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![hi.neg(), lo], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// The additive causal mask for `seq` new positions after `past` cached ones, laid out as the
/// grouped queries are (`rep` heads stacked along the token axis): `[1, 1, rep * seq, past + seq]`.
fn causal_mask<B: Backend>(seq: usize, past: usize, rep: usize, device: &B::Device) -> Tensor<B, 4> {
    let total = past + seq;
    let mut m = Vec::with_capacity(rep * seq * total);
    for _ in 0..rep {
        for i in 0..seq {
            m.extend((0..total).map(|j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, rep * seq, total]), device)
}
