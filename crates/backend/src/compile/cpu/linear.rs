//! A linear layer, `y = x W + b` with `x` `[M, K]` and `W` `[K, N]`, forward and backward, whose
//! products read their operands in place through their strides and write straight into the
//! result.
//!
//! Why: Burn's CPU backend allocates each product's result through a zero-filled byte vector
//! that it then copies into an aligned buffer (a fill and a copy of every output, forward and
//! backward), adds the bias as one more pass, and sums its gradient through a generic
//! reduction. In an MLP or a ViT those passes took a tenth of a training step. Here the output
//! starts as the bias repeated (or unwritten, without one) and the product accumulates into it;
//! the gradients are `dX = dY Wᵀ`, `dW = Xᵀ dY` (both read transposed in place) and
//! `db = Σ_rows dY`.
//!
//! Off the CPU backend it is Burn's `linear`.

use super::{f32s, prim, wrap_rank, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata};
use nasc_runtime::cpu::{gemm_parallel, is};
use rayon::prelude::*;

/// `x W + b`: `x` `[M, K]`, `weight` `[K, N]` (any strides, such as a transposed view of a
/// `[N, K]` parameter), `bias` `[N]`.
pub fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    let cpu = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if cpu && is::<B, Ad>() {
        let (x, w) = (prim::<B, AdTensor, 2>(x), prim::<B, AdTensor, 2>(weight));
        let b = bias.map(prim::<B, AdTensor, 1>);
        let y = forward(&x.primitive, &w.primitive, b.as_ref().map(|b| &b.primitive));
        let state = LinearState { x: x.primitive.clone(), w: w.primitive.clone() };
        let out = match b {
            Some(b) => match LinearOp
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
            None => match LinearNoBiasOp
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        };
        return wrap_rank::<B, _, 2>(out);
    }
    if cpu && is::<B, Flex>() {
        let (x, w) = (prim::<B, FlexTensor, 2>(x), prim::<B, FlexTensor, 2>(weight));
        let b = bias.map(prim::<B, FlexTensor, 1>);
        return wrap_rank::<B, _, 2>(forward(&x, &w, b.as_ref()));
    }
    burn::tensor::module::linear(x, weight, bias)
}

/// A matrix read in place: its elements, the offset of its first, and its row and column
/// strides. A view with a negative or broadcast stride is copied out contiguous first.
struct Matrix<'a> {
    values: std::borrow::Cow<'a, [f32]>,
    offset: usize,
    strides: (usize, usize),
    dims: [usize; 2],
}

impl<'a> Matrix<'a> {
    fn of(t: &'a FlexTensor) -> Self {
        let dims = t.shape().dims::<2>();
        let layout = t.layout();
        let s = layout.strides();
        if s.iter().all(|&s| s > 0) || dims.contains(&0) {
            let values = std::borrow::Cow::Borrowed(t.storage::<f32>());
            let strides = (s[0].max(1) as usize, s[1].max(1) as usize);
            return Matrix { values, offset: layout.start_offset(), strides, dims };
        }
        Matrix { values: f32s(t), offset: 0, strides: (dims[1].max(1), 1), dims }
    }

    fn transposed(&self) -> (usize, usize) {
        (self.strides.1, self.strides.0)
    }

    /// The first element, for a product that reads `rows × cols` of it through `strides`; the
    /// bounds are checked here, so the products' `unsafe` rests on this.
    fn at(&self, (rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> *const f32 {
        if rows > 0 && cols > 0 {
            let last = self.offset + (rows - 1) * rs + (cols - 1) * cs;
            assert!(last < self.values.len(), "a linear layer's operand reads past its buffer");
        }
        self.values[self.offset.min(self.values.len())..].as_ptr()
    }
}

/// `x W + b`, `[M, N]`.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
    let (x, w) = (Matrix::of(x), Matrix::of(w));
    let ([m, k], n) = (x.dims, w.dims[1]);
    assert_eq!(w.dims[0], k, "a linear layer's input width and weight rows");
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let accumulate = match b {
        Some(b) => {
            let bias = f32s(b);
            assert_eq!(bias.len(), n, "a linear layer's bias");
            let fill = |row: &mut [std::mem::MaybeUninit<f32>]| {
                for (o, &b) in row.iter_mut().zip(bias.iter()) {
                    o.write(b);
                }
            };
            // A small layer's output is filled on this thread: handing it out costs more.
            if m * n < PARALLEL_FROM {
                y.spare_capacity_mut()[..m * n].chunks_mut(n.max(1)).for_each(fill);
            } else {
                y.spare_capacity_mut()[..m * n].par_chunks_mut(n.max(1)).for_each(fill);
            }
            true
        }
        None if k == 0 => {
            y.spare_capacity_mut()[..m * n].iter_mut().for_each(|o| {
                o.write(0.0);
            });
            true
        }
        None => false,
    };
    if m > 0 && n > 0 && k > 0 {
        let (xp, wp) = (x.at((m, k), x.strides), w.at((k, n), w.strides));
        // SAFETY: `at` checked every element the strides address; `y` has room for m·n values
        // (written above when the product accumulates, else written by it) and aliases nothing.
        unsafe { gemm_parallel((m, n, k), y.as_mut_ptr(), n, accumulate, xp, x.strides, wp, w.strides) };
    }
    // SAFETY: every one of the m·n values was written above.
    unsafe { y.set_len(m * n) };
    FlexTensor::from_data(TensorData::new(y, [m, n]))
}

/// Outputs of fewer values than this are filled and summed on one thread.
const PARALLEL_FROM: usize = 1 << 16;

#[derive(Debug)]
struct LinearOp;

#[derive(Debug)]
struct LinearNoBiasOp;

#[derive(Clone, Debug)]
struct LinearState {
    x: FlexTensor,
    w: FlexTensor,
}

/// `dX = dY Wᵀ` and `dW = Xᵀ dY`, each when its input needs one.
fn input_and_weight_gradients(
    state: &LinearState,
    dy: &FlexTensor,
    nodes: [Option<burn::backend::autodiff::NodeId>; 2],
    grads: &mut Gradients,
) {
    let (x, w, dy) = (Matrix::of(&state.x), Matrix::of(&state.w), Matrix::of(dy));
    let ([m, k], n) = (x.dims, w.dims[1]);
    let product =
        |(rows, cols, inner): (usize, usize, usize), a: (&Matrix, (usize, usize)), b: (&Matrix, (usize, usize))| {
            let mut out: Vec<f32> = Vec::with_capacity(rows * cols);
            if rows > 0 && cols > 0 {
                if inner == 0 {
                    out.resize(rows * cols, 0.0);
                    return out;
                }
                let (ap, bp) = (a.0.at((rows, inner), a.1), b.0.at((inner, cols), b.1));
                // SAFETY: `at` checked the operands' bounds; `out` has room for rows·cols values,
                // all written by the product (it does not accumulate), and aliases nothing.
                unsafe {
                    gemm_parallel((rows, cols, inner), out.as_mut_ptr(), cols, false, ap, a.1, bp, b.1);
                    out.set_len(rows * cols);
                }
            }
            out
        };
    let [x_node, w_node] = nodes;
    if let Some(id) = x_node {
        let dx = product((m, k, n), (&dy, dy.strides), (&w, w.transposed()));
        grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dx, [m, k])));
    }
    if let Some(id) = w_node {
        let dw = product((k, n, m), (&x, x.transposed()), (&dy, dy.strides));
        grads.register::<Flex>(id, FlexTensor::from_data(TensorData::new(dw, [k, n])));
    }
}

/// `db = Σ_rows dY`, the rows summed in parts (one per thread, one for a small layer), then
/// the parts.
fn bias_gradient(dy: &FlexTensor) -> FlexTensor {
    let [m, n] = dy.shape().dims::<2>();
    let values = f32s(dy);
    let sum_rows = |rows: &[f32]| {
        let mut sum = vec![0.0f32; n];
        for row in rows.chunks_exact(n.max(1)) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        sum
    };
    if m * n < PARALLEL_FROM {
        return FlexTensor::from_data(TensorData::new(sum_rows(&values), [n]));
    }
    let rows_per = m.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts: Vec<Vec<f32>> = values.par_chunks((rows_per * n).max(1)).map(sum_rows).collect();
    let mut db = vec![0.0f32; n];
    for part in parts {
        db.iter_mut().zip(part).for_each(|(s, v)| *s += v);
    }
    FlexTensor::from_data(TensorData::new(db, [n]))
}

impl Backward<Flex, 3> for LinearOp {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [x, w, b] = ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id));
        if let Some(id) = b {
            grads.register::<Flex>(id, bias_gradient(&dy));
        }
        input_and_weight_gradients(&ops.state, &dy, [x, w], grads);
    }
}

impl Backward<Flex, 2> for LinearNoBiasOp {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let nodes = ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id));
        input_and_weight_gradients(&ops.state, &dy, nodes, grads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Outputs and the gradients of the input, the weight and the bias against Burn's `linear`,
    /// with and without a bias, with a contiguous weight and with a transposed view of a wider
    /// parameter's rows (as attention's projections read theirs), at sizes on both sides of
    /// the parallel threshold, and with no rows.
    #[test]
    fn linear_matches_burn_forward_and_backward() {
        let device = Default::default();
        let close = |ours: Tensor<Flex, 2>, theirs: Tensor<Flex, 2>, what: &str| {
            super::super::assert_close(
                ours,
                theirs,
                Tolerance::relative(1e-4).set_single_precision_absolute(1e-4),
                what,
            )
        };
        for (case, ([m, k, n], bias, view)) in [
            ([5, 7, 3], true, false),
            ([4, 6, 9], false, false),
            ([3, 8, 4], true, true),
            ([300, 200, 150], true, false),
            ([256, 192, 192], false, true),
            // An output past PARALLEL_FROM: the bias filled and summed across threads.
            ([520, 48, 160], true, false),
            ([0, 4, 3], true, false),
        ]
        .into_iter()
        .enumerate()
        {
            <Ad as Backend>::seed(&device, 400 + case as u64);
            let x = Tensor::<Ad, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            // As a view: rows n..2n of a [3n, k] parameter, transposed to [k, n].
            let param = Tensor::<Ad, 2>::random(
                if view { [3 * n, k] } else { [k, n] },
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let b = Tensor::<Ad, 1>::random([n], Distribution::Normal(0.0, 1.0), &device);
            let weight = |p: Tensor<Ad, 2>| if view { p.narrow(0, n, n).transpose() } else { p };
            let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
            let (pa, pb) = (param.clone().require_grad(), param.clone().require_grad());
            let (ba, bb) = (b.clone().require_grad(), b.clone().require_grad());
            let ours = linear(xa.clone(), weight(pa.clone()), bias.then(|| ba.clone()));
            let theirs = burn::tensor::module::linear(xb.clone(), weight(pb.clone()), bias.then(|| bb.clone()));
            close(ours.clone().inner(), theirs.clone().inner(), &format!("case {case} output"));
            let r = Tensor::<Ad, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            if m > 0 {
                close(xa.grad(&g1).expect("dx"), xb.grad(&g2).expect("dx"), &format!("case {case} input gradient"));
                close(pa.grad(&g1).expect("dw"), pb.grad(&g2).expect("dw"), &format!("case {case} weight gradient"));
                if bias {
                    let (da, db) = (ba.grad(&g1).expect("db"), bb.grad(&g2).expect("db"));
                    close(da.unsqueeze(), db.unsqueeze(), &format!("case {case} bias gradient"));
                }
            }
            let plain = |p: Tensor<Flex, 2>| if view { p.narrow(0, n, n).transpose() } else { p };
            let inference = linear(x.clone().inner(), plain(param.clone().inner()), bias.then(|| b.clone().inner()));
            let reference = burn::tensor::module::linear(x.inner(), plain(param.inner()), bias.then(|| b.inner()));
            close(inference, reference, &format!("case {case} inference"));
        }
    }
}
