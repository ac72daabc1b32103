//! Loops compiled three times, for baseline x86-64, for AVX2 and for AVX-512, and picked at run
//! time.

/// Whether the CPU has AVX2: the release build targets baseline x86-64, so the loops below are
/// also compiled for AVX2 (8 lanes where SSE has 4) and picked at run time.
pub(super) fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512F (16 lanes), the widest twin.
pub(super) fn widest() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Σ values(i)` for `i < len`, in 16 lanes (so that the loop vectorises: a float sum in order
/// does not), then the remainder and the lanes.
#[inline(always)]
pub(super) fn lanes_sum(values: impl Fn(usize) -> f32, len: usize) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let whole = len / LANES * LANES;
    for at in (0..whole).step_by(LANES) {
        for (i, l) in lanes.iter_mut().enumerate() {
            *l += values(at + i);
        }
    }
    (whole..len).map(values).chain(lanes).sum()
}

/// `Σ a[i]·b[i]` over the shorter of the two, in 16 lanes as [`lanes_sum`]. Through
/// `chunks_exact`, so that no bounds check keeps the loop scalar (an index closure over two
/// slices did, in the depthwise weight gradient).
#[inline(always)]
pub(super) fn lanes_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (mut ac, mut bc) = (a.chunks_exact(16), b.chunks_exact(16));
    for (a, b) in (&mut ac).zip(&mut bc) {
        for ((l, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *l += x * y;
        }
    }
    ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).chain(lanes).sum()
}

/// `name(args)`, through its AVX-512 twin `wide_name::avx512` when the CPU has AVX-512F, else its
/// AVX2 twin `wide_name::avx2` when it has AVX2.
macro_rules! dispatch {
    ($name:ident, $wide:ident :: <$k:tt> ($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::compile::cpu::simd::widest() {
                // SAFETY: the CPU has AVX-512F, the one feature the twin is compiled for.
                unsafe { $wide::avx512::<$k>($($arg),*) }
            } else if wide() {
                // SAFETY: the CPU has AVX2, the one feature the twin is compiled for.
                unsafe { $wide::avx2::<$k>($($arg),*) }
            } else {
                $name::<$k>($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $name::<$k>($($arg),*)
        }
    }};
}

/// Compiles `name` (generic over one constant of type `K`) again for AVX2 and for AVX-512F, as
/// `wide_name::avx2` and `wide_name::avx512`. The loops are written so that the compiler
/// vectorises them; plain `a * b + c` is never fused into one rounding, so every twin gives the
/// baseline's values bit for bit.
macro_rules! avx2_twin {
    ($name:ident, $wide:ident, $k:ty, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        mod $wide {
            #[allow(unused_imports)]
            use super::*;

            #[target_feature(enable = "avx2")]
            pub(super) unsafe fn avx2<const K: $k>($($arg: $ty),*) $(-> $ret)? {
                super::$name::<K>($($arg),*)
            }

            #[target_feature(enable = "avx512f")]
            pub(super) unsafe fn avx512<const K: $k>($($arg: $ty),*) $(-> $ret)? {
                super::$name::<K>($($arg),*)
            }
        }
    };
}

pub(super) use {avx2_twin, dispatch};
