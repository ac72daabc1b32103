//! The run store's cost per candidate on each engine: insert a judged candidate, lease it,
//! renew the lease once, record its result. One worker, then `W` workers on their own
//! connections at once.
//!
//!   cargo run --release -p nasc-search --example bench_store -- [N] [W] [postgres://…/maintenance-db]
//!
//! Without a URL only SQLite is measured (a file in the temporary folder, WAL, synchronous=FULL);
//! with one, a fresh database is created on that server for the run.

use nasc_delta::Verdict;
use nasc_search::store::{LeaseTerms, Location, NewCandidate, Role, Store, Trained};
use std::time::Instant;

fn fill(store: &Store, n: usize, cycle: i64) {
    for slot in 0..n as i64 {
        let row = NewCandidate {
            cycle,
            slot,
            dataset: "fashion-mnist".into(),
            baseline: "lenet5".into(),
            generator: "mutate".into(),
            program: Some("x".repeat(600)),
            attempts: 1,
            attempt_verdicts: vec![Verdict::Ok],
            ..NewCandidate::new(Role::Candidate, Verdict::Ok)
        };
        store.insert(&row, true).unwrap();
    }
}

fn drain(at: &Location, name: &str) -> usize {
    let store = Store::open_at(at).unwrap();
    let terms = LeaseTerms { lease_s: 60.0, max_leases: 3 };
    let mut n = 0;
    while let Some(c) = store.claim(name, &terms, None).unwrap() {
        assert!(store.renew(c.id, name, 60.0).unwrap());
        let t = Trained { accuracy: Some(0.5), result_json: "{}".into(), ..Trained::new(Verdict::Ok) };
        assert!(store.finish_leased(c.id, name, &t).unwrap());
        n += 1;
    }
    n
}

fn bench(label: &str, at: &Location, n: usize, workers: usize) {
    let store = Store::create_at(at, "{}", &[]).unwrap();
    let t = Instant::now();
    fill(&store, n, 1);
    let insert = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    assert_eq!(drain(at, "w0"), n);
    let one = t.elapsed().as_secs_f64() / n as f64;
    fill(&store, n, 2);
    let t = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers).map(|w| s.spawn(move || drain(at, &format!("w{w}")))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(done, n);
    let many = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "{label:<10} insert {:>7.0} µs · lease+renew+finish, 1 worker {:>7.0} µs · {workers} workers {:>7.0} µs per candidate ({:.0}/s)",
        insert * 1e6,
        one * 1e6,
        many * 1e6,
        1.0 / many
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let workers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = std::env::temp_dir().join(format!("nasc-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    bench("sqlite", &Location::Sqlite(dir.join("run.db")), n, workers);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(url) = args.get(3) {
        bench("postgres", &nasc_search::store::testing::fresh_postgres_on(url, "bench"), n, workers);
    }
}
