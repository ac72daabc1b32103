//! The archive: it persists to disk and reloads to the same answers, survives an interrupted
//! append, refuses what it cannot compare, and its index finds near neighbours among many.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use minhash_rs::prelude::MinHasher;
use nasc_delta::novelty::{
    fingerprint, Archive, ArchiveError, Fingerprint, Index, NoveltyVerdict, Signature, DEFAULT_THRESHOLD,
};
use nasc_lang::check::{binding, check_source, Binding, Budget};

const ZOO: &[(&str, &str)] = &[
    ("zoo/alexnet.arch", include_str!("../../../zoo/alexnet.arch")),
    ("zoo/lenet5.arch", include_str!("../../../zoo/lenet5.arch")),
    ("zoo/mobilenetv2.arch", include_str!("../../../zoo/mobilenetv2.arch")),
    ("zoo/resnet18.arch", include_str!("../../../zoo/resnet18.arch")),
    ("zoo/resnet34.arch", include_str!("../../../zoo/resnet34.arch")),
    ("zoo/vgg11_bn.arch", include_str!("../../../zoo/vgg11_bn.arch")),
    ("zoo/vit_tiny.arch", include_str!("../../../zoo/vit_tiny.arch")),
];

fn cifar() -> Binding {
    binding::dataset("cifar10").unwrap()
}

fn fp(src: &str) -> Fingerprint {
    fingerprint(&check_source(src, cifar(), &Budget::default()).unwrap().graph)
}

/// A fresh, empty folder under the system's temporary folder.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nasc-novelty-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn seeded(dir: &Path) -> Archive {
    let mut a = Archive::open_or_create(dir, cifar()).unwrap();
    for (name, src) in ZOO {
        let (id, added) = a.add(&fp(src), name).unwrap();
        assert!(added, "{name}");
        assert_eq!(a.entries()[id as usize].name, *name);
    }
    a
}

#[test]
fn an_archive_persists_and_reloads_to_the_same_answers() {
    let dir = temp_dir("reload");
    let before = seeded(&dir);
    let reopened = Archive::open(&dir).unwrap();
    assert_eq!(reopened.binding(), cifar());
    assert_eq!(reopened.entries(), before.entries());
    let changed = fp(&ZOO[3].1.replace("  gap\n", "  gap\n  dropout(0.2)\n"));
    for (_, src) in ZOO {
        let f = fp(src);
        assert_eq!(reopened.nearest(&f, 3), before.nearest(&f, 3));
        assert_eq!(reopened.judge(&f, DEFAULT_THRESHOLD).verdict, NoveltyVerdict::Duplicate);
    }
    assert_eq!(reopened.nearest(&changed, 3), before.nearest(&changed, 3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn appends_after_a_reload_are_kept() {
    let dir = temp_dir("append");
    drop(seeded(&dir));
    let mut a = Archive::open(&dir).unwrap();
    let extra = fp(&ZOO[3].1.replace("  gap\n", "  gap\n  dropout(0.2)\n"));
    let (id, added) = a.add(&extra, "resnet18+dropout").unwrap();
    assert!(added);
    assert_eq!(id as usize, ZOO.len());
    // A network already there is not added twice.
    assert_eq!(a.add(&fp(ZOO[0].1), "again").unwrap(), (0, false));
    let b = Archive::open(&dir).unwrap();
    assert_eq!(b.len(), ZOO.len() + 1);
    assert_eq!(b.find(extra.hash).map(|e| e.name.as_str()), Some("resnet18+dropout"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_append_is_dropped_and_overwritten() {
    let dir = temp_dir("torn");
    drop(seeded(&dir));
    let file = dir.join("archive.bin");
    let full = std::fs::metadata(&file).unwrap().len();
    // Half a record, as a crash in the middle of an append would leave.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&300u32.to_le_bytes());
    bytes.extend_from_slice(&[7u8; 100]);
    std::fs::write(&file, &bytes).unwrap();

    let mut a = Archive::open(&dir).unwrap();
    assert_eq!(a.len(), ZOO.len());
    let extra = fp(&ZOO[1].1.replace("linear(84)", "linear(96)"));
    a.add(&extra, "lenet-96").unwrap();
    drop(a);
    let b = Archive::open(&dir).unwrap();
    assert_eq!(b.len(), ZOO.len() + 1);
    assert_eq!(b.entries().last().unwrap().name, "lenet-96");
    assert!(std::fs::metadata(&file).unwrap().len() > full);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_archive_refuses_another_binding_a_foreign_file_and_an_old_format() {
    let dir = temp_dir("refuse");
    drop(seeded(&dir));
    let mnist = binding::dataset("mnist").unwrap();
    let e = Archive::open_or_create(&dir, mnist).err().expect("another binding");
    assert!(matches!(e, ArchiveError::BindingMismatch { .. }), "{e}");
    assert!(e.to_string().contains("[3,32,32] with 10 classes, not input [1,28,28]"), "{e}");

    let file = dir.join("archive.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[12] = 99; // the structural form version
    std::fs::write(&file, &bytes).unwrap();
    let e = Archive::open(&dir).err().expect("an old format");
    assert!(matches!(e, ArchiveError::Incompatible { what: "structural form version", found: 99, .. }), "{e}");

    std::fs::write(&file, "net {\n}\n").unwrap();
    let e = Archive::open(&dir).err().expect("not an archive");
    assert!(matches!(e, ArchiveError::NotAnArchive { .. }), "{e}");

    let e = Archive::open(&dir.join("missing")).err().expect("no archive");
    assert!(matches!(e, ArchiveError::Io { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nearest_ranks_by_similarity_and_puts_the_exact_match_first() {
    let a = seeded(&temp_dir("rank"));
    let resnet18 = fp(ZOO[3].1);
    let near = a.nearest(&resnet18, 3);
    assert_eq!(near[0].name, "zoo/resnet18.arch");
    assert_eq!(near[0].similarity, 1.0);
    assert!(near.windows(2).all(|w| w[0].similarity >= w[1].similarity));
    // The judgement of a one-line change names the base it came from.
    let changed = fp(&ZOO[3].1.replace("  gap\n", "  gap\n  dropout(0.2)\n"));
    let n = a.judge(&changed, 0.9);
    assert_eq!(n.verdict, NoveltyVerdict::NearDuplicate);
    assert_eq!(n.nearest.unwrap().name, "zoo/resnet18.arch");
    if let Some(p) = a.path() {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

/// The signature of a set as large as `base`, sharing its first `keep` shingles.
fn variant(base: &[u64], keep: usize, seed: u64) -> Signature {
    let mut r = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let fresh = (keep..base.len()).map(|_| {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    });
    base[..keep].iter().copied().chain(fresh).collect()
}

#[test]
fn the_index_finds_a_near_duplicate_among_many_and_keeps_finding_it_while_growing() {
    let base: Vec<u64> = (0..100u64).map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d)).collect();
    // 3,000 unrelated signatures, then the one that shares 95 of 100 shingles.
    let mut sigs: Vec<Signature> = (0..3_000u64).map(|i| variant(&base, 0, i + 1)).collect();
    let planted = sigs.len() as u32;
    sigs.push(variant(&base, 95, 999_999));
    let mut index = Index::new(sigs);
    let query = variant(&base, 100, 0);
    let hits = index.nearest(&query, 3);
    assert_eq!(hits[0].id, planted);
    assert!(hits[0].similarity > 0.8, "{:?}", hits[0]);
    // Appends go to the recent part, then are merged in; both are searched.
    let mut last = planted;
    for i in 0..4_000u64 {
        last = index.push(variant(&base, 0, 2_000_000 + i));
    }
    let closer = index.push(variant(&base, 99, 5));
    assert_eq!(closer, last + 1);
    let hits = index.nearest(&query, 2);
    assert_eq!(hits[0].id, closer);
    assert_eq!(hits[1].id, planted);
    assert_eq!(index.len(), 3_000 + 1 + 4_000 + 1);
}

#[test]
fn an_index_of_thousands_of_variants_of_one_network_still_answers() {
    // The worst case for LSH: every entry shares most shingles with the query. Hot buckets
    // are sampled, so the answer comes quickly and is still a close one.
    let base: Vec<u64> = (0..100u64).map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d)).collect();
    let sigs: Vec<Signature> = (0..2_000u64).map(|i| variant(&base, 90, i + 1)).collect();
    let index = Index::new(sigs);
    let query = variant(&base, 100, 0);
    let hits = index.nearest(&query, 5);
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.similarity > 0.7), "{hits:?}");
    assert!(query.estimate_jaccard_index(index.signature(hits[0].id).unwrap()) == hits[0].similarity);
}

#[test]
fn an_empty_archive_finds_nothing_and_everything_is_new() {
    let a = Archive::in_memory(cifar());
    let f = fp(ZOO[0].1);
    assert!(a.nearest(&f, 5).is_empty());
    let n = a.judge(&f, DEFAULT_THRESHOLD);
    assert_eq!(n.verdict, NoveltyVerdict::New);
    assert!(n.nearest.is_none());
    assert!(Index::default().nearest(&f.signature, 3).is_empty());
}
