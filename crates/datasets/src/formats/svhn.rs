//! SVHN cropped digits: train_32x32.mat / test_32x32.mat, X (32x32x3xN uint8) and y (N labels, 10 = digit 0).
//! It must not accept a file whose X and y disagree, or labels outside 1..=10.

use std::path::{Path, PathBuf};

use super::matv5::{self, MatData, MatVar, MX_UINT8};
use super::Decoded;
use crate::catalog::Split;
use crate::error::DataError;

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;

pub(crate) fn locate(root: &Path, split: Split) -> Result<PathBuf, DataError> {
    let name = if split == Split::Train { "train_32x32.mat" } else { "test_32x32.mat" };
    let path = root.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(DataError::missing(&path, ""))
    }
}

pub(crate) fn decode(path: &Path) -> Result<Decoded, DataError> {
    let vars = matv5::read(path)?;
    let take = |name: &str, what: &str| -> Result<&MatVar, DataError> {
        let var = vars.iter().find(|v| v.name == name).ok_or_else(|| {
            let found: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            DataError::corrupt(path, format!("no variable {name} ({what}); the file holds: {}", list(&found)))
        })?;
        if let MatData::Skipped(why) = var.data {
            return Err(DataError::corrupt(path, format!("variable {name} ({what}) is {why}")));
        }
        Ok(var)
    };
    let x = take("X", "the images")?;
    let y = take("y", "the labels")?;

    let shape = x.dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    let pixels = match (&x.data, x.class, x.dims.as_slice()) {
        (MatData::U8(pixels), MX_UINT8, [SIDE, SIDE, 3, _]) => pixels,
        (_, MX_UINT8, _) => {
            return Err(DataError::corrupt(path, format!("X is {shape}, expected 32x32x3xN")));
        }
        _ => return Err(DataError::corrupt(path, format!("X ({shape}) is not a uint8 array"))),
    };
    let count = x.dims[3];
    let labels = match &y.data {
        MatData::F64(v) => v.clone(),
        MatData::U8(v) => v.iter().map(|&b| f64::from(b)).collect(),
        MatData::Skipped(_) => unreachable!("take() refuses skipped variables"),
    };
    if labels.len() != count || y.dims.iter().filter(|&&d| d != 1).count() > 1 {
        let y_shape = y.dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        return Err(DataError::corrupt(path, format!("y is {y_shape}, but X holds {count} images")));
    }
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            // SVHN writes digit 0 as label 10.
            if v.fract() == 0.0 && (1.0..=10.0).contains(&v) {
                Ok((v as u16) % 10)
            } else {
                Err(DataError::corrupt(path, format!("label {v} of image {i} is not a digit label 1..=10")))
            }
        })
        .collect::<Result<Vec<u16>, _>>()?;

    // X(row, col, channel, n) is column-major: each 32x32 plane is stored
    // column by column, so each plane is transposed into row order.
    let mut images = vec![0u8; pixels.len()];
    for (src, dst) in pixels.chunks_exact(PLANE).zip(images.chunks_exact_mut(PLANE)) {
        for col in 0..SIDE {
            for row in 0..SIDE {
                dst[row * SIDE + col] = src[col * SIDE + row];
            }
        }
    }
    Ok(Decoded { images, labels })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "no variables".to_string()
    } else {
        names.join(", ")
    }
}
