//! `[appliance.syslog]`: the syslog receiver an appliance's events go to, and the sink's
//! settings they amount to. Everything is checked when the file loads
//! ([`SyslogConfig::check`], one line naming the key); the TLS files are read when the sink
//! is built (a missing CA file is a one-line error at the start, and in `scmb check`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{
    Severity, SyslogSettings, Transport, DEFAULT_FACILITY, DEFAULT_SD_ID, FACILITIES, NAME,
};
use crate::duration::DurationValue;

/// `[appliance.syslog]`: send every admitted event to a syslog receiver as an RFC 5424
/// message (the alert's fields as structured data), over UDP, TCP or TLS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The receiver, `HOST:PORT` or `HOST` (then port 6514 for `tls`, 514 for `udp` and
    /// `tcp`), e.g. `"syslog.example.com:6514"`.
    pub address: String,
    /// `"tls"` (default: RFC 5425, TLS over TCP, the receiver's certificate verified),
    /// `"tcp"` (RFC 6587 octet counting, plain text) or `"udp"` (RFC 5426, one datagram per
    /// message, no delivery guarantee).
    #[serde(default)]
    pub transport: Transport,
    /// The syslog facility of every message: a name (`kern`, `user`, `mail`, `daemon`,
    /// `auth`, `syslog`, `lpr`, `news`, `uucp`, `cron`, `authpriv`, `ftp`, `ntp`, `audit`,
    /// `alert`, `clock`, `local0` ... `local7`) or its number (0 to 23). Default `"local0"`.
    pub facility: Option<FacilityValue>,
    /// The SD-ID of the structured data element carrying the alert's fields:
    /// `NAME@PEN`, with your organisation's IANA Private Enterprise Number. Default
    /// `"scmb@32473"` (32473 is the number RFC 5612 reserves for documentation: set your own
    /// in production).
    pub sd_id: Option<String>,
    /// Syslog severities for OneView severities, overriding the defaults (`Critical` →
    /// `crit`, `Warning` → `warning`, `OK` → `notice`, anything else → `info`; clears and
    /// deletions → `notice`), e.g. `{ Critical = "err" }`. Keys: `Critical`, `Warning`,
    /// `OK`, `Unknown`, `Cleared`; values: `emerg`, `alert`, `crit`, `err`, `warning`,
    /// `notice`, `info`, `debug`.
    #[serde(default)]
    pub severities: BTreeMap<String, String>,
    /// Also send the lifecycle of the alerts the filter admits (severity and alert type): their
    /// clears and deletions. Default false: admitted events only.
    #[serde(default)]
    pub lifecycle: bool,
    /// `tls` only: verify the receiver's certificate against this CA file (PEM) instead of
    /// the system's CA certificates.
    pub ca: Option<PathBuf>,
    /// `tls` only: the name the receiver's certificate must carry (and the SNI sent), when
    /// not the host of `address` (e.g. the receiver is reached by an IP address).
    pub server_name: Option<String>,
    /// `tls` only: a client certificate (PEM, its chain after it) presented to a receiver
    /// that asks for one (rsyslog's `x509/certvalid` or `x509/name`). Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// `tls` only: the client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1; keep
    /// it `chmod 600`). Needs `client_cert`.
    pub client_key: Option<PathBuf>,
    /// How long connecting (the TLS handshake included) or writing one message may take, e.g.
    /// `"10s"`. Default `"10s"`.
    pub timeout: Option<DurationValue>,
    /// Longest pause between retries while the receiver cannot be reached or the connection
    /// breaks, e.g. `"30s"`. Default `"30s"`.
    pub retry_cap: Option<DurationValue>,
}

/// A facility: its name or its number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FacilityValue {
    Number(u8),
    Name(String),
}

/// The OneView severities (and `Cleared`) `severities` may map.
const ONEVIEW_SEVERITIES: [&str; 5] = ["Critical", "Warning", "OK", "Unknown", "Cleared"];

/// Whether `id` is an SD-ID RFC 5424 allows us: `NAME@DIGITS`, printable US-ASCII without
/// `=`, space, `]` and `"`, at most 32 characters.
pub fn valid_sd_id(id: &str) -> bool {
    let Some((name, pen)) = id.split_once('@') else {
        return false;
    };
    id.len() <= 32
        && !name.is_empty()
        && !pen.is_empty()
        && pen.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !pen.starts_with('.')
        && id
            .bytes()
            .all(|b| (33..=126).contains(&b) && !b"= ]\"".contains(&b))
}

/// `HOST:PORT` (or `HOST`, `[V6]:PORT`) split, with the transport's default port.
pub fn split_address(address: &str, transport: Transport) -> Result<(String, u16), String> {
    let a = address.trim();
    let bad = || {
        format!(
            "{NAME}.address {a:?}: give HOST:PORT, e.g. \"syslog.example.com:{}\"",
            transport.default_port()
        )
    };
    if a.is_empty() {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => (a, None),
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(bad());
    }
    let port = match port {
        None => transport.default_port(),
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
    };
    Ok((host.to_string(), port))
}

impl SyslogConfig {
    /// The facility's number.
    pub fn facility(&self) -> Result<u8, String> {
        match &self.facility {
            None => Ok(DEFAULT_FACILITY),
            Some(FacilityValue::Number(n)) if *n <= 23 => Ok(*n),
            Some(FacilityValue::Number(n)) => Err(format!(
                "{NAME}.facility = {n}: give 0 to 23, or a name like \"local0\""
            )),
            Some(FacilityValue::Name(s)) => FACILITIES
                .iter()
                .position(|f| f.eq_ignore_ascii_case(s.trim()))
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| {
                    format!(
                        "{NAME}.facility {s:?} is not a facility: use one of {}, or 0 to 23",
                        FACILITIES.join(", ")
                    )
                }),
        }
    }

    /// The severity map, defaults overridden by `severities`.
    pub fn severity_map(&self) -> Result<BTreeMap<String, Severity>, String> {
        let mut map: BTreeMap<String, Severity> = [
            ("Critical", Severity::Crit),
            ("Warning", Severity::Warning),
            ("OK", Severity::Notice),
            ("Unknown", Severity::Info),
            ("Cleared", Severity::Notice),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in &self.severities {
            let Some(key) = ONEVIEW_SEVERITIES
                .iter()
                .find(|s| s.eq_ignore_ascii_case(k))
            else {
                return Err(format!(
                    "{NAME}.severities.{k}: not a OneView severity: use {}",
                    ONEVIEW_SEVERITIES.join(", ")
                ));
            };
            let sev = Severity::parse(v).ok_or_else(|| {
                format!(
                    "{NAME}.severities.{k} = {v:?}: use emerg, alert, crit, err, warning, notice, info or debug"
                )
            })?;
            map.insert((*key).to_string(), sev);
        }
        Ok(map)
    }

    fn duration(
        &self,
        key: &str,
        v: Option<&DurationValue>,
        default: Duration,
    ) -> Result<Duration, String> {
        let d = match v {
            Some(v) => v.resolve(&format!("{NAME}.{key}"))?,
            None => default,
        };
        if d.is_zero() {
            return Err(format!(
                "{NAME}.{key} must be above zero, e.g. \"{}\"",
                humantime::format_duration(default)
            ));
        }
        Ok(d)
    }

    /// Checks the table without reading anything: the address, the facility, the SD-ID, the
    /// severity map, the TLS keys against the transport, the durations.
    pub fn check(&self) -> Result<(), String> {
        split_address(&self.address, self.transport)?;
        self.facility()?;
        if let Some(id) = &self.sd_id {
            if !valid_sd_id(id) {
                return Err(format!(
                    "{NAME}.sd_id {id:?}: give NAME@PEN (your IANA Private Enterprise Number), printable ASCII without '=', ' ', ']' or '\"', at most 32 characters, e.g. \"{DEFAULT_SD_ID}\""
                ));
            }
        }
        self.severity_map()?;
        if self.transport != Transport::Tls {
            for (key, given) in [
                ("ca", self.ca.is_some()),
                ("server_name", self.server_name.is_some()),
                ("client_cert", self.client_cert.is_some()),
                ("client_key", self.client_key.is_some()),
            ] {
                if given {
                    return Err(format!(
                        "{NAME}.{key} is for transport = \"tls\" (this table's is {:?})",
                        self.transport.as_str()
                    ));
                }
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => {
                return Err(format!(
                    "{NAME}.client_cert needs client_key (its private key)"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{NAME}.client_key needs client_cert (its certificate)"
                ))
            }
            _ => {}
        }
        if let Some(n) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(n.trim()).is_err() {
                return Err(format!(
                    "{NAME}.server_name {n:?} is not a DNS name or an IP address"
                ));
            }
        }
        self.duration("timeout", self.timeout.as_ref(), Duration::from_secs(10))?;
        self.duration(
            "retry_cap",
            self.retry_cap.as_ref(),
            Duration::from_secs(30),
        )?;
        Ok(())
    }

    /// The sink's settings for the appliance `appliance` (its HOSTNAME).
    pub fn settings(&self, appliance: &str) -> Result<SyslogSettings, String> {
        let (host, port) = split_address(&self.address, self.transport)?;
        Ok(SyslogSettings {
            transport: self.transport,
            host,
            port,
            facility: self.facility()?,
            sd_id: self
                .sd_id
                .clone()
                .unwrap_or_else(|| DEFAULT_SD_ID.to_string()),
            severities: self.severity_map()?,
            lifecycle: self.lifecycle,
            ca: self.ca.clone(),
            server_name: self.server_name.as_ref().map(|s| s.trim().to_string()),
            client: self.client_cert.clone().zip(self.client_key.clone()),
            timeout: self.duration("timeout", self.timeout.as_ref(), Duration::from_secs(10))?,
            retry_cap: self.duration(
                "retry_cap",
                self.retry_cap.as_ref(),
                Duration::from_secs(30),
            )?,
            appliance: appliance.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse(table: &str) -> Result<Config, ConfigError> {
        std::env::set_var("SCMB_TEST_SYSLOG_OV", "admin123");
        let text = format!(
            "[[appliance]]\nname = \"east\"\naddress = \"oneview-east.example.com\"\npassword_env = \"SCMB_TEST_SYSLOG_OV\"\n[appliance.syslog]\n{table}"
        );
        Config::parse(&text, Path::new("scmb.toml"))
    }

    fn err(table: &str) -> String {
        let e = parse(table).expect_err(table).to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn an_address_alone_is_a_tls_sink_with_the_documented_defaults() {
        let c = parse("address = \"syslog.example.com\"\n").expect("parse");
        let s = c.appliances[0].settings(Path::new("/s")).expect("settings");
        assert!(!s.sinks.tickets(), "no catch-up of every active alert");
        let sl = s.sinks.syslog.expect("syslog");
        assert_eq!(sl.transport, Transport::Tls);
        assert_eq!((sl.host.as_str(), sl.port), ("syslog.example.com", 6514));
        assert_eq!(sl.facility, 16, "local0");
        assert_eq!(sl.sd_id, "scmb@32473");
        assert_eq!(sl.severities["Critical"], Severity::Crit);
        assert_eq!(sl.severities["OK"], Severity::Notice);
        assert_eq!(sl.timeout, Duration::from_secs(10));
        assert_eq!(sl.retry_cap, Duration::from_secs(30));
        assert_eq!(sl.appliance, "east");
        assert!(!sl.lifecycle && sl.ca.is_none() && sl.client.is_none());
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"address = "[::1]:1514"
transport = "tcp"
facility = 4
sd_id = "oneview@11"
severities = { critical = "err", Cleared = "info" }
lifecycle = true
timeout = "2s"
retry_cap = "1s"
"#,
        )
        .expect("parse");
        let sl = c.appliances[0]
            .settings(Path::new("/s"))
            .expect("settings")
            .sinks
            .syslog
            .expect("syslog");
        assert_eq!((sl.host.as_str(), sl.port), ("::1", 1514));
        assert_eq!(sl.facility, 4);
        assert_eq!(sl.sd_id, "oneview@11");
        assert_eq!(sl.severities["Critical"], Severity::Err);
        assert_eq!(sl.severities["Cleared"], Severity::Info);
        assert!(sl.lifecycle);
        assert_eq!(sl.timeout, Duration::from_secs(2));
        let udp = parse("address = \"10.0.0.1\"\ntransport = \"udp\"\nfacility = \"LOCAL7\"\n")
            .expect("parse");
        let sl = udp.appliances[0]
            .settings(Path::new("/s"))
            .expect("settings")
            .sinks
            .syslog
            .expect("syslog");
        assert_eq!((sl.port, sl.facility), (514, 23));
    }

    #[test]
    fn mistakes_in_the_table_are_refused_naming_the_setting() {
        for (table, needle) in [
            ("address = \"\"\n", "syslog.address"),
            ("address = \"h:0\"\n", "syslog.address"),
            ("address = \"h:99999\"\n", "syslog.address"),
            ("address = \"tcp://h:514\"\n", "syslog.address"),
            ("address = \"h\"\ntransport = \"relp\"\n", "relp"),
            ("address = \"h\"\nfacility = 24\n", "syslog.facility"),
            (
                "address = \"h\"\nfacility = \"local9\"\n",
                "syslog.facility",
            ),
            ("address = \"h\"\nsd_id = \"oneview\"\n", "syslog.sd_id"),
            ("address = \"h\"\nsd_id = \"one view@1\"\n", "syslog.sd_id"),
            (
                "address = \"h\"\nseverities = { Major = \"err\" }\n",
                "syslog.severities.Major",
            ),
            (
                "address = \"h\"\nseverities = { Critical = \"fatal\" }\n",
                "syslog.severities.Critical",
            ),
            (
                "address = \"h\"\ntransport = \"udp\"\nca = \"/ca.pem\"\n",
                "syslog.ca is for transport = \"tls\"",
            ),
            (
                "address = \"h\"\nclient_cert = \"/c.pem\"\n",
                "client_cert needs client_key",
            ),
            ("address = \"h\"\nserver_name = \"a b\"\n", "server_name"),
            ("address = \"h\"\ntimeout = \"0s\"\n", "syslog.timeout"),
            (
                "address = \"h\"\nretry_cap = \"soon\"\n",
                "syslog.retry_cap",
            ),
            ("address = \"h\"\nport = 514\n", "port"),
        ] {
            let e = err(table);
            assert!(e.contains(needle), "{table:?}: {e}");
        }
    }

    #[test]
    fn sd_ids_follow_rfc_5424() {
        assert!(valid_sd_id("scmb@32473"));
        assert!(valid_sd_id("oneview@11.2"));
        assert!(!valid_sd_id("oneview"));
        assert!(!valid_sd_id("a@"));
        assert!(!valid_sd_id("@1"));
        assert!(!valid_sd_id("a=b@1"));
        assert!(!valid_sd_id("a]@1"));
        assert!(!valid_sd_id(&format!("{}@1", "x".repeat(31))));
    }

    #[test]
    fn the_syslog_example_is_valid_and_becomes_its_settings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/syslog.toml");
        let c = Config::load(&path).expect("examples/syslog.toml must stay valid");
        let table = c.appliances[0].syslog.as_ref().expect("table");
        let sl = table.settings("dc1").expect("settings");
        assert_eq!(sl.transport, Transport::Tls);
        assert!(sl.ca.is_some());
    }
}
