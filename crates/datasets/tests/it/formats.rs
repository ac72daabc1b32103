//! Each native format, written by the fixtures and read back sample for sample.

use std::fs;

use nasc_datasets::{load_with, DatasetName, Split};

use crate::fixture_options;
use crate::fixtures::{self, class_colour, sample};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn mnist_idx_reads_the_same_samples_raw_and_gzipped() {
    let dir = tmp();
    for (sub, gz) in [("raw", false), ("gz", true)] {
        let root = dir.path().join(sub);
        fixtures::write_mnist(&root, "train", 25, gz);
        fixtures::write_mnist(&root, "t10k", 7, gz);
        let opts = fixture_options(&dir.path().join(format!("cache-{sub}")));
        let train = load_with(DatasetName::Mnist, &root, Split::Train, &opts).unwrap().dataset;
        let test = load_with(DatasetName::Mnist, &root, Split::Test, &opts).unwrap().dataset;
        assert_eq!((train.len(), test.len()), (25, 7));
        assert_eq!(train.shape(), [1, 28, 28]);
        assert_eq!(train.classes(), 10);
        for n in [0, 13, 24] {
            assert_eq!(train.image(n).unwrap(), &sample(n, 1, 28)[..], "{sub} sample {n}");
            assert_eq!(train.labels()[n], (n % 10) as u16);
        }
    }
}

#[test]
fn fashion_mnist_reads_idx_like_mnist_with_its_own_classes() {
    let dir = tmp();
    fixtures::write_mnist(dir.path(), "train", 10, true);
    let ds = load_with(DatasetName::FashionMnist, dir.path(), Split::Train, &fixture_options(&dir.path().join("c")))
        .unwrap()
        .dataset;
    assert_eq!(ds.name(), "fashion-mnist");
    assert_eq!(ds.class_names()[9], "Ankle boot");
    assert_eq!(ds.image(3).unwrap(), &sample(3, 1, 28)[..]);
}

#[test]
fn cifar10_binary_reads_all_five_batches_in_order_and_the_test_batch() {
    let dir = tmp();
    fixtures::write_cifar10(dir.path(), 3);
    let opts = fixture_options(&dir.path().join("c"));
    let train = load_with(DatasetName::Cifar10, dir.path(), Split::Train, &opts).unwrap().dataset;
    let test = load_with(DatasetName::Cifar10, dir.path(), Split::Test, &opts).unwrap().dataset;
    assert_eq!((train.len(), test.len()), (15, 3));
    assert_eq!(train.shape(), [3, 32, 32]);
    for n in 0..15 {
        assert_eq!(train.image(n).unwrap(), &sample(n, 3, 32)[..]);
        assert_eq!(train.labels()[n], (n % 10) as u16);
    }
    assert_eq!(test.image(2).unwrap(), &sample(1002, 3, 32)[..]);
}

#[test]
fn cifar10_also_reads_batches_placed_directly_in_the_root() {
    let dir = tmp();
    fixtures::write_cifar10(dir.path(), 2);
    let root = dir.path().join("flat");
    fs::rename(dir.path().join("cifar-10-batches-bin"), &root).unwrap();
    let ds = load_with(DatasetName::Cifar10, &root, Split::Test, &fixture_options(&dir.path().join("c"))).unwrap();
    assert_eq!(ds.dataset.len(), 2);
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = tmp();
    fixtures::write_cifar100(dir.path(), 120, 4);
    let opts = fixture_options(&dir.path().join("c"));
    let train = load_with(DatasetName::Cifar100, dir.path(), Split::Train, &opts).unwrap().dataset;
    assert_eq!(train.classes(), 100);
    assert_eq!(train.labels()[57], 57);
    assert_eq!(train.labels()[101], 1);
    assert_eq!(train.image(57).unwrap(), &sample(57, 3, 32)[..]);
    assert_eq!(train.class_names()[99], "worm");
}

#[test]
fn svhn_mat_reads_compressed_and_plain_elements_and_maps_label_10_to_0() {
    let labels = [10u8, 1, 2, 9, 10, 5];
    for (compressed, y_as_uint8) in [(true, false), (false, false), (true, true)] {
        let dir = tmp();
        fs::write(dir.path().join("train_32x32.mat"), fixtures::svhn_mat(&labels, compressed, y_as_uint8)).unwrap();
        let ds = load_with(DatasetName::Svhn, dir.path(), Split::Train, &fixture_options(&dir.path().join("c")))
            .unwrap()
            .dataset;
        assert_eq!(ds.labels(), &[0, 1, 2, 9, 0, 5], "compressed={compressed} y_as_uint8={y_as_uint8}");
        assert_eq!(ds.shape(), [3, 32, 32]);
        for n in 0..labels.len() {
            assert_eq!(ds.image(n).unwrap(), &sample(n, 3, 32)[..], "image {n}, compressed={compressed}");
        }
    }
}

#[test]
fn svhn_mat_skips_variables_it_does_not_need() {
    let dir = tmp();
    let mut mat = fixtures::svhn_mat(&[3, 4], true, false);
    // A long-named variable (normal name element) of another class before nothing else.
    mat.extend(fixtures::mat_matrix("__comment", 4, &[1, 3], 4, &[65, 0, 66, 0, 67, 0]));
    fs::write(dir.path().join("test_32x32.mat"), mat).unwrap();
    let ds = load_with(DatasetName::Svhn, dir.path(), Split::Test, &fixture_options(&dir.path().join("c"))).unwrap();
    assert_eq!(ds.dataset.labels(), &[3, 4]);
}

const WNIDS: [&str; 10] = [
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
];

#[test]
fn imagenette_reads_class_folders_into_64px_squares() {
    let dir = tmp();
    let base = dir.path().join("imagenette2-160");
    fixtures::write_image_tree(&base, "train", &WNIDS, 2, 213, 160);
    fixtures::write_image_tree(&base, "val", &WNIDS, 1, 160, 240);
    let opts = fixture_options(&dir.path().join("c"));
    let train = load_with(DatasetName::Imagenette, dir.path(), Split::Train, &opts).unwrap().dataset;
    let test = load_with(DatasetName::Imagenette, dir.path(), Split::Test, &opts).unwrap().dataset;
    assert_eq!((train.len(), test.len()), (20, 10));
    assert_eq!(train.shape(), [3, 64, 64]);
    assert_eq!(train.class_names()[0], "tench");
    assert_eq!(train.labels(), &(0..20).map(|i| (i / 2) as u16).collect::<Vec<_>>()[..]);
    for n in [0, 7, 19] {
        let colour = class_colour(n / 2);
        let img = train.image(n).unwrap();
        for (c, plane) in img.chunks(64 * 64).enumerate() {
            assert!(plane.iter().all(|&p| p.abs_diff(colour[c]) <= 6), "image {n} channel {c}");
        }
    }
}

#[test]
fn imagefolder_crops_the_centre_square_before_resizing() {
    let dir = tmp();
    // 12 wide, 8 high: the centre square is columns 2..10, and at size 8 no resize happens.
    let mut img = fixtures::solid(12, 8, [0, 0, 0]);
    for x in 0..12 {
        for y in 0..8 {
            img.put_pixel(x, y, image::Rgb([(x * 20) as u8, (y * 30) as u8, 7]));
        }
    }
    for class in ["cat", "dog"] {
        let d = dir.path().join("train").join(class);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("a.png"), fixtures::png(&img)).unwrap();
    }
    let name: DatasetName = "imagefolder:8".parse().unwrap();
    let ds = load_with(name, dir.path(), Split::Train, &fixture_options(&dir.path().join("c"))).unwrap().dataset;
    assert_eq!(ds.shape(), [3, 8, 8]);
    assert_eq!(ds.class_names(), &["cat".to_string(), "dog".to_string()]);
    assert_eq!(ds.labels(), &[0, 1]);
    let px = ds.image(0).unwrap();
    let (r, g, b) = (&px[0..64], &px[64..128], &px[128..192]);
    for y in 0..8 {
        for x in 0..8 {
            assert_eq!(r[y * 8 + x] as usize, (x + 2) * 20, "red at {x},{y}");
            assert_eq!(g[y * 8 + x] as usize, y * 30, "green at {x},{y}");
        }
    }
    assert!(b.iter().all(|&v| v == 7));

    // Downscaling a uniform picture keeps it uniform: the filter averages, it does not ring.
    fs::write(dir.path().join("train/cat/a.png"), fixtures::png(&fixtures::solid(300, 200, [10, 200, 90]))).unwrap();
    let ds = load_with(name, dir.path(), Split::Train, &fixture_options(&dir.path().join("c"))).unwrap().dataset;
    let px = ds.image(0).unwrap();
    assert!(
        px[..64].iter().all(|&v| v == 10)
            && px[64..128].iter().all(|&v| v == 200)
            && px[128..].iter().all(|&v| v == 90)
    );
}

#[test]
fn imagefolder_test_split_uses_val_when_there_is_no_test_folder_and_training_labels() {
    let dir = tmp();
    fixtures::write_image_tree(dir.path(), "train", &["a", "b", "c"], 1, 20, 20);
    // Only class c in val: its label must still be 2.
    fixtures::write_image_tree(dir.path(), "val", &["c"], 2, 20, 20);
    let ds =
        load_with("imagefolder:16".parse().unwrap(), dir.path(), Split::Test, &fixture_options(&dir.path().join("k")))
            .unwrap()
            .dataset;
    assert_eq!(ds.labels(), &[2, 2]);
    assert_eq!(ds.classes(), 3);
}

#[test]
fn celeba_takes_the_partition_the_male_attribute_and_the_centre_crop() {
    let dir = tmp();
    fixtures::write_celeba(dir.path(), 9);
    let opts = fixture_options(&dir.path().join("c"));
    let train = load_with(DatasetName::Celeba, dir.path(), Split::Train, &opts).unwrap().dataset;
    let val = load_with(DatasetName::Celeba, dir.path(), Split::Val, &opts).unwrap().dataset;
    let test = load_with(DatasetName::Celeba, dir.path(), Split::Test, &opts).unwrap().dataset;
    // Image i sits in partition i % 3 and is male when i is odd.
    assert_eq!(train.labels(), &[0, 1, 0]); // images 0, 3, 6
    assert_eq!(val.labels(), &[1, 0, 1]); // images 1, 4, 7
    assert_eq!(test.labels(), &[0, 1, 0]); // images 2, 5, 8
    assert_eq!(train.shape(), [3, 64, 64]);
    assert_eq!(train.class_names(), &["female".to_string(), "male".to_string()]);
    // The dark bands at top and bottom are outside the 178x178 centre crop.
    for n in 0..3 {
        let colour = class_colour(usize::from(train.labels()[n]));
        for (c, plane) in train.image(n).unwrap().chunks(64 * 64).enumerate() {
            assert!(plane.iter().all(|&p| p.abs_diff(colour[c]) <= 8), "image {n} channel {c}");
        }
    }
}

/// A big-endian MAT-file ("MI"), as MATLAB on a big-endian machine wrote
/// them: one 32x32x3x1 image and its label, uncompressed.
fn big_endian_svhn(label: f64) -> Vec<u8> {
    fn element(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut out = [ty.to_be_bytes(), (data.len() as u32).to_be_bytes()].concat();
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(8), 0);
        out
    }
    fn matrix(name: &str, class: u32, dims: &[i32], ty: u32, data: &[u8]) -> Vec<u8> {
        let mut body = element(6, &[class.to_be_bytes(), 0u32.to_be_bytes()].concat());
        body.extend(element(5, &dims.iter().flat_map(|d| d.to_be_bytes()).collect::<Vec<_>>()));
        body.extend(element(1, name.as_bytes()));
        body.extend(element(ty, data));
        element(14, &body)
    }
    let mut x = vec![0u8; 3072];
    let chw = sample(0, 3, 32);
    for c in 0..3 {
        for row in 0..32 {
            for col in 0..32 {
                x[row + 32 * (col + 32 * c)] = chw[c * 1024 + row * 32 + col];
            }
        }
    }
    let mut out = fixtures::mat_header();
    out[124..126].copy_from_slice(&0x0100u16.to_be_bytes());
    out[126..128].copy_from_slice(b"MI");
    out.extend(matrix("X", 9, &[32, 32, 3, 1], 2, &x));
    out.extend(matrix("y", 6, &[1, 1], 9, &label.to_be_bytes()));
    out
}

#[test]
fn svhn_mat_reads_big_endian_files() {
    let dir = tmp();
    fs::write(dir.path().join("test_32x32.mat"), big_endian_svhn(7.0)).unwrap();
    let ds =
        load_with(DatasetName::Svhn, dir.path(), Split::Test, &fixture_options(&dir.path().join("c"))).unwrap().dataset;
    assert_eq!(ds.labels(), &[7]);
    assert_eq!(ds.image(0).unwrap(), &sample(0, 3, 32)[..]);
}
