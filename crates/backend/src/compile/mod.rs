//! The back end: a checked graph becomes a Burn module, generic over the backend, built at run time.
//! It trusts the checker's shapes (a checked graph always builds) and never reads source text or data.

pub mod cpu;
mod init;
mod model;

pub use init::Init;
pub use model::{build, Attention, GraphModel, Layer, Step, Value};
