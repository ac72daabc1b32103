//! The broken-diff corpus (tests/corpus/broken_diffs): realistic damaged model replies against
//! zoo programs, each with its expected outcome. The test applies every one, checks the outcome
//! and the tolerances recorded, and prints the apply rate per kind of damage.
//!
//! Each case is `KIND_NN.reply` (the raw reply), `KIND_NN.expect` (`base:`, `outcome:`,
//! `tolerances:` lines) and, when the outcome is `ok`, `KIND_NN.after` (the program it must
//! give). The expectations come from the damage the generator meant to do, never from running
//! the engine. Regenerate with `cargo test --test delta_corpus -- --ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use nasc_delta::delta::{apply_reply, ApplyOptions, Tolerance};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

struct Expect {
    base: String,
    outcome: String,
    tolerances: BTreeSet<String>,
}

fn read_expect(text: &str) -> Expect {
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default();
    Expect {
        base: field("base:"),
        outcome: field("outcome:"),
        tolerances: field("tolerances:").split_whitespace().map(str::to_string).collect(),
    }
}

#[test]
fn every_broken_diff_has_its_expected_outcome() {
    let dir = corpus().join("broken_diffs");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("tests/corpus/broken_diffs exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".reply").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 100, "the corpus has {} cases", names.len());

    // kind -> (cases, applied, as expected)
    let mut rates: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for name in &names {
        let kind = name.rsplit_once('_').map_or(name.as_str(), |(k, _)| k).to_string();
        let reply = fs::read_to_string(dir.join(format!("{name}.reply"))).unwrap();
        let expect = read_expect(&fs::read_to_string(dir.join(format!("{name}.expect"))).unwrap());
        let base = fs::read_to_string(corpus().join("bases").join(format!("{}.arch", expect.base)))
            .unwrap_or_else(|_| panic!("{name}: no base {}", expect.base));

        let result = apply_reply(&base, &reply, ApplyOptions::default());
        let entry = rates.entry(kind).or_default();
        entry.0 += 1;
        let problem = match &result {
            Ok(a) => {
                entry.1 += 1;
                let got: BTreeSet<String> = a.tolerances.iter().map(Tolerance::kind).map(str::to_string).collect();
                let after = fs::read_to_string(dir.join(format!("{name}.after"))).ok();
                if expect.outcome != "ok" {
                    Some(format!("applied, but {} was expected", expect.outcome))
                } else if after.as_deref() != Some(a.text.as_str()) {
                    Some(format!("applied to the wrong text:\n{}", a.text))
                } else if got != expect.tolerances {
                    Some(format!("tolerances {got:?}, expected {:?}", expect.tolerances))
                } else {
                    None
                }
            }
            Err(e) if e.verdict().as_str() == expect.outcome => None,
            Err(e) => Some(format!("{} ({e}), expected {}", e.verdict(), expect.outcome)),
        };
        match problem {
            None => entry.2 += 1,
            Some(p) => failures.push(format!("{name}: {p}")),
        }
    }

    println!("{:<24} {:>5} {:>8} {:>11}", "kind", "cases", "applied", "as expected");
    for (kind, (n, applied, good)) in &rates {
        println!("{kind:<24} {n:>5} {:>7.0}% {good:>5}/{n:<5}", 100.0 * *applied as f64 / *n as f64);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---- the generator ----

/// The bases the corpus is made against: copies of zoo programs, so the corpus does not move
/// when the zoo does.
const BASES: [&str; 6] = ["resnet18", "vgg11_bn", "mlp", "mobilenetv2", "vit_tiny", "se_resnet18"];

/// A deterministic generator, so regenerating gives the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

struct Case {
    base: &'static str,
    reply: String,
    outcome: &'static str,
    tolerances: Vec<&'static str>,
    after: Option<String>,
    note: String,
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn unlines(ls: &[String]) -> String {
    let mut s = ls.join("\n");
    s.push('\n');
    s
}

/// Lines a model might edit: indented operations, not comments, braces or bindings.
fn op_lines(base: &[String]) -> Vec<usize> {
    (0..base.len())
        .filter(|&i| {
            let l = &base[i];
            l.starts_with("  ") && !l.trim_start().starts_with('#') && !l.contains(['{', '}', '='])
        })
        .collect()
}

const NEW_OPS: [&str; 10] = [
    "gelu",
    "silu",
    "dropout(0.1)",
    "conv(96, k=3, p=1, bias=false)",
    "bn",
    "relu",
    "dwconv(k=3, p=1)",
    "conv(48, k=1)",
    "hardswish",
    "identity",
];

/// One model edit at op line `i`: replace, insert after, or delete.
fn edit(base: &[String], i: usize, rng: &mut Rng) -> (Vec<String>, String) {
    let indent: String = base[i].chars().take_while(|c| *c == ' ').collect();
    let new = loop {
        let op = format!("{indent}{}", rng.pick(&NEW_OPS));
        if op != base[i] {
            break op;
        }
    };
    let mut out = base.to_vec();
    match rng.below(3) {
        0 => {
            out[i] = new.clone();
            (out, format!("replace line {} with `{}`", i + 1, new.trim()))
        }
        1 => {
            out.insert(i + 1, new.clone());
            (out, format!("insert `{}` after line {}", new.trim(), i + 1))
        }
        _ => {
            out.remove(i);
            (out, format!("delete line {}", i + 1))
        }
    }
}

/// A clean diff from `base` to `target` with realistic file names.
fn clean_diff(base: &str, target: &str) -> String {
    diffy::create_patch(base, target).to_string().replacen("--- original", "--- a/model.arch", 1).replacen(
        "+++ modified",
        "+++ b/model.arch",
        1,
    )
}

/// The old-side lines of each hunk in a diff.
fn hunk_olds(diff: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for l in diff.lines() {
        if l.starts_with("@@") {
            out.push(Vec::new());
        } else if let Some(cur) = out.last_mut() {
            if let Some(r) = l.strip_prefix(' ').or_else(|| l.strip_prefix('-')) {
                cur.push(r.to_string());
            }
        }
    }
    out
}

/// How often `pre` occurs in `base`, comparing lines without whitespace.
fn occurrences(base: &[String], pre: &[String]) -> usize {
    let norm = |s: &str| s.split_whitespace().collect::<String>();
    let b: Vec<String> = base.iter().map(|l| norm(l)).collect();
    let p: Vec<String> = pre.iter().map(|l| norm(l)).collect();
    if p.is_empty() || p.len() > b.len() {
        return 0;
    }
    (0..=b.len() - p.len()).filter(|&s| b[s..s + p.len()] == p[..]).count()
}

fn unique_hunks(base: &[String], diff: &str) -> bool {
    hunk_olds(diff).iter().all(|pre| occurrences(base, pre) == 1)
}

/// Rewrites each `@@` header with `f(old_start, old_len, new_start, new_len)`.
fn map_headers(diff: &str, f: impl Fn(usize, usize, usize, usize) -> String) -> String {
    let range = |s: &str| -> (usize, usize) {
        match s.split_once(',') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (s.parse().unwrap(), 1),
        }
    };
    diff.lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("@@ -") {
                let inner = rest.split(" @@").next().unwrap();
                let (old, new) = inner.split_once(" +").unwrap();
                let (os, ol) = range(old);
                let (ns, nl) = range(new);
                format!("{}\n", f(os, ol, ns, nl))
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Whether every hunk start stays at line 1 or later when moved by `by`.
fn shift_ok(diff: &str, by: i64) -> bool {
    let ok = std::cell::Cell::new(true);
    map_headers(diff, |os, _, ns, _| {
        if (os as i64 + by) < 1 || (ns as i64 + by) < 1 {
            ok.set(false);
        }
        String::new()
    });
    ok.get()
}

fn drop_file_headers(diff: &str) -> String {
    diff.lines().filter(|l| !l.starts_with("--- ") && !l.starts_with("+++ ")).map(|l| format!("{l}\n")).collect()
}

fn fenced(diff: &str) -> String {
    format!("```diff\n{diff}```\n")
}

const INTROS: [&str; 5] = [
    "Here is a modification that should improve accuracy:",
    "I'll make the network a bit wider at this stage.",
    "Proposed change:",
    "Let's try a small tweak to the activation functions.",
    "The following diff adds regularisation.",
];

const OUTROS: [&str; 4] = [
    "This keeps the parameter count roughly the same.",
    "Let me know how it trains!",
    "The rest of the network is unchanged.",
    "Expected effect: slightly better generalisation.",
];

/// A model edit of `base` with one hunk (or `edits` hunks), where `ok` accepts the clean diff.
fn edited(
    base: &[String],
    rng: &mut Rng,
    edits: usize,
    ok: impl Fn(&[String], &str) -> bool,
) -> Option<(String, String, String)> {
    let ops = op_lines(base);
    for _ in 0..200 {
        let mut target = base.to_vec();
        let mut notes = Vec::new();
        // Edits go bottom-up so earlier indices stay valid; far apart so hunks stay separate.
        let mut picks: Vec<usize> = (0..edits).map(|_| *rng.pick(&ops)).collect();
        picks.sort_unstable_by(|a, b| b.cmp(a));
        if picks.windows(2).any(|w| w[0] - w[1] < 10) {
            continue;
        }
        for i in picks {
            let (t, note) = edit(&target, i, rng);
            target = t;
            notes.push(note);
        }
        let (b, t) = (unlines(base), unlines(&target));
        let diff = clean_diff(&b, &t);
        if diff.matches("\n@@").count() != edits || !ok(base, &diff) {
            continue;
        }
        return Some((t, diff, notes.join("; ")));
    }
    None
}

/// Context lines of a hunk body, by index into the diff's lines.
fn context_indices(diff_lines: &[String]) -> Vec<usize> {
    (0..diff_lines.len()).filter(|&i| diff_lines[i].starts_with(' ')).collect()
}

type Maker = fn(&'static str, &[String], &mut Rng, usize) -> Option<Case>;

fn ok_case(base: &'static str, reply: String, after: String, tol: &[&'static str], note: String) -> Option<Case> {
    Some(Case { base, reply, outcome: "ok", tolerances: tol.to_vec(), after: Some(after), note })
}

fn clean(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    ok_case(base, fenced(&diff), after, &[], format!("control, no damage: {note}"))
}

fn prose_around(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let reply = if n.is_multiple_of(2) {
        format!("{}\n\n{}\n{}\n", rng.pick(&INTROS), fenced(&diff), rng.pick(&OUTROS))
    } else {
        format!("{}\n{}\n{}\n", rng.pick(&INTROS), diff, rng.pick(&OUTROS))
    };
    ok_case(
        base,
        reply,
        after,
        &[],
        format!("prose before and after, {}: {note}", if n.is_multiple_of(2) { "fenced" } else { "bare" }),
    )
}

fn no_file_headers(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let d = drop_file_headers(&diff);
    let reply = if n.is_multiple_of(2) { fenced(&d) } else { d };
    ok_case(base, reply, after, &[], format!("no ---/+++ lines: {note}"))
}

fn drifted(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, unique_hunks)?;
    let by = *rng.pick(&[-9i64, -5, -3, -2, -1, 1, 2, 4, 7, 12]);
    if !shift_ok(&diff, by) {
        return None;
    }
    let d = map_headers(&diff, |os, ol, ns, nl| {
        let s = |x: usize| (x as i64 + by).max(1);
        format!("@@ -{},{ol} +{},{nl} @@", s(os), s(ns))
    });
    if d == diff {
        return None;
    }
    ok_case(base, fenced(&d), after, &["drifted"], format!("line numbers off by {by}: {note}"))
}

fn wrong_counts(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let (dl, dn) = *rng.pick(&[(1i64, 1i64), (-1, 0), (2, 3), (0, 2), (-2, -1), (3, 0)]);
    let d = map_headers(&diff, |os, ol, ns, nl| {
        let c = |x: usize, d: i64| (x as i64 + d).max(0);
        format!("@@ -{os},{} +{ns},{} @@", c(ol, dl), c(nl, dn))
    });
    ok_case(base, fenced(&d), after, &["recounted"], format!("@@ counts off by ({dl}, {dn}): {note}"))
}

fn no_line_numbers(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, unique_hunks)?;
    let hdr = *rng.pick(&["@@ @@", "@@ ... @@", "@@ -N,M +N,M @@", "@@"]);
    let d = map_headers(&diff, |_, _, _, _| hdr.to_string());
    ok_case(base, fenced(&d), after, &["no_line_numbers"], format!("header `{hdr}`: {note}"))
}

fn no_hunk_header(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, unique_hunks)?;
    let body: String = diff
        .lines()
        .filter(|l| !l.starts_with("@@") && (n.is_multiple_of(2) || !(l.starts_with("--- ") || l.starts_with("+++ "))))
        .map(|l| format!("{l}\n"))
        .collect();
    ok_case(base, fenced(&body), after, &["no_hunk_header"], format!("no @@ line: {note}"))
}

fn whitespace(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let style = n % 4;
    let d: String = diff
        .lines()
        .map(|l| {
            let damage = |rest: &str| match style {
                0 => format!("    {}", rest.trim_start()),
                1 => format!("\t{}", rest.trim_start()),
                2 => rest.trim_start().to_string(),
                _ => rest.replace(", ", ",").replace('=', " = "),
            };
            if let Some(r) = l.strip_prefix(' ').filter(|r| !r.trim().is_empty()) {
                format!(" {}\n", damage(r))
            } else if let Some(r) = l.strip_prefix('-').filter(|_| !l.starts_with("---")) {
                format!("-{}\n", damage(r))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if d == diff {
        return None;
    }
    let _ = rng;
    let what = ["4-space indent", "tab indent", "no indent", "spacing inside lines"][style];
    ok_case(base, fenced(&d), after, &["whitespace"], format!("{what} on context and removed lines: {note}"))
}

fn missing_prefix(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    // The model dropped the one-space prefix of context lines (as when a chat UI trims them).
    let d: String = diff
        .lines()
        .map(|l| match l.strip_prefix(' ') {
            Some(r) if !r.trim().is_empty() => format!("{r}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    ok_case(base, fenced(&d), after, &["whitespace"], format!("context lines lost their leading space: {note}"))
}

fn blank_lines(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    // Interior lines only: a blank line at a hunk's edge is just less context.
    let interior_blank = |ls: &[String]| {
        let old: Vec<usize> = (0..ls.len())
            .filter(|&i| {
                ls[i].starts_with(' ') || ls[i].is_empty() || (ls[i].starts_with('-') && !ls[i].starts_with("---"))
            })
            .collect();
        // diffy writes a blank context line as an empty line.
        old.windows(3)
            .find(|w| ls[w[1]].trim().is_empty() && !ls[w[0]].trim().is_empty() && !ls[w[2]].trim().is_empty())
            .map(|w| w[1])
    };
    let adjacent_context = |ls: &[String]| {
        context_indices(ls)
            .windows(2)
            .find(|w| w[1] == w[0] + 1 && !ls[w[0]].trim().is_empty() && !ls[w[1]].trim().is_empty())
            .map(|w| w[1])
    };
    let want_drop = n.is_multiple_of(2);
    let (after, diff, note) = edited(b, rng, 1, |_, d| {
        let ls = lines(d);
        if want_drop {
            interior_blank(&ls).is_some()
        } else {
            adjacent_context(&ls).is_some()
        }
    })?;
    let mut ls = lines(&diff);
    let (what, delta) = if want_drop {
        ls.remove(interior_blank(&ls)?);
        ("a blank context line left out", -1i64)
    } else {
        let at = adjacent_context(&ls)?;
        ls.insert(at, " ".to_string());
        ("a blank context line the program lacks", 1)
    };
    let d = map_headers(&unlines(&ls), |os, ol, ns, nl| {
        format!("@@ -{os},{} +{ns},{} @@", ol as i64 + delta, nl as i64 + delta)
    });
    ok_case(base, fenced(&d), after, &["blank_lines"], format!("{what}, counts consistent: {note}"))
}

fn fuzzed_context(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, d| {
        let ls = lines(d);
        let body: Vec<&String> = ls.iter().skip_while(|l| !l.starts_with("@@")).skip(1).collect();
        body.len() >= 7
            && body[..3].iter().all(|l| l.starts_with(' '))
            && body[body.len() - 3..].iter().all(|l| l.starts_with(' '))
    })?;
    let mut ls = lines(&diff);
    let first = ls.iter().position(|l| l.starts_with("@@"))? + 1;
    let last = ls.len() - 1;
    let bogus = ["  conv(999, k=7, p=3)", "  batchnorm2d", "  maxpool(3, s=1)", "  layer_norm"];
    let both = n % 2 == 1;
    ls[first] = format!(" {}", rng.pick(&bogus));
    if both {
        ls[last] = format!(" {}", rng.pick(&bogus));
    }
    ok_case(
        base,
        fenced(&unlines(&ls)),
        after,
        &["fuzz"],
        format!("outermost context line{} hallucinated: {note}", if both { "s at both ends" } else { " at the start" }),
    )
}

fn crlf(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let reply = format!("{}\n{}", rng.pick(&INTROS), fenced(&diff)).replace('\n', "\r\n");
    ok_case(base, reply, after, &["line_endings"], format!("CR LF line endings: {note}"))
}

fn multi_hunk(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 2, unique_hunks)?;
    if n.is_multiple_of(2) {
        return ok_case(base, fenced(&diff), after, &[], format!("two hunks: {note}"));
    }
    let by = *rng.pick(&[-4i64, -2, 3, 6]);
    if !shift_ok(&diff, by) {
        return None;
    }
    let d = map_headers(&diff, |os, ol, ns, nl| {
        let s = |x: usize| (x as i64 + by).max(1);
        format!("@@ -{},{ol} +{},{nl} @@", s(os), s(ns))
    });
    ok_case(base, fenced(&d), after, &["drifted"], format!("two hunks, both off by {by}: {note}"))
}

fn trailing_text(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let bullets = "- Swapped the activation for a smoother one\n- Kept every width the same\n";
    if n.is_multiple_of(2) {
        // Right after the last hunk line, inside the fence: read as hunk lines unless recognised.
        let reply = fenced(&format!("{}{bullets}", drop_file_headers(&diff)));
        ok_case(base, reply, after, &["trailing_text"], format!("bullet list glued to the hunk: {note}"))
    } else {
        let reply = format!("{}\n{}\nChanges:\n{bullets}", rng.pick(&INTROS), drop_file_headers(&diff));
        ok_case(base, reply, after, &[], format!("bare diff, bullet list after a blank line: {note}"))
    }
}

fn full_program(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, _, note) = edited(b, rng, 1, |_, _| true)?;
    let reply = match n % 3 {
        0 => format!("Here is the full updated architecture:\n\n```arch\n{after}```\n"),
        1 => format!("{}\n\n{after}\n{}\n", rng.pick(&INTROS), rng.pick(&OUTROS)),
        _ => format!("```\n{after}```\n"),
    };
    ok_case(base, reply, after, &["full_program"], format!("whole program instead of a diff: {note}"))
}

fn combined(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, unique_hunks)?;
    let by = *rng.pick(&[-3i64, 2, 5]);
    if !shift_ok(&diff, by) {
        return None;
    }
    let d = map_headers(&drop_file_headers(&diff), |os, ol, ns, nl| {
        let s = |x: usize| (x as i64 + by).max(1);
        format!("@@ -{},{} +{},{} @@", s(os), ol + 1, s(ns), nl + 1)
    });
    let d: String = d
        .lines()
        .map(|l| match l.strip_prefix(' ') {
            Some(r) if !r.trim().is_empty() => format!(" {}\n", r.trim_start()),
            _ => format!("{l}\n"),
        })
        .collect();
    let reply = format!("{}\n```diff\n{d}```\n{}\n", rng.pick(&INTROS), rng.pick(&OUTROS));
    ok_case(
        base,
        reply,
        after,
        &["drifted", "recounted", "whitespace"],
        format!("drift {by}, counts +1, indentation lost, no file headers, prose: {note}"),
    )
}

fn git_style(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 1, |_, _| true)?;
    // `git diff` output: a preamble, and the enclosing line after the second @@.
    let d = map_headers(&diff, |os, ol, ns, nl| {
        let context = b[..os.saturating_sub(1)]
            .iter()
            .rev()
            .find(|l| l.starts_with("block ") || l.starts_with("net"))
            .cloned()
            .unwrap_or_default();
        format!("@@ -{os},{ol} +{ns},{nl} @@ {context}")
    });
    let preamble = format!("diff --git a/zoo/{base}.arch b/zoo/{base}.arch\nindex 3f2a1c4..8b0e9d2 100644\n");
    let reply = if n.is_multiple_of(2) { fenced(&format!("{preamble}{d}")) } else { format!("{preamble}{d}") };
    ok_case(base, reply, after, &[], format!("git diff preamble and function context: {note}"))
}

fn split_fences(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (after, diff, note) = edited(b, rng, 2, |_, _| true)?;
    let at = diff.find("\n@@").map(|i| i + 1)?;
    let second = diff[at + 2..].find("\n@@").map(|i| at + 2 + i + 1)?;
    let reply = format!(
        "First, in the early layers:\n\n{}\nThen further down:\n\n{}\n{}\n",
        fenced(&diff[..second]),
        fenced(&diff[second..]),
        rng.pick(&OUTROS)
    );
    ok_case(base, reply, after, &[], format!("two hunks in two fences with prose between: {note}"))
}

fn fail_case(base: &'static str, reply: String, outcome: &'static str, note: String) -> Option<Case> {
    Some(Case { base, reply, outcome, tolerances: Vec::new(), after: None, note })
}

fn does_not_apply(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (_, diff, note) = edited(b, rng, 1, |_, d| {
        let ls = lines(d);
        ls.iter().filter(|l| l.starts_with(' ')).count() >= 5
    })?;
    let mut ls = lines(&diff);
    let what = match n % 3 {
        0 => {
            // A removed line the program does not have.
            let i = ls.iter().position(|l| l.starts_with('-') && !l.starts_with("---"));
            match i {
                Some(i) => ls[i] = "-  sigmoid".to_string(),
                None => {
                    let j = ls.iter().rposition(|l| l.starts_with('+'))?;
                    ls.insert(j, "-  layer_norm(eps=0.1)".to_string());
                }
            }
            "a removed line that is not in the program"
        }
        1 => {
            // Interior context no fuzz may skip: every context line hallucinated.
            for l in ls.iter_mut().filter(|l| l.starts_with(' ') && !l.trim().is_empty()) {
                *l = invented(l);
            }
            "every context line invented"
        }
        _ => {
            // The diff is against another program entirely.
            let other = lines(&fs::read_to_string(corpus().join("bases/vit_tiny.arch")).unwrap());
            let target = {
                let mut t = other.clone();
                let i = op_lines(&other)[3];
                t[i] = "  gelu".to_string();
                t
            };
            ls = lines(&clean_diff(&unlines(&other), &unlines(&target)));
            if base == "vit_tiny" {
                return None;
            }
            "a diff made against a different program (vit_tiny)"
        }
    };
    fail_case(base, fenced(&unlines(&ls)), "does_not_apply", format!("{what}: {note}"))
}

/// A context line as a model misremembering the program would write it: other operations,
/// other widths.
fn invented(line: &str) -> String {
    let renamed = [
        ("dwconv", "sepconv"),
        ("conv", "deconv"),
        ("bn", "ln"),
        ("relu", "prelu"),
        ("dropout", "droppath"),
        ("linear", "dense"),
        ("gap", "adaptive_avgpool(1)"),
        ("add", "sum"),
        ("flatten", "reshape"),
        ("maxpool", "avgpool"),
        ("attn", "mha"),
    ]
    .iter()
    .fold(line.to_string(), |l, (from, to)| l.replace(from, to));
    // Double every number: 64 -> 128.
    let mut out = String::new();
    let mut digits = String::new();
    for c in renamed.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            out.push_str(&(digits.parse::<u64>().unwrap_or(1) * 2).to_string());
            digits.clear();
        }
        if c != '\0' {
            out.push(c);
        }
    }
    if out == line {
        "   identity".to_string()
    } else {
        out
    }
}

fn ambiguous(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    // A hunk whose old lines occur more than once, with no line numbers to choose.
    let ops = op_lines(b);
    for _ in 0..200 {
        let i = *rng.pick(&ops);
        if i + 1 >= b.len() {
            continue;
        }
        let pre = vec![b[i].clone(), b[i + 1].clone()];
        if occurrences(b, &pre) < 2 || pre[1].trim().is_empty() || pre[1].contains('}') {
            continue;
        }
        let new = format!("{}gelu", pre[1].chars().take_while(|c| *c == ' ').collect::<String>());
        if new == pre[1] {
            continue;
        }
        let d = format!("@@ @@\n {}\n-{}\n+{new}\n", pre[0], pre[1]);
        return fail_case(
            base,
            fenced(&d),
            "ambiguous",
            format!(
                "`{}` then `{}` occurs {} times, no line numbers",
                pre[0].trim(),
                pre[1].trim(),
                occurrences(b, &pre)
            ),
        );
    }
    None
}

fn no_diff(base: &'static str, _: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let replies = [
        "I think adding dropout after the last stage would help generalisation.".to_string(),
        "Suggestions:\n- widen the first stage\n- use gelu instead of relu\n".to_string(),
        format!("{}\n\n(I could not produce a diff.)\n", rng.pick(&INTROS)),
        "```python\nmodel = torchvision.models.resnet18()\n```\n".to_string(),
        String::new(),
    ];
    fail_case(base, replies[n % replies.len()].clone(), "no_diff", "no diff and no program".to_string())
}

fn malformed(base: &'static str, b: &[String], rng: &mut Rng, n: usize) -> Option<Case> {
    let (_, diff, note) = edited(b, rng, 1, |_, _| true)?;
    let d = match n % 3 {
        0 => map_headers(&diff, |os, ol, ns, nl| format!("@@ -{os}x,{ol} +{ns},{nl} @@")),
        1 => map_headers(&diff, |os, ol, ns, nl| format!("@@@ -{os},{ol} -{os},{ol} +{ns},{nl} @@@")),
        _ => {
            // The header survived but every hunk line was cut off.
            let hdr = diff.lines().find(|l| l.starts_with("@@")).unwrap().to_string();
            format!("--- a/model.arch\n+++ b/model.arch\n{hdr}\n")
        }
    };
    let what = ["digits with junk in the header", "a combined-diff header", "a header with no lines"][n % 3];
    fail_case(base, fenced(&d), "malformed_diff", format!("{what}: {note}"))
}

fn out_of_order(base: &'static str, b: &[String], rng: &mut Rng, _: usize) -> Option<Case> {
    let (_, diff, note) = edited(b, rng, 2, unique_hunks)?;
    let ls = lines(&diff);
    let starts: Vec<usize> = (0..ls.len()).filter(|&i| ls[i].starts_with("@@")).collect();
    let head = &ls[..starts[0]];
    let h1 = &ls[starts[0]..starts[1]];
    let h2 = &ls[starts[1]..];
    let swapped: Vec<String> = head.iter().chain(h2).chain(h1).cloned().collect();
    fail_case(base, fenced(&unlines(&swapped)), "does_not_apply", format!("two hunks in reverse order: {note}"))
}

#[test]
#[ignore = "writes the corpus; run on purpose to regenerate it"]
fn regenerate_broken_diff_corpus() {
    let kinds: [(&str, Maker, usize); 23] = [
        ("clean", clean, 5),
        ("prose_around", prose_around, 6),
        ("no_file_headers", no_file_headers, 6),
        ("drifted", drifted, 8),
        ("wrong_counts", wrong_counts, 8),
        ("no_line_numbers", no_line_numbers, 6),
        ("no_hunk_header", no_hunk_header, 6),
        ("whitespace", whitespace, 8),
        ("missing_prefix", missing_prefix, 6),
        ("blank_lines", blank_lines, 6),
        ("fuzzed_context", fuzzed_context, 8),
        ("crlf", crlf, 4),
        ("multi_hunk", multi_hunk, 6),
        ("trailing_text", trailing_text, 6),
        ("full_program", full_program, 6),
        ("combined", combined, 6),
        ("git_style", git_style, 4),
        ("split_fences", split_fences, 4),
        ("does_not_apply", does_not_apply, 6),
        ("out_of_order", out_of_order, 3),
        ("ambiguous", ambiguous, 6),
        ("no_diff", no_diff, 5),
        ("malformed", malformed, 6),
    ];
    let dir = corpus().join("broken_diffs");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0;
    for (kind, make, count) in kinds {
        let mut made = 0;
        let mut attempt = 0;
        while made < count && attempt < 100 {
            let base = BASES[(made + attempt) % BASES.len()];
            attempt += 1;
            let text = fs::read_to_string(corpus().join(format!("bases/{base}.arch"))).unwrap();
            let Some(case) = make(base, &lines(&text), &mut rng, made) else {
                continue;
            };
            made += 1;
            let name = format!("{kind}_{made:02}");
            fs::write(dir.join(format!("{name}.reply")), &case.reply).unwrap();
            let expect = format!(
                "# {}\nbase: {}\noutcome: {}\ntolerances: {}\n",
                case.note,
                case.base,
                case.outcome,
                case.tolerances.join(" ")
            );
            fs::write(dir.join(format!("{name}.expect")), expect).unwrap();
            if let Some(after) = case.after {
                fs::write(dir.join(format!("{name}.after")), after).unwrap();
            }
        }
        assert_eq!(made, count, "{kind}: could only make {made}");
        total += made;
    }
    println!("wrote {total} cases");
}
