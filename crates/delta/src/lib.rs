//! nasc-delta: from a language model's reply to a judged candidate. Diff extraction and tolerant
//! application ([`delta`]), the verdict pipeline (`delta::judge`: extract → apply → parse →
//! check → novelty), the verdict taxonomy from the front half to training ([`Verdict`]), and
//! structural novelty against an archive ([`novelty`]).
//! Pure computation on text and graphs: it never imports Burn and never trains.

pub mod delta;
pub mod novelty;

pub use delta::{UnknownVerdict, Verdict};
