//! The unauthenticated client: one HTTPS transport per appliance (every request with the
//! timeout, every failure mapped to a [`OneViewError`]), API version negotiation
//! (`GET /rest/version`), the EULA, login, and the server fingerprint for trust-on-first-use.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::Method;
use rustls::pki_types::ServerName;
use scmb_tls::{Fingerprint, NameCheck, ServerTrust};
use serde_json::{json, Value};

use crate::config::{http_client, Config, Target};
use crate::error::{find_rustls, tls_detail, OneViewError};
use crate::secret::{scrub, Credentials, Secret};
use crate::session::Session;

/// Longest body excerpt put into an error.
const SNIPPET_MAX: usize = 200;

/// A connection to one appliance that has negotiated its API version but is not logged in.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Transport>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.inner.target.display())
            .field("api_version", &self.inner.api_version)
            .finish()
    }
}

impl Client {
    /// Connects to `cfg.host` and negotiates the API version: `GET /rest/version` (no session,
    /// no version header), then `min(cfg.max_api_version, currentVersion)`.
    pub async fn connect(cfg: Config) -> Result<Client, OneViewError> {
        let target = Target::parse(&cfg.host)?;
        let (http, base) = http_client(&cfg, &target).await?;
        let mut t = Transport {
            http,
            base,
            target,
            trust: cfg.trust.clone(),
            names: cfg.names.clone(),
            api_version: 0,
        };
        let reply = t
            .send(&Request::new(Method::GET, "/rest/version").without_version())
            .await?;
        if !reply.is_success() {
            return Err(reply.error());
        }
        let v = reply.json()?;
        let current = int_field(&v, "currentVersion")
            .ok_or_else(|| reply.bad("no integer currentVersion"))?;
        let minimum = int_field(&v, "minimumVersion").unwrap_or(0);
        if minimum > cfg.max_api_version {
            return Err(OneViewError::UnsupportedVersion {
                current,
                minimum,
                max_known: cfg.max_api_version,
            });
        }
        t.api_version = cfg.max_api_version.min(current);
        tracing::info!(
            host = %t.target.display(),
            api_version = t.api_version,
            current,
            minimum,
            "OneView API version negotiated"
        );
        Ok(Client { inner: Arc::new(t) })
    }

    /// The API version sent as `X-API-Version`.
    pub fn api_version(&self) -> u32 {
        self.inner.api_version
    }

    /// `host:port` of the appliance.
    pub fn host(&self) -> String {
        self.inner.target.display()
    }

    /// Logs in (`POST /rest/login-sessions`, always with `loginMsgAck: true`).
    pub async fn login(self, creds: Credentials) -> Result<Session, OneViewError> {
        let token = self.inner.login(&creds).await?;
        Ok(Session::new(self, creds, token))
    }

    /// `GET /rest/appliance/eula/status`: `true` while the EULA must still be accepted. Needs
    /// no session.
    pub async fn eula_status(&self) -> Result<bool, OneViewError> {
        self.inner.eula_status(None).await
    }

    /// `POST /rest/appliance/eula/save {"supportAccess": "yes"|"no"}`. Needs no session.
    pub async fn accept_eula(&self, support_access: bool) -> Result<(), OneViewError> {
        self.inner.accept_eula(support_access, None).await
    }

    /// Connects to `host` (`host[:port]`) without verifying anything and returns the SHA-256
    /// fingerprint of the certificate it presents, for trust-on-first-use pinning.
    pub async fn server_fingerprint(
        host: &str,
        timeout: Duration,
    ) -> Result<Fingerprint, OneViewError> {
        let target = Target::parse(host)?;
        let cfg = scmb_tls::client_config(&ServerTrust::Insecure, &NameCheck::Skip, None)
            .map_err(|e| OneViewError::Config(e.to_string()))?;
        let name = ServerName::try_from(target.host.clone()).map_err(|_| {
            OneViewError::Config(format!("{:?} is not a valid host name", target.host))
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let unreachable =
            |source: Box<dyn std::error::Error + Send + Sync>| OneViewError::Unreachable {
                host: target.display(),
                source,
            };
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| match find_rustls(&e) {
                    Some(r) => OneViewError::Tls {
                        host: target.display(),
                        detail: if crate::error::plain_text(r) {
                            crate::error::plain_text_detail(&target.display())
                        } else {
                            r.to_string()
                        },
                    },
                    None => unreachable(Box::new(e)),
                })
        };
        let stream = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| {
                unreachable(format!("no TLS handshake within {} ms", timeout.as_millis()).into())
            })??;
        let (_, conn) = stream.get_ref();
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| OneViewError::Tls {
                host: target.display(),
                detail: "the server presented no certificate".into(),
            })?;
        Ok(Fingerprint::of(cert.as_ref()))
    }
}

/// The HTTPS transport shared by a [`Client`] and its [`Session`].
pub(crate) struct Transport {
    http: reqwest::Client,
    /// `https://host:port` (or `https://tls-server-name:port`).
    base: String,
    target: Target,
    trust: ServerTrust,
    names: NameCheck,
    pub(crate) api_version: u32,
}

/// One request to send.
#[derive(Clone, Debug)]
pub(crate) struct Request<'a> {
    pub method: Method,
    pub path: String,
    pub body: Option<&'a Value>,
    pub headers: Vec<(&'static str, &'static str)>,
    pub version: bool,
}

impl<'a> Request<'a> {
    /// A request for `path`, relative (`/rest/...`) or absolute (`https://host/rest/...`).
    pub fn new(method: Method, path: &str) -> Request<'a> {
        Request {
            method,
            path: rel_path(path),
            body: None,
            headers: Vec::new(),
            version: true,
        }
    }
    pub fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn without_version(mut self) -> Self {
        self.version = false;
        self
    }
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A complete answer (the body has been read within the timeout).
#[derive(Debug)]
pub(crate) struct Reply {
    pub request: String,
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    /// The `Date` header: the appliance's clock when it answered.
    pub date: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A [`OneViewError::BadResponse`] about this answer.
    pub fn bad(&self, problem: &str) -> OneViewError {
        OneViewError::BadResponse {
            request: self.request.clone(),
            problem: problem.to_string(),
            status: self.status,
            content_type: self.content_type.clone(),
            snippet: snippet(&self.body, self.content_type.as_deref()),
        }
    }

    /// The body as JSON; an empty or non-JSON body is a clear error.
    pub fn json(&self) -> Result<Value, OneViewError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(self.bad("empty body where JSON was expected"));
        }
        serde_json::from_slice(&self.body).map_err(|_| self.bad("not JSON"))
    }

    /// The error an unsuccessful answer stands for: the appliance's error body (SPEC §1.1)
    /// or, when it is not one (an HTML page from a proxy or a starting appliance), a
    /// [`OneViewError::BadResponse`].
    pub fn error(&self) -> OneViewError {
        let v: Option<Value> = serde_json::from_slice(&self.body).ok();
        let Some(obj) = v.as_ref().and_then(Value::as_object) else {
            return self.bad("not a OneView error body");
        };
        if !obj.contains_key("errorCode") && !obj.contains_key("message") {
            return self.bad("not a OneView error body");
        }
        let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").trim();
        let message = match text("message") {
            "" => text("details"),
            m => m,
        };
        let recommended_actions = match obj.get("recommendedActions") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        OneViewError::Api {
            status: self.status,
            error_code: text("errorCode").to_string(),
            message: message.to_string(),
            recommended_actions,
        }
    }

    /// `Ok(json)` for a successful answer, the error otherwise.
    pub fn into_json(self) -> Result<Value, OneViewError> {
        if self.is_success() {
            self.json()
        } else {
            Err(self.error())
        }
    }
}

impl Transport {
    pub(crate) fn host(&self) -> String {
        self.target.display()
    }

    fn transport_error(&self, e: reqwest::Error) -> OneViewError {
        if let Some(r) = find_rustls(&e) {
            return OneViewError::Tls {
                host: self.target.display(),
                detail: tls_detail(r, &self.trust, &self.names, &self.target.host),
            };
        }
        OneViewError::Unreachable {
            host: self.target.display(),
            source: Box::new(e),
        }
    }

    /// Sends one request (with `Auth` when a session is given) and reads the whole answer.
    pub(crate) async fn send(&self, req: &Request<'_>) -> Result<Reply, OneViewError> {
        self.send_auth(req, None).await
    }

    pub(crate) async fn send_auth(
        &self,
        req: &Request<'_>,
        session: Option<&Secret>,
    ) -> Result<Reply, OneViewError> {
        let url = format!("{}{}", self.base, req.path);
        let started = std::time::Instant::now();
        let mut rb = self
            .http
            .request(req.method.clone(), url)
            .header("Accept", "application/json");
        if req.version {
            rb = rb.header("X-API-Version", self.api_version.to_string());
        }
        if let Some(s) = session {
            let mut v = HeaderValue::from_str(s.expose()).map_err(|_| {
                OneViewError::Config("the session id is not a valid HTTP header value".into())
            })?;
            v.set_sensitive(true);
            rb = rb.header("Auth", v);
        }
        for (k, v) in &req.headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = req.body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE);
        let location = header(LOCATION);
        let date = header(reqwest::header::DATE);
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?
            .to_vec();
        tracing::debug!(request = %req.describe(), status, bytes = body.len(), ms = started.elapsed().as_millis() as u64, "OneView answered");
        Ok(Reply {
            request: req.describe(),
            status,
            content_type,
            location,
            date,
            body,
        })
    }

    /// `POST /rest/login-sessions`; the new session id.
    pub(crate) async fn login(&self, creds: &Credentials) -> Result<Secret, OneViewError> {
        let mut body = json!({
            "userName": creds.user,
            "password": creds.password.expose(),
            "loginMsgAck": true,
        });
        if let Some(d) = &creds.domain {
            body["authLoginDomain"] = json!(d);
        }
        let reply = self
            .send(&Request::new(Method::POST, "/rest/login-sessions").body(&body))
            .await?;
        if !reply.is_success() {
            let err = reply.error();
            let auth_failed = match &err {
                _ if reply.status == 401 => true,
                OneViewError::Api {
                    status: 400,
                    error_code,
                    ..
                } => error_code
                    .to_ascii_uppercase()
                    .starts_with("AUTHN_AUTH_FAIL"),
                _ => false,
            };
            let err = match err {
                OneViewError::Api { message, .. } if auth_failed => OneViewError::AuthFailed {
                    user: creds.user.clone(),
                    message: scrub(&message, &creds.password),
                },
                OneViewError::BadResponse { .. } if auth_failed => OneViewError::AuthFailed {
                    user: creds.user.clone(),
                    message: format!("HTTP {}", reply.status),
                },
                OneViewError::Api {
                    status,
                    error_code,
                    message,
                    recommended_actions,
                } => OneViewError::Api {
                    status,
                    error_code,
                    message: scrub(&message, &creds.password),
                    recommended_actions: recommended_actions
                        .iter()
                        .map(|a| scrub(a, &creds.password))
                        .collect(),
                },
                OneViewError::BadResponse {
                    request,
                    problem,
                    status,
                    content_type,
                    snippet,
                } => OneViewError::BadResponse {
                    request,
                    problem,
                    status,
                    content_type,
                    snippet: scrub(&snippet, &creds.password),
                },
                other => other,
            };
            // The caller reports it (once); a second line here would say it twice.
            tracing::debug!(host = %self.host(), user = %creds.user, error = %err, "login failed");
            return Err(err);
        }
        let v = reply.json()?;
        let id = v
            .get("sessionID")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| reply.bad("no sessionID in the login answer"))?;
        tracing::info!(host = %self.host(), user = %creds.user, "logged in");
        Ok(Secret::new(id))
    }

    pub(crate) async fn eula_status(&self, session: Option<&Secret>) -> Result<bool, OneViewError> {
        let reply = self
            .send_auth(
                &Request::new(Method::GET, "/rest/appliance/eula/status"),
                session,
            )
            .await?;
        let v = if reply.is_success() {
            reply.json()?
        } else {
            return Err(reply.error());
        };
        match &v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(reply.bad("expected a bare JSON true or false")),
        }
    }

    pub(crate) async fn accept_eula(
        &self,
        support_access: bool,
        session: Option<&Secret>,
    ) -> Result<(), OneViewError> {
        let body = json!({"supportAccess": if support_access { "yes" } else { "no" }});
        let reply = self
            .send_auth(
                &Request::new(Method::POST, "/rest/appliance/eula/save").body(&body),
                session,
            )
            .await?;
        if !reply.is_success() {
            return Err(reply.error());
        }
        tracing::info!(host = %self.host(), support_access, "EULA accepted");
        Ok(())
    }
}

/// An integer field, also when sent as a string or a float.
pub(crate) fn int_field(v: &Value, key: &str) -> Option<u32> {
    match v.get(key)? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The path part of a URI the appliance handed out: `https://host/rest/tasks/1` → `/rest/tasks/1`;
/// relative paths get their leading `/`.
pub(crate) fn rel_path(uri: &str) -> String {
    let u = uri.trim();
    let lower = u.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        Some(&u[8..])
    } else if lower.starts_with("http://") {
        Some(&u[7..])
    } else {
        None
    };
    let p = match rest {
        Some(r) => r.find('/').map_or("/", |i| &r[i..]),
        None => u,
    };
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// At most [`SNIPPET_MAX`] characters of a body for an error message: HTML reduced to its
/// text, whitespace collapsed, anything from a private key on withheld.
pub fn snippet(body: &[u8], content_type: Option<&str>) -> String {
    let text = String::from_utf8_lossy(body);
    let mut text: String = text.into_owned();
    if let Some(i) = text.find("PRIVATE KEY") {
        let cut = text[..i].rfind("-----BEGIN").unwrap_or(i);
        text.truncate(cut);
        text.push_str(" [private key withheld]");
    }
    let html = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("html"))
        || text.trim_start().starts_with('<');
    if html {
        let mut out = String::with_capacity(text.len());
        let mut in_tag = false;
        for c in text.chars() {
            match c {
                '<' => {
                    in_tag = true;
                    out.push(' ');
                }
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        text = out;
    }
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= SNIPPET_MAX {
        collapsed
    } else {
        let mut s: String = collapsed.chars().take(SNIPPET_MAX - 1).collect();
        s.push('…');
        s
    }
}

/// The task URI of a 202 answer: the `Location` header, else the task in the body.
pub(crate) fn task_uri(reply: &Reply) -> Option<String> {
    if let Some(l) = reply.location.as_deref().filter(|l| !l.trim().is_empty()) {
        return Some(rel_path(l));
    }
    let v: Value = serde_json::from_slice(&reply.body).ok()?;
    ["uri", "taskUri"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_str))
        .find(|u| u.contains("/rest/tasks/"))
        .map(rel_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, ct: &str, body: &str) -> Reply {
        Reply {
            request: "GET /rest/x".into(),
            status,
            content_type: Some(ct.into()),
            location: None,
            date: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rel_path_strips_scheme_and_host_and_adds_the_slash() {
        assert_eq!(
            rel_path("https://ov.example:443/rest/tasks/1"),
            "/rest/tasks/1"
        );
        assert_eq!(
            rel_path("HTTPS://10.0.0.1/rest/tasks/2?x=1"),
            "/rest/tasks/2?x=1"
        );
        assert_eq!(rel_path("/rest/tasks/3"), "/rest/tasks/3");
        assert_eq!(rel_path("rest/tasks/4"), "/rest/tasks/4");
        assert_eq!(rel_path("https://host"), "/");
    }

    #[test]
    fn snippets_are_short_html_free_and_never_show_keys() {
        let s = snippet(
            b"<html><head><title>503</title></head><body><h1>Service  Unavailable</h1></body></html>",
            Some("text/html"),
        );
        assert_eq!(s, "503 Service Unavailable");
        let long = "x".repeat(500);
        assert_eq!(snippet(long.as_bytes(), None).chars().count(), 200);
        let k = snippet(
            b"{\"cert\":\"ok\",\"key\":\"-----BEGIN RSA PRIVATE KEY-----\\nMIIE\"}",
            Some("application/json"),
        );
        assert!(!k.contains("MIIE") && k.contains("withheld"), "{k}");
    }

    #[test]
    fn error_bodies_become_api_errors_and_tolerate_nulls() {
        let e = reply(
            404,
            "application/json",
            r#"{"errorCode":"RESOURCE_NOT_FOUND","message":null,"details":"gone","recommendedActions":null}"#,
        )
        .error();
        match e {
            OneViewError::Api {
                status,
                error_code,
                message,
                recommended_actions,
            } => {
                assert_eq!((status, error_code.as_str()), (404, "RESOURCE_NOT_FOUND"));
                assert_eq!(message, "gone");
                assert!(recommended_actions.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reply(503, "text/html", "<html>down</html>").error(),
            OneViewError::BadResponse { status: 503, .. }
        ));
        assert!(matches!(
            reply(500, "application/json", "[1,2]").error(),
            OneViewError::BadResponse { .. }
        ));
        assert!(matches!(
            reply(200, "application/json", "  ").json(),
            Err(OneViewError::BadResponse { .. })
        ));
    }

    #[test]
    fn task_uris_come_from_location_or_the_body() {
        let mut r = reply(202, "application/json", r#"{"uri":"/rest/tasks/7"}"#);
        assert_eq!(task_uri(&r).as_deref(), Some("/rest/tasks/7"));
        r.location = Some("https://ov/rest/tasks/8".into());
        assert_eq!(task_uri(&r).as_deref(), Some("/rest/tasks/8"));
        let r = reply(202, "application/json", r#"{"uri":"/rest/alerts/1"}"#);
        assert_eq!(task_uri(&r), None);
    }

    #[test]
    fn integers_are_read_from_numbers_or_strings() {
        let v = json!({"a": 4200, "b": "300", "c": 600.0, "d": null, "e": -1});
        assert_eq!(int_field(&v, "a"), Some(4200));
        assert_eq!(int_field(&v, "b"), Some(300));
        assert_eq!(int_field(&v, "c"), Some(600));
        assert_eq!(int_field(&v, "d"), None);
        assert_eq!(int_field(&v, "e"), None);
    }
}
