//! Realistic SCMB alert messages (~1.5 KB, the shape of SPEC.md §2 and
//! `testdata/alert-critical.json`): one in ten a new active critical alert, the others the
//! warnings, notes, clears and deletions an appliance publishes around them.

use serde_json::{json, Value};

use crate::util::rfc3339_ms;

/// What one message says about its alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub change: &'static str,
    pub severity: &'static str,
    pub state: &'static str,
    /// `changedAttributes` of an `Updated`.
    pub changed: &'static [&'static str],
}

/// The new active critical alert the tools and the HPE sample print.
pub const CRITICAL: Kind = Kind {
    change: "Created",
    severity: "Critical",
    state: "Active",
    changed: &[],
};

/// The nine other messages of every ten, none of which the default filter admits.
const OTHERS: [Kind; 9] = [
    Kind {
        change: "Created",
        severity: "Warning",
        state: "Active",
        changed: &[],
    },
    Kind {
        change: "Updated",
        severity: "Critical",
        state: "Active",
        changed: &["changeLog"],
    },
    Kind {
        change: "Created",
        severity: "Warning",
        state: "Locked",
        changed: &[],
    },
    Kind {
        change: "Updated",
        severity: "Warning",
        state: "Cleared",
        changed: &["alertState", "clearedByUser", "clearedTime"],
    },
    Kind {
        change: "Created",
        severity: "OK",
        state: "Cleared",
        changed: &[],
    },
    Kind {
        change: "Updated",
        severity: "Critical",
        state: "Active",
        changed: &["assignedToUser"],
    },
    Kind {
        change: "Created",
        severity: "Warning",
        state: "Active",
        changed: &[],
    },
    Kind {
        change: "Updated",
        severity: "Critical",
        state: "Cleared",
        changed: &["alertState", "clearedByUser", "clearedTime"],
    },
    Kind {
        change: "Deleted",
        severity: "Warning",
        state: "Cleared",
        changed: &[],
    },
];

/// The kind of message `i` of `n`: every tenth is critical, and so is the last one, so that a
/// consumer told to stop after the criticals stops exactly when the queue is drained.
pub fn kind_of(i: u64, n: u64) -> Kind {
    if i % 10 == 9 || i + 1 == n {
        CRITICAL
    } else {
        OTHERS[(i % 10) as usize]
    }
}

/// How many of `n` messages are critical.
pub fn criticals(n: u64) -> u64 {
    let c = n / 10;
    if !n.is_multiple_of(10) {
        c + 1
    } else {
        c
    }
}

const HEALTH: [(&str, &str, &str, &str); 4] = [
    (
        "Power",
        "Trap.cpqHe4FltTolPowerSupplyFailed",
        "The power supply in bay 4 of enclosure Encl1 failed. The enclosure is running without power redundancy.",
        "Replace the power supply in bay 4. If the problem persists, contact your authorized support representative and provide the enclosure support dump.",
    ),
    (
        "Thermal",
        "Trap.cpqHeThermalTempDegraded",
        "The temperature sensor 12 (CPU zone) reported a degraded temperature of 86 C (caution threshold 85 C).",
        "Check the air flow, the fans and the ambient temperature of the data center; make sure no blanks are missing in the enclosure.",
    ),
    (
        "Storage",
        "Trap.cpqDa6AccelBadDataTrap",
        "The Smart Array controller in slot 3 reported that the cache module lost data during a power failure.",
        "Replace the cache module battery or capacitor pack and check the logical drives for consistency.",
    ),
    (
        "Network",
        "Trap.cpqNic3ConnectivityLost",
        "Network adapter 2 port 1 lost connectivity to the interconnect module in bay 3 (link down for 30 seconds).",
        "Check the cabling and the interconnect module in bay 3; verify the uplink set configuration in OneView.",
    ),
];

/// One SCMB alert message: routing key and UTF-8 JSON body. `id` names the alert
/// (`/rest/alerts/<id>`); `ts_ms` is its eTag/timestamp time; `extra` fields (e.g. the
/// latency test's send time) are added to the envelope.
pub fn envelope(
    id: u64,
    kind: Kind,
    ts_ms: i64,
    extra: Option<(&str, Value)>,
) -> (String, Vec<u8>) {
    let uri = format!("/rest/alerts/{id}");
    let (health, type_id, description, action) = HEALTH[(id % HEALTH.len() as u64) as usize];
    let created = rfc3339_ms(ts_ms - 60_000);
    let etag = rfc3339_ms(ts_ms);
    let enclosure = format!("/rest/enclosures/09SGH100X6J{}", id % 8);
    let cleared = kind.state == "Cleared";
    let change_log = if kind.changed.contains(&"changeLog") {
        json!([{"userEntered": true, "username": "Administrator", "created": etag,
                "notes": "Investigating; spare part ordered.",
                "uri": format!("/rest/alerts/AlertChangeLog/{id}")}])
    } else {
        json!([])
    };
    let resource = json!({
        "type": "AlertResourceV3", "category": "alerts", "uri": uri,
        "eTag": etag, "created": created, "modified": etag,
        "alertState": kind.state, "severity": kind.severity, "urgency": "None",
        "healthCategory": health, "alertTypeID": type_id,
        "description": description, "correctiveAction": action,
        "lifeCycle": kind.state == "Locked",
        "assignedToUser": if kind.changed.contains(&"assignedToUser") { json!("operator") } else { Value::Null },
        "clearedByUser": if cleared { json!("Administrator") } else { Value::Null },
        "clearedTime": if cleared { json!(etag) } else { Value::Null },
        "associatedResource": {"resourceCategory": "enclosures", "resourceUri": enclosure,
            "associationType": "HAS_A", "resourceName": format!("Encl{}", id % 8)},
        "resourceUri": enclosure, "physicalResourceType": "enclosures", "resourceID": null,
        "changeLog": change_log,
        "associatedEventUris": [format!("/rest/events/{}", id * 3), format!("/rest/events/{}", id * 3 + 1)],
        "activityUri": null, "childAlerts": null, "parentAlert": null,
        "serviceEventSource": false, "serviceEventDetails": null,
    });
    let mut env = json!({
        "resourceUri": uri, "changeType": kind.change, "newState": kind.state,
        "newSubState": null, "eTag": etag, "timestamp": rfc3339_ms(ts_ms + 24),
        "resource": resource, "associatedTask": null, "userInitiatedTask": false,
        "changedAttributes": kind.changed, "data": null,
    });
    if let (Some((k, v)), Some(obj)) = (extra, env.as_object_mut()) {
        obj.insert(k.to_string(), v);
    }
    let key = format!("scmb.alerts.{}.{uri}", kind.change);
    (key, serde_json::to_vec(&env).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_ten_is_critical_and_the_last_one_too() {
        for n in [10u64, 20, 25, 200_000, 1, 7] {
            let c = (0..n).filter(|i| kind_of(*i, n) == CRITICAL).count() as u64;
            assert_eq!(c, criticals(n), "n = {n}");
            assert_eq!(kind_of(n - 1, n), CRITICAL);
        }
        assert!(OTHERS.iter().all(|k| *k != CRITICAL));
    }

    #[test]
    fn messages_are_about_one_and_a_half_kilobytes() {
        for i in 0..20u64 {
            let (key, body) = envelope(100_000 + i, kind_of(i, 20), 1_764_064_800_000, None);
            assert!(key.starts_with("scmb.alerts."), "{key}");
            assert!((1300..1800).contains(&body.len()), "{} bytes", body.len());
            let v: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["resource"]["uri"], v["resourceUri"]);
        }
    }
}
