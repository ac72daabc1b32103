//! The OpenAI-compatible HTTP server for a Llama-family checkpoint (`nasc serve`), as a library.
//!
//! HTTP is hyper's HTTP/1.1 with axum's routing on a small tokio runtime (`http`): framing,
//! keep-alive, chunked bodies, `Expect: 100-continue`, header limits and timeouts come from them.
//! Handlers check each request and answer errors themselves; valid generation requests go
//! through a channel to the one model thread (the thread that opened the checkpoint), which
//! decodes them together (continuous batching, [`Batch`]): a request is prefilled and joins the
//! running replies at the next token, as long as it asks for the same served model and the KV
//! caches of all fit `--kv-cache-bytes` (else it waits, in order), and each reply leaves when it
//! ends. The thread sends back either a whole result or streamed text pieces, and ends a
//! request's replies at the next token once its client has gone. SIGTERM (or Ctrl-C) stops accepting,
//! lets the requests in flight finish, then ends the model thread: the process exits 0.

use crate::chat::Message;
use crate::constrain::{Constrainer, Constraint, Grammar};
use crate::generate::{Batch, Generation, Prefixes, RequestId, SamplingParams};
use crate::model::{Checkpoint, Llama, LoadOptions, ModelError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use nasc_runtime::{BackendJob, Device};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc as async_mpsc, oneshot};

mod http;

/// What to serve and how: the CLI fills it from its flags.
pub struct ServeOptions {
    /// A .gguf file, or a folder with config.json, *.safetensors and tokenizer.json.
    pub model: PathBuf,
    /// The base model's name in /v1/models and requests.
    pub base_name: String,
    /// LoRA adapters served beside the base, by name (checked with [`Adapter::open`]).
    pub adapters: Vec<Adapter>,
    /// The most replies one request may ask for (`n`), at least 1.
    pub max_batch: usize,
    /// The most bytes the KV caches of the requests decoding together may take: a request that
    /// alone needs more is refused, one that needs more beside the others waits.
    pub kv_cache_bytes: u64,
    /// Where adapters loaded while serving must be (canonical); `None`: runtime loading is off.
    pub lora_root: Option<PathBuf>,
    /// The bearer token every route but /health asks for; `None`: none asked.
    pub api_key: Option<String>,
    /// The most connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// The most generation requests waiting or running at once; more are answered 429.
    pub max_queue: usize,
    /// After SIGTERM or SIGINT, how long the requests in flight may take to finish.
    pub shutdown_timeout: Duration,
    /// The longest a client may take to send a whole request (and each write of the answer);
    /// past it, a 408.
    pub request_timeout: Duration,
    /// How the checkpoint loads (a block-quantised base, ...).
    pub load: LoadOptions,
}

/// A LoRA adapter (a PEFT folder) served under a name; its weights load beside the base model's.
pub struct Adapter {
    name: String,
    dir: PathBuf,
}

impl Adapter {
    /// Checks an adapter folder's config before the model loads, so a wrong path fails at once.
    pub fn open(name: &str, dir: &Path) -> Result<Adapter, String> {
        crate::lora::read_peft_config(dir).map_err(|e| e.to_string())?;
        Ok(Adapter { name: name.to_string(), dir: dir.to_path_buf() })
    }

    /// The name requests choose it by.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Serves `options` on `listener` until the process ends, on `device`'s backend. Errors are those
/// of loading the model and adapters, as messages for the user.
pub fn serve(options: ServeOptions, listener: TcpListener, device: Device) -> Result<(), String> {
    nasc_runtime::dispatch(device, Job { options, listener })?
}

struct Job {
    options: ServeOptions,
    listener: TcpListener,
}

/// What the model thread knows that connection threads need to check requests.
#[derive(Clone)]
struct Info {
    /// The served names: the base model first, then the adapters. The model thread changes it
    /// when an adapter is loaded or unloaded.
    models: Arc<RwLock<Vec<String>>>,
    context: usize,
    max_batch: usize,
    created: u64,
    work: mpsc::Sender<Msg>,
    lora_root: Option<PathBuf>,
    api_key: Option<Arc<str>>,
    request_timeout: Duration,
    shutdown_timeout: Duration,
    /// Generation requests sent to the model thread and not yet finished, and the most allowed.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    stats: Arc<Stats>,
}

/// What `/metrics` counts, in Prometheus's text format.
#[derive(Default)]
struct Stats {
    /// Generation requests the model thread has finished, with a result or an error.
    generations: AtomicU64,
    /// Those whose client had gone before the result: stopped at the next token.
    cancelled: AtomicU64,
    /// Tokens generated, all replies together.
    tokens: AtomicU64,
    /// Decoding steps: one pass of the model for every reply decoding then.
    steps: AtomicU64,
    /// The replies those steps decoded, summed over steps (over `steps`: the mean batch).
    rows: AtomicU64,
}

impl Stats {
    fn text(&self, queued: usize) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::SeqCst);
        format!(
            "# HELP nasc_requests_queued Generation requests waiting for the model or running.\n\
             # TYPE nasc_requests_queued gauge\nnasc_requests_queued {queued}\n\
             # HELP nasc_generations_total Generation requests finished.\n\
             # TYPE nasc_generations_total counter\nnasc_generations_total {}\n\
             # HELP nasc_generations_cancelled_total Generations stopped because their client had gone.\n\
             # TYPE nasc_generations_cancelled_total counter\nnasc_generations_cancelled_total {}\n\
             # HELP nasc_generated_tokens_total Tokens generated.\n\
             # TYPE nasc_generated_tokens_total counter\nnasc_generated_tokens_total {}\n\
             # HELP nasc_decode_steps_total Decoding steps: one pass of the model for every reply decoding.\n\
             # TYPE nasc_decode_steps_total counter\nnasc_decode_steps_total {}\n\
             # HELP nasc_decoded_rows_total Replies decoded, summed over steps (divided by the steps: the mean batch).\n\
             # TYPE nasc_decoded_rows_total counter\nnasc_decoded_rows_total {}\n",
            c(&self.generations),
            c(&self.cancelled),
            c(&self.tokens),
            c(&self.steps),
            c(&self.rows)
        )
    }
}

impl Info {
    fn names(&self) -> Vec<String> {
        self.models.read().map(|m| m.clone()).unwrap_or_default()
    }
}

/// What connection threads ask of the model thread.
enum Msg {
    Generate(Work),
    /// Read a PEFT adapter onto a clone of the base and serve it as `name` (replacing one of that
    /// name when `inplace`).
    Load {
        name: String,
        dir: PathBuf,
        inplace: bool,
        reply: oneshot::Sender<Result<String, HttpError>>,
    },
    Unload {
        name: String,
        reply: oneshot::Sender<Result<String, HttpError>>,
    },
}

/// A checked generation request on its way to the model thread.
struct Work {
    /// The served name asked for: the base model or an adapter.
    model: String,
    input: Input,
    params: SamplingParams,
    /// The grammar every reply is held to, from whichever constraint field the request used.
    grammar: Option<Grammar>,
    stream: bool,
    /// `stream_options.include_usage`: a last chunk with no choices and the usage.
    include_usage: bool,
    /// Where the model thread sends the request's events; closed once the client has gone.
    reply: async_mpsc::UnboundedSender<Event>,
}

/// Token ids' texts, for log-probabilities.
type TokenTexts = std::collections::HashMap<u32, String>;

enum Input {
    Chat(Vec<Message>),
    Text(String),
}

enum Event {
    /// The prompt's token count, once it is known to fit.
    Started(usize),
    Piece(usize, String),
    /// The replies, and the text of every token their log-probabilities name.
    Done(Generation, TokenTexts),
    Failed(HttpError),
}

impl BackendJob for Job {
    type Output = Result<(), String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = &self.options;
        let ckpt = Checkpoint::<B::InnerBackend>::open_with(&a.model, &device, &a.load)
            .map_err(|e| format!("{}: {e}", a.model.display()))?;
        // One model per served name: the base, then each adapter on a clone of it (the base's
        // tensors are shared, not copied).
        let mut weights = vec![(a.base_name.clone(), ckpt.model.clone())];
        for adapter in &a.adapters {
            let (model, _) = crate::lora::load_peft(ckpt.model.clone(), &adapter.dir)
                .map_err(|e| format!("--adapter {}={}: {e}", adapter.name, adapter.dir.display()))?;
            weights.push((adapter.name.clone(), model));
        }
        let (tx, rx) = mpsc::channel::<Msg>();
        let models = Arc::new(RwLock::new(weights.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()));
        let info = Info {
            models: models.clone(),
            context: ckpt.model.config.max_position_embeddings,
            max_batch: a.max_batch,
            created: now(),
            work: tx,
            lora_root: a.lora_root.clone(),
            api_key: a.api_key.as_deref().map(Arc::from),
            request_timeout: a.request_timeout,
            shutdown_timeout: a.shutdown_timeout,
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue: a.max_queue.max(1),
            stats: Arc::new(Stats::default()),
        };
        let addr = self.listener.local_addr().map_err(|e| e.to_string())?;
        let (queued, stats) = (info.queued.clone(), info.stats.clone());
        let http = http::start(self.listener, info, a.max_connections)?;
        eprintln!("nasc serve: {} on http://{addr}/v1 (model {})", a.model.display(), a.base_name);
        let end_of_turn = crate::run::end_of_turn_ids(&ckpt);
        // The vocabulary's table for grammars, built on the first request that has one.
        let mut constrainer = None;
        let mut waiting: VecDeque<Ready> = VecDeque::new();
        // Recent prefills, so that a prompt that starts as an earlier one computes only the rest.
        // Their key is the served name and how many times adapters were loaded or unloaded before
        // the batch began, since a batch decoding with replaced weights goes on with its own.
        let prefixes = RefCell::new(Prefixes::new((a.kv_cache_bytes / 8).min(PREFIX_BYTES)));
        let mut reloads = 0u64;
        let mut running: Option<Running<'_, B::InnerBackend>> = None;
        let mut senders_gone = false;
        loop {
            // Messages: wait for one when nothing decodes or waits, else take what has come.
            let idle = running.is_none() && waiting.is_empty();
            let mut first = if idle {
                match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                }
            } else {
                None
            };
            loop {
                let msg = match first.take() {
                    Some(msg) => msg,
                    None => match rx.try_recv() {
                        Ok(msg) => msg,
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            senders_gone = true;
                            break;
                        }
                    },
                };
                match msg {
                    Msg::Generate(w) => {
                        if let Some(ready) = prepare(&ckpt, (&end_of_turn, &mut constrainer), a.kv_cache_bytes, w) {
                            waiting.push_back(ready);
                        } else {
                            queued.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    Msg::Load { name, dir, inplace, reply } => {
                        // A batch decoding with the adapter replaced keeps its own copy.
                        prefixes.borrow_mut().forget(&prefix_key(&name, None));
                        reloads += 1;
                        let result = load_runtime(&ckpt.model, &mut weights, name, &dir, inplace);
                        // The served names change before the answer, so a client that heard 200 finds them.
                        publish(&models, &weights);
                        let _ = reply.send(result);
                    }
                    Msg::Unload { name, reply } => {
                        prefixes.borrow_mut().forget(&prefix_key(&name, None));
                        reloads += 1;
                        let result = if name == weights[0].0 {
                            Err(HttpError::bad(
                                format!("`{name}` is the base model; only adapters can be unloaded"),
                                None,
                            ))
                        } else if let Some(i) = weights.iter().position(|(n, _)| *n == name) {
                            weights.remove(i);
                            Ok(format!("Success: LoRA adapter '{name}' removed successfully."))
                        } else {
                            Err(not_served(&name, &names(&weights)))
                        };
                        publish(&models, &weights);
                        let _ = reply.send(result);
                    }
                }
            }
            // Requests join the batch in order while their model is the batch's and their KV
            // cache fits beside it; the first that cannot waits, and so do those behind it.
            while let Some(front) = waiting.front() {
                let Some((_, model)) = weights.iter().find(|(n, _)| *n == front.work.model) else {
                    // Unloaded after the request was checked.
                    let ready = waiting.pop_front().expect("front");
                    let _ = ready.work.reply.send(Event::Failed(not_served(&ready.work.model, &names(&weights))));
                    queued.fetch_sub(1, Ordering::SeqCst);
                    continue;
                };
                let batch = running.get_or_insert_with(|| {
                    let key = prefix_key(&front.work.model, Some(reloads));
                    Running::new(&front.work.model, &key, model, &ckpt.tokenizer, &prefixes)
                });
                if batch.batch.requests() > 0
                    && (batch.model != front.work.model
                        || !batch.batch.joinable()
                        || batch.kv_bytes_with(front, &ckpt.model.config) > a.kv_cache_bytes)
                {
                    break;
                }
                if batch.batch.requests() == 0 && batch.model != front.work.model {
                    let key = prefix_key(&front.work.model, Some(reloads));
                    *batch = Running::new(&front.work.model, &key, model, &ckpt.tokenizer, &prefixes);
                }
                let ready = waiting.pop_front().expect("front");
                if batch.admit(ready).is_err() {
                    queued.fetch_sub(1, Ordering::SeqCst);
                }
            }
            if let Some(batch) = running.as_mut() {
                let finished = batch.step(&ckpt.tokenizer, &stats);
                queued.fetch_sub(finished, Ordering::SeqCst);
                if batch.batch.requests() == 0 {
                    running = None;
                }
            }
            if senders_gone && running.is_none() && waiting.is_empty() {
                break;
            }
        }
        // Every sender is gone: the HTTP side has stopped, after a signal or an error.
        let stopped = http.join().map_err(|_| "the HTTP server thread panicked".to_string())?;
        eprintln!("nasc serve: stopped");
        stopped
    }
}

/// Makes the served names those of `weights`, for connection threads to check requests against.
fn publish<B: Backend>(models: &RwLock<Vec<String>>, weights: &[(String, Llama<B>)]) {
    if let Ok(mut m) = models.write() {
        *m = names(weights);
    }
}

fn names<B: Backend>(weights: &[(String, Llama<B>)]) -> Vec<String> {
    weights.iter().map(|(n, _)| n.clone()).collect()
}

fn not_served(name: &str, served: &[String]) -> HttpError {
    HttpError {
        status: 404,
        code: Some("model_not_found"),
        ..HttpError::bad(
            format!("The model `{}` does not exist. Served: {}", http::shown(name), served.join(", ")),
            Some("model"),
        )
    }
}

/// Loads the PEFT adapter in `dir` onto a clone of `base` as `name`: new, or replacing the adapter
/// of that name when `inplace`. The base's name cannot be taken.
fn load_runtime<B: Backend>(
    base: &Llama<B>,
    weights: &mut Vec<(String, Llama<B>)>,
    name: String,
    dir: &Path,
    inplace: bool,
) -> Result<String, HttpError> {
    if name == weights[0].0 {
        return Err(HttpError::bad(format!("`{name}` is the base model's name; pick another lora_name"), None));
    }
    let existing = weights.iter().position(|(n, _)| *n == name);
    if existing.is_some() && !inplace {
        return Err(HttpError::bad(
            format!("The lora adapter '{name}' has already been loaded; send \"load_inplace\": true to replace it."),
            Some("lora_name"),
        ));
    }
    let (model, _) = crate::lora::load_peft(base.clone(), dir).map_err(|e| {
        HttpError::bad(format!("cannot load the adapter from {}: {e}", dir.display()), Some("lora_path"))
    })?;
    match existing {
        Some(i) => weights[i].1 = model,
        None => weights.push((name.clone(), model)),
    }
    Ok(format!("Success: LoRA adapter '{name}' added successfully."))
}

/// A checked request, tokenised, with its grammar compiled and its KV cache's size known,
/// waiting to join the batch.
struct Ready {
    work: Work,
    ids: Vec<u32>,
    constraint: Option<Constraint>,
    /// Positions each of its rows' caches may grow to (doubling from 64, up to the context).
    positions: u64,
}

/// Checks `w` against the model (prompt and completion within the context, the KV cache within
/// the budget, a grammar that compiles), answering a failure itself (`None`).
fn prepare<B: Backend>(
    ckpt: &Checkpoint<B>,
    (end_of_turn, constrainer): (&[u32], &mut Option<Result<Constrainer, String>>),
    kv_budget: u64,
    mut w: Work,
) -> Option<Ready> {
    let fail = |w: Work, e: HttpError| {
        let _ = w.reply.send(Event::Failed(e));
        None
    };
    let ids = match &w.input {
        Input::Chat(messages) => match ckpt.tokenizer.encode_chat(&ckpt.template, messages, true) {
            Ok(ids) => Ok(ids),
            Err(crate::tokenizer::ChatEncodeError::Tokenizer(e)) => Err(e),
            Err(e) => return fail(w, HttpError::bad(crate::clipped(&e.to_string(), 300), Some("messages"))),
        },
        Input::Text(text) => ckpt.tokenizer.encode(text, true),
    };
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => return fail(w, HttpError::server(format!("tokenizer: {e}"))),
    };
    if matches!(w.input, Input::Chat(_)) {
        w.params.stop_token_ids = end_of_turn.to_vec();
    } else {
        w.params.stop_token_ids = ckpt.tokenizer.eos_id().into_iter().collect();
    }
    let context = ckpt.model.config.max_position_embeddings;
    let field = if matches!(w.input, Input::Chat(_)) { "messages" } else { "prompt" };
    if ids.is_empty() {
        return fail(w, HttpError::bad("the prompt is empty".into(), Some(field)));
    }
    // max_tokens == usize::MAX means "what the context leaves".
    if w.params.max_new_tokens == usize::MAX {
        w.params.max_new_tokens = context.saturating_sub(ids.len());
    }
    if ids.len() >= context || ids.len() + w.params.max_new_tokens > context {
        let msg = format!(
            "This model's maximum context length is {context} tokens. However, you requested {} tokens \
             ({} in the {field}, {} in the completion). Please reduce the length of the {field} or completion.",
            ids.len() + w.params.max_new_tokens,
            ids.len(),
            w.params.max_new_tokens
        );
        return fail(w, HttpError::bad(msg, Some(field)));
    }
    // The KV cache of every row, as it grows (doubling from 64 positions, up to the context).
    let c = &ckpt.model.config;
    let per_position = kv_bytes_per_position(c);
    let positions = (ids.len() + w.params.max_new_tokens).next_power_of_two().clamp(64, context.max(64)) as u64;
    let need = per_position.saturating_mul(positions).saturating_mul(w.params.n as u64);
    if need > kv_budget {
        let msg = format!(
            "n = {} replies of up to {} tokens ({} in the {field}, {} in the completion) need {} of KV cache; \
             this server's KV cache holds {} in all (--kv-cache-bytes). Ask for fewer replies or fewer tokens.",
            w.params.n,
            ids.len() + w.params.max_new_tokens,
            ids.len(),
            w.params.max_new_tokens,
            human_bytes(need),
            human_bytes(kv_budget)
        );
        return fail(w, HttpError::bad(msg, Some("n")));
    }
    // The grammar compiles before anything is sent, so a bad one is a 400 naming its line.
    let constraint = match &w.grammar {
        None => None,
        Some(grammar) => {
            let vocab = ckpt.model.config.vocab_size;
            let table = constrainer.get_or_insert_with(|| Constrainer::new(&ckpt.tokenizer, end_of_turn, vocab));
            let compiled = match table {
                Ok(table) => table.compile(grammar),
                Err(e) => return fail(w, HttpError::server(format!("constrained decoding: {e}"))),
            };
            match compiled {
                Ok(c) => Some(c),
                Err(e) => return fail(w, HttpError::bad(e, None)),
            }
        }
    };
    Some(Ready { work: w, ids, constraint, positions })
}

/// The batch decoding on the model thread: one served model's requests, each joining at a token
/// boundary and leaving when its replies end.
struct Running<'t, B: Backend> {
    /// The served name whose weights it decodes with.
    model: String,
    batch: Batch<'t, B>,
    /// What each request in it needs at its end: its reply channel, its rows and their positions.
    members: HashMap<RequestId, Member>,
}

struct Member {
    reply: async_mpsc::UnboundedSender<Event>,
    rows: u64,
    positions: u64,
}

impl<'t, B: Backend> Running<'t, B> {
    fn new(
        name: &str,
        key: &str,
        model: &Llama<B>,
        tokenizer: &'t crate::tokenizer::Tokenizer,
        prefixes: &'t RefCell<Prefixes<B>>,
    ) -> Self {
        let batch = Batch::new(model.clone(), tokenizer).reusing(prefixes, key);
        Running { model: name.to_string(), batch, members: HashMap::new() }
    }

    /// The KV cache the batch may grow to with `ready` in it: every row as long as the longest
    /// request's (the kernels' cache is one block per row).
    fn kv_bytes_with(&self, ready: &Ready, c: &crate::model::LlamaConfig) -> u64 {
        let per_position = kv_bytes_per_position(c);
        let rows = self.members.values().map(|m| m.rows).sum::<u64>() + ready.work.params.n as u64;
        let positions = self.members.values().map(|m| m.positions).max().unwrap_or(0).max(ready.positions);
        per_position.saturating_mul(rows).saturating_mul(positions)
    }

    /// Prefills `ready` and adds its rows; a failure is answered here (`Err`).
    fn admit(&mut self, ready: Ready) -> Result<(), ()> {
        let Ready { work: w, ids, constraint, positions } = ready;
        if w.reply.send(Event::Started(ids.len())).is_err() {
            return Err(());
        }
        let (pieces, gone) = (w.reply.clone(), w.reply.clone());
        let stream = w.stream;
        let on_text = move |i: usize, piece: &str| {
            if stream && !piece.is_empty() {
                let _ = pieces.send(Event::Piece(i, piece.to_string()));
            }
        };
        // A client that has gone (its stream dropped, its connection closed) ends its replies at
        // the next token.
        let client_waits = move || !gone.is_closed();
        match self.batch.add(&ids, w.params.clone(), constraint.as_ref(), on_text, client_waits) {
            Ok(id) => {
                let member = Member { reply: w.reply, rows: w.params.n as u64, positions };
                self.members.insert(id, member);
                Ok(())
            }
            Err(e) => {
                let _ = w.reply.send(Event::Failed(model_error(e)));
                Err(())
            }
        }
    }

    /// One token for every row; answers the requests that finished and returns how many did. A
    /// model error fails every request in the batch.
    fn step(&mut self, tokenizer: &crate::tokenizer::Tokenizer, stats: &Stats) -> usize {
        let rows = self.batch.rows() as u64;
        if rows > 0 {
            stats.steps.fetch_add(1, Ordering::SeqCst);
            stats.rows.fetch_add(rows, Ordering::SeqCst);
        }
        let finished = match self.batch.step() {
            Ok(finished) => finished,
            Err(e) => {
                let message = e.to_string();
                let n = self.members.len();
                for (_, m) in self.members.drain() {
                    stats.generations.fetch_add(1, Ordering::SeqCst);
                    let _ = m.reply.send(Event::Failed(HttpError::server(message.clone())));
                }
                self.batch = self.batch.emptied();
                return n;
            }
        };
        let n = finished.len();
        for (id, g) in finished {
            let Some(m) = self.members.remove(&id) else { continue };
            stats.generations.fetch_add(1, Ordering::SeqCst);
            if m.reply.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            stats.tokens.fetch_add(g.generated_tokens() as u64, Ordering::SeqCst);
            let mut texts = TokenTexts::new();
            for t in g.completions.iter().flat_map(|c| &c.logprobs) {
                for id in std::iter::once(t.token).chain(t.top.iter().map(|&(id, _)| id)) {
                    texts.entry(id).or_insert_with(|| tokenizer.decode(&[id], false).unwrap_or_default());
                }
            }
            let _ = m.reply.send(Event::Done(g, texts));
        }
        n
    }
}

/// The most bytes of keys and values kept for prefix reuse ([`Prefixes`]), whatever the KV
/// budget: an eighth of it up to this.
const PREFIX_BYTES: u64 = 256 << 20;

/// The key of a served model's prefills: its name and the number of adapter loads and unloads
/// before its batch began (`None`: the start every key of that name shares).
fn prefix_key(name: &str, reloads: Option<u64>) -> String {
    match reloads {
        Some(n) => format!("{name}\u{0}{n}"),
        None => format!("{name}\u{0}"),
    }
}

/// Bytes of KV cache one position of one row takes: keys and values of every layer, in f32.
fn kv_bytes_per_position(c: &crate::model::LlamaConfig) -> u64 {
    (c.n_layers * 2 * c.n_kv_heads * c.head_dim * std::mem::size_of::<f32>()) as u64
}

/// A model error as the answer to its request.
fn model_error(e: ModelError) -> HttpError {
    match e {
        ModelError::Input { what } => HttpError::bad(what, None),
        e => HttpError::server(e.to_string()),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An error answered with the OpenAI protocol's error object.
#[derive(Debug)]
struct HttpError {
    status: u16,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl HttpError {
    fn bad(message: String, param: Option<&'static str>) -> Self {
        HttpError { status: 400, message, kind: "invalid_request_error", param, code: None }
    }
    fn server(message: String) -> Self {
        HttpError { status: 500, message, kind: "server_error", param: None, code: None }
    }
    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Checks a load or unload request and has the model thread carry it out.
/// The files of a PEFT adapter folder that loading reads.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

async fn adapter_request(body: &[u8], load: bool, info: &Info) -> Result<String, HttpError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| HttpError::bad(format!("the body is not valid JSON: {e}"), None))?;
    let field = |key: &'static str| {
        v.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| HttpError::bad(format!("'{key}' is required and must be a non-empty string"), Some(key)))
    };
    let Some(root) = &info.lora_root else {
        return Err(HttpError {
            status: 403,
            ..HttpError::bad(
                "loading adapters while serving is off; start nasc serve with --allow-runtime-lora --lora-root DIR"
                    .into(),
                None,
            )
        });
    };
    let name = field("lora_name")?;
    let (tx, rx) = oneshot::channel();
    let msg = if load {
        // Only a folder under the root, after links are resolved; outside it, the same answer
        // whether or not the path exists.
        // The adapter's files are resolved too: a link inside the folder to a file outside the
        // root is refused like a path outside it.
        let asked = field("lora_path")?;
        let under = |p: &std::path::Path| std::fs::canonicalize(p).ok().filter(|p| p.starts_with(root));
        let dir = under(asked.as_ref())
            .filter(|d| d.is_dir())
            .filter(|d| ADAPTER_FILES.iter().all(|f| under(&d.join(f)).is_some_and(|p| p.is_file())))
            .ok_or_else(|| {
                HttpError::bad(
                    format!(
                        "lora_path must be an adapter folder under the server's LoRA root {}, holding {} as files \
                         inside the root",
                        root.display(),
                        ADAPTER_FILES.join(" and ")
                    ),
                    Some("lora_path"),
                )
            })?;
        let inplace = match v.get("load_inplace") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(HttpError::bad("'load_inplace' must be a boolean".into(), Some("load_inplace"))),
        };
        Msg::Load { name, dir, inplace, reply: tx }
    } else {
        Msg::Unload { name, reply: tx }
    };
    info.work.send(msg).map_err(|_| HttpError::server("the model thread has stopped".into()))?;
    rx.await.map_err(|_| HttpError::server("the model thread has stopped".into()))?
}

fn models(info: &Info) -> Value {
    let names = info.names();
    let data: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"id": m, "object": "model", "created": info.created, "owned_by": "nasc",
                   "root": names[0], "parent": if i == 0 { Value::Null } else { json!(names[0]) },
                   "max_model_len": info.context})
        })
        .collect();
    json!({"object": "list", "data": data})
}

/// A request's fields, each checked with an error naming it.
struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn number(&self, key: &'static str, default: f64) -> Result<f64, HttpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| HttpError::bad(format!("'{key}' must be a number"), Some(key))),
        }
    }
    fn integer(&self, key: &'static str) -> Result<Option<i64>, HttpError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_u64().map(|u| u.min(i64::MAX as u64) as i64))
                .map(Some)
                .ok_or_else(|| HttpError::bad(format!("'{key}' must be an integer"), Some(key))),
        }
    }
    fn text(&self, v: &Value, key: &'static str) -> Result<String, HttpError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            // Content parts: [{"type": "text", "text": "..."}].
            Value::Array(parts) => parts
                .iter()
                .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => Ok(t),
                    _ => Err(HttpError::bad(format!("'{key}' may hold only text parts"), Some(key))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|parts| parts.concat()),
            _ => Err(HttpError::bad(format!("'{key}' must be a string"), Some(key))),
        }
    }
}

/// The fields `parse` reads, and those that change nothing in a reply (who asked, for what).
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "grammar",
    "guided_grammar",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_decoding_backend",
    "structured_outputs",
    "response_format",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

/// When a field nasc does not implement may still come: at the value that asks for nothing.
type Neutral = fn(&Value, &serde_json::Map<String, Value>) -> bool;

/// The fields of OpenAI's and vLLM's requests that nasc does not implement, each with its
/// neutral values.
const UNSUPPORTED: &[(&str, Neutral)] = &[
    ("echo", |v, _| matches!(v, Value::Null | Value::Bool(false))),
    ("ignore_eos", |v, _| matches!(v, Value::Null | Value::Bool(false))),
    ("parallel_tool_calls", |v, _| matches!(v, Value::Null | Value::Bool(false))),
    ("best_of", |v, obj| v.is_null() || v.as_i64() == Some(1) || obj.get("n") == Some(v)),
    ("suffix", |v, _| v.is_null() || v.as_str() == Some("")),
    ("tools", |v, _| v.is_null() || v.as_array().is_some_and(Vec::is_empty)),
    ("functions", |v, _| v.is_null() || v.as_array().is_some_and(Vec::is_empty)),
    ("tool_choice", |v, _| v.is_null() || v.as_str() == Some("none")),
    ("function_call", |v, _| v.is_null() || v.as_str() == Some("none")),
    ("logit_bias", |v, _| v.is_null() || v.as_object().is_some_and(serde_json::Map::is_empty)),
    ("repetition_penalty", |v, _| v.is_null() || v.as_f64() == Some(1.0)),
    ("min_p", |v, _| v.is_null() || v.as_f64() == Some(0.0)),
];

/// Refuses, by name, a field nasc does not implement, unless it holds the value that asks for
/// nothing (`logprobs: false`, `echo: false`, `best_of: 1`, `tools: []`, ...), and any field it
/// does not know: a client must never get a reply that silently ignored what it asked.
fn unsupported_fields(obj: &serde_json::Map<String, Value>, chat: bool) -> Result<(), HttpError> {
    // Each route reads its own input: a chat request's `prompt`, or a completion's `messages`,
    // would be ignored.
    let (other, route) = if chat { ("prompt", "/v1/completions") } else { ("messages", "/v1/chat/completions") };
    for (key, v) in obj {
        if key == other {
            return Err(HttpError::bad(
                format!("'{key}' belongs to {route}; this route does not read it"),
                Some(other),
            ));
        }
        if FIELDS.contains(&key.as_str()) {
            continue;
        }
        match UNSUPPORTED.iter().find(|(name, _)| name == key) {
            Some((_, neutral)) if neutral(v, obj) => {}
            Some((name, _)) => {
                return Err(HttpError::bad(
                    format!("'{name}' is not supported by nasc serve; remove it or give it its neutral value"),
                    Some(name),
                ))
            }
            None => {
                return Err(HttpError::bad(
                    format!(
                        "'{}' is not a field nasc serve knows; remove it (see `nasc serve --help`)",
                        http::shown(key)
                    ),
                    None,
                ));
            }
        }
    }
    Ok(())
}

/// Checks a request body and turns it into work for the model thread.
fn parse(body: &[u8], chat: bool, info: &Info) -> Result<Work, HttpError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| HttpError::bad(format!("the body is not valid JSON: {e}"), None))?;
    let Some(obj) = v.as_object() else {
        return Err(HttpError::bad("the body must be a JSON object".into(), None));
    };
    unsupported_fields(obj, chat)?;
    let f = Fields(obj);
    let served = info.names();
    let model = match f.get("model") {
        None => served[0].clone(),
        Some(Value::String(name)) if served.contains(name) => name.clone(),
        Some(Value::String(name)) => return Err(not_served(name, &served)),
        Some(_) => return Err(HttpError::bad("'model' must be a string".into(), Some("model"))),
    };
    let input = if chat {
        let Some(messages) = f.get("messages") else {
            return Err(HttpError::bad("'messages' is required".into(), Some("messages")));
        };
        let Some(list) = messages.as_array().filter(|l| !l.is_empty()) else {
            return Err(HttpError::bad("'messages' must be a non-empty list".into(), Some("messages")));
        };
        let mut out = vec![];
        for m in list {
            let role = m.get("role").and_then(Value::as_str);
            let Some(role) = role.filter(|r| ["system", "user", "assistant", "developer", "tool"].contains(r)) else {
                return Err(HttpError::bad(
                    "each message needs a 'role': system, user, assistant, developer or tool".into(),
                    Some("messages"),
                ));
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(c) => f.text(c, "messages")?,
            };
            out.push(Message::new(role, content));
        }
        Input::Chat(out)
    } else {
        match f.get("prompt") {
            None => return Err(HttpError::bad("'prompt' is required".into(), Some("prompt"))),
            Some(Value::String(s)) => Input::Text(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Input::Text(a[0].as_str().unwrap_or("").into())
            }
            Some(_) => {
                return Err(HttpError::bad("'prompt' must be a string (or a list of one)".into(), Some("prompt")))
            }
        }
    };
    let temperature = f.number("temperature", 1.0)?;
    if !(0.0..=100.0).contains(&temperature) {
        return Err(HttpError::bad(format!("temperature {temperature} must be in [0, 100]"), Some("temperature")));
    }
    let top_p = f.number("top_p", 1.0)?;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(HttpError::bad(format!("top_p {top_p} must be in (0, 1]"), Some("top_p")));
    }
    let top_k = match f.integer("top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => return Err(HttpError::bad(format!("top_k {k} must be -1, 0 (all) or positive"), Some("top_k"))),
    };
    let n = f.integer("n")?.unwrap_or(1);
    if n < 1 || n as u64 > info.max_batch as u64 {
        return Err(HttpError::bad(format!("n {n} must be between 1 and {}", info.max_batch), Some("n")));
    }
    let (key, max_tokens) = match f.integer("max_completion_tokens")? {
        Some(m) => ("max_completion_tokens", Some(m)),
        None => ("max_tokens", f.integer("max_tokens")?),
    };
    let max_new_tokens = match max_tokens {
        // Chat replies may fill the context, as in vLLM; completions default to OpenAI's 16 tokens.
        None if chat => usize::MAX,
        None => 16,
        Some(m) if m < 1 => return Err(HttpError::bad(format!("{key} {m} must be at least 1"), Some(key))),
        Some(m) if m as u64 > info.context as u64 => {
            return Err(HttpError::bad(
                format!("{key} {m} is more than the model's context length of {} tokens", info.context),
                Some(key),
            ))
        }
        Some(m) => m as usize,
    };
    let stop = match f.get("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(String::from).collect()
        }
        Some(_) => return Err(HttpError::bad("'stop' must be a string or a list of strings".into(), Some("stop"))),
    };
    if stop.iter().any(String::is_empty) {
        return Err(HttpError::bad("a stop string must not be empty".into(), Some("stop")));
    }
    let seed = match f.integer("seed")? {
        Some(s) => s as u64,
        None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
    };
    let stream = match f.get("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(HttpError::bad("'stream' must be true or false".into(), Some("stream"))),
    };
    let mut penalties = [0f32; 2];
    for (slot, key) in penalties.iter_mut().zip(["frequency_penalty", "presence_penalty"]) {
        let v = f.number(key, 0.0)?;
        if !(-2.0..=2.0).contains(&v) {
            return Err(HttpError::bad(format!("{key} {v} must be in [-2, 2]"), Some(key)));
        }
        *slot = v as f32;
    }
    // Chat: `logprobs: true` and `top_logprobs` 0 to 20; completions: `logprobs` 0 to 5, the
    // number of alternatives. Given with whole answers only: a streamed piece of text is not
    // one token.
    let logprobs = if chat {
        let on = match f.get("logprobs") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(HttpError::bad("'logprobs' must be true or false".into(), Some("logprobs"))),
        };
        let top = f.integer("top_logprobs")?;
        match (on, top) {
            (_, Some(k)) if !(0..=20).contains(&k) => {
                return Err(HttpError::bad(format!("top_logprobs {k} must be between 0 and 20"), Some("top_logprobs")))
            }
            (false, Some(k)) if k > 0 => {
                return Err(HttpError::bad("top_logprobs needs \"logprobs\": true".into(), Some("top_logprobs")))
            }
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, _) => None,
        }
    } else {
        if f.get("top_logprobs").is_some() {
            return Err(HttpError::bad(
                "top_logprobs is a chat field; completions take \"logprobs\": N alternatives".into(),
                Some("top_logprobs"),
            ));
        }
        match f.get("logprobs") {
            None | Some(Value::Bool(false)) => None,
            Some(v) => match v.as_i64() {
                Some(k) if (0..=5).contains(&k) => Some(k as usize),
                _ => return Err(HttpError::bad("'logprobs' must be an integer from 0 to 5".into(), Some("logprobs"))),
            },
        }
    };
    if logprobs.is_some() && stream {
        return Err(HttpError::bad(
            "logprobs come with whole answers only; set \"stream\": false".into(),
            Some("logprobs"),
        ));
    }
    let params = SamplingParams {
        logprobs,
        frequency_penalty: penalties[0],
        presence_penalty: penalties[1],
        temperature: temperature as f32,
        top_k,
        // Below f32's range (1e-50) it is the nucleus of one token still, not 0.
        top_p: (top_p as f32).max(f32::MIN_POSITIVE),
        max_new_tokens,
        stop,
        stop_token_ids: vec![],
        seed,
        n: n as usize,
    };
    let (reply, _) = async_mpsc::unbounded_channel();
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(HttpError::bad("'include_usage' must be true or false".into(), Some("stream_options")))
            }
        },
        Some(_) => return Err(HttpError::bad("'stream_options' must be an object".into(), Some("stream_options"))),
    };
    let grammar = constraint(&f)?;
    Ok(Work { model, input, params, grammar, stream, include_usage, reply })
}

/// The request's constraint on its replies, in any of the ways OpenAI-compatible servers take one:
/// vLLM's `structured_outputs` (`grammar`, `json`, `regex`, `choice`) and its older `guided_*`
/// fields, llama.cpp's `grammar`, and `response_format`. A grammar text may be Lark (llguidance's,
/// or llama.cpp's `%llguidance` form) or GBNF; a field nasc does not implement is refused by name.
fn constraint(f: &Fields<'_>) -> Result<Option<Grammar>, HttpError> {
    let text = |v: &Value, key: &'static str| match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(HttpError::bad(format!("'{key}' must be a non-empty string"), Some(key))),
    };
    let schema = |v: &Value, key: &'static str| match v {
        Value::Object(_) | Value::Bool(_) => Ok(Grammar::JsonSchema(v.clone())),
        Value::String(s) => serde_json::from_str(s)
            .map(Grammar::JsonSchema)
            .map_err(|e| HttpError::bad(format!("'{key}' is not a JSON schema: {e}"), Some(key))),
        _ => Err(HttpError::bad(format!("'{key}' must be a JSON schema"), Some(key))),
    };
    let choice = |v: &Value, key: &'static str| match v {
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => {
            Ok(Grammar::Choice(a.iter().filter_map(Value::as_str).map(String::from).collect()))
        }
        _ => Err(HttpError::bad(format!("'{key}' must be a non-empty list of strings"), Some(key))),
    };
    let mut found: Vec<(&'static str, Grammar)> = Vec::new();
    if let Some(v) = f.get("grammar") {
        found.push(("grammar", Grammar::detect(&text(v, "grammar")?)));
    }
    if let Some(v) = f.get("guided_grammar") {
        found.push(("guided_grammar", Grammar::detect(&text(v, "guided_grammar")?)));
    }
    if let Some(v) = f.get("guided_json") {
        found.push(("guided_json", schema(v, "guided_json")?));
    }
    if let Some(v) = f.get("guided_regex") {
        found.push(("guided_regex", Grammar::Regex(text(v, "guided_regex")?)));
    }
    if let Some(v) = f.get("guided_choice") {
        found.push(("guided_choice", choice(v, "guided_choice")?));
    }
    if let Some(v) = f.get("guided_decoding_backend") {
        if !matches!(v.as_str(), Some("auto" | "guidance" | "llguidance")) {
            return Err(HttpError::bad(
                "'guided_decoding_backend' may only be auto or guidance: nasc constrains with llguidance".into(),
                Some("guided_decoding_backend"),
            ));
        }
    }
    match f.get("structured_outputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                let key = "structured_outputs";
                match k.as_str() {
                    "grammar" => found.push((key, Grammar::detect(&text(v, key)?))),
                    "json" => found.push((key, schema(v, key)?)),
                    "regex" => found.push((key, Grammar::Regex(text(v, key)?))),
                    "choice" => found.push((key, choice(v, key)?)),
                    "backend" if matches!(v.as_str(), Some("auto" | "guidance" | "llguidance")) => {}
                    other => {
                        return Err(HttpError::bad(
                            format!(
                                "structured_outputs.{other} is not supported by nasc serve; use grammar (Lark or \
                                 GBNF), json, regex or choice"
                            ),
                            Some(key),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(HttpError::bad("'structured_outputs' must be an object".into(), Some("structured_outputs")))
        }
    }
    match f.get("response_format") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let key = "response_format";
            match v.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some("json_object") => found.push((key, Grammar::JsonSchema(json!({"type": "object"})))),
                Some("json_schema") => match v.get("json_schema").and_then(|j| j.get("schema")) {
                    Some(s) => found.push((key, schema(s, key)?)),
                    None => {
                        return Err(HttpError::bad(
                            "response_format of type json_schema needs json_schema.schema".into(),
                            Some(key),
                        ))
                    }
                },
                _ => {
                    return Err(HttpError::bad(
                        "response_format.type must be text, json_object or json_schema".into(),
                        Some(key),
                    ))
                }
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, g)| g)),
        _ => {
            let names: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
            Err(HttpError::bad(
                format!("only one constraint may be given, and this request has {}", names.join(", ")),
                Some(found[1].0),
            ))
        }
    }
}

fn request_id(chat: bool) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos:x}", if chat { "chatcmpl" } else { "cmpl" })
}
