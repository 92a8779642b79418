//! The listener: subscribe, decode, filter, print, and only then ack. A malformed message is
//! logged with its reason, counted and rejected without requeue; it never stops the consumer.
//! A lost connection is re-established with jittered, capped exponential backoff (the first
//! connection must succeed: its failure is reported to the user at once).

use std::io::IsTerminal;
use std::time::Duration;

use scmb_bus::{BusConfig, BusError, Delivery, Subscription};
use scmb_model::{peek, Filter};

use crate::cli::Output;
use crate::duration::LookBack;
use crate::failure::Failure;
use crate::sinks::format::Printer;
use crate::store::{Store, CHECKPOINT};

/// Counters of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub received: u64,
    pub printed: u64,
    pub malformed: u64,
    pub reconnects: u64,
}

pub struct Listener {
    pub bus: BusConfig,
    pub filter: Filter,
    pub output: Output,
    pub max_bytes: usize,
    /// Stop after printing this many messages.
    pub count: Option<u64>,
    /// REST catch-up (list + watch), when asked for.
    pub catch_up: Option<CatchUp>,
    /// `--auto-bootstrap`: a session to download regenerated certificates with.
    pub bootstrap: Option<std::sync::Arc<scmb_oneview::Session>>,
}

/// Catch-up: alerts raised while the bus was not listened to, read over REST and printed like
/// bus messages, de-duplicated by uri + eTag against what this run already printed.
pub struct CatchUp {
    pub session: std::sync::Arc<scmb_oneview::Session>,
    /// Where the checkpoint and what was printed are kept across restarts.
    pub store: Option<Store>,
    /// How far back the first start looks.
    pub look_back: crate::duration::LookBack,
}

/// Margin for clock skew between us and the appliance.
const CLOCK_MARGIN: time::Duration = time::Duration::minutes(10);

/// What was printed (uri, eTag), so the catch-up does not print it twice — in memory, and in
/// the state store with `--catch-up` so that a restart does not print it again either.
#[derive(Default)]
struct Seen {
    /// Only a catch-up can print something twice: without one there is nothing to track.
    enabled: bool,
    mem: std::collections::HashSet<(String, String)>,
    store: Option<Store>,
    /// The last catch-up was incomplete: the checkpoint must not advance until one succeeds.
    frozen: bool,
}

impl Seen {
    /// Records the alert `uri` as it is at `etag`; false when it was printed before.
    async fn insert(&mut self, uri: &str, etag: &str) -> bool {
        if !self.enabled {
            return true;
        }
        if self.mem.len() > 200_000 {
            self.mem.clear();
        }
        let key = (uri.to_string(), etag.to_string());
        if self.mem.contains(&key) {
            return false;
        }
        if let Some(store) = &self.store {
            let u = uri.to_string();
            let before = store.call(move |s| s.printed(&u)).await.ok().flatten();
            if before.as_deref() == Some(etag) {
                self.mem.insert(key);
                return false;
            }
            if let Err(e) = store.set_printed_async(uri, etag).await {
                tracing::warn!(error = %e, "cannot record a printed alert");
            }
        }
        self.mem.insert(key);
        true
    }

    /// Records that everything up to now was seen (the next start catches up from here).
    async fn checkpoint(&self) {
        if self.frozen {
            return;
        }
        if let Some(store) = &self.store {
            let now = scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc());
            if let Err(e) = store.call(move |s| s.set_meta(CHECKPOINT, &now)).await {
                tracing::warn!(error = %e, "cannot save the catch-up checkpoint");
            }
        }
    }

    async fn last_checkpoint(&self) -> Option<time::OffsetDateTime> {
        let store = self.store.as_ref()?;
        let cp = store.call(|s| s.meta(CHECKPOINT)).await.ok()??;
        time::OffsetDateTime::parse(&cp, &time::format_description::well_known::Rfc3339).ok()
    }
}

/// Lists alerts for a catch-up, retrying transient failures (503, unreachable, expired
/// session is handled by the client) with backoff for about a minute.
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

enum End {
    Shutdown,
    CountReached,
    Lost,
}

fn now() -> String {
    scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc())
}

/// Delay before reconnect attempt `attempt` (jittered, capped at 30 s).
pub fn backoff(attempt: u32) -> Duration {
    scmb_servicemanager::backoff(attempt, Duration::from_millis(500), Duration::from_secs(30))
}

/// Whether retrying could help.
fn transient(e: &BusError) -> bool {
    matches!(
        e,
        BusError::Unreachable { .. } | BusError::Amqp(_) | BusError::Handshake { .. }
    )
}

impl Listener {
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Stats, Failure> {
        let mut stats = Stats::default();
        let stdout = std::io::stdout();
        let colour = self.output == Output::Human && crate::telemetry::colour(stdout.is_terminal());
        let mut printer = Printer::new(stdout.lock(), self.output, colour);
        tokio::pin!(shutdown);
        let mut seen = Seen {
            enabled: self.catch_up.is_some(),
            store: self.catch_up.as_ref().and_then(|c| c.store.clone()),
            ..Seen::default()
        };
        let mut sub = scmb_bus::subscribe(&self.bus).await?;
        if let Some(c) = &self.catch_up {
            // From the last checkpoint of a previous run; at the first start, the look-back.
            let since = match (seen.last_checkpoint().await, c.look_back) {
                (Some(cp), _) => Some(Some(cp - CLOCK_MARGIN)),
                (None, LookBack::All) => Some(None),
                (None, LookBack::None) => None,
                (None, LookBack::Window(w)) => Some(Some(time::OffsetDateTime::now_utc() - w)),
            };
            if let Some(since) = since {
                if self
                    .catch_up(c, since, &mut printer, &mut stats, &mut seen)
                    .await?
                {
                    sub.close().await;
                    return Ok(stats);
                }
            }
        }
        loop {
            match self
                .consume(&mut sub, &mut printer, &mut stats, &mut shutdown, &mut seen)
                .await?
            {
                End::Shutdown | End::CountReached => {
                    seen.checkpoint().await;
                    sub.close().await;
                    return Ok(stats);
                }
                End::Lost => {
                    tracing::warn!(host = %self.bus.host, "connection to the message bus lost; reconnecting");
                }
            }
            let lost_at = time::OffsetDateTime::now_utc();
            let mut attempt = 0;
            sub = loop {
                let wait = backoff(attempt);
                tokio::select! {
                    _ = &mut shutdown => return Ok(stats),
                    _ = tokio::time::sleep(wait) => {}
                }
                match scmb_bus::subscribe(&self.bus).await {
                    Ok(s) => {
                        stats.reconnects += 1;
                        tracing::info!(
                            reconnects = stats.reconnects,
                            "reconnected to the message bus"
                        );
                        if let Some(c) = &self.catch_up {
                            let since = Some(lost_at - CLOCK_MARGIN);
                            if self
                                .catch_up(c, since, &mut printer, &mut stats, &mut seen)
                                .await?
                            {
                                s.close().await;
                                return Ok(stats);
                            }
                        }
                        break s;
                    }
                    Err(e) if transient(&e) => {
                        attempt += 1;
                        tracing::warn!(error = %e, retry_in_ms = backoff(attempt).as_millis() as u64, "reconnect failed");
                    }
                    Err(e) if self.refresh_certificates(&e).await => attempt = 0,
                    Err(e) => return Err(e.into()),
                }
            };
        }
    }

    /// `--auto-bootstrap`: see [`crate::bootstrap::refresh_certificates`].
    async fn refresh_certificates(&self, e: &scmb_bus::BusError) -> bool {
        let Some(session) = &self.bootstrap else {
            return false;
        };
        let dir = self.bus.ca.parent().unwrap_or(std::path::Path::new("."));
        crate::bootstrap::refresh_certificates(session, dir, e).await
    }

    /// Prints the admitted active/locked alerts modified since `since` (all when `None`) that
    /// were not printed yet. Returns true when `--count` was reached.
    async fn catch_up<W: std::io::Write>(
        &self,
        c: &CatchUp,
        since: Option<time::OffsetDateTime>,
        printer: &mut Printer<W>,
        stats: &mut Stats,
        seen: &mut Seen,
    ) -> Result<bool, Failure> {
        let mut printed = 0;
        let mut complete = true;
        for state in ["Active", "Locked"] {
            let mut filters = vec![format!("alertState='{state}'")];
            if let Some(t) = since {
                filters.push(format!(
                    "modified GE '{}'",
                    scmb_model::message::format_rfc3339_ms(t)
                ));
            }
            let alerts = match list_with_retry(&c.session, &filters).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "catch-up: cannot list the {state} alerts; the checkpoint stays where it was");
                    complete = false;
                    continue;
                }
            };
            for alert in alerts {
                let Some(ev) = scmb_model::message::alert_as_created_event(alert) else {
                    continue;
                };
                if self.filter.admits(&ev)
                    && seen
                        .insert(&ev.resource_uri, ev.str("eTag").unwrap_or(""))
                        .await
                {
                    printer.print(&ev, &now()).map_err(|e| {
                        Failure::new(
                            crate::failure::UNEXPECTED,
                            format!("cannot write the output: {e}"),
                        )
                    })?;
                    stats.printed += 1;
                    printed += 1;
                    if self.count.is_some_and(|n| stats.printed >= n) {
                        return Ok(true);
                    }
                }
            }
        }
        // An incomplete catch-up must not move the checkpoint past what it missed.
        seen.frozen = !complete;
        seen.checkpoint().await;
        tracing::info!(printed, complete, "catch-up done");
        Ok(false)
    }

    async fn consume<W: std::io::Write>(
        &self,
        sub: &mut Subscription,
        printer: &mut Printer<W>,
        stats: &mut Stats,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
        seen: &mut Seen,
    ) -> Result<End, Failure> {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acks = Acks {
            through: None,
            pending: 0,
            batch: (usize::from(self.bus.prefetch) / 4).clamp(1, ACK_BATCH),
        };
        loop {
            let d = match sub.try_next() {
                Some(d) => d,
                None if acks.pending > 0 => {
                    // Nothing waiting yet, but more is probably on its way: settle what is done
                    // after a short linger rather than with a frame per message.
                    tokio::select! {
                        _ = shutdown.as_mut() => { acks.flush(sub).await; return Ok(End::Shutdown) }
                        _ = tokio::time::sleep(ACK_LINGER) => { acks.flush(sub).await; continue; }
                        d = sub.next() => match d {
                            Some(d) => d,
                            None => return Ok(End::Lost),
                        },
                    }
                }
                None => {
                    tokio::select! {
                        _ = shutdown.as_mut() => return Ok(End::Shutdown),
                        // While connected everything arrives on the queue: advance the checkpoint.
                        _ = tick.tick() => { seen.checkpoint().await; continue; }
                        d = sub.next() => match d {
                            Some(d) => d,
                            None => return Ok(End::Lost),
                        },
                    }
                }
            };
            stats.received += 1;
            if self.handle(&d, printer, stats, seen).await? {
                acks.done(d.delivery_tag);
                if acks.pending >= acks.batch {
                    acks.flush(sub).await;
                }
            }
            if self.count.is_some_and(|c| stats.printed >= c) {
                acks.flush(sub).await;
                return Ok(End::CountReached);
            }
        }
    }

    /// Decodes only what the filter needs; prints what it admits. True when the delivery's
    /// work is done and it may be acked (a malformed one is rejected here instead).
    async fn handle<W: std::io::Write>(
        &self,
        d: &Delivery,
        printer: &mut Printer<W>,
        stats: &mut Stats,
        seen: &mut Seen,
    ) -> Result<bool, Failure> {
        match peek(&d.routing_key, &d.body, self.max_bytes) {
            Err(reason) => {
                stats.malformed += 1;
                tracing::warn!(routing_key = %d.routing_key, bytes = d.body.len(), error = %reason, malformed = stats.malformed, "malformed message rejected");
                if let Err(e) = d.reject().await {
                    tracing::error!(error = %e, "reject failed");
                }
                Ok(false)
            }
            Ok(p) => {
                if self.filter.admits_peek(&p)
                    && seen
                        .insert(&p.resource_uri, p.etag.as_deref().unwrap_or(""))
                        .await
                {
                    // Not acked on failure: the broker redelivers it to whoever listens next.
                    printer
                        .print_delivery(&d.routing_key, &d.body, &now())
                        .map_err(|e| {
                            Failure::new(
                                crate::failure::UNEXPECTED,
                                format!("cannot write the output: {e}"),
                            )
                        })?;
                    stats.printed += 1;
                }
                Ok(true)
            }
        }
    }
}

/// Most deliveries settled by one `multiple` ack (a quarter of the prefetch, at most this):
/// the broker keeps sending while earlier deliveries await their ack.
const ACK_BATCH: usize = 250;

/// How long done work may wait for its ack when no delivery is waiting.
const ACK_LINGER: Duration = Duration::from_millis(5);

/// Acks owed: every delivery up to `through` is done (deliveries are handled in order).
struct Acks {
    through: Option<u64>,
    pending: usize,
    batch: usize,
}

impl Acks {
    fn done(&mut self, tag: u64) {
        self.through = Some(tag);
        self.pending += 1;
    }

    async fn flush(&mut self, sub: &Subscription) {
        if let Some(tag) = self.through.take() {
            self.pending = 0;
            if let Err(e) = sub.ack_through(tag).await {
                tracing::error!(error = %e, "ack failed; the messages may come again on a redelivery");
            }
        }
    }
}
