//! nasc: a compiler and search engine for neural architectures written in the arch language.
//! The library holds every stage of the pipeline; the `nasc` binary only parses arguments and calls in.

pub mod check;
pub mod cli;
pub mod compile;
pub mod delta;
pub mod diag;
pub mod novelty;
pub mod search;
pub mod syntax;
pub mod train;
