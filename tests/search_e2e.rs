//! `nasc search` end to end with the `mutate` generator on real Fashion-MNIST (a subset), then
//! `nasc report` on the run; and the errors a user meets with a bad config or run folder.
//!
//! Data: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or
//! `$NASC_TEST_DATA/fashion-mnist`.

use nasc_delta::Verdict;
use nasc_search::store::{Role, Status};
use nasc_search::Store;
use std::path::{Path, PathBuf};
use std::process::Command;

fn data_root() -> PathBuf {
    std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from)
}

fn nasc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nasc"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nasc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small run: 2 cycles × 4 candidates, two baselines, 2,000 training images.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = format!(
        "datasets = [\"fashion-mnist\"]\nbaselines = [\"{root}/zoo/lenet5.arch\", \"{root}/crates/delta/tests/corpus/bases/small.arch\"]\n\
         cycles = 2\ncandidates = 4\nseed = 1\n{extra}\n[train]\ndata_root = \"{}\"\nlimit = 2000\noptimizer = \"adam\"\n\
         lr = 0.001\neval_batch = 1000\n",
        data_root().display()
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_mutate_search_on_fashion_mnist_records_every_candidate_and_reports_them() {
    let dir = scratch("e2e");
    let config = write_config(&dir, "workers = 2");
    let run = dir.join("run");
    let out = nasc().args(["search", "--json", "--config"]).arg(&config).arg("--out").arg(&run).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("summary: {summary}");
    assert_eq!(summary["candidates"], 8);
    assert!(stderr.contains("no fine-tuning"), "the skipped fine-tune is logged: {stderr}");

    let store = Store::open(&run).unwrap();
    let all = store.all().unwrap();
    let baselines: Vec<_> = all.iter().filter(|c| c.role == Role::Baseline).collect();
    let cands: Vec<_> = all.iter().filter(|c| c.role == Role::Candidate).collect();
    assert_eq!((baselines.len(), cands.len()), (2, 8));
    assert!(all.iter().all(|c| c.status == Status::Finished));
    // LeNet-5 on 2,000 images with Adam: well above chance (0.10).
    let lenet = baselines.iter().find(|b| b.baseline == "lenet5").unwrap();
    assert!(lenet.accuracy.unwrap() > 0.4, "{:?}", lenet.accuracy);
    for cycle in 1..=2 {
        // Each slot once (rows are stored as slots become final, so in no fixed order).
        let mut slots: Vec<i64> = cands.iter().filter(|c| c.cycle == cycle).map(|c| c.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2, 3], "cycle {cycle}");
    }
    for c in &cands {
        assert_eq!(c.generator, "mutate");
        let parent = all.iter().find(|p| Some(p.id) == c.parent_id).expect("every candidate has a parent");
        assert!(parent.cycle < c.cycle && parent.accuracy.is_some(), "parents come from earlier cycles and trained");
        assert!(c.prompt.as_deref().unwrap().contains("  1 | "), "the prompt numbers the program's lines");
        if c.front_verdict == Verdict::Ok {
            assert!(c.diff.as_deref().unwrap().starts_with("--- a/program.arch"), "{:?}", c.diff);
            assert!(c.params.is_some() && c.macs.is_some() && c.hash.is_some());
            assert!(c.verdict.is_training(), "{}", c.verdict);
        } else {
            assert_eq!(c.verdict, c.front_verdict);
        }
    }
    let valid = cands.iter().filter(|c| c.front_verdict == Verdict::Ok).count();
    assert!(valid >= 4, "mutate's valid rate with retries is high: {valid}/8");

    // The corpus: chat messages, prompt → canonical diff, only strict improvements.
    for cycle in 1..=2 {
        let text = std::fs::read_to_string(run.join(format!("corpus/after-cycle-{cycle}.jsonl"))).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["messages"][0]["role"], "user");
            assert!(v["messages"][1]["content"].as_str().unwrap().contains("@@"));
            assert!(v["gain"].as_f64().unwrap() > 0.0);
            let (p, c) = (v["parent"].as_i64().unwrap(), v["child"].as_i64().unwrap());
            let acc = |id: i64| all.iter().find(|x| x.id == id).unwrap().accuracy.unwrap();
            assert!(acc(c) > acc(p));
        }
    }

    let report = nasc().arg("report").arg(&run).output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("mutate    fashion-mnist      1     4"), "{text}");
    for plot in ["valid_rate", "accuracy", "accuracy_distribution", "best_so_far"] {
        let svg = std::fs::read_to_string(run.join(format!("plots/{plot}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{plot}");
    }
    let json = nasc().args(["report", "--json", "--no-plots"]).arg(&run).output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(r["rows"].as_array().unwrap().len(), 2);
    let csv = nasc().args(["report", "--csv", "--no-plots"]).arg(&run).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&csv.stdout).lines().count(), 3);

    // A second start into the same folder is refused; resuming a finished run changes nothing.
    let again = nasc().args(["search", "--config"]).arg(&config).arg("--out").arg(&run).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = nasc().args(["search", "--json", "--resume"]).arg(&run).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let after = Store::open(&run).unwrap().all().unwrap();
    assert_eq!(after.len(), all.len());

    // `reeval` trains the best candidates longer. Run again, it keeps what it stored and trains
    // only what is missing, as after a reeval stopped partway.
    let reeval = || nasc().args(["reeval", "--top", "3", "--epochs", "2", "--json"]).arg(&run).output().unwrap();
    let first = reeval();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let r1: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let ids: Vec<i64> = r1["candidates"].as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let db = rusqlite::Connection::open(run.join("run.db")).unwrap();
    db.execute("DELETE FROM reevals WHERE candidate_id = ?1", [ids[0]]).unwrap();
    let second = reeval();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    let line = |id: i64| stderr.lines().find(|l| l.starts_with(&format!("candidate {id}:"))).unwrap_or_default();
    assert!(!line(ids[0]).contains("earlier reeval"), "{stderr}");
    assert!(ids[1..].iter().all(|&id| line(id).contains("stored by an earlier reeval")), "{stderr}");
    let r2: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(r2["candidates"][1]["accuracy"], r1["candidates"][1]["accuracy"]);
    assert!(r2["candidates"][0]["accuracy"].as_f64().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_and_run_folders_are_clear_errors() {
    let dir = scratch("bad");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "cycles = 2\ncandidats = 3\n").unwrap();
    let out = nasc().args(["search", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("candidats") && err.contains("bad.toml"), "{err}");

    std::fs::write(&path, "[train]\nlr = \"fast\"\n").unwrap();
    let out = nasc().args(["search", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lr"), "{err}");

    let out = nasc().args(["search", "--config"]).arg(dir.join("missing.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

    for cmd in [&["search", "--resume"][..], &["report"], &["reeval"]] {
        let out = nasc().args(cmd).arg(dir.join("no-run")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("no-run") && err.contains("not a run folder"), "{cmd:?}: {err}");
    }
    let out = nasc().args(["search"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
