//! `nasc report` on a small run built deterministically through the run store (two generators,
//! two datasets, two cycles, verdicts of every stage), pinned by snapshots: the tables, the CSV
//! and the JSON; and the plots it writes.

use nasc::search::store::{NewCandidate, Trained};
use nasc::search::Store;
use std::path::PathBuf;

fn build_run(dir: &std::path::Path) {
    let mut store = Store::create(dir, "{}").unwrap();
    let mut slot = 0;
    let mut base = |store: &mut Store, dataset: &str, accuracy: f64| {
        let row = NewCandidate {
            cycle: 0,
            slot,
            role: "baseline".into(),
            dataset: dataset.into(),
            baseline: "lenet5".into(),
            generator: "baseline".into(),
            program: Some("net {\n  gap\n}\n".into()),
            attempts: 1,
            attempt_verdicts: vec!["ok".into()],
            front_verdict: "ok".into(),
            params: Some(44426),
            hash: Some("00".into()),
            ..NewCandidate::default()
        };
        slot += 1;
        let id = store.insert(&row, true).unwrap();
        store.finish(id, &Trained { verdict: "ok".into(), accuracy: Some(accuracy), ..Trained::default() }).unwrap();
        id
    };
    let mnist = base(&mut store, "mnist", 0.9);
    let fashion = base(&mut store, "fashion-mnist", 0.7);
    // (generator, cycle, dataset, front verdict, training verdict, accuracy, reply lines, tokens, similarity)
    let cases: &[(&str, i64, &str, &str, Option<&str>, Option<f64>, i64, Option<i64>, Option<f64>)] = &[
        ("mutate", 1, "mnist", "ok", Some("ok"), Some(0.91), 12, None, Some(0.8)),
        ("mutate", 1, "mnist", "shape_error", None, None, 10, None, None),
        ("mutate", 1, "fashion-mnist", "ok", Some("ok"), Some(0.72), 14, None, None),
        ("mutate", 1, "fashion-mnist", "near_duplicate", None, None, 9, None, Some(0.97)),
        ("mutate", 2, "mnist", "ok", Some("diverged"), None, 11, None, Some(0.5)),
        ("mutate", 2, "mnist", "ok", Some("ok"), Some(0.93), 13, None, Some(0.9)),
        ("mutate", 2, "fashion-mnist", "ok", Some("ok"), Some(0.69), 12, None, Some(0.75)),
        ("mutate", 2, "fashion-mnist", "duplicate", None, None, 12, None, Some(1.0)),
        ("openai", 1, "mnist", "no_diff", None, None, 30, Some(210), None),
        ("openai", 1, "mnist", "does_not_apply", None, None, 25, Some(180), None),
        ("openai", 1, "fashion-mnist", "ok", Some("ok"), Some(0.74), 18, Some(120), Some(0.6)),
        ("openai", 1, "fashion-mnist", "parse_error", None, None, 16, Some(100), None),
        ("openai", 2, "mnist", "ok", Some("timeout"), None, 20, Some(150), Some(0.7)),
        ("openai", 2, "mnist", "ok", Some("ok"), Some(0.95), 17, Some(130), Some(0.85)),
        ("openai", 2, "fashion-mnist", "ok", Some("ok"), Some(0.76), 15, Some(110), Some(0.65)),
        ("openai", 2, "fashion-mnist", "ok", Some("oom"), None, 40, Some(400), Some(0.4)),
    ];
    for (i, (generator, cycle, dataset, front, trained, accuracy, lines, tokens, similarity)) in
        cases.iter().enumerate()
    {
        let row = NewCandidate {
            cycle: *cycle,
            slot: i as i64,
            role: "candidate".into(),
            dataset: dataset.to_string(),
            baseline: "lenet5".into(),
            parent_id: Some(if *dataset == "mnist" { mnist } else { fashion }),
            generator: generator.to_string(),
            prompt: Some("prompt".into()),
            diff: (*front == "ok").then(|| "--- a/program.arch\n+++ b/program.arch\n@@ -1 +1 @@\n-a\n+b\n".into()),
            // Every third candidate needed a retry to get its final verdict.
            attempts: if i % 3 == 0 { 2 } else { 1 },
            attempt_verdicts: if i % 3 == 0 {
                vec!["does_not_apply".into(), front.to_string()]
            } else {
                vec![front.to_string()]
            },
            front_verdict: front.to_string(),
            hash: (*front == "ok" || similarity.is_some()).then(|| format!("{i:02}")),
            similarity: *similarity,
            params: Some(1000 * (i as i64 + 1)),
            reply_lines: Some(*lines),
            reply_tokens: *tokens,
            ..NewCandidate::default()
        };
        let id = store.insert(&row, trained.is_some()).unwrap();
        if let Some(t) = trained {
            store.finish(id, &Trained { verdict: t.to_string(), accuracy: *accuracy, ..Trained::default() }).unwrap();
        }
    }
}

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nasc-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    build_run(&dir);
    dir
}

fn report(dir: &std::path::Path, flags: &[&str]) -> String {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_nasc")).arg("report").args(flags).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot(name: &str, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, text));
}

#[test]
fn the_report_tables_of_a_small_run() {
    let dir = run_dir("text");
    snapshot("search_report_text", &report(&dir, &["--no-plots"]));
    snapshot("search_report_csv", &report(&dir, &["--no-plots", "--csv"]));
    let json: serde_json::Value = serde_json::from_str(&report(&dir, &["--no-plots", "--json"])).unwrap();
    snapshot("search_report_json", &serde_json::to_string_pretty(&json).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_report_writes_its_plots_as_svg() {
    let dir = run_dir("plots");
    let plots = dir.join("elsewhere");
    report(&dir, &["--plots", plots.to_str().unwrap()]);
    for name in ["valid_rate", "accuracy", "accuracy_distribution", "best_so_far"] {
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("fashion-mnist"), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
