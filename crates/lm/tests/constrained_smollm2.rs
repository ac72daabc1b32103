//! Grammar-constrained decoding with the real SmolLM2-135M-Instruct: a grammar forces a reply the
//! model would not give (greedy, exact text), GBNF and Lark forms of one grammar give the same reply,
//! and n sampled rows each keep their own place in the grammar. It needs the model file
//! (`common::smollm2`); nothing is downloaded.

mod common;

use burn::backend::Flex;
use common::smollm2;
use nasc_lm::chat::{ChatTemplate, Message};
use nasc_lm::constrain::{Constrainer, Grammar};
use nasc_lm::generate::{generate, generate_constrained, FinishReason, SamplingParams};
use nasc_lm::model::{load_gguf, Llama};
use nasc_lm::tokenizer::Tokenizer;

struct Smol {
    model: Llama<Flex>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn load() -> Option<Smol> {
    let file = smollm2()?;
    let model = load_gguf::<Flex>(&file, &Default::default()).unwrap();
    Some(Smol {
        model,
        tokenizer: Tokenizer::from_gguf(&file).unwrap(),
        template: ChatTemplate::from_gguf(&file).unwrap(),
    })
}

impl Smol {
    fn prompt(&self, text: &str) -> Vec<u32> {
        let text = self.template.render(&[Message::new("user", text)], true).unwrap();
        self.tokenizer.encode(&text, false).unwrap()
    }
    fn params(&self, n: usize, temperature: f32) -> SamplingParams {
        let im_end = self.tokenizer.token_id("<|im_end|>").unwrap();
        SamplingParams {
            temperature,
            n,
            seed: 7,
            max_new_tokens: 40,
            stop_token_ids: vec![im_end],
            ..Default::default()
        }
    }
    fn constrainer(&self) -> Constrainer {
        let params = self.params(1, 0.0);
        Constrainer::new(&self.tokenizer, &params.stop_token_ids, self.model.config.vocab_size).unwrap()
    }
}

#[test]
fn a_grammar_forces_a_reply_the_model_would_not_give() {
    let Some(smol) = load() else { return };
    let ids = smol.prompt("What is the capital of France?");
    let params = smol.params(1, 0.0);
    let free = generate(&smol.model, &smol.tokenizer, &ids, &params, |_, _| {}).unwrap();
    let free = &free.completions[0].text;
    assert!(free.contains("Paris"), "{free}");

    let lark =
        Grammar::Lark("start: \"The capital is \" CITY \".\"\nCITY: \"Berlin\" | \"Madrid\" | \"Rome\"\n".into());
    let c = smol.constrainer().compile(&lark).unwrap();
    let held = generate_constrained(&smol.model, &smol.tokenizer, &ids, &params, Some(&c), |_, _| {}).unwrap();
    let reply = &held.completions[0];
    assert_eq!(reply.finish, FinishReason::Stop);
    assert_eq!(reply.text, "The capital is Rome.", "unconstrained: {free}");

    // The same grammar as GBNF, detected as such, gives the same reply.
    let gbnf =
        Grammar::detect("root ::= \"The capital is \" city \".\"\ncity ::= \"Berlin\" | \"Madrid\" | \"Rome\"\n");
    assert!(matches!(gbnf, Grammar::Gbnf(_)));
    let c = smol.constrainer().compile(&gbnf).unwrap();
    let again = generate_constrained(&smol.model, &smol.tokenizer, &ids, &params, Some(&c), |_, _| {}).unwrap();
    assert_eq!(again.completions[0].text, reply.text);
}

#[test]
fn sampled_rows_each_keep_their_own_place_in_the_grammar() {
    let Some(smol) = load() else { return };
    let ids = smol.prompt("Give me a code.");
    let params = smol.params(6, 1.0);
    let grammar = Grammar::Lark("start: /[0-9]{3}/ \"-\" (\"yes\" | \"no\" | \"maybe\")\n".into());
    let c = smol.constrainer().compile(&grammar).unwrap();
    let g = generate_constrained(&smol.model, &smol.tokenizer, &ids, &params, Some(&c), |_, _| {}).unwrap();
    let texts: Vec<&str> = g.completions.iter().map(|c| c.text.as_str()).collect();
    for (c, t) in g.completions.iter().zip(&texts) {
        assert_eq!(c.finish, FinishReason::Stop, "{texts:?}");
        let (digits, word) = t.split_once('-').unwrap_or_else(|| panic!("{t:?} in {texts:?}"));
        assert!(digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()), "{texts:?}");
        assert!(["yes", "no", "maybe"].contains(&word), "{texts:?}");
    }
    let distinct: std::collections::BTreeSet<&&str> = texts.iter().collect();
    assert!(distinct.len() > 1, "six samples at temperature 1 were all {texts:?}");
    // Each row's reply is its own: the same seed gives the same replies, alone or beside others.
    let one = generate_constrained(
        &smol.model,
        &smol.tokenizer,
        &ids,
        &SamplingParams { n: 1, ..params },
        Some(&c),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(one.completions[0].text, texts[0]);
}

#[test]
fn a_grammar_that_does_not_compile_names_its_line() {
    let Some(smol) = load() else { return };
    let e = smol.constrainer().compile(&Grammar::Lark("start: a\na: \"x\" b\n".into())).unwrap_err();
    assert!(e.starts_with("Lark grammar: "), "{e}");
    assert!(e.contains('b'), "{e}");
    let e = smol.constrainer().compile(&Grammar::detect("root ::= \"a\" (\n")).unwrap_err();
    assert!(e.starts_with("GBNF grammar, line 2, column 1: expected `)`"), "{e}");
}
