//! Ticketing: every admitted alert becomes exactly one Service Manager incident, whose id is
//! written back into the alert's notes; cleared or deleted alerts update or close their incident.
//!
//! Exactly-once rests on three things: the durable [`Store`] (alert uri → incident, step),
//! consulted before any work and written after each step; the alert's own change log, searched
//! for a note carrying an incident id before creating one (a wiped store or a second instance
//! does not duplicate); and acking the delivery only once the work is recorded. A crash at any
//! instant leaves an unacked message and a recorded step, and the redelivery finishes the work.

use std::sync::Arc;
use std::time::Duration;

use scmb_model::{AlertView, ChangeType, Event, Filter};
use scmb_oneview::{OneViewError, Session};
use scmb_servicemanager::{ErrorClass, SmClient, SmError};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::store::{Record, Step, Store, StoreError};
use crate::telemetry::ApplianceMetrics;

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

/// How long a claim holds without its incident: after that (by the appliance's clock) the
/// instance that made it is taken for gone and another may claim the alert.
const CLAIM_TTL: time::Duration = time::Duration::minutes(5);

/// How often an instance that lost the claim reads the alert again for the incident.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// The reference and time (the appliance's) of the newest claim in an alert's change log.
fn latest_claim(alert: &Value) -> Option<(String, Option<String>)> {
    alert
        .get("changeLog")?
        .as_array()?
        .iter()
        .rev()
        .find_map(|e| {
            let r = e.get("notes")?.as_str()?.strip_prefix(CLAIM_PREFIX)?;
            let at = e.get("created").and_then(Value::as_str).map(str::to_string);
            Some((r.trim().to_string(), at))
        })
}

/// How claiming an alert went.
enum Claim {
    /// Ours (now or before): go on, with the alert's eTag after the claim.
    Ours(Option<String>),
    /// Another instance's, still valid: it creates the incident.
    Theirs,
    /// The alert changed between our read and our claim: read it again.
    Changed,
    Interrupted,
}

/// Whether a note is one of ours or the sample's (not someone else's to journal).
pub fn is_ticket_note(note: &str) -> bool {
    NOTE_PREFIXES.iter().any(|p| note.starts_with(p))
}

/// The incident id in a note of ours or the sample's: the word after the prefix, without
/// trailing punctuation.
fn incident_in_note(note: &str) -> Option<String> {
    NOTE_PREFIXES.iter().find_map(|p| {
        let at = note.find(p)?;
        let id = note[at + p.len()..]
            .split_whitespace()
            .next()?
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        (!id.is_empty()).then(|| id.to_string())
    })
}

/// The incident ids of every ticket note in the alert's change log.
fn incidents_in_change_log(alert: &Value) -> Vec<String> {
    alert
        .get("changeLog")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("notes").and_then(Value::as_str))
        .filter_map(incident_in_note)
        .collect()
}

/// The incident id of a note already in the alert's change log, if any.
pub fn incident_in_change_log(alert: &Value) -> Option<String> {
    incidents_in_change_log(alert).into_iter().next()
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

/// What happens to an incident when its alert is cleared or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnClear {
    /// Nothing.
    None,
    /// A journal line.
    Journal,
    /// A journal line and the incident resolved.
    Resolve,
    /// A journal line and the incident closed.
    Close,
}

impl std::str::FromStr for OnClear {
    type Err = String;
    fn from_str(s: &str) -> Result<OnClear, String> {
        match s {
            "none" => Ok(OnClear::None),
            "journal" => Ok(OnClear::Journal),
            "resolve" => Ok(OnClear::Resolve),
            "close" => Ok(OnClear::Close),
            _ => Err(format!("{s:?}: use none, journal, resolve or close")),
        }
    }
}

/// What to do with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Work done (or nothing to do) and recorded: ack.
    Done(String),
    /// An incident was opened (or finished) and its id written into the alert: ack. Carries
    /// the alert as it is after the note.
    Ticketed {
        incident: String,
        alert: Option<Value>,
    },
    /// Shutting down before the work could finish: leave it for redelivery.
    Interrupted,
    /// Not now (another instance claimed the alert, or it changed under our claim): call
    /// again after the delay.
    Retry(Duration),
    /// The incident may have been created (no usable answer to the create): the next call
    /// looks it up by the reference recorded before the create, and creates only if absent.
    Unknown(String),
}

/// A failure that stops the tool (the store is unusable).
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Ticketer {
    pub store: Store,
    pub sm: SmClient,
    pub ov: Arc<Session>,
    pub template: Template,
    pub on_clear: OnClear,
    /// Journal other people's changes to a ticketed alert.
    pub journal_updates: bool,
    pub filter: Filter,
    pub shutdown: watch::Receiver<bool>,
    /// Retry delays: first and cap.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Where the ticketing events are logged and counted.
    pub metrics: ApplianceMetrics,
    /// Claim each alert (an eTag-guarded note) before creating its incident, so that two
    /// instances on separate state never both create one.
    pub claim: bool,
}

enum Attempt<T> {
    Ok(T),
    Permanent(String),
    Interrupted,
    /// A change was sent and may have happened: see [`Outcome::Unknown`].
    Unknown(String),
}

/// Whether a Service Manager call is sent again blindly after an error (reads, resolving and
/// closing, which a repeat does not change; a journal line, which a repeat at worst adds
/// twice) or, when its outcome is unknown, looked up first (a create: a repeat would open a
/// second incident).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Blindly,
    LookUpFirst,
}

impl Ticketer {
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

    /// Runs an SM call until it succeeds, fails for good, or shutdown comes; a call that
    /// must not be repeated blindly also ends when its outcome is unknown.
    async fn sm_retry<T, F, Fut>(&self, what: &str, repeat: Repeat, mut f: F) -> Attempt<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SmError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Attempt::Ok(v),
                Err(e) if repeat == Repeat::LookUpFirst && e.may_have_acted() => {
                    return Attempt::Unknown(e.to_string())
                }
                Err(e) => match e.class() {
                    ErrorClass::Permanent => return Attempt::Permanent(e.to_string()),
                    ErrorClass::Unauthorized => {
                        tracing::error!(error = %e, pause_secs = self.retry_cap.as_secs(), "Service Manager refused our credentials: check -i/--id and the SM password; pausing");
                        if !self.pause(self.retry_cap).await {
                            return Attempt::Interrupted;
                        }
                    }
                    ErrorClass::Retryable => {
                        let d =
                            scmb_servicemanager::backoff(attempt, self.retry_base, self.retry_cap);
                        attempt += 1;
                        self.metrics
                            .retry("service_manager", what, attempt, d, &e.to_string());
                        if !self.pause(d).await {
                            return Attempt::Interrupted;
                        }
                    }
                },
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
                // Credentials or rights withdrawn: an operator must act; nothing is dropped
                // meanwhile (the message stays unacked and the work is retried).
                Err(e)
                    if matches!(
                        e,
                        OneViewError::AuthFailed { .. }
                            | OneViewError::SessionExpired
                            | OneViewError::Api {
                                status: 401 | 403,
                                ..
                            }
                    ) =>
                {
                    tracing::error!(error = %e, pause_secs = self.retry_cap.as_secs(), "OneView refused our credentials or rights while {what}: check the user and password; pausing");
                    if !self.pause(self.retry_cap).await {
                        return Attempt::Interrupted;
                    }
                }
                Err(e)
                    if e.is_transient()
                        || matches!(
                            e,
                            OneViewError::BadResponse { .. }
                                | OneViewError::Api {
                                    status: 408 | 429 | 500..=599,
                                    ..
                                }
                        ) =>
                {
                    let d = scmb_servicemanager::backoff(attempt, self.retry_base, self.retry_cap);
                    attempt += 1;
                    self.metrics
                        .retry("oneview", what, attempt, d, &e.to_string());
                    if !self.pause(d).await {
                        return Attempt::Interrupted;
                    }
                }
                Err(e) => return Attempt::Permanent(e.to_string()),
            }
        }
    }

    async fn get(&self, uri: &str) -> Result<Option<Record>, TicketError> {
        // A read is a few microseconds from the page cache: done in place, not handed to a
        // blocking thread (two context switches per alert saved in a storm).
        Ok(self.store.get(uri)?)
    }

    async fn put(&self, uri: &str, rec: Record) -> Result<(), TicketError> {
        Ok(self.store.put_async(uri, &rec).await?)
    }

    /// Handles one decoded message. Returns when the delivery may be acked (or must be left).
    pub async fn process(&self, ev: &Event) -> Result<Outcome, TicketError> {
        if !ev.is_alert() {
            return Ok(Outcome::Done("not an alert".into()));
        }
        let uri = ev.resource_uri.as_str();
        let cleared = ev.change_type == ChangeType::Deleted
            || (ev.change_type == ChangeType::Updated
                && ev.body().get("newState").and_then(Value::as_str) == Some("Cleared"));
        if cleared {
            return self.lifecycle(ev, uri).await;
        }
        if !self.filter.admits(ev) {
            if self.journal_updates && ev.change_type == ChangeType::Updated {
                return self.journal_update(ev, uri).await;
            }
            return Ok(Outcome::Done("filtered out".into()));
        }
        self.ticket(uri).await
    }

    async fn ticket(&self, uri: &str) -> Result<Outcome, TicketError> {
        let existing = self.get(uri).await?;
        // The alert's eTag as read before creating the incident: the note's PUT starts with
        // it (one read less; a 412 if it changed meanwhile reads it again).
        let mut known_etag: Option<String> = None;
        let incident = match existing.clone() {
            Some(r) if matches!(r.step, Step::Noted | Step::Failed | Step::Closed) => {
                return Ok(Outcome::Done(format!("already handled ({:?})", r.step)));
            }
            Some(Record {
                incident: Some(id),
                step: Step::Created,
                ..
            }) => id,
            _ => {
                let alert = match self
                    .ov_retry("reading the alert", || self.ov.alert(uri))
                    .await
                {
                    Attempt::Ok(Some(a)) => a,
                    Attempt::Ok(None) => return Ok(Outcome::Done("alert gone".into())),
                    Attempt::Permanent(e) => {
                        tracing::error!(alert = uri, error = %e, "cannot read the alert; not ticketed");
                        return Ok(Outcome::Done(format!("alert unreadable: {e}")));
                    }
                    Attempt::Interrupted | Attempt::Unknown(_) => return Ok(Outcome::Interrupted),
                };
                if let Some(id) = incident_in_change_log(&alert) {
                    self.metrics
                        .incident_deduplicated(uri, &id, "its notes carry the incident");
                    self.put(uri, Record::new(Some(id.clone()), Step::Noted))
                        .await?;
                    return Ok(Outcome::Done(format!("already ticketed as {id}")));
                }
                known_etag = alert
                    .get("eTag")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if alert.get("alertState").and_then(Value::as_str) == Some("Cleared") {
                    return Ok(Outcome::Done("alert already cleared".into()));
                }
                let mut fields = self.template.incident(&alert);
                // Tag the incident before creating it, and record the tag first: a crash between
                // Service Manager's answer and our record is then resolved by looking it up.
                let reference = match existing.as_ref() {
                    Some(Record {
                        step: Step::Creating,
                        reference: Some(r),
                        ..
                    }) => r.clone(),
                    _ => {
                        let r = format!("scmb-{:016x}", rand::random::<u64>());
                        let mut rec = Record::new(None, Step::Creating);
                        rec.reference = Some(r.clone());
                        self.put(uri, rec).await?;
                        r
                    }
                };
                if self.claim {
                    match self.claim(uri, &alert, &reference).await {
                        Claim::Ours(etag) => known_etag = etag.or(known_etag),
                        Claim::Theirs => return Ok(Outcome::Retry(CLAIM_WAIT)),
                        Claim::Changed => {
                            return Ok(Outcome::Retry(self.retry_base));
                        }
                        Claim::Interrupted => return Ok(Outcome::Interrupted),
                    }
                }
                fields.insert(REFERENCE_FIELD.into(), json!(reference));
                let query = format!("{REFERENCE_FIELD}=\"{reference}\"");
                // A create that was interrupted, or whose outcome is unknown, may have
                // happened: look for its reference before creating again.
                let found = match existing.as_ref().map(|r| &r.step) {
                    Some(Step::Creating) => match self
                        .sm_retry(
                            "looking up an incident that may exist",
                            Repeat::Blindly,
                            || self.sm.list(Some(&query), 10),
                        )
                        .await
                    {
                        Attempt::Ok(list) => list.into_iter().next(),
                        Attempt::Permanent(e) => {
                            // Creating now could open a second incident; failing says so.
                            let reason = format!("the incident may exist (reference {reference}) but Service Manager refused to look it up: {e}; search for the reference and write its id into the alert's notes");
                            self.metrics.incident_failed(uri, &reason);
                            let mut rec = Record::new(None, Step::Failed);
                            rec.reason = Some(reason.clone());
                            self.put(uri, rec).await?;
                            return Ok(Outcome::Done(format!("failed: {reason}")));
                        }
                        Attempt::Interrupted | Attempt::Unknown(_) => {
                            return Ok(Outcome::Interrupted)
                        }
                    },
                    _ => None,
                };
                let created = match found {
                    Some(inc) => {
                        self.metrics.incident_deduplicated(
                            uri,
                            &inc.id,
                            "found the incident created before an interruption",
                        );
                        Attempt::Ok(inc)
                    }
                    None => {
                        self.sm_retry("creating the incident", Repeat::LookUpFirst, || {
                            self.sm.create_incident(&fields)
                        })
                        .await
                    }
                };
                let id = match created {
                    Attempt::Ok(inc) => inc.id,
                    Attempt::Permanent(reason) => {
                        self.metrics.incident_failed(uri, &reason);
                        let mut rec = Record::new(None, Step::Failed);
                        rec.reason = Some(reason.clone());
                        self.put(uri, rec).await?;
                        return Ok(Outcome::Done(format!("failed: {reason}")));
                    }
                    Attempt::Interrupted => return Ok(Outcome::Interrupted),
                    // The record still says Creating with the reference: the next call
                    // looks it up before creating.
                    Attempt::Unknown(e) => return Ok(Outcome::Unknown(e)),
                };
                self.put(uri, Record::new(Some(id.clone()), Step::Created))
                    .await?;
                self.metrics.incident_created(uri, &id);
                id
            }
        };
        let note = note_for(&incident);
        let mut updated = None;
        match self
            .ov_retry("writing the note", || {
                self.ov
                    .add_alert_note_with_etag(uri, &note, known_etag.as_deref())
            })
            .await
        {
            Attempt::Ok(a) => {
                // Another incident's note beside ours: another instance, on state of its own
                // and without claims, ticketed the same alert at the same time.
                let others: Vec<String> = incidents_in_change_log(&a)
                    .into_iter()
                    .filter(|id| *id != incident)
                    .collect();
                if !others.is_empty() && !self.claim {
                    self.metrics
                        .incident_conflict(uri, &incident, &others.join(", "));
                }
                updated = Some(a);
            }
            Attempt::Permanent(e) => {
                // The alert is gone or refuses notes: the incident exists, record it as done.
                tracing::warn!(alert = uri, incident = %incident, error = %e, "could not write the note into the alert");
            }
            Attempt::Interrupted | Attempt::Unknown(_) => return Ok(Outcome::Interrupted),
        }
        self.put(uri, Record::new(Some(incident.clone()), Step::Noted))
            .await?;
        tracing::info!(alert = uri, incident = %incident, "note written to the alert");
        Ok(Outcome::Ticketed {
            incident,
            alert: updated,
        })
    }

    /// Claims the alert for this instance's `reference` unless another instance holds a
    /// valid claim: an eTag-guarded note, which only one of two writers can add.
    async fn claim(&self, uri: &str, alert: &Value, reference: &str) -> Claim {
        let etag = alert.get("eTag").and_then(Value::as_str);
        match latest_claim(alert) {
            Some((r, _)) if r == reference => return Claim::Ours(etag.map(str::to_string)),
            Some((r, at)) => {
                if !self.claim_expired(at.as_deref()).await {
                    tracing::debug!(alert = uri, claim = %r, "another instance claimed the alert; waiting for its incident");
                    return Claim::Theirs;
                }
                tracing::warn!(alert = uri, claim = %r, "another instance claimed the alert over 5 minutes ago without an incident; taking it over");
            }
            None => {}
        }
        let Some(etag) = etag else {
            tracing::warn!(
                alert = uri,
                "the alert has no eTag: it cannot be claimed; creating its incident unclaimed"
            );
            return Claim::Ours(None);
        };
        let note = format!("{CLAIM_PREFIX}{reference}");
        match self
            .ov_retry("claiming the alert", || {
                self.ov.add_alert_note_if(uri, &note, etag)
            })
            .await
        {
            Attempt::Ok(Some(updated)) => Claim::Ours(
                updated
                    .get("eTag")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            Attempt::Ok(None) => Claim::Changed,
            Attempt::Permanent(e) => {
                // Retrying cannot help (the appliance refuses the note): as without an eTag.
                tracing::warn!(alert = uri, error = %e, "cannot claim the alert; creating its incident unclaimed");
                Claim::Ours(Some(etag.to_string()))
            }
            Attempt::Interrupted | Attempt::Unknown(_) => Claim::Interrupted,
        }
    }

    /// Whether a claim made at `at` (the appliance's time) is older than [`CLAIM_TTL`] by
    /// the appliance's clock. Without either time it holds.
    async fn claim_expired(&self, at: Option<&str>) -> bool {
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        let Some(at) = at.and_then(|a| time::OffsetDateTime::parse(a, rfc3339).ok()) else {
            return false;
        };
        match self.ov.clock().await {
            Ok(Some(now)) => time::OffsetDateTime::from(now) - at > CLAIM_TTL,
            _ => false,
        }
    }

    /// The alerts whose incident is open (created, not yet updated for a clear), when a
    /// clear changes something (`on_clear` is not `none`).
    pub async fn open_alerts(&self) -> Result<Vec<String>, TicketError> {
        if self.on_clear == OnClear::None {
            return Ok(Vec::new());
        }
        let all = self.store.call(|s| s.all()).await?;
        Ok(all
            .into_iter()
            .filter(|(_, r)| r.incident.is_some() && matches!(r.step, Step::Created | Step::Noted))
            .map(|(uri, _)| uri)
            .collect())
    }

    /// A journal line for someone else's change to an alert we ticketed (urgency, assignment, a
    /// note that is not ours). Our own note comes back as an `Updated` too: it is skipped.
    async fn journal_update(&self, ev: &Event, uri: &str) -> Result<Outcome, TicketError> {
        let Some(Record {
            incident: Some(id),
            step: Step::Noted | Step::Created,
            ..
        }) = self.get(uri).await?
        else {
            return Ok(Outcome::Done("update of an alert without incident".into()));
        };
        let a = AlertView(ev.resource());
        let mut lines = Vec::new();
        for attr in ev.changed_attributes() {
            match attr {
                "urgency" | "alertUrgency" => lines.push(format!(
                    "OneView: urgency is now {}",
                    ev.resource()
                        .get("urgency")
                        .and_then(Value::as_str)
                        .unwrap_or(NA)
                )),
                "assignedToUser" => lines.push(format!(
                    "OneView: assigned to {}",
                    ev.resource()
                        .get("assignedToUser")
                        .and_then(Value::as_str)
                        .unwrap_or("nobody")
                )),
                "changeLog" => {
                    let last = a
                        .change_log()
                        .and_then(Value::as_array)
                        .and_then(|l| l.last());
                    let note = last
                        .and_then(|e| e.get("notes"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if !note.is_empty() && !is_ticket_note(note) && !note.starts_with(CLAIM_PREFIX)
                    {
                        let who = last
                            .and_then(|e| e.get("username"))
                            .and_then(Value::as_str)
                            .unwrap_or("someone");
                        lines.push(format!("OneView note by {who}: {note}"));
                    }
                }
                _ => {}
            }
        }
        if lines.is_empty() {
            return Ok(Outcome::Done("update not journaled".into()));
        }
        let mut fields = Map::new();
        fields.insert("JournalUpdates".into(), json!(lines));
        match self
            .sm_retry("journaling an alert update", Repeat::Blindly, || {
                self.sm.update_incident(&id, &fields)
            })
            .await
        {
            Attempt::Ok(_) => Ok(Outcome::Done(format!("journaled on {id}"))),
            Attempt::Permanent(e) => {
                tracing::warn!(alert = uri, incident = %id, error = %e, "could not journal the alert update");
                Ok(Outcome::Done("journal failed".into()))
            }
            Attempt::Interrupted | Attempt::Unknown(_) => Ok(Outcome::Interrupted),
        }
    }

    async fn lifecycle(&self, ev: &Event, uri: &str) -> Result<Outcome, TicketError> {
        let Some(rec) = self.get(uri).await? else {
            return Ok(Outcome::Done("cleared, never ticketed".into()));
        };
        let Some(id) = rec
            .incident
            .clone()
            .filter(|_| matches!(rec.step, Step::Created | Step::Noted))
        else {
            return Ok(Outcome::Done(format!(
                "cleared, nothing to update ({:?})",
                rec.step
            )));
        };
        if self.on_clear == OnClear::None {
            return Ok(Outcome::Done("cleared; incident left as is".into()));
        }
        let what = if ev.change_type == ChangeType::Deleted {
            "deleted"
        } else {
            "cleared"
        };
        let line = format!(
            "OneView alert {uri} was {what} at {}",
            ev.body()
                .get("timestamp")
                .and_then(Value::as_str)
                .unwrap_or(NA)
        );
        let mut fields = Map::new();
        fields.insert("JournalUpdates".into(), json!([line]));
        let result = match self.on_clear {
            OnClear::Journal | OnClear::None => {
                self.sm_retry("journaling the incident", Repeat::Blindly, || {
                    self.sm.update_incident(&id, &fields)
                })
                .await
            }
            OnClear::Resolve => {
                fields.insert("Solution".into(), json!([line]));
                self.sm_retry("resolving the incident", Repeat::Blindly, || {
                    self.sm.resolve(&id, &fields)
                })
                .await
            }
            OnClear::Close => {
                fields.insert("Solution".into(), json!([line]));
                fields.insert("ClosureCode".into(), json!("Automatically Closed"));
                self.sm_retry("closing the incident", Repeat::Blindly, || {
                    self.sm.close(&id, &fields)
                })
                .await
            }
        };
        match result {
            Attempt::Ok(_) => {}
            Attempt::Permanent(e) => {
                tracing::error!(alert = uri, incident = %id, error = %e, "could not update the incident for the cleared alert");
            }
            Attempt::Interrupted | Attempt::Unknown(_) => return Ok(Outcome::Interrupted),
        }
        self.put(uri, Record::new(Some(id.clone()), Step::Closed))
            .await?;
        self.metrics
            .incident_resolved(uri, &id, &format!("{:?} ({what})", self.on_clear));
        Ok(Outcome::Done(format!("incident {id} updated ({what})")))
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
