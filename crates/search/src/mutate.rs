//! The `mutate` generator: grammar-aware random edits of a program's syntax tree, each proposal returned as the canonical unified diff.
//! It proposes and never judges: its diffs go through the same verdict pipeline as a language model's reply. Seeded, hence deterministic.

use nasc_delta::delta::unified;
use nasc_lang::syntax::ast::*;
use nasc_lang::syntax::{self, canon, fmt};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The kinds of edit, named as they are recorded.
pub const MUTATIONS: [Mutation; 12] = [
    Mutation::Widen,
    Mutation::Narrow,
    Mutation::Kernel,
    Mutation::Stride,
    Mutation::InsertLayer,
    Mutation::RemoveLayer,
    Mutation::Residual,
    Mutation::SqueezeExcite,
    Mutation::Deeper,
    Mutation::Shallower,
    Mutation::SwapActivation,
    Mutation::Dropout,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Doubles the width (first positional integer) of a conv, linear, patch or block call.
    Widen,
    /// Halves one.
    Narrow,
    /// Changes a conv's or pool's kernel, keeping "same"-style padding.
    Kernel,
    /// Toggles a conv's stride between 1 and 2.
    Stride,
    /// Inserts a conv, norm, activation, dropout or pool line.
    InsertLayer,
    /// Removes such a line.
    RemoveLayer,
    /// Adds a residual block (two 3x3 convs and an identity shortcut).
    Residual,
    /// Adds a squeeze-and-excitation gate.
    SqueezeExcite,
    /// One more repetition: a `repeat` count up, or a block call repeated.
    Deeper,
    /// One fewer.
    Shallower,
    /// Replaces an activation by another.
    SwapActivation,
    /// Changes a dropout rate.
    Dropout,
}

impl Mutation {
    pub fn name(self) -> &'static str {
        match self {
            Mutation::Widen => "widen",
            Mutation::Narrow => "narrow",
            Mutation::Kernel => "kernel",
            Mutation::Stride => "stride",
            Mutation::InsertLayer => "insert_layer",
            Mutation::RemoveLayer => "remove_layer",
            Mutation::Residual => "residual",
            Mutation::SqueezeExcite => "squeeze_excite",
            Mutation::Deeper => "deeper",
            Mutation::Shallower => "shallower",
            Mutation::SwapActivation => "swap_activation",
            Mutation::Dropout => "dropout",
        }
    }
}

const ACTIVATIONS: [&str; 6] = ["relu", "relu6", "gelu", "silu", "hardswish", "tanh"];
const NORMS: [&str; 2] = ["bn", "ln"];
const REMOVABLE: [&str; 14] = [
    "conv",
    "dwconv",
    "bn",
    "ln",
    "gn",
    "relu",
    "relu6",
    "gelu",
    "silu",
    "hardswish",
    "dropout",
    "maxpool",
    "avgpool",
    "identity",
];

/// One proposal: the mutated program (canonical), the diff to it from the canonical base, and
/// the edits made.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub program: String,
    pub diff: String,
    pub mutations: Vec<Mutation>,
}

/// Proposes an edit of `base` with 1 to `max_mutations` mutations drawn by `seed`. `None` when
/// the base does not parse or no mutation changes it (after a bounded number of draws).
pub fn propose(base: &str, seed: u64, max_mutations: usize) -> Option<Proposal> {
    let original = syntax::parse(base).ok()?;
    let canonical = fmt::print(&original);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count = 1 + (rng.next_u64() % max_mutations.max(1) as u64) as usize;
    for _ in 0..16 {
        let mut p = original.clone();
        let mut done = Vec::new();
        for _ in 0..count * 8 {
            if done.len() == count {
                break;
            }
            let m = MUTATIONS[pick(&mut rng, MUTATIONS.len())];
            if apply(&mut p, m, &mut rng) {
                done.push(m);
            }
        }
        canon::canonicalize(&mut p);
        let text = fmt::print(&p);
        if !done.is_empty() && text != canonical {
            let (diff, _) = unified(&canonical, &text, "a/program.arch", "b/program.arch");
            return Some(Proposal { program: text, diff, mutations: done });
        }
    }
    None
}

/// Applies one mutation of kind `m` to `p` at a site drawn by `rng`; false if `p` has no site for it.
pub fn apply(p: &mut Program, m: Mutation, rng: &mut ChaCha8Rng) -> bool {
    match m {
        Mutation::Widen | Mutation::Narrow => {
            let wide = m == Mutation::Widen;
            edit_stage(
                p,
                rng,
                |s| width(s).is_some_and(|w| wide || w >= 4),
                |s, _| {
                    let w = width(s).expect("an eligible stage has a width");
                    set_width(s, if wide { w * 2 } else { w / 2 });
                },
            )
        }
        Mutation::Kernel => edit_stage(
            p,
            rng,
            |s| matches!(s.name.name.as_str(), "conv" | "dwconv" | "maxpool" | "avgpool") && kw_int(s, "k").is_some(),
            |s, rng| {
                let k = kw_int(s, "k").expect("eligible");
                let choices: Vec<i64> = [1, 3, 5, 7].into_iter().filter(|c| *c != k).collect();
                let new = choices[pick(rng, choices.len())];
                if kw_int(s, "p") == Some(k / 2) && k / 2 > 0 || (k == 1 && s.name.name != "maxpool") {
                    set_kw(s, "p", new / 2);
                }
                set_kw(s, "k", new);
            },
        ),
        Mutation::Stride => edit_stage(
            p,
            rng,
            |s| matches!(s.name.name.as_str(), "conv" | "dwconv"),
            |s, _| {
                let stride = kw_int(s, "s").unwrap_or(1);
                set_kw(s, "s", if stride == 1 { 2 } else { 1 });
            },
        ),
        Mutation::SwapActivation => edit_stage(
            p,
            rng,
            |s| s.args.is_none() && ACTIVATIONS.contains(&s.name.name.as_str()),
            |s, rng| {
                let others: Vec<&str> = ACTIVATIONS.into_iter().filter(|a| *a != s.name.name).collect();
                s.name.name = others[pick(rng, others.len())].into();
            },
        ),
        Mutation::Dropout => edit_stage(
            p,
            rng,
            |s| s.name.name == "dropout",
            |s, rng| {
                let rates = [0.1, 0.2, 0.3, 0.5];
                let rate = rates[pick(rng, rates.len())];
                s.args = Some(vec![Arg {
                    key: None,
                    value: ArgValue::Expr(Expr::Float(rate, Span::default())),
                    span: Span::default(),
                }]);
            },
        ),
        Mutation::InsertLayer => {
            let sites = count_bodies(p, &|b| !b.stmts.is_empty());
            if sites == 0 {
                return false;
            }
            let target = pick(rng, sites);
            let roll = rng.next_u64();
            let line_roll = rng.next_u64();
            // Nothing goes after the net's last line, which gives the classes: a layer there
            // would act on the logits.
            let net: Option<*const Body> = p.net.as_ref().map(|n| &n.body as *const Body);
            edit_body(p, target, &|b| !b.stmts.is_empty(), &mut |b| {
                let end = usize::from(!net.is_some_and(|n| std::ptr::eq(n, b)));
                let at = (roll % (b.stmts.len() + end) as u64) as usize;
                let width = width_before(b, at).unwrap_or(32);
                let line = match line_roll % 6 {
                    0 => format!("conv({width}, k=3, p=1)"),
                    1 => NORMS[(line_roll / 6 % 2) as usize].to_string(),
                    2 => ACTIVATIONS[(line_roll / 6 % ACTIVATIONS.len() as u64) as usize].to_string(),
                    3 => format!("dropout({})", [0.1, 0.2, 0.3][(line_roll / 6 % 3) as usize]),
                    4 => "maxpool(k=2)".to_string(),
                    _ => format!("conv({width}, k=3, p=1, bias=false) |> bn |> relu"),
                };
                b.stmts.insert(at, statement(&line));
            })
        }
        Mutation::RemoveLayer => {
            let removable = |b: &Body| b.stmts.len() > 1 && b.stmts.iter().any(is_removable);
            let sites = count_bodies(p, &removable);
            if sites == 0 {
                return false;
            }
            let target = pick(rng, sites);
            let roll = rng.next_u64();
            edit_body(p, target, &removable, &mut |b| {
                let idx: Vec<usize> = (0..b.stmts.len()).filter(|i| is_removable(&b.stmts[*i])).collect();
                b.stmts.remove(idx[(roll % idx.len() as u64) as usize]);
            })
        }
        Mutation::Residual | Mutation::SqueezeExcite => {
            let residual = m == Mutation::Residual;
            // Only after a line whose output width is known: the new block keeps it.
            let sites = count_bodies_in_net(p);
            if sites == 0 {
                return false;
            }
            let name = fresh_block_name(p, if residual { "res" } else { "se" });
            let roll = rng.next_u64();
            let Some(net) = p.net.as_mut() else { return false };
            let positions: Vec<(usize, i64)> =
                (1..=net.body.stmts.len()).filter_map(|at| width_before(&net.body, at).map(|w| (at, w))).collect();
            if positions.is_empty() {
                return false;
            }
            let (at, w) = positions[(roll % positions.len() as u64) as usize];
            net.body.stmts.insert(at, statement(&format!("{name}({w})")));
            let def = if residual {
                format!(
                    "block {name}(c) {{\n  x = in\n  conv(c, k=3, p=1, bias=false)\n  bn\n  relu\n  \
                     conv(c, k=3, p=1, bias=false)\n  bn\n  add(x)\n  relu\n}}\n"
                )
            } else {
                format!("block {name}(c) {{\n  x = in\n  gap\n  linear(c / 4)\n  relu\n  linear(c)\n  sigmoid\n  mul(x)\n}}\n")
            };
            add_block(p, &def);
            true
        }
        Mutation::Deeper | Mutation::Shallower => {
            let deeper = m == Mutation::Deeper;
            // A `repeat` count, if there is one to change; else a block call repeated or dropped.
            let repeat_ok = |c: i64| deeper || c > 1;
            let has_repeat = |b: &Body| {
                b.stmts
                    .iter()
                    .any(|s| matches!(&s.kind, StmtKind::Repeat { count: Expr::Int(c, _), .. } if repeat_ok(*c)))
            };
            let block_names: Vec<Name> = p.blocks.iter().map(|b| b.name.name.clone()).collect();
            let is_call = move |s: &Stmt| match &s.kind {
                StmtKind::Pipe { bind: None, pipe } => {
                    pipe.stages.len() == 1 && block_names.contains(&pipe.stages[0].name.name)
                }
                _ => false,
            };
            let calls = |b: &Body| {
                let n = b.stmts.iter().filter(|s| is_call(s)).count();
                if deeper {
                    n > 0
                } else {
                    // Only a call that has an identical neighbour can go without changing widths.
                    b.stmts.windows(2).any(|w| is_call(&w[0]) && w[0] == w[1])
                }
            };
            let eligible = |b: &Body| has_repeat(b) || calls(b);
            let sites = count_bodies(p, &eligible);
            if sites == 0 {
                return false;
            }
            let target = pick(rng, sites);
            let roll = rng.next_u64();
            edit_body(p, target, &eligible, &mut |b| {
                if has_repeat(b) {
                    for s in &mut b.stmts {
                        if let StmtKind::Repeat { count: Expr::Int(c, _), .. } = &mut s.kind {
                            if repeat_ok(*c) {
                                *c += if deeper { 1 } else { -1 };
                                return;
                            }
                        }
                    }
                } else if deeper {
                    let idx: Vec<usize> = (0..b.stmts.len()).filter(|i| is_call(&b.stmts[*i])).collect();
                    let i = idx[(roll % idx.len() as u64) as usize];
                    let copy = Stmt { trivia: Trivia::default(), ..b.stmts[i].clone() };
                    b.stmts.insert(i + 1, copy);
                } else {
                    let idx: Vec<usize> = (0..b.stmts.len() - 1)
                        .filter(|i| is_call(&b.stmts[*i]) && b.stmts[*i] == b.stmts[i + 1])
                        .collect();
                    b.stmts.remove(idx[(roll % idx.len() as u64) as usize] + 1);
                }
            })
        }
    }
}

fn pick(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn is_removable(s: &Stmt) -> bool {
    match &s.kind {
        StmtKind::Pipe { bind: None, pipe } => {
            pipe.stages.len() == 1 && REMOVABLE.contains(&pipe.stages[0].name.name.as_str())
        }
        _ => false,
    }
}

/// A statement parsed from one line of canonical text.
fn statement(line: &str) -> Stmt {
    let p = syntax::parse(&format!("net {{\n  {line}\n}}\n")).expect("mutation lines are valid syntax");
    p.net.expect("a net").body.stmts.into_iter().next().expect("one statement")
}

fn add_block(p: &mut Program, def: &str) {
    let parsed = syntax::parse(&format!("{def}\nnet {{\n  identity\n}}\n")).expect("mutation blocks are valid syntax");
    let block = parsed.blocks.into_iter().next().expect("one block");
    p.blocks.push(block);
    let idx = p.blocks.len() - 1;
    let net_at = p.order.iter().position(|r| *r == ItemRef::Net).unwrap_or(p.order.len());
    p.order.insert(net_at, ItemRef::Block(idx));
}

fn fresh_block_name(p: &Program, stem: &str) -> String {
    let taken = |n: &str| p.blocks.iter().any(|b| b.name.name == n);
    if !taken(stem) {
        return stem.to_string();
    }
    (2..).map(|i| format!("{stem}{i}")).find(|n| !taken(n)).expect("some name is free")
}

/// The width (first positional integer argument) of a conv, linear or patch, or a block call.
fn width(s: &Stage) -> Option<i64> {
    let args = s.args.as_ref()?;
    if matches!(
        s.name.name.as_str(),
        "dropout" | "leaky_relu" | "elu" | "gn" | "shuffle" | "attn" | "adaptive_avgpool" | "slice"
    ) {
        return None;
    }
    match args.first() {
        Some(Arg { key: None, value: ArgValue::Expr(Expr::Int(w, _)), .. }) if *w > 0 => Some(*w),
        _ => None,
    }
}

fn set_width(s: &mut Stage, w: i64) {
    if let Some(Arg { value: ArgValue::Expr(Expr::Int(v, _)), .. }) = s.args.as_mut().and_then(|a| a.first_mut()) {
        *v = w.max(1);
    }
}

/// The channel width of the flow just before statement `at` of `b`: the last width-giving
/// conv or block call before it, if only width-keeping lines follow it.
fn width_before(b: &Body, at: usize) -> Option<i64> {
    for s in b.stmts[..at].iter().rev() {
        let StmtKind::Pipe { bind, pipe } = &s.kind else { return None };
        if bind.is_some() {
            return None;
        }
        for st in pipe.stages.iter().rev() {
            match st.name.name.as_str() {
                "conv" => return width(st),
                "bn" | "relu" | "relu6" | "gelu" | "silu" | "hardswish" | "tanh" | "sigmoid" | "dropout"
                | "maxpool" | "avgpool" | "dwconv" | "identity" | "gn" => {}
                // A block call: its first argument is its width in every zoo program.
                name if nasc_lang::syntax::signature::lookup(name).is_none() => return width(st),
                _ => return None,
            }
        }
    }
    None
}

fn kw_int(s: &Stage, key: &str) -> Option<i64> {
    s.args.as_ref()?.iter().find_map(|a| match (&a.key, &a.value) {
        (Some(k), ArgValue::Expr(Expr::Int(v, _))) if k.name == key => Some(*v),
        _ => None,
    })
}

fn set_kw(s: &mut Stage, key: &str, value: i64) {
    let args = s.args.get_or_insert_with(Vec::new);
    let v = ArgValue::Expr(Expr::Int(value, Span::default()));
    match args.iter_mut().find(|a| a.key.as_ref().is_some_and(|k| k.name == key)) {
        Some(a) => a.value = v,
        None => args.push(Arg {
            key: Some(Ident { name: key.into(), span: Span::default() }),
            value: v,
            span: Span::default(),
        }),
    }
}

/// Calls `f` on every stage of every pipeline (merge branches included) of every body.
fn for_each_stage(p: &mut Program, f: &mut dyn FnMut(&mut Stage)) {
    fn pipeline(pl: &mut Pipeline, f: &mut dyn FnMut(&mut Stage)) {
        for s in &mut pl.stages {
            f(s);
            for a in s.args.iter_mut().flatten() {
                if let ArgValue::Branch(b) = &mut a.value {
                    pipeline(b, f);
                }
            }
        }
    }
    fn body(b: &mut Body, f: &mut dyn FnMut(&mut Stage)) {
        for s in &mut b.stmts {
            match &mut s.kind {
                StmtKind::Pipe { pipe, .. } => pipeline(pipe, f),
                StmtKind::Repeat { body: inner, .. } => body(inner, f),
            }
        }
    }
    for b in &mut p.blocks {
        body(&mut b.body, f);
    }
    if let Some(n) = &mut p.net {
        body(&mut n.body, f);
    }
}

/// Applies `edit` to a stage drawn uniformly among those `eligible` accepts; false if none does.
fn edit_stage(
    p: &mut Program,
    rng: &mut ChaCha8Rng,
    eligible: impl Fn(&Stage) -> bool,
    mut edit: impl FnMut(&mut Stage, &mut ChaCha8Rng),
) -> bool {
    let mut n = 0;
    for_each_stage(p, &mut |s| n += usize::from(eligible(s)));
    if n == 0 {
        return false;
    }
    let target = pick(rng, n);
    let mut i = 0;
    let mut done = false;
    for_each_stage(p, &mut |s| {
        if eligible(s) {
            if i == target {
                edit(s, rng);
                done = true;
            }
            i += 1;
        }
    });
    done
}

/// Calls `f` on every body (blocks', the net's, and `repeat` bodies inside them).
fn for_each_body(p: &mut Program, f: &mut dyn FnMut(&mut Body)) {
    fn go(b: &mut Body, f: &mut dyn FnMut(&mut Body)) {
        f(b);
        for s in &mut b.stmts {
            if let StmtKind::Repeat { body, .. } = &mut s.kind {
                go(body, f);
            }
        }
    }
    for b in &mut p.blocks {
        go(&mut b.body, f);
    }
    if let Some(n) = &mut p.net {
        go(&mut n.body, f);
    }
}

fn count_bodies(p: &Program, eligible: &dyn Fn(&Body) -> bool) -> usize {
    let mut copy = p.clone();
    let mut n = 0;
    for_each_body(&mut copy, &mut |b| n += usize::from(eligible(b)));
    n
}

fn count_bodies_in_net(p: &Program) -> usize {
    p.net.as_ref().map_or(0, |n| (1..=n.body.stmts.len()).filter(|at| width_before(&n.body, *at).is_some()).count())
}

fn edit_body(
    p: &mut Program,
    target: usize,
    eligible: &dyn Fn(&Body) -> bool,
    edit: &mut dyn FnMut(&mut Body),
) -> bool {
    let mut i = 0;
    let mut done = false;
    for_each_body(p, &mut |b| {
        if !done && eligible(b) {
            if i == target {
                edit(b);
                done = true;
            }
            i += 1;
        }
    });
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use nasc_delta::delta::{judge, Base, Options, Verdict};
    use nasc_lang::check::binding;

    fn zoo() -> Vec<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo");
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "arch"))
            .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn proposals_are_deterministic_for_a_seed() {
        let base = &zoo()[0].1;
        let a = propose(base, 7, 2).unwrap();
        let b = propose(base, 7, 2).unwrap();
        assert_eq!((a.program, a.diff), (b.program, b.diff));
    }

    /// Every mutation kind on every zoo baseline: each proposal's diff applies cleanly to the
    /// baseline (strictly, no tolerance) and gives the proposed program; most are valid programs.
    #[test]
    fn every_mutation_of_every_zoo_baseline_applies_and_most_check() {
        let b = binding::dataset("cifar10").unwrap();
        let opts = Options::new(b);
        let (mut total, mut ok, mut applied) = (0usize, 0usize, 0usize);
        let mut per_kind = std::collections::BTreeMap::<&str, (usize, usize)>::new();
        for (name, src) in zoo() {
            let base = Base::new(&src, &opts);
            for m in MUTATIONS {
                for seed in 0..4u64 {
                    let mut p = syntax::parse(&src).unwrap();
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    if !apply(&mut p, m, &mut rng) {
                        continue;
                    }
                    canon::canonicalize(&mut p);
                    let text = fmt::print(&p);
                    if text == base.canonical {
                        continue;
                    }
                    let (diff, _) = unified(&base.canonical, &text, "a/p.arch", "b/p.arch");
                    let strict =
                        nasc_delta::delta::apply(&base.canonical, &diff, nasc_delta::delta::ApplyOptions::default())
                            .unwrap_or_else(|e| panic!("{name} {}: the diff does not apply: {e}\n{diff}", m.name()));
                    assert_eq!(strict.text, text, "{name} {}", m.name());
                    assert!(strict.tolerances.is_empty(), "{name} {}: {:?}", m.name(), strict.tolerances);
                    applied += 1;
                    let j = judge(&base, &diff, None, &opts);
                    assert_ne!(j.verdict, Verdict::ParseError, "{name} {}: {}\n{diff}", m.name(), j.message);
                    total += 1;
                    let e = per_kind.entry(m.name()).or_default();
                    e.0 += 1;
                    if j.verdict == Verdict::Ok {
                        ok += 1;
                        e.1 += 1;
                    }
                }
            }
        }
        eprintln!(
            "mutations judged: {total}, ok: {ok} ({:.1}%); per kind (judged, ok): {per_kind:?}",
            100.0 * ok as f64 / total as f64
        );
        assert!(applied > 400, "{applied}");
        // Measured floor, see the report in docs/search.md.
        assert!(ok as f64 / total as f64 > 0.60, "{ok}/{total}");
    }
}
