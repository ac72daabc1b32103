//! Applying a unified diff to the program it was made against: strictly with diffy first, then tolerantly, recording each tolerance.
//! It patches only the text it is given (file names in the diff are ignored) and never guesses between equally good places.

use serde::{Deserialize, Serialize};

use super::error::Closest;
use super::hunk::{self, Hunk, Line};
use super::locate::{self, Base, Found, Outcome, Pre, Work};
use super::{DeltaError, Limits};

/// How forgiving application is, and how much work it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Most context lines that may be ignored at each end of a hunk, as GNU patch's `--fuzz`.
    pub fuzz: usize,
    pub limits: Limits,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { fuzz: 2, limits: Limits::default() }
    }
}

/// The patched program and everything that had to be forgiven to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub text: String,
    /// Empty when the diff applied strictly.
    pub tolerances: Vec<Tolerance>,
}

/// One thing forgiven while applying a diff. `hunk` is 1-based in the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tolerance {
    /// The hunk matched `by` lines away from where its header put it (positive: further down).
    Drifted { hunk: usize, by: i64 },
    /// The header's line counts were wrong; the hunk's lines were counted instead.
    Recounted { hunk: usize },
    /// Lines matched only when whitespace and indentation were ignored, or lacked their
    /// one-character diff prefix. Unchanged lines keep the program's own spacing.
    Whitespace { hunk: usize },
    /// Blank lines in the hunk and the program did not correspond.
    BlankLines { hunk: usize },
    /// `lines` context lines at the ends of the hunk were ignored to make it match.
    Fuzz { hunk: usize, lines: usize },
    /// The `@@` header had no usable line numbers; the hunk matched in one place only.
    NoLineNumbers { hunk: usize },
    /// The diff had no `@@` header at all; it was read as one hunk.
    NoHunkHeader { hunk: usize },
    /// `lines` lines after the hunk's stated length were not diff lines and were ignored.
    TrailingText { hunk: usize, lines: usize },
    /// The diff's line endings (CR LF or LF) differed from the program's.
    LineEndings,
    /// The reply held a whole program, taken as a full replacement.
    FullProgram,
    /// The reply was cut at the token limit in the middle of a line; that line was dropped and
    /// the rest judged as the diff it is so far.
    Truncated,
}

impl Tolerance {
    /// The tolerance's name, as serialised.
    pub fn kind(&self) -> &'static str {
        match self {
            Tolerance::Drifted { .. } => "drifted",
            Tolerance::Recounted { .. } => "recounted",
            Tolerance::Whitespace { .. } => "whitespace",
            Tolerance::BlankLines { .. } => "blank_lines",
            Tolerance::Fuzz { .. } => "fuzz",
            Tolerance::NoLineNumbers { .. } => "no_line_numbers",
            Tolerance::NoHunkHeader { .. } => "no_hunk_header",
            Tolerance::TrailingText { .. } => "trailing_text",
            Tolerance::LineEndings => "line_endings",
            Tolerance::FullProgram => "full_program",
            Tolerance::Truncated => "truncated",
        }
    }
}

/// Applies the unified diff `diff` to `base`.
///
/// Strict first: if diffy parses the diff, every count is right and every hunk sits exactly at
/// its stated line, the result has no tolerances. Otherwise each hunk, in order, is placed at
/// the best of: an exact match, a whitespace-blind one, a blank-line-blind one, then one with
/// up to `opts.fuzz` context lines ignored at each end; the nearest to the stated line wins,
/// and two equally good places are `ambiguous`.
pub fn apply(base: &str, diff: &str, opts: ApplyOptions) -> Result<Applied, DeltaError> {
    let limits = &opts.limits;
    if base.len() > limits.max_bytes {
        return Err(DeltaError::too_large("program", "bytes", base.len(), limits.max_bytes));
    }
    let (base_lines, base_crlf) = hunk::split_lines(base);
    if base_lines.len() > limits.max_lines {
        return Err(DeltaError::too_large("program", "lines", base_lines.len(), limits.max_lines));
    }
    let parsed = hunk::parse(diff, limits)?;
    // A diff that creates a file (`--- /dev/null`) or deletes one (`+++ /dev/null`) is not a
    // change of this program: spliced in as hunks, it would add a second program to it, or
    // empty it.
    if let Some((line, creates)) = parsed.new_or_deleted.filter(|&(_, creates)| !creates || !base.trim().is_empty()) {
        let what = if creates { "creates a new file (`--- /dev/null`)" } else { "deletes the file (`+++ /dev/null`)" };
        return Err(DeltaError::malformed(
            Some(line),
            format!("the diff {what}; a change of the program names it in both headers (`--- a/program.arch`, `+++ b/program.arch`)"),
        ));
    }

    let eol = if base_crlf { "\r\n" } else { "\n" };
    let final_newline = base.is_empty() || base.ends_with('\n');

    if parsed.crlf == base_crlf {
        if let Some(text) = strict(base, &base_lines, diff, &parsed.hunks) {
            return Ok(Applied { text, tolerances: Vec::new() });
        }
    }

    let mut tolerances = Vec::new();
    if parsed.crlf != base_crlf && !base_lines.is_empty() {
        tolerances.push(Tolerance::LineEndings);
    }
    let base = Base::new(base_lines);
    let mut tolerant = Tolerant {
        base: &base,
        fuzz: opts.fuzz,
        work: Work { used: 0, max: limits.max_work },
        out: Vec::with_capacity(base.len()),
        cursor: 0,
        drift: 0,
        line_delta: 0,
        hunks: parsed.hunks.len(),
    };
    for (i, h) in parsed.hunks.iter().enumerate() {
        tolerant.hunk(i + 1, h, &mut tolerances)?;
    }
    let mut out = tolerant.out;
    out.extend_from_slice(&base.lines[tolerant.cursor..]);

    let mut text = out.join(eol);
    if final_newline && !out.is_empty() {
        text.push_str(eol);
    }
    Ok(Applied { text, tolerances })
}

/// The strict path: diffy's parse and apply, taken only when the diff is exactly right, so that
/// a result without tolerances means the diff needed none. Confirmed against a plain splice at
/// the stated lines, since diffy itself silently searches for drifted hunks.
fn strict(base: &str, lines: &[&str], diff: &str, hunks: &[Hunk<'_>]) -> Option<String> {
    let mut spliced: Vec<&str> = Vec::with_capacity(lines.len());
    let mut cursor = 0;
    for h in hunks {
        let ((start, len), _) = h.old.zip(h.new)?;
        if h.recounted || h.unprefixed || h.headerless || h.trailing > 0 {
            return None;
        }
        let at = if len == 0 { start } else { start.checked_sub(1)? };
        if at < cursor || at + len > lines.len() {
            return None;
        }
        spliced.extend_from_slice(&lines[cursor..at]);
        let mut i = at;
        for l in &h.lines {
            match *l {
                Line::Context(t) | Line::Delete(t) => {
                    if lines[i] != t {
                        return None;
                    }
                    if matches!(l, Line::Context(_)) {
                        spliced.push(t);
                    }
                    i += 1;
                }
                Line::Insert(t) => spliced.push(t),
            }
        }
        cursor = i;
    }
    spliced.extend_from_slice(&lines[cursor..]);

    let patch = diffy::Patch::from_str(diff).ok()?;
    if patch.hunks().len() != hunks.len()
        || patch.hunks().iter().zip(hunks).any(|(d, h)| d.lines().len() != h.lines.len())
    {
        return None;
    }
    let text = diffy::apply(base, &patch).ok()?;
    (hunk::split_lines(&text).0 == spliced).then_some(text)
}

/// Where a hunk goes: a match of its old lines, or, for a hunk that only adds lines, a line.
enum Place {
    Found(Found),
    Insert(usize),
}

/// The state of a tolerant application, hunk by hunk.
struct Tolerant<'b, 'a> {
    base: &'b Base<'a>,
    fuzz: usize,
    work: Work,
    /// The patched program up to `cursor`, the first program line not yet copied.
    out: Vec<&'a str>,
    cursor: usize,
    /// How far the last placed hunk was from its stated line: where to expect the next.
    drift: isize,
    /// Lines added minus lines removed so far, to turn new-side numbers into old-side ones.
    line_delta: isize,
    hunks: usize,
}

impl<'b, 'a> Tolerant<'b, 'a> {
    /// Places and applies hunk `n`, trying its full reading, then the one its header's counts
    /// give (which leaves trailing text out).
    fn hunk(&mut self, n: usize, h: &Hunk<'a>, tol: &mut Vec<Tolerance>) -> Result<(), DeltaError> {
        let stated = self.stated(h);
        let (place, lines) = match self.place(n, &h.lines, stated) {
            Ok(p) => (p, &h.lines[..]),
            Err(first) => match h.stated_prefix {
                Some(len) => match self.place(n, &h.lines[..len], stated) {
                    Ok(p) => (p, &h.lines[..len]),
                    Err(_) => return Err(first),
                },
                None => return Err(first),
            },
        };
        let used_prefix = lines.len() < h.lines.len();

        if h.headerless {
            tol.push(Tolerance::NoHunkHeader { hunk: n });
        } else if !h.numbered() {
            tol.push(Tolerance::NoLineNumbers { hunk: n });
        }
        if h.recounted && !used_prefix {
            tol.push(Tolerance::Recounted { hunk: n });
        }
        let trailing = h.trailing + h.lines.len() - lines.len();
        if trailing > 0 {
            tol.push(Tolerance::TrailingText { hunk: n, lines: trailing });
        }
        let key = match &place {
            Place::Found(f) => f.key,
            Place::Insert(at) => *at as isize,
        };
        if let Some(s) = stated {
            if key != s {
                tol.push(Tolerance::Drifted { hunk: n, by: (key - s) as i64 });
            }
            self.drift = key - s;
        }
        if let Place::Found(f) = &place {
            if h.unprefixed || f.whitespace {
                tol.push(Tolerance::Whitespace { hunk: n });
            }
            if f.blank_lines {
                tol.push(Tolerance::BlankLines { hunk: n });
            }
            if f.fuzz > 0 {
                tol.push(Tolerance::Fuzz { hunk: n, lines: f.fuzz });
            }
        } else if h.unprefixed {
            tol.push(Tolerance::Whitespace { hunk: n });
        }
        self.splice(lines, place);
        Ok(())
    }

    /// The 0-based program line where the header puts the hunk's first old line.
    fn stated(&self, h: &Hunk<'_>) -> Option<isize> {
        let has_old = h.lines.iter().any(|l| !matches!(l, Line::Insert(_)));
        match (h.old, h.new) {
            // `-5,0` means "after line 5"; so does `-5` on a hunk that only adds lines.
            (Some((start, len)), _) if len == 0 || !has_old => Some(start as isize),
            (Some((start, _)), _) => Some(start as isize - 1),
            (None, Some((start, _))) => Some(start as isize - 1 - self.line_delta),
            (None, None) => None,
        }
    }

    fn place(&mut self, n: usize, lines: &[Line<'_>], stated: Option<isize>) -> Result<Place, DeltaError> {
        let pre: Vec<Pre<'_>> = lines
            .iter()
            .filter_map(|l| match *l {
                Line::Context(t) => Some(Pre::new(t, true)),
                Line::Delete(t) => Some(Pre::new(t, false)),
                Line::Insert(_) => None,
            })
            .collect();
        let len = self.base.len();
        let expected = stated.map(|s| s + self.drift);

        if pre.is_empty() {
            return match expected {
                Some(e) => Ok(Place::Insert((e.max(0) as usize).clamp(self.cursor, len))),
                None if len == 0 => Ok(Place::Insert(0)),
                None => Err(DeltaError::DoesNotApply {
                    hunk: n,
                    hunks: self.hunks,
                    reason: "it only adds lines and has neither context lines nor line numbers, \
                             so nothing says where they go"
                        .to_string(),
                    expected: Vec::new(),
                    closest: None,
                }),
            };
        }

        let lead = lines.iter().take_while(|l| matches!(l, Line::Context(_))).count();
        let trail = lines.iter().rev().take_while(|l| matches!(l, Line::Context(_))).count();
        let expected_lines = || pre.iter().map(|p| p.text.to_string()).collect::<Vec<_>>();
        let found = locate::locate(self.base, &pre, lead, trail, self.cursor, expected, self.fuzz, &mut self.work);
        match found {
            Outcome::Found(f) => Ok(Place::Found(f)),
            Outcome::Ambiguous([a, b]) => Err(DeltaError::Ambiguous {
                hunk: n,
                hunks: self.hunks,
                lines: [a + 1, b + 1],
                expected: expected_lines(),
            }),
            Outcome::Exhausted => Err(DeltaError::DoesNotApply {
                hunk: n,
                hunks: self.hunks,
                reason: format!(
                    "the search for its place gave up after {} line comparisons (the work \
                     limit); the diff or the program is too large or too repetitive",
                    self.work.max
                ),
                expected: expected_lines(),
                closest: None,
            }),
            Outcome::NotFound => {
                let mut reason = self.why_not_found(n, &pre, lead, trail, expected);
                let closest = locate::closest(self.base, &pre, expected, &mut self.work).map(|s| Closest {
                    line: s + 1,
                    lines: self.base.lines[s.min(len)..(s + pre.len()).min(len)]
                        .iter()
                        .map(|l| l.to_string())
                        .collect(),
                });
                if closest.is_none() {
                    reason.push_str("; no line of the program is like them");
                }
                Err(DeltaError::DoesNotApply {
                    hunk: n,
                    hunks: self.hunks,
                    reason,
                    expected: expected_lines(),
                    closest,
                })
            }
        }
    }

    fn why_not_found(
        &mut self,
        n: usize,
        pre: &[Pre<'_>],
        lead: usize,
        trail: usize,
        expected: Option<isize>,
    ) -> String {
        if self.cursor > 0 {
            let earlier = match locate::locate(self.base, pre, lead, trail, 0, expected, self.fuzz, &mut self.work) {
                Outcome::Found(f) => Some(format!(" (at line {})", f.start + 1)),
                Outcome::Ambiguous(_) => Some(String::new()),
                Outcome::NotFound | Outcome::Exhausted => None,
            };
            if let Some(at) = earlier {
                return format!(
                    "its lines appear only above the end of hunk {}'s change{at}; hunks must \
                     follow the order of the program and must not overlap",
                    n - 1
                );
            }
        }
        format!(
            "its context and removed lines are not in the program, even ignoring whitespace \
             and blank lines and with up to {} context lines ignored at each end",
            self.fuzz
        )
    }

    /// Copies the program up to the hunk's place, then the hunk's result.
    fn splice(&mut self, lines: &[Line<'a>], place: Place) {
        let lines_all = &self.base.lines;
        match place {
            Place::Insert(at) => {
                self.out.extend_from_slice(&lines_all[self.cursor..at]);
                for l in lines {
                    if let Line::Insert(t) = l {
                        self.out.push(t);
                    }
                }
                self.line_delta += lines.len() as isize;
                self.cursor = at;
            }
            Place::Found(f) => {
                self.out.extend_from_slice(&lines_all[self.cursor..f.start]);
                let core_end = f.front + f.align.len();
                let mut i = 0; // index among the old lines
                let mut at = f.start;
                for l in lines {
                    match *l {
                        Line::Insert(t) => {
                            self.out.push(t);
                            self.line_delta += 1;
                        }
                        Line::Context(_) | Line::Delete(_) => {
                            let in_core = i >= f.front && i < core_end;
                            if let Some(b) = in_core.then(|| f.align[i - f.front]).flatten() {
                                self.out.extend_from_slice(&lines_all[at..b]);
                                if matches!(l, Line::Context(_)) {
                                    self.out.push(lines_all[b]);
                                } else {
                                    self.line_delta -= 1;
                                }
                                at = b + 1;
                            }
                            i += 1;
                        }
                    }
                }
                self.out.extend_from_slice(&lines_all[at..f.end]);
                self.cursor = f.end;
            }
        }
    }
}
