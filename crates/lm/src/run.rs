//! Whole jobs on a device: generate replies to one prompt, or fine-tune an adapter on chat JSONL.
//! Each opens the checkpoint on the chosen back end, applies adapters and grammars, and runs
//! to the end; the caller (the `nasc lm` commands) only reads flags and prints what comes back.

use crate::chat::Message;
use crate::constrain::{Constrainer, Grammar};
use crate::finetune::{self, Saving, StepReport, TrainConfig, TrainSummary};
use crate::generate::{generate_constrained, Generation, SamplingParams};
use crate::model::{Checkpoint, LoadOptions};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use nasc_runtime::{BackendJob, Device};
use std::path::{Path, PathBuf};

/// Tokens that end a chat turn besides the EOS token: each family's own end-of-turn token.
const END_OF_TURN: [&str; 5] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>"];

/// Token ids that end a chat turn: the EOS token and the chat models' own end-of-turn tokens.
pub fn end_of_turn_ids<B: Backend>(ckpt: &Checkpoint<B>) -> Vec<u32> {
    let mut ids: Vec<u32> = ckpt.tokenizer.eos_id().into_iter().collect();
    for name in END_OF_TURN {
        ids.extend(ckpt.tokenizer.token_id(name));
    }
    ids
}

/// One prompt to answer.
pub struct GenerateRequest {
    /// A .gguf file or a Hugging Face folder.
    pub model: PathBuf,
    pub load: LoadOptions,
    /// A PEFT adapter folder to apply.
    pub adapter: Option<PathBuf>,
    /// The user's message, or with `raw` the whole prompt text.
    pub prompt: String,
    pub system: Option<String>,
    /// Use `prompt` as it is, without the chat template (and stop only at EOS).
    pub raw: bool,
    /// Sampling; its `stop_token_ids` are filled in from the checkpoint.
    pub params: SamplingParams,
    /// The grammar every reply is held to, and where it came from (for errors).
    pub grammar: Option<(String, Grammar)>,
}

/// Answers `req` on `device`; `on_piece(row, text)` hears each decoded piece as it comes.
pub fn generate(
    device: Device,
    req: &GenerateRequest,
    on_piece: impl FnMut(usize, &str),
) -> Result<Generation, String> {
    nasc_runtime::dispatch(device, GenerateJob { req, on_piece })?
}

struct GenerateJob<'a, F> {
    req: &'a GenerateRequest,
    on_piece: F,
}

impl<F: FnMut(usize, &str)> BackendJob for GenerateJob<'_, F> {
    type Output = Result<Generation, String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.req;
        let mut ckpt = Checkpoint::<B::InnerBackend>::open_with(&a.model, &device, &a.load)
            .map_err(|e| format!("{}: {e}", a.model.display()))?;
        if let Some(dir) = &a.adapter {
            let (model, _) =
                crate::lora::load_peft(ckpt.model, dir).map_err(|e| format!("adapter {}: {e}", dir.display()))?;
            ckpt.model = model;
        }
        let ids = if a.raw {
            ckpt.tokenizer.encode(&a.prompt, true).map_err(|e| format!("tokenizer: {e}"))?
        } else {
            let mut messages = vec![];
            if let Some(system) = &a.system {
                messages.push(Message::new("system", system.clone()));
            }
            messages.push(Message::new("user", a.prompt.clone()));
            // A templated prompt already holds its BOS token when the model wants one.
            ckpt.tokenizer.encode_chat(&ckpt.template, &messages, true).map_err(|e| e.to_string())?
        };
        let mut params = a.params.clone();
        params.stop_token_ids =
            if a.raw { ckpt.tokenizer.eos_id().into_iter().collect() } else { end_of_turn_ids(&ckpt) };
        let constraint = match &a.grammar {
            Some((shown, grammar)) => {
                let c = Constrainer::new(&ckpt.tokenizer, &params.stop_token_ids, ckpt.model.config.vocab_size)
                    .map_err(|e| format!("{shown}: {e}"))?;
                Some(c.compile(grammar).map_err(|e| format!("{shown}: {e}"))?)
            }
            None => None,
        };
        let mut on_piece = self.on_piece;
        generate_constrained(&ckpt.model, &ckpt.tokenizer, &ids, &params, constraint.as_ref(), |row, piece| {
            on_piece(row, piece)
        })
        .map_err(|e| e.to_string())
    }
}

/// How a fine-tuning run starts.
pub enum Start {
    /// A fresh adapter of the config's rank and targets.
    Fresh,
    /// Continue the checkpoint in the output folder: adapter, AdamW's moments, step count.
    Resume,
    /// Start from this PEFT adapter; its rank, alpha, dropout and targets replace the config's.
    From(PathBuf),
}

/// One fine-tuning run.
pub struct FinetuneRequest {
    pub model: PathBuf,
    pub load: LoadOptions,
    /// Chat JSONL files, read in order and trained on as one set (e.g. a run's own pairs and a
    /// replayed format corpus).
    pub data: Vec<PathBuf>,
    /// Where the adapter goes.
    pub out: PathBuf,
    pub config: TrainConfig,
    pub start: Start,
    /// Also write the base with the adapter merged in, as a Hugging Face folder.
    pub merge: Option<PathBuf>,
}

/// What a fine-tuning run did.
pub struct Finetuned {
    pub summary: TrainSummary,
    /// The step it started from (non-zero when resumed).
    pub start_step: usize,
    /// Things the user should know that did not stop the run.
    pub warnings: Vec<String>,
}

/// Runs `req` on `device`; `on_step` hears every optimizer step.
pub fn finetune(device: Device, req: &FinetuneRequest, on_step: impl FnMut(&StepReport)) -> Result<Finetuned, String> {
    nasc_runtime::dispatch(device, FinetuneJob { req, on_step })?
}

struct FinetuneJob<'a, F> {
    req: &'a FinetuneRequest,
    on_step: F,
}

impl<F: FnMut(&StepReport)> BackendJob for FinetuneJob<'_, F> {
    type Output = Result<Finetuned, String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.req;
        let mut cfg = a.config.clone();
        let mut warnings = vec![];
        let ckpt = Checkpoint::<B>::open_with(&a.model, &device, &a.load)
            .map_err(|e| format!("{}: {e}", a.model.display()))?;
        let mut examples = vec![];
        let mut skipped = vec![];
        for path in &a.data {
            let conversations = finetune::read_jsonl(path).map_err(|e| e.to_string())?;
            let total = conversations.len();
            let mut kept = 0;
            for (i, c) in conversations.iter().enumerate() {
                let e = finetune::encode_conversation(c, &ckpt.template, &ckpt.tokenizer, cfg.max_len)
                    .map_err(|e| format!("{}: conversation {}: {e}", path.display(), i + 1))?;
                // A conversation whose prompt alone fills max_len keeps no assistant token: it
                // would cost a forward pass per epoch and teach nothing.
                if e.labels.iter().any(|&l| l != finetune::IGNORE) {
                    examples.push(e);
                    kept += 1;
                }
            }
            if kept < total {
                skipped.push((path, total - kept, total));
            }
        }
        if !examples.is_empty() {
            for (path, lost, total) in skipped {
                warnings.push(format!(
                    "{lost} of {total} conversations in {} keep no assistant token within --max-len {} and are skipped; \
                     raise --max-len to learn from them",
                    path.display(),
                    cfg.max_len
                ));
            }
        }
        let adapter_err = |e: crate::lora::LoraError| format!("{}: {e}", a.out.display());
        let (model, start) = match &a.start {
            Start::Resume => {
                let step = finetune::saved_step(&a.out)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("--resume: {} holds no trainer_state.json", a.out.display()))?;
                let (model, file) = crate::lora::load_peft(ckpt.model, &a.out).map_err(adapter_err)?;
                if file.config.rank != cfg.lora.rank || file.config.targets != cfg.lora.targets {
                    return Err(format!(
                        "--resume: the adapter in {} has rank {} on {:?}, not the --rank and --targets given",
                        a.out.display(),
                        file.config.rank,
                        file.config.targets
                    ));
                }
                (model, step)
            }
            Start::From(dir) => {
                let (model, file) = crate::lora::load_peft(ckpt.model, dir)
                    .map_err(|e| format!("--init-adapter {}: {e}", dir.display()))?;
                cfg.lora = file.config;
                (model, 0)
            }
            Start::Fresh => (crate::lora::attach(ckpt.model, &cfg.lora, cfg.seed).map_err(adapter_err)?, 0),
        };
        let base_name = a.model.display().to_string();
        let saving = Saving { dir: &a.out, base_model: &base_name };
        let (model, summary) =
            finetune::train(model, &examples, &cfg, Some(&saving), start, self.on_step).map_err(|e| e.to_string())?;
        if let Some(dir) = &a.merge {
            write_merged(model.valid(), (&ckpt.tokenizer, &ckpt.template), dir)
                .map_err(|e| format!("--merge {}: {e}", dir.display()))?;
        }
        if start > 0 && !summary.restored_moments {
            warnings.push(format!(
                "{} holds no {} (written by an older nasc); AdamW's moments started afresh at step {start}",
                a.out.display(),
                finetune::MOMENTS
            ));
        }
        Ok(Finetuned { summary, start_step: start, warnings })
    }
}

/// Writes `model` with its adapters merged into the base, with the checkpoint's tokenizer and
/// template, as a Hugging Face folder.
fn write_merged<B: Backend>(
    model: crate::model::Llama<B>,
    (tokenizer, template): (&crate::tokenizer::Tokenizer, &crate::chat::ChatTemplate),
    dir: &Path,
) -> Result<(), String> {
    let merged = crate::lora::merge(model);
    crate::model::save_safetensors(&merged, dir).map_err(|e| e.to_string())?;
    tokenizer.save_hf_json(dir.join("tokenizer.json")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tokenizer_config.json"), template.tokenizer_config().to_string())
        .map_err(|e| e.to_string())
}
