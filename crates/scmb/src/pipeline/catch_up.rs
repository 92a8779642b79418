//! REST catch-up: after every (re)connect, the alerts raised (or left unfinished) while the
//! bus was not listened to are read over REST and fed through the lanes like bus messages,
//! while the bus keeps flowing beside it.
//!
//! One checkpoint meaning for every command: a time **on the appliance's clock** from which
//! the next catch-up lists (`modified GE` it), saved only once everything fed before it is
//! finished. Our own clock is never compared with the appliance's: the checkpoint is the
//! appliance's `Date` at the start of the catch-up (or, without one, the newest `modified` it
//! listed), less a margin for deliveries still queued for us when it was taken.
//!
//! It streams: one page at a time, each fed before the next is asked for (the lanes' back
//! pressure paces it), so memory holds a page, not the appliance's alert list. It pages by
//! value, not by offset: ordered by `modified`, each page asks for `modified GE` the last value
//! seen and skips the alerts already fed at that boundary, so alerts cleared while it pages
//! cannot shift unread rows past it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use scmb_model::message::format_rfc3339_ms;
use scmb_oneview::{AlertPage, OneViewError, Session};
use serde_json::Value;
use tokio::sync::watch;

use super::lanes::{Dispatcher, Fed, Origin};
use super::{store_failure, Shared};
use crate::duration::LookBack;
use crate::failure::Failure;
use crate::store::{Store, CHECKPOINT};

/// How far before the appliance's clock the next checkpoint is set: deliveries published
/// before it may still sit in our queue, unread, when the checkpoint is taken.
const BACKLOG_MARGIN: time::Duration = time::Duration::minutes(10);

/// Alerts per page: what a catch-up holds in memory at once.
pub const PAGE: usize = 250;

/// Alerts with an open ticket read at once when reconciling them after a (re)connect.
const RECONCILE_READS: usize = 8;

/// Pages one listing may take before it gives up (and the catch-up counts as incomplete):
/// an appliance that ignores `sort` must not keep it paging for ever.
const MAX_PAGES: usize = 100_000;

/// What a catch-up works with. It runs as a task of its own beside the consumer.
pub(super) struct CatchUp {
    pub shared: Arc<Shared>,
    pub session: Arc<Session>,
    pub store: Store,
    pub lanes: Arc<Dispatcher>,
    pub look_back: LookBack,
    pub stop: watch::Receiver<bool>,
    /// What this catch-up fed and is not finished yet.
    pub fed: Arc<Fed>,
}

/// How one listing went.
#[derive(Default)]
struct Listed {
    fed: usize,
    /// The newest `modified` seen.
    newest: Option<String>,
}

impl CatchUp {
    /// Lists the active and locked alerts modified since the checkpoint, feeds the ones the
    /// filter admits through the lanes as if just created (the sinks' records skip what was
    /// handled), and moves the checkpoint once everything it fed is finished.
    pub(super) async fn run(self) -> Result<(), Failure> {
        // What an earlier connection's catch-up printed cannot come again on this one's queue.
        if let Ok(mut m) = self.shared.caught_up.lock() {
            m.clear();
        }
        let checkpoint = self
            .store
            .call(|s| s.meta(CHECKPOINT))
            .await
            .map_err(store_failure)?;
        // Taken after the subscription: whatever is modified from now on arrives on the bus.
        let now = match retry(|| self.session.clock()).await {
            Ok(t) => t.map(time::OffsetDateTime::from),
            Err(e) => {
                tracing::warn!(error = %e, "catch-up: cannot read the appliance's clock; continuing with the bus only");
                self.shared.metrics.catch_up(0, false);
                return Ok(());
            }
        };
        let from = match (&checkpoint, self.look_back) {
            (Some(cp), _) => Some(cp.clone()),
            (None, LookBack::All) => None,
            (None, LookBack::None | LookBack::Window(_)) => {
                let window = match self.look_back {
                    LookBack::Window(w) => {
                        time::Duration::try_from(w).unwrap_or(time::Duration::MAX)
                    }
                    _ => time::Duration::ZERO,
                };
                let anchor = match now {
                    Some(t) => Some(t),
                    // No Date header: the newest alert's `modified` is the appliance's time too.
                    None => self.newest_modified().await,
                };
                let from = anchor
                    .and_then(|t| t.checked_sub(window))
                    .map(format_rfc3339_ms);
                tracing::info!(
                    since = from.as_deref().unwrap_or("the beginning"),
                    "first start: catching up on alerts modified since (the appliance's clock)"
                );
                from
            }
        };
        let mut fed = 0usize;
        let mut newest: Option<String> = None;
        let mut complete = true;
        for state in ["Active", "Locked"] {
            if !self.shared.filter.admits_state(state) {
                continue;
            }
            match self.list(state, from.as_deref()).await {
                Ok(l) => {
                    fed += l.fed;
                    newest = newest.max(l.newest);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up: cannot list the {state} alerts; continuing with the bus only");
                    complete = false;
                }
            }
            if *self.stop.borrow() {
                complete = false;
                break;
            }
        }
        if !*self.stop.borrow() {
            match self.reconcile_open().await {
                Ok(n) => fed += n,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up: cannot read the state of every alert with an open ticket; the next (re)connect tries again");
                    complete = false;
                }
            }
        }
        self.shared.metrics.catch_up(fed, complete);
        if !complete {
            return Ok(());
        }
        // Never back before where this catch-up started (a first start's look-back).
        let next = match now {
            Some(t) => Some(format_rfc3339_ms(t - BACKLOG_MARGIN)).max(from),
            None => newest.max(from),
        };
        let Some(next) = next else {
            return Ok(()); // nothing on the appliance to anchor a checkpoint to yet
        };
        // Once everything fed is finished (the bus flows on meanwhile).
        self.fed.settled().await;
        if *self.stop.borrow() {
            return Ok(()); // interrupted work may sit before the barrier
        }
        let cp = next.clone();
        match self.store.call(move |s| s.set_meta(CHECKPOINT, &cp)).await {
            Ok(()) => tracing::debug!(checkpoint = %next, "catch-up checkpoint saved"),
            Err(e) => tracing::warn!(error = %e, "cannot save the catch-up checkpoint"),
        }
        Ok(())
    }

    /// Streams the alerts in `state` modified since `from` (all without it), oldest change
    /// first, into the lanes.
    async fn list(&self, state: &str, from: Option<&str>) -> Result<Listed, OneViewError> {
        let mut listed = Listed::default();
        let mut after = from.map(str::to_string);
        // Alerts already fed whose `modified` equals `after`: the next page starts at it again.
        let mut boundary: HashSet<String> = HashSet::new();
        let mut offset = 0usize;
        for _ in 0..MAX_PAGES {
            // Only what the filter could admit: the appliance leaves out the rest.
            let mut filters = vec![format!("alertState='{state}'")];
            filters.extend(self.shared.filter.rest_severity_clause());
            if let Some(a) = &after {
                filters.push(format!("modified GE '{a}'"));
            }
            let page = retry(|| {
                self.session
                    .alerts_page(&filters, "modified:ascending", offset, PAGE)
            })
            .await?;
            let (count, more) = (page.members.len(), page.more);
            let mut last: Option<String> = None;
            let mut at_last: HashSet<String> = HashSet::new();
            for alert in page.members {
                let modified = alert
                    .get("modified")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let uri = alert
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if modified.is_some() && modified == after && boundary.contains(&uri) {
                    continue;
                }
                if modified != last {
                    at_last.clear();
                    last.clone_from(&modified);
                }
                at_last.insert(uri);
                listed.newest = listed.newest.max(modified);
                if let Some(ev) = scmb_model::message::alert_as_created_event(alert) {
                    if self.shared.filter.admits(&ev) {
                        self.fed.add();
                        self.lanes
                            .dispatch(Origin::CatchUp(self.fed.clone()), ev)
                            .await;
                        listed.fed += 1;
                    }
                }
            }
            if !more || count == 0 || *self.stop.borrow() {
                return Ok(listed);
            }
            match last {
                // The page moved past the boundary: ask again from its last value.
                Some(l) if after.as_ref().is_none_or(|a| l > *a) => {
                    after = Some(l);
                    boundary = at_last;
                    offset = 0;
                }
                // A whole page at one value (or an appliance that does not sort): step on.
                _ => {
                    boundary.extend(at_last);
                    offset += count;
                }
            }
        }
        tracing::warn!(
            state,
            "catch-up: the listing did not end after {MAX_PAGES} pages; stopping it"
        );
        Err(OneViewError::Config(
            "the alert listing did not end".to_string(),
        ))
    }

    /// Feeds the clears and deletions the sinks missed while nobody listened: every alert a
    /// sink holds something open for (an incident) is read as it is now, a few at a time, and
    /// a cleared one is fed as its clear, a vanished one as its deletion. Returns how many.
    async fn reconcile_open(&self) -> Result<usize, Failure> {
        let mut uris = std::collections::BTreeSet::new();
        for sink in &self.shared.sinks {
            uris.extend(sink.open_alerts().await?);
        }
        if uris.is_empty() {
            return Ok(0);
        }
        let total = uris.len();
        let mut pending = uris.into_iter();
        let mut reads = tokio::task::JoinSet::new();
        let (mut missed, mut unread) = (0usize, 0usize);
        loop {
            while reads.len() < RECONCILE_READS && !*self.stop.borrow() {
                let Some(uri) = pending.next() else { break };
                let session = self.session.clone();
                reads.spawn(async move {
                    let now = retry(|| session.alert(&uri)).await;
                    (uri, now)
                });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let Ok((uri, now)) = done else {
                unread += 1;
                continue;
            };
            let ev = match now {
                Ok(None) => scmb_model::message::alert_deleted_event(&uri),
                Ok(Some(a)) if a.get("alertState").and_then(Value::as_str) == Some("Cleared") => {
                    match scmb_model::message::alert_as_cleared_event(a) {
                        Some(ev) => ev,
                        None => continue,
                    }
                }
                Ok(Some(_)) => continue,
                Err(e) => {
                    tracing::warn!(alert = %uri, error = %e, "catch-up: cannot read an alert with an open ticket");
                    unread += 1;
                    continue;
                }
            };
            self.fed.add();
            self.lanes
                .dispatch(Origin::CatchUp(self.fed.clone()), ev)
                .await;
            missed += 1;
        }
        tracing::info!(
            open = total,
            cleared_or_deleted = missed,
            unread,
            "catch-up: alerts with an open ticket read as they are now"
        );
        if unread > 0 && !*self.stop.borrow() {
            return Err(Failure::new(
                crate::failure::UNREACHABLE,
                format!("{unread} of {total} alerts with an open ticket could not be read"),
            ));
        }
        Ok(missed)
    }

    /// The newest `modified` of any alert, as the appliance's time when it sends no `Date`.
    async fn newest_modified(&self) -> Option<time::OffsetDateTime> {
        let page: AlertPage = retry(|| self.session.alerts_page(&[], "modified:descending", 0, 1))
            .await
            .ok()?;
        let m = page.members.first()?.get("modified")?.as_str()?.to_string();
        time::OffsetDateTime::parse(&m, &time::format_description::well_known::Rfc3339).ok()
    }
}

/// A REST call of the catch-up, retrying transient failures (503, unreachable, an unusable
/// answer; an expired session is handled by the client) with backoff for about a minute.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, OneViewError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OneViewError>>,
{
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(16));
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e)
                if backoff.attempt() < 6
                    && (e.is_transient() || matches!(e, OneViewError::BadResponse { .. })) =>
            {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "catch-up: a REST call failed; retrying");
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(e),
        }
    }
}
