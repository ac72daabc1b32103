//! One candidate's training run, top to bottom: build, train, evaluate, save; each failure a verdict.
//! Generic over the backend; it must never let a panic or a bad candidate take the process down.

use super::config::{OptimizerKind, TrainConfig};
use super::result::{EpochMetrics, Metrics, Timings, TrainResult};
use crate::compile::{self, GraphModel};
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use nasc_datasets::{Augment, Dataset};
use nasc_delta::Verdict;
use nasc_lang::check::Graph;
use nasc_runtime::{memory, BackendJob, Device};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

/// The recorder weights are saved and loaded with: named MessagePack, f32.
pub type WeightsRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Trains `graph` on `train` and evaluates it on `test` as `config` says.
/// Always returns a result: failures are verdicts, panics included.
/// `progress` shows live loss and throughput (pass `ProgressBar::hidden()` for none).
pub fn train(
    graph: &Graph,
    train: &Dataset,
    test: &Dataset,
    config: &TrainConfig,
    progress: &ProgressBar,
) -> TrainResult {
    memory::keep_freed_buffers();
    let start = Instant::now();
    let mut result = TrainResult {
        verdict: Verdict::Ok,
        message: String::new(),
        metrics: Metrics {
            params: graph.params(),
            memory_estimate_bytes: super::memory::estimate(graph, config.batch),
            ..Metrics::default()
        },
        config: config.clone(),
        timings: Timings::default(),
    };

    // A run that would not fit is refused before it allocates (CPU, or any device with an explicit limit).
    let limit = config.memory_limit.or_else(|| (config.device == Device::Cpu).then(memory::available).flatten());
    if let Some(limit) = limit.filter(|l| result.metrics.memory_estimate_bytes > *l) {
        result.verdict = Verdict::Oom;
        result.message = format!(
            "training at batch {} needs about {} (activations of every operation, their gradients, parameters \
             and optimizer state); the limit is {}",
            config.batch,
            nasc_lang::check::human_bytes(result.metrics.memory_estimate_bytes),
            nasc_lang::check::human_bytes(limit),
        );
        result.timings.total_s = start.elapsed().as_secs_f64();
        return result;
    }

    let job = Job { graph, train, test, config, progress, start, result: result.clone() };
    let outcome = catch_unwind(AssertUnwindSafe(|| nasc_runtime::dispatch(config.device, job)));
    let mut result = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(unavailable)) => {
            result.verdict = Verdict::Crashed;
            result.message = unavailable;
            result
        }
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            result.verdict = if is_out_of_memory(&message) { Verdict::Oom } else { Verdict::Crashed };
            result.message = format!("training panicked: {message}");
            result
        }
    };
    progress.finish_and_clear();
    result.metrics.peak_rss_bytes = memory::peak_rss();
    result.timings.total_s = start.elapsed().as_secs_f64();
    result
}

struct Job<'a> {
    graph: &'a Graph,
    train: &'a Dataset,
    test: &'a Dataset,
    config: &'a TrainConfig,
    progress: &'a ProgressBar,
    start: Instant,
    result: TrainResult,
}

impl BackendJob for Job<'_> {
    type Output = TrainResult;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> TrainResult {
        let Job { graph, train, test, config: cfg, progress, start, mut result } = self;
        B::seed(&device, cfg.seed); // dropout masks

        // The model and optimizer.
        let t = Instant::now();
        let mut model: GraphModel<B> = compile::build(graph, cfg.seed, &device);
        let mut optim = Optim::<B>::new(cfg);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        result.timings.build_s = t.elapsed().as_secs_f64();

        // The samples to train on, and the steps that will take.
        let mut rng = nasc_datasets::rng(cfg.seed);
        let mut samples: Vec<usize> = (0..train.len()).collect();
        if let Some(n) = cfg.limit.filter(|&n| n < samples.len()) {
            nasc_datasets::shuffle(&mut samples, &mut rng);
            samples.truncate(n);
        }
        let steps_per_epoch = samples.len().div_ceil(cfg.batch.max(1));
        let total_steps = steps_per_epoch * cfg.epochs;
        progress.set_length(total_steps as u64);

        // Training.
        let train_start = Instant::now();
        let mut step = 0;
        let mut batch = Batch::default();
        'epochs: for epoch in 0..cfg.epochs {
            let epoch_start = Instant::now();
            let (mut loss_sum, mut epoch_steps) = (0.0, 0);
            nasc_datasets::shuffle(&mut samples, &mut rng);
            for indices in samples.chunks(cfg.batch.max(1)) {
                if let Some(limit) = cfg.time_limit.filter(|&l| start.elapsed().as_secs_f64() > l) {
                    result.verdict = Verdict::Timeout;
                    result.message = format!("the time limit of {limit} s passed at step {step} of {total_steps}");
                }
                if result.verdict != Verdict::Ok {
                    break;
                }
                let (images, labels) = batch.fill::<B>(train, indices, &device);
                let logits = model.forward(images);
                let loss = loss_fn.forward(logits, labels);
                let loss_value: f64 = loss.clone().into_scalar().elem();
                if !loss_value.is_finite() {
                    result.verdict = Verdict::Diverged;
                    result.message = format!("the training loss became {loss_value} at step {step} of {total_steps}");
                    break;
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(cfg.lr_at(step, total_steps), model, grads);

                step += 1;
                epoch_steps += 1;
                loss_sum += loss_value;
                result.metrics.samples += indices.len();
                let rate = result.metrics.samples as f64 / train_start.elapsed().as_secs_f64();
                progress.set_message(format!("epoch {} loss {loss_value:.4} {rate:.0} img/s", epoch + 1));
                progress.inc(1);
            }
            if epoch_steps > 0 {
                result.metrics.epochs.push(EpochMetrics {
                    epoch: epoch + 1,
                    train_loss: loss_sum / epoch_steps as f64,
                    steps: epoch_steps,
                    seconds: epoch_start.elapsed().as_secs_f64(),
                });
                result.metrics.train_loss = Some(loss_sum / epoch_steps as f64);
            }
            if result.verdict != Verdict::Ok {
                break 'epochs;
            }
        }
        result.timings.train_s = train_start.elapsed().as_secs_f64();
        result.metrics.steps = step;
        result.metrics.images_per_s = result.metrics.samples as f64 / result.timings.train_s.max(1e-9);
        if result.verdict != Verdict::Ok {
            return result;
        }

        // Evaluation, with batch norm's running statistics and no dropout.
        progress.set_message("evaluating");
        let t = Instant::now();
        let (accuracy, loss) = evaluate(&model.valid(), test, cfg.eval_batch, &device);
        result.metrics.test_accuracy = Some(accuracy);
        result.metrics.test_loss = Some(loss);
        result.timings.eval_s = t.elapsed().as_secs_f64();

        if let Some(path) = &cfg.save {
            if let Err(e) = model.valid().save_file(path.clone(), &WeightsRecorder::new()) {
                result.message = format!("trained, but the weights could not be saved to {}: {e}", path.display());
            }
        }
        result
    }
}

/// Top-1 accuracy and mean cross-entropy of `model` on `data`.
pub fn evaluate<B: Backend>(
    model: &GraphModel<B>,
    data: &Dataset,
    batch_size: usize,
    device: &B::Device,
) -> (f64, f64) {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut correct, mut loss_sum) = (0i64, 0.0);
    let mut batch = Batch::default();
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (images, labels) = batch.fill::<B>(data, chunk, device);
        let logits = model.forward(images);
        let loss: f64 = loss_fn.forward(logits.clone(), labels.clone()).into_scalar().elem();
        loss_sum += loss * chunk.len() as f64;
        let hits: i64 = logits.argmax(1).reshape([chunk.len()]).equal(labels).int().sum().into_scalar().elem();
        correct += hits;
    }
    let n = data.len().max(1) as f64;
    (correct as f64 / n, loss_sum / n)
}

/// Loads weights saved by a training run into the module built for `graph`. Weights saved from
/// another network are an error: Burn's loader panics on a different number of layers and
/// takes tensors of other shapes, or a bias the program does not have, as they are.
pub fn load_weights<B: Backend>(graph: &Graph, path: &Path, device: &B::Device) -> Result<GraphModel<B>, String> {
    let model = compile::build::<B>(graph, 0, device);
    let want = parameter_shapes(&model);
    let mismatch = || format!("the weights in {} were saved from another network than this program", path.display());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let loaded =
        catch_unwind(AssertUnwindSafe(|| model.load_file(path.to_path_buf(), &WeightsRecorder::new(), device)));
    std::panic::set_hook(hook);
    let model = loaded
        .map_err(|_| format!("{}: its layers are not the program's", mismatch()))?
        .map_err(|e| format!("cannot load weights from {}: {e}", path.display()))?;
    let got = parameter_shapes(&model);
    if got != want {
        let at = want.iter().zip(&got).position(|(w, g)| w != g).unwrap_or(want.len().min(got.len()));
        let show = |s: Option<&Vec<usize>>| s.map_or("nothing".to_string(), |s| format!("{s:?}"));
        return Err(format!(
            "{}: parameter {} is {} in the file where the program has {} ({} parameters against {})",
            mismatch(),
            at + 1,
            show(got.get(at)),
            show(want.get(at)),
            got.len(),
            want.len()
        ));
    }
    Ok(model)
}

/// The shape of every float parameter of `model`, in the order Burn visits them.
fn parameter_shapes<B: Backend>(model: &GraphModel<B>) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            self.0.push(param.val().shape().dims::<D>().to_vec());
        }
    }
    let mut shapes = Shapes(Vec::new());
    model.visit(&mut shapes);
    shapes.0
}

/// Host buffers reused from batch to batch.
#[derive(Default)]
struct Batch {
    images: Vec<f32>,
    labels: Vec<i64>,
}

impl Batch {
    fn fill<B: Backend>(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let [c, h, w] = data.shape();
        let n = indices.len();
        self.images.resize(n * c * h * w, 0.0);
        self.labels.resize(n, 0);
        data.fill_batch(indices, Augment::NONE, &mut nasc_datasets::rng(0), &mut self.images, &mut self.labels)
            .expect("batch buffers are sized to the indices, which are in range");
        let images = Tensor::from_data(TensorData::new(self.images.clone(), [n, c, h, w]), device);
        let labels = Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device);
        (images, labels)
    }
}

/// The optimizer the config names, with PyTorch's defaults where Burn's differ
/// (SGD without dampening, Adam's ε = 1e-8).
enum Optim<B: AutodiffBackend> {
    Sgd(OptimizerAdaptor<crate::compile::cpu::Sgd, GraphModel<B>, B>),
    Adam(OptimizerAdaptor<Adam, GraphModel<B>, B>),
    AdamW(OptimizerAdaptor<AdamW, GraphModel<B>, B>),
}

impl<B: AutodiffBackend> Optim<B> {
    fn new(cfg: &TrainConfig) -> Self {
        let decay = (cfg.weight_decay != 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32));
        match cfg.optimizer {
            OptimizerKind::Sgd => {
                // One pass per parameter on the CPU backend (`compile::cpu::Sgd`), Burn's
                // arithmetic to the bit.
                let momentum = (cfg.momentum != 0.0).then_some((cfg.momentum, 0.0));
                let decay = (cfg.weight_decay != 0.0).then_some(cfg.weight_decay as f32);
                Optim::Sgd(OptimizerAdaptor::from(crate::compile::cpu::Sgd::new(momentum, decay)))
            }
            OptimizerKind::Adam => Optim::Adam(AdamConfig::new().with_epsilon(1e-8).with_weight_decay(decay).init()),
            OptimizerKind::Adamw => {
                Optim::AdamW(AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(cfg.weight_decay as f32).init())
            }
        }
    }

    fn step(&mut self, lr: f64, model: GraphModel<B>, grads: GradientsParams) -> GraphModel<B> {
        match self {
            Optim::Sgd(o) => o.step(lr, model, grads),
            Optim::Adam(o) => o.step(lr, model, grads),
            Optim::AdamW(o) => o.step(lr, model, grads),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Device allocators report exhaustion by panicking; their messages say so
/// (cubecl's launch and buffer errors, CUDA's `CUDA_ERROR_OUT_OF_MEMORY`, wgpu's).
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "out-of-memory",
        "outofmemory",
        "out_of_memory",
        "memory allocation",
        "failed to allocate",
        "allocation failed",
        "can't allocate",
        "cannot allocate",
        "space to allocate",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::is_out_of_memory;

    #[test]
    fn device_allocation_failures_read_as_out_of_memory() {
        for m in [
            "An out-of-memory error happened during launch\nCaused by:\n  pool full",
            "called `Result::unwrap()` on an `Err` value: OutOfMemory { reason: \"x\" }",
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "can't allocate buffer of size: 123",
            "Enough space to allocate a new slice",
        ] {
            assert!(is_out_of_memory(m), "{m}");
        }
        assert!(!is_out_of_memory("index out of bounds: the len is 3 but the index is 7"));
    }
}
