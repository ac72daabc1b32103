//! Downloads against a loopback server: whole files, resumed files, broken transfers, bad checksums, unpacking.

use std::collections::HashMap;
use std::fs;
use std::io::Write;

use nasc_datasets::{fetch, fetch_files, load_with, DatasetName, Extract, FetchOptions, Outcome, RemoteFile, Split};
use sha2::{Digest, Sha256};

use crate::server::{Faults, Request, Server};
use crate::{fixture_options, fixtures, message};

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn remote(file: &str, data: &[u8]) -> RemoteFile {
    RemoteFile {
        file: file.to_string(),
        urls: vec!["https://example.invalid/never-used".to_string()],
        size: Some(data.len() as u64),
        sha256: Some(sha256(data)),
        extract: None,
    }
}

fn through(server: &Server) -> FetchOptions {
    FetchOptions { mirror: Some(server.url.clone()), progress: false }
}

/// Bytes that do not compress and do not repeat, so a misplaced range shows.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn a_full_download_verifies_and_unpacks_then_loads() {
    // A CIFAR-10 archive as the release has it, made from fixture batches.
    let staging = tempfile::tempdir().unwrap();
    fixtures::write_cifar10(staging.path(), 2);
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    tar.append_dir_all("cifar-10-batches-bin", staging.path().join("cifar-10-batches-bin")).unwrap();
    let archive = tar.into_inner().unwrap().finish().unwrap();
    let other = noise(300_000, 1);

    let server = Server::start(
        HashMap::from([
            ("cifar-10-binary.tar.gz".to_string(), archive.clone()),
            ("extra.bin".to_string(), other.clone()),
        ]),
        Faults::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar10");
    let mut cifar = remote("cifar-10-binary.tar.gz", &archive);
    cifar.extract = Some(Extract::TarGz { creates: "cifar-10-batches-bin".to_string() });
    let fetched = fetch_files(&[cifar.clone(), remote("extra.bin", &other)], &root, &through(&server)).unwrap();

    assert_eq!(fetched[0].outcome, Outcome::Downloaded { bytes: archive.len() as u64, resumed_from: 0 });
    assert_eq!(fetched[0].unpacked.as_deref(), Some(root.join("cifar-10-batches-bin").as_path()));
    assert_eq!(fs::read(root.join("extra.bin")).unwrap(), other);
    assert!(!root.join("extra.bin.part").exists());
    let train = load_with(DatasetName::Cifar10, &root, Split::Train, &fixture_options(&root.join("c"))).unwrap();
    assert_eq!(train.dataset.len(), 10);

    // A second fetch finds everything in place and asks the server nothing.
    let before = server.requests().len();
    let again = fetch_files(&[cifar], &root, &through(&server)).unwrap();
    assert_eq!(again[0].outcome, Outcome::Present);
    assert_eq!(server.requests().len(), before);
}

#[test]
fn a_partial_file_is_resumed_with_a_range_request() {
    let data = noise(1_000_000, 2);
    let server = Server::start(HashMap::from([("big.bin".to_string(), data.clone())]), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    fs::File::create(dir.path().join("big.bin.part")).unwrap().write_all(&data[..400_000]).unwrap();
    let fetched = fetch_files(&[remote("big.bin", &data)], dir.path(), &through(&server)).unwrap();
    assert_eq!(fetched[0].outcome, Outcome::Downloaded { bytes: 1_000_000, resumed_from: 400_000 });
    assert_eq!(
        server.requests(),
        vec![Request { path: "/big.bin".to_string(), range: Some("bytes=400000-".to_string()) }]
    );
    assert_eq!(fs::read(dir.path().join("big.bin")).unwrap(), data);
}

#[test]
fn a_server_that_ignores_range_gets_the_file_rewritten_from_the_start() {
    let data = noise(200_000, 5);
    let faults = Faults { ignore_range: true, ..Faults::default() };
    let server = Server::start(HashMap::from([("r.bin".to_string(), data.clone())]), faults);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("r.bin.part"), &data[..70_000]).unwrap();
    fetch_files(&[remote("r.bin", &data)], dir.path(), &through(&server)).unwrap();
    assert_eq!(server.requests()[0].range.as_deref(), Some("bytes=70000-"));
    assert_eq!(fs::read(dir.path().join("r.bin")).unwrap(), data);
}

#[test]
fn a_partial_file_longer_than_the_real_one_is_discarded() {
    let data = noise(10_000, 6);
    let server = Server::start(HashMap::from([("s.bin".to_string(), data.clone())]), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("s.bin.part"), noise(20_000, 7)).unwrap();
    fetch_files(&[remote("s.bin", &data)], dir.path(), &through(&server)).unwrap();
    assert_eq!(server.requests()[0].range, None);
    assert_eq!(fs::read(dir.path().join("s.bin")).unwrap(), data);
}

#[test]
fn a_transfer_that_breaks_off_is_resumed_where_it_stopped() {
    let data = noise(800_000, 3);
    let faults = Faults { cut_first_body_after: Some(123_456), ..Faults::default() };
    let server = Server::start(HashMap::from([("f.bin".to_string(), data.clone())]), faults);
    let dir = tempfile::tempdir().unwrap();
    fetch_files(&[remote("f.bin", &data)], dir.path(), &through(&server)).unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=123456-"));
    assert_eq!(fs::read(dir.path().join("f.bin")).unwrap(), data);
}

#[test]
fn a_checksum_mismatch_is_an_error_naming_the_file_and_keeps_nothing() {
    let data = noise(50_000, 4);
    let server = Server::start(HashMap::from([("a.bin".to_string(), data.clone())]), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = remote("a.bin", &data);
    wrong.sha256 = Some("0".repeat(64));
    let err = fetch_files(&[wrong], dir.path(), &through(&server)).unwrap_err();
    assert_eq!(
        message(err, dir.path()),
        format!(
            "<root>/a.bin: checksum mismatch: expected sha256 {}, got {}; the download was removed, run the fetch again",
            "0".repeat(64),
            sha256(&data)
        )
    );
    assert!(!dir.path().join("a.bin").exists());
    assert!(!dir.path().join("a.bin.part").exists());
}

#[test]
fn the_catalog_table_goes_through_the_mirror_and_is_checked() {
    // Right size, wrong bytes: only the checksum can tell.
    let fake = vec![0u8; 9_912_422];
    let server = Server::start(HashMap::from([("train-images-idx3-ubyte.gz".to_string(), fake)]), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(DatasetName::Mnist, dir.path(), &through(&server)).unwrap_err();
    let msg = message(err, dir.path());
    assert!(
        msg.starts_with("<root>/train-images-idx3-ubyte.gz: checksum mismatch: expected sha256 440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609, got "),
        "{msg}"
    );
    assert_eq!(server.requests()[0].path, "/train-images-idx3-ubyte.gz");
}

#[test]
fn http_failures_name_the_url() {
    let server = Server::start(HashMap::new(), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let err = fetch_files(&[remote("gone.bin", b"x")], dir.path(), &through(&server)).unwrap_err();
    assert_eq!(err.to_string(), format!("{}/gone.bin: HTTP status 404", server.url));

    let page = b"<html>quota exceeded</html>".to_vec();
    let html = Server::start(
        HashMap::from([("img.zip".to_string(), page.clone())]),
        Faults { content_type: Some("text/html; charset=utf-8"), ..Faults::default() },
    );
    let err = fetch_files(&[remote("img.zip", &page)], dir.path(), &through(&html)).unwrap_err();
    assert_eq!(
        message(err, dir.path()),
        format!(
            "{}/img.zip: the server sent a web page instead of img.zip (a download quota, or a moved file); fetch it by hand into <root>",
            html.url
        )
    );
    assert!(fetch(DatasetName::ImageFolder { size: 64 }, dir.path(), &through(&html)).is_err());
}

#[test]
fn a_zip_archive_is_unpacked_like_celeba() {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.add_directory("img_align_celeba/", stored).unwrap();
    zip.start_file("img_align_celeba/000001.jpg", stored).unwrap();
    zip.write_all(&fixtures::jpeg(&fixtures::solid(178, 218, [9, 9, 9]))).unwrap();
    let archive = zip.finish().unwrap().into_inner();
    let server =
        Server::start(HashMap::from([("img_align_celeba.zip".to_string(), archive.clone())]), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let mut file = remote("img_align_celeba.zip", &archive);
    file.extract = Some(Extract::Zip { creates: "img_align_celeba".to_string() });
    fetch_files(&[file], dir.path(), &through(&server)).unwrap();
    assert!(dir.path().join("img_align_celeba/000001.jpg").is_file());
    assert!(!dir.path().join(".nasc-unpack-img_align_celeba.zip").exists());
}
