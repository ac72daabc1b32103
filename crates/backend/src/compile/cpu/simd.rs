//! Loops compiled twice, for baseline x86-64 and for AVX2, and picked at run time.

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

/// `name(args)`, through its AVX2 twin `wide_name` when the CPU has AVX2.
macro_rules! dispatch {
    ($name:ident, $wide:ident :: <$k:tt> ($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if wide() {
                // SAFETY: the CPU has AVX2, the one feature the twin is compiled for.
                unsafe { $wide::<$k>($($arg),*) }
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

/// Compiles `name` (generic over one constant of type `K`) again for AVX2 as `wide_name`.
macro_rules! avx2_twin {
    ($name:ident, $wide:ident, $k:ty, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $wide<const K: $k>($($arg: $ty),*) $(-> $ret)? {
            $name::<K>($($arg),*)
        }
    };
}

pub(super) use {avx2_twin, dispatch};
