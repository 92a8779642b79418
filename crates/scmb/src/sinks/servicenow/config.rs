//! `[appliance.servicenow]`: an appliance's ServiceNow instance, its credentials and its
//! incidents, and the sink's settings they amount to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::client::{Auth, ClientSettings};
use super::event::{EventTemplate, EM_SEVERITIES, EVENT_NOTE_PREFIX};
use super::incident::{Template, Text, NOTE_PREFIX};
use super::{Mode, OnClear, ServiceNowSettings, NAME};
use crate::duration::DurationValue;
use crate::password::SecretRef;
use crate::sinks::http::{self, HttpSettings};
use scmb_oneview::Secret;

/// `[appliance.servicenow]`: open a ServiceNow incident per admitted alert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowConfig {
    /// The instance: its name (`acme`, meaning `https://acme.service-now.com`), its host
    /// (`acme.service-now.com`, `sn.example.com:8443`), or a URL (`https://…`; `http://` only
    /// for tests).
    pub instance: String,
    /// What the sink does: `incident` (default: one incident per alert through the Table API)
    /// or `event` (one Event Management event per alert through `POST
    /// /api/global/em/jsonv2`, its `message_key` the alert's key, severity 0 when the alert
    /// clears). The instance, credentials, TLS, proxy, timeout, retry and note keys apply to
    /// both; `incident`, `close_code`, `close_notes`, `journal_updates`, `claim` and `on_clear =
    /// "journal"` only to incidents, `[event]` only to events (each refused in the other mode).
    #[serde(default)]
    pub mode: Mode,
    /// Basic authentication: the user (with the itil role, or rights to create and update
    /// incidents and read `cmdb_ci`). Give either `user` and a `password_*`, or `client_id`
    /// and a `client_secret_*`.
    pub user: Option<String>,
    /// Basic authentication: the name of an environment variable holding the user's password.
    /// Exactly one of `password_env`, `password_file`, `password_credential`.
    pub password_env: Option<String>,
    /// Basic authentication: a file whose first line is the password (keep it `chmod 600`).
    pub password_file: Option<PathBuf>,
    /// Basic authentication: a systemd credential name (`LoadCredential=NAME:PATH`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub password_credential: Option<String>,
    /// OAuth 2.0 client credentials: the client id of the instance's OAuth application
    /// (System OAuth > Application Registry). The token acts as the application's user; it is
    /// renewed a minute before it expires and when the instance refuses it.
    pub client_id: Option<String>,
    /// OAuth: the name of an environment variable holding the client secret. Exactly one of
    /// `client_secret_env`, `client_secret_file`, `client_secret_credential`.
    pub client_secret_env: Option<String>,
    /// OAuth: a file whose first line is the client secret (keep it `chmod 600`).
    pub client_secret_file: Option<PathBuf>,
    /// OAuth: a systemd credential name holding the client secret.
    pub client_secret_credential: Option<String>,
    /// Verify the instance's HTTPS certificate against the CA certificates in this PEM file
    /// instead of the system's (read with `rustls-native-certs`: `$SSL_CERT_FILE` and
    /// `$SSL_CERT_DIR` honoured).
    pub ca: Option<PathBuf>,
    /// DANGEROUS: do not verify the instance's certificate (a WARN at every start). Default
    /// false.
    #[serde(default)]
    pub insecure: bool,
    /// The proxy for every call, e.g. `"http://proxy.example.com:3128"` (a user and password
    /// in it are never logged; the environment is then ignored), or `"none"` to go direct.
    /// Default: `$HTTPS_PROXY` / `$HTTP_PROXY` / `$ALL_PROXY` with `$NO_PROXY`'s exceptions,
    /// when set. The same key as PagerDuty's ([`crate::sinks::http::parse_proxy`]).
    #[serde(default, deserialize_with = "secret")]
    pub proxy: Option<Secret>,
    /// How long one call may take, answer included, e.g. `"30s"`. A create without an answer
    /// in time may still have happened: it is looked up by its `correlation_id` before being
    /// sent again. Default `"30s"`.
    pub timeout: Option<DurationValue>,
    /// Longest pause between retries of a failing call, e.g. `"30s"`; also the pause while
    /// the instance refuses our credentials. Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
    /// Alerts ticketed in parallel. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// What a cleared or deleted alert does to its incident: `none`, `journal` (a work note),
    /// `resolve` (default: state Resolved with `close_code` and `close_notes`, and a work
    /// note), `close` (state Closed, likewise).
    #[serde(default = "default_on_clear")]
    pub on_clear: OnClear,
    /// The resolution code set when resolving or closing. It must be one of the instance's
    /// `close_code` choices. Default `Solved (Permanently)`; newer instances name theirs e.g.
    /// `Solution provided` or `Resolved by caller`.
    pub close_code: Option<String>,
    /// The resolution notes set when resolving or closing. Default: the line saying which
    /// alert was cleared or deleted, and when.
    pub close_notes: Option<String>,
    /// One incident per `alert` (default), or per `resource` (as HPE's own ServiceNow
    /// integration does): a second alert on the same server or enclosure adds a work note to
    /// the resource's open incident (reopening it if it was resolved) instead of opening
    /// another, and a clear resolves or closes it only once none of its alerts is still
    /// active. The `correlation_id` is then the resource's (`scmb:<appliance>:<resource
    /// uri>`). An incident closed (state 7) is done with: the resource's next alert opens a
    /// new one.
    #[serde(default)]
    pub correlate: Correlate,
    /// The other direction: when people resolve or close an incident this bridge opened, its
    /// alert is cleared in OneView (a `PUT` guarded by the alert's eTag, so a newer change is
    /// never overwritten; a note in the alert says why). Found by polling the open incidents
    /// this bridge created every `poll_interval`. Locked alerts (only the appliance clears
    /// them) stay as they are. Default false.
    #[serde(default)]
    pub clear_alerts: bool,
    /// How often `clear_alerts` asks the instance which of our open incidents were resolved,
    /// e.g. `"1m"` (one query per 50 incidents). Default `"1m"`.
    pub poll_interval: Option<DurationValue>,
    /// Add other people's changes to a ticketed alert (its urgency, its assignment, their
    /// notes) to the incident as work notes. Default false.
    #[serde(default)]
    pub journal_updates: bool,
    /// Claim each alert with an eTag-guarded note before creating its incident, so that two
    /// instances on separate state never both create one. The `correlation_id` look-up alone
    /// does not prevent it: in a storm both instances look before either creates. Default
    /// false.
    #[serde(default)]
    pub claim: bool,
    /// Time between OneView REST keep-alive calls while idle, e.g. `"10m"`; `"0s"` = off.
    /// Default `"10m"`.
    pub keep_alive: Option<DurationValue>,
    /// The text written into the alert's notes before the incident's number. An alert whose
    /// notes hold it (or the default's) followed by a number is never ticketed again, so keep
    /// it distinctive. Default `Case automatically logged in ServiceNow with ID:`. In event
    /// mode, the text before the message key (an alert whose notes hold its key, whatever the
    /// text before it, is never sent again); default `Event sent to ServiceNow Event
    /// Management with message key`.
    pub note_prefix: Option<String>,
    /// What the incident looks like (`mode = "incident"` only).
    #[serde(default)]
    pub incident: IncidentConfig,
    /// What the events look like (`mode = "event"` only).
    pub event: Option<EventConfig>,
}

/// `[appliance.servicenow.event]` (`mode = "event"`): what each event says besides the alert.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// The events' `source`. Default `HPE OneView`.
    pub source: Option<String>,
    /// The events' `event_class` (event rules can match it). Default `scmb`.
    pub event_class: Option<String>,
    /// Event Management severity (`"1"` Critical, `"2"` Major, `"3"` Minor, `"4"` Warning,
    /// `"5"` OK) by OneView severity, over the defaults: Critical 1, Warning 4, OK, Unknown and
    /// Disabled 5. `"0"` (Clear) is sent only when an alert clears.
    #[serde(default)]
    pub severities: BTreeMap<String, String>,
}

/// `[appliance.servicenow.incident]`. Texts may hold `{severity}`, `{resource}`,
/// `{description}`, `{corrective_action}`, `{health_category}`, `{alert_type}`, `{uri}`,
/// `{state}`, `{created}` and `{appliance}` (`{{`, `}}` for braces).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentConfig {
    /// `short_description` (at most 160 characters are sent). Default `OneView {severity}
    /// alert on {resource}: {description}`.
    pub short_description: Option<String>,
    /// `description`. Default: the alert's uri, appliance, resource, severity, description,
    /// corrective action, health category, type and creation time, one per line.
    pub description: Option<String>,
    /// `urgency` by alert severity (1 High, 2 Medium, 3 Low), e.g. `{ Critical = "1" }`;
    /// severities not named get 3. Default Critical 1, Warning 2, OK 3.
    #[serde(default)]
    pub urgency: BTreeMap<String, String>,
    /// `impact` by alert severity, likewise. Default Critical 2, Warning 3, OK 3 (so a
    /// critical alert's priority is 2, High).
    #[serde(default)]
    pub impact: BTreeMap<String, String>,
    /// `category`; `""` leaves the instance's default. Default `hardware`.
    pub category: Option<String>,
    /// `subcategory`. Default: none.
    pub subcategory: Option<String>,
    /// `assignment_group`: the group's sys_id. Default: none (the instance's assignment rules).
    pub assignment_group: Option<String>,
    /// `caller_id`: the caller's sys_id (a user standing for OneView). Default: none.
    pub caller_id: Option<String>,
    /// Set `cmdb_ci` to the configuration item whose name is the alert's resource name (one
    /// `GET /api/now/table/cmdb_ci` per name, remembered 10 minutes); left empty when none
    /// matches. Default false.
    #[serde(default)]
    pub cmdb_ci: bool,
    /// Extra incident fields, e.g. `{ contact_type = "monitoring", u_source = "{appliance}" }`.
    /// `correlation_id`, `correlation_display`, `number`, `state` and `sys_*` are ours or the
    /// instance's and are refused.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// A string that must never print (a proxy URL may carry a password): straight into a
/// [`Secret`].
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

/// What one incident stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Correlate {
    /// One incident per alert.
    #[default]
    Alert,
    /// One incident per resource (server, enclosure, …): its alerts share it.
    Resource,
}

fn default_concurrency() -> usize {
    16
}
fn default_on_clear() -> OnClear {
    OnClear::Resolve
}

/// The close code when none is configured (the one ServiceNow's own examples use).
pub const DEFAULT_CLOSE_CODE: &str = "Solved (Permanently)";

/// Fields an extra field may not set.
const RESERVED: [&str; 4] = ["correlation_id", "correlation_display", "number", "state"];

/// The instance's URL from its name, host or URL.
pub fn instance_url(instance: &str) -> Result<String, String> {
    let s = instance.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err("instance is empty: give the instance's name, host or URL".into());
    }
    let url = if s.contains("://") {
        s.to_string()
    } else if s.contains('.') || s.contains(':') {
        format!("https://{s}")
    } else {
        format!("https://{s}.service-now.com")
    };
    let u = reqwest::Url::parse(&url).map_err(|e| format!("instance {instance:?}: {e}"))?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err(format!("instance {instance:?}: use https://"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "instance {:?}: no credentials in the URL; use user and password_* or client_id and client_secret_*",
            u.host_str().unwrap_or("")
        ));
    }
    if u.query().is_some() || u.fragment().is_some() || u.host_str().is_none() {
        return Err(format!(
            "instance {instance:?}: give the instance's address only"
        ));
    }
    Ok(url)
}

/// A severity table, checked: OneView's severities, ServiceNow's levels 1 to 3.
fn levels(key: &str, table: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    table
        .iter()
        .map(|(sev, v)| {
            let known = scmb_model::filter::SEVERITIES
                .iter()
                .find(|s| s.eq_ignore_ascii_case(sev))
                .ok_or_else(|| {
                    format!(
                        "incident.{key}: {sev:?} is not a OneView severity: use {}",
                        scmb_model::filter::SEVERITIES.join(", ")
                    )
                })?;
            if !matches!(v.as_str(), "1" | "2" | "3") {
                return Err(format!(
                    "incident.{key}.{sev} = {v:?}: use \"1\" (high), \"2\" (medium) or \"3\" (low)"
                ));
            }
            Ok((known.to_string(), v.clone()))
        })
        .collect()
}

/// An optional setting given as `""` means none.
fn given(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.trim().is_empty())
}

impl ServiceNowConfig {
    /// Basic authentication (`user` and a `password_*`), or OAuth (`client_id` and a
    /// `client_secret_*`): which, or what is wrong.
    fn oauth(&self) -> Result<bool, String> {
        let password = self.password_env.is_some()
            || self.password_file.is_some()
            || self.password_credential.is_some();
        let secret = self.client_secret_env.is_some()
            || self.client_secret_file.is_some()
            || self.client_secret_credential.is_some();
        match (self.user.is_some() || password, self.client_id.is_some() || secret) {
            (true, false) if self.user.is_none() => {
                Err("Basic authentication needs user as well as password_*".into())
            }
            (true, false) => Ok(false),
            (false, true) if self.client_id.is_none() => {
                Err("OAuth needs client_id as well as client_secret_*".into())
            }
            (false, true) => Ok(true),
            (true, true) => Err(
                "give user and password_* (Basic) or client_id and client_secret_* (OAuth), not both"
                    .into(),
            ),
            (false, false) => Err(
                "no credentials: give user and password_* (Basic) or client_id and client_secret_* (OAuth)"
                    .into(),
            ),
        }
    }

    /// Where the one secret comes from: the password (Basic) or the client secret (OAuth).
    pub fn secret(&self) -> Result<SecretRef, String> {
        Ok(match self.oauth()? {
            false => SecretRef {
                password_env: self.password_env.clone(),
                password_file: self.password_file.clone(),
                password_credential: self.password_credential.clone(),
            },
            true => SecretRef {
                password_env: self.client_secret_env.clone(),
                password_file: self.client_secret_file.clone(),
                password_credential: self.client_secret_credential.clone(),
            },
        })
    }

    /// Reads the secret now; the error names its source, never the secret.
    pub fn read_secret(&self) -> Result<Secret, String> {
        let oauth = self.oauth()?;
        self.secret()?.read().map_err(|m| {
            if oauth {
                m.replace("password_", "client_secret_")
                    .replace("no password", "no client secret")
            } else {
                m
            }
        })
    }

    /// Everything that can be checked without reading a file or a secret.
    pub fn check(&self) -> Result<(), String> {
        instance_url(&self.instance)?;
        let oauth = self.oauth()?;
        self.secret()?.check().map_err(|m| {
            if oauth {
                m.replace("password_", "client_secret_")
                    .replace("no password", "no client secret")
            } else {
                m
            }
        })?;
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        // The CA file is read by `settings`, with the secret.
        if self.insecure && self.ca.is_some() {
            return Err("give ca or insecure = true, not both".into());
        }
        http::parse_proxy(NAME, self.proxy.as_ref().map(Secret::expose))?;
        http::check_timeout(NAME, self.timeout.as_ref())?;
        self.retry_cap()?;
        self.keep_alive()?;
        self.poll_interval()?;
        if self
            .note_prefix
            .as_ref()
            .is_some_and(|p| p.trim().len() < 8)
        {
            return Err("note_prefix is too short to be recognised again: keep it distinctive, e.g. \"Case automatically logged in ServiceNow with ID:\"".into());
        }
        if self
            .close_code
            .as_ref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(
                "close_code is empty: resolving needs one of the instance's resolution codes"
                    .into(),
            );
        }
        self.check_mode()?;
        self.template().map(|_| ())
    }

    /// The keys of the other mode: refused, since giving them can only be a mistake.
    fn check_mode(&self) -> Result<(), String> {
        match self.mode {
            Mode::Incident => {
                if self.event.is_some() {
                    return Err("[servicenow.event] is for mode = \"event\": remove it, or set mode = \"event\"".into());
                }
            }
            Mode::Event => {
                let incident_only = [
                    (
                        "[servicenow.incident]",
                        self.incident != IncidentConfig::default(),
                    ),
                    ("close_code", self.close_code.is_some()),
                    ("close_notes", self.close_notes.is_some()),
                    ("journal_updates", self.journal_updates),
                    ("claim", self.claim),
                    ("on_clear = \"journal\"", self.on_clear == OnClear::Journal),
                    (
                        "correlate = \"resource\"",
                        self.correlate == Correlate::Resource,
                    ),
                    ("clear_alerts", self.clear_alerts),
                    ("poll_interval", self.poll_interval.is_some()),
                ];
                if let Some((key, _)) = incident_only.iter().find(|(_, given)| *given) {
                    return Err(format!("{key} is for mode = \"incident\": remove it, or leave mode = \"event\" out (Event Management correlates and closes its alerts itself, by the message key)"));
                }
                self.event_template()?;
            }
        }
        Ok(())
    }

    /// What the events say: the `[event]` table over the defaults.
    pub fn event_template(&self) -> Result<EventTemplate, String> {
        let mut t = EventTemplate::default();
        let Some(e) = &self.event else {
            return Ok(t);
        };
        for (key, v, slot) in [
            ("source", &e.source, &mut t.source),
            ("event_class", &e.event_class, &mut t.event_class),
        ] {
            if let Some(v) = v {
                if v.trim().is_empty() {
                    return Err(format!(
                        "event.{key} is empty: leave it out for the default"
                    ));
                }
                *slot = v.trim().to_string();
            }
        }
        for (sev, em) in &e.severities {
            let known = scmb_model::filter::SEVERITIES
                .iter()
                .find(|s| s.eq_ignore_ascii_case(sev))
                .ok_or_else(|| {
                    format!(
                        "event.severities: {sev:?} is not a OneView severity: use {}",
                        scmb_model::filter::SEVERITIES.join(", ")
                    )
                })?;
            if !EM_SEVERITIES.contains(&em.as_str()) {
                return Err(format!(
                    "event.severities.{sev} = {em:?}: Event Management's severities are \"1\" (Critical) to \"5\" (OK)"
                ));
            }
            match t.severities.iter_mut().find(|(k, _)| k == known) {
                Some(slot) => slot.1 = em.clone(),
                None => t.severities.push((known.to_string(), em.clone())),
            }
        }
        Ok(t)
    }

    /// The incident template: the table's values over the defaults.
    pub fn template(&self) -> Result<Template, String> {
        let i = &self.incident;
        let d = Template::default();
        let text = |key: &str, v: &Option<String>, default: Text| match v {
            Some(s) => Text::parse(s).map_err(|e| format!("incident.{key}: {e}")),
            None => Ok(default),
        };
        let mut extra = Vec::new();
        for (k, v) in &i.fields {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(format!(
                    "incident.fields: {k:?} is not a field name (lower-case letters, digits, _)"
                ));
            }
            if RESERVED.contains(&k.as_str()) || k.starts_with("sys_") {
                return Err(format!(
                    "incident.fields: {k} is set by scmb or the instance, not by the config"
                ));
            }
            extra.push((
                k.clone(),
                Text::parse(v).map_err(|e| format!("incident.fields.{k}: {e}"))?,
            ));
        }
        Ok(Template {
            short_description: text(
                "short_description",
                &i.short_description,
                d.short_description,
            )?,
            description: text("description", &i.description, d.description)?,
            urgency: if i.urgency.is_empty() {
                d.urgency
            } else {
                levels("urgency", &i.urgency)?
            },
            impact: if i.impact.is_empty() {
                d.impact
            } else {
                levels("impact", &i.impact)?
            },
            category: match &i.category {
                Some(c) => given(&Some(c.clone())),
                None => d.category,
            },
            subcategory: given(&i.subcategory),
            assignment_group: given(&i.assignment_group),
            caller_id: given(&i.caller_id),
            cmdb_ci: i.cmdb_ci,
            extra,
        })
    }

    pub fn retry_cap(&self) -> Result<Duration, String> {
        match &self.retry_cap {
            Some(v) => v.resolve("servicenow.retry_cap"),
            None => Ok(Duration::from_secs(30)),
        }
    }

    /// `poll_interval`: at least a second.
    pub fn poll_interval(&self) -> Result<Duration, String> {
        let d = match &self.poll_interval {
            Some(v) => v.resolve("servicenow.poll_interval")?,
            None => Duration::from_secs(60),
        };
        if d < Duration::from_secs(1) {
            return Err("poll_interval must be at least 1s, e.g. \"1m\"".into());
        }
        Ok(d)
    }

    pub fn keep_alive(&self) -> Result<Duration, String> {
        match &self.keep_alive {
            Some(v) => v.resolve("servicenow.keep_alive"),
            None => Ok(Duration::from_secs(600)),
        }
    }

    /// The keep-alive, `None` when off.
    pub fn keep_alive_setting(&self) -> Result<Option<Duration>, String> {
        self.keep_alive().map(|d| (!d.is_zero()).then_some(d))
    }

    /// The sink's settings, with its secret read and its CA file loaded.
    pub fn settings(&self, secret: Secret) -> Result<ServiceNowSettings, String> {
        self.check()?;
        let auth = match self.oauth()? {
            false => Auth::Basic {
                user: self.user.clone().unwrap_or_default(),
                password: secret,
            },
            true => Auth::OAuth {
                client_id: self.client_id.clone().unwrap_or_default(),
                client_secret: secret,
            },
        };
        Ok(ServiceNowSettings {
            client: ClientSettings {
                instance: instance_url(&self.instance)?,
                auth,
                http: HttpSettings::from_keys(
                    NAME,
                    self.ca.as_deref(),
                    self.insecure,
                    self.proxy.as_ref().map(Secret::expose),
                    self.timeout.as_ref(),
                )?,
            },
            mode: self.mode,
            event: self.event_template()?,
            template: self.template()?,
            on_clear: self.on_clear,
            journal_updates: self.journal_updates,
            retry_cap: self.retry_cap()?,
            claim: self.claim,
            note_prefix: given(&self.note_prefix).unwrap_or_else(|| {
                match self.mode {
                    Mode::Incident => NOTE_PREFIX,
                    Mode::Event => EVENT_NOTE_PREFIX,
                }
                .to_string()
            }),
            close_code: given(&self.close_code).unwrap_or_else(|| DEFAULT_CLOSE_CODE.into()),
            close_notes: given(&self.close_notes),
            correlate: self.correlate,
            clear_alerts: self
                .clear_alerts
                .then(|| self.poll_interval())
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<ServiceNowConfig, String> {
        toml::from_str::<ServiceNowConfig>(&format!("instance = \"acme\"\n{extra}"))
            .map_err(|e| e.to_string())
    }

    fn checked(extra: &str) -> Result<ServiceNowConfig, String> {
        let c = parse(extra)?;
        c.check()?;
        Ok(c)
    }

    const BASIC: &str = "user = \"scmb\"\npassword_env = \"SN_PASSWORD\"\n";

    #[test]
    fn the_instance_may_be_a_name_a_host_or_a_url() {
        assert_eq!(
            instance_url("acme").as_deref(),
            Ok("https://acme.service-now.com")
        );
        assert_eq!(
            instance_url("sn.example.com:8443/").as_deref(),
            Ok("https://sn.example.com:8443")
        );
        assert_eq!(
            instance_url("http://127.0.0.1:9").as_deref(),
            Ok("http://127.0.0.1:9")
        );
        let e = instance_url("https://admin:pw@acme.service-now.com").expect_err("creds");
        assert!(e.contains("no credentials") && !e.contains("pw"), "{e}");
        assert!(instance_url("ftp://acme").is_err());
        assert!(instance_url(" ").is_err());
    }

    #[test]
    fn basic_or_oauth_credentials_exactly_one_way() {
        let c = checked(BASIC).expect("basic");
        assert_eq!(
            c.secret().expect("ref").password_env.as_deref(),
            Some("SN_PASSWORD")
        );
        let o = checked("client_id = \"abc\"\nclient_secret_file = \"/run/sn\"\n").expect("oauth");
        assert_eq!(
            o.secret().expect("ref").password_file,
            Some(PathBuf::from("/run/sn"))
        );
        for (text, want) in [
            ("", "no credentials"),
            ("user = \"scmb\"\n", "no password"),
            ("password_env = \"X\"\n", "needs user"),
            ("client_id = \"abc\"\n", "no client secret"),
            ("client_secret_env = \"X\"\n", "needs client_id"),
            (
                "user = \"u\"\npassword_env = \"X\"\nclient_id = \"c\"\n",
                "not both",
            ),
            (
                "client_id = \"c\"\nclient_secret_env = \"X\"\nclient_secret_file = \"/x\"\n",
                "only one of client_secret_env",
            ),
        ] {
            let e = checked(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        let e = parse(&format!("{BASIC}pasword = \"x\"\n")).expect_err("unknown");
        assert!(e.contains("pasword"), "{e}");
        let e = parse(&format!("{BASIC}[incident]\nshort_descr = \"x\"\n")).expect_err("unknown");
        assert!(e.contains("short_descr"), "{e}");
        for (extra, want) in [
            ("concurrency = 0\n", "concurrency"),
            ("timeout = \"0s\"\n", "timeout"),
            ("retry_cap = \"soon\"\n", "retry_cap"),
            ("ca = \"/x\"\ninsecure = true\n", "not both"),
            ("note_prefix = \"ID:\"\n", "note_prefix"),
            ("close_code = \" \"\n", "close_code"),
            ("proxy = \"::\"\n", "proxy"),
            ("proxy = \"\"\n", "servicenow.proxy is empty"),
            (
                "clear_alerts = true\npoll_interval = \"500ms\"\n",
                "poll_interval",
            ),
            ("poll_interval = \"often\"\n", "poll_interval"),
            ("[incident]\nurgency = { Critcal = \"1\" }\n", "Critcal"),
            (
                "[incident]\nimpact = { Critical = \"high\" }\n",
                "impact.Critical",
            ),
            (
                "[incident]\nshort_description = \"{sevrity}\"\n",
                "incident.short_description",
            ),
            (
                "[incident]\nfields = { correlation_id = \"x\" }\n",
                "correlation_id",
            ),
            ("[incident]\nfields = { sys_id = \"x\" }\n", "sys_id"),
            (
                "[incident]\nfields = { \"Bad Name\" = \"x\" }\n",
                "Bad Name",
            ),
        ] {
            let e = checked(&format!("{BASIC}{extra}")).expect_err(extra);
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn the_table_becomes_the_sinks_settings() {
        let c = checked(&format!(
            "{BASIC}on_clear = \"close\"\nclose_code = \"Solution provided\"\ntimeout = \"5s\"\nproxy = \"http://proxy:3128\"\n[incident]\nurgency = {{ critical = \"2\" }}\ncategory = \"\"\ncmdb_ci = true\nfields = {{ contact_type = \"monitoring\" }}\n"
        ))
        .expect("parse");
        let s = c.settings(Secret::new("pw")).expect("settings");
        assert_eq!(s.client.instance, "https://acme.service-now.com");
        assert_eq!(
            s.client.auth,
            Auth::Basic {
                user: "scmb".into(),
                password: Secret::new("pw")
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
        assert_eq!(s.retry_cap, Duration::from_secs(30));
        assert_eq!(s.template.urgency, vec![("Critical".into(), "2".into())]);
        assert_eq!(s.template.category, None);
        assert!(s.template.cmdb_ci);
        let m = s
            .template
            .incident(&serde_json::json!({"severity": "Critical"}), "east");
        assert_eq!(m["urgency"], "2");
        assert_eq!(m["contact_type"], "monitoring");
        assert!(m.get("category").is_none());
        assert_eq!((s.correlate, s.clear_alerts), (Correlate::Alert, None));
        let way_back = checked(&format!(
            "{BASIC}correlate = \"resource\"\nclear_alerts = true\npoll_interval = \"2m\"\n"
        ))
        .expect("parse");
        let s = way_back.settings(Secret::default()).expect("settings");
        assert_eq!(s.correlate, Correlate::Resource);
        assert_eq!(s.clear_alerts, Some(Duration::from_secs(120)));
        let e = parse(&format!("{BASIC}correlate = \"server\"\n")).expect_err("typo");
        assert!(e.contains("alert") && e.contains("resource"), "{e}");
        let d = checked(BASIC).expect("defaults");
        let s = d.settings(Secret::default()).expect("settings");
        assert_eq!(s.close_code, DEFAULT_CLOSE_CODE);
        assert_eq!(s.on_clear, OnClear::Resolve);
        assert_eq!(s.client.http.proxy, http::Proxy::Environment);
        assert_eq!(s.client.http.timeout, http::DEFAULT_TIMEOUT);
        let direct = checked(&format!("{BASIC}proxy = \"none\"\n")).expect("none");
        let s = direct.settings(Secret::default()).expect("settings");
        assert_eq!(s.client.http.proxy, http::Proxy::Direct);
        let insecure = checked(&format!("{BASIC}insecure = true\n")).expect("insecure");
        let s = insecure.settings(Secret::default()).expect("settings");
        assert!(matches!(s.client.http.trust, http::Trust::Insecure));
        assert_eq!(d.keep_alive_setting(), Ok(Some(Duration::from_secs(600))));
        let missing_ca = checked(&format!("{BASIC}ca = \"/nonexistent/ca.pem\"\n")).expect("parse");
        let e = missing_ca.settings(Secret::default()).expect_err("no CA");
        assert!(
            e.contains("servicenow.ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn the_mode_is_incident_or_event_and_each_refuses_the_others_keys() {
        let c = checked(BASIC).expect("default");
        assert_eq!(c.mode, Mode::Incident);
        let e = parse(&format!("{BASIC}mode = \"events\"\n")).expect_err("typo");
        assert!(e.contains("incident") && e.contains("event"), "{e}");
        let ev = checked(&format!("{BASIC}mode = \"event\"\n")).expect("event");
        let s = ev.settings(Secret::new("pw")).expect("settings");
        assert_eq!(s.mode, Mode::Event);
        assert_eq!(s.note_prefix, EVENT_NOTE_PREFIX);
        assert_eq!(s.event, EventTemplate::default());
        assert_eq!(s.on_clear, OnClear::Resolve);
        for (extra, want) in [
            (
                "close_code = \"x\"\n",
                "close_code is for mode = \"incident\"",
            ),
            ("close_notes = \"x\"\n", "close_notes"),
            ("journal_updates = true\n", "journal_updates"),
            ("correlate = \"resource\"\n", "correlate"),
            ("clear_alerts = true\n", "clear_alerts"),
            ("claim = true\n", "claim"),
            ("on_clear = \"journal\"\n", "on_clear = \"journal\""),
            ("[incident]\ncategory = \"x\"\n", "[servicenow.incident]"),
            (
                "[event]\nseverities = { Critical = \"0\" }\n",
                "event.severities.Critical",
            ),
            ("[event]\nseverities = { Critcal = \"1\" }\n", "Critcal"),
            ("[event]\nsource = \" \"\n", "event.source"),
        ] {
            let e = checked(&format!("{BASIC}mode = \"event\"\n{extra}")).expect_err(extra);
            assert!(e.contains(want) && !e.contains('\n'), "{extra}: {e}");
        }
        let e = checked(&format!("{BASIC}[event]\nsource = \"x\"\n")).expect_err("incident");
        assert!(e.contains("mode = \"event\""), "{e}");
        let t = checked(&format!(
            "{BASIC}mode = \"event\"\non_clear = \"none\"\nnote_prefix = \"Sent to EM, key\"\n[event]\nsource = \"OneView dc1\"\nevent_class = \"hpe\"\nseverities = {{ warning = \"3\", Unknown = \"4\" }}\n"
        ))
        .expect("event table")
        .settings(Secret::default())
        .expect("settings");
        assert_eq!(
            (t.event.source.as_str(), t.event.event_class.as_str()),
            ("OneView dc1", "hpe")
        );
        assert_eq!(t.event.severity(Some("Warning")), "3");
        assert_eq!(t.event.severity(Some("Unknown")), "4");
        assert_eq!(t.event.severity(Some("Critical")), "1");
        assert_eq!(t.on_clear, OnClear::None);
        assert_eq!(t.note_prefix, "Sent to EM, key");
    }

    #[test]
    fn a_secret_is_read_from_its_one_source_and_named_in_errors() {
        std::env::set_var("SCMB_TEST_SN_SECRET", "s3cret");
        let o = checked("client_id = \"abc\"\nclient_secret_env = \"SCMB_TEST_SN_SECRET\"\n")
            .expect("oauth");
        assert_eq!(o.read_secret().expect("read").expose(), "s3cret");
        let unset = checked("client_id = \"abc\"\nclient_secret_env = \"SCMB_TEST_SN_UNSET\"\n")
            .expect("oauth");
        let e = unset.read_secret().expect_err("unset");
        assert!(
            e.contains("client_secret_env") && e.contains("SCMB_TEST_SN_UNSET"),
            "{e}"
        );
    }
}
