//! `nasc dashboard` over HTTP: its JSON for a stored fixture run (tables filtered, sorted,
//! paged; a candidate with its parent, shapes, lineage and children), its errors, its key, its
//! headers, and its event stream telling a page that the store changed. The pages themselves,
//! in a real browser, are tests/dashboard_browser.rs.

#[path = "common/dashboard.rs"]
mod dashboard;

use dashboard::{dashboard, fixture, HOSTILE, LENET};
use nasc_delta::Verdict;
use nasc_search::store::{NewCandidate, Role, Store};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into()
}

fn get(url: &str) -> (u16, Value) {
    let mut r = agent().get(url).call().unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    (r.status().as_u16(), serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nasc-dash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_api_serves_a_runs_tables_and_candidates() {
    let dir = scratch("api");
    let (run, ids) = fixture(&dir);
    let before = std::fs::read(run.join("run.db")).unwrap();
    let d = dashboard(&[run.to_str().unwrap()]);

    let mut page = agent().get(&d.url).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.body_mut().read_to_string().unwrap().contains("/app.js"));

    let (status, runs) = get(&format!("{}/api/runs", d.url));
    assert_eq!(status, 200);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(
        (runs[0]["label"].as_str(), runs[0]["rows"].as_i64(), runs[0]["unfinished"].as_i64()),
        (Some("fixture"), Some(6), Some(1))
    );
    assert_eq!(runs[0]["state"], "running");

    let (_, report) = get(&format!("{}/api/runs/0/report", d.url));
    assert_eq!(report["report"]["best"]["id"], ids[4]);
    assert_eq!(report["facets"]["cycles"], serde_json::json!([0, 1, 2]));
    assert!(report["facets"]["verdicts"].as_array().unwrap().contains(&"shape_error".into()));

    let table = |q: &str| get(&format!("{}/api/runs/0/candidates?{q}", d.url));
    let (_, all) = table("sort=accuracy&order=desc");
    let order: Vec<i64> = all["rows"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(all["total"], 6);
    assert_eq!(&order[..4], &[ids[4], ids[1], ids[0], ids[2]], "by accuracy, highest first; none last");
    let (_, asc) = table("sort=accuracy&order=asc");
    assert_eq!(asc["rows"][0]["id"], ids[2], "lowest first, still none last");
    let (_, shape) = table("verdict=shape_error");
    assert_eq!((shape["total"].as_i64(), shape["rows"][0]["id"].as_i64()), (Some(1), Some(ids[3])));
    let (_, cycle2) = table("cycle=2&dataset=fashion-mnist&generator=mutate");
    assert_eq!(cycle2["total"], 2);
    let (_, paged) = table("per_page=4&page=2&sort=id");
    assert_eq!(paged["rows"].as_array().unwrap().len(), 2);
    assert_eq!(paged["rows"][0]["id"], ids[4]);
    for (q, says) in [
        ("sort=fame", "sort must be one of id, cycle, accuracy, params, macs, novelty"),
        ("order=up", "order must be asc or desc"),
        ("page=0", "page must be at least 1"),
        ("per_page=5000", "per_page from 1 to 1000"),
        ("cycle=one", "cycle must be a whole number"),
    ] {
        let (status, body) = table(q);
        assert_eq!(status, 400, "{q}");
        assert!(body["error"].as_str().unwrap().contains(says), "{q}: {body}");
    }

    let (status, c) = get(&format!("{}/api/runs/0/candidates/{}", d.url, ids[1]));
    assert_eq!(status, 200);
    assert_eq!(c["parent_program"], LENET);
    assert!(c["candidate"]["reply"].as_str().unwrap().contains(HOSTILE), "the reply as stored, as data");
    assert!(c["candidate"]["diff"].as_str().unwrap().contains("+  conv(8, k=5)"));
    assert_eq!(c["lineage"][0]["id"], ids[0]);
    let children: Vec<i64> = c["children"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(children, [ids[4], ids[5]]);
    let rows = c["shapes"]["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["op"].as_str().unwrap().starts_with("conv(8")), "{rows:?}");
    let (_, bad) = get(&format!("{}/api/runs/0/candidates/{}", d.url, ids[3]));
    let why = bad["shapes"]["error"].as_str().unwrap();
    assert!(why.contains("wrong_input") && why.contains("program.arch:19"), "the checker's diagnostic: {why}");
    assert!(bad["candidate"]["diagnostic"].as_str().unwrap().contains(HOSTILE));

    for (path, status) in [
        ("/api/runs/0/candidates/99999", 404),
        ("/api/runs/3/report", 404),
        ("/api/runs/x/candidates", 404),
        ("/api/runs/0/candidates/abc", 404),
        ("/nothing", 404),
    ] {
        let (got, body) = get(&format!("{}{path}", d.url));
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    drop(d);
    assert!(std::fs::read(run.join("run.db")).unwrap() == before, "the store is only read");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_a_key_every_route_needs_it_and_a_browser_gets_a_cookie() {
    let dir = scratch("key");
    let (run, _) = fixture(&dir);
    let d = dashboard(&[run.to_str().unwrap(), "--api-key", "s3cret"]);
    let (status, body) = get(&format!("{}/api/runs", d.url));
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("?key=KEY"), "{body}");
    assert_eq!(agent().get(format!("{}/", d.url)).call().unwrap().status().as_u16(), 401);
    let r = agent().get(format!("{}/api/runs", d.url)).header("Authorization", "Bearer s3cret").call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = agent().get(format!("{}/api/runs", d.url)).header("Authorization", "Bearer s3cre").call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = agent().get(format!("{}/?key=s3cret", d.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let r = agent().get(format!("{}/api/runs", d.url)).header("Cookie", pair).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_event_stream_says_when_the_store_changes() {
    let dir = scratch("events");
    let (run, _) = fixture(&dir);
    let d = dashboard(&[run.to_str().unwrap()]);
    let mut tcp = std::net::TcpStream::connect(d.url.trim_start_matches("http://")).unwrap();
    tcp.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lines = BufReader::new(tcp).lines();
    let mut next_versions = || loop {
        let line = lines.next().expect("the stream stays open").expect("an event within 10 s");
        if let Some(data) = line.strip_prefix("data: ") {
            return data.to_string();
        }
    };
    let first = next_versions();
    let store = Store::open(&run).unwrap();
    let row = NewCandidate {
        cycle: 2,
        slot: 7,
        dataset: "fashion-mnist".into(),
        generator: "mutate".into(),
        attempt_verdicts: vec![Verdict::ParseError],
        ..NewCandidate::new(Role::Candidate, Verdict::ParseError)
    };
    let start = Instant::now();
    store.insert(&row, false).unwrap();
    let second = next_versions();
    assert_ne!(first, second);
    assert!(start.elapsed() < Duration::from_secs(5), "told within seconds");
    let (_, t) = get(&format!("{}/api/runs/0/candidates?verdict=parse_error", d.url));
    assert_eq!(t["total"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_runs_and_flags_are_clear_errors() {
    let dir = scratch("bad");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["dashboard", dir.join("nothing").to_str().unwrap(), "--port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nothing") && err.contains("not a run folder"), "{err}");
    assert!(!dir.join("nothing").exists(), "nothing is created");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nasc")).args(["dashboard"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_nasc")).args(["dashboard", "mysql://h/db"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("postgres://USER@HOST:PORT/DATABASE or sqlite:PATH"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_on_postgres_is_served_read_only() {
    let at = nasc_search::store::testing::fresh_postgres("dashboard");
    let store = Store::create_at(&at, "{\"cycles\": 1}", &[]).unwrap();
    let row = NewCandidate {
        cycle: 1,
        dataset: "mnist".into(),
        generator: "mutate".into(),
        program: Some(LENET.to_string()),
        attempt_verdicts: vec![Verdict::ShapeError],
        diagnostic: Some(HOSTILE.into()),
        ..NewCandidate::new(Role::Candidate, Verdict::ShapeError)
    };
    let id = store.insert(&row, false).unwrap();
    let d = dashboard(&[&at.url()]);
    let (_, runs) = get(&format!("{}/api/runs", d.url));
    assert_eq!((runs[0]["rows"].as_i64(), runs[0]["store"].as_str()), (Some(1), Some(at.shown().as_str())));
    let (_, c) = get(&format!("{}/api/runs/0/candidates/{id}", d.url));
    assert_eq!(c["candidate"]["diagnostic"], HOSTILE);
    // Its connection refuses writes: the store is opened read-only.
    let ro = Store::open_read_only(&at).unwrap();
    let e = ro.set_meta("state", "x").unwrap_err().0;
    assert!(e.contains("read-only"), "{e}");
}
