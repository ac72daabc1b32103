//! The grammar of a reply that is one unified diff against a given parent program, for constrained
//! decoding: a ```diff fence, `---`/`+++` headers naming the file, hunks whose `@@ -N` header names
//! a line of the parent and whose context and removed lines are the parent's lines from there on,
//! in order, exactly, as `diff -u` spaces them; added lines are statements that can check in the
//! body they go to (`nasc_lang::syntax::stmts`, typed by the operations' signatures and the
//! parent's names; every line it derives parses under `arch.pest`). It must not accept a hunk
//! that cannot apply where it says.
//!
//! What the grammar leaves free (line counts, widths, shapes) the tolerant applier and the
//! verdict judge. One description, printed as Lark for llguidance and as GBNF for llama.cpp and
//! vLLM; its size grows with the parent's lines (a few rules per line), not their square.

use nasc_grammar::{Excluded, Expr, Grammar};
use nasc_lang::check::binding::Binding;
use nasc_lang::check::kinds::{self, Kind};
use nasc_lang::syntax::stmts::{self, Scope};
use std::collections::HashMap;

/// The file name the search's prompt asks the diff's headers to use.
pub const PROGRAM_FILE: &str = "program.arch";

/// Added lines at one place of a hunk, at most (a model that may add forever can).
const MAX_ADDED: u32 = 4;
/// Walk states: no block added, an added block called, and from ADDED on, block j added.
const NONE: usize = 0;
const CALLED: usize = 1;
const ADDED: usize = 2;
/// Names for a block a diff adds, in order of preference; a taken one gets a number.
const NEW_NAMES: [&str; 4] = ["res", "se", "cell", "branch"];
/// Lines of a block a diff adds, at most.
const MAX_BLOCK: u32 = 8;
/// Context lines before a hunk's first change, as `diff -u` writes them.
const LEAD: usize = 3;
/// Context lines after a change before the hunk ends or changes again (`diff -u` joins two
/// changes up to 2 × 3 lines apart into one hunk).
const BETWEEN: usize = 6;

/// One line of the parent as the grammar sees it.
struct Line<'a> {
    text: &'a str,
    /// Brace depth before the line.
    depth: usize,
    /// The top-level item (index into the scopes, in text order) the line is in, if any.
    item: Option<usize>,
    /// Whether it holds no code (blank, or a comment alone).
    code_empty: bool,
    /// Whether a hunk may remove it: a statement inside a body, holding no brace (removing one
    /// would unbalance the program) and no comment-only or blank line (removing those changes
    /// no network).
    removable: bool,
}

/// The grammar of one fenced unified diff against `parent`, with headers `--- a/{file}` and
/// `+++ b/{file}`. Each hunk walks the parent in order from the line its `@@ -N` header names:
/// every context or removed line is the next line of the parent, so a hunk the grammar accepts
/// applies where its header says; a later hunk starts after the earlier one ends. A hunk has at
/// most three context lines before its first change and six between or after changes, as
/// `diff -u` writes them, and at least one change: a model cannot spend its tokens copying the
/// parent. Only statements inside bodies may be removed, never braces.
///
/// Added lines are the statements a body can check (`nasc_lang::syntax::stmts`): calls of the
/// language's operations with their signature's parameters, and of the parent's blocks, with
/// the integer names and bound values of the block they are added to, at canonical indentation;
/// a `repeat` of such lines; and at the top level a new block (named from a short list, so the
/// grammar can hold the name, with one parameter), which a later added line must then call with
/// one argument. Nothing is added after the net's last line, which gives the classes. What the
/// grammar leaves free (line counts, widths and shapes) the tolerant applier and the verdict
/// judge. With the dataset's `binding`, added lines offer only the operations that keep the kind
/// of flow (maps, tokens, a vector) where they go (`check::kinds`): a network's flattened half
/// takes no pooling. Errors when the parent does not parse.
pub fn diff_grammar(parent: &str, file: &str, binding: Option<Binding>) -> Result<Grammar, String> {
    diff_grammar_avoiding(parent, file, binding, &[])
}

/// A run of lines an earlier diff added to the parent, which a retry's grammar leaves out: the
/// edit that made a network the archive already had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Avoid {
    /// The parent's line (0-based) the run went before; the parent's length for the end.
    pub at: usize,
    /// Whether the run replaced the lines just above `at`, which the diff removed.
    pub replacing: bool,
    /// The added lines as the diff has them, each `+…` and a newline.
    pub run: String,
}

/// The runs of added lines in `diff`, a unified diff against the parent (its line numbers the
/// parent's), each with where it goes.
pub fn avoid_of(diff: &str) -> Vec<Avoid> {
    let mut out = Vec::new();
    let (mut at, mut in_hunk, mut after_removal) = (0usize, false, false);
    let mut run: Option<(bool, String)> = None;
    let flush = |out: &mut Vec<Avoid>, run: &mut Option<(bool, String)>, at: usize| {
        if let Some((replacing, text)) = run.take() {
            out.push(Avoid { at, replacing, run: text });
        }
    };
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("@@ -") {
            flush(&mut out, &mut run, at);
            // `@@ -a,b`: the hunk's first parent line is a (1-based); with b = 0 it goes after
            // line a.
            let old = rest.split(' ').next().unwrap_or("");
            let (start, count) = old.split_once(',').unwrap_or((old, "1"));
            let (Ok(start), Ok(count)) = (start.parse::<usize>(), count.parse::<usize>()) else {
                in_hunk = false;
                continue;
            };
            at = if count == 0 { start } else { start.saturating_sub(1) };
            (in_hunk, after_removal) = (true, false);
            continue;
        }
        if !in_hunk {
            continue;
        }
        match line.as_bytes().first() {
            Some(b'+') => {
                let (_, text) = run.get_or_insert_with(|| (after_removal, String::new()));
                text.push_str(line);
                text.push('\n');
            }
            Some(b'-') => {
                flush(&mut out, &mut run, at);
                at += 1;
                after_removal = true;
            }
            Some(b'\\') => {}
            _ => {
                flush(&mut out, &mut run, at);
                at += 1;
                after_removal = false;
            }
        }
    }
    flush(&mut out, &mut run, at);
    out
}

/// [`diff_grammar`] without the runs in `avoid`: at each run's place, the added lines may not
/// be exactly that run (they may be more, or other lines). A retry after a duplicate asks for
/// it, so that the model cannot make the same edit again.
pub fn diff_grammar_avoiding(
    parent: &str,
    file: &str,
    binding: Option<Binding>,
    avoid: &[Avoid],
) -> Result<Grammar, String> {
    let program = nasc_lang::syntax::parse(parent).map_err(|d| format!("the parent does not parse: {}", d.message))?;
    let (callees, mut scopes) = stmts::program_names(&program);
    // The output line gives the classes and is the parent's: added lines do not narrow the flow
    // to the class count, save those replacing a line that did (`conv(classes, k=1)`).
    for (_, scope) in scopes.iter_mut() {
        scope.no_classes = true;
    }
    let uses_classes = |text: &str| code_of(text).split(|c: char| !is_name_char(c)).any(|w| w == "classes");
    let mut lines = lines_of(parent);
    let n = lines.len();
    let flows = binding.map(|b| flow_kinds(parent, &lines, b)).unwrap_or_else(|| vec![None; n + 1]);
    let flow: Vec<Option<Kind>> = flows.iter().map(|f| f.map(|(kind, _)| kind)).collect();
    let width: Vec<Option<u64>> = flows.iter().map(|f| f.and_then(|(_, w)| w)).collect();
    // The net's closing brace, and its last line of code before it, which gives the classes.
    let net = scopes.iter().position(|(name, _)| name.is_none());
    let net_close = (0..n).rev().find(|&i| net.is_some() && lines[i].item == net && lines[i].text.trim() == "}");
    let output = net_close.and_then(|c| (0..c).rev().find(|&i| lines[i].depth == 1 && !lines[i].code_empty));
    // The output, and a line that changes the kind of the flow (`flatten`, `gap`), are what the
    // lines after them stand on: removing either cannot check.
    if let Some(i) = output {
        lines[i].removable = false;
    }
    for line in lines.iter_mut() {
        if bound_name(line.text).is_some() {
            line.removable = false;
        }
    }
    // A block the net does not reach (an earlier child removed its last call) changes no
    // network: its lines stay as they are, and nothing is added inside it. (Session 21's base
    // arm lost two slots, three attempts each, to edits there judged duplicates.)
    let reached = stmts::reached_blocks(&program);
    let unreached: Vec<bool> =
        scopes.iter().map(|(name, _)| name.as_ref().is_some_and(|n| !reached.contains(n))).collect();
    for line in lines.iter_mut() {
        if line.item.is_some_and(|k| unreached[k]) {
            line.removable = false;
        }
    }
    for i in 0..n {
        if let (Some(before), Some(after)) = (flow[i], flow[i + 1]) {
            if before != after {
                lines[i].removable = false;
            }
        }
    }
    let mut g = Grammar::default();
    // The start rule comes first; its body is set once the parts exist.
    g.define("diff", Expr::Empty);
    for (k, (_, scope)) in scopes.iter().enumerate() {
        stmts::define_statement(&mut g, &format!("s{k}"), scope, &callees);
    }
    // A new block's body calls the language's operations and the parent's blocks only. With
    // the dataset known, it is typed line by line from the kind of flow it is called on (the
    // kind at most of the net's lines), and it is called only where the flow is of that kind.
    let entry = entry_kind(&lines, &flow, net);
    let new_body = new_block_body(&mut g, entry, &callees);
    let params = stmts::define_block_params(&mut g);
    // The names a diff may give a block it adds: a context-free grammar cannot hold a name the
    // model makes up until the call that must repeat it, but a state per name of a short list
    // can, so the call names exactly the block added.
    let new_names = fresh_names(&callees);
    let indent = |depth: usize| "  ".repeat(depth);
    let depth_at = |i: usize| if i < n { lines[i].depth } else { 0 };
    // How many values each line's item has bound above it.
    let bound_above: Vec<usize> = {
        let mut out = Vec::with_capacity(n + 1);
        let mut count = 0;
        for i in 0..=n {
            if i > 0 && lines[i - 1].item != item_of(&lines, i) {
                count = 0;
            }
            out.push(count);
            if i < n && lines[i].depth > 0 && bound_name(lines[i].text).is_some() {
                count += 1;
            }
        }
        out
    };
    // What lines added at each place must keep, where the dataset is known (a probe per
    // property, checked).
    let texts: Vec<&str> = lines.iter().map(|l| l.text).collect();
    // With `rebinding`, the lines replace line i, a binding: they make its value, whose flow
    // is the one after the line.
    let place = |texts: &[&str], i: usize, binding: Binding, rebinding: Option<(&str, &str)>| -> Option<Lock> {
        let flow_at = if rebinding.is_some() { flows[i + 1] } else { flows[i] };
        let (k, (kind, width)) = (item_of(&lines, i)?, flow_at?);
        if depth_at(i) == 0 || Some(i) == net_close {
            return None;
        }
        let (_, scope) = &scopes[k];
        let values = &scope.values[..bound_above[i].min(scope.values.len())];
        let p = Place {
            texts,
            at: i,
            depth: depth_at(i),
            kind,
            width,
            numbers: &scope.numbers,
            values,
            callees: &callees,
            uncallable: &scope.uncallable,
            rebinding,
        };
        Some(Lock::at(&p, binding))
    };
    let found: Vec<Option<Lock>> = (0..=n).map(|i| place(&texts, i, binding?, None)).collect();
    // Lines that replace line i keep what the parent without it needs there; where the parent
    // without it does not check (line i did something the rest needs, such as a stride), they
    // are typed by kind only.
    let budget = nasc_lang::check::Budget::default();
    let replacing: Vec<Option<Lock>> = (0..n)
        .map(|i| {
            let binding = binding.filter(|_| lines[i].removable)?;
            let without: Vec<&str> = texts.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, t)| *t).collect();
            nasc_lang::check::check_source(&(without.join("\n") + "\n"), binding, &budget).ok()?;
            place(&without, i, binding, None)
        })
        .collect();
    // A binding's replacement makes the value the lines below it use: probed in its place, as
    // another right-hand side (`x = in |> maxpool(k=2)`), without the value itself.
    let rebinding: Vec<Option<Lock>> = (0..n)
        .map(|i| {
            let value = bound_name(lines[i].text).filter(|_| lines[i].depth > 0)?;
            let rhs = code_of(lines[i].text).split_once('=')?.1.trim();
            place(&texts, i, binding?, Some((value, rhs)))
        })
        .collect();
    // The distinct locks, and each place's.
    let mut lock_table: Vec<Lock> = Vec::new();
    let mut intern = |locks: Vec<Option<Lock>>| -> Vec<Option<usize>> {
        locks
            .into_iter()
            .map(|l| {
                let l = l?;
                Some(lock_table.iter().position(|m| *m == l).unwrap_or_else(|| {
                    lock_table.push(l);
                    lock_table.len() - 1
                }))
            })
            .collect()
    };
    let locks = intern(found);
    let replace_locks = intern(replacing);
    let rebind_locks = intern(rebinding);
    // Statements of item k where the flow is of `kind` (when known: only the operations that
    // keep it) and `bound` of the body's values are bound above (only those can be used); with
    // `lock` (an index into `lock_table`), keeping what the place must; with `classes`, the
    // integers may name the class count.
    let scope_for =
        |g: &mut Grammar, k: usize, kind: Option<Kind>, bound: usize, lock: Option<usize>, classes: bool| -> String {
            let values = &scopes[k].1.values;
            let bound = bound.min(values.len());
            if kind.is_none() && bound == values.len() && lock.is_none() && !classes {
                return format!("s{k}");
            }
            let name = format!(
                "s{k}{}_b{bound}{}{}",
                kind_tag(kind),
                lock.map(|id| format!("_l{id}")).unwrap_or_default(),
                if classes { "_c" } else { "" }
            );
            let lock = lock.map(|id| &lock_table[id]);
            if g.get(&format!("{name}_stmt")).is_none() {
                let mut scope = Scope {
                    ops: kind.map(|kind| kinds::keeping(kind).to_vec()),
                    values: values[..bound].to_vec(),
                    no_classes: !classes,
                    ..scopes[k].1.clone()
                };
                if let Some(l) = lock {
                    scope.keep_size = l.halvings == 0;
                    scope.unstrided = (1..3).contains(&l.halvings);
                    scope.shrink = l.shrink;
                    scope.widths = l.widths.clone();
                    scope.calls = Some(l.calls.clone());
                    scope.merges = Some(l.merges.clone());
                    scope.sources = Some(l.sources.clone());
                }
                stmts::define_statement(g, &name, &scope, &callees);
                // Where the lines may halve the map once or twice, a line of its own does.
                if let (Some(l), Some(kind)) = (lock.filter(|l| (1..3).contains(&l.halvings)), kind) {
                    stmts::define_halving(g, &name, l.widths.as_deref(), kinds::keeping(kind));
                }
            }
            name
        };
    // How many times lines added with a scope may halve the map (3: as often as they like).
    let halvings_of = |lock: Option<usize>| lock.map_or(3, |id| lock_table[id].halvings);
    // Lines added inside a body: statements, or a `repeat` of them, at the body's indentation.
    // With `calling` (j, width), one of the lines calls the block the diff added as j, with the
    // width of the flow there when it is known.
    // With `halvings` 1 or 2, the run may hold that many lines of their own that halve the map
    // (the scope's statements keep its size).
    let body_adds =
        |g: &mut Grammar, scope: &str, depth: usize, calling: Option<(usize, Option<u64>)>, halvings: u8| -> Expr {
            let call_tag =
                |(j, w): (usize, Option<u64>)| format!("_call{j}{}", w.map(|w| format!("w{w}")).unwrap_or_default());
            let name = format!("adds_{scope}_d{depth}{}", calling.map(call_tag).unwrap_or_default());
            if g.get(&name).is_some() {
                return Expr::rule(name);
            }
            let stmt = Expr::rule(format!("{scope}_stmt"));
            // `+` and the indentation are one literal wherever a line starts, and what follows
            // another: llguidance's lexer is greedy and does not back out of a longer literal.
            let line =
                |d: usize, what: Expr| Expr::seq([Expr::text(format!("+{}", indent(d))), what, Expr::text("\n")]);
            let repeat = Expr::seq([
                Expr::text(format!("+{}", indent(depth))),
                Expr::text("repeat("),
                Expr::rule(format!("{scope}_pos")),
                Expr::text(") {\n"),
                Expr::Repeat(Box::new(line(depth + 1, stmt.clone())), 1, Some(MAX_ADDED / 2)),
                Expr::text(format!("+{}}}\n", indent(depth))),
            ]);
            let any = Expr::alt([line(depth, stmt.clone()), repeat]);
            let body = match calling {
                Some((j, w)) => {
                    let some = Expr::Repeat(Box::new(any), 0, Some(MAX_ADDED / 2));
                    // A block the diff adds keeps the width of the flow it is called on (its one
                    // parameter is that width): called with another, its merges cannot match.
                    let arg = match w {
                        Some(w) => Expr::text(w.to_string()),
                        None => Expr::rule(format!("{scope}_pos")),
                    };
                    let call = stmts::new_block_call(&new_names[j], arg);
                    Expr::seq([some.clone(), line(depth, call), some])
                }
                None if (1..3).contains(&halvings) => {
                    let some = Expr::Repeat(Box::new(any.clone()), 0, Some(MAX_ADDED / 2));
                    let halve = line(depth, Expr::rule(format!("{scope}_halve")));
                    let mut halving = vec![some.clone(), halve.clone(), some.clone()];
                    if halvings == 2 {
                        halving.push(Expr::opt(Expr::seq([halve, some.clone()])));
                    }
                    let mut runs = vec![Expr::Repeat(Box::new(any), 1, Some(MAX_ADDED)), Expr::seq(halving)];
                    // Or one line of its own that takes a few pixels off (`conv(16, k=3)`).
                    let shrink = format!("{scope}_shrink");
                    if g.get(&shrink).is_some() {
                        runs.push(Expr::seq([some.clone(), line(depth, Expr::rule(shrink)), some]));
                    }
                    Expr::alt(runs)
                }
                None => Expr::Repeat(Box::new(any), 1, Some(MAX_ADDED)),
            };
            g.define(&name, body)
        };
    // A new block at the top level, with a blank line before or after it as canonical text has.
    let blank = Expr::opt(Expr::text("+\n"));
    let top_adds: Vec<Expr> = new_names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            g.define(
                &format!("adds_top_{j}"),
                Expr::seq([
                    blank.clone(),
                    Expr::text(format!("+block {name}")),
                    params.clone(),
                    Expr::text("\n"),
                    new_body.clone(),
                    Expr::text("+}\n"),
                    blank.clone(),
                ]),
            )
        })
        .collect();
    // The state of the walk: NONE, no block added; CALLED, added and called; ADDED + j, block j
    // added and not yet called (the diff cannot end: an uncalled block changes no network).
    // What may be added before line i (or at the end, i = n) in a state, and the state after it.
    let states: Vec<usize> = [NONE, CALLED].into_iter().chain((0..new_names.len()).map(|j| ADDED + j)).collect();
    // With `lock` (an index into `lock_table`), the added lines keep what it says; with
    // `classes`, they may name the class count.
    let adds_at = |g: &mut Grammar, i: usize, state: usize, lock: Option<usize>, classes: bool| -> Vec<(Expr, usize)> {
        match (depth_at(i), item_of(&lines, i)) {
            (0, _) | (_, None) if state < ADDED => {
                top_adds.iter().enumerate().map(|(j, a)| (a.clone(), ADDED + j)).collect()
            }
            (0, _) | (_, None) => vec![],
            // Nothing follows the output: what could (an activation, dropout, another layer)
            // would act on the logits.
            _ if Some(i) == net_close => vec![],
            (_, Some(k)) if unreached[k] => vec![],
            (d, Some(k)) => {
                let scope = scope_for(g, k, flow[i], bound_above[i], lock, classes);
                let halvings = halvings_of(lock);
                let mut out = vec![(body_adds(g, &scope, d, None, halvings), state)];
                if state >= ADDED && (entry.is_none() || flow[i] == entry) {
                    out.push((body_adds(g, &scope, d, Some((state - ADDED, width[i])), halvings), CALLED));
                }
                out
            }
        }
    };
    let digit = nasc_grammar::Class { negated: false, ranges: vec![('0', '9')] };
    let num = g.define_token("hunk_number", Expr::Repeat(Box::new(Expr::Class(digit)), 1, Some(5)));
    let counts = |start: Expr| Expr::seq([start, Expr::opt(Expr::seq([Expr::text(","), num.clone()]))]);
    let header = |line: usize| {
        Expr::seq([
            counts(Expr::text(format!("@@ -{line}"))),
            counts(Expr::seq([Expr::text(" +"), num.clone()])),
            Expr::text(" @@\n"),
        ])
    };
    let context = |i: usize| {
        let l = lines[i].text;
        if l.is_empty() {
            // A blank context line, with its space or (as diffy writes it) without.
            Expr::alt([Expr::text(" \n"), Expr::text("\n")])
        } else {
            Expr::text(format!(" {l}\n"))
        }
    };
    let removed = |i: usize| Expr::text(format!("-{}\n", lines[i].text));
    // What replaces a removed line cannot be that line again: a change that changes nothing
    // (`-  relu` `+  relu`) is a duplicate of its parent. The added lines lose every string that
    // starts with the removed one. Each such set of lines is a rule `again_k`, defined once the
    // grammar is complete (`Grammar::without_each` copies what it must of the rules then, shared
    // between places that remove the same text).
    // A retry's grammar leaves out the runs it was given the same way.
    let mut again: Vec<(Expr, Vec<Excluded>)> = Vec::new();
    let mut again_index: HashMap<(Expr, Vec<Excluded>), usize> = HashMap::new();
    let mut not_again = |adds: &Expr, excluded: Vec<Excluded>| -> Expr {
        let key = (adds.clone(), excluded.clone());
        let k = *again_index.entry(key).or_insert_with(|| {
            again.push((adds.clone(), excluded));
            again.len() - 1
        });
        Expr::rule(format!("again_{k}"))
    };
    let avoided = |i: usize, replacing: bool| -> Vec<Excluded> {
        avoid
            .iter()
            .filter(|a| a.at == i && a.replacing == replacing)
            .map(|a| Excluded::Exactly(a.run.clone()))
            .collect()
    };
    // A line that binds a value cannot be removed (the body's later lines use it), only
    // replaced by another binding of that value, from the statements of its place.
    // Typed by the kind of the value (none where the line changes the kind), keeping what its
    // lock says; bare `in` only where the lock lets a pipeline start from it.
    let binding_scope: Vec<Option<(String, &str, bool)>> = (0..n)
        .map(|i| {
            let v = bound_name(lines[i].text).filter(|_| lines[i].depth > 0)?;
            let kind = flow[i + 1].filter(|_| flow[i].is_none() || flow[i] == flow[i + 1]);
            let lock = rebind_locks[i];
            let bare_in = lock.is_none_or(|id| lock_table[id].sources.iter().any(|s| s == "in"));
            let classes = uses_classes(lines[i].text);
            Some((scope_for(&mut g, lines[i].item?, kind, bound_above[i], lock, classes), v, bare_in))
        })
        .collect();
    // A `repeat` head may be replaced by one with another count (the body stays).
    let mut new_head = |i: usize| -> Option<Expr> {
        let l = &lines[i];
        let k = l.item.filter(|&k| !unreached[k])?;
        let head = if let Some((scope, v, bare_in)) = &binding_scope[i] {
            let bare = bare_in.then(|| Expr::text("in"));
            Expr::seq([
                Expr::text(format!("+{}{v} = ", indent(l.depth))),
                Expr::alt(bare.into_iter().chain([Expr::rule(format!("{scope}_pipe"))])),
                Expr::text("\n"),
            ])
        } else if l.text.trim_start().starts_with("repeat(") {
            Expr::seq([
                Expr::text(format!("+{}", indent(l.depth))),
                Expr::text("repeat("),
                Expr::rule(format!("s{k}_pos")),
                Expr::text(") {\n"),
            ])
        } else {
            return None;
        };
        let head = not_again(&head, vec![Excluded::Exactly(format!("+{}\n", l.text))]);
        Some(Expr::seq([removed(i), head]))
    };
    let r = |name: String| Expr::rule(name);
    // Line i removed (the walk goes on in `gone_{i+1}`, where it cannot come back), or its
    // `repeat` head replaced.
    let heads: Vec<Option<Expr>> = (0..n).map(&mut new_head).collect();
    let change = |i: usize, state: usize| -> Vec<Expr> {
        let mut out = Vec::new();
        if lines[i].removable {
            out.push(Expr::seq([removed(i), r(format!("gone_{}_{state}", i + 1))]));
        }
        out.extend(heads[i].clone().map(|h| Expr::seq([h, r(format!("post_{}_0_{state}", i + 1))])));
        out
    };
    // Line i kept as context, while fewer than `limit` context lines have passed (k so far; the
    // walk goes on in `{next}_{i+1}_{k+1}`), or changed; nothing at the end of the parent.
    let step = |i: usize, k: usize, limit: usize, next: &str, state: usize| -> Vec<Expr> {
        let mut out = Vec::new();
        if i < n {
            if k < limit {
                out.push(Expr::seq([context(i), r(format!("{next}_{}_{}_{state}", i + 1, k + 1))]));
            }
            out.extend(change(i, state));
        }
        out
    };
    let close = Expr::text("```");
    // Rules, from the end of the parent back, per state; a rule whose alternatives all die (a
    // state that cannot reach the end) is pruned afterwards. lead_i_k: before line i, k context
    // lines into a hunk with no change yet; post_i_k: k context lines after the last change;
    // added_i: just after lines added before line i; after_i: the fence closes, or a hunk
    // starts at line i or later; first_i: a hunk starts at line i or later (a diff has at
    // least one); hunk_i: a hunk starting at line i.
    for i in (0..=n).rev() {
        for &state in &states {
            let mut adds = adds_at(&mut g, i, state, locks[i], false);
            let avoided_here = avoided(i, false);
            if !avoided_here.is_empty() {
                for (a, _) in adds.iter_mut() {
                    *a = not_again(a, avoided_here.clone());
                }
            }
            let end = r(format!("after_{i}_{state}"));
            let then = |suffix: &str| -> Vec<Expr> {
                adds.iter().map(|(a, s)| Expr::seq([a.clone(), r(format!("added_{i}_{s}{suffix}"))])).collect()
            };
            // Just after added lines: no more added at once (they would be one run).
            let alts = [vec![end.clone()], step(i, 0, BETWEEN, "post", state)].concat();
            g.define(&format!("added_{i}_{state}"), Expr::alt(alts));
            for k in 0..=BETWEEN {
                let alts = [vec![end.clone()], then(""), step(i, k, BETWEEN, "post", state)].concat();
                g.define(&format!("post_{i}_{k}_{state}"), Expr::alt(alts));
            }
            // Just after line i - 1 was removed: as post_i_0, but the lines added cannot start
            // with the one removed.
            if i > 0 && lines[i - 1].removable {
                let text = lines[i - 1].text;
                let mut excluded = vec![Excluded::StartingWith(format!("+{text}\n"))];
                excluded.extend(avoided(i, true));
                let replacing = adds_at(&mut g, i, state, replace_locks[i - 1], uses_classes(text));
                let again: Vec<Expr> = replacing
                    .iter()
                    .map(|(a, s)| {
                        let a = not_again(a, excluded.clone());
                        Expr::seq([a, r(format!("added_{i}_{s}"))])
                    })
                    .collect();
                let alts = [vec![end.clone()], again, step(i, 0, BETWEEN, "post", state)].concat();
                g.define(&format!("gone_{i}_{state}"), Expr::alt(alts));
            }
            for k in 0..=LEAD {
                // A hunk opens on a line of the parent, context or removed, which is where the
                // applier puts it; only the hunk at the end (`@@ -N`: after line N) opens on
                // added lines, and the fence closes after it.
                let opening = match (k, i == n) {
                    (0, false) => vec![],
                    (0, true) => then("_x"),
                    _ => then(""),
                };
                let alts = [opening, step(i, k, LEAD, "lead", state)].concat();
                g.define(&format!("lead_{i}_{k}_{state}"), Expr::alt(alts));
            }
            if i == n && state < ADDED {
                g.define(&format!("added_{i}_{state}_x"), close.clone());
            }
            let start_line = if i < n { i + 1 } else { n };
            let hunk = g.define(
                &format!("hunk_{i}_{state}"),
                Expr::seq([header(start_line), r(format!("lead_{i}_0_{state}"))]),
            );
            // The next hunk starts at the line after this one's last, or later.
            let later = (i < n).then(|| r(format!("first_{}_{state}", i + 1)));
            g.define(&format!("first_{i}_{state}"), Expr::alt([hunk].into_iter().chain(later)));
            let first = r(format!("first_{i}_{state}"));
            g.define(
                &format!("after_{i}_{state}"),
                if state >= ADDED { first } else { Expr::alt([close.clone(), first]) },
            );
        }
    }
    g.define("diff", Expr::seq([Expr::text(format!("```diff\n--- a/{file}\n+++ b/{file}\n")), r("first_0_0".into())]));
    // Too large a copy (never, for a line of a program) leaves those lines unrestricted.
    let less = g.without_each(&again, "x").map_err(|e| e.to_string())?;
    for (k, ((adds, _), less)) in again.iter().zip(less).enumerate() {
        g.define(&format!("again_{k}"), less.unwrap_or_else(|| adds.clone()));
    }
    g.prune().map_err(|e| e.to_string())?;
    Ok(g)
}

/// The kind of flow at most of the places in the net's body, where a new block is called.
fn entry_kind(lines: &[Line], flow: &[Option<Kind>], net: Option<usize>) -> Option<Kind> {
    let mut counts: Vec<(Kind, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.item != net || net.is_none() || line.depth == 0 {
            continue;
        }
        if let Some(kind) = flow[i] {
            match counts.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, c)) => *c += 1,
                None => counts.push((kind, 1)),
            }
        }
    }
    // The first of the most common, in the order they appear.
    let most = counts.iter().map(|(_, c)| *c).max()?;
    counts.into_iter().find(|(_, c)| *c == most).map(|(k, _)| k)
}

/// The body of a new block called on a flow of kind `entry` (any kind when the dataset is not
/// known), one line at a time as a walk over kinds and one value. Its parameter is `c`, the
/// width of the flow it is called on; a line keeps the kind (`check::kinds::keeping`) or changes
/// it (`gap`: maps to a vector). A new block is a residual or a gate: its first line binds its
/// one value, `x = in`, and it ends only after merging x back. While the flow keeps x's shape
/// (lines that preserve it: `kinds::preserving`, windows that keep the size, widths of `c`), a
/// line may start with `add(x)` (a residual); on maps, a `gap` of such a flow is a vector
/// of width `c`, which stays one through lines that keep it and `linear(c)`, and `mul(x)` gates
/// the maps by it (squeeze-excitation). A stack of plain layers with no path around it, which a
/// small model writes readily and which one epoch does not train (session 17's arms: 12 of 15
/// such children at chance), is not offered. It ends on the entry kind, as the place it is
/// called needs, after at most [`MAX_BLOCK`] lines. A context-free grammar cannot keep the names
/// a model makes up, so the value is always `x` and the parameter `c`.
fn new_block_body(g: &mut Grammar, entry: Option<Kind>, callees: &[stmts::Callee]) -> Expr {
    let Some(entry) = entry else { return untyped_block_body(g, callees) };
    let all = [Kind::Map, Kind::Tokens, Kind::Vector];
    let tag = |k: Kind| kind_tag(Some(k));
    let base = Scope { numbers: vec!["c".to_string()], no_merges: true, no_classes: true, ..Scope::default() };
    // Free lines per kind, and the changes of kind (free lines do not use x: its shape may not
    // be the flow's). Maps keep their size: the block may be called where the map is already
    // small, and nothing here knows where.
    for k in all {
        let scope = Scope { ops: Some(kinds::keeping(k).to_vec()), keep_size: k == Kind::Map, ..base.clone() };
        stmts::define_statement(g, &format!("snew{}", tag(k)), &scope, callees);
        for to in all {
            if to != k && !kinds::changing(k, to).is_empty() {
                let ops = Some(kinds::changing(k, to).to_vec());
                stmts::define_statement(
                    g,
                    &format!("snew{}{}", tag(k), tag(to)),
                    &Scope { ops, ..base.clone() },
                    callees,
                );
            }
        }
    }
    // Lines that keep x's shape (`snews`), and lines that start with a residual of x (`snewm`).
    let windows = ["conv", "dwconv", "maxpool", "avgpool", "linear"];
    let mut same: Vec<&'static str> = kinds::preserving(entry).to_vec();
    same.extend(kinds::keeping(entry).iter().filter(|op| windows.contains(op)));
    let x = vec!["x".to_string()];
    let keep = Scope {
        ops: Some(same),
        keep_size: true,
        widths: Some(vec!["c".to_string()]),
        values: x.clone(),
        sources: Some(x.clone()),
        ..base.clone()
    };
    stmts::define_statement(g, "snews", &keep, callees);
    // Only the gate multiplies by x: a product of two unbounded flows is no block of the field
    // (session 18's MLP children that did were at chance 3 times in 3).
    let merging = Scope { merges: Some(vec![("add", x.clone())]), no_merges: false, merge_first: true, ..keep.clone() };
    stmts::define_statement(g, "snewm", &merging, callees);
    // A vector of width c, from the gap of maps of x's shape (a gate, once `mul(x)` merges it).
    let gate = entry == Kind::Map;
    if gate {
        let mut ops: Vec<&'static str> = kinds::preserving(Kind::Vector).to_vec();
        ops.push("linear");
        let scope = Scope { ops: Some(ops), widths: Some(vec!["c".to_string()]), ..base.clone() };
        stmts::define_statement(g, "snewg", &scope, callees);
    }
    let line = |stmt: Expr| Expr::seq([Expr::text("+  "), stmt, Expr::text("\n")]);
    let stmt = |scope: &str| Expr::rule(format!("{scope}_stmt"));
    // States: s, the flow of x's shape; g, the gate vector; o{kind}, the flow of another shape;
    // each with `m` once x has been merged. `nb_{state}_{r}`: r lines left.
    let named = |state: &str, merged: bool| format!("{state}{}", if merged { "m" } else { "" });
    let kind_of = |state: &str| match state {
        "s" => entry,
        "g" => Kind::Vector,
        _ => all.into_iter().find(|&k| state[1..] == *tag(k)).unwrap_or(entry),
    };
    // The lines that may come next in a state, with r > 0 lines left.
    let lines_from = |state: &str, merged: bool, r: u32| -> Vec<Expr> {
        let to = |state: &str, merged: bool| Expr::rule(format!("nb_{}_{}", named(state, merged), r - 1));
        let kind = kind_of(state);
        let mut alts = Vec::new();
        match state {
            "s" => {
                alts.push(Expr::seq([line(stmt("snews")), to("s", merged)]));
                alts.push(Expr::seq([line(stmt("snewm")), to("s", true)]));
                if gate {
                    alts.push(Expr::seq([line(Expr::text("gap")), to("g", merged)]));
                }
            }
            "g" => {
                alts.push(Expr::seq([line(stmt("snewg")), to("g", merged)]));
                alts.push(Expr::seq([line(Expr::text("mul(x)")), to("s", true)]));
            }
            _ if gate && kind == Kind::Vector => {
                alts.push(Expr::seq([line(Expr::rule("nb_linear_c")), to("g", merged)]));
            }
            _ => {}
        }
        alts.push(Expr::seq([line(stmt(&format!("snew{}", tag(kind)))), to(&format!("o{}", tag(kind)), merged)]));
        for k in all {
            if k != kind && !kinds::changing(kind, k).is_empty() {
                alts.push(Expr::seq([
                    line(stmt(&format!("snew{}{}", tag(kind), tag(k)))),
                    to(&format!("o{}", tag(k)), merged),
                ]));
            }
        }
        alts
    };
    let mut states = vec!["s".to_string()];
    if gate {
        states.push("g".to_string());
    }
    states.extend(all.iter().map(|&k| format!("o{}", tag(k))));
    for r in 0..MAX_BLOCK {
        for state in &states {
            for merged in [false, true] {
                let end = (merged && kind_of(state) == entry).then_some(Expr::Empty);
                let alts = if r == 0 { Vec::new() } else { lines_from(state, merged, r) };
                g.define(&format!("nb_{}_{r}", named(state, merged)), Expr::alt(end.into_iter().chain(alts)));
            }
        }
    }
    // Split as the statements split it: llguidance's lexer does not back out of a longer
    // literal (`linear(c)` against `linear(` and `c / 4`).
    let bias = Expr::seq([Expr::text(", "), Expr::text("bias="), Expr::alt([Expr::text("true"), Expr::text("false")])]);
    g.define("nb_linear_c", Expr::seq([Expr::text("linear("), Expr::text("c"), Expr::opt(bias), Expr::text(")")]));
    g.define("new_block_body", Expr::seq([line(Expr::text("x = in")), Expr::rule(format!("nb_s_{}", MAX_BLOCK - 1))]))
}

/// [`new_block_body`] where the kind of flow is not known: `x = in` first, then any operation
/// and any block of the parent, and it ends only after a line that starts with a merge of `x`.
fn untyped_block_body(g: &mut Grammar, callees: &[stmts::Callee]) -> Expr {
    let x = vec!["x".to_string()];
    let base = Scope { numbers: vec!["c".to_string()], no_merges: true, no_classes: true, ..Scope::default() };
    stmts::define_statement(g, "snew", &base, callees);
    let merging = Scope { values: x.clone(), sources: Some(x), no_merges: false, merge_first: true, ..base };
    stmts::define_statement(g, "snewx", &merging, callees);
    let line = |stmt: &str| Expr::seq([Expr::text("+  "), Expr::rule(format!("{stmt}_stmt")), Expr::text("\n")]);
    // nb_u_r: x not merged yet, r lines left; nb_b_r: merged.
    for r in 0..MAX_BLOCK {
        for (state, merged) in [("u", false), ("b", true)] {
            let end = merged.then_some(Expr::Empty);
            let more = (r > 0).then(|| {
                let next = |s: &str| Expr::rule(format!("nb_{s}_{}", r - 1));
                Expr::alt([Expr::seq([line("snew"), next(state)]), Expr::seq([line("snewx"), next("b")])])
            });
            g.define(&format!("nb_{state}_{r}"), Expr::alt(end.into_iter().chain(more)));
        }
    }
    g.define("new_block_body", Expr::seq([Expr::text("+  x = in\n"), Expr::rule(format!("nb_u_{}", MAX_BLOCK - 1))]))
}

/// The letter rule names give a kind of flow (none when it is not known).
fn kind_tag(kind: Option<Kind>) -> &'static str {
    match kind {
        None => "",
        Some(Kind::Map) => "m",
        Some(Kind::Tokens) => "t",
        Some(Kind::Vector) => "v",
    }
}

/// The item of the place before line `i` (the end of the parent has none).
fn item_of(lines: &[Line], i: usize) -> Option<usize> {
    lines.get(i).and_then(|l| l.item)
}

/// The value a statement line binds (`b2 = x |> cbr(r3)`), if it binds one.
fn bound_name(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let name = leading_name(t)?;
    let rest = t[name.len()..].trim_start();
    rest.starts_with('=').then_some(name).filter(|_| !rest.starts_with("=="))
}

/// The name `text` starts with (`basic` of `basic(c) {`), if it starts with one.
fn leading_name(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !is_name_char(c)).unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A line's code: what comes before its comment.
fn code_of(text: &str) -> &str {
    text.split('#').next().unwrap_or("")
}

/// [`NEW_NAMES`], each made free of the parent's blocks, the operations and reserved words by a
/// number (`res2`).
fn fresh_names(callees: &[stmts::Callee]) -> Vec<String> {
    use nasc_lang::syntax::signature;
    let taken =
        |n: &str| callees.iter().any(|c| c.name == n) || signature::lookup(n).is_some() || signature::is_reserved(n);
    NEW_NAMES
        .iter()
        .map(|stem| {
            std::iter::once(stem.to_string())
                .chain((2..).map(|i| format!("{stem}{i}")))
                .find(|n| !taken(n))
                .expect("some name is free")
        })
        .collect()
}

/// The parent's lines with their depth, item and whether they may be removed.
fn lines_of(parent: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut items = 0usize;
    for text in parent.lines().map(|l| l.trim_end_matches('\r')) {
        let code = code_of(text);
        let braces = code.contains('{') || code.contains('}');
        let trimmed = code.trim();
        // A top-level line that opens a brace starts the next item (a block or the net).
        if depth == 0 && code.contains('{') {
            items += 1;
        }
        let item = if depth > 0 || code.contains('{') { items.checked_sub(1) } else { None };
        let code_empty = trimmed.is_empty();
        out.push(Line { text, depth, item, code_empty, removable: depth > 0 && !braces && !code_empty });
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    out
}

/// The kind of the flow at each place a line may be added (before parent line i, i = 0..=n),
/// read off the parent's shape table under `binding`: the kind after the nearest statement
/// above it in the same item. `None` where it is not one kind (a block called on several), or
/// the parent does not check.
fn flow_kinds(parent: &str, lines: &[Line], binding: Binding) -> Vec<Option<(Kind, Option<u64>)>> {
    let n = lines.len();
    let Ok(checked) = nasc_lang::check::check_source(parent, binding, &nasc_lang::check::Budget::default()) else {
        return vec![None; n + 1];
    };
    // The kind and width (channels of maps, the last axis otherwise) of a shape.
    let flow_of = |dims: &[u64]| {
        let width = if dims.len() == 3 { dims.first() } else { dims.last() };
        Kind::of_dims(dims).zip(width.copied())
    };
    // The flows each line's rows give, by 0-based line.
    let mut after: Vec<Vec<(Kind, u64)>> = vec![Vec::new(); n];
    for row in checked.table_rows(parent) {
        if let (Some(flow), Some(slot)) = (flow_of(&row.dims), row.line.checked_sub(1).and_then(|l| after.get_mut(l))) {
            if !slot.contains(&flow) {
                slot.push(flow);
            }
        }
    }
    // One kind, and its width if that is one too (a block called at several widths has none).
    let one = |flows: &[(Kind, u64)]| -> Option<(Kind, Option<u64>)> {
        let kind = flows.first()?.0;
        flows.iter().all(|f| f.0 == kind).then(|| (kind, flows.iter().all(|f| f.1 == flows[0].1).then_some(flows[0].1)))
    };
    let input = flow_of(&binding.input);
    // What each block's body receives: the flows of its calls, when they are of one kind.
    let mut calls: HashMap<&str, Vec<(Kind, u64)>> = HashMap::new();
    for (name, dims) in checked.block_inputs() {
        if let Some(flow) = flow_of(&dims) {
            let slot = calls.entry(name).or_default();
            if !slot.contains(&flow) {
                slot.push(flow);
            }
        }
    }
    (0..=n)
        .map(|i| {
            let item = lines.get(i).and_then(|l| l.item)?;
            for j in (0..i).rev() {
                if lines[j].item != Some(item) {
                    break;
                }
                if !after[j].is_empty() {
                    return one(&after[j]);
                }
            }
            // The top of the item's body: the net starts from the input; a block, from the flows
            // it is called on.
            let head = lines[..i].iter().rposition(|l| l.item == Some(item) && l.depth == 0)?;
            let head = lines[head].text.trim_start();
            if head.starts_with("net") {
                let (kind, width) = input?;
                return Some((kind, Some(width)));
            }
            one(calls.get(leading_name(head.strip_prefix("block")?.trim_start())?)?)
        })
        .collect()
}

/// What lines added at one place must keep so that the rest of the parent still checks, found
/// by checking the parent with a probe line there (`Lock::at`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Lock {
    /// How many times the lines may halve a map's size: 0 when a line that halves it
    /// (`maxpool(k=2)`) does not check here, 1 when one that quarters it does not, 2 when one
    /// that divides it by 8 does not; 3, free.
    halvings: u8,
    /// Where `halvings` is 1 or 2, how many pixels a line may take off the map's side (2, 4 or
    /// 6: the most that a stride-1 pool of kernel 3, 5 or 7 leaves checking; 0, none).
    shrink: u8,
    /// The widths a line may write, when one that doubles the width does not check here.
    widths: Option<Vec<String>>,
    /// The blocks that may be called here, each with the widths it may be called at (`None`:
    /// any, as a call at a doubled width checks).
    calls: Vec<(String, Option<Vec<String>>)>,
    /// The merges that check here, each with the values (bound above) it may take.
    merges: Vec<(&'static str, Vec<String>)>,
    /// The values a pipeline may start from here (`in`, bound names): those of the flow's shape.
    sources: Vec<String>,
}

/// Where a lock is probed: the parent's lines (perhaps less one that a change removes), the
/// place (before line `at`, at `depth`), the flow there, and the item's names.
struct Place<'a> {
    texts: &'a [&'a str],
    at: usize,
    depth: usize,
    kind: Kind,
    width: Option<u64>,
    numbers: &'a [String],
    values: &'a [String],
    callees: &'a [stmts::Callee],
    uncallable: &'a [String],
    /// Where the lines replace a binding of the parent (line `at`, `value = rhs`) rather than
    /// go before line `at`: the value and the right-hand side it had.
    rebinding: Option<(&'a str, &'a str)>,
}

impl Lock {
    fn at(p: &Place, binding: Binding) -> Lock {
        let budget = nasc_lang::check::Budget::default();
        // The parent with `line` at the place.
        let checks_line = |line: &str| {
            let mut src = String::new();
            for l in &p.texts[..p.at] {
                src.push_str(l);
                src.push('\n');
            }
            src.push_str(&"  ".repeat(p.depth));
            src.push_str(line);
            src.push('\n');
            let after = p.at + usize::from(p.rebinding.is_some());
            for l in p.texts.get(after..).unwrap_or_default() {
                src.push_str(l);
                src.push('\n');
            }
            nasc_lang::check::check_source(&src, binding, &budget).is_ok()
        };
        // A statement at the place; in a binding, a stage after what it bound.
        let checks = |probe: &str| match p.rebinding {
            None => checks_line(probe),
            Some((value, rhs)) => checks_line(&format!("{value} = {rhs} |> {probe}")),
        };
        let halvings = if p.kind == Kind::Map {
            ["maxpool(k=2)", "maxpool(k=4)", "maxpool(k=8)"].iter().take_while(|probe| checks(probe)).count() as u8
        } else {
            3
        };
        let shrink = if p.kind == Kind::Map && (1..3).contains(&halvings) {
            [6u8, 4, 2].into_iter().find(|s| checks(&format!("maxpool(k={}, s=1)", s + 1))).unwrap_or(0)
        } else {
            0
        };
        // A width no place has: double the flow's, or one many group counts divide.
        let odd = p.width.map_or(96, |w| 2 * w).to_string();
        // The flow's width, half of it (a narrower layer), and the item's integer names.
        let known = p.width.into_iter().flat_map(|w| [w.to_string(), (w / 2).max(1).to_string()]);
        let mut candidates: Vec<String> = known.chain(p.numbers.iter().cloned()).collect();
        candidates.dedup();
        let fitting = |line: &dyn Fn(&str) -> String| -> Option<Vec<String>> {
            (!checks(&line(&odd))).then(|| candidates.iter().filter(|w| checks(&line(w))).cloned().collect())
        };
        let widen = |w: &str| if p.kind == Kind::Map { format!("conv({w}, k=1)") } else { format!("linear({w})") };
        let widths = fitting(&widen);
        let calls = p
            .callees
            .iter()
            .filter(|b| !p.uncallable.contains(&b.name))
            .filter_map(|b| {
                if b.params.is_empty() {
                    return checks(&b.name).then(|| (b.name.clone(), None));
                }
                // Its other parameters at their defaults, or 3 where they have none.
                let rest: String = b.params[1..].iter().filter(|(_, d)| !d).map(|(n, _)| format!(", {n}=3")).collect();
                Some((b.name.clone(), fitting(&|w: &str| format!("{}({w}{rest})", b.name))))
            })
            .collect();
        let merges = ["add", "mul", "concat"]
            .into_iter()
            .map(|m| (m, p.values.iter().filter(|v| checks(&format!("{m}({v})"))).cloned().collect()))
            .collect();
        let sources = std::iter::once("in".to_string())
            .chain(p.values.iter().cloned())
            .filter(|v| match p.rebinding {
                None => checks_line(&format!("{v} |> identity")),
                Some((value, _)) => checks_line(&format!("{value} = {v}")),
            })
            .collect();
        Lock { halvings, shrink, widths, calls, merges, sources }
    }
}

/// [`diff_grammar`] as Lark, for llguidance (`nasc serve`, vLLM's llguidance backend).
pub fn diff_lark(parent: &str, file: &str, binding: Option<Binding>) -> Result<String, String> {
    nasc_grammar::lark::print(&diff_grammar(parent, file, binding)?).map_err(|e| e.to_string())
}

/// [`diff_grammar`] as GBNF, for llama.cpp's server and vLLM's default backend.
pub fn diff_gbnf(parent: &str, file: &str, binding: Option<Binding>) -> Result<String, String> {
    nasc_grammar::gbnf::print(&diff_grammar(parent, file, binding)?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{avoid_of, Avoid};

    #[test]
    fn avoid_of_finds_each_run_of_added_lines_and_its_place() {
        let diff = "--- a/program.arch\n+++ b/program.arch\n@@ -3,4 +3,5 @@\n   relu\n+  linear(84)\n   dropout\n\
                    -  linear(10)\n+  linear(12)\n+  relu\n   linear(classes)\n@@ -20,0 +22,1 @@\n+  gelu\n";
        let avoid = avoid_of(diff);
        let run = |at: usize, replacing: bool, run: &str| Avoid { at, replacing, run: run.to_string() };
        assert_eq!(
            avoid,
            [run(3, false, "+  linear(84)\n"), run(5, true, "+  linear(12)\n+  relu\n"), run(20, false, "+  gelu\n"),]
        );
        assert!(avoid_of("no diff here\n+  relu\n").is_empty(), "lines before a hunk are headers");
    }
}
