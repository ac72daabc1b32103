//! LoRA fine-tuning on chat JSONL: assistant-only labels, packing, the causal LM loss, AdamW with warm-up and cosine decay.
//! It must train only the adapters and never panic on a bad line of data: errors name the file and line.

//! Training LoRA adapters on conversations.

use crate::chat::{ChatTemplate, Message};
use crate::lora::{peft_layout, read_burn_layout, save_peft, serialize_f32, LoraConfig, LoraError};
pub use crate::model::loss::{causal_lm_loss, IGNORE};
use crate::model::{Llama, ModelError};
use crate::tokenizer::Tokenizer;
use burn::module::ParamId;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsAccumulator, GradientsParams, Optimizer,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What went wrong reading data or training. Messages name the file and line, or the step.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}:{line}: {message}", path.display())]
    Data { path: PathBuf, line: usize, message: String },
    #[error("{0}")]
    Input(String),
}

/// One tokenised conversation: `labels[i]` is the token position `i` should predict, or [`IGNORE`].
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Reads chat JSONL: one `{"messages": [{"role": ..., "content": ...}, ...]}` per line (blank lines skipped).
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Vec<Message>>, FinetuneError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| FinetuneError::Io { path: path.into(), message: format!("cannot read: {e}") })?;
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| FinetuneError::Data { path: path.into(), line: n + 1, message };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        let Some(items) = v.get("messages").and_then(|m| m.as_array()) else {
            return Err(err("no \"messages\" list".into()));
        };
        let mut messages = vec![];
        for (i, m) in items.iter().enumerate() {
            let field = |k: &str| m.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let (Some(role), Some(content)) = (field("role"), field("content")) else {
                return Err(err(format!("message {i} needs string \"role\" and \"content\"")));
            };
            messages.push(Message::new(role, content));
        }
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(err("no assistant message to learn from".into()));
        }
        out.push(messages);
    }
    if out.is_empty() {
        return Err(FinetuneError::Io { path: path.into(), message: "holds no conversations".into() });
    }
    Ok(out)
}

/// Renders `messages` with `template` and tokenises them; only the assistant turns' tokens
/// (their text and the template's end-of-turn after it) are labelled. An assistant turn's span
/// is the difference between the conversation up to it rendered with a generation prompt and
/// rendered with the turn itself. Keeps at most `max_len` tokens.
pub fn encode_conversation(
    messages: &[Message],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<Example, FinetuneError> {
    let render = |m: &[Message], gen: bool| template.render(m, gen).map_err(|e| FinetuneError::Input(e.to_string()));
    let full = render(messages, false)?;
    // Character spans of the assistant turns in `full`.
    let mut spans = vec![];
    for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let prompt = render(&messages[..i], true)?;
        let with = render(&messages[..=i], false)?;
        if !with.starts_with(&prompt)
            || !full.starts_with(&with)
            || prompt.len() < spans.last().map_or(0, |s: &(usize, usize)| s.1)
        {
            return Err(FinetuneError::Input(format!(
                "the chat template does not render message {i} ({}) after the earlier ones, so its tokens cannot be found",
                m.role
            )));
        }
        spans.push((prompt.len(), with.len()));
    }
    // Tokenise the pieces between boundaries separately, so a span's tokens are exactly its text's.
    let mut ids = vec![];
    let mut target = vec![];
    let mut at = 0;
    let tok = |s: &str| tokenizer.encode(s, false).map_err(|e| FinetuneError::Input(format!("tokenizer: {e}")));
    for &(start, end) in &spans {
        let before = tok(&full[at..start])?;
        target.extend(std::iter::repeat_n(false, before.len()));
        ids.extend(before);
        let turn = tok(&full[start..end])?;
        target.extend(std::iter::repeat_n(true, turn.len()));
        ids.extend(turn);
        at = end;
    }
    let rest = tok(&full[at..])?;
    target.extend(std::iter::repeat_n(false, rest.len()));
    ids.extend(rest);
    ids.truncate(max_len);
    target.truncate(max_len);
    let labels =
        (0..ids.len()).map(|i| if i + 1 < ids.len() && target[i + 1] { ids[i + 1] as i64 } else { IGNORE }).collect();
    Ok(Example { ids, labels })
}

/// Settings of a fine-tuning run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f64,
    pub epochs: usize,
    /// Conversations per forward pass.
    pub batch: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps of linear warm-up before the cosine decay.
    pub warmup: usize,
    pub max_len: usize,
    pub seed: u64,
    pub weight_decay: f32,
    /// Save the adapter every this many optimizer steps (0: only at the end).
    pub save_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            lr: 2e-4,
            epochs: 1,
            batch: 1,
            grad_accum: 1,
            warmup: 0,
            max_len: 1024,
            seed: 0,
            weight_decay: 0.0,
            save_every: 0,
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up, then cosine decay to zero.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Reported after each optimizer step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    pub total_steps: usize,
    /// Mean loss over the step's labelled tokens.
    pub loss: f64,
    pub lr: f64,
    /// Tokens (labelled or not) run through the model so far in this run.
    pub tokens: usize,
    pub tokens_per_second: f64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub losses: Vec<f64>,
    pub final_loss: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// A resumed run read AdamW's moments back from its checkpoint (false: they started afresh).
    pub restored_moments: bool,
}

/// Where checkpoints go: the adapter in PEFT's format, AdamW's moments (`optimizer.safetensors`)
/// and `trainer_state.json` (steps done), written in that order, each by a rename.
pub struct Saving<'a> {
    pub dir: &'a Path,
    pub base_model: &'a str,
}

const STATE: &str = "trainer_state.json";
/// AdamW's first and second moments of every adapter tensor, named after PEFT's tensor with
/// `.exp_avg` and `.exp_avg_sq` appended (PyTorch's names for them), in PEFT's layout; the
/// metadata holds each tensor's step count under its name.
pub const MOMENTS: &str = "optimizer.safetensors";

type Adam<B> = OptimizerAdaptor<AdamW, Llama<B>, B>;
type Moments<B> = <Adam<B> as Optimizer<Llama<B>, B>>::Record;

/// Every adapter tensor of `model`: PEFT's name, the parameter's id, and its value.
fn adapter_tensors<B: Backend>(model: &Llama<B>) -> Vec<(String, ParamId, Tensor<B, 2>)> {
    let mut out = vec![];
    for (i, block) in model.blocks.iter().enumerate() {
        for &t in crate::lora::Target::ALL.iter() {
            if let Some(adapter) = block.lora.get(t) {
                for (which, p) in [("A", &adapter.a), ("B", &adapter.b)] {
                    out.push((crate::lora::tensor_name(i, t, which), p.id, p.val()));
                }
            }
        }
    }
    out
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::Io { path: path.into(), message: e.to_string() }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a kill leaves the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FinetuneError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn save_moments<B: AutodiffBackend>(model: &Llama<B>, moments: &Moments<B>, dir: &Path) -> Result<(), FinetuneError> {
    let path = dir.join(MOMENTS);
    let mut tensors = BTreeMap::new();
    let mut times = HashMap::new();
    for (name, id, _) in adapter_tensors(model) {
        let Some(record) = moments.get(&id) else { continue };
        let state: AdamWState<B::InnerBackend, 2> = record.clone().into_state::<2>();
        let m = state.momentum;
        times.insert(name.clone(), m.time.to_string());
        for (suffix, t) in [("exp_avg", m.moment_1), ("exp_avg_sq", m.moment_2)] {
            let key = format!("{name}.{suffix}");
            tensors.insert(key.clone(), peft_layout(t, &key)?);
        }
    }
    write_atomic(&path, &serialize_f32(&path, &tensors, Some(times))?)
}

/// AdamW's moments saved in `dir` for `model`'s adapters, keyed by the adapters' parameter ids:
/// `None` when `dir` holds no moments (a checkpoint written before they were saved).
fn load_moments<B: AutodiffBackend>(model: &Llama<B>, dir: &Path) -> Result<Option<Moments<B>>, FinetuneError> {
    let path = dir.join(MOMENTS);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io_err(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io_err(&path, e))?;
    let times = header.metadata().clone().unwrap_or_default();
    let mut out = Moments::<B>::default();
    for (name, id, value) in adapter_tensors(model) {
        let [rows, cols] = value.dims();
        let time: usize = times
            .get(&name)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| io_err(&path, format!("no step count for {name} in the metadata")))?;
        // Stored in PEFT's layout, [cols, rows] of Burn's.
        let read = |suffix: &str| -> Result<Tensor<B::InnerBackend, 2>, FinetuneError> {
            let data = read_burn_layout(&st, MOMENTS, &format!("{name}.{suffix}"), cols, rows)?;
            Ok(Tensor::from_data(data, &value.device()))
        };
        let state = AdamWState::new(AdaptiveMomentumState::new(time, read("exp_avg")?, read("exp_avg_sq")?));
        out.insert(id, AdaptorRecord::from_state::<2>(state));
    }
    Ok(Some(out))
}

/// The optimizer steps a checkpoint in `dir` has done, if it holds one.
pub fn saved_step(dir: &Path) -> Result<Option<usize>, FinetuneError> {
    let path = dir.join(STATE);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| FinetuneError::Io { path: path.clone(), message: e.to_string() })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| FinetuneError::Io { path: path.clone(), message: format!("not JSON: {e}") })?;
    let step = v
        .get("step")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| FinetuneError::Io { path: path.clone(), message: "no whole-number \"step\"".into() })?;
    Ok(Some(step as usize))
}

fn save<B: AutodiffBackend>(
    model: &Llama<B>,
    optim: &Adam<B>,
    cfg: &TrainConfig,
    to: &Saving,
    step: usize,
    total: usize,
) -> Result<(), FinetuneError> {
    save_peft(model, &cfg.lora, to.base_model, to.dir)?;
    save_moments(model, &optim.to_record(), to.dir)?;
    let path = to.dir.join(STATE);
    let state = serde_json::json!({ "step": step, "total_steps": total, "seed": cfg.seed });
    write_atomic(&path, serde_json::to_string_pretty(&state).unwrap_or_default().as_bytes())
}

/// Trains `model`'s adapters (attach them first, or load them to resume) on `examples`.
/// `start_step` optimizer steps are skipped (a resumed run: the same seed gives the same batch
/// order, and AdamW's moments are read back from `saving`'s folder when it holds them, so the
/// run continues as if never stopped). `on_step` sees every optimizer step.
pub fn train<B: AutodiffBackend>(
    mut model: Llama<B>,
    examples: &[Example],
    cfg: &TrainConfig,
    saving: Option<&Saving>,
    start_step: usize,
    mut on_step: impl FnMut(&StepReport),
) -> Result<(Llama<B>, TrainSummary), FinetuneError> {
    if cfg.batch == 0 || cfg.grad_accum == 0 || cfg.epochs == 0 {
        return Err(FinetuneError::Input("--batch, --grad-accum and --epochs must be at least 1".into()));
    }
    nasc_runtime::memory::keep_freed_buffers();
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(FinetuneError::Input(format!("learning rate {} is not a positive number", cfg.lr)));
    }
    if examples.iter().all(|e| e.labels.iter().all(|&l| l == IGNORE)) {
        return Err(FinetuneError::Input(
            "no example keeps an assistant token to learn from (a prompt as long as max_len leaves none)".into(),
        ));
    }
    let micro_per_epoch = examples.len().div_ceil(cfg.batch);
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
    let total = steps_per_epoch * cfg.epochs;
    let mut optim: Adam<B> = AdamWConfig::new().with_weight_decay(cfg.weight_decay).init::<B, Llama<B>>();
    let mut restored_moments = false;
    if let (true, Some(to)) = (start_step > 0, saving) {
        if let Some(moments) = load_moments(&model, to.dir)? {
            optim = optim.load_record(moments);
            restored_moments = true;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let started = Instant::now();
    let (mut tokens, mut losses) = (0usize, vec![]);
    let mut step = 0;
    for _ in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let batches: Vec<&[usize]> = order.chunks(cfg.batch).collect();
        for group in batches.chunks(cfg.grad_accum) {
            if step < start_step {
                step += 1;
                continue;
            }
            crate::lora::seed_dropout(cfg.seed, step as u64);
            let mut acc = GradientsAccumulator::<Llama<B>>::new();
            let counted_total: usize = group
                .iter()
                .flat_map(|b| b.iter())
                .map(|&i| examples[i].labels.iter().filter(|&&l| l != IGNORE).count())
                .sum();
            let mut loss_sum = 0.0;
            for batch in group {
                let (ids, labels) = pad(examples, batch);
                let (loss, counted) = model.loss(&ids, batch.len(), &labels)?;
                tokens += ids.len();
                if counted == 0 {
                    continue;
                }
                // Weight each micro-batch by its share of the step's labelled tokens.
                let loss = loss.mul_scalar(counted as f64 / counted_total.max(1) as f64);
                let value = loss.clone().into_data().convert::<f64>().to_vec::<f64>().unwrap_or_default();
                loss_sum += value.first().copied().unwrap_or(f64::NAN);
                acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            if !loss_sum.is_finite() {
                return Err(FinetuneError::Input(format!("the loss became {loss_sum} at step {}", step + 1)));
            }
            let lr = lr_at(step, total, cfg.warmup, cfg.lr);
            model = optim.step(lr, model, acc.grads());
            step += 1;
            losses.push(loss_sum);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            on_step(&StepReport {
                step,
                total_steps: total,
                loss: loss_sum,
                lr,
                tokens,
                tokens_per_second: tokens as f64 / secs,
            });
            if let Some(to) = saving {
                if cfg.save_every > 0 && step % cfg.save_every == 0 && step < total {
                    save(&model, &optim, cfg, to, step, total)?;
                }
            }
        }
    }
    if let Some(to) = saving {
        save(&model, &optim, cfg, to, step, total)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps: step,
        final_loss: losses.last().copied().unwrap_or(f64::NAN),
        losses,
        tokens,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        seconds,
        restored_moments,
    };
    Ok((model, summary))
}

/// The batch's rows right-padded to its longest (padding is masked; causal attention keeps it
/// from touching the real tokens before it).
fn pad(examples: &[Example], batch: &[usize]) -> (Vec<u32>, Vec<i64>) {
    let width = batch.iter().map(|&i| examples[i].ids.len()).max().unwrap_or(0).max(1);
    let (mut ids, mut labels) = (Vec::with_capacity(width * batch.len()), Vec::with_capacity(width * batch.len()));
    for &i in batch {
        let e = &examples[i];
        ids.extend(&e.ids);
        ids.extend(std::iter::repeat_n(0, width - e.ids.len()));
        labels.extend(&e.labels);
        labels.extend(std::iter::repeat_n(IGNORE, width - e.labels.len()));
    }
    (ids, labels)
}

#[cfg(test)]
mod tests;
