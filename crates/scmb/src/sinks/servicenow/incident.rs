//! ServiceNow as a [`TicketSystem`]: the incident's fields (a template), its `correlation_id`
//! (the alert's stable key), the note written back, and the lifecycle (work notes, resolve
//! with `close_code`/`close_notes`, close).
//!
//! Ids: the incident id the ticketer records, logs and writes into the alert is the `number`
//! (`INC0010001`), which people search for. Updates need the `sys_id`: it is looked up by
//! number (one GET, which also tells whether the incident is closed and so read-only) right
//! before each update, rather than recorded as `number|sys_id`, so that an incident known
//! only from an alert's note (a wiped store, the HPE sample's era) is updated the same way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use scmb_model::AlertView;
use serde_json::{json, Map, Value};
use sha2::Digest;

use super::client::{eq, Incident, SnClient, SnError};
use super::config::Correlate;
use crate::sinks::ticketing::{CallClass, CallError, OnClear, TicketSystem};

/// The note written into the alert, before the incident's number.
pub const NOTE_PREFIX: &str = "Case automatically logged in ServiceNow with ID:";

/// The note that claims an alert before its incident is created (`claim = true`).
pub const CLAIM_PREFIX: &str = "Case being logged in ServiceNow by scmb, reference ";

/// The longest `correlation_id` ServiceNow keeps (the field is a string of 100).
pub const CORRELATION_MAX: usize = 100;

/// What `correlation_display` says: who set the `correlation_id`.
pub const CORRELATION_DISPLAY: &str = "scmb";

/// `short_description` is a string of 160 on a base instance.
pub const SHORT_DESCRIPTION_MAX: usize = 160;

/// Urgency and impact for severities the tables do not name.
pub const DEFAULT_LEVEL: &str = "3";

/// The `correlation_id` of an alert: `scmb:<appliance>:<uri>`, the same every time for that
/// alert, so that the incident can always be found again. Longer than ServiceNow keeps (100
/// characters), it is `scmb:sha256:` and the SHA-256 of that text in hex (76 characters).
pub fn correlation_key(appliance: &str, uri: &str) -> String {
    let key = format!("scmb:{appliance}:{uri}");
    if key.chars().count() <= CORRELATION_MAX {
        return key;
    }
    let d = sha2::Sha256::digest(key.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("scmb:sha256:{hex}")
}

/// A piece of the alert a text can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Severity,
    Resource,
    Description,
    CorrectiveAction,
    HealthCategory,
    AlertType,
    Uri,
    State,
    Created,
    Appliance,
}

/// Every `{placeholder}` a text may hold.
const PLACEHOLDERS: [(&str, Field); 10] = [
    ("severity", Field::Severity),
    ("resource", Field::Resource),
    ("description", Field::Description),
    ("corrective_action", Field::CorrectiveAction),
    ("health_category", Field::HealthCategory),
    ("alert_type", Field::AlertType),
    ("uri", Field::Uri),
    ("state", Field::State),
    ("created", Field::Created),
    ("appliance", Field::Appliance),
];

const NA: &str = "n/a";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Field(Field),
}

/// A text with `{placeholder}`s filled from the alert (`{{` and `}}` for braces), checked
/// when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(Vec<Piece>);

impl Text {
    pub fn parse(s: &str) -> Result<Text, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "an unclosed {{ in {s:?}: write {{{{ for a brace"
                                ))
                            }
                        }
                    }
                    let field = PLACEHOLDERS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, f)| *f)
                        .ok_or_else(|| {
                            let all: Vec<String> =
                                PLACEHOLDERS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                            format!(
                                "unknown placeholder {{{name}}} in {s:?}: use {} ({{{{ and }}}} for braces)",
                                all.join(", ")
                            )
                        })?;
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => return Err(format!("a lone }} in {s:?}: write }}}} for a brace")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Text(pieces))
    }

    /// The text for an alert; a missing or null field shows as `n/a`.
    pub fn render(&self, alert: &Value, appliance: &str) -> String {
        let a = AlertView(alert);
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(f) => out.push_str(
                    match f {
                        Field::Severity => a.severity(),
                        Field::Resource => a.resource_name(),
                        Field::Description => a.description(),
                        Field::CorrectiveAction => a.corrective_action(),
                        Field::HealthCategory => a.health_category(),
                        Field::AlertType => a.alert_type_id(),
                        Field::Uri => a.uri(),
                        Field::State => a.alert_state(),
                        Field::Created => alert.get("created").and_then(Value::as_str),
                        Field::Appliance => Some(appliance),
                    }
                    .unwrap_or(NA),
                ),
            }
        }
        out
    }
}

/// The default `short_description`.
pub const SHORT_DESCRIPTION: &str = "OneView {severity} alert on {resource}: {description}";

/// The default `description`.
pub const DESCRIPTION: &str = "OneView alert {uri} on appliance {appliance}\n\
Resource: {resource}\n\
Severity: {severity}\n\
Description: {description}\n\
Corrective action: {corrective_action}\n\
Health category: {health_category}\n\
Alert type: {alert_type}\n\
Created: {created}";

/// What an incident looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub short_description: Text,
    pub description: Text,
    /// Urgency (1 High, 2 Medium, 3 Low) by alert severity; others [`DEFAULT_LEVEL`].
    pub urgency: Vec<(String, String)>,
    /// Impact (1 High, 2 Medium, 3 Low) by alert severity; others [`DEFAULT_LEVEL`].
    pub impact: Vec<(String, String)>,
    pub category: Option<String>,
    pub subcategory: Option<String>,
    /// A group's sys_id (or name, where the instance resolves display values).
    pub assignment_group: Option<String>,
    /// A user's sys_id (or user name, likewise).
    pub caller_id: Option<String>,
    /// Set `cmdb_ci` to the configuration item named like the alert's resource.
    pub cmdb_ci: bool,
    /// Extra fields, their values texts too.
    pub extra: Vec<(String, Text)>,
}

impl Default for Template {
    fn default() -> Self {
        let pairs = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Template {
            short_description: Text::parse(SHORT_DESCRIPTION).unwrap_or(Text(Vec::new())),
            description: Text::parse(DESCRIPTION).unwrap_or(Text(Vec::new())),
            urgency: pairs(&[("Critical", "1"), ("Warning", "2"), ("OK", "3")]),
            impact: pairs(&[("Critical", "2"), ("Warning", "3"), ("OK", "3")]),
            category: Some("hardware".into()),
            subcategory: None,
            assignment_group: None,
            caller_id: None,
            cmdb_ci: false,
            extra: Vec::new(),
        }
    }
}

/// The value a severity table gives an alert of `severity`.
fn level(table: &[(String, String)], severity: Option<&str>) -> String {
    severity
        .and_then(|s| table.iter().find(|(k, _)| k.eq_ignore_ascii_case(s)))
        .map_or_else(|| DEFAULT_LEVEL.to_string(), |(_, v)| v.clone())
}

/// At most `max` characters of `s`.
fn at_most(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_string(),
        None => s,
    }
}

impl Template {
    /// The fields of the incident for an alert (without `cmdb_ci`, looked up apart, and
    /// `correlation_id`); nulls never crash.
    pub fn incident(&self, alert: &Value, appliance: &str) -> Map<String, Value> {
        let severity = AlertView(alert).severity();
        let mut m = Map::new();
        m.insert(
            "short_description".into(),
            json!(at_most(
                self.short_description.render(alert, appliance),
                SHORT_DESCRIPTION_MAX
            )),
        );
        m.insert(
            "description".into(),
            json!(self.description.render(alert, appliance)),
        );
        m.insert("urgency".into(), json!(level(&self.urgency, severity)));
        m.insert("impact".into(), json!(level(&self.impact, severity)));
        for (k, v) in [
            ("category", &self.category),
            ("subcategory", &self.subcategory),
            ("assignment_group", &self.assignment_group),
            ("caller_id", &self.caller_id),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), json!(v.render(alert, appliance)));
        }
        m
    }
}

/// The note written into the alert for `number`: the prefix, a space, the number.
pub fn note_for(prefix: &str, number: &str) -> String {
    format!("{} {number}", prefix.trim_end())
}

/// How long a CI look-up is remembered (a storm on one enclosure asks once).
const CI_TTL: Duration = Duration::from_secs(600);
/// The most CI look-ups remembered.
const CI_CACHE: usize = 1024;

/// ServiceNow, ticketing.
pub struct SnSystem {
    pub client: SnClient,
    pub template: Template,
    /// The appliance's name, in the `correlation_id` and the texts.
    pub appliance: String,
    /// The note's prefix (configured; [`NOTE_PREFIX`] by default).
    pub note_prefix: String,
    pub close_code: String,
    /// `close_notes` when resolving or closing; the line saying what happened when none.
    pub close_notes: Option<String>,
    /// One incident per alert or per resource.
    pub correlate: Correlate,
    /// CI sys_ids by name, with when they were looked up.
    cis: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

fn call_error(e: SnError) -> CallError {
    e.call_error()
}

impl SnSystem {
    pub fn new(
        client: SnClient,
        template: Template,
        appliance: String,
        note_prefix: String,
        close_code: String,
        close_notes: Option<String>,
        correlate: Correlate,
    ) -> SnSystem {
        SnSystem {
            client,
            template,
            appliance,
            note_prefix: note_prefix.trim_end().to_string(),
            close_code,
            close_notes,
            correlate,
            cis: Mutex::new(HashMap::new()),
        }
    }

    /// The sys_id of the CI named `name`, remembered for a while.
    async fn ci(&self, name: &str) -> Result<Option<String>, CallError> {
        let now = Instant::now();
        if let Ok(cache) = self.cis.lock() {
            if let Some((id, at)) = cache.get(name) {
                if now.duration_since(*at) < CI_TTL {
                    return Ok(id.clone());
                }
            }
        }
        let id = self.client.ci_by_name(name).await.map_err(call_error)?;
        if id.is_none() {
            tracing::debug!(
                resource = name,
                "no configuration item of that name; cmdb_ci left empty"
            );
        }
        if let Ok(mut cache) = self.cis.lock() {
            if cache.len() >= CI_CACHE {
                cache.retain(|_, (_, at)| now.duration_since(*at) < CI_TTL);
                if cache.len() >= CI_CACHE {
                    cache.clear();
                }
            }
            cache.insert(name.to_string(), (id.clone(), now));
        }
        Ok(id)
    }

    /// The incident by its number; gone is permanent (nothing to update).
    async fn by_number(&self, number: &str) -> Result<Incident, CallError> {
        match self.client.find_incident("number", number).await {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(CallError {
                message: format!("incident {number} not found in ServiceNow"),
                class: CallClass::Permanent,
                may_have_acted: false,
            }),
            Err(e) => Err(call_error(e)),
        }
    }

    /// Patches an open incident. Closed ones are read-only: a 403 on one that was closed
    /// meanwhile (by a person) is not a lack of rights.
    async fn patch(&self, inc: &Incident, fields: &Map<String, Value>) -> Result<(), CallError> {
        match self.client.update_incident(&inc.sys_id, fields).await {
            Ok(()) => Ok(()),
            Err(e) if e.status() == Some(403) => match self.by_number(&inc.number).await {
                Ok(now) if now.is_closed() => {
                    tracing::info!(incident = %inc.number, "the incident was closed meanwhile; left as it is");
                    Ok(())
                }
                _ => Err(call_error(e)),
            },
            Err(e) => Err(call_error(e)),
        }
    }
}

#[async_trait::async_trait]
impl TicketSystem for SnSystem {
    fn name(&self) -> &'static str {
        "servicenow"
    }

    fn title(&self) -> &'static str {
        "ServiceNow"
    }

    fn credentials_hint(&self) -> &'static str {
        "check servicenow.user and password_env/_file/_credential (Basic), or servicenow.client_id and client_secret_env/_file/_credential (OAuth), and that the account has the itil role (for ov_to_sm: --sn-user and $SCMB_SN_PASSWORD or --sn-password-file, or --sn-client-id and $SCMB_SN_CLIENT_SECRET or --sn-client-secret-file)"
    }

    fn store_prefix(&self) -> &'static str {
        "servicenow"
    }

    fn note_for(&self, incident: &str) -> String {
        note_for(&self.note_prefix, incident)
    }

    fn note_prefixes(&self) -> Vec<&str> {
        if self.note_prefix == NOTE_PREFIX {
            vec![NOTE_PREFIX]
        } else {
            // An alert noted before the prefix was changed is ticketed too.
            vec![self.note_prefix.as_str(), NOTE_PREFIX]
        }
    }

    fn claim_prefix(&self) -> &'static str {
        CLAIM_PREFIX
    }

    /// The alert's key, or its resource's when incidents are per resource (the alert's own
    /// when it names no resource).
    fn reference(&self, _instance: &str, uri: &str, alert: &Value) -> String {
        match (self.correlate, resource_uri(alert)) {
            (Correlate::Resource, Some(r)) => correlation_key(&self.appliance, r),
            _ => correlation_key(&self.appliance, uri),
        }
    }

    fn shares_incidents(&self) -> bool {
        self.correlate == Correlate::Resource
    }

    /// The `correlation_id` is the alert's, every time: looked up before every create, so a
    /// wiped store or a crash between the create and its record never opens a second one.
    fn stable_reference(&self) -> bool {
        true
    }

    /// Per alert, any incident with the key (one closed by people is the alert's still); per
    /// resource, one not closed (a closed one is done with: the next alert opens another).
    async fn find(&self, reference: &str) -> Result<Option<String>, CallError> {
        let mut query = eq("correlation_id", reference);
        if self.correlate == Correlate::Resource {
            query.push_str("^stateNOT IN7,8");
        }
        self.client
            .first_incident(&query)
            .await
            .map(|i| i.map(|i| i.number))
            .map_err(call_error)
    }

    async fn create(&self, alert: &Value, reference: &str) -> Result<String, CallError> {
        let mut fields = self.template.incident(alert, &self.appliance);
        if self.template.cmdb_ci {
            if let Some(name) = AlertView(alert).resource_name().filter(|n| !n.is_empty()) {
                if let Some(ci) = self.ci(name).await? {
                    fields.insert("cmdb_ci".into(), json!(ci));
                }
            }
        }
        fields.insert("correlation_id".into(), json!(reference));
        fields.insert("correlation_display".into(), json!(CORRELATION_DISPLAY));
        self.client
            .create_incident(&fields)
            .await
            .map(|i| i.number)
            .map_err(call_error)
    }

    async fn journal(&self, incident: &str, lines: &[String]) -> Result<(), CallError> {
        let inc = self.by_number(incident).await?;
        if inc.is_closed() {
            tracing::info!(
                incident,
                "the incident is closed; the alert's update is not added to it"
            );
            return Ok(());
        }
        let mut fields = Map::new();
        fields.insert("work_notes".into(), json!(lines.join("\n")));
        self.patch(&inc, &fields).await
    }

    async fn clear(&self, incident: &str, how: OnClear, line: &str) -> Result<(), CallError> {
        let inc = self.by_number(incident).await?;
        if inc.is_closed() {
            tracing::info!(incident, "the incident is already closed; left as it is");
            return Ok(());
        }
        let mut fields = Map::new();
        fields.insert("work_notes".into(), json!(line));
        let state = match how {
            OnClear::None | OnClear::Journal => None,
            // Resolved already (by people): their resolution stays as they wrote it.
            OnClear::Resolve if inc.is_resolved() => None,
            OnClear::Resolve => Some("6"),
            OnClear::Close => Some("7"),
        };
        if let Some(s) = state.filter(|_| inc.is_resolved()) {
            fields.insert("state".into(), json!(s));
        } else if let Some(s) = state {
            fields.insert("state".into(), json!(s));
            fields.insert("close_code".into(), json!(self.close_code));
            fields.insert(
                "close_notes".into(),
                json!(self.close_notes.as_deref().unwrap_or(line)),
            );
        }
        self.patch(&inc, &fields).await
    }

    /// A work note naming the new alert; a resolved incident is reopened (In Progress).
    async fn attach(&self, incident: &str, uri: &str, alert: &Value) -> Result<(), CallError> {
        let inc = self.by_number(incident).await?;
        if inc.is_closed() {
            // Closed between the look-up and now: the note in the alert still names it.
            tracing::info!(
                incident,
                alert = uri,
                "the resource's incident was closed meanwhile; the alert is not added to it"
            );
            return Ok(());
        }
        let a = AlertView(alert);
        let mut fields = Map::new();
        fields.insert(
            "work_notes".into(),
            json!(format!(
                "Another OneView alert on {}: {} {} ({uri})",
                a.resource_name().unwrap_or(NA),
                a.severity().unwrap_or(NA),
                a.description().unwrap_or(NA),
            )),
        );
        if inc.is_resolved() {
            fields.insert("state".into(), json!(REOPENED_STATE));
        }
        self.patch(&inc, &fields).await
    }

    /// One query for the batch: those of `incidents` in state 6 or 7 (a canceled one, 8, is
    /// not a fix: its alert stays).
    async fn resolved(&self, incidents: &[String]) -> Result<Vec<String>, CallError> {
        if incidents.is_empty() {
            return Ok(Vec::new());
        }
        let numbers: Vec<String> = incidents
            .iter()
            .map(|n| n.replace([',', '^'], ""))
            .collect();
        let query = format!("numberIN{}^stateIN6,7", numbers.join(","));
        self.client
            .incidents(&query, incidents.len())
            .await
            .map(|l| l.into_iter().map(|i| i.number).collect())
            .map_err(call_error)
    }
}

/// The state a resolved incident is reopened to: In Progress.
pub const REOPENED_STATE: &str = "2";

/// The uri of the resource an alert is about, if it names one.
fn resource_uri(alert: &Value) -> Option<&str> {
    alert
        .get("resourceUri")
        .and_then(Value::as_str)
        .or_else(|| {
            alert
                .get("associatedResource")
                .and_then(|r| r.get("resourceUri"))
                .and_then(Value::as_str)
        })
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Value {
        json!({"uri": "/rest/alerts/42", "severity": "Critical", "alertState": "Active",
            "description": "Fan 3 failed", "correctiveAction": null, "healthCategory": "Cooling",
            "alertTypeID": "Hardware.Fan", "created": "2026-01-02T03:04:05.000Z",
            "associatedResource": {"resourceName": "Encl1, bay 3"}})
    }

    #[test]
    fn the_default_template_fills_every_field_and_survives_nulls() {
        let m = Template::default().incident(&alert(), "east");
        assert_eq!(
            m["short_description"],
            "OneView Critical alert on Encl1, bay 3: Fan 3 failed"
        );
        let d = m["description"].as_str().expect("text");
        assert!(
            d.starts_with("OneView alert /rest/alerts/42 on appliance east\n"),
            "{d}"
        );
        assert!(d.contains("Corrective action: n/a\n"), "{d}");
        assert!(d.contains("Health category: Cooling\n"), "{d}");
        assert_eq!((&m["urgency"], &m["impact"]), (&json!("1"), &json!("2")));
        assert_eq!(m["category"], "hardware");
        assert!(m.get("subcategory").is_none() && m.get("caller_id").is_none());
        let bare = Template::default().incident(&json!({"severity": null}), "east");
        assert_eq!(bare["short_description"], "OneView n/a alert on n/a: n/a");
        assert_eq!(
            (&bare["urgency"], &bare["impact"]),
            (&json!("3"), &json!("3"))
        );
    }

    #[test]
    fn urgency_and_impact_follow_the_severity_tables() {
        let t = Template {
            urgency: vec![("critical".into(), "2".into())],
            impact: vec![("Warning".into(), "1".into())],
            ..Template::default()
        };
        let m = t.incident(&alert(), "east");
        assert_eq!((&m["urgency"], &m["impact"]), (&json!("2"), &json!("3")));
        let w = t.incident(&json!({"severity": "Warning"}), "east");
        assert_eq!((&w["urgency"], &w["impact"]), (&json!("3"), &json!("1")));
    }

    #[test]
    fn texts_take_placeholders_and_refuse_unknown_ones() {
        let t = Text::parse("{{{severity}}} {alert_type} @ {appliance}").expect("parse");
        assert_eq!(t.render(&alert(), "west"), "{Critical} Hardware.Fan @ west");
        let e = Text::parse("{sevrity}").expect_err("typo");
        assert!(e.contains("{sevrity}") && e.contains("{severity}"), "{e}");
        assert!(Text::parse("a } b").is_err());
        assert!(Text::parse("{severity").is_err());
        let t = Template {
            short_description: Text::parse(&"x".repeat(300)).expect("parse"),
            extra: vec![("u_alert".into(), Text::parse("{uri}").expect("parse"))],
            ..Template::default()
        };
        let m = t.incident(&alert(), "east");
        assert_eq!(
            m["short_description"].as_str().map(|s| s.chars().count()),
            Some(160)
        );
        assert_eq!(m["u_alert"], "/rest/alerts/42");
    }

    #[test]
    fn the_correlation_id_is_stable_and_fits_servicenows_field() {
        let k = correlation_key("east", "/rest/alerts/42");
        assert_eq!(k, "scmb:east:/rest/alerts/42");
        assert_eq!(k, correlation_key("east", "/rest/alerts/42"));
        assert_ne!(k, correlation_key("west", "/rest/alerts/42"));
        let long_name = "a".repeat(90);
        let h = correlation_key(&long_name, "/rest/alerts/42");
        assert!(h.starts_with("scmb:sha256:") && h.len() == 76, "{h}");
        assert_eq!(h, correlation_key(&long_name, "/rest/alerts/42"));
        assert_ne!(h, correlation_key(&long_name, "/rest/alerts/43"));
    }

    #[test]
    fn the_note_carries_the_number_and_is_found_again() {
        let prefixes = [NOTE_PREFIX];
        let note = note_for(NOTE_PREFIX, "INC0010001");
        assert_eq!(
            note,
            "Case automatically logged in ServiceNow with ID: INC0010001"
        );
        let found = |n: &str, p: &[&str]| crate::sinks::ticketing::incident_in_note(n, p);
        assert_eq!(found(&note, &prefixes).as_deref(), Some("INC0010001"));
        assert_eq!(
            found(&format!("{note}."), &prefixes).as_deref(),
            Some("INC0010001")
        );
        // A configured prefix, with or without its trailing space.
        let mine = note_for("Ticket: ", "INC0010002");
        assert_eq!(mine, "Ticket: INC0010002");
        assert_eq!(found(&mine, &["Ticket:"]).as_deref(), Some("INC0010002"));
        assert_eq!(
            found(
                "Case automatically logged in HPE Service Manager with ID: IM1",
                &prefixes
            ),
            None
        );
        assert_eq!(found(NOTE_PREFIX, &prefixes), None);
    }
}
