//! GBNF, llama.cpp's grammar format (also vLLM's default backend's): printing a [`Grammar`] as
//! GBNF, and reading GBNF text into one, with llama.cpp's rules for where newlines may fall.
//!
//! What is read: `name ::= alternatives` rules (names of letters, digits, `-` and `_`), `|`,
//! grouping, `"literals"`, `[classes]` and `[^negated]` ones, `.`, `*` `+` `?` `{m}` `{m,}`
//! `{m,n}`, the escapes `\n \r \t \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH`, and `#` comments. A
//! newline ends a rule except inside parentheses and after `::=` or `|`. The start rule is `root`.

use crate::{Class, Expr, Grammar, GrammarError, Rule};

/// The grammar as GBNF text: the first rule is printed as `root`, `_` in names as `-`.
pub fn print(g: &Grammar) -> Result<String, GrammarError> {
    g.check()?;
    let start = &g.rules[0].name;
    let name = |n: &str| if n == start { "root".to_string() } else { gbnf_name(n) };
    if g.rules.iter().skip(1).any(|r| gbnf_name(&r.name) == "root") {
        return Err(GrammarError { at: None, message: "only the first rule may print as `root`".into() });
    }
    let mut out = String::new();
    for r in &g.rules {
        out += &format!("{} ::= {}\n", name(&r.name), expr(&r.body, &name, 0));
    }
    Ok(out)
}

fn gbnf_name(n: &str) -> String {
    n.replace('_', "-")
}

/// Precedence: 0 alternatives, 1 sequence, 2 postfix operand.
fn expr(e: &Expr, name: &dyn Fn(&str) -> String, prec: u8) -> String {
    let wrap = |s: String, mine: u8| if mine < prec { format!("({s})") } else { s };
    match e {
        Expr::Empty => "\"\"".into(),
        Expr::Text(t) if t.is_empty() => "\"\"".into(),
        Expr::Text(t) => format!("\"{}\"", escape(t, '"')),
        Expr::Class(c) => class(c),
        Expr::Any => ".".into(),
        Expr::Ref(n) => name(n),
        Expr::Seq(v) => wrap(v.iter().map(|e| expr(e, name, 2)).collect::<Vec<_>>().join(" "), 1),
        Expr::Alt(v) => wrap(v.iter().map(|e| expr(e, name, 1)).collect::<Vec<_>>().join(" | "), 0),
        Expr::Repeat(inner, min, max) => {
            let base = expr(inner, name, 3);
            let base = if matches!(**inner, Expr::Repeat(..)) { format!("({base})") } else { base };
            let op = match (min, max) {
                (0, None) => "*".to_string(),
                (1, None) => "+".to_string(),
                (0, Some(1)) => "?".to_string(),
                (m, None) => format!("{{{m},}}"),
                (m, Some(n)) if m == n => format!("{{{m}}}"),
                (m, Some(n)) => format!("{{{m},{n}}}"),
            };
            format!("{base}{op}")
        }
    }
}

fn class(c: &Class) -> String {
    let mut s = String::from(if c.negated { "[^" } else { "[" });
    for &(lo, hi) in &c.ranges {
        s += &escape(&lo.to_string(), ']');
        if hi != lo {
            s.push('-');
            s += &escape(&hi.to_string(), ']');
        }
    }
    s.push(']');
    s
}

/// Escapes for a literal (`quote` is `"`) or a class (`]`): what llama.cpp's reader decodes.
fn escape(t: &str, quote: char) -> String {
    let mut s = String::new();
    for c in t.chars() {
        match c {
            '\n' => s += "\\n",
            '\r' => s += "\\r",
            '\t' => s += "\\t",
            '\\' => s += "\\\\",
            '"' if quote == '"' => s += "\\\"",
            ']' | '[' if quote == ']' => {
                s.push('\\');
                s.push(c);
            }
            // In a class, `-` and `^` could read as a range or a negation: written as a code.
            '-' | '^' if quote == ']' => s += &format!("\\x{:02X}", c as u32),
            c if (c as u32) < 0x20 || c as u32 == 0x7F => s += &format!("\\x{:02X}", c as u32),
            c => s.push(c),
        }
    }
    s
}

/// Reads GBNF text. Rule names are kept, `-` turned into `_` and lower-cased, `root` first. Errors
/// give the line and column.
pub fn parse(src: &str) -> Result<Grammar, GrammarError> {
    let mut p = Reader { src, pos: 0 };
    let mut rules: Vec<(Rule, (usize, usize))> = Vec::new();
    let mut names = std::collections::HashMap::<String, String>::new();
    p.space(true);
    while !p.done() {
        let at = p.line_col();
        let raw = p.name().ok_or_else(|| p.error("expected a rule name"))?;
        p.space(false);
        if !p.eat("::=") {
            return Err(p.error(&format!("expected `::=` after the rule name `{raw}`")));
        }
        p.space(true);
        let body = p.alternatives(false, &mut names)?;
        if !p.done() && !p.eat("\n") && !p.eat("\r\n") {
            // llama.cpp's token references (`<[1000]>`, `<|im_end|>`) name token ids, which a
            // grammar over text cannot hold.
            if p.rest().starts_with('<') {
                return Err(p.error("token references (`<[id]>`, `<|name|>`) are not supported; write the text"));
            }
            return Err(p.error("expected the end of the line after the rule"));
        }
        let name = p.rule_name(raw, &mut names);
        if let Some((_, first)) = rules.iter().find(|(r, _)| r.name == name) {
            return Err(GrammarError {
                at: Some(at),
                message: format!("rule `{raw}` is defined twice (first at line {})", first.0),
            });
        }
        rules.push((Rule { name, body, token: false }, at));
        p.space(true);
    }
    let Some(root) = rules.iter().position(|(r, _)| r.name == "root") else {
        return Err(GrammarError { at: None, message: "the grammar has no `root` rule, where GBNF starts".into() });
    };
    let root = rules.remove(root);
    rules.insert(0, root);
    let g = Grammar { rules: rules.into_iter().map(|(r, _)| r).collect() };
    g.check().map_err(|e| GrammarError {
        message: e.message.replace("not defined", "not defined in the GBNF grammar"),
        ..e
    })?;
    Ok(g)
}

struct Reader<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.src.len()
    }
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }
    fn line_col(&self) -> (usize, usize) {
        let before = &self.src[..self.pos];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
    fn error(&self, message: &str) -> GrammarError {
        let found = match self.peek() {
            None => "the end of the grammar".to_string(),
            Some('\n') => "the end of the line".to_string(),
            Some(c) => format!("`{c}`"),
        };
        GrammarError { at: Some(self.line_col()), message: format!("{message}, found {found}") }
    }
    /// Spaces, tabs and `#` comments; newlines too when `newlines`.
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.pos += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '\r' if newlines => self.pos += 1,
                '\n' if newlines => self.pos += 1,
                _ => break,
            }
        }
    }
    fn name(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.src[start..self.pos])
    }
    /// The grammar's own name for a GBNF name: lower case, `_` for `-`, a letter first.
    fn rule_name(&self, raw: &str, names: &mut std::collections::HashMap<String, String>) -> String {
        if let Some(n) = names.get(raw) {
            return n.clone();
        }
        let mut n: String = raw.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_lowercase() }).collect();
        if !n.starts_with(|c: char| c.is_ascii_lowercase()) {
            n = format!("r_{n}");
        }
        // Two GBNF names that fold to one (`a-b` and `a_b`, `A` and `a`) stay apart.
        while names.values().any(|v| *v == n) {
            n.push('_');
        }
        names.insert(raw.to_string(), n.clone());
        n
    }
    fn alternatives(
        &mut self,
        nested: bool,
        names: &mut std::collections::HashMap<String, String>,
    ) -> Result<Expr, GrammarError> {
        let mut alts = vec![self.sequence(nested, names)?];
        while self.eat("|") {
            self.space(true);
            alts.push(self.sequence(nested, names)?);
        }
        Ok(if alts.len() == 1 { alts.pop().expect("one") } else { Expr::Alt(alts) })
    }
    fn sequence(
        &mut self,
        nested: bool,
        names: &mut std::collections::HashMap<String, String>,
    ) -> Result<Expr, GrammarError> {
        let mut items: Vec<Expr> = Vec::new();
        loop {
            let item = match self.peek() {
                Some('"') => {
                    self.pos += 1;
                    let mut text = String::new();
                    loop {
                        match self.peek() {
                            None | Some('\n') => return Err(self.error("unterminated string")),
                            Some('"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => text.push(self.char_in("a string")?),
                        }
                    }
                    if text.is_empty() {
                        Expr::Empty
                    } else {
                        Expr::Text(text)
                    }
                }
                Some('[') => {
                    self.pos += 1;
                    let negated = self.eat("^");
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None | Some('\n') => return Err(self.error("unterminated character class")),
                            Some(']') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => {
                                let lo = self.char_in("a character class")?;
                                let hi = if self.peek() == Some('-') && !self.rest().starts_with("-]") {
                                    self.pos += 1;
                                    if matches!(self.peek(), None | Some('\n') | Some('\r')) {
                                        return Err(self.error("unterminated character class"));
                                    }
                                    self.char_in("a character class")?
                                } else {
                                    lo
                                };
                                if hi < lo {
                                    return Err(self.error(&format!("the range {lo:?}-{hi:?} is empty")));
                                }
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    Expr::Class(Class { negated, ranges })
                }
                Some('(') => {
                    self.pos += 1;
                    self.space(true);
                    let inner = self.alternatives(true, names)?;
                    if !self.eat(")") {
                        return Err(self.error("expected `)`"));
                    }
                    inner
                }
                Some('.') => {
                    self.pos += 1;
                    Expr::Any
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                    let raw = self.name().expect("a name character").to_string();
                    if self.rest().trim_start_matches([' ', '\t']).starts_with("::=") {
                        return Err(self.error(&format!(
                            "`{raw} ::=` starts a new rule in the middle of one; end the previous rule's line first"
                        )));
                    }
                    Expr::Ref(self.rule_name(&raw, names))
                }
                Some('*' | '+' | '?' | '{') => {
                    let Some(last) = items.pop() else {
                        return Err(self.error("a repetition must follow something to repeat"));
                    };
                    let (min, max) = self.repetition()?;
                    Expr::Repeat(Box::new(last), min, max)
                }
                _ => break,
            };
            items.push(item);
            self.space(nested);
        }
        Ok(match items.len() {
            0 => Expr::Empty,
            1 => items.pop().expect("one"),
            _ => Expr::Seq(items),
        })
    }
    fn repetition(&mut self) -> Result<(u32, Option<u32>), GrammarError> {
        match self.bump() {
            Some('*') => Ok((0, None)),
            Some('+') => Ok((1, None)),
            Some('?') => Ok((0, Some(1))),
            _ => {
                self.space(false);
                let min = self.number()?;
                self.space(false);
                let max = if self.eat(",") {
                    self.space(false);
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.number()?)
                    }
                } else {
                    Some(min)
                };
                self.space(false);
                if !self.eat("}") {
                    return Err(self.error("expected `}` to end the repetition"));
                }
                if max.is_some_and(|m| m < min) {
                    return Err(self.error(&format!("the repetition {{{min},{}}} is empty", max.unwrap_or(0))));
                }
                Ok((min, max))
            }
        }
    }
    fn number(&mut self) -> Result<u32, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.src[start..self.pos];
        if digits.is_empty() {
            return Err(self.error("expected a number"));
        }
        digits.parse().map_err(|_| GrammarError {
            at: Some(self.line_col()),
            message: format!("the repetition count {digits} is too large (at most {})", u32::MAX),
        })
    }
    /// One character of a literal or class, escapes decoded.
    fn char_in(&mut self, what: &str) -> Result<char, GrammarError> {
        let c = self.bump().ok_or_else(|| self.error(&format!("unterminated {what}")))?;
        if c != '\\' {
            return Ok(c);
        }
        let code = |r: &mut Self, digits: usize| -> Result<char, GrammarError> {
            let hex = r.rest().get(..digits).filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
            let Some(hex) = hex else {
                return Err(r.error(&format!("expected {digits} hexadecimal digits in an escape")));
            };
            let v = u32::from_str_radix(hex, 16).expect("hex digits");
            r.pos += digits;
            char::from_u32(v).ok_or_else(|| r.error(&format!("\\u{v:X} is not a character")))
        };
        match self.bump() {
            Some('n') => Ok('\n'),
            Some('r') => Ok('\r'),
            Some('t') => Ok('\t'),
            Some(c @ ('\\' | '"' | '[' | ']')) => Ok(c),
            Some('x') => code(self, 2),
            Some('u') => code(self, 4),
            Some('U') => code(self, 8),
            _ => {
                self.pos -= 1;
                Err(self.error("unknown escape (GBNF has \\n \\r \\t \\\\ \\\" \\[ \\] \\xHH \\uHHHH \\UHHHHHHHH)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_example_constructs_read_and_print_back_to_the_same_grammar() {
        // The constructs of llama.cpp's grammars/ examples: json.gbnf's layout (rule bodies on the
        // next line, groups over lines, comments), arithmetic's recursion, chess's repetitions,
        // escapes and negated classes, `-` in names.
        let src = r#"
# a comment line
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
move-list ::= (. [\u00e9\U0001F600]){2,} "x"{3}
"#;
        let g = parse(src).unwrap();
        assert_eq!(g.rules[0].name, "root");
        assert!(g.get("move_list").is_some());
        let Expr::Seq(items) = &g.get("move_list").unwrap().body else { panic!("a sequence") };
        assert_eq!(items[1], Expr::Repeat(Box::new(Expr::text("x")), 3, Some(3)));
        let string = &g.get("string").unwrap().body;
        let printed = print(&g).unwrap();
        let again = parse(&printed).unwrap();
        assert_eq!(again, g, "{printed}");
        assert!(format!("{string:?}").contains("negated: true"));
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        let e = |src: &str| parse(src).unwrap_err().to_string();
        assert_eq!(e("root ::= \"a\"\nb ::= c\n"), "rule `b` refers to `c`, which is not defined in the GBNF grammar");
        assert!(e("root ::= \"a\nx").starts_with("line 1, column 12: unterminated string"), "{}", e("root ::= \"a\nx"));
        assert!(e("root = \"a\"").starts_with("line 1, column 6: expected `::=`"), "{}", e("root = \"a\""));
        assert!(e("a ::= \"x\"").contains("no `root` rule"));
        assert!(e("root ::= (\"a\" | \"b\"\n").contains("expected `)`"));
        assert!(e("root ::= [b-a]").contains("empty"));
        assert!(e("root ::= \"\\q\"").contains("unknown escape"));
        assert!(e("root ::= \"a\" \nroot ::= \"b\"").starts_with("line 2, column 1: rule `root` is defined twice"));
        assert!(e("root ::= * \"a\"").contains("must follow something"));
        assert!(e("root ::= \"a\" b ::= \"c\"").contains("starts a new rule"));
        assert!(
            e("root ::= \"a\"{99999999999999999999}").contains("repetition count 99999999999999999999 is too large")
        );
        assert!(e("root ::= [a-").contains("unterminated character class"), "{}", e("root ::= [a-"));
        assert!(e("root ::= \"a\" <[1000]>").contains("token references"), "{}", e("root ::= \"a\" <[1000]>"));
    }

    #[test]
    fn a_newline_ends_a_rule_but_not_inside_parentheses_or_after_a_bar() {
        let g = parse("root ::= \"a\" |\n  \"b\"\nx ::= (\"c\"\n \"d\")\n").unwrap();
        assert_eq!(g.rules[0].body, Expr::Alt(vec![Expr::text("a"), Expr::text("b")]));
        assert_eq!(g.get("x").unwrap().body, Expr::Seq(vec![Expr::text("c"), Expr::text("d")]));
    }

    #[test]
    fn special_characters_survive_printing() {
        let mut g = Grammar::default();
        g.define("start", Expr::seq([Expr::text("a\"b\\c\n\t"), Expr::Class(Class::of("-]^[\\a")), Expr::Any]));
        let text = print(&g).unwrap();
        assert!(text.starts_with("root ::= "), "{text}");
        let back = parse(&text).unwrap();
        assert_eq!(back.rules[0].body, g.rules[0].body, "{text}");
    }
}
