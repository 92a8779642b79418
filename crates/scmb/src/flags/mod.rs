//! Stage one of the settings: the command lines as the user typed them (clap), validated.
//! `scmb`'s keeps the HPE sample's flags (`-a -u -p -g -d -r`) verbatim next to modern
//! subcommands; `ov_to_sm`'s is in [`ov_to_sm`]. Each flag group turns itself into the plain
//! types of [`crate::settings`]; nothing below the commands sees a flag struct.

pub mod common;
pub mod ov_to_sm;
pub mod servicenow;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use common::{BusArgs, ConnArgs, FilterArgs, ListenArgs, LogArgs};

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
    /// expiry, Service Manager, ServiceNow. One line per check; exit 0 only when all pass.
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
            Tool::OvToSm => (ov_to_sm::OvToSmCli::command(), "ov_to_sm"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MINIMAL_FOR_TESTS as MINIMAL};
    use crate::telemetry::{Color, LogFormat, LogSettings};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, Path::new("scmb.toml"))
    }

    #[test]
    fn precedence_is_flags_then_environment_then_file_then_defaults() {
        use clap::Parser;
        let file = parse(&format!(
            "state_dir = \"/from/file\"\n[metrics]\nlisten = \"127.0.0.1:1\"\n[log]\nlevel = \"error\"\nformat = \"json\"\n{MINIMAL}"
        ))
        .expect("parse");
        let args = |extra: &[&str]| {
            let mut a = vec!["scmb", "run", "--config", "scmb.toml"];
            a.extend_from_slice(extra);
            let cli = Cli::try_parse_from(a).expect("parse");
            match cli.cmd {
                Some(Cmd::Run(d)) => {
                    let log = d.log.clone();
                    (d, log)
                }
                _ => panic!("not run"),
            }
        };
        // Defaults, then the file.
        assert_eq!(Config::default().metrics_listen(None), None);
        let (d, log) = args(&[]);
        assert_eq!(
            file.metrics_listen(d.metrics_listen.as_deref()).as_deref(),
            Some("127.0.0.1:1")
        );
        assert_eq!(
            file.state_dir(d.state_dir.as_deref()),
            PathBuf::from("/from/file")
        );
        let LogSettings { level, format, .. } = log.settings(Some(&file.log));
        if std::env::var_os("RUST_LOG").is_none() {
            assert_eq!(level, "error");
        }
        assert_eq!(format, LogFormat::Json);
        // The environment beats the file.
        std::env::set_var("SCMB_METRICS_LISTEN", "127.0.0.1:2");
        std::env::set_var("SCMB_STATE_DIR", "/from/env");
        std::env::set_var("SCMB_LOG_FORMAT", "text");
        let (d, log) = args(&[]);
        assert_eq!(
            file.metrics_listen(d.metrics_listen.as_deref()).as_deref(),
            Some("127.0.0.1:2")
        );
        assert_eq!(
            file.state_dir(d.state_dir.as_deref()),
            PathBuf::from("/from/env")
        );
        assert_eq!(log.settings(Some(&file.log)).format, LogFormat::Text);
        // Flags beat the environment.
        let (d, log) = args(&[
            "--metrics-listen",
            "127.0.0.1:3",
            "--state-dir",
            "/from/flag",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ]);
        std::env::remove_var("SCMB_METRICS_LISTEN");
        std::env::remove_var("SCMB_STATE_DIR");
        std::env::remove_var("SCMB_LOG_FORMAT");
        assert_eq!(
            file.metrics_listen(d.metrics_listen.as_deref()).as_deref(),
            Some("127.0.0.1:3")
        );
        assert_eq!(
            file.state_dir(d.state_dir.as_deref()),
            PathBuf::from("/from/flag")
        );
        assert_eq!(
            log.settings(Some(&file.log)),
            LogSettings {
                level: "debug".to_string(),
                format: LogFormat::Json,
                color: Color::Auto
            }
        );
    }
}
