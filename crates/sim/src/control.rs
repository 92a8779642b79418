//! The simulator's control surface, under `/sim/` on the REST port (no session, no API version):
//! raise, update, clear, lock and delete alerts; storms; expire sessions; REST faults; restart
//! the broker; regenerate the certificates; publish raw bodies or other resource categories.
//! Documented in README.md; the `ov-sim` subcommands call these routes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::ov::{ov_error, OvState, RestFault};

/// What the control routes need beyond the OneView state.
pub struct Control {
    pub ov: Arc<OvState>,
    /// The endpoints, as written to the ready file.
    pub info: Value,
    /// Regenerates the PKI and restarts the broker.
    /// The argument keeps the REST certificate (`?keepRestCertificate=true`).
    pub regenerate:
        Box<dyn Fn(bool) -> futures_lite::BoxedFuture<Result<(), String>> + Send + Sync>,
}

/// A boxed future without pulling in a futures crate.
pub mod futures_lite {
    pub type BoxedFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

pub fn router(ctl: Arc<Control>) -> Router {
    Router::new()
        .route("/sim/info", get(info))
        .route("/sim/stats", get(stats))
        .route("/sim/alerts", post(raise))
        .route("/sim/alerts/{id}", get(show).delete(remove).patch(update))
        .route("/sim/alerts/{id}/clear", post(clear))
        .route("/sim/alerts/{id}/lock", post(lock))
        .route("/sim/storm", post(storm))
        .route("/sim/sessions/expire", post(expire))
        .route("/sim/clock", get(get_clock).post(set_clock))
        .route("/sim/faults/rest", post(set_fault).delete(clear_fault))
        .route("/sim/faults/churn", post(set_churn))
        .route("/sim/faults/race", post(set_race))
        .route("/sim/broker/restart", post(restart_broker))
        .route("/sim/certificates/regenerate", post(regenerate))
        .route(
            "/sim/publish",
            post(publish_raw).layer(axum::extract::DefaultBodyLimit::max(256 << 20)),
        )
        .route("/sim/resources", post(publish_resource))
        .with_state(ctl)
}

fn bad(msg: &str) -> Response {
    ov_error(StatusCode::BAD_REQUEST, "SIM_BAD_REQUEST", msg, &[])
}

fn object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the body must be a JSON object")),
        Err(e) => Err(bad(&format!("the body is not JSON: {e}"))),
    }
}

async fn info(State(c): State<Arc<Control>>) -> Response {
    Json(c.info.clone()).into_response()
}

async fn stats(State(c): State<Arc<Control>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    Json(json!({
        "alerts": c.ov.alert_count(),
        "published": c.ov.bus.stats.published.load(Relaxed),
        "dropped": c.ov.bus.stats.dropped.load(Relaxed),
        "busConnected": c.ov.bus.is_connected(),
    }))
    .into_response()
}

async fn raise(State(c): State<Arc<Control>>, body: Bytes) -> Response {
    match object(&body) {
        Ok(fields) => (StatusCode::CREATED, Json(c.ov.raise_alert(&fields))).into_response(),
        Err(r) => r,
    }
}

fn id_of(id: &str) -> Result<u64, Response> {
    id.parse().map_err(|_| bad("the alert id must be a number"))
}

/// Alert `id` through `act` (read, change or delete it): the alert it returns, or 404.
fn on_alert(id: &str, act: impl FnOnce(u64) -> Option<Value>) -> Response {
    let n = match id_of(id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match act(n) {
        Some(a) => Json(a).into_response(),
        None => ov_error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            &format!("no alert {id}"),
            &[],
        ),
    }
}

fn changed(c: &Control, id: &str, fields: Map<String, Value>) -> Response {
    on_alert(id, |n| c.ov.update_alert(n, &fields))
}

async fn update(State(c): State<Arc<Control>>, Path(id): Path<String>, body: Bytes) -> Response {
    match object(&body) {
        Ok(fields) => changed(&c, &id, fields),
        Err(r) => r,
    }
}

/// `GET /sim/alerts/{id}`: the alert as it is now, without a session.
async fn show(State(c): State<Arc<Control>>, Path(id): Path<String>) -> Response {
    on_alert(&id, |n| c.ov.alert(n))
}

/// `POST /sim/alerts/{id}/clear`: the appliance clears the alert itself (`clearedByUser`
/// "System"), or, with `{"user": "NAME"}`, a user clears it from the appliance's UI.
async fn clear(State(c): State<Arc<Control>>, Path(id): Path<String>, body: Bytes) -> Response {
    let req = match object(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut m = Map::new();
    m.insert("alertState".into(), json!("Cleared"));
    match req.get("user") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if !u.is_empty() => {
            m.insert("clearedByUser".into(), json!(u));
        }
        Some(_) => return bad("user must be a non-empty string"),
    }
    changed(&c, &id, m)
}

async fn lock(State(c): State<Arc<Control>>, Path(id): Path<String>) -> Response {
    let mut m = Map::new();
    m.insert("alertState".into(), json!("Locked"));
    m.insert("lifeCycle".into(), json!(true));
    changed(&c, &id, m)
}

async fn remove(State(c): State<Arc<Control>>, Path(id): Path<String>) -> Response {
    on_alert(&id, |n| c.ov.delete_alert(n))
}

/// A storm request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storm {
    /// How many alerts.
    pub count: u64,
    /// Alerts per second; 0 = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Severity weights, e.g. {"Critical": 1, "Warning": 9}: exactly 10 % critical.
    #[serde(default)]
    pub severities: Option<Vec<(String, u64)>>,
    /// Alert-state weights, e.g. {"Active": 9, "Locked": 1}.
    #[serde(default)]
    pub states: Option<Vec<(String, u64)>>,
    /// Extra fields set on every alert.
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// Picks by weight deterministically: position `i` of a repeating pattern, so proportions are
/// exact over any whole number of cycles.
fn pick(weights: &[(String, u64)], i: u64) -> Option<&str> {
    let total: u64 = weights.iter().map(|w| w.1).sum();
    if total == 0 {
        return None;
    }
    let mut at = i % total;
    for (name, w) in weights {
        if at < *w {
            return Some(name);
        }
        at -= w;
    }
    None
}

fn weights(v: &Option<Vec<(String, u64)>>) -> Vec<(String, u64)> {
    v.clone().unwrap_or_default()
}

async fn storm(State(c): State<Arc<Control>>, body: Bytes) -> Response {
    // Accept {"Critical": 1, "Warning": 9} maps as well as [["Critical",1],...] lists.
    let mut v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(&format!("the body is not JSON: {e}")),
    };
    for k in ["severities", "states"] {
        if let Some(Value::Object(m)) = v.get(k).cloned() {
            v[k] = Value::Array(m.into_iter().map(|(a, b)| json!([a, b])).collect());
        }
    }
    let s: Storm = match serde_json::from_value(v) {
        Ok(s) => s,
        Err(e) => return bad(&format!("invalid storm: {e}")),
    };
    let sev = weights(&s.severities);
    let states = weights(&s.states);
    let started = Instant::now();
    let mut first = Value::Null;
    let mut last = Value::Null;
    let mut by_severity: Map<String, Value> = Map::new();
    for i in 0..s.count {
        if let Some(offset) = (i * 1_000_000).checked_div(s.rate) {
            let due = started + Duration::from_micros(offset);
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        let mut fields = s.fields.clone();
        if let Some(x) = pick(&sev, i) {
            fields.insert("severity".into(), json!(x));
        }
        // OK alerts are created already cleared, whatever the state mix says.
        if fields.get("severity") != Some(&json!("OK")) {
            if let Some(x) = pick(&states, i) {
                fields.insert("alertState".into(), json!(x));
            }
        }
        let a = c.ov.raise_alert(&fields);
        let key = a["severity"].as_str().unwrap_or("?").to_string();
        let n = by_severity.get(&key).and_then(Value::as_u64).unwrap_or(0) + 1;
        by_severity.insert(key, json!(n));
        if i == 0 {
            first = a["uri"].clone();
        }
        last = a["uri"].clone();
        if i % 512 == 511 {
            tokio::task::yield_now().await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Json(json!({
        "raised": s.count, "firstUri": first, "lastUri": last,
        "elapsedMs": (secs * 1000.0).round(),
        "perSecond": if secs > 0.0 { (s.count as f64 / secs).round() } else { 0.0 },
        "bySeverity": by_severity,
    }))
    .into_response()
}

async fn expire(State(c): State<Arc<Control>>) -> Response {
    Json(json!({"expired": c.ov.expire_sessions()})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChurnReq {
    /// Active alerts of each served page the system clears right after serving it.
    clear_served: usize,
    /// For how many pages (0: off).
    pages: usize,
}

/// `POST /sim/faults/churn {"clearServed": 100, "pages": 10}`: the data changes under a client
/// that pages `GET /rest/alerts`.
async fn set_churn(State(c): State<Arc<Control>>, Json(r): Json<ChurnReq>) -> Response {
    c.ov.set_churn(crate::ov::Churn {
        clear_served: r.clear_served,
        pages: r.pages,
    });
    Json(json!({"clearServed": r.clear_served, "pages": r.pages})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RaceReq {
    /// How many alert `PUT`s the change races.
    puts: usize,
    /// What the system changes on the alert first (any fields; `{}` bumps its eTag only).
    #[serde(default)]
    changes: Map<String, Value>,
    /// Only writes to this alert (`/rest/alerts/ID` or `ID`); all alerts when absent.
    #[serde(default)]
    alert: Option<String>,
}

/// `POST /sim/faults/race {"puts": 1, "changes": {"alertState": "Cleared"}, "alert": URI}`.
async fn set_race(State(c): State<Arc<Control>>, Json(r): Json<RaceReq>) -> Response {
    let puts = r.puts;
    let alert = match r
        .alert
        .as_deref()
        .map(|a| a.rsplit('/').next().unwrap_or(a).parse::<u64>())
    {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return bad("alert must be an alert's uri or id"),
    };
    c.ov.set_race(crate::ov::Race {
        puts,
        changes: r.changes.clone(),
        alert,
    });
    Json(json!({"puts": puts, "changes": r.changes, "alert": alert})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockReq {
    /// How far the appliance's clock is off ours, in milliseconds (negative: behind).
    offset_ms: i64,
}

/// `POST /sim/clock {"offsetMs": -900000}`: the appliance's clock runs 15 minutes behind ours.
async fn set_clock(State(c): State<Arc<Control>>, Json(r): Json<ClockReq>) -> Response {
    c.ov.clock.set_offset_ms(r.offset_ms);
    get_clock(State(c)).await
}

async fn get_clock(State(c): State<Arc<Control>>) -> Response {
    Json(json!({"offsetMs": c.ov.clock.offset_ms(), "now": c.ov.clock.now_ms()})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultReq {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    html: bool,
    /// Only calls with this HTTP method (e.g. PUT) get the fault; default all.
    #[serde(default)]
    method: Option<String>,
}

async fn set_fault(State(c): State<Arc<Control>>, body: Bytes) -> Response {
    let f: FaultReq = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return bad(&format!("invalid fault: {e}")),
    };
    let until = f
        .seconds
        .filter(|s| *s > 0.0)
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    c.ov.set_fault(RestFault {
        status: f.status,
        html: f.html,
        latency: Duration::from_millis(f.latency_ms),
        until,
        method: f.method.as_ref().map(|m| m.to_ascii_uppercase()),
    });
    Json(json!({"status": f.status, "seconds": f.seconds, "latencyMs": f.latency_ms, "html": f.html, "method": f.method}))
        .into_response()
}

async fn clear_fault(State(c): State<Arc<Control>>) -> Response {
    c.ov.set_fault(RestFault::default());
    Json(json!({"cleared": true})).into_response()
}

async fn restart_broker(State(c): State<Arc<Control>>) -> Response {
    let Some(b) = c.ov.broker.clone() else {
        return ov_error(
            StatusCode::CONFLICT,
            "SIM_NO_BROKER",
            "this simulator runs without a broker",
            &[],
        );
    };
    let started = Instant::now();
    if let Err(e) = b.restart().await {
        return ov_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SIM_BROKER_FAILED",
            &e.to_string(),
            &[],
        );
    }
    let published = c.ov.bus.wait_connected(Duration::from_secs(30)).await;
    Json(json!({"restarted": true, "publisherConnected": published,
                "elapsedMs": started.elapsed().as_millis() as u64}))
    .into_response()
}

async fn regenerate(State(c): State<Arc<Control>>, RawQuery(q): RawQuery) -> Response {
    let keep_rest = q
        .as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "keepRestCertificate" && v == "true")
        })
        .unwrap_or(false);
    match (c.regenerate)(keep_rest).await {
        Ok(()) => {
            Json(json!({"regenerated": true, "generation": c.ov.pki().generation})).into_response()
        }
        Err(e) => ov_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SIM_REGENERATE_FAILED",
            &e,
            &[],
        ),
    }
}

/// `POST /sim/publish?routingKey=K[&exchange=scmb|msmb]`: the body, byte for byte, with any
/// routing key. `routingKey` is form-decoded to raw bytes (`%FF` is the byte 0xFF), or the key
/// is given as `routingKeyHex=...`. A UTF-8 key goes out through the publisher like every other
/// message (in order with them); a key that is not UTF-8 through a connection of its own
/// ([`crate::rawamqp`]), answered once the broker has confirmed it.
async fn publish_raw(
    State(c): State<Arc<Control>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let pairs = crate::rawamqp::query_bytes(q.as_deref().unwrap_or(""));
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let key: Vec<u8> = match (get("routingKey"), get("routingKeyHex")) {
        (Some(_), Some(_)) => return bad("give routingKey or routingKeyHex, not both"),
        (Some(k), None) => k,
        (None, Some(h)) => match crate::rawamqp::from_hex(&String::from_utf8_lossy(&h)) {
            Ok(k) => k,
            Err(e) => return bad(&format!("routingKeyHex {e}")),
        },
        (None, None) => {
            return bad("routingKey (or routingKeyHex) is required, e.g. /sim/publish?routingKey=scmb.alerts.Created./rest/alerts/1")
        }
    };
    if key.len() > 255 {
        return bad(&format!(
            "a routing key has at most 255 bytes, this one {}",
            key.len()
        ));
    }
    let exchange = match get("exchange").as_deref() {
        None | Some(b"scmb") => "scmb",
        Some(b"msmb") => "msmb",
        Some(x) => {
            return bad(&format!(
                "unknown exchange {}: use scmb or msmb",
                String::from_utf8_lossy(x)
            ))
        }
    };
    let n = body.len();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let key = match String::from_utf8(key) {
        Ok(k) => {
            c.ov.bus.publish(exchange, k.clone(), body.to_vec());
            return Json(
                json!({"published": n, "routingKey": k, "routingKeyHex": hex,
                               "exchange": exchange}),
            )
            .into_response();
        }
        Err(e) => e.into_bytes(),
    };
    let Some(broker) = c.ov.broker.clone() else {
        return ov_error(
            StatusCode::CONFLICT,
            "SIM_NO_BROKER",
            "this simulator runs without a broker",
            &[],
        );
    };
    let sent = async {
        let mut conn = crate::rawamqp::RawConnection::open(&broker.admin_target()).await?;
        let r = conn.publish(exchange, &key, &body).await;
        conn.close().await;
        r
    };
    match sent.await {
        Ok(()) => Json(
            json!({"published": n, "routingKey": String::from_utf8_lossy(&key),
                              "routingKeyHex": hex, "exchange": exchange, "confirmed": true}),
        )
        .into_response(),
        Err(e) => ov_error(
            StatusCode::BAD_GATEWAY,
            "SIM_PUBLISH_FAILED",
            &format!("publishing a routing key that is not UTF-8 failed: {e}"),
            &[],
        ),
    }
}

async fn publish_resource(State(c): State<Arc<Control>>, body: Bytes) -> Response {
    let m = match object(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let category = m
        .get("category")
        .and_then(Value::as_str)
        .unwrap_or("server-hardware")
        .to_string();
    let change = m
        .get("changeType")
        .and_then(Value::as_str)
        .unwrap_or("Updated")
        .to_string();
    if !["Created", "Updated", "Deleted"].contains(&change.as_str()) {
        return bad("changeType must be Created, Updated or Deleted");
    }
    let uri = m
        .get("uri")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("/rest/{category}/30373737-3237-4D32-3230-313530314752"));
    let ts = c.ov.clock.next();
    let mut resource = m.get("resource").cloned().unwrap_or_else(|| {
        json!({"type": "server-hardware-9", "name": "Encl1, bay 1", "status": "Critical",
               "state": "Monitored", "powerState": "On"})
    });
    if let Some(obj) = resource.as_object_mut() {
        obj.insert("uri".into(), json!(uri));
        obj.insert("category".into(), json!(category));
        obj.entry("eTag").or_insert(json!(ts));
        obj.entry("modified").or_insert(json!(ts));
    }
    let key = if category == "tasks" {
        "scmb.tasks".to_string()
    } else {
        format!("scmb.{category}.{change}.{uri}")
    };
    let envelope = json!({
        "resourceUri": uri, "changeType": change,
        "newState": m.get("newState").cloned().unwrap_or(resource.get("state").cloned().unwrap_or(Value::Null)),
        "newSubState": null, "eTag": resource["eTag"], "timestamp": c.ov.clock.now_ms(),
        "resource": resource, "associatedTask": null, "userInitiatedTask": false,
        "changedAttributes": m.get("changedAttributes").cloned().unwrap_or(json!([])), "data": null,
    });
    c.ov.bus.publish(
        "scmb",
        key.clone(),
        serde_json::to_vec(&envelope).unwrap_or_default(),
    );
    Json(json!({"routingKey": key, "message": envelope})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_weights_give_exact_proportions() {
        let w = vec![("Critical".to_string(), 1), ("Warning".to_string(), 9)];
        let crit = (0..1000)
            .filter(|i| pick(&w, *i) == Some("Critical"))
            .count();
        assert_eq!(crit, 100);
        assert_eq!(pick(&[], 3), None);
    }
}
