//! The facts about each dataset nasc knows: name, shape, classes, splits, published counts,
//! normalisation constants and download table. It must not read files or touch the network.

use std::fmt;
use std::str::FromStr;

use crate::error::DataError;
use crate::fetch::{fetch_files, Extract, FetchOptions, Fetched, RemoteFile};
use crate::preprocess::{Augment, Normalization};
use std::path::Path;

/// A dataset nasc can load. The spelling in [`DatasetName::name`] is the one
/// used everywhere: on the command line, in cache file names, in the run store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    Cifar10,
    Cifar100,
    Svhn,
    Imagenette,
    Celeba,
    /// Any `train/<class>/*.jpg` tree, decoded to `size`x`size` RGB.
    ImageFolder {
        size: u32,
    },
}

/// One of the published splits of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
    /// Only CelebA publishes one (partition 1 of list_eval_partition.txt).
    Val,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Test, Split::Val];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Val => "val",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            "val" | "valid" | "validation" => Ok(Split::Val),
            _ => Err(DataError::UnknownSplit(s.to_string())),
        }
    }
}

/// The default side of `imagefolder` images; `imagefolder:N` picks another.
pub const IMAGE_FOLDER_DEFAULT_SIZE: u32 = 64;

/// Every fixed name, in the order `nasc data` lists them.
pub const KNOWN: [&str; 8] =
    ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagenette", "celeba", "imagefolder[:SIZE]"];

impl FromStr for DatasetName {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || DataError::UnknownDataset { name: s.to_string(), known: KNOWN.join(", ") };
        Ok(match s {
            "mnist" => DatasetName::Mnist,
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => DatasetName::FashionMnist,
            "cifar10" | "cifar-10" => DatasetName::Cifar10,
            "cifar100" | "cifar-100" => DatasetName::Cifar100,
            "svhn" => DatasetName::Svhn,
            "imagenette" => DatasetName::Imagenette,
            "celeba" => DatasetName::Celeba,
            "imagefolder" => DatasetName::ImageFolder { size: IMAGE_FOLDER_DEFAULT_SIZE },
            _ => {
                let size = s.strip_prefix("imagefolder:").ok_or_else(unknown)?;
                let size: u32 = size.parse().map_err(|_| unknown())?;
                // Below 8 pixels nothing is left to learn; above 512 the u8
                // cache of even a small tree outgrows memory.
                if !(8..=512).contains(&size) {
                    return Err(DataError::UnknownDataset {
                        name: s.to_string(),
                        known: "imagefolder:SIZE takes a SIZE from 8 to 512".to_string(),
                    });
                }
                DatasetName::ImageFolder { size }
            }
        })
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetName::ImageFolder { size } if *size == IMAGE_FOLDER_DEFAULT_SIZE => f.write_str("imagefolder"),
            DatasetName::ImageFolder { size } => write!(f, "imagefolder:{size}"),
            other => f.write_str(other.fixed_name()),
        }
    }
}

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

const FASHION: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

const CIFAR10: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The fine labels, in the order of fine_label_names.txt in the binary release.
const CIFAR100: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// ImageNette's class folders (WordNet ids) in sorted order, which is the
/// class order, with the names fast.ai gives them.
pub(crate) const IMAGENETTE: [(&str, &str); 10] = [
    ("n01440764", "tench"),
    ("n02102040", "English springer"),
    ("n02979186", "cassette player"),
    ("n03000684", "chain saw"),
    ("n03028079", "church"),
    ("n03394916", "French horn"),
    ("n03417042", "garbage truck"),
    ("n03425413", "gas pump"),
    ("n03445777", "golf ball"),
    ("n03888257", "parachute"),
];

const CELEBA: [&str; 2] = ["female", "male"];

/// ImageNet's channel statistics, the usual constants for natural RGB photos.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl DatasetName {
    fn fixed_name(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
            DatasetName::Svhn => "svhn",
            DatasetName::Imagenette => "imagenette",
            DatasetName::Celeba => "celeba",
            DatasetName::ImageFolder { .. } => "imagefolder",
        }
    }

    /// The canonical spelling (`fashion-mnist`, `imagefolder:32`).
    pub fn name(self) -> String {
        self.to_string()
    }

    /// The stem of this dataset's cache files: the name without characters
    /// that some file systems refuse (`imagefolder:32` becomes `imagefolder32`).
    pub fn cache_key(self) -> String {
        match self {
            DatasetName::ImageFolder { size } => format!("imagefolder{size}"),
            other => other.fixed_name().to_string(),
        }
    }

    /// Channels, height, width of one sample as nasc feeds it to a model.
    pub fn shape(self) -> [usize; 3] {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => [1, 28, 28],
            DatasetName::Cifar10 | DatasetName::Cifar100 | DatasetName::Svhn => [3, 32, 32],
            DatasetName::Imagenette | DatasetName::Celeba => [3, 64, 64],
            DatasetName::ImageFolder { size } => [3, size as usize, size as usize],
        }
    }

    /// The number of classes, where it is fixed before any file is read
    /// (an image folder has as many as it has class folders).
    pub fn classes(self) -> Option<usize> {
        self.class_names().map(|names| names.len())
    }

    /// Class names in label order, where they are fixed.
    pub fn class_names(self) -> Option<Vec<String>> {
        let names: Vec<&str> = match self {
            DatasetName::Mnist | DatasetName::Svhn => DIGITS.to_vec(),
            DatasetName::FashionMnist => FASHION.to_vec(),
            DatasetName::Cifar10 => CIFAR10.to_vec(),
            DatasetName::Cifar100 => CIFAR100.to_vec(),
            DatasetName::Imagenette => IMAGENETTE.iter().map(|(_, name)| *name).collect(),
            DatasetName::Celeba => CELEBA.to_vec(),
            DatasetName::ImageFolder { .. } => return None,
        };
        Some(names.into_iter().map(str::to_string).collect())
    }

    /// The splits the dataset publishes.
    pub fn splits(self) -> &'static [Split] {
        match self {
            DatasetName::Celeba => &[Split::Train, Split::Val, Split::Test],
            _ => &[Split::Train, Split::Test],
        }
    }

    /// Checks that `split` is one this dataset publishes.
    pub fn check_split(self, split: Split) -> Result<(), DataError> {
        if self.splits().contains(&split) {
            Ok(())
        } else {
            Err(DataError::NoSuchSplit {
                dataset: self.name(),
                split: split.to_string(),
                available: self.splits().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            })
        }
    }

    /// The number of samples in the published split, where there is one.
    /// ImageNette's counts are those of the imagenette2 release (all three sizes).
    pub fn published_count(self, split: Split) -> Option<usize> {
        match (self, split) {
            (DatasetName::Mnist | DatasetName::FashionMnist, Split::Train) => Some(60_000),
            (DatasetName::Mnist | DatasetName::FashionMnist, Split::Test) => Some(10_000),
            (DatasetName::Cifar10 | DatasetName::Cifar100, Split::Train) => Some(50_000),
            (DatasetName::Cifar10 | DatasetName::Cifar100, Split::Test) => Some(10_000),
            (DatasetName::Svhn, Split::Train) => Some(73_257),
            (DatasetName::Svhn, Split::Test) => Some(26_032),
            (DatasetName::Imagenette, Split::Train) => Some(9_469),
            (DatasetName::Imagenette, Split::Test) => Some(3_925),
            (DatasetName::Celeba, Split::Train) => Some(162_770),
            (DatasetName::Celeba, Split::Val) => Some(19_867),
            (DatasetName::Celeba, Split::Test) => Some(19_962),
            _ => None,
        }
    }

    /// Per-channel mean and standard deviation of pixel values in [0, 1].
    ///
    /// The grey and 32x32 datasets use the statistics of their own training
    /// split (population standard deviation over all pixels), the figures
    /// the literature quotes; `nasc data info --stats` recomputes them from
    /// the data. The photo datasets use ImageNet's, as torchvision does for
    /// natural images: ImageNette is a subset of ImageNet, and CelebA and
    /// arbitrary folders have no published figures of their own.
    pub fn normalization(self) -> Normalization {
        let (mean, std, source): (&[f32], &[f32], &str) = match self {
            DatasetName::Mnist => (&[0.1307], &[0.3081], "MNIST training split (PyTorch's MNIST example)"),
            DatasetName::FashionMnist => (&[0.2860], &[0.3530], "Fashion-MNIST training split"),
            DatasetName::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616], "CIFAR-10 training split"),
            DatasetName::Cifar100 => (&[0.5071, 0.4865, 0.4409], &[0.2673, 0.2564, 0.2762], "CIFAR-100 training split"),
            DatasetName::Svhn => (&[0.4377, 0.4438, 0.4728], &[0.1980, 0.2010, 0.1970], "SVHN training split"),
            DatasetName::Imagenette | DatasetName::Celeba | DatasetName::ImageFolder { .. } => {
                (&IMAGENET_MEAN, &IMAGENET_STD, "ImageNet (torchvision's constants for natural images)")
            }
        };
        Normalization { mean: mean.to_vec(), std: std.to_vec(), source: source.to_string() }
    }

    /// How the native images become the samples nasc trains on. Part of the
    /// cache key: a change here rebuilds every cache of the dataset.
    pub fn preprocessing(self) -> String {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => "native 28x28 grey".to_string(),
            DatasetName::Cifar10 | DatasetName::Svhn => "native 32x32 RGB".to_string(),
            DatasetName::Cifar100 => "native 32x32 RGB, fine labels".to_string(),
            DatasetName::Imagenette => {
                "centre square crop, triangle-filter resize to 64x64 RGB (= shorter side to 64, centre crop)"
                    .to_string()
            }
            DatasetName::Celeba => {
                "aligned 178x218: centre crop 178x178, triangle-filter resize to 64x64 RGB; label = attribute Male"
                    .to_string()
            }
            DatasetName::ImageFolder { size } => {
                format!("centre square crop, triangle-filter resize to {size}x{size} RGB")
            }
        }
    }

    /// Pad and flip settings that suit the dataset when augmentation is on
    /// (it is off for the one-epoch proxy). Digits are never flipped: a
    /// mirrored 2 is not a 2.
    pub fn suggested_augment(self) -> Augment {
        match self {
            DatasetName::Mnist => Augment { pad: 2, hflip: false },
            DatasetName::FashionMnist => Augment { pad: 2, hflip: true },
            DatasetName::Svhn => Augment { pad: 4, hflip: false },
            DatasetName::Cifar10 | DatasetName::Cifar100 => Augment { pad: 4, hflip: true },
            DatasetName::Imagenette | DatasetName::Celeba => Augment { pad: 8, hflip: true },
            DatasetName::ImageFolder { size } => Augment { pad: (size / 8) as usize, hflip: true },
        }
    }

    /// The files `nasc data fetch` downloads, from their canonical sources.
    /// Sizes and SHA-256 sums are those TensorFlow Datasets records for the
    /// same URLs. An image folder has no source: the user brings it.
    pub fn remote_files(self) -> Vec<RemoteFile> {
        let file = |name: &str, urls: &[&str], size: u64, sha256: &str, extract: Option<Extract>| RemoteFile {
            file: name.to_string(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            size: Some(size),
            sha256: Some(sha256.to_string()),
            extract,
        };
        // yann.lecun.com has refused anonymous downloads since 2023, so the
        // mirrors that torchvision and TensorFlow use come first; the
        // checksums make any of them as good as the original.
        let mnist = |name: &str, size: u64, sha256: &str| {
            let urls = [
                format!("https://ossci-datasets.s3.amazonaws.com/mnist/{name}"),
                format!("https://storage.googleapis.com/cvdf-datasets/mnist/{name}"),
                format!("http://yann.lecun.com/exdb/mnist/{name}"),
            ];
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            file(name, &urls, size, sha256, None)
        };
        let fashion = |name: &str, size: u64, sha256: &str| {
            let url = format!("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{name}");
            file(name, &[&url], size, sha256, None)
        };
        // CelebA lives on Google Drive; this host serves large files without
        // the "can't scan for viruses" page when asked with confirm=t.
        let drive = |name: &str, id: &str, size: u64, sha256: &str, extract: Option<Extract>| {
            let url = format!("https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t");
            file(name, &[&url], size, sha256, extract)
        };
        match self {
            DatasetName::Mnist => vec![
                mnist(
                    "train-images-idx3-ubyte.gz",
                    9_912_422,
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                ),
                mnist(
                    "train-labels-idx1-ubyte.gz",
                    28_881,
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                ),
                mnist(
                    "t10k-images-idx3-ubyte.gz",
                    1_648_877,
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                ),
                mnist(
                    "t10k-labels-idx1-ubyte.gz",
                    4_542,
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            ],
            DatasetName::FashionMnist => vec![
                fashion(
                    "train-images-idx3-ubyte.gz",
                    26_421_880,
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                ),
                fashion(
                    "train-labels-idx1-ubyte.gz",
                    29_515,
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                ),
                fashion(
                    "t10k-images-idx3-ubyte.gz",
                    4_422_102,
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                ),
                fashion(
                    "t10k-labels-idx1-ubyte.gz",
                    5_148,
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                ),
            ],
            DatasetName::Cifar10 => vec![file(
                "cifar-10-binary.tar.gz",
                &["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"],
                170_052_171,
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                Some(Extract::TarGz { creates: "cifar-10-batches-bin".to_string() }),
            )],
            DatasetName::Cifar100 => vec![file(
                "cifar-100-binary.tar.gz",
                &["https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"],
                168_513_733,
                "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
                Some(Extract::TarGz { creates: "cifar-100-binary".to_string() }),
            )],
            DatasetName::Svhn => vec![
                file(
                    "train_32x32.mat",
                    &["http://ufldl.stanford.edu/housenumbers/train_32x32.mat"],
                    182_040_794,
                    "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                    None,
                ),
                file(
                    "test_32x32.mat",
                    &["http://ufldl.stanford.edu/housenumbers/test_32x32.mat"],
                    64_275_384,
                    "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                    None,
                ),
            ],
            // The 160px release: the smallest that still holds 64px samples.
            DatasetName::Imagenette => vec![file(
                "imagenette2-160.tgz",
                &["https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"],
                98_948_031,
                "88daccb09b6fce93f45e6c09ddeb269cce705549e6bff322092a2a5a11489863",
                Some(Extract::TarGz { creates: "imagenette2-160".to_string() }),
            )],
            DatasetName::Celeba => vec![
                drive(
                    "img_align_celeba.zip",
                    "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
                    1_443_490_838,
                    "46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74",
                    Some(Extract::Zip { creates: "img_align_celeba".to_string() }),
                ),
                drive(
                    "list_attr_celeba.txt",
                    "0B7EVK8r0v71pblRyaVFSWGxPY0U",
                    26_721_026,
                    "f0e5da289d5ccf75ffe8811132694922b60f2af59256ed362afa03fefba324d0",
                    None,
                ),
                drive(
                    "list_eval_partition.txt",
                    "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
                    2_836_386,
                    "fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7",
                    None,
                ),
            ],
            DatasetName::ImageFolder { .. } => Vec::new(),
        }
    }
}

/// Downloads every file of a dataset into `root` (created if needed),
/// verifies it, and unpacks archives.
pub fn fetch(name: DatasetName, root: &Path, options: &FetchOptions) -> Result<Vec<Fetched>, DataError> {
    let files = name.remote_files();
    if files.is_empty() {
        return Err(DataError::Invalid(format!(
            "{name} has nothing to fetch: it is a folder you bring (train/<class>/<image>, test/<class>/<image>)"
        )));
    }
    fetch_files(&files, root, options)
}
