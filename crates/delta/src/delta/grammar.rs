//! The grammar of a reply that is one unified diff against a given parent program, for constrained
//! decoding: a ```diff fence, `---`/`+++` headers naming the file, hunks whose `@@` headers have
//! numbers, whose context and removed lines are lines of the parent exactly, and whose added lines
//! are lines of the arch language (`nasc_lang::syntax::lines`, derived from `arch.pest`).
//!
//! What a grammar cannot say (hunk order, line counts, that the change is not empty, that the
//! result checks) the tolerant applier and the verdict judge. One description, printed as Lark
//! for llguidance and as GBNF for llama.cpp and vLLM.

use nasc_grammar::{Expr, Grammar};

/// The file name the search's prompt asks the diff's headers to use.
pub const PROGRAM_FILE: &str = "program.arch";

/// The grammar of one fenced unified diff against `parent`, with headers `--- a/{file}` and
/// `+++ b/{file}`. Errors only if the language's own grammar cannot be derived.
pub fn diff_grammar(parent: &str, file: &str) -> Result<Grammar, String> {
    let mut g = Grammar::default();
    // The start rule comes first; its body is set once the parts exist.
    g.define("diff", Expr::Empty);
    let line = nasc_lang::syntax::lines::add_line_rules(&mut g)?;
    let mut seen = std::collections::BTreeSet::new();
    let lines: Vec<&str> = parent.lines().map(|l| l.trim_end_matches('\r')).collect();
    let blank = lines.iter().any(|l| l.is_empty());
    // Blank lines are their own alternatives below: a lexeme must not match the empty string.
    let parent_lines: Vec<Expr> =
        lines.into_iter().filter(|l| !l.is_empty() && seen.insert(*l)).map(Expr::text).collect();
    let digit = nasc_grammar::Class { negated: false, ranges: vec![('0', '9')] };
    let num = g.define_token("hunk_number", Expr::Repeat(Box::new(Expr::Class(digit)), 1, Some(5)));
    let range = Expr::seq([num.clone(), Expr::opt(Expr::seq([Expr::text(","), num]))]);
    let header_line = g.define(
        "hunk_header",
        Expr::seq([Expr::text("@@ -"), range.clone(), Expr::text(" +"), range, Expr::text(" @@\n")]),
    );
    let mut body = vec![Expr::seq([Expr::text("+"), line, Expr::text("\n")])];
    if !parent_lines.is_empty() {
        let old = g.define_token("parent_line", Expr::alt(parent_lines));
        body.push(Expr::seq([Expr::text(" "), old.clone(), Expr::text("\n")]));
        body.push(Expr::seq([Expr::text("-"), old, Expr::text("\n")]));
    }
    if blank {
        // A blank context line, with its space or (as diffy writes it) without.
        body.push(Expr::text(" \n"));
        body.push(Expr::text("\n"));
        body.push(Expr::text("-\n"));
    }
    let hunk_line = g.define("hunk_line", Expr::alt(body));
    let hunk = g.define("hunk", Expr::seq([header_line, Expr::plus(hunk_line)]));
    g.define(
        "diff",
        Expr::seq([Expr::text(format!("```diff\n--- a/{file}\n+++ b/{file}\n")), Expr::plus(hunk), Expr::text("```")]),
    );
    Ok(g)
}

/// [`diff_grammar`] as Lark, for llguidance (`nasc serve`, vLLM's llguidance backend).
pub fn diff_lark(parent: &str, file: &str) -> Result<String, String> {
    nasc_grammar::lark::print(&diff_grammar(parent, file)?).map_err(|e| e.to_string())
}

/// [`diff_grammar`] as GBNF, for llama.cpp's server and vLLM's default backend.
pub fn diff_gbnf(parent: &str, file: &str) -> Result<String, String> {
    nasc_grammar::gbnf::print(&diff_grammar(parent, file)?).map_err(|e| e.to_string())
}
