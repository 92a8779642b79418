//! The lifecycle of the printing sinks that announce alerts (`lifecycle = true` of the webhook
//! and syslog sinks): which events they want beyond the admitted ones (the clears and
//! deletions of the alerts the filter admits), and what they owe. An alert announced is kept
//! in the store (`SINK:<uri>`, Created) until its clear or deletion was delivered (Closed),
//! so that one that happened while scmb was stopped is found after the restart: the catch-up
//! reads each owed alert over REST and feeds back the clear or deletion it missed.

use scmb_model::{ChangeType, Event, Filter, Peek};

use crate::failure;
use crate::sinks::sink::SinkError;
use crate::sinks::SinkContext;
use crate::store::{Record, Step, Store};

/// Whether the filter admits an alert of this severity and type, whatever its state and
/// change (for its lifecycle events).
pub(crate) fn admits_alert(filter: &Filter, ev: &Peek<'_>) -> bool {
    let sev_ok = match ev.severity.as_deref() {
        None => true,
        Some(s) => {
            filter.severities.is_empty()
                || filter
                    .severities
                    .iter()
                    .any(|f| f == "*" || f.eq_ignore_ascii_case(s))
        }
    };
    let type_ok = filter.alert_types.is_empty()
        || ev.alert_type_id.as_deref().is_some_and(|t| {
            filter
                .alert_types
                .iter()
                .any(|p| scmb_model::filter::glob(p, t))
        });
    sev_ok && type_ok
}

/// Whether the event ends an alert: its deletion, or its update to Cleared.
fn ending(ev: &Event) -> bool {
    ev.change_type == ChangeType::Deleted
        || ev.str("newState") == Some("Cleared")
        || ev
            .resource()
            .get("alertState")
            .and_then(serde_json::Value::as_str)
            == Some("Cleared")
}

/// One sink's lifecycle: off, or on with (when there is a store) what it owes.
pub struct Lifecycle {
    on: bool,
    label: &'static str,
    store: Option<Store>,
}

impl Lifecycle {
    pub fn new(on: bool, label: &'static str, ctx: &SinkContext) -> Lifecycle {
        Lifecycle {
            on,
            label,
            store: ctx.store.clone().filter(|_| on),
        }
    }

    fn key(&self, uri: &str) -> String {
        format!("{}:{uri}", self.label)
    }

    /// Admitted events; when on, also the clears and deletions of the alerts the filter
    /// admits by severity and type, and a deletion that carries nothing but the uri (one found
    /// by the catch-up: the alert is gone) of an alert this sink owes the end of.
    pub fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        if filter.admits_peek(ev) {
            return true;
        }
        let ending =
            ev.change_type == ChangeType::Deleted || ev.new_state.as_deref() == Some("Cleared");
        self.on
            && ev.is_alert()
            && ending
            && (admits_alert(filter, ev)
                || (ev.severity.is_none()
                    && ev.alert_type_id.is_none()
                    && self.owes(&ev.resource_uri)))
    }

    /// Whether the sink announced the alert and has not delivered its end yet.
    pub fn owes(&self, uri: &str) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        matches!(store.get(&self.key(uri)), Ok(Some(r)) if r.step == Step::Created)
    }

    /// Records that the event was delivered: Created for an alert announced (its end is
    /// owed), Closed once its end was delivered. Nothing when off.
    pub async fn delivered(&self, ev: &Event) -> Result<(), SinkError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        if !ev.is_alert() {
            return Ok(());
        }
        let key = self.key(&ev.resource_uri);
        let step = if ending(ev) {
            if !self.owes(&ev.resource_uri) {
                return Ok(()); // never announced here: nothing owed
            }
            Step::Closed
        } else {
            Step::Created
        };
        store
            .put_async(&key, &Record::new(None, step))
            .await
            .map_err(|e| {
                SinkError::new(
                    self.label,
                    failure::STORE_UNWRITABLE,
                    format!("cannot record what {} sent: {e}", self.label),
                )
            })
    }

    /// The alerts announced whose end was not delivered yet.
    pub async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let prefix = format!("{}:", self.label);
        let all = store
            .call(|s| s.all())
            .await
            .map_err(|e| SinkError::new(self.label, failure::STORE_UNWRITABLE, e.to_string()))?;
        Ok(all
            .into_iter()
            .filter(|(_, r)| r.step == Step::Created)
            .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }
}
