//! The signatures of the built-in operations: parameter names, types, defaults.
//! Shared by the canonical printer and the checker; shape rules live in `check`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Int,
    Float,
    /// A number in [0, 1): a probability (dropout's).
    Prob,
    Bool,
    /// An integer, or the keyword `same`.
    Pad,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Int => "an integer",
            Ty::Float => "a number",
            Ty::Prob => "a number in [0, 1)",
            Ty::Bool => "true or false",
            Ty::Pad => "an integer or `same`",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArgDefault {
    Required,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// The value of another parameter (a pool's stride defaults to its kernel).
    SameAs(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: Ty,
    pub default: ArgDefault,
}

/// What an operation's arguments are.
#[derive(Clone, Copy, Debug)]
pub enum Args {
    /// Named parameters; the first `positional` are printed positionally.
    Params { params: &'static [ParamSpec], positional: usize },
    /// One or more values (merges).
    Values,
}

#[derive(Clone, Copy, Debug)]
pub struct Signature {
    pub name: &'static str,
    pub args: Args,
    pub summary: &'static str,
}

const fn req(name: &'static str, ty: Ty) -> ParamSpec {
    ParamSpec { name, ty, default: ArgDefault::Required }
}
const fn int(name: &'static str, v: i64) -> ParamSpec {
    ParamSpec { name, ty: Ty::Int, default: ArgDefault::Int(v) }
}
const fn pad(name: &'static str, v: i64) -> ParamSpec {
    ParamSpec { name, ty: Ty::Pad, default: ArgDefault::Int(v) }
}
const fn float(name: &'static str, v: f64) -> ParamSpec {
    ParamSpec { name, ty: Ty::Float, default: ArgDefault::Float(v) }
}
const fn prob(name: &'static str, v: f64) -> ParamSpec {
    ParamSpec { name, ty: Ty::Prob, default: ArgDefault::Float(v) }
}
const fn boolean(name: &'static str, v: bool) -> ParamSpec {
    ParamSpec { name, ty: Ty::Bool, default: ArgDefault::Bool(v) }
}
const fn same_as(name: &'static str, other: &'static str) -> ParamSpec {
    ParamSpec { name, ty: Ty::Int, default: ArgDefault::SameAs(other) }
}

const NONE: &[ParamSpec] = &[];

const fn op(name: &'static str, params: &'static [ParamSpec], positional: usize, summary: &'static str) -> Signature {
    Signature { name, args: Args::Params { params, positional }, summary }
}

pub static OPS: &[Signature] = &[
    op(
        "conv",
        &[
            req("c", Ty::Int),
            req("k", Ty::Int),
            int("s", 1),
            pad("p", 0),
            int("d", 1),
            int("g", 1),
            boolean("bias", true),
        ],
        1,
        "2-d convolution to c channels",
    ),
    op(
        "dwconv",
        &[req("k", Ty::Int), int("s", 1), pad("p", 0), int("d", 1), boolean("bias", true)],
        0,
        "depthwise 2-d convolution",
    ),
    op("bn", NONE, 0, "batch norm"),
    op("ln", NONE, 0, "layer norm over the last axis"),
    op("gn", &[req("groups", Ty::Int)], 1, "group norm"),
    op("relu", NONE, 0, "ReLU"),
    op("relu6", NONE, 0, "ReLU6"),
    op("leaky_relu", &[float("slope", 0.01)], 1, "leaky ReLU"),
    op("elu", &[float("alpha", 1.0)], 1, "ELU"),
    op("gelu", NONE, 0, "GELU"),
    op("silu", NONE, 0, "SiLU (swish)"),
    op("hardswish", NONE, 0, "hard swish"),
    op("hardsigmoid", NONE, 0, "hard sigmoid"),
    op("sigmoid", NONE, 0, "sigmoid"),
    op("tanh", NONE, 0, "tanh"),
    op("maxpool", &[req("k", Ty::Int), same_as("s", "k"), int("p", 0), boolean("ceil", false)], 0, "max pooling"),
    op("avgpool", &[req("k", Ty::Int), same_as("s", "k"), int("p", 0), boolean("ceil", false)], 0, "average pooling"),
    op("gap", NONE, 0, "global average pooling to a vector"),
    op("adaptive_avgpool", &[req("s", Ty::Int)], 1, "adaptive average pooling to s x s"),
    op("dropout", &[prob("p", 0.5)], 1, "dropout"),
    op("flatten", NONE, 0, "flatten to a vector"),
    op("linear", &[req("n", Ty::Int), boolean("bias", true)], 1, "fully connected layer"),
    Signature { name: "add", args: Args::Values, summary: "element-wise sum of the flow and the arguments" },
    Signature { name: "mul", args: Args::Values, summary: "element-wise product, broadcasting [C] over [C,H,W]" },
    Signature { name: "concat", args: Args::Values, summary: "concatenation along channels" },
    op("shuffle", &[req("groups", Ty::Int)], 1, "channel shuffle"),
    op("slice", &[req("lo", Ty::Int), req("hi", Ty::Int)], 2, "channels lo..hi"),
    op("identity", NONE, 0, "no-op"),
    op("patch", &[req("d", Ty::Int), req("k", Ty::Int)], 1, "patch embedding to d-wide tokens"),
    op("cls_token", NONE, 0, "prepend a learned class token"),
    op("pos_embed", NONE, 0, "add a learned position embedding"),
    op("attn", &[req("heads", Ty::Int), boolean("bias", true)], 1, "multi-head self-attention"),
    op("token_mean", NONE, 0, "mean over tokens"),
    op("cls_pool", NONE, 0, "the class token"),
];

pub fn lookup(name: &str) -> Option<&'static Signature> {
    OPS.iter().find(|s| s.name == name)
}

/// Words that cannot name a block, a parameter or a value.
pub const RESERVED: &[&str] = &["arch", "block", "net", "repeat", "in", "classes", "true", "false", "same"];

pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}
