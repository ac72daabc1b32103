//! Properties of the front end over generated input: `fmt` is a fixed point that keeps
//! the meaning (`parse(fmt(x)) == parse(x)`), and nothing panics on any text at all.

use nasc_lang::check::{binding, check, check_source, Budget};
use nasc_lang::syntax::parse::{parse_fast, parse_with_pest};
use nasc_lang::syntax::{fmt, parse};
use proptest::prelude::*;

/// Layout noise that `fmt` must remove: spaces, tabs, blank lines.
fn space() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(" "), Just("  "), Just("\t")]
}

fn comment() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z ]{0,12}".prop_map(|t| format!("# {t}"))]
}

/// An argument expression: literals, names and arithmetic.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (1i64..300).prop_map(|v| v.to_string()),
        Just("c".to_string()),
        Just("classes".to_string()),
        (1u32..9).prop_map(|v| format!("0.{v}")),
    ];
    leaf.prop_recursive(2, 6, 2, |inner| {
        (inner.clone(), prop_oneof![Just("+"), Just("-"), Just("*"), Just("/")], inner, any::<bool>())
            .prop_map(|(a, op, b, paren)| if paren { format!("({a} {op} {b})") } else { format!("{a} {op} {b}") })
    })
}

/// A call of an operation with arguments spelt in one of several equivalent ways.
fn call() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("bn".to_string()),
        Just("bn()".to_string()),
        Just("relu".to_string()),
        Just("gelu".to_string()),
        Just("gap".to_string()),
        Just("flatten".to_string()),
        (expr(), 1u8..8, 0u8..3, any::<bool>(), any::<bool>()).prop_map(|(c, k, p, kw, explicit)| {
            let c = if kw { format!("c={c}") } else { c };
            let s = if explicit { ", s=1" } else { "" };
            format!("conv({c}, k={k}{s}, p={p})")
        }),
        (expr(), any::<bool>()).prop_map(|(n, b)| if b {
            format!("linear({n}, bias=false)")
        } else {
            format!("linear(n={n})")
        }),
        (1u8..4, any::<bool>()).prop_map(|(k, same)| if same {
            format!("maxpool(k={k}, s={k})")
        } else {
            format!("maxpool({k})")
        }),
        (1u8..9).prop_map(|p| format!("dropout(p=0.{p})")),
        Just("leaky_relu(0.01)".to_string()),
        Just("add(x)".to_string()),
        Just("concat(x |> conv(8, k=1) |> bn)".to_string()),
        Just("mul(x |> gap |> linear(4) |> sigmoid)".to_string()),
    ]
}

fn pipeline() -> impl Strategy<Value = String> {
    (prop::collection::vec(call(), 1..4), space()).prop_map(|(calls, sp)| calls.join(&format!("{sp}|>{sp}")))
}

fn stmt() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => pipeline(),
        1 => pipeline().prop_map(|p| format!("y = {p}")),
        1 => Just("x = in".to_string()),
    ]
}

fn lines(depth: usize) -> impl Strategy<Value = Vec<String>> {
    let line = (space(), stmt(), space(), comment(), any::<bool>(), comment()).prop_map(
        move |(sp, s, sp2, trailing, blank, leading)| {
            let mut out = String::new();
            if blank {
                out.push('\n');
            }
            if !leading.is_empty() {
                out.push_str(&format!("{}{leading}\n", "  ".repeat(depth)));
            }
            let t = if trailing.is_empty() { String::new() } else { format!("{sp2} {trailing}") };
            out.push_str(&format!("{sp}{s}{t}"));
            out
        },
    );
    prop::collection::vec(line, 1..8)
}

fn program() -> impl Strategy<Value = String> {
    (comment(), any::<bool>(), lines(1), lines(1), prop_oneof![Just(0u8), 1u8..4], lines(2), any::<bool>()).prop_map(
        |(head, arch, block_lines, net_lines, rep, rep_lines, block_first)| {
            let mut out = String::new();
            if !head.is_empty() {
                out.push_str(&head);
                out.push('\n');
            }
            if arch {
                out.push_str("arch generated\n\n");
            }
            let block = format!("block unit(c, s=1) {{\n{}\n}}\n", block_lines.join("\n"));
            let mut net = String::from("net {\n");
            net.push_str(&net_lines.join("\n"));
            net.push('\n');
            if rep > 0 {
                net.push_str(&format!("  repeat({rep}) {{\n{}\n  }}\n", rep_lines.join("\n")));
            }
            net.push_str("  unit(16, s=2)\n}\n");
            if block_first {
                out.push_str(&block);
                out.push('\n');
                out.push_str(&net);
            } else {
                out.push_str(&net);
                out.push_str("\n\n");
                out.push_str(&block);
            }
            out
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The fast path builds exactly pest's tree (spans and comments included)
    /// whenever it accepts a text, and accepts every generated program.
    #[test]
    fn fast_path_equals_pest_on_programs(src in program()) {
        let fast = parse_fast(&src);
        prop_assert!(fast.is_some(), "the fast path gave up on a well-formed program:\n{}", src);
        same_tree(&src, fast)?;
    }

    #[test]
    fn fast_path_equals_pest_on_random_text(src in "[a-z0-9(){}=|>#,.\\- \n\t+*/]{0,200}") {
        same_tree(&src, parse_fast(&src))?;
    }

    /// `fmt` keeps the meaning and is a fixed point.
    #[test]
    fn fmt_round_trips(src in program()) {
        let tree = parse(&src).map_err(|d| TestCaseError::fail(format!("generated program does not parse: {}\n{src}", d.message)))?;
        let once = fmt::print(&tree);
        let reparsed = parse(&once).map_err(|d| TestCaseError::fail(format!("fmt output does not parse: {}\n{once}", d.message)))?;
        prop_assert_eq!(&reparsed, &tree, "parse(fmt(x)) != parse(x)\n--- source\n{}\n--- formatted\n{}", src, once);
        let twice = fmt::print(&reparsed);
        prop_assert_eq!(&twice, &once, "fmt is not idempotent");
        // Comments survive formatting.
        let count = |s: &str| s.matches('#').count();
        prop_assert_eq!(count(&once), count(&src));
    }

    /// Any text at all: the parser and checker answer with a result or a
    /// diagnostic, never a panic.
    #[test]
    fn no_panic_on_random_text(src in "\\PC{0,400}") {
        let _ = check_source(&src, binding::dataset("cifar10").unwrap(), &Budget::default());
    }

    #[test]
    fn no_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let src = String::from_utf8_lossy(&bytes);
        let _ = check_source(&src, binding::dataset("mnist").unwrap(), &Budget::default());
    }

    /// Random edits of real programs: the kind of damage a language model does.
    #[test]
    fn no_panic_on_mutated_zoo_programs(
        model in 0usize..64,
        edits in prop::collection::vec((0u8..7, any::<prop::sample::Index>(), any::<prop::sample::Index>(), "[a-z0-9(),=|>#{} ]{0,6}"), 1..6),
        dataset in 0usize..7,
    ) {
        let zoo = zoo_sources();
        let mut lines: Vec<String> = zoo[model % zoo.len()].lines().map(str::to_string).collect();
        for (kind, a, b, text) in edits {
            if lines.is_empty() { break; }
            let i = a.index(lines.len());
            let j = b.index(lines.len());
            match kind {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(j, l); }
                2 => lines.swap(i, j),
                3 => {
                    // Replace every number on a line with another.
                    let n = (j % 7) as i64 - 1;
                    lines[i] = lines[i].split(|c: char| c.is_ascii_digit()).collect::<Vec<_>>().join(&n.to_string());
                }
                4 => {
                    let at = b.index(lines[i].len() + 1);
                    let at = (0..=at).rev().find(|k| lines[i].is_char_boundary(*k)).unwrap_or(0);
                    lines[i].insert_str(at, &text);
                }
                5 => lines[i] = text,
                _ => lines.truncate(i),
            }
        }
        let src = lines.join("\n");
        same_tree(&src, parse_fast(&src))?;
        let b = binding::DATASETS[dataset].1;
        if let Ok(tree) = parse(&src) {
            let _ = check(&tree, b, &Budget::default());
            // What parses also formats to something that parses the same.
            let formatted = fmt::print(&tree);
            prop_assert_eq!(parse(&formatted).ok(), Some(tree));
        }
    }
}

/// Where the fast path accepts a text, pest must accept it too, with the same
/// tree down to every span (compared through `Debug`, which prints spans).
fn same_tree(src: &str, fast: Option<nasc_lang::syntax::ast::Program>) -> Result<(), TestCaseError> {
    let Some(mut fast) = fast else { return Ok(()) };
    let mut pest = parse_with_pest(src).map_err(|d| {
        TestCaseError::fail(format!("the fast path accepted what pest rejects ({}):\n{src}", d.message))
    })?;
    nasc_lang::syntax::canon::canonicalize(&mut fast);
    nasc_lang::syntax::canon::canonicalize(&mut pest);
    prop_assert_eq!(format!("{fast:?}"), format!("{pest:?}"), "trees differ for:\n{}", src);
    Ok(())
}

#[test]
fn the_fast_path_reads_every_zoo_program() {
    for src in zoo_sources() {
        let fast = parse_fast(src).expect("the fast path reads canonical programs");
        assert_eq!(format!("{fast:?}"), format!("{:?}", parse_with_pest(src).unwrap()));
    }
}

#[path = "../../../tests/common/repo.rs"]
mod common;

fn zoo_sources() -> &'static [String] {
    static ZOO: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ZOO.get_or_init(|| common::zoo().into_iter().map(|(_, src)| src).collect())
}

#[test]
fn pathological_programs_get_a_verdict_quickly() {
    let b = binding::dataset("cifar10").unwrap();
    // Ten thousand lines.
    let mut src = String::from("net {\n");
    for _ in 0..10_000 {
        src.push_str("  relu\n");
    }
    src.push_str("  gap\n  linear(classes)\n}\n");
    let c = check_source(&src, b, &Budget::default()).expect("a long program is still a program");
    assert_eq!(c.graph.nodes.len(), 10_003);
    // A repeat that would expand forever is refused, not run.
    let src = "net {\n  repeat(1000000000) {\n    relu\n  }\n  gap\n  linear(classes)\n}\n";
    let d = check_source(src, b, &Budget::default()).unwrap_err();
    assert_eq!(d[0].code.as_str(), "over_budget");
    let src = "block a() {\n  repeat(1000) {\n    b\n  }\n}\nblock b() {\n  repeat(1000) {\n    relu\n  }\n}\nnet {\n  a\n  gap\n  linear(classes)\n}\n";
    let d = check_source(src, b, &Budget::default()).unwrap_err();
    assert_eq!(d[0].code.as_str(), "over_budget");
    // Deep nesting of parentheses.
    let src = format!("net {{\n  conv({}1{}, k=3)\n  gap\n  linear(classes)\n}}\n", "(".repeat(5000), ")".repeat(5000));
    let _ = check_source(&src, b, &Budget::default());
    // Long runs of operators, which nest as deeply as brackets: a syntax error at the first
    // operator past the limit, on its line.
    for run in ["1+".repeat(20_000), "-".repeat(20_000), "2*".repeat(300)] {
        let src = format!("net {{\n  linear({run}1)\n  linear(classes)\n}}\n");
        let d = check_source(&src, b, &Budget::default()).unwrap_err();
        assert_eq!(d[0].code.as_str(), "syntax", "{}", d[0].message);
        assert!(d[0].message.contains("more than 256 arithmetic operators"), "{}", d[0].message);
        assert_eq!(src[..d[0].span.start as usize].lines().count(), 2, "the error is on the expression's line");
    }
    // Counts that overflow 64 bits are over any budget, and said to overflow.
    let src = "net {\n  flatten\n  repeat(70000) {\n    linear(16777216, bias=false)\n  }\n  linear(classes)\n}\n";
    let max = Budget { max_params: u64::MAX, max_macs: u64::MAX, max_activation_bytes: u64::MAX };
    let d = check_source(src, binding::dataset("mnist").unwrap(), &max).unwrap_err();
    assert_eq!(d[0].code.as_str(), "over_budget", "{}", d[0].message);
    assert!(d[0].message.contains("(the count overflows)"), "{}", d[0].message);
    // A line of many operators within the limit checks, and a comment's do not count.
    let sum = format!("{}1", "1+".repeat(200));
    let src = format!("# {}\nnet {{\n  flatten\n  linear({sum})\n  linear(classes)\n}}\n", "-".repeat(1000));
    check_source(&src, b, &Budget::default()).expect("200 operators and a long comment");
}
