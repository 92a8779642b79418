//! The command line, as the user typed it: the HPE sample's flags (`-a -u -p -g -d -r`), kept
//! verbatim, next to modern subcommands. Turned into [`crate::settings`] before anything runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "scmb",
    version,
    args_conflicts_with_subcommands = true,
    about = "Listen to HPE OneView's State-Change Message Bus, and set up its certificates",
    long_about = "Listen to HPE OneView's State-Change Message Bus (SCMB) and print the alerts you \
                  care about, or set up the RabbitMQ client certificates it needs.\n\n\
                  The HPE sample's command line works as it did:\n  \
                  scmb -a HOST -u USER -p PASS -g      generate the client keypair on the appliance\n  \
                  scmb -a HOST -u USER -p PASS -d      download caroot.pem, client.pem, key.pem\n  \
                  scmb -a HOST [-r ROUTE]              listen (default route scmb.alerts.#)",
    after_help = "Examples:\n  \
                  scmb setup -a oneview.example.com            # generate (if needed) and download the certificates\n  \
                  scmb watch -a oneview.example.com --severity Critical,Warning --state Active,Locked\n  \
                  scmb -a 10.0.0.5 --no-verify-hostname -r 'scmb.alerts.#' -r 'scmb.server-hardware.#'\n  \
                  scmb watch -a oneview.example.com --output json | jq .\n\n\
                  Each subcommand takes only the flags it uses (scmb SUBCOMMAND --help).\n\
                  Password: -p (visible in ps: avoid), $SCMB_PASSWORD, --password-file FILE, or a prompt.\n\
                  Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 authentication failed, 4 certificates\n\
                  missing or unusable, 5 appliance or bus unreachable, 6 TLS verification failed,\n\
                  7 the appliance refused the request."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Generate the RabbitMQ client keypair on the appliance (HPE sample's -g).
    #[arg(short = 'g', long = "gen", help_heading = "HPE sample")]
    pub generate: bool,
    /// Download the CA and the client certificate and key (HPE sample's -d).
    #[arg(short = 'd', long = "download", help_heading = "HPE sample")]
    pub download: bool,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run as a service: every appliance of a config file, with its sinks, metrics and health.
    Run(DaemonArgs),
    /// Check a config file, then each appliance: REST login, bus handshake, certificate
    /// expiry, Service Manager. One line per check; exit 0 only when all pass.
    Check(DaemonArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) for scmb or
    /// ov_to_sm, e.g. `scmb completions bash > /etc/bash_completion.d/scmb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        #[arg(value_enum, default_value_t = Tool::Scmb)]
        tool: Tool,
    },
    /// Print the man page (roff) of scmb or ov_to_sm, e.g. `scmb man > scmb.1`.
    Man {
        #[arg(value_enum, default_value_t = Tool::Scmb)]
        tool: Tool,
    },
    /// Generate the keypair if the appliance has none, wait for it, and download everything.
    Setup(RestCmd),
    /// Generate, download or show the certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Listen and print the messages the filter admits (the default without -g/-d).
    Watch(Box<WatchCmd>),
}

/// A command that talks to the appliance's REST API only.
#[derive(Args, Debug, Clone)]
pub struct RestCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `scmb watch`: the listener's flags.
#[derive(Args, Debug, Clone)]
pub struct WatchCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The binaries whose completions and man pages `scmb` prints.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Scmb,
    #[value(name = "ov_to_sm")]
    OvToSm,
}

impl Tool {
    /// The command definition, and the binary's name.
    pub fn command(self) -> (clap::Command, &'static str) {
        use clap::CommandFactory;
        match self {
            Tool::Scmb => (Cli::command(), "scmb"),
            Tool::OvToSm => (crate::ovtosm::OvToSmCli::command(), "ov_to_sm"),
        }
    }
}

/// `scmb run` and `scmb check`. Precedence: these flags > their environment variables > the
/// config file > defaults.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The config file (TOML; see docs/OPERATIONS.md and examples/scmb.toml).
    #[arg(short = 'c', long, env = "SCMB_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Where the appliances keep their state (overrides state_dir).
    #[arg(long, env = "SCMB_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (overrides metrics.listen).
    #[arg(long, env = "SCMB_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Ask the appliance to generate the RabbitMQ client keypair (409 "already there" is fine).
    Generate(RestCmd),
    /// Download caroot.pem, client.pem and key.pem.
    Download(RestCmd),
    /// Show where the certificates are, their modes, sizes and SHA-256 fingerprints.
    Show(ShowArgs),
}

/// `scmb certs show`: which certificate directory.
#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// Appliance address: HOST or HOST:PORT (names the default certificate directory).
    #[arg(short = 'a', long = "appliance", value_name = "HOST")]
    pub host: Option<String>,
    /// Where the certificates live (default: the user's config dir, per appliance).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// The certificates are in the current directory, like the HPE sample's.
    #[arg(long, conflicts_with = "cert_dir")]
    pub cwd_certs: bool,
}

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
    #[arg(short = 'p', long = "pass", value_name = "PASS")]
    pub password: Option<String>,
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
    /// The password already read (from a config file's env, file or systemd credential).
    #[arg(skip)]
    pub secret: Option<scmb_oneview::Secret>,
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
    #[arg(long, env = "SCMB_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::telemetry::LogFormat>,
    /// Colour on a terminal: auto (unless $NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,
}

/// When to colour what goes to a terminal.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// On a terminal, unless `$NO_COLOR` is set to anything but the empty string.
    #[default]
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether to colour a stream that is (or is not) a terminal.
    pub fn enabled(self, terminal: bool) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
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
    /// When the broker refuses the certificates on disk (the appliance regenerated them),
    /// download the new ones over REST and carry on (needs the OneView password).
    #[arg(long)]
    pub auto_bootstrap: bool,
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
    pub look_back: Option<crate::duration::LookBack>,
}

/// `--look-back` as clap reads it.
pub fn look_back(s: &str) -> Result<crate::duration::LookBack, String> {
    crate::duration::LookBack::parse(s)
}

pub use crate::sinks::format::Output;

/// The default OneView user, as in the HPE sample.
pub const DEFAULT_USER: &str = "Administrator";
