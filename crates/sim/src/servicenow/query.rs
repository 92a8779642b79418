//! ServiceNow encoded queries (`sysparm_query`): `field=value` terms joined by `^` (AND) and
//! `^OR` (OR, binding tighter than AND), `^NQ` (a new query OR-ed with the previous ones),
//! `ORDERBYfield` / `ORDERBYDESCfield`, and the operators `=`, `!=`, `<`, `<=`, `>`, `>=`,
//! `IN`, `NOT IN`, `LIKE`, `NOT LIKE`, `STARTSWITH`, `ENDSWITH`, `ISEMPTY`, `ISNOTEMPTY`,
//! `ANYTHING`. A literal `^` in a value is written `^^`.
//!
//! As on an instance, a term naming a field the table does not have, or with an operator that
//! is not recognised, is dropped and the rest of the query still applies (unless the instance
//! is set to return no rows on an invalid query).

use std::cmp::Ordering;

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In(Vec<String>),
    NotIn(Vec<String>),
    Like,
    NotLike,
    StartsWith,
    EndsWith,
    IsEmpty,
    IsNotEmpty,
    Anything,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub field: String,
    pub op: Op,
    pub value: String,
}

/// A parsed query: OR of `^NQ` groups; each group an AND of terms; each term an OR of
/// conditions (`a=1^ORb=2`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub groups: Vec<Vec<Vec<Cond>>>,
    /// `(field, descending)`, in the order given.
    pub order: Vec<(String, bool)>,
    /// Terms dropped because their field or operator is unknown.
    pub dropped: Vec<String>,
}

/// Splits on `^` but not on `^^` (an escaped caret, kept as one `^`).
fn split_carets(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '^' {
            if chars.peek() == Some(&'^') {
                chars.next();
                cur.push('^');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Operators, longest first where one is a prefix of another.
const OPS: &[&str] = &[
    "!=",
    ">=",
    "<=",
    "=",
    ">",
    "<",
    "ISNOTEMPTY",
    "ISEMPTY",
    "NOT IN",
    "NOT LIKE",
    "IN",
    "LIKE",
    "STARTSWITH",
    "ENDSWITH",
    "ANYTHING",
];

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::to_string).collect()
}

/// One term (`state!=7`), or `None` when its operator is not recognised.
fn parse_cond(term: &str) -> Option<Cond> {
    let end = term
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(term.len());
    let (field, rest) = term.split_at(end);
    if field.is_empty() {
        return None;
    }
    let op_text = OPS.iter().find(|o| rest.starts_with(**o))?;
    let value = &rest[op_text.len()..];
    let op = match *op_text {
        "!=" => Op::Ne,
        ">=" => Op::Ge,
        "<=" => Op::Le,
        "=" => Op::Eq,
        ">" => Op::Gt,
        "<" => Op::Lt,
        "ISNOTEMPTY" => Op::IsNotEmpty,
        "ISEMPTY" => Op::IsEmpty,
        "NOT IN" => Op::NotIn(list(value)),
        "NOT LIKE" => Op::NotLike,
        "IN" => Op::In(list(value)),
        "LIKE" => Op::Like,
        "STARTSWITH" => Op::StartsWith,
        "ENDSWITH" => Op::EndsWith,
        _ => Op::Anything,
    };
    Some(Cond {
        field: field.to_string(),
        op,
        value: value.to_string(),
    })
}

impl Query {
    /// Parses `q`; `has_field` says which fields the table has.
    pub fn parse(q: &str, has_field: &dyn Fn(&str) -> bool) -> Query {
        let mut query = Query::default();
        let mut group: Vec<Vec<Cond>> = Vec::new();
        for term in split_carets(q) {
            let term = term.trim();
            if term.is_empty() || term == "EQ" {
                continue;
            }
            if term == "NQ" || term.starts_with("NQ") {
                // `^NQ` starts a new query; `^NQfield=x` carries its first term.
                if !group.is_empty() {
                    query.groups.push(std::mem::take(&mut group));
                }
                let first = &term[2..];
                if first.is_empty() {
                    continue;
                }
                match parse_cond(first).filter(|c| has_field(&c.field)) {
                    Some(c) => group.push(vec![c]),
                    None => query.dropped.push(first.to_string()),
                }
                continue;
            }
            let order = (term.strip_prefix("ORDERBYDESC").map(|f| (f, true)))
                .or_else(|| term.strip_prefix("ORDERBY").map(|f| (f, false)));
            if let Some((f, desc)) = order {
                if has_field(f) {
                    query.order.push((f.to_string(), desc));
                } else {
                    query.dropped.push(term.to_string());
                }
                continue;
            }
            if let Some(alt) = term.strip_prefix("OR") {
                match parse_cond(alt).filter(|c| has_field(&c.field)) {
                    Some(c) => match group.last_mut() {
                        Some(last) => last.push(c),
                        None => group.push(vec![c]),
                    },
                    None => query.dropped.push(term.to_string()),
                }
                continue;
            }
            match parse_cond(term).filter(|c| has_field(&c.field)) {
                Some(c) => group.push(vec![c]),
                None => query.dropped.push(term.to_string()),
            }
        }
        if !group.is_empty() {
            query.groups.push(group);
        }
        query
    }

    /// Whether a record (all values strings) matches.
    pub fn matches(&self, rec: &Map<String, Value>) -> bool {
        self.groups.is_empty()
            || self
                .groups
                .iter()
                .any(|g| g.iter().all(|any| any.iter().any(|c| c.matches(rec))))
    }

    /// Sorts records by the `ORDERBY` terms (stable: ties keep their order).
    pub fn sort(&self, rows: &mut [Map<String, Value>]) {
        if self.order.is_empty() {
            return;
        }
        rows.sort_by(|a, b| {
            for (f, desc) in &self.order {
                let o = compare(text(a.get(f)), text(b.get(f)));
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
}

fn text(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("")
}

/// Numbers compare as numbers, everything else as text (the instance's date-times,
/// `YYYY-MM-DD HH:MM:SS`, order correctly as text).
fn compare(a: &str, b: &str) -> Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

impl Cond {
    fn matches(&self, rec: &Map<String, Value>) -> bool {
        let v = text(rec.get(&self.field));
        match &self.op {
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
            Op::Lt => compare(v, &self.value) == Ordering::Less,
            Op::Le => compare(v, &self.value) != Ordering::Greater,
            Op::Gt => compare(v, &self.value) == Ordering::Greater,
            Op::Ge => compare(v, &self.value) != Ordering::Less,
            Op::In(l) => l.iter().any(|x| x == v),
            Op::NotIn(l) => !l.iter().any(|x| x == v),
            Op::Like => v.contains(&self.value),
            Op::NotLike => !v.contains(&self.value),
            Op::StartsWith => v.starts_with(&self.value),
            Op::EndsWith => v.ends_with(&self.value),
            Op::IsEmpty => v.is_empty(),
            Op::IsNotEmpty => !v.is_empty(),
            Op::Anything => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn any(_: &str) -> bool {
        true
    }

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn or_binds_tighter_than_and_and_nq_starts_a_new_query() {
        let q = Query::parse("state=1^ORstate=2^active=true", &any);
        assert_eq!(q.groups.len(), 1);
        assert_eq!(q.groups[0].len(), 2);
        assert_eq!(q.groups[0][0].len(), 2);
        assert!(q.matches(&rec(json!({"state": "2", "active": "true"}))));
        assert!(!q.matches(&rec(json!({"state": "2", "active": "false"}))));
        assert!(!q.matches(&rec(json!({"state": "6", "active": "true"}))));
        let q = Query::parse("state=1^NQstate=7^active=false", &any);
        assert_eq!(q.groups.len(), 2);
        assert!(q.matches(&rec(json!({"state": "7", "active": "false"}))));
        assert!(q.matches(&rec(json!({"state": "1", "active": "true"}))));
        assert!(!q.matches(&rec(json!({"state": "7", "active": "true"}))));
    }

    #[test]
    fn operators_parse_with_their_values() {
        let q = Query::parse(
            "stateIN6,7^stateNOT IN8^close_codeISEMPTY^numberSTARTSWITHINC^descriptionLIKEfan^priority<=2^ORDERBYDESCsys_created_on^ORDERBYnumber^EQ",
            &any,
        );
        let conds: Vec<&Cond> = q.groups[0].iter().flatten().collect();
        assert_eq!(conds[0].op, Op::In(vec!["6".into(), "7".into()]));
        assert_eq!(conds[1].op, Op::NotIn(vec!["8".into()]));
        assert_eq!(conds[2].op, Op::IsEmpty);
        assert_eq!(
            (conds[3].op.clone(), conds[3].value.as_str()),
            (Op::StartsWith, "INC")
        );
        assert_eq!(conds[4].op, Op::Like);
        assert_eq!(conds[5].op, Op::Le);
        assert_eq!(
            q.order,
            vec![("sys_created_on".into(), true), ("number".into(), false)]
        );
        assert!(q.dropped.is_empty());
    }

    #[test]
    fn unknown_fields_and_operators_are_dropped_and_carets_escape() {
        let known = |f: &str| f == "state" || f == "short_description";
        let q = Query::parse("correlation_idd=x^state=1^stateBOGUS2", &known);
        assert_eq!(q.dropped, vec!["correlation_idd=x", "stateBOGUS2"]);
        assert!(q.matches(&rec(json!({"state": "1"}))));
        let q = Query::parse("short_description=a^^b", &known);
        assert_eq!(q.groups[0][0][0].value, "a^b");
    }

    #[test]
    fn sorting_is_numeric_for_numbers_and_stable() {
        let q = Query::parse("ORDERBYpriority", &any);
        let mut rows = vec![
            rec(json!({"priority": "10", "n": "a"})),
            rec(json!({"priority": "2", "n": "b"})),
            rec(json!({"priority": "2", "n": "c"})),
        ];
        q.sort(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| text(r.get("n"))).collect();
        assert_eq!(order, vec!["b", "c", "a"]);
    }
}
