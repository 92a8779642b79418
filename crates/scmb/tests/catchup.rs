//! `scmb --catch-up`: alerts raised before the start (with a look-back) and while the broker was
//! restarting are printed once each, read over REST, de-duplicated against what the bus
//! delivered. An appliance of its own: this test restarts the broker.

mod common;

use std::time::Duration;

use common::{appliance, cert_dir, run, Listening, BIN};
use reqwest::Method;
use scmb_sim::testkit::{start_in_background, temp_dir};
use scmb_sim::SimConfig;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_raised_while_disconnected_are_caught_up_once() {
    let mut cfg = SimConfig::new(temp_dir("catchup"));
    cfg.rest_port = 0;
    cfg.amqps_port = 0;
    cfg.sm_port = None;
    cfg.keypair_pregenerated = true;
    cfg.ov.eula_pending = false;
    let sim = start_in_background(cfg);
    let c = sim.client();
    let a = appliance(&sim.rest_url);
    let dir = cert_dir("catchup");
    let d = dir.to_str().expect("utf8");
    let env = [("SCMB_PASSWORD", "admin123")];
    assert_eq!(run(&["-a", &a, "-d", "--cert-dir", d], &env).code, Some(0));
    let tag = format!("Test.catchup.{}", rand::random::<u32>());
    let raise = |suffix: &'static str| {
        let c = c.clone();
        let tag = tag.clone();
        async move {
            let body = json!({"severity": "Critical", "alertTypeID": format!("{tag}.{suffix}")});
            c.call(
                Method::POST,
                "/sim/alerts",
                Some(serde_json::to_vec(&body).expect("json")),
            )
            .await
            .expect("raise")["uri"]
                .as_str()
                .expect("uri")
                .to_string()
        }
    };
    let before = raise("before").await;
    let port = sim.amqps_port.to_string();
    let pattern = format!("{tag}*");
    let mut l = Listening::start_env(
        BIN,
        &[
            "-a",
            &a,
            "--amqp-port",
            &port,
            "--cert-dir",
            d,
            "--catch-up",
            "--look-back",
            "all",
            "--alert-type",
            &pattern,
            "--output",
            "json",
            "--count",
            "3",
            "--heartbeat",
            "2",
        ],
        &env,
    );
    assert!(
        l.wait_for("catch-up done", Duration::from_secs(30)),
        "{:?}",
        l.stderr
    );
    // Raised while the broker restarts: the appliance drops the message; the catch-up after the
    // reconnect finds the alert.
    let c2 = c.clone();
    let restart =
        tokio::spawn(async move { c2.call(Method::POST, "/sim/broker/restart", None).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = raise("during").await;
    restart.await.expect("join").expect("restart");
    assert!(
        l.wait_for("reconnected to the message bus", Duration::from_secs(60)),
        "{:?}",
        l.stderr
    );
    let after = raise("after").await;
    let r = l.finish(Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let uris: Vec<String> = r
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["message"]["resourceUri"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        uris,
        vec![before.clone(), during, after],
        "each once, in order"
    );

    // A restart catches up from the checkpoint it saved, and does not print again what it
    // printed before, even when the alert changed meanwhile (a note: a new eTag and a newer
    // `modified`, so the catch-up lists it first): the first line is the alert raised while
    // scmb was not running.
    let id = before.rsplit('/').next().expect("id");
    c.call(
        Method::PATCH,
        &format!("/sim/alerts/{id}"),
        Some(serde_json::to_vec(&json!({"assignedToUser": "ops"})).expect("json")),
    )
    .await
    .expect("change the alert");
    let offline = raise("offline").await;
    // A second one: `--count 1` is reached within the catch-up with more to feed, which must
    // not keep it waiting for work the console no longer takes.
    let _ = raise("offline.2").await;
    let l = Listening::start_env(
        BIN,
        &[
            "-a",
            &a,
            "--amqp-port",
            &port,
            "--cert-dir",
            d,
            "--catch-up",
            "--alert-type",
            &pattern,
            "--output",
            "json",
            "--count",
            "1",
        ],
        &env,
    );
    // --count 1 is reached within the catch-up itself, and it exits.
    let r = l.finish(Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let first: Value = serde_json::from_str(r.stdout.lines().next().unwrap_or("{}")).expect("json");
    assert_eq!(
        first["message"]["resourceUri"],
        json!(offline),
        "{}",
        r.stdout
    );

    // --auto-bootstrap: the appliance regenerates its certificates while scmb listens; scmb
    // downloads the new ones and carries on.
    let mut l = Listening::start_env(
        BIN,
        &[
            "-a",
            &a,
            "--amqp-port",
            &port,
            "--cert-dir",
            d,
            "--auto-bootstrap",
            "--alert-type",
            &pattern,
            "--output",
            "json",
            "--count",
            "1",
            "--heartbeat",
            "2",
        ],
        &env,
    );
    assert!(
        l.wait_for("subscribed to the message bus", Duration::from_secs(30)),
        "{:?}",
        l.stderr
    );
    c.call(
        Method::POST,
        "/sim/certificates/regenerate?keepRestCertificate=true",
        None,
    )
    .await
    .expect("regenerate");
    assert!(
        l.wait_for("downloading them again", Duration::from_secs(60)),
        "{:?}",
        l.stderr
    );
    assert!(
        l.wait_for("reconnected to the message bus", Duration::from_secs(60)),
        "{:?}",
        l.stderr
    );
    let rekeyed = raise("rekeyed").await;
    let r = l.finish(Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(&rekeyed), "{}", r.stdout);
}
