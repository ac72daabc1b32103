//! CelebA's gender task: img_align_celeba/*.jpg with list_attr_celeba.txt (label = Male) and list_eval_partition.txt.
//! It must not skip a listed image or a malformed line: both are errors naming the file and line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{images, read_file, Decoded};
use crate::catalog::Split;
use crate::error::DataError;

pub(crate) const IMAGES_DIR: &str = "img_align_celeba";
pub(crate) const ATTRS: &str = "list_attr_celeba.txt";
pub(crate) const PARTITION: &str = "list_eval_partition.txt";
const LABEL_ATTRIBUTE: &str = "Male";

pub(crate) struct Located {
    pub partition: PathBuf,
    pub attrs: PathBuf,
    pub images: PathBuf,
}

pub(crate) fn locate(root: &Path) -> Result<Located, DataError> {
    let located = Located { partition: root.join(PARTITION), attrs: root.join(ATTRS), images: root.join(IMAGES_DIR) };
    for file in [&located.partition, &located.attrs] {
        if !file.is_file() {
            return Err(DataError::missing(file, ""));
        }
    }
    images::require_dir(&located.images, "the folder img_align_celeba.zip unpacks to")?;
    Ok(located)
}

fn text(path: &Path) -> Result<String, DataError> {
    String::from_utf8(read_file(path)?).map_err(|e| {
        DataError::corrupt(path, format!("not text: invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()))
    })
}

/// The images of a split, in the order list_eval_partition.txt lists them.
fn partition(path: &Path, split: Split) -> Result<Vec<String>, DataError> {
    let wanted = match split {
        Split::Train => "0",
        Split::Val => "1",
        Split::Test => "2",
    };
    let mut names = Vec::new();
    for (i, line) in text(path)?.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [name, code @ ("0" | "1" | "2")] => {
                if *code == wanted {
                    names.push(name.to_string());
                }
            }
            _ => {
                return Err(DataError::corrupt(
                    path,
                    format!("line {}: expected `<image> <0|1|2>`, found `{}`", i + 1, line.trim()),
                ))
            }
        }
    }
    Ok(names)
}

/// Image name to "is male", from the attribute table: a count line, a line
/// of attribute names, then one row of +1/-1 per image.
fn male_labels(path: &Path) -> Result<HashMap<String, bool>, DataError> {
    let text = text(path)?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let declared: usize = lines
        .next()
        .and_then(|(_, l)| l.trim().parse().ok())
        .ok_or_else(|| DataError::corrupt(path, "line 1: expected the number of images"))?;
    let names: Vec<&str> = lines
        .next()
        .map(|(_, l)| l.split_whitespace().collect())
        .ok_or_else(|| DataError::truncated(path, "ends before the line of attribute names"))?;
    let column = names.iter().position(|n| *n == LABEL_ATTRIBUTE).ok_or_else(|| {
        DataError::corrupt(path, format!("line 2: no attribute {LABEL_ATTRIBUTE} among {} names", names.len()))
    })?;
    let mut labels = HashMap::with_capacity(declared);
    for (i, line) in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != names.len() + 1 {
            return Err(DataError::corrupt(
                path,
                format!(
                    "line {}: {} fields, expected an image name and {} attributes",
                    i + 1,
                    fields.len(),
                    names.len()
                ),
            ));
        }
        let male = match fields[column + 1] {
            "1" => true,
            "-1" => false,
            other => {
                return Err(DataError::corrupt(
                    path,
                    format!("line {}: {LABEL_ATTRIBUTE} is `{other}`, expected 1 or -1", i + 1),
                ))
            }
        };
        labels.insert(fields[0].to_string(), male);
    }
    if labels.len() != declared {
        let detail = format!("header says {declared} images, file holds {} rows", labels.len());
        return Err(if labels.len() < declared {
            DataError::truncated(path, detail)
        } else {
            DataError::corrupt(path, detail)
        });
    }
    Ok(labels)
}

pub(crate) fn decode(located: &Located, split: Split, size: usize) -> Result<Decoded, DataError> {
    let names = partition(&located.partition, split)?;
    let males = male_labels(&located.attrs)?;
    let mut paths = Vec::with_capacity(names.len());
    let mut labels = Vec::with_capacity(names.len());
    for name in &names {
        let male = males.get(name).ok_or_else(|| {
            DataError::corrupt(&located.attrs, format!("has no row for {name}, which {PARTITION} lists"))
        })?;
        let path = located.images.join(name);
        // Checked before decoding starts, so a missing picture is reported
        // at once rather than after minutes of decoding.
        if !path.is_file() {
            return Err(DataError::missing(&path, format!("listed in {PARTITION}")));
        }
        paths.push(path);
        labels.push(u16::from(*male));
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let images = images::decode_all(&refs, size)?;
    Ok(Decoded { images, labels })
}
