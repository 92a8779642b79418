//! Paging: the work for one event. An admitted alert is triggered on PagerDuty and its dedup
//! key noted in the alert; a cleared or deleted one is resolved.
//!
//! Each step is committed to the store (key `pagerduty:` + uri) before the next, using the
//! store's steps with these meanings: `Creating` (about to trigger, with the routing key's
//! setting), `Created` (PagerDuty took the trigger; the note is not written yet), `Noted` (the
//! note is in the alert's change log: done), `Failed` (PagerDuty refused the event for good,
//! with its reason), `Closed` (the incident was resolved because its alert cleared). The
//! record's `incident` is the dedup key and its `reference` the setting of the routing key
//! the trigger went to, so that the resolve goes to the same service.
//!
//! A crash at any instant is safe: before the trigger's record, the next run reads the alert
//! and triggers again with the same dedup key (PagerDuty adds it to the open incident); before
//! the note's record, it reads the alert and writes the note only if it is not there. The note
//! itself is written only onto the alert as just read (its eTag), so a write whose answer was
//! lost is found by reading the alert again, never repeated.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use scmb_model::{AlertView, ChangeType, Event, Filter};
use scmb_oneview::{OneViewError, Secret, Session};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::client::{Accepted, EventsClient};
use super::{store_key, EventSettings, RoutingKeys, KEY_PREFIX, NAME};
use crate::sinks::http::{retry_delay, Decision};
use crate::sinks::sink::Outcome;
use crate::store::{Record, Step, Store, StoreError};
use crate::telemetry::ApplianceMetrics;

/// The longest `payload.summary` PagerDuty accepts, in characters.
pub const SUMMARY_MAX: usize = 1024;

/// Writes of a note in a row that find the alert changed (412) before pausing.
const NOTE_RACES: u32 = 5;

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

/// A failure that stops the appliance's pipeline (the store is unusable).
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Attempt<T> {
    Ok(T),
    /// Failed for good, with why.
    Permanent(String),
    Interrupted,
}

/// What to do about a OneView failure.
enum OvClass {
    /// Credentials or rights withdrawn: an operator must act; pause, keep the work.
    Pause,
    Retry,
    Permanent,
}

fn ov_class(e: &OneViewError) -> OvClass {
    match e {
        OneViewError::AuthFailed { .. }
        | OneViewError::SessionExpired
        | OneViewError::Api {
            status: 401 | 403, ..
        } => OvClass::Pause,
        e if e.is_transient()
            || matches!(
                e,
                OneViewError::BadResponse { .. }
                    | OneViewError::Api {
                        status: 408 | 429 | 500..=599,
                        ..
                    }
            ) =>
        {
            OvClass::Retry
        }
        _ => OvClass::Permanent,
    }
}

pub(super) struct Pager {
    pub store: Store,
    pub client: EventsClient,
    pub ov: Arc<Session>,
    pub keys: RoutingKeys,
    pub event: EventSettings,
    /// The note's format (`{dedup_key}` replaced).
    pub note: String,
    pub resolve_on_clear: bool,
    pub filter: Filter,
    pub shutdown: watch::Receiver<bool>,
    /// Retry delays: first and cap.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub metrics: ApplianceMetrics,
}

impl Pager {
    /// Sleeps `d` unless shutdown comes first (then returns false).
    async fn pause(&self, d: Duration) -> bool {
        let mut rx = self.shutdown.clone();
        if *rx.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = rx.wait_for(|s| *s) => false,
        }
    }

    /// Sends an event until PagerDuty takes it, refuses it for good, or shutdown comes. A
    /// repeat is safe whatever happened to the one before: the dedup key makes two triggers
    /// one incident, and a second resolve is dropped.
    async fn send(&self, what: &str, uri: &str, key: &Secret, event: &Value) -> Attempt<Accepted> {
        let mut attempt = 0;
        loop {
            match self.client.enqueue(key, event).await {
                Ok(a) => return Attempt::Ok(a),
                Err(e) => {
                    let after = match e.decision() {
                        Decision::Fail => return Attempt::Permanent(e.to_string()),
                        Decision::Pause => {
                            tracing::error!(alert = uri, error = %e, pause_secs = self.retry_cap.as_secs(), "PagerDuty (or a proxy before it) refused us while {what}: fix the setting named; pausing");
                            if !self.pause(self.retry_cap).await {
                                return Attempt::Interrupted;
                            }
                            continue;
                        }
                        Decision::Retry { after } => after,
                        // Never said of an error; taken as a retry.
                        Decision::Ok => None,
                    };
                    let d = retry_delay(after, attempt, self.retry_base, self.retry_cap);
                    attempt += 1;
                    if e.may_have_acted() {
                        tracing::debug!(alert = uri, "PagerDuty may have taken the event: sending it again is safe (same dedup key)");
                    }
                    self.metrics.retry(NAME, what, attempt, d, &e.to_string());
                    if !self.pause(d).await {
                        return Attempt::Interrupted;
                    }
                }
            }
        }
    }

    /// Runs a OneView call until it succeeds, fails for good, or shutdown comes.
    async fn ov_retry<T, F, Fut>(&self, what: &str, mut f: F) -> Attempt<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OneViewError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Attempt::Ok(v),
                Err(e) => {
                    if !self.ov_wait(what, &e, &mut attempt).await {
                        return match ov_class(&e) {
                            OvClass::Permanent => Attempt::Permanent(e.to_string()),
                            _ => Attempt::Interrupted,
                        };
                    }
                }
            }
        }
    }

    /// After a failed OneView call: waits as its class says and returns true to go on;
    /// false for a permanent failure or when shutdown came.
    async fn ov_wait(&self, what: &str, e: &OneViewError, attempt: &mut u32) -> bool {
        match ov_class(e) {
            OvClass::Permanent => false,
            OvClass::Pause => {
                tracing::error!(error = %e, pause_secs = self.retry_cap.as_secs(), "OneView refused our credentials or rights while {what}: check the user and password; pausing");
                self.pause(self.retry_cap).await
            }
            OvClass::Retry => {
                let d = scmb_servicemanager::backoff(*attempt, self.retry_base, self.retry_cap);
                *attempt += 1;
                self.metrics
                    .retry("oneview", what, *attempt, d, &e.to_string());
                self.pause(d).await
            }
        }
    }

    async fn put(
        &self,
        key: &str,
        step: Step,
        dedup: &str,
        slot: Option<&str>,
    ) -> Result<(), PageError> {
        let mut rec = Record::new(Some(dedup.to_string()), step);
        rec.reference = slot.map(str::to_string);
        Ok(self.store.put_async(key, &rec).await?)
    }

    /// Records a refusal for good, logs and counts it.
    async fn fail(
        &self,
        uri: &str,
        dedup: &str,
        slot: Option<&str>,
        reason: String,
    ) -> Result<Outcome, PageError> {
        self.metrics.sink_incident_failed(NAME, uri, &reason);
        let mut rec = Record::new(Some(dedup.to_string()), Step::Failed);
        rec.reference = slot.map(str::to_string);
        rec.reason = Some(reason.clone());
        self.store.put_async(&store_key(uri), &rec).await?;
        Ok(Outcome::Failed(reason))
    }

    /// Handles one decoded event. Returns when the delivery may be acked (or must be left).
    pub async fn process(&self, ev: &Event) -> Result<Outcome, PageError> {
        if !ev.is_alert() {
            return Ok(Outcome::Done("not an alert".into()));
        }
        let uri = ev.resource_uri.as_str();
        let cleared = ev.change_type == ChangeType::Deleted
            || (ev.change_type == ChangeType::Updated
                && ev.body().get("newState").and_then(Value::as_str) == Some("Cleared"));
        if cleared {
            if !self.resolve_on_clear {
                return Ok(Outcome::Done(
                    "cleared; not resolved (resolve_on_clear = false)".into(),
                ));
            }
            return self.resolve(ev, uri).await;
        }
        if !self.filter.admits(ev) {
            return Ok(Outcome::Done("filtered out".into()));
        }
        self.page(uri).await
    }

    async fn page(&self, uri: &str) -> Result<Outcome, PageError> {
        let key = store_key(uri);
        let existing = self.store.get(&key)?;
        match &existing {
            Some(r) if matches!(r.step, Step::Noted | Step::Failed | Step::Closed) => {
                return Ok(Outcome::Done(format!("already handled ({:?})", r.step)));
            }
            Some(r) if r.step == Step::Created => {
                let dedup = r
                    .incident
                    .clone()
                    .unwrap_or_else(|| dedup_key(&self.event.appliance, uri));
                return self.note(uri, &dedup, r.reference.as_deref(), None).await;
            }
            _ => {}
        }
        let alert = match self
            .ov_retry("reading the alert", || self.ov.alert(uri))
            .await
        {
            Attempt::Ok(Some(a)) => a,
            Attempt::Ok(None) => return Ok(Outcome::Done("alert gone".into())),
            Attempt::Permanent(e) => {
                tracing::error!(alert = uri, error = %e, "cannot read the alert; not paged");
                return Ok(Outcome::Done(format!("alert unreadable: {e}")));
            }
            Attempt::Interrupted => return Ok(Outcome::Interrupted),
        };
        let dedup = dedup_key(&self.event.appliance, uri);
        let route = self.keys.route(AlertView(&alert).severity());
        if noted(&alert, &dedup) {
            self.metrics.sink_incident_deduplicated(
                NAME,
                uri,
                &dedup,
                "its notes say it was paged",
            );
            let slot = existing
                .and_then(|r| r.reference)
                .or_else(|| route.map(|r| r.0));
            self.put(&key, Step::Noted, &dedup, slot.as_deref()).await?;
            return Ok(Outcome::Done("already paged".into()));
        }
        if AlertView(&alert).alert_state() == Some("Cleared") {
            return Ok(Outcome::Done("alert already cleared".into()));
        }
        let Some((slot, routing_key)) = route else {
            let sev = AlertView(&alert).severity().unwrap_or("Unknown");
            let reason = format!("no routing key for {sev} alerts: set pagerduty.routing_keys.{sev} or pagerduty.routing_key");
            return self.fail(uri, &dedup, None, reason).await;
        };
        if existing.as_ref().map(|r| &r.step) != Some(&Step::Creating) {
            self.put(&key, Step::Creating, &dedup, Some(&slot)).await?;
        }
        let event = trigger_event(&self.event, &alert, uri, &dedup);
        match self
            .send(
                "triggering the PagerDuty incident",
                uri,
                routing_key,
                &event,
            )
            .await
        {
            Attempt::Ok(a) => {
                if a.dedup_key.as_deref().is_some_and(|k| k != dedup) {
                    tracing::warn!(alert = uri, dedup_key = %dedup, answered = ?a.dedup_key, "PagerDuty answered with another dedup key");
                }
            }
            Attempt::Permanent(reason) => return self.fail(uri, &dedup, Some(&slot), reason).await,
            Attempt::Interrupted => return Ok(Outcome::Interrupted),
        }
        self.put(&key, Step::Created, &dedup, Some(&slot)).await?;
        self.metrics.sink_incident_created(NAME, uri, &dedup);
        self.note(uri, &dedup, Some(&slot), Some(alert)).await
    }

    /// Writes the note once: onto the alert as just read (its eTag), and only when its change
    /// log does not hold it already. `alert`: as read just before, when it was.
    async fn note(
        &self,
        uri: &str,
        dedup: &str,
        slot: Option<&str>,
        mut alert: Option<Value>,
    ) -> Result<Outcome, PageError> {
        let key = store_key(uri);
        let text = note_for(&self.note, dedup);
        let (mut attempt, mut races) = (0u32, 0u32);
        let written = loop {
            let current = match alert.take() {
                Some(a) => a,
                None => match self
                    .ov_retry("reading the alert", || self.ov.alert(uri))
                    .await
                {
                    Attempt::Ok(Some(a)) => a,
                    Attempt::Ok(None) => break "paged; the alert is gone, no note",
                    Attempt::Permanent(e) => {
                        tracing::warn!(alert = uri, error = %e, "cannot read the alert to write the note; paged without it");
                        break "paged; note not written";
                    }
                    Attempt::Interrupted => return Ok(Outcome::Interrupted),
                },
            };
            if noted(&current, dedup) {
                break "paged; the note was already there";
            }
            let put = match current.get("eTag").and_then(Value::as_str) {
                Some(etag) => self.ov.add_alert_note_if(uri, &text, etag).await,
                // No eTag to guard the write with: a plain one.
                None => self.ov.add_alert_note(uri, &text).await.map(Some),
            };
            match put {
                Ok(Some(_)) => {
                    tracing::info!(alert = uri, dedup_key = %dedup, "note written to the alert");
                    break "paged; note written";
                }
                // Changed since read: read it again (it may even carry our note now).
                Ok(None) if races < NOTE_RACES => races += 1,
                Ok(None) => {
                    races = 0;
                    let d = scmb_servicemanager::backoff(attempt, self.retry_base, self.retry_cap);
                    attempt += 1;
                    self.metrics.retry(
                        "oneview",
                        "writing the note",
                        attempt,
                        d,
                        "the alert keeps changing (412)",
                    );
                    if !self.pause(d).await {
                        return Ok(Outcome::Interrupted);
                    }
                }
                // The write may have happened: read the alert again before another.
                Err(e) => {
                    if !self.ov_wait("writing the note", &e, &mut attempt).await {
                        if *self.shutdown.borrow() {
                            return Ok(Outcome::Interrupted);
                        }
                        tracing::warn!(alert = uri, error = %e, "could not write the note into the alert; paged without it");
                        break "paged; note refused";
                    }
                }
            }
        };
        self.put(&key, Step::Noted, dedup, slot).await?;
        Ok(Outcome::Done(written.into()))
    }

    async fn resolve(&self, ev: &Event, uri: &str) -> Result<Outcome, PageError> {
        let key = store_key(uri);
        let Some(rec) = self.store.get(&key)? else {
            return Ok(Outcome::Done("cleared, never paged".into()));
        };
        if matches!(rec.step, Step::Failed | Step::Closed) {
            return Ok(Outcome::Done(format!(
                "cleared; nothing to resolve ({:?})",
                rec.step
            )));
        }
        let dedup = rec
            .incident
            .clone()
            .unwrap_or_else(|| dedup_key(&self.event.appliance, uri));
        let route = rec
            .reference
            .as_deref()
            .and_then(|s| self.keys.slot(s).map(|k| (s.to_string(), k)))
            .or_else(|| self.keys.route(AlertView(ev.resource()).severity()));
        let Some((slot, routing_key)) = route else {
            let reason = format!(
                "no routing key to resolve with ({} is no longer configured): resolve the incident with dedup key {dedup} by hand",
                rec.reference.as_deref().unwrap_or("routing_key")
            );
            return self
                .fail(uri, &dedup, rec.reference.as_deref(), reason)
                .await;
        };
        let what = if ev.change_type == ChangeType::Deleted {
            "deleted"
        } else {
            "cleared"
        };
        match self
            .send(
                "resolving the PagerDuty incident",
                uri,
                routing_key,
                &resolve_event(&dedup),
            )
            .await
        {
            Attempt::Ok(_) => {}
            Attempt::Permanent(reason) => {
                return self
                    .fail(
                        uri,
                        &dedup,
                        Some(&slot),
                        format!("resolve refused: {reason}"),
                    )
                    .await
            }
            Attempt::Interrupted => return Ok(Outcome::Interrupted),
        }
        self.put(&key, Step::Closed, &dedup, Some(&slot)).await?;
        self.metrics
            .sink_incident_resolved(NAME, uri, &dedup, &format!("resolved ({what})"));
        Ok(Outcome::Done(format!("resolved ({what})")))
    }

    /// The alerts whose incident may be open (triggered or about to be, not resolved), when
    /// a clear resolves it.
    pub async fn open_alerts(&self) -> Result<Vec<String>, PageError> {
        if !self.resolve_on_clear {
            return Ok(Vec::new());
        }
        let all = self.store.call(|s| s.all()).await?;
        Ok(all
            .into_iter()
            .filter(|(_, r)| matches!(r.step, Step::Creating | Step::Created | Step::Noted))
            .filter_map(|(k, _)| k.strip_prefix(KEY_PREFIX).map(str::to_string))
            .collect())
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
