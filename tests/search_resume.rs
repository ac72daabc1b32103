//! Kill and resume: `nasc search` is SIGKILLed while candidates are training, then `--resume`d.
//! No finished candidate is lost, redone or counted twice; the unfinished ones are redone and the run completes.
//!
//! Data: /usr/share/datasets/fashion-mnist (Debian's `dataset-fashion-mnist`) or `$NASC_TEST_DATA`.

#[path = "common/killed_runs.rs"]
mod killed_runs;

use nasc_search::store::{Role, Status};
use nasc_search::Store;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn data_root() -> PathBuf {
    std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from)
}

/// A fresh folder named `name` (with the process id) holding `run.toml`: 2 cycles of 4 LeNet-5
/// candidates on Fashion-MNIST, with `seed` and a training subset of `limit` images.
fn lenet5_run(name: &str, seed: u64, limit: u32) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "datasets = [\"fashion-mnist\"]\nbaselines = [\"{root}/zoo/lenet5.arch\"]\ncycles = 2\n\
             candidates = 4\nseed = {seed}\n[train]\ndata_root = \"{}\"\nlimit = {limit}\neval_batch = 1000\n",
            data_root().display()
        ),
    )
    .unwrap();
    (dir, config)
}

/// A kill between the creation of `run.db` and the commit of the run in it leaves a database
/// without a run. `--resume` says so and how to start again; `--config` starts it again.
#[test]
fn a_run_whose_creation_never_committed_is_started_again() {
    let (dir, config) = lenet5_run("nasc-uncommitted", 3, 200);
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("run.db"), b"").unwrap(); // what SQLite holds before the first commit
    assert!(!Store::holds_run(&run));
    let nasc = || Command::new(env!("CARGO_BIN_EXE_nasc"));
    let out = nasc().args(["search", "--resume"]).arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("creation was interrupted") && err.contains("--config FILE --out"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = nasc().args(["search", "--json", "--config"]).arg(&config).arg("--out").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(Store::holds_run(&run));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["candidates"], 8);

    // A committed run is never overwritten.
    let out = nasc().args(["search", "--config"]).arg(&config).arg("--out").arg(&run).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a run"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_killed_mid_training_resumes_without_losing_or_repeating_a_candidate() {
    let (dir, config) = lenet5_run("nasc-resume", 3, 2000);
    let run = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["search", "--json", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait until a candidate of cycle 1 has finished training while others are still claimed.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the search made no progress");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the search ended before it could be killed: {status}");
        }
        if let Ok(store) = Store::open(&run) {
            if let Ok(all) = store.all() {
                let trained = all
                    .iter()
                    .filter(|c| c.role == Role::Candidate && c.status == Status::Finished && c.accuracy.is_some());
                let claimed = all.iter().filter(|c| c.status == Status::Claimed).count();
                if trained.count() >= 1 && claimed >= 1 {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    let before = Store::open(&run).unwrap().all().unwrap();
    let finished: Vec<_> = before.iter().filter(|c| c.status == Status::Finished).cloned().collect();
    let claimed: Vec<_> = before.iter().filter(|c| c.status == Status::Claimed).cloned().collect();
    assert!(!claimed.is_empty(), "killed with work unfinished");

    let out =
        Command::new(env!("CARGO_BIN_EXE_nasc")).args(["search", "--json", "--resume"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["candidates"], 8);

    let after = Store::open(&run).unwrap().all().unwrap();
    assert!(after.iter().all(|c| c.status == Status::Finished), "the run completes");
    assert_eq!(after.iter().filter(|c| c.role == Role::Baseline).count(), 1);
    let cands: Vec<_> = after.iter().filter(|c| c.role == Role::Candidate).collect();
    assert_eq!(cands.len(), 8, "no candidate lost or counted twice");
    let mut slots: Vec<(i64, i64)> = cands.iter().map(|c| (c.cycle, c.slot)).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots, [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]);
    for f in &finished {
        let now = after.iter().find(|c| c.id == f.id).expect("a finished candidate is kept");
        assert_eq!(
            (now.cycle, now.slot, &now.verdict, now.accuracy, now.finished_at),
            (f.cycle, f.slot, &f.verdict, f.accuracy, f.finished_at),
            "a finished candidate is never redone"
        );
    }
    for c in &claimed {
        let now = after.iter().find(|x| x.id == c.id).expect("a claimed candidate keeps its row");
        assert_eq!((now.cycle, now.slot, &now.program), (c.cycle, c.slot, &c.program), "and its program");
        assert!(now.finished_at.is_some() && now.verdict.is_training(), "and is trained on resume");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL at moments drawn at random (from the run's creation to its end, printed so that a
/// failure can be replayed), `--resume` after each: the run completes with every slot once, and
/// with the same candidates, slot by slot, as the same run never interrupted.
#[test]
fn a_run_killed_at_random_moments_ends_as_the_run_never_killed() {
    let (dir, config) = lenet5_run("nasc-kills", 5, 500);
    let search = |args: &[&str], run: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_nasc"))
            .arg("search")
            .args(args)
            .arg(run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // The run never killed.
    let whole = dir.join("whole");
    let status = search(&["--config", config.to_str().unwrap(), "--out"], &whole).wait().unwrap();
    assert!(status.success());

    // The same run, killed at random moments. Millisecond delays from a small generator
    // seeded by the clock, said on stderr.
    let mut state = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let run = dir.join("killed");
    let mut kills = Vec::new();
    for round in 0..6 {
        // A kill before the run's creation committed leaves no run: it is started again.
        let mut child = if Store::holds_run(&run) {
            search(&["--resume"], &run)
        } else {
            search(&["--config", config.to_str().unwrap(), "--out"], &run)
        };
        // The first kills come early (creating the run, training the baseline), later ones anywhere.
        let ms = if round < 2 { next() % 400 } else { next() % 3000 };
        std::thread::sleep(Duration::from_millis(ms));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push(ms);
    }
    eprintln!("killed after {kills:?} ms");
    killed_runs::finish_and_compare(&config, &whole, &run, &kills);
    let _ = std::fs::remove_dir_all(&dir);
}
