//! Evaluating saved weights on a dataset's test split, on the backend a device names.
//! It reads the weights file it is given and nothing else; a file that does not fit the graph is an error.

use nasc_datasets::Dataset;
use nasc_lang::check::Graph;
use nasc_runtime::{BackendJob, Device};
use std::path::Path;

/// Test accuracy and mean loss of the weights at `weights` (saved by `nasc train --save`) for
/// `graph` over `test`, in batches of `batch`, on `device`.
pub fn evaluate_saved(
    graph: &Graph,
    weights: &Path,
    test: &Dataset,
    batch: usize,
    device: Device,
) -> Result<(f64, f64), String> {
    nasc_runtime::dispatch(device, EvalJob { graph, weights, test, batch: batch.max(1) })?
}

struct EvalJob<'a> {
    graph: &'a Graph,
    weights: &'a Path,
    test: &'a Dataset,
    batch: usize,
}

impl BackendJob for EvalJob<'_> {
    type Output = Result<(f64, f64), String>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let model = super::load_weights::<B::InnerBackend>(self.graph, self.weights, &device)?;
        Ok(super::evaluate(&model, self.test, self.batch, &device))
    }
}
