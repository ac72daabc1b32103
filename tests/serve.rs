//! `nasc serve` as a client sees it: the built binary on a free loopback port with a tiny random checkpoint
//! written here, spoken to over HTTP with ureq; and a real chat reply of SmolLM2 (`tests/common/smollm2.rs`).

#[path = "common/smollm2.rs"]
mod smollm2;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

#[path = "common/tiny_lm.rs"]
mod tiny_lm;
use tiny_lm::tiny_gguf;

/// A running `nasc serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Server {
    /// Starts the server on port 0 and reads the address it bound from its first line of stderr.
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nasc"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("nasc serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let Some(at) = line.find("http://") else {
            let _ = child.kill();
            panic!("nasc serve did not report its address: {line}");
        };
        let base = line[at..].split_whitespace().next().unwrap().trim_end_matches("/v1").to_string();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Server { child, base, agent }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self.agent.get(format!("{}{path}", self.base)).call().unwrap();
        (r.status().as_u16(), serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
    }

    fn post_raw(&self, path: &str, body: &str) -> (u16, String, String) {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (r.status().as_u16(), kind, r.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, text) = self.post_raw(path, &body.to_string());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    /// Posts a streaming request; returns the `data:` payloads in order.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let (status, kind, text) = self.post_raw(path, &body.to_string());
        assert_eq!(status, 200, "{text}");
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {e:?}")).to_string())
            .collect()
    }

    /// Writes `request` on a new connection and reads the answer until the server closes it.
    fn exchange(&self, request: &[u8]) -> String {
        let mut raw = TcpStream::connect(self.addr()).unwrap();
        raw.write_all(request).unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        answer
    }

    /// The server's address as host:port, for raw TCP.
    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nasc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nasc")).args(args).output().expect("nasc runs")
}

fn lm_json(args: &[&str]) -> Value {
    let mut full = vec!["lm", "generate"];
    full.extend(args);
    full.push("--json");
    let out = nasc(&full);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Concatenates streamed pieces per choice index, checks the stream's shape, and returns texts and finish reasons.
fn gather(events: &[String], chat: bool, n: usize) -> (Vec<String>, Vec<String>, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (mut texts, mut finish) = (vec![String::new(); n], vec![String::new(); n]);
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        assert_eq!(v["object"], if chat { "chat.completion.chunk" } else { "text_completion" });
        assert!(v["id"].as_str().unwrap().starts_with(if chat { "chatcmpl-" } else { "cmpl-" }));
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            let piece = if chat { &c["delta"]["content"] } else { &c["text"] };
            texts[i] += piece.as_str().unwrap_or("");
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(finish[i].is_empty(), "choice {i} finished twice");
                finish[i] = f.to_string();
            }
        }
    }
    (texts, finish, usage)
}

#[test]
fn serves_models_chat_and_completions_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let s = Server::start(&model, &["--served-model-name", "tiny"]);

    let (status, v) = s.get("/v1/models");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["object"], "model");

    // A greedy chat reply equals `nasc lm generate`'s for the same message and length.
    let want = lm_json(&["--model", m, "--prompt", "hello", "--max-new-tokens", "6"]);
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
                      "temperature": 0, "max_tokens": 6});
    let (status, v) = s.post("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(!c["message"]["content"].as_str().unwrap().is_empty(), "a reply to compare: {v}");
    assert_eq!(c["message"]["content"], want["completions"][0]["text"], "{v} vs {want}");
    assert_eq!(c["finish_reason"], want["completions"][0]["finish_reason"]);
    let generated = want["completions"][0]["token_ids"].as_array().unwrap().len() as u64;
    assert_eq!(v["usage"]["prompt_tokens"], want["prompt_tokens"]);
    assert_eq!(v["usage"]["completion_tokens"], generated);
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), want["prompt_tokens"].as_u64().unwrap() + generated);
    // Without `model` the base answers; content given as text parts is the same message.
    let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}],
                       "temperature": 0, "max_completion_tokens": 6});
    let (status, v2) = s.post("/v1/chat/completions", &parts);
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["choices"][0]["message"]["content"], c["message"]["content"]);
    // The same prompt again reuses the first one's prefill (prefix caching), all but its last
    // token, and the usage says so; the first computed all of its own.
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{v}");
    let prompt_tokens = v2["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt_tokens - 1), "{v2}");

    // A raw completion equals `nasc lm generate --raw`'s.
    let want = lm_json(&["--model", m, "--prompt", "hello", "--raw", "--max-new-tokens", "5"]);
    let (status, v) =
        s.post("/v1/completions", &json!({"model": "tiny", "prompt": "hello", "temperature": 0.0, "max_tokens": 5}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want["completions"][0]["text"], "{v} vs {want}");
    assert_eq!(v["choices"][0]["finish_reason"], want["completions"][0]["finish_reason"]);
    assert_eq!(v["usage"]["prompt_tokens"], want["prompt_tokens"]);
    // OpenAI's default length for completions is 16 tokens.
    let (_, v) = s.post("/v1/completions", &json!({"prompt": "hello", "temperature": 0, "stop": []}));
    let c = &v["choices"][0];
    assert!(c["finish_reason"] == "stop" || v["usage"]["completion_tokens"] == 16, "{v}");

    // A stop string cuts the greedy reply where the library cuts it.
    let full = lm_json(&["--model", m, "--prompt", "hello", "--raw", "--max-new-tokens", "12"]);
    let text = full["completions"][0]["text"].as_str().unwrap().to_string();
    if let Some(cut) = text.char_indices().map(|(i, _)| i).find(|&i| i > 0) {
        let stop: String = text[cut..].chars().take(1).collect();
        let want = lm_json(&["--model", m, "--prompt", "hello", "--raw", "--max-new-tokens", "12", "--stop", &stop]);
        let (_, v) =
            s.post("/v1/completions", &json!({"prompt": "hello", "temperature": 0, "max_tokens": 12, "stop": [stop]}));
        assert_eq!(v["choices"][0]["text"], want["completions"][0]["text"], "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn n_replies_are_seeded_and_streams_match_whole_replies() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = Server::start(&model, &[]);
    let name = "tiny"; // The file name without its extension.
    let body = json!({"model": name, "messages": [{"role": "user", "content": "hello"}], "n": 3, "seed": 11,
                      "temperature": 1.0, "top_p": 0.9, "top_k": 40, "max_tokens": 10});
    let (status, a) = s.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{a}");
    let (_, b) = s.post("/v1/chat/completions", &body);
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(a["choices"], b["choices"], "the same seed gives the same replies");
    let texts: Vec<&str> = choices.iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "sampled replies differ: {a}");
    assert!(texts.iter().all(|t| !t.is_empty()), "{a}");
    let mut reseeded = body.clone();
    reseeded["seed"] = json!(12);
    let (_, other) = s.post("/v1/chat/completions", &reseeded);
    assert_ne!(other["choices"], a["choices"], "another seed gives other replies");

    // Streamed: the pieces of each choice join into the whole reply, and the stream ends with [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = s.stream("/v1/chat/completions", &streamed);
    let (joined, finish, usage) = gather(&events, true, 3);
    assert_eq!(joined, texts);
    let want_finish: Vec<&str> = choices.iter().map(|c| c["finish_reason"].as_str().unwrap()).collect();
    assert_eq!(finish, want_finish);
    // Like `b`, it reused the first request's prefill of the same prompt.
    assert_eq!(usage, b["usage"]);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    // A greedy completion, streamed and whole.
    let body = json!({"prompt": "hello", "temperature": 0, "max_tokens": 8});
    let (_, whole) = s.post("/v1/completions", &body);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (joined, finish, usage) = gather(&s.stream("/v1/completions", &streamed), false, 1);
    assert_eq!(usage, Value::Null, "usage is streamed only when stream_options asks for it");
    assert_eq!(joined[0], whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(finish[0], whole["choices"][0]["finish_reason"].as_str().unwrap());
}

fn assert_error(status: u16, v: &Value, want_status: u16, param: Option<&str>, mention: &str) {
    assert_eq!(status, want_status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().unwrap().contains(mention), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.as_object().unwrap().contains_key("code"), "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
}

#[test]
fn bad_requests_get_error_objects_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = Server::start(&model, &["--max-batch", "64"]);
    let hello = json!([{"role": "user", "content": "hello"}]);

    let (status, _, text) = s.post_raw("/v1/chat/completions", "{\"messages\": [");
    assert_error(status, &serde_json::from_str(&text).unwrap(), 400, None, "not valid JSON");
    let (status, _, text) = s.post_raw("/v1/completions", "[1, 2]");
    assert_error(status, &serde_json::from_str(&text).unwrap(), 400, None, "JSON object");
    let cases = [
        ("/v1/chat/completions", json!({"model": "tiny"}), 400, Some("messages"), "required"),
        ("/v1/chat/completions", json!({"messages": []}), 400, Some("messages"), "non-empty"),
        ("/v1/chat/completions", json!({"messages": [{"content": "hi"}]}), 400, Some("messages"), "role"),
        ("/v1/completions", json!({"model": "tiny"}), 400, Some("prompt"), "required"),
        ("/v1/completions", json!({"prompt": 7}), 400, Some("prompt"), "string"),
        // A route's field sent to the other would be ignored.
        ("/v1/completions", json!({"prompt": "hi", "messages": hello}), 400, Some("messages"), "/v1/chat/completions"),
        ("/v1/chat/completions", json!({"messages": hello, "prompt": "hi"}), 400, Some("prompt"), "/v1/completions"),
        ("/v1/chat/completions", json!({"model": "gpt-4", "messages": hello}), 404, Some("model"), "gpt-4"),
        ("/v1/chat/completions", json!({"messages": hello, "n": 0}), 400, Some("n"), "n 0"),
        ("/v1/chat/completions", json!({"messages": hello, "n": 1000000}), 400, Some("n"), "between 1 and 64"),
        ("/v1/chat/completions", json!({"messages": hello, "n": "3"}), 400, Some("n"), "integer"),
        ("/v1/chat/completions", json!({"messages": hello, "max_tokens": 100000}), 400, Some("max_tokens"), "context"),
        ("/v1/chat/completions", json!({"messages": hello, "max_tokens": 0}), 400, Some("max_tokens"), "at least 1"),
        (
            "/v1/chat/completions",
            json!({"messages": hello, "max_tokens": 125}),
            400,
            Some("messages"),
            "maximum context length is 128",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(400), "max_tokens": 4}),
            400,
            Some("prompt"),
            "maximum context length",
        ),
        ("/v1/chat/completions", json!({"messages": hello, "temperature": -1}), 400, Some("temperature"), "-1"),
        ("/v1/chat/completions", json!({"messages": hello, "top_p": 0}), 400, Some("top_p"), "top_p 0"),
        ("/v1/chat/completions", json!({"messages": hello, "top_k": -5}), 400, Some("top_k"), "-5"),
        ("/v1/chat/completions", json!({"messages": hello, "stop": [1]}), 400, Some("stop"), "strings"),
        ("/v1/chat/completions", json!({"messages": hello, "stop": ""}), 400, Some("stop"), "empty"),
        ("/v1/chat/completions", json!({"messages": hello, "stream": "yes"}), 400, Some("stream"), "true or false"),
        (
            "/v1/chat/completions",
            json!({"messages": hello, "stream_options": 1}),
            400,
            Some("stream_options"),
            "object",
        ),
    ];
    for (path, body, want, param, mention) in cases {
        let (status, v) = s.post(path, &body);
        assert_error(status, &v, want, param, mention);
    }
    // A top_p below f32's range is still a nucleus (of one token), not 0.
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "hello", "top_p": 1e-50, "max_tokens": 2}));
    assert_eq!(status, 200, "{v}");
    let (status, v) = s.get("/v1/nothing");
    assert_error(status, &v, 404, None, "/v1/nothing");
    assert_eq!(v["error"]["code"], "not_found");
    let (status, v) = s.get("/v1/chat/completions");
    assert_error(status, &v, 405, None, "POST");
    // What a client sent is quoted clipped, whatever its length.
    let long = "m".repeat(100_000);
    let (status, v) = s.post("/v1/chat/completions", &json!({"model": long, "messages": hello}));
    assert_error(status, &v, 404, Some("model"), "more bytes");
    let (status, v) = s.get(&format!("/v1/{}", &long[..5000]));
    assert_error(status, &v, 404, None, "more bytes");
    for v in [&v, &s.get(&format!("/v1/models/{}", &long[..5000])).1] {
        assert!(v.to_string().len() < 1000, "{} bytes", v.to_string().len());
    }

    // Not HTTP at all: a 400 (hyper's, with no body: the request has no route to answer it),
    // not a dropped connection.
    let answer = s.exchange(b"\x01\x02 garbage\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A body shorter than its Content-Length, then the client leaves.
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro").unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Still serving after all of that.
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2, "temperature": 0}));
    assert_eq!(status, 200, "{v}");
    let (status, _) = s.get("/v1/models");
    assert_eq!(status, 200);
}

#[test]
fn bad_command_lines_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let adapter_dir = dir.path().to_str().unwrap();
    let adapter = format!("coder={adapter_dir}");
    for (args, want) in [
        (vec!["--model", m, "--adapter", &adapter], "adapter_config.json"),
        (vec!["--model", m, "--adapter", "coder"], "NAME=DIR"),
        (vec!["--model", "/nonexistent/model.gguf"], "no such file"),
        (vec!["--model", m, "--max-batch", "0"], "--max-batch"),
        (vec!["--model", m, "--device", "tpu"], "tpu"),
        (vec!["--model", m, "--host", "256.0.0.1"], "cannot listen"),
    ] {
        let mut full = vec!["serve", "--port", "0"];
        full.extend(args);
        let out = nasc(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {err}");
        assert!(err.contains(want), "{full:?}: {err}");
        assert!(!err.contains("panicked"), "{full:?}: {err}");
    }
}

#[test]
fn smollm2_chat_completion_over_http() {
    let Some(path) = smollm2::smollm2_path() else { return };
    let model = Path::new(&path);
    let prompt = "What is the capital of France?";
    let want = lm_json(&["--model", model.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", "24"]);
    let s = Server::start(model, &[]);
    let (status, v) = s.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 24}),
    );
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text, want["completions"][0]["text"].as_str().unwrap());
    assert!(text.contains("Paris"), "{text}");

    // While a long generation runs, the server still answers other requests at once.
    let s = std::sync::Arc::new(s);
    let busy = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.post("/v1/completions", &json!({"prompt": "Once upon a time", "max_tokens": 128, "temperature": 0}))
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let start = std::time::Instant::now();
    let (status, _) = s.get("/v1/models");
    assert_eq!(status, 200);
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "x", "n": 0}));
    assert_eq!(status, 400, "{v}");
    let waited = start.elapsed();
    assert!(!busy.is_finished(), "the generation should still be running");
    assert!(waited.as_secs_f64() < 1.0, "answered in {waited:?} while generating");
    let (status, v) = busy.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
}

/// An adapter for the tiny model in `dir`, trained until it answers "hi" with "ll he".
fn trained_adapter(dir: &Path, model: &str) -> PathBuf {
    let data = dir.join("corpus.jsonl");
    let line = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ll he"}]});
    std::fs::write(&data, format!("{line}\n")).unwrap();
    let adapter = dir.join("adapter");
    let (d, a) = (data.to_str().unwrap(), adapter.to_str().unwrap());
    let args = ["--model", model, "--data", d, "--out", a, "--rank", "4", "--dropout", "0", "--lr", "0.02"];
    let mut full = vec!["lm", "finetune", "--epochs", "30"];
    full.extend(args);
    let out = nasc(&full);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    adapter
}

#[test]
fn an_adapter_is_served_under_its_name_and_answers_as_lm_generate_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let adapter = trained_adapter(dir.path(), m);
    let a = adapter.to_str().unwrap();

    let server = Server::start(&model, &["--adapter", &format!("coder={a}")]);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{models}");
    assert_eq!(ids[1], "coder");
    let ask = |name: &str| {
        let body =
            json!({"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0});
        let (status, v) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    let (base, tuned) = (ask(ids[0]), ask("coder"));
    let generate = |extra: &[&str]| {
        let mut args = vec!["--model", m, "--prompt", "hi", "--max-new-tokens", "6"];
        args.extend(extra);
        lm_json(&args)["completions"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(tuned, generate(&["--adapter", a]), "the adapter's reply");
    assert_eq!(base, generate(&[]), "the base model's reply");
    assert_ne!(base, tuned, "the adapter changes the reply");
}

#[test]
fn adapters_load_replace_and_unload_while_serving_as_vllm_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let m = model.to_str().unwrap();
    let adapter = trained_adapter(dir.path(), m);
    let a = adapter.to_str().unwrap();

    // Off unless asked for, as in vLLM.
    let off = Server::start(&model, &[]);
    let (status, v) = off.post("/v1/load_lora_adapter", &json!({"lora_name": "coder", "lora_path": a}));
    assert_error(status, &v, 403, None, "--allow-runtime-lora");
    drop(off);

    let root = dir.path().to_str().unwrap();
    let server = Server::start(&model, &["--allow-runtime-lora", "--lora-root", root]);
    let ask = |name: &str| {
        let body =
            json!({"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0});
        server.post("/v1/chat/completions", &body)
    };
    let (status, v) = ask("coder");
    assert_error(status, &v, 404, Some("model"), "coder");
    let (status, v) = server.post("/v1/load_lora_adapter", &json!({"lora_name": "coder", "lora_path": a}));
    assert_eq!(status, 200, "{v}");
    assert!(v.as_str().unwrap().contains("coder"), "{v}");
    let (_, models) = server.get("/v1/models");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids[1..], ["coder"], "{models}");
    // The loaded adapter answers as `lm generate --adapter` does.
    let (status, v) = ask("coder");
    assert_eq!(status, 200, "{v}");
    let tuned = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let args = ["--model", m, "--prompt", "hi", "--max-new-tokens", "6", "--adapter", a];
    assert_eq!(tuned, lm_json(&args)["completions"][0]["text"].as_str().unwrap());
    // Its prefill is reused by its own next request (prefix caching), never by another model's.
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert_eq!(cached(&v), 0, "{v}");
    let (_, v) = ask("coder");
    assert_eq!(cached(&v), v["usage"]["prompt_tokens"].as_u64().unwrap() - 1, "{v}");

    // Loading the name again needs load_inplace; bad requests name their field.
    let (status, v) = server.post("/v1/load_lora_adapter", &json!({"lora_name": "coder", "lora_path": a}));
    assert_error(status, &v, 400, Some("lora_name"), "already been loaded");
    let (status, v) =
        server.post("/v1/load_lora_adapter", &json!({"lora_name": "coder", "lora_path": a, "load_inplace": true}));
    assert_eq!(status, 200, "{v}");
    // Replaced weights start from nothing kept of the old ones.
    let (_, v) = ask("coder");
    assert_eq!((cached(&v), v["choices"][0]["message"]["content"].as_str().unwrap()), (0, &tuned[..]), "{v}");
    // Outside the root, or missing: one answer that says nothing of what exists.
    let missing = dir.path().join("missing");
    for path in [missing.to_str().unwrap(), "/etc", "/nonexistent/adapter", &format!("{root}/../..")] {
        let (status, v) = server.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": path}));
        assert_error(status, &v, 400, Some("lora_path"), "must be an adapter folder under the server's LoRA root");
    }
    // A folder under the root that is not an adapter says why.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (status, v) =
        server.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": empty.to_str().unwrap()}));
    assert_error(status, &v, 400, Some("lora_path"), "adapter_config.json");
    // A config whose rank the model cannot hold, or whose tensors disagree with it, is refused
    // before anything is allocated; the server goes on.
    let hostile = dir.path().join("hostile");
    std::fs::create_dir(&hostile).unwrap();
    std::fs::copy(adapter.join("adapter_model.safetensors"), hostile.join("adapter_model.safetensors")).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    for (rank, mention) in [(1_000_000_000u64, "more than the widest"), (8, "shape")] {
        let mut c = config.clone();
        c["r"] = json!(rank);
        std::fs::write(hostile.join("adapter_config.json"), c.to_string()).unwrap();
        let (status, v) =
            server.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": hostile.to_str().unwrap()}));
        assert_error(status, &v, 400, Some("lora_path"), mention);
    }
    // A scale past any real adapter's is refused too (its activations would overflow).
    let mut c = config.clone();
    c["lora_alpha"] = json!(1e308);
    std::fs::write(hostile.join("adapter_config.json"), c.to_string()).unwrap();
    let (status, v) =
        server.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": hostile.to_str().unwrap()}));
    assert_error(status, &v, 400, Some("lora_path"), "lora_alpha");
    // An adapter's files are resolved as its folder is: links out of the root (whether their
    // targets exist or not) get the answer a path outside it gets, and a FIFO, which would block
    // the reader, is refused at once.
    for (i, target) in ["/etc/passwd", "/nonexistent/adapter_config.json"].into_iter().enumerate() {
        let linked = dir.path().join(format!("linked{i}"));
        std::fs::create_dir(&linked).unwrap();
        std::fs::copy(adapter.join("adapter_model.safetensors"), linked.join("adapter_model.safetensors")).unwrap();
        std::os::unix::fs::symlink(target, linked.join("adapter_config.json")).unwrap();
        let (status, v) =
            server.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": linked.to_str().unwrap()}));
        assert_error(status, &v, 400, Some("lora_path"), "must be an adapter folder under the server's LoRA root");
    }
    let fifo = dir.path().join("fifo");
    std::fs::create_dir(&fifo).unwrap();
    std::fs::copy(adapter.join("adapter_config.json"), fifo.join("adapter_config.json")).unwrap();
    let made = std::process::Command::new("mkfifo").arg(fifo.join("adapter_model.safetensors")).status().unwrap();
    assert!(made.success(), "mkfifo");
    let (status, v) =
        server.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": fifo.to_str().unwrap()}));
    assert_error(status, &v, 400, Some("lora_path"), "as files inside the root");
    let (status, v) = server.post("/v1/load_lora_adapter", &json!({"lora_path": a}));
    assert_error(status, &v, 400, Some("lora_name"), "lora_name");
    let base = ids[0].to_string();
    let (status, v) = server.post("/v1/load_lora_adapter", &json!({"lora_name": base, "lora_path": a}));
    assert_error(status, &v, 400, None, "base model");
    let (status, v) = server.post("/v1/unload_lora_adapter", &json!({"lora_name": base}));
    assert_error(status, &v, 400, None, "base model");

    let (status, v) = server.post("/v1/unload_lora_adapter", &json!({"lora_name": "coder"}));
    assert_eq!(status, 200, "{v}");
    let (status, v) = ask("coder");
    assert_error(status, &v, 404, Some("model"), "coder");
    let (status, v) = server.post("/v1/unload_lora_adapter", &json!({"lora_name": "coder"}));
    assert_error(status, &v, 404, Some("model"), "coder");
    let (_, models) = server.get("/v1/models");
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
}

/// Every constraint field a client may send, each holding n sampled replies of a random model to
/// its grammar; fields nasc does not implement, two constraints at once and broken grammars are
/// 400s that name what is wrong.
#[test]
fn constraint_fields_hold_replies_to_their_grammars_and_unsupported_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = Server::start(&model, &[]);
    let hello = json!([{"role": "user", "content": "hello"}]);
    let lark = "start: \"he\" (\"ll\" | \"y\"){1,3} \"!\"\n";
    let gbnf = "root ::= [0-9]{2} \"-\" (\"a\" | \"b\")\n";
    let is_lark = |t: &str| {
        let mid = t.strip_prefix("he").and_then(|r| r.strip_suffix('!')).unwrap_or("?");
        !mid.is_empty() && mid.replace("ll", "").replace('y', "").is_empty()
    };
    let is_gbnf = |t: &str| {
        let b = t.as_bytes();
        b.len() == 4 && b[0].is_ascii_digit() && b[1].is_ascii_digit() && &t[2..3] == "-" && "ab".contains(&t[3..])
    };
    let is_json =
        |t: &str| serde_json::from_str::<Value>(t).is_ok_and(|v| v["a"].is_i64() && v.as_object().unwrap().len() == 1);
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false});
    type Case<'a> = (&'a str, Value, &'a dyn Fn(&str) -> bool);
    let cases: [Case; 8] = [
        ("grammar", json!(gbnf), &is_gbnf),
        ("grammar", json!(format!("%llguidance {{}}\n{lark}")), &is_lark),
        ("guided_grammar", json!(lark), &is_lark),
        ("structured_outputs", json!({"grammar": gbnf}), &is_gbnf),
        ("structured_outputs", json!({"regex": "[xy]{3}"}), &|t: &str| {
            t.len() == 3 && t.chars().all(|c| "xy".contains(c))
        }),
        ("guided_choice", json!(["red", "green"]), &|t: &str| t == "red" || t == "green"),
        ("structured_outputs", json!({"json": schema}), &is_json),
        ("response_format", json!({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}), &is_json),
    ];
    for (field, value, valid) in cases {
        let mut body = json!({"messages": hello, "n": 3, "temperature": 1.0, "seed": 5, "max_tokens": 60});
        body[field] = value.clone();
        let (status, v) = s.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{field}: {v}");
        for c in v["choices"].as_array().unwrap() {
            let text = c["message"]["content"].as_str().unwrap();
            assert!(valid(text), "{field} {value}: {text:?}");
            assert_eq!(c["finish_reason"], "stop", "{field}: {v}");
        }
    }
    // The completions endpoint takes them too.
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 20, "grammar": gbnf}));
    assert_eq!(status, 200, "{v}");
    assert!(is_gbnf(v["choices"][0]["text"].as_str().unwrap()), "{v}");

    let bad = [
        (
            json!({"structured_outputs": {"structural_tag": "{}"}}),
            Some("structured_outputs"),
            "structured_outputs.structural_tag",
        ),
        (json!({"grammar": gbnf, "guided_regex": "a"}), Some("guided_regex"), "only one constraint"),
        (json!({"grammar": "root ::= \"a\" (\n"}), None, "GBNF grammar, line 2"),
        (json!({"grammar": "start: a\na: \"x\" b\n"}), None, "Lark grammar"),
        (json!({"grammar": ""}), Some("grammar"), "non-empty"),
        (json!({"response_format": {"type": "xml"}}), Some("response_format"), "json_schema"),
        (json!({"guided_choice": []}), Some("guided_choice"), "non-empty list"),
        (
            json!({"guided_decoding_backend": "outlines", "guided_regex": "a"}),
            Some("guided_decoding_backend"),
            "llguidance",
        ),
    ];
    for (extra, param, mention) in bad {
        let mut body = json!({"messages": hello, "max_tokens": 8});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = s.post("/v1/chat/completions", &body);
        assert_error(status, &v, 400, param, mention);
    }
    // A grammar's error quotes a clipped snippet of it, however long its line.
    let long = format!("start: \"{}\n", "a".repeat(1 << 20));
    let (status, v) = s.post("/v1/chat/completions", &json!({"messages": hello, "max_tokens": 4, "grammar": long}));
    assert_error(status, &v, 400, None, "more bytes");
    assert!(v.to_string().len() < 2000, "{} bytes", v.to_string().len());
    // A chain of thousands of rules (the compilers recurse through it) is compiled and held,
    // not an overflow of the server's stack, nor an empty reply past the engine's row limit.
    let chain: String = (0..3000).map(|i| format!("r{i} ::= \"x{i} \" | r{}\n", i + 1)).collect();
    let chain = format!("root ::= r0\n{chain}r3000 ::= \"end\"\n");
    let (status, v) = s.post("/v1/chat/completions", &json!({"messages": hello, "max_tokens": 8, "grammar": chain}));
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text == "end" || (text.starts_with('x') && text.ends_with(' ')), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    // And it still serves.
    let (status, _) = s.post("/v1/chat/completions", &json!({"messages": hello, "max_tokens": 4}));
    assert_eq!(status, 200);
}

/// What an adversarial client sends gets a defined answer and the server keeps serving: a
/// temperature whose inverse overflows samples greedily, fields nasc does not implement are
/// refused by name (at their neutral values they pass), a request whose KV cache would not fit
/// the budget is refused with how much it needs, and one model can be looked up by id.
#[test]
fn abusive_requests_get_defined_answers() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    // The tiny model's KV cache is 2 layers × 2 × 2 heads × 8 wide × 4 bytes = 256 bytes a
    // position; 64 KiB hold 256 positions.
    let s = Server::start(&model, &["--kv-cache-bytes", "64K", "--served-model-name", "tiny"]);
    let prompt = |extra: Value| {
        let mut body = json!({"prompt": "hello", "max_tokens": 4, "seed": 3});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    // Greedy, whatever the temperature's size.
    let (status, greedy) = s.post("/v1/completions", &prompt(json!({"temperature": 0})));
    assert_eq!(status, 200, "{greedy}");
    for t in [1e-39, 1e-30] {
        let (status, v) = s.post("/v1/completions", &prompt(json!({"temperature": t})));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], greedy["choices"][0]["text"], "temperature {t}");
    }
    // Penalties are applied, and range-checked.
    let (status, v) = s.post("/v1/completions", &prompt(json!({"presence_penalty": 1.5, "frequency_penalty": -0.5})));
    assert_eq!(status, 200, "{v}");
    let (status, v) = s.post("/v1/completions", &prompt(json!({"presence_penalty": 3})));
    assert_error(status, &v, 400, Some("presence_penalty"), "[-2, 2]");
    // Fields nasc does not implement are refused by name; at their neutral values they pass.
    for (field, value) in [
        ("echo", json!(true)),
        ("best_of", json!(4)),
        ("suffix", json!("}")),
        ("logit_bias", json!({"50": 100})),
        ("tools", json!([{"type": "function", "function": {"name": "f"}}])),
        ("repetition_penalty", json!(1.3)),
    ] {
        let (status, v) = s.post("/v1/completions", &prompt(json!({ field: value })));
        assert_error(status, &v, 400, Some(field), field);
    }
    let neutral = json!({"logprobs": false, "echo": false, "best_of": 1, "suffix": null, "tools": [], "user": "u1"});
    // Log-probabilities, as each endpoint gives them, with whole answers only.
    let (status, v) = s.post("/v1/completions", &prompt(json!({"logprobs": 2})));
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens = v["choices"][0]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), tokens, "{v}");
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() <= 0.0), "{v}");
    assert!(lp["top_logprobs"].as_array().unwrap().iter().all(|m| m.as_object().unwrap().len() <= 2), "{v}");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logprobs": true,
                      "top_logprobs": 3, "temperature": 0});
    let (status, v) = s.post("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty() && content.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() == 3), "{v}");
    // Greedy: the token drawn is the most likely one.
    assert!(content.iter().all(|t| t["top_logprobs"][0]["token"] == t["token"]), "{v}");
    let (status, v) = s.post("/v1/completions", &prompt(json!({"logprobs": 2, "stream": true})));
    assert_error(status, &v, 400, Some("logprobs"), "stream");
    let (status, v) = s.post("/v1/completions", &prompt(json!({"logprobs": 9})));
    assert_error(status, &v, 400, Some("logprobs"), "0 to 5");
    let (status, v) =
        s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}));
    assert_error(status, &v, 400, Some("top_logprobs"), "logprobs");
    let (status, v) = s.post("/v1/completions", &prompt(neutral));
    assert_eq!(status, 200, "{v}");
    let (status, v) = s.post("/v1/completions", &prompt(json!({"frobnicate": 1})));
    assert_error(status, &v, 400, None, "'frobnicate' is not a field");
    // The KV budget: 2 replies of 128 positions fit (and a request that fits alone waits for
    // room beside others rather than being refused), 8 do not.
    let (status, v) = s.post("/v1/completions", &prompt(json!({"n": 2, "max_tokens": 100})));
    assert_eq!(status, 200, "{v}");
    let both = std::thread::scope(|scope| {
        let ask = || s.post("/v1/completions", &prompt(json!({"n": 2, "max_tokens": 100}))).0;
        let (a, b) = (scope.spawn(ask), scope.spawn(ask));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(both, (200, 200), "two requests that each fill the budget");
    let (status, v) = s.post("/v1/completions", &prompt(json!({"n": 8, "max_tokens": 100})));
    assert_error(status, &v, 400, Some("n"), "KV cache");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("need 256.0 KiB") && message.contains("holds 64.0 KiB in all"), "{v}");
    // One model by id.
    let (status, v) = s.get("/v1/models/tiny");
    assert_eq!((status, v["id"].as_str()), (200, Some("tiny")), "{v}");
    let (status, v) = s.get("/v1/models/gpt-4");
    assert_eq!(status, 404, "{v}");
    // Ids are percent-decoded.
    let (status, v) = s.get("/v1/models/t%69ny");
    assert_eq!((status, v["id"].as_str()), (200, Some("tiny")), "{v}");
    // Still serving.
    let (status, v) = s.post("/v1/completions", &prompt(json!({})));
    assert_eq!(status, 200, "{v}");
}

/// With --api-key every route but /health needs the bearer token, checked before the body is
/// read: a 401, never a `100 Continue`. Two different Content-Length headers are refused.
#[test]
fn an_api_key_guards_every_route_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = Server::start(&model, &["--api-key", "s3cret"]);
    let (status, v) = s.get("/v1/models");
    assert_error(status, &v, 401, None, "Bearer");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (status, _) = s.get("/health");
    assert_eq!(status, 200);
    let with = |key: &str| {
        let mut r = s.agent.get(format!("{}/v1/models", s.base)).header("Authorization", key).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(with("Bearer s3cret").0, 200);
    assert_eq!(with("Bearer s3cre").0, 401);
    assert_eq!(with("s3cret").0, 401);
    // No 100 Continue for a request that will be refused.
    let answer = s.exchange(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Two lengths that differ.
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.write_all(
        b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    )
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// Connections are capped (past the cap, a 503, not a thread each) and a request has one
/// deadline to arrive whole: a client trickling a byte at a time gets a 408, and the idle ones
/// are closed without an answer, after which the server serves again.
#[test]
fn connections_are_capped_and_a_trickling_client_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = Server::start(&model, &["--max-connections", "2", "--request-timeout", "1"]);
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(s.addr()).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut third = TcpStream::connect(s.addr()).unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The idle connections are closed without a word once the deadline passes (a 408 on a
    // keep-alive connection could be read as the answer to the client's next request).
    for mut c in idle {
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "");
    }
    // Idle after an answer, the same.
    let mut kept = TcpStream::connect(s.addr()).unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: nasc\r\n\r\n").unwrap();
    let mut answer = String::new();
    kept.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && !answer.contains("408"), "{answer}");
    // A request trickled a byte every 300 ms does not arrive within the second it has.
    let mut slow = TcpStream::connect(s.addr()).unwrap();
    let started = std::time::Instant::now();
    for b in b"GET /v1/models HTTP/1.1\r\n" {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        if started.elapsed() > std::time::Duration::from_secs(3) {
            break;
        }
    }
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    let (status, _) = s.get("/v1/models");
    assert_eq!(status, 200);
}

/// A client that leaves a stream stops its generation at the next token (`/metrics` counts it
/// cancelled, with far fewer tokens than it asked for); past --max-queue a request gets a 429;
/// SIGTERM stops accepting, answers the stream in flight whole, and the process exits 0.
#[test]
fn a_client_that_leaves_stops_its_generation_and_sigterm_finishes_what_is_in_flight() {
    let Some(path) = smollm2::smollm2_path() else { return };
    let mut s = Server::start(Path::new(&path), &["--max-queue", "1"]);
    let request = |max_tokens: u32| {
        let body = json!({"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, "stream": true})
            .to_string();
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: nasc\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Sends a streaming request and reads up to its first event.
    let first_event = |max_tokens: u32| {
        let mut raw = TcpStream::connect(s.addr()).unwrap();
        raw.write_all(request(max_tokens).as_bytes()).unwrap();
        let mut reader = BufReader::new(raw);
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended before its first event");
        }
        reader
    };
    let metric = |name: &str| -> u64 {
        let mut r = s.agent.get(format!("{}/metrics", s.base)).call().unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
        line[name.len() + 1..].parse().unwrap()
    };
    drop(first_event(400));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric("nasc_generations_cancelled_total") == 0 {
        assert!(std::time::Instant::now() < deadline, "the generation of a client that left was not cancelled");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let tokens = metric("nasc_generated_tokens_total");
    assert!(tokens < 100, "{tokens} tokens generated for a client that left after the first");

    let mut in_flight = first_event(48);
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_error(status, &v, 429, None, "--max-queue");
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut rest = String::new();
    in_flight.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the stream in flight was cut: {rest}");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "nasc serve exited with {status} after SIGTERM");
    assert!(TcpStream::connect(s.addr()).is_err(), "still accepting after SIGTERM");
}

/// What hyper now does for the server, as a client sees it: chunked request bodies are read,
/// keep-alive serves several requests on one connection, a head over the limit or with too
/// many headers is a 431, a declared body over the limit a 413 before anything is read.
#[test]
fn http_framing_chunked_bodies_keep_alive_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = Server::start(&model, &[]);
    let body = br#"{"prompt": "hello", "max_tokens": 2, "seed": 1}"#;
    let mut chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    chunked.extend_from_slice(body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = s.exchange(&chunked);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"choices\""), "{answer}");
    // Two requests on one connection, the second closing it.
    let two = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let answer = s.exchange(two);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let big = format!("GET /v1/models HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(300_000));
    assert!(s.exchange(big.as_bytes()).starts_with("HTTP/1.1 431"));
    let many: String = (0..200).map(|i| format!("X-H{i}: a\r\n")).collect();
    assert!(s.exchange(format!("GET /v1/models HTTP/1.1\r\n{many}\r\n").as_bytes()).starts_with("HTTP/1.1 431"));
    let answer = s.exchange(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 40000000\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("the body is over"), "{answer}");
    // A whole request, then the client closes its sending side (half-close) and waits: the
    // answer still comes, for a generation as for a plain route.
    for request in [
        format!("POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    ] {
        let mut raw = TcpStream::connect(s.addr()).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        raw.write_all(&request).unwrap();
        if request.starts_with(b"POST") {
            raw.write_all(body).unwrap();
        }
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "half-closed: {answer:?}");
    }
    let (status, _) = s.get("/v1/models");
    assert_eq!(status, 200);
}

/// A client that never finishes its request cannot hold the process after SIGTERM: past
/// --shutdown-timeout its connection is closed and the server exits 0.
#[test]
fn sigterm_does_not_wait_past_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let mut s = Server::start(&model, &["--shutdown-timeout", "1", "--request-timeout", "60"]);
    // A request in flight: its head, and half of its body.
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"prompt\": ").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap().success());
    let status = s.child.wait().unwrap();
    let waited = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(waited > std::time::Duration::from_millis(900), "did not wait for the request in flight: {waited:?}");
    assert!(waited < std::time::Duration::from_secs(10), "waited {waited:?}");
    drop(raw);
}

/// A bounded load test: 8 clients send 300 requests in all (n of 1, 2 or 4; half streamed; one
/// in ten leaving its stream after the first event), and every request that stays gets a whole
/// 200 answer: no server error, no lost stream, and the server serves on. The latencies and
/// throughput are printed (`--nocapture`) for the notes; the tiny model makes them a measure of
/// the server, not of a model.
#[test]
fn three_hundred_mixed_requests_from_eight_clients_all_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path());
    let s = std::sync::Arc::new(Server::start(&model, &["--max-queue", "16"]));
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut refused = 0;
                for r in 0..300u64 / 8 + u64::from(c < 300 % 8) {
                    let (n, stream, leave) = (1 << (r % 3), (r + c) % 2 == 0, (r * 8 + c) % 10 == 3);
                    let body = json!({"prompt": format!("request {r} of {c}"), "max_tokens": 12 + r % 20,
                                      "n": n, "seed": r, "stream": stream});
                    let t = std::time::Instant::now();
                    if stream && leave {
                        let body = body.to_string();
                        let mut raw = TcpStream::connect(s.addr()).unwrap();
                        write!(raw, "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                            .unwrap();
                        let mut first = [0u8; 64];
                        let _ = raw.read(&mut first);
                        continue;
                    }
                    let (status, _, text) = s.post_raw("/v1/completions", &body.to_string());
                    if status == 429 {
                        refused += 1;
                        continue;
                    }
                    assert_eq!(status, 200, "{text}");
                    if stream {
                        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                        assert_eq!(text.matches("\"finish_reason\":\"").count(), n as usize, "{text}");
                    } else {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["choices"].as_array().unwrap().len(), n as usize, "{v}");
                    }
                    latencies.push(t.elapsed());
                }
                (latencies, refused)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut refused = 0;
    for c in clients {
        let (l, r) = c.join().unwrap();
        latencies.extend(l);
        refused += r;
    }
    let wall = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{} answered, {refused} refused (429) in {wall:?}: {:.0} requests/s, p50 {:?}, p99 {:?}",
        latencies.len(),
        latencies.len() as f64 / wall.as_secs_f64(),
        at(0.5),
        at(0.99)
    );
    assert!(latencies.len() >= 250, "{} answered", latencies.len());
    let (status, _) = s.get("/v1/models");
    assert_eq!(status, 200);
}

/// Requests that arrive while another decodes join it (continuous batching): a step decodes
/// their rows together, and every reply, the long one's included, is what it is alone. On the
/// real SmolLM2 with its quantised base, whose products are exact row by row.
#[test]
fn requests_that_arrive_while_another_decodes_join_it_and_reply_as_alone() {
    let Some(path) = smollm2::smollm2_path() else { return };
    let s = Server::start(Path::new(&path), &["--quantized-base"]);
    let metric = |name: &str| -> u64 {
        let mut r = s.agent.get(format!("{}/metrics", s.base)).call().unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let long = json!({"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0});
    let short = [
        ("/v1/completions", json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 16,
                   "temperature": 0.8, "seed": 3, "n": 2}),
        ),
    ];
    let replies = |v: &Value| -> Vec<(String, String)> {
        v["choices"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|c| {
                let text = c["text"].as_str().or(c["message"]["content"].as_str()).unwrap().to_string();
                (text, c["finish_reason"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let (status, long_alone) = s.post("/v1/completions", &long);
    assert_eq!(status, 200, "{long_alone}");
    let short_alone: Vec<Value> = short.iter().map(|(route, body)| s.post(route, body).1).collect();

    let (steps, rows) = (metric("nasc_decode_steps_total"), metric("nasc_decoded_rows_total"));
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let (long_streamed, short_together) = std::thread::scope(|scope| {
        let streaming = scope.spawn(|| s.stream("/v1/completions", &streamed));
        // The short requests go once the long one decodes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while metric("nasc_decode_steps_total") < steps + 3 {
            assert!(std::time::Instant::now() < deadline, "the long request never started decoding");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let together: Vec<Value> = short.iter().map(|(route, body)| s.post(route, body).1).collect();
        (streaming.join().unwrap(), together)
    });
    for (alone, together) in short_alone.iter().zip(&short_together) {
        assert_eq!(replies(together), replies(alone), "a request that joined a running batch");
    }
    let (texts, finish, _) = gather(&long_streamed, false, 1);
    assert_eq!(vec![(texts[0].clone(), finish[0].clone())], replies(&long_alone), "the request others joined");
    let (steps, rows) = (metric("nasc_decode_steps_total") - steps, metric("nasc_decoded_rows_total") - rows);
    // Alone, the three requests' 4 replies would each have had their own steps.
    assert!(rows > steps, "{rows} rows in {steps} steps: no step decoded requests together");
}
