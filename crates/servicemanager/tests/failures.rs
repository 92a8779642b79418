//! Every way a Service Manager call fails, against the simulator's fault injection over real
//! sockets: each failure is the right [`SmError`] with the right retry class, quickly, and
//! the password never shows.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{alert_incident, clear_faults, client, client_with, fields, set_faults, sm_sim};
use scmb_servicemanager::{ErrorClass, ServerTrust, SmClient, SmConfig, SmError};
use serde_json::json;

#[tokio::test]
async fn wrong_password_is_unauthorized_so_the_caller_pauses() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client_with(&url, "wrong-password", Duration::from_secs(5));
    let e = sm
        .create_incident(&alert_incident("t"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, SmError::Unauthorized { user, messages } if user == "falcon" && !messages.is_empty()),
        "{e:?}"
    );
    assert_eq!(e.class(), ErrorClass::Unauthorized);
    assert!(e.to_string().contains("falcon"), "{e}");
    assert!(common::sim_incidents(&url).await.is_empty());

    // The simulator's forced-401 fault looks the same with the right password.
    set_faults(&url, json!({"unauthorized": true})).await;
    let e = client(&url).list(None, 10).await.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::Unauthorized, "{e}");
    sim.stop().await;
}

#[tokio::test]
async fn injected_5xx_is_a_retryable_server_error() {
    let (sim, url) = sm_sim(|_| {}).await;
    set_faults(&url, json!({"errorRate": 1.0})).await;
    let sm = client(&url);
    let e = sm
        .create_incident(&alert_incident("t"))
        .await
        .expect_err("503");
    match &e {
        SmError::Server {
            status,
            return_code,
            messages,
            ..
        } => {
            assert_eq!(*status, 503);
            assert!(return_code.is_some_and(|c| c != 0));
            assert!(!messages.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::Retryable);
    // 501 is a server error that will not go away.
    set_faults(&url, json!({"errorRate": 1.0, "errorStatus": 501})).await;
    let e = sm.list(None, 5).await.expect_err("501");
    assert_eq!((e.status(), e.class()), (Some(501), ErrorClass::Permanent));
    clear_faults(&url).await;
    assert!(sm.create_incident(&alert_incident("t")).await.is_ok());
    sim.stop().await;
}

#[tokio::test]
async fn html_proxy_page_is_a_bad_response_that_is_retryable_because_502() {
    let (sim, url) = sm_sim(|_| {}).await;
    set_faults(&url, json!({"html": true})).await;
    let e = client(&url)
        .create_incident(&alert_incident("t"))
        .await
        .expect_err("html");
    match &e {
        SmError::BadResponse {
            status,
            content_type,
            snippet,
            ..
        } => {
            assert_eq!(*status, 502);
            assert!(content_type.as_deref().is_some_and(|c| c.contains("html")));
            assert!(
                snippet.contains("Proxy Error") && !snippet.contains('<'),
                "{snippet}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::Retryable);
    sim.stop().await;
}

#[tokio::test]
async fn missing_required_field_is_rejected_permanently_naming_the_field() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client(&url);
    let mut inc = alert_incident("t");
    inc.remove("Title");
    let e = sm.create_incident(&inc).await.expect_err("validation");
    match &e {
        SmError::Rejected {
            status, messages, ..
        } => {
            assert_eq!(*status, 400);
            assert!(messages.iter().any(|m| m.contains("Title")), "{messages:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(e.to_string().contains("Title"), "{e}");
    // Changing an incident that does not exist is permanent too.
    let e = sm
        .update_incident("IM99999", &fields(json!({"JournalUpdates": ["x"]})))
        .await
        .expect_err("404");
    assert_eq!((e.status(), e.class()), (Some(404), ErrorClass::Permanent));
    sim.stop().await;
}

#[tokio::test]
async fn outage_is_unreachable_and_retryable_and_a_retry_gets_through_after_it() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client(&url);
    set_faults(&url, json!({"outageMs": 600})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = sm.list(None, 5).await.expect_err("port closed");
    assert!(matches!(e, SmError::Unreachable { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Retryable);
    assert!(
        !e.may_have_acted(),
        "a refused connection sent nothing: {e:?}"
    );
    assert!(
        e.to_string().contains("cannot reach Service Manager"),
        "{e}"
    );

    let mut attempt = 0;
    let created = loop {
        match sm.create_incident(&alert_incident("after outage")).await {
            Ok(i) => break i,
            Err(e) if e.class() == ErrorClass::Retryable && attempt < 30 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                attempt += 1;
            }
            Err(e) => panic!("gave up after {attempt} attempts: {e}"),
        }
    };
    assert_eq!(created.id, "IM10001", "created exactly once");
    assert!(attempt > 0, "the outage was seen");
    sim.stop().await;
}

#[tokio::test]
async fn hang_past_the_client_timeout_is_a_retryable_timeout_without_hanging() {
    let (sim, url) = sm_sim(|_| {}).await;
    set_faults(&url, json!({"hangMs": 3000})).await;
    let sm = client_with(&url, common::PASSWORD, Duration::from_millis(300));
    let started = Instant::now();
    let e = sm.incident("IM10001").await.expect_err("timeout");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(
        matches!(e, SmError::Unreachable { .. }) && e.is_timeout(),
        "{e:?}"
    );
    assert_eq!(e.class(), ErrorClass::Retryable);
    assert!(
        e.may_have_acted(),
        "sent, and no answer: the outcome is unknown"
    );
    assert!(e.to_string().contains("timeout"), "{e}");
    clear_faults(&url).await;
    sim.stop().await;
}

#[tokio::test]
async fn https_with_the_appliance_ca_works_and_a_foreign_ca_fails_clearly() {
    let (sim, url) = sm_sim(|c| c.sm_tls = true).await;
    assert!(url.starts_with("https://"), "{url}");
    let ca_path = sim.info["caCert"].as_str().expect("caCert").to_string();
    let ca = scmb_tls::load_certs(std::path::Path::new(&ca_path)).expect("CA");
    let config = |trust: ServerTrust| {
        let mut c = SmConfig::from_host(&url, "falcon", "secret");
        c.trust = trust;
        c
    };

    let sm = SmClient::new(config(ServerTrust::Ca(ca))).expect("client");
    let inc = sm
        .create_incident(&alert_incident("over TLS"))
        .await
        .expect("create over HTTPS");
    assert_eq!(inc.id, "IM10001");

    let e = SmClient::new(config(ServerTrust::Ca(Vec::new()))).expect_err("no CA");
    assert!(
        matches!(&e, SmError::Config(m) if m.contains("CA certificate")),
        "{e}"
    );

    let foreign = rcgen::generate_simple_self_signed(vec!["someone-else".to_string()])
        .expect("foreign CA")
        .cert
        .der()
        .clone();
    let sm = SmClient::new(config(ServerTrust::Ca(vec![foreign]))).expect("client");
    let e = sm.list(None, 5).await.expect_err("untrusted");
    match &e {
        SmError::Tls { detail, .. } => {
            assert!(
                detail.contains("not signed by the configured CA"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.class(),
        ErrorClass::Unauthorized,
        "an operator must fix the trust"
    );
    sim.stop().await;
}

/// A log sink for the test's tracing subscriber.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn password_never_appears_in_debug_errors_or_logs() {
    const PW: &str = "Pa55-w0rd-zz9";
    let logs = LogBuf::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (sim, url) = sm_sim(|c| {
        c.sm.users = [("leaky".to_string(), PW.to_string())].into();
    })
    .await;
    let cfg = SmConfig::from_host(&url, "leaky", PW);
    let sm = SmClient::new(cfg.clone()).expect("client");
    let wrong =
        SmClient::new(SmConfig::from_host(&url, "leaky", format!("{PW}-typo"))).expect("client");
    let mut seen = vec![format!("{cfg:?}"), format!("{sm:?}"), format!("{wrong:?}")];

    let inc = sm
        .create_incident(&alert_incident("t"))
        .await
        .expect("create");
    sm.update_incident(&inc.id, &fields(json!({"JournalUpdates": ["x"]})))
        .await
        .expect("update");
    let mut errors = vec![wrong.list(None, 5).await.expect_err("401")];
    set_faults(&url, json!({"errorRate": 1.0})).await;
    errors.push(sm.list(None, 5).await.expect_err("503"));
    set_faults(&url, json!({"html": true})).await;
    errors.push(sm.incident(&inc.id).await.expect_err("html"));
    clear_faults(&url).await;
    let mut invalid = alert_incident("t");
    invalid.remove("Description");
    errors.push(sm.create_incident(&invalid).await.expect_err("400"));
    sim.stop().await;
    errors.push(sm.list(None, 5).await.expect_err("down"));
    for e in &errors {
        seen.push(format!("{e}"));
        seen.push(format!("{e:?}"));
    }
    drop(_guard);
    let logs = String::from_utf8_lossy(&logs.0.lock().expect("log lock")).into_owned();
    assert!(
        logs.contains("Service Manager"),
        "the sink saw the client's logs"
    );
    seen.push(logs);
    for text in &seen {
        assert!(!text.contains(PW), "password leaked: {text}");
    }
    assert!(
        seen.iter().any(|t| t.contains("leaky")),
        "the user name is shown"
    );
}
