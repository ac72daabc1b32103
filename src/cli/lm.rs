//! The language-model commands: `nasc lm generate` and `nasc lm finetune`.
//! Reads flags, opens the checkpoint through nasc-lm, prints replies or training progress as text or JSON;
//! it samples and trains nothing itself.

use super::UsageError;
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nasc_lm::constrain::Grammar;
use nasc_lm::finetune::TrainConfig;
use nasc_lm::generate::{Generation, SamplingParams};
use nasc_lm::lora::LoraConfig;
use nasc_lm::model::LoadOptions;
use nasc_lm::run::{FinetuneRequest, GenerateRequest, Start};
use nasc_runtime::Device;
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
    /// Give it again to train on several files as one set (e.g. a search's new pairs and the format
    /// corpus replayed beside them).
    #[arg(long, value_name = "FILE", required = true)]
    data: Vec<PathBuf>,
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
    /// Lower a token's logit by this much per time the reply has drawn it (-2 to 2)
    #[arg(long, value_name = "X", default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Lower the logit of every token the reply has drawn by this much (-2 to 2)
    #[arg(long, value_name = "X", default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replies to sample from the prompt, decoded together in one batch (1 to 1024; each holds its
    /// own KV cache).
    #[arg(short = 'n', long = "samples", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1024).map(|n| n as usize))]
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
                .map(|text| (format!("--grammar {}", path.display()), Grammar::detect(&text)))
                .map_err(|e| UsageError(format!("--grammar {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let req = GenerateRequest {
        model: a.model.clone(),
        load: load_options(a.quantized_base),
        adapter: a.adapter.clone(),
        prompt: a.prompt.clone(),
        system: a.system.clone(),
        raw: a.raw,
        params: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            max_new_tokens: a.max_new_tokens,
            stop: a.stop.clone(),
            stop_token_ids: vec![],
            seed: a.seed,
            n: a.n,
            frequency_penalty: a.frequency_penalty,
            presence_penalty: a.presence_penalty,
            logprobs: None,
        },
        grammar,
    };
    // One reply streams as it is decoded; several are printed whole at the end.
    let stream = a.n == 1 && !a.json;
    let mut out = std::io::stdout().lock();
    let g = nasc_lm::run::generate(a.device, &req, |_, piece| {
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    })
    .map_err(UsageError)?;
    drop(out);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json(&a.model, &g)).unwrap_or_default());
    } else {
        print_text(&g, stream);
    }
    Ok(ExitCode::SUCCESS)
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
    for (what, path) in std::iter::once(("--model", &a.model)).chain(a.data.iter().map(|d| ("--data", d))) {
        if !path.exists() {
            return Err(UsageError(format!("{what} {}: no such file or folder", path.display())));
        }
    }
    let targets = nasc_lm::lora::parse_targets(&a.targets).map_err(|e| UsageError(format!("--targets: {e}")))?;
    let lora = LoraConfig { rank: a.rank, alpha: a.alpha, dropout: a.dropout, targets };
    let config = TrainConfig {
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
    let start = match (&a.init_adapter, a.resume) {
        (_, true) => Start::Resume,
        (Some(dir), false) => Start::From(dir.clone()),
        (None, false) => Start::Fresh,
    };
    let req = FinetuneRequest {
        model: a.model.clone(),
        load: load_options(a.quantized_base),
        data: a.data.clone(),
        out: a.out.clone(),
        config,
        start,
        merge: a.merge.clone(),
    };
    let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let done = nasc_lm::run::finetune(a.device, &req, |r| {
        bar.set_length(r.total_steps as u64);
        bar.set_position(r.step as u64);
        bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tokens/s", r.loss, r.lr, r.tokens_per_second));
    })
    .map_err(UsageError)?;
    bar.finish();
    for w in &done.warnings {
        eprintln!("warning: {w}");
    }
    let s = &done.summary;
    if a.json {
        let summary = serde_json::json!({
            "adapter": a.out.display().to_string(),
            "merged": a.merge.as_ref().map(|d| d.display().to_string()),
            "steps": s.steps,
            "final_loss": s.final_loss,
            "losses": s.losses,
            "tokens": s.tokens,
            "seconds": s.seconds,
            "tokens_per_second": s.tokens_per_second,
            "resumed_from_step": done.start_step,
            "restored_moments": s.restored_moments,
        });
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else {
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
    Ok(ExitCode::SUCCESS)
}
