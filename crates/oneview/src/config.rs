//! Where and how to reach an appliance: the host (and port), the TLS trust policy, the
//! per-request timeout and the highest API version we speak; and the HTTPS client built from
//! them (rustls through `scmb-tls`, `--tls-server-name` done by pinning DNS resolution).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use scmb_tls::{NameCheck, ServerTrust};

use crate::error::OneViewError;

/// The highest API version this client knows (SPEC §1.2: 8200 ≈ OneView 11.x).
pub const MAX_API_VERSION: u32 = 8200;

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach one appliance.
#[derive(Clone, Debug)]
pub struct Config {
    /// `host` or `host:port` (IPv6 as `[addr]:port`); the port defaults to 443. An `https://`
    /// prefix and a trailing `/` are tolerated.
    pub host: String,
    pub trust: ServerTrust,
    pub names: NameCheck,
    /// Timeout of every single request (connect, send, read the whole answer).
    pub timeout: Duration,
    /// The highest API version to use; the appliance's `currentVersion` may lower it.
    pub max_api_version: u32,
}

impl Config {
    /// Defaults: name check against the host, 30 s per request, API version up to 8200.
    pub fn new(host: impl Into<String>, trust: ServerTrust) -> Config {
        Config {
            host: host.into(),
            trust,
            names: NameCheck::Host,
            timeout: DEFAULT_TIMEOUT,
            max_api_version: MAX_API_VERSION,
        }
    }
}

/// A parsed `host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, OneViewError> {
        let bad = |why: &str| OneViewError::Config(format!("host {s:?}: {why}"));
        let mut t = s.trim();
        for prefix in ["https://", "HTTPS://"] {
            if let Some(rest) = t.strip_prefix(prefix) {
                t = rest;
            }
        }
        let t = t.trim_end_matches('/');
        if t.is_empty() {
            return Err(bad("empty"));
        }
        if t.contains('/') || t.contains('@') || t.chars().any(char::is_whitespace) {
            return Err(bad("expected host or host:port"));
        }
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let p = match after {
                "" => 443,
                a => a
                    .strip_prefix(':')
                    .and_then(port)
                    .ok_or_else(|| bad("invalid port"))?,
            };
            return Ok(Target {
                host: h.to_string(),
                port: p,
            });
        }
        if t.matches(':').count() > 1 {
            // A bare IPv6 address.
            return Ok(Target {
                host: t.to_string(),
                port: 443,
            });
        }
        match t.split_once(':') {
            Some((h, p)) if !h.is_empty() => Ok(Target {
                host: h.to_string(),
                port: port(p).ok_or_else(|| bad("invalid port"))?,
            }),
            Some(_) => Err(bad("empty host name")),
            None => Ok(Target {
                host: t.to_string(),
                port: 443,
            }),
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` as shown to users (IPv6 bracketed).
    pub fn display(&self) -> String {
        match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The HTTPS client for `cfg` and the base URL to put paths after.
pub(crate) async fn http_client(
    cfg: &Config,
    target: &Target,
) -> Result<(reqwest::Client, String), OneViewError> {
    let tls = scmb_tls::client_config(&cfg.trust, &cfg.names, None)
        .map_err(|e| OneViewError::Config(e.to_string()))?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        // The `Auth` header is ours, reqwest would carry it along a redirect to another host.
        .redirect(reqwest::redirect::Policy::none())
        // Appliances are reached directly; a proxy would also defeat the name pinning below.
        .no_proxy()
        .user_agent(concat!("scmb/", env!("CARGO_PKG_VERSION")));
    let base = match &cfg.names {
        NameCheck::Name(name) if !name.eq_ignore_ascii_case(&target.host) => {
            // The certificate must carry `name`: dial the real address under that name, so
            // that SNI and the name check both use it.
            if name.parse::<IpAddr>().is_ok() || name.is_empty() || name.contains([':', '/']) {
                return Err(OneViewError::Config(format!(
                    "the TLS server name {name:?} must be a DNS name"
                )));
            }
            // URL hosts are lower-cased, and the override is looked up by the URL's host.
            let name = name.to_ascii_lowercase();
            let addrs = resolve(target).await?;
            builder = builder.resolve_to_addrs(&name, &addrs);
            format!("https://{name}:{}", target.port)
        }
        _ => format!("https://{}", target.display()),
    };
    let client = builder
        .build()
        .map_err(|e| OneViewError::Config(format!("cannot build the HTTPS client: {e}")))?;
    Ok((client, base))
}

async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, OneViewError> {
    if let Some(ip) = target.ip() {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    let unreachable =
        |source: Box<dyn std::error::Error + Send + Sync>| OneViewError::Unreachable {
            host: target.display(),
            source,
        };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| unreachable(Box::new(e)))?
        .collect();
    if addrs.is_empty() {
        return Err(unreachable("the name resolves to no address".into()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_with_and_without_ports() {
        let t = |s: &str| Target::parse(s).map(|t| (t.host, t.port)).ok();
        assert_eq!(t("ov.example.com"), Some(("ov.example.com".into(), 443)));
        assert_eq!(t("10.0.0.1:8443"), Some(("10.0.0.1".into(), 8443)));
        assert_eq!(t("https://ov:444/"), Some(("ov".into(), 444)));
        assert_eq!(t("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(t("[::1]"), Some(("::1".into(), 443)));
        assert_eq!(t("fe80::1"), Some(("fe80::1".into(), 443)));
        assert_eq!(t(""), None);
        assert_eq!(t("ov:0"), None);
        assert_eq!(t("ov:http"), None);
        assert_eq!(t(":443"), None);
        assert_eq!(t("ov/rest"), None);
        assert_eq!(
            Target::parse("[::1]:9").map(|t| t.display()).ok(),
            Some("[::1]:9".into())
        );
    }
}
