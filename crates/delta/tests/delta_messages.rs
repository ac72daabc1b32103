//! One snapshot per delta error message (and the JSON a search run records), so that a change
//! to any text a person or a model reads is seen in review. Snapshots live in
//! tests/corpus/snapshots.

use std::path::Path;

use nasc_delta::delta::{apply, apply_reply, extract, ApplyOptions, DeltaError, Limits};

const SMALL: &str = include_str!("corpus/bases/small.arch");

fn snapshot(name: &str, e: &DeltaError) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::assert_snapshot!(name, format!("verdict: {}\n\n{e}", e.verdict()));
    });
}

fn apply_err(base: &str, diff: &str) -> DeltaError {
    apply(base, diff, ApplyOptions::default()).expect_err("the diff must fail")
}

#[test]
fn message_no_diff() {
    let e = extract("I would add dropout after the stem.", &Limits::default()).unwrap_err();
    snapshot("delta_no_diff", &e);
}

#[test]
fn message_malformed_header() {
    let e = extract("```diff\n@@ -4x,3 +4,3 @@\n bn\n-relu\n+gelu\n```\n", &Limits::default()).unwrap_err();
    snapshot("delta_malformed_header", &e);
}

#[test]
fn message_changes_nothing() {
    let e = apply_err(SMALL, "@@ -5,2 +5,2 @@\n   bn\n   relu\n");
    snapshot("delta_changes_nothing", &e);
}

#[test]
fn message_too_large() {
    let limits = Limits { max_bytes: 64, ..Limits::default() };
    let e = extract(&"x".repeat(100), &limits).unwrap_err();
    snapshot("delta_too_large", &e);
}

#[test]
fn message_does_not_apply_with_closest_lines() {
    let e =
        apply_err(SMALL, "@@ -4,4 +4,4 @@\n   conv(16, k=3, p=1)\n   bn\n-  sigmoid\n+  gelu\n   conv(32, k=3, p=1)\n");
    snapshot("delta_does_not_apply", &e);
}

#[test]
fn message_does_not_apply_out_of_order() {
    let e = apply_err(
        SMALL,
        "@@ -10,2 +10,2 @@\n   gap\n-  linear(classes)\n+  linear(10)\n@@ -4,3 +4,3 @@\n   conv(16, k=3, p=1)\n-  bn\n+  ln\n",
    );
    snapshot("delta_out_of_order", &e);
}

#[test]
fn message_insertion_without_a_place() {
    let e = apply_err(SMALL, "@@ @@\n+  dropout\n");
    snapshot("delta_insertion_without_a_place", &e);
}

#[test]
fn message_work_limit() {
    let base = "relu\n".repeat(5_000);
    let opts = ApplyOptions { limits: Limits { max_work: 10_000, ..Limits::default() }, ..ApplyOptions::default() };
    let e = apply(&base, "@@ @@\n relu\n-relu\n+gelu\n relu\n", opts).unwrap_err();
    snapshot("delta_work_limit", &e);
}

#[test]
fn message_ambiguous() {
    let e = apply_err(SMALL, "@@ @@\n   bn\n-  relu\n+  gelu\n");
    snapshot("delta_ambiguous", &e);
}

#[test]
fn recorded_json_of_an_error_and_of_tolerances() {
    let e = apply_err(SMALL, "@@ @@\n   bn\n-  relu\n+  gelu\n");
    let reply =
        "Try this:\n```diff\n@@ -9,3 +9,4 @@\n gap\n-  linear(classes)\n+  dropout(0.2)\n+  linear(classes)\n```\n";
    let applied = apply_reply(SMALL, reply, ApplyOptions::default()).unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::assert_json_snapshot!("delta_json_error", e);
        insta::assert_json_snapshot!("delta_json_tolerances", applied.tolerances);
    });
}
