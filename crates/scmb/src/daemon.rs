//! `scmb run --config FILE`: every configured appliance in one process, each in its own
//! supervised task with its own connection, store, lanes and sinks, so that one appliance
//! down, mis-configured or flooding never stops the others. Serves `/metrics`, `/healthz` and
//! `/readyz`; tells systemd READY=1 after the first successful connection; SIGHUP reloads the
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
use crate::pipeline::Pipeline;
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

/// Sends a state line to systemd's notify socket, when there is one (`Type=notify`).
pub fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        // An abstract socket name.
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let addr = addr?;
        s.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, "cannot notify systemd");
    }
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
            tracing::warn!(appliances = ?names, "not every appliance stopped in time; unacked work is left to a redelivery or the next catch-up");
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

    /// A reload refused: logged, counted and shown in `systemctl status`; nothing changed.
    fn refuse(&mut self, why: &str, error: &dyn std::fmt::Display) {
        self.reload_failures += 1;
        self.metrics.reload_refused();
        tracing::error!(%error, reload_failures = self.reload_failures, "{why}: refused; the running one stays");
        sd_notify(&format!(
            "STATUS=configuration reload refused ({why}): {error}"
        ));
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
    loop {
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
        metrics.unavailable();
        tracing::error!(error = %f, retry_in_ms = wait.as_millis() as u64, "appliance unavailable; the others carry on, retrying this one");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
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
    let build = Pipeline::build(s, metrics.clone());
    // A stop while logging in (a slow or hanging appliance) ends the attempt at once.
    let mut waiting = stop.clone();
    let pipeline = tokio::select! {
        p = build => p?,
        _ = waiting.wait_for(|s| *s) => return Ok(()),
    };
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
            sd_notify("READY=1\nSTATUS=connected");
        });
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Failure::new(failure::UNEXPECTED, format!("cannot watch SIGHUP: {e}")))?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                tracing::info!(config = %args.config.display(), "SIGHUP: reloading the configuration");
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
                sd_notify("RELOADING=1");
                if new.state_dir != current.state_dir
                    || new.metrics != current.metrics
                    || new.log != current.log
                    || new.worker_threads != current.worker_threads
                {
                    tracing::warn!("state_dir, worker_threads, [metrics] and [log] changes take effect at the next restart");
                }
                current = new;
                daemon.apply(prepared).await;
                sd_notify("READY=1\nSTATUS=configuration reloaded");
            }
        }
    }
    sd_notify("STOPPING=1");
    let all: Vec<String> = daemon.running.keys().cloned().collect();
    daemon.stop(&all).await;
    let _ = down_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_hears_the_notification_on_its_socket() {
        let dir = std::env::temp_dir().join(format!("scmb-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
