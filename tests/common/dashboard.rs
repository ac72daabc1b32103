//! A stored fixture run and a `nasc dashboard` process serving it, for the dashboard's tests.

use nasc_delta::Verdict;
use nasc_search::store::{NewCandidate, Role, Store, Trained};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const LENET: &str = include_str!("../../zoo/lenet5.arch");
/// What the fixture's replies carry, to be shown as text and never run.
pub const HOSTILE: &str = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">";

/// A run folder under `dir`: LeNet-5's baseline and five candidates over two cycles (two
/// trained in cycle 1, a shape error whose reply holds [`HOSTILE`], one trained in cycle 2 as
/// the child of the best of cycle 1, one still training). Returns the folder and the ids.
pub fn fixture(dir: &Path) -> (PathBuf, Vec<i64>) {
    let run = dir.join("fixture");
    let config = r#"{"datasets":["fashion-mnist"],"cycles":2,"generator":"mutate"}"#;
    let store = Store::create(&run, config, &[("state", "running")]).unwrap();
    let program = |width: u32| LENET.replace("conv(6, k=5)", &format!("conv({width}, k=5)"));
    let diff = |width: u32| {
        format!("--- a/program.arch\n+++ b/program.arch\n@@ -11,3 +11,3 @@\n net {{\n-  conv(6, k=5)\n+  conv({width}, k=5)\n   relu\n")
    };
    let mut ids = Vec::new();
    let mut add = |c: NewCandidate, trained: Option<f64>| {
        let id = store.insert(&c, c.front_verdict == Verdict::Ok).unwrap();
        if let Some(a) = trained {
            store.finish(id, &Trained { accuracy: Some(a), train_s: Some(3.0), ..Trained::new(Verdict::Ok) }).unwrap();
        }
        ids.push(id);
        id
    };
    let base = NewCandidate {
        dataset: "fashion-mnist".into(),
        baseline: "lenet5".into(),
        attempts: 1,
        attempt_verdicts: vec![Verdict::Ok],
        ..NewCandidate::new(Role::Candidate, Verdict::Ok)
    };
    let baseline = add(
        NewCandidate {
            generator: "baseline".into(),
            program: Some(LENET.to_string()),
            params: Some(61706),
            ..NewCandidate { role: Role::Baseline, ..base.clone() }
        },
        Some(0.80),
    );
    let child = |cycle: i64, slot: i64, parent: i64, width: u32| NewCandidate {
        cycle,
        slot,
        parent_id: Some(parent),
        generator: "mutate".into(),
        program: Some(program(width)),
        diff: Some(diff(width)),
        extracted: Some(diff(width)),
        reply: Some(format!("Widen the first convolution.\n```diff\n{}```\n{HOSTILE}\n", diff(width))),
        params: Some(61706 + 100 * width as i64),
        macs: Some(400_000 + 1000 * width as i64),
        similarity: Some(0.5),
        ..base.clone()
    };
    let best = add(child(1, 0, baseline, 8), Some(0.83));
    add(NewCandidate { generator: "openai".into(), ..child(1, 1, baseline, 4) }, Some(0.78));
    add(
        NewCandidate {
            front_verdict: Verdict::ShapeError,
            attempt_verdicts: vec![Verdict::ShapeError],
            program: Some(LENET.replace("linear(120)", "linear(120)\n  conv(3, k=9)")),
            diagnostic: Some(format!("error: conv needs a map, got a vector {HOSTILE}")),
            params: None,
            macs: None,
            similarity: None,
            ..child(1, 2, baseline, 6)
        },
        None,
    );
    add(child(2, 0, best, 10), Some(0.85));
    add(child(2, 1, best, 12), None);
    (run, ids)
}

/// A `nasc dashboard` child process, killed when dropped.
pub struct Dashboard {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nasc dashboard ARGS --port 0 --poll 0.2` and waits until it says where it listens.
pub fn dashboard(args: &[&str]) -> Dashboard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nasc"))
        .arg("dashboard")
        .args(args)
        .args(["--port", "0", "--poll", "0.2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().unwrap_or_else(|| panic!("nasc dashboard ended before it listened")).unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            break format!("http://{}", rest.split('/').next().unwrap());
        }
    };
    // Keep reading its stderr so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Dashboard { child, url }
}
