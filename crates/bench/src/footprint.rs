//! Measurement 4, footprint: how long `scmb watch` takes from spawn to "subscribed" (process
//! start, TLS, SASL EXTERNAL, queue declare and bind), the CPU it spent to get there, its
//! resident memory after 2 s idle, and the size of the release binary.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::procs::{proc_cpu_s, proc_sched_cpu_s, proc_status_kb, spawn, Stdout};
use crate::util::{fixed, thousands};
use crate::Ctx;

#[derive(Debug, Clone)]
pub struct FootprintFig {
    pub run: usize,
    pub connect_ms: f64,
    /// utime + stime from `/proc/PID/stat` (clock-tick resolution, usually 10 ms).
    pub cpu_at_subscribed_ms: f64,
    /// The same from the threads' schedstat (nanosecond resolution).
    pub sched_cpu_at_subscribed_ms: f64,
    pub idle_rss_kb: u64,
    pub binary_bytes: u64,
}

impl FootprintFig {
    pub fn json(&self) -> Value {
        json!({
            "run": self.run, "connectMs": self.connect_ms,
            "cpuAtSubscribedMs": self.cpu_at_subscribed_ms,
            "schedCpuAtSubscribedMs": self.sched_cpu_at_subscribed_ms,
            "idleRssKb": self.idle_rss_kb, "binaryBytes": self.binary_bytes,
        })
    }
}

pub async fn run_once(ctx: &Ctx, run: usize) -> Result<FootprintFig> {
    let mut args = vec!["watch".to_string()];
    args.extend(ctx.tool_args());
    let mut child = spawn(
        "scmb watch",
        &ctx.scmb,
        &args,
        &[("RUST_LOG", "info")],
        Stdout::Null,
    )?;
    let at = child
        .wait_stderr("subscribed to the message bus", Duration::from_secs(60))
        .await?;
    let cpu = proc_cpu_s(child.pid)?;
    let sched_cpu = proc_sched_cpu_s(child.pid)?;
    let connect = at.saturating_duration_since(child.started);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = proc_status_kb(child.pid, "VmRSS")?;
    child.terminate(Duration::from_secs(10)).await?;
    let binary_bytes = std::fs::metadata(&ctx.scmb)
        .with_context(|| format!("{}", ctx.scmb.display()))?
        .len();
    let fig = FootprintFig {
        run,
        connect_ms: connect.as_secs_f64() * 1e3,
        cpu_at_subscribed_ms: cpu * 1e3,
        sched_cpu_at_subscribed_ms: sched_cpu * 1e3,
        idle_rss_kb: rss,
        binary_bytes,
    };
    println!(
        "  run {run}  spawn → subscribed {} ms (CPU {} ms by /proc/PID/stat ticks, {} ms by schedstat); idle RSS {} KB after 2 s; binary {} bytes",
        fixed(fig.connect_ms, 1),
        fixed(fig.cpu_at_subscribed_ms, 0),
        fixed(fig.sched_cpu_at_subscribed_ms, 1),
        thousands(rss as f64),
        thousands(binary_bytes as f64)
    );
    Ok(fig)
}
