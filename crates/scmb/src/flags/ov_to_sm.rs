//! `ov_to_sm`'s command line: the HPE sample's flags (`-a -u -p -r -g -d`, `-s/--sm` also
//! spelled `-sm`, `-i/--id`, `-x/--spass`, `-l/--list`) plus ours, and the settings they
//! amount to: the pipeline of one appliance with the Service Manager sink.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use scmb_oneview::Secret;
use scmb_servicemanager::SmConfig;

use super::common::{look_back, secret};
use super::servicenow::{ServiceNowArgs, Shared};
use super::{BusArgs, ConnArgs, FilterArgs, LogArgs};
use crate::duration::LookBack;
use crate::failure::{self, Failure};
use crate::password::Password;
use crate::settings;
use crate::sinks::format::Output;
use crate::sinks::service_manager::{OnClear, ServiceManagerSettings, Template};
use crate::sinks::SinkSettings;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ov_to_sm",
    version,
    about = "Open one HP Service Manager and/or ServiceNow incident per critical HPE OneView alert, and write its id back to the alert",
    after_help = "Examples:\n  \
                  ov_to_sm -a oneview.example.com -u Administrator -sm sm.example.com          # passwords from $SCMB_PASSWORD / $SM_PASSWORD\n  \
                  ov_to_sm -a oneview.example.com -sm sm.example.com -l                       # list every incident\n  \
                  ov_to_sm -a oneview.example.com -sm https://sm.example.com:13443 --sm-ca ca.pem --on-clear close\n  \
                  ov_to_sm -a oneview.example.com --servicenow acme --sn-user svc-oneview    # ServiceNow only; password from $SCMB_SN_PASSWORD\n  \
                  ov_to_sm -a oneview.example.com --servicenow sn.example.com --sn-client-id CLIENT_ID \\\n      \
                  --sn-client-secret-file /run/secrets/sn --sn-ca corp-ca.pem --sn-on-clear close --sn-cmdb-ci\n  \
                  ov_to_sm -a oneview.example.com -sm sm.example.com --servicenow acme --sn-user svc-oneview   # both: an incident in each\n\n\
                  At least one of -sm and --servicenow is needed. Secrets: $SCMB_PASSWORD, $SM_PASSWORD,\n\
                  $SCMB_SN_PASSWORD (Basic) or $SCMB_SN_CLIENT_SECRET (OAuth), the --*-file flags, or a prompt\n\
                  on a terminal; ServiceNow's are never taken from a flag's value.\n\
                  Exit codes as scmb's (see scmb --help): 0 ok, 1 unexpected error, 2 usage (bad flags, no\n\
                  ticketing system, no password available), 3 authentication failed (OneView, Service Manager\n\
                  or ServiceNow refused the credentials at start), 4 certificates, 5 unreachable, 6 TLS\n\
                  verification failed, 7 the request was refused, 8-10 the state store."
)]
pub struct OvToSmCli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// How the ticketed alerts (and `-l`) are printed: human or json.
    #[arg(
        long,
        default_value = "human",
        value_name = "human|json",
        help_heading = "Output"
    )]
    pub output: Output,
    /// At the first start, how far back to catch up: all active alerts (default), none, or a
    /// window (24h, 90m, 7d). Later starts catch up from where the last run stopped.
    #[arg(long, value_name = "all|none|DURATION", value_parser = look_back, default_value = "all")]
    pub look_back: LookBack,
    #[command(flatten)]
    pub log: LogArgs,
    /// Generate the RabbitMQ client keypair on the appliance (HPE sample's -g).
    #[arg(short = 'g', long = "gen", help_heading = "HPE sample")]
    pub generate: bool,
    /// Download the CA and the client certificate and key (HPE sample's -d).
    #[arg(short = 'd', long = "download", help_heading = "HPE sample")]
    pub download: bool,
    /// Service Manager: HOST (http://HOST:13080 like the sample), HOST:PORT, or a URL.
    #[arg(
        short = 's',
        long = "sm",
        value_name = "SMHOST",
        help_heading = "Service Manager"
    )]
    pub sm: Option<String>,
    /// Service Manager user.
    #[arg(
        short = 'i',
        long = "id",
        default_value = "falcon",
        value_name = "SMUSER",
        help_heading = "Service Manager"
    )]
    pub sm_user: String,
    /// Service Manager password (visible in `ps`: prefer $SM_PASSWORD, --sm-password-file or
    /// the prompt on a terminal; empty when none is given and there is no terminal).
    #[arg(short = 'x', long = "spass", value_name = "SMPASS", value_parser = secret, help_heading = "Service Manager")]
    pub sm_password: Option<Secret>,
    /// Read the Service Manager password from this file (first line).
    #[arg(long, value_name = "FILE", help_heading = "Service Manager")]
    pub sm_password_file: Option<PathBuf>,
    /// Verify Service Manager's HTTPS certificate against this CA file.
    #[arg(long, value_name = "FILE", help_heading = "Service Manager")]
    pub sm_ca: Option<PathBuf>,
    /// List every Service Manager incident and exit.
    #[arg(short = 'l', long = "list", help_heading = "Service Manager")]
    pub list: bool,
    /// Incidents per page with -l.
    #[arg(long, default_value_t = 100, help_heading = "Service Manager")]
    pub list_page_size: usize,
    /// How long one Service Manager call may take, answer included (30s, 2m). A create
    /// without an answer in time may still have happened: it is looked up before being sent
    /// again.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = sm_timeout, help_heading = "Service Manager")]
    pub sm_timeout: Duration,
    /// Incident title.
    #[arg(
        long,
        default_value = "OneView Alert",
        help_heading = "Service Manager"
    )]
    pub sm_title: String,
    /// Incident assignment group.
    #[arg(
        long,
        default_value = "Service Manager",
        help_heading = "Service Manager"
    )]
    pub sm_assignment_group: String,
    /// Incident service.
    #[arg(long, default_value = "MyDevices", help_heading = "Service Manager")]
    pub sm_service: String,
    /// Incident urgency by alert severity, e.g. Critical=1,Warning=2,OK=3 (others get 3).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SEVERITY=N",
        default_value = "Critical=1,Warning=2,OK=3",
        help_heading = "Service Manager"
    )]
    pub sm_urgency: Vec<String>,
    /// Incident impact.
    #[arg(long, default_value = "4", help_heading = "Service Manager")]
    pub sm_impact: String,
    /// Incident category, area and subarea.
    #[arg(long, default_value = "incident", help_heading = "Service Manager")]
    pub sm_category: String,
    #[arg(long, default_value = "hardware", help_heading = "Service Manager")]
    pub sm_area: String,
    #[arg(
        long,
        default_value = "hardware failure",
        help_heading = "Service Manager"
    )]
    pub sm_subarea: String,
    /// Do not set AffectedCI from the alert's resource name.
    #[arg(long, help_heading = "Service Manager")]
    pub no_affected_ci: bool,
    /// An extra incident field, KEY=VALUE (repeatable).
    #[arg(
        long = "sm-field",
        value_name = "KEY=VALUE",
        help_heading = "Service Manager"
    )]
    pub sm_fields: Vec<String>,
    /// Where the durable record of alert → incident lives (default: next to the certificates).
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Ticketing (Service Manager and ServiceNow)"
    )]
    pub state_dir: Option<PathBuf>,
    /// Alerts ticketed in parallel.
    #[arg(
        long,
        default_value_t = 16,
        help_heading = "Ticketing (Service Manager and ServiceNow)"
    )]
    pub concurrency: usize,
    /// What a cleared or deleted alert does to its incident: none, journal, resolve, close
    /// (ServiceNow: --sn-on-clear, by default this).
    #[arg(long, default_value = "resolve", value_name = "WHAT", value_parser = on_clear(), help_heading = "Ticketing (Service Manager and ServiceNow)")]
    pub on_clear: OnClear,
    /// Add a journal line (a work note in ServiceNow) to the incident when someone else
    /// changes the alert (urgency, assignment, a note).
    #[arg(long, help_heading = "Ticketing (Service Manager and ServiceNow)")]
    pub journal_updates: bool,
    /// Time between REST keep-alive calls during idle periods (10m, 1h; 0s = off).
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = keep_alive, help_heading = "Ticketing (Service Manager and ServiceNow)")]
    pub keep_alive: Duration,
    /// Deprecated spelling of --keep-alive, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        hide = true,
        conflicts_with = "keep_alive",
        help_heading = "Ticketing (Service Manager and ServiceNow)"
    )]
    pub keep_alive_secs: Option<u64>,
    /// Longest pause between retries of a failing call (30s, 2m); also the pause while a
    /// ticketing system refuses our credentials.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = retry_cap, help_heading = "Ticketing (Service Manager and ServiceNow)")]
    pub retry_cap: Duration,
    /// Deprecated spelling of --retry-cap, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        hide = true,
        conflicts_with = "retry_cap",
        help_heading = "Ticketing (Service Manager and ServiceNow)"
    )]
    pub retry_cap_secs: Option<u64>,
    /// Claim each alert (an eTag-guarded note) before creating its incident, so that two
    /// instances on separate state (an HA pair, both with --claim) never both create one.
    #[arg(long, help_heading = "Ticketing (Service Manager and ServiceNow)")]
    pub claim: bool,
    #[command(flatten)]
    pub servicenow: ServiceNowArgs,
}

/// `--on-clear` and `--sn-on-clear`: the four choices (listed in the help and the shell
/// completions), a typo refused with them named.
pub fn on_clear() -> impl clap::builder::TypedValueParser<Value = OnClear> {
    OnClearParser
}

#[derive(Clone)]
struct OnClearParser;

impl clap::builder::TypedValueParser for OnClearParser {
    type Value = OnClear;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<OnClear, clap::Error> {
        use clap::builder::StringValueParser;
        StringValueParser::new()
            .try_map(|s| s.parse::<OnClear>())
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["none", "journal", "resolve", "close"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

fn keep_alive(s: &str) -> Result<Duration, String> {
    crate::duration::parse("--keep-alive", s)
}

fn retry_cap(s: &str) -> Result<Duration, String> {
    crate::duration::parse("--retry-cap", s)
}

fn sm_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse("--sm-timeout", s)?;
    if d.is_zero() {
        return Err("--sm-timeout must be above zero, e.g. 30s".into());
    }
    Ok(d)
}

impl OvToSmCli {
    /// The keep-alive interval, from either spelling (`None`: off).
    pub fn keep_alive(&self) -> Option<Duration> {
        let d = match self.keep_alive_secs {
            Some(s) => {
                crate::telemetry::deprecated(format!(
                    "--keep-alive-secs {s} is deprecated: write --keep-alive {s}s"
                ));
                Duration::from_secs(s)
            }
            None => self.keep_alive,
        };
        (!d.is_zero()).then_some(d)
    }

    /// The retry cap, from either spelling (at least one second).
    pub fn retry_cap(&self) -> Duration {
        let d = match self.retry_cap_secs {
            Some(s) => {
                crate::telemetry::deprecated(format!(
                    "--retry-cap-secs {s} is deprecated: write --retry-cap {s}s"
                ));
                Duration::from_secs(s)
            }
            None => self.retry_cap,
        };
        d.max(Duration::from_secs(1))
    }
}

/// The sample's README spells `--sm` as `-sm`: accept it verbatim.
pub fn normalise_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| if a == "-sm" { "--sm".to_string() } else { a })
        .collect()
}

/// `KEY=VALUE`, both sides trimmed, the key not empty.
pub(crate) fn key_value(s: &str, flag: &str) -> Result<(String, String), Failure> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Failure::new(failure::USAGE, format!("{flag} {s:?}: expected KEY=VALUE")))
}

/// The incident template from the flags (the sample's values by default).
pub fn template(cli: &OvToSmCli) -> Result<Template, Failure> {
    let mut extra = serde_json::Map::new();
    for f in &cli.sm_fields {
        let (k, v) = key_value(f, "--sm-field")?;
        extra.insert(k, serde_json::Value::String(v));
    }
    Ok(Template {
        title: cli.sm_title.clone(),
        category: cli.sm_category.clone(),
        area: cli.sm_area.clone(),
        subarea: cli.sm_subarea.clone(),
        impact: cli.sm_impact.clone(),
        assignment_group: cli.sm_assignment_group.clone(),
        service: cli.sm_service.clone(),
        urgency: cli
            .sm_urgency
            .iter()
            .map(|u| key_value(u, "--sm-urgency"))
            .collect::<Result<_, _>>()?,
        affected_ci: !cli.no_affected_ci,
        extra,
        ..Template::default()
    })
}

impl OvToSmCli {
    /// Where the Service Manager password comes from: `-x` (warned about), the file, the
    /// environment, the prompt on a terminal; else empty, like the sample's `falcon` user.
    fn sm_password(&self) -> Password {
        Password::from_command_line(
            ("-x", self.sm_password.as_ref()),
            self.sm_password_file.as_deref(),
            "SM_PASSWORD",
            (
                "Service Manager password: ",
                "$SM_PASSWORD or --sm-password-file",
            ),
            "no Service Manager password",
        )
        .or_empty()
    }

    /// The Service Manager sink's settings (its password read now).
    pub fn service_manager(&self) -> Result<ServiceManagerSettings, Failure> {
        let host = self.sm.as_deref().ok_or_else(|| {
            Failure::new(
                failure::USAGE,
                "the Service Manager host is missing: give -sm SMHOST",
            )
        })?;
        let password = self
            .sm_password()
            .read()
            .map_err(|m| Failure::new(failure::USAGE, m))?;
        let mut client = SmConfig::from_host(host, self.sm_user.clone(), password);
        client.timeout = self.sm_timeout;
        if let Some(ca) = &self.sm_ca {
            client.trust = scmb_tls::ServerTrust::Ca(scmb_tls::load_certs(ca)?);
        }
        Ok(ServiceManagerSettings {
            client,
            template: template(self)?,
            on_clear: self.on_clear,
            journal_updates: self.journal_updates,
            retry_cap: self.retry_cap(),
            claim: self.claim,
            report: Some(self.output),
        })
    }

    /// What the ServiceNow flags share with the rest of the command line.
    pub fn shared(&self) -> Shared {
        Shared {
            on_clear: self.on_clear,
            journal_updates: self.journal_updates,
            claim: self.claim,
            retry_cap: self.retry_cap(),
            concurrency: self.concurrency,
        }
    }

    /// The pipeline: this appliance, every admitted alert ticketed in Service Manager, in
    /// ServiceNow, or in both, `--concurrency` at once.
    pub fn appliance(&self) -> Result<settings::Appliance, Failure> {
        let rest = self.conn.rest()?;
        if self.sm.is_none() && !self.servicenow.given() {
            return Err(Failure::new(
                failure::USAGE,
                "no ticketing system: give -sm SMHOST (HP Service Manager), --servicenow INSTANCE (ServiceNow), or both",
            ));
        }
        let filter = self.filter.filter()?;
        let service_manager = match self.sm {
            Some(_) => Some(self.service_manager()?),
            None => None,
        };
        let servicenow = self.servicenow.settings(&self.shared())?;
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| rest.cert_dir.clone());
        Ok(settings::Appliance {
            label: None,
            bus: self.bus.bus(&rest),
            filter,
            catch_up: true,
            look_back: self.look_back,
            lanes: self.concurrency.max(1),
            keep_alive: self.keep_alive(),
            sinks: SinkSettings {
                service_manager,
                servicenow,
                ..SinkSettings::default()
            },
            store: Some(state_dir.join("ov_to_sm.redb")),
            rest,
            login_at_start: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_dash_sm_spelling_is_accepted() {
        let args =
            normalise_args(["ov_to_sm", "-a", "h", "-sm", "smhost", "-x", "pw"].map(String::from));
        let cli = OvToSmCli::try_parse_from(args).expect("parse");
        assert_eq!(cli.sm.as_deref(), Some("smhost"));
        assert_eq!(cli.sm_user, "falcon");
        assert_eq!(cli.sm_password.as_ref().map(Secret::expose), Some("pw"));
    }

    #[test]
    fn the_template_is_configurable_and_defaults_to_the_sample() {
        let parse = |extra: &[&str]| {
            let mut a = vec!["ov_to_sm", "-a", "h", "--sm", "s"];
            a.extend_from_slice(extra);
            template(&OvToSmCli::try_parse_from(a).expect("parse")).expect("template")
        };
        let alert = serde_json::json!({"severity": "Warning", "associatedResource": {"resourceName": "Encl1"}});
        let d = parse(&[]).incident(&alert);
        assert_eq!(
            (
                d["Urgency"].as_str(),
                d["Impact"].as_str(),
                d["AffectedCI"].as_str()
            ),
            (Some("2"), Some("4"), Some("Encl1"))
        );
        let t = parse(&[
            "--sm-urgency",
            "Critical=2,Warning=3",
            "--sm-impact",
            "2",
            "--sm-field",
            "Priority=High",
            "--no-affected-ci",
        ])
        .incident(&alert);
        assert_eq!(
            (
                t["Urgency"].as_str(),
                t["Impact"].as_str(),
                t["Priority"].as_str()
            ),
            (Some("3"), Some("2"), Some("High"))
        );
        assert!(t.get("AffectedCI").is_none());
        let bad = OvToSmCli::try_parse_from(["ov_to_sm", "-a", "h", "--sm-field", "novalue"])
            .expect("parse");
        assert!(template(&bad).is_err());
    }

    #[test]
    fn ov_to_sm_looks_back_at_every_active_alert_by_default() {
        let cli = OvToSmCli::try_parse_from(["ov_to_sm", "-a", "h", "-s", "sm"]).expect("parse");
        assert_eq!(cli.look_back, LookBack::All);
        let cli = OvToSmCli::try_parse_from(["ov_to_sm", "-a", "h", "--look-back", "24h"])
            .expect("parse");
        assert_eq!(cli.look_back, LookBack::Window(Duration::from_secs(86_400)));
    }

    #[test]
    fn durations_take_the_human_form_and_the_old_seconds_flags_still_work() {
        let parse = |extra: &[&str]| {
            let mut a = vec!["ov_to_sm", "-a", "h"];
            a.extend_from_slice(extra);
            OvToSmCli::try_parse_from(a).expect("parse")
        };
        let d = parse(&[]);
        assert_eq!(d.keep_alive(), Some(Duration::from_secs(600)));
        assert_eq!(d.retry_cap(), Duration::from_secs(30));
        let n = parse(&[
            "--keep-alive",
            "1h",
            "--retry-cap",
            "2m",
            "--heartbeat",
            "30s",
        ]);
        assert_eq!(n.keep_alive(), Some(Duration::from_secs(3600)));
        assert_eq!(n.retry_cap(), Duration::from_secs(120));
        assert_eq!(n.bus.heartbeat, Duration::from_secs(30));
        let old = parse(&[
            "--keep-alive-secs",
            "0",
            "--retry-cap-secs",
            "5",
            "--heartbeat",
            "20",
        ]);
        assert_eq!(old.keep_alive(), None);
        assert_eq!(old.retry_cap(), Duration::from_secs(5));
        assert_eq!(old.bus.heartbeat, Duration::from_secs(20));
        assert!(OvToSmCli::try_parse_from(["ov_to_sm", "--retry-cap", "soon"]).is_err());
    }
}
