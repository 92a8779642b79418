//! PagerDuty's Events API v2 (`POST /v2/enqueue`): trigger, acknowledge and resolve events with
//! the documented validation (400 `{"status":"invalid event","message":"Event object is
//! invalid","errors":[...]}`), 202 `{"status":"success","message":"Event processed",
//! "dedup_key"}`, de-duplication by `dedup_key` per routing key into incidents (a trigger on an
//! open incident adds to it; one after a resolve opens a new incident; acknowledge and resolve
//! with nothing open are dropped), generated dedup keys, known integration keys, and 429 when
//! a routing key sends too fast.
//!
//! Fault injection (latency, a 5xx rate, 429 for the next N events, a per-key rate, an HTML
//! page, hangs, an outage that closes the port, and events that are accepted and then answered
//! late or badly) is set through `/sim/...` routes on the same port, which also read back every
//! event and incident, let a person acknowledge or resolve an incident, and reset.
//! docs/FIDELITY.md lists what is simplified.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::httpsim::{self, http_faults, HttpSim, SimState};

/// Settings of the PagerDuty simulator.
#[derive(Debug, Clone, Default)]
pub struct PdConfig {
    /// Integration keys that exist (32 characters each). Empty: every well-formed key exists.
    pub routing_keys: Vec<String>,
    /// Also serve the API under this path (`/pd` serves `/pd/v2/enqueue` too).
    pub base_path: Option<String>,
    /// Where events and incidents persist (JSON), if anywhere.
    pub persist: Option<PathBuf>,
}

http_faults! {
    /// Faults, set through `POST /sim/faults` (every key optional, unknown ones refused; `{}`
    /// clears): those of every HTTP simulator ([`crate::httpsim`]; here the create faults apply
    /// to accepted events, injected errors are 500 in PagerDuty's JSON, the HTML page a proxy's
    /// 502), and:
    pub struct PdFaults {
        /// Answer the next N calls 429 (counts down); nothing is ingested.
        #[serde(default)]
        pub throttle_next: u64,
        /// Events a routing key may send in any 60 s (0 = unlimited); more get 429. PagerDuty
        /// documents about 120.
        #[serde(default)]
        pub rate_per_minute: u64,
        /// `Retry-After` (seconds) on the 429s of `throttleNext` and `ratePerMinute`. PagerDuty
        /// documents none, so by default there is none; set it to see a client honour one.
        #[serde(default)]
        pub retry_after_s: Option<u64>,
    }
}

/// An incident (one alert per incident: PagerDuty's grouping of alerts is not simulated).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PdIncident {
    pub id: String,
    pub incident_number: u64,
    pub routing_key: String,
    pub dedup_key: String,
    /// `triggered`, `acknowledged` or `resolved`.
    pub status: String,
    pub summary: String,
    pub source: String,
    pub severity: String,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub custom_details: Value,
    pub created_at: String,
    #[serde(default)]
    pub acknowledged_at: Option<String>,
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    #[serde(default)]
    pub resolved_at: Option<String>,
    #[serde(default)]
    pub resolved_by: Option<String>,
    /// Events applied to it (the trigger that opened it included).
    pub event_count: u64,
}

/// An event as received, with what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PdEvent {
    pub seq: u64,
    pub received_at: String,
    pub routing_key: String,
    pub event_action: String,
    pub dedup_key: String,
    /// The whole body as sent.
    pub body: Value,
    /// `triggered` (opened an incident), `deduplicated` (added to an open one),
    /// `acknowledged`, `resolved`, or `dropped` (nothing open to apply it to).
    pub outcome: String,
    pub incident: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    #[serde(default)]
    incidents: Vec<PdIncident>,
    #[serde(default)]
    events: Vec<PdEvent>,
}

/// The events and incidents the simulator holds.
#[derive(Debug, Default)]
pub struct PdData {
    incidents: Vec<PdIncident>,
    events: Vec<PdEvent>,
}

/// The PagerDuty Events API simulator.
pub type PdState = SimState<PdData>;

/// Recent events per routing key, for `ratePerMinute`.
type Recent = HashMap<String, VecDeque<Instant>>;

/// `2026-11-25T10:00:00Z`.
fn pd_now() -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_default()
}

fn invalid(errors: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors})),
    )
        .into_response()
}

fn throttled(retry_after_s: Option<u64>) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly.  Please retry later."})),
    )
        .into_response();
    if let Some(s) = retry_after_s {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// ISO 8601 as PagerDuty's examples write it: RFC 3339, or with a `+0000` offset.
fn valid_timestamp(s: &str) -> bool {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return true;
    }
    let n = s.len();
    if n > 5 && s.is_char_boundary(n - 5) {
        let (head, off) = s.split_at(n - 5);
        if (off.starts_with('+') || off.starts_with('-'))
            && off[1..].chars().all(|c| c.is_ascii_digit())
        {
            let fixed = format!("{head}{}:{}", &off[..3], &off[3..]);
            return time::OffsetDateTime::parse(&fixed, &Rfc3339).is_ok();
        }
    }
    false
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn blank(v: &Value, k: &str) -> bool {
    str_field(v, k).is_none_or(|s| s.trim().is_empty())
}

/// The documented checks, every failure listed.
fn validate(ev: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if blank(ev, "routing_key") {
        errors.push("'routing_key' is missing or blank".to_string());
    } else if let Some(k) = str_field(ev, "routing_key") {
        if k.chars().count() != 32 {
            errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".into());
        }
        if !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            errors.push("'routing_key' cannot contain non-alphanumeric characters.".into());
        }
    }
    let action = str_field(ev, "event_action").unwrap_or("");
    if action.trim().is_empty() {
        errors.push("'event_action' is missing or blank".to_string());
    } else if !matches!(action, "trigger" | "acknowledge" | "resolve") {
        errors.push("'event_action' must be one of trigger, acknowledge or resolve".to_string());
    }
    match ev.get("dedup_key") {
        None | Some(Value::Null) => {
            if matches!(action, "acknowledge" | "resolve") {
                errors.push("'dedup_key' is missing or blank".to_string());
            }
        }
        Some(Value::String(d)) => {
            if d.trim().is_empty() && matches!(action, "acknowledge" | "resolve") {
                errors.push("'dedup_key' is missing or blank".to_string());
            }
            if d.chars().count() > 255 {
                errors.push("'dedup_key' is too long (maximum is 255 characters)".to_string());
            }
        }
        Some(_) => errors.push("'dedup_key' must be a string".to_string()),
    }
    if action == "trigger" {
        match ev.get("payload") {
            Some(p @ Value::Object(_)) => {
                for f in ["summary", "source", "severity"] {
                    if blank(p, f) {
                        errors.push(format!("'payload.{f}' is missing or blank"));
                    }
                }
                if str_field(p, "summary").is_some_and(|s| s.chars().count() > 1024) {
                    errors.push(
                        "'payload.summary' is too long (maximum is 1024 characters)".to_string(),
                    );
                }
                if let Some(s) = str_field(p, "severity").filter(|s| !s.trim().is_empty()) {
                    if !matches!(s, "critical" | "error" | "warning" | "info") {
                        errors.push(
                            "'payload.severity' must be one of critical, error, warning or info"
                                .to_string(),
                        );
                    }
                }
                match p.get("timestamp") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(t)) if valid_timestamp(t) => {}
                    Some(_) => errors
                        .push("'payload.timestamp' is not a valid ISO 8601 timestamp".to_string()),
                }
            }
            _ => errors.push("'payload' is missing or blank".to_string()),
        }
    }
    for (f, required) in [("links", "href"), ("images", "src")] {
        match ev.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.iter().any(|i| blank(i, required)) {
                    errors.push(format!("'{f}' entries must have '{required}'"));
                }
            }
            Some(_) => errors.push(format!("'{f}' must be an array")),
        }
    }
    errors
}

fn new_incident_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..6)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("P{tail}")
}

/// The answer of PagerDuty's `html` fault: a proxy's error page.
const BAD_GATEWAY: &str =
    "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>";

/// The page of PagerDuty's `createGarbage: html`.
const PLEASE_WAIT: &str = "<html><head><title>PagerDuty</title></head><body><h1>PagerDuty</h1><p>Please wait while we process your request.</p></body></html>";

fn pd_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

impl HttpSim for PdData {
    type Config = PdConfig;
    type Faults = PdFaults;
    type Rates = Recent;
    const ERROR_STATUS: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;

    /// The Events API routes, with the `/sim/...` control routes.
    fn router(state: Arc<PdState>) -> Router {
        let mut api = Router::new().route("/v2/enqueue", post(enqueue));
        if let Some(base) = state.cfg.base_path.as_deref() {
            let base = base.trim_end_matches('/');
            if !base.is_empty() && base.starts_with('/') {
                api = api.route(&format!("{base}/v2/enqueue"), post(enqueue));
            }
        }
        let api = api.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            httpsim::middleware::<PdData>,
        ));
        Router::new()
            .merge(api)
            .route("/sim/events", get(sim_events))
            .route("/sim/incidents/{id}/{action}", post(sim_act))
            .merge(httpsim::control_routes::<PdData>())
            .merge(httpsim::reset_route::<PdData>())
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"status": "not found", "message": "Not found"})),
                )
            })
            .with_state(state)
    }

    /// Every incident, oldest first, each with the events applied to it.
    fn incidents(&self) -> Vec<Value> {
        self.incidents
            .iter()
            .map(|inc| {
                let mut v = serde_json::to_value(inc).unwrap_or(Value::Null);
                let events: Vec<&PdEvent> = self
                    .events
                    .iter()
                    .filter(|e| e.incident.as_deref() == Some(inc.id.as_str()))
                    .collect();
                v["events"] = json!(events);
                v
            })
            .collect()
    }

    fn html_fault() -> Response {
        httpsim::html(StatusCode::BAD_GATEWAY, BAD_GATEWAY)
    }

    fn injected_error(status: StatusCode) -> Response {
        pd_error(status, "Internal error (injected fault)")
    }

    fn bad_request(message: &str) -> Response {
        pd_error(StatusCode::BAD_REQUEST, message)
    }

    fn decide(f: &mut PdFaults, _: &mut Recent, _: &Request) -> Result<HeaderMap, Response> {
        if f.throttle_next > 0 {
            f.throttle_next -= 1;
            return Err(throttled(f.retry_after_s));
        }
        Ok(HeaderMap::new())
    }

    fn stats(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("events".into(), json!(self.events.len()));
        m.insert("incidents".into(), json!(self.incidents.len()));
        m
    }

    /// Forgets every event and incident.
    fn forget(st: &PdState) {
        let mut d = st.lock();
        d.incidents.clear();
        d.events.clear();
        st.persist(&d);
    }
}

impl SimState<PdData> {
    pub fn new(cfg: PdConfig) -> Arc<PdState> {
        let s: Snapshot = httpsim::load(cfg.persist.as_deref(), "PagerDuty").unwrap_or_default();
        let data = PdData {
            incidents: s.incidents,
            events: s.events,
        };
        SimState::with_data(cfg, data)
    }

    /// Every event received and accepted, oldest first.
    pub fn events(&self) -> Vec<PdEvent> {
        self.lock().events.clone()
    }

    fn persist(&self, d: &PdData) {
        // Nothing to write: do not build the snapshot (it grows with every incident).
        if self.cfg.persist.is_none() {
            return;
        }
        let snap = json!({"incidents": d.incidents, "events": d.events});
        httpsim::save(self.cfg.persist.as_deref(), &snap, "PagerDuty state");
    }
}

async fn enqueue(State(st): State<Arc<PdState>>, body: Bytes) -> Response {
    let ev: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid(vec!["Event object is not valid JSON".to_string()]),
    };
    let routing_key = str_field(&ev, "routing_key").unwrap_or("").to_string();
    // Throttling counts what a key sends, valid or not.
    let over = st.with_faults(|f, recent| {
        let per_minute = f.rate_per_minute;
        if per_minute == 0 {
            return None;
        }
        let now = Instant::now();
        let q = recent.entry(routing_key.clone()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            q.pop_front();
        }
        if q.len() as u64 >= per_minute {
            return Some(f.retry_after_s);
        }
        q.push_back(now);
        None
    });
    if let Some(retry_after_s) = over {
        return throttled(retry_after_s);
    }
    let errors = validate(&ev);
    if !errors.is_empty() {
        return invalid(errors);
    }
    if !st.cfg.routing_keys.is_empty() && !st.cfg.routing_keys.contains(&routing_key) {
        return invalid(vec!["Invalid routing key".to_string()]);
    }
    let action = str_field(&ev, "event_action").unwrap_or("").to_string();
    let dedup_key = match str_field(&ev, "dedup_key").filter(|d| !d.trim().is_empty()) {
        Some(d) => d.to_string(),
        // A trigger without a key gets a unique one: it always opens a new incident.
        None => format!("{:032x}", rand::thread_rng().gen::<u128>()),
    };
    let (outcome, incident) = {
        let mut d = st.lock();
        let (outcome, incident) = apply(&mut d, &routing_key, &dedup_key, &action, &ev, None);
        let seq = d.events.len() as u64 + 1;
        d.events.push(PdEvent {
            seq,
            received_at: pd_now(),
            routing_key,
            event_action: action,
            dedup_key: dedup_key.clone(),
            body: ev,
            outcome: outcome.to_string(),
            incident: incident.clone(),
        });
        st.persist(&d);
        (outcome, incident)
    };
    tracing::debug!(%dedup_key, outcome, incident = incident.as_deref(), "event processed");
    // The event is ingested (and persisted) whatever the answer is now.
    if let Some(fault) = st.take_create_fault() {
        let no_id = || {
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": "success", "message": "Event processed"})),
            )
                .into_response()
        };
        if let Some(r) = fault.answer(StatusCode::ACCEPTED, PLEASE_WAIT, no_id).await {
            return r;
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key})),
    )
        .into_response()
}

/// Applies an event (or a person's action, `by`) to the incidents; its outcome and incident.
fn apply(
    i: &mut PdData,
    routing_key: &str,
    dedup_key: &str,
    action: &str,
    ev: &Value,
    by: Option<&str>,
) -> (&'static str, Option<String>) {
    let now = pd_now();
    let open = i.incidents.iter_mut().find(|inc| {
        inc.routing_key == routing_key && inc.dedup_key == dedup_key && inc.status != "resolved"
    });
    match (action, open) {
        ("trigger", Some(inc)) => {
            inc.event_count += 1;
            ("deduplicated", Some(inc.id.clone()))
        }
        ("trigger", None) => {
            let p = ev.get("payload").cloned().unwrap_or(Value::Null);
            let s = |k: &str| str_field(&p, k).unwrap_or("").to_string();
            let o = |k: &str| str_field(&p, k).map(str::to_string);
            let number = i.incidents.len() as u64 + 1;
            let id = new_incident_id();
            i.incidents.push(PdIncident {
                id: id.clone(),
                incident_number: number,
                routing_key: routing_key.to_string(),
                dedup_key: dedup_key.to_string(),
                status: "triggered".into(),
                summary: s("summary"),
                source: s("source"),
                severity: s("severity"),
                component: o("component"),
                group: o("group"),
                class: o("class"),
                custom_details: p.get("custom_details").cloned().unwrap_or(Value::Null),
                created_at: now,
                acknowledged_at: None,
                acknowledged_by: None,
                resolved_at: None,
                resolved_by: None,
                event_count: 1,
            });
            ("triggered", Some(id))
        }
        ("acknowledge", Some(inc)) => {
            inc.event_count += u64::from(by.is_none());
            if inc.status == "triggered" {
                inc.status = "acknowledged".into();
                inc.acknowledged_at = Some(now);
                inc.acknowledged_by = Some(by.map_or("events API".into(), |u| format!("user:{u}")));
            }
            ("acknowledged", Some(inc.id.clone()))
        }
        ("resolve", Some(inc)) => {
            inc.event_count += u64::from(by.is_none());
            inc.status = "resolved".into();
            inc.resolved_at = Some(now);
            inc.resolved_by = Some(by.map_or("events API".into(), |u| format!("user:{u}")));
            ("resolved", Some(inc.id.clone()))
        }
        _ => ("dropped", None),
    }
}

async fn sim_events(State(st): State<Arc<PdState>>) -> Response {
    Json(json!({ "events": st.events() })).into_response()
}

/// `POST /sim/incidents/{id}/{acknowledge|resolve} {"user": "jdoe"}`: a person acting in
/// PagerDuty's UI (no event is recorded).
async fn sim_act(
    State(st): State<Arc<PdState>>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let user = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| str_field(&v, "user").map(str::to_string))
        .unwrap_or_else(|| "sim.human".into());
    if !matches!(action.as_str(), "acknowledge" | "resolve") {
        return pd_error(StatusCode::BAD_REQUEST, &format!("unknown action {action}"));
    }
    let mut i = st.lock();
    let Some((rk, dk)) = i
        .incidents
        .iter()
        .find(|inc| inc.id == id)
        .map(|inc| (inc.routing_key.clone(), inc.dedup_key.clone()))
    else {
        return pd_error(StatusCode::NOT_FOUND, &format!("no incident {id}"));
    };
    let open = i
        .incidents
        .iter()
        .any(|inc| inc.id == id && inc.status != "resolved");
    if !open {
        return pd_error(StatusCode::CONFLICT, &format!("incident {id} is resolved"));
    }
    apply(&mut i, &rk, &dk, &action, &Value::Null, Some(&user));
    st.persist(&i);
    let inc = i.incidents.iter().find(|inc| inc.id == id).cloned();
    Json(json!({ "incident": inc })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn throttled_answers_carry_retry_after_only_when_asked() {
        let req = || Request::new(axum::body::Body::empty());
        let mut f: PdFaults =
            serde_json::from_value(json!({"throttleNext": 2, "retryAfterS": 3})).expect("faults");
        let r = PdData::decide(&mut f, &mut Recent::default(), &req()).expect_err("429");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "3");
        f.retry_after_s = None;
        let r = PdData::decide(&mut f, &mut Recent::default(), &req()).expect_err("429");
        assert!(
            r.headers().get("retry-after").is_none(),
            "PagerDuty sends none"
        );
        assert!(PdData::decide(&mut f, &mut Recent::default(), &req()).is_ok());
    }

    #[test]
    fn validation_lists_every_problem() {
        let e = validate(&json!({"routing_key": "short-key!", "event_action": "page"}));
        assert!(e.contains(
            &"Length of 'routing_key' is incorrect (should be 32 characters)".to_string()
        ));
        assert!(
            e.contains(&"'routing_key' cannot contain non-alphanumeric characters.".to_string())
        );
        assert!(e.iter().any(|m| m.starts_with("'event_action' must be")));
        let e = validate(&json!({"routing_key": KEY, "event_action": "trigger",
            "payload": {"summary": "x".repeat(1025), "severity": "fatal"}}));
        assert_eq!(e.len(), 3, "{e:?}");
        let e = validate(&json!({"routing_key": KEY, "event_action": "resolve"}));
        assert_eq!(e, vec!["'dedup_key' is missing or blank"]);
        let ok = json!({"routing_key": KEY, "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "info",
                "timestamp": "2015-07-17T08:42:58.315+0000"}});
        assert!(validate(&ok).is_empty());
    }

    #[test]
    fn timestamps_take_rfc3339_and_the_plus_0000_form() {
        assert!(valid_timestamp("2026-11-25T10:00:00Z"));
        assert!(valid_timestamp("2015-07-17T08:42:58.315+0000"));
        assert!(valid_timestamp("2015-07-17T08:42:58-05:00"));
        assert!(!valid_timestamp("yesterday"));
        assert!(!valid_timestamp("2015-07-17 08:42:58"));
    }
}
