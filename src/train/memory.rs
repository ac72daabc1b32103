// How much memory a run will want, how much the machine has, and how much the process used.
// Linux /proc figures; elsewhere the answers are `None` and no limit is applied.

use crate::check::Graph;

/// Bytes a training step is expected to hold: every operation's output for
/// the batch (kept for the backward pass) and as much again for their
/// gradients, plus the parameters four times (weights, gradients, and two
/// optimizer moments for Adam; SGD needs fewer).
pub fn estimate(graph: &Graph, batch: usize) -> u64 {
    let activations = graph.activation_bytes().saturating_mul(batch as u64).saturating_mul(2);
    let input = graph.nodes[0].shape.elements().saturating_mul(4 * batch as u64);
    activations.saturating_add(input).saturating_add(graph.params().saturating_mul(16))
}

/// `MemAvailable` of /proc/meminfo: what can be allocated without swapping.
pub fn available() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

/// The process's peak resident set (`VmHWM` of /proc/self/status).
pub fn peak_rss() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:")
}

fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Has the C allocator keep freed memory for reuse (the language model's training needs it too).
pub use nasc_lora::keep_freed_buffers;
