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
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::httpsim::{self, http_faults, HttpSim, SimState};

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

http_faults! {
    /// Faults, set through `POST /sim/faults` (every key optional, unknown ones refused; `{}`
    /// clears): those of every HTTP simulator ([`crate::httpsim`]; here injected errors are 503
    /// in SM's JSON, the HTML page a proxy's 502), and:
    pub struct SmFaults {
        /// Answer every REST call 401 regardless of credentials.
        #[serde(default)]
        pub unauthorized: bool,
    }
}

/// The incidents the simulator holds.
#[derive(Debug, Default)]
pub struct SmData {
    incidents: BTreeMap<u64, Value>,
    next: u64,
}

/// The Service Manager simulator.
pub type SmState = SimState<SmData>;

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

/// The answer of SM's `html` fault: a proxy's error page.
const PROXY_ERROR: &str = "<html><head><title>502 Proxy Error</title></head><body><h1>Proxy Error</h1><p>The proxy server received an invalid response from an upstream server.</p></body></html>";

/// The page of SM's `createGarbage: html`.
const PROCESSING: &str = "<html><head><title>Service Manager</title></head><body><h1>HP Service Manager</h1><p>Your request is being processed.</p></body></html>";

impl HttpSim for SmData {
    type Config = SmConfig;
    type Faults = SmFaults;
    type Rates = ();
    const ERROR_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

    /// The SM routes, with the `/sim/...` control routes.
    fn router(state: Arc<SmState>) -> Router {
        let rest = Router::new()
            .route("/SM/9/rest/incidents", get(list).post(create))
            .route(
                "/SM/9/rest/incidents/{id}",
                get(get_one).put(update).post(update),
            )
            .route("/SM/9/rest/incidents/{id}/action/{action}", post(action))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                httpsim::middleware::<SmData>,
            ));
        Router::new()
            .merge(rest)
            .merge(httpsim::control_routes::<SmData>())
            .fallback(|| async { sm_error(StatusCode::NOT_FOUND, 3, "Not found") })
            .with_state(state)
    }

    fn incidents(&self) -> Vec<Value> {
        self.incidents.values().cloned().collect()
    }

    fn html_fault() -> Response {
        httpsim::html(StatusCode::BAD_GATEWAY, PROXY_ERROR)
    }

    fn injected_error(status: StatusCode) -> Response {
        sm_error(
            status,
            -1,
            "Service temporarily unavailable (injected fault)",
        )
    }

    fn bad_request(message: &str) -> Response {
        sm_error(StatusCode::BAD_REQUEST, 71, message)
    }

    fn decide(f: &mut SmFaults, _: &mut (), _: &Request) -> Result<HeaderMap, Response> {
        if f.unauthorized {
            return Err(sm_error(StatusCode::UNAUTHORIZED, -4, "Not Authorized"));
        }
        Ok(HeaderMap::new())
    }
}

impl SimState<SmData> {
    pub fn new(cfg: SmConfig) -> Arc<SmState> {
        let mut data = SmData {
            next: cfg.first_id,
            ..Default::default()
        };
        for inc in
            httpsim::load::<Vec<Value>>(cfg.persist.as_deref(), "incident").unwrap_or_default()
        {
            if let Some(n) = inc["IncidentID"]
                .as_str()
                .and_then(|s| s.trim_start_matches("IM").parse::<u64>().ok())
            {
                data.next = data.next.max(n + 1);
                data.incidents.insert(n, inc);
            }
        }
        SimState::with_data(cfg, data)
    }

    fn persist(&self, data: &SmData) {
        // Nothing to write: do not build the list (it grows with every incident, under the
        // lock every request takes).
        if self.cfg.persist.is_none() {
            return;
        }
        let list: Vec<&Value> = data.incidents.values().collect();
        httpsim::save(self.cfg.persist.as_deref(), &list, "incidents");
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
        httpsim::basic_user(b64, &self.cfg.users).ok_or_else(unauthorized)
    }
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
    let (id, inc) = {
        let mut data = st.lock();
        let n = data.next;
        data.next += 1;
        let id = format!("IM{n}");
        let now = sm_now();
        fields.insert("IncidentID".into(), json!(id));
        fields.insert("Status".into(), json!("Open"));
        fields.insert("OpenTime".into(), json!(now));
        fields.insert("UpdatedTime".into(), json!(now));
        fields.insert("OpenedBy".into(), json!(user));
        let inc = Value::Object(fields);
        data.incidents.insert(n, inc.clone());
        st.persist(&data);
        (id, inc)
    };
    tracing::debug!(incident = %id, "incident created");
    // The incident is stored (and persisted) whatever the answer is now.
    if let Some(fault) = st.take_create_fault() {
        let no_id = || {
            let mut without = inc.clone();
            if let Some(o) = without.as_object_mut() {
                o.remove("IncidentID");
            }
            ok_incident(StatusCode::CREATED, &[], &without)
        };
        if let Some(r) = fault.answer(StatusCode::CREATED, PROCESSING, no_id).await {
            return r;
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
    let mut data = st.lock();
    let Some(inc) = id_num(id).and_then(|n| data.incidents.get_mut(&n)) else {
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
    st.persist(&data);
    drop(data);
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
