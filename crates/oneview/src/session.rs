//! A logged-in session: every call carries `X-API-Version` and `Auth`, re-logs in once on 401
//! and retries; on top of it the calls scmb needs — EULA, the appliance CA in both API
//! generations, the message-bus keypair and its generation task, tasks, and alerts (one, a
//! filtered and paged list, and notes written back with the current eTag).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::client::{rel_path, task_uri, Client, Reply, Request};
use crate::error::OneViewError;
use crate::secret::{Credentials, Secret};
use crate::types::{Generation, Keypair, Task, TaskOutcome};

const KEYPAIR_PATH: &str = "/rest/certificates/client/rabbitmq/keypair/default";
/// PUT attempts on an alert whose eTag keeps changing under us.
const NOTE_ATTEMPTS: u32 = 5;

/// How one note's `PUT` went.
enum NotePut {
    /// Written: the alert as it is now.
    Done(Value),
    /// The alert changed since its eTag was read (412).
    Stale(OneViewError),
}

const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(5);

/// When a call is tried again. Today a call is made once and transient failures (503, an
/// unreachable appliance) go back to the caller, who decides; a policy can be set here later
/// without touching the calls.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    attempts: u32,
    delay: Duration,
}

impl RetryPolicy {
    const ONCE: RetryPolicy = RetryPolicy {
        attempts: 1,
        delay: Duration::ZERO,
    };

    async fn run<T, F, Fut>(&self, mut f: F) -> Result<T, OneViewError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OneViewError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    tracing::debug!(attempt, error = %e, "transient OneView failure, retrying");
                    tokio::time::sleep(self.delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A logged-in session with one appliance. Shareable between tasks (`&self` everywhere).
pub struct Session {
    client: Client,
    creds: Credentials,
    token: Mutex<Secret>,
    relogin: tokio::sync::Mutex<()>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client", &self.client)
            .field("user", &self.creds.user)
            .field("session_id", &"***")
            .finish()
    }
}

impl Session {
    pub(crate) fn new(client: Client, creds: Credentials, token: Secret) -> Session {
        Session {
            client,
            creds,
            token: Mutex::new(token),
            relogin: tokio::sync::Mutex::new(()),
            retry: RetryPolicy::ONCE,
        }
    }

    /// The API version sent as `X-API-Version`.
    pub fn api_version(&self) -> u32 {
        self.client.api_version()
    }

    /// The unauthenticated client this session was made from.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn token(&self) -> Secret {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One call with the session; on 401 a new login (shared with concurrent callers) and
    /// one retry.
    async fn call_once(&self, req: &Request<'_>) -> Result<Reply, OneViewError> {
        let t = &self.client.inner;
        let used = self.token();
        let reply = t.send_auth(req, Some(&used)).await?;
        if reply.status != 401 {
            return Ok(reply);
        }
        tracing::warn!(host = %t.host(), request = %reply.request, "session refused (HTTP 401), logging in again");
        let fresh = self.relogin(&used).await?;
        let reply = t.send_auth(req, Some(&fresh)).await?;
        if reply.status == 401 {
            return Err(OneViewError::SessionExpired);
        }
        Ok(reply)
    }

    async fn relogin(&self, stale: &Secret) -> Result<Secret, OneViewError> {
        let _one_at_a_time = self.relogin.lock().await;
        let current = self.token();
        if current != *stale {
            return Ok(current); // another call logged in meanwhile
        }
        let fresh = self.client.inner.login(&self.creds).await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// A call under the retry policy; 502–504 answers count as (transient) errors.
    async fn call(&self, req: &Request<'_>) -> Result<Reply, OneViewError> {
        self.retry
            .run(|| async {
                let r = self.call_once(req).await?;
                if matches!(r.status, 502..=504) {
                    Err(r.error())
                } else {
                    Ok(r)
                }
            })
            .await
    }

    async fn get_json(&self, path: &str) -> Result<Value, OneViewError> {
        self.call(&Request::new(Method::GET, path))
            .await?
            .into_json()
    }

    /// Keeps the session alive during long idle periods: an authenticated, cheap read
    /// (`GET /rest/sessions/idle-timeout`), re-logging in if the session had expired anyway.
    /// Returns the appliance's idle timeout in milliseconds when it says.
    pub async fn keep_alive(&self) -> Result<Option<u64>, OneViewError> {
        let v = self.get_json("/rest/sessions/idle-timeout").await?;
        Ok(v.get("idleTimeout").and_then(Value::as_u64))
    }

    /// `GET /rest/appliance/eula/status`: `true` while the EULA must still be accepted.
    pub async fn eula_status(&self) -> Result<bool, OneViewError> {
        self.client.inner.eula_status(Some(&self.token())).await
    }

    /// `POST /rest/appliance/eula/save {"supportAccess": "yes"|"no"}`.
    pub async fn accept_eula(&self, support_access: bool) -> Result<(), OneViewError> {
        self.client
            .inner
            .accept_eula(support_access, Some(&self.token()))
            .await
    }

    /// The appliance's internal CA (signs the broker's certificate), PEM. API ≤ 500: a JSON
    /// string; later: the `INTERNAL` member of the CA collection.
    pub async fn ca_certificate(&self) -> Result<String, OneViewError> {
        let req = if self.api_version() <= 500 {
            Request::new(Method::GET, "/rest/certificates/ca")
        } else {
            Request::new(
                Method::GET,
                "/rest/certificates/ca?filter=certType%3AINTERNAL",
            )
            .header("If-Req-CertDetails", "true")
        };
        let reply = self.call(&req).await?;
        if !reply.is_success() {
            return Err(reply.error());
        }
        let v = reply.json()?;
        ca_pem(&v).ok_or_else(|| {
            reply.bad("no PEM certificate (expected a JSON string or members[].certificateDetails.base64Data)")
        })
    }

    /// The message-bus client keypair; `None` while it has not been generated (404).
    pub async fn keypair(&self) -> Result<Option<Keypair>, OneViewError> {
        let reply = self.call(&Request::new(Method::GET, KEYPAIR_PATH)).await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.error());
        }
        let v = reply.json()?;
        Keypair::from_json(&v)
            .map(Some)
            .ok_or_else(|| reply.bad("no PEM in base64SSLCertData and base64SSLKeyData"))
    }

    /// Asks the appliance to generate the keypair (do it only after [`Session::keypair`]
    /// answered `None`: every POST is logged on the appliance).
    pub async fn generate_keypair(&self) -> Result<Generation, OneViewError> {
        let body = json!({"commonName": "default", "type": "RabbitMqClientCertV2"});
        let reply = self
            .call(&Request::new(Method::POST, "/rest/certificates/client/rabbitmq").body(&body))
            .await?;
        if reply.is_success() {
            let uri = task_uri(&reply)
                .ok_or_else(|| reply.bad("no task (neither a Location header nor a task body)"))?;
            tracing::info!(task = %uri, "keypair generation started");
            return Ok(Generation::Started { task_uri: uri });
        }
        let err = reply.error();
        if reply.status == 409
            && err
                .error_code()
                .is_some_and(|c| c.eq_ignore_ascii_case("RABBITMQ_CLIENTCERT_CONFLICT"))
        {
            return Ok(Generation::AlreadyExists);
        }
        Err(err)
    }

    /// Polls a task (0.25 s, growing to 5 s) until it ends or `timeout` runs out; `progress`
    /// sees every state read. Completed and Warning are success.
    pub async fn wait_task(
        &self,
        task_uri: &str,
        timeout: Duration,
        mut progress: impl FnMut(&Task),
    ) -> Result<Task, OneViewError> {
        let uri = rel_path(task_uri);
        let deadline = Instant::now() + timeout;
        let timed_out = || OneViewError::TaskTimeout { uri: uri.clone() };
        let mut delay = FIRST_POLL;
        loop {
            let req = Request::new(Method::GET, &uri);
            let reply = tokio::time::timeout_at(deadline, self.call(&req))
                .await
                .map_err(|_| timed_out())??;
            if !reply.is_success() {
                return Err(reply.error());
            }
            let v = reply.json()?;
            let task =
                Task::from_json(&v, &uri).ok_or_else(|| reply.bad("not a task (no taskState)"))?;
            progress(&task);
            match task.outcome() {
                TaskOutcome::Succeeded => {
                    if task.state.eq_ignore_ascii_case("warning") {
                        tracing::warn!(task = %uri, errors = %task.errors.join("; "), "task completed with a warning");
                    }
                    return Ok(task);
                }
                TaskOutcome::Failed => {
                    return Err(OneViewError::TaskFailed {
                        uri,
                        state: task.state,
                        errors: task.errors,
                    })
                }
                TaskOutcome::Running => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(MAX_POLL);
        }
    }

    /// One alert by URI (`/rest/alerts/{id}`, absolute URIs accepted); `None` if unknown (404).
    pub async fn alert(&self, uri: &str) -> Result<Option<Value>, OneViewError> {
        let reply = self.call(&Request::new(Method::GET, uri)).await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.error());
        }
        let v = reply.json()?;
        if !v.is_object() {
            return Err(reply.bad("an alert must be a JSON object"));
        }
        Ok(Some(v))
    }

    async fn current_etag(&self, path: &str) -> Result<Option<String>, OneViewError> {
        let v = self.get_json(path).await?;
        Ok(v.get("eTag").and_then(Value::as_str).map(str::to_string))
    }

    /// Appends a note to an alert's changeLog: reads the current eTag, then
    /// `PUT {"notes", "eTag"}` (nothing else, so assignment, urgency and state stay as they
    /// are). Returns the updated alert.
    pub async fn add_alert_note(&self, uri: &str, notes: &str) -> Result<Value, OneViewError> {
        self.add_alert_note_with_etag(uri, notes, None).await
    }

    /// Like [`Session::add_alert_note`], starting with an eTag the caller already has (e.g.
    /// from the SCMB message). When the alert changed meanwhile (412) it is read again and the
    /// PUT retried, up to 5 attempts in all.
    pub async fn add_alert_note_with_etag(
        &self,
        uri: &str,
        notes: &str,
        etag: Option<&str>,
    ) -> Result<Value, OneViewError> {
        let path = rel_path(uri);
        let mut etag = match etag {
            Some(e) => Some(e.to_string()),
            None => self.current_etag(&path).await?,
        };
        let mut attempt = 1;
        loop {
            match self.put_note(&path, notes, etag.as_deref()).await? {
                NotePut::Done(alert) => return Ok(alert),
                NotePut::Stale(err) if attempt >= NOTE_ATTEMPTS => return Err(err),
                NotePut::Stale(_) => {}
            }
            tracing::debug!(alert = %path, attempt, "alert changed meanwhile (stale eTag), reading it again");
            attempt += 1;
            etag = self.current_etag(&path).await?;
        }
    }

    /// Appends a note to an alert's changeLog only if the alert is still as it was at `etag`
    /// (`PUT` with that eTag, once): `None` when it changed meanwhile (412). Two clients that
    /// read the same alert and both write are told apart: one wins, the other gets `None`.
    pub async fn add_alert_note_if(
        &self,
        uri: &str,
        notes: &str,
        etag: &str,
    ) -> Result<Option<Value>, OneViewError> {
        Ok(
            match self.put_note(&rel_path(uri), notes, Some(etag)).await? {
                NotePut::Done(alert) => Some(alert),
                NotePut::Stale(_) => None,
            },
        )
    }

    /// Clears an alert (`PUT {"alertState": "Cleared", "notes", "eTag"}`, nothing else) only if it is
    /// still as it was at `etag`: `None` when it changed meanwhile (412), so that a newer
    /// change (someone else's clear, a note, a new severity) is never overwritten unseen.
    /// `notes` goes into the alert's change log with the clear (empty: none).
    pub async fn clear_alert_if(
        &self,
        uri: &str,
        etag: &str,
        notes: &str,
    ) -> Result<Option<Value>, OneViewError> {
        let mut body = Map::new();
        body.insert("alertState".into(), json!("Cleared"));
        if !notes.is_empty() {
            body.insert("notes".into(), json!(notes));
        }
        Ok(
            match self.put_fields(&rel_path(uri), body, Some(etag)).await? {
                NotePut::Done(alert) => Some(alert),
                NotePut::Stale(_) => None,
            },
        )
    }

    /// One `PUT {"notes", "eTag"}` (nothing else, so assignment, urgency and state stay as
    /// they are): the alert as updated, or the 412 of a stale eTag.
    async fn put_note(
        &self,
        path: &str,
        notes: &str,
        etag: Option<&str>,
    ) -> Result<NotePut, OneViewError> {
        let mut body = Map::new();
        body.insert("notes".into(), json!(notes));
        self.put_fields(path, body, etag).await
    }

    /// One `PUT` of `body` (with the eTag when given): the alert as updated, or the 412 of a
    /// stale eTag.
    async fn put_fields(
        &self,
        path: &str,
        mut body: Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<NotePut, OneViewError> {
        if let Some(e) = etag {
            body.insert("eTag".into(), json!(e));
        }
        let body = Value::Object(body);
        let reply = self
            .call(&Request::new(Method::PUT, path).body(&body))
            .await?;
        if reply.is_success() {
            if reply.body.iter().all(u8::is_ascii_whitespace) {
                // Some appliances answer without a body: read the result.
                return self.get_json(path).await.map(NotePut::Done);
            }
            return reply.json().map(NotePut::Done);
        }
        let err = reply.error();
        if stale_etag(&err) {
            return Ok(NotePut::Stale(err));
        }
        Err(err)
    }

    /// `GET /rest/alerts` with `filter`s (each its own `filter=` parameter, ANDed), following
    /// `nextPageUri` to the end; alerts seen on two pages (the list shifts while we page)
    /// are returned once.
    pub async fn alerts(
        &self,
        filters: &[String],
        page_size: usize,
    ) -> Result<Vec<Value>, OneViewError> {
        // The serializer is not Send: it must be gone before the first await.
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("start", "0");
            q.append_pair("count", &page_size.max(1).to_string());
            for f in filters {
                q.append_pair("filter", f);
            }
            q.finish().replace('+', "%20")
        };
        let mut next = Some(format!("/rest/alerts?{query}"));
        let mut pages: HashSet<String> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        while let Some(page) = next.take() {
            if !pages.insert(page.clone()) {
                tracing::warn!(page = %page, "the appliance handed out a page twice; stopping");
                break;
            }
            let reply = self.call(&Request::new(Method::GET, &page)).await?;
            if !reply.is_success() {
                return Err(reply.error());
            }
            let v = reply.json()?;
            let members = v
                .get("members")
                .and_then(Value::as_array)
                .ok_or_else(|| reply.bad("a collection without a members array"))?;
            for m in members {
                match m.get("uri").and_then(Value::as_str) {
                    Some(u) if !seen.insert(u.to_string()) => {}
                    _ => out.push(m.clone()),
                }
            }
            let this = v.get("uri").and_then(Value::as_str).map(rel_path);
            next = v
                .get("nextPageUri")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
                .map(rel_path)
                .filter(|n| *n != page && Some(n) != this.as_ref())
                .filter(|_| !members.is_empty());
        }
        Ok(out)
    }

    /// One page of `GET /rest/alerts`: `filters` ANDed, ordered by `sort` (e.g.
    /// `modified:ascending`), `count` from `start`. A caller that must not skip rows while
    /// the list changes under it pages by value (`modified GE` the last one seen) rather than
    /// by offset.
    pub async fn alerts_page(
        &self,
        filters: &[String],
        sort: &str,
        start: usize,
        count: usize,
    ) -> Result<AlertPage, OneViewError> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("start", &start.to_string());
            q.append_pair("count", &count.max(1).to_string());
            for f in filters {
                q.append_pair("filter", f);
            }
            q.append_pair("sort", sort);
            q.finish().replace('+', "%20")
        };
        let path = format!("/rest/alerts?{query}");
        let reply = self.call(&Request::new(Method::GET, &path)).await?;
        if !reply.is_success() {
            return Err(reply.error());
        }
        let mut v = reply.json()?;
        let more = v
            .get("nextPageUri")
            .and_then(Value::as_str)
            .map(rel_path)
            .is_some_and(|n| n != path && !n.trim().is_empty());
        let members = match v.get_mut("members").map(Value::take) {
            Some(Value::Array(m)) => m,
            _ => return Err(reply.bad("a collection without a members array")),
        };
        Ok(AlertPage {
            more: more && !members.is_empty(),
            members,
            date: reply.date.as_deref().and_then(parse_http_date),
        })
    }

    /// The appliance's clock: the `Date` header of a cheap call. None when it sends none
    /// (or one that does not parse).
    pub async fn clock(&self) -> Result<Option<SystemTime>, OneViewError> {
        let reply = self
            .call(&Request::new(Method::GET, "/rest/version"))
            .await?;
        Ok(reply.date.as_deref().and_then(parse_http_date))
    }

    /// `DELETE /rest/login-sessions`. A session that has already expired counts as logged out.
    pub async fn logout(self) -> Result<(), OneViewError> {
        let t = &self.client.inner;
        let reply = t
            .send_auth(
                &Request::new(Method::DELETE, "/rest/login-sessions"),
                Some(&self.token()),
            )
            .await?;
        if reply.is_success() || reply.status == 401 || reply.status == 404 {
            tracing::info!(host = %t.host(), "logged out");
            Ok(())
        } else {
            Err(reply.error())
        }
    }
}

/// The PUT failed because the alert changed since its eTag was read.
fn stale_etag(e: &OneViewError) -> bool {
    if e.is_version_rejected() {
        return false;
    }
    match e {
        OneViewError::Api { status: 412, .. } => true,
        OneViewError::Api {
            status: 400 | 409,
            error_code,
            ..
        } => error_code.to_ascii_uppercase().contains("ETAG"),
        _ => false,
    }
}

/// The PEM of the internal CA from either answer form; never an object's text.
fn ca_pem(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => pem_certificate(s),
        Value::Object(o) => {
            let members = o.get("members")?.as_array()?;
            let internal = members.iter().find(|m| {
                m.get("certType")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case("INTERNAL"))
            });
            internal
                .into_iter()
                .chain(members.iter())
                .filter_map(|m| m.pointer("/certificateDetails/base64Data")?.as_str())
                .find_map(pem_certificate)
        }
        _ => None,
    }
}

/// PEM text as is; bare base64 DER wrapped into PEM; anything else refused.
fn pem_certificate(s: &str) -> Option<String> {
    let s = s.trim();
    if s.contains("-----BEGIN CERTIFICATE-----") {
        return Some(format!("{s}\n"));
    }
    let b64: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let is_b64 = b64.len() >= 64
        && b64
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if !is_b64 {
        return None;
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    Some(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    #[test]
    fn ca_pem_reads_both_api_forms_and_refuses_objects() {
        assert_eq!(ca_pem(&json!(PEM)), Some(format!("{PEM}\n")));
        let coll = json!({"members": [
            {"certType": "EXTERNAL", "certificateDetails": {"base64Data": "junk"}},
            {"certType": "INTERNAL", "certificateDetails": {"base64Data": PEM}},
        ]});
        assert_eq!(ca_pem(&coll), Some(format!("{PEM}\n")));
        assert_eq!(
            ca_pem(&json!({"members": [{"certType": "INTERNAL"}]})),
            None
        );
        assert_eq!(ca_pem(&json!({"members": []})), None);
        assert_eq!(ca_pem(&json!({"certificateDetails": {}})), None);
        assert_eq!(ca_pem(&json!(null)), None);
        assert_eq!(ca_pem(&json!("[object Object]")), None);
        let bare = "A".repeat(100);
        let wrapped = ca_pem(&json!(bare)).expect("wrapped");
        assert!(
            wrapped.starts_with("-----BEGIN CERTIFICATE-----\n")
                && wrapped.contains(&"A".repeat(64))
        );
    }

    #[test]
    fn stale_etags_are_412_but_not_version_errors() {
        let api = |status, code: &str| OneViewError::Api {
            status,
            error_code: code.into(),
            message: String::new(),
            recommended_actions: vec![],
        };
        assert!(stale_etag(&api(412, "ETAG_MISMATCH")));
        assert!(stale_etag(&api(412, "")));
        assert!(stale_etag(&api(409, "ETAG_CONFLICT")));
        assert!(!stale_etag(&api(412, "INVALID_API_VERSION")));
        assert!(!stale_etag(&api(400, "INVALID_ALERT_UPDATE")));
    }

    #[tokio::test]
    async fn the_retry_policy_retries_only_transient_errors_up_to_its_attempts() {
        let policy = RetryPolicy {
            attempts: 3,
            delay: Duration::ZERO,
        };
        let mut calls = 0;
        let r: Result<(), _> = policy
            .run(|| {
                calls += 1;
                async {
                    Err(OneViewError::Api {
                        status: 503,
                        error_code: String::new(),
                        message: String::new(),
                        recommended_actions: vec![],
                    })
                }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<(), _> = policy
            .run(|| {
                calls += 1;
                async { Err(OneViewError::SessionExpired) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}

/// One page of alerts.
#[derive(Debug, Clone)]
pub struct AlertPage {
    pub members: Vec<Value>,
    /// The appliance says there is a next page.
    pub more: bool,
    /// The appliance's clock when it answered (its `Date` header).
    pub date: Option<SystemTime>,
}

fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok()
}
