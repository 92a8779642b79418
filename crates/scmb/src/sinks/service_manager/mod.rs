//! The Service Manager sink (what `ov_to_sm` does): every admitted alert becomes exactly one
//! HP Service Manager incident whose id is written back into the alert's notes; cleared or
//! deleted alerts update or close it. The work, step by step and recorded, is the shared
//! [`crate::sinks::ticketing`]; what is Service Manager's (its incident, its notes, its
//! errors) is in [`incident`]; the client is the `scmb-servicemanager` crate.

mod config;
mod incident;

use std::io::Stdout;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::sinks::ticketing::OnClear;
pub use config::{IncidentConfig, ServiceManagerConfig};
pub use incident::{
    incident_in_change_log, is_ticket_note, note_for, Template, NOTE_PREFIX, NOTE_PREFIXES,
    REFERENCE_FIELD,
};

use crate::sinks::ticketing::{Ticketer, TicketerSettings};
use incident::SmSystem;
use scmb_model::{Event, Filter, Peek};
use scmb_servicemanager::{SmClient, SmConfig};

use crate::failure;
use crate::sinks::format::{Output, Printer};
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::SinkContext;

/// What the sink needs, from `ov_to_sm`'s flags or an `[appliance.service_manager]` table.
#[derive(Debug, Clone)]
pub struct ServiceManagerSettings {
    /// Address, user, password, TLS trust.
    pub client: SmConfig,
    pub template: Template,
    pub on_clear: OnClear,
    /// Journal other people's changes to a ticketed alert.
    pub journal_updates: bool,
    /// Longest pause between retries of a failing call.
    pub retry_cap: Duration,
    /// Claim each alert before creating its incident (two instances on separate state).
    pub claim: bool,
    /// Print each ticketed alert, and the incident it got, on standard output in this format
    /// (`ov_to_sm`, like the HPE sample).
    pub report: Option<Output>,
}

pub struct ServiceManager {
    ticketer: Ticketer,
    /// The client, for `-l` and the start-up check (the ticketer has it too).
    client: SmClient,
    /// How long to wait before looking up a create whose outcome is unknown: as long as we
    /// waited for its answer (a slow create gets that long again to land), at most the
    /// retry cap.
    unknown_pause: Duration,
    report: Option<Mutex<Printer<Stdout>>>,
}

impl ServiceManager {
    pub fn new(s: &ServiceManagerSettings, ctx: &SinkContext) -> Result<ServiceManager, SinkError> {
        let sm = SmClient::new(s.client.clone())
            .map_err(|e| SinkError::new("service_manager", failure::USAGE, e.to_string()))?;
        let system = std::sync::Arc::new(SmSystem {
            sm: sm.clone(),
            template: s.template.clone(),
        });
        Ok(ServiceManager {
            client: sm,
            ticketer: Ticketer::for_sink(
                "service_manager",
                system,
                ctx,
                TicketerSettings {
                    on_clear: s.on_clear,
                    journal_updates: s.journal_updates,
                    retry_cap: s.retry_cap,
                    claim: s.claim,
                },
            )?,
            unknown_pause: s.client.timeout.min(s.retry_cap),
            report: s.report.map(|format| {
                let colour = format == Output::Human
                    && crate::telemetry::colour(std::io::IsTerminal::is_terminal(
                        &std::io::stdout(),
                    ));
                Mutex::new(Printer::new(std::io::stdout(), format, colour))
            }),
        })
    }

    /// The client, for `-l` and the start-up check.
    pub fn client(&self) -> &SmClient {
        &self.client
    }
}

/// Proves the Service Manager address and credentials without creating anything: reading an
/// incident that cannot exist answers 404 with good credentials and 401 with bad ones.
pub async fn probe(sm: &SmClient) -> Result<(), SinkError> {
    sm.incident("SCMB-CHECK-PROBE")
        .await
        .map(|_| ())
        .map_err(|e| SinkError::new("service_manager", failure_code(&e), message(&e)))
}

/// The exit code of a Service Manager error: 3 for refused credentials, 5 when unreachable
/// or failing, 7 when it rejected the request.
pub fn failure_code(e: &scmb_servicemanager::SmError) -> u8 {
    use scmb_servicemanager::ErrorClass;
    match e.class() {
        ErrorClass::Unauthorized => failure::AUTH,
        ErrorClass::Retryable => failure::UNREACHABLE,
        ErrorClass::Permanent => failure::API,
    }
}

/// The error's line, with the settings to fix when the credentials were refused.
pub fn message(e: &scmb_servicemanager::SmError) -> String {
    if failure_code(e) == failure::AUTH {
        format!("{e}; set the user with -i/--id (service_manager.user) and the password with $SM_PASSWORD, --sm-password-file or -x (service_manager.password_env/_file/_credential)")
    } else {
        e.to_string()
    }
}

#[async_trait::async_trait]
impl Sink for ServiceManager {
    fn name(&self) -> &'static str {
        "service_manager"
    }

    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        self.ticketer.wants(filter, ev)
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        let (outcome, new) = self.ticketer.handle(ev, self.unknown_pause).await?;
        if let (Some(p), Some((incident, alert))) = (&self.report, new) {
            // The alert as updated (with its note), like the sample prints it: the message
            // around the alert as read after the note (the bytes as they came do not carry it).
            let updated = alert.map(|a| {
                let mut body: serde_json::Map<String, serde_json::Value> = match ev.body() {
                    serde_json::Value::Object(m) => m
                        .iter()
                        .filter(|(k, _)| k.as_str() != "resource")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    _ => serde_json::Map::new(),
                };
                body.insert("resource".into(), a);
                Event::new(
                    ev.routing_key.clone(),
                    ev.category.clone(),
                    ev.change_type,
                    ev.resource_uri.clone(),
                    serde_json::Value::Object(body),
                )
            });
            crate::sinks::format::print_to(p, updated.as_ref().unwrap_or(ev), self.name())?;
            println!(
                "{}: ticketed as {incident}; note written to the alert",
                ev.resource_uri
            );
        }
        Ok(outcome)
    }

    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.ticketer.sink_open_alerts().await
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe(self.client()).await?;
        Ok(format!(
            "{} answered and accepted our user",
            self.client().base_url()
        ))
    }
}
