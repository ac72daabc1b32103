//! Parameter initialisation as PyTorch does it for the same layer, drawn on the host from a seed.
//! It must not depend on the backend: one seed gives the same starting weights on CPU, wgpu and CUDA.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A stream of initial values. Every layer draws from it in node order, so a
/// graph and a seed fix every parameter.
pub struct Init {
    rng: ChaCha8Rng,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        Init { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// A value in [0, 1) with 24 random bits, as an f32 holds them.
    fn unit(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `n` values from U(-bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        let b = bound as f32;
        (0..n).map(|_| (2.0 * self.unit() - 1.0) * b).collect()
    }

    /// `n` values from N(0, std²) (Box-Muller).
    pub fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let u1 = 1.0 - self.unit() as f64; // (0, 1]: the logarithm stays finite
            let u2 = self.unit() as f64;
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = 2.0 * std::f64::consts::PI * u2;
            out.push((r * t.cos()) as f32);
            if out.len() < n {
                out.push((r * t.sin()) as f32);
            }
        }
        out
    }

    /// PyTorch's default for `nn.Conv2d` and `nn.Linear` weights,
    /// `kaiming_uniform_(a=√5)`: U(±1/√fan_in). Their biases use the same bound.
    pub fn fan_in_uniform(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        self.uniform(n, 1.0 / (fan_in.max(1) as f64).sqrt())
    }

    /// `xavier_uniform_`: U(±√(6 / (fan_in + fan_out))).
    pub fn xavier_uniform(&mut self, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
        self.uniform(n, (6.0 / (fan_in + fan_out).max(1) as f64).sqrt())
    }
}

/// A trainable parameter holding `values` in `shape`.
pub fn param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_data(TensorData::new(values, shape), device)
}

pub fn zeros<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Param<Tensor<B, D>> {
    param(vec![0.0; shape.iter().product()], shape, device)
}
