//! ServiceNow's Table API as this sink uses it: incidents created, found by `correlation_id`
//! or by `number`, patched; configuration items found by name; the credentials proved. The
//! transport (TLS trust, proxy, timeout, sending, `Retry-After`, what a transport failure
//! means) is the SaaS sinks' shared [`crate::sinks::http`]; here are what is ServiceNow's:
//! Basic or OAuth 2.0 client-credentials authentication (the token renewed before it expires,
//! and once more on a 401), its error envelope, and every failure turned into one typed
//! [`SnError`], whose [`SnError::call_error`] is the only place deciding what the ticketer
//! does about it (the shared classification, and ServiceNow's own rules over it).
//!
//! The client never retries a call by itself (a create without an answer may have happened;
//! only the ticketer knows to look it up first). Secrets live in [`Secret`]s and in sensitive
//! header values; no message of this module carries one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use scmb_oneview::Secret;
use serde_json::{Map, Value};

use super::NAME;
use crate::sinks::http::{Answer, Decision, HttpClient, HttpError, HttpSettings};
use crate::sinks::ticketing::{CallClass, CallError};

/// How the sink proves who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// Basic authentication on every call.
    Basic { user: String, password: Secret },
    /// OAuth 2.0 client credentials (`POST /oauth_token.do`), the token sent as a bearer.
    OAuth {
        client_id: String,
        client_secret: Secret,
    },
}

impl Auth {
    /// Who we are, for people: `user scmb` or `OAuth client 1a2b…`.
    pub fn who(&self) -> String {
        match self {
            Auth::Basic { user, .. } => format!("user {user}"),
            Auth::OAuth { client_id, .. } => format!("OAuth client {client_id}"),
        }
    }
}

/// What the client needs.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `https://NAME.service-now.com` (no trailing slash).
    pub instance: String,
    pub auth: Auth,
    pub http: HttpSettings,
}

/// A failed call, by what is known of its fate.
#[derive(Debug, thiserror::Error)]
pub enum SnError {
    /// The settings cannot work (a bad URL, an unreadable CA): nothing was sent.
    #[error("{0}")]
    Config(String),
    /// The transport failed: no connection, a refused certificate, no answer in time, the
    /// connection lost, an unreadable answer ([`HttpError`] says which, and whether the
    /// instance may have acted).
    #[error(transparent)]
    Http(Box<HttpError>),
    /// An error status, with ServiceNow's `error.message` and `error.detail`; `source` is the
    /// transport's [`HttpError::Status`] (status, `Retry-After`, the setting to fix).
    #[error(
        "{call}: ServiceNow answered {}: {message}{}",
        source.status().unwrap_or_default(),
        source.fix().filter(|f| !f.is_empty()).map(|f| format!("; {f}")).unwrap_or_default()
    )]
    Status {
        call: String,
        message: String,
        source: Box<HttpError>,
    },
    /// A success without the answer promised (an empty body, an HTML page, no `sys_id`).
    #[error("{call}: ServiceNow answered {status} but {why}")]
    Unusable {
        call: String,
        status: u16,
        why: String,
    },
    /// Getting an OAuth token failed: the call itself was not sent.
    #[error("getting an OAuth token: {0}")]
    Token(Box<SnError>),
}

/// ServiceNow's data policy refusal (`close_code`/`close_notes` missing): the request is wrong,
/// not our rights.
fn data_policy(message: &str) -> bool {
    message.contains("Data Policy Exception")
}

/// The ticketer's class for the shared transport's decision.
fn class(d: Decision) -> CallClass {
    match d {
        Decision::Retry { after } => CallClass::Retryable { after },
        // An operator must fix a setting (credentials, rights, the proxy's credentials, the
        // certificate's trust, the instance's address): the ticketer keeps the work and pauses.
        Decision::Pause => CallClass::Unauthorized,
        // Ok is never said of an error.
        Decision::Fail | Decision::Ok => CallClass::Permanent,
    }
}

impl SnError {
    /// What the ticketer does about it: THE classification of ServiceNow's failures, the
    /// shared one ([`HttpError::decision`], [`HttpError::may_have_acted`]) with ServiceNow's
    /// rules over it.
    ///
    /// - 429 (with its `Retry-After`), 408, 5xx but 501, timeouts, lost and refused
    ///   connections: again later.
    /// - 401, and 403 but a data policy's: our credentials or rights were refused; pause. So
    ///   do a 407, a redirect and an untrusted certificate (a setting to fix).
    /// - other 4xx, 501, a data policy's 403, bad settings: never as sent.
    /// - may have acted: sent with no complete answer, a 5xx, a success without a usable
    ///   body. A create is then looked up by its `correlation_id` before being sent again.
    /// - getting a token: a 400, 401 or 403 is refused client credentials; it never acted.
    pub fn call_error(&self) -> CallError {
        let (class, may_have_acted) = match self {
            SnError::Config(_) => (CallClass::Permanent, false),
            SnError::Status {
                message, source, ..
            } if source.status() == Some(403) && data_policy(message) => {
                (CallClass::Permanent, false)
            }
            SnError::Status { source, .. } | SnError::Http(source) => {
                (class(source.decision()), source.may_have_acted())
            }
            SnError::Unusable { .. } => (CallClass::Retryable { after: None }, true),
            SnError::Token(inner) => {
                let class = match inner.status() {
                    // The instance refused the client id or secret (it answers 401, or 400
                    // for a malformed request): credentials, not a passing fault.
                    Some(400 | 401 | 403) => CallClass::Unauthorized,
                    _ => inner.call_error().class,
                };
                (class, false)
            }
        };
        CallError {
            message: self.to_string(),
            class,
            may_have_acted,
        }
    }

    /// The HTTP status of an error answer, when one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            SnError::Status { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The transport's error under it, when there is one (a token's included).
    pub fn http(&self) -> Option<&HttpError> {
        match self {
            SnError::Http(e) | SnError::Status { source: e, .. } => Some(e),
            SnError::Token(inner) => inner.http(),
            SnError::Config(_) | SnError::Unusable { .. } => None,
        }
    }

    /// What the transport said of `call`: an error status with ServiceNow's message, or the
    /// transport's failure.
    fn from_http(call: &str, e: HttpError) -> SnError {
        match e.answer().map(|a| error_message(&a.body)) {
            Some(message) => SnError::Status {
                call: call.to_string(),
                message,
                source: Box::new(e),
            },
            None => SnError::Http(Box::new(e)),
        }
    }
}

/// `error.message: error.detail` of ServiceNow's envelope, else the start of the body.
fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let err = v.as_ref().and_then(|v| v.get("error"));
    let s = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    match (s("message"), s("detail")) {
        (Some(m), Some(d)) => format!("{m}: {}", one_line(d)),
        (Some(m), None) => m.to_string(),
        // The OAuth endpoint's own form.
        _ => match v
            .as_ref()
            .and_then(|v| v.get("error_description").or_else(|| v.get("error")))
            .and_then(Value::as_str)
        {
            Some(d) => d.to_string(),
            None => snippet(body),
        },
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The start of a body that is not ServiceNow's JSON, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t = one_line(&text);
    if t.is_empty() {
        return "an empty body".into();
    }
    let cut: String = t.chars().take(160).collect();
    if cut.len() < t.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// An encoded query's `field=value`, the value's carets doubled (a caret separates terms).
pub fn eq(field: &str, value: &str) -> String {
    format!("{field}={}", value.replace('^', "^^"))
}

/// An incident as the sink needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// `INC0010001`: what people see, and what is written into the alert.
    pub number: String,
    /// The record's key, for updates.
    pub sys_id: String,
    /// `1` New … `6` Resolved, `7` Closed, `8` Canceled.
    pub state: String,
}

impl Incident {
    /// Closed or canceled: read-only for the API.
    pub fn is_closed(&self) -> bool {
        self.state == "7" || self.state == "8"
    }

    /// Resolved (state 6): people consider it fixed; it may still be reopened.
    pub fn is_resolved(&self) -> bool {
        self.state == "6"
    }

    fn from(v: &Value) -> Option<Incident> {
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .filter(|s| !s.is_empty())
        };
        Some(Incident {
            number: s("number")?,
            sys_id: s("sys_id")?,
            state: s("state").unwrap_or_default(),
        })
    }
}

const FIELDS: &str = "sys_id,number,state";

/// An OAuth access token, with when to ask for the next one.
#[derive(Clone)]
struct Token {
    header: HeaderValue,
    renew_at: Instant,
}

/// A ServiceNow Table API client. Cheap to clone (one connection pool and one token, shared);
/// `Debug` shows the instance and who we are, never a secret.
#[derive(Clone)]
pub struct SnClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared transport, its base URL the instance.
    http: HttpClient,
    auth: Auth,
    /// `Basic …`, sensitive; none with OAuth.
    basic: Option<HeaderValue>,
    /// The current OAuth token; the lock also makes one lane fetch it while the others wait.
    token: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for SnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnClient")
            .field("instance", &self.inner.http.base_url())
            .field("who", &self.inner.auth.who())
            .finish_non_exhaustive()
    }
}

impl SnClient {
    /// Checks the settings and builds the transport (no I/O yet).
    pub fn new(s: &ClientSettings) -> Result<SnClient, SnError> {
        // No secret is given to be scrubbed from answers: ServiceNow does not echo them, and
        // a short password scrubbed from every answer could corrupt its data.
        let http = HttpClient::with_url_key(NAME, "instance", &s.instance, &s.http, "", vec![])
            .map_err(|e| SnError::Config(e.to_string()))?;
        let basic = match &s.auth {
            Auth::Basic { user, password } => {
                if user.is_empty() || user.contains(':') {
                    return Err(SnError::Config(
                        "the ServiceNow user must be non-empty and must not contain ':'".into(),
                    ));
                }
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()));
                let mut h = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                    SnError::Config("the ServiceNow credentials are not a valid header".into())
                })?;
                h.set_sensitive(true);
                Some(h)
            }
            Auth::OAuth { client_id, .. } => {
                if client_id.is_empty() {
                    return Err(SnError::Config("client_id is empty".into()));
                }
                None
            }
        };
        Ok(SnClient {
            inner: Arc::new(Inner {
                http,
                auth: s.auth.clone(),
                basic,
                token: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The instance's URL.
    pub fn base_url(&self) -> &str {
        self.inner.http.base_url()
    }

    /// Who we are, for people.
    pub fn who(&self) -> String {
        self.inner.auth.who()
    }

    /// The Authorization header for the next call: Basic, or the current OAuth token (a new
    /// one when it is about to expire).
    async fn authorization(&self) -> Result<HeaderValue, SnError> {
        if let Some(b) = &self.inner.basic {
            return Ok(b.clone());
        }
        let mut current = self.inner.token.lock().await;
        if let Some(t) = current.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.header.clone());
        }
        let t = self
            .fetch_token()
            .await
            .map_err(|e| SnError::Token(Box::new(e)))?;
        *current = Some(t.clone());
        Ok(t.header)
    }

    /// Forgets the token `used` (refused by the instance) unless another call already did.
    async fn forget_token(&self, used: &HeaderValue) {
        let mut current = self.inner.token.lock().await;
        if current.as_ref().is_some_and(|t| t.header == used) {
            *current = None;
        }
    }

    /// `POST /oauth_token.do` with the client credentials grant.
    async fn fetch_token(&self) -> Result<Token, SnError> {
        let Auth::OAuth {
            client_id,
            client_secret,
        } = &self.inner.auth
        else {
            return Err(SnError::Config("not an OAuth client".into()));
        };
        let call = "POST /oauth_token.do".to_string();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
        ];
        let req = self
            .inner
            .http
            .request(Method::POST, "/oauth_token.do")
            .header(ACCEPT, "application/json")
            .form(&form);
        let Answer { status, body, .. } = self
            .inner
            .http
            .send(req)
            .await
            .map_err(|e| SnError::from_http(&call, e))?;
        let v: Value = serde_json::from_slice(&body).map_err(|_| SnError::Unusable {
            call: call.clone(),
            status,
            why: format!("the answer is not JSON ({})", snippet(&body)),
        })?;
        let access = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SnError::Unusable {
                call: call.clone(),
                status,
                why: "the answer has no access_token".into(),
            })?;
        let lifetime = Duration::from_secs(
            v.get("expires_in")
                .and_then(|e| e.as_u64().or_else(|| e.as_str()?.parse().ok()))
                .unwrap_or(1800),
        );
        let mut header =
            HeaderValue::from_str(&format!("Bearer {access}")).map_err(|_| SnError::Unusable {
                call: call.clone(),
                status,
                why: "the access_token is not a valid header".into(),
            })?;
        header.set_sensitive(true);
        tracing::debug!(
            expires_in_s = lifetime.as_secs(),
            "ServiceNow OAuth token obtained"
        );
        Ok(Token {
            header,
            renew_at: Instant::now() + renew_after(lifetime),
        })
    }

    /// One call: the answer's JSON on a success, else what went wrong. With OAuth, a 401
    /// gets a new token and the call is sent once more (the token may have expired early, or
    /// been revoked).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Map<String, Value>>,
    ) -> Result<Value, SnError> {
        let call = format!("{method} {path}");
        let mut renewed = false;
        loop {
            let auth = self.authorization().await?;
            let mut req = self
                .inner
                .http
                .request(method.clone(), path)
                .query(query)
                .header(ACCEPT, "application/json")
                .header(AUTHORIZATION, auth.clone());
            if let Some(b) = body {
                req = req.json(b);
            }
            let Answer {
                status,
                body: bytes,
                ..
            } = match self.inner.http.send(req).await {
                Ok(a) => a,
                Err(e) if e.status() == Some(401) && self.inner.basic.is_none() && !renewed => {
                    tracing::debug!("ServiceNow refused the OAuth token; getting a new one");
                    self.forget_token(&auth).await;
                    renewed = true;
                    continue;
                }
                Err(e) => return Err(SnError::from_http(&call, e)),
            };
            return serde_json::from_slice::<Value>(&bytes)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| SnError::Unusable {
                    call,
                    status,
                    why: format!("the answer is not JSON ({})", snippet(&bytes)),
                });
        }
    }

    /// `result` of an answer, which must be an object.
    fn result_object(call: &str, v: &Value) -> Result<Map<String, Value>, SnError> {
        v.get("result")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| SnError::Unusable {
                call: call.to_string(),
                status: 200,
                why: "the answer has no result object".into(),
            })
    }

    /// `result` of a list answer, which must be an array.
    fn result_list(call: &str, v: &Value) -> Result<Vec<Value>, SnError> {
        v.get("result")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| SnError::Unusable {
                call: call.to_string(),
                status: 200,
                why: "the answer has no result list".into(),
            })
    }

    /// `POST /api/now/table/incident`: the new incident's number and sys_id. A success
    /// without them fails as [`SnError::Unusable`] (it may have created the incident).
    pub async fn create_incident(&self, fields: &Map<String, Value>) -> Result<Incident, SnError> {
        let path = "/api/now/table/incident";
        let v = self
            .call(
                Method::POST,
                path,
                &[
                    ("sysparm_fields", FIELDS),
                    ("sysparm_exclude_reference_link", "true"),
                ],
                Some(fields),
            )
            .await?;
        let call = format!("POST {path}");
        let r = Self::result_object(&call, &v)?;
        Incident::from(&Value::Object(r)).ok_or_else(|| SnError::Unusable {
            call,
            status: 201,
            why: "the answer has no number and sys_id".into(),
        })
    }

    /// The oldest incident whose `field` equals `value` (`correlation_id`, `number`).
    pub async fn find_incident(
        &self,
        field: &str,
        value: &str,
    ) -> Result<Option<Incident>, SnError> {
        self.first_incident(&eq(field, value)).await
    }

    /// The oldest incident matching an encoded query (terms joined by `^`).
    pub async fn first_incident(&self, query: &str) -> Result<Option<Incident>, SnError> {
        Ok(self
            .incidents(&format!("{query}^ORDERBYsys_created_on"), 1)
            .await?
            .into_iter()
            .next())
    }

    /// At most `limit` incidents matching an encoded query.
    pub async fn incidents(&self, query: &str, limit: usize) -> Result<Vec<Incident>, SnError> {
        let path = "/api/now/table/incident";
        let limit = limit.to_string();
        let v = self
            .call(
                Method::GET,
                path,
                &[
                    ("sysparm_query", query),
                    ("sysparm_fields", FIELDS),
                    ("sysparm_limit", &limit),
                    ("sysparm_exclude_reference_link", "true"),
                ],
                None,
            )
            .await?;
        let call = format!("GET {path}");
        Self::result_list(&call, &v)?
            .iter()
            .map(|row| {
                Incident::from(row).ok_or_else(|| SnError::Unusable {
                    call: call.clone(),
                    status: 200,
                    why: "an incident listed has no number or sys_id".into(),
                })
            })
            .collect()
    }

    /// `PATCH /api/now/table/incident/{sys_id}` with `fields`.
    pub async fn update_incident(
        &self,
        sys_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), SnError> {
        if sys_id.is_empty() || !sys_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(SnError::Config(format!("{sys_id:?} is not a sys_id")));
        }
        let path = format!("/api/now/table/incident/{sys_id}");
        let v = self
            .call(
                Method::PATCH,
                &path,
                &[("sysparm_fields", FIELDS)],
                Some(fields),
            )
            .await?;
        Self::result_object(&format!("PATCH {path}"), &v).map(|_| ())
    }

    /// The sys_id of the configuration item named `name`, if there is one.
    pub async fn ci_by_name(&self, name: &str) -> Result<Option<String>, SnError> {
        let path = "/api/now/table/cmdb_ci";
        let query = eq("name", name);
        let v = self
            .call(
                Method::GET,
                path,
                &[
                    ("sysparm_query", &query),
                    ("sysparm_fields", "sys_id"),
                    ("sysparm_limit", "1"),
                ],
                None,
            )
            .await?;
        Ok(Self::result_list(&format!("GET {path}"), &v)?
            .first()
            .and_then(|r| r.get("sys_id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }

    /// Proves the address and the credentials (a token too, with OAuth) by reading one
    /// incident's sys_id (`table`: also `cmdb_ci`); changes nothing.
    pub async fn probe(&self, table: &str) -> Result<(), SnError> {
        let path = format!("/api/now/table/{table}");
        let v = self
            .call(
                Method::GET,
                &path,
                &[("sysparm_limit", "1"), ("sysparm_fields", "sys_id")],
                None,
            )
            .await?;
        Self::result_list(&format!("GET {path}"), &v).map(|_| ())
    }

    /// `POST /api/global/em/jsonv2 {"records": [...]}`: Event Management's inbound event
    /// web service. A 200 with a JSON object is success (the instance answers how many events
    /// it inserted; an event it cannot process lands in `em_event` in state Error, not in the
    /// answer). Anything else fails as the other calls do; sending the same events again is
    /// harmless when they carry a `message_key`.
    pub async fn send_events(&self, records: Vec<Value>) -> Result<(), SnError> {
        let mut body = Map::new();
        body.insert("records".into(), Value::Array(records));
        self.call(Method::POST, EVENTS_PATH, &[], Some(&body))
            .await
            .map(|_| ())
    }
}

/// Event Management's inbound event web service.
pub const EVENTS_PATH: &str = "/api/global/em/jsonv2";

/// When to renew a token of this lifetime: a minute before it expires, or at three quarters of
/// a short one, so that no call goes out with a token about to lapse.
fn renew_after(lifetime: Duration) -> Duration {
    let margin = Duration::from_secs(60).min(lifetime / 4);
    lifetime - margin
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::http::Proxy;

    fn status(status: u16, message: &str, retry_after: Option<u64>) -> SnError {
        SnError::Status {
            call: "POST /api/now/table/incident".into(),
            message: message.into(),
            source: Box::new(HttpError::Status {
                request: "POST https://acme.service-now.com/api/now/table/incident".into(),
                answer: Answer {
                    status,
                    content_type: Some("application/json".into()),
                    retry_after: retry_after.map(Duration::from_secs),
                    body: Vec::new(),
                },
                fix: None,
            }),
        }
    }

    #[test]
    fn failures_are_classified_in_one_place() {
        let c = |e: SnError| {
            let c = e.call_error();
            (c.class, c.may_have_acted)
        };
        let retry = |s: Option<u64>| CallClass::Retryable {
            after: s.map(Duration::from_secs),
        };
        // Rate limited: after its Retry-After, and nothing was done.
        assert_eq!(
            c(status(429, "Rate limit exceeded", Some(7))),
            (retry(Some(7)), false)
        );
        assert_eq!(c(status(408, "", None)), (retry(None), false));
        // A 5xx may have acted; 501 never will work.
        assert_eq!(
            c(status(503, "Service Unavailable", None)),
            (retry(None), true)
        );
        assert_eq!(c(status(501, "", None)), (CallClass::Permanent, false));
        assert_eq!(
            c(status(401, "User Not Authenticated", None)),
            (CallClass::Unauthorized, false)
        );
        assert_eq!(
            c(status(
                403,
                "Operation Failed: ACL Exception Insert Failed",
                None
            )),
            (CallClass::Unauthorized, false)
        );
        // A data policy is about the request, not our rights.
        assert_eq!(
            c(status(
                403,
                "Operation Failed: Data Policy Exception: The following fields are mandatory: Resolution code",
                None
            )),
            (CallClass::Permanent, false)
        );
        assert_eq!(
            c(status(400, "Invalid table", None)),
            (CallClass::Permanent, false)
        );
        let request = "POST https://acme.service-now.com/api/now/table/incident".to_string();
        assert_eq!(
            c(SnError::Http(Box::new(HttpError::Connect {
                url: "https://acme.service-now.com/api/now/table/incident".into(),
                detail: "refused".into()
            }))),
            (retry(None), false)
        );
        assert_eq!(
            c(SnError::Http(Box::new(HttpError::Timeout {
                request: request.clone(),
                after: Duration::from_secs(30)
            }))),
            (retry(None), true)
        );
        assert_eq!(
            c(SnError::Http(Box::new(HttpError::Lost {
                request,
                detail: "connection reset".into()
            }))),
            (retry(None), true)
        );
        // A setting to fix: the work pauses.
        assert_eq!(
            c(SnError::Http(Box::new(HttpError::Tls {
                url: "https://acme.service-now.com".into(),
                detail: "unknown issuer".into(),
                fix: "set servicenow.ca".into()
            }))),
            (CallClass::Unauthorized, false)
        );
        assert_eq!(c(status(407, "", None)), (CallClass::Unauthorized, false));
        assert_eq!(
            c(SnError::Unusable {
                call: "POST /api/now/table/incident".into(),
                status: 201,
                why: "an empty body".into()
            }),
            (retry(None), true)
        );
        // A refused client: credentials; a token failure never acted.
        assert_eq!(
            c(SnError::Token(Box::new(status(401, "access_denied", None)))),
            (CallClass::Unauthorized, false)
        );
        assert_eq!(
            c(SnError::Token(Box::new(status(503, "", None)))),
            (retry(None), false)
        );
        assert_eq!(
            c(SnError::Config("bad".into())),
            (CallClass::Permanent, false)
        );
    }

    #[test]
    fn servicenows_error_envelope_becomes_the_message() {
        let body = br#"{"error":{"message":"Operation Failed","detail":"Data Policy Exception: \n\tThe following fields are mandatory: Resolution code\n"},"status":"failure"}"#;
        assert_eq!(
            error_message(body),
            "Operation Failed: Data Policy Exception: The following fields are mandatory: Resolution code"
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"No Record found","detail":null}}"#),
            "No Record found"
        );
        assert_eq!(
            error_message(br#"{"error_description":"access_denied","error":"server_error"}"#),
            "access_denied"
        );
        assert_eq!(error_message(b""), "an empty body");
        let html =
            error_message(b"<html><body>\n<h1>Your instance is hibernating</h1></body></html>");
        assert!(html.starts_with("<html><body> <h1>Your instance"), "{html}");
        let long = error_message("x".repeat(500).as_bytes());
        assert!(long.chars().count() <= 161, "{long}");
    }

    #[test]
    fn query_values_cannot_add_terms() {
        assert_eq!(eq("name", "Encl1"), "name=Encl1");
        assert_eq!(eq("name", "a^ORname=b"), "name=a^^ORname=b");
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(
            renew_after(Duration::from_secs(1800)),
            Duration::from_secs(1740)
        );
        assert_eq!(renew_after(Duration::from_secs(8)), Duration::from_secs(6));
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }

    fn oauth(url: &str) -> SnClient {
        oauth_with(url, "secret")
    }

    /// An OAuth client of the simulator's application, with this secret.
    fn oauth_with(url: &str, secret: &str) -> SnClient {
        SnClient::new(&ClientSettings {
            instance: url.into(),
            auth: Auth::OAuth {
                client_id: "scmb-sim".into(),
                client_secret: Secret::new(secret),
            },
            http: HttpSettings {
                proxy: Proxy::Direct,
                timeout: Duration::from_secs(5),
                ..HttpSettings::default()
            },
        })
        .expect("client")
    }

    /// A client for the simulator's control routes (plain HTTP).
    fn plain() -> reqwest::Client {
        scmb_sim::client::http_client(None).expect("control client")
    }

    async fn requests(url: &str) -> u64 {
        let v: Value = plain()
            .get(format!("{url}/sim/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        v["requests"].as_u64().expect("requests")
    }

    #[tokio::test]
    async fn a_revoked_token_is_replaced_once_and_the_call_goes_on() {
        let sn =
            scmb_sim::testkit::serve_servicenow(scmb_sim::servicenow::SnConfig::default()).await;
        let c = oauth(&sn.url);
        c.probe("incident").await.expect("first call");
        plain()
            .post(format!("{}/sim/tokens/expire", sn.url))
            .send()
            .await
            .expect("expire");
        let before = requests(&sn.url).await;
        c.probe("incident").await.expect("after revocation");
        // Refused, a new token, the call again.
        assert_eq!(requests(&sn.url).await - before, 3);
        // Refused whatever the token: the credentials are, once a new token was tried.
        sn.state.set_faults(scmb_sim::servicenow::SnFaults {
            unauthorized: true,
            ..Default::default()
        });
        let e = c.probe("incident").await.expect_err("refused");
        assert_eq!(e.call_error().class, CallClass::Unauthorized, "{e}");
        // A wrong client secret is credentials too.
        sn.state.set_faults(Default::default());
        let bad = oauth_with(&sn.url, "wrong");
        let e = bad.probe("incident").await.expect_err("bad secret");
        assert_eq!(e.call_error().class, CallClass::Unauthorized, "{e}");
        assert!(!e.to_string().contains("wrong"), "{e}");
    }

    #[tokio::test]
    async fn the_shared_transport_classifies_and_servicenow_words_the_answer() {
        let sn =
            scmb_sim::testkit::serve_servicenow(scmb_sim::servicenow::SnConfig::default()).await;
        let c = oauth(&sn.url);
        c.probe("incident").await.expect("first call");
        sn.state.set_faults(scmb_sim::servicenow::SnFaults {
            rate_limit_next: 1,
            retry_after_s: Some(7),
            ..Default::default()
        });
        let e = c.probe("incident").await.expect_err("rate limited");
        assert_eq!(e.status(), Some(429), "{e}");
        assert!(
            e.to_string()
                .starts_with("GET /api/now/table/incident: ServiceNow answered 429: "),
            "{e}"
        );
        let ce = e.call_error();
        assert_eq!(
            (ce.class, ce.may_have_acted),
            (
                CallClass::Retryable {
                    after: Some(Duration::from_secs(7))
                },
                false
            ),
            "{e}"
        );

        // Nothing listens there: never sent.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let c = oauth(&format!("http://{closed}"));
        let e = c.probe("incident").await.expect_err("refused");
        assert!(
            matches!(&e, SnError::Token(t) if matches!(t.http(), Some(HttpError::Connect { .. }))),
            "{e:?}"
        );
        let ce = e.call_error();
        assert_eq!(
            (ce.class, ce.may_have_acted),
            (CallClass::Retryable { after: None }, false)
        );
    }

    #[tokio::test]
    async fn a_token_is_renewed_before_it_expires() {
        let sn = scmb_sim::testkit::serve_servicenow(scmb_sim::servicenow::SnConfig {
            token_lifetime: Duration::from_secs(2),
            ..Default::default()
        })
        .await;
        let c = oauth(&sn.url);
        c.probe("incident").await.expect("first call");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let before = requests(&sn.url).await;
        c.probe("incident").await.expect("after the lifetime");
        // A new token first, then the call: never a refused one.
        assert_eq!(requests(&sn.url).await - before, 2);
    }

    #[test]
    fn debug_and_errors_never_show_a_secret() {
        let s = ClientSettings {
            instance: "http://127.0.0.1:9".into(),
            auth: Auth::OAuth {
                client_id: "scmb".into(),
                client_secret: Secret::new("top-secret"),
            },
            http: HttpSettings {
                timeout: Duration::from_secs(1),
                ..HttpSettings::default()
            },
        };
        let c = SnClient::new(&s).expect("client");
        let shown = format!("{c:?} {s:?}");
        assert!(!shown.contains("top-secret"), "{shown}");
        assert!(shown.contains("OAuth client scmb"), "{shown}");
    }
}
