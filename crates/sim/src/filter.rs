//! OneView collection filters (`?filter=...`), as every public client writes them (SPEC §1.1):
//! the whole expression in double quotes or not, `=`/`EQ`/`NE`/`GT`/`GE`/`LT`/`LE` and symbolic
//! operators, `AND`/`OR` in either case, parentheses, `NOT`, `matches` with `%` wildcards, the
//! `field:value` form of the certificate endpoints, dotted field paths, and several `filter=`
//! parameters ANDed together. Pure: parses text and evaluates it against JSON, no I/O.

use serde_json::Value;
use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp {
        field: String,
        op: Op,
        value: Option<String>,
    },
    True,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Matches,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {input:?}: {reason}")]
pub struct FilterError {
    pub input: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Sym(&'static str),
    LParen,
    RParen,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '\'' | '"' => {
                let quote = c;
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated {quote} quote")),
                        // '' inside a single-quoted string is an escaped quote
                        Some(&q) if q == quote && chars.get(i + 1) == Some(&quote) => {
                            v.push(q);
                            i += 2
                        }
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            v.push(ch);
                            i += 1
                        }
                    }
                }
                out.push(Tok::Quoted(v));
            }
            '=' | '!' | '<' | '>' | ':' => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                let sym = match two.as_str() {
                    "==" => "=",
                    "!=" => "!=",
                    "<>" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ => "",
                };
                if !sym.is_empty() {
                    out.push(Tok::Sym(sym));
                    i += 2;
                } else {
                    out.push(Tok::Sym(match c {
                        '=' => "=",
                        '<' => "<",
                        '>' => ">",
                        ':' => ":",
                        _ => return Err("a lone '!' is not an operator".into()),
                    }));
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !"()'\"=!<>:".contains(chars[i])
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }
    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }
    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }
    fn factor(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.factor()?)));
        }
        match self.toks.get(self.pos).cloned() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.expr()?;
                if self.toks.get(self.pos) != Some(&Tok::RParen) {
                    return Err("missing ')'".into());
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Word(field)) => {
                self.pos += 1;
                let op = match self.toks.get(self.pos) {
                    Some(Tok::Sym(s)) => match *s {
                        "=" | ":" => Op::Eq,
                        "!=" => Op::Ne,
                        "<" => Op::Lt,
                        "<=" => Op::Le,
                        ">" => Op::Gt,
                        ">=" => Op::Ge,
                        _ => return Err(format!("unknown operator {s}")),
                    },
                    Some(Tok::Word(w)) => match w.to_ascii_uppercase().as_str() {
                        "EQ" => Op::Eq,
                        "NE" => Op::Ne,
                        "LT" => Op::Lt,
                        "LE" => Op::Le,
                        "GT" => Op::Gt,
                        "GE" => Op::Ge,
                        "MATCHES" => Op::Matches,
                        _ => return Err(format!("unknown operator {w:?} after {field:?}")),
                    },
                    _ => return Err(format!("an operator must follow {field:?}")),
                };
                self.pos += 1;
                let value = match self.toks.get(self.pos) {
                    Some(Tok::Quoted(v)) => Some(v.clone()),
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => None,
                    Some(Tok::Word(w)) => Some(w.clone()),
                    _ => return Err(format!("a value must follow {field:?}")),
                };
                self.pos += 1;
                Ok(Expr::Cmp { field, op, value })
            }
            other => Err(format!("expected a field name, found {other:?}")),
        }
    }
}

/// Parses one `filter=` value.
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    let err = |reason: String| FilterError {
        input: input.to_string(),
        reason,
    };
    let mut s = input.trim();
    // `filter="alertState='Active'"`: the whole expression in double quotes.
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') && !s[1..s.len() - 1].contains('"') {
        s = &s[1..s.len() - 1];
    }
    if s.is_empty() {
        return Ok(Expr::True);
    }
    let toks = tokenize(s).map_err(err)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.expr().map_err(err)?;
    if p.pos != p.toks.len() {
        return Err(err(format!("unexpected {:?}", p.toks[p.pos])));
    }
    Ok(e)
}

/// Parses every `filter=` parameter and ANDs them.
pub fn parse_all<'a>(inputs: impl IntoIterator<Item = &'a str>) -> Result<Expr, FilterError> {
    let mut acc = Expr::True;
    for i in inputs {
        let e = parse(i)?;
        acc = match acc {
            Expr::True => e,
            a => Expr::And(Box::new(a), Box::new(e)),
        };
    }
    Ok(acc)
}

/// Looks up a dotted path (`associatedResource.resourceName`) in a JSON object.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, key| cur.get(key))
}

fn like(pattern: &str, text: &str) -> bool {
    // SQL LIKE with % only, case-insensitive, as OneView's `matches`.
    let p = pattern.to_lowercase();
    let t = text.to_lowercase();
    let parts: Vec<&str> = p.split('%').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut rest = t.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(part) {
                return false;
            }
            rest = &rest[part.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(at) = rest.find(part) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    true
}

fn compare(actual: &Value, wanted: &str) -> Option<Ordering> {
    match actual {
        Value::Number(n) => {
            let a = n.as_f64()?;
            let b: f64 = wanted.parse().ok()?;
            a.partial_cmp(&b)
        }
        Value::Bool(b) => Some(b.to_string().as_str().cmp(&wanted.to_ascii_lowercase())),
        Value::String(s) => Some(s.as_str().cmp(wanted)),
        _ => None,
    }
}

impl Expr {
    pub fn matches(&self, v: &Value) -> bool {
        match self {
            Expr::True => true,
            Expr::And(a, b) => a.matches(v) && b.matches(v),
            Expr::Or(a, b) => a.matches(v) || b.matches(v),
            Expr::Not(a) => !a.matches(v),
            Expr::Cmp { field, op, value } => {
                let actual = lookup(v, field).filter(|x| !x.is_null());
                match (actual, value) {
                    (None, None) => matches!(op, Op::Eq),
                    (None, Some(_)) => matches!(op, Op::Ne),
                    (Some(_), None) => matches!(op, Op::Ne),
                    (Some(a), Some(w)) => {
                        if *op == Op::Matches {
                            return a.as_str().is_some_and(|s| like(w, s));
                        }
                        let Some(ord) = compare(a, w) else {
                            return matches!(op, Op::Ne);
                        };
                        match op {
                            Op::Eq => ord == Ordering::Equal,
                            Op::Ne => ord != Ordering::Equal,
                            Op::Lt => ord == Ordering::Less,
                            Op::Le => ord != Ordering::Greater,
                            Op::Gt => ord == Ordering::Greater,
                            Op::Ge => ord != Ordering::Less,
                            Op::Matches => false,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert() -> Value {
        json!({"alertState":"Active","severity":"Critical","created":"2026-11-25T10:00:00.000Z",
               "description":"The power supply in bay 4 failed.",
               "associatedResource":{"resourceName":"Encl1"},"correctiveAction":null,"count":7})
    }

    fn check(f: &str) -> bool {
        parse(f).unwrap_or_else(|e| panic!("{e}")).matches(&alert())
    }

    #[test]
    fn every_filter_form_in_the_spec_is_understood() {
        assert!(check("\"alertState='Active'\""));
        assert!(check("alertState='Active' AND severity='Critical'"));
        assert!(check("alertState='Active' and severity='Critical'"));
        assert!(!check("alertState='Active' AND severity='Warning'"));
        assert!(check("alertState EQ 'Active'"));
        assert!(check("alertState NE 'Cleared'"));
        assert!(check("created GT '2026-11-24T00:00:00.000Z'"));
        assert!(!check("created GT '2026-11-26T00:00:00.000Z'"));
        assert!(check("created >= '2026-11-25T10:00:00.000Z'"));
        assert!(check("created LT '2026-11-26T00:00:00.000Z'"));
        assert!(check("alertState='Locked' OR alertState='Active'"));
        assert!(check(
            "(alertState='Locked' OR alertState='Active') AND severity='Critical'"
        ));
        assert!(check("NOT alertState='Cleared'"));
        assert!(check("associatedResource.resourceName='Encl1'"));
        assert!(check("correctiveAction=null"));
        assert!(check("description matches '%power supply%'"));
        assert!(check("count GE 7"));
        assert!(!check("count GT 7"));
        assert!(check("alertState:Active"));
    }

    #[test]
    fn repeated_filter_parameters_are_anded() {
        let e = parse_all(["alertState='Active'", "severity='Warning'"]).expect("parse");
        assert!(!e.matches(&alert()));
        let e = parse_all(["alertState='Active'", "\"severity='Critical'\""]).expect("parse");
        assert!(e.matches(&alert()));
    }

    #[test]
    fn malformed_filters_are_errors_not_panics() {
        for bad in [
            "alertState=",
            "alertState 'Active'",
            "(alertState='Active'",
            "alertState='Active",
            "= 'x'",
            "alertState FOO 'x'",
            "a='b' c",
            "a ! 'b'",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
