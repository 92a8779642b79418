//! The OneView REST API simulator (SPEC §1): version negotiation, EULA, login sessions with idle
//! expiry, certificates for the message bus in both API generations, client keypair generation
//! as an asynchronous task, alerts (list with filters/sort/paging, get, PUT with eTags, delete)
//! and tasks. Every alert change is handed to the [`crate::bus::Bus`] as an SCMB message.
//!
//! The control surface for tests and demos (`/sim/...`) lives in [`crate::control`]; this module
//! only answers what a real appliance answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::filter;
use crate::pki::Pki;

/// Settings of the simulated appliance's REST API.
#[derive(Debug, Clone)]
pub struct OvConfig {
    /// `currentVersion` answered by `/rest/version` (e.g. 300, 600, 4200, 8200).
    pub current_version: u32,
    /// `minimumVersion` answered by `/rest/version`.
    pub minimum_version: u32,
    /// Local users: name → password.
    pub users: HashMap<String, String>,
    /// A login banner: logins without `loginMsgAck: true` are refused.
    pub login_banner: Option<String>,
    /// Idle timeout of sessions.
    pub idle_timeout: Duration,
    /// Whether the EULA still has to be accepted at start.
    pub eula_pending: bool,
    /// Largest page a collection returns, whatever `count` asks for.
    pub page_limit: usize,
    /// Page size of `GET /rest/alerts` without `count` (25 on an appliance).
    pub default_alert_count: usize,
    /// How long the keypair generation task runs.
    pub task_duration: Duration,
    /// How many alerts the appliance keeps (oldest dropped first), 75,000 on a real one.
    pub max_alerts: usize,
    /// How far the appliance's clock is off ours, in milliseconds (negative: behind).
    pub clock_offset_ms: i64,
}

impl Default for OvConfig {
    fn default() -> Self {
        OvConfig {
            current_version: 4200,
            minimum_version: 120,
            users: HashMap::from([("Administrator".to_string(), "admin123".to_string())]),
            login_banner: None,
            idle_timeout: Duration::from_secs(24 * 3600),
            eula_pending: true,
            page_limit: 500,
            default_alert_count: 25,
            task_duration: Duration::from_millis(1500),
            max_alerts: 75_000,
            clock_offset_ms: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    last_used: Instant,
}

/// A REST fault window set through the control surface.
#[derive(Debug, Clone, Default)]
pub struct RestFault {
    /// Answer every REST call with this status (e.g. 503) until `until`.
    pub status: Option<u16>,
    /// Answer with an HTML page instead of a JSON error body.
    pub html: bool,
    /// Extra latency on every REST call.
    pub latency: Duration,
    pub until: Option<Instant>,
    /// Only calls with this method (upper case) are affected; `None` = all.
    pub method: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    idle_timeout: Duration,
    alerts: BTreeMap<u64, Value>,
    next_alert: u64,
    next_changelog: u64,
    next_event: u64,
    /// Tasks by id (a GUID, like an appliance's).
    tasks: HashMap<String, Value>,
    eula_pending: bool,
    fault: RestFault,
    churn: Churn,
    race: Race,
}

/// A change racing the next writes (`POST /sim/faults/race`): the next `puts` `PUT`s to an
/// alert find it changed by the system (`changes` applied, eTag bumped, `Updated` published)
/// the instant before they arrive, so a write guarded by the eTag it read gets a 412.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Race {
    pub puts: usize,
    pub changes: Map<String, Value>,
    /// Only writes to this alert (its id); `None`: any alert.
    pub alert: Option<u64>,
}

/// Data changing under a client that pages (`POST /sim/faults/churn`): after each of the next
/// `pages` pages of `GET /rest/alerts`, the system clears `clear_served` of the active alerts
/// that page just served. A client paging by offset then skips as many unread rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churn {
    pub clear_served: usize,
    pub pages: usize,
}

/// Shared state of the OneView simulator.
pub struct OvState {
    pub cfg: OvConfig,
    inner: Mutex<Inner>,
    pub pki: Mutex<Pki>,
    pub bus: Bus,
    pub clock: Clock,
    /// Restarts the broker; `None` when the simulator runs without one.
    pub broker: Option<Arc<crate::broker::BrokerHandle>>,
}

impl std::fmt::Debug for OvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvState").field("cfg", &self.cfg).finish()
    }
}

/// A OneView-shaped error body (SPEC §1.1).
pub fn ov_error(status: StatusCode, code: &str, message: &str, actions: &[&str]) -> Response {
    (
        status,
        Json(json!({
            "errorCode": code, "message": message, "details": "",
            "recommendedActions": actions, "errorSource": null, "nestedErrors": [], "data": {}
        })),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    ov_error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &format!("The requested resource {what} could not be found.").replace("  ", " "),
        &["Verify the URI of the resource and try again."],
    )
}

/// What a handler learns from the common headers.
struct Ctx {
    version: u32,
    user: String,
}

impl OvState {
    pub fn new(
        cfg: OvConfig,
        pki: Pki,
        bus: Bus,
        broker: Option<Arc<crate::broker::BrokerHandle>>,
    ) -> Arc<Self> {
        let inner = Inner {
            idle_timeout: cfg.idle_timeout,
            eula_pending: cfg.eula_pending,
            next_alert: 1,
            next_changelog: 1,
            next_event: 1,
            ..Default::default()
        };
        let clock = Clock::default();
        clock.set_offset_ms(cfg.clock_offset_ms);
        Arc::new(OvState {
            cfg,
            inner: Mutex::new(inner),
            pki: Mutex::new(pki),
            bus,
            clock,
            broker,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pki(&self) -> Pki {
        self.pki.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn version(&self, headers: &HeaderMap) -> Result<u32, Response> {
        let v = match headers.get("x-api-version") {
            None => return Ok(self.cfg.minimum_version),
            Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()),
        };
        match v {
            Some(v) if v >= self.cfg.minimum_version && v <= self.cfg.current_version => Ok(v),
            _ => Err(ov_error(
                StatusCode::PRECONDITION_FAILED,
                "INVALID_API_VERSION",
                &format!(
                    "The API version {:?} is not supported.",
                    headers
                        .get("x-api-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                ),
                &[&format!(
                    "Use an X-API-Version between {} and {}.",
                    self.cfg.minimum_version, self.cfg.current_version
                )],
            )),
        }
    }

    /// Checks the API version and the `Auth` session.
    fn ctx(&self, headers: &HeaderMap) -> Result<Ctx, Response> {
        let version = self.version(headers)?;
        let token = headers
            .get("auth")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut inner = self.lock();
        let idle = inner.idle_timeout;
        let now = Instant::now();
        let user = match inner.sessions.get_mut(&token) {
            Some(s) if now.duration_since(s.last_used) < idle => {
                s.last_used = now;
                Some(s.user.clone())
            }
            Some(_) => {
                inner.sessions.remove(&token);
                None
            }
            None => None,
        };
        user.map(|user| Ctx { version, user }).ok_or_else(|| {
            ov_error(
                StatusCode::UNAUTHORIZED,
                "AUTHORIZATION",
                "Authorization error: the session is not valid or has expired.",
                &["Log in again to get a new session ID."],
            )
        })
    }

    // ---- alerts, used by the REST handlers and the control surface ----

    fn envelope(&self, alert: &Value, change: &str, changed: &[&str]) -> Value {
        json!({
            "resourceUri": alert["uri"],
            "changeType": change,
            "newState": alert["alertState"],
            "newSubState": null,
            "eTag": alert["eTag"],
            "timestamp": self.clock.now_ms(),
            "resource": alert,
            "associatedTask": null,
            "userInitiatedTask": false,
            "changedAttributes": changed,
            "data": null,
        })
    }

    /// Publishes an SCMB message for `alert` (`changeType` Created/Updated/Deleted).
    pub fn publish_alert(&self, alert: &Value, change: &str, changed: &[&str]) {
        let key = format!(
            "scmb.alerts.{change}.{}",
            alert["uri"].as_str().unwrap_or("/rest/alerts/0")
        );
        let body = serde_json::to_vec(&self.envelope(alert, change, changed)).unwrap_or_default();
        self.bus.publish("scmb", key, body);
    }

    /// Raises an alert built from `fields` over the defaults; returns it.
    pub fn raise_alert(&self, fields: &Map<String, Value>) -> Value {
        let alert = {
            let mut inner = self.lock();
            let id = inner.next_alert;
            inner.next_alert += 1;
            let event = inner.next_event;
            inner.next_event += 1;
            let ts = self.clock.next();
            let mut a = default_alert(id, event, &ts);
            let obj = a.as_object_mut().expect("alert is an object");
            for (k, v) in fields {
                if k == "associatedResource" {
                    if let (Some(dst), Some(src)) = (
                        obj.get_mut("associatedResource")
                            .and_then(Value::as_object_mut),
                        v.as_object(),
                    ) {
                        for (k2, v2) in src {
                            dst.insert(k2.clone(), v2.clone());
                        }
                        if let Some(u) = src.get("resourceUri") {
                            obj.insert("resourceUri".into(), u.clone());
                        }
                        continue;
                    }
                }
                obj.insert(k.clone(), v.clone());
            }
            // OK alerts are created already cleared (SPEC §1.6), unless a state was asked for.
            if !fields.contains_key("alertState") && obj.get("severity") == Some(&json!("OK")) {
                obj.insert("alertState".into(), json!("Cleared"));
            }
            // Created cleared: the system cleared it, then.
            if obj.get("alertState") == Some(&json!("Cleared")) {
                if !fields.contains_key("clearedByUser") {
                    obj.insert("clearedByUser".into(), json!(SYSTEM_USER));
                }
                if !fields.contains_key("clearedTime") {
                    obj.insert("clearedTime".into(), json!(ts));
                }
            }
            inner.alerts.insert(id, a.clone());
            while inner.alerts.len() > self.cfg.max_alerts {
                inner.alerts.pop_first();
            }
            a
        };
        self.publish_alert(&alert, "Created", &[]);
        alert
    }

    /// Applies `changes` (any fields) to alert `id` as the system would (no user, no eTag
    /// check), bumps eTag/modified and publishes `Updated`. A change of `alertState` is
    /// recorded as an appliance records one: a system change-log entry, and for a clear
    /// `clearedTime` and `clearedByUser` (`"System"` unless `changes` name someone).
    pub fn update_alert(&self, id: u64, changes: &Map<String, Value>) -> Option<Value> {
        let mut changed: Vec<String> = changes.keys().cloned().collect();
        let alert = {
            let mut inner = self.lock();
            let ts = self.clock.next();
            let old_state = inner.alerts.get(&id)?["alertState"].clone();
            let new_state = changes
                .get("alertState")
                .filter(|s| **s != old_state)
                .cloned();
            let log_uri = new_state.as_ref().map(|_| inner.new_changelog_uri());
            let a = inner.alerts.get_mut(&id)?;
            let obj = a.as_object_mut()?;
            for (k, v) in changes {
                obj.insert(k.clone(), v.clone());
            }
            if let (Some(state), Some(uri)) = (new_state, log_uri) {
                let who = if state == "Cleared" {
                    let who = changes
                        .get("clearedByUser")
                        .and_then(Value::as_str)
                        .unwrap_or(SYSTEM_USER)
                        .to_string();
                    obj.insert("clearedByUser".into(), json!(who));
                    obj.insert("clearedTime".into(), json!(ts));
                    who
                } else {
                    if old_state == "Cleared" {
                        obj.insert("clearedByUser".into(), Value::Null);
                        obj.insert("clearedTime".into(), Value::Null);
                    }
                    SYSTEM_USER.to_string()
                };
                push_change_log(obj, state_change_entry(&who, &old_state, &state, &ts, uri));
                for k in ["clearedByUser", "clearedTime", "changeLog"] {
                    if !changed.iter().any(|c| c == k) {
                        changed.push(k.to_string());
                    }
                }
            }
            obj.insert("eTag".into(), json!(ts));
            obj.insert("modified".into(), json!(ts));
            a.clone()
        };
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        self.publish_alert(&alert, "Updated", &changed);
        Some(alert)
    }

    /// Sets the race of the next alert writes (see [`Race`]); `puts` 0 turns it off.
    pub fn set_race(&self, race: Race) {
        self.lock().race = race;
    }

    /// Takes one racing change, if the race is on.
    fn take_race(&self, alert: u64) -> Option<Map<String, Value>> {
        let mut inner = self.lock();
        if inner.race.puts == 0 || inner.race.alert.is_some_and(|a| a != alert) {
            return None;
        }
        inner.race.puts -= 1;
        Some(inner.race.changes.clone())
    }

    /// Sets the paging churn (see [`Churn`]); `pages` 0 turns it off.
    pub fn set_churn(&self, churn: Churn) {
        self.lock().churn = churn;
    }

    /// After a page of alerts was served: clears some of them as the system would, while
    /// the churn lasts. Returns how many were cleared.
    fn churn_after_page(&self, served: &[Value]) -> usize {
        let n = {
            let mut inner = self.lock();
            if inner.churn.pages == 0 {
                return 0;
            }
            inner.churn.pages -= 1;
            inner.churn.clear_served
        };
        let ids: Vec<u64> = served
            .iter()
            .filter(|a| a["alertState"] == json!("Active"))
            .filter_map(|a| a["uri"].as_str()?.rsplit('/').next()?.parse().ok())
            .take(n)
            .collect();
        let mut changes = Map::new();
        changes.insert("alertState".into(), json!("Cleared"));
        ids.iter()
            .filter(|id| self.update_alert(**id, &changes).is_some())
            .count()
    }

    /// Deletes alert `id` and publishes `Deleted`.
    pub fn delete_alert(&self, id: u64) -> Option<Value> {
        let alert = self.lock().alerts.remove(&id)?;
        self.publish_alert(&alert, "Deleted", &[]);
        Some(alert)
    }

    pub fn alert(&self, id: u64) -> Option<Value> {
        self.lock().alerts.get(&id).cloned()
    }

    pub fn alert_count(&self) -> usize {
        self.lock().alerts.len()
    }

    /// Expires every session (the next call with any of them gets 401).
    pub fn expire_sessions(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.sessions.len();
        inner.sessions.clear();
        n
    }

    pub fn set_fault(&self, fault: RestFault) {
        self.lock().fault = fault;
    }

    fn current_fault(&self) -> RestFault {
        let mut inner = self.lock();
        match inner.fault.until {
            Some(t) if t <= Instant::now() => {
                inner.fault = RestFault::default();
                RestFault::default()
            }
            _ => inner.fault.clone(),
        }
    }

    fn new_task(&self, name: &str, resource_uri: &str) -> Value {
        let mut inner = self.lock();
        let id = guid();
        let ts = self.clock.next();
        let task = json!({
            "type": "TaskResourceV2", "category": "tasks", "uri": format!("/rest/tasks/{id}"),
            "name": name, "owner": "Administrator", "taskState": "Running", "taskStatus": name,
            "percentComplete": 0, "progressUpdates": [], "taskErrors": [], "taskOutput": [],
            "associatedResource": {"resourceUri": resource_uri, "resourceCategory": "rabbitmq",
                                   "resourceName": "default", "associationType": "MANAGED_BY"},
            "created": ts, "modified": ts, "eTag": ts, "stateReason": null,
        });
        inner.tasks.insert(id, task.clone());
        task
    }

    fn finish_task(&self, uri: &str, state: &str) {
        let id = uri.rsplit('/').next().unwrap_or_default();
        let ts = self.clock.next();
        let task = {
            let mut inner = self.lock();
            let Some(t) = inner.tasks.get_mut(id) else {
                return;
            };
            t["taskState"] = json!(state);
            t["percentComplete"] = json!(100);
            t["modified"] = json!(ts);
            t["eTag"] = json!(ts);
            t.clone()
        };
        let body = serde_json::to_vec(&json!({
            "resourceUri": task["uri"], "changeType": "Updated", "newState": state,
            "newSubState": null, "eTag": task["eTag"], "timestamp": self.clock.now_ms(), "resource": task,
            "associatedTask": null, "userInitiatedTask": true, "changedAttributes": ["taskState"],
            "data": null,
        }))
        .unwrap_or_default();
        self.bus.publish("scmb", "scmb.tasks".into(), body);
    }
}

impl Inner {
    /// The URI of a new change-log entry.
    fn new_changelog_uri(&mut self) -> String {
        changelog_uri(&mut self.next_changelog)
    }
}

fn changelog_uri(next: &mut u64) -> String {
    let n = *next;
    *next += 1;
    format!("/rest/alerts/AlertChangeLog/{n}")
}

/// Who the appliance names for changes nobody made through the REST API (`clearedByUser`,
/// change-log `username`).
pub const SYSTEM_USER: &str = "System";

/// The change-log entry an appliance writes when an alert's state changes (not user-entered).
fn state_change_entry(who: &str, from: &Value, to: &Value, ts: &str, uri: String) -> Value {
    let name = |v: &Value| v.as_str().unwrap_or("unknown").to_string();
    json!({
        "userEntered": false, "username": who, "created": ts,
        "notes": format!("Alert state changed from {} to {}.", name(from), name(to)),
        "uri": uri,
    })
}

fn push_change_log(alert: &mut Map<String, Value>, entry: Value) {
    match alert.get_mut("changeLog").and_then(Value::as_array_mut) {
        Some(log) => log.push(entry),
        None => {
            alert.insert("changeLog".into(), json!([entry]));
        }
    }
}

/// A random GUID in upper case, the form of an appliance's task ids
/// (`/rest/tasks/145F808A-A8DD-4E1B-8C86-C2379C97B3B2`).
fn guid() -> String {
    let mut b: [u8; 16] = rand::random();
    // RFC 4122 version 4 (random), variant 1.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A single resource as an appliance answers it: the JSON body, and its `eTag` (when it has
/// one) as the `ETag` header too, the same text.
fn single(resource: Value) -> Response {
    let etag = resource
        .get("eTag")
        .and_then(Value::as_str)
        .and_then(|e| HeaderValue::from_str(e).ok());
    let mut resp = Json(resource).into_response();
    if let Some(e) = etag {
        resp.headers_mut().insert(axum::http::header::ETAG, e);
    }
    resp
}

/// The entity tags an `If-Match` header names: `None` for none or `*` (no precondition),
/// else each tag with its quotes and any weak prefix taken off.
fn if_match_tags(headers: &HeaderMap) -> Option<Vec<String>> {
    let raw: Vec<&str> = headers
        .get_all("if-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let tags: Vec<String> = raw
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| {
            let t = t.trim();
            let t = t.strip_prefix("W/").unwrap_or(t);
            t.trim_matches('"').to_string()
        })
        .filter(|t| !t.is_empty())
        .collect();
    (!tags.is_empty() && !tags.iter().any(|t| t == "*")).then_some(tags)
}

fn default_alert(id: u64, event: u64, ts: &str) -> Value {
    json!({
        "type": "AlertResourceV3", "category": "alerts", "uri": format!("/rest/alerts/{id}"),
        "eTag": ts, "created": ts, "modified": ts,
        "alertState": "Active", "severity": "Critical", "urgency": "None",
        "healthCategory": "Power", "alertTypeID": "Trap.cpqHe4FltTolPowerSupplyFailed",
        "description": "The power supply in bay 4 failed.",
        "correctiveAction": "Replace the power supply.",
        "lifeCycle": false, "assignedToUser": null, "clearedByUser": null, "clearedTime": null,
        "associatedResource": {"resourceCategory": "enclosures",
            "resourceUri": "/rest/enclosures/09SGH100X6J1", "associationType": "HAS_A",
            "resourceName": "Encl1"},
        "resourceUri": "/rest/enclosures/09SGH100X6J1", "physicalResourceType": "enclosures",
        "resourceID": null, "changeLog": [], "associatedEventUris": [format!("/rest/events/{event}")],
        "activityUri": null, "childAlerts": null, "parentAlert": null,
        "serviceEventSource": false, "serviceEventDetails": null,
    })
}

/// The REST routes. `/sim/...` control routes are added by [`crate::control`].
pub fn router(state: Arc<OvState>) -> Router {
    Router::new()
        .route("/rest/version", get(version))
        .route("/rest/appliance/eula/status", get(eula_status))
        .route("/rest/appliance/eula/save", post(eula_save))
        .route(
            "/rest/login-sessions",
            post(login).delete(logout).put(reuse_session),
        )
        .route("/rest/sessions/idle-timeout", get(get_idle).post(set_idle))
        .route("/rest/certificates/ca", get(ca))
        .route("/rest/certificates/ca/{alias}", get(ca_by_alias))
        .route("/rest/certificates/client/rabbitmq", post(generate_keypair))
        .route(
            "/rest/certificates/client/rabbitmq/keypair/{alias}",
            get(keypair),
        )
        .route(
            "/rest/certificates/client/rabbitmq/{alias}",
            get(client_cert),
        )
        .route("/rest/alerts", get(list_alerts).delete(delete_alerts))
        .route(
            "/rest/alerts/{id}",
            get(get_alert).put(put_alert).delete(delete_alert),
        )
        .route("/rest/tasks/{id}", get(get_task))
        .fallback(|uri: axum::http::Uri| async move { not_found(uri.path()) })
        .method_not_allowed_fallback(|| async {
            ov_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "The HTTP method is not supported on this resource.",
                &["Check the API reference for the methods this URI accepts."],
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), faults))
        .with_state(state)
}

/// Applies the REST fault window (503s, latency) to every REST call, and dates every answer
/// by the appliance's clock (`Date`, which may be off ours) with `Cache-Control: no-cache`.
async fn faults(State(st): State<Arc<OvState>>, req: Request, next: Next) -> Response {
    let mut resp = fault_window(&st, req, next).await;
    let date = std::time::SystemTime::from(st.clock.now());
    if let Ok(v) = axum::http::HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
        resp.headers_mut().insert(axum::http::header::DATE, v);
    }
    // Every answer of an appliance forbids caching (HPE's REST reference, response headers).
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

async fn fault_window(st: &OvState, req: Request, next: Next) -> Response {
    let fault = st.current_fault();
    if fault
        .method
        .as_deref()
        .is_some_and(|m| m != req.method().as_str())
    {
        return next.run(req).await;
    }
    if !fault.latency.is_zero() {
        crate::latency::sleep(fault.latency).await;
    }
    if let Some(status) = fault.status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if fault.html {
            return (
                code,
                [("content-type", "text/html")],
                "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1><p>The appliance is starting.</p></body></html>",
            )
                .into_response();
        }
        return ov_error(
            code,
            "SERVICE_UNAVAILABLE",
            "The appliance is temporarily unable to service the request.",
            &["Wait a few minutes and try again."],
        );
    }
    next.run(req).await
}

async fn version(State(st): State<Arc<OvState>>) -> Response {
    Json(
        json!({"currentVersion": st.cfg.current_version, "minimumVersion": st.cfg.minimum_version}),
    )
    .into_response()
}

async fn eula_status(State(st): State<Arc<OvState>>, headers: HeaderMap) -> Response {
    if let Err(r) = st.version(&headers) {
        return r;
    }
    Json(json!(st.lock().eula_pending)).into_response()
}

async fn eula_save(State(st): State<Arc<OvState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = st.version(&headers) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_json(&e),
    };
    match v.get("supportAccess").and_then(Value::as_str) {
        Some("yes") | Some("no") => {
            st.lock().eula_pending = false;
            Json(json!({"supportAccess": v["supportAccess"]})).into_response()
        }
        _ => ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_SUPPORT_ACCESS",
            "supportAccess must be \"yes\" or \"no\".",
            &["Send {\"supportAccess\":\"no\"} to accept the EULA without support access."],
        ),
    }
}

fn bad_json(e: &serde_json::Error) -> Response {
    ov_error(
        StatusCode::BAD_REQUEST,
        "INVALID_JSON",
        &format!("The request body is not valid JSON: {e}"),
        &["Send a JSON object with Content-Type: application/json."],
    )
}

async fn login(State(st): State<Arc<OvState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = st.version(&headers) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_json(&e),
    };
    let user = v.get("userName").and_then(Value::as_str).unwrap_or("");
    let password = v.get("password").and_then(Value::as_str).unwrap_or("");
    if let Some(domain) = v.get("authLoginDomain").and_then(Value::as_str) {
        if !domain.eq_ignore_ascii_case("local") && !domain.is_empty() {
            return ov_error(
                StatusCode::UNAUTHORIZED,
                "AUTHN_AUTH_FAIL_LOGINDOMAINNOTFOUND",
                &format!("The login domain {domain} was not found."),
                &["Use the LOCAL domain or a configured directory."],
            );
        }
    }
    if st.cfg.users.get(user).map(String::as_str) != Some(password) {
        return ov_error(
            StatusCode::UNAUTHORIZED,
            "AUTHN_AUTH_FAIL",
            "Invalid username or password or directory.",
            &["Enter correct credentials and try again."],
        );
    }
    let acked = matches!(v.get("loginMsgAck"), Some(Value::Bool(true)))
        || v.get("loginMsgAck").and_then(Value::as_str) == Some("true");
    if let Some(banner) = &st.cfg.login_banner {
        if !acked {
            return ov_error(
                StatusCode::BAD_REQUEST,
                "AUTHN_LOGIN_MESSAGE_ACK_REQUIRED",
                &format!("Acknowledgment of login message is required. Login message: {banner}"),
                &["Send loginMsgAck: true with the login request."],
            );
        }
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..32)
            .map(|_| {
                let c = rng.gen_range(0..62u8);
                (match c {
                    0..=9 => b'0' + c,
                    10..=35 => b'a' + c - 10,
                    _ => b'A' + c - 36,
                }) as char
            })
            .collect()
    };
    st.lock().sessions.insert(
        token.clone(),
        Session {
            user: user.to_string(),
            last_used: Instant::now(),
        },
    );
    tracing::debug!(user, "login");
    Json(json!({"sessionID": token, "partnerData": {}})).into_response()
}

/// `PUT /rest/login-sessions` with `Auth`: reuse (validate) an existing session.
async fn reuse_session(State(st): State<Arc<OvState>>, headers: HeaderMap) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let token = headers
        .get("auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Json(json!({"sessionID": token, "partnerData": {}})).into_response()
}

async fn logout(State(st): State<Arc<OvState>>, headers: HeaderMap) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let token = headers
        .get("auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    st.lock().sessions.remove(token);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_idle(State(st): State<Arc<OvState>>, headers: HeaderMap) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    Json(json!({"idleTimeout": st.lock().idle_timeout.as_millis() as u64})).into_response()
}

async fn set_idle(State(st): State<Arc<OvState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_json(&e),
    };
    match v.get("idleTimeout").and_then(Value::as_u64) {
        Some(ms) if ms > 0 => {
            st.lock().idle_timeout = Duration::from_millis(ms);
            Json(json!({"idleTimeout": ms})).into_response()
        }
        _ => ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_IDLE_TIMEOUT",
            "idleTimeout must be a positive number of milliseconds.",
            &[],
        ),
    }
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn ca(State(st): State<Arc<OvState>>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let ctx = match st.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let pem = st.pki().ca_pem;
    if ctx.version <= 500 {
        // API ≤ 500: a bare JSON string holding the PEM.
        return Json(json!(pem)).into_response();
    }
    let pairs = query_pairs(&q);
    let (filters, expr) = match parse_filters(&pairs) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let details = !filters.is_empty()
        || headers
            .get("if-req-certdetails")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut member = json!({
        "type": "CertificateAuthorityInfo", "category": "certificate-authority",
        "certType": "INTERNAL", "aliasName": CA_ALIAS,
        "certStatus": "GOOD", "uri": format!("/rest/certificates/ca/{CA_ALIAS}"),
        "eTag": null, "created": null, "modified": null,
    });
    if details {
        member["certificateDetails"] = ca_details(&pem);
    }
    let members: Vec<Value> = [member].into_iter().filter(|m| expr.matches(m)).collect();
    Json(json!({
        "type": "CertificateAuthorityInfoCollection", "uri": "/rest/certificates/ca",
        "category": "certificate-authority", "start": 0, "count": members.len(),
        "total": members.len(), "nextPageUri": null, "prevPageUri": null, "members": members,
    }))
    .into_response()
}

/// `certificateDetails` of the internal CA, with the fields HPE's own examples read.
fn ca_details(pem: &str) -> Value {
    json!({
        "type": "CertificateDetailV2", "aliasName": CA_ALIAS, "base64Data": pem,
        "commonName": "OneView Simulator Internal CA", "certificateStatus": "GOOD",
    })
}

const CA_ALIAS: &str = "localhostSelfSignedCertificate";

async fn ca_by_alias(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(alias): Path<String>,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    if alias != CA_ALIAS {
        return not_found(&format!("/rest/certificates/ca/{alias}"));
    }
    Json(json!({
        "type": "CertificateAuthorityInfo", "category": "certificate-authority",
        "certType": "INTERNAL", "aliasName": CA_ALIAS, "certStatus": "GOOD",
        "uri": format!("/rest/certificates/ca/{CA_ALIAS}"),
        "certificateDetails": ca_details(&st.pki().ca_pem),
    }))
    .into_response()
}

/// Every `filter=` parameter, and their conjunction parsed (or the 400 to answer).
fn parse_filters(pairs: &[(String, String)]) -> Result<(Vec<&str>, filter::Expr), Response> {
    let filters: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| v.as_str())
        .collect();
    match filter::parse_all(filters.iter().copied()) {
        Ok(e) => Ok((filters, e)),
        Err(e) => Err(bad_filter(&e)),
    }
}

fn bad_filter(e: &filter::FilterError) -> Response {
    ov_error(
        StatusCode::BAD_REQUEST,
        "INVALID_FILTER",
        &e.to_string(),
        &["Correct the filter expression, e.g. filter=\"alertState='Active'\"."],
    )
}

async fn generate_keypair(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_json(&e),
    };
    let cn = v.get("commonName").and_then(Value::as_str).unwrap_or("");
    if cn != crate::pki::CLIENT_CN {
        return ov_error(
            StatusCode::BAD_REQUEST,
            "RABBITMQ_CLIENTCERT_INVALID_CN",
            &format!("The common name {cn:?} is not supported."),
            &["Use commonName \"default\"."],
        );
    }
    let generating = {
        let inner = st.lock();
        inner.tasks.values().any(|t| {
            t["name"] == "Generate RabbitMQ client certificate" && t["taskState"] == "Running"
        })
    };
    if generating || st.pki().client_generated() {
        return ov_error(
            StatusCode::CONFLICT,
            "RABBITMQ_CLIENTCERT_CONFLICT",
            "The existing certificate is still valid and cannot be regenerated.",
            &["Download the existing certificate and key."],
        );
    }
    let task = st.new_task(
        "Generate RabbitMQ client certificate",
        "/rest/certificates/client/rabbitmq/keypair/default",
    );
    let uri = task["uri"].as_str().unwrap_or("").to_string();
    let st2 = st.clone();
    let uri2 = uri.clone();
    tokio::spawn(async move {
        tokio::time::sleep(st2.cfg.task_duration).await;
        let ok = st2.pki().set_client_generated(true).is_ok();
        st2.finish_task(&uri2, if ok { "Completed" } else { "Error" });
    });
    let mut resp = (StatusCode::ACCEPTED, Json(task)).into_response();
    if let Ok(v) = HeaderValue::from_str(&uri) {
        resp.headers_mut().insert("location", v);
    }
    resp
}

fn keypair_missing() -> Response {
    ov_error(
        StatusCode::NOT_FOUND,
        "RABBITMQ_CLIENTCERT_NOT_FOUND",
        "Certificate/Private key file is missing.",
        &["Generate the client certificate with POST /rest/certificates/client/rabbitmq."],
    )
}

async fn keypair(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(alias): Path<String>,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let pki = st.pki();
    if alias != crate::pki::CLIENT_CN || !pki.client_generated() {
        return keypair_missing();
    }
    Json(json!({
        "type": "RabbitMqClientCertV2", "category": "rabbitmq", "commonName": alias,
        "uri": format!("/rest/certificates/client/rabbitmq/keypair/{alias}"),
        "base64SSLCertData": pki.client_cert_pem, "base64SSLKeyData": pki.client_key_pem,
        "eTag": null, "created": null, "modified": null,
    }))
    .into_response()
}

async fn client_cert(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(alias): Path<String>,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let pki = st.pki();
    if alias != crate::pki::CLIENT_CN || !pki.client_generated() {
        return keypair_missing();
    }
    Json(json!({
        "type": "RabbitMqClientCertV2", "category": "rabbitmq", "commonName": alias,
        "uri": format!("/rest/certificates/client/rabbitmq/{alias}"),
        "base64SSLCertData": pki.client_cert_pem, "base64SSLKeyData": null,
    }))
    .into_response()
}

fn sort_key<'a>(a: &'a Value, field: &str) -> Option<&'a Value> {
    filter::lookup(a, field)
}

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Equal,
        (None | Some(Value::Null), _) => Less,
        (_, None | Some(Value::Null)) => Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

async fn list_alerts(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let pairs = query_pairs(&q);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let start: usize = match get("start").map(str::parse).transpose() {
        Ok(v) => v.unwrap_or(0),
        Err(_) => {
            return ov_error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                "start must be a non-negative integer.",
                &[],
            )
        }
    };
    // Without `count` an appliance answers pages of 25 (HPE's REST reference, GET /rest/alerts).
    let count: i64 = match get("count").map(str::parse).transpose() {
        Ok(v) => v.unwrap_or_else(|| i64::try_from(st.cfg.default_alert_count).unwrap_or(i64::MAX)),
        Err(_) => {
            return ov_error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                "count must be an integer.",
                &[],
            )
        }
    };
    let limit = if count < 0 {
        st.cfg.page_limit
    } else {
        (count as usize).min(st.cfg.page_limit)
    };
    let (filters, expr) = match parse_filters(&pairs) {
        Ok(f) => f,
        Err(r) => return r,
    };
    // By default oldest first, by creation (HPE's REST reference: "the sort order is based on
    // the create time, with the oldest entry first"); ids follow creation, so ties keep it.
    let sort = get("sort").unwrap_or("created:ascending").to_string();
    let mut matching: Vec<Value> = {
        let inner = st.lock();
        inner
            .alerts
            .values()
            .filter(|a| expr.matches(a))
            .cloned()
            .collect()
    };
    let mut keys: Vec<(String, bool)> = Vec::new();
    for part in sort.split(',').filter(|s| !s.trim().is_empty()) {
        let (field, dir) = part.split_once(':').unwrap_or((part, "asc"));
        let desc = dir.to_ascii_lowercase().starts_with("desc");
        keys.push((field.trim().to_string(), desc));
    }
    matching.sort_by(|a, b| {
        for (field, desc) in &keys {
            let o = cmp_values(sort_key(a, field), sort_key(b, field));
            let o = if *desc { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    let total = matching.len();
    let members: Vec<Value> = matching.into_iter().skip(start).take(limit).collect();
    let page_uri = |s: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        ser.append_pair("start", &s.to_string());
        ser.append_pair("count", &limit.to_string());
        for f in &filters {
            ser.append_pair("filter", f);
        }
        if let Some(s) = get("sort") {
            ser.append_pair("sort", s);
        }
        format!("/rest/alerts?{}", ser.finish())
    };
    let next = (start + members.len() < total && !members.is_empty())
        .then(|| page_uri(start + members.len()));
    let prev = (start > 0).then(|| page_uri(start.saturating_sub(limit)));
    let ts = st.clock.now_ms();
    st.churn_after_page(&members);
    Json(json!({
        "type": "AlertResourceCollectionV3", "category": "alerts", "uri": page_uri(start),
        "start": start, "count": members.len(), "total": total,
        "nextPageUri": next, "prevPageUri": prev, "members": members,
        "eTag": ts, "created": ts, "modified": ts,
    }))
    .into_response()
}

fn alert_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

async fn get_alert(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    match alert_id(&id).and_then(|id| st.alert(id)) {
        Some(a) => single(a),
        None => not_found(&format!("/rest/alerts/{id}")),
    }
}

const PUT_KEYS: [&str; 5] = [
    "alertState",
    "alertUrgency",
    "assignedToUser",
    "notes",
    "eTag",
];

async fn put_alert(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = match st.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let uri = format!("/rest/alerts/{id}");
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_json(&e),
    };
    let Some(body) = v.as_object() else {
        return ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "The request body must be a JSON object.",
            &[],
        );
    };
    for k in body.keys() {
        // `uri` names the resource itself (SDKs send it); anything else is refused.
        if !(PUT_KEYS.contains(&k.as_str()) || (k == "uri" && body[k] == json!(uri))) {
            return ov_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ALERT_UPDATE",
                &format!("The attribute {k:?} cannot be updated on an alert."),
                &["Send only alertState, alertUrgency, assignedToUser, notes and eTag."],
            );
        }
    }
    let Some(num) = alert_id(&id) else {
        return not_found(&uri);
    };
    // Preconditions: an `eTag` in the body ("*", null or empty: none) and an `If-Match`
    // header (any of its tags; "*": none). Each one given must name the current eTag.
    let body_etag = body
        .get("eTag")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty() && *e != "*")
        .map(str::to_string);
    let if_match = if_match_tags(&headers);
    if let Some(changes) = st.take_race(num) {
        st.update_alert(num, &changes);
    }
    let result = {
        let mut inner = st.lock();
        let Inner {
            alerts,
            next_changelog,
            ..
        } = &mut *inner;
        let mut new_changelog_uri = || changelog_uri(next_changelog);
        let Some(alert) = alerts.get_mut(&num) else {
            drop(inner);
            return not_found(&uri);
        };
        let current = alert["eTag"].as_str().unwrap_or_default();
        let stale = body_etag.as_deref().is_some_and(|e| e != current)
            || if_match
                .as_ref()
                .is_some_and(|tags| !tags.iter().any(|t| t == current));
        if stale {
            return ov_error(
                StatusCode::PRECONDITION_FAILED,
                "ETAG_MISMATCH",
                "The resource was modified by another request: the eTag does not match.",
                &["Get the alert again and retry with its current eTag."],
            );
        }
        let mut changed: Vec<&'static str> = Vec::new();
        let ts = st.clock.next();
        if let Some(state) = body.get("alertState") {
            match state.as_str() {
                Some("Active") | Some("Cleared") => {}
                _ => {
                    return ov_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_ALERT_STATE",
                        "alertState must be Active or Cleared.",
                        &[],
                    );
                }
            }
            if alert["alertState"] == "Locked" {
                return ov_error(
                    StatusCode::BAD_REQUEST,
                    "ALERT_LOCKED",
                    "The alert is locked and its state cannot be changed by a user.",
                    &["Resolve the underlying problem; the appliance clears locked alerts itself."],
                );
            }
            if alert["alertState"] != *state {
                let entry = state_change_entry(
                    &ctx.user,
                    &alert["alertState"],
                    state,
                    &ts,
                    new_changelog_uri(),
                );
                alert["alertState"] = state.clone();
                if state == "Cleared" {
                    alert["clearedByUser"] = json!(ctx.user);
                    alert["clearedTime"] = json!(ts);
                } else {
                    alert["clearedByUser"] = Value::Null;
                    alert["clearedTime"] = Value::Null;
                }
                if let Some(obj) = alert.as_object_mut() {
                    push_change_log(obj, entry);
                }
                changed.extend(["alertState", "clearedByUser", "clearedTime", "changeLog"]);
            }
        }
        if let Some(u) = body.get("alertUrgency") {
            alert["urgency"] = u.clone();
            changed.push("urgency");
        }
        if let Some(u) = body.get("assignedToUser") {
            alert["assignedToUser"] = u.clone();
            changed.push("assignedToUser");
        }
        if let Some(n) = body.get("notes") {
            let entry = json!({
                "userEntered": true, "username": ctx.user, "created": ts, "notes": n,
                "uri": new_changelog_uri(),
            });
            if let Some(obj) = alert.as_object_mut() {
                push_change_log(obj, entry);
            }
            if !changed.contains(&"changeLog") {
                changed.push("changeLog");
            }
        }
        if !changed.is_empty() {
            alert["eTag"] = json!(ts);
            alert["modified"] = json!(ts);
        }
        (alert.clone(), changed)
    };
    let (alert, changed) = result;
    if !changed.is_empty() {
        st.publish_alert(&alert, "Updated", &changed);
    }
    single(alert)
}

async fn delete_alert(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    match alert_id(&id).and_then(|n| st.delete_alert(n)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&format!("/rest/alerts/{id}")),
    }
}

/// `DELETE /rest/alerts?filter=...`: deletes every matching alert (all with no filter).
async fn delete_alerts(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let pairs = query_pairs(&q);
    let expr = match parse_filters(&pairs) {
        Ok((_, e)) => e,
        Err(r) => return r,
    };
    let ids: Vec<u64> = st
        .lock()
        .alerts
        .iter()
        .filter(|(_, a)| expr.matches(a))
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        st.delete_alert(id);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn get_task(
    State(st): State<Arc<OvState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = st.ctx(&headers) {
        return r;
    }
    let task = st.lock().tasks.get(&id).cloned();
    match task {
        Some(t) => single(t),
        None => not_found(&format!("/rest/tasks/{id}")),
    }
}
