//! `[appliance.alertmanager]`: the Alertmanagers an appliance's alerts go to, and the sink's
//! settings they amount to. Checked without reading anything when the file loads
//! ([`AlertmanagerConfig::check`]); the password or bearer token is read with the appliance's
//! other secrets ([`AlertmanagerConfig::read_secret`]) and kept only in a [`Secret`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{valid_label_name, AlertmanagerSettings, Auth, DEFAULT_GENERATOR_URL, LABELS, NAME};
use crate::duration::DurationValue;
use crate::password::SecretRef;
use crate::sinks::http::{self, HttpSettings};
use scmb_oneview::Secret;

/// The default `resend_interval`: well below Alertmanager's default `resolve_timeout` (5m).
pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);

/// The shortest and the longest `resend_interval` accepted.
pub const RESEND_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

/// `[appliance.alertmanager]`: send every admitted alert to Prometheus Alertmanager (API v2)
/// as a firing alert, re-send it while it is active, and send it resolved when it clears.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The Alertmanagers' base URLs, e.g. `["http://am1.example.com:9093"]`; alerts are posted
    /// to `URL/api/v2/alerts`. Several URLs are the members of one HA cluster: every alert goes
    /// to each (as Prometheus does), and a message is done once one of them took it (the
    /// others get it at the next re-send). At least one.
    pub urls: Vec<String>,
    /// How often active alerts are sent again, e.g. `"1m"`: Alertmanager resolves an alert
    /// that is not re-sent within its `resolve_timeout` (default 5m), so keep this well below
    /// it (`scmb check` compares them). From 1s to 1h. Default `"1m"`.
    pub resend_interval: Option<DurationValue>,
    /// Labels added to every alert, e.g. `{ team = "infra" }` (names as Prometheus allows
    /// them; the sink's own labels cannot be overridden).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The alert's `generatorURL` (its link back); `{address}`, `{uri}` and `{appliance}`
    /// are replaced, `""` sends none. Default `https://{address}/#/activity/r{uri}` (the
    /// alert in the appliance's Activity view).
    pub generator_url: Option<String>,
    /// HTTP Basic authentication (a reverse proxy before Alertmanager): the user. Needs one of
    /// `password_env`, `password_file`, `password_credential`.
    pub username: Option<String>,
    /// The Basic password: the name of an environment variable holding it.
    pub password_env: Option<String>,
    /// The Basic password: a file whose first line is it (keep it `chmod 600`).
    pub password_file: Option<PathBuf>,
    /// The Basic password: a systemd credential name, read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub password_credential: Option<String>,
    /// A bearer token instead of Basic: the name of an environment variable holding it.
    pub bearer_token_env: Option<String>,
    /// The bearer token: a file whose first line is it (keep it `chmod 600`).
    pub bearer_token_file: Option<PathBuf>,
    /// The bearer token: a systemd credential name, read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub bearer_token_credential: Option<String>,
    /// Verify the Alertmanagers' certificates against this CA file instead of the system's CA
    /// certificates.
    pub ca: Option<PathBuf>,
    /// DANGEROUS: do not verify the Alertmanagers' certificates (warned about at every
    /// start). Default false.
    #[serde(default)]
    pub insecure: bool,
    /// The proxy for every request, e.g. `"http://proxy.example.com:3128"` (a user and
    /// password in it are never logged), or `"none"` to go direct. Default: `$HTTPS_PROXY` /
    /// `$HTTP_PROXY` / `$ALL_PROXY` with `$NO_PROXY`'s exceptions, when set.
    #[serde(default, deserialize_with = "secret")]
    pub proxy: Option<Secret>,
    /// How long one request may take, answer included, e.g. `"10s"`. Default `"30s"`.
    pub timeout: Option<DurationValue>,
    /// Longest pause between retries of a failing post, e.g. `"30s"` (a `Retry-After` is
    /// honoured even when longer, up to 10 minutes). Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
    /// Alerts sent in parallel (one alert's events still one after another), from 1 to
    /// [`MAX_CONCURRENCY`]. The appliance runs as many lanes as the largest `concurrency` of
    /// its sinks. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// The most alerts sent in parallel.
pub const MAX_CONCURRENCY: usize = 1024;

fn default_concurrency() -> usize {
    16
}

/// A string that must never print: straight into a [`Secret`].
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

impl AlertmanagerConfig {
    fn password_ref(&self) -> Option<SecretRef> {
        let r = SecretRef {
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            password_credential: self.password_credential.clone(),
        };
        (r != SecretRef::default()).then_some(r)
    }

    fn token_ref(&self) -> Option<SecretRef> {
        let r = SecretRef {
            password_env: self.bearer_token_env.clone(),
            password_file: self.bearer_token_file.clone(),
            password_credential: self.bearer_token_credential.clone(),
        };
        (r != SecretRef::default()).then_some(r)
    }

    /// Checks the table without reading anything: the URLs, the labels, one kind of
    /// authentication with one source, the durations, the proxy.
    pub fn check(&self) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err(
                "alertmanager.urls is empty: give at least one, like [\"http://alertmanager.example.com:9093\"]"
                    .into(),
            );
        }
        for u in &self.urls {
            let parsed = reqwest::Url::parse(u.trim())
                .map_err(|e| format!("alertmanager.urls: {u:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
                return Err(format!(
                    "alertmanager.urls: {u:?}: give an http:// or https:// URL like \"http://alertmanager.example.com:9093\""
                ));
            }
        }
        for name in self.labels.keys() {
            if !valid_label_name(name) {
                return Err(format!(
                    "alertmanager.labels.{name}: not a Prometheus label name (letters, digits and _, not starting with a digit)"
                ));
            }
            if LABELS.contains(&name.as_str()) {
                return Err(format!(
                    "alertmanager.labels.{name}: the sink sets this label itself ({})",
                    LABELS.join(", ")
                ));
            }
        }
        match (&self.username, self.password_ref(), self.token_ref()) {
            (_, Some(_), Some(_)) | (Some(_), _, Some(_)) => {
                return Err(
                    "alertmanager: give username with a password, or a bearer token, not both"
                        .into(),
                )
            }
            (Some(u), None, None) => {
                return Err(format!(
                    "alertmanager.username = {u:?} needs a password: set password_env, password_file or password_credential"
                ))
            }
            (None, Some(_), None) => {
                return Err("alertmanager: a password needs a username".into());
            }
            (Some(u), Some(p), None) => {
                if u.trim().is_empty() {
                    return Err("alertmanager.username is empty".into());
                }
                p.check().map_err(|m| format!("alertmanager: {m}"))?;
            }
            (None, None, Some(t)) => {
                t.check()
                    .map_err(|m| format!("alertmanager: {}", m.replace("password_", "bearer_token_")))?;
            }
            (None, None, None) => {}
        }
        if self.ca.is_some() && self.insecure {
            return Err("alertmanager: give ca or insecure = true, not both".into());
        }
        http::parse_proxy(NAME, self.proxy.as_ref().map(Secret::expose))?;
        http::check_timeout(NAME, self.timeout.as_ref())?;
        self.retry_cap()?;
        self.resend_interval()?;
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "alertmanager.concurrency = {}: give 1 to {MAX_CONCURRENCY} alerts sent in parallel",
                self.concurrency
            ));
        }
        Ok(())
    }

    /// Reads the password or bearer token now, if the table has one. Errors name the
    /// setting and the source, never the secret.
    pub fn read_secret(&self) -> Result<Option<Secret>, String> {
        if let Some(p) = self.password_ref() {
            return p.read().map(Some).map_err(|m| format!("alertmanager: {m}"));
        }
        if let Some(t) = self.token_ref() {
            return t.read().map(Some).map_err(|m| {
                format!(
                    "alertmanager: {}",
                    m.replace("password_", "bearer_token_")
                        .replace("password", "bearer token")
                )
            });
        }
        Ok(None)
    }

    /// How often active alerts are sent again.
    pub fn resend_interval(&self) -> Result<Duration, String> {
        let d = match &self.resend_interval {
            Some(v) => v.resolve("alertmanager.resend_interval")?,
            None => DEFAULT_RESEND,
        };
        let (lo, hi) = RESEND_RANGE;
        if d < lo || d > hi {
            return Err(format!(
                "alertmanager.resend_interval = {}: give 1s to 1h, well below Alertmanager's resolve_timeout (5m unless changed)",
                humantime::format_duration(d)
            ));
        }
        Ok(d)
    }

    /// Longest pause between retries.
    pub fn retry_cap(&self) -> Result<Duration, String> {
        let d = match &self.retry_cap {
            Some(v) => v.resolve("alertmanager.retry_cap")?,
            None => Duration::from_secs(30),
        };
        if d.is_zero() {
            return Err("alertmanager.retry_cap must be above zero, e.g. \"30s\"".into());
        }
        Ok(d)
    }

    /// The sink's settings for the appliance `appliance` at `address`, with its secret read
    /// (`secret`, from [`AlertmanagerConfig::read_secret`]) and its CA file, if any.
    pub fn settings(
        &self,
        secret: Option<Secret>,
        appliance: &str,
        address: &str,
    ) -> Result<AlertmanagerSettings, String> {
        let auth = match (&self.username, secret) {
            (Some(user), Some(password)) => Auth::Basic {
                user: user.trim().to_string(),
                password,
            },
            (None, Some(token)) => Auth::Bearer(token),
            (_, None) => Auth::None,
        };
        Ok(AlertmanagerSettings {
            urls: self
                .urls
                .iter()
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .collect(),
            http: HttpSettings::from_keys(
                NAME,
                self.ca.as_deref(),
                self.insecure,
                self.proxy.as_ref().map(Secret::expose),
                self.timeout.as_ref(),
            )?,
            auth,
            resend_interval: self.resend_interval()?,
            retry_cap: self.retry_cap()?,
            labels: self.labels.clone(),
            appliance: appliance.to_string(),
            address: address.to_string(),
            generator_url: match self.generator_url.as_deref().map(str::trim) {
                None => Some(DEFAULT_GENERATOR_URL.to_string()),
                Some("") => None,
                Some(s) => Some(s.to_string()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, ConfigError};
    use crate::sinks::alertmanager::Auth;

    fn parse(am: &str) -> Result<Config, ConfigError> {
        std::env::set_var("SCMB_TEST_AM_OV", "admin123");
        let text = format!(
            "[[appliance]]\nname = \"east\"\naddress = \"oneview-east.example.com\"\npassword_env = \"SCMB_TEST_AM_OV\"\n[appliance.alertmanager]\n{am}"
        );
        Config::parse(&text, Path::new("scmb.toml"))
    }

    fn err(am: &str) -> String {
        parse(am).expect_err(am).to_string()
    }

    #[test]
    fn a_table_with_urls_alone_is_a_sink_with_the_documented_defaults() {
        let c = parse("urls = [\"http://127.0.0.1:9093/\"]\n").expect("parse");
        let s = c.appliances[0]
            .settings(Path::new("/var/lib/scmb"))
            .expect("settings");
        assert!(
            s.sinks.tickets(),
            "catches up on active alerts at the first start"
        );
        let am = s.sinks.alertmanager.expect("alertmanager");
        assert_eq!(am.urls, vec!["http://127.0.0.1:9093".to_string()]);
        assert_eq!(am.resend_interval, Duration::from_secs(60));
        assert_eq!(am.retry_cap, Duration::from_secs(30));
        assert_eq!(am.http.timeout, Duration::from_secs(30));
        assert!(matches!(am.auth, Auth::None));
        assert_eq!(
            am.generator_url.as_deref(),
            Some("https://{address}/#/activity/r{uri}")
        );
        assert_eq!(am.appliance, "east");
        assert_eq!(s.lanes, 16);
    }

    #[test]
    fn every_key_is_read_and_secrets_never_print() {
        std::env::set_var("SCMB_TEST_AM_PW", "s3cret-pw");
        let c = parse(
            r#"urls = ["https://am1:9093", "https://am2:9093"]
resend_interval = "20s"
labels = { team = "infra", env = "prod" }
generator_url = ""
username = "scmb"
password_env = "SCMB_TEST_AM_PW"
proxy = "none"
timeout = "5s"
retry_cap = "2s"
concurrency = 4
"#,
        )
        .expect("parse");
        let s = c.appliances[0].settings(Path::new("/s")).expect("settings");
        let am = s.sinks.alertmanager.expect("alertmanager");
        assert_eq!(am.urls.len(), 2);
        assert_eq!(am.resend_interval, Duration::from_secs(20));
        assert_eq!(am.labels.get("team").map(String::as_str), Some("infra"));
        assert_eq!(am.generator_url, None);
        match &am.auth {
            Auth::Basic { user, password } => {
                assert_eq!((user.as_str(), password.expose()), ("scmb", "s3cret-pw"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(am.http.timeout, Duration::from_secs(5));
        assert_eq!(am.retry_cap, Duration::from_secs(2));
        assert_eq!(s.lanes, 4);
        assert!(!format!("{am:?}").contains("s3cret"));

        std::env::set_var("SCMB_TEST_AM_TOKEN", "tok-123");
        let c = parse("urls = [\"http://am:9093\"]\nbearer_token_env = \"SCMB_TEST_AM_TOKEN\"\n")
            .expect("parse");
        let am = c.appliances[0]
            .settings(Path::new("/s"))
            .expect("settings")
            .sinks
            .alertmanager
            .expect("am");
        assert!(matches!(&am.auth, Auth::Bearer(t) if t.expose() == "tok-123"));
    }

    #[test]
    fn the_example_is_valid_and_becomes_its_settings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/alertmanager.toml");
        let c = Config::load(&path).expect("examples/alertmanager.toml must stay valid");
        let table = c.appliances[0].alertmanager.as_ref().expect("table");
        let am = table
            .settings(None, "dc1", "oneview-dc1.example.com")
            .expect("settings");
        assert_eq!(am.urls.len(), 2);
        assert_eq!(am.resend_interval, Duration::from_secs(60));
        assert_eq!(am.labels.len(), 2);
    }

    #[test]
    fn mistakes_in_the_table_are_refused_naming_the_setting() {
        for (am, needle) in [
            ("urls = []\n", "alertmanager.urls is empty"),
            ("urls = [\"am:9093\"]\n", "alertmanager.urls"),
            ("urls = [\"ftp://am\"]\n", "alertmanager.urls"),
            ("urls = [\"http://am\"]\nresend = \"1m\"\n", "resend"),
            (
                "urls = [\"http://am\"]\nresend_interval = \"0s\"\n",
                "alertmanager.resend_interval",
            ),
            (
                "urls = [\"http://am\"]\nresend_interval = \"2h\"\n",
                "alertmanager.resend_interval",
            ),
            (
                "urls = [\"http://am\"]\nlabels = { \"bad-name\" = \"x\" }\n",
                "alertmanager.labels.bad-name",
            ),
            (
                "urls = [\"http://am\"]\nlabels = { severity = \"x\" }\n",
                "alertmanager.labels.severity",
            ),
            ("urls = [\"http://am\"]\nusername = \"u\"\n", "needs a password"),
            (
                "urls = [\"http://am\"]\npassword_env = \"X\"\n",
                "needs a username",
            ),
            (
                "urls = [\"http://am\"]\nusername = \"u\"\npassword_env = \"X\"\nbearer_token_env = \"Y\"\n",
                "not both",
            ),
            (
                "urls = [\"http://am\"]\nbearer_token_env = \"X\"\nbearer_token_file = \"/t\"\n",
                "bearer_token_",
            ),
            (
                "urls = [\"http://am\"]\nca = \"/ca\"\ninsecure = true\n",
                "not both",
            ),
            ("urls = [\"http://am\"]\nconcurrency = 0\n", "concurrency"),
        ] {
            let e = err(am);
            assert!(e.contains(needle), "{am:?}: {e}");
        }
    }
}
