//! The run store's behaviour, the same on both engines: every test runs on SQLite and on
//! PostgreSQL (the server `NASC_TEST_POSTGRES` names; `bash scripts/test` starts one).

use nasc_delta::Verdict;
use nasc_search::store::testing::fresh_postgres;
use nasc_search::store::{LeaseTerms, Location, NewCandidate, Progress, Role, Status, Store, Trained};
use std::path::PathBuf;
use std::time::Duration;

/// A scratch folder for a SQLite store, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `test` on a fresh SQLite store location and on a fresh PostgreSQL database.
fn on_both(name: &str, test: impl Fn(&Location)) {
    let dir = Scratch(std::env::temp_dir().join(format!("nasc-store-{name}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    test(&Location::Sqlite(dir.0.join("run.db")));
    test(&fresh_postgres(name));
}

fn row(slot: i64) -> NewCandidate {
    NewCandidate {
        cycle: 1,
        slot,
        dataset: "mnist".into(),
        baseline: "lenet5".into(),
        generator: "mutate".into(),
        attempts: 2,
        attempt_verdicts: vec![Verdict::ShapeError, Verdict::Ok],
        ..NewCandidate::new(Role::Candidate, Verdict::Ok)
    }
}

fn trained(accuracy: f64) -> Trained {
    Trained { accuracy: Some(accuracy), ..Trained::new(Verdict::Ok) }
}

#[test]
fn a_run_is_created_once_and_reopened_with_its_config() {
    on_both("create", |at| {
        let store = Store::create_at(at, "{\"a\": 1}", &[("template", "t")]).unwrap();
        assert_eq!(store.meta("template").unwrap().as_deref(), Some("t"));
        store.set_meta("template", "u").unwrap();
        drop(store);
        let again = Store::create_at(at, "{}", &[]).err().unwrap();
        assert!(again.0.contains("already holds a run"), "{}", again.0);
        let store = Store::open_at(at).unwrap();
        assert_eq!(store.meta("config").unwrap().as_deref(), Some("{\"a\": 1}"));
        assert_eq!(store.meta("template").unwrap().as_deref(), Some("u"));
        assert_eq!(store.meta("missing").unwrap(), None);
    });
}

#[test]
fn typed_values_are_stored_as_their_names() {
    on_both("typed", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let id = store.insert(&row(0), true).unwrap();
        let c = store.get(id).unwrap().unwrap();
        assert_eq!(
            (c.role, c.status, c.front_verdict, c.verdict),
            (Role::Candidate, Status::Claimed, Verdict::Ok, Verdict::Ok)
        );
        assert_eq!(c.attempt_verdicts, [Verdict::ShapeError, Verdict::Ok]);
        assert!(store.finish(id, &Trained::new(Verdict::Diverged)).unwrap());
        assert!(!store.finish(id, &trained(0.5)).unwrap(), "a finished candidate is finished once");
        // The stored text itself, as another program reading the database sees it.
        let matching = store
            .execute_raw(
                "UPDATE candidates SET id = id WHERE role = 'candidate' AND status = 'finished' \
                 AND attempt_verdicts = '[\"shape_error\",\"ok\"]' AND front_verdict = 'ok' \
                 AND train_verdict = 'diverged' AND verdict = 'diverged'",
            )
            .unwrap();
        assert_eq!(matching, 1);
        let c = store.get(id).unwrap().unwrap();
        assert_eq!((c.status, c.verdict, c.accuracy), (Status::Finished, Verdict::Diverged, None));
        assert!(store.claimed(1).unwrap().is_empty());
        assert_eq!(store.slots(1).unwrap(), [0]);
        let e = store.insert(&row(0), true).unwrap_err().0;
        assert!(e.to_lowercase().contains("unique"), "a (cycle, slot) is inserted once: {e}");
    });
}

#[test]
fn an_unknown_stored_name_is_an_error_naming_the_column_and_the_value() {
    on_both("names", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let id = store.insert(&row(0), true).unwrap();
        let set = |sql: &str| store.execute_raw(&sql.replace("ID", &id.to_string())).unwrap();
        set("UPDATE candidates SET verdict = 'exploded' WHERE id = ID");
        let e = store.all().unwrap_err().0;
        assert!(e.contains(&format!("candidate {id}: column verdict: unknown verdict \"exploded\"")), "{e}");
        set("UPDATE candidates SET verdict = 'ok', role = 'parent' WHERE id = ID");
        let e = store.get(id).unwrap_err().0;
        assert!(e.contains("column role: unknown role \"parent\": expected one of baseline, candidate"), "{e}");
        set("UPDATE candidates SET role = 'candidate', attempt_verdicts = '[\"ok\", \"fine\"]' WHERE id = ID");
        let e = store.all().unwrap_err().0;
        assert!(e.contains("column attempt_verdicts: unknown verdict \"fine\""), "{e}");
        set("UPDATE candidates SET attempt_verdicts = 'ok' WHERE id = ID");
        let e = store.all().unwrap_err().0;
        assert!(e.contains("column attempt_verdicts: not a JSON list of verdicts"), "{e}");
        assert!(e.contains(&at.shown()), "the error names the store: {e}");
    });
}

/// A run written by the first schema opens: it is upgraded in place, step by step, and reads
/// back; a store newer than this nasc is refused.
#[test]
fn a_store_of_schema_version_1_is_upgraded_when_opened() {
    on_both("upgrade", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let id = store.insert(&row(0), true).unwrap();
        for column in ["tolerances", "lease_owner", "lease_until", "leases", "trained_by"] {
            store.execute_raw(&format!("ALTER TABLE candidates DROP COLUMN {column}")).unwrap();
        }
        store.execute_raw("DROP INDEX candidates_queue").unwrap();
        store.execute_raw("DROP INDEX candidates_parent").unwrap();
        store.execute_raw("DROP TABLE workers").unwrap();
        store.set_meta("schema_version", "1").unwrap();
        drop(store);
        let store = Store::open_at(at).unwrap();
        assert_eq!(store.meta("schema_version").unwrap().as_deref(), Some("3"));
        let c = store.get(id).unwrap().unwrap();
        assert!(c.tolerances.is_empty());
        assert_eq!((c.leases, c.trained_by), (0, None));
        let terms = LeaseTerms { lease_s: 60.0, max_leases: 3 };
        assert_eq!(store.claim("w", &terms, None).unwrap().map(|c| c.id), Some(id), "an upgraded run hands out work");
        assert!(store.finish_leased(id, "w", &trained(0.5)).unwrap());
        let new = NewCandidate { tolerances: vec!["recounted".into()], ..row(1) };
        let id = store.insert(&new, false).unwrap();
        assert_eq!(store.get(id).unwrap().unwrap().tolerances, ["recounted"]);
        store.set_meta("schema_version", "7").unwrap();
        drop(store);
        let e = Store::open_at(at).err().unwrap().0;
        assert!(e.contains("has schema version 7, and this nasc reads version 3"), "{e}");
    });
}

#[test]
fn a_lease_hands_a_candidate_to_one_worker_and_a_lost_workers_late_result_is_refused() {
    on_both("lease", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let a = store.insert(&row(0), true).unwrap();
        let b = store.insert(&row(1), true).unwrap();
        store.insert(&NewCandidate { front_verdict: Verdict::ShapeError, ..row(2) }, false).unwrap();
        let long = LeaseTerms { lease_s: 60.0, max_leases: 3 };
        assert_eq!(store.claim("w1", &long, None).unwrap().map(|c| c.id), Some(a));
        assert_eq!(store.claim("w2", &long, None).unwrap().map(|c| c.id), Some(b), "a held row is passed over");
        assert!(store.claim("w3", &long, None).unwrap().is_none(), "nothing else waits");
        assert_eq!(store.progress(1).unwrap(), Progress { rows: 3, finished: 1, to_train: 2, claimed: 2 });
        assert!(!store.finish_leased(a, "w2", &trained(0.9)).unwrap(), "only the holder records a result");
        assert!(store.renew(a, "w1", 60.0).unwrap());
        assert!(!store.renew(a, "w2", 60.0).unwrap());
        assert!(store.finish_leased(a, "w1", &trained(0.5)).unwrap());
        assert!(!store.finish_leased(a, "w1", &trained(0.6)).unwrap(), "and once");
        let c = store.get(a).unwrap().unwrap();
        assert_eq!((c.accuracy, c.trained_by.as_deref(), c.leases), (Some(0.5), Some("w1"), 1));

        // w2 stops renewing: its lease runs out, w3 takes the row, and w2's late result is refused.
        assert!(store.renew(b, "w2", 0.05).unwrap());
        std::thread::sleep(Duration::from_millis(150));
        assert!(!store.renew(b, "w3", 60.0).unwrap());
        assert_eq!(
            store.claim("w3", &long, None).unwrap().map(|c| c.id),
            Some(b),
            "a lease that ran out frees the row"
        );
        assert!(!store.finish_leased(b, "w2", &trained(0.7)).unwrap(), "the lost worker's result is refused");
        assert!(!store.renew(b, "w2", 60.0).unwrap(), "and its heartbeat learns so");
        assert!(store.finish_leased(b, "w3", &trained(0.8)).unwrap());
        let c = store.get(b).unwrap().unwrap();
        assert_eq!((c.accuracy, c.trained_by.as_deref(), c.leases), (Some(0.8), Some("w3"), 2));
        assert_eq!(store.progress(1).unwrap(), Progress { rows: 3, finished: 3, to_train: 2, claimed: 0 });
        assert_eq!(store.unfinished().unwrap(), 0);
    });
}

#[test]
fn a_candidate_whose_lease_keeps_running_out_is_finished_as_crashed() {
    on_both("poison", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let id = store.insert(&row(0), true).unwrap();
        let short = LeaseTerms { lease_s: 0.05, max_leases: 2 };
        for worker in ["w1", "w2"] {
            assert_eq!(store.claim(worker, &short, None).unwrap().map(|c| c.id), Some(id));
            std::thread::sleep(Duration::from_millis(120));
        }
        assert!(store.claim("w3", &short, None).unwrap().is_none(), "not handed out a third time");
        let c = store.get(id).unwrap().unwrap();
        assert_eq!((c.status, c.verdict, c.leases), (Status::Finished, Verdict::Crashed, 2));
        assert!(!store.finish_leased(id, "w2", &trained(0.5)).unwrap());
    });
}

#[test]
fn leases_are_handed_out_only_for_the_datasets_asked_for_and_can_be_handed_back() {
    on_both("datasets", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let mnist = store.insert(&row(0), true).unwrap();
        let cifar = store.insert(&NewCandidate { dataset: "cifar10".into(), ..row(1) }, true).unwrap();
        let terms = LeaseTerms { lease_s: 60.0, max_leases: 1 };
        let only = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(store.claim("w", &terms, Some(&only(&["cifar10"]))).unwrap().map(|c| c.id), Some(cifar));
        assert!(store.claim("w", &terms, Some(&only(&["svhn"]))).unwrap().is_none());
        assert!(store.claim("w", &terms, Some(&[])).unwrap().is_none());
        assert!(store.release(cifar, "w").unwrap(), "handed back untrained");
        assert!(!store.release(cifar, "w").unwrap());
        // A hand-back is not a lost lease: with max_leases 1 the row is still handed out.
        assert_eq!(store.claim("local:x:1", &terms, Some(&only(&["cifar10"]))).unwrap().map(|c| c.id), Some(cifar));
        assert_eq!(store.claim("local:x:2", &terms, None).unwrap().map(|c| c.id), Some(mnist));
        assert_eq!(store.release_owned_by("local:").unwrap(), 2, "a new driver hands back its predecessor's leases");
        let c = store.get(cifar).unwrap().unwrap();
        assert_eq!((c.status, c.leases), (Status::Claimed, 0));
        assert_eq!(store.claim("w", &terms, None).unwrap().map(|c| c.id), Some(mnist));
    });
}

/// Workers on their own connections, all claiming at once: each candidate is trained by
/// exactly one of them.
#[test]
fn concurrent_workers_claim_each_candidate_exactly_once() {
    on_both("concurrent", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        for slot in 0..40 {
            store.insert(&row(slot), true).unwrap();
        }
        let terms = LeaseTerms { lease_s: 60.0, max_leases: 3 };
        let counts: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|w| {
                    let at = at.clone();
                    s.spawn(move || {
                        let store = Store::open_at(&at).unwrap();
                        let name = format!("w{w}");
                        let mut n = 0;
                        while let Some(c) = store.claim(&name, &terms, None).unwrap() {
                            assert!(store.finish_leased(c.id, &name, &trained(0.1)).unwrap());
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(counts.iter().sum::<usize>(), 40, "{counts:?}");
        let all = store.all().unwrap();
        assert!(all.iter().all(|c| c.status == Status::Finished && c.leases == 1), "each row leased once");
    });
}

#[test]
fn workers_are_listed_with_their_state() {
    on_both("workers", |at| {
        let store = Store::create_at(at, "{}", &[]).unwrap();
        let mut w = nasc_search::store::WorkerRow {
            name: "gpu-1/ab".into(),
            host: "node7".into(),
            device: "cuda:0".into(),
            state: "idle".into(),
            trained: 0,
            started_at: 1.0,
            seen_at: 0.0,
        };
        store.worker_seen(&w).unwrap();
        w.state = "training".into();
        w.trained = 3;
        store.worker_seen(&w).unwrap();
        let rows = store.workers().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].state.as_str(), rows[0].trained, rows[0].host.as_str()), ("training", 3, "node7"));
        assert!(rows[0].seen_at > 1.0e9, "seen by the database's clock");
    });
}

#[test]
fn a_second_driver_of_a_postgres_run_is_refused_until_the_first_is_gone() {
    let at = fresh_postgres("driver");
    let first = Store::create_at(&at, "{}", &[]).unwrap();
    first.lock_driver().unwrap();
    let second = Store::open_at(&at).unwrap();
    let e = second.lock_driver().unwrap_err().0;
    assert!(e.contains("is being driven by another process"), "{e}");
    drop(first);
    // The server lets the lock go with the connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while second.lock_driver().is_err() {
        assert!(std::time::Instant::now() < deadline, "the lock outlived its connection");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_store_that_cannot_be_reached_or_holds_no_run_is_a_clear_error() {
    let e = Store::open_at(&Location::parse("postgres://nasc:pw@127.0.0.1:1/x?connect_timeout=2").unwrap())
        .err()
        .unwrap()
        .0;
    assert!(e.starts_with("postgres://nasc:***@127.0.0.1:1/x"), "{e}");
    assert!(!e.contains("pw"), "no password in messages: {e}");
    let empty = fresh_postgres("empty");
    let e = Store::open_at(&empty).err().unwrap().0;
    assert!(e.contains("holds no nasc run"), "{e}");
}
