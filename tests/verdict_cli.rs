//! The delta and novelty commands as a user runs them: `nasc diff`, `apply`, `verdict`,
//! `archive add/list` and `novelty`, their output and exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn nasc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nasc")).args(args).current_dir(ROOT).output().expect("nasc runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nasc-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn diff_then_apply_gives_the_second_program() {
    let dir = temp("diff");
    let d = nasc(&["diff", "zoo/resnet18.arch", "zoo/resnet34.arch"]);
    assert_eq!(d.status.code(), Some(0), "{}", stderr(&d));
    let diff = stdout(&d);
    assert!(diff.starts_with("--- a/zoo/resnet18.arch\n+++ b/zoo/resnet34.arch\n@@ "), "{diff}");
    let diff_file = dir.join("r18-r34.diff");
    std::fs::write(&diff_file, &diff).unwrap();
    let out = dir.join("out.arch");
    let a = nasc(&["apply", "zoo/resnet18.arch", s(&diff_file), "-o", s(&out)]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(Path::new(ROOT).join("zoo/resnet34.arch")).unwrap()
    );
    // To standard output, and a failure is exit 1 with the verdict named.
    let a = nasc(&["apply", "zoo/resnet34.arch", s(&diff_file)]);
    assert_eq!(a.status.code(), Some(1));
    assert!(stderr(&a).starts_with("does_not_apply: hunk 1 of"), "{}", stderr(&a));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_compares_canonical_forms_unless_raw() {
    let dir = temp("canon");
    let messy = dir.join("messy.arch");
    let text = std::fs::read_to_string(Path::new(ROOT).join("zoo/lenet5.arch"))
        .unwrap()
        .replace("conv(6, k=5)", "conv( 6,k = 5 )");
    std::fs::write(&messy, text).unwrap();
    let d = nasc(&["diff", "zoo/lenet5.arch", s(&messy)]);
    assert_eq!((d.status.code(), stdout(&d)), (Some(0), String::new()));
    let d = nasc(&["diff", "--raw", "zoo/lenet5.arch", s(&messy)]);
    assert!(stdout(&d).contains("+  conv( 6,k = 5 )"), "{}", stdout(&d));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verdict_archive_and_novelty_work_together() {
    let dir = temp("verdict");
    let archive = dir.join("archive");
    let add = nasc(&["archive", "add", s(&archive), "zoo/resnet18.arch", "zoo/lenet5.arch", "zoo/mlp.arch"]);
    assert_eq!(add.status.code(), Some(0), "{}", stderr(&add));
    assert!(stderr(&add).contains("3 added, 0 already there: 3 entries under cifar10"), "{}", stderr(&add));
    let list = nasc(&["archive", "list", s(&archive)]);
    assert!(stdout(&list).starts_with("3 entries under cifar10\n#0 "), "{}", stdout(&list));

    // A reply that only adds dropout before the classifier: a near duplicate of ResNet-18.
    let reply = dir.join("reply.txt");
    std::fs::write(
        &reply,
        "Add dropout.\n```diff\n@@ -44,4 +44,5 @@\n   basic(512)\n   gap\n+  dropout(0.2)\n   linear(classes)\n }\n```\n",
    )
    .unwrap();
    let v = nasc(&["verdict", "zoo/resnet18.arch", s(&reply), "--archive", s(&archive)]);
    assert_eq!(v.status.code(), Some(1), "{}", stderr(&v));
    assert!(stdout(&v).starts_with("verdict: near_duplicate\n"), "{}", stdout(&v));
    // Without the archive it is ok; the JSON says everything.
    let v = nasc(&["verdict", "zoo/resnet18.arch", s(&reply), "--json"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    let j: serde_json::Value = serde_json::from_str(&stdout(&v)).unwrap();
    assert_eq!(j["verdict"], "ok");
    assert_eq!(j["dataset"], "cifar10");
    assert_eq!(j["diff_lines"], 1);
    assert!(j["program"].as_str().unwrap().contains("  gap\n  dropout(0.2)\n  linear(classes)\n"));
    // At a stricter threshold it is new, and --record adds it.
    let v = nasc(&[
        "verdict",
        "zoo/resnet18.arch",
        s(&reply),
        "--archive",
        s(&archive),
        "--threshold",
        "0.99",
        "--record",
        "r18+dropout",
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));
    assert!(stdout(&v).contains("recorded as archive entry #3"), "{}", stdout(&v));

    let n = nasc(&["novelty", "zoo/resnet18.arch", "--archive", s(&archive), "-k", "2"]);
    assert_eq!(n.status.code(), Some(1));
    let out = stdout(&n);
    assert!(out.starts_with("zoo/resnet18.arch: duplicate (68 operations"), "{out}");
    assert!(out.contains("   1.000  #0      zoo/resnet18.arch  (same structure)\n"), "{out}");
    assert!(out.contains("#3      r18+dropout\n"), "{out}");
    let n = nasc(&["novelty", "zoo/resnet34.arch", "--archive", s(&archive), "--json"]);
    assert_eq!(n.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_str(&stdout(&n)).unwrap();
    assert_eq!(j["verdict"], "new");
    assert_eq!(j["archive_entries"], 4);

    // The archive was made under cifar10: another dataset is refused, as bad usage.
    let n = nasc(&["novelty", "zoo/lenet5.arch", "--archive", s(&archive), "--dataset", "mnist"]);
    assert_eq!(n.status.code(), Some(2));
    assert!(stderr(&n).contains("use an archive per dataset"), "{}", stderr(&n));

    // A file cut inside an entry reads the whole entries before the cut, and says so.
    let bin = archive.join("archive.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 3]).unwrap();
    let list = nasc(&["archive", "list", s(&archive)]);
    assert!(stdout(&list).starts_with("3 entries under cifar10\n"), "{}", stdout(&list));
    assert!(stderr(&list).contains("the last") && stderr(&list).contains("are ignored"), "{}", stderr(&list));
    // And -k 0 is refused as bad usage.
    let n = nasc(&["novelty", "zoo/lenet5.arch", "--archive", s(&archive), "-k", "0"]);
    assert_eq!(n.status.code(), Some(2), "{}", stdout(&n));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verdict_reports_delta_and_shape_failures_with_exit_1() {
    let dir = temp("fail");
    let reply = dir.join("reply.txt");
    std::fs::write(&reply, "I think the network is fine as it is.").unwrap();
    let v = nasc(&["verdict", "zoo/lenet5.arch", s(&reply)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).starts_with("verdict: no_diff\n\nno diff found"), "{}", stdout(&v));

    std::fs::write(&reply, "```diff\n@@ -17,3 +17,2 @@\n   flatten\n-  linear(120)\n   relu\n```\n").unwrap();
    let v = nasc(&["verdict", "zoo/lenet5.arch", s(&reply), "--dataset", "mnist"]);
    assert!(stdout(&v).starts_with("verdict: ok"), "{}", stdout(&v));
    std::fs::write(
        &reply,
        "```diff\n@@ -14,3 +14,3 @@\n   conv(16, k=5)\n   relu\n-  maxpool(k=2)\n+  conv(8, k=9)\n```\n",
    )
    .unwrap();
    let v = nasc(&["verdict", "zoo/lenet5.arch", s(&reply), "--dataset", "mnist"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).starts_with("verdict: shape_error"), "{}", stdout(&v));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grammar_prints_the_parents_diff_grammar_as_lark_or_gbnf() {
    let lark = nasc(&["grammar", "zoo/lenet5.arch"]);
    assert!(lark.status.success(), "{}", String::from_utf8_lossy(&lark.stderr));
    let lark = String::from_utf8(lark.stdout).unwrap();
    assert!(lark.starts_with("start: \"```diff\\n--- a/program.arch\\n+++ b/program.arch\\n\" first_0_0\n"), "{lark}");
    assert!(lark.contains("\"   conv(6, k=5)\\n\""), "the parent's lines are in it: {lark}");
    let gbnf = nasc(&["grammar", "zoo/lenet5.arch", "--gbnf", "--file", "lenet5.arch"]);
    let gbnf = String::from_utf8(gbnf.stdout).unwrap();
    assert!(gbnf.starts_with("root ::= \"```diff\\n--- a/lenet5.arch\\n+++ b/lenet5.arch\\n\""), "{gbnf}");
    let bad = nasc(&["grammar", "/nonexistent.arch"]);
    assert_eq!(bad.status.code(), Some(2));
    // With a dataset, lines added where the flow is a vector offer no pooling: the grammar has
    // statement rules by kind of flow (and by what each place must keep, `_l{n}`).
    let typed = nasc(&["grammar", "zoo/lenet5.arch", "--dataset", "fashion-mnist"]);
    assert!(typed.status.success(), "{}", String::from_utf8_lossy(&typed.stderr));
    let typed = String::from_utf8(typed.stdout).unwrap();
    assert!(typed.contains("s0v_b0_l") && typed.contains("s0m_b0_l"), "{typed}");
    let unknown = nasc(&["grammar", "zoo/lenet5.arch", "--dataset", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--dataset nope: unknown"));
}

#[test]
fn corpus_writes_chat_jsonl_of_valid_diffs_in_the_search_prompt_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("format.jsonl");
    let run = nasc(&[
        "corpus",
        "--out",
        out.to_str().unwrap(),
        "--baselines",
        "zoo/lenet5.arch",
        "--baselines",
        "zoo/resnet18.arch",
        "--per-program",
        "4",
        "--json",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(counts["examples"], 8, "{counts}");
    let text = std::fs::read_to_string(&out).unwrap();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let m = e["messages"].as_array().unwrap();
        assert_eq!((m[0]["role"].as_str(), m[1]["role"].as_str()), (Some("user"), Some("assistant")));
        assert!(m[1]["content"].as_str().unwrap().starts_with("```diff\n--- a/program.arch\n+++ b/program.arch\n"));
        assert_eq!(e["dataset"], "fashion-mnist");
    }
    let bad = nasc(&["corpus", "--out", out.to_str().unwrap(), "--datasets", "imagenet"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("imagenet"));
}
