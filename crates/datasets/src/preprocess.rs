//! How stored pixels become a model's inputs: per-dataset normalization and augmentation settings.
//! Plain settings shared by the catalog (which picks them per dataset) and the batches (which apply them).

/// Per-channel mean and standard deviation of pixel values scaled to [0, 1];
/// a pixel `p` feeds the model as `(p / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Normalization {
    #[serde(serialize_with = "as_written")]
    pub mean: Vec<f32>,
    #[serde(serialize_with = "as_written")]
    pub std: Vec<f32>,
    /// Where the figures come from, for `nasc data info`.
    pub source: String,
}

/// Serialises f32 constants as their shortest decimal form (0.485, not
/// 0.48500001430511475, which is what widening to f64 would print).
fn as_written<S: serde::Serializer>(values: &[f32], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(values.len()))?;
    for v in values {
        seq.serialize_element(&v.to_string().parse::<f64>().unwrap_or(f64::from(*v)))?;
    }
    seq.end()
}

/// Training-time augmentation: zero-pad by `pad` pixels and crop back to the
/// original size at a random offset, then mirror left-right with
/// probability 1/2 if `hflip`. [`Augment::NONE`] is what the one-epoch
/// proxy uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Augment {
    pub pad: usize,
    pub hflip: bool,
}

impl Augment {
    pub const NONE: Augment = Augment { pad: 0, hflip: false };

    pub fn is_none(self) -> bool {
        self.pad == 0 && !self.hflip
    }
}
