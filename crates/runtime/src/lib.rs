//! nasc-runtime: where the work runs. The device a user names (`cpu`, `wgpu:N`, `cuda:N`) and the
//! Burn backend it selects, the process's memory, and the CPU helpers both kernel layers share.
//!
//! It knows no model and no language: the back end (`nasc-backend`) and the language model
//! (`nasc-lm`) build on it; it depends on neither. The `wgpu` and `cuda` features live here once.

pub mod cpu;
mod device;
pub mod memory;

pub use device::{available, dispatch, BackendJob, Device};
