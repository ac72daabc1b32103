//! The entry point: find a split's sources, use the cache when it is fresh, else decode and cache.
//! It must not return a dataset shorter than published (unless told to) or one its sources no longer match.

use std::path::{Path, PathBuf};

use crate::cache::{self, Expect, Source};
use crate::catalog::{DatasetName, Split, IMAGENETTE};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::formats::{celeba, cifar, idx, images, svhn, Decoded};

/// The folder, under a dataset's root, that holds its caches by default.
pub const CACHE_DIR: &str = ".nasc-cache";

/// Whether [`load_with`] may read and write the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Read a fresh cache; otherwise decode and write one.
    #[default]
    Use,
    /// Decode even if a fresh cache exists, and replace it.
    Rebuild,
    /// Decode, and neither read nor write a cache.
    Off,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub cache: CacheMode,
    /// Where the cache files go; `<root>/.nasc-cache` when `None`. Useful
    /// when the data sit somewhere read-only (a system package, a shared mount).
    pub cache_dir: Option<PathBuf>,
    /// Refuse a split whose sample count differs from the published one.
    /// On by default: it is what catches a file cut at a record boundary.
    /// Turn it off only for deliberately reduced copies (test fixtures,
    /// debugging subsets).
    pub check_published_counts: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { cache: CacheMode::Use, cache_dir: None, check_published_counts: true }
    }
}

impl LoadOptions {
    pub fn cache_dir_for(&self, root: &Path) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| root.join(CACHE_DIR))
    }
}

/// How a load used the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from a fresh, verified cache.
    Hit,
    /// Decoded from the sources and cached for the first time.
    Built,
    /// Decoded again because the cache was stale or damaged, and rewritten.
    Rebuilt { reason: String },
    /// Decoded, but the cache could not be written (a read-only folder, a
    /// full disk); the data are good, the next load decodes again.
    NotWritten { reason: String },
    /// Caching was off.
    Off,
}

/// A loaded split and how the cache was used.
#[derive(Debug)]
pub struct Loaded {
    pub dataset: Dataset,
    pub cache: CacheStatus,
}

/// Loads one split of a dataset from its folder `root`, through the cache
/// at `<root>/.nasc-cache`.
///
/// `root` is the dataset's own folder, holding the files as published (the
/// folder `nasc data fetch NAME --root DIR` fills): MNIST's and
/// Fashion-MNIST's files share their names, so each needs a folder.
pub fn load(name: &str, root: &Path, split: Split) -> Result<Dataset, DataError> {
    load_with(name.parse()?, root, split, &LoadOptions::default()).map(|l| l.dataset)
}

/// [`load`] with options, also telling how the cache was used.
pub fn load_with(name: DatasetName, root: &Path, split: Split, options: &LoadOptions) -> Result<Loaded, DataError> {
    name.check_split(split)?;
    let (plan, expect) = plan_and_expect(name, root, split)?;
    let files = cache::files(&options.cache_dir_for(root), &name.cache_key(), split.as_str());

    let mut stale = None;
    if options.cache == CacheMode::Use {
        match cache::read(&files, &expect) {
            Ok((_, images, labels)) => {
                let dataset = assemble(name, split, &expect, images, labels, root, options)?;
                return Ok(Loaded { dataset, cache: CacheStatus::Hit });
            }
            Err(reason) => stale = Some(reason),
        }
    }

    let decoded = decode(&plan, name, split, options)?;
    let status = match options.cache {
        CacheMode::Off => CacheStatus::Off,
        _ => match cache::write(&files, &expect, &decoded.images, &decoded.labels) {
            Err(e) => CacheStatus::NotWritten { reason: e.to_string() },
            Ok(_) => match stale {
                Some(reason) if reason != "not built yet" => CacheStatus::Rebuilt { reason },
                _ if options.cache == CacheMode::Rebuild => {
                    CacheStatus::Rebuilt { reason: "asked to rebuild".to_string() }
                }
                _ => CacheStatus::Built,
            },
        },
    };
    let dataset = assemble(name, split, &expect, decoded.images, decoded.labels, root, options)?;
    Ok(Loaded { dataset, cache: status })
}

/// Where a split's cache stands, without decoding anything (for `nasc data info`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CacheState {
    /// A cache matching the current sources; its checksum is verified on load.
    Fresh { count: usize, data_file: PathBuf, data_bytes: u64 },
    /// A cache exists but must be rebuilt, or none was built yet.
    Stale { reason: String },
    /// The sources themselves are missing or unreadable.
    NoSources { error: String },
}

/// What `nasc data info` reports about one split.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SplitInfo {
    pub split: Split,
    pub published: Option<usize>,
    pub cache: CacheState,
}

/// The cache state of every split of a dataset under `root`.
pub fn inspect(name: DatasetName, root: &Path, options: &LoadOptions) -> Vec<SplitInfo> {
    name.splits()
        .iter()
        .map(|&split| {
            let cache = match plan_and_expect(name, root, split) {
                Err(e) => CacheState::NoSources { error: e.to_string() },
                Ok((_, expect)) => {
                    let files = cache::files(&options.cache_dir_for(root), &name.cache_key(), split.as_str());
                    match cache::peek(&files, &expect) {
                        Ok(m) => CacheState::Fresh { count: m.count, data_file: files.data, data_bytes: m.data_bytes },
                        Err(reason) => CacheState::Stale { reason },
                    }
                }
            };
            SplitInfo { split, published: name.published_count(split), cache }
        })
        .collect()
}

/// The files a split is read from, resolved.
enum Plan {
    Idx([PathBuf; 2]),
    Cifar(Vec<(PathBuf, usize)>, cifar::Variant),
    Svhn(PathBuf),
    /// A split folder of class folders; `folders` are the class folder
    /// names in label order.
    Folder {
        dir: PathBuf,
        folders: Vec<String>,
    },
    Celeba(celeba::Located),
}

fn plan_and_expect(name: DatasetName, root: &Path, split: Split) -> Result<(Plan, Expect), DataError> {
    let (plan, sources, class_names) = plan(name, root, split).map_err(|e| with_fetch_hint(e, name, root))?;
    let stamps = sources.iter().map(|s| cache::stamp(root, s)).collect::<Result<Vec<_>, _>>()?;
    let expect = Expect {
        dataset: name.name(),
        split: split.as_str().to_string(),
        preprocessing: name.preprocessing(),
        shape: name.shape(),
        class_names,
        sources: stamps,
    };
    Ok((plan, expect))
}

/// A missing source gets the command that fetches it, except a picture
/// that a list names: its archive is already unpacked, and fetching again
/// would not bring it back.
fn with_fetch_hint(error: DataError, name: DatasetName, root: &Path) -> DataError {
    match error {
        DataError::Missing { path, hint } if !hint.starts_with("listed in") => {
            let remedy = if matches!(name, DatasetName::ImageFolder { .. }) {
                "an image folder holds train/<class>/<image> and test/<class>/<image> (or val/)".to_string()
            } else {
                format!("fetch it with `nasc data fetch {name} --root {}`", root.display())
            };
            let hint = if hint.is_empty() { remedy } else { format!("{hint}; {remedy}") };
            DataError::Missing { path, hint }
        }
        other => other,
    }
}

fn plan(name: DatasetName, root: &Path, split: Split) -> Result<(Plan, Vec<Source>, Vec<String>), DataError> {
    let fixed = || name.class_names().unwrap_or_default();
    Ok(match name {
        DatasetName::Mnist | DatasetName::FashionMnist => {
            let files = idx::locate(root, split)?;
            let sources = files.iter().cloned().map(Source::file).collect();
            (Plan::Idx(files), sources, fixed())
        }
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            let variant = if name == DatasetName::Cifar10 { cifar::Variant::Ten } else { cifar::Variant::Hundred };
            let files = cifar::locate(root, variant, split)?;
            let sources = files.iter().map(|(p, _)| Source::file(p.clone())).collect();
            (Plan::Cifar(files, variant), sources, fixed())
        }
        DatasetName::Svhn => {
            let file = svhn::locate(root, split)?;
            (Plan::Svhn(file.clone()), vec![Source::file(file)], fixed())
        }
        DatasetName::Imagenette => {
            let base = imagenette_base(root);
            let dir = base.join(if split == Split::Train { "train" } else { "val" });
            images::require_dir(&dir, "")?;
            let folders = images::class_folders(&dir)?;
            let wnids: Vec<&str> = IMAGENETTE.iter().map(|(id, _)| *id).collect();
            if folders != wnids {
                return Err(DataError::corrupt(
                    &dir,
                    format!("class folders are {}; ImageNette's are {}", folders.join(", "), wnids.join(", ")),
                ));
            }
            (Plan::Folder { dir: dir.clone(), folders }, vec![Source::tree(dir)], fixed())
        }
        DatasetName::ImageFolder { .. } => {
            let train = root.join("train");
            images::require_dir(&train, "")?;
            // Labels follow the training split's class folders in every
            // split, so a class missing from the test folder shifts nothing.
            let folders = images::class_folders(&train)?;
            let dir = match split {
                Split::Train => train,
                _ => {
                    let test = root.join("test");
                    let val = root.join("val");
                    if test.is_dir() {
                        test
                    } else if val.is_dir() {
                        val
                    } else {
                        return Err(DataError::missing(&test, "nor is there a val folder"));
                    }
                }
            };
            (Plan::Folder { dir: dir.clone(), folders: folders.clone() }, vec![Source::tree(dir)], folders)
        }
        DatasetName::Celeba => {
            let located = celeba::locate(root)?;
            let sources = vec![
                Source::file(located.partition.clone()),
                Source::file(located.attrs.clone()),
                Source::tree(located.images.clone()),
            ];
            (Plan::Celeba(located), sources, fixed())
        }
    })
}

/// ImageNette's folder: whichever release was unpacked (the 160px one
/// first, being the cheapest to decode), or `root` itself.
fn imagenette_base(root: &Path) -> PathBuf {
    ["imagenette2-160", "imagenette2-320", "imagenette2"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("train").is_dir() || d.join("val").is_dir())
        .unwrap_or_else(|| if root.join("train").is_dir() { root.to_path_buf() } else { root.join("imagenette2-160") })
}

fn decode(plan: &Plan, name: DatasetName, split: Split, options: &LoadOptions) -> Result<Decoded, DataError> {
    let classes = name.classes().unwrap_or(0);
    match plan {
        Plan::Idx([images, labels]) => idx::decode(images, labels, classes),
        Plan::Cifar(files, variant) => cifar::decode(files, *variant, options.check_published_counts),
        Plan::Svhn(file) => svhn::decode(file),
        Plan::Folder { dir, folders } => {
            let items = images::list_split(dir, folders)?;
            let paths: Vec<&Path> = items.iter().map(|(p, _)| p.as_path()).collect();
            let pixels = images::decode_all(&paths, name.shape()[1])?;
            Ok(Decoded { images: pixels, labels: items.iter().map(|(_, l)| *l).collect() })
        }
        Plan::Celeba(located) => celeba::decode(located, split, name.shape()[1]),
    }
}

fn assemble(
    name: DatasetName,
    split: Split,
    expect: &Expect,
    images: Vec<u8>,
    labels: Vec<u16>,
    root: &Path,
    options: &LoadOptions,
) -> Result<Dataset, DataError> {
    if options.check_published_counts {
        if let Some(published) = name.published_count(split) {
            if labels.len() != published {
                let source = expect.sources.first().map_or_else(|| root.to_path_buf(), |s| root.join(&s.path));
                let detail =
                    format!("the {split} split holds {} samples, the published one has {published}", labels.len());
                return Err(if labels.len() < published {
                    DataError::truncated(&source, detail)
                } else {
                    DataError::corrupt(&source, detail)
                });
            }
        }
    }
    Dataset::new(name.name(), split, expect.shape, expect.class_names.clone(), images, labels, name.normalization())
}
