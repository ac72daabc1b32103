//! `nasc lm generate` as a user runs it: on a tiny random GGUF checkpoint written here, its errors, and on
//! the real SmolLM2-135M-Instruct (`tests/common/smollm2.rs`) against transformers' stored reply.

#[path = "common/smollm2.rs"]
mod smollm2;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/tiny_lm.rs"]
mod tiny_lm;
use tiny_lm::tiny_gguf;

fn nasc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nasc")).args(args).output().expect("nasc runs")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "nasc failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn token_ids(c: &serde_json::Value) -> Vec<u64> {
    c["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

#[test]
fn generate_on_a_tiny_checkpoint_reports_text_ids_and_speed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let v = json_of(&nasc(&["lm", "generate", "--model", m, "--prompt", "hello", "--max-new-tokens", "6", "--json"]));
    let c = &v["completions"][0];
    let ids = token_ids(c);
    assert!(!ids.is_empty() && ids.len() <= 6, "{v}");
    assert_eq!(c["finish_reason"], if ids.len() == 6 { "length" } else { "stop" });
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["prompt_tokens"].as_u64().unwrap() > 1, "the chat template wraps the prompt");

    // Streaming text equals the JSON text of the same greedy reply.
    let out = nasc(&["lm", "generate", "--model", m, "--prompt", "hello", "--max-new-tokens", "6"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim_end_matches('\n'), c["text"].as_str().unwrap());
}

#[test]
fn sampled_replies_are_repeatable_with_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let args = [
        "lm",
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hello",
        "--raw",
        "--temperature",
        "1.0",
        "--top-k",
        "40",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "-n",
        "3",
        "--max-new-tokens",
        "8",
        "--json",
    ];
    let a = json_of(&nasc(&args));
    let b = json_of(&nasc(&args));
    let replies = a["completions"].as_array().unwrap();
    assert_eq!(replies.len(), 3);
    assert_eq!(a["completions"], b["completions"]);
    assert!(a["prompt_tokens"].as_u64().unwrap() <= 4, "--raw encodes the bare text (he, ll, o, perhaps BOS): {a}");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let not_gguf = dir.path().join("notes.txt");
    std::fs::write(&not_gguf, "hello").unwrap();
    let missing = dir.path().join("missing.gguf");
    for (args, want) in [
        (vec!["--model", missing.to_str().unwrap()], "no such file"),
        (vec!["--model", not_gguf.to_str().unwrap()], "not a GGUF file"),
        (vec!["--model", dir.path().to_str().unwrap()], "config.json"),
        (vec!["--model", m, "--top-p", "0"], "top_p 0"),
        (vec!["--model", m, "--temperature=-2"], "temperature -2"),
        (vec!["--model", m, "--device", "tpu"], "tpu"),
        (vec!["--model", m, "-n", "100000000"], "1..=1024"),
    ] {
        let mut full = vec!["lm", "generate", "--prompt", "hi"];
        full.extend(args);
        let out = nasc(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {err}");
        assert!(err.contains(want), "{full:?}: {err}");
        assert!(!err.contains("panicked"), "{full:?}: {err}");
    }
}

#[test]
fn smollm2_reply_matches_transformers_from_the_command_line() {
    let Some(path) = smollm2::smollm2_path() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("../crates/lm/reference/smollm2_greedy.json")).unwrap();
    let case = &reference["cases"][1];
    let max = reference["max_new_tokens"].to_string();
    let v = json_of(&nasc(&[
        "lm",
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--max-new-tokens",
        &max,
        "--json",
    ]));
    let c = &v["completions"][0];
    let want: Vec<u64> = case["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(token_ids(c), want);
    assert_eq!(c["text"], case["greedy_text"]);
}

/// Chat JSONL of short conversations for the tiny model.
fn corpus(dir: &Path) -> PathBuf {
    let lines = [("hello", "hello hello"), ("hi", "ll he"), ("hey", "hell")].map(|(u, a)| {
        serde_json::json!({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]})
            .to_string()
    });
    let path = dir.join("corpus.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn greedy(model: &str, extra: &[&str], prompt: &str) -> Vec<u64> {
    let mut args = vec!["lm", "generate", "--model", model, "--prompt", prompt, "--max-new-tokens", "8", "--json"];
    args.extend(extra);
    token_ids(&json_of(&nasc(&args))["completions"][0])
}

#[test]
fn finetune_learns_the_replies_and_writes_peft_and_merged_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("adapter");
    let merged = dir.path().join("merged");
    let base_args = [
        "lm",
        "finetune",
        "--model",
        m,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rank",
        "8",
        "--alpha",
        "16",
        "--dropout",
        "0",
        "--lr",
        "0.02",
        "--batch",
        "3",
        "--warmup",
        "2",
        "--save-every",
        "5",
    ];
    let mut args = base_args.to_vec();
    args.extend(["--epochs", "200", "--merge", merged.to_str().unwrap(), "--json"]);
    let v = json_of(&nasc(&args));
    assert_eq!(v["steps"], 200, "{v}");
    let losses: Vec<f64> = v["losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(v["final_loss"].as_f64().unwrap() < 0.3 * losses[0], "loss did not fall: {losses:?}");
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["r"], 8);
    assert_eq!(config["peft_type"], "LORA");
    assert!(out.join("adapter_model.safetensors").exists());

    // The adapter and the merged checkpoint give the same greedy reply, and it is the trained one.
    let with_adapter = greedy(m, &["--adapter", out.to_str().unwrap()], "hello");
    assert_eq!(greedy(merged.to_str().unwrap(), &[], "hello"), with_adapter);
    for (p, reply) in [("hello", "hello hello"), ("hi", "ll he"), ("hey", "hell")] {
        let v = json_of(&nasc(&[
            "lm",
            "generate",
            "--model",
            m,
            "--adapter",
            out.to_str().unwrap(),
            "--prompt",
            p,
            "--json",
            "--max-new-tokens",
            "8",
        ]));
        assert_eq!(v["completions"][0]["text"], reply, "{p}");
    }

    // --resume continues from the saved checkpoint: 200 steps done, 205 asked for, AdamW's
    // moments read back with the adapter.
    assert!(out.join("optimizer.safetensors").exists());
    let mut args = base_args.to_vec();
    args.extend(["--epochs", "205", "--resume", "--json"]);
    let v = json_of(&nasc(&args));
    assert_eq!(v["steps"], 205, "{v}");
    assert_eq!(v["losses"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!((v["resumed_from_step"].as_u64(), v["restored_moments"].as_bool()), (Some(200), Some(true)), "{v}");
    // A checkpoint without moments (an older nasc's) resumes with fresh ones, and says so.
    std::fs::remove_file(out.join("optimizer.safetensors")).unwrap();
    let mut args = base_args.to_vec();
    args.extend(["--epochs", "206", "--resume"]);
    let o = nasc(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("AdamW's moments started afresh at step 205"), "{err}");

    // --init-adapter starts from the trained adapter, with its rank: the first loss is already
    // the trained one's, where a fresh adapter starts at the base model's loss.
    let cont = dir.path().join("continued");
    let first_loss = |extra: &[&str], out: &Path| {
        let mut args = vec!["lm", "finetune", "--model", m, "--data", data.to_str().unwrap(), "--dropout", "0"];
        args.extend(["--lr", "1e-6", "--batch", "3", "--epochs", "1", "--json", "--out", out.to_str().unwrap()]);
        args.extend(extra);
        let v = json_of(&nasc(&args));
        v["losses"][0].as_f64().unwrap()
    };
    let continued = first_loss(&["--init-adapter", out.to_str().unwrap(), "--rank", "2"], &cont);
    let fresh = first_loss(&["--rank", "2"], &dir.path().join("fresh"));
    assert!(continued < 0.3 * fresh, "continued {continued}, fresh {fresh}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cont.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(8), Some(16.0)), "{config}");

    // --data given twice trains on both files as one set (a search's pairs and a replayed
    // corpus): six conversations in batches of three, two steps an epoch.
    let twice = dir.path().join("twice");
    let d = data.to_str().unwrap();
    let args = ["lm", "finetune", "--model", m, "--data", d, "--data", d, "--rank", "2", "--batch", "3"];
    let mut args = args.to_vec();
    args.extend(["--epochs", "1", "--json", "--out", twice.to_str().unwrap()]);
    assert_eq!(json_of(&nasc(&args))["steps"], 2);
}

#[test]
fn finetune_errors_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let data = corpus(dir.path());
    let d = data.to_str().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": []}\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = empty.to_str().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--model", m, "--data", "missing.jsonl", "--out", o], "missing.jsonl"),
        (vec!["--model", m, "--data", bad.to_str().unwrap(), "--out", o], "bad.jsonl:1"),
        (vec!["--model", m, "--data", d, "--out", o, "--targets", "q,mlp"], "\"mlp\""),
        (vec!["--model", m, "--data", d, "--out", o, "--rank", "0"], "rank"),
        (vec!["--model", m, "--data", d, "--out", e, "--resume"], "trainer_state.json"),
        (vec!["--model", m, "--data", d, "--out", o, "--batch", "0"], "--batch"),
        (vec!["--model", m, "--data", d, "--out", o, "--init-adapter", e], "--init-adapter"),
        (vec!["--model", m, "--data", d, "--out", o, "--init-adapter", e, "--resume"], "cannot be used with"),
    ] {
        let mut full = vec!["lm", "finetune"];
        full.extend(args);
        let out = nasc(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {err}");
        assert!(err.contains(want), "{full:?}: {err}");
        assert!(!err.contains("panicked"), "{full:?}: {err}");
    }
    let out = nasc(&["lm", "generate", "--model", m, "--prompt", "hi", "--adapter", e]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn conversations_cut_before_the_reply_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let data = corpus(dir.path());
    // One more conversation whose prompt alone is longer than --max-len.
    let long = serde_json::json!({"messages": [{"role": "user", "content": "hello ".repeat(40)},
                                               {"role": "assistant", "content": "hell"}]});
    let text = std::fs::read_to_string(&data).unwrap() + &long.to_string() + "\n";
    std::fs::write(&data, text).unwrap();
    let out = dir.path().join("adapter");
    let args = ["lm", "finetune", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
    let mut full = args.to_vec();
    full.extend(["--out", out.to_str().unwrap(), "--max-len", "48", "--rank", "2", "--json"]);
    let o = nasc(&full);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 of 4 conversations") && err.contains("--max-len 48"), "{err}");
    let v = json_of(&o);
    // Three conversations, batch 1: three steps, each with a loss from real tokens.
    let losses: Vec<f64> = v["losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 3, "{v}");
    assert!(losses.iter().all(|l| *l > 0.0), "{losses:?}");
}

#[test]
fn generate_with_a_grammar_file_holds_every_reply_to_it_and_a_broken_grammar_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let model = model.to_str().unwrap();
    let grammar = dir.path().join("digits.gbnf");
    std::fs::write(&grammar, "# two digits, a dash, a or b\nroot ::= [0-9]{2} \"-\" (\"a\" | \"b\")\n").unwrap();
    let out = json_of(&nasc(&[
        "lm",
        "generate",
        "--model",
        model,
        "--prompt",
        "hi",
        "-n",
        "4",
        "--temperature",
        "1",
        "--seed",
        "3",
        "--max-new-tokens",
        "30",
        "--grammar",
        grammar.to_str().unwrap(),
        "--json",
    ]));
    for c in out["completions"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        let b = t.as_bytes();
        assert!(
            b.len() == 4 && b[..2].iter().all(u8::is_ascii_digit) && (t.ends_with("-a") || t.ends_with("-b")),
            "{out}"
        );
        assert_eq!(c["finish_reason"], "stop", "{out}");
    }
    let broken = dir.path().join("broken.lark");
    std::fs::write(&broken, "start: \"a\" b\n").unwrap();
    let out = nasc(&["lm", "generate", "--model", model, "--prompt", "hi", "--grammar", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.lark: Lark grammar") && err.contains('b'), "{err}");
    let out = nasc(&["lm", "generate", "--model", model, "--prompt", "hi", "--grammar", "/nonexistent.gbnf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grammar /nonexistent.gbnf"));
}
