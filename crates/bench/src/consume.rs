//! Measurement 1, consume: drain a pre-filled queue as fast as possible with (a) the no-op
//! reference consumer, (b) `scmb watch --queue`, (c) `scmb run` with one appliance and a
//! JSON-lines sink (the service path operators deploy; it does not exit by itself, so its
//! time runs until the queue is empty and every critical alert is in the file, then it is
//! stopped with SIGTERM), (d) the HPE sample's py-amqp loop, each on a freshly filled queue, measuring wall time from spawn to exit, the child's own CPU (`wait4`)
//! and its own peak RSS (the last `/proc/PID/status` `VmHWM` read while it ran; `wait4`'s
//! `ru_maxrss` would include the forked harness's RSS from before `exec`, see `procs`).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::amqp::Amqp;
use crate::msgs::{criticals, envelope, kind_of};
use crate::procs::{spawn, Stdout};
use crate::util::{fixed, thousands, unix_ms};
use crate::Ctx;

#[derive(Debug, Clone)]
pub struct ConsumeFig {
    pub run: usize,
    pub client: &'static str,
    pub messages: u64,
    pub criticals: u64,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    /// The program's own peak RSS (`VmHWM`), KB; `None` when it exited before the first sample.
    pub peak_rss_kb: Option<u64>,
    /// `VmRSS` at the last sample, KB.
    pub last_rss_kb: Option<u64>,
    /// `scmb run` only: its `VmHWM` once the queue was drained and every line written,
    /// before it was told to stop (its stop closes the state store, which allocates: redb
    /// writes its allocator state; `peak_rss_kb` includes that).
    pub drained_peak_rss_kb: Option<u64>,
    pub rss_samples: u32,
    /// `wait4`'s `ru_maxrss`, which includes the forked harness's RSS before `exec`: JSON only,
    /// under a name that says so.
    pub ru_maxrss_incl_pre_exec_kb: i64,
    /// Messages still in the queue after the client exited (0 when it drained it).
    pub left: u32,
}

impl ConsumeFig {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.wall_s
    }
    pub fn cpu_us_per_msg(&self) -> f64 {
        (self.user_s + self.sys_s) * 1e6 / self.messages as f64
    }
    /// Peak RSS in KB, NaN when unknown.
    pub fn peak_rss_kb(&self) -> f64 {
        self.peak_rss_kb.map_or(f64::NAN, |k| k as f64)
    }
    /// Peak RSS while draining (before the stop), KB; NaN when unknown.
    pub fn drained_peak_rss_kb(&self) -> f64 {
        self.drained_peak_rss_kb.map_or(f64::NAN, |k| k as f64)
    }
    pub fn json(&self) -> Value {
        json!({
            "run": self.run, "client": self.client, "messages": self.messages,
            "criticals": self.criticals, "wallSecs": self.wall_s, "msgPerSec": self.rate(),
            "cpuUserSecs": self.user_s, "cpuSysSecs": self.sys_s,
            "cpuMicrosPerMsg": self.cpu_us_per_msg(), "peakRssKb": self.peak_rss_kb,
            "peakRssSource": "VmHWM", "lastRssKb": self.last_rss_kb,
            "drainedPeakRssKb": self.drained_peak_rss_kb,
            "rssSamples": self.rss_samples,
            "ruMaxrssKbInclPreExec": self.ru_maxrss_incl_pre_exec_kb,
            "leftInQueue": self.left,
        })
    }
}

/// Declares a fresh shared queue as CN `default`, fills it with `n` messages as the admin (the
/// `i`-th of kind `kind(i, n)`) and waits until the broker reports them all.
pub async fn fill(
    ctx: &Ctx,
    admin: &Amqp,
    n: u64,
    kind: impl Fn(u64, u64) -> crate::msgs::Kind,
) -> Result<String> {
    let started = Instant::now();
    let reader = Amqp::open(&ctx.app.bus_target(false)).await?;
    let queue = reader.declare_bound_queue(false).await?;
    reader.close().await;
    let base = ctx.next_ids(n);
    let t0 = unix_ms() - n as i64;
    for i in 0..n {
        let (key, body) = envelope(base + i, kind(i, n), t0 + i as i64, None);
        admin.publish(key, body).await?;
    }
    let publish_s = started.elapsed().as_secs_f64();
    admin
        .wait_len(&queue, n as u32, Duration::from_secs(120 + n / 1000))
        .await?;
    println!(
        "    filled {queue} with {} messages: published in {} s, all queued after {} s",
        thousands(n as f64),
        fixed(publish_s, 1),
        fixed(started.elapsed().as_secs_f64(), 1)
    );
    Ok(queue)
}

/// One run of the three consumers.
pub async fn run_once(ctx: &Ctx, run: usize) -> Result<Vec<ConsumeFig>> {
    let n = ctx.settings.messages;
    let crit = criticals(n);
    let admin = Amqp::open(&ctx.app.bus_target(true)).await?;
    let mut figs = Vec::new();
    let port = ctx.app.amqps_port.to_string();
    let timeout = Duration::from_secs(60 + n / 200);
    let mut clients: Vec<&'static str> = vec!["no-op", "scmb", "scmb-run"];
    if ctx.python.is_some() {
        clients.push("py-amqp");
    }
    let only = &ctx.settings.clients;
    clients.retain(|c| only.is_empty() || only.iter().any(|o| o == c));
    for client in clients {
        let queue = fill(ctx, &admin, n, kind_of).await?;
        let child = match client {
            "no-op" => {
                let pki = &ctx.app.pki;
                let args: Vec<String> = vec![
                    "noop-consumer".into(),
                    "--port".into(),
                    port.clone(),
                    "--ca".into(),
                    pki.join("ca.pem").display().to_string(),
                    "--cert".into(),
                    pki.join("client-default.pem").display().to_string(),
                    "--key".into(),
                    pki.join("client-default-key.pem").display().to_string(),
                    "--queue".into(),
                    queue.clone(),
                    "--count".into(),
                    n.to_string(),
                ];
                spawn("the no-op consumer", &ctx.bench, &args, &[], Stdout::Null)?
            }
            "scmb" => {
                let mut args = vec!["watch".to_string()];
                args.extend(ctx.tool_args());
                args.extend(
                    [
                        "--queue",
                        &queue,
                        "--count",
                        &crit.to_string(),
                        "--output",
                        "json",
                    ]
                    .map(String::from),
                );
                spawn("scmb watch", &ctx.scmb, &args, &[], Stdout::Null)?
            }
            "scmb-run" => {
                let dir = ctx.fresh_dir(&format!("run-{run}"))?;
                let config = dir.join("scmb.toml");
                std::fs::write(
                    &config,
                    format!(
                        "state_dir = \"{state}\"\n[[appliance]]\nname = \"bench\"\naddress = \"{rest}\"\npassword_env = \"SCMB_BENCH_PASSWORD\"\ncert_dir = \"{certs}\"\namqp_port = {port}\ntls_server_name = \"localhost\"\nqueue = \"{queue}\"\n[appliance.jsonl]\npath = \"alerts.jsonl\"\n",
                        state = dir.display(),
                        rest = ctx.app.rest,
                        certs = ctx.cert_dir.display(),
                    ),
                )?;
                let args = vec![
                    "run".to_string(),
                    "--config".into(),
                    config.display().to_string(),
                ];
                spawn(
                    "scmb run",
                    &ctx.scmb,
                    &args,
                    &[("SCMB_BENCH_PASSWORD", "admin123")],
                    Stdout::Null,
                )?
            }
            _ => {
                let (python, script) = ctx
                    .python
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("python is not available"))?;
                let d = &ctx.cert_dir;
                let args: Vec<String> = vec![
                    script.display().to_string(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.clone(),
                    "--server-name".into(),
                    "localhost".into(),
                    "--ca".into(),
                    d.join("caroot.pem").display().to_string(),
                    "--cert".into(),
                    d.join("client.pem").display().to_string(),
                    "--key".into(),
                    d.join("key.pem").display().to_string(),
                    "--queue".into(),
                    queue.clone(),
                    "--count".into(),
                    crit.to_string(),
                ];
                spawn("the py-amqp consumer", &python, &args, &[], Stdout::Null)?
            }
        };
        let mut drained_peak_rss_kb = None;
        let exit = match client {
            "scmb-run" => {
                let lines = ctx
                    .work
                    .join(format!("run-{run}"))
                    .join("bench/alerts.jsonl");
                let drained = wait_drained(&admin, &queue, &lines, crit, timeout).await;
                drained_peak_rss_kb = crate::procs::proc_status_kb(child.pid, "VmHWM").ok();
                let started = child.started;
                let mut exit = child.terminate(Duration::from_secs(40)).await?;
                let drained = drained?;
                exit.wall = drained.duration_since(started);
                exit
            }
            _ => child.wait_ok(timeout).await?,
        };
        let left = admin.queue_len(&queue).await?;
        admin.delete_queue(&queue).await?;
        let fig = ConsumeFig {
            run,
            client,
            messages: n,
            criticals: crit,
            wall_s: exit.wall.as_secs_f64(),
            user_s: exit.user_s,
            sys_s: exit.sys_s,
            peak_rss_kb: exit.peak_rss_kb,
            last_rss_kb: exit.last_rss_kb,
            drained_peak_rss_kb,
            rss_samples: exit.rss_samples,
            ru_maxrss_incl_pre_exec_kb: exit.ru_maxrss_incl_pre_exec_kb,
            left,
        };
        println!(
            "  run {run}  {client:<8} {} msgs in {} s = {} msg/s; CPU {} s user + {} s sys = {} µs/msg; peak RSS {} KB (VmHWM, {} samples){}{}",
            thousands(n as f64),
            fixed(fig.wall_s, 2),
            thousands(fig.rate()),
            fixed(fig.user_s, 2),
            fixed(fig.sys_s, 2),
            fixed(fig.cpu_us_per_msg(), 2),
            thousands(fig.peak_rss_kb()),
            fig.rss_samples,
            match fig.drained_peak_rss_kb {
                Some(k) => format!("; {} KB drained, before its stop", thousands(k as f64)),
                None => String::new(),
            },
            if left > 0 {
                format!("; WARNING: {left} messages left in the queue")
            } else {
                String::new()
            }
        );
        figs.push(fig);
    }
    admin.close().await;
    let get = |c: &str| figs.iter().find(|f| f.client == c);
    if let (Some(s), Some(o)) = (get("scmb"), get("no-op")) {
        println!(
            "  run {run}  scmb/no-op throughput {} %",
            fixed(100.0 * s.rate() / o.rate(), 1)
        );
    }
    if let (Some(s), Some(o)) = (get("scmb-run"), get("no-op")) {
        println!(
            "  run {run}  scmb-run/no-op throughput {} %, CPU per message {}×",
            fixed(100.0 * s.rate() / o.rate(), 1),
            fixed(s.cpu_us_per_msg() / o.cpu_us_per_msg(), 2)
        );
    }
    if let (Some(s), Some(p)) = (get("scmb"), get("py-amqp")) {
        println!(
            "  run {run}  scmb/py-amqp CPU per message {} (py-amqp uses {}× the CPU)",
            fixed(s.cpu_us_per_msg() / p.cpu_us_per_msg(), 3),
            fixed(p.cpu_us_per_msg() / s.cpu_us_per_msg(), 1)
        );
    }
    Ok(figs)
}

/// Waits until `queue` has no ready message left and `lines` holds `n` lines: the moment a
/// service that does not exit by itself has done the work.
async fn wait_drained(
    admin: &Amqp,
    queue: &str,
    lines: &std::path::Path,
    n: u64,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    // Only what was appended since the last look is read: reading the whole file (tens of MB
    // by the end) every few milliseconds took a core from the 2 that the broker and the
    // service under test share, and showed as the service's lost throughput.
    let (mut written, mut offset) = (0u64, 0u64);
    loop {
        if let Ok(mut f) = std::fs::File::open(lines) {
            use std::io::{Read, Seek, SeekFrom};
            let mut fresh = Vec::new();
            if f.seek(SeekFrom::Start(offset)).is_ok() && f.read_to_end(&mut fresh).is_ok() {
                offset += fresh.len() as u64;
                written += fresh.iter().filter(|c| **c == b'\n').count() as u64;
            }
        }
        if written >= n && admin.queue_len(queue).await? == 0 {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "scmb run did not drain {queue} within {} s ({written} of {n} lines in {})",
                timeout.as_secs(),
                lines.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
