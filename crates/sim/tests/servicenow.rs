//! The ServiceNow simulator over a real socket: the Table API on `incident` (strings, journal
//! fields, the lifecycle and its data policy, encoded queries, paging headers), `cmdb_ci`,
//! OAuth and its expiry, rate limiting, Event Management, and the faults that make clients
//! open duplicates (creates that act and then answer late or badly).

mod common;

use std::time::{Duration, Instant};

use common::{garbage_create, http, raw, send, set_faults, Resp};
use reqwest::{Method, StatusCode};
use scmb_sim::servicenow::{user_sys_id, OauthClient, SnConfig};
use scmb_sim::testkit::{serve_servicenow, temp_dir, ticketing_config, Served};
use scmb_sim::Sim;
use serde_json::{json, Value};

type Sn = Served<scmb_sim::servicenow::SnState>;

enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

const ADMIN: Auth<'static> = Auth::Basic("admin", "admin");

async fn call(sn: &Sn, method: Method, path: &str, auth: Auth<'_>, body: Option<Value>) -> Resp {
    let http = http();
    let mut r = http.request(method, format!("{}{}", sn.url, path));
    match auth {
        Auth::None => {}
        Auth::Basic(u, p) => r = r.basic_auth(u, Some(p)),
        Auth::Bearer(t) => r = r.bearer_auth(t),
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    send(r).await
}

async fn sim(path: &str, sn: &Sn, body: Value) -> Value {
    let r = call(sn, Method::POST, path, Auth::None, Some(body)).await;
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.text);
    r.body
}

/// `POST /api/now/table/incident`.
async fn post_incident(sn: &Sn, auth: Auth<'_>, fields: Value) -> Resp {
    call(
        sn,
        Method::POST,
        "/api/now/table/incident",
        auth,
        Some(fields),
    )
    .await
}

/// `POST /api/global/em/jsonv2`.
async fn em(sn: &Sn, auth: Auth<'_>, body: Value) -> Resp {
    call(sn, Method::POST, "/api/global/em/jsonv2", auth, Some(body)).await
}

/// `GET /api/now/table/incident`.
async fn list_incidents(sn: &Sn, auth: Auth<'_>) -> Resp {
    call(sn, Method::GET, "/api/now/table/incident", auth, None).await
}

async fn get(sn: &Sn, path: &str) -> Resp {
    call(sn, Method::GET, path, ADMIN, None).await
}

async fn create(sn: &Sn, fields: Value) -> Value {
    let r = post_incident(sn, ADMIN, fields).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["result"].clone()
}

async fn patch(sn: &Sn, sys_id: &str, fields: Value) -> Resp {
    call(
        sn,
        Method::PATCH,
        &format!("/api/now/table/incident/{sys_id}"),
        ADMIN,
        Some(fields),
    )
    .await
}

fn assert_envelope(r: &Resp, status: StatusCode, message: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["status"], "failure", "{}", r.text);
    assert_eq!(r.body["error"]["message"], message, "{}", r.text);
    assert!(r.body["error"].get("detail").is_some(), "{}", r.text);
}

fn id(rec: &Value) -> String {
    rec["sys_id"].as_str().expect("sys_id").to_string()
}

fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 19
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16].contains(&i) || c.is_ascii_digit())
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The numbers of the incidents a query lists.
async fn numbers(sn: &Sn, query: &str) -> Vec<String> {
    let r = get(
        sn,
        &format!(
            "/api/now/table/incident?sysparm_fields=number&sysparm_query={}",
            urlencode(query)
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|i| i["number"].as_str().expect("number").to_string())
        .collect()
}

#[tokio::test]
async fn servicenow_and_pagerduty_urls_come_in_the_ready_file_sim_info_and_client() {
    let mut cfg = ticketing_config("tickets-ready");
    cfg.servicenow_tls = true;
    let dir = cfg.state_dir.clone();
    let sim = Sim::start(cfg).await.expect("sim starts");
    let line = sim.ready_line();
    let sn = sim.info["servicenowUrl"].as_str().expect("servicenowUrl");
    let pd = sim.info["pagerdutyUrl"].as_str().expect("pagerdutyUrl");
    assert!(line.contains(&format!("servicenow={sn}")), "{line}");
    assert!(line.contains(&format!("pagerduty={pd}")), "{line}");
    let ready = scmb_sim::sim::read_ready(&dir).expect("ready file");
    assert_eq!(ready["servicenowUrl"], sn);
    assert_eq!(ready["pagerdutyUrl"], pd);
    let info = scmb_sim::testkit::SimInfo {
        ready: ready.clone(),
        state_dir: dir,
        amqps_port: 0,
        rest_url: String::new(),
        sm_url: None,
    };
    assert_eq!(info.servicenow_url().as_deref(), Some(sn));
    assert_eq!(info.pagerduty_url().as_deref(), Some(pd));
    let c = scmb_sim::client::SimClient::from_ready(&ready).expect("client");
    let stats = c
        .call_servicenow(Method::GET, "/sim/stats", None)
        .await
        .expect("servicenow stats");
    assert_eq!(stats["incidents"], 0);
    let stats = c
        .call_pagerduty(Method::GET, "/sim/stats", None)
        .await
        .expect("pagerduty stats");
    assert_eq!(stats["events"], 0);
    assert!(sim.servicenow.is_some() && sim.pagerduty.is_some());
    // ServiceNow over HTTPS with the appliance CA: links and Location say https.
    assert!(sn.starts_with("https://"), "{sn}");
    assert!(pd.starts_with("http://"), "{pd}");
    let resp = c
        .http
        .post(format!("{sn}/api/now/table/incident"))
        .basic_auth("admin", Some("admin"))
        .json(&json!({"short_description": "over TLS"}))
        .send()
        .await
        .expect("https create");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        location.starts_with(&format!("{sn}/api/now/table/incident/")),
        "{location}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn an_incident_is_created_as_strings_read_back_and_errors_use_the_envelope() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let fields = json!({"short_description": "PSU failed", "correlation_id": "ov:alerts:1",
        "impact": 1, "urgency": 2, "u_not_a_column": "x", "number": "INC9", "cmdb_ci": "abc"});
    let r = post_incident(&sn, ADMIN, fields).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let inc = &r.body["result"];
    let sys_id = id(inc);
    assert_eq!(sys_id.len(), 32);
    assert!(sys_id
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(r
        .header("location")
        .ends_with(&format!("/api/now/table/incident/{sys_id}")));
    assert_eq!(inc["number"], "INC0010001", "number is the instance's");
    assert_eq!(inc["state"], "1");
    assert_eq!(inc["incident_state"], "1");
    assert_eq!(inc["active"], "true");
    assert_eq!(inc["impact"], "1", "numbers come back as strings");
    assert_eq!(inc["priority"], "2", "computed from impact and urgency");
    assert_eq!(inc["correlation_id"], "ov:alerts:1");
    assert!(
        inc.get("u_not_a_column").is_none(),
        "unknown fields ignored"
    );
    assert!(is_datetime(
        inc["sys_created_on"].as_str().expect("created")
    ));
    assert_eq!(inc["sys_created_on"], inc["sys_updated_on"]);
    assert_eq!(inc["sys_created_by"], "admin");
    assert_eq!(inc["opened_by"]["value"], user_sys_id("admin"));
    assert!(inc["opened_by"]["link"]
        .as_str()
        .expect("link")
        .ends_with(&format!("/api/now/table/sys_user/{}", user_sys_id("admin"))));
    assert_eq!(inc["cmdb_ci"]["value"], "abc", "a reference field");
    for (k, v) in inc.as_object().expect("record") {
        assert!(
            v.is_string() || (v.is_object() && v["value"].is_string()),
            "{k}: {v}"
        );
    }
    let r = get(&sn, &format!("/api/now/table/incident/{sys_id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body["result"], inc);
    let r = get(
        &sn,
        &format!("/api/now/table/incident/{sys_id}?sysparm_exclude_reference_link=true&sysparm_fields=number,cmdb_ci,bogus"),
    )
    .await;
    assert_eq!(
        r.body["result"],
        json!({"number": "INC0010001", "cmdb_ci": "abc"})
    );
    // Errors, in the instance's envelope.
    let r = get(&sn, &format!("/api/now/table/incident/{}", "0".repeat(32))).await;
    assert_envelope(&r, StatusCode::NOT_FOUND, "No Record found");
    assert_eq!(
        r.body["error"]["detail"],
        "Record doesn't exist or ACL restricts the record retrieval"
    );
    let r = patch(&sn, &"0".repeat(32), json!({"state": "2"})).await;
    assert_envelope(&r, StatusCode::NOT_FOUND, "No Record found");
    let r = list_incidents(&sn, Auth::None).await;
    assert_envelope(&r, StatusCode::UNAUTHORIZED, "User Not Authenticated");
    assert_eq!(
        r.body["error"]["detail"],
        "Required to provide Auth information"
    );
    let r = list_incidents(&sn, Auth::Basic("admin", "wrong")).await;
    assert_envelope(&r, StatusCode::UNAUTHORIZED, "User Not Authenticated");
    let post = http().post(format!("{}/api/now/table/incident", sn.url));
    let r = common::not_json(post.basic_auth("admin", Some("admin"))).await;
    assert_envelope(
        &r,
        StatusCode::BAD_REQUEST,
        "Exception while reading request",
    );
    let r = get(&sn, "/api/now/table/no_such_table").await;
    assert_envelope(&r, StatusCode::BAD_REQUEST, "Invalid table no_such_table");
    let r = call(
        &sn,
        Method::POST,
        "/api/now/table/cmdb_ci",
        ADMIN,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_envelope(&r, StatusCode::FORBIDDEN, "Operation Failed");
    let r = get(&sn, "/api/now/nothing").await;
    assert_envelope(
        &r,
        StatusCode::BAD_REQUEST,
        "Requested URI does not represent any resource",
    );
    // PUT updates like PATCH; DELETE answers 204; versioned URLs work too.
    let r = call(
        &sn,
        Method::PUT,
        &format!("/api/now/v2/table/incident/{sys_id}"),
        ADMIN,
        Some(json!({"urgency": "1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["result"]["priority"], "1");
    assert_eq!(r.body["result"]["sys_mod_count"], "1");
    assert_eq!(r.body["result"]["short_description"], "PSU failed", "kept");
    let r = call(
        &sn,
        Method::DELETE,
        &format!("/api/now/table/incident/{sys_id}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&sn, &format!("/api/now/table/incident/{sys_id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn journal_fields_append_entries_and_read_back_empty() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let inc = create(
        &sn,
        json!({"short_description": "x", "work_notes": "first", "comments": "to the caller"}),
    )
    .await;
    let sys_id = id(&inc);
    assert_eq!(inc["work_notes"], "");
    assert_eq!(inc["comments"], "");
    let r = patch(&sn, &sys_id, json!({"work_notes": "second"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["result"]["work_notes"], "",
        "a journal field reads back empty"
    );
    let q = urlencode(&format!(
        "element_id={sys_id}^element=work_notes^ORDERBYsys_created_on"
    ));
    let r = get(
        &sn,
        &format!("/api/now/table/sys_journal_field?sysparm_query={q}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let notes: Vec<&str> = r.body["result"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["value"].as_str().expect("value"))
        .collect();
    assert_eq!(notes, vec!["first", "second"]);
    let e = &r.body["result"][0];
    assert_eq!(e["name"], "incident");
    assert_eq!(e["element_id"], sys_id.as_str());
    assert_eq!(e["sys_created_by"], "admin");
    assert!(is_datetime(e["sys_created_on"].as_str().expect("time")));
    let q = urlencode(&format!("element_id={sys_id}^element=comments"));
    let r = get(
        &sn,
        &format!("/api/now/table/sys_journal_field?sysparm_query={q}"),
    )
    .await;
    assert_eq!(r.body["result"].as_array().expect("entries").len(), 1);
    // The control surface shows the incident with its journal.
    let all = call(&sn, Method::GET, "/sim/incidents", Auth::None, None).await;
    assert_eq!(
        all.body["incidents"][0]["journal"]
            .as_array()
            .expect("journal")
            .len(),
        3
    );
}

#[tokio::test]
async fn resolving_needs_close_code_and_notes_and_closed_incidents_are_read_only() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let inc = create(&sn, json!({"short_description": "fan"})).await;
    let sys_id = id(&inc);
    // The data policy: 403 in the envelope, nothing written (not even the work note).
    let r = patch(&sn, &sys_id, json!({"state": "6", "work_notes": "trying"})).await;
    assert_envelope(&r, StatusCode::FORBIDDEN, "Operation Failed");
    let detail = r.body["error"]["detail"].as_str().expect("detail");
    assert!(detail.starts_with("Data Policy Exception"), "{detail}");
    assert!(
        detail.contains("Resolution code, Resolution notes"),
        "{detail}"
    );
    let r = patch(
        &sn,
        &sys_id,
        json!({"state": "6", "close_code": "Solved (Permanently)"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body["error"]["detail"]
        .as_str()
        .expect("detail")
        .contains("mandatory: Resolution notes"));
    let now = get(&sn, &format!("/api/now/table/incident/{sys_id}")).await;
    assert_eq!(now.body["result"]["state"], "1");
    assert_eq!(now.body["result"]["sys_mod_count"], "0");
    assert_eq!(now.body["result"]["close_code"], "");
    let r = call(&sn, Method::GET, "/sim/incidents", Auth::None, None).await;
    assert_eq!(r.body["incidents"][0]["journal"], json!([]));
    // Resolved: stamped, still active (only Closed and Canceled are inactive).
    let r = patch(
        &sn,
        &sys_id,
        json!({"state": 6, "close_code": "Solved (Permanently)", "close_notes": "Replaced fan"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let res = &r.body["result"];
    assert_eq!(res["state"], "6");
    assert_eq!(res["incident_state"], "6");
    assert_eq!(res["active"], "true");
    assert!(is_datetime(
        res["resolved_at"].as_str().expect("resolved_at")
    ));
    assert_eq!(res["resolved_by"]["value"], user_sys_id("admin"));
    // Reopened by setting New/In Progress: resolution stamps cleared, reopen counted.
    let r = patch(&sn, &sys_id, json!({"state": "2"})).await;
    let res = &r.body["result"];
    assert_eq!(res["state"], "2");
    assert_eq!(res["resolved_at"], "");
    assert_eq!(res["reopen_count"], "1");
    // Closed: closed_at/closed_by, inactive, then no more writes.
    let r = patch(&sn, &sys_id, json!({"state": "7"})).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "close fields kept from the resolve: {}",
        r.text
    );
    let res = &r.body["result"];
    assert_eq!(res["active"], "false");
    assert!(is_datetime(res["closed_at"].as_str().expect("closed_at")));
    assert!(!res["resolved_at"].as_str().expect("resolved_at").is_empty());
    let r = patch(&sn, &sys_id, json!({"state": "1"})).await;
    assert_envelope(&r, StatusCode::FORBIDDEN, "Operation Failed");
    assert!(r.body["error"]["detail"]
        .as_str()
        .expect("detail")
        .contains("ACL Exception Update Failed"));
    // Canceled needs no resolution fields and is inactive.
    let other = create(&sn, json!({"short_description": "dup"})).await;
    let r = patch(&sn, &id(&other), json!({"state": "8"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["result"]["active"], "false");
    // Created already resolved: the same policy.
    let r = post_incident(&sn, ADMIN, json!({"short_description": "x", "state": "6"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        stats(&sn).await["incidents"],
        2,
        "a refused create stores nothing"
    );
    // The policy can be turned off (an instance without it).
    let lax = serve_servicenow(SnConfig {
        require_close_fields: false,
        ..SnConfig::default()
    })
    .await;
    let inc = create(&lax, json!({"short_description": "y"})).await;
    assert_eq!(
        patch(&lax, &id(&inc), json!({"state": "6"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn encoded_queries_filter_sort_and_page_with_link_and_total_count() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let close = json!({"close_code": "Solved (Permanently)", "close_notes": "n"});
    let mut ids = Vec::new();
    for (desc, corr, state) in [
        ("fan failed", "ov:1", "1"),
        ("psu failed", "ov:2", "2"),
        ("disk warning", "", "1"),
        ("fan again", "ov:4", "6"),
        ("temp", "other:5", "8"),
    ] {
        let mut f = json!({"short_description": desc, "correlation_id": corr, "state": state});
        if state == "6" {
            f.as_object_mut()
                .expect("obj")
                .extend(close.as_object().expect("obj").clone());
        }
        ids.push(id(&create(&sn, f).await));
    }
    let n = |v: &[&str]| v.iter().map(|s| format!("INC00{s}")).collect::<Vec<_>>();
    assert_eq!(numbers(&sn, "correlation_id=ov:2").await, n(&["10002"]));
    assert_eq!(numbers(&sn, "correlation_id!=ov:2").await.len(), 4);
    assert_eq!(
        numbers(&sn, "correlation_idSTARTSWITHov:").await,
        n(&["10001", "10002", "10004"])
    );
    assert_eq!(numbers(&sn, "correlation_idISEMPTY").await, n(&["10003"]));
    assert_eq!(numbers(&sn, "correlation_idISNOTEMPTY").await.len(), 4);
    assert_eq!(
        numbers(&sn, "short_descriptionLIKEfan").await,
        n(&["10001", "10004"])
    );
    assert_eq!(numbers(&sn, "stateIN6,7,8").await, n(&["10004", "10005"]));
    assert_eq!(
        numbers(&sn, "stateNOT IN6,7,8").await,
        n(&["10001", "10002", "10003"])
    );
    // Resolved incidents are still active: "open" is active=true^stateNOT IN6,7.
    assert_eq!(
        numbers(&sn, "active=true").await,
        n(&["10001", "10002", "10003", "10004"])
    );
    // ^OR binds tighter than ^.
    assert_eq!(
        numbers(
            &sn,
            "correlation_id=ov:1^ORcorrelation_id=ov:4^active=true^state!=6"
        )
        .await,
        n(&["10001"])
    );
    assert_eq!(
        numbers(&sn, "correlation_id=ov:1^NQstate=8").await,
        n(&["10001", "10005"])
    );
    assert_eq!(
        numbers(&sn, "active=true^ORDERBYDESCnumber").await,
        n(&["10004", "10003", "10002", "10001"])
    );
    // A term naming no column is ignored, as on an instance: the rest still applies.
    assert_eq!(
        numbers(&sn, "correlation_idd=ov:2^state=2").await,
        n(&["10002"])
    );
    assert_eq!(numbers(&sn, "correlation_idd=nothing").await.len(), 5);
    let strict = serve_servicenow(SnConfig {
        invalid_query_returns_no_rows: true,
        ..SnConfig::default()
    })
    .await;
    create(&strict, json!({"short_description": "x"})).await;
    assert!(numbers(&strict, "correlation_idd=nothing").await.is_empty());
    // Name-value parameters filter when there is no sysparm_query.
    let r = get(&sn, "/api/now/table/incident?state=1&sysparm_fields=number").await;
    assert_eq!(r.body["result"].as_array().expect("list").len(), 2);
    // Paging: sysparm_limit/offset, X-Total-Count, Link first/prev/next/last.
    let r = get(&sn, "/api/now/table/incident?sysparm_query=ORDERBYnumber&sysparm_limit=2&sysparm_offset=2&sysparm_fields=number").await;
    assert_eq!(r.header("x-total-count"), "5");
    assert_eq!(
        r.body["result"],
        json!([{"number": "INC0010003"}, {"number": "INC0010004"}])
    );
    let link = r.header("link").to_string();
    let base = format!("{}/api/now/table/incident?", sn.url);
    for (off, rel) in [(0, "first"), (0, "prev"), (4, "next"), (4, "last")] {
        let want = format!("sysparm_limit=2&sysparm_offset={off}>;rel=\"{rel}\"");
        assert!(link.contains(&want), "{rel} in {link}");
    }
    assert!(link.contains(&base), "{link}");
    assert!(link.contains("sysparm_query=ORDERBYnumber"), "{link}");
    let r = get(
        &sn,
        "/api/now/table/incident?sysparm_limit=2&sysparm_offset=4",
    )
    .await;
    assert_eq!(r.body["result"].as_array().expect("list").len(), 1);
    assert!(!r.header("link").contains("rel=\"next\""));
    // An empty result: v2 (the default) answers []; v1 answers 404.
    let empty = urlencode("correlation_id=none");
    let r = get(
        &sn,
        &format!("/api/now/table/incident?sysparm_query={empty}"),
    )
    .await;
    assert_eq!(
        (r.status, r.body["result"].clone()),
        (StatusCode::OK, json!([]))
    );
    assert_eq!(r.header("x-total-count"), "0");
    let r = get(
        &sn,
        &format!("/api/now/v1/table/incident?sysparm_query={empty}"),
    )
    .await;
    assert_envelope(&r, StatusCode::NOT_FOUND, "No Record found");
}

async fn token(sn: &Sn, form: &[(&str, &str)]) -> Resp {
    send(http().post(format!("{}/oauth_token.do", sn.url)).form(form)).await
}

#[tokio::test]
async fn oauth_tokens_are_issued_refreshed_and_answer_401_once_expired() {
    let sn = serve_servicenow(SnConfig {
        token_lifetime: Duration::from_millis(1500),
        oauth_clients: [(
            "cid".to_string(),
            OauthClient {
                secret: "csecret".into(),
                user: "integration".into(),
            },
        )]
        .into(),
        users: [
            ("admin".to_string(), "admin".to_string()),
            ("jdoe".to_string(), "pw".to_string()),
        ]
        .into(),
        ..SnConfig::default()
    })
    .await;
    let cc = [
        ("grant_type", "client_credentials"),
        ("client_id", "cid"),
        ("client_secret", "csecret"),
    ];
    let t = token(&sn, &cc).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.body["token_type"], "Bearer");
    assert_eq!(t.body["scope"], "useraccount");
    assert!(t.body["expires_in"]
        .as_u64()
        .is_some_and(|s| (1..=2).contains(&s)));
    let access = t.body["access_token"].as_str().expect("access").to_string();
    let refresh = t.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    // The token acts as the client's user.
    let r = post_incident(
        &sn,
        Auth::Bearer(&access),
        json!({"short_description": "by oauth"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["result"]["sys_created_by"], "integration");
    // Within its lifetime the same token is answered again.
    let again = token(&sn, &cc).await;
    assert_eq!(again.body["access_token"], access.as_str());
    // Wrong secret, unknown client, bad grant: 401 in OAuth's shape.
    for form in [
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "cid"),
            ("client_secret", "no"),
        ],
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "x"),
            ("client_secret", "csecret"),
        ],
        vec![
            ("grant_type", "implicit"),
            ("client_id", "cid"),
            ("client_secret", "csecret"),
        ],
        vec![
            ("grant_type", "password"),
            ("client_id", "cid"),
            ("client_secret", "csecret"),
            ("username", "jdoe"),
            ("password", "bad"),
        ],
    ] {
        let r = token(&sn, &form).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{form:?}");
        assert_eq!(
            r.body,
            json!({"error_description": "access_denied", "error": "server_error"})
        );
    }
    // Expired: 401 with the envelope.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let r = list_incidents(&sn, Auth::Bearer(&access)).await;
    assert_envelope(&r, StatusCode::UNAUTHORIZED, "User Not Authenticated");
    // The refresh token gets a new access token (and is itself answered again).
    let t = token(
        &sn,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cid"),
            ("client_secret", "csecret"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.body["refresh_token"], refresh.as_str());
    let fresh = t.body["access_token"].as_str().expect("access").to_string();
    assert_ne!(fresh, access);
    let r = list_incidents(&sn, Auth::Bearer(&fresh)).await;
    assert_eq!(r.status, StatusCode::OK);
    // Another client cannot use that refresh token.
    let t = token(
        &sn,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "other"),
            ("client_secret", "x"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(t.status, StatusCode::UNAUTHORIZED);
    // The password grant acts as that user.
    let t = token(
        &sn,
        &[
            ("grant_type", "password"),
            ("client_id", "cid"),
            ("client_secret", "csecret"),
            ("username", "jdoe"),
            ("password", "pw"),
        ],
    )
    .await;
    let jdoe = t.body["access_token"].as_str().expect("access").to_string();
    let r = post_incident(
        &sn,
        Auth::Bearer(&jdoe),
        json!({"short_description": "by jdoe"}),
    )
    .await;
    assert_eq!(r.body["result"]["sys_created_by"], "jdoe");
    // Expiring every token on demand.
    let e = sim("/sim/tokens/expire", &sn, json!({})).await;
    assert_eq!(e["expired"], 2);
    let r = list_incidents(&sn, Auth::Bearer(&jdoe)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_ratelimit_headers() {
    let sn = serve_servicenow(SnConfig::default()).await;
    set_faults(&sn.url, json!({"rateLimitNext": 2, "retryAfterS": 3})).await;
    for _ in 0..2 {
        let r = get(&sn, "/api/now/table/incident").await;
        assert_envelope(&r, StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
        assert_eq!(r.header("retry-after"), "3");
        assert_eq!(r.header("x-ratelimit-remaining"), "0");
        let reset: i64 = r
            .header("x-ratelimit-reset")
            .parse()
            .expect("epoch seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!((now..=now + 4).contains(&reset), "{reset} vs {now}");
    }
    assert_eq!(
        get(&sn, "/api/now/table/incident").await.status,
        StatusCode::OK
    );
    // A rule: 3 calls a 1.5 s window, counted down in the headers.
    set_faults(&sn.url, json!({"rateLimit": 3, "rateWindowMs": 1500})).await;
    for left in ["2", "1", "0"] {
        let r = get(&sn, "/api/now/table/incident").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-limit"), "3");
        assert_eq!(r.header("x-ratelimit-remaining"), left);
        assert!(r.header("x-ratelimit-reset").parse::<i64>().is_ok());
    }
    let r = get(&sn, "/api/now/table/incident").await;
    assert_envelope(&r, StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
    let after: u64 = r.header("retry-after").parse().expect("seconds");
    assert!((1..=2).contains(&after), "{after}");
    assert_eq!(r.header("x-ratelimit-limit"), "3");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = get(&sn, "/api/now/table/incident").await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (StatusCode::OK, "2")
    );
}

/// An incident create as a client with a 5 s timeout sends it (see [`raw`] and
/// [`garbage_create`]).
fn create_request(sn: &Sn, corr: &str) -> reqwest::RequestBuilder {
    http()
        .post(format!("{}/api/now/table/incident", sn.url))
        .basic_auth("admin", Some("admin"))
        .timeout(Duration::from_secs(5))
        .json(&json!({"short_description": "alert", "correlation_id": corr}))
}

async fn stats(sn: &Sn) -> Value {
    common::stats(&sn.url).await
}

#[tokio::test]
async fn a_late_create_stores_the_incident_before_the_client_gives_up() {
    let sn = serve_servicenow(SnConfig::default()).await;
    common::abandoned_create(&sn.url, create_request(&sn, "ov:late")).await;
    // The incident exists: a client that looks it up by correlation_id finds it.
    assert_eq!(
        numbers(&sn, "correlation_id=ov:late").await,
        vec!["INC0010001"]
    );
    assert_eq!(common::until_idle(&sn.url).await["inFlight"], 0);
    let f = call(&sn, Method::GET, "/sim/faults", Auth::None, None).await;
    assert_eq!(f.body["faults"]["createFaultCount"], 0, "{}", f.text);
    let (status, _, text) = raw(create_request(&sn, "ov:on-time"))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::CREATED);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["result"]["number"], "INC0010002");
}

#[tokio::test]
async fn garbage_create_answers_come_after_the_incident_is_stored() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let (status, _, text) = garbage_create(&sn.url, "empty", create_request(&sn, "g:empty")).await;
    assert_eq!((status, text.as_str()), (StatusCode::CREATED, ""));
    let (status, ct, text) = garbage_create(&sn.url, "html", create_request(&sn, "g:html")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(text.contains("<html>"), "{text}");
    let (status, _, text) = garbage_create(&sn.url, "noId", create_request(&sn, "g:noid")).await;
    assert_eq!(status, StatusCode::CREATED);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert!(v["result"].get("sys_id").is_none(), "{v}");
    assert_eq!(v["result"]["correlation_id"], "g:noid");
    for corr in ["g:empty", "g:html", "g:noid"] {
        assert_eq!(
            numbers(&sn, &format!("correlation_id={corr}")).await.len(),
            1,
            "{corr}"
        );
    }
    // Used up: the next create is answered normally. A refused create takes no fault.
    set_faults(
        &sn.url,
        json!({"createGarbage": "empty", "createFaultCount": 1}),
    )
    .await;
    let r = post_incident(&sn, ADMIN, json!({"short_description": "x", "state": "6"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (status, _, text) = raw(create_request(&sn, "g:after")).await.expect("answer");
    assert_eq!((status, text.is_empty()), (StatusCode::CREATED, true));
    let (status, _, text) = raw(create_request(&sn, "g:normal")).await.expect("answer");
    assert_eq!(status, StatusCode::CREATED);
    assert!(text.contains("\"sys_id\""));
}

#[tokio::test]
async fn faults_inject_errors_forced_401_html_latency_and_an_outage() {
    let sn = serve_servicenow(SnConfig::default()).await;
    set_faults(&sn.url, json!({"errorRate": 1.0, "errorStatus": 502})).await;
    let r = get(&sn, "/api/now/table/incident").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body["status"], "failure");
    set_faults(&sn.url, json!({"unauthorizedNext": 1})).await;
    let r = get(&sn, "/api/now/table/incident").await;
    assert_envelope(&r, StatusCode::UNAUTHORIZED, "User Not Authenticated");
    assert_eq!(
        get(&sn, "/api/now/table/incident").await.status,
        StatusCode::OK
    );
    set_faults(&sn.url, json!({"html": true})).await;
    let r = get(&sn, "/api/now/table/incident").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").starts_with("text/html"));
    assert!(r.text.contains("hibernating"), "{}", r.text);
    set_faults(&sn.url, json!({"latencyMs": 300})).await;
    let t0 = Instant::now();
    assert_eq!(
        get(&sn, "/api/now/table/incident").await.status,
        StatusCode::OK
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Outage: the port is closed, then open again.
    common::outage(&sn.url).await;
    assert_eq!(
        get(&sn, "/api/now/table/incident").await.status,
        StatusCode::OK
    );
    let r = call(&sn, Method::DELETE, "/sim/faults", Auth::None, None).await;
    assert_eq!(r.body["faults"]["latencyMs"], 0);
    let r = call(
        &sn,
        Method::POST,
        "/sim/faults",
        Auth::None,
        Some(json!({"nope": 1})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "unknown fault names are refused"
    );
}

#[tokio::test]
async fn event_management_dedups_events_into_alerts_by_message_key() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let ci = sim(
        "/sim/cmdb_ci",
        &sn,
        json!({"name": "encl1.example.com", "serial_number": "SGH1"}),
    )
    .await;
    let ci_id = ci["result"]["sys_id"].as_str().expect("ci").to_string();
    let ev = |key: &str, severity: &str| {
        json!({"source": "OneView", "node": "encl1.example.com", "type": "hardware",
            "resource": "PSU 1", "severity": severity, "message_key": key,
            "description": format!("sev {severity}"), "additional_info": {"alertUri": "/rest/alerts/1"},
            "time_of_event": "2026-11-25 10:00:00"})
    };
    let r = em(
        &sn,
        ADMIN,
        json!({"records": [ev("k1", "2"), ev("k1", "1"), ev("k2", "3")]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"result": {"Default Bulk Endpoint": "3 events were inserted"}})
    );
    let all = call(&sn, Method::GET, "/sim/events", Auth::None, None)
        .await
        .body;
    assert_eq!(all["events"].as_array().expect("events").len(), 3);
    let alerts = all["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["message_key"], "k1");
    assert_eq!(alerts[0]["event_count"], "2");
    assert_eq!(alerts[0]["severity"], "1", "the latest severity");
    assert_eq!(alerts[0]["state"], "Open");
    assert_eq!(
        alerts[0]["cmdb_ci"],
        ci_id.as_str(),
        "bound to the CI named like the node"
    );
    assert_eq!(
        all["events"][0]["additional_info"],
        "{\"alertUri\":\"/rest/alerts/1\"}"
    );
    // Severity 0 (Clear) closes the alert; a later event opens a new one.
    em(&sn, ADMIN, json!({"records": [ev("k1", "0")]})).await;
    em(&sn, ADMIN, json!({"records": [ev("k1", "4")]})).await;
    let q = urlencode("message_key=k1^ORDERBYnumber");
    let r = get(
        &sn,
        &format!("/api/now/table/em_alert?sysparm_query={q}&sysparm_exclude_reference_link=true"),
    )
    .await;
    let alerts = r.body["result"].as_array().expect("alerts").clone();
    assert_eq!(alerts.len(), 2, "{}", r.text);
    assert_eq!(alerts[0]["state"], "Closed");
    assert_eq!(alerts[0]["event_count"], "3");
    assert_eq!(alerts[1]["state"], "Open");
    assert_eq!(alerts[1]["number"], "Alert0010003");
    // Without a message key: source+node+type+resource+metric_name.
    em(&sn, ADMIN, json!({"records": [{"source": "S", "node": "N", "type": "T", "resource": "R", "severity": "5"}]})).await;
    let r = get(
        &sn,
        &format!(
            "/api/now/table/em_event?sysparm_query={}",
            urlencode("message_key=SNTR")
        ),
    )
    .await;
    assert_eq!(
        r.body["result"].as_array().expect("events").len(),
        1,
        "{}",
        r.text
    );
    // A bad severity is kept as an event in Error and makes no alert.
    em(
        &sn,
        ADMIN,
        json!({"records": [{"source": "S", "node": "N", "severity": "9", "message_key": "bad"}]}),
    )
    .await;
    let r = get(
        &sn,
        &format!(
            "/api/now/table/em_event?sysparm_query={}",
            urlencode("message_key=bad")
        ),
    )
    .await;
    assert_eq!(r.body["result"][0]["state"], "Error");
    let r = get(
        &sn,
        &format!(
            "/api/now/table/em_alert?sysparm_query={}",
            urlencode("message_key=bad")
        ),
    )
    .await;
    assert_eq!(r.body["result"], json!([]));
    let r = em(&sn, ADMIN, json!({"events": []})).await;
    assert_envelope(
        &r,
        StatusCode::BAD_REQUEST,
        "Exception while reading request",
    );
    let r = em(&sn, Auth::None, json!({"records": []})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_ci_seeded_through_the_control_route_is_found_by_name() {
    let sn = serve_servicenow(SnConfig::default()).await;
    sim(
        "/sim/cmdb_ci",
        &sn,
        json!({"name": "Encl1", "u_oneview_uri": "/rest/enclosures/1"}),
    )
    .await;
    sim("/sim/cmdb_ci", &sn, json!({"name": "Encl2"})).await;
    let r = get(
        &sn,
        &format!(
            "/api/now/table/cmdb_ci?sysparm_query={}",
            urlencode("name=Encl1")
        ),
    )
    .await;
    let list = r.body["result"].as_array().expect("cis");
    assert_eq!(list.len(), 1, "{}", r.text);
    assert_eq!(list[0]["u_oneview_uri"], "/rest/enclosures/1");
    assert_eq!(list[0]["sys_class_name"], "cmdb_ci");
    let ci = list[0]["sys_id"].as_str().expect("sys_id");
    // A field a seeded CI has can be queried.
    let r = get(
        &sn,
        &format!(
            "/api/now/table/cmdb_ci?sysparm_query={}",
            urlencode("u_oneview_uri=/rest/enclosures/1")
        ),
    )
    .await;
    assert_eq!(r.body["result"].as_array().expect("cis").len(), 1);
    let inc = create(&sn, json!({"short_description": "x", "cmdb_ci": ci})).await;
    assert!(inc["cmdb_ci"]["link"]
        .as_str()
        .expect("link")
        .ends_with(&format!("/api/now/table/cmdb_ci/{ci}")));
    let r = get(&sn, &format!("/api/now/table/cmdb_ci/{ci}")).await;
    assert_eq!(r.body["result"]["name"], "Encl1");
}

#[tokio::test]
async fn a_person_resolves_closes_and_reopens_incidents_through_the_control_route() {
    let sn = serve_servicenow(SnConfig::default()).await;
    let inc = create(
        &sn,
        json!({"short_description": "x", "correlation_id": "ov:7"}),
    )
    .await;
    let r = sim(
        "/sim/incidents/INC0010001/resolve",
        &sn,
        json!({"user": "jdoe", "work_notes": "swapped the PSU"}),
    )
    .await;
    assert_eq!(r["result"]["state"], "6");
    assert_eq!(r["result"]["sys_updated_by"], "jdoe");
    assert_eq!(r["result"]["resolved_by"], user_sys_id("jdoe"));
    assert_eq!(r["result"]["close_code"], "Solved (Permanently)");
    // What a client polling the instance then sees.
    let r = get(&sn, &format!("/api/now/table/incident/{}", id(&inc))).await;
    assert_eq!(r.body["result"]["state"], "6");
    let q = urlencode(&format!("element_id={}^element=work_notes", id(&inc)));
    let r = get(
        &sn,
        &format!("/api/now/table/sys_journal_field?sysparm_query={q}"),
    )
    .await;
    assert_eq!(r.body["result"][0]["sys_created_by"], "jdoe");
    let r = sim(
        &format!("/sim/incidents/{}/reopen", id(&inc)),
        &sn,
        json!({"user": "jdoe"}),
    )
    .await;
    assert_eq!(
        (
            r["result"]["state"].clone(),
            r["result"]["reopen_count"].clone()
        ),
        (json!("2"), json!("1"))
    );
    let r = sim(
        "/sim/incidents/INC0010001/close",
        &sn,
        json!({"user": "jdoe", "close_notes": "done"}),
    )
    .await;
    assert_eq!(r["result"]["state"], "7");
    assert_eq!(r["result"]["close_notes"], "done");
    assert_eq!(r["result"]["closed_by"], user_sys_id("jdoe"));
    let r = call(
        &sn,
        Method::POST,
        "/sim/incidents/INC0010001/reopen",
        Auth::None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "closed is final");
    let r = call(
        &sn,
        Method::POST,
        "/sim/incidents/INC0099999/resolve",
        Auth::None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tables_persist_across_restart_and_reset_empties_them() {
    let file = temp_dir("sn-persist").join("servicenow.json");
    let cfg = SnConfig {
        persist: Some(file.clone()),
        ..SnConfig::default()
    };
    let sn = serve_servicenow(cfg.clone()).await;
    let inc = create(&sn, json!({"short_description": "kept", "work_notes": "n"})).await;
    sim("/sim/cmdb_ci", &sn, json!({"name": "Encl1"})).await;
    drop(sn);
    let sn = serve_servicenow(cfg).await;
    let r = get(&sn, &format!("/api/now/table/incident/{}", id(&inc))).await;
    assert_eq!(r.body["result"]["short_description"], "kept");
    assert_eq!(
        create(&sn, json!({"short_description": "next"})).await["number"],
        "INC0010002"
    );
    let s = stats(&sn).await;
    assert_eq!(
        (s["journal"].clone(), s["incidents"].clone()),
        (json!(1), json!(2))
    );
    sim("/sim/reset", &sn, json!({})).await;
    let s = stats(&sn).await;
    assert_eq!(
        (s["incidents"].clone(), s["journal"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        create(&sn, json!({"short_description": "again"})).await["number"],
        "INC0010001"
    );
}
