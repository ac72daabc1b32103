//! The search commands: search (start or resume a run), report (tables, JSON, CSV, plots), reeval, corpus.
//! Reads flags and the config, calls `search`, prints; a failed run is an error message and exit 1, bad usage exit 2.

use super::UsageError;
use clap::Args;
use nasc_runtime::Device;
use nasc_search::store::{Location, DB_FILE, STORE_FILE};
use nasc_search::worker::{self, WorkerOptions};
use nasc_search::{self, report, RunOptions, SearchConfig, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
#[command(after_help = "Example:\n  nasc corpus --out format.jsonl\n  \
nasc lm finetune --model SmolLM2-135M-Instruct.Q4_1.gguf --data format.jsonl --out cycle0-adapter\n\n\
Each example is the prompt the search would send for a baseline (its numbered program, the dataset, the goal) and, \
as the reply, the canonical diff of one `mutate` edit that the verdict pipeline judges ok. Edits are drawn \
round-robin over the mutation kinds; a child with the structure of an earlier one is dropped. The adapter this \
trains is the search's cycle 0 (`[finetune] init_adapter`).")]
pub struct CorpusArgs {
    /// Where the JSONL goes.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Baseline programs (files or folders of .arch files).
    #[arg(long, value_name = "PATH", default_value = "zoo")]
    baselines: Vec<PathBuf>,
    /// Datasets whose bindings the examples are written for.
    #[arg(long, value_name = "NAME", default_value = "fashion-mnist", value_delimiter = ',')]
    datasets: Vec<String>,
    /// Examples per baseline and dataset, at most. The default (4 over the 17 zoo baselines) is
    /// sized to train with `nasc lm finetune` in well under an hour on two cores (BENCHMARKS.md).
    #[arg(long, value_name = "N", default_value_t = 4)]
    per_program: usize,
    /// Each edit makes 1 to this many mutations.
    #[arg(long, value_name = "N", default_value_t = 2)]
    max_mutations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The prompt template (default: the search's built-in one, prompts/search.md).
    #[arg(long, value_name = "FILE")]
    template: Option<PathBuf>,
    /// The goal the prompt states (the search's default).
    #[arg(long)]
    goal: Option<String>,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SearchArgs {
    /// The run's settings (TOML; see examples/search.toml).
    #[arg(long, value_name = "FILE", conflicts_with = "resume", required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in this folder: unfinished candidates are redone, finished ones kept.
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// The run folder to create [default: runs/<config file's name>].
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Training threads of this process (overrides the config's `workers`); 0 leaves all
    /// training to `nasc worker` processes.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Where the run is stored: postgres://USER@HOST:PORT/DATABASE (an empty database; workers
    /// on other machines reach it) or sqlite:PATH [default: RUN/run.db]. The run folder notes
    /// it, so `--resume RUN` and `nasc report RUN` find it.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Print the end-of-run summary as JSON, and no progress bars.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
nasc search --config run.toml --out runs/a --store postgres://nasc@db:5432/runs --workers 0\n  \
nasc worker --store postgres://nasc@db:5432/runs --device cuda:0\n\n\
A worker leases one candidate at a time, trains it with the run's [train] settings and renews its lease \
every [queue] heartbeat_s while it trains; a worker that is killed loses nothing: its lease runs out after \
heartbeat_s + grace_s and another worker takes the candidate. Workers may start before the driver (they wait \
for the run, see --wait-for-run), join or leave at any time, and leave by themselves once the driver has \
finished and nothing is left to train. SIGTERM or Ctrl-C (a preemption, a pod's deletion) hands the \
candidate being trained back at once (exit 143 or 130). On PostgreSQL an idle worker sleeps until told of \
new work (LISTEN/NOTIFY); on SQLite (workers on the driver's machine only) it polls. See docs/scale.md.")]
pub struct WorkerArgs {
    /// The run's store: postgres://USER@HOST:PORT/DATABASE, sqlite:PATH, or a run folder.
    #[arg(long, value_name = "URL")]
    store: String,
    /// Where to train: cpu, cuda:N, wgpu[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// The folder holding the datasets [default: the run's [train] data_root].
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// Train only candidates of these datasets [default: all of the run's].
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    datasets: Option<Vec<String>>,
    /// The worker's name in the store [default: HOST-PID].
    #[arg(long)]
    name: Option<String>,
    /// Leave after this many candidates.
    #[arg(long, value_name = "N")]
    max_candidates: Option<usize>,
    /// Leave after this many seconds without work.
    #[arg(long, value_name = "SECONDS")]
    idle_exit: Option<f64>,
    /// Wait this long for the run to exist (the driver may start after its workers).
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    wait_for_run: f64,
    /// Print what the worker did as JSON when it leaves, and no progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The run folder (or a store URL: postgres://…, sqlite:PATH); with several (the arms of
    /// an experiment), their rows side by side under each one's name.
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<String>,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the per-cycle table as CSV.
    #[arg(long)]
    csv: bool,
    /// Write the plots (SVG, and PNG when a font is found) into this folder [default: RUN/plots;
    /// none for a store URL].
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Write no plots.
    #[arg(long, conflicts_with = "plots")]
    no_plots: bool,
}

#[derive(Args)]
pub struct ReevalArgs {
    /// The run folder, or a store URL (postgres://…, sqlite:PATH).
    run: String,
    /// Retrain this many candidates, the best by first-epoch accuracy.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Epochs of the long training.
    #[arg(long, value_name = "E", default_value_t = 50)]
    epochs: usize,
    #[arg(long)]
    json: bool,
}

fn failed(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

pub fn search(a: SearchArgs) -> Result<ExitCode, UsageError> {
    let store =
        a.store.as_deref().map(Location::parse).transpose().map_err(|e| UsageError(format!("--store {}", e.0)))?;
    let opts = RunOptions { workers: a.workers, store, progress: !a.json };
    let result = match (&a.config, &a.resume) {
        (_, Some(run)) => {
            if opts.store.is_none() && !run.join(DB_FILE).is_file() && !run.join(STORE_FILE).is_file() {
                return Err(UsageError(format!("{} is not a run folder: it has no {DB_FILE}", run.display())));
            }
            nasc_search::resume(run, &opts)
        }
        (Some(path), None) => {
            let config = SearchConfig::load(path).map_err(|e| UsageError(e.0))?;
            let out = a.out.clone().unwrap_or_else(|| {
                PathBuf::from("runs").join(path.file_stem().map_or_else(|| "search".into(), |s| s.to_os_string()))
            });
            if Store::holds_run(&out) {
                return Err(UsageError(format!(
                    "{} already holds a run; continue it with `nasc search --resume {}` or choose another --out",
                    out.display(),
                    out.display()
                )));
            }
            nasc_search::start(&config, &out, &opts)
        }
        (None, None) => return Err(UsageError("give --config FILE or --resume RUN".into())),
    };
    match result {
        Ok(summary) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary).expect("the summary serialises"));
            } else {
                println!(
                    "run {}: {} candidates, valid {:.1}%, best accuracy {}, mean {}, {:.0} candidates/hour\nverdicts: {}",
                    summary.run.display(),
                    summary.candidates,
                    100.0 * summary.valid_rate,
                    summary.best_accuracy.map_or("-".into(), |b| format!("{b:.4}")),
                    summary.mean_accuracy.map_or("-".into(), |b| format!("{b:.4}")),
                    summary.candidates_per_hour,
                    summary.verdicts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(e)),
    }
}

pub fn report(a: ReportArgs) -> Result<ExitCode, UsageError> {
    // Each run under the name it is shown by: its folder's name, or its path where two share one.
    let label = |run: &String| {
        if run.contains(':') && Location::parse(run).is_ok() {
            return Location::parse(run).map(|l| l.shown()).unwrap_or_default();
        }
        let path = Path::new(run);
        path.file_name().map_or_else(|| run.clone(), |n| n.to_string_lossy().into())
    };
    let mut runs = Vec::new();
    for run in &a.runs {
        let location = Location::resolve(run).map_err(|e| UsageError(e.0))?;
        let store = Store::open_at(&location).map_err(|e| UsageError(e.0))?;
        let all = store.all().map_err(|e| UsageError(e.0))?;
        let shared = a.runs.iter().filter(|r| label(r) == label(run)).count() > 1;
        let name = if shared { run.clone() } else { label(run) };
        let folder = match location {
            Location::Sqlite(_) if Path::new(run).is_dir() => Some(PathBuf::from(run)),
            Location::Sqlite(ref db) if !run.starts_with("sqlite:") => db.parent().map(Path::to_path_buf),
            _ if Path::new(run).is_dir() => Some(PathBuf::from(run)),
            _ => None,
        };
        runs.push((folder, name, all));
    }
    let several = runs.len() > 1;
    let mut reports = Vec::new();
    for (folder, name, all) in &runs {
        let r = report::build(all);
        // One folder of plots per run: RUN/plots, or DIR/NAME under --plots with several runs; a
        // store given by URL has no folder, so its plots need --plots.
        let plots_dir = match (&a.plots, folder) {
            (Some(dir), _) if several => Some(dir.join(name.replace(['/', ':', '@', '?'], "_"))),
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(folder)) => Some(folder.join("plots")),
            (None, None) => None,
        };
        if !a.no_plots && plots_dir.is_none() {
            eprintln!("plots: none for {name} (a store URL has no run folder); give --plots DIR for them");
        }
        if let (false, Some(dir)) = (a.no_plots, plots_dir) {
            match report::plots(&r, all, &dir) {
                Ok(plots) => {
                    if !a.json && !a.csv {
                        eprintln!(
                            "plots: {}",
                            plots.written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                        );
                    }
                    // Said even with --json or --csv (it goes to stderr): a missing PNG is worth knowing.
                    if let Some(why) = &plots.png_skipped {
                        eprintln!("{why}");
                    }
                }
                Err(e) => return Ok(failed(e)),
            }
        }
        reports.push((name.clone(), r));
    }
    if !several {
        let r = &reports[0].1;
        if a.json {
            println!("{}", serde_json::to_string_pretty(r).expect("the report serialises"));
        } else if a.csv {
            print!("{}", report::csv(r));
        } else {
            print!("{}", report::text(r));
        }
    } else if a.json {
        let runs: Vec<_> = reports.iter().map(|(name, r)| serde_json::json!({"run": name, "report": r})).collect();
        println!("{}", serde_json::to_string_pretty(&runs).expect("the report serialises"));
    } else if a.csv {
        print!("{}", report::csv_runs(&reports));
    } else {
        for (name, r) in &reports {
            println!("== {name}");
            print!("{}", report::text(r));
            println!();
        }
        println!("Runs side by side");
        print!("{}", report::compare(&reports));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn reeval(a: ReevalArgs) -> Result<ExitCode, UsageError> {
    if a.top < 2 || a.epochs == 0 {
        return Err(UsageError("--top must be at least 2 and --epochs at least 1".into()));
    }
    let location = Location::resolve(&a.run).map_err(|e| UsageError(e.0))?;
    if let Location::Sqlite(db) = &location {
        if !db.is_file() {
            return Err(UsageError(format!("{} is not a run folder: it has no {DB_FILE}", a.run)));
        }
    }
    match nasc_search::reeval(&location, a.top, a.epochs, !a.json) {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).expect("the result serialises"));
            } else {
                println!("{:>6} {:<14} {:>9} {:>9} verdict", "id", "dataset", "1 epoch", format!("{} ep", r.epochs));
                for c in &r.candidates {
                    println!(
                        "{:>6} {:<14} {:>9.4} {:>9} {}",
                        c.id,
                        c.dataset,
                        c.proxy_accuracy,
                        c.accuracy.map_or("-".into(), |x| format!("{x:.4}")),
                        c.verdict
                    );
                }
                let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
                println!("Spearman rho {}  Kendall tau {}", f(r.spearman_rho), f(r.kendall_tau));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(e)),
    }
}

pub fn corpus(a: CorpusArgs) -> Result<ExitCode, UsageError> {
    let mut baselines = Vec::new();
    for path in &a.baselines {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| UsageError(format!("{}: {e}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "arch"))
                .collect();
            v.sort();
            v
        } else {
            vec![path.clone()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| UsageError(format!("{}: {e}", f.display())))?;
            let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            baselines.push((name, text));
        }
    }
    if baselines.is_empty() {
        return Err(UsageError("--baselines: no .arch files found".into()));
    }
    if a.per_program == 0 || a.max_mutations == 0 {
        return Err(UsageError("--per-program and --max-mutations must be at least 1".into()));
    }
    let template = match &a.template {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| UsageError(format!("--template {}: {e}", p.display())))?;
            let warning = nasc_search::generate::check_template(&t)
                .map_err(|e| UsageError(format!("--template {}: {e}", p.display())))?;
            if let Some(w) = warning {
                eprintln!("warning: --template {}: {w}", p.display());
            }
            t
        }
        None => nasc_search::generate::DEFAULT_TEMPLATE.to_string(),
    };
    let goal = a.goal.clone().unwrap_or_else(|| SearchConfig::default().goal);
    let spec = nasc_search::corpus::Spec {
        baselines: &baselines,
        datasets: &a.datasets,
        per_program: a.per_program,
        seed: a.seed,
        template: &template,
        goal: &goal,
        max_mutations: a.max_mutations,
    };
    let (examples, dropped) = nasc_search::corpus::build(&spec).map_err(UsageError)?;
    let mut text = String::new();
    for e in &examples {
        text += &serde_json::to_string(e).expect("an example serialises");
        text.push('\n');
    }
    std::fs::write(&a.out, &text).map_err(|e| UsageError(format!("{}: {e}", a.out.display())))?;
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for e in &examples {
        *kinds.entry(e.mutations[0]).or_default() += 1;
    }
    if a.json {
        let v =
            serde_json::json!({"examples": examples.len(), "bytes": text.len(), "kinds": kinds, "dropped": dropped});
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON serialises"));
    } else {
        println!("{} examples ({} bytes) written to {}", examples.len(), text.len(), a.out.display());
        println!("edit kinds: {}", kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "));
        if !dropped.is_empty() {
            println!(
                "proposals left out: {}",
                dropped.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn worker(a: WorkerArgs) -> Result<ExitCode, UsageError> {
    let location = Location::resolve(&a.store).map_err(|e| UsageError(format!("--store {}", e.0)))?;
    for (flag, v) in [("--idle-exit", a.idle_exit), ("--wait-for-run", Some(a.wait_for_run))] {
        if v.is_some_and(|s| !(s >= 0.0 && s.is_finite())) {
            return Err(UsageError(format!("{flag} must be a number of seconds ≥ 0")));
        }
    }
    if a.max_candidates == Some(0) {
        return Err(UsageError("--max-candidates must be at least 1".into()));
    }
    if let Some(names) = &a.datasets {
        for d in names {
            if nasc_lang::check::binding::dataset(d).is_none() {
                return Err(UsageError(format!("--datasets: unknown dataset `{d}` (see `nasc datasets`)")));
            }
        }
    }
    nasc_runtime::available(a.device).map_err(UsageError)?;
    let name = a.name.clone().unwrap_or_else(|| format!("{}-{}", worker::hostname(), std::process::id()));
    let opts = WorkerOptions {
        name: worker::owner_name(&name),
        device: a.device,
        data_root: a.data_root.clone(),
        datasets: a.datasets.clone(),
        max_candidates: a.max_candidates,
        idle_exit: a.idle_exit.map(Duration::from_secs_f64),
        until_run_ends: true,
        wait: Duration::from_secs(5),
        held: Default::default(),
    };
    let visible = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if visible { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    if visible {
        bar.set_style(
            indicatif::ProgressStyle::with_template("training {prefix} [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
    }
    eprintln!("worker {} on {} for {}", opts.name, a.device, location.shown());
    match worker::run_worker(&location, &opts, Duration::from_secs_f64(a.wait_for_run), &bar) {
        Ok(summary) => {
            bar.finish_and_clear();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary).expect("the summary serialises"));
            } else {
                println!(
                    "worker {}: trained {}, refused {}, handed back {} in {:.0} s ({})",
                    summary.worker,
                    summary.trained,
                    summary.refused,
                    summary.released,
                    summary.elapsed_s,
                    summary.stopped
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(e)),
    }
}

#[derive(Args)]
#[command(after_help = "Examples:\n  nasc dashboard runs/fashion\n  \
nasc dashboard runs/mutate runs/smollm2            # two arms, their cycles overlaid under /#/compare\n  \
nasc dashboard postgres://nasc@db:5432/search1 --host 0.0.0.0 --api-key \"$KEY\"\n\n\
Pages: the runs (state, progress, workers); a run (valid rate, accuracy, verdicts and novelty per cycle, the \
accuracy distribution, every trained candidate as a point that opens it); its candidates (filter by dataset, \
cycle, verdict, generator; sort by accuracy, parameters, MACs, novelty); a candidate (the diff, parent and child \
side by side, the reply with the extracted part marked, the diagnostic, the shape table, training, lineage, \
children). New candidates and verdicts appear as the search records them. The stores are opened read-only.")]
pub struct DashboardArgs {
    /// Run folders or store URLs (postgres://…, sqlite:PATH).
    #[arg(value_name = "RUN")]
    runs: Vec<String>,
    /// A store URL, as one more run.
    #[arg(long, value_name = "URL")]
    store: Vec<String>,
    /// The address to listen on; anything but loopback exposes the runs (give --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8378)]
    port: u16,
    /// Every request needs this key (default: the NASC_API_KEY environment variable, if set):
    /// open /?key=KEY once in the browser, or send Authorization: Bearer KEY.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// How often the stores are looked at for changes, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    poll: f64,
}

pub fn dashboard(a: DashboardArgs) -> Result<ExitCode, UsageError> {
    let mut runs = Vec::new();
    for run in a.runs.iter().chain(&a.store) {
        let location = Location::resolve(run).map_err(|e| UsageError(e.0))?;
        if let Location::Sqlite(db) = &location {
            if !db.is_file() {
                return Err(UsageError(format!("{run} is not a run folder: it has no {DB_FILE}")));
            }
        }
        let label = match &location {
            Location::Postgres(_) => location.shown(),
            Location::Sqlite(_) => {
                Path::new(run).file_name().map_or_else(|| run.clone(), |n| n.to_string_lossy().into_owned())
            }
        };
        runs.push((label, location));
    }
    if runs.is_empty() {
        return Err(UsageError("give a run folder or a store URL (see --help)".into()));
    }
    if !(a.poll > 0.0 && a.poll.is_finite()) {
        return Err(UsageError("--poll must be a positive number of seconds".into()));
    }
    if a.api_key.as_deref() == Some("") {
        return Err(UsageError("--api-key is empty".into()));
    }
    let api_key = a.api_key.clone().or_else(|| std::env::var("NASC_API_KEY").ok()).filter(|k| !k.is_empty());
    let opts = nasc_dashboard::Options {
        runs,
        host: a.host.clone(),
        port: a.port,
        api_key,
        poll: Duration::from_secs_f64(a.poll),
    };
    let exposed = !(a.host == "127.0.0.1" || a.host == "localhost" || a.host == "::1");
    match nasc_dashboard::serve(&opts, |addr| {
        eprintln!("nasc dashboard: http://{addr}/ ({} runs; Ctrl-C stops it)", opts.runs.len());
        if exposed && opts.api_key.is_none() {
            eprintln!(
                "nasc dashboard: listening beyond this machine without --api-key: anyone who reaches it sees the runs"
            );
        }
    }) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(failed(e)),
    }
}
