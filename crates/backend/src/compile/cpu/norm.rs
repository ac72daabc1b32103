//! Batch norm in training mode on the CPU backend, with an optional ReLU after it: two passes
//! over the input forward (the statistics, then the normalised output) and two over the
//! gradient backward (two sums per channel, then the input gradient), where the generic graph
//! of tensor operations takes a dozen passes and as many temporary tensors.
//!
//! With `n = B·R` values per channel, `x̂ = (x − μ)·s`, `s = 1/√(σ² + ε)` and `y = γ·x̂ + β`
//! (then ReLU when fused, which masks `dy` where `y ≤ 0`):
//!
//! * `dβ = Σ dy`, `dγ = Σ dy·x̂`;
//! * `dx = γ·s·(dy − dβ/n − x̂·dγ/n)`.
//!
//! Only the input is kept for the backward pass; the ReLU's mask is recomputed from it.

use super::simd::{avx2_twin, dispatch, wide};
use super::{f32s, prim, whole, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use nasc_runtime::cpu::is;
use rayon::prelude::*;

avx2_twin!(affine, wide_affine, bool, (out: &mut [std::mem::MaybeUninit<f32>], x: &[f32], a: f32, b: f32));
avx2_twin!(gradient_sums, wide_gradient_sums, bool, (g: &[f32], x: &[f32], a: f32, t: f32, mean: f32) -> (f32, f32));
avx2_twin!(input_gradient, wide_input_gradient, bool, (g: &mut [f32], x: &[f32], p: Pass2));

/// Training-mode batch norm of `x` (`[B, C, R]`) with `gamma` and `beta` (`[C]`), then ReLU if
/// `relu`: the output and the batch's mean and biased variance per channel (for the running
/// statistics). `None` when the backend is not the CPU's with autodiff in f32: the caller then
/// builds the same computation from tensor operations.
pub fn batch_norm_train<B: Backend>(
    x: &Tensor<B, 3>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    epsilon: f64,
    relu: bool,
) -> Option<(Tensor<B, 3>, Vec<f32>, Vec<f32>)> {
    if !is::<B, Ad>() || x.dtype() != DType::F32 || gamma.dtype() != DType::F32 || beta.dtype() != DType::F32 {
        return None;
    }
    let [b, c, r] = x.dims();
    let (x, gamma, beta) = (
        prim::<B, AdTensor, 3>(x.clone()),
        prim::<B, AdTensor, 1>(gamma.clone()),
        prim::<B, AdTensor, 1>(beta.clone()),
    );
    let xs = f32s(&x.primitive);
    let (mean, var) = statistics(&xs, b, c, r);
    let (g, bt) = (f32s(&gamma.primitive).into_owned(), f32s(&beta.primitive).into_owned());
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + epsilon as f32).sqrt()).collect();
    let scale: Vec<f32> = g.iter().zip(&inv).map(|(g, s)| g * s).collect();
    let shift: Vec<f32> = bt.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    let y = normalise(&xs, c, r, &scale, &shift, relu);
    let y = FlexTensor::from_data(TensorData::new(y, [b, c, r]));
    drop(xs);
    let state = BatchNormState {
        x: x.primitive.clone(),
        dims: [b, c, r],
        mean: mean.clone(),
        inv,
        gamma: g,
        scale,
        shift,
        relu,
    };
    let out = match BatchNormOp
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    let out = super::cast::<AdTensor, B::FloatTensorPrimitive>(out).unwrap_or_else(|_| unreachable!("B is Ad"));
    Some((Tensor::from_primitive(TensorPrimitive::Float(out)), mean, var))
}

/// Per channel of `[B, C, R]`: the mean and the biased variance. Sums are taken of the values
/// less the channel's first value (which keeps the variance exact when the mean is large beside
/// the spread) and accumulated in f64 row by row.
fn statistics(x: &[f32], b: usize, c: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (b * r) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let pivot = x[ch * r];
            let (mut sum, mut squares) = (0.0f64, 0.0f64);
            for item in 0..b {
                let row = &x[(item * c + ch) * r..][..r];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX2, the one feature `wide_sums` is compiled for.
                let (s, q) = if wide() { unsafe { wide_sums(row, pivot) } } else { sums(row, pivot) };
                #[cfg(not(target_arch = "x86_64"))]
                let (s, q) = sums(row, pivot);
                sum += s as f64;
                squares += q as f64;
            }
            let mean = sum / n;
            let var = (squares / n - mean * mean).max(0.0);
            ((mean + pivot as f64) as f32, var as f32)
        })
        .unzip()
}

/// [`sums`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn wide_sums(row: &[f32], pivot: f32) -> (f32, f32) {
    sums(row, pivot)
}

/// `Σ (v − pivot)` and `Σ (v − pivot)²` over `row`, in eight lanes.
#[inline(always)]
fn sums(row: &[f32], pivot: f32) -> (f32, f32) {
    let (mut s, mut q) = ([0.0f32; 8], [0.0f32; 8]);
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for i in 0..8 {
            let d = chunk[i] - pivot;
            s[i] += d;
            q[i] += d * d;
        }
    }
    let (mut st, mut qt) = (s.iter().sum::<f32>(), q.iter().sum::<f32>());
    for &v in chunks.remainder() {
        let d = v - pivot;
        st += d;
        qt += d * d;
    }
    (st, qt)
}

/// `x·scale + shift` per channel row, through ReLU if `relu`.
fn normalise(x: &[f32], c: usize, r: usize, scale: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut().par_chunks_mut(r.max(1)).zip(x.par_chunks(r.max(1))).enumerate().for_each(
        |(row, (out, x))| {
            let (a, b) = (scale[row % c], shift[row % c]);
            if relu {
                dispatch!(affine, wide_affine::<true>(out, x, a, b))
            } else {
                dispatch!(affine, wide_affine::<false>(out, x, a, b))
            }
        },
    );
    // SAFETY: the chunks cover all `x.len()` elements, and `affine` wrote each.
    unsafe { y.set_len(x.len()) };
    y
}

/// `out = x·a + b`, then with `RELU` negatives to 0 (NaN kept, as PyTorch's relu).
#[inline(always)]
fn affine<const RELU: bool>(out: &mut [std::mem::MaybeUninit<f32>], x: &[f32], a: f32, b: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        let t = v * a + b;
        o.write(if RELU { f32::from_bits(t.to_bits() & ((t < 0.0) as u32).wrapping_sub(1)) } else { t });
    }
}

#[derive(Debug)]
struct BatchNormOp;

#[derive(Clone, Debug)]
struct BatchNormState {
    x: FlexTensor,
    dims: [usize; 3],
    mean: Vec<f32>,
    /// `1/√(σ² + ε)` per channel.
    inv: Vec<f32>,
    gamma: Vec<f32>,
    /// `γ·inv` and `β − μ·γ·inv`: the forward pass's affine map, to recompute the ReLU's mask.
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl Backward<Flex, 3> for BatchNormOp {
    type State = BatchNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let [b, c, r] = s.dims;
        let mut dy = grads.consume::<Flex>(&ops.node);
        if !whole(&dy) {
            dy = dy.to_contiguous();
        }
        let xs = f32s(&s.x);
        let n = (b * r) as f32;
        // Pass 1: Σ dy and Σ dy·(x − μ) per channel, dy masked by the ReLU.
        let (sum_dy, sum_dyx): (Vec<f32>, Vec<f32>) = {
            let dys = f32s(&dy);
            let dys = &*dys;
            (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut sd, mut sdx) = (0.0f64, 0.0f64);
                    let (a, t, mean) = (s.scale[ch], s.shift[ch], s.mean[ch]);
                    for item in 0..b {
                        let at = (item * c + ch) * r;
                        let (g, x) = (&dys[at..][..r], &xs[at..][..r]);
                        let (d, e) = if s.relu {
                            dispatch!(gradient_sums, wide_gradient_sums::<true>(g, x, a, t, mean))
                        } else {
                            dispatch!(gradient_sums, wide_gradient_sums::<false>(g, x, a, t, mean))
                        };
                        sd += d as f64;
                        sdx += e as f64;
                    }
                    (sd as f32, sdx as f32)
                })
                .unzip()
        };
        let [x_node, gamma_node, beta_node] = ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id));
        if let Some(id) = gamma_node {
            // dγ = Σ dy·x̂
            let dg: Vec<f32> = sum_dyx.iter().zip(&s.inv).map(|(e, i)| e * i).collect();
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dg, [c])));
        }
        if let Some(id) = beta_node {
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(sum_dy.clone(), [c])));
        }
        let Some(id) = x_node else { return };
        // Pass 2, in place over dy: dx = γ·s·dy_masked − γ·s/n·Σdy − (x − μ)·γ·s³/n·Σdy·(x − μ).
        {
            let dys = dy.storage_mut::<f32>();
            dys.par_chunks_mut(r.max(1)).zip(xs.par_chunks(r.max(1))).enumerate().for_each(|(row, (g, x))| {
                let ch = row % c;
                let k = s.gamma[ch] * s.inv[ch];
                let p = Pass2 {
                    a: s.scale[ch],
                    t: s.shift[ch],
                    k,
                    offset: k * sum_dy[ch] / n,
                    slope: k * s.inv[ch] * s.inv[ch] * sum_dyx[ch] / n,
                    mean: s.mean[ch],
                };
                if s.relu {
                    dispatch!(input_gradient, wide_input_gradient::<true>(g, x, p))
                } else {
                    dispatch!(input_gradient, wide_input_gradient::<false>(g, x, p))
                }
            });
        }
        grads.register::<Flex>(id, dy);
    }
}

/// `Σ g` and `Σ g·(x − mean)` over a row, in eight lanes; with `RELU`, `g` counts only where
/// `x·a + t > 0` (the forward pass's ReLU let it through).
#[inline(always)]
fn gradient_sums<const RELU: bool>(g: &[f32], x: &[f32], a: f32, t: f32, mean: f32) -> (f32, f32) {
    let (mut d, mut e) = ([0.0f32; 8], [0.0f32; 8]);
    let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
    let (gr, xr) = (gc.remainder(), xc.remainder());
    for (g, x) in gc.zip(xc) {
        for i in 0..8 {
            let v = if RELU { keep(x[i] * a + t > 0.0, g[i]) } else { g[i] };
            d[i] += v;
            e[i] += v * (x[i] - mean);
        }
    }
    let (mut dt, mut et) = (d.iter().sum::<f32>(), e.iter().sum::<f32>());
    for (&g, &x) in gr.iter().zip(xr) {
        let v = if RELU { keep(x * a + t > 0.0, g) } else { g };
        dt += v;
        et += v * (x - mean);
    }
    (dt, et)
}

/// `v` where `open`, else 0, without a branch: whether a value passed the ReLU is as
/// unpredictable as a coin, and a branch per value cost more than the arithmetic around it.
#[inline(always)]
fn keep(open: bool, v: f32) -> f32 {
    f32::from_bits(v.to_bits() & (open as u32).wrapping_neg())
}

/// The constants of one channel for [`input_gradient`].
#[derive(Clone, Copy)]
struct Pass2 {
    a: f32,
    t: f32,
    k: f32,
    offset: f32,
    slope: f32,
    mean: f32,
}

/// `g ← k·g_masked − offset − (x − mean)·slope` over a row, the mask as in [`gradient_sums`].
#[inline(always)]
fn input_gradient<const RELU: bool>(g: &mut [f32], x: &[f32], p: Pass2) {
    for (g, &x) in g.iter_mut().zip(x) {
        let v = if RELU { keep(x * p.a + p.t > 0.0, *g) } else { *g };
        *g = p.k * v - p.offset - (x - p.mean) * p.slope;
    }
}

#[cfg(test)]
mod tests {
    //! The kernel against Burn's own `BatchNorm` (training mode) then `relu`: outputs, the
    //! gradients of input, γ and β, and the batch statistics.
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{activation, Distribution, Tolerance};

    fn close<const D: usize>(ours: Tensor<Flex, D>, theirs: Tensor<Flex, D>, what: &str) {
        super::super::assert_close(ours, theirs, Tolerance::relative(1e-3).set_single_precision_absolute(1e-4), what);
    }

    #[test]
    fn batch_norm_matches_burn_forward_and_backward() {
        // (batch, channels, positions, relu, mean of the input)
        let cases = [
            (4, 3, 20, false, 0.0),
            (5, 6, 49, true, 0.0),
            (8, 4, 1, true, 0.0),      // a vector: one position per channel
            (3, 2, 37, false, 1000.0), // a mean far from 0 beside a spread of 3
            (2, 5, 64, true, -2.0),
        ];
        let device = Default::default();
        for (n, &(b, c, r, relu, offset)) in cases.iter().enumerate() {
            let case = format!("case {n}");
            <Ad as Backend>::seed(&device, 40 + n as u64);
            let x = Tensor::<Ad, 3>::random([b, c, r], Distribution::Normal(offset, 3.0), &device);
            let bn = {
                let mut bn = BatchNormConfig::new(c).init::<Ad>(&device);
                // γ and β away from 1 and 0, so that mistakes in either show.
                bn.gamma = bn.gamma.map(|g| g.mul_scalar(1.5).add_scalar(-0.2).detach().require_grad());
                bn.beta = bn.beta.map(|t| t.add_scalar(0.3).detach().require_grad());
                bn
            };
            let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
            let (ga, ba) = (bn.gamma.val(), bn.beta.val());
            let (ours, mean, var) = batch_norm_train(&xa, &ga, &ba, bn.epsilon, relu).expect("the CPU backend");
            let theirs = bn.forward(xb.clone().reshape([b, c, r, 1])).reshape([b, c, r]);
            let theirs = if relu { activation::relu(theirs) } else { theirs };
            close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));

            let flat = x.clone().inner().swap_dims(0, 1).reshape([c, b * r]);
            let want_mean = flat.clone().mean_dim(1).reshape([c]);
            let want_var = (flat - want_mean.clone().reshape([c, 1])).square().mean_dim(1).reshape([c]);
            let vector = |v: Vec<f32>| Tensor::<Flex, 1>::from_data(TensorData::new(v, [c]), &device);
            close(vector(mean), want_mean, &format!("{case} mean"));
            close(vector(var), want_var, &format!("{case} variance"));

            let weights = Tensor::<Ad, 3>::random([b, c, r], Distribution::Normal(0.0, 1.0), &device);
            let g1 = (ours * weights.clone()).sum().backward();
            let g2 = (theirs * weights).sum().backward();
            close(xa.grad(&g1).unwrap(), xb.grad(&g2).unwrap(), &format!("{case} input gradient"));
            close(bn.gamma.grad(&g1).unwrap(), bn.gamma.grad(&g2).unwrap(), &format!("{case} γ gradient"));
            close(bn.beta.grad(&g1).unwrap(), bn.beta.grad(&g2).unwrap(), &format!("{case} β gradient"));
        }
    }

    #[test]
    fn other_backends_are_left_to_tensor_operations() {
        let x = Tensor::<Flex, 3>::zeros([2, 3, 4], &Default::default());
        let v = Tensor::<Flex, 1>::ones([3], &Default::default());
        assert!(batch_norm_train(&x, &v, &v, 1e-5, false).is_none());
    }
}
