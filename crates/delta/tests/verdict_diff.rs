//! `diff` and `apply` are inverses on the zoo: for every ordered pair of zoo programs, the
//! canonical diff from one to the other applies strictly (no tolerance) and gives the other.

use nasc_delta::delta::{apply, apply_reply, unified, ApplyOptions};

#[path = "../../../tests/common/repo.rs"]
mod common;

/// The zoo (`tests/common`), which must be whole for these pairs to mean anything.
fn zoo() -> Vec<(String, String)> {
    let v = common::zoo();
    assert!(v.len() >= 17);
    v
}

#[test]
fn apply_of_diff_gives_the_other_program_for_every_pair_of_zoo_programs() {
    let zoo = zoo();
    let mut pairs = 0;
    for (na, a) in &zoo {
        // The zoo is canonical, so its canonical diff is the diff of its texts.
        assert_eq!(&nasc_lang::syntax::fmt::format_source(a).unwrap(), a, "{na} is not canonical");
        for (nb, b) in &zoo {
            let (diff, changed) = unified(a, b, &format!("a/{na}"), &format!("b/{nb}"));
            if na == nb {
                assert_eq!((diff.as_str(), changed), ("", 0));
                continue;
            }
            let applied = apply(a, &diff, ApplyOptions::default()).unwrap_or_else(|e| panic!("{na} -> {nb}: {e}"));
            assert_eq!(&applied.text, b, "{na} -> {nb}");
            assert!(applied.tolerances.is_empty(), "{na} -> {nb}: {:?}", applied.tolerances);
            assert_eq!(changed, diff.lines().filter(|l| l.starts_with(['+', '-'])).count() - 2);
            pairs += 1;
        }
    }
    assert_eq!(pairs, zoo.len() * (zoo.len() - 1));
}

#[test]
fn a_diff_fenced_in_a_reply_applies_like_the_bare_diff() {
    let zoo = zoo();
    let (a, b) = (&zoo[0].1, &zoo[1].1);
    let (diff, _) = unified(a, b, "a/x.arch", "b/x.arch");
    let reply = format!("I replaced the network.\n\n```diff\n{diff}```\n");
    assert_eq!(&apply_reply(a, &reply, ApplyOptions::default()).unwrap().text, b);
}

/// `unified` leaves lines common to both ends out of diffy's work; the diff must be the one
/// diffy makes of the whole texts.
#[test]
fn the_diff_is_diffys_diff_of_the_whole_texts() {
    let zoo = zoo();
    let mut cases: Vec<(String, String)> = Vec::new();
    for (_, a) in &zoo {
        for (_, b) in &zoo {
            cases.push((a.clone(), b.clone()));
        }
        // Small changes at the top, in the middle and at the end, and one without a final newline.
        let lines: Vec<&str> = a.lines().collect();
        for at in [0, 1, lines.len() / 2, lines.len() - 2, lines.len() - 1] {
            let mut l = lines.clone();
            l[at] = "  gelu";
            cases.push((a.clone(), l.join("\n") + "\n"));
            l.insert(at, "  bn");
            cases.push((a.clone(), l.join("\n")));
        }
    }
    for (a, b) in &cases {
        let (ours, _) = unified(a, b, "a/x.arch", "b/x.arch");
        let whole = if a == b {
            String::new()
        } else {
            diffy::DiffOptions::new()
                .set_original_filename("a/x.arch")
                .set_modified_filename("b/x.arch")
                .create_patch(a, b)
                .to_string()
        };
        assert_eq!(ours, whole);
        if a != b {
            assert_eq!(&apply(a, &ours, ApplyOptions::default()).unwrap().text, b);
        }
    }
}
