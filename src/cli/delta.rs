//! The delta and novelty commands: apply, verdict, diff, novelty, archive.
//! Reads files and flags, calls the delta and novelty modules, prints text or JSON; decides nothing itself.

use super::front::{display_name, read, BudgetArgs};
use super::UsageError;
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use nasc_delta::delta::{self, ApplyOptions, Base, Options, Verdict};
use nasc_delta::novelty::{self, Archive, NoveltyVerdict};
use nasc_lang::check::{binding, Binding, Budget};
use nasc_lang::diag;
use nasc_lang::syntax;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct ApplyArgs {
    /// The program the diff was made against.
    base: PathBuf,
    /// The diff, or a model's whole reply holding one (`-` reads standard input).
    diff: PathBuf,
    /// Write the patched program here instead of to standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Most context lines that may be ignored at each end of a hunk (as GNU patch's --fuzz).
    #[arg(long, default_value_t = ApplyOptions::default().fuzz)]
    fuzz: usize,
}

/// The dataset a program is checked under, and the budgets it must fit.
#[derive(Args, Clone)]
pub struct JudgeArgs {
    /// Dataset to bind `in` and `classes` to (see `nasc datasets`); default cifar10, or the
    /// archive's.
    #[arg(long, short = 'd')]
    dataset: Option<String>,
    #[command(flatten)]
    budget: BudgetArgs,
    /// Near-duplicate threshold: a candidate at least this similar (estimated Jaccard of
    /// 3-gram shingles, 0 to 1) to an archived network is a near_duplicate.
    #[arg(long, value_name = "S", default_value_t = novelty::DEFAULT_THRESHOLD)]
    threshold: f64,
}

impl JudgeArgs {
    fn budget(&self) -> Budget {
        self.budget.budget()
    }
    fn threshold(&self) -> Result<f64, UsageError> {
        if (0.0..=1.0).contains(&self.threshold) {
            Ok(self.threshold)
        } else {
            Err(UsageError(format!("--threshold must be between 0 and 1, got {}", self.threshold)))
        }
    }
}

#[derive(Args)]
pub struct VerdictArgs {
    /// The program the model was asked to change.
    base: PathBuf,
    /// The model's reply: a unified diff, perhaps in a fence among prose, or a whole program
    /// (`-` reads standard input).
    reply: PathBuf,
    #[command(flatten)]
    judge: JudgeArgs,
    /// Judge novelty against the archive in this folder.
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
    /// With --archive: add the candidate to the archive, under this name, when its verdict is ok.
    #[arg(long, value_name = "NAME", requires = "archive")]
    record: Option<String>,
    /// Print the judgement as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The original program.
    a: PathBuf,
    /// The changed program.
    b: PathBuf,
    /// Diff the texts as they are, instead of their canonical forms.
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
#[command(after_help = "Example:\n  nasc grammar zoo/resnet18.arch > diff.lark\n  \
nasc grammar zoo/resnet18.arch --gbnf > diff.gbnf   # for llama.cpp's `grammar` field\n\n\
The grammar is the one the search sends with `[openai] constrain`: a ```diff fence, `--- a/FILE` and `+++ b/FILE` \
headers, hunks with numbered `@@` headers (at most 3 context lines before a change, 6 after), context and removed \
lines that are lines of the parent (in canonical form) exactly, and added statements that can check where they go: \
calls of the language's operations with their signatures' parameters and of the parent's blocks, with the names in \
scope. With --dataset, an added line offers only the operations that keep the kind of flow (maps, tokens or a \
vector) at its place.")]
pub struct GrammarArgs {
    /// The parent program; the grammar is over its canonical form.
    parent: PathBuf,
    /// Print GBNF (llama.cpp's server, vLLM's default backend) instead of Lark (llguidance).
    #[arg(long)]
    gbnf: bool,
    /// The file name the diff's headers use.
    #[arg(long, value_name = "NAME", default_value = delta::grammar::PROGRAM_FILE)]
    file: String,
    /// The dataset the candidate is for (see `nasc datasets`): added lines then fit the kind
    /// of flow where they go.
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
}

#[derive(Args)]
pub struct NoveltyArgs {
    /// The candidate program.
    file: PathBuf,
    /// The archive folder to compare with.
    #[arg(long, value_name = "DIR")]
    archive: PathBuf,
    #[command(flatten)]
    judge: JudgeArgs,
    /// How many of the most similar archived networks to print.
    #[arg(long, short = 'k', default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..).map(|k| k as usize))]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ArchiveCmd {
    /// Add programs to an archive (created if missing), each under its path; a network already
    /// archived is not added twice.
    Add(ArchiveAddArgs),
    /// List an archive's entries: id, structural hash, operations, name.
    List(ArchiveListArgs),
}

#[derive(Args)]
pub struct ArchiveAddArgs {
    /// The archive folder.
    dir: PathBuf,
    /// The programs to add.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    judge: JudgeArgs,
}

#[derive(Args)]
pub struct ArchiveListArgs {
    /// The archive folder.
    dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| "candidate.arch".to_string(), |n| n.to_string_lossy().into_owned())
}

fn dataset(name: &str) -> Result<Binding, UsageError> {
    binding::dataset(name)
        .ok_or_else(|| UsageError(format!("unknown dataset `{name}`; known: {}", binding::dataset_names().join(", "))))
}

fn dataset_name(b: Binding) -> String {
    binding::DATASETS
        .iter()
        .find(|(_, d)| *d == b)
        .map_or_else(|| format!("{}x{}x{}/{}", b.input[0], b.input[1], b.input[2], b.classes), |(n, _)| n.to_string())
}

/// Opens (or creates) the archive in `dir` under the binding asked for; without one, under
/// the archive's own binding, or cifar10 for a new archive.
fn open_archive(dir: &Path, asked: &Option<String>, create: bool) -> Result<Archive, UsageError> {
    let asked = asked.as_deref().map(dataset).transpose()?;
    let exists = dir.join("archive.bin").exists();
    let archive = match asked {
        Some(b) if exists || create => Archive::open_or_create(dir, b),
        None if exists => Archive::open(dir),
        None if create => Archive::open_or_create(dir, dataset("cifar10")?),
        _ => return Err(UsageError(format!("no archive in {} (make one with `nasc archive add`)", dir.display()))),
    };
    let archive = archive.map_err(|e| UsageError(e.to_string()))?;
    let tail = archive.ignored_tail();
    if tail > 0 {
        eprintln!(
            "warning: the last {tail} bytes of {} are not whole entries (an interrupted append, or a damaged \
             file) and are ignored; {} entries are read",
            dir.join("archive.bin").display(),
            archive.len()
        );
    }
    Ok(archive)
}

pub fn apply(a: ApplyArgs) -> Result<ExitCode, UsageError> {
    let base = read(&a.base)?;
    let reply = read(&a.diff)?;
    let opts = ApplyOptions { fuzz: a.fuzz, ..ApplyOptions::default() };
    match delta::apply_reply(&base, &reply, opts) {
        Ok(applied) => {
            for t in &applied.tolerances {
                eprintln!("tolerated: {}", serde_json::to_string(t).unwrap_or_else(|_| t.kind().to_string()));
            }
            match &a.output {
                Some(out) => {
                    std::fs::write(out, &applied.text)
                        .map_err(|e| UsageError(format!("cannot write {}: {e}", out.display())))?;
                    eprintln!("wrote {}", out.display());
                }
                None => print!("{}", applied.text),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", e.verdict());
            Ok(ExitCode::from(1))
        }
    }
}

pub fn verdict(a: VerdictArgs) -> Result<ExitCode, UsageError> {
    let base_text = read(&a.base)?;
    let reply = read(&a.reply)?;
    let mut archive =
        a.archive.as_deref().map(|d| open_archive(d, &a.judge.dataset, a.record.is_some())).transpose()?;
    let binding = match (&archive, &a.judge.dataset) {
        (Some(ar), _) => ar.binding(),
        (None, Some(name)) => dataset(name)?,
        (None, None) => dataset("cifar10")?,
    };
    let mut opts = Options::new(binding);
    opts.budget = a.judge.budget();
    opts.threshold = a.judge.threshold()?;
    opts.file = file_name(&a.base);
    let base = Base::new(&base_text, &opts);
    let j = delta::judge(&base, &reply, archive.as_ref(), &opts);

    let mut recorded = None;
    if let (Some(ar), Some(name), Some(fp)) = (archive.as_mut(), &a.record, &j.fingerprint) {
        if j.verdict == Verdict::Ok {
            let (id, _) = ar.add(fp, name).map_err(|e| UsageError(e.to_string()))?;
            recorded = Some(id);
        }
    }

    if a.json {
        let mut v = serde_json::to_value(&j).map_err(|e| UsageError(format!("cannot print JSON: {e}")))?;
        v["dataset"] = json!(dataset_name(binding));
        if let Some(id) = recorded {
            v["recorded_id"] = json!(id);
        }
        println!("{}", serde_json::to_string_pretty(&v).expect("a judgement serialises"));
    } else {
        println!("verdict: {}", j.verdict);
        if !j.message.is_empty() {
            println!();
            print!("{}", j.message);
            if !j.message.ends_with('\n') {
                println!();
            }
        }
        if let (Some(params), Some(macs)) = (j.params, j.macs) {
            println!();
            println!(
                "dataset {}: {} parameters, {} MACs",
                dataset_name(binding),
                nasc_lang::check::group(params),
                nasc_lang::check::group(macs)
            );
        }
        if let Some(n) = &j.novelty {
            match &n.nearest {
                Some(m) => println!("nearest archived: #{} {} (similarity {:.3})", m.id, m.name, m.similarity),
                None => println!("nearest archived: none alike"),
            }
        }
        if let Some(id) = recorded {
            println!("recorded as archive entry #{id}");
        }
        if let (Some(diff), Some(lines)) = (&j.diff, j.diff_lines) {
            println!("canonical diff: {lines} changed line{}", if lines == 1 { "" } else { "s" });
            print!("{diff}");
        }
        let t = j.timings;
        eprintln!(
            "time: {:.1} µs (extract {:.1}, apply {:.1}, parse {:.1}, check {:.1}, novelty {:.1})",
            t.total_ns as f64 / 1e3,
            t.extract_ns as f64 / 1e3,
            t.apply_ns as f64 / 1e3,
            t.parse_ns as f64 / 1e3,
            t.check_ns as f64 / 1e3,
            t.novelty_ns as f64 / 1e3
        );
    }
    Ok(if j.verdict == Verdict::Ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn diff(a: DiffArgs) -> Result<ExitCode, UsageError> {
    let (ta, tb) = (read(&a.a)?, read(&a.b)?);
    let (na, nb) = (display_name(&a.a), display_name(&a.b));
    let (ca, cb) = if a.raw {
        (ta, tb)
    } else {
        let canon = |t: &str, name: &str| {
            syntax::fmt::format_source(t).map_err(|d| {
                eprint!("{}", diag::render(&[d], name, t, false));
            })
        };
        match (canon(&ta, &na), canon(&tb, &nb)) {
            (Ok(ca), Ok(cb)) => (ca, cb),
            _ => return Ok(ExitCode::from(1)),
        }
    };
    // git's a/ and b/ prefixes, for relative paths only: `a//tmp/x.arch` helps nobody.
    let label =
        |prefix: &str, name: &str| if name.starts_with('/') { name.to_string() } else { format!("{prefix}{name}") };
    let (patch, _) = delta::unified(&ca, &cb, &label("a/", &na), &label("b/", &nb));
    print!("{patch}");
    Ok(ExitCode::SUCCESS)
}

pub fn grammar(a: GrammarArgs) -> Result<ExitCode, UsageError> {
    let text = read(&a.parent)?;
    let name = display_name(&a.parent);
    let canonical = match syntax::fmt::format_source(&text) {
        Ok(c) => c,
        Err(d) => {
            eprint!("{}", diag::render(&[d], &name, &text, false));
            return Ok(ExitCode::from(1));
        }
    };
    if a.file.is_empty() || a.file.contains(['\n', '\r']) {
        return Err(UsageError(format!("--file {:?}: a file name on one line", a.file)));
    }
    let binding = match &a.dataset {
        Some(name) => Some(nasc_lang::check::binding::dataset(name).ok_or_else(|| {
            UsageError(format!(
                "--dataset {name}: unknown; known: {}",
                nasc_lang::check::binding::dataset_names().join(", ")
            ))
        })?),
        None => None,
    };
    // A program without a net has nothing a diff could change into a network.
    if let Ok(program) = syntax::parse(&canonical).map_err(drop).and_then(|p| p.net.is_none().then_some(p).ok_or(())) {
        let end = program.blocks.iter().map(|b| b.span.end).max().unwrap_or(0) as usize;
        let d = diag::Diagnostic::error(
            diag::Code::MissingNet,
            nasc_lang::span::Span::new(end, end),
            "the program has no `net { … }`",
        )
        .label("add `net { … }` here")
        .hint("a diff changes the network in `net { … }`; without one there is nothing to change");
        eprint!("{}", diag::render(&[d], &name, &canonical, false));
        return Ok(ExitCode::from(1));
    }
    let printed = if a.gbnf {
        delta::grammar::diff_gbnf(&canonical, &a.file, binding)
    } else {
        delta::grammar::diff_lark(&canonical, &a.file, binding)
    };
    print!("{}", printed.map_err(|e| UsageError(format!("{name}: no grammar of diffs against it: {e}")))?);
    Ok(ExitCode::SUCCESS)
}

pub fn novelty(a: NoveltyArgs) -> Result<ExitCode, UsageError> {
    let src = read(&a.file)?;
    let file = display_name(&a.file);
    let archive = open_archive(&a.archive, &a.judge.dataset, false)?;
    let threshold = a.judge.threshold()?;
    let checked = match nasc_lang::check::check_source(&src, archive.binding(), &a.judge.budget()) {
        Ok(c) => c,
        Err(diags) => {
            eprint!("{}", diag::render(&diags, &file, &src, false));
            return Ok(ExitCode::from(1));
        }
    };
    let fp = novelty::fingerprint(&checked.graph);
    let judged = archive.judge(&fp, threshold);
    let nearest = archive.nearest(&fp, a.top);
    if a.json {
        let v = json!({
            "file": file,
            "dataset": dataset_name(archive.binding()),
            "hash": fp.hash.hex(),
            "operations": fp.operations,
            "verdict": judged.verdict,
            "threshold": threshold,
            "archive_entries": archive.len(),
            "nearest": nearest,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!(
            "{file}: {} ({} operations, structural hash {}), against {} archived under {}",
            match judged.verdict {
                NoveltyVerdict::Duplicate => "duplicate",
                NoveltyVerdict::NearDuplicate => "near_duplicate",
                NoveltyVerdict::New => "new",
            },
            fp.operations,
            fp.hash.hex(),
            archive.len(),
            dataset_name(archive.binding())
        );
        if nearest.is_empty() {
            println!("no archived network alike (none shares a band of its signature)");
        }
        for m in &nearest {
            let same = if m.hash == fp.hash { "  (same structure)" } else { "" };
            println!("{:>8.3}  #{:<6} {}{same}", m.similarity, m.id, m.name);
        }
    }
    Ok(if judged.verdict == NoveltyVerdict::New { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn archive(cmd: ArchiveCmd) -> Result<ExitCode, UsageError> {
    match cmd {
        ArchiveCmd::Add(a) => archive_add(a),
        ArchiveCmd::List(a) => archive_list(a),
    }
}

fn archive_add(a: ArchiveAddArgs) -> Result<ExitCode, UsageError> {
    let mut archive = open_archive(&a.dir, &a.judge.dataset, true)?;
    let budget = a.judge.budget();
    let mut status = ExitCode::SUCCESS;
    let (mut added, mut known) = (0, 0);
    for path in &a.files {
        let src = read(path)?;
        let name = display_name(path);
        let checked = match nasc_lang::check::check_source(&src, archive.binding(), &budget) {
            Ok(c) => c,
            Err(diags) => {
                eprint!("{}", diag::render(&diags, &name, &src, false));
                status = ExitCode::from(1);
                continue;
            }
        };
        let fp = novelty::fingerprint(&checked.graph);
        match archive.add(&fp, &name).map_err(|e| UsageError(e.to_string()))? {
            (_, true) => added += 1,
            (id, false) => {
                known += 1;
                eprintln!("{name}: already archived as #{id} ({})", archive.entries()[id as usize].name);
            }
        }
    }
    eprintln!(
        "{added} added, {known} already there: {} entries under {} in {}",
        archive.len(),
        dataset_name(archive.binding()),
        a.dir.display()
    );
    Ok(status)
}

fn archive_list(a: ArchiveListArgs) -> Result<ExitCode, UsageError> {
    let archive = open_archive(&a.dir, &None, false)?;
    if a.json {
        let v = json!({"dataset": dataset_name(archive.binding()), "entries": archive.entries()});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("{} entries under {}", archive.len(), dataset_name(archive.binding()));
        for e in archive.entries() {
            println!("#{:<6} {}  {:>6} ops  {}", e.id, e.hash.hex(), e.operations, e.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
