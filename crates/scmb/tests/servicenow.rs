//! The ServiceNow sink end to end: `scmb run` (a real process) against the simulated appliance
//! (its REST API and a real RabbitMQ) and a ServiceNow simulator of each test's own (real
//! sockets, faults injected per test). Tests wait on states (the instance's incidents, the
//! alert's notes, `/readyz`), never on log wording.

mod common;

use std::path::Path;
use std::time::Duration;

use common::run::{metric_sum, ScmbRun};
use common::servicenow::{key, noted, Sn, BASIC};
use common::{get, raise, run, Listening};
use reqwest::Method;
use scmb_sim::client::SimClient;
use scmb_sim::servicenow::SnConfig;
use scmb_sim::testkit::{shared_sim, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

/// One test's `scmb run` (see [`ScmbRun`]): its config, state and metrics address.
struct Setup(ScmbRun);

impl std::ops::Deref for Setup {
    type Target = ScmbRun;
    fn deref(&self) -> &ScmbRun {
        &self.0
    }
}

impl Setup {
    /// A config with one appliance (the shared simulator, alerts of a fresh tag only) and a
    /// ServiceNow sink at `sn`; `servicenow` and `incident` are added to its tables.
    fn new(test: &str, sim: &SimInfo, sn: &Sn, servicenow: &str, incident: &str) -> Setup {
        let tag = format!("Test.sn.{test}.{}", rand::random::<u32>());
        let name = format!("{test}-ov");
        Setup(ScmbRun::new(
            test,
            sim,
            &name,
            &tag,
            "",
            &sn.tables(servicenow, incident),
        ))
    }

    /// Starts `scmb run` and waits until it is connected (`/readyz`).
    async fn start(&self, env: &[(&str, &str)]) -> Listening {
        self.0.start(env).await
    }
}

/// Raises a critical alert of `tag`; its uri.
async fn critical(c: &SimClient, tag: &str, extra: Value) -> String {
    let mut fields = json!({"severity": "Critical", "alertTypeID": format!("{tag}.a")});
    if let (Some(f), Some(e)) = (fields.as_object_mut(), extra.as_object()) {
        f.extend(e.clone());
    }
    raise(c, fields).await
}

/// Adds a note to an alert as an operator would (REST: GET for the eTag, PUT the note).
async fn operator_note(c: &SimClient, uri: &str, text: &str) {
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
    let auth = session["sessionID"].as_str().expect("session").to_string();
    let a: Value = c
        .http
        .get(format!("{}{uri}", c.rest_url))
        .header("X-API-Version", "4200")
        .header("auth", &auth)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let r = c
        .http
        .put(format!("{}{uri}", c.rest_url))
        .header("X-API-Version", "4200")
        .header("auth", &auth)
        .json(&json!({"notes": text, "eTag": a["eTag"]}))
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success(), "{}", r.status());
}

fn work_notes(inc: &Value) -> Vec<String> {
    inc["journal"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["element"] == "work_notes")
        .filter_map(|j| j["value"].as_str().map(str::to_string))
        .collect()
}

/// Raises `count` critical alerts of `tag` at once; their uris.
async fn storm(c: &SimClient, tag: &str, count: u64) -> Vec<String> {
    common::storm(
        c,
        json!({"count": count, "rate": 0, "severities": {"Critical": 1},
            "fields": {"alertTypeID": format!("{tag}.storm")}}),
    )
    .await
}

/// Waits until every alert carries an incident number in its notes.
async fn wait_noted(c: &SimClient, uris: &[String]) {
    common::servicenow::wait_noted(c, uris, WAIT).await
}

/// Exactly one incident per alert, carrying its `correlation_id`, and its number the one in
/// the alert's notes (written once).
async fn assert_exactly_once(c: &SimClient, sn: &Sn, name: &str, uris: &[String]) {
    common::servicenow::assert_exactly_once(c, sn, name, uris).await
}

/// The alert as it is now (no session needed).
async fn alert(c: &SimClient, uri: &str) -> Value {
    common::alert(c, uri).await
}

/// Polls `f` until it gives a value, or fails the test naming `what`.
async fn until<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    common::until(what, WAIT, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_alert_opens_one_incident_from_the_template_journals_notes_and_resolves_on_clear(
) {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let ci = sn
        .control("/sim/cmdb_ci", json!({"name": "Encl-template-1"}))
        .await["result"]["sys_id"]
        .as_str()
        .expect("ci")
        .to_string();
    let s = Setup::new(
        "template",
        sim,
        &sn,
        &format!("{BASIC}journal_updates = true\nclose_code = \"Solution provided\"\n"),
        "short_description = \"OneView {severity}: {description}\"\nurgency = { Critical = \"1\" }\nimpact = { Critical = \"1\" }\nsubcategory = \"disk\"\nassignment_group = \"a715cd759f2002002920bde8132e7018\"\ncaller_id = \"5137153cc611227c000bbd1bd8cd2007\"\ncmdb_ci = true\nfields = { contact_type = \"monitoring\", u_ignored = \"{uri}\" }",
    );
    let l = s.start(&[("SN_PASSWORD", "admin")]).await;

    let uri = critical(
        &c,
        &s.tag,
        json!({"description": "Disk 3 failed", "associatedResource": {"resourceName": "Encl-template-1"}}),
    )
    .await;
    // A warning is not admitted: no incident.
    let warning = raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{}.w", s.tag)}),
    )
    .await;
    wait_noted(&c, std::slice::from_ref(&uri)).await;
    assert_exactly_once(&c, &sn, &s.name, std::slice::from_ref(&uri)).await;
    let inc = sn.by_correlation()[&key(&s.name, &uri)][0].clone();
    assert_eq!(inc["short_description"], "OneView Critical: Disk 3 failed");
    assert_eq!(
        (&inc["urgency"], &inc["impact"], &inc["priority"]),
        (&json!("1"), &json!("1"), &json!("1"))
    );
    assert_eq!(
        (&inc["category"], &inc["subcategory"]),
        (&json!("hardware"), &json!("disk"))
    );
    assert_eq!(inc["assignment_group"], "a715cd759f2002002920bde8132e7018");
    assert_eq!(inc["caller_id"], "5137153cc611227c000bbd1bd8cd2007");
    assert_eq!(inc["cmdb_ci"], json!(ci));
    assert_eq!(inc["contact_type"], "monitoring");
    assert_eq!(inc["correlation_display"], "scmb");
    let description = inc["description"].as_str().unwrap_or("");
    assert!(
        description.contains(&uri) && description.contains("Disk 3 failed"),
        "{description}"
    );
    assert_eq!(inc["state"], "1");
    assert!(!sn.by_correlation().contains_key(&key(&s.name, &warning)));
    let number = inc["number"].as_str().expect("number").to_string();
    assert!(number.starts_with("INC"), "{number}");

    // Someone else's note on the alert becomes a work note.
    operator_note(&c, &uri, "Replacement disk ordered").await;
    until("the operator's note as a work note", || async {
        let inc = sn.by_correlation()[&key(&s.name, &uri)][0].clone();
        work_notes(&inc)
            .iter()
            .any(|n| n.contains("Replacement disk ordered"))
            .then_some(())
    })
    .await;

    // Clearing the alert resolves the incident, with the resolution code and notes.
    let id = uri.rsplit('/').next().expect("id");
    c.call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
        .await
        .expect("clear");
    let inc = until("the incident resolved", || async {
        let inc = sn.by_correlation()[&key(&s.name, &uri)][0].clone();
        (inc["state"] == "6").then_some(inc)
    })
    .await;
    assert_eq!(inc["close_code"], "Solution provided");
    let close_notes = inc["close_notes"].as_str().unwrap_or("");
    assert!(
        close_notes.contains(&uri) && close_notes.contains("cleared"),
        "{close_notes}"
    );
    assert!(
        work_notes(&inc).iter().any(|n| n.contains("cleared")),
        "{:?}",
        work_notes(&inc)
    );
    assert_eq!(sn.incidents().len(), 1, "one incident in all");

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("admin123"), "no password in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_that_expire_or_are_revoked_are_renewed_without_duplicates() {
    let sim = shared_sim();
    let c = sim.client();
    // Tokens live 4 s: renewed before they expire, and once more when revoked.
    let sn = Sn::start(SnConfig {
        token_lifetime: Duration::from_secs(4),
        ..SnConfig::default()
    })
    .await;
    let s = Setup::new(
        "oauth",
        sim,
        &sn,
        "client_id = \"scmb-sim\"\nclient_secret_env = \"SN_SECRET\"\n",
        "",
    );
    let l = s.start(&[("SN_SECRET", "secret")]).await;
    let mut uris = vec![critical(&c, &s.tag, json!({})).await];
    wait_noted(&c, &uris).await;

    // Every token revoked: the next call is refused, a new token is fetched, the call goes on.
    let expired = sn.control("/sim/tokens/expire", json!({})).await;
    assert!(expired["expired"].as_u64().unwrap_or(0) >= 1, "{expired}");
    uris.push(critical(&c, &s.tag, json!({})).await);
    wait_noted(&c, &uris).await;

    // Past the token's lifetime, twice: renewed before it lapses.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        uris.push(critical(&c, &s.tag, json!({})).await);
        wait_noted(&c, &uris).await;
    }
    // Clearing works with the token too.
    let id = uris[0].rsplit('/').next().expect("id");
    c.call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
        .await
        .expect("clear");
    until("the first incident resolved", || async {
        (sn.by_correlation()[&key(&s.name, &uris[0])][0]["state"] == "6").then_some(())
    })
    .await;
    assert_exactly_once(&c, &sn, &s.name, &uris).await;
    assert_eq!(sn.incidents().len(), uris.len());

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("secret\""), "no secret in the logs");
    assert!(!r.stderr.contains("Bearer "), "no token in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answered_late_or_with_garbage_is_found_by_its_correlation_id_not_created_twice() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new("late", sim, &sn, &format!("{BASIC}timeout = \"2s\"\n"), "");
    let l = s.start(&[("SN_PASSWORD", "admin")]).await;
    let mut uris = Vec::new();
    // The instance stores each incident, then answers past our timeout, or badly.
    for fault in [
        json!({"createLateMs": 4000, "createFaultCount": 1}),
        json!({"createGarbage": "empty", "createFaultCount": 1}),
        json!({"createGarbage": "html", "createFaultCount": 1}),
        json!({"createGarbage": "noId", "createFaultCount": 1}),
    ] {
        sn.faults(fault.clone());
        let uri = critical(&c, &s.tag, json!({})).await;
        uris.push(uri);
        wait_noted(&c, &uris).await;
        assert_exactly_once(&c, &sn, &s.name, &uris).await;
    }
    assert_eq!(sn.incidents().len(), 4);
    let unknown = metric_sum(
        &get(&format!("{}/metrics", s.metrics)).await.1,
        "scmb_outcomes_unknown_total",
    );
    assert!(
        unknown >= 4,
        "every bad answer was an unknown outcome: {unknown}"
    );
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_create_and_record_and_a_wiped_store_still_give_one_incident_per_alert() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new("kill", sim, &sn, &format!("{BASIC}timeout = \"10s\"\n"), "");
    let env = [("SN_PASSWORD", "admin")];
    let mut l = s.start(&env).await;

    // Every create is stored at once and answered 3 s later: a kill now falls between the
    // incidents' creation and their record.
    sn.faults(json!({"createLateMs": 3000}));
    let uris = storm(&c, &s.tag, 20).await;
    until("incidents stored, their answers pending", || async {
        (sn.incidents().len() >= 4).then_some(())
    })
    .await;
    l.child.kill().expect("SIGKILL");
    let _ = l.finish(WAIT);
    let created = sn.incidents().len();
    assert!(created >= 4, "{created}");
    sn.faults(json!({}));

    let l = s.start(&env).await;
    wait_noted(&c, &uris).await;
    assert_exactly_once(&c, &sn, &s.name, &uris).await;
    assert_eq!(sn.incidents().len(), uris.len());
    // Each incident created before the kill was found by its correlation_id.
    let deduplicated = |text: String| {
        metric_sum(
            &text,
            "scmb_incidents_deduplicated_total{appliance=\"kill-ov\"}",
        )
    };
    let found = deduplicated(get(&format!("{}/metrics", s.metrics)).await.1);
    assert!(found >= created as u64, "{found} found of {created}");
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));

    // While scmb is down, an alert is raised and (as by a crash after its create, with its
    // record and note lost) its incident already exists; then the store is wiped.
    let late = critical(&c, &s.tag, json!({})).await;
    let made = sn
        .http
        .post(format!("{}/api/now/table/incident", sn.url()))
        .basic_auth("admin", Some("admin"))
        .json(&json!({"short_description": "created before the crash", "correlation_id": key(&s.name, &late)}))
        .send()
        .await
        .expect("create by hand");
    assert_eq!(made.status().as_u16(), 201);
    std::fs::remove_file(s.store()).expect("wipe the store");
    let l = s.start(&env).await;
    let all: Vec<String> = uris.iter().cloned().chain([late.clone()]).collect();
    wait_noted(&c, &all).await;
    assert_exactly_once(&c, &sn, &s.name, &all).await;
    assert_eq!(sn.incidents().len(), all.len(), "nothing created again");
    let by = sn.by_correlation();
    assert_eq!(
        by[&key(&s.name, &late)][0]["short_description"],
        "created before the crash"
    );
    let found = deduplicated(get(&format!("{}/metrics", s.metrics)).await.1);
    assert!(found >= all.len() as u64, "{found} found of {}", all.len());
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_an_outage_lose_nothing_and_duplicate_nothing() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new(
        "storms",
        sim,
        &sn,
        &format!("{BASIC}timeout = \"3s\"\n"),
        "",
    );
    let l = s.start(&[("SN_PASSWORD", "admin")]).await;

    // A 429 storm: the next 25 calls refused, each saying to come back in 1 s.
    sn.faults(json!({"rateLimitNext": 25, "retryAfterS": 1}));
    let mut uris = storm(&c, &s.tag, 10).await;
    wait_noted(&c, &uris).await;
    assert_exactly_once(&c, &sn, &s.name, &uris).await;
    let metrics = get(&format!("{}/metrics", s.metrics)).await.1;
    assert!(
        metric_sum(
            &metrics,
            "scmb_retries_total{appliance=\"storms-ov\",target=\"servicenow\"}"
        ) >= 1,
        "{metrics}"
    );

    // The instance goes away (its port closed) for 6 s while alerts keep coming.
    sn.faults(json!({"outageMs": 6000}));
    uris.extend(storm(&c, &s.tag, 10).await);
    wait_noted(&c, &uris).await;
    assert_exactly_once(&c, &sn, &s.name, &uris).await;
    assert_eq!(sn.incidents().len(), uris.len());
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_the_work_with_a_message_and_it_resumes_once_fixed() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new("refused", sim, &sn, BASIC, "");
    let mut l = s.start(&[("SN_PASSWORD", "admin")]).await;

    sn.faults(json!({"unauthorized": true}));
    let uri = critical(&c, &s.tag, json!({})).await;
    // The instance is asked and refuses, again and again; nothing is created meanwhile.
    let asked = || async { sn.stats().await["requests"].as_u64().unwrap_or(0) };
    let before = asked().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(asked().await >= before + 2, "asked again after a pause");
    assert!(sn.incidents().is_empty());
    assert!(noted(&alert(&c, &uri).await).is_empty());
    // The pause says which settings to fix.
    assert!(
        l.wait_for("servicenow.user and password_env", Duration::from_secs(10)),
        "{:?}",
        l.stderr
    );

    sn.faults(json!({}));
    wait_noted(&c, std::slice::from_ref(&uri)).await;
    assert_exactly_once(&c, &sn, &s.name, std::slice::from_ref(&uri)).await;
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("\"admin\""), "no password in the logs");
}

/// `scmb check`'s ServiceNow line for a config with the `servicenow` table given.
fn check_line(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join(format!("check-{}.toml", rand::random::<u32>()));
    std::fs::write(&path, config).expect("config");
    let r = run(
        &["check", "--config", path.to_str().expect("utf8")],
        &[
            ("OV_PASSWORD", "admin123"),
            ("SN_PASSWORD", "wrong"),
            ("SN_GOOD", "admin"),
            ("SN_SECRET", "secret"),
        ],
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(" servicenow "))
        .unwrap_or_else(|| panic!("no servicenow line: {r:?}"))
        .to_string();
    (r.code, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_proves_the_instance_and_credentials_without_creating_anything() {
    let sim = shared_sim();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new("check", sim, &sn, BASIC, "");
    let base = std::fs::read_to_string(&s.config).expect("config");
    let with = |creds: &str| base.replace(BASIC, creds);

    let (code, line) = check_line(
        &s.dir,
        &with("user = \"admin\"\npassword_env = \"SN_GOOD\"\n"),
    );
    assert!(
        line.starts_with("ok") && line.contains("accepted user admin"),
        "{line}"
    );
    assert_eq!(code, Some(0), "{line}");
    let (code, line) = check_line(
        &s.dir,
        &with("client_id = \"scmb-sim\"\nclient_secret_env = \"SN_SECRET\"\n"),
    );
    assert!(
        line.starts_with("ok") && line.contains("OAuth client scmb-sim"),
        "{line}"
    );
    assert_eq!(code, Some(0), "{line}");

    // Refused credentials: exit 3, the settings to fix named, the secret never shown.
    let (code, line) = check_line(&s.dir, &base);
    assert!(line.starts_with("FAIL") && line.contains("401"), "{line}");
    assert!(line.contains("servicenow.user"), "{line}");
    assert!(!line.contains("wrong"), "{line}");
    assert_eq!(code, Some(3), "{line}");
    let (code, line) = check_line(
        &s.dir,
        &with("client_id = \"scmb-sim\"\nclient_secret_env = \"SN_PASSWORD\"\n"),
    );
    assert!(line.starts_with("FAIL") && line.contains("OAuth"), "{line}");
    assert_eq!(code, Some(3), "{line}");
    assert!(sn.incidents().is_empty(), "a check creates nothing");
}

/// Clears an alert as the system would.
async fn clear(c: &SimClient, uri: &str) {
    let id = uri.rsplit('/').next().expect("id");
    c.call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
        .await
        .expect("clear");
}

/// The alert's change-log notes.
fn notes(a: &Value) -> Vec<String> {
    a["changeLog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["notes"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_of_one_resource_share_one_incident_resolved_with_the_last_and_reopened_by_the_next()
{
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new(
        "per-resource",
        sim,
        &sn,
        &format!("{BASIC}correlate = \"resource\"\nconcurrency = 16\n"),
        "",
    );
    let _l = s.start(&[("SN_PASSWORD", "admin")]).await;
    let res = format!("/rest/server-hardware/{}", rand::random::<u32>());
    let on = |r: &str| {
        json!({"resourceUri": r, "associatedResource": {"resourceUri": r,
            "resourceName": "Server 7", "resourceCategory": "server-hardware"}})
    };
    // A burst on one server, worked on in parallel lanes: one incident.
    let mut fields = on(&res);
    fields["alertTypeID"] = json!(format!("{}.burst", s.tag));
    let body = json!({"count": 20, "rate": 0, "severities": {"Critical": 1}, "fields": fields});
    let uris = common::storm(&c, body).await;
    wait_noted(&c, &uris).await;
    let incident = || sn.by_correlation().get(&key(&s.name, &res)).cloned();
    let incs = incident().expect("the server's incident");
    assert_eq!(incs.len(), 1, "one incident for the server");
    let number = incs[0]["number"].as_str().expect("number").to_string();
    for u in &uris {
        assert_eq!(noted(&alert(&c, u).await), vec![number.clone()], "{u}");
    }
    let joined = |inc: &Value| {
        work_notes(inc)
            .iter()
            .filter(|n| n.starts_with("Another OneView alert on Server 7"))
            .count()
    };
    assert_eq!(
        joined(&incs[0]),
        19,
        "each other alert joined with a work note"
    );

    // Another server's alert has an incident of its own.
    let other_res = format!("/rest/server-hardware/{}", rand::random::<u32>());
    let other = critical(&c, &s.tag, on(&other_res)).await;
    wait_noted(&c, std::slice::from_ref(&other)).await;
    assert_eq!(sn.by_correlation()[&key(&s.name, &other_res)].len(), 1);

    // Half the alerts cleared: each journaled, the incident still open.
    for u in &uris[..10] {
        clear(&c, u).await;
    }
    let cleared_lines = |inc: &Value| {
        work_notes(inc)
            .iter()
            .filter(|n| n.contains("was cleared"))
            .count()
    };
    let inc = until("ten clears journaled", || async {
        let inc = incident()?.first()?.clone();
        (cleared_lines(&inc) >= 10).then_some(inc)
    })
    .await;
    assert_ne!(inc["state"], "6", "resolved while alerts of it are active");
    // The other ten at once (parallel lanes): the last one resolves it.
    for u in &uris[10..] {
        clear(&c, u).await;
    }
    let inc = until("the incident resolved", || async {
        let inc = incident()?.first()?.clone();
        (inc["state"] == "6").then_some(inc)
    })
    .await;
    assert_eq!(cleared_lines(&inc), 20);

    // A new alert on the server reopens it; no second incident.
    let again = critical(&c, &s.tag, on(&res)).await;
    wait_noted(&c, std::slice::from_ref(&again)).await;
    assert_eq!(noted(&alert(&c, &again).await), vec![number.clone()]);
    let incs = incident().expect("incident");
    assert_eq!(incs.len(), 1, "still one incident for the server");
    assert_eq!(incs[0]["state"], "2", "reopened (In Progress)");
    assert_eq!(joined(&incs[0]), 20);
    assert_eq!(sn.incidents().len(), 2, "two servers, two incidents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_resolved_in_servicenow_clears_its_alert_and_never_overwrites_a_racing_change()
{
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start(SnConfig::default()).await;
    let s = Setup::new(
        "way-back",
        sim,
        &sn,
        &format!("{BASIC}clear_alerts = true\npoll_interval = \"1s\"\n"),
        "",
    );
    let _l = s.start(&[("SN_PASSWORD", "admin")]).await;
    let a = critical(&c, &s.tag, json!({})).await;
    let b = critical(&c, &s.tag, json!({})).await;
    let open = critical(&c, &s.tag, json!({})).await;
    let uris = [a.clone(), b.clone(), open.clone()];
    wait_noted(&c, &uris).await;
    let number = |u: &str| {
        sn.by_correlation()[&key(&s.name, u)][0]["number"]
            .as_str()
            .expect("number")
            .to_string()
    };
    let ours = |al: &Value| {
        notes(al)
            .iter()
            .any(|n| n.starts_with("Cleared by scmb: ServiceNow incident"))
    };

    // A person resolves a's incident: the alert is cleared, with a note saying why.
    let na = number(&a);
    sn.control(
        &format!("/sim/incidents/{na}/resolve"),
        json!({"user": "jane.doe", "close_notes": "Replaced the fan"}),
    )
    .await;
    let cleared = until("a cleared in OneView", || async {
        let al = alert(&c, &a).await;
        (al["alertState"] == "Cleared").then_some(al)
    })
    .await;
    assert!(ours(&cleared), "{:?}", notes(&cleared));
    assert!(
        notes(&cleared).iter().any(|n| n.contains(&na)),
        "the note names the incident"
    );
    // Its clear comes back on the bus: journaled, and the person's resolution kept.
    let inc = until("the clear journaled", || async {
        let inc = sn.by_correlation()[&key(&s.name, &a)][0].clone();
        work_notes(&inc)
            .iter()
            .any(|n| n.contains("was cleared"))
            .then_some(inc)
    })
    .await;
    assert_eq!(inc["state"], "6");
    assert_eq!(inc["close_notes"], "Replaced the fan");
    let metrics = get(&format!("{}/metrics", s.metrics)).await.1;
    assert_eq!(metric_sum(&metrics, "scmb_sink_alerts_cleared_total"), 1);

    // b's incident resolved while the system clears b itself, the instant before our write:
    // the write (guarded by the eTag we read) is refused, b read again and left as the
    // system made it.
    let _ = c
        .call(
            Method::POST,
            "/sim/faults/race",
            Some(
                serde_json::to_vec(
                    &json!({"puts": 1, "changes": {"alertState": "Cleared"}, "alert": b}),
                )
                .expect("json"),
            ),
        )
        .await
        .expect("race");
    let nb = number(&b);
    sn.control(&format!("/sim/incidents/{nb}/resolve"), json!({}))
        .await;
    until("b's clear journaled", || async {
        let inc = sn.by_correlation()[&key(&s.name, &b)][0].clone();
        work_notes(&inc)
            .iter()
            .any(|n| n.contains("was cleared"))
            .then_some(())
    })
    .await;
    let bl = alert(&c, &b).await;
    assert_eq!(bl["alertState"], "Cleared");
    assert_eq!(bl["clearedByUser"], "System", "the system's clear kept");
    assert!(!ours(&bl), "no clear of ours on b: {:?}", notes(&bl));

    // An incident still open leaves its alert active.
    assert_eq!(alert(&c, &open).await["alertState"], "Active");
    let metrics = get(&format!("{}/metrics", s.metrics)).await.1;
    assert_eq!(metric_sum(&metrics, "scmb_sink_alerts_cleared_total"), 1);
}
