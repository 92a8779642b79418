//! The PagerDuty sink: every admitted alert triggers one PagerDuty incident through the Events
//! API v2, its dedup key is written back into the alert's notes once, and the alert's clear or
//! deletion resolves the incident. The work for one event, step by step and recorded, is the
//! shared event core ([`crate::sinks::eventing`]); what is PagerDuty's (the dedup key, the
//! events, the routing keys, the note) is in [`page`]; the Events API client is [`client`]; the
//! `[appliance.pagerduty]` table is [`config`]. HTTP (TLS, proxies, timeouts, the retry classification) is the shared
//! [`crate::sinks::http`].
//!
//! Exactly once rests on the same three things as the Service Manager sink's: the store
//! (`pagerduty:` + alert uri → step), written before each next step; the dedup key, one per
//! alert and stable (a SHA-256 of the appliance's name and the alert's uri), which makes a
//! trigger sent twice one incident; and the note in the alert's change log, looked for before
//! triggering (a wiped store or a second instance pages nothing twice) and before writing it
//! (an interrupted write is never repeated).

mod client;
mod config;
mod page;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use client::{Accepted, EventsClient, PdError, DEFAULT_URL};
pub use config::{PagerDutyConfig, RoutingKeyConfig};
pub use page::{dedup_key, note_for, pd_severity, summary, truncate_chars, SUMMARY_MAX};

use scmb_model::{Event, Filter, Peek};
use scmb_oneview::Secret;

use crate::failure;
use crate::sinks::eventing::Eventer;
use crate::sinks::http::HttpSettings;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::SinkContext;
use crate::store::{Step, Store, StoreError};

/// The sink's name: its config table, its metrics label, its store keys' prefix.
pub const NAME: &str = "pagerduty";

/// Every store key of this sink starts with it: `pagerduty:/rest/alerts/123`. Keys of other
/// sinks (Service Manager's are bare uris) are never read as ours, nor ours as theirs.
pub const KEY_PREFIX: &str = "pagerduty:";

/// The store key of an alert.
pub fn store_key(uri: &str) -> String {
    format!("{KEY_PREFIX}{uri}")
}

/// The default note; `{dedup_key}` is replaced.
pub const DEFAULT_NOTE: &str = "Paged on PagerDuty (dedup key {dedup_key})";

/// The default link from an event back to its alert: the appliance's Activity view of it.
pub const DEFAULT_ALERT_LINK: &str = "https://{address}/#/activity/r{uri}";

/// The default `client` of an event.
pub const DEFAULT_CLIENT: &str = "HPE OneView ({appliance})";

/// The default `client_url` of an event: the appliance's web UI.
pub const DEFAULT_CLIENT_URL: &str = "https://{address}/";

/// The severities of PagerDuty's Events API.
pub const PD_SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// OneView severity → PagerDuty severity when `severities` does not say otherwise; any other
/// severity becomes `info`.
pub const DEFAULT_SEVERITIES: [(&str, &str); 5] = [
    ("Critical", "critical"),
    ("Warning", "warning"),
    ("OK", "info"),
    ("Unknown", "info"),
    ("Disabled", "info"),
];

/// The setting of the key every alert goes to unless `routing_keys` names its severity.
pub const DEFAULT_SLOT: &str = "routing_key";

/// The integration keys, read: one for every alert, and per OneView severity. `Debug` shows
/// which there are, never a key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingKeys {
    pub default: Option<Secret>,
    /// By OneView severity, spelled as OneView does (`Critical`).
    pub by_severity: BTreeMap<String, Secret>,
}

impl RoutingKeys {
    /// The key for an alert of `severity`, and its setting (`routing_keys.Critical` or
    /// `routing_key`): recorded, so that the resolve goes where the trigger went.
    pub fn route(&self, severity: Option<&str>) -> Option<(String, &Secret)> {
        severity
            .and_then(|s| {
                self.by_severity
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(s))
            })
            .map(|(k, v)| (format!("routing_keys.{k}"), v))
            .or_else(|| self.default.as_ref().map(|k| (DEFAULT_SLOT.to_string(), k)))
    }

    /// The key of a setting named by [`RoutingKeys::route`].
    pub fn slot(&self, slot: &str) -> Option<&Secret> {
        if slot == DEFAULT_SLOT {
            return self.default.as_ref();
        }
        let sev = slot.strip_prefix("routing_keys.")?;
        self.by_severity.get(sev)
    }

    /// Every key with its setting.
    pub fn all(&self) -> Vec<(String, &Secret)> {
        let mut v: Vec<(String, &Secret)> = self
            .default
            .iter()
            .map(|k| (DEFAULT_SLOT.to_string(), k))
            .collect();
        v.extend(
            self.by_severity
                .iter()
                .map(|(s, k)| (format!("routing_keys.{s}"), k)),
        );
        v
    }
}

/// Whether a routing key has the form of a PagerDuty integration key: 32 letters and digits.
pub fn well_formed(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// What the events say besides the alert.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// The appliance's name: `group`, part of the dedup key, `{appliance}`.
    pub appliance: String,
    /// The appliance's address (`{address}`).
    pub address: String,
    /// OneView severity → PagerDuty severity (the defaults with the table's entries over them).
    pub severities: Vec<(String, String)>,
    /// The link back to the alert (`{address}`, `{uri}`, `{appliance}` replaced); none: no link.
    pub alert_link: Option<String>,
    pub client: String,
    pub client_url: Option<String>,
}

/// What the sink needs, from an `[appliance.pagerduty]` table.
#[derive(Debug, Clone)]
pub struct PagerDutySettings {
    /// The Events API's base URL (events go to `URL/v2/enqueue`).
    pub url: String,
    pub http: HttpSettings,
    pub keys: RoutingKeys,
    pub event: EventSettings,
    /// The note written into a paged alert; contains `{dedup_key}`.
    pub note: String,
    /// Resolve the incident when its alert is cleared or deleted.
    pub resolve_on_clear: bool,
    /// Longest pause between retries of a failing call.
    pub retry_cap: Duration,
}

pub struct PagerDuty {
    events: Eventer,
    /// The Events API client and the routing keys, for the health check.
    client: EventsClient,
    keys: RoutingKeys,
}

impl PagerDuty {
    pub fn new(s: &PagerDutySettings, ctx: &SinkContext) -> Result<PagerDuty, SinkError> {
        let client = EventsClient::new(s)
            .map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))?;
        let (Some(store), Some(ov)) = (ctx.store.clone(), ctx.session.clone()) else {
            return Err(SinkError::new(
                NAME,
                failure::UNEXPECTED,
                "paging needs the state store and a REST session",
            ));
        };
        Ok(PagerDuty {
            events: Eventer {
                store,
                system: Arc::new(page::PdSystem {
                    client: client.clone(),
                    keys: s.keys.clone(),
                    event: s.event.clone(),
                    note: s.note.clone(),
                }),
                ov,
                resolve_on_clear: s.resolve_on_clear,
                filter: ctx.filter.clone(),
                shutdown: ctx.stop.clone(),
                retry_base: Duration::from_millis(250),
                retry_cap: s.retry_cap,
                metrics: ctx.metrics.clone(),
            },
            client,
            keys: s.keys.clone(),
        })
    }
}

/// Checks what can be checked without paging anyone: the routing keys' form (32 letters and
/// digits), and that the Events API answers over the configured proxy and TLS (a `GET` of
/// its base URL, which creates nothing). The line says what was verified and what was not.
pub async fn probe(s: &PagerDutySettings) -> Result<String, SinkError> {
    let client =
        EventsClient::new(s).map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))?;
    probe_with(&client, &s.keys).await
}

async fn probe_with(client: &EventsClient, keys: &RoutingKeys) -> Result<String, SinkError> {
    let all = keys.all();
    if let Some((slot, _)) = all.iter().find(|(_, k)| !well_formed(k.expose())) {
        return Err(SinkError::new(
            NAME,
            failure::USAGE,
            format!("pagerduty.{slot}: not a PagerDuty integration key (32 letters and digits)"),
        ));
    }
    let status = client
        .probe()
        .await
        .map_err(|e| SinkError::new(NAME, e.failure_code(), e.to_string()))?;
    let slots: Vec<String> = all.iter().map(|(s, _)| s.clone()).collect();
    Ok(format!(
        "{} answered (HTTP {status}, {}); routing keys well-formed (32 letters and digits): {}; not verified: that PagerDuty accepts them (the Events API has no read call, and a test event would page someone)",
        client.http().base_url(),
        client.http().trust(),
        slots.join(", ")
    ))
}

/// What the store says about this sink's work, for `scmb check`: `(fine, line)`. The store
/// is only read, and only when it exists; while `scmb run` holds it, that is said instead.
pub fn recorded_failures(path: Option<&Path>) -> (bool, String) {
    let Some(path) = path.filter(|p| p.exists()) else {
        return (true, "no state store yet: nothing paged from here".into());
    };
    let store = match Store::open(path) {
        Ok(s) => s,
        Err(StoreError::Locked { .. }) => {
            return (
                true,
                "the state store is in use by the running service: refusals are in its log and in scmb_sink_incidents_failed_total{sink=\"pagerduty\"}".into(),
            )
        }
        Err(e) => return (false, e.to_string()),
    };
    let all = match store.all() {
        Ok(a) => a,
        Err(e) => return (false, e.to_string()),
    };
    let ours: Vec<_> = all
        .into_iter()
        .filter_map(|(k, r)| Some((k.strip_prefix(KEY_PREFIX)?.to_string(), r)))
        .collect();
    let mut failed: Vec<_> = ours
        .iter()
        .filter(|(_, r)| r.step == Step::Failed)
        .collect();
    if failed.is_empty() {
        return (
            true,
            format!(
                "{} alert(s) in the store, none refused by PagerDuty",
                ours.len()
            ),
        );
    }
    failed.sort_by(|a, b| a.1.updated.cmp(&b.1.updated));
    let (uri, last) = failed[failed.len() - 1];
    (
        false,
        format!(
            "{} alert(s) refused by PagerDuty for good (not retried); the last, {uri} at {}: {}",
            failed.len(),
            last.updated,
            last.reason.as_deref().unwrap_or("no reason recorded")
        ),
    )
}

#[async_trait::async_trait]
impl Sink for PagerDuty {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Admitted alerts, and every clear or deletion when incidents are resolved on clear.
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
        probe_with(&self.client, &self.keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> Secret {
        Secret::new(std::iter::repeat_n(c, 32).collect::<String>())
    }

    #[test]
    fn routing_picks_the_severitys_key_else_the_default_and_remembers_which() {
        let keys = RoutingKeys {
            default: Some(key('a')),
            by_severity: [("Critical".to_string(), key('c'))].into_iter().collect(),
        };
        let (slot, k) = keys.route(Some("critical")).expect("critical");
        assert_eq!((slot.as_str(), k), ("routing_keys.Critical", &key('c')));
        assert_eq!(keys.slot(&slot), Some(&key('c')));
        let (slot, k) = keys.route(Some("Warning")).expect("warning");
        assert_eq!((slot.as_str(), k), ("routing_key", &key('a')));
        assert_eq!(keys.route(None).map(|r| r.0), Some("routing_key".into()));
        assert_eq!(keys.slot("routing_keys.OK"), None);
        let only = RoutingKeys {
            default: None,
            by_severity: [("Critical".to_string(), key('c'))].into_iter().collect(),
        };
        assert!(only.route(Some("Warning")).is_none());
        assert_eq!(format!("{keys:?}").matches("***").count(), 2, "{keys:?}");
        assert!(!format!("{keys:?}").contains("aaaa"));
    }

    #[test]
    fn routing_keys_must_look_like_integration_keys() {
        assert!(well_formed("0123456789abcdefABCDEF0123456789"));
        assert!(!well_formed("0123456789abcdefABCDEF012345678"));
        assert!(!well_formed("0123456789abcdefABCDEF01234567890"));
        assert!(!well_formed("0123456789abcdef-BCDEF0123456789"));
        assert!(!well_formed(""));
    }
}
