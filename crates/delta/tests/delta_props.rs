//! Properties of the delta engine over arbitrary input: it never panics, every failure has a
//! verdict of the taxonomy, exact diffs apply exactly, and damage it claims to forgive is
//! forgiven without changing the result.

use nasc_delta::delta::{apply, apply_reply, extract, ApplyOptions, DeltaError, Limits, Tolerance};
use nasc_delta::Verdict;
use proptest::prelude::*;

const VERDICTS: [Verdict; 4] = [Verdict::NoDiff, Verdict::MalformedDiff, Verdict::DoesNotApply, Verdict::Ambiguous];

const BASES: [&str; 4] = [
    include_str!("corpus/bases/resnet18.arch"),
    include_str!("corpus/bases/mlp.arch"),
    include_str!("corpus/bases/vgg11_bn.arch"),
    include_str!("corpus/bases/mobilenetv2.arch"),
];

fn verdict_ok(e: &DeltaError) -> bool {
    // Display must not panic either, and must say something.
    VERDICTS.contains(&e.verdict()) && !e.to_string().is_empty()
}

/// Edits a program line by line, the way a model would: replace, insert, delete.
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
        (1usize..512).prop_map(|c| format!("  conv({c}, k=3, p=1)")),
        (1usize..8).prop_map(|k| format!("  maxpool({k})")),
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
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// Damage to a diff's text of the kinds models and transport do.
#[derive(Debug, Clone)]
enum Damage {
    DeleteByte(usize),
    InsertByte(usize, u8),
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize),
    ChangeDigit(usize, u8),
    Crlf,
    StripLeadingSpace(usize),
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::DeleteByte),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::InsertByte(i, b)),
        any::<usize>().prop_map(Damage::DeleteLine),
        any::<usize>().prop_map(Damage::DuplicateLine),
        any::<usize>().prop_map(Damage::SwapLines),
        (any::<usize>(), 0u8..10).prop_map(|(i, d)| Damage::ChangeDigit(i, d)),
        Just(Damage::Crlf),
        any::<usize>().prop_map(Damage::StripLeadingSpace),
        any::<usize>().prop_map(Damage::Truncate),
    ]
}

fn damaged(diff: &str, ds: &[Damage]) -> String {
    let mut bytes = diff.as_bytes().to_vec();
    for d in ds {
        let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        let n = lines.len().max(1);
        match d {
            Damage::DeleteByte(i) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes.remove(i);
                continue;
            }
            Damage::InsertByte(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, *b);
                continue;
            }
            Damage::Truncate(i) => {
                bytes.truncate(i % (bytes.len() + 1));
                continue;
            }
            Damage::ChangeDigit(i, d) => {
                let digits: Vec<usize> = (0..bytes.len()).filter(|&j| bytes[j].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    bytes[digits[i % digits.len()]] = b'0' + d;
                }
                continue;
            }
            Damage::Crlf => {
                bytes = String::from_utf8_lossy(&bytes).replace('\n', "\r\n").into_bytes();
                continue;
            }
            Damage::DeleteLine(i) if lines.len() > 1 => {
                lines.remove(i % n);
            }
            Damage::DuplicateLine(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Damage::SwapLines(i) if lines.len() > 1 => {
                let i = i % (n - 1);
                lines.swap(i, i + 1);
            }
            Damage::StripLeadingSpace(i) => {
                let l = &mut lines[i % n];
                if l.first() == Some(&b' ') {
                    l.remove(0);
                }
            }
            _ => {}
        }
        bytes = lines.join(&b'\n');
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A program whose lines are all different, so that every hunk has exactly one true place.
fn unique_program(n: usize) -> String {
    let mut s = String::from("arch unique\n\nnet {\n");
    for i in 0..n {
        s.push_str(&format!("  conv({}, k=3, p=1)\n", 100 + i));
    }
    s.push_str("  gap\n  linear(classes)\n}\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn extraction_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let reply = String::from_utf8_lossy(&bytes);
        if let Err(e) = extract(&reply, &Limits::default()) {
            prop_assert!(verdict_ok(&e));
        }
    }

    #[test]
    fn application_never_panics_on_random_text(
        base in "[ a-z(){}=,+\\-@\n\r\t]{0,300}",
        diff in "[ a-z0-9(){}=,+\\-@\n\r\t]{0,300}",
    ) {
        match apply(&base, &diff, ApplyOptions::default()) {
            Ok(_) => {}
            Err(e) => prop_assert!(verdict_ok(&e)),
        }
        match apply_reply(&base, &diff, ApplyOptions::default()) {
            Ok(_) => {}
            Err(e) => prop_assert!(verdict_ok(&e)),
        }
    }

    #[test]
    fn hunk_like_random_text_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                "@@ -[0-9]{1,3}(,[0-9]{1,2})? \\+[0-9]{1,3}(,[0-9]{1,2})? @@",
                "@@ [ .a-z]{0,6}@@",
                "[ +\\-][ ]{0,3}(relu|bn|gap|}|net \\{|conv\\(16, k=3\\))?",
                "(--- |\\+\\+\\+ )[a-z/]{0,8}",
                "\\\\ No newline at end of file",
                "",
            ],
            0..40,
        ),
        base in 0usize..4,
    ) {
        let diff = lines.join("\n");
        match apply(BASES[base], &diff, ApplyOptions::default()) {
            Ok(_) => {}
            Err(e) => prop_assert!(verdict_ok(&e)),
        }
    }

    #[test]
    fn exact_diffs_apply_strictly(base in 0usize..4, edits in proptest::collection::vec(edit(), 1..6)) {
        let base = BASES[base];
        let target = edited(base, &edits);
        prop_assume!(target != base);
        let diff = diffy::create_patch(base, &target).to_string();
        let a = apply(base, &diff, ApplyOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(a.text, target);
        prop_assert!(a.tolerances.is_empty(), "{:?}", a.tolerances);
    }

    #[test]
    fn damaged_real_diffs_get_a_result_or_a_verdict(
        base in 0usize..4,
        edits in proptest::collection::vec(edit(), 1..6),
        damage in proptest::collection::vec(damage(), 1..5),
        fenced in any::<bool>(),
    ) {
        let base = BASES[base];
        let target = edited(base, &edits);
        let diff = damaged(&diffy::create_patch(base, &target).to_string(), &damage);
        let reply = if fenced { format!("Here you go:\n```diff\n{diff}```\nDone.\n") } else { diff };
        match apply_reply(base, &reply, ApplyOptions::default()) {
            Ok(a) => prop_assert!(!a.text.is_empty() || target.is_empty()),
            Err(e) => prop_assert!(verdict_ok(&e)),
        }
    }

    #[test]
    fn drifted_numbers_on_unique_lines_give_the_same_result(
        n in 5usize..60,
        edits in proptest::collection::vec(edit(), 1..4),
        shift in -30i64..30,
    ) {
        let base = unique_program(n);
        let target = edited(&base, &edits);
        prop_assume!(target != base);
        let diff = diffy::create_patch(&base, &target).to_string();
        let shifted = shift_headers(&diff, shift);
        let a = apply(&base, &shifted, ApplyOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&a.text, &target);
        prop_assert!(a.tolerances.iter().all(|t| matches!(t, Tolerance::Drifted { .. })), "{:?}", a.tolerances);
    }

    #[test]
    fn whitespace_damage_on_unique_lines_gives_the_same_result(
        n in 5usize..60,
        edits in proptest::collection::vec(edit(), 1..4),
        pad in "[ \t]{0,4}",
    ) {
        let base = unique_program(n);
        let target = edited(&base, &edits);
        prop_assume!(target != base);
        let diff = diffy::create_patch(&base, &target).to_string();
        // Re-indent every context and removed line; the program's own spacing must survive.
        let damaged: String = diff
            .lines()
            .map(|l| match l.strip_prefix(' ') {
                Some(rest) => format!(" {pad}{}\n", rest.trim_start()),
                None => match l.strip_prefix('-').filter(|_| !l.starts_with("---")) {
                    Some(rest) => format!("-{pad}{}\n", rest.trim_start()),
                    None => format!("{l}\n"),
                },
            })
            .collect();
        let a = apply(&base, &damaged, ApplyOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&a.text, &target);
    }
}

/// Adds `by` to every start number in every `@@` header.
fn shift_headers(diff: &str, by: i64) -> String {
    diff.lines()
        .map(|l| {
            if !l.starts_with("@@ ") {
                return format!("{l}\n");
            }
            let shifted: Vec<String> = l
                .split(' ')
                .map(|tok| {
                    let Some(sign) = tok.chars().next().filter(|c| *c == '-' || *c == '+') else {
                        return tok.to_string();
                    };
                    let rest = &tok[1..];
                    let (start, count) = match rest.split_once(',') {
                        Some((s, c)) => (s, Some(c)),
                        None => (rest, None),
                    };
                    let Ok(start) = start.parse::<i64>() else {
                        return tok.to_string();
                    };
                    let start = (start + by).max(1);
                    match count {
                        Some(c) => format!("{sign}{start},{c}"),
                        None => format!("{sign}{start}"),
                    }
                })
                .collect();
            format!("{}\n", shifted.join(" "))
        })
        .collect()
}
