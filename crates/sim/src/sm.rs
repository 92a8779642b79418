//! The HP Service Manager 9 REST simulator (SPEC §3): Basic auth, incidents IM10001, IM10002, …
//! created, read, listed (query, field match, `view=expand|condense`, `start`/`count`), updated,
//! resolved and closed; every answer a non-empty JSON body with `ReturnCode` and `Messages`.
//!
//! Fault injection (latency, a 5xx rate, forced 401s, an HTML error page, hangs, an outage that
//! closes the port, and creates that store the incident and then answer late or badly) is set
//! through `/sim/...` routes on the same port, which need no auth and also read back every
//! incident for tests. Incidents can persist to a JSON file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::serve::OutageGate;

/// Settings of the Service Manager simulator.
#[derive(Debug, Clone)]
pub struct SmConfig {
    /// Basic-auth users: name → password (default `falcon` with an empty password).
    pub users: HashMap<String, String>,
    /// Fields an incident must have (400 naming the first one missing).
    pub required: Vec<String>,
    /// Where incidents persist (JSON), if anywhere.
    pub persist: Option<PathBuf>,
    /// First incident number (IM10001).
    pub first_id: u64,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            users: HashMap::from([("falcon".to_string(), String::new())]),
            required: vec!["Title".into(), "Description".into()],
            persist: None,
            first_id: 10001,
        }
    }
}

/// Faults, set through `POST /sim/faults` (all fields optional).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmFaults {
    /// Fixed latency added to every REST call, ms.
    #[serde(default)]
    pub latency_ms: u64,
    /// Extra random latency, uniform in 0..jitter_ms.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Fraction (0..1) of REST calls answered 503.
    #[serde(default)]
    pub error_rate: f64,
    /// Status used for injected errors (default 503).
    #[serde(default)]
    pub error_status: Option<u16>,
    /// Answer every REST call 401 regardless of credentials.
    #[serde(default)]
    pub unauthorized: bool,
    /// Answer every REST call with an HTML error page (502) as a proxy would.
    #[serde(default)]
    pub html: bool,
    /// Hold every REST call this long before answering (simulates a hang past client timeouts).
    #[serde(default)]
    pub hang_ms: u64,
    /// Take the service down (port closed) for this many ms.
    #[serde(default)]
    pub outage_ms: u64,
    /// Incident creation only: store the incident, then hold the answer this long (a very
    /// large value: never answer; the client's timeout fires while the incident exists).
    #[serde(default)]
    pub create_late_ms: u64,
    /// Incident creation only: store the incident, then answer this instead of its record.
    #[serde(default)]
    pub create_garbage: Option<CreateGarbage>,
    /// How many of the next creates get `createLateMs`/`createGarbage` (counts down; later
    /// creates are answered normally). Absent: every create.
    #[serde(default)]
    pub create_fault_count: Option<u64>,
}

/// A bad answer to a create that did store the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CreateGarbage {
    /// 201 with an empty body.
    Empty,
    /// 200 with an HTML page (`text/html`), as from a proxy or a servlet error page.
    Html,
    /// 201 with the usual JSON, `ReturnCode` 0, but no `IncidentID` in the incident.
    NoId,
}

impl SmFaults {
    /// Whether this create gets the create faults (and counts it).
    fn take_create_fault(&mut self) -> Option<(u64, Option<CreateGarbage>)> {
        if self.create_late_ms == 0 && self.create_garbage.is_none() {
            return None;
        }
        match &mut self.create_fault_count {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some((self.create_late_ms, self.create_garbage))
    }
}

#[derive(Debug, Default)]
struct Inner {
    incidents: BTreeMap<u64, Value>,
    next: u64,
    faults: SmFaults,
    requests: u64,
    /// REST calls received and not answered yet (held by a hang or latency fault).
    in_flight: u64,
}

pub struct SmState {
    cfg: SmConfig,
    inner: Mutex<Inner>,
    pub gate: Arc<OutageGate>,
}

impl std::fmt::Debug for SmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmState").field("cfg", &self.cfg).finish()
    }
}

/// SM's timestamp form: `2026-11-25T10:00:00+00:00`.
fn sm_now() -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_default()
}

fn sm_error(status: StatusCode, code: i64, msg: &str) -> Response {
    (status, Json(json!({"ReturnCode": code, "Messages": [msg]}))).into_response()
}

impl SmState {
    pub fn new(cfg: SmConfig) -> Arc<SmState> {
        let mut inner = Inner {
            next: cfg.first_id,
            ..Default::default()
        };
        if let Some(p) = &cfg.persist {
            if let Ok(bytes) = std::fs::read(p) {
                match serde_json::from_slice::<Vec<Value>>(&bytes) {
                    Ok(list) => {
                        for inc in list {
                            if let Some(n) = inc["IncidentID"]
                                .as_str()
                                .and_then(|s| s.trim_start_matches("IM").parse::<u64>().ok())
                            {
                                inner.next = inner.next.max(n + 1);
                                inner.incidents.insert(n, inc);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable incident file")
                    }
                }
            }
        }
        Arc::new(SmState {
            cfg,
            inner: Mutex::new(inner),
            gate: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every incident, oldest first.
    pub fn incidents(&self) -> Vec<Value> {
        self.lock().incidents.values().cloned().collect()
    }

    pub fn set_faults(&self, f: SmFaults) {
        if f.outage_ms > 0 {
            self.gate.start(Duration::from_millis(f.outage_ms));
        } else {
            self.gate.end();
        }
        self.lock().faults = f;
    }

    fn persist(&self, inner: &Inner) {
        let Some(p) = &self.cfg.persist else { return };
        let list: Vec<&Value> = inner.incidents.values().collect();
        match serde_json::to_vec_pretty(&list) {
            Ok(body) => {
                if let Err(e) = crate::pki::write_atomic(p, &body, 0o644) {
                    tracing::warn!(error = %e, "cannot persist incidents");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise incidents"),
        }
    }

    fn check_auth(&self, headers: &HeaderMap) -> Result<String, Response> {
        let unauthorized = || {
            let mut r = sm_error(StatusCode::UNAUTHORIZED, -4, "Not Authorized");
            r.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Basic realm=\"HP Service Manager\""),
            );
            r
        };
        let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(unauthorized());
        };
        let Some(b64) = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
        else {
            return Err(unauthorized());
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(unauthorized)?;
        let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
        if self.cfg.users.get(user).map(String::as_str) == Some(pass) {
            Ok(user.to_string())
        } else {
            Err(unauthorized())
        }
    }
}

/// The SM routes, with the `/sim/...` control routes.
pub fn router(state: Arc<SmState>) -> Router {
    let rest = Router::new()
        .route("/SM/9/rest/incidents", get(list).post(create))
        .route(
            "/SM/9/rest/incidents/{id}",
            get(get_one).put(update).post(update),
        )
        .route("/SM/9/rest/incidents/{id}/action/{action}", post(action))
        .layer(axum::middleware::from_fn_with_state(state.clone(), faults));
    Router::new()
        .merge(rest)
        .route("/sim/incidents", get(sim_incidents))
        .route("/sim/stats", get(sim_stats))
        .route(
            "/sim/faults",
            post(sim_set_faults)
                .delete(sim_clear_faults)
                .get(sim_get_faults),
        )
        .fallback(|| async { sm_error(StatusCode::NOT_FOUND, 3, "Not found") })
        .with_state(state)
}

async fn faults(State(st): State<Arc<SmState>>, req: Request, next: Next) -> Response {
    /// Counts a call in flight until it is answered or its client goes away.
    struct InFlight(Arc<SmState>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.lock().in_flight -= 1;
        }
    }
    st.lock().in_flight += 1;
    let _guard = InFlight(st.clone());
    fault_window(&st, req, next).await
}

async fn fault_window(st: &SmState, req: Request, next: Next) -> Response {
    let f = st.lock().faults.clone();
    st.lock().requests += 1;
    let jitter = if f.jitter_ms > 0 {
        rand::thread_rng().gen_range(0..f.jitter_ms)
    } else {
        0
    };
    let delay = f
        .latency_ms
        .saturating_add(jitter)
        .saturating_add(f.hang_ms);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if f.unauthorized {
        return sm_error(StatusCode::UNAUTHORIZED, -4, "Not Authorized");
    }
    if f.html {
        return (
            StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            "<html><head><title>502 Proxy Error</title></head><body><h1>Proxy Error</h1><p>The proxy server received an invalid response from an upstream server.</p></body></html>",
        )
            .into_response();
    }
    if f.error_rate > 0.0 && rand::thread_rng().gen_bool(f.error_rate.clamp(0.0, 1.0)) {
        let code = StatusCode::from_u16(f.error_status.unwrap_or(503))
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return sm_error(code, -1, "Service temporarily unavailable (injected fault)");
    }
    next.run(req).await
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| sm_error(StatusCode::BAD_REQUEST, 71, &format!("Invalid JSON: {e}")))?;
    match v.get("Incident").and_then(Value::as_object) {
        Some(m) => Ok(m.clone()),
        None => Err(sm_error(
            StatusCode::BAD_REQUEST,
            71,
            "The body must be {\"Incident\": {...}}",
        )),
    }
}

/// SM stores line fields as arrays of lines; it also accepts one string.
fn as_lines(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s.split('\n').collect::<Vec<_>>()),
        Value::Array(_) => v.clone(),
        Value::Null => json!([]),
        other => json!([other.to_string()]),
    }
}

fn normalise(fields: &mut Map<String, Value>) {
    for k in ["Description", "Solution", "JournalUpdates"] {
        if let Some(v) = fields.get(k) {
            let lines = as_lines(v);
            fields.insert(k.into(), lines);
        }
    }
    for k in ["Urgency", "Impact"] {
        if let Some(Value::Number(n)) = fields.get(k) {
            let s = n.to_string();
            fields.insert(k.into(), json!(s));
        }
    }
}

fn id_num(id: &str) -> Option<u64> {
    id.strip_prefix("IM").unwrap_or(id).parse().ok()
}

fn ok_incident(status: StatusCode, messages: &[&str], inc: &Value) -> Response {
    (
        status,
        Json(json!({"ReturnCode": 0, "Messages": messages, "Incident": inc})),
    )
        .into_response()
}

async fn create(State(st): State<Arc<SmState>>, headers: HeaderMap, body: Bytes) -> Response {
    let user = match st.check_auth(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut fields = match parse_body(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    for req in &st.cfg.required {
        let missing = match fields.get(req) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if missing {
            return sm_error(
                StatusCode::BAD_REQUEST,
                71,
                &format!("Validation failed: {req} is a required field"),
            );
        }
    }
    normalise(&mut fields);
    let (id, inc, fault) = {
        let mut inner = st.lock();
        let n = inner.next;
        inner.next += 1;
        let id = format!("IM{n}");
        let now = sm_now();
        fields.insert("IncidentID".into(), json!(id));
        fields.insert("Status".into(), json!("Open"));
        fields.insert("OpenTime".into(), json!(now));
        fields.insert("UpdatedTime".into(), json!(now));
        fields.insert("OpenedBy".into(), json!(user));
        let inc = Value::Object(fields);
        inner.incidents.insert(n, inc.clone());
        st.persist(&inner);
        (id, inc, inner.faults.take_create_fault())
    };
    tracing::debug!(incident = %id, "incident created");
    // The incident is stored (and persisted) whatever the answer is now.
    if let Some((late_ms, garbage)) = fault {
        if late_ms > 0 {
            tracing::debug!(incident = %id, late_ms, "holding the answer to a create");
            tokio::time::sleep(Duration::from_millis(late_ms)).await;
        }
        match garbage {
            Some(CreateGarbage::Empty) => {
                return (StatusCode::CREATED, [("content-type", "application/json")], "")
                    .into_response()
            }
            Some(CreateGarbage::Html) => {
                return (
                    StatusCode::OK,
                    [("content-type", "text/html")],
                    "<html><head><title>Service Manager</title></head><body><h1>HP Service Manager</h1><p>Your request is being processed.</p></body></html>",
                )
                    .into_response()
            }
            Some(CreateGarbage::NoId) => {
                let mut without = inc.clone();
                if let Some(o) = without.as_object_mut() {
                    o.remove("IncidentID");
                }
                return ok_incident(StatusCode::CREATED, &[], &without);
            }
            None => {}
        }
    }
    ok_incident(
        StatusCode::OK,
        &[&format!("Incident record added: {id}")],
        &inc,
    )
}

async fn get_one(
    State(st): State<Arc<SmState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = st.check_auth(&headers) {
        return r;
    }
    match id_num(&id).and_then(|n| st.lock().incidents.get(&n).cloned()) {
        // A read answers no messages: `"Messages": []`.
        Some(inc) => ok_incident(StatusCode::OK, &[], &inc),
        None => sm_error(
            StatusCode::NOT_FOUND,
            3,
            &format!("Incident {id} not found"),
        ),
    }
}

async fn update(
    State(st): State<Arc<SmState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = st.check_auth(&headers) {
        return r;
    }
    let mut fields = match parse_body(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    normalise(&mut fields);
    apply(&st, &id, fields, None)
}

fn apply(st: &SmState, id: &str, fields: Map<String, Value>, status: Option<&str>) -> Response {
    let mut inner = st.lock();
    let Some(inc) = id_num(id).and_then(|n| inner.incidents.get_mut(&n)) else {
        return sm_error(
            StatusCode::NOT_FOUND,
            3,
            &format!("Incident {id} not found"),
        );
    };
    let Some(obj) = inc.as_object_mut() else {
        return sm_error(StatusCode::INTERNAL_SERVER_ERROR, -1, "corrupt incident");
    };
    for (k, v) in fields {
        if k == "JournalUpdates" {
            let mut lines = obj
                .get("JournalUpdates")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            lines.extend(v.as_array().cloned().unwrap_or_default());
            obj.insert(k, json!(lines));
        } else if k != "IncidentID" {
            obj.insert(k, v);
        }
    }
    let now = sm_now();
    obj.insert("UpdatedTime".into(), json!(now));
    if let Some(s) = status {
        obj.insert("Status".into(), json!(s));
        obj.insert(format!("{s}Time"), json!(now));
    }
    let out = inc.clone();
    st.persist(&inner);
    drop(inner);
    ok_incident(
        StatusCode::OK,
        &[&format!("Incident record updated: {id}")],
        &out,
    )
}

async fn action(
    State(st): State<Arc<SmState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = st.check_auth(&headers) {
        return r;
    }
    let status = match action.to_ascii_lowercase().as_str() {
        "resolve" => "Resolved",
        "close" => "Closed",
        "reopen" => "Open",
        _ => {
            return sm_error(
                StatusCode::BAD_REQUEST,
                71,
                &format!("Unknown action {action}"),
            )
        }
    };
    let mut fields = if body.is_empty() {
        Map::new()
    } else {
        match parse_body(&body) {
            Ok(f) => f,
            Err(r) => return r,
        }
    };
    normalise(&mut fields);
    apply(&st, &id, fields, Some(status))
}

/// `query=Title="OneView Alert" and Status~="Closed"`: clauses joined by `and`, `=` or `~=`.
fn parse_query(q: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = Vec::new();
    let mut rest = q.trim();
    while !rest.is_empty() {
        let (field, after) = rest
            .split_once(['=', '~'])
            .ok_or_else(|| format!("no operator in {rest:?}"))?;
        let negate = rest[field.len()..].starts_with('~');
        let after = if negate {
            after.strip_prefix('=').ok_or("expected ~=")?
        } else {
            after
        };
        let after = after.trim_start();
        let (value, remaining) = if let Some(s) = after.strip_prefix('"') {
            let end = s.find('"').ok_or("unterminated quote")?;
            (s[..end].to_string(), &s[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.push((field.trim().to_string(), negate, value));
        rest = remaining.trim_start();
        if let Some(r) = rest
            .strip_prefix("and ")
            .or_else(|| rest.strip_prefix("AND "))
        {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("expected 'and' before {rest:?}"));
        }
    }
    Ok(out)
}

fn field_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

async fn list(
    State(st): State<Arc<SmState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = st.check_auth(&headers) {
        return r;
    }
    let pairs: Vec<(String, String)> = q
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut conds: Vec<(String, bool, String)> = Vec::new();
    let mut view = "condense".to_string();
    let mut start: usize = 1;
    let mut count: usize = 1000;
    for (k, v) in &pairs {
        match k.as_str() {
            "view" => view = v.to_ascii_lowercase(),
            "start" => match v.parse::<usize>() {
                Ok(s) if s >= 1 => start = s,
                _ => return sm_error(StatusCode::BAD_REQUEST, 71, "start must be an integer ≥ 1"),
            },
            "count" => match v.parse::<usize>() {
                Ok(c) => count = c,
                _ => return sm_error(StatusCode::BAD_REQUEST, 71, "count must be an integer"),
            },
            "query" => match parse_query(v) {
                Ok(c) => conds.extend(c),
                Err(e) => {
                    return sm_error(StatusCode::BAD_REQUEST, 71, &format!("Invalid query: {e}"))
                }
            },
            "sort" => {}
            field => conds.push((field.to_string(), false, v.clone())),
        }
    }
    let all: Vec<Value> = st
        .lock()
        .incidents
        .values()
        .filter(|inc| {
            conds
                .iter()
                .all(|(f, neg, v)| (field_text(inc.get(f)) == *v) != *neg)
        })
        .cloned()
        .collect();
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip(start - 1)
        .take(count)
        .map(|inc| {
            if view == "expand" {
                json!({"Incident": inc})
            } else {
                json!({"Incident": {"IncidentID": inc["IncidentID"]}})
            }
        })
        .collect();
    let mut body = json!({
        "@totalcount": total, "@start": start, "@count": page.len(),
        "ReturnCode": 0, "Messages": [], "ResourceName": "Incident",
    });
    if !page.is_empty() {
        body["content"] = json!(page);
    }
    Json(body).into_response()
}

async fn sim_incidents(State(st): State<Arc<SmState>>) -> Response {
    Json(json!({"incidents": st.incidents()})).into_response()
}

/// `GET /sim/stats`: REST calls received, and the ones not answered yet.
async fn sim_stats(State(st): State<Arc<SmState>>) -> Response {
    let i = st.lock();
    Json(json!({"requests": i.requests, "inFlight": i.in_flight})).into_response()
}

async fn sim_set_faults(State(st): State<Arc<SmState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<SmFaults>(&body) {
        Ok(f) => {
            st.set_faults(f.clone());
            Json(json!({"faults": f})).into_response()
        }
        Err(e) => sm_error(StatusCode::BAD_REQUEST, 71, &format!("invalid faults: {e}")),
    }
}

async fn sim_clear_faults(State(st): State<Arc<SmState>>) -> Response {
    st.set_faults(SmFaults::default());
    Json(json!({"faults": SmFaults::default()})).into_response()
}

async fn sim_get_faults(State(st): State<Arc<SmState>>) -> Response {
    let f = st.lock().faults.clone();
    Json(json!({"faults": f})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm_query_clauses_parse() {
        let q = parse_query("Title=\"OneView Alert\" and Status~=\"Closed\"").expect("parse");
        assert_eq!(
            q,
            vec![
                ("Title".into(), false, "OneView Alert".into()),
                ("Status".into(), true, "Closed".into())
            ]
        );
        assert!(parse_query("Title").is_err());
        assert!(parse_query("Title=\"x").is_err());
    }

    #[test]
    fn description_string_becomes_lines_and_urgency_a_string() {
        let mut m = Map::new();
        m.insert("Description".into(), json!("a\nb"));
        m.insert("Urgency".into(), json!(1));
        normalise(&mut m);
        assert_eq!(m["Description"], json!(["a", "b"]));
        assert_eq!(m["Urgency"], json!("1"));
    }
}
