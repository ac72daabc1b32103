//! The grammar engine nasc decodes with (llguidance) over a vocabulary of single bytes: compiles a
//! Lark grammar and says whether a text is a whole sentence of it, byte by byte, as a decoder would
//! feed it. For checking grammars and what they accept; the language model feeds its own tokens.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use std::sync::{Arc, OnceLock};

/// The end-of-text token of the byte vocabulary (after the 256 bytes).
const EOS: u32 = 256;

fn factory() -> &'static ParserFactory {
    static FACTORY: OnceLock<ParserFactory> = OnceLock::new();
    FACTORY.get_or_init(|| {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        words.push(b"\xFF<eos>".to_vec());
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, EOS), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut f = ParserFactory::new_simple(&env).expect("a byte vocabulary makes a parser factory");
        f.quiet();
        f.limits_mut().verbose_errors = false;
        f
    })
}

/// A compiled grammar, ready to check texts.
pub struct Checker {
    matcher: Matcher,
}

impl Checker {
    /// Compiles Lark text; the error is llguidance's, with the line and column it gives.
    pub fn lark(text: &str) -> Result<Checker, String> {
        let parser =
            factory().create_parser(TopLevelGrammar::from_lark(text.to_string())).map_err(|e| e.to_string())?;
        Ok(Checker { matcher: Matcher::new(Ok(parser)) })
    }

    /// `Ok(())` when `text` is a whole sentence of the grammar; otherwise where it stops fitting.
    pub fn accepts(&self, text: &str) -> Result<(), String> {
        let mut m = self.matcher.deep_clone();
        for (i, b) in text.bytes().enumerate() {
            if m.is_stopped() {
                return Err(format!("the grammar ends before byte {i} ({:?})", excerpt(text, i)));
            }
            m.consume_token(u32::from(b)).map_err(|_| format!("byte {i} does not fit: {:?}", excerpt(text, i)))?;
        }
        if m.is_stopped() || m.is_accepting().unwrap_or(false) {
            Ok(())
        } else {
            Err(format!("the text ends before the grammar does (after {:?})", excerpt(text, text.len())))
        }
    }
}

/// Up to 40 bytes of `text` before byte `i`, and the line it is on.
fn excerpt(text: &str, i: usize) -> String {
    let start = text[..i].char_indices().rev().nth(39).map_or(0, |(j, _)| j);
    let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
    let end = (i..=end).rev().find(|&e| text.is_char_boundary(e)).unwrap_or(i);
    format!("{}⟨here⟩{}", &text[start..i], &text[i..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{gbnf, lark};

    #[test]
    fn a_translated_gbnf_grammar_accepts_its_sentences_and_refuses_others() {
        let g = gbnf::parse("root ::= item (\", \" item)* \".\"\nitem ::= [0-9]+ | \"-\" item\n").unwrap();
        let c = Checker::lark(&lark::print(&g).unwrap()).unwrap();
        c.accepts("12, -3, --40.").unwrap();
        assert!(c.accepts("12, x.").unwrap_err().contains("does not fit"));
        assert!(c.accepts("12, 3").unwrap_err().contains("ends before the grammar"));
    }

    #[test]
    fn a_bad_lark_grammar_is_an_error_with_its_line() {
        let e = Checker::lark("start: foo\nfoo: \"a\" bar\n").err().expect("bar is undefined");
        assert!(e.contains("bar"), "{e}");
    }
}
