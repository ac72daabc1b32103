//! Canonical argument form: one spelling for every call whose arguments fit its signature.
//! Purely syntactic; a call that does not fit is left as written for the checker to report.

use super::ast::*;
use super::signature::{self, ArgDefault, Args};

/// A parameter list, built-in or a block's, as canonicalisation sees it.
struct Params<'a> {
    names: Vec<&'a str>,
    defaults: Vec<Option<DefaultValue<'a>>>,
    positional: usize,
}

enum DefaultValue<'a> {
    Expr(&'a Expr),
    Number(f64),
    Bool(bool),
    SameAs(usize),
}

pub fn canonicalize(program: &mut Program) {
    // Block signatures are read from a copy so that bodies can be rewritten.
    let blocks: Vec<(String, Vec<(String, Option<Expr>)>)> = program
        .blocks
        .iter()
        .map(|b| (b.name.name.clone(), b.params.iter().map(|p| (p.name.name.clone(), p.default.clone())).collect()))
        .collect();
    let ctx = Ctx { blocks: &blocks };
    for b in &mut program.blocks {
        ctx.body(&mut b.body);
    }
    if let Some(n) = &mut program.net {
        ctx.body(&mut n.body);
    }
}

struct Ctx<'a> {
    blocks: &'a [(String, Vec<(String, Option<Expr>)>)],
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
            let names: Vec<&str> = params.iter().map(|p| p.name).collect();
            let defaults = params
                .iter()
                .map(|p| match p.default {
                    ArgDefault::Required => None,
                    ArgDefault::Int(v) => Some(DefaultValue::Number(v as f64)),
                    ArgDefault::Float(v) => Some(DefaultValue::Number(v)),
                    ArgDefault::Bool(v) => Some(DefaultValue::Bool(v)),
                    ArgDefault::SameAs(other) => names.iter().position(|n| *n == other).map(DefaultValue::SameAs),
                })
                .collect();
            return Some(Params { names, defaults, positional });
        }
        let (_, params) = self.blocks.iter().find(|(n, _)| n == name)?;
        // The first argument positional, the rest by name: `inception(64, r3=96, c3=128)`
        // reads (and diffs) better than a row of bare numbers.
        let positional = usize::from(params.first().is_some_and(|(_, d)| d.is_none()));
        Some(Params {
            names: params.iter().map(|(n, _)| n.as_str()).collect(),
            defaults: params.iter().map(|(_, d)| d.as_ref().map(DefaultValue::Expr)).collect(),
            positional,
        })
    }

    fn stage(&self, st: &mut Stage) {
        let Some(args) = &mut st.args else { return };
        for a in args.iter_mut() {
            if let ArgValue::Branch(p) = &mut a.value {
                self.pipeline(p);
            }
        }
        let Some(sig) = self.params(&st.name.name) else { return };
        let Some(slots) = assign(&sig, args) else { return };
        let mut out = Vec::new();
        let mut positional_ok = true;
        for (i, slot) in slots.iter().enumerate() {
            let Some(arg) = slot else {
                positional_ok = false;
                continue;
            };
            let ArgValue::Expr(value) = &arg.value else { unreachable!("assign refuses branches") };
            let is_default = match &sig.defaults[i] {
                None => false,
                Some(DefaultValue::Expr(e)) => *e == value,
                Some(DefaultValue::Number(n)) => number(value) == Some(*n),
                Some(DefaultValue::Bool(b)) => matches!(value, Expr::Name(id) if id.name == if *b { "true" } else { "false" }),
                Some(DefaultValue::SameAs(j)) => {
                    slots[*j].as_ref().is_some_and(|other| matches!(&other.value, ArgValue::Expr(o) if o == value))
                }
            };
            if is_default {
                positional_ok = false;
                continue;
            }
            let positional = positional_ok && i < sig.positional;
            positional_ok &= positional;
            let key = if positional {
                None
            } else {
                Some(arg.key.clone().unwrap_or_else(|| Ident { name: sig.names[i].to_string(), span: arg.span }))
            };
            out.push(Arg { key, value: arg.value.clone(), span: arg.span });
        }
        st.args = if out.is_empty() { None } else { Some(out) };
    }
}

/// Maps arguments to parameter slots; `None` if they do not fit (too many,
/// unknown or repeated keywords, a branch where a value goes), which the
/// checker will report.
fn assign<'b>(sig: &Params, args: &'b [Arg]) -> Option<Vec<Option<&'b Arg>>> {
    let mut slots: Vec<Option<&Arg>> = vec![None; sig.names.len()];
    let mut next = 0;
    let mut seen_key = false;
    for a in args {
        if matches!(a.value, ArgValue::Branch(_)) {
            return None;
        }
        let i = match &a.key {
            None => {
                if seen_key {
                    return None;
                }
                next += 1;
                next - 1
            }
            Some(k) => {
                seen_key = true;
                sig.names.iter().position(|n| *n == k.name)?
            }
        };
        if i >= slots.len() || slots[i].is_some() {
            return None;
        }
        slots[i] = Some(a);
    }
    Some(slots)
}

fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Int(v, _) => Some(*v as f64),
        Expr::Float(v, _) => Some(*v),
        _ => None,
    }
}
