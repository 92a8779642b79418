//! `[appliance.service_manager]`: the `ov_to_sm` settings of one appliance, and the
//! sink's settings they amount to.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{OnClear, ServiceManagerSettings, Template};
use crate::duration::DurationValue;
use crate::password::SecretRef;
use scmb_oneview::Secret;

/// `[appliance.service_manager]`: the `ov_to_sm` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceManagerConfig {
    /// `HOST` (meaning `http://HOST:13080`), `HOST:PORT`, or a URL (`-sm`).
    pub address: String,
    /// Service Manager user (`-i`). Default `falcon`.
    #[serde(default = "default_sm_user")]
    pub user: String,
    /// The Service Manager password: the name of an environment variable holding it. Exactly one of
    /// `password_env`, `password_file`, `password_credential`.
    pub password_env: Option<String>,
    /// The Service Manager password: a file whose first line is it (keep it `chmod 600`).
    pub password_file: Option<PathBuf>,
    /// The Service Manager password: a systemd credential name (`LoadCredential=NAME:PATH`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub password_credential: Option<String>,
    /// Verify Service Manager's HTTPS certificate against this CA file (`--sm-ca`).
    pub ca: Option<PathBuf>,
    /// Alerts ticketed in parallel (`--concurrency`). Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// What a cleared or deleted alert does to its incident: `none`, `journal`, `resolve`
    /// (default), `close` (`--on-clear`).
    #[serde(default = "default_on_clear")]
    pub on_clear: OnClear,
    /// Journal other people's changes to a ticketed alert (`--journal-updates`). Default false.
    #[serde(default)]
    pub journal_updates: bool,
    /// Time between REST keep-alive calls while idle, e.g. `"10m"`; `"0s"` = off
    /// (`--keep-alive`). Default `"10m"`.
    pub keep_alive: Option<DurationValue>,
    /// Deprecated: `keep_alive` in seconds. Still read, with a warning.
    pub keep_alive_secs: Option<u64>,
    /// Longest pause between retries of a failing call, e.g. `"30s"` (`--retry-cap`).
    /// Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
    /// Deprecated: `retry_cap` in seconds. Still read, with a warning.
    pub retry_cap_secs: Option<u64>,
    /// Claim each alert with an eTag-guarded note before creating its incident (`--claim`),
    /// so that two instances on separate state (an HA pair) never both create one: of two
    /// that read an alert at once, one writes the claim, the other waits for its incident.
    /// Both instances must set it. Costs one more REST call per incident. Default false.
    #[serde(default)]
    pub claim: bool,
    /// How long one call may take, answer included, e.g. `"30s"` (`--sm-timeout`). A create
    /// without an answer in time may still have happened: it is looked up by its reference
    /// before being sent again. Default `"30s"`.
    pub timeout: Option<DurationValue>,
    /// Incidents per page when listing (`--list-page-size`; only `ov_to_sm -l` lists).
    /// Default 100.
    #[serde(default = "default_page")]
    pub list_page_size: usize,
    /// What the incident looks like.
    #[serde(default)]
    pub incident: IncidentConfig,
}

/// `[appliance.service_manager.incident]`; the defaults are the HPE sample's.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentConfig {
    /// Title (`--sm-title`). Default `OneView Alert`.
    pub title: Option<String>,
    /// Category (`--sm-category`). Default `incident`.
    pub category: Option<String>,
    /// Area (`--sm-area`). Default `hardware`.
    pub area: Option<String>,
    /// Subarea (`--sm-subarea`). Default `hardware failure`.
    pub subarea: Option<String>,
    /// Impact (`--sm-impact`). Default `4`.
    pub impact: Option<String>,
    /// Assignment group (`--sm-assignment-group`). Default `Service Manager`.
    pub assignment_group: Option<String>,
    /// Service (`--sm-service`). Default `MyDevices`.
    pub service: Option<String>,
    /// Urgency by alert severity (`--sm-urgency`), e.g. `{ Critical = "1", Warning = "2" }`;
    /// others get 3. Default Critical=1, Warning=2, OK=3.
    #[serde(default)]
    pub urgency: BTreeMap<String, String>,
    /// Set AffectedCI from the alert's resource name (default true; `--no-affected-ci`).
    pub affected_ci: Option<bool>,
    /// Extra incident fields, added as they are (`--sm-field KEY=VALUE`).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

fn default_sm_user() -> String {
    "falcon".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_on_clear() -> OnClear {
    OnClear::Resolve
}
fn default_page() -> usize {
    100
}

impl ServiceManagerConfig {
    /// Where its password comes from.
    pub fn password(&self) -> SecretRef {
        SecretRef {
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            password_credential: self.password_credential.clone(),
        }
    }

    /// The incident template: the table's values over the HPE sample's.
    pub fn template(&self) -> Template {
        let i = &self.incident;
        let d = Template::default();
        Template {
            title: i.title.clone().unwrap_or(d.title),
            category: i.category.clone().unwrap_or(d.category),
            area: i.area.clone().unwrap_or(d.area),
            subarea: i.subarea.clone().unwrap_or(d.subarea),
            impact: i.impact.clone().unwrap_or(d.impact),
            assignment_group: i.assignment_group.clone().unwrap_or(d.assignment_group),
            service: i.service.clone().unwrap_or(d.service),
            urgency: if i.urgency.is_empty() {
                d.urgency
            } else {
                i.urgency.clone().into_iter().collect()
            },
            default_urgency: d.default_urgency,
            affected_ci: i.affected_ci.unwrap_or(true),
            extra: i
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        }
    }

    /// The sink's settings, with its password read.
    pub fn settings(&self, password: Secret) -> Result<ServiceManagerSettings, String> {
        let mut client =
            scmb_servicemanager::SmConfig::from_host(&self.address, self.user.clone(), password);
        if let Some(ca) = &self.ca {
            client.trust = scmb_tls::ServerTrust::Ca(
                scmb_tls::load_certs(ca).map_err(|e| format!("service_manager.ca: {e}"))?,
            );
        }
        client.timeout = match &self.timeout {
            Some(v) => v.resolve("service_manager.timeout")?,
            None => scmb_servicemanager::DEFAULT_TIMEOUT,
        };
        if client.timeout.is_zero() {
            return Err("service_manager.timeout must be above zero, e.g. \"30s\"".into());
        }
        Ok(ServiceManagerSettings {
            client,
            template: self.template(),
            on_clear: self.on_clear,
            journal_updates: self.journal_updates,
            retry_cap: self.retry_cap()?,
            claim: self.claim,
            report: None,
        })
    }

    pub fn keep_alive_setting(&self) -> Result<Option<std::time::Duration>, String> {
        self.keep_alive().map(|d| (!d.is_zero()).then_some(d))
    }

    pub fn keep_alive(&self) -> Result<std::time::Duration, String> {
        Self::renamed(&self.keep_alive, self.keep_alive_secs, "keep_alive", "10m")
    }

    pub fn retry_cap(&self) -> Result<std::time::Duration, String> {
        Self::renamed(&self.retry_cap, self.retry_cap_secs, "retry_cap", "30s")
    }

    /// A duration key `key`, or its deprecated `key_secs` spelling (warned about).
    fn renamed(
        new: &Option<DurationValue>,
        old: Option<u64>,
        key: &str,
        default: &str,
    ) -> Result<std::time::Duration, String> {
        match (new, old) {
            (Some(_), Some(_)) => Err(format!(
                "service_manager: give {key} or {key}_secs (deprecated), not both"
            )),
            (Some(v), None) => v.resolve(&format!("service_manager.{key}")),
            (None, Some(secs)) => {
                crate::telemetry::deprecated(format!(
                    "service_manager.{key}_secs = {secs} is deprecated: write {key} = \"{secs}s\""
                ));
                Ok(std::time::Duration::from_secs(secs))
            }
            (None, None) => crate::duration::parse(key, default),
        }
    }
}
