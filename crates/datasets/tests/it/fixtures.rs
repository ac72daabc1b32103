//! Writers of small files in each native format, so tests need no downloads.
//! They must not depend on the crate under test: a fixture is written from the format's definition.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use image::{ImageEncoder, Rgb, RgbImage};

/// A deterministic pixel value for sample `n`, channel `c`, row `y`, column `x`.
pub fn pixel(n: usize, c: usize, y: usize, x: usize) -> u8 {
    ((n * 31 + c * 67 + y * 7 + x * 3) % 256) as u8
}

/// One sample of `c` x `side` x `side`, CHW, from [`pixel`].
pub fn sample(n: usize, c: usize, side: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(c * side * side);
    for ch in 0..c {
        for y in 0..side {
            for x in 0..side {
                out.push(pixel(n, ch, y, x));
            }
        }
    }
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// An IDX file of unsigned bytes with the given dimensions.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// MNIST-style files for `count` samples, labels `i % 10`; gzip-compressed if `gz`.
pub fn write_mnist(root: &Path, prefix: &str, count: usize, gz: bool) {
    fs::create_dir_all(root).unwrap();
    let images: Vec<u8> = (0..count).flat_map(|n| sample(n, 1, 28)).collect();
    let labels: Vec<u8> = (0..count).map(|n| (n % 10) as u8).collect();
    let files = [
        (format!("{prefix}-images-idx3-ubyte"), idx(&[count as u32, 28, 28], &images)),
        (format!("{prefix}-labels-idx1-ubyte"), idx(&[count as u32], &labels)),
    ];
    for (name, data) in files {
        if gz {
            fs::write(root.join(format!("{name}.gz")), gzip(&data)).unwrap();
        } else {
            fs::write(root.join(name), data).unwrap();
        }
    }
}

/// CIFAR-10 binary records (label, 3072 pixels) for samples `first..first + count`.
pub fn cifar10_records(first: usize, count: usize) -> Vec<u8> {
    (first..first + count)
        .flat_map(|n| {
            let mut rec = vec![(n % 10) as u8];
            rec.extend(sample(n, 3, 32));
            rec
        })
        .collect()
}

/// CIFAR-100 binary records (coarse, fine, 3072 pixels).
pub fn cifar100_records(first: usize, count: usize) -> Vec<u8> {
    (first..first + count)
        .flat_map(|n| {
            let mut rec = vec![(n % 20) as u8, (n % 100) as u8];
            rec.extend(sample(n, 3, 32));
            rec
        })
        .collect()
}

/// The layout of cifar-10-binary.tar.gz, unpacked: five training batches of
/// `per_file` records and a test batch.
pub fn write_cifar10(root: &Path, per_file: usize) {
    let dir = root.join("cifar-10-batches-bin");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..5 {
        fs::write(dir.join(format!("data_batch_{}.bin", i + 1)), cifar10_records(i * per_file, per_file)).unwrap();
    }
    fs::write(dir.join("test_batch.bin"), cifar10_records(1000, per_file)).unwrap();
}

pub fn write_cifar100(root: &Path, train: usize, test: usize) {
    let dir = root.join("cifar-100-binary");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("train.bin"), cifar100_records(0, train)).unwrap();
    fs::write(dir.join("test.bin"), cifar100_records(1000, test)).unwrap();
}

// MATLAB v5 data types and classes, from MathWorks' "MAT-File Format".
const MI_INT8: u32 = 1;
pub const MI_UINT8: u32 = 2;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
pub const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
pub const MX_DOUBLE: u8 = 6;
pub const MX_UINT8: u8 = 9;

fn pad8(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

fn element(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    pad8(&mut out);
    out
}

/// A little-endian miMATRIX element: flags, dimensions, name (in the small
/// data element form when it fits in four bytes, as MATLAB writes it), real part.
pub fn mat_matrix(name: &str, class: u8, dims: &[u32], data_type: u32, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut flags = Vec::new();
    flags.extend_from_slice(&u32::from(class).to_le_bytes());
    flags.extend_from_slice(&0u32.to_le_bytes());
    body.extend(element(MI_UINT32, &flags));
    let dims: Vec<u8> = dims.iter().flat_map(|d| (*d as i32).to_le_bytes()).collect();
    body.extend(element(MI_INT32, &dims));
    if name.len() <= 4 {
        body.extend_from_slice(&(((name.len() as u32) << 16) | MI_INT8).to_le_bytes());
        let mut packed = name.as_bytes().to_vec();
        packed.resize(4, 0);
        body.extend(packed);
    } else {
        body.extend(element(MI_INT8, name.as_bytes()));
    }
    body.extend(element(data_type, data));
    element(MI_MATRIX, &body)
}

/// Wraps an element in a miCOMPRESSED element (zlib, unpadded).
pub fn mat_compressed(element: &[u8]) -> Vec<u8> {
    let z = zlib(element);
    let mut out = Vec::new();
    out.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend(z);
    out
}

/// The 128-byte header of a level-5 MAT-file written on a little-endian machine.
pub fn mat_header() -> Vec<u8> {
    let mut text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024".to_vec();
    text.resize(116, b' ');
    text.extend_from_slice(&[0; 8]);
    text.extend_from_slice(&0x0100u16.to_le_bytes());
    text.extend_from_slice(b"IM");
    text
}

/// An SVHN-style .mat: X is 32x32x3xN uint8 in column-major order made
/// from [`sample`] (so image n in CHW is `sample(n, 3, 32)`), y holds
/// `labels` as doubles (or as the uint8 storage MATLAB picks for small
/// integers when `y_as_uint8`). `compressed` wraps each variable in
/// miCOMPRESSED, as SVHN's published files are.
pub fn svhn_mat(labels: &[u8], compressed: bool, y_as_uint8: bool) -> Vec<u8> {
    let n = labels.len();
    let mut x = vec![0u8; 32 * 32 * 3 * n];
    for i in 0..n {
        let chw = sample(i, 3, 32);
        for c in 0..3 {
            for row in 0..32 {
                for col in 0..32 {
                    x[row + 32 * (col + 32 * (c + 3 * i))] = chw[c * 1024 + row * 32 + col];
                }
            }
        }
    }
    let x = mat_matrix("X", MX_UINT8, &[32, 32, 3, n as u32], MI_UINT8, &x);
    let y = if y_as_uint8 {
        mat_matrix("y", MX_DOUBLE, &[n as u32, 1], MI_UINT8, labels)
    } else {
        let bytes: Vec<u8> = labels.iter().flat_map(|&l| f64::from(l).to_le_bytes()).collect();
        mat_matrix("y", MX_DOUBLE, &[n as u32, 1], MI_DOUBLE, &bytes)
    };
    let mut out = mat_header();
    for var in [x, y] {
        out.extend(if compressed { mat_compressed(&var) } else { var });
    }
    out
}

pub fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn solid(w: u32, h: u32, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(colour))
}

/// A colour per class, far apart so JPEG loss cannot blur one into another.
pub fn class_colour(class: usize) -> [u8; 3] {
    [(class * 40 % 256) as u8, (255 - class * 25) as u8, ((class * 90 + 30) % 256) as u8]
}

/// `root/<split>/<class>/<i>.JPEG`, `per_class` solid images per class of
/// `w` x `h`, coloured by [`class_colour`].
pub fn write_image_tree(root: &Path, split: &str, classes: &[&str], per_class: usize, w: u32, h: u32) {
    for (c, class) in classes.iter().enumerate() {
        let dir = root.join(split).join(class);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            fs::write(dir.join(format!("{class}_{i}.JPEG")), jpeg(&solid(w, h, class_colour(c)))).unwrap();
        }
    }
}

/// The 40 attribute names of list_attr_celeba.txt, in the file's order.
pub const CELEBA_ATTRIBUTES: [&str; 40] = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
];

/// A CelebA root with `count` aligned 178x218 images: image i is in
/// partition `i % 3`, male when i is odd, and is dark in its top and
/// bottom 20 rows (the part the centre crop removes) and coloured by
/// its label in between.
pub fn write_celeba(root: &Path, count: usize) {
    let dir = root.join("img_align_celeba");
    fs::create_dir_all(&dir).unwrap();
    let mut attrs = format!("{count}\n{}\n", CELEBA_ATTRIBUTES.join(" "));
    let mut partition = String::new();
    for i in 0..count {
        let name = format!("{:06}.jpg", i + 1);
        let male = i % 2 == 1;
        let mut img = solid(178, 218, class_colour(usize::from(male)));
        for y in (0..20).chain(198..218) {
            for x in 0..178 {
                img.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        fs::write(dir.join(&name), jpeg(&img)).unwrap();
        // The real file pads columns with two spaces before -1 and one more before 1.
        let values: Vec<&str> = CELEBA_ATTRIBUTES
            .iter()
            .map(|a| {
                if *a == "Male" {
                    if male {
                        " 1"
                    } else {
                        "-1"
                    }
                } else {
                    "-1"
                }
            })
            .collect();
        attrs.push_str(&format!("{name} {}\n", values.join(" ")));
        partition.push_str(&format!("{name} {}\n", i % 3));
    }
    fs::write(root.join("list_attr_celeba.txt"), attrs).unwrap();
    fs::write(root.join("list_eval_partition.txt"), partition).unwrap();
}
