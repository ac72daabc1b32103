//! Element-wise operations on the CPU backend as single autodiff operations.
//!
//! * SiLU and sigmoid: Burn builds them from several tensor operations and computes each `exp`
//!   with a scalar library call; here one pass forward and one backward, with a vectorised
//!   `exp` ([`exp`], within 2 ulp of the library's over the range that matters).
//!   SiLU keeps its input (`dx = dy·σ·(1 + x·(1 − σ))`), sigmoid its output
//!   (`dx = dy·y·(1 − y)`).
//!   ReLU6 (MobileNet's) likewise: Burn's clamp is two masked fills each way. GELU (the
//!   exact form, `x·Φ(x)`) with an `erfc` built on the same `exp`, where Burn calls the
//!   library's scalar `erf` per value.
//! * Channel gates, `[B, C, H, W] × [B, C]` (squeeze-excitation): Burn broadcasts the gate
//!   through a strided iterator element by element; here one multiply per row forward and,
//!   backward, `dx = dy·g` and `dg = Σ dy·x` per row.
//! * Channel shuffles (ShuffleNet's): Burn's reshape, transpose and reshape gather the result
//!   element by element through strides; here one copy per channel plane each way.

use super::simd::{avx2_twin, dispatch, wide};
use super::{f32s, prim, whole, wrap_rank, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{activation as burn_activation, DType, Tensor, TensorData, TensorMetadata};
use nasc_runtime::cpu::is;
use rayon::prelude::*;

/// An activation with a kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Sigmoid,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x·Φ(x)`, with the exact normal CDF (PyTorch's default GELU, not its tanh form).
    Gelu,
}

const SILU: u8 = 0;
const SIGMOID: u8 = 1;
const RELU6: u8 = 2;
const GELU: u8 = 3;

/// Values per parallel task: large enough to amortise a task, small enough to split a layer.
const CHUNK: usize = 1 << 14;

/// `act(x)` for a tensor of any rank; Burn's own activation off the CPU backend or in another
/// dtype.
pub fn activation<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    if x.dtype() == DType::F32 && is::<B, Ad>() {
        return wrap_rank::<B, _, D>(autodiff_activation(prim::<B, AdTensor, D>(x), act));
    }
    if x.dtype() == DType::F32 && is::<B, Flex>() {
        return wrap_rank::<B, _, D>(forward(&prim::<B, FlexTensor, D>(x), act));
    }
    match act {
        Activation::Silu => burn_activation::silu(x),
        Activation::Sigmoid => burn_activation::sigmoid(x),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Gelu => burn_activation::gelu(x),
    }
}

/// `e^x` in f32 without a library call, so that loops of it vectorise: `x = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2`, `e^r` by its Taylor polynomial to degree 7 (relative error below 1e-7 on
/// that interval), times `2^n` built in the exponent bits. Inputs are clamped to [-87, 88]
/// (`e^88` is near f32's largest value; below `e^-87` results are 0 to the precision kept).
/// A NaN stays NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2^23: a sum with it is rounded to a whole number (ties to even), which then sits in
    // the sum's low mantissa bits, so 2^n is built without a float-to-integer conversion (Rust's
    // saturating `as i32` does not vectorise: LLVM took it lane by lane, a third of GELU's time).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n is within [-126, 127] after the clamp, so n + 127 fills the exponent field of a normal
    // f32 (the shifter's own bits above the low nine shift out). A NaN's p is NaN, whatever the
    // scale.
    p * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The complementary error function, by the Chebyshev fit of Press et al. (Numerical Recipes,
/// `erfcc`: relative error below 1.2e-7 for every x) on top of [`exp`].
#[inline(always)]
fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * exp(-z * z + poly);
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Φ(x), the standard normal CDF: `erfc(−x/√2) / 2`.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * erfc(-x * std::f32::consts::FRAC_1_SQRT_2)
}

#[inline(always)]
fn forward_values<const K: u8>(x: &[f32], y: &mut [std::mem::MaybeUninit<f32>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(match K {
            SILU => x * sigmoid(x),
            SIGMOID => sigmoid(x),
            GELU => x * normal_cdf(x),
            // A NaN compares false both times and stays.
            _ => {
                let low = if x < 0.0 { 0.0 } else { x };
                if low > 6.0 {
                    6.0
                } else {
                    low
                }
            }
        });
    }
}

/// `g ← g·act'(…)` from SiLU's or ReLU6's input, or sigmoid's output, `v`.
#[inline(always)]
fn backward_values<const K: u8>(g: &mut [f32], v: &[f32]) {
    for (g, &v) in g.iter_mut().zip(v) {
        *g = match K {
            SILU => {
                let s = sigmoid(v);
                *g * (s * (1.0 + v * (1.0 - s)))
            }
            SIGMOID => *g * (v * (1.0 - v)),
            // Φ(x) + x·φ(x)
            GELU => {
                let density =
                    exp(-0.5 * v * v) * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
                *g * (normal_cdf(v) + v * density)
            }
            // Gradient only strictly inside (0, 6), as PyTorch's hardtanh; a select, not a branch.
            _ => f32::from_bits(g.to_bits() & ((v > 0.0 && v < 6.0) as u32).wrapping_neg()),
        };
    }
}

avx2_twin!(forward_values, wide_forward_values, u8, (x: &[f32], y: &mut [std::mem::MaybeUninit<f32>]));
avx2_twin!(backward_values, wide_backward_values, u8, (g: &mut [f32], v: &[f32]));

fn forward(x: &FlexTensor, act: Activation) -> FlexTensor {
    let xs = f32s(x);
    let mut y: Vec<f32> = Vec::with_capacity(xs.len());
    y.spare_capacity_mut().par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(y, x)| match act {
        Activation::Silu => dispatch!(forward_values, wide_forward_values::<SILU>(x, y)),
        Activation::Sigmoid => dispatch!(forward_values, wide_forward_values::<SIGMOID>(x, y)),
        Activation::Relu6 => dispatch!(forward_values, wide_forward_values::<RELU6>(x, y)),
        Activation::Gelu => dispatch!(forward_values, wide_forward_values::<GELU>(x, y)),
    });
    // SAFETY: the chunks cover every element, and each was written.
    unsafe { y.set_len(xs.len()) };
    FlexTensor::from_data(TensorData::new(y, x.shape()))
}

#[derive(Debug)]
struct ActivationOp;

#[derive(Clone, Debug)]
struct ActivationState {
    act: Activation,
    /// SiLU's, ReLU6's and GELU's input, or sigmoid's output.
    kept: FlexTensor,
}

impl Backward<Flex, 1> for ActivationOp {
    type State = ActivationState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = &ops.parents[0] else { return };
        if !whole(&dy) {
            dy = dy.to_contiguous();
        }
        let kept = f32s(&ops.state.kept);
        let act = ops.state.act;
        dy.storage_mut::<f32>().par_chunks_mut(CHUNK).zip(kept.par_chunks(CHUNK)).for_each(|(g, v)| match act {
            Activation::Silu => dispatch!(backward_values, wide_backward_values::<SILU>(g, v)),
            Activation::Sigmoid => dispatch!(backward_values, wide_backward_values::<SIGMOID>(g, v)),
            Activation::Relu6 => dispatch!(backward_values, wide_backward_values::<RELU6>(g, v)),
            Activation::Gelu => dispatch!(backward_values, wide_backward_values::<GELU>(g, v)),
        });
        grads.register::<Flex>(node.id, dy);
    }
}

fn autodiff_activation(x: AdTensor, act: Activation) -> AdTensor {
    let y = forward(&x.primitive, act);
    match ActivationOp.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let kept = match act {
                Activation::Silu | Activation::Relu6 | Activation::Gelu => x.primitive.clone(),
                Activation::Sigmoid => y.clone(),
            };
            prep.finish(ActivationState { act, kept }, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// `x · g` with `x` `[B, C, H, W]` and the gate `g` `[B, C]`, broadcast over each map; Burn's
/// broadcasting multiply off the CPU backend.
pub fn gate<B: Backend>(x: Tensor<B, 4>, g: Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let cpu = x.dtype() == DType::F32 && g.dtype() == DType::F32;
    if cpu && is::<B, Ad>() {
        let (x, g) = (prim::<B, AdTensor, 4>(x), prim::<B, AdTensor, 2>(g));
        let y = gate_forward(&x.primitive, &g.primitive);
        let out = match GateOp.prepare::<NoCheckpointing>([x.node.clone(), g.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(GateState { x: x.primitive.clone(), g: g.primitive.clone() }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return wrap_rank::<B, _, 4>(out);
    }
    if cpu && is::<B, Flex>() {
        let (x, g) = (prim::<B, FlexTensor, 4>(x), prim::<B, FlexTensor, 2>(g));
        return wrap_rank::<B, _, 4>(gate_forward(&x, &g));
    }
    x * g.reshape([b, c, 1, 1]).expand([b, c, h, w])
}

fn gate_forward(x: &FlexTensor, g: &FlexTensor) -> FlexTensor {
    let (xs, gs) = (f32s(x), f32s(g));
    let row = xs.len() / gs.len().max(1);
    let mut y: Vec<f32> = Vec::with_capacity(xs.len());
    y.spare_capacity_mut().par_chunks_mut(row.max(1)).zip(xs.par_chunks(row.max(1))).zip(gs.par_iter()).for_each(
        |((y, x), &g)| {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(x * g);
            }
        },
    );
    // SAFETY: one chunk per gate value covers every element, and each was written.
    unsafe { y.set_len(xs.len()) };
    FlexTensor::from_data(TensorData::new(y, x.shape()))
}

#[derive(Debug)]
struct GateOp;

#[derive(Clone, Debug)]
struct GateState {
    x: FlexTensor,
    g: FlexTensor,
}

impl Backward<Flex, 2> for GateOp {
    type State = GateState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut dy = grads.consume::<Flex>(&ops.node);
        if !whole(&dy) {
            dy = dy.to_contiguous();
        }
        let [x_node, g_node] = ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id));
        let (xs, gs) = (f32s(&ops.state.x), f32s(&ops.state.g));
        let row = xs.len() / gs.len().max(1);
        if let Some(id) = g_node {
            let dys = f32s(&dy);
            let dg: Vec<f32> = dys
                .par_chunks(row.max(1))
                .zip(xs.par_chunks(row.max(1)))
                .map(|(d, x)| d.iter().zip(x).map(|(d, x)| d * x).sum())
                .collect();
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dg, ops.state.g.shape())));
        }
        if let Some(id) = x_node {
            dy.storage_mut::<f32>().par_chunks_mut(row.max(1)).zip(gs.par_iter()).for_each(|(d, &g)| {
                d.iter_mut().for_each(|d| *d *= g);
            });
            grads.register::<Flex>(id, dy);
        }
    }
}

/// ShuffleNet's channel shuffle of `[B, C, H, W]` in `groups` groups: output channel
/// `j·groups + i` is input channel `i·C/groups + j`. Burn's reshape and transpose off the CPU
/// backend.
pub fn shuffle<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    if x.dtype() == DType::F32 && is::<B, Ad>() {
        let x = prim::<B, AdTensor, 4>(x);
        let y = permute_planes(&x.primitive, groups, false);
        let out = match ShuffleOp.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(groups, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return wrap_rank::<B, _, 4>(out);
    }
    if x.dtype() == DType::F32 && is::<B, Flex>() {
        return wrap_rank::<B, _, 4>(permute_planes(&prim::<B, FlexTensor, 4>(x), groups, false));
    }
    x.reshape([b, groups, c / groups, h, w]).swap_dims(1, 2).reshape([b, c, h, w])
}

/// The channel planes of `[B, C, H, W]` shuffled in `groups` groups, or (`inverse`) put back.
fn permute_planes(x: &FlexTensor, groups: usize, inverse: bool) -> FlexTensor {
    let [_, c, h, w] = x.shape().dims::<4>();
    let xs = f32s(x);
    let (plane, per) = (h * w, c / groups.max(1));
    let mut y: Vec<f32> = Vec::with_capacity(xs.len());
    y.spare_capacity_mut().par_chunks_mut(plane.max(1)).enumerate().for_each(|(at, out)| {
        let (item, o) = (at / c, at % c);
        // Output o = j·groups + i reads input i·per + j; the inverse reads the other way.
        let src = if inverse { (o % per) * groups + o / per } else { (o % groups) * per + o / groups };
        let from = &xs[(item * c + src) * plane..][..plane];
        for (d, &v) in out.iter_mut().zip(from) {
            d.write(v);
        }
    });
    // SAFETY: one chunk per plane covers every element, and each was written.
    unsafe { y.set_len(xs.len()) };
    FlexTensor::from_data(TensorData::new(y, x.shape()))
}

#[derive(Debug)]
struct ShuffleOp;

impl Backward<Flex, 1> for ShuffleOp {
    type State = usize;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = &ops.parents[0] {
            grads.register::<Flex>(node.id, permute_planes(&dy, ops.state, true));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each kernel against Burn's own operations: outputs and gradients.
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn close<const D: usize>(ours: Tensor<Flex, D>, theirs: Tensor<Flex, D>, what: &str) {
        super::super::assert_close(ours, theirs, Tolerance::relative(1e-5).set_single_precision_absolute(1e-6), what);
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_the_range_used() {
        let mut worst = 0u32;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let (ours, theirs) = (exp(x), x.exp());
            worst = worst.max(ours.to_bits().abs_diff(theirs.to_bits()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite());
    }

    /// The AVX2 and AVX-512 twins of the activation loops (where this CPU has them) give the
    /// baseline loop's values bit for bit, forward and backward, NaN and the clamps included, so
    /// a model trains to the same weights whichever the CPU picks.
    #[test]
    fn the_wide_twins_give_the_baseline_s_bits() {
        let xs: Vec<f32> = (0..1003)
            .map(|i| (i as f32 - 500.0) * 0.037)
            .chain([f32::NAN, 1e9, -1e9, 0.0, -0.0, 6.0, 90.0, -90.0])
            .collect();
        // The first value whose bits differ (any NaN equals any NaN: its sign is not defined).
        let differ = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
        };
        fn run<const K: u8>(
            xs: &[f32],
            forward: unsafe fn(&[f32], &mut [std::mem::MaybeUninit<f32>]),
            backward: unsafe fn(&mut [f32], &[f32]),
        ) -> (Vec<f32>, Vec<f32>) {
            let mut y = vec![std::mem::MaybeUninit::new(0.0f32); xs.len()];
            let mut g: Vec<f32> = (0..xs.len()).map(|i| 1.0 + i as f32 * 1e-3).collect();
            // SAFETY: the caller passes a twin only when the CPU has its feature.
            unsafe {
                forward(xs, &mut y);
                backward(&mut g, xs);
            }
            // SAFETY: every value was written above.
            (y.into_iter().map(|v| unsafe { v.assume_init() }).collect(), g)
        }
        macro_rules! each {
            ($k:ident) => {{
                let base = run::<$k>(&xs, |x, y| forward_values::<$k>(x, y), |g, v| backward_values::<$k>(g, v));
                #[cfg(target_arch = "x86_64")]
                {
                    let mut twins: Vec<(&str, (Vec<f32>, Vec<f32>))> = Vec::new();
                    if wide() {
                        twins.push((
                            "avx2",
                            run::<$k>(&xs, wide_forward_values::avx2::<$k>, wide_backward_values::avx2::<$k>),
                        ));
                    }
                    if super::super::simd::widest() {
                        twins.push((
                            "avx512",
                            run::<$k>(&xs, wide_forward_values::avx512::<$k>, wide_backward_values::avx512::<$k>),
                        ));
                    }
                    for (name, (y, g)) in twins {
                        let at = differ(&y, &base.0);
                        assert_eq!(at, None, "{} forward, {name}, at x = {:?}", stringify!($k), at.map(|i| xs[i]));
                        let at = differ(&g, &base.1);
                        assert_eq!(at, None, "{} backward, {name}, at x = {:?}", stringify!($k), at.map(|i| xs[i]));
                    }
                }
            }};
        }
        each!(SILU);
        each!(SIGMOID);
        each!(RELU6);
        each!(GELU);
    }

    #[test]
    fn activations_match_burn_forward_and_backward() {
        let device = Default::default();
        let all = [Activation::Silu, Activation::Sigmoid, Activation::Relu6, Activation::Gelu];
        for (n, act) in all.into_iter().enumerate() {
            for shape in [[3, 5, 7, 9], [2, 1, 1, 40_000]] {
                <Ad as Backend>::seed(&device, 90 + n as u64);
                let x = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 4.0), &device);
                let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
                let ours = activation(xa.clone(), act);
                let theirs = match act {
                    Activation::Silu => burn_activation::silu(xb.clone()),
                    Activation::Sigmoid => burn_activation::sigmoid(xb.clone()),
                    Activation::Relu6 => xb.clone().clamp(0.0, 6.0),
                    Activation::Gelu => burn_activation::gelu(xb.clone()),
                };
                let case = format!("{act:?} {shape:?}");
                close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
                let r = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
                close(xa.grad(&g1).unwrap(), xb.grad(&g2).unwrap(), &format!("{case} gradient"));
                let inner = activation(x.clone().inner(), act);
                let reference = match act {
                    Activation::Silu => burn_activation::silu(x.inner()),
                    Activation::Sigmoid => burn_activation::sigmoid(x.inner()),
                    Activation::Relu6 => x.inner().clamp(0.0, 6.0),
                    Activation::Gelu => burn_activation::gelu(x.inner()),
                };
                close(inner, reference, &format!("{case} inference"));
            }
        }
    }

    #[test]
    fn gates_match_burn_broadcasting_forward_and_backward() {
        let device = Default::default();
        for (n, [b, c, h, w]) in [[3, 4, 5, 6], [2, 7, 1, 1], [4, 2, 9, 3]].into_iter().enumerate() {
            <Ad as Backend>::seed(&device, 120 + n as u64);
            let x = Tensor::<Ad, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let g = Tensor::<Ad, 2>::random([b, c], Distribution::Normal(0.0, 1.0), &device);
            let (xa, ga, xb, gb) = (
                x.clone().require_grad(),
                g.clone().require_grad(),
                x.clone().require_grad(),
                g.clone().require_grad(),
            );
            let ours = gate(xa.clone(), ga.clone());
            let theirs = xb.clone() * gb.clone().reshape([b, c, 1, 1]);
            let case = format!("case {n}");
            close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
            let r = Tensor::<Ad, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(xa.grad(&g1).unwrap(), xb.grad(&g2).unwrap(), &format!("{case} input gradient"));
            // A gate's gradient sums a map's products, summed in another order than Burn's: a
            // sum that cancels to near 0 needs the absolute floor of the convolutions' tests
            // (with other tests drawing from the shared generator, any draw can come up).
            super::super::assert_close(
                ga.grad(&g1).unwrap(),
                gb.grad(&g2).unwrap(),
                Tolerance::relative(1e-5).set_single_precision_absolute(1e-5),
                &format!("{case} gate gradient"),
            );
            close(gate(x.clone().inner(), g.clone().inner()), x.inner() * g.inner().reshape([b, c, 1, 1]), &case);
        }
    }

    #[test]
    fn shuffles_match_burn_reshape_and_transpose_forward_and_backward() {
        let device = Default::default();
        for (n, ([b, c, h, w], groups)) in
            [([2, 6, 3, 4], 2), ([3, 12, 2, 2], 3), ([1, 8, 5, 1], 4), ([2, 4, 3, 3], 1)].into_iter().enumerate()
        {
            <Ad as Backend>::seed(&device, 150 + n as u64);
            let x = Tensor::<Ad, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
            let ours = shuffle(xa.clone(), groups);
            let theirs = xb.clone().reshape([b, groups, c / groups, h, w]).swap_dims(1, 2).reshape([b, c, h, w]);
            let case = format!("case {n}");
            close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
            let r = Tensor::<Ad, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(xa.grad(&g1).unwrap(), xb.grad(&g2).unwrap(), &format!("{case} gradient"));
            let reference =
                x.clone().inner().reshape([b, groups, c / groups, h, w]).swap_dims(1, 2).reshape([b, c, h, w]);
            close(shuffle(x.inner(), groups), reference, &format!("{case} inference"));
        }
    }
}
