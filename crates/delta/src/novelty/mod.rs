//! Novelty: whether a checked candidate is a network already seen (`duplicate`), nearly seen
//! (`near_duplicate`), or new. Works on checked graphs only, never on text; the archive is the one part that touches disk.
//!
//! Three layers:
//!
//! - [`structure`]: the canonical structural form of a graph, with values renamed by
//!   position, blocks inlined, dead operations and `identity` dropped and commuting operands
//!   ordered, and its 128-bit [`StructuralHash`]. Programs that differ only by names,
//!   formatting, comments, statement order of independent branches or block factoring have
//!   the same form, hence the same hash: exact duplicates.
//! - [`shingle`]: the multiset of the network's k-grams along graph edges (k =
//!   [`SHINGLE_K`]), signed by MinHash ([`Signature`], [`PERMUTATIONS`] registers) so that the
//!   Jaccard similarity of two networks can be estimated from 256 bytes each.
//! - [`Archive`]: the networks seen so far, on disk, with an LSH band index ([`BANDS`] bands)
//!   so that finding the most similar ones does not scan the archive.
//!
//! A graph depends on the dataset binding (shapes, `classes`), and so do its hash and
//! signature: an archive records the binding it was made under and refuses fingerprints of
//! another.

pub mod archive;
pub mod index;
pub mod shingle;
pub mod structure;

pub use archive::{Archive, ArchiveError, Entry, Match, Novelty, NoveltyVerdict};
pub use index::{Hit, Index};
pub use structure::{structure, StructuralHash, Structure, FORM_VERSION};

use minhash_rs::prelude::{MinHash, MinHasher};
use nasc_lang::check::Graph;

/// Shingles are 3-grams: an operation with its operands and their operands. One changed
/// operation changes about five shingles (itself, its consumers, theirs): on ResNet-18 (68
/// operations) a one-operation change in the net body scores 0.86–0.92, a one-line change
/// inside a block, which repeats, 0.53–0.85, and a stride-2 stem 0.01. With k = 1 the
/// shingles are a bag of operations (ResNet-18 and PreAct-ResNet-18 would be 0.96 alike);
/// with k = 5 one change spreads over so many shingles that a one-operation change in the
/// net body of ResNet-18 drops to 0.72.
pub const SHINGLE_K: usize = 3;

/// MinHash registers per signature. 128 registers estimate a similarity of 0.9 within ±0.03
/// (one standard deviation), in 256 bytes of 16-bit registers.
pub const PERMUTATIONS: usize = 128;

/// LSH bands of 8 registers each. The band count sets where the index's S-curve rises:
/// a network of similarity s shares a band with the query with probability 1 − (1 − s⁸)¹⁶,
/// which is 0.06 at s = 0.5, 0.61 at 0.7, 0.95 at 0.8 and 0.9999 at 0.9: near-certain recall
/// around the default threshold, and few candidates from unrelated networks.
pub const BANDS: usize = 16;

/// The default near-duplicate threshold: a candidate whose estimated similarity to an
/// archived network is at least this is a `near_duplicate`.
///
/// At 0.95 about one shingle in forty differs on each side. On ResNet-18 (68 operations) that
/// catches trivia such as a dropout added before the classifier (0.95), but not a changed
/// activation or kernel in the stem (0.86–0.92), a stage added or removed (0.90), nor a
/// one-line change inside a block (0.53–0.85). A one-operation change counts for less in a
/// larger network: on MobileNetV2 (153 operations) swapping one top-level activation scores
/// 0.95–0.98, a near duplicate. The delta-code loop makes small diffs on purpose, so the
/// default refuses only what a one-epoch proxy could not tell apart; lower it (say 0.85) to
/// push the search towards larger moves. Below about 0.75 the index's recall falls (see
/// [`BANDS`]).
pub const DEFAULT_THRESHOLD: f64 = 0.95;

/// A MinHash signature of a network's shingles: 128 registers of 16 bits. Sixteen-bit
/// registers halve the archive and cost nothing measurable: two different registers agree
/// by accident once in 65,536.
pub type Signature = MinHash<u16, PERMUTATIONS>;

/// What novelty knows about one checked network.
#[derive(Clone, Debug, PartialEq)]
pub struct Fingerprint {
    pub hash: StructuralHash,
    pub signature: Signature,
    /// Live operations in the structural form (the input included).
    pub operations: u32,
}

/// The fingerprint of a checked graph under the binding it was checked with.
pub fn fingerprint(graph: &Graph) -> Fingerprint {
    let s = structure(graph);
    let hash = StructuralHash::of_text(&s.text(graph));
    // Collecting takes minhash-rs's batched path: the same registers as inserting one by one,
    // and faster.
    let signature: Signature = shingle::shingles(graph, &s, SHINGLE_K).into_iter().collect();
    Fingerprint { hash, signature, operations: s.len() as u32 }
}

/// The estimated Jaccard similarity of two fingerprints' shingle sets, in [0, 1]; 1 for equal
/// structural hashes.
pub fn similarity(a: &Fingerprint, b: &Fingerprint) -> f64 {
    if a.hash == b.hash {
        1.0
    } else {
        a.signature.estimate_jaccard_index(&b.signature)
    }
}
