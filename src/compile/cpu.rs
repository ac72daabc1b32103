//! Convolution on the CPU backend (`Flex`, with and without autodiff) by im2col and `gemm`,
//! forward and backward, with the bias and an optional ReLU fused into the forward pass.
//!
//! Why: Burn 0.21 computes a convolution's gradients through generic fallbacks (the weight
//! gradient as a convolution whose kernel is the whole output map, the input gradient as a
//! transposed convolution), which made training small CNNs on the CPU several times slower than
//! PyTorch. Here each batch item's gradients are two matrix products over its unfolded input:
//!
//! * forward: `Y_b = W · col(X_b) + bias` (`W` is `[Cout, Cin·kh·kw]`, `col(X_b)` is
//!   `[Cin·kh·kw, Ho·Wo]`), then ReLU when fused;
//! * weight gradient: `dW = Σ_b dY_b · col(X_b)ᵀ`, accumulated per thread, then summed;
//! * input gradient: `dX_b = col⁻¹(Wᵀ · dY_b)` (col2im adds overlapping patches back);
//! * bias gradient: `db = Σ_b Σ_positions dY_b`.
//!
//! Other backends, grouped convolutions and other dtypes take Burn's own `conv2d`.
//! [`conv2d`] picks at run time from the backend's type, so the model stays generic.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation, DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;
use std::any::Any;

type Ad = Autodiff<Flex>;
type AdTensor = <Ad as BackendTypes>::FloatTensorPrimitive;

/// A 2-D convolution of `[B, Cin, H, W]` by `[Cout, Cin/groups, kh, kw]` with optional bias, then
/// ReLU if `relu`. On the CPU backend (groups 1, f32) it runs the kernels of this module; elsewhere
/// Burn's convolution and activation.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
    relu: bool,
) -> Tensor<B, 4> {
    let cpu = options.groups == 1 && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if cpu && is::<B, Ad>() {
        let (x, w, b) = (prim::<B, AdTensor, 4>(x), prim(weight), bias.map(prim));
        return wrap::<B, _>(autodiff_forward(x, w, b, &options, relu));
    }
    if cpu && is::<B, Flex>() {
        let (x, w, b) = (prim::<B, FlexTensor, 4>(x), prim(weight), bias.map(prim::<B, FlexTensor, 1>));
        let geometry = Geometry::new(&x, &w, &options);
        return wrap::<B, _>(forward(&geometry, &x, &w, b.as_ref(), relu));
    }
    burn_conv(x, weight, bias, options, relu)
}

fn burn_conv<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
    relu: bool,
) -> Tensor<B, 4> {
    let y = burn::tensor::module::conv2d(x, weight, bias, options);
    if relu {
        activation::relu(y)
    } else {
        y
    }
}

/// Whether the backend `B` is `T`: the run-time face of specialisation.
fn is<B: 'static, T: 'static>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<T>()
}

/// `t`'s float primitive as `P`, which the caller knows `B`'s to be (see [`is`]).
fn prim<B: Backend, P: 'static, const D: usize>(t: Tensor<B, D>) -> P {
    cast::<_, P>(t.into_primitive().tensor()).unwrap_or_else(|_| unreachable!("B's float primitive is P"))
}

/// `a` as a `T` when `A` is `T`.
fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let mut slot = Some(a);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("just filled")),
        None => Err(slot.expect("untouched")),
    }
}

fn wrap<B: Backend, P: 'static>(p: P) -> Tensor<B, 4> {
    let p = cast::<P, B::FloatTensorPrimitive>(p).unwrap_or_else(|_| unreachable!("P is B's float tensor"));
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &FlexTensor, w: &FlexTensor, o: &ConvOptions<2>) -> Self {
        use burn::tensor::TensorMetadata;
        let [batch, cin, h, wd] = x.shape().dims();
        let [cout, _, kh, kw] = w.shape().dims();
        let out =
            |size: usize, k: usize, i: usize| (size + 2 * o.padding[i] - o.dilation[i] * (k - 1) - 1) / o.stride[i] + 1;
        Geometry {
            batch,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride: o.stride,
            pad: o.padding,
            dil: o.dilation,
            ho: out(h, kh, 0),
            wo: out(wd, kw, 1),
        }
    }
    /// Rows of the unfolded input: `Cin·kh·kw`.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Output positions per map: `Ho·Wo`.
    fn n(&self) -> usize {
        self.ho * self.wo
    }
    fn image(&self) -> usize {
        self.cin * self.h * self.w
    }
}

fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

/// Whether `t`'s elements are its whole buffer, in order.
fn whole(t: &FlexTensor) -> bool {
    t.as_slice::<f32>().is_some_and(|s| s.len() * 4 == t.bytes().len() && s.as_ptr().cast() == t.bytes().as_ptr())
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Unfolds one image `[Cin, H, W]` into `col`, `[Cin·kh·kw, Ho·Wo]` row-major; padding reads 0.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let n = g.n();
    if g.stride[0] == 1 && g.stride[1] == 1 && g.wo == g.w {
        // Output (oh, ow) of kernel tap (i, j) reads input (oh + di, ow + dj): with Wo = W that is
        // one constant shift of the flat plane, so each row of `col` is one copy of the rows
        // that exist, with the columns that fell off either edge zeroed afterwards (a row of
        // short copies and fills spent more time in memmove and memset calls than copying).
        for c in 0..g.cin {
            let plane = &x[c * g.h * g.w..][..g.h * g.w];
            for i in 0..g.kh {
                let di = (i * g.dil[0]) as isize - g.pad[0] as isize;
                let oh0 = (-di).clamp(0, g.ho as isize) as usize;
                let oh1 = (g.h as isize - di).clamp(oh0 as isize, g.ho as isize) as usize;
                for j in 0..g.kw {
                    let dj = (j * g.dil[1]) as isize - g.pad[1] as isize;
                    let row = &mut col[((c * g.kh + i) * g.kw + j) * n..][..n];
                    row[..oh0 * g.wo].fill(0.0);
                    row[oh1 * g.wo..].fill(0.0);
                    if oh1 == oh0 {
                        continue;
                    }
                    // Positions q = oh·W + ow read plane[q + di·W + dj]; clip q to the plane.
                    let shift = di * g.w as isize + dj;
                    let q0 = ((oh0 * g.wo) as isize).max(-shift) as usize;
                    let q1 = ((oh1 * g.wo) as isize).min((g.h * g.w) as isize - shift) as usize;
                    row[oh0 * g.wo..q0].fill(0.0);
                    row[q1..oh1 * g.wo].fill(0.0);
                    if q1 > q0 {
                        row[q0..q1].copy_from_slice(&plane[(q0 as isize + shift) as usize..][..q1 - q0]);
                    }
                    // Columns whose input column ow + dj lies outside 0..W read 0.
                    let (lo, hi) =
                        ((-dj).clamp(0, g.wo as isize) as usize, (g.w as isize - dj).clamp(0, g.wo as isize) as usize);
                    for oh in oh0..oh1 {
                        let r = &mut row[oh * g.wo..][..g.wo];
                        zero_few(&mut r[..lo]);
                        zero_few(&mut r[hi.max(lo)..]);
                    }
                }
            }
        }
        return;
    }
    for c in 0..g.cin {
        let plane = &x[c * g.h * g.w..][..g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * n..][..n];
                for oh in 0..g.ho {
                    let out = &mut row[oh * g.wo..][..g.wo];
                    let ih = (oh * g.stride[0] + i * g.dil[0]) as isize - g.pad[0] as isize;
                    if ih < 0 || ih >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * g.w..][..g.w];
                    let offset = (j * g.dil[1]) as isize - g.pad[1] as isize;
                    if g.stride[1] == 1 {
                        // Columns ow with 0 <= ow + offset < W are a contiguous copy.
                        let lo = (-offset).clamp(0, g.wo as isize) as usize;
                        let hi = (g.w as isize - offset).clamp(lo as isize, g.wo as isize) as usize;
                        out[..lo].fill(0.0);
                        out[lo..hi].copy_from_slice(&src[(lo as isize + offset) as usize..][..hi - lo]);
                        out[hi..].fill(0.0);
                    } else {
                        for (ow, o) in out.iter_mut().enumerate() {
                            let iw = (ow * g.stride[1]) as isize + offset;
                            *o = if iw >= 0 && iw < g.w as isize { src[iw as usize] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// Zeroes `s`, which is usually one or two values long, without a call to `memset`.
#[inline(always)]
fn zero_few(s: &mut [f32]) {
    match s {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => (*a, *b) = (0.0, 0.0),
        _ => s.fill(0.0),
    }
}

/// Adds the columns `col` (`[Cin·kh·kw, Ho·Wo]`) back onto one image gradient `[Cin, H, W]`.
fn col2im(g: &Geometry, col: &[f32], x: &mut [f32]) {
    let n = g.n();
    for c in 0..g.cin {
        let plane = &mut x[c * g.h * g.w..][..g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * n..][..n];
                for oh in 0..g.ho {
                    let src = &row[oh * g.wo..][..g.wo];
                    let ih = (oh * g.stride[0] + i * g.dil[0]) as isize - g.pad[0] as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * g.w..][..g.w];
                    let offset = (j * g.dil[1]) as isize - g.pad[1] as isize;
                    if g.stride[1] == 1 {
                        let lo = (-offset).clamp(0, g.wo as isize) as usize;
                        let hi = (g.w as isize - offset).clamp(lo as isize, g.wo as isize) as usize;
                        let dst = &mut dst[(lo as isize + offset) as usize..][..hi - lo];
                        for (d, s) in dst.iter_mut().zip(&src[lo..hi]) {
                            *d += s;
                        }
                    } else {
                        for (ow, s) in src.iter().enumerate() {
                            let iw = (ow * g.stride[1]) as isize + offset;
                            if iw >= 0 && iw < g.w as isize {
                                dst[iw as usize] += s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m×n) = [dst +] a (m×k) · b (k×n)`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    debug_assert!(k == 0 || n == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the slices cover every element the strides address (checked above in debug builds,
    // and by construction at every call site), and `dst` does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The forward pass: `[B, Cout, Ho, Wo]`.
fn forward(g: &Geometry, x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>, relu: bool) -> FlexTensor {
    let (xs, ws) = (f32s(x), f32s(w));
    let bias = bias.map(f32s);
    let (k, n) = (g.k(), g.n());
    // Each item's output starts as its bias (or 0) and the product adds into it.
    let y = per_item(
        g.batch,
        g.cout * n,
        n,
        |co| bias.as_ref().map_or(0.0, |bias| bias[co]),
        |b, out| {
            with_scratch(k * n, |col| {
                im2col(g, &xs[b * g.image()..][..g.image()], col);
                matmul((g.cout, n, k), out, true, &ws, (k, 1), col, (n, 1));
            });
            if relu {
                // PyTorch's relu: negatives to 0, NaN kept.
                out.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
            }
        },
    );
    tensor(y, [g.batch, g.cout, g.ho, g.wo])
}

/// `batch` items of `item` floats computed in parallel: each item starts with row `r` (of `row`
/// floats) holding `start(r)`, written while the item is in cache, then `body(index, item)`
/// finishes it. No pass over the whole result beforehand.
fn per_item(
    batch: usize,
    item: usize,
    row: usize,
    start: impl Fn(usize) -> f32 + Sync,
    body: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let total = batch * item;
    let mut v: Vec<f32> = Vec::with_capacity(total);
    v.spare_capacity_mut()[..total].par_chunks_mut(item.max(1)).enumerate().for_each(|(b, out)| {
        for (r, part) in out.chunks_mut(row.max(1)).enumerate() {
            let value = start(r);
            part.iter_mut().for_each(|o| {
                o.write(value);
            });
        }
        // SAFETY: every element of `out` was written just above.
        let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()) };
        body(b, out);
    });
    // SAFETY: the chunks cover all `total` elements, and each was written.
    unsafe { v.set_len(total) };
    v
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's scratch buffer of `len` floats, kept between calls (never zeroed: callers write
/// every element before they read it). `f` must not call back into rayon.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Chunks of the batch, one per thread, for gradients summed over the batch.
fn batch_chunks(batch: usize) -> Vec<std::ops::Range<usize>> {
    let parts = rayon::current_num_threads().clamp(1, batch.max(1));
    (0..parts).map(|p| p * batch / parts..(p + 1) * batch / parts).collect()
}

/// Gradients of the input, weight and bias from the output's gradient `dy` (already through
/// the ReLU's mask when it was fused).
fn backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want: [bool; 3],
) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
    let (k, n) = (g.k(), g.n());
    let dx = want[0].then(|| {
        per_item(
            g.batch,
            g.image(),
            g.image(),
            |_| 0.0,
            |b, dxb| {
                with_scratch(k * n, |dcol| {
                    // dcol = Wᵀ (k × Cout) · dY_b (Cout × n)
                    matmul((k, n, g.cout), dcol, false, w, (1, k), &dy[b * g.cout * n..][..g.cout * n], (n, 1));
                    col2im(g, dcol, dxb);
                });
            },
        )
    });
    let dw = want[1].then(|| {
        let partials: Vec<Vec<f32>> = batch_chunks(g.batch)
            .into_par_iter()
            .map(|range| {
                let mut dw = vec![0.0f32; g.cout * k];
                with_scratch(k * n, |col| {
                    for (i, b) in range.enumerate() {
                        im2col(g, &x[b * g.image()..][..g.image()], col);
                        // dW += dY_b (Cout × n) · col_bᵀ (n × k)
                        matmul(
                            (g.cout, k, n),
                            &mut dw,
                            i > 0,
                            &dy[b * g.cout * n..][..g.cout * n],
                            (n, 1),
                            col,
                            (1, n),
                        );
                    }
                });
                dw
            })
            .collect();
        sum(partials)
    });
    let db = want[2].then(|| {
        let mut db = vec![0.0f32; g.cout];
        for item in dy.chunks(g.cout * n) {
            for (d, row) in db.iter_mut().zip(item.chunks(n)) {
                *d += row.iter().sum::<f32>();
            }
        }
        db
    });
    (dx, dw, db)
}

fn sum(mut parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut total = parts.swap_remove(0);
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// The convolution's node in the autodiff graph. `N` is 2 without a bias, 3 with one.
#[derive(Debug)]
struct ConvOp<const N: usize>;

#[derive(Clone, Debug)]
struct ConvState {
    geometry: Geometry,
    x: FlexTensor,
    w: FlexTensor,
    /// The output, kept when ReLU was fused: its zeros mask the gradient.
    y: Option<FlexTensor>,
}

impl<const N: usize> Backward<Flex, N> for ConvOp<N> {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let mut dy = grads.consume::<Flex>(&ops.node);
        if let Some(y) = &s.y {
            // Through the fused ReLU: no gradient where it output 0. In place when `dy` is
            // a whole buffer of its own (it usually is), else on a copy.
            if !whole(&dy) {
                dy = dy.to_contiguous();
            }
            for (d, &v) in dy.storage_mut::<f32>().iter_mut().zip(f32s(y).iter()) {
                *d = if v > 0.0 { *d } else { 0.0 };
            }
        }
        let dy = f32s(&dy);
        let want = [0, 1, 2].map(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let g = &s.geometry;
        let (dx, dw, db) = backward(g, &f32s(&s.x), &f32s(&s.w), &dy, want);
        if let (Some(node), Some(dx)) = (&ops.parents[0], dx) {
            grads.register::<Flex>(node.id, tensor(dx, [g.batch, g.cin, g.h, g.w]));
        }
        if let (Some(node), Some(dw)) = (&ops.parents[1], dw) {
            grads.register::<Flex>(node.id, tensor(dw, [g.cout, g.cin, g.kh, g.kw]));
        }
        if let (Some(Some(node)), Some(db)) = (ops.parents.get(2), db) {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(db, [g.cout])));
        }
    }
}

fn autodiff_forward(
    x: AdTensor,
    w: AdTensor,
    bias: Option<AdTensor>,
    options: &ConvOptions<2>,
    relu: bool,
) -> AdTensor {
    let geometry = Geometry::new(&x.primitive, &w.primitive, options);
    let y = forward(&geometry, &x.primitive, &w.primitive, bias.as_ref().map(|b| &b.primitive), relu);
    let state = |y: &FlexTensor| ConvState {
        geometry,
        x: x.primitive.clone(),
        w: w.primitive.clone(),
        y: relu.then(|| y.clone()),
    };
    match bias {
        Some(b) => {
            match ConvOp::<3>
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state(&y), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
        None => {
            match ConvOp::<2>.prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(state(&y), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    }
}

/// 2-D max pooling of `[B, C, H, W]` as PyTorch's `max_pool2d` (padding reads −∞, a NaN in a
/// window wins, `ceil` keeps a last window that starts inside the input or its left padding). On
/// the CPU backend (f32) it runs the kernels below, remembering each window's winner for the
/// backward pass; elsewhere Burn's pooling.
pub fn max_pool2d<B: Backend>(x: Tensor<B, 4>, k: usize, s: usize, p: usize, ceil: bool) -> Tensor<B, 4> {
    let pool = Pool::new(k, s, p, ceil);
    if x.dtype() == DType::F32 && is::<B, Ad>() {
        return wrap::<B, _>(autodiff_max_pool(prim::<B, AdTensor, 4>(x), pool));
    }
    if x.dtype() == DType::F32 && is::<B, Flex>() {
        return wrap::<B, _>(pool_forward(&pool, &prim::<B, FlexTensor, 4>(x), false).0);
    }
    burn::tensor::module::max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], ceil)
}

/// One row of 2x2 windows at stride 2 with their winners (offsets into the plane; `i` is the
/// top row's offset, `w` the plane's width).
fn pool_row_2x2(top: &[f32], bottom: &[f32], i: u32, w: u32, out: &mut [f32], winners: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { pool_row_2x2_avx2(top, bottom, i, w, out, winners) };
            return;
        }
    }
    pool_row_2x2_portable(top, bottom, i, w, out, winners);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_row_2x2_avx2(top: &[f32], bottom: &[f32], i: u32, w: u32, out: &mut [f32], winners: &mut [u32]) {
    pool_row_2x2_portable(top, bottom, i, w, out, winners);
}

#[inline(always)]
fn pool_row_2x2_portable(top: &[f32], bottom: &[f32], i: u32, w: u32, out: &mut [f32], winners: &mut [u32]) {
    let (top, bottom) = (&top[..2 * out.len()], &bottom[..2 * out.len()]);
    for (ow, (o, at)) in out.iter_mut().zip(winners.iter_mut()).enumerate() {
        let (i, j) = (i + 2 * ow as u32, i + w + 2 * ow as u32);
        let (mut best, mut arg) = (top[2 * ow], i);
        // Selects, not branches: which of four random values wins is unpredictable, and
        // mispredictions made this loop a tenth of a small CNN's training step.
        for (v, a) in [(top[2 * ow + 1], i + 1), (bottom[2 * ow], j), (bottom[2 * ow + 1], j + 1)] {
            let better = (v > best) | (v.is_nan() & !best.is_nan());
            best = select(better, v, best);
            arg = select(better, a, arg);
        }
        (*o, *at) = (best, arg);
    }
}

/// `a` if `pick`, else `b`, for the compiler to turn into a conditional move.
#[inline(always)]
fn select<T: Copy>(pick: bool, a: T, b: T) -> T {
    [b, a][pick as usize]
}

/// A square pooling window.
#[derive(Clone, Copy, Debug)]
struct Pool {
    k: usize,
    s: usize,
    p: usize,
    ceil: bool,
}

impl Pool {
    fn new(k: usize, s: usize, p: usize, ceil: bool) -> Self {
        Pool { k, s, p, ceil }
    }
    /// PyTorch's output size along one axis.
    fn out(&self, size: usize) -> usize {
        let span = size + 2 * self.p - self.k;
        let mut n = if self.ceil { span.div_ceil(self.s) } else { span / self.s } + 1;
        if self.ceil && (n - 1) * self.s >= size + self.p {
            n -= 1; // the last window would start in the right padding
        }
        n
    }
}

/// The pooled maps and, if `remember`, each output's winner as an offset into its input plane.
fn pool_forward(pool: &Pool, x: &FlexTensor, remember: bool) -> (FlexTensor, Vec<u32>) {
    use burn::tensor::TensorMetadata;
    let [b, c, h, w] = x.shape().dims();
    let (ho, wo) = (pool.out(h), pool.out(w));
    let xs = f32s(x);
    let planes = b * c;
    let mut y = vec![0.0f32; planes * ho * wo];
    let mut arg = if remember { vec![0u32; planes * ho * wo] } else { Vec::new() };
    // 2x2 windows at stride 2 that tile the input: the common case, without bounds or ranges.
    let halves = pool.k == 2 && pool.s == 2 && pool.p == 0 && 2 * ho <= h && 2 * wo <= w;
    let per_plane = |(plane, out): (usize, &mut [f32]), mut winners: Option<&mut [u32]>| {
        let src = &xs[plane * h * w..][..h * w];
        if halves {
            for oh in 0..ho {
                let (top, bottom) = (&src[2 * oh * w..][..2 * wo], &src[(2 * oh + 1) * w..][..2 * wo]);
                let out = &mut out[oh * wo..][..wo];
                match winners.as_deref_mut() {
                    None => {
                        for (ow, o) in out.iter_mut().enumerate() {
                            let a = wins(top[2 * ow], top[2 * ow + 1]);
                            let b = wins(bottom[2 * ow], bottom[2 * ow + 1]);
                            *o = wins(a, b);
                        }
                    }
                    Some(winners) => {
                        pool_row_2x2(top, bottom, (2 * oh * w) as u32, w as u32, out, &mut winners[oh * wo..][..wo])
                    }
                }
            }
            return;
        }
        for oh in 0..ho {
            let top = (oh * pool.s) as isize - pool.p as isize;
            let (r0, r1) = (top.max(0) as usize, ((top + pool.k as isize) as usize).min(h));
            for ow in 0..wo {
                let left = (ow * pool.s) as isize - pool.p as isize;
                let (c0, c1) = (left.max(0) as usize, ((left + pool.k as isize) as usize).min(w));
                let (mut best, mut at) = (f32::NEG_INFINITY, r0 * w + c0);
                for r in r0..r1 {
                    for (j, &v) in src[r * w + c0..r * w + c1].iter().enumerate() {
                        if v > best || v.is_nan() {
                            (best, at) = (v, r * w + c0 + j);
                            if v.is_nan() {
                                break;
                            }
                        }
                    }
                    if best.is_nan() {
                        break;
                    }
                }
                out[oh * wo + ow] = best;
                if let Some(winners) = winners.as_deref_mut() {
                    winners[oh * wo + ow] = at as u32;
                }
            }
        }
    };
    if remember {
        y.par_chunks_mut(ho * wo)
            .zip(arg.par_chunks_mut(ho * wo))
            .enumerate()
            .for_each(|(plane, (out, winners))| per_plane((plane, out), Some(winners)));
    } else {
        y.par_chunks_mut(ho * wo).enumerate().for_each(|(plane, out)| per_plane((plane, out), None));
    }
    (tensor(y, [b, c, ho, wo]), arg)
}

/// The larger of two values, `b` only if strictly larger; a NaN wins (PyTorch's rule).
#[inline]
fn wins(a: f32, b: f32) -> f32 {
    select((b > a) | (b.is_nan() & !a.is_nan()), b, a)
}

#[derive(Debug)]
struct MaxPoolOp;

#[derive(Clone, Debug)]
struct MaxPoolState {
    input: [usize; 4],
    winners: std::sync::Arc<Vec<u32>>,
}

impl Backward<Flex, 1> for MaxPoolOp {
    type State = MaxPoolState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = &ops.parents[0] else { return };
        let [b, c, h, w] = ops.state.input;
        let dy = f32s(&dy);
        let per_out = dy.len() / (b * c).max(1);
        let winners = &ops.state.winners;
        let mut dx = vec![0.0f32; b * c * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, dxp)| {
            let (g, at) = (&dy[plane * per_out..][..per_out], &winners[plane * per_out..][..per_out]);
            for (&v, &i) in g.iter().zip(at) {
                dxp[i as usize] += v;
            }
        });
        grads.register::<Flex>(node.id, tensor(dx, [b, c, h, w]));
    }
}

fn autodiff_max_pool(x: AdTensor, pool: Pool) -> AdTensor {
    use burn::tensor::TensorMetadata;
    match MaxPoolOp.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, winners) = pool_forward(&pool, &x.primitive, true);
            let state = MaxPoolState { input: x.primitive.shape().dims(), winners: std::sync::Arc::new(winners) };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(pool_forward(&pool, &x.primitive, false).0),
    }
}

#[cfg(test)]
mod tests {
    //! Each kernel against Burn's own operation on the same values: outputs and every gradient.
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type Inner = Flex;

    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Ad, D> {
        <Ad as Backend>::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn close<const D: usize>(ours: Tensor<Inner, D>, theirs: Tensor<Inner, D>, what: &str) {
        assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
        ours.into_data()
            // An absolute floor for sums that cancel to near zero (a wrong value is off by O(1)).
            .assert_approx_eq::<f32>(
                &theirs.into_data(),
                Tolerance::relative(1e-4).set_half_precision_absolute(1e-4).set_single_precision_absolute(1e-5),
            );
    }

    #[test]
    fn convolution_matches_burn_forward_and_backward() {
        // (cin, cout, h, w, k, stride, padding, dilation, bias, relu)
        let cases = [
            (1, 4, 7, 6, 3, 1, 1, 1, true, false),
            (3, 5, 9, 8, 3, 2, 1, 1, false, true),
            (2, 3, 10, 10, 5, 1, 2, 2, true, true),
            (4, 6, 5, 7, 1, 1, 0, 1, true, false),
            (2, 2, 6, 6, 3, 3, 0, 1, false, false),
            (3, 4, 8, 5, 2, 2, 0, 1, true, true),
            // 'Same' stride-1 convolutions (the unfolding's one-copy path): 5x5, dilated 3x3.
            (3, 2, 6, 5, 5, 1, 2, 1, true, true),
            (2, 3, 6, 7, 3, 1, 2, 2, false, true),
            // Stride 1 with padding wider than the kernel.
            (2, 3, 5, 4, 1, 1, 1, 1, false, false),
            (3, 2, 6, 6, 2, 1, 2, 1, true, false),
        ];
        for (n, &(cin, cout, h, w, k, s, p, d, bias, relu)) in cases.iter().enumerate() {
            let seed = 10 * n as u64;
            let x = random([3, cin, h, w], seed).require_grad();
            let wt = random([cout, cin, k, k], seed + 1).require_grad();
            let b = bias.then(|| random([cout], seed + 2).require_grad());
            let options = ConvOptions::new([s, s], [p, p], [d, d], 1);
            let ours = conv2d(x.clone(), wt.clone(), b.clone(), options.clone(), relu);
            let theirs = burn_conv(x.clone(), wt.clone(), b.clone(), options.clone(), relu);
            let case = format!("case {n}");
            close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
            let r = random(ours.dims(), seed + 3).detach();
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(x.grad(&g1).unwrap(), x.grad(&g2).unwrap(), &format!("{case} input gradient"));
            close(wt.grad(&g1).unwrap(), wt.grad(&g2).unwrap(), &format!("{case} weight gradient"));
            if let Some(b) = &b {
                close(b.grad(&g1).unwrap(), b.grad(&g2).unwrap(), &format!("{case} bias gradient"));
            }
            // Inference, on the backend without autodiff.
            let inner =
                conv2d(x.clone().inner(), wt.clone().inner(), b.clone().map(|b| b.inner()), options.clone(), relu);
            let reference = burn_conv(x.inner(), wt.inner(), b.map(|b| b.inner()), options, relu);
            close(inner, reference, &format!("{case} inference"));
        }
    }

    #[test]
    fn an_input_that_needs_no_gradient_still_trains_the_weights() {
        let x = random([2, 1, 6, 6], 1);
        let wt = random([3, 1, 3, 3], 2).require_grad();
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let ours = conv2d(x.clone(), wt.clone(), None, options.clone(), true).sum().backward();
        let theirs = burn_conv(x.clone(), wt.clone(), None, options, true).sum().backward();
        close(wt.grad(&ours).unwrap(), wt.grad(&theirs).unwrap(), "weight gradient");
        assert!(x.grad(&ours).is_none());
    }

    #[test]
    fn max_pooling_matches_burn_forward_and_backward() {
        // (h, w, k, stride, padding, ceil)
        let cases = [
            (8, 8, 2, 2, 0, false),
            (9, 7, 3, 2, 1, false),
            (9, 9, 3, 2, 0, true),
            (6, 5, 2, 1, 0, false),
            (7, 7, 2, 2, 0, true),
            // Wide rows (19 windows).
            (6, 38, 2, 2, 0, false),
        ];
        for (n, &(h, w, k, s, p, ceil)) in cases.iter().enumerate() {
            let x = random([2, 3, h, w], 100 + n as u64).require_grad();
            let ours = max_pool2d(x.clone(), k, s, p, ceil);
            let theirs = burn::tensor::module::max_pool2d(x.clone(), [k, k], [s, s], [p, p], [1, 1], ceil);
            let case = format!("case {n}");
            close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
            let r = random(ours.dims(), 200 + n as u64).detach();
            let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
            close(x.grad(&g1).unwrap(), x.grad(&g2).unwrap(), &format!("{case} input gradient"));
            let inner = max_pool2d(x.clone().inner(), k, s, p, ceil);
            let reference = burn::tensor::module::max_pool2d(x.inner(), [k, k], [s, s], [p, p], [1, 1], ceil);
            close(inner, reference, &format!("{case} inference"));
        }
    }

    #[test]
    fn a_nan_wins_its_window_while_training_too() {
        // A row of 20 windows; NaNs in windows 3 (bottom right), 12 (top right) and 17 (bottom left).
        let (h, w) = (2, 40);
        let mut values: Vec<f32> = (0..h * w).map(|v| (v % 7) as f32).collect();
        for at in [w + 7, 25, w + 34] {
            values[at] = f32::NAN;
        }
        let x = Tensor::<Ad, 4>::from_data(TensorData::new(values, [1, 1, h, w]), &Default::default()).require_grad();
        let y = max_pool2d(x.clone(), 2, 2, 0, false);
        let out: Vec<f32> = y.clone().inner().into_data().to_vec().unwrap();
        let nan: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_nan()).collect();
        assert_eq!(nan, [3, 12, 17], "{out:?}");
        // The gradient goes to the NaN of each of those windows (ones elsewhere are numbers).
        let g = x.grad(&y.sum().backward()).unwrap();
        let g: Vec<f32> = g.into_data().to_vec().unwrap();
        for at in [w + 7, 25, w + 34] {
            assert!(g[at] == 1.0 || g[at].is_nan(), "the gradient reaches the NaN at {at}: {}", g[at]);
        }
        for window in [3, 12, 17] {
            let others = [2 * window, 2 * window + 1, w + 2 * window, w + 2 * window + 1];
            let reached = others.iter().filter(|&&at| g[at] != 0.0).count();
            assert_eq!(reached, 1, "window {window}: one winner, {:?}", others.map(|a| g[a]));
        }
    }

    #[test]
    fn a_nan_in_a_window_is_the_window_s_maximum() {
        let mut values = vec![1.0f32; 16];
        values[5] = f32::NAN; // row 1, column 1: the first 2x2 window
        let x = Tensor::<Inner, 4>::from_data(TensorData::new(values, [1, 1, 4, 4]), &Default::default());
        for (k, s) in [(2, 2), (3, 1)] {
            let y: Vec<f32> = max_pool2d(x.clone(), k, s, 0, false).into_data().to_vec().unwrap();
            assert!(y[0].is_nan(), "k={k}: {y:?}");
            assert!(y.iter().filter(|v| !v.is_nan()).all(|&v| v == 1.0), "k={k}: {y:?}");
        }
    }
}
