//! `scmb run --config FILE`: every configured appliance in one process, each in its own
//! supervised task with its own connection, store, lanes and sinks, so that one appliance
//! down, mis-configured or flooding never stops the others. Serves `/metrics`, `/healthz` and
//! `/readyz`; tells systemd READY=1 after the first successful connection (and RELOADING=1,
//! STOPPING=1, STATUS=, and watchdog pings while every pipeline is alive); SIGHUP reloads the
//! config after validating it and reading every password and file it names: a config that is
//! invalid, or names something that cannot be read, is refused and the running one stays.
//!
//! The supervisor never exits on an appliance's failure: it logs it, marks the appliance
//! disconnected, and builds its pipeline again after a capped backoff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{ApplianceConfig, Config, ConfigError, Secrets};
use crate::failure::{self, Failure};
use crate::pipeline::{Pipeline, HEARTBEAT};
use crate::settings;
use crate::telemetry::{ApplianceMetrics, Metrics};

/// What `scmb run` is told besides the config file's contents (flags and environment).
#[derive(Debug, Clone)]
pub struct Service {
    /// The config file, read again at SIGHUP.
    pub config: PathBuf,
    /// Overrides the file's `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Overrides the file's `metrics.listen`.
    pub metrics_listen: Option<String>,
}

/// Beyond an appliance's own drain time, how long its pipeline may take to close.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// Tells systemd (`Type=notify-reload`) a change of state, when it is listening
/// (`$NOTIFY_SOCKET`); otherwise does nothing.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd a reload began: `RELOADING=1` with the monotonic clock's time
/// (`MONOTONIC_USEC`), which `Type=notify-reload` needs to tell this reload from an earlier one.
fn notify_reloading(status: &str) {
    use sd_notify::NotifyState;
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock for systemd's reload notification");
            notify(&[NotifyState::Reloading, NotifyState::Status(status)]);
        }
    }
}

/// Pings systemd's watchdog (`WATCHDOG=1`, every half of `WatchdogSec=`) while every
/// appliance's pipeline shows it is alive; when one has not for half the watchdog time, the
/// pings stop (said once in the log and `systemctl status`), and systemd restarts the process
/// when the watchdog time runs out. Does nothing without a watchdog (`$WATCHDOG_USEC`, for
/// this process per `$WATCHDOG_PID`).
fn watchdog(metrics: Arc<Metrics>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = (period / 2).max(Duration::from_millis(100));
    // A pipeline's loop turns at least every HEARTBEAT; allow it a few.
    let max_silence = half.max(HEARTBEAT * 3);
    tracing::info!(
        watchdog_ms = period.as_millis() as u64,
        "systemd's watchdog is on: pinged while every appliance's pipeline is alive"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        let mut stalled_before: Vec<String> = Vec::new();
        loop {
            tick.tick().await;
            let stalled = metrics.stalled(max_silence);
            if stalled.is_empty() {
                if !stalled_before.is_empty() {
                    tracing::info!(
                        "every appliance's pipeline is alive again: pinging the watchdog"
                    );
                    notify(&[
                        sd_notify::NotifyState::Watchdog,
                        sd_notify::NotifyState::Status("every appliance's pipeline is alive again"),
                    ]);
                } else {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            } else if stalled != stalled_before {
                let names = stalled.join(", ");
                tracing::error!(appliances = %names, silent_ms = max_silence.as_millis() as u64, "an appliance's pipeline is stuck: not pinging systemd's watchdog, which restarts the service");
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "pipeline stuck: {names}; the watchdog will restart the service"
                ))]);
            }
            stalled_before = stalled;
        }
    });
}

struct Running {
    config: ApplianceConfig,
    /// The passwords as read when it started: a reload restarts it when they changed (a
    /// rotated password file or credential), even with the config unchanged.
    secrets: Option<Secrets>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// An appliance of a new config, ready to start: its passwords and files read, its settings
/// built. A reload prepares every appliance before it stops any.
struct Prepared {
    config: ApplianceConfig,
    secrets: Secrets,
    settings: settings::Appliance,
}

fn prepare(a: &ApplianceConfig, state_dir: &Path) -> Result<Prepared, ConfigError> {
    let secrets = a.secrets()?;
    a.check_files(state_dir)?;
    let settings = a.settings_with(state_dir, secrets.clone())?;
    Ok(Prepared {
        config: a.clone(),
        secrets,
        settings,
    })
}

struct Daemon {
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    running: BTreeMap<String, Running>,
    /// Reloads refused since the start (an invalid config, a file that cannot be read).
    reload_failures: u64,
}

impl Daemon {
    /// Starts an appliance: with its settings prepared by a reload, or (at the service's
    /// start) built by its first attempt, which reports what is missing and is retried.
    fn start(&mut self, config: ApplianceConfig, prepared: Option<Prepared>) {
        let (stop, stop_rx) = watch::channel(false);
        let metrics = self.metrics.appliance(&config.name);
        let span = tracing::info_span!("appliance", appliance = %config.name);
        let (secrets, first) = match prepared {
            Some(p) => (Some(p.secrets), Some(p.settings)),
            None => (config.secrets().ok(), None),
        };
        let task = tokio::spawn(
            supervise(
                config.clone(),
                first,
                self.state_dir.clone(),
                metrics,
                stop_rx,
            )
            .instrument(span),
        );
        self.running.insert(
            config.name.clone(),
            Running {
                secrets,
                config,
                stop,
                task,
            },
        );
    }

    /// Stops the named appliances and waits for them: they drain in parallel, the longest
    /// drain time (and a few seconds to close) at most in all.
    async fn stop(&mut self, names: &[String]) {
        let mut tasks = Vec::new();
        let mut longest = Duration::ZERO;
        for n in names {
            if let Some(r) = self.running.remove(n) {
                // Draining is not being stuck: the watchdog stops watching it.
                self.metrics.unwatch(n);
                let _ = r.stop.send(true);
                tasks.push(r.task);
                longest = longest.max(r.config.drain().unwrap_or(crate::settings::DEFAULT_DRAIN));
            }
        }
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(longest + CLOSE_MARGIN, all)
            .await
            .is_err()
        {
            tracing::warn!(appliances = %names.join(", "), "not every appliance stopped in time; unacked work is left to a redelivery or the next catch-up");
        }
    }

    /// Reads every password and file of every appliance of `new`, and builds their settings,
    /// touching nothing: the first that cannot be read refuses the whole config.
    fn prepare(&self, new: &Config) -> Result<BTreeMap<String, Prepared>, ConfigError> {
        new.appliances
            .iter()
            .map(|a| Ok((a.name.clone(), prepare(a, &self.state_dir)?)))
            .collect()
    }

    /// Applies a new config whose appliances are all prepared: removed and changed ones stop,
    /// then new and changed ones start from what was prepared; unchanged ones carry on
    /// untouched.
    async fn apply(&mut self, wanted: BTreeMap<String, Prepared>) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(n, r)| match wanted.get(*n) {
                Some(p) if p.config == r.config => {
                    let changed = r.secrets.as_ref() != Some(&p.secrets);
                    if changed {
                        tracing::info!(appliance = %n, "its password changed: restarting it");
                    }
                    changed
                }
                _ => true,
            })
            .map(|(n, _)| n.clone())
            .collect();
        self.stop(&stale).await;
        for n in &stale {
            if !wanted.contains_key(n) {
                self.metrics.remove(n);
                tracing::info!(appliance = %n, "removed from the configuration: stopped");
            }
        }
        let mut started = 0;
        for (n, p) in wanted {
            if !self.running.contains_key(&n) {
                tracing::info!(appliance = %n, "starting");
                self.start(p.config.clone(), Some(p));
                started += 1;
            }
        }
        tracing::info!(
            appliances = self.running.len(),
            restarted_or_started = started,
            stopped = stale.len(),
            "configuration reloaded"
        );
    }

    /// A reload refused: logged, counted and shown in `systemctl status`; nothing changed. Ends
    /// the reload for systemd (`READY=1`).
    fn refuse(&mut self, why: &str, error: &dyn std::fmt::Display) {
        self.reload_failures += 1;
        self.metrics.reload_refused();
        tracing::error!(%error, reload_failures = self.reload_failures, "{why}: refused; the running one stays");
        // The reload is over (systemd waits for READY=1 after RELOADING=1); the status says how.
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!(
                "configuration reload refused ({why}): {error}"
            )),
        ]);
    }
}

/// Runs one appliance until told to stop, rebuilding its pipeline after any failure.
/// `first`, when given, are the settings of the first attempt (prepared by a reload); every
/// later attempt builds them again, reading the passwords anew.
async fn supervise(
    a: ApplianceConfig,
    mut first: Option<settings::Appliance>,
    state_dir: PathBuf,
    metrics: ApplianceMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = crate::retry::reconnect();
    let mut first_run = true;
    loop {
        if !std::mem::take(&mut first_run) {
            metrics.pipeline_restarted();
        }
        let started = Instant::now();
        let outcome = run_once(&a, first.take(), &state_dir, &metrics, stop.clone()).await;
        if *stop.borrow() {
            return;
        }
        let f = match outcome {
            Ok(()) => Failure::new(failure::UNEXPECTED, "the pipeline stopped by itself"),
            Err(f) => f,
        };
        if started.elapsed() > Duration::from_secs(120) {
            backoff.reset(); // it ran for a while: this is a new problem, start the backoff again
        }
        let wait = backoff.next_delay().max(Duration::from_secs(1)) * 2;
        metrics.pipeline_failed();
        metrics.unavailable();
        tracing::error!(error = %f, retry_in_ms = wait.as_millis() as u64, "appliance unavailable; the others carry on, retrying this one");
        let until = tokio::time::Instant::now() + wait;
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = beat.tick() => metrics.beat(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

async fn run_once(
    a: &ApplianceConfig,
    prepared: Option<settings::Appliance>,
    state_dir: &Path,
    metrics: &ApplianceMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let s = match prepared {
        Some(s) => s,
        None => a
            .settings(state_dir)
            .map_err(|e| Failure::new(failure::USAGE, e.to_string()))?,
    };
    let client_cert = s.rest.cert_dir.join(crate::certs::CERT_FILE);
    let build = Pipeline::build(s, metrics.clone());
    tokio::pin!(build);
    // A stop while logging in (a slow or hanging appliance) ends the attempt at once. Logging
    // in has its own timeouts: the supervisor is alive meanwhile.
    let mut waiting = stop.clone();
    let mut beat = tokio::time::interval(HEARTBEAT);
    let pipeline = loop {
        tokio::select! {
            p = &mut build => break p?,
            _ = beat.tick() => metrics.beat(),
            _ = waiting.wait_for(|s| *s) => return Ok(()),
        }
    };
    // The client certificate as it is now (the build may have fetched a new one).
    match crate::commands::check::expiry(&client_cert) {
        Ok(list) => {
            if let Some(not_after) = list.iter().map(|(_, t)| *t).min() {
                metrics.client_cert_expiry(not_after);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the client certificate's expiry"),
    }
    pipeline
        .run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// `scmb run`.
pub async fn run(cfg: Config, args: Service) -> Result<(), Failure> {
    let shutdown = crate::shutdown::signal();
    let state_dir = cfg.state_dir(args.state_dir.as_deref());
    let metrics = Metrics::new();
    let (down_tx, down_rx) = watch::channel(false);
    if let Some(addr) = cfg.metrics_listen(args.metrics_listen.as_deref()) {
        let mut down = down_rx.clone();
        crate::telemetry::serve_metrics(&addr, metrics.clone(), async move {
            let _ = down.wait_for(|d| *d).await;
        })
        .await
        .map_err(|m| Failure::new(failure::USAGE, m))?;
    }
    let mut daemon = Daemon {
        state_dir: state_dir.clone(),
        metrics: metrics.clone(),
        running: BTreeMap::new(),
        reload_failures: 0,
    };
    tracing::info!(state_dir = %state_dir.display(), appliances = cfg.appliances.len(), config = %args.config.display(), "starting");
    let mut current = cfg.clone();
    for a in cfg.appliances {
        daemon.start(a, None);
    }
    {
        let m = metrics.clone();
        tokio::spawn(async move {
            m.first_connect().await;
            notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("connected"),
            ]);
        });
    }
    watchdog(metrics.clone());
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Failure::new(failure::UNEXPECTED, format!("cannot watch SIGHUP: {e}")))?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                tracing::info!(config = %args.config.display(), "SIGHUP: reloading the configuration");
                // Said at once, refused or not: `Type=notify-reload` waits for it after SIGHUP.
                notify_reloading("reloading the configuration");
                let new = match Config::load(&args.config) {
                    Ok(new) => new,
                    Err(e) => {
                        daemon.refuse("the new configuration is invalid", &e);
                        continue;
                    }
                };
                // Everything it names is read before anything stops.
                let prepared = match daemon.prepare(&new) {
                    Ok(p) => p,
                    Err(e) => {
                        daemon.refuse("a password or file of the new configuration cannot be read", &e);
                        continue;
                    }
                };
                if new.state_dir != current.state_dir
                    || new.metrics != current.metrics
                    || new.log != current.log
                    || new.worker_threads != current.worker_threads
                {
                    tracing::warn!("state_dir, worker_threads, [metrics] and [log] changes take effect at the next restart");
                }
                current = new;
                daemon.apply(prepared).await;
                notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("configuration reloaded"),
                ]);
            }
        }
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: draining in-flight work"),
    ]);
    let all: Vec<String> = daemon.running.keys().cloned().collect();
    daemon.stop(&all).await;
    let _ = down_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}
