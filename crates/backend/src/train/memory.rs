//! How much memory a training step of a checked graph will want, before it is built.
//! An estimate from the graph's shapes alone; what the machine has is `nasc_runtime::memory`'s.

use nasc_lang::check::Graph;

/// Bytes a training step is expected to hold: every operation's output for
/// the batch (kept for the backward pass) and as much again for their
/// gradients, plus the parameters four times (weights, gradients, and two
/// optimizer moments for Adam; SGD needs fewer).
pub fn estimate(graph: &Graph, batch: usize) -> u64 {
    let activations = graph.activation_bytes().saturating_mul(batch as u64).saturating_mul(2);
    let input = graph.nodes[0].shape.elements().saturating_mul(4 * batch as u64);
    activations.saturating_add(input).saturating_add(graph.params().saturating_mul(16))
}
