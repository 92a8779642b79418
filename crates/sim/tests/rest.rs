//! The OneView REST simulator and the Service Manager simulator pinned to SPEC.md, over real
//! HTTPS/HTTP sockets (no broker needed: these run against REST-only simulators).

mod common;

use std::time::Duration;

use common::{garbage_create, raw, set_faults};
use reqwest::{Method, StatusCode};
use scmb_sim::testkit::temp_dir;
use scmb_sim::{Sim, SimConfig};
use serde_json::{json, Value};

struct Rest {
    http: reqwest::Client,
    base: String,
    version: u32,
    session: Option<String>,
}

struct Resp {
    status: StatusCode,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Rest {
    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("X-API-Version", self.version.to_string());
        if let Some(s) = &self.session {
            r = r.header("auth", s);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            body,
            headers,
        }
    }
    async fn get(&self, path: &str) -> Resp {
        self.req(Method::GET, path, None).await
    }
    async fn login(&mut self, user: &str, pass: &str) -> Resp {
        let r = self
            .req(
                Method::POST,
                "/rest/login-sessions",
                Some(json!({"userName": user, "password": pass, "loginMsgAck": true})),
            )
            .await;
        if r.status == StatusCode::OK {
            self.session = r.body["sessionID"].as_str().map(str::to_string);
        }
        r
    }
}

async fn rest_sim(tweak: impl FnOnce(&mut SimConfig)) -> (Sim, Rest) {
    let mut cfg = SimConfig::new(temp_dir("rest"));
    cfg.broker = false;
    cfg.rest_port = 0;
    cfg.sm_port = Some(0);
    cfg.ov.task_duration = Duration::from_millis(300);
    tweak(&mut cfg);
    let sim = Sim::start(cfg).await.expect("sim starts");
    let http = scmb_sim::client::http_client(Some(std::path::Path::new(
        sim.info["caCert"].as_str().expect("ca"),
    )))
    .expect("client");
    let rest = Rest {
        http,
        base: sim.info["restUrl"].as_str().expect("url").to_string(),
        version: 4200,
        session: None,
    };
    (sim, rest)
}

fn assert_error_shape(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["errorCode"], code, "{}", r.body);
    assert!(r.body["message"].is_string(), "{}", r.body);
    assert!(r.body["recommendedActions"].is_array(), "{}", r.body);
    assert!(r.body.get("nestedErrors").is_some() && r.body.get("errorSource").is_some());
}

#[tokio::test]
async fn version_eula_and_login_follow_the_spec() {
    let (sim, mut rest) = rest_sim(|c| c.ov.current_version = 600).await;
    // /rest/version needs neither session nor version header.
    let r = rest
        .http
        .get(format!("{}/rest/version", rest.base))
        .send()
        .await
        .expect("get");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v, json!({"currentVersion": 600, "minimumVersion": 120}));

    rest.version = 800;
    assert_error_shape(
        &rest.get("/rest/appliance/eula/status").await,
        StatusCode::PRECONDITION_FAILED,
        "INVALID_API_VERSION",
    );
    rest.version = 100;
    assert_error_shape(
        &rest.get("/rest/appliance/eula/status").await,
        StatusCode::PRECONDITION_FAILED,
        "INVALID_API_VERSION",
    );
    rest.version = 600;

    assert_eq!(
        rest.get("/rest/appliance/eula/status").await.body,
        json!(true)
    );
    let r = rest
        .req(
            Method::POST,
            "/rest/appliance/eula/save",
            Some(json!({"supportAccess": "no"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        rest.get("/rest/appliance/eula/status").await.body,
        json!(false)
    );

    assert_error_shape(
        &rest.login("Administrator", "wrong").await,
        StatusCode::UNAUTHORIZED,
        "AUTHN_AUTH_FAIL",
    );
    let r = rest
        .req(Method::POST, "/rest/login-sessions", Some(json!({"userName": "Administrator", "password": "admin123", "authLoginDomain": "corp"})))
        .await;
    assert_error_shape(
        &r,
        StatusCode::UNAUTHORIZED,
        "AUTHN_AUTH_FAIL_LOGINDOMAINNOTFOUND",
    );
    // Unauthenticated calls are refused.
    assert_error_shape(
        &rest.get("/rest/alerts").await,
        StatusCode::UNAUTHORIZED,
        "AUTHORIZATION",
    );
    let r = rest.login("Administrator", "admin123").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["sessionID"].as_str().is_some_and(|s| s.len() >= 20));
    assert!(r.body.get("partnerData").is_some());
    assert_eq!(rest.get("/rest/alerts").await.status, StatusCode::OK);
    // Logout kills the session.
    assert_eq!(
        rest.req(Method::DELETE, "/rest/login-sessions", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_error_shape(
        &rest.get("/rest/alerts").await,
        StatusCode::UNAUTHORIZED,
        "AUTHORIZATION",
    );
    sim.stop().await;
}

#[tokio::test]
async fn login_banner_demands_login_msg_ack() {
    let (sim, rest) = rest_sim(|c| c.ov.login_banner = Some("Authorized use only".into())).await;
    let r = rest
        .req(
            Method::POST,
            "/rest/login-sessions",
            Some(json!({"userName": "Administrator", "password": "admin123"})),
        )
        .await;
    assert_error_shape(
        &r,
        StatusCode::BAD_REQUEST,
        "AUTHN_LOGIN_MESSAGE_ACK_REQUIRED",
    );
    assert!(r.body["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Acknowledgment of login message is required")));
    let r = rest
        .req(
            Method::POST,
            "/rest/login-sessions",
            Some(json!({"userName": "Administrator", "password": "admin123", "loginMsgAck": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn sessions_expire_when_idle_and_on_demand() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let r = rest
        .req(
            Method::POST,
            "/rest/sessions/idle-timeout",
            Some(json!({"idleTimeout": 300})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        rest.get("/rest/sessions/idle-timeout").await.body["idleTimeout"],
        300
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_error_shape(
        &rest.get("/rest/alerts").await,
        StatusCode::UNAUTHORIZED,
        "AUTHORIZATION",
    );
    // Re-login works; then the control surface expires every session.
    rest.login("Administrator", "admin123").await;
    let r = rest
        .req(
            Method::POST,
            "/rest/sessions/idle-timeout",
            Some(json!({"idleTimeout": 86_400_000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(rest.get("/rest/alerts").await.status, StatusCode::OK);
    let r = rest.req(Method::POST, "/sim/sessions/expire", None).await;
    assert_eq!(r.body["expired"], 1);
    assert_error_shape(
        &rest.get("/rest/alerts").await,
        StatusCode::UNAUTHORIZED,
        "AUTHORIZATION",
    );
    sim.stop().await;
}

#[tokio::test]
async fn ca_endpoint_has_both_forms_by_api_version() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let ca_pem = std::fs::read_to_string(sim.info["caCert"].as_str().expect("ca")).expect("read");
    rest.version = 500;
    let r = rest.get("/rest/certificates/ca").await;
    assert_eq!(r.body, json!(ca_pem), "API ≤ 500 answers a JSON string");
    rest.version = 600;
    let r = rest
        .get("/rest/certificates/ca?filter=certType:INTERNAL")
        .await;
    assert_eq!(
        r.body["members"][0]["certificateDetails"]["base64Data"],
        json!(ca_pem)
    );
    assert_eq!(r.body["members"][0]["certType"], "INTERNAL");
    // HPE's own SCMB example reads certificateDetails.aliasName.
    assert_eq!(
        r.body["members"][0]["certificateDetails"]["aliasName"],
        "localhostSelfSignedCertificate"
    );
    let one = rest
        .get(r.body["members"][0]["uri"].as_str().expect("member uri"))
        .await;
    assert_eq!(one.body["certificateDetails"]["base64Data"], json!(ca_pem));
    let r = rest
        .get("/rest/certificates/ca?filter=certType:EXTERNAL")
        .await;
    assert_eq!(r.body["members"], json!([]));
    // The header form.
    let resp = rest
        .http
        .get(format!("{}/rest/certificates/ca", rest.base))
        .header("X-API-Version", "4200")
        .header("auth", rest.session.clone().expect("session"))
        .header("If-Req-CertDetails", "true")
        .send()
        .await
        .expect("get");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(
        v["members"][0]["certificateDetails"]["base64Data"],
        json!(ca_pem)
    );
    // Without either, the collection has no details (clients that read a string break here).
    let r = rest.get("/rest/certificates/ca").await;
    assert!(r.body["members"][0].get("certificateDetails").is_none());
    assert!(r.body.is_object());
    sim.stop().await;
}

#[tokio::test]
async fn keypair_is_404_until_generated_then_409_on_a_second_generation() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let r = rest
        .get("/rest/certificates/client/rabbitmq/keypair/default")
        .await;
    assert_error_shape(&r, StatusCode::NOT_FOUND, "RABBITMQ_CLIENTCERT_NOT_FOUND");
    assert_eq!(
        r.body["message"],
        "Certificate/Private key file is missing."
    );
    let body = json!({"commonName": "default", "type": "RabbitMqClientCertV2"});
    let r = rest
        .req(
            Method::POST,
            "/rest/certificates/client/rabbitmq",
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string();
    assert!(location.starts_with("/rest/tasks/"));
    assert!(
        is_guid(location.trim_start_matches("/rest/tasks/")),
        "task ids are GUIDs like an appliance's: {location}"
    );
    assert_eq!(r.body["uri"], json!(location));
    // While the task runs, a second request conflicts too.
    let r2 = rest
        .req(
            Method::POST,
            "/rest/certificates/client/rabbitmq",
            Some(body.clone()),
        )
        .await;
    assert_error_shape(&r2, StatusCode::CONFLICT, "RABBITMQ_CLIENTCERT_CONFLICT");
    let mut state = String::new();
    for _ in 0..50 {
        let t = rest.get(&location).await;
        state = t.body["taskState"].as_str().unwrap_or("").to_string();
        assert_eq!(
            t.headers.get("etag").and_then(|v| v.to_str().ok()),
            t.body["eTag"].as_str(),
            "a task is a single resource: its eTag is a header too"
        );
        if state == "Completed" {
            assert_eq!(t.body["percentComplete"], 100);
            break;
        }
        assert_eq!(state, "Running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "Completed");
    let r = rest
        .get("/rest/certificates/client/rabbitmq/keypair/default")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cert = r.body["base64SSLCertData"].as_str().expect("cert");
    let key = r.body["base64SSLKeyData"].as_str().expect("key");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        key.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "PKCS#1 like an appliance"
    );
    let r = rest
        .req(
            Method::POST,
            "/rest/certificates/client/rabbitmq",
            Some(body),
        )
        .await;
    assert_error_shape(&r, StatusCode::CONFLICT, "RABBITMQ_CLIENTCERT_CONFLICT");
    sim.stop().await;
}

#[tokio::test]
async fn alerts_page_filter_and_sort_like_an_appliance() {
    let (sim, mut rest) = rest_sim(|c| c.ov.page_limit = 7).await;
    rest.login("Administrator", "admin123").await;
    for i in 0..20 {
        let sev = if i % 4 == 0 { "Critical" } else { "Warning" };
        let state = if i % 5 == 0 { "Locked" } else { "Active" };
        let r = rest
            .req(Method::POST, "/sim/alerts", Some(json!({"severity": sev, "alertState": state, "description": format!("alert {i}")})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    // count=-1 still pages; follow nextPageUri until it is null.
    let mut uri = "/rest/alerts?count=-1".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = rest.get(&uri).await;
        assert_eq!(r.body["total"], 20);
        assert!(r.body["count"].as_u64().unwrap_or(0) <= 7);
        for m in r.body["members"].as_array().expect("members") {
            seen.push(m["uri"].as_str().expect("uri").to_string());
        }
        pages += 1;
        match r.body["nextPageUri"].as_str() {
            Some(n) if n != r.body["uri"] => uri = n.to_string(),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);

    let count = |r: &Resp| r.body["total"].as_u64().expect("total");
    let q = |f: &str| format!("/rest/alerts?filter={}", urlencode(f));
    assert_eq!(count(&rest.get(&q("\"alertState='Active'\"")).await), 16);
    assert_eq!(
        count(
            &rest
                .get(&q("alertState='Active' AND severity='Critical'"))
                .await
        ),
        4
    );
    assert_eq!(
        count(
            &rest
                .get(&q("alertState='Locked' and severity='Critical'"))
                .await
        ),
        1
    );
    assert_eq!(count(&rest.get(&q("alertState EQ 'Locked'")).await), 4);
    assert_eq!(
        count(&rest.get(&q("created GT '2000-01-01T00:00:00.000Z'")).await),
        20
    );
    assert_eq!(
        count(&rest.get(&q("created LT '2000-01-01T00:00:00.000Z'")).await),
        0
    );
    let both = format!(
        "/rest/alerts?filter={}&filter={}",
        urlencode("severity='Critical'"),
        urlencode("alertState='Locked'")
    );
    assert_eq!(count(&rest.get(&both).await), 1);
    let bad = rest.get(&q("alertState=")).await;
    assert_error_shape(&bad, StatusCode::BAD_REQUEST, "INVALID_FILTER");

    let r = rest
        .get("/rest/alerts?sort=description:ascending&count=3")
        .await;
    let d: Vec<&str> = r.body["members"]
        .as_array()
        .expect("m")
        .iter()
        .map(|m| m["description"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(d, vec!["alert 0", "alert 1", "alert 10"]);
    let r = rest
        .get("/rest/alerts?sort=created:descending&count=1")
        .await;
    assert_eq!(r.body["members"][0]["description"], "alert 19");
    sim.stop().await;
}

/// `145F808A-A8DD-4E1B-8C86-C2379C97B3B2`: upper-case hex in groups of 8-4-4-4-12.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
        })
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn alert_put_takes_only_allowed_keys_checks_etags_and_appends_notes() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let a = rest
        .req(
            Method::POST,
            "/sim/alerts",
            Some(json!({"description": null})),
        )
        .await
        .body;
    let uri = a["uri"].as_str().expect("uri").to_string();
    assert_eq!(a["description"], Value::Null);
    let got = rest.get(&uri).await;
    assert_eq!(got.body, a);
    assert_error_shape(
        &rest.get("/rest/alerts/999999").await,
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
    );

    let r = rest
        .req(
            Method::PUT,
            &uri,
            Some(json!({"severity": "OK", "eTag": a["eTag"]})),
        )
        .await;
    assert_error_shape(&r, StatusCode::BAD_REQUEST, "INVALID_ALERT_UPDATE");
    let r = rest
        .req(
            Method::PUT,
            &uri,
            Some(json!({"notes": "x", "eTag": "1999-01-01T00:00:00.000Z"})),
        )
        .await;
    assert_error_shape(&r, StatusCode::PRECONDITION_FAILED, "ETAG_MISMATCH");

    let r = rest
        .req(
            Method::PUT,
            &uri,
            Some(json!({"notes": "Case IM10001", "eTag": a["eTag"], "uri": uri})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let log = r.body["changeLog"].as_array().expect("changeLog");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["notes"], "Case IM10001");
    assert_eq!(log[0]["username"], "Administrator");
    assert_eq!(log[0]["userEntered"], true);
    assert!(log[0]["uri"]
        .as_str()
        .is_some_and(|u| u.starts_with("/rest/alerts/AlertChangeLog/")));
    assert_ne!(r.body["eTag"], a["eTag"], "every change bumps the eTag");
    assert_eq!(
        r.body["alertState"], "Active",
        "a notes PUT changes nothing else"
    );
    assert_eq!(r.body["assignedToUser"], Value::Null);
    // The old eTag is now stale; If-Match works the same way.
    let stale = rest
        .req(
            Method::PUT,
            &uri,
            Some(json!({"notes": "again", "eTag": a["eTag"]})),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let resp = rest
        .http
        .put(format!("{}{}", rest.base, uri))
        .header("X-API-Version", "4200")
        .header("auth", rest.session.clone().expect("s"))
        .header("If-Match", a["eTag"].as_str().expect("etag"))
        .json(&json!({"notes": "again"}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    // A second note appends.
    let r = rest
        .req(
            Method::PUT,
            &uri,
            Some(json!({"notes": "second", "eTag": r.body["eTag"]})),
        )
        .await;
    assert_eq!(r.body["changeLog"].as_array().map(Vec::len), Some(2));
    // Clear by PUT, and a locked alert cannot be cleared.
    let r = rest
        .req(Method::PUT, &uri, Some(json!({"alertState": "Cleared"})))
        .await;
    assert_eq!(r.body["alertState"], "Cleared");
    assert_eq!(r.body["clearedByUser"], "Administrator");
    let l = rest
        .req(
            Method::POST,
            "/sim/alerts",
            Some(json!({"alertState": "Locked"})),
        )
        .await
        .body;
    let r = rest
        .req(
            Method::PUT,
            l["uri"].as_str().expect("uri"),
            Some(json!({"alertState": "Cleared"})),
        )
        .await;
    assert_error_shape(&r, StatusCode::BAD_REQUEST, "ALERT_LOCKED");
    // Delete, then 404.
    assert_eq!(
        rest.req(Method::DELETE, &uri, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(rest.get(&uri).await.status, StatusCode::NOT_FOUND);
    // OK alerts are created already cleared.
    let ok = rest
        .req(Method::POST, "/sim/alerts", Some(json!({"severity": "OK"})))
        .await
        .body;
    assert_eq!(ok["alertState"], "Cleared");
    assert_eq!(ok["clearedByUser"], "System", "the system cleared it");
    assert_eq!(ok["clearedTime"], ok["created"]);
    sim.stop().await;
}

#[tokio::test]
async fn sdk_session_reuse_bulk_delete_and_error_bodies_work() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    // PUT /rest/login-sessions re-validates a session (the SDKs' sessionID reuse).
    let r = rest.req(Method::PUT, "/rest/login-sessions", None).await;
    assert_eq!(r.body["sessionID"], json!(rest.session.clone()));
    for sev in ["OK", "Critical", "OK"] {
        rest.req(Method::POST, "/sim/alerts", Some(json!({"severity": sev})))
            .await;
    }
    let r = rest
        .req(
            Method::DELETE,
            &format!("/rest/alerts?filter={}", urlencode("alertState='Cleared'")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        rest.get("/rest/alerts").await.body["total"],
        1,
        "only the cleared alerts went"
    );
    // Unsupported methods and unknown paths still answer a OneView error body.
    assert_error_shape(
        &rest.req(Method::PATCH, "/rest/alerts", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    );
    let r = rest.get("/rest/nothing-here").await;
    assert_error_shape(&r, StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    assert!(r.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("/rest/nothing-here")));
    sim.stop().await;
}

#[tokio::test]
async fn rest_faults_answer_503_json_or_html_then_recover() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let r = rest
        .req(
            Method::POST,
            "/sim/faults/rest",
            Some(json!({"status": 503, "seconds": 0.4})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_error_shape(
        &rest.get("/rest/alerts").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rest.get("/rest/alerts").await.status, StatusCode::OK);
    rest.req(
        Method::POST,
        "/sim/faults/rest",
        Some(json!({"status": 503, "seconds": 30, "html": true})),
    )
    .await;
    let r = rest.get("/rest/version").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body.as_str().is_some_and(|s| s.contains("<html>")),
        "an HTML page, not JSON"
    );
    rest.req(Method::DELETE, "/sim/faults/rest", None).await;
    assert_eq!(rest.get("/rest/version").await.status, StatusCode::OK);
    sim.stop().await;
}

// ---------------- Service Manager ----------------

struct Sm {
    http: reqwest::Client,
    base: String,
}

impl Sm {
    async fn req(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = common::send(r).await;
        assert!(!r.text.is_empty(), "SM always answers a non-empty body");
        let body = match r.body {
            Value::Null => Value::String(r.text),
            json => json,
        };
        (r.status, body)
    }
}

async fn sm_sim(tweak: impl FnOnce(&mut SimConfig)) -> (Sim, Sm) {
    let (sim, _) = rest_sim(|c| {
        c.sm.users = [("falcon".to_string(), "secret".to_string())].into();
        tweak(c)
    })
    .await;
    let sm = Sm {
        http: common::http(),
        base: sim.info["smUrl"].as_str().expect("sm").to_string(),
    };
    (sim, sm)
}

const FALCON: Option<(&str, &str)> = Some(("falcon", "secret"));

fn incident(title: &str) -> Value {
    json!({"Incident": {"Title": title, "Description": "resourceName: Encl1\nDescription: PSU failed",
        "Category": "incident", "Area": "hardware", "Subarea": "hardware failure", "Impact": "4",
        "Urgency": 1, "AssignmentGroup": "Service Manager", "Service": "MyDevices"}})
}

#[tokio::test]
async fn service_manager_creates_reads_updates_resolves_and_closes_incidents() {
    let (sim, sm) = sm_sim(|_| {}).await;
    let (s, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            Some(("falcon", "bad")),
            Some(incident("t")),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_ne!(b["ReturnCode"], 0);
    assert!(b["Messages"].is_array());
    let (s, _) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            None,
            Some(incident("t")),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let (s, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(incident("OneView Alert")),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["ReturnCode"], 0);
    assert_eq!(b["Incident"]["IncidentID"], "IM10001");
    assert_eq!(b["Incident"]["Status"], "Open");
    assert_eq!(b["Incident"]["OpenedBy"], "falcon");
    assert_eq!(
        b["Incident"]["Description"],
        json!(["resourceName: Encl1", "Description: PSU failed"])
    );
    assert_eq!(
        b["Incident"]["Urgency"], "1",
        "integer urgency is stored as a string"
    );
    let (_, b2) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(incident("Other")),
        )
        .await;
    assert_eq!(b2["Incident"]["IncidentID"], "IM10002");

    // Validation names the field.
    let (s, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(json!({"Incident": {"Description": ["x"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["Messages"][0]
            .as_str()
            .is_some_and(|m| m.contains("Title")),
        "{b}"
    );
    let (s, _) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(json!({"nope": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, b) = sm
        .req(Method::GET, "/SM/9/rest/incidents/IM10001", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["Incident"]["Title"], "OneView Alert");
    assert_eq!(b["ReturnCode"], 0);
    assert_eq!(b["Messages"], json!([]), "a read answers no messages");
    let (s, b) = sm
        .req(Method::GET, "/SM/9/rest/incidents/IM99999", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_ne!(b["ReturnCode"], 0);

    let (s, b) = sm
        .req(
            Method::PUT,
            "/SM/9/rest/incidents/IM10001",
            FALCON,
            Some(json!({"Incident": {"JournalUpdates": ["first"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b2) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents/IM10001",
            FALCON,
            Some(json!({"Incident": {"JournalUpdates": "second"}})),
        )
        .await;
    assert_eq!(
        b2["Incident"]["JournalUpdates"],
        json!(["first", "second"]),
        "journal appends: {b}"
    );
    let (_, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents/IM10001/action/resolve",
            FALCON,
            Some(json!({"Incident": {"Solution": ["fixed"]}})),
        )
        .await;
    assert_eq!(b["Incident"]["Status"], "Resolved");
    let (_, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents/IM10002/action/close",
            FALCON,
            Some(json!({"Incident": {"ClosureCode": "Solved by Workaround", "Solution": ["x"]}})),
        )
        .await;
    assert_eq!(b["Incident"]["Status"], "Closed");

    // Listing: expand, condense, query, field match, paging.
    for i in 0..5 {
        sm.req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(incident(&format!("bulk {i}"))),
        )
        .await;
    }
    let (_, l) = sm
        .req(
            Method::GET,
            "/SM/9/rest/incidents?view=expand&start=1&count=3",
            FALCON,
            None,
        )
        .await;
    assert_eq!(l["@totalcount"], 7);
    assert_eq!(l["@count"], 3);
    assert_eq!(l["content"][0]["Incident"]["Title"], "OneView Alert");
    let (_, l) = sm
        .req(
            Method::GET,
            "/SM/9/rest/incidents?view=expand&start=7&count=3",
            FALCON,
            None,
        )
        .await;
    assert_eq!(l["@count"], 1);
    let (_, l) = sm
        .req(
            Method::GET,
            "/SM/9/rest/incidents?view=condense",
            FALCON,
            None,
        )
        .await;
    assert!(l["content"][0]["Incident"].get("Title").is_none());
    let q = urlencode("Title=\"OneView Alert\" and Status~=\"Closed\"");
    let (_, l) = sm
        .req(
            Method::GET,
            &format!("/SM/9/rest/incidents?view=expand&query={q}"),
            FALCON,
            None,
        )
        .await;
    assert_eq!(l["@totalcount"], 1);
    let (_, l) = sm
        .req(
            Method::GET,
            "/SM/9/rest/incidents?Title=Other&view=expand",
            FALCON,
            None,
        )
        .await;
    assert_eq!(l["content"][0]["Incident"]["IncidentID"], "IM10002");
    let (_, l) = sm
        .req(
            Method::GET,
            "/SM/9/rest/incidents?Title=none&view=expand",
            FALCON,
            None,
        )
        .await;
    assert!(l.get("content").is_none(), "content is missing when empty");
    // Read-back for tests.
    let (_, all) = sm.req(Method::GET, "/sim/incidents", None, None).await;
    assert_eq!(all["incidents"].as_array().map(Vec::len), Some(7));
    sim.stop().await;
}

#[tokio::test]
async fn service_manager_faults_are_injected_and_cleared() {
    let (sim, sm) = sm_sim(|_| {}).await;
    let set = |f: Value| set_faults(&sm.base, f);
    set(json!({"errorRate": 1.0})).await;
    let (s, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(incident("t")),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(b["ReturnCode"], 0);
    set(json!({"html": true})).await;
    let (s, b) = sm
        .req(Method::GET, "/SM/9/rest/incidents", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(b.as_str().is_some_and(|t| t.contains("<html>")));
    set(json!({"unauthorized": true})).await;
    let (s, _) = sm
        .req(Method::GET, "/SM/9/rest/incidents", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    set(json!({"latencyMs": 150})).await;
    let t = std::time::Instant::now();
    let (s, _) = sm
        .req(Method::GET, "/SM/9/rest/incidents", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "latency is added"
    );
    // A hang past the client's timeout.
    set(json!({"hangMs": 2000})).await;
    let r = sm
        .http
        .get(format!("{}/SM/9/rest/incidents", sm.base))
        .timeout(Duration::from_millis(300))
        .basic_auth("falcon", Some("secret"))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    // An outage closes the port: connection refused, then back.
    common::outage(&sm.base).await;
    let (s, _) = sm
        .req(Method::GET, "/SM/9/rest/incidents", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::OK, "back after the outage");
    let (s, _) = sm.req(Method::DELETE, "/sim/faults", None, None).await;
    assert_eq!(s, StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn service_manager_incidents_persist_across_restart() {
    let file = temp_dir("smpersist").join("incidents.json");
    let f2 = file.clone();
    let (sim, sm) = sm_sim(move |c| c.sm.persist = Some(f2)).await;
    sm.req(
        Method::POST,
        "/SM/9/rest/incidents",
        FALCON,
        Some(incident("kept")),
    )
    .await;
    sim.stop().await;
    let f3 = file.clone();
    let (sim, sm) = sm_sim(move |c| c.sm.persist = Some(f3)).await;
    let (_, b) = sm
        .req(Method::GET, "/SM/9/rest/incidents/IM10001", FALCON, None)
        .await;
    assert_eq!(b["Incident"]["Title"], "kept");
    let (_, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(incident("next")),
        )
        .await;
    assert_eq!(
        b["Incident"]["IncidentID"], "IM10002",
        "numbering continues"
    );
    sim.stop().await;
}

#[tokio::test]
async fn service_manager_can_serve_https_signed_by_the_appliance_ca() {
    let (sim, _) = rest_sim(|c| c.sm_tls = true).await;
    let url = sim.info["smUrl"].as_str().expect("sm url").to_string();
    assert!(url.starts_with("https://"), "{url}");
    let trusted = scmb_sim::client::http_client(Some(std::path::Path::new(
        sim.info["caCert"].as_str().expect("ca"),
    )))
    .expect("client");
    let r = trusted
        .post(format!("{url}/SM/9/rest/incidents"))
        .basic_auth("falcon", Some(""))
        .json(&incident("over TLS"))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), StatusCode::OK);
    let untrusted = scmb_sim::client::http_client(None).expect("client");
    assert!(
        untrusted
            .get(format!("{url}/SM/9/rest/incidents"))
            .send()
            .await
            .is_err(),
        "verified against the CA"
    );
    sim.stop().await;
}

#[tokio::test]
async fn alerts_come_in_pages_of_25_oldest_first_without_count_or_sort() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    for i in 0..30 {
        let r = rest
            .req(
                Method::POST,
                "/sim/alerts",
                Some(json!({"description": format!("alert {i}")})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let first = rest.get("/rest/alerts").await;
    assert_eq!(first.body["total"], 30);
    assert_eq!(first.body["count"], 25, "25 a page when count is absent");
    let descriptions = |r: &Resp| -> Vec<String> {
        r.body["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["description"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let d = descriptions(&first);
    assert_eq!(
        d.first().map(String::as_str),
        Some("alert 0"),
        "oldest first"
    );
    assert_eq!(d.last().map(String::as_str), Some("alert 24"));
    let next = first.body["nextPageUri"].as_str().expect("a next page");
    assert!(
        next.contains("start=25") && next.contains("count=25"),
        "{next}"
    );
    let second = rest.get(next).await;
    assert_eq!(
        descriptions(&second),
        (25..30).map(|i| format!("alert {i}")).collect::<Vec<_>>()
    );
    assert!(second.body["nextPageUri"].is_null());
    // count=-1 still means as many as the appliance gives, and a sort still wins.
    assert_eq!(rest.get("/rest/alerts?count=-1").await.body["count"], 30);
    let newest = rest.get("/rest/alerts?sort=created:descending").await;
    assert_eq!(
        descriptions(&newest).first().map(String::as_str),
        Some("alert 29")
    );
    sim.stop().await;
}

#[tokio::test]
async fn alert_filters_take_like_is_null_in_and_hpe_quoting() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let raise = |fields: Value| rest.req(Method::POST, "/sim/alerts", Some(fields));
    raise(json!({"description": "Fan 1 failed", "severity": "Critical"})).await;
    raise(json!({"description": "Fan 2 failed", "severity": "Warning", "assignedToUser": "ops"}))
        .await;
    raise(json!({"description": "Power supply failed", "severity": "Critical", "correctiveAction": null})).await;
    raise(json!({"description": "fan 3 degraded", "severity": "Warning", "alertState": "Locked"}))
        .await;
    let total = |f: &'static str| {
        let path = format!("/rest/alerts?filter={}", urlencode(f));
        let rest = &rest;
        async move {
            let r = rest.get(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{f}: {}", r.body);
            r.body["total"].as_u64().expect("total")
        }
    };
    assert_eq!(
        total("description LIKE 'Fan%'").await,
        2,
        "LIKE is case-sensitive"
    );
    assert_eq!(
        total("description matches 'fan%'").await,
        3,
        "matches is not"
    );
    assert_eq!(total("\"description like '%failed'\"").await, 3);
    assert_eq!(total("description LIKE 'Fan _ failed'").await, 2);
    assert_eq!(total("assignedToUser IS NULL").await, 3);
    assert_eq!(total("assignedToUser IS NOT NULL").await, 1);
    assert_eq!(total("correctiveAction is null").await, 1);
    assert_eq!(total("alertState IN ('Active','Locked')").await, 4);
    assert_eq!(total("severity IN ('Critical')").await, 2);
    assert_eq!(total("alertState NOT IN ('Active')").await, 1);
    assert_eq!(total("\"'severity' = 'Warning'\"").await, 2);
    assert_eq!(total("NOT \"severity EQ 'Warning'\"").await, 2);
    assert_eq!(
        total("\"severity='Critical'\" AND \"description LIKE 'Power%'\"").await,
        1
    );
    let bad = rest
        .get(&format!(
            "/rest/alerts?filter={}",
            urlencode("alertState IN 'Active'")
        ))
        .await;
    assert_error_shape(&bad, StatusCode::BAD_REQUEST, "INVALID_FILTER");
    sim.stop().await;
}

/// The change-log entries that are not user notes.
fn state_entries(alert: &Value) -> Vec<Value> {
    alert["changeLog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["userEntered"] == false)
        .cloned()
        .collect()
}

#[tokio::test]
async fn clears_record_who_cleared_when_and_a_change_log_entry() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let raise = || async {
        rest.req(Method::POST, "/sim/alerts", Some(json!({})))
            .await
            .body
    };
    let id = |a: &Value| {
        a["uri"]
            .as_str()
            .expect("uri")
            .rsplit('/')
            .next()
            .expect("id")
            .to_string()
    };

    // The appliance clears an alert itself.
    let a = raise().await;
    let c = rest
        .req(Method::POST, &format!("/sim/alerts/{}/clear", id(&a)), None)
        .await
        .body;
    assert_eq!(c["alertState"], "Cleared");
    assert_eq!(c["clearedByUser"], "System");
    assert_eq!(c["clearedTime"], c["modified"]);
    let log = state_entries(&c);
    assert_eq!(log.len(), 1, "{c}");
    assert_eq!(log[0]["username"], "System");
    assert_eq!(log[0]["created"], c["clearedTime"]);
    assert_eq!(
        log[0]["notes"],
        "Alert state changed from Active to Cleared."
    );
    assert!(log[0]["uri"]
        .as_str()
        .is_some_and(|u| u.starts_with("/rest/alerts/AlertChangeLog/")));
    // Clearing a cleared alert changes nothing more.
    let again = rest
        .req(Method::POST, &format!("/sim/alerts/{}/clear", id(&a)), None)
        .await
        .body;
    assert_eq!(state_entries(&again).len(), 1);
    assert_eq!(again["clearedTime"], c["clearedTime"]);

    // A user clears one from the appliance's UI.
    let b = raise().await;
    let c = rest
        .req(
            Method::POST,
            &format!("/sim/alerts/{}/clear", id(&b)),
            Some(json!({"user": "jdoe"})),
        )
        .await
        .body;
    assert_eq!(c["clearedByUser"], "jdoe");
    assert_eq!(state_entries(&c)[0]["username"], "jdoe");

    // The churn fault clears as the system.
    let d = raise().await;
    rest.req(
        Method::POST,
        "/sim/faults/churn",
        Some(json!({"clearServed": 100, "pages": 1})),
    )
    .await;
    rest.get("/rest/alerts?count=100").await;
    let d = rest.get(&format!("/rest/alerts/{}", id(&d))).await.body;
    assert_eq!(d["alertState"], "Cleared");
    assert_eq!(d["clearedByUser"], "System");
    assert!(d["clearedTime"].is_string());
    assert_eq!(state_entries(&d)[0]["username"], "System");

    // A user clears one through REST: the session's user; re-activating it empties both.
    let e = raise().await;
    let uri = e["uri"].as_str().expect("uri");
    let c = rest
        .req(
            Method::PUT,
            uri,
            Some(json!({"alertState": "Cleared", "notes": "done"})),
        )
        .await
        .body;
    assert_eq!(c["clearedByUser"], "Administrator");
    assert_eq!(c["clearedTime"], c["modified"]);
    let log = c["changeLog"].as_array().expect("changeLog");
    assert_eq!(log.len(), 2, "the state change and the note: {c}");
    assert_eq!(state_entries(&c)[0]["username"], "Administrator");
    assert!(log
        .iter()
        .any(|e| e["userEntered"] == true && e["notes"] == "done"));
    let r = rest
        .req(Method::PUT, uri, Some(json!({"alertState": "Active"})))
        .await
        .body;
    assert_eq!(r["clearedByUser"], Value::Null);
    assert_eq!(r["clearedTime"], Value::Null);
    assert_eq!(
        state_entries(&r).last().map(|e| e["notes"].clone()),
        Some(json!("Alert state changed from Cleared to Active."))
    );
    sim.stop().await;
}

#[tokio::test]
async fn single_resources_carry_their_etag_as_a_header_and_if_match_follows_it() {
    let (sim, mut rest) = rest_sim(|_| {}).await;
    rest.login("Administrator", "admin123").await;
    let a = rest
        .req(Method::POST, "/sim/alerts", Some(json!({})))
        .await
        .body;
    let uri = a["uri"].as_str().expect("uri").to_string();
    let header = |r: &Resp, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let got = rest.get(&uri).await;
    assert_eq!(header(&got, "etag").as_deref(), a["eTag"].as_str());
    assert_eq!(header(&got, "cache-control").as_deref(), Some("no-cache"));
    assert_eq!(
        header(&rest.get("/rest/alerts").await, "etag"),
        None,
        "not on collections"
    );

    let put = |if_match: Option<String>, body: Value| {
        let mut r = rest
            .http
            .put(format!("{}{}", rest.base, uri))
            .header("X-API-Version", "4200")
            .header("auth", rest.session.clone().expect("session"))
            .json(&body);
        if let Some(m) = if_match {
            r = r.header("If-Match", m);
        }
        async move {
            let resp = r.send().await.expect("put");
            let status = resp.status();
            let etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body: Value = resp.json().await.expect("json");
            (status, etag, body)
        }
    };
    // The header of a GET, as is, is a valid If-Match; the answer carries the new one.
    let current = header(&got, "etag").expect("etag");
    let (status, etag, body) = put(Some(current.clone()), json!({"notes": "one"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(etag.as_deref(), body["eTag"].as_str());
    assert_ne!(etag.as_deref(), Some(current.as_str()));
    let mut current = etag.expect("etag");
    // Stale: 412, whichever form.
    let (status, _, body) = put(
        Some(a["eTag"].as_str().expect("e").into()),
        json!({"notes": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert_eq!(body["errorCode"], "ETAG_MISMATCH");
    // Quoted, weak, in a list, "*": each names the current one.
    let forms: [fn(&str) -> String; 4] = [
        |e| format!("\"{e}\""),
        |e| format!("W/\"{e}\""),
        |e| format!("\"stale\", \"{e}\""),
        |_| "*".to_string(),
    ];
    for form in forms {
        let m = form(&current);
        let (status, etag, body) = put(Some(m.clone()), json!({"notes": m})).await;
        assert_eq!(status, StatusCode::OK, "If-Match {m}: {body}");
        assert_eq!(etag.as_deref(), body["eTag"].as_str());
        current = etag.expect("etag");
    }
    let current = rest.get(&uri).await.body["eTag"]
        .as_str()
        .expect("e")
        .to_string();
    // A body eTag that is empty, "*" or null sets no precondition; a stale one fails even
    // with a current If-Match (both are checked).
    for e in [json!(""), json!("*"), Value::Null] {
        let (status, _, body) = put(None, json!({"notes": "n", "eTag": e})).await;
        assert_eq!(status, StatusCode::OK, "eTag {e}: {body}");
    }
    let current_now = rest.get(&uri).await.body["eTag"]
        .as_str()
        .expect("e")
        .to_string();
    assert_ne!(current, current_now);
    let (status, _, _) = put(Some(current_now), json!({"notes": "n", "eTag": current})).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    sim.stop().await;
}

#[tokio::test]
async fn a_routing_key_that_is_not_utf8_needs_the_broker() {
    let (sim, rest) = rest_sim(|_| {}).await;
    let r = rest
        .req(
            Method::POST,
            "/sim/publish?routingKeyHex=73636d622eff",
            None,
        )
        .await;
    assert_error_shape(&r, StatusCode::CONFLICT, "SIM_NO_BROKER");
    // A UTF-8 key is dropped as always without a broker, given as hex or not.
    let r = rest
        .req(
            Method::POST,
            "/sim/publish?routingKeyHex=73636d622e78",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["routingKey"], "scmb.x");
    sim.stop().await;
}

/// An incident create as a client with a 5 s timeout sends it (see [`raw`] and
/// [`garbage_create`]).
fn create_request(sm: &Sm, title: &str) -> reqwest::RequestBuilder {
    sm.http
        .post(format!("{}/SM/9/rest/incidents", sm.base))
        .basic_auth("falcon", Some("secret"))
        .timeout(Duration::from_secs(5))
        .json(&incident(title))
}

/// The incidents the simulator holds with this title.
async fn titled(sm: &Sm, title: &str) -> Vec<Value> {
    let (_, all) = sm.req(Method::GET, "/sim/incidents", None, None).await;
    all["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["Title"] == title)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_late_create_stores_the_incident_before_the_client_gives_up() {
    let (sim, sm) = sm_sim(|_| {}).await;
    let before = common::stats(&sm.base).await["requests"]
        .as_u64()
        .expect("requests");
    // Never answers (an hour), for the next create only.
    common::abandoned_create(&sm.base, create_request(&sm, "late")).await;
    // The incident exists, for the simulator's read-back and for SM's own query.
    let stored = titled(&sm, "late").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["IncidentID"], "IM10001");
    let q = urlencode("Title=\"late\"");
    let (_, l) = sm
        .req(
            Method::GET,
            &format!("/SM/9/rest/incidents?view=expand&query={q}"),
            FALCON,
            None,
        )
        .await;
    assert_eq!(l["@totalcount"], 1, "{l}");
    // The abandoned call no longer counts as in flight; every call was counted.
    let stats = common::until_idle(&sm.base).await;
    assert_eq!(stats["inFlight"], 0, "{stats}");
    assert!(
        stats["requests"].as_u64().expect("requests") >= before + 2,
        "{stats}"
    );
    // The count is used up: the next create is answered at once, normally.
    let (_, f) = sm.req(Method::GET, "/sim/faults", None, None).await;
    assert_eq!(f["faults"]["createFaultCount"], 0, "{f}");
    let (status, _, text) = raw(create_request(&sm, "on time")).await.expect("answered");
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["Incident"]["IncidentID"], "IM10002");
    // Other calls never get the create faults.
    set_faults(&sm.base, json!({"createLateMs": 3_600_000})).await;
    let (s, _) = sm
        .req(Method::GET, "/SM/9/rest/incidents/IM10001", FALCON, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn a_garbage_create_answer_comes_after_the_incident_is_stored() {
    let (sim, sm) = sm_sim(|_| {}).await;
    // Empty: 201 and no body at all.
    let (status, _, text) = garbage_create(&sm.base, "empty", create_request(&sm, "empty")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(text.is_empty(), "{text:?}");
    assert_eq!(titled(&sm, "empty").await.len(), 1);
    // HTML: 200 with a page.
    let (status, ct, text) = garbage_create(&sm.base, "html", create_request(&sm, "html")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(text.contains("<html>"), "{text}");
    assert_eq!(titled(&sm, "html").await.len(), 1);
    // No id: 201, ReturnCode 0, the incident without IncidentID.
    let (status, ct, text) = garbage_create(&sm.base, "noId", create_request(&sm, "noid")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["ReturnCode"], 0);
    assert_eq!(v["Messages"], json!([]));
    assert_eq!(v["Incident"]["Title"], "noid");
    assert!(v["Incident"].get("IncidentID").is_none(), "{v}");
    let stored = titled(&sm, "noid").await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0]["IncidentID"].is_string(), "stored with its id");
    // Without a count every create gets it, late and garbage together; a retrying client
    // makes one incident a try. Clearing the faults ends it.
    set_faults(
        &sm.base,
        json!({"createGarbage": "empty", "createLateMs": 50}),
    )
    .await;
    for _ in 0..2 {
        let (status, _, text) = raw(create_request(&sm, "again")).await.expect("answer");
        assert_eq!((status, text.as_str()), (StatusCode::CREATED, ""));
    }
    assert_eq!(titled(&sm, "again").await.len(), 2);
    // A create the simulator refuses (validation) stores nothing and answers as usual.
    let (s, b) = sm
        .req(
            Method::POST,
            "/SM/9/rest/incidents",
            FALCON,
            Some(json!({"Incident": {"Description": ["x"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    sm.req(Method::DELETE, "/sim/faults", None, None).await;
    let (status, _, _) = raw(create_request(&sm, "normal")).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::until_idle(&sm.base).await["inFlight"], 0);
    sim.stop().await;
}
