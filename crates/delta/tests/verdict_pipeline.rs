//! The verdict pipeline end to end: every verdict of the front half is reached by the reply
//! that should reach it, carries its explanation, and an `ok` carries the canonical program,
//! its canonical diff against the base, its size, its counts and its timings.

use nasc_delta::delta::{self, judge, judge_reply, unified, Base, Judgement, Options, Tolerance, Verdict};
use nasc_delta::novelty::{fingerprint, Archive, NoveltyVerdict};
use nasc_lang::check::{binding, check_source, Binding, Budget};

const SMALL: &str = include_str!("corpus/bases/small.arch");

const RESNET18: &str = include_str!("../../../zoo/resnet18.arch");

fn cifar() -> Binding {
    binding::dataset("cifar10").unwrap()
}

fn opts() -> Options {
    Options::new(cifar())
}

fn fenced(diff: &str) -> String {
    format!("Here is my change.\n\n```diff\n{diff}```\n\nThis should help.\n")
}

/// SMALL with its second conv widened to 48 channels.
const WIDEN: &str = "\
--- a/small.arch
+++ b/small.arch
@@ -6,5 +6,5 @@
   relu
-  conv(32, k=3, p=1)
+  conv(48, k=3, p=1)
   bn
   relu
   gap
";

fn judged(base: &str, reply: &str, archive: Option<&Archive>, opts: &Options) -> Judgement {
    let j = judge(&Base::new(base, opts), reply, archive, opts);
    // Whatever the verdict, it is named, explained (unless ok) and serialises.
    let v = serde_json::to_value(&j).unwrap();
    assert_eq!(v["verdict"], j.verdict.as_str());
    assert_eq!(j.verdict.as_str().parse::<Verdict>(), Ok(j.verdict));
    if j.verdict != Verdict::Ok {
        assert!(!j.message.is_empty(), "{:?} without a message", j.verdict);
    }
    j
}

#[test]
fn ok_carries_the_canonical_program_its_diff_size_counts_and_timings() {
    let j = judged(SMALL, &fenced(WIDEN), None, &opts());
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    let program = j.program.as_deref().unwrap();
    assert_eq!(program, SMALL.replace("conv(32", "conv(48"));
    assert_eq!(j.diff_lines, Some(2));
    let diff = j.diff.as_deref().unwrap();
    assert!(diff.starts_with("--- a/candidate.arch\n+++ b/candidate.arch\n@@ "), "{diff}");
    // The canonical diff takes the canonical base to the canonical program.
    assert_eq!(delta::apply(SMALL, diff, Default::default()).unwrap().text, program);
    let checked = check_source(program, cifar(), &Budget::default()).unwrap();
    assert_eq!(j.params, Some(checked.graph.params()));
    assert_eq!(j.macs, Some(checked.graph.macs()));
    assert_eq!(j.hash, Some(fingerprint(&checked.graph).hash.hex()));
    assert!(j.tolerances.is_empty());
    assert!(j.delta_error.is_none() && j.diagnostics.is_empty() && j.message.is_empty());
    let t = j.timings;
    assert!(t.extract_ns > 0 && t.apply_ns > 0 && t.parse_ns > 0 && t.check_ns > 0 && t.novelty_ns > 0);
    assert!(t.total_ns >= t.extract_ns + t.apply_ns + t.parse_ns + t.check_ns + t.novelty_ns);
    assert!(j.checked.is_some() && j.fingerprint.is_some());
}

#[test]
fn the_diff_is_between_canonical_forms_whatever_the_reply_looked_like() {
    // A sloppy but applicable diff (no line numbers, odd spacing) against a non-canonical base.
    let base = SMALL.replace("conv(16, k=3, p=1)", "conv(16, p=1, k=3)   # stem");
    let reply = "```diff\n@@\n   bn\n   relu\n-  conv(32, k=3, p=1)\n+  conv( 48 ,k=3,p=1)\n   bn\n```\n";
    let j = judged(&base, reply, None, &opts());
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    assert!(j.tolerances.iter().any(|t| t.kind() == "no_line_numbers"), "{:?}", j.tolerances);
    assert_eq!(j.diff_lines, Some(2));
    assert!(j.diff.as_deref().unwrap().contains("\n-  conv(32, k=3, p=1)\n+  conv(48, k=3, p=1)\n"));
    assert!(j.program.as_deref().unwrap().contains("conv(16, k=3, p=1)  # stem"), "{:?}", j.program);
}

#[test]
fn a_whole_program_is_judged_as_a_full_replacement() {
    let reply = format!("```\n{}```\n", SMALL.replace("conv(32", "conv(64"));
    let j = judged(SMALL, &reply, None, &opts());
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    assert_eq!(j.tolerances, vec![Tolerance::FullProgram]);
    assert_eq!(j.diff_lines, Some(2));
}

#[test]
fn no_diff_malformed_diff_does_not_apply_and_ambiguous_come_from_the_delta_engine() {
    let j = judged(SMALL, "I would widen the second convolution.", None, &opts());
    assert_eq!(j.verdict, Verdict::NoDiff);
    assert!(j.delta_error.is_some() && j.program.is_none());

    let j = judged(SMALL, "```diff\n@@ -1,2 +1,2 @@\n-a\n+b\n@@ -x @@\n```\n", None, &opts());
    assert_eq!(j.verdict, Verdict::MalformedDiff, "{}", j.message);

    let j =
        judged(SMALL, &fenced("@@ -3,3 +3,3 @@\n net {\n-  conv(99, k=7)\n+  conv(8, k=7)\n   bn\n"), None, &opts());
    assert_eq!(j.verdict, Verdict::DoesNotApply, "{}", j.message);
    assert!(j.message.contains("does not apply"), "{}", j.message);

    let j = judged(SMALL, &fenced("@@\n   bn\n-  relu\n+  gelu\n"), None, &opts());
    assert_eq!(j.verdict, Verdict::Ambiguous, "{}", j.message);
    assert_eq!(j.timings.parse_ns, 0);
}

#[test]
fn parse_shape_and_budget_errors_come_from_the_front_end_with_rendered_diagnostics() {
    let broken =
        fenced("@@ -6,5 +6,5 @@\n   relu\n-  conv(32, k=3, p=1)\n+  conv(32, k=3, p=1\n   bn\n   relu\n   gap\n");
    let j = judged(SMALL, &broken, None, &opts());
    assert_eq!(j.verdict, Verdict::ParseError, "{}", j.message);
    assert!(j.message.contains("candidate.arch:7:"), "{}", j.message);
    assert_eq!(j.diagnostics[0]["verdict"], "parse_error");
    assert!(j.candidate.is_some() && j.program.is_none());

    let mismatch = fenced("@@ -9,3 +9,4 @@\n   relu\n   gap\n+  gap\n   linear(classes)\n");
    let j = judged(SMALL, &mismatch, None, &opts());
    assert_eq!(j.verdict, Verdict::ShapeError, "{}", j.message);
    assert_eq!(j.diagnostics[0]["verdict"], "shape_error");
    assert!(j.program.is_some() && j.hash.is_none() && j.diff.is_none());

    let mut tight = opts();
    tight.budget.max_params = 5_000;
    let j = judged(SMALL, &fenced(WIDEN), None, &tight);
    assert_eq!(j.verdict, Verdict::OverBudget, "{}", j.message);
    assert!(j.message.contains("--max-params"), "{}", j.message);
}

#[test]
fn a_rename_of_the_base_is_a_duplicate_even_without_an_archive() {
    let rename = "\
--- a/resnet18.arch
+++ b/resnet18.arch
@@ -9,5 +9,5 @@
 # Basic block whose shortcut is the identity (same width, stride 1).
 block basic(c) {
-  x = in
+  skip = in
   conv(c, k=3, p=1, bias=false)
   bn
@@ -15,5 +15,5 @@
   conv(c, k=3, p=1, bias=false)
   bn
-  add(x)
+  add(skip)
   relu
 }
";
    let j = judged(RESNET18, rename, None, &opts());
    assert_eq!(j.verdict, Verdict::Duplicate, "{}", j.message);
    assert!(j.message.contains("the same network as the base"), "{}", j.message);
    assert_eq!(j.diff_lines, Some(4));
}

#[test]
fn duplicates_and_near_duplicates_of_archived_networks_name_the_entry() {
    let mut archive = Archive::in_memory(cifar());
    let widened = SMALL.replace("conv(32", "conv(48");
    let fp = fingerprint(&check_source(&widened, cifar(), &Budget::default()).unwrap().graph);
    archive.add(&fp, "run-7/candidate-12").unwrap();
    let j = judged(SMALL, &fenced(WIDEN), Some(&archive), &opts());
    assert_eq!(j.verdict, Verdict::Duplicate);
    assert!(j.message.contains("archive entry 0 (run-7/candidate-12)"), "{}", j.message);
    let n = j.novelty.as_ref().unwrap();
    assert_eq!((n.verdict, n.nearest.as_ref().unwrap().similarity), (NoveltyVerdict::Duplicate, 1.0));

    let mut archive = Archive::in_memory(cifar());
    let fp = fingerprint(&check_source(RESNET18, cifar(), &Budget::default()).unwrap().graph);
    archive.add(&fp, "zoo/resnet18.arch").unwrap();
    let (dropout, _) = unified(RESNET18, &RESNET18.replace("  gap\n", "  gap\n  dropout(0.2)\n"), "a/r", "b/r");
    let j = judged(RESNET18, &dropout, Some(&archive), &opts());
    assert_eq!(j.verdict, Verdict::NearDuplicate, "{}", j.message);
    assert!(j.message.contains("similar to archive entry 0 (zoo/resnet18.arch)"), "{}", j.message);
    // A stricter threshold lets it through; the nearest entry is still reported.
    let mut strict = opts();
    strict.threshold = 0.99;
    let j = judged(RESNET18, &dropout, Some(&archive), &strict);
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    assert_eq!(j.novelty.unwrap().nearest.unwrap().name, "zoo/resnet18.arch");
}

#[test]
fn a_prepared_base_judges_like_the_text() {
    let o = opts();
    let base = Base::new(SMALL, &o);
    assert_eq!(base.canonical, SMALL);
    assert!(base.hash.is_some());
    let a = judge(&base, &fenced(WIDEN), None, &o);
    let b = judge(&Base::new(SMALL, &o), &fenced(WIDEN), None, &o);
    assert_eq!((a.verdict, &a.program, &a.diff), (b.verdict, &b.program, &b.diff));
    // A base that does not parse still judges replies; its canonical form is its text.
    let broken = Base::new("net {\n  conv(\n", &o);
    assert_eq!(broken.canonical, "net {\n  conv(\n");
    assert!(broken.hash.is_none());
}

#[test]
fn the_judgement_serialises_in_snake_case() {
    let j = judged(SMALL, &fenced(WIDEN), None, &opts());
    let mut v = serde_json::to_value(&j).unwrap();
    for k in ["extract_ns", "apply_ns", "parse_ns", "check_ns", "novelty_ns", "total_ns"] {
        assert!(v["timings"][k].as_u64().unwrap() > 0, "{k}");
        v["timings"][k] = 0.into();
    }
    // Keys sorted, whatever order serde_json keeps maps in for this build.
    v.sort_all_objects();
    insta::assert_snapshot!(serde_json::to_string_pretty(&v).unwrap(), @r#"
    {
      "candidate": "arch small\n\nnet {\n  conv(16, k=3, p=1)\n  bn\n  relu\n  conv(48, k=3, p=1)\n  bn\n  relu\n  gap\n  linear(classes)\n}\n",
      "delta_error": null,
      "diagnostics": [],
      "diff": "--- a/candidate.arch\n+++ b/candidate.arch\n@@ -4,7 +4,7 @@\n   conv(16, k=3, p=1)\n   bn\n   relu\n-  conv(32, k=3, p=1)\n+  conv(48, k=3, p=1)\n   bn\n   relu\n   gap\n",
      "diff_lines": 2,
      "hash": "365a225618792d86619495508286f599",
      "macs": 7520736,
      "message": "",
      "novelty": null,
      "params": 8026,
      "program": "arch small\n\nnet {\n  conv(16, k=3, p=1)\n  bn\n  relu\n  conv(48, k=3, p=1)\n  bn\n  relu\n  gap\n  linear(classes)\n}\n",
      "timings": {
        "apply_ns": 0,
        "check_ns": 0,
        "extract_ns": 0,
        "novelty_ns": 0,
        "parse_ns": 0,
        "total_ns": 0
      },
      "tolerances": [],
      "verdict": "ok"
    }
    "#);
}

#[test]
fn verdict_names_are_the_taxonomy() {
    let names: Vec<&str> = Verdict::FRONT.iter().map(|v| v.as_str()).collect();
    assert_eq!(
        names,
        [
            "generator_error",
            "no_diff",
            "malformed_diff",
            "does_not_apply",
            "ambiguous",
            "parse_error",
            "shape_error",
            "over_budget",
            "duplicate",
            "near_duplicate",
            "ok"
        ]
    );
    for v in Verdict::FRONT {
        assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
    }
}

/// The novelty messages are read by people and fed back to the model: reviewed like code.
#[test]
fn novelty_messages_say_what_matched_and_what_to_do() {
    let mut archive = Archive::in_memory(cifar());
    let fp = fingerprint(&check_source(RESNET18, cifar(), &Budget::default()).unwrap().graph);
    archive.add(&fp, "zoo/resnet18.arch").unwrap();
    let (dropout, _) = unified(RESNET18, &RESNET18.replace("  gap\n", "  gap\n  dropout(0.2)\n"), "a/r", "b/r");
    let near = judged(RESNET18, &dropout, Some(&archive), &opts());
    insta::assert_snapshot!(near.message, @"near duplicate: the candidate is 0.95 similar to archive entry 0 (zoo/resnet18.arch), at or above the threshold 0.95: too small a change to be worth training. Change more of the network: a block's body, a stage, a stride or a width.");
    let (same, _) = unified(RESNET18, &RESNET18.replace("arch resnet18", "arch renamed"), "a/r", "b/r");
    let mut other_base = opts();
    other_base.file = "resnet18.arch".into();
    let dup = judged(
        &RESNET18.replace("  gap\n", "  gap\n  gelu\n"),
        &format!("```\n{}```\n", RESNET18),
        Some(&archive),
        &other_base,
    );
    insta::assert_snapshot!(dup.message, @"duplicate: the candidate is the same network as archive entry 0 (zoo/resnet18.arch), structural hash 1bd813973e8851cdcdb7f9fe713a5341: it differs from it only in names, formatting or block factoring. Propose a change to the network itself.");
    let base_dup = judged(RESNET18, &same, None, &opts());
    insta::assert_snapshot!(base_dup.message, @"duplicate: the candidate is the same network as the base: the change touches only names, comments, formatting or block factoring. Propose a change to the network itself.");
}

/// A reply the server cut at its token limit in the middle of a line is judged without that
/// line (tolerance `truncated`); the same text not marked cut is judged as it is.
#[test]
fn a_reply_cut_at_the_token_limit_loses_its_unfinished_line() {
    let cut = "```diff\n--- a/small.arch\n+++ b/small.arch\n@@ -6,5 +6,5 @@\n   relu\n-  conv(32, k=3, p=1)\n+  conv(48, k=3, p=1)\n+  conv(48, k";
    let o = opts();
    let base = Base::new(SMALL, &o);
    let j = judge_reply(&base, cut, true, None, &o);
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    assert_eq!(j.program.as_deref(), Some(SMALL.replace("conv(32", "conv(48").as_str()));
    assert_eq!(j.tolerances.first(), Some(&Tolerance::Truncated));
    let whole = judge_reply(&base, cut, false, None, &o);
    assert_eq!(whole.verdict, Verdict::ParseError, "{}", whole.message);
    // A cut reply that ends on a line's end loses nothing and needs no such tolerance.
    let at_end = &cut[..=cut.rfind('\n').unwrap()];
    let j = judge_reply(&base, at_end, true, None, &o);
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    assert!(!j.tolerances.contains(&Tolerance::Truncated));
    // Removed lines at the end of a cut reply are a change whose replacement was cut: dropped.
    let mid_change = "```diff\n--- a/small.arch\n+++ b/small.arch\n@@ -6,5 +6,5 @@\n   relu\n-  conv(32, k=3, p=1)\n+  conv(48, k=3, p=1)\n   bn\n-  relu\n-  ga";
    let j = judge_reply(&base, mid_change, true, None, &o);
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);
    assert_eq!(j.program.as_deref(), Some(SMALL.replace("conv(32", "conv(48").as_str()));
    // A block being added when the reply was cut is dropped whole: unclosed, it would swallow
    // the program after it.
    let mid_block = "```diff\n--- a/small.arch\n+++ b/small.arch\n@@ -1,3 +1,8 @@\n arch small\n \n+block res(c) {\n+  x = in\n+  conv(c, k=3";
    let j = judge_reply(&base, mid_block, true, None, &o);
    assert_ne!(j.verdict, Verdict::ParseError, "{}", j.message);
    assert!(!j.extracted.as_deref().unwrap_or_default().contains("+block"), "{:?}", j.extracted);
}
