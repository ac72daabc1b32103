//! Scaled dot-product attention over `heads` heads, forward and backward, reading each head's
//! columns of `[B, N, D]` queries, keys and values in place.
//!
//! Why: written with Burn's operations, attention splits `[B, N, D]` into `[B, H, N, dh]` views,
//! and the batched products, the scaling, the softmax (three passes and a library `exp` per
//! value) and the merge of the heads back into `[B, N, D]` each made a copy or a strided pass,
//! forward and backward: in a ViT-Tiny step on the CPU those copies took more time than the
//! attention's products. Here one task per (item, head) runs:
//!
//! * forward: `S = Q Kᵀ`, `P = softmax(S / √dh)` row by row in cache, `O = P V` written into
//!   the head's columns of the output; `P` is kept for the backward pass;
//! * backward: `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(dP ∘ P)) / √dh`, `dQ = dS K`,
//!   `dK = dSᵀ Q`, each written into the head's columns.
//!
//! Off the CPU backend the same attention is Burn's operations.

use super::elementwise::exp;
use super::simd::{avx2_twin, dispatch, lanes_dot, lanes_sum, wide};
use super::{f32s, prim, wrap_rank, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{activation, DType, Tensor, TensorData};
use nasc_runtime::cpu::{gemm_at, is, with_scratch, SendPtr};
use rayon::prelude::*;

/// `softmax(Q Kᵀ / √dh) V` per head, for `q`, `k`, `v` `[B, N, D]` whose last dimension holds
/// `heads` heads of `D / heads` values side by side (PyTorch's `nn.MultiheadAttention` layout);
/// the result is `[B, N, D]` in the same layout.
pub fn attention<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [batch, n, d] = q.dims();
    let cpu = [&q, &k, &v].iter().all(|t| t.dtype() == DType::F32) && heads > 0 && d % heads == 0;
    if cpu && is::<B, Ad>() {
        let [q, k, v] = [q, k, v].map(prim::<B, AdTensor, 3>);
        let shape = Sizes { batch, n, d, heads };
        let (out, p) = forward(&q.primitive, &k.primitive, &v.primitive, shape);
        let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
        let out = match AttentionOp.prepare::<NoCheckpointing>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(
                AttentionState { q: q.primitive.clone(), k: k.primitive.clone(), v: v.primitive.clone(), p, shape },
                out,
            ),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return wrap_rank::<B, _, 3>(out);
    }
    if cpu && is::<B, Flex>() {
        let [q, k, v] = [q, k, v].map(prim::<B, FlexTensor, 3>);
        return wrap_rank::<B, _, 3>(forward(&q, &k, &v, Sizes { batch, n, d, heads }).0);
    }
    reference(q, k, v, heads)
}

/// The same attention in Burn's operations: heads as `[B, H, N, dh]` views.
pub(crate) fn reference<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [batch, n, d] = q.dims();
    let dh = d / heads;
    let split = |t: Tensor<B, 3>| t.reshape([batch, n, heads, dh]).swap_dims(1, 2);
    let (q, k, v) = (split(q), split(k), split(v));
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (dh as f64).sqrt());
    let out = activation::softmax(scores, 3).matmul(v);
    out.swap_dims(1, 2).reshape([batch, n, d])
}

#[derive(Clone, Copy, Debug)]
struct Sizes {
    batch: usize,
    n: usize,
    d: usize,
    heads: usize,
}

impl Sizes {
    fn dh(&self) -> usize {
        self.d / self.heads
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dh() as f32).sqrt()
    }

    /// Where (item, head) `t`'s columns start in a `[B, N, D]` buffer.
    fn base(&self, t: usize) -> usize {
        (t / self.heads) * self.n * self.d + (t % self.heads) * self.dh()
    }
}

/// The output `[B, N, D]` and the attention weights `P`, `[B, H, N, N]`.
fn forward(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, s: Sizes) -> (FlexTensor, FlexTensor) {
    let (qs, ks, vs) = (f32s(q), f32s(k), f32s(v));
    let Sizes { batch, n, d, heads } = s;
    let (dh, scale) = (s.dh(), s.scale());
    let mut p = vec![0.0f32; batch * heads * n * n];
    let mut out = vec![0.0f32; batch * n * d];
    let at = SendPtr::new(out.as_mut_ptr());
    p.par_chunks_mut((n * n).max(1)).enumerate().for_each(|(t, scores)| {
        let base = s.base(t);
        // SAFETY: head t reads rows of stride d from its base, within the [B, N, D] inputs, and
        // writes only its own dh columns of item t / heads's rows of `out`, which no other task
        // writes; `scores` is this task's own block of P.
        unsafe {
            // S = Q Kᵀ: Kᵀ's (i, j) is k[base + j·d + i].
            gemm_at(
                (n, n, dh),
                scores.as_mut_ptr(),
                n,
                false,
                1.0,
                qs.as_ptr().add(base),
                (d, 1),
                ks.as_ptr().add(base),
                (1, d),
            );
        }
        for row in scores.chunks_exact_mut(n.max(1)) {
            dispatch!(softmax_row, wide_softmax_row::<false>(row, scale));
        }
        // SAFETY: as above.
        unsafe {
            gemm_at(
                (n, dh, n),
                at.get().add(base),
                d,
                false,
                1.0,
                scores.as_ptr(),
                (n, 1),
                vs.as_ptr().add(base),
                (d, 1),
            );
        }
    });
    (
        FlexTensor::from_data(TensorData::new(out, [batch, n, d])),
        FlexTensor::from_data(TensorData::new(p, [batch, heads, n, n])),
    )
}

/// `row ← softmax(row · scale)`, with the row's maximum subtracted first; a NaN anywhere makes
/// the row NaN, as Burn's softmax does (the maximum passes over it, its `exp` does not). The
/// maximum and the sum run in 16 lanes, so that they vectorise.
#[inline(always)]
fn softmax_row<const K: bool>(row: &mut [f32], scale: f32) {
    const LANES: usize = 16;
    let mut tops = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (t, &x) in tops.iter_mut().zip(c) {
            *t = if x > *t { x } else { *t };
        }
    }
    let top = chunks.remainder().iter().chain(&tops).fold(f32::NEG_INFINITY, |t, &x| if x > t { x } else { t });
    let shift = top * scale;
    for x in row.iter_mut() {
        *x = exp(*x * scale - shift);
    }
    let inv = 1.0 / lanes_sum(|i| row[i], row.len());
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `dS = P ∘ (dP − rowsum(dP ∘ P)) · scale`, in place of `dP`, one row.
#[inline(always)]
fn softmax_backward_row<const K: bool>(dp: &mut [f32], p: &[f32], scale: f32) {
    let dot = lanes_dot(dp, p);
    for (g, &p) in dp.iter_mut().zip(p) {
        *g = p * (*g - dot) * scale;
    }
}

avx2_twin!(softmax_row, wide_softmax_row, bool, (row: &mut [f32], scale: f32));
avx2_twin!(softmax_backward_row, wide_softmax_backward_row, bool, (dp: &mut [f32], p: &[f32], scale: f32));

#[derive(Debug)]
struct AttentionOp;

#[derive(Clone, Debug)]
struct AttentionState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    p: FlexTensor,
    shape: Sizes,
}

impl Backward<Flex, 3> for AttentionOp {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<Flex>(&ops.node);
        let AttentionState { q, k, v, p, shape } = ops.state;
        let Sizes { batch, n, d, heads } = shape;
        let (dh, scale) = (shape.dh(), shape.scale());
        let (qs, ks, vs, ps, dos) = (f32s(&q), f32s(&k), f32s(&v), f32s(&p), f32s(&dout));
        let [mut dq, mut dk, mut dv] = [(); 3].map(|_| vec![0.0f32; batch * n * d]);
        let ptrs = [&mut dq, &mut dk, &mut dv].map(|g| SendPtr::new(g.as_mut_ptr()));
        (0..batch * heads).into_par_iter().for_each(|t| {
            let base = shape.base(t);
            let pt = &ps[t * n * n..(t + 1) * n * n];
            let [dqp, dkp, dvp] = ptrs.map(|g| g.get());
            with_scratch(n * n, |ds| {
                // SAFETY: task t reads its head's columns (rows of stride d from `base`) of the
                // [B, N, D] buffers and its own n×n block of P, and writes only its head's columns
                // of item t / heads's rows of dQ, dK and dV, which no other task writes; `ds` is
                // this thread's scratch, and gemm runs on this thread.
                unsafe {
                    let dout = dos.as_ptr().add(base);
                    // dV = Pᵀ dO
                    gemm_at((n, dh, n), dvp.add(base), d, false, 1.0, pt.as_ptr(), (1, n), dout, (d, 1));
                    // dP = dO Vᵀ
                    gemm_at((n, n, dh), ds.as_mut_ptr(), n, false, 1.0, dout, (d, 1), vs.as_ptr().add(base), (1, d));
                }
                for (g, p) in ds.chunks_exact_mut(n.max(1)).zip(pt.chunks_exact(n.max(1))) {
                    dispatch!(softmax_backward_row, wide_softmax_backward_row::<false>(g, p, scale));
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = dS K, dK = dSᵀ Q
                    gemm_at(
                        (n, dh, n),
                        dqp.add(base),
                        d,
                        false,
                        1.0,
                        ds.as_ptr(),
                        (n, 1),
                        ks.as_ptr().add(base),
                        (d, 1),
                    );
                    gemm_at(
                        (n, dh, n),
                        dkp.add(base),
                        d,
                        false,
                        1.0,
                        ds.as_ptr(),
                        (1, n),
                        qs.as_ptr().add(base),
                        (d, 1),
                    );
                }
            });
        });
        for (parent, g) in ops.parents.iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(g, [batch, n, d])));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Outputs and the gradients of all three inputs against Burn's operations, with one and
    /// several heads, one token and several, and an input used twice (self-attention).
    #[test]
    fn attention_matches_burn_forward_and_backward() {
        let device = Default::default();
        let close = |ours: Tensor<Flex, 3>, theirs: Tensor<Flex, 3>, what: &str| {
            super::super::assert_close(
                ours,
                theirs,
                Tolerance::relative(1e-4).set_single_precision_absolute(1e-5),
                what,
            )
        };
        for (case, ([b, n, d], heads)) in
            [([2, 5, 12], 3), ([1, 1, 8], 2), ([3, 17, 16], 1), ([2, 50, 24], 3)].into_iter().enumerate()
        {
            <Ad as Backend>::seed(&device, 300 + case as u64);
            let t = || Tensor::<Ad, 3>::random([b, n, d], Distribution::Normal(0.0, 1.5), &device);
            let (q, k, v) = (t(), t(), t());
            let ours_in = [q.clone(), k.clone(), v.clone()].map(|t| t.require_grad());
            let theirs_in = [q.clone(), k.clone(), v.clone()].map(|t| t.require_grad());
            let ours = attention(ours_in[0].clone(), ours_in[1].clone(), ours_in[2].clone(), heads);
            let theirs = reference(theirs_in[0].clone(), theirs_in[1].clone(), theirs_in[2].clone(), heads);
            close(ours.clone().inner(), theirs.clone().inner(), &format!("case {case} output"));
            let r = Tensor::<Ad, 3>::random([b, n, d], Distribution::Normal(0.0, 1.0), &device);
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            for (i, name) in ["queries", "keys", "values"].into_iter().enumerate() {
                close(
                    ours_in[i].grad(&g1).expect("a gradient"),
                    theirs_in[i].grad(&g2).expect("a gradient"),
                    &format!("case {case} gradient of the {name}"),
                );
            }
            let inference = attention(q.clone().inner(), k.clone().inner(), v.clone().inner(), heads);
            close(inference, reference(q.inner(), k.inner(), v.inner(), heads), &format!("case {case} inference"));
            // Self-attention: one tensor as queries, keys and values sums three gradients.
            let x = t();
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let (ours, theirs) = (
                attention(xa.clone(), xa.clone(), xa.clone(), heads),
                reference(xb.clone(), xb.clone(), xb.clone(), heads),
            );
            let (g1, g2) = (ours.sum().backward(), theirs.sum().backward());
            close(xa.grad(&g1).expect("a gradient"), xb.grad(&g2).expect("a gradient"), &format!("case {case} self"));
        }
    }

    /// A NaN among the scores makes its row of the output NaN, as Burn's softmax does, rather
    /// than being skipped.
    #[test]
    fn a_nan_score_poisons_its_row() {
        let mut row = [1.0, f32::NAN, 2.0];
        softmax_row::<false>(&mut row, 1.0);
        assert!(row.iter().all(|x| x.is_nan()), "{row:?}");
        let mut row = [-1e30, 0.0];
        softmax_row::<false>(&mut row, 1.0);
        assert!(row[0] < 1e-30 && row[1] == 1.0, "{row:?}");
    }
}
