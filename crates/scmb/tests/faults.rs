//! Fault injection: `ov_to_sm` against the simulated appliance and Service Manager while things
//! break, one scenario after another. Each reports alerts raised, incidents created, duplicates,
//! lost, and the time to recover after the fault ends, and fails on any loss or duplicate.
//!
//! CI runs shortened durations; `SCMB_FAULTS_FULL=1 cargo test -p scmb --test faults --
//! --nocapture` runs the full ones (SM down 60 s, REST 503 for 30 s, 10,000 malformed messages).
//! Results and method: docs/RELIABILITY.md.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{appliance, download_certs, Listening};
use reqwest::Method;
use scmb_sim::client::SimClient;
use scmb_sim::testkit::{shared_sim, temp_dir, SimInfo};
use serde_json::{json, Value};

const OV_TO_SM: &str = env!("CARGO_BIN_EXE_ov_to_sm");
const SETTLE: Duration = Duration::from_secs(120);

fn full() -> bool {
    std::env::var("SCMB_FAULTS_FULL").is_ok_and(|v| v == "1")
}

fn start(sim: &SimInfo, dir: &std::path::Path, state: &std::path::Path, tag: &str) -> Listening {
    start_with(sim, dir, state, tag, &[("RUST_LOG", "info")], &[])
}

fn start_with(
    sim: &SimInfo,
    dir: &std::path::Path,
    state: &std::path::Path,
    tag: &str,
    env: &[(&str, &str)],
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
    let args = [
        "-a",
        a.as_str(),
        "-u",
        "Administrator",
        "-sm",
        sm.as_str(),
        "--amqp-port",
        port.as_str(),
        "--cert-dir",
        dir.to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
        "--alert-type",
        pattern.as_str(),
        "--retry-cap-secs",
        "2",
        "--heartbeat",
        "5",
        "--auto-bootstrap",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let mut vars = vec![("SCMB_PASSWORD", "admin123"), ("SM_PASSWORD", "")];
    vars.extend_from_slice(env);
    let mut l = Listening::start_env(OV_TO_SM, &args, &vars);
    assert!(
        l.wait_for("subscribed to the message bus", Duration::from_secs(60)),
        "not subscribed: {:?}",
        l.stderr
    );
    l
}

/// A simulated appliance of the test's own (with Service Manager), for scenarios that change
/// its clock or its faults while the shared one serves the other scenarios.
fn own_sim(name: &str, clock_offset_ms: i64) -> SimInfo {
    let mut cfg = scmb_sim::SimConfig::new(temp_dir(name));
    cfg.rest_port = 0;
    cfg.amqps_port = 0;
    cfg.sm_port = Some(0);
    cfg.keypair_pregenerated = true;
    cfg.ov.eula_pending = false;
    cfg.ov.clock_offset_ms = clock_offset_ms;
    scmb_sim::testkit::start_in_background(cfg)
}

/// Sets Service Manager's faults (`POST /sim/faults`), or clears them all.
async fn sm_faults(c: &SimClient, faults: Option<Value>) {
    match faults {
        Some(f) => c.call_sm(
            Method::POST,
            "/sim/faults",
            Some(serde_json::to_vec(&f).expect("json")),
        ),
        None => c.call_sm(Method::DELETE, "/sim/faults", None),
    }
    .await
    .expect("Service Manager faults");
}

/// Incidents per alert uri (from the `alertUri:` description line), asking again while the SM
/// port is closed by an outage.
async fn incidents(c: &SimClient) -> HashMap<String, usize> {
    loop {
        if let Ok(all) = c.call_sm(Method::GET, "/sim/incidents", None).await {
            let mut by = HashMap::new();
            for inc in all["incidents"].as_array().cloned().unwrap_or_default() {
                if let Some(u) = inc["Description"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find_map(|l| l.strip_prefix("alertUri: "))
                {
                    *by.entry(u.to_string()).or_insert(0) += 1;
                }
            }
            return by;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Raises `count` alerts of `tag`, `rate` a second (0: at once); their uris.
async fn storm(c: &SimClient, count: u64, rate: u64, tag: &str) -> Vec<String> {
    common::storm(
        c,
        json!({"count": count, "rate": rate, "fields": {"alertTypeID": tag}}),
    )
    .await
}

struct Report {
    name: &'static str,
    raised: usize,
    created: usize,
    duplicates: usize,
    lost: usize,
    recover: Duration,
}

/// Fails the test on any alert without its incident, or with two.
fn assert_exactly_once(rep: &Report) {
    assert_eq!(
        (rep.lost, rep.duplicates),
        (0, 0),
        "{}: lost or duplicated (created {})",
        rep.name,
        rep.created
    );
}

/// Waits until every alert has an incident (or SETTLE passes) and reports.
async fn settle(c: &SimClient, name: &'static str, uris: &[String], fault_end: Instant) -> Report {
    let deadline = Instant::now() + SETTLE;
    let by = loop {
        let by = incidents(c).await;
        if uris.iter().all(|u| by.contains_key(u)) || Instant::now() > deadline {
            break by;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let recover = fault_end.elapsed();
    let created: usize = uris.iter().map(|u| by.get(u).copied().unwrap_or(0)).sum();
    let report = Report {
        name,
        raised: uris.len(),
        created,
        duplicates: uris
            .iter()
            .map(|u| by.get(u).copied().unwrap_or(0).saturating_sub(1))
            .sum(),
        lost: uris.iter().filter(|u| !by.contains_key(*u)).count(),
        recover,
    };
    eprintln!(
        "| {} | {} | {} | {} | {} | {:.1} s |",
        report.name,
        report.raised,
        report.created,
        report.duplicates,
        report.lost,
        report.recover.as_secs_f64()
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_duplicated_through_broker_rest_sm_crash_and_garbage_faults() {
    let sim = shared_sim();
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "faults");
    let state = temp_dir("faults-state");
    let tag = format!("Fault.{}", rand::random::<u32>());
    let mut l = start(sim, &dir, &state, &tag);
    eprintln!("| scenario | alerts raised | incidents | duplicates | lost | recovered after the fault |\n|---|---|---|---|---|---|");
    let mut reports = Vec::new();

    // 1. The broker restarted 5 times during a 1,000-alert storm.
    let c2 = c.clone();
    let t = format!("{tag}.broker");
    let raising = tokio::spawn(async move { storm(&c2, 1000, 50, &t).await });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.call(Method::POST, "/sim/broker/restart", None)
            .await
            .expect("restart");
    }
    let uris = raising.await.expect("storm");
    reports.push(
        settle(
            &c,
            "broker restarted 5× during a 1,000-alert storm",
            &uris,
            Instant::now(),
        )
        .await,
    );

    // 2. Service Manager down in the middle of a storm.
    let down = if full() { 60_000 } else { 5_000 };
    let c2 = c.clone();
    let t = format!("{tag}.sm");
    let raising = tokio::spawn(async move { storm(&c2, 500, 100, &t).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sm_faults(&c, Some(json!({"outageMs": down}))).await;
    let fault_end = Instant::now() + Duration::from_millis(down);
    let uris = raising.await.expect("storm");
    tokio::time::sleep_until(fault_end.into()).await;
    reports.push(settle(&c, "Service Manager down mid-storm", &uris, fault_end).await);

    // 3. REST answering 503, and every session expired, mid-run.
    let secs = if full() { 30.0 } else { 5.0 };
    c.call(
        Method::POST,
        "/sim/faults/rest",
        Some(serde_json::to_vec(&json!({"status": 503, "seconds": secs})).expect("json")),
    )
    .await
    .expect("503");
    let fault_end = Instant::now() + Duration::from_secs_f64(secs);
    let uris = storm(&c, 200, 100, &format!("{tag}.rest")).await;
    c.call(Method::POST, "/sim/sessions/expire", None)
        .await
        .expect("expire");
    tokio::time::sleep_until(fault_end.into()).await;
    c.call(Method::POST, "/sim/sessions/expire", None)
        .await
        .expect("expire");
    reports.push(settle(&c, "REST 503 and all sessions expired", &uris, fault_end).await);

    // 4. kill -9 mid-storm, then restart.
    let c2 = c.clone();
    let t = format!("{tag}.kill");
    let raising = tokio::spawn(async move { storm(&c2, 500, 200, &t).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = l.child.kill();
    let _ = l.finish(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restarted = Instant::now();
    let mut l = start(sim, &dir, &state, &tag);
    let uris = raising.await.expect("storm");
    reports.push(settle(&c, "kill -9 mid-storm, then restart", &uris, restarted).await);

    // 5. Malformed messages interleaved with valid alerts.
    let bad_count = if full() { 10_000 } else { 1_000 };
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(), br#"{"changeType":"Created","resourceUri":"/rest/alerts/1","resource":{"severity":"#.to_vec(), vec![],
        vec![b'{'; 10 << 20], br#"{"changeType":5,"resourceUri":"/x"}"#.to_vec(), br#"{"changeType":"Created","resourceUri":null,"resource":null}"#.to_vec(),
        br#"{"changeType":"Created","resourceUri":"/rest/alerts/1","resource":{"severity":"Critical","alertState":"Active","alertTypeID":null},"extra":{"unknown":[1,2,3]}}"#.to_vec(),
        vec![0xc3, 0x28, 0xa0, 0xa1], br#"[]"#.to_vec(),
    ];
    let keys = [
        "scmb.alerts.Created./rest/alerts/424242",
        "scmb.alerts.Bogus",
        "scmb.alerts.Created.",
        "scmb.alerts.Updated./rest/alerts/x y",
    ];
    let mut uris = Vec::new();
    for i in 0..bad_count {
        // The 10 MB body once; the rest small.
        let body = if i == 3 {
            bodies[3].clone()
        } else if i % bodies.len() == 3 {
            bodies[0].clone()
        } else {
            bodies[i % bodies.len()].clone()
        };
        let key = keys[i % keys.len()];
        let resp = c
            .http
            .post(format!(
                "{}/sim/publish?routingKey={}",
                c.rest_url,
                key.replace(' ', "%20")
            ))
            .body(body)
            .send()
            .await
            .expect("publish");
        assert!(resp.status().is_success());
        if i % (bad_count / 100).max(1) == 0 {
            uris.extend(storm(&c, 1, 0, &format!("{tag}.garbage")).await);
        }
    }
    reports.push(
        settle(
            &c,
            "malformed messages interleaved with valid alerts",
            &uris,
            Instant::now(),
        )
        .await,
    );
    assert!(l.wait_for("malformed message rejected", Duration::from_secs(10)));

    // 6. Certificates regenerated on the appliance while connected: the broker restarts with a
    //    new CA, the client certificate on disk is refused; --auto-bootstrap downloads the new
    //    ones over REST (whose own certificate the appliance kept) and carries on.
    c.call(
        Method::POST,
        "/sim/certificates/regenerate?keepRestCertificate=true",
        None,
    )
    .await
    .expect("regenerate");
    let regenerated = Instant::now();
    let uris = storm(&c, 100, 0, &format!("{tag}.certs")).await;
    reports.push(
        settle(
            &c,
            "certificates regenerated while connected",
            &uris,
            regenerated,
        )
        .await,
    );
    assert!(
        l.wait_for("downloading them again", Duration::from_secs(10)),
        "{:?}",
        l.stderr
    );

    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    for rep in &reports {
        assert_exactly_once(rep);
    }
}

/// Issue 13, item 3: the appliance's clock is 15 minutes behind ours. An alert raised while
/// `ov_to_sm` is stopped must still be ticketed at the next start: the catch-up checkpoint is
/// taken from the appliance's own time, never from ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_while_stopped_is_ticketed_when_the_appliances_clock_is_behind_ours() {
    let sim = own_sim("skew", -15 * 60 * 1000);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "skew");
    let state = temp_dir("skew-state");
    let tag = format!("Skew.{}", rand::random::<u32>());
    let already = storm(&c, 3, 0, &format!("{tag}.before")).await;
    let mut l = start_with(
        &sim,
        &dir,
        &state,
        &tag,
        &[("RUST_LOG", "info,scmb=debug")],
        &[],
    );
    // The first start's catch-up tickets what is active and saves its checkpoint.
    assert!(
        l.wait_for("catch-up checkpoint saved", Duration::from_secs(60)),
        "{:?}",
        l.stderr
    );
    let first = settle(
        &c,
        "clock 15 min behind: first start",
        &already,
        Instant::now(),
    )
    .await;
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    let offline = storm(&c, 5, 0, &format!("{tag}.offline")).await;
    let restarted = Instant::now();
    let l = start_with(&sim, &dir, &state, &tag, &[], &[]);
    let rep = settle(
        &c,
        "clock 15 min behind: raised while stopped",
        &offline,
        restarted,
    )
    .await;
    l.terminate();
    let _ = l.finish(Duration::from_secs(40));
    for rep in [first, rep] {
        assert_exactly_once(&rep);
    }
}

/// Issue 13, item 7: SIGTERM while every lane waits on a Service Manager that never answers.
/// The stop is seen at once (the consumer was waiting for a free lane outside the select that
/// watches for it), the work in hand gets the drain time, and the process exits 0 long before
/// Service Manager would answer; the alerts stay unacked for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_seen_while_every_lane_waits_on_a_hanging_service_manager() {
    let sim = own_sim("hang", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "hang");
    let state = temp_dir("hang-state");
    let tag = format!("Hang.{}", rand::random::<u32>());
    let l = start_with(
        &sim,
        &dir,
        &state,
        &tag,
        &[("RUST_LOG", "info")],
        &["--concurrency", "2", "--drain", "2s"],
    );
    sm_faults(&c, Some(json!({"hangMs": 600_000}))).await;
    let _uris = storm(&c, 20, 0, &format!("{tag}.hang")).await;
    // Both lanes hold a create Service Manager never answers; the consumer waits for a lane.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = c
            .call_sm(Method::GET, "/sim/stats", None)
            .await
            .expect("stats");
        if stats["inFlight"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lanes never reached Service Manager"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Instant::now();
    l.terminate();
    let r = l.finish(Duration::from_secs(25));
    let took = stopped.elapsed();
    eprintln!(
        "| SIGTERM while every lane waits on a hanging Service Manager | 20 | - | - | - | exited after {:.1} s |",
        took.as_secs_f64()
    );
    assert_eq!(
        r.code,
        Some(0),
        "did not exit by itself within 25 s of SIGTERM: {}",
        r.stderr
    );
    sm_faults(&c, None).await;
}

/// Issue 13, item 4: alerts clear while the first start's catch-up pages through 3,000 active
/// alerts (the simulator clears 100 of each page it serves, for 10 pages). Paging by offset
/// skips as many unread rows as were cleared before them; paging by `modified` cannot. Every
/// alert still active afterwards must have exactly one incident, and none two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_active_alert_is_skipped_when_alerts_clear_while_the_catch_up_pages() {
    let sim = own_sim("churn", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "churn");
    let state = temp_dir("churn-state");
    let tag = format!("Churn.{}", rand::random::<u32>());
    let uris = storm(&c, 3000, 0, &format!("{tag}.listed")).await;
    c.call(
        Method::POST,
        "/sim/faults/churn",
        Some(serde_json::to_vec(&json!({"clearServed": 100, "pages": 10})).expect("json")),
    )
    .await
    .expect("churn");
    let started = Instant::now();
    let mut l = start_with(&sim, &dir, &state, &tag, &[("RUST_LOG", "info")], &[]);
    assert!(
        l.wait_for("catch-up done", Duration::from_secs(120)),
        "{:?}",
        l.stderr
    );
    // Which alerts are still active now, by the appliance's own answer.
    let mut active = Vec::new();
    for u in &uris {
        let sim_path = u.replace("/rest/alerts/", "/sim/alerts/");
        let a = c.call(Method::GET, &sim_path, None).await.expect("alert");
        if a["alertState"] == json!("Active") {
            active.push(u.clone());
        }
    }
    let cleared = uris.len() - active.len();
    assert!(cleared >= 500, "the churn cleared only {cleared} alerts");
    let rep = settle(
        &c,
        "1,000 alerts cleared while the catch-up pages 3,000",
        &active,
        started,
    )
    .await;
    let by = incidents(&c).await;
    let twice = uris
        .iter()
        .filter(|u| by.get(*u).copied().unwrap_or(0) > 1)
        .count();
    l.terminate();
    let _ = l.finish(Duration::from_secs(40));
    assert_eq!(
        (rep.lost, rep.duplicates, twice),
        (0, 0, 0),
        "{}: lost, duplicated, or an alert with two incidents (created {} for {} still active)",
        rep.name,
        rep.created,
        active.len()
    );
}

/// Waits until every alert's notes carry an incident id (or SETTLE passes): the end of its
/// ticketing, after which no create for it may follow.
async fn wait_noted(c: &SimClient, uris: &[String]) -> usize {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut noted = 0;
        for u in uris {
            let a = common::alert(c, u).await;
            noted += usize::from(!common::notes(&a, "Case automatically logged").is_empty());
        }
        if noted == uris.len() || Instant::now() > deadline {
            return noted;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Issue 13, item 1: Service Manager creates the incident and then answers too late (after
/// the client's timeout), or answers garbage (201 without a body, 200 with an HTML page, JSON
/// without the id). Such an outcome is unknown: `ov_to_sm` must look the incident up by its
/// reference before creating again — in the same process — so each alert gets exactly one
/// incident, and its note carries that incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answered_late_or_with_garbage_is_looked_up_not_created_twice() {
    let sim = own_sim("unknown", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "unknown");
    let state = temp_dir("unknown-state");
    let tag = format!("Unknown.{}", rand::random::<u32>());
    let l = start_with(
        &sim,
        &dir,
        &state,
        &tag,
        &[("RUST_LOG", "info")],
        &["--sm-timeout", "2s"],
    );
    let mut reports = Vec::new();
    for (name, fault) in [
        (
            "create answered after the client's timeout",
            json!({"createLateMs": 8000}),
        ),
        (
            "create answered 201 with an empty body",
            json!({"createGarbage": "empty"}),
        ),
        (
            "create answered 200 with an HTML page",
            json!({"createGarbage": "html"}),
        ),
        (
            "create answered without the incident id",
            json!({"createGarbage": "noId"}),
        ),
    ] {
        let mut fault = fault;
        fault["createFaultCount"] = json!(3);
        sm_faults(&c, Some(fault)).await;
        let started = Instant::now();
        let uris = storm(&c, 3, 0, &format!("{tag}.{}", reports.len())).await;
        let noted = wait_noted(&c, &uris).await;
        assert_eq!(noted, uris.len(), "{name}: not every alert got its note");
        // Anything still to come (a second create) would come within the retry pause.
        tokio::time::sleep(Duration::from_secs(3)).await;
        reports.push(settle(&c, name, &uris, started).await);
        sm_faults(&c, None).await;
    }
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for rep in &reports {
        assert_exactly_once(rep);
    }
}

/// Service Manager stores every incident at once and answers 3 s later, and `ov_to_sm` is
/// killed (SIGKILL) while those answers are pending: the incidents exist, their alerts'
/// records and notes do not. A new alert's first attempt records nothing before its create
/// (the store is checked for that after the kill), so after the restart only the alert's
/// reference, this store's own for the alert, can tell: each alert must end with exactly one
/// incident, the one its note names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_creates_are_answered_late_leaves_one_incident_per_alert() {
    let sim = own_sim("killlate", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "killlate");
    let state = temp_dir("killlate-state");
    let tag = format!("KillLate.{}", rand::random::<u32>());
    let mut l = start(&sim, &dir, &state, &tag);
    sm_faults(&c, Some(json!({"createLateMs": 3000}))).await;
    let started = Instant::now();
    let uris = storm(&c, 20, 0, &tag).await;
    let deadline = Instant::now() + SETTLE;
    loop {
        let made: usize = incidents(&c).await.values().sum();
        if made >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no incident was created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = l.child.kill();
    let _ = l.finish(Duration::from_secs(5));
    let before_restart: usize = incidents(&c).await.values().sum();
    assert!(before_restart >= 4, "{before_restart}");
    {
        // What the killed process left: that it made first attempts, and no record of them.
        let store = scmb::store::Store::open(&state.join("ov_to_sm.redb")).expect("the store");
        assert!(store.meta("first_attempts").expect("meta").is_some());
        let recorded: Vec<String> = store
            .all()
            .expect("records")
            .into_iter()
            .map(|(uri, _)| uri)
            .filter(|u| uris.contains(u))
            .collect();
        // Every create was still unanswered (3 s late): a record could only be a `Creating`.
        assert!(
            recorded.is_empty(),
            "recorded before the create: {recorded:?}"
        );
    }
    sm_faults(&c, None).await;
    let l = start(&sim, &dir, &state, &tag);
    let noted = wait_noted(&c, &uris).await;
    assert_eq!(noted, uris.len(), "not every alert got its note");
    // Anything still to come (a second create) would come within the retry pause.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rep = settle(
        &c,
        "kill -9 while creates are answered late",
        &uris,
        started,
    )
    .await;
    assert_exactly_once(&rep);
    // Each note names the alert's one incident.
    let by_alert = incident_field(&c, "IncidentID").await;
    for u in &uris {
        let a = common::alert(&c, u).await;
        let notes = common::notes(&a, "Case automatically logged");
        assert_eq!(notes.len(), 1, "{u}: {notes:?}");
        let id = by_alert.get(u).cloned().unwrap_or_default();
        assert!(
            !id.is_empty() && notes[0].ends_with(&id),
            "{u}: {notes:?} vs {id}"
        );
    }
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// One field of each incident (`IncidentID`, `Status`) per alert uri (the last incident's, when
/// there are several).
async fn incident_field(c: &SimClient, field: &str) -> HashMap<String, String> {
    let all = c
        .call_sm(Method::GET, "/sim/incidents", None)
        .await
        .expect("incidents");
    let mut by = HashMap::new();
    for inc in all["incidents"].as_array().cloned().unwrap_or_default() {
        if let Some(u) = inc["Description"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|l| l.strip_prefix("alertUri: "))
        {
            by.insert(u.to_string(), inc[field].as_str().unwrap_or("").to_string());
        }
    }
    by
}

/// Issue 13, item 5: alerts cleared (10) or deleted (5) while `ov_to_sm` was stopped. The
/// bus carried their clears to nobody; after the next start's (re)connect, every alert with an
/// open incident is read as it is now, and each of the 15 incidents is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_of_alerts_cleared_or_deleted_while_stopped_are_resolved_at_the_next_start() {
    let sim = own_sim("away", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "away");
    let state = temp_dir("away-state");
    let tag = format!("Away.{}", rand::random::<u32>());
    let l = start_with(&sim, &dir, &state, &tag, &[("RUST_LOG", "info")], &[]);
    let uris = storm(&c, 20, 0, &format!("{tag}.raised")).await;
    assert_eq!(wait_noted(&c, &uris).await, uris.len(), "not all ticketed");
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    for (i, u) in uris.iter().take(15).enumerate() {
        let sim_path = u.replace("/rest/alerts/", "/sim/alerts/");
        if i < 10 {
            c.call(Method::POST, &format!("{sim_path}/clear"), None)
                .await
                .expect("clear");
        } else {
            c.call(Method::DELETE, &sim_path, None)
                .await
                .expect("delete");
        }
    }
    let restarted = Instant::now();
    let l = start_with(&sim, &dir, &state, &tag, &[("RUST_LOG", "info")], &[]);
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        let status = incident_field(&c, "Status").await;
        let resolved = uris[..15]
            .iter()
            .filter(|u| status.get(*u).is_some_and(|s| s == "Resolved"))
            .count();
        if resolved == 15 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let resolved = uris[..15]
        .iter()
        .filter(|u| status.get(*u).is_some_and(|s| s == "Resolved"))
        .count();
    let still_open = uris[15..]
        .iter()
        .filter(|u| status.get(*u).is_some_and(|s| s == "Open"))
        .count();
    eprintln!(
        "| 10 alerts cleared and 5 deleted while stopped | 20 | 20 | 0 | {} unresolved | {:.1} s |",
        15 - resolved,
        restarted.elapsed().as_secs_f64()
    );
    l.terminate();
    let _ = l.finish(Duration::from_secs(40));
    assert_eq!(
        resolved, 15,
        "incidents of alerts cleared or deleted while stopped: {status:?}"
    );
    assert_eq!(
        still_open, 5,
        "the alerts still active keep their incidents open"
    );
}

/// Issue 13, item 2: two instances on separate state (an HA pair) against one appliance and
/// one Service Manager, through a storm. With `--claim` both write an eTag-guarded claim
/// before creating; of two that read an alert at once only one can, so each alert gets
/// exactly one incident (without it, most alerts got two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_claiming_alerts_open_one_incident_per_alert_in_a_storm() {
    let sim = own_sim("pair", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "pair");
    let tag = format!("Pair.{}", rand::random::<u32>());
    let claim: &[&str] = if std::env::var("SCMB_TEST_NO_CLAIM").is_ok() {
        &[]
    } else {
        &["--claim"]
    };
    let a = start_with(
        &sim,
        &dir,
        &temp_dir("pair-a"),
        &tag,
        &[("RUST_LOG", "info")],
        claim,
    );
    let b = start_with(
        &sim,
        &dir,
        &temp_dir("pair-b"),
        &tag,
        &[("RUST_LOG", "info")],
        claim,
    );
    let started = Instant::now();
    let uris = storm(&c, 300, 100, &format!("{tag}.storm")).await;
    let noted = wait_noted(&c, &uris).await;
    // Whatever else either instance would create comes within its claim wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rep = settle(
        &c,
        "two instances (--claim), 300-alert storm",
        &uris,
        started,
    )
    .await;
    let mut conflicts = 0;
    for l in [a, b] {
        l.terminate();
        let r = l.finish(Duration::from_secs(40));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        conflicts += r
            .stderr
            .lines()
            .filter(|x| x.contains("another instance ticketed the same alert"))
            .count();
    }
    eprintln!("alerts reported as ticketed by both instances: {conflicts}");
    assert_eq!(noted, uris.len(), "not every alert got its note");
    assert_exactly_once(&rep);
}

/// Issue 13, item 10: one message whose routing key is not UTF-8, published in the middle of a
/// storm while Service Manager is slow (so hundreds of deliveries are unacked). The AMQP
/// library cannot decode that frame and drops the connection, and with it the exclusive
/// queue's unacked deliveries; the reconnect (counted) and its catch-up must lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_that_is_not_utf8_costs_a_counted_reconnect_and_loses_nothing() {
    let sim = own_sim("badkey", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "badkey");
    let state = temp_dir("badkey-state");
    let tag = format!("BadKey.{}", rand::random::<u32>());
    let mut l = start_with(
        &sim,
        &dir,
        &state,
        &tag,
        &[("RUST_LOG", "info,scmb=debug")],
        &[],
    );
    assert!(
        l.wait_for("catch-up checkpoint saved", Duration::from_secs(60)),
        "{:?}",
        l.stderr
    );
    sm_faults(&c, Some(json!({"latencyMs": 20}))).await;
    let started = Instant::now();
    let mut uris = storm(&c, 300, 0, &format!("{tag}.before")).await;
    let r = c
        .http
        .post(format!(
            "{}/sim/publish?routingKeyHex=73636d622e616c657274732e437265617465642eff2f726573742f616c657274732f31",
            c.rest_url
        ))
        .body(br#"{"changeType":"Created","resourceUri":"/rest/alerts/1"}"#.to_vec())
        .send()
        .await
        .expect("publish");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    uris.extend(storm(&c, 100, 0, &format!("{tag}.after")).await);
    assert!(
        l.wait_for("reconnected to the message bus", Duration::from_secs(60)),
        "the connection was not lost and regained: {:?}",
        l.stderr
    );
    sm_faults(&c, None).await;
    let noted = wait_noted(&c, &uris).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rep = settle(
        &c,
        "a routing key that is not UTF-8 amid 400 alerts",
        &uris,
        started,
    )
    .await;
    l.terminate();
    let r = l.finish(Duration::from_secs(40));
    let lost_connection = r
        .stderr
        .lines()
        .filter(|l| l.contains("not connected to the message bus"))
        .collect::<Vec<_>>();
    eprintln!("connection lost: {lost_connection:?}");
    assert_eq!(noted, uris.len(), "not every alert got its note");
    assert_eq!((rep.lost, rep.duplicates), (0, 0), "{}", rep.name);
}

/// The peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Issue 13, item 9: 20 messages of 20 MB while the only lane waits on a hanging Service
/// Manager. The broker sends up to `prefetch` messages ahead whatever their size, so memory is
/// bounded by bytes in flight only if the prefetch fits the byte budget: with
/// `--max-in-flight-bytes 64000000` and `--max-message-bytes 25000000`, at most 2 of them are
/// sent ahead, whatever the lanes would like (the old behaviour held all 20, over 400 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_while_the_lanes_are_busy_stay_within_the_in_flight_budget() {
    let sim = own_sim("bytes", 0);
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "bytes");
    let state = temp_dir("bytes-state");
    let tag = format!("Bytes.{}", rand::random::<u32>());
    let l = start_with(
        &sim,
        &dir,
        &state,
        &tag,
        &[("RUST_LOG", "info")],
        &[
            "--concurrency",
            "1",
            "--max-message-bytes",
            "25000000",
            "--max-in-flight-bytes",
            "64000000",
        ],
    );
    let pid = l.child.id();
    sm_faults(&c, Some(json!({"hangMs": 600_000}))).await;
    let _ = storm(&c, 1, 0, &format!("{tag}.first")).await;
    // The lane holds that alert's create, which Service Manager never answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .call_sm(Method::GET, "/sim/stats", None)
        .await
        .expect("stats")["inFlight"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "the lane never reached Service Manager"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = peak_rss(pid);
    let padding = "x".repeat(20_000_000);
    for i in 0..20 {
        let uri = format!("/rest/alerts/{}", 900_000 + i);
        let body = json!({"changeType": "Created", "resourceUri": uri, "newState": "Active",
            "resource": {"uri": uri, "severity": "Critical", "alertState": "Active",
                         "alertTypeID": format!("{tag}.big"), "description": padding}});
        let r = c
            .http
            .post(format!(
                "{}/sim/publish?routingKey=scmb.alerts.Created.{uri}",
                c.rest_url
            ))
            .body(serde_json::to_vec(&body).expect("json"))
            .send()
            .await
            .expect("publish");
        assert!(r.status().is_success());
    }
    // What the broker may send ahead arrives within moments; watch the peak for a while.
    let watch_until = Instant::now() + Duration::from_secs(8);
    let mut peak = peak_rss(pid);
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak_rss(pid);
    }
    eprintln!(
        "| 20 messages of 20 MB while the lane is busy | peak RSS {:.0} MB (before {:.0} MB) |",
        peak as f64 / 1e6,
        before as f64 / 1e6
    );
    sm_faults(&c, None).await;
    l.terminate();
    let _ = l.finish(Duration::from_secs(40));
    assert!(
        peak < 150_000_000,
        "peak RSS {peak} bytes: more than the budget's 2 messages held"
    );
}
