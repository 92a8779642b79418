//! The flag groups every command shares (appliance, bus, filter, logging, the listener's
//! output), and what each amounts to in [`crate::settings`].

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use scmb_model::Filter;
use scmb_oneview::Secret;

use crate::config::{FilterConfig, LogConfig};
use crate::duration::LookBack;
use crate::failure::{self, Failure};
use crate::password::Password;
use crate::settings::{self, BusChoices, DEFAULT_USER};
use crate::sinks::format::Output;
use crate::telemetry::{Color, LogFormat, LogSettings};

/// The appliance, its REST API and its login.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Appliance")]
pub struct ConnArgs {
    /// Appliance address: HOST or HOST:PORT of the REST API (port 443 by default).
    #[arg(short = 'a', long = "appliance", value_name = "HOST")]
    pub host: Option<String>,
    /// OneView user.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// OneView password (visible in `ps`: prefer $SCMB_PASSWORD, --password-file or the prompt).
    #[arg(short = 'p', long = "pass", value_name = "PASS", value_parser = secret)]
    pub password: Option<Secret>,
    /// Read the OneView password from this file (first line).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Login domain (default LOCAL).
    #[arg(long, value_name = "DOMAIN")]
    pub login_domain: Option<String>,
    /// Where the certificates live (default: the user's config dir, per appliance).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Keep the certificates in the current directory, like the HPE sample.
    #[arg(long, conflicts_with = "cert_dir")]
    pub cwd_certs: bool,
    /// Check the appliance's certificates against this name instead of HOST.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Verify the REST API's certificate against this CA file instead of a pinned fingerprint.
    #[arg(long, value_name = "FILE")]
    pub rest_ca: Option<PathBuf>,
    /// Pin the REST API's certificate to this SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    pub rest_fingerprint: Option<String>,
    /// DANGEROUS: do not verify the REST API's certificate at all.
    #[arg(long)]
    pub insecure: bool,
    /// Do not accept the EULA when the appliance asks for it (the sample accepts it).
    #[arg(long)]
    pub no_accept_eula: bool,
}

/// Logging and colour, for every command that runs.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log level or directives (info, debug, warn,scmb=debug); default RUST_LOG, then
    /// warn,scmb=info.
    #[arg(long, env = "SCMB_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format on stderr.
    #[arg(long, env = "SCMB_LOG_FORMAT", value_name = "text|json",
          value_parser = PossibleValuesParser::new(["text", "json"]).try_map(|s| s.parse::<LogFormat>()))]
    pub log_format: Option<LogFormat>,
    /// Colour on a terminal: auto (unless $NO_COLOR is set), always, never.
    #[arg(long, default_value = "auto", value_name = "WHEN",
          value_parser = PossibleValuesParser::new(["auto", "always", "never"]).try_map(|s| s.parse::<Color>()))]
    pub color: Color,
}

/// How to reach the message bus and what to consume: for every command that listens.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Message bus")]
pub struct BusArgs {
    /// Binding key (repeatable; default scmb.alerts.#).
    #[arg(short = 'r', long = "route", value_name = "ROUTE")]
    pub routes: Vec<String>,
    /// Port of the message bus.
    #[arg(long, default_value_t = 5671)]
    pub amqp_port: u16,
    /// Check the broker's certificate chain but not its name (appliances reached by an IP
    /// their certificate does not list).
    #[arg(long)]
    pub no_verify_hostname: bool,
    /// AMQP heartbeat (10s, 1m).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = heartbeat)]
    pub heartbeat: std::time::Duration,
    /// Unacknowledged messages the broker may send ahead.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Consume this existing queue (declared and bound by someone else) instead of a
    /// server-named exclusive one of our own; -r is then ignored.
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_message_bytes: usize,
    /// Most bytes of messages held at once: the prefetch is lowered so that
    /// prefetch × --max-message-bytes stays within it (default 1 GiB).
    #[arg(long, default_value_t = crate::settings::DEFAULT_IN_FLIGHT_BYTES)]
    pub max_in_flight_bytes: usize,
    /// When the broker refuses the certificates on disk (the appliance regenerated them),
    /// download the new ones over REST and carry on (needs the OneView password).
    #[arg(long)]
    pub auto_bootstrap: bool,
    /// On a stop (SIGTERM, Ctrl-C), how long work in hand may take to finish (30s, 2m); what
    /// is not finished stays unacked and comes again. Keep it below systemd's TimeoutStopSec.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = drain)]
    pub drain: std::time::Duration,
}

fn drain(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse("--drain", s)
}

fn heartbeat(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse("--heartbeat", s)
}

/// Which messages are admitted.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Filter")]
pub struct FilterArgs {
    /// Admitted severities, comma-separated: Critical, Warning, OK, Unknown, Disabled
    /// (default Critical; `*` = all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub severity: Vec<String>,
    /// Admitted alert states, comma-separated: Active, Locked, Cleared, Pending
    /// (default Active).
    #[arg(long = "state", value_delimiter = ',', value_name = "LIST")]
    pub states: Vec<String>,
    /// Admitted change types, comma-separated: Created, Updated, Deleted (default Created).
    #[arg(long = "change-type", value_delimiter = ',', value_name = "LIST")]
    pub change_types: Vec<String>,
    /// Also show Updated alerts whose severity changed into an admitted one.
    #[arg(long)]
    pub escalations: bool,
    /// Admitted resource categories, comma-separated (default alerts; `*` = all).
    #[arg(long = "category", value_delimiter = ',', value_name = "LIST")]
    pub categories: Vec<String>,
    /// alertTypeID patterns with `*`, comma-separated.
    #[arg(long = "alert-type", value_delimiter = ',', value_name = "LIST")]
    pub alert_types: Vec<String>,
}

/// The `scmb` listener: bus, filter, output, catch-up.
#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format: human (the sample's fields) or json (one object per line).
    #[arg(
        long,
        default_value = "human",
        value_name = "human|json",
        help_heading = "Output"
    )]
    pub output: Output,
    /// Exit after this many printed messages (for scripts and tests).
    #[arg(long, value_name = "N", help_heading = "Output")]
    pub count: Option<u64>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9464).
    #[arg(
        long,
        env = "SCMB_METRICS_LISTEN",
        value_name = "ADDR",
        help_heading = "Output"
    )]
    pub metrics_listen: Option<String>,
    /// After every (re)connect, read the alerts raised meanwhile over REST and print the ones
    /// not printed yet (needs the OneView password).
    #[arg(long, help_heading = "Catch-up")]
    pub catch_up: bool,
    /// With --catch-up, how far back the first start looks: none (default), all active
    /// alerts, or a window (24h, 90m, 7d).
    #[arg(long, value_name = "none|all|DURATION", requires = "catch_up", value_parser = look_back, help_heading = "Catch-up")]
    pub look_back: Option<LookBack>,
}

/// `--look-back` as clap reads it.
pub fn look_back(s: &str) -> Result<LookBack, String> {
    LookBack::parse(s)
}

/// A password typed as a flag goes straight into a [`Secret`], which never prints.
pub fn secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

fn missing_host() -> Failure {
    Failure::new(
        failure::USAGE,
        "the appliance address is missing: give -a HOST",
    )
}

/// The appliance host, required.
pub fn required_host(host: Option<&str>) -> Result<&str, Failure> {
    host.filter(|h| !h.is_empty()).ok_or_else(missing_host)
}

impl ConnArgs {
    /// The REST settings: the appliance, its login (the password read only when a login
    /// needs it) and where its certificates are.
    pub fn rest(&self) -> Result<settings::Rest, Failure> {
        let host = required_host(self.host.as_deref())?;
        Ok(settings::Rest {
            host: host.to_string(),
            user: self.user.clone().unwrap_or_else(|| DEFAULT_USER.to_string()),
            password: Password::from_command_line(
                ("-p", self.password.as_ref()),
                self.password_file.as_deref(),
                "SCMB_PASSWORD",
                (
                    "OneView password: ",
                    "$SCMB_PASSWORD, --password-file or the prompt",
                ),
                "no password: set $SCMB_PASSWORD, give --password-file FILE, or run on a terminal to be asked",
            ),
            login_domain: self.login_domain.clone(),
            cert_dir: crate::certs::cert_dir(self.cert_dir.as_deref(), self.cwd_certs, host)?,
            server_name: self.tls_server_name.clone(),
            ca: self.rest_ca.clone(),
            fingerprint: self.rest_fingerprint.clone(),
            insecure: self.insecure,
            accept_eula: !self.no_accept_eula,
        })
    }
}

impl LogArgs {
    /// The log settings from these flags (and their environment variables), `RUST_LOG` and a
    /// config file's `[log]`, in that order of precedence.
    pub fn settings(&self, file: Option<&LogConfig>) -> LogSettings {
        let rust_log = std::env::var("RUST_LOG").ok();
        LogSettings {
            level: crate::telemetry::log_level(
                self.log_level.as_deref(),
                rust_log.as_deref(),
                file.and_then(|f| f.level.as_deref()),
            ),
            format: self
                .log_format
                .or(file.and_then(|f| f.format))
                .unwrap_or_default(),
            color: self.color,
        }
    }
}

impl BusArgs {
    pub fn bus(&self, rest: &settings::Rest) -> settings::Bus {
        settings::Bus::new(
            rest,
            BusChoices {
                routes: self.routes.clone(),
                port: self.amqp_port,
                verify_hostname: !self.no_verify_hostname,
                heartbeat: self.heartbeat,
                prefetch: self.prefetch,
                queue: self.queue.clone(),
                max_message_bytes: self.max_message_bytes,
                max_in_flight_bytes: self.max_in_flight_bytes,
                auto_bootstrap: self.auto_bootstrap,
                drain: self.drain,
            },
        )
    }
}

impl FilterArgs {
    /// The filter, checked like a config file's: a value OneView never sends is a usage error;
    /// an unknown category or alert type is warned about.
    pub fn filter(&self) -> Result<Filter, Failure> {
        let lists = FilterConfig {
            severities: self.severity.clone(),
            states: self.states.clone(),
            change_types: self.change_types.clone(),
            escalations: self.escalations,
            categories: self.categories.clone(),
            alert_types: self.alert_types.clone(),
        };
        let (f, warnings) = lists
            .filter()
            .map_err(|m| Failure::new(failure::USAGE, m))?;
        for w in warnings {
            crate::telemetry::early_warn(w);
        }
        Ok(f)
    }
}

impl ListenArgs {
    /// The listener: the pipeline with the console sink, one alert at a time in order.
    pub fn appliance(&self, conn: &ConnArgs) -> Result<settings::Appliance, Failure> {
        let rest = conn.rest()?;
        Ok(settings::Appliance {
            label: None,
            bus: self.bus.bus(&rest),
            filter: self.filter.filter()?,
            catch_up: self.catch_up,
            look_back: self.look_back.unwrap_or(LookBack::default_for(false)),
            lanes: 1,
            keep_alive: None,
            sinks: crate::sinks::SinkSettings {
                console: Some(crate::sinks::console::ConsoleSettings {
                    format: self.output,
                    limit: self.count,
                }),
                ..Default::default()
            },
            store: Some(rest.cert_dir.join("scmb.redb")),
            rest,
            login_at_start: false,
        })
    }
}
