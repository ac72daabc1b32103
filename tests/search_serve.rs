//! The `openai` generator against a real OpenAI-compatible server: `nasc serve` with
//! SmolLM2-135M-Instruct on loopback, driven by `nasc search`, free and held to each parent's diff
//! grammar. It needs the model file (`tests/common/smollm2.rs`; `scripts/test-deps` fetches it).

#[path = "common/smollm2.rs"]
mod smollm2;

use nasc_search::store::{Candidate, Role};
use nasc_search::Store;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nasc serve` child on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// Runs `nasc search` (one cycle of `candidates` from LeNet-5 on 1,000 Fashion-MNIST images)
/// through `server`, with `sampling` and `openai` lines added to those sections; returns the
/// run's candidates. The run's folder is removed afterwards.
fn search_through(server: &Server, name: &str, candidates: usize, sampling: &str, openai: &str) -> Vec<Candidate> {
    let dir = std::env::temp_dir().join(format!("nasc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let data = std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from);
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "datasets = [\"fashion-mnist\"]\nbaselines = [\"{root}/zoo/lenet5.arch\"]\ncycles = 1\n\
             candidates = {candidates}\nretries = 0\ngenerator = \"openai\"\n[sampling]\n{sampling}\n[openai]\n\
             base_url = \"{}\"\nmodel = \"smollm2\"\nconcurrency = 2\ntimeout_s = 600.0\n{openai}\n[train]\n\
             data_root = \"{}\"\nlimit = 1000\neval_batch = 1000\n",
            server.url,
            data.display()
        ),
    )
    .unwrap();
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["search", "--json", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = Store::open(&run).unwrap().all().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    all.into_iter().filter(|c| c.role == Role::Candidate).collect()
}

#[test]
fn a_search_runs_its_candidates_through_nasc_serve_with_smollm2() {
    let Some(model) = smollm2::smollm2_path() else { return };
    let server = start_server(model.to_str().unwrap());
    let candidates = search_through(&server, "search-serve", 2, "max_tokens = 64", "");
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
    let candidates =
        search_through(&server, "search-constrained", 6, "max_tokens = 300\nn = 2", "constrain = \"lark\"");
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
