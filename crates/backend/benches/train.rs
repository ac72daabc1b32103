//! Training and evaluation throughput of every zoo model on the CPU, beside PyTorch.
//!
//!     cargo bench -p nasc-backend --bench train -- [--models resnet18,bnres] [--shapes 28,32]
//!         [--batches 64,128] [--seconds 3] [--threads 2] [--python PATH] [--json FILE]
//!
//! Rows: every `zoo/*.arch` plus the two models of the old `train_lenet5` benchmark's
//! neighbourhood that a search produces and the zoo lacks (`smallcnn`: plain convs and pooling;
//! `bnres`: convs with batch norm, a residual add and global pooling). Shapes: `28` is
//! Fashion-MNIST's 1×28×28, `32` is CIFAR's 3×32×32; both use synthetic images (throughput does
//! not depend on the pixels), 10 classes.
//!
//! Protocol, per model, shape and batch, run back to back: a fresh process of this benchmark
//! trains the model through `nasc_backend::train::train` (the proxy's own path: SGD, momentum
//! 0.9, lr 0.01, no weight decay) for two warm-up steps, then for as many steps as fill
//! `--seconds` at the warm-up's pace (at least 2); then a fresh PyTorch process
//! (`train_torch.py`, models from `tests/reference/torch_zoo.py`) does the same: two warm-up
//! steps, then the same number of timed steps. Both then evaluate 512 images at batch 256.
//! Figures: training images/s, evaluation images/s, and the peak resident memory of the
//! process (VmHWM for nasc, `ru_maxrss` for Python; PyTorch's includes its interpreter).
//! A model that cannot run is a row that says why.
//!
//! Threads: `--threads` (default 2) sets `RAYON_NUM_THREADS` for nasc and
//! `torch.set_num_threads` for PyTorch. PyTorch: `--python` or `$NASC_TORCH_PYTHON`, else
//! `python3`; without torch the PyTorch columns say so.

use indicatif::ProgressBar;
use nasc_backend::train::{self, OptimizerKind, TrainConfig};
use nasc_datasets::{Dataset, Normalization, Split};
use nasc_lang::check::{binding, check_source, Budget};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

const SMALLCNN: &str = "arch smallcnn

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

const BNRES: &str = "arch bnres

block res(c) {
  x = in
  conv(c, k=3, p=1, bias=false)
  bn
  relu
  conv(c, k=3, p=1, bias=false)
  bn
  add(x)
  relu
}

net {
  conv(32, k=3, p=1, bias=false)
  bn
  relu
  maxpool(2)
  res(32)
  conv(64, k=3, s=2, p=1, bias=false)
  bn
  relu
  gap
  linear(classes)
}
";

const EVAL_IMAGES: usize = 512;
const EVAL_BATCH: usize = 256;
const WARMUP_STEPS: usize = 2;

/// What one process measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Measure {
    params: u64,
    steps: usize,
    train_img_s: f64,
    eval_img_s: f64,
    peak_rss_mib: f64,
}

/// One row: a model at one shape and batch, nasc beside PyTorch (or why either did not run).
#[derive(Debug, Serialize)]
struct Row {
    model: String,
    shape: String,
    batch: usize,
    nasc: Result<Measure, String>,
    torch: Result<Measure, String>,
}

fn zoo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../zoo")
}

fn source(model: &str) -> Result<String, String> {
    match model {
        "smallcnn" => Ok(SMALLCNN.into()),
        "bnres" => Ok(BNRES.into()),
        zoo => std::fs::read_to_string(zoo_dir().join(format!("{zoo}.arch")))
            .map_err(|e| format!("no model {zoo}: zoo/{zoo}.arch: {e}")),
    }
}

fn all_models() -> Vec<String> {
    let mut zoo: Vec<String> = std::fs::read_dir(zoo_dir())
        .expect("zoo/ is readable")
        .filter_map(|e| e.ok()?.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    zoo.sort();
    zoo.extend(["smallcnn".into(), "bnres".into()]);
    zoo
}

/// The binding a shape names: `28` Fashion-MNIST's, `32` CIFAR-10's.
fn binding_of(shape: &str) -> Result<(&'static str, [usize; 3]), String> {
    match shape {
        "28" => Ok(("fashion-mnist", [1, 28, 28])),
        "32" => Ok(("cifar10", [3, 32, 32])),
        other => Err(format!("unknown shape {other}: choose 28 (1x28x28) or 32 (3x32x32)")),
    }
}

/// `n` synthetic images of `shape` with labels 0..10, from a fixed seed.
fn synthetic(n: usize, shape: [usize; 3], split: Split) -> Dataset {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let images: Vec<u8> = (0..n * shape.iter().product::<usize>()).map(|_| next() as u8).collect();
    let labels: Vec<u16> = (0..n).map(|_| (next() % 10) as u16).collect();
    let normalization =
        Normalization { mean: vec![0.5; shape[0]], std: vec![0.25; shape[0]], source: "synthetic".into() };
    Dataset::new("synthetic", split, shape, (0..10).map(|c| c.to_string()).collect(), images, labels, normalization)
        .expect("a consistent synthetic dataset")
}

/// In the child: trains `model` and prints its [`Measure`] as JSON, or `{"error": …}`.
fn one(model: &str, shape: &str, batch: usize, seconds: f64) -> Result<Measure, String> {
    let (name, dims) = binding_of(shape)?;
    let graph = check_source(&source(model)?, binding::dataset(name).expect("a known dataset"), &Budget::default())
        .map_err(|d| d.first().map_or_else(|| "the model does not check".into(), |d| d.message.clone()))?
        .graph;
    let config = |steps: usize| TrainConfig {
        dataset: name.into(),
        batch,
        optimizer: OptimizerKind::Sgd,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0,
        limit: Some(steps * batch),
        eval_batch: EVAL_BATCH,
        ..TrainConfig::default()
    };
    let test = synthetic(EVAL_IMAGES, dims, Split::Test);
    let run = |steps: usize| {
        let r = train::train(
            &graph,
            &synthetic(steps * batch, dims, Split::Train),
            &test,
            &config(steps),
            &ProgressBar::hidden(),
        );
        match r.verdict {
            nasc_delta::Verdict::Ok => Ok(r),
            v => Err(format!("{v:?}: {}", r.message)),
        }
    };
    let warm = run(WARMUP_STEPS)?;
    let steps = ((seconds * warm.metrics.images_per_s / batch as f64) as usize).clamp(2, 500);
    let r = run(steps)?;
    Ok(Measure {
        params: r.metrics.params,
        steps,
        train_img_s: r.metrics.images_per_s,
        eval_img_s: EVAL_IMAGES as f64 / r.timings.eval_s.max(1e-9),
        peak_rss_mib: r.metrics.peak_rss_bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
    })
}

/// Runs a child process that prints one JSON line: a [`Measure`] or `{"error": …}`.
fn measure(mut cmd: Command) -> Result<Measure, String> {
    let out = cmd.output().map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    if let Ok(m) = serde_json::from_str::<Measure>(last) {
        return Ok(m);
    }
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(last) {
        if let Some(e) = o.get("error").and_then(|e| e.as_str()) {
            return Err(e.to_string());
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
    Err(format!("exited with {}: {why}", out.status))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let list = |name: &str, default: &str| -> Vec<String> {
        flag(name).unwrap_or_else(|| default.into()).split(',').map(str::to_string).collect()
    };
    let seconds: f64 = flag("--seconds").map_or(3.0, |s| s.parse().expect("--seconds S"));
    if let Some(i) = args.iter().position(|a| a == "--one") {
        let [model, shape, batch] = [1, 2, 3].map(|k| args.get(i + k).expect("--one MODEL SHAPE BATCH").clone());
        let result = one(&model, &shape, batch.parse().expect("a batch size"), seconds);
        match result {
            Ok(m) => println!("{}", serde_json::to_string(&m).expect("serialises")),
            Err(e) => println!("{}", serde_json::json!({ "error": e })),
        }
        return;
    }
    let models = flag("--models").map_or_else(all_models, |m| m.split(',').map(str::to_string).collect());
    let shapes = list("--shapes", "28,32");
    let batches: Vec<usize> = list("--batches", "64,128").iter().map(|b| b.parse().expect("--batches N,N")).collect();
    let threads = flag("--threads").unwrap_or_else(|| "2".into());
    let python =
        flag("--python").or_else(|| std::env::var("NASC_TORCH_PYTHON").ok()).unwrap_or_else(|| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/train_torch.py");
    let me = std::env::current_exe().expect("the benchmark's own path");

    println!(
        "{:<16} {:>5} {:>5} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>7} {:>7} | {:>6}",
        "model", "shape", "batch", "train/s", "torch", "ratio", "eval/s", "torch", "ratio", "MiB", "torch", "steps"
    );
    let mut rows = Vec::new();
    for model in &models {
        for shape in &shapes {
            for &batch in &batches {
                let mut nasc = Command::new(&me);
                nasc.args(["--one", model, shape, &batch.to_string(), "--seconds", &seconds.to_string()])
                    .env("RAYON_NUM_THREADS", &threads);
                let nasc = measure(nasc);
                let steps = nasc.as_ref().map_or(2, |m| m.steps);
                let mut torch = Command::new(&python);
                torch.arg(&script).args([
                    "--model",
                    model,
                    "--shape",
                    shape,
                    "--batch",
                    &batch.to_string(),
                    "--steps",
                    &steps.to_string(),
                    "--threads",
                    &threads,
                ]);
                let torch = measure(torch);
                let row = Row { model: model.clone(), shape: shape.clone(), batch, nasc, torch };
                println!("{}", line(&row));
                rows.push(row);
            }
        }
    }
    if let Some(path) = flag("--json") {
        std::fs::write(&path, serde_json::to_string_pretty(&rows).expect("serialises"))
            .expect("--json FILE is writable");
    }
}

fn line(r: &Row) -> String {
    let head = format!("{:<16} {:>5} {:>5}", r.model, r.shape, r.batch);
    match (&r.nasc, &r.torch) {
        (Ok(a), Ok(b)) => format!(
            "{head} | {:>9.1} {:>9.1} {:>5.2}x | {:>9.1} {:>9.1} {:>5.2}x | {:>7.0} {:>7.0} | {:>6}",
            a.train_img_s,
            b.train_img_s,
            a.train_img_s / b.train_img_s,
            a.eval_img_s,
            b.eval_img_s,
            a.eval_img_s / b.eval_img_s,
            a.peak_rss_mib,
            b.peak_rss_mib,
            a.steps
        ),
        (Ok(a), Err(why)) => format!(
            "{head} | {:>9.1} {:>9} {:>6} | {:>9.1} {:>9} {:>6} | {:>7.0} {:>7} | {:>6}  torch: {why}",
            a.train_img_s, "-", "-", a.eval_img_s, "-", "-", a.peak_rss_mib, "-", a.steps
        ),
        (Err(why), Ok(_)) => format!("{head} | nasc did not run: {why}"),
        (Err(a), Err(b)) if a == b => format!("{head} | not run: {a}"),
        (Err(a), Err(b)) => format!("{head} | not run: nasc: {a}; torch: {b}"),
    }
}
