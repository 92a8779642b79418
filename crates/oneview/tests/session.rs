//! A logged-in session against the simulated appliance: EULA, the CA in both API generations,
//! the keypair lifecycle with its task, transparent re-login after expiry, and appliance
//! faults (HTML and JSON 503) turned into clear errors.

mod common;

use std::time::Duration;

use common::start;
use reqwest::Method;
use scmb_oneview::{Client, Generation, OneViewError};
use serde_json::json;

#[tokio::test]
async fn eula_is_reported_pending_then_accepted_without_a_session() {
    let s = start(|c| c.ov.current_version = 600).await;
    let client = Client::connect(s.config()).await.expect("connect");
    assert!(
        client.eula_status().await.expect("status"),
        "fresh appliance"
    );
    client.accept_eula(false).await.expect("accept");
    assert!(!client.eula_status().await.expect("status"));
    let session = client
        .login(scmb_oneview::Credentials::new(
            common::USER,
            common::PASSWORD,
        ))
        .await
        .expect("login");
    assert!(!session.eula_status().await.expect("status via session"));
    session
        .accept_eula(true)
        .await
        .expect("accepting again is harmless");
    s.stop().await;
}

#[tokio::test]
async fn the_ca_certificate_is_the_appliance_ca_in_both_api_generations() {
    for version in [300, 500, 600, 4200] {
        let s = start(|c| c.ov.current_version = version).await;
        let session = s.session().await;
        let pem = session.ca_certificate().await.expect("CA");
        assert_eq!(pem.trim(), s.ca_pem.trim(), "API {version}");
        assert!(!pem.contains("[object Object]") && !pem.contains('{'));
        s.stop().await;
    }
}

#[tokio::test]
async fn keypair_is_absent_then_generated_through_a_task_then_present_and_not_regenerated() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    assert_eq!(session.keypair().await.expect("keypair"), None);

    let Generation::Started { task_uri } = session.generate_keypair().await.expect("generate")
    else {
        panic!("expected a task");
    };
    assert!(task_uri.starts_with("/rest/tasks/"), "{task_uri}");
    // While it runs, a second request is refused as a conflict: treated as "exists".
    assert_eq!(
        session.generate_keypair().await.expect("again"),
        Generation::AlreadyExists
    );
    let mut seen = Vec::new();
    let task = session
        .wait_task(&task_uri, Duration::from_secs(10), |t| {
            seen.push(t.state.clone())
        })
        .await
        .expect("task completes");
    assert_eq!(task.state, "Completed");
    assert_eq!(task.percent_complete, Some(100));
    assert!(seen.first().is_some_and(|s| s == "Running"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("Completed"));

    let kp = session
        .keypair()
        .await
        .expect("keypair")
        .expect("generated");
    assert!(kp.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        kp.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "PKCS#1"
    );
    let on_disk =
        std::fs::read_to_string(s.sim.info["clientKey"].as_str().expect("clientKey")).expect("key");
    assert_eq!(kp.key_pem.trim(), on_disk.trim());
    let dbg = format!("{kp:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");

    assert_eq!(
        session.generate_keypair().await.expect("again"),
        Generation::AlreadyExists
    );
    s.stop().await;
}

#[tokio::test]
async fn waiting_for_an_unknown_task_is_an_api_error_and_a_short_timeout_is_task_timeout() {
    let s = start(|c| c.ov.task_duration = Duration::from_secs(5)).await;
    let session = s.session().await;
    let err = session
        .wait_task("/rest/tasks/999", Duration::from_secs(2), |_| {})
        .await
        .expect_err("no such task");
    assert_eq!(err.status(), Some(404), "{err:?}");

    let Generation::Started { task_uri } = session.generate_keypair().await.expect("generate")
    else {
        panic!("expected a task");
    };
    let started = std::time::Instant::now();
    let err = session
        .wait_task(&task_uri, Duration::from_millis(600), |_| {})
        .await
        .expect_err("still running");
    assert!(matches!(err, OneViewError::TaskTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    s.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_logged_in_again_transparently_and_only_once() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    session.alerts(&[], 10).await.expect("before expiry");
    let expired = s.control(Method::POST, "/sim/sessions/expire", None).await;
    assert_eq!(expired["expired"], 1);

    // Several calls at once all see 401; one new login serves them all.
    let (a, b, c, d) = tokio::join!(
        session.alerts(&[], 10),
        session.keypair(),
        session.alert("/rest/alerts/1"),
        session.ca_certificate(),
    );
    a.expect("alerts");
    b.expect("keypair");
    c.expect("alert");
    d.expect("ca");
    let expired = s.control(Method::POST, "/sim/sessions/expire", None).await;
    assert_eq!(expired["expired"], 1, "exactly one new session");

    session
        .alerts(&[], 10)
        .await
        .expect("after the second expiry");
    session.logout().await.expect("logout");
    s.stop().await;
}

#[tokio::test]
async fn an_html_503_is_a_bad_response_with_a_snippet_and_a_json_503_an_api_error() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    s.control(
        Method::POST,
        "/sim/faults/rest",
        Some(json!({"status": 503, "seconds": 10, "html": true})),
    )
    .await;
    let err = session.alerts(&[], 10).await.expect_err("503");
    let OneViewError::BadResponse {
        status,
        content_type,
        snippet,
        ..
    } = &err
    else {
        panic!("expected BadResponse, got {err:?}");
    };
    assert_eq!(*status, 503);
    assert!(content_type.as_deref().is_some_and(|c| c.contains("html")));
    assert!(
        snippet.contains("Service Unavailable") && !snippet.contains('<'),
        "{snippet}"
    );
    assert!(snippet.chars().count() <= 200);
    assert!(err.is_transient());
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    // Every kind of call fails the same clear way, none panics or hangs.
    assert!(matches!(
        session.keypair().await,
        Err(OneViewError::BadResponse { .. })
    ));
    assert!(matches!(
        session.ca_certificate().await,
        Err(OneViewError::BadResponse { .. })
    ));
    assert!(matches!(
        Client::connect(s.config()).await,
        Err(OneViewError::BadResponse { status: 503, .. })
    ));

    s.control(
        Method::POST,
        "/sim/faults/rest",
        Some(json!({"status": 503, "seconds": 10})),
    )
    .await;
    let err = session.alerts(&[], 10).await.expect_err("503");
    assert_eq!(err.error_code(), Some("SERVICE_UNAVAILABLE"), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string()
            .contains("(SERVICE_UNAVAILABLE, HTTP 503) — "),
        "{err}"
    );

    s.control(Method::DELETE, "/sim/faults/rest", None).await;
    session.alerts(&[], 10).await.expect("recovered");
    s.stop().await;
}

#[tokio::test]
async fn keep_alive_reads_the_idle_timeout_and_survives_an_expired_session() {
    let s = start(|c| c.ov.idle_timeout = Duration::from_secs(3600)).await;
    let session = s.session().await;
    assert_eq!(
        session.keep_alive().await.expect("keep-alive"),
        Some(3_600_000)
    );
    s.control(Method::POST, "/sim/sessions/expire", None).await;
    assert_eq!(
        session
            .keep_alive()
            .await
            .expect("re-login, then keep-alive"),
        Some(3_600_000)
    );
    s.stop().await;
}
