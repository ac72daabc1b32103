//! Helpers shared by the integration tests of every crate: the repository's root and the zoo as
//! (name, source) pairs. Test-only; nothing here decides what a test asserts.

use std::path::PathBuf;

/// The repository's root (the folder holding `zoo/`), found above the crate being tested.
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("zoo").is_dir() && p.join("Cargo.toml").is_file())
        .expect("the crate lies inside the nasc repository, which holds zoo/")
        .to_path_buf()
}

/// Every `zoo/*.arch`, sorted by name.
#[allow(dead_code)]
pub fn zoo() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(root().join("zoo"))
        .expect("zoo/ exists")
        .map(|e| e.expect("readable zoo entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "arch"))
        .map(|p| {
            let name = p.file_stem().expect("a file name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("readable zoo file"))
        })
        .collect();
    v.sort();
    v
}
