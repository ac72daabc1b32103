//! Layer norm over the last dimension in training, as one operation forward and one backward.
//!
//! Why: Burn's CPU backend normalises in one pass when it infers, but with autodiff its layer
//! norm is eight tensor operations (a mean, a subtraction, a square, another mean, a square
//! root, a division, the scale and the shift), each a pass over the activations with its own
//! saved tensor and backward step. Here each row is normalised in cache and keeps its mean and
//! `1/σ` for the backward pass:
//!
//! * forward: `x̂ = (x − μ)/σ`, `y = γ x̂ + β`, with `σ = √(var + ε)` (the biased variance);
//! * backward: `dγ = Σ_rows dy x̂`, `dβ = Σ_rows dy`, and with `g = dy γ`,
//!   `dx = (g − mean(g) − x̂ mean(g x̂)) / σ`.

use super::simd::{avx2_twin, dispatch, lanes_sum, wide};
use super::{f32s, prim, whole, wrap_rank, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata};
use nasc_runtime::cpu::is;
use rayon::prelude::*;

/// Rows per task: enough that a task is worth handing to a thread.
const ROWS: usize = 64;

/// Layer norm of `x` over its last dimension with `gamma` and `beta` (`[D]` each), in training
/// on the CPU backend; `None` elsewhere (the caller then uses Burn's layer norm).
pub fn layer_norm_train<B: Backend, const N: usize>(
    x: &Tensor<B, N>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, N>> {
    if !is::<B, Ad>() || [x.dtype(), gamma.dtype(), beta.dtype()].iter().any(|&t| t != DType::F32) {
        return None;
    }
    let dims = x.dims();
    let d = dims[N - 1];
    if d == 0 || gamma.dims()[0] != d || beta.dims()[0] != d {
        return None;
    }
    let (x, gamma, beta) = (
        prim::<B, AdTensor, N>(x.clone()),
        prim::<B, AdTensor, 1>(gamma.clone()),
        prim::<B, AdTensor, 1>(beta.clone()),
    );
    let (xs, g, b) = (f32s(&x.primitive), f32s(&gamma.primitive), f32s(&beta.primitive));
    let rows = xs.len() / d;
    let (mut mean, mut inv) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    let mut y: Vec<f32> = Vec::with_capacity(xs.len());
    y.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(ROWS * d)
        .zip(xs.par_chunks(ROWS * d))
        .zip(mean.par_chunks_mut(ROWS).zip(inv.par_chunks_mut(ROWS)))
        .for_each(|((y, x), (mean, inv))| {
            dispatch!(forward_rows, wide_forward_rows::<false>(x, y, &g, &b, mean, inv, epsilon as f32))
        });
    // SAFETY: the chunks cover every row, and every value of each was written.
    unsafe { y.set_len(xs.len()) };
    let y = FlexTensor::from_data(TensorData::new(y, x.primitive.shape()));
    drop(xs);
    let state = LayerNormState { x: x.primitive.clone(), gamma: g.into_owned(), mean, inv };
    drop(b);
    let out = match LayerNormOp
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(wrap_rank::<B, _, N>(out))
}

/// Rows of `x` normalised into `y`, each row's mean and `1/σ` kept.
#[inline(always)]
fn forward_rows<const K: bool>(
    x: &[f32],
    y: &mut [std::mem::MaybeUninit<f32>],
    gamma: &[f32],
    beta: &[f32],
    mean: &mut [f32],
    inv: &mut [f32],
    epsilon: f32,
) {
    let d = gamma.len();
    for (((x, y), mean), inv) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(mean.iter_mut()).zip(inv.iter_mut()) {
        let m = lanes_sum(|i| x[i], d) / d as f32;
        let var = lanes_sum(|i| (x[i] - m) * (x[i] - m), d) / d as f32;
        let s = 1.0 / (var + epsilon).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            y.write((x - m) * s * g + b);
        }
        (*mean, *inv) = (m, s);
    }
}

/// Rows of `dy` turned into `dx` in place; `dgamma` and `dbeta` accumulate the rows' terms.
#[inline(always)]
fn backward_rows<const K: bool>(
    dy: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv: &[f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let d = gamma.len();
    for (((g, x), &m), &s) in dy.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(mean).zip(inv) {
        for (((dg, db), &g), &x) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g.iter()).zip(x) {
            *dg += g * ((x - m) * s);
            *db += g;
        }
        let mean_g = lanes_sum(|i| g[i] * gamma[i], d) / d as f32;
        let mean_gx = lanes_sum(|i| g[i] * gamma[i] * ((x[i] - m) * s), d) / d as f32;
        for ((g, &x), &w) in g.iter_mut().zip(x).zip(gamma) {
            *g = (*g * w - mean_g - (x - m) * s * mean_gx) * s;
        }
    }
}

avx2_twin!(forward_rows, wide_forward_rows, bool, (x: &[f32], y: &mut [std::mem::MaybeUninit<f32>], gamma: &[f32], beta: &[f32], mean: &mut [f32], inv: &mut [f32], epsilon: f32));
avx2_twin!(backward_rows, wide_backward_rows, bool, (dy: &mut [f32], x: &[f32], gamma: &[f32], mean: &[f32], inv: &[f32], dgamma: &mut [f32], dbeta: &mut [f32]));

#[derive(Debug)]
struct LayerNormOp;

#[derive(Clone, Debug)]
struct LayerNormState {
    x: FlexTensor,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv: Vec<f32>,
}

impl Backward<Flex, 3> for LayerNormOp {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        // The output's gradient becomes the input's in place, as batch norm's does.
        let mut dx = grads.consume::<Flex>(&ops.node);
        if !whole(&dx) {
            dx = dx.to_contiguous();
        }
        let LayerNormState { x, gamma, mean, inv } = ops.state;
        let d = gamma.len();
        let xs = f32s(&x);
        let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
            .storage_mut::<f32>()
            .par_chunks_mut(ROWS * d)
            .zip(xs.par_chunks(ROWS * d))
            .zip(mean.par_chunks(ROWS).zip(inv.par_chunks(ROWS)))
            .map(|((g, x), (mean, inv))| {
                let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
                dispatch!(backward_rows, wide_backward_rows::<false>(g, x, &gamma, mean, inv, &mut dgamma, &mut dbeta));
                (dgamma, dbeta)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
        for (g, b) in parts {
            dgamma.iter_mut().zip(g).for_each(|(s, v)| *s += v);
            dbeta.iter_mut().zip(b).for_each(|(s, v)| *s += v);
        }
        let [x_node, gamma_node, beta_node] = ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id));
        if let Some(id) = gamma_node {
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dgamma, [d])));
        }
        if let Some(id) = beta_node {
            grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dbeta, [d])));
        }
        if let Some(id) = x_node {
            grads.register::<Flex>(id, dx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Outputs and the gradients of the input, γ and β against Burn's layer norm (the
    /// operations its autodiff runs), on rows fewer and more than a task's, widths under and
    /// over the lanes, and an offset far from zero (where a one-pass variance would lose digits).
    #[test]
    fn layer_norm_matches_burn_forward_and_backward() {
        let device = Default::default();
        for (case, ([b, n, d], offset)) in
            [([2, 3, 5], 0.0), ([3, 50, 192], 0.0), ([1, 130, 17], 100.0), ([4, 1, 40], -3.0)].into_iter().enumerate()
        {
            <Ad as Backend>::seed(&device, 500 + case as u64);
            let x = Tensor::<Ad, 3>::random([b, n, d], Distribution::Normal(offset, 2.0), &device);
            // Not the initial 1 and 0, so that γ and β enter the values.
            let gamma = Tensor::<Ad, 1>::random([d], Distribution::Normal(1.0, 0.5), &device);
            let beta = Tensor::<Ad, 1>::random([d], Distribution::Normal(0.0, 0.5), &device);
            let grads = |t: &Tensor<Ad, 3>, g: &Tensor<Ad, 1>, b: &Tensor<Ad, 1>| {
                (t.clone().require_grad(), g.clone().require_grad(), b.clone().require_grad())
            };
            let (xa, ga, ba) = grads(&x, &gamma, &beta);
            let (xb, gb, bb) = grads(&x, &gamma, &beta);
            let ours = layer_norm_train(&xa, &ga, &ba, 1e-5).expect("the CPU backend in training");
            let (var, mean) = xb.clone().var_mean_bias(2);
            let theirs = (xb.clone() - mean) / (var + 1e-5).sqrt() * gb.clone().reshape([1, 1, d])
                + bb.clone().reshape([1, 1, d]);
            let close = |ours: Tensor<Flex, 3>, theirs: Tensor<Flex, 3>, what: &str| {
                super::super::assert_close(
                    ours,
                    theirs,
                    Tolerance::relative(1e-4).set_single_precision_absolute(1e-4),
                    what,
                )
            };
            close(ours.clone().inner(), theirs.clone().inner(), &format!("case {case} output"));
            let r = Tensor::<Ad, 3>::random([b, n, d], Distribution::Normal(0.0, 1.0), &device);
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(xa.grad(&g1).expect("dx"), xb.grad(&g2).expect("dx"), &format!("case {case} input gradient"));
            let as3 = |t: Tensor<Flex, 1>| t.reshape([1, 1, d]);
            close(as3(ga.grad(&g1).expect("dγ")), as3(gb.grad(&g2).expect("dγ")), &format!("case {case} γ gradient"));
            close(as3(ba.grad(&g1).expect("dβ")), as3(bb.grad(&g2).expect("dβ")), &format!("case {case} β gradient"));
        }
    }

    #[test]
    fn inference_is_left_to_burn() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::ones([2, 4], &device);
        let (g, b) = (Tensor::<Flex, 1>::ones([4], &device), Tensor::<Flex, 1>::zeros([4], &device));
        assert!(layer_norm_train(&x, &g, &b, 1e-5).is_none());
    }
}
