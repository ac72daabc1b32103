//! `nasc serve`: the flags of the OpenAI-compatible server, checked and handed to `nasc_lm::serve`.
//! Argument parsing only; the server itself lives in the language-model crate.

use super::UsageError;
use clap::Args;
use nasc_lm::serve::{Adapter, ServeOptions};
use nasc_runtime::Device;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
#[command(after_help = "Example:\n  nasc serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8000 &\n  \
curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
-d '{\"model\": \"SmolLM2-135M-Instruct.Q4_1\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}],\n         \
\"temperature\": 0.7, \"n\": 4, \"seed\": 1, \"max_tokens\": 64}'\n\n\
Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, and, as vLLM names them, \
POST /v1/load_lora_adapter {\"lora_name\", \"lora_path\", \"load_inplace\"} and POST /v1/unload_lora_adapter \
{\"lora_name\"} to add, replace or drop an adapter while serving (with --allow-runtime-lora, from folders under \
--lora-root). GET /v1/models/{id} gives one model; GET /metrics counts the queue, generations, cancelled ones \
and tokens (Prometheus text). A client that disconnects stops its generation at the next token; SIGTERM or Ctrl-C \
stops accepting, finishes the requests in flight and exits 0. Log-probabilities of the model's own \
distribution, with whole answers: `logprobs: N` (0 to 5 alternatives) on /v1/completions, `logprobs: true` and \
`top_logprobs` (0 to 20) on /v1/chat/completions. Sampling fields: temperature \
(default 1), top_p, top_k (0 or -1: all), frequency_penalty and presence_penalty (-2 to 2), max_tokens / max_completion_tokens, n (replies decoded in one batch \
sharing the prompt's cache), stop (a string or a list), seed, stream (server-sent events ending in \
`data: [DONE]`; stream_options.include_usage adds a usage chunk). A request's `model` names the base model or an adapter; without it the base model answers.\n\n\
Constrained decoding (llguidance; one constraint per request, every reply held to it): `grammar` \
(llama.cpp's field), `guided_grammar`, or `structured_outputs: {\"grammar\": ...}` (vLLM's) take a grammar in Lark \
(llguidance's dialect, optionally after `%llguidance {}`) or GBNF (`root ::= ...`), told apart by their syntax; \
`structured_outputs` also takes `json` (a JSON schema), `regex` and `choice` (a list of strings), as do vLLM's \
`guided_json`, `guided_regex` and `guided_choice`; `response_format` takes `json_object` and `json_schema`. A reply \
ends when its grammar is complete; one that can go no further ends with finish_reason `no_allowed_token`. \
A grammar that does not compile, or a field nasc does not implement (echo, best_of, suffix, tools, \
logit_bias, ... other than at their neutral values), is a 400 that says which. A request whose KV cache, \
n × (prompt + max_tokens) positions, would pass --kv-cache-bytes is a 400 that says how much it needs.\n\n\
Concurrent requests decode together (continuous batching): each joins the replies decoding at the next \
token and leaves when it ends, as long as it asks for the same model and the KV caches fit; otherwise it \
waits its turn. A prompt of over 256 tokens is prefilled 256 at a time, a chunk between two tokens of the replies decoding, and stops when its client leaves. On the CPU a reply is the same alone or in company (on a --quantized-base exactly; with \
f32 weights exactly while at most 32 rows decode together, to the last bits of a float beyond). A prompt \
that starts as a recent one of the same model computes only the rest (prefix caching; \
usage.prompt_tokens_details.cached_tokens counts the tokens reused; with f32 weights the reused part may \
differ from a prefill of its own in the last bits of a float). With f32 weights on the CPU, decoding \
reads a copy of the weights packed for it, made on first use: twice the weights' memory.")]
pub struct ServeArgs {
    /// A .gguf file, or a folder with config.json, *.safetensors and tokenizer.json.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Serve a LoRA adapter (PEFT folder) under NAME, chosen by a request's `model` field (repeatable).
    #[arg(long, value_name = "NAME=DIR")]
    adapter: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the address is printed on stderr once the model has loaded.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Where to run: cpu, wgpu, wgpu:N, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// The base model's name in /v1/models and requests (default: the file or folder name without extension).
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// The most replies one request may ask for (`n`); they decode together in one batch.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_batch: usize,
    /// The most memory the KV caches of the requests decoding together may take, in bytes
    /// (suffixes K, M, G: binary). A request whose n × (prompt + max_tokens) tokens would need
    /// more alone is a 400 that says how much; one that fits alone but not beside the requests
    /// decoding waits for them. Default: half the memory available when the server starts.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    kv_cache_bytes: Option<u64>,
    /// Allow POST /v1/load_lora_adapter to load adapters while serving, from folders under
    /// --lora-root only (off by default, as in vLLM: the route reads files the client names).
    #[arg(long, requires = "lora_root")]
    allow_runtime_lora: bool,
    /// The folder runtime adapters must be in (with --allow-runtime-lora).
    #[arg(long, value_name = "DIR", requires = "allow_runtime_lora")]
    lora_root: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on every route but /health (default: the
    /// NASC_API_KEY environment variable, if set). Set one whenever --host is not loopback.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The most connections served at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
    /// Seconds a client may take to send a request's head, and then as many for its body; past
    /// them, a 408 (a client trickling bytes cannot hold a connection).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    request_timeout: f64,
    /// The most generation requests waiting for the model or running at once; more are
    /// answered 429 (retry later) rather than queued without end.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_queue: usize,
    /// After SIGTERM or Ctrl-C, seconds the requests in flight may take to finish before their
    /// connections are closed; the process then exits 0.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    shutdown_timeout: f64,
    /// Keep the base's projection weights block-quantised as the GGUF file stores them (Q8_0,
    /// Q4_0, Q4_1, Q4_K, Q6_K) and compute with the blocks, as llama.cpp does: inputs are
    /// rounded to 8 bits and take integer dot products (Q8_0, Q4_0, Q4_1; AVX-512 VNNI where the
    /// CPU has it), faster than f32 weights for one stream and for a batch, in about a third of
    /// their memory (figures in BENCHMARKS.md). CPU only.
    #[arg(long)]
    quantized_base: bool,
}

pub fn serve(a: ServeArgs) -> Result<ExitCode, UsageError> {
    nasc_runtime::available(a.device).map_err(UsageError)?;
    if !a.model.exists() {
        return Err(UsageError(format!("{}: no such file or folder", a.model.display())));
    }
    let base = match &a.served_model_name {
        Some(n) if n.is_empty() => return Err(UsageError("--served-model-name must not be empty".into())),
        Some(n) => n.clone(),
        // A folder keeps its whole name (`Qwen2.5-Coder-7B`); a file loses its extension.
        None => if a.model.is_dir() { a.model.file_name() } else { a.model.file_stem() }
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let mut adapters = vec![];
    for spec in &a.adapter {
        let Some((name, dir)) = spec.split_once('=').filter(|(n, d)| !n.is_empty() && !d.is_empty()) else {
            return Err(UsageError(format!("--adapter {spec}: expected NAME=DIR")));
        };
        if name == base || adapters.iter().any(|x: &Adapter| x.name() == name) {
            return Err(UsageError(format!("--adapter {spec}: the name {name} is already served")));
        }
        adapters.push(Adapter::open(name, Path::new(dir)).map_err(|e| UsageError(format!("--adapter {spec}: {e}")))?);
    }
    if a.max_batch == 0 {
        return Err(UsageError("--max-batch must be at least 1".into()));
    }
    let lora_root = match &a.lora_root {
        Some(dir) => Some(
            std::fs::canonicalize(dir)
                .ok()
                .filter(|d| d.is_dir())
                .ok_or_else(|| UsageError(format!("--lora-root {}: no such folder", dir.display())))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind((a.host.as_str(), a.port))
        .map_err(|e| UsageError(format!("cannot listen on {}:{}: {e}", a.host, a.port)))?;
    let options = ServeOptions {
        model: a.model,
        base_name: base,
        adapters,
        max_batch: a.max_batch,
        kv_cache_bytes: a.kv_cache_bytes.unwrap_or_else(default_kv_budget),
        lora_root,
        max_connections: a.max_connections.max(1),
        max_queue: a.max_queue.max(1),
        shutdown_timeout: std::time::Duration::try_from_secs_f64(a.shutdown_timeout).map_err(|_| {
            UsageError(format!("--shutdown-timeout {}: a number of seconds, 0 or more", a.shutdown_timeout))
        })?,
        request_timeout: std::time::Duration::try_from_secs_f64(a.request_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                UsageError(format!("--request-timeout {}: a positive number of seconds", a.request_timeout))
            })?,
        api_key: a.api_key.clone().or_else(|| std::env::var("NASC_API_KEY").ok()).filter(|k| !k.is_empty()),
        load: super::lm::load_options(a.quantized_base),
    };
    nasc_lm::serve::serve(options, listener, a.device).map_err(UsageError)?;
    Ok(ExitCode::SUCCESS)
}

/// `4096`, `512M`, `8G`: bytes, with an optional binary suffix.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => match c.to_ascii_uppercase() {
            'K' => (&t[..i], 10),
            'M' => (&t[..i], 20),
            'G' => (&t[..i], 30),
            'T' => (&t[..i], 40),
            _ => return Err(format!("{text}: a number of bytes, with K, M, G or T after it if you like")),
        },
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("{text}: a number of bytes, such as 4096 or 8G"))?;
    match n.checked_mul(1u64 << shift) {
        Some(0) => Err("the KV cache budget must be more than 0 bytes".into()),
        Some(b) => Ok(b),
        None => Err(format!("{text}: too large")),
    }
}

/// Half of `MemAvailable` in /proc/meminfo, or 4 GiB where that cannot be read.
fn default_kv_budget() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    available.map_or(4 << 30, |b| b / 2)
}
