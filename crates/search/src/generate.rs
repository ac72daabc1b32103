//! Generators behind one interface: given a prompt and its base program, propose a reply (a diff) for the verdict pipeline.
//! `mutate` edits the syntax tree; `openai` asks any OpenAI-compatible server. Neither judges: every reply goes through `delta::judge`.

use super::config::{Api, Constrain, OpenAiConfig, Sampling};
use super::mutate;
use nasc_delta::delta::grammar::{diff_grammar, diff_grammar_avoiding, Avoid, PROGRAM_FILE};
use std::time::{Duration, Instant};

/// The built-in prompt template (`prompts/search.md`).
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../prompts/search.md");

/// What a generator is asked for one candidate.
#[derive(Clone, Debug)]
pub struct Request {
    /// The rendered prompt.
    pub prompt: String,
    /// The base program, canonical.
    pub base: String,
    /// The dataset the candidate is for (its binding shapes the diff grammar).
    pub dataset: String,
    /// Seeds the proposal (mutate) or the sampling (servers that take a seed).
    pub seed: u64,
    /// The previous attempts' replies and the diagnostics they got, oldest first.
    pub feedback: Vec<(String, String)>,
    /// The sampling temperature of this request, instead of `[sampling] temperature`.
    pub temperature: Option<f64>,
    /// Edits the diff grammar leaves out (a retry after a duplicate: the runs of lines whose
    /// network the archive had).
    pub avoid: Vec<Avoid>,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub text: String,
    /// Completion tokens, when the generator counts them.
    pub tokens: Option<i64>,
    pub elapsed: Duration,
    /// The server stopped it at the token limit (`finish_reason` "length"): its last line may
    /// be unfinished.
    pub truncated: bool,
}

/// Why a generator could not answer one request: that request's candidates get the verdict
/// `generator_error` with the message, and the run goes on; a `fatal` one (no server listens
/// at the URL) stops the run.
#[derive(Clone, Debug, PartialEq)]
pub struct GenError {
    pub message: String,
    pub fatal: bool,
}

impl GenError {
    /// This request failed; others may not.
    pub fn request(message: String) -> GenError {
        GenError { message, fatal: false }
    }
    /// No request can succeed: the run stops.
    pub fn fatal(message: String) -> GenError {
        GenError { message, fatal: true }
    }
}

impl std::fmt::Display for GenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub trait Generator: Send + Sync {
    /// `mutate` or `openai`, as stored.
    fn name(&self) -> &'static str;
    /// The model or adapter asked, for a language model.
    fn adapter(&self) -> Option<String>;
    fn generate(&self, req: &Request) -> Result<Reply, GenError>;
    /// `n` replies to one request. Each reply's `elapsed` is its share of the request's time.
    fn generate_n(&self, req: &Request, n: usize) -> Result<Vec<Reply>, GenError> {
        (0..n as u64).map(|i| self.generate(&Request { seed: req.seed.wrapping_add(i), ..req.clone() })).collect()
    }
    /// Asks for another model (a new adapter) from now on.
    fn set_model(&self, _model: &str) {}
    /// Has the server load the adapter in `dir` as `name` (replacing one of that name). A
    /// generator without a server has nothing to load.
    fn load_adapter(&self, _name: &str, _dir: &std::path::Path) -> Result<(), GenError> {
        Ok(())
    }
}

/// The placeholders [`render`] fills.
pub const PLACEHOLDERS: [&str; 4] = ["{program}", "{dataset}", "{accuracy}", "{goal}"];

/// Whether `template` can make prompts: every `{name}` in it is one [`render`] fills (a misspelt
/// one would reach the model as it is). `Ok` holds a warning when it does not show the program
/// (`{program}`): the model would not see what it is to change (a test may want that; a
/// search hardly ever does).
pub fn check_template(template: &str) -> Result<Option<String>, String> {
    let warning = (!template.contains("{program}"))
        .then(|| "it has no {program}: the model will not see the program it is to change".to_string());
    // Each `{` followed by a name and `}`.
    for after in template.split('{').skip(1) {
        let name = &after[..after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len())];
        let placeholder = format!("{{{name}}}");
        if !name.is_empty() && after[name.len()..].starts_with('}') && !PLACEHOLDERS.contains(&placeholder.as_str()) {
            return Err(format!("{placeholder} is not a placeholder; the template may use {}", PLACEHOLDERS.join(" ")));
        }
    }
    Ok(warning)
}

/// Renders `template`: `{program}` (numbered lines), `{dataset}`, `{accuracy}`, `{goal}`.
pub fn render(template: &str, program: &str, dataset: &str, accuracy: Option<f64>, goal: &str) -> String {
    let numbered: String = program.lines().enumerate().map(|(i, l)| format!("{:>3} | {l}\n", i + 1)).collect();
    let accuracy = accuracy.map_or_else(|| "unknown (it did not train)".to_string(), |a| format!("{:.4}", a));
    template
        .replace("{program}", numbered.trim_end())
        .replace("{dataset}", dataset)
        .replace("{accuracy}", &accuracy)
        .replace("{goal}", goal)
}

/// The follow-up message of a retry: the verdict's diagnostic, and what to do.
pub fn feedback_message(diagnostic: &str) -> String {
    format!(
        "That reply was rejected:\n{}\nReply with a corrected unified diff against the original program, in a ```diff fence.",
        diagnostic.trim_end()
    )
}

/// The built-in generator: random grammar-aware mutations.
pub struct Mutate {
    pub max_mutations: usize,
}

impl Generator for Mutate {
    fn name(&self) -> &'static str {
        "mutate"
    }
    fn adapter(&self) -> Option<String> {
        None
    }
    fn generate(&self, req: &Request) -> Result<Reply, GenError> {
        let start = Instant::now();
        // A retry draws another proposal: mutate cannot read a diagnostic, only try again.
        let seed = req.seed ^ (req.feedback.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let text = match mutate::propose(&req.base, seed, self.max_mutations) {
            Some(p) => format!(
                "{}\n```diff\n{}```\n",
                p.mutations.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
                p.diff
            ),
            // No edit applies (a base that does not parse): an empty reply, judged `no_diff`.
            None => String::new(),
        };
        Ok(Reply { text, tokens: None, elapsed: start.elapsed(), truncated: false })
    }
}

/// Any OpenAI-compatible server: `/v1/chat/completions` or `/v1/completions`.
pub struct OpenAi {
    config: OpenAiConfig,
    sampling: Sampling,
    model: std::sync::Mutex<String>,
    agent: ureq::Agent,
    api_key: Option<String>,
    /// Set once the server answered one choice to a request for several (llama.cpp's server
    /// does): from then on, `n` replies are `n` requests.
    one_per_request: std::sync::atomic::AtomicBool,
}

impl OpenAi {
    pub fn new(config: &OpenAiConfig, sampling: &Sampling) -> OpenAi {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        let api_key = std::env::var(&config.api_key_env).ok().filter(|k| !k.is_empty());
        OpenAi {
            config: config.clone(),
            sampling: sampling.clone(),
            model: std::sync::Mutex::new(config.model.clone()),
            agent,
            api_key,
            one_per_request: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn url(&self) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        match self.config.api {
            Api::Chat => format!("{base}/chat/completions"),
            Api::Completions => format!("{base}/completions"),
        }
    }

    fn body(&self, req: &Request, n: usize) -> Result<serde_json::Value, GenError> {
        let model = self.model.lock().map(|m| m.clone()).unwrap_or_default();
        let s = &self.sampling;
        let mut body = serde_json::json!({
            "model": model,
            "n": n,
            "temperature": req.temperature.unwrap_or(s.temperature),
            "top_p": s.top_p,
            "top_k": s.top_k,
            "max_tokens": s.max_tokens,
            "seed": req.seed,
        });
        // Sent only when set: a server without penalties must not be asked for none.
        for (key, v) in [("frequency_penalty", s.frequency_penalty), ("presence_penalty", s.presence_penalty)] {
            if v != 0.0 {
                body[key] = serde_json::json!(v);
            }
        }
        match self.config.api {
            Api::Chat => {
                let mut messages = vec![serde_json::json!({"role": "user", "content": req.prompt})];
                for (reply, diagnostic) in &req.feedback {
                    messages.push(serde_json::json!({"role": "assistant", "content": reply}));
                    messages.push(serde_json::json!({"role": "user", "content": feedback_message(diagnostic)}));
                }
                body["messages"] = serde_json::Value::Array(messages);
            }
            Api::Completions => {
                let mut prompt = req.prompt.clone();
                for (reply, diagnostic) in &req.feedback {
                    prompt.push_str(&format!("\n\n{reply}\n\n{}", feedback_message(diagnostic)));
                }
                prompt.push('\n');
                body["prompt"] = serde_json::Value::String(prompt);
            }
        }
        // The parent's grammar, less the edits to avoid; where leaving them out leaves no diff
        // at all, the whole grammar.
        let grammar = |gbnf: bool| -> Result<String, GenError> {
            let b = binding(&req.dataset);
            let g = match diff_grammar_avoiding(&req.base, PROGRAM_FILE, b, &req.avoid) {
                Err(_) if !req.avoid.is_empty() => diff_grammar(&req.base, PROGRAM_FILE, b),
                g => g,
            };
            let text = g.and_then(|g| {
                if gbnf { nasc_grammar::gbnf::print(&g) } else { nasc_grammar::lark::print(&g) }
                    .map_err(|e| e.to_string())
            });
            text.map_err(|e| GenError::request(format!("the diff grammar of the parent cannot be built: {e}")))
        };
        match self.config.constrain {
            Constrain::Off => {}
            Constrain::Lark => body["structured_outputs"] = serde_json::json!({"grammar": grammar(false)?}),
            Constrain::Vllm => body["structured_outputs"] = serde_json::json!({"grammar": grammar(true)?}),
            Constrain::LlamaCpp => body["grammar"] = serde_json::json!(grammar(true)?),
        }
        Ok(body)
    }

    /// One request to the completion endpoint, with retries and exponential backoff on 429, 5xx
    /// and timeouts.
    fn post(&self, body: &serde_json::Value) -> Result<serde_json::Value, GenError> {
        let url = self.url();
        let body = self.post_to(&url, body)?;
        serde_json::from_str(&body).map_err(|e| {
            GenError::request(format!("{url} answered 200 with a body that is not JSON ({e}): {}", clip(&body)))
        })
    }

    /// POSTs `body` to `url`; the body of a 200 answer.
    fn post_to(&self, url: &str, body: &serde_json::Value) -> Result<String, GenError> {
        let url = url.to_string();
        let text = body.to_string();
        let mut backoff = Duration::from_millis(self.config.backoff_ms);
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            let mut request = self.agent.post(&url).header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                request = request.header("Authorization", &format!("Bearer {key}"));
            }
            match request.send(text.as_str()) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.body_mut().read_to_string().unwrap_or_default();
                    if status == 200 {
                        return Ok(body);
                    }
                    last = format!("{url} answered {status}: {}", clip(&body));
                    if status != 429 && status < 500 {
                        return Err(GenError::request(last));
                    }
                }
                Err(ureq::Error::Timeout(_)) => {
                    last = format!("{url} did not answer within {} s (the `timeout_s` setting)", self.config.timeout_s);
                }
                Err(e @ (ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound)) => {
                    // Nothing listens there: retrying each candidate would only repeat this.
                    return Err(GenError::fatal(format!(
                        "cannot reach the generator's server at {url}: {e}; is it running? (check `base_url` in [openai])"
                    )));
                }
                Err(e) => return Err(GenError::fatal(format!("request to {url} failed: {e}"))),
            }
        }
        Err(GenError::request(format!("{last} (after {} tries)", self.config.retries + 1)))
    }
}

fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl Generator for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }
    fn adapter(&self) -> Option<String> {
        self.model.lock().ok().map(|m| m.clone())
    }
    fn set_model(&self, model: &str) {
        if let Ok(mut m) = self.model.lock() {
            *m = model.to_string();
        }
    }
    fn generate(&self, req: &Request) -> Result<Reply, GenError> {
        let mut replies = self.generate_n(req, 1)?;
        Ok(replies.remove(0))
    }

    fn generate_n(&self, req: &Request, n: usize) -> Result<Vec<Reply>, GenError> {
        use std::sync::atomic::Ordering;
        if n > 1 && self.one_per_request.load(Ordering::Relaxed) {
            return (0..n as u64)
                .map(|i| self.generate(&Request { seed: req.seed.wrapping_add(i), ..req.clone() }))
                .collect();
        }
        let start = Instant::now();
        let json = self.post(&self.body(req, n)?)?;
        let choices = json["choices"].as_array().map(Vec::as_slice).unwrap_or_default();
        if n > 1 && choices.len() == 1 {
            // The server ignores `n` (llama.cpp's does): this reply is the first, the rest are
            // asked one by one with the next seeds, and so are later groups.
            if !self.one_per_request.swap(true, Ordering::Relaxed) {
                eprintln!("note: {} answered one choice to n = {n}; asking for each reply separately", self.url());
            }
            let mut replies = self.replies(&json, 1, start)?;
            for i in 1..n as u64 {
                replies.push(self.generate(&Request { seed: req.seed.wrapping_add(i), ..req.clone() })?);
            }
            return Ok(replies);
        }
        self.replies(&json, n, start)
    }

    fn load_adapter(&self, name: &str, dir: &std::path::Path) -> Result<(), GenError> {
        let url = format!("{}/load_lora_adapter", self.config.base_url.trim_end_matches('/'));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let body = serde_json::json!({"lora_name": name, "lora_path": dir.display().to_string(), "load_inplace": true});
        self.post_to(&url, &body).map(|_| ()).map_err(|e| {
            GenError::request(format!(
                "cannot load the adapter {name} from {}: {e} (the server must load LoRA adapters at run time: \
                 `nasc serve --allow-runtime-lora --lora-root DIR` does for adapters under DIR; vLLM needs \
                 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; or set [finetune] load_adapter = false)",
                dir.display()
            ))
        })
    }
}

impl OpenAi {
    /// The `n` replies of a response.
    fn replies(&self, json: &serde_json::Value, n: usize, start: Instant) -> Result<Vec<Reply>, GenError> {
        let choices = json["choices"].as_array().map(Vec::as_slice).unwrap_or_default();
        if choices.len() != n {
            return Err(GenError::request(format!(
                "{} answered {} choices to a request for n = {n}: {}",
                self.url(),
                choices.len(),
                clip(&json.to_string())
            )));
        }
        let elapsed = start.elapsed() / n as u32;
        // The usage counts every reply's tokens together; a reply's own count is known only when
        // there is one reply (or when the server reports it per choice, as `nasc serve` does).
        let total = json["usage"]["completion_tokens"].as_i64();
        let mut replies = Vec::with_capacity(n);
        for choice in choices {
            let text = match self.config.api {
                Api::Chat => choice["message"]["content"].as_str(),
                Api::Completions => choice["text"].as_str(),
            };
            let Some(text) = text else {
                return Err(GenError::request(format!(
                    "{} answered without a completion: {}",
                    self.url(),
                    clip(&json.to_string())
                )));
            };
            let tokens = choice["completion_tokens"].as_i64().or(if n == 1 { total } else { None });
            let truncated = choice["finish_reason"].as_str() == Some("length");
            replies.push(Reply { text: text.to_string(), tokens, elapsed, truncated });
        }
        Ok(replies)
    }
}

/// The dataset's binding, when nasc knows the dataset.
fn binding(dataset: &str) -> Option<nasc_lang::check::binding::Binding> {
    nasc_lang::check::binding::dataset(dataset)
}

/// Runs `f` on every item with at most `concurrency` at once, keeping the items' order.
pub fn parallel<T: Sync, R: Send>(items: &[T], concurrency: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1).min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                *results[i].lock().expect("no worker panics holding it") = Some(r);
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().expect("unpoisoned").expect("every item ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_must_show_the_program_and_use_only_known_placeholders() {
        assert_eq!(check_template(DEFAULT_TEMPLATE).unwrap(), None);
        assert_eq!(check_template(include_str!("../../../prompts/compact.md")).unwrap(), None);
        // Braces of the language's own text are not placeholders.
        assert_eq!(check_template("{program}\nblock name(c) { … }\n{}\n").unwrap(), None);
        assert!(check_template("no placeholders at all\n").unwrap().is_some_and(|w| w.contains("no {program}")));
        assert_eq!(check_template("{program}").unwrap(), None);
        let e = check_template("{program} on {datset}").unwrap_err();
        assert!(e.starts_with("{datset} is not a placeholder"), "{e}");
    }
}
