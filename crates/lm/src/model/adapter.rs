//! The adapter layers a decoder block can carry (LoRA: `x W + scale · dropout(x) A B`), the projections they sit on, and their seeded dropout.
//! It must hold only what the forward passes and the kernels read; attaching, files and merging are `lora`'s, which builds on this.

use super::LlamaConfig;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// A projection of the decoder block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The module's name in Hugging Face and PEFT (`q_proj`).
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The path below a layer (`self_attn.q_proj`).
    pub fn path(self) -> String {
        let parent = if matches!(self, Target::Gate | Target::Up | Target::Down) { "mlp" } else { "self_attn" };
        format!("{parent}.{}", self.module_name())
    }

    /// Reads `q`, `q_proj`, `gate`, `gate_proj`, ...
    pub fn parse(name: &str) -> Option<Target> {
        let name = name.trim();
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Some(match short {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            _ => return None,
        })
    }

    /// `[in, out]` of this projection in a model of `c`.
    pub(crate) fn dims(self, c: &LlamaConfig) -> (usize, usize) {
        let (h, qd, kvd, ff) = (c.hidden_size, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.intermediate_size);
        match self {
            Target::Q => (h, qd),
            Target::K | Target::V => (h, kvd),
            Target::O => (qd, h),
            Target::Gate | Target::Up => (h, ff),
            Target::Down => (ff, h),
        }
    }
}

thread_local! {
    static DROPOUT_KEY: std::cell::Cell<u64> = const { std::cell::Cell::new(0x5EED) };
}

/// SplitMix64's output function: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seeds the dropout masks that adapters draw on this thread from now on. Training calls it
/// before every optimizer step with its seed and the step's number, so a run resumed at a step
/// draws the masks an unbroken run draws there.
pub fn seed_dropout(seed: u64, step: u64) {
    DROPOUT_KEY.with(|k| k.set(mix(seed ^ mix(step.wrapping_add(0x9E37_79B9_7F4A_7C15)))));
}

/// `x` with each value zeroed with probability `p` and the rest scaled by `1 / (1 - p)`, as
/// PyTorch's dropout, on an autodiff backend only (elsewhere `x`); the mask is
/// [`dropout_mask`]'s next.
pub fn dropout<B: Backend>(x: Tensor<B, 2>, p: f64) -> Tensor<B, 2> {
    if p <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let [rows, cols] = x.dims();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(dropout_mask(rows * cols, p), [rows, cols]), &x.device());
    x * mask
}

/// This thread's next dropout mask of `n` values: 0 with probability `p`, else `1 / (1 - p)`.
/// SplitMix64 over a per-call key, two 32-bit draws per 64-bit output: Burn's Bernoulli sampler
/// was a large share of a LoRA training step on SmolLM2.
pub(crate) fn dropout_mask(n: usize, p: f64) -> Vec<f32> {
    let key = DROPOUT_KEY.with(|k| {
        let key = k.get();
        k.set(mix(key));
        key
    });
    // A value is dropped when its 32-bit draw is below p · 2³².
    let threshold = (p * 4_294_967_296.0) as u64;
    let keep = (1.0 / (1.0 - p)) as f32;
    let pick = |draw: u64| if draw < threshold { 0.0 } else { keep };
    let mut mask = vec![0.0f32; n.next_multiple_of(2)];
    // Draw i fills values 2i and 2i + 1 wherever it runs: the same mask on any number of threads.
    const CHUNK: usize = 1 << 14;
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, part)| {
        for (i, pair) in part.chunks_exact_mut(2).enumerate() {
            let draw = (c * CHUNK / 2 + i) as u64;
            let r = mix(key.wrapping_add(draw.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            pair[0] = pick(r & 0xFFFF_FFFF);
            pair[1] = pick(r >> 32);
        }
    });
    mask.truncate(n);
    mask
}

/// Rank, scale, dropout and the projections that carry adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    /// The paper's settings: all seven projections, rank 32, alpha 32, dropout 0.05.
    fn default() -> Self {
        LoraConfig { rank: 32, alpha: 32.0, dropout: 0.05, targets: Target::ALL.to_vec() }
    }
}

impl LoraConfig {
    /// `alpha / r`, the factor on the adapter's output.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// An adapter on one linear projection.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// `[r, out]`.
    pub b: Param<Tensor<B, 2>>,
    /// The probability that dropout zeroes an input value while training.
    #[module(skip)]
    pub dropout: f64,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// `A` Kaiming-uniform (PEFT's `kaiming_uniform_(a=sqrt(5))`: bound `1/sqrt(in)`), `B` zero.
    pub fn new(d_in: usize, d_out: usize, config: &LoraConfig, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let r = config.rank;
        let bound = 1.0 / (d_in as f32).sqrt();
        let a: Vec<f32> =
            (0..d_in * r).map(|_| bound * ((rng.next_u32() >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0)).collect();
        let a = Param::from_data(TensorData::new(a, [d_in, r]), device);
        let b = Param::from_data(TensorData::new(vec![0f32; r * d_out], [r, d_out]), device);
        LoraLinear { a, b, dropout: config.dropout, scale: config.scale() }
    }

    /// `base(x) + scale · dropout(x) A B`. Dropout acts only while training (on an autodiff backend).
    pub fn forward(&self, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        base.forward(x.clone()) + self.low_rank(x)
    }

    /// The adapter's own term, `scale · dropout(x) A B`.
    pub fn low_rank(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        dropout(x, self.dropout).matmul(self.a.val()).matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// `scale · A B`, `[in, out]`: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }
}

/// The adapters of one block, one slot per projection.
#[derive(Module, Debug)]
pub struct BlockLora<B: Backend> {
    pub q: Option<LoraLinear<B>>,
    pub k: Option<LoraLinear<B>>,
    pub v: Option<LoraLinear<B>>,
    pub o: Option<LoraLinear<B>>,
    pub gate: Option<LoraLinear<B>>,
    pub up: Option<LoraLinear<B>>,
    pub down: Option<LoraLinear<B>>,
}

impl<B: Backend> Default for BlockLora<B> {
    fn default() -> Self {
        BlockLora { q: None, k: None, v: None, o: None, gate: None, up: None, down: None }
    }
}

impl<B: Backend> BlockLora<B> {
    pub fn get(&self, t: Target) -> Option<&LoraLinear<B>> {
        self.slot_ref(t).as_ref()
    }

    fn slot_ref(&self, t: Target) -> &Option<LoraLinear<B>> {
        match t {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }

    pub(crate) fn slot(&mut self, t: Target) -> &mut Option<LoraLinear<B>> {
        match t {
            Target::Q => &mut self.q,
            Target::K => &mut self.k,
            Target::V => &mut self.v,
            Target::O => &mut self.o,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }

    pub fn is_empty(&self) -> bool {
        Target::ALL.iter().all(|&t| self.get(t).is_none())
    }
}
