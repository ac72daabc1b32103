//! Evaluated arguments: what an operation's parameters hold once the elaborator has computed them.
//! Shared by the elaborator (which computes them) and the shape rules (which read them).

/// An evaluated argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val {
    Int(i64),
    Float(f64),
    Bool(bool),
    Same,
}

impl std::fmt::Display for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Int(v) => write!(f, "{v}"),
            Val::Float(v) => f.write_str(&crate::syntax::fmt::float_text(*v)),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Same => f.write_str("same"),
        }
    }
}

impl Val {
    pub(super) fn type_name(self) -> &'static str {
        match self {
            Val::Int(_) => "an integer",
            Val::Float(_) => "a decimal number",
            Val::Bool(_) => "a boolean",
            Val::Same => "`same`",
        }
    }
}
