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

/// A set of characters: ranges, or everything but them.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
