//! The PagerDuty Events API simulator as the tests see it: one per test (its faults touch no
//! other test), its incidents by alert uri, and the check that each alert has exactly one
//! open incident and one note naming its dedup key.

use std::collections::HashMap;
use std::time::Duration;

use scmb::sinks::pagerduty::dedup_key;
use scmb_sim::client::SimClient;
use scmb_sim::pagerduty::PdState;
use scmb_sim::testkit::Served;
use serde_json::Value;

use super::{alert, notes, wait_until};

/// What every PagerDuty note starts with.
pub const NOTE: &str = "Paged on PagerDuty";

/// `[appliance.pagerduty]` paging `url` with the key in `$PD_KEY` (retries capped at 1 s),
/// with `extra` added.
pub fn table(url: &str, extra: &str) -> String {
    format!(
        "[appliance.pagerduty]\nurl = \"{url}\"\nrouting_key_env = \"PD_KEY\"\nretry_cap = \"1s\"\n{extra}\n"
    )
}

/// PagerDuty's incidents by the alert uri in their details (one entry per incident, so a
/// duplicate shows as two).
pub fn incidents(pd: &Served<PdState>) -> HashMap<String, Vec<Value>> {
    let mut by: HashMap<String, Vec<Value>> = HashMap::new();
    for inc in pd.state.incidents() {
        if let Some(u) = inc["customDetails"]["alertUri"].as_str() {
            by.entry(u.to_string()).or_default().push(inc);
        }
    }
    by
}

/// The PagerDuty notes of an alert.
pub fn pd_notes(a: &Value) -> Vec<String> {
    notes(a, NOTE)
}

/// Waits (up to `timeout` for each) until every alert has an incident and its note; then
/// checks there is exactly one of each, the incident still open and keyed by the dedup key of
/// the appliance `name`.
pub async fn assert_paged_exactly_once(
    c: &SimClient,
    pd: &Served<PdState>,
    name: &str,
    uris: &[String],
    timeout: Duration,
) {
    let all_paged = wait_until(timeout, || async move {
        let by = incidents(pd);
        uris.iter().all(|u| by.contains_key(u))
    })
    .await;
    let by = incidents(pd);
    let lost: Vec<&String> = uris.iter().filter(|u| !by.contains_key(*u)).collect();
    assert!(all_paged, "lost: {lost:?}");
    for u in uris {
        let incs = &by[u];
        assert_eq!(incs.len(), 1, "{u}: one incident, not {incs:?}");
        assert_eq!(incs[0]["status"], "triggered", "{u}");
        assert_eq!(incs[0]["dedupKey"], dedup_key(name, u).as_str(), "{u}");
    }
    for u in uris {
        let noted = wait_until(timeout, || async move {
            !pd_notes(&alert(c, u).await).is_empty()
        })
        .await;
        assert!(noted, "{u}: never noted");
    }
    for u in uris {
        let notes = pd_notes(&alert(c, u).await);
        assert_eq!(
            notes,
            vec![format!(
                "Paged on PagerDuty (dedup key {})",
                dedup_key(name, u)
            )],
            "{u}: noted exactly once"
        );
    }
}
