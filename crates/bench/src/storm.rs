//! Measurement 2, alert storm: Service Manager answers in 50 ms, OneView PUTs in 10 ms; the
//! appliance raises N critical alerts at once; how long until every one is ticketed (incident
//! created and note written back)? `ov_to_sm` at several concurrencies, and a sequential
//! baseline with the HPE sample's flow implemented here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amqprs::channel::{BasicAckArguments, BasicConsumeArguments};
use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::amqp::Amqp;
use crate::appliance::OvSession;
use crate::procs::{proc_cpu_s, spawn, MachineCpu, Stdout};
use crate::util::{fixed, thousands};
use crate::Ctx;

/// Service Manager latency and OneView PUT latency, ms.
pub const SM_LATENCY_MS: u64 = 50;
pub const PUT_LATENCY_MS: u64 = 10;

#[derive(Debug, Clone)]
pub struct StormFig {
    pub run: usize,
    /// `ov_to_sm` or `baseline`.
    pub mode: &'static str,
    pub concurrency: usize,
    pub alerts: u64,
    /// Alerts ticketed before the deadline.
    pub done: u64,
    /// From the storm request to the last alert ticketed (NaN when not all were).
    pub secs: f64,
    /// ceil(N / C) × (SM + PUT latency).
    pub floor_s: f64,
    /// CPU of the ov_to_sm process over its whole life (NaN for the baseline).
    pub cpu_s: f64,
    /// CPU of the ov_to_sm process from the storm request to its last alert ticketed (NaN for
    /// the baseline).
    pub storm_cpu_s: f64,
    /// CPU of this process over the storm: the simulators, the baseline's client, and the
    /// harness's own reading of the child's output and sampling.
    pub harness_cpu_s: f64,
    /// CPU of the broker over the storm.
    pub broker_cpu_s: f64,
    /// The whole machine over the storm.
    pub machine: MachineCpu,
    /// Incidents Service Manager holds after the storm that it did not hold before (N when
    /// there is neither a duplicate nor a miss).
    pub incidents: u64,
}

impl StormFig {
    pub fn complete(&self) -> bool {
        self.done == self.alerts
    }
    pub fn rate(&self) -> f64 {
        self.alerts as f64 / self.secs
    }
    pub fn json(&self) -> Value {
        let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        json!({
            "run": self.run, "mode": self.mode, "concurrency": self.concurrency,
            "alerts": self.alerts, "ticketed": self.done, "secs": num(self.secs),
            "alertsPerSec": num(self.rate()), "floorSecs": self.floor_s,
            "ratioToFloor": num(self.secs / self.floor_s), "cpuSecs": num(self.cpu_s),
            "stormCpuSecs": num(self.storm_cpu_s), "harnessCpuSecs": num(self.harness_cpu_s),
            "brokerCpuSecs": num(self.broker_cpu_s),
            "machineBusySecs": num(self.machine.busy_s),
            "machineIdleSecs": num(self.machine.idle_s),
            "machineStealSecs": num(self.machine.steal_s),
            "incidentsCreated": self.incidents,
        })
    }
}

/// CPU counters read at the storm's start and end.
struct Meter {
    ov_to_sm: Option<i32>,
    broker: Option<i32>,
    at: (f64, f64, f64, MachineCpu),
}

impl Meter {
    fn start(ctx: &Ctx, ov_to_sm: Option<i32>) -> Result<Meter> {
        let broker = ctx.app.info["brokerPid"].as_i64().map(|p| p as i32);
        Ok(Meter {
            ov_to_sm,
            broker,
            at: Self::read(ov_to_sm, broker)?,
        })
    }
    fn read(ov_to_sm: Option<i32>, broker: Option<i32>) -> Result<(f64, f64, f64, MachineCpu)> {
        let cpu = |p: Option<i32>| p.map_or(f64::NAN, |p| proc_cpu_s(p).unwrap_or(f64::NAN));
        Ok((
            cpu(ov_to_sm),
            cpu(Some(std::process::id() as i32)),
            cpu(broker),
            MachineCpu::now()?,
        ))
    }
    /// (ov_to_sm, harness, broker, machine) since the start.
    fn stop(self) -> Result<(f64, f64, f64, MachineCpu)> {
        let (a, b, c, m) = Self::read(self.ov_to_sm, self.broker)?;
        Ok((
            a - self.at.0,
            b - self.at.1,
            c - self.at.2,
            self.at.3.since(m),
        ))
    }
}

pub fn floor_s(n: u64, c: usize) -> f64 {
    let c = c.max(1) as u64;
    n.div_ceil(c) as f64 * (SM_LATENCY_MS + PUT_LATENCY_MS) as f64 / 1000.0
}

pub async fn set_faults(ctx: &Ctx) -> Result<()> {
    ctx.app
        .sm_control(
            Method::POST,
            "/sim/faults",
            json!({"latencyMs": SM_LATENCY_MS}),
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

pub async fn clear_faults(ctx: &Ctx) -> Result<()> {
    ctx.app
        .sm_control(Method::DELETE, "/sim/faults", Value::Null)
        .await?;
    ctx.app
        .ov_control(Method::DELETE, "/sim/faults/rest", Value::Null)
        .await?;
    Ok(())
}

fn tag(kind: &str, run: usize, c: usize) -> String {
    format!(
        "Bench.{kind}.r{run}c{c}.{:08x}",
        crate::util::unix_nanos() as u32
    )
}

async fn raise_storm(ctx: &Ctx, n: u64, tag: &str) -> Result<()> {
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
    Ok(())
}

/// Removes the storm's alerts so that later catch-ups do not page through them.
async fn remove_alerts(session: &OvSession, tag: &str) -> Result<()> {
    // filter="alertTypeID='<tag>'" (the tag is [A-Za-z0-9.])
    let path = format!("/rest/alerts?filter=%22alertTypeID%3D%27{tag}%27%22");
    session.call(Method::DELETE, &path, None).await?;
    Ok(())
}

/// How many incidents the Service Manager simulator holds.
async fn incident_count(ctx: &Ctx) -> Result<u64> {
    let v = ctx
        .app
        .sm_control(Method::GET, "/sim/incidents", Value::Null)
        .await?;
    Ok(v["incidents"].as_array().map_or(0, |a| a.len() as u64))
}

fn timeout_for(n: u64, c: usize) -> Duration {
    Duration::from_secs_f64(floor_s(n, c) * 3.0 + 60.0)
}

/// One storm against `ov_to_sm --concurrency c`.
pub async fn ov_to_sm(ctx: &Ctx, session: &OvSession, run: usize, c: usize) -> Result<StormFig> {
    let n = ctx.settings.storm_count;
    let tag = tag("Storm", run, c);
    let state = ctx.fresh_dir(&format!("ovtosm-r{run}-c{c}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let stdout = Stdout::Lines(Box::new(move |line: String| {
        if line.contains("ticketed as") {
            let _ = tx.send(Instant::now());
        }
    }));
    let mut args = ctx.tool_args();
    args.extend(
        [
            "-sm",
            &ctx.app.sm,
            "-x",
            "",
            "--concurrency",
            &c.to_string(),
            "--state-dir",
            &state.display().to_string(),
            "--alert-type",
            &format!("{tag}*"),
            // The storm measures the steady state: ov_to_sm's first-start catch-up of every
            // active alert (its default) would list the earlier runs' alerts during it.
            "--look-back",
            "none",
        ]
        .map(String::from),
    );
    let mut child = spawn(
        "ov_to_sm",
        &ctx.ov_to_sm,
        &args,
        &[("SCMB_PASSWORD", "admin123"), ("RUST_LOG", "info")],
        stdout,
    )?;
    // Subscribed, and the start's catch-up done: it lists what was modified since the
    // appliance's clock at the start, so a storm raised while it pages would be listed by it
    // too and the storm would measure a start, not the steady state.
    child
        .wait_stderr_all(
            &["subscribed to the message bus", "catch-up done"],
            Duration::from_secs(60),
        )
        .await?;
    let before = incident_count(ctx).await?;
    let meter = Meter::start(ctx, Some(child.pid))?;
    let t0 = Instant::now();
    raise_storm(ctx, n, &tag).await?;
    let deadline = tokio::time::Instant::from_std(t0 + timeout_for(n, c));
    let mut done = 0u64;
    let mut last = t0;
    let mut exited = false;
    while done < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(t)) => {
                done += 1;
                last = t;
            }
            Ok(None) => {
                exited = true;
                break;
            }
            Err(_) => break,
        }
    }
    let (storm_cpu_s, harness_cpu_s, broker_cpu_s, machine) = meter.stop()?;
    let words = child.last_words();
    let exit = child.terminate(Duration::from_secs(30)).await?;
    if exited {
        bail!("ov_to_sm exited during the storm after {done} of {n} alerts: {words}");
    }
    remove_alerts(session, &tag).await?;
    let incidents = incident_count(ctx).await?.saturating_sub(before);
    let fig = StormFig {
        run,
        mode: "ov_to_sm",
        concurrency: c,
        alerts: n,
        done,
        secs: if done == n {
            (last - t0).as_secs_f64()
        } else {
            f64::NAN
        },
        floor_s: floor_s(n, c),
        cpu_s: exit.cpu_s(),
        storm_cpu_s,
        harness_cpu_s,
        broker_cpu_s,
        machine,
        incidents,
    };
    print_fig(&fig);
    Ok(fig)
}

fn print_fig(f: &StormFig) {
    let who = if f.mode == "baseline" {
        "baseline (sequential)".to_string()
    } else {
        format!("ov_to_sm c={}", f.concurrency)
    };
    let incidents = if f.incidents == f.alerts {
        String::new()
    } else {
        format!(
            "; WARNING: {} incidents created for {} alerts",
            f.incidents, f.alerts
        )
    };
    if f.complete() {
        println!(
            "  run {}  {who:<22} {} alerts in {} s = {} alerts/s; floor {} s ({}× floor){}{incidents}",
            f.run,
            thousands(f.alerts as f64),
            fixed(f.secs, 2),
            fixed(f.rate(), 1),
            fixed(f.floor_s, 2),
            fixed(f.secs / f.floor_s, 2),
            if f.cpu_s.is_finite() {
                format!(
                    "; ov_to_sm CPU {} s during the storm ({} s in all)",
                    fixed(f.storm_cpu_s, 2),
                    fixed(f.cpu_s, 2)
                )
            } else {
                String::new()
            },
        );
        println!(
            "         harness (simulators{}) {} s; broker {} s; machine busy {} s of {} s ({} s stolen)",
            if f.mode == "baseline" { ", the sequential client" } else { "" },
            fixed(f.harness_cpu_s, 2),
            fixed(f.broker_cpu_s, 2),
            fixed(f.machine.busy_s, 2),
            fixed(f.machine.busy_s + f.machine.idle_s + f.machine.steal_s, 2),
            fixed(f.machine.steal_s, 2),
        );
    } else {
        println!(
            "  run {}  {who:<22} INCOMPLETE: {} of {} alerts ticketed before the deadline{incidents}",
            f.run,
            thousands(f.done as f64),
            thousands(f.alerts as f64)
        );
    }
}

/// The HPE sample's flow for one alert: create the incident, find the alert in the alert
/// list, PUT the note with its eTag.
async fn ticket_like_the_sample(
    http: &reqwest::Client,
    sm_base: &str,
    ov: &OvSession,
    alert: &Value,
) -> Result<()> {
    let uri = alert["uri"].as_str().context("alert without uri")?;
    let name = alert["associatedResource"]["resourceName"]
        .as_str()
        .unwrap_or("");
    let description = format!(
        "{}\nSeverity: {}\nResource: {name}\nCorrective action: {}\nalertUri: {uri}",
        alert["description"].as_str().unwrap_or(""),
        alert["severity"].as_str().unwrap_or(""),
        alert["correctiveAction"].as_str().unwrap_or(""),
    );
    let incident = json!({"Incident": {
        "Title": "OneView Alert", "Description": description, "Category": "incident",
        "Area": "hardware", "Subarea": "hardware failure", "Impact": "4", "Urgency": "1",
        "AssignmentGroup": "Service Manager", "Service": "MyDevices", "AffectedCI": name,
    }});
    let r = http
        .post(format!("{sm_base}/SM/9/rest/incidents"))
        .basic_auth("falcon", Some(""))
        .json(&incident)
        .send()
        .await
        .context("POST /SM/9/rest/incidents")?;
    let status = r.status();
    let v: Value = r.json().await.context("POST /SM/9/rest/incidents")?;
    let id = v["Incident"]["IncidentID"]
        .as_str()
        .with_context(|| format!("SM refused the incident ({status}): {v}"))?;
    let list = ov
        .call(
            Method::GET,
            &format!("/rest/alerts?filter=%22uri%3D%27{uri}%27%22"),
            None,
        )
        .await?;
    let etag = list["members"][0]["eTag"]
        .as_str()
        .with_context(|| format!("{uri} is not in the alert list"))?;
    ov.call(
        Method::PUT,
        uri,
        Some(&json!({"notes": format!("Service Manager incident: {id}"), "eTag": etag})),
    )
    .await?;
    Ok(())
}

/// The sequential baseline: one consumer, one alert after the other.
pub async fn baseline(ctx: &Ctx, session: &Arc<OvSession>, run: usize) -> Result<StormFig> {
    let n = ctx.settings.baseline_count;
    let tag = tag("Baseline", run, 1);
    let amqp = Amqp::open(&ctx.app.bus_target(false)).await?;
    let queue = amqp.declare_bound_queue(true).await?;
    let (_, mut rx) = amqp
        .ch
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "")
                .manual_ack(true)
                .finish(),
        )
        .await
        .context("consuming the baseline queue")?;
    let before = incident_count(ctx).await?;
    let ch = amqp.ch.clone();
    let http = ctx.app.client.http.clone();
    let sm_base = format!("http://{}", ctx.app.sm);
    let ov = session.clone();
    let wanted = tag.clone();
    let worker = tokio::spawn(async move {
        let mut done = 0u64;
        while done < n {
            let Some(msg) = rx.recv().await else {
                bail!("the broker closed the baseline consumer after {done} alerts");
            };
            let Some(d) = msg.deliver else { continue };
            let body: Value = serde_json::from_slice(msg.content.as_deref().unwrap_or_default())
                .unwrap_or(Value::Null);
            let r = &body["resource"];
            if body["changeType"] == "Created"
                && r["alertState"] == "Active"
                && r["severity"] == "Critical"
                && r["alertTypeID"].as_str() == Some(wanted.as_str())
            {
                ticket_like_the_sample(&http, &sm_base, &ov, r).await?;
                done += 1;
            }
            ch.basic_ack(BasicAckArguments::new(d.delivery_tag(), false))
                .await
                .context("basic.ack")?;
        }
        Ok(Instant::now())
    });
    let meter = Meter::start(ctx, None)?;
    let t0 = Instant::now();
    raise_storm(ctx, n, &tag).await?;
    let limit = timeout_for(n, 1);
    let mut worker = worker;
    let res = tokio::time::timeout(limit, &mut worker).await;
    let (storm_cpu_s, harness_cpu_s, broker_cpu_s, machine) = meter.stop()?;
    worker.abort();
    amqp.close().await;
    remove_alerts(session, &tag).await?;
    let end = match res {
        Ok(joined) => joined.context("the baseline worker")??,
        Err(_) => bail!(
            "the sequential baseline did not finish {n} alerts within {} s",
            limit.as_secs()
        ),
    };
    let fig = StormFig {
        run,
        mode: "baseline",
        concurrency: 1,
        alerts: n,
        done: n,
        secs: (end - t0).as_secs_f64(),
        floor_s: floor_s(n, 1),
        cpu_s: f64::NAN,
        storm_cpu_s,
        harness_cpu_s,
        broker_cpu_s,
        machine,
        incidents: incident_count(ctx).await?.saturating_sub(before),
    };
    print_fig(&fig);
    Ok(fig)
}
