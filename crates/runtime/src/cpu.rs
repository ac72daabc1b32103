//! Helpers the CPU kernels of the back end and of the language model share: the one call into
//! `gemm`, per-thread scratch buffers, a pointer threads write through, and backend recognition.
//! No kernel lives here; these are the pieces each kernel layer would otherwise copy.

use std::any::TypeId;
use std::cell::RefCell;

/// Whether the type `B` is `T`. Kernels written for one concrete backend (Burn's CPU backend)
/// use it to decide, per call, that a generic `B` is that backend.
pub fn is<B: 'static, T: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<T>()
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// This thread's scratch buffer of `len` floats, kept between calls (never zeroed: callers write
/// every element before they read it). `f` must not call `with_scratch` again or hand work to
/// rayon that could run another `with_scratch` on this thread.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// `dst (m×n, row stride dst_rs) = beta · a (m×k) · b (k×n)` (`dst += …` when `accumulate`),
/// operands given by their row and column strides, on this thread: the one call into `gemm`.
///
/// # Safety
/// Every element the strides address must lie in its buffer, and `dst` must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_at(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    beta: f32,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm_with((m, n, k), dst, dst_rs, accumulate, beta, a, (a_rs, a_cs), b, (b_rs, b_cs), gemm::Parallelism::None)
    }
}

/// [`gemm_at`] with `beta` 1, spread over rayon's threads when the product is large enough to
/// gain from it (about 7 million multiply-adds, as Burn's CPU backend decides), else on this
/// thread. For the products of a layer as a whole; a kernel that already runs one task per
/// thread calls [`gemm_at`].
///
/// # Safety
/// As [`gemm_at`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_parallel(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: *const f32,
    a_strides: (usize, usize),
    b: *const f32,
    b_strides: (usize, usize),
) {
    const PARALLEL_FROM: usize = 192 * 192 * 192;
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_FROM {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's promise.
    unsafe { gemm_with((m, n, k), dst, dst_rs, accumulate, 1.0, a, a_strides, b, b_strides, parallelism) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_with(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    beta: f32,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `dst (m×n, row-major) = [dst +] a (m×k) · b (k×n)` on this thread, operands by their row and
/// column strides; the bounds are checked, so this one is safe.
pub fn matmul_strided(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "product's destination");
    assert!(k == 0 || a.len() > (m - 1) * a_strides.0 + (k - 1) * a_strides.1, "product's left operand");
    assert!(k == 0 || b.len() > (k - 1) * b_strides.0 + (n - 1) * b_strides.1, "product's right operand");
    // SAFETY: the asserts bound every element the strides address; `dst` is a distinct `&mut`.
    unsafe { gemm_at((m, n, k), dst.as_mut_ptr(), n, accumulate, 1.0, a.as_ptr(), a_strides, b.as_ptr(), b_strides) }
}

/// A raw output pointer shared by threads that write disjoint elements through it.
#[derive(Clone, Copy)]
pub struct SendPtr(*mut f32);
// SAFETY: shared only by threads that write disjoint elements through it (the constructor's
// contract).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// A pointer that threads will write disjoint elements through.
    pub fn new(p: *mut f32) -> Self {
        SendPtr(p)
    }
    /// The pointer.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_equal_plain_sums() {
        // a is 2×3 read transposed from a 3×2 buffer; b is 3×2 row-major.
        let a_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b = [1.0, 0.5, -1.0, 2.0, 0.0, 1.0];
        let mut dst = [10.0; 4];
        matmul_strided((2, 2, 3), &mut dst, false, &a_t, (1, 2), &b, (2, 1));
        assert_eq!(dst, [-1.0, 7.5, -1.0, 18.0]);
        matmul_strided((2, 2, 3), &mut dst, true, &a_t, (1, 2), &b, (2, 1));
        assert_eq!(dst, [-2.0, 15.0, -2.0, 36.0]);
    }

    #[test]
    fn types_are_told_apart() {
        assert!(is::<f32, f32>() && !is::<f32, f64>());
    }
}
