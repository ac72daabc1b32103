//! The parser's fast path: a hand-written reader of the line-oriented language that
//! builds exactly the tree the pest grammar builds, or gives up. It never reports errors.
//!
//! The search parses tens of thousands of candidates a second, and pest's general
//! machinery costs most of a check. Programs a model writes are almost always
//! well formed, so this reader handles them; anything it does not recognise (a
//! syntax error, a carriage return, a construct it leaves to pest) returns
//! `None`, and pest parses the text and explains the error. A property test holds
//! the two to the same tree, spans included, on every input the fast path accepts.

use super::ast::*;

/// Parses a whole program, or `None` to let pest do it.
pub(super) fn parse(src: &str) -> Option<Program> {
    if src.contains('\r') {
        return None;
    }
    let mut lines = Lines { src, pos: 0 };
    let mut program = Program {
        arch: None,
        arch_trivia: Trivia::default(),
        blocks: Vec::new(),
        net: None,
        order: Vec::new(),
        tail: Vec::new(),
    };
    let mut pending = Pending::default();
    while let Some((start, text)) = lines.next() {
        let mut c = Cur { src, line_end: start + text.len(), i: start };
        c.ws();
        match c.peek() {
            None => pending.blank = true,
            Some(b'#') => pending.comments.push(c.comment()),
            _ => {
                let mut trivia = pending.take();
                trivia.blank_before = false;
                if c.keyword("arch") {
                    if program.arch.is_some() {
                        return None;
                    }
                    c.ws();
                    program.arch = Some(c.ident()?);
                    trivia.trailing = c.line_end()?;
                    program.arch_trivia = trivia;
                } else if c.keyword("block") {
                    let kw = c.i - 5;
                    c.ws();
                    let name = c.ident()?;
                    c.ws();
                    c.eat(b'(')?;
                    let params = params(&mut c)?;
                    c.ws();
                    c.eat(b'{')?;
                    let brace = c.line_end()?;
                    let (body, close, trailing) = body(&mut lines, src, brace)?;
                    trivia.trailing = trailing;
                    program.order.push(ItemRef::Block(program.blocks.len()));
                    program.blocks.push(BlockDef { name, params, body, trivia, span: Span::new(kw, close) });
                } else if c.keyword("net") {
                    if program.net.is_some() {
                        return None;
                    }
                    let kw = c.i - 3;
                    c.ws();
                    c.eat(b'{')?;
                    let brace = c.line_end()?;
                    let (body, close, trailing) = body(&mut lines, src, brace)?;
                    trivia.trailing = trailing;
                    program.net = Some(NetDef { body, trivia, span: Span::new(kw, close) });
                    program.order.push(ItemRef::Net);
                } else {
                    return None;
                }
            }
        }
    }
    program.tail = pending.comments;
    Some(program)
}

/// Comments and blank lines seen since the last statement.
#[derive(Default)]
struct Pending {
    comments: Vec<Comment>,
    blank: bool,
}

impl Pending {
    fn take(&mut self) -> Trivia {
        let t = Trivia { leading: std::mem::take(&mut self.comments), trailing: None, blank_before: self.blank };
        self.blank = false;
        t
    }
}

struct Lines<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lines<'a> {
    /// The next line: its start offset and its text without the line break.
    fn next(&mut self) -> Option<(usize, &'a str)> {
        if self.pos >= self.src.len() {
            return None;
        }
        let start = self.pos;
        let rest = &self.src[start..];
        let len = rest.find('\n').unwrap_or(rest.len());
        self.pos = start + len + 1;
        Some((start, &rest[..len]))
    }
}

/// Reads statements up to the closing `}`. Returns the body, the end offset of
/// the `}`, and the comment after it on its line.
fn body(lines: &mut Lines, src: &str, brace: Option<Comment>) -> Option<(Body, usize, Option<Comment>)> {
    let mut pending = Pending::default();
    pending.comments.extend(brace);
    let mut stmts: Vec<Stmt> = Vec::new();
    while let Some((start, text)) = lines.next() {
        let mut c = Cur { src, line_end: start + text.len(), i: start };
        c.ws();
        match c.peek() {
            None => pending.blank = true,
            Some(b'#') => pending.comments.push(c.comment()),
            Some(b'}') => {
                c.i += 1;
                let close = c.i;
                let trailing = c.line_end()?;
                return Some((Body { stmts, tail: pending.comments }, close, trailing));
            }
            _ => {
                let mut trivia = pending.take();
                trivia.blank_before &= !stmts.is_empty();
                let begin = c.i;
                let kind = if c.keyword("repeat") {
                    c.ws();
                    c.eat(b'(')?;
                    let count = expr(&mut c)?;
                    c.ws();
                    c.eat(b')')?;
                    c.ws();
                    c.eat(b'{')?;
                    let brace = c.line_end()?;
                    let (inner, close, trailing) = body(lines, src, brace)?;
                    trivia.trailing = trailing;
                    stmts.push(Stmt {
                        kind: StmtKind::Repeat { count, body: inner },
                        trivia,
                        span: Span::new(begin, close),
                    });
                    continue;
                } else {
                    let save = c.i;
                    let bind = match c.ident() {
                        Some(name) => {
                            c.ws();
                            if c.peek() == Some(b'=') {
                                c.i += 1;
                                c.ws();
                                Some(name)
                            } else {
                                c.i = save;
                                None
                            }
                        }
                        None => None,
                    };
                    let pipe = pipeline(&mut c, false)?;
                    StmtKind::Pipe { bind, pipe }
                };
                let end = match &kind {
                    StmtKind::Pipe { pipe, .. } => pipe.span.end as usize,
                    StmtKind::Repeat { .. } => unreachable!("handled above"),
                };
                trivia.trailing = c.line_end()?;
                stmts.push(Stmt { kind, trivia, span: Span::new(begin, end) });
            }
        }
    }
    None
}

/// `p, q=1)` after the opening parenthesis of a block definition.
fn params(c: &mut Cur) -> Option<Vec<Param>> {
    let mut out = Vec::new();
    c.ws();
    if c.peek() == Some(b')') {
        c.i += 1;
        return Some(out);
    }
    loop {
        c.ws();
        let name = c.ident()?;
        c.ws();
        let default = if c.peek() == Some(b'=') {
            c.i += 1;
            Some(expr(c)?)
        } else {
            None
        };
        // The end of what was read: a default's closing parenthesis counts.
        let end = if default.is_some() { c.i } else { name.span.end as usize };
        out.push(Param { span: Span::new(name.span.start as usize, end), name, default });
        c.ws();
        match c.peek()? {
            b',' => {
                c.i += 1;
                c.ws();
                if c.peek() == Some(b')') {
                    c.i += 1;
                    return Some(out);
                }
            }
            b')' => {
                c.i += 1;
                return Some(out);
            }
            _ => return None,
        }
    }
}

/// `stage |> stage …`; a branch (`branch`) needs at least one `|>`.
fn pipeline(c: &mut Cur, branch: bool) -> Option<Pipeline> {
    let first = stage(c)?;
    let start = first.span.start as usize;
    let mut stages = vec![first];
    loop {
        let save = c.i;
        c.ws();
        if c.starts_with(b"|>") {
            c.i += 2;
            c.ws();
            stages.push(stage(c)?);
        } else {
            c.i = save;
            break;
        }
    }
    if branch && stages.len() < 2 {
        return None;
    }
    let end = stages.last().expect("a pipeline has a stage").span.end as usize;
    Some(Pipeline { stages, span: Span::new(start, end) })
}

fn stage(c: &mut Cur) -> Option<Stage> {
    let name = c.ident()?;
    let start = name.span.start as usize;
    let save = c.i;
    c.ws();
    if c.peek() != Some(b'(') {
        c.i = save;
        return Some(Stage { span: name.span, name, args: None });
    }
    c.i += 1;
    let mut args = Vec::new();
    c.ws();
    if c.peek() == Some(b')') {
        c.i += 1;
        return Some(Stage { name, args: Some(args), span: Span::new(start, c.i) });
    }
    loop {
        c.ws();
        args.push(arg(c)?);
        c.ws();
        match c.peek()? {
            b',' => {
                c.i += 1;
                c.ws();
                if c.peek() == Some(b')') {
                    c.i += 1;
                    break;
                }
            }
            b')' => {
                c.i += 1;
                break;
            }
            _ => return None,
        }
    }
    Some(Stage { name, args: Some(args), span: Span::new(start, c.i) })
}

fn arg(c: &mut Cur) -> Option<Arg> {
    let start = c.i;
    // `name=value`, unless the `=` is the start of `==`.
    let mut key = None;
    if let Some(k) = c.ident() {
        c.ws();
        if c.peek() == Some(b'=') && c.peek_at(1) != Some(b'=') {
            c.i += 1;
            c.ws();
            if c.peek() == Some(b'=') {
                return None;
            }
            key = Some(k);
        } else {
            c.i = start;
        }
    }
    let value_start = c.i;
    let value = match expr(c) {
        Some(e) if c.next_is_arg_end() => ArgValue::Expr(e),
        _ => {
            c.i = value_start;
            ArgValue::Branch(pipeline(c, true)?)
        }
    };
    Some(Arg { key, value, span: Span::new(start, c.i) })
}

/// `a + b * -c`: left-associative, `*` and `/` above `+` and `-`, negation above both.
fn expr(c: &mut Cur) -> Option<Expr> {
    binary(c, 1)
}

/// Operands joined by operators of precedence `level` or higher (the `BinOp`
/// precedences: 1 for `+ -`, 2 for `* /`).
fn binary(c: &mut Cur, level: u8) -> Option<Expr> {
    let mut lhs = if level == 1 { binary(c, 2)? } else { unary(c)? };
    loop {
        let save = c.i;
        c.ws();
        let op = match c.peek() {
            Some(b'+') => Some(BinOp::Add),
            Some(b'-') => Some(BinOp::Sub),
            Some(b'*') => Some(BinOp::Mul),
            Some(b'/') => Some(BinOp::Div),
            _ => None,
        };
        let Some(op) = op.filter(|op| op.precedence() == level) else {
            c.i = save;
            return Some(lhs);
        };
        c.i += 1;
        let rhs = if level == 1 { binary(c, 2)? } else { unary(c)? };
        let span = lhs.span().to(rhs.span());
        lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs), span);
    }
}

fn unary(c: &mut Cur) -> Option<Expr> {
    c.ws();
    match c.peek()? {
        b'-' => {
            let start = c.i;
            c.i += 1;
            let inner = unary(c)?;
            let span = Span::new(start, inner.span().end as usize);
            Some(Expr::Neg(Box::new(inner), span))
        }
        b'(' => {
            c.i += 1;
            let e = expr(c)?;
            c.ws();
            c.eat(b')')?;
            Some(e)
        }
        b'0'..=b'9' => c.number(),
        _ => c.ident().map(Expr::Name),
    }
}

/// A cursor in one line of the source.
struct Cur<'a> {
    src: &'a str,
    line_end: usize,
    i: usize,
}

fn is_id_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}
fn is_id(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl<'a> Cur<'a> {
    fn bytes(&self) -> &'a [u8] {
        &self.src.as_bytes()[..self.line_end]
    }
    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }
    fn peek_at(&self, k: usize) -> Option<u8> {
        self.bytes().get(self.i + k).copied()
    }
    fn starts_with(&self, s: &[u8]) -> bool {
        self.bytes()[self.i..].starts_with(s)
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.i += 1)
    }
    /// A keyword, not followed by a character that would make it a longer name.
    fn keyword(&mut self, kw: &str) -> bool {
        let ok = self.starts_with(kw.as_bytes()) && !self.peek_at(kw.len()).is_some_and(is_id);
        if ok {
            self.i += kw.len();
        }
        ok
    }
    fn ident(&mut self) -> Option<Ident> {
        let start = self.i;
        if !self.peek().is_some_and(is_id_start) {
            return None;
        }
        while self.peek().is_some_and(is_id) {
            self.i += 1;
        }
        Some(Ident { name: Name::new(&self.src[start..self.i]), span: Span::new(start, self.i) })
    }
    fn number(&mut self) -> Option<Expr> {
        let start = self.i;
        let digits = |c: &mut Self| {
            let s = c.i;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                c.i += 1;
            }
            c.i > s
        };
        digits(self);
        if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
            digits(self);
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.i;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                self.i = save;
            }
        }
        let text = &self.src[start..self.i];
        let span = Span::new(start, self.i);
        if text.contains(['.', 'e', 'E']) {
            text.parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| Expr::Float(v, span))
        } else {
            text.parse::<i64>().ok().map(|v| Expr::Int(v, span))
        }
    }
    /// The comment from `#` to the end of the line.
    fn comment(&mut self) -> Comment {
        let text = self.src[self.i + 1..self.line_end].trim_end().to_string();
        self.i = self.line_end;
        Comment { text }
    }
    /// The rest of a line after its content: spaces, then perhaps a comment.
    fn line_end(&mut self) -> Option<Option<Comment>> {
        self.ws();
        match self.peek() {
            None => Some(None),
            Some(b'#') => Some(Some(self.comment())),
            Some(_) => None,
        }
    }
    fn next_is_arg_end(&mut self) -> bool {
        let save = self.i;
        self.ws();
        let end = matches!(self.peek(), Some(b',' | b')'));
        self.i = save;
        end
    }
}
