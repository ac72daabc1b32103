//! Parse + check speed on the zoo: how many candidates per second the front end can judge.
//! Run: `cargo bench --bench front_end` (one core: criterion runs one benchmark at a time).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nasc_lang::check::{binding, check, Budget};
use nasc_lang::syntax::parse;
use std::hint::black_box;

fn zoo() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo");
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("zoo exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "arch"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn front_end(c: &mut Criterion) {
    let cifar = binding::dataset("cifar10").unwrap();
    let budget = Budget::default();
    let mut g = c.benchmark_group("parse+check");
    for (name, src) in zoo() {
        g.throughput(Throughput::Elements(1));
        g.bench_function(&name, |b| {
            b.iter(|| {
                let p = parse(black_box(&src)).unwrap();
                check(&p, cifar, &budget).unwrap()
            })
        });
    }
    g.finish();

    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../zoo/resnet18.arch")).unwrap();
    let program = parse(&src).unwrap();
    c.bench_function("resnet18/parse", |b| b.iter(|| parse(black_box(&src)).unwrap()));
    // The reference path: pest alone, which the fast path is held equal to.
    c.bench_function("resnet18/parse_pest", |b| {
        b.iter(|| nasc_lang::syntax::parse::parse_with_pest(black_box(&src)).unwrap())
    });
    c.bench_function("resnet18/check", |b| b.iter(|| check(black_box(&program), cifar, &budget).unwrap()));
    c.bench_function("resnet18/fmt", |b| b.iter(|| nasc_lang::syntax::fmt::print(black_box(&program))));
}

criterion_group!(benches, front_end);
criterion_main!(benches);
