//! Alerts through a session against the simulated appliance: filtered, paged listing; one
//! alert by URI; notes written back with the eTag, surviving concurrent changes.

mod common;

use std::collections::HashSet;

use common::start;
use reqwest::Method;
use scmb_oneview::OneViewError;
use serde_json::{json, Value};

fn uris(alerts: &[Value]) -> HashSet<String> {
    alerts
        .iter()
        .filter_map(|a| a["uri"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn alerts_are_paged_to_the_end_and_filtered_with_repeated_filters() {
    let s = start(|c| c.ov.page_limit = 3).await;
    let session = s.session().await;
    let mut critical_active = HashSet::new();
    let mut all = HashSet::new();
    for i in 0..8 {
        let severity = if i % 3 == 0 { "Warning" } else { "Critical" };
        let a = s
            .raise(json!({"severity": severity, "description": format!("alert {i}")}))
            .await;
        let uri = a["uri"].as_str().expect("uri").to_string();
        if i == 4 {
            s.control(
                Method::POST,
                &format!("/sim/alerts/{}/clear", uri.rsplit('/').next().expect("id")),
                None,
            )
            .await;
        } else if severity == "Critical" {
            critical_active.insert(uri.clone());
        }
        all.insert(uri);
    }
    // Pages of 2 (and the appliance caps at 3): every alert exactly once.
    let got = session.alerts(&[], 2).await.expect("all");
    assert_eq!(got.len(), 8);
    assert_eq!(uris(&got), all);
    // A page size larger than the appliance's limit still gets everything.
    assert_eq!(uris(&session.alerts(&[], 500).await.expect("all")), all);

    // Filters in the forms seen in the wild, ANDed as separate parameters.
    for filters in [
        vec![
            "severity='Critical'".to_string(),
            "alertState='Active'".to_string(),
        ],
        vec![
            "\"severity='Critical'\"".to_string(),
            "alertState EQ 'Active'".to_string(),
        ],
        vec!["severity='Critical' AND alertState='Active'".to_string()],
    ] {
        let got = session.alerts(&filters, 2).await.expect("filtered");
        assert_eq!(got.len(), critical_active.len(), "{filters:?}");
        assert_eq!(uris(&got), critical_active, "{filters:?}");
    }
    assert!(session
        .alerts(&["severity='Disabled'".to_string()], 2)
        .await
        .expect("none")
        .is_empty());

    // A filter the appliance cannot parse is its error, shown as such.
    let err = session
        .alerts(&["severity=='".to_string()], 2)
        .await
        .expect_err("bad filter");
    assert_eq!(err.status(), Some(400), "{err:?}");
    s.stop().await;
}

#[tokio::test]
async fn one_alert_is_read_by_uri_and_an_unknown_one_is_none() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    let a = s
        .raise(json!({"severity": "Warning", "description": null}))
        .await;
    let uri = a["uri"].as_str().expect("uri");
    let got = session.alert(uri).await.expect("get").expect("exists");
    assert_eq!(got["uri"], a["uri"]);
    assert_eq!(got["description"], Value::Null);
    let absolute = format!("https://{}{uri}", s.host);
    assert!(session.alert(&absolute).await.expect("get").is_some());
    assert_eq!(
        session.alert("/rest/alerts/99999").await.expect("get"),
        None
    );
    s.stop().await;
}

#[tokio::test]
async fn a_note_appends_exactly_one_changelog_entry_and_changes_nothing_else() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    let a = s
        .raise(json!({"severity": "Critical", "assignedToUser": "ops", "urgency": "High"}))
        .await;
    let uri = a["uri"].as_str().expect("uri");
    let updated = session
        .add_alert_note(uri, "Incident IM10001 opened")
        .await
        .expect("note");
    let log = updated["changeLog"].as_array().expect("changeLog");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["notes"], "Incident IM10001 opened");
    assert_eq!(log[0]["userEntered"], true);
    assert_ne!(updated["eTag"], a["eTag"]);
    for k in [
        "alertState",
        "assignedToUser",
        "urgency",
        "severity",
        "description",
    ] {
        assert_eq!(updated[k], a[k], "{k}");
    }
    let stored = session.alert(uri).await.expect("get").expect("exists");
    assert_eq!(stored["changeLog"].as_array().map(Vec::len), Some(1));

    let err = session
        .add_alert_note("/rest/alerts/99999", "x")
        .await
        .expect_err("unknown alert");
    assert_eq!(err.status(), Some(404));
    s.stop().await;
}

#[tokio::test]
async fn a_note_with_a_stale_etag_is_retried_after_a_concurrent_change() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    let a = s.raise(json!({"severity": "Warning"})).await;
    let uri = a["uri"].as_str().expect("uri");
    let id = uri.rsplit('/').next().expect("id");
    let stale = a["eTag"].as_str().expect("eTag").to_string();
    // Someone else changes the alert (an escalation) after we read it.
    let escalated = s
        .control(
            Method::PATCH,
            &format!("/sim/alerts/{id}"),
            Some(json!({"severity": "Critical"})),
        )
        .await;
    assert_ne!(escalated["eTag"].as_str(), Some(stale.as_str()));

    let updated = session
        .add_alert_note_with_etag(uri, "Incident IM10002", Some(&stale))
        .await
        .expect("retried with the fresh eTag");
    assert_eq!(updated["changeLog"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        updated["severity"], "Critical",
        "the concurrent change survives"
    );

    // Without an eTag of our own, the current one is read first.
    let updated = session
        .add_alert_note(uri, "second note")
        .await
        .expect("note");
    let log = updated["changeLog"].as_array().expect("changeLog");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1]["notes"], "second note");
    s.stop().await;
}

#[tokio::test]
async fn errors_of_alert_calls_never_contain_the_password() {
    let s = start(|_| {}).await;
    let session = s.session().await;
    let err: OneViewError = session
        .alerts(&["nonsense ==== ".to_string()], 2)
        .await
        .expect_err("bad filter");
    assert!(!err.to_string().contains(common::PASSWORD));
    assert!(!format!("{err:?}").contains(common::PASSWORD));
    s.stop().await;
}
