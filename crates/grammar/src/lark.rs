//! Lark as llguidance reads it: printing a [`Grammar`]. The first rule becomes `start`; lexical
//! rules become UPPERCASE terminals (one regex each); literals are JSON strings, character classes
//! and `.` are `/regex/`s in Rust's regex syntax; repetitions use `{m,n}`.

use crate::{Class, Expr, Grammar, GrammarError};

/// The grammar as Lark text for llguidance.
pub fn print(g: &Grammar) -> Result<String, GrammarError> {
    g.check()?;
    let start = g.rules[0].name.as_str();
    if g.rules.iter().skip(1).any(|r| r.name == "start") {
        return Err(GrammarError { at: None, message: "only the first rule may be named `start`".into() });
    }
    let name = |n: &str| -> String {
        let token = g.get(n).is_some_and(|r| r.token);
        match (n == start, token) {
            (true, _) => "start".to_string(),
            (false, true) => n.to_ascii_uppercase(),
            (false, false) => n.to_string(),
        }
    };
    let mut out = String::new();
    for r in &g.rules {
        // A terminal's body takes the same operators over terminals, literals and regexes.
        out += &format!("{}: {}\n", name(&r.name), rule_expr(&r.body, &name, 0));
    }
    Ok(out)
}

/// A rule body. Precedence: 0 alternatives, 1 sequence, 2 postfix operand.
fn rule_expr(e: &Expr, name: &dyn Fn(&str) -> String, prec: u8) -> String {
    let wrap = |s: String, mine: u8| if mine < prec { format!("({s})") } else { s };
    match e {
        Expr::Empty => "\"\"".into(),
        Expr::Text(t) => serde_json::to_string(t).expect("a string serialises"),
        Expr::Class(c) => format!("/{}/", class(c)),
        Expr::Any => "/(?s:.)/".into(),
        Expr::Ref(n) => name(n),
        Expr::Seq(v) => wrap(v.iter().map(|e| rule_expr(e, name, 2)).collect::<Vec<_>>().join(" "), 1),
        Expr::Alt(v) => wrap(v.iter().map(|e| rule_expr(e, name, 1)).collect::<Vec<_>>().join(" | "), 0),
        Expr::Repeat(inner, min, max) => {
            let base = rule_expr(inner, name, 3);
            let base = if matches!(**inner, Expr::Repeat(..)) { format!("({base})") } else { base };
            format!("{base}{}", repeat(*min, *max))
        }
    }
}

fn repeat(min: u32, max: Option<u32>) -> String {
    match (min, max) {
        (0, None) => "*".into(),
        (1, None) => "+".into(),
        (0, Some(1)) => "?".into(),
        (m, None) => format!("{{{m},}}"),
        (m, Some(n)) if m == n => format!("{{{m}}}"),
        (m, Some(n)) => format!("{{{m},{n}}}"),
    }
}

/// A class in Rust's regex syntax, every character that could mean something escaped.
fn class(c: &Class) -> String {
    let mut s = String::from(if c.negated { "[^" } else { "[" });
    for &(lo, hi) in &c.ranges {
        s += &class_char(lo);
        if hi != lo {
            s.push('-');
            s += &class_char(hi);
        }
    }
    if c.ranges.is_empty() {
        // `[]` matches nothing and `[^]` everything; Rust's regex spells them this way.
        return if c.negated { "(?s:.)".into() } else { "[^\\x{0}-\\x{10FFFF}]".into() };
    }
    s.push(']');
    s
}

fn class_char(c: char) -> String {
    match c {
        '\\' | ']' | '[' | '^' | '-' | '&' | '~' | '/' => format!("\\{c}"),
        c if c.is_control() || c.is_whitespace() => format!("\\x{{{:X}}}", c as u32),
        c => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_terminals_literals_and_classes_print_in_llguidance_lark() {
        let mut g = Grammar::default();
        g.define("line", Expr::seq([Expr::text("x = \"1\"\n"), Expr::rule("word"), Expr::opt(Expr::rule("tail"))]));
        g.define_token(
            "word",
            Expr::seq([
                Expr::Class(Class { negated: false, ranges: vec![('a', 'z'), ('_', '_')] }),
                Expr::star(Expr::Class(Class::of("a-/]"))),
            ]),
        );
        g.define("tail", Expr::Repeat(Box::new(Expr::alt([Expr::text("a"), Expr::Any])), 2, Some(4)));
        let text = print(&g).unwrap();
        assert_eq!(
            text,
            "start: \"x = \\\"1\\\"\\n\" WORD tail?\nWORD: /[a-z_]/ /[a\\-\\/\\]]/*\ntail: (\"a\" | /(?s:.)/){2,4}\n"
        );
    }

    #[test]
    fn a_grammar_read_from_gbnf_prints_as_lark() {
        let g = crate::gbnf::parse("root ::= item (\",\" item)*\nitem ::= [0-9]+ | \"-\" item\n").unwrap();
        let text = print(&g).unwrap();
        assert_eq!(text, "start: item (\",\" item)*\nitem: /[0-9]/+ | \"-\" item\n");
    }

    #[test]
    fn a_second_start_rule_is_refused() {
        let mut g = Grammar::default();
        g.define("top", Expr::rule("start"));
        g.define("start", Expr::text("a"));
        assert!(print(&g).unwrap_err().message.contains("`start`"));
    }
}
