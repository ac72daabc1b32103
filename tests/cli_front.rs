//! The front-end commands as a user runs them: exit codes, text and JSON output, fmt in place.

use std::path::PathBuf;
use std::process::{Command, Output};

fn nasc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nasc")).args(args).output().expect("nasc runs")
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nasc-cli-front-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn compile_prints_the_shape_table_and_totals() {
    let out = nasc(&["compile", "zoo/resnet18.arch", "--dataset", "cifar10"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("input [3,32,32], 10 classes"));
    assert!(text.contains("parameters  11,173,962"));
    assert!(text.contains("linear(10)"));
}

#[test]
fn compile_json_has_rows_and_totals() {
    let out = nasc(&["compile", "zoo/lenet5.arch", "--dataset", "mnist", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["totals"]["params"], 44_426);
    assert_eq!(v["output"], "[10]");
    assert!(v["rows"].as_array().unwrap().len() > 5);
}

#[test]
fn an_explicit_input_binding_works_and_a_bad_one_is_a_usage_error() {
    let out = nasc(&["compile", "zoo/lenet5.arch", "--input", "3,32,32", "--classes", "7", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["output"], "[7]");
    let out = nasc(&["compile", "zoo/lenet5.arch", "--input", "3,32", "--classes", "7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input must be C,H,W"));
    let out = nasc(&["compile", "zoo/lenet5.arch", "--dataset", "imagenet"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataset `imagenet`"));
}

#[test]
fn check_exits_one_with_a_located_diagnostic() {
    let p = scratch("bad.arch", "net {\n  conv(16, k=3)\n  linear(classes)\n}\n");
    let out = nasc(&["check", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("linear_on_spatial"), "{err}");
    assert!(err.contains("bad.arch:3:3"), "{err}");
    let out = nasc(&["check", p.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v[0]["diagnostics"][0];
    assert_eq!(d["code"], "linear_on_spatial");
    assert_eq!(d["verdict"], "shape_error");
    assert_eq!((d["line"].as_u64(), d["col"].as_u64()), (Some(3), Some(3)));
}

#[test]
fn check_all_datasets_reports_which_binding_fails() {
    let out = nasc(&["check", "zoo/vgg16_bn.arch", "--dataset", "all", "--json"]);
    assert_eq!(out.status.code(), Some(1), "VGG-16 cannot take 28x28 inputs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failing: Vec<&str> =
        v.as_array().unwrap().iter().filter(|r| r["ok"] == false).map(|r| r["dataset"].as_str().unwrap()).collect();
    assert_eq!(failing, ["mnist", "fashion-mnist"]);
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let out = nasc(&["check", "no/such/file.arch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read no/such/file.arch"));
}

#[test]
fn fmt_rewrites_in_place_and_check_mode_reports() {
    let p = scratch("messy.arch", "net {\n    conv( 8,k = 3 , s=1)   # stem\n  gap\n\n\n  linear(classes)\n}\n");
    let path = p.to_str().unwrap();
    let out = nasc(&["fmt", "--check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("messy.arch"));
    assert!(nasc(&["fmt", path]).status.success());
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "net {\n  conv(8, k=3)  # stem\n  gap\n\n  linear(classes)\n}\n");
    assert!(nasc(&["fmt", "--check", path]).status.success());
}

#[test]
fn fmt_refuses_a_broken_program_and_leaves_it_alone() {
    let text = "net {\n  conv(8, k=3;\n}\n";
    let p = scratch("broken.arch", text);
    let out = nasc(&["fmt", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
}

#[test]
fn ops_and_datasets_list_the_language() {
    let out = nasc(&["ops"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("conv(c, k, s=1, p=0, d=1, g=1, bias=true)"));
    let out = nasc(&["datasets", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 7);
}

#[test]
fn output_that_cannot_be_written_ends_the_process_without_a_panic() {
    let zoo = concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/resnet18.arch");
    // A reader that stops early (`| head`): quiet, with the status a shell gives SIGPIPE.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["grammar", zoo])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // A full disk: one line saying so, exit 2.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nasc")).args(["grammar", zoo]).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: cannot write standard output") && !err.contains("panicked"), "{err}");
}

#[test]
fn weights_files_are_named_as_burn_writes_them() {
    let p = scratch("w.arch", "net {\n  flatten\n  linear(classes)\n}\n");
    let p = p.to_str().unwrap();
    for args in [["train", p, "-d", "mnist", "--save", "w.bin"], ["eval", p, "-d", "mnist", "--weights", "w.bin"]] {
        let out = nasc(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("w.bin: weights files end in .mpk"), "{args:?}: {err}");
    }
}

#[test]
fn standard_input_is_read_once_and_a_byte_order_mark_is_skipped() {
    let out = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["diff", "-", "-"])
        .stdin(std::fs::File::open(scratch("in.arch", "net {\n  flatten\n  linear(classes)\n}\n")).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("more than once"), "{err}");
    let bom = scratch("bom.arch", "\u{feff}net {\n  flatten\n  linear(classes)\n}\n");
    let out = nasc(&["check", "-d", "mnist", bom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn grammar_of_a_program_without_a_net_says_so() {
    let p = scratch("blocks.arch", "# only blocks\nblock b(c) {\n  conv(c, k=3, p=1)\n}\n");
    let out = nasc(&["grammar", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("[missing_net]") && err.contains("blocks.arch"), "{err}");
}
