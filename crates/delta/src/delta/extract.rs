//! Finding the change in a model's raw reply: a unified diff (fenced or bare, with prose around it) or a whole program.
//! It only cuts text out of the reply; it never applies anything, and its guesses about prose are for the arch language's lines.

use serde::Serialize;

use super::hunk::{self, prose_like};
use super::{DeltaError, Limits};

/// What a reply holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Extracted {
    /// A unified diff, cut out of the reply with its original line endings.
    Diff {
        text: String,
        /// `@@` headers in it (0: a bare run of `+`/`-`/` ` lines).
        hunks: usize,
        /// It had `---`/`+++` file headers (whose names are ignored).
        had_headers: bool,
        /// It came from inside ``` fences.
        fenced: bool,
        /// Its lines ended in CR LF.
        crlf: bool,
        /// The reply had other text (prose, other blocks) around it.
        prose: bool,
    },
    /// A whole program instead of a diff: to be taken as a full replacement.
    FullProgram { text: String },
}

/// Finds the diff, or the whole program, in `reply`.
///
/// Preference: ```diff / ```patch fences (several are joined in order), then any fence holding
/// hunks, then a fence holding a program, then a bare diff, then a bare program.
pub fn extract(reply: &str, limits: &Limits) -> Result<Extracted, DeltaError> {
    if reply.len() > limits.max_bytes {
        return Err(DeltaError::too_large("reply", "bytes", reply.len(), limits.max_bytes));
    }
    // Lines keep their '\r' (so the diff keeps its endings); `bare` is for looking at them.
    let raw: Vec<&str> = reply.strip_suffix('\n').unwrap_or(reply).split('\n').collect();
    if raw.len() > limits.max_lines {
        return Err(DeltaError::too_large("reply", "lines", raw.len(), limits.max_lines));
    }
    let bare: Vec<&str> = raw.iter().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let blocks = fences(&bare);

    let tagged: Vec<&Block> = blocks.iter().filter(|b| b.tagged_diff()).collect();
    let hunked: Vec<&Block> = blocks.iter().filter(|b| !b.tagged_diff() && diff_like(&bare[b.body.clone()])).collect();
    let chosen = if !tagged.is_empty() { tagged } else { hunked };
    if !chosen.is_empty() {
        let diff_blocks: Vec<&Block> = chosen.iter().copied().filter(|b| diff_like(&bare[b.body.clone()])).collect();
        if diff_blocks.is_empty() {
            // A ```diff fence around a plain program: the model sent the whole thing.
            if let Some(b) = chosen.iter().rev().find(|b| program_like(&bare[b.body.clone()])) {
                return Ok(Extracted::FullProgram { text: join(&raw[b.body.clone()]) });
            }
            return Err(DeltaError::NoDiff {
                reason: "the ```diff block holds no hunk: no @@ header and no line starting \
                         with '+' or '-'"
                    .to_string(),
            });
        }
        let mut lines: Vec<&str> = Vec::new();
        for b in &diff_blocks {
            lines.extend_from_slice(&raw[b.body.clone()]);
        }
        let inside: usize = diff_blocks.iter().map(|b| b.body.len() + 2).sum();
        let prose = bare.iter().filter(|l| !l.trim().is_empty()).count() > inside;
        return diff(lines, true, prose, limits);
    }

    if let Some(b) = blocks.iter().rev().find(|b| program_like(&bare[b.body.clone()])) {
        return Ok(Extracted::FullProgram { text: join(&raw[b.body.clone()]) });
    }

    if let Some(range) = bare_diff(&bare) {
        let prose = bare[..range.start].iter().chain(&bare[range.end..]).any(|l| !l.trim().is_empty());
        return diff(raw[range].to_vec(), false, prose, limits);
    }
    if let Some(range) = bare_program(&bare) {
        return Ok(Extracted::FullProgram { text: join(&raw[range]) });
    }
    Err(DeltaError::NoDiff {
        reason: "the reply has no ```diff block, no @@ hunk header, no ---/+++ file header \
                 and no whole program (no `net {` line)"
            .to_string(),
    })
}

fn diff(lines: Vec<&str>, fenced: bool, prose: bool, limits: &Limits) -> Result<Extracted, DeltaError> {
    let text = join(&lines);
    // Reading it now turns broken headers and limits into verdicts at extraction.
    hunk::parse(&text, limits)?;
    let stripped: Vec<&str> = lines.iter().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let crlf = lines.iter().any(|l| l.ends_with('\r'));
    let hunks = stripped.iter().filter(|l| l.starts_with("@@")).count();
    let had_headers = stripped.windows(2).any(|w| w[0].starts_with("--- ") && w[1].starts_with("+++ "));
    Ok(Extracted::Diff { text, hunks, had_headers, fenced, crlf, prose })
}

fn join(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    if !lines.is_empty() {
        s.push('\n');
    }
    s
}

/// A fenced block: its info string and the range of its body lines.
struct Block {
    info: String,
    body: std::ops::Range<usize>,
}

impl Block {
    fn tagged_diff(&self) -> bool {
        matches!(self.info.as_str(), "diff" | "patch" | "udiff" | "unified-diff")
    }
}

/// The ``` and ~~~ fenced blocks of a reply. An unclosed fence runs to the end, as a reply
/// cut off by a token limit would.
fn fences(lines: &[&str]) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let fence = if t.starts_with("```") {
            '`'
        } else if t.starts_with("~~~") {
            '~'
        } else {
            i += 1;
            continue;
        };
        let width = t.chars().take_while(|&c| c == fence).count();
        let info = t[width..].split_whitespace().next().unwrap_or("").to_ascii_lowercase();
        let start = i + 1;
        let mut end = start;
        while end < lines.len() {
            let c = lines[end].trim();
            if c.len() >= width && c.chars().all(|ch| ch == fence) {
                break;
            }
            end += 1;
        }
        blocks.push(Block { info, body: start..end });
        i = end + 1;
    }
    blocks
}

fn is_change(l: &str) -> bool {
    (l.starts_with('+') && !l.starts_with("+++ ")) || (l.starts_with('-') && !l.starts_with("--- "))
}

/// Holds hunks: an `@@` header, a file header pair, or changed lines among context lines.
fn diff_like(lines: &[&str]) -> bool {
    lines.iter().any(|l| l.starts_with("@@"))
        || lines.windows(2).any(|w| w[0].starts_with("--- ") && w[1].starts_with("+++ "))
        || (lines.iter().any(|l| is_change(l)) && lines.iter().any(|l| l.starts_with(' ')))
}

/// Holds a whole program: a `net {` line and no hunk lines.
fn program_like(lines: &[&str]) -> bool {
    lines.iter().any(|l| is_net(l)) && !lines.iter().any(|l| is_change(l) || l.starts_with("@@"))
}

fn is_net(l: &str) -> bool {
    l.trim_start().strip_prefix("net").is_some_and(|r| r.trim_start().starts_with('{'))
}

/// The bare diff in a reply without fences: from the first header or hunk line while lines
/// read as a diff, ending at prose.
fn bare_diff(lines: &[&str]) -> Option<std::ops::Range<usize>> {
    let start = (0..lines.len()).find(|&i| {
        let l = lines[i];
        l.starts_with("@@")
            || l.starts_with("diff --git ")
            || (l.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ ")))
    });
    let Some(start) = start else {
        return headerless_run(lines);
    };
    let mut end = start;
    let mut i = start;
    while i < lines.len() {
        let l = lines[i];
        let after_gap = i > 0 && lines[i - 1].trim().is_empty();
        if l.is_empty() {
            i += 1;
            continue;
        }
        let prefixed = l.starts_with([' ', '+', '-', '\\']) || l.starts_with("@@");
        let header = l.starts_with("diff ") || l.starts_with("index ");
        if prefixed {
            // "- Replaced relu with gelu" after a paragraph break is a bullet, not a deletion.
            if after_gap && is_change(l) && prose_like(&l[1..]) {
                break;
            }
        } else if !header {
            // An unprefixed program line inside a hunk (a lost leading space) is kept when
            // more diff follows it; prose ends the diff.
            let next_diff = lines[i + 1..]
                .iter()
                .find(|n| !n.trim().is_empty())
                .is_some_and(|n| n.starts_with([' ', '+', '-']) || n.starts_with("@@"));
            if prose_like(l) || !next_diff {
                break;
            }
        }
        i += 1;
        end = i;
    }
    Some(start..end)
}

/// Without any header: the longest run of ` `/`+`/`-` lines that changes something and has
/// context (a list of "- " bullets has none).
fn headerless_run(lines: &[&str]) -> Option<std::ops::Range<usize>> {
    let mut best: Option<std::ops::Range<usize>> = None;
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with([' ', '+', '-']) {
            i += 1;
            continue;
        }
        let start = i;
        while i < lines.len() && lines[i].starts_with([' ', '+', '-']) {
            i += 1;
        }
        let run = &lines[start..i];
        let changes = run.iter().any(|l| is_change(l) && !prose_like(&l[1..]));
        let context = run.iter().any(|l| l.starts_with(' ') && !l.trim().is_empty());
        if changes && context && best.as_ref().is_none_or(|b| b.len() < run.len()) {
            best = Some(start..i);
        }
    }
    best
}

/// A bare program: from its first line (a comment, `arch`, `block` or `net`) to the last
/// closing brace.
fn bare_program(lines: &[&str]) -> Option<std::ops::Range<usize>> {
    let net = lines.iter().position(|l| is_net(l))?;
    let starts = |l: &str| l.starts_with("arch ") || l.starts_with("block ") || is_net(l) || l.starts_with('#');
    let mut start = (0..=net).find(|&i| starts(lines[i]))?;
    // Comments directly above count only when a program line follows them.
    while start < net && lines[start].starts_with('#') && lines[start + 1].trim().is_empty() {
        start = (start + 1..=net).find(|&i| starts(lines[i]))?;
    }
    let end = (net..lines.len()).rev().find(|&i| lines[i].trim() == "}")?;
    Some(start..end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(reply: &str) -> Extracted {
        extract(reply, &Limits::default()).expect("extracts")
    }

    #[test]
    fn fenced_diff_with_prose_around() {
        let r = "Here is my change:\n```diff\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n```\nThis should help.\n";
        match ex(r) {
            Extracted::Diff { text, hunks, fenced, prose, .. } => {
                assert_eq!(text, "@@ -1,2 +1,2 @@\n a\n-b\n+c\n");
                assert_eq!(hunks, 1);
                assert!(fenced && prose);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_diff_stops_at_prose() {
        let r = "@@ -1,2 +1,2 @@\n a\n-b\n+c\n\nThis replaces b with c.\n";
        match ex(r) {
            Extracted::Diff { text, prose, .. } => {
                assert_eq!(text, "@@ -1,2 +1,2 @@\n a\n-b\n+c\n");
                assert!(prose);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_diff_stops_at_bullets() {
        let r = "@@ -1,2 +1,2 @@\n a\n-b\n+c\n\n- Replaced b with c for speed\n";
        match ex(r) {
            Extracted::Diff { text, .. } => assert_eq!(text, "@@ -1,2 +1,2 @@\n a\n-b\n+c\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fenced_program_is_a_full_program() {
        let r = "New version:\n```arch\narch x\n\nnet {\n  relu\n}\n```\n";
        assert_eq!(ex(r), Extracted::FullProgram { text: "arch x\n\nnet {\n  relu\n}\n".to_string() });
    }

    #[test]
    fn bare_program_is_a_full_program() {
        let r = "Sure! Here it is.\n\narch x\nnet {\n  relu\n}\nHope that helps.\n";
        assert_eq!(ex(r), Extracted::FullProgram { text: "arch x\nnet {\n  relu\n}\n".to_string() });
    }

    #[test]
    fn crlf_is_kept_and_reported() {
        let r = "```diff\r\n@@ -1 +1 @@\r\n-a\r\n+b\r\n```\r\n";
        match ex(r) {
            Extracted::Diff { text, crlf, .. } => {
                assert!(crlf);
                assert_eq!(text, "@@ -1 +1 @@\r\n-a\r\n+b\r\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn several_diff_fences_are_joined() {
        let r = "```diff\n@@ -1 +1 @@\n-a\n+b\n```\nand\n```diff\n@@ -5 +5 @@\n-c\n+d\n```\n";
        match ex(r) {
            Extracted::Diff { hunks, .. } => assert_eq!(hunks, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prose_alone_is_no_diff() {
        let e = extract("I think we should add dropout.\n- more layers\n", &Limits::default()).unwrap_err();
        assert_eq!(e.verdict(), crate::Verdict::NoDiff);
    }

    #[test]
    fn oversized_reply_is_refused() {
        let limits = Limits { max_bytes: 10, ..Limits::default() };
        let e = extract("@@ -1 +1 @@\n-a\n+b\n", &limits).unwrap_err();
        assert!(matches!(e, DeltaError::TooLarge { .. }));
        assert_eq!(e.verdict(), crate::Verdict::MalformedDiff);
    }
}
