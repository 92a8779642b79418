//! Ticketing, whatever the system: every admitted alert becomes exactly one incident whose
//! id is written back into the alert's notes; cleared or deleted alerts update or close it.
//! A system (Service Manager, ServiceNow) is a [`TicketSystem`]: how to create, find,
//! journal and clear an incident, and what its notes look like. The steps, their records and
//! their retries are here, once.
//!
//! Exactly-once rests on three things: the durable [`Store`] (alert → incident, step),
//! consulted before any work and written after each step; an idempotency reference given to
//! the incident before it is created and recorded first (on a provable first attempt, whose
//! reference is the same every time for the store and alert, only once its outcome is in
//! doubt), looked up before any create that may repeat one; the alert's own change log,
//! searched for a note carrying an incident id before creating one (a wiped store or a second
//! instance does not duplicate); and acking the delivery only once the work is recorded. A
//! crash at any instant leaves an unacked message, or an alert the next catch-up reads, and
//! either a recorded step or a reference to look up, and the next attempt finishes the work.

use crate::sinks::http::retry_delay;
use std::sync::Arc;
use std::time::Duration;

use scmb_model::{AlertView, ChangeType, Event, Filter, Peek};
use scmb_oneview::{OneViewError, Session};
use serde_json::Value;
use tokio::sync::watch;

use crate::failure;
use crate::sinks::oneview_retry::{self, NoteOnce, OvAttempt, OvRetry};
use crate::sinks::sink::{Outcome as SinkOutcome, SinkError};
use crate::store::{Record, Step, Store, StoreError};
use crate::telemetry::ApplianceMetrics;

/// How long a claim holds without its incident: after that (by the appliance's clock) the
/// instance that made it is taken for gone and another may claim the alert.
const CLAIM_TTL: time::Duration = time::Duration::minutes(5);

/// How often an instance that lost the claim reads the alert again for the incident.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// The longest `Retry-After` honoured as given.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

const NA: &str = "n/a";

/// The most incidents [`TicketSystem::resolved`] is asked about in one call.
pub const RESOLVED_BATCH: usize = 50;

/// Locks by reference, for systems whose alerts share incidents: two alerts of one resource
/// in two lanes must not both find no incident and both create one. Striped: a reference
/// hashes to one of a fixed set of locks (two resources on one stripe merely wait for each
/// other).
pub struct ReferenceLocks(Vec<tokio::sync::Mutex<()>>);

impl Default for ReferenceLocks {
    fn default() -> Self {
        ReferenceLocks((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl ReferenceLocks {
    async fn lock(&self, reference: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        reference.hash(&mut h);
        self.0[(h.finish() % self.0.len() as u64) as usize]
            .lock()
            .await
    }
}

/// A ticketing system, as the [`Ticketer`] uses it.
#[async_trait::async_trait]
pub trait TicketSystem: Send + Sync {
    /// The sink's name in metrics and logs (`service_manager`, `servicenow`).
    fn name(&self) -> &'static str;
    /// The system's name for people (`Service Manager`).
    fn title(&self) -> &'static str;
    /// Which settings to fix when the system refuses our credentials.
    fn credentials_hint(&self) -> &'static str;
    /// The prefix of this system's records in the store (see [`Ticketer`]): empty only for
    /// Service Manager, whose records predate the others.
    fn store_prefix(&self) -> &'static str;
    /// The note written into the alert once its incident exists.
    fn note_for(&self, incident: &str) -> String;
    /// Every prefix of a note that carries an incident id of this system (older spellings
    /// and the configured one included): such a note means the alert is ticketed.
    fn note_prefixes(&self) -> Vec<&str>;
    /// The note that claims an alert before its incident is created (see `claim`).
    fn claim_prefix(&self) -> &'static str;
    /// The idempotency reference of a new incident for `alert` (at `uri`), made by the
    /// instance whose store's id is `instance`.
    fn reference(&self, instance: &str, uri: &str, alert: &Value) -> String;
    /// True when [`TicketSystem::reference`] is the same for an alert every time: a provable
    /// first attempt ([`Ticketer::first_attempt`]) then records nothing before its create, and
    /// an incident it may have left unrecorded is found by it.
    fn stable_reference(&self) -> bool;
    /// True when the reference is the same for every instance (ServiceNow's `correlation_id`,
    /// the alert's own): it is then looked up before every create but a first attempt's (a
    /// wiped store, another instance's incident or one opened by hand with our key is found),
    /// and claims carry the instance's id beside it. False when it is this instance's own
    /// (Service Manager's): looked up only where this store may have left an attempt
    /// unrecorded.
    fn shared_reference(&self) -> bool {
        self.stable_reference()
    }
    /// True when alerts share incidents (one per resource, the reference the resource's): a
    /// new alert whose reference finds an incident is attached to it
    /// ([`TicketSystem::attach`]), and a clear resolves or closes the incident only once no
    /// other alert of it is still open.
    fn shares_incidents(&self) -> bool {
        false
    }
    /// Adds `alert` (at `uri`) to `incident`, its resource's (a journal line; reopened if it
    /// was resolved).
    async fn attach(&self, _incident: &str, _uri: &str, _alert: &Value) -> Result<(), CallError> {
        Ok(())
    }
    /// Which of `incidents` people resolved or closed in the system (for clearing their
    /// alerts in OneView, when asked to). At most [`RESOLVED_BATCH`] at a time.
    async fn resolved(&self, _incidents: &[String]) -> Result<Vec<String>, CallError> {
        Ok(Vec::new())
    }
    /// The id of the incident carrying `reference`, if one exists.
    async fn find(&self, reference: &str) -> Result<Option<String>, CallError>;
    /// Creates the incident for `alert`, tagged with `reference`: its id.
    async fn create(&self, alert: &Value, reference: &str) -> Result<String, CallError>;
    /// Adds lines to the incident's journal (work notes).
    async fn journal(&self, incident: &str, lines: &[String]) -> Result<(), CallError>;
    /// What a cleared or deleted alert does to its incident (`line` says what happened).
    async fn clear(&self, incident: &str, how: OnClear, line: &str) -> Result<(), CallError>;
}

/// A call to the ticketing system that failed.
#[derive(Debug, Clone)]
pub struct CallError {
    pub message: String,
    pub class: CallClass,
    /// The change may have happened (a timeout or lost connection after sending, a 5xx, a
    /// success without a usable answer): never sent again before a look-up.
    pub may_have_acted: bool,
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// Again later: after the system's `Retry-After` when it gave one, else a backoff.
    Retryable { after: Option<Duration> },
    /// Our credentials were refused: pause (keep the work) until an operator fixes them.
    Unauthorized,
    /// It will never succeed as sent: give up on it, visibly.
    Permanent,
}

/// The reference and time (the appliance's) of the newest claim in an alert's change log.
fn latest_claim(alert: &Value, claim_prefix: &str) -> Option<(String, Option<String>)> {
    alert
        .get("changeLog")?
        .as_array()?
        .iter()
        .rev()
        .find_map(|e| {
            let r = e.get("notes")?.as_str()?.strip_prefix(claim_prefix)?;
            let at = e.get("created").and_then(Value::as_str).map(str::to_string);
            Some((r.trim().to_string(), at))
        })
}

/// How claiming an alert went.
enum Claim {
    /// Ours (now or before): go on.
    Ours,
    /// Another instance's, still valid: it creates the incident.
    Theirs,
    /// The alert changed between our read and our claim: read it again.
    Changed,
    Interrupted,
}

/// The incident id in a note carrying one of `prefixes`: the word after the prefix, without
/// trailing punctuation.
pub fn incident_in_note(note: &str, prefixes: &[&str]) -> Option<String> {
    prefixes.iter().find_map(|p| {
        let at = note.find(p)?;
        let id = note[at + p.len()..]
            .split_whitespace()
            .next()?
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        (!id.is_empty()).then(|| id.to_string())
    })
}

/// The incident ids of every note in the alert's change log carrying one of `prefixes`.
pub fn incidents_in_change_log(alert: &Value, prefixes: &[&str]) -> Vec<String> {
    alert
        .get("changeLog")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("notes").and_then(Value::as_str))
        .filter_map(|n| incident_in_note(n, prefixes))
        .collect()
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
    pub system: Arc<dyn TicketSystem>,
    pub ov: Arc<Session>,
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
    /// Serialises finding and creating an incident per reference when alerts share them.
    pub locks: ReferenceLocks,
    /// This instance's id (kept in its store): in its claims, so that two instances whose
    /// references are the same for an alert (ServiceNow's `correlation_id`) tell their claims
    /// apart, and a restarted instance knows its own; and in references that are the
    /// instance's own (Service Manager's).
    pub instance: String,
    /// This store has made first attempts (recorded in its meta table before the first one):
    /// an incident of an alert without a record may then exist unrecorded, so such an alert's
    /// reference is looked up before its create. A store that never made one (a durable
    /// queue's) looks up only after an interrupted create, as before first attempts existed.
    first_attempts: std::sync::atomic::AtomicBool,
}

/// The store's meta key of the instance's id.
const INSTANCE_KEY: &str = "instance_id";

/// The store's meta key saying that a system's first attempts were made (see
/// [`Ticketer::first_attempt`]).
fn first_attempts_key(system: &dyn TicketSystem) -> String {
    match system.store_prefix() {
        "" => "first_attempts".to_string(),
        p => format!("first_attempts:{p}"),
    }
}

/// This store's instance id, made (random) and kept the first time.
fn instance_id(store: &Store) -> Result<String, StoreError> {
    if let Some(id) = store.meta(INSTANCE_KEY)? {
        return Ok(id);
    }
    let id = format!("{:016x}", rand::random::<u64>());
    store.set_meta(INSTANCE_KEY, &id)?;
    Ok(id)
}

enum Attempt<T> {
    Ok(T),
    Permanent(String),
    Interrupted,
    /// A change was sent and may have happened: see [`Outcome::Unknown`].
    Unknown(String),
}

/// Whether a call to the ticketing system is sent again blindly after an error (reads,
/// resolving and closing, which a repeat does not change; a journal line, which a repeat at
/// worst adds twice) or, when its outcome is unknown, looked up first (a create: a repeat
/// would open a second incident).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Blindly,
    LookUpFirst,
}

impl Ticketer {
    /// Sleeps `d` unless shutdown comes first (then returns false).
    async fn pause(&self, d: Duration) -> bool {
        oneview_retry::pause(&self.shutdown, d).await
    }

    /// Runs a call to the ticketing system until it succeeds, fails for good, or shutdown
    /// comes; a call that must not be repeated blindly also ends when its outcome is unknown.
    async fn sys_retry<T, F, Fut>(&self, what: &str, repeat: Repeat, mut f: F) -> Attempt<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut backoff = crate::retry::Backoff::new(self.retry_base, self.retry_cap);
        loop {
            match f().await {
                Ok(v) => return Attempt::Ok(v),
                Err(e) if repeat == Repeat::LookUpFirst && e.may_have_acted => {
                    return Attempt::Unknown(e.message)
                }
                Err(e) => match e.class {
                    CallClass::Permanent => return Attempt::Permanent(e.message),
                    CallClass::Unauthorized => {
                        tracing::error!(sink = self.system.name(), error = %e.message, pause_secs = self.retry_cap.as_secs(), "{} refused our credentials: {}; pausing", self.system.title(), self.system.credentials_hint());
                        if !self.pause(self.retry_cap).await {
                            return Attempt::Interrupted;
                        }
                    }
                    CallClass::Retryable { after } => {
                        // The system's own Retry-After, when it gave one (bounded: a bogus
                        // hour must not stall the lane).
                        let d = retry_delay(after.map(|a| a.min(RETRY_AFTER_CAP)), &mut backoff);
                        self.metrics.retry(
                            self.system.name(),
                            what,
                            backoff.attempt(),
                            d,
                            &e.message,
                        );
                        if !self.pause(d).await {
                            return Attempt::Interrupted;
                        }
                    }
                },
            }
        }
    }

    /// Runs a OneView call until it succeeds, fails for good, or shutdown comes.
    async fn ov_retry<T, F, Fut>(&self, what: &str, f: F) -> Attempt<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OneViewError>>,
    {
        let retry = OvRetry {
            stop: &self.shutdown,
            metrics: &self.metrics,
            base: self.retry_base,
            cap: self.retry_cap,
        };
        match retry.run(what, f).await {
            OvAttempt::Ok(v) => Attempt::Ok(v),
            OvAttempt::Permanent(e) => Attempt::Permanent(e),
            OvAttempt::Interrupted => Attempt::Interrupted,
        }
    }

    /// The store's key of an alert's record for this system: the bare uri for Service
    /// Manager (as stores written before other systems existed have it), `name:uri` for
    /// the others.
    fn key(&self, uri: &str) -> String {
        match self.system.store_prefix() {
            "" => uri.to_string(),
            p => format!("{p}:{uri}"),
        }
    }

    async fn get(&self, uri: &str) -> Result<Option<Record>, TicketError> {
        // A read is a few microseconds from the page cache: done in place, not handed to a
        // blocking thread (two context switches per alert saved in a storm).
        Ok(self.store.get(&self.key(uri))?)
    }

    async fn put(&self, uri: &str, rec: Record) -> Result<(), TicketError> {
        Ok(self.store.put_async(&self.key(uri), &rec).await?)
    }

    /// Records, durably, that the incident for `uri` is about to be (or may have been) created
    /// with `reference`: the next attempt looks it up before creating.
    async fn record_creating(&self, uri: &str, reference: &str) -> Result<(), TicketError> {
        let mut rec = Record::new(None, Step::Creating);
        rec.reference = Some(reference.to_string());
        self.put(uri, rec).await
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
        self.ticket(ev, uri).await
    }

    /// The alert as the bus delivered it, when that copy serves as well as a read: the
    /// delivery's first sight (no earlier run can have acted on this message, and the record
    /// says nothing was done for the alert), without claims (a claim needs the alert's current
    /// eTag), and a message carrying the whole alert. The copy is the alert as the appliance
    /// published it a moment ago, notes included (an incident noted by an earlier run whose
    /// store is gone is found in them as in a read); the note written later is guarded by its
    /// eTag, so a change since is read again then. One REST read fewer per new alert: in a
    /// storm, the appliance's load and our latency.
    fn published_alert(&self, ev: &Event, uri: &str, existing: Option<&Record>) -> Option<Value> {
        if existing.is_some() || !ev.first_sight || self.claim {
            return None;
        }
        let alert = ev.resource();
        (alert.get("uri").and_then(Value::as_str) == Some(uri)
            && alert.get("eTag").and_then(Value::as_str).is_some())
        .then(|| alert.clone())
    }

    /// Whether this is provably the first attempt at the alert's incident: the delivery's
    /// first sight of a new alert (its `Created` message, from a queue that lives only as long
    /// as this connection: the appliance published it after the queue existed, so no earlier
    /// run can have seen the alert) of which the store knows nothing (so neither has this
    /// run), without claims, for a system whose reference is the same every time for the alert
    /// ([`TicketSystem::stable_reference`]). Such an attempt records nothing before its create
    /// and looks nothing up: should its outcome be in doubt, the reference is recorded then (a
    /// retry looks it up), and should the process die first, the alert comes back only as
    /// something else (a catch-up's read, an update, a redelivery), which looks the reference
    /// up before creating. One commit, and its wait, fewer per new alert.
    ///
    /// Not where alerts share incidents: the resource's incident, found later, would look like
    /// another alert's.
    fn first_attempt(&self, ev: &Event, existing: Option<&Record>) -> bool {
        existing.is_none()
            && ev.first_sight
            && ev.change_type == ChangeType::Created
            && !self.claim
            && self.system.stable_reference()
            && !self.system.shares_incidents()
    }

    /// Whether an incident of an alert without a record may exist unrecorded: this store has
    /// made first attempts (see [`Ticketer::first_attempts`]).
    fn may_have_unrecorded(&self) -> bool {
        self.first_attempts
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records, durably and before the first of them, that this store makes first attempts
    /// (see [`Ticketer::first_attempts`]).
    fn note_first_attempts(&self) -> Result<(), TicketError> {
        use std::sync::atomic::Ordering;
        if !self.may_have_unrecorded() {
            self.store
                .set_meta(&first_attempts_key(self.system.as_ref()), "yes")?;
            self.first_attempts.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn ticket(&self, ev: &Event, uri: &str) -> Result<Outcome, TicketError> {
        let existing = self.get(uri).await?;
        let first_attempt = self.first_attempt(ev, existing.as_ref());
        if first_attempt {
            self.note_first_attempts()?;
        }
        // The alert as read before creating the incident, unless a claim changed it since: the
        // note is written onto it (one read less; a 412 if it changed meanwhile reads it
        // again). After a restart at `Created` it is read first: the note may be there.
        let mut fresh: Option<Value> = None;
        // Set once this call created (or found) the incident: its `Created` record is written
        // while the note is, not before it (see below).
        let mut record_created = false;
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
                let published = self.published_alert(ev, uri, existing.as_ref());
                let alert = match published {
                    Some(a) => a,
                    None => match self
                        .ov_retry("reading the alert", || self.ov.alert(uri))
                        .await
                    {
                        Attempt::Ok(Some(a)) => a,
                        Attempt::Ok(None) => return Ok(Outcome::Done("alert gone".into())),
                        Attempt::Permanent(e) => {
                            tracing::error!(alert = uri, error = %e, "cannot read the alert; not ticketed");
                            return Ok(Outcome::Done(format!("alert unreadable: {e}")));
                        }
                        Attempt::Interrupted | Attempt::Unknown(_) => {
                            return Ok(Outcome::Interrupted)
                        }
                    },
                };
                if let Some(id) = self.incident_in_change_log(&alert) {
                    self.metrics.incident_deduplicated(
                        self.system.name(),
                        uri,
                        &id,
                        "its notes carry the incident",
                    );
                    self.put(uri, Record::new(Some(id.clone()), Step::Noted))
                        .await?;
                    return Ok(Outcome::Done(format!("already ticketed as {id}")));
                }
                if alert.get("alertState").and_then(Value::as_str) == Some("Cleared") {
                    return Ok(Outcome::Done("alert already cleared".into()));
                }
                // Tag the incident before creating it, and record the tag first (but on a first
                // attempt): a crash between the system's answer and our record is then resolved
                // by looking it up.
                let reference = match existing.as_ref() {
                    Some(Record {
                        step: Step::Creating,
                        reference: Some(r),
                        ..
                    }) => r.clone(),
                    // The first attempt's reference is recorded only if its create ends in
                    // doubt (below).
                    _ if first_attempt => self.system.reference(&self.instance, uri, &alert),
                    _ => {
                        let r = self.system.reference(&self.instance, uri, &alert);
                        self.record_creating(uri, &r).await?;
                        r
                    }
                };
                if self.claim {
                    match self.claim(uri, &alert, &reference).await {
                        Claim::Ours => {}
                        Claim::Theirs => return Ok(Outcome::Retry(CLAIM_WAIT)),
                        Claim::Changed => {
                            return Ok(Outcome::Retry(self.retry_base));
                        }
                        Claim::Interrupted => return Ok(Outcome::Interrupted),
                    }
                }
                // Alerts sharing an incident (one per resource) find and create it one at a
                // time in this process, so that two lanes never both create it.
                let _shared = match self.system.shares_incidents() {
                    true => Some(self.locks.lock(&reference).await),
                    false => None,
                };
                // A create that was interrupted, or whose outcome is unknown, may have
                // happened: look for its reference before creating again. A reference shared by
                // every instance is asked for every time but on a first attempt (a wiped
                // store, or an incident opened by hand with our key, is found too); one of this
                // instance's own, whenever this store may have left a first attempt
                // unrecorded.
                let interrupted =
                    matches!(existing.as_ref().map(|r| &r.step), Some(Step::Creating));
                let may_exist = self.system.shared_reference()
                    || (self.system.stable_reference() && self.may_have_unrecorded());
                let look_up = interrupted || (!first_attempt && may_exist);
                let found = match look_up {
                    true => match self
                        .sys_retry(
                            "looking up an incident that may exist",
                            Repeat::Blindly,
                            || self.system.find(&reference),
                        )
                        .await
                    {
                        Attempt::Ok(found) => found,
                        Attempt::Permanent(e) => {
                            // Creating now could open a second incident; failing says so.
                            let reason = format!("the incident may exist (reference {reference}) but {} refused to look it up: {e}; search for the reference and write its id into the alert's notes", self.system.title());
                            return self.failed(uri, reason).await;
                        }
                        Attempt::Interrupted | Attempt::Unknown(_) => {
                            return Ok(Outcome::Interrupted)
                        }
                    },
                    false => None,
                };
                let created = match found {
                    // The resource's incident, opened for another of its alerts: this alert
                    // joins it. (After an interrupted create of this alert's own, which the
                    // record says, the incident found is that one: nothing to add.)
                    Some(id)
                        if self.system.shares_incidents()
                            && !matches!(
                                existing.as_ref().map(|r| &r.step),
                                Some(Step::Creating)
                            ) =>
                    {
                        match self
                            .sys_retry(
                                "adding the alert to its resource's incident",
                                Repeat::Blindly,
                                || self.system.attach(&id, uri, &alert),
                            )
                            .await
                        {
                            Attempt::Ok(()) => {}
                            Attempt::Permanent(e) => {
                                tracing::warn!(alert = uri, incident = %id, error = %e, "could not add the alert to its resource's incident; noting it anyway");
                            }
                            Attempt::Interrupted | Attempt::Unknown(_) => {
                                return Ok(Outcome::Interrupted)
                            }
                        }
                        self.metrics.incident_attached(self.system.name(), uri, &id);
                        Attempt::Ok(id)
                    }
                    Some(id) => {
                        self.metrics.incident_deduplicated(
                            self.system.name(),
                            uri,
                            &id,
                            "found the incident by its reference",
                        );
                        Attempt::Ok(id)
                    }
                    None => {
                        self.sys_retry("creating the incident", Repeat::LookUpFirst, || {
                            self.system.create(&alert, &reference)
                        })
                        .await
                    }
                };
                // A first attempt that did not end with an id records its reference now, as
                // every other attempt did before its create: the next call (a retry in this
                // process, still this delivery's first sight) then looks it up.
                if first_attempt && matches!(created, Attempt::Interrupted | Attempt::Unknown(_)) {
                    self.record_creating(uri, &reference).await?;
                }
                let id = match created {
                    Attempt::Ok(id) => id,
                    Attempt::Permanent(reason) => {
                        return self.failed(uri, reason).await;
                    }
                    Attempt::Interrupted => return Ok(Outcome::Interrupted),
                    // The record says Creating with the reference: the next call looks it up
                    // before creating.
                    Attempt::Unknown(e) => return Ok(Outcome::Unknown(e)),
                };
                record_created = true;
                self.metrics.incident_created(self.system.name(), uri, &id);
                if !self.claim {
                    fresh = Some(alert);
                }
                id
            }
        };
        let note = self.system.note_for(&incident);
        let retry = OvRetry {
            stop: &self.shutdown,
            metrics: &self.metrics,
            base: self.retry_base,
            cap: self.retry_cap,
        };
        let has_ours = |a: &Value| self.incidents_in_change_log(a).contains(&incident);
        // The `Created` record and the note are written at the same time: neither needs the
        // other first. A crash before the record is durable leaves `Creating` with the
        // reference (or, after a first attempt, no record and a reference the next attempt
        // looks up), and the next attempt finds the incident (in the alert's notes when the
        // note was written, else by the reference) instead of creating another; the ack
        // waits for both.
        let record = async {
            match record_created {
                // Beside the note's PUT: its commit may wait a little for others to share it.
                true => Ok(self
                    .store
                    .put_beside(
                        &self.key(uri),
                        &Record::new(Some(incident.clone()), Step::Created),
                    )
                    .await?),
                false => Ok::<(), TicketError>(()),
            }
        };
        let (recorded, noted) = tokio::join!(
            record,
            retry.note_once(&self.ov, uri, &note, has_ours, fresh)
        );
        recorded?;
        let updated = match noted {
            NoteOnce::Written(a) | NoteOnce::There(a) => {
                // Another incident's note beside ours: another instance, on state of its own
                // and without claims, ticketed the same alert at the same time.
                let others: Vec<String> = self
                    .incidents_in_change_log(&a)
                    .into_iter()
                    .filter(|id| *id != incident)
                    .collect();
                if !others.is_empty() && !self.claim {
                    self.metrics
                        .incident_conflict(uri, &incident, &others.join(", "));
                }
                Some(a)
            }
            NoteOnce::Gone => None,
            NoteOnce::Refused(e) => {
                // The alert refuses notes: the incident exists, record it as done.
                tracing::warn!(alert = uri, incident = %incident, error = %e, "could not write the note into the alert");
                None
            }
            NoteOnce::Interrupted => return Ok(Outcome::Interrupted),
        };
        // `Created` (durable by now) already names the incident for every later step (a
        // clear, a redelivery, a catch-up): `Noted` only spares the next delivery of this alert
        // one read, so nobody waits for its commit.
        self.store.put_buffered(
            &self.key(uri),
            &Record::new(Some(incident.clone()), Step::Noted),
        )?;
        tracing::info!(alert = uri, incident = %incident, "note written to the alert");
        Ok(Outcome::Ticketed {
            incident,
            alert: updated,
        })
    }

    /// What this instance's claim for `reference` says: the reference, and this instance's
    /// id when the reference is the same for every instance.
    fn claim_token(&self, reference: &str) -> String {
        match self.system.shared_reference() {
            true => format!("{reference} by {}", self.instance),
            false => reference.to_string(),
        }
    }

    /// Claims the alert for this instance's `reference` unless another instance holds a
    /// valid claim: an eTag-guarded note, which only one of two writers can add.
    async fn claim(&self, uri: &str, alert: &Value, reference: &str) -> Claim {
        let etag = alert.get("eTag").and_then(Value::as_str);
        let token = self.claim_token(reference);
        match latest_claim(alert, self.system.claim_prefix()) {
            Some((r, _)) if r == token => return Claim::Ours,
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
            return Claim::Ours;
        };
        let note = format!("{}{token}", self.system.claim_prefix());
        match self
            .ov_retry("claiming the alert", || {
                self.ov.add_alert_note_if(uri, &note, etag)
            })
            .await
        {
            Attempt::Ok(Some(_)) => Claim::Ours,
            Attempt::Ok(None) => Claim::Changed,
            Attempt::Permanent(e) => {
                // Retrying cannot help (the appliance refuses the note): as without an eTag.
                tracing::warn!(alert = uri, error = %e, "cannot claim the alert; creating its incident unclaimed");
                Claim::Ours
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
        Ok(self
            .records()
            .await?
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
                    if !note.is_empty() && !self.is_ours(note) {
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
        match self
            .sys_retry("journaling an alert update", Repeat::Blindly, || {
                self.system.journal(&id, &lines)
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
            self.put(uri, Record::new(Some(id), Step::Closed)).await?;
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
        // An incident shared by several alerts stays open while any of them is. Their clears
        // take turns (two lanes clearing the last two must not each see the other open).
        let _shared = match self.system.shares_incidents() {
            true => Some(self.locks.lock(&id).await),
            false => None,
        };
        let how = match self.on_clear {
            OnClear::Resolve | OnClear::Close
                if self.system.shares_incidents() && self.others_open(uri, &id).await? =>
            {
                OnClear::Journal
            }
            how => how,
        };
        let what_call = match how {
            OnClear::Journal | OnClear::None => "journaling the incident",
            OnClear::Resolve => "resolving the incident",
            OnClear::Close => "closing the incident",
        };
        let result = self
            .sys_retry(what_call, Repeat::Blindly, || {
                self.system.clear(&id, how, &line)
            })
            .await;
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
            .incident_resolved(self.system.name(), uri, &id, &format!("{how:?} ({what})"));
        Ok(Outcome::Done(format!("incident {id} updated ({what})")))
    }
}

/// What a ticketing sink's table sets of its [`Ticketer`].
#[derive(Debug, Clone, Copy)]
pub struct TicketerSettings {
    pub on_clear: OnClear,
    pub journal_updates: bool,
    pub retry_cap: Duration,
    pub claim: bool,
}

/// A new incident, as [`Ticketer::handle`] reports it: its id, and the alert as updated with
/// its note (when the appliance answered it).
pub type NewIncident = (String, Option<Value>);

/// What the ticketing sinks (Service Manager, ServiceNow) share of the [`Sink`] interface: the
/// ticketer built from the sink's context, what it wants, and its outcomes mapped.
///
/// [`Sink`]: crate::sinks::Sink
impl Ticketer {
    /// The ticketer of sink `name` over `system`: the appliance's store, REST session,
    /// filter, stop and metrics from `ctx`.
    pub fn for_sink(
        name: &'static str,
        system: Arc<dyn TicketSystem>,
        ctx: &crate::sinks::SinkContext,
        s: TicketerSettings,
    ) -> Result<Ticketer, SinkError> {
        let (Some(store), Some(ov)) = (ctx.store.clone(), ctx.session.clone()) else {
            return Err(SinkError::new(
                name,
                failure::UNEXPECTED,
                "ticketing needs the state store and a REST session",
            ));
        };
        let named = |e: StoreError| {
            let f = failure::Failure::from(e);
            SinkError::new(name, f.code, f.message)
        };
        let instance = instance_id(&store).map_err(named)?;
        let first_attempts = store
            .meta(&first_attempts_key(system.as_ref()))
            .map_err(named)?
            .is_some();
        Ok(Ticketer {
            system,
            ov,
            on_clear: s.on_clear,
            journal_updates: s.journal_updates,
            filter: ctx.filter.clone(),
            shutdown: ctx.stop.clone(),
            retry_base: Duration::from_millis(250),
            retry_cap: s.retry_cap,
            metrics: ctx.metrics.clone(),
            claim: s.claim,
            locks: Default::default(),
            instance,
            first_attempts: first_attempts.into(),
            store,
        })
    }

    /// Admitted alerts, and every clear or deletion (their incidents follow); other updates
    /// when they are journaled.
    pub fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        ev.is_alert()
            && (filter.admits_peek(ev)
                || ev.change_type == ChangeType::Deleted
                || ev.new_state.as_deref() == Some("Cleared")
                || (self.journal_updates && ev.change_type == ChangeType::Updated))
    }

    /// One event, as the sink's outcome (an unknown one looked up after `unknown_pause`),
    /// with the incident it opened, if it did.
    pub async fn handle(
        &self,
        ev: &Event,
        unknown_pause: Duration,
    ) -> Result<(SinkOutcome, Option<NewIncident>), SinkError> {
        let outcome = self.process(ev).await.map_err(|e| self.fatal(e))?;
        Ok(match outcome {
            Outcome::Interrupted => (SinkOutcome::Interrupted, None),
            Outcome::Retry(after) => (SinkOutcome::Retry(after), None),
            Outcome::Unknown(reason) => (
                SinkOutcome::Unknown {
                    reason,
                    after: unknown_pause,
                },
                None,
            ),
            Outcome::Done(what) => (SinkOutcome::Done(what), None),
            Outcome::Ticketed { incident, alert } => (
                SinkOutcome::Done(format!("ticketed as {incident}")),
                Some((incident, alert)),
            ),
        })
    }

    /// [`Ticketer::open_alerts`], for the sink.
    pub async fn sink_open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.open_alerts().await.map_err(|e| self.fatal(e))
    }

    fn fatal(&self, e: TicketError) -> SinkError {
        SinkError::new(self.system.name(), failure::UNEXPECTED, e.to_string())
    }

    /// This system's records: (alert uri, record).
    async fn records(&self) -> Result<Vec<(String, Record)>, TicketError> {
        let all = self.store.call(|s| s.all()).await?;
        let prefix = self.system.store_prefix();
        Ok(all
            .into_iter()
            .filter_map(|(key, r)| {
                let uri = match prefix {
                    // Service Manager's keys are bare uris; another system's `name:uri`.
                    "" => key.starts_with('/').then_some(key),
                    p => key
                        .strip_prefix(p)
                        .and_then(|k| k.strip_prefix(':'))
                        .map(str::to_string),
                }?;
                Some((uri, r))
            })
            .collect())
    }

    /// Whether an alert other than `uri` still holds `incident` open.
    async fn others_open(&self, uri: &str, incident: &str) -> Result<bool, TicketError> {
        Ok(self.records().await?.iter().any(|(u, r)| {
            u != uri
                && r.incident.as_deref() == Some(incident)
                && matches!(r.step, Step::Created | Step::Noted)
        }))
    }

    /// One pass of the way back: the open incidents this sink created that people resolved
    /// or closed in the system have their alerts cleared in OneView (a `PUT` guarded by the
    /// alert's eTag, so that a newer change is never overwritten: a 412 leaves the alert for
    /// the next pass, read again). Returns how many alerts were cleared.
    pub async fn clear_resolved(&self) -> Result<usize, TicketError> {
        let mut by_incident: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (uri, r) in self.records().await? {
            if let (Some(id), Step::Created | Step::Noted) = (r.incident, r.step) {
                by_incident.entry(id).or_default().push(uri);
            }
        }
        let ids: Vec<String> = by_incident.keys().cloned().collect();
        let mut cleared = 0;
        for batch in ids.chunks(RESOLVED_BATCH) {
            let resolved = match self.system.resolved(batch).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(sink = self.system.name(), error = %e.message, "could not read which incidents were resolved; trying again at the next poll");
                    return Ok(cleared);
                }
            };
            for id in resolved {
                for uri in by_incident.get(&id).into_iter().flatten() {
                    if *self.shutdown.borrow() {
                        return Ok(cleared);
                    }
                    if self.clear_alert(uri, &id).await? {
                        cleared += 1;
                    }
                }
            }
        }
        Ok(cleared)
    }

    /// Clears the alert at `uri` because its incident `id` was resolved: true when this call
    /// cleared it. Nothing is recorded here: the clear comes back on the bus (or, missed, from
    /// the catch-up's open alerts) and the lifecycle journals it and records the alert closed,
    /// as for any clear; an alert cleared or gone already is likewise left to it.
    async fn clear_alert(&self, uri: &str, id: &str) -> Result<bool, TicketError> {
        let alert = match self.ov.alert(uri).await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!(alert = uri, error = %e, "could not read the alert whose incident was resolved; trying again at the next poll");
                return Ok(false);
            }
        };
        match alert.get("alertState").and_then(Value::as_str) {
            Some("Cleared") => return Ok(false),
            Some("Locked") => {
                tracing::debug!(alert = uri, incident = id, "the incident was resolved but the alert is locked (only the appliance clears it); left active");
                return Ok(false);
            }
            _ => {}
        }
        let Some(etag) = alert.get("eTag").and_then(Value::as_str) else {
            tracing::warn!(alert = uri, incident = id, "the alert has no eTag: it cannot be cleared without risking a newer change; left active");
            return Ok(false);
        };
        let note = format!(
            "Cleared by scmb: {} incident {id} was resolved",
            self.system.title()
        );
        match self.ov.clear_alert_if(uri, etag, &note).await {
            Ok(Some(_)) => {
                self.metrics.alert_cleared(self.system.name(), uri, id);
                Ok(true)
            }
            Ok(None) => {
                tracing::info!(
                    alert = uri,
                    incident = id,
                    "the alert changed while being cleared; read again at the next poll"
                );
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(alert = uri, incident = id, error = %e, "OneView refused to clear the alert whose incident was resolved; trying again at the next poll");
                Ok(false)
            }
        }
    }

    /// Polls [`Ticketer::clear_resolved`] every `every` until the stop.
    pub async fn clear_resolved_every(&self, every: Duration) {
        loop {
            if !self.pause(every).await {
                return;
            }
            match self.clear_resolved().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    sink = self.system.name(),
                    alerts = n,
                    "alerts cleared because their incidents were resolved"
                ),
                Err(e) => {
                    tracing::error!(sink = self.system.name(), error = %e, "the state store failed while clearing alerts of resolved incidents")
                }
            }
        }
    }

    /// The system refused the alert for good: counted, recorded as failed (never retried),
    /// and the delivery finished.
    async fn failed(&self, uri: &str, reason: String) -> Result<Outcome, TicketError> {
        self.metrics
            .incident_failed(self.system.name(), self.system.title(), uri, &reason);
        let mut rec = Record::new(None, Step::Failed);
        rec.reason = Some(reason.clone());
        self.put(uri, rec).await?;
        Ok(Outcome::Done(format!("failed: {reason}")))
    }

    /// The incident ids of this system's notes in the alert's change log.
    fn incidents_in_change_log(&self, alert: &Value) -> Vec<String> {
        incidents_in_change_log(alert, &self.system.note_prefixes())
    }

    /// The incident id of a note of this system already in the alert's change log.
    fn incident_in_change_log(&self, alert: &Value) -> Option<String> {
        self.incidents_in_change_log(alert).into_iter().next()
    }

    /// Whether a note is this system's (a ticket or a claim), not someone else's to journal.
    fn is_ours(&self, note: &str) -> bool {
        self.system
            .note_prefixes()
            .iter()
            .any(|p| note.starts_with(p))
            || note.starts_with(self.system.claim_prefix())
    }
}
