//! The run store: the config and every candidate of a run, claimed then finished, in one SQL
//! database — SQLite (`run.db` in the run folder, the default) or PostgreSQL (`--store
//! postgres://…`), with one schema and one set of statements ([`db`] hides the dialects).
//! Crash safety lives here: a candidate row is inserted once per (cycle, slot) and finished in
//! one transaction, so a killed run loses nothing finished.
//!
//! Training is handed out by leases: a worker claims a row (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL; SQLite's single writer on its own), renews the lease while it trains, and its
//! result is written only while it still holds it. A lease that is not renewed runs out and
//! the row goes back to the queue; a row whose lease ran out [`LeaseTerms::max_leases`] times is
//! finished as `crashed`. Times are the database's clock, which every worker shares.

pub mod db;

use db::{Db, Value};
use nasc_delta::Verdict;
use serde::Serialize;
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub const DB_FILE: &str = "run.db";
/// The file of a run folder whose store is not its `run.db`: it holds the store's URL.
pub const STORE_FILE: &str = "store";
pub const SCHEMA_VERSION: i64 = 3;
/// PostgreSQL's channel for "a candidate waits to be trained".
const WORK: &str = "nasc_work";
/// PostgreSQL's channel for "a candidate finished training".
const DONE: &str = "nasc_done";

/// What brings a store of an older schema version up to the next: `(from, SQL)`, in order.
/// A store is upgraded when opened, in one transaction per step.
const MIGRATIONS: &[(i64, &[&str])] = &[
    // 2: the applier's tolerances per candidate.
    (1, &["ALTER TABLE candidates ADD COLUMN tolerances TEXT;"]),
    // 3: training leases, who trained a candidate, and the workers' table.
    (
        2,
        &[
            "ALTER TABLE candidates ADD COLUMN lease_owner TEXT;
             ALTER TABLE candidates ADD COLUMN lease_until DOUBLE PRECISION;
             ALTER TABLE candidates ADD COLUMN leases INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE candidates ADD COLUMN trained_by TEXT;
             CREATE INDEX IF NOT EXISTS candidates_queue ON candidates (status, cycle, id);
             CREATE INDEX IF NOT EXISTS candidates_parent ON candidates (parent_id);",
            LATER_TABLES,
        ],
    ),
];

/// Tables that came after the first schema: a new store and the migration that added them
/// both create them.
const LATER_TABLES: &str = "
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    device TEXT NOT NULL,
    -- 'idle', 'training' or 'stopped'
    state TEXT NOT NULL,
    trained INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id BIGINT PRIMARY KEY,
    -- baselines have cycle 0; candidates 1 .. cycles
    cycle INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    -- 'baseline' or 'candidate'
    role TEXT NOT NULL,
    -- 'claimed' (judged, training pending) or 'finished'
    status TEXT NOT NULL,
    dataset TEXT NOT NULL,
    baseline TEXT NOT NULL,
    parent_id BIGINT,
    generator TEXT NOT NULL,
    adapter TEXT,
    prompt TEXT,
    reply TEXT,
    extracted TEXT,
    diff TEXT,
    program TEXT,
    attempts INTEGER NOT NULL,
    attempt_verdicts TEXT NOT NULL,
    -- the front half's verdict, then the training verdict for candidates that trained
    front_verdict TEXT NOT NULL,
    train_verdict TEXT,
    verdict TEXT NOT NULL,
    diagnostic TEXT,
    novelty TEXT,
    similarity DOUBLE PRECISION,
    hash TEXT,
    params BIGINT,
    macs BIGINT,
    accuracy DOUBLE PRECISION,
    train_loss DOUBLE PRECISION,
    test_loss DOUBLE PRECISION,
    images_per_s DOUBLE PRECISION,
    train_s DOUBLE PRECISION,
    train_result TEXT,
    reply_lines INTEGER,
    reply_tokens INTEGER,
    diff_lines INTEGER,
    generate_ns BIGINT NOT NULL,
    extract_ns BIGINT NOT NULL,
    apply_ns BIGINT NOT NULL,
    parse_ns BIGINT NOT NULL,
    check_ns BIGINT NOT NULL,
    novelty_ns BIGINT NOT NULL,
    train_ns BIGINT,
    claimed_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    -- the applier's tolerances (a JSON list of their kinds) for a reply that applied
    tolerances TEXT,
    -- the worker that holds the training lease of a claimed row, and until when (database clock)
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    -- how many leases were taken on the row
    leases INTEGER NOT NULL DEFAULT 0,
    -- the worker whose result was recorded
    trained_by TEXT,
    UNIQUE (cycle, slot)
);
CREATE INDEX IF NOT EXISTS candidates_queue ON candidates (status, cycle, id);
CREATE INDEX IF NOT EXISTS candidates_parent ON candidates (parent_id);
CREATE TABLE IF NOT EXISTS reevals (
    candidate_id BIGINT NOT NULL,
    epochs INTEGER NOT NULL,
    accuracy DOUBLE PRECISION,
    verdict TEXT NOT NULL,
    train_s DOUBLE PRECISION,
    PRIMARY KEY (candidate_id, epochs)
);
";

/// The schema's SQL for `db`: PostgreSQL's integers are all 64-bit, so that every integer
/// column reads back as one type on both engines.
fn dialect(db: &Db, sql: &str) -> String {
    if db.is_postgres() {
        sql.replace("INTEGER", "BIGINT")
    } else {
        sql.to_string()
    }
}

/// Where a run's store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host:port/database?options`); one run per
    /// database (or per schema, through `options=-csearch_path%3DNAME`).
    Postgres(String),
}

impl Location {
    /// A store URL: `postgres://…` or `postgresql://…`, or `sqlite:PATH`.
    pub fn parse(url: &str) -> Result<Location, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<postgres::Config>()
                .map_err(|e| StoreError(format!("{}: not a PostgreSQL URL: {e}", mask(url))))?;
            Ok(Location::Postgres(url.to_string()))
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError("sqlite: names no file; write sqlite:PATH".into()));
            }
            Ok(Location::Sqlite(PathBuf::from(path)))
        } else {
            Err(StoreError(format!("{}: a store is postgres://USER@HOST:PORT/DATABASE or sqlite:PATH", mask(url))))
        }
    }

    /// The store of the run folder `dir`: the URL in `dir/store` when there is one, else
    /// `dir/run.db`.
    pub fn of_run(dir: &Path) -> Result<Location, StoreError> {
        let named = dir.join(STORE_FILE);
        match std::fs::read_to_string(&named) {
            Ok(text) => Location::parse(text.trim()).map_err(|e| StoreError(format!("{}: {}", named.display(), e.0))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Location::Sqlite(dir.join(DB_FILE))),
            Err(e) => Err(StoreError(format!("cannot read {}: {e}", named.display()))),
        }
    }

    /// What a command is given as a run: a store URL, or a run folder.
    pub fn resolve(arg: &str) -> Result<Location, StoreError> {
        if arg.contains("://") || arg.starts_with("sqlite:") {
            Location::parse(arg)
        } else {
            Location::of_run(Path::new(arg))
        }
    }

    /// The location for messages, without a password.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => mask(url),
        }
    }

    /// The URL, as `nasc worker --store` takes it.
    pub fn url(&self) -> String {
        match self {
            Location::Sqlite(p) => format!("sqlite:{}", p.display()),
            Location::Postgres(url) => url.clone(),
        }
    }
}

/// `url` with its password (`user:password@`, `password=`) replaced by `***`.
fn mask(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme) = out.find("://") {
        let rest = &out[scheme + 3..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                out.replace_range(scheme + 3 + colon + 1..scheme + 3 + at, "***");
            }
        }
    }
    if let Some(p) = out.find("password=") {
        let start = p + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// What a stored row is: a baseline (cycle 0) or a generated candidate. Stored as
/// [`Role::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Baseline,
    Candidate,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Baseline, Role::Candidate];

    /// The role's name, as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Baseline => "baseline",
            Role::Candidate => "candidate",
        }
    }
}

/// Where a stored row stands: judged and waiting for training (`claimed`), or done
/// (`finished`). Stored as [`Status::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Claimed,
    Finished,
}

impl Status {
    pub const ALL: [Status; 2] = [Status::Claimed, Status::Finished];

    /// The status's name, as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Claimed => "claimed",
            Status::Finished => "finished",
        }
    }
}

/// A name that is none of a kind's (a role, a status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
    pub expected: Vec<&'static str>,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}: expected one of {}", self.kind, self.name, self.expected.join(", "))
    }
}

impl std::error::Error for UnknownName {}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Role, UnknownName> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownName {
            kind: "role",
            name: s.to_string(),
            expected: Role::ALL.iter().map(|r| r.as_str()).collect(),
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Status {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Status, UnknownName> {
        Status::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownName {
            kind: "status",
            name: s.to_string(),
            expected: Status::ALL.iter().map(|r| r.as_str()).collect(),
        })
    }
}

/// A candidate as judged by the front half, ready to insert. [`NewCandidate::new`] gives one
/// with the role and verdict set and every other field empty, for `..` updates.
#[derive(Clone, Debug, Serialize)]
pub struct NewCandidate {
    pub cycle: i64,
    pub slot: i64,
    pub role: Role,
    pub dataset: String,
    pub baseline: String,
    pub parent_id: Option<i64>,
    pub generator: String,
    pub adapter: Option<String>,
    pub prompt: Option<String>,
    pub reply: Option<String>,
    pub extracted: Option<String>,
    pub diff: Option<String>,
    pub program: Option<String>,
    pub attempts: i64,
    pub attempt_verdicts: Vec<Verdict>,
    pub front_verdict: Verdict,
    pub diagnostic: Option<String>,
    pub novelty: Option<String>,
    pub similarity: Option<f64>,
    pub hash: Option<String>,
    pub params: Option<i64>,
    pub macs: Option<i64>,
    pub reply_lines: Option<i64>,
    pub reply_tokens: Option<i64>,
    pub diff_lines: Option<i64>,
    pub generate_ns: i64,
    pub extract_ns: i64,
    pub apply_ns: i64,
    pub parse_ns: i64,
    pub check_ns: i64,
    pub novelty_ns: i64,
    /// The applier's tolerances (their kinds), for a reply that applied.
    pub tolerances: Vec<String>,
}

impl NewCandidate {
    /// A `role` row with the front half's verdict `front_verdict`, everything else zero or
    /// `None`.
    pub fn new(role: Role, front_verdict: Verdict) -> NewCandidate {
        NewCandidate {
            cycle: 0,
            slot: 0,
            role,
            dataset: String::new(),
            baseline: String::new(),
            parent_id: None,
            generator: String::new(),
            adapter: None,
            prompt: None,
            reply: None,
            extracted: None,
            diff: None,
            program: None,
            attempts: 0,
            attempt_verdicts: Vec::new(),
            front_verdict,
            diagnostic: None,
            novelty: None,
            similarity: None,
            hash: None,
            params: None,
            macs: None,
            reply_lines: None,
            reply_tokens: None,
            diff_lines: None,
            generate_ns: 0,
            extract_ns: 0,
            apply_ns: 0,
            parse_ns: 0,
            check_ns: 0,
            novelty_ns: 0,
            tolerances: Vec::new(),
        }
    }
}

/// What training adds to a claimed candidate. [`Trained::new`] gives one with the verdict set
/// and every other field empty, for `..` updates.
#[derive(Clone, Debug)]
pub struct Trained {
    /// One of [`Verdict::TRAINING`].
    pub verdict: Verdict,
    pub message: String,
    pub accuracy: Option<f64>,
    pub train_loss: Option<f64>,
    pub test_loss: Option<f64>,
    pub images_per_s: Option<f64>,
    pub train_s: Option<f64>,
    pub result_json: String,
    pub train_ns: i64,
}

impl Trained {
    pub fn new(verdict: Verdict) -> Trained {
        Trained {
            verdict,
            message: String::new(),
            accuracy: None,
            train_loss: None,
            test_loss: None,
            images_per_s: None,
            train_s: None,
            result_json: String::new(),
            train_ns: 0,
        }
    }
}

/// A stored candidate, the columns reports and the driver read.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub id: i64,
    pub cycle: i64,
    pub slot: i64,
    pub role: Role,
    pub status: Status,
    pub dataset: String,
    pub baseline: String,
    pub parent_id: Option<i64>,
    pub generator: String,
    pub adapter: Option<String>,
    pub program: Option<String>,
    pub diff: Option<String>,
    pub prompt: Option<String>,
    pub attempts: i64,
    /// The verdict of each attempt, in order (the last is `front_verdict`).
    pub attempt_verdicts: Vec<Verdict>,
    pub front_verdict: Verdict,
    /// The training verdict once a candidate judged `ok` trained, else `front_verdict`.
    pub verdict: Verdict,
    pub similarity: Option<f64>,
    pub hash: Option<String>,
    pub params: Option<i64>,
    pub macs: Option<i64>,
    pub accuracy: Option<f64>,
    pub reply_lines: Option<i64>,
    pub reply_tokens: Option<i64>,
    pub train_s: Option<f64>,
    pub finished_at: Option<f64>,
    /// The applier's tolerances (their kinds) for a reply that applied; none when it applied
    /// strictly, or in a store written before they were kept.
    pub tolerances: Vec<String>,
    /// Training leases taken on it (more than one: a worker was lost while training it).
    pub leases: i64,
    /// The worker whose training result was recorded.
    pub trained_by: Option<String>,
}

const CANDIDATE_COLUMNS: [&str; 29] = [
    "id",
    "cycle",
    "slot",
    "role",
    "status",
    "dataset",
    "baseline",
    "parent_id",
    "generator",
    "adapter",
    "program",
    "diff",
    "prompt",
    "front_verdict",
    "verdict",
    "similarity",
    "hash",
    "params",
    "macs",
    "accuracy",
    "reply_lines",
    "reply_tokens",
    "train_s",
    "finished_at",
    "attempts",
    "attempt_verdicts",
    "tolerances",
    "leases",
    "trained_by",
];

/// One row being read into a [`Candidate`]: typed columns, with errors that name the
/// candidate, the column and what it holds.
struct Fields<'a> {
    row: &'a [Value],
    id: i64,
}

impl Fields<'_> {
    fn bad(&self, i: usize, what: impl fmt::Display) -> String {
        format!("candidate {}: column {}: {what}", self.id, CANDIDATE_COLUMNS[i])
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, String> {
        match &self.row[i] {
            Value::Null => Ok(None),
            Value::Integer(v) => Ok(Some(*v)),
            other => Err(self.bad(i, format!("expected an integer, found {other:?}"))),
        }
    }

    fn opt_real(&self, i: usize) -> Result<Option<f64>, String> {
        match &self.row[i] {
            Value::Null => Ok(None),
            Value::Real(v) => Ok(Some(*v)),
            Value::Integer(v) => Ok(Some(*v as f64)),
            other => Err(self.bad(i, format!("expected a number, found {other:?}"))),
        }
    }

    /// Column `i`, an integer of at least `low` when present: counts, sizes and cycles.
    fn opt_count(&self, i: usize, low: i64) -> Result<Option<i64>, String> {
        match self.opt_int(i)? {
            Some(v) if v < low => Err(self.bad(i, format!("{v} is below {low}"))),
            v => Ok(v),
        }
    }

    fn count(&self, i: usize, low: i64) -> Result<i64, String> {
        self.opt_count(i, low)?.ok_or_else(|| self.bad(i, "expected an integer, found NULL"))
    }

    /// Column `i`, a finite number within `range` when present.
    fn opt_real_in(&self, i: usize, range: std::ops::RangeInclusive<f64>) -> Result<Option<f64>, String> {
        match self.opt_real(i)? {
            Some(v) if !range.contains(&v) => {
                Err(self.bad(i, format!("{v} is outside {}..={}", range.start(), range.end())))
            }
            v => Ok(v),
        }
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, String> {
        match &self.row[i] {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(self.bad(i, format!("expected text, found {other:?}"))),
        }
    }

    fn text(&self, i: usize) -> Result<String, String> {
        self.opt_text(i)?.ok_or_else(|| self.bad(i, "expected text, found NULL"))
    }

    /// Column `i`, a name of one of `T`'s values (a role, a status, a verdict).
    fn named<T: FromStr>(&self, i: usize) -> Result<T, String>
    where
        T::Err: fmt::Display,
    {
        self.text(i)?.parse().map_err(|e| self.bad(i, e))
    }

    /// Column `i`, a JSON list of verdict names.
    fn verdicts(&self, i: usize) -> Result<Vec<Verdict>, String> {
        let names: Vec<String> = serde_json::from_str(&self.text(i)?)
            .map_err(|e| self.bad(i, format!("not a JSON list of verdicts: {e}")))?;
        names.iter().map(|n| n.parse().map_err(|e| self.bad(i, e))).collect()
    }
}

fn candidate(row: &[Value]) -> Result<Candidate, String> {
    let id = match row.first() {
        Some(Value::Integer(id)) => *id,
        other => return Err(format!("a candidate row's id is {other:?}")),
    };
    let f = Fields { row, id };
    Ok(Candidate {
        id,
        cycle: f.count(1, 0)?,
        slot: f.count(2, 0)?,
        role: f.named(3)?,
        status: f.named(4)?,
        dataset: f.text(5)?,
        baseline: f.text(6)?,
        parent_id: f.opt_int(7)?,
        generator: f.text(8)?,
        adapter: f.opt_text(9)?,
        program: f.opt_text(10)?,
        diff: f.opt_text(11)?,
        prompt: f.opt_text(12)?,
        front_verdict: f.named(13)?,
        verdict: f.named(14)?,
        similarity: f.opt_real_in(15, 0.0..=1.0)?,
        hash: f.opt_text(16)?,
        params: f.opt_count(17, 0)?,
        macs: f.opt_count(18, 0)?,
        accuracy: f.opt_real_in(19, 0.0..=1.0)?,
        reply_lines: f.opt_count(20, 0)?,
        reply_tokens: f.opt_count(21, 0)?,
        train_s: f.opt_real_in(22, 0.0..=f64::MAX)?,
        finished_at: f.opt_real_in(23, 0.0..=f64::MAX)?,
        attempts: f.count(24, 0)?,
        attempt_verdicts: f.verdicts(25)?,
        tolerances: match f.opt_text(26)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| f.bad(26, e))?,
            None => Vec::new(),
        },
        leases: f.count(27, 0)?,
        trained_by: f.opt_text(28)?,
    })
}

/// An error of the store, with the store's location.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for String {
    fn from(e: StoreError) -> String {
        e.0
    }
}

/// How long a training lease lasts and how often it may be lost.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTerms {
    /// A lease runs this long past its last renewal (heartbeat interval plus grace).
    pub lease_s: f64,
    /// A row whose lease ran out this many times is finished as `crashed`, not handed out again.
    pub max_leases: i64,
}

/// One cycle's rows as the driver waits on them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows of the cycle inserted so far.
    pub rows: i64,
    /// Rows finished (trained, or judged and never to train).
    pub finished: i64,
    /// Rows that were to train (finished or not).
    pub to_train: i64,
    /// Rows still waiting for, or in, training.
    pub claimed: i64,
}

/// A worker as the `workers` table shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WorkerRow {
    pub name: String,
    pub host: String,
    pub device: String,
    pub state: String,
    pub trained: i64,
    pub started_at: f64,
    pub seen_at: f64,
}

pub struct Store {
    db: RefCell<Db>,
    location: Location,
    shown: String,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn text(v: impl Into<String>) -> Value {
    Value::Text(v.into())
}

fn opt_text(v: Option<impl Into<String>>) -> Value {
    v.map_or(Value::Null, |v| Value::Text(v.into()))
}

fn int(v: i64) -> Value {
    Value::Integer(v)
}

fn opt_int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::Integer)
}

fn real(v: f64) -> Value {
    Value::Real(v)
}

fn opt_real(v: Option<f64>) -> Value {
    v.map_or(Value::Null, Value::Real)
}

/// A column read as text; `None` for NULL or a value of another kind.
fn as_text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::Text(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A column read as an integer; `None` for NULL or a value of another kind.
fn as_int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Integer(n)) => Some(*n),
        _ => None,
    }
}

/// A column read as a number (an integer counts); `None` for NULL or text.
fn as_real(v: Option<&Value>) -> Option<f64> {
    match v {
        Some(Value::Real(x)) => Some(*x),
        Some(Value::Integer(n)) => Some(*n as f64),
        _ => None,
    }
}

/// A count or sum from an aggregate row (NULL over no rows).
fn count(v: Option<&Value>) -> i64 {
    as_int(v).or_else(|| as_real(v).map(|x| x as i64)).unwrap_or(0)
}

/// The owner names of leases taken by a driver's own training threads: a new driver of the
/// run hands them back at once, since their holder is gone.
pub const LOCAL_OWNER_PREFIX: &str = "local:";

impl Store {
    /// Creates the run folder's SQLite database (see [`Store::create_at`]). Refuses a folder
    /// that already holds one.
    pub fn create(dir: &Path, config_json: &str, meta: &[(&str, &str)]) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        Store::create_at(&Location::Sqlite(dir.join(DB_FILE)), config_json, meta)
    }

    /// Creates a run's store with its config and `meta` entries, in one transaction: a process
    /// killed while creating leaves no run, and the next `create` starts over. Refuses a store
    /// that already holds a run.
    pub fn create_at(location: &Location, config_json: &str, meta: &[(&str, &str)]) -> Result<Store, StoreError> {
        let shown = location.shown();
        if let Location::Sqlite(path) = location {
            if path.exists() {
                if Store::interrupted(path) {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                } else {
                    return Err(StoreError(format!("{shown} already holds a run")));
                }
            }
        }
        let store = Store::connect(location)?;
        if let Location::Postgres(_) = location {
            if store.has_meta_table()? {
                return Err(StoreError(format!("{shown} already holds a run")));
            }
        }
        let version = SCHEMA_VERSION.to_string();
        let created = now().to_string();
        let entries = [("schema_version", version.as_str()), ("config", config_json), ("created_at", created.as_str())];
        store
            .db
            .borrow_mut()
            .transaction(|db| {
                for part in [SCHEMA, LATER_TABLES] {
                    let sql = dialect(db, part);
                    db.batch(&sql)?;
                }
                for (key, value) in entries.iter().chain(meta) {
                    db.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", &[text(*key), text(*value)])?;
                }
                Ok(())
            })
            .map_err(|e| StoreError(format!("{shown}: {e}")))?;
        Ok(store)
    }

    /// Whether the folder `dir` holds a run whose creation committed: a named store, or a
    /// `run.db` that is not an interrupted creation. A folder that fails this may be started
    /// afresh with [`Store::create`], which clears what an interrupted creation left.
    pub fn holds_run(dir: &Path) -> bool {
        let db = dir.join(DB_FILE);
        dir.join(STORE_FILE).is_file() || (db.is_file() && !Store::interrupted(&db))
    }

    /// Whether the SQLite database at `path` is a creation that never committed (no schema
    /// version).
    fn interrupted(path: &Path) -> bool {
        let Ok(conn) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return false;
        };
        let version: Result<String, _> =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0));
        matches!(version, Err(rusqlite::Error::QueryReturnedNoRows))
            || matches!(&version, Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table"))
    }

    /// Refuses a PostgreSQL database that holds no run (SQLite's file is checked before it is
    /// opened).
    fn holds_a_run(&self) -> Result<(), StoreError> {
        if self.is_postgres() && !self.has_meta_table()? {
            return Err(StoreError(format!(
                "{} holds no nasc run; start one with `nasc search --config FILE --store URL`",
                self.shown
            )));
        }
        Ok(())
    }

    fn has_meta_table(&self) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() \
                   AND table_name = 'meta'";
        Ok(self.scalar(sql, &[])? > 0)
    }

    /// Refuses a store whose schema version is not this nasc's; `hint` says what to do.
    fn current_schema(&self, hint: &str) -> Result<(), StoreError> {
        let version = self.meta("schema_version")?;
        if version.as_deref() == Some(&SCHEMA_VERSION.to_string()) {
            return Ok(());
        }
        Err(StoreError(format!(
            "{} has schema version {}, and this nasc reads version {SCHEMA_VERSION}{hint}",
            self.shown,
            version.unwrap_or_else(|| "none".into())
        )))
    }

    /// Opens the SQLite database of an existing run folder.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        if !dir.join(DB_FILE).is_file() && !dir.join(STORE_FILE).is_file() {
            return Err(StoreError(format!("{} is not a run folder: it has no {DB_FILE}", dir.display())));
        }
        Store::open_at(&Location::of_run(dir)?)
    }

    /// Opens an existing run's store, upgrading an older schema in place.
    pub fn open_at(location: &Location) -> Result<Store, StoreError> {
        let shown = location.shown();
        match location {
            Location::Sqlite(path) if !path.is_file() => {
                return Err(StoreError(match path.parent() {
                    Some(dir) if path.file_name().is_some_and(|n| n == DB_FILE) => {
                        format!("{} is not a run folder: it has no {DB_FILE}", dir.display())
                    }
                    _ => format!("{shown} does not exist: no run is stored there"),
                }));
            }
            Location::Sqlite(path) if Store::interrupted(path) => {
                let start = match path.parent() {
                    Some(dir) if path.file_name().is_some_and(|n| n == DB_FILE) => {
                        format!("nasc search --config FILE --out {}", dir.display())
                    }
                    _ => format!("nasc search --config FILE --store {shown}"),
                };
                return Err(StoreError(format!(
                    "{shown}: the run's creation was interrupted before it committed, so it holds no run; \
                     start it again with `{start}`"
                )));
            }
            _ => {}
        }
        let store = Store::connect(location)?;
        store.holds_a_run()?;
        let mut version = store.meta("schema_version")?;
        while let Some(&(from, parts)) =
            MIGRATIONS.iter().find(|(from, _)| version.as_deref() == Some(from.to_string().as_str()))
        {
            let next = from + 1;
            store
                .db
                .borrow_mut()
                .transaction(|db| {
                    for part in parts {
                        let sql = dialect(db, part);
                        db.batch(&sql)?;
                    }
                    db.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", &[text(next.to_string())])
                        .map(|_| ())
                })
                .map_err(|e| StoreError(format!("{shown}: upgrading to schema version {next}: {e}")))?;
            version = Some(next.to_string());
        }
        store.current_schema("")?;
        Ok(store)
    }

    /// A second connection to the same store (for another thread).
    pub fn reopen(&self) -> Result<Store, StoreError> {
        Store::connect(&self.location)
    }

    fn connect(location: &Location) -> Result<Store, StoreError> {
        let shown = location.shown();
        let err = |e: String| StoreError(format!("{shown}: {e}"));
        let db = match location {
            Location::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).map_err(|e| err(e.to_string()))?;
                // WAL: readers (reports, tests, workers) never block the writer; a commit is
                // durable at once.
                conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| err(e.to_string()))?;
                conn.pragma_update(None, "synchronous", "FULL").map_err(|e| err(e.to_string()))?;
                conn.busy_timeout(Duration::from_secs(30)).map_err(|e| err(e.to_string()))?;
                Db::Sqlite(conn)
            }
            Location::Postgres(url) => {
                let mut config: postgres::Config =
                    url.parse().map_err(|e: postgres::Error| err(format!("not a PostgreSQL URL: {e}")))?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(Duration::from_secs(10));
                }
                if config.get_application_name().is_none() {
                    config.application_name("nasc");
                }
                let client = config.connect(postgres::NoTls).map_err(|e| err(db::pg_error(&e)))?;
                Db::Postgres(Box::new(client))
            }
        };
        Ok(Store { db: RefCell::new(db), location: location.clone(), shown })
    }

    fn err(&self, e: String) -> StoreError {
        StoreError(format!("{}: {e}", self.shown))
    }

    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Vec<Value>>, StoreError> {
        self.db.borrow_mut().query(sql, args).map_err(|e| self.err(e))
    }

    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        self.db.borrow_mut().execute(sql, args).map_err(|e| self.err(e))
    }

    /// The first column of the first row of a query that counts or sums (0 over no rows).
    fn scalar(&self, sql: &str, args: &[Value]) -> Result<i64, StoreError> {
        Ok(count(self.query(sql, args)?.first().and_then(|r| r.first())))
    }

    fn transaction<T>(&self, f: impl FnOnce(&mut Db) -> Result<T, String>) -> Result<T, StoreError> {
        self.db.borrow_mut().transaction(f).map_err(|e| self.err(e))
    }

    /// Runs one SQL statement on the store as it is, for tests that damage or age a store.
    #[doc(hidden)]
    pub fn execute_raw(&self, sql: &str) -> Result<u64, StoreError> {
        self.execute(sql, &[])
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The store's location for messages (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.location, Location::Postgres(_))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self.query("SELECT value FROM meta WHERE key = ?1", &[text(key)])?;
        Ok(as_text(rows.first().and_then(|r| r.first())))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[text(key), text(value)],
        )
        .map(|_| ())
    }

    /// Takes the run's driver lock for as long as this connection lives (PostgreSQL: a session
    /// advisory lock, which the server lets go when the connection ends, however the process
    /// ends). SQLite runs are locked by their folder ([`crate::run::RunLock`]); this is a no-op
    /// there.
    pub fn lock_driver(&self) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        if self.scalar("SELECT pg_try_advisory_lock(1851880291, hashtext(current_schema()))", &[])? == 1 {
            return Ok(());
        }
        let holder = self
            .query(
                "SELECT a.client_addr::text, a.application_name, a.backend_start::text FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = 1851880291 \
                 AND l.granted LIMIT 1",
                &[],
            )
            .ok()
            .and_then(|r| r.into_iter().next())
            .map(|r| {
                r.iter().map(|v| as_text(Some(v)).unwrap_or_else(|| "local".into())).collect::<Vec<_>>().join(", ")
            })
            .unwrap_or_default();
        Err(StoreError(format!(
            "{} is being driven by another process (connected from {holder}); wait for it to end, or stop it first",
            self.shown
        )))
    }

    /// Inserts a judged candidate: `claimed` when it is to train, else `finished` at once.
    /// Returns its id. A (cycle, slot) is inserted once; a second insert is an error. Workers
    /// listening for work are told.
    pub fn insert(&self, c: &NewCandidate, to_train: bool) -> Result<i64, StoreError> {
        let t = now();
        let (status, finished_at) = if to_train { (Status::Claimed, None) } else { (Status::Finished, Some(t)) };
        let attempt_verdicts = serde_json::to_string(&c.attempt_verdicts).expect("verdicts serialise");
        let tolerances = serde_json::to_string(&c.tolerances).expect("names serialise");
        self.transaction(|db| {
            let rows = db.query("SELECT COALESCE(MAX(id), 0) + 1 FROM candidates", &[])?;
            let id = count(rows.first().and_then(|r| r.first()));
            db.execute(
                "INSERT INTO candidates (id, cycle, slot, role, status, dataset, baseline, parent_id, generator, adapter, \
                 prompt, reply, extracted, diff, program, attempts, attempt_verdicts, front_verdict, verdict, diagnostic, \
                 novelty, similarity, hash, params, macs, reply_lines, reply_tokens, diff_lines, generate_ns, extract_ns, \
                 apply_ns, parse_ns, check_ns, novelty_ns, claimed_at, finished_at, tolerances) VALUES (?1, ?2, ?3, ?4, \
                 ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, \
                 ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36)",
                &[
                    int(id),
                    int(c.cycle),
                    int(c.slot),
                    text(c.role.as_str()),
                    text(status.as_str()),
                    text(c.dataset.as_str()),
                    text(c.baseline.as_str()),
                    opt_int(c.parent_id),
                    text(c.generator.as_str()),
                    opt_text(c.adapter.as_deref()),
                    opt_text(c.prompt.as_deref()),
                    opt_text(c.reply.as_deref()),
                    opt_text(c.extracted.as_deref()),
                    opt_text(c.diff.as_deref()),
                    opt_text(c.program.as_deref()),
                    int(c.attempts),
                    text(attempt_verdicts.as_str()),
                    text(c.front_verdict.as_str()),
                    opt_text(c.diagnostic.as_deref()),
                    opt_text(c.novelty.as_deref()),
                    opt_real(c.similarity),
                    opt_text(c.hash.as_deref()),
                    opt_int(c.params),
                    opt_int(c.macs),
                    opt_int(c.reply_lines),
                    opt_int(c.reply_tokens),
                    opt_int(c.diff_lines),
                    int(c.generate_ns),
                    int(c.extract_ns),
                    int(c.apply_ns),
                    int(c.parse_ns),
                    int(c.check_ns),
                    int(c.novelty_ns),
                    real(t),
                    opt_real(finished_at),
                    text(tolerances.as_str()),
                ],
            )?;
            if to_train {
                db.notify(WORK)?;
            }
            Ok(id)
        })
    }

    /// The assignments of a training result, `?1` the id and `?2..=?10` its values.
    const TRAINED_SET: &'static str = "train_verdict = ?2, verdict = ?2, \
         diagnostic = CASE WHEN ?3 = '' THEN diagnostic ELSE ?3 END, accuracy = ?4, train_loss = ?5, \
         test_loss = ?6, images_per_s = ?7, train_s = ?8, train_result = ?9, train_ns = ?10";

    fn trained_args(id: i64, t: &Trained) -> Vec<Value> {
        vec![
            int(id),
            text(t.verdict.as_str()),
            text(t.message.as_str()),
            opt_real(t.accuracy),
            opt_real(t.train_loss),
            opt_real(t.test_loss),
            opt_real(t.images_per_s),
            opt_real(t.train_s),
            text(t.result_json.as_str()),
            int(t.train_ns),
        ]
    }

    /// Records a claimed candidate's training and marks it finished, in one transaction,
    /// whoever holds its lease. A candidate already finished is left as it is (false).
    pub fn finish(&self, id: i64, t: &Trained) -> Result<bool, StoreError> {
        self.finish_where(id, t, None)
    }

    /// Records the training of `owner`, which leased the candidate: only while it still holds
    /// the lease (false otherwise: the lease ran out and the row went to another worker, or was
    /// given up), so a result is never counted twice.
    pub fn finish_leased(&self, id: i64, owner: &str, t: &Trained) -> Result<bool, StoreError> {
        self.finish_where(id, t, Some(owner))
    }

    fn finish_where(&self, id: i64, t: &Trained, owner: Option<&str>) -> Result<bool, StoreError> {
        let mut args = Store::trained_args(id, t);
        args.extend([text(Status::Finished.as_str()), text(Status::Claimed.as_str()), opt_text(owner)]);
        self.transaction(|db| {
            let sql = format!(
                "UPDATE candidates SET status = ?11, {}, finished_at = {}, trained_by = ?13, lease_owner = NULL, \
                 lease_until = NULL WHERE id = ?1 AND status = ?12{}",
                Store::TRAINED_SET,
                db.now_sql(),
                if owner.is_some() { " AND lease_owner = ?13" } else { "" }
            );
            let n = db.execute(&sql, &args)?;
            if n == 1 {
                db.notify(DONE)?;
            }
            Ok(n == 1)
        })
    }

    /// Leases the next claimed candidate no live lease holds (lowest cycle, then id) to
    /// `owner`, of one of `datasets` when given. First finishes as `crashed` the rows whose
    /// lease ran out `terms.max_leases` times. None when nothing is waiting.
    pub fn claim(
        &self,
        owner: &str,
        terms: &LeaseTerms,
        datasets: Option<&[String]>,
    ) -> Result<Option<Candidate>, StoreError> {
        let id = self.transaction(|db| {
            let now = db.now_sql();
            let given_up = db.execute(
                &format!(
                    "UPDATE candidates SET status = ?1, train_verdict = ?2, verdict = ?2, diagnostic = \
                     'its training lease ran out ' || leases || ' times (each time its worker stopped renewing it); \
                     it is not handed out again', finished_at = {now}, lease_owner = NULL, lease_until = NULL \
                     WHERE status = ?3 AND lease_until < {now} AND leases >= ?4"
                ),
                &[
                    text(Status::Finished.as_str()),
                    text(Verdict::Crashed.as_str()),
                    text(Status::Claimed.as_str()),
                    int(terms.max_leases),
                ],
            )?;
            if given_up > 0 {
                db.notify(DONE)?;
            }
            let mut args = vec![text(owner), real(terms.lease_s), text(Status::Claimed.as_str())];
            let mut filter = String::new();
            if let Some(names) = datasets {
                let marks: Vec<String> = (0..names.len()).map(|i| format!("?{}", i + 4)).collect();
                filter =
                    format!(" AND dataset IN ({})", if marks.is_empty() { "NULL".into() } else { marks.join(", ") });
                args.extend(names.iter().map(|n| text(n.as_str())));
            }
            let rows = db.query(
                &format!(
                    "UPDATE candidates SET lease_owner = ?1, lease_until = {now} + ?2, leases = leases + 1 \
                     WHERE id = (SELECT id FROM candidates WHERE status = ?3 AND (lease_until IS NULL OR \
                     lease_until < {now}){filter} ORDER BY cycle, id LIMIT 1{}) RETURNING id",
                    db.skip_locked()
                ),
                &args,
            )?;
            Ok(rows.first().map(|r| count(r.first())))
        })?;
        match id {
            Some(id) => self.get(id),
            None => Ok(None),
        }
    }

    /// Extends `owner`'s lease on `id` to `lease_s` from now. False when it no longer holds it.
    pub fn renew(&self, id: i64, owner: &str, lease_s: f64) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE candidates SET lease_until = {} + ?3 WHERE id = ?1 AND lease_owner = ?2 AND status = ?4",
            self.db.borrow().now_sql()
        );
        Ok(self.execute(&sql, &[int(id), text(owner), real(lease_s), text(Status::Claimed.as_str())])? == 1)
    }

    /// Hands `owner`'s lease on `id` back untrained (the worker cannot train it: its dataset
    /// does not load there), without counting it as lost.
    pub fn release(&self, id: i64, owner: &str) -> Result<bool, StoreError> {
        Ok(self.hand_back("id = ?2 AND lease_owner = ?3", &[int(id), text(owner)])? == 1)
    }

    /// Hands back every lease whose owner's name starts with `prefix` (a driver's own threads,
    /// gone when a new driver starts), uncounted. The number handed back.
    pub fn release_owned_by(&self, prefix: &str) -> Result<u64, StoreError> {
        let pattern = format!("{}%", prefix.replace('%', "\\%").replace('_', "\\_"));
        self.hand_back("lease_owner LIKE ?2 ESCAPE '\\'", &[text(pattern)])
    }

    /// Hands back, uncounted, the leases on the claimed rows `condition` picks (its parameters
    /// are `?2` on, from `args`), and tells waiting workers. The number handed back.
    fn hand_back(&self, condition: &str, args: &[Value]) -> Result<u64, StoreError> {
        let mut all = vec![text(Status::Claimed.as_str())];
        all.extend_from_slice(args);
        self.transaction(|db| {
            let n = db.execute(
                &format!(
                    "UPDATE candidates SET lease_owner = NULL, lease_until = NULL, \
                     leases = CASE WHEN leases > 0 THEN leases - 1 ELSE 0 END WHERE status = ?1 AND {condition}"
                ),
                &all,
            )?;
            if n > 0 {
                db.notify(WORK)?;
            }
            Ok(n)
        })
    }

    /// Starts listening for work (candidates to train) on this connection.
    pub fn listen_for_work(&self) -> Result<(), StoreError> {
        self.db.borrow_mut().listen(WORK).map_err(|e| self.err(e))
    }

    /// Starts listening for finished training on this connection.
    pub fn listen_for_results(&self) -> Result<(), StoreError> {
        self.db.borrow_mut().listen(DONE).map_err(|e| self.err(e))
    }

    /// Waits up to `timeout` for what this connection listens for (PostgreSQL), or `poll`
    /// (SQLite, which has no notifications). True when told.
    pub fn wait(&self, timeout: Duration, poll: Duration) -> Result<bool, StoreError> {
        self.db.borrow_mut().wait(timeout, poll).map_err(|e| self.err(e))
    }

    /// How far `cycle` is.
    pub fn progress(&self, cycle: i64) -> Result<Progress, StoreError> {
        let rows = self.query(
            "SELECT COUNT(*), SUM(CASE WHEN status = ?2 THEN 1 ELSE 0 END), \
             SUM(CASE WHEN status = ?3 OR train_verdict IS NOT NULL THEN 1 ELSE 0 END), \
             SUM(CASE WHEN status = ?3 THEN 1 ELSE 0 END) FROM candidates WHERE cycle = ?1",
            &[int(cycle), text(Status::Finished.as_str()), text(Status::Claimed.as_str())],
        )?;
        let r = rows.into_iter().next().unwrap_or_default();
        Ok(Progress {
            rows: count(r.first()),
            finished: count(r.get(1)),
            to_train: count(r.get(2)),
            claimed: count(r.get(3)),
        })
    }

    /// Rows waiting for, or in, training, over all cycles.
    pub fn unfinished(&self) -> Result<i64, StoreError> {
        self.scalar("SELECT COUNT(*) FROM candidates WHERE status = ?1", &[text(Status::Claimed.as_str())])
    }

    /// Records a worker's state (`idle`, `training`, `stopped`) and count, as seen now.
    pub fn worker_seen(&self, w: &WorkerRow) -> Result<(), StoreError> {
        let now = self.db.borrow().now_sql();
        self.execute(
            &format!(
                "INSERT INTO workers (name, host, device, state, trained, started_at, seen_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, {now}) ON CONFLICT (name) DO UPDATE SET state = excluded.state, \
                 trained = excluded.trained, seen_at = excluded.seen_at"
            ),
            &[
                text(w.name.as_str()),
                text(w.host.as_str()),
                text(w.device.as_str()),
                text(w.state.as_str()),
                int(w.trained),
                real(w.started_at),
            ],
        )
        .map(|_| ())
    }

    /// Every worker that ever joined the run, by name.
    pub fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = self
            .query("SELECT name, host, device, state, trained, started_at, seen_at FROM workers ORDER BY name", &[])?;
        Ok(rows
            .iter()
            .map(|r| {
                let t = |i: usize| as_text(r.get(i)).unwrap_or_default();
                let f = |i: usize| as_real(r.get(i)).unwrap_or(0.0);
                WorkerRow {
                    name: t(0),
                    host: t(1),
                    device: t(2),
                    state: t(3),
                    trained: count(r.get(4)),
                    started_at: f(5),
                    seen_at: f(6),
                }
            })
            .collect())
    }

    fn select(&self, filter: &str, args: &[Value]) -> Result<Vec<Candidate>, StoreError> {
        let sql = format!("SELECT {} FROM candidates {filter}", CANDIDATE_COLUMNS.join(", "));
        let rows = self.query(&sql, args)?;
        rows.iter().map(|r| candidate(r).map_err(|e| self.err(e))).collect()
    }

    /// Every candidate and baseline, in id order.
    pub fn all(&self) -> Result<Vec<Candidate>, StoreError> {
        self.select("ORDER BY id", &[])
    }

    /// Claimed (unfinished) rows of `cycle`.
    pub fn claimed(&self, cycle: i64) -> Result<Vec<Candidate>, StoreError> {
        self.select("WHERE status = ?1 AND cycle = ?2 ORDER BY id", &[text(Status::Claimed.as_str()), int(cycle)])
    }

    /// The slots of `cycle` already inserted.
    pub fn slots(&self, cycle: i64) -> Result<Vec<i64>, StoreError> {
        let rows = self.query("SELECT slot FROM candidates WHERE cycle = ?1 ORDER BY slot", &[int(cycle)])?;
        Ok(rows.iter().map(|r| count(r.first())).collect())
    }

    pub fn get(&self, id: i64) -> Result<Option<Candidate>, StoreError> {
        Ok(self.select("WHERE id = ?1", &[int(id)])?.into_iter().next())
    }

    /// What an earlier reeval stored for candidate `id` trained `epochs` epochs: accuracy,
    /// verdict and seconds.
    pub fn reeval_of(&self, id: i64, epochs: i64) -> Result<Option<(Option<f64>, Verdict, f64)>, StoreError> {
        let rows = self.query(
            "SELECT accuracy, verdict, train_s FROM reevals WHERE candidate_id = ?1 AND epochs = ?2",
            &[int(id), int(epochs)],
        )?;
        let Some(r) = rows.first() else { return Ok(None) };
        let verdict = as_text(r.get(1)).and_then(|v| v.parse::<Verdict>().ok());
        Ok(verdict.map(|v| (as_real(r.first()), v, as_real(r.get(2)).unwrap_or(0.0))))
    }

    pub fn record_reeval(
        &self,
        id: i64,
        epochs: i64,
        accuracy: Option<f64>,
        verdict: Verdict,
        train_s: f64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO reevals (candidate_id, epochs, accuracy, verdict, train_s) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (candidate_id, epochs) DO UPDATE SET accuracy = excluded.accuracy, \
             verdict = excluded.verdict, train_s = excluded.train_s",
            &[int(id), int(epochs), opt_real(accuracy), text(verdict.as_str()), real(train_s)],
        )
        .map(|_| ())
    }
}

/// What a candidates table asks for: filters, one sort, one page.
#[derive(Clone, Debug, PartialEq)]
pub struct TableQuery {
    pub dataset: Option<String>,
    pub cycle: Option<i64>,
    pub verdict: Option<String>,
    pub generator: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub offset: i64,
    pub limit: i64,
}

impl Default for TableQuery {
    fn default() -> Self {
        TableQuery {
            dataset: None,
            cycle: None,
            verdict: None,
            generator: None,
            sort: SortKey::Id,
            descending: false,
            offset: 0,
            limit: 50,
        }
    }
}

/// The columns a candidates table sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Cycle,
    Accuracy,
    Params,
    Macs,
    /// 1 − similarity to the nearest network seen before it.
    Novelty,
}

impl SortKey {
    pub const ALL: [(&'static str, SortKey); 6] = [
        ("id", SortKey::Id),
        ("cycle", SortKey::Cycle),
        ("accuracy", SortKey::Accuracy),
        ("params", SortKey::Params),
        ("macs", SortKey::Macs),
        ("novelty", SortKey::Novelty),
    ];

    /// The SQL that orders by it, highest first when `descending`; rows without a value last
    /// either way (the engines disagree on where NULLs go, so it is said).
    fn order(self, descending: bool) -> String {
        let (column, flip) = match self {
            SortKey::Id => ("id", false),
            SortKey::Cycle => ("cycle", false),
            SortKey::Accuracy => ("accuracy", false),
            SortKey::Params => ("params", false),
            SortKey::Macs => ("macs", false),
            SortKey::Novelty => ("similarity", true),
        };
        let dir = if descending != flip { "DESC" } else { "ASC" };
        let tie = if descending { "DESC" } else { "ASC" };
        match self {
            // Never NULL: the plain order, which an index serves.
            SortKey::Id => format!("id {dir}"),
            SortKey::Cycle => format!("cycle {dir}, id {tie}"),
            _ => format!("({column} IS NULL), {column} {dir}, id {tie}"),
        }
    }
}

/// One line of a candidates table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TableRow {
    pub id: i64,
    pub cycle: i64,
    pub slot: i64,
    pub role: String,
    pub status: String,
    pub dataset: String,
    pub generator: String,
    pub parent_id: Option<i64>,
    pub front_verdict: String,
    pub verdict: String,
    pub accuracy: Option<f64>,
    pub params: Option<i64>,
    pub macs: Option<i64>,
    pub novelty: Option<f64>,
    pub train_s: Option<f64>,
}

const TABLE_COLUMNS: &str = "id, cycle, slot, role, status, dataset, generator, parent_id, front_verdict, verdict, \
     accuracy, params, macs, similarity, train_s";

fn table_row(r: &[Value]) -> TableRow {
    let t = |i: usize| as_text(r.get(i)).unwrap_or_default();
    let n = |i: usize| as_int(r.get(i));
    let f = |i: usize| as_real(r.get(i));
    TableRow {
        id: n(0).unwrap_or(0),
        cycle: n(1).unwrap_or(0),
        slot: n(2).unwrap_or(0),
        role: t(3),
        status: t(4),
        dataset: t(5),
        generator: t(6),
        parent_id: n(7),
        front_verdict: t(8),
        verdict: t(9),
        accuracy: f(10),
        params: n(11),
        macs: n(12),
        novelty: f(13).map(|s| 1.0 - s),
        train_s: f(14),
    }
}

/// Everything stored of one candidate, for a page about it.
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub candidate: Candidate,
    pub reply: Option<String>,
    pub extracted: Option<String>,
    pub diagnostic: Option<String>,
    pub novelty: Option<String>,
    pub train_loss: Option<f64>,
    pub test_loss: Option<f64>,
    pub images_per_s: Option<f64>,
    /// The training result as nasc train --json prints it.
    pub train_result: Option<serde_json::Value>,
    pub claimed_at: Option<f64>,
}

/// The values a candidates table can be filtered by.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Facets {
    pub datasets: Vec<String>,
    pub generators: Vec<String>,
    pub verdicts: Vec<String>,
    pub cycles: Vec<i64>,
}

impl Store {
    /// Opens a run's store for reading only (SQLite: a read-only connection; PostgreSQL: every
    /// transaction read-only). Refuses a store whose schema is not this nasc's: it is not
    /// upgraded from here.
    pub fn open_read_only(location: &Location) -> Result<Store, StoreError> {
        let shown = location.shown();
        let err = |e: String| StoreError(format!("{shown}: {e}"));
        let store = match location {
            Location::Sqlite(path) => {
                if !path.is_file() {
                    return Store::open_at(location);
                }
                let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| err(e.to_string()))?;
                conn.busy_timeout(Duration::from_secs(30)).map_err(|e| err(e.to_string()))?;
                Store { db: RefCell::new(Db::Sqlite(conn)), location: location.clone(), shown: shown.clone() }
            }
            Location::Postgres(_) => {
                let store = Store::connect(location)?;
                store.db.borrow_mut().batch("SET default_transaction_read_only = on").map_err(err)?;
                store
            }
        };
        store.holds_a_run()?;
        store.current_schema(" (`nasc report` upgrades an older one)")?;
        Ok(store)
    }

    /// One page of the candidates `q` filters, in its order, and how many it filters in all.
    pub fn table(&self, q: &TableQuery) -> Result<(i64, Vec<TableRow>), StoreError> {
        let mut conditions = Vec::new();
        let mut args = Vec::new();
        let mut add = |column: &str, v: Value| {
            args.push(v);
            conditions.push(format!("{column} = ?{}", args.len()));
        };
        if let Some(d) = &q.dataset {
            add("dataset", text(d.as_str()));
        }
        if let Some(c) = q.cycle {
            add("cycle", int(c));
        }
        if let Some(v) = &q.verdict {
            add("verdict", text(v.as_str()));
        }
        if let Some(g) = &q.generator {
            add("generator", text(g.as_str()));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let total = self.scalar(&format!("SELECT COUNT(*) FROM candidates {filter}"), &args)?;
        let n = args.len();
        args.extend([int(q.limit.clamp(0, 1000)), int(q.offset.max(0))]);
        let rows = self.query(
            &format!(
                "SELECT {TABLE_COLUMNS} FROM candidates {filter} ORDER BY {} LIMIT ?{} OFFSET ?{}",
                q.sort.order(q.descending),
                n + 1,
                n + 2
            ),
            &args,
        )?;
        Ok((total, rows.iter().map(|r| table_row(r)).collect()))
    }

    /// The rows whose parent is `id`, in id order.
    pub fn children(&self, id: i64) -> Result<Vec<TableRow>, StoreError> {
        let rows = self
            .query(&format!("SELECT {TABLE_COLUMNS} FROM candidates WHERE parent_id = ?1 ORDER BY id"), &[int(id)])?;
        Ok(rows.iter().map(|r| table_row(r)).collect())
    }

    /// Every stored column of candidate `id`.
    pub fn detail(&self, id: i64) -> Result<Option<Detail>, StoreError> {
        let rows = self.query(
            &format!(
                "SELECT {}, reply, extracted, diagnostic, novelty, train_loss, test_loss, images_per_s, train_result, \
                 claimed_at FROM candidates WHERE id = ?1",
                CANDIDATE_COLUMNS.join(", ")
            ),
            &[int(id)],
        )?;
        let Some(row) = rows.first() else { return Ok(None) };
        let (columns, more) = row.split_at(CANDIDATE_COLUMNS.len());
        let candidate = candidate(columns).map_err(|e| self.err(e))?;
        let t = |i: usize| as_text(more.get(i));
        let f = |i: usize| as_real(more.get(i));
        Ok(Some(Detail {
            candidate,
            reply: t(0),
            extracted: t(1),
            diagnostic: t(2),
            novelty: t(3),
            train_loss: f(4),
            test_loss: f(5),
            images_per_s: f(6),
            train_result: t(7).filter(|s| !s.is_empty()).and_then(|s| serde_json::from_str(&s).ok()),
            claimed_at: f(8),
        }))
    }

    /// The highest cycle with a row (0 before any candidate).
    pub fn last_cycle(&self) -> Result<i64, StoreError> {
        self.scalar("SELECT MAX(cycle) FROM candidates", &[])
    }

    /// The datasets, generators, verdicts and cycles present.
    pub fn facets(&self) -> Result<Facets, StoreError> {
        let texts = |column: &str| -> Result<Vec<String>, StoreError> {
            let rows = self.query(&format!("SELECT DISTINCT {column} FROM candidates ORDER BY {column}"), &[])?;
            Ok(rows.iter().filter_map(|r| as_text(r.first())).collect())
        };
        let cycles = self.query("SELECT DISTINCT cycle FROM candidates ORDER BY cycle", &[])?;
        Ok(Facets {
            datasets: texts("dataset")?,
            generators: texts("generator")?,
            verdicts: texts("verdict")?,
            cycles: cycles.iter().map(|r| count(r.first())).collect(),
        })
    }

    /// A value that changes whenever a candidate is inserted or finished, or the run's state
    /// changes: what a page compares to know that its tables are stale.
    pub fn version(&self) -> Result<String, StoreError> {
        let rows = self.query(
            "SELECT COUNT(*), SUM(CASE WHEN status = ?1 THEN 1 ELSE 0 END), MAX(finished_at), \
             (SELECT COUNT(*) FROM meta), (SELECT MAX(value) FROM meta WHERE key = 'state') FROM candidates",
            &[text(Status::Finished.as_str())],
        )?;
        let r = rows.into_iter().next().unwrap_or_default();
        Ok(r.iter()
            .map(|v| match v {
                Value::Integer(n) => n.to_string(),
                Value::Real(x) => format!("{x:.3}"),
                Value::Text(t) => t.clone(),
                _ => "-".into(),
            })
            .collect::<Vec<_>>()
            .join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_statuses_round_trip_with_one_spelling() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let e = "unfinished".parse::<Status>().unwrap_err();
        assert_eq!(e.to_string(), "unknown status \"unfinished\": expected one of claimed, finished");
    }

    #[test]
    fn store_urls_name_their_engine_and_passwords_are_never_shown() {
        assert_eq!(Location::parse("sqlite:runs/a/run.db").unwrap(), Location::Sqlite("runs/a/run.db".into()));
        assert_eq!(Location::parse("sqlite:///abs/run.db").unwrap(), Location::Sqlite("/abs/run.db".into()));
        let pg = Location::parse("postgres://nasc:s3cret@db.example:5433/runs?connect_timeout=5").unwrap();
        assert_eq!(pg.shown(), "postgres://nasc:***@db.example:5433/runs?connect_timeout=5");
        assert_eq!(
            mask("postgresql://h/db?user=a&password=xyz&sslmode=disable"),
            "postgresql://h/db?user=a&password=***&sslmode=disable"
        );
        for bad in ["mysql://h/db", "runs/a", "sqlite:"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        let e = Location::parse("postgres://h:notaport/db").unwrap_err().0;
        assert!(e.contains("not a PostgreSQL URL"), "{e}");
    }
}

/// Stores for tests: a fresh PostgreSQL database per test.
#[doc(hidden)]
pub mod testing {
    use super::Location;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The variable naming the PostgreSQL server the tests use: a URL to its maintenance
    /// database (`scripts/test` starts a throwaway cluster and sets it).
    pub const POSTGRES_VAR: &str = "NASC_TEST_POSTGRES";

    /// A new, empty database on the server [`POSTGRES_VAR`] names, for the test `name`. Panics
    /// where the variable is not set or the server cannot be reached: a test that needs
    /// PostgreSQL fails without one, it never passes by skipping.
    pub fn fresh_postgres(name: &str) -> Location {
        let url = std::env::var(POSTGRES_VAR).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_VAR} is not set: this test needs a PostgreSQL server (`bash scripts/test` starts one; \
                 or `bash scripts/pg-test-cluster start DIR` and export what it prints)"
            )
        });
        fresh_postgres_on(&url, name)
    }

    /// A new, empty database named after `name` on the server whose maintenance database `url`
    /// names.
    pub fn fresh_postgres_on(url: &str, name: &str) -> Location {
        static N: AtomicUsize = AtomicUsize::new(0);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        let mut db = format!("nasc_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), clean);
        db.truncate(63);
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {url}: {}", super::db::pg_error(&e)));
        for sql in [format!("DROP DATABASE IF EXISTS {db}"), format!("CREATE DATABASE {db}")] {
            client.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {}", super::db::pg_error(&e)));
        }
        let sep = if query.is_empty() { "" } else { "?" };
        Location::Postgres(format!("{server}/{db}{sep}{query}"))
    }
}
