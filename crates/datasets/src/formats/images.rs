//! Folders of JPEG/PNG images (ImageNette, any ImageFolder tree, CelebA's pictures): listing and decoding.
//! It must not load a short dataset silently: an unreadable or cut-off image stops the load with its path.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};

use super::read_file;
use crate::error::DataError;

/// File extensions read as images, compared without case.
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    !is_hidden(path)
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing(dir, "")
        } else {
            DataError::io(dir, "cannot list", e)
        }
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, "cannot list", e))?;
        let path = entry.path();
        if !is_hidden(&path) {
            paths.push(path);
        }
    }
    // Byte order of names, as torchvision's ImageFolder sorts, so class
    // indices agree with the rest of the world.
    paths.sort();
    Ok(paths)
}

/// Every image file under `dir`, recursively, in sorted order.
pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for path in read_dir_sorted(&dir)? {
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The class folders of a split folder, sorted: the class order.
pub(crate) fn class_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    let names: Vec<String> = read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    if names.is_empty() {
        return Err(DataError::corrupt(dir, "holds no class folders (expected <class>/<image> inside)"));
    }
    if names.len() > usize::from(u16::MAX) {
        return Err(DataError::unsupported(
            dir,
            format!("{} class folders; at most {} are supported", names.len(), u16::MAX),
        ));
    }
    Ok(names)
}

/// The images of a split folder with their labels: the label of an image is
/// the index in `classes` of the class folder it sits in. A class folder
/// that is not in `classes` or holds no image is an error.
pub(crate) fn list_split(split_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u16)>, DataError> {
    let mut items = Vec::new();
    for class in class_folders(split_dir)? {
        let label = classes.iter().position(|c| *c == class).ok_or_else(|| {
            DataError::corrupt(split_dir, format!("class folder {class} is not one of the training classes"))
        })?;
        let class_dir = split_dir.join(&class);
        let files = walk(&class_dir)?;
        if files.is_empty() {
            return Err(DataError::corrupt(&class_dir, "holds no .jpg, .jpeg or .png image"));
        }
        items.extend(files.into_iter().map(|f| (f, label as u16)));
    }
    Ok(items)
}

/// Decodes `paths` to `size`x`size` RGB samples (CHW), in order, on all cores.
/// The error reported is that of the first failing path in list order, so
/// a run fails the same way whatever the thread timing.
pub(crate) fn decode_all(paths: &[&Path], size: usize) -> Result<Vec<u8>, DataError> {
    let sample = 3 * size * size;
    let mut images = vec![0u8; paths.len() * sample];
    if paths.is_empty() {
        return Ok(images);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(paths.len());
    let per_thread = paths.len().div_ceil(threads);
    let results: Vec<Result<(), DataError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(per_thread)
            .zip(images.chunks_mut(per_thread * sample))
            .map(|(paths, out)| {
                scope.spawn(move || {
                    for (path, out) in paths.iter().zip(out.chunks_exact_mut(sample)) {
                        decode_square(path, size, out)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(DataError::Invalid("an image decoding thread panicked".to_string())))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(images)
}

/// Decodes one image into `out` (3 x size x size): the centred square of
/// side min(width, height), resized with a triangle (bilinear) filter whose
/// support widens when shrinking, so downscaling averages instead of
/// aliasing. For CelebA's aligned 178x218 faces the square is the centre
/// 178x178 crop; for a photo it equals resizing the shorter side, then a
/// centre crop.
pub(crate) fn decode_square(path: &Path, size: usize, out: &mut [u8]) -> Result<(), DataError> {
    let data = read_file(path)?;
    if data.starts_with(&[0xff, 0xd8]) && !jpeg_has_end(&data) {
        return Err(DataError::truncated(path, "the JPEG data ends before its end-of-image marker"));
    }
    let img = image::ImageReader::new(std::io::Cursor::new(&data))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, "cannot read", e))?
        .decode()
        .map_err(|e| DataError::corrupt(path, format!("cannot decode the image: {e}")))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let side = w.min(h);
    if side == 0 {
        return Err(DataError::corrupt(path, format!("the image is {w}x{h}")));
    }
    let square = imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let target = size as u32;
    let square = if side == target { square } else { imageops::resize(&square, target, target, FilterType::Triangle) };
    let plane = size * size;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in square.pixels().enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
    Ok(())
}

/// Whether an end-of-image marker (FF D9) follows the first start-of-scan
/// (FF DA). Entropy-coded data escapes every FF byte, so the marker cannot
/// occur by chance inside it, and a thumbnail's own end marker comes before
/// the main scan. The JPEG decoder itself pads a cut-off scan with grey
/// rather than failing, which would hide a truncated download.
fn jpeg_has_end(data: &[u8]) -> bool {
    let Some(sos) = data.windows(2).position(|w| w == [0xff, 0xda]) else {
        return false;
    };
    data[sos..].windows(2).any(|w| w == [0xff, 0xd9])
}

/// Where a split folder must be, for the error message when it is not.
pub(crate) fn require_dir(dir: &Path, hint: &str) -> Result<(), DataError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(DataError::missing(dir, hint))
    }
}
