//! The Prometheus Alertmanager sink: every admitted alert is posted to Alertmanager's API v2
//! as a firing alert, re-sent while it is active, and posted with `endsAt` when it is cleared
//! or deleted. The `[appliance.alertmanager]` table is [`config`], the API client [`client`];
//! HTTP (TLS, proxies, timeouts, the retry classification) is the shared
//! [`crate::sinks::http`].
//!
//! Alertmanager forgets an alert that is not sent again within its `resolve_timeout`, so the
//! sink keeps what it sent: the store record `alertmanager:<uri>` holds the alert as posted
//! (its labels, annotations, `startsAt`, `generatorURL`; the record's `reference`, as JSON).
//! Its step says what the re-sender does with it: `Created` (firing) is re-sent every
//! `resend_interval`, from the first moment of the pipeline (so also after a restart);
//! `Closed` (cleared or deleted: the same alert with `endsAt`) is re-sent for
//! [`RESOLVED_RETENTION`] after its clear, as Prometheus does, so that a cluster member that
//! missed the resolve gets it; `Failed` (refused for good: the alert was invalid) never.
//!
//! Sending again is always harmless (Alertmanager identifies an alert by its label set), so
//! every failure but a refusal (400) is retried while the message stays unacked. What must not
//! happen is a firing re-send overtaking a resolve — Alertmanager would open the alert again —
//! so the re-sender reads the records and posts them under one lock, and a clear writes its
//! `Closed` record under the same lock before posting the resolve. A message is done once one
//! of the configured Alertmanagers (an HA cluster's members) took it, as with Prometheus: the
//! others get it at the next re-send.

mod client;
mod config;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use client::{AmClient, AmError, ALERTS};
pub use config::{AlertmanagerConfig, DEFAULT_RESEND, MAX_CONCURRENCY};

use scmb_model::{AlertView, ChangeType, Event, Filter, Peek};
use scmb_oneview::Secret;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Mutex};

use crate::failure;
use crate::sinks::http::{retry_delay, Decision, HttpError, HttpSettings};
use crate::sinks::oneview_retry::pause;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::SinkContext;
use crate::store::{Record, Step, Store, StoreError};
use crate::telemetry::ApplianceMetrics;

/// The sink's name: its config table, its metrics label, its store keys' prefix.
pub const NAME: &str = "alertmanager";

/// Every store key of this sink starts with it: `alertmanager:/rest/alerts/123`.
pub const KEY_PREFIX: &str = "alertmanager:";

/// The store key of an alert.
pub fn store_key(uri: &str) -> String {
    format!("{KEY_PREFIX}{uri}")
}

/// The default link from an alert back to OneView: the appliance's Activity view of it.
pub const DEFAULT_GENERATOR_URL: &str = "https://{address}/#/activity/r{uri}";

/// The labels the sink sets itself (`labels` in the table cannot override them).
pub const LABELS: [&str; 6] = [
    "alertname",
    "severity",
    "appliance",
    "resource",
    "resource_category",
    "alert_uri",
];

/// How long a resolved alert is still re-sent after its clear (Prometheus' own figure).
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// The most alerts in one re-send post.
const BATCH: usize = 500;

/// How the sink authenticates to the Alertmanagers (a reverse proxy before them). `Debug`
/// never shows a secret.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

/// What the sink needs, from an `[appliance.alertmanager]` table.
#[derive(Debug, Clone)]
pub struct AlertmanagerSettings {
    /// Base URLs, without a trailing slash: one Alertmanager or an HA cluster's members.
    pub urls: Vec<String>,
    pub http: HttpSettings,
    pub auth: Auth,
    /// How often active alerts are posted again.
    pub resend_interval: Duration,
    /// Longest pause between retries of a failing post.
    pub retry_cap: Duration,
    /// Labels added to every alert.
    pub labels: BTreeMap<String, String>,
    /// The appliance's name (the `appliance` label, `{appliance}`).
    pub appliance: String,
    /// The appliance's address (`{address}`).
    pub address: String,
    /// The `generatorURL` template; none: no link.
    pub generator_url: Option<String>,
}

/// Whether `name` is a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The firing alert for OneView's `alert` at `uri`: labels (who and what), annotations (the
/// text), `startsAt` (the alert's creation) and `generatorURL`. No `endsAt`: Alertmanager
/// keeps it active for its `resolve_timeout`, and the re-sender sends it again before that.
pub fn firing(s: &AlertmanagerSettings, alert: &Value, uri: &str, now: &str) -> Value {
    let a = AlertView(alert);
    let mut labels = Map::new();
    for (k, v) in &s.labels {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    let mut label = |k: &str, v: Option<&str>| {
        if let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) {
            labels.insert(k.to_string(), Value::String(v.to_string()));
        }
    };
    label(
        "alertname",
        Some(a.alert_type_id().unwrap_or("OneViewAlert")),
    );
    label(
        "severity",
        Some(&a.severity().unwrap_or("Unknown").to_ascii_lowercase()),
    );
    label("appliance", Some(&s.appliance));
    label("resource", a.resource_name());
    label(
        "resource_category",
        a.resource_category()
            .or_else(|| alert.get("physicalResourceType").and_then(Value::as_str)),
    );
    label("alert_uri", Some(uri));
    let mut annotations = Map::new();
    for (k, v) in [
        ("description", a.description()),
        ("corrective_action", a.corrective_action()),
    ] {
        if let Some(v) = v.filter(|v| !v.trim().is_empty()) {
            annotations.insert(k.to_string(), Value::String(v.to_string()));
        }
    }
    let starts = alert
        .get("created")
        .and_then(Value::as_str)
        .filter(|c| parse_time(c).is_some())
        .unwrap_or(now);
    let mut out = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts,
    });
    if let Some(t) = &s.generator_url {
        out["generatorURL"] = Value::String(
            t.replace("{address}", &s.address)
                .replace("{appliance}", &s.appliance)
                .replace("{uri}", uri),
        );
    }
    out
}

/// `payload` resolved: with `endsAt` now (never before its `startsAt`, which Alertmanager
/// refuses).
pub fn resolved(payload: &Value, now: time::OffsetDateTime) -> Value {
    let mut out = payload.clone();
    let starts = payload
        .get("startsAt")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let ends = starts.map_or(now, |s| s.max(now));
    out["endsAt"] = Value::String(scmb_model::message::format_rfc3339_ms(ends));
    out
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Alertmanager's `global.resolve_timeout`, read from the configuration its
/// `GET /api/v2/status` shows (`config.original`, YAML); none when it does not say.
pub fn resolve_timeout(status: &Value) -> Option<Duration> {
    let yaml = status.get("config")?.get("original")?.as_str()?;
    let mut in_global = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_global = line.trim_end() == "global:";
            continue;
        }
        if in_global {
            if let Some(v) = line.trim().strip_prefix("resolve_timeout:") {
                return crate::duration::parse("resolve_timeout", v.trim().trim_matches('"')).ok();
            }
        }
    }
    None
}

/// How sending ended.
enum Sent {
    Ok,
    /// Refused for good, with why.
    Permanent(String),
    Interrupted,
}

/// The sink.
pub struct Alertmanager {
    clients: Vec<AmClient>,
    s: AlertmanagerSettings,
    store: Store,
    filter: Filter,
    stop: watch::Receiver<bool>,
    metrics: ApplianceMetrics,
    /// Held by the re-sender while it reads and posts, and by a clear while it writes its
    /// record: a firing re-send never overtakes a resolve.
    resend: Arc<Mutex<()>>,
    retry_base: Duration,
}

fn clients(s: &AlertmanagerSettings) -> Result<Vec<AmClient>, SinkError> {
    s.urls
        .iter()
        .map(|u| {
            AmClient::new(u, s).map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))
        })
        .collect()
}

fn store_error(e: StoreError) -> SinkError {
    SinkError::new(NAME, failure::UNEXPECTED, e.to_string())
}

impl Alertmanager {
    pub fn new(s: &AlertmanagerSettings, ctx: &SinkContext) -> Result<Alertmanager, SinkError> {
        let Some(store) = ctx.store.clone() else {
            return Err(SinkError::new(
                NAME,
                failure::UNEXPECTED,
                "the Alertmanager sink needs the state store (what it re-sends)",
            ));
        };
        Ok(Alertmanager {
            clients: clients(s)?,
            s: s.clone(),
            store,
            filter: ctx.filter.clone(),
            stop: ctx.stop.clone(),
            metrics: ctx.metrics.clone(),
            resend: Arc::new(Mutex::new(())),
            retry_base: Duration::from_millis(250),
        })
    }

    /// Posts `alerts` to every Alertmanager until one took them, one refused them for good
    /// (and none took them), or a stop comes.
    async fn send(&self, alerts: &Value, uri: &str, what: &str) -> Sent {
        let mut backoff = crate::retry::Backoff::new(self.retry_base, self.s.retry_cap);
        loop {
            let mut refused = None;
            let mut after: Option<Duration> = None;
            let mut pause_for_credentials = false;
            let mut last = String::new();
            let mut took = 0;
            for c in &self.clients {
                match c.post(alerts).await {
                    Ok(()) => took += 1,
                    Err(e) => {
                        let d = match &e {
                            AmError::Http(h) => h.decision(),
                            AmError::Unconfirmed { .. } => Decision::Retry { after: None },
                        };
                        match d {
                            Decision::Fail => refused = Some(e.to_string()),
                            Decision::Pause => pause_for_credentials = true,
                            Decision::Retry { after: a } => {
                                after = after.max(a);
                            }
                            Decision::Ok => {}
                        }
                        tracing::debug!(alert = uri, sink = NAME, url = %c.http().base_url(), error = %e, "{what}: not taken");
                        last = e.to_string();
                    }
                }
            }
            if took > 0 {
                if took < self.clients.len() {
                    tracing::warn!(alert = uri, sink = NAME, error = %last, "{what}: not every Alertmanager took it; the others get it at the next re-send");
                }
                return Sent::Ok;
            }
            if let Some(reason) = refused {
                return Sent::Permanent(reason);
            }
            let d = if pause_for_credentials {
                tracing::error!(alert = uri, sink = NAME, error = %last, pause_secs = self.s.retry_cap.as_secs(), "Alertmanager (or a proxy before it) refused us while {what}; pausing");
                self.s.retry_cap
            } else {
                let d = retry_delay(after, &mut backoff);
                self.metrics.retry(NAME, what, backoff.attempt(), d, &last);
                d
            };
            if !pause(&self.stop, d).await {
                return Sent::Interrupted;
            }
        }
    }

    async fn put(
        &self,
        uri: &str,
        step: Step,
        payload: &Value,
        reason: Option<String>,
    ) -> Result<(), SinkError> {
        let mut rec = Record::new(None, step);
        rec.reference = Some(payload.to_string());
        rec.reason = reason;
        self.store
            .put_async(&store_key(uri), &rec)
            .await
            .map_err(store_error)
    }

    /// Handles one decoded event.
    async fn process(&self, ev: &Event) -> Result<Outcome, SinkError> {
        if !ev.is_alert() {
            return Ok(Outcome::Done("not an alert".into()));
        }
        let uri = ev.resource_uri.as_str();
        let cleared = ev.change_type == ChangeType::Deleted
            || ev.body().get("newState").and_then(Value::as_str) == Some("Cleared")
            || AlertView(ev.resource()).alert_state() == Some("Cleared");
        let key = store_key(uri);
        let existing = self.store.get(&key).map_err(store_error)?;
        let recorded = |r: &Record| -> Option<Value> {
            r.reference
                .as_deref()
                .and_then(|p| serde_json::from_str::<Value>(p).ok())
        };
        if cleared {
            let Some(rec) = existing else {
                return Ok(Outcome::Done("cleared, never sent".into()));
            };
            let Some(payload) = recorded(&rec) else {
                return Ok(Outcome::Done("cleared; nothing recorded to resolve".into()));
            };
            let done = match rec.step {
                Step::Closed => payload,
                Step::Created => {
                    let r = resolved(&payload, time::OffsetDateTime::now_utc());
                    // Under the re-sender's lock: no firing re-send of it after this point.
                    let _held = self.resend.lock().await;
                    self.put(uri, Step::Closed, &r, None).await?;
                    r
                }
                _ => {
                    return Ok(Outcome::Done(format!(
                        "cleared; nothing to resolve ({:?})",
                        rec.step
                    )))
                }
            };
            let how = if ev.change_type == ChangeType::Deleted {
                "deleted"
            } else {
                "cleared"
            };
            return match self
                .send(
                    &json!([done]),
                    uri,
                    "sending the resolved alert to Alertmanager",
                )
                .await
            {
                Sent::Ok => {
                    if rec.step == Step::Created {
                        let name = done["labels"]["alertname"].as_str().unwrap_or_default();
                        self.metrics.sink_incident_resolved(
                            NAME,
                            uri,
                            name,
                            &format!("resolved ({how})"),
                        );
                    }
                    Ok(Outcome::Done(format!("resolved ({how})")))
                }
                // The record says Closed: it is re-sent for a while by the re-sender anyway.
                Sent::Permanent(reason) => {
                    tracing::error!(alert = uri, sink = NAME, error = %reason, "Alertmanager refused the resolved alert");
                    Ok(Outcome::Failed(reason))
                }
                Sent::Interrupted => Ok(Outcome::Interrupted),
            };
        }
        if !self.filter.admits(ev) {
            return Ok(Outcome::Done("filtered out".into()));
        }
        let now = scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc());
        let payload = firing(&self.s, ev.resource(), uri, &now);
        let mut alerts = vec![payload.clone()];
        let first = match &existing {
            Some(r) if matches!(r.step, Step::Closed | Step::Failed) => {
                return Ok(Outcome::Done(format!("already handled ({:?})", r.step)));
            }
            Some(r) => {
                let before = recorded(r);
                // The same alert again (a note added, a redelivery) is posted again all the
                // same: harmless, and the message is acked only once Alertmanager took it.
                // Its labels changed (an escalation): the old label set is another alert for
                // Alertmanager, resolved now rather than left to time out.
                if let Some(b) = before.filter(|b| b["labels"] != payload["labels"]) {
                    alerts.push(resolved(&b, time::OffsetDateTime::now_utc()));
                }
                false
            }
            None => true,
        };
        {
            let _held = self.resend.lock().await;
            self.put(uri, Step::Created, &payload, None).await?;
        }
        match self
            .send(
                &Value::Array(alerts),
                uri,
                "sending the alert to Alertmanager",
            )
            .await
        {
            Sent::Ok => {
                if first {
                    let name = payload["labels"]["alertname"].as_str().unwrap_or_default();
                    self.metrics.sink_incident_created(NAME, uri, name);
                }
                Ok(Outcome::Done("sent".into()))
            }
            Sent::Permanent(reason) => {
                self.metrics.sink_incident_failed(NAME, uri, &reason);
                self.put(uri, Step::Failed, &payload, Some(reason.clone()))
                    .await?;
                Ok(Outcome::Failed(reason))
            }
            Sent::Interrupted => Ok(Outcome::Interrupted),
        }
    }

    /// Posts every active alert (and every alert resolved within [`RESOLVED_RETENTION`]) once,
    /// to every Alertmanager; a failure is logged and counted, and the next round tries again.
    async fn resend_once(&self) -> Result<usize, StoreError> {
        let _held = self.resend.lock().await;
        let all = self.store.call(|s| s.all()).await?;
        let now = time::OffsetDateTime::now_utc();
        let payloads: Vec<Value> = all
            .into_iter()
            .filter(|(k, _)| k.starts_with(KEY_PREFIX))
            .filter(|(_, r)| match r.step {
                Step::Created => true,
                Step::Closed => {
                    parse_time(&r.updated).is_some_and(|t| now - t < RESOLVED_RETENTION)
                }
                _ => false,
            })
            .filter_map(|(_, r)| serde_json::from_str(r.reference.as_deref()?).ok())
            .collect();
        let n = payloads.len();
        for batch in payloads.chunks(BATCH) {
            let body = Value::Array(batch.to_vec());
            for c in &self.clients {
                if let Err(e) = c.post(&body).await {
                    self.metrics.retry(
                        NAME,
                        &format!(
                            "re-sending {} alert(s) to {}",
                            batch.len(),
                            c.http().base_url()
                        ),
                        0,
                        self.s.resend_interval,
                        &e.to_string(),
                    );
                }
            }
        }
        Ok(n)
    }
}

/// Checks every Alertmanager without changing anything: `GET /-/ready`, and
/// `GET /api/v2/status` for its `resolve_timeout`, which `resend_interval` must stay below.
pub async fn probe(s: &AlertmanagerSettings) -> Result<String, SinkError> {
    probe_with(&clients(s)?, s.resend_interval).await
}

async fn probe_with(clients: &[AmClient], resend: Duration) -> Result<String, SinkError> {
    let fail = |e: HttpError| SinkError::new(NAME, e.failure_code(), e.to_string());
    let mut lines = Vec::new();
    for c in clients {
        c.ready().await.map_err(fail)?;
        let status = c.status().await.map_err(fail)?;
        let version = status["versionInfo"]["version"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let line = match resolve_timeout(&status) {
            Some(t) if t <= resend => {
                return Err(SinkError::new(
                    NAME,
                    failure::USAGE,
                    format!(
                        "{}: its resolve_timeout ({}) is not above alertmanager.resend_interval ({}): active alerts would be resolved between re-sends; lower resend_interval",
                        c.http().base_url(),
                        humantime::format_duration(t),
                        humantime::format_duration(resend)
                    ),
                ))
            }
            Some(t) => format!(
                "{} ready (Alertmanager {version}, {}; resolve_timeout {}, re-sent every {})",
                c.http().base_url(),
                c.http().trust(),
                humantime::format_duration(t),
                humantime::format_duration(resend)
            ),
            None => format!(
                "{} ready (Alertmanager {version}, {}; resolve_timeout not shown, re-sent every {})",
                c.http().base_url(),
                c.http().trust(),
                humantime::format_duration(resend)
            ),
        };
        lines.push(line);
    }
    Ok(lines.join("; "))
}

#[async_trait::async_trait]
impl Sink for Alertmanager {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Admitted alerts, and every clear or deletion (those of alerts it never sent are
    /// dropped at once).
    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        ev.is_alert()
            && (filter.admits_peek(ev)
                || ev.change_type == ChangeType::Deleted
                || ev.new_state.as_deref() == Some("Cleared"))
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        self.process(ev).await
    }

    /// The alerts still firing: a clear missed while nobody listened is fed back.
    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        let all = self.store.call(|s| s.all()).await.map_err(store_error)?;
        Ok(all
            .into_iter()
            .filter(|(_, r)| r.step == Step::Created)
            .filter_map(|(k, _)| k.strip_prefix(KEY_PREFIX).map(str::to_string))
            .collect())
    }

    /// The re-sender: at the start (after a restart too), then every `resend_interval`.
    async fn beside(&self) {
        loop {
            match self.resend_once().await {
                Ok(n) if n > 0 => {
                    tracing::debug!(sink = NAME, alerts = n, "re-sent to Alertmanager")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(sink = NAME, error = %e, "cannot read the state store to re-send the active alerts")
                }
            }
            if !pause(&self.stop, self.s.resend_interval).await {
                return;
            }
        }
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe_with(&self.clients, self.s.resend_interval).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AlertmanagerSettings {
        AlertmanagerSettings {
            urls: vec!["http://127.0.0.1:9093".into()],
            http: HttpSettings::default(),
            auth: Auth::None,
            resend_interval: DEFAULT_RESEND,
            retry_cap: Duration::from_secs(30),
            labels: [("team".to_string(), "infra".to_string())]
                .into_iter()
                .collect(),
            appliance: "east".into(),
            address: "ov.example.com".into(),
            generator_url: Some(DEFAULT_GENERATOR_URL.into()),
        }
    }

    #[test]
    fn an_alert_becomes_labels_annotations_its_start_and_a_link() {
        let alert = json!({"uri": "/rest/alerts/49", "created": "2018-02-12T20:12:03.207Z",
            "severity": "Critical", "alertTypeID": "Trap.cpqHe4FltTolPowerSupplyFailed",
            "description": "The power supply in bay 4 failed.", "correctiveAction": null,
            "associatedResource": {"resourceCategory": "enclosures", "resourceName": "Encl1"}});
        let p = firing(
            &settings(),
            &alert,
            "/rest/alerts/49",
            "2026-01-01T00:00:00.000Z",
        );
        assert_eq!(
            p,
            json!({"labels": {"alertname": "Trap.cpqHe4FltTolPowerSupplyFailed", "severity": "critical",
                    "appliance": "east", "resource": "Encl1", "resource_category": "enclosures",
                    "alert_uri": "/rest/alerts/49", "team": "infra"},
                "annotations": {"description": "The power supply in bay 4 failed."},
                "startsAt": "2018-02-12T20:12:03.207Z",
                "generatorURL": "https://ov.example.com/#/activity/r/rest/alerts/49"})
        );
        // Nulls everywhere: still a valid alert.
        let p = firing(
            &settings(),
            &json!({}),
            "/rest/alerts/1",
            "2026-01-01T00:00:00.000Z",
        );
        assert_eq!(p["labels"]["alertname"], "OneViewAlert");
        assert_eq!(p["labels"]["severity"], "unknown");
        assert_eq!(p["startsAt"], "2026-01-01T00:00:00.000Z");
        assert!(p["labels"].get("resource").is_none());
    }

    #[test]
    fn a_resolve_ends_now_but_never_before_it_started() {
        let now = time::OffsetDateTime::parse(
            "2026-01-01T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("t");
        let r = resolved(&json!({"startsAt": "2025-12-31T23:00:00.000Z"}), now);
        assert_eq!(r["endsAt"], "2026-01-01T00:00:00.000Z");
        let r = resolved(&json!({"startsAt": "2026-01-01T01:00:00.000Z"}), now);
        assert_eq!(r["endsAt"], "2026-01-01T01:00:00.000Z");
    }

    #[test]
    fn label_names_follow_prometheus() {
        assert!(valid_label_name("team"));
        assert!(valid_label_name("_x9"));
        assert!(!valid_label_name("9x"));
        assert!(!valid_label_name("a-b"));
        assert!(!valid_label_name(""));
    }

    #[test]
    fn the_resolve_timeout_is_read_from_the_status_config() {
        let s = json!({"config": {"original": "global:\n  resolve_timeout: 5s\n  smtp_hello: localhost\nroute:\n  receiver: \"null\"\n"}});
        assert_eq!(resolve_timeout(&s), Some(Duration::from_secs(5)));
        let s = json!({"config": {"original": "route:\n  resolve_timeout: 9s\n"}});
        assert_eq!(resolve_timeout(&s), None);
        assert_eq!(resolve_timeout(&json!({})), None);
    }
}
