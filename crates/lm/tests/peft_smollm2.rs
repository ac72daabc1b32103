//! Holds nasc's reading of a PEFT adapter to PEFT's own use of it: reference/smollm2_peft.py wrote the adapter with
//! PEFT's `save_pretrained` (reference/smollm2_peft_adapter/) and PEFT + transformers' replies with it
//! (reference/smollm2_peft.json). It runs only when NASC_SMOLLM2_GGUF names SmolLM2-135M-Instruct.Q4_1.gguf.

mod common;

use burn::backend::Flex;
use common::{first_logits, hold_to_case, smollm2};
use nasc_lm::chat::ChatTemplate;
use nasc_lm::lora::load_peft;
use nasc_lm::model::load_gguf;
use nasc_lm::tokenizer::Tokenizer;
use serde_json::Value;

/// As in generate_smollm2.rs: float32 sums in another order move logits by about 1e-4, while
/// the adapter moves the reference's top-5 logits by 0.01 to 0.6 (checked below), so reading a
/// factor transposed, on the wrong projection or with the wrong scale fails by far.
const LOGIT_TOLERANCE: f64 = 1e-3;

#[test]
fn an_adapter_written_by_peft_gives_pefts_logits_and_replies() {
    let Some(file) = smollm2() else { return };
    let reference: Value =
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/reference/smollm2_peft.json")))
            .unwrap();
    let device = Default::default();
    let base = load_gguf::<Flex>(&file, &device).unwrap();
    let adapter = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/smollm2_peft_adapter");
    let (tuned, file_config) = load_peft(base.clone(), adapter).unwrap();
    assert_eq!((file_config.config.rank, file_config.config.targets.len()), (1, 7));
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let eos = reference["eos_token_id"].as_u64().unwrap() as u32;
    let max_new_tokens = reference["max_new_tokens"].as_u64().unwrap() as usize;

    let (mut worst, mut moved): (f64, f64) = (0.0, 0.0);
    for case in reference["cases"].as_array().unwrap() {
        let held = hold_to_case(&tuned, (&tokenizer, &template), case, (eos, max_new_tokens), LOGIT_TOLERANCE, "PEFT");
        worst = worst.max(held.worst);
        let plain = first_logits(&base, &held.ids);
        for want in case["top5_first_step"].as_array().unwrap() {
            let (id, logit) = (want[0].as_u64().unwrap() as usize, want[1].as_f64().unwrap());
            moved = moved.max((plain[id] as f64 - logit).abs());
        }
    }
    // The adapter matters: without it the same logits are far from PEFT's.
    assert!(moved > 100.0 * LOGIT_TOLERANCE, "the adapter moved the top-5 logits by only {moved:.2e}");
    println!("largest top-5 logit difference from PEFT: {worst:.2e}; the adapter moves them by up to {moved:.3}");
}
