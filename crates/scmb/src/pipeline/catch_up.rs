//! REST catch-up: after every (re)connect, the alerts raised (or left unfinished) while the
//! bus was not listened to are read over REST and fed through the lanes like bus messages.
//! One checkpoint meaning for every command: the time from which the next catch-up lists,
//! saved only once everything fed before it is finished.

use std::time::Duration;

use scmb_model::message::format_rfc3339_ms;

use super::lanes::Dispatcher;
use super::{store_failure, Pipeline};
use crate::duration::LookBack;
use crate::failure::Failure;
use crate::store::{Store, CHECKPOINT};

/// Margin for clock skew between us and the appliance when checkpointing.
const CLOCK_MARGIN: time::Duration = time::Duration::minutes(10);

impl Pipeline {
    /// Reads the active and locked alerts over REST and feeds the ones the filter admits
    /// through the lanes, as if they had just been created; the store skips what was already
    /// handled. The checkpoint moves once every lane has worked through them.
    pub(super) async fn catch_up(&self, lanes: &Dispatcher) -> Result<(), Failure> {
        let (Some(store), Some(session)) = (self.shared.store.clone(), self.session.as_ref())
        else {
            return Ok(());
        };
        let checkpoint = store
            .call(|s| s.meta(CHECKPOINT))
            .await
            .map_err(store_failure)?;
        // Everything modified from here on (less a margin for clock skew) is either fed below
        // or arrives on the queue; once the lanes are through it, it is the next checkpoint.
        let next = format_rfc3339_ms(time::OffsetDateTime::now_utc() - CLOCK_MARGIN);
        let mut fed = 0usize;
        let mut complete = true;
        for state in ["Active", "Locked"] {
            let mut filters = vec![format!("alertState='{state}'")];
            if let Some(cp) = &checkpoint {
                filters.push(format!("modified GE '{cp}'"));
            }
            let alerts = match list_with_retry(session, &filters).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up: cannot list the {state} alerts; continuing with the bus only");
                    complete = false;
                    continue;
                }
            };
            for alert in alerts {
                let Some(ev) = scmb_model::message::alert_as_created_event(alert) else {
                    continue;
                };
                if !self.shared.filter.admits(&ev) {
                    continue;
                }
                lanes.dispatch(None, ev).await;
                fed += 1;
            }
        }
        self.shared.metrics.catch_up(fed, complete);
        if !complete {
            return Ok(());
        }
        // When nothing is in work any more, what was fed is handled.
        let idle = lanes.idle_owned();
        let stopping = self.stop_tx.subscribe();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            idle.await;
            if *stopping.borrow() {
                return; // interrupted work may sit before the barrier
            }
            let cp = next.clone();
            match store.call(move |s| s.set_meta(CHECKPOINT, &cp)).await {
                Ok(()) => tracing::debug!(checkpoint = %next, "catch-up checkpoint saved"),
                Err(e) => tracing::warn!(error = %e, "cannot save the catch-up checkpoint"),
            }
        }));
        Ok(())
    }
}

/// Lists alerts for a catch-up, retrying transient failures (503, unreachable; an expired
/// session is handled by the client) with backoff for about a minute. Oldest first.
pub async fn list_with_retry(
    session: &scmb_oneview::Session,
    filters: &[String],
) -> Result<Vec<serde_json::Value>, scmb_oneview::OneViewError> {
    let mut attempt = 0;
    loop {
        match session.alerts(filters, 500).await {
            Ok(mut a) => {
                // Oldest first, as they happened (the appliance lists newest first).
                a.sort_by(|x, y| x["created"].as_str().cmp(&y["created"].as_str()));
                return Ok(a);
            }
            Err(e)
                if attempt < 6
                    && (e.is_transient()
                        || matches!(e, scmb_oneview::OneViewError::BadResponse { .. })) =>
            {
                let d = scmb_servicemanager::backoff(
                    attempt,
                    Duration::from_millis(500),
                    Duration::from_secs(16),
                );
                attempt += 1;
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "catch-up: listing alerts failed; retrying");
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// With no checkpoint yet, the look-back sets the first one.
pub(super) async fn first_start_checkpoint(store: &Store, look: LookBack) -> Result<(), Failure> {
    if store
        .call(|s| s.meta(CHECKPOINT))
        .await
        .map_err(store_failure)?
        .is_some()
    {
        return Ok(());
    }
    let window = match look {
        LookBack::All => return Ok(()),
        LookBack::None => time::Duration::ZERO,
        LookBack::Window(w) => time::Duration::try_from(w).unwrap_or(time::Duration::MAX),
    };
    let now = time::OffsetDateTime::now_utc();
    let cp = format_rfc3339_ms(
        now.checked_sub(window)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    );
    tracing::info!(checkpoint = %cp, "first start: catching up on alerts modified since");
    store
        .call(move |s| s.set_meta(CHECKPOINT, &cp))
        .await
        .map_err(store_failure)
}
