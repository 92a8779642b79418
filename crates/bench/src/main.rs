//! `scmb-bench`: benchmarks the release binaries `scmb` and `ov_to_sm` against the simulated
//! appliance (started in-process, with its private RabbitMQ node), prints each measurement's
//! figures, a summary table and PASS/FAIL per target. Run it through `scripts/bench`.
//!
//! Measurements (see each module): [`consume`] throughput and CPU against a no-op consumer and
//! the HPE sample's py-amqp loop; [`storm`] time to ticket an alert storm; [`saas`] the same
//! storm through `scmb run` into ServiceNow and into PagerDuty; [`sinks`] a 10,000-event storm
//! through each printing sink (JSON lines, webhook, Alertmanager, syslog, AMQP relay);
//! [`latency`] bus →
//! stdout latency; [`footprint`] start-up time, idle memory and binary size.
//!
//! Exit codes: 0 done (targets may have failed: benchmarks are not tests), 1 the harness
//! itself failed (one line on stderr), 2 usage, 3 a target failed with `--strict`.

mod amqp;
mod appliance;
mod appliances;
mod catchup;
mod consume;
mod footprint;
mod latency;
mod msgs;
mod procs;
mod report;
mod saas;
mod sinks;
mod storm;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::appliance::{Appliance, OvSession};
use crate::report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "scmb-bench",
    about = "Benchmark scmb and ov_to_sm against the simulated OneView appliance",
    after_help = "Exit codes: 0 done (even when targets fail), 1 the harness failed, 2 usage, \
                  3 a target failed and --strict was given."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The scmb binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    scmb: Option<PathBuf>,
    /// The ov_to_sm binary (default: next to this executable).
    #[arg(long = "ov-to-sm", value_name = "PATH")]
    ov_to_sm: Option<PathBuf>,
    /// Repeat each measurement N times and report min / median / max (default 3, 1 with --quick).
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Everything smaller (20,000 messages, storms of 200 at concurrency 16 and 64, 5 s of
    /// latency, one run): a smoke test well under a minute.
    #[arg(long)]
    quick: bool,
    /// Write every raw figure to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exit 3 when a target fails.
    #[arg(long)]
    strict: bool,
    /// Only these measurements.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    only: Vec<Measure>,
    /// Messages in the consume queue (default 200,000; 20,000 with --quick).
    #[arg(long, value_name = "N")]
    messages: Option<u64>,
    /// Appliance counts of the appliances measurement (default 20,100; 3 with --quick).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    appliances: Vec<usize>,
    /// Only these consume clients (no-op, scmb, scmb-run, py-amqp; default all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    clients: Vec<String>,
    /// Alerts per storm, ov_to_sm's and scmb run's into ServiceNow and PagerDuty (default
    /// 1,000; 200 with --quick).
    #[arg(long, value_name = "N")]
    storm_count: Option<u64>,
    /// Events of the per-sink storm (default 10,000; 1,000 with --quick).
    #[arg(long, value_name = "N")]
    sink_events: Option<u64>,
    /// Only these sinks in the sinks measurement (jsonl, webhook, alertmanager, syslog, relay;
    /// default all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    sinks: Vec<String>,
    /// Alerts of the sequential baseline (default: the storm size).
    #[arg(long, value_name = "N")]
    baseline_count: Option<u64>,
    /// ov_to_sm concurrencies (default 1,4,16,64; 16,64 with --quick).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    concurrency: Vec<usize>,
    /// Seconds of the latency stream (default 30; 5 with --quick).
    #[arg(long, value_name = "SECS")]
    latency_secs: Option<u64>,
    /// Messages per second of the latency stream.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    latency_rate: u64,
    /// Python interpreter for the py-amqp reference consumer.
    #[arg(long, default_value = "python3", value_name = "PATH")]
    python: PathBuf,
    /// The py-amqp reference consumer (default: scripts/bench_pyamqp.py of this source tree).
    #[arg(long, value_name = "PATH")]
    pyamqp_script: Option<PathBuf>,
    /// Where the simulator's state, the certificates and the tools' state go (default: a new
    /// directory under $TMPDIR, removed at the end).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The no-op reference consumer (run by the consume measurement).
    #[command(hide = true)]
    NoopConsumer(amqp::NoopArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Consume,
    Catchup,
    Appliances,
    Storm,
    /// The storm through `scmb run` into ServiceNow.
    StormServicenow,
    /// The storm through `scmb run` into PagerDuty.
    StormPagerduty,
    /// A storm through each printing sink of `scmb run`, next to the JSON-lines sink.
    Sinks,
    Latency,
    Footprint,
}

/// Sizes of the measurements.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runs: usize,
    pub quick: bool,
    pub messages: u64,
    pub storm_count: u64,
    pub baseline_count: u64,
    pub concurrency: Vec<usize>,
    pub latency_secs: u64,
    pub latency_rate: u64,
    /// The consume clients to run (empty: all).
    pub clients: Vec<String>,
    /// Appliance counts of the appliances measurement.
    pub appliances: Vec<usize>,
    /// Events of the per-sink storm.
    pub sink_events: u64,
    /// The sinks of the sinks measurement (empty: all).
    pub sinks: Vec<String>,
}

/// What every measurement needs.
pub struct Ctx {
    pub app: Appliance,
    pub settings: Settings,
    pub work: PathBuf,
    /// caroot.pem, client.pem, key.pem for the tools.
    pub cert_dir: PathBuf,
    pub scmb: PathBuf,
    pub ov_to_sm: PathBuf,
    /// This executable (for the no-op consumer).
    pub bench: PathBuf,
    /// Python and the py-amqp script, when `import amqp` works.
    pub python: Option<(PathBuf, PathBuf)>,
    ids: AtomicU64,
}

impl Ctx {
    /// The connection flags both tools take.
    pub fn tool_args(&self) -> Vec<String> {
        vec![
            "-a".into(),
            self.app.rest.clone(),
            "--amqp-port".into(),
            self.app.amqps_port.to_string(),
            "--cert-dir".into(),
            self.cert_dir.display().to_string(),
            "--tls-server-name".into(),
            "localhost".into(),
        ]
    }

    /// `n` fresh alert ids for messages published directly (far above the simulator's own).
    pub fn next_ids(&self, n: u64) -> u64 {
        self.ids.fetch_add(n, Ordering::Relaxed)
    }

    /// A new empty directory under the work directory.
    pub fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The no-op consumer runs on one thread, as scmb watch does: the leanest a Rust consumer
    // gets, so that it stays the physical limit. The harness (with the simulator) uses two.
    let mut builder = if matches!(cli.cmd, Some(Cmd::NoopConsumer(_))) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scmb-bench: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(Cmd::NoopConsumer(args)) = cli.cmd {
        return match rt.block_on(amqp::noop_consumer(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("scmb-bench noop-consumer: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match rt.block_on(bench(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scmb-bench: error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    Ok(dir.join(name))
}

fn executable(p: PathBuf, what: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
        _ => bail!(
            "{what} not found at {} (build it: cargo build --release -p scmb, or give its path)",
            p.display()
        ),
    }
}

/// Python and the script, when `python -c "import amqp"` works.
fn find_pyamqp(python: &Path, script: Option<PathBuf>) -> Option<(PathBuf, PathBuf)> {
    let script = script.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_pyamqp.py")
    });
    let ok = std::process::Command::new(python)
        .args(["-c", "import amqp"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (ok && script.is_file()).then(|| (python.to_path_buf(), script))
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    let storm_count = cli.storm_count.unwrap_or(if q { 200 } else { 1000 });
    let s = Settings {
        runs: cli.runs.unwrap_or(if q { 1 } else { 3 }),
        quick: q,
        messages: cli.messages.unwrap_or(if q { 20_000 } else { 200_000 }),
        storm_count,
        baseline_count: cli.baseline_count.unwrap_or(storm_count),
        concurrency: if cli.concurrency.is_empty() {
            if q {
                vec![16, 64]
            } else {
                vec![1, 4, 16, 64]
            }
        } else {
            cli.concurrency.clone()
        },
        latency_secs: cli.latency_secs.unwrap_or(if q { 5 } else { 30 }),
        latency_rate: cli.latency_rate,
        clients: cli.clients.clone(),
        sink_events: cli.sink_events.unwrap_or(if q { 1_000 } else { 10_000 }),
        sinks: cli.sinks.clone(),
        appliances: if cli.appliances.is_empty() {
            if q {
                vec![3]
            } else {
                vec![20, 100]
            }
        } else {
            cli.appliances.clone()
        },
    };
    if s.runs == 0
        || s.messages == 0
        || s.storm_count == 0
        || s.baseline_count == 0
        || s.sink_events == 0
    {
        bail!("--runs, --messages, --storm-count, --baseline-count and --sink-events must be at least 1");
    }
    if let Some(bad) = s
        .sinks
        .iter()
        .find(|w| !sinks::Kind::ALL.iter().any(|k| k.name() == w.as_str()))
    {
        bail!("--sinks: unknown sink {bad:?} (jsonl, webhook, alertmanager, syslog, relay)");
    }
    if s.messages > u64::from(u32::MAX) || s.concurrency.contains(&0) {
        bail!("--messages must fit in 32 bits and every --concurrency be at least 1");
    }
    Ok(s)
}

async fn bench(cli: Cli) -> Result<ExitCode> {
    let settings = settings(&cli)?;
    let scmb = executable(
        cli.scmb.clone().map_or_else(|| sibling("scmb"), Ok)?,
        "scmb",
    )?;
    let ov_to_sm = executable(
        cli.ov_to_sm
            .clone()
            .map_or_else(|| sibling("ov_to_sm"), Ok)?,
        "ov_to_sm",
    )?;
    let bench_exe = std::env::current_exe().context("cannot find this executable")?;
    let only = |m: Measure| cli.only.is_empty() || cli.only.contains(&m);
    let python = if only(Measure::Consume) {
        find_pyamqp(&cli.python, cli.pyamqp_script.clone())
    } else {
        None
    };

    let (work, remove_work) = match &cli.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("scmb-bench-{}", std::process::id())),
            !cli.keep,
        ),
    };
    let _ = std::fs::remove_dir_all(work.join("sim"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    println!(
        "scmb-bench: {} run(s){}; {} CPU(s); scmb {}; ov_to_sm {}",
        settings.runs,
        if settings.quick { ", quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        scmb.display(),
        ov_to_sm.display()
    );
    println!(
        "starting the simulated appliance (RabbitMQ, OneView REST, Service Manager, ServiceNow, PagerDuty) ..."
    );
    let t = std::time::Instant::now();
    let app = Appliance::start(&work.join("sim"))?;
    println!(
        "  ready in {:.1} s: rest {} amqps {} sm {} servicenow {} pagerduty {}",
        t.elapsed().as_secs_f64(),
        app.rest,
        app.amqps_port,
        app.sm,
        app.servicenow,
        app.pagerduty
    );
    let cert_dir = work.join("certs");
    let _ = std::fs::remove_dir_all(&cert_dir);
    app.make_cert_dir(&cert_dir)?;
    let ctx = Ctx {
        app,
        settings: settings.clone(),
        cert_dir,
        scmb,
        ov_to_sm,
        bench: bench_exe,
        python,
        ids: AtomicU64::new(10_000_000),
        work: work.clone(),
    };
    let mut report = Report::new(&settings);
    let result = run_all(&ctx, &mut report, &only).await;
    let Ctx { app, .. } = ctx;
    app.stop();
    if remove_work {
        let _ = std::fs::remove_dir_all(&work);
    }
    result?;

    let failed = report.finish();
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("raw figures written to {}", path.display());
    }
    Ok(if failed && cli.strict {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_all(ctx: &Ctx, report: &mut Report, only: &dyn Fn(Measure) -> bool) -> Result<()> {
    let s = &ctx.settings;
    if only(Measure::Consume) {
        println!(
            "\n== consume: drain {} queued messages ({} critical) ==",
            util::thousands(s.messages as f64),
            util::thousands(msgs::criticals(s.messages) as f64)
        );
        if ctx.python.is_none() {
            println!("  py-amqp: not available, skipped");
        }
        for run in 1..=s.runs {
            report.consume.extend(consume::run_once(ctx, run).await?);
        }
    }
    if only(Measure::Catchup) {
        println!("\n== catch-up: scmb run's first start on an appliance full of alerts, with new ones arriving over the bus ==");
        for run in 1..=s.runs {
            report.catchup.push(catchup::run_once(ctx, run).await?);
        }
    }
    if only(Measure::Appliances) {
        println!(
            "\n== appliances: one scmb run process, many appliances, a storm reaching each =="
        );
        for run in 1..=s.runs {
            for &n in &s.appliances {
                report
                    .appliances
                    .push(appliances::run_once(ctx, run, n).await?);
            }
        }
    }
    if only(Measure::Storm) {
        println!(
            "\n== storm: {} critical alerts at once; Service Manager {} ms, OneView PUT {} ms ==",
            util::thousands(s.storm_count as f64),
            storm::SM_LATENCY_MS,
            storm::PUT_LATENCY_MS
        );
        let session = Arc::new(OvSession::login(&ctx.app).await?);
        storm::set_faults(ctx).await?;
        let res = async {
            for run in 1..=s.runs {
                for &c in &s.concurrency {
                    report
                        .storm
                        .push(storm::ov_to_sm(ctx, &session, run, c).await?);
                }
                report
                    .storm
                    .push(storm::baseline(ctx, &session, run).await?);
            }
            anyhow::Ok(())
        }
        .await;
        let cleared = storm::clear_faults(ctx).await;
        res?;
        cleared?;
    }
    let sinks: Vec<saas::Sink> = [
        (Measure::StormServicenow, saas::Sink::ServiceNow),
        (Measure::StormPagerduty, saas::Sink::PagerDuty),
    ]
    .into_iter()
    .filter(|(m, _)| only(*m))
    .map(|(_, k)| k)
    .collect();
    if !sinks.is_empty() {
        println!(
            "\n== storm into the SaaS sinks: {} critical alerts at once through scmb run; ServiceNow / PagerDuty {} ms, OneView PUT {} ms ==",
            util::thousands(s.storm_count as f64),
            saas::SINK_LATENCY_MS,
            storm::PUT_LATENCY_MS
        );
        for sink in &sinks {
            println!(
                "  {}: {} lanes; floor per alert {} ({} ms) × ⌈{} / {}⌉ rounds = {} s",
                sink.title(),
                sink.lanes(),
                sink.floor_text(),
                sink.per_alert_ms(),
                s.storm_count,
                sink.lanes(),
                util::fixed(sink.floor_s(s.storm_count), 2)
            );
        }
        let session = OvSession::login(&ctx.app).await?;
        for run in 1..=s.runs {
            for &sink in &sinks {
                report
                    .saas
                    .push(saas::run_once(ctx, &session, sink, run).await?);
            }
        }
    }
    if only(Measure::Sinks) {
        println!(
            "\n== sinks: {} new critical alerts queued, drained by scmb run into one sink at a time ==",
            util::thousands(s.sink_events as f64)
        );
        let mut kinds: Vec<sinks::Kind> = sinks::Kind::ALL
            .into_iter()
            .filter(|k| s.sinks.is_empty() || s.sinks.iter().any(|w| w == k.name()))
            .collect();
        kinds.retain(|k| match k.missing() {
            Some(why) => {
                println!("  {}: {why}, skipped", k.name());
                report.skipped.push(format!("sinks {}: {why}", k.name()));
                false
            }
            None => true,
        });
        for run in 1..=s.runs {
            for &kind in &kinds {
                report.sinks.push(sinks::run_once(ctx, run, kind).await?);
            }
        }
    }
    if only(Measure::Latency) {
        println!(
            "\n== latency: {} msg/s for {} s through scmb watch --output json ==",
            util::thousands(s.latency_rate as f64),
            s.latency_secs
        );
        for run in 1..=s.runs {
            report.latency.push(latency::run_once(ctx, run).await?);
        }
    }
    if only(Measure::Footprint) {
        println!("\n== footprint: scmb watch start-up and idle memory ==");
        for run in 1..=s.runs {
            report.footprint.push(footprint::run_once(ctx, run).await?);
        }
    }
    Ok(())
}
