//! Calls to OneView made by a sink (reading an alert, writing its note), retried the one way
//! every sink retries them: transient failures after a capped backoff (counted as
//! `scmb_retries_total{target="oneview"}`), withdrawn credentials or rights by pausing until an
//! operator fixes them (the work is kept), anything else given up at once. A stop ends every
//! wait. Used by the ticketing core ([`crate::sinks::ticketing`]) and the event core
//! ([`crate::sinks::eventing`]); it knows nothing of either, nor of the store.

use std::future::Future;
use std::time::Duration;

use scmb_oneview::{OneViewError, Session};
use serde_json::Value;
use tokio::sync::watch;

use crate::telemetry::ApplianceMetrics;

/// How a OneView call ended.
#[derive(Debug)]
pub enum OvAttempt<T> {
    Ok(T),
    /// Failed for good, with why.
    Permanent(String),
    /// A stop came first.
    Interrupted,
}

/// What to do about a OneView failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvClass {
    /// Credentials or rights withdrawn: an operator must act; pause, keep the work.
    Pause,
    /// Passing: again after a backoff.
    Retry,
    /// Retrying cannot help.
    Permanent,
}

/// THE classification of a failed OneView call made by a sink.
pub fn ov_class(e: &OneViewError) -> OvClass {
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

/// Sleeps `d` unless a stop comes first (then, or when it had already come, false).
pub async fn pause(stop: &watch::Receiver<bool>, d: Duration) -> bool {
    let mut rx = stop.clone();
    if *rx.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = rx.wait_for(|s| *s) => false,
    }
}

/// How often in a row an alert may change between our read and our write (412) before the
/// next attempt waits a backoff.
const NOTE_RACES: u32 = 5;

/// How writing a note once went.
#[derive(Debug)]
pub enum NoteOnce {
    /// Written now: the alert as updated.
    Written(Value),
    /// Already in the alert's change log (an earlier write landed): the alert as read.
    There(Value),
    /// The alert is gone.
    Gone,
    /// OneView refused to read or write it for good, with why.
    Refused(String),
    /// A stop came first.
    Interrupted,
}

/// What a sink's OneView retries need: its stop, its metrics, its backoff.
#[derive(Clone, Copy)]
pub struct OvRetry<'a> {
    pub stop: &'a watch::Receiver<bool>,
    pub metrics: &'a ApplianceMetrics,
    /// The first retry's delay.
    pub base: Duration,
    /// The longest delay between retries, and the pause while credentials are refused.
    pub cap: Duration,
}

impl OvRetry<'_> {
    /// Sleeps `d` unless a stop comes first (then false).
    pub async fn pause(&self, d: Duration) -> bool {
        pause(self.stop, d).await
    }

    /// Runs a OneView call until it succeeds, fails for good, or a stop comes.
    pub async fn run<T, F, Fut>(&self, what: &str, mut f: F) -> OvAttempt<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OneViewError>>,
    {
        let mut backoff = self.backoff();
        loop {
            match f().await {
                Ok(v) => return OvAttempt::Ok(v),
                Err(e) => {
                    if !self.wait(what, &e, &mut backoff).await {
                        return match ov_class(&e) {
                            OvClass::Permanent => OvAttempt::Permanent(e.to_string()),
                            _ => OvAttempt::Interrupted,
                        };
                    }
                }
            }
        }
    }

    /// Writes `text` into the alert's notes exactly once: unless `noted` finds it in the
    /// alert as read (`alert`, when the caller just read it, else read here), guarded by that
    /// read's eTag. After a 412 (the alert changed) or a failed write (which may have
    /// happened all the same: a timeout, a lost answer), the alert is read again and checked
    /// before any other write, so a repeat never adds the note twice.
    pub async fn note_once(
        &self,
        ov: &Session,
        uri: &str,
        text: &str,
        noted: impl Fn(&Value) -> bool,
        mut alert: Option<Value>,
    ) -> NoteOnce {
        let (mut backoff, mut races) = (self.backoff(), 0u32);
        loop {
            let current = match alert.take() {
                Some(a) => a,
                None => match self.run("reading the alert", || ov.alert(uri)).await {
                    OvAttempt::Ok(Some(a)) => a,
                    OvAttempt::Ok(None) => return NoteOnce::Gone,
                    OvAttempt::Permanent(e) => return NoteOnce::Refused(e),
                    OvAttempt::Interrupted => return NoteOnce::Interrupted,
                },
            };
            if noted(&current) {
                return NoteOnce::There(current);
            }
            let put = match current.get("eTag").and_then(Value::as_str) {
                Some(etag) => ov.add_alert_note_if(uri, text, etag).await,
                // No eTag to guard the write with: a plain one.
                None => ov.add_alert_note(uri, text).await.map(Some),
            };
            match put {
                Ok(Some(a)) => return NoteOnce::Written(a),
                // Changed since read: read it again (it may even carry our note now).
                Ok(None) if races < NOTE_RACES => races += 1,
                Ok(None) => {
                    races = 0;
                    let d = backoff.next_delay();
                    self.metrics.retry(
                        "oneview",
                        "writing the note",
                        backoff.attempt(),
                        d,
                        "the alert keeps changing (412)",
                    );
                    if !self.pause(d).await {
                        return NoteOnce::Interrupted;
                    }
                }
                // The write may have happened: read the alert again before another.
                Err(e) => {
                    if !self.wait("writing the note", &e, &mut backoff).await {
                        return match *self.stop.borrow() {
                            true => NoteOnce::Interrupted,
                            false => NoteOnce::Refused(e.to_string()),
                        };
                    }
                }
            }
        }
    }

    /// A fresh backoff for one retry loop, with this policy's bounds.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(self.base, self.cap)
    }

    /// After a failed OneView call (`backoff`: the loop's delays and retries so far, counted
    /// up here): waits as its class says and returns true to go on; false for a permanent
    /// failure or when a stop came.
    pub async fn wait(
        &self,
        what: &str,
        e: &OneViewError,
        backoff: &mut crate::retry::Backoff,
    ) -> bool {
        match ov_class(e) {
            OvClass::Permanent => false,
            // Nothing is dropped meanwhile: the message stays unacked and the work is retried.
            OvClass::Pause => {
                tracing::error!(error = %e, pause_secs = self.cap.as_secs(), "OneView refused our credentials or rights while {what}: check the user and password; pausing");
                self.pause(self.cap).await
            }
            OvClass::Retry => {
                let d = backoff.next_delay();
                self.metrics
                    .retry("oneview", what, backoff.attempt(), d, &e.to_string());
                self.pause(d).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> OneViewError {
        OneViewError::Api {
            status,
            error_code: String::new(),
            message: "no".into(),
            recommended_actions: vec![],
        }
    }

    #[test]
    fn oneview_failures_are_classified_in_one_place() {
        assert_eq!(ov_class(&OneViewError::SessionExpired), OvClass::Pause);
        for (statuses, class) in [
            (&[401, 403][..], OvClass::Pause),
            (&[408, 429, 500, 503][..], OvClass::Retry),
            (&[400, 404, 412][..], OvClass::Permanent),
        ] {
            for s in statuses {
                assert_eq!(ov_class(&api(*s)), class, "{s}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_early_on_a_stop() {
        let (tx, rx) = watch::channel(false);
        assert!(pause(&rx, Duration::from_millis(10)).await);
        let waiting = tokio::spawn(async move { pause(&rx, Duration::from_secs(3600)).await });
        tokio::task::yield_now().await;
        tx.send_replace(true);
        assert!(!waiting.await.expect("join"));
    }
}
