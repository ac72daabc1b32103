//! Turns the block-quantised tensor types of ggml into f32, one block layout per function.
//! It must not guess at a layout: a type whose layout is not written out here is refused, never approximated.

use super::GgmlType;
use half::{bf16, f16};

/// The types [`dequantize`] reads, for error messages.
pub(super) const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K";

/// Dequantises `bytes` of type `ty` to f32, in storage order. `None` when the
/// type is not one of [`SUPPORTED`] or `bytes` is not a whole number of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let block_bytes = ty.block_bytes() as usize;
    if !bytes.len().is_multiple_of(block_bytes) {
        return None;
    }
    let decode = block_decoder(ty)?;
    let block_len = ty.block_len() as usize;
    let mut out = vec![0f32; bytes.len() / block_bytes * block_len];
    for (block, y) in bytes.chunks_exact(block_bytes).zip(out.chunks_exact_mut(block_len)) {
        decode(block, y);
    }
    Some(out)
}

/// Decodes one block of a quantised type into its values.
pub type BlockDecoder = fn(&[u8], &mut [f32]);

/// The function that dequantises one block of `ty` (`ty.block_bytes()` bytes into
/// `ty.block_len()` values); `None` when the type is not one of [`SUPPORTED`].
pub fn block_decoder(ty: GgmlType) -> Option<BlockDecoder> {
    Some(match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = half(b, 0),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    })
}

/// The little-endian f16 at `b[at..at + 2]`, as f32.
pub(crate) fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q8_0: 32 values; f16 scale d, then 32 signed bytes q; x = d * q.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = d * f32::from(q as i8);
    }
}

/// Q4_0: 32 values; f16 scale d, then 16 bytes of 4-bit q. Byte j holds value j
/// in its low nibble and value j + 16 in its high nibble; x = d * (q - 8).
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * (f32::from(q & 0xF) - 8.0);
        y[j + 16] = d * (f32::from(q >> 4) - 8.0);
    }
}

/// Q4_1: 32 values; f16 scale d, f16 minimum m, then nibbles laid out as in Q4_0; x = d * q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * f32::from(q & 0xF) + m;
        y[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K block, packed
/// into 12 bytes: sub-blocks 0-3 use the low 6 bits of bytes j and j + 4;
/// sub-blocks 4-7 take their low 4 bits from a nibble of byte j + 4 and their
/// top 2 bits from the spare top bits of bytes j - 4 and j.
fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K: 256 values in 8 sub-blocks of 32; f16 d, f16 dmin, 12 bytes of packed
/// 6-bit scales and minimums, 128 bytes of nibbles. Each 32 bytes of nibbles
/// hold two sub-blocks, the even one in the low nibbles;
/// x = d * scale * q - dmin * min.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    for (pair, qs) in b[16..144].chunks_exact(32).enumerate() {
        let (sc_lo, m_lo) = q4_k_scale_min(2 * pair, scales);
        let (sc_hi, m_hi) = q4_k_scale_min(2 * pair + 1, scales);
        let (d_lo, min_lo) = (d * f32::from(sc_lo), dmin * f32::from(m_lo));
        let (d_hi, min_hi) = (d * f32::from(sc_hi), dmin * f32::from(m_hi));
        let y = &mut y[pair * 64..pair * 64 + 64];
        for (l, &q) in qs.iter().enumerate() {
            y[l] = d_lo * f32::from(q & 0xF) - min_lo;
            y[l + 32] = d_hi * f32::from(q >> 4) - min_hi;
        }
    }
}

/// Q6_K: 256 values in 16 sub-blocks of 16; 128 bytes of low nibbles (ql), 64
/// bytes of high 2-bit pairs (qh), 16 signed 8-bit scales, f16 d. Each half of
/// 128 values uses 64 bytes of ql and 32 of qh: value l + 32k (k = 0..4) takes
/// its low 4 bits from ql[l + 32 (k % 2)] (low nibble for k < 2, high after)
/// and its high 2 bits from bits 2k..2k+2 of qh[l]; x = d * scale * (q - 32).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &ql[half_block * 64..half_block * 64 + 64];
        let qh = &qh[half_block * 32..half_block * 32 + 32];
        let sc = &scales[half_block * 8..half_block * 8 + 8];
        let y = &mut y[half_block * 128..half_block * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let low = [ql[l] & 0xF, ql[l + 32] & 0xF, ql[l] >> 4, ql[l + 32] >> 4];
            for (k, low) in low.into_iter().enumerate() {
                let q = i32::from(low | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
                y[l + 32 * k] = d * f32::from(sc[is + 2 * k] as i8) * q as f32;
            }
        }
    }
}
