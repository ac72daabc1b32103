//! Compiling the zoo: every model under every binding it checks against builds a Burn module
//! with exactly the checker's parameter count, and a forward pass gives `[batch, classes]`.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::tensor::{Distribution, Tensor};
use nasc_backend::compile;
use nasc_lang::check::{binding, check_source, Budget};

type Cpu = Flex;

#[path = "../../../tests/common/repo.rs"]
mod common;
use common::zoo;

/// Builds one model under one binding and runs an inference forward pass on two images.
fn parity(name: &str, src: &str, dataset: &str, b: binding::Binding) -> Option<String> {
    let checked = check_source(src, b, &Budget::default()).ok()?;
    let device = Default::default();
    let model = compile::build::<Cpu>(&checked.graph, 0, &device);
    let have = model.trainable_params() as u64;
    let want = checked.graph.params();
    if have != want {
        return Some(format!("{name} on {dataset}: the module has {have} parameters, the checker counts {want}"));
    }
    // Burn's own count adds batch norm's running mean and variance, which PyTorch keeps as buffers.
    let buffers = running_stats(&checked.graph);
    if model.num_params() as u64 != want + buffers {
        return Some(format!(
            "{name} on {dataset}: Burn counts {}, expected {want} + {buffers} running statistics",
            model.num_params()
        ));
    }
    let [c, h, w] = b.input.map(|d| d as usize);
    let x = Tensor::<Cpu, 4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let y = model.forward(x);
    if y.dims() != [2, b.classes as usize] {
        return Some(format!("{name} on {dataset}: output {:?}, expected [2, {}]", y.dims(), b.classes));
    }
    None
}

/// Batch norm's running mean and variance: two values per channel.
fn running_stats(graph: &nasc_lang::check::Graph) -> u64 {
    graph.nodes.iter().filter(|n| n.op == nasc_lang::check::Op::BatchNorm).map(|n| 2 * n.shape.channels()).sum()
}

#[test]
fn every_zoo_model_builds_with_the_checkers_parameter_count_and_output_shape() {
    let mut failures = Vec::new();
    let mut built = 0;
    for (name, src) in zoo() {
        for (dataset, b) in binding::DATASETS {
            if check_source(&src, *b, &Budget::default()).is_err() {
                continue; // unsupported bindings are tests/zoo.rs's business
            }
            built += 1;
            failures.extend(parity(&name, &src, dataset, *b));
        }
    }
    assert!(built >= 17 * 5, "only {built} model/binding pairs checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A program that uses every operation of the language at least once.
const EVERY_OP: &str = "
arch every_op

block gate(c) {
  x = in
  gap
  linear(c / 4)
  relu
  linear(c)
  hardsigmoid
  mul(x)
}

net {
  conv(8, k=3, p=1, bias=false)
  bn
  x = relu6
  a = x |> conv(8, k=3, p=same, g=2) |> gn(2) |> leaky_relu(0.1)
  b = x |> dwconv(k=3, p=1) |> ln |> elu(1.0)
  a |> concat(b)
  shuffle(4)
  slice(0, 8)
  gate(8)
  silu
  maxpool(3, s=2, p=1, ceil=true)
  avgpool(2, s=1, ceil=true)
  adaptive_avgpool(4)
  dropout(0.2)
  hardswish
  y = identity
  patch(16, k=2)
  cls_token
  t = pos_embed
  ln
  attn(4)
  add(t)
  linear(32)
  gelu
  linear(16, bias=false)
  tanh
  c = cls_pool
  m = t |> token_mean
  c |> concat(m)
  sigmoid
  z = flatten
  bn
  mul(z)
  v = y |> flatten |> linear(32)
  add(v)
  linear(classes)
}
";

#[test]
fn every_operation_runs_forward_and_backward_in_training_and_inference() {
    let b = binding::Binding { input: [3, 16, 16], classes: 5 };
    let checked = match check_source(EVERY_OP, b, &Budget::default()) {
        Ok(c) => c,
        Err(d) => panic!("the every-op program does not check: {d:?}"),
    };
    let mut ops: Vec<&str> = checked.graph.nodes.iter().map(|n| n.op.name()).collect();
    ops.sort();
    ops.dedup();
    assert_eq!(ops.len(), 34, "operations covered: {ops:?}");

    type Train = Autodiff<Cpu>;
    let device = Default::default();
    let model = compile::build::<Train>(&checked.graph, 1, &device);
    assert_eq!(model.trainable_params() as u64, checked.graph.params());
    assert_eq!(model.num_params() as u64, checked.graph.params() + running_stats(&checked.graph));
    let x = Tensor::<Train, 4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let y = model.forward(x.clone());
    assert_eq!(y.dims(), [4, 5]);
    let grads = y.clone().sum().backward();
    let first = match &model.layers[1] {
        Some(compile::Layer::Conv(c)) => c.weight.grad(&grads).expect("the first conv gets a gradient"),
        other => panic!("node 1 should be a conv, got {other:?}"),
    };
    let g: Vec<f32> = first.into_data().to_vec().expect("f32 gradient");
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0), "gradient {g:?}");

    // Inference: running statistics, no dropout; the same input gives the same output twice.
    let valid = model.valid();
    let x = x.inner();
    let a: Vec<f32> = valid.forward(x.clone()).into_data().to_vec().expect("f32");
    let b: Vec<f32> = valid.forward(x).into_data().to_vec().expect("f32");
    assert_eq!(a, b);
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn the_same_seed_builds_the_same_weights() {
    let src = std::fs::read_to_string(common::root().join("zoo/lenet5.arch")).expect("lenet5");
    let checked = check_source(&src, binding::dataset("mnist").expect("mnist"), &Budget::default()).expect("checks");
    let device = Default::default();
    let weights = |seed| {
        let m = compile::build::<Cpu>(&checked.graph, seed, &device);
        match &m.layers[1] {
            Some(compile::Layer::Conv(c)) => c.weight.val().into_data().to_vec::<f32>().expect("f32"),
            _ => panic!("node 1 is the first conv"),
        }
    };
    assert_eq!(weights(7), weights(7));
    assert_ne!(weights(7), weights(8));
    // PyTorch's bound for a 1x5x5 kernel: 1/sqrt(25).
    assert!(weights(7).iter().all(|w| w.abs() <= 0.2));
}

/// nasc's batch norm (its own forward pass, for speed) against Burn's `BatchNorm`: the same
/// output and input gradient while training, the same running mean, and PyTorch's unbiased running variance.
#[test]
fn batch_norm_trains_as_burns_and_keeps_pytorchs_running_variance() {
    type Train = Autodiff<Cpu>;
    let src = "net {\n  bn\n  flatten\n}\n";
    let checked =
        check_source(src, binding::Binding { input: [3, 4, 5], classes: 60 }, &Budget::default()).expect("checks");
    let device = Default::default();
    let model = compile::build::<Train>(&checked.graph, 0, &device);
    let Some(compile::Layer::BatchNorm(ours)) = &model.layers[1] else { panic!("node 1 is bn") };
    let burns = burn::nn::BatchNormConfig::new(3).init::<Train>(&device);

    let x = Tensor::<Train, 4>::random([6, 3, 4, 5], Distribution::Normal(2.0, 3.0), &device);
    let r = Tensor::<Train, 2>::random([6, 60], Distribution::Normal(0.0, 1.0), &device);
    let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
    let ya = model.forward(xa.clone());
    let yb = burns.forward(xb.clone()).reshape([6, 60]);
    let close = |a: Tensor<Cpu, 2>, b: Tensor<Cpu, 2>| {
        let d: f32 = (a - b).abs().max().into_scalar();
        assert!(d < 1e-4, "differ by {d}");
    };
    close(ya.clone().inner(), yb.clone().inner());
    let (ga, gb) = ((ya * r.clone()).sum().backward(), (yb * r).sum().backward());
    close(xa.grad(&ga).expect("grad").reshape([6, 60]), xb.grad(&gb).expect("grad").reshape([6, 60]));

    let mean_a: Vec<f32> = ours.running_mean.value_sync().into_data().to_vec().expect("f32");
    let mean_b: Vec<f32> = burns.running_mean.value_sync().into_data().to_vec().expect("f32");
    for (a, b) in mean_a.iter().zip(&mean_b) {
        assert!((a - b).abs() < 1e-5, "running means {mean_a:?} vs {mean_b:?}");
    }
    // Burn keeps the biased variance, PyTorch the unbiased: n/(n-1) of it, n = 6·4·5.
    let var_a: Vec<f32> = ours.running_var.value_sync().into_data().to_vec().expect("f32");
    let var_b: Vec<f32> = burns.running_var.value_sync().into_data().to_vec().expect("f32");
    let n = 120.0f32;
    for (a, b) in var_a.iter().zip(&var_b) {
        let batch_var_b = (b - 0.9) / 0.1;
        let want = 0.9 + 0.1 * batch_var_b * n / (n - 1.0);
        assert!((a - want).abs() < 1e-4, "running variance {a}, expected {want}");
    }
}
