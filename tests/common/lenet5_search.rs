//! One cycle of `nasc search` from LeNet-5 on 1,000 Fashion-MNIST images through a real
//! OpenAI-compatible server (`nasc serve`, llama.cpp's), for the tests that drive one.

use nasc_search::store::{Candidate, Role};
use nasc_search::Store;
use std::path::PathBuf;
use std::process::{Child, Command};

/// A server child process at `url` (up to and including `/v1`), killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `nasc search --json` with `candidates` from LeNet-5 through the server at `url` (model
/// `smollm2`), `top` lines added before the sections and `sampling` and `openai` lines to
/// those; returns what it printed on stderr and the run's candidates. Fails the test when the
/// search fails. The run's folder is removed afterwards.
pub fn search_through(
    url: &str,
    name: &str,
    candidates: usize,
    top: &str,
    sampling: &str,
    openai: &str,
) -> (String, Vec<Candidate>) {
    let dir = std::env::temp_dir().join(format!("nasc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let data = std::env::var_os("NASC_TEST_DATA").map_or_else(|| PathBuf::from("/usr/share/datasets"), PathBuf::from);
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "datasets = [\"fashion-mnist\"]\nbaselines = [\"{root}/zoo/lenet5.arch\"]\ncycles = 1\n\
             candidates = {candidates}\nretries = 0\ngenerator = \"openai\"\n{top}\n[sampling]\n{sampling}\n[openai]\n\
             base_url = \"{url}\"\nmodel = \"smollm2\"\ntimeout_s = 600.0\n{openai}\n[train]\n\
             data_root = \"{}\"\nlimit = 1000\neval_batch = 1000\n",
            data.display()
        ),
    )
    .unwrap();
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .args(["search", "--json", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let all = Store::open(&run).unwrap().all().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (stderr, all.into_iter().filter(|c| c.role == Role::Candidate).collect())
}
