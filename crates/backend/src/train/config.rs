//! The settings of one training run, in one struct: printed at the start and stored with the result.
//! Plain data with serde; it knows no backend and reads no files.

use nasc_runtime::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that decides how a candidate trains. Defaults are the
/// one-epoch proxy of the search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The dataset (a name `nasc datasets` lists).
    pub dataset: String,
    /// The folder holding one folder per dataset (`<data_root>/fashion-mnist/…`).
    pub data_root: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum (PyTorch's, no dampening); Adam's β1 stays 0.9.
    pub momentum: f64,
    /// L2 penalty for sgd and adam (added to the gradient, as PyTorch's
    /// `weight_decay`); decoupled decay for adamw.
    pub weight_decay: f64,
    /// Cosine decay of the learning rate to zero over the run.
    pub cosine: bool,
    /// Linear warm-up from lr/warmup to lr over this many steps.
    pub warmup_steps: usize,
    /// Seeds initial weights, the training subset, batch order and dropout.
    pub seed: u64,
    pub device: Device,
    /// Train on this many samples of the training split (a seeded random subset).
    pub limit: Option<usize>,
    /// Stop with verdict `timeout` once training has run this long (seconds).
    pub time_limit: Option<f64>,
    /// Refuse (verdict `oom`) a run whose memory estimate passes this many
    /// bytes; without it, the memory the system has available.
    pub memory_limit: Option<u64>,
    /// Batch size for evaluation on the test split.
    pub eval_batch: usize,
    /// Save the trained weights here (Burn's named MessagePack recorder).
    pub save: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dataset: "cifar10".into(),
            data_root: default_data_root(),
            epochs: 1,
            batch: 64,
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            cosine: false,
            warmup_steps: 0,
            seed: 0,
            device: Device::Cpu,
            limit: None,
            time_limit: None,
            memory_limit: None,
            eval_batch: 500,
            save: None,
        }
    }
}

/// `$NASC_DATA`, or `~/.cache/nasc/data`.
pub fn default_data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("NASC_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("nasc").join("data")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

impl TrainConfig {
    /// The learning rate at `step` (0-based) of `total`: linear warm-up, then
    /// constant or cosine decay to zero.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if !self.cosine {
            return self.lr;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = (step - self.warmup_steps) as f64 / span;
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// The settings as `key = value` lines, for the start of a run.
    pub fn summary(&self) -> String {
        let value = serde_json::to_value(self).expect("the config serialises");
        let obj = value.as_object().expect("a struct serialises to an object");
        obj.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_warms_up_linearly_then_decays_on_a_cosine() {
        let c = TrainConfig { lr: 0.1, warmup_steps: 4, cosine: true, ..TrainConfig::default() };
        let lrs: Vec<f64> = (0..14).map(|s| c.lr_at(s, 14)).collect();
        assert!((lrs[0] - 0.025).abs() < 1e-12 && (lrs[3] - 0.1).abs() < 1e-12, "{lrs:?}");
        assert!((lrs[4] - 0.1).abs() < 1e-12, "{lrs:?}");
        assert!((lrs[9] - 0.05).abs() < 1e-12, "halfway through the decay: {lrs:?}");
        assert!(lrs[4..].windows(2).all(|w| w[1] < w[0]) && lrs[13] > 0.0, "{lrs:?}");
        let flat = TrainConfig { lr: 0.1, ..TrainConfig::default() };
        assert!((0..10).all(|s| flat.lr_at(s, 10) == 0.1));
    }
}
