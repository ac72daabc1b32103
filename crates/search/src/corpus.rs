//! The format corpus: what a good reply looks like, before the first cycle. Chat JSONL in the
//! search's own prompt format, one example per (baseline, dataset, checked `mutate` edit): the
//! prompt of the parent and the canonical diff of a valid child. It trains nothing and reads no data.
//!
//! A small model must first learn the shape of a diff in this language; the cycles' curated pairs
//! then teach it which diffs improve accuracy. Every example is judged `ok` by the same pipeline
//! that judges the search's replies, edits are drawn round-robin over the mutation kinds so that
//! no kind dominates, and a child seen before (same structure) is dropped.

use crate::curate::Message;
use crate::generate::render;
use crate::mutate;
use nasc_delta::delta::{judge, Base, Options};
use nasc_delta::Verdict;
use nasc_lang::check::binding;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// One example: the prompt, the diff, and what it was made from.
#[derive(Clone, Debug, Serialize)]
pub struct Example {
    pub messages: Vec<Message>,
    pub dataset: String,
    pub baseline: String,
    /// The mutation kinds of the edit, in order.
    pub mutations: Vec<&'static str>,
}

/// What to build from.
pub struct Spec<'a> {
    /// (name, source) of each baseline program.
    pub baselines: &'a [(String, String)],
    pub datasets: &'a [String],
    /// Examples per (baseline, dataset) at most.
    pub per_program: usize,
    pub seed: u64,
    pub template: &'a str,
    pub goal: &'a str,
    /// Each proposal makes 1 to this many mutations.
    pub max_mutations: usize,
}

/// The corpus, and a count of the proposals left out by reason.
pub fn build(spec: &Spec) -> Result<(Vec<Example>, BTreeMap<String, usize>), String> {
    let mut out = Vec::new();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    for dataset in spec.datasets {
        let b = binding::dataset(dataset).ok_or_else(|| format!("unknown dataset {dataset}"))?;
        let opts = Options::new(b);
        for (name, src) in spec.baselines {
            let base = Base::new(src, &opts);
            if base.hash.is_none() {
                *dropped.entry(format!("baseline does not check on {dataset}")).or_default() += 1;
                continue;
            }
            let mut seen = HashSet::new();
            // Proposals by kind of their first mutation, drawn round-robin over the kinds.
            let mut by_kind: BTreeMap<&'static str, Vec<mutate::Proposal>> = BTreeMap::new();
            for i in 0..spec.per_program as u64 * 6 {
                let seed = spec.seed ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ hash(name) ^ hash(dataset);
                let Some(p) = mutate::propose(&base.canonical, seed, spec.max_mutations) else { continue };
                let j = judge(&base, &reply_of(&p), None, &opts);
                if j.verdict != Verdict::Ok {
                    *dropped.entry(j.verdict.to_string()).or_default() += 1;
                    continue;
                }
                if !seen.insert(j.hash.clone()) {
                    *dropped.entry("duplicate child".into()).or_default() += 1;
                    continue;
                }
                // The proposal's own diff is the example's: canonical, with the headers the prompt asks for.
                by_kind.entry(p.mutations[0].name()).or_default().push(p);
            }
            let prompt = render(spec.template, &base.canonical, dataset, None, spec.goal);
            let mut taken = 0;
            let mut round = 0;
            while taken < spec.per_program && by_kind.values().any(|v| v.len() > round) {
                for list in by_kind.values() {
                    if taken == spec.per_program {
                        break;
                    }
                    if let Some(p) = list.get(round) {
                        out.push(Example {
                            messages: vec![
                                Message { role: "user", content: prompt.clone() },
                                Message { role: "assistant", content: reply_of(p) },
                            ],
                            dataset: dataset.clone(),
                            baseline: name.clone(),
                            mutations: p.mutations.iter().map(|m| m.name()).collect(),
                        });
                        taken += 1;
                    }
                }
                round += 1;
            }
        }
    }
    Ok((out, dropped))
}

/// The reply an example teaches: the proposal's diff in the fence the prompt asks for.
fn reply_of(p: &mutate::Proposal) -> String {
    format!("```diff\n{}```", p.diff)
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zoo() -> Vec<(String, String)> {
        ["lenet5", "resnet18", "mobilenetv2"]
            .iter()
            .map(|n| {
                let path = format!("{}/../../zoo/{n}.arch", env!("CARGO_MANIFEST_DIR"));
                (n.to_string(), std::fs::read_to_string(path).unwrap())
            })
            .collect()
    }

    #[test]
    fn every_example_is_a_valid_diff_of_its_baseline_in_the_search_prompt_format() {
        let baselines = zoo();
        let datasets = vec!["fashion-mnist".to_string()];
        let spec = Spec {
            baselines: &baselines,
            datasets: &datasets,
            per_program: 6,
            seed: 1,
            template: crate::generate::DEFAULT_TEMPLATE,
            goal: "Raise the accuracy.",
            max_mutations: 2,
        };
        let (examples, _) = build(&spec).unwrap();
        assert_eq!(examples.len(), 18, "six per baseline");
        let opts = Options::new(binding::dataset("fashion-mnist").unwrap());
        let mut kinds = HashSet::new();
        let mut replies = HashSet::new();
        for e in &examples {
            let src = &baselines.iter().find(|(n, _)| *n == e.baseline).unwrap().1;
            let base = Base::new(src, &opts);
            assert!(e.messages[0].content.contains("fashion-mnist"));
            assert!(e.messages[0].content.contains(" | net {"), "the program, numbered, is in the prompt");
            assert!(e.messages[1].content.starts_with("```diff\n--- a/program.arch\n+++ b/program.arch\n@@ "));
            let j = judge(&base, &e.messages[1].content, None, &opts);
            assert_eq!(j.verdict, Verdict::Ok, "{}", e.messages[1].content);
            assert!(j.tolerances.is_empty(), "a canonical diff applies strictly: {:?}", j.tolerances);
            kinds.insert(e.mutations[0]);
            assert!(replies.insert((e.baseline.clone(), e.messages[1].content.clone())), "duplicate example");
        }
        assert!(kinds.len() >= 4, "a mix of edit kinds: {kinds:?}");
        // The same seed gives the same corpus.
        let (again, _) = build(&spec).unwrap();
        let texts = |v: &[Example]| v.iter().map(|e| e.messages[1].content.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&examples), texts(&again));
    }
}
