//! Finding where a hunk's old lines sit in the program: exact, then whitespace-blind, then blank-line-blind, then with fuzz.
//! It must stay bounded (every comparison is paid from a work budget) and must never guess: equally good places are reported, not chosen.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// The program being patched, with the indexes the search uses to jump to candidate places
/// instead of trying every line.
pub(crate) struct Base<'a> {
    pub lines: Vec<&'a str>,
    norm: Vec<String>,
    blank: Vec<bool>,
    exact_index: HashMap<u64, Vec<usize>>,
    norm_index: HashMap<u64, Vec<usize>>,
}

impl<'a> Base<'a> {
    pub fn new(lines: Vec<&'a str>) -> Self {
        let norm: Vec<String> = lines.iter().map(|l| normalize(l)).collect();
        let blank = norm.iter().map(|n| n.is_empty()).collect();
        let mut exact_index: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut norm_index: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, (l, n)) in lines.iter().zip(&norm).enumerate() {
            exact_index.entry(hash(l)).or_default().push(i);
            norm_index.entry(hash(n)).or_default().push(i);
        }
        Base { lines, norm, blank, exact_index, norm_index }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }
}

/// Whitespace carries no meaning inside an arch line, so lines that differ only in spaces,
/// tabs or indentation are the same line for matching.
pub(crate) fn normalize(line: &str) -> String {
    line.chars().filter(|c| !c.is_whitespace()).collect()
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// One old-side line of a hunk (context or removed).
pub(crate) struct Pre<'a> {
    pub text: &'a str,
    pub norm: String,
    pub blank: bool,
    pub context: bool,
}

impl<'a> Pre<'a> {
    pub fn new(text: &'a str, context: bool) -> Self {
        let norm = normalize(text);
        Pre { text, blank: norm.is_empty(), norm, context }
    }
}

/// The comparison budget shared by all hunks of one diff.
pub(crate) struct Work {
    pub used: u64,
    pub max: u64,
}

pub(crate) struct Exhausted;

impl Work {
    fn spend(&mut self, n: usize) -> Result<(), Exhausted> {
        self.used = self.used.saturating_add(n as u64);
        if self.used > self.max {
            Err(Exhausted)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exact,
    /// Lines compared without whitespace.
    Whitespace,
    /// Without whitespace, and blank lines on either side may be missing.
    Loose,
}

/// Where a hunk's core (its old lines less those dropped by fuzz) matched.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// First program line the core covers; `end` is one past the last.
    pub start: usize,
    pub end: usize,
    /// Where the hunk's first old line sits, for drift and for distance to the stated line.
    pub key: isize,
    /// Old lines left out of the core at the front (fuzz and blank trims).
    pub front: usize,
    /// For each core old line, the program line it matched (None: a blank line the program lacks).
    pub align: Vec<Option<usize>>,
    pub fuzz: usize,
    pub whitespace: bool,
    pub blank_lines: bool,
}

pub(crate) enum Outcome {
    Found(Found),
    /// Two equally good places, as 0-based program lines.
    Ambiguous([usize; 2]),
    NotFound,
    Exhausted,
}

/// Searches `base` from `cursor` on for the hunk's old lines `pre`. `lead` and `trail` are
/// the hunk's leading and trailing context line counts (what fuzz may drop); `expected` the
/// 0-based line where the header (adjusted by earlier hunks' drift) puts the first old line.
#[allow(clippy::too_many_arguments)] // one search, its inputs named at the call
pub(crate) fn locate(
    base: &Base<'_>,
    pre: &[Pre<'_>],
    lead: usize,
    trail: usize,
    cursor: usize,
    expected: Option<isize>,
    fuzz: usize,
    work: &mut Work,
) -> Outcome {
    let mut levels: Vec<Vec<(Mode, usize, usize)>> =
        vec![vec![(Mode::Exact, 0, 0)], vec![(Mode::Whitespace, 0, 0)], vec![(Mode::Loose, 0, 0)]];
    for total in 1..=2 * fuzz {
        let level: Vec<_> = (0..=total)
            .map(|f| (Mode::Loose, f, total - f))
            .filter(|&(_, f, b)| f <= fuzz && b <= fuzz && f <= lead && b <= trail)
            .filter(|&(_, f, b)| f + b < pre.len())
            .collect();
        if !level.is_empty() {
            levels.push(level);
        }
    }

    for level in levels {
        let mut found: Vec<Found> = Vec::new();
        for (mode, front, back) in level {
            let r = candidates(base, pre, mode, front, back, cursor, work, &mut found);
            if r.is_err() {
                return Outcome::Exhausted;
            }
        }
        if found.is_empty() {
            continue;
        }
        found.sort_by_key(|f| f.key);
        found.dedup_by_key(|f| f.key);
        return choose(found, expected);
    }
    Outcome::NotFound
}

/// The nearest match to the stated line wins; a tie, or several matches and no stated line,
/// is ambiguous.
fn choose(mut found: Vec<Found>, expected: Option<isize>) -> Outcome {
    if found.len() == 1 {
        return Outcome::Found(found.remove(0));
    }
    let Some(e) = expected else {
        return Outcome::Ambiguous([found[0].start, found[1].start]);
    };
    found.sort_by_key(|f| ((f.key - e).unsigned_abs(), f.key));
    let d0 = (found[0].key - e).unsigned_abs();
    let d1 = (found[1].key - e).unsigned_abs();
    if d0 == d1 {
        let (a, b) = (found[0].start, found[1].start);
        return Outcome::Ambiguous([a.min(b), a.max(b)]);
    }
    Outcome::Found(found.remove(0))
}

#[allow(clippy::too_many_arguments)]
fn candidates(
    base: &Base<'_>,
    pre: &[Pre<'_>],
    mode: Mode,
    front: usize,
    back: usize,
    cursor: usize,
    work: &mut Work,
    out: &mut Vec<Found>,
) -> Result<(), Exhausted> {
    let n = base.len();
    let mut lo = front;
    let mut hi = pre.len() - back;
    if mode == Mode::Loose {
        // Blank context at the ends says nothing about place; leave it to the program.
        while lo < hi && pre[lo].blank && pre[lo].context {
            lo += 1;
        }
        while hi > lo && pre[hi - 1].blank && pre[hi - 1].context {
            hi -= 1;
        }
    }
    let core = &pre[lo..hi];
    let anchor = core.iter().position(|p| !p.blank);

    let positions: Vec<usize> = match (anchor, mode) {
        (Some(k), Mode::Exact) => shifted(base.exact_index.get(&hash(core[k].text)), k, cursor),
        (Some(k), Mode::Whitespace) => shifted(base.norm_index.get(&hash(&core[k].norm)), k, cursor),
        // Loose matching walks out from the anchor's own line.
        (Some(k), Mode::Loose) => shifted(base.norm_index.get(&hash(&core[k].norm)), 0, cursor),
        // Only blank lines: nothing to anchor on; every place is a candidate. Loose
        // matching of blanks alone would match anywhere, so it is not tried.
        (None, Mode::Loose) => return Ok(()),
        (None, _) => (cursor..=n.saturating_sub(core.len())).collect(),
    };

    for s in positions {
        work.spend(core.len().max(1))?;
        let m = match mode {
            Mode::Exact | Mode::Whitespace => fixed(base, core, s, mode),
            // In loose mode `s` is the anchor's own line.
            Mode::Loose => loose(base, core, anchor.unwrap_or(0), s, cursor),
        };
        let Some((start, end, align)) = m else {
            continue;
        };
        let anchor_line = align[anchor.unwrap_or(0)].unwrap_or(start);
        let key = anchor_line as isize - (lo + anchor.unwrap_or(0)) as isize;
        let whitespace = core.iter().zip(&align).any(|(p, a)| a.is_some_and(|b| base.lines[b] != p.text));
        let blank_lines = mode == Mode::Loose
            && (align.iter().any(Option::is_none)
                || align.iter().flatten().count() != end - start
                || (lo - front > 0 && !blanks_at(base, start, lo - front, false))
                || (pre.len() - back - hi > 0 && !blanks_at(base, end, pre.len() - back - hi, true)));
        out.push(Found { start, end, key, front: lo, align, fuzz: front + back, whitespace, blank_lines });
    }
    Ok(())
}

/// Program lines `at` of an anchor line `k` lines into the core, turned into where the core
/// would start, from `cursor` on. The index lists are ascending, so earlier lines are skipped
/// without being looked at: many hunks on a repetitive program stay cheap.
fn shifted(at: Option<&Vec<usize>>, k: usize, cursor: usize) -> Vec<usize> {
    let Some(at) = at else {
        return Vec::new();
    };
    let from = at.partition_point(|&q| q < cursor + k);
    at[from..].iter().map(|&q| q - k).collect()
}

/// Whether the `count` program lines just before `at` (or from `at` on, when `after`) are blank.
fn blanks_at(base: &Base<'_>, at: usize, count: usize, after: bool) -> bool {
    (0..count).all(|i| {
        let j = if after { at.checked_add(i) } else { at.checked_sub(i + 1) };
        j.is_some_and(|j| base.blank.get(j).copied().unwrap_or(false))
    })
}

type Alignment = (usize, usize, Vec<Option<usize>>);

/// The core laid line for line on the program from `s`.
fn fixed(base: &Base<'_>, core: &[Pre<'_>], s: usize, mode: Mode) -> Option<Alignment> {
    let end = s.checked_add(core.len())?;
    if end > base.len() {
        return None;
    }
    let same = core.iter().enumerate().all(|(i, p)| match mode {
        Mode::Exact => base.lines[s + i] == p.text,
        _ => base.norm[s + i] == p.norm,
    });
    same.then(|| (s, end, (s..end).map(Some).collect()))
}

/// The core laid on the program with its non-blank line `k` on program line `q`, skipping
/// blank lines on either side as needed. Blank lines only ever pair with blank lines, so the
/// greedy walk is exact.
fn loose(base: &Base<'_>, core: &[Pre<'_>], k: usize, q: usize, cursor: usize) -> Option<Alignment> {
    let n = base.len();
    if q < cursor || q >= n || base.norm[q] != core[k].norm {
        return None;
    }
    let mut align = vec![None; core.len()];
    align[k] = Some(q);
    // Before the anchor the core holds only blank lines.
    let mut j = q;
    for i in (0..k).rev() {
        if j > cursor && base.blank[j - 1] {
            j -= 1;
            align[i] = Some(j);
        }
    }
    let start = j;
    let mut j = q + 1;
    for i in k + 1..core.len() {
        if core[i].blank {
            if j < n && base.blank[j] {
                align[i] = Some(j);
                j += 1;
            }
            continue;
        }
        while j < n && base.blank[j] {
            j += 1;
        }
        if j < n && base.norm[j] == core[i].norm {
            align[i] = Some(j);
            j += 1;
        } else {
            return None;
        }
    }
    Some((start, j, align))
}

/// The stretch of the program sharing the most (whitespace-blind) lines with `pre` at the same
/// relative places, as (first line, lines shared); ties go to the one nearest `expected`.
pub(crate) fn closest(base: &Base<'_>, pre: &[Pre<'_>], expected: Option<isize>, work: &mut Work) -> Option<usize> {
    let mut votes: HashMap<isize, usize> = HashMap::new();
    for (i, p) in pre.iter().enumerate() {
        if p.blank {
            continue;
        }
        let Some(at) = base.norm_index.get(&hash(&p.norm)) else {
            continue;
        };
        if work.spend(at.len()).is_err() {
            return None;
        }
        for &q in at {
            *votes.entry(q as isize - i as isize).or_default() += 1;
        }
    }
    let e = expected.unwrap_or(0);
    votes
        .into_iter()
        .max_by_key(|&(s, v)| (v, std::cmp::Reverse(((s - e).unsigned_abs(), s))))
        .map(|(s, _)| s.max(0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(text: &str) -> Base<'_> {
        Base::new(text.lines().collect())
    }

    fn pre<'a>(lines: &[&'a str]) -> Vec<Pre<'a>> {
        lines.iter().map(|l| Pre::new(l, true)).collect()
    }

    fn work() -> Work {
        Work { used: 0, max: 1_000_000 }
    }

    fn find(b: &Base<'_>, p: &[Pre<'_>], expected: Option<isize>, fuzz: usize) -> Outcome {
        locate(b, p, p.len(), p.len(), 0, expected, fuzz, &mut work())
    }

    #[test]
    fn exact_match_at_the_stated_line_wins_over_an_equal_one_elsewhere() {
        let b = base("a\nb\nx\na\nb\n");
        match find(&b, &pre(&["a", "b"]), Some(3), 0) {
            Outcome::Found(f) => assert_eq!((f.start, f.fuzz), (3, 0)),
            _ => panic!("expected a match"),
        }
    }

    #[test]
    fn equal_distance_is_ambiguous() {
        let b = base("a\nb\nx\nx\na\nb\n");
        assert!(matches!(find(&b, &pre(&["a", "b"]), Some(2), 0), Outcome::Ambiguous([0, 4])));
        assert!(matches!(find(&b, &pre(&["a", "b"]), None, 0), Outcome::Ambiguous([0, 4])));
    }

    #[test]
    fn whitespace_blind_match_is_flagged() {
        let b = base("net {\n  conv(16, k=3)\n}\n");
        match find(&b, &pre(&["conv(16,k = 3)"]), Some(1), 0) {
            Outcome::Found(f) => assert!(f.whitespace && !f.blank_lines),
            _ => panic!("expected a match"),
        }
    }

    #[test]
    fn missing_blank_line_is_skipped_and_flagged() {
        let b = base("a\n\nb\nc\n");
        match find(&b, &pre(&["a", "b", "c"]), Some(0), 0) {
            Outcome::Found(f) => {
                assert!(f.blank_lines);
                assert_eq!((f.start, f.end), (0, 4));
            }
            _ => panic!("expected a match"),
        }
    }

    #[test]
    fn fuzz_drops_context_from_the_ends() {
        let b = base("a\nb\nc\nd\ne\n");
        let p = pre(&["WRONG", "b", "c", "d", "ALSO WRONG"]);
        match find(&b, &p, Some(0), 2) {
            Outcome::Found(f) => assert_eq!((f.start, f.fuzz, f.key), (1, 2, 0)),
            _ => panic!("expected a match"),
        }
        assert!(matches!(find(&b, &p, Some(0), 0), Outcome::NotFound));
    }

    #[test]
    fn the_budget_ends_the_search() {
        let text = "relu\n".repeat(1000);
        let b = base(&text);
        let p = pre(&["relu"; 50]);
        let mut w = Work { used: 0, max: 1000 };
        assert!(matches!(locate(&b, &p, 50, 50, 0, None, 2, &mut w), Outcome::Exhausted));
    }
}
