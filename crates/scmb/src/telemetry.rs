//! What the running tools tell their operators: logs (text or JSON, through `tracing`), the
//! Prometheus metrics and the health of each appliance's connection.
//!
//! The important events go through one method of [`ApplianceMetrics`] that both logs and
//! counts, so the logs and the metrics never disagree. Every metric carries the `appliance`
//! label; every log line of an appliance's tasks carries its `appliance` span field.
//! This module does no work of its own: it never blocks the pipeline (counters are atomics).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("log format {s:?}: use text or json")),
        }
    }
}

/// When to colour what goes to a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// On a terminal, unless `$NO_COLOR` is set to anything but the empty string.
    #[default]
    Auto,
    Always,
    Never,
}

impl std::str::FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Color::Auto),
            "always" => Ok(Color::Always),
            "never" => Ok(Color::Never),
            _ => Err(format!("colour {s:?}: use auto, always or never")),
        }
    }
}

impl Color {
    /// Whether to colour a stream that is (or is not) a terminal.
    pub fn enabled(self, terminal: bool) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// How the process logs: level (directives), line format and colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub color: Color,
}

/// The level used when neither `--log-level`, `RUST_LOG` nor the config file sets one.
pub const DEFAULT_LOG_LEVEL: &str = "warn,scmb=info";

/// The log level by precedence: `--log-level` (or `$SCMB_LOG_LEVEL`), then `RUST_LOG`, then
/// the config file's `log.level`, then [`DEFAULT_LOG_LEVEL`].
pub fn log_level(flag: Option<&str>, rust_log: Option<&str>, file: Option<&str>) -> String {
    [flag, rust_log, file]
        .into_iter()
        .flatten()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(DEFAULT_LOG_LEVEL)
        .to_string()
}

/// The process's colour choice (`--color`), set once when logging starts.
static COLOR: std::sync::OnceLock<Color> = std::sync::OnceLock::new();

/// Whether to colour a stream that is (or is not) a terminal: `--color`, `$NO_COLOR`.
pub fn colour(terminal: bool) -> bool {
    COLOR.get().copied().unwrap_or_default().enabled(terminal)
}

/// Warnings found before logging started (deprecated spellings met while parsing flags or
/// the config file, filter values OneView is not known to send); logged once it starts.
static EARLY: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs a warning now, or as soon as logging starts.
pub fn early_warn(message: String) {
    if LOGGING.load(std::sync::atomic::Ordering::Acquire) {
        tracing::warn!("{message}");
    } else if let Ok(mut q) = EARLY.lock() {
        if !q.contains(&message) {
            q.push(message);
        }
    }
}

/// A deprecated spelling that still works: said once, as a warning.
pub fn deprecated(message: String) {
    early_warn(message)
}

/// Installs the process's log subscriber, writing to stderr. `level` is a level or
/// `RUST_LOG`-style target directives (`info`, `debug`, `warn,scmb=debug`); an invalid one
/// falls back to the default with a warning. Then logs the warnings that came before it.
///
/// Directives are read by `tracing_subscriber`'s `Targets` (levels per target), not its
/// `EnvFilter`: no span or field filters, and no regular-expression engine compiled at every
/// start (its code and tables were about a megabyte of every process's memory).
pub fn init_logging(log: &LogSettings) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (level, format) = (log.level.as_str(), log.format);
    let _ = COLOR.set(log.color);
    let (filter, bad) = match parse_level(level) {
        Some(f) => (f, false),
        None => (parse_level(DEFAULT_LOG_LEVEL).unwrap_or_default(), true),
    };
    // The builder's own level (INFO unless told) would hide what the directives let through.
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(std::io::stderr);
    let journal = journal_stream();
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(!journal && colour(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .event_format(Prefixed {
                journal,
                inner: tracing_subscriber::fmt::format().with_target(false),
            })
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(Prefixed {
                journal,
                inner: JsonLine,
            })
            .finish()
            .with(filter)
            .try_init(),
    };
    if bad {
        tracing::warn!(level, "invalid log level; using {DEFAULT_LOG_LEVEL}");
    }
    LOGGING.store(true, std::sync::atomic::Ordering::Release);
    let early = EARLY.lock().map(|mut q| std::mem::take(&mut *q));
    for w in early.unwrap_or_default() {
        tracing::warn!("{w}");
    }
}

/// Whether stderr is connected to the systemd journal: `$JOURNAL_STREAM` (`DEVICE:INODE`, set
/// by systemd for a service whose output goes to the journal) names the very file stderr is.
/// A child whose stderr was redirected elsewhere keeps the variable but no longer matches.
fn journal_stream() -> bool {
    std::env::var("JOURNAL_STREAM")
        .ok()
        .is_some_and(|v| is_journal_stream(&v, stderr_identity()))
}

/// `DEVICE:INODE` of `$JOURNAL_STREAM` against the (device, inode) of stderr.
fn is_journal_stream(value: &str, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = value.trim().split_once(':') else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>(), stderr) {
        (Ok(d), Ok(i), Some(s)) => (d, i) == s,
        _ => false,
    }
}

/// The (device, inode) of the file stderr is.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let m = std::fs::File::from(fd).metadata().ok()?;
    Some((m.dev(), m.ino()))
}

/// The syslog priority of a level, as the journal reads it from a `<N>` line prefix
/// (sd-daemon(3)): error 3, warning 4, info 6, debug and trace 7.
pub fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// A line format that, when stderr is the journal, starts every line with its syslog priority
/// (`<3>` for an error): systemd's `SyslogLevelPrefix=` (on by default) turns it into the
/// entry's priority, so `journalctl -p err` shows the errors.
struct Prefixed<F> {
    journal: bool,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Prefixed<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.journal {
            write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// One flat JSON object per event: `timestamp` (RFC 3339, UTC), `level`, `target`, the fields
/// of the spans it is in (`appliance`), then its own fields with `message`, all at the top
/// level. Values are JSON numbers, booleans or strings, never Rust debug text.
struct JsonLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use serde_json::{Map, Value};
        let meta = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), Value::String(now));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        // The spans' fields, outermost first, as the JSON field formatter stored them.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields.as_str()) {
                    line.extend(m);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        let name = field.name();
        // The `log` crate's bridge fields say where a record came from, not what happened.
        if !name.starts_with("log.") {
            self.0.insert(name.to_string(), value);
        }
    }
}

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.put(field, serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here too, printed with their Display.
        self.put(field, format!("{value:?}").into());
    }
}

/// A level or target directives (`info`, `warn,scmb=debug`); `None` when it is not one.
fn parse_level(level: &str) -> Option<tracing_subscriber::filter::Targets> {
    level.trim().parse().ok()
}

/// Checks a log level directive before it is used.
pub fn valid_level(level: &str) -> bool {
    parse_level(level).is_some()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplianceLabel {
    appliance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    appliance: String,
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    appliance: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

type Counters = Family<ApplianceLabel, Counter>;
type Timestamps = Family<ApplianceLabel, Gauge<f64, AtomicU64>>;

/// The incident counters of the sinks labelled by sink (`scmb_sink_incidents_*_total`); the
/// Service Manager sink keeps its own unlabelled `scmb_incidents_*_total`.
struct SinkIncidents {
    created: Family<SinkLabel, Counter>,
    failed: Family<SinkLabel, Counter>,
    deduplicated: Family<SinkLabel, Counter>,
    resolved: Family<SinkLabel, Counter>,
    attached: Family<SinkLabel, Counter>,
    alerts_cleared: Family<SinkLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s: a console write is sub-millisecond, a ticket with retries can take seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// Connection state of one appliance, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
    Disconnected,
}

impl ConnState {
    fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Disconnected => "disconnected",
        }
    }
}

/// The process's metrics registry and appliance states.
pub struct Metrics {
    registry: Registry,
    received: Counters,
    matched: Counters,
    malformed: Counters,
    acks: Counters,
    rejects: Counters,
    created: Counters,
    failed: Counters,
    deduplicated: Counters,
    conflicts: Counters,
    resolved: Counters,
    retries: Family<TargetLabel, Counter>,
    unknown: Family<SinkLabel, Counter>,
    /// Events a sink that forwards events (webhook, syslog) delivered, per sink.
    delivered: Family<SinkLabel, Counter>,
    /// What the sinks that open incidents elsewhere (PagerDuty) did, per sink.
    sink_incidents: SinkIncidents,
    reconnects: Counters,
    reload_failures: Counter,
    catch_up_runs: Counters,
    catch_up_alerts: Counters,
    latency: Family<SinkLabel, Histogram, fn() -> Histogram>,
    connected: Family<ApplianceLabel, Gauge>,
    /// When each appliance last received a message (Unix seconds).
    last_message: Timestamps,
    /// When each appliance's client certificate expires (Unix seconds).
    cert_expiry: Family<ApplianceLabel, Gauge>,
    /// Pipelines that failed (the supervisor builds them again) and pipelines rebuilt.
    failures: Counters,
    restarts: Counters,
    /// The process's own metrics (`process_*`, no prefix), read from /proc at each scrape.
    process: Registry,
    states: Mutex<BTreeMap<String, ConnState>>,
    /// When each appliance's pipeline (or its supervisor) last showed it is alive: its loop
    /// turned. systemd's watchdog is pinged only while every one is recent.
    beats: Mutex<BTreeMap<String, Instant>>,
    /// Becomes true at the first successful connection of any appliance (systemd's READY).
    first_connect: watch::Sender<bool>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("scmb");
        let mut counter = |name: &str, help: &str| {
            let f = Counters::default();
            registry.register(name, help, f.clone());
            f
        };
        let received = counter("messages_received", "Messages delivered by the bus");
        let matched = counter(
            "messages_matched",
            "Messages delivered by the bus that the filter admitted (catch-ups: catch_up_alerts)",
        );
        let malformed = counter(
            "messages_malformed",
            "Messages rejected as malformed (not JSON, too big, no resource)",
        );
        let acks = counter("acks", "Messages acknowledged after their work was done");
        let rejects = counter("rejects", "Messages rejected without requeue");
        let created = counter(
            "incidents_created",
            "Incidents created (Service Manager, ServiceNow)",
        );
        let failed = counter(
            "incidents_failed",
            "Alerts the ticketing system refused to ticket (recorded as failed)",
        );
        let deduplicated = counter(
            "incidents_deduplicated",
            "Alerts found already ticketed (alert notes or an interrupted create), not ticketed again",
        );
        let conflicts = counter(
            "incidents_conflicting",
            "Alerts another instance ticketed at the same time (two instances without claim): duplicates",
        );
        let resolved = counter(
            "incidents_resolved",
            "Incidents journaled, resolved or closed because their alert cleared",
        );
        let reconnects = counter("reconnects", "Reconnections to the message bus");
        let catch_up_runs = counter("catch_up_runs", "REST catch-ups run after a (re)connect");
        let catch_up_alerts = counter(
            "catch_up_alerts",
            "Admitted alerts found by REST catch-ups and fed through the pipeline",
        );
        let retries = Family::<TargetLabel, Counter>::default();
        registry.register(
            "retries",
            "Retried calls, by target (service_manager, servicenow, pagerduty, oneview)",
            retries.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused (invalid, or a password or file unreadable): the running appliances stayed",
            reload_failures.clone(),
        );
        let unknown = Family::<SinkLabel, Counter>::default();
        registry.register(
            "outcomes_unknown",
            "Changes a sink sent whose outcome is unknown (no usable answer): looked up by their reference before being sent again",
            unknown.clone(),
        );
        let delivered = Family::<SinkLabel, Counter>::default();
        registry.register(
            "sink_events_delivered",
            "Events a forwarding sink delivered: a webhook's receiver answered 2xx; syslog: written on a healthy TCP or TLS connection, or sent as a UDP datagram",
            delivered.clone(),
        );
        let mut sink_counter = |name: &str, help: &str| {
            let f = Family::<SinkLabel, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let sink_incidents = SinkIncidents {
            created: sink_counter(
                "sink_incidents_created",
                "Incidents a sink opened (PagerDuty: triggers accepted), one per alert",
            ),
            failed: sink_counter(
                "sink_incidents_failed",
                "Alerts a sink's destination refused for good (recorded as failed, not retried)",
            ),
            deduplicated: sink_counter(
                "sink_incidents_deduplicated",
                "Alerts a sink found already handled (their notes say so), not sent again",
            ),
            resolved: sink_counter(
                "sink_incidents_resolved",
                "Incidents a sink resolved because their alert cleared or was deleted",
            ),
            attached: sink_counter(
                "sink_incidents_attached",
                "Alerts added to the open incident of their resource (one incident per resource)",
            ),
            alerts_cleared: sink_counter(
                "sink_alerts_cleared",
                "OneView alerts a sink cleared because people resolved or closed their incident",
            ),
        };
        let latency: Family<SinkLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "sink_latency_seconds",
            "Time a sink took for one message, retries included",
            latency.clone(),
        );
        let connected = Family::<ApplianceLabel, Gauge>::default();
        registry.register(
            "bus_connected",
            "1 while connected to the appliance's message bus, else 0",
            connected.clone(),
        );
        let last_message = Timestamps::default();
        registry.register(
            "appliance_last_message_timestamp_seconds",
            "When the appliance's message bus last delivered a message (Unix time); absent before the first",
            last_message.clone(),
        );
        let cert_expiry = Family::<ApplianceLabel, Gauge>::default();
        registry.register(
            "appliance_cert_expiry_timestamp_seconds",
            "When the appliance's client certificate (cert_dir/client.pem) expires (Unix time), read at each pipeline start",
            cert_expiry.clone(),
        );
        let failures = Counters::default();
        registry.register(
            "appliance_failures",
            "Times an appliance's pipeline failed (cannot log in, certificates refused, store unusable, ...)",
            failures.clone(),
        );
        let restarts = Counters::default();
        registry.register(
            "appliance_restarts",
            "Times the supervisor built an appliance's pipeline again after a failure",
            restarts.clone(),
        );
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "The running scmb's version: always 1", build);
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        Arc::new(Metrics {
            registry,
            received,
            matched,
            malformed,
            acks,
            rejects,
            created,
            failed,
            deduplicated,
            conflicts,
            resolved,
            retries,
            unknown,
            delivered,
            sink_incidents,
            reconnects,
            reload_failures,
            catch_up_runs,
            catch_up_alerts,
            latency,
            connected,
            last_message,
            cert_expiry,
            failures,
            restarts,
            process,
            states: Mutex::new(BTreeMap::new()),
            beats: Mutex::new(BTreeMap::new()),
            first_connect: watch::channel(false).0,
        })
    }

    /// A configuration reload was refused; the running appliances stay as they are.
    pub fn reload_refused(&self) {
        self.reload_failures.inc();
    }

    /// The handle an appliance's tasks count through.
    pub fn appliance(self: &Arc<Self>, name: &str) -> ApplianceMetrics {
        let l = ApplianceLabel {
            appliance: name.to_string(),
        };
        let c = |f: &Counters| f.get_or_create(&l).clone();
        let m = ApplianceMetrics {
            name: name.to_string(),
            received: c(&self.received),
            matched: c(&self.matched),
            malformed: c(&self.malformed),
            acks: c(&self.acks),
            rejects: c(&self.rejects),
            created: c(&self.created),
            failed: c(&self.failed),
            deduplicated: c(&self.deduplicated),
            conflicts: c(&self.conflicts),
            resolved: c(&self.resolved),
            reconnects: c(&self.reconnects),
            catch_up_runs: c(&self.catch_up_runs),
            catch_up_alerts: c(&self.catch_up_alerts),
            connected: self.connected.get_or_create(&l).clone(),
            failures: c(&self.failures),
            restarts: c(&self.restarts),
            parent: self.clone(),
        };
        m.set_state(ConnState::Connecting);
        if let Ok(mut b) = self.beats.lock() {
            b.insert(name.to_string(), Instant::now());
        }
        m
    }

    /// Stops watching an appliance that is stopping (draining is not being stuck).
    pub fn unwatch(&self, name: &str) {
        if let Ok(mut b) = self.beats.lock() {
            b.remove(name);
        }
    }

    /// Forgets an appliance removed from the configuration (its health, not its counters).
    pub fn remove(&self, name: &str) {
        if let Ok(mut s) = self.states.lock() {
            s.remove(name);
        }
        self.unwatch(name);
        let l = ApplianceLabel {
            appliance: name.to_string(),
        };
        self.connected.remove(&l);
        self.last_message.remove(&l);
        self.cert_expiry.remove(&l);
    }

    /// The appliances whose pipeline has not shown it is alive for `max` (none: all alive).
    pub fn stalled(&self, max: Duration) -> Vec<String> {
        let now = Instant::now();
        self.beats
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|(_, t)| now.saturating_duration_since(**t) > max)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::with_capacity(8 * 1024);
        let encoded = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &self.process))
            .and_then(|()| text::encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }

    /// Each appliance's connection state.
    pub fn states(&self) -> BTreeMap<String, ConnState> {
        self.states.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Ready when every configured appliance is connected.
    pub fn ready(&self) -> bool {
        let s = self.states();
        !s.is_empty() && s.values().all(|c| *c == ConnState::Connected)
    }

    /// Resolves once any appliance has connected.
    pub async fn first_connect(&self) {
        let mut rx = self.first_connect.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// One appliance's counters and state, cheap to clone; every method is an event that is
/// logged and counted in one place.
#[derive(Clone)]
pub struct ApplianceMetrics {
    name: String,
    received: Counter,
    matched: Counter,
    malformed: Counter,
    acks: Counter,
    rejects: Counter,
    created: Counter,
    failed: Counter,
    deduplicated: Counter,
    conflicts: Counter,
    resolved: Counter,
    reconnects: Counter,
    catch_up_runs: Counter,
    catch_up_alerts: Counter,
    connected: Gauge,
    failures: Counter,
    restarts: Counter,
    parent: Arc<Metrics>,
}

impl ApplianceMetrics {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_state(&self, s: ConnState) {
        self.connected
            .set(i64::from(matches!(s, ConnState::Connected)));
        if let Ok(mut m) = self.parent.states.lock() {
            m.insert(self.name.clone(), s);
        }
        if s == ConnState::Connected {
            self.parent.first_connect.send_replace(true);
        }
    }

    pub fn received(&self) {
        self.received.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.parent
            .last_message
            .get_or_create(&self.label())
            .set(now);
    }

    fn label(&self) -> ApplianceLabel {
        ApplianceLabel {
            appliance: self.name.clone(),
        }
    }

    /// The pipeline (or its supervisor) is alive: its loop turned. Only a watched appliance
    /// (started, not stopping) counts.
    pub fn beat(&self) {
        if let Ok(mut b) = self.parent.beats.lock() {
            if let Some(t) = b.get_mut(&self.name) {
                *t = Instant::now();
            }
        }
    }

    /// The client certificate expires at `not_after` (Unix seconds).
    pub fn client_cert_expiry(&self, not_after: i64) {
        self.parent
            .cert_expiry
            .get_or_create(&self.label())
            .set(not_after);
    }

    /// `sink` runs: its series start at 0 (retries by its name, latency, outcomes unknown,
    /// what it delivered, opened, refused, ...), so that `increase()` and `rate()` see its
    /// first event and a dashboard lists it before anything happened.
    pub fn sink_started(&self, sink: &str) {
        let l = self.sink_label(sink);
        let p = &self.parent;
        let i = &p.sink_incidents;
        for f in [
            &p.unknown,
            &p.delivered,
            &i.created,
            &i.failed,
            &i.deduplicated,
            &i.resolved,
            &i.attached,
            &i.alerts_cleared,
        ] {
            let _ = f.get_or_create(&l);
        }
        let _ = p.latency.get_or_create(&l);
        let _ = p.retries.get_or_create(&TargetLabel {
            appliance: self.name.clone(),
            target: sink.to_string(),
        });
    }

    /// The pipeline failed; the supervisor logs why and builds it again.
    pub fn pipeline_failed(&self) {
        self.failures.inc();
    }

    /// The supervisor builds the pipeline again after a failure.
    pub fn pipeline_restarted(&self) {
        self.restarts.inc();
    }

    pub fn matched(&self) {
        self.matched.inc();
    }

    pub fn malformed(&self, routing_key: &str, bytes: usize, reason: &dyn std::fmt::Display) {
        self.malformed.inc();
        tracing::warn!(routing_key, bytes, error = %reason, "malformed message rejected");
    }

    pub fn acked(&self) {
        self.acks.inc();
    }

    /// `n` deliveries acked in one `multiple` ack.
    pub fn acked_many(&self, n: u64) {
        self.acks.inc_by(n);
    }

    pub fn rejected(&self) {
        self.rejects.inc();
    }

    /// A ticketing sink (`sink`: service_manager, servicenow) created `incident`: counted in
    /// the ticketing totals (`scmb_incidents_*_total`, as before sinks were labelled) and by
    /// sink (`scmb_sink_incidents_*_total{sink}`, like every sink).
    pub fn incident_created(&self, sink: &str, alert: &str, incident: &str) {
        self.created.inc();
        self.sink_count(&self.parent.sink_incidents.created, sink);
        tracing::info!(alert, sink, incident, "incident created");
    }

    /// `system` (Service Manager, ServiceNow; `sink` its sink) refused to ticket `alert` for
    /// good.
    pub fn incident_failed(&self, sink: &str, system: &str, alert: &str, reason: &str) {
        self.failed.inc();
        self.sink_count(&self.parent.sink_incidents.failed, sink);
        tracing::error!(alert, sink, error = %reason, "{system} rejected the incident; recorded as failed, not retried");
    }

    /// Another instance ticketed `alert` at the same time as this one (`others`): two
    /// instances on separate state without claims.
    pub fn incident_conflict(&self, alert: &str, incident: &str, others: &str) {
        self.conflicts.inc();
        tracing::error!(
            alert,
            incident,
            others,
            "another instance ticketed the same alert at the same time: run a single instance, or set claim = true (--claim) on every instance"
        );
    }

    pub fn incident_deduplicated(&self, sink: &str, alert: &str, incident: &str, how: &str) {
        self.deduplicated.inc();
        self.sink_count(&self.parent.sink_incidents.deduplicated, sink);
        tracing::info!(
            alert,
            sink,
            incident,
            "the alert is already ticketed ({how}); not creating another"
        );
    }

    pub fn incident_resolved(&self, sink: &str, alert: &str, incident: &str, action: &str) {
        self.resolved.inc();
        self.sink_count(&self.parent.sink_incidents.resolved, sink);
        tracing::info!(
            alert,
            sink,
            incident,
            action,
            "incident updated for the cleared alert"
        );
    }

    /// `alert` joined `incident`, its resource's (one incident per resource).
    pub fn incident_attached(&self, sink: &str, alert: &str, incident: &str) {
        self.sink_count(&self.parent.sink_incidents.attached, sink);
        tracing::info!(
            alert,
            sink,
            incident,
            "the alert joined its resource's incident"
        );
    }

    /// `sink` cleared `alert` in OneView because people resolved its `incident`.
    pub fn alert_cleared(&self, sink: &str, alert: &str, incident: &str) {
        self.sink_count(&self.parent.sink_incidents.alerts_cleared, sink);
        tracing::info!(
            alert,
            sink,
            incident,
            "alert cleared in OneView: its incident was resolved"
        );
    }

    fn sink_count(&self, family: &Family<SinkLabel, Counter>, sink: &str) {
        family.get_or_create(&self.sink_label(sink)).inc();
    }

    fn sink_label(&self, sink: &str) -> SinkLabel {
        SinkLabel {
            appliance: self.name.clone(),
            sink: sink.to_string(),
        }
    }

    /// `sink` opened `incident` for `alert` (PagerDuty: a trigger accepted, `incident` its
    /// dedup key).
    pub fn sink_incident_created(&self, sink: &str, alert: &str, incident: &str) {
        let c = &self.parent.sink_incidents.created;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::info!(alert, sink, incident, "incident opened");
    }

    /// `sink`'s destination refused `alert` for good: recorded as failed, not retried.
    pub fn sink_incident_failed(&self, sink: &str, alert: &str, reason: &str) {
        let c = &self.parent.sink_incidents.failed;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::error!(
            alert,
            sink,
            error = %reason,
            "refused for good; recorded as failed, not retried"
        );
    }

    /// `sink` found `alert` already handled (`how`): not sent again.
    pub fn sink_incident_deduplicated(&self, sink: &str, alert: &str, incident: &str, how: &str) {
        let c = &self.parent.sink_incidents.deduplicated;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::info!(
            alert,
            sink,
            incident,
            "already handled ({how}); not sent again"
        );
    }

    /// `sink` resolved `incident` because `alert` cleared or was deleted.
    pub fn sink_incident_resolved(&self, sink: &str, alert: &str, incident: &str, action: &str) {
        let c = &self.parent.sink_incidents.resolved;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::info!(
            alert,
            sink,
            incident,
            action,
            "incident resolved for the cleared alert"
        );
    }

    /// `sink` (a webhook) delivered the event `id` about `alert`: its receiver answered
    /// `status`.
    pub fn sink_event_delivered(&self, sink: &str, alert: &str, id: &str, status: u16) {
        let c = &self.parent.delivered;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::info!(alert, sink, id, status, "event delivered");
    }

    /// `sink` (syslog) delivered an event about `alert` to `target` (written and flushed, or
    /// sent as a datagram).
    pub fn sink_event_forwarded(&self, sink: &str, alert: &str, target: &str) {
        let c = &self.parent.delivered;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::info!(alert, sink, target, "event delivered");
    }

    /// `sink` (the relay) published the event `id` about `alert` and its broker confirmed it.
    pub fn sink_event_published(&self, sink: &str, alert: &str, id: &str) {
        let c = &self.parent.delivered;
        c.get_or_create(&self.sink_label(sink)).inc();
        tracing::info!(alert, sink, id, "event published and confirmed");
    }

    /// A failed call that will be retried after `delay`.
    pub fn retry(&self, target: &str, what: &str, attempt: u32, delay: Duration, error: &str) {
        self.parent
            .retries
            .get_or_create(&TargetLabel {
                appliance: self.name.clone(),
                target: target.to_string(),
            })
            .inc();
        tracing::warn!(
            error,
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "{what} failed; retrying"
        );
    }

    /// `sink` sent a change for `alert` and got no usable answer (`reason`): it may have
    /// happened. The sink looks its reference up before sending it again.
    pub fn outcome_unknown(&self, sink: &str, alert: &str, reason: &str) {
        self.parent
            .unknown
            .get_or_create(&SinkLabel {
                appliance: self.name.clone(),
                sink: sink.to_string(),
            })
            .inc();
        tracing::warn!(
            alert,
            sink,
            error = reason,
            "the outcome is unknown (it may have happened): looking it up by its reference before trying again"
        );
    }

    pub fn connected(&self, queue: &str) {
        self.set_state(ConnState::Connected);
        tracing::info!(queue, "connected to the message bus");
    }

    pub fn reconnected(&self, queue: &str) {
        self.reconnects.inc();
        self.set_state(ConnState::Connected);
        tracing::info!(queue, "reconnected to the message bus");
    }

    /// Not connected, for a reason the caller logs itself (e.g. the appliance cannot start).
    pub fn unavailable(&self) {
        self.set_state(ConnState::Disconnected);
    }

    /// Stopped on request.
    pub fn stopped(&self) {
        self.set_state(ConnState::Disconnected);
        tracing::info!("stopped");
    }

    pub fn disconnected(&self, error: &dyn std::fmt::Display) {
        self.set_state(ConnState::Disconnected);
        tracing::warn!(error = %error, "not connected to the message bus");
    }

    pub fn catch_up(&self, alerts: usize, complete: bool) {
        self.catch_up_runs.inc();
        self.catch_up_alerts.inc_by(alerts as u64);
        tracing::info!(
            alerts,
            complete,
            "catch-up done: the admitted alerts listed over REST are fed through the pipeline"
        );
    }

    /// How long `sink` took for one message.
    pub fn sink_latency(&self, sink: &str, took: Duration) {
        self.parent
            .latency
            .get_or_create(&SinkLabel {
                appliance: self.name.clone(),
                sink: sink.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The process's CPU time, memory and file descriptors, read from /proc at each scrape, under
/// the names every Prometheus client library uses (`process_*`).
#[derive(Debug)]
struct ProcessCollector;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: i64,
    start_time_seconds: f64,
    threads: i64,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
            })
            .unwrap_or_default();
        let mut p = parse_stat(&stat, ticks.max(1) as f64, page.max(1), boot);
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as i64)
            .unwrap_or_default();
        p.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                let l = s.lines().find(|l| l.starts_with("Max open files"))?;
                l.split_whitespace().nth(3)?.parse().ok()
            })
            .unwrap_or_default();
        p
    }
}

/// The fields of /proc/self/stat (proc(5)): after the command name in parentheses, utime and
/// stime (fields 14 and 15, in clock ticks), num_threads (20), starttime (22, ticks after
/// boot), vsize (23, bytes), rss (24, pages).
fn parse_stat(stat: &str, ticks: f64, page: i64, boot: f64) -> ProcessStats {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    // `rest` starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
    };
    ProcessStats {
        cpu_seconds: (num(14) + num(15)) / ticks,
        threads: num(20) as i64,
        start_time_seconds: boot + num(22) / ticks,
        virtual_bytes: num(23) as i64,
        resident_bytes: num(24) as i64 * page,
        ..ProcessStats::default()
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let p = ProcessStats::read();
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, i64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes",
                p.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
            (
                "process_max_fds",
                "The limit of open file descriptors",
                p.max_fds,
            ),
            ("process_threads", "OS threads", p.threads),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let start = ConstGauge::new(p.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "When the process started (Unix time)",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` there in the background until
/// `stop`. The error is one line naming the address and what to change.
pub async fn serve_metrics(
    addr: &str,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot serve metrics on {addr}: {e} (change metrics.listen or --metrics-listen)")
    })?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    tracing::info!(address = %local, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = serve(listener, metrics, stop).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Serves `/metrics`, `/healthz` (the process is alive and serving) and `/readyz` (every
/// appliance is connected; 503 with each state otherwise) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let m1 = metrics.clone();
    let m2 = metrics;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    let body: String = m
                        .states()
                        .iter()
                        .map(|(n, s)| format!("{n} {}\n", s.as_str()))
                        .collect();
                    let code = if m.ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, body)
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_level_is_the_flag_then_rust_log_then_the_file_then_the_default() {
        assert_eq!(
            log_level(Some("debug"), Some("trace"), Some("error")),
            "debug"
        );
        assert_eq!(log_level(None, Some("trace"), Some("error")), "trace");
        assert_eq!(log_level(None, Some(""), Some("error")), "error");
        assert_eq!(log_level(None, None, None), DEFAULT_LOG_LEVEL);
    }

    #[test]
    fn every_metric_carries_its_appliance() {
        let m = Metrics::new();
        let a = m.appliance("ov-east");
        let b = m.appliance("ov-west");
        a.received();
        a.received();
        b.received();
        a.retry("service_manager", "creating", 0, Duration::ZERO, "503");
        a.sink_latency("console", Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains("scmb_messages_received_total{appliance=\"ov-east\"} 2"));
        assert!(text.contains("scmb_messages_received_total{appliance=\"ov-west\"} 1"));
        assert!(
            text.contains("scmb_retries_total{appliance=\"ov-east\",target=\"service_manager\"} 1")
        );
        assert!(text
            .contains("scmb_sink_latency_seconds_count{appliance=\"ov-east\",sink=\"console\"} 1"));
        assert!(text.contains("scmb_bus_connected{appliance=\"ov-west\"} 0"));
    }

    #[test]
    fn sink_incident_counters_carry_appliance_and_sink() {
        let m = Metrics::new();
        let a = m.appliance("ov-east");
        a.sink_incident_created("pagerduty", "/rest/alerts/1", "k");
        a.sink_incident_failed("pagerduty", "/rest/alerts/2", "HTTP 400");
        a.sink_incident_deduplicated("pagerduty", "/rest/alerts/1", "k", "noted");
        a.sink_incident_resolved("pagerduty", "/rest/alerts/1", "k", "resolved");
        a.retry("pagerduty", "triggering", 1, Duration::ZERO, "429");
        let text = m.encode();
        for name in ["created", "failed", "deduplicated", "resolved"] {
            let series = format!(
                "scmb_sink_incidents_{name}_total{{appliance=\"ov-east\",sink=\"pagerduty\"}} 1"
            );
            assert!(text.contains(&series), "{series}\n{text}");
        }
        assert!(text.contains("scmb_retries_total{appliance=\"ov-east\",target=\"pagerduty\"} 1"));
        assert!(
            !text.contains("scmb_incidents_created_total{appliance=\"ov-east\"} 1"),
            "Service Manager's own counters are not touched"
        );
    }

    #[test]
    fn a_ticketing_sinks_incidents_count_in_the_totals_and_by_sink() {
        let m = Metrics::new();
        let a = m.appliance("ov-east");
        a.incident_created("servicenow", "/rest/alerts/1", "INC0010001");
        a.incident_created("service_manager", "/rest/alerts/2", "IM10001");
        a.incident_failed("servicenow", "ServiceNow", "/rest/alerts/3", "400");
        a.incident_deduplicated("servicenow", "/rest/alerts/1", "INC0010001", "noted");
        a.incident_resolved("servicenow", "/rest/alerts/1", "INC0010001", "Resolve");
        let text = m.encode();
        assert!(
            text.contains("scmb_incidents_created_total{appliance=\"ov-east\"} 2"),
            "{text}"
        );
        for name in ["created", "failed", "deduplicated", "resolved"] {
            let series = format!(
                "scmb_sink_incidents_{name}_total{{appliance=\"ov-east\",sink=\"servicenow\"}} 1"
            );
            assert!(text.contains(&series), "{series}\n{text}");
        }
        assert!(text.contains(
            "scmb_sink_incidents_created_total{appliance=\"ov-east\",sink=\"service_manager\"} 1"
        ));
    }

    #[test]
    fn a_pipeline_that_stops_beating_is_stalled_until_it_beats_or_stops() {
        let m = Metrics::new();
        let a = m.appliance("a");
        let _b = m.appliance("b");
        assert!(m.stalled(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(m.stalled(Duration::from_millis(20)), ["b"]);
        m.unwatch("b");
        assert!(m.stalled(Duration::from_millis(20)).is_empty());
        // A stopping appliance's pipeline still beating does not bring it back.
        _b.beat();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(m.stalled(Duration::from_millis(20)), ["a"]);
    }

    #[test]
    fn proc_stat_gives_cpu_memory_threads_and_start() {
        // proc(5): pid (comm) state ppid ... utime=14 stime=15 ... num_threads=20 ...
        // starttime=22 vsize=23 rss=24; a command name with spaces and parentheses.
        let stat = "42 (scmb (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    123456789 300 18446744073709551615";
        let p = parse_stat(stat, 100.0, 4096, 1_700_000_000.0);
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
    }

    #[test]
    fn the_journal_stream_must_be_stderr_itself() {
        assert!(is_journal_stream("8:1234", Some((8, 1234))));
        assert!(!is_journal_stream("8:1235", Some((8, 1234))));
        assert!(!is_journal_stream("8:1234", None));
        assert!(!is_journal_stream("garbage", Some((8, 1234))));
        assert_eq!(syslog_priority(&tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(&tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(&tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(&tracing::Level::TRACE), 7);
    }

    #[test]
    fn metrics_carry_build_process_certificate_and_last_message() {
        let m = Metrics::new();
        let a = m.appliance("ov-east");
        a.client_cert_expiry(1_900_000_000);
        a.received();
        a.pipeline_failed();
        a.pipeline_restarted();
        a.sink_started("pagerduty");
        let text = m.encode();
        assert!(text.contains(&format!(
            "scmb_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains(
            "scmb_appliance_cert_expiry_timestamp_seconds{appliance=\"ov-east\"} 1900000000"
        ));
        assert!(
            text.contains("scmb_appliance_last_message_timestamp_seconds{appliance=\"ov-east\"} 1")
        );
        assert!(text.contains("scmb_appliance_failures_total{appliance=\"ov-east\"} 1"));
        assert!(text.contains("scmb_appliance_restarts_total{appliance=\"ov-east\"} 1"));
        assert!(text.contains(
            "scmb_sink_incidents_failed_total{appliance=\"ov-east\",sink=\"pagerduty\"} 0"
        ));
        for p in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(p), "{p}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "one EOF, at the end");
        assert_eq!(text.matches("# EOF").count(), 1);
        m.remove("ov-east");
        assert!(!m
            .encode()
            .contains("scmb_appliance_cert_expiry_timestamp_seconds{"));
    }

    #[test]
    fn ready_only_when_every_appliance_is_connected() {
        let m = Metrics::new();
        assert!(!m.ready(), "no appliance is not ready");
        let a = m.appliance("a");
        let b = m.appliance("b");
        a.connected("q1");
        assert!(!m.ready());
        b.connected("q2");
        assert!(m.ready());
        b.disconnected(&"broker gone");
        assert!(!m.ready());
        assert_eq!(m.states()["b"], ConnState::Disconnected);
        m.remove("b");
        assert!(m.ready());
    }
}
