//! Training workers: lease a candidate from the run store, train it while a heartbeat renews
//! the lease, record the result only while the lease is still held. The driver's own threads
//! (`workers = N`) and `nasc worker` processes on other machines run this one loop.

use super::config::SearchConfig;
use super::run::{stored_config, train_one, SearchError};
use super::store::{Location, Store, WorkerRow};
use indicatif::ProgressBar;
use nasc_backend::train::{self, TrainConfig};
use nasc_datasets::Dataset;
use nasc_runtime::Device;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How one worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Its lease owner name, unique among the run's workers.
    pub name: String,
    pub device: Device,
    /// Where its datasets are (the run's `[train] data_root` when not given).
    pub data_root: Option<PathBuf>,
    /// Train only candidates of these datasets (every dataset of the run when not given).
    pub datasets: Option<Vec<String>>,
    /// Leave after training this many.
    pub max_candidates: Option<usize>,
    /// Leave after this long without work.
    pub idle_exit: Option<Duration>,
    /// Leave when the run's driver has finished and nothing is left to train (`nasc worker`);
    /// a driver's own threads leave when it says so instead.
    pub until_run_ends: bool,
    /// How long one wait for work lasts before the queue is looked at again (leases that ran out
    /// are noticed then; new work wakes a PostgreSQL worker at once).
    pub wait: Duration,
    /// The id of the candidate it holds a lease on now (0: none), for a signal handler that
    /// hands it back.
    pub held: Arc<AtomicI64>,
}

/// What a worker did.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerSummary {
    pub worker: String,
    /// Candidates whose result was recorded.
    pub trained: usize,
    /// Results refused because the lease had run out meanwhile (another worker has the
    /// candidate, or it was given up).
    pub refused: usize,
    /// Candidates handed back untrained (their dataset does not load here).
    pub released: usize,
    pub elapsed_s: f64,
    /// Why it left: `run finished`, `idle`, `max candidates`, `stopped`.
    pub stopped: String,
}

/// A dataset's train and test splits.
pub type Splits = Arc<(Dataset, Dataset)>;

/// The datasets a process has loaded, shared by its workers: each is read once.
pub struct DataCache {
    base: TrainConfig,
    sets: Mutex<HashMap<String, Result<Splits, String>>>,
}

impl DataCache {
    pub fn new(base: TrainConfig) -> DataCache {
        DataCache { base, sets: Mutex::new(HashMap::new()) }
    }

    /// `dataset`'s train and test splits, loaded on first use; a load that failed fails again
    /// without rereading.
    pub fn get(&self, dataset: &str) -> Result<Splits, String> {
        let mut sets = self.sets.lock().expect("no thread panics holding the data cache");
        sets.entry(dataset.to_string())
            .or_insert_with(|| {
                let config = TrainConfig { dataset: dataset.to_string(), ..self.base.clone() };
                train::load_data(&config).map(Arc::new).map_err(|e| {
                    format!(
                        "cannot load {dataset} from {}: {e} (fetch it with `nasc data fetch {dataset}`, or set the data root)",
                        config.data_root.join(dataset).display()
                    )
                })
            })
            .clone()
    }
}

/// This machine's name, for worker names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A lease owner name no other worker of any run has: `name/` and the process's start in
/// nanoseconds, in hex, so a restarted worker of the same name is a new owner.
pub fn owner_name(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{name}/{:x}", nanos as u64 ^ u64::from(std::process::id()))
}

/// Renews the lease of the candidate the trainer says it holds, every `every`, on its own
/// connection, and keeps the worker's row fresh. A renewal that finds the lease gone stops
/// renewing it (the trainer learns so when its result is refused). Ends when the trainer hangs
/// up.
fn heartbeat(
    store: &Store,
    row: &Mutex<WorkerRow>,
    rx: &mpsc::Receiver<Option<i64>>,
    every: Duration,
    lease_s: f64,
    log: &(dyn Fn(&str) + Sync),
) {
    let mut held = None;
    loop {
        match rx.recv_timeout(every) {
            Ok(now_held) => held = now_held,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(id) = held {
                    match store.renew(id, &row.lock().expect("no panic holding the row").name, lease_s) {
                        Ok(true) => {}
                        Ok(false) => held = None,
                        // The store may be back before the lease runs out: keep trying.
                        Err(e) => log(&format!("heartbeat of candidate {id}: {e}")),
                    }
                }
                let seen = row.lock().expect("no panic holding the row").clone();
                let _ = store.worker_seen(&seen);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Runs one worker on `store` until it has reason to leave (see [`WorkerOptions`]) or `stop`
/// is set. `config` is the run's (its datasets and `[queue]`); `base` its training config with
/// this worker's device and data root; `log` takes lines for the user.
#[allow(clippy::too_many_arguments)]
pub fn work(
    store: &Store,
    opts: &WorkerOptions,
    config: &SearchConfig,
    base: &TrainConfig,
    cache: &DataCache,
    bar: &ProgressBar,
    stop: &AtomicBool,
    log: &(dyn Fn(&str) + Sync),
) -> Result<WorkerSummary, SearchError> {
    let started = Instant::now();
    let (terms, heartbeat_every) = (config.queue.terms(), Duration::from_secs_f64(config.queue.heartbeat_s));
    let mut allowed: BTreeSet<String> = opts.datasets.clone().unwrap_or(config.datasets.clone()).into_iter().collect();
    let row = Mutex::new(WorkerRow {
        name: opts.name.clone(),
        host: hostname(),
        device: opts.device.to_string(),
        state: "idle".into(),
        trained: 0,
        started_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        seen_at: 0.0,
    });
    let set_state = |state: &str, trained: usize| -> Result<(), SearchError> {
        let mut r = row.lock().expect("no panic holding the row");
        r.state = state.to_string();
        r.trained = trained as i64;
        store.worker_seen(&r).map_err(SearchError::from)
    };
    set_state("idle", 0)?;
    store.listen_for_work()?;
    let beat_store = store.reopen()?;
    let (tx, rx) = mpsc::channel::<Option<i64>>();
    let mut summary = WorkerSummary {
        worker: opts.name.clone(),
        trained: 0,
        refused: 0,
        released: 0,
        elapsed_s: 0.0,
        stopped: String::new(),
    };
    let result = std::thread::scope(|s| -> Result<(), SearchError> {
        let row = &row;
        // Owned here, so the heartbeat hears the hang-up when this loop returns.
        let tx = tx;
        s.spawn(move || heartbeat(&beat_store, row, &rx, heartbeat_every, terms.lease_s, log));
        let mut idle_since = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                summary.stopped = "stopped".into();
                return Ok(());
            }
            if opts.max_candidates.is_some_and(|m| summary.trained + summary.refused >= m) {
                summary.stopped = "max candidates".into();
                return Ok(());
            }
            let names: Vec<String> = allowed.iter().cloned().collect();
            let Some(c) = store.claim(&opts.name, &terms, Some(&names))? else {
                if opts.until_run_ends
                    && store.meta("state")?.as_deref() == Some("finished")
                    && store.unfinished()? == 0
                {
                    summary.stopped = "run finished".into();
                    return Ok(());
                }
                if opts.idle_exit.is_some_and(|d| idle_since.elapsed() >= d) {
                    summary.stopped = "idle".into();
                    return Ok(());
                }
                store.wait(opts.wait, opts.wait.min(Duration::from_millis(200)))?;
                continue;
            };
            let data = match cache.get(&c.dataset) {
                Ok(d) => d,
                Err(e) => {
                    log(&format!("{}: {e}; its candidates are left to other workers", opts.name));
                    allowed.remove(&c.dataset);
                    store.release(c.id, &opts.name)?;
                    summary.released += 1;
                    if allowed.is_empty() {
                        // Waiting on would hold nothing and train nothing: say so and leave.
                        return Err(SearchError(format!(
                            "{}: none of the run's datasets loads here ({e}); give --data-root, or --datasets for the ones \
                             this machine has",
                            opts.name
                        )));
                    }
                    continue;
                }
            };
            opts.held.store(c.id, Ordering::SeqCst);
            let _ = tx.send(Some(c.id));
            set_state("training", summary.trained)?;
            bar.reset();
            bar.set_prefix(format!("#{}", c.id));
            let trained = train_one(&c, &data, base, bar);
            let _ = tx.send(None);
            opts.held.store(0, Ordering::SeqCst);
            if store.finish_leased(c.id, &opts.name, &trained)? {
                summary.trained += 1;
            } else {
                summary.refused += 1;
                log(&format!(
                    "{}: candidate {}: its lease ran out while it trained (no heartbeat reached the store in time); \
                     the result is dropped, and the candidate is another worker's",
                    opts.name, c.id
                ));
            }
            set_state("idle", summary.trained)?;
            idle_since = Instant::now();
        }
    });
    let _ = set_state("stopped", summary.trained);
    result?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// `nasc worker`: one worker process on the run at `location`, training on `opts.device`.
/// Waits up to `wait_for_run` for the run to exist (a cluster may start workers before the
/// driver).
pub fn run_worker(
    location: &Location,
    opts: &WorkerOptions,
    wait_for_run: Duration,
    bar: &ProgressBar,
) -> Result<WorkerSummary, SearchError> {
    let asked = Instant::now();
    let store = loop {
        match Store::open_at(location) {
            Ok(s) => break s,
            Err(e) if asked.elapsed() < wait_for_run => {
                eprintln!("{e}; trying again in 5 s");
                std::thread::sleep(Duration::from_secs(5).min(wait_for_run.saturating_sub(asked.elapsed())));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let config = stored_config(&store)?;
    nasc_runtime::available(opts.device).map_err(SearchError)?;
    let base = TrainConfig {
        device: opts.device,
        data_root: opts.data_root.clone().unwrap_or(config.train.data_root.clone()),
        ..config.train.clone()
    };
    let cache = DataCache::new(base.clone());
    let stop = AtomicBool::new(false);
    let log = |line: &str| eprintln!("{line}");
    let (at, owner, held) = (location.clone(), opts.name.clone(), opts.held.clone());
    std::thread::spawn(move || hand_back_on_termination(&at, &owner, &held));
    work(&store, opts, &config, &base, &cache, bar, &stop, &log)
}

/// Waits for SIGTERM (what Slurm and Kubernetes send before they kill) or SIGINT, then hands
/// the lease the worker holds back to the queue, uncounted, and ends the process (exit 143 or
/// 130): a preempted worker's candidate is trained again at once, not after its lease runs out.
fn hand_back_on_termination(location: &Location, owner: &str, held: &AtomicI64) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let code = rt.block_on(async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            return None;
        };
        tokio::select! {
            _ = term.recv() => Some(143),
            _ = tokio::signal::ctrl_c() => Some(130),
        }
    });
    let Some(code) = code else { return };
    let id = held.load(Ordering::SeqCst);
    if id > 0 {
        match Store::open_at(location).and_then(|s| s.release(id, owner)) {
            Ok(true) => eprintln!("{owner}: stopped by a signal; candidate {id} goes back to the queue"),
            Ok(false) => {}
            Err(e) => eprintln!("{owner}: stopped by a signal; candidate {id} could not be handed back ({e}): its lease runs out instead"),
        }
    }
    std::process::exit(code);
}
