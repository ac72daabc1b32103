//! The `nasc` command line: parses arguments and calls into the layers' crates.
//! It must hold no pipeline logic of its own; each command's work lives in the crate that owns it.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
