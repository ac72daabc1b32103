// A frozen linear weight kept in its GGUF block-quantised form (QLoRA's base), and the kernels that multiply by it.
// It must dequantise exactly as gguf::dequantize does (the f32 path is the reference), and never hold an f32 copy of the matrix.

//! [`QuantMatrix`]: a PyTorch-layout `[out, in]` weight whose rows are GGUF
//! blocks along `in`. Products dequantise on the fly: one row of input
//! (one decoding stream) takes a fused dot product per block; more rows
//! dequantise a tile of the weight into a per-thread scratch buffer and run
//! `gemm` on it, so the f32 matrix never exists whole.

use super::cpu::SendPtr;
use crate::gguf::{block_decoder, GgmlType};
use half::f16;
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
        if cols % block_len != 0 {
            return Err(format!("rows of {cols} values are not whole {ty} blocks of {block_len}"));
        }
        let row_bytes = cols / block_len * block_bytes;
        if data.len() != rows * row_bytes {
            return Err(format!("{} bytes for [{rows}, {cols}] of {ty}, which needs {}", data.len(), rows * row_bytes));
        }
        Ok(QuantMatrix { ty, rows, cols, row_bytes, decode, data })
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
    /// Bytes the matrix occupies.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The rows reordered: row `i` of the result is row `order[i]` of `self`.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        QuantMatrix { data, ..self.clone() }
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..][..self.row_bytes]
    }

    /// Row `r` dequantised into `out` (`cols` values).
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
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

    /// `y = x Wᵀ` for `m` rows of `x` (`[m, cols]`), `y` `[m, rows]`, overwritten.
    pub fn matmul(&self, m: usize, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "input of the quantised product");
        assert_eq!(y.len(), m * self.rows, "output of the quantised product");
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
                    gemm::gemm(
                        m,
                        n,
                        self.cols,
                        out.get().add(r0),
                        1,
                        self.rows as isize,
                        false,
                        x.as_ptr(),
                        1,
                        self.cols as isize,
                        w.as_ptr(),
                        self.cols as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
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
                            gemm::gemm(
                                m,
                                self.cols,
                                n,
                                dx.as_mut_ptr(),
                                1,
                                self.cols as isize,
                                true,
                                dy.as_ptr().add(r0),
                                1,
                                self.rows as isize,
                                w.as_ptr(),
                                1,
                                self.cols as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
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
    let half = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
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

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's scratch buffer of `len` floats, kept between calls; callers write before they read.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}
