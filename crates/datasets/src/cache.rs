//! The decoded-once cache: <cache_dir>/<key>-<split>.u8 (pixels, then u16 labels) and a JSON manifest beside it.
//! It must not hand out data it cannot vouch for: stale sources, a wrong size or checksum mean "rebuild".

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::formats::images;

/// Bumped whenever the layout of the data file or the manifest changes, so
/// old caches are rebuilt instead of misread.
const FORMAT: u32 = 1;

/// A file or folder a split is decoded from.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    pub path: PathBuf,
    /// A folder of images (stamped by its files) rather than one file.
    pub tree: bool,
}

impl Source {
    pub fn file(path: PathBuf) -> Self {
        Source { path, tree: false }
    }

    pub fn tree(path: PathBuf) -> Self {
        Source { path, tree: true }
    }
}

/// What the cache remembers of a source to notice that it changed: sizes
/// and modification times, and for a folder a digest of every file's
/// name, size and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    pub path: String,
    pub files: u64,
    pub bytes: u64,
    pub mtime_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

fn mtime_ns(meta: &fs::Metadata) -> u64 {
    // A clock before 1970 or a file system without times reads as 0: the
    // size and name still take part in the comparison.
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64)
}

/// Stamps a source; its path is recorded relative to `root`, so the same
/// data reached as `data/x` or `./data/x` stamps alike.
pub(crate) fn stamp(root: &Path, source: &Source) -> Result<SourceStamp, DataError> {
    let path = &source.path;
    let shown = path.strip_prefix(root).unwrap_or(path).display().to_string();
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, "cannot read metadata", e))?;
    if !source.tree {
        return Ok(SourceStamp { path: shown, files: 1, bytes: meta.len(), mtime_ns: mtime_ns(&meta), digest: None });
    }
    let mut hasher = Sha256::new();
    let (mut bytes, mut newest) = (0u64, 0u64);
    let files = images::walk(path)?;
    for file in &files {
        let meta = fs::metadata(file).map_err(|e| DataError::io(file, "cannot read metadata", e))?;
        let rel = file.strip_prefix(path).unwrap_or(file);
        let time = mtime_ns(&meta);
        hasher.update(format!("{}\0{}\0{}\n", rel.display(), meta.len(), time).as_bytes());
        bytes += meta.len();
        newest = newest.max(time);
    }
    Ok(SourceStamp {
        path: shown,
        files: files.len() as u64,
        bytes,
        mtime_ns: newest,
        digest: Some(hex(&hasher.finalize())),
    })
}

/// The manifest written beside each cache data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub dataset: String,
    pub split: String,
    /// How the samples were made from the sources (resolution, crop, filter).
    pub preprocessing: String,
    pub shape: [usize; 3],
    pub count: usize,
    pub classes: usize,
    pub class_names: Vec<String>,
    /// Size of the data file: count x (pixels per sample + 2 label bytes).
    pub data_bytes: u64,
    /// SHA-256 of the whole data file.
    pub sha256: String,
    pub sources: Vec<SourceStamp>,
}

/// What a fresh cache must match, computed from the sources as they are now.
pub(crate) struct Expect {
    pub dataset: String,
    pub split: String,
    pub preprocessing: String,
    pub shape: [usize; 3],
    /// Known before decoding for every dataset: fixed, or the class folders.
    pub class_names: Vec<String>,
    pub sources: Vec<SourceStamp>,
}

#[derive(Clone, Debug)]
pub(crate) struct Files {
    pub data: PathBuf,
    pub manifest: PathBuf,
}

pub(crate) fn files(dir: &Path, key: &str, split: &str) -> Files {
    Files { data: dir.join(format!("{key}-{split}.u8")), manifest: dir.join(format!("{key}-{split}.json")) }
}

/// Reads and checks the manifest only: enough to tell whether the cache is
/// worth reading. `Err` carries why it is not.
pub(crate) fn peek(files: &Files, expect: &Expect) -> Result<Manifest, String> {
    let text = match fs::read(&files.manifest) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("not built yet".to_string()),
        Err(e) => return Err(format!("cannot read {}: {e}", files.manifest.display())),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| format!("manifest {} is unreadable: {e}", files.manifest.display()))?;
    if manifest.format != FORMAT {
        return Err(format!("cache format {} is not the current {FORMAT}", manifest.format));
    }
    if manifest.dataset != expect.dataset || manifest.split != expect.split {
        return Err(format!("manifest is for {} {}", manifest.dataset, manifest.split));
    }
    if manifest.preprocessing != expect.preprocessing {
        return Err("preprocessing changed".to_string());
    }
    if manifest.shape != expect.shape || manifest.class_names != expect.class_names {
        return Err("shape or classes changed".to_string());
    }
    if manifest.classes != manifest.class_names.len() {
        return Err("manifest is inconsistent (classes)".to_string());
    }
    if manifest.sources != expect.sources {
        let changed = expect
            .sources
            .iter()
            .find(|s| !manifest.sources.contains(s))
            .map_or_else(|| "the set of source files".to_string(), |s| s.path.clone());
        return Err(format!("source changed: {changed}"));
    }
    let sample = manifest.shape.iter().product::<usize>();
    let expected_bytes = (manifest.count * (sample + 2)) as u64;
    if manifest.data_bytes != expected_bytes {
        return Err("manifest is inconsistent (data size)".to_string());
    }
    match fs::metadata(&files.data) {
        Ok(meta) if meta.len() == expected_bytes => Ok(manifest),
        Ok(meta) => {
            Err(format!("{} holds {} bytes, the manifest says {expected_bytes}", files.data.display(), meta.len()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", files.data.display())),
    }
}

/// Reads a cache that [`peek`] accepts and verifies its checksum. Returns
/// the pixels and labels, or why the cache must be rebuilt.
pub(crate) fn read(files: &Files, expect: &Expect) -> Result<(Manifest, Vec<u8>, Vec<u16>), String> {
    let manifest = peek(files, expect)?;
    let mut data = fs::read(&files.data).map_err(|e| format!("cannot read {}: {e}", files.data.display()))?;
    if data.len() as u64 != manifest.data_bytes {
        return Err(format!("{} changed size while being read", files.data.display()));
    }
    let actual = hex(&Sha256::digest(&data));
    if actual != manifest.sha256 {
        return Err(format!(
            "{} is corrupt: sha256 {actual}, the manifest says {}",
            files.data.display(),
            manifest.sha256
        ));
    }
    let pixels = manifest.count * manifest.shape.iter().product::<usize>();
    let labels: Vec<u16> = data[pixels..].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    if let Some(bad) = labels.iter().find(|&&l| usize::from(l) >= manifest.classes) {
        return Err(format!("{} holds label {bad} of {} classes", files.data.display(), manifest.classes));
    }
    data.truncate(pixels);
    Ok((manifest, data, labels))
}

/// Writes the data file, then the manifest, each to a temporary name first
/// and renamed into place, so that a reader (another worker, say) sees
/// either the old cache or the new one, never half of one.
pub(crate) fn write(files: &Files, expect: &Expect, images: &[u8], labels: &[u16]) -> Result<Manifest, DataError> {
    let dir = files.data.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, "cannot create the cache folder", e))?;
    let tmp_data = temp_name(&files.data);
    let mut hasher = Sha256::new();
    let result = (|| {
        let file = fs::File::create(&tmp_data)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(images)?;
        hasher.update(images);
        for chunk in labels.chunks(1 << 16) {
            let le: Vec<u8> = chunk.iter().flat_map(|l| l.to_le_bytes()).collect();
            out.write_all(&le)?;
            hasher.update(&le);
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_data);
        return Err(DataError::io(&tmp_data, "cannot write the cache", e));
    }
    let manifest = Manifest {
        format: FORMAT,
        dataset: expect.dataset.clone(),
        split: expect.split.clone(),
        preprocessing: expect.preprocessing.clone(),
        shape: expect.shape,
        count: labels.len(),
        classes: expect.class_names.len(),
        class_names: expect.class_names.clone(),
        data_bytes: (images.len() + 2 * labels.len()) as u64,
        sha256: hex(&hasher.finalize()),
        sources: expect.sources.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");
    let tmp_manifest = temp_name(&files.manifest);
    let renamed = fs::rename(&tmp_data, &files.data)
        .map_err(|e| DataError::io(&files.data, "cannot move the cache into place", e))
        .and_then(|()| fs::write(&tmp_manifest, json).map_err(|e| DataError::io(&tmp_manifest, "cannot write", e)))
        .and_then(|()| {
            fs::rename(&tmp_manifest, &files.manifest)
                .map_err(|e| DataError::io(&files.manifest, "cannot move the manifest into place", e))
        });
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp_data);
        let _ = fs::remove_file(&tmp_manifest);
    }
    renamed.map(|()| manifest)
}

fn temp_name(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("cache");
    path.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
