//! Training and evaluation of compiled candidates on a backend chosen at run time; failures are verdicts.
//! It reads data through `nasc-datasets` and models through `compile`; it must not panic on a bad candidate.

mod config;
mod eval;
mod memory;
mod result;
mod run;

pub use config::{default_data_root, OptimizerKind, TrainConfig};
pub use eval::evaluate_saved;
pub use memory::estimate as memory_estimate;
pub use result::{EpochMetrics, Metrics, Timings, TrainResult};
pub use run::{evaluate, load_weights, train, WeightsRecorder};

use nasc_datasets::{DataError, Dataset, Split};

/// Loads the training and test splits of `config.dataset` from `<data_root>/<dataset>`.
pub fn load_data(config: &TrainConfig) -> Result<(Dataset, Dataset), DataError> {
    let root = config.data_root.join(&config.dataset);
    let train = nasc_datasets::load(&config.dataset, &root, Split::Train)?;
    let test = nasc_datasets::load(&config.dataset, &root, Split::Test)?;
    Ok((train, test))
}
