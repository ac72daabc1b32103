//! Helpers shared by the integration tests: the zoo as (name, source) pairs.
//! Test-only; nothing here decides what a test asserts.

/// Every `zoo/*.arch`, sorted by name.
pub fn zoo() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("zoo")
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
