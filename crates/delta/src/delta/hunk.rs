//! The tolerant reader of unified diffs: hunks with or without headers, numbers or correct line counts.
//! It reads structure only; it never decides where a hunk goes (locate does) and ignores every file name.

use super::{DeltaError, Limits};

/// One line of a hunk, without its prefix and line ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Context(&'a str),
    Delete(&'a str),
    Insert(&'a str),
}

/// A hunk as read tolerantly, with what had to be forgiven to read it.
#[derive(Debug, Clone)]
pub(crate) struct Hunk<'a> {
    /// `(start, len)` of the old side as the header states it, when it states numbers.
    pub old: Option<(usize, usize)>,
    /// `(start, len)` of the new side as the header states it.
    pub new: Option<(usize, usize)>,
    /// The hunk's lines: every hunk-like line up to the next hunk (the count is recomputed).
    pub lines: Vec<Line<'a>>,
    /// When the header's counts are met by a shorter prefix of `lines`, its length: the
    /// reading to fall back on when the longer one does not apply (trailing prose).
    pub stated_prefix: Option<usize>,
    /// The header's counts disagree with `lines`.
    pub recounted: bool,
    /// Lines after the header's counts that read as prose, dropped.
    pub trailing: usize,
    /// Some lines lacked the one-character prefix and were read as context.
    pub unprefixed: bool,
    /// There was no `@@` line at all: the diff is one bare run of lines.
    pub headerless: bool,
}

impl Hunk<'_> {
    /// The header gave usable line numbers.
    pub fn numbered(&self) -> bool {
        self.old.is_some() || self.new.is_some()
    }
}

/// A diff as read tolerantly.
#[derive(Debug, Clone)]
pub(crate) struct Diff<'a> {
    pub hunks: Vec<Hunk<'a>>,
    /// Some line ended in CR LF.
    pub crlf: bool,
    /// A pair of file headers that creates a file (`--- /dev/null`, true) or deletes one
    /// (`+++ /dev/null`, false), and the line it starts on (from 1).
    pub new_or_deleted: Option<(usize, bool)>,
}

/// A line of English, not of a program or a diff: several words and none of the arch
/// language's punctuation. No arch line reads so, which is what makes this usable.
pub(crate) fn prose_like(l: &str) -> bool {
    let t = l.trim();
    let words = t.split_whitespace().count();
    let punct = t.chars().any(|c| "(){}=|#<>[]@".contains(c));
    // A lead-in ("Changes:") or a sentence's end is prose even when short.
    !punct && (words >= 3 || t.ends_with(':') || (words >= 2 && t.ends_with('.')))
}

/// Largest line number accepted in a header; beyond it the header is nonsense, not drift.
const MAX_LINE_NUMBER: usize = 1_000_000_000;

/// Reads `diff` into hunks. Errors only when there is nothing to read or a header is broken
/// beyond guessing; lines that merely look wrong are forgiven and flagged on the hunk.
pub(crate) fn parse<'a>(diff: &'a str, limits: &Limits) -> Result<Diff<'a>, DeltaError> {
    if diff.len() > limits.max_bytes {
        return Err(DeltaError::too_large("diff", "bytes", diff.len(), limits.max_bytes));
    }
    let (lines, crlf) = split_lines(diff);
    if lines.len() > limits.max_lines {
        return Err(DeltaError::too_large("diff", "lines", lines.len(), limits.max_lines));
    }
    let headers = lines.iter().filter(|l| l.starts_with("@@")).count();
    if headers > limits.max_hunks {
        return Err(DeltaError::too_large("diff", "hunks", headers, limits.max_hunks));
    }

    let hunks = if headers == 0 { vec![headerless(&lines)?] } else { headed(&lines)? };
    if !hunks.iter().any(|h| h.lines.iter().any(|l| !matches!(l, Line::Context(_)))) {
        return Err(DeltaError::malformed(None, "the diff changes nothing: no line starts with '+' or '-'"));
    }
    let new_or_deleted = lines.windows(2).enumerate().find_map(|(i, pair)| {
        let creates = pair[0].starts_with("--- /dev/null") && pair[1].starts_with("+++ ");
        let deletes = pair[0].starts_with("--- ") && pair[1].starts_with("+++ /dev/null");
        (creates || deletes).then_some((i + 1, creates))
    });
    Ok(Diff { hunks, crlf, new_or_deleted })
}

/// Splits text into lines without their endings; reports whether any ended in CR LF.
pub(crate) fn split_lines(text: &str) -> (Vec<&str>, bool) {
    let mut crlf = false;
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return (Vec::new(), false);
    }
    let lines = body
        .split('\n')
        .map(|l| match l.strip_suffix('\r') {
            Some(l) => {
                crlf = true;
                l
            }
            None => l,
        })
        .collect();
    (lines, crlf)
}

fn is_file_header(lines: &[&str], i: usize) -> bool {
    let l = lines[i];
    l.starts_with("diff --git ") || (l.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ ")))
}

/// A diff with `@@` lines: preamble before the first is skipped, each header owns the lines
/// up to the next header or file header.
fn headed<'a>(lines: &[&'a str]) -> Result<Vec<Hunk<'a>>, DeltaError> {
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("@@")).collect();
    let mut hunks = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let limit = starts.get(n + 1).copied().unwrap_or(lines.len());
        let mut end = start + 1;
        while end < limit && !is_file_header(lines, end) {
            end += 1;
        }
        let (old, new) =
            header(lines[start]).map_err(|e| DeltaError::malformed(Some(start + 1), format!("hunk {}: {e}", n + 1)))?;
        let body = &lines[start + 1..end];
        if body.iter().all(|l| l.trim().is_empty()) {
            return Err(DeltaError::malformed(Some(start + 1), format!("hunk {} has a header but no lines", n + 1)));
        }
        hunks.push(hunk(old, new, body, false));
    }
    Ok(hunks)
}

/// A diff without any `@@` line: after the file headers, one run of hunk lines.
fn headerless<'a>(lines: &[&'a str]) -> Result<Hunk<'a>, DeltaError> {
    let first = lines.iter().position(|l| {
        !(l.starts_with("--- ")
            || l.starts_with("+++ ")
            || l.starts_with("diff ")
            || l.starts_with("index ")
            || l.trim().is_empty())
    });
    let Some(first) = first else {
        return Err(DeltaError::NoDiff { reason: "the diff has no hunks".to_string() });
    };
    let h = hunk(None, None, &lines[first..], true);
    if h.lines.iter().all(|l| matches!(l, Line::Context(_))) {
        return Err(DeltaError::NoDiff {
            reason: "there is no @@ hunk header and no line starting with '+' or '-'".to_string(),
        });
    }
    // Without a header, an unprefixed line is more likely prose than context.
    let unprefixed = lines[first..].iter().any(|l| !l.is_empty() && !l.starts_with([' ', '+', '-', '\\']));
    if unprefixed {
        return Err(DeltaError::malformed(
            None,
            "there is no @@ hunk header, and some lines start with neither ' ', '+' nor '-'",
        ));
    }
    Ok(h)
}

fn hunk<'a>(old: Option<(usize, usize)>, new: Option<(usize, usize)>, body: &[&'a str], headerless: bool) -> Hunk<'a> {
    // Prose after a hunk ("- Swapped relu for gelu", "This should help.") is never a
    // program line, whatever its prefix: drop it before counting.
    let mut end = body.len();
    while end > 0 && (body[end - 1].trim().is_empty() || trailing_prose(body[end - 1])) {
        end -= 1;
    }
    let trailing = body[end..].iter().filter(|l| !l.trim().is_empty()).count();
    let body = if trailing > 0 { &body[..end] } else { body };

    let mut unprefixed = false;
    let mut all: Vec<Line<'a>> = Vec::with_capacity(body.len());
    for l in body {
        let line = if let Some(rest) = l.strip_prefix(' ') {
            Line::Context(rest)
        } else if let Some(rest) = l.strip_prefix('+') {
            Line::Insert(rest)
        } else if let Some(rest) = l.strip_prefix('-') {
            Line::Delete(rest)
        } else if l.starts_with('\\') {
            // "\ No newline at end of file": the engine keeps the program's own final newline.
            continue;
        } else if l.is_empty() {
            Line::Context("")
        } else {
            unprefixed = true;
            Line::Context(l)
        };
        all.push(line);
    }
    let mut trimmed = all.len();
    while trimmed > 0 && all[trimmed - 1] == Line::Context("") {
        trimmed -= 1;
    }

    let mut lines = all;
    let mut recounted = false;
    let mut stated_prefix = None;
    if let (Some((_, old_len)), Some((_, new_len))) = (old, new) {
        let stated = (old_len, new_len);
        if counts(&lines) == stated {
            // exactly as stated
        } else if counts(&lines[..trimmed]) == stated {
            lines.truncate(trimmed);
        } else {
            lines.truncate(trimmed);
            recounted = true;
            stated_prefix = prefix_meeting(&lines, stated);
        }
    } else {
        lines.truncate(trimmed);
    }
    Hunk { old, new, lines, stated_prefix, trailing, recounted, unprefixed: unprefixed && !headerless, headerless }
}

/// A diff line that is prose once its one-character prefix (if any) is taken off.
fn trailing_prose(l: &str) -> bool {
    if l.starts_with('\\') {
        return false;
    }
    prose_like(l.strip_prefix([' ', '+', '-']).unwrap_or(l))
}

/// (old, new) line counts of a hunk body.
pub(crate) fn counts(lines: &[Line<'_>]) -> (usize, usize) {
    lines.iter().fold((0, 0), |(o, n), l| match l {
        Line::Context(_) => (o + 1, n + 1),
        Line::Delete(_) => (o + 1, n),
        Line::Insert(_) => (o, n + 1),
    })
}

/// The shortest non-empty prefix whose counts equal `stated`, if one is shorter than `lines`.
fn prefix_meeting(lines: &[Line<'_>], stated: (usize, usize)) -> Option<usize> {
    let (mut o, mut n) = (0, 0);
    for (i, l) in lines.iter().enumerate() {
        match l {
            Line::Context(_) => {
                o += 1;
                n += 1
            }
            Line::Delete(_) => o += 1,
            Line::Insert(_) => n += 1,
        }
        if (o, n) == stated {
            return (i + 1 < lines.len()).then_some(i + 1);
        }
        if o > stated.0 || n > stated.1 {
            return None;
        }
    }
    None
}

type Range = Option<(usize, usize)>;

/// Reads `@@ -a,b +c,d @@ ...` tolerantly: a missing closing `@@`, missing counts and
/// placeholder numbers (`@@ -N,M +N,M @@`, `@@ ... @@`) are accepted as "no numbers";
/// digits followed by junk are not, since they suggest a real number was garbled.
fn header(line: &str) -> Result<(Range, Range), String> {
    if line.starts_with("@@@") {
        return Err("a combined-diff header (@@@); only two-way unified diffs are read".to_string());
    }
    let rest = &line[2..];
    let inner = match rest.find("@@") {
        Some(end) => &rest[..end],
        None => rest,
    };
    let mut old = None;
    let mut new = None;
    for tok in inner.split_whitespace() {
        if let Some(r) = tok.strip_prefix('-') {
            if old.is_none() {
                old = range(r)?;
            }
        } else if let Some(r) = tok.strip_prefix('+') {
            if new.is_none() {
                new = range(r)?;
            }
        }
    }
    Ok((old, new))
}

fn range(s: &str) -> Result<Range, String> {
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(None);
    }
    let bad = || format!("the range '{s}' is not 'start,count' in digits");
    let (start, len) = match s.split_once(',') {
        Some((a, b)) => (number(a).ok_or_else(bad)?, number(b).ok_or_else(bad)?),
        None => (number(s).ok_or_else(bad)?, 1),
    };
    Ok(Some((start, len)))
}

fn number(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n <= MAX_LINE_NUMBER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(d: &str) -> Diff<'_> {
        parse(d, &Limits::default()).expect("parses")
    }

    #[test]
    fn reads_a_standard_hunk() {
        let d = parse_ok("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n");
        assert_eq!(d.hunks.len(), 1);
        let h = &d.hunks[0];
        assert_eq!(h.old, Some((1, 2)));
        assert_eq!(h.new, Some((1, 2)));
        assert!(!h.recounted && !h.unprefixed && !h.headerless);
        assert_eq!(h.lines, vec![Line::Context("a"), Line::Delete("b"), Line::Insert("c")]);
    }

    #[test]
    fn recounts_wrong_counts() {
        let d = parse_ok("@@ -1,7 +1,9 @@\n a\n-b\n+c\n");
        assert!(d.hunks[0].recounted);
        assert_eq!(d.hunks[0].lines.len(), 3);
    }

    #[test]
    fn keeps_the_stated_prefix_as_a_fallback() {
        let d = parse_ok("@@ -1,2 +1,2 @@\n a\n-b\n+c\n-d\n");
        let h = &d.hunks[0];
        assert!(h.recounted);
        assert_eq!(h.stated_prefix, Some(3));
    }

    #[test]
    fn prose_after_the_stated_counts_is_dropped() {
        let d = parse_ok("@@ -1,2 +1,2 @@\n a\n-b\n+c\n+ This swaps b for c.\n");
        let h = &d.hunks[0];
        assert!(!h.recounted);
        assert_eq!((h.lines.len(), h.trailing), (3, 1));
    }

    #[test]
    fn prose_after_a_miscounted_hunk_is_dropped_too() {
        let d = parse_ok("@@ -1,9 +1,9 @@\n a\n-b\n+c\n\nThis should help. Let me know!\n");
        let h = &d.hunks[0];
        assert!(h.recounted && !h.unprefixed);
        assert_eq!((h.lines.len(), h.trailing), (3, 1));
    }

    #[test]
    fn placeholder_numbers_mean_no_numbers() {
        for hdr in ["@@", "@@ @@", "@@ ... @@", "@@ -N,M +N,M @@"] {
            let text = format!("{hdr}\n a\n-b\n");
            let d = parse_ok(&text);
            assert!(!d.hunks[0].numbered(), "{hdr}");
        }
    }

    #[test]
    fn garbled_numbers_are_malformed() {
        let e = parse("@@ -1x,2 +1,2 @@\n a\n-b\n", &Limits::default()).unwrap_err();
        assert_eq!(e.verdict(), crate::Verdict::MalformedDiff);
    }

    #[test]
    fn unprefixed_lines_are_context() {
        let d = parse_ok("@@ -1,3 +1,3 @@\nnet {\n-  relu\n+  gelu\n");
        assert!(d.hunks[0].unprefixed);
        assert_eq!(d.hunks[0].lines[0], Line::Context("net {"));
    }

    #[test]
    fn headerless_run_is_one_hunk() {
        let d = parse_ok("--- a\n+++ b\n bn\n-relu\n+gelu\n");
        assert!(d.hunks[0].headerless);
        assert_eq!(d.hunks[0].lines.len(), 3);
    }

    #[test]
    fn crlf_is_reported_and_stripped() {
        let d = parse_ok("@@ -1 +1 @@\r\n-a\r\n+b\r\n");
        assert!(d.crlf);
        assert_eq!(d.hunks[0].lines, vec![Line::Delete("a"), Line::Insert("b")]);
    }

    #[test]
    fn a_diff_of_only_context_changes_nothing() {
        let e = parse("@@ -1 +1 @@\n a\n", &Limits::default()).unwrap_err();
        assert_eq!(e.verdict(), crate::Verdict::MalformedDiff);
    }

    #[test]
    fn too_many_hunks_is_refused_before_reading_them() {
        let d = "@@ -1 +1 @@\n-a\n+b\n".repeat(20);
        let limits = Limits { max_hunks: 10, ..Limits::default() };
        let e = parse(&d, &limits).unwrap_err();
        assert!(matches!(e, DeltaError::TooLarge { .. }));
    }
}
