//! SGD with momentum and weight decay as one pass over each parameter on the CPU backend.
//!
//! Burn's `Sgd` builds a step from tensor operations: the decay's multiply and add, the
//! momentum's two multiplies and an add, the learning rate's multiply and the subtraction,
//! each a pass over the whole parameter with a buffer of its own. On a model whose parameters
//! are large beside its activations (an MLP: 5 million weights for a batch of 64) those passes
//! were a tenth of a training step. [`Sgd`] does the same arithmetic, in the same order and
//! so to the same bits (a test holds it to Burn's), reading each parameter, gradient and
//! velocity once; on other backends it runs the same operations as Burn's.

use super::simd::{avx2_twin, dispatch, wide};
use super::{f32s, prim, whole, wrap_rank};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use nasc_runtime::cpu::is;
use rayon::prelude::*;

/// Values per parallel task.
const CHUNK: usize = 1 << 15;

/// SGD as PyTorch's `torch.optim.SGD` without Nesterov: `g ← g + λ·p` (with decay),
/// `v ← (1 − dampening)·g + μ·v` (`v ← g` on the first step), `p ← p − lr·v`.
#[derive(Clone, Debug)]
pub struct Sgd {
    /// μ, or `None` for plain SGD.
    momentum: Option<f32>,
    /// `1 − dampening`.
    undamped: f32,
    /// λ, or `None`.
    decay: Option<f32>,
}

/// A parameter's velocity (absent without momentum, and before the first step).
#[derive(Record, Clone)]
pub struct SgdState<B: Backend, const D: usize> {
    velocity: Option<Tensor<B, D>>,
}

impl Sgd {
    /// `momentum` (μ) and `dampening` as Burn's `MomentumConfig` takes them; `decay` (λ) as its
    /// `WeightDecayConfig`.
    pub fn new(momentum: Option<(f64, f64)>, decay: Option<f32>) -> Self {
        Sgd {
            momentum: momentum.map(|(m, _)| m as f32),
            undamped: momentum.map_or(1.0, |(_, d)| (1.0 - d) as f32),
            decay,
        }
    }

    /// The step on `f32` slices, in place: the parameter `p`, and with momentum the velocity
    /// `v` and whether it holds the last step's (else this is the first step).
    fn step_in_place(&self, lr: f32, p: &mut [f32], g: &[f32], v: Option<(&mut [f32], bool)>) {
        let c = Coefs { lr, decay: self.decay.unwrap_or(0.0), m: self.momentum.unwrap_or(0.0), d: self.undamped };
        let case = u8::from(self.decay.is_some()) * DECAY
            + match v {
                Some((_, true)) => MOMENTUM | OLD,
                Some((_, false)) => MOMENTUM,
                None => 0,
            };
        let mut vels = v.map_or_else(Vec::new, |(v, _)| v.chunks_mut(CHUNK).collect()).into_iter();
        let tasks: Vec<(usize, &mut [f32], &mut [f32])> =
            p.chunks_mut(CHUNK).enumerate().map(|(t, p)| (t * CHUNK, p, vels.next().unwrap_or_default())).collect();
        tasks.into_par_iter().for_each(|(at, p, v)| {
            let g = &g[at..];
            macro_rules! run {
                ($k:tt) => {
                    dispatch!(sgd_in_place, wide_sgd_in_place::<$k>(p, v, g, c))
                };
            }
            match case {
                0 => run!(0),
                1 => run!(1),
                4 => run!(4),
                5 => run!(5),
                6 => run!(6),
                _ => run!(7),
            }
        });
    }
}

/// The step's constants: learning rate, λ, μ and `1 − dampening`.
#[derive(Clone, Copy)]
struct Coefs {
    lr: f32,
    decay: f32,
    m: f32,
    d: f32,
}

/// The cases of [`sgd_in_place`], as bits of its constant.
const DECAY: u8 = 1;
const OLD: u8 = 2;
const MOMENTUM: u8 = 4;

/// One task's part of the step over the parameter `p` and the velocity `v` (with momentum),
/// one loop without branches per case (`K`), so that it vectorises.
#[inline(always)]
fn sgd_in_place<const K: u8>(p: &mut [f32], v: &mut [f32], g: &[f32], c: Coefs) {
    let n = p.len();
    let g = &g[..n];
    let v = if K & MOMENTUM != 0 { &mut v[..n] } else { v };
    for i in 0..n {
        // The operations of Burn's Sgd, Momentum and WeightDecay, in their order.
        let mut grad = g[i];
        if K & DECAY != 0 {
            grad += p[i] * c.decay;
        }
        if K & MOMENTUM != 0 {
            if K & OLD != 0 {
                grad = grad * c.d + v[i] * c.m;
            }
            v[i] = grad;
        }
        p[i] -= grad * c.lr;
    }
}

avx2_twin!(sgd_in_place, wide_sgd_in_place, u8, (p: &mut [f32], v: &mut [f32], g: &[f32], c: Coefs));

/// `t` as a buffer this step may write: itself where its elements are its whole buffer and no
/// one else holds it (the parameter and velocity of a training step), else a copy.
fn owned<const D: usize>(t: FlexTensor, dims: [usize; D]) -> FlexTensor {
    if whole(&t) && t.is_unique() {
        t
    } else {
        FlexTensor::from_data(TensorData::new(f32s(&t).into_owned(), dims))
    }
}

impl<B: Backend> SimpleOptimizer<B> for Sgd {
    type State<const D: usize> = SgdState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let old = state.and_then(|s| s.velocity);
        if is::<B, Flex>() {
            // In place: no new buffers, whose first writes would fault pages in every step.
            let dims = tensor.dims();
            let mut p = owned(prim::<B, FlexTensor, D>(tensor), dims);
            let mut v = self.momentum.map(|_| match old {
                Some(v) => (owned(prim::<B, FlexTensor, D>(v), dims), true),
                None => (FlexTensor::from_data(TensorData::new(vec![0f32; p.layout().num_elements()], dims)), false),
            });
            let g = prim::<B, FlexTensor, D>(grad);
            let velocity = v.as_mut().map(|(v, last)| (v.try_storage_mut::<f32>().expect("owned"), *last));
            self.step_in_place(lr as f32, p.try_storage_mut::<f32>().expect("owned"), &f32s(&g), velocity);
            let velocity = v.map(|(v, _)| wrap_rank::<B, _, D>(v));
            return (wrap_rank::<B, _, D>(p), Some(SgdState { velocity }));
        }
        let mut grad = grad;
        if let Some(decay) = self.decay {
            grad = tensor.clone().mul_scalar(decay).add(grad);
        }
        let mut velocity = None;
        if let Some(m) = self.momentum {
            grad = match old {
                Some(old) => grad.mul_scalar(self.undamped).add(old.mul_scalar(m)),
                None => grad,
            };
            velocity = Some(grad.clone());
        }
        (tensor - grad.mul_scalar(lr), Some(SgdState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        SgdState { velocity: state.velocity.map(|v| v.to_device(device)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::SgdConfig;

    /// Five steps on parameters of several sizes (one and several tasks, a partial last one),
    /// with and without momentum and decay, the parameter alone or shared: Burn's own Sgd's
    /// values, bit for bit.
    #[test]
    fn steps_give_burns_sgd_bits() {
        let device = Default::default();
        let mut state = 5u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 20001) as f32 / 10000.0 - 1.0
        };
        for (momentum, decay) in
            [(Some((0.9, 0.0)), None), (Some((0.9, 0.1)), Some(5e-4)), (None, Some(1e-2)), (None, None)]
        {
            for n in [7, CHUNK * 2 + 3] {
                let mut burn_cfg = SgdConfig::new();
                if let Some((m, d)) = momentum {
                    burn_cfg = burn_cfg.with_momentum(Some(MomentumConfig::new().with_momentum(m).with_dampening(d)));
                }
                if let Some(decay) = decay {
                    burn_cfg = burn_cfg.with_weight_decay(Some(WeightDecayConfig::new(decay)));
                }
                let theirs = burn_cfg.build::<Flex>();
                let ours = Sgd::new(momentum, decay);
                let start: Vec<f32> = (0..n).map(|_| next()).collect();
                let tensor = |v: Vec<f32>| Tensor::<Flex, 2>::from_data(TensorData::new(v, [1, n]), &device);
                let (mut p_theirs, mut p_ours) = (tensor(start.clone()), tensor(start));
                let (mut s_theirs, mut s_ours) = (None, None);
                for step in 0..5 {
                    let g: Vec<f32> = (0..n).map(|_| next()).collect();
                    let lr = 0.01 * (step + 1) as f64;
                    (p_theirs, s_theirs) = theirs.step(lr, p_theirs, tensor(g.clone()), s_theirs);
                    // On odd steps another holder shares the parameter: the step must copy it,
                    // not write through that holder's values.
                    let shared = (step % 2 == 1).then(|| p_ours.clone());
                    let before = shared.as_ref().map(|t| t.to_data());
                    (p_ours, s_ours) = SimpleOptimizer::<Flex>::step(&ours, lr, p_ours, tensor(g), s_ours);
                    if let (Some(t), Some(before)) = (shared, before) {
                        assert_eq!(t.to_data(), before, "a shared parameter was written in place");
                    }
                    let (a, b) =
                        (p_theirs.to_data().to_vec::<f32>().unwrap(), p_ours.to_data().to_vec::<f32>().unwrap());
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "momentum {momentum:?}, decay {decay:?}, {n} values, step {step}"
                    );
                }
            }
        }
    }
}
