//! The syntax tree of an arch program, with a byte span on every node.
//! It records what was written (and the comments around it); it knows nothing of shapes.

use std::fmt;

pub use crate::span::Span;

/// Names are short; kept inline (no allocation) up to 24 bytes, which
/// matters when a search parses tens of thousands of programs a second.
pub type Name = compact_str::CompactString;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: Name,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    /// The text after `#`, without the line break.
    pub text: String,
}

/// Comments attached to a statement or item: those on the lines above it, and
/// the one at the end of its own line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trivia {
    pub leading: Vec<Comment>,
    pub trailing: Option<Comment>,
    /// A blank line separated this node from the one before it.
    pub blank_before: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub arch: Option<Ident>,
    pub arch_trivia: Trivia,
    pub blocks: Vec<BlockDef>,
    pub net: Option<NetDef>,
    /// The order items were written in, so `fmt` keeps it.
    pub order: Vec<ItemRef>,
    /// Comments after the last item.
    pub tail: Vec<Comment>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemRef {
    Block(usize),
    Net,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Body,
    pub trivia: Trivia,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetDef {
    pub body: Body,
    pub trivia: Trivia,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    pub stmts: Vec<Stmt>,
    /// Comments after the last statement, before the closing brace.
    pub tail: Vec<Comment>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub trivia: Trivia,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `[name =] stage |> stage …`
    Pipe { bind: Option<Ident>, pipe: Pipeline },
    /// `repeat(count) { body }`
    Repeat { count: Expr, body: Body },
}

/// `stage |> stage …`. The first stage may name a value (`x |> conv(…)`);
/// whether a bare identifier is a value or an operation is decided by the checker.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
    pub span: Span,
}

/// An operation or block call, or (first in a pipeline only) a value name.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub name: Ident,
    /// `None` for a bare identifier (`bn`, `x`); `Some(vec![])` for `bn()`.
    pub args: Option<Vec<Arg>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub key: Option<Ident>,
    pub value: ArgValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    Expr(Expr),
    /// An inline pipeline such as `x |> conv(64, k=1) |> bn` (merges only).
    Branch(Pipeline),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Int(i64, Span),
    Float(f64, Span),
    Name(Ident),
    Neg(Box<Expr>, Span),
    Bin(BinOp, Box<Expr>, Box<Expr>, Span),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => 1,
            BinOp::Mul | BinOp::Div => 2,
        }
    }
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Int(_, s) | Expr::Float(_, s) | Expr::Neg(_, s) | Expr::Bin(_, _, _, s) => *s,
            Expr::Name(id) => id.span,
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn go(e: &Expr, f: &mut fmt::Formatter<'_>, parent: u8, right: bool) -> fmt::Result {
            match e {
                Expr::Int(v, _) => write!(f, "{v}"),
                Expr::Float(v, _) => write!(f, "{}", crate::syntax::fmt::float_text(*v)),
                Expr::Name(id) => f.write_str(&id.name),
                Expr::Neg(inner, _) => {
                    f.write_str("-")?;
                    go(inner, f, 3, false)
                }
                Expr::Bin(op, l, r, _) => {
                    let p = op.precedence();
                    // Left-associative: a right operand of equal precedence needs parentheses.
                    let paren = p < parent || (p == parent && right);
                    if paren {
                        f.write_str("(")?;
                    }
                    go(l, f, p, false)?;
                    write!(f, " {} ", op.symbol())?;
                    go(r, f, p, true)?;
                    if paren {
                        f.write_str(")")?;
                    }
                    Ok(())
                }
            }
        }
        go(self, f, 0, false)
    }
}
