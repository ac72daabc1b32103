//! Channel concatenation of feature maps as one autodiff operation on the CPU backend.
//!
//! Burn's `cat` hands each input, in the backward pass, a strided view into the output's
//! gradient. A map that several concatenations read (every earlier layer of a DenseNet block)
//! then has its gradient summed from those views, and Burn adds views element by element
//! through a strided index iterator: 12% of a DenseNet-BC-100 training step, with the copies of
//! the concatenation another 12%. Here each input's gradient is its own contiguous tensor, cut
//! from the output gradient by one copy per batch item (an input's channels are one run of
//! `c·H·W` values there), so the sums that follow take the vectorised contiguous path.

use super::{f32s, prim, whole, wrap_rank, Ad, AdTensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata};
use nasc_runtime::cpu::is;
use rayon::prelude::*;

/// `[B, ΣCᵢ, H, W]` from maps `[B, Cᵢ, H, W]`, in order; Burn's `cat` off the CPU backend, in
/// another dtype, or for more than four maps.
pub fn concat<B: Backend>(parts: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
    let cpu = parts.iter().all(|t| t.dtype() == DType::F32);
    if cpu && is::<B, Ad>() {
        match parts.len() {
            2 => return tracked::<B, 2>(parts),
            3 => return tracked::<B, 3>(parts),
            4 => return tracked::<B, 4>(parts),
            _ => {}
        }
    }
    if cpu && is::<B, Flex>() && !parts.is_empty() {
        let parts: Vec<FlexTensor> = parts.into_iter().map(prim::<B, FlexTensor, 4>).collect();
        return wrap_rank::<B, _, 4>(join(&parts.iter().collect::<Vec<_>>()));
    }
    Tensor::cat(parts, 1)
}

fn tracked<B: Backend, const N: usize>(parts: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
    let parts: [AdTensor; N] = match parts.into_iter().map(prim::<B, AdTensor, 4>).collect::<Vec<_>>().try_into() {
        Ok(parts) => parts,
        Err(_) => unreachable!("the caller matched the count"),
    };
    let y = join(&parts.iter().map(|p| &p.primitive).collect::<Vec<_>>());
    let channels = parts.each_ref().map(|p| p.primitive.shape().dims::<4>()[1]);
    let out = match ConcatOp
        .prepare::<NoCheckpointing>(parts.each_ref().map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(channels.to_vec(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    wrap_rank::<B, _, 4>(out)
}

/// The maps' channels one after another, item by item.
fn join(parts: &[&FlexTensor]) -> FlexTensor {
    let [b, _, h, w] = parts[0].shape().dims::<4>();
    let plane = h * w;
    let values: Vec<_> = parts.iter().map(|p| f32s(p)).collect();
    let total: usize = parts.iter().map(|p| p.shape().dims::<4>()[1]).sum();
    let mut y: Vec<f32> = Vec::with_capacity(b * total * plane);
    y.spare_capacity_mut().par_chunks_mut((total * plane).max(1)).enumerate().for_each(|(item, out)| {
        let mut at = 0;
        for v in &values {
            let run = v.len() / b.max(1);
            for (d, &s) in out[at..at + run].iter_mut().zip(&v[item * run..][..run]) {
                d.write(s);
            }
            at += run;
        }
    });
    // SAFETY: each item's chunk is filled run after run, `total·H·W` values in all.
    unsafe { y.set_len(b * total * plane) };
    FlexTensor::from_data(TensorData::new(y, [b, total, h, w]))
}

#[derive(Debug)]
struct ConcatOp;

impl<const N: usize> Backward<Flex, N> for ConcatOp {
    /// Each input's channel count.
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut dy = grads.consume::<Flex>(&ops.node);
        if !whole(&dy) {
            dy = dy.to_contiguous();
        }
        let [b, total, h, w] = dy.shape().dims::<4>();
        let plane = h * w;
        let dys = f32s(&dy);
        let mut first = 0;
        for (parent, &c) in ops.parents.iter().zip(&ops.state) {
            if let Some(node) = parent {
                let mut dx: Vec<f32> = Vec::with_capacity(b * c * plane);
                dx.spare_capacity_mut().par_chunks_mut((c * plane).max(1)).enumerate().for_each(|(item, out)| {
                    let from = &dys[(item * total + first) * plane..][..c * plane];
                    for (d, &s) in out.iter_mut().zip(from) {
                        d.write(s);
                    }
                });
                // SAFETY: one chunk per item, each filled from its run of the output gradient.
                unsafe { dx.set_len(b * c * plane) };
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [b, c, h, w])));
            }
            first += c;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against Burn's `cat`: the output and each input's gradient.
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn close<const D: usize>(ours: Tensor<Flex, D>, theirs: Tensor<Flex, D>, what: &str) {
        super::super::assert_close(ours, theirs, Tolerance::relative(1e-6).set_single_precision_absolute(1e-7), what);
    }

    #[test]
    fn concatenation_matches_burn_cat_forward_and_backward() {
        let device = Default::default();
        // Channel counts per part; five parts take Burn's own path.
        for (n, channels) in [vec![3, 5], vec![1, 2, 4], vec![2, 2, 1, 3], vec![1, 1, 1, 1, 2]].into_iter().enumerate()
        {
            <Ad as Backend>::seed(&device, 300 + n as u64);
            let (b, h, w) = (3, 4, 5);
            let xs: Vec<Tensor<Ad, 4>> = channels
                .iter()
                .map(|&c| Tensor::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device).require_grad())
                .collect();
            // The first map read by a second concatenation too, as in a DenseNet block: its
            // gradient is the sum of two.
            let ours = concat(xs.clone());
            let ours2 = concat(vec![xs[0].clone(), xs[1].clone()]);
            let theirs = Tensor::cat(xs.clone(), 1);
            let theirs2 = Tensor::cat(vec![xs[0].clone(), xs[1].clone()], 1);
            let case = format!("{channels:?}");
            close(ours.clone().inner(), theirs.clone().inner(), &format!("{case} output"));
            let r = Tensor::<Ad, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let r2 = Tensor::<Ad, 4>::random(ours2.dims(), Distribution::Normal(0.0, 1.0), &device);
            let g1 = ((ours * r.clone()).sum() + (ours2 * r2.clone()).sum()).backward();
            let g2 = ((theirs * r).sum() + (theirs2 * r2).sum()).backward();
            for (i, x) in xs.iter().enumerate() {
                close(x.grad(&g1).unwrap(), x.grad(&g2).unwrap(), &format!("{case} gradient {i}"));
            }
            let inner = concat(xs.iter().map(|x| x.clone().inner()).collect());
            close(inner, Tensor::cat(xs.iter().map(|x| x.clone().inner()).collect(), 1), &format!("{case} inference"));
        }
    }

    #[test]
    fn a_transposed_input_is_read_in_its_logical_order() {
        let device = Default::default();
        <Ad as Backend>::seed(&device, 310);
        let a = Tensor::<Ad, 4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let t = Tensor::<Ad, 4>::random([2, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device).swap_dims(2, 3);
        close(concat(vec![a.clone(), t.clone()]).inner(), Tensor::cat(vec![a, t], 1).inner(), "transposed");
    }
}
