//! `[appliance.pagerduty]`: where an appliance's alerts page, and the sink's settings they
//! amount to. Checked without reading anything when the file loads ([`PagerDutyConfig::check`]);
//! the routing keys are read with the appliance's other secrets
//! ([`PagerDutyConfig::routing_keys`]), and never kept anywhere but in a [`Secret`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{
    well_formed, EventSettings, PagerDutySettings, RoutingKeys, DEFAULT_ALERT_LINK, DEFAULT_CLIENT,
    DEFAULT_CLIENT_URL, DEFAULT_NOTE, DEFAULT_SEVERITIES, DEFAULT_URL, NAME, PD_SEVERITIES,
};
use crate::duration::DurationValue;
use crate::password::SecretRef;
use crate::sinks::http::{self, HttpSettings};
use scmb_model::filter::SEVERITIES;
use scmb_oneview::Secret;

/// `[appliance.pagerduty]`: page PagerDuty (Events API v2) for every admitted alert, note the
/// dedup key in the alert, and resolve the incident when the alert clears.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The Events API's base URL; events go to `URL/v2/enqueue`. Default
    /// `https://events.pagerduty.com` (EU service region: `https://events.eu.pagerduty.com`).
    pub url: Option<String>,
    /// The integration key ("routing key", 32 characters) of the PagerDuty service every alert
    /// goes to, written in this file. Prefer `routing_key_file`, `routing_key_env` or
    /// `routing_key_credential`: at most one of the four. Needed unless `routing_keys` names
    /// every severity the filter admits.
    #[serde(default, deserialize_with = "secret")]
    pub routing_key: Option<Secret>,
    /// The routing key: the name of an environment variable holding it.
    pub routing_key_env: Option<String>,
    /// The routing key: a file whose first line is it (keep it `chmod 600`).
    pub routing_key_file: Option<PathBuf>,
    /// The routing key: a systemd credential name (`LoadCredential=NAME:PATH`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub routing_key_credential: Option<String>,
    /// Routing keys by OneView severity, over the one above, e.g.
    /// `{ Critical = { routing_key_env = "PD_KEY_CRITICAL" } }`: each entry takes exactly one
    /// of `routing_key`, `routing_key_env`, `routing_key_file`, `routing_key_credential`.
    #[serde(default)]
    pub routing_keys: BTreeMap<String, RoutingKeyConfig>,
    /// PagerDuty severity (`critical`, `error`, `warning`, `info`) by OneView severity, over
    /// the defaults: Critical = critical, Warning = warning, OK, Unknown and Disabled = info.
    #[serde(default)]
    pub severities: BTreeMap<String, String>,
    /// The note written into a paged alert, once; `{dedup_key}` (required) is replaced.
    /// Default `Paged on PagerDuty (dedup key {dedup_key})`.
    pub note: Option<String>,
    /// Resolve the incident when its alert is cleared or deleted (also when that happened
    /// while scmb was stopped). Default true.
    #[serde(default = "yes")]
    pub resolve_on_clear: bool,
    /// The link from each event back to its alert; `{address}`, `{uri}` and `{appliance}` are
    /// replaced, `""` sends none. Default `https://{address}/#/activity/r{uri}` (the alert in
    /// the appliance's Activity view).
    pub alert_link: Option<String>,
    /// The event's `client` (shown by PagerDuty as the monitoring tool); `{appliance}` and
    /// `{address}` are replaced. Default `HPE OneView ({appliance})`.
    pub client: Option<String>,
    /// The event's `client_url`; `{address}` and `{appliance}` are replaced, `""` sends none.
    /// Default `https://{address}/` (the appliance's web UI).
    pub client_url: Option<String>,
    /// Verify the Events API's certificate against this CA file instead of the system's CA
    /// certificates (a TLS-inspecting proxy's CA, say).
    pub ca: Option<PathBuf>,
    /// DANGEROUS: do not verify the Events API's certificate (warned about at every start).
    /// Default false.
    #[serde(default)]
    pub insecure: bool,
    /// The proxy for every request, e.g. `"http://proxy.example.com:3128"` (a user and
    /// password in it are never logged), or `"none"` to go direct. Default: `$HTTPS_PROXY` /
    /// `$HTTP_PROXY` / `$ALL_PROXY` with `$NO_PROXY`'s exceptions, when set.
    #[serde(default, deserialize_with = "secret")]
    pub proxy: Option<Secret>,
    /// How long one request may take, answer included, e.g. `"10s"`. A trigger without an
    /// answer in time is sent again (its dedup key makes that safe). Default `"30s"`.
    pub timeout: Option<DurationValue>,
    /// Longest pause between retries of a failing call, e.g. `"30s"` (PagerDuty's
    /// `Retry-After` is honoured even when longer, up to 10 minutes). Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
    /// Alerts paged in parallel (one alert's events still one after another), from 1 to
    /// [`MAX_CONCURRENCY`]. The appliance runs as many lanes as the largest `concurrency` of
    /// its sinks. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// The most alerts paged in parallel: PagerDuty takes about 120 events a minute per
/// integration, so more lanes only hold more calls waiting on its 429s.
pub const MAX_CONCURRENCY: usize = 1024;

fn default_concurrency() -> usize {
    16
}

/// One entry of `[appliance.pagerduty.routing_keys]`: exactly one of the four.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingKeyConfig {
    /// The routing key itself, written in this file (prefer the other three).
    #[serde(default, deserialize_with = "secret")]
    pub routing_key: Option<Secret>,
    /// The name of an environment variable holding it.
    pub routing_key_env: Option<String>,
    /// A file whose first line is it (keep it `chmod 600`).
    pub routing_key_file: Option<PathBuf>,
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub routing_key_credential: Option<String>,
}

fn yes() -> bool {
    true
}

/// A string that must never print: straight into a [`Secret`].
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

/// Where one routing key comes from.
enum KeySource {
    Literal(Secret),
    Ref(SecretRef),
}

/// The source given by the four keys of a table (`setting` names the table in errors):
/// none, one, or an error for more than one.
fn source(
    setting: &str,
    literal: &Option<Secret>,
    env: &Option<String>,
    file: &Option<PathBuf>,
    credential: &Option<String>,
) -> Result<Option<KeySource>, String> {
    let given = [
        literal.is_some(),
        env.is_some(),
        file.is_some(),
        credential.is_some(),
    ]
    .into_iter()
    .filter(|g| *g)
    .count();
    if given > 1 {
        return Err(format!(
            "{setting}: give only one of routing_key, routing_key_env, routing_key_file and routing_key_credential"
        ));
    }
    if let Some(k) = literal {
        return Ok(Some(KeySource::Literal(k.clone())));
    }
    if given == 0 {
        return Ok(None);
    }
    Ok(Some(KeySource::Ref(SecretRef {
        password_env: env.clone(),
        password_file: file.clone(),
        password_credential: credential.clone(),
    })))
}

impl KeySource {
    /// Reads the key now and checks its form; errors name the setting, never the key.
    fn read(&self, setting: &str) -> Result<Secret, String> {
        let key = match self {
            KeySource::Literal(k) => Secret::new(k.expose().trim()),
            KeySource::Ref(r) => r.read().map_err(|e| {
                format!(
                    "{setting}: {}",
                    e.replace("password_", "routing_key_")
                        .replace("password", "routing key")
                )
            })?,
        };
        let key = Secret::new(key.expose().trim());
        if !well_formed(key.expose()) {
            let n = key.expose().chars().count();
            return Err(format!(
                "{setting}: the routing key read is not a PagerDuty integration key ({n} characters; it must be 32 letters and digits)"
            ));
        }
        Ok(key)
    }
}

/// OneView's spelling of a severity, compared without case.
fn canonical_severity(s: &str) -> Option<&'static str> {
    SEVERITIES
        .iter()
        .copied()
        .find(|k| k.eq_ignore_ascii_case(s))
}

impl PagerDutyConfig {
    fn default_source(&self) -> Result<Option<KeySource>, String> {
        source(
            "pagerduty",
            &self.routing_key,
            &self.routing_key_env,
            &self.routing_key_file,
            &self.routing_key_credential,
        )
    }

    /// The `routing_keys` entries with OneView's spelling of their severity, and their sources.
    fn severity_sources(&self) -> Result<Vec<(&'static str, KeySource)>, String> {
        let mut out: Vec<(&'static str, KeySource)> = Vec::new();
        for (sev, k) in &self.routing_keys {
            let setting = format!("pagerduty.routing_keys.{sev}");
            let canon = canonical_severity(sev).ok_or_else(|| {
                format!(
                    "{setting}: {sev:?} is not a OneView severity: use {}",
                    SEVERITIES.join(", ")
                )
            })?;
            if out.iter().any(|(c, _)| *c == canon) {
                return Err(format!("{setting}: {canon} is given twice"));
            }
            let src = source(
                &setting,
                &k.routing_key,
                &k.routing_key_env,
                &k.routing_key_file,
                &k.routing_key_credential,
            )?
            .ok_or_else(|| {
                format!("{setting}: no key: set routing_key_env, routing_key_file, routing_key_credential or routing_key")
            })?;
            out.push((canon, src));
        }
        Ok(out)
    }

    /// Checks the table without reading anything: one source per key, known severities, a
    /// key for every severity the filter admits (`admitted`: the filter's severities, empty
    /// meaning its default, Critical), the note, the URL, the durations, the proxy.
    pub fn check(&self, admitted: &[String]) -> Result<(), String> {
        let default = self.default_source()?;
        let by_severity = self.severity_sources()?;
        if default.is_none() {
            if by_severity.is_empty() {
                return Err("pagerduty: no routing key: set routing_key_file, routing_key_env, routing_key_credential or routing_key (or routing_keys per severity)".into());
            }
            let admitted: Vec<&str> = if admitted.is_empty() {
                vec!["Critical"]
            } else if admitted.iter().any(|s| s == "*") {
                SEVERITIES.to_vec()
            } else {
                admitted.iter().map(String::as_str).collect()
            };
            for sev in admitted {
                if !by_severity.iter().any(|(c, _)| c.eq_ignore_ascii_case(sev)) {
                    return Err(format!(
                        "pagerduty: no routing key for {sev} alerts, which the filter admits: set routing_key (or routing_key_file, _env, _credential), or add routing_keys.{sev}"
                    ));
                }
            }
        }
        if matches!(default, Some(KeySource::Literal(_)))
            || self.routing_keys.values().any(|k| k.routing_key.is_some())
        {
            crate::telemetry::early_warn(
                "pagerduty.routing_key puts a routing key in the config file, where whoever reads the file reads it: prefer routing_key_file, routing_key_env or routing_key_credential".into(),
            );
        }
        for (sev, pd) in &self.severities {
            if canonical_severity(sev).is_none() {
                return Err(format!(
                    "pagerduty.severities.{sev}: {sev:?} is not a OneView severity: use {}",
                    SEVERITIES.join(", ")
                ));
            }
            if !PD_SEVERITIES.contains(&pd.as_str()) {
                return Err(format!(
                    "pagerduty.severities.{sev} = {pd:?}: PagerDuty's severities are {}",
                    PD_SEVERITIES.join(", ")
                ));
            }
        }
        if let Some(n) = &self.note {
            if !n.contains("{dedup_key}") {
                return Err("pagerduty.note must contain {dedup_key}: it is how a paged alert is recognised (after a lost state store, say) and never paged twice".into());
            }
        }
        if let Some(u) = &self.url {
            let parsed = reqwest::Url::parse(u.trim())
                .map_err(|e| format!("pagerduty.url {u:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
                return Err(format!(
                    "pagerduty.url {u:?}: give an https:// URL like {DEFAULT_URL}"
                ));
            }
        }
        if self.ca.is_some() && self.insecure {
            return Err("pagerduty: give ca or insecure = true, not both".into());
        }
        http::parse_proxy(NAME, self.proxy.as_ref().map(Secret::expose))?;
        http::check_timeout(NAME, self.timeout.as_ref())?;
        self.retry_cap()?;
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "pagerduty.concurrency = {}: give 1 to {MAX_CONCURRENCY} alerts paged in parallel",
                self.concurrency
            ));
        }
        Ok(())
    }

    /// Reads the routing keys now (environment, file or credential) and checks their form.
    /// Errors name the setting and the source, never a key.
    pub fn routing_keys(&self) -> Result<RoutingKeys, String> {
        let default = match self.default_source()? {
            Some(s) => Some(s.read("pagerduty.routing_key")?),
            None => None,
        };
        let mut by_severity = BTreeMap::new();
        for (sev, src) in self.severity_sources()? {
            by_severity.insert(
                sev.to_string(),
                src.read(&format!("pagerduty.routing_keys.{sev}"))?,
            );
        }
        Ok(RoutingKeys {
            default,
            by_severity,
        })
    }

    /// Longest pause between retries.
    pub fn retry_cap(&self) -> Result<std::time::Duration, String> {
        let d = match &self.retry_cap {
            Some(v) => v.resolve("pagerduty.retry_cap")?,
            None => std::time::Duration::from_secs(30),
        };
        if d.is_zero() {
            return Err("pagerduty.retry_cap must be above zero, e.g. \"30s\"".into());
        }
        Ok(d)
    }

    /// The sink's settings for the appliance `appliance` at `address`, with its keys read
    /// (and its CA file, if any).
    pub fn settings(
        &self,
        keys: RoutingKeys,
        appliance: &str,
        address: &str,
    ) -> Result<PagerDutySettings, String> {
        let mut severities: Vec<(String, String)> = DEFAULT_SEVERITIES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (sev, pd) in &self.severities {
            let canon = canonical_severity(sev).unwrap_or(sev.as_str());
            match severities.iter_mut().find(|(k, _)| k == canon) {
                Some(e) => e.1 = pd.clone(),
                None => severities.push((canon.to_string(), pd.clone())),
            }
        }
        let optional = |v: &Option<String>, default: &str| -> Option<String> {
            match v.as_deref().map(str::trim) {
                None => Some(default.to_string()),
                Some("") => None,
                Some(s) => Some(s.to_string()),
            }
        };
        Ok(PagerDutySettings {
            url: self
                .url
                .as_deref()
                .map(str::trim)
                .unwrap_or(DEFAULT_URL)
                .trim_end_matches('/')
                .to_string(),
            http: HttpSettings::from_keys(
                NAME,
                self.ca.as_deref(),
                self.insecure,
                self.proxy.as_ref().map(Secret::expose),
                self.timeout.as_ref(),
            )?,
            keys,
            event: EventSettings {
                appliance: appliance.to_string(),
                address: address.to_string(),
                severities,
                alert_link: optional(&self.alert_link, DEFAULT_ALERT_LINK),
                client: optional(&self.client, DEFAULT_CLIENT)
                    .unwrap_or_else(|| DEFAULT_CLIENT.to_string()),
                client_url: optional(&self.client_url, DEFAULT_CLIENT_URL),
            },
            note: self
                .note
                .clone()
                .unwrap_or_else(|| DEFAULT_NOTE.to_string()),
            resolve_on_clear: self.resolve_on_clear,
            retry_cap: self.retry_cap()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const KEY: &str = "0123456789abcdef0123456789ABCDEF";

    fn parse(pd: &str) -> Result<Config, ConfigError> {
        parse_with(pd, "")
    }

    fn parse_with(pd: &str, filter: &str) -> Result<Config, ConfigError> {
        std::env::set_var("SCMB_TEST_PD_OV", "admin123");
        let text = format!(
            "[[appliance]]\nname = \"east\"\naddress = \"oneview-east.example.com\"\npassword_env = \"SCMB_TEST_PD_OV\"\n{filter}[appliance.pagerduty]\n{pd}"
        );
        Config::parse(&text, Path::new("scmb.toml"))
    }

    fn err(pd: &str) -> String {
        parse(pd).expect_err(pd).to_string()
    }

    #[test]
    fn a_pagerduty_table_alone_is_a_sink_that_pages_with_the_documented_defaults() {
        std::env::set_var("SCMB_TEST_PD_KEY", KEY);
        let c = parse("routing_key_env = \"SCMB_TEST_PD_KEY\"\n").expect("parse");
        let a = &c.appliances[0];
        let s = a
            .settings(Path::new("/var/lib/scmb"))
            .expect("settings (the OV password is not read from OV yet)");
        assert!(s.sinks.tickets(), "catches up like a ticketing sink");
        let pd = s.sinks.pagerduty.expect("pagerduty");
        assert_eq!(s.look_back, crate::duration::LookBack::All);
        assert_eq!(pd.url, "https://events.pagerduty.com");
        assert_eq!(pd.keys.default.as_ref().map(|k| k.expose()), Some(KEY));
        assert!(pd.keys.by_severity.is_empty());
        assert_eq!(pd.note, "Paged on PagerDuty (dedup key {dedup_key})");
        assert!(pd.resolve_on_clear);
        assert_eq!(pd.retry_cap, std::time::Duration::from_secs(30));
        assert_eq!(pd.http.timeout, std::time::Duration::from_secs(30));
        assert!(matches!(pd.http.trust, crate::sinks::http::Trust::System));
        assert_eq!(pd.http.proxy, crate::sinks::http::Proxy::Environment);
        assert_eq!(pd.event.appliance, "east");
        assert_eq!(pd.event.address, "oneview-east.example.com");
        assert_eq!(
            pd.event.alert_link.as_deref(),
            Some("https://{address}/#/activity/r{uri}")
        );
        assert_eq!(pd.event.client, "HPE OneView ({appliance})");
        assert!(!format!("{pd:?}").contains(KEY), "never printed");
    }

    #[test]
    fn every_key_of_the_table_is_read_and_the_severity_map_merges_over_the_defaults() {
        let dir = scmb_sim_free_temp("pd-config");
        let file = dir.join("pd-critical");
        std::fs::write(&file, format!("{KEY}\n")).expect("key file");
        let c = parse(&format!(
            r#"url = "http://127.0.0.1:9/"
routing_key = "{KEY}"
severities = {{ warning = "error" }}
note = "PD {{dedup_key}}"
resolve_on_clear = false
alert_link = ""
client = "OneView {{appliance}}"
client_url = ""
proxy = "none"
timeout = "5s"
retry_cap = "2s"
[appliance.pagerduty.routing_keys]
critical = {{ routing_key_file = "{}" }}
"#,
            file.display()
        ))
        .expect("parse");
        let s = c.appliances[0].settings(Path::new("/s")).expect("settings");
        let pd = s.sinks.pagerduty.expect("pagerduty");
        assert_eq!(pd.url, "http://127.0.0.1:9");
        assert_eq!(
            pd.keys.by_severity.get("Critical").map(|k| k.expose()),
            Some(KEY),
            "severities take OneView's spelling"
        );
        let (slot, _) = pd.keys.route(Some("Critical")).expect("route");
        assert_eq!(slot, "routing_keys.Critical");
        assert_eq!(
            super::super::pd_severity(&pd.event.severities, Some("Warning")),
            "error"
        );
        assert_eq!(
            super::super::pd_severity(&pd.event.severities, Some("Critical")),
            "critical"
        );
        assert_eq!(pd.note, "PD {dedup_key}");
        assert!(!pd.resolve_on_clear);
        assert_eq!(
            (pd.event.alert_link.clone(), pd.event.client_url.clone()),
            (None, None)
        );
        assert_eq!(pd.event.client, "OneView {appliance}");
        assert_eq!(pd.http.proxy, crate::sinks::http::Proxy::Direct);
        assert_eq!(pd.http.timeout, std::time::Duration::from_secs(5));
        assert_eq!(pd.retry_cap, std::time::Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn scmb_sim_free_temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "scmb-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn mistakes_in_the_table_are_refused_naming_the_setting() {
        for (pd, needle) in [
            ("", "no routing key"),
            (
                "routing_key_env = \"A\"\nrouting_key_file = \"/k\"\n",
                "give only one of",
            ),
            ("routing_key_env = \"A\"\nroutng_key = \"x\"\n", "routng_key"),
            (
                "routing_key_env = \"A\"\nseverities = { Critical = \"fatal\" }\n",
                "pagerduty.severities.Critical",
            ),
            (
                "routing_key_env = \"A\"\nseverities = { Major = \"critical\" }\n",
                "pagerduty.severities.Major",
            ),
            (
                "routing_key_env = \"A\"\nnote = \"Paged on PagerDuty\"\n",
                "pagerduty.note must contain {dedup_key}",
            ),
            ("routing_key_env = \"A\"\nurl = \"events.pagerduty.com\"\n", "pagerduty.url"),
            ("routing_key_env = \"A\"\nurl = \"ftp://x\"\n", "pagerduty.url"),
            ("routing_key_env = \"A\"\ntimeout = \"0s\"\n", "pagerduty.timeout"),
            ("routing_key_env = \"A\"\nretry_cap = \"soon\"\n", "pagerduty.retry_cap"),
            ("routing_key_env = \"A\"\nproxy = \"proxy:3128\"\n", "pagerduty.proxy"),
            (
                "routing_key_env = \"A\"\nca = \"/ca.pem\"\ninsecure = true\n",
                "not both",
            ),
            (
                "routing_key_env = \"A\"\nrouting_keys = { Major = { routing_key_env = \"B\" } }\n",
                "pagerduty.routing_keys.Major",
            ),
            (
                "routing_key_env = \"A\"\nrouting_keys = { Critical = {} }\n",
                "pagerduty.routing_keys.Critical: no key",
            ),
            (
                "routing_key_env = \"A\"\nrouting_keys = { Critical = { routing_key_env = \"B\", routing_key_file = \"/k\" } }\n",
                "pagerduty.routing_keys.Critical: give only one",
            ),
            (
                "routing_key_env = \"A\"\nrouting_keys = { Critical = { routing_key_env = \"B\" }, critical = { routing_key_env = \"C\" } }\n",
                "given twice",
            ),
        ] {
            let e = err(pd);
            assert!(e.contains(needle), "{pd:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn concurrency_sets_the_appliances_lanes_and_is_refused_at_zero_or_past_the_maximum() {
        std::env::set_var("SCMB_TEST_PD_KEY", KEY);
        let lanes = |pd: &str| {
            parse(&format!("routing_key_env = \"SCMB_TEST_PD_KEY\"\n{pd}"))
                .expect(pd)
                .appliances[0]
                .settings(Path::new("/s"))
                .expect("settings")
                .lanes
        };
        assert_eq!(lanes(""), 16, "the default");
        assert_eq!(lanes("concurrency = 3\n"), 3, "fewer than the default");
        assert_eq!(lanes("concurrency = 64\n"), 64, "more than the default");
        assert_eq!(lanes("concurrency = 1024\n"), 1024);
        for n in ["0", "1025", "100000"] {
            let e = err(&format!("routing_key_env = \"A\"\nconcurrency = {n}\n"));
            assert!(
                e.contains(&format!("pagerduty.concurrency = {n}")) && e.contains("1 to 1024"),
                "{n}: {e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = err("routing_key_env = \"A\"\nconcurrency = -1\n");
        assert!(e.contains("line 7") && e.contains("-1"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn with_another_sink_the_largest_concurrency_sets_the_lanes() {
        std::env::set_var("SCMB_TEST_PD_KEY", KEY);
        std::env::set_var("SCMB_TEST_PD_SN", "secret");
        let lanes = |pd: usize, sn: usize| {
            parse(&format!(
                "routing_key_env = \"SCMB_TEST_PD_KEY\"\nconcurrency = {pd}\n[appliance.servicenow]\ninstance = \"acme\"\nuser = \"u\"\npassword_env = \"SCMB_TEST_PD_SN\"\nconcurrency = {sn}\n"
            ))
            .expect("parse")
            .appliances[0]
                .settings(Path::new("/s"))
                .expect("settings")
                .lanes
        };
        assert_eq!(lanes(40, 8), 40);
        assert_eq!(lanes(2, 8), 8);
    }

    #[test]
    fn without_a_default_key_every_admitted_severity_needs_its_own() {
        let only_critical = "routing_keys = { Critical = { routing_key_env = \"B\" } }\n";
        assert!(
            parse(only_critical).is_ok(),
            "the default filter admits Critical only"
        );
        let warn = "[appliance.filter]\nseverities = [\"Critical\", \"Warning\"]\n";
        let e = parse_with(only_critical, warn)
            .expect_err("warning")
            .to_string();
        assert!(
            e.contains("no routing key for Warning alerts") && e.contains("routing_keys.Warning"),
            "{e}"
        );
        let all = "[appliance.filter]\nseverities = [\"*\"]\n";
        assert!(parse_with(only_critical, all).is_err());
    }

    #[test]
    fn routing_keys_are_read_checked_and_never_shown() {
        std::env::set_var("SCMB_TEST_PD_SHORT", "0123456789abcdef");
        let c = parse("routing_key_env = \"SCMB_TEST_PD_SHORT\"\n").expect("parse");
        let e = c.appliances[0]
            .settings(Path::new("/s"))
            .expect_err("short")
            .to_string();
        assert!(
            e.contains("pagerduty.routing_key") && e.contains("16 characters") && e.contains("32"),
            "{e}"
        );
        assert!(!e.contains("0123456789abcdef"), "{e}");
        let c = parse("routing_key_env = \"SCMB_TEST_PD_UNSET\"\n").expect("parse");
        let e = c.appliances[0]
            .settings(Path::new("/s"))
            .expect_err("unset")
            .to_string();
        assert!(
            e.contains("pagerduty.routing_key: routing_key_env: the environment variable SCMB_TEST_PD_UNSET is not set"),
            "{e}"
        );
        let c = parse("routing_key_file = \"/no/such/pd-key\"\n").expect("parse");
        let e = c.appliances[0]
            .settings(Path::new("/s"))
            .expect_err("file")
            .to_string();
        assert!(e.contains("routing key file /no/such/pd-key"), "{e}");
    }

    #[test]
    fn the_pagerduty_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pagerduty.toml");
        let c = Config::load(&path).expect("examples/pagerduty.toml must stay valid");
        assert!(c.appliances.iter().all(|a| a.pagerduty.is_some()));
    }
}
