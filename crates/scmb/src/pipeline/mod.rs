//! The one data path, from a delivery to its ack, for every command (the `scmb` listener,
//! `ov_to_sm`, each appliance of `scmb run`): subscribe, peek, ask the sinks whether they
//! want it, decode only then, hand each event to the lanes (one alert's events stay in
//! order, different alerts are worked on in parallel), pass it through the sinks, and ack
//! only the contiguous prefix of finished deliveries.
//!
//! After every (re)connect a REST catch-up feeds the alerts raised meanwhile through the same
//! lanes; its checkpoint moves only once a barrier has passed every lane. The pipeline never
//! reaches back into the bus beyond acking, and it never exits the process: it returns, and
//! its caller decides (exit code for `ov_to_sm`, a supervised restart for `scmb run`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scmb_bus::{BusConfig, Delivery};
use scmb_model::peek;
use scmb_model::{Event, Filter};
use scmb_oneview::Session;
use tokio::sync::{mpsc, watch};

mod acks;
mod catch_up;
mod connect;
mod lanes;

pub(crate) use connect::transient;

use acks::Acks;
use lanes::{Dispatcher, Origin, Ticket};

use crate::bootstrap;
use crate::duration::LookBack;
use crate::failure::{self, Failure};
use crate::settings::Appliance;
use crate::sinks::{Outcome, Sink, SinkContext};
use crate::store::{Store, StoreError};
use crate::telemetry::ApplianceMetrics;

/// What every lane shares.
struct Shared {
    metrics: ApplianceMetrics,
    filter: Filter,
    sinks: Vec<Arc<dyn Sink>>,
    /// Some sink prints what the filter admits: a catch-up must not show it twice.
    prints: bool,
    /// What was printed lately (uri → eTag): fresh deliveries, which do not ask the store,
    /// are checked against it (the store's own answer includes what it has not committed).
    printed: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// What this connection's catch-up printed (uri → eTag), all of it: the only earlier
    /// print a fresh delivery can repeat (a change published before the listing read it).
    caught_up: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The queue outlives us (`--queue`): a delivery may have been seen by an earlier run.
    durable_queue: bool,
    stop: watch::Receiver<bool>,
    /// Where outcomes, what was printed and the catch-up checkpoint are kept (none for a
    /// listener without catch-up: it keeps nothing). Declared last, so dropped last: closing
    /// the database allocates (redb writes its allocator state), best once the rest is freed.
    store: Option<Store>,
}

/// A pipeline ready to run: logged in (when something needs REST), store open, sinks built.
pub struct Pipeline {
    shared: Arc<Shared>,
    bus: BusConfig,
    cert_dir: PathBuf,
    session: Option<Arc<Session>>,
    /// A sink asks for a stop (the listener's `--count` reached).
    finish: Arc<tokio::sync::Notify>,
    max_bytes: usize,
    lanes: usize,
    catch_up: bool,
    /// How far back the first start catches up.
    look_back: LookBack,
    auto_bootstrap: bool,
    /// On a stop, how long work in hand may take to finish.
    drain: Duration,
    keep_alive: Option<Duration>,
    stop_tx: watch::Sender<bool>,
}

fn store_failure(e: StoreError) -> Failure {
    Failure::from(e)
}

/// A sink's health at start: refused credentials stop the command (exit 3, the setting to fix
/// in the message) instead of surfacing at the first alert; a destination that cannot be
/// reached now is only warned about (the work waits, unacked, and is retried).
async fn check_at_start(sink: &dyn Sink) -> Result<(), Failure> {
    match sink.healthcheck().await {
        Ok(what) => {
            tracing::info!(sink = sink.name(), "{what}");
            Ok(())
        }
        Err(e) if e.code == failure::AUTH => Err(e.into()),
        Err(e) => {
            tracing::warn!(sink = sink.name(), error = %e.message, "cannot be checked now; its work will wait and be retried");
            Ok(())
        }
    }
}

/// Opens the store, creating its directory.
fn open_store(path: &std::path::Path, cache_bytes: usize) -> Result<Store, Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            Failure::new(
                failure::UNEXPECTED,
                format!(
                    "cannot create the state directory {}: {e}",
                    parent.display()
                ),
            )
        })?;
    }
    Store::open_with_cache(path, cache_bytes).map_err(store_failure)
}

impl Pipeline {
    /// Opens the store, logs in to REST and builds the sinks. Connects to nothing else.
    pub async fn build(spec: Appliance, metrics: ApplianceMetrics) -> Result<Pipeline, Failure> {
        let filter = spec.filter;
        // Ticketing always catches up: an alert raised while down must still get its incident.
        let catch_up = spec.catch_up || spec.sinks.tickets();
        let store = match &spec.store {
            Some(path) if catch_up || spec.sinks.tickets() => Some(open_store(
                path,
                if spec.sinks.tickets() {
                    crate::store::TICKETING_CACHE_BYTES
                } else {
                    crate::store::SMALL_CACHE_BYTES
                },
            )?),
            _ => None,
        };
        if catch_up && store.is_none() {
            return Err(Failure::new(
                failure::UNEXPECTED,
                "a catch-up needs a state store",
            ));
        }
        // Listening alone needs no password: REST only for what needs it, or where a
        // password was configured (a service proves its credentials at start).
        let session =
            if catch_up || spec.bus.auto_bootstrap || spec.sinks.tickets() || spec.login_at_start {
                Some(Arc::new(bootstrap::login(&spec.rest).await?))
            } else {
                if spec.rest.password.typed() {
                    tracing::debug!("listening needs no REST login: the password is not used");
                }
                None
            };
        let fits = spec.bus.prefetch_that_fits();
        let mut bus = spec.bus.config;
        let lanes = spec.lanes.max(1);
        // Enough ahead to keep every lane busy, but the broker sends up to `prefetch` messages
        // whatever their size: memory is bounded by prefetch × the largest message, so the
        // prefetch fits the byte budget, whatever the lanes would like.
        let wanted = bus.prefetch.max((lanes * 4).min(u16::MAX as usize) as u16);
        bus.prefetch = wanted.min(fits);
        if bus.prefetch < wanted {
            tracing::info!(
                wanted,
                prefetch = bus.prefetch,
                max_message_bytes = spec.bus.max_message_bytes,
                max_in_flight_bytes = spec.bus.max_in_flight_bytes,
                "prefetch lowered so that the messages held at once stay within --max-in-flight-bytes"
            );
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let finish = Arc::new(tokio::sync::Notify::new());
        let sinks = crate::sinks::build(
            &spec.sinks,
            &SinkContext {
                label: spec.label.clone(),
                store: store.clone(),
                session: session.clone(),
                metrics: metrics.clone(),
                stop: stop_rx.clone(),
                finish: finish.clone(),
                filter: filter.clone(),
            },
        )?;
        for sink in &sinks {
            check_at_start(sink.as_ref()).await?;
            metrics.sink_started(sink.name());
        }
        Ok(Pipeline {
            shared: Arc::new(Shared {
                metrics,
                filter,
                // What was printed is remembered only where a catch-up could print it again.
                prints: catch_up && sinks.iter().any(|s| s.prints()),
                printed: Default::default(),
                caught_up: Default::default(),
                durable_queue: bus.queue.is_some(),
                store,
                sinks,
                stop: stop_rx,
            }),
            bus,
            cert_dir: spec.rest.cert_dir,
            session,
            finish,
            max_bytes: spec.bus.max_message_bytes,
            lanes,
            catch_up,
            look_back: spec.look_back,
            auto_bootstrap: spec.bus.auto_bootstrap,
            drain: spec.bus.drain,
            keep_alive: spec.keep_alive,
            stop_tx,
        })
    }

    /// Consumes until `shutdown` resolves (then drains in-flight work, the drain time at most) or a
    /// failure that needs the caller (the first connection refused, the store unusable).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Failure> {
        let metrics = &self.shared.metrics;
        if let (Some(every), Some(session)) = (self.keep_alive, self.session.clone()) {
            // The REST session must not expire while the bus is quiet for a day.
            let mut stop = self.stop_tx.subscribe();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    match session.keep_alive().await {
                        Ok(_) => tracing::debug!("REST keep-alive sent"),
                        Err(e) => {
                            tracing::warn!(error = %e, "REST keep-alive failed; the next call will log in again")
                        }
                    }
                }
            }));
        }

        // What the sinks do beside the events (polling their destinations), until the stop.
        let beside: Vec<_> = self
            .shared
            .sinks
            .iter()
            .map(|s| {
                let s = s.clone();
                tokio::spawn(tracing::Instrument::in_current_span(async move {
                    s.beside().await
                }))
            })
            .collect();

        // At most `lanes` events in work at once; one alert's events one after another.
        let (fatal_tx, mut fatal_rx) = mpsc::channel::<Failure>(1);
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Ticket>();
        let lanes = Arc::new(Dispatcher::new(
            self.shared.clone(),
            self.lanes,
            fatal_tx.clone(),
            finished_tx,
        ));
        // The catch-up of the current connection, running beside the consumer.
        let mut catching_up: Option<tokio::task::JoinHandle<()>> = None;
        // Acks go out in batches (`multiple`) over the finished prefix: every `batch`
        // deliveries, or once nothing new arrived for `LINGER`.
        let batch = u64::from(self.bus.prefetch / 4).clamp(1, 250);
        let mut epoch = 0u64;
        let mut acks = Acks::default();
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        let mut lingering = false;

        tokio::pin!(shutdown);
        // One waiter for the whole run (not a new one per delivery): a sink asked for a stop.
        let finished = self.finish.notified();
        tokio::pin!(finished);
        let mut sub = match self.subscribe().await {
            Ok(s) => s,
            Err(e) => {
                metrics.disconnected(&e);
                return Err(e.into());
            }
        };
        metrics.connected(&sub.queue);
        // The loop's turns show the pipeline is alive (systemd's watchdog, `scmb run`): a
        // tick at least every HEARTBEAT, also while it waits for a lane or a catch-up.
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = crate::retry::reconnect();
        let result = 'outer: loop {
            // Catch-up: alerts raised (or left unfinished) while we were not listening, read
            // over REST while the bus flows.
            if let Some(old) = catching_up.take() {
                old.abort();
            }
            match self.catch_up_job(&lanes) {
                // One lane works in arrival order: what the catch-up finds comes first.
                Some(job) if self.lanes == 1 => {
                    let run = job.run();
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                            r = &mut run => if let Err(f) = r { break 'outer Err(f) } else { break },
                            _ = &mut shutdown => break 'outer Ok(()),
                            // A sink that has all it wanted (`--count`) within the catch-up: what
                            // it refuses after that is never finished, so the catch-up would wait
                            // for ever.
                            _ = &mut finished => break 'outer Ok(()),
                            _ = heartbeat.tick() => metrics.beat(),
                        }
                    }
                }
                Some(job) => {
                    let fatal = fatal_tx.clone();
                    catching_up = Some(tokio::spawn(tracing::Instrument::in_current_span(
                        async move {
                            if let Err(f) = job.run().await {
                                let _ = fatal.try_send(f);
                            }
                        },
                    )));
                }
                None => {}
            }
            loop {
                tokio::select! {
                    _ = &mut shutdown => break 'outer Ok(()),
                    _ = &mut finished => break 'outer Ok(()),
                    f = fatal_rx.recv() => break 'outer Err(f.unwrap_or_else(|| Failure::new(failure::UNEXPECTED, "workers stopped"))),
                    Some((e, tag)) = finished_rx.recv() => {
                        if e == epoch {
                            acks.finished(tag);
                        }
                    }
                    _ = heartbeat.tick() => metrics.beat(),
                    _ = &mut linger, if lingering => {
                        lingering = false;
                        flush(&sub, &mut acks, metrics).await;
                    }
                    d = sub.next() => {
                        let Some(d) = d else { break };
                        // Waiting for a free lane (every lane busy with a hanging sink) must
                        // not hide a stop: the delivery then stays unacked and comes again.
                        let take = self.take(d, epoch, &mut acks, &lanes);
                        tokio::pin!(take);
                        loop {
                            tokio::select! {
                                _ = &mut take => break,
                                _ = &mut shutdown => break 'outer Ok(()),
                                _ = heartbeat.tick() => metrics.beat(),
                            }
                        }
                    }
                }
                while let Ok((e, tag)) = finished_rx.try_recv() {
                    if e == epoch {
                        acks.finished(tag);
                    }
                }
                if acks.ready() >= batch {
                    lingering = false;
                    flush(&sub, &mut acks, metrics).await;
                } else if acks.ready() > 0 && !lingering {
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    lingering = true;
                }
            }
            metrics.disconnected(&"the connection to the message bus was lost; reconnecting");
            // The old channel's tags mean nothing to the next one: its unacked deliveries
            // come again (or are found by the catch-up) and are de-duplicated.
            epoch += 1;
            acks = Acks::default();
            lingering = false;
            let mut wait = backoff.next_delay();
            sub = loop {
                let until = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        _ = &mut shutdown => break 'outer Ok(()),
                        _ = tokio::time::sleep_until(until) => break,
                        _ = heartbeat.tick() => metrics.beat(),
                    }
                }
                match self.subscribe().await {
                    Ok(s) => {
                        backoff.reset();
                        metrics.reconnected(&s.queue);
                        break s;
                    }
                    Err(e) if connect::transient(&e) => {
                        wait = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "reconnect failed");
                    }
                    // Refused certificates auto-bootstrap could not replace, a refused
                    // identity: the caller decides (an exit code, a supervised restart).
                    Err(e) => break 'outer Err(e.into()),
                }
            };
        };
        // Stop: no new work; what is in work finishes (bounded), the rest stays unacked.
        let _ = self.stop_tx.send(true);
        if let Some(c) = catching_up.take() {
            c.abort();
        }
        if tokio::time::timeout(self.drain, async {
            lanes.idle().await;
            for b in beside {
                let _ = b.await;
            }
        })
        .await
        .is_err()
        {
            tracing::warn!(drain_ms = self.drain.as_millis() as u64, "in-flight work did not finish within the drain time; it stays unacked for a redelivery or the next catch-up");
        }
        while let Ok((e, tag)) = finished_rx.try_recv() {
            if e == epoch {
                acks.finished(tag);
            }
        }
        flush(&sub, &mut acks, metrics).await;
        if acks.unfinished() > 0 {
            tracing::info!(
                unacked = acks.unfinished(),
                "stopping with work unfinished: those messages come again"
            );
        }
        sub.close().await;
        match &result {
            Ok(()) => metrics.stopped(),
            // Not a bus failure (a store error, a sink that cannot go on): the caller says
            // what it is; it must not read as "not connected to the message bus".
            Err(_) => metrics.unavailable(),
        }
        result
    }

    /// The catch-up of a new connection, when there is one to do. With several lanes it runs
    /// as a task beside the consumer (the bus keeps flowing while it pages); with one, before
    /// the consumer, so that one lane's strict arrival order puts what it finds first.
    fn catch_up_job(&self, lanes: &Arc<Dispatcher>) -> Option<catch_up::CatchUp> {
        if !self.catch_up {
            return None;
        }
        let (Some(store), Some(session)) = (self.shared.store.clone(), self.session.clone()) else {
            return None;
        };
        Some(catch_up::CatchUp {
            shared: self.shared.clone(),
            session,
            store,
            lanes: lanes.clone(),
            look_back: self.look_back,
            stop: self.stop_tx.subscribe(),
            fed: Default::default(),
        })
    }

    /// One delivery: malformed ones are rejected; one no sink wants is finished at once;
    /// the others are decoded and handed to the lanes.
    async fn take(&self, d: Delivery, epoch: u64, acks: &mut Acks, lanes: &Dispatcher) {
        let metrics = &self.shared.metrics;
        metrics.received();
        let head = match peek(&d.routing_key, &d.body, self.max_bytes) {
            Err(reason) => {
                metrics.malformed(&d.routing_key, d.body.len(), &reason);
                // Settled here, for good: it never enters the ack order.
                if d.reject().await.is_ok() {
                    metrics.rejected();
                }
                return;
            }
            Ok(p) => {
                let wanted = self
                    .shared
                    .sinks
                    .iter()
                    .any(|s| s.wants(&self.shared.filter, &p));
                // Checked only once; decoded in full only when a sink asks for the body.
                wanted.then(|| p.head())
            }
        };
        acks.received(d.delivery_tag);
        match head {
            None => acks.finished(d.delivery_tag),
            Some(head) => {
                let seen = d.redelivered || self.shared.durable_queue;
                let mut ev = Event::delivered(d.routing_key, head, d.body);
                ev.first_sight = !seen;
                lanes
                    .dispatch(Origin::Bus((epoch, d.delivery_tag)), ev)
                    .await
            }
        }
    }
}

impl Shared {
    /// Passes one event through every sink that wants it; true when it may be acked (every
    /// such sink is done with it), false when a stop interrupted the work.
    async fn handle(&self, ev: &Event, origin: &Origin) -> Result<bool, Failure> {
        let peek = ev.peek();
        let admitted = self.filter.admits_peek(&peek);
        // Of the bus's deliveries (like `received`); what a catch-up feeds is counted apart.
        if admitted && matches!(origin, Origin::Bus(..)) {
            self.metrics.matched();
        }
        // An alert, as it is now (uri + eTag), printed before is not printed again (a
        // catch-up after a reconnect or a restart); the other sinks have their own records.
        let fresh = if admitted && self.prints {
            self.first_time(ev, origin).await?
        } else {
            true
        };
        for sink in &self.sinks {
            if !sink.wants(&self.filter, &peek) || (sink.prints() && !fresh) {
                continue;
            }
            let started = Instant::now();
            loop {
                let outcome = sink.handle(ev).await?;
                match outcome {
                    Outcome::Done(what) => {
                        tracing::debug!(alert = %ev.resource_uri, sink = sink.name(), outcome = %what, "handled");
                        break;
                    }
                    Outcome::Failed(reason) => {
                        tracing::warn!(alert = %ev.resource_uri, sink = sink.name(), reason = %reason, "failed for good");
                        break;
                    }
                    Outcome::Retry(after) | Outcome::Unknown { after, .. } => {
                        if let Outcome::Unknown { reason, .. } = &outcome {
                            self.metrics
                                .outcome_unknown(sink.name(), &ev.resource_uri, reason);
                        }
                        // The next call looks up what may have happened before acting again.
                        let mut stop = self.stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(after) => {}
                            _ = stop.wait_for(|s| *s) => return Ok(false),
                        }
                    }
                    Outcome::Interrupted => return Ok(false),
                }
            }
            self.metrics.sink_latency(sink.name(), started.elapsed());
        }
        if admitted && self.prints && fresh {
            self.mark_printed(ev, origin)?;
        }
        Ok(true)
    }

    /// False when printing it would repeat what was printed before. A delivery repeats an
    /// earlier print of the same alert as it was then (uri + eTag). A catch-up shows an
    /// alert as if just created, which the listener printed once whatever changed since: it
    /// repeats any earlier print of the alert. A fresh delivery (published after we
    /// subscribed) can only repeat what this connection's catch-up printed; anything else may
    /// repeat what an earlier run printed, which only the store knows.
    async fn first_time(&self, ev: &Event, origin: &Origin) -> Result<bool, Failure> {
        let etag = ev.etag().unwrap_or("");
        let caught_up = matches!(origin, Origin::CatchUp(_));
        let repeats = |before: &str| caught_up || before == etag;
        for m in [&self.printed, &self.caught_up] {
            if let Ok(m) = m.lock() {
                if m.get(&ev.resource_uri).is_some_and(|b| repeats(b)) {
                    return Ok(false);
                }
            }
        }
        // A delivery no earlier run can have seen (a catch-up's events never are).
        if ev.first_sight {
            return Ok(true);
        }
        let Some(store) = &self.store else {
            return Ok(true);
        };
        // Printed by an earlier run: the store's record is the only one.
        let before = store.printed(&ev.resource_uri).map_err(store_failure)?;
        Ok(!before.as_deref().is_some_and(repeats))
    }

    /// Records that this alert, as it is now, was printed: in memory at once, in the store
    /// with its next group commit (not awaited: the printing path does not wait for fsync).
    fn mark_printed(&self, ev: &Event, origin: &Origin) -> Result<(), Failure> {
        let etag = ev.etag().unwrap_or("").to_string();
        if matches!(origin, Origin::CatchUp(_)) {
            if let Ok(mut m) = self.caught_up.lock() {
                m.insert(ev.resource_uri.clone(), etag.clone());
            }
        }
        if let Ok(mut m) = self.printed.lock() {
            if m.len() >= PRINTED_IN_MEMORY {
                m.clear(); // the store still has them
            }
            m.insert(ev.resource_uri.clone(), etag.clone());
        }
        match &self.store {
            Some(store) => store
                .note_printed(&ev.resource_uri, &etag)
                .map_err(store_failure),
            None => Ok(()),
        }
    }
}

/// How many printed alerts are remembered in memory for fresh deliveries (which repeat an
/// earlier print only if the appliance sends the same version twice); the store knows them
/// all, committed or not.
const PRINTED_IN_MEMORY: usize = 1024;

/// How often a pipeline's loop shows it is alive at least (see `ApplianceMetrics::beat`).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long finished deliveries wait for more before their ack goes out.
const LINGER: Duration = Duration::from_millis(5);

/// Acks the finished prefix, if any.
async fn flush(sub: &scmb_bus::Subscription, acks: &mut Acks, metrics: &ApplianceMetrics) {
    if let Some((tag, n)) = acks.take() {
        match sub.ack_through(tag).await {
            Ok(()) => metrics.acked_many(n),
            Err(e) => {
                tracing::warn!(error = %e, "ack failed; the messages may come again (a redelivery or the next catch-up) and are de-duplicated")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline's data path without a bus: events through the lanes and the sinks, and
    //! which deliveries come out finished (and so may be acked).

    use super::*;
    use crate::sinks::SinkError;
    use scmb_model::message::decode;
    use scmb_model::Peek;
    use std::sync::Mutex;

    /// A sink the pipeline has never heard of: it records what it sees, and answers each
    /// alert's first event with `first`, later ones with `Done`.
    struct Recorder {
        seen: Mutex<Vec<String>>,
        first: Outcome,
    }

    #[async_trait::async_trait]
    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn wants(&self, _: &Filter, ev: &Peek<'_>) -> bool {
            ev.is_alert()
        }
        async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
            let mut seen = self.seen.lock().expect("lock");
            let again = seen.iter().any(|s| s.starts_with(&ev.resource_uri));
            seen.push(format!("{} {}", ev.resource_uri, ev.etag().unwrap_or("")));
            Ok(if again {
                Outcome::Done("again".into())
            } else {
                self.first.clone()
            })
        }
        async fn healthcheck(&self) -> Result<String, SinkError> {
            Ok("fine".into())
        }
    }

    fn event(uri: &str, etag: &str) -> Event {
        let body = serde_json::json!({"resourceUri": uri, "changeType": "Updated", "eTag": etag,
            "resource": {"severity": "Warning", "alertState": "Active"}});
        decode(
            &format!("scmb.alerts.Updated.{uri}"),
            body.to_string().as_bytes(),
            1 << 20,
        )
        .expect("decode")
    }

    fn shared(first: Outcome) -> (Arc<Shared>, Arc<Recorder>, watch::Sender<bool>) {
        shared_counted(first, &crate::telemetry::Metrics::new())
    }

    fn shared_counted(
        first: Outcome,
        metrics: &Arc<crate::telemetry::Metrics>,
    ) -> (Arc<Shared>, Arc<Recorder>, watch::Sender<bool>) {
        let dir = std::env::temp_dir().join(format!(
            "scmb-pipeline-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Store::open(&dir.join("scmb.redb")).expect("store");
        let recorder = Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            first,
        });
        let (stop_tx, stop) = watch::channel(false);
        let shared = Arc::new(Shared {
            metrics: metrics.appliance("test"),
            filter: Filter::default(),
            store: Some(store),
            sinks: vec![recorder.clone()],
            prints: false,
            printed: Default::default(),
            caught_up: Default::default(),
            durable_queue: false,
            stop,
        });
        (shared, recorder, stop_tx)
    }

    #[tokio::test]
    async fn a_sink_added_outside_the_pipeline_sees_each_alerts_events_in_order() {
        let (shared, recorder, _stop) = shared(Outcome::Done("first".into()));
        let (fatal, _fatal_rx) = mpsc::channel(1);
        let (finished, mut finished_rx) = mpsc::unbounded_channel();
        let lanes = Dispatcher::new(shared, 4, fatal, finished);
        for (tag, (uri, etag)) in [
            ("/rest/alerts/1", "a"),
            ("/rest/alerts/2", "a"),
            ("/rest/alerts/1", "b"),
            ("/rest/alerts/1", "c"),
        ]
        .into_iter()
        .enumerate()
        {
            lanes
                .dispatch(Origin::Bus((0, tag as u64 + 1)), event(uri, etag))
                .await;
        }
        lanes.idle().await;
        let mut done = Vec::new();
        while let Ok((_, tag)) = finished_rx.try_recv() {
            done.push(tag);
        }
        done.sort_unstable();
        assert_eq!(done, vec![1, 2, 3, 4], "every delivery finished");
        let seen = recorder.seen.lock().expect("lock").clone();
        let one: Vec<&String> = seen
            .iter()
            .filter(|s| s.starts_with("/rest/alerts/1 "))
            .collect();
        assert_eq!(
            one,
            ["/rest/alerts/1 a", "/rest/alerts/1 b", "/rest/alerts/1 c"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_asking_to_retry_is_called_again_and_finishes_after_the_delay() {
        let (shared, recorder, _stop) = shared(Outcome::Retry(Duration::from_secs(30)));
        let (fatal, _fatal_rx) = mpsc::channel(1);
        let (finished, mut finished_rx) = mpsc::unbounded_channel();
        let lanes = Dispatcher::new(shared, 2, fatal, finished);
        let t0 = tokio::time::Instant::now();
        lanes
            .dispatch(Origin::Bus((0, 7)), event("/rest/alerts/9", "x"))
            .await;
        let (_, tag) = finished_rx.recv().await.expect("finished");
        assert_eq!(tag, 7);
        assert!(
            t0.elapsed() >= Duration::from_secs(30),
            "retried after its delay"
        );
        assert_eq!(recorder.seen.lock().expect("lock").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_whose_outcome_is_unknown_is_called_again_after_its_pause_and_counted() {
        let metrics = crate::telemetry::Metrics::new();
        let (shared, recorder, _stop) = shared_counted(
            Outcome::Unknown {
                reason: "no answer within 30 s".into(),
                after: Duration::from_secs(30),
            },
            &metrics,
        );
        let (fatal, _fatal_rx) = mpsc::channel(1);
        let (finished, mut finished_rx) = mpsc::unbounded_channel();
        let lanes = Dispatcher::new(shared, 2, fatal, finished);
        let t0 = tokio::time::Instant::now();
        lanes
            .dispatch(Origin::Bus((0, 4)), event("/rest/alerts/8", "x"))
            .await;
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(
            finished_rx.try_recv().is_err(),
            "a delivery whose outcome is unknown must not be acked before it is settled"
        );
        let (_, tag) = finished_rx.recv().await.expect("finished");
        assert_eq!(tag, 4);
        assert!(t0.elapsed() >= Duration::from_secs(30));
        assert_eq!(recorder.seen.lock().expect("lock").len(), 2, "called again");
        let text = metrics.encode();
        assert!(
            text.contains(r#"scmb_outcomes_unknown_total{appliance="test",sink="recorder"} 1"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_interrupted_by_a_stop_is_never_reported_finished() {
        let (shared, _recorder, stop) = shared(Outcome::Retry(Duration::from_secs(3600)));
        let (fatal, _fatal_rx) = mpsc::channel(1);
        let (finished, mut finished_rx) = mpsc::unbounded_channel();
        let lanes = Dispatcher::new(shared, 2, fatal, finished);
        lanes
            .dispatch(Origin::Bus((0, 1)), event("/rest/alerts/5", "x"))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).expect("stop");
        lanes.idle().await;
        assert!(
            finished_rx.try_recv().is_err(),
            "an interrupted delivery must not be acked"
        );
    }
}
