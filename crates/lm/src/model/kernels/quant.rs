//! A frozen linear weight kept in its GGUF block-quantised form (QLoRA's base), and the kernels that multiply by it.
//! It must dequantise exactly as gguf::dequantize does (the f32 path is the reference), and never hold an f32 copy of the matrix.

//! [`QuantMatrix`]: a PyTorch-layout `[out, in]` weight whose rows are GGUF
//! blocks along `in`. Products dequantise on the fly or take 8-bit inputs
//! (as the caller's [`Inputs`] says). In 8 bits, products take `vnni.rs`'s kernel
//! over a reordered copy of the weight where the CPU has AVX-512 VNNI or AVX2,
//! and elsewhere an integer dot product per block, input row and weight row.
//! Dequantising, one row takes a fused dot product per block; more rows
//! dequantise a tile of the weight into a per-thread scratch buffer and run
//! `gemm` on it, so the f32 matrix never exists whole.

use super::vnni::{self, Packed};
use super::Inputs;
use crate::gguf::{block_decoder, half, GgmlType};
use nasc_runtime::cpu::{with_scratch, SendPtr};
use rayon::prelude::*;

/// Output rows dequantised at a time for a product of several input rows.
const TILE: usize = 64;

/// A block-quantised `[rows, cols]` matrix (`rows` outputs, `cols` inputs).
#[derive(Clone)]
pub struct QuantMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    decode: fn(&[u8], &mut [f32]),
    data: Vec<u8>,
    /// The weight reordered for [`vnni::product`], made by the first 8-bit product (6 bits per
    /// weight for the 4-bit types, 10 for Q8_0, beside `data`; training never makes it).
    packed: std::sync::OnceLock<Packed>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({} [{}, {}])", self.ty, self.rows, self.cols)
    }
}

/// The types a quantised base keeps as they are; others are dequantised to f32 at load.
pub fn keeps_quantised(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q6_K)
}

impl QuantMatrix {
    /// `data` holds `rows` rows of `cols` values of type `ty`, row after row.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, String> {
        let decode = block_decoder(ty)
            .filter(|_| keeps_quantised(ty))
            .ok_or_else(|| format!("{ty} is not a block-quantised type"))?;
        let (block_len, block_bytes) = (ty.block_len() as usize, ty.block_bytes() as usize);
        if !cols.is_multiple_of(block_len) {
            return Err(format!("rows of {cols} values are not whole {ty} blocks of {block_len}"));
        }
        let row_bytes = cols / block_len * block_bytes;
        if data.len() != rows * row_bytes {
            return Err(format!("{} bytes for [{rows}, {cols}] of {ty}, which needs {}", data.len(), rows * row_bytes));
        }
        Ok(QuantMatrix { ty, rows, cols, row_bytes, decode, data, packed: std::sync::OnceLock::new() })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Outputs.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Inputs.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes the matrix occupies (with its reordered copy, once an 8-bit product made it).
    pub fn bytes(&self) -> usize {
        self.data.len() + self.packed.get().map_or(0, Packed::bytes)
    }

    /// The rows reordered: row `i` of the result is row `order[i]` of `self`.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        QuantMatrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.row_bytes,
            decode: self.decode,
            data,
            packed: std::sync::OnceLock::new(),
        }
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..][..self.row_bytes]
    }

    /// Row `r` dequantised into `out` (`cols` values).
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.takes_int8() && has_avx2() {
                assert_eq!(out.len(), self.cols, "row of the quantised matrix");
                // SAFETY: the CPU has the features the function is compiled for; `out` holds the row.
                unsafe { dequant_row_avx2(self.ty, self.row(r), out) };
                return;
            }
        }
        let (bl, bb) = (self.ty.block_len() as usize, self.ty.block_bytes() as usize);
        for (block, y) in self.row(r).chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
            (self.decode)(block, y);
        }
    }

    /// The whole matrix as f32, `[rows, cols]` row-major (PyTorch's `[out, in]`).
    pub fn to_out_in(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequant_row(r, row);
        }
        out
    }

    /// The whole matrix as f32 in Burn's `[in, out]` layout (for merging).
    pub fn to_in_out(&self) -> Vec<f32> {
        let mut row = vec![0.0; self.cols];
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            self.dequant_row(r, &mut row);
            for (c, &v) in row.iter().enumerate() {
                out[c * self.rows + r] = v;
            }
        }
        out
    }

    /// `y = x Wᵀ` for `m` rows of `x` (`[m, cols]`), `y` `[m, rows]`, overwritten; `inputs`: 8-bit
    /// inputs (for the types that take them) or the exact product.
    pub fn matmul(&self, m: usize, x: &[f32], y: &mut [f32], inputs: Inputs) {
        assert_eq!(x.len(), m * self.cols, "input of the quantised product");
        assert_eq!(y.len(), m * self.rows, "output of the quantised product");
        if let Inputs::Int8 { vnni } = inputs {
            if self.takes_int8() {
                self.matmul_int8(x, y, vnni);
                return;
            }
        }
        if m == 1 {
            let chunk = self.rows.div_ceil(rayon::current_num_threads().max(1) * 4).max(16);
            y.par_chunks_mut(chunk).enumerate().for_each(|(i, ys)| {
                for (j, out) in ys.iter_mut().enumerate() {
                    *out = self.dot_row(i * chunk + j, x);
                }
            });
            return;
        }
        let out = SendPtr::new(y.as_mut_ptr());
        let tiles = self.rows.div_ceil(TILE);
        (0..tiles).into_par_iter().for_each(|t| {
            let r0 = t * TILE;
            let n = TILE.min(self.rows - r0);
            with_scratch(n * self.cols, |w| {
                self.dequant_rows(r0, w);
                // SAFETY: tile t writes only columns r0..r0+n of every row of y, which no
                // other tile touches; the strides stay inside y (m rows of self.rows).
                unsafe {
                    super::cpu::gemm_at(
                        (m, n, self.cols),
                        out.get().add(r0),
                        self.rows,
                        false,
                        1.0,
                        x.as_ptr(),
                        (self.cols, 1),
                        w.as_ptr(),
                        (1, self.cols),
                    );
                }
            });
        });
    }

    /// [`Self::matmul`] with 8-bit inputs: `vnni.rs`'s kernel where chosen (`vnni`) and the CPU
    /// has it, else each
    /// input row's integer dot product with each weight row, the weight row kept in cache while
    /// every input row passes. One row (a lone stream) takes the kernel too: it is faster than
    /// the per-row dot products (16 outputs per register need no horizontal sums; see
    /// BENCHMARKS.md), and a row gets bit for bit the same result alone as in a batch.
    fn matmul_int8(&self, x: &[f32], y: &mut [f32], vnni: bool) {
        if self.cols == 0 {
            y.fill(0.0);
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        if vnni && Packed::available() {
            Self::packed_products(&[self], x, &mut [y]);
            return;
        }
        let out = SendPtr::new(y.as_mut_ptr());
        let inputs: Vec<Q8Input> = x.par_chunks(self.cols).map(Q8Input::new).collect();
        let chunk = self.rows.div_ceil(threads * 4).max(1);
        (0..self.rows.div_ceil(chunk)).into_par_iter().for_each(|t| {
            for r in t * chunk..((t + 1) * chunk).min(self.rows) {
                for (i, xq) in inputs.iter().enumerate() {
                    // SAFETY: tasks write disjoint columns r of y's m rows of self.rows.
                    unsafe { *out.get().add(i * self.rows + r) = self.dot_row_int8(r, xq) };
                }
            }
        });
    }

    /// Products of the same `m` input rows with several weights of as many inputs, `ys[i] = x
    /// Wᵢᵀ`, as [`Self::matmul`] gives each, bit for bit: with 8-bit inputs through the packed
    /// kernel, the input is rounded once and every weight's groups of outputs go to rayon's
    /// threads as one set of tasks, so a decoding step waits on one parallel region for the
    /// query, key and value projections (or the gate and up) instead of one each. Otherwise
    /// each product runs alone.
    pub fn matmul_many(ws: &[&QuantMatrix], m: usize, x: &[f32], ys: &mut [&mut [f32]], inputs: Inputs) {
        assert_eq!(ws.len(), ys.len(), "one output per weight");
        let packed = matches!(inputs, Inputs::Int8 { vnni: true })
            && Packed::available()
            && ws.iter().all(|w| w.takes_int8() && w.cols == ws[0].cols && w.cols > 0);
        if !packed {
            for (w, y) in ws.iter().zip(ys.iter_mut()) {
                w.matmul(m, x, y, inputs);
            }
            return;
        }
        for (w, y) in ws.iter().zip(ys.iter()) {
            assert_eq!(x.len(), m * w.cols, "input of the quantised product");
            assert_eq!(y.len(), m * w.rows, "output of the quantised product");
        }
        Self::packed_products(ws, x, ys);
    }

    /// `ys[i] = x Wᵢᵀ` through the packed kernel (which the CPU has; the weights take 8-bit
    /// inputs and share a nonzero input width; the outputs hold the input's rows): the input
    /// rounded once, each weight's pairs of groups (the kernel's widest tile) split evenly into
    /// tasks, about four per thread in all, every weight's in one parallel region.
    fn packed_products(ws: &[&QuantMatrix], x: &[f32], ys: &mut [&mut [f32]]) {
        let packs: Vec<&Packed> =
            ws.iter().map(|w| w.packed.get_or_init(|| Packed::new(w.ty, w.rows, w.cols, &w.data))).collect();
        let inputs = Q8Input::new(x);
        let outs: Vec<SendPtr> = ys.iter_mut().map(|y| SendPtr::new(y.as_mut_ptr())).collect();
        let budget = rayon::current_num_threads().max(1) * 4;
        let all: usize = packs.iter().map(|p| p.groups().div_ceil(2)).sum();
        let tasks: Vec<(usize, usize, usize)> = packs
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let (groups, pairs) = (p.groups(), p.groups().div_ceil(2));
                let n = (budget * pairs).div_ceil(all).clamp(1, pairs.max(1));
                (0..n).map(move |t| (i, 2 * (t * pairs / n), (2 * ((t + 1) * pairs / n)).min(groups)))
            })
            .collect();
        tasks.into_par_iter().for_each(|(i, g0, g1)| {
            // SAFETY: `available` held (the caller's promise); the tasks of weight i take
            // disjoint groups of its outputs; ys[i] holds the input's rows of its outputs.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                vnni::product(packs[i], &inputs, (g0, g1), outs[i].get(), ws[i].rows)
            };
        });
    }

    /// Rows `r0..` of the matrix, dequantised into `w` (as many rows as it holds).
    fn dequant_rows(&self, r0: usize, w: &mut [f32]) {
        for (i, row) in w.chunks_exact_mut(self.cols).enumerate() {
            self.dequant_row(r0 + i, row);
        }
    }

    /// `dx = dy W` for `m` rows of `dy` (`[m, rows]`), `dx` `[m, cols]`: the gradient of
    /// [`Self::matmul`]'s input.
    pub fn matmul_transposed(&self, m: usize, dy: &[f32]) -> Vec<f32> {
        assert_eq!(dy.len(), m * self.rows, "gradient of the quantised product");
        let tiles = self.rows.div_ceil(TILE);
        let parts = rayon::current_num_threads().clamp(1, tiles);
        let partial: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let mut dx = vec![0.0; m * self.cols];
                for t in (p * tiles / parts)..((p + 1) * tiles / parts) {
                    let r0 = t * TILE;
                    let n = TILE.min(self.rows - r0);
                    with_scratch(n * self.cols, |w| {
                        self.dequant_rows(r0, w);
                        // SAFETY: dx is [m, cols], dy's columns r0..r0+n are read with its row
                        // stride, w is [n, cols]; nothing aliases.
                        unsafe {
                            super::cpu::gemm_at(
                                (m, self.cols, n),
                                dx.as_mut_ptr(),
                                self.cols,
                                true,
                                1.0,
                                dy.as_ptr().add(r0),
                                (self.rows, 1),
                                w.as_ptr(),
                                (self.cols, 1),
                            );
                        }
                    });
                }
                dx
            })
            .collect();
        let mut parts = partial.into_iter();
        let mut dx = parts.next().unwrap_or_else(|| vec![0.0; m * self.cols]);
        for p in parts {
            dx.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        dx
    }

    /// Whether products may take 8-bit inputs ([`Inputs::Int8`]): the types with blocks of
    /// 32 that the integer products know.
    fn takes_int8(&self) -> bool {
        Packed::takes(self.ty)
    }

    /// Row `r` dotted with the 8-bit input `x` (a [`Self::takes_int8`] type).
    fn dot_row_int8(&self, r: usize, x: &Q8Input) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_row_int8_avx2(self.ty, self.row(r), x) };
            }
        }
        dot_row_int8_portable(self.ty, self.row(r), x)
    }

    /// Row `r` of the matrix dotted with `x`.
    fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_row_avx2(self, r, x) };
            }
        }
        dot_row_portable(self, r, x)
    }
}

// ---- one input row in 8 bits: integer dot products, as llama.cpp decodes ----

/// One input row rounded to 8 bits per block of 32 values.
pub struct Q8Input {
    /// The rounded values, `x / scale` to the nearest whole number (halves to even), in -127..=127.
    q: Vec<i8>,
    /// Each block's scale, `max|x| / 127` (0 for a block of zeros).
    scale: Vec<f32>,
    /// Each block's sum of rounded values (Q4_0's offset of 8 is applied through it).
    qsum: Vec<i32>,
    /// Each block's exact sum of `x` (Q4_1's minimum multiplies it, so that term is exact).
    sum: Vec<f32>,
}

impl Q8Input {
    /// `x` rounded (halves to even); its length is a multiple of 32 (every type that takes it
    /// has blocks of 32).
    pub fn new(x: &[f32]) -> Self {
        let blocks = x.len() / 32;
        let mut out = Q8Input {
            q: vec![0; blocks * 32],
            scale: vec![0.0; blocks],
            qsum: vec![0; blocks],
            sum: vec![0.0; blocks],
        };
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512bw() {
                // SAFETY: the CPU has the features the function is compiled for.
                unsafe { out.round_avx512(x) };
                return out;
            }
            if has_avx2() {
                // SAFETY: as above.
                unsafe { out.round_avx2(x) };
                return out;
            }
        }
        out.round_portable(x);
        out
    }

    /// [`Self::new`]'s rounding with AVX2, a block (four registers) at a time: value by value
    /// (a library call per value to round halves to even) it was a seventh of the time of 50
    /// rows decoding together.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round_avx2(&mut self, x: &[f32]) {
        use std::arch::x86_64::*;
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let sign = _mm256_set1_ps(-0.0);
        // packs_epi32 then packs_epi16 leave each register's bytes in 4-byte pieces ordered by
        // 128-bit lane; this puts them back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, xs) in x.chunks_exact(32).enumerate() {
            // SAFETY: the block's 32 inputs and 32 outputs (`q` holds one per input).
            unsafe {
                let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
                let a = v.map(|v| _mm256_andnot_ps(sign, v));
                let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
                let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
                let scale = max / 127.0;
                let inv = _mm256_set1_ps(inverse(scale));
                // Converting rounds halves to even (the default rounding mode), as `new` does.
                let q =
                    v.map(|v| _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, inv)), lo), hi));
                let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
                let bytes = _mm256_permutevar8x32_epi32(bytes, order);
                _mm256_storeu_si256(self.q.as_mut_ptr().add(b * 32).cast(), bytes);
                let qs = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let qs = _mm_add_epi32(_mm256_castsi256_si128(qs), _mm256_extracti128_si256(qs, 1));
                let qs = _mm_add_epi32(qs, _mm_shuffle_epi32(qs, 0b01_00_11_10));
                let qs = _mm_add_epi32(qs, _mm_shuffle_epi32(qs, 0b10_11_00_01));
                let vs = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
                let vs = _mm_add_ps(_mm256_castps256_ps128(vs), _mm256_extractf128_ps(vs, 1));
                let vs = _mm_add_ps(vs, _mm_movehl_ps(vs, vs));
                let vs = _mm_add_ss(vs, _mm_shuffle_ps(vs, vs, 1));
                self.scale[b] = scale;
                self.qsum[b] = _mm_cvtsi128_si32(qs);
                self.sum[b] = _mm_cvtss_f32(vs);
            }
        }
    }

    /// [`Self::new`]'s rounding in plain Rust.
    fn round_portable(&mut self, x: &[f32]) {
        let out = self;
        for (b, xs) in x.chunks_exact(32).enumerate() {
            let max = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inv = inverse(scale);
            let q = &mut out.q[b * 32..][..32];
            for (q, &v) in q.iter_mut().zip(xs) {
                *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            out.scale[b] = scale;
            out.qsum[b] = q.iter().map(|&v| i32::from(v)).sum();
            out.sum[b] = xs.iter().sum();
        }
    }

    /// [`Self::new`]'s rounding, a block (two registers) at a time: rounding each input value
    /// by value was a large share of a batch of 50 rows' decoding time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn round_avx512(&mut self, x: &[f32]) {
        use std::arch::x86_64::*;
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        for (b, xs) in x.chunks_exact(32).enumerate() {
            // SAFETY: the block's 32 inputs and 32 outputs (`q` holds one per input).
            unsafe {
                let v = [_mm512_loadu_ps(xs.as_ptr()), _mm512_loadu_ps(xs.as_ptr().add(16))];
                let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
                let scale = max / 127.0;
                let inv = _mm512_set1_ps(inverse(scale));
                // Converting rounds halves to even (the default rounding mode), as `new` does.
                let q =
                    v.map(|v| _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), lo), hi));
                let out = self.q.as_mut_ptr().add(b * 32);
                _mm_storeu_si128(out.cast(), _mm512_cvtepi32_epi8(q[0]));
                _mm_storeu_si128(out.add(16).cast(), _mm512_cvtepi32_epi8(q[1]));
                self.scale[b] = scale;
                self.qsum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
                self.sum[b] = _mm512_reduce_add_ps(_mm512_add_ps(v[0], v[1]));
            }
        }
    }

    /// The rounded values, `x / scale` to the nearest whole number.
    pub(crate) fn values(&self) -> &[i8] {
        &self.q
    }

    /// Each block's scale.
    pub(crate) fn scales(&self) -> &[f32] {
        &self.scale
    }

    /// Each block's exact sum of the input.
    pub(crate) fn sums(&self) -> &[f32] {
        &self.sum
    }

    /// Each block's sum of the rounded values.
    pub(crate) fn rounded_sums(&self) -> &[i32] {
        &self.qsum
    }

    /// The rounded values as floats (`q · scale`): what the integer product multiplies by.
    pub fn dequantised(&self) -> Vec<f32> {
        self.q.iter().enumerate().map(|(i, &q)| f32::from(q) * self.scale[i / 32]).collect()
    }
}

/// `1 / scale` for rounding a block, 0 where that is not finite (a block of zeros, or values so
/// small that the inverse overflows): such a block rounds to zeros.
fn inverse(scale: f32) -> f32 {
    let inv = 1.0 / scale;
    if inv.is_finite() {
        inv
    } else {
        0.0
    }
}

/// The integer dot product of one row of `ty` blocks with `x`, in plain Rust.
fn dot_row_int8_portable(ty: GgmlType, row: &[u8], x: &Q8Input) -> f32 {
    let mut total = 0.0;
    let bb = ty.block_bytes() as usize;
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let q = &x.q[b * 32..][..32];
        let d = half(block, 0) * x.scale[b];
        total += match ty {
            GgmlType::Q8_0 => {
                d * block[2..34].iter().zip(q).map(|(&w, &a)| i32::from(w as i8) * i32::from(a)).sum::<i32>() as f32
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let qs = if ty == GgmlType::Q4_0 { &block[2..18] } else { &block[4..20] };
                let dot: i32 = qs
                    .iter()
                    .enumerate()
                    .map(|(j, &w)| i32::from(w & 0xF) * i32::from(q[j]) + i32::from(w >> 4) * i32::from(q[j + 16]))
                    .sum();
                if ty == GgmlType::Q4_0 {
                    d * (dot - 8 * x.qsum[b]) as f32
                } else {
                    d * dot as f32 + half(block, 2) * x.sum[b]
                }
            }
            _ => unreachable!("takes_int8 admits Q8_0, Q4_0 and Q4_1"),
        };
    }
    total
}

/// The f16 at `b[at..at + 2]` as f32, converted by the CPU (F16C).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
#[inline]
fn half_f16c(b: &[u8], at: usize) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[at], b[at + 1]])))))
}

#[cfg(target_arch = "x86_64")]
fn has_avx512bw() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// [`dot_row_int8_portable`] with AVX2: per block of 32, `maddubs` multiplies unsigned weights
/// (Q8_0's made unsigned by moving their sign onto the input) by the signed input into pairs,
/// `madd` sums the pairs to eight lanes, and the block's scale multiplies them into the float sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_int8_avx2(ty: GgmlType, row: &[u8], x: &Q8Input) -> f32 {
    use std::arch::x86_64::*;
    let half = half_f16c;
    let ones = _mm256_set1_epi16(1);
    let low = _mm_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    let mut extra = 0.0;
    let bb = ty.block_bytes() as usize;
    let blocks = row.len() / bb;
    assert!(x.q.len() >= blocks * 32, "input shorter than the row");
    for b in 0..blocks {
        let block = &row[b * bb..][..bb];
        // SAFETY: 32 input bytes at b·32 (asserted above) and the block's own bytes are read.
        let a = unsafe { _mm256_loadu_si256(x.q.as_ptr().add(b * 32).cast()) };
        // SAFETY: `scale`, `qsum` and `sum` hold one entry per 32 inputs, and b < blocks ≤ q.len() / 32.
        let d = half(block, 0) * unsafe { *x.scale.get_unchecked(b) };
        let pairs = match ty {
            GgmlType::Q8_0 => {
                let w = unsafe { _mm256_loadu_si256(block.as_ptr().add(2).cast()) };
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
            }
            _ => {
                let at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                let qs = unsafe { _mm_loadu_si128(block.as_ptr().add(at).cast()) };
                let w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), low), _mm_and_si128(qs, low));
                if ty == GgmlType::Q4_0 {
                    extra -= d * (8 * unsafe { *x.qsum.get_unchecked(b) }) as f32;
                } else {
                    extra += half(block, 2) * unsafe { *x.sum.get_unchecked(b) };
                }
                _mm256_maddubs_epi16(w, a)
            }
        };
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        acc = _mm256_fmadd_ps(sums, _mm256_set1_ps(d), acc);
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s) + extra
}

/// [`crate::gguf::dequantize`] of one row of Q8_0, Q4_0 or Q4_1 blocks, eight values at a time
/// and bit for bit the same (a multiply and then an add, as the scalar code rounds, not a fused
/// multiply-add). A product of several rows dequantises the whole matrix per call, so in its
/// scalar form this was a large share of the time of 50 decoding streams.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_row_avx2(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let half = half_f16c;
    let bb = ty.block_bytes() as usize;
    assert!(out.len() >= row.len() / bb * 32, "output shorter than the row");
    let low = _mm_set1_epi8(0xF);
    let eight = _mm256_set1_ps(8.0);
    for (b, block) in row.chunks_exact(bb).enumerate() {
        // SAFETY (every load and store below): 32 outputs at b·32 (asserted above) and the
        // block's own bytes.
        let y = unsafe { out.as_mut_ptr().add(b * 32) };
        let d = _mm256_set1_ps(half(block, 0));
        if ty == GgmlType::Q8_0 {
            for c in 0..4 {
                let q = unsafe { _mm_loadl_epi64(block.as_ptr().add(2 + 8 * c).cast()) };
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                unsafe { _mm256_storeu_ps(y.add(8 * c), _mm256_mul_ps(d, v)) };
            }
            continue;
        }
        let at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
        let m = _mm256_set1_ps(if ty == GgmlType::Q4_1 { half(block, 2) } else { 0.0 });
        let qs = unsafe { _mm_loadu_si128(block.as_ptr().add(at).cast()) };
        // Values 0..16 are the low nibbles of the 16 bytes, values 16..32 the high ones.
        let nibbles = [_mm_and_si128(qs, low), _mm_and_si128(_mm_srli_epi16(qs, 4), low)];
        for (h, v) in nibbles.into_iter().enumerate() {
            for (c, part) in [v, _mm_srli_si128(v, 8)].into_iter().enumerate() {
                let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                let x = if ty == GgmlType::Q4_0 {
                    _mm256_mul_ps(d, _mm256_sub_ps(q, eight))
                } else {
                    _mm256_add_ps(_mm256_mul_ps(d, q), m)
                };
                unsafe { _mm256_storeu_ps(y.add(16 * h + 8 * c), x) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_row_avx2(m: &QuantMatrix, r: usize, x: &[f32]) -> f32 {
    dot_row_portable(m, r, x)
}

/// A block's values dotted with `x`, eight partial sums wide so the compiler vectorises it.
#[inline(always)]
fn dot32(values: &[f32; 32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for c in 0..4 {
        for l in 0..8 {
            acc[l] += values[c * 8 + l] * x[c * 8 + l];
        }
    }
    acc.iter().sum()
}

#[inline(always)]
fn dot_row_portable(m: &QuantMatrix, r: usize, x: &[f32]) -> f32 {
    let row = m.row(r);
    let mut v = [0f32; 32];
    let mut total = 0.0;
    match m.ty {
        GgmlType::Q8_0 => {
            for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
                for (v, &q) in v.iter_mut().zip(&b[2..34]) {
                    *v = f32::from(q as i8);
                }
                total += half(b, 0) * dot32(&v, xs);
            }
        }
        GgmlType::Q4_0 => {
            for (b, xs) in row.chunks_exact(18).zip(x.chunks_exact(32)) {
                for (j, &q) in b[2..18].iter().enumerate() {
                    v[j] = f32::from(q & 0xF) - 8.0;
                    v[j + 16] = f32::from(q >> 4) - 8.0;
                }
                total += half(b, 0) * dot32(&v, xs);
            }
        }
        GgmlType::Q4_1 => {
            for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
                for (j, &q) in b[4..20].iter().enumerate() {
                    v[j] = f32::from(q & 0xF);
                    v[j + 16] = f32::from(q >> 4);
                }
                let ones = [1f32; 32];
                total += half(b, 0) * dot32(&v, xs) + half(b, 2) * dot32(&ones, xs);
            }
        }
        _ => {
            // K-quants: dequantise the super-block, then dot it in pieces of 32.
            let (bl, bb) = (m.ty.block_len() as usize, m.ty.block_bytes() as usize);
            let mut buf = [0f32; 256];
            for (b, xs) in row.chunks_exact(bb).zip(x.chunks_exact(bl)) {
                (m.decode)(b, &mut buf[..bl]);
                for (vals, xs) in buf[..bl].chunks_exact(32).zip(xs.chunks_exact(32)) {
                    total += dot32(vals.try_into().expect("32 values"), xs);
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::Q8Input;

    /// Products of one input with several weights in one parallel region give each weight's
    /// own product bit for bit, on every path (packed 8-bit, one-row 8-bit, exact).
    #[test]
    fn products_with_several_weights_at_once_equal_each_alone() {
        use super::{Inputs, QuantMatrix};
        use crate::gguf::GgmlType;
        use crate::model::kernels::vnni::{random_blocks, xorshift};
        let mut next = xorshift(11);
        let (cols, m) = (3 * 32, 5);
        let mut weight = |ty: GgmlType, rows: usize| {
            QuantMatrix::new(ty, rows, cols, random_blocks(ty, rows, cols, &mut next)).expect("whole blocks")
        };
        // Output counts that are not whole groups of 16, and types the packed kernel takes.
        let ws = [weight(GgmlType::Q4_1, 40), weight(GgmlType::Q8_0, 24), weight(GgmlType::Q4_0, 7)];
        let x: Vec<f32> = (0..m * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for inputs in [Inputs::Int8 { vnni: true }, Inputs::Int8 { vnni: false }, Inputs::Exact] {
            let alone: Vec<Vec<f32>> = ws
                .iter()
                .map(|w| {
                    let mut y = vec![f32::NAN; m * w.rows()];
                    w.matmul(m, &x, &mut y, inputs);
                    y
                })
                .collect();
            let mut together: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; m * w.rows()]).collect();
            let mut ys: Vec<&mut [f32]> = together.iter_mut().map(Vec::as_mut_slice).collect();
            QuantMatrix::matmul_many(&ws.iter().collect::<Vec<_>>(), m, &x, &mut ys, inputs);
            for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()), "{inputs:?}: weight {i} alone left outputs unwritten");
                assert_eq!(a, t, "{inputs:?}: weight {i}");
            }
        }
    }

    #[test]
    fn the_avx512_and_avx2_roundings_of_inputs_give_the_portable_values() {
        #[cfg(target_arch = "x86_64")]
        {
            // Blocks: mixed signs and sizes, exact halves of a step (127 · k / 2 of a maximum of
            // 127), zeros, values too small to invert, one huge value.
            let mut x: Vec<f32> = (0..32).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
            x.extend((0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }));
            x.extend([0.0; 32]);
            x.extend((0..32).map(|i| if i % 2 == 0 { 1e-39 } else { -2e-39 }));
            x.extend((0..32).map(|i| if i == 5 { 3e38 } else { i as f32 }));
            let fresh = || Q8Input { q: vec![0; x.len()], scale: vec![0.0; 5], qsum: vec![0; 5], sum: vec![0.0; 5] };
            let mut plain = fresh();
            plain.round_portable(&x);
            let mut checked = 0;
            for (name, available) in [("AVX-512", super::has_avx512bw()), ("AVX2", super::has_avx2())] {
                if !available {
                    continue;
                }
                let mut wide = fresh();
                // SAFETY: the CPU has the features (checked above).
                unsafe {
                    if name == "AVX2" {
                        wide.round_avx2(&x)
                    } else {
                        wide.round_avx512(&x)
                    }
                };
                assert_eq!(wide.q, plain.q, "{name}: rounded values");
                assert_eq!(wide.scale, plain.scale, "{name}: scales");
                assert_eq!(wide.qsum, plain.qsum, "{name}: sums of rounded values");
                for (a, b) in wide.sum.iter().zip(&plain.sum) {
                    assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-30), "{name}: sums {a} and {b}");
                }
                checked += 1;
            }
            assert!(checked > 0 || !super::has_avx2(), "no wide rounding was compared");
            assert!(plain.q[64..128].iter().all(|&q| q == 0), "zeros and values too small to invert round to 0");
            // The second block's scale is 1: 0.5, 1.5 and 2.5 round to 0, 2 and 2.
            assert_eq!(plain.q[48..51], [0, 2, 2], "halves round to even");
        }
    }
}
