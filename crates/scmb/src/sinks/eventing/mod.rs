//! Event sinks, whatever the system: every admitted alert is sent as a "trigger" event keyed by
//! a de-duplication key we choose, the key is written back into the alert's notes once, and the
//! alert's clear or deletion sends a "resolve" event with the same key. The remote side
//! de-duplicates by that key (PagerDuty's `dedup_key`, ServiceNow Event Management's
//! `message_key`), so sending an event again is harmless: unlike ticketing
//! ([`crate::sinks::ticketing`]), nothing is looked up before a repeat, and an answer that never
//! came is simply sent again. A system is an [`EventSystem`]: its key, where an alert's events
//! go, how a trigger and a resolve are sent, and what its note says. The steps, their records
//! and their retries are here, once.
//!
//! Each step is committed to the store (key `<store prefix>:<uri>`) before the next, with the
//! store's steps meaning: `Creating` (about to trigger, with the route), `Created` (the system
//! took the trigger; the note is not written yet), `Noted` (the note is in the alert's change
//! log: done), `Failed` (refused for good, with its reason), `Closed` (resolved because the
//! alert cleared). The record's `incident` is the key and its `reference` the route (e.g.
//! PagerDuty's routing-key setting), so that the resolve goes where the trigger went.
//!
//! A crash at any instant is safe: before the trigger's record, the next run reads the alert and
//! triggers again with the same key (the system adds it to what is open); before the note's
//! record, it reads the alert and writes the note only if it is not there. The note itself is
//! written only onto the alert as just read (its eTag), so a write whose answer was lost is
//! found by reading the alert again, never repeated.

use std::sync::Arc;
use std::time::Duration;

use scmb_model::{AlertView, ChangeType, Event, Filter, Peek};
use scmb_oneview::Session;
use serde_json::Value;
use tokio::sync::watch;

use crate::failure;
use crate::sinks::http::retry_delay;
use crate::sinks::oneview_retry::{NoteOnce, OvAttempt, OvRetry};
use crate::sinks::sink::{Outcome, SinkError};
use crate::sinks::ticketing::{CallClass, CallError};
use crate::store::{Record, Step, Store, StoreError};
use crate::telemetry::ApplianceMetrics;

/// A system that takes events keyed by a de-duplication key, as the [`Eventer`] uses it.
#[async_trait::async_trait]
pub trait EventSystem: Send + Sync {
    /// The sink's name in metrics and logs (`pagerduty`, `servicenow_event`).
    fn name(&self) -> &'static str;
    /// The system's name for people (`PagerDuty`).
    fn title(&self) -> &'static str;
    /// What to fix when the system refuses our credentials (said with the pause).
    fn credentials_hint(&self) -> &'static str;
    /// The prefix of this system's records in the store: `prefix:uri`.
    fn store_prefix(&self) -> &'static str;
    /// The de-duplication key of the alert at `uri`: the same every time, for every instance.
    fn key(&self, uri: &str) -> String;
    /// Where the events of an alert of `severity` go, recorded with it (`None` for a system
    /// with one destination); `Err(reason)` when none takes them (failed for good).
    fn route(&self, severity: Option<&str>) -> Result<Option<String>, String>;
    /// Where the resolve of an alert goes, given the route its trigger went to (`recorded`)
    /// and its severity now; `Err(reason)` when nowhere (failed for good). Default: where the
    /// trigger went.
    fn resolve_route(
        &self,
        recorded: Option<&str>,
        _severity: Option<&str>,
        _key: &str,
    ) -> Result<Option<String>, String> {
        Ok(recorded.map(str::to_string))
    }
    /// Sends the trigger of `alert` (as read over REST), keyed by `key`.
    async fn trigger(
        &self,
        route: Option<&str>,
        alert: &Value,
        uri: &str,
        key: &str,
    ) -> Result<(), CallError>;
    /// Sends the resolve of the alert `ev` cleared or deleted, keyed by `key`.
    async fn resolve(
        &self,
        route: Option<&str>,
        ev: &Event,
        uri: &str,
        key: &str,
    ) -> Result<(), CallError>;
    /// The note written into the alert once its trigger was taken.
    fn note_for(&self, key: &str) -> String;
    /// Whether the alert's change log holds our note for `key` (whatever the note's format
    /// was when it was written). Default: a note containing the key.
    fn noted(&self, alert: &Value, key: &str) -> bool {
        notes(alert).any(|n| n.contains(key))
    }
}

/// The notes of an alert's change log.
pub fn notes(alert: &Value) -> impl Iterator<Item = &str> {
    alert
        .get("changeLog")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("notes").and_then(Value::as_str))
}

/// Whether the alert's change log holds a note in which `key` stands as a word of its own
/// (brackets and trailing punctuation aside): for keys that may be the start of another
/// alert's key (`scmb:east:/rest/alerts/1` and `…/12`).
pub fn noted_as_word(alert: &Value, key: &str) -> bool {
    notes(alert).any(|n| {
        n.split_whitespace().any(|w| {
            w.trim_matches(|c: char| {
                matches!(c, '(' | ')' | '[' | ']' | '"' | '\'' | '.' | ',' | ';')
            }) == key
        })
    })
}

/// A failure that stops the appliance's pipeline (the store is unusable).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How sending an event ended.
enum Sent {
    Ok,
    /// Refused for good, with why.
    Permanent(String),
    Interrupted,
}

/// The work of an event sink for one message, over an [`EventSystem`].
pub struct Eventer {
    pub store: Store,
    pub system: Arc<dyn EventSystem>,
    pub ov: Arc<Session>,
    /// Send the resolve when an alert is cleared or deleted.
    pub resolve_on_clear: bool,
    pub filter: Filter,
    pub shutdown: watch::Receiver<bool>,
    /// Retry delays: first and cap (also the pause while credentials are refused).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub metrics: ApplianceMetrics,
}

impl Eventer {
    fn ov(&self) -> OvRetry<'_> {
        OvRetry {
            stop: &self.shutdown,
            metrics: &self.metrics,
            base: self.retry_base,
            cap: self.retry_cap,
        }
    }

    /// The store key of an alert.
    pub fn store_key(&self, uri: &str) -> String {
        format!("{}:{uri}", self.system.store_prefix())
    }

    /// Admitted alerts, and every clear or deletion when a clear resolves.
    pub fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        ev.is_alert()
            && (filter.admits_peek(ev)
                || (self.resolve_on_clear
                    && (ev.change_type == ChangeType::Deleted
                        || ev.new_state.as_deref() == Some("Cleared"))))
    }

    /// Sends an event until the system takes it, refuses it for good, or shutdown comes. A
    /// repeat is safe whatever happened to the one before: the key makes two triggers one,
    /// and a second resolve changes nothing.
    async fn send<F, Fut>(&self, what: &str, uri: &str, mut f: F) -> Sent
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), CallError>>,
    {
        let mut backoff = crate::retry::Backoff::new(self.retry_base, self.retry_cap);
        loop {
            let e = match f().await {
                Ok(()) => return Sent::Ok,
                Err(e) => e,
            };
            let after = match e.class {
                CallClass::Permanent => return Sent::Permanent(e.message),
                CallClass::Unauthorized => {
                    tracing::error!(alert = uri, sink = self.system.name(), error = %e.message, pause_secs = self.retry_cap.as_secs(), "{} (or a proxy before it) refused us while {what}: {}; pausing", self.system.title(), self.system.credentials_hint());
                    if !self.ov().pause(self.retry_cap).await {
                        return Sent::Interrupted;
                    }
                    continue;
                }
                CallClass::Retryable { after } => after,
            };
            let d = retry_delay(after, &mut backoff);
            if e.may_have_acted {
                tracing::debug!(
                    alert = uri,
                    sink = self.system.name(),
                    "{} may have taken the event: sending it again is safe (same key)",
                    self.system.title()
                );
            }
            self.metrics
                .retry(self.system.name(), what, backoff.attempt(), d, &e.message);
            if !self.ov().pause(d).await {
                return Sent::Interrupted;
            }
        }
    }

    async fn put(
        &self,
        uri: &str,
        step: Step,
        key: &str,
        route: Option<&str>,
    ) -> Result<(), EventError> {
        let mut rec = Record::new(Some(key.to_string()), step);
        rec.reference = route.map(str::to_string);
        Ok(self.store.put_async(&self.store_key(uri), &rec).await?)
    }

    /// Records a refusal for good, logs and counts it.
    async fn fail(
        &self,
        uri: &str,
        key: &str,
        route: Option<&str>,
        reason: String,
    ) -> Result<Outcome, EventError> {
        self.metrics
            .sink_incident_failed(self.system.name(), uri, &reason);
        let mut rec = Record::new(Some(key.to_string()), Step::Failed);
        rec.reference = route.map(str::to_string);
        rec.reason = Some(reason.clone());
        self.store.put_async(&self.store_key(uri), &rec).await?;
        Ok(Outcome::Failed(reason))
    }

    /// Handles one decoded event. Returns when the delivery may be acked (or must be left).
    pub async fn process(&self, ev: &Event) -> Result<Outcome, EventError> {
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
                    "cleared; not resolved (resolving is off)".into(),
                ));
            }
            return self.resolve(ev, uri).await;
        }
        if !self.filter.admits(ev) {
            return Ok(Outcome::Done("filtered out".into()));
        }
        self.trigger(uri).await
    }

    async fn trigger(&self, uri: &str) -> Result<Outcome, EventError> {
        let existing = self.store.get(&self.store_key(uri))?;
        match &existing {
            Some(r) if matches!(r.step, Step::Noted | Step::Failed | Step::Closed) => {
                return Ok(Outcome::Done(format!("already handled ({:?})", r.step)));
            }
            Some(r) if r.step == Step::Created => {
                let key = r.incident.clone().unwrap_or_else(|| self.system.key(uri));
                return self.note(uri, &key, r.reference.as_deref(), None).await;
            }
            _ => {}
        }
        let alert = match self
            .ov()
            .run("reading the alert", || self.ov.alert(uri))
            .await
        {
            OvAttempt::Ok(Some(a)) => a,
            OvAttempt::Ok(None) => return Ok(Outcome::Done("alert gone".into())),
            OvAttempt::Permanent(e) => {
                tracing::error!(alert = uri, sink = self.system.name(), error = %e, "cannot read the alert; not sent");
                return Ok(Outcome::Done(format!("alert unreadable: {e}")));
            }
            OvAttempt::Interrupted => return Ok(Outcome::Interrupted),
        };
        let key = self.system.key(uri);
        let route = self.system.route(AlertView(&alert).severity());
        if self.system.noted(&alert, &key) {
            self.metrics.sink_incident_deduplicated(
                self.system.name(),
                uri,
                &key,
                "its notes carry its key",
            );
            let recorded = existing
                .and_then(|r| r.reference)
                .or_else(|| route.ok().flatten());
            self.put(uri, Step::Noted, &key, recorded.as_deref())
                .await?;
            return Ok(Outcome::Done("already sent".into()));
        }
        if AlertView(&alert).alert_state() == Some("Cleared") {
            return Ok(Outcome::Done("alert already cleared".into()));
        }
        let route = match route {
            Ok(r) => r,
            Err(reason) => return self.fail(uri, &key, None, reason).await,
        };
        if existing.as_ref().map(|r| &r.step) != Some(&Step::Creating) {
            self.put(uri, Step::Creating, &key, route.as_deref())
                .await?;
        }
        let what = format!("sending the {} trigger", self.system.title());
        match self
            .send(&what, uri, || {
                self.system.trigger(route.as_deref(), &alert, uri, &key)
            })
            .await
        {
            Sent::Ok => {}
            Sent::Permanent(reason) => return self.fail(uri, &key, route.as_deref(), reason).await,
            Sent::Interrupted => return Ok(Outcome::Interrupted),
        }
        self.put(uri, Step::Created, &key, route.as_deref()).await?;
        self.metrics
            .sink_incident_created(self.system.name(), uri, &key);
        self.note(uri, &key, route.as_deref(), Some(alert)).await
    }

    /// Writes the note once: onto the alert as just read (its eTag), and only when its change
    /// log does not hold it already. `alert`: as read just before, when it was.
    async fn note(
        &self,
        uri: &str,
        key: &str,
        route: Option<&str>,
        mut alert: Option<Value>,
    ) -> Result<Outcome, EventError> {
        let text = self.system.note_for(key);
        let written = match self
            .ov()
            .note_once(
                &self.ov,
                uri,
                &text,
                |a| self.system.noted(a, key),
                alert.take(),
            )
            .await
        {
            NoteOnce::Written(_) => {
                tracing::info!(
                    alert = uri,
                    sink = self.system.name(),
                    key,
                    "note written to the alert"
                );
                "sent; note written"
            }
            NoteOnce::There(_) => "sent; the note was already there",
            NoteOnce::Gone => "sent; the alert is gone, no note",
            NoteOnce::Refused(e) => {
                tracing::warn!(alert = uri, sink = self.system.name(), error = %e, "could not write the note into the alert; sent without it");
                "sent; note not written"
            }
            NoteOnce::Interrupted => return Ok(Outcome::Interrupted),
        };
        self.put(uri, Step::Noted, key, route).await?;
        Ok(Outcome::Done(written.into()))
    }

    async fn resolve(&self, ev: &Event, uri: &str) -> Result<Outcome, EventError> {
        let Some(rec) = self.store.get(&self.store_key(uri))? else {
            return Ok(Outcome::Done("cleared, never sent".into()));
        };
        if matches!(rec.step, Step::Failed | Step::Closed) {
            return Ok(Outcome::Done(format!(
                "cleared; nothing to resolve ({:?})",
                rec.step
            )));
        }
        let key = rec.incident.clone().unwrap_or_else(|| self.system.key(uri));
        let route = match self.system.resolve_route(
            rec.reference.as_deref(),
            AlertView(ev.resource()).severity(),
            &key,
        ) {
            Ok(r) => r,
            Err(reason) => return self.fail(uri, &key, rec.reference.as_deref(), reason).await,
        };
        let how = if ev.change_type == ChangeType::Deleted {
            "deleted"
        } else {
            "cleared"
        };
        let what = format!("sending the {} resolve", self.system.title());
        match self
            .send(&what, uri, || {
                self.system.resolve(route.as_deref(), ev, uri, &key)
            })
            .await
        {
            Sent::Ok => {}
            Sent::Permanent(reason) => {
                return self
                    .fail(
                        uri,
                        &key,
                        route.as_deref(),
                        format!("resolve refused: {reason}"),
                    )
                    .await
            }
            Sent::Interrupted => return Ok(Outcome::Interrupted),
        }
        self.put(uri, Step::Closed, &key, route.as_deref()).await?;
        self.metrics.sink_incident_resolved(
            self.system.name(),
            uri,
            &key,
            &format!("resolved ({how})"),
        );
        Ok(Outcome::Done(format!("resolved ({how})")))
    }

    /// The alerts whose event may be open (triggered or about to be, not resolved), when a
    /// clear resolves it.
    /// [`Eventer::process`] for the sink: a failure stops the appliance's pipeline.
    pub async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        self.process(ev).await.map_err(|e| self.fatal(e))
    }

    /// [`Eventer::open_alerts`] for the sink.
    pub async fn sink_open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.open_alerts().await.map_err(|e| self.fatal(e))
    }

    fn fatal(&self, e: EventError) -> SinkError {
        SinkError::new(self.system.name(), failure::UNEXPECTED, e.to_string())
    }

    pub async fn open_alerts(&self) -> Result<Vec<String>, EventError> {
        if !self.resolve_on_clear {
            return Ok(Vec::new());
        }
        let prefix = format!("{}:", self.system.store_prefix());
        let all = self.store.call(|s| s.all()).await?;
        Ok(all
            .into_iter()
            .filter(|(_, r)| matches!(r.step, Step::Creating | Step::Created | Step::Noted))
            .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_noted_as_a_word_is_not_the_start_of_another() {
        let a = json!({"changeLog": [{"notes": "hello"},
            {"notes": "Event sent to ServiceNow Event Management with message key scmb:east:/rest/alerts/12"},
            {"notes": "(key scmb:west:/rest/alerts/7)."}]});
        assert!(noted_as_word(&a, "scmb:east:/rest/alerts/12"));
        assert!(!noted_as_word(&a, "scmb:east:/rest/alerts/1"));
        assert!(noted_as_word(&a, "scmb:west:/rest/alerts/7"));
        assert!(!noted_as_word(&json!({"changeLog": null}), "k"));
        assert!(!noted_as_word(&json!({}), "k"));
    }
}
