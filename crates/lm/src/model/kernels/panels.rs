//! f32 products of a few rows (a decoding batch) with a weight repacked once into column panels, and the cache of those panels.
//! It must compute what `x · W` computes (up to float rounding), never read a weight that has since changed, and keep one copy of each weight only.

//! Why: a step of a decoding batch multiplies a handful of rows (one per sequence) by every
//! weight of the model, so it is bound by reading the weights from memory, and 8 rows should
//! cost about what one does. `gemm` packs the weight on every call (a copy of all 540 MB of
//! SmolLM2's f32 weights per step), and reading the `[in, out]` matrix in 8-column strips
//! without packing touches a new cache line half-used per input (tried in session 16: 8 rows
//! slowed down). Here each weight is packed once into panels of one vector register's width
//! of output columns (16 with AVX-512, else 8), `[panels][in][width]`, so a panel is one
//! contiguous stream; the kernel keeps every row's sums
//! of a panel in registers, loads each weight vector once for all rows, and broadcasts the
//! rows' inputs. The packed copies are built on first use and live in a [`PanelCache`] shared
//! by the model's clones.

use burn::backend::flex::FlexTensor;
use nasc_runtime::cpu::SendPtr;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Output columns per panel where the CPU has AVX-512: one of its registers of f32, and each
/// input a multiply-add's broadcast operand.
const WIDE: usize = 16;

/// Output columns per panel otherwise: one AVX2 register of f32.
const NARROW: usize = 8;

/// The panel width the CPU's kernel takes.
fn width() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return WIDE;
        }
    }
    NARROW
}

/// Rows the kernel takes at a time; more go in groups of this many, each streaming the panels
/// again.
pub(crate) const MAX_ROWS: usize = 8;

/// The most rows a product is given to [`Panels::matmul`] for: a decoding step's batch. Up to
/// here streaming the weight once per group of [`MAX_ROWS`] beat `gemm`, which packs it on
/// every call; by 64 rows the two were even (BENCHMARKS.md, session 20).
pub(crate) const CHOSEN_ROWS: usize = 32;

/// A `[k, n]` row-major matrix packed as `ceil(n / nr)` panels of `[k][nr]`, the last one padded
/// with zeros.
#[derive(Debug)]
pub(crate) struct Panels {
    k: usize,
    n: usize,
    nr: usize,
    data: Vec<f32>,
}

impl Panels {
    /// Packed in the width this CPU's kernel takes.
    pub(crate) fn pack(b: &[f32], k: usize, n: usize) -> Panels {
        Panels::pack_with(b, k, n, width())
    }

    /// Packed in panels `nr` columns wide: 16 or 8 take the AVX-512 or AVX2 kernel where the CPU
    /// has it, any width the portable loop.
    pub(crate) fn pack_with(b: &[f32], k: usize, n: usize, nr: usize) -> Panels {
        assert!(b.len() >= k * n && nr > 0, "a [{k}, {n}] matrix");
        let count = n.div_ceil(nr);
        let mut data = vec![0f32; count * k * nr];
        if k > 0 {
            data.par_chunks_mut(k * nr).enumerate().for_each(|(p, panel)| {
                let (c0, width) = (p * nr, nr.min(n - p * nr));
                for (r, out) in panel.chunks_exact_mut(nr).enumerate() {
                    out[..width].copy_from_slice(&b[r * n + c0..][..width]);
                }
            });
        }
        Panels { k, n, nr, data }
    }

    fn count(&self) -> usize {
        self.n.div_ceil(self.nr)
    }

    /// `dst (m×n) = x (m×k) · b`, or `dst += beta · x · b` with `Some(beta)`; all row-major.
    /// Panels go in chunks over rayon's threads; every row of `x` is read against each panel
    /// while it streams past.
    pub(crate) fn matmul(&self, m: usize, x: &[f32], dst: &mut [f32], add: Option<f32>) {
        let (k, n) = (self.k, self.n);
        assert!(x.len() >= m * k && dst.len() >= m * n, "operands of a [{m}, {k}] x [{k}, {n}] product");
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // Empty sums.
            if add.is_none() {
                dst[..m * n].fill(0.0);
            }
            return;
        }
        // Each group of rows interleaved, `[k][rows]`: the kernel's broadcasts of one input
        // position then lie side by side, at fixed offsets from one pointer.
        let interleaved;
        let x = if m == 1 {
            &x[..k]
        } else {
            let mut xi = vec![0f32; m * k];
            for (r0, group) in (0..m).step_by(MAX_ROWS).zip(xi.chunks_mut(MAX_ROWS * k)) {
                let rows = (m - r0).min(MAX_ROWS);
                for (kk, at) in group.chunks_exact_mut(rows).enumerate() {
                    at.iter_mut().enumerate().for_each(|(r, v)| *v = x[(r0 + r) * k + kk]);
                }
            }
            interleaved = xi;
            &interleaved[..]
        };
        let count = self.count();
        let tasks = (rayon::current_num_threads().max(1) * 4).min(count);
        let per_task = count.div_ceil(tasks).next_multiple_of(4);
        let out = SendPtr::new(dst.as_mut_ptr());
        let run = |t: usize| {
            let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(count));
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(MAX_ROWS);
                // SAFETY: `x` holds rows `r0..r0 + rows` of `k` values, interleaved; `dst` holds `m` rows of
                // `n`, and this task writes only the columns of panels `p0..p1`, which no other
                // task writes; `dst` does not alias `x` or the panels.
                unsafe { self.rows(rows, x.as_ptr().add(r0 * k), out.get().add(r0 * n), (p0, p1), add) };
                r0 += rows;
            }
        };
        if per_task >= count {
            run(0);
        } else {
            (0..count.div_ceil(per_task)).into_par_iter().for_each(run);
        }
    }

    /// Rows `x[..rows]` (`rows` ≤ [`MAX_ROWS`], interleaved: `x[kk · rows + r]` is row `r`'s
    /// input `kk`) against panels `p0..p1`.
    ///
    /// # Safety
    /// `x` holds `rows × k` values, `dst` `rows` rows of `n`.
    unsafe fn rows(&self, rows: usize, x: *const f32, dst: *mut f32, (p0, p1): (usize, usize), add: Option<f32>) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.nr == WIDE && std::arch::is_x86_feature_detected!("avx512f") {
                macro_rules! go {
                    ($mr:literal, $np:literal) => {
                        // SAFETY: the CPU has AVX-512F; the caller's bounds.
                        unsafe { avx512::rows::<$mr, $np>(self, x, dst, (p0, p1), add) }
                    };
                }
                // 32 registers: up to 16 sums, each weight vector once, broadcasts folded into
                // the multiply-adds.
                match rows {
                    1 => go!(1, 4),
                    2 => go!(2, 4),
                    3 => go!(3, 4),
                    4 => go!(4, 4),
                    5 => go!(5, 3),
                    6 => go!(6, 2),
                    7 => go!(7, 2),
                    _ => go!(8, 2),
                }
                return;
            }
            if self.nr == NARROW
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                macro_rules! go {
                    ($mr:literal, $np:literal) => {
                        // SAFETY: the CPU has AVX2 and FMA; the caller's bounds.
                        unsafe { avx2::rows::<$mr, $np>(self, x, dst, (p0, p1), add) }
                    };
                }
                // Enough independent sums to cover the multiply-add's latency, and with the
                // weight vectors and a broadcast, no more than the 16 registers.
                match rows {
                    1 => go!(1, 4),
                    2 => go!(2, 4),
                    3 => go!(3, 3),
                    4 => go!(4, 2),
                    5 => go!(5, 2),
                    6 => go!(6, 2),
                    7 => go!(7, 1),
                    _ => go!(8, 1),
                }
                return;
            }
        }
        // SAFETY: the caller's bounds.
        unsafe { self.rows_portable(rows, x, dst, (p0, p1), add) }
    }

    /// # Safety
    /// As [`Panels::rows`].
    unsafe fn rows_portable(
        &self,
        rows: usize,
        x: *const f32,
        dst: *mut f32,
        (p0, p1): (usize, usize),
        add: Option<f32>,
    ) {
        let (k, n, nr) = (self.k, self.n, self.nr);
        // SAFETY: the caller's bounds.
        let x = unsafe { std::slice::from_raw_parts(x, rows * k) };
        let mut acc = vec![0f32; nr];
        for p in p0..p1 {
            let panel = &self.data[p * k * nr..][..k * nr];
            for r in 0..rows {
                acc.fill(0.0);
                for (w, xs) in panel.chunks_exact(nr).zip(x.chunks_exact(rows)) {
                    acc.iter_mut().zip(w).for_each(|(a, &w)| *a += xs[r] * w);
                }
                // SAFETY: the panel's columns that exist lie in row `r` of `dst`.
                unsafe { store(&acc, dst.add(r * n + p * nr), nr.min(n - p * nr), add) };
            }
        }
    }
}

/// Calls `block(p, np)` for panels `p0..p1`, `np` at a time, then one at a time for the rest.
#[inline(always)]
fn in_steps(np: usize, (p0, p1): (usize, usize), mut block: impl FnMut(usize, usize)) {
    let mut p = p0;
    while p + np <= p1 {
        block(p, np);
        p += np;
    }
    for p in p..p1 {
        block(p, 1);
    }
}

/// Writes a panel's `width` sums of one row (`+= beta ·` them with `Some(beta)`).
///
/// # Safety
/// `dst` holds `width` values.
#[inline(always)]
unsafe fn store(acc: &[f32], dst: *mut f32, width: usize, add: Option<f32>) {
    // SAFETY: the caller's bound.
    let out = unsafe { std::slice::from_raw_parts_mut(dst, width) };
    match add {
        None => out.copy_from_slice(&acc[..width]),
        Some(beta) => out.iter_mut().zip(acc).for_each(|(o, a)| *o += beta * a),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{store, Panels, NARROW as NR};
    use std::arch::x86_64::*;

    /// How far ahead of the loads (in f32) the kernel asks for a panel's lines: with one or two
    /// streams per core, the hardware's prefetcher alone left the loads waiting on memory.
    const PREFETCH: usize = 512;

    /// `MR` rows against `NP` panels at a time (then one at a time for the rest).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`Panels::rows`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows<const MR: usize, const NP: usize>(
        w: &Panels,
        x: *const f32,
        dst: *mut f32,
        panels: (usize, usize),
        add: Option<f32>,
    ) {
        super::in_steps(NP, panels, |p, np| {
            // SAFETY: the caller's bounds; `in_steps` keeps `p + np` within them.
            unsafe {
                if np == NP {
                    block::<MR, NP>(w, x, dst, p, add)
                } else {
                    block::<MR, 1>(w, x, dst, p, add)
                }
            }
        });
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const MR: usize, const NP: usize>(
        w: &Panels,
        x: *const f32,
        dst: *mut f32,
        p: usize,
        add: Option<f32>,
    ) {
        let (k, n) = (w.k, w.n);
        let base = w.data.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); NP]; MR];
        // One input position of every row against the NP panels' weights there.
        let step = |acc: &mut [[__m256; NP]; MR], kk: usize| {
            let mut wv = [_mm256_setzero_ps(); NP];
            for (j, v) in wv.iter_mut().enumerate() {
                // SAFETY: panel `p + j` exists (the caller's `p1` bounds it); `kk < k`.
                *v = unsafe { _mm256_loadu_ps(base.add(((p + j) * k + kk) * NR)) };
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                // SAFETY: `x` holds `k` inputs of `MR` rows, interleaved.
                let xv = _mm256_set1_ps(unsafe { *x.add(kk * MR + r) });
                for (s, &v) in sums.iter_mut().zip(&wv) {
                    *s = _mm256_fmadd_ps(xv, v, *s);
                }
            }
        };
        // Two positions a turn: one cache line of each panel, and one hint for it.
        let mut kk = 0;
        while kk + 2 <= k {
            for j in 0..NP {
                // A hint only (it never faults): the line PREFETCH ahead in this panel's stream.
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(((p + j) * k + kk) * NR + PREFETCH) as *const i8);
            }
            step(&mut acc, kk);
            step(&mut acc, kk + 1);
            kk += 2;
        }
        if kk < k {
            step(&mut acc, kk);
        }
        for (r, sums) in acc.iter().enumerate() {
            for (j, s) in sums.iter().enumerate() {
                let mut lanes = [0f32; NR];
                // SAFETY: `lanes` holds NR values.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *s) };
                let c0 = (p + j) * NR;
                // SAFETY: the panel's existing columns lie in row `r` of `dst`.
                unsafe { store(&lanes, dst.add(r * n + c0), NR.min(n - c0), add) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{store, Panels, WIDE as NR};
    use std::arch::x86_64::*;

    /// How far ahead of the loads (in f32) the kernel asks for a panel's lines.
    const PREFETCH: usize = 1024;

    /// `MR` rows against `NP` panels at a time (then one at a time for the rest).
    ///
    /// # Safety
    /// The CPU has AVX-512F; as [`Panels::rows`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows<const MR: usize, const NP: usize>(
        w: &Panels,
        x: *const f32,
        dst: *mut f32,
        panels: (usize, usize),
        add: Option<f32>,
    ) {
        super::in_steps(NP, panels, |p, np| {
            // SAFETY: the caller's bounds; `in_steps` keeps `p + np` within them.
            unsafe {
                if np == NP {
                    block::<MR, NP>(w, x, dst, p, add)
                } else {
                    block::<MR, 1>(w, x, dst, p, add)
                }
            }
        });
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const MR: usize, const NP: usize>(
        w: &Panels,
        x: *const f32,
        dst: *mut f32,
        p: usize,
        add: Option<f32>,
    ) {
        let (k, n) = (w.k, w.n);
        let base = w.data.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        for kk in 0..k {
            let mut wv = [_mm512_setzero_ps(); NP];
            for (j, v) in wv.iter_mut().enumerate() {
                // A hint only (it never faults): the line PREFETCH ahead in this panel's stream
                // (one position of a panel is one cache line).
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(((p + j) * k + kk) * NR + PREFETCH) as *const i8);
                // SAFETY: panel `p + j` exists (the caller's `p1` bounds it); `kk < k`.
                *v = unsafe { _mm512_loadu_ps(base.add(((p + j) * k + kk) * NR)) };
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                // SAFETY: `x` holds `k` inputs of `MR` rows, interleaved.
                let xv = _mm512_set1_ps(unsafe { *x.add(kk * MR + r) });
                for (s, &v) in sums.iter_mut().zip(&wv) {
                    *s = _mm512_fmadd_ps(xv, v, *s);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            for (j, s) in sums.iter().enumerate() {
                let mut lanes = [0f32; NR];
                // SAFETY: `lanes` holds NR values.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *s) };
                let c0 = (p + j) * NR;
                // SAFETY: the panel's existing columns lie in row `r` of `dst`.
                unsafe { store(&lanes, dst.add(r * n + c0), NR.min(n - c0), add) };
            }
        }
    }
}

/// Packed copies of a model's f32 weights, built on first use and shared by the model's clones.
/// An entry holds a clone of the weight's tensor (its buffer, shared, not copied): the buffer
/// cannot be freed and reused for another weight, nor changed in place (Burn writes in place only
/// into buffers nothing else holds), so finding the buffer's address means finding these values.
#[derive(Clone, Default)]
pub struct PanelCache {
    entries: Arc<Mutex<HashMap<BufferKey, Entry>>>,
}

/// A weight's values by their address and length.
type BufferKey = (usize, usize);

/// The weight's tensor (holding its buffer) and its panels.
type Entry = (FlexTensor, Arc<Panels>);

impl std::fmt::Debug for PanelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        write!(f, "PanelCache({n} weights)")
    }
}

impl PanelCache {
    /// The panels of `weight` (`[k, n]`, its values `values`, borrowed from its buffer), packed
    /// now if this buffer has none yet. Entries whose weight only the cache still holds (a
    /// model replaced or dropped it) are let go then.
    pub(crate) fn get(&self, weight: &FlexTensor, values: &[f32], k: usize, n: usize) -> Arc<Panels> {
        let key = (values.as_ptr() as usize, values.len());
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, panels)) = entries.get(&key) {
            if (panels.k, panels.n) == (k, n) {
                return panels.clone();
            }
        }
        entries.retain(|_, (tensor, _)| !tensor.is_unique());
        let panels = Arc::new(Panels::pack(values, k, n));
        entries.insert(key, (weight.clone(), panels.clone()));
        panels
    }

    /// Values packed so far.
    #[cfg(test)]
    pub(crate) fn packed_values(&self) -> usize {
        self.entries.lock().map(|e| e.values().map(|(_, p)| p.data.len()).sum()).unwrap_or(0)
    }
}
