//! Batches for the trainer: normalisation, seeded augmentation, and misuse reported as errors.

use nasc_datasets::{rng, shuffle, Augment, DataError, Dataset, DatasetName, Normalization, Split};

fn tiny(images: Vec<u8>, labels: Vec<u16>, shape: [usize; 3]) -> Dataset {
    let norm = Normalization { mean: vec![0.5; shape[0]], std: vec![0.25; shape[0]], source: "test".to_string() };
    let classes = (0..10).map(|c| c.to_string()).collect();
    Dataset::new("tiny", Split::Train, shape, classes, images, labels, norm).unwrap()
}

/// 1x4x4 samples whose pixels are all distinct: sample n holds n*16 + 1 ..= n*16 + 16.
fn distinct(count: usize) -> Dataset {
    let images = (0..count * 16).map(|i| (i + 1) as u8).collect();
    tiny(images, (0..count as u16).collect(), [1, 4, 4])
}

#[test]
fn fill_batch_normalises_each_pixel_and_copies_labels() {
    let ds = tiny(vec![0, 51, 255, 128, 10, 20, 30, 40], vec![3, 7], [2, 2, 1]);
    let mut images = vec![0f32; 8];
    let mut labels = vec![0i64; 2];
    ds.fill_batch(&[1, 0], Augment::NONE, &mut rng(1), &mut images, &mut labels).unwrap();
    let norm = |p: u8| (p as f32 / 255.0 - 0.5) / 0.25;
    let expected: Vec<f32> = [10, 20, 30, 40, 0, 51, 255, 128].iter().map(|&p| norm(p)).collect();
    assert_eq!(images, expected);
    assert_eq!(labels, [7, 3]);
    assert_eq!(images[4], -2.0);
    assert_eq!(images[6], 2.0);
}

#[test]
fn without_augmentation_the_generator_is_not_touched() {
    use nasc_datasets::ChaCha8Rng;
    use rand_chacha::rand_core::Rng;
    let ds = distinct(3);
    let mut used: ChaCha8Rng = rng(9);
    let mut buf = vec![0f32; 48];
    ds.fill_batch(&[0, 1, 2], Augment::NONE, &mut used, &mut buf, &mut [0; 3]).unwrap();
    assert_eq!(used.next_u64(), rng(9).next_u64());
}

/// The reference crop-then-flip of a 4x4 image padded with zeros.
fn reference(img: &[u8], pad: usize, off_y: usize, off_x: usize, flip: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for y in 0..4 {
        for x in 0..4 {
            let cx = if flip { 3 - x } else { x };
            let (sy, sx) = (y as isize + off_y as isize - pad as isize, cx as isize + off_x as isize - pad as isize);
            out.push(if (0..4).contains(&sy) && (0..4).contains(&sx) { img[(sy * 4 + sx) as usize] } else { 0 });
        }
    }
    out
}

#[test]
fn augmentation_is_a_padded_crop_then_maybe_a_flip_and_fixed_by_the_seed() {
    let ds = distinct(8);
    let augment = Augment { pad: 2, hflip: true };
    let indices: Vec<usize> = (0..8).collect();
    let (mut a, mut b, mut c) = (vec![0f32; 128], vec![0f32; 128], vec![0f32; 128]);
    ds.fill_batch(&indices, augment, &mut rng(42), &mut a, &mut [0; 8]).unwrap();
    ds.fill_batch(&indices, augment, &mut rng(42), &mut b, &mut [0; 8]).unwrap();
    ds.fill_batch(&indices, augment, &mut rng(43), &mut c, &mut [0; 8]).unwrap();
    assert_eq!(a, b, "same seed, same batch");
    assert_ne!(a, c, "another seed, another batch");

    let denorm = |v: f32| ((v * 0.25 + 0.5) * 255.0).round() as u8;
    let mut flips = 0;
    for n in 0..8 {
        let got: Vec<u8> = a[n * 16..(n + 1) * 16].iter().map(|&v| denorm(v)).collect();
        let img = ds.image(n).unwrap();
        let candidates: Vec<(usize, usize, bool)> =
            (0..5).flat_map(|y| (0..5).flat_map(move |x| [(y, x, false), (y, x, true)])).collect();
        let found = candidates.iter().find(|&&(y, x, f)| reference(img, 2, y, x, f) == got);
        let &(_, _, flip) = found.unwrap_or_else(|| panic!("sample {n} is no padded crop: {got:?}"));
        flips += usize::from(flip);
    }
    assert!(flips > 0 && flips < 8, "flips should be random, got {flips} of 8");
}

#[test]
fn misuse_of_fill_batch_is_an_error_not_a_panic() {
    let ds = distinct(2);
    let mut images = vec![0f32; 16];
    let err = ds.fill_batch(&[0, 1], Augment::NONE, &mut rng(0), &mut images, &mut [0; 2]).unwrap_err();
    assert_eq!(err.to_string(), "fill_batch: 2 indices need 32 image values and 2 labels, got buffers of 16 and 2");
    let err = ds.fill_batch(&[5], Augment::NONE, &mut rng(0), &mut images, &mut [0; 1]).unwrap_err();
    assert_eq!(err.to_string(), "fill_batch: index 5 is past the end of tiny train (2 samples)");
    assert!(matches!(err, DataError::Invalid(_)));
}

#[test]
fn dataset_new_refuses_parts_that_disagree() {
    let norm = DatasetName::Mnist.normalization();
    let names: Vec<String> = (0..10).map(|c| c.to_string()).collect();
    let err =
        Dataset::new("x", Split::Test, [1, 2, 2], names.clone(), vec![0; 7], vec![1, 2], norm.clone()).unwrap_err();
    assert_eq!(err.to_string(), "x test: 2 labels need 8 pixel bytes of 1x2x2, got 7");
    let err = Dataset::new("x", Split::Test, [1, 2, 2], names, vec![0; 4], vec![10], norm).unwrap_err();
    assert_eq!(err.to_string(), "x test: sample 0 has label 10, but there are 10 classes");
}

#[test]
fn shuffle_is_a_seeded_permutation() {
    let mut a: Vec<usize> = (0..100).collect();
    let mut b = a.clone();
    shuffle(&mut a, &mut rng(7));
    shuffle(&mut b, &mut rng(7));
    assert_eq!(a, b);
    assert_ne!(a, (0..100).collect::<Vec<_>>());
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
}

#[test]
fn the_catalog_matches_the_decisions_of_the_binding_table() {
    let expect = [
        ("mnist", [1, 28, 28], 10),
        ("fashion-mnist", [1, 28, 28], 10),
        ("cifar10", [3, 32, 32], 10),
        ("cifar100", [3, 32, 32], 100),
        ("svhn", [3, 32, 32], 10),
        ("imagenette", [3, 64, 64], 10),
        ("celeba", [3, 64, 64], 2),
    ];
    for (name, shape, classes) in expect {
        let ds: DatasetName = name.parse().unwrap();
        assert_eq!(ds.name(), name);
        assert_eq!(ds.shape(), shape, "{name}");
        assert_eq!(ds.classes(), Some(classes), "{name}");
        assert_eq!(ds.normalization().mean.len(), shape[0], "{name}");
        assert!(!ds.remote_files().is_empty(), "{name}");
        for f in ds.remote_files() {
            assert_eq!(f.sha256.as_ref().map(String::len), Some(64), "{name} {}", f.file);
        }
    }
    let folder: DatasetName = "imagefolder:96".parse().unwrap();
    assert_eq!((folder.shape(), folder.classes(), folder.name()), ([3, 96, 96], None, "imagefolder:96".to_string()));
    assert_eq!(DatasetName::Celeba.splits(), &[Split::Train, Split::Val, Split::Test]);
}
