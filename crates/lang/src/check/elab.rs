//! Elaboration: runs a program's statements against a binding, inlining blocks and
//! repeats into a graph, and reports the first error with its span. No I/O, no Burn.

use super::binding::Binding;
use super::graph::{Graph, Node, NodeId, Op, Shape};
use super::ops;
use super::value::Val;
use super::{Checked, Row, RowKind};
use crate::diag::{Code, Diagnostic};
use crate::syntax::ast::*;
use crate::syntax::canon::{self, Misfit};
use crate::syntax::signature::{self, ArgDefault, Args, ParamSpec, Ty};
use std::collections::HashMap;

/// Expansion stops past this many operations: `repeat(1000000)` must be refused, not run.
pub const MAX_NODES: usize = 100_000;
/// Blocks calling blocks deeper than this are refused (recursion is caught before).
const MAX_DEPTH: usize = 64;

type R<T> = Result<T, Box<Diagnostic>>;

fn err<T>(d: Diagnostic) -> R<T> {
    Err(Box::new(d))
}

struct Bound<'p> {
    name: &'p str,
    node: NodeId,
    span: Span,
    used: bool,
}

/// One invocation of the net or a block: its parameters, input and values.
struct Frame<'p> {
    params: Vec<(&'p str, Val)>,
    input: NodeId,
    values: Vec<Bound<'p>>,
}

/// The program's blocks by name. Programs have a handful, so a vector beats a hash map.
#[derive(Default)]
struct Blocks<'p>(Vec<(&'p str, &'p BlockDef)>);

impl<'p> Blocks<'p> {
    fn get(&self, name: &str) -> Option<&'p BlockDef> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    fn insert(&mut self, name: &'p str, b: &'p BlockDef) -> Option<&'p BlockDef> {
        let prev = self.get(name);
        if prev.is_none() {
            self.0.push((name, b));
        }
        prev
    }
    fn keys(&self) -> impl Iterator<Item = &'p str> + '_ {
        self.0.iter().map(|(n, _)| *n)
    }
}

pub(super) struct Elab<'p> {
    blocks: Blocks<'p>,
    binding: Binding,
    nodes: Vec<Node>,
    rows: Vec<Row>,
    warnings: Vec<Diagnostic>,
    /// Block calls being elaborated, outermost first: name and call site.
    calls: Vec<(&'p str, Span)>,
    used_blocks: Vec<&'p str>,
    /// Spans already warned about (a repeat body is elaborated many times).
    warned: std::collections::HashSet<u32>,
    /// Nodes bound to a name: an unused one is reported by name, not as dead work.
    bound_nodes: Vec<bool>,
}

pub(super) fn elaborate(program: &Program, binding: Binding) -> Result<Checked, Vec<Diagnostic>> {
    let mut e = Elab {
        blocks: Blocks::default(),
        binding,
        nodes: Vec::new(),
        rows: Vec::new(),
        warnings: Vec::new(),
        calls: Vec::new(),
        used_blocks: Default::default(),
        warned: Default::default(),
        bound_nodes: Default::default(),
    };
    match e.run(program) {
        Ok(output) => {
            let mut warnings = e.warnings;
            warnings.sort_by_key(|w| w.span.start);
            Ok(Checked { graph: Graph { nodes: e.nodes, output }, rows: e.rows, warnings })
        }
        Err(d) => {
            let mut all = vec![*d];
            all.extend(e.warnings);
            Err(all)
        }
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to a misspelt name, if one is close enough to be a typo.
fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < name.len().max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Common names from other frameworks, mapped to this language's.
fn alias(name: &str) -> Option<&'static str> {
    Some(match name {
        "conv2d" | "Conv2d" | "convolution" => "conv",
        "depthwise" | "dwconv2d" => "dwconv",
        "batchnorm" | "batch_norm" | "BatchNorm2d" | "bn2d" => "bn",
        "layernorm" | "layer_norm" | "LayerNorm" => "ln",
        "groupnorm" | "group_norm" => "gn",
        "ReLU" => "relu",
        "swish" => "silu",
        "dense" | "fc" | "Linear" => "linear",
        "max_pool" | "maxpool2d" | "MaxPool2d" => "maxpool",
        "avg_pool" | "avgpool2d" | "AvgPool2d" => "avgpool",
        "global_avg_pool" | "gavgpool" | "avgpool_global" => "gap",
        "cat" | "concatenate" => "concat",
        "sum" | "residual" => "add",
        "multiply" | "scale" => "mul",
        "attention" | "mhsa" | "self_attention" => "attn",
        _ => return None,
    })
}

impl<'p> Elab<'p> {
    fn run(&mut self, program: &'p Program) -> R<NodeId> {
        for b in &program.blocks {
            let name = b.name.name.as_str();
            if signature::lookup(name).is_some() || signature::is_reserved(name) {
                return err(Diagnostic::error(
                    Code::ReservedName,
                    b.name.span,
                    format!("a block cannot be named `{name}`: that name is taken by the language"),
                )
                .label("reserved name")
                .hint(format!("rename the block, e.g. `{name}_block`")));
            }
            if let Some(prev) = self.blocks.insert(name, b) {
                return err(Diagnostic::error(
                    Code::DuplicateBlock,
                    b.name.span,
                    format!("block `{name}` is defined twice"),
                )
                .label("second definition")
                .with_label(prev.name.span, "first definition"));
            }
            let mut seen: Vec<&str> = Vec::new();
            for prm in &b.params {
                let pname = prm.name.name.as_str();
                if signature::is_reserved(pname) {
                    return err(Diagnostic::error(
                        Code::ReservedName,
                        prm.name.span,
                        format!("a parameter cannot be named `{pname}`: that name is taken by the language"),
                    )
                    .label("reserved name")
                    .hint(format!("choose another name, e.g. `n_{pname}`")));
                }
                if seen.contains(&pname) {
                    return err(Diagnostic::error(
                        Code::DuplicateName,
                        prm.name.span,
                        format!("block `{name}` has two parameters named `{pname}`"),
                    )
                    .label("second parameter of that name"));
                }
                seen.push(pname);
            }
        }
        self.check_recursion(program)?;
        let Some(net) = &program.net else {
            let end = program.blocks.iter().map(|b| b.span.end).max().unwrap_or(0) as usize;
            return err(Diagnostic::error(Code::MissingNet, Span::new(end, end), "the program has no `net { … }`")
                .label("add `net { … }` here")
                .hint("the network itself is written in `net { … }`; blocks alone describe nothing to train"));
        };
        let [c, h, w] = self.binding.input;
        self.nodes.push(Node {
            op: Op::Input,
            inputs: vec![],
            shape: Shape::Map { c, h, w },
            params: 0,
            macs: 0,
            span: net.span,
        });
        let mut frame = Frame { params: Vec::new(), input: 0, values: Vec::new() };
        let out = self.body(&net.body, &mut frame, 0, 0)?;
        self.unused(&frame.values);
        let shape = self.nodes[out].shape;
        if shape != (Shape::Vector { d: self.binding.classes }) {
            if net.body.stmts.is_empty() {
                let net_kw = Span::new(net.span.start as usize, net.span.start as usize + 3);
                return err(Diagnostic::error(
                    Code::BadOutput,
                    net_kw,
                    format!("`net` is empty: it outputs the input {shape}"),
                )
                .label("empty net")
                .shape("output", shape)
                .shape("expected", Shape::Vector { d: self.binding.classes })
                .hint(
                    "write the network's operations inside `net { … }`, one per line, ending with `linear(classes)`",
                ));
            }
            let at = net.body.stmts.last().map_or(net.span, |s| s.span);
            let hint = match shape {
                Shape::Map { .. } => "pool to a vector and classify: end with `gap` then `linear(classes)`".to_string(),
                Shape::Tokens { .. } => {
                    "pool the tokens (`cls_pool` or `token_mean`), then `linear(classes)`".to_string()
                }
                Shape::Vector { .. } => format!(
                    "end with `linear(classes)`: `classes` is bound per dataset ({} here), so one program fits every dataset",
                    self.binding.classes
                ),
            };
            return err(Diagnostic::error(
                Code::BadOutput,
                at,
                format!("the network must output [classes] = [{}], but it outputs {shape}", self.binding.classes),
            )
            .label(format!("this is the last operation, giving {shape}"))
            .shape("output", shape)
            .shape("expected", Shape::Vector { d: self.binding.classes })
            .hint(hint));
        }
        self.dead_results(out);
        for b in &program.blocks {
            if !self.used_blocks.contains(&b.name.name.as_str()) {
                self.warnings.push(
                    Diagnostic::warning(
                        Code::UnusedBlock,
                        b.name.span,
                        format!("block `{}` is never used", b.name.name),
                    )
                    .label("never called from `net`"),
                );
            }
        }
        Ok(out)
    }

    /// Warns about operations whose result nothing uses: the flow was dropped
    /// by a statement that starts from a named value, so the work is dead.
    fn dead_results(&mut self, out: NodeId) {
        let mut used = vec![false; self.nodes.len()];
        for n in &self.nodes {
            for i in &n.inputs {
                used[*i] = true;
            }
        }
        used[out] = true;
        for (id, n) in self.nodes.iter().enumerate().skip(1) {
            if used[id] || self.bound_nodes.get(id).copied().unwrap_or(false) || !self.warned.insert(n.span.start) {
                continue;
            }
            self.warnings.push(
                Diagnostic::warning(Code::UnusedValue, n.span, format!("the result of `{}` is never used", n.op))
                    .label("computed, then dropped")
                    .hint("the next statement starts from a named value, which drops the flow: merge it (`add(…)`, `concat(…)`) or remove the dead lines"),
            );
        }
    }

    /// Finds a block that calls itself, directly or through others, even if `net` never calls it.
    fn check_recursion(&self, program: &'p Program) -> R<()> {
        fn calls<'a>(body: &'a Body, out: &mut Vec<&'a Stage>) {
            fn pipe<'a>(p: &'a Pipeline, out: &mut Vec<&'a Stage>) {
                for st in &p.stages {
                    out.push(st);
                    for a in st.args.iter().flatten() {
                        if let ArgValue::Branch(b) = &a.value {
                            pipe(b, out);
                        }
                    }
                }
            }
            for s in &body.stmts {
                match &s.kind {
                    StmtKind::Pipe { pipe: p, .. } => pipe(p, out),
                    StmtKind::Repeat { body, .. } => calls(body, out),
                }
            }
        }
        // Depth-first search with colours; the path gives the cycle to report.
        let mut state: HashMap<&str, u8> = HashMap::new();
        fn visit<'a>(
            name: &'a str,
            blocks: &Blocks<'a>,
            state: &mut HashMap<&'a str, u8>,
            path: &mut Vec<(&'a str, Span)>,
        ) -> Option<Vec<(&'a str, Span)>> {
            state.insert(name, 1);
            let mut stages = Vec::new();
            calls(&blocks.get(name).expect("visited blocks exist").body, &mut stages);
            for st in stages {
                let callee = st.name.name.as_str();
                if !blocks.contains_key(callee) {
                    continue;
                }
                path.push((callee, st.name.span));
                match state.get(callee) {
                    Some(1) => {
                        let start = path.iter().position(|(n, _)| *n == callee).unwrap_or(0);
                        return Some(path[start..].to_vec());
                    }
                    Some(_) => {}
                    None => {
                        if let Some(c) = visit(callee, blocks, state, path) {
                            return Some(c);
                        }
                    }
                }
                path.pop();
            }
            state.insert(name, 2);
            None
        }
        for b in &program.blocks {
            let name = b.name.name.as_str();
            if state.contains_key(name) {
                continue;
            }
            let mut path = vec![(name, b.name.span)];
            if let Some(cycle) = visit(name, &self.blocks, &mut state, &mut path) {
                let (last, span) = *cycle.last().expect("a cycle has a call");
                let chain: Vec<&str> = cycle.iter().map(|(n, _)| *n).collect();
                let mut d = Diagnostic::error(
                    Code::RecursiveBlock,
                    span,
                    format!("block `{last}` calls itself: {}", chain.join(" → ")),
                )
                .label("this call closes the cycle")
                .hint("a network is finite: use `repeat(n) { … }` to stack a block n times");
                for (n, s) in &cycle[..cycle.len() - 1] {
                    if s.same(span) {
                        continue;
                    }
                    let defined = self.blocks.get(n).is_some_and(|b| b.name.span.same(*s));
                    let text =
                        if defined { format!("block `{n}` is defined here") } else { format!("`{n}` is called here") };
                    d = d.with_label(*s, text);
                }
                return err(d);
            }
        }
        Ok(())
    }

    /// Adds the call stack to an error raised inside a block.
    fn in_calls(&self, mut d: Diagnostic) -> Box<Diagnostic> {
        for (name, span) in self.calls.iter().rev() {
            d.labels.push(crate::diag::Label { span: *span, message: format!("in this call of `{name}`") });
        }
        Box::new(d)
    }

    fn fail<T>(&self, d: Diagnostic) -> R<T> {
        Err(self.in_calls(d))
    }

    fn unused(&mut self, values: &[Bound<'p>]) {
        for v in values {
            if !v.used && !v.name.starts_with('_') && self.warned.insert(v.span.start) {
                self.warnings.push(
                    Diagnostic::warning(Code::UnusedValue, v.span, format!("value `{}` is never used", v.name))
                        .label("bound here, never used")
                        .hint(format!("remove the name, or use it (`add({0})`, `concat({0})`); names starting with `_` are not reported", v.name)),
                );
            }
        }
    }

    fn body(&mut self, body: &'p Body, frame: &mut Frame<'p>, mut flow: NodeId, depth: u16) -> R<NodeId> {
        for stmt in &body.stmts {
            match &stmt.kind {
                StmtKind::Pipe { bind, pipe } => {
                    flow = self.pipeline(pipe, frame, flow, depth)?;
                    if let Some(name) = bind {
                        self.bind(name, flow, frame)?;
                    }
                }
                StmtKind::Repeat { count, body: inner } => {
                    let n = match self.eval(count, frame)? {
                        Val::Int(n) if n >= 1 => n,
                        v => {
                            return self.fail(
                                Diagnostic::error(
                                    Code::BadValue,
                                    count.span(),
                                    format!("`repeat` needs a count of at least 1, got {v}"),
                                )
                                .label("repeat count"),
                            )
                        }
                    };
                    if n as usize > MAX_NODES {
                        return self.too_big(count.span());
                    }
                    for _ in 0..n {
                        if self.nodes.len() > MAX_NODES {
                            return self.too_big(count.span());
                        }
                        let mark = frame.values.len();
                        flow = self.body(inner, frame, flow, depth)?;
                        let inner_values: Vec<Bound<'p>> = frame.values.drain(mark..).collect();
                        self.unused(&inner_values);
                    }
                }
            }
        }
        Ok(flow)
    }

    fn too_big<T>(&self, span: Span) -> R<T> {
        self.fail(
            Diagnostic::error(
                Code::OverBudget,
                span,
                format!("the program expands to more than {} operations", super::group(MAX_NODES as u64)),
            )
            .label("this repeats too often")
            .hint("a network this deep cannot be trained in a proxy run; lower the count"),
        )
    }

    fn bind(&mut self, name: &'p Ident, node: NodeId, frame: &mut Frame<'p>) -> R<()> {
        let n = name.name.as_str();
        if signature::is_reserved(n) || signature::lookup(n).is_some() || self.blocks.contains_key(n) {
            let what = if signature::lookup(n).is_some() {
                "an operation"
            } else if self.blocks.contains_key(n) {
                "a block"
            } else {
                "a word of the language"
            };
            return self.fail(
                Diagnostic::error(Code::ReservedName, name.span, format!("`{n}` is {what}; it cannot name a value"))
                    .label("reserved name")
                    .hint(format!("choose another name, e.g. `{n}_out`")),
            );
        }
        if let Some(prev) = frame.values.iter().find(|v| v.name == n) {
            return self.fail(
                Diagnostic::error(Code::DuplicateName, name.span, format!("`{n}` is already bound"))
                    .label("bound again here")
                    .with_label(prev.span, "first bound here")
                    .hint("values are bound once; choose a new name for the new value"),
            );
        }
        frame.values.push(Bound { name: n, node, span: name.span, used: false });
        if self.bound_nodes.len() <= node {
            self.bound_nodes.resize(node + 1, false);
        }
        self.bound_nodes[node] = true;
        Ok(())
    }

    /// Looks a value up by name and marks it used.
    fn value(&self, name: &str, frame: &mut Frame<'p>) -> Option<NodeId> {
        if name == "in" {
            return Some(frame.input);
        }
        let v = frame.values.iter_mut().rev().find(|v| v.name == name)?;
        v.used = true;
        Some(v.node)
    }

    fn pipeline(&mut self, pipe: &'p Pipeline, frame: &mut Frame<'p>, flow: NodeId, depth: u16) -> R<NodeId> {
        let mut stages = pipe.stages.iter();
        let mut cur = flow;
        let first = stages.next().expect("a pipeline has a stage");
        match (&first.args, self.value(&first.name.name, frame)) {
            (None, Some(v)) => cur = v,
            _ => cur = self.stage(first, frame, cur, depth)?,
        }
        for st in stages {
            if st.args.is_none() && self.value(&st.name.name, frame).is_some() {
                return self.fail(
                    Diagnostic::error(
                        Code::MisplacedValue,
                        st.span,
                        format!(
                            "`{}` is a value; a pipeline can start from a value, not pass through one",
                            st.name.name
                        ),
                    )
                    .label("a value in the middle of a pipeline")
                    .hint(format!(
                        "to combine it with the flow, merge: `add({0})`, `mul({0})` or `concat({0})`",
                        st.name.name
                    )),
                );
            }
            cur = self.stage(st, frame, cur, depth)?;
        }
        Ok(cur)
    }

    fn stage(&mut self, st: &'p Stage, frame: &mut Frame<'p>, flow: NodeId, depth: u16) -> R<NodeId> {
        let name = st.name.name.as_str();
        if let Some(sig) = signature::lookup(name) {
            return match sig.args {
                Args::Values => self.merge(st, frame, flow, depth),
                Args::Params { params, .. } => {
                    let args = self.bind_args(st, name, params, frame)?;
                    let input = self.nodes[flow].shape;
                    let (op, shape, params_n, macs) = match ops::apply(name, &args, input, self.binding) {
                        Ok(r) => r,
                        Err(e) => return Err(self.in_calls(e.into_diagnostic(st, &args, input))),
                    };
                    Ok(self.push(op, vec![flow], shape, params_n, macs, st.span, depth))
                }
            };
        }
        if let Some(block) = self.blocks.get(name) {
            return self.call_block(st, block, frame, flow, depth);
        }
        if name == "in" {
            return self.fail(
                Diagnostic::error(Code::MisplacedValue, st.span, "`in` is a value; it takes no arguments")
                    .label("not an operation"),
            );
        }
        // Unknown: say what it might have been.
        let mut d = if st.args.is_none() && frame.values.iter().all(|v| v.name != name) {
            Diagnostic::error(
                Code::UnknownOp,
                st.name.span,
                format!("`{name}` is not an operation, a block, or a value bound above"),
            )
            .label("unknown name")
        } else {
            Diagnostic::error(Code::UnknownOp, st.name.span, format!("unknown operation `{name}`"))
                .label("unknown operation")
        };
        let ops_and_blocks = signature::OPS.iter().map(|s| s.name).chain(self.blocks.keys());
        if matches!(name, "softmax" | "log_softmax") {
            d = d
                .hint("there is no softmax: the network outputs logits and the loss applies softmax; remove this line");
        } else if let Some(a) = alias(name) {
            d = d.hint(format!("the language calls this `{a}`"));
        } else if let Some(n) = nearest(name, ops_and_blocks) {
            d = d.hint(format!("did you mean `{n}`?"));
        } else if let Some(n) = nearest(name, frame.values.iter().map(|v| v.name)) {
            d = d.hint(format!("did you mean the value `{n}`?"));
        } else {
            d = d.hint("`nasc ops` lists the operations; blocks are defined with `block name(…) { … }`");
        }
        self.fail(d)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        op: Op,
        inputs: Vec<NodeId>,
        shape: Shape,
        params: u64,
        macs: u64,
        span: Span,
        depth: u16,
    ) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(Node { op, inputs, shape, params, macs, span });
        self.rows.push(Row { depth, span, kind: RowKind::Node(id) });
        id
    }

    fn call_block(
        &mut self,
        st: &'p Stage,
        block: &'p BlockDef,
        frame: &mut Frame<'p>,
        flow: NodeId,
        depth: u16,
    ) -> R<NodeId> {
        if self.calls.len() >= MAX_DEPTH {
            return self.fail(
                Diagnostic::error(Code::OverBudget, st.span, format!("blocks are nested more than {MAX_DEPTH} deep"))
                    .label("too deep"),
            );
        }
        if self.nodes.len() > MAX_NODES {
            return self.too_big(st.span);
        }
        if !self.used_blocks.contains(&block.name.name.as_str()) {
            self.used_blocks.push(block.name.name.as_str());
        }
        // Bind the arguments in the caller's frame, the defaults in the callee's.
        let args: &[Arg] = st.args.as_deref().unwrap_or(&[]);
        let mut order: Vec<Option<usize>> = vec![None; block.params.len()];
        let fit = canon::assign_slots(args, |k| block.params.iter().position(|p| p.name.name == k), &mut order);
        if let Err((j, misfit)) = fit {
            let a = &args[j];
            let d = match misfit {
                Misfit::PositionalAfterKeyword => positional_after_keyword(a),
                Misfit::TooMany => Diagnostic::error(
                    Code::ExtraArg,
                    a.span,
                    format!(
                        "block `{}` takes {} argument(s), this is one too many",
                        block.name.name,
                        block.params.len()
                    ),
                )
                .label("extra argument")
                .with_label(block.name.span, "block defined here"),
                Misfit::UnknownKeyword => {
                    let k = a.key.as_ref().expect("an unknown keyword is a keyword");
                    let names: Vec<&str> = block.params.iter().map(|p| p.name.name.as_str()).collect();
                    let d = Diagnostic::error(
                        Code::UnknownKeyword,
                        k.span,
                        format!("block `{}` has no parameter `{}`", block.name.name, k.name),
                    )
                    .label("unknown parameter")
                    .with_label(block.name.span, "block defined here");
                    match nearest(&k.name, names.iter().copied()) {
                        Some(n) => d.hint(format!("did you mean `{n}`?")),
                        None => d.hint(format!("its parameters are: {}", names.join(", "))),
                    }
                }
                Misfit::Duplicate(i) => given_twice(a, &block.params[i].name.name),
            };
            return self.fail(d);
        }
        let mut slots: Vec<Option<(Val, Span)>> = vec![None; block.params.len()];
        for (i, j) in order.iter().enumerate() {
            let Some(a) = j.map(|j| &args[j]) else { continue };
            let ArgValue::Expr(e) = &a.value else {
                return self.fail(branch_not_allowed(a, &block.name.name));
            };
            slots[i] = Some((self.eval(e, frame)?, a.span));
        }
        let mut params: Vec<(&'p str, Val)> = Vec::with_capacity(block.params.len());
        let mut callee = Frame { params: Vec::new(), input: flow, values: Vec::new() };
        for (i, prm) in block.params.iter().enumerate() {
            let v = match slots[i] {
                Some((v, _)) => v,
                None => match &prm.default {
                    Some(d) => {
                        callee.params = params.clone();
                        self.eval(d, &mut callee)?
                    }
                    None => {
                        return self.fail(
                            Diagnostic::error(
                                Code::MissingArg,
                                st.span,
                                format!("block `{}` needs parameter `{}`", block.name.name, prm.name.name),
                            )
                            .label(format!("`{}` is missing", prm.name.name))
                            .with_label(prm.span, "declared here without a default"),
                        )
                    }
                },
            };
            params.push((prm.name.name.as_str(), v));
        }
        callee.params = params;
        let row = self.rows.len();
        self.rows.push(Row {
            depth,
            span: st.span,
            kind: RowKind::Block {
                name: block.name.name.clone(),
                args: Vec::new(),
                first: self.nodes.len(),
                end: 0,
                out: flow,
            },
        });
        self.calls.push((block.name.name.as_str(), st.span));
        let out = self.body(&block.body, &mut callee, flow, depth + 1)?;
        self.unused(&callee.values);
        self.calls.pop();
        let end_node = self.nodes.len();
        if let RowKind::Block { args, end, out: o, .. } = &mut self.rows[row].kind {
            *args = callee.params.iter().map(|(n, v)| (Name::new(n), *v)).collect();
            *end = end_node;
            *o = out;
        }
        Ok(out)
    }

    /// Evaluates and type-checks an operation's arguments against its signature.
    fn bind_args(
        &self,
        st: &'p Stage,
        name: &str,
        params: &'static [ParamSpec],
        frame: &mut Frame<'p>,
    ) -> R<ops::ArgVals> {
        let args: &[Arg] = st.args.as_deref().unwrap_or(&[]);
        let mut order: [Option<usize>; ops::MAX_PARAMS] = [None; ops::MAX_PARAMS];
        let fit = canon::assign_slots(args, |k| params.iter().position(|p| p.name == k), &mut order[..params.len()]);
        if let Err((j, misfit)) = fit {
            let a = &args[j];
            let d = match misfit {
                Misfit::PositionalAfterKeyword => {
                    positional_after_keyword(a).hint(format!("write it as a keyword: {}", usage(name, params)))
                }
                Misfit::TooMany => {
                    let msg = if params.is_empty() {
                        format!("`{name}` takes no arguments")
                    } else {
                        format!("`{name}` takes at most {} argument(s)", params.len())
                    };
                    Diagnostic::error(Code::ExtraArg, a.span, msg)
                        .label("extra argument")
                        .hint(format!("usage: {}", usage(name, params)))
                }
                Misfit::UnknownKeyword => {
                    let k = a.key.as_ref().expect("an unknown keyword is a keyword");
                    let d = Diagnostic::error(
                        Code::UnknownKeyword,
                        k.span,
                        format!("`{name}` has no parameter `{}`", k.name),
                    )
                    .label("unknown parameter");
                    let guess = match k.name.as_str() {
                        "kernel" | "kernel_size" | "ks" => Some("k"),
                        "stride" => Some("s"),
                        "padding" | "pad" => Some("p"),
                        "dilation" => Some("d"),
                        "groups" if name == "conv" => Some("g"),
                        "out" | "out_channels" | "channels" | "filters" if name == "conv" => Some("c"),
                        "out" | "out_features" | "units" | "features" if name == "linear" => Some("n"),
                        "rate" | "prob" => Some("p"),
                        "num_heads" | "h" => Some("heads"),
                        _ => None,
                    }
                    .filter(|g| params.iter().any(|p| p.name == *g))
                    .or_else(|| nearest(&k.name, params.iter().map(|p| p.name)));
                    match guess {
                        Some(g) => d.hint(format!("did you mean `{g}`? usage: {}", usage(name, params))),
                        None => d.hint(format!("usage: {}", usage(name, params))),
                    }
                }
                Misfit::Duplicate(i) => given_twice(a, params[i].name),
            };
            return self.fail(d);
        }
        let mut vals: [Option<(Val, Span)>; ops::MAX_PARAMS] = [None; ops::MAX_PARAMS];
        for (i, j) in order[..params.len()].iter().enumerate() {
            let Some(a) = j.map(|j| &args[j]) else { continue };
            let ArgValue::Expr(e) = &a.value else {
                return self.fail(branch_not_allowed(a, name));
            };
            let v = self.eval(e, frame)?;
            let ok = matches!(
                (params[i].ty, v),
                (Ty::Int, Val::Int(_))
                    | (Ty::Bool, Val::Bool(_))
                    | (Ty::Pad, Val::Int(_) | Val::Same)
                    | (Ty::Float | Ty::Prob, Val::Int(_) | Val::Float(_))
            );
            if !ok {
                return self.fail(
                    Diagnostic::error(
                        Code::ArgType,
                        e.span(),
                        format!(
                            "`{}` of `{name}` must be {}, got {} ({v})",
                            params[i].name,
                            params[i].ty.name(),
                            v.type_name()
                        ),
                    )
                    .label(format!("expected {}", params[i].ty.name()))
                    .hint(format!("usage: {}", usage(name, params))),
                );
            }
            let v = match (params[i].ty, v) {
                (Ty::Float | Ty::Prob, Val::Int(n)) => Val::Float(n as f64),
                _ => v,
            };
            vals[i] = Some((v, a.span));
        }
        let mut out = ops::ArgVals::new(params);
        for (i, p) in params.iter().enumerate() {
            let (v, span) = match vals[i] {
                Some(x) => (x.0, Some(x.1)),
                None => (
                    match p.default {
                        ArgDefault::Required => {
                            return self.fail(
                                Diagnostic::error(
                                    Code::MissingArg,
                                    st.span,
                                    format!("`{name}` needs `{}` ({})", p.name, param_meaning(name, p.name)),
                                )
                                .label(format!("`{}` is missing", p.name))
                                .hint(format!("usage: {}", usage(name, params))),
                            )
                        }
                        ArgDefault::Int(v) => Val::Int(v),
                        ArgDefault::Float(v) => Val::Float(v),
                        ArgDefault::Bool(v) => Val::Bool(v),
                        ArgDefault::SameAs(other) => {
                            let j = params.iter().position(|q| q.name == other).expect("SameAs names a parameter");
                            out.vals[j].0
                        }
                    },
                    None,
                ),
            };
            out.vals[i] = (v, span);
        }
        Ok(out)
    }

    fn eval(&self, e: &Expr, frame: &mut Frame<'p>) -> R<Val> {
        match e {
            Expr::Int(v, _) => Ok(Val::Int(*v)),
            Expr::Float(v, _) => Ok(Val::Float(*v)),
            Expr::Name(id) => {
                let n = id.name.as_str();
                if let Some((_, v)) = frame.params.iter().find(|(p, _)| *p == n) {
                    return Ok(*v);
                }
                match n {
                    "classes" => Ok(Val::Int(self.binding.classes as i64)),
                    "true" => Ok(Val::Bool(true)),
                    "false" => Ok(Val::Bool(false)),
                    "same" => Ok(Val::Same),
                    _ => {
                        if n == "in" || frame.values.iter().any(|v| v.name == n) {
                            return self.fail(
                                Diagnostic::error(Code::MisplacedValue, id.span, format!("`{n}` is a value (a tensor), but arguments are numbers"))
                                    .label("a value where a number goes")
                                    .hint(format!("merge values with `add({n})` or `concat({n})`; sizes are numbers or block parameters")),
                            );
                        }
                        let mut d = Diagnostic::error(Code::UnboundName, id.span, format!("`{n}` is not defined here"))
                            .label("unknown name");
                        if let Some(g) =
                            nearest(n, frame.params.iter().map(|(p, _)| *p).chain(["classes", "true", "false", "same"]))
                        {
                            d = d.hint(format!("did you mean `{g}`?"));
                        } else if self.calls.is_empty() {
                            d = d
                                .hint("numbers in `net` are literals or `classes`; named numbers are block parameters");
                        } else {
                            d = d.hint("add it to the block's parameters: `block name(…, n=…)`");
                        }
                        self.fail(d)
                    }
                }
            }
            Expr::Neg(inner, span) => match self.eval(inner, frame)? {
                Val::Int(v) => match v.checked_neg() {
                    Some(n) => Ok(Val::Int(n)),
                    None => self
                        .fail(Diagnostic::error(Code::BadValue, *span, "this number is too large").label("overflows")),
                },
                Val::Float(v) => Ok(Val::Float(-v)),
                v => self.fail(
                    Diagnostic::error(Code::ArgType, *span, format!("cannot negate {}", v.type_name()))
                        .label("not a number"),
                ),
            },
            Expr::Bin(op, l, r, span) => {
                let a = self.eval(l, frame)?;
                let b = self.eval(r, frame)?;
                let bad = |v: Val, at: Span| {
                    self.fail(
                        Diagnostic::error(
                            Code::ArgType,
                            at,
                            format!("arithmetic needs numbers, got {}", v.type_name()),
                        )
                        .label("not a number"),
                    )
                };
                match (a, b) {
                    (Val::Int(x), Val::Int(y)) => {
                        let v = match op {
                            BinOp::Add => x.checked_add(y),
                            BinOp::Sub => x.checked_sub(y),
                            BinOp::Mul => x.checked_mul(y),
                            BinOp::Div => {
                                if y == 0 {
                                    return self.fail(
                                        Diagnostic::error(Code::BadValue, *span, "division by zero")
                                            .label("divides by zero"),
                                    );
                                }
                                x.checked_div_euclid(y)
                            }
                        };
                        match v {
                            Some(v) => Ok(Val::Int(v)),
                            None => self.fail(
                                Diagnostic::error(Code::BadValue, *span, "this number is too large").label("overflows"),
                            ),
                        }
                    }
                    (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => {
                        let f = |v: Val| match v {
                            Val::Int(i) => i as f64,
                            Val::Float(f) => f,
                            _ => 0.0,
                        };
                        let (x, y) = (f(a), f(b));
                        let v = match op {
                            BinOp::Add => x + y,
                            BinOp::Sub => x - y,
                            BinOp::Mul => x * y,
                            BinOp::Div => x / y,
                        };
                        if v.is_finite() {
                            Ok(Val::Float(v))
                        } else {
                            self.fail(
                                Diagnostic::error(Code::BadValue, *span, "this arithmetic has no finite result")
                                    .label("not finite"),
                            )
                        }
                    }
                    (Val::Int(_) | Val::Float(_), v) => bad(v, r.span()),
                    (v, _) => bad(v, l.span()),
                }
            }
        }
    }

    fn merge(&mut self, st: &'p Stage, frame: &mut Frame<'p>, flow: NodeId, depth: u16) -> R<NodeId> {
        let name = st.name.name.as_str();
        let args: &'p [Arg] = st.args.as_deref().unwrap_or(&[]);
        if args.is_empty() {
            return self.fail(
                Diagnostic::error(
                    Code::MissingArg,
                    st.span,
                    format!("`{name}` needs at least one value to combine with the flow"),
                )
                .label("nothing to combine")
                .hint(format!("name a value above and merge it: `x = in` … `{name}(x)`")),
            );
        }
        let mut operands: Vec<(NodeId, Span)> = vec![(flow, st.name.span)];
        for a in args {
            if let Some(k) = &a.key {
                return self.fail(
                    Diagnostic::error(
                        Code::UnknownKeyword,
                        k.span,
                        format!("`{name}` takes values, not keyword arguments"),
                    )
                    .label("keyword argument")
                    .hint(format!("write `{name}(x)` or `{name}(x |> conv(64, k=1))`")),
                );
            }
            let node = match &a.value {
                ArgValue::Branch(p) => self.pipeline(p, frame, flow, depth)?,
                ArgValue::Expr(Expr::Name(id)) => match self.value(&id.name, frame) {
                    Some(n) => n,
                    None => {
                        let mut d = Diagnostic::error(Code::UnboundName, id.span, format!("no value named `{}` is bound above", id.name))
                            .label("unknown value");
                        d = match nearest(&id.name, frame.values.iter().map(|v| v.name).chain(["in"])) {
                            Some(n) => d.hint(format!("did you mean `{n}`?")),
                            None => d.hint(format!("bind it first, e.g. `{} = in` at the start of the block", id.name)),
                        };
                        return self.fail(d);
                    }
                },
                ArgValue::Expr(e) => {
                    return self.fail(
                        Diagnostic::error(Code::MisplacedValue, e.span(), format!("`{name}` combines values, not numbers"))
                            .label("not a value")
                            .hint(format!("write `{name}(x)` with a value bound above, or an inline branch `{name}(x |> conv(64, k=1))`")),
                    )
                }
            };
            operands.push((node, a.span));
        }
        let shapes: Vec<Shape> = operands.iter().map(|(n, _)| self.nodes[*n].shape).collect();
        let result = match name {
            "add" => ops::add(&shapes),
            "mul" => ops::mul(&shapes),
            _ => ops::concat(&shapes),
        };
        match result {
            Ok(shape) => {
                let op = match name {
                    "add" => Op::Add,
                    "mul" => Op::Mul,
                    _ => Op::Concat,
                };
                Ok(self.push(op, operands.iter().map(|(n, _)| *n).collect(), shape, 0, 0, st.span, depth))
            }
            Err((code, msg, bad)) => {
                let mut d = Diagnostic::error(code, operands[bad].1, msg)
                    .label(format!("this operand is {}", shapes[bad]))
                    .shape("flow", shapes[0]);
                for (i, (_, span)) in operands.iter().enumerate().skip(1) {
                    let a = &args[i - 1];
                    let role = match &a.value {
                        ArgValue::Expr(Expr::Name(id)) => id.name.to_string(),
                        _ => format!("operand {}", i + 1),
                    };
                    d = d.shape(role, shapes[i]);
                    if i != bad {
                        d = d.with_label(*span, format!("{}", shapes[i]));
                    }
                }
                if bad != 0 {
                    d = d.with_label(st.name.span, format!("the flow is {}", shapes[0]));
                }
                d = d.hint(ops::merge_hint(name, &shapes));
                self.fail(d)
            }
        }
    }
}

fn positional_after_keyword(a: &Arg) -> Diagnostic {
    Diagnostic::error(Code::ExtraArg, a.span, "a positional argument cannot follow a keyword argument")
        .label("positional after keyword")
}

fn given_twice(a: &Arg, param: &str) -> Diagnostic {
    Diagnostic::error(Code::DuplicateArg, a.span, format!("`{param}` is given twice")).label("given again")
}

fn branch_not_allowed(a: &Arg, name: &str) -> Diagnostic {
    Diagnostic::error(Code::MisplacedValue, a.span, format!("`{name}` takes numbers; only merges take inline branches"))
        .label("a branch here")
        .hint("branches go in `add(…)`, `mul(…)` or `concat(…)`")
}

/// `conv(c, k, s=1, p=0, …)`: how to call an operation.
pub fn usage(name: &str, params: &[ParamSpec]) -> String {
    let parts: Vec<String> = params
        .iter()
        .map(|p| match p.default {
            ArgDefault::Required => p.name.to_string(),
            ArgDefault::Int(v) => format!("{}={v}", p.name),
            ArgDefault::Float(v) => format!("{}={}", p.name, crate::syntax::fmt::float_text(v)),
            ArgDefault::Bool(v) => format!("{}={v}", p.name),
            ArgDefault::SameAs(o) => format!("{}={o}", p.name),
        })
        .collect();
    if parts.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", parts.join(", "))
    }
}

fn param_meaning(op: &str, p: &str) -> &'static str {
    match (op, p) {
        ("conv", "c") => "output channels",
        (_, "k") => "kernel size",
        ("linear", "n") => "output features",
        ("patch", "d") => "token width",
        ("attn", "heads") => "number of heads",
        (_, "groups") => "number of groups",
        ("adaptive_avgpool", "s") => "output size",
        ("slice", "lo") => "first channel",
        ("slice", "hi") => "end channel, exclusive",
        _ => "required",
    }
}
