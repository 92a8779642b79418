//! Measurement 6, appliances: one `scmb run` process serving N appliances (20 and 100 by
//! default), each with its own connection, queue, store and JSON-lines sink. They all point at
//! the one simulated appliance under different names, so every message the storm publishes
//! reaches each of them: a 10,000-message storm (10 % new active critical) is 10,000 messages
//! per appliance. Measures the time until every appliance has written its criticals, the
//! process's CPU and its peak RSS (`VmHWM`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::procs::{spawn, Stdout};
use crate::util::{fixed, thousands};
use crate::Ctx;

#[derive(Debug, Clone)]
pub struct AppliancesFig {
    pub run: usize,
    pub appliances: usize,
    /// Messages each appliance receives.
    pub messages: u64,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub peak_rss_kb: Option<u64>,
    /// RSS once every appliance was connected, before the storm.
    pub connected_rss_kb: u64,
}

impl AppliancesFig {
    pub fn peak_rss_kb(&self) -> f64 {
        self.peak_rss_kb.map_or(f64::NAN, |k| k as f64)
    }
    pub fn json(&self) -> Value {
        json!({
            "run": self.run, "appliances": self.appliances, "messagesEach": self.messages,
            "wallSecs": self.wall_s, "cpuUserSecs": self.user_s, "cpuSysSecs": self.sys_s,
            "peakRssKb": self.peak_rss_kb, "connectedRssKb": self.connected_rss_kb,
        })
    }
}

fn count_lines(path: &std::path::Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
        .unwrap_or(0)
}

pub async fn run_once(ctx: &Ctx, run: usize, n: usize) -> Result<AppliancesFig> {
    let messages: u64 = if ctx.settings.quick { 1_000 } else { 10_000 };
    let criticals = messages / 10;
    let tag = format!(
        "Bench.fleet.r{run}n{n}.{:08x}",
        crate::util::unix_nanos() as u32
    );
    let dir = ctx.fresh_dir(&format!("fleet-{run}-{n}"))?;
    let mut config = format!("state_dir = \"{}\"\n", dir.display());
    for i in 0..n {
        let _ = write!(
            config,
            "[[appliance]]\nname = \"a{i:03}\"\naddress = \"{rest}\"\npassword_env = \"SCMB_BENCH_PASSWORD\"\ncert_dir = \"{certs}\"\namqp_port = {port}\ntls_server_name = \"localhost\"\n[appliance.filter]\nalert_types = [\"{tag}*\"]\n[appliance.jsonl]\npath = \"alerts.jsonl\"\n",
            rest = ctx.app.rest,
            certs = ctx.cert_dir.display(),
            port = ctx.app.amqps_port,
        );
    }
    let path = dir.join("scmb.toml");
    std::fs::write(&path, config)?;
    let args = vec![
        "run".to_string(),
        "--config".into(),
        path.display().to_string(),
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
    // Every appliance subscribed (its catch-up done: nothing to find) before the storm.
    for _ in 0..n {
        child
            .wait_stderr("subscribed to the message bus", Duration::from_secs(120))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_rss_kb = crate::procs::proc_status_kb(child.pid, "VmRSS").unwrap_or(0);
    let t = Instant::now();
    let r = ctx
        .app
        .ov_control(
            Method::POST,
            "/sim/storm",
            json!({"count": messages, "rate": 0,
                   "severities": {"Critical": 1, "Warning": 9},
                   "fields": {"alertTypeID": tag}}),
        )
        .await?;
    if r["raised"].as_u64() != Some(messages) {
        bail!(
            "the storm raised {} alerts instead of {messages}",
            r["raised"]
        );
    }
    let files: Vec<_> = (0..n)
        .map(|i| dir.join(format!("a{i:03}")).join("alerts.jsonl"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120 + (n as u64 * messages) / 2_000);
    loop {
        let written: u64 = files.iter().map(|f| count_lines(f).min(criticals)).sum();
        if written >= criticals * n as u64 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.terminate(Duration::from_secs(10)).await;
            bail!(
                "{n} appliances wrote {written} of {} alerts within the deadline",
                criticals * n as u64
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    let mut exit = child.terminate(Duration::from_secs(60)).await?;
    exit.wall = took;
    let session = crate::appliance::OvSession::login(&ctx.app).await?;
    let del = format!("/rest/alerts?filter=%22alertTypeID%3D%27{tag}%27%22");
    session.call(Method::DELETE, &del, None).await?;
    let fig = AppliancesFig {
        run,
        appliances: n,
        messages,
        wall_s: exit.wall.as_secs_f64(),
        user_s: exit.user_s,
        sys_s: exit.sys_s,
        peak_rss_kb: exit.peak_rss_kb,
        connected_rss_kb,
    };
    println!(
        "  run {run}  {n} appliances × {} messages: all criticals written {} s after the storm; CPU {} s; RSS connected {} KB, peak {} KB",
        thousands(messages as f64),
        fixed(fig.wall_s, 2),
        fixed(fig.user_s + fig.sys_s, 2),
        thousands(connected_rss_kb as f64),
        thousands(fig.peak_rss_kb())
    );
    Ok(fig)
}
