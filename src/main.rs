//! The `nasc` command line. Thin: argument parsing lives in `nasc::cli`.

fn main() -> std::process::ExitCode {
    nasc::cli::main()
}
