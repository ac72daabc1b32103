//! Byte ranges in a program's text: what syntax trees, graphs and diagnostics point with.
//! The lowest module of the front end; it imports nothing of the crate.

/// A byte range in the source text.
///
/// Two spans always compare equal: trees are compared for what they say, not
/// for where it was written, so that `parse(fmt(x)) == parse(x)` holds even
/// though formatting moves every node.
#[derive(Clone, Copy, Debug, Default, Eq, serde::Serialize)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl PartialEq for Span {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start: start as u32, end: end as u32 }
    }
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    /// Whether two spans cover the same bytes (`==` on spans is always true).
    pub fn same(self, other: Span) -> bool {
        self.start == other.start && self.end == other.end
    }
    /// The smallest span that covers both.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}
