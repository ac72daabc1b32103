//! Many workers: `nasc search --workers 0` drives a run whose candidates `nasc worker` processes
//! train, on PostgreSQL (the server `NASC_TEST_POSTGRES` names; `bash scripts/test` starts one)
//! and on SQLite. Workers are killed, join late, leave early; the driver is killed and resumed,
//! and a second driver is refused. Every candidate is trained once, and nothing is lost.
//!
//! Data: /usr/share/datasets/fashion-mnist (Debian's `dataset-fashion-mnist`) or `$NASC_TEST_DATA`.

use nasc_search::store::testing::fresh_postgres;
use nasc_search::store::{Location, Role, Status};
use nasc_search::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Child processes killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh folder holding `run.toml`: 2 cycles of 4 LeNet-5 candidates on 500 Fashion-MNIST
/// images, trained by workers only, with a 1 s heartbeat and 2 s of grace.
fn run_folder(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("nasc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from);
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "datasets = [\"fashion-mnist\"]\nbaselines = [\"{}/zoo/lenet5.arch\"]\ncycles = 2\ncandidates = 4\n\
             workers = 0\nseed = 11\n[queue]\nheartbeat_s = 1.0\ngrace_s = 2.0\n[train]\ndata_root = \"{}\"\n\
             limit = 500\neval_batch = 1000\n",
            env!("CARGO_MANIFEST_DIR"),
            data.display()
        ),
    )
    .unwrap();
    (dir, config)
}

fn nasc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nasc"))
}

fn driver(config: &Path, run: &Path, store: &Location) -> Child {
    nasc()
        .args(["search", "--json", "--config"])
        .arg(config)
        .arg("--out")
        .arg(run)
        .args(["--store", &store.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn worker(store: &Location, name: &str, extra: &[&str]) -> Child {
    nasc()
        .args(["worker", "--json", "--store", &store.url(), "--name", name])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit successfully within `limit`; its stdout parsed as JSON.
fn finished(child: &mut Child, what: &str, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < limit, "{what} did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{what} failed ({status}): {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {out}\n{err}"))
}

/// Polls the store until `cond` holds (or fails the test after `limit`).
fn wait_until(store: &Location, what: &str, limit: Duration, cond: impl Fn(&Store) -> bool) {
    let start = Instant::now();
    loop {
        if let Ok(s) = Store::open_at(store) {
            if cond(&s) {
                return;
            }
        }
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The run's rows: all finished, one per (cycle, slot), every one judged `ok` trained exactly
/// by a worker of `names`. Returns them.
fn every_candidate_trained_once(store: &Location, names: &[&str]) -> Vec<nasc_search::store::Candidate> {
    let all = Store::open_at(store).unwrap().all().unwrap();
    assert_eq!(all.len(), 1 + 2 * 4, "the baseline and 2 cycles of 4");
    let mut slots: Vec<_> = all.iter().map(|c| (c.cycle, c.slot)).collect();
    slots.dedup();
    assert_eq!(slots.len(), all.len(), "one row per slot");
    for c in &all {
        assert_eq!(c.status, Status::Finished, "candidate {} finished", c.id);
        if c.front_verdict == nasc_delta::Verdict::Ok {
            let by = c.trained_by.as_deref().unwrap_or_else(|| panic!("candidate {} has no trainer", c.id));
            assert!(names.iter().any(|n| by.starts_with(&format!("{n}/"))), "candidate {} trained by {by}", c.id);
            assert!(c.verdict.is_training() && c.train_s.is_some(), "candidate {} trained", c.id);
        }
    }
    all
}

/// A PostgreSQL run named `name` driven with one worker, `worker`, once that worker holds a
/// lease on a cycle-1 candidate: the folder, the store, the processes (driver, worker) and the
/// candidate's id.
fn one_worker_training(name: &str, worker_name: &str) -> (PathBuf, Location, Procs, i64) {
    let (dir, config) = run_folder(&format!("workers-{name}"));
    let store = fresh_postgres(name);
    let run = dir.join("run");
    let procs = Procs(vec![driver(&config, &run, &store), worker(&store, worker_name, &[])]);
    let leased = |s: &Store| {
        s.all().ok()?.into_iter().find(|c| c.cycle == 1 && c.status == Status::Claimed && c.leases == 1).map(|c| c.id)
    };
    let start = Instant::now();
    loop {
        if let Some(held) = Store::open_at(&store).ok().as_ref().and_then(leased) {
            return (dir, store, procs, held);
        }
        assert!(start.elapsed() < Duration::from_secs(300), "the worker trained no cycle-1 candidate");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_worker_processes_on_postgres_train_every_candidate_once() {
    let (dir, config) = run_folder("workers-three");
    let store = fresh_postgres("three");
    let run = dir.join("run");
    let mut procs = Procs(vec![driver(&config, &run, &store)]);
    for name in ["w1", "w2", "w3"] {
        procs.0.push(worker(&store, name, &[]));
    }
    let summary = finished(&mut procs.0[0], "the driver", Duration::from_secs(600));
    assert_eq!(summary["candidates"], 8);
    let mut trained = 0;
    for (i, p) in procs.0.iter_mut().enumerate().skip(1) {
        let w = finished(p, "a worker", Duration::from_secs(60));
        assert_eq!(w["stopped"], "run finished", "worker {i}: {w}");
        assert_eq!(w["refused"], 0);
        trained += w["trained"].as_u64().unwrap();
    }
    let all = every_candidate_trained_once(&store, &["w1", "w2", "w3"]);
    assert!(all.iter().all(|c| c.leases <= 1), "no lease ran out");
    let to_train = all.iter().filter(|c| c.front_verdict == nasc_delta::Verdict::Ok).count() as u64;
    assert_eq!(trained, to_train, "the workers' counts add up to the trained rows");
    let workers = Store::open_at(&store).unwrap().workers().unwrap();
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|w| w.state == "stopped"), "{workers:?}");
    // The folder names its store: reports find it.
    let out = nasc().args(["report", "--json", "--no-plots"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = nasc().args(["report", "--json", "--no-plots", &store.url()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_killed_mid_training_loses_nothing_and_counts_nothing_twice() {
    let (dir, store, mut procs, held) = one_worker_training("kill", "doomed");
    procs.0[1].kill().unwrap();
    procs.0[1].wait().unwrap();
    procs.0.push(worker(&store, "rescuer", &[]));
    finished(&mut procs.0[0], "the driver", Duration::from_secs(600));
    let w = finished(&mut procs.0[2], "the rescuer", Duration::from_secs(60));
    assert_eq!(w["refused"], 0);
    let all = every_candidate_trained_once(&store, &["doomed", "rescuer"]);
    let c = all.iter().find(|c| c.id == held).unwrap();
    assert_eq!(c.leases, 2, "the killed worker's lease ran out and the candidate was leased again");
    assert!(c.trained_by.as_deref().unwrap().starts_with("rescuer/"));
    assert!(all.iter().all(|c| c.leases <= 2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_late_worker_on_sqlite_takes_the_work_an_early_one_left() {
    let (dir, config) = run_folder("workers-late");
    let run = dir.join("run");
    let store = Location::Sqlite(run.join("run.db"));
    let mut procs = Procs(vec![driver(&config, &run, &store)]);
    wait_until(&store, "the run to exist", Duration::from_secs(60), |_| true);
    procs.0.push(worker(&store, "early", &["--max-candidates", "2"]));
    let early = finished(&mut procs.0[1], "the early worker", Duration::from_secs(300));
    assert_eq!((early["trained"].as_u64(), early["stopped"].as_str()), (Some(2), Some("max candidates")));
    // Nothing trains while no worker runs: the driver waits.
    std::thread::sleep(Duration::from_millis(500));
    assert!(procs.0[0].try_wait().unwrap().is_none(), "the driver waits for workers");
    procs.0.push(worker(&store, "late", &[]));
    finished(&mut procs.0[0], "the driver", Duration::from_secs(600));
    let late = finished(&mut procs.0[2], "the late worker", Duration::from_secs(60));
    let all = every_candidate_trained_once(&store, &["early", "late"]);
    let trained = all.iter().filter(|c| c.trained_by.is_some()).count() as u64;
    assert_eq!(late["trained"].as_u64(), Some(trained - 2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_driver_resumes_while_its_workers_go_on_and_a_second_driver_is_refused() {
    let (dir, config) = run_folder("workers-driver");
    let store = fresh_postgres("driver_kill");
    let run = dir.join("run");
    let mut procs = Procs(vec![driver(&config, &run, &store), worker(&store, "steady", &[])]);
    wait_until(&store, "a trained cycle-1 candidate", Duration::from_secs(300), |s| {
        s.all().is_ok_and(|all| all.iter().any(|c| c.cycle == 1 && c.role == Role::Candidate && c.accuracy.is_some()))
    });
    // A second driver of the same store, from another folder, is refused while the first lives.
    let other = dir.join("other");
    let out =
        nasc().args(["search", "--json", "--resume"]).arg(&other).args(["--store", &store.url()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is being driven by another process"), "{err}");

    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    // The run folder names its store, so `--resume RUN` needs nothing else.
    let mut resumed = nasc()
        .args(["search", "--json", "--resume"])
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let summary = finished(&mut resumed, "the resumed driver", Duration::from_secs(600));
    assert_eq!(summary["candidates"], 8);
    let w = finished(&mut procs.0[1], "the worker", Duration::from_secs(60));
    assert_eq!(w["refused"], 0);
    every_candidate_trained_once(&store, &["steady"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_stopped_by_sigterm_hands_its_candidate_back_at_once() {
    let (dir, store, mut procs, _) = one_worker_training("term", "preempted");
    let status = Command::new("kill").args(["-TERM", &procs.0[1].id().to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = procs.0[1].try_wait().unwrap() {
            break s.code();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the worker did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(143));
    // Handed back, uncounted, before any lease could have run out (heartbeat 1 s + grace 2 s).
    let now = Store::open_at(&store).unwrap().all().unwrap();
    assert!(
        now.iter().all(|c| c.status == Status::Finished || c.leases == 0),
        "no candidate is left leased: {:?}",
        now.iter().map(|c| (c.id, c.status, c.leases)).collect::<Vec<_>>()
    );
    procs.0.push(worker(&store, "next", &[]));
    finished(&mut procs.0[0], "the driver", Duration::from_secs(600));
    finished(&mut procs.0[2], "the next worker", Duration::from_secs(60));
    let all = every_candidate_trained_once(&store, &["preempted", "next"]);
    assert!(all.iter().all(|c| c.leases <= 1), "a hand-back is not a lost lease");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_without_the_runs_data_hands_its_candidate_back_and_says_why() {
    let (dir, config) = run_folder("workers-nodata");
    let run = dir.join("run");
    let store = Location::Sqlite(run.join("run.db"));
    let mut procs = Procs(vec![driver(&config, &run, &store)]);
    let empty = dir.join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let out = nasc()
        .args(["worker", "--store", &store.url(), "--name", "dry", "--data-root", empty.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("none of the run's datasets loads here") && err.contains("fashion-mnist"), "{err}");
    let all = Store::open_at(&store).unwrap().all().unwrap();
    assert!(all.iter().all(|c| c.leases == 0 && c.trained_by.is_none()), "handed back, uncounted");
    procs.0.push(worker(&store, "wet", &[]));
    finished(&mut procs.0[0], "the driver", Duration::from_secs(600));
    finished(&mut procs.0[1], "the worker", Duration::from_secs(60));
    every_candidate_trained_once(&store, &["wet"]);
    let _ = std::fs::remove_dir_all(&dir);
}
