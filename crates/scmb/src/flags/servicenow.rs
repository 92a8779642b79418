//! `ov_to_sm`'s ServiceNow flags (`--servicenow INSTANCE`, `--sn-*`): the one-appliance run's
//! spelling of `[appliance.servicenow]`. They fill a [`ServiceNowConfig`] and go through its
//! own checks and [`ServiceNowConfig::settings`], so the command line and the config file get
//! the same sink, the same defaults and the same errors (with the flag named instead of the
//! key). Secrets never come from a flag's value (`ps` would show it): the password or client
//! secret comes from a file, the environment, or a prompt on a terminal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use scmb_oneview::Secret;

use super::common::secret;
use crate::duration::DurationValue;
use crate::failure::{self, Failure};
use crate::password::Password;
use crate::sinks::servicenow::{
    Correlate, IncidentConfig, Mode, OnClear, ServiceNowConfig, ServiceNowSettings,
};

/// The environment variable holding the ServiceNow password (Basic authentication).
pub const PASSWORD_ENV: &str = "SCMB_SN_PASSWORD";
/// The environment variable holding the OAuth client secret.
pub const CLIENT_SECRET_ENV: &str = "SCMB_SN_CLIENT_SECRET";

/// ServiceNow: one incident per admitted alert, beside (or instead of) Service Manager's.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "ServiceNow")]
pub struct ServiceNowArgs {
    /// Open a ServiceNow incident per admitted alert on this instance: its name (acme =
    /// https://acme.service-now.com), its host (sn.example.com:8443) or its URL. With -sm
    /// too, both get one.
    #[arg(long = "servicenow", value_name = "INSTANCE")]
    pub instance: Option<String>,
    /// Basic authentication: the ServiceNow user (itil role); the password from
    /// $SCMB_SN_PASSWORD, --sn-password-file, or the prompt on a terminal.
    #[arg(
        long,
        value_name = "USER",
        requires = "instance",
        conflicts_with = "sn_client_id"
    )]
    pub sn_user: Option<String>,
    /// Read the ServiceNow password from this file (first line).
    #[arg(
        long,
        value_name = "FILE",
        requires = "sn_user",
        conflicts_with = "sn_client_id"
    )]
    pub sn_password_file: Option<PathBuf>,
    /// OAuth 2.0 client credentials: the client id; the secret from $SCMB_SN_CLIENT_SECRET,
    /// --sn-client-secret-file, or the prompt on a terminal.
    #[arg(long, value_name = "ID", requires = "instance")]
    pub sn_client_id: Option<String>,
    /// Read the OAuth client secret from this file (first line).
    #[arg(
        long,
        value_name = "FILE",
        requires = "sn_client_id",
        conflicts_with = "sn_user"
    )]
    pub sn_client_secret_file: Option<PathBuf>,
    /// Verify the instance's HTTPS certificate against this CA file (default: the system's).
    #[arg(long, value_name = "FILE", requires = "instance")]
    pub sn_ca: Option<PathBuf>,
    /// DANGEROUS: do not verify the instance's HTTPS certificate at all.
    #[arg(long, requires = "instance", conflicts_with = "sn_ca")]
    pub sn_insecure: bool,
    /// Proxy for every ServiceNow call (http://proxy.example.com:3128), or none to go direct
    /// (default: $HTTPS_PROXY / $HTTP_PROXY / $ALL_PROXY with $NO_PROXY). A password in it
    /// shows in `ps`: prefer $HTTPS_PROXY then.
    #[arg(long, value_name = "URL|none", requires = "instance", value_parser = secret)]
    pub sn_proxy: Option<Secret>,
    /// How long one ServiceNow call may take, answer included (default 30s). A create without
    /// an answer in time is looked up by its correlation_id before being sent again.
    #[arg(long, value_name = "DURATION", requires = "instance")]
    pub sn_timeout: Option<String>,
    /// What a cleared or deleted alert does to its ServiceNow incident: none, journal (a work
    /// note), resolve, close (default: --on-clear's).
    #[arg(long, value_name = "WHAT", requires = "instance", value_parser = super::ov_to_sm::on_clear())]
    pub sn_on_clear: Option<OnClear>,
    /// The resolution code set when resolving or closing: one of the instance's close_code
    /// choices (default "Solved (Permanently)").
    #[arg(long, value_name = "CODE", requires = "instance")]
    pub sn_close_code: Option<String>,
    /// The resolution notes (default: the line saying which alert was cleared, and when).
    #[arg(long, value_name = "TEXT", requires = "instance")]
    pub sn_close_notes: Option<String>,
    /// One incident per alert (default), or per resource: later alerts on the same server
    /// or enclosure become work notes on its open incident (reopened if resolved), and the
    /// last clear resolves it.
    #[arg(long, value_name = "alert|resource", requires = "instance", value_parser = ["alert", "resource"])]
    pub sn_correlate: Option<String>,
    /// The way back: an incident people resolve or close in ServiceNow clears its alert in
    /// OneView (eTag-guarded; polled every --sn-poll-interval).
    #[arg(long, requires = "instance")]
    pub sn_clear_alerts: bool,
    /// How often --sn-clear-alerts asks which incidents were resolved (default 1m).
    #[arg(long, value_name = "DURATION", requires = "sn_clear_alerts")]
    pub sn_poll_interval: Option<String>,
    /// short_description; may hold {severity}, {resource}, {description}, {uri}, … (default
    /// "OneView {severity} alert on {resource}: {description}").
    #[arg(long, value_name = "TEXT", requires = "instance")]
    pub sn_short_description: Option<String>,
    /// description, with the same placeholders (default: the alert's fields, one per line).
    #[arg(long, value_name = "TEXT", requires = "instance")]
    pub sn_description: Option<String>,
    /// urgency by alert severity, e.g. Critical=1,Warning=2 (others get 3; default
    /// Critical=1,Warning=2,OK=3).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SEVERITY=N",
        requires = "instance"
    )]
    pub sn_urgency: Vec<String>,
    /// impact by alert severity, likewise (default Critical=2,Warning=3,OK=3).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SEVERITY=N",
        requires = "instance"
    )]
    pub sn_impact: Vec<String>,
    /// category ("" leaves the instance's default; default hardware).
    #[arg(long, value_name = "CATEGORY", requires = "instance")]
    pub sn_category: Option<String>,
    /// subcategory.
    #[arg(long, value_name = "SUBCATEGORY", requires = "instance")]
    pub sn_subcategory: Option<String>,
    /// assignment_group: the group's sys_id.
    #[arg(long, value_name = "SYS_ID", requires = "instance")]
    pub sn_assignment_group: Option<String>,
    /// caller_id: the caller's sys_id.
    #[arg(long, value_name = "SYS_ID", requires = "instance")]
    pub sn_caller_id: Option<String>,
    /// Set cmdb_ci to the configuration item named like the alert's resource.
    #[arg(long, requires = "instance")]
    pub sn_cmdb_ci: bool,
    /// An extra incident field, KEY=VALUE (repeatable), e.g. contact_type=monitoring.
    #[arg(long = "sn-field", value_name = "KEY=VALUE", requires = "instance")]
    pub sn_fields: Vec<String>,
}

/// What the ServiceNow sink shares with the rest of `ov_to_sm`'s command line.
#[derive(Debug, Clone, Copy)]
pub struct Shared {
    /// `--on-clear`, the default of `--sn-on-clear`.
    pub on_clear: OnClear,
    pub journal_updates: bool,
    pub claim: bool,
    pub retry_cap: Duration,
    pub concurrency: usize,
}

/// Config keys as the errors of [`ServiceNowConfig`] name them, and the flags that set them
/// (the more specific first).
const FLAGS: &[(&str, &str)] = &[
    ("servicenow.timeout", "--sn-timeout"),
    ("servicenow.proxy", "--sn-proxy"),
    ("servicenow.ca", "--sn-ca"),
    ("incident.short_description", "--sn-short-description"),
    ("incident.description", "--sn-description"),
    ("incident.urgency.", "--sn-urgency "),
    ("incident.urgency", "--sn-urgency"),
    ("incident.impact.", "--sn-impact "),
    ("incident.impact", "--sn-impact"),
    ("incident.fields.", "--sn-field "),
    ("incident.fields", "--sn-field"),
    ("close_code is empty", "--sn-close-code is empty"),
    ("servicenow.poll_interval", "--sn-poll-interval"),
    ("poll_interval", "--sn-poll-interval"),
    (
        "use user and password_* or client_id and client_secret_*",
        "use --sn-user or --sn-client-id",
    ),
];

/// A config error, with the flags named instead of the keys.
fn flag_names(message: &str) -> String {
    let mut m = message.to_string();
    if let Some(rest) = m.strip_prefix("instance") {
        m = format!("--servicenow{rest}");
    }
    for (key, flag) in FLAGS {
        m = m.replace(key, flag);
    }
    m
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(failure::USAGE, message)
}

/// `--sn-urgency`/`--sn-impact` as the config's table.
fn levels(flag: &str, list: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    list.iter()
        .map(|l| super::ov_to_sm::key_value(l, flag))
        .collect()
}

impl ServiceNowArgs {
    /// Whether ServiceNow was asked for.
    pub fn given(&self) -> bool {
        self.instance.is_some()
    }

    /// OAuth (a client id) or Basic (a user); neither is a usage error.
    fn oauth(&self) -> Result<bool, Failure> {
        match (&self.sn_user, &self.sn_client_id) {
            (Some(_), None) => Ok(false),
            (None, Some(_)) => Ok(true),
            // clap refuses both.
            _ => Err(usage(format!(
                "--servicenow needs credentials: --sn-user USER (password from ${PASSWORD_ENV}, --sn-password-file or the prompt) or --sn-client-id ID (secret from ${CLIENT_SECRET_ENV}, --sn-client-secret-file or the prompt)"
            ))),
        }
    }

    /// The `[appliance.servicenow]` table these flags amount to. Its one secret source
    /// names where the secret is really read from (the file, else the environment variable;
    /// [`ServiceNowArgs::secret`] adds the prompt), so that the table's checks hold.
    pub fn config(&self, shared: &Shared) -> Result<Option<ServiceNowConfig>, Failure> {
        let Some(instance) = &self.instance else {
            return Ok(None);
        };
        let oauth = self.oauth()?;
        let source = |file: &Option<PathBuf>, env: &str| match file {
            Some(f) => (None, Some(f.clone())),
            None => (Some(env.to_string()), None),
        };
        let (password_env, password_file) = if oauth {
            (None, None)
        } else {
            source(&self.sn_password_file, PASSWORD_ENV)
        };
        let (client_secret_env, client_secret_file) = if oauth {
            source(&self.sn_client_secret_file, CLIENT_SECRET_ENV)
        } else {
            (None, None)
        };
        Ok(Some(ServiceNowConfig {
            instance: instance.clone(),
            user: self.sn_user.clone(),
            password_env,
            password_file,
            password_credential: None,
            client_id: self.sn_client_id.clone(),
            client_secret_env,
            client_secret_file,
            client_secret_credential: None,
            ca: self.sn_ca.clone(),
            insecure: self.sn_insecure,
            proxy: self.sn_proxy.clone(),
            timeout: self.sn_timeout.clone().map(DurationValue::Text),
            // `--retry-cap` and `--keep-alive` are the whole command's: set below and by
            // the appliance.
            retry_cap: None,
            concurrency: shared.concurrency.max(1),
            on_clear: self.sn_on_clear.unwrap_or(shared.on_clear),
            close_code: self.sn_close_code.clone(),
            close_notes: self.sn_close_notes.clone(),
            mode: Mode::Incident,
            event: None,
            correlate: match self.sn_correlate.as_deref() {
                Some("resource") => Correlate::Resource,
                _ => Correlate::Alert,
            },
            clear_alerts: self.sn_clear_alerts,
            poll_interval: self.sn_poll_interval.clone().map(DurationValue::Text),
            journal_updates: shared.journal_updates,
            claim: shared.claim,
            keep_alive: None,
            note_prefix: None,
            incident: IncidentConfig {
                short_description: self.sn_short_description.clone(),
                description: self.sn_description.clone(),
                urgency: levels("--sn-urgency", &self.sn_urgency)?,
                impact: levels("--sn-impact", &self.sn_impact)?,
                category: self.sn_category.clone(),
                subcategory: self.sn_subcategory.clone(),
                assignment_group: self.sn_assignment_group.clone(),
                caller_id: self.sn_caller_id.clone(),
                cmdb_ci: self.sn_cmdb_ci,
                fields: self
                    .sn_fields
                    .iter()
                    .map(|f| super::ov_to_sm::key_value(f, "--sn-field"))
                    .collect::<Result<_, _>>()?,
            },
        }))
    }

    /// Where the password (Basic) or the client secret (OAuth) comes from: the file, the
    /// environment, the prompt on a terminal. Never a flag's value.
    pub fn secret(&self) -> Result<Password, Failure> {
        Ok(if self.oauth()? {
            Password::from_command_line(
                ("--sn-client-secret", None),
                self.sn_client_secret_file.as_deref(),
                CLIENT_SECRET_ENV,
                (
                    "ServiceNow OAuth client secret: ",
                    "$SCMB_SN_CLIENT_SECRET or --sn-client-secret-file",
                ),
                "no ServiceNow client secret: set $SCMB_SN_CLIENT_SECRET, give --sn-client-secret-file FILE, or run on a terminal to be asked",
            )
        } else {
            Password::from_command_line(
                ("--sn-password", None),
                self.sn_password_file.as_deref(),
                PASSWORD_ENV,
                (
                    "ServiceNow password: ",
                    "$SCMB_SN_PASSWORD or --sn-password-file",
                ),
                "no ServiceNow password: set $SCMB_SN_PASSWORD, give --sn-password-file FILE, or run on a terminal to be asked",
            )
        })
    }

    /// The ServiceNow sink's settings (its secret read now, its CA file loaded), or `None`
    /// without `--servicenow`. Every value is checked by the config table's own checks first,
    /// so a mistake is refused before the secret is asked for.
    pub fn settings(&self, shared: &Shared) -> Result<Option<ServiceNowSettings>, Failure> {
        let Some(config) = self.config(shared)? else {
            return Ok(None);
        };
        config.check().map_err(|m| usage(flag_names(&m)))?;
        if let Some(p) = &self.sn_proxy {
            if reqwest::Url::parse(p.expose()).is_ok_and(|u| u.password().is_some()) {
                tracing::warn!("--sn-proxy puts the proxy's password where `ps` shows it: prefer $HTTPS_PROXY (with --sn-proxy left out)");
            }
        }
        if self.sn_insecure {
            tracing::warn!("--sn-insecure: the ServiceNow instance's certificate is NOT verified; anyone on the path can read the credentials: give --sn-ca FILE instead");
        }
        let secret = self.secret()?.read().map_err(usage)?;
        let mut s = config.settings(secret).map_err(|m| usage(flag_names(&m)))?;
        s.retry_cap = shared.retry_cap;
        Ok(Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::ov_to_sm::OvToSmCli;
    use crate::sinks::http;
    use crate::sinks::servicenow::{Auth, DEFAULT_CLOSE_CODE, NOTE_PREFIX};
    use clap::Parser;

    fn parse(extra: &[&str]) -> OvToSmCli {
        let mut a = vec!["ov_to_sm", "-a", "ov.example.com"];
        a.extend_from_slice(extra);
        OvToSmCli::try_parse_from(a).expect("parse")
    }

    fn shared(cli: &OvToSmCli) -> Shared {
        cli.shared()
    }

    fn settings(extra: &[&str]) -> Result<Option<ServiceNowSettings>, Failure> {
        let cli = parse(extra);
        cli.servicenow.settings(&shared(&cli))
    }

    fn error(extra: &[&str]) -> String {
        let e = settings(extra).map(|_| ()).expect_err("refused");
        assert_eq!(e.code, failure::USAGE, "{}", e.message);
        assert!(!e.message.contains('\n'), "one line: {}", e.message);
        e.message
    }

    /// A file holding `secret`, for the tests below (no environment variable, which other
    /// tests of this binary could see).
    fn secret_file(secret: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "scmb-sn-flags-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("secret");
        std::fs::write(&f, format!("{secret}\n")).expect("write");
        f
    }

    #[test]
    fn the_flags_become_the_same_settings_as_the_config_table() {
        let pw = secret_file("s3cret");
        let pw = pw.to_str().expect("utf8");
        let s = settings(&[
            "--servicenow",
            "acme",
            "--sn-user",
            "svc-oneview",
            "--sn-password-file",
            pw,
            "--sn-timeout",
            "5s",
            "--sn-proxy",
            "http://proxy:3128",
            "--sn-on-clear",
            "close",
            "--sn-close-code",
            "Solution provided",
            "--sn-urgency",
            "critical=2,Warning=3",
            "--sn-category",
            "",
            "--sn-assignment-group",
            "a715cd759f2002002920bde8132e7018",
            "--sn-cmdb-ci",
            "--sn-field",
            "contact_type=monitoring",
            "--journal-updates",
            "--claim",
            "--retry-cap",
            "2m",
        ])
        .expect("settings")
        .expect("servicenow");
        assert_eq!(s.client.instance, "https://acme.service-now.com");
        assert_eq!(
            s.client.auth,
            Auth::Basic {
                user: "svc-oneview".into(),
                password: Secret::new("s3cret")
            }
        );
        assert_eq!(s.client.http.timeout, Duration::from_secs(5));
        assert_eq!(
            s.client.http.proxy,
            http::Proxy::Url(Secret::new("http://proxy:3128"))
        );
        assert!(matches!(s.client.http.trust, http::Trust::System));
        assert_eq!(s.on_clear, OnClear::Close);
        assert_eq!(s.close_code, "Solution provided");
        assert_eq!(s.close_notes, None);
        assert_eq!(s.note_prefix, NOTE_PREFIX);
        assert_eq!(s.retry_cap, Duration::from_secs(120));
        assert!(s.journal_updates && s.claim);
        let mut urgency = s.template.urgency.clone();
        urgency.sort();
        assert_eq!(
            urgency,
            vec![
                ("Critical".to_string(), "2".to_string()),
                ("Warning".to_string(), "3".to_string())
            ]
        );
        assert_eq!(s.template.category, None);
        assert!(s.template.cmdb_ci);
        let inc = s
            .template
            .incident(&serde_json::json!({"severity": "Critical"}), "east");
        assert_eq!(inc["urgency"], "2");
        assert_eq!(inc["contact_type"], "monitoring");
        assert_eq!(inc["assignment_group"], "a715cd759f2002002920bde8132e7018");

        // The defaults are the config table's; --sn-on-clear follows --on-clear.
        let d = settings(&[
            "--servicenow",
            "https://sn.example.com:8443/",
            "--sn-client-id",
            "scmb",
            "--sn-client-secret-file",
            secret_file("oauth-secret").to_str().expect("utf8"),
            "--on-clear",
            "journal",
        ])
        .expect("settings")
        .expect("servicenow");
        assert_eq!(d.client.instance, "https://sn.example.com:8443");
        assert_eq!(
            d.client.auth,
            Auth::OAuth {
                client_id: "scmb".into(),
                client_secret: Secret::new("oauth-secret")
            }
        );
        assert_eq!(d.on_clear, OnClear::Journal);
        assert_eq!(d.close_code, DEFAULT_CLOSE_CODE);
        assert_eq!(d.client.http.timeout, http::DEFAULT_TIMEOUT);
        assert_eq!(d.client.http.proxy, http::Proxy::Environment);
        assert_eq!(d.retry_cap, Duration::from_secs(30));
        assert!(!d.journal_updates && !d.claim && !d.template.cmdb_ci);
        assert_eq!(d.template.category.as_deref(), Some("hardware"));

        let insecure = settings(&[
            "--servicenow",
            "acme",
            "--sn-user",
            "u",
            "--sn-password-file",
            pw,
            "--sn-insecure",
            "--sn-proxy",
            "none",
        ])
        .expect("settings")
        .expect("servicenow");
        assert!(matches!(insecure.client.http.trust, http::Trust::Insecure));
        assert_eq!(insecure.client.http.proxy, http::Proxy::Direct);

        // No --servicenow: no sink.
        assert!(settings(&[]).expect("none").is_none());
    }

    #[test]
    fn mistakes_are_the_config_tables_with_the_flag_named() {
        let pw = secret_file("pw");
        let pw = pw.to_str().expect("utf8");
        let base = [
            "--servicenow",
            "acme",
            "--sn-user",
            "u",
            "--sn-password-file",
            pw,
        ];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            error(&a)
        };
        for (extra, want) in [
            (&["--sn-timeout", "soon"][..], "--sn-timeout \"soon\""),
            (
                &["--sn-timeout", "0s"][..],
                "--sn-timeout must be above zero",
            ),
            (&["--sn-proxy", "::"][..], "--sn-proxy is not a URL"),
            (
                &["--sn-urgency", "Critcal=1"][..],
                "--sn-urgency: \"Critcal\" is not a OneView severity: use Critical, Warning",
            ),
            (
                &["--sn-impact", "Critical=high"][..],
                "--sn-impact Critical = \"high\"",
            ),
            (
                &["--sn-urgency", "Critical"][..],
                "--sn-urgency \"Critical\": expected KEY=VALUE",
            ),
            (
                &["--sn-field", "sys_id=x"][..],
                "--sn-field: sys_id is set by scmb",
            ),
            (&["--sn-field", "correlation_id=x"][..], "correlation_id"),
            (
                &["--sn-short-description", "{sevrity}"][..],
                "--sn-short-description",
            ),
            (&["--sn-close-code", " "][..], "--sn-close-code is empty"),
            (&["--sn-ca", "/nonexistent/ca.pem"][..], "--sn-ca: "),
        ] {
            let e = with(extra);
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = error(&[
            "--servicenow",
            "https://admin:hunter2@acme.service-now.com",
            "--sn-user",
            "u",
            "--sn-password-file",
            pw,
        ]);
        assert!(
            e.starts_with("--servicenow ") && e.contains("--sn-user") && !e.contains("hunter2"),
            "{e}"
        );
        let e = error(&["--servicenow", "acme"]);
        assert!(
            e.contains("--sn-user") && e.contains("--sn-client-id"),
            "{e}"
        );
        let e = error(&[
            "--servicenow",
            "acme",
            "--sn-user",
            "u",
            "--sn-password-file",
            "/nonexistent/pw",
        ]);
        assert!(e.contains("/nonexistent/pw"), "{e}");

        // clap refuses what cannot go together, naming the flags and the choices.
        let refused = |args: &[&str]| {
            let mut a = vec!["ov_to_sm", "-a", "h"];
            a.extend_from_slice(args);
            OvToSmCli::try_parse_from(a)
                .expect_err("refused")
                .to_string()
        };
        let e = refused(&["--servicenow", "acme", "--sn-on-clear", "resolv"]);
        assert!(
            e.contains("--sn-on-clear") && e.contains("none, journal, resolve or close"),
            "{e}"
        );
        assert!(refused(&["--sn-user", "u"]).contains("--servicenow"));
        assert!(
            refused(&["--servicenow", "a", "--sn-user", "u", "--sn-client-id", "c"])
                .contains("--sn-client-id")
        );
        assert!(
            refused(&["--servicenow", "a", "--sn-ca", "x", "--sn-insecure"])
                .contains("--sn-insecure")
        );
        let e = refused(&[
            "--servicenow",
            "a",
            "--sn-client-id",
            "c",
            "--sn-password-file",
            "x",
        ]);
        assert!(
            e.contains("--sn-password-file") && e.contains("--sn-client-id"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_secret_is_named_with_where_to_give_it() {
        // No file given, no terminal (tests run without one), and a variable no test sets.
        let cli = parse(&["--servicenow", "acme", "--sn-client-id", "c"]);
        if std::env::var_os(CLIENT_SECRET_ENV).is_none()
            && !std::io::IsTerminal::is_terminal(&std::io::stdin())
        {
            let e = cli
                .servicenow
                .settings(&shared(&cli))
                .map(|_| ())
                .expect_err("no secret");
            assert_eq!(e.code, failure::USAGE);
            assert!(
                e.message.contains("$SCMB_SN_CLIENT_SECRET")
                    && e.message.contains("--sn-client-secret-file"),
                "{}",
                e.message
            );
        }
    }
}
