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

use super::simd::{avx2_twin, dispatch, wide};
use super::Geometry;
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

/// [`forward_item`] for the geometry's stride.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], out: &mut [f32]) {
    if g.stride[1] == 1 {
        dispatch!(forward_item, wide_forward_item::<true>(g, x, w, out))
    } else {
        dispatch!(forward_item, wide_forward_item::<false>(g, x, w, out))
    }
}

/// [`input_gradient_item`] for the geometry's stride.
pub(super) fn input_gradient(g: &Geometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
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
    dw.par_chunks_mut(taps_n).enumerate().for_each(|(co, dw)| {
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
