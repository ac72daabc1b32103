//! The end of a kill-and-resume test of `nasc search`: the last resume (or start, where no kill
//! left a committed run), and the comparison of its rows with those of the run never killed.

use nasc_search::store::Status;
use nasc_search::Store;
use std::path::Path;
use std::process::Command;

/// Runs the killed run `run` (of `config`) to its end, then asserts that it completed with the
/// same candidates, slot by slot (program, diff, verdict), as `whole`, the run never killed.
/// `kills` (the moments of the kills) goes in every message, so that a failure can be replayed.
pub fn finish_and_compare(config: &Path, whole: &Path, run: &Path, kills: &impl std::fmt::Debug) {
    let mut last = Command::new(env!("CARGO_BIN_EXE_nasc"));
    last.args(["search", "--json"]);
    if Store::holds_run(run) {
        last.arg("--resume");
    } else {
        last.args(["--config", config.to_str().unwrap(), "--out"]);
    }
    let out = last.arg(run).output().unwrap();
    assert!(out.status.success(), "kills {kills:?}: {}", String::from_utf8_lossy(&out.stderr));

    let rows = |run: &Path| {
        let mut all: Vec<_> = Store::open(run)
            .unwrap()
            .all()
            .unwrap()
            .into_iter()
            .map(|c| ((c.cycle, c.slot, format!("{:?}", c.role)), c.status, c.program, c.diff, c.verdict))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let (a, b) = (rows(whole), rows(run));
    assert!(b.iter().all(|r| r.1 == Status::Finished), "kills {kills:?}: the run completes");
    assert_eq!(a.len(), b.len(), "kills {kills:?}: as many rows as the run never killed");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, &x.2, &x.3, &x.4), (&y.0, &y.2, &y.3, &y.4), "kills {kills:?}: the same candidate");
    }
}
