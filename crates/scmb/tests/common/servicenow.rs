//! The ServiceNow simulator as the tests see it: one per test (its faults touch no other
//! test), its incidents by `correlation_id`, and the check that each alert has exactly one
//! incident and one note naming it.

use std::collections::HashMap;
use std::time::Duration;

use scmb_sim::client::SimClient;
use scmb_sim::servicenow::{SnConfig, SnFaults, SnState};
use scmb_sim::testkit::{serve_servicenow, Served};
use serde_json::Value;

use super::{alert, notes, until};

/// The note scmb writes into a ticketed alert, before the incident's number.
pub const NOTE: &str = "Case automatically logged in ServiceNow with ID: ";

/// Basic credentials the simulator accepts (with `SN_PASSWORD=admin`).
pub const BASIC: &str = "user = \"admin\"\npassword_env = \"SN_PASSWORD\"\n";

/// A ServiceNow simulator of the test's own.
pub struct Sn {
    pub served: Served<SnState>,
    pub http: reqwest::Client,
}

impl Sn {
    pub async fn start(cfg: SnConfig) -> Sn {
        Sn {
            served: serve_servicenow(cfg).await,
            http: reqwest::Client::builder()
                .use_preconfigured_tls(
                    scmb_tls::client_config(
                        &scmb_tls::ServerTrust::Insecure,
                        &scmb_tls::NameCheck::Skip,
                        None,
                    )
                    .expect("tls"),
                )
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self) -> &str {
        &self.served.url
    }

    /// `[appliance.servicenow]` on this instance (retries capped at 1 s) with `servicenow`
    /// added, and `[appliance.servicenow.incident]` with `incident`.
    pub fn tables(&self, servicenow: &str, incident: &str) -> String {
        format!(
            "[appliance.servicenow]\ninstance = \"{}\"\nretry_cap = \"1s\"\n{servicenow}\n[appliance.servicenow.incident]\n{incident}\n",
            self.url()
        )
    }

    /// Every incident, with its journal.
    pub fn incidents(&self) -> Vec<Value> {
        self.served.state.incidents()
    }

    /// Incidents by `correlation_id` (a duplicate shows as two).
    pub fn by_correlation(&self) -> HashMap<String, Vec<Value>> {
        let mut by: HashMap<String, Vec<Value>> = HashMap::new();
        for i in self.incidents() {
            let k = i["correlation_id"].as_str().unwrap_or("").to_string();
            by.entry(k).or_default().push(i);
        }
        by
    }

    pub fn faults(&self, f: Value) {
        let f: SnFaults = serde_json::from_value(f).expect("faults");
        self.served.state.set_faults(f);
    }

    /// `GET /sim/stats`.
    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/sim/stats", self.url()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    /// A control route (`/sim/...`): its JSON answer.
    pub async fn control(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.url()))
            .json(&body)
            .send()
            .await
            .expect("control call")
            .json()
            .await
            .expect("json")
    }
}

/// The `correlation_id` scmb gives the incident of `uri` on the appliance `name`.
pub fn key(name: &str, uri: &str) -> String {
    format!("scmb:{name}:{uri}")
}

/// The incident numbers in the alert's notes.
pub fn noted(a: &Value) -> Vec<String> {
    notes(a, NOTE)
        .iter()
        .filter_map(|n| n.strip_prefix(NOTE).map(str::to_string))
        .collect()
}

/// Waits until every alert carries an incident number in its notes.
pub async fn wait_noted(c: &SimClient, uris: &[String], timeout: Duration) {
    until("every alert's note", timeout, || async {
        for u in uris {
            if noted(&alert(c, u).await).is_empty() {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// Exactly one incident per alert, carrying its `correlation_id`, and its number the one in
/// the alert's notes (written once).
pub async fn assert_exactly_once(c: &SimClient, sn: &Sn, name: &str, uris: &[String]) {
    let by = sn.by_correlation();
    for u in uris {
        let found = by.get(&key(name, u)).map(Vec::len).unwrap_or(0);
        assert_eq!(found, 1, "{u}: {found} incidents");
        let number = by[&key(name, u)][0]["number"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(noted(&alert(c, u).await), vec![number], "{u}: its note");
    }
}
