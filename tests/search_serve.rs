//! The `openai` generator against a real OpenAI-compatible server: `nasc serve` with
//! SmolLM2-135M-Instruct on loopback, driven by `nasc search`, free and held to each parent's diff
//! grammar. It needs the model file (`tests/common/smollm2.rs`; `scripts/test-deps` fetches it).

#[path = "common/lenet5_search.rs"]
mod lenet5_search;
#[path = "common/smollm2.rs"]
mod smollm2;

use lenet5_search::{search_through, Server};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start_server(model: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["serve", "--model", model, "--port", "0", "--served-model-name", "smollm2"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nasc serve starts");
    // The server prints its address on stderr once the model is loaded.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    let address = loop {
        assert!(Instant::now() < deadline, "nasc serve printed no address: {seen:?}");
        let Some(Ok(line)) = lines.next() else { panic!("nasc serve ended early: {seen:?}") };
        if let Some(at) = line.find("http://127.0.0.1:") {
            let rest = &line[at..];
            break rest.split_whitespace().next().unwrap().trim_end_matches(['/', '.', ',']).to_string();
        }
        seen.push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let base = address.trim_end_matches("/v1").to_string();
    Server { child, url: format!("{base}/v1") }
}

#[test]
fn a_search_runs_its_candidates_through_nasc_serve_with_smollm2() {
    let Some(model) = smollm2::smollm2_path() else { return };
    let server = start_server(model.to_str().unwrap());
    let (_, candidates) = search_through(&server.url, "search-serve", 2, "", "max_tokens = 64", "concurrency = 2");
    assert_eq!(candidates.len(), 2, "{candidates:#?}");
    for c in &candidates {
        assert_eq!(c.generator, "openai");
        assert_eq!(c.adapter.as_deref(), Some("smollm2"));
        // A real reply, counted by the server's tokenizer, judged like any other.
        let tokens = c.reply_tokens.expect("the server reports usage");
        assert!(tokens > 0 && tokens <= 64, "{tokens} tokens: {c:#?}");
        assert!(c.front_verdict.is_front(), "{c:#?}");
    }
}

/// A constrained cycle: every reply is the grammar's (a fenced diff whose hunks walk the parent in
/// order), so every reply that ends (rather than running into `max_tokens`) extracts and applies;
/// what the verdict judges is the network. Seeded, so the same replies every run.
#[test]
fn a_constrained_search_cycle_gets_replies_that_all_extract_and_apply() {
    let Some(model) = smollm2::smollm2_path() else { return };
    let server = start_server(model.to_str().unwrap());
    let (_, candidates) = search_through(
        &server.url,
        "search-constrained",
        6,
        "",
        "max_tokens = 300\nn = 2",
        "concurrency = 2\nconstrain = \"lark\"",
    );
    assert_eq!(candidates.len(), 6, "{candidates:#?}");
    let ended: Vec<_> = candidates.iter().filter(|c| c.reply_tokens.is_some_and(|t| t < 300)).collect();
    assert!(!ended.is_empty(), "every reply ran into max_tokens: {candidates:#?}");
    for c in ended {
        use nasc_delta::Verdict::*;
        assert!(
            !matches!(c.front_verdict, NoDiff | MalformedDiff | DoesNotApply | Ambiguous),
            "a constrained reply did not extract and apply: {:?}\n{c:#?}",
            c.front_verdict
        );
    }
}
