//! Helpers shared by the real-model tests: finding the SmolLM2 file, and holding a model to one case of a stored
//! reference (prompt ids, first-step top five, greedy reply). Each test crate uses a part, hence the allow below.
#![allow(dead_code)]

use burn::backend::Flex;
use nasc_lm::chat::{ChatTemplate, Message};
use nasc_lm::generate::{generate, logits_rows, top_indices, Generation, SamplingParams};
use nasc_lm::gguf::GgufFile;
use nasc_lm::model::{KvCache, Llama};
use nasc_lm::tokenizer::Tokenizer;
use serde_json::Value;

#[path = "../../../../tests/common/smollm2.rs"]
mod locate;

/// SmolLM2-135M-Instruct's GGUF, opened (where it is looked for, and what a missing one does:
/// `tests/common/smollm2.rs`).
pub fn smollm2() -> Option<GgufFile> {
    let path = locate::smollm2_path()?;
    Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// `reference/smollm2_greedy.json`: transformers' greedy replies of SmolLM2 to a few prompts.
pub fn greedy_reference() -> Value {
    serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/reference/smollm2_greedy.json"))).unwrap()
}

/// The logits of the token after `ids`.
pub fn first_logits(model: &Llama<Flex>, ids: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config);
    logits_rows(model.forward_last(ids, 1, &mut cache).unwrap()).unwrap().remove(0)
}

/// What [`hold_to_case`] checked, for the caller's own assertions.
pub struct Held {
    pub text: String,
    pub ids: Vec<u32>,
    pub generation: Generation,
    /// The largest difference of a top-five logit from the reference's.
    pub worst: f64,
}

/// Holds `model` to one case of a reference file (`prompt`, `prompt_ids`, `top5_first_step`,
/// `greedy_ids`): the templated prompt's ids, the first step's five most likely tokens in order
/// with logits within `tolerance`, and the greedy reply (stopping at `eos`, at most
/// `max_new_tokens`). `against` names the reference in messages.
pub fn hold_to_case(
    model: &Llama<Flex>,
    (tokenizer, template): (&Tokenizer, &ChatTemplate),
    case: &Value,
    (eos, max_new_tokens): (u32, usize),
    tolerance: f64,
    against: &str,
) -> Held {
    let ids_of = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let prompt = case["prompt"].as_str().unwrap();
    let text = template.render(&[Message::new("user", prompt)], true).unwrap();
    let ids = tokenizer.encode(&text, false).unwrap();
    assert_eq!(ids, ids_of(&case["prompt_ids"]), "prompt ids of {prompt:?}");

    let logits = first_logits(model, &ids);
    let mut worst: f64 = 0.0;
    for (rank, (got, want)) in
        top_indices(&logits, 5).iter().zip(case["top5_first_step"].as_array().unwrap()).enumerate()
    {
        let (want_id, want_logit) = (want[0].as_u64().unwrap() as usize, want[1].as_f64().unwrap());
        assert_eq!(*got, want_id, "{prompt:?}: top-5 rank {rank}");
        let delta = (logits[*got] as f64 - want_logit).abs();
        worst = worst.max(delta);
        assert!(delta < tolerance, "{prompt:?}: rank {rank} logit {} vs {against}'s {want_logit}", logits[*got]);
    }

    let params = SamplingParams { max_new_tokens, stop_token_ids: vec![eos], ..Default::default() };
    let generation = generate(model, tokenizer, &ids, &params, |_, _| {}).unwrap();
    assert_eq!(generation.completions[0].tokens, ids_of(&case["greedy_ids"]), "greedy reply to {prompt:?}");
    Held { text, ids, generation, worst }
}
