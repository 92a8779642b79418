//! The webhook sink end to end: `scmb run` (a real process) against the simulated appliance
//! (its REST API and its real RabbitMQ, shared by the tests of this binary) and a webhook
//! receiver of each test's own (`ov-sim webhook`'s, served in-process on a real socket), so
//! that its faults touch no other test. Every wait is on a state — the requests the receiver
//! recorded, a metric — never on a log line or a clock.

mod common;

use std::time::Duration;

use common::run::ScmbRun;
use common::{raise, Listening};
use reqwest::Method;
use scmb::sinks::webhook::{id_of, signature};
use scmb_sim::testkit::{serve_webhook, shared_sim, Served, SimInfo};
use scmb_sim::webhook::{Received, WebhookFaults, WebhookState};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const NAME: &str = "east";
const SECRET: &str = "s3cret-hmac-key-for-tests";
const ENV: [(&str, &str); 1] = [("WH_SECRET", SECRET)];

/// One test's `scmb run`.
struct Setup(ScmbRun);

impl std::ops::Deref for Setup {
    type Target = ScmbRun;
    fn deref(&self) -> &ScmbRun {
        &self.0
    }
}

impl Setup {
    /// A config admitting the alerts of a fresh alert type (and `filter`), with the webhook
    /// tables `hooks`.
    fn new(name: &str, sim: &SimInfo, filter: &str, hooks: &str) -> Setup {
        let tag = format!("wh{}{}", name.replace('-', ""), rand::random::<u32>());
        Setup(ScmbRun::new(name, sim, NAME, &tag, filter, hooks))
    }

    async fn run(&self) -> Listening {
        self.0.start(&ENV).await
    }

    /// A series of this appliance for the webhook `hook` (`scmb_sink_*`, `scmb_retries_total`)
    /// or of the appliance.
    async fn metric(&self, name: &str, hook: &str) -> u64 {
        self.0.sink_metric(name, &format!("webhook:{hook}")).await
    }
}

async fn wait_until<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::wait_until(WAIT, check).await
}

/// The requests `rx` recorded on `path` about the alert `uri`.
fn about(rx: &Served<WebhookState>, path: &str, uri: &str) -> Vec<Received> {
    rx.state
        .requests()
        .into_iter()
        .filter(|r| r.path == path && r.body.contains(uri))
        .collect()
}

/// Waits until `rx` recorded `n` requests on `path` about `uri`; they.
async fn wait_for(rx: &Served<WebhookState>, path: &str, uri: &str, n: usize) -> Vec<Received> {
    let got = wait_until(|| async { about(rx, path, uri).len() >= n }).await;
    let all = about(rx, path, uri);
    assert!(got, "{n} request(s) on {path} about {uri}, got {all:?}");
    all
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
}

async fn alert(sim: &SimInfo, uri: &str) -> Value {
    common::alert(&sim.client(), uri).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_is_posted_once_as_json_signed_and_keyed_and_check_reaches_the_url() {
    let sim = shared_sim();
    let rx = &serve_webhook().await;
    let s = &Setup::new(
        "wh-json",
        sim,
        "",
        &format!(
            "[[appliance.webhook]]\nname = \"hook\"\nurl = \"{}/hooks/T0/s3cretpath\"\nsecret_env = \"WH_SECRET\"\nretry_cap = \"1s\"\nheaders = {{ X-Team = \"ops\" }}\n",
            rx.url
        ),
    );
    let l = s.run().await;
    let c = sim.client();
    let warning = &raise(&c, json!({"severity": "Warning", "alertTypeID": s.tag})).await;
    let critical = &raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": s.tag, "description": "PSU <4> failed"}),
    )
    .await;
    let got = wait_for(rx, "/hooks/T0/s3cretpath", critical, 1).await;
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "hook").await == 1 })
            .await
    );
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "x-team"), "ops");
    let body = r.json.as_ref().expect("a JSON body");
    assert_eq!(body["appliance"], NAME);
    assert_eq!(body["message"]["resourceUri"], critical.as_str());
    assert_eq!(body["message"]["resource"]["description"], "PSU <4> failed");
    assert_eq!(
        body["routingKey"],
        format!("scmb.alerts.Created.{critical}").as_str()
    );
    // The signature verifies against the body as sent, with the shared secret.
    assert_eq!(
        header(r, "x-signature-256"),
        signature(SECRET.as_bytes(), r.body.as_bytes())
    );
    assert_ne!(
        header(r, "x-signature-256"),
        signature(b"another secret", r.body.as_bytes())
    );
    // The idempotency key is the event's id: the alert's uri and eTag, as created.
    let etag = body["message"]["eTag"].as_str().expect("eTag");
    let key = id_of(NAME, critical, etag, "created");
    assert_eq!(header(r, "idempotency-key"), key);
    assert_eq!(body["id"], key.as_str());
    assert_eq!(alert(sim, critical).await["eTag"], etag, "one version");
    // Nothing but the admitted alert: the warning was never posted.
    assert!(about(rx, "/hooks/T0/s3cretpath", warning).is_empty());
    // (The start of `scmb run` checks the URL with a HEAD, which sends no event.)
    let posts: Vec<Received> = rx
        .state
        .requests()
        .into_iter()
        .filter(|r| r.method != "HEAD")
        .collect();
    assert_eq!(posts.len(), 1, "exactly one POST: {posts:#?}");

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        !r.stderr.contains(SECRET) && !r.stderr.contains("s3cretpath"),
        "neither the secret nor the URL's path is logged: {}",
        r.stderr
    );

    // `scmb check` reaches the URL without sending an event (a HEAD).
    let before = rx.state.requests().len();
    let out = s
        .command(
            &["check", "--config", s.config.to_str().expect("utf8")],
            &ENV,
        )
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("webhook hook"))
        .unwrap_or_else(|| panic!("no webhook line: {stdout}"));
    assert!(
        line.starts_with("ok") && line.contains("answered a HEAD"),
        "{line}"
    );
    assert!(!line.contains("s3cretpath"), "{line}");
    let heads: Vec<Received> = rx.state.requests()[before..].to_vec();
    assert!(
        heads.iter().all(|r| r.method == "HEAD"),
        "no event sent: {heads:?}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_and_template_webhooks_each_get_the_alert_in_their_form() {
    let sim = shared_sim();
    let rx = &serve_webhook().await;
    let teams = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/webhook-teams.json.j2");
    let s = &Setup::new(
        "wh-forms",
        sim,
        "",
        &format!(
            "[[appliance.webhook]]\nname = \"ce\"\nurl = \"{u}/ce\"\nformat = \"cloudevents\"\n\
             [[appliance.webhook]]\nname = \"teams\"\nurl = \"{u}/teams\"\nformat = \"template\"\ntemplate_file = \"{t}\"\n",
            u = rx.url,
            t = teams.display()
        ),
    );
    let l = s.run().await;
    let c = sim.client();
    let uri = &raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": s.tag,
            "description": "The power supply in bay 4 \"failed\"."}),
    )
    .await;
    let ce = &wait_for(rx, "/ce", uri, 1).await[0];
    assert_eq!(header(ce, "content-type"), "application/cloudevents+json");
    let v = ce.json.as_ref().expect("json");
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "com.hpe.oneview.alert.created");
    assert_eq!(v["subject"], uri.as_str());
    assert_eq!(
        v["source"],
        format!("https://{}", common::appliance(&sim.rest_url)).as_str()
    );
    assert_eq!(v["data"]["uri"], uri.as_str());
    assert_eq!(v["data"]["severity"], "Critical");
    assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    let etag = v["data"]["eTag"].as_str().expect("eTag");
    assert_eq!(v["id"], id_of(NAME, uri, etag, "created").as_str());
    assert_eq!(header(ce, "idempotency-key"), v["id"].as_str().expect("id"));

    // The rendered message is JSON of the documented shape, quotes in the alert escaped.
    let t = &wait_for(rx, "/teams", uri, 1).await[0];
    assert_eq!(header(t, "content-type"), "application/json");
    let m = t.json.as_ref().expect("the template renders JSON");
    assert_eq!(m["type"], "message");
    let card = &m["attachments"][0]["content"];
    assert_eq!(
        m["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["type"], "AdaptiveCard");
    assert!(
        t.body.contains(r#"The power supply in bay 4 \"failed\"."#),
        "{}",
        t.body
    );
    assert!(t.body.contains(NAME));
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "teams").await == 1 })
            .await
    );
    assert_eq!(s.metric("scmb_sink_events_delivered_total", "ce").await, 1);

    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_into_one_delivery_with_the_same_key_and_a_400_fails_for_good_once() {
    let sim = shared_sim();
    let rx = &serve_webhook().await;
    let s = &Setup::new(
        "wh-retry",
        sim,
        "",
        &format!(
            "[[appliance.webhook]]\nname = \"hook\"\nurl = \"{}/in\"\nretry_cap = \"1s\"\n",
            rx.url
        ),
    );
    let l = s.run().await;
    let c = sim.client();

    // Two 503s with Retry-After: 1, then 200.
    rx.state.set_faults(WebhookFaults {
        status_next: vec![503, 503],
        retry_after_s: Some(1),
        ..WebhookFaults::default()
    });
    let first = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    let got = wait_for(rx, "/in", first, 3).await;
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "hook").await == 1 })
            .await
    );
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
    let keys: Vec<&str> = got.iter().map(|r| header(r, "idempotency-key")).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "one key: {keys:?}");
    assert!(got.iter().all(|r| r.body == got[0].body), "the same body");
    assert_eq!(s.metric("scmb_retries_total", "hook").await, 2);

    // A 400: failed for good, counted, never sent again.
    rx.state.set_faults(WebhookFaults {
        status_next: vec![400],
        ..WebhookFaults::default()
    });
    let refused = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    assert!(
        wait_until(|| async { s.metric("scmb_sink_incidents_failed_total", "hook").await == 1 })
            .await,
        "the refusal is counted"
    );
    // The next alert goes through: nothing is stuck behind the refusal, which was not resent.
    let next = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    wait_for(rx, "/in", next, 1).await;
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "hook").await == 2 })
            .await
    );
    assert_eq!(about(rx, "/in", refused).len(), 1, "sent once");
    assert_eq!(
        about(rx, "/in", first).len(),
        3,
        "delivered once, not again"
    );
    assert_eq!(s.metric("scmb_retries_total", "hook").await, 2);

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("HTTP 400"),
        "the refusal is logged: {}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clears_and_deletions_are_sent_only_where_lifecycle_is_on() {
    let sim = shared_sim();
    let rx = &serve_webhook().await;
    let s = &Setup::new(
        "wh-life",
        sim,
        "",
        &format!(
            "[[appliance.webhook]]\nname = \"life\"\nurl = \"{u}/life\"\nformat = \"cloudevents\"\nlifecycle = true\n\
             [[appliance.webhook]]\nname = \"plain\"\nurl = \"{u}/plain\"\nformat = \"cloudevents\"\n",
            u = rx.url
        ),
    );
    let l = s.run().await;
    let c = sim.client();
    let uri = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    wait_for(rx, "/life", uri, 1).await;
    let sim_path = uri.replace("/rest/alerts/", "/sim/alerts/");
    c.call(
        Method::POST,
        &format!("{sim_path}/clear"),
        Some(b"{}".to_vec()),
    )
    .await
    .expect("clear");
    wait_for(rx, "/life", uri, 2).await;
    c.call(Method::DELETE, &sim_path, None)
        .await
        .expect("delete");
    let life = wait_for(rx, "/life", uri, 3).await;
    let types: Vec<&str> = life
        .iter()
        .map(|r| {
            r.json
                .as_ref()
                .and_then(|v| v["type"].as_str())
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        types,
        vec![
            "com.hpe.oneview.alert.created",
            "com.hpe.oneview.alert.cleared",
            "com.hpe.oneview.alert.deleted"
        ]
    );
    let ids: std::collections::HashSet<&str> =
        life.iter().map(|r| header(r, "idempotency-key")).collect();
    assert_eq!(ids.len(), 3, "each version its own id");
    // Each event went through both webhooks in turn: by the deletion on /life, /plain had
    // been offered all three, and took the admitted one only.
    let plain = about(rx, "/plain", uri);
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(
        plain[0].json.as_ref().map(|v| v["type"].clone()),
        Some(json!("com.hpe.oneview.alert.created"))
    );
    assert_eq!(
        s.metric("scmb_sink_events_delivered_total", "plain").await,
        1
    );
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "life").await == 3 })
            .await
    );

    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_and_a_deletion_while_scmb_was_stopped_are_sent_after_the_restart_where_lifecycle_is_on(
) {
    let sim = shared_sim();
    let rx = &serve_webhook().await;
    let s = &Setup::new(
        "wh-away",
        sim,
        "",
        &format!(
            "[[appliance.webhook]]\nname = \"life\"\nurl = \"{u}/life\"\nformat = \"cloudevents\"\nlifecycle = true\n",
            u = rx.url
        ),
    );
    let l = s.run().await;
    let c = sim.client();
    let cleared = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    let deleted = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    wait_for(rx, "/life", cleared, 1).await;
    wait_for(rx, "/life", deleted, 1).await;
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));

    // While nobody listens: one alert is cleared, the other deleted.
    let path = |uri: &str| uri.replace("/rest/alerts/", "/sim/alerts/");
    c.call(
        Method::POST,
        &format!("{}/clear", path(cleared)),
        Some(b"{}".to_vec()),
    )
    .await
    .expect("clear");
    c.call(Method::DELETE, &path(deleted), None)
        .await
        .expect("delete");

    let l = s.run().await;
    let kinds = |uri: &str| -> Vec<String> {
        about(rx, "/life", uri)
            .iter()
            .map(|r| {
                r.json
                    .as_ref()
                    .and_then(|v| v["type"].as_str())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    wait_for(rx, "/life", cleared, 2).await;
    wait_for(rx, "/life", deleted, 2).await;
    assert_eq!(
        kinds(cleared),
        vec![
            "com.hpe.oneview.alert.created",
            "com.hpe.oneview.alert.cleared"
        ]
    );
    assert_eq!(
        kinds(deleted),
        vec![
            "com.hpe.oneview.alert.created",
            "com.hpe.oneview.alert.deleted"
        ]
    );
    // Sent once: a second restart owes nothing more.
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    let l = s.run().await;
    assert!(
        wait_until(|| async { s.metric("scmb_catch_up_runs_total", "").await >= 1 }).await,
        "the catch-up ran"
    );
    assert_eq!(
        s.metric("scmb_catch_up_alerts_total", "").await,
        0,
        "nothing owed is fed again"
    );
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    assert_eq!(kinds(cleared).len(), 2, "{:?}", kinds(cleared));
    assert_eq!(kinds(deleted).len(), 2, "{:?}", kinds(deleted));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_pauses_naming_the_setting_and_an_unacked_event_comes_again_after_a_restart_with_its_key(
) {
    let sim = shared_sim();
    let rx = &serve_webhook().await;
    let s = &Setup::new(
        "wh-restart",
        sim,
        "",
        &format!(
            "[[appliance.webhook]]\nname = \"hook\"\nurl = \"{}/in\"\nretry_cap = \"1s\"\n",
            rx.url
        ),
    );
    let l = s.run().await;
    let c = sim.client();

    // A 401: the webhook pauses (retry_cap), says which setting to check, then delivers.
    rx.state.set_faults(WebhookFaults {
        status_next: vec![401],
        ..WebhookFaults::default()
    });
    let first = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    let got = wait_for(rx, "/in", first, 2).await;
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![401, 200]
    );
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "hook").await == 1 })
            .await
    );
    assert_eq!(
        s.metric("scmb_sink_incidents_failed_total", "hook").await,
        0
    );

    // A 503 asking for 10 minutes: the stop ends the wait, the event is not acked, and the
    // next run sends it again with the same key.
    rx.state.set_faults(WebhookFaults {
        status_next: vec![503],
        retry_after_s: Some(600),
        ..WebhookFaults::default()
    });
    let second = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    let refused = wait_for(rx, "/in", second, 1).await;
    assert_eq!(refused[0].status, 503);
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(
        r.code,
        Some(0),
        "the stop ends the 600 s wait: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("the webhook receiver refused us")
            && r.stderr
                .contains("check the credentials webhook \"hook\" sends"),
        "the 401 is logged with the setting to check: {}",
        r.stderr
    );

    let l = s.run().await;
    let again = wait_for(rx, "/in", second, 2).await;
    assert_eq!(again[1].status, 200);
    assert_eq!(
        header(&again[0], "idempotency-key"),
        header(&again[1], "idempotency-key"),
        "the same key for the same alert version"
    );
    assert!(
        wait_until(|| async { s.metric("scmb_sink_events_delivered_total", "hook").await == 1 })
            .await
    );
    assert_eq!(
        about(rx, "/in", first).len(),
        2,
        "the first is not sent again"
    );
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    let _ = std::fs::remove_dir_all(&s.dir);
}
