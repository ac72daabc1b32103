//! The canonical structural form of a checked graph and its stable hash: what "the same network" means.
//! It reads only the graph (names, formatting and block factoring are already gone there) and must stay stable across runs and machines, because hashes are stored.

use std::fmt::Write;

use nasc_lang::check::{Graph, NodeId, Op};

/// Bumped whenever the structural form or the hash changes, so that an archive written by an
/// older nasc is refused instead of silently never matching.
pub const FORM_VERSION: u32 = 1;

/// The network's live operations in canonical order.
///
/// Order: a depth-first walk from the output that visits a node's operands before the node,
/// the flow first; the operands of `add` and `mul` (which commute) are visited in the order
/// of their structural subtree hashes, so `y |> add(x)` and `x |> add(y)` are one network.
/// Dead operations (computed but used by nothing on the way to the output) are left out, and
/// so is `identity`, which computes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    /// Graph node ids in canonical order; the input comes first.
    pub order: Vec<NodeId>,
    /// The operands of position `p` are `operands[starts[p]..starts[p + 1]]`, as positions.
    starts: Vec<u32>,
    operands: Vec<u32>,
    /// The operation at position `p` is `texts[spans[p].0..spans[p].1]`.
    texts: String,
    spans: Vec<(u32, u32)>,
}

impl Structure {
    /// Live operations, the input included.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The positions of the operands of the operation at `pos` (all smaller than `pos`).
    pub fn inputs(&self, pos: usize) -> &[u32] {
        &self.operands[self.starts[pos] as usize..self.starts[pos + 1] as usize]
    }

    /// The operation at `pos` in the language's spelling (`conv(64, k=3)`).
    pub fn op(&self, pos: usize) -> &str {
        let (a, b) = self.spans[pos];
        &self.texts[a as usize..b as usize]
    }
}

/// The structure of `graph`: see [`Structure`]. Linear in the graph's size, no recursion.
pub fn structure(graph: &Graph) -> Structure {
    let nodes = &graph.nodes;
    let n = nodes.len();
    // Every operation's text, once, in one buffer.
    let mut texts = String::with_capacity(n * 24);
    let mut spans = Vec::with_capacity(n);
    for node in nodes {
        let a = texts.len() as u32;
        let _ = write!(texts, "{}", node.op);
        spans.push((a, texts.len() as u32));
    }
    let text = |i: usize| &texts[spans[i].0 as usize..spans[i].1 as usize];

    // `identity` forwards its operand; resolve chains of them, in topological order. Operand
    // ids are clamped below their node so that no graph, however made, sends the walk in a loop.
    let mut through: Vec<NodeId> = (0..n).collect();
    for (i, node) in nodes.iter().enumerate() {
        if matches!(node.op, Op::Identity) && node.inputs.len() == 1 && node.inputs[0] < i {
            through[i] = through[node.inputs[0]];
        }
    }
    let operand = |i: NodeId, j: NodeId| through[j.min(i.saturating_sub(1))];

    // Merkle hashes (operation folded with operands' hashes), only to order commuting operands;
    // then every node's operands in walk order, flat.
    let mut merkle: Vec<u64> = Vec::with_capacity(n);
    let mut starts: Vec<u32> = Vec::with_capacity(n + 1);
    let mut flat: Vec<u32> = Vec::with_capacity(n * 2);
    for (i, node) in nodes.iter().enumerate() {
        starts.push(flat.len() as u32);
        let from = flat.len();
        flat.extend(node.inputs.iter().map(|&j| operand(i, j) as u32));
        let commutes = matches!(node.op, Op::Add | Op::Mul);
        if commutes {
            flat[from..].sort_by_key(|&j| (merkle[j as usize], j));
        }
        let h = flat[from..].iter().fold(hash_bytes(text(i).as_bytes()), |h, &j| combine(h, merkle[j as usize]));
        merkle.push(if through[i] != i { merkle[through[i]] } else { h });
    }
    starts.push(flat.len() as u32);
    let ops_of = |i: NodeId| &flat[starts[i] as usize..starts[i + 1] as usize];

    let mut position: Vec<u32> = vec![u32::MAX; n];
    let mut order = Vec::with_capacity(n);
    let mut out_starts = vec![0u32];
    let mut out_operands = Vec::with_capacity(flat.len());
    let mut out_texts = String::with_capacity(texts.len());
    let mut out_spans = Vec::with_capacity(n);
    let mut emit = |node: NodeId, position: &mut Vec<u32>| {
        position[node] = order.len() as u32;
        order.push(node);
        out_operands.extend(ops_of(node).iter().map(|&j| position[j as usize]));
        out_starts.push(out_operands.len() as u32);
        let a = out_texts.len() as u32;
        out_texts.push_str(text(node));
        out_spans.push((a, out_texts.len() as u32));
    };
    if n > 0 {
        // The input is always first, live or not, so that every form starts the same way.
        emit(0, &mut position);
        let out = through[graph.output.min(n - 1)];
        // Iterative post-order: (node, next operand to visit).
        let mut stack: Vec<(NodeId, usize)> = Vec::new();
        if position[out] == u32::MAX {
            stack.push((out, 0));
        }
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            if let Some(&op) = ops_of(node).get(*next) {
                *next += 1;
                if position[op as usize] == u32::MAX {
                    stack.push((op as usize, 0));
                }
                continue;
            }
            stack.pop();
            if position[node] == u32::MAX {
                emit(node, &mut position);
            }
        }
    }
    Structure { order, starts: out_starts, operands: out_operands, texts: out_texts, spans: out_spans }
}

impl Structure {
    /// The canonical text: one line per live operation, `%3 = conv(64, k=3)(%2)`, operands by
    /// canonical position, the first line the input with its shape (`%0 = in [3,32,32]`).
    /// Equal text, equal network.
    pub fn text(&self, graph: &Graph) -> String {
        let mut s = String::with_capacity(self.len() * 32);
        for pos in 0..self.len() {
            s.push('%');
            push_number(&mut s, pos);
            s.push_str(" = ");
            s.push_str(self.op(pos));
            // The input's shape is the binding's: a hash is only ever compared under one.
            if pos == 0 {
                if let Some(node) = graph.nodes.get(self.order[0]) {
                    let _ = write!(s, " {}", node.shape);
                }
            }
            let ins = self.inputs(pos);
            if !ins.is_empty() {
                s.push('(');
                for (k, &i) in ins.iter().enumerate() {
                    if k > 0 {
                        s.push_str(", ");
                    }
                    s.push('%');
                    push_number(&mut s, i as usize);
                }
                s.push(')');
            }
            s.push('\n');
        }
        s
    }
}

/// Appends `n` in decimal; `write!` costs more than the rest of a line together.
fn push_number(s: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend(digits[at..].iter().map(|&d| d as char));
}

/// A structural hash: 128 bits of the canonical text, stable across runs and machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StructuralHash(pub u128);

impl StructuralHash {
    pub fn of_text(text: &str) -> StructuralHash {
        let mut a: u64 = 0x243f_6a88_85a3_08d3 ^ u64::from(FORM_VERSION);
        let mut b: u64 = 0x1319_8a2e_0370_7344;
        let bytes = text.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            a = (a ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
            b = (b ^ w.rotate_left(32)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(31);
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        let w = u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 3);
        a = mix(a ^ w ^ b.rotate_left(17));
        b = mix(b ^ w.rotate_left(32) ^ a);
        StructuralHash((u128::from(a) << 64) | u128::from(b))
    }

    /// 32 lowercase hex digits.
    pub fn hex(self) -> String {
        format!("{:032x}", self.0)
    }

    pub fn from_hex(s: &str) -> Option<StructuralHash> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(StructuralHash)
    }
}

impl std::fmt::Display for StructuralHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// SplitMix64's finaliser: every input bit affects every output bit.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Folds `x` into the running hash `h` (order matters).
pub(crate) fn combine(h: u64, x: u64) -> u64 {
    mix(h.rotate_left(23) ^ x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// A stable 64-bit hash of bytes (FNV-1a, then mixed).
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}
