//! What "the same network" and "a similar network" mean: programs that differ by names,
//! formatting, comments, block factoring, statement order or dead code are exact duplicates;
//! a one-line change is similar; the zoo's families are far apart; hashes never change.

use nasc_delta::novelty::{self, fingerprint, similarity, structure, Fingerprint};
use nasc_lang::check::{binding, check_source, Binding, Budget};

const RESNET18: &str = include_str!("../../../zoo/resnet18.arch");

fn cifar() -> Binding {
    binding::dataset("cifar10").unwrap()
}

fn fp_under(src: &str, b: Binding) -> Fingerprint {
    let checked = check_source(src, b, &Budget::default()).unwrap_or_else(|d| panic!("{src}\n{d:#?}"));
    fingerprint(&checked.graph)
}

fn fp(src: &str) -> Fingerprint {
    fp_under(src, cifar())
}

fn same(a: &str, b: &str) {
    let (fa, fb) = (fp(a), fp(b));
    assert_eq!(fa.hash, fb.hash, "expected one network:\n{a}\n---\n{b}");
    assert_eq!(fa.signature, fb.signature);
    assert_eq!(similarity(&fa, &fb), 1.0);
}

fn different(a: &str, b: &str) {
    assert_ne!(fp(a).hash, fp(b).hash, "expected two networks:\n{a}\n---\n{b}");
}

#[test]
fn renamed_values_blocks_and_arch_are_duplicates() {
    let renamed = RESNET18
        .replace("arch resnet18", "arch my_resnet")
        .replace("x = in", "shortcut = in")
        .replace("add(x", "add(shortcut")
        .replace("basic", "plain_block")
        .replace("down", "reduce");
    assert_ne!(renamed, RESNET18);
    same(RESNET18, &renamed);
}

#[test]
fn reformatted_and_uncommented_programs_are_duplicates() {
    let reformatted: String = RESNET18
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            let l = l.replace("k=3, p=1", "p = 1,   k = 3").replace("  ", "\t");
            format!("{l}   # a comment\n")
        })
        .collect::<String>()
        .replace("arch resnet18   # a comment", "arch resnet18")
        .replace("conv(c, k=1, s=2, bias=false)", "conv(c, k=1, s=2, p=0, d=1, g=1, bias=false)");
    same(RESNET18, &reformatted);
}

#[test]
fn block_factoring_repeat_and_pipelines_are_duplicates() {
    let factored = "\
block cbr(c, s=1) {
  conv(c, k=3, s=s, p=1, bias=false)
  bn
  relu
}
block stage(c) {
  cbr(c, s=2)
  cbr(c)
}
net {
  cbr(16)
  stage(32)
  stage(64)
  gap
  linear(classes)
}
";
    let repeated = "\
block cbr(c, s=1) {
  conv(c, k=3, s=s, p=1, bias=false)
  bn
  relu
}
net {
  cbr(16)
  cbr(32, s=2)
  repeat(1) {
    cbr(32)
  }
  cbr(64, s=2)
  cbr(64)
  gap
  linear(classes)
}
";
    let inlined = "\
net {
  conv(16, k=3, p=1, bias=false) |> bn |> relu
  conv(32, k=3, s=2, p=1, bias=false)
  bn
  relu
  conv(32, k=3, p=1, bias=false) |> bn
  relu
  conv(64, k=3, s=2, p=1, bias=false)
  bn |> relu
  conv(64, k=3, p=1, bias=false)
  bn
  relu
  gap
  linear(classes)
}
";
    same(factored, inlined);
    same(repeated, inlined);
}

const BRANCHES: &str = "\
net {
  conv(16, k=3, p=1)
  x = relu
  a = x |> conv(16, k=3, p=1)
  b = x |> conv(16, k=1)
  a |> add(b)
  gap
  linear(classes)
}
";

#[test]
fn independent_branches_in_either_order_are_duplicates() {
    let swapped = "\
net {
  conv(16, k=3, p=1)
  x = relu
  b = x |> conv(16, k=1)
  a = x |> conv(16, k=3, p=1)
  a |> add(b)
  gap
  linear(classes)
}
";
    same(BRANCHES, swapped);
}

#[test]
fn operands_of_add_and_mul_commute_but_concat_does_not() {
    same(BRANCHES, &BRANCHES.replace("a |> add(b)", "b |> add(a)"));
    same(&BRANCHES.replace("a |> add(b)", "a |> mul(b)"), &BRANCHES.replace("a |> add(b)", "b |> mul(a)"));
    different(&BRANCHES.replace("a |> add(b)", "a |> concat(b)"), &BRANCHES.replace("a |> add(b)", "b |> concat(a)"));
    different(BRANCHES, &BRANCHES.replace("a |> add(b)", "a |> mul(b)"));
}

#[test]
fn dead_operations_and_identity_are_not_part_of_the_network() {
    let plain = "\
net {
  conv(16, k=3, p=1)
  relu
  gap
  linear(classes)
}
";
    let dead = "\
net {
  conv(16, k=3, p=1)
  x = relu
  conv(8, k=1)
  bn
  x |> gap
  identity
  linear(classes)
}
";
    same(plain, dead);
}

#[test]
fn a_changed_operation_or_wiring_is_another_network() {
    let base = RESNET18;
    different(base, &base.replace("  gap\n", "  gap\n  dropout(0.2)\n"));
    different(base, &base.replacen("conv(64, k=3, p=1, bias=false)", "conv(64, k=3, p=1)", 1));
    // The same operations, wired differently: the projection shortcut from the block's
    // input versus from the residual branch's first activation.
    let a = "\
net {
  conv(16, k=3, p=1)
  x = relu
  conv(16, k=3, p=1)
  y = relu
  conv(16, k=3, p=1)
  add(x)
  gap
  linear(classes)
}
";
    different(a, &a.replace("add(x)", "add(y)"));
}

#[test]
fn the_hash_depends_on_the_binding() {
    let mnist = binding::dataset("mnist").unwrap();
    assert_ne!(fp_under(RESNET18, cifar()).hash, fp_under(RESNET18, mnist).hash);
    // CIFAR-10 and SVHN bind alike, so the network is the same.
    assert_eq!(fp_under(RESNET18, cifar()).hash, fp_under(RESNET18, binding::dataset("svhn").unwrap()).hash);
}

/// Hashes and signatures are stored in archives: a change to either must be deliberate (and
/// bump `FORM_VERSION`).
#[test]
fn hashes_and_signatures_are_stable() {
    let f = fp(RESNET18);
    assert_eq!(novelty::FORM_VERSION, 1);
    assert_eq!(f.hash.hex(), "1bd813973e8851cdcdb7f9fe713a5341");
    assert_eq!(f.operations, 68);
    let words = f.signature.as_words();
    let folded = words.iter().fold(0u64, |h, &w| h.wrapping_mul(31).wrapping_add(u64::from(w)));
    insta::assert_snapshot!(format!("{:?} … {folded}", &words[..8]), @"[801, 882, 1585, 992, 1318, 19, 437, 2037] … 18088555629094697888");
}

#[test]
fn the_structural_form_is_readable() {
    let src = "\
net {
  conv(8, k=3, p=1)
  x = relu
  y = x |> identity
  y |> add(x)
  gap
  linear(classes)
}
";
    let checked = check_source(src, cifar(), &Budget::default()).unwrap();
    insta::assert_snapshot!(structure(&checked.graph).text(&checked.graph), @r"
    %0 = in [3,32,32]
    %1 = conv(8, k=3, p=1)(%0)
    %2 = relu(%1)
    %3 = add(%2, %2)
    %4 = gap(%3)
    %5 = linear(10)(%4)
    ");
}

const ZOO: &[(&str, &str)] = &[
    ("alexnet", include_str!("../../../zoo/alexnet.arch")),
    ("densenet_bc100", include_str!("../../../zoo/densenet_bc100.arch")),
    ("efficientnet_b0", include_str!("../../../zoo/efficientnet_b0.arch")),
    ("googlenet", include_str!("../../../zoo/googlenet.arch")),
    ("lenet5", include_str!("../../../zoo/lenet5.arch")),
    ("mlp", include_str!("../../../zoo/mlp.arch")),
    ("mobilenetv2", include_str!("../../../zoo/mobilenetv2.arch")),
    ("preact_resnet18", include_str!("../../../zoo/preact_resnet18.arch")),
    ("resnet18", include_str!("../../../zoo/resnet18.arch")),
    ("resnet34", include_str!("../../../zoo/resnet34.arch")),
    ("se_resnet18", include_str!("../../../zoo/se_resnet18.arch")),
    ("shufflenetv2", include_str!("../../../zoo/shufflenetv2.arch")),
    ("squeezenet1_1", include_str!("../../../zoo/squeezenet1_1.arch")),
    ("vgg11_bn", include_str!("../../../zoo/vgg11_bn.arch")),
    ("vgg16_bn", include_str!("../../../zoo/vgg16_bn.arch")),
    ("vit_tiny", include_str!("../../../zoo/vit_tiny.arch")),
    ("wrn16_4", include_str!("../../../zoo/wrn16_4.arch")),
];

fn family(name: &str) -> &str {
    match name {
        "resnet18" | "resnet34" | "preact_resnet18" | "se_resnet18" | "wrn16_4" => "resnet",
        "vgg11_bn" | "vgg16_bn" => "vgg",
        other => other,
    }
}

#[test]
fn distinct_zoo_families_are_far_apart_and_every_zoo_network_is_new_to_the_others() {
    let fps: Vec<Fingerprint> = ZOO.iter().map(|(_, s)| fp(s)).collect();
    for i in 0..ZOO.len() {
        for j in i + 1..ZOO.len() {
            let s = similarity(&fps[i], &fps[j]);
            let (a, b) = (ZOO[i].0, ZOO[j].0);
            assert!(s < 0.75, "{a} and {b}: {s}");
            if family(a) != family(b) {
                assert!(s < 0.2, "{a} and {b} are different families, yet {s} alike");
            }
        }
    }
}

#[test]
fn a_one_line_change_is_near_at_a_lenient_threshold_and_new_at_a_strict_one() {
    let base = fp(RESNET18);
    // The stem's activation: one operation of 68.
    let changed = fp(&RESNET18.replacen("  bn\n  relu\n  basic(64)", "  bn\n  gelu\n  basic(64)", 1));
    let s = similarity(&base, &changed);
    assert!((0.8..0.95).contains(&s), "{s}");
    let mut archive = novelty::Archive::in_memory(cifar());
    archive.add(&base, "resnet18").unwrap();
    assert_eq!(archive.judge(&changed, 0.8).verdict, novelty::NoveltyVerdict::NearDuplicate);
    assert_eq!(archive.judge(&changed, 0.95).verdict, novelty::NoveltyVerdict::New);
    assert_eq!(archive.judge(&changed, novelty::DEFAULT_THRESHOLD).verdict, novelty::NoveltyVerdict::New);
}

#[test]
fn similarity_falls_with_the_size_of_the_change() {
    let base = fp(RESNET18);
    let sim = |src: String| similarity(&base, &fp(&src));
    let top_level = sim(RESNET18.replace("  gap\n", "  gap\n  dropout(0.2)\n"));
    let stage = sim(RESNET18.replace("  basic(256)\n", ""));
    let in_block = sim(RESNET18.replacen("  bn\n  relu\n  conv(c, k=3, p=1", "  bn\n  gelu\n  conv(c, k=3, p=1", 1));
    let stride = sim(RESNET18.replace(
        "conv(64, k=3, p=1, bias=false)\n  bn\n  relu\n  basic",
        "conv(64, k=3, s=2, p=1, bias=false)\n  bn\n  relu\n  basic",
    ));
    assert!(top_level >= novelty::DEFAULT_THRESHOLD, "{top_level}");
    assert!(top_level > stage && stage > in_block && in_block > stride, "{top_level} {stage} {in_block} {stride}");
    assert!(in_block < 0.8, "{in_block}");
    assert!(stride < 0.1, "{stride}");
}

#[test]
fn a_large_network_fingerprints_without_recursion() {
    // A 20,000-operation chain: the walk is iterative, so this cannot overflow the stack.
    let src = "net {\n  conv(8, k=3, p=1)\n  repeat(10000) {\n    relu\n    bn\n  }\n  gap\n  linear(classes)\n}\n";
    let f = fp(src);
    assert_eq!(f.operations, 1 + 1 + 20_000 + 2);
}
