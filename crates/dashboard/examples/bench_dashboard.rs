//! What `nasc dashboard` takes to answer a page at scale: a SQLite run of N candidates (100,000
//! by default: 200 cycles of 500 over two datasets, a third of them invalid, the rest trained),
//! served in this process; each API request a page makes, timed (median of 5, after one
//! warm-up; the run's report also cold).
//!
//!   cargo run --release -p nasc-dashboard --example bench_dashboard -- [N]

use nasc_delta::Verdict;
use nasc_search::store::{Location, NewCandidate, Role, Store, Trained};
use std::time::{Duration, Instant};

const PROGRAM: &str = include_str!("../../../zoo/lenet5.arch");

fn fill(store: &Store, n: usize) {
    store.execute_raw("PRAGMA synchronous = OFF").unwrap();
    let per_cycle = 500;
    for i in 0..n {
        let ok = i % 3 != 0;
        let verdict = if ok { Verdict::Ok } else { Verdict::ShapeError };
        let row = NewCandidate {
            cycle: (i / per_cycle) as i64 + 1,
            slot: (i % per_cycle) as i64,
            dataset: if i % 2 == 0 { "fashion-mnist" } else { "cifar10" }.into(),
            baseline: "lenet5".into(),
            parent_id: (i > 0).then_some((i / 2) as i64 + 1),
            generator: "mutate".into(),
            program: Some(PROGRAM.replace("conv(6, k=5)", &format!("conv({}, k=5)", 4 + i % 60))),
            diff: Some(
                "--- a/program.arch\n+++ b/program.arch\n@@ -11,1 +11,1 @@\n-  conv(6, k=5)\n+  conv(8, k=5)\n".into(),
            ),
            reply: Some("A reply of a few hundred characters, as a model writes them.\n".repeat(5)),
            attempts: 1,
            attempt_verdicts: vec![verdict],
            params: Some(60_000 + (i % 997) as i64 * 13),
            macs: Some(400_000 + (i % 991) as i64 * 71),
            similarity: Some((i % 100) as f64 / 120.0),
            ..NewCandidate::new(Role::Candidate, verdict)
        };
        let id = store.insert(&row, ok).unwrap();
        if ok {
            let t = Trained {
                accuracy: Some(0.5 + (i % 401) as f64 / 1000.0),
                train_s: Some(30.0),
                ..Trained::new(Verdict::Ok)
            };
            store.finish(id, &t).unwrap();
        }
    }
}

fn time(agent: &ureq::Agent, url: &str) -> Duration {
    let start = Instant::now();
    let mut r = agent.get(url).call().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    let _ = r.body_mut().read_to_string().unwrap();
    start.elapsed()
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("nasc-bench-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let store = Store::create(&dir, "{\"cycles\": 200}", &[]).unwrap();
    fill(&store, n);
    drop(store);
    eprintln!("{n} candidates stored in {:.1} s", t.elapsed().as_secs_f64());
    let opts = nasc_dashboard::Options {
        runs: vec![("bench".into(), Location::Sqlite(dir.join("run.db")))],
        host: "127.0.0.1".into(),
        port: 0,
        api_key: None,
        poll: Duration::from_secs(1),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || nasc_dashboard::serve(&opts, |addr| tx.send(addr).unwrap()).unwrap());
    let base = format!("http://{}", rx.recv().unwrap());
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let cold = time(&agent, &format!("{base}/api/runs/0/report"));
    println!("{:<58} {:>9.1} ms", "report, cold (every row read, the report built)", cold.as_secs_f64() * 1e3);
    let mid = n as i64 / 2;
    for (what, path) in [
        ("page (HTML, script, style)", "/".to_string()),
        ("runs", "/api/runs".into()),
        ("report, cached", "/api/runs/0/report".into()),
        ("candidates, first page by id", "/api/runs/0/candidates".into()),
        ("candidates by accuracy, highest first", "/api/runs/0/candidates?sort=accuracy&order=desc".into()),
        ("candidates by novelty, page 1000", "/api/runs/0/candidates?sort=novelty&order=desc&page=1000".into()),
        ("candidates of one cycle and verdict", "/api/runs/0/candidates?cycle=100&verdict=ok&sort=macs".into()),
        (
            "the scatter's 1000 latest trained",
            "/api/runs/0/candidates?verdict=ok&sort=id&order=desc&per_page=1000".into(),
        ),
        ("one candidate (parent, lineage, shapes, children)", format!("/api/runs/0/candidates/{mid}")),
    ] {
        let url = format!("{base}{path}");
        time(&agent, &url);
        let mut runs: Vec<Duration> = (0..5).map(|_| time(&agent, &url)).collect();
        runs.sort();
        println!("{what:<58} {:>9.1} ms", runs[2].as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
