//! A language less some strings: [`Grammar::without`] builds, from an expression and a few
//! strings to exclude (exactly, or as a prefix), an expression over new rules that derives
//! everything the first did except those. Context-free languages are closed under removing a
//! regular set, and for a handful of short strings the construction stays small: it follows the
//! strings into the grammar and copies only the rules that can begin one of them, leaving every
//! other part shared. The diff grammar uses it so that a line removed cannot be added back
//! unchanged in its place (a change that changes nothing).
//!
//! How: `L(a b) \ W` is `(L(a) \ P) L(b)` together with, for each `p` in `P`, `p (L(b) \ W/p)`,
//! where `P` are the strings of `a` that are prefixes of an excluded string, and `W/p` what is
//! left of the excluded strings after `p`. A rule is copied once per set of strings it must lose.

use crate::{Class, Expr, Grammar, GrammarError};
use std::collections::{HashMap, HashSet};

/// A string an expression should no longer derive.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Excluded {
    /// This string exactly.
    Exactly(String),
    /// Every string starting with this.
    StartingWith(String),
}

impl Excluded {
    fn text(&self) -> &str {
        match self {
            Excluded::Exactly(s) | Excluded::StartingWith(s) => s,
        }
    }
    fn hits(&self, s: &str) -> bool {
        match self {
            Excluded::Exactly(w) => w == s,
            Excluded::StartingWith(w) => s.starts_with(w.as_str()),
        }
    }
}

/// The empty language, which [`Grammar::prune`] removes.
fn nothing() -> Expr {
    Expr::Alt(Vec::new())
}

/// `min` to `max` of `e`, plainly where the bounds allow (printers refuse a repeat of at most 0).
fn repeat(e: Box<Expr>, min: u32, max: Option<u32>) -> Expr {
    match (min, max) {
        (_, Some(0)) => Expr::Empty,
        (1, Some(1)) => *e,
        _ => Expr::Repeat(e, min, max),
    }
}

fn is_nothing(e: &Expr) -> bool {
    matches!(e, Expr::Alt(v) if v.is_empty())
}

/// Copies made at most for one expression: beyond this the strings reach too much of the grammar.
const MAX_NEW_RULES: usize = 4000;
/// Nesting of the construction at most (unrolled repeats of empty-deriving items).
const MAX_DEPTH: usize = 400;

/// First characters an expression can start with: ASCII as bits, anything else as one flag.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Chars {
    ascii: u128,
    other: bool,
}

impl Chars {
    const ALL: Chars = Chars { ascii: u128::MAX, other: true };
    fn one(c: char) -> Chars {
        if c.is_ascii() {
            Chars { ascii: 1 << (c as u32), other: false }
        } else {
            Chars { ascii: 0, other: true }
        }
    }
    fn has(&self, c: char) -> bool {
        if c.is_ascii() {
            self.ascii & (1 << (c as u32)) != 0
        } else {
            self.other
        }
    }
    fn union(self, o: Chars) -> Chars {
        Chars { ascii: self.ascii | o.ascii, other: self.other | o.other }
    }
    fn of_class(c: &Class) -> Chars {
        let mut set = Chars::default();
        for &(lo, hi) in &c.ranges {
            for code in lo as u32..=(hi as u32).min(127) {
                set.ascii |= 1 << code;
            }
            if !hi.is_ascii() {
                set.other = true;
            }
        }
        if c.negated {
            Chars { ascii: !set.ascii, other: true }
        } else {
            set
        }
    }
}

struct Builder<'a> {
    bodies: HashMap<&'a str, (&'a Expr, bool)>,
    nullable: HashSet<&'a str>,
    first: HashMap<&'a str, Chars>,
    memo: HashMap<(String, Vec<Excluded>), String>,
    new_rules: Vec<(String, Expr, bool)>,
    /// The memo's keys in the order they were added, to undo an item that failed.
    log: Vec<(String, Vec<Excluded>)>,
    /// Where the current item's copies start.
    item_start: usize,
    tag: String,
    named: usize,
    depth: usize,
}

impl<'a> Builder<'a> {
    fn new(g: &'a Grammar, tag: &str) -> Builder<'a> {
        let bodies: HashMap<&str, (&Expr, bool)> =
            g.rules.iter().map(|r| (r.name.as_str(), (&r.body, r.token))).collect();
        let mut b = Builder {
            bodies,
            nullable: HashSet::new(),
            first: HashMap::new(),
            memo: HashMap::new(),
            new_rules: Vec::new(),
            log: Vec::new(),
            item_start: 0,
            tag: tag.to_string(),
            named: 0,
            depth: 0,
        };
        // Nullable rules and first characters, to a fixpoint.
        loop {
            let mut changed = false;
            for r in &g.rules {
                if !b.nullable.contains(r.name.as_str()) && b.is_nullable(&r.body) {
                    b.nullable.insert(&r.name);
                    changed = true;
                }
                let f = b.first_of(&r.body);
                let old = b.first.get(r.name.as_str()).copied().unwrap_or_default();
                if f.union(old) != old {
                    b.first.insert(&r.name, f.union(old));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        b
    }

    fn is_nullable(&self, e: &Expr) -> bool {
        match e {
            Expr::Empty => true,
            Expr::Text(t) => t.is_empty(),
            Expr::Class(_) | Expr::Any => false,
            Expr::Ref(n) => self.nullable.contains(n.as_str()),
            Expr::Seq(v) => v.iter().all(|e| self.is_nullable(e)),
            Expr::Alt(v) => v.iter().any(|e| self.is_nullable(e)),
            Expr::Repeat(e, min, _) => *min == 0 || self.is_nullable(e),
        }
    }

    fn first_of(&self, e: &Expr) -> Chars {
        match e {
            Expr::Empty => Chars::default(),
            Expr::Text(t) => t.chars().next().map(Chars::one).unwrap_or_default(),
            Expr::Class(c) => Chars::of_class(c),
            Expr::Any => Chars::ALL,
            Expr::Ref(n) => self.first.get(n.as_str()).copied().unwrap_or_default(),
            Expr::Seq(v) => {
                let mut out = Chars::default();
                for e in v {
                    out = out.union(self.first_of(e));
                    if !self.is_nullable(e) {
                        break;
                    }
                }
                out
            }
            Expr::Alt(v) => v.iter().fold(Chars::default(), |a, e| a.union(self.first_of(e))),
            Expr::Repeat(_, _, Some(0)) => Chars::default(),
            Expr::Repeat(e, ..) => self.first_of(e),
        }
    }

    /// Whether `e` derives `s` exactly.
    fn derives(&self, e: &Expr, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        let mut memo = HashMap::new();
        self.ends(e, &chars, 0, &mut memo).contains(&chars.len())
    }

    /// The positions `e` can end at when it starts at `i` of `s`.
    fn ends(&self, e: &Expr, s: &[char], i: usize, memo: &mut HashMap<(String, usize), Vec<usize>>) -> Vec<usize> {
        let mut out = match e {
            Expr::Empty => vec![i],
            Expr::Text(t) => {
                let t: Vec<char> = t.chars().collect();
                if s[i..].starts_with(&t) {
                    vec![i + t.len()]
                } else {
                    vec![]
                }
            }
            Expr::Class(c) => match s.get(i) {
                Some(&ch) if c.ranges.iter().any(|&(lo, hi)| lo <= ch && ch <= hi) != c.negated => vec![i + 1],
                _ => vec![],
            },
            Expr::Any => {
                if i < s.len() {
                    vec![i + 1]
                } else {
                    vec![]
                }
            }
            Expr::Ref(n) => {
                let key = (n.clone(), i);
                if let Some(done) = memo.get(&key) {
                    return done.clone();
                }
                // Entered again at the same place (left recursion): no further ends from here.
                memo.insert(key.clone(), vec![]);
                let found = match self.bodies.get(n.as_str()) {
                    Some((body, _)) => self.ends(body, s, i, memo),
                    None => vec![],
                };
                memo.insert(key, found.clone());
                found
            }
            Expr::Seq(v) => {
                let mut at = vec![i];
                for e in v {
                    let mut next = Vec::new();
                    for &j in &at {
                        next.extend(self.ends(e, s, j, memo));
                    }
                    next.sort_unstable();
                    next.dedup();
                    at = next;
                    if at.is_empty() {
                        break;
                    }
                }
                at
            }
            Expr::Alt(v) => v.iter().flat_map(|e| self.ends(e, s, i, memo)).collect(),
            Expr::Repeat(e, min, max) => {
                let mut out = if *min == 0 { vec![i] } else { vec![] };
                let mut at = vec![i];
                let mut count = 0u32;
                let mut seen: HashSet<usize> = HashSet::new();
                while max.is_none_or(|m| count < m) && !at.is_empty() {
                    count += 1;
                    let mut next: Vec<usize> = at.iter().flat_map(|&j| self.ends(e, s, j, memo)).collect();
                    next.sort_unstable();
                    next.dedup();
                    if count >= *min {
                        out.extend(next.iter().copied());
                    }
                    // Past the minimum, a position reached before adds nothing new.
                    if count >= *min {
                        next.retain(|j| seen.insert(*j));
                    }
                    at = next;
                }
                out
            }
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `e` held to the one string `s`, in `e`'s own pieces: the literals and lexical rules that
    /// derive it keep their boundaries, so a lexer splits `s` as it would have (one literal for
    /// several pieces could hold the lexer on a longer match than the original allowed).
    fn only(&self, e: &Expr, s: &[char], depth: usize) -> Option<Expr> {
        if depth > MAX_DEPTH {
            return None;
        }
        let text = || Expr::text(s.iter().collect::<String>());
        let whole = |e: &Expr| self.ends(e, s, 0, &mut HashMap::new()).contains(&s.len());
        match e {
            Expr::Empty => s.is_empty().then_some(Expr::Empty),
            Expr::Text(_) | Expr::Class(_) | Expr::Any => whole(e).then(text),
            Expr::Ref(n) => match self.bodies.get(n.as_str()) {
                Some((_, true)) => whole(e).then(text),
                Some((body, false)) => self.only(body, s, depth + 1),
                None => None,
            },
            Expr::Alt(v) => v.iter().find_map(|e| self.only(e, s, depth + 1)),
            Expr::Seq(v) => match v.as_slice() {
                [] => s.is_empty().then_some(Expr::Empty),
                [one] => self.only(one, s, depth + 1),
                [a, rest @ ..] => {
                    let rest = Expr::Seq(rest.to_vec());
                    self.ends(a, s, 0, &mut HashMap::new()).into_iter().rev().find_map(|j| {
                        Some(Expr::seq([self.only(a, &s[..j], depth + 1)?, self.only(&rest, &s[j..], depth + 1)?]))
                    })
                }
            },
            Expr::Repeat(inner, min, max) => {
                if s.is_empty() {
                    return whole(e).then_some(Expr::Empty);
                }
                if *max == Some(0) {
                    return None;
                }
                let rest = repeat(inner.clone(), min.saturating_sub(1), max.map(|m| m - 1));
                self.ends(inner, s, 0, &mut HashMap::new()).into_iter().rev().filter(|&j| j > 0).find_map(|j| {
                    Some(Expr::seq([self.only(inner, &s[..j], depth + 1)?, self.only(&rest, &s[j..], depth + 1)?]))
                })
            }
        }
    }

    /// The patterns of `w` that can concern `e`: a non-empty string only if `e` can start with
    /// its first character, the empty string exactly only if `e` derives it.
    fn relevant(&self, e: &Expr, w: &[Excluded]) -> Vec<Excluded> {
        let first = self.first_of(e);
        let nullable = self.is_nullable(e);
        let mut out: Vec<Excluded> = w
            .iter()
            .filter(|x| match x.text().chars().next() {
                Some(c) => first.has(c),
                None => matches!(x, Excluded::StartingWith(_)) || nullable,
            })
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn build(&mut self, e: &Expr, w: &[Excluded]) -> Result<Expr, GrammarError> {
        let w = self.relevant(e, w);
        if w.is_empty() {
            return Ok(e.clone());
        }
        if w.iter().any(|x| matches!(x, Excluded::StartingWith(s) if s.is_empty())) {
            return Ok(nothing());
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH || self.new_rules.len() - self.item_start > MAX_NEW_RULES {
            return Err(GrammarError {
                at: None,
                message: "excluding these strings reaches too much of the grammar".into(),
            });
        }
        let out = self.build_relevant(e, &w);
        self.depth -= 1;
        out
    }

    fn build_relevant(&mut self, e: &Expr, w: &[Excluded]) -> Result<Expr, GrammarError> {
        Ok(match e {
            Expr::Empty => {
                if w.iter().any(|x| x.hits("")) {
                    nothing()
                } else {
                    Expr::Empty
                }
            }
            Expr::Text(t) => {
                if w.iter().any(|x| x.hits(t)) {
                    nothing()
                } else {
                    e.clone()
                }
            }
            Expr::Class(_) | Expr::Any => {
                let gone: Vec<char> = w
                    .iter()
                    .filter_map(|x| {
                        let mut cs = x.text().chars();
                        match (cs.next(), cs.next()) {
                            (Some(c), None) => Some(c),
                            _ => None,
                        }
                    })
                    .collect();
                if gone.is_empty() {
                    e.clone()
                } else {
                    class_less(e, &gone)
                }
            }
            Expr::Ref(n) => {
                let key = (n.clone(), w.to_vec());
                if let Some(name) = self.memo.get(&key) {
                    return Ok(Expr::rule(name.clone()));
                }
                let Some(&(body, token)) = self.bodies.get(n.as_str()) else { return Ok(e.clone()) };
                let name = format!("{}_w{}", self.tag, self.named);
                self.named += 1;
                self.memo.insert(key.clone(), name.clone());
                self.log.push(key);
                let index = self.new_rules.len();
                self.new_rules.push((name.clone(), nothing(), token));
                let body = self.build(body, w)?;
                self.new_rules[index].1 = body;
                Expr::rule(name)
            }
            Expr::Alt(v) => {
                let mut out = Vec::new();
                for e in v {
                    let x = self.build(e, w)?;
                    if !is_nothing(&x) {
                        out.push(x);
                    }
                }
                if out.is_empty() {
                    nothing()
                } else {
                    Expr::alt(out)
                }
            }
            Expr::Seq(v) => match v.as_slice() {
                [] => self.build_relevant(&Expr::Empty, w)?,
                [one] => self.build(one, w)?,
                [a, rest @ ..] => {
                    let rest = Expr::Seq(rest.to_vec());
                    self.seq(a, &rest, w)?
                }
            },
            Expr::Repeat(inner, min, max) => {
                if *max == Some(0) {
                    return self.build_relevant(&Expr::Empty, w);
                }
                let less = |n: Option<u32>| n.map(|m| m - 1);
                if *min > 0 {
                    let rest = repeat(inner.clone(), min - 1, less(*max));
                    self.seq(inner, &rest, w)?
                } else {
                    let some = Expr::Repeat(inner.clone(), 1, *max);
                    let empty = self.build_relevant(&Expr::Empty, w)?;
                    let some = self.build(&some, w)?;
                    Expr::alt([empty, some].into_iter().filter(|x| !is_nothing(x)).collect::<Vec<_>>())
                }
            }
        })
    }

    /// `L(a rest) \ W`.
    fn seq(&mut self, a: &Expr, rest: &Expr, w: &[Excluded]) -> Result<Expr, GrammarError> {
        // P: the strings of `a` that a string of `W` starts with (wholly, for an exact one; short
        // of all of it, for a prefix, since past it the whole is excluded anyway).
        let mut prefixes: Vec<String> = Vec::new();
        for x in w {
            let text = x.text();
            let mut cut: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            if matches!(x, Excluded::Exactly(_)) {
                cut.push(text.len());
            }
            for i in cut {
                let p = &text[..i];
                if !prefixes.iter().any(|q| q == p) {
                    prefixes.push(p.to_string());
                }
            }
        }
        let starts = |p: &str| w.iter().any(|x| matches!(x, Excluded::StartingWith(s) if p.starts_with(s.as_str())));
        let in_a: Vec<String> = prefixes.into_iter().filter(|p| !starts(p) && self.derives(a, p)).collect();
        let mut wa: Vec<Excluded> = w.iter().filter(|x| matches!(x, Excluded::StartingWith(_))).cloned().collect();
        wa.extend(in_a.iter().map(|p| Excluded::Exactly(p.clone())));
        let mut alts = Vec::new();
        let head = self.build(a, &wa)?;
        if !is_nothing(&head) {
            alts.push(Expr::seq([head, rest.clone()]));
        }
        for p in &in_a {
            let wp: Vec<Excluded> = w
                .iter()
                .filter_map(|x| match x {
                    Excluded::Exactly(s) => s.strip_prefix(p.as_str()).map(|t| Excluded::Exactly(t.to_string())),
                    Excluded::StartingWith(s) => s
                        .strip_prefix(p.as_str())
                        .filter(|t| !t.is_empty())
                        .map(|t| Excluded::StartingWith(t.to_string())),
                })
                .collect();
            let tail = self.build(rest, &wp)?;
            if !is_nothing(&tail) {
                let chars: Vec<char> = p.chars().collect();
                let exactly = self.only(a, &chars, 0).unwrap_or_else(|| Expr::text(p.clone()));
                alts.push(Expr::seq([exactly, tail]));
            }
        }
        Ok(if alts.is_empty() { nothing() } else { Expr::alt(alts) })
    }
}

/// A one-character expression (a class or any character) without the characters `gone`.
fn class_less(e: &Expr, gone: &[char]) -> Expr {
    match e {
        Expr::Any => Expr::Class(Class { negated: true, ranges: gone.iter().map(|&c| (c, c)).collect() }),
        Expr::Class(c) if c.negated => {
            let mut ranges = c.ranges.clone();
            ranges.extend(gone.iter().map(|&c| (c, c)));
            Expr::Class(Class { negated: true, ranges })
        }
        Expr::Class(c) => {
            let mut ranges = Vec::new();
            for &(lo, hi) in &c.ranges {
                let mut from = lo as u32;
                let mut cuts: Vec<u32> =
                    gone.iter().map(|&g| g as u32).filter(|&g| lo as u32 <= g && g <= hi as u32).collect();
                cuts.sort_unstable();
                cuts.dedup();
                for g in cuts {
                    if from < g {
                        ranges.push((from, g - 1));
                    }
                    from = g + 1;
                }
                if from <= hi as u32 {
                    ranges.push((from, hi as u32));
                }
            }
            let ranges: Vec<(char, char)> =
                ranges.into_iter().filter_map(|(a, b)| Some((char::from_u32(a)?, char::from_u32(b)?))).collect();
            if ranges.is_empty() {
                nothing()
            } else {
                Expr::Class(Class { negated: false, ranges })
            }
        }
        other => other.clone(),
    }
}

impl Grammar {
    /// `e`, less the strings `excluded` names: an expression over new rules (named `{tag}_w0`,
    /// `{tag}_w1`, …) copied from those `e` reaches that can begin an excluded string; all other
    /// rules are shared, and every existing rule keeps its language. The empty language comes
    /// back as an empty choice, which [`Grammar::prune`] removes (as it removes any copy that
    /// derives nothing), so call it before printing. Errors when the strings would need copies
    /// of too much of the grammar; the caller can then go on without excluding them.
    pub fn without(&mut self, e: &Expr, excluded: &[Excluded], tag: &str) -> Result<Expr, GrammarError> {
        let mut out = self.without_each(&[(e.clone(), excluded.to_vec())], tag)?;
        Ok(out.remove(0).unwrap_or_else(|| e.clone()))
    }

    /// [`Grammar::without`] for several expressions at once, sharing the copies (a rule that
    /// must lose the same strings is copied once for all): for each, the expression less its
    /// strings, or `None` where that needed too large a copy (the caller keeps the expression).
    pub fn without_each(
        &mut self,
        items: &[(Expr, Vec<Excluded>)],
        tag: &str,
    ) -> Result<Vec<Option<Expr>>, GrammarError> {
        // A tag already used would clash with the rules named after it.
        let prefix = format!("{tag}_w");
        if self.rules.iter().any(|r| r.name.strip_prefix(&prefix).is_some_and(|k| k.parse::<usize>().is_ok())) {
            return Err(GrammarError { at: None, message: format!("the tag `{tag}` is already used") });
        }
        let mut b = Builder::new(self, tag);
        let mut out = Vec::new();
        for (e, excluded) in items {
            let mark = (b.new_rules.len(), b.log.len());
            b.depth = 0;
            b.item_start = mark.0;
            match b.build(e, excluded) {
                Ok(x) => out.push(Some(x)),
                Err(_) => {
                    // Undo this item's copies; the others keep theirs.
                    b.new_rules.truncate(mark.0);
                    for key in b.log.split_off(mark.1) {
                        b.memo.remove(&key);
                    }
                    out.push(None);
                }
            }
        }
        let new_rules = std::mem::take(&mut b.new_rules);
        drop(b);
        for (name, body, token) in new_rules {
            self.put(&name, body, token);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small grammar of calls: `f`, `f(1)`, `f(12)`, `g(x)`, `f(1) |> g(x)`, ...
    fn calls() -> (Grammar, Expr) {
        let mut g = Grammar::default();
        let digit = Expr::Class(Class { negated: false, ranges: vec![('0', '9')] });
        g.define("start", Expr::rule("stmt"));
        g.define_token("num", Expr::Repeat(Box::new(digit), 1, Some(3)));
        g.define(
            "call",
            Expr::alt([
                Expr::text("f"),
                Expr::seq([Expr::text("f("), Expr::rule("num"), Expr::text(")")]),
                Expr::seq([Expr::text("g("), Expr::alt([Expr::text("x"), Expr::text("y")]), Expr::text(")")]),
            ]),
        );
        let stmt = g.define(
            "stmt",
            Expr::seq([
                Expr::rule("call"),
                Expr::Repeat(Box::new(Expr::seq([Expr::text(" |> "), Expr::rule("call")])), 0, Some(2)),
            ]),
        );
        (g, stmt)
    }

    fn derives(g: &Grammar, e: &Expr, s: &str) -> bool {
        Builder::new(g, "t").derives(e, s)
    }

    #[test]
    fn an_excluded_string_goes_and_everything_else_stays() {
        let (mut g, stmt) = calls();
        let samples = [
            "f",
            "f(1)",
            "f(12)",
            "f(123)",
            "f(2)",
            "g(x)",
            "g(y)",
            "f |> f",
            "f(1) |> g(x)",
            "g(x) |> f(1) |> f",
            "f(1",
            "h",
            "f(1234)",
        ];
        let before: Vec<bool> = samples.iter().map(|s| derives(&g, &stmt, s)).collect();
        assert_eq!(before.iter().filter(|b| **b).count(), 10);
        let less =
            g.without(&stmt, &[Excluded::Exactly("f(12)".into()), Excluded::Exactly("g(x)".into())], "a").unwrap();
        for (s, was) in samples.iter().zip(&before) {
            let gone = *s == "f(12)" || *s == "g(x)";
            assert_eq!(derives(&g, &less, s), *was && !gone, "{s}");
            // The original rules keep their language.
            assert_eq!(derives(&g, &stmt, s), *was, "{s}");
        }
        // Only rules that can begin an excluded string are copied: `num` is, `g`'s arguments not.
        assert!(g.rules.len() < 12, "{} rules", g.rules.len());
    }

    #[test]
    fn a_prefix_excludes_every_string_that_starts_with_it() {
        let (mut g, stmt) = calls();
        let less = g.without(&stmt, &[Excluded::StartingWith("f(1".into())], "p").unwrap();
        for (s, kept) in [
            ("f(1)", false),
            ("f(12)", false),
            ("f(1) |> g(x)", false),
            ("f(2)", true),
            ("f(21)", true),
            ("f |> f(1)", true),
            ("g(y) |> f(1)", true),
        ] {
            assert_eq!(derives(&g, &less, s), kept, "{s}");
        }
        let none = g.without(&stmt, &[Excluded::StartingWith(String::new())], "q").unwrap();
        assert!(is_nothing(&none));
    }

    #[test]
    fn excluding_every_string_of_a_finite_language_leaves_nothing_after_pruning() {
        let mut g = Grammar::default();
        let start = g.define("start", Expr::alt([Expr::text("ab"), Expr::seq([Expr::text("a"), Expr::rule("b")])]));
        g.define("b", Expr::Class(Class::of("bc")));
        let less = g.without(&start, &[Excluded::Exactly("ab".into()), Excluded::Exactly("ac".into())], "z").unwrap();
        g.define("start", less.clone());
        assert!(g.prune().is_err(), "nothing is left: {g:?}");
        let mut g2 = Grammar::default();
        let start = g2.define("start", Expr::seq([Expr::text("a"), Expr::Class(Class::of("bcd"))]));
        let less = g2.without(&start, &[Excluded::Exactly("ac".into())], "z").unwrap();
        for (s, kept) in [("ab", true), ("ac", false), ("ad", true)] {
            assert_eq!(derives(&g2, &less, s), kept, "{s}");
        }
    }

    #[cfg(feature = "engine")]
    #[test]
    fn llguidance_agrees_once_printed() {
        use crate::engine::Checker;
        let (mut g, stmt) = calls();
        let less = g.without(&stmt, &[Excluded::Exactly("f(12)".into())], "e").unwrap();
        g.define("start", less);
        g.prune().unwrap();
        let checker = Checker::lark(&crate::lark::print(&g).unwrap()).unwrap();
        checker.accepts("f(1)").unwrap();
        checker.accepts("f(123)").unwrap();
        checker.accepts("f(12) |> f").unwrap();
        assert!(checker.accepts("f(12)").is_err());
    }
}
