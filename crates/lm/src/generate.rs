//! Text generation: prefill the prompt once, then decode one token per step for every stream with a KV cache.
//! It must be deterministic given the seed, and must not run the model for streams that have finished.

//! Sampling replies from a [`Llama`].
//!
//! `n` replies to one prompt share its prefill: the prompt runs once, its
//! cache is repeated to `n` rows, and the streams decode in one batch. A
//! stream that finishes (a stop token, a stop string, `max_new_tokens`)
//! leaves the batch, so the rest run at its smaller size. Each stream draws
//! from its own generator, seeded from `seed` and the stream's index, so its
//! reply does not depend on how many others run beside it.

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
pub fn generate_until<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    grammar: Option<&Constraint>,
    mut on_text: impl FnMut(usize, &str),
    go_on: impl Fn() -> bool,
) -> Result<Generation, ModelError> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(ModelError::Input { what: "the prompt has no tokens".into() });
    }
    let context = model.config.max_position_embeddings;
    if prompt.len() >= context {
        return Err(ModelError::Input {
            what: format!("the prompt has {} tokens; the model's context holds {context}", prompt.len()),
        });
    }
    let start = Instant::now();
    let mut cache = KvCache::new(&model.config);
    let first = logits_rows(model.forward_last(prompt, 1, &mut cache)?)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();

    let mut streams: Vec<Stream> = (0..params.n)
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
            rng.set_stream(i as u64);
            Stream { rng, tokens: vec![], emitted: 0, done: None, logprobs: vec![] }
        })
        .collect();
    // Rows of the batch, by stream index; the logits of row r belong to stream active[r].
    let mut active: Vec<usize> = (0..params.n).collect();
    let mut logits: Vec<Vec<f32>> = vec![first[0].clone(); params.n];
    if params.max_new_tokens > 0 && params.n > 1 {
        cache = cache.repeat_rows(params.n);
    }
    let hold = params.stop.iter().map(String::len).max().unwrap_or(1).saturating_sub(1);
    // Each row's place in the grammar, aligned with `active`.
    let mut grammars: Vec<Constraint> = grammar.map(|g| (0..params.n).map(|_| g.fork()).collect()).unwrap_or_default();

    let penalised = params.frequency_penalty != 0.0 || params.presence_penalty != 0.0;
    while !active.is_empty() && params.max_new_tokens > 0 && go_on() {
        // The raw distribution of each row, before penalties and grammars change the logits.
        let raw: Vec<RawRow> = match params.logprobs {
            Some(k) => logits
                .par_iter()
                .map(|row| {
                    let norm = log_normaliser(row);
                    RawRow { norm, top: top_logprobs(row, k, norm), logits: row.clone() }
                })
                .collect(),
            None => Vec::new(),
        };
        if penalised {
            logits
                .par_iter_mut()
                .zip(active.par_iter())
                .for_each(|(row, &s)| penalise(row, &streams[s].tokens, params));
        }
        // Tokens the grammar does not allow get no weight, rows in parallel; a row at a dead end
        // draws nothing and ends.
        let dead: Vec<bool> = if grammars.is_empty() {
            vec![false; active.len()]
        } else {
            grammars.par_iter_mut().zip(logits.par_iter_mut()).map(|(g, row)| g.mask(row).is_err()).collect()
        };
        // Each row's next token from its own stream's generator, rows in parallel (a softmax
        // over the vocabulary each): the same draws whatever the order.
        let mut rngs: Vec<ChaCha8Rng> = active.iter().map(|&s| streams[s].rng.clone()).collect();
        let drawn: Vec<u32> =
            rngs.par_iter_mut().zip(logits.par_iter()).map(|(rng, row)| sample(row, params, rng)).collect();
        for (&s, rng) in active.iter().zip(rngs) {
            streams[s].rng = rng;
        }
        let mut next = Vec::with_capacity(active.len());
        for (row, &s) in active.iter().enumerate() {
            let stream = &mut streams[s];
            let token = drawn[row];
            let stopped_by_token = !dead[row] && params.stop_token_ids.contains(&token);
            // The grammar moves past the token (a stop token ends the reply without it); a
            // grammar that fails here is at a dead end too.
            let step = match grammars.get_mut(row) {
                Some(_) if dead[row] => Err(()),
                Some(g) if !stopped_by_token => g.advance(token).map_err(|_| ()),
                _ => Ok(Step::Going),
            };
            if step.is_ok() {
                stream.tokens.push(token);
                if let Some(r) = raw.get(row) {
                    let logprob = r.logits.get(token as usize).map_or(f32::NEG_INFINITY, |v| v - r.norm);
                    stream.logprobs.push(TokenLogprob { token, logprob, top: r.top.clone() });
                }
            }
            // The token would be fed at position cache.len(); past the context there is none.
            let at_limit = stream.tokens.len() >= params.max_new_tokens || cache.len() >= context;
            let body = if stopped_by_token { &stream.tokens[..stream.tokens.len() - 1] } else { &stream.tokens[..] };
            let text = tokenizer.decode(body, true)?;
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
            // Hand over what is settled: all of it when done; otherwise all but what could begin a
            // stop string, and never half a character (decoding shows those as U+FFFD).
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
                on_text(s, &shown[stream.emitted..settled]);
                stream.emitted = settled;
            }
            if stream.done.is_none() {
                next.push((row, token));
            }
        }
        if next.len() < active.len() {
            let rows: Vec<usize> = next.iter().map(|&(r, _)| r).collect();
            active = rows.iter().map(|&r| active[r]).collect();
            if !grammars.is_empty() {
                let mut kept = rows.iter().peekable();
                let mut r = 0;
                grammars.retain(|_| {
                    let keep = kept.peek() == Some(&&r);
                    if keep {
                        kept.next();
                    }
                    r += 1;
                    keep
                });
            }
            if !rows.is_empty() {
                cache = cache.select_rows(&rows);
            }
        }
        if active.is_empty() {
            break;
        }
        let tokens: Vec<u32> = next.iter().map(|&(_, t)| t).collect();
        logits = logits_rows(model.forward_last(&tokens, tokens.len(), &mut cache)?)?;
    }

    let completions = streams
        .into_iter()
        .map(|s| {
            let (finish, text) = s.done.unwrap_or((FinishReason::Length, String::new()));
            Completion { tokens: s.tokens, text, finish, logprobs: s.logprobs }
        })
        .collect();
    Ok(Generation {
        completions,
        prompt_tokens: prompt.len(),
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
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
