//! Where and how to reach Service Manager: the base URL (the client appends `/SM/9/rest`), the
//! Basic-auth user and password, the TLS trust for `https://` and the per-request timeout.

use std::time::Duration;

use scmb_oneview::Secret;
use scmb_tls::{NameCheck, ServerTrust};

use crate::error::SmError;

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default SM user (the HPE sample's).
pub const DEFAULT_USER: &str = "falcon";
/// The port of SM's REST API when only a host is given (plain HTTP, as in the HPE sample).
pub const DEFAULT_PORT: u16 = 13080;
/// The path of the REST API under the base URL.
pub const REST_PATH: &str = "/SM/9/rest";

/// How to reach one Service Manager. `Debug` never shows the password.
#[derive(Clone, Debug)]
pub struct SmConfig {
    /// `http://host:13080` or `https://host:13443` (a path prefix of a reverse proxy is kept;
    /// a trailing `/` or `/SM/9/rest` is tolerated). No user or password in the URL.
    pub base_url: String,
    /// Basic-auth user (default `falcon`).
    pub user: String,
    pub password: Secret,
    /// For `https://`: what the server certificate is checked against (usually
    /// `ServerTrust::Ca` with the CA that signed SM's certificate). Ignored for `http://`.
    pub trust: ServerTrust,
    /// For `https://` with `ServerTrust::Ca`: [`NameCheck::Host`] (default) or
    /// [`NameCheck::Skip`] (chain only); another name is not supported.
    pub names: NameCheck,
    /// Timeout of every single request (connect, send, read the whole answer); default 30 s.
    pub timeout: Duration,
}

impl SmConfig {
    /// Defaults for `base_url`: user `falcon`, empty password, no CA, 30 s per request.
    pub fn new(base_url: impl Into<String>) -> SmConfig {
        SmConfig {
            base_url: base_url.into(),
            user: DEFAULT_USER.to_string(),
            password: Secret::default(),
            trust: ServerTrust::Ca(Vec::new()),
            names: NameCheck::Host,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// From what a user typed: `SMHOST` → `http://SMHOST:13080` (like the HPE sample),
    /// `SMHOST:PORT` → `http://SMHOST:PORT`, `[v6]:PORT` or a bare IPv6 address likewise; a
    /// full `http://` or `https://` URL is taken as it is.
    pub fn from_host(host: &str, user: impl Into<String>, password: impl Into<Secret>) -> SmConfig {
        let h = host.trim();
        let lower = h.to_ascii_lowercase();
        let base = if lower.starts_with("http://") || lower.starts_with("https://") {
            h.to_string()
        } else {
            let h = h.trim_end_matches('/');
            let has_port = if let Some(rest) = h.strip_prefix('[') {
                rest.split_once(']')
                    .is_some_and(|(_, p)| p.starts_with(':'))
            } else {
                h.matches(':').count() == 1
            };
            if h.matches(':').count() > 1 && !h.starts_with('[') {
                // A bare IPv6 address.
                format!("http://[{h}]:{DEFAULT_PORT}")
            } else if has_port {
                format!("http://{h}")
            } else {
                format!("http://{h}:{DEFAULT_PORT}")
            }
        };
        SmConfig {
            user: user.into(),
            password: password.into(),
            ..SmConfig::new(base)
        }
    }

    /// The checked base URL with `/SM/9/rest` appended, and whether it is HTTPS.
    pub(crate) fn rest_base(&self) -> Result<(String, bool), SmError> {
        let url = self.base_url.trim();
        let bad = |why: &str| SmError::Config(format!("Service Manager URL: {why}"));
        let lower = url.to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("https://") {
            (true, &url[8..])
        } else if lower.starts_with("http://") {
            (false, &url[7..])
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // Never echo the URL here: it might carry a password.
        if authority.contains('@') {
            return Err(bad(
                "must not carry a user or password (use the user and password settings)",
            ));
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad("no host name"));
        }
        if url.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
            return Err(bad(
                "expected scheme://host[:port][/prefix], without query or spaces",
            ));
        }
        let mut path = path.trim_end_matches('/');
        if path
            .to_ascii_lowercase()
            .ends_with(&REST_PATH.to_ascii_lowercase())
        {
            path = &path[..path.len() - REST_PATH.len()];
        }
        let scheme = if https { "https" } else { "http" };
        Ok((format!("{scheme}://{authority}{path}{REST_PATH}"), https))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(host: &str) -> String {
        SmConfig::from_host(host, "falcon", "pw").base_url
    }

    #[test]
    fn hosts_become_the_sample_url_and_urls_are_kept() {
        assert_eq!(base("smhost"), "http://smhost:13080");
        assert_eq!(base(" smhost/ "), "http://smhost:13080");
        assert_eq!(base("smhost:8080"), "http://smhost:8080");
        assert_eq!(base("10.0.0.5"), "http://10.0.0.5:13080");
        assert_eq!(base("[::1]:9000"), "http://[::1]:9000");
        assert_eq!(base("[::1]"), "http://[::1]:13080");
        assert_eq!(base("fe80::1"), "http://[fe80::1]:13080");
        assert_eq!(base("https://sm:13443"), "https://sm:13443");
        assert_eq!(base("HTTP://sm:1/"), "HTTP://sm:1/");
        let c = SmConfig::from_host("sm", "falcon", "pw");
        assert_eq!(c.user, "falcon");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(SmConfig::new("http://x").user, DEFAULT_USER);
    }

    #[test]
    fn rest_base_appends_the_api_path_once() {
        let rb = |u: &str| SmConfig::new(u).rest_base().map_err(|e| e.to_string());
        assert_eq!(
            rb("http://sm:13080"),
            Ok(("http://sm:13080/SM/9/rest".into(), false))
        );
        assert_eq!(
            rb("HTTPS://sm:13443/"),
            Ok(("https://sm:13443/SM/9/rest".into(), true))
        );
        assert_eq!(
            rb("http://sm/SM/9/rest/"),
            Ok(("http://sm/SM/9/rest".into(), false))
        );
        assert_eq!(
            rb("http://proxy/sm"),
            Ok(("http://proxy/sm/SM/9/rest".into(), false))
        );
        assert!(rb("ftp://sm").is_err());
        assert!(rb("http://").is_err());
        assert!(rb("http://sm?x=1").is_err());
        let e = rb("http://falcon:hunter2@sm").expect_err("credentials in the URL");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = SmConfig::from_host("sm", "falcon", "hunter2");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("falcon"), "{d}");
    }
}
