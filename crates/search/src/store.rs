//! The run store: one SQLite database (`run.db`) in the run folder holding the config and every candidate, claimed then finished.
//! Crash safety lives here: a candidate row is inserted once per (cycle, slot) and finished in one transaction, so a killed run loses nothing finished.
//!
//! The schema is plain SQL meant to run unchanged on PostgreSQL later: INTEGER/BIGINT, DOUBLE
//! PRECISION, TEXT; no AUTOINCREMENT, no SQLite-only types. JSON is stored as TEXT.

use nasc_delta::Verdict;
use rusqlite::types::FromSqlError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const DB_FILE: &str = "run.db";
pub const SCHEMA_VERSION: i64 = 2;

/// What brings a store of an older schema version up to the next: `(from, SQL)`, in order.
/// A store is upgraded when opened, in one transaction per step.
const MIGRATIONS: &[(i64, &str)] = &[
    // 2: the applier's tolerances per candidate.
    (1, "ALTER TABLE candidates ADD COLUMN tolerances TEXT;"),
];

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
    UNIQUE (cycle, slot)
);
CREATE TABLE IF NOT EXISTS reevals (
    candidate_id BIGINT NOT NULL,
    epochs INTEGER NOT NULL,
    accuracy DOUBLE PRECISION,
    verdict TEXT NOT NULL,
    train_s DOUBLE PRECISION,
    PRIMARY KEY (candidate_id, epochs)
);
";

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
}

const CANDIDATE_COLUMNS: &str = "id, cycle, slot, role, status, dataset, baseline, parent_id, generator, adapter, \
     program, diff, prompt, front_verdict, verdict, similarity, hash, params, macs, accuracy, reply_lines, \
     reply_tokens, train_s, finished_at, attempts, attempt_verdicts, tolerances";

/// The error of a stored value that names none of its column's kind: which row, which column,
/// what it holds.
fn unknown(r: &Row<'_>, id: i64, i: usize, e: impl fmt::Display) -> rusqlite::Error {
    let column = r.as_ref().column_name(i).unwrap_or("?");
    FromSqlError::Other(format!("candidate {id}: column {column}: {e}").into()).into()
}

/// Column `i`, a name of one of `T`'s values (a role, a status, a verdict).
fn named<T: FromStr>(r: &Row<'_>, id: i64, i: usize) -> rusqlite::Result<T>
where
    T::Err: fmt::Display,
{
    r.get::<_, String>(i)?.parse().map_err(|e| unknown(r, id, i, e))
}

/// Column `i`, a JSON list of verdict names.
fn verdicts(r: &Row<'_>, id: i64, i: usize) -> rusqlite::Result<Vec<Verdict>> {
    let text = r.get::<_, String>(i)?;
    let names: Vec<String> =
        serde_json::from_str(&text).map_err(|e| unknown(r, id, i, format!("not a JSON list of verdicts: {e}")))?;
    names.iter().map(|n| n.parse().map_err(|e| unknown(r, id, i, e))).collect()
}

fn candidate(r: &Row<'_>) -> rusqlite::Result<Candidate> {
    let id = r.get(0)?;
    Ok(Candidate {
        id,
        cycle: r.get(1)?,
        slot: r.get(2)?,
        role: named(r, id, 3)?,
        status: named(r, id, 4)?,
        dataset: r.get(5)?,
        baseline: r.get(6)?,
        parent_id: r.get(7)?,
        generator: r.get(8)?,
        adapter: r.get(9)?,
        program: r.get(10)?,
        diff: r.get(11)?,
        prompt: r.get(12)?,
        front_verdict: named(r, id, 13)?,
        verdict: named(r, id, 14)?,
        similarity: r.get(15)?,
        hash: r.get(16)?,
        params: r.get(17)?,
        macs: r.get(18)?,
        accuracy: r.get(19)?,
        reply_lines: r.get(20)?,
        reply_tokens: r.get(21)?,
        train_s: r.get(22)?,
        finished_at: r.get(23)?,
        attempts: r.get(24)?,
        attempt_verdicts: verdicts(r, id, 25)?,
        tolerances: match r.get::<_, Option<String>>(26)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| unknown(r, id, 26, e))?,
            None => Vec::new(),
        },
    })
}

/// An error of the store, with the database's path.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Store {
    /// Creates the run folder's database with its config and `meta` entries, in one
    /// transaction: a process killed while creating leaves no run, and the next `create`
    /// starts over. Refuses a folder that already holds one.
    pub fn create(dir: &Path, config_json: &str, meta: &[(&str, &str)]) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if path.exists() {
            if Store::interrupted(&path) {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{suffix}")));
                }
            } else {
                return Err(StoreError(format!(
                    "{} already holds a run; continue it with `nasc search --resume {}` or choose another --out",
                    dir.display(),
                    dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let mut store = Store::connect(&path)?;
        let path_shown = path.display().to_string();
        let err = |e: rusqlite::Error| StoreError(format!("{path_shown}: {e}"));
        let tx = store.conn.transaction().map_err(err)?;
        tx.execute_batch(SCHEMA).map_err(err)?;
        let version = SCHEMA_VERSION.to_string();
        let created = now().to_string();
        let entries = [("schema_version", version.as_str()), ("config", config_json), ("created_at", created.as_str())];
        for (key, value) in entries.iter().chain(meta) {
            tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![key, value]).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(store)
    }

    /// Whether the database at `path` is a creation that never committed (no schema version).
    fn interrupted(path: &Path) -> bool {
        let Ok(conn) = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return false;
        };
        let version: Result<String, _> =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0));
        matches!(version, Err(rusqlite::Error::QueryReturnedNoRows))
            || matches!(&version, Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table"))
    }

    /// Opens the database of an existing run folder.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError(format!("{} is not a run folder: it has no {DB_FILE}", dir.display())));
        }
        let mut store = Store::connect(&path)?;
        let mut version = store.meta("schema_version")?;
        while let Some(&(from, sql)) =
            MIGRATIONS.iter().find(|(from, _)| version.as_deref() == Some(from.to_string().as_str()))
        {
            let next = from + 1;
            let err =
                |e: rusqlite::Error| StoreError(format!("{}: upgrading to schema version {next}: {e}", path.display()));
            let tx = store.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", params![next.to_string()])
                .map_err(err)?;
            tx.commit().map_err(err)?;
            version = Some(next.to_string());
        }
        if version.as_deref() != Some(&SCHEMA_VERSION.to_string()) {
            return Err(StoreError(format!(
                "{} has schema version {}, and this nasc reads version {SCHEMA_VERSION}",
                path.display(),
                version.unwrap_or_else(|| "none".into())
            )));
        }
        Ok(store)
    }

    fn connect(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        // WAL: readers (reports, tests) never block the search; a commit is durable at once.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        Ok(Store { conn, path: path.to_path_buf() })
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError(format!("{}: {e}", self.path.display()))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Inserts a judged candidate: `claimed` when it is to train, else `finished` at once.
    /// Returns its id. A (cycle, slot) is inserted once; a second insert is an error.
    pub fn insert(&self, c: &NewCandidate, to_train: bool) -> Result<i64, StoreError> {
        let id: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM candidates", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let t = now();
        let (status, finished_at) = if to_train { (Status::Claimed, None) } else { (Status::Finished, Some(t)) };
        let attempt_verdicts = serde_json::to_string(&c.attempt_verdicts).expect("verdicts serialise");
        let tolerances = serde_json::to_string(&c.tolerances).expect("names serialise");
        self.conn
            .execute(
                "INSERT INTO candidates (id, cycle, slot, role, status, dataset, baseline, parent_id, generator, adapter, \
                 prompt, reply, extracted, diff, program, attempts, attempt_verdicts, front_verdict, verdict, diagnostic, \
                 novelty, similarity, hash, params, macs, reply_lines, reply_tokens, diff_lines, generate_ns, extract_ns, \
                 apply_ns, parse_ns, check_ns, novelty_ns, claimed_at, finished_at, tolerances) VALUES (?1, ?2, ?3, ?4, \
                 ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, \
                 ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36)",
                params![
                    id,
                    c.cycle,
                    c.slot,
                    c.role.as_str(),
                    status.as_str(),
                    c.dataset,
                    c.baseline,
                    c.parent_id,
                    c.generator,
                    c.adapter,
                    c.prompt,
                    c.reply,
                    c.extracted,
                    c.diff,
                    c.program,
                    c.attempts,
                    attempt_verdicts,
                    c.front_verdict.as_str(),
                    c.diagnostic,
                    c.novelty,
                    c.similarity,
                    c.hash,
                    c.params,
                    c.macs,
                    c.reply_lines,
                    c.reply_tokens,
                    c.diff_lines,
                    c.generate_ns,
                    c.extract_ns,
                    c.apply_ns,
                    c.parse_ns,
                    c.check_ns,
                    c.novelty_ns,
                    t,
                    finished_at,
                    tolerances,
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// Records a claimed candidate's training and marks it finished, in one transaction. A
    /// candidate already finished is left as it is (false).
    pub fn finish(&mut self, id: i64, t: &Trained) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| StoreError(format!("{}: {e}", path.display()));
        let tx = self.conn.transaction().map_err(err)?;
        let n = tx
            .execute(
                "UPDATE candidates SET status = ?12, train_verdict = ?2, verdict = ?2, \
                 diagnostic = CASE WHEN ?3 = '' THEN diagnostic ELSE ?3 END, accuracy = ?4, train_loss = ?5, \
                 test_loss = ?6, images_per_s = ?7, train_s = ?8, train_result = ?9, train_ns = ?10, finished_at = ?11 \
                 WHERE id = ?1 AND status = ?13",
                params![
                    id,
                    t.verdict.as_str(),
                    t.message,
                    t.accuracy,
                    t.train_loss,
                    t.test_loss,
                    t.images_per_s,
                    t.train_s,
                    t.result_json,
                    t.train_ns,
                    now(),
                    Status::Finished.as_str(),
                    Status::Claimed.as_str(),
                ],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n == 1)
    }

    fn select(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Candidate>, StoreError> {
        let sql = format!("SELECT {CANDIDATE_COLUMNS} FROM candidates {filter}");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map(args, candidate).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Every candidate and baseline, in id order.
    pub fn all(&self) -> Result<Vec<Candidate>, StoreError> {
        self.select("ORDER BY id", [])
    }

    /// Claimed (unfinished) rows of `cycle`.
    pub fn claimed(&self, cycle: i64) -> Result<Vec<Candidate>, StoreError> {
        self.select("WHERE status = ?1 AND cycle = ?2 ORDER BY id", params![Status::Claimed.as_str(), cycle])
    }

    /// The slots of `cycle` already inserted.
    pub fn slots(&self, cycle: i64) -> Result<Vec<i64>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT slot FROM candidates WHERE cycle = ?1 ORDER BY slot").map_err(|e| self.err(e))?;
        let rows = stmt.query_map(params![cycle], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<i64>, _>>().map_err(|e| self.err(e))
    }

    pub fn get(&self, id: i64) -> Result<Option<Candidate>, StoreError> {
        Ok(self.select("WHERE id = ?1", params![id])?.into_iter().next())
    }

    pub fn record_reeval(
        &self,
        id: i64,
        epochs: i64,
        accuracy: Option<f64>,
        verdict: Verdict,
        train_s: f64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO reevals (candidate_id, epochs, accuracy, verdict, train_s) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (candidate_id, epochs) DO UPDATE SET accuracy = excluded.accuracy, \
                 verdict = excluded.verdict, train_s = excluded.train_s",
                params![id, epochs, accuracy, verdict.as_str(), train_s],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_one(dir: &Path) -> (Store, i64) {
        let store = Store::create(dir, "{}", &[]).unwrap();
        let row = NewCandidate {
            dataset: "mnist".into(),
            baseline: "lenet5".into(),
            generator: "mutate".into(),
            attempts: 2,
            attempt_verdicts: vec![Verdict::ShapeError, Verdict::Ok],
            ..NewCandidate::new(Role::Candidate, Verdict::Ok)
        };
        let id = store.insert(&row, true).unwrap();
        (store, id)
    }

    #[test]
    fn a_creation_that_never_committed_is_started_over_and_a_committed_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        // What a kill between opening the file and committing leaves: a database with no tables.
        rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap().execute_batch("CREATE TABLE x (a)").unwrap();
        assert!(Store::open(dir.path()).is_err());
        let store = Store::create(dir.path(), "{\"a\": 1}", &[("template", "t")]).unwrap();
        assert_eq!(store.meta("template").unwrap().as_deref(), Some("t"));
        drop(store);
        let again = Store::create(dir.path(), "{}", &[]).err().unwrap();
        assert!(again.0.contains("already holds a run"), "{}", again.0);
        assert_eq!(Store::open(dir.path()).unwrap().meta("config").unwrap().as_deref(), Some("{\"a\": 1}"));
    }

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
    fn typed_values_are_stored_as_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, id) = store_with_one(dir.path());
        let c = store.get(id).unwrap().unwrap();
        assert_eq!(
            (c.role, c.status, c.front_verdict, c.verdict),
            (Role::Candidate, Status::Claimed, Verdict::Ok, Verdict::Ok)
        );
        assert_eq!(c.attempt_verdicts, [Verdict::ShapeError, Verdict::Ok]);
        assert!(store.finish(id, &Trained::new(Verdict::Diverged)).unwrap());
        let row: (String, String, String, String, String, String) = store
            .conn
            .query_row(
                "SELECT role, status, attempt_verdicts, front_verdict, train_verdict, verdict FROM candidates WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                "candidate".into(),
                "finished".into(),
                r#"["shape_error","ok"]"#.into(),
                "ok".into(),
                "diverged".into(),
                "diverged".into()
            )
        );
        let c = store.get(id).unwrap().unwrap();
        assert_eq!((c.status, c.verdict), (Status::Finished, Verdict::Diverged));
        assert!(store.claimed(0).unwrap().is_empty());
    }

    /// A run written by the first schema (no tolerances column) opens: it is upgraded in place
    /// and reads back with no tolerances; a store newer than this nasc is refused.
    #[test]
    fn a_store_of_schema_version_1_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_one(dir.path());
        store.conn.execute_batch("ALTER TABLE candidates DROP COLUMN tolerances").unwrap();
        store.set_meta("schema_version", "1").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.meta("schema_version").unwrap().as_deref(), Some("2"));
        assert!(store.get(id).unwrap().unwrap().tolerances.is_empty());
        let row = NewCandidate {
            slot: 1,
            tolerances: vec!["recounted".into()],
            ..NewCandidate::new(Role::Candidate, Verdict::Ok)
        };
        let id = store.insert(&row, false).unwrap();
        assert_eq!(store.get(id).unwrap().unwrap().tolerances, ["recounted"]);
        store.set_meta("schema_version", "7").unwrap();
        drop(store);
        let e = Store::open(dir.path()).err().unwrap().0;
        assert!(e.contains("has schema version 7, and this nasc reads version 2"), "{e}");
    }

    #[test]
    fn an_unknown_stored_name_is_an_error_naming_the_column_and_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_one(dir.path());
        let set = |sql: &str| store.conn.execute(sql, params![id]).unwrap();
        set("UPDATE candidates SET verdict = 'exploded' WHERE id = ?1");
        let e = store.all().unwrap_err().0;
        assert!(e.contains(&format!("candidate {id}: column verdict: unknown verdict \"exploded\"")), "{e}");
        set("UPDATE candidates SET verdict = 'ok', role = 'parent' WHERE id = ?1");
        let e = store.get(id).unwrap_err().0;
        assert!(e.contains("column role: unknown role \"parent\": expected one of baseline, candidate"), "{e}");
        set("UPDATE candidates SET role = 'candidate', attempt_verdicts = '[\"ok\", \"fine\"]' WHERE id = ?1");
        let e = store.all().unwrap_err().0;
        assert!(e.contains("column attempt_verdicts: unknown verdict \"fine\""), "{e}");
        set("UPDATE candidates SET attempt_verdicts = 'ok' WHERE id = ?1");
        let e = store.all().unwrap_err().0;
        assert!(e.contains("column attempt_verdicts: not a JSON list of verdicts"), "{e}");
    }
}
