//! How much memory the machine has and the process used, and the allocator setting training needs.
//! Linux /proc figures; elsewhere the answers are `None` and no limit is applied.

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

/// Has the C allocator keep freed memory for reuse instead of returning it to the system at once.
/// Training frees and reallocates the same large buffers every step; by default glibc maps each
/// one afresh and unmaps it when freed, and the page faults that follow cost a large share of a
/// small CNN's step on the CPU (see BENCHMARKS.md), and the logits, masks and gradients of a
/// LoRA step are such buffers too. Process-wide, set once.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tunables; called once, before the buffers
            // it concerns are allocated. A refused value leaves glibc's default in place.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        });
    }
}
