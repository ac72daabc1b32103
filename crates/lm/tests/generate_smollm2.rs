//! Holds greedy generation with the real SmolLM2-135M-Instruct to Hugging Face transformers' on the same GGUF file
//! (reference/smollm2_greedy.py wrote reference/smollm2_greedy.json). It runs only when NASC_SMOLLM2_GGUF names the file.

mod common;

use burn::backend::Flex;
use common::{greedy_reference, hold_to_case, smollm2};
use nasc_lm::chat::ChatTemplate;
use nasc_lm::model::load_gguf;
use nasc_lm::tokenizer::Tokenizer;

/// transformers and nasc dequantise Q4_1 to the same f32 weights; what differs is the order of
/// float32 sums over 30 layers (matmul blocking, softmax, RMSNorm). On logits of 24-35 that
/// moved them by at most 5.9e-5 here (the test prints its figure). 1e-3 leaves room for other
/// CPUs' kernels while any real error (a wrong rope pairing, norm or mask) moves logits by whole
/// units; the close calls in the reference (ranks 1 and 2 are 0.08 apart) are far above it.
const LOGIT_TOLERANCE: f64 = 1e-3;

#[test]
fn smollm2_greedy_replies_match_transformers() {
    let Some(file) = smollm2() else { return };
    let reference = greedy_reference();
    let device = Default::default();
    let model = load_gguf::<Flex>(&file, &device).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let eos = reference["eos_token_id"].as_u64().unwrap() as u32;
    assert_eq!(tokenizer.eos_id(), Some(eos));
    let max_new_tokens = reference["max_new_tokens"].as_u64().unwrap() as usize;

    let mut worst: f64 = 0.0;
    for case in reference["cases"].as_array().unwrap() {
        let held =
            hold_to_case(&model, (&tokenizer, &template), case, (eos, max_new_tokens), LOGIT_TOLERANCE, "transformers");
        assert_eq!(held.text, case["prompt_text"].as_str().unwrap());
        let reply = &held.generation.completions[0];
        assert_eq!(reply.text, case["greedy_text"].as_str().unwrap());
        println!(
            "{:?}: {} tokens equal; {:.1} tokens/s",
            case["prompt"].as_str().unwrap(),
            reply.tokens.len(),
            held.generation.tokens_per_second()
        );
        worst = worst.max(held.worst);
    }
    println!("largest top-5 logit difference from transformers: {worst:.2e}");
}
