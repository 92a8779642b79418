//! Measurement 3, latency: `scmb watch --output json` listens while the admin publishes a
//! steady stream (1,000 msg/s by default), each message carrying its send time; latency is the
//! time from just before the publish to the moment the bench reads scmb's line for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::amqp::Amqp;
use crate::msgs::{envelope, Kind};
use crate::procs::{spawn, Stdout};
use crate::util::{fixed, percentile, thousands, unix_ms, unix_nanos};
use crate::Ctx;

pub const SENT_FIELD: &str = "benchSentNanos";

#[derive(Debug, Clone)]
pub struct LatencyFig {
    pub run: usize,
    pub sent: u64,
    pub received: u64,
    pub rate: u64,
    pub secs: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Every latency, ms, in arrival order.
    pub all_ms: Vec<f64>,
}

impl LatencyFig {
    pub fn json(&self) -> Value {
        json!({
            "run": self.run, "sent": self.sent, "received": self.received,
            "ratePerSec": self.rate, "secs": self.secs, "p50Ms": self.p50_ms,
            "p99Ms": self.p99_ms, "maxMs": self.max_ms, "latenciesMs": self.all_ms,
        })
    }
}

pub async fn run_once(ctx: &Ctx, run: usize) -> Result<LatencyFig> {
    let rate = ctx.settings.latency_rate.max(1);
    let secs = ctx.settings.latency_secs;
    let n = rate * secs;
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sink = lat.clone();
    let stdout = Stdout::Lines(Box::new(move |line: String| {
        let now = unix_nanos();
        // Only the send time is needed: find it without parsing the ~1.5 KB line.
        let Some(at) = line.find(SENT_FIELD) else {
            return;
        };
        let digits: String = line[at + SENT_FIELD.len()..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(sent) = digits.parse::<u128>() {
            if let Ok(mut v) = sink.lock() {
                v.push(now.saturating_sub(sent) as f64 / 1e6);
            }
        }
    }));
    let mut args = vec!["watch".to_string()];
    args.extend(ctx.tool_args());
    args.extend(
        [
            "--output",
            "json",
            "--severity",
            "*",
            "--count",
            &n.to_string(),
        ]
        .map(String::from),
    );
    let mut child = spawn(
        "scmb watch",
        &ctx.scmb,
        &args,
        &[("RUST_LOG", "info")],
        stdout,
    )?;
    child
        .wait_stderr("subscribed to the message bus", Duration::from_secs(60))
        .await?;
    let admin = Amqp::open(&ctx.app.bus_target(true)).await?;
    let base = ctx.next_ids(n);
    let kinds = [
        Kind {
            change: "Created",
            severity: "Critical",
            state: "Active",
            changed: &[],
        },
        Kind {
            change: "Created",
            severity: "Warning",
            state: "Active",
            changed: &[],
        },
    ];
    let start = tokio::time::Instant::now();
    let step = Duration::from_nanos(1_000_000_000 / rate);
    for i in 0..n {
        tokio::time::sleep_until(start + step * i as u32).await;
        let (key, body) = envelope(
            base + i,
            kinds[(i % 2) as usize],
            unix_ms(),
            Some((SENT_FIELD, json!(unix_nanos() as u64))),
        );
        admin.publish(key, body).await?;
    }
    admin.close().await;
    // scmb exits by itself after n lines; if some never come, stop waiting after a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = lat.lock().map(|v| v.len() as u64).unwrap_or(0);
        if got >= n || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let words = child.last_words();
    let exit = child.terminate(Duration::from_secs(10)).await?;
    let all: Vec<f64> = lat.lock().map(|v| v.clone()).unwrap_or_default();
    if all.is_empty() {
        bail!("scmb watch printed none of the {n} messages ({exit:?}): {words}");
    }
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    let fig = LatencyFig {
        run,
        sent: n,
        received: all.len() as u64,
        rate,
        secs,
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        all_ms: all,
    };
    println!(
        "  run {run}  {} of {} messages at {} msg/s: p50 {} ms, p99 {} ms, max {} ms",
        thousands(fig.received as f64),
        thousands(n as f64),
        thousands(rate as f64),
        fixed(fig.p50_ms, 2),
        fixed(fig.p99_ms, 2),
        fixed(fig.max_ms, 2)
    );
    Ok(fig)
}
