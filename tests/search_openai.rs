//! The `openai` generator against OpenAI-compatible servers this test starts on loopback: good
//! replies (chat and completions), 429 then success, 500, a slow server past the timeout, a server
//! that is down; and a whole `nasc search` through one, with a retry fed the verdict's diagnostic.

#[path = "common/killed_runs.rs"]
mod killed_runs;

use nasc_delta::Verdict;
use nasc_grammar::engine::Checker;
use nasc_search::config::{Api, Constrain, OpenAiConfig, Sampling};
use nasc_search::generate::{Generator, OpenAi, Request};
use nasc_search::store::Role;
use nasc_search::Store;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "common/tiny_lm.rs"]
mod tiny_lm;

/// The requests a test server saw: path and body.
type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// What the server answers to its n-th request (0-based), given the request's path and body.
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

/// A one-thread HTTP/1.1 server on 127.0.0.1; returns its base URL (…/v1), the request count
/// and the requests seen (path, body).
fn serve(
    answer: impl Fn(usize, &str, &serde_json::Value) -> Answer + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (count.clone(), seen.clone());
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (c, s, answer) = (c.clone(), s.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let n = c.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().push((path.clone(), json.clone()));
                let a = answer(n, &path, &json);
                std::thread::sleep(a.delay);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    a.status,
                    a.body.len(),
                    a.body
                );
            });
        }
    });
    (url, count, seen)
}

fn chat(content: &str) -> Answer {
    let body = serde_json::json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 42, "total_tokens": 142}
    });
    Answer { status: 200, body: body.to_string(), delay: Duration::ZERO }
}

fn status(code: u16) -> Answer {
    Answer { status: code, body: format!("{{\"error\": {{\"message\": \"status {code}\"}}}}"), delay: Duration::ZERO }
}

fn config(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.into(),
        model: "smol-lora".into(),
        retries: 2,
        backoff_ms: 10,
        timeout_s: 5.0,
        ..OpenAiConfig::default()
    }
}

fn request() -> Request {
    Request {
        prompt: "improve this".into(),
        base: "net {\n  gap\n}\n".into(),
        dataset: "cifar10".into(),
        seed: 5,
        feedback: Vec::new(),
        temperature: None,
        avoid: Vec::new(),
    }
}

#[test]
fn a_good_chat_reply_is_returned_with_its_token_count_and_the_request_carries_the_sampling() {
    let (url, count, seen) = serve(|_, _, _| chat("```diff\n@@ -1 +1 @@\n```"));
    let g = OpenAi::new(&config(&url), &Sampling::default());
    let r = g.generate(&request()).unwrap();
    assert_eq!((r.text.as_str(), r.tokens), ("```diff\n@@ -1 +1 @@\n```", Some(42)));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let (path, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(body["model"], "smol-lora");
    assert_eq!((body["temperature"].as_f64(), body["top_p"].as_f64()), (Some(0.35), Some(0.9)));
    assert_eq!((body["top_k"].as_u64(), body["max_tokens"].as_u64()), (Some(50), Some(1024)));
    assert_eq!(body["messages"][0]["content"], "improve this");
    assert_eq!(g.adapter().as_deref(), Some("smol-lora"));
}

#[test]
fn the_completions_api_sends_a_prompt_and_feedback_follows_it() {
    let (url, _, seen) = serve(|_, _, _| Answer {
        status: 200,
        body: serde_json::json!({"choices": [{"text": "a reply"}]}).to_string(),
        delay: Duration::ZERO,
    });
    let g = OpenAi::new(&OpenAiConfig { api: Api::Completions, ..config(&url) }, &Sampling::default());
    let mut req = request();
    req.feedback.push(("bad reply".into(), "no_diff: the reply holds no diff".into()));
    let r = g.generate(&req).unwrap();
    assert_eq!((r.text.as_str(), r.tokens), ("a reply", None));
    let (path, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/v1/completions");
    let prompt = body["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("improve this") && prompt.contains("bad reply") && prompt.contains("no_diff"),
        "{prompt}"
    );
}

#[test]
fn a_429_is_retried_with_backoff_and_then_succeeds() {
    let (url, count, _) = serve(|n, _, _| if n == 0 { status(429) } else { chat("ok now") });
    let g = OpenAi::new(&config(&url), &Sampling::default());
    assert_eq!(g.generate(&request()).unwrap().text, "ok now");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn a_server_error_is_retried_then_reported_with_its_status_and_url() {
    let (url, count, _) = serve(|_, _, _| status(500));
    let g = OpenAi::new(&config(&url), &Sampling::default());
    let e = g.generate(&request()).unwrap_err().message;
    assert_eq!(count.load(Ordering::SeqCst), 3, "one try and two retries");
    assert!(e.contains("500") && e.contains(&url) && e.contains("after 3 tries"), "{e}");
}

#[test]
fn a_client_error_is_not_retried() {
    let (url, count, _) = serve(|_, _, _| status(404));
    let g = OpenAi::new(&config(&url), &Sampling::default());
    let e = g.generate(&request()).unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(!e.fatal, "one request's error");
    let e = e.message;
    assert!(e.contains("404") && e.contains("status 404"), "{e}");
}

#[test]
fn a_slow_server_hits_the_timeout() {
    let (url, count, _) = serve(|_, _, _| Answer { delay: Duration::from_secs(3), ..chat("late") });
    let g = OpenAi::new(&OpenAiConfig { timeout_s: 0.3, retries: 1, ..config(&url) }, &Sampling::default());
    let start = std::time::Instant::now();
    let e = g.generate(&request()).unwrap_err().message;
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(e.contains("did not answer within 0.3 s") && e.contains(&url), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

/// A loopback port with nothing listening.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    drop(l);
    url
}

#[test]
fn a_server_that_is_down_is_one_clear_error_naming_the_url() {
    let url = dead_url();
    let g = OpenAi::new(&config(&url), &Sampling::default());
    let e = g.generate(&request()).unwrap_err();
    assert!(e.fatal, "no request can succeed");
    let e = e.message;
    assert!(e.contains("cannot reach") && e.contains(&format!("{url}/chat/completions")), "{e}");
}

/// `nasc search --json --config CONFIG --out RUN`.
fn nasc_search(config: impl AsRef<std::path::Path>, run: impl AsRef<std::path::Path>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["search", "--json", "--config"])
        .arg(config.as_ref())
        .arg("--out")
        .arg(run.as_ref())
        .output()
        .unwrap()
}

fn data_root() -> PathBuf {
    std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from)
}

fn search_config(dir: &std::path::Path, url: &str) -> PathBuf {
    search_config_with(dir, url, 1, 3, "")
}

fn search_config_with(dir: &std::path::Path, url: &str, cycles: usize, candidates: usize, extra: &str) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!(
            "datasets = [\"fashion-mnist\"]\nbaselines = [\"{root}/zoo/lenet5.arch\"]\ncycles = {cycles}\n\
             candidates = {candidates}\ngenerator = \"openai\"\n[openai]\nbase_url = \"{url}\"\nmodel = \"base\"\nretries = 0\n\
             [train]\ndata_root = \"{}\"\nlimit = 1000\neval_batch = 1000\n{extra}",
            data_root().display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_search_through_an_openai_server_records_replies_tokens_and_retries() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    // The first reply holds no diff; every later one widens the first conv to a new width.
    let (url, _, seen) = serve(move |n, _, body| {
        if n == 0 {
            return chat("I would make it wider.");
        }
        assert!(body["messages"][0]["content"].as_str().unwrap().contains(" |   conv(6, k=5)"), "numbered lines");
        chat(&format!("Widen the first convolution.\n{}", widened(&lenet, 6 + 2 * n)))
    });
    let dir = std::env::temp_dir().join(format!("nasc-openai-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = dir.join("run");
    let out = nasc_search(search_config(&dir, &url), &run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = Store::open(&run).unwrap().all().unwrap();
    let cands: Vec<_> = all.iter().filter(|c| c.role == Role::Candidate).collect();
    assert_eq!(cands.len(), 3);
    assert!(cands.iter().all(|c| c.generator == "openai" && c.adapter.as_deref() == Some("base")));
    assert!(cands.iter().all(|c| c.front_verdict == Verdict::Ok && c.reply_tokens == Some(42)), "{cands:#?}");
    // Exactly one candidate needed a retry, and its second request carried the diagnostic.
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 4);
    let retry = requests.iter().find(|(_, b)| b["messages"].as_array().unwrap().len() == 3).expect("a retry");
    assert!(retry.1["messages"][2]["content"].as_str().unwrap().contains("no_diff"), "{:?}", retry.1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A retry after a duplicate is sampled hotter (`[sampling] retry_temperature`), with a seed of
/// its own, and under a grammar without the edit that repeated a network: a server that, like a
/// small model held to the grammar, writes the same edit at the same temperature gets the
/// chance to write another, and a model held to the retry's grammar could not write it again.
#[test]
fn a_retry_after_a_duplicate_is_sampled_hotter_with_its_own_seed_and_without_the_edit() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    let served = lenet.clone();
    let (url, _, seen) = serve(move |n, _, body| {
        let hot = body["temperature"].as_f64().unwrap() > 0.5;
        chat(&widened(&served, if hot { 20 + n } else { 10 }))
    });
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let extra = "[sampling]\ntemperature = 0.3\nretry_temperature = 0.9\n";
    let config = search_config_with(dir.path(), &url, 1, 2, extra);
    let text =
        std::fs::read_to_string(&config).unwrap().replace("retries = 0\n", "retries = 0\nconstrain = \"lark\"\n");
    std::fs::write(&config, text).unwrap();
    let out = nasc_search(config, &run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = Store::open(&run).unwrap().all().unwrap();
    let mut verdicts: Vec<Vec<Verdict>> =
        all.iter().filter(|c| c.role == Role::Candidate).map(|c| c.attempt_verdicts.clone()).collect();
    verdicts.sort_by_key(Vec::len);
    assert_eq!(verdicts, [vec![Verdict::Ok], vec![Verdict::Duplicate, Verdict::Ok]]);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    let (first, retry): (Vec<_>, Vec<_>) =
        requests.iter().map(|(_, b)| b).partition(|b| b["messages"].as_array().unwrap().len() == 1);
    assert_eq!(retry[0]["temperature"].as_f64(), Some(0.9));
    assert!(first.iter().all(|b| b["temperature"].as_f64() == Some(0.3)));
    assert!(first.iter().all(|b| b["seed"] != retry[0]["seed"]), "the retry's seed is its own");
    assert!(retry[0]["messages"][2]["content"].as_str().unwrap().contains("duplicate"));
    let grammar = |b: &serde_json::Value| Checker::lark(b["structured_outputs"]["grammar"].as_str().unwrap()).unwrap();
    let again = widened(&lenet, 10);
    grammar(first[0]).accepts(again.trim_end()).unwrap();
    assert!(grammar(retry[0]).accepts(again.trim_end()).is_err(), "the retry's grammar offers the duplicate's edit");
    grammar(retry[0]).accepts(widened(&lenet, 20).trim_end()).unwrap();
}

#[test]
fn a_search_against_a_server_that_is_down_stops_with_one_error_naming_the_url() {
    let url = dead_url();
    let dir = std::env::temp_dir().join(format!("nasc-openai-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = nasc_search(search_config(&dir, &url), dir.join("run"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains(&url) && err.contains("cannot reach"), "{err}");
    // No candidate was recorded as failed: the run can be resumed once the server is up.
    let all = Store::open(&dir.join("run")).unwrap().all().unwrap();
    assert_eq!(all.iter().filter(|c| c.role == Role::Candidate).count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request the server refuses (a 400: a prompt past its context, a field it will not take)
/// is that candidate's verdict, `generator_error` with the server's message, and the run goes
/// on; a server that refuses every first request of a cycle is one error that stops the run.
#[test]
fn a_refused_request_is_its_candidates_verdict_and_the_run_goes_on() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    let (url, _, _) = serve(move |_, _, body| {
        // The request of seed-odd slots is refused; the others widen the first conv.
        if body["seed"].as_u64().unwrap() % 2 == 1 {
            return Answer {
                status: 400,
                body: "{\"error\": {\"message\": \"this prompt is too long for me\"}}".into(),
                delay: Duration::ZERO,
            };
        }
        let width = 8 + (body["seed"].as_u64().unwrap() % 64) as usize;
        chat(&widened(&lenet, width))
    });
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = nasc_search(search_config_with(dir.path(), &url, 1, 6, ""), &run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = Store::open(&run).unwrap().all().unwrap();
    let cands: Vec<_> = all.iter().filter(|c| c.role == Role::Candidate).collect();
    assert_eq!(cands.len(), 6);
    let refused: Vec<_> = cands.iter().filter(|c| c.verdict == Verdict::GeneratorError).collect();
    assert!(!refused.is_empty() && refused.len() < 6, "{cands:#?}");
    let db = rusqlite::Connection::open(run.join("run.db")).unwrap();
    for c in &refused {
        let (diagnostic, reply): (String, Option<String>) = db
            .query_row("SELECT diagnostic, reply FROM candidates WHERE id = ?1", [c.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert!(diagnostic.contains("this prompt is too long for me"), "{diagnostic}");
        assert_eq!((c.attempts, reply), (1, None), "not retried, no reply: {c:#?}");
    }
    // Every first request refused: one error.
    let (url, _, _) = serve(|_, _, _| status(400));
    let out = nasc_search(search_config_with(dir.path(), &url, 1, 2, ""), dir.path().join("run2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("every request of cycle 1 failed") && err.contains("status 400"), "{err}");
}

#[test]
fn between_cycles_the_finetune_command_gets_the_corpus_and_the_generator_the_new_adapter() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    // Each reply widens the first conv of whatever program the prompt shows; a wider one
    // trains better often enough, and the test needs only the command and the model name.
    let (url, _, seen) = serve(move |n, _, _| chat(&widened(&lenet, 8 + 2 * n)));
    let dir = std::env::temp_dir().join(format!("nasc-openai-ft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A stand-in fine-tuner: it copies the corpus into the adapter folder.
    let extra = "[finetune]\ncommand = [\"sh\", \"-c\", \"cp \\\"$0\\\" \\\"$1/train.jsonl\\\"\", \"{corpus}\", \"{adapter}\"]\n\
                 adapter_name = \"search-{cycle}\"\n";
    let run = dir.join("run");
    let out = nasc_search(search_config_with(&dir, &url, 2, 2, extra), &run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let corpus = std::fs::read_to_string(run.join("corpus/after-cycle-1.jsonl")).unwrap();
    assert_eq!(std::fs::read_to_string(run.join("adapters/cycle-2/train.jsonl")).unwrap(), corpus);
    assert!(!run.join("adapters/cycle-3").exists(), "no fine-tune after the last cycle");
    let seen = seen.lock().unwrap().clone();
    // The server was asked to load the new adapter under its name, before any request used it.
    let loads: Vec<&(String, serde_json::Value)> = seen.iter().filter(|(p, _)| p == "/v1/load_lora_adapter").collect();
    assert_eq!(loads.len(), 1, "{seen:?}");
    assert_eq!(loads[0].1["lora_name"], "search-2");
    let adapter = std::path::absolute(run.join("adapters/cycle-2")).unwrap();
    assert_eq!(loads[0].1["lora_path"].as_str().unwrap(), adapter.to_str().unwrap());
    let load_at = seen.iter().position(|(p, _)| p == "/v1/load_lora_adapter").unwrap();
    assert!(seen[load_at + 1..].iter().all(|(_, b)| b["model"] == "search-2"));
    let models: Vec<String> = seen
        .iter()
        .filter(|(p, _)| p == "/v1/chat/completions")
        .map(|(_, b)| b["model"].as_str().unwrap().to_string())
        .collect();
    // Cycle 2 may need retries (its parent may be a widened program the reply does not fit).
    assert_eq!(models[..2], ["base", "base"]);
    assert!(models.len() >= 4 && models[2..].iter().all(|m| m == "search-2"), "{models:?}");
    let all = Store::open(&run).unwrap().all().unwrap();
    let adapters: Vec<_> =
        all.iter().filter(|c| c.role == Role::Candidate).map(|c| (c.cycle, c.adapter.clone())).collect();
    assert_eq!(
        adapters,
        [
            (1, Some("base".into())),
            (1, Some("base".into())),
            (2, Some("search-2".into())),
            (2, Some("search-2".into()))
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A chat answer with one choice per reply, each with its own token count.
/// A fenced diff that widens LeNet-5's first convolution to `width` channels.
fn widened(lenet: &str, width: usize) -> String {
    let wider = lenet.replace("conv(6, k=5)", &format!("conv({width}, k=5)"));
    let (diff, _) = nasc_delta::delta::unified(lenet, &wider, "a/program.arch", "b/program.arch");
    format!("```diff\n{diff}```\n")
}

fn chat_n(contents: &[String]) -> Answer {
    let choices: Vec<serde_json::Value> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop",
                               "completion_tokens": 10 + i})
        })
        .collect();
    let body = serde_json::json!({"choices": choices, "usage": {"prompt_tokens": 100, "completion_tokens": 99}});
    Answer { status: 200, body: body.to_string(), delay: Duration::ZERO }
}

#[test]
fn with_n_replies_per_request_a_group_of_candidates_shares_one_parent_and_one_request() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    // Four replies per request: the second holds no diff, so its candidate is retried alone.
    let (url, _, seen) = serve(move |r, _, body| {
        let n = body["n"].as_u64().unwrap() as usize;
        let replies: Vec<String> = (0..n)
            .map(|i| {
                if n > 1 && i == 1 {
                    return "No change needed.".to_string();
                }
                widened(&lenet, 7 + i + 10 * r)
            })
            .collect();
        chat_n(&replies)
    });
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let extra = "retries = 1\n[sampling]\nn = 4\n";
    let config = search_config_with(dir.path(), &url, 1, 6, "");
    // `retries` and [sampling] are top-level keys: put them before [openai].
    let text = std::fs::read_to_string(&config).unwrap().replace("[openai]", &format!("{extra}[openai]"));
    std::fs::write(&config, text).unwrap();
    let out = nasc_search(&config, &run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ns: Vec<u64> = seen.lock().unwrap().iter().map(|(_, b)| b["n"].as_u64().unwrap()).collect();
    // Six slots in groups of four: one request for four and one for two (in flight together, so
    // in either order), then one retry for each group's second reply, with its diagnostic.
    let mut first = ns[..2.min(ns.len())].to_vec();
    first.sort_unstable();
    assert_eq!((first.as_slice(), &ns[2..]), ([2, 4].as_slice(), [1, 1].as_slice()), "{ns:?}");
    let all = Store::open(&run).unwrap().all().unwrap();
    // Rows are stored as each slot's verdict is final: in slot order here.
    let mut cands: Vec<_> = all.iter().filter(|c| c.role == Role::Candidate).collect();
    cands.sort_by_key(|c| c.slot);
    assert_eq!(cands.len(), 6);
    assert!(cands.iter().all(|c| c.front_verdict == Verdict::Ok), "{cands:#?}");
    let mut groups: Vec<(i64, Option<i64>)> = cands.iter().map(|c| (c.slot / 4, c.parent_id)).collect();
    groups.dedup();
    assert_eq!(groups.len(), 2, "each group has one parent: {groups:?}");
    // Each reply keeps the token count the server gave its choice; the retried ones answered alone.
    let tokens: Vec<(i64, i64, Option<i64>)> = cands.iter().map(|c| (c.slot, c.attempts, c.reply_tokens)).collect();
    assert_eq!(
        tokens,
        [(0, 1, Some(10)), (1, 2, Some(10)), (2, 1, Some(12)), (3, 1, Some(13)), (4, 1, Some(10)), (5, 2, Some(10))]
    );
}

#[test]
fn nasc_lm_finetune_is_the_default_step_each_cycle_continues_the_last_adapter_and_the_server_loads_it() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    let (url, _, seen) = serve(move |n, _, _| chat(&widened(&lenet, 7 + n)));
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_lm::tiny_gguf(dir.path());
    // A short prompt, so that the tiny model's 128-token context holds part of each diff; every
    // trained child enters the corpus (min_gain below any loss).
    std::fs::write(dir.path().join("prompt.md"), "{dataset}\n").unwrap();
    let extra = format!(
        "[curation]\nmin_gain = -1.0\n[finetune]\nmodel = \"{}\"\nargs = [\"--max-len\", \"128\", \"--dropout\", \"0\"]\nrank = 4\n",
        model.display()
    );
    let config = search_config_with(dir.path(), &url, 3, 2, &extra);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("prompt_template = \"prompt.md\"\n{text}")).unwrap();
    let run = dir.path().join("run");
    let out = nasc_search(&config, &run);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for cycle in [2, 3] {
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(format!("adapters/cycle-{cycle}/adapter_config.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["r"], 4, "{cfg}");
        assert!(run.join(format!("adapters/cycle-{cycle}/adapter_model.safetensors")).exists());
    }
    assert!(err.contains("fine-tuned") && err.contains("tokens/s"), "{err}");
    let seen = seen.lock().unwrap().clone();
    let loads: Vec<(String, String)> = seen
        .iter()
        .filter(|(p, _)| p == "/v1/load_lora_adapter")
        .map(|(_, b)| (b["lora_name"].as_str().unwrap().into(), b["lora_path"].as_str().unwrap().into()))
        .collect();
    let abs = |c: u32| std::path::absolute(run.join(format!("adapters/cycle-{c}"))).unwrap().display().to_string();
    assert_eq!(loads, [("search-2".to_string(), abs(2)), ("search-3".to_string(), abs(3))]);
    let all = Store::open(&run).unwrap().all().unwrap();
    let adapters: Vec<(i64, String)> =
        all.iter().filter(|c| c.role == Role::Candidate).map(|c| (c.cycle, c.adapter.clone().unwrap())).collect();
    assert_eq!(
        adapters,
        [(1, "base"), (1, "base"), (2, "search-2"), (2, "search-2"), (3, "search-3"), (3, "search-3")]
            .map(|(c, m)| (c, m.to_string()))
    );
}

/// Each way a grammar travels: Lark or GBNF in `structured_outputs.grammar`, GBNF in llama.cpp's
/// `grammar`, nothing when off; the grammar is the parent's diff grammar, a retry's too.
#[test]
fn the_parents_diff_grammar_travels_in_the_field_each_server_reads() {
    let (url, _, seen) = serve(|_, _, _| chat("```diff\n@@ -1 +1 @@\n```"));
    for constrain in [Constrain::Off, Constrain::Lark, Constrain::Vllm, Constrain::LlamaCpp] {
        let g = OpenAi::new(&OpenAiConfig { constrain, ..config(&url) }, &Sampling::default());
        let mut req = request();
        req.feedback.push(("bad".into(), "parse_error".into()));
        g.generate(&req).unwrap();
        let body = seen.lock().unwrap().last().unwrap().1.clone();
        let (lark, gbnf) = (body["structured_outputs"]["grammar"].as_str(), body["grammar"].as_str());
        match constrain {
            Constrain::Off => {
                assert!(body.get("structured_outputs").is_none() && body.get("grammar").is_none(), "{body}")
            }
            Constrain::Lark => assert!(lark.unwrap().starts_with("start: \"```diff\\n--- a/program.arch"), "{body}"),
            Constrain::Vllm => assert!(lark.unwrap().starts_with("root ::= \"```diff\\n--- a/program.arch"), "{body}"),
            Constrain::LlamaCpp => assert!(gbnf.unwrap().starts_with("root ::= "), "{body}"),
        }
        // The parent's lines are the only context lines the grammar allows.
        if let Some(g) = lark.or(gbnf) {
            assert!(g.contains("\"   gap\\n\""), "{g}");
        }
    }
}

/// A server that answers one choice to a request for n (llama.cpp's) is asked for the rest one
/// by one, with the following seeds, and later groups go one by one from the start.
#[test]
fn a_server_that_ignores_n_is_asked_once_per_reply() {
    let (url, count, seen) = serve(|i, _, _| chat(&format!("reply {i}")));
    let g = OpenAi::new(&OpenAiConfig { constrain: Constrain::LlamaCpp, ..config(&url) }, &Sampling::default());
    let replies = g.generate_n(&request(), 3).unwrap();
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["reply 0", "reply 1", "reply 2"]);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let seeds: Vec<u64> = seen.lock().unwrap().iter().map(|(_, b)| b["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [5, 6, 7]);
    g.generate_n(&request(), 2).unwrap();
    let ns: Vec<u64> = seen.lock().unwrap().iter().map(|(_, b)| b["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [3, 1, 1, 1, 1], "the second group is asked one reply at a time");
}

/// A group resumed with some of its slots stored asks for replies up to its last missing slot's
/// place and gives each slot the reply at its place: the run ends with the replies it would have
/// had without the interruption, never a stored sibling's again.
#[test]
fn a_resumed_group_gets_each_missing_slot_its_own_reply() {
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    // Reply i of a request widens the first conv to a width given by the seed and i alone.
    let (url, _, seen) = serve(move |_, _, body| {
        let n = body["n"].as_u64().unwrap() as usize;
        let seed = body["seed"].as_u64().unwrap();
        let replies: Vec<String> = (0..n).map(|i| widened(&lenet, 8 + (seed % 50) as usize + 60 * i)).collect();
        chat_n(&replies)
    });
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = search_config_with(dir.path(), &url, 1, 4, "");
    let text = std::fs::read_to_string(&config).unwrap().replace("[openai]", "[sampling]\nn = 4\n[openai]");
    std::fs::write(&config, text).unwrap();
    let out = nasc_search(&config, &run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diffs = |run: &std::path::Path| -> Vec<(i64, String)> {
        let db = rusqlite::Connection::open(run.join("run.db")).unwrap();
        let mut q = db.prepare("SELECT slot, diff FROM candidates WHERE role = 'candidate' ORDER BY slot").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let whole = diffs(&run);
    assert_eq!(whole.len(), 4);
    // As if killed after slots 0 and 1 were stored: slots 2 and 3 are gone.
    rusqlite::Connection::open(run.join("run.db"))
        .unwrap()
        .execute("DELETE FROM candidates WHERE role = 'candidate' AND slot >= 2", [])
        .unwrap();
    seen.lock().unwrap().clear();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["search", "--json", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ns: Vec<u64> = seen.lock().unwrap().iter().map(|(_, b)| b["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [4], "one request, for the group up to its last missing slot");
    assert_eq!(diffs(&run), whole, "each slot has the reply it had");
}

/// SIGKILL over a search whose candidates come from a language-model server, `--resume` after
/// each: every other kill lands while a request is in flight (generation), the rest at moments
/// drawn over the whole run (judging, training, curation too). The run completes with the same
/// candidates, slot by slot, as the run never killed: none lost, none twice. The server's reply
/// is a function of the request (its seed), as a seeded model's is, and takes 300 ms.
#[test]
fn a_search_killed_while_it_generates_ends_as_the_run_never_killed() {
    use std::process::{Command, Stdio};
    let lenet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/zoo/lenet5.arch")).unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let busy = in_flight.clone();
    let (url, served, _) = serve(move |_, _, body| {
        busy.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        busy.fetch_sub(1, Ordering::SeqCst);
        let seed = body["seed"].as_u64().unwrap_or(0);
        chat(&format!("A wider first convolution.\n{}", widened(&lenet, 7 + (seed % 20) as usize)))
    });
    let dir = std::env::temp_dir().join(format!("nasc-openai-kills-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = search_config_with(&dir, &url, 2, 4, "");
    let search = |args: &[&str], run: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_nasc"))
            .arg("search")
            .args(args)
            .arg(run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // The run never killed, and how long it takes.
    let whole = dir.join("whole");
    let started = std::time::Instant::now();
    let status = search(&["--config", config.to_str().unwrap(), "--out"], &whole).wait().unwrap();
    assert!(status.success());
    let span = started.elapsed().as_millis() as u64;
    assert!(served.load(Ordering::SeqCst) >= 8, "every candidate asked the server");

    // The same run, killed at moments drawn over its span from a generator seeded by the clock
    // (said on stderr, so that a failure can be replayed).
    let mut state = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let run = dir.join("killed");
    let mut kills = Vec::new();
    let mut in_generation = 0;
    for round in 0..6 {
        let mut child = if Store::holds_run(&run) {
            search(&["--resume"], &run)
        } else {
            search(&["--config", config.to_str().unwrap(), "--out"], &run)
        };
        let t = std::time::Instant::now();
        if round % 2 == 0 {
            // Until a request is in flight (or the run ends), then up to 150 ms more: less than
            // the 300 ms the request takes.
            while in_flight.load(Ordering::SeqCst) == 0 && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(next() % 150));
        } else {
            std::thread::sleep(Duration::from_millis(next() % span.max(1)));
        }
        let generating = in_flight.load(Ordering::SeqCst) > 0;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push(t.elapsed().as_millis());
        in_generation += usize::from(generating);
    }
    eprintln!("killed after {kills:?} ms of a {span} ms run, {in_generation} with a request in flight");
    assert!(in_generation > 0, "no kill landed while a request was in flight: {kills:?}");
    killed_runs::finish_and_compare(&config, &whole, &run, &kills);
    let _ = std::fs::remove_dir_all(&dir);
}
