//! Fine-tunes the real SmolLM2-135M-Instruct with LoRA on three (prompt -> short diff) examples until greedy generation
//! reproduces them, and prints the training tokens/s. It runs only when NASC_SMOLLM2_GGUF names the file.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use common::smollm2;
use nasc_lm::chat::{ChatTemplate, Message};
use nasc_lm::finetune::{encode_conversation, train, TrainConfig};
use nasc_lm::generate::{generate, SamplingParams};
use nasc_lm::lora::{attach, LoraConfig, Target};
use nasc_lm::model::load_gguf;
use nasc_lm::tokenizer::Tokenizer;

const EXAMPLES: [(&str, &str); 3] = [
    ("Add a dropout after the first layer.", "--- a\n+++ b\n@@\n conv1\n+dropout(0.1)\n"),
    ("Widen conv2 to 64 channels.", "--- a\n+++ b\n@@\n-conv2(32)\n+conv2(64)\n"),
    ("Replace relu with gelu.", "--- a\n+++ b\n@@\n-relu\n+gelu\n"),
];

#[test]
fn smollm2_learns_three_diffs_with_lora() {
    let Some(file) = smollm2() else { return };
    let device = Default::default();
    let model = load_gguf::<Autodiff<Flex>>(&file, &device).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let conversation = |(u, a): (&str, &str)| vec![Message::new("user", u), Message::new("assistant", a)];
    let data: Vec<_> =
        EXAMPLES.iter().map(|&e| encode_conversation(&conversation(e), &template, &tokenizer, 256).unwrap()).collect();
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: Target::ALL.to_vec() },
        lr: 3e-3,
        epochs: 20,
        batch: 3,
        warmup: 2,
        ..Default::default()
    };
    let model = attach(model, &cfg.lora, 0).unwrap();
    let (model, s) = train(model, &data, &cfg, None, 0, |r| {
        println!("step {:>2}/{}  loss {:.4}  {:.1} tokens/s", r.step, r.total_steps, r.loss, r.tokens_per_second)
    })
    .unwrap();
    println!("{} steps, {} tokens in {:.1} s: {:.1} tokens/s", s.steps, s.tokens, s.seconds, s.tokens_per_second);
    assert!(s.final_loss < 0.1 * s.losses[0], "loss {:?}", s.losses);

    let model = model.valid();
    let eot: Vec<u32> = tokenizer.token_id("<|im_end|>").into_iter().collect();
    for (prompt, diff) in EXAMPLES {
        let text = template.render(&[Message::new("user", prompt)], true).unwrap();
        let ids = tokenizer.encode(&text, false).unwrap();
        let params = SamplingParams { max_new_tokens: 48, stop_token_ids: eot.clone(), ..Default::default() };
        let g = generate(&model, &tokenizer, &ids, &params, |_, _| {}).unwrap();
        assert_eq!(g.completions[0].text, diff, "{prompt}");
    }
}
