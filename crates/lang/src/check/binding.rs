//! What a program is checked against: the input shape and class count of a
//! dataset, and the budgets a candidate must fit. Knows names and numbers, no data.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// Input channels, height, width.
    pub input: [u64; 3],
    pub classes: u64,
}

/// The datasets nasc knows, with the input shape programs are checked and
/// trained at. ImageNette and CelebA are natively larger; both are used at
/// 64x64 so that a one-epoch proxy stays affordable (ImageNette: shorter side
/// resized to 64, centre crop, as downsampled-ImageNet work does; CelebA: the
/// aligned 178x218 faces centre-cropped to 178x178 and resized to 64x64, the
/// usual CelebA-64 protocol; the task is the `Male` attribute, two classes).
pub const DATASETS: &[(&str, Binding)] = &[
    ("mnist", Binding { input: [1, 28, 28], classes: 10 }),
    ("fashion-mnist", Binding { input: [1, 28, 28], classes: 10 }),
    ("cifar10", Binding { input: [3, 32, 32], classes: 10 }),
    ("cifar100", Binding { input: [3, 32, 32], classes: 100 }),
    ("svhn", Binding { input: [3, 32, 32], classes: 10 }),
    ("imagenette", Binding { input: [3, 64, 64], classes: 10 }),
    ("celeba", Binding { input: [3, 64, 64], classes: 2 }),
];

pub fn dataset(name: &str) -> Option<Binding> {
    let lower = name.to_ascii_lowercase().replace('_', "-");
    let key = match lower.as_str() {
        "fashion" | "fashionmnist" | "fmnist" => "fashion-mnist",
        "cifar-10" => "cifar10",
        "cifar-100" => "cifar100",
        other => other,
    };
    DATASETS.iter().find(|(n, _)| *n == key).map(|(_, b)| *b)
}

pub fn dataset_names() -> Vec<&'static str> {
    DATASETS.iter().map(|(n, _)| *n).collect()
}

/// Limits a candidate must fit. The defaults admit every zoo model under every
/// binding with room to spare, and refuse what would not train in a proxy run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub max_params: u64,
    pub max_macs: u64,
    /// Activation memory per sample, bytes.
    pub max_activation_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { max_params: 100_000_000, max_macs: 20_000_000_000, max_activation_bytes: 1 << 30 }
    }
}
