//! Connecting to a simulated appliance over real HTTPS: API version negotiation, login,
//! every TLS trust policy, and the failures a user must understand (unreachable, timeouts,
//! wrong password, wrong CA, wrong name, changed fingerprint).

mod common;

use std::time::Duration;

use common::{start, PASSWORD, USER};
use scmb_oneview::{
    Client, Credentials, Fingerprint, NameCheck, OneViewError, ServerTrust, MAX_API_VERSION,
};

#[tokio::test]
async fn api_version_is_the_lower_of_the_appliance_current_and_the_highest_we_know() {
    for (current, expected) in [(300, 300), (4200, 4200), (9000, MAX_API_VERSION)] {
        let s = start(|c| c.ov.current_version = current).await;
        let client = Client::connect(s.config()).await.expect("connect");
        assert_eq!(client.api_version(), expected, "appliance at {current}");
        // The negotiated version is accepted by the appliance: a session works with it.
        let session = client
            .login(Credentials::new(USER, PASSWORD))
            .await
            .expect("login");
        assert_eq!(session.api_version(), expected);
        session.alerts(&[], 10).await.expect("alerts");
        session.logout().await.expect("logout");
        s.stop().await;
    }
    // A lower configured maximum wins over the appliance's current version.
    let s = start(|_| {}).await;
    let mut cfg = s.config();
    cfg.max_api_version = 600;
    assert_eq!(
        Client::connect(cfg).await.expect("connect").api_version(),
        600
    );
    s.stop().await;
}

#[tokio::test]
async fn an_appliance_whose_minimum_version_is_above_ours_is_unsupported() {
    let s = start(|c| {
        c.ov.current_version = 9600;
        c.ov.minimum_version = 9000;
    })
    .await;
    match Client::connect(s.config()).await {
        Err(OneViewError::UnsupportedVersion {
            current,
            minimum,
            max_known,
        }) => {
            assert_eq!((current, minimum, max_known), (9600, 9000, MAX_API_VERSION));
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn wrong_password_is_auth_failed_and_the_password_appears_nowhere() {
    let s = start(|_| {}).await;
    let secret = "Sup3r-S3cret-pw";
    let creds = Credentials::new(USER, secret);
    assert!(!format!("{creds:?}").contains(secret));
    let client = Client::connect(s.config()).await.expect("connect");
    let err = client.login(creds).await.expect_err("wrong password");
    assert!(matches!(err, OneViewError::AuthFailed { .. }), "{err:?}");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(
        err.to_string().contains("Invalid username or password"),
        "{err}"
    );

    // An unknown login domain is refused as well.
    let mut creds = Credentials::new(USER, PASSWORD);
    creds.domain = Some("corp".into());
    let client = Client::connect(s.config()).await.expect("connect");
    let err = client.login(creds).await.expect_err("unknown domain");
    assert!(matches!(err, OneViewError::AuthFailed { .. }), "{err:?}");
    assert!(!err.to_string().contains(PASSWORD));

    // The right password works, and the session's Debug shows no secret.
    let session = s.session().await;
    let dbg = format!("{session:?}");
    assert!(!dbg.contains(PASSWORD), "{dbg}");
    s.stop().await;
}

#[tokio::test]
async fn login_banner_is_acknowledged() {
    let s = start(|c| c.ov.login_banner = Some("Authorized use only".into())).await;
    s.session().await.alerts(&[], 5).await.expect("alerts");
    s.stop().await;
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = scmb_oneview::Config::new(format!("127.0.0.1:{port}"), ServerTrust::Insecure);
    let err = Client::connect(cfg).await.expect_err("nothing listens");
    assert!(matches!(err, OneViewError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot reach 127.0.0.1:{port}: ")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(err.is_transient());

    let err = Client::server_fingerprint(&format!("127.0.0.1:{port}"), Duration::from_secs(2))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, OneViewError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_slow_appliance_hits_the_request_timeout_instead_of_hanging() {
    let s = start(|_| {}).await;
    let mut cfg = s.config();
    cfg.timeout = Duration::from_millis(300);
    let session = Client::connect(cfg)
        .await
        .expect("connect")
        .login(Credentials::new(USER, PASSWORD))
        .await
        .expect("login");
    s.control(
        reqwest::Method::POST,
        "/sim/faults/rest",
        Some(serde_json::json!({"latencyMs": 3000, "seconds": 5})),
    )
    .await;
    let started = std::time::Instant::now();
    let err = session.alerts(&[], 10).await.expect_err("too slow");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, OneViewError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("timeout") || err.to_string().contains("timed out"),
        "{err}"
    );
    s.control(reqwest::Method::DELETE, "/sim/faults/rest", None)
        .await;
    s.stop().await;
}

#[tokio::test]
async fn the_appliance_ca_is_trusted_and_another_ca_is_a_tls_error() {
    let s = start(|_| {}).await;
    Client::connect(s.config()).await.expect("own CA works");

    let other = start(|_| {}).await;
    for names in [NameCheck::Host, NameCheck::Skip] {
        let mut cfg = s.config();
        cfg.trust = ServerTrust::Ca(other.ca.clone());
        cfg.names = names.clone();
        let err = Client::connect(cfg).await.expect_err("foreign CA");
        let OneViewError::Tls { detail, .. } = &err else {
            panic!("expected a TLS error with {names:?}, got {err:?}");
        };
        assert!(
            detail.contains("not signed by the configured appliance CA"),
            "{detail}"
        );
    }
    other.stop().await;
    s.stop().await;
}

#[tokio::test]
async fn a_certificate_without_the_name_suggests_tls_server_name_or_no_verify_hostname() {
    let s = start(|_| {}).await;
    let mut cfg = s.config();
    cfg.names = NameCheck::Name("ov.wrong.example".into());
    let err = Client::connect(cfg)
        .await
        .expect_err("name not in the certificate");
    let OneViewError::Tls { detail, .. } = &err else {
        panic!("expected a TLS error, got {err:?}");
    };
    assert!(detail.contains("ov.wrong.example"), "{detail}");
    assert!(detail.contains("--tls-server-name") && detail.contains("--no-verify-hostname"));
    s.stop().await;
}

#[tokio::test]
async fn tls_server_name_dials_the_real_address_under_another_name() {
    let s = start(|_| {}).await;
    let mut cfg = s.config();
    cfg.names = NameCheck::Name("LocalHost".into());
    assert_eq!(cfg.host, format!("127.0.0.1:{}", s.port));
    let session = Client::connect(cfg)
        .await
        .expect("connect as localhost")
        .login(Credentials::new(USER, PASSWORD))
        .await
        .expect("login");
    session.alerts(&[], 5).await.expect("alerts");

    let mut cfg = s.config();
    cfg.names = NameCheck::Skip;
    Client::connect(cfg).await.expect("chain only");
    s.stop().await;
}

#[tokio::test]
async fn a_pinned_fingerprint_works_and_a_changed_one_is_reported_loudly() {
    let s = start(|_| {}).await;
    let fp = Client::server_fingerprint(&s.host, Duration::from_secs(5))
        .await
        .expect("fingerprint");
    let rest_pem = std::fs::read(s.sim.info["restCert"].as_str().expect("restCert")).expect("pem");
    let der = scmb_tls::certs_from_pem(&rest_pem, std::path::Path::new("rest.pem")).expect("cert");
    assert_eq!(fp, Fingerprint::of(der[0].as_ref()));

    let mut cfg = s.config();
    cfg.trust = ServerTrust::Pinned(fp);
    let session = Client::connect(cfg)
        .await
        .expect("pinned")
        .login(Credentials::new(USER, PASSWORD))
        .await
        .expect("login");
    session.eula_status().await.expect("eula");

    let wrong = Fingerprint([0xAB; 32]);
    let mut cfg = s.config();
    cfg.trust = ServerTrust::Pinned(wrong);
    let err = Client::connect(cfg).await.expect_err("wrong pin");
    let OneViewError::Tls { detail, .. } = &err else {
        panic!("expected a TLS error, got {err:?}");
    };
    assert!(detail.contains("CHANGED"), "{detail}");
    assert!(detail.contains(&fp.to_string()), "{detail}");
    assert!(detail.contains(&wrong.to_string()), "{detail}");
    s.stop().await;
}

#[tokio::test]
async fn insecure_trust_accepts_the_appliance() {
    let s = start(|_| {}).await;
    let mut cfg = s.config();
    cfg.trust = ServerTrust::Insecure;
    cfg.names = NameCheck::Name("anything.example".into());
    // Insecure checks no name either: the pinned-name dial still reaches the appliance.
    Client::connect(cfg).await.expect("insecure");
    let mut cfg = s.config();
    cfg.trust = ServerTrust::Insecure;
    let c = Client::connect(cfg).await.expect("insecure");
    assert!(c.eula_status().await.expect("eula"));
    s.stop().await;
}
