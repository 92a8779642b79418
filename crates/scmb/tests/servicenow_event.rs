//! The ServiceNow sink in event mode (`mode = "event"`, Event Management's `POST
//! /api/global/em/jsonv2`) end to end: `scmb run` (a real process) against the simulated
//! appliance (its REST API and a real RabbitMQ, shared by the tests of this binary) and a
//! ServiceNow simulator of each test's own (real sockets, faults injected per test). Tests wait
//! on states (the instance's events and alerts, the alert's notes, metrics), never on log
//! wording alone, and check the end state: one Event Management alert per OneView alert, one
//! note per alert.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{appliance, download_certs, get, metric, raise, run, Listening, BIN};
use reqwest::Method;
use scmb_sim::client::SimClient;
use scmb_sim::servicenow::{SnConfig, SnFaults, SnState};
use scmb_sim::testkit::{serve_servicenow, shared_sim, temp_dir, Served, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);
const NOTE: &str = "Event sent to ServiceNow Event Management with message key ";
const BASIC: &str = "user = \"admin\"\npassword_env = \"SN_PASSWORD\"\n";
/// The sink's label in metrics.
const SINK: &str = "servicenow_event";

/// A ServiceNow simulator of the test's own.
struct Sn {
    served: Served<SnState>,
    http: reqwest::Client,
}

impl Sn {
    async fn start() -> Sn {
        Sn {
            served: serve_servicenow(SnConfig::default()).await,
            http: reqwest::Client::builder()
                .use_preconfigured_tls(
                    scmb_tls::client_config(
                        &scmb_tls::ServerTrust::Insecure,
                        &scmb_tls::NameCheck::Skip,
                        None,
                    )
                    .expect("tls"),
                )
                .build()
                .expect("client"),
        }
    }

    fn url(&self) -> &str {
        &self.served.url
    }

    fn faults(&self, f: Value) {
        let f: SnFaults = serde_json::from_value(f).expect("faults");
        self.served.state.set_faults(f);
    }

    /// `GET /sim/...`: its JSON answer.
    async fn sim(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("control call")
            .json()
            .await
            .expect("json")
    }

    /// The events (`em_event`) and the alerts (`em_alert`) with this message key.
    async fn by_key(&self, key: &str) -> (Vec<Value>, Vec<Value>) {
        let all = self.sim("/sim/events").await;
        let of = |t: &str| -> Vec<Value> {
            all[t]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["message_key"] == key)
                .cloned()
                .collect()
        };
        (of("events"), of("alerts"))
    }

    /// Every event the instance received.
    async fn events(&self) -> Vec<Value> {
        self.sim("/sim/events").await["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Calls the instance received (`/sim/stats`).
    async fn requests(&self) -> u64 {
        self.sim("/sim/stats").await["requests"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// The `message_key` scmb gives the events of `uri` on the appliance `name`.
fn key(name: &str, uri: &str) -> String {
    format!("scmb:{name}:{uri}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One test's `scmb run`: its config, state and metrics address.
struct Setup {
    name: String,
    tag: String,
    dir: PathBuf,
    config: PathBuf,
    metrics: String,
}

impl Setup {
    /// A config with one appliance (the shared simulator, alerts of a fresh tag only) and a
    /// ServiceNow sink in event mode at `sn`; `servicenow` is added to its table.
    fn new(test: &str, sim: &SimInfo, sn: &Sn, servicenow: &str) -> Setup {
        let dir = temp_dir(test);
        let certs = download_certs(&sim.rest_url, &format!("{test}-certs"));
        let tag = format!("Test.snev.{test}.{}", rand::random::<u32>());
        let name = format!("{test}-ov");
        let port = free_port();
        let config = dir.join("scmb.toml");
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
[metrics]
listen = "127.0.0.1:{port}"
[[appliance]]
name = "{name}"
address = "{addr}"
password_env = "OV_PASSWORD"
cert_dir = "{certs}"
amqp_port = {amqp}
[appliance.filter]
alert_types = ["{tag}*"]
[appliance.servicenow]
mode = "event"
instance = "{sn}"
retry_cap = "1s"
{servicenow}
"#,
                state = dir.join("state").display(),
                addr = appliance(&sim.rest_url),
                certs = certs.display(),
                amqp = sim.amqps_port,
                sn = sn.url(),
            ),
        )
        .expect("config");
        Setup {
            name,
            tag,
            dir,
            config,
            metrics: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Starts `scmb run` and waits until it is connected (`/readyz`).
    async fn start(&self, env: &[(&str, &str)]) -> Listening {
        let mut all = vec![("OV_PASSWORD", "admin123"), ("RUST_LOG", "info")];
        all.extend_from_slice(env);
        let l = Listening::start_env(
            BIN,
            &["run", "--config", self.config.to_str().expect("utf8")],
            &all,
        );
        let deadline = Instant::now() + WAIT;
        while get(&format!("{}/readyz", self.metrics)).await.0 != 200 {
            assert!(Instant::now() < deadline, "scmb run never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        l
    }

    /// A series of this appliance: `scmb_sink_*` with the event sink's label,
    /// `scmb_retries_total` with its target.
    async fn metric(&self, name: &str) -> u64 {
        let text = get(&format!("{}/metrics", self.metrics)).await.1;
        let labels = if name.starts_with("scmb_sink_") {
            format!("{{appliance=\"{}\",sink=\"{SINK}\"}}", self.name)
        } else if name == "scmb_retries_total" {
            format!("{{appliance=\"{}\",target=\"{SINK}\"}}", self.name)
        } else {
            format!("{{appliance=\"{}\"}}", self.name)
        };
        metric(&text, &format!("{name}{labels}"))
    }

    fn store(&self) -> PathBuf {
        self.dir.join("state").join(&self.name).join("scmb.redb")
    }

    fn key(&self, uri: &str) -> String {
        key(&self.name, uri)
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

/// The alert as it is now (no session needed).
async fn alert(c: &SimClient, uri: &str) -> Value {
    let id = uri.rsplit('/').next().expect("id");
    c.call(Method::GET, &format!("/sim/alerts/{id}"), None)
        .await
        .expect("alert")
}

/// Clears the alert as an operator would.
async fn clear(c: &SimClient, uri: &str) {
    let id = uri.rsplit('/').next().expect("id");
    c.call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
        .await
        .expect("clear");
}

/// The message keys in the alert's Event Management notes (one per note).
fn noted(a: &Value) -> Vec<String> {
    a["changeLog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["notes"].as_str()?.strip_prefix(NOTE).map(str::to_string))
        .collect()
}

/// Polls `f` until it gives a value, or fails the test naming `what`.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the alert carries its note; then checks it was sent exactly once: one open
/// Event Management alert with its key, and one note naming the key.
async fn assert_sent_once(c: &SimClient, sn: &Sn, s: &Setup, uri: &str) {
    let k = s.key(uri);
    until("the alert's note", || async {
        (!noted(&alert(c, uri).await).is_empty()).then_some(())
    })
    .await;
    let (events, alerts) = sn.by_key(&k).await;
    assert_eq!(alerts.len(), 1, "{uri}: one em_alert: {alerts:?}");
    assert_eq!(alerts[0]["state"], "Open", "{uri}");
    assert!(!events.is_empty(), "{uri}");
    assert_eq!(noted(&alert(c, uri).await), vec![k], "{uri}: one note");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_becomes_one_em_alert_noted_once_even_after_a_wiped_store_and_its_clear_closes_it(
) {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start().await;
    let s = Setup::new("evlife", sim, &sn, BASIC);
    let env = [("SN_PASSWORD", "admin")];
    let l = s.start(&env).await;

    let uri = critical(
        &c,
        &s.tag,
        json!({"description": "Disk 3 failed", "correctiveAction": "Replace disk 3",
            "healthCategory": "Storage", "associatedResource": {"resourceName": "Encl-ev-1",
            "resourceCategory": "enclosures", "resourceUri": "/rest/enclosures/ev1"}}),
    )
    .await;
    // A warning is not admitted: no event.
    let warning = raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{}.w", s.tag)}),
    )
    .await;
    assert_sent_once(&c, &sn, &s, &uri).await;
    let (events, alerts) = sn.by_key(&s.key(&uri)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev["state"], "Processed", "{ev}");
    assert_eq!(ev["severity"], "1");
    assert_eq!(ev["source"], "HPE OneView");
    assert_eq!(ev["node"], "Encl-ev-1");
    assert_eq!(ev["type"], format!("{}.a", s.tag));
    assert_eq!(ev["resource"], "/rest/enclosures/ev1");
    assert_eq!(ev["metric_name"], "Storage");
    assert_eq!(ev["event_class"], "scmb");
    assert_eq!(ev["description"], "Disk 3 failed");
    // yyyy-MM-dd HH:mm:ss
    let at = ev["time_of_event"].as_str().unwrap_or("");
    assert!(
        at.len() == 19 && at.as_bytes()[10] == b' ' && at.as_bytes()[4] == b'-',
        "{at}"
    );
    let info: Value =
        serde_json::from_str(ev["additional_info"].as_str().expect("a string")).expect("json");
    assert_eq!(info["uri"], uri.as_str());
    assert_eq!(info["appliance"], s.name.as_str());
    assert_eq!(info["corrective_action"], "Replace disk 3");
    assert_eq!(alerts[0]["severity"], "1");
    assert!(sn.by_key(&s.key(&warning)).await.0.is_empty());
    assert_eq!(s.metric("scmb_sink_incidents_created_total").await, 1);

    // A restart with the store wiped finds the note: nothing sent again, no second note.
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    std::fs::remove_file(s.store()).expect("wipe the store");
    let l = s.start(&env).await;
    until("the alert found already sent", || async {
        (s.metric("scmb_sink_incidents_deduplicated_total").await >= 1).then_some(())
    })
    .await;
    assert_eq!(noted(&alert(&c, &uri).await), vec![s.key(&uri)]);
    assert_eq!(
        sn.by_key(&s.key(&uri)).await.0.len(),
        1,
        "no event sent again"
    );

    // Its clear sends severity 0 with the same key, which closes the em_alert.
    clear(&c, &uri).await;
    let closed = until("the em_alert closed", || async {
        let (events, alerts) = sn.by_key(&s.key(&uri)).await;
        (alerts.len() == 1 && alerts[0]["state"] == "Closed").then_some(events)
    })
    .await;
    let clears: Vec<&Value> = closed.iter().filter(|e| e["severity"] == "0").collect();
    assert_eq!(clears.len(), 1, "{closed:?}");
    assert_eq!(clears[0]["state"], "Processed");
    assert_eq!(s.metric("scmb_sink_incidents_resolved_total").await, 1);
    assert_eq!(noted(&alert(&c, &uri).await).len(), 1, "still one note");

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("admin123"), "no password in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after_and_a_400_is_failed_for_good_and_counted() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start().await;
    let s = Setup::new("evfaults", sim, &sn, BASIC);
    let l = s.start(&[("SN_PASSWORD", "admin")]).await;

    // The next two calls refused with 429, each saying to come back in 1 s: sent on the third.
    sn.faults(json!({"rateLimitNext": 2, "retryAfterS": 1}));
    let first = critical(&c, &s.tag, json!({})).await;
    assert_sent_once(&c, &sn, &s, &first).await;
    assert!(s.metric("scmb_retries_total").await >= 2);
    assert_eq!(sn.by_key(&s.key(&first)).await.0.len(), 1, "one event");

    // Every call refused with 400: failed for good (recorded, counted), never sent again.
    sn.faults(json!({"errorRate": 1.0, "errorStatus": 400}));
    let refused = critical(&c, &s.tag, json!({})).await;
    until("the refusal counted", || async {
        (s.metric("scmb_sink_incidents_failed_total").await == 1).then_some(())
    })
    .await;
    let asked = sn.requests().await;
    sn.faults(json!({}));
    // Another alert goes through; the refused one is not sent again meanwhile.
    let later = critical(&c, &s.tag, json!({})).await;
    assert_sent_once(&c, &sn, &s, &later).await;
    assert!(sn.by_key(&s.key(&refused)).await.0.is_empty());
    assert!(noted(&alert(&c, &refused).await).is_empty());
    assert_eq!(s.metric("scmb_sink_incidents_failed_total").await, 1);
    assert!(
        sn.requests().await <= asked + 2,
        "the refused alert was sent again"
    );

    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_the_work_and_it_resumes_once_fixed() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = Sn::start().await;
    let s = Setup::new("evrefused", sim, &sn, BASIC);
    let mut l = s.start(&[("SN_PASSWORD", "admin")]).await;

    sn.faults(json!({"unauthorized": true}));
    let uri = critical(&c, &s.tag, json!({})).await;
    // The instance is asked and refuses, again after each pause; nothing is sent meanwhile,
    // nothing is given up.
    let before = sn.requests().await;
    until("asked again after a pause", || async {
        (sn.requests().await >= before + 2).then_some(())
    })
    .await;
    assert!(sn.events().await.is_empty());
    assert!(noted(&alert(&c, &uri).await).is_empty());
    assert_eq!(s.metric("scmb_sink_incidents_failed_total").await, 0);
    // The pause says which settings to fix.
    assert!(
        l.wait_for("servicenow.user and password_env", Duration::from_secs(10)),
        "{:?}",
        l.stderr
    );

    sn.faults(json!({}));
    assert_sent_once(&c, &sn, &s, &uri).await;
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("\"admin\""), "no password in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_proves_the_credentials_for_events_without_sending_one() {
    let sim = shared_sim();
    let sn = Sn::start().await;
    let s = Setup::new("evcheck", sim, &sn, BASIC);
    let check = |password: &str| {
        run(
            &["check", "--config", s.config.to_str().expect("utf8")],
            &[("OV_PASSWORD", "admin123"), ("SN_PASSWORD", password)],
        )
    };
    let line = |r: &common::Run| {
        r.stdout
            .lines()
            .find(|l| l.contains(" servicenow "))
            .unwrap_or_else(|| panic!("no servicenow line: {r:?}"))
            .to_string()
    };
    let r = check("admin");
    let ok = line(&r);
    assert!(
        ok.starts_with("ok") && ok.contains("em_event readable"),
        "{ok}"
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = check("wrong");
    let bad = line(&r);
    assert!(bad.starts_with("FAIL") && bad.contains("401"), "{bad}");
    assert!(
        bad.contains("servicenow.user") && !bad.contains("wrong"),
        "{bad}"
    );
    assert_eq!(r.code, Some(3), "{bad}");
    assert!(sn.events().await.is_empty(), "a check sends nothing");
}
