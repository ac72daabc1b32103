//! Throughput of generation (one greedy stream; 50 sampled replies to one prompt) and of LoRA training on the CPU.
//! It must not change what it measures between runs: fixed prompt, seed, lengths; it only reads the model file.

//! `cargo run --release -p nasc-lm --example bench_generate -- [MODEL.gguf] [--rounds N] [--burn-too] [--row-dots] [--no-panels] [--quantized-base] [--only generate|stream|batch|train] [--n N] [--epochs N]`
//!
//! The model defaults to `$NASC_SMOLLM2_GGUF`. `--burn-too` runs every measurement twice per
//! round, once with nasc-lm's CPU kernels and once through Burn's generic ops, interleaved, and
//! prints the ratio: on a shared machine only ratios measured side by side mean anything.
//! `--row-dots` (with `--quantized-base`) likewise runs the 8-bit products as one-row integer
//! dot products beside the packed kernel (AVX-512 VNNI or AVX2).
//! `--no-panels` likewise runs the f32 products of decoding steps through `gemm` and the one-row
//! `gemv` beside the packed column panels (`Kernels::panels`).
//! `--grammar FILE` (Lark or GBNF, e.g. `nasc grammar zoo/resnet18.arch`) runs the 50 samples
//! twice per round, held to the grammar and free, interleaved, and prints the ratio.
//! `--n N` sets the batch's samples (50 unless given).

use burn::backend::{Autodiff, Flex};
use nasc_lm::chat::Message;
use nasc_lm::constrain::{Constrainer, Grammar};
use nasc_lm::finetune::{encode_conversation, train, TrainConfig};
use nasc_lm::generate::{generate, generate_constrained, SamplingParams};
use nasc_lm::lora::{attach, LoraConfig};
use nasc_lm::model::{Checkpoint, Kernels, LoadOptions};
use std::time::Instant;

struct Args {
    model: String,
    rounds: usize,
    burn_too: bool,
    quantized: bool,
    /// `Some("generate")` (one stream and the batch), `Some("stream")`, `Some("batch")` or
    /// `Some("train")`: run that part alone.
    only: Option<String>,
    /// Training epochs (of two steps each); the rate leaves out the first.
    epochs: usize,
    /// A grammar file: the batch runs held to it and free, interleaved.
    grammar: Option<String>,
    /// Also run 8-bit products as one-row dot products (the path without the packed kernel).
    row_dots: bool,
    /// Also run f32 products without the packed panels.
    no_panels: bool,
    /// Samples in the batch measurement.
    n: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        model: std::env::var("NASC_SMOLLM2_GGUF").unwrap_or_default(),
        rounds: 1,
        burn_too: false,
        quantized: false,
        only: None,
        epochs: 3,
        grammar: None,
        row_dots: false,
        no_panels: false,
        n: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => {
                a.rounds = it.next().and_then(|n| n.parse().ok()).ok_or("--rounds needs a whole number")?;
            }
            "--epochs" => {
                a.epochs =
                    it.next().and_then(|n| n.parse().ok()).filter(|&n| n >= 2).ok_or("--epochs needs 2 or more")?;
            }
            "--n" => {
                a.n = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n >= 1)
                    .ok_or("--n needs a whole number above 0")?;
            }
            "--burn-too" => a.burn_too = true,
            "--row-dots" => a.row_dots = true,
            "--no-panels" => a.no_panels = true,
            "--grammar" => a.grammar = Some(it.next().ok_or("--grammar needs a file")?),
            "--quantized-base" => a.quantized = true,
            "--only" => {
                let part = it.next().unwrap_or_default();
                if !["generate", "stream", "batch", "train"].contains(&part.as_str()) {
                    return Err(format!("--only takes generate, stream, batch or train, not {part:?}"));
                }
                a.only = Some(part);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => a.model = s.to_string(),
        }
    }
    if a.model.is_empty() {
        return Err("give the model's path (or set NASC_SMOLLM2_GGUF)".into());
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let device = Default::default();
    let options = LoadOptions { quantised_base: a.quantized, ..LoadOptions::default() };
    let ckpt = Checkpoint::<Flex>::open_with(&a.model, &device, &options)?;
    let messages = [Message::new("user", "Write a Python function that returns the n-th Fibonacci number.")];
    let prompt = ckpt.tokenizer.encode(&ckpt.template.render(&messages, true)?, false)?;
    println!(
        "model {} ({} prompt tokens, {} threads{})",
        a.model,
        prompt.len(),
        rayon::current_num_threads(),
        if a.quantized { ", quantised base" } else { "" }
    );

    let constraint = match &a.grammar {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let stop: Vec<u32> = ckpt.tokenizer.eos_id().into_iter().collect();
            let started = Instant::now();
            let table = Constrainer::new(&ckpt.tokenizer, &stop, ckpt.model.config.vocab_size)?;
            let built = started.elapsed();
            let c = table.compile(&Grammar::detect(&text)).map_err(|e| format!("{path}: {e}"))?;
            println!(
                "grammar {path}: token table {:.0} ms, compiled in {:.0} ms",
                built.as_secs_f64() * 1e3,
                (started.elapsed() - built).as_secs_f64() * 1e3
            );
            Some(c)
        }
        None => None,
    };
    let one = SamplingParams { max_new_tokens: 64, ..Default::default() };
    let many =
        SamplingParams { max_new_tokens: 32, temperature: 0.8, top_p: 0.95, n: a.n, seed: 7, ..Default::default() };
    // The kernels as by default; with --burn-too also off (Burn's generic ops); with --row-dots
    // also 8-bit products as one-row integer dot products instead of the packed kernel.
    let mut modes = vec![("default", options.kernels)];
    if a.burn_too {
        modes.push(("burn   ", Kernels { cpu: false, ..options.kernels }));
    }
    if a.row_dots {
        modes.push(("row dots", Kernels { vnni: false, ..options.kernels }));
    }
    if a.no_panels {
        modes.push(("no panels", Kernels { panels: false, ..options.kernels }));
    }
    let kernels_for = |on: bool| Kernels { cpu: on, ..options.kernels };
    let only = |part: &str| a.only.as_deref().is_none_or(|o| o == part || (o == "generate" && part != "train"));
    for round in 0..if only("stream") || only("batch") { a.rounds } else { 0 } {
        for &(label, kernels) in &modes {
            let model = ckpt.model.clone().with_kernels(kernels);
            let mut line = format!("round {round} {label}:");
            if only("stream") {
                let g1 = generate(&model, &ckpt.tokenizer, &prompt, &one, |_, _| {})?;
                let d1 = g1.generated_tokens() as f64 / g1.decode_seconds.max(1e-9);
                line += &format!(
                    " one stream {:.1} tok/s (decode only {:.1}, prefill {:.0} ms);",
                    g1.tokens_per_second(),
                    d1,
                    g1.prefill_seconds * 1e3
                );
            }
            if only("batch") {
                let g50 = generate(&model, &ckpt.tokenizer, &prompt, &many, |_, _| {})?;
                line += &format!(
                    " n={} {:.1} tok/s aggregate (decode only {:.1}; {} tokens)",
                    a.n,
                    g50.tokens_per_second(),
                    g50.generated_tokens() as f64 / g50.decode_seconds.max(1e-9),
                    g50.generated_tokens()
                );
                if let Some(c) = &constraint {
                    let held = generate_constrained(&model, &ckpt.tokenizer, &prompt, &many, Some(c), |_, _| {})?;
                    line += &format!(
                        "; with the grammar {:.1} tok/s ({} tokens, {:.2}x free)",
                        held.tokens_per_second(),
                        held.generated_tokens(),
                        held.tokens_per_second() / g50.tokens_per_second()
                    );
                }
            }
            println!("{line}");
        }
    }
    if !only("train") {
        return Ok(());
    }

    // LoRA training: the paper's adapter (all seven projections, r 32) on a few chat examples.
    let ad = Checkpoint::<Autodiff<Flex>>::open_with(&a.model, &device, &options)?;
    let body =
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n".repeat(3);
    let examples = (0..4)
        .map(|i| {
            let convo = [
                Message::new("user", format!("Example {i}: write fib in Python.")),
                Message::new("assistant", format!("```python\n{body}```")),
            ];
            encode_conversation(&convo, &ad.template, &ad.tokenizer, 256)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let training: &[bool] = if a.burn_too { &[true, false] } else { &[true] };
    for &kernels in training {
        let model = attach(ad.model.clone().with_kernels(kernels_for(kernels)), &LoraConfig::default(), 0)?;
        // Epochs of two steps (three unless --epochs); the rate after the first epoch leaves out
        // the first allocations, as the PyTorch reference's later epochs do.
        let cfg = TrainConfig { epochs: a.epochs, batch: 2, ..Default::default() };
        let started = Instant::now();
        let mut marks = vec![];
        let (_, summary) = train(model, &examples, &cfg, None, 0, |r| marks.push((Instant::now(), r.tokens)))?;
        let (t0, n0) = marks[1];
        let (t1, n1) = marks[marks.len() - 1];
        println!(
            "training {}: {:.1} tok/s after the first epoch, {:.1} overall ({} tokens in {:.1} s, loss {:.3})",
            if kernels { "kernels" } else { "burn   " },
            (n1 - n0) as f64 / (t1 - t0).as_secs_f64().max(1e-9),
            summary.tokens_per_second,
            summary.tokens,
            started.elapsed().as_secs_f64(),
            summary.final_loss
        );
    }
    Ok(())
}
