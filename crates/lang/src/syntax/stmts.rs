//! The statements a language model may add to a program, typed by the operations' signatures
//! (`signature::OPS`) and the program's own names, as a context-free grammar for constrained
//! decoding. Where `lines` says what the syntax allows on a line (any name may be called with any
//! arguments), this says what can check: a call names an operation or a block of the program,
//! its arguments are the signature's parameters in canonical order with values of their types,
//! and the names in them are the scope's (a block's parameters and `classes` where integers go,
//! values bound in the same body where merges take values). Text is canonical (`nasc fmt`'s
//! spacing), so a model spends no tokens on spelling and cannot run on in spaces.
//!
//! Every string this grammar derives is a line that `arch.pest` parses (a test samples it), so
//! it narrows the grammar of record and cannot drift from it without failing.

use super::signature::{ArgDefault, Args, ParamSpec, Ty, OPS};
use nasc_grammar::{Class, Expr, Grammar};

/// What names a body can use.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Names of integers other than `classes`: the block's parameters.
    pub numbers: Vec<String>,
    /// No `classes` among the integers: where the output line, which gives the classes, is
    /// another's (a diff's added lines), a width of `classes` is a bottleneck to the class count.
    pub no_classes: bool,
    /// Values bound in the body (`x = in`), which merges (`add(x)`) take.
    pub values: Vec<String>,
    /// The built-in operations that may be called (merges aside), when the flow's kind at the
    /// place is known (`check::kinds`); all of them when `None`.
    pub ops: Option<Vec<&'static str>>,
    /// Blocks that cannot be called here: the block whose body this is, and those that call it
    /// (a call would make them recursive).
    pub uncallable: Vec<String>,
    /// No merges (`add`, `mul`, `concat`) here: a new block's body offers them apart, as they
    /// change the kind of its flow back to the kind it was called on.
    pub no_merges: bool,
    /// Every statement starts with a merge (`add(x |> conv(c, k=1))`, then what follows it).
    pub merge_first: bool,
    /// Where the map's size must stay (a later merge, or a small map): convolutions and pools
    /// only in forms that keep it (stride 1, an odd kernel, padding half of it), and no other
    /// operation that resizes (`adaptive_avgpool`).
    pub keep_size: bool,
    /// Where the map may shrink a little but not be strided down (a run of added lines halves
    /// it on lines of its own, `define_halving`): convolutions and pools in the forms that keep
    /// the size, no `adaptive_avgpool`.
    pub unstrided: bool,
    /// With `unstrided`, how many pixels one line of its own may take off the map's side
    /// (`{prefix}_shrink`: a convolution of stride 1 whose kernel passes its padding by up to
    /// this much); 0, none. Shrinking lines in a row would add up, so a run holds one.
    pub shrink: u8,
    /// Where the width must stay: the widths a convolution, a linear layer or a call of a
    /// block may write (none: those calls are left out), and no `slice`. `None`: any width.
    pub widths: Option<Vec<String>>,
    /// The blocks that may be called here, each with the first arguments (widths) that check,
    /// or `None` for any. `None`: every block not in `uncallable`, as `widths` allows.
    pub calls: Option<Vec<(String, Option<Vec<String>>)>>,
    /// The merges that check here, each with the values it may take, bare. `None`: every merge
    /// of every value in `values`, through branches.
    pub merges: Option<Vec<(&'static str, Vec<String>)>>,
    /// The values a pipeline may start from (`in`, bound names). `None`: `in` and `values`.
    pub sources: Option<Vec<String>>,
}

/// A block of the program that statements may call: its parameters, and whether each has a default.
#[derive(Clone, Debug)]
pub struct Callee {
    pub name: String,
    pub params: Vec<(String, bool)>,
}

/// Longest operator chain in an integer expression (`cin * t`), and most stages in a pipeline.
const MAX_STAGES: u32 = 3;
const MAX_MERGE_ARGS: u32 = 4;

fn class(ranges: &[(char, char)]) -> Expr {
    Expr::Class(Class { negated: false, ranges: ranges.to_vec() })
}

fn alt_texts<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Expr {
    Expr::alt(words.into_iter().map(|w| Expr::text(w.as_ref())))
}

/// Defines the rules shared by every scope (numbers, truth values, short names) once.
fn shared(g: &mut Grammar) {
    if g.get("st_integer").is_some() {
        return;
    }
    let digit = class(&[('0', '9')]);
    // A count or a width is positive (`linear(0)` cannot check, nor a `repeat(0)` of anything);
    // any other integer may also be 0.
    let positive = Expr::seq([class(&[('1', '9')]), Expr::Repeat(Box::new(digit.clone()), 0, Some(4))]);
    g.define_token("st_integer", Expr::alt([Expr::text("0"), positive.clone()]));
    g.define_token("st_positive", positive);
    g.define_token(
        "st_float",
        Expr::seq([
            Expr::Repeat(Box::new(digit.clone()), 1, Some(2)),
            Expr::opt(Expr::seq([Expr::text("."), Expr::Repeat(Box::new(digit.clone()), 1, Some(4))])),
        ]),
    );
    // A probability: 0, or 0.d with up to four digits (dropout's `p`, below 1).
    g.define_token(
        "st_prob",
        Expr::seq([
            Expr::text("0"),
            Expr::opt(Expr::seq([Expr::text("."), Expr::Repeat(Box::new(digit), 1, Some(4))])),
        ]),
    );
    // A window's size (1 to 15) and padding (0 to 9).
    g.define_token("st_size", Expr::alt([class(&[('1', '9')]), Expr::seq([Expr::text("1"), class(&[('0', '5')])])]));
    g.define_token("st_pad", class(&[('0', '9')]));
    g.define("st_bool", alt_texts(["true", "false"]));
}

/// Defines, under names starting with `{prefix}_`, the statement lines a body of `scope` may
/// gain: a pipeline or a binding whose calls are `OPS` and `blocks`. Returns a reference to the
/// statement; `{prefix}_int` is its integer expression.
pub fn define_statement(g: &mut Grammar, prefix: &str, scope: &Scope, blocks: &[Callee]) -> Expr {
    shared(g);
    let p = prefix;
    // Integers: literals and the scope's names, with at most one operator (`c / 4`, `cin * t`).
    let classes = (!scope.no_classes).then(|| Expr::text("classes"));
    let names = Expr::alt(classes.into_iter().chain(scope.numbers.iter().map(Expr::text)));
    let atom = g.define(&format!("{p}_int_atom"), Expr::alt([Expr::rule("st_integer"), names.clone()]));
    let op = alt_texts([" * ", " / ", " + ", " - "]);
    let led_by = |lead: Expr| Expr::seq([lead, Expr::opt(Expr::seq([op.clone(), atom.clone()]))]);
    let int = g.define(&format!("{p}_int"), led_by(atom.clone()));
    // Where 0 cannot check (widths, counts, heads, groups: every integer but a slice's start),
    // a literal is positive; a name, or arithmetic on it, the checker judges.
    let positive_atom = g.define(&format!("{p}_pos_atom"), Expr::alt([Expr::rule("st_positive"), names]));
    let positive = g.define(&format!("{p}_pos"), led_by(positive_atom));
    // A window's sizes (kernel, stride, padding, dilation of convolutions and pools) are small
    // numbers or the scope's names, never arithmetic: `s=64` on a 28-pixel image cannot check.
    let window_names: Vec<Expr> = scope.numbers.iter().map(Expr::text).collect();
    // A name, perhaps with one operator (`p=k / 2`).
    let named_window = (!window_names.is_empty())
        .then(|| Expr::seq([Expr::alt(window_names), Expr::opt(Expr::seq([op.clone(), atom.clone()]))]));
    let window = |from_zero: bool| {
        let literal = Expr::rule(if from_zero { "st_pad" } else { "st_size" });
        Expr::alt([literal].into_iter().chain(named_window.clone()))
    };
    let widths = scope.widths.as_ref().map(alt_texts);
    let value_of = |op: &str, param: &str, ty: Ty| match ty {
        Ty::Int if is_width(op, param) && widths.is_some() => widths.clone().unwrap_or(Expr::Empty),
        Ty::Int if is_window(op, param) => window(param == "p"),
        Ty::Pad if is_window(op, param) => Expr::alt([window(true), Expr::text("same")]),
        Ty::Int if op == "slice" && param == "lo" => int.clone(),
        Ty::Int => positive.clone(),
        Ty::Float => Expr::rule("st_float"),
        Ty::Prob => Expr::rule("st_prob"),
        Ty::Bool => Expr::rule("st_bool"),
        Ty::Pad => Expr::alt([int.clone(), Expr::text("same")]),
    };
    let stage = Expr::rule(format!("{p}_stage"));
    let (mut stages, mut merges, mut shrinks) = (Vec::new(), Vec::new(), Vec::new());
    // Values merges may take: names bound in the body, bare or through a branch.
    let value_names: Vec<Expr> = scope.values.iter().map(Expr::text).collect();
    let merge_arg = (!value_names.is_empty()).then(|| {
        let name = Expr::alt(value_names);
        let branch = Expr::Repeat(Box::new(Expr::seq([Expr::text(" |> "), stage.clone()])), 0, Some(MAX_STAGES));
        g.define(&format!("{p}_merge_arg"), Expr::seq([name, branch]))
    });
    let no_width = scope.widths.as_ref().is_some_and(Vec::is_empty);
    for sig in OPS {
        let rule = format!("{p}_op_{}", sig.name);
        let body = match sig.args {
            Args::Values if scope.no_merges => continue,
            Args::Values if scope.merges.is_some() => {
                let typed = scope.merges.iter().flatten().find(|(m, _)| *m == sig.name);
                let Some((_, values)) = typed.filter(|(_, v)| !v.is_empty()) else { continue };
                // Through a branch only where every stage keeps the shape, as the value's did.
                let branch = (scope.keep_size && scope.widths.is_some()).then(|| {
                    Expr::Repeat(Box::new(Expr::seq([Expr::text(" |> "), stage.clone()])), 0, Some(MAX_STAGES))
                });
                Expr::seq(
                    [Expr::text(format!("{}(", sig.name)), alt_texts(values)]
                        .into_iter()
                        .chain(branch)
                        .chain([Expr::text(")")]),
                )
            }
            Args::Values => {
                let Some(arg) = merge_arg.as_ref() else { continue };
                Expr::seq([
                    Expr::text(format!("{}(", sig.name)),
                    arg.clone(),
                    Expr::Repeat(Box::new(Expr::seq([Expr::text(", "), arg.clone()])), 0, Some(MAX_MERGE_ARGS - 1)),
                    Expr::text(")"),
                ])
            }
            Args::Params { .. } if scope.ops.as_ref().is_some_and(|ops| !ops.contains(&sig.name)) => continue,
            Args::Params { params, .. }
                if scope.widths.is_some()
                    && (sig.name == "slice" || no_width && params.iter().any(|q| is_width(sig.name, q.name))) =>
            {
                continue
            }
            Args::Params { .. } if (scope.keep_size || scope.unstrided) && sig.name == "adaptive_avgpool" => continue,
            // Unstrided lines keep the size too; the one line of a run that may shrink the map is
            // `{prefix}_shrink`, below. (A pool's padding is at most half its kernel, which the
            // forms that keep the size hold.)
            Args::Params { params, positional } if (scope.keep_size || scope.unstrided) && is_window_op(sig.name) => {
                if scope.unstrided && scope.shrink > 0 && !is_pool(sig.name) {
                    shrinks.extend(shrinking_calls(g, &rule, sig.name, params, positional, scope.shrink, &value_of));
                }
                Expr::alt(keeping_calls(g, &rule, sig.name, params, positional, &value_of))
            }
            Args::Params { params, positional } if is_pool(sig.name) => {
                // A pool's padding is at most half its kernel: with a number for the kernel, the
                // calls that fit it (shared by every scope); with a name, any padding.
                let mut forms = pool_calls(g, sig.name, params);
                if let Some(named) = &named_window {
                    let typed: Vec<(&str, Expr, bool)> = params
                        .iter()
                        .map(|q: &ParamSpec| {
                            let value = match q.name {
                                "k" => named.clone(),
                                _ => value_of(sig.name, q.name, q.ty),
                            };
                            (q.name, value, matches!(q.default, ArgDefault::Required))
                        })
                        .collect();
                    forms.push(call(g, &format!("{rule}_named"), sig.name, &typed, positional));
                }
                Expr::alt(forms)
            }
            Args::Params { params, positional } => {
                let typed: Vec<(&str, Expr, bool)> = params
                    .iter()
                    .map(|q: &ParamSpec| {
                        (q.name, value_of(sig.name, q.name, q.ty), matches!(q.default, ArgDefault::Required))
                    })
                    .collect();
                call(g, &rule, sig.name, &typed, positional)
            }
        };
        let defined = g.define(&rule, body);
        if matches!(sig.args, Args::Values) {
            merges.push(defined.clone());
        }
        stages.push(defined);
    }
    for (i, b) in blocks.iter().enumerate() {
        if scope.uncallable.contains(&b.name) {
            continue;
        }
        // A block's first argument (its width, in every zoo program) is one of those that check
        // here when the scope knows them, else one of the widths the place allows.
        let first = match &scope.calls {
            Some(calls) => match calls.iter().find(|(name, _)| *name == b.name) {
                None => continue,
                Some((_, Some(args))) if args.is_empty() => continue,
                Some((_, args)) => args.as_ref().map(alt_texts),
            },
            None if no_width || (widths.is_some() && b.params.is_empty()) => continue,
            None => widths.clone(),
        };
        let typed: Vec<(&str, Expr, bool)> = b
            .params
            .iter()
            .enumerate()
            .map(|(j, (n, d))| {
                (n.as_str(), if j == 0 { first.clone().unwrap_or(positive.clone()) } else { int.clone() }, !d)
            })
            .collect();
        // The canonical form writes a block's first parameter by position when it has no default.
        let positional = usize::from(b.params.first().is_some_and(|(_, d)| !d));
        let rule = format!("{p}_call_{i}");
        let body = call(g, &rule, &b.name, &typed, positional);
        stages.push(g.define(&rule, body));
    }
    g.define(&format!("{p}_stage"), Expr::alt(stages));
    if !shrinks.is_empty() {
        g.define(&format!("{p}_shrink"), Expr::alt(shrinks));
    }
    let more = Expr::Repeat(Box::new(Expr::seq([Expr::text(" |> "), stage.clone()])), 0, Some(MAX_STAGES - 1));
    // A pipeline starts with a call, or takes a value (`in`, a bound name) and goes on from it.
    let mut sources = Vec::new();
    match &scope.sources {
        Some(given) => sources.extend(given.iter().map(Expr::text)),
        None => {
            sources.push(Expr::text("in"));
            sources.extend(scope.values.iter().map(Expr::text));
        }
    }
    let from_value = (!sources.is_empty()).then(|| {
        Expr::seq([
            Expr::alt(sources),
            Expr::Repeat(Box::new(Expr::seq([Expr::text(" |> "), stage.clone()])), 1, Some(MAX_STAGES - 1)),
        ])
    });
    let pipeline = g.define(
        &format!("{p}_pipe"),
        Expr::alt([Expr::seq([stage.clone(), more.clone()])].into_iter().chain(from_value)),
    );
    if scope.merge_first {
        return g.define(&format!("{p}_stmt"), Expr::seq([Expr::alt(merges), more]));
    }
    // No bindings: a new name could only be merged by an added line naming it, which a
    // context-free grammar cannot hold, and binding a name the body has cannot check. A line
    // of the parent that binds a value may be replaced by another binding of it (`{p}_pipe`
    // gives what it binds), and a new block binds its one value in a line of its own.
    g.define(&format!("{p}_stmt"), pipeline)
}

/// A call of `name` with `params` (name, value, required) whose first `positional` may be
/// written by position, in canonical form: bare when no argument is given, else a positional
/// prefix and then keywords in the parameters' order.
fn call(g: &mut Grammar, rule: &str, name: &str, params: &[(&str, Expr, bool)], positional: usize) -> Expr {
    // kw_{i}_{first}: the keyword arguments from parameter i on; `first` when nothing precedes
    // them inside the parentheses (no comma, and at least one must come).
    for i in (0..=params.len()).rev() {
        for first in [false, true] {
            let body = if i == params.len() {
                if first {
                    None
                } else {
                    Some(Expr::Empty)
                }
            } else {
                let (key, value, required) = &params[i];
                let sep = if first { Expr::Empty } else { Expr::text(", ") };
                let take = Expr::seq([sep, Expr::text(format!("{key}=")), value.clone(), kw_ref(rule, i + 1, false)]);
                let skip_possible = !(i + 1 == params.len() && first);
                if *required || !skip_possible {
                    Some(take)
                } else {
                    Some(Expr::alt([take, kw_ref(rule, i + 1, first)]))
                }
            };
            if let Some(body) = body {
                g.define(&format!("{rule}_kw{i}_{}", u8::from(first)), body);
            }
        }
    }
    let mut forms = Vec::new();
    if params.iter().all(|(_, _, required)| !required) {
        forms.push(Expr::text(name));
    }
    // Positional prefixes: the first j parameters by position, as long as those are positional.
    let leading_required = params.iter().take_while(|(_, _, r)| *r).count();
    for j in 0..=positional.min(params.len()) {
        if j == 0 && params.is_empty() {
            continue;
        }
        // Canonical text writes required leading parameters by position.
        if j < leading_required.min(positional) {
            continue;
        }
        let mut items = vec![Expr::text(format!("{name}("))];
        for (k, (_, value, _)) in params.iter().take(j).enumerate() {
            if k > 0 {
                items.push(Expr::text(", "));
            }
            items.push(value.clone());
        }
        if j == 0 {
            if g.get(&format!("{rule}_kw0_1")).is_none() {
                continue;
            }
            items.push(kw_ref(rule, 0, true));
        } else {
            items.push(kw_ref(rule, j, false));
        }
        items.push(Expr::text(")"));
        forms.push(Expr::seq(items));
    }
    Expr::alt(forms)
}

/// Whether `param` of `op` is the width it writes: a convolution's channels, a linear layer's
/// features.
fn is_width(op: &str, param: &str) -> bool {
    matches!((op, param), ("conv", "c") | ("linear", "n"))
}

fn is_window_op(op: &str) -> bool {
    matches!(op, "conv" | "dwconv" | "maxpool" | "avgpool")
}

/// The calls of window operation `op` that keep a map's size: an odd kernel K, stride 1 and
/// padding (K - 1) / 2, no dilation; the other parameters as `value_of` types them. A
/// convolution takes K of 1, 3, 5 or 7; a pool 3 or 5 (with `s=1` written: its stride is
/// its kernel by default).
fn keeping_calls(
    g: &mut Grammar,
    rule: &str,
    op: &str,
    params: &[ParamSpec],
    positional: usize,
    value_of: &dyn Fn(&str, &str, Ty) -> Expr,
) -> Vec<Expr> {
    [1u32, 3, 5, 7]
        .iter()
        .map(|&k| window_call(g, &format!("{rule}_keep{k}"), op, params, positional, (k, (k - 1) / 2), value_of))
        .collect()
}

/// Defines rule `name`: a call of window operation `op` with kernel K and padding P (`(K, P)`;
/// a padding of 0 unwritten), stride 1 and no dilation, the other parameters as `value_of`
/// types them.
fn window_call(
    g: &mut Grammar,
    name: &str,
    op: &str,
    params: &[ParamSpec],
    positional: usize,
    (k, pad): (u32, u32),
    value_of: &dyn Fn(&str, &str, Ty) -> Expr,
) -> Expr {
    let typed: Vec<(&str, Expr, bool)> = params
        .iter()
        .filter_map(|q: &ParamSpec| match q.name {
            "k" => Some((q.name, Expr::text(k.to_string()), true)),
            // A pool's stride is its kernel unless given: 1 for k=1, as written.
            "s" if is_pool(op) && k > 1 => Some((q.name, Expr::text("1"), true)),
            "p" if pad > 0 => Some((q.name, Expr::text(pad.to_string()), true)),
            "s" | "p" | "d" => None,
            _ => Some((q.name, value_of(op, q.name, q.ty), matches!(q.default, ArgDefault::Required))),
        })
        .collect();
    let body = call(g, name, op, &typed, positional);
    g.define(name, body)
}

/// The calls of convolution `op` that take 1 to `budget` pixels off a map's side: stride 1, no
/// dilation, an odd kernel K of 3, 5 or 7 and a padding P under (K - 1) / 2 with K - 1 - 2P at
/// most `budget`; the other parameters as `value_of` types them.
fn shrinking_calls(
    g: &mut Grammar,
    rule: &str,
    op: &str,
    params: &[ParamSpec],
    positional: usize,
    budget: u8,
    value_of: &dyn Fn(&str, &str, Ty) -> Expr,
) -> Vec<Expr> {
    let mut forms = Vec::new();
    for k in [3u32, 5, 7] {
        for pad in (0..(k - 1) / 2).filter(|pad| k - 1 - 2 * pad <= u32::from(budget)) {
            let name = format!("{rule}_shrink{k}p{pad}");
            forms.push(window_call(g, &name, op, params, positional, (k, pad), value_of));
        }
    }
    forms
}

/// Defines `{prefix}_halve`: one call that halves a map's size (`conv(W, k=K, s=2)` with a
/// padding up to (K-1)/2 and W from `widths` or the scope's integers, `dwconv` alike,
/// `maxpool(k=2)`, `avgpool(k=2)`, `maxpool(k=3, s=2, p=1)`), as a line of its own where a run
/// of added lines may halve the map once. Returns a reference to it.
pub fn define_halving(g: &mut Grammar, prefix: &str, widths: Option<&[String]>, ops: &[&str]) -> Expr {
    shared(g);
    let width = match widths {
        Some(w) => alt_texts(w),
        None => Expr::rule(format!("{prefix}_pos")),
    };
    let t = |v: &str| Expr::text(v);
    // Written through `call`, so that the text splits into the same literals as every other
    // call's (llguidance's lexer does not back out of a longer literal).
    let mut forms = Vec::new();
    let mut form = |g: &mut Grammar, name: &str, op: &str, params: Vec<(&str, Expr, bool)>, positional: usize| {
        let rule = format!("{prefix}_halve_{name}");
        let body = call(g, &rule, op, &params, positional);
        forms.push(g.define(&rule, body));
    };
    for k in [1u32, 3, 5, 7] {
        // Padding up to half the kernel: the map's size halves, give or take a few pixels.
        let ks = k.to_string();
        let pads = class(&[('0', char::from(b'0' + ((k - 1) / 2) as u8))]);
        if ops.contains(&"conv") && widths.is_none_or(|w| !w.is_empty()) {
            let mut params = vec![("c", width.clone(), true), ("k", t(&ks), true), ("s", t("2"), true)];
            if k > 1 {
                params.push(("p", pads.clone(), false));
            }
            params.push(("bias", Expr::rule("st_bool"), false));
            form(g, &format!("conv{k}"), "conv", params, 1);
        }
        if k > 1 && ops.contains(&"dwconv") {
            let params = vec![("k", t(&ks), true), ("s", t("2"), true), ("p", pads.clone(), false)];
            form(g, &format!("dwconv{k}"), "dwconv", params, 0);
        }
    }
    for pool in ["maxpool", "avgpool"] {
        if ops.contains(&pool) {
            form(g, &format!("{pool}2"), pool, vec![("k", t("2"), true)], 0);
            let params = vec![("k", t("3"), true), ("s", t("2"), true), ("p", t("1"), true)];
            form(g, &format!("{pool}3"), pool, params, 0);
        }
    }
    g.define(&format!("{prefix}_halve"), Expr::alt(forms))
}

fn is_pool(op: &str) -> bool {
    matches!(op, "maxpool" | "avgpool")
}

/// The calls of pool `op` (parameters `params`) whose kernel is a number, each with a padding
/// of at most half of it: one group of calls per largest padding (kernel 1: none; 2 and 3: 0
/// or 1; ...; 14 and 15: up to 7). Defined once per grammar as `st_{op}_g{m}`.
fn pool_calls(g: &mut Grammar, op: &str, params: &[ParamSpec]) -> Vec<Expr> {
    let mut forms = Vec::new();
    for m in 0..=7u8 {
        let rule = format!("st_{op}_g{m}");
        if g.get(&rule).is_none() {
            let kernels: Vec<String> =
                [2 * m, 2 * m + 1].into_iter().filter(|&k| k >= 1).map(|k| k.to_string()).collect();
            let pads = class(&[('0', char::from(b'0' + m))]);
            let typed: Vec<(&str, Expr, bool)> = params
                .iter()
                .map(|q: &ParamSpec| {
                    let value = match q.name {
                        "k" => alt_texts(&kernels),
                        "p" => pads.clone(),
                        _ if q.ty == Ty::Bool => Expr::rule("st_bool"),
                        _ => Expr::rule("st_size"),
                    };
                    (q.name, value, matches!(q.default, ArgDefault::Required))
                })
                .collect();
            let body = call(g, &rule, op, &typed, 0);
            g.define(&rule, body);
        }
        forms.push(Expr::rule(rule));
    }
    forms
}

/// Whether `param` of `op` sizes a sliding window: a convolution's or a pool's kernel, stride,
/// padding or dilation.
fn is_window(op: &str, param: &str) -> bool {
    matches!(op, "conv" | "dwconv" | "maxpool" | "avgpool") && matches!(param, "k" | "s" | "p" | "d")
}

fn kw_ref(rule: &str, i: usize, first: bool) -> Expr {
    Expr::rule(format!("{rule}_kw{i}_{}", u8::from(first)))
}

/// Defines `st_block_params`: what follows a new block's name on its first line, `(c) {`, one
/// parameter named `c` (the width of the flow it is called on), perhaps with a default. One, so
/// that the call the grammar asks for (one argument by position, [`new_block_call`]) always fits
/// it, and always `c`, so that its body can name it: a context-free grammar cannot keep a letter
/// the model chose. Returns a reference to it.
pub fn define_block_params(g: &mut Grammar) -> Expr {
    shared(g);
    let default =
        Expr::opt(Expr::seq([Expr::text("="), Expr::alt([Expr::rule("st_integer"), Expr::rule("st_float")])]));
    g.define("st_block_params", Expr::seq([Expr::text("(c"), default, Expr::text(") {")]))
}

/// A call of a block named `name` that the diff adds, with `int` (the scope's integer rule): its
/// one argument, by position.
pub fn new_block_call(name: &str, int: Expr) -> Expr {
    Expr::seq([Expr::text(format!("{name}(")), int, Expr::text(")")])
}

/// The names `b` calls (operations and blocks), branches included.
fn calls(b: &super::ast::Body, out: &mut Vec<String>) {
    use super::ast::{ArgValue, Pipeline, StmtKind};
    fn pipeline(p: &Pipeline, out: &mut Vec<String>) {
        for s in &p.stages {
            out.push(s.name.name.to_string());
            for a in s.args.iter().flatten() {
                if let ArgValue::Branch(b) = &a.value {
                    pipeline(b, out);
                }
            }
        }
    }
    for s in &b.stmts {
        match &s.kind {
            StmtKind::Pipe { pipe, .. } => pipeline(pipe, out),
            StmtKind::Repeat { body, .. } => calls(body, out),
        }
    }
}

/// The blocks the net calls, directly or through other blocks (none without a net).
pub fn reached_blocks(program: &super::ast::Program) -> Vec<String> {
    let mut reached = Vec::new();
    let Some(net) = &program.net else { return reached };
    let mut todo = Vec::new();
    calls(&net.body, &mut todo);
    while let Some(name) = todo.pop() {
        if let Some(b) = program.blocks.iter().find(|b| b.name.name.as_str() == name) {
            if !reached.contains(&name) {
                calls(&b.body, &mut todo);
                reached.push(name);
            }
        }
    }
    reached
}

/// The names a program's bodies use, for [`Scope`]s: per top-level item in order of the text
/// (`None` for the net), its parameters and its bound values; and the blocks as [`Callee`]s.
pub fn program_names(program: &super::ast::Program) -> (Vec<Callee>, Vec<(Option<String>, Scope)>) {
    use super::ast::{Body, ItemRef, StmtKind};
    // Which blocks each block calls, then, per block, those that reach it.
    let called: Vec<Vec<String>> = program
        .blocks
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            calls(&b.body, &mut out);
            out
        })
        .collect();
    let names: Vec<String> = program.blocks.iter().map(|b| b.name.name.to_string()).collect();
    let reaching = |target: &str| -> Vec<String> {
        let mut reach = vec![target.to_string()];
        loop {
            let before = reach.len();
            for (i, name) in names.iter().enumerate() {
                if !reach.contains(name) && called[i].iter().any(|c| reach.contains(c)) {
                    reach.push(name.clone());
                }
            }
            if reach.len() == before {
                return reach;
            }
        }
    };
    fn values(b: &Body, out: &mut Vec<String>) {
        for s in &b.stmts {
            match &s.kind {
                StmtKind::Pipe { bind: Some(id), .. } => {
                    if !out.iter().any(|v| v == id.name.as_str()) {
                        out.push(id.name.to_string());
                    }
                }
                StmtKind::Pipe { .. } => {}
                StmtKind::Repeat { body, .. } => values(body, out),
            }
        }
    }
    let callees = program
        .blocks
        .iter()
        .map(|b| Callee {
            name: b.name.name.to_string(),
            params: b.params.iter().map(|p| (p.name.name.to_string(), p.default.is_some())).collect(),
        })
        .collect();
    let mut scopes = Vec::new();
    for item in &program.order {
        match item {
            ItemRef::Block(i) => {
                let b = &program.blocks[*i];
                let mut s = Scope {
                    numbers: b.params.iter().map(|p| p.name.name.to_string()).collect(),
                    uncallable: reaching(&b.name.name),
                    ..Scope::default()
                };
                values(&b.body, &mut s.values);
                scopes.push((Some(b.name.name.to_string()), s));
            }
            ItemRef::Net => {
                let mut s = Scope::default();
                if let Some(n) = &program.net {
                    values(&n.body, &mut s.values);
                }
                scopes.push((None, s));
            }
        }
    }
    (callees, scopes)
}
