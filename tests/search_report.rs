//! `nasc report` on a small run built deterministically through the run store (two generators,
//! two datasets, two cycles, verdicts of every stage), pinned by snapshots: the tables, the CSV
//! and the JSON; and the plots it writes, as SVG and PNG, or as SVG alone when no font can be had.

use nasc_delta::Verdict;
use nasc_search::store::{NewCandidate, Role, Trained};
use nasc_search::Store;
use std::path::PathBuf;

fn build_run(dir: &std::path::Path) {
    let mut store = Store::create(dir, "{}", &[]).unwrap();
    let mut slot = 0;
    let mut base = |store: &mut Store, dataset: &str, accuracy: f64| {
        let row = NewCandidate {
            cycle: 0,
            slot,
            dataset: dataset.into(),
            baseline: "lenet5".into(),
            generator: "baseline".into(),
            program: Some("net {\n  gap\n}\n".into()),
            attempts: 1,
            attempt_verdicts: vec![Verdict::Ok],
            params: Some(44426),
            hash: Some("00".into()),
            ..NewCandidate::new(Role::Baseline, Verdict::Ok)
        };
        slot += 1;
        let id = store.insert(&row, true).unwrap();
        store.finish(id, &Trained { accuracy: Some(accuracy), ..Trained::new(Verdict::Ok) }).unwrap();
        id
    };
    let mnist = base(&mut store, "mnist", 0.9);
    let fashion = base(&mut store, "fashion-mnist", 0.7);
    // (generator, cycle, dataset, front verdict, training verdict, accuracy, reply lines, tokens, similarity)
    type Case<'a> = (&'a str, i64, &'a str, Verdict, Option<Verdict>, Option<f64>, i64, Option<i64>, Option<f64>);
    let cases: &[Case] = &[
        ("mutate", 1, "mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.91), 12, None, Some(0.8)),
        ("mutate", 1, "mnist", Verdict::ShapeError, None, None, 10, None, None),
        ("mutate", 1, "fashion-mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.72), 14, None, None),
        ("mutate", 1, "fashion-mnist", Verdict::NearDuplicate, None, None, 9, None, Some(0.97)),
        ("mutate", 2, "mnist", Verdict::Ok, Some(Verdict::Diverged), None, 11, None, Some(0.5)),
        ("mutate", 2, "mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.93), 13, None, Some(0.9)),
        ("mutate", 2, "fashion-mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.69), 12, None, Some(0.75)),
        ("mutate", 2, "fashion-mnist", Verdict::Duplicate, None, None, 12, None, Some(1.0)),
        ("openai", 1, "mnist", Verdict::NoDiff, None, None, 30, Some(210), None),
        ("openai", 1, "mnist", Verdict::DoesNotApply, None, None, 25, Some(180), None),
        ("openai", 1, "fashion-mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.74), 18, Some(120), Some(0.6)),
        ("openai", 1, "fashion-mnist", Verdict::ParseError, None, None, 16, Some(100), None),
        ("openai", 2, "mnist", Verdict::Ok, Some(Verdict::Timeout), None, 20, Some(150), Some(0.7)),
        ("openai", 2, "mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.95), 17, Some(130), Some(0.85)),
        ("openai", 2, "fashion-mnist", Verdict::Ok, Some(Verdict::Ok), Some(0.76), 15, Some(110), Some(0.65)),
        ("openai", 2, "fashion-mnist", Verdict::Ok, Some(Verdict::Oom), None, 40, Some(400), Some(0.4)),
    ];
    for (i, (generator, cycle, dataset, front, trained, accuracy, lines, tokens, similarity)) in
        cases.iter().enumerate()
    {
        let row = NewCandidate {
            cycle: *cycle,
            slot: i as i64,
            dataset: dataset.to_string(),
            baseline: "lenet5".into(),
            parent_id: Some(if *dataset == "mnist" { mnist } else { fashion }),
            generator: generator.to_string(),
            prompt: Some("prompt".into()),
            diff: (*front == Verdict::Ok)
                .then(|| "--- a/program.arch\n+++ b/program.arch\n@@ -1 +1 @@\n-a\n+b\n".into()),
            // Every third candidate needed a retry to get its final verdict.
            attempts: if i % 3 == 0 { 2 } else { 1 },
            attempt_verdicts: if i % 3 == 0 { vec![Verdict::DoesNotApply, *front] } else { vec![*front] },
            hash: (*front == Verdict::Ok || similarity.is_some()).then(|| format!("{i:02}")),
            similarity: *similarity,
            params: Some(1000 * (i as i64 + 1)),
            reply_lines: Some(*lines),
            reply_tokens: *tokens,
            // Some replies applied only with the applier's tolerances.
            tolerances: match (*front == Verdict::Ok, i % 4) {
                (true, 1) => vec!["recounted".into()],
                (true, 2) => vec!["recounted".into(), "drifted".into()],
                _ => vec![],
            },
            ..NewCandidate::new(Role::Candidate, *front)
        };
        let id = store.insert(&row, trained.is_some()).unwrap();
        if let Some(t) = trained {
            store.finish(id, &Trained { accuracy: *accuracy, ..Trained::new(*t) }).unwrap();
        }
    }
    drop(store);
    // Finishing times as a run would have them, not as fast as the test inserts them: the
    // baselines at 1,000 s, each cycle an hour after the one before, a candidate a minute apart.
    let db = rusqlite::Connection::open(dir.join(nasc_search::store::DB_FILE)).unwrap();
    db.execute("UPDATE candidates SET finished_at = 1000.0 + cycle * 3600.0 + slot * 60.0", []).unwrap();
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
    settings.set_snapshot_path("snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, text));
}

#[test]
fn the_report_tables_of_a_small_run() {
    let dir = run_dir("text");
    snapshot("search_report_text", &report(&dir, &["--no-plots"]));
    snapshot("search_report_csv", &report(&dir, &["--no-plots", "--csv"]));
    let mut json: serde_json::Value = serde_json::from_str(&report(&dir, &["--no-plots", "--json"])).unwrap();
    // Keys sorted, whatever order serde_json keeps maps in for this build (llguidance turns on
    // its `preserve_order`): the snapshot is about the values.
    json.sort_all_objects();
    snapshot("search_report_json", &serde_json::to_string_pretty(&json).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two runs (an experiment's arms) side by side: each run's own tables under its name, then one
/// table of both; the CSV leads each row with its run, the JSON is a list of runs.
#[test]
fn several_runs_are_reported_side_by_side() {
    // Fixed folder names, so the table's widths are the same every run.
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("arm-a"), tmp.path().join("arm-b"));
    build_run(&a);
    build_run(&b);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["report", "--no-plots"])
        .args([&a, &b])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let name = |d: &PathBuf| d.file_name().unwrap().to_string_lossy().to_string();
    assert!(text.contains(&format!("== {}", name(&a))) && text.contains(&format!("== {}", name(&b))), "{text}");
    let side = text.split("Runs side by side\n").nth(1).expect("the side-by-side table");
    // Per run: 2 generators x 2 datasets x 2 cycles, and the 4 all-cycle rows; plus the header.
    assert_eq!(side.lines().count(), 1 + 2 * 12, "{side}");
    snapshot("search_report_side_by_side", side);
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["report", "--no-plots", "--csv"])
        .args([&a, &b])
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(csv.starts_with("run,generator,dataset,cycle,"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.starts_with(&name(&b))).count(), 8, "{csv}");
    let json = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["report", "--no-plots", "--json"])
        .args([&a, &b])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json[1]["run"], name(&b).as_str());
    assert_eq!(json[0]["report"]["totals"].as_array().map(Vec::len), Some(4));
}

/// `nasc report --plots DIR` with `NASC_FONT` set to `font`, or unset (the system fonts) when `None`.
fn report_plots(
    dir: &std::path::Path,
    plots: &std::path::Path,
    font: Option<&std::path::Path>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"));
    cmd.arg("report").arg("--plots").arg(plots).arg(dir);
    match font {
        Some(f) => cmd.env("NASC_FONT", f),
        None => cmd.env_remove("NASC_FONT"),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

const PLOTS: [&str; 4] = ["valid_rate", "accuracy", "accuracy_distribution", "best_so_far"];

fn assert_svgs(plots: &std::path::Path) {
    for name in PLOTS {
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("fashion-mnist"), "{name}");
    }
}

#[test]
fn the_report_writes_each_plot_as_svg_and_png() {
    let dir = run_dir("plots");
    let plots = dir.join("elsewhere");
    // The system's fonts, as a user gets them; CI installs fonts-dejavu-core (.ci/run).
    let out = report_plots(&dir, &plots, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("PNG plots skipped"), "no font for the PNGs on this machine: {stderr}");
    assert_svgs(&plots);
    for name in PLOTS {
        let bytes = std::fs::read(plots.join(format!("{name}.png"))).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}.png lacks the PNG signature");
        let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes)).read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((info.width, info.height), nasc_search::report::PLOT_SIZE, "{name}.png");
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight), "{name}.png");
        let pixels: Vec<&[u8]> = rgb.chunks(3).collect();
        let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
        assert!(colours.len() > 1, "{name}.png is one colour");
        // The title is the only thing drawn in the top 36 rows: dark pixels there are rendered text.
        let title_ink = pixels[..36 * info.width as usize].iter().filter(|p| p.iter().all(|c| *c < 100)).count();
        assert!(title_ink > 50, "{name}.png has no title text ({title_ink} dark pixels above the chart)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_usable_font_the_report_writes_the_svgs_and_says_why_pngs_were_skipped() {
    let dir = run_dir("nofont");
    let not_a_font = dir.join("not-a-font.ttf");
    std::fs::write(&not_a_font, "this is text, not a font").unwrap();
    for (font, why) in [(dir.join("missing.ttf"), "cannot be read"), (not_a_font, "is not a TrueType or OpenType font")]
    {
        let plots = dir.join("plots");
        let _ = std::fs::remove_dir_all(&plots);
        let out = report_plots(&dir, &plots, Some(&font));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = format!("PNG plots skipped: NASC_FONT={} {why}", font.display());
        assert!(stderr.contains(&said), "expected {said:?} in: {stderr}");
        assert!(stderr.contains("fonts-dejavu-core") && stderr.contains("The SVG plots were written"), "{stderr}");
        assert_svgs(&plots);
        for name in PLOTS {
            assert!(!plots.join(format!("{name}.png")).exists(), "{name}.png");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store whose numbers were corrupted outside their ranges (an accuracy of 7.5, a negative
/// token count, an infinite training time) is an error that names the candidate and the column,
/// with a non-zero exit, not a table of nonsense.
#[test]
fn numbers_outside_their_ranges_are_named() {
    for (set, column) in [
        ("accuracy = 7.5", "accuracy"),
        ("reply_tokens = -3", "reply_tokens"),
        ("train_s = 9e999", "train_s"),
        ("similarity = -0.5", "similarity"),
        ("cycle = -1", "cycle"),
    ] {
        let dir = run_dir(&format!("range-{column}"));
        let db = rusqlite::Connection::open(dir.join(nasc_search::store::DB_FILE)).unwrap();
        let id: i64 = db.query_row("SELECT MAX(id) FROM candidates", [], |r| r.get(0)).unwrap();
        db.execute(&format!("UPDATE candidates SET {set} WHERE id = {id}"), []).unwrap();
        drop(db);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
            .args(["report", "--no-plots"])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set}: {err}");
        assert!(err.contains(&format!("candidate {id}")) && err.contains(&format!("column {column}")), "{set}: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
