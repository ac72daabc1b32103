//! The cycle driver: baselines, then per cycle generate → judge (with retries) → train on N workers → curate → fine-tune.
//! Every decision is recorded in the run store before the next is made, so a killed run resumes where it stood; it trains nothing twice.

use super::config::{GeneratorKind, SearchConfig};
use super::curate;
use super::generate::{self, GenError, Generator, Request};
use super::store::{Candidate, Location, NewCandidate, Role, Status, Store, Trained, LOCAL_OWNER_PREFIX};
use super::worker::{self, DataCache, WorkerOptions};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nasc_backend::train::{self, TrainConfig};
use nasc_datasets::Dataset;
use nasc_delta::delta::grammar::avoid_of;
use nasc_delta::delta::{judge_reply, Base, Judgement, Options};
use nasc_delta::novelty::{self, Archive};
use nasc_delta::Verdict;
use nasc_lang::check::{self, binding, Binding};
use nasc_runtime::Device;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a run stopped before its end.
#[derive(Debug)]
pub struct SearchError(pub String);

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<super::store::StoreError> for SearchError {
    fn from(e: super::store::StoreError) -> Self {
        SearchError(e.0)
    }
}

impl From<GenError> for SearchError {
    fn from(e: GenError) -> Self {
        SearchError(e.message)
    }
}

/// How this process runs the search (not stored: a resumed run may use other values).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Overrides the config's `workers` (0: only `nasc worker` processes train).
    pub workers: Option<usize>,
    /// The store of a new run (default: `RUN/run.db`), or of a resumed one (default: the one
    /// the run folder names).
    pub store: Option<Location>,
    /// Progress bars on stderr (when it is a terminal).
    pub progress: bool,
}

/// The end-of-run summary (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub run: PathBuf,
    pub cycles: usize,
    pub candidates: usize,
    /// Candidates whose reply the front half judged `ok`, over all candidates.
    pub valid_rate: f64,
    /// Each final verdict's count, by name (so in alphabetical order).
    pub verdicts: std::collections::BTreeMap<String, usize>,
    pub best_accuracy: Option<f64>,
    pub best_candidate: Option<i64>,
    pub mean_accuracy: Option<f64>,
    /// Candidates finished by this process per hour of its wall time.
    pub candidates_per_hour: f64,
    pub elapsed_s: f64,
}

/// Starts a new run in `dir` with `config`.
pub fn start(config: &SearchConfig, dir: &Path, opts: &RunOptions) -> Result<Summary, SearchError> {
    // Baselines and template are read now and stored: a resumed run never rereads them.
    let mut baselines = Vec::new();
    for path in &config.baselines {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SearchError(format!("cannot read baseline {}: {e}", path.display())))?;
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        baselines.push((name, text));
    }
    let template = match &config.prompt_template {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| SearchError(format!("cannot read prompt template {}: {e}", p.display())))?,
        None => generate::DEFAULT_TEMPLATE.to_string(),
    };
    if let Some(p) = &config.prompt_template {
        let warning = generate::check_template(&template)
            .map_err(|e| SearchError(format!("prompt template {}: {e}", p.display())))?;
        if let Some(w) = warning {
            eprintln!("warning: prompt template {}: {w}", p.display());
        }
    }
    let json = serde_json::to_string(config).expect("the config serialises");
    std::fs::create_dir_all(dir).map_err(|e| SearchError(format!("cannot create {}: {e}", dir.display())))?;
    let lock = RunLock::take(dir)?;
    let baselines = serde_json::to_string(&baselines).expect("strings serialise");
    let meta = [("baselines", baselines.as_str()), ("template", template.as_str())];
    let store = match &opts.store {
        None => Store::create(dir, &json, &meta)?,
        Some(location) => {
            let store = Store::create_at(location, &json, &meta)?;
            if *location != Location::Sqlite(dir.join(super::store::DB_FILE)) {
                // The folder names its store, so `--resume RUN` and `nasc report RUN` find it.
                let named = dir.join(super::store::STORE_FILE);
                // Written whole or not at all: a kill mid-write leaves no half a URL.
                let partial = dir.join(format!("{}.partial", super::store::STORE_FILE));
                std::fs::write(&partial, format!("{}\n", location.url()))
                    .and_then(|()| std::fs::rename(&partial, &named))
                    .map_err(|e| SearchError(format!("cannot write {}: {e}", named.display())))?;
            }
            store
        }
    };
    drive(store, dir, opts, lock)
}

/// Continues the run in `dir`: unfinished candidates are redone, finished ones kept.
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<Summary, SearchError> {
    let store = match &opts.store {
        Some(location) => {
            let store = Store::open_at(location)?;
            // A run stored elsewhere may be driven from a new folder (another machine's).
            std::fs::create_dir_all(dir).map_err(|e| SearchError(format!("cannot create {}: {e}", dir.display())))?;
            store
        }
        None => Store::open_at(&Location::of_run(dir)?)?,
    };
    let lock = RunLock::take(dir)?;
    drive(store, dir, opts, lock)
}

/// The lock of the process that drives a run: an exclusive lock on `RUN/lock`, which holds its
/// process id and start time. The operating system lets it go when the process ends, however
/// it ends, so a killed run can be resumed at once, and two processes never drive one run.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub fn take(dir: &Path) -> Result<RunLock, SearchError> {
        use std::io::{Read, Seek, Write};
        let path = dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SearchError(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(SearchError(format!(
                    "{} is being driven by another process ({}); wait for it to end, or stop it first",
                    dir.display(),
                    holder.trim()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(SearchError(format!("cannot lock {}: {e}", path.display())))
            }
        }
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| {
            write!(file, "process {} since {} (unix time)", std::process::id(), started).and_then(|_| file.flush())
        });
        Ok(RunLock { _file: file })
    }
}

/// The run's config as stored.
pub fn stored_config(store: &Store) -> Result<SearchConfig, SearchError> {
    let text = store.meta("config")?.ok_or_else(|| SearchError(format!("{} holds no config", store.shown())))?;
    serde_json::from_str(&text)
        .map_err(|e| SearchError(format!("{}: the stored config does not read: {e}", store.shown())))
}

/// One slot of a cycle while it is generated and judged.
struct SlotWork {
    slot: i64,
    /// The first slot of this slot's group: the group shares its parent and prompt.
    lead: i64,
    /// Its place in the group: the reply of that index in the group's request is its.
    position: usize,
    /// Its row is in the store.
    stored: bool,
    dataset: String,
    parent: Candidate,
    base: Base,
    request: Request,
    verdicts: Vec<Verdict>,
    result: Option<(Judgement, generate::Reply)>,
    generate_ns: i64,
}

struct Driver {
    config: SearchConfig,
    store: Store,
    dir: PathBuf,
    generator: Box<dyn Generator>,
    template: String,
    baselines: Vec<(String, String)>,
    archives: HashMap<String, Archive>,
    workers: usize,
    /// The first error of a training thread, which ends the run.
    failure: Arc<Mutex<Option<String>>>,
    bars: Bars,
    started: Instant,
    finished_here: usize,
}

struct Bars {
    multi: MultiProgress,
    cycle: ProgressBar,
    summary: ProgressBar,
    visible: bool,
}

impl Bars {
    fn new(visible: bool) -> Bars {
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let summary = multi.add(ProgressBar::new_spinner());
        summary.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
        let cycle = multi.add(ProgressBar::new(0));
        cycle.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Bars { multi, cycle, summary, visible }
    }

    /// A line for the log: above the bars on a terminal, plain on stderr otherwise.
    fn log(&self, line: &str) {
        if self.visible {
            self.multi.suspend(|| eprintln!("{line}"));
        } else {
            eprintln!("{line}");
        }
    }
}

fn drive(store: Store, dir: &Path, opts: &RunOptions, _lock: RunLock) -> Result<Summary, SearchError> {
    let config = stored_config(&store)?;
    let baselines: Vec<(String, String)> = store
        .meta("baselines")?
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| SearchError(format!("{} holds no baselines", store.shown())))?;
    let template = store.meta("template")?.unwrap_or_else(|| generate::DEFAULT_TEMPLATE.to_string());
    nasc_runtime::available(config.train.device).map_err(SearchError)?;
    let generator: Box<dyn Generator> = match config.generator {
        GeneratorKind::Mutate => Box::new(generate::Mutate { max_mutations: config.mutate.max_mutations }),
        GeneratorKind::Openai => Box::new(generate::OpenAi::new(&config.openai, &config.sampling)),
    };
    if let Some(model) = store.meta("model")? {
        // A resumed run's server may have restarted since it loaded the run's last adapter.
        if let Some(dir) = store.meta("adapter_dir")? {
            if config.generator == GeneratorKind::Openai && config.finetune.load_adapter {
                generator.load_adapter(&model, Path::new(&dir))?;
            }
        }
        generator.set_model(&model);
    }
    store.lock_driver()?;
    // The threads of a driver before this one are gone: their leases go back at once.
    let handed_back = store.release_owned_by(LOCAL_OWNER_PREFIX)?;
    store.set_meta("state", "running")?;
    store.listen_for_results()?;
    let visible = opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut d = Driver {
        workers: opts.workers.unwrap_or(config.workers),
        config,
        store,
        dir: dir.to_path_buf(),
        generator,
        template,
        baselines,
        archives: HashMap::new(),
        failure: Arc::new(Mutex::new(None)),
        bars: Bars::new(visible),
        started: Instant::now(),
        finished_here: 0,
    };
    if handed_back > 0 {
        let (noun, verb) = if handed_back == 1 { ("candidate", "goes") } else { ("candidates", "go") };
        d.bars.log(&format!("{handed_back} {noun} the last driver's threads were training {verb} back to the queue"));
    }
    if d.workers == 0 {
        d.bars.log(&format!(
            "this process trains nothing (workers = 0): start workers with `nasc worker --store {}`",
            d.store.location().url()
        ));
    }
    let stop = AtomicBool::new(false);
    let location = d.store.location().clone();
    // The threads' own copy: the driver's is borrowed mutably while they run.
    let run_config = d.config.clone();
    let base = &run_config.train;
    let cache = DataCache::new(base.clone());
    let host = worker::hostname();
    let multi = d.bars.multi.clone();
    let log = move |line: &str| {
        if visible {
            multi.suspend(|| eprintln!("{line}"));
        } else {
            eprintln!("{line}");
        }
    };
    let bars: Vec<ProgressBar> = (0..d.workers)
        .map(|_| {
            let b = d.bars.multi.add(ProgressBar::new(0));
            b.set_style(
                ProgressStyle::with_template("  training {prefix} [{bar:30}] {pos}/{len} {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            b
        })
        .collect();
    let result = std::thread::scope(|s| {
        for (i, bar) in bars.iter().enumerate() {
            // One worker per device: worker i trains on GPU i (counting from the configured one).
            let device = match base.device {
                d if i == 0 => d,
                Device::Cpu => Device::Cpu,
                Device::Cuda(k) => Device::Cuda(k + i),
                Device::Wgpu(k) => Device::Wgpu(Some(k.unwrap_or(0) + i)),
            };
            let opts = WorkerOptions {
                name: worker::owner_name(&format!("{LOCAL_OWNER_PREFIX}{host}:{}:{i}", std::process::id())),
                device,
                data_root: None,
                datasets: None,
                max_candidates: None,
                idle_exit: None,
                until_run_ends: false,
                wait: Duration::from_millis(500),
                held: Default::default(),
            };
            let config = TrainConfig { device, ..base.clone() };
            let (location, run_config, cache, stop, log) = (&location, &run_config, &cache, &stop, &log);
            let failure = d.failure.clone();
            s.spawn(move || {
                let outcome = Store::open_at(location)
                    .map_err(SearchError::from)
                    .and_then(|store| worker::work(&store, &opts, run_config, &config, cache, bar, stop, log));
                if let Err(e) = outcome {
                    failure.lock().expect("no panic holding the failure").get_or_insert(e.0);
                }
            });
        }
        let r = d.cycles();
        stop.store(true, Ordering::SeqCst);
        r
    });
    for b in bars {
        b.finish_and_clear();
        d.bars.multi.remove(&b);
    }
    result?;
    d.store.set_meta("state", "finished")?;
    d.bars.summary.finish_and_clear();
    d.bars.cycle.finish_and_clear();
    d.summary()
}

fn binding_of(dataset: &str) -> Binding {
    binding::dataset(dataset).expect("datasets are validated with the config")
}

/// A seed for (run seed, cycle, slot), spread so neighbouring slots draw unrelated streams.
fn slot_seed(seed: u64, cycle: i64, slot: i64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((cycle as u64).wrapping_add(7) << 32) ^ (slot as u64));
    rng.next_u64()
}

impl Driver {
    fn options(&self, dataset: &str) -> Options {
        let mut o = Options::new(binding_of(dataset));
        o.threshold = self.config.novelty_threshold;
        o.file = "program.arch".into();
        o
    }

    /// The in-memory novelty archives, one per dataset, from every stored program judged `ok`.
    fn rebuild_archives(&mut self) -> Result<(), SearchError> {
        for c in self.store.all()? {
            if c.front_verdict != Verdict::Ok {
                continue;
            }
            let Some(program) = &c.program else { continue };
            let b = binding_of(&c.dataset);
            let Ok(checked) = check::check_source(program, b, &self.options(&c.dataset).budget) else { continue };
            let archive = self.archives.entry(c.dataset.clone()).or_insert_with(|| Archive::in_memory(b));
            archive
                .add(&novelty::fingerprint(&checked.graph), &c.id.to_string())
                .map_err(|e| SearchError(e.to_string()))?;
        }
        Ok(())
    }

    fn archive(&mut self, dataset: &str) -> &mut Archive {
        self.archives.entry(dataset.to_string()).or_insert_with(|| Archive::in_memory(binding_of(dataset)))
    }

    /// Cycle 0: every baseline on every dataset, checked and trained, so candidates have parents with accuracies.
    fn baselines_phase(&mut self) -> Result<(), SearchError> {
        let done = self.store.slots(0)?;
        let datasets = self.config.datasets.clone();
        let total = (datasets.len() * self.baselines.len()) as u64;
        self.bars.cycle.set_prefix("baselines");
        self.bars.cycle.set_length(total);
        self.bars.cycle.set_message("training");
        let mut slot = 0i64;
        for dataset in &datasets {
            for (name, text) in self.baselines.clone() {
                if !done.contains(&slot) {
                    let opts = self.options(dataset);
                    let start = Instant::now();
                    let (verdict, program, diagnostic, params, macs, hash) =
                        match nasc_lang::syntax::parse(&text).map_err(|d| vec![d]).and_then(|p| {
                            check::check(&p, opts.binding, &opts.budget).map(|c| (nasc_lang::syntax::fmt::print(&p), c))
                        }) {
                            Ok((canonical, checked)) => {
                                let fp = novelty::fingerprint(&checked.graph);
                                let id_hint = format!("baseline {name}");
                                self.archive(dataset).add(&fp, &id_hint).map_err(|e| SearchError(e.to_string()))?;
                                (
                                    Verdict::Ok,
                                    Some(canonical),
                                    None,
                                    Some(checked.graph.params() as i64),
                                    Some(checked.graph.macs() as i64),
                                    Some(fp.hash.hex()),
                                )
                            }
                            Err(diags) => (
                                diags.first().map_or(Verdict::ShapeError, Verdict::of_diagnostic),
                                Some(text.clone()),
                                Some(nasc_lang::diag::render(&diags, &name, &text, false)),
                                None,
                                None,
                                None,
                            ),
                        };
                    let ok = verdict == Verdict::Ok;
                    if !ok {
                        self.bars.log(&format!("baseline {name} does not check on {dataset}; it is left out there"));
                    }
                    let row = NewCandidate {
                        cycle: 0,
                        slot,
                        dataset: dataset.clone(),
                        baseline: name.clone(),
                        // No generator made a baseline; the column names it for what it is.
                        generator: "baseline".into(),
                        program,
                        attempts: 1,
                        attempt_verdicts: vec![verdict],
                        diagnostic,
                        params,
                        macs,
                        hash,
                        check_ns: start.elapsed().as_nanos() as i64,
                        ..NewCandidate::new(Role::Baseline, verdict)
                    };
                    self.store.insert(&row, ok)?;
                }
                slot += 1;
            }
        }
        self.bars.cycle.set_position(total - self.store.claimed(0)?.len().min(total as usize) as u64);
        self.wait_for_cycle(0, "baselines")
    }

    /// The trained programs of `dataset` from cycles before `cycle`, the parents a candidate may have.
    fn pool(&self, all: &[Candidate], dataset: &str, cycle: i64) -> Vec<Candidate> {
        let trained: Vec<Candidate> = all
            .iter()
            .filter(|c| c.dataset == dataset && c.cycle < cycle && c.verdict == Verdict::Ok && c.accuracy.is_some())
            .cloned()
            .collect();
        if !trained.is_empty() {
            return trained;
        }
        // No baseline trained (all failed): mutate the checked baselines anyway.
        all.iter()
            .filter(|c| c.dataset == dataset && c.role == Role::Baseline && c.front_verdict == Verdict::Ok)
            .cloned()
            .collect()
    }

    fn cycle(&mut self, cycle: i64) -> Result<(), SearchError> {
        let n = self.config.candidates as i64;
        let done = self.store.slots(cycle)?;
        let pending: Vec<i64> = (0..n).filter(|s| !done.contains(s)).collect();
        let finetuned = self.store.meta(&format!("curated_{cycle}"))?.is_some();
        // A curated cycle is done; rows a quorum left behind are the workers' to finish.
        if pending.is_empty() && finetuned {
            return Ok(());
        }
        self.bars.cycle.set_prefix(format!("cycle {cycle}/{}", self.config.cycles));
        self.bars.cycle.set_length(n as u64);
        self.bars.cycle.set_position((n - pending.len() as i64) as u64);
        self.bars.cycle.set_message("generating");
        if !pending.is_empty() {
            self.generate(cycle, &pending)?;
        }
        self.bars.cycle.set_message("training");
        self.wait_for_cycle(cycle, "candidates")?;
        if !finetuned {
            self.curate(cycle)?;
        }
        self.bars.log(&self.summary_line(cycle)?);
        Ok(())
    }

    /// Generates, judges and records the candidates of `slots`, each with up to `retries` further attempts.
    fn generate(&mut self, cycle: i64, slots: &[i64]) -> Result<(), SearchError> {
        let all = self.store.all()?;
        let mut work = Vec::new();
        // A language model answers `n` candidates of one dataset with one request: slots
        // d, d + D, d + 2D, ... (D datasets) form groups of n that share a parent.
        let openai = self.config.generator == GeneratorKind::Openai;
        let group = if openai { self.config.sampling.n.max(1) as i64 } else { 1 };
        let datasets = self.config.datasets.len() as i64;
        for &slot in slots {
            let dataset = self.config.datasets[slot as usize % self.config.datasets.len()].clone();
            let pool = self.pool(&all, &dataset, cycle);
            if pool.is_empty() {
                return Err(SearchError(format!("no baseline checks on {dataset}: nothing to search from")));
            }
            let k = slot / datasets;
            let lead = (k - k % group) * datasets + slot % datasets;
            let position = (k % group) as usize;
            let seed = slot_seed(self.config.seed, cycle, lead);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let parent = (0..self.config.tournament)
                .map(|_| &pool[(rng.next_u64() % pool.len() as u64) as usize])
                .max_by(|a, b| a.accuracy.unwrap_or(-1.0).total_cmp(&b.accuracy.unwrap_or(-1.0)).then(b.id.cmp(&a.id)))
                .expect("a tournament has members")
                .clone();
            let program = parent.program.clone().unwrap_or_default();
            let prompt = generate::render(&self.template, &program, &dataset, parent.accuracy, &self.config.goal);
            let base = Base::new(&program, &self.options(&dataset));
            let request = Request {
                prompt,
                base: program,
                dataset: dataset.clone(),
                seed,
                feedback: Vec::new(),
                temperature: None,
                avoid: Vec::new(),
            };
            work.push(SlotWork {
                slot,
                lead,
                position,
                stored: false,
                dataset,
                parent,
                base,
                request,
                verdicts: Vec::new(),
                result: None,
                generate_ns: 0,
            });
        }
        let concurrency =
            if self.config.generator == GeneratorKind::Openai { self.config.openai.concurrency } else { 1 };
        for attempt in 0..=self.config.retries {
            // Slots not yet ok, unless their last request failed at the server (a retry would
            // ask the same of it).
            let open: Vec<usize> = (0..work.len())
                .filter(|i| work[*i].result.as_ref().is_none_or(|(j, _)| j.verdict != Verdict::Ok))
                .filter(|i| work[*i].verdicts.last() != Some(&Verdict::GeneratorError))
                .collect();
            if open.is_empty() {
                break;
            }
            // Slots of one group still on their first prompt go in one request; a retry, which
            // carries its own diagnostic, goes alone.
            let mut batches: Vec<Vec<usize>> = Vec::new();
            let mut by_lead: HashMap<i64, usize> = HashMap::new();
            for i in open {
                if work[i].request.feedback.is_empty() && group > 1 {
                    if let Some(&b) = by_lead.get(&work[i].lead) {
                        batches[b].push(i);
                        continue;
                    }
                    by_lead.insert(work[i].lead, batches.len());
                }
                batches.push(vec![i]);
            }
            // A group asks for replies up to its last open slot's place in it, and each slot
            // takes the reply at its place: a group resumed with some slots done gets the
            // replies the whole group would have got, never a sibling's again.
            let requests: Vec<(Request, usize)> = batches
                .iter()
                .map(|b| {
                    let n = if b.len() == 1 && !work[b[0]].request.feedback.is_empty() {
                        1
                    } else {
                        b.iter().map(|&i| work[i].position + 1).max().unwrap_or(1)
                    };
                    (work[b[0]].request.clone(), n)
                })
                .collect();
            let generator = &*self.generator;
            let answers = generate::parallel(&requests, concurrency, |(r, n)| {
                if *n == 1 {
                    generator.generate(r).map(|reply| vec![reply])
                } else {
                    generator.generate_n(r, *n)
                }
            });
            // A request the server refused or failed gives its slots the verdict
            // `generator_error` (a slot with an earlier reply keeps that reply's judgement); only
            // a server that cannot be reached stops the run.
            let mut replies = Vec::new();
            for (batch, answer) in batches.into_iter().zip(answers) {
                match answer {
                    Ok(mut answer) if answer.len() == 1 => replies.push((batch[0], answer.remove(0))),
                    Ok(answer) => {
                        let mut answer: Vec<Option<generate::Reply>> = answer.into_iter().map(Some).collect();
                        for i in batch {
                            let reply = answer.get_mut(work[i].position).and_then(Option::take);
                            let reply = reply.ok_or_else(|| {
                                SearchError(format!("the generator answered too few replies for slot {}", work[i].slot))
                            })?;
                            replies.push((i, reply));
                        }
                    }
                    Err(e) if e.fatal => return Err(e.into()),
                    Err(e) => {
                        for i in batch {
                            let w = &mut work[i];
                            w.verdicts.push(Verdict::GeneratorError);
                            if w.result.is_none() {
                                let nothing = generate::Reply {
                                    text: String::new(),
                                    tokens: None,
                                    elapsed: std::time::Duration::ZERO,
                                    truncated: false,
                                };
                                w.result = Some((Judgement::generator_error(e.message.clone()), nothing));
                            }
                        }
                    }
                }
            }
            // Every first request failing is a server that is misconfigured for this run (a
            // model it does not serve, a field it refuses): one error, not a cycle of verdicts.
            if attempt == 0 && !work.is_empty() && work.iter().all(|w| w.verdicts == [Verdict::GeneratorError]) {
                let message = work[0].result.as_ref().map(|(j, _)| j.message.clone()).unwrap_or_default();
                return Err(SearchError(format!("every request of cycle {cycle} failed; the first: {message}")));
            }
            for (i, reply) in replies {
                let w = &mut work[i];
                w.generate_ns += reply.elapsed.as_nanos() as i64;
                let opts = self.options(&w.dataset);
                let archive =
                    self.archives.entry(w.dataset.clone()).or_insert_with(|| Archive::in_memory(opts.binding));
                let j = judge_reply(&w.base, &reply.text, reply.truncated, Some(archive), &opts);
                w.verdicts.push(j.verdict);
                if j.verdict == Verdict::Ok {
                    if let Some(fp) = &j.fingerprint {
                        archive
                            .add(fp, &format!("cycle {cycle} slot {}", w.slot))
                            .map_err(|e| SearchError(e.to_string()))?;
                    }
                } else if attempt < self.config.retries {
                    w.request.feedback.push((reply.text.clone(), format!("{}: {}", j.verdict, j.message)));
                    // A language model's retry is sampled with a seed of its own (the group's
                    // would draw its first reply's tokens again where the prompts agree), and
                    // hotter after a reply that repeated a network. (`mutate` mixes the
                    // attempt into its seed itself.)
                    if openai {
                        w.request.seed = slot_seed(self.config.seed ^ ((attempt as u64 + 1) << 48), cycle, w.slot);
                    }
                    // Its grammar also leaves out the lines that made the repeated network.
                    if openai && matches!(j.verdict, Verdict::Duplicate | Verdict::NearDuplicate) {
                        let s = &self.config.sampling;
                        w.request.temperature = Some(s.temperature.max(s.retry_temperature));
                        w.request.avoid.extend(j.diff.as_deref().map(avoid_of).unwrap_or_default());
                    }
                }
                w.result = Some((j, reply));
            }
            // A slot is stored once its verdict is final (ok, a failure with no retry left, or a
            // request the server refused), so a kill loses only the slots still in play.
            for w in &mut work {
                let last = w.verdicts.last().copied();
                let done = last == Some(Verdict::Ok)
                    || last == Some(Verdict::GeneratorError)
                    || (attempt == self.config.retries && last.is_some());
                if !w.stored && done {
                    self.record(cycle, w)?;
                    w.stored = true;
                }
            }
        }
        for w in &work {
            if !w.stored {
                self.record(cycle, w)?;
            }
        }
        Ok(())
    }

    /// Stores a slot's row: `claimed` for training when its verdict is ok, else `finished`.
    fn record(&mut self, cycle: i64, w: &SlotWork) -> Result<(), SearchError> {
        let (j, reply) = w.result.as_ref().expect("every slot was attempted");
        let ok = j.verdict == Verdict::Ok;
        let row = NewCandidate {
            cycle,
            slot: w.slot,
            role: Role::Candidate,
            dataset: w.dataset.clone(),
            baseline: w.parent.baseline.clone(),
            parent_id: Some(w.parent.id),
            generator: self.generator.name().into(),
            adapter: self.generator.adapter(),
            prompt: Some(w.request.prompt.clone()),
            reply: (j.verdict != Verdict::GeneratorError).then(|| reply.text.clone()),
            extracted: j.extracted.clone(),
            diff: j.diff.clone(),
            program: j.program.clone().or(j.candidate.clone()),
            attempts: w.verdicts.len() as i64,
            attempt_verdicts: w.verdicts.clone(),
            front_verdict: j.verdict,
            diagnostic: (!j.message.is_empty()).then(|| j.message.clone()),
            novelty: j.novelty.as_ref().map(|n| format!("{:?}", n.verdict).to_lowercase()),
            similarity: j.novelty.as_ref().and_then(|n| n.nearest.as_ref()).map(|m| m.similarity),
            hash: j.hash.clone(),
            params: j.params.map(|p| p as i64),
            macs: j.macs.map(|p| p as i64),
            reply_lines: Some(reply.text.lines().count() as i64),
            reply_tokens: reply.tokens,
            diff_lines: j.diff_lines.map(|d| d as i64),
            generate_ns: w.generate_ns,
            extract_ns: j.timings.extract_ns as i64,
            apply_ns: j.timings.apply_ns as i64,
            parse_ns: j.timings.parse_ns as i64,
            check_ns: j.timings.check_ns as i64,
            novelty_ns: j.timings.novelty_ns as i64,
            tolerances: j.tolerances.iter().map(|t| t.kind().to_string()).collect(),
        };
        self.store.insert(&row, ok)?;
        if !ok {
            self.finished_here += 1;
            self.bars.cycle.inc(1);
        }
        Ok(())
    }

    /// Cycle 0, then every cycle; then, where this process trains, what quorums left behind.
    fn cycles(&mut self) -> Result<(), SearchError> {
        self.rebuild_archives()?;
        self.baselines_phase()?;
        for cycle in 1..=self.config.cycles as i64 {
            self.cycle(cycle)?;
        }
        if self.workers > 0 && self.store.unfinished()? > 0 {
            self.bars.cycle.set_message("finishing what the quorums left");
            while self.store.unfinished()? > 0 {
                self.check_workers()?;
                self.store.wait(Duration::from_millis(500), Duration::from_millis(200))?;
            }
        }
        Ok(())
    }

    /// The first error of a training thread, as the run's.
    fn check_workers(&self) -> Result<(), SearchError> {
        match self.failure.lock().expect("no panic holding the failure").take() {
            Some(e) => Err(SearchError(format!("a training thread stopped: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits until the workers have trained `cycle`'s claimed rows: all of them for cycle 0;
    /// for later cycles, the `[queue]` quorum, or until its deadline.
    fn wait_for_cycle(&mut self, cycle: i64, what: &str) -> Result<(), SearchError> {
        let q = self.config.queue.clone();
        let first = self.store.progress(cycle)?;
        if first.claimed == 0 {
            return Ok(());
        }
        if cycle == 0 {
            self.bars.log(&format!("training {} {what}", first.claimed));
        }
        let enqueued = Instant::now();
        let mut seen = first.to_train - first.claimed;
        let mut said_waiting = false;
        loop {
            self.check_workers()?;
            let p = self.store.progress(cycle)?;
            let done = p.to_train - p.claimed;
            if done != seen {
                self.finished_here += (done - seen).max(0) as usize;
                seen = done;
                // The summary reads every row: only when something finished.
                if cycle > 0 {
                    self.bars.summary.set_message(self.summary_line(cycle)?);
                }
            }
            self.bars.cycle.set_position(p.finished as u64);
            if p.claimed == 0 {
                return Ok(());
            }
            if cycle > 0 && done as f64 >= (q.quorum * p.to_train as f64).ceil() {
                self.bars.log(&format!(
                    "cycle {cycle}: quorum reached ({done} of {} trained); {} keep training",
                    p.to_train, p.claimed
                ));
                return Ok(());
            }
            if cycle > 0 && q.deadline_s.is_some_and(|d| enqueued.elapsed().as_secs_f64() >= d) {
                self.bars.log(&format!(
                    "cycle {cycle}: deadline reached ({done} of {} trained); {} keep training",
                    p.to_train, p.claimed
                ));
                return Ok(());
            }
            if self.workers == 0 && !said_waiting && enqueued.elapsed() > Duration::from_secs(30) {
                let live = self.store.workers()?.iter().filter(|w| w.state != "stopped").count();
                if live == 0 {
                    self.bars.log(&format!(
                        "waiting for workers: none is running; start one with `nasc worker --store {}`",
                        self.store.location().url()
                    ));
                    said_waiting = true;
                }
            }
            self.store.wait(Duration::from_millis(500), Duration::from_millis(200))?;
        }
    }

    fn curate(&mut self, cycle: i64) -> Result<(), SearchError> {
        let all = self.store.all()?;
        let corpus = curate::pairs(&all, &self.config.curation);
        let path = self.dir.join("corpus").join(format!("after-cycle-{cycle}.jsonl"));
        curate::write_jsonl(&corpus, &path).map_err(SearchError)?;
        self.bars.log(&format!("cycle {cycle}: {} curated pairs in {}", corpus.len(), path.display()));
        if cycle < self.config.cycles as i64 {
            let ft = &self.config.finetune;
            if !ft.enabled() {
                self.bars.log(&format!(
                    "cycle {cycle}: no fine-tuning ([finetune] has no model and no command): the next cycle uses the same generator"
                ));
            } else if corpus.is_empty() {
                self.bars.log(&format!(
                    "cycle {cycle}: no fine-tuning: no candidate beat its parent yet, so the corpus is empty"
                ));
            } else {
                let adapter = self.dir.join("adapters").join(format!("cycle-{}", cycle + 1));
                // Continue from the adapter the generator uses now: the last one fine-tuned here,
                // else the configured starting adapter.
                let init = self.store.meta("adapter_dir")?.map(PathBuf::from).or_else(|| ft.init_adapter.clone());
                let served = self.generator.adapter().unwrap_or_default();
                let job = curate::FinetuneJob {
                    corpus: &path,
                    adapter: &adapter,
                    cycle: cycle + 1,
                    served_model: &served,
                    init: init.as_deref(),
                };
                self.bars.cycle.set_message("fine-tuning");
                let started = Instant::now();
                let done = self.bars.multi.suspend(|| curate::finetune(ft, &job)).map_err(SearchError)?;
                let model = ft.adapter_name.replace("{cycle}", &(cycle + 1).to_string());
                if self.config.generator == GeneratorKind::Openai && ft.load_adapter {
                    self.generator.load_adapter(&model, &adapter)?;
                }
                self.generator.set_model(&model);
                self.store.set_meta("model", &model)?;
                let absolute = std::path::absolute(&adapter).unwrap_or_else(|_| adapter.clone());
                self.store.set_meta("adapter_dir", &absolute.display().to_string())?;
                self.bars.log(&format!(
                    "cycle {cycle}: fine-tuned {} on {} pairs in {:.0} s ({done}); the generator now asks for {model}",
                    adapter.display(),
                    corpus.len(),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        self.store.set_meta(&format!("curated_{cycle}"), "1")?;
        Ok(())
    }

    fn summary_line(&self, cycle: i64) -> Result<String, SearchError> {
        let all = self.store.all()?;
        let cands: Vec<&Candidate> =
            all.iter().filter(|c| c.role == Role::Candidate && c.status == Status::Finished).collect();
        let valid = cands.iter().filter(|c| c.front_verdict == Verdict::Ok).count();
        let best =
            cands.iter().filter_map(|c| c.accuracy).fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
        let hours = self.started.elapsed().as_secs_f64() / 3600.0;
        Ok(format!(
            "cycle {cycle}/{} · valid {:.1}% of {} · best accuracy {} · {:.0} candidates/hour",
            self.config.cycles,
            if cands.is_empty() { 0.0 } else { 100.0 * valid as f64 / cands.len() as f64 },
            cands.len(),
            best.map_or_else(|| "-".to_string(), |b| format!("{b:.4}")),
            if hours > 0.0 { self.finished_here as f64 / hours } else { 0.0 },
        ))
    }

    fn summary(&self) -> Result<Summary, SearchError> {
        let all = self.store.all()?;
        let cands: Vec<&Candidate> = all.iter().filter(|c| c.role == Role::Candidate).collect();
        let mut verdicts = std::collections::BTreeMap::new();
        for c in &cands {
            *verdicts.entry(c.verdict.to_string()).or_insert(0) += 1;
        }
        let accs: Vec<(f64, i64)> = cands.iter().filter_map(|c| c.accuracy.map(|a| (a, c.id))).collect();
        let best = accs.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0));
        let elapsed = self.started.elapsed().as_secs_f64();
        Ok(Summary {
            run: self.dir.clone(),
            cycles: self.config.cycles,
            candidates: cands.len(),
            valid_rate: if cands.is_empty() {
                0.0
            } else {
                cands.iter().filter(|c| c.front_verdict == Verdict::Ok).count() as f64 / cands.len() as f64
            },
            verdicts,
            best_accuracy: best.map(|b| b.0),
            best_candidate: best.map(|b| b.1),
            mean_accuracy: (!accs.is_empty()).then(|| accs.iter().map(|a| a.0).sum::<f64>() / accs.len() as f64),
            candidates_per_hour: if elapsed > 0.0 { self.finished_here as f64 * 3600.0 / elapsed } else { 0.0 },
            elapsed_s: elapsed,
        })
    }
}

/// Checks and trains one stored program.
pub fn train_one(c: &Candidate, data: &(Dataset, Dataset), base: &TrainConfig, bar: &ProgressBar) -> Trained {
    let start = Instant::now();
    let config = TrainConfig { dataset: c.dataset.clone(), save: None, ..base.clone() };
    let program = c.program.clone().unwrap_or_default();
    let graph =
        match check::check_source(&program, binding_of(&c.dataset), &Options::new(binding_of(&c.dataset)).budget) {
            Ok(checked) => checked.graph,
            Err(_) => {
                return Trained {
                    message: "the stored program no longer checks".into(),
                    train_ns: start.elapsed().as_nanos() as i64,
                    ..Trained::new(Verdict::Crashed)
                }
            }
        };
    let r = train::train(&graph, &data.0, &data.1, &config, bar);
    Trained {
        verdict: r.verdict,
        message: r.message.clone(),
        accuracy: r.metrics.test_accuracy,
        train_loss: r.metrics.train_loss,
        test_loss: r.metrics.test_loss,
        images_per_s: Some(r.metrics.images_per_s),
        train_s: Some(r.timings.total_s),
        result_json: serde_json::to_string(&r).unwrap_or_default(),
        train_ns: start.elapsed().as_nanos() as i64,
    }
}

/// One retrained candidate of `reeval`.
#[derive(Clone, Debug, Serialize)]
pub struct Reevaluated {
    pub id: i64,
    pub dataset: String,
    pub proxy_accuracy: f64,
    pub verdict: Verdict,
    pub accuracy: Option<f64>,
    pub train_s: Option<f64>,
}

/// The result of `nasc reeval`: the top candidates retrained longer, and how well the one-epoch
/// ranking predicted the long one (over the candidates whose long run ended `ok`).
#[derive(Clone, Debug, Serialize)]
pub struct Reeval {
    pub epochs: usize,
    pub candidates: Vec<Reevaluated>,
    pub spearman_rho: Option<f64>,
    pub kendall_tau: Option<f64>,
}

/// Retrains the `top` candidates of the run stored at `run` (by first-epoch accuracy) for `epochs` epochs.
pub fn reeval(run: &Location, top: usize, epochs: usize, progress: bool) -> Result<Reeval, SearchError> {
    let store = Store::open_at(run)?;
    let config = stored_config(&store)?;
    nasc_runtime::available(config.train.device).map_err(SearchError)?;
    let mut cands: Vec<Candidate> =
        store.all()?.into_iter().filter(|c| c.role == Role::Candidate && c.accuracy.is_some()).collect();
    cands.sort_by(|a, b| b.accuracy.unwrap_or(0.0).total_cmp(&a.accuracy.unwrap_or(0.0)).then(a.id.cmp(&b.id)));
    cands.truncate(top);
    if cands.len() < 2 {
        return Err(SearchError(format!(
            "{} has {} trained candidates; a ranking needs at least 2",
            store.shown(),
            cands.len()
        )));
    }
    let long = TrainConfig { epochs, time_limit: None, ..config.train.clone() };
    let visible = progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if visible { ProgressBar::new(0) } else { ProgressBar::hidden() };
    let mut data: HashMap<String, (Dataset, Dataset)> = HashMap::new();
    let mut out = Vec::new();
    for c in &cands {
        // A candidate an earlier reeval of as many epochs finished (one that was stopped) is
        // kept, not trained again: a stopped reeval goes on where it was. Its dataset is loaded
        // only for the first candidate that trains on it.
        let (accuracy, verdict, train_s, kept) = match store.reeval_of(c.id, epochs as i64)? {
            Some((accuracy, verdict, train_s)) => (accuracy, verdict, Some(train_s), true),
            None => {
                if !data.contains_key(&c.dataset) {
                    let cfg = TrainConfig { dataset: c.dataset.clone(), ..long.clone() };
                    let d =
                        train::load_data(&cfg).map_err(|e| SearchError(format!("cannot load {}: {e}", c.dataset)))?;
                    data.insert(c.dataset.clone(), d);
                }
                let t = train_one(c, &data[&c.dataset], &long, &bar);
                store.record_reeval(c.id, epochs as i64, t.accuracy, t.verdict, t.train_s.unwrap_or(0.0))?;
                (t.accuracy, t.verdict, t.train_s, false)
            }
        };
        if !visible {
            eprintln!(
                "candidate {}: one epoch {:.4}, {epochs} epochs {} ({}){}",
                c.id,
                c.accuracy.unwrap_or(0.0),
                accuracy.map_or("-".to_string(), |a| format!("{a:.4}")),
                verdict,
                if kept { ", stored by an earlier reeval" } else { "" }
            );
        }
        out.push(Reevaluated {
            id: c.id,
            dataset: c.dataset.clone(),
            proxy_accuracy: c.accuracy.unwrap_or(0.0),
            verdict,
            accuracy,
            train_s,
        });
    }
    bar.finish_and_clear();
    let (a, b): (Vec<f64>, Vec<f64>) = out.iter().filter_map(|r| r.accuracy.map(|l| (r.proxy_accuracy, l))).unzip();
    Ok(Reeval {
        epochs,
        spearman_rho: super::report::spearman(&a, &b),
        kendall_tau: super::report::kendall(&a, &b),
        candidates: out,
    })
}

#[cfg(test)]
mod lock_tests {
    use super::RunLock;

    #[test]
    fn one_process_drives_a_run_and_the_next_may_once_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunLock::take(dir.path()).unwrap();
        let second = RunLock::take(dir.path()).err().expect("a second driver is refused");
        assert!(second.0.contains("being driven by another process"), "{}", second.0);
        assert!(second.0.contains(&format!("process {}", std::process::id())), "{}", second.0);
        drop(held);
        RunLock::take(dir.path()).unwrap();
    }
}
