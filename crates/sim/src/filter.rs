//! OneView collection filters (`?filter=...`), as every public client writes them (SPEC §1.1) and
//! as HPE's REST reference documents them: the whole expression (or any part of it) in double
//! quotes or not, field names bare or in single quotes (`'name' = 'x'`),
//! `=`/`EQ`/`NE`/`GT`/`GE`/`LT`/`LE` and symbolic operators, `AND`/`OR` in either case,
//! parentheses, `NOT`, `LIKE` (case-sensitive) and `matches` (case-insensitive) with the SQL
//! wildcards `%` and `_`, `IS NULL` / `IS NOT NULL`, `IN ('a','b')` / `NOT IN (...)`, the
//! `field:value` form of the certificate endpoints, dotted field paths, and several `filter=`
//! parameters ANDed together. Pure: parses text and evaluates it against JSON, no I/O.

use serde_json::Value;
use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// `value: None` compares with null: `Eq` is `IS NULL`, `Ne` is `IS NOT NULL`.
    Cmp {
        field: String,
        op: Op,
        value: Option<String>,
    },
    /// `field IN ('a', 'b')`: equal to one of them.
    In {
        field: String,
        values: Vec<String>,
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
    /// Case-insensitive SQL wildcards (`%` any run, `_` one character).
    Matches,
    /// Case-sensitive SQL wildcards.
    Like,
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
    /// A quoted string and its quote character (`'` or `"`).
    Quoted(String, char),
    Sym(&'static str),
    LParen,
    RParen,
    Comma,
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
            ',' => {
                out.push(Tok::Comma);
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
                out.push(Tok::Quoted(v, quote));
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
                    && !"()'\",=!<>:".contains(chars[i])
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
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    /// Whether the token after the current one starts a predicate (an operator, `IS`, `IN`,
    /// `NOT IN`...): the current token is then a field name.
    fn operator_follows(&self) -> bool {
        match self.toks.get(self.pos + 1) {
            Some(Tok::Sym(_)) => true,
            Some(Tok::Word(w)) => matches!(
                w.to_ascii_uppercase().as_str(),
                "EQ" | "NE" | "LT" | "LE" | "GT" | "GE" | "MATCHES" | "LIKE" | "IS" | "IN" | "NOT"
            ),
            _ => false,
        }
    }
    fn factor(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.factor()?)));
        }
        match self.peek().cloned() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.expr()?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err("missing ')'".into());
                }
                self.pos += 1;
                Ok(e)
            }
            // `NOT "name EQ 'x'"`, `"a='b'" AND "c='d'"`: a double-quoted expression.
            Some(Tok::Quoted(inner, '"')) if !self.operator_follows() => {
                self.pos += 1;
                parse(&inner).map_err(|e| e.reason)
            }
            Some(Tok::Word(field)) | Some(Tok::Quoted(field, _)) => {
                self.pos += 1;
                self.predicate(field)
            }
            other => Err(format!("expected a field name, found {other:?}")),
        }
    }
    /// What follows a field name: an operator and a value, `IS [NOT] NULL`, `[NOT] IN (...)`,
    /// `NOT LIKE`/`NOT MATCHES`.
    fn predicate(&mut self, field: String) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            if !(self.peek_word("in") || self.peek_word("like") || self.peek_word("matches")) {
                return Err(format!("IN, LIKE or MATCHES must follow {field:?} NOT"));
            }
            return Ok(Expr::Not(Box::new(self.predicate(field)?)));
        }
        if self.peek_word("is") {
            self.pos += 1;
            let negate = self.peek_word("not");
            if negate {
                self.pos += 1;
            }
            if !self.peek_word("null") {
                return Err(format!("NULL must follow {field:?} IS"));
            }
            self.pos += 1;
            let op = if negate { Op::Ne } else { Op::Eq };
            return Ok(Expr::Cmp {
                field,
                op,
                value: None,
            });
        }
        if self.peek_word("in") {
            self.pos += 1;
            return self.in_list(field);
        }
        let op = match self.peek() {
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
                "LIKE" => Op::Like,
                _ => return Err(format!("unknown operator {w:?} after {field:?}")),
            },
            _ => return Err(format!("an operator must follow {field:?}")),
        };
        self.pos += 1;
        let value = match self.peek() {
            Some(Tok::Quoted(v, _)) => Some(v.clone()),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => None,
            Some(Tok::Word(w)) => Some(w.clone()),
            _ => return Err(format!("a value must follow {field:?}")),
        };
        self.pos += 1;
        if value.is_none() && matches!(op, Op::Like | Op::Matches) {
            return Err(format!("{field:?}: a pattern cannot be null"));
        }
        Ok(Expr::Cmp { field, op, value })
    }
    /// `('a', 'b', 3)` after `IN`.
    fn in_list(&mut self, field: String) -> Result<Expr, String> {
        if self.peek() != Some(&Tok::LParen) {
            return Err(format!("a list in parentheses must follow {field:?} IN"));
        }
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Tok::Quoted(v, _)) | Some(Tok::Word(v)) => values.push(v),
                other => return Err(format!("a value must be in the IN list, found {other:?}")),
            }
            self.pos += 1;
            match self.peek() {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::RParen) => {
                    self.pos += 1;
                    return Ok(Expr::In { field, values });
                }
                _ => return Err("the IN list needs ',' between values and a closing ')'".into()),
            }
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

/// SQL wildcard matching over the whole text: `%` any run of characters, `_` exactly one.
fn like(pattern: &str, text: &str, case_sensitive: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if case_sensitive {
            s.chars().collect()
        } else {
            s.chars().flat_map(char::to_lowercase).collect()
        }
    };
    let (p, t) = (fold(pattern), fold(text));
    let (mut pi, mut ti) = (0, 0);
    // Where the last `%` was, and the text position it now stands for the run up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('%') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '_' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `%` swallow one more character and try again from there.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '%')
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
            Expr::In { field, values } => {
                lookup(v, field).filter(|x| !x.is_null()).is_some_and(|a| {
                    values
                        .iter()
                        .any(|w| compare(a, w) == Some(Ordering::Equal))
                })
            }
            Expr::Cmp { field, op, value } => {
                let actual = lookup(v, field).filter(|x| !x.is_null());
                match (actual, value) {
                    (None, None) => matches!(op, Op::Eq),
                    (None, Some(_)) => matches!(op, Op::Ne),
                    (Some(_), None) => matches!(op, Op::Ne),
                    (Some(a), Some(w)) => {
                        if matches!(op, Op::Matches | Op::Like) {
                            return a.as_str().is_some_and(|s| like(w, s, *op == Op::Like));
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
                            Op::Matches | Op::Like => false,
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
    fn like_is_null_and_in_work_as_hpe_documents_them() {
        // LIKE: SQL wildcards, case-sensitive; matches: the same, case-insensitive.
        assert!(check("description LIKE '%power supply%'"));
        assert!(check("description like 'The power%'"));
        assert!(!check("description LIKE '%POWER SUPPLY%'"));
        assert!(check("description matches '%POWER SUPPLY%'"));
        assert!(check(
            "description LIKE 'The power supply in bay _ failed.'"
        ));
        assert!(!check(
            "description LIKE 'The power supply in bay __ failed.'"
        ));
        assert!(
            !check("description LIKE 'power%'"),
            "LIKE matches the whole text"
        );
        assert!(check("description NOT LIKE 'power%'"));
        assert!(check("alertState LIKE 'Act%'") && check("alertState LIKE '%'"));
        assert!(check("associatedResource.resourceName LIKE 'Encl_'"));
        // IS NULL / IS NOT NULL: null and absent fields are null.
        assert!(check("correctiveAction IS NULL"));
        assert!(check("noSuchField is null"));
        assert!(!check("description IS NULL"));
        assert!(check("description IS NOT NULL"));
        assert!(!check("correctiveAction IS NOT NULL"));
        assert!(check("NOT correctiveAction IS NOT NULL"));
        // IN / NOT IN, with strings and numbers.
        assert!(check("alertState IN ('Active','Locked')"));
        assert!(check("alertState in ( 'Locked' , 'Active' )"));
        assert!(!check("alertState IN ('Cleared')"));
        assert!(check("alertState NOT IN ('Cleared','Locked')"));
        assert!(check("count IN (3, 7)"));
        assert!(!check("correctiveAction IN ('x')"), "null is in no list");
        assert!(check(
            "severity IN ('Critical','Warning') AND alertState IN ('Active','Locked')"
        ));
        // The quoted forms of HPE's reference: field names in single quotes, double-quoted
        // parts, NOT before a double-quoted expression.
        assert!(check("\"'alertState' = 'Active'\""));
        assert!(check("'severity' EQ 'Critical'"));
        assert!(check("NOT \"alertState EQ 'Cleared'\""));
        assert!(!check("NOT \"alertState EQ 'Active'\""));
        assert!(check(
            "\"alertState='Active'\" AND \"severity LIKE 'Crit%'\""
        ));
        assert!(check("\"alertState IN ('Active','Locked')\""));
        for bad in [
            "alertState IN 'Active'",
            "alertState IN ('Active'",
            "alertState IN ()",
            "alertState IN ('a' 'b')",
            "alertState IS 'x'",
            "alertState IS NOT",
            "alertState NOT 'x'",
            "description LIKE null",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn wildcards_match_the_whole_text() {
        assert!(like("%", "", true));
        assert!(like("a%b%c", "aXXbYYc", true));
        assert!(like("a%b%c", "abbbc", true));
        assert!(!like("a%b%c", "aXXbYY", true));
        assert!(like("%a_", "bbab", true));
        assert!(!like("_", "", true));
        assert!(like("ÄB%", "äbc", false));
        assert!(!like("ÄB%", "äbc", true));
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
