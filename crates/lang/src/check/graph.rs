//! The checked graph: concrete operations with every shape, parameter count and MAC count known.
//! This is what the back end compiles and what novelty hashes; it holds no source text.

use crate::syntax::ast::Span;
use serde::Serialize;
use std::fmt;

/// The shape of one sample's value (the batch axis is never part of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// Feature maps `[C,H,W]`.
    Map { c: u64, h: u64, w: u64 },
    /// A sequence of `n` tokens of width `d`: `[N,D]`.
    Tokens { n: u64, d: u64 },
    /// A feature vector `[D]`.
    Vector { d: u64 },
}

impl Shape {
    pub fn elements(self) -> u64 {
        match self {
            Shape::Map { c, h, w } => c.saturating_mul(h).saturating_mul(w),
            Shape::Tokens { n, d } => n.saturating_mul(d),
            Shape::Vector { d } => d,
        }
    }
    pub fn dims(self) -> Vec<u64> {
        match self {
            Shape::Map { c, h, w } => vec![c, h, w],
            Shape::Tokens { n, d } => vec![n, d],
            Shape::Vector { d } => vec![d],
        }
    }
    /// The width that per-channel operations (norms, gating) act on.
    pub fn channels(self) -> u64 {
        match self {
            Shape::Map { c, .. } => c,
            Shape::Tokens { d, .. } | Shape::Vector { d } => d,
        }
    }
    /// What kind of value this is, in words: "feature maps", "tokens", "a vector".
    pub fn kind_word(self) -> &'static str {
        match self {
            Shape::Map { .. } => "feature maps",
            Shape::Tokens { .. } => "tokens",
            Shape::Vector { .. } => "a vector",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "[{c},{h},{w}]"),
            Shape::Tokens { n, d } => write!(f, "[{n},{d}]"),
            Shape::Vector { d } => write!(f, "[{d}]"),
        }
    }
}

/// The index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// One concrete operation, its arguments evaluated.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input,
    Conv { out: u64, k: u64, s: u64, p: u64, d: u64, g: u64, bias: bool },
    BatchNorm,
    LayerNorm,
    GroupNorm { groups: u64 },
    Relu,
    Relu6,
    LeakyRelu { slope: f64 },
    Elu { alpha: f64 },
    Gelu,
    Silu,
    Hardswish,
    Hardsigmoid,
    Sigmoid,
    Tanh,
    MaxPool { k: u64, s: u64, p: u64, ceil: bool },
    AvgPool { k: u64, s: u64, p: u64, ceil: bool },
    GlobalAvgPool,
    AdaptiveAvgPool { s: u64 },
    Dropout { p: f64 },
    Flatten,
    Linear { out: u64, bias: bool },
    Add,
    Mul,
    Concat,
    Shuffle { groups: u64 },
    Slice { lo: u64, hi: u64 },
    Identity,
    Patch { d: u64, k: u64 },
    ClsToken,
    PosEmbed,
    Attention { heads: u64, bias: bool },
    TokenMean,
    ClsPool,
}

impl Op {
    /// The operation's name in the language.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "in",
            Op::Conv { .. } => "conv",
            Op::BatchNorm => "bn",
            Op::LayerNorm => "ln",
            Op::GroupNorm { .. } => "gn",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Elu { .. } => "elu",
            Op::Gelu => "gelu",
            Op::Silu => "silu",
            Op::Hardswish => "hardswish",
            Op::Hardsigmoid => "hardsigmoid",
            Op::Sigmoid => "sigmoid",
            Op::Tanh => "tanh",
            Op::MaxPool { .. } => "maxpool",
            Op::AvgPool { .. } => "avgpool",
            Op::GlobalAvgPool => "gap",
            Op::AdaptiveAvgPool { .. } => "adaptive_avgpool",
            Op::Dropout { .. } => "dropout",
            Op::Flatten => "flatten",
            Op::Linear { .. } => "linear",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Concat => "concat",
            Op::Shuffle { .. } => "shuffle",
            Op::Slice { .. } => "slice",
            Op::Identity => "identity",
            Op::Patch { .. } => "patch",
            Op::ClsToken => "cls_token",
            Op::PosEmbed => "pos_embed",
            Op::Attention { .. } => "attn",
            Op::TokenMean => "token_mean",
            Op::ClsPool => "cls_pool",
        }
    }
}

/// The operation with its evaluated arguments, in the language's canonical
/// spelling (`conv(64, k=3, s=2, p=1)`); depthwise convolutions print as `conv` with `g`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        let pool = |f: &mut fmt::Formatter<'_>, k: u64, s: u64, p: u64, ceil: bool| {
            write!(f, "{name}(k={k}")?;
            if s != k {
                write!(f, ", s={s}")?;
            }
            if p != 0 {
                write!(f, ", p={p}")?;
            }
            if ceil {
                write!(f, ", ceil=true")?;
            }
            f.write_str(")")
        };
        match self {
            Op::Conv { out, k, s, p, d, g, bias } => {
                write!(f, "conv({out}, k={k}")?;
                for (n, v, def) in [("s", s, 1), ("p", p, 0), ("d", d, 1), ("g", g, 1)] {
                    if *v != def {
                        write!(f, ", {n}={v}")?;
                    }
                }
                if !bias {
                    f.write_str(", bias=false")?;
                }
                f.write_str(")")
            }
            Op::GroupNorm { groups } | Op::Shuffle { groups } => write!(f, "{name}({groups})"),
            Op::LeakyRelu { slope } => write!(f, "leaky_relu({})", crate::syntax::fmt::float_text(*slope)),
            Op::Elu { alpha } => write!(f, "elu({})", crate::syntax::fmt::float_text(*alpha)),
            Op::MaxPool { k, s, p, ceil } | Op::AvgPool { k, s, p, ceil } => pool(f, *k, *s, *p, *ceil),
            Op::AdaptiveAvgPool { s } => write!(f, "adaptive_avgpool({s})"),
            Op::Dropout { p } => write!(f, "dropout({})", crate::syntax::fmt::float_text(*p)),
            Op::Linear { out, bias } => {
                write!(f, "linear({out}")?;
                if !bias {
                    f.write_str(", bias=false")?;
                }
                f.write_str(")")
            }
            Op::Slice { lo, hi } => write!(f, "slice({lo}, {hi})"),
            Op::Patch { d, k } => write!(f, "patch({d}, k={k})"),
            Op::Attention { heads, bias } => {
                write!(f, "attn({heads}")?;
                if !bias {
                    f.write_str(", bias=false")?;
                }
                f.write_str(")")
            }
            _ => f.write_str(name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    /// Operands, the flow first.
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    pub params: u64,
    pub macs: u64,
    /// Where the operation is written (inside a block's body for block calls).
    #[serde(skip)]
    pub span: Span,
}

/// A shape-checked network: nodes in topological order, node 0 the input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub output: NodeId,
}

impl Graph {
    // Sums saturate: a budget check must see "too many", never a wrapped small number.
    pub fn params(&self) -> u64 {
        self.nodes.iter().fold(0u64, |a, n| a.saturating_add(n.params))
    }
    pub fn macs(&self) -> u64 {
        self.nodes.iter().fold(0u64, |a, n| a.saturating_add(n.macs))
    }
    /// Bytes of f32 activations per sample: every operation's output, which
    /// is what training keeps for the backward pass.
    pub fn activation_bytes(&self) -> u64 {
        self.nodes.iter().skip(1).fold(0u64, |a, n| a.saturating_add(n.shape.elements().saturating_mul(4)))
    }
}
