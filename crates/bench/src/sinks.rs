//! Measurement 2c, each sink under a storm: a queue is filled with N new, active, critical
//! alerts (10,000; 1,000 with `--quick`), then one `scmb run` with one appliance and only the
//! sink under test drains it. The clock runs from the spawn until the appliance's
//! `scmb_acks_total` reaches N (read from `scmb run`'s own `/metrics` every 100 ms): a message
//! is acked only once its sink accepted it, so that is the moment every event is delivered.
//! CPU is `scmb run`'s own (utime + stime from `/proc` at that moment), per event; the
//! receiving server's CPU is not counted. Afterwards the receiver is asked whether it holds N
//! events (a run where it does not is reported as incomplete).
//!
//! The receivers: the JSON-lines sink writes a file; the webhook sink posts to the webhook
//! receiver of `ov-sim` (in this process, answering at once); the Alertmanager sink posts to a
//! real Prometheus Alertmanager (`prometheus-alertmanager`), the syslog sink writes to a real
//! rsyslog over TCP (octet counting; rsyslog writes each message to a file), the relay sink
//! publishes to a second real RabbitMQ node over TLS with PLAIN (a durable queue bound to the
//! exchange holds what arrived). Each server is a private process on loopback in the work
//! directory, stopped by its pid; one that is not installed is skipped with a notice. Start-up (TLS to the broker, the REST login) is inside the time and the same for every sink.
//!
//! The storm's alerts exist only on the bus, never on the appliance. A sink that holds alerts
//! open (Alertmanager) makes the pipeline check them over REST after the connect, while the bus
//! flows: those it already sent are found gone and fed as deletions, and the sink rightly
//! resolves them. Its receiver then holds fewer active alerts than were sent; the line printed
//! before it gives the sink's own counters (created, resolved), which account for the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::amqp::Amqp;
use crate::msgs::CRITICAL;
use crate::procs::{proc_cpu_s, proc_status_kb, spawn, Child, Stdout};
use crate::util::{fixed, thousands};
use crate::Ctx;

/// The sink under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Jsonl,
    Webhook,
    Alertmanager,
    Syslog,
    Relay,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Jsonl,
        Kind::Webhook,
        Kind::Alertmanager,
        Kind::Syslog,
        Kind::Relay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Jsonl => "jsonl",
            Kind::Webhook => "webhook",
            Kind::Alertmanager => "alertmanager",
            Kind::Syslog => "syslog",
            Kind::Relay => "relay",
        }
    }

    /// Why it cannot run here (its server is not installed), if it cannot.
    pub fn missing(self) -> Option<&'static str> {
        match self {
            Kind::Alertmanager if alertmanager_binary().is_none() => {
                Some("prometheus-alertmanager is not installed")
            }
            Kind::Syslog if !Path::new(RSYSLOGD).is_file() => Some("rsyslog is not installed"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SinkFig {
    pub run: usize,
    pub sink: Kind,
    pub events: u64,
    /// Spawn → every event acked.
    pub wall_s: f64,
    /// `scmb run`'s CPU (user + system) until then.
    pub cpu_s: f64,
    /// `scmb run`'s `VmHWM` then, KB.
    pub peak_rss_kb: Option<u64>,
    /// Events the receiver holds (it may hold more: a redelivery is delivered again).
    pub received: u64,
}

impl SinkFig {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.wall_s
    }
    pub fn cpu_us_per_event(&self) -> f64 {
        self.cpu_s * 1e6 / self.events as f64
    }
    pub fn complete(&self) -> bool {
        self.received >= self.events
    }
    pub fn json(&self) -> Value {
        json!({
            "run": self.run, "sink": self.sink.name(), "events": self.events,
            "wallSecs": self.wall_s, "eventsPerSec": self.rate(), "cpuSecs": self.cpu_s,
            "cpuMicrosPerEvent": self.cpu_us_per_event(), "peakRssKb": self.peak_rss_kb,
            "received": self.received,
        })
    }
}

/// An HTTP client for the loopback receivers (plain HTTP; rustls needs its provider named).
fn http() -> Result<reqwest::Client> {
    scmb_sim::client::http_client(None).map_err(|e| anyhow::anyhow!("an HTTP client: {e}"))
}

/// A port free on loopback now (the receiver binds it next).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// What receives the sink's events, running beside `scmb run`.
enum Receiver {
    File(PathBuf),
    Webhook {
        state: Arc<scmb_sim::webhook::WebhookState>,
        stop: tokio::sync::watch::Sender<bool>,
    },
    Alertmanager {
        child: Child,
        url: String,
    },
    Syslog {
        child: Child,
        file: PathBuf,
    },
    Relay {
        broker: Arc<scmb_sim::broker::BrokerHandle>,
    },
}

/// Debian's rsyslogd.
const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// The relay target's exchange, PLAIN user and password.
const RELAY_EXCHANGE: &str = "oneview.alerts";
const RELAY_USER: &str = "relay";
const RELAY_PASSWORD: &str = "relay-bench-password";

impl Receiver {
    /// Events received so far.
    async fn count(&self) -> Result<u64> {
        Ok(match self {
            Receiver::File(path) | Receiver::Syslog { file: path, .. } => std::fs::read(path)
                .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
                .unwrap_or(0),
            Receiver::Relay { broker } => {
                let a = Amqp::open(&broker.admin_target()).await?;
                let n = a.queue_len("bench").await;
                a.close().await;
                u64::from(n?)
            }
            Receiver::Webhook { state, .. } => state.requests().len() as u64,
            Receiver::Alertmanager { url, .. } => {
                let alerts: Value = http()?
                    .get(format!("{url}/api/v2/alerts?active=true"))
                    .send()
                    .await?
                    .json()
                    .await?;
                alerts.as_array().map_or(0, |a| a.len() as u64)
            }
        })
    }

    async fn stop(self) -> Result<()> {
        match self {
            Receiver::File(_) => {}
            Receiver::Webhook { stop, .. } => {
                let _ = stop.send(true);
            }
            Receiver::Alertmanager { child, .. } | Receiver::Syslog { child, .. } => {
                child.terminate(Duration::from_secs(10)).await?;
            }
            Receiver::Relay { broker } => broker.shutdown().await,
        }
        Ok(())
    }
}

/// The Alertmanager binary, when installed.
pub fn alertmanager_binary() -> Option<PathBuf> {
    ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Waits until something listens on the TCP port.
async fn wait_listening(what: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Starts the receiver of `kind`; returns it and the sink's table for the config file.
async fn start_receiver(ctx: &Ctx, kind: Kind, dir: &Path) -> Result<(Receiver, String)> {
    match kind {
        Kind::Jsonl => Ok((
            Receiver::File(dir.join("bench/alerts.jsonl")),
            "[appliance.jsonl]\npath = \"alerts.jsonl\"\n".into(),
        )),
        Kind::Webhook => {
            use scmb_sim::httpsim::HttpSim as _;
            let state =
                scmb_sim::webhook::WebhookState::new(scmb_sim::webhook::WebhookConfig::default());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("the webhook receiver cannot listen")?;
            let port = l.local_addr()?.port();
            let (stop, rx) = tokio::sync::watch::channel(false);
            let router = scmb_sim::webhook::WebhookData::router(state.clone());
            tokio::spawn(scmb_sim::serve::serve(l, None, router, rx, None));
            Ok((
                Receiver::Webhook { state, stop },
                format!(
                    "[[appliance.webhook]]\nname = \"bench\"\nurl = \"http://127.0.0.1:{port}/hook\"\n"
                ),
            ))
        }
        Kind::Alertmanager => {
            let bin = alertmanager_binary().context("prometheus-alertmanager is not installed")?;
            let port = free_port()?;
            let config = dir.join("alertmanager.yml");
            std::fs::write(
                &config,
                "route:\n  receiver: none\nreceivers:\n  - name: none\n",
            )?;
            let data = dir.join("am-data");
            std::fs::create_dir_all(&data)?;
            let args: Vec<String> = vec![
                format!("--config.file={}", config.display()),
                format!("--storage.path={}", data.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--cluster.listen-address=".into(),
            ];
            let child = spawn("alertmanager", &bin, &args, &[], Stdout::Null)?;
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match http()?.get(format!("{url}/-/ready")).send().await {
                    Ok(r) if r.status().is_success() => break,
                    _ if Instant::now() > deadline => {
                        bail!("alertmanager did not get ready on port {port} within 30 s")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Ok((
                Receiver::Alertmanager {
                    child,
                    url: url.clone(),
                },
                format!("[appliance.alertmanager]\nurls = [\"{url}\"]\n"),
            ))
        }
        Kind::Syslog => {
            let port = free_port()?;
            let work = dir.join("rsyslog");
            std::fs::create_dir_all(&work)?;
            let file = dir.join("syslog.out");
            let conf = dir.join("rsyslog.conf");
            std::fs::write(
                &conf,
                format!(
                    "global(workDirectory=\"{work}\")\n\
                     module(load=\"imtcp\")\n\
                     template(name=\"line\" type=\"string\" string=\"%msgid% %structured-data%\\n\")\n\
                     ruleset(name=\"bench\") {{ action(type=\"omfile\" file=\"{out}\" template=\"line\") }}\n\
                     input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"bench\")\n",
                    work = work.display(),
                    out = file.display(),
                ),
            )?;
            let args: Vec<String> = vec![
                "-n".into(),
                "-f".into(),
                conf.display().to_string(),
                "-i".into(),
                dir.join("rsyslogd.pid").display().to_string(),
            ];
            let child = spawn("rsyslogd", Path::new(RSYSLOGD), &args, &[], Stdout::Null)?;
            wait_listening("rsyslogd", port).await?;
            Ok((
                Receiver::Syslog { child, file },
                format!(
                    "[appliance.syslog]\naddress = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\n"
                ),
            ))
        }
        Kind::Relay => {
            let pki = scmb_sim::pki::PkiPaths::new(&ctx.app.pki);
            let mut cfg = scmb_sim::broker::BrokerConfig::new(dir.join("relay-node"), free_port()?);
            cfg.relay = Some(scmb_sim::broker::RelayNode {
                plain_port: free_port()?,
                user: RELAY_USER.into(),
                password: RELAY_PASSWORD.into(),
                exchange: RELAY_EXCHANGE.into(),
            });
            let broker = scmb_sim::broker::BrokerHandle::start(cfg, pki.clone())
                .await
                .map_err(|e| anyhow::anyhow!("the relay broker did not start: {e}"))?;
            let a = Amqp::open(&broker.admin_target()).await?;
            a.ch.queue_declare(
                amqprs::channel::QueueDeclareArguments::durable_client_named("bench"),
            )
            .await
            .context("declaring the relay's queue")?;
            a.ch.queue_bind(amqprs::channel::QueueBindArguments::new(
                "bench",
                RELAY_EXCHANGE,
                "#",
            ))
            .await
            .context("binding the relay's queue")?;
            a.close().await;
            let table = format!(
                "[appliance.relay]\nhost = \"localhost\"\nport = {port}\nexchange = \"{RELAY_EXCHANGE}\"\nusername = \"{RELAY_USER}\"\npassword_env = \"RELAY_PASSWORD\"\nca = \"{ca}\"\n",
                port = broker.cfg.port,
                ca = pki.ca_cert.display(),
            );
            Ok((Receiver::Relay { broker }, table))
        }
    }
}

/// `scmb_acks_total` summed over the lines of a `/metrics` page.
fn acks(page: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("scmb_acks_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One run of one sink.
pub async fn run_once(ctx: &Ctx, run: usize, kind: Kind) -> Result<SinkFig> {
    let n = ctx.settings.sink_events;
    let admin = Amqp::open(&ctx.app.bus_target(true)).await?;
    let queue = crate::consume::fill(ctx, &admin, n, |_, _| CRITICAL).await?;
    let dir = ctx.fresh_dir(&format!("sink-{}-{run}", kind.name()))?;
    let (receiver, table) = start_receiver(ctx, kind, &dir).await?;
    let metrics_port = free_port()?;
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[[appliance]]\nname = \"bench\"\naddress = \"{rest}\"\npassword_env = \"SCMB_BENCH_PASSWORD\"\ncert_dir = \"{certs}\"\namqp_port = {port}\ntls_server_name = \"localhost\"\nqueue = \"{queue}\"\n{table}",
            state = dir.display(),
            rest = ctx.app.rest,
            certs = ctx.cert_dir.display(),
            port = ctx.app.amqps_port,
        ),
    )?;
    let args = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let child = spawn(
        "scmb run",
        &ctx.scmb,
        &args,
        &[
            ("SCMB_BENCH_PASSWORD", "admin123"),
            ("RELAY_PASSWORD", RELAY_PASSWORD),
        ],
        Stdout::Null,
    )?;
    let timeout = Duration::from_secs(60 + n / 100);
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = http()?;
    let outcome = async {
        loop {
            if let Ok(r) = http.get(&metrics).send().await {
                let page = r.text().await.unwrap_or_default();
                if acks(&page) >= n {
                    // What the sink says it did, beside what the receiver holds.
                    let said: Vec<&str> = page
                        .lines()
                        .filter(|l| {
                            (l.starts_with("scmb_sink_incidents_")
                                || l.starts_with("scmb_sink_events_delivered"))
                                && !l.ends_with(" 0")
                        })
                        .collect();
                    println!("    the sink's counters: {}", said.join("; "));
                    return Ok((
                        child.started.elapsed(),
                        proc_cpu_s(child.pid)?,
                        proc_status_kb(child.pid, "VmHWM").ok(),
                    ));
                }
            }
            if child.started.elapsed() > timeout {
                bail!(
                    "scmb run with the {} sink did not ack {n} events within {} s",
                    kind.name(),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let stopped = child.terminate(Duration::from_secs(40)).await;
    // A receiver may still be writing what it took (rsyslog's file): a few seconds for that.
    let settle = Instant::now() + Duration::from_secs(10);
    let received = loop {
        let got = receiver.count().await;
        match got {
            Ok(c) if c < n && Instant::now() < settle => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => break other,
        }
    };
    receiver.stop().await?;
    admin.delete_queue(&queue).await?;
    admin.close().await;
    let (wall, cpu_s, peak_rss_kb) = outcome?;
    stopped?;
    let fig = SinkFig {
        run,
        sink: kind,
        events: n,
        wall_s: wall.as_secs_f64(),
        cpu_s,
        peak_rss_kb,
        received: received?,
    };
    println!(
        "  run {run}  {:<13} {} events in {} s = {} events/s; CPU {} s = {} µs/event; peak RSS {} KB; receiver holds {}{}",
        kind.name(),
        thousands(n as f64),
        fixed(fig.wall_s, 2),
        thousands(fig.rate()),
        fixed(fig.cpu_s, 2),
        fixed(fig.cpu_us_per_event(), 1),
        fig.peak_rss_kb.map_or("?".into(), |k| thousands(k as f64)),
        thousands(fig.received as f64),
        if fig.complete() { "" } else { "  (INCOMPLETE)" }
    );
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_summed_over_the_appliances_and_other_series_ignored() {
        let page = "# HELP scmb_acks Messages acknowledged\n# TYPE scmb_acks counter\nscmb_acks_total{appliance=\"bench\"} 9999\nscmb_acks_total{appliance=\"b\"} 1\nscmb_rejects_total{appliance=\"bench\"} 5\n";
        assert_eq!(acks(page), 10_000);
        assert_eq!(acks(""), 0);
    }
}
