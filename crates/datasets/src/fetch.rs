//! Downloading a dataset's files from their canonical URLs: resume, checksum, unpack, progress bar.
//! It must not keep a file whose checksum is wrong, nor leave a half-unpacked folder under its final name.
//!
//! HTTP is done with ureq: a small, blocking, well-kept client (rustls, no
//! async runtime), which is all a handful of sequential downloads needs and
//! keeps tokio out of a crate that the trainer links.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::cache::hex;
use crate::error::DataError;

/// When set, every file is fetched from `$NASC_DATA_MIRROR/<file name>`
/// instead of its canonical URL: a local mirror, or a test's loopback server.
pub const MIRROR_ENV: &str = "NASC_DATA_MIRROR";

/// How many times one URL is tried (resuming each time) before the next is.
const ATTEMPTS: u32 = 4;

/// One file of a dataset's download table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// The name it is saved under in the dataset's root.
    pub file: String,
    /// Where to get it, tried in order.
    pub urls: Vec<String>,
    pub size: Option<u64>,
    /// Lower-case hex.
    pub sha256: Option<String>,
    pub extract: Option<Extract>,
}

/// An archive to unpack after download; `creates` is the folder it holds,
/// which is unpacked beside it (and whose presence means "already unpacked").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extract {
    TarGz { creates: String },
    Zip { creates: String },
}

impl Extract {
    fn creates(&self) -> &str {
        match self {
            Extract::TarGz { creates } | Extract::Zip { creates } => creates,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    /// Replaces every URL's location: the file is fetched from `<mirror>/<file name>`.
    pub mirror: Option<String>,
    /// Draw a progress bar on standard error.
    pub progress: bool,
}

impl FetchOptions {
    /// A progress bar, and the mirror named by `NASC_DATA_MIRROR` if it is set.
    pub fn from_env() -> Self {
        FetchOptions { mirror: std::env::var(MIRROR_ENV).ok().filter(|m| !m.is_empty()), progress: true }
    }
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was there already and its checksum holds.
    Present,
    /// Downloaded; `resumed_from` bytes were already on disk from an earlier try.
    Downloaded { bytes: u64, resumed_from: u64 },
}

#[derive(Clone, Debug)]
pub struct Fetched {
    pub file: String,
    pub path: PathBuf,
    pub outcome: Outcome,
    /// The folder the archive was unpacked to, if it is an archive.
    pub unpacked: Option<PathBuf>,
}

/// Downloads, verifies and unpacks the given files into `root`.
pub fn fetch_files(files: &[RemoteFile], root: &Path, options: &FetchOptions) -> Result<Vec<Fetched>, DataError> {
    fs::create_dir_all(root).map_err(|e| DataError::io(root, "cannot create", e))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Statuses are handled here: 206 and 416 matter for resuming.
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled transfer fails (and is resumed) instead of hanging forever.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("nasc-datasets/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    files.iter().map(|f| fetch_one(&agent, f, root, options)).collect()
}

fn fetch_one(
    agent: &ureq::Agent,
    remote: &RemoteFile,
    root: &Path,
    options: &FetchOptions,
) -> Result<Fetched, DataError> {
    let path = root.join(&remote.file);
    let part = root.join(format!("{}.part", remote.file));
    let bar = progress_bar(remote, options);

    let mut outcome = Outcome::Present;
    let present = path.is_file() && verify(&path, remote).is_ok();
    if !present {
        // A complete-looking file that fails its checksum is a damaged
        // download: fetched again from scratch.
        if path.is_file() {
            fs::remove_file(&path).map_err(|e| DataError::io(&path, "cannot remove the damaged file", e))?;
        }
        let urls = match &options.mirror {
            Some(mirror) => vec![format!("{}/{}", mirror.trim_end_matches('/'), remote.file)],
            None => remote.urls.clone(),
        };
        let resumed_from = file_len(&part);
        let mut last_error = None;
        for url in &urls {
            match download(agent, url, &part, remote, root, &bar) {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            bar.finish_and_clear();
            return Err(e);
        }
        if let Err(e) = verify(&part, remote) {
            let _ = fs::remove_file(&part);
            bar.finish_and_clear();
            return Err(rename_error(e, &part, &path));
        }
        fs::rename(&part, &path).map_err(|e| DataError::io(&path, "cannot move the download into place", e))?;
        outcome = Outcome::Downloaded { bytes: file_len(&path), resumed_from };
    }
    // The bar goes; the caller reports each file in its own words.
    bar.finish_and_clear();

    let unpacked = match &remote.extract {
        Some(how) => Some(unpack(&path, root, how)?),
        None => None,
    };
    Ok(Fetched { file: remote.file.clone(), path, outcome, unpacked })
}

/// Errors about `<file>.part` are reported under the file's own name (the
/// name a person knows), and say that the download is gone.
fn rename_error(error: DataError, part: &Path, path: &Path) -> DataError {
    const GONE: &str = "the download was removed, run the fetch again";
    match error {
        DataError::Checksum { path: p, expected, actual } if p == part => {
            DataError::Checksum { path: path.to_path_buf(), expected, actual }
        }
        DataError::Truncated { path: p, detail } if p == part => {
            DataError::Truncated { path: path.to_path_buf(), detail: format!("{detail}; {GONE}") }
        }
        DataError::Corrupt { path: p, detail } if p == part => {
            DataError::Corrupt { path: path.to_path_buf(), detail: format!("{detail}; {GONE}") }
        }
        other => other,
    }
}

fn progress_bar(remote: &RemoteFile, options: &FetchOptions) -> ProgressBar {
    let target = if options.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(remote.size, target);
    // wide_bar takes what the terminal has left, so the line never wraps.
    let style = ProgressStyle::with_template("{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(remote.file.clone());
    bar
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Checks size, then checksum, of a downloaded file.
fn verify(path: &Path, remote: &RemoteFile) -> Result<(), DataError> {
    let len = file_len(path);
    if let Some(size) = remote.size {
        if len != size {
            let detail = format!("holds {len} bytes, the published file has {size}");
            return Err(if len < size { DataError::truncated(path, detail) } else { DataError::corrupt(path, detail) });
        }
    }
    if let Some(expected) = &remote.sha256 {
        let actual = sha256_file(path)?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(DataError::Checksum { path: path.to_path_buf(), expected: expected.clone(), actual });
        }
    }
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A failed request: worth another try (a dropped connection, a 5xx) or not
/// (a 404, an HTML page, a full disk).
struct Failure {
    error: DataError,
    retry: bool,
}

/// Brings `part` up to the whole file from `url`, resuming what is there
/// with a Range request, and retrying a dropped transfer from where it stopped.
fn download(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    remote: &RemoteFile,
    root: &Path,
    bar: &ProgressBar,
) -> Result<(), DataError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut have = file_len(part);
        if let Some(size) = remote.size {
            if have == size {
                return Ok(());
            }
            if have > size {
                // Longer than the real file: not a prefix of it, start over.
                fs::remove_file(part).map_err(|e| DataError::io(part, "cannot remove", e))?;
                have = 0;
            }
        }
        match request(agent, url, part, have, remote, root, bar) {
            Ok(Done::Complete) => return Ok(()),
            Ok(Done::RangeRefused) => {
                // 416: the server has nothing past `have`. Without a known
                // size that means the part is whole; with one, it means the
                // part is not a prefix of this file.
                if remote.size.is_none() {
                    return Ok(());
                }
                fs::remove_file(part).map_err(|e| DataError::io(part, "cannot remove", e))?;
            }
            Err(Failure { error, retry }) => {
                if !retry || attempt >= ATTEMPTS {
                    return Err(error);
                }
                std::thread::sleep(Duration::from_millis(250 * u64::from(attempt)));
            }
        }
    }
}

enum Done {
    Complete,
    RangeRefused,
}

fn request(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    have: u64,
    remote: &RemoteFile,
    root: &Path,
    bar: &ProgressBar,
) -> Result<Done, Failure> {
    let http =
        |detail: String, retry: bool| Failure { error: DataError::Download { url: url.to_string(), detail }, retry };
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let response = req.call().map_err(|e| http(e.to_string(), true))?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    let append = match status {
        200 => false,
        206 => {
            let range = header("content-range").unwrap_or_default();
            if !range.starts_with(&format!("bytes {have}-")) {
                return Err(http(format!("asked for bytes {have}- and got the range `{range}`"), false));
            }
            true
        }
        416 => return Ok(Done::RangeRefused),
        _ => return Err(http(format!("HTTP status {status}"), status >= 500)),
    };
    let html = header("content-type").is_some_and(|t| t.starts_with("text/html"));
    if html && !remote.file.ends_with(".html") {
        // Google Drive answers with a page instead of the file when a
        // file's download quota is used up.
        return Err(http(
            format!(
                "the server sent a web page instead of {} (a download quota, or a moved file); fetch it by hand into {}",
                remote.file,
                root.display()
            ),
            false,
        ));
    }
    let start = if append { have } else { 0 };
    bar.set_length(length.map(|l| start + l).or(remote.size).unwrap_or(0));
    bar.set_position(start);

    let io = |e: std::io::Error, action| Failure { error: DataError::io(part, action, e), retry: false };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(|e| io(e, "cannot open for writing"))?;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = file.sync_all();
                return Err(http(format!("the transfer broke off after {} bytes: {e}", start + received), true));
            }
        };
        file.write_all(&buf[..n]).map_err(|e| io(e, "cannot write"))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all().map_err(|e| io(e, "cannot write"))?;
    Ok(Done::Complete)
}

/// Unpacks an archive into a temporary folder beside it and moves the
/// folder it holds into place, so an interrupted unpack never looks done.
fn unpack(archive: &Path, root: &Path, how: &Extract) -> Result<PathBuf, DataError> {
    let creates = how.creates();
    let target = root.join(creates);
    if target.is_dir() {
        return Ok(target);
    }
    let name = archive.file_name().and_then(|n| n.to_str()).unwrap_or("archive");
    let tmp = root.join(format!(".nasc-unpack-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, "cannot clear", e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, "cannot create", e))?;
    let result = (|| {
        let file = File::open(archive).map_err(|e| DataError::io(archive, "cannot open", e))?;
        match how {
            // tar's unpack refuses entries that would land outside `tmp`.
            Extract::TarGz { .. } => tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)))
                .unpack(&tmp)
                .map_err(|e| DataError::corrupt(archive, format!("cannot unpack: {e}"))),
            // So does zip's extract, through each entry's enclosed name.
            Extract::Zip { .. } => zip::ZipArchive::new(BufReader::new(file))
                .and_then(|mut z| z.extract(&tmp))
                .map_err(|e| DataError::corrupt(archive, format!("cannot unpack: {e}"))),
        }?;
        let inner = tmp.join(creates);
        if !inner.is_dir() {
            return Err(DataError::corrupt(archive, format!("does not hold the folder {creates}")));
        }
        fs::rename(&inner, &target).map_err(|e| DataError::io(&target, "cannot move the unpacked folder into place", e))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| target)
}
