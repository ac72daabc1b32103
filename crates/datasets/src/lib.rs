//! nasc-datasets: the datasets nasc trains candidates on, read from their
//! native formats, decoded once into a compact u8 cache, and served as
//! normalised f32 batches. It knows nothing of Burn or of models.
//!
//! Datasets: MNIST and Fashion-MNIST (IDX, raw or gzip), CIFAR-10 and
//! CIFAR-100 (binary versions), SVHN cropped digits (MATLAB v5 .mat),
//! ImageNette (class folders of JPEGs, 64x64), CelebA's gender task (aligned
//! JPEGs with the attribute and partition lists, 64x64) and any ImageFolder
//! tree. See the crate's README for formats, resolutions and constants.
//!
//! ```no_run
//! use nasc_datasets::{load, rng, Augment, Split};
//! let train = load("cifar10", "data/cifar10".as_ref(), Split::Train)?;
//! let mut images = vec![0f32; 32 * train.sample_len()];
//! let mut labels = vec![0i64; 32];
//! let indices: Vec<usize> = (0..32).collect();
//! train.fill_batch(&indices, Augment::NONE, &mut rng(0), &mut images, &mut labels)?;
//! # Ok::<(), nasc_datasets::DataError>(())
//! ```

// Crate layout: catalog (facts per dataset) -> formats (native readers) ->
// load (plan, cache, assemble) -> dataset (in memory, batches); fetch
// downloads; error is shared by all.
mod cache;
mod catalog;
mod dataset;
mod error;
mod fetch;
mod formats;
mod load;
mod preprocess;

pub use cache::{Manifest, SourceStamp};
pub use catalog::{fetch, DatasetName, Split, IMAGE_FOLDER_DEFAULT_SIZE, KNOWN};
pub use dataset::{rng, shuffle, Augment, Dataset, Normalization};
pub use error::DataError;
pub use fetch::{fetch_files, Extract, FetchOptions, Fetched, Outcome, RemoteFile, MIRROR_ENV};
pub use load::{
    inspect, load, load_with, CacheMode, CacheState, CacheStatus, LoadOptions, Loaded, SplitInfo, CACHE_DIR,
};
/// The generator type of [`rng`], for callers that store one.
pub use rand_chacha::ChaCha8Rng;
