//! The lines of the arch language as a context-free grammar (`nasc-grammar`), derived by code from
//! the grammar of record, `grammar/arch.pest`: everything that may stand on one line of a program.
//! It must not be a second hand-written copy of the language. Constrained decoding uses the
//! narrower, typed `stmts`, whose every line is held to this one by a test.
//!
//! A line is what `arch.pest` puts between two `line_end`s: the alternatives of `item` and `stmt`,
//! each cut at its first `line_end` (so `block f(a) {` is the head of `block_def`), a closing `}`,
//! or nothing, with optional indentation and an optional trailing comment. pest's implicit
//! whitespace becomes one optional space between items: canonical text never has more, and a model
//! that may write any number of spaces can write them forever. Lookaheads cannot be said in a
//! context-free grammar and are dropped, except `!x ~ ANY`, which becomes "any character but x's"
//! (comments); the grammar so accepts a little more than pest, which the parser then judges.

use nasc_grammar::{Class, Expr, Grammar};
use pest_meta::ast::{Expr as Pest, Rule as PestRule, RuleType};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The grammar of record.
pub const ARCH_PEST: &str = include_str!("../../grammar/arch.pest");

/// Adds the rules of one line of a program (its content, without the line break) to `g`, their
/// names starting with `arch_`, and returns a reference to the line's rule. Without `comments`,
/// a line holds a statement (or a brace) and no comment, and is never blank: what a model adds
/// to a network, with no tokens to spend on text that changes nothing. Either way it also defines
/// `arch_item_line` (what may stand at the top level: `arch`, `block` and `net` heads) and
/// `arch_body_line` (what may stand in a body: statements, `repeat` heads, `}`), without comments.
pub fn add_line_rules(g: &mut Grammar, comments: bool) -> Result<Expr, String> {
    // Derived once per process: the search builds a grammar for every request it sends.
    static WITH: OnceLock<Result<Grammar, String>> = OnceLock::new();
    static WITHOUT: OnceLock<Result<Grammar, String>> = OnceLock::new();
    let cell = if comments { &WITH } else { &WITHOUT };
    let derived = cell.get_or_init(|| {
        let mut d = Grammar::default();
        derive(&mut d, comments).map(|_| d)
    });
    for r in &derived.as_ref().map_err(Clone::clone)?.rules {
        if r.token {
            g.define_token(&r.name, r.body.clone());
        } else {
            g.define(&r.name, r.body.clone());
        }
    }
    Ok(Expr::rule("arch_line"))
}

fn derive(g: &mut Grammar, comments: bool) -> Result<Expr, String> {
    let pairs = pest_meta::parser::parse(pest_meta::parser::Rule::grammar_rules, ARCH_PEST)
        .map_err(|e| format!("arch.pest does not parse: {e}"))?;
    let rules = pest_meta::parser::consume_rules(pairs).map_err(|e| {
        format!("arch.pest is not a valid grammar: {}", e.first().map(|e| e.to_string()).unwrap_or_default())
    })?;
    let mut t = Translator {
        pest: rules.iter().map(|r| (r.name.as_str(), r)).collect(),
        done: HashMap::new(),
        keywords: Default::default(),
        g,
    };
    let ws = t.g.define("arch_ws", Expr::opt(Expr::text(" ")));
    let mut forms = Vec::new();
    let mut groups = Vec::new();
    for group in ["item", "stmt"] {
        let rule = t.rule(group)?;
        let mut these = Vec::new();
        for alt in alternatives(&rule.expr) {
            these.push(t.line_form(alt)?);
        }
        forms.extend(these.iter().cloned());
        groups.push(these);
    }
    forms.push(Expr::text("}"));
    let comment = t.reference("comment", true)?;
    let form = t.g.define("arch_form", Expr::alt(forms));
    let indent = t.g.define_token("arch_indent", Expr::Repeat(Box::new(Expr::text(" ")), 1, Some(32)));
    // The same lines by where they may stand: at the top level (the heads of `item`'s forms) or
    // in a body (`stmt`'s forms and the closing brace), without comments.
    let items = Expr::alt(groups[0].clone());
    t.g.define("arch_item_line", Expr::seq([Expr::opt(indent.clone()), items]));
    let body = Expr::alt(groups[1].iter().cloned().chain([Expr::text("}")]));
    t.g.define("arch_body_line", Expr::seq([Expr::opt(indent.clone()), body]));
    let line = if comments {
        let body = Expr::alt([Expr::seq([form, Expr::opt(Expr::seq([ws, comment.clone()]))]), comment]);
        Expr::seq([Expr::opt(indent), Expr::opt(body)])
    } else {
        Expr::seq([Expr::opt(indent), form])
    };
    Ok(t.g.define("arch_line", line))
}

struct Translator<'a, 'g> {
    pest: HashMap<&'a str, &'a PestRule>,
    /// Rules already translated, by (pest name, atomic).
    done: HashMap<(String, bool), String>,
    /// Our names of the rules that end with a negative lookahead (keywords).
    keywords: std::collections::HashSet<String>,
    g: &'g mut Grammar,
}

/// The alternatives of a choice, left to right.
fn alternatives(e: &Pest) -> Vec<&Pest> {
    match e {
        Pest::Choice(a, b) => {
            let mut v = alternatives(a);
            v.extend(alternatives(b));
            v
        }
        e => vec![e],
    }
}

/// The items of a sequence, left to right.
fn items(e: &Pest) -> Vec<&Pest> {
    match e {
        Pest::Seq(a, b) => {
            let mut v = items(a);
            v.extend(items(b));
            v
        }
        e => vec![e],
    }
}

impl<'a> Translator<'a, '_> {
    fn rule(&self, name: &str) -> Result<&'a PestRule, String> {
        self.pest.get(name).copied().ok_or_else(|| format!("arch.pest has no rule `{name}`"))
    }

    /// One alternative of `item` or `stmt` as a line: a rule's expression up to its first
    /// `line_end` (or all of it).
    fn line_form(&mut self, alt: &Pest) -> Result<Expr, String> {
        let Pest::Ident(name) = alt else {
            return self.expr(alt, false);
        };
        let rule = self.rule(name)?;
        let all = items(&rule.expr);
        let head: Vec<&Pest> =
            all.iter().copied().take_while(|e| !matches!(e, Pest::Ident(n) if n == "line_end")).collect();
        if head.len() == all.len() {
            return self.reference(name, false);
        }
        let atomic = matches!(rule.ty, RuleType::Atomic | RuleType::CompoundAtomic);
        let parts = head.iter().map(|e| self.expr(e, atomic)).collect::<Result<Vec<_>, _>>()?;
        let body = self.join(parts, atomic);
        Ok(self.g.define(&format!("arch_{name}_head"), body))
    }

    /// Items in sequence, with pest's implicit whitespace between them unless `atomic`.
    /// A keyword ends with `!id_char` in pest (`net` is not `network`); before a name, the space
    /// between them is then required, or `arch_x` would read as `arch` and `_x`.
    fn join(&mut self, parts: Vec<Expr>, atomic: bool) -> Expr {
        let mut out: Vec<Expr> = Vec::new();
        for p in parts {
            if p == Expr::Empty {
                continue;
            }
            if !atomic && !out.is_empty() {
                let after_keyword = matches!(out.last(), Some(Expr::Ref(r)) if self.keywords.contains(r));
                let name_next = matches!(&p, Expr::Ref(r) if r == "arch_ident");
                out.push(if after_keyword && name_next { Expr::text(" ") } else { Expr::rule("arch_ws") });
            }
            out.push(p);
        }
        Expr::seq(out)
    }

    /// A reference to pest's rule `name` (translated on first use), or a built-in.
    fn reference(&mut self, name: &str, atomic: bool) -> Result<Expr, String> {
        let class = |ranges: &[(char, char)]| Ok(Expr::Class(Class { negated: false, ranges: ranges.to_vec() }));
        match name {
            "ASCII_DIGIT" => return class(&[('0', '9')]),
            "ASCII_NONZERO_DIGIT" => return class(&[('1', '9')]),
            "ASCII_ALPHA" => return class(&[('a', 'z'), ('A', 'Z')]),
            "ASCII_ALPHANUMERIC" => return class(&[('a', 'z'), ('A', 'Z'), ('0', '9')]),
            "NEWLINE" => return Ok(Expr::text("\n")),
            "ANY" => return Ok(Expr::Any),
            "SOI" | "EOI" => return Ok(Expr::Empty),
            "WHITESPACE" => return Ok(Expr::rule("arch_ws")),
            _ => {}
        }
        let rule = self.rule(name)?;
        let atomic = atomic || matches!(rule.ty, RuleType::Atomic | RuleType::CompoundAtomic);
        let key = (name.to_string(), atomic);
        if let Some(done) = self.done.get(&key) {
            return Ok(Expr::rule(done.clone()));
        }
        let ours = if atomic && !matches!(rule.ty, RuleType::Atomic | RuleType::CompoundAtomic) {
            format!("arch_{name}_atomic")
        } else {
            format!("arch_{name}")
        };
        self.done.insert(key, ours.clone());
        if matches!(items(&rule.expr).last(), Some(Pest::NegPred(_))) {
            self.keywords.insert(ours.clone());
        }
        // Defined first (as a placeholder) so that recursive references find it.
        self.g.define(&ours, Expr::Empty);
        let body = self.expr(&rule.expr, atomic)?;
        if atomic {
            self.g.define_token(&ours, body);
        } else {
            self.g.define(&ours, body);
        }
        Ok(Expr::rule(ours))
    }

    fn expr(&mut self, e: &Pest, atomic: bool) -> Result<Expr, String> {
        Ok(match e {
            Pest::Str(s) => Expr::text(s.clone()),
            Pest::Insens(s) => Expr::seq(s.chars().map(|c| {
                let (l, u) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
                Expr::Class(Class { negated: false, ranges: vec![(l, l), (u, u)] })
            })),
            Pest::Range(a, b) => {
                let (a, b) = (single_char(a)?, single_char(b)?);
                Expr::Class(Class { negated: false, ranges: vec![(a, b)] })
            }
            Pest::Ident(n) => self.reference(n, atomic)?,
            // Lookaheads say nothing a line can hold; `!x ~ ANY` is handled in `Seq`.
            Pest::PosPred(_) | Pest::NegPred(_) => Expr::Empty,
            Pest::Seq(..) => {
                let list = items(e);
                let mut parts = Vec::new();
                let mut i = 0;
                while i < list.len() {
                    if let (Pest::NegPred(x), Some(Pest::Ident(any))) = (list[i], list.get(i + 1)) {
                        if any == "ANY" {
                            parts.push(Expr::Class(Class { negated: true, ranges: first_chars(x)? }));
                            i += 2;
                            continue;
                        }
                    }
                    parts.push(self.expr(list[i], atomic)?);
                    i += 1;
                }
                self.join(parts, atomic)
            }
            Pest::Choice(..) => {
                let alts = alternatives(e).into_iter().map(|a| self.expr(a, atomic)).collect::<Result<Vec<_>, _>>()?;
                Expr::alt(alts)
            }
            Pest::Opt(x) => Expr::opt(self.expr(x, atomic)?),
            Pest::Rep(x) | Pest::RepOnce(x) if atomic => {
                let one = self.expr(x, atomic)?;
                if matches!(e, Pest::Rep(_)) {
                    Expr::star(one)
                } else {
                    Expr::plus(one)
                }
            }
            Pest::Rep(x) | Pest::RepOnce(x) => {
                let one = self.expr(x, atomic)?;
                let more = Expr::star(Expr::seq([Expr::rule("arch_ws"), one.clone()]));
                let some = Expr::seq([one, more]);
                if matches!(e, Pest::Rep(_)) {
                    Expr::opt(some)
                } else {
                    some
                }
            }
            Pest::RepExact(x, n) => Expr::Repeat(Box::new(self.expr(x, atomic)?), *n, Some(*n)),
            Pest::RepMin(x, n) => Expr::Repeat(Box::new(self.expr(x, atomic)?), *n, None),
            Pest::RepMax(x, n) => Expr::Repeat(Box::new(self.expr(x, atomic)?), 0, Some(*n)),
            Pest::RepMinMax(x, m, n) => Expr::Repeat(Box::new(self.expr(x, atomic)?), *m, Some(*n)),
            other => return Err(format!("arch.pest uses {other:?}, which has no context-free form")),
        })
    }
}

fn single_char(s: &str) -> Result<char, String> {
    let mut chars = s.trim_matches('\'').chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(format!("arch.pest's range bound {s} is not one character")),
    }
}

/// The first characters of the strings a negated lookahead refuses (`!("\n" | "\r\n")`).
fn first_chars(e: &Pest) -> Result<Vec<(char, char)>, String> {
    alternatives(e)
        .into_iter()
        .map(|a| match a {
            Pest::Str(s) => s.chars().next().map(|c| (c, c)).ok_or_else(|| "an empty string".to_string()),
            other => Err(format!("a lookahead on {other:?} before ANY has no character-class form")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lark() -> String {
        let mut g = Grammar::default();
        let line = add_line_rules(&mut g, true).unwrap();
        let mut top = Grammar::default();
        top.define("start", line);
        top.rules.extend(g.rules);
        nasc_grammar::lark::print(&top).unwrap()
    }

    #[test]
    fn the_line_grammar_follows_arch_pest() {
        let text = lark();
        // The heads of multi-line forms, cut at their line break.
        assert!(text.contains("arch_block_def_head: ARCH_BLOCK_KW \" \" ARCH_IDENT arch_ws \"(\""), "{text}");
        // A keyword and the name after it need their space: `arch_x` is one name.
        assert!(text.contains("arch_arch_decl: ARCH_ARCH_KW \" \" ARCH_IDENT\n"), "{text}");
        assert!(text.contains("arch_repeat_stmt_head:"), "{text}");
        // Atomic rules are terminals; the comment's `!NEWLINE ~ ANY` is a class.
        assert!(text.contains("ARCH_IDENT: (/[a-zA-Z]/ | \"_\") (/[a-zA-Z0-9]/ | \"_\")*\n"), "{text}");
        assert!(text.contains("ARCH_COMMENT: \"#\" /[^\\x{A}\\x{D}]/*\n"), "{text}");
        assert!(text.contains("arch_form: arch_arch_decl | arch_block_def_head | arch_net_def_head | arch_repeat_stmt_head | arch_bind_stmt | arch_pipeline | \"}\"\n"), "{text}");
        nasc_grammar::gbnf::print(&{
            let mut g = Grammar::default();
            let line = add_line_rules(&mut g, true).unwrap();
            let mut top = Grammar::default();
            top.define("start", line);
            top.rules.extend(g.rules);
            top
        })
        .unwrap();
    }
}
