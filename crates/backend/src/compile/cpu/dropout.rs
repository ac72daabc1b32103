//! Inverted dropout as one autodiff operation on the CPU backend.
//!
//! Burn's dropout draws a Bernoulli tensor through its generic sampler (a distribution object
//! and a ChaCha draw per value), multiplies twice and keeps the mask for the backward pass.
//! Here whether value `i` is kept is a keyed hash of its index: two rounds of a 32-bit integer
//! mix, each keyed by a word drawn from Burn's seeded generator, compared against `(1 − p)·2³²`.
//! That is a few integer operations per value, vectorised, so the forward pass is one pass
//! (`y = x·m`, `m ∈ {0, 1/(1 − p)}`, NaNs kept as PyTorch keeps them), and the backward pass
//! recomputes the same mask from the two keys instead of storing it: `dx = dy·m`.
//! Drawing the keys from Burn's generator keeps `Backend::seed` making a run repeatable.

use super::simd::{avx2_twin, dispatch, wide};
use super::{f32s, prim, whole, wrap_rank, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData, TensorMetadata};
use nasc_runtime::cpu::is;
use rayon::prelude::*;

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// Inverted dropout of `x` with drop probability `p` (in `(0, 1]`), for training: each value is
/// zeroed with probability `p` and the others scaled by `1/(1 − p)`. Burn's own dropout off the
/// CPU backend.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    if x.dtype() == DType::F32 && is::<B, Ad>() {
        let mask = Mask::draw(p);
        let x = prim::<B, AdTensor, D>(x);
        let y = apply(&x.primitive, mask);
        let out = match DropoutOp.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(mask, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return wrap_rank::<B, _, D>(out);
    }
    let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
    x * keep * (1.0 / (1.0 - p))
}

/// Which values one dropout keeps: its two hash keys, its threshold and its scale.
#[derive(Clone, Copy, Debug)]
struct Mask {
    keys: [u32; 2],
    /// Value `i` is kept when `hash(i) < threshold`.
    threshold: u32,
    /// `1/(1 − p)`: what a kept value is multiplied by.
    scale: f32,
}

impl Mask {
    fn draw(p: f64) -> Self {
        // Four 16-bit halves from Burn's generator (exact in f32), so `Backend::seed` fixes them.
        let halves = Tensor::<Flex, 1>::random([4], Distribution::Uniform(0.0, 65_536.0), &Default::default())
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
        let half = |i: usize| halves.get(i).map_or(0, |&v| (v as u32).min(0xffff));
        let keep = (1.0 - p).clamp(0.0, 1.0);
        Self {
            keys: [half(0) << 16 | half(1), half(2) << 16 | half(3)],
            threshold: (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 },
        }
    }
}

/// A bijective 32-bit integer mix with full avalanche (Wellons' `lowbias32`).
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// `m` for the value at flat index `i`: the scale or 0. Indices wrap at 2³² (a tensor of 16 GiB).
#[inline(always)]
fn factor(m: &Mask, i: usize) -> f32 {
    let h = mix(mix(i as u32 ^ m.keys[0]) ^ m.keys[1]);
    if h < m.threshold {
        m.scale
    } else {
        0.0
    }
}

/// `y = x·m` for the values from flat index `first`.
#[inline(always)]
fn forward_values<const K: u8>(m: &Mask, first: usize, x: &[f32], y: &mut [std::mem::MaybeUninit<f32>]) {
    for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        y.write(x * factor(m, first + j));
    }
}

/// `g ← g·m` for the values from flat index `first`.
#[inline(always)]
fn backward_values<const K: u8>(m: &Mask, first: usize, g: &mut [f32]) {
    for (j, g) in g.iter_mut().enumerate() {
        *g *= factor(m, first + j);
    }
}

avx2_twin!(forward_values, wide_forward_values, u8, (m: &Mask, first: usize, x: &[f32], y: &mut [std::mem::MaybeUninit<f32>]));
avx2_twin!(backward_values, wide_backward_values, u8, (m: &Mask, first: usize, g: &mut [f32]));

fn apply(x: &FlexTensor, m: Mask) -> FlexTensor {
    let x = if whole(x) { x.clone() } else { x.clone().to_contiguous() };
    let xs = f32s(&x);
    let mut y: Vec<f32> = Vec::with_capacity(xs.len());
    y.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (y, x))| dispatch!(forward_values, wide_forward_values::<0>(&m, c * CHUNK, x, y)));
    // SAFETY: the chunks cover every element, and each was written.
    unsafe { y.set_len(xs.len()) };
    FlexTensor::from_data(TensorData::new(y, x.shape()))
}

#[derive(Debug)]
struct DropoutOp;

impl Backward<Flex, 1> for DropoutOp {
    type State = Mask;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = &ops.parents[0] else { return };
        if !whole(&dy) {
            dy = dy.to_contiguous();
        }
        let m = ops.state;
        dy.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, g)| dispatch!(backward_values, wide_backward_values::<0>(&m, c * CHUNK, g)));
        grads.register::<Flex>(node.id, dy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn drops_at_the_rate_asked_and_scales_the_rest() {
        let device = Default::default();
        for (n, p) in [0.1, 0.5, 0.8].into_iter().enumerate() {
            <Ad as Backend>::seed(&device, 200 + n as u64);
            let x = Tensor::<Ad, 2>::random([64, 4096], Distribution::Uniform(1.0, 2.0), &device);
            let (xs, ys) = (values(x.clone().inner()), values(dropout(x, p).inner()));
            let scale = (1.0 / (1.0 - p)) as f32;
            let mut kept = 0usize;
            for (&x, &y) in xs.iter().zip(&ys) {
                if y != 0.0 {
                    assert_eq!(y, x * scale, "p = {p}: a kept value is scaled by 1/(1 - p)");
                    kept += 1;
                }
            }
            // 262,144 draws: the kept fraction's standard deviation is below 0.001.
            let rate = kept as f64 / xs.len() as f64;
            assert!((rate - (1.0 - p)).abs() < 0.005, "p = {p}: kept {rate}");
        }
    }

    #[test]
    fn the_gradient_passes_exactly_where_the_value_did() {
        let device = Default::default();
        <Ad as Backend>::seed(&device, 210);
        // A transposed (non-contiguous) input too.
        let x = Tensor::<Ad, 2>::random([37, 300], Distribution::Uniform(1.0, 2.0), &device).require_grad();
        for input in [x.clone(), x.clone().transpose()] {
            let y = dropout(input.clone(), 0.3);
            let r = Tensor::<Ad, 2>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
            let grads = (y.clone() * r.clone()).sum().backward();
            let dx = x.grad(&grads).unwrap();
            let dx = if input.dims() == x.dims() { dx } else { dx.transpose() };
            // y = x·m, so dx = r·m = r·y/x.
            let expected = values(r.inner() * y.inner() / input.inner());
            for (got, want) in values(dx).iter().zip(&expected) {
                assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{got} against {want}");
            }
        }
    }

    #[test]
    fn the_same_keys_repeat_the_mask_and_other_keys_draw_a_new_one() {
        // Keys are given here: Burn's generator is one global that tests running in parallel
        // reseed and draw from, so a test of "seed, then draw" would race with them.
        let x = FlexTensor::from_data(TensorData::new(vec![1.0f32; 20_000], [20_000]));
        let mask = |keys| Mask { keys, threshold: 1 << 31, scale: 2.0 };
        let a = f32s(&apply(&x, mask([7, 11]))).to_vec();
        assert_eq!(a, f32s(&apply(&x, mask([7, 11]))).to_vec(), "the same keys give the same mask");
        let b = f32s(&apply(&x, mask([8, 11]))).to_vec();
        // Independent masks of p = 0.5 agree on about half the values.
        let same = a.iter().zip(&b).filter(|(a, b)| a == b).count() as f64 / a.len() as f64;
        assert!((same - 0.5).abs() < 0.02, "two masks agree on {same} of the values");
        // NaNs stay NaN, as in PyTorch (x·0 is NaN).
        let nan = dropout(Tensor::<Ad, 1>::from_floats([f32::NAN; 64], &Default::default()), 0.5);
        assert!(values(nan.inner()).iter().all(|v| v.is_nan()));
    }
}
