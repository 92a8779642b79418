//! The client: one HTTP(S) transport with Basic auth on every request (SM has no sessions),
//! every answer read completely within the timeout and turned into either the JSON object SM
//! promised or an [`SmError`]; and the incident calls of SPEC §3 on top of it.
//!
//! The client never retries by itself (a create that timed out may still have created the
//! incident; only the caller knows whether to look before trying again): it classifies, the
//! caller decides with [`SmError::class`] and waits as it sees fit.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use scmb_oneview::diagnostics::snippet;
use scmb_oneview::Secret;
use scmb_tls::{NameCheck, ServerTrust};
use serde_json::{json, Map, Value};

use crate::config::SmConfig;
use crate::error::{find_rustls, tls_detail, SmError};
use crate::incident::Incident;

/// A Service Manager REST client. Cheap to clone (the connection pool is shared); `Debug`
/// shows the URL and user, never the password.
#[derive(Clone)]
pub struct SmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `http(s)://host:port[/prefix]/SM/9/rest`.
    base: String,
    user: String,
    password: Secret,
    /// `Basic base64(user:password)`, marked sensitive.
    auth: HeaderValue,
}

impl std::fmt::Debug for SmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmClient")
            .field("base", &self.inner.base)
            .field("user", &self.inner.user)
            .finish_non_exhaustive()
    }
}

impl SmClient {
    /// Checks the settings and builds the transport (no I/O yet). HTTPS needs a trust setting
    /// that can verify something: a non-empty CA list, a pinned fingerprint, or (loudly)
    /// `Insecure`.
    pub fn new(cfg: SmConfig) -> Result<SmClient, SmError> {
        let (base, https) = cfg.rest_base()?;
        if cfg.user.is_empty() || cfg.user.contains(':') {
            return Err(SmError::Config(
                "the SM user name must be non-empty and must not contain ':'".into(),
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(SmError::Config(
                "the request timeout must not be zero".into(),
            ));
        }
        let tls = if https {
            if matches!(&cfg.trust, ServerTrust::Ca(cas) if cas.is_empty()) {
                return Err(SmError::Config(
                    "an https:// Service Manager URL needs the CA certificate that signed \
                     Service Manager's certificate (the custom CA setting); none was given"
                        .into(),
                ));
            }
            if let NameCheck::Name(_) = cfg.names {
                return Err(SmError::Config(
                    "checking the SM certificate against another name is not supported; use \
                     the name the certificate carries in the URL, or skip the name check"
                        .into(),
                ));
            }
            if matches!(cfg.trust, ServerTrust::Insecure) {
                tracing::warn!(url = %base, "the Service Manager certificate is NOT verified");
            }
            scmb_tls::client_config(&cfg.trust, &cfg.names, None)
                .map_err(|e| SmError::Config(e.to_string()))?
        } else {
            // Plain HTTP: reqwest still wants a TLS config; this one trusts nobody (redirects
            // are off, so nothing ever goes to an https:// URL with it).
            rustls::ClientConfig::builder_with_provider(scmb_tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| SmError::Config(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            cfg.user,
            cfg.password.expose()
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|_| SmError::Config("the SM credentials are not a valid header".into()))?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // The Authorization header is ours; never carry it along a redirect.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("scmb/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SmError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(SmClient {
            inner: Arc::new(Inner {
                http,
                base,
                user: cfg.user,
                password: cfg.password,
                auth,
            }),
        })
    }

    /// `http(s)://host:port/SM/9/rest`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// `POST /SM/9/rest/incidents {"Incident": incident}` (200 or 201). The answer must carry
    /// the new `Incident.IncidentID`; without one (or with an empty body) the call fails with
    /// [`SmError::BadResponse`], which is permanent: the incident may exist, so it is not
    /// blindly created again.
    pub async fn create_incident(
        &self,
        incident: &Map<String, Value>,
    ) -> Result<Incident, SmError> {
        let body = json!({ "Incident": incident });
        let (reply, top) = self.call(Method::POST, "/incidents", Some(&body)).await?;
        let inc = top
            .get("Incident")
            .and_then(Value::as_object)
            .and_then(|m| Incident::from_fields(m.clone()))
            .ok_or_else(|| {
                reply.bad("no Incident.IncidentID in the answer", &self.inner.password)
            })?;
        tracing::debug!(incident = %inc.id, "Service Manager incident created");
        Ok(inc)
    }

    /// `GET /SM/9/rest/incidents/{id}`; `None` when SM answers 404 with its error body.
    pub async fn incident(&self, id: &str) -> Result<Option<Incident>, SmError> {
        let path = format!("/incidents/{}", encode(check_id(id)?));
        let reply = self.send(Method::GET, &path, None).await?;
        if reply.status == 404 && sm_body(&reply.body).is_some() {
            tracing::debug!(incident = id, "no such Service Manager incident");
            return Ok(None);
        }
        let top = self.interpret(&reply)?;
        self.incident_in(&reply, &top, id).map(Some)
    }

    /// `PUT /SM/9/rest/incidents/{id} {"Incident": fields}`, e.g. `{"JournalUpdates": ["line"]}`
    /// (SM appends journal lines).
    pub async fn update_incident(
        &self,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Incident, SmError> {
        let path = format!("/incidents/{}", encode(check_id(id)?));
        self.change(Method::PUT, &path, id, fields).await
    }

    /// `POST /SM/9/rest/incidents/{id}/action/resolve {"Incident": fields}`.
    pub async fn resolve(
        &self,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Incident, SmError> {
        self.action(id, "resolve", fields).await
    }

    /// `POST /SM/9/rest/incidents/{id}/action/close {"Incident": fields}` (e.g. `ClosureCode`,
    /// `Solution`).
    pub async fn close(&self, id: &str, fields: &Map<String, Value>) -> Result<Incident, SmError> {
        self.action(id, "close", fields).await
    }

    /// Every incident matching `query` (SM's query language, e.g.
    /// `Title="OneView Alert" and Status~="Closed"`; `None` for all):
    /// `GET /SM/9/rest/incidents?view=expand&start=S&count=N[&query=Q]`, paged by `start`
    /// (1-based) until a page is empty, `start` passes `@totalcount`, or (without a total) a
    /// page is shorter than asked. A missing `content` is an empty page.
    pub async fn list(
        &self,
        query: Option<&str>,
        page_size: usize,
    ) -> Result<Vec<Incident>, SmError> {
        if page_size == 0 {
            return Err(SmError::Invalid("the page size must be at least 1".into()));
        }
        let q = query
            .map(|q| format!("&query={}", encode(q)))
            .unwrap_or_default();
        let mut out: Vec<Incident> = Vec::new();
        let mut start: usize = 1;
        let mut previous_first: Option<String> = None;
        loop {
            let path = format!("/incidents?view=expand&start={start}&count={page_size}{q}");
            let (reply, top) = self.call(Method::GET, &path, None).await?;
            let content = match top.get("content") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(a)) => &a[..],
                Some(_) => {
                    return Err(reply.bad("\"content\" is not an array", &self.inner.password))
                }
            };
            let got = content.len();
            let count = usize_field(&top, "@count").unwrap_or(got);
            let total = usize_field(&top, "@totalcount");
            let mut page = Vec::with_capacity(got);
            for entry in content {
                match entry
                    .get("Incident")
                    .and_then(Value::as_object)
                    .and_then(|m| Incident::from_fields(m.clone()))
                {
                    Some(i) => page.push(i),
                    None => tracing::warn!(
                        request = %reply.request,
                        "skipping a listed incident without IncidentID"
                    ),
                }
            }
            if let Some(first) = page.first() {
                if previous_first.as_deref() == Some(first.id.as_str()) {
                    return Err(reply.bad(
                        "the same page came back for another start: the server ignores start",
                        &self.inner.password,
                    ));
                }
                previous_first = Some(first.id.clone());
            }
            out.extend(page);
            if count == 0 || got == 0 {
                break;
            }
            start = start.saturating_add(count);
            let done = match total {
                Some(t) => start > t,
                None => count < page_size,
            };
            if done {
                break;
            }
        }
        tracing::debug!(incidents = out.len(), "Service Manager incidents listed");
        Ok(out)
    }

    async fn action(
        &self,
        id: &str,
        action: &str,
        fields: &Map<String, Value>,
    ) -> Result<Incident, SmError> {
        let path = format!("/incidents/{}/action/{action}", encode(check_id(id)?));
        self.change(Method::POST, &path, id, fields).await
    }

    /// An update or action: send `{"Incident": fields}`, read back the incident.
    async fn change(
        &self,
        method: Method,
        path: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Incident, SmError> {
        let body = json!({ "Incident": fields });
        let (reply, top) = self.call(method, path, Some(&body)).await?;
        let inc = self.incident_in(&reply, &top, id)?;
        tracing::info!(incident = %inc.id, request = %reply.request, status = inc.status.as_deref(), "Service Manager incident changed");
        Ok(inc)
    }

    /// The `Incident` of an answer about `id` (its `IncidentID` filled in when SM left it out).
    fn incident_in(
        &self,
        reply: &Reply,
        top: &Map<String, Value>,
        id: &str,
    ) -> Result<Incident, SmError> {
        let mut fields = top
            .get("Incident")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| reply.bad("no Incident in the answer", &self.inner.password))?;
        if Incident::from_fields(fields.clone()).is_none() {
            fields.insert("IncidentID".into(), Value::String(id.to_string()));
        }
        Incident::from_fields(fields)
            .ok_or_else(|| reply.bad("no IncidentID in the answer", &self.inner.password))
    }

    /// Sends a request and turns the answer into SM's JSON object or an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Reply, Map<String, Value>), SmError> {
        let reply = self.send(method, path, body).await?;
        let top = self.interpret(&reply)?;
        Ok((reply, top))
    }

    fn interpret(&self, reply: &Reply) -> Result<Map<String, Value>, SmError> {
        interpret(reply, &self.inner.user, &self.inner.password)
    }

    /// Sends one request with Basic auth and reads the whole answer within the timeout.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, SmError> {
        let url = format!("{}{path}", self.inner.base);
        let request = format!("{method} {}", request_path(&url));
        let started = Instant::now();
        let mut rb = self
            .inner
            .http
            .request(method, &url)
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header("Accept", "application/json");
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| transport_error(&url, e))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&url, e))?
            .to_vec();
        tracing::debug!(
            request = %request,
            status,
            bytes = body.len(),
            ms = started.elapsed().as_millis() as u64,
            "Service Manager answered"
        );
        Ok(Reply {
            request,
            status,
            content_type,
            body,
        })
    }
}

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Reply {
    /// e.g. `POST /SM/9/rest/incidents`.
    pub request: String,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A [`SmError::BadResponse`] about this answer.
    pub fn bad(&self, problem: &str, password: &Secret) -> SmError {
        SmError::BadResponse {
            request: self.request.clone(),
            problem: scrub(problem, password),
            status: self.status,
            content_type: self.content_type.clone(),
            snippet: scrub(&snippet(&self.body, self.content_type.as_deref()), password),
        }
    }
}

/// SM's JSON object of an answer, or the error the answer stands for.
pub(crate) fn interpret(
    reply: &Reply,
    user: &str,
    password: &Secret,
) -> Result<Map<String, Value>, SmError> {
    let obj = sm_object(&reply.body);
    let messages = obj
        .as_ref()
        .map(|o| messages(o, password))
        .unwrap_or_default();
    let return_code = obj.as_ref().and_then(|o| return_code(o.get("ReturnCode")));
    let success = (200..300).contains(&reply.status);
    if reply.status == 401 {
        return Err(SmError::Unauthorized {
            user: user.to_string(),
            messages,
        });
    }
    if !success {
        let is_sm_body = obj
            .as_ref()
            .is_some_and(|o| o.contains_key("ReturnCode") || o.contains_key("Messages"));
        return Err(match reply.status {
            400..=499 if is_sm_body => SmError::Rejected {
                request: reply.request.clone(),
                status: reply.status,
                return_code,
                messages,
            },
            500..=599 if is_sm_body => SmError::Server {
                request: reply.request.clone(),
                status: reply.status,
                return_code,
                messages,
            },
            _ if reply.body.iter().all(u8::is_ascii_whitespace) => {
                reply.bad("error status with an empty body", password)
            }
            _ => reply.bad("not a Service Manager answer", password),
        });
    }
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Err(reply.bad("empty body where JSON was expected", password));
    }
    let Some(obj) = obj else {
        return Err(reply.bad("not a JSON object", password));
    };
    if let Some(rc) = return_code.filter(|rc| *rc != 0) {
        let m = if messages.is_empty() {
            String::new()
        } else {
            format!(": {}", messages.join("; "))
        };
        return Err(reply.bad(&format!("ReturnCode {rc} on a success status{m}"), password));
    }
    if obj.get("ReturnCode").is_some() && return_code.is_none() {
        return Err(reply.bad("ReturnCode is not a number", password));
    }
    Ok(obj)
}

/// The body as a JSON object, if it is one.
fn sm_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// An SM error body (`ReturnCode` or `Messages`), as SM's own 404 carries.
fn sm_body(body: &[u8]) -> Option<Map<String, Value>> {
    sm_object(body).filter(|o| o.contains_key("ReturnCode") || o.contains_key("Messages"))
}

fn return_code(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn messages(obj: &Map<String, Value>, password: &Secret) -> Vec<String> {
    let raw: Vec<String> = match obj.get("Messages") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| match m {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    raw.iter()
        .map(|m| scrub(m.trim(), password))
        .filter(|m| !m.is_empty())
        .collect()
}

fn usize_field(obj: &Map<String, Value>, key: &str) -> Option<usize> {
    match obj.get(key)? {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn check_id(id: &str) -> Result<&str, SmError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(SmError::Invalid("empty incident id".into()));
    }
    Ok(id)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for path segments and
/// query values alike).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/SM/9/rest/...` of a full URL (for messages).
fn request_path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

fn transport_error(url: &str, e: reqwest::Error) -> SmError {
    if let Some(r) = find_rustls(&e) {
        return SmError::Tls {
            url: origin(url).to_string(),
            detail: tls_detail(r),
        };
    }
    SmError::Unreachable {
        url: url.to_string(),
        source: Box::new(e),
    }
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => &url[..start + i],
        None => url,
    }
}

/// Replaces the password (if any) by `***`, for text a server might echo it into.
fn scrub(text: &str, password: &Secret) -> String {
    if password.is_empty() {
        text.to_string()
    } else {
        text.replace(password.expose(), "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn reply(status: u16, ct: &str, body: &str) -> Reply {
        Reply {
            request: "POST /SM/9/rest/incidents".into(),
            status,
            content_type: Some(ct.into()),
            body: body.as_bytes().to_vec(),
        }
    }

    fn run(status: u16, ct: &str, body: &str) -> Result<Map<String, Value>, SmError> {
        interpret(&reply(status, ct, body), "falcon", &Secret::new("hunter2"))
    }

    const JSON: &str = "application/json";

    #[test]
    fn success_answers_yield_the_object() {
        let o = run(
            200,
            JSON,
            r#"{"ReturnCode":0,"Messages":[],"Incident":{"IncidentID":"IM1"}}"#,
        )
        .expect("ok");
        assert_eq!(o["Incident"]["IncidentID"], "IM1");
        // ReturnCode as a string, or absent, is tolerated.
        assert!(run(201, JSON, r#"{"ReturnCode":"0","Incident":{}}"#).is_ok());
        assert!(run(200, JSON, r#"{"Incident":{}}"#).is_ok());
    }

    #[test]
    fn malformed_success_answers_are_bad_responses() {
        for (body, problem) in [
            ("", "empty body"),
            ("   ", "empty body"),
            ("<html>hi</html>", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (
                r#"{"ReturnCode":9,"Messages":["duplicate"]}"#,
                "ReturnCode 9",
            ),
            (r#"{"ReturnCode":true}"#, "not a number"),
        ] {
            match run(200, JSON, body) {
                Err(e @ SmError::BadResponse { .. }) => {
                    assert!(e.to_string().contains(problem), "{e}");
                    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn error_answers_are_classified_by_status_and_body() {
        let e = run(
            401,
            JSON,
            r#"{"ReturnCode":-4,"Messages":["Not Authorized"]}"#,
        )
        .expect_err("401");
        assert!(
            matches!(&e, SmError::Unauthorized { user, messages } if user == "falcon" && messages == &["Not Authorized"])
        );
        let e = run(401, "text/html", "<html>login</html>").expect_err("401");
        assert_eq!(e.class(), ErrorClass::Unauthorized);
        let e = run(
            400,
            JSON,
            r#"{"ReturnCode":71,"Messages":["Title is required"]}"#,
        )
        .expect_err("400");
        assert!(matches!(
            &e,
            SmError::Rejected {
                status: 400,
                return_code: Some(71),
                ..
            }
        ));
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = run(429, JSON, r#"{"ReturnCode":-1,"Messages":["slow down"]}"#).expect_err("429");
        assert_eq!(e.class(), ErrorClass::Retryable);
        let e = run(503, JSON, r#"{"ReturnCode":-1,"Messages":["busy"]}"#).expect_err("503");
        assert!(matches!(&e, SmError::Server { status: 503, .. }));
        assert_eq!(e.class(), ErrorClass::Retryable);
        let e = run(501, JSON, r#"{"ReturnCode":-1}"#).expect_err("501");
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = run(
            502,
            "text/html",
            "<html><body><h1>Proxy Error</h1></body></html>",
        )
        .expect_err("502");
        match &e {
            SmError::BadResponse {
                status, snippet, ..
            } => {
                assert_eq!((*status, snippet.as_str()), (502, "Proxy Error"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.class(), ErrorClass::Retryable);
        let e = run(404, "text/html", "").expect_err("404");
        assert!(e.to_string().contains("empty body"), "{e}");
        assert_eq!(e.class(), ErrorClass::Permanent);
    }

    #[test]
    fn echoed_passwords_are_scrubbed() {
        let e = run(
            400,
            JSON,
            r#"{"ReturnCode":71,"Messages":["bad value hunter2"]}"#,
        )
        .expect_err("400");
        let e2 = run(500, "text/plain", "oops hunter2").expect_err("500");
        for e in [e, e2] {
            let s = format!("{e} {e:?}");
            assert!(!s.contains("hunter2") && s.contains("***"), "{s}");
        }
    }

    #[test]
    fn ids_and_queries_are_percent_encoded() {
        assert_eq!(encode("IM10001"), "IM10001");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(
            encode("Title=\"x\" and Status~=\"Closed\""),
            "Title%3D%22x%22%20and%20Status~%3D%22Closed%22"
        );
        assert!(check_id("  ").is_err());
    }

    #[test]
    fn urls_are_cut_into_origin_and_path() {
        assert_eq!(
            request_path("http://h:1/SM/9/rest/incidents?x=1"),
            "/SM/9/rest/incidents?x=1"
        );
        assert_eq!(origin("https://h:1/SM/9/rest"), "https://h:1");
        assert_eq!(origin("https://h:1"), "https://h:1");
    }

    #[test]
    fn snippets_are_short_and_html_free() {
        assert_eq!(
            snippet(b"<html><title>502</title><p>Bad  gateway</p></html>", None),
            "502 Bad gateway"
        );
        assert_eq!(
            snippet("y".repeat(900).as_bytes(), None).chars().count(),
            200
        );
    }

    #[test]
    fn https_without_a_ca_is_a_clear_config_error_and_debug_hides_the_password() {
        let e = SmClient::new(SmConfig::from_host("https://sm:13443", "falcon", "hunter2"))
            .expect_err("no CA");
        assert!(matches!(&e, SmError::Config(m) if m.contains("CA")), "{e}");
        let c = SmClient::new(SmConfig::from_host("sm", "falcon", "hunter2")).expect("client");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("falcon"), "{d}");
        assert_eq!(c.base_url(), "http://sm:13080/SM/9/rest");
        assert!(SmClient::new(SmConfig::from_host("sm", "a:b", "x")).is_err());
    }
}
