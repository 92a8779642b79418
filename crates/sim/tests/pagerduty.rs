//! The PagerDuty Events API v2 simulator over a real socket: validation, de-duplication into
//! incidents, the trigger/acknowledge/resolve cycle, routing keys, throttling, and the faults
//! that make clients send duplicates (events accepted and then answered late or badly).

mod common;

use std::time::{Duration, Instant};

use common::{garbage_create, http, raw, set_faults, Resp};
use reqwest::{Method, StatusCode};
use scmb_sim::pagerduty::PdConfig;
use scmb_sim::testkit::{serve_pagerduty, temp_dir, Served};
use serde_json::{json, Value};

type Pd = Served<scmb_sim::pagerduty::PdState>;

const KEY: &str = "R0123456789abcdef0123456789ABCDE";
const OTHER: &str = "Zabcdefabcdefabcdefabcdefabcdef1";

async fn call(pd: &Pd, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut r = http().request(method, format!("{}{}", pd.url, path));
    if let Some(b) = body {
        r = r.json(&b);
    }
    common::send(r).await
}

async fn send(pd: &Pd, ev: Value) -> Resp {
    call(pd, Method::POST, "/v2/enqueue", Some(ev)).await
}

fn trigger(key: &str, dedup: Option<&str>) -> Value {
    let mut ev = json!({"routing_key": key, "event_action": "trigger",
        "payload": {"summary": "PSU 1 failed on Encl1", "source": "encl1.example.com",
            "severity": "critical", "timestamp": "2026-11-25T10:00:00.000+0000",
            "component": "PSU 1", "group": "enclosures", "class": "hardware",
            "custom_details": {"alertUri": "/rest/alerts/7"}},
        "links": [{"href": "https://oneview.example.com/#/activity", "text": "OneView"}],
        "client": "scmb", "client_url": "https://oneview.example.com"});
    if let Some(d) = dedup {
        ev["dedup_key"] = json!(d);
    }
    ev
}

fn action(key: &str, action: &str, dedup: &str) -> Value {
    json!({"routing_key": key, "event_action": action, "dedup_key": dedup})
}

async fn control(pd: &Pd, path: &str) -> Value {
    call(pd, Method::GET, path, None).await.body
}

/// `POST /sim/incidents/{id}/{action}`: a person acting in PagerDuty.
async fn act(pd: &Pd, id: &str, action: &str, body: Option<Value>) -> Resp {
    let path = format!("/sim/incidents/{id}/{action}");
    call(pd, Method::POST, &path, body).await
}

async fn incidents(pd: &Pd) -> Vec<Value> {
    control(pd, "/sim/incidents").await["incidents"]
        .as_array()
        .expect("incidents")
        .clone()
}

#[tokio::test]
async fn a_trigger_opens_an_incident_and_later_triggers_deduplicate_onto_it() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    let r = send(&pd, trigger(KEY, Some("ov:alerts:7"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"status": "success", "message": "Event processed", "dedup_key": "ov:alerts:7"})
    );
    for _ in 0..2 {
        let r = send(&pd, trigger(KEY, Some("ov:alerts:7"))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let inc = incidents(&pd).await;
    assert_eq!(inc.len(), 1, "one incident for one open dedup key");
    assert_eq!(inc[0]["status"], "triggered");
    assert_eq!(inc[0]["eventCount"], 3);
    assert_eq!(inc[0]["incidentNumber"], 1);
    assert_eq!(inc[0]["summary"], "PSU 1 failed on Encl1");
    assert_eq!(inc[0]["severity"], "critical");
    assert_eq!(inc[0]["customDetails"]["alertUri"], "/rest/alerts/7");
    let id = inc[0]["id"].as_str().expect("id");
    assert!(id.starts_with('P') && id.len() == 7, "{id}");
    let outcomes: Vec<&str> = inc[0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(outcomes, vec!["triggered", "deduplicated", "deduplicated"]);
    let events = control(&pd, "/sim/events").await;
    assert_eq!(events["events"][0]["body"]["client"], "scmb");
}

#[tokio::test]
async fn acknowledge_and_resolve_follow_the_incident_and_a_trigger_after_resolve_opens_a_new_one() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    send(&pd, trigger(KEY, Some("d1"))).await;
    let r = send(&pd, action(KEY, "acknowledge", "d1")).await;
    assert_eq!(
        (r.status, r.body["dedup_key"].clone()),
        (StatusCode::ACCEPTED, json!("d1"))
    );
    assert_eq!(incidents(&pd).await[0]["status"], "acknowledged");
    // A trigger while acknowledged adds to it and leaves it acknowledged.
    send(&pd, trigger(KEY, Some("d1"))).await;
    let inc = incidents(&pd).await;
    assert_eq!(
        (inc[0]["status"].clone(), inc[0]["eventCount"].clone()),
        (json!("acknowledged"), json!(3))
    );
    let r = send(&pd, action(KEY, "resolve", "d1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let inc = incidents(&pd).await;
    assert_eq!(inc[0]["status"], "resolved");
    assert!(inc[0]["resolvedAt"].is_string());
    // Nothing open: acknowledge and resolve are accepted and dropped.
    for a in ["resolve", "acknowledge"] {
        let r = send(&pd, action(KEY, a, "d1")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{a}");
        let r = send(&pd, action(KEY, a, "never-triggered")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{a}");
    }
    let events = control(&pd, "/sim/events").await;
    let dropped = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["outcome"] == "dropped")
        .count();
    assert_eq!(dropped, 4);
    // A trigger after the resolve opens a new incident.
    send(&pd, trigger(KEY, Some("d1"))).await;
    let inc = incidents(&pd).await;
    assert_eq!(inc.len(), 2);
    assert_eq!(inc[1]["status"], "triggered");
    assert_eq!(inc[1]["incidentNumber"], 2);
    assert_eq!(inc[1]["eventCount"], 1);
    assert_ne!(inc[0]["id"], inc[1]["id"]);
}

#[tokio::test]
async fn a_trigger_without_dedup_key_gets_a_generated_one_and_always_opens_an_incident() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    let a = send(&pd, trigger(KEY, None)).await;
    let b = send(&pd, trigger(KEY, None)).await;
    let ka = a.body["dedup_key"].as_str().expect("generated").to_string();
    let kb = b.body["dedup_key"].as_str().expect("generated").to_string();
    assert_ne!(ka, kb);
    assert_eq!(ka.len(), 32);
    assert_eq!(incidents(&pd).await.len(), 2);
    // The generated key resolves its incident.
    send(&pd, action(KEY, "resolve", &ka)).await;
    let inc = incidents(&pd).await;
    assert_eq!(
        (inc[0]["status"].clone(), inc[1]["status"].clone()),
        (json!("resolved"), json!("triggered"))
    );
}

#[tokio::test]
async fn invalid_events_are_refused_with_every_documented_error() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"routing_key": "short", "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "info"}}),
            vec!["Length of 'routing_key' is incorrect (should be 32 characters)"],
        ),
        (
            json!({"routing_key": "0123456789abcdef0123456789abcde-", "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "info"}}),
            vec!["'routing_key' cannot contain non-alphanumeric characters."],
        ),
        (
            json!({"event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "info"}}),
            vec!["'routing_key' is missing or blank"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "trigger", "payload": {}}),
            vec![
                "'payload.summary' is missing or blank",
                "'payload.source' is missing or blank",
                "'payload.severity' is missing or blank",
            ],
        ),
        (
            json!({"routing_key": KEY, "event_action": "trigger"}),
            vec!["'payload' is missing or blank"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "fatal"}}),
            vec!["'payload.severity' must be one of critical, error, warning or info"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "trigger",
                "payload": {"summary": "x".repeat(1025), "source": "h", "severity": "info"}}),
            vec!["'payload.summary' is too long (maximum is 1024 characters)"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "page", "dedup_key": "d"}),
            vec!["'event_action' must be one of trigger, acknowledge or resolve"],
        ),
        (
            json!({"routing_key": KEY}),
            vec!["'event_action' is missing or blank"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "resolve"}),
            vec!["'dedup_key' is missing or blank"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "d".repeat(256)}),
            vec!["'dedup_key' is too long (maximum is 255 characters)"],
        ),
        (
            json!({"routing_key": KEY, "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "info", "timestamp": "noon"}}),
            vec!["'payload.timestamp' is not a valid ISO 8601 timestamp"],
        ),
    ];
    for (ev, want) in cases {
        let r = send(&pd, ev.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ev}");
        assert_eq!(r.body["status"], "invalid event", "{ev}");
        assert_eq!(r.body["message"], "Event object is invalid", "{ev}");
        assert_eq!(r.body["errors"], json!(want), "{ev}");
    }
    let r = common::not_json(http().post(format!("{}/v2/enqueue", pd.url))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["status"], "invalid event");
    assert!(control(&pd, "/sim/events").await["events"]
        .as_array()
        .expect("events")
        .is_empty());
}

#[tokio::test]
async fn dedup_keys_are_scoped_to_their_routing_key() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    send(&pd, trigger(KEY, Some("same"))).await;
    send(&pd, trigger(OTHER, Some("same"))).await;
    assert_eq!(incidents(&pd).await.len(), 2);
    // A resolve through the other key only touches that key's incident.
    send(&pd, action(OTHER, "resolve", "same")).await;
    let inc = incidents(&pd).await;
    assert_eq!(inc[0]["routingKey"], KEY);
    assert_eq!(
        (inc[0]["status"].clone(), inc[1]["status"].clone()),
        (json!("triggered"), json!("resolved"))
    );
}

#[tokio::test]
async fn unknown_routing_keys_are_refused_when_integration_keys_are_configured() {
    let pd = serve_pagerduty(PdConfig {
        routing_keys: vec![KEY.to_string()],
        ..PdConfig::default()
    })
    .await;
    assert_eq!(
        send(&pd, trigger(KEY, Some("a"))).await.status,
        StatusCode::ACCEPTED
    );
    let r = send(&pd, trigger(OTHER, Some("a"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"], json!(["Invalid routing key"]));
    assert_eq!(incidents(&pd).await.len(), 1);
}

#[tokio::test]
async fn throttling_answers_429_for_the_next_n_and_past_a_per_key_rate() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    set_faults(&pd.url, json!({"throttleNext": 2})).await;
    for _ in 0..2 {
        let r = send(&pd, trigger(KEY, Some("t"))).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.body["status"], "throttle event");
    }
    assert!(
        incidents(&pd).await.is_empty(),
        "a throttled event is not ingested"
    );
    assert_eq!(
        send(&pd, trigger(KEY, Some("t"))).await.status,
        StatusCode::ACCEPTED
    );
    set_faults(&pd.url, json!({"ratePerMinute": 2})).await;
    assert_eq!(
        send(&pd, trigger(KEY, Some("t"))).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&pd, trigger(KEY, Some("t"))).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&pd, trigger(KEY, Some("t"))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&pd, trigger(OTHER, Some("t"))).await.status,
        StatusCode::ACCEPTED,
        "the rate is per routing key"
    );
    assert_eq!(incidents(&pd).await[0]["eventCount"], 3);
}

/// A trigger as a client with a 5 s timeout sends it (see [`raw`] and [`garbage_create`]).
fn trigger_request(pd: &Pd, dedup: &str) -> reqwest::RequestBuilder {
    http()
        .post(format!("{}/v2/enqueue", pd.url))
        .timeout(Duration::from_secs(5))
        .json(&trigger(KEY, Some(dedup)))
}

#[tokio::test]
async fn an_event_answered_late_is_ingested_before_the_client_gives_up() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    common::abandoned_create(&pd.url, trigger_request(&pd, "late")).await;
    let inc = incidents(&pd).await;
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0]["dedupKey"], "late");
    // The retry is de-duplicated onto the same incident, answered at once.
    let (status, _, text) = raw(trigger_request(&pd, "late")).await.expect("answered");
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(incidents(&pd).await[0]["eventCount"], 2);
    assert_eq!(common::until_idle(&pd.url).await["inFlight"], 0);
}

#[tokio::test]
async fn garbage_answers_come_after_the_event_is_ingested() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    let (status, _, text) = garbage_create(&pd.url, "empty", trigger_request(&pd, "g1")).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, ""));
    let (status, ct, text) = garbage_create(&pd.url, "html", trigger_request(&pd, "g2")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        ct.starts_with("text/html") && text.contains("<html>"),
        "{ct} {text}"
    );
    let (status, _, text) = garbage_create(&pd.url, "noId", trigger_request(&pd, "g3")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v,
        json!({"status": "success", "message": "Event processed"})
    );
    let keys: Vec<Value> = incidents(&pd)
        .await
        .iter()
        .map(|i| i["dedupKey"].clone())
        .collect();
    assert_eq!(keys, vec![json!("g1"), json!("g2"), json!("g3")]);
    // Refused events take no fault; the count is then used up.
    set_faults(
        &pd.url,
        json!({"createGarbage": "empty", "createFaultCount": 1}),
    )
    .await;
    assert_eq!(
        send(&pd, json!({"routing_key": KEY})).await.status,
        StatusCode::BAD_REQUEST
    );
    let (_, _, text) = raw(trigger_request(&pd, "g4")).await.expect("answer");
    assert!(text.is_empty());
    let (_, _, text) = raw(trigger_request(&pd, "g5")).await.expect("answer");
    assert!(text.contains("\"dedup_key\":\"g5\""), "{text}");
}

#[tokio::test]
async fn faults_inject_errors_html_latency_and_an_outage() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    set_faults(&pd.url, json!({"errorRate": 1.0})).await;
    let r = send(&pd, trigger(KEY, Some("f"))).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    set_faults(&pd.url, json!({"html": true})).await;
    let r = send(&pd, trigger(KEY, Some("f"))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.header("content-type").starts_with("text/html"));
    assert!(
        incidents(&pd).await.is_empty(),
        "faulted calls ingest nothing"
    );
    set_faults(&pd.url, json!({"latencyMs": 300})).await;
    let t0 = Instant::now();
    assert_eq!(
        send(&pd, trigger(KEY, Some("f"))).await.status,
        StatusCode::ACCEPTED
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));
    common::outage(&pd.url).await;
    assert_eq!(
        send(&pd, trigger(KEY, Some("f"))).await.status,
        StatusCode::ACCEPTED
    );
    let r = call(&pd, Method::DELETE, "/sim/faults", None).await;
    assert_eq!(r.body["faults"]["latencyMs"], 0);
}

#[tokio::test]
async fn a_person_acknowledges_and_resolves_through_the_control_route() {
    let pd = serve_pagerduty(PdConfig::default()).await;
    send(&pd, trigger(KEY, Some("p"))).await;
    let id = incidents(&pd).await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = act(&pd, &id, "acknowledge", Some(json!({"user": "jdoe"}))).await;
    assert_eq!(r.body["incident"]["status"], "acknowledged", "{}", r.text);
    assert_eq!(r.body["incident"]["acknowledgedBy"], "user:jdoe");
    let r = act(&pd, &id, "resolve", Some(json!({"user": "jdoe"}))).await;
    assert_eq!(r.body["incident"]["status"], "resolved");
    assert_eq!(r.body["incident"]["resolvedBy"], "user:jdoe");
    assert_eq!(
        r.body["incident"]["eventCount"], 1,
        "a person's action is no event"
    );
    assert_eq!(
        act(&pd, &id, "resolve", None).await.status,
        StatusCode::CONFLICT
    );
    // The client's next trigger for that key opens a new incident.
    send(&pd, trigger(KEY, Some("p"))).await;
    assert_eq!(incidents(&pd).await.len(), 2);
}

#[tokio::test]
async fn a_base_path_serves_the_api_and_state_persists_until_reset() {
    let file = temp_dir("pd-persist").join("pagerduty.json");
    let cfg = PdConfig {
        base_path: Some("/pd/".into()),
        persist: Some(file.clone()),
        ..PdConfig::default()
    };
    let pd = serve_pagerduty(cfg.clone()).await;
    let r = call(
        &pd,
        Method::POST,
        "/pd/v2/enqueue",
        Some(trigger(KEY, Some("b"))),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    drop(pd);
    let pd = serve_pagerduty(cfg).await;
    send(&pd, trigger(KEY, Some("b"))).await;
    let inc = incidents(&pd).await;
    assert_eq!((inc.len(), inc[0]["eventCount"].clone()), (1, json!(2)));
    let r = call(&pd, Method::POST, "/sim/reset", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(incidents(&pd).await.is_empty());
    let s = control(&pd, "/sim/stats").await;
    assert_eq!(s["events"], 0);
}
