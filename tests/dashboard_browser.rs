//! `nasc dashboard` in a real browser: Debian's headless Chromium driven through ChromeDriver
//! (WebDriver) by fantoccini. The pages load without script errors, the candidates table
//! filters and sorts, a candidate page shows its diff and diagnostic and shows a hostile reply
//! as text, a chart's point opens its candidate, and a candidate stored while a page is open
//! appears in it. Each page is also captured at a desktop and a narrow width into
//! `target/dashboard-screenshots/` (PNG), to be looked at.
//!
//! Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian's `chromium` and
//! `chromium-driver`, which `scripts/test-deps` installs); nothing is downloaded.

#[path = "common/dashboard.rs"]
mod dashboard;

use dashboard::{dashboard, fixture, HOSTILE};
use fantoccini::{Client, ClientBuilder, Locator};
use nasc_delta::Verdict;
use nasc_search::store::{NewCandidate, Role, Store, Trained};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// ChromeDriver on a free port, stopped when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install Debian's chromium and chromium-driver (bash scripts/test-deps does)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver(child, port)
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1280,900"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("chromedriver starts a headless chromium")
}

/// Runs `script` in the page and returns its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until `script` (an expression) is truthy in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let start = Instant::now();
    loop {
        let v = js(c, &format!("return !!({script});")).await;
        if v == json!(true) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "waited 15 s for {what} ({script})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn no_script_errors(c: &Client, page: &str) {
    let errors = js(c, "return window.__nascErrors || ['the page script did not run'];").await;
    assert_eq!(errors, json!([]), "script errors on {page}");
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Captures the page at 1280×900 and 390×844 as NAME-desktop.png and NAME-narrow.png.
async fn capture(c: &Client, name: &str) {
    for (label, w, h) in [("desktop", 1280, 900), ("narrow", 390, 844)] {
        c.set_window_size(w, h).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(shots().join(format!("{name}-{label}.png")), png).unwrap();
    }
    c.set_window_size(1280, 900).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_real_browser() {
    let dir = std::env::temp_dir().join(format!("nasc-dash-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (run, ids) = fixture(&dir);
    let d = dashboard(&[run.to_str().unwrap()]);
    let driver = chromedriver();
    let c = browser(&driver).await;

    // The runs page.
    c.goto(&format!("{}/#/", d.url)).await.unwrap();
    until(&c, "the runs table", "document.querySelector('[data-role=runs] tbody tr')").await;
    assert_eq!(
        js(&c, "return document.querySelector('[data-role=runs] tbody td').textContent;").await,
        json!("fixture")
    );
    until(&c, "the live stream", "document.getElementById('live').textContent === 'live'").await;
    no_script_errors(&c, "the runs page").await;
    capture(&c, "runs").await;

    // The run page: a chart point opens its candidate.
    c.goto(&format!("{}/#/run/0", d.url)).await.unwrap();
    until(&c, "the scatter chart's points", "document.querySelector('[data-role=scatter] circle[data-id]')").await;
    no_script_errors(&c, "the run page").await;
    capture(&c, "run").await;
    let best = ids[4];
    c.find(Locator::Css(&format!("[data-role=scatter] circle[data-id='{best}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, "the candidate the point is", &format!("location.hash === '#/run/0/candidate/{best}'")).await;

    // The candidates table filters and sorts.
    c.goto(&format!("{}/#/run/0/candidates", d.url)).await.unwrap();
    until(&c, "the candidates table", "document.querySelectorAll('[data-role=candidates] tbody tr').length === 6")
        .await;
    no_script_errors(&c, "the candidates page").await;
    capture(&c, "candidates").await;
    c.find(Locator::Css("th[data-sort=accuracy]")).await.unwrap().click().await.unwrap();
    until(
        &c,
        "the table by accuracy",
        &format!("document.querySelector('[data-role=candidates] tbody tr').dataset.id === '{best}'"),
    )
    .await;
    let select = c.find(Locator::Css("select[name=verdict]")).await.unwrap();
    select.select_by_value("shape_error").await.unwrap();
    until(&c, "the shape errors alone", "document.querySelectorAll('[data-role=candidates] tbody tr').length === 1")
        .await;
    assert_eq!(
        js(&c, "return document.querySelector('[data-role=candidates] tbody tr').dataset.id;").await,
        json!(ids[3].to_string())
    );

    // A candidate: its diff, its diagnostic, and hostile text shown as text.
    c.goto(&format!("{}/#/run/0/candidate/{}", d.url, ids[3])).await.unwrap();
    until(&c, "the diagnostic", "document.querySelector('[data-role=diagnostic]')").await;
    let diag = js(&c, "return document.querySelector('[data-role=diagnostic]').textContent;").await;
    assert!(diag.as_str().unwrap().contains(HOSTILE), "the diagnostic as stored, as text: {diag}");
    let reply = js(&c, "return document.querySelector('[data-role=reply]').textContent;").await;
    assert!(reply.as_str().unwrap().contains(HOSTILE), "{reply}");
    assert_eq!(
        js(&c, "return window.__pwned === undefined && document.querySelectorAll('main script, main img').length;")
            .await,
        json!(0)
    );
    c.goto(&format!("{}/#/run/0/candidate/{}", d.url, ids[1])).await.unwrap();
    until(&c, "the diff", "document.querySelector('[data-role=diff] .ln.add')").await;
    let added = js(&c, "return document.querySelector('[data-role=diff] .ln.add').textContent;").await;
    assert_eq!(added, json!("+  conv(8, k=5)"));
    until(&c, "the shape table", "document.querySelector('[data-role=shapes] tbody tr')").await;
    until(&c, "the lineage", "document.querySelector('[data-role=lineage] a')").await;
    no_script_errors(&c, "a candidate page").await;
    assert_eq!(js(&c, "return window.__pwned === undefined;").await, json!(true), "nothing from the store ran");
    capture(&c, "candidate").await;

    // A candidate stored while the table is open appears in it.
    c.goto(&format!("{}/#/run/0/candidates?sort=id&order=desc", d.url)).await.unwrap();
    until(&c, "the table", "document.querySelectorAll('[data-role=candidates] tbody tr').length === 6").await;
    let store = Store::open(&run).unwrap();
    let row = NewCandidate {
        cycle: 2,
        slot: 9,
        dataset: "fashion-mnist".into(),
        generator: "mutate".into(),
        program: Some(dashboard::LENET.to_string()),
        attempt_verdicts: vec![Verdict::Ok],
        ..NewCandidate::new(Role::Candidate, Verdict::Ok)
    };
    let start = Instant::now();
    let id = store.insert(&row, true).unwrap();
    store.finish(id, &Trained { accuracy: Some(0.9), ..Trained::new(Verdict::Ok) }).unwrap();
    until(
        &c,
        "the new candidate",
        &format!("document.querySelector('[data-role=candidates] tbody tr').dataset.id === '{id}'"),
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(10));
    no_script_errors(&c, "the live table").await;
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
