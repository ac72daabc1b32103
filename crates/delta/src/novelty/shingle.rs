//! Shingles of a network's structure: the multiset of its k-grams along graph edges, hashed, the set MinHash signs.
//! Pure function of the canonical structure and shapes; the hashing must stay stable, since signatures are stored.

use super::structure::{combine, hash_bytes, mix, Structure};
use nasc_lang::check::{Graph, Op, Shape};

/// The shingles of a structure: for every live operation, its k-gram, that is the operation
/// with everything up to `k - 1` edges above it (operands, their operands, …), as one hash.
///
/// A k-gram is a Weisfeiler–Lehman label of depth `k - 1`: the node's own label (operation
/// and output shape) folded with its operands' labels of the previous depth, in operand order.
/// Repeated k-grams are numbered (the second `conv-bn-relu` is a different shingle from the
/// first), so the set's Jaccard index is the multiset's, and a network with more of the same
/// stages is not mistaken for its shallower sibling.
pub fn shingles(graph: &Graph, s: &Structure, k: usize) -> Vec<u64> {
    let n = s.len();
    let mut labels: Vec<u64> = (0..n)
        .map(|pos| combine(hash_bytes(s.op(pos).as_bytes()), shape_hash(graph.nodes[s.order[pos]].shape)))
        .collect();
    let mut next = vec![0u64; n];
    let mut operands = Vec::new();
    for _ in 1..k.max(1) {
        for (pos, slot) in next.iter_mut().enumerate() {
            operands.clear();
            operands.extend(s.inputs(pos).iter().map(|&j| labels.get(j as usize).copied().unwrap_or(0)));
            // Commuting operands are folded in label order: a change upstream may reorder
            // them in the walk, and must not change the k-gram of the merge for that alone.
            if matches!(graph.nodes[s.order[pos]].op, Op::Add | Op::Mul) {
                operands.sort_unstable();
            }
            *slot = operands.iter().fold(labels[pos], |h, &x| combine(h, x));
        }
        std::mem::swap(&mut labels, &mut next);
    }
    // Number the repeats: equal labels become (label, 0), (label, 1), …
    labels.sort_unstable();
    let mut out = Vec::with_capacity(labels.len());
    let mut run = 0u64;
    for (i, &l) in labels.iter().enumerate() {
        run = if i > 0 && labels[i - 1] == l { run + 1 } else { 0 };
        out.push(mix(combine(l, run)));
    }
    out
}

fn shape_hash(shape: Shape) -> u64 {
    let (tag, dims) = match shape {
        Shape::Map { c, h, w } => (1, [c, h, w]),
        Shape::Tokens { n, d } => (2, [n, d, 0]),
        Shape::Vector { d } => (3, [d, 0, 0]),
    };
    dims.iter().fold(tag, |h, &d| combine(h, d))
}
