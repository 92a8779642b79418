//! Which messages a user wants. The default is the HPE sample's: alerts with changeType
//! `Created`, alertState `Active` and severity `Critical`. Options widen it: more severities,
//! states (e.g. `Locked`), change types, escalations (an `Updated` alert whose severity changed
//! into an admitted one), other resource categories (shown in a generic form), and alertTypeID
//! patterns with `*` wildcards.

use crate::alert::AlertView;
use crate::message::{ChangeType, Event};
use crate::peek::Peek;

/// A message filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Admitted alert severities (case-insensitive).
    pub severities: Vec<String>,
    /// Admitted alert states (case-insensitive).
    pub states: Vec<String>,
    /// Admitted change types.
    pub change_types: Vec<ChangeType>,
    /// Also admit `Updated` alerts whose severity just changed into an admitted one.
    pub escalations: bool,
    /// Admitted resource categories (`alerts`, `server-hardware`, …; `*` = all).
    pub categories: Vec<String>,
    /// alertTypeID patterns (`*` matches any run of characters); empty = all.
    pub alert_types: Vec<String>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            severities: vec!["Critical".into()],
            states: vec!["Active".into()],
            change_types: vec![ChangeType::Created],
            escalations: false,
            categories: vec!["alerts".into()],
            alert_types: vec![],
        }
    }
}

/// The severities OneView gives alerts.
pub const SEVERITIES: [&str; 5] = ["Critical", "Warning", "OK", "Unknown", "Disabled"];

/// The states OneView gives alerts (Locked: active, and not clearable by users).
pub const STATES: [&str; 3] = ["Active", "Locked", "Cleared"];

/// Resource categories OneView is known to publish on the SCMB (routing keys
/// `scmb.<category>.…`). The set is open: newer appliances add categories, so another value
/// is only warned about.
pub const KNOWN_CATEGORIES: [&str; 34] = [
    "alerts",
    "tasks",
    "appliance",
    "connection-templates",
    "datacenters",
    "drive-enclosures",
    "enclosure-groups",
    "enclosures",
    "ethernet-networks",
    "fabrics",
    "fc-networks",
    "fcoe-networks",
    "firmware-drivers",
    "hypervisor-cluster-profiles",
    "hypervisor-managers",
    "interconnects",
    "logical-enclosures",
    "logical-interconnect-groups",
    "logical-interconnects",
    "network-sets",
    "power-devices",
    "racks",
    "sas-interconnects",
    "sas-logical-interconnects",
    "server-hardware",
    "server-hardware-types",
    "server-profile-templates",
    "server-profiles",
    "storage-pools",
    "storage-systems",
    "storage-volume-templates",
    "storage-volumes",
    "switches",
    "uplink-sets",
];

/// What [`Filter::check`] found wrong with the values a user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterProblem {
    /// A value of a closed set that OneView never sends: the filter would admit nothing.
    Unknown {
        /// `severity` or `state`.
        field: &'static str,
        value: String,
        valid: &'static [&'static str],
    },
}

impl std::fmt::Display for FilterProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterProblem::Unknown {
                field,
                value,
                valid,
            } => write!(
                f,
                "{field} {value:?} is not one OneView sends: use {} (or *)",
                valid.join(", ")
            ),
        }
    }
}

fn is_alert_type_pattern_plausible(p: &str) -> bool {
    // alertTypeIDs are dotted identifiers (Trap.cpqHe3FltTolPowerSupplyFailed,
    // hpris.emRegister.…): a pattern that could match one has only such characters, and a
    // dot unless a `*` stands in for it.
    !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-*".contains(c))
        && (p.contains('.') || p.contains('*'))
}

fn contains_ci(list: &[String], v: Option<&str>) -> bool {
    v.is_some_and(|v| list.iter().any(|x| x == "*" || x.eq_ignore_ascii_case(v)))
}

/// `*`-glob match, case-sensitive (alertTypeIDs are identifiers).
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(at) = rest.find(part) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    true
}

impl Filter {
    /// Checks the values against what OneView sends. Severities and states are closed sets: a
    /// value outside them (a typo) is an error. Categories and alert types are open sets:
    /// values OneView is not known to send come back as warnings.
    pub fn check(&self) -> Result<Vec<String>, FilterProblem> {
        let closed = [
            ("severity", &self.severities, &SEVERITIES[..]),
            ("state", &self.states, &STATES[..]),
        ];
        for (field, values, valid) in closed {
            if let Some(v) = values
                .iter()
                .find(|v| *v != "*" && !valid.iter().any(|k| k.eq_ignore_ascii_case(v)))
            {
                return Err(FilterProblem::Unknown {
                    field,
                    value: v.clone(),
                    valid,
                });
            }
        }
        let mut warnings = Vec::new();
        for c in &self.categories {
            if c != "*" && !KNOWN_CATEGORIES.iter().any(|k| k.eq_ignore_ascii_case(c)) {
                warnings.push(format!(
                    "category {c:?} is not one OneView is known to send (e.g. alerts, tasks, server-hardware, enclosures): nothing may match it"
                ));
            }
        }
        for p in &self.alert_types {
            if !is_alert_type_pattern_plausible(p) {
                warnings.push(format!(
                    "alert type {p:?} does not look like a OneView alertTypeID (dotted names like Trap.cpqHe3FltTolPowerSupplyFailed; `*` matches any run): nothing may match it"
                ));
            }
        }
        Ok(warnings)
    }

    /// Whether `e` is wanted.
    pub fn admits(&self, e: &Event) -> bool {
        let a = AlertView(e.resource());
        self.admits_fields(
            &e.category,
            e.change_type,
            || e.changed_attributes().any(|c| c == "severity"),
            [a.severity(), a.alert_state(), a.alert_type_id()],
        )
    }

    /// Whether the message behind `p` is wanted: the same answer as [`Filter::admits`] gives
    /// for its full decoding.
    pub fn admits_peek(&self, p: &Peek<'_>) -> bool {
        self.admits_fields(
            &p.category,
            p.change_type,
            || p.severity_changed,
            [
                p.severity.as_deref(),
                p.alert_state.as_deref(),
                p.alert_type_id.as_deref(),
            ],
        )
    }

    /// Whether an alert in `state` can be admitted at all.
    pub fn admits_state(&self, state: &str) -> bool {
        contains_ci(&self.states, Some(state))
    }

    /// The severity part of this filter as a OneView REST filter expression, so that a listing
    /// of alerts returns only what could be admitted (`(severity='Critical' OR
    /// severity='Warning')`); none when every severity is admitted.
    pub fn rest_severity_clause(&self) -> Option<String> {
        if self.severities.is_empty()
            || self
                .severities
                .iter()
                .any(|s| s == "*" || !s.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return None;
        }
        let terms: Vec<String> = self
            .severities
            .iter()
            .map(|s| format!("severity='{s}'"))
            .collect();
        Some(format!("({})", terms.join(" OR ")))
    }

    /// `alert` is severity, alertState and alertTypeID.
    fn admits_fields(
        &self,
        category: &str,
        change_type: ChangeType,
        severity_changed: impl FnOnce() -> bool,
        alert: [Option<&str>; 3],
    ) -> bool {
        if !contains_ci(&self.categories, Some(category)) {
            return false;
        }
        if category != "alerts" {
            return self.change_types.contains(&change_type);
        }
        let [severity, state, alert_type] = alert;
        let change_ok = self.change_types.contains(&change_type)
            || (self.escalations && change_type == ChangeType::Updated && severity_changed());
        change_ok
            && contains_ci(&self.severities, severity)
            && contains_ci(&self.states, state)
            && (self.alert_types.is_empty()
                || alert_type.is_some_and(|t| self.alert_types.iter().any(|p| glob(p, t))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::decode;
    use serde_json::json;

    fn ev(change: &str, sev: &str, state: &str, changed: &[&str]) -> Event {
        let body = json!({"resourceUri": "/rest/alerts/1", "changeType": change,
            "changedAttributes": changed,
            "resource": {"severity": sev, "alertState": state, "alertTypeID": "Trap.cpqHe4FltTolPowerSupplyFailed"}});
        decode(
            &format!("scmb.alerts.{change}./rest/alerts/1"),
            body.to_string().as_bytes(),
            1 << 20,
        )
        .expect("decode")
    }

    #[test]
    fn a_listing_asks_the_appliance_only_for_admitted_severities() {
        let f = Filter::default();
        assert_eq!(
            f.rest_severity_clause().as_deref(),
            Some("(severity='Critical')")
        );
        let two = Filter {
            severities: vec!["Critical".into(), "Warning".into()],
            ..Filter::default()
        };
        assert_eq!(
            two.rest_severity_clause().as_deref(),
            Some("(severity='Critical' OR severity='Warning')")
        );
        let all = Filter {
            severities: vec!["*".into()],
            ..Filter::default()
        };
        assert_eq!(all.rest_severity_clause(), None);
        assert!(f.admits_state("active") && !f.admits_state("Locked"));
    }

    #[test]
    fn the_default_is_the_samples_filter() {
        let f = Filter::default();
        assert!(f.admits(&ev("Created", "Critical", "Active", &[])));
        assert!(!f.admits(&ev("Created", "Warning", "Active", &[])));
        assert!(!f.admits(&ev("Created", "Critical", "Locked", &[])));
        assert!(!f.admits(&ev("Updated", "Critical", "Active", &["severity"])));
        assert!(!f.admits(&ev("Created", "Critical", "Cleared", &[])));
    }

    #[test]
    fn locked_and_escalations_are_admitted_when_asked() {
        let f = Filter {
            states: vec!["Active".into(), "Locked".into()],
            escalations: true,
            ..Filter::default()
        };
        assert!(f.admits(&ev("Created", "Critical", "Locked", &[])));
        assert!(f.admits(&ev("Updated", "Critical", "Active", &["severity"])));
        assert!(!f.admits(&ev("Updated", "Critical", "Active", &["changeLog"])));
        assert!(!f.admits(&ev("Updated", "Warning", "Active", &["severity"])));
    }

    #[test]
    fn alert_type_patterns_and_categories() {
        let f = Filter {
            alert_types: vec!["Trap.cpqHe4*".into()],
            ..Filter::default()
        };
        assert!(f.admits(&ev("Created", "Critical", "Active", &[])));
        let f = Filter {
            alert_types: vec!["*Fan*".into()],
            ..Filter::default()
        };
        assert!(!f.admits(&ev("Created", "Critical", "Active", &[])));
        let hw = decode(
            "scmb.server-hardware.Updated./rest/server-hardware/1",
            br#"{"resourceUri":"/rest/server-hardware/1","changeType":"Updated","resource":{}}"#,
            1 << 20,
        )
        .expect("decode");
        assert!(!Filter::default().admits(&hw));
        let f = Filter {
            categories: vec!["*".into()],
            change_types: vec![ChangeType::Updated],
            ..Filter::default()
        };
        assert!(f.admits(&hw));
        assert!(glob("a*c*e", "abcde") && !glob("a*c*e", "abcd") && glob("*", ""));
    }

    #[test]
    fn filter_typos_are_refused_and_unknown_open_values_warned() {
        assert_eq!(Filter::default().check(), Ok(vec![]));
        let typo = |sev: &str, state: &str| Filter {
            severities: vec![sev.into()],
            states: vec![state.into()],
            ..Filter::default()
        };
        let e = typo("Critcal", "Active").check().expect_err("typo");
        assert!(
            e.to_string().contains("\"Critcal\"") && e.to_string().contains("Critical, Warning"),
            "{e}"
        );
        let e = typo("critical", "Actve").check().expect_err("typo");
        assert!(
            e.to_string().contains("Actve") && e.to_string().contains("Locked"),
            "{e}"
        );
        assert!(typo("*", "locked").check().is_ok());
        let open = Filter {
            categories: vec!["server-hardwar".into(), "enclosures".into()],
            alert_types: vec!["Trap.cpq*".into(), "power supply".into()],
            ..Filter::default()
        };
        let w = open.check().expect("warnings only");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("server-hardwar") && w[1].contains("power supply"),
            "{w:?}"
        );
    }
}
