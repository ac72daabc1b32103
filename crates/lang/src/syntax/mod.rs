//! The front of the compiler: text to syntax tree and back (parse, canonical form, fmt).
//! Nothing here knows shapes or datasets, and nothing here may import Burn.

pub mod ast;
pub mod canon;
mod fast;
pub mod fmt;
pub mod lines;
pub mod parse;
pub mod signature;
pub mod stmts;

pub use parse::{parse, parse_raw};
