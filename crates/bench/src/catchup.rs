//! Measurement 5, catch-up: the first start of `scmb run` (one appliance, a JSON-lines sink,
//! `look_back = "all"`) on an appliance that already holds `alerts` alerts, a fifth of them
//! active critical ones it has never seen; while it pages through them, `bus` more critical
//! alerts are raised and arrive over the bus. Measures the time until every critical alert is
//! in the file, the process's CPU and peak RSS (`VmHWM`), and how many of the bus alerts were
//! written before the last listed one: the bus keeps flowing while a catch-up pages.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::procs::{spawn, Stdout};
use crate::util::{fixed, thousands};
use crate::Ctx;

#[derive(Debug, Clone)]
pub struct CatchUpFig {
    pub run: usize,
    /// Alerts on the appliance before the start.
    pub alerts: u64,
    /// Of them, the critical ones the catch-up must write.
    pub listed: u64,
    /// Critical alerts raised over the bus while it catches up.
    pub bus: u64,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub peak_rss_kb: Option<u64>,
    /// Bus alerts written before the last listed alert: handled while the catch-up paged.
    pub bus_during: u64,
}

impl CatchUpFig {
    pub fn peak_rss_kb(&self) -> f64 {
        self.peak_rss_kb.map_or(f64::NAN, |k| k as f64)
    }
    pub fn json(&self) -> Value {
        json!({
            "run": self.run, "alerts": self.alerts, "listedCriticals": self.listed,
            "busCriticals": self.bus, "wallSecs": self.wall_s, "cpuUserSecs": self.user_s,
            "cpuSysSecs": self.sys_s, "peakRssKb": self.peak_rss_kb,
            "busWrittenBeforeTheLastListed": self.bus_during,
        })
    }
}

async fn storm(ctx: &Ctx, n: u64, rate: u64, critical_in: u64, tag: &str) -> Result<()> {
    let r = ctx
        .app
        .ov_control(
            Method::POST,
            "/sim/storm",
            json!({"count": n, "rate": rate,
                   "severities": {"Critical": 1, "Warning": critical_in - 1},
                   "fields": {"alertTypeID": tag}}),
        )
        .await?;
    if r["raised"].as_u64() != Some(n) {
        bail!("the storm raised {} alerts instead of {n}", r["raised"]);
    }
    Ok(())
}

/// Messages the simulator's publisher has sent or dropped so far.
async fn bus_out(ctx: &Ctx) -> Result<u64> {
    let s = ctx
        .app
        .ov_control(Method::GET, "/sim/stats", Value::Null)
        .await?;
    Ok(s["published"].as_u64().unwrap_or(0) + s["dropped"].as_u64().unwrap_or(0))
}

/// Waits until the simulator's publisher has sent (or dropped) `n` messages more than `from`:
/// raising alerts queues their `Created` messages, and a backlog still draining would put the
/// bus alerts raised later behind it, so that they would reach scmb late for reasons of the
/// simulator's.
async fn bus_drained(ctx: &Ctx, from: u64, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while bus_out(ctx).await? < from + n {
        if Instant::now() > deadline {
            bail!(
                "the simulator did not publish the {n} messages of the raised alerts within 120 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Lines of `path` (0 while it does not exist).
fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

pub async fn run_once(ctx: &Ctx, run: usize) -> Result<CatchUpFig> {
    let (alerts, bus) = if ctx.settings.quick {
        (2_500, 100)
    } else {
        (25_000, 500)
    };
    let listed = alerts / 5;
    let tag = format!(
        "Bench.catchup.r{run}.{:08x}",
        crate::util::unix_nanos() as u32
    );
    let (list_tag, bus_tag) = (format!("{tag}.listed"), format!("{tag}.bus"));
    let t = Instant::now();
    let out_before = bus_out(ctx).await?;
    storm(ctx, alerts, 0, 5, &list_tag).await?;
    bus_drained(ctx, out_before, alerts).await?;
    println!(
        "  run {run}  {} alerts raised on the appliance and their messages published in {} s ({} critical)",
        thousands(alerts as f64),
        fixed(t.elapsed().as_secs_f64(), 1),
        thousands(listed as f64)
    );
    let dir = ctx.fresh_dir(&format!("catchup-{run}"))?;
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[[appliance]]\nname = \"bench\"\naddress = \"{rest}\"\npassword_env = \"SCMB_BENCH_PASSWORD\"\ncert_dir = \"{certs}\"\namqp_port = {port}\ntls_server_name = \"localhost\"\nlook_back = \"all\"\n[appliance.filter]\nalert_types = [\"{tag}*\"]\n[appliance.jsonl]\npath = \"alerts.jsonl\"\n",
            state = dir.display(),
            rest = ctx.app.rest,
            certs = ctx.cert_dir.display(),
            port = ctx.app.amqps_port,
        ),
    )?;
    let out = dir.join("bench/alerts.jsonl");
    let args = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let mut child = spawn(
        "scmb run",
        &ctx.scmb,
        &args,
        &[
            ("SCMB_BENCH_PASSWORD", "admin123"),
            ("RUST_LOG", "warn,scmb=info"),
        ],
        Stdout::Null,
    )?;
    child
        .wait_stderr("subscribed to the message bus", Duration::from_secs(60))
        .await?;
    // New critical alerts over the bus while the catch-up pages (all critical: 1 in 1).
    storm(ctx, bus, 2_000, 1, &bus_tag).await?;
    let want = listed + bus;
    let deadline = Instant::now() + Duration::from_secs(120 + alerts / 100);
    let written = loop {
        let l = lines(&out);
        if l.len() as u64 >= want {
            break l;
        }
        if Instant::now() > deadline {
            let _ = child.terminate(Duration::from_secs(10)).await;
            bail!(
                "scmb run wrote {} of {want} alerts within the deadline",
                l.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done = Instant::now();
    let started = child.started;
    let mut exit = child.terminate(Duration::from_secs(40)).await?;
    exit.wall = done.duration_since(started);
    let last_listed = written
        .iter()
        .rposition(|l| l.contains(&list_tag))
        .unwrap_or(0);
    let bus_during = written[..last_listed]
        .iter()
        .filter(|l| l.contains(&bus_tag))
        .count() as u64;
    // Later measurements must not page through these.
    for t in [&list_tag, &bus_tag] {
        let path = format!("/rest/alerts?filter=%22alertTypeID%3D%27{t}%27%22");
        let session = crate::appliance::OvSession::login(&ctx.app).await?;
        session.call(Method::DELETE, &path, None).await?;
    }
    let fig = CatchUpFig {
        run,
        alerts,
        listed,
        bus,
        wall_s: exit.wall.as_secs_f64(),
        user_s: exit.user_s,
        sys_s: exit.sys_s,
        peak_rss_kb: exit.peak_rss_kb,
        bus_during,
    };
    println!(
        "  run {run}  first start: {} listed + {} bus critical alerts written in {} s; CPU {} s; peak RSS {} KB; {} of the bus alerts written while the catch-up paged",
        thousands(listed as f64),
        thousands(bus as f64),
        fixed(fig.wall_s, 2),
        fixed(fig.user_s + fig.sys_s, 2),
        thousands(fig.peak_rss_kb()),
        bus_during
    );
    Ok(fig)
}
