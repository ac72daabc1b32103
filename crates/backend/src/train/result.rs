//! What a training run produced: a verdict that explains itself, the metrics, the settings and the timings.
//! Plain serde data, stored as it is in the run store and printed by `nasc train --json`.

use super::config::TrainConfig;
use nasc_delta::Verdict;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean training loss over the last epoch run (over the steps taken, if it stopped early).
    pub train_loss: Option<f64>,
    /// Top-1 accuracy on the test split, in [0, 1]; only for verdict `ok`.
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// Training throughput: samples through forward, backward and step, per second of training.
    pub images_per_s: f64,
    pub steps: usize,
    pub samples: usize,
    /// One entry per epoch started.
    pub epochs: Vec<EpochMetrics>,
    /// The process's peak resident memory (VmHWM) at the end; on a GPU this
    /// is host memory only.
    pub peak_rss_bytes: Option<u64>,
    /// The pre-training estimate compared against the memory limit.
    pub memory_estimate_bytes: u64,
    pub params: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub steps: usize,
    pub seconds: f64,
}

/// Wall-clock seconds of each phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Building the module (parameter initialisation included).
    pub build_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub total_s: f64,
}

/// The outcome of training one candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    /// `ok`, or how training failed: one of [`Verdict::TRAINING`].
    pub verdict: Verdict,
    /// Why the verdict, in words (empty for `ok`).
    pub message: String,
    pub metrics: Metrics,
    pub config: TrainConfig,
    pub timings: Timings,
}
