//! Training for real, on the CPU: LeNet-5 learns Fashion-MNIST, an absurd learning rate is
//! `diverged`, limits give `timeout` and `oom`, saved weights evaluate the same, and a seed fixes the run.
//!
//! Data: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or
//! `$NASC_TEST_DATA/fashion-mnist`.

use indicatif::ProgressBar;
use nasc_backend::train::{self, OptimizerKind, TrainConfig, TrainResult};
use nasc_datasets::Dataset;
use nasc_delta::Verdict;
use nasc_lang::check::{binding, check_source, Budget, Graph};
use nasc_runtime::Device;
use std::path::PathBuf;
use std::sync::OnceLock;

fn data_root() -> PathBuf {
    std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from)
}

fn data() -> &'static (Dataset, Dataset) {
    static DATA: OnceLock<(Dataset, Dataset)> = OnceLock::new();
    DATA.get_or_init(|| {
        train::load_data(&config()).unwrap_or_else(|e| {
            panic!(
                "Fashion-MNIST is needed under {}: install `dataset-fashion-mnist` or set NASC_TEST_DATA ({e})",
                data_root().display()
            )
        })
    })
}

fn lenet5() -> Graph {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo/lenet5.arch"))
        .expect("zoo/lenet5.arch");
    let b = binding::dataset("fashion-mnist").expect("a known dataset");
    check_source(&src, b, &Budget::default()).expect("lenet5 checks").graph
}

/// Adam at PyTorch's default rate, on a subset so that the suite stays quick.
fn config() -> TrainConfig {
    TrainConfig {
        dataset: "fashion-mnist".into(),
        data_root: data_root(),
        batch: 64,
        optimizer: OptimizerKind::Adam,
        lr: 1e-3,
        limit: Some(12_000),
        device: Device::Cpu,
        ..TrainConfig::default()
    }
}

fn run(config: &TrainConfig) -> TrainResult {
    let (train_set, test_set) = data();
    train::train(&lenet5(), train_set, test_set, config, &ProgressBar::hidden())
}

#[test]
fn lenet5_learns_fashion_mnist_in_one_epoch() {
    let r = run(&config());
    assert_eq!(r.verdict, Verdict::Ok, "{}", r.message);
    let acc = r.metrics.test_accuracy.expect("an ok run is evaluated");
    // Measured: 0.730, 0.742, 0.750 on this subset (12k samples, seeds 0, 1, 2); chance is 0.10.
    assert!(acc > 0.65, "test accuracy {acc}");
    assert_eq!(r.metrics.samples, 12_000);
    assert_eq!(r.metrics.steps, 12_000_usize.div_ceil(64));
    assert!(r.metrics.train_loss.expect("a loss") < 1.2);
    assert_eq!(r.metrics.params, 44_426);
}

#[test]
fn the_same_seed_gives_the_same_accuracy() {
    let cfg = TrainConfig { limit: Some(3_000), seed: 5, optimizer: OptimizerKind::Sgd, lr: 0.01, ..config() };
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a.verdict, Verdict::Ok, "{}", a.message);
    assert_eq!(a.metrics.test_accuracy, b.metrics.test_accuracy);
    assert_eq!(a.metrics.train_loss, b.metrics.train_loss);
}

#[test]
fn an_absurd_learning_rate_is_diverged() {
    let cfg = TrainConfig { lr: 1e9, optimizer: OptimizerKind::Sgd, limit: Some(6_400), ..config() };
    let r = run(&cfg);
    assert_eq!(r.verdict, Verdict::Diverged, "{r:?}");
    assert!(r.message.contains("loss became"), "{}", r.message);
    assert!(r.metrics.steps < 100, "stopped early: {} steps", r.metrics.steps);
    assert_eq!(r.metrics.test_accuracy, None);
}

#[test]
fn the_time_limit_is_timeout() {
    let r = run(&TrainConfig { time_limit: Some(0.0), ..config() });
    assert_eq!(r.verdict, Verdict::Timeout, "{r:?}");
    assert_eq!(r.metrics.steps, 0);
}

#[test]
fn a_run_past_the_memory_limit_is_oom_before_it_starts() {
    let r = run(&TrainConfig { memory_limit: Some(1 << 20), ..config() });
    assert_eq!(r.verdict, Verdict::Oom, "{r:?}");
    assert!(r.message.contains("batch 64"), "{}", r.message);
    assert_eq!(r.metrics.steps, 0);
}

#[test]
fn saved_weights_evaluate_to_the_same_accuracy() {
    let dir = std::env::temp_dir().join(format!("nasc-train-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("lenet5.mpk");
    let r = run(&TrainConfig { limit: Some(2_000), save: Some(path.clone()), ..config() });
    assert_eq!(r.verdict, Verdict::Ok, "{}", r.message);
    assert!(r.message.is_empty(), "{}", r.message);

    let device = Default::default();
    let model = train::load_weights::<burn::backend::Flex>(&lenet5(), &path, &device).expect("the weights load");
    let (acc, loss) = train::evaluate(&model, &data().1, 1000, &device);
    assert_eq!(Some(acc), r.metrics.test_accuracy);
    assert!((loss - r.metrics.test_loss.expect("a test loss")).abs() < 1e-4);
    // Another network's program is refused, never loaded: another layer count (Burn's loader
    // panics), another width, another kernel. (A bias the file has and the program lacks is
    // dropped by Burn's loader unseen.)
    let zoo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo/lenet5.arch")).unwrap();
    let b = binding::dataset("fashion-mnist").unwrap();
    for (from, to) in
        [("linear(84)", "linear(84)\n  linear(84)"), ("linear(84)", "linear(80)"), ("conv(6, k=5)", "conv(6, k=3)")]
    {
        assert!(zoo.contains(from), "{from}");
        let graph = check_source(&zoo.replacen(from, to, 1), b, &Budget::default()).expect("the variant checks").graph;
        let e = train::load_weights::<burn::backend::Flex>(&graph, &path, &device)
            .err()
            .unwrap_or_else(|| panic!("{to}: another network's weights load"));
        assert!(e.contains("saved from another network than this program"), "{to}: {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_backend_not_compiled_in_says_which_feature_to_build_with() {
    if cfg!(feature = "cuda") {
        return;
    }
    let err = nasc_runtime::available(Device::Cuda(0)).expect_err("no CUDA in a default build");
    assert!(err.contains("--features cuda"), "{err}");
    let r = run(&TrainConfig { device: Device::Cuda(0), ..config() });
    assert_eq!(r.verdict, Verdict::Crashed);
    assert!(r.message.contains("--features cuda"), "{}", r.message);
}

#[test]
fn a_panic_while_training_is_a_verdict_and_the_process_carries_on() {
    // A graph the checker would never produce: `flatten` replaced by `identity`,
    // so `linear` meets feature maps and the forward pass panics.
    let mut graph = lenet5();
    let flatten = graph.nodes.iter().position(|n| n.op == nasc_lang::check::Op::Flatten).expect("lenet5 flattens");
    graph.nodes[flatten].op = nasc_lang::check::Op::Identity;
    let (train_set, test_set) = data();
    let r = train::train(&graph, train_set, test_set, &config(), &ProgressBar::hidden());
    assert_eq!(r.verdict, Verdict::Crashed, "{r:?}");
    assert!(r.message.starts_with("training panicked: "), "{}", r.message);
    assert!(r.message.contains("linear on feature maps"), "{}", r.message);
    // The next candidate trains as usual.
    let ok = run(&TrainConfig { limit: Some(640), ..config() });
    assert_eq!(ok.verdict, Verdict::Ok, "{}", ok.message);
}
