//! The real Fashion-MNIST, as Debian's dataset-fashion-mnist package installs it.
//! It must not pass quietly without the data: a missing package is a failure that says how to install it.

use std::path::Path;

use nasc_datasets::{load_with, CacheStatus, DatasetName, LoadOptions, Split};

const ROOT: &str = "/usr/share/datasets/fashion-mnist";

#[test]
fn real_fashion_mnist_has_the_published_counts_classes_and_statistics() {
    let root = Path::new(ROOT);
    assert!(
        root.join("train-images-idx3-ubyte.gz").is_file(),
        "{ROOT} is missing: install it with `apt-get install -y dataset-fashion-mnist`"
    );
    // The package's folder is not ours to write in.
    let cache = tempfile::tempdir().unwrap();
    let opts = LoadOptions { cache_dir: Some(cache.path().to_path_buf()), ..LoadOptions::default() };

    let train = load_with(DatasetName::FashionMnist, root, Split::Train, &opts).unwrap();
    let test = load_with(DatasetName::FashionMnist, root, Split::Test, &opts).unwrap();
    assert_eq!(train.cache, CacheStatus::Built);
    let (train, test) = (train.dataset, test.dataset);
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.label_histogram(), vec![6_000; 10]);
    assert_eq!(test.label_histogram(), vec![1_000; 10]);

    // The normalisation constants are the training split's own statistics.
    let (mean, std) = train.pixel_stats();
    let norm = DatasetName::FashionMnist.normalization();
    assert!((mean[0] - f64::from(norm.mean[0])).abs() < 5e-4, "mean {}", mean[0]);
    assert!((std[0] - f64::from(norm.std[0])).abs() < 5e-4, "std {}", std[0]);

    let again = load_with(DatasetName::FashionMnist, root, Split::Train, &opts).unwrap();
    assert_eq!(again.cache, CacheStatus::Hit);
    assert_eq!(again.dataset.images(), train.images());
}
