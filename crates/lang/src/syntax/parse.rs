//! From source text to a syntax tree: pest parses, this module builds the tree,
//! keeps comments, and turns pest's errors into diagnostics. It never checks shapes.

use super::ast::*;
use crate::diag::{Code, Diagnostic};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::LazyLock;

/// Precedence and associativity of arithmetic in arguments, lowest first.
static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg))
});

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/arch.pest"]
struct ArchParser;

/// Programs longer than this are refused before parsing: the search feeds
/// machine-written text here, and work must stay bounded.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// Parses a program. The tree's calls are in canonical argument form (see
/// [`super::canon`]), so two texts that differ only in layout or in how their
/// arguments are spelled parse to equal trees.
pub fn parse(src: &str) -> Result<Program, Diagnostic> {
    let mut program = parse_raw(src)?;
    super::canon::canonicalize(&mut program);
    Ok(program)
}

/// Parses without canonicalising arguments: the tree says exactly what was written.
pub fn parse_raw(src: &str) -> Result<Program, Diagnostic> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(Diagnostic::error(
            Code::Syntax,
            Span::new(0, 0),
            format!("program is {} bytes; the limit is {} bytes", src.len(), MAX_SOURCE_BYTES),
        )
        .label("too long")
        .hint("an architecture is a few hundred lines at most; is this the right file?"));
    }
    check_nesting(src)?;
    if let Some(program) = super::fast::parse(src) {
        return Ok(program);
    }
    parse_with_pest(src)
}

/// The fast path alone (`None` where it leaves the text to pest), for tests
/// and benchmarks that hold it to the grammar.
pub fn parse_fast(src: &str) -> Option<Program> {
    super::fast::parse(src)
}

/// Parses with the pest grammar alone, never the fast path: the reference
/// that the fast path is tested against, and the source of every syntax error.
pub fn parse_with_pest(src: &str) -> Result<Program, Diagnostic> {
    let mut pairs = ArchParser::parse(Rule::file, src).map_err(|e| syntax_error(e, src))?;
    let file = pairs.next().expect("the file rule always yields one pair");
    Builder { src }.file(file)
}

/// Parentheses or braces nested deeper than this are refused before parsing:
/// the parser and evaluator recurse, and machine-written text can nest anything.
pub const MAX_NESTING: usize = 64;

/// Arithmetic operators one line may hold: an expression of operators in a row (`1+1+…`,
/// `- - -1`) is a tree as deep as their count, which the parser and evaluator recurse through.
pub const MAX_OPERATORS: usize = 256;

fn check_nesting(src: &str) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut operators = 0usize;
    for (i, ch) in src.char_indices() {
        if in_comment {
            in_comment = ch != '\n';
            operators = 0;
            continue;
        }
        match ch {
            '\n' => operators = 0,
            '+' | '-' | '*' | '/' => {
                operators += 1;
                if operators > MAX_OPERATORS {
                    return Err(Diagnostic::error(
                        Code::Syntax,
                        Span::new(i, i + 1),
                        format!("a line holds more than {MAX_OPERATORS} arithmetic operators"),
                    )
                    .label("too many")
                    .hint("compute the value and write the number"));
                }
            }
            '(' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error(
                        Code::Syntax,
                        Span::new(i, i + 1),
                        format!("brackets are nested more than {MAX_NESTING} deep"),
                    )
                    .label("too deep")
                    .hint("simplify the expression or flatten the nested repeats"));
                }
            }
            ')' | '}' => depth = depth.saturating_sub(1),
            // A comment's brackets are text.
            '#' => in_comment = true,
            _ => {}
        }
    }
    Ok(())
}

fn syntax_error(e: pest::error::Error<Rule>, src: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    // Underline the token that stopped the parser, not the rest of the file.
    let end = src[pos..]
        .char_indices()
        .find(|&(i, c)| i > 0 && (c.is_whitespace() || !(c.is_alphanumeric() || c == '_')))
        .map_or(src.len(), |(i, _)| pos + i)
        .max((pos + 1).min(src.len()));
    let found = match src[pos..].chars().next() {
        None => "the end of the file".to_string(),
        Some('\n') | Some('\r') => "the end of the line".to_string(),
        Some(_) => format!("`{}`", &src[pos..end]),
    };
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => describe(positives),
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let mut d = Diagnostic::error(Code::Syntax, Span::new(pos, end), format!("expected {expected}, found {found}"))
        .label(format!("expected {expected}"));
    if let Some(h) = syntax_hint(src, pos) {
        d = d.hint(h);
    }
    d
}

fn describe(rules: &[Rule]) -> String {
    let mut words: Vec<&str> = Vec::new();
    for r in rules {
        let w = match r {
            Rule::ident => "a name",
            Rule::expr | Rule::number | Rule::neg | Rule::paren => "a number or expression",
            Rule::arg => "an argument",
            Rule::stage | Rule::pipeline | Rule::bind_stmt | Rule::repeat_stmt => "an operation",
            Rule::arch_decl | Rule::arch_kw => "`arch`",
            Rule::block_def | Rule::block_kw => "`block`",
            Rule::net_def | Rule::net_kw => "`net`",
            Rule::repeat_kw => "`repeat`",
            Rule::param => "a parameter",
            Rule::comment => "a comment",
            Rule::blank => "a line break",
            Rule::add | Rule::sub | Rule::mul | Rule::div => "an operator",
            Rule::EOI => "the end of the line",
            Rule::call_args => "`(`",
            Rule::branch => "`|>`",
            _ => "something else",
        };
        if !words.contains(&w) {
            words.push(w);
        }
    }
    if let (Some(i), Some(j)) =
        (words.iter().position(|w| *w == "a name"), words.iter().position(|w| *w == "a number or expression"))
    {
        words[i.min(j)] = "a number, a name or an expression";
        words.remove(i.max(j));
    }
    match words.len() {
        0 => "something else".into(),
        1 => words[0].into(),
        n => format!("{} or {}", words[..n - 1].join(", "), words[n - 1]),
    }
}

/// A hint for the syntax mistakes people (and language models) make most.
fn syntax_hint(src: &str, pos: usize) -> Option<&'static str> {
    let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[pos..].find('\n').map_or(src.len(), |i| pos + i);
    let line = &src[line_start..line_end];
    let found_brace = src[pos..].starts_with('{');
    let first_word = line.split_whitespace().next().unwrap_or("");
    if found_brace && matches!(first_word, "net" | "block") {
        Some("the block above is missing its closing `}`: every `{` needs a matching `}` on a line of its own")
    } else if line.contains(';') {
        Some("statements end at the line break; there are no semicolons")
    } else if line.contains(':') {
        Some("arguments are written `name=value`, as in `conv(64, k=3)`")
    } else if line.contains("->") || line.contains("=>") {
        Some("pipelines are written with `|>`, as in `x |> conv(64, k=1) |> bn`")
    } else if line.contains("=(") || line.contains("= (") {
        Some("kernels, strides and paddings are single numbers: write `k=3`, not `k=(3, 3)`")
    } else if line.contains('[') || line.contains('"') || line.contains('\'') {
        Some("arguments are numbers, names, `true`/`false` or `same`; there are no lists or strings")
    } else if line.trim_start().starts_with("//") {
        Some("comments start with `#`")
    } else if src[pos..].chars().next().is_some_and(|c| c.is_alphabetic()) && pos > line_start {
        Some("one operation per line; to chain operations on one line, use `|>`: `conv(64, k=3) |> bn |> relu`")
    } else if src[pos..].is_empty() || line.trim().is_empty() {
        Some("every `{` needs a matching `}` on a line of its own")
    } else {
        None
    }
}

struct Builder<'s> {
    src: &'s str,
}

/// A pair's span without the spaces pest skips after it: an underline stops
/// at the last character of what it underlines.
fn span_of(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    let text = s.as_str();
    let trimmed = text.trim_end_matches([' ', '\t']).len();
    Span::new(s.start(), s.start() + trimmed)
}

fn comment_of(p: &Pair<Rule>) -> Comment {
    Comment { text: p.as_str()[1..].trim_end().to_string() }
}

/// Gathers the comments and blank lines between statements and items, and
/// hands each statement the ones that belong to it.
#[derive(Default)]
struct TriviaCollector {
    pending: Vec<Comment>,
    blank: bool,
    /// The last thing seen was a comment on its own line, whose line break
    /// comes next and is not an empty line.
    after_comment: bool,
    /// Where the last statement ended: a comment starting on that line trails it.
    last_end: Option<usize>,
}

impl TriviaCollector {
    /// Takes a comment or blank pair. Returns a trailing comment for the
    /// previous statement, if this pair is one.
    fn feed(&mut self, p: &Pair<Rule>, src: &str) -> Option<Comment> {
        match p.as_rule() {
            Rule::comment => {
                let start = p.as_span().start();
                if let Some(end) = self.last_end.take() {
                    if !src[end..start].contains('\n') {
                        return Some(comment_of(p));
                    }
                }
                self.pending.push(comment_of(p));
                self.after_comment = true;
                None
            }
            Rule::blank => {
                // A statement's own line break is not a pair, so a blank pair
                // is an empty line unless it ends a comment line.
                self.last_end = None;
                if self.after_comment {
                    self.after_comment = false;
                } else {
                    self.blank = true;
                }
                None
            }
            _ => None,
        }
    }
    /// The trivia of the node that ends at `end`. Items are always separated by
    /// one blank line, so callers for items ignore `blank_before`.
    fn take(&mut self, end: usize) -> Trivia {
        let t = Trivia { leading: std::mem::take(&mut self.pending), trailing: None, blank_before: self.blank };
        self.blank = false;
        self.after_comment = false;
        self.last_end = Some(end);
        t
    }
}

impl<'s> Builder<'s> {
    fn file(&self, file: Pair<Rule>) -> Result<Program, Diagnostic> {
        let mut program = Program {
            arch: None,
            arch_trivia: Trivia::default(),
            blocks: Vec::new(),
            net: None,
            order: Vec::new(),
            tail: Vec::new(),
        };
        let mut trivia = TriviaCollector::default();
        // Where the trailing comment of the last item goes.
        enum Last {
            None,
            Arch,
            Block(usize),
            Net,
        }
        let mut last = Last::None;
        for p in file.into_inner() {
            match p.as_rule() {
                Rule::comment | Rule::blank => {
                    if let Some(c) = trivia.feed(&p, self.src) {
                        let t = match last {
                            Last::Arch => &mut program.arch_trivia,
                            Last::Block(i) => &mut program.blocks[i].trivia,
                            Last::Net => &mut program.net.as_mut().expect("net was set").trivia,
                            Last::None => continue,
                        };
                        t.trailing = Some(c);
                    }
                }
                Rule::arch_decl => {
                    let t = trivia.take(p.as_span().end());
                    let span = span_of(&p);
                    if program.arch.is_some() {
                        return Err(Diagnostic::error(Code::Syntax, span, "a program has one `arch` line")
                            .label("second `arch` line"));
                    }
                    let id = p.into_inner().find(|q| q.as_rule() == Rule::ident).expect("arch has a name");
                    program.arch = Some(self.ident(id));
                    program.arch_trivia = Trivia { blank_before: false, ..t };
                    last = Last::Arch;
                }
                Rule::block_def => {
                    let t = trivia.take(p.as_span().end());
                    let mut b = self.block(p)?;
                    b.trivia = Trivia { blank_before: false, ..t };
                    program.order.push(ItemRef::Block(program.blocks.len()));
                    program.blocks.push(b);
                    last = Last::Block(program.blocks.len() - 1);
                }
                Rule::net_def => {
                    let t = trivia.take(p.as_span().end());
                    let span = span_of(&p);
                    if program.net.is_some() {
                        return Err(Diagnostic::error(
                            Code::DuplicateNet,
                            Span::new(span.start as usize, span.start as usize + 3),
                            "a program has exactly one `net`",
                        )
                        .label("second `net`")
                        .hint("merge the two into one `net { … }`, or turn one into a `block`"));
                    }
                    let mut n = self.net(p)?;
                    n.trivia = Trivia { blank_before: false, ..t };
                    program.net = Some(n);
                    program.order.push(ItemRef::Net);
                    last = Last::Net;
                }
                Rule::EOI => {}
                r => unreachable!("file holds no {r:?}"),
            }
        }
        program.tail = trivia.pending;
        Ok(program)
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: Name::new(p.as_str()), span: span_of(&p) }
    }

    fn block(&self, p: Pair<Rule>) -> Result<BlockDef, Diagnostic> {
        let span = span_of(&p);
        let mut name = None;
        let mut params = Vec::new();
        let mut brace = None;
        let mut body = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::block_kw => {}
                Rule::ident => name = Some(self.ident(q)),
                Rule::param => {
                    let pspan = span_of(&q);
                    let mut it = q.into_inner();
                    let pname = self.ident(it.next().expect("param has a name"));
                    let default = it.next().map(|e| self.expr(e)).transpose()?;
                    params.push(Param { name: pname, default, span: pspan });
                }
                Rule::comment => brace = Some(comment_of(&q)),
                Rule::body => body = Some(self.body(q, brace.take())?),
                r => unreachable!("block holds no {r:?}"),
            }
        }
        Ok(BlockDef {
            name: name.expect("block has a name"),
            params,
            body: body.expect("block has a body"),
            trivia: Trivia::default(),
            span,
        })
    }

    fn net(&self, p: Pair<Rule>) -> Result<NetDef, Diagnostic> {
        let span = span_of(&p);
        let mut brace = None;
        let mut body = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::net_kw => {}
                Rule::comment => brace = Some(comment_of(&q)),
                Rule::body => body = Some(self.body(q, brace.take())?),
                r => unreachable!("net holds no {r:?}"),
            }
        }
        Ok(NetDef { body: body.expect("net has a body"), trivia: Trivia::default(), span })
    }

    /// `brace` is a comment on the line of the opening `{`: it is kept as the
    /// first comment inside the body, where `fmt` puts it.
    fn body(&self, p: Pair<Rule>, brace: Option<Comment>) -> Result<Body, Diagnostic> {
        let mut stmts: Vec<Stmt> = Vec::new();
        let mut trivia = TriviaCollector::default();
        trivia.pending.extend(brace);
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::comment | Rule::blank => {
                    if let Some(c) = trivia.feed(&q, self.src) {
                        if let Some(s) = stmts.last_mut() {
                            s.trivia.trailing = Some(c);
                        }
                    }
                }
                _ => {
                    let mut t = trivia.take(q.as_span().end());
                    // Only a blank line between statements is kept.
                    t.blank_before &= !stmts.is_empty();
                    let mut s = self.stmt(q)?;
                    s.trivia = t;
                    stmts.push(s);
                }
            }
        }
        Ok(Body { stmts, tail: trivia.pending })
    }

    fn stmt(&self, p: Pair<Rule>) -> Result<Stmt, Diagnostic> {
        let span = span_of(&p);
        match p.as_rule() {
            Rule::pipeline => Ok(Stmt {
                kind: StmtKind::Pipe { bind: None, pipe: self.pipeline(p)? },
                trivia: Trivia::default(),
                span,
            }),
            Rule::bind_stmt => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("binding has a name"));
                let pipe = self.pipeline(it.next().expect("binding has a pipeline"))?;
                Ok(Stmt { kind: StmtKind::Pipe { bind: Some(name), pipe }, trivia: Trivia::default(), span })
            }
            Rule::repeat_stmt => {
                let mut count = None;
                let mut body = None;
                let mut brace = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::repeat_kw => {}
                        Rule::expr => count = Some(self.expr(q)?),
                        Rule::comment => brace = Some(comment_of(&q)),
                        Rule::body => body = Some(self.body(q, brace.take())?),
                        r => unreachable!("repeat holds no {r:?}"),
                    }
                }
                Ok(Stmt {
                    kind: StmtKind::Repeat {
                        count: count.expect("repeat has a count"),
                        body: body.expect("repeat has a body"),
                    },
                    trivia: Trivia::default(),
                    span,
                })
            }
            r => unreachable!("a statement is no {r:?}"),
        }
    }

    fn pipeline(&self, p: Pair<Rule>) -> Result<Pipeline, Diagnostic> {
        let span = span_of(&p);
        let stages = p.into_inner().map(|q| self.stage(q)).collect::<Result<_, _>>()?;
        Ok(Pipeline { stages, span })
    }

    fn stage(&self, p: Pair<Rule>) -> Result<Stage, Diagnostic> {
        let span = span_of(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("stage has a name"));
        let args = match it.next() {
            None => None,
            Some(call) => Some(call.into_inner().map(|a| self.arg(a)).collect::<Result<Vec<_>, _>>()?),
        };
        Ok(Stage { name, args, span })
    }

    fn arg(&self, p: Pair<Rule>) -> Result<Arg, Diagnostic> {
        let span = span_of(&p);
        let mut key = None;
        let mut value = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::ident => key = Some(self.ident(q)),
                Rule::expr => value = Some(ArgValue::Expr(self.expr(q)?)),
                Rule::branch => {
                    let bspan = span_of(&q);
                    let stages = q.into_inner().map(|s| self.stage(s)).collect::<Result<_, _>>()?;
                    value = Some(ArgValue::Branch(Pipeline { stages, span: bspan }));
                }
                r => unreachable!("an argument holds no {r:?}"),
            }
        }
        Ok(Arg { key, value: value.expect("argument has a value"), span })
    }

    fn expr(&self, p: Pair<Rule>) -> Result<Expr, Diagnostic> {
        debug_assert_eq!(p.as_rule(), Rule::expr);
        PRATT
            .map_primary(|q| self.primary(q))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = span_of(&op).to(rhs.span());
                Ok(Expr::Neg(Box::new(rhs), span))
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let bop = match op.as_rule() {
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    _ => BinOp::Div,
                };
                let span = lhs.span().to(rhs.span());
                Ok(Expr::Bin(bop, Box::new(lhs), Box::new(rhs), span))
            })
            .parse(p.into_inner())
    }

    fn primary(&self, p: Pair<Rule>) -> Result<Expr, Diagnostic> {
        match p.as_rule() {
            Rule::paren => self.expr(p.into_inner().next().expect("parentheses hold an expression")),
            Rule::number => {
                let span = span_of(&p);
                let text = p.as_str();
                let is_float = text.contains(['.', 'e', 'E']);
                if is_float {
                    match text.parse::<f64>() {
                        Ok(v) if v.is_finite() => Ok(Expr::Float(v, span)),
                        _ => Err(Diagnostic::error(Code::Syntax, span, format!("`{text}` is too large a number"))
                            .label("too large")),
                    }
                } else {
                    text.parse::<i64>().map(|v| Expr::Int(v, span)).map_err(|_| {
                        Diagnostic::error(Code::Syntax, span, format!("`{text}` is too large a number"))
                            .label("too large")
                    })
                }
            }
            Rule::ident => Ok(Expr::Name(self.ident(p))),
            r => unreachable!("an expression is no {r:?}"),
        }
    }
}
