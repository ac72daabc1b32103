//! Diagnostics: what went wrong, where, with which shapes, and what to do about it.
//! Errors are values built by the parser and checker; this module only renders them.

use crate::span::Span;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// The kind of a diagnostic. Its snake_case name is stable: it is what `--json`
/// prints and what tools match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // Syntax.
    Syntax,
    // Names and arguments.
    UnknownOp,
    UnboundName,
    DuplicateName,
    DuplicateBlock,
    ReservedName,
    MissingNet,
    DuplicateNet,
    MissingArg,
    ExtraArg,
    UnknownKeyword,
    DuplicateArg,
    ArgType,
    BadValue,
    RecursiveBlock,
    MisplacedValue,
    // Shapes.
    WrongInput,
    ShapeMismatch,
    ConcatMismatch,
    KernelTooLarge,
    ZeroDim,
    GroupsNotDivisible,
    HeadsNotDivisible,
    LinearOnSpatial,
    BadOutput,
    // Budgets.
    OverBudget,
    // Warnings.
    UnusedValue,
    UnusedBlock,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "syntax",
            Code::UnknownOp => "unknown_op",
            Code::UnboundName => "unbound_name",
            Code::DuplicateName => "duplicate_name",
            Code::DuplicateBlock => "duplicate_block",
            Code::ReservedName => "reserved_name",
            Code::MissingNet => "missing_net",
            Code::DuplicateNet => "duplicate_net",
            Code::MissingArg => "missing_arg",
            Code::ExtraArg => "extra_arg",
            Code::UnknownKeyword => "unknown_keyword",
            Code::DuplicateArg => "duplicate_arg",
            Code::ArgType => "arg_type",
            Code::BadValue => "bad_value",
            Code::RecursiveBlock => "recursive_block",
            Code::MisplacedValue => "misplaced_value",
            Code::WrongInput => "wrong_input",
            Code::ShapeMismatch => "shape_mismatch",
            Code::ConcatMismatch => "concat_mismatch",
            Code::KernelTooLarge => "kernel_too_large",
            Code::ZeroDim => "zero_dim",
            Code::GroupsNotDivisible => "groups_not_divisible",
            Code::HeadsNotDivisible => "heads_not_divisible",
            Code::LinearOnSpatial => "linear_on_spatial",
            Code::BadOutput => "bad_output",
            Code::OverBudget => "over_budget",
            Code::UnusedValue => "unused_value",
            Code::UnusedBlock => "unused_block",
        }
    }

    /// The verdict of the search pipeline that an error of this kind yields.
    pub fn verdict(self) -> &'static str {
        match self {
            Code::Syntax => "parse_error",
            Code::OverBudget => "over_budget",
            _ => "shape_error",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secondary place in the source with a note: the other operand of a merge,
/// the call site of the block an error happened in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    /// The culprit: underlined in the rendering.
    pub span: Span,
    /// What the underline says.
    pub label: String,
    pub labels: Vec<Label>,
    /// Shapes involved, by role (`"flow"`, `"x"`, `"input"`), as `[C,H,W]` text.
    pub shapes: Vec<(String, String)>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span,
            label: String::new(),
            labels: Vec::new(),
            shapes: Vec::new(),
            hint: None,
        }
    }
    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, span, message) }
    }
    pub fn label(mut self, text: impl Into<String>) -> Self {
        self.label = text.into();
        self
    }
    pub fn with_label(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push(Label { span, message: text.into() });
        self
    }
    pub fn shape(mut self, role: impl Into<String>, shape: impl fmt::Display) -> Self {
        self.shapes.push((role.into(), shape.to_string()));
        self
    }
    pub fn hint(mut self, text: impl Into<String>) -> Self {
        self.hint = Some(text.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Line and column (both 1-based, columns in characters) of byte offsets in a text.
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(src: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }
    pub fn line_col(&self, src: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(src.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let col = src.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }
}

/// Renders diagnostics as text, rustc-style, with the source line and the
/// culprit underlined. `color` is for terminals; snapshots and pipes get none.
pub fn render(diags: &[Diagnostic], file: &str, src: &str, color: bool) -> String {
    use ariadne::{Config, IndexType, Label as ALabel, Report, ReportKind, Source};
    let mut out = Vec::new();
    let index = LineIndex::new(src);
    for d in diags {
        let points: Vec<usize> =
            std::iter::once(d.span).chain(d.labels.iter().map(|l| l.span)).map(|s| clamp(s, src).start).collect();
        let view = Clipped::new(src, &points);
        let kind = match d.severity {
            Severity::Error => ReportKind::Error,
            Severity::Warning => ReportKind::Warning,
        };
        let (line, col) = index.line_col(src, d.span.start as usize);
        let range = view.range(clamp(d.span, src));
        let mut message = format!("{} ({file}:{line}:{col})", clip_lines(&d.message));
        for (role, shape) in &d.shapes {
            message.push_str(&format!("\n  {role}: {shape}"));
        }
        let label_text = if d.label.is_empty() { d.code.as_str().to_string() } else { clip_lines(&d.label) };
        let mut report = Report::build(kind, (file, range.clone()))
            .with_config(Config::default().with_color(color).with_index_type(IndexType::Byte).with_compact(false))
            .with_code(d.code.as_str())
            .with_message(message);
        // Labels go in in source order: ariadne starts a new snippet, headed by
        // the primary location, whenever a label lies above the one before it.
        let mut labels: Vec<(std::ops::Range<usize>, &str)> = vec![(range, label_text.as_str())];
        let clipped: Vec<String> = d.labels.iter().map(|l| clip_lines(&l.message)).collect();
        labels.extend(d.labels.iter().zip(&clipped).map(|(l, m)| (view.range(clamp(l.span, src)), m.as_str())));
        labels.sort_by_key(|(r, _)| r.start);
        for (r, text) in labels {
            report = report.with_label(ALabel::new((file, r)).with_message(text));
        }
        if let Some(h) = &d.hint {
            report = report.with_help(clip_lines(h));
        }
        // Writing to a Vec cannot fail.
        let _ = report.finish().write((file, Source::from(view.text.as_str())), &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Most bytes of one source line, or of a message, that a rendering shows: a 50 MB one-line
/// file gets a window of its line around the culprit, not the line.
const SHOWN: usize = 240;

/// A source whose long lines are cut to a window around the places a diagnostic points at,
/// `…` standing for what was cut, with the map from offsets in the source to offsets in it.
struct Clipped {
    text: String,
    /// Kept pieces: (start in the source, end in the source, start in `text`).
    kept: Vec<(usize, usize, usize)>,
}

impl Clipped {
    fn new(src: &str, points: &[usize]) -> Clipped {
        let mut text = String::new();
        let mut kept = Vec::new();
        let mut start = 0;
        while start < src.len() || (start == 0 && src.is_empty()) {
            let end = src[start..].find('\n').map_or(src.len(), |i| start + i + 1);
            let line_end = if src[start..end].ends_with('\n') { end - 1 } else { end };
            if line_end - start <= SHOWN {
                kept.push((start, end, text.len()));
                text.push_str(&src[start..end]);
            } else {
                // A window around the first point on the line (or its start), on char boundaries.
                let at = points.iter().copied().filter(|&p| p >= start && p <= line_end).min().unwrap_or(start);
                let mut a = at.saturating_sub(SHOWN / 3).max(start);
                let mut b = (a + SHOWN).min(line_end);
                while !src.is_char_boundary(a) {
                    a -= 1;
                }
                while !src.is_char_boundary(b) {
                    b += 1;
                }
                if a > start {
                    text.push('…');
                }
                kept.push((a, b, text.len()));
                text.push_str(&src[a..b]);
                if b < line_end {
                    text.push('…');
                }
                kept.push((line_end, end, text.len()));
                text.push_str(&src[line_end..end]);
            }
            if end == src.len() {
                break;
            }
            start = end;
        }
        Clipped { text, kept }
    }

    /// Where a source offset is in the clipped text: inside a kept piece, or at the edge of the
    /// nearest one before it.
    fn map(&self, offset: usize) -> usize {
        let i = self.kept.partition_point(|&(s, _, _)| s <= offset);
        match i.checked_sub(1).map(|i| self.kept[i]) {
            Some((s, e, t)) if offset <= e => t + (offset - s),
            Some((s, e, t)) => t + (e - s),
            None => 0,
        }
    }

    fn range(&self, r: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let start = self.map(r.start);
        start..self.map(r.end).max(start)
    }
}

/// `text` with each line longer than [`SHOWN`] bytes cut in the middle.
pub fn clip_lines(text: &str) -> String {
    if text.len() <= SHOWN {
        return text.to_string();
    }
    text.split('\n')
        .map(|line| {
            if line.len() <= SHOWN {
                return line.to_string();
            }
            let mut head = SHOWN / 2;
            while !line.is_char_boundary(head) {
                head -= 1;
            }
            let mut tail = line.len() - SHOWN / 2;
            while !line.is_char_boundary(tail) {
                tail += 1;
            }
            format!("{}…[{} bytes]…{}", &line[..head], tail - head, &line[tail..])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn clamp(span: Span, src: &str) -> std::ops::Range<usize> {
    let start = (span.start as usize).min(src.len());
    let end = (span.end as usize).clamp(start, src.len());
    start..end
}

/// The JSON form of a diagnostic: everything the text form says, as data.
#[derive(Serialize)]
pub struct JsonDiagnostic<'a> {
    pub severity: Severity,
    pub code: Code,
    /// The pipeline verdict an error yields; none for a warning.
    pub verdict: Option<&'static str>,
    pub message: &'a str,
    pub file: &'a str,
    pub line: usize,
    pub col: usize,
    pub end_line: usize,
    pub end_col: usize,
    pub span: Span,
    pub label: &'a str,
    pub labels: Vec<JsonLabel<'a>>,
    pub shapes: Vec<JsonShape<'a>>,
    pub hint: Option<&'a str>,
}

/// A shape involved, by role, in the order the message gives them.
#[derive(Serialize)]
pub struct JsonShape<'a> {
    pub role: &'a str,
    pub shape: &'a str,
}

#[derive(Serialize)]
pub struct JsonLabel<'a> {
    pub message: &'a str,
    pub line: usize,
    pub col: usize,
    pub span: Span,
}

pub fn to_json<'a>(d: &'a Diagnostic, file: &'a str, src: &str, index: &LineIndex) -> JsonDiagnostic<'a> {
    let (line, col) = index.line_col(src, d.span.start as usize);
    let (end_line, end_col) = index.line_col(src, d.span.end as usize);
    JsonDiagnostic {
        severity: d.severity,
        code: d.code,
        verdict: d.is_error().then(|| d.code.verdict()),
        message: &d.message,
        file,
        line,
        col,
        end_line,
        end_col,
        span: d.span,
        label: &d.label,
        labels: d
            .labels
            .iter()
            .map(|l| {
                let (line, col) = index.line_col(src, l.span.start as usize);
                JsonLabel { message: &l.message, line, col, span: l.span }
            })
            .collect(),
        shapes: d.shapes.iter().map(|(role, shape)| JsonShape { role, shape }).collect(),
        hint: d.hint.as_deref(),
    }
}
