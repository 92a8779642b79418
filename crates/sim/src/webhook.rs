//! A webhook receiver: records every request it gets (method, path, query, headers, body)
//! and answers 200, for tests and demos of scmb's webhook sink. `GET /sim/requests` reads
//! them back, oldest first; `POST /sim/reset` forgets them and clears the faults.
//!
//! Faults (`POST /sim/faults`): those of every HTTP simulator ([`crate::httpsim`]: latency,
//! hangs, an error rate, an HTML page, an outage that closes the port; such calls are not
//! recorded, as a proxy before the receiver would answer them), and its own, applied after
//! the request is recorded: `statusNext` (the statuses of the next answers, one each, e.g.
//! `[503, 503]`; then 200 again) with `retryAfterS` on those answers. docs/FIDELITY.md says
//! what this is (any receiver; no validation of its own).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::httpsim::{self, http_faults, HttpSim, SimState};

/// Settings of the webhook receiver (none yet).
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {}

http_faults! {
    /// Faults, set through `POST /sim/faults` (every key optional; `{}` clears): those of
    /// every HTTP simulator, and:
    pub struct WebhookFaults {
        /// The statuses of the next answers, one per request (recorded first), e.g.
        /// `[503, 400]`; then 200 again.
        #[serde(default)]
        pub status_next: Vec<u16>,
        /// `Retry-After` (seconds) on the answers of `statusNext`.
        #[serde(default)]
        pub retry_after_s: Option<u64>,
    }
}

/// One request as received, with the status it was answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case; a repeated header's values joined with ", ".
    pub headers: Map<String, Value>,
    /// The body as text (lossy UTF-8).
    pub body: String,
    /// The body as JSON, when it is.
    pub json: Option<Value>,
    pub status: u16,
}

/// What the receiver holds.
#[derive(Debug, Default)]
pub struct WebhookData {
    requests: Vec<Received>,
}

/// The webhook receiver.
pub type WebhookState = SimState<WebhookData>;

impl HttpSim for WebhookData {
    type Config = WebhookConfig;
    type Faults = WebhookFaults;
    type Rates = ();
    const ERROR_STATUS: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;

    /// Any method on any path but `/sim/...` is a webhook call.
    fn router(state: Arc<WebhookState>) -> Router {
        let api = Router::new()
            .route("/", any(receive))
            .route("/{*path}", any(receive))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                httpsim::middleware::<WebhookData>,
            ));
        Router::new()
            .route("/sim/requests", get(sim_requests))
            .merge(httpsim::control_routes::<WebhookData>())
            .merge(httpsim::reset_route::<WebhookData>())
            .merge(api)
            .with_state(state)
    }

    /// The requests, as incidents are for the other simulators.
    fn incidents(&self) -> Vec<Value> {
        self.requests
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect()
    }

    fn html_fault() -> Response {
        httpsim::html(
            StatusCode::BAD_GATEWAY,
            "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
        )
    }

    fn injected_error(status: StatusCode) -> Response {
        (status, Json(json!({"error": "injected fault"}))).into_response()
    }

    fn bad_request(message: &str) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
    }

    fn stats(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("received".into(), json!(self.requests.len()));
        m
    }

    fn forget(st: &WebhookState) {
        st.lock().requests.clear();
    }
}

impl SimState<WebhookData> {
    pub fn new(cfg: WebhookConfig) -> Arc<WebhookState> {
        SimState::with_data(cfg, WebhookData::default())
    }

    /// Every request received (and recorded), oldest first.
    pub fn requests(&self) -> Vec<Received> {
        self.lock().requests.clone()
    }
}

async fn receive(
    State(st): State<Arc<WebhookState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (status, retry_after) = st.with_faults(|f, _| {
        if f.status_next.is_empty() {
            (200, None)
        } else {
            (f.status_next.remove(0), f.retry_after_s)
        }
    });
    let mut hs = Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        hs.insert(name.as_str().to_string(), json!(values.join(", ")));
    }
    {
        let mut d = st.lock();
        let seq = d.requests.len() as u64 + 1;
        d.requests.push(Received {
            seq,
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: hs,
            body: String::from_utf8_lossy(&body).into_owned(),
            json: serde_json::from_slice(&body).ok(),
            status,
        });
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut r = if code.is_success() {
        (code, Json(json!({"ok": true}))).into_response()
    } else {
        (
            code,
            Json(json!({"error": format!("status {status} (injected)")})),
        )
            .into_response()
    };
    if let (false, Some(s)) = (code.is_success(), retry_after) {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

async fn sim_requests(State(st): State<Arc<WebhookState>>, _req: Request) -> Response {
    Json(json!({ "requests": st.requests() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_requests_and_answers_the_next_statuses() {
        let st = WebhookState::new(WebhookConfig::default());
        let served = crate::testkit::serve(st.clone()).await;
        st.set_faults(WebhookFaults {
            status_next: vec![503],
            retry_after_s: Some(2),
            ..WebhookFaults::default()
        });
        let c = crate::client::http_client(None).expect("client");
        let r = c
            .post(format!("{}/hook/a?x=1", served.url))
            .header("X-Test", "yes")
            .body("{\"a\":1}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("2")
        );
        let r = c
            .post(format!("{}/hook/a", served.url))
            .body("not json")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 200);
        let got = st.requests();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].path, "/hook/a");
        assert_eq!(got[0].query.as_deref(), Some("x=1"));
        assert_eq!(got[0].headers["x-test"], "yes");
        assert_eq!(got[0].json, Some(json!({"a": 1})));
        assert_eq!((got[0].status, got[1].status), (503, 200));
        assert_eq!(got[1].json, None);
        let listed: Value = c
            .get(format!("{}/sim/requests", served.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(listed["requests"].as_array().map(Vec::len), Some(2));
    }
}
