//! Missing, truncated and corrupt inputs: each is an error naming the file and what is wrong, never a panic.

use std::fs;
use std::path::Path;

use nasc_datasets::{load, load_with, DataError, DatasetName, LoadOptions, Split};

use crate::fixtures::{self, gzip, idx};
use crate::{fixture_options, message};

fn load_err(name: &str, root: &Path, split: Split) -> String {
    let opts = fixture_options(&root.join(".cache-for-test"));
    let err = load_with(name.parse().unwrap(), root, split, &opts).expect_err("the load should fail");
    message(err, root)
}

#[test]
fn unknown_names_and_splits_say_what_exists() {
    let root = Path::new("/nowhere");
    assert_eq!(
        load("mnits", root, Split::Train).unwrap_err().to_string(),
        "unknown dataset `mnits`; known datasets: mnist, fashion-mnist, cifar10, cifar100, svhn, imagenette, celeba, imagefolder[:SIZE]"
    );
    assert_eq!(load("mnist", root, Split::Val).unwrap_err().to_string(), "mnist has no val split; it has: train, test");
    assert_eq!("dev".parse::<Split>().unwrap_err().to_string(), "unknown split `dev`; splits are train, test and val");
    assert_eq!(
        "imagefolder:4".parse::<DatasetName>().unwrap_err().to_string(),
        "unknown dataset `imagefolder:4`; known datasets: imagefolder:SIZE takes a SIZE from 8 to 512"
    );
}

#[test]
fn a_missing_file_names_the_file_and_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-images-idx3-ubyte.gz: missing (nor is the uncompressed train-images-idx3-ubyte there; fetch it with `nasc data fetch mnist --root <root>`)"
    );
    fixtures::write_mnist(root, "train", 3, true);
    fs::remove_file(root.join("train-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-labels-idx1-ubyte.gz: missing (nor is the uncompressed train-labels-idx1-ubyte there; fetch it with `nasc data fetch mnist --root <root>`)"
    );
    assert_eq!(
        load_err("cifar10", root, Split::Test),
        "<root>/cifar-10-batches-bin/test_batch.bin: missing (fetch it with `nasc data fetch cifar10 --root <root>`)"
    );
    assert_eq!(
        load_err("svhn", root, Split::Train),
        "<root>/train_32x32.mat: missing (fetch it with `nasc data fetch svhn --root <root>`)"
    );
    assert_eq!(
        load_err("imagenette", root, Split::Train),
        "<root>/imagenette2-160/train: missing (fetch it with `nasc data fetch imagenette --root <root>`)"
    );
    assert_eq!(
        load_err("celeba", root, Split::Train),
        "<root>/list_eval_partition.txt: missing (fetch it with `nasc data fetch celeba --root <root>`)"
    );
    assert_eq!(
        load_err("imagefolder", root, Split::Train),
        "<root>/train: missing (an image folder holds train/<class>/<image> and test/<class>/<image> (or val/))"
    );
}

#[test]
fn an_idx_file_shorter_than_its_header_says_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "train", 3, false);
    fs::write(root.join("train-images-idx3-ubyte"), idx(&[60000, 28, 28], &[0; 1234])).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-images-idx3-ubyte: truncated: header says 60000 images of 28x28, file holds 1234 bytes of pixel data"
    );
}

#[test]
fn a_cut_gzip_file_is_truncated_not_short() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "t10k", 50, true);
    let path = root.join("t10k-images-idx3-ubyte.gz");
    let data = fs::read(&path).unwrap();
    fs::write(&path, &data[..data.len() / 2]).unwrap();
    let msg = load_err("mnist", root, Split::Test);
    assert!(msg.starts_with("<root>/t10k-images-idx3-ubyte.gz: truncated: gzip stream ends early after "), "{msg}");
}

#[test]
fn idx_header_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "train", 3, false);
    let images = root.join("train-images-idx3-ubyte");
    let labels = root.join("train-labels-idx1-ubyte");

    fs::write(&images, b"PK\x03\x04 this is a zip").unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-images-idx3-ubyte: corrupt: not an IDX file: it starts 50 4b, IDX starts 00 00"
    );
    fs::write(&images, [0, 0, 0x0d, 3, 0, 0]).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-images-idx3-ubyte: unsupported: IDX element type 0x0d; only 0x08 (unsigned byte) is read"
    );
    fs::write(&images, idx(&[3, 28, 28], &[0; 3 * 784 + 5])).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-images-idx3-ubyte: corrupt: header says 3 images of 28x28, file holds 2357 bytes of pixel data, 5 bytes more than that"
    );
    fs::write(&images, idx(&[3, 32, 32], &[0; 3 * 1024])).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-images-idx3-ubyte: corrupt: images are 32x32, expected 28x28"
    );

    fs::write(&images, idx(&[3, 28, 28], &[0; 3 * 784])).unwrap();
    fs::write(&labels, idx(&[3], &[1, 12, 3])).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-labels-idx1-ubyte: corrupt: label 12 of sample 1 is out of range 0..=9"
    );
    fs::write(&labels, idx(&[2], &[1, 2])).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-labels-idx1-ubyte: corrupt: holds 2 labels, but <root>/train-images-idx3-ubyte holds 3 images"
    );
    fs::write(&labels, gzip(&idx(&[5], &[1, 2]))).unwrap();
    assert_eq!(
        load_err("mnist", root, Split::Train),
        "<root>/train-labels-idx1-ubyte: truncated: header says 5 labels, file holds 2 bytes of label data"
    );
}

#[test]
fn a_split_smaller_than_published_is_refused_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_mnist(root, "train", 20, true);
    let opts = LoadOptions { cache_dir: Some(root.join("c")), ..LoadOptions::default() };
    let err = load_with(DatasetName::Mnist, root, Split::Train, &opts).unwrap_err();
    assert_eq!(
        message(err, root),
        "<root>/train-images-idx3-ubyte.gz: truncated: the train split holds 20 samples, the published one has 60000"
    );
    fixtures::write_cifar10(root, 4);
    let err = load_with(DatasetName::Cifar10, root, Split::Test, &opts).unwrap_err();
    assert_eq!(
        message(err, root),
        "<root>/cifar-10-batches-bin/test_batch.bin: truncated: holds 4 records of 3073 bytes, the published file has 10000"
    );
}

#[test]
fn a_cifar_file_cut_inside_a_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_cifar10(root, 2);
    let path = root.join("cifar-10-batches-bin/data_batch_3.bin");
    let data = fs::read(&path).unwrap();
    fs::write(&path, &data[..data.len() - 100]).unwrap();
    assert_eq!(
        load_err("cifar10", root, Split::Train),
        "<root>/cifar-10-batches-bin/data_batch_3.bin: truncated: holds 6046 bytes, not a whole number of 3073-byte records (1 whole record and 2973 bytes over)"
    );
    fixtures::write_cifar100(root, 2, 2);
    let path = root.join("cifar-100-binary/test.bin");
    let mut data = fs::read(&path).unwrap();
    data[3074 + 1] = 140;
    fs::write(&path, data).unwrap();
    assert_eq!(
        load_err("cifar100", root, Split::Test),
        "<root>/cifar-100-binary/test.bin: corrupt: record 1: fine label 140 is out of range 0..=99"
    );
}

#[test]
fn mat_file_damage_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = root.join("train_32x32.mat");
    let good = fixtures::svhn_mat(&[1, 2, 3], true, false);

    fs::write(&path, &good[..good.len() - 40]).unwrap();
    let msg = load_err("svhn", root, Split::Train);
    assert!(msg.starts_with("<root>/train_32x32.mat: truncated: the data element at byte "), "{msg}");

    fs::write(&path, &good[..60]).unwrap();
    assert_eq!(
        load_err("svhn", root, Split::Train),
        "<root>/train_32x32.mat: truncated: holds 60 bytes, fewer than the 128-byte MAT-file header"
    );

    // Damage inside the first zlib stream.
    let mut bad = good.clone();
    for b in &mut bad[140..160] {
        *b ^= 0x55;
    }
    fs::write(&path, &bad).unwrap();
    let msg = load_err("svhn", root, Split::Train);
    assert!(msg.starts_with("<root>/train_32x32.mat: corrupt: the compressed element at byte 128: "), "{msg}");

    let mut v73 = good.clone();
    v73[..10].copy_from_slice(b"MATLAB 7.3");
    v73[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
    fs::write(&path, &v73).unwrap();
    assert_eq!(
        load_err("svhn", root, Split::Train),
        "<root>/train_32x32.mat: unsupported: a v7.3 MAT-file (HDF5); SVHN's files are v5, save with -v7 or fetch them again"
    );

    let mut pdf = b"%PDF-1.4 not a MAT-file".to_vec();
    pdf.resize(400, b' ');
    fs::write(&path, pdf).unwrap();
    assert_eq!(
        load_err("svhn", root, Split::Train),
        "<root>/train_32x32.mat: corrupt: not a MATLAB MAT-file: the header does not start with \"MATLAB\""
    );
}

#[test]
fn svhn_content_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = root.join("test_32x32.mat");
    let mut only_x = fixtures::mat_header();
    only_x.extend(fixtures::mat_matrix("X", fixtures::MX_UINT8, &[32, 32, 3, 1], fixtures::MI_UINT8, &[0; 3072]));
    fs::write(&path, &only_x).unwrap();
    assert_eq!(
        load_err("svhn", root, Split::Test),
        "<root>/test_32x32.mat: corrupt: no variable y (the labels); the file holds: X"
    );
    fs::write(&path, fixtures::svhn_mat(&[1, 11], false, false)).unwrap();
    assert_eq!(
        load_err("svhn", root, Split::Test),
        "<root>/test_32x32.mat: corrupt: label 11 of image 1 is not a digit label 1..=10"
    );
    let mut short_x = fixtures::mat_header();
    short_x.extend(fixtures::mat_matrix("X", fixtures::MX_UINT8, &[32, 32, 3, 2], fixtures::MI_UINT8, &[0; 3072]));
    fs::write(&path, &short_x).unwrap();
    assert_eq!(
        load_err("svhn", root, Split::Test),
        "<root>/test_32x32.mat: corrupt: matrix at byte 128: variable X: dimensions 32x32x3x2 need 6144 values of 1 byte, the data holds 3072 bytes"
    );
}

#[test]
fn a_cut_or_undecodable_image_stops_the_load_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_image_tree(root, "train", &["a", "b"], 3, 40, 30);
    let victim = root.join("train/b/b_1.JPEG");
    let data = fs::read(&victim).unwrap();
    fs::write(&victim, &data[..data.len() * 2 / 3]).unwrap();
    assert_eq!(
        load_err("imagefolder:16", root, Split::Train),
        "<root>/train/b/b_1.JPEG: truncated: the JPEG data ends before its end-of-image marker"
    );
    fs::write(&victim, b"not an image at all").unwrap();
    let msg = load_err("imagefolder:16", root, Split::Train);
    assert!(msg.starts_with("<root>/train/b/b_1.JPEG: corrupt: cannot decode the image: "), "{msg}");

    fs::remove_file(&victim).unwrap();
    fs::create_dir_all(root.join("train/c")).unwrap();
    assert_eq!(
        load_err("imagefolder:16", root, Split::Train),
        "<root>/train/c: corrupt: holds no .jpg, .jpeg or .png image"
    );
    fs::remove_dir(root.join("train/c")).unwrap();
    fixtures::write_image_tree(root, "test", &["a", "zebra"], 1, 20, 20);
    assert_eq!(
        load_err("imagefolder:16", root, Split::Test),
        "<root>/test: corrupt: class folder zebra is not one of the training classes"
    );
}

#[test]
fn an_image_folder_without_a_test_or_val_folder_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_image_tree(root, "train", &["a"], 1, 20, 20);
    assert_eq!(
        load_err("imagefolder", root, Split::Test),
        "<root>/test: missing (nor is there a val folder; an image folder holds train/<class>/<image> and test/<class>/<image> (or val/))"
    );
}

#[test]
fn imagenette_with_other_class_folders_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_image_tree(&root.join("imagenette2-320"), "train", &["cats", "dogs"], 1, 20, 20);
    assert_eq!(
        load_err("imagenette", root, Split::Train),
        "<root>/imagenette2-320/train: corrupt: class folders are cats, dogs; ImageNette's are n01440764, n02102040, n02979186, n03000684, n03028079, n03394916, n03417042, n03425413, n03445777, n03888257"
    );
}

#[test]
fn celeba_list_problems_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixtures::write_celeba(root, 6);

    fs::remove_file(root.join("img_align_celeba/000004.jpg")).unwrap();
    assert_eq!(
        load_err("celeba", root, Split::Train),
        "<root>/img_align_celeba/000004.jpg: missing (listed in list_eval_partition.txt)"
    );

    let attrs = fs::read_to_string(root.join("list_attr_celeba.txt")).unwrap();
    let cut: String = attrs.lines().take(5).map(|l| format!("{l}\n")).collect();
    fs::write(root.join("list_attr_celeba.txt"), cut).unwrap();
    assert_eq!(
        load_err("celeba", root, Split::Val),
        "<root>/list_attr_celeba.txt: truncated: header says 6 images, file holds 3 rows"
    );

    fs::write(root.join("list_eval_partition.txt"), "000001.jpg 0\n000002.jpg three\n").unwrap();
    assert_eq!(
        load_err("celeba", root, Split::Val),
        "<root>/list_eval_partition.txt: corrupt: line 2: expected `<image> <0|1|2>`, found `000002.jpg three`"
    );
}

#[test]
fn errors_are_values_the_caller_can_match() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_with(DatasetName::Cifar100, dir.path(), Split::Train, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::Missing { ref path, .. } if path.ends_with("cifar-100-binary/train.bin")),
        "{err:?}"
    );
}
