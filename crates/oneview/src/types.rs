//! What the client hands back besides raw JSON: the message-bus keypair, the outcome of asking
//! for one, and tasks (SPEC §1.5, §1.7), read liberally (nulls, unknown fields, any case).

use std::fmt;

use serde_json::Value;

/// The RabbitMQ client certificate and its key, both PEM. The key is PKCS#1
/// (`BEGIN RSA PRIVATE KEY`) on real appliances. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Keypair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("***"))
            .finish()
    }
}

impl Keypair {
    /// From `GET /rest/certificates/client/rabbitmq/keypair/default`; `None` when either PEM
    /// is missing.
    pub(crate) fn from_json(v: &Value) -> Option<Keypair> {
        let pem = |k: &str, marker: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| s.contains(marker))
                .map(|s| {
                    let mut s = s.trim().to_string();
                    s.push('\n');
                    s
                })
        };
        Some(Keypair {
            cert_pem: pem("base64SSLCertData", "-----BEGIN CERTIFICATE-----")?,
            key_pem: pem("base64SSLKeyData", "PRIVATE KEY-----")?,
        })
    }
}

/// What `POST /rest/certificates/client/rabbitmq` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Generation {
    /// Generation runs as this task (`/rest/tasks/...`).
    Started { task_uri: String },
    /// The keypair exists already (409 `RABBITMQ_CLIENTCERT_CONFLICT`): just download it.
    AlreadyExists,
}

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// New, Pending, Starting, Running, Suspended, Stopping (or a state we do not know).
    Running,
    /// Completed, or Warning (success worth logging).
    Succeeded,
    /// Error, Terminated, Killed, Interrupted, Unknown.
    Failed,
}

/// A OneView task (`GET /rest/tasks/{id}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub uri: String,
    /// `taskState` exactly as the appliance wrote it.
    pub state: String,
    pub percent_complete: Option<u64>,
    pub name: Option<String>,
    /// `taskErrors[].message` (or their `details`/`errorCode` when the message is null).
    pub errors: Vec<String>,
}

impl Task {
    /// Reads a task; `None` if `v` is not an object with a `taskState`.
    pub fn from_json(v: &Value, fallback_uri: &str) -> Option<Task> {
        let obj = v.as_object()?;
        let state = obj.get("taskState").and_then(Value::as_str)?.to_string();
        let text = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let percent_complete = match obj.get("percentComplete") {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let errors = obj
            .get("taskErrors")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        text(e, "message")
                            .or_else(|| text(e, "details"))
                            .or_else(|| text(e, "errorCode"))
                            .or_else(|| e.as_str().map(str::to_string))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Task {
            uri: text(v, "uri").unwrap_or_else(|| fallback_uri.to_string()),
            state,
            percent_complete,
            name: text(v, "name"),
            errors,
        })
    }

    pub fn outcome(&self) -> TaskOutcome {
        match self.state.trim().to_ascii_lowercase().as_str() {
            "completed" | "warning" => TaskOutcome::Succeeded,
            "error" | "terminated" | "killed" | "interrupted" | "unknown" => TaskOutcome::Failed,
            _ => TaskOutcome::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_states_are_classified_in_any_case() {
        let t = |s: &str| {
            Task::from_json(&json!({"taskState": s}), "/rest/tasks/1").map(|t| t.outcome())
        };
        assert_eq!(t("Completed"), Some(TaskOutcome::Succeeded));
        assert_eq!(t("WARNING"), Some(TaskOutcome::Succeeded));
        assert_eq!(t("running"), Some(TaskOutcome::Running));
        assert_eq!(t("Suspended"), Some(TaskOutcome::Running));
        for s in ["Error", "Terminated", "Killed", "Interrupted", "Unknown"] {
            assert_eq!(t(s), Some(TaskOutcome::Failed), "{s}");
        }
        assert_eq!(Task::from_json(&json!({"taskState": null}), "/x"), None);
        assert_eq!(Task::from_json(&json!(true), "/x"), None);
    }

    #[test]
    fn task_errors_tolerate_null_messages() {
        let t = Task::from_json(
            &json!({"uri": null, "taskState": "Error", "percentComplete": "40", "name": null,
                    "taskErrors": [{"message": "disk full"}, {"message": null, "errorCode": "E42"}, {}]}),
            "/rest/tasks/9",
        )
        .expect("task");
        assert_eq!(t.uri, "/rest/tasks/9");
        assert_eq!(t.percent_complete, Some(40));
        assert_eq!(t.name, None);
        assert_eq!(t.errors, vec!["disk full".to_string(), "E42".to_string()]);
    }

    #[test]
    fn keypair_debug_hides_the_key() {
        let k = Keypair::from_json(&json!({
            "base64SSLCertData": "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----",
            "base64SSLKeyData": "-----BEGIN RSA PRIVATE KEY-----\nSECRETKEY\n-----END RSA PRIVATE KEY-----",
        }))
        .expect("keypair");
        assert!(!format!("{k:?}").contains("SECRETKEY"));
        assert!(
            Keypair::from_json(&json!({"base64SSLCertData": "x", "base64SSLKeyData": null}))
                .is_none()
        );
    }
}
