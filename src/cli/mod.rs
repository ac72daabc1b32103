//! The command line: argument parsing, reading files, printing results.
//! It decides nothing about programs; every answer comes from the library.

mod data;
mod delta;
mod front;
mod lm;
mod search;
mod serve;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nasc",
    version,
    about = "A compiler and search engine for neural architectures",
    long_about = "nasc checks neural architectures written in the arch language (docs/language.md): \
every tensor shape, parameter and MAC is known before anything trains.\n\n\
Start with `nasc compile zoo/resnet18.arch --dataset cifar10`.",
    after_help = "Exit status: 0 success, 1 the program has errors (or is not formatted, with fmt --check), 2 bad usage or unreadable files."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a program and print its shape table: every operation's output shape, parameters and MACs.
    Compile(front::CompileArgs),
    /// Check a program and print diagnostics only; exit 0 if it is valid, 1 if not.
    Check(front::CheckArgs),
    /// Print programs in canonical form (in place), or check that they are.
    Fmt(front::FmtArgs),
    /// List the operations of the language with their parameters.
    Ops(front::OpsArgs),
    /// List the datasets programs can be bound to, with their input shapes and classes.
    Datasets(front::DatasetsArgs),
    /// Apply a unified diff (or a model's reply holding one) to a program, tolerantly, and print the result.
    Apply(delta::ApplyArgs),
    /// Judge a model's reply to a program: extract, apply, parse, check, novelty; exit 1 unless the verdict is ok.
    Verdict(delta::VerdictArgs),
    /// Print the unified diff between two programs in canonical form.
    Diff(delta::DiffArgs),
    /// Compare a program with an archive: its nearest entries; exit 1 for a duplicate or near duplicate.
    Novelty(delta::NoveltyArgs),
    /// Print the grammar of "a unified diff against this program", for constrained decoding (Lark or GBNF).
    Grammar(delta::GrammarArgs),
    /// Build or list an archive of networks for novelty checks.
    #[command(subcommand)]
    Archive(delta::ArchiveCmd),
    /// Download datasets from their canonical sources, or describe what is on disk.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Train a program on a dataset and report its verdict, loss, test accuracy and throughput.
    Train(train::TrainArgs),
    /// Evaluate weights saved by `nasc train --save` on a dataset's test split.
    Eval(train::EvalArgs),
    /// Run a search: cycles of generate → verdict → train → curate, recorded in a run folder; or resume one.
    Search(search::SearchArgs),
    /// Train a run's candidates from its store (PostgreSQL or SQLite), beside a driver started
    /// with `nasc search --store URL`: one lease at a time, renewed while training.
    Worker(search::WorkerArgs),
    /// Serve a web dashboard of runs (folders or store URLs), live while they run: charts per
    /// cycle, the candidates table, each candidate's diff, reply, diagnostic and shapes.
    Dashboard(search::DashboardArgs),
    /// Print a run's tables (per generator × dataset × cycle) and write its plots; several runs
    /// (an experiment's arms) side by side; --json, --csv.
    Report(search::ReportArgs),
    /// Retrain a run's best candidates longer; rank correlation of the one-epoch and the long ranking.
    Reeval(search::ReevalArgs),
    /// Write the format corpus: chat JSONL of valid diffs of the baselines, in the search's prompt format.
    Corpus(search::CorpusArgs),
    /// Run language models (Llama-family, GGUF or Hugging Face checkpoints): generate replies.
    #[command(subcommand)]
    Lm(lm::LmCmd),
    /// Serve a language model over the OpenAI HTTP protocol (/v1/models, /v1/chat/completions, /v1/completions).
    Serve(serve::ServeArgs),
}

/// An error of usage or I/O (exit 2), as opposed to diagnostics about a program (exit 1).
pub struct UsageError(pub String);

/// Output that cannot be written ends the process with a line instead of a panic: `print!`
/// panics when standard output fails. A closed pipe (`nasc grammar x | head`) ends it quietly with
/// the status a shell gives a process its SIGPIPE ended (141); any other failure (a full disk) says
/// what failed and exits 2.
fn quiet_on_closed_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = message.strip_prefix("failed printing to stdout: ") {
            if why.contains("Broken pipe") {
                std::process::exit(141);
            }
            eprintln!("error: cannot write standard output: {why}");
            std::process::exit(2);
        }
        default(info)
    }));
}

pub fn main() -> ExitCode {
    quiet_on_closed_output();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compile(a) => front::compile(a),
        Command::Check(a) => front::check(a),
        Command::Fmt(a) => front::fmt(a),
        Command::Ops(a) => front::ops(a),
        Command::Datasets(a) => front::datasets(a),
        Command::Apply(a) => delta::apply(a),
        Command::Verdict(a) => delta::verdict(a),
        Command::Diff(a) => delta::diff(a),
        Command::Grammar(a) => delta::grammar(a),
        Command::Novelty(a) => delta::novelty(a),
        Command::Archive(cmd) => delta::archive(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Search(a) => search::search(a),
        Command::Worker(a) => search::worker(a),
        Command::Dashboard(a) => search::dashboard(a),
        Command::Report(a) => search::report(a),
        Command::Corpus(a) => search::corpus(a),
        Command::Reeval(a) => search::reeval(a),
        Command::Lm(cmd) => lm::run(cmd),
        Command::Serve(a) => serve::serve(a),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}
