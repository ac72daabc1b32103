//! Continuous batching in `nasc serve`, as clients see it: the same requests one at a time, then all at once.
//! It must not change what it measures between runs: fixed prompts, greedy replies, fixed lengths; it only reads the model file.

//! `cargo run --release -p nasc-lm --example bench_serve -- [MODEL.gguf] [--clients N] [--tokens N] [--rounds N] [--quantized-base] [--no-panels] [--together-only] [--load N]`
//!
//! Serves the model in this process on a loopback port, then per round sends `--clients`
//! chat requests (different prompts asking for a story, greedy, at most `--tokens` each) one after another, and the
//! same requests from that many client threads at once. It prints each mode's aggregate
//! tokens/s (all replies' tokens over the wall time) and request latencies, and the ratios:
//! together ÷ alone for throughput, and for latency the mean latency together ÷ the mean alone.
//! Greedy replies are the same in both modes, so both decode the same tokens.
//! `--no-panels` serves f32 decoding steps through `gemm` and the one-row `gemv` instead of the
//! packed column panels (`Kernels::panels`), to compare.
//! `--together-only` skips the requests one at a time (to profile the batched mode alone).
//! `--load N` runs a load test instead: `--clients` threads send N requests in all (n of 1, 2
//! or 4; 12 to 31 tokens; half streamed; one in ten leaving its stream after the first event),
//! and prints the answers by status, the p50 and p99 latencies and the tokens/s of all replies.

use nasc_lm::model::{Kernels, LoadOptions};
use nasc_lm::serve::{serve, ServeOptions};
use nasc_runtime::Device;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::{Duration, Instant};

struct Args {
    model: String,
    clients: usize,
    tokens: usize,
    rounds: usize,
    quantized: bool,
    no_panels: bool,
    together_only: bool,
    load: Option<usize>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        model: std::env::var("NASC_SMOLLM2_GGUF").unwrap_or_default(),
        clients: 8,
        tokens: 64,
        rounds: 2,
        quantized: false,
        no_panels: false,
        together_only: false,
        load: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |it: &mut std::iter::Skip<std::env::Args>, flag: &str| -> Result<usize, String> {
        it.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).ok_or(format!("{flag} needs a whole number above 0"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => a.clients = number(&mut it, "--clients")?,
            "--tokens" => a.tokens = number(&mut it, "--tokens")?,
            "--rounds" => a.rounds = number(&mut it, "--rounds")?,
            "--quantized-base" => a.quantized = true,
            "--no-panels" => a.no_panels = true,
            "--together-only" => a.together_only = true,
            "--load" => a.load = Some(number(&mut it, "--load")?),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => a.model = s.to_string(),
        }
    }
    if a.model.is_empty() {
        return Err("give the model's path (or set NASC_SMOLLM2_GGUF)".into());
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// One mode's figures: tokens of all replies, wall time, each request's latency.
struct Measured {
    tokens: u64,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.tokens as f64 / self.wall.as_secs_f64()
    }
    fn mean_latency(&self) -> f64 {
        self.latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / self.latencies.len() as f64
    }
    fn max_latency(&self) -> f64 {
        self.latencies.iter().map(Duration::as_secs_f64).fold(0.0, f64::max)
    }
}

fn run() -> Result<(), String> {
    let a = args()?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let options = ServeOptions {
        model: a.model.clone().into(),
        base_name: "bench".into(),
        adapters: Vec::new(),
        max_batch: 256,
        kv_cache_bytes: 8 << 30,
        lora_root: None,
        api_key: None,
        max_connections: 64,
        max_queue: 256,
        shutdown_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(600),
        load: LoadOptions {
            quantised_base: a.quantized,
            kernels: Kernels { panels: !a.no_panels, ..Kernels::default() },
        },
    };
    std::thread::spawn(move || {
        if let Err(e) = serve(options, listener, Device::Cpu) {
            eprintln!("error: nasc serve: {e}");
            std::process::exit(1);
        }
    });
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    // The server answers once the model has loaded.
    let deadline = Instant::now() + Duration::from_secs(300);
    while agent.get(format!("{base}/health")).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        if Instant::now() > deadline {
            return Err("the server did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let prompts: Vec<String> = (0..a.clients)
        .map(|i| format!("Write a short story about a robot who learns to paint, chapter {}.", i + 1))
        .collect();
    let ask = |prompt: &str| -> Result<(u64, Duration), String> {
        let messages = json!([{"role": "user", "content": prompt}]);
        let body = json!({"model": "bench", "messages": messages, "max_tokens": a.tokens, "temperature": 0});
        let t = Instant::now();
        let mut r = agent
            .post(format!("{base}/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| e.to_string())?;
        let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let tokens = v["usage"]["completion_tokens"].as_u64().ok_or(format!("no usage in {text}"))?;
        Ok((tokens, t.elapsed()))
    };
    // Warm-up: the first request reorders quantised weights.
    ask(&prompts[0])?;
    if let Some(requests) = a.load {
        return load_test(&base, &a, requests);
    }
    println!("{} clients, at most {} tokens each, greedy; model {}", a.clients, a.tokens, a.model);
    println!("| round | alone (tok/s) | together (tok/s) | throughput ratio | mean latency alone / together (s) | latency ratio | worst latency together (s) |");
    println!("|---|---|---|---|---|---|---|");
    for round in 0..a.rounds {
        let t = Instant::now();
        let mut alone = Measured { tokens: 0, wall: Duration::ZERO, latencies: Vec::new() };
        for p in prompts.iter().filter(|_| !a.together_only) {
            let (tokens, latency) = ask(p)?;
            alone.tokens += tokens;
            alone.latencies.push(latency);
        }
        alone.wall = t.elapsed();
        let t = Instant::now();
        let answers: Vec<Result<(u64, Duration), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = prompts.iter().map(|p| scope.spawn(|| ask(p))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a client panicked".into()))).collect()
        });
        let mut together = Measured { tokens: 0, wall: t.elapsed(), latencies: Vec::new() };
        for answer in answers {
            let (tokens, latency) = answer?;
            together.tokens += tokens;
            together.latencies.push(latency);
        }
        if a.together_only {
            // Nothing ran alone: no ratios.
            println!(
                "| {round} | - | {:.1} | - | - / {:.2} | - | {:.2} |",
                together.rate(),
                together.mean_latency(),
                together.max_latency()
            );
        } else {
            println!(
                "| {round} | {:.1} | {:.1} | {:.2}x | {:.2} / {:.2} | {:.2}x | {:.2} |",
                alone.rate(),
                together.rate(),
                together.rate() / alone.rate(),
                alone.mean_latency(),
                together.mean_latency(),
                together.mean_latency() / alone.mean_latency(),
                together.max_latency()
            );
        }
    }
    Ok(())
}

/// What one client of the load test saw: latencies of its 200 answers, every status, the
/// tokens of its replies, and the streams it left early.
type ClientResult = Result<(Vec<Duration>, Vec<u16>, u64, usize), String>;

/// The load test of `--load`: see the file's header.
fn load_test(base: &str, a: &Args, requests: usize) -> Result<(), String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let results: Vec<ClientResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..a.clients)
            .map(|c| {
                let addr = addr.clone();
                scope.spawn(move || -> ClientResult {
                    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                    let (mut latencies, mut statuses, mut tokens, mut left) = (Vec::new(), Vec::new(), 0u64, 0);
                    for r in (c..requests).step_by(a.clients) {
                        let (n, stream, leave) = (1u64 << (r % 3), (r / a.clients + c).is_multiple_of(2), r % 10 == 3);
                        let body = json!({"model": "bench", "prompt": format!("Request {r} from client {c}: once upon a time"),
                                          "max_tokens": 12 + r % 20, "n": n, "seed": r, "temperature": 0.8,
                                          "stream": stream, "stream_options": {"include_usage": true}})
                        .to_string();
                        let t = Instant::now();
                        if stream && leave {
                            let mut raw = std::net::TcpStream::connect(&addr).map_err(|e| e.to_string())?;
                            write!(raw, "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                                .map_err(|e| e.to_string())?;
                            let _ = raw.read(&mut [0u8; 64]);
                            left += 1;
                            continue;
                        }
                        let mut reply = agent
                            .post(format!("http://{addr}/v1/completions"))
                            .header("Content-Type", "application/json")
                            .send(body)
                            .map_err(|e| e.to_string())?;
                        let status = reply.status().as_u16();
                        let text = reply.body_mut().read_to_string().map_err(|e| e.to_string())?;
                        statuses.push(status);
                        if status != 200 {
                            continue;
                        }
                        latencies.push(t.elapsed());
                        // The usage of a whole answer, or of a stream's last chunk.
                        let usage = if stream {
                            text.lines()
                                .filter_map(|l| l.strip_prefix("data: "))
                                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                                .find_map(|v| v["usage"]["completion_tokens"].as_u64())
                        } else {
                            serde_json::from_str::<Value>(&text).ok().and_then(|v| v["usage"]["completion_tokens"].as_u64())
                        };
                        tokens += usage.ok_or(format!("no usage in a 200 answer: {text}"))?;
                    }
                    Ok((latencies, statuses, tokens, left))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a client panicked".into()))).collect()
    });
    let wall = started.elapsed();
    let (mut latencies, mut statuses, mut tokens, mut left) = (Vec::new(), Vec::new(), 0, 0);
    for r in results {
        let (l, s, t, g) = r?;
        latencies.extend(l);
        statuses.extend(s);
        tokens += t;
        left += g;
    }
    latencies.sort();
    let mut by_status = std::collections::BTreeMap::new();
    for s in statuses {
        *by_status.entry(s).or_insert(0) += 1;
    }
    let at =
        |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q) as usize).map_or(0.0, Duration::as_secs_f64);
    println!("load: {requests} requests from {} clients over {:.1} s", a.clients, wall.as_secs_f64());
    println!("answers by status: {by_status:?}; {left} streams left after the first event");
    println!(
        "latency of 200 answers: p50 {:.2} s, p99 {:.2} s; {:.1} tokens/s in all ({tokens} tokens)",
        at(0.5),
        at(0.99),
        tokens as f64 / wall.as_secs_f64()
    );
    if by_status.keys().any(|&s| s >= 500) {
        return Err("the server answered with an error".into());
    }
    Ok(())
}
