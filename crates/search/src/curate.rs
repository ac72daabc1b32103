//! Curation: the supervised corpus of a cycle (prompt → canonical diff, from parent → strictly better child on one dataset), and the fine-tune command between cycles.
//! It reads stored candidates and writes one JSONL file; fine-tuning runs as a child process (`nasc lm finetune` or the user's command), so a crash there never takes the search down.

use super::config::{Curation, Finetune};
use super::store::{Candidate, Role};
use nasc_delta::Verdict;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// One supervised example.
#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub messages: Vec<Message>,
    pub dataset: String,
    pub parent: i64,
    pub child: i64,
    pub gain: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// Every (parent → child) edge where both trained on the same dataset and the child's accuracy
/// beats the parent's by more than `policy.min_gain`: the child's prompt (rendered for the
/// parent) → the child's canonical diff. Largest gains first, ties by child id.
pub fn pairs(all: &[Candidate], policy: &Curation) -> Vec<Pair> {
    let by_id: HashMap<i64, &Candidate> = all.iter().map(|c| (c.id, c)).collect();
    let mut out: Vec<Pair> = all
        .iter()
        .filter(|c| c.role == Role::Candidate && c.verdict == Verdict::Ok)
        .filter_map(|c| {
            let parent = by_id.get(&c.parent_id?)?;
            let (a, b) = (parent.accuracy?, c.accuracy?);
            let (prompt, diff) = (c.prompt.as_ref()?, c.diff.as_ref()?);
            (parent.dataset == c.dataset && b - a > policy.min_gain && !diff.is_empty()).then(|| Pair {
                messages: vec![
                    Message { role: "user", content: prompt.clone() },
                    Message { role: "assistant", content: format!("```diff\n{diff}```") },
                ],
                dataset: c.dataset.clone(),
                parent: parent.id,
                child: c.id,
                gain: b - a,
            })
        })
        .collect();
    out.sort_by(|x, y| y.gain.total_cmp(&x.gain).then(x.child.cmp(&y.child)));
    if policy.max_pairs > 0 {
        out.truncate(policy.max_pairs);
    }
    out
}

/// Writes `pairs` as JSONL to `path` (through a temporary file, so a reader never sees half of it).
pub fn write_jsonl(pairs: &[Pair], path: &Path) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut text = String::new();
    for p in pairs {
        text.push_str(&serde_json::to_string(p).expect("a pair serialises"));
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One fine-tuning step: what to train from and where the adapter goes.
pub struct FinetuneJob<'a> {
    pub corpus: &'a Path,
    pub adapter: &'a Path,
    pub cycle: i64,
    /// The model the generator asked for so far (the base's or an adapter's served name).
    pub served_model: &'a str,
    /// The adapter to continue from, if any.
    pub init: Option<&'a Path>,
}

/// The command line of a fine-tuning step: `nasc lm finetune` (this executable) on
/// `[finetune] model`, or the configured command with its placeholders replaced.
pub fn finetune_command(ft: &Finetune, job: &FinetuneJob) -> Result<Vec<String>, String> {
    let path = |p: &Path| p.display().to_string();
    if let Some(model) = &ft.model {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the nasc executable: {e}"))?;
        let mut args = vec![path(&exe), "lm".into(), "finetune".into(), "--model".into(), path(model)];
        args.extend(["--data".into(), path(job.corpus)]);
        for extra in &ft.replay {
            args.extend(["--data".into(), path(extra)]);
        }
        args.extend(["--out".into(), path(job.adapter)]);
        match job.init {
            // A continued adapter keeps its own rank, alpha and targets.
            Some(init) => args.extend(["--init-adapter".into(), path(init)]),
            None => args.extend(["--rank".into(), ft.rank.to_string(), "--alpha".into(), ft.alpha.to_string()]),
        }
        args.extend(["--lr".into(), ft.lr.to_string(), "--epochs".into(), ft.epochs.to_string(), "--json".into()]);
        args.extend(ft.args.iter().cloned());
        return Ok(args);
    }
    Ok(ft
        .command
        .iter()
        .map(|a| {
            a.replace("{corpus}", &path(job.corpus))
                .replace("{adapter}", &path(job.adapter))
                .replace("{cycle}", &job.cycle.to_string())
                .replace("{base_model}", job.served_model)
                .replace("{init_adapter}", &job.init.map(path).unwrap_or_default())
                .replace("{rank}", &ft.rank.to_string())
                .replace("{alpha}", &ft.alpha.to_string())
                .replace("{lr}", &ft.lr.to_string())
                .replace("{epochs}", &ft.epochs.to_string())
        })
        .collect())
}

/// Runs a fine-tuning step into a fresh `job.adapter` folder. Returns a line for the log (for
/// `nasc lm finetune`: its final loss, steps and tokens/s); a failure carries the command and
/// the end of what it printed.
pub fn finetune(ft: &Finetune, job: &FinetuneJob) -> Result<String, String> {
    let args = finetune_command(ft, job)?;
    let Some((program, rest)) = args.split_first() else {
        return Err("[finetune] command is empty".into());
    };
    // A step killed halfway left a partial adapter: start it again from nothing.
    if job.adapter.exists() {
        std::fs::remove_dir_all(job.adapter).map_err(|e| format!("cannot clear {}: {e}", job.adapter.display()))?;
    }
    std::fs::create_dir_all(job.adapter).map_err(|e| format!("cannot create {}: {e}", job.adapter.display()))?;
    let out = std::process::Command::new(program)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the fine-tune command `{}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(format!(
            "the fine-tune command `{}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if ft.model.is_some() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) {
            return Ok(format!(
                "{} steps, final loss {:.4}, {:.0} tokens/s",
                v["steps"].as_u64().unwrap_or(0),
                v["final_loss"].as_f64().unwrap_or(f64::NAN),
                v["tokens_per_second"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    Ok(format!("`{program}` finished"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Status;

    fn cand(id: i64, parent: Option<i64>, dataset: &str, accuracy: Option<f64>) -> Candidate {
        Candidate {
            id,
            cycle: i64::from(parent.is_some()),
            slot: id,
            role: if parent.is_some() { Role::Candidate } else { Role::Baseline },
            status: Status::Finished,
            dataset: dataset.into(),
            baseline: "b".into(),
            parent_id: parent,
            generator: "mutate".into(),
            adapter: None,
            program: Some("net {\n  gap\n}\n".into()),
            diff: Some(format!("--- a/program.arch\n+++ b/program.arch\n@@ -1 +1 @@\n-{id}\n+{id}x\n")),
            prompt: Some(format!("prompt {id}")),
            attempts: 1,
            attempt_verdicts: vec![Verdict::Ok],
            front_verdict: Verdict::Ok,
            verdict: if accuracy.is_some() { Verdict::Ok } else { Verdict::Diverged },
            similarity: None,
            hash: None,
            params: None,
            macs: None,
            accuracy,
            reply_lines: None,
            reply_tokens: None,
            train_s: None,
            finished_at: None,
            tolerances: Vec::new(),
            leases: 0,
            trained_by: None,
        }
    }

    #[test]
    fn pairs_are_strict_improvements_on_one_dataset_largest_gain_first() {
        let all = vec![
            cand(1, None, "mnist", Some(0.5)),
            cand(2, Some(1), "mnist", Some(0.6)),
            cand(3, Some(1), "mnist", Some(0.5)),   // equal: not better
            cand(4, Some(2), "mnist", Some(0.9)),   // better than its parent 2
            cand(5, Some(1), "cifar10", Some(0.9)), // another dataset than its parent
            cand(6, Some(2), "mnist", None),        // did not train
            cand(7, Some(1), "mnist", Some(0.55)),
        ];
        let got: Vec<(i64, i64)> = pairs(&all, &Curation::default()).iter().map(|p| (p.parent, p.child)).collect();
        assert_eq!(got, [(2, 4), (1, 2), (1, 7)]);
        let p = &pairs(&all, &Curation::default())[0];
        assert_eq!((p.messages[0].role, p.messages[0].content.as_str()), ("user", "prompt 4"));
        assert!(
            p.messages[1].content.starts_with("```diff\n--- a/program.arch") && p.messages[1].content.ends_with("```")
        );
        let capped = pairs(&all, &Curation { min_gain: 0.06, max_pairs: 1 });
        assert_eq!(capped.iter().map(|p| p.child).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn the_default_step_is_nasc_lm_finetune_continuing_the_adapter_it_is_given() {
        let ft = Finetune {
            model: Some("m.gguf".into()),
            args: vec!["--max-len".into(), "64".into()],
            ..Finetune::default()
        };
        let job = FinetuneJob {
            corpus: Path::new("c.jsonl"),
            adapter: Path::new("a"),
            cycle: 2,
            served_model: "base",
            init: None,
        };
        let args = finetune_command(&ft, &job).unwrap();
        assert_eq!(args[1..5], ["lm", "finetune", "--model", "m.gguf"]);
        let tail = "--data c.jsonl --out a --rank 16 --alpha 32 --lr 0.0002 --epochs 1 --json --max-len 64";
        assert_eq!(args[5..].join(" "), tail);
        let args = finetune_command(&ft, &FinetuneJob { init: Some(Path::new("prev")), ..job }).unwrap();
        let tail = "--data c.jsonl --out a --init-adapter prev --lr 0.0002 --epochs 1 --json --max-len 64";
        assert_eq!(args[5..].join(" "), tail);
        // Replayed files train beside the cycle's corpus.
        let replaying = Finetune { replay: vec!["format.jsonl".into(), "more.jsonl".into()], ..ft.clone() };
        let args = finetune_command(&replaying, &job).unwrap();
        assert_eq!(args[5..11].join(" "), "--data c.jsonl --data format.jsonl --data more.jsonl");

        let ft = Finetune {
            command: ["train", "{corpus}", "{adapter}", "{cycle}", "{base_model}", "{init_adapter}", "{rank}"]
                .map(String::from)
                .to_vec(),
            ..Finetune::default()
        };
        let job = FinetuneJob { init: Some(Path::new("prev")), ..job };
        assert_eq!(finetune_command(&ft, &job).unwrap().join(" "), "train c.jsonl a 2 base prev 16");
    }
}
