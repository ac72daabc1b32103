//! The front half of the verdict pipeline: a model's reply against a base program, judged by extract → apply → parse → check → novelty.
//! It decides and explains, and never panics on a reply; it writes nothing (recording a candidate in the archive is the caller's choice).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{apply, extract, ApplyOptions, DeltaError, Extracted, Tolerance};
use crate::novelty::{self, Archive, Fingerprint, Novelty, NoveltyVerdict, StructuralHash};
use nasc_lang::check::{self, Binding, Budget, Checked};
use nasc_lang::diag::{self, Diagnostic, LineIndex};
use nasc_lang::syntax;

/// The verdict taxonomy of a candidate, from the front half (extract → apply → parse → check →
/// novelty) to training, one enum from the judge to the run store and the JSON. Every verdict is
/// spelled one way wherever it is printed, serialised or stored: [`Verdict::as_str`], which
/// `Display`, `FromStr` and serde agree with.
///
/// The front half gives one of [`Verdict::FRONT`]; a candidate it judges `ok` is trained, and
/// training gives one of [`Verdict::TRAINING`] (`ok` again when it trained to the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The generator gave no reply: its server refused or failed the request (the message
    /// says why). Nothing to judge.
    GeneratorError,
    /// Nothing in the reply looks like a diff or a program.
    NoDiff,
    /// Something diff-like that cannot be read as hunks, or an input over the limits.
    MalformedDiff,
    /// A hunk matches nowhere in the base program.
    DoesNotApply,
    /// A hunk matches equally well at two places.
    Ambiguous,
    /// The program the reply made does not parse.
    ParseError,
    /// The program parses but does not check (shapes, names, arguments).
    ShapeError,
    /// The program checks but is over the parameter or MAC budget.
    OverBudget,
    /// The same network as the base or an archived one.
    Duplicate,
    /// Too similar to an archived network to be worth training.
    NearDuplicate,
    /// From the front half: new, and it checks. From training: trained and evaluated.
    Ok,
    /// The loss became NaN or infinite; training stopped there.
    Diverged,
    /// The memory estimate passed the limit (checked before training), or a
    /// device allocation failed.
    Oom,
    /// The wall-time limit passed during training.
    Timeout,
    /// Training panicked for another reason: a bug in nasc or Burn, caught so
    /// that one candidate cannot take the search down. The message holds the panic.
    Crashed,
}

impl Verdict {
    /// The front half's verdicts, in pipeline order.
    pub const FRONT: [Verdict; 11] = [
        Verdict::GeneratorError,
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

    /// Training's verdicts: `ok`, then the ways training fails.
    pub const TRAINING: [Verdict; 5] =
        [Verdict::Ok, Verdict::Diverged, Verdict::Oom, Verdict::Timeout, Verdict::Crashed];

    /// Every verdict: the front half's in pipeline order, then training's failures.
    pub const ALL: [Verdict; 15] = [
        Verdict::GeneratorError,
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
        Verdict::Diverged,
        Verdict::Oom,
        Verdict::Timeout,
        Verdict::Crashed,
    ];

    /// The verdict's name, as printed, serialised and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::GeneratorError => "generator_error",
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
            Verdict::Diverged => "diverged",
            Verdict::Oom => "oom",
            Verdict::Timeout => "timeout",
            Verdict::Crashed => "crashed",
        }
    }

    /// Whether the front half gives this verdict (one of [`Verdict::FRONT`]; `ok` included).
    pub fn is_front(self) -> bool {
        !matches!(self, Verdict::Diverged | Verdict::Oom | Verdict::Timeout | Verdict::Crashed)
    }

    /// Whether training gives this verdict (one of [`Verdict::TRAINING`]; `ok` included).
    pub fn is_training(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::Diverged | Verdict::Oom | Verdict::Timeout | Verdict::Crashed)
    }

    /// The verdict of a parser or checker diagnostic: `parse_error`, `over_budget`, else
    /// `shape_error`.
    pub fn of_diagnostic(d: &Diagnostic) -> Verdict {
        d.code.verdict().parse().unwrap_or(Verdict::ShapeError)
    }
}

impl std::fmt::Display for Verdict {
    /// The name, padded to the width a format asks for (`{:<10}` in tables).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is not a verdict's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVerdict(pub String);

impl std::fmt::Display for UnknownVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown verdict {:?}: expected one of ", self.0)?;
        for (i, v) in Verdict::ALL.iter().enumerate() {
            write!(f, "{}{v}", if i == 0 { "" } else { ", " })?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownVerdict {}

impl std::str::FromStr for Verdict {
    type Err = UnknownVerdict;

    /// The verdict named `s`, spelled as [`Verdict::as_str`] spells it.
    fn from_str(s: &str) -> Result<Verdict, UnknownVerdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownVerdict(s.to_string()))
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
    /// What extraction found in the reply: the diff, or the whole program a reply gave
    /// instead; `None` when extraction failed. Kept for the caller that stores the reply's
    /// parts (the search); not in the JSON, where `candidate` and `diff` say the same.
    #[serde(skip)]
    pub extracted: Option<String>,
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
    /// The judgement of a reply that never came: `generator_error`, with the generator's message.
    pub fn generator_error(message: String) -> Judgement {
        Judgement { message, ..Judgement::new(Verdict::GeneratorError) }
    }

    fn new(verdict: Verdict) -> Judgement {
        Judgement {
            verdict,
            message: String::new(),
            diagnostics: Vec::new(),
            delta_error: None,
            tolerances: Vec::new(),
            extracted: None,
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

/// Runs the pipeline on one reply against a base prepared with [`Base::new`] (once for many
/// replies). A reply holding a whole program instead of a diff is taken
/// as a full replacement (tolerance `full_program`).
pub fn judge(base: &Base, reply: &str, archive: Option<&Archive>, opts: &Options) -> Judgement {
    judge_reply(base, reply, false, archive, opts)
}

/// [`judge`] for a reply the generator may have cut at its token limit (`truncated`): an
/// unfinished last line is dropped, and so are removed lines at the very end (a change whose
/// replacement was cut off), with the tolerance `truncated`; what came before is judged, so a
/// diff cut after its change counts as what it says so far instead of failing on half a line.
pub fn judge_reply(base: &Base, reply: &str, truncated: bool, archive: Option<&Archive>, opts: &Options) -> Judgement {
    let start = Instant::now();
    let mut j = match truncated.then(|| cut_short(reply)).flatten() {
        Some(kept) => {
            let mut j = run(base, kept, archive, opts);
            j.tolerances.insert(0, Tolerance::Truncated);
            j
        }
        None => run(base, reply, archive, opts),
    };
    j.timings.total_ns = ns(start);
    j
}

/// What is kept of a reply cut at the token limit: up to its last whole line, less a block it
/// was adding and had not closed, and less the removed lines that then end it. `None` when
/// nothing is dropped.
fn cut_short(reply: &str) -> Option<&str> {
    let mut end = reply.rfind('\n').map_or(0, |i| i + 1);
    // An added block whose closing `+}` was cut would swallow the program after it.
    if let Some(open) = reply[..end].rfind("\n+block ") {
        if !reply[open..end].lines().any(|l| l == "+}") {
            end = open + 1;
        }
    }
    loop {
        let body = &reply[..end];
        let start = body[..body.len().saturating_sub(1)].rfind('\n').map_or(0, |i| i + 1);
        let last = &body[start..];
        if end > 0 && last.starts_with('-') && !last.starts_with("---") {
            end = start;
        } else {
            break;
        }
    }
    (end < reply.len()).then(|| &reply[..end])
}

fn ns(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

fn delta_failure(mut j: Judgement, e: DeltaError) -> Judgement {
    j.verdict = e.verdict();
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
            j.extracted = Some(text.clone());
            text
        }
        Ok(Extracted::Diff { text, .. }) => {
            let t = Instant::now();
            let applied = apply(&base.text, &text, opts.apply);
            j.timings.apply_ns = ns(t);
            j.extracted = Some(text);
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
    j.verdict = diags.iter().find(|d| d.is_error()).map_or(Verdict::ShapeError, Verdict::of_diagnostic);
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

#[cfg(test)]
mod tests {
    use super::{UnknownVerdict, Verdict};

    #[test]
    fn every_verdict_round_trips_with_one_spelling() {
        for v in Verdict::ALL {
            let name = v.as_str();
            assert_eq!(name.parse::<Verdict>(), Ok(v));
            assert_eq!(v.to_string(), name);
            assert_eq!(format!("{v:<16}|"), format!("{name:<16}|"));
            assert_eq!(serde_json::to_value(v).unwrap(), name);
            assert_eq!(serde_json::from_value::<Verdict>(name.into()).unwrap(), v);
            assert!(v.is_front() || v.is_training(), "{v}");
            assert_eq!(v.is_front(), Verdict::FRONT.contains(&v), "{v}");
            assert_eq!(v.is_training(), Verdict::TRAINING.contains(&v), "{v}");
        }
        let mut names: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Verdict::ALL.len());
    }

    #[test]
    fn an_unknown_name_is_refused_and_named() {
        let e = "Ok".parse::<Verdict>().unwrap_err();
        assert_eq!(e, UnknownVerdict("Ok".into()));
        assert!(e.to_string().starts_with("unknown verdict \"Ok\": expected one of generator_error, no_diff, "), "{e}");
        assert!(serde_json::from_value::<Verdict>("finished".into()).is_err());
    }
}
