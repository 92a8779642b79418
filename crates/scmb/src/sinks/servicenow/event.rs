//! ServiceNow Event Management (`mode = "event"`) as an event system: every admitted alert is
//! sent to the instance's inbound event web service (`POST /api/global/em/jsonv2`) with the
//! alert's stable key as its `message_key`, so that Event Management de-duplicates it into one
//! `em_alert` however often it is sent; the alert's clear or deletion sends severity 0 (Clear)
//! with the same key, which closes that alert. The steps, their records (`servicenow_event:` +
//! uri), the note and the retries are the shared event core's ([`crate::sinks::eventing`]);
//! the credentials, TLS, proxy and the classification of failures are the Table API client's
//! ([`super::client`]).
//!
//! The record follows ServiceNow's documented event fields (every value a string):
//! `source` (`HPE OneView`), `node` (the alert's resource, else the appliance), `type` (the
//! alert type), `resource` (the resource's uri), `metric_name` (the health category),
//! `event_class` (`scmb`), `message_key`, `severity` (`1` Critical … `5` OK, `0` Clear),
//! `description`, `time_of_event` (`yyyy-MM-dd HH:mm:ss`, UTC) and `additional_info` (a JSON
//! object in a string).

use std::sync::Arc;
use std::time::Duration;

use scmb_model::{AlertView, ChangeType, Event, Filter, Peek};
use serde_json::{json, Map, Value};

use super::client::{SnClient, SnError};
use super::{correlation_key, failure_code, ServiceNowSettings};
use crate::failure;
use crate::sinks::eventing::{noted_as_word, EventSystem, Eventer};
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::ticketing::CallError;
use crate::sinks::SinkContext;

/// The event mode's name in metrics (`sink`, `target` labels) and logs, and its store
/// records' prefix (`servicenow_event:/rest/alerts/1`): apart from the incident mode's, whose
/// counts are incidents, not events.
pub const EVENT_NAME: &str = "servicenow_event";

/// The default note's text before the message key.
pub const EVENT_NOTE_PREFIX: &str = "Event sent to ServiceNow Event Management with message key";

/// The default `source` of every event.
pub const DEFAULT_SOURCE: &str = "HPE OneView";

/// The default `event_class` of every event.
pub const DEFAULT_EVENT_CLASS: &str = "scmb";

/// Event Management's severities: 1 Critical, 2 Major, 3 Minor, 4 Warning, 5 OK (0 is Clear,
/// sent only for a cleared or deleted alert).
pub const EM_SEVERITIES: [&str; 5] = ["1", "2", "3", "4", "5"];

/// The severity of a clear.
pub const CLEAR: &str = "0";

/// OneView severity → Event Management severity unless `[event] severities` says otherwise;
/// any other severity becomes [`OTHER_SEVERITY`].
pub const DEFAULT_SEVERITIES: [(&str, &str); 5] = [
    ("Critical", "1"),
    ("Warning", "4"),
    ("OK", "5"),
    ("Unknown", "5"),
    ("Disabled", "5"),
];

/// The severity of an alert whose severity the map does not name (or that has none): OK.
pub const OTHER_SEVERITY: &str = "5";

/// What the events say besides the alert.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTemplate {
    /// `source`.
    pub source: String,
    /// `event_class`.
    pub event_class: String,
    /// OneView severity → `1`..`5` (the defaults with the table's entries over them).
    pub severities: Vec<(String, String)>,
}

impl Default for EventTemplate {
    fn default() -> Self {
        EventTemplate {
            source: DEFAULT_SOURCE.into(),
            event_class: DEFAULT_EVENT_CLASS.into(),
            severities: DEFAULT_SEVERITIES
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl EventTemplate {
    /// The Event Management severity of a OneView severity (compared without case).
    pub fn severity(&self, severity: Option<&str>) -> &str {
        severity
            .and_then(|s| {
                self.severities
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(s))
            })
            .map_or(OTHER_SEVERITY, |(_, v)| v.as_str())
    }
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// An RFC 3339 time (OneView's) as Event Management takes `time_of_event`: `yyyy-MM-dd
/// HH:mm:ss` in UTC. `None` when it is not one (the instance then uses the time it got it).
pub fn time_of_event(s: &str) -> Option<String> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?
        .to_offset(time::UtcOffset::UTC);
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// What an event says besides the alert.
#[derive(Debug, Clone, Copy)]
pub struct Said<'a> {
    /// `message_key`.
    pub key: &'a str,
    /// `1`..`5`, or [`CLEAR`].
    pub severity: &'a str,
    pub description: &'a str,
    /// `time_of_event`, as [`time_of_event`] gives it.
    pub at: Option<&'a str>,
}

/// One event record for the alert `alert` at `uri` of the appliance `appliance`.
pub fn event_record(
    t: &EventTemplate,
    appliance: &str,
    alert: &Value,
    uri: &str,
    said: Said<'_>,
) -> Value {
    let Said {
        key,
        severity,
        description,
        at,
    } = said;
    let a = AlertView(alert);
    let s = |k: &str| non_blank(alert.get(k).and_then(Value::as_str));
    let resource_uri = non_blank(
        alert
            .get("associatedResource")
            .and_then(|r| r.get("resourceUri"))
            .and_then(Value::as_str),
    )
    .or_else(|| s("resourceUri"));
    let mut info = Map::new();
    for (k, v) in [
        ("uri", Some(uri)),
        ("appliance", Some(appliance)),
        ("severity", a.severity()),
        ("alert_state", a.alert_state()),
        ("corrective_action", a.corrective_action()),
        ("health_category", a.health_category()),
        ("resource_category", a.resource_category()),
        ("resource_uri", resource_uri),
        ("created", s("created")),
    ] {
        if let Some(v) = non_blank(v) {
            info.insert(k.into(), json!(v));
        }
    }
    let mut r = Map::new();
    for (k, v) in [
        ("source", Some(t.source.as_str())),
        (
            "node",
            Some(non_blank(a.resource_name()).unwrap_or(appliance)),
        ),
        ("type", non_blank(a.alert_type_id())),
        ("resource", resource_uri),
        ("metric_name", non_blank(a.health_category())),
        ("event_class", Some(t.event_class.as_str())),
        ("message_key", Some(key)),
        ("severity", Some(severity)),
        ("description", Some(description)),
        ("time_of_event", at),
    ] {
        if let Some(v) = v {
            r.insert(k.into(), json!(v));
        }
    }
    r.insert(
        "additional_info".into(),
        json!(Value::Object(info).to_string()),
    );
    Value::Object(r)
}

/// What an event says of its alert: its description, else its type.
fn describe(alert: &Value) -> String {
    let a = AlertView(alert);
    non_blank(a.description())
        .or_else(|| non_blank(a.alert_type_id()))
        .unwrap_or("OneView alert")
        .to_string()
}

/// ServiceNow Event Management as an [`EventSystem`].
pub struct SnEvents {
    client: SnClient,
    template: EventTemplate,
    /// The appliance's name: part of the message key, the `node` of an alert without one.
    appliance: String,
    /// The note's text before the message key.
    note_prefix: String,
}

impl SnEvents {
    async fn send(&self, record: Value) -> Result<(), CallError> {
        self.client
            .send_events(vec![record])
            .await
            .map_err(|e| e.call_error())
    }
}

#[async_trait::async_trait]
impl EventSystem for SnEvents {
    fn name(&self) -> &'static str {
        EVENT_NAME
    }

    fn title(&self) -> &'static str {
        "ServiceNow Event Management"
    }

    fn credentials_hint(&self) -> &'static str {
        "check servicenow.user and password_env/_file/_credential (Basic), or servicenow.client_id and client_secret_env/_file/_credential (OAuth), and that the account has the evt_mgmt_integration role"
    }

    fn store_prefix(&self) -> &'static str {
        EVENT_NAME
    }

    /// The incident mode's `correlation_id`: `scmb:<appliance>:<uri>` (hashed when longer
    /// than 100 characters).
    fn key(&self, uri: &str) -> String {
        correlation_key(&self.appliance, uri)
    }

    fn route(&self, _severity: Option<&str>) -> Result<Option<String>, String> {
        Ok(None)
    }

    async fn trigger(
        &self,
        _route: Option<&str>,
        alert: &Value,
        uri: &str,
        key: &str,
    ) -> Result<(), CallError> {
        let at = alert
            .get("created")
            .and_then(Value::as_str)
            .and_then(time_of_event);
        self.send(event_record(
            &self.template,
            &self.appliance,
            alert,
            uri,
            Said {
                key,
                severity: self.template.severity(AlertView(alert).severity()),
                description: &describe(alert),
                at: at.as_deref(),
            },
        ))
        .await
    }

    async fn resolve(
        &self,
        _route: Option<&str>,
        ev: &Event,
        uri: &str,
        key: &str,
    ) -> Result<(), CallError> {
        let alert = ev.resource();
        let how = if ev.change_type == ChangeType::Deleted {
            "deleted"
        } else {
            "cleared"
        };
        // When it cleared: the alert's own time, else the message's.
        let at = [
            alert.get("clearedTime"),
            ev.body().get("timestamp"),
            alert.get("modified"),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(time_of_event);
        self.send(event_record(
            &self.template,
            &self.appliance,
            alert,
            uri,
            Said {
                key,
                severity: CLEAR,
                description: &format!("OneView alert {how}: {}", describe(alert)),
                at: at.as_deref(),
            },
        ))
        .await
    }

    fn note_for(&self, key: &str) -> String {
        format!("{} {key}", self.note_prefix)
    }

    /// A note in which the key stands as a word (`…/alerts/1` is not noted by `…/alerts/12`'s
    /// note), whatever the prefix was when it was written.
    fn noted(&self, alert: &Value, key: &str) -> bool {
        noted_as_word(alert, key)
    }
}

/// The ServiceNow sink in event mode.
pub struct ServiceNowEvents {
    events: Eventer,
    /// The client, for the health check.
    client: SnClient,
}

impl ServiceNowEvents {
    pub fn new(s: &ServiceNowSettings, ctx: &SinkContext) -> Result<ServiceNowEvents, SinkError> {
        let client = SnClient::new(&s.client)
            .map_err(|e| SinkError::new(EVENT_NAME, failure::USAGE, e.to_string()))?;
        let (Some(store), Some(ov)) = (ctx.store.clone(), ctx.session.clone()) else {
            return Err(SinkError::new(
                EVENT_NAME,
                failure::UNEXPECTED,
                "sending events needs the state store and a REST session",
            ));
        };
        // The appliance's name keys its alerts' events: the config's name under `scmb run`.
        let appliance = ctx
            .label
            .clone()
            .unwrap_or_else(|| ctx.metrics.name().to_string());
        Ok(ServiceNowEvents {
            events: Eventer {
                store,
                system: Arc::new(SnEvents {
                    client: client.clone(),
                    template: s.event.clone(),
                    appliance,
                    note_prefix: s.note_prefix.clone(),
                }),
                ov,
                resolve_on_clear: s.on_clear != super::OnClear::None,
                filter: ctx.filter.clone(),
                shutdown: ctx.stop.clone(),
                retry_base: Duration::from_millis(250),
                retry_cap: s.retry_cap,
                metrics: ctx.metrics.clone(),
            },
            client,
        })
    }
}

/// Proves the instance's address and our credentials for Event Management without sending an
/// event: one `em_event` record's sys_id is read (after getting a token, with OAuth). Good
/// credentials answer 200 (an empty list included), bad ones 401. A 403 says the credentials
/// were accepted but the account may not read `em_event`, which sending events does not need
/// (an integration account often cannot): said, not failed, so that it does not stop the
/// appliance at start.
pub async fn probe_events(client: &SnClient) -> Result<String, SinkError> {
    let read = client.probe("em_event").await;
    if let Err(e @ SnError::Status { .. }) = &read {
        if e.status() == Some(403) {
            return Ok(format!(
                "{} answered and accepted {}, which may not read em_event (403: {e}); not verified: that it may send events (the evt_mgmt_integration role), which only an event would tell",
                client.base_url(),
                client.who(),
            ));
        }
    }
    read.map_err(|e: SnError| {
        let code = failure_code(&e);
        let mut message = e.to_string();
        if code == failure::AUTH {
            message.push_str("; check servicenow.user and password_* (Basic), or client_id and client_secret_* (OAuth), and the account's roles (evt_mgmt_integration, or read access to em_event)");
        }
        SinkError::new(EVENT_NAME, code, message)
    })?;
    Ok(format!(
        "{} answered and accepted {} (em_event readable; mode = event: no event sent)",
        client.base_url(),
        client.who(),
    ))
}

#[async_trait::async_trait]
impl Sink for ServiceNowEvents {
    fn name(&self) -> &'static str {
        EVENT_NAME
    }

    /// Admitted alerts, and every clear or deletion unless `on_clear = "none"`.
    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        self.events.wants(filter, ev)
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        self.events.handle(ev).await
    }

    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.events.sink_open_alerts().await
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe_events(&self.client).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_servicenows_utc_format_or_nothing() {
        assert_eq!(
            time_of_event("2018-02-12T20:12:03.207Z").as_deref(),
            Some("2018-02-12 20:12:03")
        );
        assert_eq!(
            time_of_event("2018-02-12T22:12:03+02:00").as_deref(),
            Some("2018-02-12 20:12:03")
        );
        assert_eq!(time_of_event("yesterday"), None);
        assert_eq!(time_of_event(""), None);
    }

    #[test]
    fn severities_map_with_the_defaults_and_anything_else_is_ok() {
        let t = EventTemplate::default();
        for (ov, em) in [
            (Some("Critical"), "1"),
            (Some("critical"), "1"),
            (Some("Warning"), "4"),
            (Some("OK"), "5"),
            (Some("Unknown"), "5"),
            (Some("Disabled"), "5"),
            (Some("Bogus"), "5"),
            (None, "5"),
        ] {
            assert_eq!(t.severity(ov), em, "{ov:?}");
        }
    }

    #[test]
    fn a_record_carries_the_documented_fields_as_strings_and_survives_nulls() {
        let t = EventTemplate::default();
        let alert = json!({"uri": "/rest/alerts/7", "severity": "Critical", "alertState": "Active",
            "description": "The power supply in bay 4 failed.", "correctiveAction": "Replace it.",
            "alertTypeID": "Trap.cpqHe4FltTolPowerSupplyFailed", "healthCategory": "Power",
            "created": "2026-11-25T10:00:00.123Z",
            "associatedResource": {"resourceName": "Encl1", "resourceCategory": "enclosures",
                "resourceUri": "/rest/enclosures/1"}});
        let key = correlation_key("east", "/rest/alerts/7");
        let r = event_record(
            &t,
            "east",
            &alert,
            "/rest/alerts/7",
            Said {
                key: &key,
                severity: "1",
                description: &describe(&alert),
                at: time_of_event("2026-11-25T10:00:00.123Z").as_deref(),
            },
        );
        assert_eq!(r["source"], "HPE OneView");
        assert_eq!(r["node"], "Encl1");
        assert_eq!(r["type"], "Trap.cpqHe4FltTolPowerSupplyFailed");
        assert_eq!(r["resource"], "/rest/enclosures/1");
        assert_eq!(r["metric_name"], "Power");
        assert_eq!(r["event_class"], "scmb");
        assert_eq!(r["message_key"], "scmb:east:/rest/alerts/7");
        assert_eq!(r["severity"], "1");
        assert_eq!(r["description"], "The power supply in bay 4 failed.");
        assert_eq!(r["time_of_event"], "2026-11-25 10:00:00");
        for (k, v) in r.as_object().expect("object") {
            assert!(v.is_string(), "{k} is a string: {v}");
        }
        let info: Value =
            serde_json::from_str(r["additional_info"].as_str().expect("a string")).expect("json");
        assert_eq!(info["uri"], "/rest/alerts/7");
        assert_eq!(info["appliance"], "east");
        assert_eq!(info["corrective_action"], "Replace it.");
        assert_eq!(info["health_category"], "Power");

        let bare = json!({"severity": null, "description": null, "associatedResource": null});
        let r = event_record(
            &t,
            "east",
            &bare,
            "/rest/alerts/8",
            Said {
                key: "k",
                severity: CLEAR,
                description: &describe(&bare),
                at: None,
            },
        );
        assert_eq!(r["node"], "east");
        assert_eq!(r["severity"], "0");
        assert_eq!(r["description"], "OneView alert");
        for k in ["type", "resource", "metric_name", "time_of_event"] {
            assert!(r.get(k).is_none(), "{k} left out");
        }
        let info: Value =
            serde_json::from_str(r["additional_info"].as_str().expect("a string")).expect("json");
        assert!(info.get("corrective_action").is_none());
    }
}
