//! Service Manager as a [`TicketSystem`]: the incident's fields (the HPE sample's template),
//! the note written back, the reference field, and Service Manager's errors as the ticketer
//! understands them.

use scmb_model::AlertView;
use scmb_servicemanager::{ErrorClass, SmClient, SmError};
use serde_json::{json, Map, Value};

use crate::sinks::ticketing::{CallClass, CallError, OnClear, TicketSystem};

/// The incident field carrying our correlation reference (Service Manager has none of its own;
/// unknown fields pass through and can be queried).
pub const REFERENCE_FIELD: &str = "ExternalReference";

/// The note written into the alert (the HPE sample's sentence, spelled correctly).
pub const NOTE_PREFIX: &str = "Case automatically logged in HPE Service Manager with ID: ";

/// Every spelling of the note that means "this alert already has an incident": ours, and the
/// HPE sample's `ov_to_sm.py`, which writes "loged". An alert the sample ticketed before the
/// switch to `ov_to_sm` must not get a second incident.
pub const NOTE_PREFIXES: [&str; 2] = [
    NOTE_PREFIX,
    "Case automatically loged in HPE Service Manager with ID: ",
];

pub fn note_for(incident: &str) -> String {
    format!("{NOTE_PREFIX}{incident}")
}

/// The note that claims an alert before its incident is created, when two instances may
/// ticket the same appliance (`claim`): written only if the alert is unchanged since it was
/// read (its eTag), so of two instances that read it at once exactly one can write it.
pub const CLAIM_PREFIX: &str = "Case being logged in HPE Service Manager by scmb, reference ";

/// Whether a note is one of ours or the sample's (not someone else's to journal).
pub fn is_ticket_note(note: &str) -> bool {
    NOTE_PREFIXES.iter().any(|p| note.starts_with(p))
}

/// The incident id of a note of ours or the sample's already in the alert's change log.
pub fn incident_in_change_log(alert: &Value) -> Option<String> {
    crate::sinks::ticketing::incidents_in_change_log(alert, &NOTE_PREFIXES)
        .into_iter()
        .next()
}

/// What the incident looks like; the defaults are the HPE sample's.
#[derive(Debug, Clone)]
pub struct Template {
    pub title: String,
    pub category: String,
    pub area: String,
    pub subarea: String,
    pub impact: String,
    pub assignment_group: String,
    pub service: String,
    /// Urgency by alert severity; others get `default_urgency`.
    pub urgency: Vec<(String, String)>,
    pub default_urgency: String,
    /// Put the alert's resource name in `AffectedCI`.
    pub affected_ci: bool,
    /// Extra fields, added as they are.
    pub extra: Map<String, Value>,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            title: "OneView Alert".into(),
            category: "incident".into(),
            area: "hardware".into(),
            subarea: "hardware failure".into(),
            impact: "4".into(),
            assignment_group: "Service Manager".into(),
            service: "MyDevices".into(),
            urgency: vec![
                ("Critical".into(), "1".into()),
                ("Warning".into(), "2".into()),
                ("OK".into(), "3".into()),
            ],
            default_urgency: "3".into(),
            affected_ci: true,
            extra: Map::new(),
        }
    }
}

const NA: &str = "n/a";

impl Template {
    /// The fields of `{"Incident": {...}}` for an alert; nulls never crash.
    pub fn incident(&self, alert: &Value) -> Map<String, Value> {
        let a = AlertView(alert);
        let urgency = a
            .severity()
            .and_then(|s| self.urgency.iter().find(|(k, _)| k.eq_ignore_ascii_case(s)))
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| self.default_urgency.clone());
        let mut m = Map::new();
        m.insert("Title".into(), json!(self.title));
        m.insert(
            "Description".into(),
            json!([
                format!("resourceName: {}", a.resource_name().unwrap_or(NA)),
                format!("Description: {}", a.description().unwrap_or(NA)),
                format!("correctiveAction: {}", a.corrective_action().unwrap_or(NA)),
                // Spelled as the HPE sample spells it, for continuity of existing SM rules.
                format!("healthCatagory: {}", a.health_category().unwrap_or(NA)),
                format!("alertUri: {}", a.uri().unwrap_or(NA)),
            ]),
        );
        m.insert("Category".into(), json!(self.category));
        m.insert("Area".into(), json!(self.area));
        m.insert("Subarea".into(), json!(self.subarea));
        m.insert("Impact".into(), json!(self.impact));
        m.insert("Urgency".into(), json!(urgency));
        m.insert("AssignmentGroup".into(), json!(self.assignment_group));
        m.insert("Service".into(), json!(self.service));
        if self.affected_ci {
            if let Some(n) = a.resource_name() {
                m.insert("AffectedCI".into(), json!(n));
            }
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }
}

/// Service Manager, ticketing.
pub struct SmSystem {
    pub sm: SmClient,
    pub template: Template,
}

/// The reference of the incident for the alert at `uri`, made by the instance whose store's
/// id is `instance`: the same every time for this store and alert, so an incident whose
/// create ended in doubt (or that a crash left unrecorded) is found by it, and unlike any
/// other store's (alert ids repeat across appliances and installations; a store's id is
/// random). 64 bits of SHA-256 over `scmb:<instance>:<uri>`, in the form the random
/// references of earlier builds had (`scmb-` and 16 hex digits).
pub fn reference_for(instance: &str, uri: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("scmb:{instance}:{uri}").as_bytes());
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("scmb-{hex}")
}

/// A Service Manager error as the ticketer sees it.
fn call_error(e: SmError) -> CallError {
    CallError {
        class: match e.class() {
            ErrorClass::Retryable => CallClass::Retryable { after: None },
            ErrorClass::Unauthorized => CallClass::Unauthorized,
            ErrorClass::Permanent => CallClass::Permanent,
        },
        may_have_acted: e.may_have_acted(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl TicketSystem for SmSystem {
    fn name(&self) -> &'static str {
        "service_manager"
    }

    fn title(&self) -> &'static str {
        "Service Manager"
    }

    fn credentials_hint(&self) -> &'static str {
        "check -i/--id and the SM password (service_manager.user, password_env/_file/_credential)"
    }

    fn store_prefix(&self) -> &'static str {
        ""
    }

    fn note_for(&self, incident: &str) -> String {
        note_for(incident)
    }

    fn note_prefixes(&self) -> Vec<&str> {
        NOTE_PREFIXES.to_vec()
    }

    fn claim_prefix(&self) -> &'static str {
        CLAIM_PREFIX
    }

    /// This store's own for the alert ([`reference_for`]), in the incident's
    /// [`REFERENCE_FIELD`]. (Earlier builds drew a random one per attempt and recorded it
    /// before the create; such a record still names its reference, which is looked up as
    /// before.)
    fn reference(&self, instance: &str, uri: &str, _alert: &Value) -> String {
        reference_for(instance, uri)
    }

    fn stable_reference(&self) -> bool {
        true
    }

    /// This store's own: no other instance makes it.
    fn shared_reference(&self) -> bool {
        false
    }

    async fn find(&self, reference: &str) -> Result<Option<String>, CallError> {
        let query = format!("{REFERENCE_FIELD}=\"{reference}\"");
        self.sm
            .list(Some(&query), 10)
            .await
            .map(|l| l.into_iter().next().map(|i| i.id))
            .map_err(call_error)
    }

    async fn create(&self, alert: &Value, reference: &str) -> Result<String, CallError> {
        let mut fields = self.template.incident(alert);
        fields.insert(REFERENCE_FIELD.into(), json!(reference));
        self.sm
            .create_incident(&fields)
            .await
            .map(|i| i.id)
            .map_err(call_error)
    }

    async fn journal(&self, incident: &str, lines: &[String]) -> Result<(), CallError> {
        let mut fields = Map::new();
        fields.insert("JournalUpdates".into(), json!(lines));
        self.sm
            .update_incident(incident, &fields)
            .await
            .map(|_| ())
            .map_err(call_error)
    }

    async fn clear(&self, incident: &str, how: OnClear, line: &str) -> Result<(), CallError> {
        let mut fields = Map::new();
        fields.insert("JournalUpdates".into(), json!([line]));
        let r = match how {
            OnClear::Journal | OnClear::None => self.sm.update_incident(incident, &fields).await,
            OnClear::Resolve => {
                fields.insert("Solution".into(), json!([line]));
                self.sm.resolve(incident, &fields).await
            }
            OnClear::Close => {
                fields.insert("Solution".into(), json!([line]));
                fields.insert("ClosureCode".into(), json!("Automatically Closed"));
                self.sm.close(incident, &fields).await
            }
        };
        r.map(|_| ()).map_err(call_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incident_follows_the_sample_and_survives_nulls() {
        let alert = json!({"uri": "/rest/alerts/1", "severity": "Critical", "description": null,
            "correctiveAction": null, "healthCategory": null, "associatedResource": null});
        let m = Template::default().incident(&alert);
        assert_eq!(m["Title"], "OneView Alert");
        assert_eq!(m["Urgency"], "1");
        assert_eq!(m["Description"][1], "Description: n/a");
        assert_eq!(m["Description"][0], "resourceName: n/a");
        assert!(m.get("AffectedCI").is_none());
        let warn = Template::default().incident(&json!({"severity": "Warning"}));
        assert_eq!(warn["Urgency"], "2");
    }

    #[test]
    fn the_reference_is_the_same_for_a_store_and_alert_and_differs_between_stores() {
        let a = reference_for("0123456789abcdef", "/rest/alerts/7");
        assert_eq!(a, reference_for("0123456789abcdef", "/rest/alerts/7"));
        assert_ne!(a, reference_for("fedcba9876543210", "/rest/alerts/7"));
        assert_ne!(a, reference_for("0123456789abcdef", "/rest/alerts/8"));
        assert_eq!(a.len(), "scmb-".len() + 16);
        assert!(a.starts_with("scmb-"));
        assert!(a[5..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn an_existing_note_is_found_in_the_change_log() {
        let a = json!({"changeLog": [{"notes": "hello"}, {"notes": note_for("IM10042")}]});
        assert_eq!(incident_in_change_log(&a).as_deref(), Some("IM10042"));
        assert_eq!(incident_in_change_log(&json!({"changeLog": null})), None);
        assert_eq!(
            incident_in_change_log(&json!({"changeLog": [{"notes": NOTE_PREFIX}]})),
            None
        );
    }

    #[test]
    fn the_hpe_samples_note_counts_as_an_existing_ticket_in_both_spellings() {
        // ov_to_sm.py writes "loged"; an alert it ticketed must not get a second incident.
        for note in [
            "Case automatically loged in HPE Service Manager with ID: IM10007",
            "Case automatically logged in HPE Service Manager with ID: IM10007.",
        ] {
            let a = json!({"changeLog": [{"notes": "hello"}, {"notes": note}]});
            assert_eq!(
                incident_in_change_log(&a).as_deref(),
                Some("IM10007"),
                "{note}"
            );
            assert!(is_ticket_note(note));
        }
        assert!(!is_ticket_note("Case opened by hand: IM1"));
    }
}
