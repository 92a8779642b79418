//! Stage two of the settings: what runs. The command lines (`crate::flags`) and the config
//! file (`crate::config`) each produce these same plain types; everything below the commands
//! (bootstrap, the pipeline, the sinks) takes them and nothing else. No clap here, no TOML,
//! and no password in the clear: a [`Password`] says where to read it when it is needed.

use std::path::PathBuf;
use std::time::Duration;

use scmb_bus::BusConfig;
use scmb_model::Filter;
use scmb_tls::NameCheck;

use crate::duration::LookBack;
use crate::password::Password;
use crate::sinks::SinkSettings;

/// The default OneView user, as in the HPE sample.
pub const DEFAULT_USER: &str = "Administrator";

/// One appliance's REST API: where, who, and how its certificate is trusted.
#[derive(Debug, Clone)]
pub struct Rest {
    /// `HOST` or `HOST:PORT`.
    pub host: String,
    pub user: String,
    pub password: Password,
    /// Login domain (none: the appliance's default, LOCAL).
    pub login_domain: Option<String>,
    /// Where the certificates and the pinned REST fingerprint live.
    pub cert_dir: PathBuf,
    /// The name the appliance's certificates must carry, when not the host.
    pub server_name: Option<String>,
    /// Verify the REST certificate against this CA file.
    pub ca: Option<PathBuf>,
    /// Pin the REST certificate to this SHA-256 fingerprint (as typed; checked at login).
    pub fingerprint: Option<String>,
    /// Do not verify the REST certificate at all (loudly warned about).
    pub insecure: bool,
    /// Accept the EULA when the appliance asks, like the HPE sample.
    pub accept_eula: bool,
}

/// How to reach the message bus and what to consume.
#[derive(Debug, Clone)]
pub struct Bus {
    pub config: BusConfig,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most bytes of messages held at once: the pipeline lowers the prefetch until
    /// prefetch × `max_message_bytes` fits.
    pub max_in_flight_bytes: usize,
    /// Download the certificates again when the broker refuses the ones on disk.
    pub auto_bootstrap: bool,
    /// On a stop, how long work in hand may take to finish; the rest stays unacked.
    pub drain: Duration,
}

/// The default budget for the bytes of messages held at once (delivered, not finished).
/// 256 messages of the default 4 MiB limit: 4 × 64 lanes, the most `ov_to_sm`'s storms were
/// measured with (64 sent ahead slowed 64 lanes from 1.41× to 1.57× their floor).
pub const DEFAULT_IN_FLIGHT_BYTES: usize = 1 << 30;

/// The default drain time: well below systemd's default `TimeoutStopSec` (90 s).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// What the bus settings are made of, from a flag or a config key each.
#[derive(Debug, Clone)]
pub struct BusChoices {
    pub routes: Vec<String>,
    pub port: u16,
    /// Check the broker certificate's name (false: the chain only).
    pub verify_hostname: bool,
    pub heartbeat: Duration,
    pub prefetch: u16,
    pub queue: Option<String>,
    pub max_message_bytes: usize,
    pub max_in_flight_bytes: usize,
    pub auto_bootstrap: bool,
    pub drain: Duration,
}

impl Bus {
    /// How many messages of the largest size fit the bytes-in-flight budget (at least 1).
    pub fn prefetch_that_fits(&self) -> u16 {
        (self.max_in_flight_bytes / self.max_message_bytes.max(1)).clamp(1, 65535) as u16
    }

    /// The bus of the appliance `rest` names, on the same host.
    pub fn new(rest: &Rest, c: BusChoices) -> Bus {
        let mut bus = BusConfig::new(bus_host(&rest.host), &rest.cert_dir);
        bus.port = c.port;
        bus.names = match (&rest.server_name, c.verify_hostname) {
            (Some(n), _) => NameCheck::Name(n.clone()),
            (None, false) => NameCheck::Skip,
            (None, true) => NameCheck::Host,
        };
        bus.heartbeat = c.heartbeat.as_secs().min(u16::MAX as u64) as u16;
        bus.prefetch = c.prefetch.max(1);
        if !c.routes.is_empty() {
            bus.routes = c.routes;
        }
        bus.queue = c.queue;
        Bus {
            config: bus,
            max_message_bytes: c.max_message_bytes,
            max_in_flight_bytes: c.max_in_flight_bytes,
            auto_bootstrap: c.auto_bootstrap,
            drain: c.drain,
        }
    }
}

/// Everything one pipeline runs with: one appliance, its filter, its catch-up and its sinks.
#[derive(Debug, Clone)]
pub struct Appliance {
    /// The appliance's name on every output line (`scmb run`); none for a single appliance.
    pub label: Option<String>,
    pub rest: Rest,
    pub bus: Bus,
    /// Checked already (see `crate::config::FilterConfig::filter`).
    pub filter: Filter,
    /// Catch up over REST after every (re)connect (a ticketing sink always does).
    pub catch_up: bool,
    /// How far back the first start catches up.
    pub look_back: LookBack,
    /// Alerts worked on in parallel.
    pub lanes: usize,
    /// REST keep-alive interval while idle.
    pub keep_alive: Option<Duration>,
    pub sinks: SinkSettings,
    /// The store file; needed by a catch-up and by ticketing.
    pub store: Option<PathBuf>,
    /// Log in to REST at start even when nothing needs it yet: a service proves its
    /// credentials when it starts, not at the first alert.
    pub login_at_start: bool,
}

/// The bus host is the appliance host without any REST port.
pub fn bus_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_host_drops_the_rest_port() {
        assert_eq!(bus_host("oneview.example:8443"), "oneview.example");
        assert_eq!(bus_host("10.0.0.5"), "10.0.0.5");
        assert_eq!(bus_host("[::1]:443"), "::1");
        assert_eq!(bus_host("fe80::1"), "fe80::1");
    }
}
