//! Convolutions on small maps, several batch items to one product.
//!
//! Why: the unfolded product of one item is `[Cout, k] · [k, Ho·Wo]`, and on the small maps
//! late in a network (4×4, 2×2, 1×1: AlexNet's and VGG's last layers at 32×32, most of a
//! search's children after two or three poolings of 28×28) `Ho·Wo` is narrower than one of the
//! matrix kernel's column tiles, so most of each product's work is wasted. Here the unfolded
//! inputs of a stack of items sit side by side (`[k, T·Ho·Wo]`), one product covers the stack,
//! and the results are scattered back to each item's `[Cout, Ho·Wo]`. The backward pass stacks
//! the same way: `dcol = Wᵀ · dY_stack` then each item's share folded back onto its image, and
//! `dW += dY_stack · col_stackᵀ`.

use super::{bias_gradient, col2im, im2col, sum, ConvGradients, Geometry};
use nasc_runtime::cpu::{matmul_strided, with_scratch};
use rayon::prelude::*;

/// Columns a stack aims at: a few of the matrix kernel's tiles.
const COLUMNS: usize = 128;
/// Maps of fewer output positions than this are stacked.
pub(super) const BELOW: usize = 32;

/// Items per stack for `g`: about [`COLUMNS`] columns, and at least as many stacks as threads.
fn stack(g: &Geometry) -> usize {
    let threads = rayon::current_num_threads().max(1);
    COLUMNS.div_ceil(g.n().max(1)).min(g.batch.div_ceil(threads)).max(1)
}

/// The unfolded inputs of `items` (consecutive batch items from `first`), group `gi`, side by
/// side in `cols` (`[k, items·n]`); `col` is one item's scratch (`[k, n]`).
fn gather_columns(g: &Geometry, x: &[f32], first: usize, items: usize, gi: usize, col: &mut [f32], cols: &mut [f32]) {
    let (k, n) = (g.k(), g.n());
    let width = items * n;
    let [_, (io, il), _] = g.group(gi);
    for j in 0..items {
        let image = &x[(first + j) * g.image()..][..g.image()];
        im2col(g, &image[io..][..il], col);
        for r in 0..k {
            cols[r * width + j * n..][..n].copy_from_slice(&col[r * n..][..n]);
        }
    }
}

/// Group `gi`'s rows of the output gradient of `items` items from `first`, side by side in
/// `out` (`[Cout/groups, items·n]`).
fn gather_rows(g: &Geometry, dy: &[f32], first: usize, items: usize, gi: usize, out: &mut [f32]) {
    let n = g.n();
    let width = items * n;
    let [_, _, (oo, _)] = g.group(gi);
    for j in 0..items {
        let item = &dy[(first + j) * g.cout * n..][..g.cout * n];
        for co in 0..g.cout_g() {
            out[co * width + j * n..][..n].copy_from_slice(&item[oo + co * n..][..n]);
        }
    }
}

/// The convolution's output `[B, Cout, Ho, Wo]`, with the bias and (if `relu`) ReLU applied.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let (k, n, cout_g) = (g.k(), g.n(), g.cout_g());
    let item = g.cout * n;
    let t = stack(g);
    let mut y: Vec<f32> = Vec::with_capacity(g.batch * item);
    y.spare_capacity_mut()[..g.batch * item].par_chunks_mut((t * item).max(1)).enumerate().for_each(|(s, out)| {
        let items = out.len() / item.max(1);
        let width = items * n;
        with_scratch(k * width + k * n + cout_g * width, |scratch| {
            let (cols, rest) = scratch.split_at_mut(k * width);
            let (col, ys) = rest.split_at_mut(k * n);
            for gi in 0..g.groups {
                let [(wo, wl), _, (oo, _)] = g.group(gi);
                gather_columns(g, x, s * t, items, gi, col, cols);
                for (co, row) in ys.chunks_mut(width.max(1)).enumerate() {
                    row.fill(bias.map_or(0.0, |b| b[gi * cout_g + co]));
                }
                matmul_strided((cout_g, width, k), ys, true, &w[wo..][..wl], (k, 1), cols, (width, 1));
                for j in 0..items {
                    for co in 0..cout_g {
                        let from = &ys[co * width + j * n..][..n];
                        for (o, &v) in out[j * item + oo + co * n..][..n].iter_mut().zip(from) {
                            // PyTorch's relu: negatives to 0, NaN kept.
                            o.write(if relu && v < 0.0 { 0.0 } else { v });
                        }
                    }
                }
            }
        });
    });
    // SAFETY: every stack wrote each of its items' Cout·n values (the groups' rows cover Cout).
    unsafe { y.set_len(g.batch * item) };
    y
}

/// Gradients of the input, weight and bias from the output's gradient `dy` (through the ReLU's
/// mask already when it was fused), as [`super::backward`] gives them.
pub(super) fn backward(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32], want: [bool; 3]) -> ConvGradients {
    let (k, n, cout_g) = (g.k(), g.n(), g.cout_g());
    let t = stack(g);
    let stacks: Vec<(usize, usize)> = (0..g.batch.div_ceil(t)).map(|s| (s * t, t.min(g.batch - s * t))).collect();
    let dx = want[0].then(|| {
        let mut dx = vec![0.0f32; g.batch * g.image()];
        dx.par_chunks_mut((t * g.image()).max(1)).zip(&stacks).for_each(|(dxs, &(first, items))| {
            let width = items * n;
            with_scratch(cout_g * width + k * width + k * n, |scratch| {
                let (dys, rest) = scratch.split_at_mut(cout_g * width);
                let (dcols, dcol) = rest.split_at_mut(k * width);
                for gi in 0..g.groups {
                    let [(wo, wl), (io, il), _] = g.group(gi);
                    gather_rows(g, dy, first, items, gi, dys);
                    // dcol = Wᵀ (k × Cout/groups) · dY_stack (Cout/groups × items·n)
                    matmul_strided((k, width, cout_g), dcols, false, &w[wo..][..wl], (1, k), dys, (width, 1));
                    for j in 0..items {
                        for r in 0..k {
                            dcol[r * n..][..n].copy_from_slice(&dcols[r * width + j * n..][..n]);
                        }
                        col2im(g, dcol, &mut dxs[j * g.image()..][..g.image()][io..][..il]);
                    }
                }
            });
        });
        dx
    });
    let dw = want[1].then(|| {
        let threads = rayon::current_num_threads().clamp(1, stacks.len().max(1));
        let parts: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|p| {
                let mut dw = vec![0.0f32; g.cout * k];
                let mine = &stacks[p * stacks.len() / threads..(p + 1) * stacks.len() / threads];
                for &(first, items) in mine {
                    let width = items * n;
                    with_scratch(k * width + k * n + cout_g * width, |scratch| {
                        let (cols, rest) = scratch.split_at_mut(k * width);
                        let (col, dys) = rest.split_at_mut(k * n);
                        for gi in 0..g.groups {
                            let [(wo, wl), _, _] = g.group(gi);
                            gather_columns(g, x, first, items, gi, col, cols);
                            gather_rows(g, dy, first, items, gi, dys);
                            // dW += dY_stack (Cout/groups × items·n) · col_stackᵀ (items·n × k)
                            matmul_strided(
                                (cout_g, k, width),
                                &mut dw[wo..][..wl],
                                true,
                                dys,
                                (width, 1),
                                cols,
                                (1, width),
                            );
                        }
                    });
                }
                dw
            })
            .collect();
        sum(parts)
    });
    (dx, dw, want[2].then(|| bias_gradient(g, dy)))
}
