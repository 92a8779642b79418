//! An SM incident as the client hands it out: its id, its status and the whole record.

use serde_json::{Map, Value};

/// One incident: `IncidentID`, `Status` and every field SM returned (the whole `Incident`
/// object, `IncidentID` and `Status` included).
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    /// `IncidentID`, e.g. `IM10001`.
    pub id: String,
    /// `Status` (`Open`, `Resolved`, `Closed`, ...), when SM returned one.
    pub status: Option<String>,
    /// The whole `Incident` object.
    pub fields: Map<String, Value>,
}

impl Incident {
    /// An incident from an `Incident` object; `None` without a non-empty `IncidentID` (a
    /// string, or a number SM might send).
    pub fn from_fields(fields: Map<String, Value>) -> Option<Incident> {
        let id = match fields.get("IncidentID")? {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        if id.is_empty() {
            return None;
        }
        let status = fields
            .get("Status")
            .and_then(Value::as_str)
            .map(str::to_string);
        Some(Incident { id, status, fields })
    }

    /// A field that SM keeps as lines (`Description`, `Solution`, `JournalUpdates`): the array
    /// of lines, or one string split at `\n`; empty when missing.
    pub fn lines(&self, field: &str) -> Vec<String> {
        match self.fields.get(field) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(Value::String(s)) => s.split('\n').map(str::to_string).collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other.to_string()],
        }
    }

    /// A string field (`None` when missing or not a string).
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn incidents_need_a_non_empty_id() {
        let i = Incident::from_fields(obj(json!({"IncidentID": "IM1", "Status": "Open"})));
        assert_eq!(i.as_ref().map(|i| i.id.as_str()), Some("IM1"));
        assert_eq!(i.and_then(|i| i.status), Some("Open".into()));
        assert!(Incident::from_fields(obj(json!({"IncidentID": ""}))).is_none());
        assert!(Incident::from_fields(obj(json!({"IncidentID": null}))).is_none());
        assert!(Incident::from_fields(obj(json!({"Title": "x"}))).is_none());
        assert_eq!(
            Incident::from_fields(obj(json!({"IncidentID": 7}))).map(|i| i.id),
            Some("7".into())
        );
    }

    #[test]
    fn line_fields_read_as_arrays_or_split_strings() {
        let i = Incident::from_fields(obj(json!({"IncidentID": "IM1",
            "Description": ["a", "b"], "Solution": "x\ny", "Title": "t"})))
        .expect("incident");
        assert_eq!(i.lines("Description"), ["a", "b"]);
        assert_eq!(i.lines("Solution"), ["x", "y"]);
        assert!(i.lines("JournalUpdates").is_empty());
        assert_eq!(i.text("Title"), Some("t"));
    }
}
