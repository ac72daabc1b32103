//! Training throughput beside PyTorch: one epoch of Fashion-MNIST on the CPU, as
//! /work/shared/bench/torch_train.py runs it (same models, batch, optimizer, protocol),
//! printed as one JSON object in the same fields.
//!
//!     cargo bench --bench train_lenet5 -- [--model lenet5|smallcnn] [--batch 128] [--opt adam|sgd] [--lr X] [--limit N]
//!
//! Data: /usr/share/datasets/fashion-mnist (Debian `dataset-fashion-mnist`), or `$NASC_DATA`.
//! Threads: the CPU backend uses rayon; set RAYON_NUM_THREADS to match torch's --threads.

use indicatif::ProgressBar;
use nasc_backend::train::{self, OptimizerKind, TrainConfig};
use nasc_lang::check::{binding, check_source, Budget};
use std::path::PathBuf;

const SMALLCNN: &str = "
arch smallcnn

net {
  conv(32, k=3, p=1)
  relu
  maxpool(2)
  conv(64, k=3, p=1)
  relu
  maxpool(2)
  flatten
  linear(128)
  relu
  linear(classes)
}
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let model = flag("--model").unwrap_or_else(|| "lenet5".into());
    let optimizer = match flag("--opt").as_deref() {
        Some("sgd") => OptimizerKind::Sgd,
        _ => OptimizerKind::Adam,
    };
    let src = match model.as_str() {
        "lenet5" => std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo/lenet5.arch"))
            .expect("zoo/lenet5.arch"),
        "smallcnn" => SMALLCNN.to_string(),
        other => panic!("unknown model {other}: choose lenet5 or smallcnn"),
    };
    let data_root = std::env::var_os("NASC_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from);
    let config = TrainConfig {
        dataset: "fashion-mnist".into(),
        data_root,
        batch: flag("--batch").map_or(128, |b| b.parse().expect("--batch N")),
        optimizer,
        lr: flag("--lr")
            .map_or(if optimizer == OptimizerKind::Adam { 1e-3 } else { 0.01 }, |l| l.parse().expect("--lr X")),
        limit: flag("--limit").map(|n| n.parse().expect("--limit N")),
        eval_batch: 1000,
        ..TrainConfig::default()
    };
    let graph = check_source(&src, binding::dataset("fashion-mnist").expect("known"), &Budget::default())
        .expect("the benchmark model checks")
        .graph;
    let (train_set, test_set) = train::load_data(&config).expect("Fashion-MNIST is installed");
    let r = train::train(&graph, &train_set, &test_set, &config, &ProgressBar::hidden());
    let loadavg: Vec<String> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .map(str::to_string)
        .collect();
    let out = serde_json::json!({
        "model": model, "params": r.metrics.params, "batch": config.batch,
        "opt": format!("{:?}", config.optimizer).to_lowercase(), "lr": config.lr,
        "threads": std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        "verdict": r.verdict, "train_s": r.timings.train_s, "img_per_s": r.metrics.images_per_s,
        "test_acc": r.metrics.test_accuracy, "eval_s": r.timings.eval_s,
        "peak_rss_mib": r.metrics.peak_rss_bytes.map(|b| b / (1 << 20)), "loadavg": loadavg,
    });
    println!("{out}");
}
