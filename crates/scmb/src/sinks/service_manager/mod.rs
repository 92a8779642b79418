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

use crate::sinks::ticketing::{Outcome as Ticketed, Ticketer};
use incident::SmSystem;
use scmb_model::{ChangeType, Event, Filter, Peek};
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
    journal_updates: bool,
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
        let (Some(store), Some(ov)) = (ctx.store.clone(), ctx.session.clone()) else {
            return Err(SinkError::new(
                "service_manager",
                failure::UNEXPECTED,
                "ticketing needs the state store and a REST session",
            ));
        };
        Ok(ServiceManager {
            client: sm.clone(),
            ticketer: Ticketer {
                store,
                system: std::sync::Arc::new(SmSystem {
                    sm,
                    template: s.template.clone(),
                }),
                ov,
                on_clear: s.on_clear,
                journal_updates: s.journal_updates,
                filter: ctx.filter.clone(),
                shutdown: ctx.stop.clone(),
                retry_base: Duration::from_millis(250),
                retry_cap: s.retry_cap,
                metrics: ctx.metrics.clone(),
                claim: s.claim,
                locks: Default::default(),
            },
            journal_updates: s.journal_updates,
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

    /// Admitted alerts, and every clear or deletion (their incidents follow); other updates
    /// when they are journaled.
    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        ev.is_alert()
            && (filter.admits_peek(ev)
                || ev.change_type == ChangeType::Deleted
                || ev.new_state.as_deref() == Some("Cleared")
                || (self.journal_updates && ev.change_type == ChangeType::Updated))
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        let outcome =
            self.ticketer.process(ev).await.map_err(|e| {
                SinkError::new("service_manager", failure::UNEXPECTED, e.to_string())
            })?;
        Ok(match outcome {
            Ticketed::Interrupted => Outcome::Interrupted,
            Ticketed::Retry(after) => Outcome::Retry(after),
            Ticketed::Unknown(reason) => Outcome::Unknown {
                reason,
                after: self.unknown_pause,
            },
            Ticketed::Done(what) => Outcome::Done(what),
            Ticketed::Ticketed { incident, alert } => {
                if let Some(p) = &self.report {
                    // The alert as updated (with its note), like the sample prints it.
                    let mut shown = ev.clone();
                    if let Some(a) = alert {
                        // The bytes as they came do not carry the note: set_body drops them.
                        let mut body = shown.body().clone();
                        body["resource"] = a;
                        shown.set_body(body);
                    }
                    crate::sinks::format::print_to(p, &shown, self.name())?;
                    println!(
                        "{}: ticketed as {incident}; note written to the alert",
                        ev.resource_uri
                    );
                }
                Outcome::Done(format!("ticketed as {incident}"))
            }
        })
    }

    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.ticketer
            .open_alerts()
            .await
            .map_err(|e| SinkError::new("service_manager", failure::UNEXPECTED, e.to_string()))
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe(self.client()).await?;
        Ok(format!(
            "{} answered and accepted our user",
            self.client().base_url()
        ))
    }
}
