//! nasc-delta: from a language model's reply to a judged candidate. Diff extraction and tolerant
//! application ([`delta`]), the verdict pipeline (`delta::verdict`: extract → apply → parse →
//! check → novelty), and structural novelty against an archive ([`novelty`]).
//! Pure computation on text and graphs: it never imports Burn and never trains.

pub mod delta;
pub mod novelty;
