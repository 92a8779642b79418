//! Shared by the test binaries: an in-process Service Manager simulator (no broker) on a free
//! port, a client for it, and the simulator's `/sim/` control routes.

#![allow(dead_code)]

use std::time::Duration;

use scmb_servicemanager::{SmClient, SmConfig};
use scmb_sim::testkit::temp_dir;
use scmb_sim::{Sim, SimConfig};
use serde_json::{json, Map, Value};

pub const USER: &str = "falcon";
pub const PASSWORD: &str = "secret";

/// A simulator with SM on a free port and user `falcon`/`secret`; `tweak` may change more.
pub async fn sm_sim(tweak: impl FnOnce(&mut SimConfig)) -> (Sim, String) {
    let mut cfg = SimConfig::new(temp_dir("sm-client"));
    cfg.broker = false;
    cfg.rest_port = 0;
    cfg.sm_port = Some(0);
    cfg.sm.users = [(USER.to_string(), PASSWORD.to_string())].into();
    tweak(&mut cfg);
    let sim = Sim::start(cfg).await.expect("sim starts");
    let url = sim.info["smUrl"].as_str().expect("smUrl").to_string();
    (sim, url)
}

/// A client for `url` as `falcon` with `password`.
pub fn client_with(url: &str, password: &str, timeout: Duration) -> SmClient {
    let mut cfg = SmConfig::from_host(url, USER, password);
    cfg.timeout = timeout;
    SmClient::new(cfg).expect("client")
}

/// A client for `url` as `falcon`/`secret` with a 5 s timeout.
pub fn client(url: &str) -> SmClient {
    client_with(url, PASSWORD, Duration::from_secs(5))
}

/// A JSON object literal as a map.
pub fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The incident the OneView sink would send.
pub fn alert_incident(title: &str) -> Map<String, Value> {
    fields(json!({
        "Title": title,
        "Description": ["resourceName: Encl1", "Description: PSU failed"],
        "Category": "incident", "Area": "hardware", "Subarea": "hardware failure",
        "Impact": "4", "Urgency": "1", "AssignmentGroup": "Service Manager",
        "Service": "MyDevices", "AffectedCI": "Encl1",
    }))
}

fn control() -> reqwest::Client {
    scmb_sim::client::http_client(None).expect("control client")
}

/// `POST /sim/faults`.
pub async fn set_faults(url: &str, faults: Value) {
    let r = control()
        .post(format!("{url}/sim/faults"))
        .json(&faults)
        .send()
        .await
        .expect("set faults");
    assert!(r.status().is_success(), "faults {faults} refused");
}

/// `DELETE /sim/faults`.
pub async fn clear_faults(url: &str) {
    let r = control()
        .delete(format!("{url}/sim/faults"))
        .send()
        .await
        .expect("clear faults");
    assert!(r.status().is_success());
}

/// `GET /sim/incidents`: every incident the simulator holds.
pub async fn sim_incidents(url: &str) -> Vec<Value> {
    let v: Value = control()
        .get(format!("{url}/sim/incidents"))
        .send()
        .await
        .expect("incidents")
        .json()
        .await
        .expect("json");
    v["incidents"].as_array().cloned().unwrap_or_default()
}
