//! One appliance's pipeline, as `ov_to_sm` and each appliance of `scmb run` use it: subscribe,
//! decode, hand each event to the lane of its alert's uri (one alert's events stay in order,
//! different alerts are worked on in parallel), pass it through the sinks (console, JSON
//! lines, Service Manager), and ack only when every sink has recorded its outcome.
//!
//! After every (re)connect a REST catch-up feeds the alerts raised meanwhile through the same
//! lanes; its checkpoint moves only once a barrier has passed every lane. The pipeline never
//! reaches back into the bus beyond acking, and it never exits the process: it returns, and
//! its caller decides (exit code for `ov_to_sm`, a supervised restart for `scmb run`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scmb_bus::{BusConfig, Delivery};
use scmb_model::message::{decode, format_rfc3339_ms};
use scmb_model::{Event, Filter};
use scmb_oneview::Session;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::cli::{BusArgs, ConnArgs, FilterArgs, Output};
use crate::duration::LookBack;
use crate::failure::{self, Failure};
use crate::output::Printer;
use crate::ovtosm::OvToSmCli;
use crate::store::{Store, StoreError, CHECKPOINT};
use crate::telemetry::ApplianceMetrics;
use crate::ticket::{Outcome, Ticketer};
use crate::{app, bootstrap, certs};

/// Standard output as a sink.
pub struct Console {
    pub printer: Mutex<Printer<std::io::Stdout>>,
    /// Print only what was ticketed, with its note (`ov_to_sm`), instead of every admitted
    /// message.
    pub only_ticketed: bool,
}

/// Where admitted events go.
#[derive(Default)]
pub struct Sinks {
    pub console: Option<Console>,
    /// JSON lines appended to a file.
    pub jsonl: Option<Mutex<Printer<std::fs::File>>>,
    pub ticketer: Option<Arc<Ticketer>>,
}

impl Sinks {
    /// Whether admitted events are printed (and so must not be printed twice by a catch-up).
    fn prints_admitted(&self) -> bool {
        self.jsonl.is_some() || self.console.as_ref().is_some_and(|c| !c.only_ticketed)
    }
}

/// What every lane shares.
struct Shared {
    metrics: ApplianceMetrics,
    filter: Filter,
    store: Store,
    sinks: Sinks,
}

/// A pipeline ready to run: logged in, store open, sinks built.
pub struct Pipeline {
    shared: Arc<Shared>,
    bus: BusConfig,
    cert_dir: PathBuf,
    session: Arc<Session>,
    max_bytes: usize,
    lanes: usize,
    catch_up: bool,
    auto_bootstrap: bool,
    keep_alive: Option<Duration>,
    stop_tx: watch::Sender<bool>,
}

/// What to build a pipeline from: the command-line settings, and the sinks beyond them.
pub struct Spec<'a> {
    pub conn: &'a ConnArgs,
    pub bus: &'a BusArgs,
    pub filter: &'a FilterArgs,
    /// The console's format.
    pub output: Output,
    /// Catch up over REST after every (re)connect (a ticketing sink always does).
    pub catch_up: bool,
    /// How far back the first start catches up.
    pub look_back: LookBack,
    /// The Service Manager sink (`ov_to_sm`'s settings).
    pub sm: Option<&'a OvToSmCli>,
    /// Print on standard output, labelled with `label` when given.
    pub console: Option<(bool, Option<&'a str>)>,
    /// Append JSON lines to this file.
    pub jsonl: Option<&'a Path>,
    /// The store file.
    pub store: PathBuf,
    pub metrics: ApplianceMetrics,
}

fn store_failure(e: StoreError) -> Failure {
    Failure::new(failure::UNEXPECTED, e.to_string())
}

impl Pipeline {
    /// Opens the store, logs in to REST and builds the sinks. Connects to nothing else.
    pub async fn build(spec: Spec<'_>) -> Result<Pipeline, Failure> {
        let conn = spec.conn;
        let host = app::host(conn)?;
        let dir = certs::cert_dir(conn.cert_dir.as_deref(), conn.cwd_certs, host)?;
        let filter = app::filter(spec.filter)?;
        let sm = spec.sm.map(crate::ovtosm::sm_client).transpose()?;
        if let Some(sm) = &sm {
            // A wrong password or address is found now, not at the first alert.
            crate::ovtosm::check_sm(sm).await?;
        }
        if let Some(parent) = spec.store.parent() {
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
        let store = Store::open(&spec.store).map_err(store_failure)?;
        // Ticketing always catches up: an alert raised while down must still get its incident.
        let catch_up = spec.catch_up || spec.sm.is_some();
        if catch_up {
            // At the first start (no checkpoint yet), the look-back sets the first one.
            first_start_checkpoint(&store, spec.look_back).await?;
        }
        let session = Arc::new(bootstrap::login(conn, host, &dir).await?);
        let mut bus = app::bus_config(conn, spec.bus, host, &dir);
        let lanes = spec.sm.map(|s| s.concurrency.max(1)).unwrap_or(1);
        bus.prefetch = bus.prefetch.max((lanes * 4).min(u16::MAX as usize) as u16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let ticketer = match (spec.sm, sm) {
            (Some(cli), Some(sm)) => Some(Arc::new(Ticketer {
                store: store.clone(),
                sm,
                ov: session.clone(),
                template: crate::ovtosm::template(cli)?,
                on_clear: cli.on_clear,
                journal_updates: cli.journal_updates,
                filter: filter.clone(),
                shutdown: stop_rx,
                retry_base: Duration::from_millis(250),
                retry_cap: cli.retry_cap(),
                metrics: spec.metrics.clone(),
            })),
            _ => None,
        };
        let console = spec.console.map(|(only_ticketed, label)| {
            let colour = spec.output == Output::Human
                && crate::telemetry::colour(std::io::IsTerminal::is_terminal(&std::io::stdout()));
            let mut p = Printer::new(std::io::stdout(), spec.output, colour);
            if let Some(l) = label {
                p = p.with_label(l);
            }
            Console {
                printer: Mutex::new(p),
                only_ticketed,
            }
        });
        let jsonl = match spec.jsonl {
            Some(path) => {
                let file = open_append(path)?;
                Some(Mutex::new(
                    Printer::new(file, Output::Json, false).with_label(spec.metrics.name()),
                ))
            }
            None => None,
        };
        let keep_alive = spec.sm.and_then(OvToSmCli::keep_alive);
        Ok(Pipeline {
            shared: Arc::new(Shared {
                metrics: spec.metrics,
                filter,
                store,
                sinks: Sinks {
                    console,
                    jsonl,
                    ticketer,
                },
            }),
            bus,
            cert_dir: dir,
            session,
            max_bytes: spec.bus.max_message_bytes,
            lanes,
            catch_up,
            auto_bootstrap: spec.bus.auto_bootstrap,
            keep_alive,
            stop_tx,
        })
    }

    /// Consumes until `shutdown` resolves (then drains in-flight work, 30 s at most) or a
    /// failure that needs the caller (the first connection refused, the store unusable).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Failure> {
        let metrics = &self.shared.metrics;
        if let Some(every) = self.keep_alive {
            // The REST session must not expire while the bus is quiet for a day.
            let session = self.session.clone();
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

        // At most `lanes` events in work at once; one alert's events one after another.
        let (fatal_tx, mut fatal_rx) = mpsc::channel::<Failure>(1);
        let lanes = Dispatcher::new(self.shared.clone(), self.lanes, fatal_tx);

        tokio::pin!(shutdown);
        let mut sub = match self.subscribe().await {
            Ok(s) => s,
            Err(e) => {
                metrics.disconnected(&e);
                return Err(e.into());
            }
        };
        metrics.connected(&sub.queue);
        let mut attempt = 0u32;
        let result = 'outer: loop {
            // Catch-up: alerts raised (or left unfinished) while we were not listening.
            if self.catch_up {
                if let Err(f) = self.catch_up(&lanes).await {
                    break 'outer Err(f);
                }
            }
            loop {
                let d = tokio::select! {
                    _ = &mut shutdown => break 'outer Ok(()),
                    f = fatal_rx.recv() => break 'outer Err(f.unwrap_or_else(|| Failure::new(failure::UNEXPECTED, "workers stopped"))),
                    d = sub.next() => d,
                };
                let Some(d) = d else { break };
                metrics.received();
                match decode(&d.routing_key, &d.body, self.max_bytes) {
                    Err(reason) => {
                        metrics.malformed(&d.routing_key, d.body.len(), &reason);
                        if d.reject().await.is_ok() {
                            metrics.rejected();
                        }
                    }
                    Ok(ev) => {
                        lanes.dispatch(Some(d), ev).await;
                    }
                }
            }
            metrics.disconnected(&"the connection to the message bus was lost; reconnecting");
            sub = loop {
                let wait = crate::listen::backoff(attempt);
                tokio::select! {
                    _ = &mut shutdown => break 'outer Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                match self.subscribe().await {
                    Ok(s) => {
                        attempt = 0;
                        metrics.reconnected(&s.queue);
                        break s;
                    }
                    Err(e) => {
                        attempt += 1;
                        tracing::warn!(error = %e, retry_in_ms = crate::listen::backoff(attempt).as_millis() as u64, "reconnect failed");
                    }
                }
            };
        };
        // Stop: no new work; what is in work finishes (bounded), the rest stays unacked.
        let _ = self.stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(30), lanes.idle())
            .await
            .is_err()
        {
            tracing::warn!("in-flight work did not finish within 30 s; it stays unacked for a redelivery or the next catch-up");
        }
        sub.close().await;
        match &result {
            Ok(()) => metrics.stopped(),
            Err(f) => metrics.disconnected(f),
        }
        result
    }

    /// Subscribes; with `--auto-bootstrap`, downloads the certificates again when the broker
    /// refuses the ones on disk.
    async fn subscribe(&self) -> Result<scmb_bus::Subscription, scmb_bus::BusError> {
        match scmb_bus::subscribe(&self.bus).await {
            Err(e)
                if self.auto_bootstrap
                    && bootstrap::refresh_certificates(&self.session, &self.cert_dir, &e).await =>
            {
                scmb_bus::subscribe(&self.bus).await
            }
            other => other,
        }
    }

    /// Reads the active and locked alerts over REST and feeds the ones the filter admits
    /// through the lanes, as if they had just been created; the store skips what was already
    /// handled. The checkpoint moves once every lane has worked through them.
    async fn catch_up(&self, lanes: &Dispatcher) -> Result<(), Failure> {
        let store = self.shared.store.clone();
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
            let alerts = match crate::listen::list_with_retry(&self.session, &filters).await {
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

/// An event, with its delivery (none for a catch-up).
type Item = (Option<Delivery>, Event);

/// Runs events with at most `lanes` in work at once, any free lane taking the next event,
/// except that the events of one alert (uri) run one after another, in arrival order: an
/// event whose alert is in work waits behind it. (Fixed lanes by a hash of the uri keep alerts
/// in order too, but a storm spreads unevenly over them and the busiest lane sets the pace.)
struct Dispatcher {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    lanes: u32,
    /// Alerts in work, with the events waiting behind them.
    busy: Arc<Mutex<HashMap<String, VecDeque<Item>>>>,
    fatal: mpsc::Sender<Failure>,
}

impl Dispatcher {
    fn new(shared: Arc<Shared>, lanes: usize, fatal: mpsc::Sender<Failure>) -> Dispatcher {
        let lanes = lanes.clamp(1, 4096) as u32;
        Dispatcher {
            shared,
            permits: Arc::new(Semaphore::new(lanes as usize)),
            lanes,
            busy: Arc::new(Mutex::new(HashMap::new())),
            fatal,
        }
    }

    /// Queues `ev` behind its alert's events in work, or starts it once a lane is free.
    async fn dispatch(&self, d: Option<Delivery>, ev: Event) {
        let mut item = Some((d, ev));
        let uri = item
            .as_ref()
            .map(|i| i.1.resource_uri.clone())
            .unwrap_or_default();
        if self.wait_behind(&uri, &mut item, false) {
            return;
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        if self.wait_behind(&uri, &mut item, true) {
            return;
        }
        let shared = self.shared.clone();
        let busy = self.busy.clone();
        let fatal = self.fatal.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut next = item;
            while let Some((d, ev)) = next.take() {
                match shared.handle(&ev).await {
                    Ok(true) => {
                        if let Some(d) = d {
                            match d.ack().await {
                                Ok(()) => shared.metrics.acked(),
                                Err(e) => {
                                    tracing::warn!(error = %e, "ack failed; the message may come again (a redelivery or the next catch-up) and is de-duplicated")
                                }
                            }
                        }
                    }
                    Ok(false) => {} // interrupted by a stop: left unacked
                    Err(f) => {
                        if let Ok(mut b) = busy.lock() {
                            b.remove(&uri);
                        }
                        let _ = fatal.try_send(f);
                        return;
                    }
                }
                if let Ok(mut b) = busy.lock() {
                    next = b.get_mut(&uri).and_then(VecDeque::pop_front);
                    if next.is_none() {
                        b.remove(&uri);
                    }
                }
            }
            drop(permit);
        }));
    }

    /// Puts the item behind its alert's events in work (true); else, with `claim`, marks the
    /// alert in work (false: the caller runs it).
    fn wait_behind(&self, uri: &str, item: &mut Option<Item>, claim: bool) -> bool {
        let Ok(mut busy) = self.busy.lock() else {
            return false;
        };
        match (busy.get_mut(uri), item.take()) {
            (Some(waiting), Some(i)) => {
                waiting.push_back(i);
                true
            }
            (None, i) => {
                if claim {
                    busy.insert(uri.to_string(), VecDeque::new());
                }
                *item = i;
                false
            }
            (Some(_), None) => true,
        }
    }

    /// Resolves when nothing is in work (every lane free).
    fn idle_owned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let permits = self.permits.clone();
        let lanes = self.lanes;
        async move {
            let _ = permits.acquire_many(lanes).await;
        }
    }

    async fn idle(&self) {
        self.idle_owned().await
    }
}

impl Shared {
    /// Passes one event through the sinks; true when it may be acked.
    async fn handle(&self, ev: &Event) -> Result<bool, Failure> {
        let admitted = self.filter.admits(ev);
        if admitted {
            self.metrics.matched();
            if self.sinks.prints_admitted() && self.first_time(ev).await? {
                let now = format_rfc3339_ms(time::OffsetDateTime::now_utc());
                if let Some(c) = self.sinks.console.as_ref().filter(|c| !c.only_ticketed) {
                    let t = Instant::now();
                    print(&c.printer, ev, &now)?;
                    self.metrics.sink_latency("console", t.elapsed());
                }
                if let Some(j) = &self.sinks.jsonl {
                    let t = Instant::now();
                    print(j, ev, &now)?;
                    self.metrics.sink_latency("jsonl", t.elapsed());
                }
                self.mark_printed(ev).await?;
            }
        }
        let Some(t) = &self.sinks.ticketer else {
            return Ok(true);
        };
        let started = Instant::now();
        let outcome = t
            .process(ev)
            .await
            .map_err(|e| Failure::new(failure::UNEXPECTED, e.to_string()))?;
        if admitted {
            self.metrics
                .sink_latency("service_manager", started.elapsed());
        }
        match outcome {
            Outcome::Interrupted => Ok(false),
            Outcome::Done(what) => {
                tracing::debug!(alert = %ev.resource_uri, outcome = %what, "handled");
                Ok(true)
            }
            Outcome::Ticketed { incident, alert } => {
                if let Some(c) = self.sinks.console.as_ref().filter(|c| c.only_ticketed) {
                    // The alert as updated (with its note), like the sample prints it.
                    let mut shown = ev.clone();
                    if let Some(a) = alert {
                        shown.body["resource"] = a;
                    }
                    let now = format_rfc3339_ms(time::OffsetDateTime::now_utc());
                    print(&c.printer, &shown, &now)?;
                    println!(
                        "{}: ticketed as {incident}; note written to the alert",
                        ev.resource_uri
                    );
                }
                Ok(true)
            }
        }
    }

    /// False when this alert, as it is now (uri + eTag), was printed before: a catch-up after
    /// a reconnect or a restart does not print it again.
    async fn first_time(&self, ev: &Event) -> Result<bool, Failure> {
        let uri = ev.resource_uri.clone();
        let before = self
            .store
            .call(move |s| s.printed(&uri))
            .await
            .map_err(store_failure)?;
        Ok(before.as_deref() != Some(ev.str("eTag").unwrap_or("")))
    }

    async fn mark_printed(&self, ev: &Event) -> Result<(), Failure> {
        self.store
            .set_printed_async(&ev.resource_uri, ev.str("eTag").unwrap_or(""))
            .await
            .map_err(store_failure)
    }
}

fn print<W: std::io::Write>(p: &Mutex<Printer<W>>, ev: &Event, now: &str) -> Result<(), Failure> {
    let mut p = p
        .lock()
        .map_err(|_| Failure::new(failure::UNEXPECTED, "an output sink panicked"))?;
    // Not acked on failure: the message is redelivered, or found again by the catch-up.
    p.print(ev, now)
        .map_err(|e| Failure::new(failure::UNEXPECTED, format!("cannot write the output: {e}")))
}

/// Opens a JSON-lines file for appending (created 0640).
fn open_append(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            Failure::new(
                failure::USAGE,
                format!("cannot open the JSON-lines file {}: {e}", path.display()),
            )
        })
}

/// With no checkpoint yet, the look-back sets the first one.
async fn first_start_checkpoint(store: &Store, look: LookBack) -> Result<(), Failure> {
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

/// Margin for clock skew between us and the appliance when checkpointing.
const CLOCK_MARGIN: time::Duration = time::Duration::minutes(10);
