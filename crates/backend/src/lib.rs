//! nasc-backend: a checked graph becomes a Burn module ([`compile`], with the CPU kernels in
//! `compile::cpu`) and is trained and evaluated ([`train`]), with training failures as verdicts
//! (`nasc_delta::Verdict`, the one taxonomy from the judge to the run store).
//! It reads programs only as checked graphs from `nasc-lang`, never as text.

pub mod compile;
pub mod train;
