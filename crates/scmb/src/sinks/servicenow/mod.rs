//! The ServiceNow sink: every admitted alert becomes exactly one ServiceNow incident (Table
//! API) whose number is written back into the alert's notes; cleared or deleted alerts
//! resolve or close it. The work, step by step and recorded (store keys `servicenow:<uri>`),
//! is the shared [`crate::sinks::ticketing`]; what is ServiceNow's (the incident's fields, its
//! `correlation_id`, its lifecycle, the note) is in [`incident`]; the Table API, its
//! authentication and its errors are in [`client`]; `[appliance.servicenow]` is [`config`].
//!
//! Exactly once: the incident's `correlation_id` is the alert's stable key
//! (`scmb:<appliance>:<uri>`), looked up before every create, so neither a crash between the
//! create and its record, nor a create answered late or badly, nor a wiped store opens a
//! second incident.

pub mod client;
mod config;
pub mod incident;

use std::sync::Arc;
use std::time::Duration;

pub use crate::sinks::ticketing::OnClear;
pub use client::{Auth, ClientSettings, SnClient, SnError};
pub use config::{instance_url, IncidentConfig, ServiceNowConfig, DEFAULT_CLOSE_CODE};
pub use incident::{correlation_key, note_for, Template, NOTE_PREFIX};

use scmb_model::{ChangeType, Event, Filter, Peek};

use crate::failure;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::ticketing::{CallClass, Outcome as Ticketed, Ticketer};
use crate::sinks::SinkContext;
use incident::SnSystem;

const NAME: &str = "servicenow";

/// What the sink needs, from an `[appliance.servicenow]` table.
#[derive(Debug, Clone)]
pub struct ServiceNowSettings {
    /// The instance, the credentials, TLS trust, proxy and timeout.
    pub client: ClientSettings,
    pub template: Template,
    pub on_clear: OnClear,
    /// Journal other people's changes to a ticketed alert as work notes.
    pub journal_updates: bool,
    /// Longest pause between retries of a failing call.
    pub retry_cap: Duration,
    /// Claim each alert before creating its incident (two instances on separate state).
    pub claim: bool,
    /// The note's text before the number.
    pub note_prefix: String,
    pub close_code: String,
    /// `None`: the line saying what happened to the alert.
    pub close_notes: Option<String>,
}

pub struct ServiceNow {
    ticketer: Ticketer,
    /// The client, for the health check (the ticketer's system has it too).
    client: SnClient,
    /// Whether incidents look CIs up (the health check then reads `cmdb_ci` too).
    cmdb_ci: bool,
    journal_updates: bool,
    /// How long to wait before looking up a create whose outcome is unknown: as long as we
    /// waited for its answer (a slow create gets that long again to land), at most the
    /// retry cap.
    unknown_pause: Duration,
}

impl ServiceNow {
    pub fn new(s: &ServiceNowSettings, ctx: &SinkContext) -> Result<ServiceNow, SinkError> {
        let client = SnClient::new(&s.client)
            .map_err(|e| SinkError::new(NAME, failure::USAGE, e.to_string()))?;
        let (Some(store), Some(ov)) = (ctx.store.clone(), ctx.session.clone()) else {
            return Err(SinkError::new(
                NAME,
                failure::UNEXPECTED,
                "ticketing needs the state store and a REST session",
            ));
        };
        // The appliance's name keys its alerts' incidents: the config's name under `scmb run`.
        let appliance = ctx
            .label
            .clone()
            .unwrap_or_else(|| ctx.metrics.name().to_string());
        Ok(ServiceNow {
            client: client.clone(),
            ticketer: Ticketer {
                store,
                system: Arc::new(SnSystem::new(
                    client,
                    s.template.clone(),
                    appliance,
                    s.note_prefix.clone(),
                    s.close_code.clone(),
                    s.close_notes.clone(),
                )),
                ov,
                on_clear: s.on_clear,
                journal_updates: s.journal_updates,
                filter: ctx.filter.clone(),
                shutdown: ctx.stop.clone(),
                retry_base: Duration::from_millis(250),
                retry_cap: s.retry_cap,
                metrics: ctx.metrics.clone(),
                claim: s.claim,
            },
            cmdb_ci: s.template.cmdb_ci,
            journal_updates: s.journal_updates,
            unknown_pause: s.client.http.timeout.min(s.retry_cap),
        })
    }
}

/// The exit code of a ServiceNow failure, from [`SnError::call_error`]: 2 for settings that
/// cannot work (a redirect: the instance's address), 3 for refused credentials, 5 when
/// unreachable or failing, 6 for an untrusted certificate, 7 when it refused the request.
pub fn failure_code(e: &SnError) -> u8 {
    if matches!(e, SnError::Config(_)) {
        return failure::USAGE;
    }
    match e.call_error().class {
        // A pause is refused credentials, unless the transport knows better (a certificate,
        // a redirect).
        CallClass::Unauthorized => match e.http().map(|h| h.failure_code()) {
            Some(c @ (failure::TLS | failure::USAGE)) => c,
            _ => failure::AUTH,
        },
        CallClass::Retryable { .. } => failure::UNREACHABLE,
        CallClass::Permanent => failure::API,
    }
}

/// Proves the instance's address and our credentials without changing anything: one
/// incident's sys_id is read (after getting a token, with OAuth), and one CI's when incidents
/// look CIs up. Good credentials answer 200, bad ones 401.
pub async fn probe(client: &SnClient, cmdb_ci: bool) -> Result<String, SinkError> {
    let fail = |e: SnError| {
        let code = failure_code(&e);
        let mut message = e.to_string();
        if code == failure::AUTH {
            message.push_str("; check servicenow.user and password_* (Basic), or client_id and client_secret_* (OAuth), and the account's roles (itil); for ov_to_sm: --sn-user and $SCMB_SN_PASSWORD or --sn-password-file, or --sn-client-id and $SCMB_SN_CLIENT_SECRET or --sn-client-secret-file");
        }
        SinkError::new(NAME, code, message)
    };
    client.probe("incident").await.map_err(fail)?;
    if cmdb_ci {
        client.probe("cmdb_ci").await.map_err(fail)?;
    }
    Ok(format!(
        "{} answered and accepted {}{}",
        client.base_url(),
        client.who(),
        if cmdb_ci {
            " (incidents and cmdb_ci readable)"
        } else {
            ""
        }
    ))
}

#[async_trait::async_trait]
impl Sink for ServiceNow {
    fn name(&self) -> &'static str {
        NAME
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
        let outcome = self
            .ticketer
            .process(ev)
            .await
            .map_err(|e| SinkError::new(NAME, failure::UNEXPECTED, e.to_string()))?;
        Ok(match outcome {
            Ticketed::Interrupted => Outcome::Interrupted,
            Ticketed::Retry(after) => Outcome::Retry(after),
            Ticketed::Unknown(reason) => Outcome::Unknown {
                reason,
                after: self.unknown_pause,
            },
            Ticketed::Done(what) => Outcome::Done(what),
            Ticketed::Ticketed { incident, .. } => Outcome::Done(format!("ticketed as {incident}")),
        })
    }

    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.ticketer
            .open_alerts()
            .await
            .map_err(|e| SinkError::new(NAME, failure::UNEXPECTED, e.to_string()))
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe(&self.client, self.cmdb_ci).await
    }
}
