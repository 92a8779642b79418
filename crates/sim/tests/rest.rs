//! The OneView REST simulator and the Service Manager simulator pinned to SPEC.md, over real
//! HTTPS/HTTP sockets (no broker needed: these run against REST-only simulators).

use std::time::Duration;

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
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("text");
        assert!(!text.is_empty(), "SM always answers a non-empty body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

async fn sm_sim(tweak: impl FnOnce(&mut SimConfig)) -> (Sim, Sm) {
    let (sim, _) = rest_sim(|c| {
        c.sm.users = [("falcon".to_string(), "secret".to_string())].into();
        tweak(c)
    })
    .await;
    let sm = Sm {
        http: scmb_sim::client::http_client(None).expect("client"),
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
    let set = |f: Value| sm.req(Method::POST, "/sim/faults", None, Some(f));
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
    set(json!({"outageMs": 600})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = sm
        .http
        .get(format!("{}/SM/9/rest/incidents", sm.base))
        .send()
        .await;
    assert!(
        r.is_err_and(|e| e.is_connect()),
        "refused during the outage"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
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
