//! Measurement 2b, alert storm into the SaaS sinks of `scmb run`: ServiceNow (Table API) and
//! PagerDuty (Events API v2), each answering in 150 ms, OneView PUTs in 10 ms. One `scmb run`
//! with one appliance and only the sink under test starts, subscribes and finishes its
//! first-start catch-up; then the appliance raises N critical alerts at once. The time runs
//! until every alert has its incident and its note written back: the same end condition as
//! the `ov_to_sm` storm.
//!
//! The clock stops at the last of N "note written to the alert" lines (`scmb run` logs one per
//! alert once the note's PUT succeeded, after the incident was created); the simulators are
//! then asked whether they agree: the sink's simulator must hold N incidents, the appliance N
//! alerts carrying the sink's note. If they do not, they are polled until they do (and the
//! clock runs on) or the deadline passes. Polling them throughout instead (1,000 incidents and
//! 1,000 alerts serialised every few ms, by the harness on the same 2 cores) would slow the
//! process under test.
//!
//! The latency floor is what the sink must do one after the other for one alert, times the
//! rounds its lanes need: ⌈N / lanes⌉ × (the sink's calls + the OneView note PUT).
//! - ServiceNow: `POST incident` + the PUT = 150 + 10 ms, at `concurrency = 64`. (The look-up
//!   by `correlation_id` comes before every create but a first attempt's, and every alert of
//!   the storm is one: its `Created` message, seen for the first time on a queue of the
//!   connection's own, for an alert the store knows nothing of.)
//! - PagerDuty: `POST /v2/enqueue` + the PUT = 150 + 10 ms, at `concurrency = 64`.
//!
//! The OneView GET of the alert before the create (its change log: the duplicate guard) and
//! the store's commits are not slowed by the simulator and are not in the floor.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::appliance::OvSession;
use crate::procs::{proc_cpu_s, spawn, Line, MachineCpu, Stdout};
use crate::storm::PUT_LATENCY_MS;
use crate::util::{fixed, thousands};
use crate::Ctx;

/// Latency of every ServiceNow and PagerDuty API call, ms.
pub const SINK_LATENCY_MS: u64 = 150;
/// `[appliance.servicenow] concurrency`.
pub const SERVICENOW_CONCURRENCY: usize = 64;
/// `[appliance.pagerduty] concurrency`.
pub const PAGERDUTY_CONCURRENCY: usize = 64;
/// Any well-formed integration key: the simulator knows every one.
const ROUTING_KEY: &str = "benchbenchbenchbenchbenchbench01";

/// The sink under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    ServiceNow,
    PagerDuty,
}

impl Sink {
    /// The measurement's name (`--only`, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Sink::ServiceNow => "storm-servicenow",
            Sink::PagerDuty => "storm-pagerduty",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Sink::ServiceNow => "ServiceNow",
            Sink::PagerDuty => "PagerDuty",
        }
    }
    /// Alerts in work at once.
    pub fn lanes(self) -> usize {
        match self {
            Sink::ServiceNow => SERVICENOW_CONCURRENCY,
            Sink::PagerDuty => PAGERDUTY_CONCURRENCY,
        }
    }
    /// The sink's calls that one alert makes one after the other (each `SINK_LATENCY_MS`).
    pub fn calls(self) -> u64 {
        match self {
            Sink::ServiceNow => 1,
            Sink::PagerDuty => 1,
        }
    }
    /// What the floor counts, for people.
    pub fn floor_text(self) -> String {
        match self {
            Sink::ServiceNow => format!("POST {SINK_LATENCY_MS} + OneView PUT {PUT_LATENCY_MS} ms"),
            Sink::PagerDuty => {
                format!("enqueue {SINK_LATENCY_MS} + OneView PUT {PUT_LATENCY_MS} ms")
            }
        }
    }
    /// One alert's sequential latency, ms.
    pub fn per_alert_ms(self) -> u64 {
        self.calls() * SINK_LATENCY_MS + PUT_LATENCY_MS
    }
    /// ⌈n / lanes⌉ × the sequential latency of one alert, s.
    pub fn floor_s(self, n: u64) -> f64 {
        n.div_ceil(self.lanes() as u64) as f64 * self.per_alert_ms() as f64 / 1000.0
    }
    /// The sink's label in `scmb run`'s metrics.
    fn metric_label(self) -> &'static str {
        match self {
            Sink::ServiceNow => "servicenow",
            Sink::PagerDuty => "pagerduty",
        }
    }
    /// What the sink's note in an alert contains (the default note of each sink).
    fn note_marker(self) -> &'static str {
        match self {
            Sink::ServiceNow => "Case automatically logged in ServiceNow with ID:",
            Sink::PagerDuty => "Paged on PagerDuty (dedup key ",
        }
    }
    async fn control(self, ctx: &Ctx, method: Method, path: &str, body: Value) -> Result<Value> {
        match self {
            Sink::ServiceNow => ctx.app.servicenow_control(method, path, body).await,
            Sink::PagerDuty => ctx.app.pagerduty_control(method, path, body).await,
        }
    }
    /// The sink's table of the config file.
    fn table(self, ctx: &Ctx) -> String {
        match self {
            Sink::ServiceNow => format!(
                "[appliance.servicenow]\ninstance = \"{}\"\nuser = \"admin\"\npassword_env = \"SCMB_BENCH_SN_PASSWORD\"\nconcurrency = {SERVICENOW_CONCURRENCY}\n",
                ctx.app.servicenow
            ),
            Sink::PagerDuty => format!(
                "[appliance.pagerduty]\nurl = \"{}\"\nrouting_key_env = \"SCMB_BENCH_PD_KEY\"\nconcurrency = {PAGERDUTY_CONCURRENCY}\n",
                ctx.app.pagerduty
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SaasFig {
    pub run: usize,
    pub sink: Sink,
    pub lanes: usize,
    pub alerts: u64,
    /// Alerts whose note was logged before the deadline.
    pub done: u64,
    /// From the storm request to the last alert done (NaN when not all were).
    pub secs: f64,
    /// From the storm request to the first note logged (one alert's latency, at best
    /// `per_alert_ms`).
    pub first_s: f64,
    pub floor_s: f64,
    /// CPU of `scmb run` from the storm request to the last alert done.
    pub cpu_s: f64,
    /// CPU of `scmb run` over its whole life (start, catch-up, storm, stop).
    pub cpu_total_s: f64,
    /// Incidents in the sink's simulator (emptied before the run): N when there is neither a
    /// duplicate nor a miss.
    pub incidents: u64,
    /// Storm alerts whose change log carries the sink's note.
    pub noted: u64,
    /// API calls the sink's simulator answered from the storm request to the end.
    pub sink_calls: u64,
    /// From `scmb run`'s metrics at the end: the sink's own time over every event it handled
    /// (the storm's creations and the updates their notes published), s, and how many events.
    pub sink_time_s: f64,
    pub sink_events: u64,
    /// Retries of any call (`scmb_retries_total`, every target).
    pub retries: u64,
    /// CPU of this harness (the simulators: OneView REST, the sink's API, the publisher)
    /// during the storm, s.
    pub harness_cpu_s: f64,
    /// CPU of the RabbitMQ node (`beam.smp`) during the storm, s.
    pub broker_cpu_s: f64,
    /// The whole machine during the storm (every process: the broker too), s.
    pub machine: MachineCpu,
}

impl SaasFig {
    pub fn complete(&self) -> bool {
        self.done == self.alerts && self.secs.is_finite()
    }
    pub fn rate(&self) -> f64 {
        self.alerts as f64 / self.secs
    }
    pub fn json(&self) -> Value {
        let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        json!({
            "run": self.run, "measurement": self.sink.name(), "sink": self.sink.title(),
            "lanes": self.lanes, "alerts": self.alerts, "noteLogged": self.done,
            "secs": num(self.secs), "firstNoteSecs": num(self.first_s),
            "alertsPerSec": num(self.rate()),
            "floorSecs": self.floor_s, "floorPerAlertMs": self.sink.per_alert_ms(),
            "floorCounts": self.sink.floor_text(),
            "ratioToFloor": num(self.secs / self.floor_s), "cpuSecs": num(self.cpu_s),
            "cpuTotalSecs": num(self.cpu_total_s), "incidents": self.incidents,
            "alertsNoted": self.noted, "sinkApiCalls": self.sink_calls,
            "sinkTimeSecs": num(self.sink_time_s), "sinkEvents": self.sink_events,
            "retries": self.retries, "harnessCpuSecs": num(self.harness_cpu_s),
            "brokerCpuSecs": num(self.broker_cpu_s),
            "machineBusySecs": num(self.machine.busy_s),
            "machineIdleSecs": num(self.machine.idle_s),
            "machineStealSecs": num(self.machine.steal_s),
        })
    }
}

/// The `alert=` field of a log line.
fn alert_of(line: &str) -> Option<&str> {
    let i = line.find(" alert=")?;
    let rest = &line[i + " alert=".len()..];
    Some(
        rest.split_whitespace()
            .next()
            .unwrap_or(rest)
            .trim_matches('"'),
    )
}

/// How many incidents the sink's simulator holds.
async fn incident_count(ctx: &Ctx, sink: Sink) -> Result<u64> {
    let v = sink
        .control(ctx, Method::GET, "/sim/incidents", Value::Null)
        .await?;
    Ok(v["incidents"].as_array().map_or(0, |a| a.len() as u64))
}

/// The sum of a metric's samples whose labels contain `labels` (all when empty).
fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `scmb run`'s metrics: the sink's time (s) and events, and every retry.
async fn scrape(ctx: &Ctx, url: &str, sink: Sink) -> Result<(f64, u64, u64)> {
    let text = ctx
        .app
        .client
        .http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("GET {url}"))?;
    let label = format!("sink=\"{}\"", sink.metric_label());
    Ok((
        metric_sum(&text, "scmb_sink_latency_seconds_sum", &label),
        metric_sum(&text, "scmb_sink_latency_seconds_count", &label) as u64,
        metric_sum(&text, "scmb_retries_total", "") as u64,
    ))
}

/// A port nobody listens on now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("finding a free port")?.port())
}

/// API calls the sink's simulator has answered (its `/sim/...` routes not counted).
async fn sink_requests(ctx: &Ctx, sink: Sink) -> Result<u64> {
    let v = sink
        .control(ctx, Method::GET, "/sim/stats", Value::Null)
        .await?;
    Ok(v["requests"].as_u64().unwrap_or(0))
}

/// How many of the storm's alerts carry the sink's note (pages of 500).
async fn noted_count(session: &OvSession, sink: Sink, tag: &str) -> Result<u64> {
    let marker = sink.note_marker();
    let (mut start, mut noted) = (0u64, 0u64);
    loop {
        let path =
            format!("/rest/alerts?filter=%22alertTypeID%3D%27{tag}%27%22&start={start}&count=500");
        let page = session.call(Method::GET, &path, None).await?;
        let members = page["members"].as_array().cloned().unwrap_or_default();
        noted += members
            .iter()
            .filter(|a| {
                a["changeLog"].as_array().is_some_and(|log| {
                    log.iter()
                        .any(|e| e["notes"].as_str().is_some_and(|n| n.contains(marker)))
                })
            })
            .count() as u64;
        if members.len() < 500 {
            return Ok(noted);
        }
        start += members.len() as u64;
    }
}

fn timeout_for(sink: Sink, n: u64) -> Duration {
    Duration::from_secs_f64(sink.floor_s(n) * 3.0 + 60.0)
}

async fn set_faults(ctx: &Ctx, sink: Sink) -> Result<()> {
    // Empty tables (the look-ups stay as cheap in every run) and no fault but the latency.
    sink.control(ctx, Method::POST, "/sim/reset", Value::Null)
        .await?;
    sink.control(
        ctx,
        Method::POST,
        "/sim/faults",
        json!({"latencyMs": SINK_LATENCY_MS}),
    )
    .await?;
    ctx.app
        .ov_control(
            Method::POST,
            "/sim/faults/rest",
            json!({"latencyMs": PUT_LATENCY_MS, "seconds": 3600, "method": "PUT"}),
        )
        .await?;
    Ok(())
}

async fn clear_faults(ctx: &Ctx, sink: Sink) -> Result<()> {
    sink.control(ctx, Method::POST, "/sim/reset", Value::Null)
        .await?;
    ctx.app
        .ov_control(Method::DELETE, "/sim/faults/rest", Value::Null)
        .await?;
    Ok(())
}

/// One storm into `sink` through `scmb run`.
pub async fn run_once(ctx: &Ctx, session: &OvSession, sink: Sink, run: usize) -> Result<SaasFig> {
    set_faults(ctx, sink).await?;
    let res = storm(ctx, session, sink, run).await;
    let cleared = clear_faults(ctx, sink).await;
    let fig = res?;
    cleared?;
    Ok(fig)
}

async fn storm(ctx: &Ctx, session: &OvSession, sink: Sink, run: usize) -> Result<SaasFig> {
    let n = ctx.settings.storm_count;
    let tag = format!(
        "Bench.{}.r{run}.{:08x}",
        sink.title(),
        crate::util::unix_nanos() as u32
    );
    let dir = ctx.fresh_dir(&format!("{}-r{run}", sink.name()))?;
    let config = dir.join("scmb.toml");
    let metrics_port = free_port()?;
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[[appliance]]\nname = \"bench\"\naddress = \"{rest}\"\npassword_env = \"SCMB_BENCH_PASSWORD\"\ncert_dir = \"{certs}\"\namqp_port = {port}\ntls_server_name = \"localhost\"\n[appliance.filter]\nalert_types = [\"{tag}*\"]\n{table}",
            state = dir.display(),
            rest = ctx.app.rest,
            certs = ctx.cert_dir.display(),
            port = ctx.app.amqps_port,
            table = sink.table(ctx),
        ),
    )?;
    let args = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    // `SCMB_BENCH_RUN_LOG` (e.g. `debug`) for a closer look: the lines read until the last
    // note are kept in the run's directory, as scmb-run.log.
    let log_level =
        std::env::var("SCMB_BENCH_RUN_LOG").unwrap_or_else(|_| "warn,scmb=info".to_string());
    let mut kept: Vec<String> = Vec::new();
    let mut child = spawn(
        "scmb run",
        &ctx.scmb,
        &args,
        &[
            ("SCMB_BENCH_PASSWORD", "admin123"),
            ("SCMB_BENCH_SN_PASSWORD", "admin"),
            ("SCMB_BENCH_PD_KEY", ROUTING_KEY),
            // The simulators are on the loopback: never through a proxy of the environment.
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("no_proxy", "127.0.0.1,localhost"),
            ("RUST_LOG", &log_level),
        ],
        Stdout::Null,
    )?;
    // Subscribed, and the first start's catch-up (every active admitted alert: none) done.
    child
        .wait_stderr_all(
            &["subscribed to the message bus", "catch-up done"],
            Duration::from_secs(60),
        )
        .await?;
    let before_incidents = incident_count(ctx, sink).await?;
    let before_calls = sink_requests(ctx, sink).await?;
    let cpu0 = proc_cpu_s(child.pid)?;
    let me = std::process::id() as i32;
    let harness0 = proc_cpu_s(me)?;
    let machine0 = MachineCpu::now()?;
    let broker = ctx.app.info["brokerPid"].as_i64().map(|p| p as i32);
    let broker_cpu = || broker.map_or(f64::NAN, |p| proc_cpu_s(p).unwrap_or(f64::NAN));
    let broker0 = broker_cpu();
    let t0 = Instant::now();
    let r = ctx
        .app
        .ov_control(
            Method::POST,
            "/sim/storm",
            json!({"count": n, "rate": 0, "severities": {"Critical": 1},
                   "fields": {"alertTypeID": tag}}),
        )
        .await?;
    if r["raised"].as_u64() != Some(n) {
        bail!("the storm raised {} alerts instead of {n}", r["raised"]);
    }
    let deadline = tokio::time::Instant::from_std(t0 + timeout_for(sink, n));
    let mut noted_uris: HashSet<String> = HashSet::new();
    let mut logged = 0u64;
    let mut last = t0;
    let mut first: Option<Instant> = None;
    let mut exited = false;
    while logged < n {
        match child.next_stderr(deadline).await {
            Line::Read(at, line) if line.contains("note written to the alert") => {
                kept.push(line.clone());
                match alert_of(&line) {
                    Some(uri) => {
                        if noted_uris.insert(uri.to_string()) {
                            logged += 1;
                        }
                    }
                    None => logged += 1,
                }
                first.get_or_insert(at);
                last = at;
            }
            Line::Read(_, line) => kept.push(line),
            Line::Closed => {
                exited = true;
                break;
            }
            Line::TimedOut => break,
        }
    }
    let mut cpu1 = proc_cpu_s(child.pid).unwrap_or(f64::NAN);
    let mut harness1 = proc_cpu_s(me).unwrap_or(f64::NAN);
    let mut machine1 = MachineCpu::now()?;
    let mut broker1 = broker_cpu();
    let sink_calls = sink_requests(ctx, sink).await?.saturating_sub(before_calls);
    // The simulators must agree: N incidents, N alerts noted. Polled (the clock running on)
    // until they do, should the log have run ahead of them.
    let (mut incidents, mut noted) = (0u64, 0u64);
    let mut agreed = false;
    if logged == n {
        loop {
            incidents = incident_count(ctx, sink)
                .await?
                .saturating_sub(before_incidents);
            noted = noted_count(session, sink, &tag).await?;
            if incidents >= n && noted >= n {
                agreed = true;
                break;
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            last = Instant::now();
            cpu1 = proc_cpu_s(child.pid).unwrap_or(f64::NAN);
            harness1 = proc_cpu_s(me).unwrap_or(f64::NAN);
            machine1 = MachineCpu::now()?;
            broker1 = broker_cpu();
        }
    }
    let (sink_time_s, sink_events, retries) = match scrape(ctx, &metrics_url, sink).await {
        Ok(m) => m,
        Err(e) => {
            println!("    (scmb run's metrics unreadable: {e:#})");
            (f64::NAN, 0, 0)
        }
    };
    let _ = std::fs::write(dir.join("scmb-run.log"), kept.join("\n"));
    let words = child.last_words();
    let exit = child.terminate(Duration::from_secs(30)).await?;
    if exited {
        bail!(
            "scmb run exited during the {} storm after {logged} of {n} alerts: {words}",
            sink.title()
        );
    }
    if !agreed {
        incidents = incident_count(ctx, sink)
            .await?
            .saturating_sub(before_incidents);
        noted = noted_count(session, sink, &tag).await?;
    }
    // Removed once scmb run is gone (a deletion it saw would resolve the incidents).
    let del = format!("/rest/alerts?filter=%22alertTypeID%3D%27{tag}%27%22");
    session.call(Method::DELETE, &del, None).await?;
    let complete = logged == n && agreed;
    let fig = SaasFig {
        run,
        sink,
        lanes: sink.lanes(),
        alerts: n,
        done: if complete { n } else { logged.min(noted) },
        secs: if complete {
            (last - t0).as_secs_f64()
        } else {
            f64::NAN
        },
        first_s: first.map_or(f64::NAN, |t| (t - t0).as_secs_f64()),
        floor_s: sink.floor_s(n),
        cpu_s: cpu1 - cpu0,
        cpu_total_s: exit.cpu_s(),
        incidents,
        noted,
        sink_calls,
        sink_time_s,
        sink_events,
        retries,
        harness_cpu_s: harness1 - harness0,
        broker_cpu_s: broker1 - broker0,
        machine: machine0.since(machine1),
    };
    print_fig(&fig);
    Ok(fig)
}

fn print_fig(f: &SaasFig) {
    let who = format!("{} {} lanes", f.sink.title(), f.lanes);
    let check = if f.incidents == f.alerts && f.noted == f.alerts {
        String::new()
    } else {
        format!(
            "; WARNING: {} incidents and {} alerts noted for {} alerts",
            f.incidents, f.noted, f.alerts
        )
    };
    if f.complete() {
        println!(
            "  run {}  {who:<22} {} alerts in {} s = {} alerts/s; floor {} s ({}× floor); first note after {} s; {} {} calls per alert; the sink's time {} ms per alert over {} events, {} retries; scmb run CPU {} s during the storm ({} s in all); harness (simulators) {} s; broker {} s; machine busy {} s of {} s ({} s stolen){check}",
            f.run,
            thousands(f.alerts as f64),
            fixed(f.secs, 2),
            fixed(f.rate(), 1),
            fixed(f.floor_s, 2),
            fixed(f.secs / f.floor_s, 2),
            fixed(f.first_s, 2),
            fixed(f.sink_calls as f64 / f.alerts as f64, 2),
            f.sink.title(),
            fixed(f.sink_time_s * 1000.0 / f.alerts as f64, 0),
            f.sink_events,
            f.retries,
            fixed(f.cpu_s, 2),
            fixed(f.cpu_total_s, 2),
            fixed(f.harness_cpu_s, 2),
            fixed(f.broker_cpu_s, 2),
            fixed(f.machine.busy_s, 2),
            fixed(f.machine.busy_s + f.machine.idle_s + f.machine.steal_s, 2),
            fixed(f.machine.steal_s, 2),
        );
    } else {
        println!(
            "  run {}  {who:<22} INCOMPLETE: {} of {} alerts noted before the deadline{check}",
            f.run,
            thousands(f.done as f64),
            thousands(f.alerts as f64)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_count_the_sequential_calls_per_alert_and_the_rounds_of_lanes() {
        assert_eq!(Sink::ServiceNow.per_alert_ms(), 160);
        assert!((Sink::ServiceNow.floor_s(1000) - 16.0 * 0.16).abs() < 1e-9);
        assert_eq!(Sink::PagerDuty.per_alert_ms(), 160);
        assert!((Sink::PagerDuty.floor_s(1000) - 16.0 * 0.16).abs() < 1e-9);
        assert!((Sink::ServiceNow.floor_s(200) - 4.0 * 0.16).abs() < 1e-9);
    }

    #[test]
    fn metric_samples_are_summed_by_label() {
        let t = "# HELP scmb_retries_total x\nscmb_retries_total{appliance=\"b\",target=\"oneview\"} 2\nscmb_retries_total{appliance=\"b\",target=\"pagerduty\"} 3\nscmb_sink_latency_seconds_sum{appliance=\"b\",sink=\"pagerduty\"} 1.5\nscmb_sink_latency_seconds_sum_x 9\n";
        assert_eq!(metric_sum(t, "scmb_retries_total", ""), 5.0);
        assert_eq!(
            metric_sum(t, "scmb_sink_latency_seconds_sum", "sink=\"pagerduty\""),
            1.5
        );
    }

    #[test]
    fn the_alert_field_is_read_from_a_log_line() {
        let l = "2026-11-30T10:00:00.000Z  INFO appliance{name=bench}: note written to the alert alert=/rest/alerts/12 incident=INC0010001";
        assert_eq!(alert_of(l), Some("/rest/alerts/12"));
        assert_eq!(alert_of("note written to the alert"), None);
    }
}
