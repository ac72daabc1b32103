//! The typed statement grammar (`syntax::stmts`) narrows the grammar of record: thousands of
//! statements drawn at random from it, for every scope of every zoo program, are lines of the
//! grammar derived from `arch.pest` (`syntax::lines`) and parse where they would be added; they
//! call only the language's operations and the program's blocks, and a block the grammar lets a
//! diff add parses too.

use nasc_grammar::{Expr, Grammar};
use nasc_lang::syntax::ast::Program;
use nasc_lang::syntax::stmts::{define_block_params, define_statement, program_names, Scope};
use nasc_lang::syntax::{parse, signature};

#[path = "../../../tests/common/repo.rs"]
mod common;

/// A seeded xorshift, so a failure names a draw that can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One string of `e`'s language, drawn with choices uniform; past a depth, alternatives and
/// repeats take their shortest form so every draw ends.
fn draw(g: &Grammar, e: &Expr, rng: &mut Rng, depth: usize, out: &mut String) {
    match e {
        Expr::Empty => {}
        Expr::Text(t) => out.push_str(t),
        Expr::Class(c) => {
            let (lo, hi) = c.ranges[rng.below(c.ranges.len())];
            let span = hi as usize - lo as usize + 1;
            out.push(char::from_u32(lo as u32 + rng.below(span) as u32).unwrap());
        }
        Expr::Any => out.push('a'),
        Expr::Ref(name) => {
            let rule = g.get(name).unwrap_or_else(|| panic!("no rule {name}"));
            draw(g, &rule.body, rng, depth + 1, out);
        }
        Expr::Seq(items) => items.iter().for_each(|i| draw(g, i, rng, depth, out)),
        Expr::Alt(alts) => {
            let pick = if depth > 12 { 0 } else { rng.below(alts.len()) };
            draw(g, &alts[pick], rng, depth, out);
        }
        Expr::Repeat(inner, min, max) => {
            let most = max.unwrap_or(min + 3).min(min + 2);
            let n = if depth > 12 { *min } else { min + rng.below((most - min + 1) as usize) as u32 };
            (0..n).for_each(|_| draw(g, inner, rng, depth, out));
        }
    }
}

/// The program with `line` added as the last statement of the `k`-th item's body.
fn with_line(src: &str, program: &Program, k: usize, line: &str) -> String {
    // The k-th item's closing brace: the k-th line that closes a top-level body.
    let mut depth = 0usize;
    let mut seen = 0usize;
    let mut out = String::new();
    let mut done = false;
    for l in src.lines() {
        let code = l.split('#').next().unwrap_or("");
        let before = depth;
        depth += code.matches('{').count();
        depth -= code.matches('}').count().min(depth);
        if !done && before == 1 && depth == 0 {
            if seen == k {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
                done = true;
            }
            seen += 1;
        }
        out.push_str(l);
        out.push('\n');
    }
    assert!(done, "item {k} of {} items not found", program.order.len());
    out
}

/// A checker for one line of the grammar derived from `arch.pest`.
fn derived_line() -> nasc_grammar::engine::Checker {
    let mut g = Grammar::default();
    g.define("start", Expr::Empty);
    let line = nasc_lang::syntax::lines::add_line_rules(&mut g, false).unwrap();
    g.define("start", line);
    nasc_grammar::engine::Checker::lark(&nasc_grammar::lark::print(&g).unwrap()).unwrap()
}

#[test]
fn statements_drawn_from_the_typed_grammar_parse_where_they_go() {
    let derived = derived_line();
    let mut drawn = 0;
    for (name, src) in common::zoo() {
        let program = parse(&src).unwrap();
        let (callees, scopes) = program_names(&program);
        assert_eq!(scopes.len(), program.order.len());
        let mut g = Grammar::default();
        // Each body's scope as it is, and locked as a place that must keep the flow's shape is.
        let locked = |scope: &Scope| Scope {
            keep_size: true,
            widths: Some(scope.numbers.first().cloned().into_iter().chain(["64".to_string()]).collect()),
            merges: Some(vec![("add", scope.values.clone()), ("concat", scope.values.clone())]),
            sources: Some(scope.values.clone()),
            ..scope.clone()
        };
        let scopes = scopes.iter().flat_map(|(_, s)| [s.clone(), locked(s)]);
        for (k, scope) in scopes.enumerate() {
            let stmt = define_statement(&mut g, &format!("s{k}"), &scope, &callees);
            let mut rng = Rng(0x9e37_79b9 + k as u64 + drawn as u64);
            for i in 0..150 {
                let mut line = String::new();
                draw(&g, &stmt, &mut rng, 0, &mut line);
                derived.accepts(&line).unwrap_or_else(|e| panic!("{name}: `{line}` is not an arch.pest line: {e}"));
                let patched = with_line(&src, &program, k / 2, &line);
                parse(&patched)
                    .unwrap_or_else(|e| panic!("{name}, item {k}, draw {i}: `{line}` does not parse: {}", e.message));
                drawn += 1;
            }
        }
    }
    assert!(drawn > 2000, "{drawn} draws");
}

#[test]
fn without_new_blocks_every_call_is_an_operation_or_a_block_of_the_program() {
    let src = std::fs::read_to_string(common::root().join("zoo/resnet18.arch")).unwrap();
    let program = parse(&src).unwrap();
    let (callees, scopes) = program_names(&program);
    let mut g = Grammar::default();
    let net = scopes.iter().position(|(n, _)| n.is_none()).unwrap();
    let stmt = define_statement(&mut g, "net", &scopes[net].1, &callees);
    let known: Vec<&str> =
        signature::OPS.iter().map(|s| s.name).chain(callees.iter().map(|c| c.name.as_str())).collect();
    let mut rng = Rng(7);
    for _ in 0..500 {
        let mut line = String::new();
        draw(&g, &stmt, &mut rng, 0, &mut line);
        let patched = with_line(&src, &program, net, &line);
        let p = parse(&patched).unwrap_or_else(|e| panic!("`{line}`: {}", e.message));
        let last = p.net.unwrap().body.stmts.pop().unwrap();
        if let nasc_lang::syntax::ast::StmtKind::Pipe { pipe, .. } = &last.kind {
            for st in &pipe.stages {
                let n = st.name.name.as_str();
                assert!(known.contains(&n) || n == "in", "`{line}` calls `{n}`");
            }
        }
    }
}

#[test]
fn a_block_the_grammar_lets_a_diff_add_parses() {
    let src = std::fs::read_to_string(common::root().join("zoo/lenet5.arch")).unwrap();
    let program = parse(&src).unwrap();
    let (callees, _) = program_names(&program);
    let mut g = Grammar::default();
    let scope = Scope { numbers: vec!["c".into()], values: vec!["x".into()], ..Scope::default() };
    let stmt = define_statement(&mut g, "snew", &scope, &callees);
    let params = define_block_params(&mut g);
    let mut rng = Rng(11);
    for _ in 0..300 {
        let mut text = String::from("block res");
        draw(&g, &params, &mut rng, 0, &mut text);
        text.push('\n');
        for _ in 0..1 + rng.below(4) {
            text.push_str("  ");
            draw(&g, &stmt, &mut rng, 0, &mut text);
            text.push('\n');
        }
        text.push_str("}\n\n");
        let patched = format!("{text}{src}");
        parse(&patched).unwrap_or_else(|e| panic!("{text}does not parse: {}", e.message));
    }
}
