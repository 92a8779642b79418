//! `[appliance.relay]`: the enterprise RabbitMQ an appliance's admitted events are published
//! to, and the sink's settings they amount to. Checked without reading anything when the file
//! loads ([`RelayConfig::check`]); the PLAIN password is read with the appliance's other
//! secrets ([`RelayConfig::read_secret`]) and kept only in a [`Secret`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Mechanism, RelaySettings, NAME};
use crate::duration::DurationValue;
use crate::password::SecretRef;
use scmb_oneview::Secret;

/// `[appliance.relay]`: publish every admitted event to an exchange on a RabbitMQ of your own
/// (the scale-out path: many consumers behind one queue), persistent and confirmed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The broker's host name (its certificate must name it, or `tls_server_name`).
    pub host: String,
    /// The broker's AMQP port. Default 5671 (AMQPS), or 5672 with `plain_tcp = true`.
    pub port: Option<u16>,
    /// The virtual host. Default `"/"`.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The exchange events are published to, e.g. `"oneview.alerts"`. It must exist unless
    /// `declare = true`: a passive check at connect turns a typo into one clear line.
    pub exchange: String,
    /// Declare the exchange (durable, of `exchange_type`) instead of only checking that it
    /// exists. Default false.
    #[serde(default)]
    pub declare: bool,
    /// The type of the exchange `declare = true` creates: `topic`, `direct`, `fanout` or
    /// `headers`. Default `"topic"`.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Put before the SCMB routing key, e.g. `"dc1."` gives `dc1.scmb.alerts.Created./rest/alerts/7`.
    /// Default none: the SCMB routing key as it came.
    pub routing_key_prefix: Option<String>,
    /// SASL mechanism: `"plain"` (a user and password) or `"external"` (the client
    /// certificate's identity; needs `cert` and `key`). Default: `"external"` when `cert` is
    /// given and `username` is not, else `"plain"`.
    pub mechanism: Option<String>,
    /// The PLAIN user. Needs one of `password_env`, `password_file`, `password_credential`.
    pub username: Option<String>,
    /// The PLAIN password: the name of an environment variable holding it.
    pub password_env: Option<String>,
    /// The PLAIN password: a file whose first line is it (keep it `chmod 600`).
    pub password_file: Option<PathBuf>,
    /// The PLAIN password: a systemd credential name, read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub password_credential: Option<String>,
    /// Verify the broker's certificate against this CA file (PEM) instead of the system's CA
    /// certificates.
    pub ca: Option<PathBuf>,
    /// The name the broker's certificate must carry when it is not `host`.
    pub tls_server_name: Option<String>,
    /// A client certificate (PEM) to present: for `mechanism = "external"`, or a broker that
    /// requires one.
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM, PKCS#1 or PKCS#8; keep it `chmod 600`).
    pub key: Option<PathBuf>,
    /// DANGEROUS: plain AMQP over TCP, no TLS (the password and every event travel in clear;
    /// warned about at every start). Only for a broker on this host or a test. Default false.
    #[serde(default)]
    pub plain_tcp: bool,
    /// Headers added to every message, e.g. `{ x-site = "dc1" }` (the sink's own `x-scmb-*`
    /// headers cannot be overridden).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long the broker may take to confirm a message, e.g. `"30s"`; past it the event is
    /// published again (it may then arrive twice). Default `"30s"`.
    pub confirm_timeout: Option<DurationValue>,
    /// Longest pause between retries (a lost broker, a refusal), e.g. `"30s"`. Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
    /// AMQP heartbeat, e.g. `"30s"` (`"0s"` turns it off). Default `"30s"`.
    pub heartbeat: Option<DurationValue>,
    /// Events published in parallel (one alert's events still one after another, in order),
    /// from 1 to [`MAX_CONCURRENCY`]. The appliance runs as many lanes as the largest
    /// `concurrency` of its sinks. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// The most events published in parallel.
pub const MAX_CONCURRENCY: usize = 1024;

fn default_concurrency() -> usize {
    16
}

fn default_vhost() -> String {
    "/".into()
}

fn default_exchange_type() -> String {
    "topic".into()
}

/// The headers the sink sets itself.
pub const OWN_HEADERS: [&str; 6] = [
    "x-scmb-appliance",
    "x-scmb-address",
    "x-scmb-resource-uri",
    "x-scmb-change-type",
    "x-scmb-category",
    "x-scmb-severity",
];

impl RelayConfig {
    fn password_ref(&self) -> Option<SecretRef> {
        let r = SecretRef {
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            password_credential: self.password_credential.clone(),
        };
        (r != SecretRef::default()).then_some(r)
    }

    /// The SASL mechanism, given or implied.
    pub fn mechanism(&self) -> Result<Mechanism, String> {
        match self.mechanism.as_deref().map(str::to_ascii_lowercase) {
            None if self.cert.is_some() && self.username.is_none() => Ok(Mechanism::External),
            None => Ok(Mechanism::Plain),
            Some(m) if m == "plain" => Ok(Mechanism::Plain),
            Some(m) if m == "external" => Ok(Mechanism::External),
            Some(m) => Err(format!(
                "relay.mechanism = {m:?}: give \"plain\" (username and password) or \"external\" (a client certificate)"
            )),
        }
    }

    /// Checks the table without reading anything.
    pub fn check(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err("relay.host is empty: give the broker's host name".into());
        }
        if self.exchange.is_empty() || self.exchange.len() > 255 {
            return Err(
                "relay.exchange: give the exchange's name (1 to 255 bytes), e.g. \"oneview.alerts\""
                    .into(),
            );
        }
        if !["topic", "direct", "fanout", "headers"].contains(&self.exchange_type.as_str()) {
            return Err(format!(
                "relay.exchange_type = {:?}: give topic, direct, fanout or headers",
                self.exchange_type
            ));
        }
        if self
            .routing_key_prefix
            .as_ref()
            .is_some_and(|p| p.len() > 128)
        {
            return Err("relay.routing_key_prefix is longer than 128 bytes".into());
        }
        match (self.mechanism()?, &self.username, self.password_ref()) {
            (Mechanism::Plain, None, _) => {
                return Err(
                    "relay: SASL PLAIN needs username and a password (password_env, password_file or password_credential); or give cert and key for mechanism = \"external\""
                        .into(),
                )
            }
            (Mechanism::Plain, Some(u), None) => {
                return Err(format!(
                    "relay.username = {u:?} needs a password: set password_env, password_file or password_credential"
                ))
            }
            (Mechanism::Plain, Some(u), Some(p)) => {
                if u.trim().is_empty() {
                    return Err("relay.username is empty".into());
                }
                p.check().map_err(|m| format!("relay: {m}"))?;
            }
            (Mechanism::External, _, Some(_)) | (Mechanism::External, Some(_), _) => {
                return Err(
                    "relay: mechanism = \"external\" logs in with the client certificate: remove username and the password settings"
                        .into(),
                )
            }
            (Mechanism::External, None, None) => {
                if self.cert.is_none() || self.key.is_none() {
                    return Err(
                        "relay: mechanism = \"external\" needs cert and key (the client certificate and its key)"
                            .into(),
                    );
                }
                if self.plain_tcp {
                    return Err(
                        "relay: mechanism = \"external\" needs TLS: remove plain_tcp = true".into(),
                    );
                }
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("relay: give cert and key together".into());
        }
        if self.plain_tcp
            && (self.ca.is_some() || self.cert.is_some() || self.tls_server_name.is_some())
        {
            return Err(
                "relay: plain_tcp = true uses no TLS: remove ca, cert, key and tls_server_name, or plain_tcp".into(),
            );
        }
        for name in self.headers.keys() {
            if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "relay.headers.{name}: the sink sets this header itself ({})",
                    OWN_HEADERS.join(", ")
                ));
            }
            if name.is_empty() || name.len() > 255 {
                return Err(format!("relay.headers: {name:?} is not a header name"));
            }
        }
        self.confirm_timeout()?;
        self.retry_cap()?;
        self.heartbeat()?;
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "relay.concurrency = {}: give 1 to {MAX_CONCURRENCY} events published in parallel",
                self.concurrency
            ));
        }
        Ok(())
    }

    /// Reads the PLAIN password now, if the table has one. Errors name the setting and the
    /// source, never the secret.
    pub fn read_secret(&self) -> Result<Option<Secret>, String> {
        match self.password_ref() {
            Some(p) => p.read().map(Some).map_err(|m| format!("relay: {m}")),
            None => Ok(None),
        }
    }

    fn duration(
        &self,
        v: &Option<DurationValue>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, String> {
        match v {
            Some(v) => v.resolve(key),
            None => Ok(default),
        }
    }

    pub fn confirm_timeout(&self) -> Result<Duration, String> {
        let d = self.duration(
            &self.confirm_timeout,
            "relay.confirm_timeout",
            Duration::from_secs(30),
        )?;
        if d < Duration::from_secs(1) {
            return Err("relay.confirm_timeout: give at least 1s, e.g. \"30s\"".into());
        }
        Ok(d)
    }

    pub fn retry_cap(&self) -> Result<Duration, String> {
        let d = self.duration(&self.retry_cap, "relay.retry_cap", Duration::from_secs(30))?;
        if d.is_zero() {
            return Err("relay.retry_cap must be above zero, e.g. \"30s\"".into());
        }
        Ok(d)
    }

    pub fn heartbeat(&self) -> Result<u16, String> {
        let d = self.duration(&self.heartbeat, "relay.heartbeat", Duration::from_secs(30))?;
        u16::try_from(d.as_secs())
            .map_err(|_| "relay.heartbeat: give at most 18h, e.g. \"30s\"".to_string())
    }

    /// The sink's settings for the appliance `appliance` at `address`, with its password read
    /// (`secret`, from [`RelayConfig::read_secret`]).
    pub fn settings(
        &self,
        secret: Option<Secret>,
        appliance: &str,
        address: &str,
    ) -> Result<RelaySettings, String> {
        let mechanism = self.mechanism()?;
        let password = match (mechanism, secret) {
            (Mechanism::Plain, Some(p)) => Some(p),
            (Mechanism::Plain, None) => return Err(format!("{NAME}: no password")),
            (Mechanism::External, _) => None,
        };
        Ok(RelaySettings {
            host: self.host.trim().to_string(),
            port: self
                .port
                .unwrap_or(if self.plain_tcp { 5672 } else { 5671 }),
            vhost: self.vhost.clone(),
            exchange: self.exchange.clone(),
            declare: self.declare.then(|| self.exchange_type.clone()),
            prefix: self.routing_key_prefix.clone().unwrap_or_default(),
            mechanism,
            username: self.username.clone().unwrap_or_default(),
            password,
            ca: self.ca.clone(),
            tls_server_name: self.tls_server_name.clone(),
            client: self.cert.clone().zip(self.key.clone()),
            plain_tcp: self.plain_tcp,
            headers: self.headers.clone(),
            confirm_timeout: self.confirm_timeout()?,
            retry_cap: self.retry_cap()?,
            heartbeat: self.heartbeat()?,
            appliance: appliance.to_string(),
            address: address.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RelayConfig {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn a_relay_table_is_checked_with_one_line_naming_the_setting() {
        let base = "host = \"mq.example.com\"\nexchange = \"oneview\"\n";
        let ok = parse(&format!(
            "{base}username = \"scmb\"\npassword_env = \"MQ_PASSWORD\"\n"
        ));
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.mechanism(), Ok(Mechanism::Plain));
        let ext = parse(&format!("{base}cert = \"c.pem\"\nkey = \"k.pem\"\n"));
        assert_eq!(ext.check(), Ok(()));
        assert_eq!(ext.mechanism(), Ok(Mechanism::External));
        let e = parse(base).check().expect_err("no login");
        assert!(e.contains("SASL PLAIN needs username"), "{e}");
        let e = parse(&format!("{base}username = \"u\"\n"))
            .check()
            .expect_err("no password");
        assert!(e.contains("needs a password"), "{e}");
        let e = parse(&format!(
            "{base}mechanism = \"external\"\ncert = \"c\"\nkey = \"k\"\nplain_tcp = true\n"
        ))
        .check()
        .expect_err("external without TLS");
        assert!(e.contains("needs TLS"), "{e}");
        let e = parse(&format!(
            "{base}username = \"u\"\npassword_env = \"P\"\nheaders = {{ x-scmb-appliance = \"x\" }}\n"
        ))
        .check()
        .expect_err("own header");
        assert!(e.contains("sets this header itself"), "{e}");
        let e = parse(&format!(
            "{base}username = \"u\"\npassword_env = \"P\"\nmechanism = \"kerberos\"\n"
        ))
        .check()
        .expect_err("mechanism");
        assert!(e.contains("relay.mechanism"), "{e}");
        let s = ok
            .settings(Some(Secret::new("pw")), "east", "ov.example.com")
            .expect("settings");
        assert_eq!((s.port, s.vhost.as_str(), s.declare), (5671, "/", None));
        let plain = parse(&format!(
            "{base}username = \"u\"\npassword_env = \"P\"\nplain_tcp = true\ndeclare = true\n"
        ))
        .settings(Some(Secret::new("pw")), "east", "ov")
        .expect("settings");
        assert_eq!((plain.port, plain.declare), (5672, Some("topic".into())));
    }

    #[test]
    fn the_example_is_valid_and_becomes_its_settings() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/relay.toml");
        let c = crate::config::Config::load(&path).expect("examples/relay.toml must stay valid");
        let table = c.appliances[0].relay.as_ref().expect("table");
        let r = table
            .settings(Some(Secret::new("pw")), "dc1", "oneview-dc1.example.com")
            .expect("settings");
        assert_eq!((r.port, r.prefix.as_str()), (5671, "dc1."));
        assert_eq!(r.mechanism, Mechanism::Plain);
        assert_eq!(r.url(), "amqps://mq.example.com:5671/");
    }
}
