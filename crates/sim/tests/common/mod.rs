//! Helpers shared by the tests of the HTTP simulators (Service Manager, ServiceNow, PagerDuty):
//! reading answers, and driving the control routes every one of them has (`/sim/faults`,
//! `/sim/stats`), which need no auth.

// Each test binary uses some of these.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// A plain-HTTP client (the workspace's reqwest has no default TLS provider).
pub fn http() -> reqwest::Client {
    scmb_sim::client::http_client(None).expect("http client")
}

/// An answer, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body as JSON (`null` when it is not JSON).
    pub body: Value,
}

impl Resp {
    /// A header's value (empty when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` and reads its answer (panics when there is none).
pub async fn send(req: RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Sends `req` with a body that is not JSON (`{not json`, as `application/json`).
pub async fn not_json(req: RequestBuilder) -> Resp {
    send(
        req.header("content-type", "application/json")
            .body("{not json"),
    )
    .await
}

/// What a client sees of a call (status, content type, body), or why it saw nothing (its
/// timeout, a refused connection).
pub async fn raw(req: RequestBuilder) -> Result<(StatusCode, String, String), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, ct, resp.text().await?))
}

/// `POST /sim/faults` on the simulator at `base`, which must take them; the faults as set.
pub async fn set_faults(base: &str, faults: Value) -> Value {
    let r = send(http().post(format!("{base}/sim/faults")).json(&faults)).await;
    assert_eq!(r.status, StatusCode::OK, "{faults}: {}", r.text);
    r.body["faults"].clone()
}

/// `GET /sim/stats`.
pub async fn stats(base: &str) -> Value {
    send(http().get(format!("{base}/sim/stats"))).await.body
}

/// Waits (10 s at most) until the simulator has no call in flight; its stats then.
pub async fn until_idle(base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(base).await;
        if s["inFlight"] == 0 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The raw answer of the next create, `create`, given `createGarbage: garbage` (that create
/// only); it must come within 5 s.
pub async fn garbage_create(
    base: &str,
    garbage: &str,
    create: RequestBuilder,
) -> (StatusCode, String, String) {
    set_faults(
        base,
        json!({"createGarbage": garbage, "createFaultCount": 1}),
    )
    .await;
    raw(create.timeout(Duration::from_secs(5)))
        .await
        .expect("an answer")
}

/// Makes `create` given `createLateMs` of an hour (that create only): it acts, and the client's
/// timeout (500 ms) fires before an answer comes.
pub async fn abandoned_create(base: &str, create: RequestBuilder) {
    set_faults(
        base,
        json!({"createLateMs": 3_600_000, "createFaultCount": 1}),
    )
    .await;
    let r = raw(create.timeout(Duration::from_millis(500))).await;
    assert!(
        r.is_err_and(|e| e.is_timeout()),
        "the client's timeout fires"
    );
}

/// An outage of 700 ms: the port is closed (connections refused), then open again.
pub async fn outage(base: &str) {
    set_faults(base, json!({"outageMs": 700})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let down = http()
        .get(format!("{base}/sim/stats"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(down.is_err_and(|e| e.is_connect()), "connection refused");
    tokio::time::sleep(Duration::from_millis(900)).await;
}
