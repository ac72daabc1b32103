//! Every operation of the language is whole: it has a shape rule (a program using it checks and its
//! graph holds the operation), a compile arm (the module builds with the checker's parameter count,
//! and a training step runs forward and backward), and an entry in docs/language.md.
//! Adding an operation to `syntax::signature::OPS` without all three fails here, naming what is missing.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use nasc_backend::compile;
use nasc_lang::check::{binding, check_source, Budget};
use nasc_lang::syntax::signature::OPS;

#[path = "../../../tests/common/repo.rs"]
mod common;

/// A small net body that uses `op`, on a 3×16×16 input. `None` for an operation this test does not
/// know yet: the test then fails and asks for one.
fn example(op: &str) -> Option<&'static str> {
    Some(match op {
        "conv" => "conv(4, k=3, s=2, p=1, g=1)\nrelu\ngap\nlinear(classes)",
        "dwconv" => "conv(4, k=1)\ndwconv(k=3, p=1)\ngap\nlinear(classes)",
        "bn" => "conv(4, k=3)\nbn\nrelu\ngap\nlinear(classes)",
        "ln" => "conv(4, k=3)\nln\ngap\nlinear(classes)",
        "gn" => "conv(4, k=3)\ngn(2)\ngap\nlinear(classes)",
        "relu" => "conv(4, k=3)\nrelu\ngap\nlinear(classes)",
        "relu6" => "conv(4, k=3)\nrelu6\ngap\nlinear(classes)",
        "gelu" => "conv(4, k=3)\ngelu\ngap\nlinear(classes)",
        "silu" => "conv(4, k=3)\nsilu\ngap\nlinear(classes)",
        "hardswish" => "conv(4, k=3)\nhardswish\ngap\nlinear(classes)",
        "hardsigmoid" => "conv(4, k=3)\nhardsigmoid\ngap\nlinear(classes)",
        "sigmoid" => "conv(4, k=3)\nsigmoid\ngap\nlinear(classes)",
        "tanh" => "conv(4, k=3)\ntanh\ngap\nlinear(classes)",
        "leaky_relu" => "conv(4, k=3)\nleaky_relu(0.1)\ngap\nlinear(classes)",
        "elu" => "conv(4, k=3)\nelu(0.5)\ngap\nlinear(classes)",
        "dropout" => "conv(4, k=3)\ndropout(0.2)\ngap\nlinear(classes)",
        "identity" => "conv(4, k=3)\nidentity\ngap\nlinear(classes)",
        "maxpool" => "conv(4, k=3, p=1)\nmaxpool(k=3, s=2, p=1)\ngap\nlinear(classes)",
        "avgpool" => "conv(4, k=3, p=1)\navgpool(k=2)\ngap\nlinear(classes)",
        "gap" => "conv(4, k=3)\ngap\nlinear(classes)",
        "adaptive_avgpool" => "conv(4, k=3)\nadaptive_avgpool(2)\nflatten\nlinear(classes)",
        "flatten" => "conv(2, k=3, s=2)\nflatten\nlinear(classes)",
        "linear" => "gap\nlinear(8)\nrelu\nlinear(classes)",
        "add" => "x = conv(4, k=3, p=1)\nconv(4, k=3, p=1)\nadd(x)\ngap\nlinear(classes)",
        "mul" => "x = conv(4, k=3, p=1)\ngap\nlinear(4)\nsigmoid\nmul(x)\ngap\nlinear(classes)",
        "concat" => "x = conv(4, k=3, p=1)\nconv(2, k=1)\nconcat(x)\ngap\nlinear(classes)",
        "shuffle" => "conv(4, k=3)\nshuffle(2)\ngap\nlinear(classes)",
        "slice" => "conv(4, k=3)\nslice(1, 3)\ngap\nlinear(classes)",
        "patch" => "patch(8, k=4)\ntoken_mean\nlinear(classes)",
        "cls_token" => "patch(8, k=4)\ncls_token\ncls_pool\nlinear(classes)",
        "pos_embed" => "patch(8, k=4)\npos_embed\ntoken_mean\nlinear(classes)",
        "attn" => "patch(8, k=4)\nattn(2)\ntoken_mean\nlinear(classes)",
        "token_mean" => "patch(8, k=4)\nln\ntoken_mean\nlinear(classes)",
        "cls_pool" => "patch(8, k=4)\ncls_token\npos_embed\ncls_pool\nlinear(classes)",
        _ => return None,
    })
}

fn program(op: &str, body: &str) -> String {
    let body: String = body.lines().map(|l| format!("  {l}\n")).collect();
    format!("arch op_{op}\n\nnet {{\n{body}}}\n")
}

#[test]
fn every_operation_has_a_shape_rule_a_compile_arm_and_a_documentation_entry() {
    let docs = std::fs::read_to_string(common::root().join("docs/language.md")).expect("docs/language.md");
    let table = docs.split("## Operations").nth(1).expect("docs/language.md has an Operations section");
    let table = table.split("\n## ").next().unwrap_or(table);
    let b = binding::Binding { input: [3, 16, 16], classes: 5 };
    let device = Default::default();
    let mut missing = Vec::new();
    for sig in OPS {
        let op = sig.name;
        if !table.contains(&format!("`{op}`")) && !table.contains(&format!("`{op}(")) {
            missing.push(format!("{op}: no entry in the Operations table of docs/language.md"));
        }
        let Some(body) = example(op) else {
            missing.push(format!("{op}: no example program in crates/backend/tests/operations.rs"));
            continue;
        };
        let src = program(op, body);
        let checked = match check_source(&src, b, &Budget::default()) {
            Ok(c) => c,
            Err(d) => {
                missing.push(format!("{op}: its example does not check: {}\n{src}", d[0].message));
                continue;
            }
        };
        // `dwconv` elaborates to a convolution with one group per channel.
        let node = if op == "dwconv" { "conv" } else { op };
        if !checked.graph.nodes.iter().any(|n| n.op.name() == node) {
            missing.push(format!("{op}: the checked graph holds no `{op}` node (no shape rule of its own?)\n{src}"));
            continue;
        }
        // The compile arm: the module builds, counts what the checker counts, and trains a step.
        let model = compile::build::<Autodiff<Flex>>(&checked.graph, 0, &device);
        let running =
            checked.graph.nodes.iter().filter(|n| n.op.name() == "bn").map(|n| 2 * n.shape.channels()).sum::<u64>();
        if model.num_params() as u64 != checked.graph.params() + running {
            missing.push(format!(
                "{op}: the module has {} parameters, the checker counts {} (+{running} running statistics)",
                model.num_params(),
                checked.graph.params()
            ));
        }
        let x = Tensor::<Autodiff<Flex>, 4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let y = model.forward(x);
        if y.dims() != [2, 5] {
            missing.push(format!("{op}: output {:?}, expected [2, 5]", y.dims()));
            continue;
        }
        let loss = y.powf_scalar(2.0).mean();
        let grads = loss.backward();
        let trained = model.num_params() == 0 || model_has_gradients(&model, &grads);
        if !trained {
            missing.push(format!("{op}: the backward pass gave no parameter a gradient"));
        }
    }
    assert!(missing.is_empty(), "operations not whole:\n{}", missing.join("\n"));
}

/// Whether any parameter of `model` received a gradient.
fn model_has_gradients<B: AutodiffBackend>(model: &compile::GraphModel<B>, grads: &B::Gradients) -> bool {
    struct Seen<'a, B: AutodiffBackend> {
        grads: &'a B::Gradients,
        any: bool,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Seen<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.any |= param.val().grad(self.grads).is_some();
        }
    }
    let mut seen = Seen { grads, any: false };
    model.visit(&mut seen);
    seen.any
}
