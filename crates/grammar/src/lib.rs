//! nasc-grammar: context-free grammars over characters for constrained decoding. One description
//! ([`Grammar`]) prints as Lark for llguidance ([`lark`]) and as GBNF for llama.cpp and vLLM
//! ([`gbnf`]); GBNF text reads back into a [`Grammar`], so a GBNF request can be served by
//! llguidance. Pure text in, text out: no I/O, no model, no Burn.
//!
//! A rule's body matches characters exactly; there is no implicit whitespace. A producer that wants
//! spaces between items writes a rule for them and refers to it, so both printers mean the same.

#[cfg(feature = "engine")]
pub mod engine;
pub mod gbnf;
pub mod lark;
pub mod without;

pub use without::Excluded;

/// A set of characters: ranges, or everything but them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Class {
    pub negated: bool,
    /// Inclusive ranges; a single character is `(c, c)`.
    pub ranges: Vec<(char, char)>,
}

impl Class {
    /// The characters of `chars`, each alone.
    pub fn of(chars: &str) -> Class {
        Class { negated: false, ranges: chars.chars().map(|c| (c, c)).collect() }
    }
    /// Every character but those of `chars`.
    pub fn not(chars: &str) -> Class {
        Class { negated: true, ..Class::of(chars) }
    }
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// The empty string.
    Empty,
    /// This text exactly.
    Text(String),
    /// One character of the class.
    Class(Class),
    /// Any one character.
    Any,
    /// The rule of this name.
    Ref(String),
    /// Each in turn.
    Seq(Vec<Expr>),
    /// One of them.
    Alt(Vec<Expr>),
    /// `min` to `max` (unbounded when `None`) of it, one after another.
    Repeat(Box<Expr>, u32, Option<u32>),
}

impl Expr {
    pub fn text(s: impl Into<String>) -> Expr {
        Expr::Text(s.into())
    }
    pub fn rule(name: impl Into<String>) -> Expr {
        Expr::Ref(name.into())
    }
    pub fn opt(e: Expr) -> Expr {
        Expr::Repeat(Box::new(e), 0, Some(1))
    }
    pub fn star(e: Expr) -> Expr {
        Expr::Repeat(Box::new(e), 0, None)
    }
    pub fn plus(e: Expr) -> Expr {
        Expr::Repeat(Box::new(e), 1, None)
    }
    /// A sequence, flattened: nested sequences and empty items are folded in.
    pub fn seq(items: impl IntoIterator<Item = Expr>) -> Expr {
        let mut out = Vec::new();
        for e in items {
            match e {
                Expr::Empty => {}
                Expr::Seq(inner) => out.extend(inner),
                e => out.push(e),
            }
        }
        match out.len() {
            0 => Expr::Empty,
            1 => out.pop().expect("one item"),
            _ => Expr::Seq(out),
        }
    }
    /// A choice; one alternative is itself.
    pub fn alt(items: impl IntoIterator<Item = Expr>) -> Expr {
        let mut out: Vec<Expr> = Vec::new();
        for e in items {
            match e {
                Expr::Alt(inner) => out.extend(inner),
                e => out.push(e),
            }
        }
        if out.len() == 1 {
            out.pop().expect("one item")
        } else {
            Expr::Alt(out)
        }
    }

    fn refs<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Ref(n) => out.push(n),
            Expr::Seq(v) | Expr::Alt(v) => v.iter().for_each(|e| e.refs(out)),
            Expr::Repeat(e, ..) => e.refs(out),
            Expr::Empty | Expr::Text(_) | Expr::Class(_) | Expr::Any => {}
        }
    }
}

/// A named rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Lower-case letters, digits and `_`, starting with a letter (see [`Grammar::check`]).
    pub name: String,
    pub body: Expr,
    /// A lexical rule: its body is regular and refers only to other lexical rules, so Lark gets it
    /// as one terminal (a single regex, matched as one lexeme, much cheaper to mask than a rule
    /// over characters). GBNF has no such distinction and prints it as any rule.
    pub token: bool,
}

/// Rules, the first of which is where a match starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grammar {
    pub rules: Vec<Rule>,
}

/// A grammar that cannot be printed or read, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrammarError {
    /// 1-based line and column in the text read, when the error is in a text.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for GrammarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for GrammarError {}

impl Grammar {
    /// Adds a rule (or replaces the one of that name) and returns a reference to it.
    pub fn define(&mut self, name: &str, body: Expr) -> Expr {
        self.put(name, body, false)
    }

    /// Adds a lexical rule (see [`Rule::token`]) and returns a reference to it.
    pub fn define_token(&mut self, name: &str, body: Expr) -> Expr {
        self.put(name, body, true)
    }

    fn put(&mut self, name: &str, body: Expr, token: bool) -> Expr {
        match self.rules.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                r.body = body;
                r.token = token;
            }
            None => self.rules.push(Rule { name: name.to_string(), body, token }),
        }
        Expr::rule(name)
    }

    /// Removes what can match no string: references to rules that are not defined, empty
    /// choices, the alternatives and rules built only of those, and then the rules the start
    /// rule no longer reaches. A grammar built by code can so name every state it might need and
    /// leave the dead ones to this. Errors if the start rule itself matches nothing.
    pub fn prune(&mut self) -> Result<(), GrammarError> {
        use std::collections::{HashMap, HashSet};
        fn live(e: &Expr, ok: &HashSet<String>) -> bool {
            match e {
                Expr::Empty | Expr::Text(_) | Expr::Class(_) | Expr::Any => true,
                Expr::Ref(n) => ok.contains(n),
                Expr::Seq(v) => v.iter().all(|e| live(e, ok)),
                Expr::Alt(v) => v.iter().any(|e| live(e, ok)),
                Expr::Repeat(e, min, _) => *min == 0 || live(e, ok),
            }
        }
        fn keep(e: &Expr, ok: &HashSet<String>) -> Expr {
            match e {
                Expr::Seq(v) => Expr::seq(v.iter().map(|e| keep(e, ok))),
                Expr::Alt(v) => Expr::alt(v.iter().filter(|e| live(e, ok)).map(|e| keep(e, ok))),
                Expr::Repeat(inner, min, max) if live(inner, ok) => Expr::Repeat(Box::new(keep(inner, ok)), *min, *max),
                Expr::Repeat(..) => Expr::Empty,
                e => e.clone(),
            }
        }
        let mut ok = HashSet::new();
        loop {
            let before = ok.len();
            for r in &self.rules {
                if !ok.contains(&r.name) && live(&r.body, &ok) {
                    ok.insert(r.name.clone());
                }
            }
            if ok.len() == before {
                break;
            }
        }
        let Some(start) = self.rules.first().map(|r| r.name.clone()) else {
            return Err(GrammarError { at: None, message: "the grammar has no rules".into() });
        };
        if !ok.contains(&start) {
            return Err(GrammarError { at: None, message: format!("the start rule `{start}` matches nothing") });
        }
        let bodies: HashMap<String, Expr> =
            self.rules.iter().filter(|r| ok.contains(&r.name)).map(|r| (r.name.clone(), keep(&r.body, &ok))).collect();
        let mut reached = HashSet::from([start.clone()]);
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            let mut refs = Vec::new();
            bodies[&n].refs(&mut refs);
            for r in refs {
                if reached.insert(r.to_string()) {
                    stack.push(r.to_string());
                }
            }
        }
        self.rules.retain(|r| reached.contains(&r.name));
        for r in &mut self.rules {
            r.body = bodies[&r.name].clone();
        }
        Ok(())
    }

    /// The rule named `name`.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Checks that there is a first rule, names are well formed and unique, and every reference
    /// names a rule.
    pub fn check(&self) -> Result<(), GrammarError> {
        let err = |message: String| Err(GrammarError { at: None, message });
        if self.rules.is_empty() {
            return err("the grammar has no rules".into());
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.rules {
            let mut chars = r.name.chars();
            let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !well_formed {
                return err(format!(
                    "rule name `{}`: use lower-case letters, digits and _, starting with a letter",
                    r.name
                ));
            }
            if !seen.insert(r.name.as_str()) {
                return err(format!("rule `{}` is defined twice", r.name));
            }
        }
        for r in &self.rules {
            let mut refs = Vec::new();
            r.body.refs(&mut refs);
            if let Some(missing) = refs.iter().find(|n| !seen.contains(*n)) {
                return err(format!("rule `{}` refers to `{missing}`, which is not defined", r.name));
            }
            if r.token {
                if let Some(other) = refs.iter().find(|n| !self.get(n).is_some_and(|o| o.token)) {
                    return err(format!("lexical rule `{}` refers to `{other}`, which is not lexical", r.name));
                }
            }
        }
        // A lexical rule that reaches itself would be a recursive regex.
        for r in self.rules.iter().filter(|r| r.token) {
            let mut stack = vec![r.name.as_str()];
            let mut seen_here = std::collections::HashSet::new();
            while let Some(n) = stack.pop() {
                let mut refs = Vec::new();
                self.get(n).expect("checked above").body.refs(&mut refs);
                for m in refs {
                    if m == r.name {
                        return err(format!("lexical rule `{}` refers to itself", r.name));
                    }
                    if seen_here.insert(m) {
                        stack.push(m);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_drops_dead_alternatives_and_rules_and_keeps_what_can_match() {
        let mut g = Grammar::default();
        g.define("start", Expr::alt([Expr::rule("live"), Expr::rule("dead"), Expr::rule("missing")]));
        g.define("live", Expr::seq([Expr::text("a"), Expr::Repeat(Box::new(Expr::rule("dead")), 0, Some(3))]));
        // Reaches only itself: matches no finite string.
        g.define("dead", Expr::seq([Expr::text("b"), Expr::rule("dead")]));
        g.define("unreached", Expr::text("c"));
        g.prune().unwrap();
        let names: Vec<&str> = g.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["start", "live"]);
        assert_eq!(g.rules[0].body, Expr::rule("live"));
        assert_eq!(g.rules[1].body, Expr::text("a"));
        g.check().unwrap();
    }

    #[test]
    fn prune_refuses_a_grammar_whose_start_matches_nothing() {
        let mut g = Grammar::default();
        g.define("start", Expr::seq([Expr::text("a"), Expr::rule("missing")]));
        assert!(g.prune().unwrap_err().message.contains("matches nothing"));
    }
}
