//! The language-model commands: `nasc lm generate` and `nasc lm finetune`.
//! Reads flags, opens the checkpoint through nasc-lm, prints replies or training progress as text or JSON;
//! it samples and trains nothing itself.

use super::UsageError;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nasc_lm::chat::Message;
use nasc_lm::constrain::{Constrainer, Grammar};
use nasc_lm::finetune::{self, Saving, TrainConfig};
use nasc_lm::generate::{generate_constrained, Generation, SamplingParams};
use nasc_lm::lora::LoraConfig;
use nasc_lm::model::{Checkpoint, LoadOptions};
use nasc_runtime::{BackendJob, Device};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum LmCmd {
    /// Generate replies to a prompt with a Llama-family model (a .gguf file or a Hugging Face folder).
    Generate(GenerateArgs),
    /// Train LoRA adapters on chat JSONL ({"messages": [...]} per line) and save them in PEFT's format.
    Finetune(FinetuneArgs),
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// The base model: a .gguf file, or a folder with config.json, *.safetensors and tokenizer.json.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Chat JSONL: one {"messages": [{"role": ..., "content": ...}, ...]} per line; assistant turns are learned.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where the adapter goes (adapter_config.json, adapter_model.safetensors, trainer_state.json).
    #[arg(long, value_name = "ADAPTER_DIR")]
    out: PathBuf,
    #[arg(long, default_value_t = 32)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Projections that get adapters, comma-separated.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    targets: String,
    /// Peak learning rate (AdamW; linear warm-up, then cosine decay).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Conversations per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Forward passes per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Optimizer steps of linear warm-up.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Tokens kept per conversation.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Save the adapter every N optimizer steps (0: only at the end).
    #[arg(long, value_name = "N", default_value_t = 50)]
    save_every: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: cpu, wgpu, wgpu:N, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Keep the base's projection weights block-quantised as the GGUF file stores them (Q8_0,
    /// Q4_0, Q4_1, Q4_K, Q6_K) and dequantise them on the fly: QLoRA's frozen base. CPU only.
    #[arg(long)]
    quantized_base: bool,
    /// Continue from the checkpoint in --out: the adapter, AdamW's moments and the step count.
    #[arg(long, conflicts_with = "init_adapter")]
    resume: bool,
    /// Start from this adapter (a PEFT folder, e.g. the previous search cycle's) instead of a fresh one;
    /// its rank, alpha, dropout and targets replace --rank, --alpha, --dropout and --targets.
    #[arg(long, value_name = "DIR")]
    init_adapter: Option<PathBuf>,
    /// Also write the base with the adapter merged in, as a Hugging Face folder.
    #[arg(long, value_name = "OUT_DIR")]
    merge: Option<PathBuf>,
    /// Print the final loss, steps, tokens/s and losses as JSON instead of a progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A .gguf file, or a folder with config.json, *.safetensors and tokenizer.json.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The user's message (or, with --raw, the whole prompt text).
    #[arg(long)]
    prompt: String,
    /// A system message placed before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt as it is, without the checkpoint's chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens only; 0 means all.
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens holding this much probability.
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replies to sample from the prompt, decoded together in one batch.
    #[arg(short = 'n', long = "samples", value_name = "N", default_value_t = 1)]
    n: usize,
    /// End a reply before this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// A LoRA adapter folder in PEFT's format (adapter_config.json, adapter_model.safetensors) to apply.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Where to run: cpu, wgpu, wgpu:N, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Keep the base's projection weights block-quantised as the GGUF file stores them (Q8_0,
    /// Q4_0, Q4_1, Q4_K, Q6_K) and compute with the blocks, as llama.cpp does: inputs are
    /// rounded to 8 bits and take integer dot products (Q8_0, Q4_0, Q4_1; AVX-512 VNNI where the
    /// CPU has it), faster than f32 weights for one stream and for a batch (figures in
    /// BENCHMARKS.md). CPU only.
    #[arg(long)]
    quantized_base: bool,
    /// Hold every reply to a grammar: a file in Lark (llguidance's dialect; `%llguidance {}` may
    /// start it) or GBNF (llama.cpp's, `root ::= ...`), told apart by its syntax. Only tokens the
    /// grammar allows are drawn; a reply ends when the grammar is complete, or with the finish
    /// reason `no_allowed_token` when it can go no further.
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    /// Print the replies as JSON (text, token ids, finish reason, tokens/s) instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// How `--quantized-base` loads a checkpoint.
pub(crate) fn load_options(quantized_base: bool) -> LoadOptions {
    LoadOptions { quantised_base: quantized_base, ..LoadOptions::default() }
}

pub fn run(cmd: LmCmd) -> Result<ExitCode, UsageError> {
    match cmd {
        LmCmd::Generate(a) => generate_cmd(a),
        LmCmd::Finetune(a) => finetune_cmd(a),
    }
}

fn generate_cmd(a: GenerateArgs) -> Result<ExitCode, UsageError> {
    nasc_runtime::available(a.device).map_err(UsageError)?;
    if !a.model.exists() {
        return Err(UsageError(format!("{}: no such file or folder", a.model.display())));
    }
    let grammar = match &a.grammar {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map(|text| Grammar::detect(&text))
                .map_err(|e| UsageError(format!("--grammar {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let device = a.device;
    let outcome = nasc_runtime::dispatch(device, GenerateJob(&a, grammar)).map_err(UsageError)??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

struct GenerateJob<'a>(&'a GenerateArgs, Option<Grammar>);

impl BackendJob for GenerateJob<'_> {
    type Output = Result<serde_json::Value, UsageError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let fail = |e: nasc_lm::model::ModelError| UsageError(format!("{}: {e}", a.model.display()));
        let mut ckpt = Checkpoint::<B::InnerBackend>::open_with(&a.model, &device, &load_options(a.quantized_base))
            .map_err(fail)?;
        if let Some(dir) = &a.adapter {
            let (model, _) = nasc_lm::lora::load_peft(ckpt.model, dir)
                .map_err(|e| UsageError(format!("adapter {}: {e}", dir.display())))?;
            ckpt.model = model;
        }
        let text = if a.raw {
            a.prompt.clone()
        } else {
            let mut messages = vec![];
            if let Some(system) = &a.system {
                messages.push(Message::new("system", system.clone()));
            }
            messages.push(Message::new("user", a.prompt.clone()));
            ckpt.template.render(&messages, true).map_err(|e| UsageError(format!("chat template: {e}")))?
        };
        // A templated prompt already holds its BOS token when the model wants one.
        let ids = ckpt.tokenizer.encode(&text, a.raw).map_err(|e| UsageError(format!("tokenizer: {e}")))?;
        let mut stop_token_ids: Vec<u32> = ckpt.tokenizer.eos_id().into_iter().collect();
        if !a.raw {
            // Chat models end a turn with their own token, which is not always the EOS token.
            for name in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>"] {
                stop_token_ids.extend(ckpt.tokenizer.token_id(name));
            }
        }
        let params = SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            max_new_tokens: a.max_new_tokens,
            stop: a.stop.clone(),
            stop_token_ids,
            seed: a.seed,
            n: a.n,
        };
        let constraint = match &self.1 {
            Some(grammar) => {
                let shown = a.grammar.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                let c = Constrainer::new(&ckpt.tokenizer, &params.stop_token_ids, ckpt.model.config.vocab_size)
                    .map_err(|e| UsageError(format!("--grammar {shown}: {e}")))?;
                Some(c.compile(grammar).map_err(|e| UsageError(format!("--grammar {shown}: {e}")))?)
            }
            None => None,
        };
        let stream = a.n == 1 && !a.json;
        let mut out = std::io::stdout().lock();
        let g = generate_constrained(&ckpt.model, &ckpt.tokenizer, &ids, &params, constraint.as_ref(), |_, piece| {
            if stream {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        })
        .map_err(|e| UsageError(e.to_string()))?;
        drop(out);
        if !a.json {
            print_text(&g, stream);
        }
        Ok(json(&a.model, &g))
    }
}

fn print_text(g: &Generation, streamed: bool) {
    if streamed {
        println!();
    } else {
        for (i, c) in g.completions.iter().enumerate() {
            println!("--- reply {} ({} tokens, {}) ---", i + 1, c.tokens.len(), c.finish.as_str());
            println!("{}", c.text);
        }
    }
    eprintln!(
        "{} prompt tokens, {} generated in {:.2} s ({:.1} tokens/s; prefill {:.2} s)",
        g.prompt_tokens,
        g.generated_tokens(),
        g.prefill_seconds + g.decode_seconds,
        g.tokens_per_second(),
        g.prefill_seconds
    );
}

fn json(model: &std::path::Path, g: &Generation) -> serde_json::Value {
    serde_json::json!({
        "model": model.display().to_string(),
        "prompt_tokens": g.prompt_tokens,
        "completions": g.completions.iter().map(|c| serde_json::json!({
            "text": c.text,
            "token_ids": c.tokens,
            "finish_reason": c.finish.as_str(),
        })).collect::<Vec<_>>(),
        "generated_tokens": g.generated_tokens(),
        "prefill_seconds": g.prefill_seconds,
        "decode_seconds": g.decode_seconds,
        "tokens_per_second": g.tokens_per_second(),
    })
}

fn finetune_cmd(a: FinetuneArgs) -> Result<ExitCode, UsageError> {
    nasc_runtime::available(a.device).map_err(UsageError)?;
    for (what, path) in [("--model", &a.model), ("--data", &a.data)] {
        if !path.exists() {
            return Err(UsageError(format!("{what} {}: no such file or folder", path.display())));
        }
    }
    let targets = nasc_lm::lora::parse_targets(&a.targets).map_err(|e| UsageError(format!("--targets: {e}")))?;
    let lora = LoraConfig { rank: a.rank, alpha: a.alpha, dropout: a.dropout, targets };
    let cfg = TrainConfig {
        lora,
        lr: a.lr,
        epochs: a.epochs,
        batch: a.batch,
        grad_accum: a.grad_accum,
        warmup: a.warmup,
        max_len: a.max_len,
        seed: a.seed,
        weight_decay: a.weight_decay,
        save_every: a.save_every,
    };
    let summary = nasc_runtime::dispatch(a.device, FinetuneJob(&a, cfg)).map_err(UsageError)??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

struct FinetuneJob<'a>(&'a FinetuneArgs, TrainConfig);

impl BackendJob for FinetuneJob<'_> {
    type Output = Result<serde_json::Value, UsageError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let (a, mut cfg) = (self.0, self.1);
        let ckpt = Checkpoint::<B>::open_with(&a.model, &device, &load_options(a.quantized_base))
            .map_err(|e| UsageError(format!("{}: {e}", a.model.display())))?;
        let conversations = finetune::read_jsonl(&a.data).map_err(|e| UsageError(e.to_string()))?;
        let examples = conversations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                finetune::encode_conversation(c, &ckpt.template, &ckpt.tokenizer, cfg.max_len)
                    .map_err(|e| UsageError(format!("{}: conversation {}: {e}", a.data.display(), i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A conversation whose prompt alone fills --max-len keeps no assistant token: it would cost a
        // forward pass per epoch and teach nothing.
        let total = examples.len();
        let examples: Vec<_> =
            examples.into_iter().filter(|e| e.labels.iter().any(|&l| l != finetune::IGNORE)).collect();
        if examples.len() < total && !examples.is_empty() {
            eprintln!(
                "warning: {} of {total} conversations in {} keep no assistant token within --max-len {} and are skipped; \
                 raise --max-len to learn from them",
                total - examples.len(),
                a.data.display(),
                cfg.max_len
            );
        }
        let adapter_err = |e: nasc_lm::lora::LoraError| UsageError(format!("{}: {e}", a.out.display()));
        let (model, start) = if a.resume {
            let step = finetune::saved_step(&a.out)
                .map_err(|e| UsageError(e.to_string()))?
                .ok_or_else(|| UsageError(format!("--resume: {} holds no trainer_state.json", a.out.display())))?;
            let (model, file) = nasc_lm::lora::load_peft(ckpt.model, &a.out).map_err(adapter_err)?;
            if file.config.rank != cfg.lora.rank || file.config.targets != cfg.lora.targets {
                return Err(UsageError(format!(
                    "--resume: the adapter in {} has rank {} on {:?}, not the --rank and --targets given",
                    a.out.display(),
                    file.config.rank,
                    file.config.targets
                )));
            }
            (model, step)
        } else if let Some(dir) = &a.init_adapter {
            let (model, file) = nasc_lm::lora::load_peft(ckpt.model, dir)
                .map_err(|e| UsageError(format!("--init-adapter {}: {e}", dir.display())))?;
            cfg.lora = file.config;
            (model, 0)
        } else {
            (nasc_lm::lora::attach(ckpt.model, &cfg.lora, cfg.seed).map_err(adapter_err)?, 0)
        };
        let base_name = a.model.display().to_string();
        let saving = Saving { dir: &a.out, base_model: &base_name };
        let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start as u64);
        let (model, s) = finetune::train(model, &examples, &cfg, Some(&saving), start, |r| {
            bar.set_length(r.total_steps as u64);
            bar.set_position(r.step as u64);
            bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tokens/s", r.loss, r.lr, r.tokens_per_second));
        })
        .map_err(|e| UsageError(e.to_string()))?;
        bar.finish();
        if let Some(dir) = &a.merge {
            let merged = nasc_lm::lora::merge(model.valid());
            let fail = |e: String| UsageError(format!("--merge {}: {e}", dir.display()));
            nasc_lm::model::save_safetensors(&merged, dir).map_err(|e| fail(e.to_string()))?;
            let tok = dir.join("tokenizer.json");
            ckpt.tokenizer.save_hf_json(&tok).map_err(|e| fail(e.to_string()))?;
            std::fs::write(dir.join("tokenizer_config.json"), ckpt.template.tokenizer_config().to_string())
                .map_err(|e| fail(e.to_string()))?;
        }
        if a.resume && start > 0 && !s.restored_moments {
            eprintln!(
                "warning: {} holds no {} (written by an older nasc); AdamW's moments started afresh at step {start}",
                a.out.display(),
                finetune::MOMENTS
            );
        }
        if !a.json {
            eprintln!(
                "{} steps, final loss {:.4}, {} tokens in {:.1} s ({:.1} tokens/s); adapter in {}",
                s.steps,
                s.final_loss,
                s.tokens,
                s.seconds,
                s.tokens_per_second,
                a.out.display()
            );
        }
        Ok(serde_json::json!({
            "adapter": a.out.display().to_string(),
            "merged": a.merge.as_ref().map(|d| d.display().to_string()),
            "steps": s.steps,
            "final_loss": s.final_loss,
            "losses": s.losses,
            "tokens": s.tokens,
            "seconds": s.seconds,
            "tokens_per_second": s.tokens_per_second,
            "resumed_from_step": start,
            "restored_moments": s.restored_moments,
        }))
    }
}
