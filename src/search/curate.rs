// Curation: the supervised corpus of a cycle (prompt → canonical diff, from parent → strictly better child on one dataset), and the fine-tune command between cycles.
// It reads stored candidates and writes one JSONL file; the fine-tuner is an external command, never code of ours pretending to train.

use super::config::{Curation, Finetune};
use super::store::Candidate;
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
        .filter(|c| c.role == "candidate" && c.verdict == "ok")
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

/// Runs the fine-tune command with `{corpus}`, `{adapter}`, `{cycle}`, `{base_model}` and the LoRA
/// settings (`{rank}`, `{alpha}`, `{lr}`, `{epochs}`) replaced.
pub fn finetune(ft: &Finetune, corpus: &Path, adapter: &Path, cycle: i64, base_model: &str) -> Result<(), String> {
    let args: Vec<String> = ft
        .command
        .iter()
        .map(|a| {
            a.replace("{corpus}", &corpus.display().to_string())
                .replace("{adapter}", &adapter.display().to_string())
                .replace("{cycle}", &cycle.to_string())
                .replace("{base_model}", base_model)
                .replace("{rank}", &ft.rank.to_string())
                .replace("{alpha}", &ft.alpha.to_string())
                .replace("{lr}", &ft.lr.to_string())
                .replace("{epochs}", &ft.epochs.to_string())
        })
        .collect();
    std::fs::create_dir_all(adapter).map_err(|e| format!("cannot create {}: {e}", adapter.display()))?;
    let status = std::process::Command::new(&args[0])
        .args(&args[1..])
        .status()
        .map_err(|e| format!("cannot run the fine-tune command `{}`: {e}", args.join(" ")))?;
    if !status.success() {
        return Err(format!("the fine-tune command `{}` failed ({status})", args.join(" ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: i64, parent: Option<i64>, dataset: &str, accuracy: Option<f64>) -> Candidate {
        Candidate {
            id,
            cycle: i64::from(parent.is_some()),
            slot: id,
            role: if parent.is_some() { "candidate" } else { "baseline" }.into(),
            status: "finished".into(),
            dataset: dataset.into(),
            baseline: "b".into(),
            parent_id: parent,
            generator: "mutate".into(),
            adapter: None,
            program: Some("net {\n  gap\n}\n".into()),
            diff: Some(format!("--- a/program.arch\n+++ b/program.arch\n@@ -1 +1 @@\n-{id}\n+{id}x\n")),
            prompt: Some(format!("prompt {id}")),
            attempts: 1,
            attempt_verdicts: vec!["ok".into()],
            front_verdict: "ok".into(),
            verdict: if accuracy.is_some() { "ok" } else { "diverged" }.into(),
            similarity: None,
            hash: None,
            params: None,
            macs: None,
            accuracy,
            reply_lines: None,
            reply_tokens: None,
            train_s: None,
            finished_at: None,
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
}
