//! Properties of the verdict pipeline over arbitrary replies: it never panics, every verdict is
//! one of the taxonomy and explains itself, and an `ok` is consistent (its program checks, its
//! diff takes the base to it, its novelty is judged).

use nasc_delta::delta::{judge, unified, Base, Judgement, Options, Verdict};
use nasc_delta::novelty::{fingerprint, Archive};
use nasc_lang::check::{binding, check_source, Budget};
use proptest::prelude::*;

const BASES: [&str; 3] = [
    include_str!("../../../zoo/resnet18.arch"),
    include_str!("../../../zoo/lenet5.arch"),
    include_str!("../../../zoo/mobilenetv2.arch"),
];

fn opts() -> Options {
    Options::new(binding::dataset("cifar10").unwrap())
}

fn archive() -> Archive {
    let mut a = Archive::in_memory(binding::dataset("cifar10").unwrap());
    for (i, b) in BASES.iter().enumerate() {
        let c = check_source(b, a.binding(), &Budget::default()).unwrap();
        a.add(&fingerprint(&c.graph), &format!("base-{i}")).unwrap();
    }
    a
}

/// Judges and checks what every judgement must satisfy.
fn consistent(base: &Base, reply: &str, archive: Option<&Archive>) -> Result<Judgement, TestCaseError> {
    let o = opts();
    let j = judge(base, reply, archive, &o);
    prop_assert!(Verdict::FRONT.contains(&j.verdict));
    prop_assert!(serde_json::to_string(&j).is_ok());
    if j.verdict != Verdict::Ok {
        prop_assert!(!j.message.is_empty(), "{} without a message", j.verdict);
    }
    match j.verdict {
        Verdict::NoDiff | Verdict::MalformedDiff | Verdict::DoesNotApply | Verdict::Ambiguous => {
            prop_assert!(j.delta_error.is_some() && j.candidate.is_none());
        }
        Verdict::ParseError | Verdict::ShapeError | Verdict::OverBudget => {
            prop_assert!(!j.diagnostics.is_empty());
            prop_assert_eq!(j.diagnostics[0]["verdict"].as_str(), Some(j.verdict.as_str()));
        }
        Verdict::Duplicate | Verdict::NearDuplicate | Verdict::Ok => {
            let program = j.program.as_deref().unwrap();
            prop_assert!(check_source(program, o.binding, &o.budget).is_ok());
            let diff = j.diff.as_deref().unwrap();
            if diff.is_empty() {
                prop_assert_eq!(program, base.canonical.as_str());
            } else {
                let applied = nasc_delta::delta::apply(&base.canonical, diff, Default::default()).map(|a| a.text).ok();
                prop_assert_eq!(applied.as_deref(), Some(program));
            }
            prop_assert!(j.hash.is_some() && j.params.is_some() && j.diff_lines.is_some());
            prop_assert_eq!(archive.is_some(), j.novelty.is_some());
        }
        Verdict::Diverged | Verdict::Oom | Verdict::Timeout | Verdict::Crashed => {
            prop_assert!(false, "the front half gave the training verdict {}", j.verdict);
        }
        Verdict::GeneratorError => {
            prop_assert!(false, "judging a reply gave generator_error, which only a missing reply has");
        }
    }
    Ok(j)
}

/// Line edits of the kinds a model makes.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, String),
    Insert(usize, String),
    Delete(usize),
}

fn new_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("  relu".to_string()),
        Just("  gelu".to_string()),
        Just("  dropout(0.1)".to_string()),
        Just("  bn".to_string()),
        Just("  x = in".to_string()),
        Just("  add(x)".to_string()),
        Just("  gap".to_string()),
        Just("  }".to_string()),
        (1usize..600).prop_map(|c| format!("  conv({c}, k=3, p=1)")),
        (1usize..5).prop_map(|s| format!("  maxpool(k=2, s={s})")),
        "[ a-z(){}=,|>0-9]{0,24}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), new_line()).prop_map(|(i, l)| Edit::Replace(i, l)),
        (any::<usize>(), new_line()).prop_map(|(i, l)| Edit::Insert(i, l)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn edited(base: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Replace(i, l) if !lines.is_empty() => lines[i % n] = l.clone(),
            Edit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
            Edit::Delete(i) if lines.len() > 1 => {
                lines.remove(i % n);
            }
            _ => {}
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_pipeline_never_panics_on_random_bytes(
        which in 0usize..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let base = Base::new(BASES[which], &opts());
        let reply = String::from_utf8_lossy(&bytes);
        consistent(&base, &reply, None)?;
    }

    #[test]
    fn the_pipeline_never_panics_on_diff_like_text(
        which in 0usize..3,
        lines in proptest::collection::vec(
            prop_oneof![
                "@@ -[0-9]{1,3}(,[0-9]{1,2})? \\+[0-9]{1,3}(,[0-9]{1,2})? @@",
                "[ +\\-] {0,3}(relu|bn|gap|}|net \\{|conv\\(64, k=3, p=1, bias=false\\)|basic\\(64\\)|x = in|add\\(x\\))?",
                "(--- |\\+\\+\\+ )[a-z/]{0,8}",
                "```(diff)?",
                "",
            ],
            0..40,
        ),
    ) {
        let base = Base::new(BASES[which], &opts());
        consistent(&base, &lines.join("\n"), None)?;
    }

    /// Real diffs of randomly edited programs: these reach the parser, the checker and the
    /// archive, and whatever they produce is judged consistently.
    #[test]
    fn edited_programs_get_consistent_verdicts(
        which in 0usize..3,
        edits in proptest::collection::vec(edit(), 1..4),
        fence in any::<bool>(),
        whole in any::<bool>(),
    ) {
        let o = opts();
        let base = Base::new(BASES[which], &o);
        let target = edited(BASES[which], &edits);
        let reply = if whole {
            format!("```\n{target}```\n")
        } else {
            let (diff, _) = unified(BASES[which], &target, "a/m.arch", "b/m.arch");
            if fence { format!("Try this:\n```diff\n{diff}```\n") } else { diff }
        };
        let archive = archive();
        let j = consistent(&base, &reply, Some(&archive))?;
        // A program that checks is never lost to a delta verdict when the diff is exact.
        if !whole && target != BASES[which] && check_source(&target, o.binding, &o.budget).is_ok() {
            prop_assert!(
                matches!(j.verdict, Verdict::Ok | Verdict::Duplicate | Verdict::NearDuplicate),
                "{}: {}", j.verdict, j.message
            );
        }
    }

    /// The diff skips lines common to both ends for speed; it must still be diffy's diff of
    /// the whole texts, and apply.
    #[test]
    fn the_canonical_diff_is_diffys_whole_text_diff(
        which in 0usize..3,
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let a = BASES[which];
        let b = edited(a, &edits);
        let (ours, _) = unified(a, &b, "a/m.arch", "b/m.arch");
        let whole = if a == b {
            String::new()
        } else {
            diffy::DiffOptions::new().set_original_filename("a/m.arch").set_modified_filename("b/m.arch").create_patch(a, &b).to_string()
        };
        prop_assert_eq!(&ours, &whole);
    }
}
