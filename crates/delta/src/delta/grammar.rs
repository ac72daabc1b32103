//! The grammar of a reply that is one unified diff against a given parent program, for constrained
//! decoding: a ```diff fence, `---`/`+++` headers naming the file, hunks whose `@@ -N` header names
//! a line of the parent and whose context and removed lines are the parent's lines from there on,
//! in order, exactly; added lines are lines of the arch language (`nasc_lang::syntax::lines`,
//! derived from `arch.pest`). It must not accept a hunk that cannot apply where it says.
//!
//! What the grammar leaves free (the order of hunks, line counts, that the change is not empty,
//! that the result checks) the tolerant applier and the verdict judge. One description, printed
//! as Lark for llguidance and as GBNF for llama.cpp and vLLM; its size grows with the parent's
//! lines (a rule per line), not their square.

use nasc_grammar::{Expr, Grammar};

/// The file name the search's prompt asks the diff's headers to use.
pub const PROGRAM_FILE: &str = "program.arch";

/// Added lines at one place of a hunk, at most (a model that may add forever can).
const MAX_ADDED: u32 = 12;

/// The grammar of one fenced unified diff against `parent`, with headers `--- a/{file}` and
/// `+++ b/{file}`. Each hunk walks the parent in order from the line its `@@ -N` header names:
/// every context or removed line is the next line of the parent, so a hunk the grammar accepts
/// applies where its header says; a later hunk starts after the earlier one ends. Added lines
/// (statements, not blank, without comments: they carry no architecture) may come before, between
/// and after them; comment and blank lines of the parent are context only. The new start and both counts are free (the applier recounts). A rule per parent line
/// and three per position: the grammar grows with the parent, not its square. Errors only if the
/// language's own grammar cannot be derived.
pub fn diff_grammar(parent: &str, file: &str) -> Result<Grammar, String> {
    let mut g = Grammar::default();
    // The start rule comes first; its body is set once the parts exist.
    g.define("diff", Expr::Empty);
    nasc_lang::syntax::lines::add_line_rules(&mut g, false)?;
    // Added lines fit where they go: in a body, statements and braces; at the top level, a new
    // block (its head, then body lines), with a blank line before or after it as canonical text
    // puts between blocks. No other blank lines: they change nothing.
    let in_body = g.define("added_body", Expr::seq([Expr::text("+"), Expr::rule("arch_body_line"), Expr::text("\n")]));
    let body_adds = g.define("adds_body", Expr::Repeat(Box::new(in_body.clone()), 1, Some(MAX_ADDED)));
    let blank = Expr::opt(Expr::text("+\n"));
    let top = Expr::seq([
        blank.clone(),
        Expr::text("+"),
        Expr::rule("arch_item_line"),
        Expr::text("\n"),
        Expr::Repeat(Box::new(in_body), 0, Some(MAX_ADDED)),
        blank,
    ]);
    let top_adds = g.define("adds_top", top);
    let adds_at = |depth: usize| if depth == 0 { top_adds.clone() } else { body_adds.clone() };
    let digit = nasc_grammar::Class { negated: false, ranges: vec![('0', '9')] };
    let num = g.define_token("hunk_number", Expr::Repeat(Box::new(Expr::Class(digit)), 1, Some(5)));
    let counts = |start: Expr| Expr::seq([start, Expr::opt(Expr::seq([Expr::text(","), num.clone()]))]);
    let header =
        |old: Expr| Expr::seq([counts(old), counts(Expr::seq([Expr::text(" +"), num.clone()])), Expr::text(" @@\n")]);
    let lines: Vec<&str> = parent.lines().map(|l| l.trim_end_matches('\r')).collect();
    let n = lines.len();
    // How deep in braces the text is after each line (comments hold no braces that count).
    let mut depth_after = Vec::with_capacity(n);
    let mut depth = 0usize;
    for l in &lines {
        let code = l.split('#').next().unwrap_or("");
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        depth_after.push(depth);
    }
    let depth_before = |i: usize| if i == 0 { 0 } else { depth_after[i - 1] };
    let close = Expr::text("```");
    // Built from the last line back. walk_i: line i kept or removed, added lines after it, then
    // the hunk goes on (walk_{i+1}) or ends (after_{i+1}). hunk_i: a hunk that starts at line i.
    // after_k: the fence closes, or a hunk starts at line k or later. first_k: the same without
    // closing (a diff has at least one hunk).
    // Lines added after the parent's last line: `@@ -N,0 ...` with N the parent's length.
    let tail = g.define("hunk_end", Expr::seq([header(Expr::text(format!("@@ -{n}"))), adds_at(0)]));
    let mut after_next = Expr::alt([close.clone(), tail.clone()]);
    let mut first_next = tail;
    for (i, l) in lines.iter().enumerate().rev() {
        let here = if l.is_empty() {
            // A blank context line, with its space or (as diffy writes it) without.
            Expr::alt([Expr::text(" \n"), Expr::text("\n")])
        } else if l.trim_start().starts_with('#') {
            // Comments are context only: removing one changes no network.
            Expr::text(format!(" {l}\n"))
        } else {
            Expr::alt([Expr::text(format!(" {l}\n")), Expr::text(format!("-{l}\n"))])
        };
        let go_on = if i + 1 < n { Expr::rule(format!("walk_{}", i + 1)) } else { Expr::Empty };
        let end = after_next.clone();
        let next = if go_on == Expr::Empty { end } else { Expr::alt([go_on, end]) };
        let rest = g.define(&format!("rest_{i}"), Expr::seq([Expr::opt(adds_at(depth_after[i])), next]));
        let walk = g.define(&format!("walk_{i}"), Expr::seq([here, rest]));
        let hunk = g.define(
            &format!("hunk_{i}"),
            Expr::seq([header(Expr::text(format!("@@ -{}", i + 1))), Expr::opt(adds_at(depth_before(i))), walk]),
        );
        after_next = g.define(&format!("after_{i}"), Expr::alt([close.clone(), hunk.clone(), after_next]));
        first_next = g.define(&format!("first_{i}"), Expr::alt([hunk, first_next]));
    }
    g.define("diff", Expr::seq([Expr::text(format!("```diff\n--- a/{file}\n+++ b/{file}\n")), first_next]));
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
