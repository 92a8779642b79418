//! PagerDuty as an event system: the dedup key of an alert, its `trigger` and `resolve` events
//! (Events API v2), the routing key by severity, and the note. The steps, their records in the
//! store (`pagerduty:` + uri; the record's `reference` is the setting of the routing key the
//! trigger went to, so that the resolve goes to the same service) and their retries are the
//! shared event core's ([`crate::sinks::eventing`]).

use std::fmt::Write as _;

use scmb_model::{AlertView, Event};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::client::{Accepted, EventsClient, PdError};
use super::{EventSettings, RoutingKeys, NAME};
use crate::sinks::eventing::EventSystem;
use crate::sinks::http::Decision;
use crate::sinks::ticketing::{CallClass, CallError};

/// The longest `payload.summary` PagerDuty accepts, in characters.
pub const SUMMARY_MAX: usize = 1024;

/// The dedup key of an alert: the hex SHA-256 of the appliance's name and the alert's uri.
/// Stable across restarts and instances; 64 characters (PagerDuty takes up to 255). Renaming
/// the appliance in the config changes every key.
pub fn dedup_key(appliance: &str, uri: &str) -> String {
    let digest = Sha256::digest(format!("{appliance}\n{uri}").as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// `s` cut to at most `max` characters (never inside one), ending with `…` when cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some(_) if max == 0 => String::new(),
        Some(_) => {
            let end = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..end])
        }
    }
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// `payload.summary`: `RESOURCE: DESCRIPTION` (the appliance when the alert names no
/// resource, the alert type when it has no description), at most [`SUMMARY_MAX`] characters.
pub fn summary(alert: &Value, appliance: &str) -> String {
    let a = AlertView(alert);
    let what = non_blank(a.description())
        .or_else(|| non_blank(a.alert_type_id()))
        .unwrap_or("OneView alert");
    let on = non_blank(a.resource_name()).unwrap_or(appliance);
    truncate_chars(&format!("{on}: {what}"), SUMMARY_MAX)
}

/// The PagerDuty severity of a OneView severity (`map`: OneView → PagerDuty, compared without
/// case); `info` for any other.
pub fn pd_severity<'a>(map: &'a [(String, String)], severity: Option<&str>) -> &'a str {
    severity
        .and_then(|s| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(s)))
        .map_or("info", |(_, v)| v.as_str())
}

/// The note written into a paged alert.
pub fn note_for(format: &str, dedup_key: &str) -> String {
    format.replace("{dedup_key}", dedup_key)
}

/// Whether the alert's change log holds a note naming this dedup key (ours, whatever the note
/// format was when it was written).
fn noted(alert: &Value, dedup_key: &str) -> bool {
    alert
        .get("changeLog")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("notes").and_then(Value::as_str))
        .any(|n| n.contains(dedup_key))
}

fn fill(template: &str, ev: &EventSettings, uri: &str) -> String {
    template
        .replace("{address}", &ev.address)
        .replace("{appliance}", &ev.appliance)
        .replace("{uri}", uri)
}

fn rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// The `trigger` event of an alert (without its routing key).
pub(super) fn trigger_event(
    ev: &EventSettings,
    alert: &Value,
    uri: &str,
    dedup_key: &str,
) -> Value {
    let a = AlertView(alert);
    let s = |k: &str| non_blank(alert.get(k).and_then(Value::as_str));
    let mut payload = Map::new();
    payload.insert("summary".into(), json!(summary(alert, &ev.appliance)));
    payload.insert(
        "source".into(),
        json!(non_blank(a.resource_name()).unwrap_or(&ev.appliance)),
    );
    payload.insert(
        "severity".into(),
        json!(pd_severity(&ev.severities, a.severity())),
    );
    // An invalid timestamp would make PagerDuty refuse the whole event: left out instead.
    if let Some(t) = s("created").filter(|t| rfc3339(t)) {
        payload.insert("timestamp".into(), json!(t));
    }
    if let Some(c) = non_blank(a.resource_category()).or_else(|| s("physicalResourceType")) {
        payload.insert("component".into(), json!(c));
    }
    payload.insert("group".into(), json!(ev.appliance));
    if let Some(c) = non_blank(a.alert_type_id()) {
        payload.insert("class".into(), json!(c));
    }
    let mut details = Map::new();
    for (k, v) in [
        ("description", a.description()),
        ("correctiveAction", a.corrective_action()),
        ("alertUri", Some(uri)),
        ("appliance", Some(ev.appliance.as_str())),
        ("applianceAddress", Some(ev.address.as_str())),
        ("severity", a.severity()),
        ("alertState", a.alert_state()),
        ("healthCategory", a.health_category()),
        ("alertTypeID", a.alert_type_id()),
        ("resourceName", a.resource_name()),
        (
            "resourceUri",
            alert
                .get("associatedResource")
                .and_then(|r| r.get("resourceUri"))
                .and_then(Value::as_str),
        ),
        ("created", s("created")),
    ] {
        if let Some(v) = v {
            details.insert(k.into(), json!(v));
        }
    }
    payload.insert("custom_details".into(), Value::Object(details));
    let mut event = json!({
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "client": fill(&ev.client, ev, uri),
    });
    if let Some(u) = &ev.client_url {
        event["client_url"] = json!(fill(u, ev, uri));
    }
    if let Some(l) = &ev.alert_link {
        event["links"] = json!([{
            "href": fill(l, ev, uri),
            "text": format!("The alert on OneView {}", ev.appliance),
        }]);
    }
    event
}

/// The `resolve` event of a dedup key (without its routing key).
pub(super) fn resolve_event(dedup_key: &str) -> Value {
    json!({"event_action": "resolve", "dedup_key": dedup_key})
}

/// PagerDuty's failures as the event core classifies them: [`PdError::decision`], and
/// whether PagerDuty may have taken the event.
fn call_error(e: &PdError) -> CallError {
    CallError {
        message: e.to_string(),
        class: match e.decision() {
            Decision::Fail => CallClass::Permanent,
            Decision::Pause => CallClass::Unauthorized,
            Decision::Retry { after } => CallClass::Retryable { after },
            // Never said of an error; taken as a retry.
            Decision::Ok => CallClass::Retryable { after: None },
        },
        may_have_acted: e.may_have_acted(),
    }
}

/// PagerDuty as an [`EventSystem`]: the dedup key, the routing key by severity (its setting
/// recorded, so that the resolve goes to the same service), the Events API.
pub(super) struct PdSystem {
    pub client: EventsClient,
    pub keys: RoutingKeys,
    pub event: EventSettings,
    /// The note's format (`{dedup_key}` replaced).
    pub note: String,
}

impl PdSystem {
    /// Sends one event with the routing key of the setting `slot` (as [`EventSystem::route`]
    /// named it).
    async fn enqueue(&self, slot: Option<&str>, event: &Value) -> Result<Accepted, CallError> {
        let Some(key) = slot.and_then(|s| self.keys.slot(s)) else {
            return Err(CallError {
                message: format!(
                    "pagerduty.{} is not configured",
                    slot.unwrap_or("routing_key")
                ),
                class: CallClass::Permanent,
                may_have_acted: false,
            });
        };
        self.client
            .enqueue(key, event)
            .await
            .map_err(|e| call_error(&e))
    }
}

#[async_trait::async_trait]
impl EventSystem for PdSystem {
    fn name(&self) -> &'static str {
        NAME
    }

    fn title(&self) -> &'static str {
        "PagerDuty"
    }

    fn credentials_hint(&self) -> &'static str {
        "fix the setting named"
    }

    fn store_prefix(&self) -> &'static str {
        NAME
    }

    fn key(&self, uri: &str) -> String {
        dedup_key(&self.event.appliance, uri)
    }

    fn route(&self, severity: Option<&str>) -> Result<Option<String>, String> {
        match self.keys.route(severity) {
            Some((slot, _)) => Ok(Some(slot)),
            None => {
                let sev = severity.unwrap_or("Unknown");
                Err(format!("no routing key for {sev} alerts: set pagerduty.routing_keys.{sev} or pagerduty.routing_key"))
            }
        }
    }

    /// The routing key the trigger went to while it is configured, else the one for the
    /// alert's severity now.
    fn resolve_route(
        &self,
        recorded: Option<&str>,
        severity: Option<&str>,
        key: &str,
    ) -> Result<Option<String>, String> {
        recorded
            .filter(|s| self.keys.slot(s).is_some())
            .map(str::to_string)
            .or_else(|| self.keys.route(severity).map(|r| r.0))
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "no routing key to resolve with ({} is no longer configured): resolve the incident with dedup key {key} by hand",
                    recorded.unwrap_or("routing_key")
                )
            })
    }

    async fn trigger(
        &self,
        route: Option<&str>,
        alert: &Value,
        uri: &str,
        key: &str,
    ) -> Result<(), CallError> {
        let event = trigger_event(&self.event, alert, uri, key);
        let a = self.enqueue(route, &event).await?;
        if a.dedup_key.as_deref().is_some_and(|k| k != key) {
            tracing::warn!(alert = uri, dedup_key = %key, answered = a.dedup_key.as_deref().unwrap_or_default(), "PagerDuty answered with another dedup key");
        }
        Ok(())
    }

    async fn resolve(
        &self,
        route: Option<&str>,
        _ev: &Event,
        _uri: &str,
        key: &str,
    ) -> Result<(), CallError> {
        self.enqueue(route, &resolve_event(key)).await.map(|_| ())
    }

    fn note_for(&self, key: &str) -> String {
        note_for(&self.note, key)
    }

    fn noted(&self, alert: &Value, key: &str) -> bool {
        noted(alert, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EventSettings {
        EventSettings {
            appliance: "east".into(),
            address: "oneview-east.example.com".into(),
            severities: super::super::DEFAULT_SEVERITIES
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            alert_link: Some(super::super::DEFAULT_ALERT_LINK.into()),
            client: super::super::DEFAULT_CLIENT.into(),
            client_url: Some(super::super::DEFAULT_CLIENT_URL.into()),
        }
    }

    #[test]
    fn the_dedup_key_is_stable_per_appliance_and_alert() {
        let k = dedup_key("east", "/rest/alerts/42");
        assert_eq!(k, dedup_key("east", "/rest/alerts/42"), "stable");
        assert_eq!(k.len(), 64);
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Pinned: a change here would page every open alert a second time after an upgrade.
        assert_eq!(k, format!("{:x}", Sha256::digest(b"east\n/rest/alerts/42")),);
        assert_ne!(k, dedup_key("west", "/rest/alerts/42"));
        assert_ne!(k, dedup_key("east", "/rest/alerts/421"));
    }

    #[test]
    fn summaries_are_cut_on_a_character_boundary_at_1024() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        assert_eq!(truncate_chars("", 3), "");
        assert_eq!(truncate_chars("abc", 0), "");
        // Multi-byte characters are never split.
        let s = "é".repeat(2000);
        let t = truncate_chars(&s, SUMMARY_MAX);
        assert_eq!(t.chars().count(), SUMMARY_MAX);
        assert!(t.ends_with('…'));
        let long = json!({"description": "🔥".repeat(1500),
            "associatedResource": {"resourceName": "Encl1"}});
        let s = summary(&long, "east");
        assert_eq!(s.chars().count(), SUMMARY_MAX);
        assert!(s.starts_with("Encl1: 🔥"));
        let exact = "x".repeat(SUMMARY_MAX - 7);
        assert_eq!(
            summary(
                &json!({"description": exact, "associatedResource": {"resourceName": "Encl1"}}),
                "east"
            )
            .chars()
            .count(),
            SUMMARY_MAX
        );
        assert_eq!(
            summary(
                &json!({"description": null, "alertTypeID": "Trap.x"}),
                "east"
            ),
            "east: Trap.x"
        );
        assert_eq!(summary(&json!({}), "east"), "east: OneView alert");
    }

    #[test]
    fn severities_map_with_the_defaults_and_anything_else_is_info() {
        let s = settings();
        for (ov, pd) in [
            (Some("Critical"), "critical"),
            (Some("critical"), "critical"),
            (Some("Warning"), "warning"),
            (Some("OK"), "info"),
            (Some("Unknown"), "info"),
            (Some("Disabled"), "info"),
            (Some("Bogus"), "info"),
            (None, "info"),
        ] {
            assert_eq!(pd_severity(&s.severities, ov), pd, "{ov:?}");
        }
        let custom = vec![("Warning".to_string(), "error".to_string())];
        assert_eq!(pd_severity(&custom, Some("warning")), "error");
    }

    #[test]
    fn a_trigger_carries_the_mapped_fields_and_survives_nulls() {
        let s = settings();
        let alert = json!({"uri": "/rest/alerts/7", "severity": "Critical", "alertState": "Active",
            "description": "The power supply in bay 4 failed.", "correctiveAction": "Replace it.",
            "alertTypeID": "Trap.cpqHe4FltTolPowerSupplyFailed", "healthCategory": "Power",
            "created": "2026-11-25T10:00:00.123Z",
            "associatedResource": {"resourceName": "Encl1", "resourceCategory": "enclosures",
                "resourceUri": "/rest/enclosures/1"}});
        let e = trigger_event(&s, &alert, "/rest/alerts/7", "k");
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], "k");
        assert!(e.get("routing_key").is_none(), "added only when sent");
        let p = &e["payload"];
        assert_eq!(p["summary"], "Encl1: The power supply in bay 4 failed.");
        assert_eq!(p["source"], "Encl1");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["timestamp"], "2026-11-25T10:00:00.123Z");
        assert_eq!(p["component"], "enclosures");
        assert_eq!(p["group"], "east");
        assert_eq!(p["class"], "Trap.cpqHe4FltTolPowerSupplyFailed");
        let d = &p["custom_details"];
        assert_eq!(d["alertUri"], "/rest/alerts/7");
        assert_eq!(d["correctiveAction"], "Replace it.");
        assert_eq!(d["appliance"], "east");
        assert_eq!(
            e["links"][0]["href"],
            "https://oneview-east.example.com/#/activity/r/rest/alerts/7"
        );
        assert_eq!(e["client"], "HPE OneView (east)");
        assert_eq!(e["client_url"], "https://oneview-east.example.com/");

        let bare = json!({"severity": null, "description": null, "created": "yesterday",
            "associatedResource": null});
        let e = trigger_event(&s, &bare, "/rest/alerts/8", "k");
        let p = &e["payload"];
        assert_eq!(p["source"], "east");
        assert_eq!(p["severity"], "info");
        assert!(
            p.get("timestamp").is_none(),
            "an invalid timestamp is left out"
        );
        assert!(p.get("component").is_none() && p.get("class").is_none());
        assert!(p["custom_details"].get("description").is_none());
        let none = EventSettings {
            alert_link: None,
            client_url: None,
            ..s
        };
        let e = trigger_event(&none, &bare, "/rest/alerts/8", "k");
        assert!(e.get("links").is_none() && e.get("client_url").is_none());
        assert_eq!(
            resolve_event("k"),
            json!({"event_action": "resolve", "dedup_key": "k"})
        );
    }

    #[test]
    fn our_note_is_found_by_its_dedup_key_whatever_its_format() {
        let k = dedup_key("east", "/rest/alerts/1");
        let note = note_for(super::super::DEFAULT_NOTE, &k);
        assert_eq!(note, format!("Paged on PagerDuty (dedup key {k})"));
        let a = json!({"changeLog": [{"notes": "hello"}, {"notes": format!("PD: {k}")}]});
        assert!(noted(&a, &k));
        assert!(!noted(&a, &dedup_key("east", "/rest/alerts/2")));
        assert!(!noted(&json!({"changeLog": null}), &k));
        assert!(!noted(&json!({}), &k));
    }
}
