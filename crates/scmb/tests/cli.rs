//! `scmb` end to end, run as a process against simulated appliances: the HPE sample's command
//! lines verbatim, certificate bootstrap, listening, filters, output formats, errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{appliance, cert_dir, download_certs, read, run, Listening};
use reqwest::Method;
use scmb_sim::testkit::{shared_sim, start_in_background, temp_dir, SimInfo};
use scmb_sim::SimConfig;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "admin123";

/// A REST-only appliance: fresh keypair state, EULA not yet accepted.
fn rest_only(api_version: u32, pregenerated: bool) -> SimInfo {
    let mut cfg = SimConfig::new(temp_dir("scmb-rest"));
    cfg.broker = false;
    cfg.rest_port = 0;
    cfg.sm_port = None;
    cfg.keypair_pregenerated = pregenerated;
    cfg.ov.current_version = api_version;
    cfg.ov.task_duration = Duration::from_millis(600);
    start_in_background(cfg)
}

fn assert_no_secret(r: &common::Run) {
    assert!(
        !r.stdout.contains(SECRET),
        "the password leaked to stdout:\n{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains(SECRET),
        "the password leaked to stderr:\n{}",
        r.stderr
    );
}

#[test]
fn seed_generate_twice_then_download_writes_the_appliance_files() {
    let sim = rest_only(4200, false);
    let a = appliance(&sim.rest_url);
    let dir = cert_dir("seed-g");
    let d = dir.to_str().expect("utf8");
    // -d before -g: the appliance has no keypair yet.
    let r = run(
        &[
            "-a",
            &a,
            "-u",
            "Administrator",
            "-p",
            SECRET,
            "-d",
            "--cert-dir",
            d,
        ],
        &[],
    );
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(
        r.stderr.contains("run `scmb -a HOST -g` first"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("accepting the EULA"),
        "the EULA is accepted like the sample: {}",
        r.stderr
    );
    assert_no_secret(&r);

    let r = run(
        &[
            "-a",
            &a,
            "-u",
            "Administrator",
            "-p",
            SECRET,
            "-g",
            "--cert-dir",
            d,
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("has been generated"), "{}", r.stdout);
    assert!(
        r.stderr.contains("visible") || r.stderr.contains("`ps`"),
        "-p must warn: {}",
        r.stderr
    );
    assert_no_secret(&r);
    // The REST certificate was pinned on first use.
    assert!(dir.join("rest-fingerprint").exists());

    let r = run(
        &[
            "-a",
            &a,
            "-u",
            "Administrator",
            "-p",
            SECRET,
            "-g",
            "--cert-dir",
            d,
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "a second -g is not an error: {r:?}");
    assert!(r.stdout.contains("already exists"), "{}", r.stdout);

    let r = run(&["-a", &a, "-p", SECRET, "-d", "--cert-dir", d], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_no_secret(&r);
    let key = read(&dir.join("key.pem"));
    assert!(
        key.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "PKCS#1 as handed out"
    );
    let mode = std::fs::metadata(dir.join("key.pem"))
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        read(&dir.join("caroot.pem")),
        read(&sim.pki_dir().join("ca.pem"))
    );
    assert_eq!(
        read(&dir.join("client.pem")),
        read(&sim.pki_dir().join("client-default.pem"))
    );
}

#[test]
fn setup_downloads_the_ca_string_form_of_api_300_with_the_password_from_the_environment() {
    let sim = rest_only(300, false);
    let a = appliance(&sim.rest_url);
    let dir = cert_dir("setup300");
    let r = run(
        &["setup", "-a", &a, "--cert-dir", dir.to_str().expect("utf8")],
        &[("SCMB_PASSWORD", SECRET)],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        !r.stderr.contains("`ps`"),
        "no -p warning when the password comes from the environment"
    );
    assert_no_secret(&r);
    assert_eq!(
        read(&dir.join("caroot.pem")),
        read(&sim.pki_dir().join("ca.pem"))
    );
    // -g -d together is the same one-step bootstrap, and idempotent.
    let r = run(
        &[
            "-a",
            &a,
            "-g",
            "-d",
            "--cert-dir",
            dir.to_str().expect("utf8"),
        ],
        &[("SCMB_PASSWORD", SECRET)],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn wrong_password_is_one_line_and_exit_code_3() {
    let sim = rest_only(4200, true);
    let dir = cert_dir("wrongpw");
    let r = run(
        &[
            "-a",
            &appliance(&sim.rest_url),
            "-d",
            "--cert-dir",
            dir.to_str().expect("utf8"),
        ],
        &[("SCMB_PASSWORD", "not-the-password"), ("RUST_LOG", "off")],
    );
    assert_eq!(r.code, Some(3), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].starts_with("scmb: ") && lines[0].contains("Invalid username or password"),
        "{}",
        lines[0]
    );
    assert!(!r.stderr.contains("not-the-password"));
}

#[test]
fn unreachable_appliance_and_missing_certificates_say_what_to_do() {
    let dir = cert_dir("missing");
    // Listening on a port where nothing answers, with whatever is in `dir`.
    let listen = || {
        run(
            &[
                "-a",
                "127.0.0.1",
                "--amqp-port",
                "1",
                "--cert-dir",
                dir.to_str().expect("utf8"),
            ],
            &[("RUST_LOG", "off")],
        )
    };
    let r = listen();
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(
        r.stderr.contains("scmb -a HOST -g") && r.stderr.contains("scmb setup"),
        "{}",
        r.stderr
    );
    // With certificates but nothing listening: unreachable, exit 5.
    let sim = shared_sim();
    for (src, dst) in [
        ("ca.pem", "caroot.pem"),
        ("client-default.pem", "client.pem"),
        ("client-default-key.pem", "key.pem"),
    ] {
        std::fs::copy(sim.pki_dir().join(src), dir.join(dst)).expect("copy");
    }
    let r = listen();
    assert_eq!(r.code, Some(5), "{r:?}");
    assert!(r.stderr.contains("cannot reach"), "{}", r.stderr);
    // A key others can read is refused before any connection, with the chmod that fixes it.
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let r = listen();
        assert_eq!(r.code, Some(4), "{r:?}");
        assert!(
            r.stderr.contains("readable by group or others")
                && r.stderr.contains(&format!("chmod 600 {}", key.display())),
            "{}",
            r.stderr
        );
    }
    let r = run(&["-a", "", "-d"], &[("RUST_LOG", "off")]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

fn listen(sim: &SimInfo, dir: &std::path::Path, extra: &[&str]) -> Listening {
    let port = sim.amqps_port.to_string();
    let a = appliance(&sim.rest_url);
    let mut args = vec![
        "-a",
        a.as_str(),
        "-u",
        "Administrator",
        "--amqp-port",
        port.as_str(),
        "--cert-dir",
        dir.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    let mut l = Listening::start(&args);
    assert!(
        l.wait_for("subscribed to the message bus", WAIT),
        "not subscribed: {:?}",
        l.stderr
    );
    l
}

async fn raise(c: &scmb_sim::client::SimClient, fields: Value) -> Value {
    c.call(
        Method::POST,
        "/sim/alerts",
        Some(serde_json::to_vec(&fields).expect("json")),
    )
    .await
    .expect("raise")
}

async fn publish_raw(c: &scmb_sim::client::SimClient, key: &str, body: Vec<u8>) {
    let resp = c
        .http
        .post(format!("{}/sim/publish?routingKey={}", c.rest_url, key))
        .body(body)
        .send()
        .await
        .expect("publish");
    assert!(resp.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_prints_new_active_critical_alerts_and_survives_malformed_messages() {
    let sim = shared_sim();
    let dir = download_certs(&sim.rest_url, "listen");
    let tag = format!("Test.listen.{}", rand::random::<u32>());
    let pattern = format!("{tag}*");
    let l = listen(
        sim,
        &dir,
        &["--output", "json", "--count", "2", "--alert-type", &pattern],
    );
    let c = sim.client();
    let key = "scmb.alerts.Created./rest/alerts/999999";
    let huge = vec![b'{'; 5 << 20];
    let malformed: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        vec![],
        b"{\"changeType\":".to_vec(),
        vec![0xff, 0xfe, 0xfd],
        br#"{"changeType":7,"resourceUri":"/x"}"#.to_vec(),
        br#"[1,2]"#.to_vec(),
        huge,
    ];
    for m in &malformed[..3] {
        publish_raw(&c, key, m.clone()).await;
    }
    raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{tag}.warn")}),
    )
    .await;
    let first = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.one"), "description": null}),
    )
    .await;
    raise(&c, json!({"severity": "Critical", "alertState": "Cleared", "alertTypeID": format!("{tag}.cleared")})).await;
    for m in &malformed[3..] {
        publish_raw(&c, key, m.clone()).await;
    }
    let second = raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.two")}),
    )
    .await;
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let uris: Vec<&Value> = lines.iter().map(|l| &l["message"]["resourceUri"]).collect();
    assert_eq!(uris, vec![&first["uri"], &second["uri"]], "{}", r.stdout);
    assert_eq!(
        lines[0]["routingKey"],
        json!(format!(
            "scmb.alerts.Created.{}",
            first["uri"].as_str().expect("uri")
        ))
    );
    assert!(lines[0]["receivedAt"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(
        r.stderr.matches("malformed message rejected").count() >= malformed.len(),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("larger than"),
        "the 5 MB body is refused by size: {}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_and_escalation_filters_admit_what_they_promise() {
    let sim = shared_sim();
    let dir = download_certs(&sim.rest_url, "filters");
    let tag = format!("Test.filter.{}", rand::random::<u32>());
    let pattern = format!("{tag}*");
    let l = listen(
        sim,
        &dir,
        &[
            "--output",
            "json",
            "--count",
            "2",
            "--alert-type",
            &pattern,
            "--state",
            "Active,Locked",
            "--escalations",
        ],
    );
    let c = sim.client();
    let locked = raise(&c, json!({"severity": "Critical", "alertState": "Locked", "alertTypeID": format!("{tag}.locked")})).await;
    let warn = raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{tag}.esc")}),
    )
    .await;
    let id = warn["uri"]
        .as_str()
        .expect("uri")
        .rsplit('/')
        .next()
        .expect("id")
        .to_string();
    // An unrelated update of a critical alert is not an escalation.
    let other = raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{tag}.note")}),
    )
    .await;
    let other_id = other["uri"]
        .as_str()
        .expect("uri")
        .rsplit('/')
        .next()
        .expect("id")
        .to_string();
    c.call(
        Method::PATCH,
        &format!("/sim/alerts/{other_id}"),
        Some(br#"{"urgency":"High"}"#.to_vec()),
    )
    .await
    .expect("update");
    c.call(
        Method::PATCH,
        &format!("/sim/alerts/{id}"),
        Some(br#"{"severity":"Critical"}"#.to_vec()),
    )
    .await
    .expect("escalate");
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let got: Vec<(String, String)> = r
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (
                v["message"]["changeType"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["message"]["resourceUri"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "Created".to_string(),
                locked["uri"].as_str().expect("u").to_string()
            ),
            (
                "Updated".to_string(),
                warn["uri"].as_str().expect("u").to_string()
            )
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_output_formats_match_the_expected_output_in_testdata() {
    let sim = shared_sim();
    let dir = download_certs(&sim.rest_url, "formats");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let input = std::fs::read(root.join("alert-critical.json")).expect("testdata");
    let expected_human = read(&root.join("alert-critical.human"));
    let key = "scmb.alerts.Created./rest/alerts/4242";
    let c = sim.client();

    let l = listen(sim, &dir, &["-r", key, "--count", "1"]);
    publish_raw(&c, key, input.clone()).await;
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout, expected_human,
        "no colour when stdout is not a terminal"
    );

    let l = listen(sim, &dir, &["-r", key, "--count", "1", "--output", "json"]);
    publish_raw(&c, key, input.clone()).await;
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim_end()).expect("json line");
    assert_eq!(
        v["message"],
        serde_json::from_slice::<Value>(&input).expect("input")
    );
    assert_eq!(v["routingKey"], key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_listener_with_exit_0_and_leaves_no_queue_behind() {
    let sim = shared_sim();
    let dir = download_certs(&sim.rest_url, "sigterm");
    let l = listen(sim, &dir, &["-r", "scmb.nothing.#"]);
    let queue = l
        .stderr
        .iter()
        .find_map(|line| line.split("queue=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the queue name is logged")
        .to_string();
    assert!(queue.starts_with("amq.gen-"), "server-named: {queue}");
    let admin = scmb_sim::bus::BusTarget {
        cert: sim.pki_dir().join("admin.pem"),
        key: sim.pki_dir().join("admin-key.pem"),
        ..sim.default_target()
    };
    // A passive declare from another connection: 405 RESOURCE_LOCKED while the exclusive
    // queue exists, 404 NOT_FOUND once it is gone.
    let probe = |queue: String| {
        let admin = admin.clone();
        async move {
            let (_c, ch) = scmb_sim::testkit::open(&admin).await.expect("admin");
            let rec = scmb_sim::testkit::CloseRecorder::default();
            ch.register_callback(rec.clone()).await.expect("callback");
            let args = amqprs::channel::QueueDeclareArguments::new(&queue)
                .passive(true)
                .finish();
            let _ = ch.queue_declare(args).await;
            rec.wait(WAIT).await.map(|(code, _)| code)
        }
    };
    assert_eq!(
        probe(queue.clone()).await,
        Some(405),
        "exclusive queue exists while listening"
    );
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        probe(queue).await,
        Some(404),
        "auto-delete: no orphan queue left behind"
    );
}

#[test]
fn completions_and_man_pages_are_generated_from_the_cli_definition() {
    let bash = run(&["completions", "bash"], &[]);
    assert_eq!(bash.code, Some(0), "{bash:?}");
    for word in ["setup", "watch", "run", "check", "--severity", "--cert-dir"] {
        assert!(bash.stdout.contains(word), "bash completion lacks {word}");
    }
    let zsh = run(&["completions", "zsh", "ov_to_sm"], &[]);
    assert!(zsh.stdout.contains("#compdef ov_to_sm") && zsh.stdout.contains("--spass"));
    let man = run(&["man"], &[]);
    assert_eq!(man.code, Some(0), "{man:?}");
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH scmb"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    assert!(man.stdout.contains("State\\-Change") || man.stdout.contains("State-Change"));
    let man = run(&["man", "ov_to_sm"], &[]);
    assert!(
        man.stdout.contains(".TH ov_to_sm"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
}

/// Batched (`multiple`) acks settle every delivery whose work is done: after `--count` is
/// reached on an existing queue (`--queue`), nothing is left in it to be redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_leave_nothing_unacked_on_an_existing_queue() {
    use amqprs::channel::{QueueBindArguments, QueueDeclareArguments};
    let sim = shared_sim();
    let c = sim.client();
    let dir = download_certs(&sim.rest_url, "batched-acks");
    // A server-named queue that outlives its declarer, as an operator would keep one.
    let (conn, ch) = scmb_sim::testkit::open(&sim.default_target())
        .await
        .expect("open");
    let (queue, _, _) = ch
        .queue_declare(QueueDeclareArguments::new("").durable(false).finish())
        .await
        .expect("declare")
        .expect("named");
    let tag = format!("batched{}", rand::random::<u32>());
    ch.queue_bind(QueueBindArguments::new(
        &queue,
        "scmb",
        &format!("scmb.alerts.Created.{tag}.#"),
    ))
    .await
    .expect("bind");
    // 300 messages, every third critical, the last one too: --count 100 ends at the last.
    for i in 0..300u32 {
        let sev = if i % 3 == 2 { "Critical" } else { "Warning" };
        let uri = format!("/rest/alerts/{tag}{i}");
        let body = json!({"resourceUri": uri, "changeType": "Created", "eTag": "1",
            "resource": {"uri": uri, "severity": sev, "alertState": "Active", "alertTypeID": "x"}});
        publish_raw(
            &c,
            &format!("scmb.alerts.Created.{tag}.{i}"),
            serde_json::to_vec(&body).expect("json"),
        )
        .await;
    }
    let ready = |ch: amqprs::channel::Channel, q: String| async move {
        ch.queue_declare(QueueDeclareArguments::new(&q).passive(true).finish())
            .await
            .expect("passive")
            .map(|(_, n, _)| n)
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + WAIT;
    while ready(ch.clone(), queue.clone()).await < 300 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port = sim.amqps_port.to_string();
    let r = run(
        &[
            "watch",
            "-a",
            &appliance(&sim.rest_url),
            "--amqp-port",
            &port,
            "--cert-dir",
            dir.to_str().expect("utf8"),
            "--queue",
            &queue,
            "--count",
            "100",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout.lines().count(), 100);
    // Every delivery was acked before the connection closed: none came back to the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready(ch.clone(), queue.clone()).await, 0);
    let _ = ch.close().await;
    let _ = conn.close().await;
}

/// The listener runs the same pipeline as the service, and serves the same metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_metrics_like_the_service() {
    let sim = shared_sim();
    let dir = download_certs(&sim.rest_url, "listener-metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = format!("127.0.0.1:{port}");
    let tag = format!("ListenerMetrics{}.", rand::random::<u32>());
    let pattern = format!("{tag}*");
    let mut l = listen(
        sim,
        &dir,
        &["--alert-type", &pattern, "--metrics-listen", &addr],
    );
    let matched = format!(
        "scmb_messages_matched_total{{appliance=\"{}\"}}",
        appliance(&sim.rest_url)
    );
    assert!(l.wait_for("serving /metrics", WAIT), "{:?}", l.stderr);
    let c = sim.client();
    raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}1")}),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        let (status, body) = common::get(&format!("http://{addr}/metrics")).await;
        text = body;
        if status == 200 && common::metric(&text, &matched) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(common::metric(&text, &matched), 1, "{text}");
    assert!(
        r.stdout.contains(&tag),
        "the alert was printed: {}",
        r.stdout
    );
    assert!(text.contains("scmb_bus_connected"), "{text}");
}
