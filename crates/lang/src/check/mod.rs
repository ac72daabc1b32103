//! The shape checker: a parsed program plus a dataset binding becomes a typed graph
//! with shapes, parameters and MACs, or diagnostics. Pure computation; never imports Burn.

pub mod binding;
pub mod elab;
pub mod graph;
pub mod kinds;
pub mod ops;
mod value;

pub use binding::{Binding, Budget};
pub use graph::{Graph, Node, NodeId, Op, Shape};
pub use value::Val;

use crate::diag::{Code, Diagnostic};
use crate::syntax::ast::{Name, Program, Span};
use serde::Serialize;

/// A program that checked: its graph, the rows of its shape table, and warnings.
#[derive(Clone, Debug)]
pub struct Checked {
    pub graph: Graph,
    pub rows: Vec<Row>,
    pub warnings: Vec<Diagnostic>,
}

/// One line of the shape table: an operation, or a block call that groups the
/// operations below it (one level deeper).
#[derive(Clone, Debug)]
pub struct Row {
    pub depth: u16,
    pub span: Span,
    pub kind: RowKind,
}

#[derive(Clone, Debug)]
pub enum RowKind {
    Node(NodeId),
    Block { name: Name, args: Vec<(Name, Val)>, first: NodeId, end: NodeId, out: NodeId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub params: u64,
    pub macs: u64,
    pub activation_bytes: u64,
    pub operations: usize,
}

impl Checked {
    pub fn totals(&self) -> Totals {
        Totals {
            params: self.graph.params(),
            macs: self.graph.macs(),
            activation_bytes: self.graph.activation_bytes(),
            operations: self.graph.nodes.len() - 1,
        }
    }
    pub fn output(&self) -> Shape {
        self.graph.nodes[self.graph.output].shape
    }
}

/// Checks a parsed program under a binding and a budget.
pub fn check(program: &Program, binding: Binding, budget: &Budget) -> Result<Checked, Vec<Diagnostic>> {
    let checked = elab::elaborate(program, binding)?;
    let t = checked.totals();
    let over = [
        ("parameters", t.params, budget.max_params, "--max-params"),
        ("MACs", t.macs, budget.max_macs, "--max-macs"),
        ("bytes of activations per sample", t.activation_bytes, budget.max_activation_bytes, "--max-activation-bytes"),
    ]
    .into_iter()
    // Counts saturate at u64::MAX: a count there overflowed, and is over any budget.
    .find(|(_, have, max, _)| have > max || *have == u64::MAX);
    if let Some((what, have, max, flag)) = over {
        let span = program
            .net
            .as_ref()
            .map_or(Span::default(), |n| Span::new(n.span.start as usize, n.span.start as usize + 3));
        let (have_text, max_text, smaller) = if flag == "--max-activation-bytes" {
            (
                human_bytes(have),
                human_bytes(max),
                "downsample earlier (a stride or a pool near the input), or use fewer channels",
            )
        } else {
            (group(have), group(max), "make it smaller (fewer channels or layers)")
        };
        let have_text =
            if have == u64::MAX { format!("more than {have_text} (the count overflows)") } else { have_text };
        let what = if flag == "--max-activation-bytes" { "of activations per sample" } else { what };
        let mut errs = vec![Diagnostic::error(
            Code::OverBudget,
            span,
            format!("the network has {have_text} {what}; the budget is {max_text}"),
        )
        .label("over budget")
        .hint(format!("{smaller}, or raise the budget with `{flag}`"))];
        errs.extend(checked.warnings);
        return Err(errs);
    }
    Ok(checked)
}

/// Parses and checks source text.
pub fn check_source(src: &str, binding: Binding, budget: &Budget) -> Result<Checked, Vec<Diagnostic>> {
    let program = crate::syntax::parse(src).map_err(|d| vec![d])?;
    check(&program, binding, budget)
}

/// `12,345,678`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `1.23 M`, `456.7 K`: short figures for tables.
pub fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} K", f / 1e3)
    } else {
        n.to_string()
    }
}

pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if f >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", f / (1u64 << 20) as f64)
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// One row of the table as data (`nasc compile --json`).
#[derive(Serialize)]
pub struct TableRow {
    pub line: usize,
    pub depth: u16,
    pub op: String,
    pub kind: &'static str,
    pub shape: String,
    pub dims: Vec<u64>,
    pub params: u64,
    pub macs: u64,
}

impl Checked {
    pub fn table_rows(&self, src: &str) -> Vec<TableRow> {
        let index = crate::diag::LineIndex::new(src);
        self.rows
            .iter()
            .map(|r| {
                let line = index.line_col(src, r.span.start as usize).0;
                match &r.kind {
                    RowKind::Node(id) => {
                        let n = &self.graph.nodes[*id];
                        TableRow {
                            line,
                            depth: r.depth,
                            op: n.op.to_string(),
                            kind: "op",
                            shape: n.shape.to_string(),
                            dims: n.shape.dims(),
                            params: n.params,
                            macs: n.macs,
                        }
                    }
                    RowKind::Block { name, args, first, end, out } => {
                        let nodes = &self.graph.nodes[*first..*end];
                        let shape = self.graph.nodes[*out].shape;
                        let args: Vec<String> = args.iter().map(|(n, v)| format!("{n}={v}")).collect();
                        TableRow {
                            line,
                            depth: r.depth,
                            op: format!("{name}({})", args.join(", ")),
                            kind: "block",
                            shape: shape.to_string(),
                            dims: shape.dims(),
                            params: nodes.iter().map(|n| n.params).sum(),
                            macs: nodes.iter().map(|n| n.macs).sum(),
                        }
                    }
                }
            })
            .collect()
    }

    /// Each block call's block name and the dims of the flow it is called on (its `in`), in the
    /// order of the table: what the top of a block's body receives.
    pub fn block_inputs(&self) -> Vec<(&str, Vec<u64>)> {
        self.rows
            .iter()
            .filter_map(|r| match &r.kind {
                RowKind::Block { name, first, end, .. } => {
                    // The one value from outside a body is its `in`: the first operand of its
                    // nodes that comes before them.
                    let nodes = self.graph.nodes.get(*first..*end)?;
                    let input = nodes.iter().flat_map(|n| n.inputs.iter()).find(|&&id| id < *first)?;
                    Some((name.as_str(), self.graph.nodes[*input].shape.dims()))
                }
                RowKind::Node(_) => None,
            })
            .collect()
    }

    /// The shape table as text: line, operation, output shape, parameters, MACs; then totals.
    pub fn table(&self, src: &str, binding: Binding) -> String {
        use std::fmt::Write;
        let rows = self.table_rows(src);
        let op_text = |r: &TableRow| format!("{}{}", "  ".repeat(r.depth as usize), r.op);
        let opw = rows.iter().map(|r| op_text(r).len()).max().unwrap_or(2).max("operation".len());
        let shw = rows.iter().map(|r| r.shape.len()).max().unwrap_or(5).max("output".len());
        let [c, h, w] = binding.input;
        let mut out = String::new();
        let _ = writeln!(out, "input [{c},{h},{w}], {} classes", binding.classes);
        let _ =
            writeln!(out, "{:>5}  {:<opw$}  {:<shw$}  {:>12}  {:>15}", "line", "operation", "output", "params", "MACs");
        for r in &rows {
            let _ = writeln!(
                out,
                "{:>5}  {:<opw$}  {:<shw$}  {:>12}  {:>15}",
                r.line,
                op_text(r),
                r.shape,
                group(r.params),
                group(r.macs)
            );
        }
        let t = self.totals();
        let _ = writeln!(out, "{}", "-".repeat(5 + 2 + opw + 2 + shw + 2 + 12 + 2 + 15));
        let _ = writeln!(out, "output      {}", self.output());
        let _ = writeln!(out, "parameters  {} ({})", group(t.params), human(t.params));
        let _ = writeln!(out, "MACs        {} ({})", group(t.macs), human(t.macs));
        let _ = writeln!(out, "activations {} per sample (f32)", human_bytes(t.activation_bytes));
        let _ = writeln!(out, "operations  {}", t.operations);
        out
    }
}
