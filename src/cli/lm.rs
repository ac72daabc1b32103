//! The language-model commands: `nasc lm generate`.
//! Reads flags, opens the checkpoint through nasc-lora, prints replies as text or JSON; it samples nothing itself.

use super::UsageError;
use crate::train::{self, BackendJob, Device};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nasc_lora::chat::Message;
use nasc_lora::generate::{generate, Generation, SamplingParams};
use nasc_lora::model::Checkpoint;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum LmCmd {
    /// Generate replies to a prompt with a Llama-family model (a .gguf file or a Hugging Face folder).
    Generate(GenerateArgs),
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
    /// Where to run: cpu, wgpu, wgpu:N, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Print the replies as JSON (text, token ids, finish reason, tokens/s) instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: LmCmd) -> Result<ExitCode, UsageError> {
    match cmd {
        LmCmd::Generate(a) => generate_cmd(a),
    }
}

fn generate_cmd(a: GenerateArgs) -> Result<ExitCode, UsageError> {
    train::available(a.device).map_err(UsageError)?;
    if !a.model.exists() {
        return Err(UsageError(format!("{}: no such file or folder", a.model.display())));
    }
    let device = a.device;
    let outcome = train::dispatch(device, GenerateJob(&a)).map_err(UsageError)??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

struct GenerateJob<'a>(&'a GenerateArgs);

impl BackendJob for GenerateJob<'_> {
    type Output = Result<serde_json::Value, UsageError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let fail = |e: nasc_lora::model::ModelError| UsageError(format!("{}: {e}", a.model.display()));
        let ckpt = Checkpoint::<B::InnerBackend>::open(&a.model, &device).map_err(fail)?;
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
        let stream = a.n == 1 && !a.json;
        let mut out = std::io::stdout().lock();
        let g = generate(&ckpt.model, &ckpt.tokenizer, &ids, &params, |_, piece| {
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
