//! `ov_to_sm` end to end against a simulated appliance and Service Manager of this test binary's
//! own. The scenarios inject faults into the shared simulators, so they run one after another in
//! one test function.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{appliance, download_certs, raise, Listening};
use reqwest::Method;
use scmb_sim::testkit::{shared_sim, temp_dir, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const OV_TO_SM: &str = env!("CARGO_BIN_EXE_ov_to_sm");

/// Starts ov_to_sm with the sample's spelling (`-sm`, `-x`, no `-i`).
fn start(
    sim: &SimInfo,
    dir: &std::path::Path,
    state: &std::path::Path,
    tag: &str,
    extra: &[&str],
) -> Listening {
    let sm = sim
        .sm_url
        .clone()
        .expect("sm")
        .trim_start_matches("http://")
        .to_string();
    let a = appliance(&sim.rest_url);
    let port = sim.amqps_port.to_string();
    let pattern = format!("{tag}*");
    let mut args = vec![
        "-a",
        a.as_str(),
        "-u",
        "Administrator",
        "-p",
        "admin123",
        "-sm",
        sm.as_str(),
        "-x",
        "",
        "--amqp-port",
        port.as_str(),
        "--cert-dir",
        dir.to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
        "--alert-type",
        pattern.as_str(),
        "--retry-cap-secs",
        "1",
    ];
    args.extend_from_slice(extra);
    let mut l = Listening::start_bin(OV_TO_SM, &args);
    assert!(
        l.wait_for("subscribed to the message bus", WAIT),
        "not subscribed: {:?}",
        l.stderr
    );
    l
}

/// Incidents in the SM simulator, by the alert uri written in their description.
async fn incidents_by_alert(c: &scmb_sim::client::SimClient) -> HashMap<String, Vec<Value>> {
    // The SM port is closed during an outage: ask again until it answers.
    let deadline = Instant::now() + WAIT;
    let all = loop {
        match c.call_sm(Method::GET, "/sim/incidents", None).await {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("incidents: {e}"),
        }
    };
    let mut by: HashMap<String, Vec<Value>> = HashMap::new();
    for inc in all["incidents"].as_array().cloned().unwrap_or_default() {
        let uri = inc["Description"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|l| l.strip_prefix("alertUri: "))
            .unwrap_or("")
            .to_string();
        by.entry(uri).or_default().push(inc);
    }
    by
}

async fn alert(c: &scmb_sim::client::SimClient, uri: &str) -> Value {
    let session: Value = c
        .http
        .post(format!("{}/rest/login-sessions", c.rest_url))
        .header("X-API-Version", "4200")
        .json(&json!({"userName": "Administrator", "password": "admin123"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    c.http
        .get(format!("{}{uri}", c.rest_url))
        .header("X-API-Version", "4200")
        .header("auth", session["sessionID"].as_str().expect("sid"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// Adds a note to an alert as an operator would (GET for the eTag, PUT notes).
async fn put_note(c: &scmb_sim::client::SimClient, uri: &str, text: &str) {
    let a = alert(c, uri).await;
    let session: Value = c
        .http
        .post(format!("{}/rest/login-sessions", c.rest_url))
        .header("X-API-Version", "4200")
        .json(&json!({"userName": "Administrator", "password": "admin123"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let r = c
        .http
        .put(format!("{}{uri}", c.rest_url))
        .header("X-API-Version", "4200")
        .header("auth", session["sessionID"].as_str().expect("sid"))
        .json(&json!({"notes": text, "eTag": a["eTag"]}))
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success());
}

/// Waits until every uri has an incident (and its note), or the time is up.
async fn wait_ticketed(
    c: &scmb_sim::client::SimClient,
    uris: &[String],
) -> HashMap<String, Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let by = incidents_by_alert(c).await;
        if uris.iter().all(|u| by.contains_key(u)) || Instant::now() > deadline {
            return by;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn notes(a: &Value) -> Vec<String> {
    a["changeLog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["notes"].as_str().map(str::to_string))
        .collect()
}

async fn wait_note(c: &scmb_sim::client::SimClient, uri: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = notes(&alert(c, uri).await);
        if !n.is_empty() || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_critical_alert_becomes_exactly_one_incident_through_faults_and_restarts() {
    let sim = shared_sim();
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "ovtosm");
    let state = temp_dir("ovtosm-state");
    let tag = format!("Test.ovtosm.{}", rand::random::<u32>());

    // 1. The seed command line: one critical alert (with nulls) → one incident, note written back.
    let mut l = start(
        sim,
        &dir,
        &state,
        &tag,
        &["--journal-updates", "--keep-alive-secs", "1"],
    );
    let uri = raise(&c, json!({"severity": "Critical", "alertTypeID": format!("{tag}.a"), "description": null, "correctiveAction": null})).await;
    let warn = raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{tag}.w")}),
    )
    .await;
    let by = wait_ticketed(&c, std::slice::from_ref(&uri)).await;
    let incs = by.get(&uri).cloned().unwrap_or_default();
    assert_eq!(incs.len(), 1, "{by:?}");
    let id = incs[0]["IncidentID"].as_str().expect("id").to_string();
    assert_eq!(incs[0]["Title"], "OneView Alert");
    assert_eq!(incs[0]["Urgency"], "1");
    assert!(
        incs[0]["Description"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("Description: n/a"))),
        "{}",
        incs[0]
    );
    let n = wait_note(&c, &uri).await;
    assert_eq!(
        n,
        vec![format!(
            "Case automatically logged in HPE Service Manager with ID: {id}"
        )]
    );
    assert!(!by.contains_key(&warn), "a warning is not ticketed");
    let a = alert(&c, &uri).await;
    assert_eq!(a["alertState"], "Active", "state untouched");
    assert_eq!(a["assignedToUser"], Value::Null, "assignment untouched");

    assert!(
        l.wait_for("REST keep-alive sent", WAIT),
        "the REST session is kept alive when idle"
    );

    // Someone's note on the alert becomes a journal line; our own note did not.
    put_note(&c, &uri, "enclosure power cycled by the night shift").await;
    let deadline = Instant::now() + WAIT;
    let mut journal = Value::Null;
    while Instant::now() < deadline {
        journal = incidents_by_alert(&c)
            .await
            .get(&uri)
            .and_then(|v| v.first())
            .map(|i| i["JournalUpdates"].clone())
            .unwrap_or(Value::Null);
        if !journal.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        journal,
        json!(["OneView note by Administrator: enclosure power cycled by the night shift"])
    );

    // 2. A cleared alert resolves its incident.
    let alert_id = uri.rsplit('/').next().expect("id").to_string();
    c.call(Method::POST, &format!("/sim/alerts/{alert_id}/clear"), None)
        .await
        .expect("clear");
    let deadline = Instant::now() + WAIT;
    let mut status = Value::Null;
    while Instant::now() < deadline {
        let by = incidents_by_alert(&c).await;
        status = by
            .get(&uri)
            .and_then(|v| v.first())
            .map(|i| i["Status"].clone())
            .unwrap_or(Value::Null);
        if status == "Resolved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, "Resolved");

    // 2b. A new alert is ticketed from the message that announced it: the appliance refuses
    //     every read (GET answers 503 until told otherwise), yet the incident is opened and
    //     the note written, because a first delivery carries the whole alert.
    c.call(
        Method::POST,
        "/sim/faults/rest",
        Some(br#"{"status":503,"seconds":3600,"method":"GET"}"#.to_vec()),
    )
    .await
    .expect("fault");
    let unread = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.unread")}),
    )
    .await;
    let by = wait_ticketed(&c, std::slice::from_ref(&unread)).await;
    c.call(Method::DELETE, "/sim/faults/rest", None)
        .await
        .expect("clear fault");
    let incs = by.get(&unread).cloned().unwrap_or_default();
    assert_eq!(incs.len(), 1, "ticketed while reads were refused: {by:?}");
    let id = incs[0]["IncidentID"].as_str().expect("id").to_string();
    assert_eq!(
        wait_note(&c, &unread).await,
        vec![format!(
            "Case automatically logged in HPE Service Manager with ID: {id}"
        )]
    );

    // 3. Killed (SIGKILL) between creating the incident and acking: Service Manager is slow
    //    (3 s), and while it creates the incident OneView starts answering 503, so the note
    //    cannot be written. The restart finds the recorded step and writes the note: one incident.
    c.call_sm(
        Method::POST,
        "/sim/faults",
        Some(br#"{"latencyMs":3000}"#.to_vec()),
    )
    .await
    .expect("sm latency");
    let uri2 = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.kill")}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.call(
        Method::POST,
        "/sim/faults/rest",
        Some(br#"{"status":503,"seconds":60}"#.to_vec()),
    )
    .await
    .expect("fault");
    assert!(
        l.wait_for("writing the note failed; retrying", WAIT),
        "{:?}",
        l.stderr
    );
    assert_eq!(
        incidents_by_alert(&c).await.get(&uri2).map(Vec::len),
        Some(1),
        "the incident exists before the kill"
    );
    let _ = l.child.kill();
    let _ = l.finish(Duration::from_secs(5));
    c.call(Method::DELETE, "/sim/faults/rest", None)
        .await
        .expect("clear fault");
    c.call_sm(Method::DELETE, "/sim/faults", None)
        .await
        .expect("clear sm faults");
    let mut l = start(sim, &dir, &state, &tag, &[]);
    let n = wait_note(&c, &uri2).await;
    assert_eq!(n.len(), 1, "the note is written after the restart: {n:?}");
    assert_eq!(
        incidents_by_alert(&c).await.get(&uri2).map(Vec::len),
        Some(1),
        "and no second incident"
    );

    // 4. A wiped store: the note in the alert's change log prevents a second incident when the
    //    same message comes again.
    let _ = l.child.kill();
    let _ = l.finish(Duration::from_secs(5));
    let state2 = temp_dir("ovtosm-wiped");
    let l = start(sim, &dir, &state2, &tag, &[]);
    let again = alert(&c, &uri2).await;
    let envelope = json!({"resourceUri": uri2, "changeType": "Created", "newState": "Active", "eTag": again["eTag"],
        "timestamp": "2026-11-25T10:00:00.000Z", "resource": again, "changedAttributes": [], "data": null});
    let resp = c
        .http
        .post(format!(
            "{}/sim/publish?routingKey=scmb.alerts.Created.{uri2}",
            c.rest_url
        ))
        .body(serde_json::to_vec(&envelope).expect("json"))
        .send()
        .await
        .expect("publish");
    assert!(resp.status().is_success());
    let mut l = l;
    assert!(
        l.wait_for("already ticketed (its notes carry the incident)", WAIT),
        "{:?}",
        l.stderr
    );
    assert_eq!(
        incidents_by_alert(&c).await.get(&uri2).map(Vec::len),
        Some(1)
    );

    // 5. A storm of 1,000 critical alerts with Service Manager down for 2 s in the middle:
    //    every alert ticketed exactly once, none lost.
    let storm_tag = format!("{tag}.storm");
    let storm = json!({"count": 1000, "rate": 500, "fields": {"alertTypeID": storm_tag}});
    let c2 = c.clone();
    let raising = tokio::spawn(async move {
        c2.call(
            Method::POST,
            "/sim/storm",
            Some(serde_json::to_vec(&storm).expect("json")),
        )
        .await
        .expect("storm")
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.call_sm(
        Method::POST,
        "/sim/faults",
        Some(br#"{"outageMs":2000}"#.to_vec()),
    )
    .await
    .expect("outage");
    let r = raising.await.expect("storm task");
    assert_eq!(r["raised"], 1000);
    let first: u64 = r["firstUri"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .and_then(|n| n.parse().ok())
        .expect("first");
    let uris: Vec<String> = (first..first + 1000)
        .map(|n| format!("/rest/alerts/{n}"))
        .collect();
    let by = wait_ticketed(&c, &uris).await;
    let lost = uris.iter().filter(|u| !by.contains_key(*u)).count();
    let duplicated = uris
        .iter()
        .filter(|u| by.get(*u).map(Vec::len).unwrap_or(0) > 1)
        .count();
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "1,000 alerts: lost and duplicated incidents"
    );

    // 6. -l pages through every incident.
    let total = c
        .call_sm(Method::GET, "/sim/incidents", None)
        .await
        .expect("all")["incidents"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    let sm = sim.sm_url.clone().expect("sm");
    let out = std::process::Command::new(OV_TO_SM)
        .args([
            "-a",
            &appliance(&sim.rest_url),
            "-sm",
            sm.trim_start_matches("http://"),
            "-x",
            "",
            "-l",
            "--output",
            "json",
        ])
        .output()
        .expect("run -l");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(total > 3 * 64, "several pages: {total} incidents");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), total);
    // 7. SM answers 401: a clear error and a pause, then the alert is ticketed once SM is fixed.
    c.call_sm(
        Method::POST,
        "/sim/faults",
        Some(br#"{"unauthorized":true}"#.to_vec()),
    )
    .await
    .expect("401s");
    let uri401 = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.auth")}),
    )
    .await;
    assert!(
        l.wait_for("refused our credentials", WAIT),
        "{:?}",
        l.stderr
    );
    c.call_sm(Method::DELETE, "/sim/faults", None)
        .await
        .expect("clear");
    let by = wait_ticketed(&c, std::slice::from_ref(&uri401)).await;
    assert_eq!(by.get(&uri401).map(Vec::len), Some(1));
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "SIGTERM drains and exits 0: {}", r.stderr);
    assert!(
        r.stdout.contains(&format!("{uri401}: ticketed as IM")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Case automatically logged in HPE Service Manager"),
        "the updated alert is printed: {}",
        r.stdout
    );

    // 8. A validation error (SM requires a Title) is recorded as failed, reported, acked — not
    //    retried forever.
    let state3 = temp_dir("ovtosm-invalid");
    let mut l = start(
        sim,
        &dir,
        &state3,
        &format!("{tag}.invalid"),
        &["--sm-title", ""],
    );
    let bad = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.invalid")}),
    )
    .await;
    assert!(l.wait_for("recorded as failed", WAIT), "{:?}", l.stderr);
    assert!(
        l.stderr.iter().any(|line| line.contains("Title")),
        "the reason names the field: {:?}",
        l.stderr
    );
    assert!(!incidents_by_alert(&c).await.contains_key(&bad));
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        !r.stderr.contains("admin123") && !r.stdout.contains("admin123"),
        "the password never shows"
    );
}
