//! The syslog sink (`[appliance.syslog]`): every admitted event (and, with `lifecycle = true`,
//! the clears and deletions of the alerts the filter admits) sent to a syslog receiver as an
//! RFC 5424 message, over UDP (RFC 5426), TCP with octet counting (RFC 6587) or TLS
//! (RFC 5425). The table is [`config`], the transports [`client`].
//!
//! A message: `<PRI>1 TIMESTAMP HOSTNAME scmb PROCID MSGID [SD-ID k="v" ...] MSG`, where
//! PRI is the facility × 8 + the severity mapped from OneView's (Critical → crit, Warning →
//! warning, OK → notice, anything else → info, a clear or deletion → notice; overridable),
//! TIMESTAMP the event's own (RFC 3339, UTC, milliseconds; the time of sending when the
//! message has none), HOSTNAME the appliance's name, MSGID the change type (`Created`,
//! `Updated`, `Deleted`), the structured data the alert's fields (values escaped as RFC 5424
//! says: `"`, `\` and `]` get a backslash) and MSG its description. See [`message`].
//!
//! The delivery stays unacked until the sink accepted the event: for TCP and TLS, written and
//! flushed on a connection checked healthy just before (a receiver that closed it is noticed
//! and the sink reconnects); for UDP, handed to the network. Refused or broken connections,
//! timeouts and TLS failures are retried with a capped backoff (`retry_cap`) while the
//! delivery stays unacked; a stop ends any wait at once (the event comes again). TCP has no
//! acknowledgement of its own: a message written in the instant the receiver dies can still
//! be lost, as with every RFC 6587 sender; UDP may lose messages anywhere.
//!
//! Metrics: `scmb_sink_events_delivered_total{sink="syslog"}`, `scmb_retries_total
//! {target="syslog"}`, `scmb_sink_incidents_failed_total{sink="syslog"}` (an event that
//! cannot be sent at all, e.g. larger than a datagram). It keeps no state of its own: what it
//! sent is recorded as the printers' is (a catch-up does not send an alert, as it is now,
//! again).

mod client;
mod config;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{Conn, SendError, SyslogClient};
pub use config::{split_address, valid_sd_id, FacilityValue, SyslogConfig};

use scmb_model::{AlertView, ChangeType, Event, Filter, Peek};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::sinks::lifecycle::Lifecycle;
use crate::sinks::oneview_retry::pause;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::SinkContext;
use crate::telemetry::ApplianceMetrics;

/// The sink's name: its config table, its metrics label.
pub const NAME: &str = "syslog";

/// APP-NAME of every message.
pub const APP_NAME: &str = "scmb";

/// The default SD-ID: RFC 5612's documentation number; operators set their own PEN.
pub const DEFAULT_SD_ID: &str = "scmb@32473";

/// The facilities by number (RFC 5424 table 1, with the common names).
pub const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// `local0`.
pub const DEFAULT_FACILITY: u8 = 16;

/// How messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    #[default]
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The IANA port: 6514 for syslog over TLS, 514 otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 6514,
            _ => 514,
        }
    }
}

/// A syslog severity (RFC 5424 table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Emerg = 0,
    Alert = 1,
    Crit = 2,
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "emerg" | "emergency" => Severity::Emerg,
            "alert" => Severity::Alert,
            "crit" | "critical" => Severity::Crit,
            "err" | "error" => Severity::Err,
            "warning" | "warn" => Severity::Warning,
            "notice" => Severity::Notice,
            "info" | "informational" => Severity::Info,
            "debug" => Severity::Debug,
            _ => return None,
        })
    }
}

/// What the sink needs, from an `[appliance.syslog]` table.
#[derive(Debug, Clone)]
pub struct SyslogSettings {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// The facility's number (0 to 23).
    pub facility: u8,
    pub sd_id: String,
    /// OneView severity (and `Cleared`) → syslog severity.
    pub severities: BTreeMap<String, Severity>,
    /// Also send the clears and deletions of admitted alerts.
    pub lifecycle: bool,
    /// TLS: the CA file; none: the system's CA certificates.
    pub ca: Option<PathBuf>,
    /// TLS: the name the certificate must carry, when not `host`.
    pub server_name: Option<String>,
    /// TLS: the client certificate and key files.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Longest connect (handshake included) or write.
    pub timeout: Duration,
    /// Longest pause between retries.
    pub retry_cap: Duration,
    /// The appliance's name: HOSTNAME.
    pub appliance: String,
}

/// `s` as an SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 6.3.3).
pub fn escape_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 TIMESTAMP: the event's `timestamp` when it is RFC 3339, else `now`; UTC,
/// milliseconds.
fn timestamp(ev: &Event, now: time::OffsetDateTime) -> String {
    let t = ev
        .body()
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or(now);
    scmb_model::message::format_rfc3339_ms(t)
}

/// Whether the event is an alert's clear or deletion.
fn is_clear(ev: &Event) -> bool {
    ev.change_type == ChangeType::Deleted
        || ev.body().get("newState").and_then(Value::as_str) == Some("Cleared")
        || AlertView(ev.resource()).alert_state() == Some("Cleared")
}

/// The syslog severity of an event.
pub fn severity_of(s: &SyslogSettings, ev: &Event) -> Severity {
    let key = if ev.is_alert() && is_clear(ev) {
        "Cleared"
    } else {
        AlertView(ev.resource()).severity().unwrap_or("Unknown")
    };
    s.severities
        .get(key)
        .or_else(|| s.severities.get("Unknown"))
        .copied()
        .unwrap_or(Severity::Info)
}

/// `s` as a header field: printable US-ASCII, at most `max` characters, `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// The RFC 5424 message of `ev` (without framing), stamped `now` when the event has no time.
pub fn message(s: &SyslogSettings, ev: &Event, now: time::OffsetDateTime) -> String {
    let pri = u16::from(s.facility) * 8 + severity_of(s, ev) as u16;
    let body = ev.body();
    let r = ev.resource();
    let a = AlertView(r);
    let mut params: Vec<(&str, String)> = vec![("appliance", s.appliance.clone())];
    let mut param = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            params.push((k, v.to_string()));
        }
    };
    param("uri", Some(&ev.resource_uri));
    param("changeType", Some(ev.change_type.as_str()));
    param("category", Some(&ev.category));
    param("newState", body.get("newState").and_then(Value::as_str));
    param("eTag", ev.etag());
    let text = if ev.is_alert() {
        param("severity", a.severity());
        param("alertState", a.alert_state());
        param("alertTypeID", a.alert_type_id());
        param("healthCategory", a.health_category());
        param("resourceName", a.resource_name());
        param("resourceCategory", a.resource_category());
        param(
            "resourceUri",
            r.get("associatedResource")
                .and_then(|x| x.get("resourceUri"))
                .and_then(Value::as_str),
        );
        param("created", r.get("created").and_then(Value::as_str));
        param("correctiveAction", a.corrective_action());
        a.description()
            .filter(|d| !d.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("OneView alert {}", ev.resource_uri))
    } else {
        param("name", r.get("name").and_then(Value::as_str));
        param("status", r.get("status").and_then(Value::as_str));
        format!(
            "OneView {} {} {}",
            ev.category,
            ev.change_type.as_str(),
            ev.resource_uri
        )
    };
    let mut out = String::with_capacity(256 + text.len());
    let _ = write!(
        out,
        "<{pri}>1 {} {} {APP_NAME} {} {} [{}",
        timestamp(ev, now),
        header_field(&s.appliance, 255),
        std::process::id(),
        header_field(ev.change_type.as_str(), 32),
        s.sd_id
    );
    for (k, v) in &params {
        let _ = write!(out, " {k}=\"{}\"", escape_param(v));
    }
    out.push_str("] ");
    // MSG: plain ASCII as it is; UTF-8 text starts with the BOM, as RFC 5424 wants.
    if !text.is_ascii() {
        out.push('\u{feff}');
    }
    out.push_str(&text);
    out
}

pub struct Syslog {
    s: SyslogSettings,
    client: SyslogClient,
    metrics: ApplianceMetrics,
    stop: watch::Receiver<bool>,
    retry_base: Duration,
    /// With `lifecycle`: the clears and deletions wanted, and what is owed.
    lifecycle: Lifecycle,
}

fn build_client(s: &SyslogSettings) -> Result<SyslogClient, SinkError> {
    SyslogClient::new(s).map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))
}

impl Syslog {
    pub fn new(s: &SyslogSettings, ctx: &SinkContext) -> Result<Syslog, SinkError> {
        Ok(Syslog {
            s: s.clone(),
            client: build_client(s)?,
            metrics: ctx.metrics.clone(),
            stop: ctx.stop.clone(),
            retry_base: Duration::from_millis(250),
            lifecycle: Lifecycle::new(s.lifecycle, NAME, ctx),
        })
    }
}

#[async_trait::async_trait]
impl Sink for Syslog {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Admitted events; with `lifecycle`, also the clears and deletions of the alerts the
    /// filter admits (see [`Lifecycle::wants`]).
    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        self.lifecycle.wants(filter, ev)
    }

    /// With `lifecycle`: the alerts announced whose clear or deletion was not sent yet, read
    /// over REST after each (re)connect so that an end missed while stopped is sent.
    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.lifecycle.open_alerts().await
    }

    /// Recorded as the printers' work is: a catch-up does not send an alert, as it is now,
    /// a second time.
    fn prints(&self) -> bool {
        true
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        let uri = ev.resource_uri.as_str();
        let msg = message(&self.s, ev, time::OffsetDateTime::now_utc());
        let mut backoff = crate::retry::Backoff::new(self.retry_base, self.s.retry_cap);
        loop {
            if *self.stop.borrow() {
                return Ok(Outcome::Interrupted);
            }
            let mut stop = self.stop.clone();
            let sent = tokio::select! {
                r = self.client.send(msg.as_bytes()) => r,
                _ = stop.wait_for(|s| *s) => return Ok(Outcome::Interrupted),
            };
            let e = match sent {
                Ok(()) => {
                    self.metrics
                        .sink_event_forwarded(NAME, uri, self.client.target());
                    self.lifecycle.delivered(ev).await?;
                    return Ok(Outcome::Done(format!("sent to {}", self.client.target())));
                }
                Err(e) => e,
            };
            if e.is_permanent() {
                let reason = e.to_string();
                self.metrics.sink_incident_failed(NAME, uri, &reason);
                return Ok(Outcome::Failed(reason));
            }
            let d = backoff.next_delay();
            self.metrics.retry(
                NAME,
                "sending to syslog",
                backoff.attempt(),
                d,
                &e.to_string(),
            );
            if !pause(&self.stop, d).await {
                return Ok(Outcome::Interrupted);
            }
        }
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        self.client
            .probe()
            .await
            .map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))
    }
}

/// The health check of the syslog sink for `scmb check`: a connection (and TLS handshake)
/// for TCP and TLS, nothing sent; for UDP, only that the address resolves and a socket opens.
pub async fn probe(s: &SyslogSettings) -> Result<String, SinkError> {
    build_client(s)?
        .probe()
        .await
        .map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scmb_model::message::decode;

    fn settings() -> SyslogSettings {
        SyslogConfig {
            address: "127.0.0.1:514".into(),
            transport: Transport::Tcp,
            facility: None,
            sd_id: None,
            severities: BTreeMap::new(),
            lifecycle: false,
            ca: None,
            server_name: None,
            client_cert: None,
            client_key: None,
            timeout: None,
            retry_cap: None,
        }
        .settings("ov-east")
        .expect("settings")
    }

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::parse(
            "2026-01-02T03:04:05.678Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("now")
    }

    #[test]
    fn param_values_escape_quote_backslash_and_bracket() {
        assert_eq!(escape_param(r#"a"b\c]d[e"#), r#"a\"b\\c\]d[e"#);
        assert_eq!(escape_param("plain"), "plain");
    }

    #[test]
    fn an_alert_becomes_an_rfc_5424_message_with_its_fields_as_structured_data() {
        let body = br#"{"resourceUri":"/rest/alerts/7","changeType":"Created","eTag":"e1","timestamp":"2026-11-25T10:00:00.123+01:00",
            "resource":{"uri":"/rest/alerts/7","severity":"Critical","alertState":"Active","alertTypeID":"Trap.psu",
            "description":"PSU \"4\" [bay] failed\\now","associatedResource":{"resourceName":"Encl1","resourceCategory":"enclosures"}}}"#;
        let e = decode("scmb.alerts.Created./rest/alerts/7", body, 1 << 20).expect("decode");
        let m = message(&settings(), &e, now());
        let pid = std::process::id();
        assert_eq!(
            m,
            format!(
                "<130>1 2026-11-25T09:00:00.123Z ov-east scmb {pid} Created [scmb@32473 appliance=\"ov-east\" uri=\"/rest/alerts/7\" changeType=\"Created\" category=\"alerts\" eTag=\"e1\" severity=\"Critical\" alertState=\"Active\" alertTypeID=\"Trap.psu\" resourceName=\"Encl1\" resourceCategory=\"enclosures\"] PSU \"4\" [bay] failed\\now"
            )
        );
        // A clear: notice; no time in the message: now; UTF-8 text: the BOM first.
        let body = r#"{"resourceUri":"/rest/alerts/7","changeType":"Updated","newState":"Cleared",
            "resource":{"severity":"Critical","alertState":"Cleared","description":"Température]"}}"#;
        let e = decode(
            "scmb.alerts.Updated./rest/alerts/7",
            body.as_bytes(),
            1 << 20,
        )
        .expect("decode");
        let m = message(&settings(), &e, now());
        assert!(
            m.starts_with("<133>1 2026-01-02T03:04:05.678Z ov-east scmb "),
            "{m}"
        );
        assert!(m.contains(" Updated [scmb@32473 "), "{m}");
        assert!(m.ends_with("] \u{feff}Température]"), "{m}");
    }

    #[test]
    fn severities_map_as_documented_and_as_overridden() {
        let sev = |s: &SyslogSettings, v: &str| {
            let body = format!(
                r#"{{"resourceUri":"/rest/alerts/1","changeType":"Created","resource":{{"severity":"{v}","alertState":"Active"}}}}"#
            );
            let e = decode(
                "scmb.alerts.Created./rest/alerts/1",
                body.as_bytes(),
                1 << 20,
            )
            .expect("decode");
            severity_of(s, &e)
        };
        let mut s = settings();
        assert_eq!(sev(&s, "Critical"), Severity::Crit);
        assert_eq!(sev(&s, "Warning"), Severity::Warning);
        assert_eq!(sev(&s, "OK"), Severity::Notice);
        assert_eq!(sev(&s, "Disabled"), Severity::Info);
        s.severities.insert("Critical".into(), Severity::Err);
        assert_eq!(sev(&s, "Critical"), Severity::Err);
    }
}
