//! `nasc dashboard`: one or more runs' stores, read-only, as a web application that follows
//! them live. The server is axum on tokio (the stack of `nasc serve`); it answers JSON under
//! `/api/` and one page (HTML, CSS and JavaScript compiled into the binary: no build step, no
//! CDN) that draws everything itself. Store reads run on blocking threads, one connection per
//! run; the report of a run is computed once per version of its rows.
//!
//! Every value from a store reaches the page as JSON and is put into the document as text
//! (`textContent`), never as markup: a reply holding `<script>` shows as those characters.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nasc_search::report;
use nasc_search::store::{Location, SortKey, Store, TableQuery};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAGE: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/app.css");

/// How the dashboard is served.
#[derive(Clone, Debug)]
pub struct Options {
    /// The runs, each by its label and store.
    pub runs: Vec<(String, Location)>,
    pub host: String,
    pub port: u16,
    /// When set, every route needs it: `Authorization: Bearer KEY`, or the cookie a visit to
    /// `/?key=KEY` sets.
    pub api_key: Option<String>,
    /// How often the stores are looked at for changes.
    pub poll: Duration,
}

/// One run as the server holds it: its store (one connection, used on blocking threads) and
/// its report, cached by the version of the rows it was built from.
struct Run {
    label: String,
    shown: String,
    store: Mutex<Store>,
    /// The report and the facets, and the version of the rows they were read from.
    report: Mutex<Option<(String, Value)>>,
}

struct App {
    runs: Vec<Run>,
    api_key: Option<String>,
    poll: Duration,
}

type Shared = Arc<App>;

/// An error answer: its status and message, as `{"error": …}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, [(header::CONTENT_TYPE, "application/json")], json!({"error": self.1}).to_string()).into_response()
    }
}

fn ok_json(v: Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Opens every run read-only; an error names the run that did not open.
fn open(opts: &Options) -> Result<App, String> {
    let mut runs = Vec::new();
    for (label, location) in &opts.runs {
        let store = Store::open_read_only(location)?;
        runs.push(Run {
            label: label.clone(),
            shown: location.shown(),
            store: Mutex::new(store),
            report: Mutex::new(None),
        });
    }
    Ok(App { runs, api_key: opts.api_key.clone(), poll: opts.poll })
}

/// Serves until SIGTERM or Ctrl-C. `ready` gets the address it listens on once it does.
pub fn serve(opts: &Options, ready: impl FnOnce(std::net::SocketAddr)) -> Result<(), String> {
    let app = Arc::new(open(opts)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nasc-dashboard")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
        ready(listener.local_addr().map_err(|e| e.to_string())?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot watch for signals: {e}"))?;
        // A signal ends the process's serving at once: the pages only read, and their event
        // streams never end by themselves, so there is nothing to wait for.
        tokio::select! {
            served = axum::serve(listener, router(app)) => served.map_err(|e| e.to_string()),
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// The application's routes.
fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .route("/api/runs", get(runs))
        .route("/api/runs/{run}/report", get(run_report))
        .route("/api/runs/{run}/candidates", get(candidates))
        .route("/api/runs/{run}/candidates/{id}", get(candidate))
        .route("/api/events", get(events))
        .fallback(|| async { Failure(StatusCode::NOT_FOUND, "no such page".into()) })
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn(headers))
        .with_state(app)
}

/// Headers every answer carries: no framing by other sites, no sniffing, and a content
/// policy that runs only this page's own script (so injected markup could not run, were any
/// ever injected).
async fn headers(request: Request, next: Next) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'",
        ),
    );
    r
}

/// With `--api-key`: a request needs the key as a bearer token or in the `nasc_key` cookie,
/// which a visit to `/?key=KEY` sets (HttpOnly, SameSite=Strict) before sending the page on
/// without the key in its address.
async fn guard(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else { return next.run(request).await };
    let same = |t: &[u8]| t.len() == key.len() && t.iter().zip(key.as_bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    let bearer = request.headers().get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("nasc_key="))
        .any(|c| same(c.as_bytes()));
    if bearer.is_some_and(same) || cookie {
        return next.run(request).await;
    }
    let given =
        request.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")).map(|v| v.to_string()));
    if request.uri().path() == "/" && given.as_deref().is_some_and(|g| same(g.as_bytes())) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SEE_OTHER;
        r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) = HeaderValue::from_str(&format!("nasc_key={key}; HttpOnly; SameSite=Strict; Path=/")) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    Failure(
        StatusCode::UNAUTHORIZED,
        "this dashboard needs its key: open /?key=KEY once, or send Authorization: Bearer KEY".into(),
    )
    .into_response()
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

/// Runs `f` on run `k`'s store, on a blocking thread.
async fn with_store<T: Send + 'static>(
    app: &Shared,
    k: usize,
    f: impl FnOnce(&Store) -> Result<T, String> + Send + 'static,
) -> Result<T, Failure> {
    if k >= app.runs.len() {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no run {k}: there are {}", app.runs.len())));
    }
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let store = app.runs[k].store.lock().unwrap_or_else(|p| p.into_inner());
        f(&store)
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// The runs: label, store, state, config, progress, workers.
async fn runs(State(app): State<Shared>) -> Response {
    let mut out = Vec::new();
    for k in 0..app.runs.len() {
        let (label, shown) = (app.runs[k].label.clone(), app.runs[k].shown.clone());
        let summary = with_store(&app, k, move |s| {
            let config: Value = s.meta("config")?.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or(Value::Null);
            let created: Option<f64> = s.meta("created_at")?.and_then(|c| c.parse().ok());
            let (total, _) = s.table(&TableQuery { limit: 0, ..TableQuery::default() })?;
            let unfinished = s.unfinished()?;
            let cycle = s.last_cycle()?;
            Ok(json!({
                "state": s.meta("state")?,
                "created_at": created,
                "model": s.meta("model")?,
                "adapter": s.meta("adapter_dir")?,
                "config": config,
                "rows": total,
                "unfinished": unfinished,
                "cycle": cycle,
                "workers": s.workers()?,
                "version": s.version()?,
            }))
        })
        .await;
        match summary {
            Ok(mut v) => {
                v["index"] = json!(k);
                v["label"] = json!(label);
                v["store"] = json!(shown);
                out.push(v);
            }
            Err(f) => return f.into_response(),
        }
    }
    ok_json(Value::Array(out))
}

fn run_index(s: &str) -> Result<usize, Failure> {
    s.parse().map_err(|_| Failure(StatusCode::NOT_FOUND, format!("no run {s:?}")))
}

/// A run's report (`nasc report --json`) and the values its candidates can be filtered by.
async fn run_report(State(app): State<Shared>, Path(run): Path<String>) -> Response {
    let k = match run_index(&run) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    let app2 = app.clone();
    let result = with_store(&app, k, move |s| {
        let version = s.version()?;
        let mut cached = app2.runs[k].report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, answer)) = cached.as_ref() {
            if *v == version {
                return Ok(answer.clone());
            }
        }
        let all = s.all()?;
        let r = serde_json::to_value(report::build(&all)).map_err(|e| e.to_string())?;
        let answer = json!({"version": version, "report": r, "facets": s.facets()?});
        *cached = Some((version, answer.clone()));
        Ok(answer)
    })
    .await;
    match result {
        Ok(v) => ok_json(v),
        Err(f) => f.into_response(),
    }
}

/// A page of the candidates table: `dataset`, `cycle`, `verdict`, `generator` filter; `sort`
/// (id, cycle, accuracy, params, macs, novelty) and `order` (asc, desc) order; `page` (from 1)
/// and `per_page` (1 to 1000) page.
async fn candidates(
    State(app): State<Shared>,
    Path(run): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let k = match run_index(&run) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    let bad = |m: String| Failure(StatusCode::BAD_REQUEST, m).into_response();
    let text = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
    let number = |name: &str, default: i64| -> Result<i64, String> {
        match q.get(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name} must be a whole number, not {v:?}")),
        }
    };
    let name = q.get("sort").map_or("id", String::as_str);
    let Some(&(_, sort)) = SortKey::ALL.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = SortKey::ALL.iter().map(|(n, _)| *n).collect();
        return bad(format!("sort must be one of {}, not {name:?}", names.join(", ")));
    };
    let descending = match q.get("order").map(String::as_str).unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        other => return bad(format!("order must be asc or desc, not {other:?}")),
    };
    let (page, per_page, cycle) =
        match (number("page", 1), number("per_page", 50), q.get("cycle").filter(|v| !v.is_empty())) {
            (Ok(p), Ok(n), cycle) if p >= 1 && (1..=1000).contains(&n) => {
                let cycle = match cycle.map(|c| c.parse::<i64>()) {
                    None => None,
                    Some(Ok(c)) => Some(c),
                    Some(Err(_)) => return bad("cycle must be a whole number".into()),
                };
                (p, n, cycle)
            }
            (Err(m), _, _) | (_, Err(m), _) => return bad(m),
            _ => return bad("page must be at least 1 and per_page from 1 to 1000".into()),
        };
    let query = TableQuery {
        dataset: text("dataset"),
        cycle,
        verdict: text("verdict"),
        generator: text("generator"),
        sort,
        descending,
        offset: (page - 1).saturating_mul(per_page),
        limit: per_page,
    };
    match with_store(&app, k, move |s| Ok(s.table(&query)?)).await {
        Ok((total, rows)) => ok_json(json!({"total": total, "page": page, "per_page": per_page, "rows": rows})),
        Err(f) => f.into_response(),
    }
}

/// Everything about one candidate: its row, its parent's program, the shape table of its
/// program, its lineage back to its baseline, its children.
async fn candidate(State(app): State<Shared>, Path((run, id)): Path<(String, String)>) -> Response {
    let k = match run_index(&run) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    let Ok(id) = id.parse::<i64>() else {
        return Failure(StatusCode::NOT_FOUND, format!("no candidate {id:?}")).into_response();
    };
    let result = with_store(&app, k, move |s| {
        let Some(detail) = s.detail(id)? else { return Ok(None) };
        let parent = match detail.candidate.parent_id {
            Some(p) => s.get(p)?,
            None => None,
        };
        // The lineage: parents back to the baseline (a stored chain is short; bounded anyway).
        let mut lineage = Vec::new();
        let mut next = detail.candidate.parent_id;
        while let Some(p) = next {
            if lineage.len() >= 1000 {
                break;
            }
            match s.get(p)? {
                Some(c) => {
                    next = c.parent_id;
                    lineage.push(json!({"id": c.id, "cycle": c.cycle, "accuracy": c.accuracy, "verdict": c.verdict, "role": c.role}));
                }
                None => break,
            }
        }
        let children = s.children(id)?;
        let table = detail.candidate.program.as_deref().map(|program| shapes(program, &detail.candidate.dataset));
        Ok(Some(json!({
            "candidate": detail,
            "parent_program": parent.and_then(|p| p.program),
            "lineage": lineage,
            "children": children,
            "shapes": table,
        })))
    })
    .await;
    match result {
        Ok(Some(v)) => ok_json(v),
        Ok(None) => Failure(StatusCode::NOT_FOUND, format!("run {k} has no candidate {id}")).into_response(),
        Err(f) => f.into_response(),
    }
}

/// The shape table of `program` under `dataset`'s binding, or its diagnostics as nasc renders
/// them.
fn shapes(program: &str, dataset: &str) -> Value {
    let Some(b) = nasc_lang::check::binding::dataset(dataset) else {
        return json!({"error": format!("unknown dataset {dataset}")});
    };
    match nasc_lang::check::check_source(program, b, &nasc_lang::check::binding::Budget::default()) {
        Ok(c) => json!({"rows": c.table_rows(program), "totals": c.totals(), "output": c.output().to_string()}),
        Err(diags) => json!({"error": nasc_lang::diag::render(&diags, "program.arch", program, false)}),
    }
}

/// Server-sent events: `versions` (each run's version) whenever one changes, and a comment
/// every 15 s so that proxies keep the stream open.
async fn events(State(app): State<Shared>) -> Response {
    let stream = futures_util::stream::unfold((app, String::new()), |(app, last)| async move {
        let mut waited = Duration::ZERO;
        loop {
            if !last.is_empty() {
                tokio::time::sleep(app.poll).await;
                waited += app.poll;
            }
            let mut versions = Vec::new();
            for k in 0..app.runs.len() {
                versions.push(with_store(&app, k, |s| Ok(s.version()?)).await.unwrap_or_default());
            }
            let now = json!(versions).to_string();
            if now != last {
                let chunk = format!("event: versions\ndata: {now}\n\n");
                return Some((Ok::<_, std::convert::Infallible>(chunk), (app, now)));
            }
            if waited >= Duration::from_secs(15) {
                return Some((Ok(": still here\n\n".to_string()), (app, last)));
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
