//! The decoder's CPU kernels behind one interface, chosen by the model's [`Kernels`] options: the inference pass, training's fused operations, quantised products.
//! It must compute what Burn's generic ops compute (up to float rounding, or the documented 8-bit rounding), and no behaviour here may hang on a global or thread-local switch.

//! The decoder ([`super`]) states the architecture in Burn's ops and asks this module, per
//! pass, whether the kernels take it:
//!
//! * [`forward_last`] / [`forward_all`]: the whole inference pass in plain Rust
//!   ([`cpu`]), or `None` when the pass is Burn's;
//! * [`training`]: whether the training pass takes the fused autodiff operations of
//!   [`train_ops`] (projection with its adapter, attention, RMSNorm, SwiGLU, and
//!   [`head_loss`] for the output projection with the loss);
//! * [`quantised_product`]: a product with a block-quantised weight ([`QuantMatrix`]), with
//!   8-bit or exact inputs as [`Inputs`] says, through [`vnni`]'s kernel where chosen and present.
//!
//! What runs is decided by [`Kernels`], which the model carries (set from
//! [`super::LoadOptions`] at load time, changed by [`super::Llama::with_kernels`]); the backend
//! itself is recognised in one place, [`cpu_backend`].

pub(crate) mod cpu;
pub(crate) mod fastexp;
pub(crate) mod panels;
pub mod quant;
pub(crate) mod train_ops;
pub(crate) mod vnni;

pub use quant::QuantMatrix;
pub(crate) use train_ops::{attention, head_loss, lora_linear, rms_norm, swiglu, AttentionShape, Rotary};

use super::{KvCache, Llama};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::sync::Arc;

/// Which code runs a model's passes: part of the model ([`super::Llama::kernels`]), set from
/// [`super::LoadOptions::kernels`] when it is loaded. The default is the fastest path the CPU
/// backend has; other backends always take Burn's ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// On the CPU backend, the crate's kernels: the inference pass on `Flex`, training's fused
    /// operations on `Autodiff<Flex>`. Off, Burn's generic ops (for comparisons and
    /// benchmarks), except that a quantised base's inference still takes the kernels: Burn has
    /// no product for its blocks. On by default.
    pub cpu: bool,
    /// Inference products with a Q8_0, Q4_0 or Q4_1 base take each input row rounded to 8 bits
    /// per block of 32 (scale `max|x| / 127`) and integer dot products, as llama.cpp computes:
    /// faster than dequantising, at an error of at most half a step of the input's scale per
    /// value (pinned by a test); several rows at once give each row what it gives alone. Off,
    /// the product is the dequantised weight's to float rounding. Training always takes the
    /// exact product, which it differentiates. On by default.
    pub int8_activations: bool,
    /// 8-bit products take [`vnni`]'s packed kernel (AVX-512 VNNI, else AVX2) where the CPU has
    /// one (auto); off, the per-row integer dot products that other CPUs take. On by default.
    pub vnni: bool,
    /// Products of an f32 weight with at most [`panels::CHOSEN_ROWS`] rows (a decoding step) read
    /// the weight repacked once into column panels ([`panels`]), kept for the model's life (a
    /// second copy of its f32 weights, made on first use); off, `gemm` and the one-row `gemv`
    /// read the weight as stored. On by default.
    pub panels: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels { cpu: true, int8_activations: true, vnni: true, panels: true }
    }
}

impl Kernels {
    /// Burn's generic ops wherever they can run (the other settings as by default).
    pub fn burn() -> Self {
        Kernels { cpu: false, ..Kernels::default() }
    }

    /// How inference products with a quantised weight take their inputs.
    pub fn inputs(&self) -> Inputs {
        if self.int8_activations {
            Inputs::Int8 { vnni: self.vnni }
        } else {
            Inputs::Exact
        }
    }
}

/// How a product with a [`QuantMatrix`] takes its input rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// f32 inputs against the dequantised weight: the exact product, to float rounding (also
    /// for the K-quants whatever was asked, and always in training).
    Exact,
    /// Rounded to 8 bits per block of 32 and multiplied in integers (Q8_0, Q4_0, Q4_1); `vnni`:
    /// through the packed kernel (AVX-512 VNNI, else AVX2) where the CPU has one.
    Int8 { vnni: bool },
}

/// The two forms of the CPU backend the kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cpu {
    /// `Flex`: inference.
    Flex,
    /// `Autodiff<Flex>`: training.
    Autodiff,
}

/// Which form of the CPU backend `B` is, if any: the one place where a backend's type is looked
/// at. Rust has no specialisation, so a generic `B` is recognised by its `TypeId`
/// ([`nasc_runtime::cpu::is`], as the root crate's `compile::cpu` does). It is consulted only
/// where [`Kernels::cpu`] chose the kernels, and where a quantised weight, which only the
/// kernels multiply, needs them (a quantised base loads on these backends only).
pub(crate) fn cpu_backend<B: Backend>() -> Option<Cpu> {
    use nasc_runtime::cpu::is;
    if is::<B, Flex>() {
        Some(Cpu::Flex)
    } else if is::<B, Autodiff<Flex>>() {
        Some(Cpu::Autodiff)
    } else {
        None
    }
}

/// Whether an inference pass of `model` on top of `cache` takes [`cpu::logits`]: the model's
/// options chose the kernels (or its base is quantised), the backend is `Flex`, and the cache
/// is empty or already one of the kernels' (a cache keeps the path it started on).
pub(crate) fn inference<B: Backend>(model: &Llama<B>, cache: &KvCache<B>) -> bool {
    if cache.flat.is_some() {
        return true;
    }
    let chosen = model.kernels.cpu || model.has_quantised_base();
    chosen && cache.layers.iter().all(Option::is_none) && cpu_backend::<B>() == Some(Cpu::Flex)
}

/// Whether training's passes take [`train_ops`]' fused operations: the options chose the
/// kernels and the backend is `Autodiff<Flex>`.
pub(crate) fn training<B: Backend>(kernels: &Kernels) -> bool {
    kernels.cpu && cpu_backend::<B>() == Some(Cpu::Autodiff)
}

/// The last position's logits of each row, `[batch, vocab]`, through the kernels, extending
/// `cache`; `None` when the pass is Burn's ([`inference`]). The caller has checked the input.
pub(crate) fn forward_last<B: Backend>(
    model: &Llama<B>,
    tokens: &[u32],
    batch: usize,
    cache: &mut KvCache<B>,
) -> Option<Tensor<B, 2>> {
    inference(model, cache).then(|| cpu::logits(model, tokens, batch, cache, true))
}

/// Every position's logits, `[batch, tokens, vocab]`, as [`forward_last`].
pub(crate) fn forward_all<B: Backend>(
    model: &Llama<B>,
    tokens: &[u32],
    batch: usize,
    cache: &mut KvCache<B>,
) -> Option<Tensor<B, 3>> {
    inference(model, cache).then(|| {
        let logits = cpu::logits(model, tokens, batch, cache, false);
        logits.reshape([batch, tokens.len() / batch, model.config.vocab_size])
    })
}

/// `x Wᵀ` through the frozen quantised weight `q`, `x` `[rows, in]`, on any backend: the
/// kernels on `Flex` (with `inputs`) and `Autodiff<Flex>` (exact, and the input's gradient
/// `dy W` dequantised on the fly too; the weight gets none), a dequantised copy elsewhere.
pub(crate) fn quantised_product<B: Backend>(q: &Arc<QuantMatrix>, x: Tensor<B, 2>, inputs: Inputs) -> Tensor<B, 2> {
    cpu::quantised_product(q, x, cpu_backend::<B>(), inputs)
}
