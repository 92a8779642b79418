//! The ServiceNow sink: every admitted alert becomes exactly one ServiceNow incident (Table
//! API) whose number is written back into the alert's notes; cleared or deleted alerts
//! resolve or close it. The work, step by step and recorded (store keys `servicenow:<uri>`),
//! is the shared [`crate::sinks::ticketing`]; what is ServiceNow's (the incident's fields, its
//! `correlation_id`, its lifecycle, the note) is in [`incident`]; the Table API, its
//! authentication and its errors are in [`client`]; `[appliance.servicenow]` is [`config`].
//!
//! Exactly once: the incident's `correlation_id` is the alert's stable key
//! (`scmb:<appliance>:<uri>`), looked up before every create but a provable first attempt's
//! (`Ticketer::first_attempt`), so neither a crash between the create and its record, nor a
//! create answered late or badly, nor a wiped store opens a second incident.
//!
//! `mode = "event"` sends Event Management events instead of opening incidents ([`event`]):
//! the same key as the events' `message_key`, over the shared event core
//! ([`crate::sinks::eventing`]); metrics and store records are then labelled
//! `servicenow_event`.

pub mod client;
mod config;
pub mod event;
pub mod incident;

use std::sync::Arc;
use std::time::Duration;

pub use crate::sinks::ticketing::OnClear;
pub use client::{Auth, ClientSettings, SnClient, SnError};
pub use config::{
    instance_url, Correlate, EventConfig, IncidentConfig, ServiceNowConfig, DEFAULT_CLOSE_CODE,
};
pub use event::{probe_events, EventTemplate, ServiceNowEvents, EVENT_NAME, EVENT_NOTE_PREFIX};
pub use incident::{correlation_key, note_for, Template, NOTE_PREFIX};

use scmb_model::{Event, Filter, Peek};

use crate::failure;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::ticketing::{CallClass, Ticketer, TicketerSettings};
use crate::sinks::SinkContext;
use incident::SnSystem;

const NAME: &str = "servicenow";

/// What the sink does: open incidents (Table API), or send Event Management events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One incident per alert (`POST /api/now/table/incident`), resolved on clear.
    #[default]
    Incident,
    /// One event per alert (`POST /api/global/em/jsonv2`), severity 0 on clear.
    Event,
}

/// What the sink needs, from an `[appliance.servicenow]` table.
#[derive(Debug, Clone)]
pub struct ServiceNowSettings {
    /// The instance, the credentials, TLS trust, proxy and timeout.
    pub client: ClientSettings,
    /// Incidents or events; in event mode the incident settings below are their defaults,
    /// unused, but `on_clear` (anything but `none` sends the clear), `note_prefix` and
    /// `retry_cap` apply.
    pub mode: Mode,
    /// What events say (event mode).
    pub event: EventTemplate,
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
    /// One incident per alert or per resource.
    pub correlate: Correlate,
    /// Clear the alerts of incidents people resolved, polling this often; `None`: never.
    pub clear_alerts: Option<Duration>,
}

pub struct ServiceNow {
    ticketer: Ticketer,
    /// The client, for the health check (the ticketer's system has it too).
    client: SnClient,
    /// Whether incidents look CIs up (the health check then reads `cmdb_ci` too).
    cmdb_ci: bool,
    /// Clear the alerts of resolved incidents, polling this often.
    clear_alerts: Option<Duration>,
    /// How long to wait before looking up a create whose outcome is unknown: as long as we
    /// waited for its answer (a slow create gets that long again to land), at most the
    /// retry cap.
    unknown_pause: Duration,
}

impl ServiceNow {
    pub fn new(s: &ServiceNowSettings, ctx: &SinkContext) -> Result<ServiceNow, SinkError> {
        let client = SnClient::new(&s.client)
            .map_err(|e| SinkError::new(NAME, failure::USAGE, e.to_string()))?;
        // The appliance's name keys its alerts' incidents: the config's name under `scmb run`.
        let appliance = ctx
            .label
            .clone()
            .unwrap_or_else(|| ctx.metrics.name().to_string());
        let system = Arc::new(SnSystem::new(
            client.clone(),
            s.template.clone(),
            appliance,
            s.note_prefix.clone(),
            s.close_code.clone(),
            s.close_notes.clone(),
            s.correlate,
        ));
        Ok(ServiceNow {
            client,
            ticketer: Ticketer::for_sink(
                NAME,
                system,
                ctx,
                TicketerSettings {
                    on_clear: s.on_clear,
                    journal_updates: s.journal_updates,
                    retry_cap: s.retry_cap,
                    claim: s.claim,
                },
            )?,
            clear_alerts: s.clear_alerts,
            cmdb_ci: s.template.cmdb_ci,
            unknown_pause: s.client.http.timeout.min(s.retry_cap),
        })
    }
}

/// The sink for the mode the settings say.
pub fn sink(s: &ServiceNowSettings, ctx: &SinkContext) -> Result<Arc<dyn Sink>, SinkError> {
    Ok(match s.mode {
        Mode::Incident => Arc::new(ServiceNow::new(s, ctx)?),
        Mode::Event => Arc::new(ServiceNowEvents::new(s, ctx)?),
    })
}

/// `scmb check`: proves the instance and the credentials for the mode the settings say,
/// changing nothing.
pub async fn check(s: &ServiceNowSettings) -> Result<String, SinkError> {
    let client = SnClient::new(&s.client)
        .map_err(|e| SinkError::new(NAME, failure::USAGE, e.to_string()))?;
    match s.mode {
        Mode::Incident => probe(&client, s.template.cmdb_ci).await,
        Mode::Event => probe_events(&client).await,
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

    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        self.ticketer.wants(filter, ev)
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        Ok(self.ticketer.handle(ev, self.unknown_pause).await?.0)
    }

    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.ticketer.sink_open_alerts().await
    }

    /// With `clear_alerts`, polls for the incidents people resolved and clears their alerts.
    async fn beside(&self) {
        if let Some(every) = self.clear_alerts {
            self.ticketer.clear_resolved_every(every).await;
        }
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe(&self.client, self.cmdb_ci).await
    }
}
