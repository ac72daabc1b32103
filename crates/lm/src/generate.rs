//! Text generation: prefill the prompt once, then decode one token per step for every stream with a KV cache.
//! It must be deterministic given the seed, and must not run the model for streams that have finished.

//! Sampling replies from a [`Llama`].
//!
//! `n` replies to one prompt share its prefill: the prompt runs once, its
//! cache is repeated to `n` rows, and the streams decode in one batch. A
//! stream that finishes (a stop token, a stop string, `max_new_tokens`)
//! leaves the batch, so the rest run at its smaller size. Each stream draws
//! from its own generator, seeded from `seed` and the stream's index, so its
//! reply does not depend on how many others run beside it. A [`Batch`] runs
//! several requests so (continuous batching): each joins the rows decoding
//! once its prompt is prefilled.

use crate::constrain::{Constraint, Step};
use crate::model::{KvCache, Llama, ModelError};
use crate::tokenizer::Tokenizer;
use burn::tensor::backend::Backend;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

/// The most alternatives a token's log-probability comes with (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How tokens are chosen and when a reply ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least `top_p`; 1 keeps all.
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// A reply ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// A reply ends when it samples one of these (end of turn, end of text).
    pub stop_token_ids: Vec<u32>,
    pub seed: u64,
    /// Replies to sample from the one prompt.
    pub n: usize,
    /// Subtracted from a token's logit once per time the reply has drawn it (OpenAI's
    /// `frequency_penalty`, in [-2, 2]).
    pub frequency_penalty: f32,
    /// Subtracted from the logit of every token the reply has drawn (`presence_penalty`).
    pub presence_penalty: f32,
    /// Each drawn token's log-probability under the model (its raw distribution, before
    /// temperature, penalties and grammars), with this many most likely alternatives (at most
    /// [`MAX_TOP_LOGPROBS`]); `None`: none.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 256,
            stop: vec![],
            stop_token_ids: vec![],
            seed: 0,
            n: 1,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges a user could get wrong.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Input { what });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be 0 (greedy) or positive", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if self.n == 0 {
            return bad("n must be at least 1".into());
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return bad(format!("top logprobs {} must be at most {MAX_TOP_LOGPROBS}", self.logprobs.unwrap_or(0)));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("a stop string must not be empty".into());
        }
        for (name, v) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} {v} must be in [-2, 2]"));
            }
        }
        Ok(())
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string, or the grammar is complete.
    Stop,
    /// `max_new_tokens`, or the model's context length.
    Length,
    /// The grammar allows no further token, and the reply is not a whole sentence of it.
    NoAllowedToken,
}

impl FinishReason {
    /// The OpenAI protocol's name for it (`no_allowed_token` is nasc's own).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::NoAllowedToken => "no_allowed_token",
        }
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Every sampled token, the stop token included.
    pub tokens: Vec<u32>,
    /// The reply's text, without the stop token or stop string and what follows it.
    pub text: String,
    pub finish: FinishReason,
    /// One per token of `tokens` when `SamplingParams::logprobs` asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

/// A drawn token's natural-log probability, and the most likely tokens at its place with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A row's distribution as the model gave it, kept for log-probabilities.
struct RawRow {
    norm: f32,
    top: Vec<(u32, f32)>,
    logits: Vec<f32>,
}

/// The log-probabilities of a row of logits: each token's is its logit less this.
fn log_normaliser(row: &[f32]) -> f32 {
    let max = row.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    max + row.iter().filter(|v| !v.is_nan()).map(|v| (v - max).exp()).sum::<f32>().ln()
}

/// The `k` tokens of `row` with the highest logits (ties by id), with their log-probabilities.
fn top_logprobs(row: &[f32], k: usize, norm: f32) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (id, &v) in row.iter().enumerate() {
        if v.is_nan() || top.len() == k && v <= top[k - 1].1 {
            continue;
        }
        let at = top.partition_point(|&(_, w)| w >= v);
        top.insert(at, (id as u32, v));
        top.truncate(k);
    }
    top.into_iter().map(|(id, v)| (id, v - norm)).collect()
}

/// All replies to one prompt, with timings.
#[derive(Debug, Clone)]
pub struct Generation {
    pub completions: Vec<Completion>,
    pub prompt_tokens: usize,
    /// The prompt's first tokens whose keys and values came from an earlier prefill
    /// ([`Prefixes`]) instead of being computed again.
    pub cached_prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Generation {
    /// Tokens sampled, all streams together.
    pub fn generated_tokens(&self) -> usize {
        self.completions.iter().map(|c| c.tokens.len()).sum()
    }

    /// Sampled tokens per second of wall time, prefill included.
    pub fn tokens_per_second(&self) -> f64 {
        self.generated_tokens() as f64 / (self.prefill_seconds + self.decode_seconds).max(1e-9)
    }
}

/// One stream's state while it decodes.
struct Stream {
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    /// Bytes of text already handed to the caller.
    emitted: usize,
    done: Option<(FinishReason, String)>,
    logprobs: Vec<TokenLogprob>,
}

/// Samples `params.n` replies to `prompt` (token ids, already templated). `on_text(stream,
/// piece)` receives each stream's text as it grows; text that could still turn into a stop
/// string is held back until it cannot.
///
/// On the CPU backend the model's kernels run it, for one stream as for many, since they are
/// faster than Burn's ops for both (see BENCHMARKS.md); a model whose [`crate::model::Kernels`]
/// say `cpu: false` takes Burn's ops.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    on_text: impl FnMut(usize, &str),
) -> Result<Generation, ModelError> {
    generate_constrained(model, tokenizer, prompt, params, None, on_text)
}

/// [`generate`], with every reply held to `grammar` when one is given: each reply starts at the
/// grammar's start (its own copy), may only draw tokens the grammar allows next, and ends when the
/// grammar is complete (`stop`) or allows nothing more (`no_allowed_token`), never by looping.
pub fn generate_constrained<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    grammar: Option<&Constraint>,
    on_text: impl FnMut(usize, &str),
) -> Result<Generation, ModelError> {
    generate_until(model, tokenizer, prompt, params, grammar, on_text, || true)
}

/// [`generate_constrained`], asking `go_on` before each token: once it says no (the client that
/// asked has gone), the replies still running end there, with finish reason `length`.
pub fn generate_until<'a, B: Backend>(
    model: &Llama<B>,
    tokenizer: &'a Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    grammar: Option<&Constraint>,
    on_text: impl FnMut(usize, &str) + 'a,
    go_on: impl Fn() -> bool + 'a,
) -> Result<Generation, ModelError> {
    let mut batch = Batch::new(model.clone(), tokenizer);
    let id = batch.add(prompt, params.clone(), grammar, on_text, go_on)?;
    loop {
        if let Some((_, generation)) = batch.step()?.into_iter().find(|(done, _)| *done == id) {
            return Ok(generation);
        }
    }
}

/// Which request of a [`Batch`] a result belongs to.
pub type RequestId = u64;

/// Prefills of recent prompts, kept so that a prompt that begins as one of them does (a chat's
/// system prompt and template, the search's instructions, a retry of the same request) computes
/// only the rest: vLLM's automatic prefix caching, for the CPU kernels' caches. Entries are
/// keyed by the model (a served name) and let go, least recently used first, past a budget of
/// bytes; an entry larger than the budget is not kept.
pub struct Prefixes<B: Backend> {
    /// Most recently used first.
    entries: std::collections::VecDeque<Prefix<B>>,
    budget: u64,
}

struct Prefix<B: Backend> {
    key: String,
    tokens: Vec<u32>,
    cache: KvCache<B>,
}

impl<B: Backend> Prefixes<B> {
    /// An empty store that holds at most `budget` bytes of keys and values.
    pub fn new(budget: u64) -> Self {
        Prefixes { entries: Default::default(), budget }
    }

    /// Bytes the kept prefills hold.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }

    /// Lets go of every prefill kept under a key that starts with `start` (their weights
    /// changed or went).
    pub fn forget(&mut self, start: &str) {
        self.entries.retain(|e| !e.key.starts_with(start));
    }

    /// The cache of the longest kept start of `prompt` under `key`, and its length: never the
    /// whole prompt, whose last position must run to give the first logits.
    fn longest(&mut self, key: &str, prompt: &[u32]) -> Option<(KvCache<B>, usize)> {
        let shared = |e: &Prefix<B>| e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.key == key)
            .map(|(i, e)| (i, shared(e).min(prompt.len() - 1)))
            .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)))?;
        if len == 0 {
            return None;
        }
        let entry = self.entries.remove(i)?;
        let cache = entry.cache.prefix(len);
        self.entries.push_front(entry);
        cache.map(|c| (c, len))
    }

    /// Keeps `cache`, the prefill of `prompt` (one row), in place of any kept prefill it extends.
    fn keep(&mut self, key: &str, prompt: &[u32], cache: &KvCache<B>) {
        if self.entries.iter().any(|e| e.key == key && e.tokens == prompt) {
            // Kept already (and made the most recent when it was found).
            return;
        }
        let Some(copy) = cache.prefix(prompt.len()) else { return };
        if copy.bytes() > self.budget {
            return;
        }
        self.entries.retain(|e| e.key != key || !prompt.starts_with(&e.tokens));
        self.entries.push_front(Prefix { key: key.to_string(), tokens: prompt.to_vec(), cache: copy });
        while self.bytes() > self.budget {
            self.entries.pop_back();
        }
    }
}

/// Requests decoding together, as a server runs them (continuous batching): a request's prompt
/// is prefilled when it is [added](Batch::add) (past [`PREFILL_CHUNK`] tokens, a chunk per
/// step), its rows join the running ones at the next token boundary, and each row leaves once
/// its reply ends, so that every [step](Batch::step) runs one pass of the model for all live
/// replies of all requests.
///
/// On the CPU kernels each row keeps its own cache length and its own positions, and every row
/// computes what it computes alone: a request's replies do not depend on what decodes beside
/// it. Burn's own passes keep one length for all rows, so there a request joins only an empty
/// batch ([`Batch::joinable`]).
pub struct Batch<'a, B: Backend> {
    model: Llama<B>,
    tokenizer: &'a Tokenizer,
    cache: Option<KvCache<B>>,
    /// The live replies, aligned with the cache's rows, `logits` and `grammars`.
    rows: Vec<Row>,
    logits: Vec<Vec<f32>>,
    grammars: Vec<Option<Constraint>>,
    requests: std::collections::HashMap<RequestId, Request>,
    callers: std::collections::HashMap<RequestId, Caller<'a>>,
    next: RequestId,
    /// Earlier prefills that a new request's prompt may start from, and this model's key in them.
    prefixes: Option<(&'a std::cell::RefCell<Prefixes<B>>, String)>,
    /// Prompts longer than `prefill_chunk` tokens, prefilled a chunk per step, first come first.
    prefilling: std::collections::VecDeque<Prefilling<B>>,
    prefill_chunk: usize,
}

/// Tokens of a prompt prefilled in one pass of the model; a longer prompt goes a chunk per
/// [`Batch::step`], between the steps of the rows decoding, so that one long prompt neither
/// stalls the replies beside it for its whole prefill nor outlives its client by more than a
/// chunk.
pub const PREFILL_CHUNK: usize = 256;

/// A request whose prompt is still being prefilled.
struct Prefilling<B: Backend> {
    id: RequestId,
    prompt: Vec<u32>,
    /// Tokens of the prompt in `cache` so far.
    done: usize,
    cache: KvCache<B>,
    params: SamplingParams,
    grammar: Option<Constraint>,
    started: Instant,
}

/// A live reply: which request, which of its streams.
struct Row {
    request: RequestId,
    stream: usize,
    params: std::sync::Arc<SamplingParams>,
}

/// A request's replies while they decode.
struct Request {
    streams: Vec<Stream>,
    prompt_tokens: usize,
    cached_tokens: usize,
    prefill_seconds: f64,
    started: Instant,
}

/// Receives a request's text, stream by stream, as it settles.
type OnText<'a> = Box<dyn FnMut(usize, &str) + 'a>;

/// Where a request's text goes, and whether its caller still waits.
struct Caller<'a> {
    on_text: OnText<'a>,
    go_on: Box<dyn Fn() -> bool + 'a>,
}

impl<'a, B: Backend> Batch<'a, B> {
    /// An empty batch of `model` (a clone shares the weights) with its tokenizer.
    pub fn new(model: Llama<B>, tokenizer: &'a Tokenizer) -> Self {
        Batch {
            model,
            tokenizer,
            cache: None,
            rows: Vec::new(),
            logits: Vec::new(),
            grammars: Vec::new(),
            requests: Default::default(),
            callers: Default::default(),
            next: 0,
            prefixes: None,
            prefilling: Default::default(),
            prefill_chunk: PREFILL_CHUNK,
        }
    }

    /// The batch, prefilling prompts `chunk` tokens per step ([`PREFILL_CHUNK`] unless set).
    pub fn with_prefill_chunk(mut self, chunk: usize) -> Self {
        self.prefill_chunk = chunk.max(1);
        self
    }

    /// The batch, its requests' prefills kept in `store` under `key` (the served model's name:
    /// keys and values hold only for the weights that made them) and each prompt started from
    /// the longest prefix kept there.
    pub fn reusing(mut self, store: &'a std::cell::RefCell<Prefixes<B>>, key: &str) -> Self {
        self.prefixes = Some((store, key.to_string()));
        self
    }

    /// An empty batch with this one's model, tokenizer and kept prefills.
    pub fn emptied(&self) -> Self {
        Batch {
            prefixes: self.prefixes.clone(),
            prefill_chunk: self.prefill_chunk,
            ..Batch::new(self.model.clone(), self.tokenizer)
        }
    }

    /// Whether another request may [`add`](Self::add) now: always on the CPU kernels, else only
    /// when nothing decodes.
    pub fn joinable(&self) -> bool {
        self.rows.is_empty() || self.cache.as_ref().is_none_or(KvCache::joinable)
    }

    /// The model it decodes with.
    pub fn model(&self) -> &Llama<B> {
        &self.model
    }

    /// The tokenizer its replies are decoded with.
    pub fn tokenizer(&self) -> &'a Tokenizer {
        self.tokenizer
    }

    /// Requests added and not yet returned by [`step`](Self::step).
    pub fn requests(&self) -> usize {
        self.requests.len()
    }

    /// Replies decoding, all requests together.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Prefills `prompt` (token ids, already templated) and adds its `params.n` replies to the
    /// rows decoding, each held to its own copy of `grammar` when one is given. `on_text(stream,
    /// piece)` receives each reply's text as it grows (text that could still begin a stop string
    /// is held back until it cannot); once `go_on` says no, the request's replies end at the next
    /// step with finish reason `length`. Errors: bad parameters or prompt, a batch that is not
    /// [`joinable`](Self::joinable), and the model's own.
    pub fn add(
        &mut self,
        prompt: &[u32],
        params: SamplingParams,
        grammar: Option<&Constraint>,
        on_text: impl FnMut(usize, &str) + 'a,
        go_on: impl Fn() -> bool + 'a,
    ) -> Result<RequestId, ModelError> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::Input { what: "the prompt has no tokens".into() });
        }
        let context = self.model.config.max_position_embeddings;
        if prompt.len() >= context {
            return Err(ModelError::Input {
                what: format!("the prompt has {} tokens; the model's context holds {context}", prompt.len()),
            });
        }
        if !self.joinable() {
            return Err(ModelError::Input {
                what: "this backend decodes one request at a time; wait until the batch is empty".into(),
            });
        }
        let start = Instant::now();
        let (cache, reused) = match self.prefixes {
            Some((store, ref key)) => store.borrow_mut().longest(key, prompt),
            None => None,
        }
        .unwrap_or_else(|| (KvCache::new(&self.model.config), 0));
        let id = self.next;
        self.next += 1;
        let streams: Vec<Stream> = (0..params.n)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
                rng.set_stream(i as u64);
                Stream { rng, tokens: vec![], emitted: 0, done: None, logprobs: vec![] }
            })
            .collect();
        let request = Request {
            streams,
            prompt_tokens: prompt.len(),
            cached_tokens: reused,
            prefill_seconds: 0.0,
            started: Instant::now(),
        };
        self.requests.insert(id, request);
        self.callers.insert(id, Caller { on_text: Box::new(on_text), go_on: Box::new(go_on) });
        let mut pending = Prefilling {
            id,
            prompt: prompt.to_vec(),
            done: reused,
            cache,
            params,
            grammar: grammar.map(Constraint::fork),
            started: start,
        };
        // A prompt of one chunk is prefilled now; a longer one, a chunk per step.
        if prompt.len() - reused <= self.prefill_chunk {
            if let Err(e) = self.prefill(&mut pending) {
                self.requests.remove(&id);
                self.callers.remove(&id);
                return Err(e);
            }
        } else {
            self.prefilling.push_back(pending);
        }
        Ok(id)
    }

    /// Runs the model over the next chunk of `p`'s prompt; after its last, its replies join the
    /// rows decoding. Returns whether the prompt is done.
    fn prefill(&mut self, p: &mut Prefilling<B>) -> Result<bool, ModelError> {
        let end = (p.done + self.prefill_chunk).min(p.prompt.len());
        let last = self.model.forward_last(&p.prompt[p.done..end], 1, &mut p.cache)?;
        p.done = end;
        if end < p.prompt.len() {
            return Ok(false);
        }
        let first = logits_rows(last)?;
        if let Some((store, ref key)) = self.prefixes {
            store.borrow_mut().keep(key, &p.prompt, &p.cache);
        }
        let request = self.requests.get_mut(&p.id).expect("a prefilling request is listed");
        request.prefill_seconds = p.started.elapsed().as_secs_f64();
        request.started = Instant::now();
        let params = &p.params;
        if params.max_new_tokens > 0 {
            let cache = std::mem::replace(&mut p.cache, KvCache::new(&self.model.config));
            let cache = if params.n > 1 { cache.repeat_rows(params.n) } else { cache };
            let joined = match self.cache.take().filter(|_| !self.rows.is_empty()) {
                None => Some(cache),
                Some(running) => running.join(cache),
            };
            self.cache = Some(joined.ok_or_else(|| ModelError::Input { what: "the caches cannot join".into() })?);
            let shared = std::sync::Arc::new(params.clone());
            for stream in 0..params.n {
                self.rows.push(Row { request: p.id, stream, params: shared.clone() });
                self.logits.push(first[0].clone());
                self.grammars.push(p.grammar.as_ref().map(Constraint::fork));
            }
        }
        Ok(true)
    }

    /// Draws the next token of every live reply, hands over their text, drops the replies that
    /// ended and runs the model once for the rest. Returns the requests whose replies have all
    /// ended. After an error the batch is in no defined state: drop it.
    pub fn step(&mut self) -> Result<Vec<(RequestId, Generation)>, ModelError> {
        // The replies of requests whose caller has gone end here.
        let gone: Vec<RequestId> = self.callers.iter().filter(|(_, c)| !(c.go_on)()).map(|(&id, _)| id).collect();
        if !gone.is_empty() {
            // A prompt still prefilling stops where it is.
            self.prefilling.retain(|p| !gone.contains(&p.id));
            let keep: Vec<usize> = (0..self.rows.len()).filter(|&r| !gone.contains(&self.rows[r].request)).collect();
            if keep.len() < self.rows.len() {
                self.retain(&keep);
            }
            for id in &gone {
                let request = self.requests.get_mut(id).expect("a caller has a request");
                for stream in request.streams.iter_mut().filter(|s| s.done.is_none()) {
                    let text = self.tokenizer.decode(&stream.tokens, true)?;
                    stream.done = Some((FinishReason::Length, text));
                }
            }
        }
        // The first prompt waiting gets one chunk; once whole, its replies decode from this step.
        if let Some(mut p) = self.prefilling.pop_front() {
            if !self.prefill(&mut p)? {
                self.prefilling.push_front(p);
            }
        }
        if !self.rows.is_empty() {
            self.decode()?;
        }
        // Requests with no live reply left, and no prompt still prefilling, are done.
        let mut live: std::collections::HashSet<RequestId> = self.rows.iter().map(|r| r.request).collect();
        live.extend(self.prefilling.iter().map(|p| p.id));
        let done: Vec<RequestId> = self.requests.keys().copied().filter(|id| !live.contains(id)).collect();
        let mut finished = Vec::with_capacity(done.len());
        for id in done {
            let request = self.requests.remove(&id).expect("listed above");
            self.callers.remove(&id);
            let completions = request
                .streams
                .into_iter()
                .map(|s| {
                    let (finish, text) = s.done.unwrap_or((FinishReason::Length, String::new()));
                    Completion { tokens: s.tokens, text, finish, logprobs: s.logprobs }
                })
                .collect();
            let generation = Generation {
                completions,
                prompt_tokens: request.prompt_tokens,
                cached_prompt_tokens: request.cached_tokens,
                prefill_seconds: request.prefill_seconds,
                decode_seconds: request.started.elapsed().as_secs_f64(),
            };
            finished.push((id, generation));
        }
        finished.sort_by_key(|(id, _)| *id);
        Ok(finished)
    }

    /// Keeps the rows `keep` (indices, ascending) of the batch, and their caches.
    fn retain(&mut self, keep: &[usize]) {
        keep_only(&mut self.rows, keep);
        keep_only(&mut self.logits, keep);
        keep_only(&mut self.grammars, keep);
        self.cache = if keep.is_empty() { None } else { self.cache.as_ref().map(|c| c.select_rows(keep)) };
    }

    /// One token for every live row: sampling, text, rows that end, and the model's next pass.
    fn decode(&mut self) -> Result<(), ModelError> {
        let context = self.model.config.max_position_embeddings;
        let requests = &mut self.requests;
        let rows = &self.rows;
        // The raw distribution of each row that asked for log-probabilities, before penalties
        // and grammars change the logits.
        let raw: Vec<Option<RawRow>> = rows
            .par_iter()
            .zip(self.logits.par_iter())
            .map(|(r, row)| {
                r.params.logprobs.map(|k| {
                    let norm = log_normaliser(row);
                    RawRow { norm, top: top_logprobs(row, k, norm), logits: row.clone() }
                })
            })
            .collect();
        {
            let streams = &*requests;
            self.logits.par_iter_mut().zip(rows.par_iter()).for_each(|(row, r)| {
                // A logit that is not a number (a broken adapter, an overflow) ranks below every
                // number, so that what the grammar masks stays masked and a draw stays total.
                for v in row.iter_mut().filter(|v| v.is_nan()) {
                    *v = f32::MIN;
                }
                if r.params.frequency_penalty != 0.0 || r.params.presence_penalty != 0.0 {
                    penalise(row, &streams[&r.request].streams[r.stream].tokens, &r.params);
                }
            });
        }
        // Tokens a row's grammar does not allow get no weight, rows in parallel; a row at a dead
        // end draws nothing and ends.
        let dead: Vec<bool> = self
            .grammars
            .par_iter_mut()
            .zip(self.logits.par_iter_mut())
            .map(|(g, row)| g.as_mut().is_some_and(|g| g.mask(row).is_err()))
            .collect();
        // Each row's next token from its own stream's generator, rows in parallel (a softmax
        // over the vocabulary each): the same draws whatever the order or the company.
        let mut rngs: Vec<ChaCha8Rng> =
            rows.iter().map(|r| requests[&r.request].streams[r.stream].rng.clone()).collect();
        let drawn: Vec<u32> = rngs
            .par_iter_mut()
            .zip(self.logits.par_iter())
            .zip(rows.par_iter())
            .map(|((rng, row), r)| sample(row, &r.params, rng))
            .collect();
        let mut next = Vec::with_capacity(rows.len());
        for (i, (r, rng)) in rows.iter().zip(rngs).enumerate() {
            let params = &*r.params;
            let stream = &mut requests.get_mut(&r.request).expect("a row's request").streams[r.stream];
            stream.rng = rng;
            let token = drawn[i];
            let stopped_by_token = !dead[i] && params.stop_token_ids.contains(&token);
            // The grammar moves past the token (a stop token ends the reply without it); a
            // grammar that fails here is at a dead end too.
            let step = match self.grammars[i].as_mut() {
                Some(_) if dead[i] => Err(()),
                Some(g) if !stopped_by_token => g.advance(token).map_err(|_| ()),
                _ => Ok(Step::Going),
            };
            if step.is_ok() {
                stream.tokens.push(token);
                if let Some(raw) = &raw[i] {
                    let logprob = raw.logits.get(token as usize).map_or(f32::NEG_INFINITY, |v| v - raw.norm);
                    stream.logprobs.push(TokenLogprob { token, logprob, top: raw.top.clone() });
                }
            }
            // The token would be fed at the row's next position; past the context there is none.
            let fed_at = self.cache.as_ref().map_or(0, |c| c.row_len(i));
            let at_limit = stream.tokens.len() >= params.max_new_tokens || fed_at >= context;
            let body = if stopped_by_token { &stream.tokens[..stream.tokens.len() - 1] } else { &stream.tokens[..] };
            let text = self.tokenizer.decode(body, true)?;
            let stop_at = params.stop.iter().filter_map(|s| text.find(s.as_str())).min();
            if step.is_err() {
                stream.done = Some((FinishReason::NoAllowedToken, text.clone()));
            } else if let Some(at) = stop_at {
                stream.done = Some((FinishReason::Stop, text[..at].to_string()));
            } else if step == Ok(Step::Complete) || stopped_by_token {
                stream.done = Some((FinishReason::Stop, text.clone()));
            } else if at_limit {
                stream.done = Some((FinishReason::Length, text.clone()));
            }
            // Hand over what is settled: all of it when done; otherwise all but what could begin
            // a stop string, and never half a character (decoding shows those as U+FFFD).
            let hold = params.stop.iter().map(String::len).max().unwrap_or(1).saturating_sub(1);
            let settled = match &stream.done {
                Some((_, final_text)) => final_text.len(),
                None => {
                    let mut end = text.trim_end_matches('\u{FFFD}').len().saturating_sub(hold);
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    end
                }
            };
            let shown = stream.done.as_ref().map_or(text.as_str(), |(_, t)| t.as_str());
            if settled > stream.emitted && shown.is_char_boundary(stream.emitted) {
                let caller = self.callers.get_mut(&r.request).expect("a row's caller");
                (caller.on_text)(r.stream, &shown[stream.emitted..settled]);
                stream.emitted = settled;
            }
            if stream.done.is_none() {
                next.push((i, token));
            }
        }
        if next.len() < self.rows.len() {
            let keep: Vec<usize> = next.iter().map(|&(r, _)| r).collect();
            self.retain(&keep);
        }
        if let Some(cache) = self.cache.as_mut().filter(|_| !next.is_empty()) {
            let tokens: Vec<u32> = next.iter().map(|&(_, t)| t).collect();
            self.logits = logits_rows(self.model.forward_last(&tokens, tokens.len(), cache)?)?;
        }
        Ok(())
    }
}

/// Keeps the items of `v` at `keep` (indices, ascending).
fn keep_only<T>(v: &mut Vec<T>, keep: &[usize]) {
    let mut at = 0;
    let mut wanted = keep.iter().peekable();
    v.retain(|_| {
        let hit = wanted.peek() == Some(&&at);
        if hit {
            wanted.next();
        }
        at += 1;
        hit
    });
}

/// `[rows, vocab]` logits as one vector per row, on the host.
pub fn logits_rows<B: Backend>(logits: burn::tensor::Tensor<B, 2>) -> Result<Vec<Vec<f32>>, ModelError> {
    let [rows, vocab] = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::Input { what: format!("cannot read logits back from the device: {e:?}") })?;
    Ok((0..rows).map(|r| values[r * vocab..(r + 1) * vocab].to_vec()).collect())
}

/// The index of the largest value; the first one on ties, as PyTorch's argmax.
pub fn argmax(values: &[f32]) -> u32 {
    // NaN is never the best; with nothing but NaN, the first.
    let mut best: Option<usize> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| v > values[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

/// The `k` largest values' indices, largest first (ties by lower index).
pub fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    let desc = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..values.len()).collect();
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, desc);
        idx.truncate(k);
    }
    idx.sort_unstable_by(desc);
    idx.truncate(k);
    idx
}

/// Lowers the logits of the tokens a reply has drawn: by the frequency penalty once per time,
/// and by the presence penalty once, as OpenAI defines them.
fn penalise(row: &mut [f32], drawn: &[u32], params: &SamplingParams) {
    let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    for &t in drawn {
        *counts.entry(t).or_default() += 1;
    }
    for (t, c) in counts {
        if let Some(logit) = row.get_mut(t as usize) {
            *logit -= params.frequency_penalty * c as f32 + params.presence_penalty;
        }
    }
}

/// Draws one token from a row of logits under `params`.
fn sample(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    let t = params.temperature;
    // Greedy at temperature 0, and wherever the weights are not numbers: a temperature so small
    // that 1/t overflows, or logits that are not finite (a broken adapter). Never a loop.
    if t == 0.0 || !(1.0 / t).is_finite() {
        return argmax(logits);
    }
    let limit = if params.top_k == 0 { logits.len() } else { params.top_k.min(logits.len()) };
    let (weights, total) = weights(logits, t);
    if !(total.is_finite() && total > 0.0) {
        return argmax(logits);
    }
    // Candidates, most likely first: the tokens whose weight reaches a floor, the floor lowered
    // until they hold top_p of the mass (or top_k of them). A weight grows with its logit, so
    // the tokens at or above any floor are a prefix of the ranking and hold the nucleus once
    // their mass reaches top_p; with top_p 1 every token (up to top_k) takes part, as it must.
    let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut floor = total * 1e-3;
    let candidates = loop {
        let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| weights[i] >= floor).collect();
        let mass = idx.iter().map(|&i| weights[i]).sum::<f64>() / total;
        if idx.len() >= limit || (params.top_p < 1.0 && mass >= params.top_p as f64) || floor == 0.0 {
            idx.sort_unstable_by(desc);
            idx.truncate(limit);
            break idx;
        }
        floor = if floor < total * 1e-12 { 0.0 } else { floor / 64.0 };
    };
    let probs: Vec<f64> = candidates.iter().map(|&i| weights[i] / total).collect();
    draw(&candidates, &probs, params.top_p, rng)
}

/// Each token's unnormalised probability at temperature `t`, `e^((logit - max) / t)`, and their sum.
fn weights(logits: &[f32], t: f32) -> (Vec<f64>, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut w = logits.to_vec();
    let total = crate::model::kernels::fastexp::exp_shifted(&mut w, max, 1.0 / t);
    (w.into_iter().map(f64::from).collect(), total)
}

/// A token from `candidates` (most likely first, with their probabilities `probs`): from the
/// shortest prefix whose mass reaches `top_p` (at least one token), by one uniform draw.
fn draw(candidates: &[usize], probs: &[f64], top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    let mut keep = candidates.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (j, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= top_p as f64 {
                keep = j + 1;
                break;
            }
        }
    }
    let kept = &probs[..keep];
    let sum: f64 = kept.iter().sum();
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) * sum;
    let mut acc = 0.0;
    for (j, p) in kept.iter().enumerate() {
        acc += p;
        if u < acc {
            return candidates[j] as u32;
        }
    }
    candidates[keep - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler's candidates as it first chose them (the top k, k grown by fours until they
    /// hold top_p of the mass): `sample` must draw exactly what it drew.
    fn reference(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
        let t = params.temperature;
        let limit = if params.top_k == 0 { logits.len() } else { params.top_k.min(logits.len()) };
        // The same weights: this pins the choice of candidates, not the exponential.
        let (weights, total) = weights(logits, t);
        let mut k = limit.min(64);
        let (candidates, probs) = loop {
            let idx = top_indices(logits, k);
            let probs: Vec<f64> = idx.iter().map(|&i| weights[i] / total).collect();
            if k >= limit || probs.iter().sum::<f64>() >= params.top_p as f64 {
                break (idx, probs);
            }
            k = (k * 4).min(limit);
        };
        draw(&candidates, &probs, params.top_p, rng)
    }

    #[test]
    fn penalties_lower_each_drawn_token_per_time_and_once() {
        let params = SamplingParams { frequency_penalty: 0.5, presence_penalty: 1.0, ..Default::default() };
        let mut row = vec![0.0f32; 4];
        penalise(&mut row, &[1, 3, 3, 3, 9], &params);
        assert_eq!(row, [0.0, -1.5, 0.0, -2.5]);
    }

    #[test]
    fn sampling_is_total_on_degenerate_temperatures_and_logits() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let logits = [0.5f32, 3.0, -1.0, 2.5];
        for temperature in [1e-39, f32::MIN_POSITIVE, 1e-30] {
            let params = SamplingParams { temperature, ..Default::default() };
            assert_eq!(sample(&logits, &params, &mut rng), 1, "t = {temperature}");
        }
        let params = SamplingParams { temperature: 0.8, top_p: 0.9, top_k: 2, ..Default::default() };
        for bad in [[f32::NAN, 1.0, 4.0, 2.0], [0.0, f32::INFINITY, 4.0, 2.0], [f32::NAN, f32::NAN, 4.0, f32::NAN]] {
            let token = sample(&bad, &params, &mut rng);
            assert!(bad[token as usize].is_finite() || bad[token as usize] == f32::INFINITY, "{bad:?} gave {token}");
        }
        assert_eq!(sample(&[f32::NAN, 1.0, 4.0, 2.0], &params, &mut rng), 2);
        assert_eq!(argmax(&[f32::NAN; 3]), 0);
        assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN, 0.5]), 3);
    }

    #[test]
    fn sampling_draws_what_the_top_k_growing_sampler_drew() {
        let mut gen = ChaCha8Rng::seed_from_u64(1);
        let mut uniform = || (gen.next_u32() >> 8) as f32 / (1 << 24) as f32 - 0.5;
        // Peaked, flat, and coarse (many ties) rows of a 3,000-token vocabulary.
        let rows: Vec<Vec<f32>> = vec![
            (0..3000).map(|_| 16.0 * uniform()).collect(),
            (0..3000).map(|_| 0.2 * uniform()).collect(),
            (0..3000).map(|_| (8.0 * uniform()).round()).collect(),
        ];
        for (r, row) in rows.iter().enumerate() {
            for temperature in [0.5, 0.8, 1.3] {
                for top_p in [0.3, 0.9, 0.95, 1.0] {
                    for top_k in [0, 1, 5, 100, 5000] {
                        let params = SamplingParams { temperature, top_p, top_k, ..Default::default() };
                        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
                        for draw in 0..40 {
                            assert_eq!(
                                sample(row, &params, &mut a),
                                reference(row, &params, &mut b),
                                "row {r}, t {temperature}, top_p {top_p}, top_k {top_k}, draw {draw}"
                            );
                        }
                    }
                }
            }
        }
    }
}
