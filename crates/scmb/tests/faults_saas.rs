//! Fault injection for the SaaS sinks, ServiceNow and PagerDuty: `scmb run` (a real process,
//! with a config file) against the simulated appliance (its REST API and its real RabbitMQ,
//! shared by the tests of this binary) and a sink simulator of each test's own, while the
//! sink breaks in the middle of a storm of alerts:
//! - the sink down for 60 s (its port closed, its open connections cut), then back;
//! - a 429 storm: every call refused with `Retry-After: 1` for 15 s;
//! - `kill -9` of scmb, then a restart on the same store;
//!
//! and two `scmb run` on stores of their own, on the same appliance and sink (an HA pair).
//! Each scenario ends when every alert carries the sink's note (the last step of its work, so
//! nothing of it can follow), and fails on any alert without its incident (or PagerDuty
//! incident), with two, or with two notes. Each prints a row like `faults.rs`'s (alerts raised,
//! incidents, duplicates, lost, time to recover after the fault) for docs/RELIABILITY.md.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::pagerduty::{incidents as pd_incidents, pd_notes};
use common::run::{metric_sum, ScmbRun};
use common::servicenow::{key, noted, Sn, BASIC};
use common::{alert, wait_until, Listening};
use scmb_sim::client::SimClient;
use scmb_sim::pagerduty::{PdConfig, PdFaults, PdState};
use scmb_sim::servicenow::SnConfig;
use scmb_sim::testkit::{serve_pagerduty, shared_sim, Served, SimInfo};
use serde_json::json;

/// How long the sink stays down: the "sink down 60 s".
const OUTAGE: Duration = Duration::from_secs(60);
/// How long every call is answered 429.
const THROTTLED: Duration = Duration::from_secs(15);
/// How long the work may take to finish after the fault ends.
const SETTLE: Duration = Duration::from_secs(180);
const PD_KEY: &str = "0123456789abcdef0123456789abcdef";

/// The sink under test: a simulator of the test's own.
enum Saas {
    ServiceNow(Sn),
    PagerDuty(Served<PdState>),
}

impl Saas {
    async fn servicenow() -> Saas {
        Saas::ServiceNow(Sn::start(SnConfig::default()).await)
    }

    async fn pagerduty() -> Saas {
        Saas::PagerDuty(serve_pagerduty(PdConfig::default()).await)
    }

    fn label(&self) -> &'static str {
        match self {
            Saas::ServiceNow(_) => "ServiceNow",
            Saas::PagerDuty(_) => "PagerDuty",
        }
    }

    /// The sink's tables in the config (`extra` added to the sink's own).
    fn tables(&self, extra: &str) -> String {
        match self {
            Saas::ServiceNow(sn) => sn.tables(&format!("{BASIC}{extra}"), ""),
            Saas::PagerDuty(pd) => common::pagerduty::table(&pd.url, extra),
        }
    }

    /// The secrets' variables.
    fn env(&self) -> [(&'static str, &'static str); 2] {
        [("SN_PASSWORD", "admin"), ("PD_KEY", PD_KEY)]
    }

    /// The metric label of the sink's calls (`scmb_retries_total{target}`).
    fn target(&self) -> &'static str {
        match self {
            Saas::ServiceNow(_) => "servicenow",
            Saas::PagerDuty(_) => "pagerduty",
        }
    }

    /// Incidents in the sink now, read in-process (its port may be closed).
    fn created(&self) -> usize {
        match self {
            Saas::ServiceNow(sn) => sn.incidents().len(),
            Saas::PagerDuty(pd) => pd.state.incidents().len(),
        }
    }

    /// The sink closes its port (and cuts its connections) for `d`.
    fn outage(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        match self {
            Saas::ServiceNow(sn) => sn.faults(json!({"outageMs": ms})),
            Saas::PagerDuty(pd) => pd.state.set_faults(PdFaults {
                outage_ms: ms,
                ..PdFaults::default()
            }),
        }
    }

    /// Every call answered 429 with `Retry-After: 1` until [`Saas::clear`].
    fn throttle(&self) {
        match self {
            Saas::ServiceNow(sn) => {
                sn.faults(json!({"rateLimitNext": 1_000_000_000u64, "retryAfterS": 1}))
            }
            Saas::PagerDuty(pd) => pd.state.set_faults(PdFaults {
                throttle_next: 1_000_000_000,
                retry_after_s: Some(1),
                ..PdFaults::default()
            }),
        }
    }

    /// Every call held `ms` before it is answered.
    fn latency(&self, ms: u64) {
        match self {
            Saas::ServiceNow(sn) => sn.faults(json!({"latencyMs": ms})),
            Saas::PagerDuty(pd) => pd.state.set_faults(PdFaults {
                latency_ms: ms,
                ..PdFaults::default()
            }),
        }
    }

    fn clear(&self) {
        match self {
            Saas::ServiceNow(sn) => sn.faults(json!({})),
            Saas::PagerDuty(pd) => pd.state.set_faults(PdFaults::default()),
        }
    }

    /// Whether the alert carries the sink's note.
    fn is_noted(&self, a: &serde_json::Value) -> bool {
        match self {
            Saas::ServiceNow(_) => !noted(a).is_empty(),
            Saas::PagerDuty(_) => !pd_notes(a).is_empty(),
        }
    }

    /// Incidents per alert of the appliance `name`: by `correlation_id` (ServiceNow), or
    /// open ones by the alert uri in their details (PagerDuty).
    fn per_alert(&self, name: &str, uris: &[String]) -> HashMap<String, usize> {
        match self {
            Saas::ServiceNow(sn) => {
                let by = sn.by_correlation();
                uris.iter()
                    .map(|u| (u.clone(), by.get(&key(name, u)).map_or(0, Vec::len)))
                    .collect()
            }
            Saas::PagerDuty(pd) => {
                let by = pd_incidents(pd);
                uris.iter()
                    .map(|u| {
                        let open = by.get(u).into_iter().flatten();
                        (
                            u.clone(),
                            open.filter(|i| i["status"] == "triggered").count(),
                        )
                    })
                    .collect()
            }
        }
    }

    /// Exactly one incident per alert and one note naming it (see the common checks).
    async fn assert_exactly_once(&self, c: &SimClient, name: &str, uris: &[String]) {
        match self {
            Saas::ServiceNow(sn) => {
                common::servicenow::assert_exactly_once(c, sn, name, uris).await;
                assert_eq!(
                    sn.incidents().len(),
                    uris.len(),
                    "no incident but the storm's"
                );
            }
            Saas::PagerDuty(pd) => {
                common::pagerduty::assert_paged_exactly_once(c, pd, name, uris, SETTLE).await;
                assert_eq!(
                    pd.state.incidents().len(),
                    uris.len(),
                    "no incident but the storm's"
                );
            }
        }
    }
}

/// One test's `scmb run` on the shared simulator, with `sink`'s tables and `extra` in them.
fn setup(test: &str, sim: &SimInfo, sink: &Saas, extra: &str) -> ScmbRun {
    let tag = format!("Saas.{test}.{}", rand::random::<u32>());
    ScmbRun::new(
        test,
        sim,
        &format!("{test}-ov"),
        &tag,
        "",
        &sink.tables(extra),
    )
}

/// Raises `count` critical alerts of `tag`, `rate` a second, in a task of its own; their
/// uris once all are raised.
fn storm(c: &SimClient, count: u64, rate: u64, tag: &str) -> tokio::task::JoinHandle<Vec<String>> {
    let c = c.clone();
    let body = json!({"count": count, "rate": rate, "severities": {"Critical": 1},
        "fields": {"alertTypeID": format!("{tag}.storm")}});
    tokio::spawn(async move { common::storm(&c, body).await })
}

/// Waits until the sink holds at least `n` incidents.
async fn wait_created(sink: &Saas, n: usize) {
    let reached = wait_until(SETTLE, || async move { sink.created() >= n }).await;
    assert!(reached, "{}: never reached {n} incidents", sink.label());
}

/// The sink's incident count once `run` has retried a call refused by the fault just set
/// (more retries than `before`): a create the sink had taken before the fault may still land
/// while the fault is being set, so counting starts from the first refusal scmb saw.
async fn created_once_refused(run: &ScmbRun, sink: &Saas, before: u64) -> usize {
    let refused = wait_until(SETTLE, || async move { retries(run, sink).await > before }).await;
    assert!(
        refused,
        "{}: no call was refused by the fault",
        sink.label()
    );
    sink.created()
}

/// The retries of the sink's calls that `run` counted so far.
async fn retries(run: &ScmbRun, sink: &Saas) -> u64 {
    metric_sum(
        &run.metrics_text().await,
        &format!(
            "scmb_retries_total{{appliance=\"{}\",target=\"{}\"}}",
            run.name,
            sink.target()
        ),
    )
}

/// Whether `run` has acked every message it received (nothing in work or held back).
async fn idle(run: &ScmbRun) -> bool {
    let text = run.metrics_text().await;
    let series = |name: &str| metric_sum(&text, &format!("{name}{{appliance=\"{}\"}}", run.name));
    let received = series("scmb_messages_received_total");
    received > 0 && series("scmb_acks_total") >= received
}

/// Waits until every alert carries the sink's note, then prints the scenario's row and checks
/// that each alert has exactly one incident and one note.
async fn settle(
    c: &SimClient,
    sink: &Saas,
    run: &ScmbRun,
    scenario: &str,
    uris: &[String],
    fault_end: Instant,
) {
    let all_noted = wait_until(SETTLE, || async move {
        for u in uris {
            if !sink.is_noted(&alert(c, u).await) {
                return false;
            }
        }
        true
    })
    .await;
    let recover = fault_end.elapsed();
    let by = sink.per_alert(&run.name, uris);
    let created: usize = by.values().sum();
    let lost = by.values().filter(|n| **n == 0).count();
    let duplicates: usize = by.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "| {} {scenario} | {} | {created} | {duplicates} | {lost} | {:.1} s |",
        sink.label(),
        uris.len(),
        recover.as_secs_f64()
    );
    assert!(all_noted, "{}: not every alert got its note", sink.label());
    sink.assert_exactly_once(c, &run.name, uris).await;
}

/// Stops `l` with SIGTERM; it must exit 0 without a panic.
fn stop(l: Listening) {
    l.terminate();
    let r = l.finish(Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// The sink down for 60 s in the middle of a 200-alert storm (its port closed, its open
/// connections cut, so calls in flight end without an answer), then back.
async fn sink_down_60_s_mid_storm(sink: Saas, test: &str) {
    let sim = shared_sim();
    let c = sim.client();
    let run = setup(test, sim, &sink, "");
    let l = run.start(&sink.env()).await;
    let raising = storm(&c, 200, 20, &run.tag);
    wait_created(&sink, 20).await;
    let retried_before = retries(&run, &sink).await;
    sink.outage(OUTAGE);
    let down = Instant::now();
    let fault_end = down + OUTAGE;
    let at_start = created_once_refused(&run, &sink, retried_before).await;
    let uris = raising.await.expect("storm");
    assert!(
        at_start < uris.len(),
        "the storm was over before the outage"
    );
    // Down for the whole minute: nothing reached the sink, and scmb kept trying.
    tokio::time::sleep_until((fault_end - Duration::from_secs(1)).into()).await;
    assert_eq!(sink.created(), at_start, "the sink was reached while down");
    assert!(
        retries(&run, &sink).await > retried_before,
        "no call failed while the sink was down"
    );
    tokio::time::sleep_until(fault_end.into()).await;
    settle(&c, &sink, &run, "down 60 s mid-storm", &uris, fault_end).await;
    stop(l);
}

/// Every call answered 429 with `Retry-After: 1` for 15 s in the middle of a 200-alert storm.
async fn a_429_storm_mid_storm(sink: Saas, test: &str) {
    let sim = shared_sim();
    let c = sim.client();
    let run = setup(test, sim, &sink, "");
    let l = run.start(&sink.env()).await;
    let raising = storm(&c, 200, 40, &run.tag);
    wait_created(&sink, 20).await;
    let retried_before = retries(&run, &sink).await;
    sink.throttle();
    let fault_end = Instant::now() + THROTTLED;
    let at_start = created_once_refused(&run, &sink, retried_before).await;
    tokio::time::sleep_until(fault_end.into()).await;
    // Refused throughout (a 429 is never an incident), and retried.
    assert_eq!(sink.created(), at_start, "created while every call got 429");
    assert!(
        retries(&run, &sink).await > retried_before,
        "no 429 was retried"
    );
    sink.clear();
    let uris = raising.await.expect("storm");
    assert!(at_start < uris.len(), "the storm was over before the 429s");
    settle(
        &c,
        &sink,
        &run,
        "429 storm (15 s) mid-storm",
        &uris,
        fault_end,
    )
    .await;
    stop(l);
}

/// `kill -9` of scmb in the middle of a 200-alert storm (calls answered in 50 ms, so some are
/// in flight), then a restart on the same store: what was in work and what was raised while it
/// was down is finished once.
async fn kill_9_mid_storm(sink: Saas, test: &str) {
    let sim = shared_sim();
    let c = sim.client();
    let run = setup(test, sim, &sink, "");
    let mut l = run.start(&sink.env()).await;
    sink.latency(50);
    let raising = storm(&c, 200, 40, &run.tag);
    wait_created(&sink, 40).await;
    l.child.kill().expect("SIGKILL");
    let _ = l.child.wait();
    let at_kill = sink.created();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    let l = run.start(&sink.env()).await;
    let uris = raising.await.expect("storm");
    assert!(at_kill < uris.len(), "killed after the storm was done");
    settle(
        &c,
        &sink,
        &run,
        "kill -9 mid-storm, then restart",
        &uris,
        restarted,
    )
    .await;
    stop(l);
}

/// Two `scmb run` on stores of their own, on the same appliance (the same name: the same
/// `correlation_id`s and dedup keys) and the same sink, through a 200-alert storm, the sink
/// answering in 50 ms.
async fn two_instances_in_a_storm(sink: Saas, test: &str, extra: &str) {
    let sim = shared_sim();
    let c = sim.client();
    let a = setup(test, sim, &sink, extra);
    let b = a.second(&format!("{test}-b"));
    let la = a.start(&sink.env()).await;
    let lb = b.start(&sink.env()).await;
    sink.latency(50);
    let started = Instant::now();
    let uris = storm(&c, 200, 0, &a.tag).await.expect("storm");
    // Both instances have finished with every message (the last alerts' work done by both).
    let all_noted = wait_until(SETTLE, || async {
        for u in &uris {
            if !sink.is_noted(&alert(&c, u).await) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all_noted, "{}: not every alert got its note", sink.label());
    for run in [&a, &b] {
        let done = wait_until(SETTLE, || async { idle(run).await }).await;
        assert!(
            done,
            "{}: an instance never finished its messages",
            run.dir.display()
        );
    }
    settle(
        &c,
        &sink,
        &a,
        "two instances, 200-alert storm",
        &uris,
        started,
    )
    .await;
    stop(la);
    stop(lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicenow_down_60_s_mid_storm_loses_nothing_and_duplicates_nothing() {
    sink_down_60_s_mid_storm(Saas::servicenow().await, "sn-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_down_60_s_mid_storm_loses_nothing_and_duplicates_nothing() {
    sink_down_60_s_mid_storm(Saas::pagerduty().await, "pd-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicenow_429_storm_with_retry_after_loses_nothing_and_duplicates_nothing() {
    a_429_storm_mid_storm(Saas::servicenow().await, "sn-429").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_429_storm_with_retry_after_loses_nothing_and_duplicates_nothing() {
    a_429_storm_mid_storm(Saas::pagerduty().await, "pd-429").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicenow_kill_9_mid_storm_then_restart_loses_nothing_and_duplicates_nothing() {
    kill_9_mid_storm(Saas::servicenow().await, "sn-kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_kill_9_mid_storm_then_restart_loses_nothing_and_duplicates_nothing() {
    kill_9_mid_storm(Saas::pagerduty().await, "pd-kill").await;
}

/// With `claim = true` each instance claims an alert with an eTag-guarded note before its
/// `correlation_id` look-up and create: of two that read the alert at once, only one creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servicenow_instances_claiming_alerts_open_one_incident_per_alert_in_a_storm() {
    two_instances_in_a_storm(Saas::servicenow().await, "sn-pair", "claim = true\n").await;
}

/// PagerDuty keeps one incident per dedup key; the note is written onto the alert as read
/// (its eTag), so the second instance finds the first one's note instead of adding its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pagerduty_instances_page_one_incident_and_note_once_per_alert_in_a_storm() {
    two_instances_in_a_storm(Saas::pagerduty().await, "pd-pair", "").await;
}
