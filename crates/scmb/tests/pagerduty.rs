//! The PagerDuty sink end to end: `scmb run` (a real process) against the simulated appliance
//! (its REST API and its real RabbitMQ, shared by the tests of this binary) and a PagerDuty
//! Events API simulator of each test's own (so that its faults touch no other test). Every
//! wait is on a state — PagerDuty's incidents, the alert's notes, a metric — never on a log
//! line, and every test checks the end state: one incident per alert, one note per alert.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pagerduty::{incidents, pd_notes, table};
use common::run::ScmbRun;
use common::{appliance, get, metric, raise, Listening};
use reqwest::Method;
use scmb_sim::pagerduty::{PdConfig, PdFaults, PdState};
use scmb_sim::testkit::{serve_pagerduty, shared_sim, Served, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const NAME: &str = "east";
/// The routing key of every alert (unless `routing_keys` says otherwise).
const KEY: &str = "0123456789abcdef0123456789abcdef";
/// The routing key of critical alerts in the test that routes by severity.
const CRITICAL_KEY: &str = "CRIT0123456789abcdef0123456789ab";
/// The keys' variables, for `scmb run` and `scmb check`.
const ENV: [(&str, &str); 2] = [("PD_KEY", KEY), ("PD_KEY_CRITICAL", CRITICAL_KEY)];

/// One test's `scmb run` (see [`ScmbRun`]): its directory, config file, metrics address and
/// alert type.
struct Setup(ScmbRun);

impl std::ops::Deref for Setup {
    type Target = ScmbRun;
    fn deref(&self) -> &ScmbRun {
        &self.0
    }
}

impl Setup {
    /// Writes a config paging `pd` for the alerts of a fresh alert type; `filter` and `extra`
    /// are added to `[appliance.filter]` and `[appliance.pagerduty]`.
    fn new(name: &str, sim: &SimInfo, pd: &str, filter: &str, extra: &str) -> Setup {
        let tag = format!("pd{}{}", name.replace('-', ""), rand::random::<u32>());
        Setup(ScmbRun::new(
            name,
            sim,
            NAME,
            &tag,
            filter,
            &table(pd, extra),
        ))
    }

    fn command(&self, args: &[&str]) -> Command {
        self.0.command(args, &ENV)
    }

    /// Starts `scmb run` and waits until its bus is connected (`/readyz`).
    async fn run(&self) -> Listening {
        self.0.start(&ENV).await
    }

    /// The value of a series of this appliance, e.g. `scmb_acks_total`, or with the
    /// pagerduty sink's label, e.g. `scmb_sink_incidents_created_total`.
    async fn metric(&self, name: &str) -> u64 {
        pd_metric(&self.0, name).await
    }
}

/// The value of a series of `run`'s appliance (see [`Setup::metric`]).
async fn pd_metric(run: &ScmbRun, name: &str) -> u64 {
    let text = run.metrics_text().await;
    let labels = if name.starts_with("scmb_sink_") {
        format!("{{appliance=\"{}\",sink=\"pagerduty\"}}", run.name)
    } else if name == "scmb_retries_total" {
        format!("{{appliance=\"{}\",target=\"pagerduty\"}}", run.name)
    } else {
        format!("{{appliance=\"{}\"}}", run.name)
    };
    metric(&text, &format!("{name}{labels}"))
}

/// Polls `check` every 200 ms until it holds or [`WAIT`] passes.
async fn wait_until<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::wait_until(WAIT, check).await
}

/// A PagerDuty of the test's own.
async fn pagerduty(cfg: PdConfig) -> Served<PdState> {
    serve_pagerduty(cfg).await
}

/// The alert as the appliance has it now.
async fn alert(sim: &SimInfo, uri: &str) -> Value {
    common::alert(&sim.client(), uri).await
}

/// Raises `count` alerts of `tag` at once; their uris.
async fn storm(sim: &SimInfo, count: u64, tag: &str) -> Vec<String> {
    common::storm(
        &sim.client(),
        json!({"count": count, "rate": 0, "fields": {"alertTypeID": tag}}),
    )
    .await
}

/// Waits until every alert has an incident and its note; then checks there is exactly one of
/// each, the incident still open.
async fn assert_paged_exactly_once(sim: &SimInfo, pd: &Served<PdState>, uris: &[String]) {
    common::pagerduty::assert_paged_exactly_once(&sim.client(), pd, NAME, uris, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_alert_triggers_one_incident_with_the_mapped_fields_and_a_note_and_its_clear_resolves_it(
) {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    let s = &Setup::new(
        "pd-fields",
        sim,
        &pd.url,
        "severities = [\"Critical\", \"Warning\"]",
        "[appliance.pagerduty.routing_keys]\nCritical = { routing_key_env = \"PD_KEY_CRITICAL\" }",
    );
    let l = s.run().await;
    let c = sim.client();
    let critical = &raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{}.psu", s.tag),
            "description": "The power supply in bay 4 failed.", "correctiveAction": "Replace it."}),
    )
    .await;
    let warning = &raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{}.fan", s.tag),
            "description": "A fan is slow."}),
    )
    .await;
    assert_paged_exactly_once(sim, pd, &[critical.clone(), warning.clone()]).await;

    // The critical incident, field by field, on the critical service.
    let by = incidents(pd);
    let inc = &by[critical][0];
    assert_eq!(inc["routingKey"], CRITICAL_KEY, "routed by severity");
    assert_eq!(inc["severity"], "critical");
    assert_eq!(inc["summary"], "Encl1: The power supply in bay 4 failed.");
    assert_eq!(inc["source"], "Encl1");
    assert_eq!(inc["component"], "enclosures");
    assert_eq!(inc["group"], NAME);
    assert_eq!(inc["class"], format!("{}.psu", s.tag).as_str());
    let d = &inc["customDetails"];
    assert_eq!(d["description"], "The power supply in bay 4 failed.");
    assert_eq!(d["correctiveAction"], "Replace it.");
    assert_eq!(d["appliance"], NAME);
    let sent = &inc["events"][0]["body"];
    assert_eq!(sent["event_action"], "trigger");
    let a = alert(sim, critical).await;
    assert_eq!(
        sent["payload"]["timestamp"], a["created"],
        "the alert's time"
    );
    assert_eq!(
        sent["links"][0]["href"],
        format!(
            "https://{}/#/activity/r{critical}",
            appliance(&sim.rest_url)
        )
        .as_str()
    );
    assert_eq!(sent["client"], format!("HPE OneView ({NAME})").as_str());
    // The warning one, mapped and on the default service.
    let inc = &by[warning][0];
    assert_eq!(
        (inc["severity"].as_str(), inc["routingKey"].as_str()),
        (Some("warning"), Some(KEY))
    );
    assert_eq!(s.metric("scmb_sink_incidents_created_total").await, 2);

    // Cleared on the appliance: resolved on the service it was triggered on.
    c.call(
        Method::POST,
        &format!(
            "{}/clear",
            critical.replace("/rest/alerts/", "/sim/alerts/")
        ),
        Some(b"{}".to_vec()),
    )
    .await
    .expect("clear");
    let resolved =
        wait_until(|| async move { incidents(pd)[critical][0]["status"] == "resolved" }).await;
    assert!(resolved, "{:?}", incidents(pd)[critical]);
    assert_eq!(incidents(pd)[critical][0]["resolvedBy"], "events API");
    assert_eq!(incidents(pd)[warning][0]["status"], "triggered");
    assert!(
        wait_until(|| async move { s.metric("scmb_sink_incidents_resolved_total").await == 1 })
            .await
    );
    assert_eq!(
        pd_notes(&alert(sim, critical).await).len(),
        1,
        "no note for the resolve"
    );

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        !r.stderr.contains(KEY) && !r.stderr.contains(CRITICAL_KEY),
        "keys never logged"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_from_pagerduty_is_a_permanent_failure_recorded_counted_acked_shown_by_check_and_not_retried(
) {
    let sim = shared_sim();
    // PagerDuty knows another key only: ours is refused, 400 "Invalid routing key".
    let pd = &pagerduty(PdConfig {
        routing_keys: vec!["ffffffffffffffffffffffffffffffff".into()],
        ..PdConfig::default()
    })
    .await;
    let s = &Setup::new("pd-400", sim, &pd.url, "", "");
    let l = s.run().await;
    let c = sim.client();
    let stats = || async move { get(&format!("{}/sim/stats", pd.url)).await.1 };
    let requests = |text: String| {
        serde_json::from_str::<Value>(&text).expect("stats")["requests"]
            .as_u64()
            .expect("requests")
    };

    let first = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    assert!(
        wait_until(|| async move { s.metric("scmb_sink_incidents_failed_total").await == 1 }).await,
        "the refusal is counted"
    );
    // Sent once: a refusal is final, the retry counter never moved.
    assert_eq!(requests(stats().await), 1);
    // A second alert, refused too: by the time it is, the first was still not sent again.
    let second = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    assert!(
        wait_until(|| async move { s.metric("scmb_sink_incidents_failed_total").await == 2 }).await
    );
    assert_eq!(requests(stats().await), 2, "each refused event sent once");
    assert_eq!(s.metric("scmb_retries_total").await, 0);
    // Acked: every delivery received was acked (none held back by the failures).
    assert!(
        wait_until(|| async move {
            s.metric("scmb_acks_total").await >= s.metric("scmb_messages_received_total").await
        })
        .await,
        "every delivery acked"
    );
    assert!(pd.state.incidents().is_empty());
    for u in [first, second] {
        assert!(
            pd_notes(&alert(sim, u).await).is_empty(),
            "no note for a refused alert"
        );
    }

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("Invalid routing key"),
        "PagerDuty's errors are logged: {}",
        r.stderr
    );

    // Recorded in the store: `scmb check` shows it, with PagerDuty's errors.
    let out = s
        .command(&["check", "--config", s.config.to_str().expect("utf8")])
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("pagerduty store"))
        .unwrap_or_else(|| panic!("no store line: {stdout}"));
    assert!(line.starts_with("WARN"), "{line}");
    assert!(
        line.contains("2 alert(s) refused by PagerDuty")
            && line.contains(second.as_str())
            && line.contains("Invalid routing key"),
        "{line}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning does not fail: {stdout}"
    );
    assert!(s.store().exists());
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_server_errors_late_answers_and_an_outage_are_retried_into_exactly_one_incident_per_alert(
) {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    // A 1 s timeout, so that answers held 2.5 s are given up on (and sent again).
    let s = &Setup::new("pd-retry", sim, &pd.url, "", "timeout = \"1s\"");
    let l = s.run().await;

    // A burst of 429s, a third of the calls failing 503, and three events taken but answered
    // too late: each is sent again, and the dedup key keeps it one incident.
    pd.state.set_faults(PdFaults {
        throttle_next: 6,
        error_rate: 0.3,
        error_status: Some(503),
        create_late_ms: 2500,
        create_fault_count: Some(3),
        ..PdFaults::default()
    });
    let burst = storm(sim, 10, &s.tag).await;
    assert_paged_exactly_once(sim, pd, &burst).await;
    assert!(s.metric("scmb_retries_total").await >= 6, "retried");
    let repeats = pd
        .state
        .events()
        .iter()
        .filter(|e| e.outcome == "deduplicated")
        .count();
    assert!(
        repeats >= 1,
        "a late answer's event was sent again and deduplicated"
    );

    // PagerDuty down (its port closed) for 4 s while alerts come: nothing is lost.
    pd.state.set_faults(PdFaults {
        outage_ms: 4000,
        ..PdFaults::default()
    });
    let during = storm(sim, 5, &s.tag).await;
    assert_paged_exactly_once(sim, pd, &during).await;
    assert_eq!(
        s.metric("scmb_sink_incidents_created_total").await,
        15,
        "one incident per alert, none twice"
    );

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// `concurrency = 3`: with every call held 1.5 s, PagerDuty sees exactly 3 events in flight at
/// the peak of a 12-alert storm — never more (the default 16 lanes would send all 12 at once),
/// and no fewer (the lanes are all used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_the_events_in_flight_at_pagerduty() {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    let s = &Setup::new("pd-lanes", sim, &pd.url, "", "concurrency = 3");
    let l = s.run().await;
    pd.state.set_faults(PdFaults {
        latency_ms: 1500,
        ..PdFaults::default()
    });
    let in_flight = || async move {
        let stats: Value =
            serde_json::from_str(&get(&format!("{}/sim/stats", pd.url)).await.1).expect("stats");
        stats["inFlight"].as_u64().expect("inFlight")
    };
    let uris = storm(sim, 12, &s.tag).await;
    let peak = std::cell::Cell::new(0);
    let all_paged = wait_until(|| async {
        peak.set(peak.get().max(in_flight().await));
        pd.state.incidents().len() == uris.len()
    })
    .await;
    assert!(all_paged, "{:?}", incidents(pd));
    assert_eq!(peak.get(), 3, "events in flight at PagerDuty at the peak");
    pd.state.set_faults(PdFaults::default());
    assert_paged_exactly_once(sim, pd, &uris).await;

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_storm_then_a_restart_loses_nothing_opens_no_duplicate_and_notes_each_alert_once(
) {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    let s = &Setup::new("pd-kill", sim, &pd.url, "", "");
    let mut l = s.run().await;
    // Slow enough that the kill lands while the storm is being paged.
    pd.state.set_faults(PdFaults {
        latency_ms: 100,
        ..PdFaults::default()
    });
    let uris = storm(sim, 100, &s.tag).await;
    let started = wait_until(|| async move { pd.state.incidents().len() >= 15 }).await;
    assert!(started, "paging started");
    let _ = l.child.kill();
    let _ = l.child.wait();
    let before = pd.state.incidents().len();
    assert!(before < 100, "killed mid-storm ({before} paged)");

    pd.state.set_faults(PdFaults::default());
    let l = s.run().await;
    assert_paged_exactly_once(sim, pd, &uris).await;
    assert_eq!(
        pd.state.incidents().len(),
        100,
        "no incident but the storm's"
    );

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_store_pages_nothing_twice_and_writes_no_second_note() {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    let s = &Setup::new("pd-wiped", sim, &pd.url, "", "");
    let l = s.run().await;
    let uris = storm(sim, 20, &s.tag).await;
    assert_paged_exactly_once(sim, pd, &uris).await;
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    let events = pd.state.events().len();

    // The state store lost (a new disk, a restore that missed it): the first start catches up
    // on every active alert again, finds each one's note, and sends nothing.
    std::fs::remove_file(s.store()).expect("wipe the store");
    let l = s.run().await;
    let all_seen =
        wait_until(
            || async move { s.metric("scmb_sink_incidents_deduplicated_total").await == 20 },
        )
        .await;
    assert!(all_seen, "each alert found already paged");
    assert_eq!(pd.state.events().len(), events, "no event sent again");
    assert_paged_exactly_once(sim, pd, &uris).await;
    assert_eq!(s.metric("scmb_sink_incidents_created_total").await, 0);

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_cleared_or_deleted_while_scmb_was_stopped_are_resolved_at_the_next_start() {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    let s = &Setup::new("pd-missed", sim, &pd.url, "", "");
    let l = s.run().await;
    let uris = &storm(sim, 3, &s.tag).await;
    assert_paged_exactly_once(sim, pd, uris).await;
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));

    // While nobody listens: one alert cleared, one deleted, one left active.
    let c = sim.client();
    let path = |u: &str| u.replace("/rest/alerts/", "/sim/alerts/");
    c.call(
        Method::POST,
        &format!("{}/clear", path(&uris[0])),
        Some(b"{}".to_vec()),
    )
    .await
    .expect("clear");
    c.call(Method::DELETE, &path(&uris[1]), None)
        .await
        .expect("delete");

    let l = s.run().await;
    let resolved = wait_until(|| async move {
        let by = incidents(pd);
        by[&uris[0]][0]["status"] == "resolved" && by[&uris[1]][0]["status"] == "resolved"
    })
    .await;
    assert!(resolved, "{:?}", incidents(pd));
    assert_eq!(incidents(pd)[&uris[2]][0]["status"], "triggered");
    assert_eq!(s.metric("scmb_sink_incidents_resolved_total").await, 2);
    assert_eq!(pd.state.incidents().len(), 3, "nothing triggered again");

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A proxy that answers every request `404` and records the request lines it got.
fn recording_proxy() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
            let _ = tx.send(line.trim_end().to_string());
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (format!("http://{addr}"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verifies_reachability_through_the_environments_proxy_and_the_key_form_and_creates_nothing(
) {
    let sim = shared_sim();
    let pd = &pagerduty(PdConfig::default()).await;
    let s = &Setup::new("pd-check", sim, &pd.url, "", "");
    let (proxy, seen) = recording_proxy();
    let out = s
        .command(&["check", "--config", s.config.to_str().expect("utf8")])
        .env("HTTP_PROXY", &proxy)
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("pagerduty ") && !l.contains("store"))
        .unwrap_or_else(|| panic!("no pagerduty line: {stdout}"));
    assert!(line.starts_with("ok"), "{line}");
    assert!(
        line.contains("answered (HTTP 404, plain HTTP)")
            && line.contains("routing keys well-formed")
            && line.contains("not verified: that PagerDuty accepts them"),
        "{line}"
    );
    // $HTTP_PROXY carried the request: the proxy got the absolute URL.
    let got = seen
        .recv_timeout(Duration::from_secs(5))
        .expect("through the proxy");
    assert_eq!(got, format!("GET {}/ HTTP/1.1", pd.url));
    let store = stdout
        .lines()
        .find(|l| l.contains("pagerduty store"))
        .unwrap_or_else(|| panic!("no store line: {stdout}"));
    assert!(
        store.starts_with("ok") && store.contains("nothing paged"),
        "{store}"
    );
    assert!(!s.store().exists(), "the check created no store");
    assert!(pd.state.events().is_empty() && pd.state.incidents().is_empty());
    assert!(!stdout.contains(KEY));

    // A malformed key is refused before anything is sent.
    let out = s
        .command(&["check", "--config", s.config.to_str().expect("utf8")])
        .env("PD_KEY", "not-a-key")
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL")
            && l.contains("pagerduty.routing_key")
            && l.contains("32 letters and digits")),
        "{stdout}"
    );
    assert!(!stdout.contains("not-a-key"));
    let _ = std::fs::remove_dir_all(&s.dir);
}
