//! The exponential that decoding's loops use (softmax of attention, SwiGLU, the sampler's weights), written so that those loops vectorise.
//! It must stay within a few f32 rounding steps of the true exponential over the whole f32 range (pinned by a test against f64).

//! `exp` for whole slices. The C library's `expf` is a call per value, which no loop around it
//! can vectorise: 50 samples decoding together spent a noticeable share of their time in it
//! (the sampler's weights of 49,152 logits per row, SwiGLU, attention). [`exp`] is branch-free
//! arithmetic: `eˣ = 2ⁿ·eʸ` with `n` the nearest whole number to `x·log₂e`, found by adding and
//! subtracting 1.5·2²³ (so no rounding call), `y = x - n·ln 2` (ln 2 in two parts, so `y` keeps
//! its precision), and `eʸ` for `|y| ≤ ½ln 2` by its Taylor series to the 7th power (remainder
//! below 6e-9). The loops below run it 16 lanes wide where
//! the CPU has AVX-512, 8 wide where it has AVX2 and 4 wide elsewhere: the same operations in
//! the same order on every path, so each gives the same bits.

/// `eˣ` to within about 2e-7 relative error; 0 below -87.3 (where f32 leaves normal numbers),
/// `e^88.3` above 88.3, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (Cody and Waite): n·LN2_HI is exact for |n| < 512, so the reduced
    // argument keeps its precision where x is large.
    const LN2_HI: f32 = 0.693_359_4; // 355/512 exactly
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ leaves the nearest whole number (halves to even) in the mantissa's low bits.
    const SHIFT: f32 = 12_582_912.0;
    let c = x.clamp(-87.3, 88.3);
    let shifted = c * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    let y = (c - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (1.0 / 2.0
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    // n lies in -126..=127: 2ⁿ's exponent field n + 127 is normal.
    let whole = (shifted.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    let scale = f32::from_bits((whole.wrapping_add(127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        scale * p
    }
}

/// Each value `v` of `xs` replaced by `exp((v - shift) · mul)`; returns their sum (in f64).
pub(crate) fn exp_shifted(xs: &mut [f32], shift: f32, mul: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { exp_shifted_avx512(xs, shift, mul) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { exp_shifted_avx2(xs, shift, mul) };
        }
    }
    exp_shifted_portable(xs, shift, mul)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(xs: &mut [f32], shift: f32, mul: f32) -> f64 {
    exp_shifted_portable(xs, shift, mul)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(xs: &mut [f32], shift: f32, mul: f32) -> f64 {
    exp_shifted_portable(xs, shift, mul)
}

#[inline(always)]
fn exp_shifted_portable(xs: &mut [f32], shift: f32, mul: f32) -> f64 {
    let mut total = 0f64;
    // Sums of 64 values in f32 lanes, then in f64: the total stays exact to f32 rounding of
    // short runs however long the slice.
    for chunk in xs.chunks_mut(64) {
        let mut sum = [0f32; 16];
        for part in chunk.chunks_mut(16) {
            for (x, s) in part.iter_mut().zip(sum.iter_mut()) {
                *x = exp((*x - shift) * mul);
                *s += *x;
            }
        }
        total += sum.iter().map(|&s| f64::from(s)).sum::<f64>();
    }
    total
}

/// `gate[i] = silu(gate[i]) · up[i]`, SwiGLU's product, `silu(g) = g / (1 + e⁻ᵍ)`.
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { swiglu_avx512(gate, up) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { swiglu_avx2(gate, up) };
        }
    }
    swiglu_portable(gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    swiglu_portable(gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
    swiglu_portable(gate, up)
}

#[inline(always)]
fn swiglu_portable(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_f32_steps_of_the_true_exponential() {
        let mut worst = 0f64;
        // Every 1/4096 from -87 to 88, plus the edges and special values.
        let mut xs: Vec<f32> = (-87 * 4096..88 * 4096).map(|i| i as f32 / 4096.0).collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 88.3, -87.29]);
        for &x in &xs {
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "relative error up to {worst}");
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0) > 1e38 && exp(1000.0).is_finite());

        // The slice forms, on a length that leaves a partial vector and a partial run of 64.
        let mut v: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 37.0).collect();
        let original = v.clone();
        let total = exp_shifted(&mut v, 3.0, 0.5);
        let want: f64 = original.iter().map(|&x| ((f64::from(x) - 3.0) * 0.5).exp()).sum();
        assert!(((total - want) / want).abs() < 1e-6, "sum {total} against {want}");
        for (got, &x) in v.iter().zip(&original) {
            let want = ((f64::from(x) - 3.0) * 0.5).exp();
            assert!(((f64::from(*got) - want) / want).abs() < 1e-6, "exp at {x}: {got} against {want}");
        }
        // Every wide path gives the portable loop's bits.
        #[cfg(target_arch = "x86_64")]
        {
            let up: Vec<f32> = (0..1000).map(|i| i as f32 / 100.0).collect();
            let (mut plain, mut plain_gate) = (original.clone(), original.clone());
            let plain_total = exp_shifted_portable(&mut plain, 3.0, 0.5);
            swiglu_portable(&mut plain_gate, &up);
            for (name, available) in [
                ("AVX-512", std::arch::is_x86_feature_detected!("avx512f")),
                ("AVX2", std::arch::is_x86_feature_detected!("avx2")),
            ] {
                if !available {
                    continue;
                }
                let (mut wide, mut wide_gate) = (original.clone(), original.clone());
                // SAFETY: the CPU has the feature (checked above).
                let total = unsafe {
                    if name == "AVX2" {
                        swiglu_avx2(&mut wide_gate, &up);
                        exp_shifted_avx2(&mut wide, 3.0, 0.5)
                    } else {
                        swiglu_avx512(&mut wide_gate, &up);
                        exp_shifted_avx512(&mut wide, 3.0, 0.5)
                    }
                };
                assert_eq!((total, &wide), (plain_total, &plain), "{name}: exp_shifted");
                assert_eq!(wide_gate, plain_gate, "{name}: swiglu");
            }
        }
        let mut gate = original.clone();
        let up: Vec<f32> = (0..1000).map(|i| i as f32 / 100.0).collect();
        swiglu(&mut gate, &up);
        for ((got, &g), &u) in gate.iter().zip(&original).zip(&up) {
            let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
            assert!(
                (f64::from(*got) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "swiglu({g}, {u}): {got} against {want}"
            );
        }
    }
}
