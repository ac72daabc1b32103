//! The back-end commands: train and eval.
//! Reads the program, flags and data, calls compile and train, prints the result as text or JSON.

use super::UsageError;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use nasc_backend::train::{self, OptimizerKind, TrainConfig, TrainResult};
use nasc_delta::Verdict;
use nasc_lang::check::{self, binding, Budget, Checked};
use nasc_lang::diag;
use nasc_runtime::Device;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct TrainArgs {
    /// The program to train.
    file: PathBuf,
    /// Dataset to train and test on (see `nasc datasets`).
    #[arg(long, short = 'd')]
    dataset: String,
    /// Folder holding one folder per dataset [default: $NASC_DATA, else ~/.cache/nasc/data].
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// Where to train: cpu, wgpu, wgpu:N, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    optimizer: OptimizerKind,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Cosine decay of the learning rate to zero over the run.
    #[arg(long)]
    cosine: bool,
    /// Linear learning-rate warm-up over this many steps.
    #[arg(long, value_name = "STEPS", default_value_t = 0)]
    warmup: usize,
    /// Seeds weights, the training subset, batch order and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on a seeded random subset of this many samples.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Stop with verdict `timeout` after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,
    /// Verdict `oom` if the memory estimate passes this many bytes [default on cpu: available memory].
    #[arg(long, value_name = "BYTES")]
    memory_limit: Option<u64>,
    /// Batch size for evaluation.
    #[arg(long, default_value_t = 500)]
    eval_batch: usize,
    /// Save the trained weights to this file (`*.mpk`).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Print the result as JSON (verdict, metrics, config, timings) and no progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The program the weights belong to.
    file: PathBuf,
    /// Weights saved by `nasc train --save` (`*.mpk`).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    #[arg(long, short = 'd')]
    dataset: String,
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long)]
    json: bool,
}

/// Reads and checks a program under a dataset; diagnostics are printed and
/// become exit status 1.
fn checked(file: &std::path::Path, dataset: &str) -> Result<Result<(String, Checked), ExitCode>, UsageError> {
    let b = binding::dataset(dataset).ok_or_else(|| {
        UsageError(format!("unknown dataset `{dataset}`; known: {}", binding::dataset_names().join(", ")))
    })?;
    let src = super::front::read(file)?;
    let name = super::front::display_name(file);
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match check::check_source(&src, b, &Budget::default()) {
        Ok(c) => {
            eprint!("{}", diag::render(&c.warnings, &name, &src, color));
            Ok(Ok((src, c)))
        }
        Err(diags) => {
            eprint!("{}", diag::render(&diags, &name, &src, color));
            Ok(Err(ExitCode::from(1)))
        }
    }
}

/// The dataset's own spelling (`fashion_mnist` → `fashion-mnist`), which names its folder.
fn canonical(dataset: &str) -> String {
    dataset
        .to_ascii_lowercase()
        .parse::<nasc_datasets::DatasetName>()
        .map_or_else(|_| dataset.to_string(), |d| d.name())
}

pub fn train(a: TrainArgs) -> Result<ExitCode, UsageError> {
    nasc_runtime::available(a.device).map_err(UsageError)?;
    let (_, program) = match checked(&a.file, &a.dataset)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if a.batch == 0 || a.eval_batch == 0 || a.epochs == 0 {
        return Err(UsageError("--batch, --eval-batch and --epochs must be at least 1".into()));
    }
    if let Some(save) = &a.save {
        weights_file(save, "--save")?;
        if save.is_dir() {
            return Err(UsageError(format!("--save {}: a folder; name the weights' file", save.display())));
        }
    }
    let config = TrainConfig {
        dataset: canonical(&a.dataset),
        data_root: a.data_root.unwrap_or_else(train::default_data_root),
        epochs: a.epochs,
        batch: a.batch,
        optimizer: a.optimizer,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        cosine: a.cosine,
        warmup_steps: a.warmup,
        seed: a.seed,
        device: a.device,
        limit: a.limit,
        time_limit: a.time_limit,
        memory_limit: a.memory_limit,
        eval_batch: a.eval_batch,
        save: a.save,
    };
    let (train_set, test_set) = train::load_data(&config).map_err(|e| {
        UsageError(format!(
            "cannot load {} from {}: {e}",
            config.dataset,
            config.data_root.join(&config.dataset).display()
        ))
    })?;
    if !a.json {
        eprintln!("{}\n", config.summary());
    }
    let progress = if a.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("the template is valid"),
        );
        bar
    };
    let result = train::train(&program.graph, &train_set, &test_set, &config, &progress);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result).expect("results serialise"));
    } else {
        print!("{}", report(&result));
    }
    Ok(if result.verdict == Verdict::Ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The result as a few lines of text.
pub fn report(r: &TrainResult) -> String {
    let m = &r.metrics;
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let num = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut out = format!("verdict        {}\n", r.verdict);
    if !r.message.is_empty() {
        out += &format!("message        {}\n", r.message);
    }
    out += &format!("train loss     {}\n", num(m.train_loss));
    out += &format!("test accuracy  {}\n", pct(m.test_accuracy));
    out += &format!("test loss      {}\n", num(m.test_loss));
    out += &format!("throughput     {:.0} images/s ({} steps, {} samples)\n", m.images_per_s, m.steps, m.samples);
    out += &format!(
        "wall time      {:.2} s (build {:.2}, train {:.2}, eval {:.2})\n",
        r.timings.total_s, r.timings.build_s, r.timings.train_s, r.timings.eval_s
    );
    out += &format!(
        "memory         peak RSS {}, estimate {}\n",
        m.peak_rss_bytes.map_or("-".to_string(), check::human_bytes),
        check::human_bytes(m.memory_estimate_bytes)
    );
    out
}

/// Weights are written by Burn's MessagePack recorder, which names its files `*.mpk` whatever it
/// is given: another extension would make `--save w.bin` write `w.mpk`.
fn weights_file(path: &std::path::Path, flag: &str) -> Result<(), UsageError> {
    if path.extension().is_some_and(|e| e == "mpk") {
        Ok(())
    } else {
        Err(UsageError(format!("{flag} {}: weights files end in .mpk", path.display())))
    }
}

pub fn eval(a: EvalArgs) -> Result<ExitCode, UsageError> {
    nasc_runtime::available(a.device).map_err(UsageError)?;
    weights_file(&a.weights, "--weights")?;
    let (_, program) = match checked(&a.file, &a.dataset)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let config = TrainConfig {
        dataset: canonical(&a.dataset),
        data_root: a.data_root.unwrap_or_else(train::default_data_root),
        ..TrainConfig::default()
    };
    let (_, test_set) = train::load_data(&config).map_err(|e| {
        UsageError(format!(
            "cannot load {} from {}: {e}",
            config.dataset,
            config.data_root.join(&config.dataset).display()
        ))
    })?;
    let (accuracy, loss) =
        train::evaluate_saved(&program.graph, &a.weights, &test_set, a.batch, a.device).map_err(UsageError)?;
    if a.json {
        let out = serde_json::json!({ "test_accuracy": accuracy, "test_loss": loss, "samples": test_set.len() });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON serialises"));
    } else {
        println!(
            "test accuracy  {:.2}%\ntest loss      {loss:.4}\nsamples        {}",
            100.0 * accuracy,
            test_set.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
