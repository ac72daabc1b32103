//! Convolution on the CPU backend (`Flex`, with and without autodiff) by im2col and `gemm`,
//! forward and backward, with the bias and an optional ReLU fused into the forward pass.
//!
//! Why: Burn 0.21 computes a convolution's gradients through generic fallbacks (the weight
//! gradient as a convolution whose kernel is the whole output map, the input gradient as a
//! transposed convolution), which made training small CNNs on the CPU far slower than PyTorch.
//! Here each batch item's gradients are two matrix products over its unfolded input:
//!
//! * forward: `Y_b = W · col(X_b) + bias` (`W` is `[Cout, Cin·kh·kw]`, `col(X_b)` is
//!   `[Cin·kh·kw, Ho·Wo]`), then ReLU when fused;
//! * weight gradient: `dW = Σ_b dY_b · col(X_b)ᵀ`, accumulated per thread, then summed;
//! * input gradient: `dX_b = col⁻¹(Wᵀ · dY_b)` (col2im adds overlapping patches back);
//! * bias gradient: `db = Σ_b Σ_positions dY_b`.
//!
//! Grouped and depthwise convolutions run the same products group by group (`Cin/groups·kh·kw`
//! rows each). Other backends and other dtypes take Burn's own `conv2d`.
//! [`conv2d`] picks at run time from the backend's type, so the model stays generic.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation, DType, Tensor, TensorData, TensorPrimitive};
use nasc_runtime::cpu::{is, matmul_strided, with_scratch};
use rayon::prelude::*;
use std::any::Any;

mod attention;
mod concat;
mod depthwise;
mod dropout;
mod elementwise;
mod layer_norm;
mod linear;
mod norm;
mod sgd;
mod simd;
mod stacked;
pub use attention::attention;
pub use concat::concat;
pub use dropout::dropout;
pub use elementwise::{activation, gate, shuffle, Activation};
pub use layer_norm::layer_norm_train;
pub use linear::linear;
pub use norm::batch_norm_train;
pub use sgd::Sgd;

type Ad = Autodiff<Flex>;
type AdTensor = <Ad as BackendTypes>::FloatTensorPrimitive;

/// What a convolution applies to its output before anything else reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// ReLU, PyTorch's (negatives to 0, NaN kept).
    pub relu: bool,
    /// Then 2x2 max pooling at stride 2 without padding, `Some(ceil)`, as [`max_pool2d`].
    pub pool: Option<bool>,
}

/// A 2-D convolution of `[B, Cin, H, W]` by `[Cout, Cin/groups, kh, kw]` with optional bias, then
/// the epilogue. On the CPU backend (f32, any groups) it runs the kernels of this module; elsewhere
/// Burn's convolution, activation and pooling.
///
/// With pooling fused, the convolution's full output is never stored: each batch item's is
/// computed into a scratch buffer that stays in cache, pooled there, and only the pooled maps and
/// each window's winner (2 bits of a byte) are kept for the backward pass.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
    epilogue: Epilogue,
) -> Tensor<B, 4> {
    let Epilogue { relu, pool } = epilogue;
    let cpu = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    // Stacked small maps pool afterwards: the pooling kernel's maps are tiny there.
    let fused_pool = |g: &Geometry| pool.is_some_and(|ceil| g.pools(ceil)) && !g.stacks();
    if cpu && is::<B, Ad>() {
        let (x, w, b) = (prim::<B, AdTensor, 4>(x), prim::<B, AdTensor, 4>(weight), bias.map(prim::<B, AdTensor, 1>));
        let geometry = Geometry::new(&x.primitive, &w.primitive, &options);
        if fused_pool(&geometry) {
            return wrap::<B, _>(autodiff_forward_pooled(geometry, x, w, b, relu));
        }
        return then_pool(wrap::<B, _>(autodiff_forward(geometry, x, w, b, relu)), pool);
    }
    if cpu && is::<B, Flex>() {
        let (x, w, b) = (prim::<B, FlexTensor, 4>(x), prim(weight), bias.map(prim::<B, FlexTensor, 1>));
        let geometry = Geometry::new(&x, &w, &options);
        if fused_pool(&geometry) {
            return wrap::<B, _>(forward_pooled(&geometry, &x, &w, b.as_ref(), relu, false).0);
        }
        return then_pool(wrap::<B, _>(forward(&geometry, &x, &w, b.as_ref(), relu)), pool);
    }
    then_pool(burn_conv(x, weight, bias, options, relu), pool)
}

/// `y`, max-pooled 2x2 at stride 2 when `pool` is `Some(ceil)`: the epilogue, unfused.
fn then_pool<B: Backend>(y: Tensor<B, 4>, pool: Option<bool>) -> Tensor<B, 4> {
    match pool {
        Some(ceil) => max_pool2d(y, 2, 2, 0, ceil),
        None => y,
    }
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

/// Asserts that two tensors have one shape and agree within `tolerance` (the kernels' tests).
#[cfg(test)]
fn assert_close<const D: usize>(
    ours: Tensor<Flex, D>,
    theirs: Tensor<Flex, D>,
    tolerance: burn::tensor::Tolerance<f32>,
    what: &str,
) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    ours.into_data().assert_approx_eq::<f32>(&theirs.into_data(), tolerance);
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
    wrap_rank(p)
}

/// `p`, which the caller knows to be `B`'s float primitive, as a tensor of rank `D`.
fn wrap_rank<B: Backend, P: 'static, const D: usize>(p: P) -> Tensor<B, D> {
    let p = cast::<P, B::FloatTensorPrimitive>(p).unwrap_or_else(|_| unreachable!("P is B's float tensor"));
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The sizes of one convolution. `cin` and `cout` count all channels; each of the `groups`
/// groups convolves `cin / groups` of them into `cout / groups`.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    groups: usize,
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
            groups: o.groups,
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
    /// Whether each group reads one input channel: a depthwise convolution, computed tap by
    /// tap ([`depthwise`]) rather than unfolded.
    fn depthwise(&self) -> bool {
        self.groups > 1 && self.cin_g() == 1
    }
    /// Whether the convolution is 1×1 at stride 1 without padding: its unfolded input is the
    /// input, and its input gradient needs no folding back.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }
    /// Whether the maps are small enough that several items share one product ([`stacked`]):
    /// fewer than [`stacked::BELOW`] output positions, more than one item, not depthwise.
    fn stacks(&self) -> bool {
        !self.depthwise() && self.batch > 1 && (1..stacked::BELOW).contains(&self.n())
    }
    /// Input channels of one group.
    fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    /// Output channels of one group.
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    /// Rows of one group's unfolded input: `Cin/groups·kh·kw`.
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    /// One group's part of an input image: `Cin/groups·H·W`.
    fn group_image(&self) -> usize {
        self.cin_g() * self.h * self.w
    }
    /// The weights of group `gi` (`[Cout/groups, k]`), its input channels within an image, and
    /// its output rows within an item's `[Cout, n]`: each as (offset, length).
    fn group(&self, gi: usize) -> [(usize, usize); 3] {
        let (k, n, cout_g) = (self.k(), self.n(), self.cout_g());
        [(gi * cout_g * k, cout_g * k), (gi * self.group_image(), self.group_image()), (gi * cout_g * n, cout_g * n)]
    }
    /// Output positions per map: `Ho·Wo`.
    fn n(&self) -> usize {
        self.ho * self.wo
    }
    fn image(&self) -> usize {
        self.cin * self.h * self.w
    }
    /// Whether a 2x2 stride-2 max pool (`ceil` as PyTorch's) of the output has only whole
    /// windows, `⌊Ho/2⌋ × ⌊Wo/2⌋` of them: what the fused pooling computes.
    fn pools(&self, ceil: bool) -> bool {
        self.ho >= 2 && self.wo >= 2 && !(ceil && (self.ho % 2 == 1 || self.wo % 2 == 1))
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

/// One group's part of an image unfolded (`[k, n]`): into `col`, or for a pointwise
/// convolution the part itself, which already is its unfolding.
fn unfolded<'a>(g: &Geometry, part: &'a [f32], col: &'a mut [f32]) -> &'a [f32] {
    if g.pointwise() {
        return part;
    }
    im2col(g, part, col);
    col
}

/// Unfolds one group's part of an image, `[Cin/groups, H, W]`, into `col`,
/// `[Cin/groups·kh·kw, Ho·Wo]` row-major; padding reads 0.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let n = g.n();
    if g.stride[0] == 1 && g.stride[1] == 1 && g.wo == g.w {
        // Output (oh, ow) of kernel tap (i, j) reads input (oh + di, ow + dj): with Wo = W that is
        // one constant shift of the flat plane, so each row of `col` is one copy of the rows
        // that exist, with the columns that fell off either edge zeroed afterwards (a row of
        // short copies and fills spent more time in memmove and memset calls than copying).
        for c in 0..g.cin_g() {
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
                    // Positions q = oh·W + ow read plane[q + di·W + dj]; clip q to the plane,
                    // within the rows kept (a shift past the plane, as a tap of a 5x5 'same'
                    // kernel on a 1x1 map, leaves an empty range, q0 = q1).
                    let shift = di * g.w as isize + dj;
                    let (lo_q, hi_q) = ((oh0 * g.wo) as isize, (oh1 * g.wo) as isize);
                    let q0 = lo_q.max(-shift).min(hi_q) as usize;
                    let q1 = hi_q.min((g.h * g.w) as isize - shift).max(q0 as isize) as usize;
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
    for c in 0..g.cin_g() {
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

/// Adds the columns `col` (`[Cin/groups·kh·kw, Ho·Wo]`) back onto one group's part of an image
/// gradient, `[Cin/groups, H, W]`.
fn col2im(g: &Geometry, col: &[f32], x: &mut [f32]) {
    let n = g.n();
    for c in 0..g.cin_g() {
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
                        // No column of this tap lands on the map (a wide 'same' kernel's tap
                        // on a narrow one).
                        if hi == lo {
                            continue;
                        }
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

/// The forward pass: `[B, Cout, Ho, Wo]`.
fn forward(g: &Geometry, x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>, relu: bool) -> FlexTensor {
    let (xs, ws) = (f32s(x), f32s(w));
    let bias = bias.map(f32s);
    if g.stacks() {
        return tensor(stacked::forward(g, &xs, &ws, bias.as_deref(), relu), [g.batch, g.cout, g.ho, g.wo]);
    }
    let (k, n) = (g.k(), g.n());
    // Each item's output starts as its bias (or 0) and the product adds into it.
    let y = per_item(
        g.batch,
        g.cout * n,
        n,
        |co| bias.as_ref().map_or(0.0, |bias| bias[co]),
        |b, out| {
            if g.depthwise() {
                depthwise::forward(g, &xs[b * g.image()..][..g.image()], &ws, out);
            } else {
                with_scratch(k * n, |col| {
                    let image = &xs[b * g.image()..][..g.image()];
                    for gi in 0..g.groups {
                        let [(wo, wl), (io, il), (oo, ol)] = g.group(gi);
                        let col = unfolded(g, &image[io..][..il], col);
                        matmul_strided(
                            (g.cout_g(), n, k),
                            &mut out[oo..][..ol],
                            true,
                            &ws[wo..][..wl],
                            (k, 1),
                            col,
                            (n, 1),
                        );
                    }
                });
            }
            if relu {
                // PyTorch's relu: negatives to 0, NaN kept.
                out.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
            }
        },
    );
    tensor(y, [g.batch, g.cout, g.ho, g.wo])
}

/// The forward pass with ReLU (if `relu`) and 2x2 stride-2 max pooling fused: the pooled maps
/// `[B, Cout, ⌊Ho/2⌋, ⌊Wo/2⌋]` and, if `remember`, each window's winning corner (0 top left,
/// 1 top right, 2 bottom left, 3 bottom right) in the same order.
fn forward_pooled(
    g: &Geometry,
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    relu: bool,
    remember: bool,
) -> (FlexTensor, Vec<u8>) {
    let (xs, ws) = (f32s(x), f32s(w));
    let bias = bias.map(f32s);
    let (k, n) = (g.k(), g.n());
    let (hp, wp) = (g.ho / 2, g.wo / 2);
    let item = g.cout * hp * wp;
    let mut y = vec![0.0f32; g.batch * item];
    let mut codes = vec![0u8; if remember { g.batch * item } else { 0 }];
    let body = |b: usize, out: &mut [f32], codes: Option<&mut [u8]>| {
        // The output, then 16 values of slack for the pooling kernel to read past its last row.
        with_scratch(k * n + g.cout * n + 16, |scratch| {
            let (col, padded) = scratch.split_at_mut(k * n);
            let full = &mut padded[..g.cout * n];
            for (co, row) in full.chunks_mut(n).enumerate() {
                row.fill(bias.as_ref().map_or(0.0, |bias| bias[co]));
            }
            let image = &xs[b * g.image()..][..g.image()];
            for gi in 0..g.groups {
                let [(wo, wl), (io, il), (oo, ol)] = g.group(gi);
                im2col(g, &image[io..][..il], col);
                matmul_strided((g.cout_g(), n, k), &mut full[oo..][..ol], true, &ws[wo..][..wl], (k, 1), col, (n, 1));
            }
            // Inference keeps no winners: one row's are written and dropped.
            let mut discard = vec![0u8; if codes.is_some() { 0 } else { wp }];
            let mut codes = codes;
            for co in 0..g.cout {
                for oh in 0..hp {
                    let (top, bottom) = (&padded[co * n + 2 * oh * g.wo..], &padded[co * n + (2 * oh + 1) * g.wo..]);
                    let at = (co * hp + oh) * wp;
                    let out = &mut out[at..][..wp];
                    match codes.as_deref_mut() {
                        Some(codes) => pool_row_codes(top, bottom, relu, out, &mut codes[at..][..wp]),
                        None => pool_row_codes(top, bottom, relu, out, &mut discard),
                    }
                }
            }
        });
    };
    if remember {
        y.par_chunks_mut(item.max(1))
            .zip(codes.par_chunks_mut(item.max(1)))
            .enumerate()
            .for_each(|(b, (out, codes))| body(b, out, Some(codes)));
    } else {
        y.par_chunks_mut(item.max(1)).enumerate().for_each(|(b, out)| body(b, out, None));
    }
    (tensor(y, [g.batch, g.cout, hp, wp]), codes)
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

/// Chunks of the batch, one per thread, for gradients summed over the batch.
fn batch_chunks(batch: usize) -> Vec<std::ops::Range<usize>> {
    let parts = rayon::current_num_threads().clamp(1, batch.max(1));
    (0..parts).map(|p| p * batch / parts..(p + 1) * batch / parts).collect()
}

/// Gradients of the input, weight and bias from the output's gradient `dy` (already through
/// the ReLU's mask when it was fused).
fn backward(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32], want: [bool; 3]) -> ConvGradients {
    if g.stacks() {
        return stacked::backward(g, x, w, dy, want);
    }
    let (k, n) = (g.k(), g.n());
    let dx = want[0].then(|| {
        per_item(
            g.batch,
            g.image(),
            g.image(),
            |_| 0.0,
            |b, dxb| {
                if g.depthwise() {
                    return depthwise::input_gradient(g, w, &dy[b * g.cout * n..][..g.cout * n], dxb);
                }
                with_scratch(k * n, |dcol| {
                    let dyb = &dy[b * g.cout * n..][..g.cout * n];
                    for gi in 0..g.groups {
                        let [(wo, wl), (io, il), (oo, ol)] = g.group(gi);
                        // dcol = Wᵀ (k × Cout/groups) · dY_b (Cout/groups × n), per group; a
                        // pointwise convolution's is its input gradient as it stands.
                        let pointwise = g.pointwise();
                        let target = if pointwise { &mut dxb[io..][..il] } else { &mut *dcol };
                        matmul_strided(
                            (k, n, g.cout_g()),
                            target,
                            false,
                            &w[wo..][..wl],
                            (1, k),
                            &dyb[oo..][..ol],
                            (n, 1),
                        );
                        if !pointwise {
                            col2im(g, dcol, &mut dxb[io..][..il]);
                        }
                    }
                });
            },
        )
    });
    let dw = want[1].then(|| {
        if g.depthwise() {
            return depthwise::weight_gradient(g, x, dy);
        }
        let partials: Vec<Vec<f32>> = batch_chunks(g.batch)
            .into_par_iter()
            .map(|range| {
                let mut dw = vec![0.0f32; g.cout * k];
                with_scratch(k * n, |col| {
                    for (i, b) in range.enumerate() {
                        let (image, dyb) = (&x[b * g.image()..][..g.image()], &dy[b * g.cout * n..][..g.cout * n]);
                        for gi in 0..g.groups {
                            let [(wo, wl), (io, il), (oo, ol)] = g.group(gi);
                            let col = unfolded(g, &image[io..][..il], col);
                            // dW += dY_b (Cout/groups × n) · col_bᵀ (n × k), per group
                            let dw = &mut dw[wo..][..wl];
                            matmul_strided((g.cout_g(), k, n), dw, i > 0, &dyb[oo..][..ol], (n, 1), col, (1, n));
                        }
                    }
                });
                dw
            })
            .collect();
        sum(partials)
    });
    (dx, dw, want[2].then(|| bias_gradient(g, dy)))
}

/// `db = Σ_items Σ_positions dY`, per output channel.
fn bias_gradient(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let n = g.n();
    let mut db = vec![0.0f32; g.cout];
    for item in dy.chunks(g.cout * n) {
        for (d, row) in db.iter_mut().zip(item.chunks(n)) {
            *d += row.iter().sum::<f32>();
        }
    }
    db
}

/// Gradients of the input, weight and bias of a convolution with fused pooling, from the pooled
/// maps' gradient `dp`, the winners `codes` and, when ReLU was fused, the pooled maps (`relu`:
/// their values that are not above 0 passed no gradient). Each thread takes a run of batch items
/// and rebuilds each item's output gradient in cache: zero but at each window's winner.
fn backward_pooled(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dp: &[f32],
    relu: Option<&[f32]>,
    codes: &[u8],
    want: [bool; 3],
) -> ConvGradients {
    let (k, n) = (g.k(), g.n());
    let (hp, wp) = (g.ho / 2, g.wo / 2);
    let chunks = batch_chunks(g.batch);
    let mut dx = vec![0.0f32; if want[0] { g.batch * g.image() } else { 0 }];
    let mut parts: Vec<&mut [f32]> = Vec::with_capacity(chunks.len());
    let mut rest = dx.as_mut_slice();
    for range in &chunks {
        let (part, tail) = rest.split_at_mut(if want[0] { range.len() * g.image() } else { 0 });
        parts.push(part);
        rest = tail;
    }
    let partials: Vec<(Vec<f32>, Vec<f32>)> = chunks
        .into_par_iter()
        .zip(parts)
        .map(|(range, dx)| {
            let mut dw = vec![0.0f32; if want[1] { g.cout * k } else { 0 }];
            let mut db = vec![0.0f32; g.cout];
            with_scratch(k * n + g.cout * n, |scratch| {
                let (col, dy) = scratch.split_at_mut(k * n);
                for (i, b) in range.enumerate() {
                    dy.fill(0.0);
                    for (co, (plane, db)) in dy.chunks_mut(n).zip(db.iter_mut()).enumerate() {
                        let at = (b * g.cout + co) * hp * wp;
                        let (grad, code) = (&dp[at..][..hp * wp], &codes[at..][..hp * wp]);
                        let mut sum = 0.0f32;
                        for oh in 0..hp {
                            for ow in 0..wp {
                                let j = oh * wp + ow;
                                // A select: about half the windows of a ReLU layer are 0.
                                let v = match relu {
                                    Some(pooled) => select(pooled[at + j] > 0.0, grad[j], 0.0),
                                    None => grad[j],
                                };
                                let c = code[j] as usize;
                                plane[(2 * oh + (c >> 1)) * g.wo + 2 * ow + (c & 1)] = v;
                                sum += v;
                            }
                        }
                        *db += sum;
                    }
                    let image = &x[b * g.image()..][..g.image()];
                    for gi in 0..g.groups {
                        let [(wo, wl), (io, il), (oo, ol)] = g.group(gi);
                        if want[1] {
                            im2col(g, &image[io..][..il], col);
                            // dW += dY_b (Cout/groups × n) · col_bᵀ (n × k), per group
                            matmul_strided(
                                (g.cout_g(), k, n),
                                &mut dw[wo..][..wl],
                                true,
                                &dy[oo..][..ol],
                                (n, 1),
                                col,
                                (1, n),
                            );
                        }
                        if want[0] {
                            // dcol = Wᵀ (k × Cout/groups) · dY_b (Cout/groups × n), added back onto the image.
                            matmul_strided(
                                (k, n, g.cout_g()),
                                col,
                                false,
                                &w[wo..][..wl],
                                (1, k),
                                &dy[oo..][..ol],
                                (n, 1),
                            );
                            col2im(g, col, &mut dx[i * g.image()..][..g.image()][io..][..il]);
                        }
                    }
                }
            });
            (dw, db)
        })
        .collect();
    let (dws, dbs): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    (want[0].then_some(dx), want[1].then(|| sum(dws)), want[2].then(|| sum(dbs)))
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
        let gradients = backward(g, &f32s(&s.x), &f32s(&s.w), &dy, want);
        register(grads, &ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id)), g, gradients);
    }
}

/// A convolution's gradients of input, weight and bias, for the parents that want them.
type ConvGradients = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// Registers `dx`, `dw` and `db` for the input, weight and (when there is one) bias among
/// `parents`.
fn register(grads: &mut Gradients, parents: &[Option<NodeId>], g: &Geometry, (dx, dw, db): ConvGradients) {
    let shapes = [vec![g.batch, g.cin, g.h, g.w], vec![g.cout, g.cin_g(), g.kh, g.kw], vec![g.cout]];
    for ((parent, values), shape) in parents.iter().zip([dx, dw, db]).zip(shapes) {
        if let (Some(id), Some(values)) = (parent, values) {
            grads.register::<Flex>(*id, FlexTensor::from_data(TensorData::new(values, shape)));
        }
    }
}

fn autodiff_forward(geometry: Geometry, x: AdTensor, w: AdTensor, bias: Option<AdTensor>, relu: bool) -> AdTensor {
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

/// A convolution with fused pooling in the autodiff graph. `N` is 2 without a bias, 3 with one.
#[derive(Debug)]
struct ConvPoolOp<const N: usize>;

#[derive(Clone, Debug)]
struct ConvPoolState {
    geometry: Geometry,
    x: FlexTensor,
    w: FlexTensor,
    /// The pooled output, kept when ReLU was fused: where it is not above 0 no gradient passes.
    pooled: Option<FlexTensor>,
    codes: std::sync::Arc<Vec<u8>>,
}

impl<const N: usize> Backward<Flex, N> for ConvPoolOp<N> {
    type State = ConvPoolState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let dp = grads.consume::<Flex>(&ops.node);
        let want = [0, 1, 2].map(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let g = &s.geometry;
        let pooled = s.pooled.as_ref().map(f32s);
        let gradients = backward_pooled(g, &f32s(&s.x), &f32s(&s.w), &f32s(&dp), pooled.as_deref(), &s.codes, want);
        register(grads, &ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id)), g, gradients);
    }
}

fn autodiff_forward_pooled(
    geometry: Geometry,
    x: AdTensor,
    w: AdTensor,
    bias: Option<AdTensor>,
    relu: bool,
) -> AdTensor {
    let run = |remember: bool| {
        forward_pooled(&geometry, &x.primitive, &w.primitive, bias.as_ref().map(|b| &b.primitive), relu, remember)
    };
    let state = |y: &FlexTensor, codes: Vec<u8>| ConvPoolState {
        geometry,
        x: x.primitive.clone(),
        w: w.primitive.clone(),
        pooled: relu.then(|| y.clone()),
        codes: std::sync::Arc::new(codes),
    };
    match &bias {
        Some(b) => {
            match ConvPoolOp::<3>
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (y, codes) = run(true);
                    prep.finish(state(&y, codes), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(run(false).0),
            }
        }
        None => {
            match ConvPoolOp::<2>
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (y, codes) = run(true);
                    prep.finish(state(&y, codes), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(run(false).0),
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
    pool_row(top, bottom, false, out, winners, |ow, corner| i + 2 * ow as u32 + (corner & 1) + (corner >> 1) * w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_row_2x2_avx2(top: &[f32], bottom: &[f32], i: u32, w: u32, out: &mut [f32], winners: &mut [u32]) {
    use std::arch::x86_64::*;
    let whole = out.len() / 8 * 8;
    let (top, bottom) = (&top[..2 * out.len()], &bottom[..2 * out.len()]);
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    for ow in (0..whole).step_by(8) {
        // SAFETY: windows ow..ow + 8 read 16 values of each row, within the slices cut above.
        let (best, corner) = unsafe { pool8(top.as_ptr().add(2 * ow), bottom.as_ptr().add(2 * ow), false) };
        // The offset of corner c of window ow: i + 2·ow + (c & 1) + (c >> 1)·w.
        let base = _mm256_add_epi32(_mm256_set1_epi32((i + 2 * ow as u32) as i32), lanes);
        let col = _mm256_and_si256(corner, _mm256_set1_epi32(1));
        let row = _mm256_mullo_epi32(_mm256_srli_epi32(corner, 1), _mm256_set1_epi32(w as i32));
        let at = _mm256_add_epi32(base, _mm256_add_epi32(col, row));
        // SAFETY: ow + 8 <= out.len() == winners.len() (checked by the caller's slicing).
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr().add(ow), best);
            _mm256_storeu_si256(winners[ow..ow + 8].as_mut_ptr().cast(), at);
        }
    }
    pool_row(&top[2 * whole..], &bottom[2 * whole..], false, &mut out[whole..], &mut winners[whole..], |ow, c| {
        i + 2 * (whole + ow) as u32 + (c & 1) + (c >> 1) * w
    });
}

/// Eight 2x2 windows from 16 values of a top and a bottom row: each window's maximum (through
/// ReLU if `relu`) and its winning corner, exactly as [`pool_row`] picks them.
///
/// # Safety
/// `top` and `bottom` must each point at 16 readable floats; the CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pool8(
    top: *const f32,
    bottom: *const f32,
    relu: bool,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // Left (even) and right (odd) values of eight windows, in window order: shuffle within the
    // 128-bit halves, then put the 64-bit pairs in order.
    let split = |row: *const f32| {
        // SAFETY: the caller's promise.
        let (a, b) = unsafe { (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))) };
        let even = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
        let odd = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
        (
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(even)),
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(odd)),
        )
    };
    let ((tl, tr), (bl, br)) = (split(top), split(bottom));
    let (mut best, mut corner) = (tl, _mm256_setzero_ps());
    for (v, c) in [(tr, 1.0f32), (bl, 2.0), (br, 3.0)] {
        // Strictly larger, or a NaN where the best so far is a number.
        let nan_beats = _mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v), _mm256_cmp_ps::<_CMP_ORD_Q>(best, best));
        let better = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, best), nan_beats);
        best = _mm256_blendv_ps(best, v, better);
        corner = _mm256_blendv_ps(corner, _mm256_set1_ps(c), better);
    }
    if relu {
        // Negatives to 0; a NaN compares false and stays.
        best = _mm256_blendv_ps(best, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(best, _mm256_setzero_ps()));
    }
    (best, _mm256_cvttps_epi32(corner))
}

/// One row of 2x2 windows at stride 2, through ReLU if `relu`, with each window's winning corner
/// (0..4, row-major within the window). `top` and `bottom` start at the rows' first values and
/// run on past them, at least to `2·⌈out.len()/8⌉·8` values (the vector kernel reads whole runs
/// of eight windows and keeps only the ones that exist).
fn pool_row_codes(top: &[f32], bottom: &[f32], relu: bool, out: &mut [f32], codes: &mut [u8]) {
    let span = 2 * out.len().next_multiple_of(8);
    assert!(top.len() >= span && bottom.len() >= span && codes.len() >= out.len(), "pooling rows too short");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the features the function is compiled for; lengths checked above.
            unsafe { pool_row_codes_avx2(top, bottom, relu, out, codes) };
            return;
        }
    }
    pool_row(top, bottom, relu, out, codes, |_, corner| corner as u8);
}

/// # Safety
/// The CPU must have AVX2, and `top`, `bottom` and `codes` must be as [`pool_row_codes`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_row_codes_avx2(top: &[f32], bottom: &[f32], relu: bool, out: &mut [f32], codes: &mut [u8]) {
    use std::arch::x86_64::*;
    for ow in (0..out.len()).step_by(8) {
        // SAFETY: windows ow..ow + 8 read 16 values of each row, within the promised span.
        let (best, corner) = unsafe { pool8(top.as_ptr().add(2 * ow), bottom.as_ptr().add(2 * ow), relu) };
        // Eight 32-bit corners (0..4) to eight bytes.
        let words = _mm_packus_epi32(_mm256_castsi256_si128(corner), _mm256_extracti128_si256::<1>(corner));
        let bytes = _mm_packus_epi16(words, words);
        let (mut values, mut corners) = ([0.0f32; 8], [0u8; 16]);
        // SAFETY: stores into local arrays of the stored sizes.
        unsafe {
            _mm256_storeu_ps(values.as_mut_ptr(), best);
            _mm_storeu_si128(corners.as_mut_ptr().cast(), bytes);
        }
        let m = (out.len() - ow).min(8);
        out[ow..ow + m].copy_from_slice(&values[..m]);
        codes[ow..ow + m].copy_from_slice(&corners[..m]);
    }
}

/// The windows of one row pair: the maximum by PyTorch's rule (the first strict maximum; a NaN
/// wins), through ReLU if `relu`, and `winner(window, corner)`.
#[inline(always)]
fn pool_row<W: Copy>(
    top: &[f32],
    bottom: &[f32],
    relu: bool,
    out: &mut [f32],
    winners: &mut [W],
    winner: impl Fn(usize, u32) -> W,
) {
    let (top, bottom) = (&top[..2 * out.len()], &bottom[..2 * out.len()]);
    for (ow, (o, at)) in out.iter_mut().zip(winners.iter_mut()).enumerate() {
        let (mut best, mut corner) = (top[2 * ow], 0u32);
        // Selects, not branches: which of four random values wins is unpredictable, and
        // mispredictions made this loop a noticeable share of a small CNN's training step.
        for (v, c) in [(top[2 * ow + 1], 1), (bottom[2 * ow], 2), (bottom[2 * ow + 1], 3)] {
            let better = (v > best) | (v.is_nan() & !best.is_nan());
            best = select(better, v, best);
            corner = select(better, c, corner);
        }
        *o = if relu { select(best < 0.0, 0.0, best) } else { best };
        *at = winner(ow, corner);
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
        // An absolute floor for sums that cancel to near zero (a wrong value is off by O(1)).
        let tolerance = Tolerance::relative(1e-4).set_half_precision_absolute(1e-4).set_single_precision_absolute(1e-5);
        assert_close(ours, theirs, tolerance, what);
    }

    /// Burn's convolution (and a following `relu`), then its 2x2 stride-2 max pool when `pool` is
    /// `Some(ceil)`: what [`conv2d`] with that epilogue must compute.
    fn reference<B: Backend>(
        x: Tensor<B, 4>,
        wt: Tensor<B, 4>,
        b: Option<Tensor<B, 1>>,
        options: ConvOptions<2>,
        epilogue: Epilogue,
    ) -> Tensor<B, 4> {
        let y = burn_conv(x, wt, b, options, epilogue.relu);
        match epilogue.pool {
            Some(ceil) => burn::tensor::module::max_pool2d(y, [2, 2], [2, 2], [0, 0], [1, 1], ceil),
            None => y,
        }
    }

    /// [`conv2d`] against [`reference`]: the output and the gradients of input, weight and bias
    /// (under a random cotangent drawn from `seed`) while training, the output in inference.
    fn check_conv(
        x: Tensor<Ad, 4>,
        wt: Tensor<Ad, 4>,
        b: Option<Tensor<Ad, 1>>,
        options: ConvOptions<2>,
        epilogue: Epilogue,
        seed: u64,
        case: &str,
    ) {
        let ours = conv2d(x.clone(), wt.clone(), b.clone(), options.clone(), epilogue);
        let theirs = reference(x.clone(), wt.clone(), b.clone(), options.clone(), epilogue);
        close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
        let r = random(ours.dims(), seed).detach();
        let (g1, g2) = ((ours * r.clone()).sum().backward(), (theirs * r).sum().backward());
        close(x.grad(&g1).unwrap(), x.grad(&g2).unwrap(), &format!("{case} input gradient"));
        close(wt.grad(&g1).unwrap(), wt.grad(&g2).unwrap(), &format!("{case} weight gradient"));
        if let Some(b) = &b {
            close(b.grad(&g1).unwrap(), b.grad(&g2).unwrap(), &format!("{case} bias gradient"));
        }
        // Inference, on the backend without autodiff.
        let b = b.map(|b| b.inner());
        let inner = conv2d(x.clone().inner(), wt.clone().inner(), b.clone(), options.clone(), epilogue);
        close(inner, reference(x.inner(), wt.inner(), b, options, epilogue), &format!("{case} inference"));
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
            // Larger maps (576 positions), unaligned widths.
            (2, 3, 24, 24, 3, 1, 1, 1, true, true),
            (3, 2, 25, 23, 3, 1, 0, 1, false, false),
            // A 'same' convolution on maps smaller than its padding: 1x1 and 2x2 under 5x5, p=2
            // (a search's child after LeNet-5's pools; the one-copy path's shifts overran).
            (3, 2, 1, 1, 5, 1, 2, 1, true, true),
            (2, 3, 2, 2, 5, 1, 2, 1, false, false),
            (2, 2, 1, 3, 7, 1, 3, 1, true, false),
        ];
        for (n, &(cin, cout, h, w, k, s, p, d, bias, relu)) in cases.iter().enumerate() {
            let seed = 10 * n as u64;
            let x = random([3, cin, h, w], seed).require_grad();
            let wt = random([cout, cin, k, k], seed + 1).require_grad();
            let b = bias.then(|| random([cout], seed + 2).require_grad());
            let options = ConvOptions::new([s, s], [p, p], [d, d], 1);
            check_conv(x, wt, b, options, Epilogue { relu, pool: None }, seed + 3, &format!("case {n}"));
        }
    }

    /// Small maps, several items to a product: stacks of several items and a shorter last one,
    /// grouped and strided convolutions, 1×1 outputs, a map just under the threshold, a fused
    /// ReLU and a pool after (unfused there), each against Burn, gradients included.
    #[test]
    fn small_maps_stacked_match_burn_forward_and_backward() {
        // (batch, cin, cout, groups, h, w, k, stride, padding, bias, relu, pool)
        let cases = [
            (9, 3, 5, 1, 2, 2, 3, 1, 1, true, true, false),
            (7, 4, 6, 2, 4, 4, 3, 1, 1, false, true, true),
            (5, 2, 3, 1, 1, 1, 1, 1, 0, true, false, false),
            (11, 3, 4, 1, 5, 6, 3, 1, 1, true, false, false),
            (6, 6, 4, 2, 8, 8, 3, 2, 1, false, false, true),
            (40, 3, 2, 1, 3, 3, 3, 1, 1, true, true, false),
        ];
        for (n, &(batch, cin, cout, groups, h, w, k, s, p, bias, relu, pool)) in cases.iter().enumerate() {
            let seed = 700 + 10 * n as u64;
            let x = random([batch, cin, h, w], seed).require_grad();
            let wt = random([cout, cin / groups, k, k], seed + 1).require_grad();
            let b = bias.then(|| random([cout], seed + 2).require_grad());
            let options = ConvOptions::new([s, s], [p, p], [1, 1], groups);
            let g = Geometry::new(
                &x.clone().inner().into_primitive().tensor(),
                &wt.clone().inner().into_primitive().tensor(),
                &options,
            );
            assert!(g.stacks(), "case {n} is meant to stack items");
            let epilogue = Epilogue { relu, pool: pool.then_some(false) };
            check_conv(x, wt, b, options, epilogue, seed + 3, &format!("stacked case {n}"));
        }
    }

    #[test]
    fn grouped_and_depthwise_convolutions_match_burn_forward_and_backward() {
        // (cin, cout, groups, h, w, k, stride, padding, dilation, bias, relu, pool)
        let cases = [
            (4, 6, 2, 7, 6, 3, 1, 1, 1, true, false, false),
            (6, 6, 6, 8, 8, 3, 1, 1, 1, false, true, false),  // depthwise
            (4, 8, 4, 9, 7, 3, 2, 1, 1, false, false, false), // depthwise, channel multiplier 2, stride 2
            (6, 3, 3, 6, 6, 1, 1, 0, 1, true, true, false),   // grouped 1x1 (ShuffleNet's)
            (4, 4, 4, 10, 10, 5, 1, 2, 1, true, true, true),  // depthwise 5x5 with fused pooling
            (6, 4, 2, 8, 9, 3, 1, 1, 1, false, true, true),
            (3, 3, 3, 7, 9, 5, 2, 2, 1, true, false, false), // depthwise 5x5 stride 2 (EfficientNet's)
            (5, 10, 5, 6, 6, 3, 1, 0, 1, false, false, false), // depthwise without padding
            (4, 4, 4, 9, 8, 3, 1, 2, 2, true, true, false),  // depthwise dilated
            (2, 2, 2, 3, 4, 3, 3, 2, 1, false, false, false), // padding beyond the input
            (4, 4, 4, 1, 1, 5, 1, 2, 1, true, true, false),  // depthwise 5x5 'same' on 1x1 maps
            (4, 6, 2, 2, 1, 5, 1, 2, 1, false, false, false), // grouped, on maps under the padding
            // Stride 1 through padded planes: wide rows, a multiplier of 3, asymmetric kernels' maps.
            (3, 3, 3, 5, 37, 3, 1, 1, 1, true, false, false),
            (2, 6, 2, 7, 4, 3, 1, 1, 1, false, true, false),
            (3, 3, 3, 2, 2, 7, 1, 3, 1, true, false, false),
            // Stride 2 through phase planes: dilated, odd sizes, maps smaller than the kernel.
            (3, 3, 3, 8, 5, 3, 2, 2, 2, true, true, false),
            (2, 4, 2, 5, 6, 5, 2, 2, 1, false, false, false),
            (2, 2, 2, 2, 3, 3, 2, 1, 1, true, false, false),
        ];
        for (n, &(cin, cout, groups, h, w, k, s, p, d, bias, relu, pool)) in cases.iter().enumerate() {
            let seed = 700 + 10 * n as u64;
            let x = random([3, cin, h, w], seed).require_grad();
            let wt = random([cout, cin / groups, k, k], seed + 1).require_grad();
            let b = bias.then(|| random([cout], seed + 2).require_grad());
            let options = ConvOptions::new([s, s], [p, p], [d, d], groups);
            let epilogue = Epilogue { relu, pool: pool.then_some(false) };
            check_conv(x, wt, b, options, epilogue, seed + 3, &format!("grouped case {n}"));
        }
    }

    #[test]
    fn fused_pooling_matches_burn_convolution_then_pooling() {
        // (cin, cout, h, w, k, stride, padding, bias, relu, ceil)
        let cases = [
            (1, 4, 8, 8, 3, 1, 1, true, true, false),
            (3, 5, 9, 7, 3, 1, 1, false, true, false), // odd maps: the last row and column unread
            (2, 3, 10, 12, 3, 2, 1, true, false, false),
            (2, 6, 6, 10, 5, 1, 2, true, true, true), // ceil with even maps: the same windows
            (3, 2, 7, 7, 3, 1, 1, true, true, true),  // ceil with odd maps: a partial window, unfused
            (2, 3, 4, 40, 1, 1, 0, false, true, false),
        ];
        for (n, &(cin, cout, h, w, k, s, p, bias, relu, ceil)) in cases.iter().enumerate() {
            let seed = 300 + 10 * n as u64;
            let x = random([3, cin, h, w], seed).require_grad();
            let wt = random([cout, cin, k, k], seed + 1).require_grad();
            let b = bias.then(|| random([cout], seed + 2).require_grad());
            let options = ConvOptions::new([s, s], [p, p], [1, 1], 1);
            check_conv(x, wt, b, options, Epilogue { relu, pool: Some(ceil) }, seed + 3, &format!("case {n}"));
        }
    }

    #[test]
    fn fused_pooling_passes_no_gradient_through_a_window_relu_zeroed() {
        // Every value of the second window is negative: ReLU makes it 0 and nothing flows back.
        let values = vec![1.0, 2.0, -1.0, -2.0, 3.0, 0.5, -3.0, -0.5];
        let x = Tensor::<Ad, 4>::from_data(TensorData::new(values, [1, 1, 2, 4]), &Default::default()).require_grad();
        let one = Tensor::<Ad, 4>::from_data(TensorData::new(vec![1.0f32], [1, 1, 1, 1]), &Default::default());
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let y = conv2d(x.clone(), one, None, options, Epilogue { relu: true, pool: Some(false) });
        assert_eq!(y.clone().inner().into_data().to_vec::<f32>().unwrap(), [3.0, 0.0]);
        let g: Vec<f32> = x.grad(&y.sum().backward()).unwrap().into_data().to_vec().unwrap();
        assert_eq!(g, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn an_input_that_needs_no_gradient_still_trains_the_weights() {
        let x = random([2, 1, 6, 6], 1);
        let wt = random([3, 1, 3, 3], 2).require_grad();
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let ours =
            conv2d(x.clone(), wt.clone(), None, options.clone(), Epilogue { relu: true, pool: None }).sum().backward();
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
