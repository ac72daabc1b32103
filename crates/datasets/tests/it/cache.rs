//! The u8 cache: built once, reused while fresh, rebuilt when sources or the cache itself change.

use std::fs;
use std::time::{Duration, SystemTime};

use nasc_datasets::{
    inspect, load_with, CacheMode, CacheState, CacheStatus, DatasetName, LoadOptions, Manifest, Split,
};

use crate::fixtures;

fn options() -> LoadOptions {
    LoadOptions { check_published_counts: false, ..LoadOptions::default() }
}

#[test]
fn the_first_load_builds_the_cache_beside_the_data_and_the_second_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "train", 30, true);
    let first = load_with(DatasetName::Mnist, root, Split::Train, &options()).unwrap();
    assert_eq!(first.cache, CacheStatus::Built);
    let data = root.join(".nasc-cache/mnist-train.u8");
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(root.join(".nasc-cache/mnist-train.json")).unwrap()).unwrap();
    assert_eq!(fs::metadata(&data).unwrap().len(), 30 * (784 + 2));
    assert_eq!((manifest.count, manifest.classes, manifest.shape), (30, 10, [1, 28, 28]));
    assert_eq!(manifest.sources.len(), 2);
    assert_eq!(manifest.sources[0].path, "train-images-idx3-ubyte.gz");

    let second = load_with(DatasetName::Mnist, root, Split::Train, &options()).unwrap();
    assert_eq!(second.cache, CacheStatus::Hit);
    assert_eq!(second.dataset.images(), first.dataset.images());
    assert_eq!(second.dataset.labels(), first.dataset.labels());
}

#[test]
fn a_changed_source_rebuilds_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "train", 10, false);
    load_with(DatasetName::Mnist, root, Split::Train, &options()).unwrap();
    // Same size, new labels, a later time.
    let labels = root.join("train-labels-idx1-ubyte");
    fs::write(&labels, fixtures::idx(&[10], &[9; 10])).unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    fs::File::options().write(true).open(&labels).unwrap().set_modified(later).unwrap();
    let again = load_with(DatasetName::Mnist, root, Split::Train, &options()).unwrap();
    assert_eq!(again.cache, CacheStatus::Rebuilt { reason: "source changed: train-labels-idx1-ubyte".to_string() });
    assert!(again.dataset.labels().iter().all(|&l| l == 9));
}

#[test]
fn a_corrupt_or_truncated_cache_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_cifar10(root, 2);
    let first = load_with(DatasetName::Cifar10, root, Split::Train, &options()).unwrap();
    let data = root.join(".nasc-cache/cifar10-train.u8");

    let mut bytes = fs::read(&data).unwrap();
    bytes[5000] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let again = load_with(DatasetName::Cifar10, root, Split::Train, &options()).unwrap();
    match again.cache {
        CacheStatus::Rebuilt { reason } => {
            assert!(reason.contains("is corrupt: sha256"), "{reason}")
        }
        other => panic!("expected a rebuild, got {other:?}"),
    }
    assert_eq!(again.dataset.images(), first.dataset.images());

    fs::write(&data, &bytes[..100]).unwrap();
    let again = load_with(DatasetName::Cifar10, root, Split::Train, &options()).unwrap();
    match again.cache {
        CacheStatus::Rebuilt { reason } => {
            assert!(reason.ends_with("holds 100 bytes, the manifest says 30740"), "{reason}")
        }
        other => panic!("expected a rebuild, got {other:?}"),
    }

    fs::write(root.join(".nasc-cache/cifar10-train.json"), "{ not json").unwrap();
    let again = load_with(DatasetName::Cifar10, root, Split::Train, &options()).unwrap();
    assert!(
        matches!(again.cache, CacheStatus::Rebuilt { ref reason } if reason.contains("is unreadable")),
        "{:?}",
        again.cache
    );
    assert_eq!(load_with(DatasetName::Cifar10, root, Split::Train, &options()).unwrap().cache, CacheStatus::Hit);
}

#[test]
fn cache_modes_off_and_rebuild_do_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "t10k", 5, true);
    let off = LoadOptions { cache: CacheMode::Off, ..options() };
    assert_eq!(load_with(DatasetName::Mnist, root, Split::Test, &off).unwrap().cache, CacheStatus::Off);
    assert!(!root.join(".nasc-cache").exists());
    load_with(DatasetName::Mnist, root, Split::Test, &options()).unwrap();
    let rebuild = LoadOptions { cache: CacheMode::Rebuild, ..options() };
    assert_eq!(
        load_with(DatasetName::Mnist, root, Split::Test, &rebuild).unwrap().cache,
        CacheStatus::Rebuilt { reason: "asked to rebuild".to_string() }
    );
}

#[test]
fn an_unwritable_cache_still_returns_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "t10k", 5, true);
    // A file where the cache folder should be: no folder can be made there, even as root.
    let blocker = root.join("blocker");
    fs::write(&blocker, "").unwrap();
    let opts = LoadOptions { cache_dir: Some(blocker.join("cache")), ..options() };
    let loaded = load_with(DatasetName::Mnist, root, Split::Test, &opts).unwrap();
    assert_eq!(loaded.dataset.len(), 5);
    assert!(
        matches!(loaded.cache, CacheStatus::NotWritten { ref reason } if reason.contains("cannot create the cache folder"))
    );
}

#[test]
fn inspect_tells_the_state_of_every_split_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "train", 4, true);
    let before = inspect(DatasetName::Mnist, root, &options());
    assert_eq!(before.len(), 2);
    assert_eq!(before[0].cache, CacheState::Stale { reason: "not built yet".to_string() });
    assert_eq!(before[0].published, Some(60_000));
    assert!(
        matches!(&before[1].cache, CacheState::NoSources { error } if error.contains("t10k-images-idx3-ubyte.gz: missing"))
    );
    load_with(DatasetName::Mnist, root, Split::Train, &options()).unwrap();
    let after = inspect(DatasetName::Mnist, root, &options());
    assert!(matches!(after[0].cache, CacheState::Fresh { count: 4, data_bytes: 3144, .. }), "{:?}", after[0].cache);
}

#[test]
fn the_count_check_applies_to_cached_data_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "t10k", 5, true);
    load_with(DatasetName::Mnist, root, Split::Test, &options()).unwrap();
    let strict = LoadOptions::default();
    let err = load_with(DatasetName::Mnist, root, Split::Test, &strict).unwrap_err();
    assert!(
        err.to_string().ends_with("truncated: the test split holds 5 samples, the published one has 10000"),
        "{err}"
    );
}
