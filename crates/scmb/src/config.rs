//! The configuration file of `scmb run` and `scmb check` (TOML): the process's own settings and
//! a list of appliances, each with its address, credentials, certificates, routes, filter and
//! sinks. These structs are the user documentation: every field has its doc comment, and
//! `docs/OPERATIONS.md` and `examples/scmb.toml` (kept valid by a test) follow them.
//!
//! Loading is two-staged: [`Config::load`] parses and checks (unknown keys are refused with
//! their name and line), then [`ApplianceConfig::settings`] turns one appliance into the same
//! settings the command lines produce, reading its secrets. Nothing here connects anywhere.
//!
//! Precedence for the process settings: flags > environment > file > defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use scmb_model::{ChangeType, Filter};
use scmb_oneview::Secret;

use crate::duration::{DurationValue, LookBack};
use crate::password::{Password, SecretRef};
use crate::settings::{self, BusChoices, DEFAULT_USER};
use crate::sinks::SinkSettings;
use crate::telemetry::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML parser's message names the key and shows its line.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("appliance {appliance:?}: {message}")]
    Secret { appliance: String, message: String },
    /// A file the appliance needs (a CA, its certificates) cannot be read.
    #[error("appliance {appliance:?}: {message}")]
    File { appliance: String, message: String },
}

/// An appliance's secrets, read: OneView's password, and each sink's when it has one (a
/// ticketing system's password or client secret, PagerDuty's routing keys). A reload
/// restarts an appliance whose secrets changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Secrets {
    pub ov: Secret,
    pub service_manager: Option<Secret>,
    /// The ServiceNow password (Basic) or client secret (OAuth).
    pub servicenow: Option<Secret>,
    /// PagerDuty's routing keys.
    pub pagerduty: Option<crate::sinks::pagerduty::RoutingKeys>,
    /// Each webhook's URL and HMAC secret, in the file's order.
    pub webhook: Vec<crate::sinks::webhook::WebhookSecrets>,
    /// Alertmanager's password or bearer token, when it has one.
    pub alertmanager: Option<Secret>,
    /// The relay broker's PLAIN password, when it has one.
    pub relay: Option<Secret>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where each appliance keeps its durable state (`STATE_DIR/NAME/`: the store of what was
    /// printed and ticketed, and by default its certificates). Default: `$STATE_DIRECTORY`
    /// (set by systemd's `StateDirectory=`), else `$XDG_STATE_HOME/scmb`, else
    /// `~/.local/state/scmb`. Overridden by `--state-dir` / `$SCMB_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP endpoint for Prometheus and health checks.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Threads serving every appliance. Default 1: the path from the bus to the sinks is
    /// bound by the broker, and one thread spares the cross-thread wake-ups a second costs
    /// (docs/PERFORMANCE.md has the figures, 100 appliances included). Raise it only when
    /// `scmb run` keeps a core busy. Takes effect at the next start.
    #[serde(default = "one")]
    pub worker_threads: usize,
    /// The appliances, each `[[appliance]]` table one of them.
    #[serde(default, rename = "appliance")]
    pub appliances: Vec<ApplianceConfig>,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level or `RUST_LOG`-style directives (`info`, `debug`, `warn,scmb=debug`). Default
    /// `warn,scmb=info`. Overridden by `RUST_LOG`, then by `--log-level` / `$SCMB_LOG_LEVEL`.
    pub level: Option<String>,
    /// `text` (default) or `json` (one object per line). Overridden by `--log-format` /
    /// `$SCMB_LOG_FORMAT`.
    pub format: Option<LogFormat>,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address serving `/metrics`, `/healthz` and `/readyz`, e.g. `127.0.0.1:9464`. Default:
    /// not served. Overridden by `--metrics-listen` / `$SCMB_METRICS_LISTEN`.
    pub listen: Option<String>,
}

/// `[[appliance]]`: one OneView appliance, listened to and acted upon independently.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// A short unique name (letters, digits, `.`, `-`, `_`): the `appliance` label of its
    /// metrics, log lines and output lines, and its state directory.
    pub name: String,
    /// REST address, `HOST` or `HOST:PORT` (CLI `-a`). The bus is reached on the same host.
    pub address: String,
    /// OneView user (`-u`). Default `Administrator`.
    #[serde(default = "default_user")]
    pub user: String,
    /// Login domain (`--login-domain`). Default `LOCAL`.
    pub login_domain: Option<String>,
    /// The OneView password: the name of an environment variable holding it. Exactly one of
    /// `password_env`, `password_file`, `password_credential`.
    pub password_env: Option<String>,
    /// The OneView password: a file whose first line is it (keep it `chmod 600`).
    pub password_file: Option<PathBuf>,
    /// The OneView password: a systemd credential name (`LoadCredential=NAME:PATH`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub password_credential: Option<String>,
    /// Certificate directory (`--cert-dir`): caroot.pem, client.pem, key.pem and the pinned REST
    /// fingerprint. Default `STATE_DIR/NAME`.
    pub cert_dir: Option<PathBuf>,
    /// Message bus port (`--amqp-port`). Default 5671.
    #[serde(default = "default_amqp_port")]
    pub amqp_port: u16,
    /// Name the broker's certificate must carry, when not the address (`--tls-server-name`).
    pub tls_server_name: Option<String>,
    /// Check the broker certificate's name (default true); false checks the chain only
    /// (`--no-verify-hostname`).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
    /// Verify the REST certificate against this CA file (`--rest-ca`). Default: pin the
    /// fingerprint seen at the first connection (stored in the certificate directory).
    pub rest_ca: Option<PathBuf>,
    /// Pin the REST certificate to this SHA-256 fingerprint (`--rest-fingerprint`).
    pub rest_fingerprint: Option<String>,
    /// DANGEROUS: do not verify the REST certificate (`--insecure`). Default false.
    #[serde(default)]
    pub insecure: bool,
    /// Accept the EULA when the appliance asks (support access "no"), like the HPE sample.
    /// Default true (`--no-accept-eula` sets false).
    #[serde(default = "yes")]
    pub accept_eula: bool,
    /// Binding keys (`-r`). Default `["scmb.alerts.#"]`.
    #[serde(default)]
    pub routes: Vec<String>,
    /// AMQP heartbeat, a duration like `"10s"` (`--heartbeat`). Default `"10s"`. A bare
    /// number of seconds still works, with a deprecation warning.
    pub heartbeat: Option<DurationValue>,
    /// Unacknowledged messages the broker may send ahead (`--prefetch`). Default 1000.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Consume this existing queue, declared and bound by someone else, instead of a
    /// server-named exclusive one of our own (`--queue`); `routes` is then ignored.
    pub queue: Option<String>,
    /// Largest message accepted, in bytes (`--max-message-bytes`). Default 4 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_message_bytes: usize,
    /// Most bytes of messages held at once (`--max-in-flight-bytes`): the prefetch is lowered
    /// so that `prefetch × max_message_bytes` stays within it. Default 1 GiB.
    #[serde(default = "default_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// After every (re)connect, read the alerts raised meanwhile over REST (`--catch-up`).
    /// Default true.
    #[serde(default = "yes")]
    pub catch_up: bool,
    /// At the first start, how far back to catch up: `none`, `all`, or a window like `"24h"`
    /// (`--look-back`). Default `all` with a ticketing sink (Service Manager, ServiceNow),
    /// else `none`.
    pub look_back: Option<String>,
    /// Download the certificates again when the appliance regenerated them
    /// (`--auto-bootstrap`). Default false.
    #[serde(default)]
    pub auto_bootstrap: bool,
    /// On a stop or a reload that restarts it, how long work in hand may take to finish, e.g.
    /// `"30s"` (`--drain`); what is not finished stays unacked and comes again. Default
    /// `"30s"`, below systemd's default `TimeoutStopSec` of 90 s.
    pub drain: Option<DurationValue>,
    /// Which messages the sinks see.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Print admitted messages on standard output, each line prefixed with the appliance.
    pub console: Option<crate::sinks::console::ConsoleConfig>,
    /// Append admitted messages to a file as JSON lines.
    pub jsonl: Option<crate::sinks::jsonl::JsonlConfig>,
    /// Open an incident per admitted alert (what `ov_to_sm` does).
    pub service_manager: Option<crate::sinks::service_manager::ServiceManagerConfig>,
    /// Page PagerDuty (Events API v2) for every admitted alert; resolve when it clears.
    pub pagerduty: Option<crate::sinks::pagerduty::PagerDutyConfig>,
    /// Open a ServiceNow incident per admitted alert.
    pub servicenow: Option<crate::sinks::servicenow::ServiceNowConfig>,
    /// POST admitted events to URLs (`[[appliance.webhook]]`, several allowed).
    #[serde(default)]
    pub webhook: Vec<crate::sinks::webhook::WebhookConfig>,
    /// Send every admitted alert to Prometheus Alertmanager, re-sent while active.
    pub alertmanager: Option<crate::sinks::alertmanager::AlertmanagerConfig>,
    /// Send admitted events to a syslog receiver (RFC 5424 over UDP, TCP or TLS).
    pub syslog: Option<crate::sinks::syslog::SyslogConfig>,
    /// Publish every admitted event to an exchange on a RabbitMQ of your own (confirmed,
    /// persistent): the scale-out path.
    pub relay: Option<crate::sinks::relay::RelayConfig>,
}

/// `[appliance.filter]`; every list empty means the default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Admitted severities (`--severity`). Default `["Critical"]`; `["*"]` admits all.
    #[serde(default)]
    pub severities: Vec<String>,
    /// Admitted alert states (`--state`). Default `["Active"]`.
    #[serde(default)]
    pub states: Vec<String>,
    /// Admitted change types: Created, Updated, Deleted (`--change-type`). Default `["Created"]`.
    #[serde(default)]
    pub change_types: Vec<String>,
    /// Also admit Updated alerts whose severity changed into an admitted one (`--escalations`).
    #[serde(default)]
    pub escalations: bool,
    /// Admitted resource categories (`--category`). Default `["alerts"]`; `["*"]` admits all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// alertTypeID patterns with `*` (`--alert-type`). Default: all.
    #[serde(default)]
    pub alert_types: Vec<String>,
}

/// Alerts worked on in parallel by an appliance without a ticketing sink.
const DEFAULT_LANES: usize = 16;

fn one() -> usize {
    1
}
fn default_user() -> String {
    DEFAULT_USER.into()
}
fn yes() -> bool {
    true
}
fn default_amqp_port() -> u16 {
    5671
}
fn default_in_flight_bytes() -> usize {
    crate::settings::DEFAULT_IN_FLIGHT_BYTES
}

fn default_prefetch() -> u16 {
    1000
}
fn default_max_bytes() -> usize {
    4 << 20
}

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // "line N: unknown field `key`, expected one of ...", on one line.
            message: match e.span() {
                Some(span) => format!(
                    "line {}: {}",
                    text[..span.start.min(text.len())].matches('\n').count() + 1,
                    e.message().trim()
                ),
                None => e.message().trim().to_string(),
            },
        })?;
        let mut cfg = cfg;
        let base = path.parent().unwrap_or(Path::new("."));
        for w in cfg.appliances.iter_mut().flat_map(|a| a.webhook.iter_mut()) {
            w.relative_to(base);
        }
        cfg.check().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.appliances.is_empty() {
            return Err("no [[appliance]]: configure at least one".into());
        }
        if !(1..=256).contains(&self.worker_threads) {
            return Err(format!(
                "worker_threads = {}: use 1 (the default) to 256",
                self.worker_threads
            ));
        }
        if let Some(l) = &self.log.level {
            if !crate::telemetry::valid_level(l) {
                return Err(format!("log.level {l:?} is not a valid level or directive"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for a in &self.appliances {
            let ctx = |m: String| format!("appliance {:?}: {m}", a.name);
            if a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            {
                return Err(format!(
                    "appliance name {:?}: use letters, digits, '.', '-' and '_'",
                    a.name
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("appliance name {:?} is used twice", a.name));
            }
            if a.address.trim().is_empty() {
                return Err(ctx("address is empty".into()));
            }
            a.password()
                .check()
                .map_err(|m| ctx(format!("OneView {m}")))?;
            if a.console.is_none()
                && a.jsonl.is_none()
                && a.service_manager.is_none()
                && a.servicenow.is_none()
                && a.pagerduty.is_none()
                && a.webhook.is_empty()
                && a.alertmanager.is_none()
                && a.syslog.is_none()
                && a.relay.is_none()
            {
                return Err(ctx(
                    "no sink: add [appliance.console], [appliance.jsonl], [appliance.service_manager], [appliance.servicenow], [appliance.pagerduty], [appliance.alertmanager], [appliance.syslog], [appliance.relay] or [[appliance.webhook]]"
                        .into(),
                ));
            }
            // The same checks the command line gets; warnings are logged once logging starts.
            let (_, warnings) = a.filter.filter().map_err(|m| ctx(format!("filter: {m}")))?;
            for w in warnings {
                crate::telemetry::early_warn(format!("appliance {:?}: filter: {w}", a.name));
            }
            a.look_back().map_err(ctx)?;
            a.heartbeat().map_err(ctx)?;
            a.drain().map_err(ctx)?;
            if let Some(sm) = &a.service_manager {
                sm.keep_alive().map_err(ctx)?;
                sm.retry_cap().map_err(ctx)?;
            }
            if let Some(pd) = &a.pagerduty {
                pd.check(&a.filter.severities).map_err(ctx)?;
            }
            if let Some(am) = &a.alertmanager {
                am.check().map_err(ctx)?;
            }
            if let Some(sl) = &a.syslog {
                sl.check().map_err(ctx)?;
            }
            if let Some(r) = &a.relay {
                r.check().map_err(ctx)?;
            }
            if let Some(fp) = &a.rest_fingerprint {
                fp.parse::<scmb_tls::Fingerprint>()
                    .map_err(|e| ctx(format!("rest_fingerprint: {e}")))?;
            }
            if let Some(sm) = &a.service_manager {
                sm.password()
                    .check()
                    .map_err(|m| ctx(format!("service_manager: {m}")))?;
                if sm.concurrency == 0 {
                    return Err(ctx("service_manager.concurrency must be at least 1".into()));
                }
            }
            if let Some(sn) = &a.servicenow {
                sn.check().map_err(|m| ctx(format!("servicenow: {m}")))?;
            }
            let hooks = crate::sinks::webhook::names(&a.webhook).map_err(ctx)?;
            for (w, n) in a.webhook.iter().zip(&hooks) {
                w.check(&format!("webhook {n:?}")).map_err(ctx)?;
            }
        }
        Ok(())
    }

    /// The metrics address: the one given (flag or environment), else the file's, else none.
    pub fn metrics_listen(&self, over: Option<&str>) -> Option<String> {
        over.map(str::to_string)
            .or_else(|| self.metrics.listen.clone())
            .filter(|a| !a.is_empty())
    }

    /// The state directory: the one given (flag, environment or file), else the default.
    pub fn state_dir(&self, over: Option<&Path>) -> PathBuf {
        if let Some(d) = over.or(self.state_dir.as_deref()) {
            return d.to_path_buf();
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(d) = env("STATE_DIRECTORY") {
            // systemd may list several, separated by ':'.
            let first = d
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            return PathBuf::from(first);
        }
        env("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("scmb")
    }
}

/// The `password_*` keys of a table.
macro_rules! secret_ref {
    ($t:ty) => {
        impl $t {
            pub fn password(&self) -> SecretRef {
                SecretRef {
                    password_env: self.password_env.clone(),
                    password_file: self.password_file.clone(),
                    password_credential: self.password_credential.clone(),
                }
            }
        }
    };
}
secret_ref!(ApplianceConfig);

impl FilterConfig {
    /// The filter these lists amount to, checked: a value of a closed set that OneView never
    /// sends is an error; an unknown category or alert type comes back as a warning. The
    /// command line's filter flags are checked the same way.
    pub fn filter(&self) -> Result<(Filter, Vec<String>), String> {
        let mut f = Filter::default();
        if !self.severities.is_empty() {
            f.severities = self.severities.clone();
        }
        if !self.states.is_empty() {
            f.states = self.states.clone();
        }
        if !self.change_types.is_empty() {
            f.change_types = self
                .change_types
                .iter()
                .map(|c| {
                    ChangeType::parse(c).ok_or_else(|| {
                        format!("change type {c:?} is not one OneView sends: use Created, Updated or Deleted")
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        f.escalations = self.escalations;
        if !self.categories.is_empty() {
            f.categories = self.categories.clone();
        }
        f.alert_types = self.alert_types.clone();
        let warnings = f.check().map_err(|p| p.to_string())?;
        Ok((f, warnings))
    }
}

impl ApplianceConfig {
    /// This appliance's state directory.
    pub fn state_dir(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(&self.name)
    }

    /// The first-start look-back: the file's, else the default for its sinks.
    fn look_back(&self) -> Result<LookBack, String> {
        match &self.look_back {
            Some(l) => LookBack::parse(l).map_err(|e| e.replace("look-back", "look_back")),
            None => Ok(LookBack::default_for(
                self.service_manager.is_some()
                    || self.servicenow.is_some()
                    || self.pagerduty.is_some()
                    || self.alertmanager.is_some(),
            )),
        }
    }

    /// The drain time: the file's, else the default.
    pub fn drain(&self) -> Result<std::time::Duration, String> {
        self.drain
            .as_ref()
            .map_or(Ok(settings::DEFAULT_DRAIN), |d| d.resolve("drain"))
    }

    fn heartbeat(&self) -> Result<std::time::Duration, String> {
        self.heartbeat
            .as_ref()
            .map_or(Ok(std::time::Duration::from_secs(10)), |h| {
                h.resolve("heartbeat")
            })
    }

    /// The settings to run this appliance with, its passwords read now (from the
    /// environment, a file or a systemd credential).
    pub fn settings(&self, state_dir: &Path) -> Result<settings::Appliance, ConfigError> {
        let secrets = self.secrets()?;
        self.settings_with(state_dir, secrets)
    }

    /// Reads this appliance's passwords now. The error names the appliance and the source
    /// (the file, the variable, the credential), never the secret.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        let err = |message: String| ConfigError::Secret {
            appliance: self.name.clone(),
            message,
        };
        let ov = self.password().read().map_err(err)?;
        let service_manager = match &self.service_manager {
            Some(s) => Some(
                s.password()
                    .read()
                    .map_err(|m| err(format!("service_manager: {m}")))?,
            ),
            None => None,
        };
        let servicenow = match &self.servicenow {
            Some(s) => Some(
                s.read_secret()
                    .map_err(|m| err(format!("servicenow: {m}")))?,
            ),
            None => None,
        };
        let pagerduty = match &self.pagerduty {
            Some(p) => Some(p.routing_keys().map_err(err)?),
            None => None,
        };
        let names = crate::sinks::webhook::names(&self.webhook).map_err(err)?;
        let webhook = self
            .webhook
            .iter()
            .zip(&names)
            .map(|(w, n)| w.secrets(&format!("webhook {n:?}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let alertmanager = match &self.alertmanager {
            Some(a) => a.read_secret().map_err(err)?,
            None => None,
        };
        let relay = match &self.relay {
            Some(r) => r.read_secret().map_err(err)?,
            None => None,
        };
        Ok(Secrets {
            ov,
            service_manager,
            servicenow,
            pagerduty,
            webhook,
            alertmanager,
            relay,
        })
    }

    /// The settings to run this appliance with, its passwords already read.
    pub fn settings_with(
        &self,
        state_dir: &Path,
        secrets: Secrets,
    ) -> Result<settings::Appliance, ConfigError> {
        let err = |message: String| ConfigError::Secret {
            appliance: self.name.clone(),
            message,
        };
        let pd = secrets.pagerduty.clone();
        let hooks = secrets.webhook.clone();
        let am = secrets.alertmanager.clone();
        let relay = secrets.relay.clone();
        let mut s = self.assemble(state_dir, secrets).map_err(err)?;
        if let (Some(p), Some(keys)) = (&self.pagerduty, pd) {
            s.sinks.pagerduty = Some(p.settings(keys, &self.name, &self.address).map_err(err)?);
        }
        let names = crate::sinks::webhook::names(&self.webhook).map_err(err)?;
        for ((w, n), sec) in self.webhook.iter().zip(&names).zip(hooks) {
            s.sinks.webhooks.push(
                w.settings(&format!("webhook {n:?}"), n, sec, &self.name, &self.address)
                    .map_err(err)?,
            );
        }
        if let Some(a) = &self.alertmanager {
            s.sinks.alertmanager = Some(a.settings(am, &self.name, &self.address).map_err(err)?);
        }
        if let Some(r) = &self.relay {
            s.sinks.relay = Some(r.settings(relay, &self.name, &self.address).map_err(err)?);
        }
        Ok(s)
    }

    /// Reads, now, every file besides its passwords that this appliance needs to start: the
    /// REST CA (`rest_ca`) and, unless `auto_bootstrap` may download them, the certificates
    /// and key in its certificate directory. A reload checks them before stopping anything.
    pub fn check_files(&self, state_dir: &Path) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError::File {
            appliance: self.name.clone(),
            message,
        };
        if let Some(ca) = &self.rest_ca {
            scmb_tls::load_certs(ca).map_err(|e| err(format!("rest_ca: {e}")))?;
        }
        if !self.auto_bootstrap {
            let dir = self
                .cert_dir
                .clone()
                .unwrap_or_else(|| self.state_dir(state_dir));
            for name in [
                crate::certs::CA_FILE,
                crate::certs::CERT_FILE,
                crate::certs::KEY_FILE,
            ] {
                let path = dir.join(name);
                std::fs::File::open(&path).map_err(|e| {
                    err(format!(
                        "cannot read {}: {e} (download the certificates with `scmb setup`, or set auto_bootstrap = true)",
                        path.display()
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// The settings, given the passwords. Call after [`Config::check`].
    fn assemble(&self, state_dir: &Path, secrets: Secrets) -> Result<settings::Appliance, String> {
        let Secrets {
            ov,
            service_manager: sm,
            servicenow: sn,
            ..
        } = secrets;
        let own = self.state_dir(state_dir);
        let rest = settings::Rest {
            host: self.address.clone(),
            user: self.user.clone(),
            password: Password::read_already(ov),
            login_domain: self.login_domain.clone(),
            cert_dir: self.cert_dir.clone().unwrap_or_else(|| own.clone()),
            server_name: self.tls_server_name.clone(),
            ca: self.rest_ca.clone(),
            fingerprint: self.rest_fingerprint.clone(),
            insecure: self.insecure,
            accept_eula: self.accept_eula,
        };
        let bus = settings::Bus::new(
            &rest,
            BusChoices {
                routes: self.routes.clone(),
                port: self.amqp_port,
                verify_hostname: self.verify_hostname,
                heartbeat: self.heartbeat()?,
                prefetch: self.prefetch,
                queue: self.queue.clone(),
                max_message_bytes: self.max_message_bytes,
                max_in_flight_bytes: self.max_in_flight_bytes,
                auto_bootstrap: self.auto_bootstrap,
                drain: self.drain()?,
            },
        );
        let service_manager = match (&self.service_manager, sm) {
            (Some(s), Some(password)) => Some(
                s.settings(password)
                    .map_err(|m| format!("service_manager: {m}"))?,
            ),
            _ => None,
        };
        let servicenow = match (&self.servicenow, sn) {
            (Some(s), Some(secret)) => {
                Some(s.settings(secret).map_err(|m| format!("servicenow: {m}"))?)
            }
            _ => None,
        };
        // REST keep-alive: the shortest a ticketing sink asks for.
        let keep_alive = [
            self.service_manager
                .as_ref()
                .map(|sm| sm.keep_alive_setting())
                .transpose()?
                .flatten(),
            self.servicenow
                .as_ref()
                .map(|sn| sn.keep_alive_setting())
                .transpose()?
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(settings::Appliance {
            label: Some(self.name.clone()),
            rest,
            bus,
            filter: self.filter.filter()?.0,
            catch_up: self.catch_up,
            look_back: self.look_back()?,
            // Alerts in parallel (one alert's events still in order): the printing sinks'
            // records of what they printed then share the store's group commits.
            lanes: [
                self.service_manager.as_ref().map(|sm| sm.concurrency),
                self.servicenow.as_ref().map(|sn| sn.concurrency),
                self.pagerduty.as_ref().map(|pd| pd.concurrency),
                self.alertmanager.as_ref().map(|am| am.concurrency),
                self.relay.as_ref().map(|r| r.concurrency),
            ]
            .into_iter()
            .flatten()
            .max()
            .map_or(DEFAULT_LANES, |c| c.max(1)),
            keep_alive,
            sinks: SinkSettings {
                console: self
                    .console
                    .as_ref()
                    .map(|c| crate::sinks::console::ConsoleSettings {
                        format: c.format,
                        limit: None,
                    }),
                jsonl: self.jsonl.as_ref().map(|j| own.join(&j.path)),
                service_manager,
                servicenow,
                // Needs its routing keys: set by `settings_with`.
                pagerduty: None,
                // Need their URLs: set by `settings_with`.
                webhooks: Vec::new(),
                // Needs its secret: set by `settings_with`.
                alertmanager: None,
                syslog: self
                    .syslog
                    .as_ref()
                    .map(|s| s.settings(&self.name))
                    .transpose()?,
                // Needs its password: set by `settings_with`.
                relay: None,
            },
            store: Some(own.join(STORE_FILE)),
            login_at_start: true,
        })
    }
}

/// The store of each appliance, in its state directory.
pub const STORE_FILE: &str = "scmb.redb";

/// A minimal valid file, for tests elsewhere.
#[cfg(test)]
pub(crate) const MINIMAL_FOR_TESTS: &str = tests::MINIMAL;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[[appliance]]
name = "east"
address = "oneview-east.example.com"
password_env = "OV_EAST_PASSWORD"
[appliance.console]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("scmb.toml"))
    }

    #[test]
    fn a_minimal_file_takes_the_documented_defaults() {
        let c = parse(MINIMAL).expect("parse");
        let a = &c.appliances[0];
        assert_eq!(a.user, "Administrator");
        assert_eq!(a.amqp_port, 5671);
        assert!(a.verify_hostname && a.accept_eula && a.catch_up && !a.insecure);
        assert_eq!(a.prefetch, 1000);
        let args = a
            .assemble(Path::new("/var/lib/scmb"), Secrets::default())
            .expect("args");
        assert_eq!(args.rest.cert_dir, Path::new("/var/lib/scmb/east"));
        assert_eq!(
            args.store.as_deref(),
            Some(Path::new("/var/lib/scmb/east/scmb.redb"))
        );
        assert_eq!(args.bus.config.heartbeat, 10);
        assert_eq!(args.look_back, LookBack::None);
        assert_eq!((args.lanes, args.keep_alive), (16, None));
        let console = a.console.as_ref().expect("console");
        assert_eq!(console.format, crate::sinks::format::Output::Human);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name_and_line() {
        let text = format!("{MINIMAL}\n[appliance.filter]\nseverity = [\"Critical\"]\n");
        let e = parse(&text).expect_err("unknown key").to_string();
        assert!(e.contains("severity"), "{e}");
        assert!(e.contains("line 9"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let in_appliance = MINIMAL.replace(
            "[appliance.console]",
            "pasword_file = \"/x\"\n[appliance.console]",
        );
        let e = parse(&in_appliance).expect_err("unknown key").to_string();
        assert!(e.contains("pasword_file") && e.contains("line 6"), "{e}");
        let e = parse("stat_dir = \"/x\"\n").expect_err("typo").to_string();
        assert!(e.contains("stat_dir") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let two = format!("{MINIMAL}{MINIMAL}");
        assert!(parse(&two)
            .expect_err("dup")
            .to_string()
            .contains("used twice"));
        let no_pw = MINIMAL.replace("password_env = \"OV_EAST_PASSWORD\"\n", "");
        assert!(parse(&no_pw)
            .expect_err("no pw")
            .to_string()
            .contains("password"));
        let two_pw = MINIMAL.replace(
            "[appliance.console]",
            "password_file = \"/x\"\n[appliance.console]",
        );
        assert!(parse(&two_pw)
            .expect_err("two")
            .to_string()
            .contains("only one"));
        let no_sink = MINIMAL.replace("[appliance.console]\n", "");
        assert!(parse(&no_sink)
            .expect_err("no sink")
            .to_string()
            .contains("no sink"));
        let bad_filter = format!("{MINIMAL}[appliance.filter]\nchange_types = [\"Made\"]\n");
        assert!(parse(&bad_filter)
            .expect_err("filter")
            .to_string()
            .contains("Made"));
        let bad_level = format!("[log]\nlevel = \"scmb=loudest\"\n{MINIMAL}");
        assert!(parse(&bad_level)
            .expect_err("level")
            .to_string()
            .contains("loudest"));
        assert!(parse("")
            .expect_err("empty")
            .to_string()
            .contains("no [[appliance]]"));
    }

    #[test]
    fn a_service_manager_sink_becomes_ov_to_sm_settings() {
        let text = format!(
            "{MINIMAL}[appliance.service_manager]\naddress = \"sm.example.com\"\npassword_file = \"/run/sm\"\non_clear = \"close\"\n[appliance.service_manager.incident]\nurgency = {{ Critical = \"2\" }}\nfields = {{ Priority = \"High\" }}\n"
        );
        let c = parse(&text).expect("parse");
        let a = &c.appliances[0];
        let args = a
            .assemble(
                Path::new("/s"),
                Secrets {
                    service_manager: Some(Secret::new("pw")),
                    ..Secrets::default()
                },
            )
            .expect("args");
        assert_eq!(args.look_back, LookBack::All);
        assert_eq!(args.keep_alive, Some(std::time::Duration::from_secs(600)));
        assert_eq!(args.lanes, 16);
        let sm = args.sinks.service_manager.expect("sm");
        assert_eq!(sm.client.password.expose(), "pw");
        assert_eq!(sm.retry_cap, std::time::Duration::from_secs(30));
        assert_eq!(sm.on_clear, crate::sinks::service_manager::OnClear::Close);
        assert_eq!(sm.client.user, "falcon");
        let inc = sm
            .template
            .incident(&serde_json::json!({"severity": "Critical"}));
        assert_eq!(inc["Urgency"], "2");
        assert_eq!(inc["Priority"], "High");
        assert_eq!(inc["Title"], "OneView Alert");
    }

    #[test]
    fn filter_typos_in_the_file_are_refused_like_on_the_command_line() {
        let typo = format!("{MINIMAL}[appliance.filter]\nseverities = [\"Critcal\"]\n");
        let e = parse(&typo).expect_err("typo").to_string();
        assert!(
            e.contains("Critcal") && e.contains("Critical, Warning"),
            "{e}"
        );
        let state = format!("{MINIMAL}[appliance.filter]\nstates = [\"Actve\"]\n");
        assert!(parse(&state)
            .expect_err("typo")
            .to_string()
            .contains("Actve"));
        // An open set (categories) is only warned about.
        let open = format!("{MINIMAL}[appliance.filter]\ncategories = [\"server-hardwar\"]\n");
        assert!(parse(&open).is_ok());
    }

    #[test]
    fn durations_take_one_human_form_and_old_spellings_still_work() {
        let sm = |extra: &str| {
            format!("{MINIMAL}[appliance.service_manager]\naddress = \"sm\"\npassword_env = \"X\"\n{extra}")
        };
        let get = |text: &str| {
            let c = parse(text).expect("parse");
            let a = &c.appliances[0];
            let args = a
                .assemble(
                    Path::new("/s"),
                    Secrets {
                        service_manager: Some(Secret::default()),
                        ..Secrets::default()
                    },
                )
                .expect("args");
            let sm = args.sinks.service_manager.expect("sm");
            (
                std::time::Duration::from_secs(u64::from(args.bus.config.heartbeat)),
                args.keep_alive,
                sm.retry_cap,
            )
        };
        let s = std::time::Duration::from_secs;
        let new = sm("keep_alive = \"1h\"\nretry_cap = \"2m\"\n").replace(
            "[appliance.console]",
            "heartbeat = \"30s\"\nlook_back = \"24h\"\n[appliance.console]",
        );
        assert_eq!(get(&new), (s(30), Some(s(3600)), s(120)));
        let old = sm("keep_alive_secs = 0\nretry_cap_secs = 5\n")
            .replace("[appliance.console]", "heartbeat = 20\n[appliance.console]");
        assert_eq!(get(&old), (s(20), None, s(5)));
        let both = sm("keep_alive = \"1h\"\nkeep_alive_secs = 5\n");
        assert!(parse(&both)
            .expect_err("both")
            .to_string()
            .contains("not both"));
        let typo = sm("retry_cap = \"30 secs please\"\n");
        assert!(parse(&typo)
            .expect_err("typo")
            .to_string()
            .contains("retry_cap"));
        let look = MINIMAL.replace(
            "[appliance.console]",
            "look_back = \"forever\"\n[appliance.console]",
        );
        assert!(parse(&look)
            .expect_err("look_back")
            .to_string()
            .contains("look_back"));
    }

    #[test]
    fn the_files_an_appliance_needs_are_read_before_it_starts_and_named_when_missing() {
        let dir = std::env::temp_dir().join(format!(
            "scmb-config-files-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let c = parse(&MINIMAL.replace(
            "[appliance.console]",
            &format!("cert_dir = \"{}\"\n[appliance.console]", dir.display()),
        ))
        .expect("parse");
        let a = &c.appliances[0];
        let e = a
            .check_files(&dir)
            .expect_err("no certificates")
            .to_string();
        assert!(e.starts_with("appliance \"east\": "), "{e}");
        assert!(
            e.contains(&dir.join("caroot.pem").display().to_string()),
            "{e}"
        );
        assert!(e.contains("scmb setup") && !e.contains('\n'), "{e}");
        for f in ["caroot.pem", "client.pem", "key.pem"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        assert!(a.check_files(&dir).is_ok());
        // Downloaded when missing: not needed before the start.
        let mut auto = a.clone();
        auto.auto_bootstrap = true;
        auto.cert_dir = Some(dir.join("empty"));
        assert!(auto.check_files(&dir).is_ok());
        let mut ca = a.clone();
        ca.rest_ca = Some(dir.join("no-such-ca.pem"));
        let e = ca.check_files(&dir).expect_err("no CA").to_string();
        assert!(e.contains("rest_ca") && e.contains("no-such-ca.pem"), "{e}");
        let mut pw = a.clone();
        pw.password_env = None;
        pw.password_file = Some(dir.join("no-such-password"));
        let e = pw.secrets().expect_err("no password file").to_string();
        assert!(
            e.starts_with("appliance \"east\": ") && e.contains("no-such-password"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_example_file_in_the_repo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scmb.toml");
        let c = Config::load(&path).expect("examples/scmb.toml must stay valid");
        assert!(c.appliances.len() >= 2);
        assert!(c.appliances.iter().any(|a| a.service_manager.is_some()));
        assert!(c.appliances.iter().any(|a| a.jsonl.is_some()));
    }

    #[test]
    fn the_servicenow_example_is_valid_and_becomes_its_settings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/servicenow.toml");
        let c = Config::load(&path).expect("examples/servicenow.toml must stay valid");
        let a = &c.appliances[0];
        let args = a
            .assemble(
                Path::new("/s"),
                Secrets {
                    servicenow: Some(Secret::new("pw")),
                    ..Secrets::default()
                },
            )
            .expect("settings");
        assert!(args.sinks.tickets());
        let sn = args.sinks.servicenow.expect("servicenow");
        assert_eq!(sn.client.instance, "https://acme.service-now.com");
        assert!(sn.template.cmdb_ci);
        // Ticketing: catch up on every active alert at the first start, 16 lanes.
        assert_eq!(args.look_back, LookBack::All);
        assert_eq!(args.lanes, 16);
        assert_eq!(args.keep_alive, Some(std::time::Duration::from_secs(600)));
    }

    #[test]
    fn the_servicenow_event_example_is_valid_and_becomes_its_settings() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/servicenow-event.toml");
        let c = Config::load(&path).expect("examples/servicenow-event.toml must stay valid");
        let args = c.appliances[0]
            .assemble(
                Path::new("/s"),
                Secrets {
                    servicenow: Some(Secret::new("pw")),
                    ..Secrets::default()
                },
            )
            .expect("settings");
        assert!(args.sinks.tickets());
        let sn = args.sinks.servicenow.expect("servicenow");
        assert_eq!(sn.mode, crate::sinks::servicenow::Mode::Event);
        assert_eq!(sn.client.instance, "https://acme.service-now.com");
        assert_eq!(sn.event.severity(Some("Warning")), "4");
        assert_eq!(sn.note_prefix, crate::sinks::servicenow::EVENT_NOTE_PREFIX);
        assert_eq!(args.look_back, LookBack::All);
    }

    #[test]
    fn servicenow_mistakes_are_named_with_their_table() {
        let sn = |extra: &str| {
            MINIMAL.replace(
                "[appliance.console]\n",
                &format!("[appliance.servicenow]\ninstance = \"acme\"\n{extra}"),
            )
        };
        let e = parse(&sn("")).expect_err("no credentials").to_string();
        assert!(e.contains("servicenow: no credentials"), "{e}");
        let e = parse(&sn("user = \"u\"\npassword_env = \"X\"\nconcurency = 2\n"))
            .expect_err("typo")
            .to_string();
        assert!(e.contains("concurency"), "{e}");
        // A ServiceNow sink alone is a sink.
        assert!(parse(&sn("user = \"u\"\npassword_env = \"X\"\n")).is_ok());
    }
}
