//! TLS done right, against an appliance of its own whose broker certificate names
//! `oneview.example` only — not the 127.0.0.1 we dial, like appliances reached by IP.

mod common;

use std::time::Duration;

use common::{appliance, cert_dir, run, Listening};
use reqwest::Method;
use scmb_sim::pki::BrokerCertNames;
use scmb_sim::testkit::{start_in_background, temp_dir};
use scmb_sim::SimConfig;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_names_ca_and_rest_fingerprints_are_verified_with_clear_errors() {
    let mut cfg = SimConfig::new(temp_dir("tls"));
    cfg.rest_port = 0;
    cfg.amqps_port = 0;
    cfg.sm_port = None;
    cfg.keypair_pregenerated = true;
    cfg.broker_names = BrokerCertNames {
        common_name: "oneview.example".into(),
        sans: vec!["oneview.example".into()],
    };
    let sim = start_in_background(cfg);
    let a = appliance(&sim.rest_url);
    let port = sim.amqps_port.to_string();
    let dir = cert_dir("tls");
    let d = dir.to_str().expect("utf8");
    let env = [("SCMB_PASSWORD", "admin123")];
    let r = run(&["-a", &a, "-d", "--cert-dir", d], &env);
    assert_eq!(r.code, Some(0), "{r:?}");

    // 1. By default the name is checked: 127.0.0.1 is not in the certificate.
    let r = run(
        &["-a", &a, "--amqp-port", &port, "--cert-dir", d],
        &[("RUST_LOG", "off")],
    );
    assert_eq!(r.code, Some(6), "{r:?}");
    assert!(
        r.stderr.contains("--tls-server-name") && r.stderr.contains("--no-verify-hostname"),
        "{}",
        r.stderr
    );

    // 2. With the name the certificate carries, or with chain-only verification, it works;
    //    several -r routes are bound.
    let c = sim.client();
    for flags in [
        vec!["--tls-server-name", "oneview.example"],
        vec!["--no-verify-hostname"],
    ] {
        let mut args = vec![
            "-a",
            a.as_str(),
            "--amqp-port",
            port.as_str(),
            "--cert-dir",
            d,
            "--count",
            "2",
            "--output",
            "json",
            "--category",
            "*",
            "--change-type",
            "Created,Updated",
            "-r",
            "scmb.alerts.#",
            "-r",
            "scmb.server-hardware.#",
        ];
        args.extend(flags.iter().copied());
        let mut l = Listening::start(&args);
        assert!(
            l.wait_for("subscribed to the message bus", WAIT),
            "{:?}",
            l.stderr
        );
        c.call(Method::POST, "/sim/alerts", Some(b"{}".to_vec()))
            .await
            .expect("raise");
        c.call(Method::POST, "/sim/resources", Some(br#"{"category":"server-hardware","changeType":"Updated","uri":"/rest/server-hardware/S1"}"#.to_vec()))
            .await
            .expect("resource");
        let r = l.finish(WAIT);
        assert_eq!(r.code, Some(0), "{flags:?}: {}", r.stderr);
        assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
        assert!(
            r.stdout
                .contains("scmb.server-hardware.Updated./rest/server-hardware/S1"),
            "{}",
            r.stdout
        );
    }

    // 3. A CA that did not sign the broker's certificate is refused.
    let other = scmb_sim::pki::Pki::load_or_create(
        &temp_dir("otherca"),
        &BrokerCertNames::default(),
        &["localhost".into()],
    )
    .expect("pki");
    let wrong = cert_dir("wrongca");
    for f in ["client.pem", "key.pem"] {
        std::fs::copy(dir.join(f), wrong.join(f)).expect("copy");
    }
    std::fs::copy(&other.paths.ca_cert, wrong.join("caroot.pem")).expect("copy");
    let r = run(
        &[
            "-a",
            &a,
            "--amqp-port",
            &port,
            "--no-verify-hostname",
            "--cert-dir",
            wrong.to_str().expect("utf8"),
        ],
        &[("RUST_LOG", "off")],
    );
    assert_eq!(r.code, Some(6), "{r:?}");
    assert!(
        r.stderr.contains("not signed by the appliance CA"),
        "{}",
        r.stderr
    );

    // 4. Human output of another category is generic, not an alert layout.
    let mut l = Listening::start(&[
        "-a",
        &a,
        "--amqp-port",
        &port,
        "--cert-dir",
        d,
        "--no-verify-hostname",
        "--count",
        "1",
        "--category",
        "server-hardware",
        "--change-type",
        "Updated",
        "-r",
        "scmb.server-hardware.#",
    ]);
    assert!(
        l.wait_for("subscribed to the message bus", WAIT),
        "{:?}",
        l.stderr
    );
    c.call(Method::POST, "/sim/resources", Some(br#"{"category":"server-hardware","changeType":"Updated","uri":"/rest/server-hardware/S2"}"#.to_vec()))
        .await
        .expect("resource");
    let r = l.finish(WAIT);
    assert!(
        r.stdout
            .contains("server-hardware  Updated  /rest/server-hardware/S2"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("alertState"), "{}", r.stdout);

    // 5. REST trust: --insecure warns loudly; a changed pinned fingerprint is refused loudly.
    let r = run(
        &[
            "-a",
            &a,
            "-d",
            "--insecure",
            "--cert-dir",
            cert_dir("insecure").to_str().expect("utf8"),
        ],
        &env,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("NOT verified"), "{}", r.stderr);
    c.call(Method::POST, "/sim/certificates/regenerate", None)
        .await
        .expect("regenerate");
    let r = run(
        &["-a", &a, "-d", "--cert-dir", d],
        &[("SCMB_PASSWORD", "admin123"), ("RUST_LOG", "off")],
    );
    assert_eq!(r.code, Some(6), "{r:?}");
    assert!(
        r.stderr.contains("REFUSING TO CONNECT") && r.stderr.contains("rest-fingerprint"),
        "{}",
        r.stderr
    );
    // With the new CA given explicitly, the REST API verifies again.
    let ca = sim.pki_dir().join("ca.pem");
    let r = run(
        &[
            "-a",
            &a,
            "-d",
            "--rest-ca",
            ca.to_str().expect("utf8"),
            "--cert-dir",
            d,
        ],
        &env,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
}
