//! Speed of the verdict pipeline: a full verdict for a ResNet-18 delta against an archive of
//! 100,000 networks (target < 200 µs on one core), and a novelty query against 1,000,000
//! archived signatures (target < 1 ms). Run: `cargo bench --bench delta`.
//!
//! Archives are synthetic but shaped like a search run's: every entry is a variant of a zoo
//! network, sharing a random 30–95% of its shingles ("clustered", the hard case for LSH, as
//! many entries resemble the query), or a network unlike any other ("diverse").

use criterion::{criterion_group, criterion_main, Criterion};
use minhash_rs::prelude::MinHasher;
use nasc_delta::delta::{judge, unified, Base, Options, Verdict};
use nasc_delta::novelty::{
    self, fingerprint, shingle, structure, Archive, Fingerprint, Index, Signature, StructuralHash,
};
use nasc_lang::check::{binding, check_source, Budget};
use std::hint::black_box;

const RESNET18: &str = include_str!("../../../zoo/resnet18.arch");

/// xorshift64*: a seeded stream, so every run benchmarks the same archive.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The shingles of every zoo network under CIFAR-10.
fn zoo_shingles() -> Vec<Vec<u64>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo");
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let cifar = binding::dataset("cifar10").unwrap();
    paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "arch"))
        .map(|p| {
            let c = check_source(&std::fs::read_to_string(p).unwrap(), cifar, &Budget::default()).unwrap();
            let s = structure(&c.graph);
            shingle::shingles(&c.graph, &s, novelty::SHINGLE_K)
        })
        .collect()
}

/// A signature sharing a random 30–95% of one zoo network's shingles, the rest new.
fn clustered(zoo: &[Vec<u64>], rng: &mut Rng) -> Signature {
    let base = &zoo[rng.below(zoo.len() as u64) as usize];
    let keep = 30 + rng.below(66);
    base.iter().map(|&sh| if rng.below(100) < keep { sh } else { rng.next() }).collect()
}

/// A signature of 20–300 shingles of its own.
fn diverse(rng: &mut Rng) -> Signature {
    let n = 20 + rng.below(281);
    (0..n).map(|_| rng.next()).collect()
}

fn archive_of(n: usize, zoo: &[Vec<u64>], rng: &mut Rng) -> Archive {
    let mut a = Archive::in_memory(binding::dataset("cifar10").unwrap());
    for i in 0..n {
        let signature = clustered(zoo, rng);
        let hash = StructuralHash((u128::from(rng.next()) << 64) | i as u128);
        a.add(&Fingerprint { hash, signature, operations: 100 }, "").unwrap();
    }
    a
}

fn verdict(c: &mut Criterion) {
    let zoo = zoo_shingles();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let archive = archive_of(100_000, &zoo, &mut rng);
    let opts = Options::new(binding::dataset("cifar10").unwrap());
    let base = Base::new(RESNET18, &opts);
    // A typical model reply: prose around a fenced one-hunk diff that changes the stem's
    // activation.
    let changed = RESNET18.replacen("  bn\n  relu\n  basic(64)", "  bn\n  gelu\n  basic(64)", 1);
    let (diff, _) = unified(RESNET18, &changed, "a/resnet18.arch", "b/resnet18.arch");
    let reply = format!(
        "The stem would train better with a smoother activation.\n\n```diff\n{diff}```\n\nThis keeps the shapes.\n"
    );
    let j = judge(&base, &reply, Some(&archive), &opts);
    assert_eq!(j.verdict, Verdict::Ok, "{}", j.message);

    let mut g = c.benchmark_group("verdict");
    g.bench_function("resnet18_delta/archive_100k", |b| {
        b.iter(|| judge(black_box(&base), black_box(&reply), Some(&archive), &opts))
    });
    g.bench_function("resnet18_delta/no_archive", |b| {
        b.iter(|| judge(black_box(&base), black_box(&reply), None, &opts))
    });
    // Where the novelty stage's time goes.
    let program = nasc_lang::syntax::parse(&changed).unwrap();
    let checked = nasc_lang::check::check(&program, opts.binding, &opts.budget).unwrap();
    g.bench_function("fingerprint/resnet18", |b| b.iter(|| fingerprint(black_box(&checked.graph))));
    let st = structure(&checked.graph);
    g.bench_function("parts/structure", |b| b.iter(|| structure(black_box(&checked.graph))));
    g.bench_function("parts/text_hash", |b| b.iter(|| StructuralHash::of_text(&black_box(&st).text(&checked.graph))));
    g.bench_function("parts/shingles", |b| b.iter(|| shingle::shingles(&checked.graph, black_box(&st), 3)));
    let shs = shingle::shingles(&checked.graph, &st, 3);
    g.bench_function("parts/minhash", |b| b.iter(|| black_box(&shs).iter().copied().collect::<Signature>()));
    let canon = nasc_lang::syntax::fmt::print(&program);
    g.bench_function("parts/diff", |b| b.iter(|| unified(black_box(&base.canonical), black_box(&canon), "a/x", "b/x")));
    let fp = fingerprint(&checked.graph);
    g.bench_function("judge/archive_100k", |b| b.iter(|| archive.judge(black_box(&fp), novelty::DEFAULT_THRESHOLD)));
    g.finish();

    // One breakdown, printed for the report.
    let n = 2_000;
    let mut sum = nasc_delta::delta::Timings::default();
    for _ in 0..n {
        let t = judge(&base, &reply, Some(&archive), &opts).timings;
        sum.extract_ns += t.extract_ns;
        sum.apply_ns += t.apply_ns;
        sum.parse_ns += t.parse_ns;
        sum.check_ns += t.check_ns;
        sum.novelty_ns += t.novelty_ns;
        sum.total_ns += t.total_ns;
    }
    let us = |x: u64| x as f64 / n as f64 / 1e3;
    eprintln!(
        "verdict stages, mean of {n} (µs): extract {:.1}, apply {:.1}, parse {:.1}, check {:.1}, novelty+diff {:.1}, total {:.1}",
        us(sum.extract_ns),
        us(sum.apply_ns),
        us(sum.parse_ns),
        us(sum.check_ns),
        us(sum.novelty_ns),
        us(sum.total_ns)
    );
}

fn query_1m(c: &mut Criterion) {
    let zoo = zoo_shingles();
    let cifar = binding::dataset("cifar10").unwrap();
    let changed = RESNET18.replacen("  bn\n  relu\n  basic(64)", "  bn\n  gelu\n  basic(64)", 1);
    let query = fingerprint(&check_source(&changed, cifar, &Budget::default()).unwrap().graph).signature;
    let mut g = c.benchmark_group("novelty_query");
    for kind in ["diverse", "clustered"] {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut sigs: Vec<Signature> = (0..1_000_000)
            .map(|_| if kind == "diverse" { diverse(&mut rng) } else { clustered(&zoo, &mut rng) })
            .collect();
        // The network the query was made from is in the archive, somewhere in the middle. In
        // the clustered archive, variants of it may be as close to the query as it is.
        sigs[500_000] = fingerprint(&check_source(RESNET18, cifar, &Budget::default()).unwrap().graph).signature;
        let planted = query.estimate_jaccard_index(&sigs[500_000]);
        let index = Index::new(sigs);
        let top = index.nearest(&query, 5);
        eprintln!("{kind}: planted {planted:.3}, nearest {:?}", &top[..top.len().min(3)]);
        assert!(top[0].similarity >= planted, "{kind}: {top:?}");
        g.bench_function(format!("1m_{kind}"), |b| b.iter(|| index.nearest(black_box(&query), 5)));
    }
    g.finish();
}

criterion_group!(benches, verdict, query_1m);
criterion_main!(benches);
