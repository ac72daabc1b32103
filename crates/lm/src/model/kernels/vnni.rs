//! Products of 8-bit input rows with a Q8_0, Q4_0 or Q4_1 weight on AVX-512 VNNI or AVX2: how a quantised base decodes, one stream or a batch.
//! It must give what quant.rs's one-row integer dot product gives for each row (same rounding of the input, same block terms), to float summation order.

//! A quantised base's products (one decoding stream, 50 samples decoding together, a
//! prompt's prefill) in 8-bit integers, as llama.cpp multiplies its quantised weights.
//!
//! GGUF stores a weight row by row, blocks of 32 inputs each. Multiplying input rows by it
//! one weight row at a time (`dot_row_int8`) reloads and re-unpacks every block once per input
//! row and sums horizontally per output. Instead, [`Packed`] reorders the weight once, the
//! first time an 8-bit product needs it: 16 output rows side by side, so that one
//! AVX-512 register holds 4 consecutive inputs of each of the 16 (64 bytes), the shape of
//! `vpdpbusd`, which multiplies 64 unsigned by 64 signed bytes and adds each group of four into
//! one of 16 integer lanes. A tile of up to [`ROWS`] input rows × 32 outputs keeps its integer
//! sums for one block and its float sums for the whole product in registers; each block's
//! weights are loaded and unpacked once per tile and serve every input row of it, and each
//! input's four bytes are broadcast once and serve both groups of 16 outputs.
//!
//! Per block `b`, output `j`, input row `i`, with the input rounded as `x ≈ sₓ·qₓ` and the
//! weight `w = d·(q − β) + o`: `y += d·sₓ·(Σ q·qₓ − β·Σqₓ) + o·Σx`, with `q` unsigned as
//! `vpdpbusd` takes it: Q8_0's signed byte plus `β = 128`, Q4_0's nibble with `β = 8` (both
//! with `o = 0`, the bracket exact in integers), Q4_1's nibble with `β = 0` and its stored
//! minimum `o` times the exact `Σx`: the same terms as the one-row product.

use super::quant::Q8Input;
use crate::gguf::{half, GgmlType};

/// Input rows one tile holds (12 integer and 12 float sums of 16 lanes: 24 of 32 registers).
pub(crate) const ROWS: usize = 6;
/// Outputs a packed group holds side by side: one register's 16 integer lanes.
const GROUP: usize = 16;

/// A weight reordered for [`product`]: for each group of 16 outputs and each block of 32
/// inputs, its bytes (8 registers' worth unpacked) and 16 scales and 16 offsets.
#[derive(Clone)]
pub(crate) struct Packed {
    /// Outputs (the weight's rows).
    outputs: usize,
    /// Blocks of 32 along the input.
    blocks: usize,
    /// 4-bit values, two per byte (4 registers per block and group), or whole bytes (8).
    nibbles: bool,
    /// What the unsigned values exceed the type's own by (128 for Q8_0, 8 for Q4_0, 0 for
    /// Q4_1, whose offset is its minimum times the exact `Σx` instead).
    bias: i32,
    /// Group by group, block by block: [`Self::block_bytes`] bytes.
    weights: Vec<u8>,
    /// Group by group, block by block: 16 scales `d`, then 16 offsets `o` (Q4_1's minima, else 0).
    terms: Vec<f32>,
}

impl Packed {
    /// Whether [`Packed::new`] takes `ty`.
    pub(crate) fn takes(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
    }

    /// Whether this CPU runs [`product`]: with AVX-512 VNNI, or with AVX2 (whether products
    /// take it is the caller's [`super::Inputs`]).
    pub(crate) fn available() -> bool {
        has_vnni() || has_avx2()
    }

    /// Reorders `outputs` rows of `row_bytes` bytes each, `data`, of type `ty` (one that
    /// [`Packed::takes`]) with `cols` inputs.
    pub(crate) fn new(ty: GgmlType, outputs: usize, cols: usize, data: &[u8]) -> Self {
        assert!(Self::takes(ty), "{ty} has no 8-bit product");
        let (bb, blocks) = (ty.block_bytes() as usize, cols / 32);
        let row_bytes = blocks * bb;
        assert_eq!(data.len(), outputs * row_bytes, "the weight's bytes");
        let nibbles = ty != GgmlType::Q8_0;
        let groups = outputs.div_ceil(GROUP);
        let block_bytes = block_bytes(nibbles);
        let mut weights = vec![0u8; groups * blocks * block_bytes];
        let mut terms = vec![0f32; groups * blocks * 2 * GROUP];
        // Group by group over rayon's threads (slow on one thread; see BENCHMARKS.md).
        use rayon::prelude::*;
        let group_terms = blocks * 2 * GROUP;
        weights.par_chunks_mut(blocks * block_bytes).zip(terms.par_chunks_mut(group_terms)).enumerate().for_each(
            |(g, (weights, terms))| {
                let mut q = [0u8; 32];
                for (lane, j) in (g * GROUP..outputs.min((g + 1) * GROUP)).enumerate() {
                    for b in 0..blocks {
                        let block = &data[j * row_bytes + b * bb..][..bb];
                        let d = half(block, 0);
                        if ty == GgmlType::Q8_0 {
                            for (q, &w) in q.iter_mut().zip(&block[2..34]) {
                                *q = (i16::from(w as i8) + 128) as u8;
                            }
                        } else {
                            let qs = if ty == GgmlType::Q4_0 { &block[2..18] } else { &block[4..20] };
                            for (t, &w) in qs.iter().enumerate() {
                                (q[t], q[t + 16]) = (w & 0xF, w >> 4);
                            }
                        }
                        let offset = if ty == GgmlType::Q4_1 { half(block, 2) } else { 0.0 };
                        let at = b * block_bytes;
                        // Register s (of 8) holds inputs 4s..4s+4 of every output, lane by lane.
                        for (t, &v) in q.iter().enumerate() {
                            let (s, e) = (t / 4, t % 4);
                            if nibbles {
                                // Registers 0..4 are the low nibbles of four packed ones, 4..8 the high.
                                weights[at + (s % 4) * 64 + lane * 4 + e] |= v << (4 * (s / 4));
                            } else {
                                weights[at + s * 64 + lane * 4 + e] = v;
                            }
                        }
                        terms[b * 2 * GROUP + lane] = d;
                        terms[b * 2 * GROUP + GROUP + lane] = offset;
                    }
                }
            },
        );
        let bias = match ty {
            GgmlType::Q8_0 => 128,
            GgmlType::Q4_0 => 8,
            _ => 0,
        };
        Packed { outputs, blocks, nibbles, bias, weights, terms }
    }

    fn block_bytes(&self) -> usize {
        block_bytes(self.nibbles)
    }

    /// Groups of outputs [`product`] runs over (16 each).
    pub(crate) fn groups(&self) -> usize {
        self.outputs.div_ceil(GROUP)
    }

    /// Bytes the reordered copy takes.
    pub(crate) fn bytes(&self) -> usize {
        self.weights.len() + 4 * self.terms.len()
    }
}

/// Bytes of one block of one group: 16 outputs × 32 inputs, at 4 or 8 bits.
fn block_bytes(nibbles: bool) -> usize {
    if nibbles {
        256
    } else {
        512
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Outputs `[g0·16, g1·16)` (clipped to the weight's) of `y = x Wᵀ` for every row of `x`, `y`
/// with row stride `ldy`. `x` holds whole rows of the weight's inputs, rounded as one: blocks of
/// 32 round alone, so several rows rounded together are each rounded as alone. AVX-512 VNNI's
/// kernel where the CPU has it, else AVX2's: the same integer sums and the same float
/// operations in the same order, so both give the same bits.
///
/// # Safety
/// [`Packed::available`] holds; `g0 < g1 ≤` the weight's groups; `y` holds `(m-1)·ldy +` the
/// weight's outputs values, where `m` is the rows of `x`; no other thread writes these outputs.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn product(w: &Packed, x: &Q8Input, groups: (usize, usize), y: *mut f32, ldy: usize) {
    // SAFETY: the caller's promise, and the CPU has the kernel's features.
    unsafe {
        if has_vnni() {
            product_vnni(w, x, groups, y, ldy)
        } else {
            product_avx2(w, x, groups, y, ldy)
        }
    }
}

/// [`product`] on AVX-512 VNNI: tiles of up to [`ROWS`] rows × two groups.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn product_vnni(w: &Packed, x: &Q8Input, (g0, g1): (usize, usize), y: *mut f32, ldy: usize) {
    let m = x.scales().len() / w.blocks.max(1);
    let tiles = m.div_ceil(ROWS);
    let mut g = g0;
    while g < g1 {
        let pair = (g1 - g).min(2);
        for tile in 0..tiles {
            // Tiles of even size: 50 rows go as 9 tiles of 5 or 6, not 8 of 6 and one of 2.
            let (r0, r1) = (tile * m / tiles, (tile + 1) * m / tiles);
            // SAFETY: rows r0..r1 of x and groups g..g+pair of w exist; y's promise is the caller's.
            unsafe {
                let at = Tile { w, x, r0, g, y, ldy };
                match (r1 - r0, pair) {
                    (1, 2) => tile_at::<1, 2>(at),
                    (2, 2) => tile_at::<2, 2>(at),
                    (3, 2) => tile_at::<3, 2>(at),
                    (4, 2) => tile_at::<4, 2>(at),
                    (5, 2) => tile_at::<5, 2>(at),
                    (_, 2) => tile_at::<6, 2>(at),
                    (1, _) => tile_at::<1, 1>(at),
                    (2, _) => tile_at::<2, 1>(at),
                    (3, _) => tile_at::<3, 1>(at),
                    (4, _) => tile_at::<4, 1>(at),
                    (5, _) => tile_at::<5, 1>(at),
                    _ => tile_at::<6, 1>(at),
                }
            }
        }
        g += pair;
    }
}

#[derive(Clone, Copy)]
struct Tile<'a> {
    w: &'a Packed,
    x: &'a Q8Input,
    /// First input row.
    r0: usize,
    /// First group of outputs.
    g: usize,
    y: *mut f32,
    ldy: usize,
}

/// `R` input rows from `r0` × `C` groups of 16 outputs from `g`, over every block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile_at<const R: usize, const C: usize>(t: Tile<'_>) {
    use std::arch::x86_64::*;
    let (w, x) = (t.w, t.x);
    let (blocks, bytes) = (w.blocks, w.block_bytes());
    let k = blocks * 32;
    let low = _mm512_set1_epi8(0xF);
    let mut sums = [[_mm512_setzero_ps(); C]; R];
    // SAFETY (every load below): block b of groups g..g+C lies in `weights` and `terms`; rows
    // r0..r0+R of the inputs hold k bytes and `blocks` scales and sums each.
    unsafe {
        let (scales, qsums, sums_x) = (x.scales(), x.rounded_sums(), x.sums());
        let xq = x.values().as_ptr().add(t.r0 * k);
        for b in 0..blocks {
            let mut dots = [[_mm512_setzero_si512(); C]; R];
            let base: [*const u8; C] =
                std::array::from_fn(|c| w.weights.as_ptr().add(((t.g + c) * blocks + b) * bytes));
            let step = |s: usize, regs: [__m512i; C], dots: &mut [[__m512i; C]; R]| {
                for (r, dots) in dots.iter_mut().enumerate() {
                    let four = xq.add(r * k + b * 32 + 4 * s).cast::<i32>().read_unaligned();
                    let xv = _mm512_set1_epi32(four);
                    for c in 0..C {
                        dots[c] = _mm512_dpbusd_epi32(dots[c], regs[c], xv);
                    }
                }
            };
            if w.nibbles {
                for s in 0..4 {
                    let packed: [__m512i; C] = std::array::from_fn(|c| _mm512_loadu_si512(base[c].add(64 * s).cast()));
                    step(s, packed.map(|p| _mm512_and_si512(p, low)), &mut dots);
                    step(s + 4, packed.map(|p| _mm512_and_si512(_mm512_srli_epi16(p, 4), low)), &mut dots);
                }
            } else {
                for s in 0..8 {
                    step(s, std::array::from_fn(|c| _mm512_loadu_si512(base[c].add(64 * s).cast())), &mut dots);
                }
            }
            let terms: [*const f32; C] =
                std::array::from_fn(|c| w.terms.as_ptr().add(((t.g + c) * blocks + b) * 2 * GROUP));
            let d: [__m512; C] = terms.map(|p| _mm512_loadu_ps(p));
            for r in 0..R {
                let at = (t.r0 + r) * blocks + b;
                let scale = _mm512_set1_ps(*scales.get_unchecked(at));
                if w.bias != 0 {
                    // Below 2²⁴ in magnitude (32 · 255 · 127 before, 32 · 127 · 127 after), so
                    // the conversion is exact too.
                    let bias = _mm512_set1_epi32(w.bias * *qsums.get_unchecked(at));
                    for c in 0..C {
                        let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(dots[r][c], bias));
                        sums[r][c] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d[c], scale), sums[r][c]);
                    }
                } else {
                    let sum = _mm512_set1_ps(*sums_x.get_unchecked(at));
                    for c in 0..C {
                        let dot = _mm512_cvtepi32_ps(dots[r][c]);
                        let o = _mm512_loadu_ps(terms[c].add(GROUP));
                        sums[r][c] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d[c], scale), sums[r][c]);
                        sums[r][c] = _mm512_fmadd_ps(o, sum, sums[r][c]);
                    }
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            for (c, &v) in sums.iter().enumerate() {
                let j0 = (t.g + c) * GROUP;
                let lanes = w.outputs.saturating_sub(j0).min(GROUP);
                let mask = if lanes == GROUP { u16::MAX } else { (1u16 << lanes) - 1 };
                // SAFETY: only lanes of outputs below the weight's count are written, inside y
                // by the caller's promise.
                _mm512_mask_storeu_ps(t.y.add((t.r0 + r) * t.ldy).wrapping_add(j0), mask, v);
            }
        }
    }
}

/// Input rows one AVX2 tile holds (4 integer and 4 float sums of 8 lanes, of 16 registers).
const ROWS_AVX2: usize = 4;

/// [`product`] on AVX2: each group's two halves of 8 outputs in turn, tiles of up to
/// [`ROWS_AVX2`] rows. `vpdpbusd`'s four products per lane become `maddubs` (pairs, in 16 bits)
/// and `madd` (the two pairs, in 32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(w: &Packed, x: &Q8Input, (g0, g1): (usize, usize), y: *mut f32, ldy: usize) {
    let m = x.scales().len() / w.blocks.max(1);
    let tiles = m.div_ceil(ROWS_AVX2);
    for g in g0..g1 {
        for half in 0..2 {
            if g * GROUP + half * HALF >= w.outputs {
                continue;
            }
            for tile in 0..tiles {
                let (r0, r1) = (tile * m / tiles, (tile + 1) * m / tiles);
                // SAFETY: rows r0..r1 of x and group g of w exist; y's promise is the caller's.
                unsafe {
                    let at = Tile { w, x, r0, g, y, ldy };
                    match r1 - r0 {
                        1 => half_at::<1>(at, half),
                        2 => half_at::<2>(at, half),
                        3 => half_at::<3>(at, half),
                        _ => half_at::<4>(at, half),
                    }
                }
            }
        }
    }
}

/// Outputs one AVX2 register holds: half a group.
const HALF: usize = 8;

/// `R` input rows from `r0` × outputs `8·half..8·half + 8` of group `g`, over every block: the
/// low or high 32 bytes of each of the group's 64-byte registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn half_at<const R: usize>(t: Tile<'_>, half: usize) {
    use std::arch::x86_64::*;
    let (w, x) = (t.w, t.x);
    let (blocks, bytes) = (w.blocks, w.block_bytes());
    let k = blocks * 32;
    let low = _mm256_set1_epi8(0xF);
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    let mut sums = [_mm256_setzero_ps(); R];
    // SAFETY (every load below): block b of group g lies in `weights` and `terms`; rows r0..r0+R
    // of the inputs hold k bytes and `blocks` scales and sums each.
    unsafe {
        let (scales, qsums, sums_x) = (x.scales(), x.rounded_sums(), x.sums());
        let xq = x.values().as_ptr().add(t.r0 * k);
        let four = |r: usize, b: usize, s: usize| {
            _mm256_set1_epi32(xq.add(r * k + b * 32 + 4 * s).cast::<i32>().read_unaligned())
        };
        for b in 0..blocks {
            let mut dots = [_mm256_setzero_si256(); R];
            let base = w.weights.as_ptr().add((t.g * blocks + b) * bytes + 32 * half);
            if w.nibbles {
                // Nibbles (0..16) times inputs (|x| ≤ 127): a pair is at most 2·15·127 = 3810,
                // so a block's 8 pairs per 16-bit lane (30480) add up in 16 bits without
                // saturating, and one `madd` per block and row widens them: half the multiplies.
                let mut pairs = [_mm256_setzero_si256(); R];
                for s in 0..4 {
                    let packed = _mm256_loadu_si256(base.add(64 * s).cast());
                    let (lo, hi) = (_mm256_and_si256(packed, low), _mm256_and_si256(_mm256_srli_epi16(packed, 4), low));
                    for (r, pairs) in pairs.iter_mut().enumerate() {
                        let pl = _mm256_maddubs_epi16(lo, four(r, b, s));
                        let ph = _mm256_maddubs_epi16(hi, four(r, b, s + 4));
                        *pairs = _mm256_add_epi16(*pairs, _mm256_add_epi16(pl, ph));
                    }
                }
                for (dot, &pairs) in dots.iter_mut().zip(&pairs) {
                    *dot = _mm256_madd_epi16(pairs, ones);
                }
            } else {
                // Q8_0 is stored plus 128, whose pairs of products could pass 2¹⁵: the signed
                // weight's magnitude multiplies the input given the weight's sign instead (the
                // same integer sum, with no bias to take off).
                for s in 0..8 {
                    let signed = _mm256_xor_si256(_mm256_loadu_si256(base.add(64 * s).cast()), flip);
                    let magnitude = _mm256_sign_epi8(signed, signed);
                    for (r, dot) in dots.iter_mut().enumerate() {
                        let signs = _mm256_sign_epi8(four(r, b, s), signed);
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signs), ones));
                    }
                }
            }
            let terms = w.terms.as_ptr().add((t.g * blocks + b) * 2 * GROUP + HALF * half);
            let d = _mm256_loadu_ps(terms);
            for (r, (dot, sum)) in dots.iter().zip(sums.iter_mut()).enumerate() {
                let at = (t.r0 + r) * blocks + b;
                let scale = _mm256_set1_ps(*scales.get_unchecked(at));
                let dot = if w.nibbles && w.bias != 0 {
                    _mm256_sub_epi32(*dot, _mm256_set1_epi32(w.bias * *qsums.get_unchecked(at)))
                } else {
                    *dot
                };
                *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, scale), *sum);
                if w.bias == 0 {
                    let o = _mm256_loadu_ps(terms.add(GROUP));
                    *sum = _mm256_fmadd_ps(o, _mm256_set1_ps(*sums_x.get_unchecked(at)), *sum);
                }
            }
        }
        let j0 = t.g * GROUP + HALF * half;
        let lanes = w.outputs.saturating_sub(j0).min(HALF);
        for (r, &v) in sums.iter().enumerate() {
            let out = t.y.add((t.r0 + r) * t.ldy).wrapping_add(j0);
            if lanes == HALF {
                _mm256_storeu_ps(out, v);
            } else {
                // SAFETY: only lanes of outputs below the weight's count are written, inside y by
                // the caller's promise.
                let mut all = [0f32; HALF];
                _mm256_storeu_ps(all.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(all.as_ptr(), out, lanes);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn product(_: &Packed, _: &Q8Input, _: (usize, usize), _: *mut f32, _: usize) {
    unreachable!("the packed product runs only where `Packed::available` holds")
}

/// Random numbers for the kernels' tests (xorshift32 from `seed`).
#[cfg(test)]
pub(crate) fn xorshift(seed: u32) -> impl FnMut() -> u32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

/// `rows` rows of `cols` values of `ty` (Q8_0, Q4_0 or Q4_1) with random values and finite
/// scales (about 0.1-0.5) and minima, for the kernels' tests.
#[cfg(test)]
pub(crate) fn random_blocks(ty: GgmlType, rows: usize, cols: usize, next: &mut impl FnMut() -> u32) -> Vec<u8> {
    let bb = ty.block_bytes() as usize;
    let mut data: Vec<u8> = (0..rows * cols / 32 * bb).map(|_| next() as u8).collect();
    for block in data.chunks_exact_mut(bb) {
        block[..2].copy_from_slice(&(0x3000 + (next() % 0x800) as u16).to_le_bytes());
        if ty == GgmlType::Q4_1 {
            block[2..4].copy_from_slice(&(0xB000 + (next() % 0x800) as u16).to_le_bytes());
        }
    }
    data
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    /// Blocks at the extremes of their types (every nibble 15, Q8_0's -128 and 127) times
    /// inputs at ±127 give the exact integer sums: no 16-bit pair or partial sum saturates.
    #[test]
    fn extreme_blocks_sum_exactly_without_saturating() {
        if !Packed::available() {
            eprintln!("skipped: this CPU runs no packed kernel (neither AVX-512 VNNI nor AVX2)");
            return;
        }
        let (outputs, cols, m) = (24, 3 * 32, 5);
        // Rows of inputs: all 127, all -127, alternating, and two mixes; each block's maximum
        // is 127, so its scale is 1 and the rounded values are the inputs themselves.
        let x: Vec<f32> = (0..m * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                match r {
                    0 => 127.0,
                    1 => -127.0,
                    2 => {
                        if c % 2 == 0 {
                            127.0
                        } else {
                            -127.0
                        }
                    }
                    _ => {
                        if (c * (r + 3)) % 5 < 2 {
                            -127.0
                        } else {
                            127.0
                        }
                    }
                }
            })
            .collect();
        let inputs = Q8Input::new(&x);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let bb = ty.block_bytes() as usize;
            let blocks = cols / 32;
            let mut data = vec![0u8; outputs * blocks * bb];
            let mut want = vec![0f64; m * outputs];
            for j in 0..outputs {
                for b in 0..blocks {
                    let block = &mut data[(j * blocks + b) * bb..][..bb];
                    block[..2].copy_from_slice(&0x3C00u16.to_le_bytes()); // d = 1
                                                                          // The weight's integer values, by output: all at the top, all at the
                                                                          // bottom, or mixed.
                    let q: Vec<i32> = (0..32)
                        .map(|t| match (ty, j % 3) {
                            (GgmlType::Q8_0, 0) => 127,
                            (GgmlType::Q8_0, 1) => -128,
                            (GgmlType::Q8_0, _) => {
                                if t % 3 == 0 {
                                    127
                                } else {
                                    -128
                                }
                            }
                            (_, 0) => 15,
                            (_, 1) => 0,
                            _ => {
                                if t % 2 == 0 {
                                    15
                                } else {
                                    0
                                }
                            }
                        })
                        .collect();
                    if ty == GgmlType::Q8_0 {
                        for (w, &q) in block[2..34].iter_mut().zip(&q) {
                            *w = q as i8 as u8;
                        }
                    } else {
                        let at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                        for t in 0..16 {
                            block[at + t] = (q[t] | (q[t + 16] << 4)) as u8;
                        }
                        if ty == GgmlType::Q4_1 {
                            block[2..4].copy_from_slice(&0xBC00u16.to_le_bytes());
                            // minimum -1
                        }
                    }
                    for (r, want) in want.chunks_exact_mut(outputs).enumerate() {
                        let xs = &x[r * cols + b * 32..][..32];
                        let dot: f64 = q.iter().zip(xs).map(|(&q, &x)| f64::from(q) * f64::from(x)).sum();
                        want[j] += match ty {
                            GgmlType::Q4_0 => dot - 8.0 * xs.iter().map(|&x| f64::from(x)).sum::<f64>(),
                            GgmlType::Q4_1 => dot - xs.iter().map(|&x| f64::from(x)).sum::<f64>(),
                            _ => dot,
                        };
                    }
                }
            }
            let packed = Packed::new(ty, outputs, cols, &data);
            let mut got = vec![f32::NAN; m * outputs];
            // SAFETY: `available` held; y holds m rows of `outputs`.
            unsafe { product(&packed, &inputs, (0, packed.groups()), got.as_mut_ptr(), outputs) };
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(f64::from(g), w, "{ty}: row {}, output {}", i / outputs, i % outputs);
            }
        }
    }

    /// The two kernels' products are the same bits. It can only run where the CPU has both
    /// (AVX-512 VNNI machines); elsewhere the AVX2 kernel is held to the one-row integer dot
    /// products by `kernel_tests`.
    #[test]
    fn the_avx2_kernel_gives_the_vnni_kernels_bits() {
        if !(has_vnni() && has_avx2()) {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI, so there is nothing to compare");
            return;
        }
        let (outputs, cols, m) = (40, 4 * 32, 7);
        let mut next = xorshift(7);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let data = random_blocks(ty, outputs, cols, &mut next);
            let packed = Packed::new(ty, outputs, cols, &data);
            let x: Vec<f32> = (0..m * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let inputs = Q8Input::new(&x);
            let (mut a, mut b) = (vec![0f32; m * outputs], vec![1f32; m * outputs]);
            // SAFETY: both kernels' features were checked; y holds m rows of `outputs`.
            unsafe {
                product_vnni(&packed, &inputs, (0, packed.groups()), a.as_mut_ptr(), outputs);
                product_avx2(&packed, &inputs, (0, packed.groups()), b.as_mut_ptr(), outputs);
            }
            assert_eq!(a, b, "{ty}");
        }
    }
}
