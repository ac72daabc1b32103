//! The canonical printer: one text for a program, kept stable so that diffs
//! between programs show only what changed. It prints the tree; it never checks it.

use super::ast::*;
use std::fmt::Write;

const INDENT: &str = "  ";

/// Parses and prints in canonical form.
pub fn format_source(src: &str) -> Result<String, crate::diag::Diagnostic> {
    Ok(print(&super::parse(src)?))
}

/// Prints a program in canonical form.
pub fn print(p: &Program) -> String {
    let mut out = String::new();
    let mut first = true;
    let mut item = |out: &mut String, trivia: &Trivia, text: &dyn Fn(&mut String)| {
        if !first {
            out.push('\n');
        }
        first = false;
        comments(out, &trivia.leading, 0);
        text(out);
        trailing(out, &trivia.trailing);
    };
    if let Some(a) = &p.arch {
        item(&mut out, &p.arch_trivia, &|o: &mut String| {
            let _ = write!(o, "arch {}", a.name);
        });
    }
    for r in &p.order {
        match r {
            ItemRef::Block(i) => {
                let b = &p.blocks[*i];
                item(&mut out, &b.trivia, &|o: &mut String| block(o, b));
            }
            ItemRef::Net => {
                let n = p.net.as_ref().expect("order names the net only if there is one");
                item(&mut out, &n.trivia, &|o: &mut String| {
                    o.push_str("net {\n");
                    body(o, &n.body, 1);
                    o.push('}');
                });
            }
        }
    }
    if !p.tail.is_empty() {
        if !first {
            out.push('\n');
        }
        comments(&mut out, &p.tail, 0);
    }
    out
}

fn block(o: &mut String, b: &BlockDef) {
    let _ = write!(o, "block {}(", b.name.name);
    for (i, prm) in b.params.iter().enumerate() {
        if i > 0 {
            o.push_str(", ");
        }
        o.push_str(&prm.name.name);
        if let Some(d) = &prm.default {
            let _ = write!(o, "={d}");
        }
    }
    o.push_str(") {\n");
    body(o, &b.body, 1);
    o.push('}');
}

fn comments(o: &mut String, cs: &[Comment], depth: usize) {
    for c in cs {
        indent(o, depth);
        let _ = writeln!(o, "#{}", c.text);
    }
}

fn trailing(o: &mut String, c: &Option<Comment>) {
    if let Some(c) = c {
        let _ = write!(o, "  #{}", c.text);
    }
    o.push('\n');
}

fn indent(o: &mut String, depth: usize) {
    for _ in 0..depth {
        o.push_str(INDENT);
    }
}

fn body(o: &mut String, b: &Body, depth: usize) {
    for (i, s) in b.stmts.iter().enumerate() {
        if i > 0 && s.trivia.blank_before {
            o.push('\n');
        }
        comments(o, &s.trivia.leading, depth);
        indent(o, depth);
        match &s.kind {
            StmtKind::Pipe { bind, pipe } => {
                if let Some(n) = bind {
                    let _ = write!(o, "{} = ", n.name);
                }
                pipeline(o, pipe);
                trailing(o, &s.trivia.trailing);
            }
            StmtKind::Repeat { count, body: inner } => {
                let _ = writeln!(o, "repeat({count}) {{");
                body(o, inner, depth + 1);
                indent(o, depth);
                o.push('}');
                trailing(o, &s.trivia.trailing);
            }
        }
    }
    comments(o, &b.tail, depth);
}

pub fn pipeline(o: &mut String, p: &Pipeline) {
    for (i, st) in p.stages.iter().enumerate() {
        if i > 0 {
            o.push_str(" |> ");
        }
        stage(o, st);
    }
}

pub fn stage(o: &mut String, st: &Stage) {
    o.push_str(&st.name.name);
    let Some(args) = &st.args else { return };
    if args.is_empty() {
        return;
    }
    o.push('(');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            o.push_str(", ");
        }
        if let Some(k) = &a.key {
            let _ = write!(o, "{}=", k.name);
        }
        match &a.value {
            ArgValue::Expr(e) => {
                let _ = write!(o, "{e}");
            }
            ArgValue::Branch(p) => pipeline(o, p),
        }
    }
    o.push(')');
}

/// The shortest decimal text that reads back as the same number, always with
/// a `.` or an exponent so that it stays a decimal.
pub fn float_text(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}
