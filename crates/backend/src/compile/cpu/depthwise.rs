//! Depthwise convolutions (one input channel per group, any channel multiplier) computed
//! directly, tap by tap: each of the `kh·kw` taps adds a weighted, shifted copy of the input
//! plane to the output plane. Unfolding one channel into `kh·kw` rows and multiplying by a
//! single weight row (what the grouped path does) writes and reads every value `kh·kw` times
//! more and hands `gemm` products one row high.
//!
//! * forward: `y[co] += w[co,i,j] · shift_ij(x[co / m])`;
//! * input gradient: `dx[co / m] += w[co,i,j] · shift_ij⁻¹(dy[co])`;
//! * weight gradient: `dw[co,i,j] = Σ_b ⟨dy[b,co], shift_ij(x[b,co / m])⟩`.
//!
//! With stride 1 along the width each tap's row is one contiguous multiply-add, which the AVX2
//! builds vectorise.

use super::simd::{avx2_twin, dispatch, lanes_dot, wide};
use super::Geometry;
use nasc_runtime::cpu::with_scratch;
use rayon::prelude::*;

/// The output columns `ow` whose input column `ow·s + offset` lies in `0..w`, as a range.
fn columns(offset: isize, s: usize, w: usize, wo: usize) -> std::ops::Range<usize> {
    let s = s as isize;
    let lo = if offset < 0 { (-offset + s - 1) / s } else { 0 };
    let hi = if (w as isize) - offset <= 0 { 0 } else { ((w as isize - 1 - offset) / s + 1).min(wo as isize) };
    (lo.min(wo as isize) as usize)..(hi.max(lo) as usize).min(wo)
}

/// The taps of the kernel with their input offsets: `(tap index, row offset, column offset)`.
fn taps(g: &Geometry) -> impl Iterator<Item = (usize, isize, isize)> + '_ {
    (0..g.kh).flat_map(move |i| {
        (0..g.kw).map(move |j| {
            (i * g.kw + j, (i * g.dil[0]) as isize - g.pad[0] as isize, (j * g.dil[1]) as isize - g.pad[1] as isize)
        })
    })
}

/// Adds the convolution of one item (`x` `[Cin, H, W]`, `w` `[Cout, 1, kh, kw]`) onto `out`
/// (`[Cout, Ho, Wo]`, holding the bias).
#[inline(always)]
fn forward_item<const S1: bool>(g: &Geometry, x: &[f32], w: &[f32], out: &mut [f32]) {
    let (n, m, plane) = (g.n(), g.cout_g(), g.h * g.w);
    let taps_n = g.kh * g.kw;
    for (co, out) in out.chunks_mut(n).enumerate() {
        let src = &x[(co / m) * plane..][..plane];
        for (t, di, dj) in taps(g) {
            let wv = w[co * taps_n + t];
            let cols = columns(dj, g.stride[1], g.w, g.wo);
            for oh in 0..g.ho {
                let ih = (oh * g.stride[0]) as isize + di;
                if ih < 0 || ih >= g.h as isize || cols.is_empty() {
                    continue;
                }
                let row = &src[ih as usize * g.w..][..g.w];
                let dst = &mut out[oh * g.wo..][cols.clone()];
                if S1 {
                    let src = &row[(cols.start as isize + dj) as usize..][..dst.len()];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d += wv * v;
                    }
                } else {
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d += wv * row[(((cols.start + k) * g.stride[1]) as isize + dj) as usize];
                    }
                }
            }
        }
    }
}

/// Adds one item's input gradient (`[Cin, H, W]`) from its output gradient `dy` (`[Cout, Ho, Wo]`).
#[inline(always)]
fn input_gradient_item<const S1: bool>(g: &Geometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (n, m, plane) = (g.n(), g.cout_g(), g.h * g.w);
    let taps_n = g.kh * g.kw;
    for (co, dy) in dy.chunks(n).enumerate() {
        let dst = &mut dx[(co / m) * plane..][..plane];
        for (t, di, dj) in taps(g) {
            let wv = w[co * taps_n + t];
            let cols = columns(dj, g.stride[1], g.w, g.wo);
            for oh in 0..g.ho {
                let ih = (oh * g.stride[0]) as isize + di;
                if ih < 0 || ih >= g.h as isize || cols.is_empty() {
                    continue;
                }
                let row = &mut dst[ih as usize * g.w..][..g.w];
                let grad = &dy[oh * g.wo..][cols.clone()];
                if S1 {
                    let row = &mut row[(cols.start as isize + dj) as usize..][..grad.len()];
                    for (r, &d) in row.iter_mut().zip(grad) {
                        *r += wv * d;
                    }
                } else {
                    for (k, &d) in grad.iter().enumerate() {
                        row[(((cols.start + k) * g.stride[1]) as isize + dj) as usize] += wv * d;
                    }
                }
            }
        }
    }
}

/// Adds one output channel's weight gradient over one item: `dw[t] += ⟨dy, shift_t(x)⟩`, with
/// `x` the input plane and `dy` the output plane.
#[inline(always)]
fn weight_gradient_plane<const S1: bool>(g: &Geometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    for (t, di, dj) in taps(g) {
        let cols = columns(dj, g.stride[1], g.w, g.wo);
        if cols.is_empty() {
            continue;
        }
        let mut lanes = [0.0f32; 8];
        let mut tail = 0.0f32;
        for oh in 0..g.ho {
            let ih = (oh * g.stride[0]) as isize + di;
            if ih < 0 || ih >= g.h as isize {
                continue;
            }
            let row = &x[ih as usize * g.w..][..g.w];
            let grad = &dy[oh * g.wo..][cols.clone()];
            if S1 {
                let src = &row[(cols.start as isize + dj) as usize..][..grad.len()];
                let (gc, sc) = (grad.chunks_exact(8), src.chunks_exact(8));
                for (&a, &b) in gc.remainder().iter().zip(sc.remainder()) {
                    tail += a * b;
                }
                for (a, b) in gc.zip(sc) {
                    for l in 0..8 {
                        lanes[l] += a[l] * b[l];
                    }
                }
            } else {
                for (k, &d) in grad.iter().enumerate() {
                    tail += d * row[(((cols.start + k) * g.stride[1]) as isize + dj) as usize];
                }
            }
        }
        dw[t] += lanes.iter().sum::<f32>() + tail;
    }
}

avx2_twin!(forward_item, wide_forward_item, bool, (g: &Geometry, x: &[f32], w: &[f32], out: &mut [f32]));
avx2_twin!(input_gradient_item, wide_input_gradient_item, bool, (g: &Geometry, w: &[f32], dy: &[f32], dx: &mut [f32]));
avx2_twin!(weight_gradient_plane, wide_weight_gradient_plane, bool, (g: &Geometry, x: &[f32], dy: &[f32], dw: &mut [f32]));

/// Each input plane is copied once into a zero-padded plane, split by stride into `s₀·s₁`
/// phase planes (phase `(a, b)` holds the padded plane's rows `a, a + s₀, …` and columns
/// `b, b + s₁, …`; at stride 1 the one phase is the padded plane), and the output is computed
/// `Wq = ⌈Wp/s₁⌉` wide, the columns past `Wo` thrown away. A tap then reads one phase at one
/// offset: a contiguous multiply-add over `Ho·Wq` values instead of `Ho` rows of `Wo`. On the
/// small maps of MobileNet, EfficientNet and ShuffleNet (7×7, 4×4) a row is shorter than one
/// vector, and the row-by-row loops spent their time on the edges.
struct Padded {
    stride: [usize; 2],
    wq: usize,
    /// One phase plane's length, slack included (rows of zeros the last taps read into).
    phase: usize,
    /// Each tap's offset in the phase planes, in the weights' order.
    offsets: Vec<usize>,
}

impl Padded {
    fn new(g: &Geometry) -> Self {
        let [s0, s1] = g.stride;
        let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
        let (hq, wq) = (hp.div_ceil(s0), wp.div_ceil(s1));
        let (qi, qj) = ((g.kh - 1) * g.dil[0] / s0, (g.kw - 1) * g.dil[1] / s1);
        let phase = hq.max(g.ho + qi) * wq + qj + 1;
        let offsets = (0..g.kh)
            .flat_map(|i| (0..g.kw).map(move |j| (i * g.dil[0], j * g.dil[1])))
            .map(|(r, c)| ((r % s0) * s1 + c % s1) * phase + (r / s0) * wq + c / s1)
            .collect();
        Padded { stride: g.stride, wq, phase, offsets }
    }

    /// Where the padded plane's row `r`, column `c` is kept.
    fn at(&self, r: usize, c: usize) -> usize {
        let [s0, s1] = self.stride;
        ((r % s0) * s1 + c % s1) * self.phase + (r / s0) * self.wq + c / s1
    }

    /// All the phase planes' length.
    fn len(&self) -> usize {
        self.stride[0] * self.stride[1] * self.phase
    }

    /// `Ho·Wq`: the output computed `Wq` wide.
    fn wide(&self, g: &Geometry) -> usize {
        g.ho * self.wq
    }

    /// `plane` (`[H, W]`) into `padded`'s phases, zero around it.
    fn fill(&self, g: &Geometry, plane: &[f32], padded: &mut [f32]) {
        padded.fill(0.0);
        for (ih, row) in plane.chunks_exact(g.w).enumerate() {
            if self.stride == [1, 1] {
                padded[self.at(ih + g.pad[0], g.pad[1])..][..g.w].copy_from_slice(row);
            } else {
                for (iw, &v) in row.iter().enumerate() {
                    padded[self.at(ih + g.pad[0], iw + g.pad[1])] = v;
                }
            }
        }
    }

    /// `dst` (`[H, W]`) plus what `padded`'s phases hold for it.
    fn add_back(&self, g: &Geometry, padded: &[f32], dst: &mut [f32]) {
        for (ih, row) in dst.chunks_exact_mut(g.w).enumerate() {
            if self.stride == [1, 1] {
                let src = &padded[self.at(ih + g.pad[0], g.pad[1])..][..g.w];
                row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                for (iw, d) in row.iter_mut().enumerate() {
                    *d += padded[self.at(ih + g.pad[0], iw + g.pad[1])];
                }
            }
        }
    }

    /// `plane` (`[Ho, Wo]`) `Wq` wide into `wide`, zero in the columns past `Wo`.
    fn widen(&self, g: &Geometry, plane: &[f32], wide: &mut [f32]) {
        for (row, src) in wide.chunks_exact_mut(self.wq).zip(plane.chunks_exact(g.wo)) {
            row[..g.wo].copy_from_slice(src);
            row[g.wo..].fill(0.0);
        }
    }
}

/// `acc[q] += Σ_t w[t] · src[offsets[t] + q]`.
#[inline(always)]
fn taps_gather<const K: bool>(acc: &mut [f32], src: &[f32], w: &[f32], offsets: &[usize]) {
    let len = acc.len();
    for (&wv, &off) in w.iter().zip(offsets) {
        for (a, &v) in acc.iter_mut().zip(&src[off..][..len]) {
            *a += wv * v;
        }
    }
}

/// `dst[offsets[t] + q] += w[t] · src[q]`.
#[inline(always)]
fn taps_scatter<const K: bool>(dst: &mut [f32], src: &[f32], w: &[f32], offsets: &[usize]) {
    for (&wv, &off) in w.iter().zip(offsets) {
        for (d, &v) in dst[off..][..src.len()].iter_mut().zip(src) {
            *d += wv * v;
        }
    }
}

/// `out[t] += Σ_q src[q] · x[offsets[t] + q]`, in 16 lanes.
#[inline(always)]
fn taps_dot<const K: bool>(out: &mut [f32], src: &[f32], x: &[f32], offsets: &[usize]) {
    for (o, &off) in out.iter_mut().zip(offsets) {
        *o += lanes_dot(src, &x[off..][..src.len()]);
    }
}

avx2_twin!(taps_gather, wide_taps_gather, bool, (acc: &mut [f32], src: &[f32], w: &[f32], offsets: &[usize]));
avx2_twin!(taps_scatter, wide_taps_scatter, bool, (dst: &mut [f32], src: &[f32], w: &[f32], offsets: &[usize]));
avx2_twin!(taps_dot, wide_taps_dot, bool, (out: &mut [f32], src: &[f32], x: &[f32], offsets: &[usize]));

/// Whether the convolution runs through [`Padded`] planes: strides up to 2 (the row-by-row
/// loops stay for wider strides, which neither the zoo nor the search makes).
fn padded_planes(g: &Geometry) -> bool {
    g.stride[0] <= 2 && g.stride[1] <= 2
}

/// [`forward_item`]'s sums for the geometry (through padded planes where [`padded_planes`]).
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], out: &mut [f32]) {
    if padded_planes(g) {
        let p = Padded::new(g);
        let (n, m, plane, taps_n, wide) = (g.n(), g.cout_g(), g.h * g.w, g.kh * g.kw, p.wide(g));
        return with_scratch(p.len() + wide, |scratch| {
            let (padded, acc) = scratch.split_at_mut(p.len());
            for (ci, src) in x.chunks_exact(plane).enumerate() {
                p.fill(g, src, padded);
                for co in ci * m..(ci + 1) * m {
                    acc.fill(0.0);
                    dispatch!(
                        taps_gather,
                        wide_taps_gather::<false>(acc, padded, &w[co * taps_n..][..taps_n], &p.offsets)
                    );
                    for (o, a) in out[co * n..][..n].chunks_exact_mut(g.wo).zip(acc.chunks_exact(p.wq)) {
                        o.iter_mut().zip(a).for_each(|(o, a)| *o += a);
                    }
                }
            }
        });
    }
    if g.stride[1] == 1 {
        dispatch!(forward_item, wide_forward_item::<true>(g, x, w, out))
    } else {
        dispatch!(forward_item, wide_forward_item::<false>(g, x, w, out))
    }
}

/// [`input_gradient_item`]'s sums for the geometry (through padded planes where
/// [`padded_planes`]).
pub(super) fn input_gradient(g: &Geometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    if padded_planes(g) {
        let p = Padded::new(g);
        let (n, m, plane, taps_n, wide) = (g.n(), g.cout_g(), g.h * g.w, g.kh * g.kw, p.wide(g));
        return with_scratch(p.len() + wide, |scratch| {
            let (padded, grad) = scratch.split_at_mut(p.len());
            for (ci, dst) in dx.chunks_exact_mut(plane).enumerate() {
                padded.fill(0.0);
                for co in ci * m..(ci + 1) * m {
                    p.widen(g, &dy[co * n..][..n], grad);
                    dispatch!(
                        taps_scatter,
                        wide_taps_scatter::<false>(padded, grad, &w[co * taps_n..][..taps_n], &p.offsets)
                    );
                }
                p.add_back(g, padded, dst);
            }
        });
    }
    if g.stride[1] == 1 {
        dispatch!(input_gradient_item, wide_input_gradient_item::<true>(g, w, dy, dx))
    } else {
        dispatch!(input_gradient_item, wide_input_gradient_item::<false>(g, w, dy, dx))
    }
}

/// The weight gradient `[Cout, 1, kh, kw]` over the whole batch, one output channel per task.
pub(super) fn weight_gradient(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (n, m, plane, taps_n) = (g.n(), g.cout_g(), g.h * g.w, g.kh * g.kw);
    let mut dw = vec![0.0f32; g.cout * taps_n];
    let padded = padded_planes(g).then(|| Padded::new(g));
    dw.par_chunks_mut(taps_n).enumerate().for_each(|(co, dw)| {
        if let Some(p) = &padded {
            let wide = p.wide(g);
            return with_scratch(p.len() + wide, |scratch| {
                let (xp, grad) = scratch.split_at_mut(p.len());
                for b in 0..g.batch {
                    p.fill(g, &x[(b * g.cin + co / m) * plane..][..plane], xp);
                    p.widen(g, &dy[(b * g.cout + co) * n..][..n], grad);
                    dispatch!(taps_dot, wide_taps_dot::<false>(dw, grad, xp, &p.offsets));
                }
            });
        }
        for b in 0..g.batch {
            let xp = &x[(b * g.cin + co / m) * plane..][..plane];
            let dyp = &dy[(b * g.cout + co) * n..][..n];
            if g.stride[1] == 1 {
                dispatch!(weight_gradient_plane, wide_weight_gradient_plane::<true>(g, xp, dyp, dw))
            } else {
                dispatch!(weight_gradient_plane, wide_weight_gradient_plane::<false>(g, xp, dyp, dw))
            }
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::columns;

    #[test]
    fn columns_are_exactly_those_that_read_inside_the_row() {
        for w in 1..9 {
            for s in 1..4 {
                for offset in -4..5isize {
                    for wo in 0..10 {
                        let want: Vec<usize> = (0..wo)
                            .filter(|&ow| {
                                let iw = (ow * s) as isize + offset;
                                iw >= 0 && iw < w as isize
                            })
                            .collect();
                        let got: Vec<usize> = columns(offset, s, w, wo).collect();
                        assert_eq!(got, want, "w {w} s {s} offset {offset} wo {wo}");
                    }
                }
            }
        }
    }
}
