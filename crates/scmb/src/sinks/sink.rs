//! The one interface every destination of events implements. The pipeline knows sinks only
//! through it: what a sink wants to see, how one event went, and whether the sink is healthy.

use std::time::Duration;

use scmb_model::{Event, Filter, Peek};

/// How handling one event went. The pipeline acks a delivery once every sink that wanted it
/// answered [`Outcome::Done`] or [`Outcome::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done and recorded (or nothing to do): `what` for the debug log.
    Done(String),
    /// Not now: the pipeline calls again after this delay (the delivery stays unacked).
    Retry(Duration),
    /// Failed for good (recorded, logged and counted by the sink): retrying cannot help.
    Failed(String),
    /// The sink sent a change and got no usable answer (a timeout, a lost connection, a
    /// success it cannot read): the change may have happened. The delivery stays unacked and
    /// the pipeline calls again after `after`. A sink answers this only when it recorded,
    /// before sending, an idempotency key (a reference) it looks up on that next call, before
    /// sending anything again — in this process or, after a crash, in the next one.
    Unknown { reason: String, after: Duration },
    /// A stop came first: the delivery stays unacked for a redelivery or the next catch-up.
    Interrupted,
}

/// A failure that stops the appliance's pipeline (its store is unusable, its output closed).
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
    /// The exit code a command reports for it (`crate::failure`).
    pub code: u8,
}

impl SinkError {
    pub fn new(sink: &'static str, code: u8, message: impl Into<String>) -> SinkError {
        SinkError {
            sink,
            message: message.into(),
            code,
        }
    }
}

impl From<SinkError> for crate::failure::Failure {
    fn from(e: SinkError) -> Self {
        crate::failure::Failure::new(e.code, e.message)
    }
}

/// One destination of events.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name: its config table, its metrics label.
    fn name(&self) -> &'static str;

    /// Whether it wants this message, judged from the borrowed peek (the pipeline decodes a
    /// message in full only when some sink wants it). `filter` is the appliance's filter.
    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        filter.admits_peek(ev)
    }

    /// Whether it prints what the filter admits: the pipeline then makes sure a catch-up does
    /// not show it an alert, as it is now, twice.
    fn prints(&self) -> bool {
        false
    }

    /// Handles one event it wanted.
    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError>;

    /// The alerts (uris) for which it holds something open that the alert's clear or deletion
    /// must close (an incident not resolved yet). After each (re)connect the pipeline reads
    /// each one's current state over REST and feeds it the clear or deletion it missed while
    /// nobody listened.
    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        Ok(Vec::new())
    }

    /// Work the sink does beside the events while the pipeline runs (polling its destination
    /// for changes to bring back): the pipeline spawns it once at its start, and it returns at
    /// the stop (`SinkContext::stop`). None by default.
    async fn beside(&self) {}

    /// Checks the destination (reachable, credentials accepted) without changing anything:
    /// `scmb check`, and the start of a command.
    async fn healthcheck(&self) -> Result<String, SinkError>;
}
