//! The HTTP client of the sinks that call a SaaS API over the internet (PagerDuty's Events
//! API, ServiceNow's Table API): one way to build it from a sink's settings, one way
//! to send a request and read its answer, and **one** retry classification for all of them.
//!
//! What a sink gets:
//! - TLS (rustls + ring, TLS 1.2+) verified against the system's CA certificates (read once
//!   per process with `rustls-native-certs`, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`),
//!   or against a CA file of its own (`ca`: a TLS-inspecting proxy's, a private PKI), or — only
//!   when asked with `insecure = true`, warned about loudly — not at all.
//! - Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (curl's rules, upper or
//!   lower case) are honoured by default — reqwest reads them unless a proxy is set on the
//!   client or proxies are turned off, which only `proxy` does: a URL there is used for every
//!   request and the environment is ignored; `proxy = "none"` goes direct whatever it says.
//! - A per-request timeout (`timeout`), the answer's body included; no redirects followed.
//! - [`HttpError`] (typed, one line each, with the setting to fix where one is at fault) and
//!   [`classify`]: 2xx is [`Decision::Ok`]; 408, 429 and 5xx except 501 are
//!   [`Decision::Retry`], after the server's `Retry-After` (seconds or an HTTP date, at most
//!   [`MAX_RETRY_AFTER`]) when it sent one, else after the caller's backoff; a refused
//!   connection or a timeout too; 401, 403, 407, a redirect and an untrusted certificate are
//!   [`Decision::Pause`] (an operator must fix a setting: keep the work, stop hammering);
//!   anything else is [`Decision::Fail`], for good. [`HttpError::may_have_acted`] tells a
//!   request the server may have carried out (sent, and no usable answer: a timeout or a
//!   connection lost after sending, a 5xx but 501, a 2xx whose body could not be read) from
//!   one it surely did not (never connected, refused with a 4xx, or a 501: not implemented).
//!
//! The client never retries by itself: only the sink knows whether sending a change again is
//! safe (PagerDuty's dedup key makes it so; a create elsewhere may need a lookup first).
//! Secrets given to [`HttpClient::new`] are scrubbed from every answer kept in an error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use reqwest::Method;
use rustls::pki_types::CertificateDer;
use scmb_oneview::diagnostics::{chain, find_rustls, snippet};
use scmb_oneview::Secret;
use serde_json::Value;

use crate::duration::DurationValue;

/// The longest `Retry-After` honoured: a server asking for more is asked again after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The request timeout when a sink's table does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a sink's HTTPS certificates are verified against.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's CA certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
    System,
    /// The certificates of this CA file (`ca`).
    Ca {
        path: PathBuf,
        certs: Vec<CertificateDer<'static>>,
    },
    /// Nothing (`insecure = true`): warned about at start.
    Insecure,
}

/// Which proxy a sink's requests go through.
#[derive(Debug, Clone, PartialEq)]
pub enum Proxy {
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` with `NO_PROXY`'s exceptions, when set.
    Environment,
    /// None, whatever the environment says (`proxy = "none"`).
    Direct,
    /// This one for every request (`proxy = "http://proxy.example.com:3128"`), the environment
    /// ignored. A secret: its URL may carry a user and password.
    Url(Secret),
}

/// How a sink talks HTTP: trust, proxy, timeout.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub trust: Trust,
    pub proxy: Proxy,
    /// How long one request may take, its answer included.
    pub timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            trust: Trust::System,
            proxy: Proxy::Environment,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The `proxy` key: `None` (absent) is the environment's; `"none"` is direct.
pub fn parse_proxy(sink: &str, value: Option<&str>) -> Result<Proxy, String> {
    match value.map(str::trim) {
        None => Ok(Proxy::Environment),
        Some("none") => Ok(Proxy::Direct),
        Some("") => Err(format!(
            "{sink}.proxy is empty: give a proxy URL like \"http://proxy.example.com:3128\", \"none\" to go direct, or leave it out to use $HTTPS_PROXY/$HTTP_PROXY"
        )),
        Some(url) => {
            // reqwest's own check, so that what is accepted here also works there; the
            // message never shows the URL (it may carry a password).
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                format!("{sink}.proxy is not a URL ({e}): write it like \"http://proxy.example.com:3128\"")
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "{sink}.proxy must be an http:// or https:// URL with a host, like \"http://proxy.example.com:3128\""
                ));
            }
            Ok(Proxy::Url(Secret::new(url)))
        }
    }
}

impl HttpSettings {
    /// From a sink's `ca`, `insecure`, `proxy` and `timeout` keys (reading the CA file now);
    /// `sink` names them in errors.
    pub fn from_keys(
        sink: &str,
        ca: Option<&Path>,
        insecure: bool,
        proxy: Option<&str>,
        timeout: Option<&DurationValue>,
    ) -> Result<HttpSettings, String> {
        let trust = match (ca, insecure) {
            (Some(_), true) => return Err(format!("{sink}: give ca or insecure = true, not both")),
            (Some(path), false) => Trust::Ca {
                path: path.to_path_buf(),
                certs: scmb_tls::load_certs(path).map_err(|e| format!("{sink}.ca: {e}"))?,
            },
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        };
        Ok(HttpSettings {
            trust,
            proxy: parse_proxy(sink, proxy)?,
            timeout: check_timeout(sink, timeout)?,
        })
    }
}

/// The `timeout` key, checked: above zero.
pub fn check_timeout(sink: &str, timeout: Option<&DurationValue>) -> Result<Duration, String> {
    let t = match timeout {
        Some(v) => v.resolve(&format!("{sink}.timeout"))?,
        None => DEFAULT_TIMEOUT,
    };
    if t.is_zero() {
        return Err(format!("{sink}.timeout must be above zero, e.g. \"30s\""));
    }
    Ok(t)
}

/// What to do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It worked (2xx).
    Ok,
    /// Try again: after `after` when the server said so (`Retry-After`), else after the
    /// caller's backoff.
    Retry { after: Option<Duration> },
    /// Refused credentials, rights, proxy credentials or certificate: nothing changes until an
    /// operator fixes a setting (the error's message names it). Keep the work and pause.
    Pause,
    /// This request will never succeed as sent: give up on it.
    Fail,
}

/// The one rule for an HTTP status: 2xx ok; 408, 429 and 5xx except 501 retry (after
/// `retry_after` when the server gave one); 401, 403 and 407 pause, and so does a redirect
/// (the URL setting is wrong: no alert should be given up for it); the rest fail for good.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Decision {
    match status {
        200..=299 => Decision::Ok,
        300..=399 => Decision::Pause,
        408 | 429 => Decision::Retry { after: retry_after },
        401 | 403 | 407 => Decision::Pause,
        // Not Implemented: the same request can never work.
        501 => Decision::Fail,
        500..=599 => Decision::Retry { after: retry_after },
        _ => Decision::Fail,
    }
}

/// What to do after a request, whatever came back.
pub fn classify(result: &Result<Answer, HttpError>) -> Decision {
    match result {
        Ok(a) => classify_status(a.status, a.retry_after),
        Err(e) => e.decision(),
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date already past is zero), at
/// most [`MAX_RETRY_AFTER`]. `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a long time".
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// How long to wait before trying again: the server's `Retry-After` when it gave one, else the
/// loop's next backoff delay. The retry is counted either way.
pub fn retry_delay(after: Option<Duration>, backoff: &mut crate::retry::Backoff) -> Duration {
    let d = backoff.next_delay();
    after.unwrap_or(d)
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    /// The server's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// What the answer says, in one short line: an API's `message` and `errors` (PagerDuty),
    /// or `error.message` and `error.detail` (ServiceNow), else the first 200 characters of
    /// the body (HTML reduced to its text).
    pub fn describe(&self) -> String {
        if let Some(v) = self.json() {
            fn s(v: Option<&Value>) -> Option<&str> {
                v.and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            }
            let mut parts: Vec<String> = Vec::new();
            let err = v.get("error").filter(|e| e.is_object());
            for p in [
                s(v.get("message")),
                s(err.and_then(|e| e.get("message"))),
                s(err.and_then(|e| e.get("detail"))),
            ]
            .into_iter()
            .flatten()
            {
                parts.push(p.to_string());
            }
            if let Some(list) = v.get("errors").and_then(Value::as_array) {
                let items: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                if !items.is_empty() {
                    parts.push(items.join("; "));
                }
            }
            if !parts.is_empty() {
                return parts.join(": ");
            }
        }
        snippet(&self.body, self.content_type.as_deref())
    }
}

/// Anything that goes wrong with one request. None of them carries a secret: answers are
/// scrubbed of the client's secrets, and a proxy's URL is never shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The settings cannot work (a bad URL, no system CA certificates, ...).
    #[error("invalid {sink} settings: {message}")]
    Config { sink: &'static str, message: String },
    /// Never sent: connection refused, no route, no such host, or the connection (or the
    /// proxy's) not made within the timeout.
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The TLS handshake failed (an untrusted or mismatched certificate, not TLS at all):
    /// `fix` says which setting to change.
    #[error("TLS with {url} failed: {detail}; {fix}")]
    Tls {
        url: String,
        detail: String,
        fix: String,
    },
    /// Sent, and no answer within the timeout: the server may have acted on it.
    #[error("{request}: no answer within {}", humantime::format_duration(*after))]
    Timeout { request: String, after: Duration },
    /// Sent, and the connection was lost before the answer: the server may have acted on it.
    #[error("{request}: the connection was lost before the answer: {detail}")]
    Lost { request: String, detail: String },
    /// An answer that is not a success (the status decides, see [`classify_status`]).
    #[error("{request} answered HTTP {}: {}{}", answer.status, answer.describe(), fix.as_deref().map(|f| format!("; {f}")).unwrap_or_default())]
    Status {
        request: String,
        answer: Answer,
        /// For a redirect, 401, 403 and 407: the setting to fix.
        fix: Option<String>,
    },
    /// The status line came but the body could not be read whole.
    #[error("{request} answered HTTP {status} but its body could not be read: {detail}")]
    Unreadable {
        request: String,
        status: u16,
        detail: String,
    },
}

impl HttpError {
    /// What to do about it (see [`classify`]).
    pub fn decision(&self) -> Decision {
        match self {
            HttpError::Config { .. } => Decision::Fail,
            HttpError::Tls { .. } => Decision::Pause,
            HttpError::Connect { .. }
            | HttpError::Timeout { .. }
            | HttpError::Lost { .. }
            | HttpError::Unreadable { .. } => Decision::Retry { after: None },
            HttpError::Status { answer, .. } => {
                match classify_status(answer.status, answer.retry_after) {
                    // Not an error: never built from a 2xx.
                    Decision::Ok => Decision::Fail,
                    d => d,
                }
            }
        }
    }

    /// Whether the server may have carried the request out although this came back: it was
    /// sent and no usable answer came (a timeout or a connection lost after sending, a 5xx
    /// but 501, a 2xx whose body could not be read). False when it surely did not (never
    /// connected, the handshake failed, a 4xx refused it, or a 501 said it cannot).
    pub fn may_have_acted(&self) -> bool {
        match self {
            HttpError::Config { .. } | HttpError::Connect { .. } | HttpError::Tls { .. } => false,
            HttpError::Timeout { .. } | HttpError::Lost { .. } => true,
            HttpError::Unreadable { status, .. } => {
                (200..300).contains(status) || (500..600).contains(status)
            }
            // Not Implemented: the server did nothing with it.
            HttpError::Status { answer, .. } => {
                (500..600).contains(&answer.status) && answer.status != 501
            }
        }
    }

    /// The status of an answer, when one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { answer, .. } => Some(answer.status),
            HttpError::Unreadable { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The setting an operator must fix, for a refused certificate or credentials.
    pub fn fix(&self) -> Option<&str> {
        match self {
            HttpError::Tls { fix, .. } => Some(fix),
            HttpError::Status { fix, .. } => fix.as_deref(),
            _ => None,
        }
    }

    /// The answer, when a whole one came.
    pub fn answer(&self) -> Option<&Answer> {
        match self {
            HttpError::Status { answer, .. } => Some(answer),
            _ => None,
        }
    }

    /// The exit code `scmb check` and a start-up check report it with.
    pub fn failure_code(&self) -> u8 {
        use crate::failure;
        match self {
            HttpError::Config { .. } => failure::USAGE,
            HttpError::Tls { .. } => failure::TLS,
            HttpError::Connect { .. }
            | HttpError::Timeout { .. }
            | HttpError::Lost { .. }
            | HttpError::Unreadable { .. } => failure::UNREACHABLE,
            HttpError::Status { answer, .. } => match answer.status {
                401 | 403 | 407 => failure::AUTH,
                300..=399 => failure::USAGE,
                408 | 429 | 500..=599 => failure::UNREACHABLE,
                _ => failure::API,
            },
        }
    }
}

/// A sink's HTTP client: cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `scheme://host[:port][/prefix]`, without a trailing slash.
    base: String,
    sink: &'static str,
    /// The key of the sink's table that holds `base` (`url`; ServiceNow's `instance`), named
    /// in the errors and warnings about it.
    url_key: &'static str,
    timeout: Duration,
    /// What the certificate is checked against, for the health check's line.
    trust: String,
    /// Said when the server refuses our credentials (401, 403).
    credentials_fix: String,
    /// Scrubbed from every answer kept in an error.
    secrets: Vec<Secret>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("sink", &self.inner.sink)
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// The system's CA certificates, read once per process (a hundred appliances share them).
pub(crate) fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "no usable CA certificate found on this system{}: install the ca-certificates package, set $SSL_CERT_FILE, or give the sink's ca",
                    if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

fn verifying_config(roots: Arc<rustls::RootCertStore>) -> Result<rustls::ClientConfig, String> {
    Ok(
        rustls::ClientConfig::builder_with_provider(scmb_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Whether `host` is this machine (plain HTTP to it does not travel).
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A failed handshake in words that say what to change.
fn tls_detail(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            format!("the certificate is not signed by a trusted CA ({e})")
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!("the certificate does not carry the host name of the URL ({e})")
        }
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => format!("the certificate is outside its validity period ({e}); check the clocks"),
        rustls::Error::InvalidMessage(_) => {
            format!("the server does not speak TLS there ({e}); is the URL http:// rather than https://?")
        }
        _ => e.to_string(),
    }
}

impl HttpClient {
    /// Builds the client for `base` (an `http://` or `https://` URL) with `settings`; no I/O
    /// but reading the system's CA certificates the first time one is needed. `credentials_fix`
    /// names the settings to fix when the server refuses our credentials (401/403); `secrets`
    /// are scrubbed from every answer kept in an error. Logs a loud warning for
    /// `insecure`, and for plain HTTP beyond this machine.
    pub fn new(
        sink: &'static str,
        base: &str,
        settings: &HttpSettings,
        credentials_fix: impl Into<String>,
        secrets: Vec<Secret>,
    ) -> Result<HttpClient, HttpError> {
        HttpClient::with_url_key(sink, "url", base, settings, credentials_fix, secrets)
    }

    /// [`HttpClient::new`] for a sink whose table names its base URL otherwise than `url`
    /// (`url_key`: ServiceNow's `instance`), so that errors name the right key.
    pub fn with_url_key(
        sink: &'static str,
        url_key: &'static str,
        base: &str,
        settings: &HttpSettings,
        credentials_fix: impl Into<String>,
        secrets: Vec<Secret>,
    ) -> Result<HttpClient, HttpError> {
        let config = |message: String| HttpError::Config { sink, message };
        let url = reqwest::Url::parse(base.trim())
            .map_err(|e| config(format!("{sink}.{url_key} {base:?} is not a URL: {e}")))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(config(format!(
                "{sink}.{url_key} must be https:// (or http:// for a test server), not {other}://"
            )))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| config(format!("{sink}.{url_key} {base:?} has no host")))?
            .to_string();
        if settings.timeout.is_zero() {
            return Err(config(format!("{sink}.timeout must be above zero")));
        }
        let (tls, trust) = match &settings.trust {
            Trust::Insecure => {
                tracing::warn!(
                    sink,
                    url = %base,
                    "{sink}.insecure = true: the TLS certificate is NOT verified; anyone on the path can read what is sent (keys included) and answer in the server's name"
                );
                (
                    scmb_tls::client_config(
                        &scmb_tls::ServerTrust::Insecure,
                        &scmb_tls::NameCheck::Skip,
                        None,
                    )
                    .map_err(|e| config(e.to_string()))?,
                    "NOT verified (insecure)".to_string(),
                )
            }
            Trust::Ca { path, certs } => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| config(format!("{sink}.ca {}: {e}", path.display())))?;
                }
                (
                    verifying_config(Arc::new(roots)).map_err(config)?,
                    format!("verified against {}", path.display()),
                )
            }
            // Read even for an http:// URL: a proxy reached over https:// needs them too. Only
            // plain HTTP does without them, on a system that has none.
            Trust::System => {
                let roots = match system_roots() {
                    Ok(r) => r,
                    Err(_) if !https => Arc::new(rustls::RootCertStore::empty()),
                    Err(e) => return Err(config(e)),
                };
                (
                    verifying_config(roots).map_err(config)?,
                    "verified against the system's CA certificates".to_string(),
                )
            }
        };
        if !https && !is_loopback(&host) {
            tracing::warn!(
                sink,
                url = %base,
                "{sink}.{url_key} is plain http:// to another machine: what is sent (keys included) travels unencrypted"
            );
        }
        let mut b = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // An API never redirects a client that sends secrets; a redirect is an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("scmb/", env!("CARGO_PKG_VERSION")));
        b = match &settings.proxy {
            // reqwest reads HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY itself unless a
            // proxy is set or proxies are turned off.
            Proxy::Environment => b,
            Proxy::Direct => b.no_proxy(),
            Proxy::Url(u) => b.proxy(
                reqwest::Proxy::all(u.expose())
                    .map_err(|_| config(format!("{sink}.proxy is not a usable proxy URL")))?,
            ),
        };
        let http = b
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpClient {
            inner: Arc::new(Inner {
                http,
                base: base.trim().trim_end_matches('/').to_string(),
                sink,
                url_key,
                timeout: settings.timeout,
                trust: if https {
                    format!("TLS {trust}")
                } else {
                    "plain HTTP".into()
                },
                credentials_fix: credentials_fix.into(),
                secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            }),
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// How the server's certificate is checked, for a health check's line: `TLS verified
    /// against …`, `TLS NOT verified (insecure)` or `plain HTTP`.
    pub fn trust(&self) -> &str {
        &self.inner.trust
    }

    /// A request to `path` (starting with `/`) under the base URL, for the caller to add
    /// headers and a body to; send it with [`HttpClient::send`].
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.inner
            .http
            .request(method, format!("{}{path}", self.inner.base))
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Answer, HttpError> {
        let bytes = serde_json::to_vec(body).map_err(|e| HttpError::Config {
            sink: self.inner.sink,
            message: format!("cannot encode the request: {e}"),
        })?;
        self.send(
            self.request(Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "application/json")
                .body(bytes),
        )
        .await
    }

    /// Sends a request and reads its whole answer within the timeout: `Ok` for a 2xx,
    /// otherwise the error saying what came back (see [`classify`]).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, HttpError> {
        let req = req.build().map_err(|e| HttpError::Config {
            sink: self.inner.sink,
            message: format!("cannot build the request: {e}"),
        })?;
        let mut shown = req.url().clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        let url = shown.to_string();
        let request = format!("{} {url}", req.method());
        let resp = match self.inner.http.execute(req).await {
            Ok(r) => r,
            Err(e) => return Err(self.transport(&url, request, &e)),
        };
        let status = resp.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let location = header(reqwest::header::LOCATION);
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                return Err(HttpError::Unreadable {
                    request,
                    status,
                    detail: self.scrub(chain(&e)),
                })
            }
        };
        let answer = Answer {
            status,
            content_type,
            retry_after,
            body: self.scrub_bytes(body),
        };
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let fix = match status {
            300..=399 => Some(format!(
                "the server redirects{}: set {}.{} to the address it points to",
                location.map(|l| format!(" to {l}")).unwrap_or_default(),
                self.inner.sink,
                self.inner.url_key
            )),
            401 | 403 => Some(self.inner.credentials_fix.clone()),
            407 => Some(format!(
                "the proxy refused us: check the user and password of {}.proxy (or of $HTTPS_PROXY)",
                self.inner.sink
            )),
            _ => None,
        };
        Err(HttpError::Status {
            request,
            answer,
            fix,
        })
    }

    /// Sends `GET path` and accepts any answer: its status. For health checks, which must
    /// not change anything: reachability, the proxy and TLS, nothing more.
    pub async fn probe(&self, path: &str) -> Result<u16, HttpError> {
        match self.send(self.request(Method::GET, path)).await {
            Ok(a) => Ok(a.status),
            // Any answer proves the way there, except a proxy refusing to go on.
            Err(HttpError::Status { answer, .. }) if answer.status != 407 => Ok(answer.status),
            Err(e) => Err(e),
        }
    }

    fn transport(&self, url: &str, request: String, e: &reqwest::Error) -> HttpError {
        if let Some(t) = find_rustls(e) {
            return HttpError::Tls {
                url: url.to_string(),
                detail: tls_detail(t),
                fix: format!(
                    "set {sink}.ca to the CA that signs the server's certificate (a TLS-inspecting proxy's, say), or fix {sink}.{url_key}",
                    sink = self.inner.sink,
                    url_key = self.inner.url_key
                ),
            };
        }
        let detail = self.scrub(chain(e));
        if e.is_connect() {
            HttpError::Connect {
                url: url.to_string(),
                detail,
            }
        } else if e.is_timeout() {
            HttpError::Timeout {
                request,
                after: self.inner.timeout,
            }
        } else {
            HttpError::Lost { request, detail }
        }
    }

    fn scrub(&self, mut text: String) -> String {
        for s in &self.inner.secrets {
            if text.contains(s.expose()) {
                text = text.replace(s.expose(), "***");
            }
        }
        text
    }

    fn scrub_bytes(&self, body: Vec<u8>) -> Vec<u8> {
        if self.inner.secrets.is_empty() {
            return body;
        }
        match String::from_utf8(body) {
            Ok(text) => self.scrub(text).into_bytes(),
            Err(e) => e.into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn answer(status: u16, retry_after: Option<Duration>) -> Answer {
        Answer {
            status,
            content_type: Some("application/json".into()),
            retry_after,
            body: br#"{"status":"x","message":"Event object is invalid","errors":["'payload.summary' is missing or blank"]}"#.to_vec(),
        }
    }

    fn status(status: u16, retry_after: Option<Duration>) -> HttpError {
        HttpError::Status {
            request: "POST https://events.pagerduty.com/v2/enqueue".into(),
            answer: answer(status, retry_after),
            fix: None,
        }
    }

    #[test]
    fn every_status_has_one_decision() {
        let s = Some(Duration::from_secs(7));
        for (code, want) in [
            (200, Decision::Ok),
            (202, Decision::Ok),
            (204, Decision::Ok),
            (400, Decision::Fail),
            (401, Decision::Pause),
            (403, Decision::Pause),
            (404, Decision::Fail),
            (407, Decision::Pause),
            (408, Decision::Retry { after: s }),
            (409, Decision::Fail),
            (413, Decision::Fail),
            (429, Decision::Retry { after: s }),
            (500, Decision::Retry { after: s }),
            (501, Decision::Fail),
            (502, Decision::Retry { after: s }),
            (503, Decision::Retry { after: s }),
            (504, Decision::Retry { after: s }),
            (301, Decision::Pause),
            (302, Decision::Pause),
            (100, Decision::Fail),
        ] {
            assert_eq!(classify_status(code, s), want, "{code}");
            assert_eq!(classify(&Ok(answer(code, s))), want, "{code}");
            if want != Decision::Ok {
                assert_eq!(status(code, s).decision(), want, "{code}");
            }
        }
        assert_eq!(
            classify_status(429, None),
            Decision::Retry { after: None },
            "without Retry-After the caller's backoff decides"
        );
    }

    #[test]
    fn transport_failures_retry_or_pause_and_say_whether_the_server_may_have_acted() {
        let connect = HttpError::Connect {
            url: "https://x".into(),
            detail: "Connection refused".into(),
        };
        assert_eq!(connect.decision(), Decision::Retry { after: None });
        assert!(!connect.may_have_acted(), "never sent");
        let timeout = HttpError::Timeout {
            request: "POST https://x/v2/enqueue".into(),
            after: Duration::from_secs(30),
        };
        assert_eq!(timeout.decision(), Decision::Retry { after: None });
        assert!(timeout.may_have_acted());
        assert!(
            timeout.to_string().ends_with("no answer within 30s"),
            "{timeout}"
        );
        let lost = HttpError::Lost {
            request: "POST https://x/v2/enqueue".into(),
            detail: "connection reset".into(),
        };
        assert!(lost.may_have_acted());
        let tls = HttpError::Tls {
            url: "https://x".into(),
            detail: "unknown issuer".into(),
            fix: "set pagerduty.ca".into(),
        };
        assert_eq!(tls.decision(), Decision::Pause);
        assert!(!tls.may_have_acted());
        assert!(tls.to_string().contains("set pagerduty.ca"));
        for (code, acted) in [
            (400, false),
            (401, false),
            (429, false),
            (500, true),
            (501, false),
            (503, true),
        ] {
            assert_eq!(status(code, None).may_have_acted(), acted, "{code}");
        }
        for (code, acted) in [(202, true), (502, true), (404, false)] {
            let e = HttpError::Unreadable {
                request: "POST x".into(),
                status: code,
                detail: "eof".into(),
            };
            assert_eq!(e.may_have_acted(), acted, "{code}");
            assert_eq!(e.decision(), Decision::Retry { after: None });
        }
        assert_eq!(
            HttpError::Config {
                sink: "pagerduty",
                message: "x".into()
            }
            .decision(),
            Decision::Fail
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_within_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&in_90s, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        for bad in ["", "-5", "1.5", "soon", "Wed, 32 Foo 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = crate::retry::Backoff::new(base, cap);
        assert_eq!(
            retry_delay(Some(Duration::from_secs(42)), &mut b),
            Duration::from_secs(42),
            "the server's word beats the backoff and its cap"
        );
        for _ in 0..30 {
            assert!(retry_delay(None, &mut b) <= cap);
        }
        assert_eq!(b.attempt(), 31, "every retry is counted");
    }

    #[test]
    fn answers_are_described_by_their_api_message_and_errors() {
        let e = status(400, None);
        assert_eq!(
            e.to_string(),
            "POST https://events.pagerduty.com/v2/enqueue answered HTTP 400: Event object is invalid: 'payload.summary' is missing or blank"
        );
        let sn = Answer {
            status: 403,
            content_type: None,
            retry_after: None,
            body: br#"{"error":{"message":"User Not Authenticated","detail":"Required to provide Auth information"},"status":"failure"}"#.to_vec(),
        };
        assert_eq!(
            sn.describe(),
            "User Not Authenticated: Required to provide Auth information"
        );
        let html = Answer {
            status: 502,
            content_type: Some("text/html".into()),
            retry_after: None,
            body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
        };
        assert!(
            html.describe().contains("502 Bad Gateway"),
            "{}",
            html.describe()
        );
    }

    #[test]
    fn proxy_and_timeout_keys_are_checked_and_named() {
        assert_eq!(parse_proxy("pagerduty", None), Ok(Proxy::Environment));
        assert_eq!(parse_proxy("pagerduty", Some("none")), Ok(Proxy::Direct));
        assert!(matches!(
            parse_proxy("pagerduty", Some("http://u:pw@proxy:3128")),
            Ok(Proxy::Url(_))
        ));
        for bad in ["", "proxy:3128", "ftp://proxy", "http://"] {
            let e = parse_proxy("pagerduty", Some(bad)).expect_err(bad);
            assert!(e.starts_with("pagerduty.proxy"), "{e}");
        }
        let e = parse_proxy("pagerduty", Some("socks9://u:s3cret@p")).expect_err("scheme");
        assert!(!e.contains("s3cret"), "{e}");
        let zero = DurationValue::Text("0s".into());
        assert!(check_timeout("pagerduty", Some(&zero))
            .expect_err("zero")
            .contains("pagerduty.timeout"));
        assert_eq!(check_timeout("pagerduty", None), Ok(DEFAULT_TIMEOUT));
        let e = HttpSettings::from_keys("pagerduty", Some(Path::new("/x.pem")), true, None, None)
            .expect_err("both");
        assert!(e.contains("not both"), "{e}");
        let e = HttpSettings::from_keys(
            "pagerduty",
            Some(Path::new("/no/such/ca.pem")),
            false,
            None,
            None,
        )
        .expect_err("missing");
        assert!(
            e.starts_with("pagerduty.ca") && e.contains("/no/such/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_setting_named() {
        let s = HttpSettings::default();
        for bad in [
            "events.pagerduty.com",
            "ftp://events.pagerduty.com",
            "https://",
        ] {
            let e = HttpClient::new("pagerduty", bad, &s, "", vec![]).expect_err(bad);
            assert!(e.to_string().contains("pagerduty.url"), "{e}");
            assert_eq!(e.decision(), Decision::Fail);
        }
    }

    /// A small HTTP server on 127.0.0.1: answers each connection with the next canned answer
    /// (status line and headers, body) and records the request head it got.
    async fn canned(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (head, body) in answers {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                let a = format!(
                    "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(a.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn a_real_429_with_retry_after_is_retried_after_the_servers_delay() {
        let (url, _rx) = canned(vec![
            (
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Type: application/json",
                r#"{"status":"throttle event","message":"slow down"}"#,
            ),
            ("HTTP/1.1 202 Accepted\r\nContent-Type: application/json", "{}"),
        ])
        .await;
        let s = HttpSettings {
            proxy: Proxy::Direct,
            ..HttpSettings::default()
        };
        let c = HttpClient::new("pagerduty", &url, &s, "", vec![]).expect("client");
        let r = c.post_json("/v2/enqueue", &serde_json::json!({})).await;
        assert_eq!(
            classify(&r),
            Decision::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
        let e = r.expect_err("429");
        assert!(e.to_string().contains("slow down"), "{e}");
        assert!(!e.may_have_acted());
        let r = c.post_json("/v2/enqueue", &serde_json::json!({})).await;
        assert_eq!(r.expect("202").status, 202);
    }

    #[tokio::test]
    async fn a_configured_proxy_carries_the_request_and_a_refused_connection_did_not_act() {
        // The "proxy" is the canned server: it gets the absolute URI of a host that does not
        // exist, which only a proxy can serve.
        let (proxy, mut rx) = canned(vec![("HTTP/1.1 202 Accepted", "")]).await;
        let s = HttpSettings {
            proxy: parse_proxy("pagerduty", Some(&proxy)).expect("proxy"),
            ..HttpSettings::default()
        };
        let c = HttpClient::new(
            "pagerduty",
            "http://events.pagerduty.invalid",
            &s,
            "",
            vec![],
        )
        .expect("client");
        let a = c
            .post_json("/v2/enqueue", &serde_json::json!({"a": 1}))
            .await
            .expect("through the proxy");
        assert_eq!(a.status, 202);
        let head = rx.recv().await.expect("request");
        assert!(
            head.starts_with("POST http://events.pagerduty.invalid/v2/enqueue HTTP/1.1"),
            "{head}"
        );

        // Nothing listens there: never sent.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let direct = HttpSettings {
            proxy: Proxy::Direct,
            ..HttpSettings::default()
        };
        let c = HttpClient::new(
            "pagerduty",
            &format!("http://{closed}"),
            &direct,
            "",
            vec![],
        )
        .expect("client");
        let e = c
            .post_json("/v2/enqueue", &serde_json::json!({}))
            .await
            .expect_err("refused");
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
        assert!(!e.may_have_acted());
        assert_eq!(e.decision(), Decision::Retry { after: None });
    }

    #[tokio::test]
    async fn secrets_echoed_by_a_server_are_scrubbed_and_401_names_the_setting() {
        let (url, _rx) = canned(vec![(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json",
            r#"{"message":"bad key 0123456789abcdef0123"}"#,
        )])
        .await;
        let s = HttpSettings {
            proxy: Proxy::Direct,
            ..HttpSettings::default()
        };
        let c = HttpClient::new(
            "pagerduty",
            &url,
            &s,
            "check pagerduty.routing_key",
            vec![Secret::new("0123456789abcdef0123")],
        )
        .expect("client");
        let e = c
            .post_json("/v2/enqueue", &serde_json::json!({}))
            .await
            .expect_err("401");
        let text = e.to_string();
        assert!(!text.contains("0123456789abcdef0123"), "{text}");
        assert!(text.contains("bad key ***"), "{text}");
        assert!(text.ends_with("; check pagerduty.routing_key"), "{text}");
        assert_eq!(e.decision(), Decision::Pause);
        assert_eq!(e.failure_code(), crate::failure::AUTH);
    }
}
