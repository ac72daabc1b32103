//! The zoo: every baseline checks under every dataset binding (or says why not in its
//! header), counts the parameters PyTorch counts, is in canonical form, and has a reviewed shape table.

use nasc_lang::check::{binding, check_source, Budget};
use std::collections::BTreeMap;
use std::path::Path;

#[path = "../../../tests/common/repo.rs"]
mod common;
use common::zoo;

/// Datasets a model's header says it does not support: a comment line with
/// "unsupported:" or "not supported:" naming them.
fn unsupported(src: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for line in src.lines().take_while(|l| l.starts_with('#')) {
        let lower = line.to_ascii_lowercase();
        if !(lower.contains("unsupported:") || lower.contains("not supported:")) {
            continue;
        }
        let words: Vec<&str> = lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).collect();
        for name in binding::dataset_names() {
            if words.contains(&name) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn the_zoo_has_the_required_models() {
    let names: Vec<String> = zoo().into_iter().map(|(n, _)| n).collect();
    assert!(names.len() >= 15, "zoo has {} models", names.len());
    for required in [
        "lenet5",
        "alexnet",
        "vgg11_bn",
        "vgg16_bn",
        "resnet18",
        "resnet34",
        "preact_resnet18",
        "wrn16_4",
        "densenet_bc100",
        "mobilenetv2",
        "shufflenetv2",
        "squeezenet1_1",
        "googlenet",
        "efficientnet_b0",
        "se_resnet18",
        "vit_tiny",
        "mlp",
    ] {
        assert!(names.iter().any(|n| n == required), "zoo/{required}.arch is missing");
    }
}

#[test]
fn every_zoo_model_checks_under_every_binding_or_its_header_says_why() {
    let mut failures = Vec::new();
    for (name, src) in zoo() {
        let skip = unsupported(&src);
        for (dataset, b) in binding::DATASETS {
            let result = check_source(&src, *b, &Budget::default());
            match (result, skip.contains(dataset)) {
                (Ok(c), false) => assert!(c.warnings.is_empty(), "{name} under {dataset} warns: {:?}", c.warnings),
                (Err(d), false) => failures.push(format!("{name} under {dataset}: {}", d[0].message)),
                (Ok(_), true) => failures.push(format!("{name} says it does not support {dataset}, but it checks")),
                (Err(_), true) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn zoo_parameter_counts_equal_pytorch() {
    let text = std::fs::read_to_string(common::root().join("tests/reference/zoo_params.json"))
        .expect("reference counts exist");
    let reference: BTreeMap<String, BTreeMap<String, Option<u64>>> = serde_json::from_str(&text).expect("valid json");
    let zoo = zoo();
    for (name, src) in &zoo {
        let counts = reference.get(name).unwrap_or_else(|| panic!("no PyTorch reference for {name}"));
        for (dataset, want) in counts {
            let Some(want) = want else { continue };
            let b = binding::dataset(dataset).expect("a known dataset");
            let c = check_source(src, b, &Budget::default()).unwrap_or_else(|d| panic!("{name}/{dataset}: {:?}", d[0]));
            assert_eq!(
                c.graph.params(),
                *want,
                "{name} under {dataset}: nasc counts {}, PyTorch {want}",
                c.graph.params()
            );
        }
    }
}

#[test]
fn zoo_programs_are_in_canonical_form() {
    for (name, src) in zoo() {
        let formatted = nasc_lang::syntax::fmt::format_source(&src).expect("zoo parses");
        assert_eq!(formatted, src, "zoo/{name}.arch is not canonical; run `nasc fmt zoo/{name}.arch`");
    }
}

/// One snapshot per model and binding: the shape table as `nasc compile` prints it.
#[test]
fn zoo_shape_tables() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(true);
    settings.bind(|| {
        for (name, src) in zoo() {
            let skip = unsupported(&src);
            // CIFAR-10 and a second binding: MNIST's 28x28 where supported, else ImageNette's 64x64.
            let second = if skip.contains(&"mnist") { "imagenette" } else { "mnist" };
            for dataset in ["cifar10", second] {
                let b = binding::dataset(dataset).expect("known");
                let c = check_source(&src, b, &Budget::default()).expect("zoo checks");
                insta::assert_snapshot!(format!("{name}-{dataset}"), c.table(&src, b));
            }
        }
    });
}
