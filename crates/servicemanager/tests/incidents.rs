//! The incident calls against the Service Manager simulator over real sockets: create, get,
//! journal updates, resolve, close, and paged listing with and without a query.

mod common;

use common::{alert_incident, client, fields, sim_incidents, sm_sim};
use serde_json::json;

#[tokio::test]
async fn create_returns_im10001_and_the_incident_holds_the_fields_sent() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client(&url);
    let sent = alert_incident("OneView Alert");
    let inc = sm.create_incident(&sent).await.expect("create");
    assert_eq!(inc.id, "IM10001");
    assert_eq!(inc.status.as_deref(), Some("Open"));
    assert_eq!(
        inc.lines("Description"),
        ["resourceName: Encl1", "Description: PSU failed"]
    );
    for (k, v) in &sent {
        assert_eq!(inc.fields.get(k), Some(v), "field {k} comes back as sent");
    }
    assert_eq!(inc.text("OpenedBy"), Some("falcon"));

    let stored = sim_incidents(&url).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["IncidentID"], "IM10001");
    assert_eq!(
        stored[0]["Description"],
        json!(["resourceName: Encl1", "Description: PSU failed"])
    );
    assert_eq!(stored[0]["AffectedCI"], "Encl1");

    let next = sm
        .create_incident(&alert_incident("second"))
        .await
        .expect("create");
    assert_eq!(next.id, "IM10002");
    sim.stop().await;
}

#[tokio::test]
async fn get_returns_the_incident_and_none_for_an_unknown_id() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client(&url);
    let created = sm
        .create_incident(&alert_incident("read me"))
        .await
        .expect("create");
    let got = sm
        .incident(&created.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.id, created.id);
    assert_eq!(got.text("Title"), Some("read me"));
    assert_eq!(got.fields, created.fields);
    assert_eq!(sm.incident("IM99999").await.expect("get"), None);
    assert_eq!(
        sm.incident("no such/id").await.expect("get"),
        None,
        "odd ids are encoded, not misrouted"
    );
    sim.stop().await;
}

#[tokio::test]
async fn update_appends_journal_lines_and_resolve_and_close_set_the_status() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client(&url);
    let id = sm
        .create_incident(&alert_incident("lifecycle"))
        .await
        .expect("create")
        .id;
    let a = sm
        .update_incident(&id, &fields(json!({"JournalUpdates": ["first"]})))
        .await
        .expect("update");
    assert_eq!(a.lines("JournalUpdates"), ["first"]);
    let b = sm
        .update_incident(&id, &fields(json!({"JournalUpdates": ["second"]})))
        .await
        .expect("update");
    assert_eq!(b.lines("JournalUpdates"), ["first", "second"], "appended");
    assert_eq!(b.status.as_deref(), Some("Open"));

    let r = sm
        .resolve(&id, &fields(json!({"Solution": ["PSU replaced"]})))
        .await
        .expect("resolve");
    assert_eq!(r.status.as_deref(), Some("Resolved"));
    assert_eq!(r.lines("Solution"), ["PSU replaced"]);
    let c = sm
        .close(
            &id,
            &fields(json!({"ClosureCode": "Solved by Workaround", "Solution": ["done"]})),
        )
        .await
        .expect("close");
    assert_eq!(c.status.as_deref(), Some("Closed"));
    assert_eq!(c.text("ClosureCode"), Some("Solved by Workaround"));
    let stored = sm.incident(&id).await.expect("get").expect("exists");
    assert_eq!(stored.status.as_deref(), Some("Closed"));
    assert_eq!(stored.lines("JournalUpdates"), ["first", "second"]);
    sim.stop().await;
}

#[tokio::test]
async fn list_pages_over_seven_incidents_and_filters_by_query() {
    let (sim, url) = sm_sim(|_| {}).await;
    let sm = client(&url);
    assert!(
        sm.list(None, 3).await.expect("empty list").is_empty(),
        "no content field at all is an empty list"
    );
    for i in 0..7 {
        let title = if i % 2 == 0 { "OneView Alert" } else { "Other" };
        sm.create_incident(&alert_incident(title))
            .await
            .expect("create");
    }
    let ids = |v: &[scmb_servicemanager::Incident]| -> Vec<String> {
        v.iter().map(|i| i.id.clone()).collect()
    };
    let all: Vec<String> = (10001..=10007).map(|n| format!("IM{n}")).collect();
    for page_size in [3, 1, 7, 100] {
        let listed = sm.list(None, page_size).await.expect("list");
        assert_eq!(ids(&listed), all, "page size {page_size}");
    }
    let listed = sm.list(None, 3).await.expect("list");
    assert_eq!(
        listed[6].text("Title"),
        Some("OneView Alert"),
        "view=expand returns whole incidents"
    );

    let alerts = sm
        .list(Some("Title=\"OneView Alert\""), 3)
        .await
        .expect("query");
    assert_eq!(ids(&alerts), ["IM10001", "IM10003", "IM10005", "IM10007"]);

    sm.close("IM10003", &fields(json!({"ClosureCode": "Solved"})))
        .await
        .expect("close");
    let open_alerts = sm
        .list(Some("Title=\"OneView Alert\" and Status~=\"Closed\""), 3)
        .await
        .expect("query");
    assert_eq!(ids(&open_alerts), ["IM10001", "IM10005", "IM10007"]);
    assert!(sm
        .list(Some("Title=\"nothing like it\""), 3)
        .await
        .expect("query")
        .is_empty());
    assert!(sm.list(None, 0).await.is_err(), "page size 0 is refused");
    sim.stop().await;
}
