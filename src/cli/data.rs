//! `nasc data`: fetch datasets from their canonical sources, and tell what is on disk.
//! Flags and printing only; reading, caching and downloading live in the nasc-datasets crate.

use super::UsageError;
use clap::{Args, Subcommand};
use nasc_datasets::{
    fetch, inspect, load_with, CacheState, CacheStatus, DatasetName, FetchOptions, LoadOptions, Outcome, Split,
    MIRROR_ENV,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const NAME_HELP: &str = "Dataset: mnist, fashion-mnist, cifar10, cifar100, svhn, imagenette, celeba, \
or imagefolder[:SIZE] (a train/<class>/<image> tree you bring, SIZE pixels square, 64 by default)";

const ROOT_HELP: &str = "The dataset's own folder, holding its files as published \
(MNIST and Fashion-MNIST share file names, so each dataset needs one); default data/NAME";

#[derive(Subcommand)]
pub enum DataCmd {
    /// Download a dataset's files from their canonical sources, verify their SHA-256 and unpack them;
    /// a partial download is resumed.
    Fetch(FetchArgs),
    /// Print a dataset's shape, classes and normalisation, and for each split its published size
    /// and the state of its cache.
    Info(InfoArgs),
}

#[derive(Args)]
pub struct FetchArgs {
    #[arg(help = NAME_HELP)]
    name: String,
    #[arg(long, help = ROOT_HELP)]
    root: Option<PathBuf>,
    /// Fetch every file from URL/<file name> instead of its canonical URL (default: $NASC_DATA_MIRROR).
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Also decode every split into the cache now, instead of on first use.
    #[arg(long)]
    cache: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    #[arg(help = NAME_HELP)]
    name: String,
    #[arg(long, help = ROOT_HELP)]
    root: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also load the training split and print its measured pixel mean and std beside the constants.
    #[arg(long)]
    stats: bool,
}

pub fn run(cmd: DataCmd) -> Result<ExitCode, UsageError> {
    match cmd {
        DataCmd::Fetch(args) => fetch_cmd(args),
        DataCmd::Info(args) => info_cmd(args),
    }
}

fn parse_name(name: &str) -> Result<DatasetName, UsageError> {
    name.parse().map_err(|e: nasc_datasets::DataError| UsageError(e.to_string()))
}

fn root_for(root: &Option<PathBuf>, name: DatasetName) -> PathBuf {
    root.clone().unwrap_or_else(|| Path::new("data").join(name.cache_key()))
}

fn fetch_cmd(args: FetchArgs) -> Result<ExitCode, UsageError> {
    let name = parse_name(&args.name)?;
    let root = root_for(&args.root, name);
    let mut options = FetchOptions::from_env();
    if args.mirror.is_some() {
        options.mirror = args.mirror;
    }
    options.progress = !args.quiet;
    if let Some(mirror) = &options.mirror {
        eprintln!("fetching {name} from the mirror {mirror} (set by --mirror or ${MIRROR_ENV})");
    }
    let fetched = fetch(name, &root, &options).map_err(|e| UsageError(e.to_string()))?;
    for f in &fetched {
        let what = match &f.outcome {
            Outcome::Present => "present, checksum verified".to_string(),
            Outcome::Downloaded { bytes, resumed_from: 0 } => format!("downloaded {}, checksum verified", size(*bytes)),
            Outcome::Downloaded { bytes, resumed_from } => {
                format!("downloaded {} (resumed after {}), checksum verified", size(*bytes), size(*resumed_from))
            }
        };
        println!("{:28} {what}", f.file);
        if let Some(dir) = &f.unpacked {
            println!("{:28} unpacked in {}", "", dir.display());
        }
    }
    if args.cache {
        for &split in name.splits() {
            let loaded =
                load_with(name, &root, split, &LoadOptions::default()).map_err(|e| UsageError(e.to_string()))?;
            println!("{split:5} {} samples, {}", loaded.dataset.len(), status(&loaded.cache));
        }
    }
    println!("{name} is in {}", root.display());
    Ok(ExitCode::SUCCESS)
}

fn status(cache: &CacheStatus) -> String {
    match cache {
        CacheStatus::Hit => "cache up to date".to_string(),
        CacheStatus::Built => "cached".to_string(),
        CacheStatus::Rebuilt { reason } => format!("cache rebuilt ({reason})"),
        CacheStatus::NotWritten { reason } => format!("not cached: {reason}"),
        CacheStatus::Off => "not cached".to_string(),
    }
}

fn info_cmd(args: InfoArgs) -> Result<ExitCode, UsageError> {
    let name = parse_name(&args.name)?;
    let root = root_for(&args.root, name);
    let options = LoadOptions::default();
    // Measuring reads the whole training split, so only on request.
    let stats = if args.stats {
        let loaded = load_with(name, &root, Split::Train, &options).map_err(|e| UsageError(e.to_string()))?;
        Some((loaded.dataset.pixel_stats(), loaded.dataset.len()))
    } else {
        None
    };

    // After the measuring, which may have built the training cache.
    let splits = inspect(name, &root, &options);
    let norm = name.normalization();
    let augment = name.suggested_augment();
    let [c, h, w] = name.shape();
    if args.json {
        let value = json!({
            "dataset": name.name(),
            "shape": [c, h, w],
            "classes": name.classes(),
            "class_names": name.class_names(),
            "preprocessing": name.preprocessing(),
            "normalization": norm,
            "suggested_augment": augment,
            "root": root,
            "cache_dir": options.cache_dir_for(&root),
            "splits": splits,
            "measured": stats.as_ref().map(|((mean, std), count)| json!({ "mean": mean, "std": std, "samples": count })),
        });
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON values always serialise"));
        return Ok(ExitCode::SUCCESS);
    }

    let classes = match name.class_names() {
        Some(names) if names.len() > 12 => {
            format!("{}: {}, ... {}", names.len(), names[..10].join(", "), names[names.len() - 1])
        }
        Some(names) => format!("{}: {}", names.len(), names.join(", ")),
        None => "one per class folder of train/".to_string(),
    };
    println!("{name}: {c}x{h}x{w}");
    println!("  classes        {classes}");
    println!("  preprocessing  {}", name.preprocessing());
    println!(
        "  normalisation  mean {}, std {} ({})",
        floats(norm.mean.iter().map(|&v| f64::from(v))),
        floats(norm.std.iter().map(|&v| f64::from(v))),
        norm.source
    );
    if let Some(((mean, std), count)) = &stats {
        println!(
            "  measured       mean {}, std {} (train split, {count} samples)",
            floats(mean.iter().copied()),
            floats(std.iter().copied())
        );
    }
    println!(
        "  augmentation   off for the one-epoch proxy; when on: pad {} + random crop{}",
        augment.pad,
        if augment.hflip { ", horizontal flip" } else { "" }
    );
    println!("  root           {}", root.display());
    println!("  cache          {}", options.cache_dir_for(&root).display());
    println!("  {:5}  {:>9}  cache", "split", "published");
    for s in &splits {
        let published = s.published.map_or_else(|| "-".to_string(), |n| n.to_string());
        let cache = match &s.cache {
            CacheState::Fresh { count, data_bytes, .. } => format!("cached: {count} samples, {}", size(*data_bytes)),
            CacheState::Stale { reason } => format!("not cached ({reason})"),
            CacheState::NoSources { error } => format!("no data: {error}"),
        };
        println!("  {:5}  {published:>9}  {cache}", s.split.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

fn floats(values: impl Iterator<Item = f64>) -> String {
    values.map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(" ")
}

/// Bytes in decimal units, as download sizes are usually quoted.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}
