//! The delta engine's text half end to end: replies in the shapes models write them, each
//! tolerance, and the failures (`no_diff`, `malformed_diff`, `does_not_apply`, `ambiguous`).

use std::time::{Duration, Instant};

use nasc_delta::delta::{apply, apply_reply, extract, Applied, ApplyOptions, DeltaError, Extracted, Limits, Tolerance};
use nasc_delta::Verdict;

const RESNET18: &str = include_str!("corpus/bases/resnet18.arch");
const MLP: &str = include_str!("corpus/bases/mlp.arch");

/// A small program of our own, so line numbers in the tests below are easy to read.
const SMALL: &str = include_str!("corpus/bases/small.arch");

fn opts() -> ApplyOptions {
    ApplyOptions::default()
}

fn ok(base: &str, diff: &str) -> Applied {
    match apply(base, diff, opts()) {
        Ok(a) => a,
        Err(e) => panic!("expected the diff to apply, got {}: {e}", e.verdict()),
    }
}

fn err(base: &str, diff: &str) -> DeltaError {
    match apply(base, diff, opts()) {
        Ok(a) => panic!("expected a failure, got:\n{}", a.text),
        Err(e) => e,
    }
}

fn kinds(a: &Applied) -> Vec<&'static str> {
    a.tolerances.iter().map(Tolerance::kind).collect()
}

/// SMALL with its first relu turned into gelu.
fn small_gelu() -> String {
    SMALL.replacen("  relu\n", "  gelu\n", 1)
}

const GELU_DIFF: &str = "\
--- a/small.arch
+++ b/small.arch
@@ -4,5 +4,5 @@
   conv(16, k=3, p=1)
   bn
-  relu
+  gelu
   conv(32, k=3, p=1)
   bn
";

// ---- extraction ----

#[test]
fn extracts_a_fenced_diff_between_prose() {
    let reply = format!("I'll swap the activation.\n\n```diff\n{GELU_DIFF}```\n\nThis should train faster.\n");
    match extract(&reply, &Limits::default()).unwrap() {
        Extracted::Diff { text, hunks, had_headers, fenced, crlf, prose } => {
            assert_eq!(text, GELU_DIFF);
            assert_eq!(hunks, 1);
            assert!(had_headers && fenced && prose && !crlf);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn extracts_a_patch_fence_and_a_tilde_fence() {
    for (open, close) in [("```patch", "```"), ("~~~diff", "~~~"), ("```udiff", "```")] {
        let reply = format!("{open}\n{GELU_DIFF}{close}\n");
        let Extracted::Diff { text, .. } = extract(&reply, &Limits::default()).unwrap() else {
            panic!("{open}: not a diff");
        };
        assert_eq!(text, GELU_DIFF, "{open}");
    }
}

#[test]
fn extracts_an_unlabelled_fence_holding_hunks() {
    let reply = format!("Change:\n```\n{GELU_DIFF}```\n");
    assert!(matches!(extract(&reply, &Limits::default()).unwrap(), Extracted::Diff { fenced: true, .. }));
}

#[test]
fn an_unclosed_fence_runs_to_the_end() {
    let reply = format!("```diff\n{GELU_DIFF}");
    let Extracted::Diff { text, .. } = extract(&reply, &Limits::default()).unwrap() else {
        panic!("not a diff");
    };
    assert_eq!(text, GELU_DIFF);
}

#[test]
fn extracts_a_bare_diff_without_file_headers_and_with_trailing_prose() {
    let body = GELU_DIFF.split_once("+++ b/small.arch\n").unwrap().1;
    let reply = format!("Here is the diff:\n{body}\nThis replaces relu with gelu.\n");
    match extract(&reply, &Limits::default()).unwrap() {
        Extracted::Diff { text, had_headers, fenced, prose, .. } => {
            assert_eq!(text, body);
            assert!(!had_headers && !fenced && prose);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(apply_reply(SMALL, &reply, opts()).unwrap().text, small_gelu());
}

#[test]
fn extracts_several_hunks() {
    let diff = "\
@@ -4,3 +4,4 @@
   conv(16, k=3, p=1)
   bn
   relu
+  dropout(0.1)
@@ -10,3 +11,3 @@
   gap
-  linear(classes)
+  linear(classes, bias=false)
 }
";
    let reply = format!("```diff\n{diff}```\n");
    let Extracted::Diff { hunks, .. } = extract(&reply, &Limits::default()).unwrap() else {
        panic!("not a diff");
    };
    assert_eq!(hunks, 2);
    let a = apply_reply(SMALL, &reply, opts()).unwrap();
    assert!(a.tolerances.is_empty(), "{:?}", a.tolerances);
    assert!(a.text.contains("  relu\n  dropout(0.1)\n  conv(32"));
    assert!(a.text.contains("linear(classes, bias=false)"));
}

#[test]
fn a_crlf_reply_keeps_its_endings_in_the_diff() {
    let reply = format!("```diff\n{GELU_DIFF}```\n").replace('\n', "\r\n");
    let Extracted::Diff { text, crlf, .. } = extract(&reply, &Limits::default()).unwrap() else {
        panic!("not a diff");
    };
    assert!(crlf);
    assert_eq!(text, GELU_DIFF.replace('\n', "\r\n"));
}

#[test]
fn a_whole_program_is_a_full_replacement() {
    let program = small_gelu();
    for reply in [
        format!("Here is the improved network:\n```arch\n{program}```\n"),
        format!("Here is the improved network:\n\n{program}\nIt uses gelu.\n"),
        format!("```diff\n{program}```\n"),
    ] {
        assert_eq!(
            extract(&reply, &Limits::default()).unwrap(),
            Extracted::FullProgram { text: program.clone() },
            "{reply}"
        );
        let a = apply_reply(SMALL, &reply, opts()).unwrap();
        assert_eq!(a.text, program);
        assert_eq!(a.tolerances, vec![Tolerance::FullProgram]);
    }
}

#[test]
fn a_reply_past_the_size_limit_is_refused_with_its_size() {
    let reply = "x".repeat((1 << 20) + 1);
    let e = extract(&reply, &Limits::default()).unwrap_err();
    assert_eq!(e.verdict(), Verdict::MalformedDiff);
    let msg = e.to_string();
    assert!(msg.contains("1048577 bytes") && msg.contains("1048576"), "{msg}");
}

#[test]
fn prose_without_a_diff_is_no_diff() {
    for reply in ["", "I would add dropout after each relu.", "Suggestions:\n- add dropout\n- widen the first conv\n"] {
        let e = extract(reply, &Limits::default()).unwrap_err();
        assert_eq!(e.verdict(), Verdict::NoDiff, "{reply:?}");
        assert!(e.to_string().contains("```diff"), "the message says what to send");
    }
}

#[test]
fn garbled_hunk_numbers_are_a_malformed_diff() {
    let reply = "```diff\n@@ -4x,3 +4,3 @@\n bn\n-relu\n+gelu\n```\n";
    let e = extract(reply, &Limits::default()).unwrap_err();
    assert_eq!(e.verdict(), Verdict::MalformedDiff);
    assert!(e.to_string().contains("line 1 of the diff"), "{e}");
}

// ---- strict application ----

#[test]
fn an_exact_diff_applies_strictly_with_no_tolerances() {
    let a = ok(SMALL, GELU_DIFF);
    assert_eq!(a.text, small_gelu());
    assert!(a.tolerances.is_empty());
}

#[test]
fn diffs_made_by_diffy_apply_strictly_to_zoo_programs() {
    let edits = [
        RESNET18.replace("  gap\n", "  dropout(0.2)\n  gap\n"),
        RESNET18.replacen("relu", "gelu", 3),
        RESNET18.replace("  basic(512)\n", ""),
        MLP.replace("linear(1024)", "linear(2048)"),
    ];
    for (base, target) in [RESNET18, RESNET18, RESNET18, MLP].into_iter().zip(edits) {
        let diff = diffy::create_patch(base, &target).to_string();
        let a = ok(base, &diff);
        assert_eq!(a.text, target);
        assert!(a.tolerances.is_empty(), "{:?}", a.tolerances);
    }
}

#[test]
fn file_names_in_the_diff_are_ignored() {
    let diff = GELU_DIFF.replace("a/small.arch", "/etc/passwd").replace("b/small.arch", "../../secret");
    assert_eq!(ok(SMALL, &diff).text, small_gelu());
}

#[test]
fn a_program_without_a_final_newline_keeps_it_that_way() {
    let base = SMALL.trim_end_matches('\n');
    let a = ok(base, GELU_DIFF);
    assert_eq!(a.text, small_gelu().trim_end_matches('\n'));
}

#[test]
fn a_crlf_program_and_a_crlf_diff_apply_strictly() {
    let base = SMALL.replace('\n', "\r\n");
    let a = ok(&base, &GELU_DIFF.replace('\n', "\r\n"));
    assert_eq!(a.text, small_gelu().replace('\n', "\r\n"));
    assert!(a.tolerances.is_empty());
}

// ---- each tolerance ----

#[test]
fn drifted_line_numbers_are_found_nearby_and_recorded() {
    let diff = GELU_DIFF.replace("@@ -4,5 +4,5 @@", "@@ -7,5 +7,5 @@");
    let a = ok(SMALL, &diff);
    assert_eq!(a.text, small_gelu());
    assert_eq!(a.tolerances, vec![Tolerance::Drifted { hunk: 1, by: -3 }]);
}

#[test]
fn wrong_counts_are_recounted() {
    let diff = GELU_DIFF.replace("@@ -4,5 +4,5 @@", "@@ -4,7 +4,6 @@");
    let a = ok(SMALL, &diff);
    assert_eq!(a.text, small_gelu());
    assert_eq!(a.tolerances, vec![Tolerance::Recounted { hunk: 1 }]);
}

#[test]
fn indentation_damage_in_context_is_forgiven_and_the_program_keeps_its_spacing() {
    let diff = GELU_DIFF.replace("   conv(16, k=3, p=1)", " \tconv(16,k=3,p=1)").replace("   bn\n-", "     bn\n-");
    let a = ok(SMALL, &diff);
    assert_eq!(a.text, small_gelu());
    assert_eq!(kinds(&a), vec!["whitespace"]);
}

#[test]
fn context_lines_without_their_leading_space_are_forgiven() {
    let diff = "@@ -10,3 +10,3 @@\n  gap\n-  linear(classes)\n+  linear(classes, bias=false)\n}\n";
    let a = ok(SMALL, diff);
    assert!(a.text.ends_with("  gap\n  linear(classes, bias=false)\n}\n"), "{}", a.text);
    assert_eq!(kinds(&a), vec!["whitespace"]);
}

#[test]
fn missing_and_extra_blank_lines_are_forgiven() {
    // The blank line after `arch small` is missing from the hunk.
    let missing = "@@ -1,4 +1,4 @@\n arch small\n net {\n-  conv(16, k=3, p=1)\n+  conv(24, k=3, p=1)\n   bn\n";
    let a = ok(SMALL, missing);
    assert!(a.text.starts_with("arch small\n\nnet {\n  conv(24, k=3, p=1)\n"), "{}", a.text);
    assert_eq!(kinds(&a), vec!["blank_lines"]);

    // A blank line the program does not have.
    let extra = "@@ -4,3 +4,3 @@\n   conv(16, k=3, p=1)\n \n   bn\n-  relu\n+  gelu\n";
    let a = ok(SMALL, extra);
    assert_eq!(a.text, small_gelu());
    assert!(kinds(&a).contains(&"blank_lines"), "{:?}", a.tolerances);
}

#[test]
fn wrong_context_at_the_ends_is_fuzzed_like_gnu_patch() {
    let diff = "\
@@ -4,5 +4,5 @@
   conv(8, k=5)
   bn
-  relu
+  gelu
   conv(32, k=3, p=1)
   batchnorm
";
    let a = ok(SMALL, diff);
    assert_eq!(a.text, small_gelu());
    assert_eq!(a.tolerances, vec![Tolerance::Fuzz { hunk: 1, lines: 2 }]);

    let strict = ApplyOptions { fuzz: 0, ..ApplyOptions::default() };
    assert_eq!(apply(SMALL, diff, strict).unwrap_err().verdict(), Verdict::DoesNotApply);
}

#[test]
fn a_header_without_numbers_is_located_by_content() {
    let diff = "@@ ... @@\n   gap\n-  linear(classes)\n+  linear(classes, bias=false)\n";
    let a = ok(SMALL, diff);
    assert!(a.text.contains("linear(classes, bias=false)"));
    assert_eq!(a.tolerances, vec![Tolerance::NoLineNumbers { hunk: 1 }]);
}

#[test]
fn a_diff_without_any_hunk_header_is_one_hunk() {
    let reply = "```diff\n--- a/x\n+++ b/x\n   gap\n-  linear(classes)\n+  linear(10)\n```\n";
    let a = apply_reply(SMALL, reply, opts()).unwrap();
    assert!(a.text.contains("  gap\n  linear(10)\n"));
    assert_eq!(a.tolerances, vec![Tolerance::NoHunkHeader { hunk: 1 }]);
}

#[test]
fn trailing_bullets_after_a_correctly_counted_hunk_are_ignored() {
    let diff = format!("{GELU_DIFF}- Swapped relu for gelu in the stem\n");
    let a = ok(SMALL, &diff);
    assert_eq!(a.text, small_gelu());
    assert_eq!(a.tolerances, vec![Tolerance::TrailingText { hunk: 1, lines: 1 }]);
}

#[test]
fn prose_inside_an_unclosed_fence_is_dropped() {
    // A reply cut off before its closing fence: the remark is inside the "fence".
    let reply = format!("```diff\n{GELU_DIFF}\nThat should be all. Good luck with training.\n");
    let a = apply_reply(SMALL, &reply, opts()).unwrap();
    assert_eq!(a.text, small_gelu());
    assert_eq!(a.tolerances, vec![Tolerance::TrailingText { hunk: 1, lines: 1 }]);
}

#[test]
fn a_crlf_diff_on_an_lf_program_is_recorded() {
    let a = ok(SMALL, &GELU_DIFF.replace('\n', "\r\n"));
    assert_eq!(a.text, small_gelu());
    assert_eq!(a.tolerances, vec![Tolerance::LineEndings]);
}

#[test]
fn later_hunks_expect_the_drift_of_earlier_ones() {
    // Both hunks are numbered 2 lines too low, as if the model miscounted the header comment.
    let diff = "\
@@ -2,3 +2,4 @@
   conv(16, k=3, p=1)
   bn
   relu
+  dropout(0.1)
@@ -8,3 +9,3 @@
   gap
-  linear(classes)
+  linear(classes, bias=false)
 }
";
    let a = ok(SMALL, diff);
    assert_eq!(a.tolerances, vec![Tolerance::Drifted { hunk: 1, by: 2 }, Tolerance::Drifted { hunk: 2, by: 2 }]);
}

#[test]
fn tolerances_serialise_in_snake_case() {
    let t = vec![
        Tolerance::Drifted { hunk: 1, by: -3 },
        Tolerance::BlankLines { hunk: 2 },
        Tolerance::Fuzz { hunk: 2, lines: 1 },
        Tolerance::LineEndings,
    ];
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(
        json,
        r#"[{"kind":"drifted","hunk":1,"by":-3},{"kind":"blank_lines","hunk":2},{"kind":"fuzz","hunk":2,"lines":1},{"kind":"line_endings"}]"#
    );
    let back: Vec<Tolerance> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

// ---- failures ----

#[test]
fn a_hunk_matching_two_places_equally_is_ambiguous() {
    // `bn` then `relu` appears twice in SMALL; no numbers to choose between them.
    let diff = "@@ @@\n   bn\n-  relu\n+  gelu\n";
    let e = err(SMALL, diff);
    assert_eq!(e.verdict(), Verdict::Ambiguous);
    assert!(matches!(e, DeltaError::Ambiguous { hunk: 1, lines: [5, 8], .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("line 5") && msg.contains("line 8"), "{msg}");
}

#[test]
fn equal_distance_from_the_stated_line_is_ambiguous() {
    let base = "net {\n  relu\n  bn\n  gelu\n  gelu\n  relu\n  bn\n}\n";
    // `relu, bn` is at lines 2 and 6; the header says 4: two lines from each.
    let tie = "@@ -4,2 +4,2 @@\n   relu\n-  bn\n+  ln\n";
    let e = err(base, tie);
    assert!(matches!(e, DeltaError::Ambiguous { lines: [2, 6], .. }), "{e:?}");
    // Said to be at line 5, the nearer place (6) wins, recorded as drift.
    let near = tie.replace("-4,2 +4,2", "-5,2 +5,2");
    let a = ok(base, &near);
    assert_eq!(a.text, base.replace("  relu\n  bn\n}", "  relu\n  ln\n}"));
    assert_eq!(a.tolerances, vec![Tolerance::Drifted { hunk: 1, by: 1 }]);
}

#[test]
fn a_hunk_whose_lines_are_not_in_the_program_does_not_apply_and_says_why() {
    let diff = "@@ -4,4 +4,4 @@\n   conv(16, k=3, p=1)\n   bn\n-  sigmoid\n+  gelu\n   conv(32, k=3, p=1)\n";
    let e = err(SMALL, diff);
    assert_eq!(e.verdict(), Verdict::DoesNotApply);
    let DeltaError::DoesNotApply { hunk, expected, closest, .. } = &e else { panic!("{e:?}") };
    assert_eq!(*hunk, 1);
    assert!(expected.contains(&"  sigmoid".to_string()));
    let closest = closest.as_ref().expect("a closest stretch");
    assert_eq!(closest.line, 4);
    assert!(closest.lines.contains(&"  relu".to_string()));
    let msg = e.to_string();
    assert!(msg.contains("hunk 1 of 1 does not apply"), "{msg}");
    assert!(msg.contains("|  sigmoid") && msg.contains("|  relu") && msg.contains("from line 4"), "{msg}");
}

#[test]
fn hunks_out_of_order_do_not_apply() {
    let diff = "\
@@ -10,2 +10,2 @@
   gap
-  linear(classes)
+  linear(10)
@@ -4,3 +4,3 @@
   conv(16, k=3, p=1)
-  bn
+  ln
";
    let e = err(SMALL, diff);
    assert!(matches!(e, DeltaError::DoesNotApply { hunk: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("order"), "{e}");
}

#[test]
fn an_insertion_with_no_context_and_no_numbers_does_not_apply() {
    let e = err(SMALL, "@@ @@\n+  dropout\n");
    assert_eq!(e.verdict(), Verdict::DoesNotApply);
}

// ---- bounds ----

#[test]
fn a_million_hunks_get_a_verdict_quickly() {
    let t = Instant::now();
    let diff = "@@ -1 +1 @@\n-a\n+b\n".repeat(1_000_000);
    let e = err(SMALL, &diff);
    assert_eq!(e.verdict(), Verdict::MalformedDiff);
    // Past the byte limit too, when that is raised.
    let big = ApplyOptions {
        limits: Limits { max_bytes: usize::MAX, max_lines: usize::MAX, ..Limits::default() },
        ..ApplyOptions::default()
    };
    let e = apply(SMALL, &diff, big).unwrap_err();
    assert!(e.to_string().contains("1000000 hunks"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_ten_thousand_line_program_is_patched_quickly() {
    let mut base = String::from("arch big\n\nnet {\n");
    for i in 0..10_000 {
        base.push_str(&format!("  conv({}, k=3, p=1)\n", 16 + i % 7));
        base.push_str("  relu\n");
    }
    base.push_str("  gap\n  linear(classes)\n}\n");
    let target = base.replacen("  relu\n", "  gelu\n", 1).replace("  gap\n", "  dropout\n  gap\n");
    let diff = diffy::create_patch(&base, &target).to_string();
    // Drift every hunk by 100 lines so the search has to look.
    let drifted = diff.replace("@@ -4,", "@@ -104,");

    let t = Instant::now();
    let a = ok(&base, &drifted);
    assert_eq!(a.text, target);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_repetitive_program_and_many_hunks_stop_at_the_work_limit() {
    let base = "relu\n".repeat(20_000);
    let mut diff = String::new();
    for i in 0..2_000 {
        diff.push_str(&format!("@@ -{} @@\n relu\n relu\n-relu\n+gelu\n relu\n", 100_000 + i));
    }
    let t = Instant::now();
    let r = apply(&base, &diff, opts());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    if let Err(e) = r {
        assert!([Verdict::DoesNotApply, Verdict::Ambiguous].contains(&e.verdict()), "{e}");
    }
}

#[test]
fn a_diff_that_creates_or_deletes_the_file_is_refused() {
    let base = "net {\n  flatten\n  linear(classes)\n}\n";
    let creates = "--- /dev/null\n+++ b/program.arch\n@@ -0,0 +1,4 @@\n+net {\n+  gap\n+  linear(classes)\n+}\n";
    let e = apply(base, creates, ApplyOptions::default()).expect_err("a second program would be prepended");
    assert!(e.to_string().contains("creates a new file"), "{e}");
    let deletes = "--- a/program.arch\n+++ /dev/null\n@@ -1,4 +0,0 @@\n-net {\n-  flatten\n-  linear(classes)\n-}\n";
    let e = apply(base, deletes, ApplyOptions::default()).expect_err("the program would be emptied");
    assert!(e.to_string().contains("deletes the file"), "{e}");
    // Against an empty program, a new file is what the diff makes.
    let made = apply("", creates, ApplyOptions::default()).expect("a new program").text;
    assert_eq!(made, "net {\n  gap\n  linear(classes)\n}\n");
}
