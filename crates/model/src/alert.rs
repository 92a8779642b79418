//! Read-only view of an alert resource (SPEC §1.6) inside a message: every field may be
//! missing or null, and is then `None` — never a panic.

use serde_json::Value;

/// Borrowed view of an alert resource.
#[derive(Debug, Clone, Copy)]
pub struct AlertView<'a>(pub &'a Value);

impl<'a> AlertView<'a> {
    fn s(&self, field: &str) -> Option<&'a str> {
        self.0.get(field).and_then(Value::as_str)
    }
    pub fn uri(&self) -> Option<&'a str> {
        self.s("uri")
    }
    pub fn alert_state(&self) -> Option<&'a str> {
        self.s("alertState")
    }
    pub fn severity(&self) -> Option<&'a str> {
        self.s("severity")
    }
    pub fn alert_type_id(&self) -> Option<&'a str> {
        self.s("alertTypeID")
    }
    pub fn description(&self) -> Option<&'a str> {
        self.s("description")
    }
    pub fn corrective_action(&self) -> Option<&'a str> {
        self.s("correctiveAction")
    }
    pub fn health_category(&self) -> Option<&'a str> {
        self.s("healthCategory")
    }
    pub fn resource_name(&self) -> Option<&'a str> {
        self.0
            .get("associatedResource")
            .and_then(|r| r.get("resourceName"))
            .and_then(Value::as_str)
    }
    pub fn resource_category(&self) -> Option<&'a str> {
        self.0
            .get("associatedResource")
            .and_then(|r| r.get("resourceCategory"))
            .and_then(Value::as_str)
    }
    pub fn change_log(&self) -> Option<&'a Value> {
        self.0.get("changeLog").filter(|v| !v.is_null())
    }
}
