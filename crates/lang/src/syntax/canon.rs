//! Canonical argument form: one spelling for every call whose arguments fit its signature.
//! Purely syntactic; a call that does not fit is left as written for the checker to report.

use super::ast::*;
use super::signature::{self, ArgDefault, Args};

/// A parameter list, built-in or a block's, as canonicalisation sees it.
enum Params<'a> {
    Builtin { params: &'static [signature::ParamSpec], positional: usize },
    Block(&'a [Param]),
}

enum DefaultValue<'a> {
    Expr(&'a Expr),
    Number(f64),
    Bool(bool),
    SameAs(usize),
}

impl<'a> Params<'a> {
    fn len(&self) -> usize {
        match self {
            Params::Builtin { params, .. } => params.len(),
            Params::Block(ps) => ps.len(),
        }
    }
    fn name(&self, i: usize) -> &str {
        match self {
            Params::Builtin { params, .. } => params[i].name,
            Params::Block(ps) => &ps[i].name.name,
        }
    }
    fn position(&self, name: &str) -> Option<usize> {
        (0..self.len()).find(|&i| self.name(i) == name)
    }
    /// How many leading parameters the canonical form writes by position.
    fn positional(&self) -> usize {
        match self {
            Params::Builtin { positional, .. } => *positional,
            // The first argument positional, the rest by name: `inception(64, r3=96, c3=128)`
            // reads (and diffs) better than a row of bare numbers.
            Params::Block(ps) => usize::from(ps.first().is_some_and(|p| p.default.is_none())),
        }
    }
    fn default(&self, i: usize) -> Option<DefaultValue<'a>> {
        match self {
            Params::Builtin { params, .. } => match params[i].default {
                ArgDefault::Required => None,
                ArgDefault::Int(v) => Some(DefaultValue::Number(v as f64)),
                ArgDefault::Float(v) => Some(DefaultValue::Number(v)),
                ArgDefault::Bool(v) => Some(DefaultValue::Bool(v)),
                ArgDefault::SameAs(other) => params.iter().position(|p| p.name == other).map(DefaultValue::SameAs),
            },
            Params::Block(ps) => ps[i].default.as_ref().map(DefaultValue::Expr),
        }
    }
}

pub fn canonicalize(program: &mut Program) {
    // Bodies are taken out so the signatures can be read from the blocks while
    // the bodies are rewritten; nothing is cloned.
    let empty = || Body { stmts: Vec::new(), tail: Vec::new() };
    let mut bodies: Vec<Body> = program.blocks.iter_mut().map(|b| std::mem::replace(&mut b.body, empty())).collect();
    let mut net = program.net.as_mut().map(|n| std::mem::replace(&mut n.body, empty()));
    let ctx = Ctx { blocks: &program.blocks };
    for b in &mut bodies {
        ctx.body(b);
    }
    if let Some(n) = &mut net {
        ctx.body(n);
    }
    for (b, body) in program.blocks.iter_mut().zip(bodies) {
        b.body = body;
    }
    if let (Some(n), Some(body)) = (program.net.as_mut(), net) {
        n.body = body;
    }
}

struct Ctx<'a> {
    blocks: &'a [BlockDef],
}

impl<'a> Ctx<'a> {
    fn body(&self, body: &mut Body) {
        for s in &mut body.stmts {
            match &mut s.kind {
                StmtKind::Pipe { pipe, .. } => self.pipeline(pipe),
                StmtKind::Repeat { body, .. } => self.body(body),
            }
        }
    }

    fn pipeline(&self, pipe: &mut Pipeline) {
        for st in &mut pipe.stages {
            self.stage(st);
        }
    }

    fn params(&self, name: &str) -> Option<Params<'a>> {
        // A block shadows nothing: the checker rejects blocks named like operations.
        if let Some(sig) = signature::lookup(name) {
            let Args::Params { params, positional } = sig.args else { return None };
            return Some(Params::Builtin { params, positional });
        }
        Some(Params::Block(&self.blocks.iter().find(|b| b.name.name == name)?.params))
    }

    fn stage(&self, st: &mut Stage) {
        let Some(args) = &mut st.args else { return };
        for a in args.iter_mut() {
            if let ArgValue::Branch(p) = &mut a.value {
                self.pipeline(p);
            }
        }
        let Some(sig) = self.params(&st.name.name) else { return };
        let Some(order) = assign(&sig, args) else { return };
        // Which slots hold their default, decided before the arguments move.
        let dropped: Vec<bool> = (0..sig.len())
            .map(|i| {
                let Some(a) = order[i].map(|j| &args[j]) else { return true };
                let ArgValue::Expr(value) = &a.value else { unreachable!("assign refuses branches") };
                match sig.default(i) {
                    None => false,
                    Some(DefaultValue::Expr(e)) => e == value,
                    Some(DefaultValue::Number(n)) => number(value) == Some(n),
                    Some(DefaultValue::Bool(b)) => {
                        matches!(value, Expr::Name(id) if id.name == if b { "true" } else { "false" })
                    }
                    Some(DefaultValue::SameAs(k)) => {
                        order[k].is_some_and(|j| matches!(&args[j].value, ArgValue::Expr(o) if o == value))
                    }
                }
            })
            .collect();
        let mut taken: Vec<Option<Arg>> = std::mem::take(args).into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(taken.len());
        let mut positional_ok = true;
        for i in 0..sig.len() {
            if dropped[i] {
                positional_ok = false;
                continue;
            }
            let Some(mut arg) = order[i].and_then(|j| taken[j].take()) else { continue };
            let positional = positional_ok && i < sig.positional();
            positional_ok &= positional;
            arg.key = if positional {
                None
            } else {
                Some(arg.key.take().unwrap_or_else(|| Ident { name: Name::new(sig.name(i)), span: arg.span }))
            };
            out.push(arg);
        }
        st.args = if out.is_empty() { None } else { Some(out) };
    }
}

/// Why a call's arguments do not fit its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfit {
    PositionalAfterKeyword,
    TooMany,
    UnknownKeyword,
    /// The parameter (by slot) was already given.
    Duplicate(usize),
}

/// Maps arguments to parameter slots, the one rule for every call: positional
/// arguments fill slots from the left, keywords go by name. `slots[i]` gets the
/// index of the argument for parameter `i`. On a misfit, says which argument.
pub fn assign_slots(
    args: &[Arg],
    position: impl Fn(&str) -> Option<usize>,
    slots: &mut [Option<usize>],
) -> Result<(), (usize, Misfit)> {
    let mut next = 0;
    let mut seen_key = false;
    for (j, a) in args.iter().enumerate() {
        let i = match &a.key {
            None if seen_key => return Err((j, Misfit::PositionalAfterKeyword)),
            None if next >= slots.len() => return Err((j, Misfit::TooMany)),
            None => {
                next += 1;
                next - 1
            }
            Some(k) => {
                seen_key = true;
                position(&k.name).ok_or((j, Misfit::UnknownKeyword))?
            }
        };
        if slots[i].is_some() {
            return Err((j, Misfit::Duplicate(i)));
        }
        slots[i] = Some(j);
    }
    Ok(())
}

/// Slot → argument for a call canonicalisation can rewrite; `None` if the
/// arguments do not fit or hold a branch where a value goes (the checker reports).
fn assign(sig: &Params, args: &[Arg]) -> Option<Vec<Option<usize>>> {
    if args.iter().any(|a| matches!(a.value, ArgValue::Branch(_))) {
        return None;
    }
    let mut slots = vec![None; sig.len()];
    assign_slots(args, |k| sig.position(k), &mut slots).ok()?;
    Some(slots)
}

fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Int(v, _) => Some(*v as f64),
        Expr::Float(v, _) => Some(*v),
        _ => None,
    }
}
