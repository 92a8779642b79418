//! The simulated appliance's message bus, on a real RabbitMQ node shared by every test here
//! (isolation by fresh server-named queues and fresh alert ids).

use std::time::Duration;

use reqwest::Method;
use scmb_sim::testkit::{open, shared_sim, TestConsumer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn login(c: &scmb_sim::client::SimClient) -> String {
    let r = c
        .http
        .post(format!("{}/rest/login-sessions", c.rest_url))
        .header("X-API-Version", "4200")
        .json(&json!({"userName": "Administrator", "password": "admin123", "loginMsgAck": true}))
        .send()
        .await
        .expect("login");
    let v: Value = r.json().await.expect("json");
    v["sessionID"].as_str().expect("session").to_string()
}

#[tokio::test]
async fn every_alert_change_is_published_with_the_scmb_envelope() {
    let sim = shared_sim();
    let c = sim.client();
    let mut q = TestConsumer::bind(&sim.default_target(), "scmb", &["scmb.alerts.#"])
        .await
        .expect("bind");
    let a = c
        .call(
            Method::POST,
            "/sim/alerts",
            Some(
                serde_json::to_vec(&json!({"severity": "Critical", "description": null}))
                    .expect("json"),
            ),
        )
        .await
        .expect("raise");
    let uri = a["uri"].as_str().expect("uri").to_string();
    let (key, msg) = q.next_for(&uri, WAIT).await.expect("Created message");
    assert_eq!(key, format!("scmb.alerts.Created.{uri}"));
    for field in [
        "resourceUri",
        "changeType",
        "newState",
        "newSubState",
        "eTag",
        "timestamp",
        "resource",
        "associatedTask",
        "userInitiatedTask",
        "changedAttributes",
        "data",
    ] {
        assert!(
            msg.get(field).is_some(),
            "envelope field {field} missing: {msg}"
        );
    }
    assert_eq!(msg["changeType"], "Created");
    assert_eq!(msg["resourceUri"], json!(uri));
    assert_eq!(msg["newState"], "Active");
    assert_eq!(msg["eTag"], a["eTag"]);
    assert_eq!(msg["resource"], a);
    assert_eq!(msg["resource"]["description"], Value::Null);
    let ts = msg["timestamp"].as_str().expect("timestamp");
    assert_eq!(ts.len(), 24, "milliseconds and Z: {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.');

    // A PUT with notes → Updated, new eTag.
    let session = login(&c).await;
    let r: Value = c
        .http
        .put(format!("{}{uri}", c.rest_url))
        .header("X-API-Version", "4200")
        .header("auth", &session)
        .json(&json!({"notes": "hello", "eTag": a["eTag"]}))
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    let (key, msg) = q.next_for(&uri, WAIT).await.expect("Updated message");
    assert_eq!(key, format!("scmb.alerts.Updated.{uri}"));
    assert_eq!(msg["eTag"], r["eTag"]);
    assert_ne!(msg["eTag"], a["eTag"]);
    assert_eq!(msg["changedAttributes"], json!(["changeLog"]));

    // Escalation through an update, lock, clear, delete.
    let id = uri.rsplit('/').next().expect("id");
    c.call(
        Method::PATCH,
        &format!("/sim/alerts/{id}"),
        Some(br#"{"urgency":"High"}"#.to_vec()),
    )
    .await
    .expect("update");
    let (_, msg) = q.next_for(&uri, WAIT).await.expect("Updated");
    assert_eq!(msg["resource"]["urgency"], "High");
    c.call(Method::POST, &format!("/sim/alerts/{id}/lock"), None)
        .await
        .expect("lock");
    let (_, msg) = q.next_for(&uri, WAIT).await.expect("Locked");
    assert_eq!(msg["newState"], "Locked");
    c.call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
        .await
        .expect("clear");
    let (key, msg) = q.next_for(&uri, WAIT).await.expect("Cleared");
    assert_eq!(key, format!("scmb.alerts.Updated.{uri}"));
    assert_eq!(msg["newState"], "Cleared");
    c.call(Method::DELETE, &format!("/sim/alerts/{id}"), None)
        .await
        .expect("delete");
    let (key, msg) = q.next_for(&uri, WAIT).await.expect("Deleted");
    assert_eq!(key, format!("scmb.alerts.Deleted.{uri}"));
    assert_eq!(msg["changeType"], "Deleted");
}

#[tokio::test]
async fn the_default_client_is_read_only_on_the_broker() {
    let sim = shared_sim();
    let target = sim.default_target();
    // Allowed: server-named queue, bind to scmb and msmb, consume.
    let q = TestConsumer::bind(&target, "scmb", &["scmb.#"])
        .await
        .expect("server-named queue and bind");
    assert!(q.queue.starts_with("amq.gen-"), "{}", q.queue);
    q.channel
        .queue_bind(amqprs::channel::QueueBindArguments::new(
            &q.queue, "msmb", "msmb.#",
        ))
        .await
        .expect("bind to msmb");
    q.channel
        .basic_consume_rx(amqprs::channel::BasicConsumeArguments::new(
            &q.queue, "probe",
        ))
        .await
        .expect("consuming from its own queue is allowed");

    // Refused: a named queue.
    let (_conn, ch) = open(&target).await.expect("connect");
    let rec = scmb_sim::testkit::CloseRecorder::default();
    ch.register_callback(rec.clone()).await.expect("callback");
    let r = ch
        .queue_declare(amqprs::channel::QueueDeclareArguments::new(
            "my-named-queue",
        ))
        .await;
    assert!(r.is_err(), "a named queue must be refused");
    let (code, text) = rec.wait(WAIT).await.expect("the broker closes the channel");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("ACCESS_REFUSED"), "{text}");

    // Refused: publishing to scmb.
    let (_conn2, ch2) = open(&target).await.expect("connect");
    let rec2 = scmb_sim::testkit::CloseRecorder::default();
    ch2.register_callback(rec2.clone()).await.expect("callback");
    let _ = ch2
        .basic_publish(
            amqprs::BasicProperties::default(),
            b"{}".to_vec(),
            amqprs::channel::BasicPublishArguments::new(
                "scmb",
                "scmb.alerts.Created./rest/alerts/1",
            ),
        )
        .await;
    let (code, text) = rec2
        .wait(WAIT)
        .await
        .expect("the broker closes the channel");
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("ACCESS_REFUSED") && text.contains("exchange 'scmb'"),
        "{text}"
    );

    // Refused: a certificate that is not from the appliance CA (a self-made CA).
    let dir = scmb_sim::testkit::temp_dir("rogue");
    let rogue =
        scmb_sim::pki::Pki::load_or_create(&dir, &Default::default(), &["localhost".into()])
            .expect("pki");
    let mut t = target.clone();
    t.cert = rogue.paths.client_cert.clone();
    t.key = rogue.paths.client_key.clone();
    assert!(
        open(&t).await.is_err(),
        "a client certificate from another CA is refused"
    );
}

#[tokio::test]
async fn other_categories_tasks_and_raw_bodies_are_published_verbatim() {
    let sim = shared_sim();
    let c = sim.client();
    let mut q = TestConsumer::bind(
        &sim.default_target(),
        "scmb",
        &["scmb.server-hardware.#", "scmb.tasks", "scmb.raw.#"],
    )
    .await
    .expect("bind");
    let r = c
        .call(Method::POST, "/sim/resources", Some(br#"{"category":"server-hardware","changeType":"Updated","uri":"/rest/server-hardware/ABC"}"#.to_vec()))
        .await
        .expect("resource");
    assert_eq!(
        r["routingKey"],
        "scmb.server-hardware.Updated./rest/server-hardware/ABC"
    );
    let (key, msg) = q
        .next_for("/rest/server-hardware/ABC", WAIT)
        .await
        .expect("server-hardware");
    assert_eq!(
        key,
        "scmb.server-hardware.Updated./rest/server-hardware/ABC"
    );
    assert_eq!(msg["resource"]["category"], "server-hardware");
    c.call(
        Method::POST,
        "/sim/resources",
        Some(br#"{"category":"tasks","changeType":"Updated","uri":"/rest/tasks/77"}"#.to_vec()),
    )
    .await
    .expect("task");
    let (key, msg) = q.next_for("scmb.tasks", WAIT).await.expect("task message");
    assert_eq!(key, "scmb.tasks");
    assert_eq!(msg["resourceUri"], "/rest/tasks/77");

    // Raw bodies, malformed and huge, arrive byte for byte.
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{\"resourceUri\": ".to_vec(),
        vec![],
        vec![0xff, 0xfe, 0x00],
        vec![b'x'; 10 * 1024 * 1024],
    ];
    for (i, b) in bodies.iter().enumerate() {
        let resp = c
            .http
            .post(format!(
                "{}/sim/publish?routingKey=scmb.raw.{i}",
                c.rest_url
            ))
            .body(b.clone())
            .send()
            .await
            .expect("publish");
        assert!(resp.status().is_success());
        let (key, got) = q.next(WAIT).await.expect("raw message");
        assert_eq!(key, format!("scmb.raw.{i}"));
        assert_eq!(got.len(), b.len());
        assert!(got == *b, "body {i} must arrive unchanged");
    }
}

#[tokio::test]
async fn a_storm_raises_every_alert_with_the_asked_mix() {
    let sim = shared_sim();
    let c = sim.client();
    let mut q = TestConsumer::bind(&sim.default_target(), "scmb", &["scmb.alerts.Created.#"])
        .await
        .expect("bind");
    let r = c
        .call(Method::POST, "/sim/storm", Some(br#"{"count":2000,"rate":0,"severities":{"Critical":1,"Warning":9},"fields":{"healthCategory":"Storm"}}"#.to_vec()))
        .await
        .expect("storm");
    assert_eq!(r["raised"], 2000);
    assert_eq!(r["bySeverity"]["Critical"], 200);
    assert!(r["perSecond"].as_f64().is_some());
    let (mut got, mut critical) = (0, 0);
    while got < 2000 {
        let Some((_, body)) = q.next(WAIT).await else {
            break;
        };
        let v: Value = serde_json::from_slice(&body).expect("json");
        if v["resource"]["healthCategory"] == "Storm" {
            got += 1;
            if v["resource"]["severity"] == "Critical" {
                critical += 1;
            }
        }
    }
    assert_eq!((got, critical), (2000, 200));
}
