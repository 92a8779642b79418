//! Where admitted events go. Each sink lives in a folder of its own with the same file roles
//! (`mod.rs` the sink, `config.rs` its config table with a doc comment on every field, a
//! client where it has one) and implements [`Sink`]; the pipeline knows sinks only through
//! that trait. Adding one is its folder, its table in `crate::config::ApplianceConfig`, its
//! settings in [`SinkSettings`] and one line in [`build`] (see ARCHITECTURE.md, "Adding a
//! sink"); the pipeline does not change.

pub mod alertmanager;
pub mod console;
pub mod eventing;
pub mod format;
pub mod http;
pub mod jsonl;
pub mod lifecycle;
pub mod oneview_retry;
pub mod pagerduty;
pub mod relay;
pub mod service_manager;
pub mod servicenow;
mod sink;
pub mod syslog;
pub mod ticketing;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

pub use sink::{Outcome, Sink, SinkError};

use crate::store::Store;
use crate::telemetry::ApplianceMetrics;
use scmb_model::Filter;
use scmb_oneview::Session;

/// What every sink of an appliance may use.
#[derive(Clone)]
pub struct SinkContext {
    /// The appliance's name (`scmb run`), labelling output lines; none for one appliance.
    pub label: Option<String>,
    /// The appliance's state store (none for a listener that keeps nothing).
    pub store: Option<Store>,
    /// The REST session (none when nothing needs REST).
    pub session: Option<Arc<Session>>,
    pub metrics: ApplianceMetrics,
    /// True once the pipeline is stopping: long work gives up and reports `Interrupted`.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// A sink that has done all it was asked (the listener's `--count`) asks for a stop.
    pub finish: Arc<tokio::sync::Notify>,
    pub filter: Filter,
}

/// The sinks of one pipeline, ready to build (secrets read, paths resolved).
#[derive(Debug, Clone, Default)]
pub struct SinkSettings {
    pub console: Option<console::ConsoleSettings>,
    pub jsonl: Option<PathBuf>,
    pub service_manager: Option<service_manager::ServiceManagerSettings>,
    pub pagerduty: Option<pagerduty::PagerDutySettings>,
    pub servicenow: Option<servicenow::ServiceNowSettings>,
    /// `[[appliance.webhook]]`, in the file's order.
    pub webhooks: Vec<webhook::WebhookSettings>,
    pub alertmanager: Option<alertmanager::AlertmanagerSettings>,
    pub syslog: Option<syslog::SyslogSettings>,
    /// `[appliance.relay]`.
    pub relay: Option<relay::RelaySettings>,
}

impl SinkSettings {
    /// Whether a sink tickets (or pages): the first start then catches up on every active
    /// alert.
    pub fn tickets(&self) -> bool {
        self.service_manager.is_some()
            || self.servicenow.is_some()
            || self.pagerduty.is_some()
            || self.alertmanager.is_some()
    }
}

/// Builds the sinks, in a fixed order (printers first, then ticketing).
pub fn build(s: &SinkSettings, ctx: &SinkContext) -> Result<Vec<Arc<dyn Sink>>, SinkError> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(c) = &s.console {
        sinks.push(Arc::new(console::Console::new(c, ctx)));
    }
    if let Some(path) = &s.jsonl {
        let label = ctx
            .label
            .clone()
            .unwrap_or_else(|| ctx.metrics.name().to_string());
        sinks.push(Arc::new(jsonl::Jsonl::open(path, &label)?));
    }
    if let Some(sm) = &s.service_manager {
        sinks.push(Arc::new(service_manager::ServiceManager::new(sm, ctx)?));
    }
    if let Some(pd) = &s.pagerduty {
        sinks.push(Arc::new(pagerduty::PagerDuty::new(pd, ctx)?));
    }
    if let Some(sn) = &s.servicenow {
        sinks.push(servicenow::sink(sn, ctx)?);
    }
    for w in &s.webhooks {
        sinks.push(Arc::new(webhook::Webhook::new(w, ctx)?));
    }
    if let Some(am) = &s.alertmanager {
        sinks.push(Arc::new(alertmanager::Alertmanager::new(am, ctx)?));
    }
    if let Some(sl) = &s.syslog {
        sinks.push(Arc::new(syslog::Syslog::new(sl, ctx)?));
    }
    if let Some(r) = &s.relay {
        sinks.push(Arc::new(relay::Relay::new(r, ctx)?));
    }
    Ok(sinks)
}
