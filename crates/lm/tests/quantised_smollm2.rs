//! Holds the real SmolLM2-135M-Instruct on a quantised base (its Q4_1 blocks kept, as `--quantized-base` loads it) to the transformers reference.
//! It runs only when NASC_SMOLLM2_GGUF names the file; reference/smollm2_greedy.json is the same file generate_smollm2.rs reads.

mod common;

use burn::backend::Flex;
use common::{first_logits, greedy_reference, hold_to_case, smollm2};
use nasc_lm::chat::{ChatTemplate, Message};
use nasc_lm::generate::{generate, top_indices, SamplingParams};
use nasc_lm::model::{load_gguf_with, Kernels, LoadOptions};
use nasc_lm::tokenizer::Tokenizer;

/// With 8-bit inputs, how far a top-five logit of the first step may sit from transformers'
/// float32 one. Rounding every product's input to 8 bits per block of 32 (as llama.cpp does)
/// moved them by up to 0.53 here, on logits of 24-35; a wrong block term or a row mixed up
/// with another moves them by whole units or reorders the top five.
const INT8_LOGIT_TOLERANCE: f64 = 0.75;

#[test]
fn smollm2_on_a_quantised_base_decodes_as_transformers_and_batches_rows_as_alone() {
    let Some(file) = smollm2() else { return };
    let reference = greedy_reference();
    let options = LoadOptions { quantised_base: true, ..LoadOptions::default() };
    let model = load_gguf_with::<Flex>(&file, &Default::default(), &options).unwrap();
    assert!(model.has_quantised_base());
    assert!(model.kernels().int8_activations, "8-bit inputs are the default");
    let exact = model.clone().with_kernels(Kernels { int8_activations: false, ..model.kernels() });
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let eos = reference["eos_token_id"].as_u64().unwrap() as u32;
    let max_new_tokens = reference["max_new_tokens"].as_u64().unwrap() as usize;

    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        // Exact products (the blocks dequantised on the fly): transformers' greedy reply, and
        // its logits to the f32 model's tolerance.
        let held = hold_to_case(&exact, (&tokenizer, &template), case, (eos, max_new_tokens), 1e-3, "transformers");
        println!("{prompt:?}: exact products, largest top-5 logit difference {:.1e}", held.worst);

        // 8-bit inputs: the same first choice, the top five close, and a batch of greedy rows
        // that each decode what the lone stream decodes.
        {
            let text = template.render(&[Message::new("user", prompt)], true).unwrap();
            let ids = tokenizer.encode(&text, false).unwrap();
            let logits = first_logits(&model, &ids);
            let top5 = case["top5_first_step"].as_array().unwrap();
            assert_eq!(top_indices(&logits, 1)[0], top5[0][0].as_u64().unwrap() as usize, "{prompt:?}: first choice");
            let mut worst: f64 = 0.0;
            for want in top5 {
                let (id, logit) = (want[0].as_u64().unwrap() as usize, want[1].as_f64().unwrap());
                worst = worst.max((logits[id] as f64 - logit).abs());
            }
            assert!(worst < INT8_LOGIT_TOLERANCE, "{prompt:?}: 8-bit inputs moved a top-5 logit by {worst}");
            let alone = SamplingParams { max_new_tokens, stop_token_ids: vec![eos], ..Default::default() };
            let lone = generate(&model, &tokenizer, &ids, &alone, |_, _| {}).unwrap();
            let batch = generate(&model, &tokenizer, &ids, &SamplingParams { n: 3, ..alone }, |_, _| {}).unwrap();
            for (row, reply) in batch.completions.iter().enumerate() {
                assert_eq!(
                    reply.tokens, lone.completions[0].tokens,
                    "{prompt:?}: batch row {row} against the lone stream"
                );
            }
            println!(
                "{prompt:?}: 8-bit inputs, largest top-5 logit difference {worst:.2}; {} tokens greedy, {:.1} tokens/s alone",
                lone.completions[0].tokens.len(),
                lone.tokens_per_second()
            );
        }
    }
}
