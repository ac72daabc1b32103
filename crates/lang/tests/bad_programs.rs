//! The invalid programs in `tests/bad`: each fails with the diagnostic its file name starts
//! with (or, `warn_*`, checks with that warning), and its text and JSON forms are snapshots.
//!
//! A file is named `<code>_<what>.arch`; its first line is a comment saying what is wrong,
//! and an optional second line `# dataset: NAME` binds it to a dataset other than cifar10.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nasc_lang::check::{binding, check_source, Budget};
use nasc_lang::diag::{self, Code, Diagnostic, LineIndex};

/// Every diagnostic kind, in the order of the `Code` enum.
const ALL_CODES: &[Code] = &[
    Code::Syntax,
    Code::UnknownOp,
    Code::UnboundName,
    Code::DuplicateName,
    Code::DuplicateBlock,
    Code::ReservedName,
    Code::MissingNet,
    Code::DuplicateNet,
    Code::MissingArg,
    Code::ExtraArg,
    Code::UnknownKeyword,
    Code::DuplicateArg,
    Code::ArgType,
    Code::BadValue,
    Code::RecursiveBlock,
    Code::MisplacedValue,
    Code::WrongInput,
    Code::ShapeMismatch,
    Code::ConcatMismatch,
    Code::KernelTooLarge,
    Code::ZeroDim,
    Code::GroupsNotDivisible,
    Code::HeadsNotDivisible,
    Code::LinearOnSpatial,
    Code::BadOutput,
    Code::OverBudget,
    Code::UnusedValue,
    Code::UnusedBlock,
];

/// The position of a code in `ALL_CODES`. The match has no wildcard, so a new `Code`
/// variant does not compile until it is listed here, and then in `ALL_CODES`, and then
/// `every_code_has_a_bad_program` asks for a program that raises it.
fn position(code: Code) -> usize {
    match code {
        Code::Syntax => 0,
        Code::UnknownOp => 1,
        Code::UnboundName => 2,
        Code::DuplicateName => 3,
        Code::DuplicateBlock => 4,
        Code::ReservedName => 5,
        Code::MissingNet => 6,
        Code::DuplicateNet => 7,
        Code::MissingArg => 8,
        Code::ExtraArg => 9,
        Code::UnknownKeyword => 10,
        Code::DuplicateArg => 11,
        Code::ArgType => 12,
        Code::BadValue => 13,
        Code::RecursiveBlock => 14,
        Code::MisplacedValue => 15,
        Code::WrongInput => 16,
        Code::ShapeMismatch => 17,
        Code::ConcatMismatch => 18,
        Code::KernelTooLarge => 19,
        Code::ZeroDim => 20,
        Code::GroupsNotDivisible => 21,
        Code::HeadsNotDivisible => 22,
        Code::LinearOnSpatial => 23,
        Code::BadOutput => 24,
        Code::OverBudget => 25,
        Code::UnusedValue => 26,
        Code::UnusedBlock => 27,
    }
}

const DEFAULT_DATASET: &str = "cifar10";
const WARN_PREFIX: &str = "warn_";

struct Case {
    /// The file name without `.arch`: also the snapshot's name.
    stem: String,
    /// `tests/bad/<file>`, as diagnostics print it.
    shown: String,
    path: PathBuf,
    src: String,
    dataset: String,
    /// The code the file name promises.
    code: Code,
    warning_only: bool,
}

fn bad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad")
}

/// The code a file is named after: the longest code name the stem starts with, followed by `_`
/// or the end (`over_budget_params` is `over_budget`; `warn_unused_value_x` is `unused_value`).
fn code_of(stem: &str) -> Option<(Code, bool)> {
    let (rest, warning_only) = match stem.strip_prefix(WARN_PREFIX) {
        Some(rest) => (rest, true),
        None => (stem, false),
    };
    ALL_CODES
        .iter()
        .filter(|c| {
            let name = c.as_str();
            rest == name || rest.strip_prefix(name).is_some_and(|tail| tail.starts_with('_'))
        })
        .max_by_key(|c| c.as_str().len())
        .map(|c| (*c, warning_only))
}

/// The `# dataset: NAME` line among the leading comments, if any.
fn dataset_of(src: &str) -> Option<String> {
    src.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# dataset:").map(|d| d.trim().to_string()))
}

fn cases() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(bad_dir())
        .expect("tests/bad exists")
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "arch"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let stem = file.trim_end_matches(".arch").to_string();
            let (code, warning_only) = code_of(&stem)
                .unwrap_or_else(|| panic!("tests/bad/{file}: the name does not start with a diagnostic code"));
            let src = std::fs::read_to_string(&path).expect("a readable program");
            let dataset = dataset_of(&src).unwrap_or_else(|| DEFAULT_DATASET.to_string());
            Case { stem, shown: format!("tests/bad/{file}"), path, src, dataset, code, warning_only }
        })
        .collect()
}

/// Checks a case and returns the diagnostics to pin: the error first (with any warnings
/// after it), or, for a warning-only program, its warnings. Panics if the outcome is not
/// the one the file name promises.
fn diagnostics(case: &Case) -> Vec<Diagnostic> {
    let b =
        binding::dataset(&case.dataset).unwrap_or_else(|| panic!("{}: unknown dataset `{}`", case.shown, case.dataset));
    match check_source(&case.src, b, &Budget::default()) {
        Ok(checked) => {
            assert!(case.warning_only, "{}: checked without an error, expected `{}`", case.shown, case.code);
            assert!(
                !checked.warnings.is_empty(),
                "{}: checked without a warning, expected `{}`",
                case.shown,
                case.code
            );
            for w in &checked.warnings {
                assert_eq!(w.code, case.code, "{}: unexpected warning: {}", case.shown, w.message);
            }
            checked.warnings
        }
        Err(diags) => {
            let first = diags.first().unwrap_or_else(|| panic!("{}: failed with no diagnostic", case.shown));
            assert!(
                !case.warning_only,
                "{}: expected only `{}` warnings, got error `{}`: {}",
                case.shown, case.code, first.code, first.message
            );
            assert!(first.is_error(), "{}: the first diagnostic is not an error: {}", case.shown, first.message);
            assert_eq!(first.code, case.code, "{}: wrong code; message: {}", case.shown, first.message);
            assert_eq!(
                diags.iter().filter(|d| d.is_error()).count(),
                1,
                "{}: the checker reports the first error only",
                case.shown
            );
            diags
        }
    }
}

/// What a snapshot holds: the diagnostics as a terminal shows them, then as `--json` prints them.
fn snapshot_text(case: &Case, diags: &[Diagnostic]) -> String {
    let text = diag::render(diags, &case.shown, &case.src, false);
    let index = LineIndex::new(&case.src);
    let json: Vec<_> = diags.iter().map(|d| diag::to_json(d, &case.shown, &case.src, &index)).collect();
    let json = serde_json::to_string_pretty(&json).expect("diagnostics serialise");
    format!("dataset: {}\n\n{text}\n---- json ----\n{json}\n", case.dataset)
}

#[test]
fn each_bad_program_fails_with_its_code_and_matches_its_snapshot() {
    let mut failed = Vec::new();
    for case in cases() {
        let outcome = std::panic::catch_unwind(|| {
            let diags = diagnostics(&case);
            let text = snapshot_text(&case, &diags);
            // The primary diagnostic says where it is, as file:line:col.
            let (line, col) = LineIndex::new(&case.src).line_col(&case.src, diags[0].span.start as usize);
            assert!(
                text.contains(&format!("{}:{line}:{col}", case.shown)),
                "{}: no file:line:col in the text",
                case.shown
            );
            let mut settings = insta::Settings::clone_current();
            settings.set_snapshot_path("snapshots");
            settings.set_prepend_module_to_snapshot(true);
            settings.set_input_file(&case.path);
            settings.set_omit_expression(true);
            settings.bind(|| insta::assert_snapshot!(case.stem.as_str(), text));
        });
        if outcome.is_err() {
            failed.push(case.shown.clone());
        }
    }
    assert!(failed.is_empty(), "{} bad program(s) failed (see above):\n  {}", failed.len(), failed.join("\n  "));
}

#[test]
fn every_code_has_a_bad_program() {
    for (i, c) in ALL_CODES.iter().enumerate() {
        assert_eq!(position(*c), i, "ALL_CODES is out of order at `{c}`");
    }
    let covered: BTreeSet<&str> = cases().iter().map(|c| c.code.as_str()).collect();
    let all: BTreeSet<&str> = ALL_CODES.iter().map(|c| c.as_str()).collect();
    let missing: Vec<&&str> = all.difference(&covered).collect();
    assert!(missing.is_empty(), "no program in tests/bad raises: {missing:?}");
}

#[test]
fn warning_programs_are_named_after_warnings_and_errors_after_errors() {
    for case in cases() {
        let is_warning_code = matches!(case.code, Code::UnusedValue | Code::UnusedBlock);
        assert_eq!(
            case.warning_only, is_warning_code,
            "{}: warnings go in `warn_<code>_*.arch`, errors in `<code>_*.arch`",
            case.shown
        );
    }
}

#[test]
fn each_bad_program_says_what_is_wrong_on_its_first_line() {
    for case in cases() {
        let first = case.src.lines().next().unwrap_or("");
        assert!(
            first.starts_with("# ") && first.len() > 10,
            "{}: the first line must be a comment saying what is wrong",
            case.shown
        );
    }
}

#[test]
fn there_are_enough_bad_programs() {
    assert!(cases().len() >= 40, "tests/bad holds {} programs; the issue asks for at least 40", cases().len());
}

/// Sizes near the integer limits must be refused with a diagnostic, never a panic or a
/// hang: the search checks machine-written programs. Each program below once panicked
/// in a debug build (overflow) or hung.
#[test]
fn sizes_near_integer_limits_are_refused_without_a_panic() {
    let programs = [
        // ops.rs conv: `cout * per_out` overflows.
        "conv(9223372036854775807, k=1)\n  gap\n  linear(classes)",
        // ops.rs window: `len + 2 * p` overflows.
        "conv(64, k=3, p=9223372036854775807)\n  gap\n  linear(classes)",
        // ops.rs window: `d * (k - 1)` overflows.
        "conv(64, k=5, d=4611686018427387904)\n  gap\n  linear(classes)",
        // ops.rs conv: `shape.elements() * per_out` overflows.
        "conv(64, k=3, p=4611686018427387904)\n  gap\n  linear(classes)",
        // ops.rs linear: `inf * n` overflows.
        "flatten\n  linear(4294967296)\n  linear(4294967296)\n  linear(classes)",
        // ops.rs attn: `4 * d * d` overflows.
        "patch(4294967296, k=4)\n  attn(1)\n  token_mean\n  linear(classes)",
        // graph.rs activation_bytes: `elements() * 4` overflows after saturating.
        "adaptive_avgpool(4294967296)\n  gap\n  linear(classes)",
        // elab.rs eval: negating i64::MIN overflows.
        "leaky_relu(-(-9223372036854775807 - 1))\n  gap\n  linear(classes)",
        // ops.rs divisor_near: scans 2^40 candidates for a hint (hangs).
        "conv(1099511627776, k=1, bias=false)\n  gn(3)\n  gap\n  linear(classes)",
    ];
    let b = binding::dataset(DEFAULT_DATASET).unwrap();
    let mut bad = Vec::new();
    for body in programs {
        let src = format!("net {{\n  {body}\n}}\n");
        let (tx, rx) = std::sync::mpsc::channel();
        let s = src.clone();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(|| check_source(&s, b, &Budget::default()).is_err());
            let _ = tx.send(outcome);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => bad.push(format!("accepted:\n{src}")),
            Ok(Err(_)) => bad.push(format!("panicked:\n{src}")),
            Err(_) => bad.push(format!("did not finish in 5 s:\n{src}")),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A diagnostic on a very long line shows a window of it around the culprit, not the line: a
/// one-line file of a megabyte renders in a few hundred bytes, and the culprit is in them.
#[test]
fn a_long_line_is_clipped_around_the_culprit() {
    let src = format!("net {{\n  conv(8, k=3) |> {}foo\n  linear(classes)\n}}\n", "relu |> ".repeat(100_000));
    let err = check_source(&src, binding::dataset("cifar10").unwrap(), &Budget::default()).unwrap_err();
    let text = diag::render(&err, "long.arch", &src, false);
    assert!(text.len() < 2_000, "{} bytes rendered", text.len());
    assert!(text.contains("│ …relu |> relu") && text.contains("relu |> foo\n"), "{text}");
    assert!(text.contains("long.arch:2:800019"), "the message keeps the true column: {text}");
    // Short lines render whole.
    let short = "net {\n  conv(8, k=3)\n  foo\n  linear(classes)\n}\n";
    let err = check_source(short, binding::dataset("cifar10").unwrap(), &Budget::default()).unwrap_err();
    let text = diag::render(&err, "short.arch", short, false);
    assert!(text.contains(" 3 │   foo\n"), "{text}");
}
