//! The front half of the verdict pipeline: a model's reply against a base program, judged by extract → apply → parse → check → novelty.
//! It decides and explains, and never panics on a reply; it writes nothing (recording a candidate in the archive is the caller's choice).

use std::time::Instant;

use serde::Serialize;

use super::{apply, extract, ApplyOptions, DeltaError, Extracted, Tolerance};
use crate::novelty::{self, Archive, Fingerprint, Novelty, NoveltyVerdict, StructuralHash};
use nasc_lang::check::{self, Binding, Budget, Checked};
use nasc_lang::diag::{self, Diagnostic, LineIndex};
use nasc_lang::syntax;

/// The verdicts of the front half, in pipeline order. Training adds `diverged`, `oom` and
/// `timeout` to candidates judged `ok` here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NoDiff,
    MalformedDiff,
    DoesNotApply,
    Ambiguous,
    ParseError,
    ShapeError,
    OverBudget,
    Duplicate,
    NearDuplicate,
    Ok,
}

impl Verdict {
    pub const ALL: [Verdict; 10] = [
        Verdict::NoDiff,
        Verdict::MalformedDiff,
        Verdict::DoesNotApply,
        Verdict::Ambiguous,
        Verdict::ParseError,
        Verdict::ShapeError,
        Verdict::OverBudget,
        Verdict::Duplicate,
        Verdict::NearDuplicate,
        Verdict::Ok,
    ];

    /// The verdict's name, as serialised and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NoDiff => "no_diff",
            Verdict::MalformedDiff => "malformed_diff",
            Verdict::DoesNotApply => "does_not_apply",
            Verdict::Ambiguous => "ambiguous",
            Verdict::ParseError => "parse_error",
            Verdict::ShapeError => "shape_error",
            Verdict::OverBudget => "over_budget",
            Verdict::Duplicate => "duplicate",
            Verdict::NearDuplicate => "near_duplicate",
            Verdict::Ok => "ok",
        }
    }

    /// The verdict named `name`, if it is one of the front half's.
    pub fn from_name(name: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == name)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a judgement depends on besides the base, the reply and the archive.
#[derive(Clone, Debug)]
pub struct Options {
    pub apply: ApplyOptions,
    pub binding: Binding,
    pub budget: Budget,
    /// Near-duplicate threshold on estimated similarity, in [0, 1].
    pub threshold: f64,
    /// The name diagnostics and the diff give the candidate's file.
    pub file: String,
}

impl Options {
    pub fn new(binding: Binding) -> Options {
        Options {
            apply: ApplyOptions::default(),
            binding,
            budget: Budget::default(),
            threshold: novelty::DEFAULT_THRESHOLD,
            file: "candidate.arch".to_string(),
        }
    }
}

/// Nanoseconds spent in each stage; stages not reached are 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub extract_ns: u64,
    pub apply_ns: u64,
    pub parse_ns: u64,
    pub check_ns: u64,
    /// Fingerprint, archive query, canonical text and diff.
    pub novelty_ns: u64,
    pub total_ns: u64,
}

/// A verdict with everything that explains it. Fields past the verdict are filled as far as
/// the pipeline got: a `does_not_apply` has no program, a `shape_error` has no fingerprint.
#[derive(Clone, Debug, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Why, for people and for the model's next attempt: the delta error, the rendered
    /// diagnostics, or the archive entry matched. For `ok`, any warnings, else empty.
    pub message: String,
    /// The parser's and checker's diagnostics (errors and warnings) as JSON, positions in
    /// `candidate`.
    pub diagnostics: Vec<serde_json::Value>,
    /// The extraction or application failure, as data.
    pub delta_error: Option<DeltaError>,
    /// What had to be forgiven to apply the diff.
    pub tolerances: Vec<Tolerance>,
    /// The program the reply made, as the diff left it (what diagnostics point into).
    pub candidate: Option<String>,
    /// The candidate in canonical form, when it parses.
    pub program: Option<String>,
    /// The unified diff from the base to `program`, both canonical.
    pub diff: Option<String>,
    /// Lines the canonical diff adds plus lines it removes.
    pub diff_lines: Option<usize>,
    pub params: Option<u64>,
    pub macs: Option<u64>,
    /// The structural hash, 32 hex digits, when the candidate checks.
    pub hash: Option<String>,
    /// The candidate against the archive, when one was given and the candidate checks.
    pub novelty: Option<Novelty>,
    pub timings: Timings,
    /// The checked candidate, for the caller that compiles it.
    #[serde(skip)]
    pub checked: Option<Checked>,
    /// The candidate's fingerprint, for the caller that records it in an archive.
    #[serde(skip)]
    pub fingerprint: Option<Fingerprint>,
}

impl Judgement {
    fn new(verdict: Verdict) -> Judgement {
        Judgement {
            verdict,
            message: String::new(),
            diagnostics: Vec::new(),
            delta_error: None,
            tolerances: Vec::new(),
            candidate: None,
            program: None,
            diff: None,
            diff_lines: None,
            params: None,
            macs: None,
            hash: None,
            novelty: None,
            timings: Timings::default(),
            checked: None,
            fingerprint: None,
        }
    }
}

/// A base program prepared once for many replies: its text, canonical form and structure.
#[derive(Clone, Debug)]
pub struct Base {
    pub text: String,
    /// The canonical form, or the text itself when the base does not parse.
    pub canonical: String,
    /// The base's structural hash under the options' binding, when it checks: a candidate
    /// with the same structure is a `duplicate` even without an archive.
    pub hash: Option<StructuralHash>,
}

impl Base {
    pub fn new(text: &str, opts: &Options) -> Base {
        let (canonical, hash) = match syntax::parse(text) {
            Ok(p) => {
                let hash =
                    check::check(&p, opts.binding, &opts.budget).ok().map(|c| novelty::fingerprint(&c.graph).hash);
                (syntax::fmt::print(&p), hash)
            }
            Err(_) => (text.to_string(), None),
        };
        Base { text: text.to_string(), canonical, hash }
    }
}

/// Judges `reply` against `base` (see [`judge`]), preparing the base on the way.
pub fn verdict(base: &str, reply: &str, archive: Option<&Archive>, opts: &Options) -> Judgement {
    judge(&Base::new(base, opts), reply, archive, opts)
}

/// Runs the pipeline on one reply. A reply holding a whole program instead of a diff is taken
/// as a full replacement (tolerance `full_program`).
pub fn judge(base: &Base, reply: &str, archive: Option<&Archive>, opts: &Options) -> Judgement {
    let start = Instant::now();
    let mut j = run(base, reply, archive, opts);
    j.timings.total_ns = ns(start);
    j
}

fn ns(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

fn delta_failure(mut j: Judgement, e: DeltaError) -> Judgement {
    j.verdict = match e.verdict() {
        "no_diff" => Verdict::NoDiff,
        "does_not_apply" => Verdict::DoesNotApply,
        "ambiguous" => Verdict::Ambiguous,
        _ => Verdict::MalformedDiff,
    };
    j.message = e.to_string();
    j.delta_error = Some(e);
    j
}

fn run(base: &Base, reply: &str, archive: Option<&Archive>, opts: &Options) -> Judgement {
    let mut j = Judgement::new(Verdict::Ok);

    // extract → apply
    let t = Instant::now();
    let extracted = extract(reply, &opts.apply.limits);
    j.timings.extract_ns = ns(t);
    let text = match extracted {
        Err(e) => return delta_failure(j, e),
        Ok(Extracted::FullProgram { text }) => {
            j.tolerances.push(Tolerance::FullProgram);
            text
        }
        Ok(Extracted::Diff { text, .. }) => {
            let t = Instant::now();
            let applied = apply(&base.text, &text, opts.apply);
            j.timings.apply_ns = ns(t);
            match applied {
                Err(e) => return delta_failure(j, e),
                Ok(a) => {
                    j.tolerances = a.tolerances;
                    a.text
                }
            }
        }
    };

    // parse
    let t = Instant::now();
    let parsed = syntax::parse(&text);
    j.timings.parse_ns = ns(t);
    let program = match parsed {
        Ok(p) => p,
        Err(d) => {
            j.candidate = Some(text);
            return diagnosed(j, vec![d], opts);
        }
    };

    // check
    let t = Instant::now();
    let checked = check::check(&program, opts.binding, &opts.budget);
    j.timings.check_ns = ns(t);
    let canonical = syntax::fmt::print(&program);
    let checked = match checked {
        Ok(c) => c,
        Err(diags) => {
            j.candidate = Some(text);
            j.program = Some(canonical);
            return diagnosed(j, diags, opts);
        }
    };

    // novelty, and the canonical diff the verdict reports
    let t = Instant::now();
    let fp = novelty::fingerprint(&checked.graph);
    let novelty = archive.map(|a| a.judge(&fp, opts.threshold));
    let (patch, changed) =
        unified(&base.canonical, &canonical, &format!("a/{}", opts.file), &format!("b/{}", opts.file));
    j.diff_lines = Some(changed);
    j.timings.novelty_ns = ns(t);

    j.params = Some(checked.graph.params());
    j.macs = Some(checked.graph.macs());
    j.hash = Some(fp.hash.hex());
    if !checked.warnings.is_empty() {
        j.message = diag::render(&checked.warnings, &opts.file, &text, false);
        j.diagnostics = json(&checked.warnings, &opts.file, &text);
    }
    if base.hash == Some(fp.hash) {
        j.verdict = Verdict::Duplicate;
        j.message = "duplicate: the candidate is the same network as the base: the change \
                     touches only names, comments, formatting or block factoring. Propose a \
                     change to the network itself.\n"
            .to_string();
    } else if let Some(n) = &novelty {
        if let Some(m) = &n.nearest {
            let name = if m.name.is_empty() { String::new() } else { format!(" ({})", m.name) };
            match n.verdict {
                NoveltyVerdict::Duplicate => {
                    j.verdict = Verdict::Duplicate;
                    j.message = format!(
                        "duplicate: the candidate is the same network as archive entry {}{name}, \
                         structural hash {}: it differs from it only in names, formatting or \
                         block factoring. Propose a change to the network itself.\n",
                        m.id,
                        m.hash.hex()
                    );
                }
                NoveltyVerdict::NearDuplicate => {
                    j.verdict = Verdict::NearDuplicate;
                    j.message = format!(
                        "near duplicate: the candidate is {:.2} similar to archive entry {}{name}, \
                         at or above the threshold {:.2}: too small a change to be worth \
                         training. Change more of the network: a block's body, a stage, a \
                         stride or a width.\n",
                        m.similarity, m.id, n.threshold
                    );
                }
                NoveltyVerdict::New => {}
            }
        }
    }
    j.novelty = novelty;
    j.candidate = Some(text);
    j.program = Some(canonical);
    j.diff = Some(patch);
    j.checked = Some(checked);
    j.fingerprint = Some(fp);
    j
}

/// Sets the verdict from the first error among `diags` and renders them all.
fn diagnosed(mut j: Judgement, diags: Vec<Diagnostic>, opts: &Options) -> Judgement {
    let src = j.candidate.as_deref().unwrap_or_default();
    j.verdict = match diags.iter().find(|d| d.is_error()).map(|d| d.code.verdict()) {
        Some("parse_error") => Verdict::ParseError,
        Some("over_budget") => Verdict::OverBudget,
        _ => Verdict::ShapeError,
    };
    j.message = diag::render(&diags, &opts.file, src, false);
    j.diagnostics = json(&diags, &opts.file, src);
    j
}

fn json(diags: &[Diagnostic], file: &str, src: &str) -> Vec<serde_json::Value> {
    let index = LineIndex::new(src);
    diags.iter().filter_map(|d| serde_json::to_value(diag::to_json(d, file, src, &index)).ok()).collect()
}

/// The unified diff from `a` to `b` (three lines of context) with the given file names in its
/// headers, and the number of lines it adds plus the number it removes. Empty, 0 when the
/// texts are equal. Applying the diff to `a` gives `b`.
pub fn unified(a: &str, b: &str, name_a: &str, name_b: &str) -> (String, usize) {
    const CONTEXT: usize = 3;
    if a == b {
        return (String::new(), 0);
    }
    // A candidate differs from its base in a few lines: lines common to both ends, beyond the
    // context the hunks show, are left out of the diff's work and added back to the line numbers.
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.split_inclusive('\n').collect(), b.split_inclusive('\n').collect());
    let common = la.len().min(lb.len());
    let prefix = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
    let suffix = la.iter().rev().zip(lb.iter().rev()).take(common - prefix).take_while(|(x, y)| x == y).count();
    let skip = prefix.saturating_sub(CONTEXT);
    let tail = suffix.saturating_sub(CONTEXT);
    let (wa, wb) = (la[skip..la.len() - tail].concat(), lb[skip..lb.len() - tail].concat());
    let mut opts = diffy::DiffOptions::new();
    opts.set_context_len(CONTEXT).set_original_filename(name_a.to_string()).set_modified_filename(name_b.to_string());
    let patch = opts.create_patch(&wa, &wb);
    let hunks = patch.hunks();
    let is_context = |l: &&diffy::Line<'_, str>| matches!(l, diffy::Line::Context(_));
    // A change can slide into repeated lines at either end; if it slid to the window's edge,
    // its hunk lost context there, and only the whole texts give the diff diffy would make.
    let short_lead =
        skip > 0 && hunks.first().is_some_and(|h| h.lines().iter().take_while(is_context).count() < CONTEXT);
    let short_tail =
        tail > 0 && hunks.last().is_some_and(|h| h.lines().iter().rev().take_while(is_context).count() < CONTEXT);
    if short_lead || short_tail {
        let whole = opts.create_patch(a, b);
        let changed = whole.hunks().iter().flat_map(|h| h.lines()).filter(|l| !is_context(l)).count();
        return (whole.to_string(), changed);
    }
    let changed = hunks.iter().flat_map(|h| h.lines()).filter(|l| !is_context(l)).count();
    let text = patch.to_string();
    if skip == 0 {
        return (text, changed);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        match hunk_header(line) {
            Some((old, old_len, new, new_len, rest)) => {
                out.push_str(&format!("@@ -{}{old_len} +{}{new_len} @@{rest}", old + skip, new + skip));
            }
            None => out.push_str(line),
        }
    }
    (out, changed)
}

/// `@@ -A[,B] +C[,D] @@…` as (A, ",B" or "", C, ",D" or "", what follows the second `@@`).
fn hunk_header(line: &str) -> Option<(usize, &str, usize, &str, &str)> {
    let body = line.strip_prefix("@@ -")?;
    let (ranges, rest) = body.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let ((a, al), (c, cl)) = (range_start(old)?, range_start(new)?);
    Some((a, al, c, cl, rest))
}

/// `12,5` as (12, ",5"); `12` as (12, "").
fn range_start(r: &str) -> Option<(usize, &str)> {
    let at = r.find(',').unwrap_or(r.len());
    Some((r[..at].parse().ok()?, &r[at..]))
}
