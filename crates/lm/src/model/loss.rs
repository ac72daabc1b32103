//! The causal language-model loss: mean cross-entropy of next-token predictions over labelled positions, in Burn's ops.
//! It is the reference the fused training kernel (`kernels::train_ops::head_loss`) is held to, and what the decoder's `loss` takes off the fused path.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Labels that take no part in the loss.
pub const IGNORE: i64 = -100;

/// Mean cross-entropy of `logits` (`[batch, tokens, vocab]`) against `labels` (row-major,
/// `batch * tokens`, already aligned: the label at a position is the token it should
/// predict), skipping [`IGNORE`]d positions. Returns the loss and the number of counted positions;
/// with none counted the loss is zero.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> (Tensor<B, 1>, usize) {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let idx: Vec<i64> = labels.iter().map(|&l| if l == IGNORE { 0 } else { l }).collect();
    let mask: Vec<f32> = labels.iter().map(|&l| if l == IGNORE { 0.0 } else { 1.0 }).collect();
    let counted = mask.iter().filter(|&&m| m > 0.0).count();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [b * t, 1]), &device);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [b * t]), &device);
    let picked = logp.gather(1, idx).reshape([b * t]);
    let loss = (picked * mask).sum().neg().div_scalar(counted.max(1) as f64);
    (loss, counted)
}
