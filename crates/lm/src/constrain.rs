//! Grammar-constrained decoding: a grammar (Lark, GBNF or a JSON schema) compiled by llguidance
//! against the checkpoint's own vocabulary, and one matcher per reply that masks the tokens the
//! grammar does not allow before each draw. It decides which tokens may be drawn, never which is.
//!
//! The token table is built from the tokenizer's own vocabulary (its `tokenizer.json` form, read by
//! llguidance's helper), so no second `tokenizers` is compiled. GBNF is translated to Lark by
//! `nasc-grammar`; the dialect of a grammar text is told apart by [`Grammar::detect`].

use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;

/// A grammar as a request or a file gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Lark as llguidance reads it (an optional `%llguidance {}` line first).
    Lark(String),
    /// GBNF, llama.cpp's format (`root ::= ...`).
    Gbnf(String),
    /// A JSON schema the reply must be an instance of.
    JsonSchema(serde_json::Value),
    /// A regular expression (Rust's syntax) the whole reply must match.
    Regex(String),
    /// One of these texts exactly.
    Choice(Vec<String>),
}

impl Grammar {
    /// A grammar text in either dialect: Lark when it starts with `%llguidance`, GBNF when a rule
    /// is defined with `::=`, Lark otherwise (`name: ...`).
    pub fn detect(text: &str) -> Grammar {
        let body: String = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !t.starts_with('#') && !t.starts_with("//")
            })
            .collect::<Vec<_>>()
            .join("\n");
        if body.trim_start().starts_with("%llguidance") {
            Grammar::Lark(text.to_string())
        } else if body.contains("::=") {
            Grammar::Gbnf(text.to_string())
        } else {
            Grammar::Lark(text.to_string())
        }
    }

    /// The dialect's name, for messages.
    pub fn dialect(&self) -> &'static str {
        match self {
            Grammar::Lark(_) => "Lark",
            Grammar::Gbnf(_) => "GBNF",
            Grammar::JsonSchema(_) => "JSON schema",
            Grammar::Regex(_) => "regex",
            Grammar::Choice(_) => "choice",
        }
    }

    fn top_level(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            Grammar::Gbnf(text) => {
                let g = nasc_grammar::gbnf::parse(text).map_err(|e| format!("GBNF grammar, {e}"))?;
                let lark = nasc_grammar::lark::print(&g).map_err(|e| format!("GBNF grammar: {e}"))?;
                TopLevelGrammar::from_lark(lark)
            }
            Grammar::JsonSchema(schema) => {
                // Compact JSON: a small model given free whitespace can spend its reply on it.
                let mut schema = schema.clone();
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Choice(options) => {
                if options.is_empty() {
                    return Err("choice: the list of choices is empty".into());
                }
                let alts: Vec<String> =
                    options.iter().map(|o| serde_json::to_string(o).expect("a string serialises")).collect();
                TopLevelGrammar::from_lark(format!("start: {}\n", alts.join(" | ")))
            }
        })
    }
}

/// The vocabulary's side of constrained decoding, built once per loaded tokenizer: llguidance's
/// token table and its parser factory.
pub struct Constrainer {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constrainer")
    }
}

/// The token environment llguidance asks for: the table, and the checkpoint's own tokenizer for
/// text the grammar forces.
struct Env {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |t| match self.hf.encode(t, false) {
            Ok(e) => e.get_ids().to_vec(),
            Err(_) => self.trie.greedy_tokenize(t.as_bytes()),
        })
    }
}

impl Constrainer {
    /// The table of `tokenizer`'s vocabulary for logits rows of `n_logits` entries; `stop` are
    /// the ids that end a reply (the first is the main one), allowed only where the grammar may end.
    pub fn new(tokenizer: &Tokenizer, stop: &[u32], n_logits: usize) -> Result<Constrainer, String> {
        let Some(&eos) = stop.first() else {
            return Err("constrained decoding needs an end-of-text token, and the checkpoint names none".into());
        };
        let mut hf = tokenizer.hf().clone();
        let json: serde_json::Value = hf
            .to_string(false)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
            .map_err(|e| format!("the tokenizer cannot be read as a vocabulary: {e}"))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| format!("the tokenizer's vocabulary cannot be turned into bytes: {e}"))?;
        if words.len() > n_logits {
            return Err(format!("the tokenizer has {} tokens but the model's logits only {n_logits}", words.len()));
        }
        words.resize(n_logits, Vec::new());
        let stop: Vec<u32> = stop.iter().copied().filter(|&t| (t as usize) < n_logits).collect();
        let trie = TokTrie::from(&TokRxInfo::new(n_logits as u32, eos), &words).with_eos_tokens(&stop);
        // Text the grammar forces is plain text even where it spells a special token.
        hf.set_encode_special_tokens(true);
        let env: TokEnv = Arc::new(Env { trie, hf });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        let limits = factory.limits_mut();
        limits.verbose_errors = false;
        // An Earley row holds two items per rule of a chain (`r0: "a" | r1`, ...); past this limit
        // llguidance allows no token rather than failing, so a chain of a thousand rules ended
        // every reply at once. Ten times its default.
        limits.max_items_in_row *= 10;
        Ok(Constrainer { factory: Arc::new(factory) })
    }

    /// Compiles `grammar`. The error names the dialect and, where the compiler gives one, the line.
    ///
    /// The compilers (nasc's GBNF translation, llguidance's) recurse through the grammar's rules, so
    /// they run on a thread with a stack of [`COMPILE_STACK`]: a chain of thousands of rules, which
    /// a client may send, is an error or a grammar, never an overflow of the caller's stack. The
    /// first mask is computed here too: a grammar past the engine's limits fails there, and is an
    /// error now rather than an empty reply later.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, String> {
        let dialect = grammar.dialect();
        let failed = |e: String| format!("{dialect} grammar: {}", crate::clipped(&engine_message(&e), MESSAGE_CHARS));
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("grammar-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || {
                    let parser = self.factory.create_parser(grammar.top_level()?).map_err(|e| failed(e.to_string()))?;
                    let mut matcher = Matcher::new(Ok(parser));
                    if let Err(e) = matcher.compute_mask() {
                        let e = e.to_string();
                        // A grammar that allows nothing at all ends its replies at once
                        // (`no_allowed_token`); one the engine cannot run is the caller's error.
                        if !e.starts_with("NoExtensionBias") {
                            return Err(failed(e));
                        }
                    }
                    Ok(Constraint { matcher })
                })
                .map_err(|e| format!("cannot start the grammar compiler: {e}"))?
                .join()
                .map_err(|_| format!("{dialect} grammar: the compiler failed"))?
        })
    }
}

/// The stack the grammar compilers run on (reserved, touched only as deep as they go).
pub const COMPILE_STACK: usize = 512 << 20;

/// The most of an engine's message a diagnostic shows (characters): grammars are client
/// input, and an error may quote a whole line of one.
const MESSAGE_CHARS: usize = 400;

/// llguidance's message, its internal limits said in words.
fn engine_message(e: &str) -> String {
    let e = e.trim_end_matches("\n<non-verbose/>");
    if e.contains("symbols.len() < u16::MAX") {
        return "the grammar is too large for the engine (at most about 65,000 symbols)".into();
    }
    // A caught panic carries its backtrace: the first line says what failed.
    match e.split_once("\nstack backtrace") {
        Some((head, _)) => head.to_string(),
        None => e.to_string(),
    }
}

/// One reply's place in its grammar.
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

/// What the grammar says after a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// More tokens may follow.
    Going,
    /// The grammar is complete and allows nothing more: the reply ends here.
    Complete,
}

impl Constraint {
    /// A copy at the same place, for another reply to the same prompt (its own state, so replies
    /// can be masked on separate threads).
    pub fn fork(&self) -> Constraint {
        Constraint { matcher: self.matcher.deep_clone() }
    }

    /// Sets every token the grammar does not allow next to −∞ in `logits`. An error when it
    /// allows none (the grammar is at a dead end) or has failed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let mask = self.matcher.compute_mask().map_err(|e| dead_end(&e.to_string()))?;
        mask.iter_unset_entries(|i| {
            if let Some(l) = logits.get_mut(i) {
                *l = f32::NEG_INFINITY;
            }
        });
        Ok(())
    }

    /// Moves past `token` (one [`Constraint::mask`] allowed).
    pub fn advance(&mut self, token: u32) -> Result<Step, String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())?;
        Ok(if self.matcher.is_stopped() { Step::Complete } else { Step::Going })
    }
}

fn dead_end(e: &str) -> String {
    if e.starts_with("NoExtensionBias") {
        "the grammar allows no further token here and is not complete".into()
    } else {
        format!("the grammar failed: {}", e.trim_end_matches("\n<non-verbose/>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_are_told_apart_by_their_syntax() {
        assert!(matches!(Grammar::detect("root ::= \"a\""), Grammar::Gbnf(_)));
        assert!(matches!(Grammar::detect("# a comment with ::= in it\nstart: \"a\""), Grammar::Lark(_)));
        assert!(matches!(Grammar::detect("%llguidance {}\nstart: x\nx: \"::=\""), Grammar::Lark(_)));
        assert!(matches!(Grammar::detect("start: \"a\" | \"b\""), Grammar::Lark(_)));
    }
}
