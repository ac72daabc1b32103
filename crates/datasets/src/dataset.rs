//! A decoded split in memory (u8 pixels, CHW per sample) and the batch filler the trainer calls.
//! It must not read files, and the batch path must not allocate per sample.

use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha8Rng;

use crate::catalog::Split;
use crate::error::DataError;
pub use crate::preprocess::{Augment, Normalization};

/// One split of one dataset, decoded: `len()` samples of `shape` u8 pixels
/// in CHW order, one label each. Built by [`crate::load`] or, for tests
/// and synthetic data, by [`Dataset::new`].
#[derive(Clone, Debug)]
pub struct Dataset {
    name: String,
    split: Split,
    shape: [usize; 3],
    class_names: Vec<String>,
    images: Vec<u8>,
    labels: Vec<u16>,
    normalization: Normalization,
    /// `lut[c][p]` is pixel value `p` of channel `c` normalised: one table
    /// look-up per pixel in the batch loop instead of a divide.
    lut: Vec<[f32; 256]>,
}

impl Dataset {
    /// Checks that the parts agree (pixel count, label range, one mean and
    /// one positive std per channel) and builds the dataset.
    pub fn new(
        name: impl Into<String>,
        split: Split,
        shape: [usize; 3],
        class_names: Vec<String>,
        images: Vec<u8>,
        labels: Vec<u16>,
        normalization: Normalization,
    ) -> Result<Self, DataError> {
        let name = name.into();
        let sample_len = shape.iter().product::<usize>();
        if sample_len == 0 {
            return Err(DataError::Invalid(format!("{name}: sample shape {shape:?} holds no pixels")));
        }
        if images.len() != labels.len() * sample_len {
            return Err(DataError::Invalid(format!(
                "{name} {split}: {} labels need {} pixel bytes of {}x{}x{}, got {}",
                labels.len(),
                labels.len() * sample_len,
                shape[0],
                shape[1],
                shape[2],
                images.len()
            )));
        }
        if let Some((i, &label)) = labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= class_names.len()) {
            return Err(DataError::Invalid(format!(
                "{name} {split}: sample {i} has label {label}, but there are {} classes",
                class_names.len()
            )));
        }
        let channels = shape[0];
        if normalization.mean.len() != channels || normalization.std.len() != channels {
            return Err(DataError::Invalid(format!(
                "{name}: normalisation has {} means and {} stds for {channels} channels",
                normalization.mean.len(),
                normalization.std.len()
            )));
        }
        // Written so that a NaN std fails too.
        if !normalization.std.iter().all(|s| *s > 0.0) {
            return Err(DataError::Invalid(format!(
                "{name}: normalisation std must be positive: {:?}",
                normalization.std
            )));
        }
        let lut = (0..channels)
            .map(|c| {
                let (mean, std) = (normalization.mean[c], normalization.std[c]);
                std::array::from_fn(|p| (p as f32 / 255.0 - mean) / std)
            })
            .collect();
        Ok(Dataset { name, split, shape, class_names, images, labels, normalization, lut })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// `[channels, height, width]` of one sample.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels in one sample: channels x height x width.
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// All pixels, sample after sample, each in CHW order.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// The pixels of sample `i` (CHW), or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.sample_len();
        self.images.get(i * n..(i + 1) * n)
    }

    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// How many samples each class has, indexed by label.
    pub fn label_histogram(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for &label in &self.labels {
            counts[usize::from(label)] += 1;
        }
        counts
    }

    /// Mean and population standard deviation of each channel's pixels,
    /// scaled to [0, 1]: what the normalisation constants should be when
    /// computed on a training split.
    pub fn pixel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let [channels, h, w] = self.shape;
        let plane = h * w;
        let mut sum = vec![0u64; channels];
        let mut sum_sq = vec![0u64; channels];
        for sample in self.images.chunks_exact(self.sample_len()) {
            for (c, pixels) in sample.chunks_exact(plane).enumerate() {
                for &p in pixels {
                    sum[c] += u64::from(p);
                    sum_sq[c] += u64::from(p) * u64::from(p);
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / count / 255.0).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(&sq, &m)| (sq as f64 / count / (255.0 * 255.0) - m * m).max(0.0).sqrt())
            .collect();
        (mean, std)
    }

    /// Fills `images` with the samples at `indices`, normalised to f32 in
    /// NCHW order, and `labels` with their labels.
    ///
    /// `images` must hold `indices.len() * sample_len()` values and `labels`
    /// `indices.len()`. With `augment` set, each sample draws its crop
    /// offset (row, then column) and then its flip from `rng`, in index
    /// order, so a seed fixes the batch exactly; with [`Augment::NONE`] the
    /// generator is left untouched. Padding is a zero pixel before
    /// normalisation, as torchvision pads.
    pub fn fill_batch(
        &self,
        indices: &[usize],
        augment: Augment,
        rng: &mut ChaCha8Rng,
        images: &mut [f32],
        labels: &mut [i64],
    ) -> Result<(), DataError> {
        let sample_len = self.sample_len();
        if images.len() != indices.len() * sample_len || labels.len() != indices.len() {
            return Err(DataError::Invalid(format!(
                "fill_batch: {} indices need {} image values and {} labels, got buffers of {} and {}",
                indices.len(),
                indices.len() * sample_len,
                indices.len(),
                images.len(),
                labels.len()
            )));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid(format!(
                "fill_batch: index {bad} is past the end of {} {} ({} samples)",
                self.name,
                self.split,
                self.len()
            )));
        }
        for ((&index, out), label) in indices.iter().zip(images.chunks_exact_mut(sample_len)).zip(labels.iter_mut()) {
            let sample = &self.images[index * sample_len..(index + 1) * sample_len];
            *label = i64::from(self.labels[index]);
            if augment.is_none() {
                self.normalise_into(sample, out);
            } else {
                self.augment_into(sample, out, augment, rng);
            }
        }
        Ok(())
    }

    fn normalise_into(&self, sample: &[u8], out: &mut [f32]) {
        let plane = self.shape[1] * self.shape[2];
        for ((lut, pixels), out) in self.lut.iter().zip(sample.chunks_exact(plane)).zip(out.chunks_exact_mut(plane)) {
            for (o, &p) in out.iter_mut().zip(pixels) {
                *o = lut[usize::from(p)];
            }
        }
    }

    fn augment_into(&self, sample: &[u8], out: &mut [f32], augment: Augment, rng: &mut ChaCha8Rng) {
        let [_, h, w] = self.shape;
        let pad = augment.pad;
        // Modulo of a 32-bit draw: the bias for spans this small is below 1e-8.
        let mut draw = |span: usize| {
            if span <= 1 {
                0
            } else {
                rng.next_u32() as usize % span
            }
        };
        let off_y = draw(2 * pad + 1);
        let off_x = draw(2 * pad + 1);
        let flip = augment.hflip && draw(2) == 1;
        let plane = h * w;
        for ((lut, pixels), out) in self.lut.iter().zip(sample.chunks_exact(plane)).zip(out.chunks_exact_mut(plane)) {
            let padding = lut[0];
            for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
                // Row y of the crop is row y + off_y of the padded image, so
                // row y + off_y - pad of the original.
                let Some(src_y) = (y + off_y).checked_sub(pad).filter(|&sy| sy < h) else {
                    out_row.fill(padding);
                    continue;
                };
                let src_row = &pixels[src_y * w..(src_y + 1) * w];
                for (x, o) in out_row.iter_mut().enumerate() {
                    // The flip mirrors the crop, so it picks the column first.
                    let cx = if flip { w - 1 - x } else { x };
                    *o = match (cx + off_x).checked_sub(pad).filter(|&sx| sx < w) {
                        Some(src_x) => lut[usize::from(src_row[src_x])],
                        None => padding,
                    };
                }
            }
        }
    }
}

/// A generator for [`Dataset::fill_batch`] and [`shuffle`]. ChaCha8 rather
/// than rand's `StdRng` because its stream is fixed by specification, so a
/// seed gives the same batches on every platform and every crate version.
pub fn rng(seed: u64) -> ChaCha8Rng {
    use rand_chacha::rand_core::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed)
}

/// Shuffles `indices` in place (Fisher-Yates) with `rng`: the order of one epoch.
pub fn shuffle(indices: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..indices.len()).rev() {
        // Modulo of a 64-bit draw: the bias is below 2^-32 for any slice that fits in memory.
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        indices.swap(i, j);
    }
}
