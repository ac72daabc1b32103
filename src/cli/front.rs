//! The front-end commands: compile, check, fmt, ops, datasets.
//! Reads files and flags, calls the syntax and check modules, prints text or JSON.

use super::UsageError;
use clap::Args;
use nasc_lang::check::{self, binding, Binding, Budget};
use nasc_lang::diag::{self, Diagnostic, LineIndex};
use nasc_lang::syntax;
use serde_json::json;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const DATASET_HELP: &str = "Dataset to bind `in` and `classes` to: mnist, fashion-mnist (1x28x28, 10), \
cifar10 (3x32x32, 10), cifar100 (3x32x32, 100), svhn (3x32x32, 10), imagenette (3x64x64, 10), \
celeba (3x64x64, 2: the `Male` attribute). ImageNette and CelebA are used at 64x64 so a one-epoch \
proxy stays affordable: ImageNette's shorter side resized to 64 and centre-cropped (as downsampled \
ImageNet), CelebA's aligned 178x218 faces centre-cropped to 178x178 and resized (the usual CelebA-64).";

#[derive(Args, Clone)]
pub struct BindingArgs {
    #[arg(long, short = 'd', help = DATASET_HELP, conflicts_with_all = ["input", "classes"])]
    dataset: Option<String>,
    /// Input shape instead of a dataset: channels,height,width (e.g. 3,32,32). Needs --classes.
    #[arg(long, value_name = "C,H,W", requires = "classes")]
    input: Option<String>,
    /// Number of classes, with --input.
    #[arg(long, requires = "input")]
    classes: Option<u64>,
    #[command(flatten)]
    budget: BudgetArgs,
}

/// The budgets a program must fit, as flags: shared by every command that checks.
#[derive(Args, Clone)]
pub struct BudgetArgs {
    /// Most parameters a program may have.
    #[arg(long, value_name = "N", default_value_t = Budget::default().max_params)]
    max_params: u64,
    /// Most multiply-accumulates per sample.
    #[arg(long, value_name = "N", default_value_t = Budget::default().max_macs)]
    max_macs: u64,
    /// Most bytes of activations per sample (f32, all operation outputs).
    #[arg(long, value_name = "BYTES", default_value_t = Budget::default().max_activation_bytes)]
    max_activation_bytes: u64,
}

impl BudgetArgs {
    pub(super) fn budget(&self) -> Budget {
        Budget { max_params: self.max_params, max_macs: self.max_macs, max_activation_bytes: self.max_activation_bytes }
    }
}

impl BindingArgs {
    /// The bindings asked for: one dataset, every dataset (`all`), or an explicit shape.
    /// Without any, cifar10.
    fn bindings(&self) -> Result<Vec<(String, Binding)>, UsageError> {
        if let Some(spec) = &self.input {
            let dims: Vec<u64> =
                spec.split(',').map(|s| s.trim().parse::<u64>()).collect::<Result<_, _>>().map_err(|_| {
                    UsageError(format!("--input must be C,H,W with three positive integers, got `{spec}`"))
                })?;
            let [c, h, w] = dims[..] else {
                return Err(UsageError(format!("--input must be C,H,W with three positive integers, got `{spec}`")));
            };
            let classes = self.classes.expect("clap requires --classes with --input");
            if c == 0 || h == 0 || w == 0 || classes == 0 {
                return Err(UsageError("--input and --classes must be positive".into()));
            }
            return Ok(vec![(format!("{c}x{h}x{w}/{classes}"), Binding { input: [c, h, w], classes })]);
        }
        let name = self.dataset.as_deref().unwrap_or("cifar10");
        if name == "all" {
            return Ok(binding::DATASETS.iter().map(|(n, b)| (n.to_string(), *b)).collect());
        }
        match binding::dataset(name) {
            Some(b) => Ok(vec![(name.to_string(), b)]),
            None => Err(UsageError(format!(
                "unknown dataset `{name}`; known: {}, or `all`",
                binding::dataset_names().join(", ")
            ))),
        }
    }
    fn budget(&self) -> Budget {
        self.budget.budget()
    }
}

#[derive(Args)]
pub struct CompileArgs {
    /// The program (`-` reads standard input).
    file: PathBuf,
    #[command(flatten)]
    binding: BindingArgs,
    /// Print JSON: the table rows, totals and diagnostics.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The programs (`-` reads standard input).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    binding: BindingArgs,
    /// Print JSON diagnostics.
    #[arg(long)]
    json: bool,
    /// Treat warnings as errors.
    #[arg(long)]
    deny_warnings: bool,
}

#[derive(Args)]
pub struct FmtArgs {
    /// The programs to format in place (`-` formats standard input to standard output).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Change nothing; list the files that are not in canonical form and exit 1 if any.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
pub struct OpsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DatasetsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A program's text, from a file or (`-`) standard input, without a leading byte-order mark;
/// a usage error names what failed. Standard input is read once: a second `-` in one command
/// would read nothing.
pub(super) fn read(path: &Path) -> Result<String, UsageError> {
    static STDIN_READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let text = if path.as_os_str() == "-" {
        if STDIN_READ.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(UsageError("`-` (standard input) is given more than once; it can be read only once".into()));
        }
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| UsageError(format!("cannot read standard input: {e}")))?;
        s
    } else {
        let bytes = std::fs::read(path).map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
        String::from_utf8(bytes).map_err(|e| {
            UsageError(format!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?
    };
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// How diagnostics name a file: its path, or `<stdin>` for `-`.
pub(super) fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".into()
    } else {
        path.display().to_string()
    }
}

fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn json_diags(diags: &[Diagnostic], file: &str, src: &str) -> serde_json::Value {
    let index = LineIndex::new(src);
    serde_json::to_value(diags.iter().map(|d| diag::to_json(d, file, src, &index)).collect::<Vec<_>>())
        .expect("diagnostics serialise")
}

pub fn compile(a: CompileArgs) -> Result<ExitCode, UsageError> {
    let src = read(&a.file)?;
    let file = display_name(&a.file);
    let bindings = a.binding.bindings()?;
    let budget = a.binding.budget();
    let mut all_ok = true;
    let mut results = Vec::new();
    for (name, b) in &bindings {
        match check::check_source(&src, *b, &budget) {
            Ok(c) => {
                if a.json {
                    results.push(json!({
                        "file": file, "dataset": name, "input": b.input, "classes": b.classes, "ok": true,
                        "rows": c.table_rows(&src), "totals": c.totals(), "output": c.output().to_string(),
                        "diagnostics": json_diags(&c.warnings, &file, &src),
                    }));
                } else {
                    if bindings.len() > 1 {
                        println!("== {name}");
                    }
                    print!("{}", c.table(&src, *b));
                    eprint!("{}", diag::render(&c.warnings, &file, &src, color()));
                }
            }
            Err(diags) => {
                all_ok = false;
                if a.json {
                    results.push(json!({
                        "file": file, "dataset": name, "input": b.input, "classes": b.classes, "ok": false,
                        "diagnostics": json_diags(&diags, &file, &src),
                    }));
                } else {
                    if bindings.len() > 1 {
                        eprintln!("== {name}");
                    }
                    eprint!("{}", diag::render(&diags, &file, &src, color()));
                }
            }
        }
    }
    if a.json {
        let v = if results.len() == 1 { results.pop().expect("one result") } else { serde_json::Value::Array(results) };
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn check(a: CheckArgs) -> Result<ExitCode, UsageError> {
    let bindings = a.binding.bindings()?;
    let budget = a.binding.budget();
    let mut ok = true;
    let mut results = Vec::new();
    for path in &a.files {
        let src = read(path)?;
        let file = display_name(path);
        // Parse once; check under each binding.
        let program = match syntax::parse(&src) {
            Ok(p) => p,
            Err(d) => {
                ok = false;
                if a.json {
                    results.push(json!({"file": file, "ok": false, "diagnostics": json_diags(&[d], &file, &src)}));
                } else {
                    eprint!("{}", diag::render(&[d], &file, &src, color()));
                }
                continue;
            }
        };
        for (name, b) in &bindings {
            let (valid, diags) = match check::check(&program, *b, &budget) {
                Ok(c) => (!a.deny_warnings || c.warnings.is_empty(), c.warnings),
                Err(d) => (false, d),
            };
            ok &= valid;
            if a.json {
                results.push(
                    json!({"file": file, "dataset": name, "ok": valid, "diagnostics": json_diags(&diags, &file, &src)}),
                );
            } else {
                if !diags.is_empty() && bindings.len() > 1 {
                    eprintln!("== {file} under {name}");
                }
                eprint!("{}", diag::render(&diags, &file, &src, color()));
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results).expect("json"));
    } else if ok {
        let n = a.files.len();
        eprintln!(
            "ok: {n} program{} valid under {}",
            if n == 1 { "" } else { "s" },
            bindings.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn fmt(a: FmtArgs) -> Result<ExitCode, UsageError> {
    let mut status = ExitCode::SUCCESS;
    for path in &a.files {
        let src = read(path)?;
        let file = display_name(path);
        let formatted = match syntax::fmt::format_source(&src) {
            Ok(f) => f,
            Err(d) => {
                eprint!("{}", diag::render(&[d], &file, &src, color()));
                status = ExitCode::from(1);
                continue;
            }
        };
        if path.as_os_str() == "-" {
            if a.check {
                if formatted != src {
                    println!("<stdin>");
                    status = ExitCode::from(1);
                }
            } else {
                print!("{formatted}");
            }
            continue;
        }
        if formatted == src {
            continue;
        }
        if a.check {
            println!("{file}");
            status = ExitCode::from(1);
        } else {
            // Write beside and rename, so an interrupted write never loses the program.
            let tmp = path.with_extension("arch.fmt-tmp");
            std::fs::write(&tmp, &formatted).map_err(|e| UsageError(format!("cannot write {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, path).map_err(|e| UsageError(format!("cannot replace {file}: {e}")))?;
            eprintln!("formatted {file}");
        }
    }
    Ok(status)
}

pub fn ops(a: OpsArgs) -> Result<ExitCode, UsageError> {
    use nasc_lang::syntax::signature::{Args as SigArgs, OPS};
    if a.json {
        let v: Vec<_> = OPS
            .iter()
            .map(|s| {
                let usage = match s.args {
                    SigArgs::Params { params, .. } => check::elab::usage(s.name, params),
                    SigArgs::Values => format!("{}(value, …)", s.name),
                };
                json!({"name": s.name, "usage": usage, "summary": s.summary})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        for s in OPS {
            let usage = match s.args {
                SigArgs::Params { params, .. } => check::elab::usage(s.name, params),
                SigArgs::Values => format!("{}(value, …)", s.name),
            };
            println!("{usage:<52} {}", s.summary);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn datasets(a: DatasetsArgs) -> Result<ExitCode, UsageError> {
    if a.json {
        let v: Vec<_> =
            binding::DATASETS.iter().map(|(n, b)| json!({"name": n, "input": b.input, "classes": b.classes})).collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        for (n, b) in binding::DATASETS {
            let [c, h, w] = b.input;
            println!("{n:<14} input [{c},{h},{w}]  classes {}", b.classes);
        }
    }
    Ok(ExitCode::SUCCESS)
}
