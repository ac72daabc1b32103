//! The in-memory similarity index over an archive's signatures: LSH bands to find candidates, MinHash to rank them.
//! It answers "which archived networks are most like this one" in time that does not grow with the archive; it never touches disk.

use std::collections::HashMap;

use minhash_rs::index::{BandEntry, LshIndex, NoStore};
use minhash_rs::prelude::MinHasher;

use super::{Signature, BANDS, PERMUTATIONS};

/// A band bucket holding more entries than this is *hot*: its entries share eight registers
/// with the query, so they are all alike, and a sample of this many is enough to rank. This
/// bounds a query's work when an archive holds thousands of variants of one network.
const HOT_BUCKET: usize = 128;

/// At most this many candidates (or as many as asked for, if more), those colliding with the
/// query in most bands, are scored by their full signatures.
const REFINE: usize = 64;

/// One archived network found like the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The entry's id in the archive (its position, from 0).
    pub id: u32,
    /// Estimated Jaccard similarity of the two networks' shingle sets, in [0, 1].
    pub similarity: f64,
}

/// Signatures and the LSH band tables over them.
///
/// The bulk lives in the compressed band tables that `minhash_rs::index::LshIndex` builds (one
/// sorted run of `(band hash, id)` per band); entries added since the last build live in a
/// small hash map per band and are merged in when it grows past a quarter of the bulk, so an
/// append costs amortised O(log n) and a query stays a few binary searches per band.
pub struct Index {
    signatures: Vec<Signature>,
    /// Entries `0..built` are in the band tables; the rest are in `recent`.
    built: usize,
    band_starts: [u32; BANDS],
    band_entries: Vec<BandEntry>,
    recent: Vec<HashMap<u64, Vec<u32>>>,
}

impl Default for Index {
    fn default() -> Self {
        Index::new(Vec::new())
    }
}

impl Index {
    /// An index over `signatures`, whose ids are their positions.
    pub fn new(signatures: Vec<Signature>) -> Index {
        let mut index = Index {
            signatures,
            built: 0,
            band_starts: [0; BANDS],
            band_entries: Vec::new(),
            recent: vec![HashMap::new(); BANDS],
        };
        index.rebuild();
        index
    }

    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    pub fn signature(&self, id: u32) -> Option<&Signature> {
        self.signatures.get(id as usize)
    }

    /// Adds a signature; its id is the previous length.
    pub fn push(&mut self, signature: Signature) -> u32 {
        let id = self.signatures.len() as u32;
        for (b, h) in signature.band_hashes::<BANDS>().into_iter().enumerate() {
            self.recent[b].entry(h).or_default().push(id);
        }
        self.signatures.push(signature);
        if self.signatures.len() - self.built > 1024 + self.built / 4 {
            self.rebuild();
        }
        id
    }

    fn rebuild(&mut self) {
        let repr =
            LshIndex::<Signature, PERMUTATIONS, BANDS, NoStore>::from_signatures(self.signatures.iter().copied())
                .into_repr();
        self.band_starts = repr.band_starts;
        self.band_entries = repr.band_entries;
        self.built = self.signatures.len();
        for r in &mut self.recent {
            r.clear();
        }
    }

    /// The `k` archived signatures most like `query`, most similar first (ties: lower id first).
    ///
    /// Approximate, as LSH is: an entry is found when it agrees with the query on all eight
    /// registers of at least one of the sixteen bands, which an entry of similarity s does with
    /// probability 1 − (1 − s⁸)¹⁶: 0.9999 at s = 0.9, 0.95 at 0.8, 0.61 at 0.7, 0.06 at 0.5.
    pub fn nearest(&self, query: &Signature, k: usize) -> Vec<Hit> {
        if k == 0 || self.signatures.is_empty() {
            return Vec::new();
        }
        let hashes = query.band_hashes::<BANDS>();
        let mut scratch: Vec<u32> = Vec::new();
        for (b, &qh) in hashes.iter().enumerate() {
            let start = self.band_starts[b] as usize;
            let end = if b + 1 < BANDS { self.band_starts[b + 1] as usize } else { self.band_entries.len() };
            let band = &self.band_entries[start.min(end)..end];
            let lo = band.partition_point(|e| e.band_hash < qh);
            let run = band[lo..].iter().take_while(|e| e.band_hash == qh).take(HOT_BUCKET);
            scratch.extend(run.map(|e| e.sig_id));
            if let Some(ids) = self.recent[b].get(&qh) {
                scratch.extend(ids.iter().take(HOT_BUCKET));
            }
        }
        // Count collisions per id, then score the most-colliding ids by their signatures.
        scratch.sort_unstable();
        let mut counted: Vec<(u32, u32)> = Vec::new();
        for run in scratch.chunk_by(|a, b| a == b) {
            counted.push((run.len() as u32, run[0]));
        }
        let refine = REFINE.max(k);
        if counted.len() > refine {
            counted.select_nth_unstable_by(refine - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            counted.truncate(refine);
        }
        let mut hits: Vec<Hit> = counted
            .iter()
            .filter_map(|&(_, id)| {
                let sig = self.signatures.get(id as usize)?;
                Some(Hit { id, similarity: query.estimate_jaccard_index(sig) })
            })
            .collect();
        hits.sort_unstable_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
        hits.truncate(k);
        hits
    }
}
