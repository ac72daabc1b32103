//! Shape rules and counting for each operation: output shape, parameters, MACs.
//! Counts follow PyTorch's `parameters()` for the same layer; nothing here reads source text.

use super::binding::Binding;
use super::graph::{Op, Shape};
use super::value::Val;
use crate::diag::{Code, Diagnostic};
use crate::syntax::ast::{Span, Stage};
use crate::syntax::signature::ParamSpec;

/// The most parameters an operation has (conv's seven, with room).
pub const MAX_PARAMS: usize = 8;

/// An operation's arguments after evaluation, defaults filled in, in signature
/// order. Fixed-size: checking allocates nothing per argument.
#[derive(Debug)]
pub struct ArgVals {
    pub vals: [(Val, Option<Span>); MAX_PARAMS],
    pub names: &'static [ParamSpec],
}

impl ArgVals {
    pub fn new(names: &'static [ParamSpec]) -> ArgVals {
        assert!(names.len() <= MAX_PARAMS, "an operation has at most {MAX_PARAMS} parameters");
        ArgVals { vals: [(Val::Int(0), None); MAX_PARAMS], names }
    }
    fn get(&self, name: &str) -> Val {
        let i = self.names.iter().position(|n| n.name == name).expect("the signature has this parameter");
        self.vals[i].0
    }
    fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Val::Int(v) => v,
            v => unreachable!("`{name}` was type-checked as an integer, got {v:?}"),
        }
    }
    fn float(&self, name: &str) -> f64 {
        match self.get(name) {
            Val::Float(v) => v,
            Val::Int(v) => v as f64,
            v => unreachable!("`{name}` was type-checked as a number, got {v:?}"),
        }
    }
    fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            Val::Bool(v) => v,
            v => unreachable!("`{name}` was type-checked as a boolean, got {v:?}"),
        }
    }
    fn span(&self, name: &str) -> Option<Span> {
        self.names.iter().position(|n| n.name == name).and_then(|i| self.vals[i].1)
    }
}

/// Why an operation cannot apply; becomes a diagnostic at the call.
pub struct OpError {
    code: Code,
    message: String,
    /// The argument to underline, if the fault is one argument's.
    arg: Option<&'static str>,
    label: String,
    hint: Option<String>,
}

impl OpError {
    pub fn into_diagnostic(self, st: &Stage, args: &ArgVals, input: Shape) -> Diagnostic {
        let span = self.arg.and_then(|a| args.span(a)).unwrap_or(st.span);
        let mut d = Diagnostic::error(self.code, span, self.message).label(self.label).shape("input", input);
        if !span.same(st.span) {
            d = d.with_label(st.span, format!("`{}` gets {input}", st.name.name));
        }
        if let Some(h) = self.hint {
            // `{call}` in a hint is the call as written, so a hint never turns
            // `linear(classes)` into a literal that breaks other datasets.
            let mut call = String::new();
            crate::syntax::fmt::stage(&mut call, st);
            d = d.hint(h.replace("{call}", &call));
        }
        d
    }
}

fn fail<T>(code: Code, arg: Option<&'static str>, message: String, label: impl Into<String>) -> Result<T, OpError> {
    Err(OpError { code, message, arg, label: label.into(), hint: None })
}

fn hinted<T>(r: Result<T, OpError>, hint: impl Into<String>) -> Result<T, OpError> {
    r.map_err(|mut e| {
        e.hint = Some(hint.into());
        e
    })
}

/// The largest size any argument or dimension may have. Far beyond any real
/// network, and small enough that every count below fits in a u64.
pub const MAX_SIZE: u64 = 1 << 24;

fn too_large<T>(name: &'static str, op: &str, v: i64) -> Result<T, OpError> {
    fail(
        Code::BadValue,
        Some(name),
        format!("`{name}` of `{op}` is {v}; sizes are at most {}", super::group(MAX_SIZE)),
        "too large",
    )
}

/// A positive integer argument (channels, kernels, strides, groups…).
fn positive(args: &ArgVals, name: &'static str, op: &str) -> Result<u64, OpError> {
    let v = args.int(name);
    if v as u64 > MAX_SIZE && v > 0 {
        return too_large(name, op, v);
    }
    if v < 1 {
        let code = if matches!(name, "c" | "n" | "d") { Code::ZeroDim } else { Code::BadValue };
        return fail(code, Some(name), format!("`{name}` of `{op}` must be at least 1, got {v}"), "must be positive");
    }
    Ok(v as u64)
}

/// The `groups` argument of an operation over `c` channels: positive, and a divisor of `c`.
fn groups(args: &ArgVals, c: u64, op: &str) -> Result<u64, OpError> {
    let g = positive(args, "groups", op)?;
    if !c.is_multiple_of(g) {
        return hinted(
            fail(
                Code::GroupsNotDivisible,
                Some("groups"),
                format!("{g} groups do not divide {c} channels"),
                format!("{g} does not divide {c}"),
            ),
            format!("use a divisor of {c}, e.g. {}", divisor_near(c, g)),
        );
    }
    Ok(g)
}

fn non_negative(args: &ArgVals, name: &'static str, op: &str) -> Result<u64, OpError> {
    let v = args.int(name);
    if v < 0 {
        return fail(Code::BadValue, Some(name), format!("`{name}` of `{op}` cannot be negative, got {v}"), "negative");
    }
    if v as u64 > MAX_SIZE {
        return too_large(name, op, v);
    }
    Ok(v as u64)
}

fn wrong_input<T>(op: &str, takes: &str, input: Shape, hint: Option<&str>) -> Result<T, OpError> {
    let mut e = OpError {
        code: Code::WrongInput,
        message: format!("`{op}` takes {takes}, but gets {} {input}", input.kind_word()),
        arg: None,
        label: format!("gets {input}"),
        hint: hint.map(str::to_string),
    };
    if e.hint.is_none() {
        e.hint = Some(match input {
            Shape::Map { .. } => "feature maps become a vector with `gap` or `flatten`".into(),
            Shape::Tokens { .. } => "tokens become a vector with `cls_pool` or `token_mean`".into(),
            Shape::Vector { .. } => "a vector has no spatial or token axis left".into(),
        });
    }
    Err(e)
}

/// Output length of a sliding window, as PyTorch computes it.
fn window(len: u64, k: u64, s: u64, p: u64, d: u64, ceil: bool) -> Option<u64> {
    let eff = d * (k - 1) + 1;
    let padded = len + 2 * p;
    if padded < eff {
        return None;
    }
    let span = padded - eff;
    let mut out = if ceil { span.div_ceil(s) + 1 } else { span / s + 1 };
    // PyTorch: the last window must start inside the input or the left padding.
    if ceil && (out - 1) * s >= len + p {
        out -= 1;
    }
    Some(out)
}

fn nonzero(shape: Shape, op: &str) -> Result<Shape, OpError> {
    let (lo, hi) = match shape {
        Shape::Map { c, h, w } => (c.min(h).min(w), c.max(h).max(w)),
        Shape::Tokens { n, d } => (n.min(d), n.max(d)),
        Shape::Vector { d } => (d, d),
    };
    if lo == 0 {
        return fail(
            Code::ZeroDim,
            None,
            format!("`{op}` would output {shape}: a dimension reaches zero"),
            format!("gives {shape}"),
        );
    }
    if hi > MAX_SIZE {
        return fail(
            Code::BadValue,
            None,
            format!("`{op}` would output {shape}: dimensions are at most {}", super::group(MAX_SIZE)),
            format!("gives {shape}"),
        );
    }
    Ok(shape)
}

type Applied = (Op, Shape, u64, u64);

/// A product that saturates: counts of absurd programs must stay comparable
/// with a budget, never wrap.
fn prod(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, x| a.saturating_mul(*x))
}

pub fn apply(name: &str, args: &ArgVals, input: Shape, binding: Binding) -> Result<Applied, OpError> {
    let _ = binding;
    let out = match name {
        "conv" | "dwconv" => conv(name, args, input)?,
        "bn" => match input {
            Shape::Map { c, .. } => (Op::BatchNorm, input, 2 * c, 0),
            Shape::Vector { d } => (Op::BatchNorm, input, 2 * d, 0),
            Shape::Tokens { .. } => {
                return wrong_input("bn", "feature maps or a vector", input, Some("normalise tokens with `ln`"))
            }
        },
        "ln" => (Op::LayerNorm, input, 2 * input.channels(), 0),
        "gn" => {
            let Shape::Map { c, .. } = input else { return wrong_input("gn", "feature maps [C,H,W]", input, None) };
            let g = groups(args, c, "gn")?;
            (Op::GroupNorm { groups: g }, input, 2 * c, 0)
        }
        "relu" => (Op::Relu, input, 0, 0),
        "relu6" => (Op::Relu6, input, 0, 0),
        "gelu" => (Op::Gelu, input, 0, 0),
        "silu" => (Op::Silu, input, 0, 0),
        "hardswish" => (Op::Hardswish, input, 0, 0),
        "hardsigmoid" => (Op::Hardsigmoid, input, 0, 0),
        "sigmoid" => (Op::Sigmoid, input, 0, 0),
        "tanh" => (Op::Tanh, input, 0, 0),
        "identity" => (Op::Identity, input, 0, 0),
        "leaky_relu" => (Op::LeakyRelu { slope: args.float("slope") }, input, 0, 0),
        "elu" => (Op::Elu { alpha: args.float("alpha") }, input, 0, 0),
        "maxpool" | "avgpool" => pool(name, args, input)?,
        "gap" => match input {
            Shape::Map { c, .. } => (Op::GlobalAvgPool, Shape::Vector { d: c }, 0, 0),
            _ => return wrong_input("gap", "feature maps [C,H,W]", input, None),
        },
        "adaptive_avgpool" => {
            let Shape::Map { c, .. } = input else { return wrong_input(name, "feature maps [C,H,W]", input, None) };
            let s = positive(args, "s", name)?;
            (Op::AdaptiveAvgPool { s }, Shape::Map { c, h: s, w: s }, 0, 0)
        }
        "dropout" => {
            let p = args.float("p");
            if !(0.0..1.0).contains(&p) {
                return hinted(
                    fail(
                        Code::BadValue,
                        Some("p"),
                        format!("dropout probability must be in [0, 1), got {}", crate::syntax::fmt::float_text(p)),
                        "out of range",
                    ),
                    "dropout takes the probability of dropping a unit, below 1: e.g. `dropout(0.5)`",
                );
            }
            (Op::Dropout { p }, input, 0, 0)
        }
        "flatten" => (Op::Flatten, Shape::Vector { d: input.elements() }, 0, 0),
        "linear" => {
            let n = positive(args, "n", name)?;
            let bias = args.bool("bias");
            let (inf, tokens, shape) = match input {
                Shape::Vector { d } => (d, 1, Shape::Vector { d: n }),
                Shape::Tokens { n: t, d } => (d, t, Shape::Tokens { n: t, d: n }),
                Shape::Map { c, h, w } => {
                    return Err(OpError {
                        code: Code::LinearOnSpatial,
                        message: format!("`linear` takes a vector or tokens, but gets feature maps {input}"),
                        arg: None,
                        label: format!("gets {input}"),
                        hint: Some(format!(
                            "pool or flatten first: `gap |> {{call}}` gives it {c} features, `flatten |> {{call}}` gives it {}",
                            prod(&[c, h, w])
                        )),
                    })
                }
            };
            (Op::Linear { out: n, bias }, shape, prod(&[inf, n]) + if bias { n } else { 0 }, prod(&[tokens, inf, n]))
        }
        "shuffle" => {
            let Shape::Map { c, .. } = input else { return wrong_input(name, "feature maps [C,H,W]", input, None) };
            let g = groups(args, c, name)?;
            (Op::Shuffle { groups: g }, input, 0, 0)
        }
        "slice" => {
            let c = match input {
                Shape::Map { c, .. } => c,
                Shape::Vector { d } => d,
                Shape::Tokens { .. } => return wrong_input(name, "feature maps or a vector", input, None),
            };
            let lo = non_negative(args, "lo", name)?;
            let hi = non_negative(args, "hi", name)?;
            if hi > c {
                return hinted(
                    fail(
                        Code::BadValue,
                        Some("hi"),
                        format!("slice ends at channel {hi}, but the input has {c}"),
                        format!("past {c}"),
                    ),
                    format!("channels are numbered 0..{c}"),
                );
            }
            if hi <= lo {
                return fail(
                    Code::ZeroDim,
                    Some("hi"),
                    format!("slice({lo}, {hi}) selects no channels"),
                    "empty slice",
                );
            }
            let shape = match input {
                Shape::Map { h, w, .. } => Shape::Map { c: hi - lo, h, w },
                _ => Shape::Vector { d: hi - lo },
            };
            (Op::Slice { lo, hi }, shape, 0, 0)
        }
        "patch" => {
            let Shape::Map { c, h, w } = input else { return wrong_input(name, "feature maps [C,H,W]", input, None) };
            let d = positive(args, "d", name)?;
            let k = positive(args, "k", name)?;
            if k > h || k > w {
                return hinted(
                    fail(
                        Code::KernelTooLarge,
                        Some("k"),
                        format!("patch size {k} is larger than the input {h}x{w}"),
                        "patch too large",
                    ),
                    format!("use a patch size that divides the {h}x{w} input, e.g. {}", divisor_near(gcd(h, w), 4)),
                );
            }
            let n = (h / k) * (w / k);
            (Op::Patch { d, k }, Shape::Tokens { n, d }, prod(&[d, c, k, k]).saturating_add(d), prod(&[n, d, c, k, k]))
        }
        "cls_token" => match input {
            Shape::Tokens { n, d } => (Op::ClsToken, Shape::Tokens { n: n + 1, d }, d, 0),
            _ => return wrong_input(name, "tokens [N,D]", input, Some("make tokens with `patch(d, k=…)` first")),
        },
        "pos_embed" => match input {
            Shape::Tokens { n, d } => (Op::PosEmbed, input, n * d, 0),
            _ => return wrong_input(name, "tokens [N,D]", input, Some("make tokens with `patch(d, k=…)` first")),
        },
        "attn" => {
            let Shape::Tokens { n, d } = input else {
                return wrong_input(name, "tokens [N,D]", input, Some("make tokens with `patch(d, k=…)` first"));
            };
            let heads = positive(args, "heads", name)?;
            if d % heads != 0 {
                return hinted(
                    fail(
                        Code::HeadsNotDivisible,
                        Some("heads"),
                        format!("{heads} heads do not divide the width {d}"),
                        format!("{heads} does not divide {d}"),
                    ),
                    format!("use a divisor of {d}, e.g. {}", divisor_near(d, heads)),
                );
            }
            let bias = args.bool("bias");
            let params = prod(&[4, d, d]) + if bias { 4 * d } else { 0 };
            (Op::Attention { heads, bias }, input, params, prod(&[4, n, d, d]).saturating_add(prod(&[2, n, n, d])))
        }
        "token_mean" | "cls_pool" => match input {
            Shape::Tokens { d, .. } => {
                (if name == "token_mean" { Op::TokenMean } else { Op::ClsPool }, Shape::Vector { d }, 0, 0)
            }
            _ => return wrong_input(name, "tokens [N,D]", input, None),
        },
        other => unreachable!("operation `{other}` has a signature but no shape rule"),
    };
    nonzero(out.1, name)?;
    Ok(out)
}

/// The divisor of `n` closest to `near`, for hints. Divisors come in pairs
/// around the square root, so this looks at √n candidates, not n.
fn divisor_near(n: u64, near: u64) -> u64 {
    let mut best: u64 = 1;
    let mut i: u64 = 1;
    while i * i <= n {
        if n.is_multiple_of(i) {
            for d in [i, n / i] {
                if d.abs_diff(near) < best.abs_diff(near) {
                    best = d;
                }
            }
        }
        i += 1;
    }
    best
}

fn conv(name: &str, args: &ArgVals, input: Shape) -> Result<Applied, OpError> {
    let Shape::Map { c: cin, h, w } = input else {
        let hint = match input {
            Shape::Vector { .. } => "a vector has no spatial axes; use `linear` on vectors",
            _ => "tokens have no spatial axes; use `linear` on tokens",
        };
        return wrong_input(name, "feature maps [C,H,W]", input, Some(hint));
    };
    let depthwise = name == "dwconv";
    let cout = if depthwise { cin } else { positive(args, "c", name)? };
    let k = positive(args, "k", name)?;
    let s = positive(args, "s", name)?;
    let d = positive(args, "d", name)?;
    let g = if depthwise { cin } else { positive(args, "g", name)? };
    let bias = args.bool("bias");
    let p = match args.get("p") {
        Val::Same => {
            if s != 1 {
                return hinted(
                    fail(
                        Code::BadValue,
                        Some("p"),
                        format!("`p=same` needs stride 1, but `s` is {s}"),
                        "same padding with a stride",
                    ),
                    format!("write the padding out: `p={}` keeps ceil(H/{s}) for odd kernels", d * (k - 1) / 2),
                );
            }
            if (d * (k - 1)) % 2 != 0 {
                return hinted(
                    fail(
                        Code::BadValue,
                        Some("p"),
                        format!("`p=same` needs an odd kernel, got k={k}"),
                        "asymmetric padding",
                    ),
                    "use an odd kernel (3, 5, 7) with `same`",
                );
            }
            d * (k - 1) / 2
        }
        Val::Int(v) if v >= 0 && v as u64 <= MAX_SIZE => v as u64,
        Val::Int(v) if v > 0 => return too_large("p", name, v),
        v => return fail(Code::BadValue, Some("p"), format!("padding cannot be negative, got {v}"), "negative"),
    };
    if cin % g != 0 || cout % g != 0 {
        let which =
            if cin % g != 0 { format!("the {cin} input channels") } else { format!("the {cout} output channels") };
        let both = if cin == cout {
            format!("groups must divide {cin}")
        } else {
            format!("groups must divide both {cin} and {cout}")
        };
        return hinted(
            fail(
                Code::GroupsNotDivisible,
                Some("g"),
                format!("{g} groups do not divide {which}"),
                format!("{g} groups"),
            ),
            format!("{both}; e.g. g={}", divisor_near(gcd(cin, cout), g)),
        );
    }
    let (Some(oh), Some(ow)) = (window(h, k, s, p, d, false), window(w, k, s, p, d, false)) else {
        let eff = d * (k - 1) + 1;
        let kernel = if d > 1 {
            format!("dilated kernel (k={k}, d={d}) spans {eff}x{eff}, which")
        } else {
            format!("kernel {eff}x{eff}")
        };
        return hinted(
            fail(
                Code::KernelTooLarge,
                Some("k"),
                format!("{kernel} is larger than the padded input {}x{}", h + 2 * p, w + 2 * p),
                format!("kernel {eff} > input {}", h.min(w) + 2 * p),
            ),
            format!("the input is only {h}x{w} here: use a smaller kernel, add padding (`p={}`), or remove a downsampling step earlier", (k - 1) / 2),
        );
    };
    let shape = Shape::Map { c: cout, h: oh, w: ow };
    let per_out = prod(&[cin / g, k, k]);
    let params = prod(&[cout, per_out]).saturating_add(if bias { cout } else { 0 });
    let macs = prod(&[shape.elements(), per_out]);
    let op = Op::Conv { out: cout, k, s, p, d, g, bias };
    Ok((op, shape, params, macs))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn pool(name: &str, args: &ArgVals, input: Shape) -> Result<Applied, OpError> {
    let Shape::Map { c, h, w } = input else { return wrong_input(name, "feature maps [C,H,W]", input, None) };
    let k = positive(args, "k", name)?;
    let s = positive(args, "s", name)?;
    let p = non_negative(args, "p", name)?;
    let ceil = args.bool("ceil");
    if 2 * p > k {
        return fail(
            Code::BadValue,
            Some("p"),
            format!("pool padding {p} is more than half the kernel {k}"),
            "too much padding",
        );
    }
    let (Some(oh), Some(ow)) = (window(h, k, s, p, 1, ceil), window(w, k, s, p, 1, ceil)) else {
        return hinted(
            fail(
                Code::KernelTooLarge,
                Some("k"),
                format!("pool window {k}x{k} is larger than the input {h}x{w}"),
                format!("window {k} > input {}", h.min(w) + 2 * p),
            ),
            "the input is already this small: remove this pool, or use `gap` to pool everything",
        );
    };
    let op = if name == "maxpool" { Op::MaxPool { k, s, p, ceil } } else { Op::AvgPool { k, s, p, ceil } };
    Ok((op, Shape::Map { c, h: oh, w: ow }, 0, 0))
}

/// The result shape of `add`: all operands alike. On failure, the index of
/// the first operand that differs from the flow.
pub fn add(shapes: &[Shape]) -> Result<Shape, (Code, String, usize)> {
    for (i, s) in shapes.iter().enumerate().skip(1) {
        if *s != shapes[0] {
            return Err((
                Code::ShapeMismatch,
                format!("`add` needs equal shapes, but the flow is {} and this operand is {s}", shapes[0]),
                i,
            ));
        }
    }
    Ok(shapes[0])
}

/// `mul`: equal shapes, or per-channel gates ([C] or [C,1,1]) over [C,H,W].
pub fn mul(shapes: &[Shape]) -> Result<Shape, (Code, String, usize)> {
    let target = *shapes.iter().max_by_key(|s| s.elements()).expect("a merge has operands");
    let gate_ok = |s: Shape| match (s, target) {
        (a, b) if a == b => true,
        (Shape::Vector { d }, Shape::Map { c, .. }) => d == c,
        (Shape::Map { c: gc, h: 1, w: 1 }, Shape::Map { c, .. }) => gc == c,
        _ => false,
    };
    for (i, s) in shapes.iter().enumerate() {
        if !gate_ok(*s) {
            return Err((
                Code::ShapeMismatch,
                format!("`mul` needs equal shapes or a per-channel gate, but {s} does not fit {target}"),
                i,
            ));
        }
    }
    Ok(target)
}

pub fn concat(shapes: &[Shape]) -> Result<Shape, (Code, String, usize)> {
    match shapes[0] {
        Shape::Map { h, w, .. } => {
            let mut c = 0;
            for (i, s) in shapes.iter().enumerate() {
                match s {
                    Shape::Map { c: sc, h: sh, w: sw } if *sh == h && *sw == w => c += sc,
                    _ => {
                        return Err((
                            Code::ConcatMismatch,
                            format!("`concat` joins channels of maps of the same size, but the flow is {} and this operand is {s}", shapes[0]),
                            i,
                        ))
                    }
                }
            }
            Ok(Shape::Map { c, h, w })
        }
        Shape::Vector { .. } => {
            let mut d = 0;
            for (i, s) in shapes.iter().enumerate() {
                match s {
                    Shape::Vector { d: sd } => d += sd,
                    _ => {
                        return Err((
                            Code::ConcatMismatch,
                            format!(
                                "`concat` joins vectors with vectors, but the flow is {} and this operand is {s}",
                                shapes[0]
                            ),
                            i,
                        ))
                    }
                }
            }
            Ok(Shape::Vector { d })
        }
        Shape::Tokens { .. } => Err((Code::ConcatMismatch, "`concat` does not join token sequences".to_string(), 0)),
    }
}

pub fn merge_hint(name: &str, shapes: &[Shape]) -> String {
    let flow = shapes[0];
    let other = shapes.iter().skip(1).find(|s| **s != flow).copied().unwrap_or(flow);
    match (name, flow, other) {
        ("concat", Shape::Map { h, w, .. }, Shape::Map { h: h2, w: w2, .. }) if (h, w) != (h2, w2) => format!(
            "the spatial sizes differ ({h}x{w} vs {h2}x{w2}): downsample the larger branch (a stride or a pool) to match"
        ),
        (_, Shape::Map { c, h, w }, Shape::Map { h: h2, w: w2, .. }) if (h, w) != (h2, w2) => format!(
            "the spatial sizes differ ({h}x{w} vs {h2}x{w2}): give the shortcut the same stride, e.g. `x |> conv({c}, k=1, s={}) |> bn`",
            (h2 / h.max(1)).max(h / h2.max(1)).max(1)
        ),
        (_, Shape::Map { c, .. }, Shape::Map { c: c2, .. }) if c != c2 => {
            format!("the channels differ ({c} vs {c2}): project the shortcut, e.g. `x |> conv({c}, k=1) |> bn`")
        }
        ("concat", Shape::Tokens { .. }, _) => {
            "token sequences cannot be concatenated: pool them first (`cls_pool`, `token_mean`), or widen with `linear`".to_string()
        }
        ("concat", Shape::Map { .. }, Shape::Vector { .. }) | ("concat", Shape::Vector { .. }, Shape::Map { .. }) => {
            "a map and a vector cannot be joined: pool or flatten the map first (`gap`, `flatten`)".to_string()
        }
        (_, Shape::Vector { d }, Shape::Vector { d: d2 }) => format!(
            "the widths differ ({d} vs {d2}): project one with `linear({d})` so they match"
        ),
        (_, Shape::Tokens { d, .. }, Shape::Tokens { d: d2, .. }) if d != d2 => {
            format!("the token widths differ ({d} vs {d2}): project back with `linear({d})`")
        }
        ("mul", Shape::Map { c, .. }, Shape::Vector { .. }) => {
            format!("a gate must have one value per channel: end it with `linear({c})`")
        }
        _ => "merged values must have matching shapes; the shape table (`nasc compile`) shows each value's shape".to_string(),
    }
}
