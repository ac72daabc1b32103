//! The archive: every network seen so far (structural hash, signature, name), kept in one append-only file, and the verdicts that judge a candidate against it.
//! The only part of the front end that does I/O, and only inside the folder it is given; a damaged tail (an interrupted append) is dropped, never trusted.
//!
//! On disk, `DIR/archive.bin`, little-endian:
//!
//!   header (64 bytes): magic "NASCARCH", file format u32, FORM_VERSION u32, SHINGLE_K u32,
//!     PERMUTATIONS u32, register bits u32, 4 bytes zero, then the binding's C, H, W and
//!     classes as u64.
//!   records, one per entry, the id being the record's position:
//!     length u32 (of what follows), structural hash u128, operations u32,
//!     PERMUTATIONS registers u16, then the entry's name in UTF-8 (may be empty).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::index::Index;
use super::{Fingerprint, Signature, StructuralHash, FORM_VERSION, PERMUTATIONS, SHINGLE_K};
use nasc_lang::check::Binding;

const FILE: &str = "archive.bin";
const MAGIC: &[u8; 8] = b"NASCARCH";
const FILE_FORMAT: u32 = 1;
const HEADER: usize = 64;
const FIXED: usize = 16 + 4 + 2 * PERMUTATIONS;
/// Names longer than this are cut (at a character boundary) when stored.
const MAX_NAME: usize = 4096;

/// One archived network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: u32,
    #[serde(serialize_with = "hex")]
    pub hash: StructuralHash,
    pub operations: u32,
    /// What the network was added as: a program's path, a candidate's id in a search run.
    pub name: String,
}

fn hex<S: serde::Serializer>(h: &StructuralHash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&h.hex())
}

/// An archived network found like a candidate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Match {
    pub id: u32,
    pub name: String,
    #[serde(serialize_with = "hex")]
    pub hash: StructuralHash,
    /// Estimated Jaccard similarity of the shingle sets; exactly 1 for the same structure.
    pub similarity: f64,
}

/// The novelty part of the verdict taxonomy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoveltyVerdict {
    /// The same structure is archived.
    Duplicate,
    /// An archived network is at least as similar as the threshold.
    NearDuplicate,
    New,
}

/// How a candidate stands against the archive.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Novelty {
    pub verdict: NoveltyVerdict,
    /// The most similar archived network found, if any was.
    pub nearest: Option<Match>,
    /// The near-duplicate threshold the verdict was judged at.
    pub threshold: f64,
}

/// Why an archive could not be opened or written.
#[derive(Debug)]
pub enum ArchiveError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file does not start like an archive.
    NotAnArchive {
        path: PathBuf,
    },
    /// Written by a nasc whose fingerprints differ from this one's.
    Incompatible {
        path: PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    /// The archive holds fingerprints made under another binding.
    BindingMismatch {
        path: PathBuf,
        archive: Binding,
        requested: Binding,
    },
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            ArchiveError::NotAnArchive { path } => {
                write!(
                    f,
                    "{} is not a nasc archive (it does not start with `NASCARCH` and a whole {HEADER}-byte header)",
                    path.display()
                )
            }
            ArchiveError::Incompatible { path, what, found, expected } => write!(
                f,
                "{} was written with {what} {found}, and this nasc uses {expected}: its fingerprints \
                 cannot be compared; rebuild the archive with `nasc archive add`",
                path.display()
            ),
            ArchiveError::BindingMismatch { path, archive, requested } => write!(
                f,
                "{} holds networks checked under input {} with {} classes, not input {} with {} \
                 classes: structural hashes depend on the binding; use an archive per dataset",
                path.display(),
                dims(archive.input),
                archive.classes,
                dims(requested.input),
                requested.classes
            ),
        }
    }
}

impl std::error::Error for ArchiveError {}

fn dims([c, h, w]: [u64; 3]) -> String {
    format!("[{c},{h},{w}]")
}

/// The networks seen so far, under one binding: exact lookup by structural hash, nearest
/// neighbours by signature. Appends go to disk at once (when the archive has a folder);
/// one process writes an archive at a time.
pub struct Archive {
    path: Option<PathBuf>,
    binding: Binding,
    entries: Vec<Entry>,
    by_hash: HashMap<StructuralHash, u32>,
    index: Index,
    /// Bytes of the file that hold whole records; a torn tail past it is cut before appending.
    valid_len: u64,
    file: Option<File>,
}

impl Archive {
    /// An empty archive that lives in memory only.
    pub fn in_memory(binding: Binding) -> Archive {
        Archive {
            path: None,
            binding,
            entries: Vec::new(),
            by_hash: HashMap::new(),
            index: Index::default(),
            valid_len: 0,
            file: None,
        }
    }

    /// Opens the archive in `dir`, creating the folder and an empty archive under `binding`
    /// if there is none. An existing archive must have been made under `binding`.
    pub fn open_or_create(dir: &Path, binding: Binding) -> Result<Archive, ArchiveError> {
        let path = dir.join(FILE);
        if path.exists() {
            let a = Archive::open(dir)?;
            if a.binding != binding {
                return Err(ArchiveError::BindingMismatch { path, archive: a.binding, requested: binding });
            }
            return Ok(a);
        }
        let io = |error| ArchiveError::Io { path: path.clone(), error };
        fs::create_dir_all(dir).map_err(|error| ArchiveError::Io { path: dir.to_path_buf(), error })?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for v in [FILE_FORMAT, FORM_VERSION, SHINGLE_K as u32, PERMUTATIONS as u32, 16, 0] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        for v in [binding.input[0], binding.input[1], binding.input[2], binding.classes] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        // Create beside and rename, so a reader never sees half a header.
        let tmp = dir.join(format!("{FILE}.tmp"));
        fs::write(&tmp, &header).map_err(|error| ArchiveError::Io { path: tmp.clone(), error })?;
        fs::rename(&tmp, &path).map_err(io)?;
        let mut a = Archive::in_memory(binding);
        a.path = Some(path);
        a.valid_len = HEADER as u64;
        Ok(a)
    }

    /// Opens the archive in `dir` and loads it: entries, hash table and index.
    pub fn open(dir: &Path) -> Result<Archive, ArchiveError> {
        let path = dir.join(FILE);
        let bytes = fs::read(&path).map_err(|error| ArchiveError::Io { path: path.clone(), error })?;
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(ArchiveError::NotAnArchive { path });
        }
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        for (what, at, expected) in [
            ("archive format", 8, FILE_FORMAT),
            ("structural form version", 12, FORM_VERSION),
            ("shingle size k", 16, SHINGLE_K as u32),
            ("MinHash permutations", 20, PERMUTATIONS as u32),
            ("register bits", 24, 16),
        ] {
            let found = u32_at(at);
            if found != expected {
                return Err(ArchiveError::Incompatible { path, what, found, expected });
            }
        }
        let binding = Binding { input: [u64_at(32), u64_at(40), u64_at(48)], classes: u64_at(56) };

        let mut entries = Vec::new();
        let mut signatures = Vec::new();
        let mut by_hash = HashMap::new();
        let mut at = HEADER;
        while at + 4 <= bytes.len() {
            let len = u32_at(at) as usize;
            let body = at + 4;
            if !(FIXED..=FIXED + MAX_NAME).contains(&len) || body + len > bytes.len() {
                break;
            }
            let mut h = [0u8; 16];
            h.copy_from_slice(&bytes[body..body + 16]);
            let hash = StructuralHash(u128::from_le_bytes(h));
            let operations = u32_at(body + 16);
            let mut words = [0u16; PERMUTATIONS];
            for (i, w) in words.iter_mut().enumerate() {
                let o = body + 20 + 2 * i;
                *w = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
            }
            let name = String::from_utf8_lossy(&bytes[body + FIXED..body + len]).into_owned();
            let id = entries.len() as u32;
            by_hash.entry(hash).or_insert(id);
            entries.push(Entry { id, hash, operations, name });
            signatures.push(Signature::from_words(words));
            at = body + len;
        }
        Ok(Archive {
            path: Some(path),
            binding,
            entries,
            by_hash,
            index: Index::new(signatures),
            valid_len: at as u64,
            file: None,
        })
    }

    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// Bytes at the end of the file that [`Archive::open`] left out because they are not whole
    /// entries (an append that was interrupted, or a damaged file). The next append overwrites
    /// them.
    pub fn ignored_tail(&self) -> u64 {
        match &self.path {
            Some(path) => fs::metadata(path).map_or(0, |m| m.len().saturating_sub(self.valid_len)),
            None => 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The archive file, for archives on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The entry with this structural hash (the first added, if several were).
    pub fn find(&self, hash: StructuralHash) -> Option<&Entry> {
        self.by_hash.get(&hash).and_then(|&id| self.entries.get(id as usize))
    }

    /// Records a network under `name` and returns its id and whether it was new. A structure
    /// already archived is not added again: the existing entry's id is returned.
    pub fn add(&mut self, fp: &Fingerprint, name: &str) -> Result<(u32, bool), ArchiveError> {
        if let Some(&id) = self.by_hash.get(&fp.hash) {
            return Ok((id, false));
        }
        let mut cut = name.len().min(MAX_NAME);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let name = &name[..cut];
        if let Some(path) = &self.path {
            let mut record = Vec::with_capacity(4 + FIXED + name.len());
            record.extend_from_slice(&((FIXED + name.len()) as u32).to_le_bytes());
            record.extend_from_slice(&fp.hash.0.to_le_bytes());
            record.extend_from_slice(&fp.operations.to_le_bytes());
            for w in fp.signature.as_words() {
                record.extend_from_slice(&w.to_le_bytes());
            }
            record.extend_from_slice(name.as_bytes());
            let io = |error| ArchiveError::Io { path: path.clone(), error };
            if self.file.is_none() {
                let f = OpenOptions::new().write(true).open(path).map_err(io)?;
                // Cut a torn record left by an interrupted append, then append after it.
                f.set_len(self.valid_len).map_err(io)?;
                drop(f);
                self.file = Some(OpenOptions::new().append(true).open(path).map_err(io)?);
            }
            let file = self.file.as_mut().expect("opened above");
            file.write_all(&record).map_err(io)?;
            self.valid_len += record.len() as u64;
        }
        let id = self.entries.len() as u32;
        self.entries.push(Entry { id, hash: fp.hash, operations: fp.operations, name: name.to_string() });
        self.by_hash.insert(fp.hash, id);
        self.index.push(fp.signature);
        Ok((id, true))
    }

    /// The `k` archived networks most like `fp`, most similar first: an exact structural match
    /// first (similarity 1), then by estimated similarity. Approximate: see [`Index::nearest`].
    pub fn nearest(&self, fp: &Fingerprint, k: usize) -> Vec<Match> {
        let exact = self.by_hash.get(&fp.hash).copied();
        let mut out: Vec<Match> = exact.map(|id| self.matched(id, 1.0)).into_iter().collect();
        for hit in self.index.nearest(&fp.signature, k + 1) {
            if out.len() >= k {
                break;
            }
            if Some(hit.id) != exact {
                out.push(self.matched(hit.id, hit.similarity));
            }
        }
        out.truncate(k);
        out
    }

    fn matched(&self, id: u32, similarity: f64) -> Match {
        let e = &self.entries[id as usize];
        Match { id, name: e.name.clone(), hash: e.hash, similarity }
    }

    /// Judges a candidate: `duplicate` if its structure is archived, `near_duplicate` if an
    /// archived network is at least `threshold` similar, otherwise `new`.
    pub fn judge(&self, fp: &Fingerprint, threshold: f64) -> Novelty {
        let nearest = self.nearest(fp, 1).pop();
        let verdict = match &nearest {
            Some(m) if m.hash == fp.hash => NoveltyVerdict::Duplicate,
            Some(m) if m.similarity >= threshold => NoveltyVerdict::NearDuplicate,
            _ => NoveltyVerdict::New,
        };
        Novelty { verdict, nearest, threshold }
    }
}
