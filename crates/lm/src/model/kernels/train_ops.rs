//! Training's heaviest generic-op chains as single autodiff operations on `Autodiff<Flex>`.
//! Each must compute what the Burn ops it replaces compute (up to float rounding), gradients
//! included, and every other backend keeps the Burn ops.

//! Why: a LoRA step through Burn's generic ops spent more time around the matrix products than
//! in them — the logits of every position went through log-softmax, gather and their backward
//! passes as separate full-size tensors, and attention through reshapes, strided copies, a mask
//! tensor and a softmax. Here:
//!
//! * [`lora_linear`]: a projection with its adapter, `x W + b + scale · dropout(x) A B`;
//! * [`attention`]: causal grouped-query attention with the rotary embedding, keeping one
//!   log-sum-exp per score row and recomputing the probabilities backward;
//! * [`rms_norm`] and [`swiglu`], one pass each way;
//! * [`head_loss`]: the output projection and the cross-entropy in one operation. Only the
//!   labelled positions get logits at all (the loss ignores the others); each row's softmax is
//!   taken in place and turned into the logits' gradient at once, which the backward pass
//!   multiplies by the head.
//!
//! Each is tested against the Burn ops it replaces, values and gradients.

use super::cpu::{f32s, gemm_at, prim, product, wrap};
use super::quant::QuantMatrix;
use super::Inputs;
use crate::model::adapter::{dropout_mask, LoraLinear};
use crate::model::loss::IGNORE;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Tensor, TensorData, TensorMetadata};
use rayon::prelude::*;
use std::sync::Arc;

type Ad = Autodiff<Flex>;
type AdTensor = <Ad as BackendTypes>::FloatTensorPrimitive;

/// A frozen projection's weight: dense `[in, out]` (Burn's layout) or quantised `[out, in]`.
#[derive(Clone, Debug)]
enum Weight {
    Dense(FlexTensor),
    Quantised(Arc<QuantMatrix>),
}

impl Weight {
    /// `[rows, out]`: `x` (`[rows, in]`) times the weight.
    fn forward(&self, rows: usize, d_in: usize, d_out: usize, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * d_out];
        match self {
            Weight::Dense(w) => product((rows, d_out, d_in), &mut y, false, 1.0, x, (d_in, 1), &f32s(w), (d_out, 1)),
            // Training differentiates the exact product: no 8-bit rounding of the inputs.
            Weight::Quantised(q) => q.matmul(rows, x, &mut y, Inputs::Exact),
        }
        y
    }
    /// `[rows, in]`: `dy` (`[rows, out]`) times the weight's transpose.
    fn back(&self, rows: usize, d_in: usize, d_out: usize, dy: &[f32]) -> Vec<f32> {
        match self {
            Weight::Dense(w) => {
                let mut dx = vec![0.0f32; rows * d_in];
                product((rows, d_in, d_out), &mut dx, false, 1.0, dy, (d_out, 1), &f32s(w), (1, d_out));
                dx
            }
            Weight::Quantised(q) => q.matmul_transposed(rows, dy),
        }
    }
}

/// Rows of logits [`head_loss`] computes at a time: 64 rows of a 49,152-token vocabulary are
/// 12 MiB, under the size at which glibc maps every allocation afresh.
const HEAD_ROWS: usize = 64;

/// What the backward pass of [`head_loss`] needs.
#[derive(Clone, Debug)]
struct HeadLossState {
    head: Weight,
    /// The labelled rows' inputs, `[labelled, hidden]` (for the weight's gradient).
    x: Arc<Vec<f32>>,
    /// Softmax minus the one-hot label, per labelled row: the gradient of the summed loss, in
    /// blocks of [`HEAD_ROWS`] rows (buffers the allocator reuses rather than maps afresh).
    dlogits: Arc<Vec<Vec<f32>>>,
    /// The labelled rows, in order.
    rows: Arc<Vec<usize>>,
    /// Rows of the whole input.
    total: usize,
    hidden: usize,
    vocab: usize,
}

#[derive(Debug)]
struct HeadLossOp<const N: usize>;

impl<const N: usize> Backward<Flex, N> for HeadLossOp<N> {
    type State = HeadLossState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let g = f32s(&grads.consume::<Flex>(&ops.node))[0] / s.rows.len().max(1) as f32;
        if let Some(node) = &ops.parents[0] {
            let mut dx = vec![0.0f32; s.total * s.hidden];
            for (block, rows) in s.dlogits.iter().zip(s.rows.chunks(HEAD_ROWS)) {
                let d = s.head.back(rows.len(), s.hidden, s.vocab, block);
                for (&r, row) in rows.iter().zip(d.chunks(s.hidden)) {
                    for (o, v) in dx[r * s.hidden..][..s.hidden].iter_mut().zip(row) {
                        *o = g * v;
                    }
                }
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [s.total, s.hidden])));
        }
        if let Some(Some(node)) = ops.parents.get(1) {
            // The head trains: dW = xᵀ · dlogits, `[hidden, vocab]`.
            let mut dw = vec![0.0f32; s.hidden * s.vocab];
            for (i, block) in s.dlogits.iter().enumerate() {
                let (x, n) = (&s.x[i * HEAD_ROWS * s.hidden..], block.len() / s.vocab);
                product((s.hidden, s.vocab, n), &mut dw, i > 0, 1.0, x, (1, s.hidden), block, (s.vocab, 1));
            }
            dw.iter_mut().for_each(|v| *v *= g);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, [s.hidden, s.vocab])));
        }
    }
}

/// The mean cross-entropy of the logits `hidden · head` against `labels` (one per row of
/// `hidden`, `[rows, hidden]`; [`IGNORE`]d rows take no part) and the number of rows counted,
/// as one operation on `Autodiff<Flex>` (callers check [`super::training`] first); `None` on
/// other backends or with no labelled row (the caller then takes Burn's ops). `quantised` replaces `head` (`[hidden, vocab]`) when given.
pub(crate) fn head_loss<B: Backend>(
    hidden: &Tensor<B, 2>,
    head: &Tensor<B, 2>,
    quantised: Option<&Arc<QuantMatrix>>,
    labels: &[i64],
) -> Option<(Tensor<B, 1>, usize)> {
    if super::cpu_backend::<B>() != Some(super::Cpu::Autodiff) {
        return None;
    }
    let rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] != IGNORE).collect();
    if rows.is_empty() {
        return None;
    }
    let x = prim::<B, AdTensor, 2>(hidden.clone());
    let [total, width] = x.primitive.shape().dims();
    assert_eq!(total, labels.len(), "one label per row");
    let w = prim::<B, AdTensor, 2>(head.clone());
    let (head_kind, vocab) = match quantised {
        Some(q) => (Weight::Quantised(q.clone()), q.rows()),
        None => (Weight::Dense(w.primitive.clone()), w.primitive.shape().dims::<2>()[1]),
    };
    let xs = f32s(&x.primitive);
    let mut picked = Vec::with_capacity(rows.len() * width);
    for &r in &rows {
        picked.extend_from_slice(&xs[r * width..][..width]);
    }
    let mut blocks: Vec<Vec<f32>> =
        picked.chunks(HEAD_ROWS * width).map(|x| head_kind.forward(x.len() / width, width, vocab, x)).collect();
    // Each row: log-sum-exp minus the label's logit, then, in place, softmax minus one-hot.
    let one_row = |(row, &r): (&mut [f32], &usize)| {
        let label = labels[r] as usize;
        let target = row[label] as f64;
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum = super::fastexp::exp_shifted(row, max, 1.0);
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|v| *v *= inv);
        row[label] -= 1.0;
        sum.ln() + max as f64 - target
    };
    let total_loss: f64 = blocks
        .par_iter_mut()
        .zip(rows.par_chunks(HEAD_ROWS))
        .map(|(block, rows)| block.par_chunks_mut(vocab).zip(rows.par_iter()).map(one_row).sum::<f64>())
        .sum();
    let loss = total_loss / rows.len() as f64;
    let out = FlexTensor::from_data(TensorData::new(vec![loss as f32], [1]));
    let state = HeadLossState {
        head: head_kind,
        x: Arc::new(picked),
        dlogits: Arc::new(blocks),
        rows: Arc::new(rows),
        total,
        hidden: width,
        vocab,
    };
    let counted = state.rows.len();
    let y = match quantised {
        // The quantised head has no node: it never trains.
        Some(_) => match HeadLossOp::<1>.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        None => {
            match HeadLossOp::<2>
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    };
    Some((wrap::<B, _, 1>(y), counted))
}

#[derive(Clone, Debug)]
struct LoraState {
    weight: Weight,
    x: FlexTensor,
    /// The dropout mask applied to `x` on the adapter's path, when dropout is on.
    mask: Option<Arc<Vec<f32>>>,
    /// `dropout(x) A`, `[rows, r]`.
    u: Arc<Vec<f32>>,
    a: FlexTensor,
    b: FlexTensor,
    scale: f32,
    rows: usize,
    d_in: usize,
    d_out: usize,
    rank: usize,
}

impl LoraState {
    /// `dropout(x)` as the forward pass drew it.
    fn dropped(&self) -> std::borrow::Cow<'_, [f32]> {
        let x = f32s(&self.x);
        match &self.mask {
            Some(m) => std::borrow::Cow::Owned(times(&x, m)),
            None => x,
        }
    }
}

/// `x ∘ m`, elementwise, over rayon's threads.
fn times(x: &[f32], m: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(m.par_chunks(CHUNK))).for_each(|(o, (x, m))| {
        for ((o, x), m) in o.iter_mut().zip(x).zip(m) {
            *o = x * m;
        }
    });
    out
}

/// A projection with its adapter in the autodiff graph; parents `x`, `A`, `B` and, with `N` 4,
/// the base's bias.
#[derive(Debug)]
struct LoraOp<const N: usize>;

impl<const N: usize> Backward<Flex, N> for LoraOp<N> {
    type State = LoraState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let (rows, d_in, d_out, r) = (s.rows, s.d_in, s.d_out, s.rank);
        let dy = grads.consume::<Flex>(&ops.node);
        let dy = f32s(&dy);
        let (a, b) = (f32s(&s.a), f32s(&s.b));
        // g = dY Bᵀ, [rows, r]: the gradient reaching `dropout(x) A`, before the scale.
        let mut g = vec![0.0f32; rows * r];
        product((rows, r, d_out), &mut g, false, 1.0, &dy, (d_out, 1), &b, (1, d_out));
        if let Some(node) = &ops.parents[0] {
            // dX = dY Wᵀ + scale · mask ∘ (g Aᵀ)
            let mut dx = s.weight.back(rows, d_in, d_out, &dy);
            match &s.mask {
                Some(m) => {
                    let mut low = vec![0.0f32; rows * d_in];
                    product((rows, d_in, r), &mut low, false, 1.0, &g, (r, 1), &a, (1, r));
                    const CHUNK: usize = 1 << 14;
                    dx.par_chunks_mut(CHUNK).zip(low.par_chunks(CHUNK).zip(m.par_chunks(CHUNK))).for_each(
                        |(dx, (low, m))| {
                            for ((d, l), m) in dx.iter_mut().zip(low).zip(m) {
                                *d += s.scale * m * l;
                            }
                        },
                    );
                }
                None => product((rows, d_in, r), &mut dx, true, s.scale, &g, (r, 1), &a, (1, r)),
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [rows, d_in])));
        }
        if let Some(node) = &ops.parents[1] {
            // dA = scale · dropout(x)ᵀ g, [in, r]
            let xd = s.dropped();
            let mut da = vec![0.0f32; d_in * r];
            product((d_in, r, rows), &mut da, false, 1.0, &xd, (1, d_in), &g, (r, 1));
            da.iter_mut().for_each(|v| *v *= s.scale);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(da, [d_in, r])));
        }
        if let Some(node) = &ops.parents[2] {
            // dB = scale · uᵀ dY, [r, out]
            let mut db = vec![0.0f32; r * d_out];
            product((r, d_out, rows), &mut db, false, 1.0, &s.u, (1, r), &dy, (d_out, 1));
            db.iter_mut().for_each(|v| *v *= s.scale);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(db, [r, d_out])));
        }
        if let Some(Some(node)) = ops.parents.get(3) {
            let mut dbias = vec![0.0f32; d_out];
            for row in dy.chunks(d_out) {
                dbias.iter_mut().zip(row).for_each(|(t, v)| *t += v);
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dbias, [d_out])));
        }
    }
}

/// `x W + bias + scale · dropout(x) A B` (the base `linear`, or its quantised weight when given,
/// plus `adapter`) as one operation on `Autodiff<Flex>`; callers check [`super::training`]
/// first. The dropout mask is [`dropout_mask`]'s next, as the Burn ops draw it.
pub(crate) fn lora_linear<B: Backend>(
    x: Tensor<B, 2>,
    linear: &burn::nn::Linear<B>,
    quantised: Option<&Arc<QuantMatrix>>,
    adapter: &LoraLinear<B>,
) -> Tensor<B, 2> {
    let x = prim::<B, AdTensor, 2>(x);
    let (a, b) = (prim::<B, AdTensor, 2>(adapter.a.val()), prim::<B, AdTensor, 2>(adapter.b.val()));
    let [rows, d_in] = x.primitive.shape().dims();
    let [_, rank] = a.primitive.shape().dims();
    let [_, d_out] = b.primitive.shape().dims();
    let weight = match quantised {
        Some(q) => Weight::Quantised(q.clone()),
        None => Weight::Dense(prim::<B, AdTensor, 2>(linear.weight.val()).primitive),
    };
    let xs = f32s(&x.primitive);
    let mut y = weight.forward(rows, d_in, d_out, &xs);
    let bias = linear.bias.as_ref().map(|b| prim::<B, AdTensor, 1>(b.val()));
    if let Some(bias) = &bias {
        let bias = f32s(&bias.primitive);
        for row in y.chunks_mut(d_out) {
            row.iter_mut().zip(bias.iter()).for_each(|(y, b)| *y += b);
        }
    }
    let mask = (adapter.dropout > 0.0).then(|| dropout_mask(rows * d_in, adapter.dropout));
    let mut u = vec![0.0f32; rows * rank];
    match &mask {
        Some(m) => {
            let xd = times(&xs, m);
            product((rows, rank, d_in), &mut u, false, 1.0, &xd, (d_in, 1), &f32s(&a.primitive), (rank, 1));
        }
        None => product((rows, rank, d_in), &mut u, false, 1.0, &xs, (d_in, 1), &f32s(&a.primitive), (rank, 1)),
    }
    // y += scale · u B
    let scale = adapter.scale as f32;
    product((rows, d_out, rank), &mut y, true, scale, &u, (rank, 1), &f32s(&b.primitive), (d_out, 1));
    drop(xs);
    let out = FlexTensor::from_data(TensorData::new(y, [rows, d_out]));
    let state = |x: &AdTensor| LoraState {
        weight,
        x: x.primitive.clone(),
        mask: mask.map(Arc::new),
        u: Arc::new(u),
        a: a.primitive.clone(),
        b: b.primitive.clone(),
        scale,
        rows,
        d_in,
        d_out,
        rank,
    };
    let y = match &bias {
        Some(bias) => {
            let nodes = [x.node.clone(), a.node.clone(), b.node.clone(), bias.node.clone()];
            match LoraOp::<4>.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(state(&x), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
        None => match LoraOp::<3>
            .prepare::<NoCheckpointing>([x.node.clone(), a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(&x), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    };
    wrap::<B, _, 2>(y)
}

#[derive(Clone, Debug)]
struct RmsNormState {
    x: FlexTensor,
    w: FlexTensor,
    /// Each row's `1 / sqrt(mean(x²) + eps)`.
    inv: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct RmsNormOp;

impl Backward<Flex, 2> for RmsNormOp {
    type State = RmsNormState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dy, x, w) = (f32s(&dy), f32s(&s.x), f32s(&s.w));
        let h = w.len();
        let rows = x.len() / h.max(1);
        if let Some(node) = &ops.parents[0] {
            // With g = dy ∘ w: dx = inv · g − x · inv³ · mean(g ∘ x).
            let mut dx = vec![0.0f32; x.len()];
            dx.par_chunks_mut(h).enumerate().for_each(|(r, dx)| {
                let (x, dy, inv) = (&x[r * h..][..h], &dy[r * h..][..h], s.inv[r]);
                let dot: f32 = (0..h).map(|i| dy[i] * w[i] * x[i]).sum();
                let k = inv * inv * inv * dot / h as f32;
                for i in 0..h {
                    dx[i] = inv * dy[i] * w[i] - k * x[i];
                }
            });
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [rows, h])));
        }
        if let Some(node) = &ops.parents[1] {
            let mut dw = vec![0.0f32; h];
            for r in 0..rows {
                let (x, dy, inv) = (&x[r * h..][..h], &dy[r * h..][..h], s.inv[r]);
                for i in 0..h {
                    dw[i] += dy[i] * x[i] * inv;
                }
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, [h])));
        }
    }
}

/// `x · w / sqrt(mean(x²) + eps)` over each row of `x` (`[rows, hidden]`) as one operation on
/// `Autodiff<Flex>`; callers check [`super::training`] first.
pub(crate) fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let (x, w) = (prim::<B, AdTensor, 2>(x), prim::<B, AdTensor, 1>(w));
    let [rows, h] = x.primitive.shape().dims();
    let (xs, ws) = (f32s(&x.primitive), f32s(&w.primitive));
    let mut y = vec![0.0f32; rows * h];
    let mut inv = vec![0.0f32; rows];
    y.par_chunks_mut(h.max(1)).zip(inv.par_iter_mut()).enumerate().for_each(|(r, (y, inv))| {
        let x = &xs[r * h..][..h];
        let mean = x.iter().map(|v| v * v).sum::<f32>() / h as f32;
        *inv = 1.0 / (mean + eps as f32).sqrt();
        for i in 0..h {
            y[i] = x[i] * *inv * ws[i];
        }
    });
    drop((xs, ws));
    let out = FlexTensor::from_data(TensorData::new(y, [rows, h]));
    let y = match RmsNormOp.prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            prep.finish(RmsNormState { x: x.primitive.clone(), w: w.primitive.clone(), inv: Arc::new(inv) }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    wrap::<B, _, 2>(y)
}

#[derive(Debug)]
struct SwiGluOp;

impl Backward<Flex, 2> for SwiGluOp {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (g, u) = ops.state;
        let shape = g.shape();
        let da = grads.consume::<Flex>(&ops.node);
        let (da, g, u) = (f32s(&da), f32s(&g), f32s(&u));
        let (mut dg, mut du) = (vec![0.0f32; g.len()], vec![0.0f32; g.len()]);
        const CHUNK: usize = 4096;
        dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (dg, du))| {
            let at = c * CHUNK;
            for i in 0..dg.len() {
                let (x, up, d) = (g[at + i], u[at + i], da[at + i]);
                let s = 1.0 / (1.0 + super::fastexp::exp(-x));
                // d silu(x)/dx = s · (1 + x · (1 − s))
                dg[i] = d * up * s * (1.0 + x * (1.0 - s));
                du[i] = d * x * s;
            }
        });
        for (node, grad) in [(&ops.parents[0], dg), (&ops.parents[1], du)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, shape.clone())));
            }
        }
    }
}

/// `silu(g) · u`, the SwiGLU MLP's gate, as one operation on `Autodiff<Flex>`; callers check
/// [`super::training`] first.
pub(crate) fn swiglu<B: Backend>(g: Tensor<B, 2>, u: Tensor<B, 2>) -> Tensor<B, 2> {
    let (g, u) = (prim::<B, AdTensor, 2>(g), prim::<B, AdTensor, 2>(u));
    let shape = g.primitive.shape();
    let (gs, us) = (f32s(&g.primitive), f32s(&u.primitive));
    let mut a = vec![0.0f32; gs.len()];
    const CHUNK: usize = 4096;
    a.par_chunks_mut(CHUNK).enumerate().for_each(|(c, a)| {
        let at = c * CHUNK;
        for (i, a) in a.iter_mut().enumerate() {
            let x = gs[at + i];
            *a = x / (1.0 + super::fastexp::exp(-x)) * us[at + i];
        }
    });
    drop((gs, us));
    let out = FlexTensor::from_data(TensorData::new(a, shape));
    let y = match SwiGluOp.prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((g.primitive.clone(), u.primitive.clone()), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    wrap::<B, _, 2>(y)
}

/// The sizes of one attention call: `batch` rows of `seq` positions each, from position 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
}

/// The rotary embedding's tables for positions `0..seq`, built once per forward pass and shared
/// by every layer's attention (and kept for their backward passes).
#[derive(Debug)]
pub(crate) struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The sines negated: the gradient of a rotation is the opposite rotation.
    back: Vec<f32>,
}

impl Rotary {
    pub(crate) fn new(inv_freq: &[f64], seq: usize) -> Self {
        let (cos, sin) = super::cpu::rope_tables(inv_freq, 0, seq);
        let back = sin.iter().map(|v| -v).collect();
        Rotary { cos, sin, back }
    }
}

#[derive(Clone, Debug)]
struct AttentionState {
    shape: AttentionShape,
    /// Queries and keys after the rotary embedding; the values as given.
    q: Arc<Vec<f32>>,
    k: Arc<Vec<f32>>,
    v: FlexTensor,
    /// Each (row, head, position)'s log-sum-exp of its scaled scores: the softmax, recomputed.
    lse: Arc<Vec<f32>>,
    rotary: Arc<Rotary>,
}

impl AttentionState {
    /// Head `h` of row `b`'s probabilities, `[seq, seq]` (zero above the diagonal), into `p`.
    fn probabilities(&self, b: usize, h: usize, p: &mut [f32]) {
        let AttentionShape { seq, heads, .. } = self.shape;
        scores(&self.shape, &self.q, &self.k, b, h, p);
        let lse = &self.lse[(b * heads + h) * seq..][..seq];
        for (i, row) in p.chunks_mut(seq).enumerate() {
            super::fastexp::exp_shifted(&mut row[..=i], lse[i], 1.0);
            row[i + 1..].fill(0.0);
        }
    }
}

/// Head `h` of row `b`'s scaled scores `q kᵀ / √d`, `[seq, seq]` (all of it: the caller masks).
fn scores(s: &AttentionShape, q: &[f32], k: &[f32], b: usize, h: usize, out: &mut [f32]) {
    let (t, d) = (s.seq, s.d);
    let (qw, kw) = (s.heads * d, s.kv_heads * d);
    let kvh = h / (s.heads / s.kv_heads);
    let (q, k) = (&q[b * t * qw + h * d..], &k[b * t * kw + kvh * d..]);
    assert!(out.len() >= t * t && q.len() > (t - 1) * qw + d - 1 && k.len() > (t - 1) * kw + d - 1);
    let scale = 1.0 / (d as f32).sqrt();
    // SAFETY: the assert bounds every element; `out` is a buffer of its own.
    unsafe { gemm_at((t, t, d), out.as_mut_ptr(), t, false, scale, q.as_ptr(), (qw, 1), k.as_ptr(), (1, kw)) };
}

#[derive(Debug)]
struct AttentionOp;

impl Backward<Flex, 3> for AttentionOp {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let AttentionShape { batch, seq: t, heads, kv_heads, d } = s.shape;
        let (qw, kw, rep) = (heads * d, kv_heads * d, heads / kv_heads);
        let scale = 1.0 / (d as f32).sqrt();
        let d_out = grads.consume::<Flex>(&ops.node);
        let d_out = f32s(&d_out);
        let v = f32s(&s.v);
        let (mut dq, mut dk, mut dv) =
            (vec![0.0f32; batch * t * qw], vec![0.0f32; batch * t * kw], vec![0.0f32; batch * t * kw]);
        let (dq_at, dk_at, dv_at) = (
            super::cpu::SendPtr::new(dq.as_mut_ptr()),
            super::cpu::SendPtr::new(dk.as_mut_ptr()),
            super::cpu::SendPtr::new(dv.as_mut_ptr()),
        );
        // One task per (row, key/value head): it owns that head's key and value gradients and
        // its query heads' gradients.
        (0..batch * kv_heads).into_par_iter().for_each(|unit| {
            let (b, kvh) = (unit / kv_heads, unit % kv_heads);
            let (mut p, mut dp) = (vec![0.0f32; t * t], vec![0.0f32; t * t]);
            let k = &s.k[b * t * kw + kvh * d..];
            let vh = &v[b * t * kw + kvh * d..];
            // SAFETY (every product below): offsets and strides stay within the buffers, whose
            // sizes are batch·seq rows of the widths used; tasks write disjoint head columns.
            for h in kvh * rep..(kvh + 1) * rep {
                s.probabilities(b, h, &mut p);
                let q = &s.q[b * t * qw + h * d..];
                let dout = &d_out[b * t * qw + h * d..];
                unsafe {
                    // dV += Pᵀ · dO
                    gemm_at(
                        (t, d, t),
                        dv_at.get().add(b * t * kw + kvh * d),
                        kw,
                        true,
                        1.0,
                        p.as_ptr(),
                        (1, t),
                        dout.as_ptr(),
                        (qw, 1),
                    );
                    // dP = dO · Vᵀ
                    gemm_at((t, t, d), dp.as_mut_ptr(), t, false, 1.0, dout.as_ptr(), (qw, 1), vh.as_ptr(), (1, kw));
                }
                // dS = P ∘ (dP − Σⱼ P dP) / √d, in place of dP.
                for (prow, dprow) in p.chunks(t).zip(dp.chunks_mut(t)) {
                    let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                    for (g, &pv) in dprow.iter_mut().zip(prow) {
                        *g = pv * (*g - dot) * scale;
                    }
                }
                unsafe {
                    // dQ = dS · K, dK += dSᵀ · Q
                    gemm_at(
                        (t, d, t),
                        dq_at.get().add(b * t * qw + h * d),
                        qw,
                        false,
                        1.0,
                        dp.as_ptr(),
                        (t, 1),
                        k.as_ptr(),
                        (kw, 1),
                    );
                    gemm_at(
                        (t, d, t),
                        dk_at.get().add(b * t * kw + kvh * d),
                        kw,
                        true,
                        1.0,
                        dp.as_ptr(),
                        (1, t),
                        q.as_ptr(),
                        (qw, 1),
                    );
                }
            }
        });
        let Rotary { cos, back, .. } = &*s.rotary;
        super::cpu::rope(&mut dq, t, heads, d, cos, back);
        super::cpu::rope(&mut dk, t, kv_heads, d, cos, back);
        for (node, g, width) in [(&ops.parents[0], dq, qw), (&ops.parents[1], dk, kw), (&ops.parents[2], dv, kw)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(g, [batch * t, width])));
            }
        }
    }
}

/// Causal grouped-query attention with the rotary embedding, from the projections' outputs
/// `q` (`[batch·seq, heads·d]`), `k` and `v` (`[batch·seq, kv_heads·d]`) at positions `0..seq`
/// of each row, to the heads' outputs side by side (`[batch·seq, heads·d]`, what the output
/// projection reads), as one operation on `Autodiff<Flex>`; callers check [`super::training`] first.
///
/// It keeps the rotated queries and keys and one log-sum-exp per score row, and recomputes the
/// probabilities in the backward pass rather than keeping `seq²` of them per head.
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    shape: AttentionShape,
    rotary: &Arc<Rotary>,
) -> Tensor<B, 2> {
    let AttentionShape { batch, seq: t, heads, kv_heads, d } = shape;
    let (q, k, v) = (prim::<B, AdTensor, 2>(q), prim::<B, AdTensor, 2>(k), prim::<B, AdTensor, 2>(v));
    let (qw, kw, rep) = (heads * d, kv_heads * d, heads / kv_heads);
    let mut qr = f32s(&q.primitive).into_owned();
    let mut kr = f32s(&k.primitive).into_owned();
    assert!(qr.len() == batch * t * qw && kr.len() == batch * t * kw, "attention's operands");
    super::cpu::rope(&mut qr, t, heads, d, &rotary.cos, &rotary.sin);
    super::cpu::rope(&mut kr, t, kv_heads, d, &rotary.cos, &rotary.sin);
    let vs = f32s(&v.primitive);
    let mut out = vec![0.0f32; batch * t * qw];
    let mut lse = vec![0.0f32; batch * heads * t];
    let out_at = super::cpu::SendPtr::new(out.as_mut_ptr());
    lse.par_chunks_mut(t).enumerate().for_each(|(unit, lse)| {
        let (b, h) = (unit / heads, unit % heads);
        let mut p = vec![0.0f32; t * t];
        scores(&shape, &qr, &kr, b, h, &mut p);
        for (i, row) in p.chunks_mut(t).enumerate() {
            let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum = super::fastexp::exp_shifted(&mut row[..=i], max, 1.0) as f32;
            let inv = 1.0 / sum;
            row[..=i].iter_mut().for_each(|v| *v *= inv);
            row[i + 1..].fill(0.0);
            lse[i] = max + sum.ln();
        }
        let vh = &vs[b * t * kw + (h / rep) * d..];
        // SAFETY: within `out` and `vh` (batch·seq rows of their widths); each task writes its
        // own head's columns of its own row.
        unsafe {
            gemm_at(
                (t, d, t),
                out_at.get().add(b * t * qw + h * d),
                qw,
                false,
                1.0,
                p.as_ptr(),
                (t, 1),
                vh.as_ptr(),
                (kw, 1),
            )
        };
    });
    let y = FlexTensor::from_data(TensorData::new(out, [batch * t, qw]));
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let y = match AttentionOp.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = AttentionState {
                shape,
                q: Arc::new(qr),
                k: Arc::new(kr),
                v: v.primitive.clone(),
                lse: Arc::new(lse),
                rotary: rotary.clone(),
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    wrap::<B, _, 2>(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::loss::causal_lm_loss;
    use burn::tensor::{Distribution, Tolerance};

    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Ad, D> {
        <Ad as Backend>::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    #[test]
    fn head_loss_equals_log_softmax_and_gather_with_both_gradients() {
        // Over two blocks of HEAD_ROWS rows.
        let (rows, hidden, vocab) = (150, 16, 70);
        let x = random([rows, hidden], 1).require_grad();
        let w = random([hidden, vocab], 2).require_grad();
        let labels: Vec<i64> =
            (0..rows as i64).map(|r| if r % 3 == 1 { IGNORE } else { (r * 7) % vocab as i64 }).collect();
        let (ours, counted) = head_loss(&x, &w, None, &labels).expect("Autodiff<Flex> takes the fused path");
        let (theirs, counted_too) = causal_lm_loss(x.clone().matmul(w.clone()).reshape([1, rows, vocab]), &labels);
        assert_eq!((counted, counted_too), (100, 100));
        let tolerance = Tolerance::<f32>::relative(1e-4).set_single_precision_absolute(1e-5);
        ours.clone().inner().into_data().assert_approx_eq::<f32>(&theirs.clone().inner().into_data(), tolerance);
        let (g1, g2) = (ours.mul_scalar(-2.5).backward(), theirs.mul_scalar(-2.5).backward());
        let dx = x.grad(&g1).unwrap().into_data();
        dx.assert_approx_eq::<f32>(&x.grad(&g2).unwrap().into_data(), tolerance);
        // Ignored rows get no gradient.
        let dx: Vec<f32> = dx.to_vec().unwrap();
        assert!(dx[hidden..2 * hidden].iter().all(|&v| v == 0.0));
        w.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(&w.grad(&g2).unwrap().into_data(), tolerance);
    }

    #[test]
    fn rms_norm_and_swiglu_equal_burn_s_ops_with_every_gradient() {
        let tolerance = Tolerance::<f32>::relative(1e-4).set_single_precision_absolute(1e-5);
        let close = |a: Tensor<Ad, 2>, b: Tensor<Ad, 2>| {
            a.inner().into_data().assert_approx_eq::<f32>(&b.inner().into_data(), tolerance)
        };
        let (x, w) = (random([5, 24], 7).require_grad(), random([24], 8).require_grad());
        let r = random([5, 24], 9);
        let ours = rms_norm(x.clone(), w.clone(), 1e-5);
        let scale = x.clone().square().mean_dim(1).add_scalar(1e-5).sqrt().recip();
        let theirs = x.clone() * scale * w.clone().unsqueeze::<2>();
        close(ours.clone(), theirs.clone());
        let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r.clone()).sum().backward());
        x.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(&x.grad(&g2).unwrap().into_data(), tolerance);
        w.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(&w.grad(&g2).unwrap().into_data(), tolerance);

        // Beyond one chunk of the parallel loop, with large gates (the sigmoid's tails).
        let (g, u) = (random([3, 3000], 10).mul_scalar(6.0).require_grad(), random([3, 3000], 11).require_grad());
        let r = random([3, 3000], 12);
        let ours = swiglu(g.clone(), u.clone());
        let theirs = burn::tensor::activation::silu(g.clone()) * u.clone();
        close(ours.clone(), theirs.clone());
        let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
        g.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(&g.grad(&g2).unwrap().into_data(), tolerance);
        u.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(&u.grad(&g2).unwrap().into_data(), tolerance);
    }

    #[test]
    fn other_backends_and_unlabelled_batches_take_burn_s_ops() {
        let x = Tensor::<Flex, 2>::zeros([2, 4], &Default::default());
        let w = Tensor::<Flex, 2>::zeros([4, 5], &Default::default());
        assert!(head_loss(&x, &w, None, &[1, 2]).is_none());
        assert!(head_loss(&random([2, 4], 3), &random([4, 5], 4), None, &[IGNORE, IGNORE]).is_none());
    }
}
