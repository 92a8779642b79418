//! The AMQP relay sink end to end: `scmb run` (a real process) against the simulated appliance
//! (its REST API and its real RabbitMQ) relaying to a second real RabbitMQ node of each
//! test's own (ov-sim's broker in its relay-target form: AMQPS with SASL PLAIN and EXTERNAL,
//! plain AMQP beside it, its database kept across a restart), started on loopback in its own
//! directory and stopped by its pid. The certificates are the simulator's, made at run time.
//! Every wait is on a state — a message on a queue, a metric — never on a log line or a clock.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::{
    BasicGetArguments, Channel, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::{FieldTable, FieldValue};
use common::run::ScmbRun;
use common::{raise, Listening};
use scmb_sim::broker::{BrokerConfig, BrokerHandle, RelayNode};
use scmb_sim::pki::PkiPaths;
use scmb_sim::testkit::{open, shared_sim, temp_dir, SimInfo};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
const NAME: &str = "east";
const EXCHANGE: &str = "oneview.alerts";
const USER: &str = "relay";
const PASSWORD: &str = "relay-pw-for-tests-only";
const ENV: [(&str, &str); 1] = [("RELAY_PASSWORD", PASSWORD)];

/// A relay target of the test's own.
struct Target {
    broker: Arc<BrokerHandle>,
    plain_port: u16,
    pki: PkiPaths,
}

impl Target {
    async fn start(test: &str, sim: &SimInfo) -> Target {
        let pki = PkiPaths::new(&sim.pki_dir());
        let plain_port = common::free_port();
        let mut cfg = BrokerConfig::new(temp_dir(test), common::free_port());
        cfg.relay = Some(RelayNode {
            plain_port,
            user: USER.into(),
            password: PASSWORD.into(),
            exchange: EXCHANGE.into(),
        });
        let broker = BrokerHandle::start(cfg, pki.clone())
            .await
            .expect("the relay broker starts");
        Target {
            broker,
            plain_port,
            pki,
        }
    }

    fn port(&self) -> u16 {
        self.broker.cfg.port
    }

    /// An administrator's connection (EXTERNAL with the admin certificate).
    async fn admin(&self) -> (Connection, Channel) {
        open(&self.broker.admin_target()).await.expect("admin")
    }

    /// A durable queue `name` bound to the exchange with `#`, declared by the admin.
    async fn queue(&self, name: &str) {
        let (conn, ch) = self.admin().await;
        ch.queue_declare(QueueDeclareArguments::durable_client_named(name))
            .await
            .expect("declare");
        ch.queue_bind(QueueBindArguments::new(name, EXCHANGE, "#"))
            .await
            .expect("bind");
        let _ = conn.close().await;
    }

    /// Every message on `queue`, taken off it: (routing key, delivery mode, message id,
    /// headers, body).
    async fn drain(&self, queue: &str) -> Vec<Got> {
        let (conn, ch) = self.admin().await;
        let mut out = Vec::new();
        while let Some((get, props, body)) = ch
            .basic_get(BasicGetArguments::new(queue).no_ack(true).finish())
            .await
            .expect("get")
        {
            let headers = props
                .headers()
                .map(|h| {
                    h.as_ref()
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                FieldValue::S(s) => s.to_string(),
                                other => format!("{other:?}"),
                            };
                            (k.to_string(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Got {
                routing_key: get.routing_key().to_string(),
                delivery_mode: props.delivery_mode(),
                message_id: props.message_id().cloned().unwrap_or_default(),
                headers,
                body,
            });
        }
        let _ = conn.close().await;
        out
    }
}

#[derive(Debug)]
struct Got {
    routing_key: String,
    delivery_mode: Option<u8>,
    message_id: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn uri(&self) -> &str {
        self.headers
            .get("x-scmb-resource-uri")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// `[appliance.relay]` with SASL PLAIN over TLS to `t`, plus `extra` lines.
fn plain_tls(t: &Target, extra: &str) -> String {
    format!(
        "[appliance.relay]\nhost = \"localhost\"\nport = {}\nexchange = \"{EXCHANGE}\"\nusername = \"{USER}\"\npassword_env = \"RELAY_PASSWORD\"\nca = \"{}\"\nretry_cap = \"1s\"\nconfirm_timeout = \"5s\"\n{extra}",
        t.port(),
        t.pki.ca_cert.display()
    )
}

fn setup(test: &str, sim: &SimInfo, sinks: &str) -> ScmbRun {
    let tag = format!("rl{}{}", test.replace('-', ""), rand::random::<u32>());
    ScmbRun::new(test, sim, NAME, &tag, "severities = [\"*\"]", sinks)
}

async fn series(s: &ScmbRun, name: &str) -> u64 {
    s.sink_metric(name, "relay").await
}

async fn wait_until<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::wait_until(WAIT, check).await
}

fn check(s: &ScmbRun) -> String {
    let out = s
        .command(
            &["check", "--config", s.config.to_str().expect("utf8")],
            &ENV,
        )
        .output()
        .expect("check");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stop(l: Listening) -> String {
    l.stopped(WAIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_persistent_with_appliance_headers_and_the_prefixed_key_over_plain_tls() {
    let sim = shared_sim();
    let t = Target::start("relay-plain", sim).await;
    t.queue("all").await;
    let s = setup(
        "relay-plain",
        sim,
        &plain_tls(
            &t,
            "routing_key_prefix = \"dc1.\"\nheaders = { x-site = \"dc1\" }\n",
        ),
    );
    let l = s.start(&ENV).await;
    let c = sim.client();
    let uri = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": s.tag, "description": "PSU 4 failed"}),
    )
    .await;
    assert!(
        wait_until(|| async { series(&s, "scmb_sink_events_delivered_total").await == 1 }).await
    );
    let got = t.drain("all").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.routing_key, format!("dc1.scmb.alerts.Created.{uri}"));
    assert_eq!(m.delivery_mode, Some(2), "persistent");
    assert_eq!(
        m.headers.get("x-scmb-appliance").map(String::as_str),
        Some(NAME)
    );
    assert_eq!(m.uri(), uri);
    assert_eq!(
        m.headers.get("x-scmb-change-type").map(String::as_str),
        Some("Created")
    );
    assert_eq!(
        m.headers.get("x-scmb-severity").map(String::as_str),
        Some("Critical")
    );
    assert_eq!(m.headers.get("x-site").map(String::as_str), Some("dc1"));
    // The body is the appliance's message as it came.
    let body: serde_json::Value = serde_json::from_slice(&m.body).expect("json");
    assert_eq!(body["resourceUri"], uri.as_str());
    assert_eq!(body["resource"]["description"], "PSU 4 failed");
    let etag = body["eTag"].as_str().expect("eTag");
    assert_eq!(
        m.message_id,
        scmb::sinks::webhook::id_of(NAME, &uri, etag, "created")
    );
    let stderr = stop(l);
    assert!(!stderr.contains(PASSWORD), "the password is never logged");

    // `scmb check` logs in and finds the exchange, publishing nothing.
    let out = check(&s);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("relay"))
        .unwrap_or_else(|| panic!("no relay line: {out}"));
    assert!(line.starts_with("ok") && line.contains("exists"), "{line}");
    assert!(t.drain("all").await.is_empty(), "check published nothing");
    t.broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tls_keeps_the_scmb_routing_key_and_a_missing_exchange_is_one_clear_line() {
    let sim = shared_sim();
    let t = Target::start("relay-external", sim).await;
    t.queue("ext").await;
    let relay = format!(
        "[appliance.relay]\nhost = \"localhost\"\nport = {}\nexchange = \"{EXCHANGE}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nretry_cap = \"1s\"\n",
        t.port(),
        t.pki.ca_cert.display(),
        t.pki.admin_cert.display(),
        t.pki.admin_key.display()
    );
    let s = setup("relay-external", sim, &relay);
    let l = s.start(&[]).await;
    let uri = raise(
        &sim.client(),
        json!({"severity": "Warning", "alertTypeID": s.tag}),
    )
    .await;
    assert!(
        wait_until(|| async { series(&s, "scmb_sink_events_delivered_total").await == 1 }).await
    );
    let got = t.drain("ext").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].routing_key, format!("scmb.alerts.Created.{uri}"));
    assert_eq!(got[0].delivery_mode, Some(2));
    assert_eq!(
        got[0].headers.get("x-scmb-appliance").map(String::as_str),
        Some(NAME)
    );
    stop(l);

    // A typo in the exchange: `scmb check` says which and what to do.
    let typo = relay.replace(EXCHANGE, "oneview.alert");
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config)
            .expect("config")
            .replace(&relay, &typo),
    )
    .expect("config");
    let out = check(&s);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("relay"))
        .unwrap_or_else(|| panic!("no relay line: {out}"));
    assert!(
        line.contains(&format!(
            "exchange \"oneview.alert\" not found on broker localhost:{}: create it or set declare = true",
            t.port()
        )),
        "{line}"
    );
    t.broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appliance_message_stays_unacked_until_the_relay_broker_confirms() {
    // A simulated appliance of this test's own: its acks count only this test's messages.
    let sim =
        &scmb_sim::testkit::start_in_background(scmb_sim::testkit::test_config("relay-order-sim"));
    let t = Target::start("relay-order", sim).await;
    // A queue that takes nothing: the broker nacks every publish routed to it.
    {
        let (conn, ch) = t.admin().await;
        let mut args = FieldTable::new();
        args.insert("x-max-length".try_into().expect("name"), FieldValue::l(0));
        args.insert(
            "x-overflow".try_into().expect("name"),
            FieldValue::from("reject-publish"),
        );
        ch.queue_declare(
            QueueDeclareArguments::durable_client_named("full")
                .arguments(args)
                .finish(),
        )
        .await
        .expect("declare");
        ch.queue_bind(QueueBindArguments::new("full", EXCHANGE, "#"))
            .await
            .expect("bind");
        let _ = conn.close().await;
    }
    let s = setup("relay-order", sim, &plain_tls(&t, ""));
    let l = s.start(&ENV).await;
    let before = series(&s, "scmb_acks_total").await;
    let uri = raise(
        &sim.client(),
        json!({"severity": "Critical", "alertTypeID": s.tag}),
    )
    .await;
    // Published and nacked, again and again: the delivery is received and stays unacked.
    assert!(wait_until(|| async { series(&s, "scmb_retries_total").await >= 3 }).await);
    assert_eq!(series(&s, "scmb_messages_received_total").await, before + 1);
    assert_eq!(
        series(&s, "scmb_acks_total").await,
        before,
        "not acked before a confirm"
    );
    assert_eq!(series(&s, "scmb_sink_events_delivered_total").await, 0);
    // The broker takes it again: the next publish is confirmed, and only then acked.
    {
        let (conn, ch) = t.admin().await;
        ch.queue_delete(QueueDeleteArguments::new("full"))
            .await
            .expect("delete");
        let _ = conn.close().await;
    }
    t.queue("after").await;
    assert!(wait_until(|| async { series(&s, "scmb_acks_total").await == before + 1 }).await);
    assert_eq!(series(&s, "scmb_sink_events_delivered_total").await, 1);
    let got = t.drain("after").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].uri(), uri);
    stop(l);
    t.broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_broker_restart_mid_storm_loses_no_alert_and_repeats_only_unconfirmed_ones() {
    const COUNT: usize = 600;
    let sim = shared_sim();
    let t = Target::start("relay-restart", sim).await;
    t.queue("durable").await;
    // Plain AMQP on loopback (warned about), to show that mode too.
    let relay = format!(
        "[appliance.relay]\nhost = \"127.0.0.1\"\nport = {}\nplain_tcp = true\nexchange = \"{EXCHANGE}\"\nusername = \"{USER}\"\npassword_env = \"RELAY_PASSWORD\"\nretry_cap = \"1s\"\nconfirm_timeout = \"5s\"\nconcurrency = 16\n",
        t.plain_port
    );
    let s = setup("relay-restart", sim, &relay);
    let l = s.start(&ENV).await;
    let c = sim.client();
    // Raised at 50 a second (12 s), the relay broker restarted while it goes on.
    let tag = s.tag.clone();
    let raising = tokio::spawn(async move {
        common::storm(
            &c,
            json!({"count": COUNT, "rate": 50, "fields": {"alertTypeID": tag}}),
        )
        .await
    });
    assert!(
        wait_until(|| async { series(&s, "scmb_sink_events_delivered_total").await >= 50 }).await
    );
    assert!(!raising.is_finished(), "the restart comes mid-storm");
    t.broker.restart().await.expect("restart");
    let storm = raising.await.expect("storm");
    assert!(
        wait_until(|| async {
            series(&s, "scmb_sink_events_delivered_total").await == COUNT as u64
        })
        .await
    );
    assert!(
        series(&s, "scmb_retries_total").await >= 1,
        "the restart was noticed"
    );
    let stderr = stop(l);
    assert!(stderr.contains("UNENCRYPTED"), "plain TCP is warned about");
    let got = t.drain("durable").await;
    let distinct: BTreeSet<&str> = got.iter().map(Got::uri).collect();
    let raised: BTreeSet<&str> = storm.iter().map(String::as_str).collect();
    assert_eq!(distinct, raised, "every alert arrived at least once");
    // At-least-once: only a message the broker took but whose confirm the restart lost is
    // published again, so at most one per publish in flight (one per lane), and a repeat is
    // the same message (same id, same body).
    let repeats = got.len() - distinct.len();
    eprintln!(
        "{} messages, {} distinct, {repeats} repeats",
        got.len(),
        distinct.len()
    );
    assert!(repeats <= 16, "{repeats} repeats for 16 lanes");
    let mut first: BTreeMap<&str, &Got> = BTreeMap::new();
    for m in &got {
        if let Some(f) = first.insert(m.uri(), m) {
            assert_eq!((&f.message_id, &f.body), (&m.message_id, &m.body));
        }
        assert_eq!(m.delivery_mode, Some(2));
    }
    t.broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}
