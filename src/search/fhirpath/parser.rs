//! FHIRPath text → syntax tree. The grammar and operator precedence are FHIRPath N1's; what the
//! search expressions never use (arithmetic, date/time and quantity literals, most functions) is
//! rejected with an error naming it, so an unsupported expression is reported at start-up rather
//! than silently indexing nothing.

use super::FhirPathError;
use super::model::FhirType;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// The focus: `$this`, or the implicit start of a path (`code` in a composite component).
    This,
    /// `%resource` / `%rootResource`: the resource being indexed.
    Resource,
    /// A leading type name (`Patient.name`): keeps the focus if it is of that type.
    TypeFilter(TypeSpec),
    Bool(bool),
    Str(Box<str>),
    Num(f64),
    /// `{}`
    Empty,
    Child(Box<Expr>, Box<str>),
    Call(Box<Expr>, Func),
    Index(Box<Expr>, Box<Expr>),
    Union(Vec<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeSpec),
    As(Box<Expr>, TypeSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Func {
    Where(Box<Expr>),
    Select(Box<Expr>),
    Exists(Option<Box<Expr>>),
    All(Box<Expr>),
    Empty,
    First,
    Last,
    Tail,
    Single,
    Skip(Box<Expr>),
    Take(Box<Expr>),
    Not,
    Count,
    HasValue,
    OfType(TypeSpec),
    Extension(Box<str>),
    Resolve,
    Distinct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    Lt,
    Gt,
    Le,
    Ge,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// A type named in `is`, `as`, `ofType` or at the start of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeSpec(pub FhirType);

#[derive(Debug, Clone, PartialEq)]
enum Tok<'s> {
    /// An identifier; `quoted` for a `` `delimited` `` one, which is never a keyword.
    Ident {
        text: &'s str,
        quoted: bool,
    },
    Str(String),
    Num(&'s str),
    /// `@2020-01-01` and friends.
    DateTime(&'s str),
    /// `%name`
    Env(String),
    /// `$this`, `$index`, `$total`
    Special(&'s str),
    Punct(&'static str),
    Eof,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Lexer<'s> {
    fn err(&self, msg: impl Into<String>) -> FhirPathError {
        FhirPathError::Syntax {
            position: self.pos,
            message: msg.into(),
        }
    }

    fn tokens(mut self) -> Result<Vec<(usize, Tok<'s>)>, FhirPathError> {
        let mut out = Vec::new();
        loop {
            self.skip_space_and_comments();
            let start = self.pos;
            let tok = self.next()?;
            let end = tok == Tok::Eof;
            out.push((start, tok));
            if end {
                return Ok(out);
            }
        }
    }

    fn skip_space_and_comments(&mut self) {
        let b = self.src.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if b[self.pos..].starts_with(b"//") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if b[self.pos..].starts_with(b"/*") {
                match self.src[self.pos + 2..].find("*/") {
                    Some(i) => self.pos += i + 4,
                    None => self.pos = b.len(),
                }
            } else {
                return;
            }
        }
    }

    fn next(&mut self) -> Result<Tok<'s>, FhirPathError> {
        let b = self.src.as_bytes();
        let Some(&c) = b.get(self.pos) else {
            return Ok(Tok::Eof);
        };
        let start = self.pos;
        if c.is_ascii_alphabetic() || c == b'_' {
            while self.pos < b.len() && (b[self.pos].is_ascii_alphanumeric() || b[self.pos] == b'_')
            {
                self.pos += 1;
            }
            return Ok(Tok::Ident {
                text: &self.src[start..self.pos],
                quoted: false,
            });
        }
        if c.is_ascii_digit() {
            while self.pos < b.len() && b[self.pos].is_ascii_digit() {
                self.pos += 1;
            }
            // A `.` is part of the number only when a digit follows (`1.5`, not `1.first()`).
            if b.get(self.pos) == Some(&b'.') && b.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
            {
                self.pos += 1;
                while self.pos < b.len() && b[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
            }
            return Ok(Tok::Num(&self.src[start..self.pos]));
        }
        match c {
            b'\'' => {
                self.pos += 1;
                Ok(Tok::Str(self.quoted(b'\'')?))
            }
            b'`' => {
                self.pos += 1;
                let from = self.pos;
                let Some(len) = self.src[from..].find('`') else {
                    return Err(self.err("unterminated `identifier`"));
                };
                self.pos = from + len + 1;
                Ok(Tok::Ident {
                    text: &self.src[from..from + len],
                    quoted: true,
                })
            }
            b'@' => {
                self.pos += 1;
                while self.pos < b.len()
                    && (b[self.pos].is_ascii_alphanumeric() || b"-:.+TZ".contains(&b[self.pos]))
                {
                    self.pos += 1;
                }
                Ok(Tok::DateTime(&self.src[start..self.pos]))
            }
            b'%' => {
                self.pos += 1;
                match b.get(self.pos) {
                    Some(b'\'') => {
                        self.pos += 1;
                        Ok(Tok::Env(self.quoted(b'\'')?))
                    }
                    Some(b'`') => {
                        self.pos += 1;
                        Ok(Tok::Env(self.quoted(b'`')?))
                    }
                    _ => {
                        let from = self.pos;
                        while self.pos < b.len()
                            && (b[self.pos].is_ascii_alphanumeric() || b[self.pos] == b'_')
                        {
                            self.pos += 1;
                        }
                        if from == self.pos {
                            return Err(self.err("expected a name after %"));
                        }
                        Ok(Tok::Env(self.src[from..self.pos].to_string()))
                    }
                }
            }
            b'$' => {
                self.pos += 1;
                while self.pos < b.len() && b[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                Ok(Tok::Special(&self.src[start..self.pos]))
            }
            _ => {
                // Two-character operators first, so `<=` is not read as `<`.
                const PUNCT: [&str; 22] = [
                    "<=", ">=", "!=", "!~", ".", "(", ")", "[", "]", "{", "}", ",", "|", "=", "~",
                    "<", ">", "+", "-", "*", "/", "&",
                ];
                for p in PUNCT {
                    if self.src[self.pos..].starts_with(p) {
                        self.pos += p.len();
                        return Ok(Tok::Punct(p));
                    }
                }
                Err(self.err(format!(
                    "unexpected character {:?}",
                    self.src[self.pos..].chars().next().unwrap_or(' ')
                )))
            }
        }
    }

    /// The rest of a quoted string or identifier, with FHIRPath escapes decoded.
    fn quoted(&mut self, quote: u8) -> Result<String, FhirPathError> {
        let mut out = String::new();
        let src = self.src;
        loop {
            let rest = &src[self.pos..];
            let Some(i) = rest.find([quote as char, '\\']) else {
                return Err(self.err("unterminated string"));
            };
            out.push_str(&rest[..i]);
            self.pos += i;
            if src.as_bytes()[self.pos] == quote {
                self.pos += 1;
                return Ok(out);
            }
            let esc = src[self.pos + 1..].chars().next();
            self.pos += 2;
            match esc {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex = src
                        .get(self.pos..self.pos + 4)
                        .ok_or_else(|| self.err("short \\u escape"))?;
                    let c = u32::from_str_radix(hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| self.err("bad \\u escape"))?;
                    out.push(c);
                    self.pos += 4;
                }
                Some(c @ ('\'' | '"' | '`' | '\\' | '/')) => out.push(c),
                _ => return Err(self.err("unknown escape")),
            }
        }
    }
}

pub(crate) fn parse(src: &str) -> Result<Expr, FhirPathError> {
    let tokens = Lexer { src, pos: 0 }.tokens()?;
    let mut p = Parser { tokens, at: 0 };
    let expr = p.expression()?;
    match p.peek() {
        Tok::Eof => Ok(expr),
        t => Err(p.err(format!("unexpected {}", describe(t)))),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident { text, .. } => format!("'{text}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(n) => format!("number {n}"),
        Tok::DateTime(d) => format!("date/time {d}"),
        Tok::Env(e) => format!("%{e}"),
        Tok::Special(s) => s.to_string(),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Eof => "end of expression".into(),
    }
}

struct Parser<'s> {
    tokens: Vec<(usize, Tok<'s>)>,
    at: usize,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Tok<'s> {
        &self.tokens[self.at].1
    }

    fn bump(&mut self) -> Tok<'s> {
        let t = self.tokens[self.at].1.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn err(&self, message: impl Into<String>) -> FhirPathError {
        FhirPathError::Syntax {
            position: self.tokens[self.at].0,
            message: message.into(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> FhirPathError {
        FhirPathError::Unsupported(what.into())
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Ident { text, quoted: false } if *text == k)
    }

    fn expect(&mut self, p: &str) -> Result<(), FhirPathError> {
        if self.is_punct(p) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(format!("expected '{p}', found {}", describe(self.peek()))))
        }
    }

    fn expression(&mut self) -> Result<Expr, FhirPathError> {
        self.implies()
    }

    fn implies(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.or()?;
        while self.is_keyword("implies") {
            self.bump();
            let right = self.or()?;
            left = Expr::Binary(BinOp::Implies, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.and()?;
        loop {
            let op = if self.is_keyword("or") {
                BinOp::Or
            } else if self.is_keyword("xor") {
                BinOp::Xor
            } else {
                return Ok(left);
            };
            self.bump();
            let right = self.and()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn and(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.membership()?;
        while self.is_keyword("and") {
            self.bump();
            let right = self.membership()?;
            left = Expr::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn membership(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.equality()?;
        loop {
            let op = if self.is_keyword("in") {
                BinOp::In
            } else if self.is_keyword("contains") {
                BinOp::Contains
            } else {
                return Ok(left);
            };
            self.bump();
            let right = self.equality()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn equality(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.inequality()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("=") => BinOp::Eq,
                Tok::Punct("!=") => BinOp::Ne,
                Tok::Punct("~") => BinOp::Equiv,
                Tok::Punct("!~") => BinOp::NotEquiv,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.inequality()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn inequality(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.union()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("<") => BinOp::Lt,
                Tok::Punct(">") => BinOp::Gt,
                Tok::Punct("<=") => BinOp::Le,
                Tok::Punct(">=") => BinOp::Ge,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.union()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn union(&mut self) -> Result<Expr, FhirPathError> {
        let first = self.type_expr()?;
        if !self.is_punct("|") {
            return Ok(first);
        }
        let mut branches = vec![first];
        while self.is_punct("|") {
            self.bump();
            branches.push(self.type_expr()?);
        }
        Ok(Expr::Union(branches))
    }

    fn type_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.additive()?;
        loop {
            let is = if self.is_keyword("is") {
                true
            } else if self.is_keyword("as") {
                false
            } else {
                return Ok(left);
            };
            self.bump();
            let ty = self.type_spec()?;
            left = if is {
                Expr::Is(Box::new(left), ty)
            } else {
                Expr::As(Box::new(left), ty)
            };
        }
    }

    fn additive(&mut self) -> Result<Expr, FhirPathError> {
        let left = self.multiplicative()?;
        match self.peek() {
            Tok::Punct(op @ ("+" | "-" | "&")) => {
                Err(self.unsupported(format!("arithmetic operator '{op}'")))
            }
            _ => Ok(left),
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, FhirPathError> {
        let left = self.unary()?;
        if matches!(self.peek(), Tok::Punct("*" | "/")) || self.is_keyword("div") {
            return Err(self.unsupported(format!("arithmetic operator {}", describe(self.peek()))));
        }
        if self.is_keyword("mod") {
            return Err(self.unsupported("arithmetic operator 'mod'"));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        match self.peek() {
            Tok::Punct("-") => {
                self.bump();
                match self.postfix()? {
                    Expr::Num(n) => Ok(Expr::Num(-n)),
                    _ => Err(self.unsupported("unary minus on a non-literal")),
                }
            }
            Tok::Punct("+") => {
                self.bump();
                self.postfix()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        loop {
            if self.is_punct(".") {
                self.bump();
                let name = self.identifier()?;
                expr = self.invocation(expr, name)?;
            } else if self.is_punct("[") {
                self.bump();
                let index = self.expression()?;
                self.expect("]")?;
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                return Ok(expr);
            }
        }
    }

    fn identifier(&mut self) -> Result<(&'s str, bool), FhirPathError> {
        match self.bump() {
            Tok::Ident { text, quoted } => Ok((text, quoted)),
            t => Err(self.err(format!("expected a name, found {}", describe(&t)))),
        }
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        match self.peek().clone() {
            Tok::Punct("(") => {
                self.bump();
                let e = self.expression()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Punct("{") => {
                self.bump();
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Str(s.into()))
            }
            Tok::Num(n) => {
                self.bump();
                if let Tok::Str(_) = self.peek() {
                    return Err(self.unsupported("quantity literals"));
                }
                Ok(Expr::Num(n.parse().map_err(|_| self.err("bad number"))?))
            }
            Tok::DateTime(d) => Err(self.unsupported(format!("date/time literal {d}"))),
            Tok::Env(name) => {
                self.bump();
                match name.as_str() {
                    "resource" | "rootResource" => Ok(Expr::Resource),
                    "context" => Ok(Expr::This),
                    other => Err(self.unsupported(format!("environment variable %{other}"))),
                }
            }
            Tok::Special(s) => {
                self.bump();
                match s {
                    "$this" => Ok(Expr::This),
                    other => Err(self.unsupported(other.to_string())),
                }
            }
            Tok::Ident {
                text: "true" | "false",
                quoted: false,
            } => {
                let t = self.bump();
                Ok(Expr::Bool(matches!(t, Tok::Ident { text: "true", .. })))
            }
            Tok::Ident { .. } => {
                let name = self.identifier()?;
                // The first name of a path may name the context's type (`Patient.name`): a
                // type name begins with a capital, an element name never does.
                if !self.is_punct("(")
                    && name.0.starts_with(|c: char| c.is_ascii_uppercase())
                    && let Some(t) = FhirType::named(name.0)
                {
                    return Ok(Expr::TypeFilter(TypeSpec(t)));
                }
                self.invocation(Expr::This, name)
            }
            t => Err(self.err(format!("unexpected {}", describe(&t)))),
        }
    }

    /// `target.name` or `target.name(args)`.
    fn invocation(
        &mut self,
        target: Expr,
        (name, quoted): (&str, bool),
    ) -> Result<Expr, FhirPathError> {
        if quoted || !self.is_punct("(") {
            return Ok(Expr::Child(Box::new(target), name.into()));
        }
        self.bump();
        let target = Box::new(target);
        let func = match name {
            "where" => Func::Where(self.one_arg()?),
            "select" => Func::Select(self.one_arg()?),
            "all" => Func::All(self.one_arg()?),
            "exists" => {
                if self.is_punct(")") {
                    self.bump();
                    Func::Exists(None)
                } else {
                    Func::Exists(Some(self.one_arg()?))
                }
            }
            "skip" => Func::Skip(self.one_arg()?),
            "take" => Func::Take(self.one_arg()?),
            "empty" | "first" | "last" | "tail" | "single" | "not" | "count" | "hasValue"
            | "resolve" | "distinct" => {
                self.expect(")")?;
                match name {
                    "empty" => Func::Empty,
                    "first" => Func::First,
                    "last" => Func::Last,
                    "tail" => Func::Tail,
                    "single" => Func::Single,
                    "not" => Func::Not,
                    "count" => Func::Count,
                    "hasValue" => Func::HasValue,
                    "distinct" => Func::Distinct,
                    _ => Func::Resolve,
                }
            }
            "ofType" | "as" | "is" => {
                let ty = self.type_spec()?;
                self.expect(")")?;
                return Ok(match name {
                    "ofType" => Expr::Call(target, Func::OfType(ty)),
                    "as" => Expr::As(target, ty),
                    _ => Expr::Is(target, ty),
                });
            }
            "extension" => {
                let Tok::Str(url) = self.bump() else {
                    return Err(self.unsupported("extension() with a non-literal url"));
                };
                self.expect(")")?;
                Func::Extension(url.into())
            }
            "trace" => {
                // Diagnostics only: evaluates to its input.
                self.expression()?;
                if self.is_punct(",") {
                    self.bump();
                    self.expression()?;
                }
                self.expect(")")?;
                return Ok(*target);
            }
            other => return Err(self.unsupported(format!("function {other}()"))),
        };
        Ok(Expr::Call(target, func))
    }

    fn one_arg(&mut self) -> Result<Box<Expr>, FhirPathError> {
        let e = self.expression()?;
        self.expect(")")?;
        Ok(Box::new(e))
    }

    /// A type specifier: `Quantity`, `FHIR.Quantity`, `dateTime`, or a FHIRPath system type
    /// (`System.DateTime`, `DateTime`), read as the FHIR primitive that carries it; the R4
    /// composites write `value.as(DateTime)` for `valueDateTime`.
    fn type_spec(&mut self) -> Result<TypeSpec, FhirPathError> {
        let (mut name, _) = self.identifier()?;
        let mut namespace = None;
        if self.is_punct(".") {
            self.bump();
            namespace = Some(name);
            name = self.identifier()?.0;
        }
        if namespace != Some("System")
            && let Some(t) = FhirType::named(name)
        {
            return Ok(TypeSpec(t));
        }
        if namespace.is_none_or(|n| n == "System") {
            let fhir = match name {
                "Boolean" => Some("boolean"),
                "String" => Some("string"),
                "Integer" => Some("integer"),
                "Decimal" => Some("decimal"),
                "Date" => Some("date"),
                "DateTime" => Some("dateTime"),
                "Time" => Some("time"),
                _ => None,
            };
            if let Some(t) = fhir.and_then(FhirType::named) {
                return Ok(TypeSpec(t));
            }
        }
        Err(FhirPathError::UnknownType(name.to_string()))
    }
}
