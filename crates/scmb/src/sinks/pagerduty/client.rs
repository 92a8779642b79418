//! PagerDuty's Events API v2: `POST {url}/v2/enqueue` with a `trigger` or `resolve` event.
//! `202 Accepted` is success (PagerDuty answers `{"status":"success","dedup_key":…}`); `400`
//! carries `{"status":"invalid event","message":…,"errors":[…]}` and is final; 429 and 5xx are
//! worth sending again, which the dedup key makes safe (a trigger for an open incident adds
//! to it, a resolve of a resolved one is dropped). The client never retries by itself: it
//! classifies (through [`crate::sinks::http`]) and the caller decides.

use scmb_oneview::Secret;
use serde_json::Value;

use super::{PagerDutySettings, NAME};
use crate::sinks::http::{Decision, HttpClient, HttpError};

/// The Events API of PagerDuty's US service region (EU accounts use
/// `https://events.eu.pagerduty.com`).
pub const DEFAULT_URL: &str = "https://events.pagerduty.com";

/// Where events are posted, under the base URL.
pub const ENQUEUE: &str = "/v2/enqueue";

/// Said when PagerDuty (or something before it) refuses our credentials.
const CREDENTIALS_FIX: &str = "check the routing keys (pagerduty.routing_key, routing_key_env, routing_key_file or routing_key_credential, and pagerduty.routing_keys)";

/// An event PagerDuty took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The dedup key it answered with (ours), when the answer said.
    pub dedup_key: Option<String>,
}

/// A failed event.
#[derive(Debug, thiserror::Error)]
pub enum PdError {
    /// PagerDuty answered with its own error body: what it said, and its `errors`.
    #[error(
        "PagerDuty answered HTTP {status}: {message}{}{}",
        if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) },
        source.fix().map(|f| format!("; {f}")).unwrap_or_default()
    )]
    Refused {
        status: u16,
        message: String,
        errors: Vec<String>,
        #[source]
        source: HttpError,
    },
    /// Anything else: unreachable, a timeout, a proxy's page, a TLS failure.
    #[error(transparent)]
    Http(HttpError),
    /// A success other than `202 Accepted` (a proxy's page answered `200`, say): the event
    /// may or may not have reached PagerDuty.
    #[error("PagerDuty answered HTTP {status} instead of 202 Accepted: {detail}")]
    Unconfirmed { status: u16, detail: String },
}

impl PdError {
    /// What to do about it: [`crate::sinks::http::classify`]'s rule for the HTTP part; an
    /// unconfirmed event is sent again (its dedup key makes that safe).
    pub fn decision(&self) -> Decision {
        match self {
            PdError::Refused { source, .. } | PdError::Http(source) => source.decision(),
            PdError::Unconfirmed { .. } => Decision::Retry { after: None },
        }
    }

    /// Whether PagerDuty may have taken the event although this came back.
    pub fn may_have_acted(&self) -> bool {
        match self {
            PdError::Refused { source, .. } | PdError::Http(source) => source.may_have_acted(),
            PdError::Unconfirmed { .. } => true,
        }
    }
}

/// The Events API client of one sink. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventsClient {
    http: HttpClient,
}

impl EventsClient {
    /// Builds the client (no I/O); the routing keys are scrubbed from every answer kept.
    pub fn new(s: &PagerDutySettings) -> Result<EventsClient, HttpError> {
        let secrets = s.keys.all().into_iter().map(|(_, k)| k.clone()).collect();
        Ok(EventsClient {
            http: HttpClient::new(NAME, &s.url, &s.http, CREDENTIALS_FIX, secrets)?,
        })
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Sends one event (`event` without its `routing_key`, which is added here and nowhere
    /// kept): [`Accepted`] for `202`.
    pub async fn enqueue(&self, routing_key: &Secret, event: &Value) -> Result<Accepted, PdError> {
        let mut body = event.clone();
        body["routing_key"] = Value::String(routing_key.expose().to_string());
        match self.http.post_json(ENQUEUE, &body).await {
            Ok(a) if a.status == 202 => Ok(Accepted {
                dedup_key: a.json().and_then(|v| {
                    v.get("dedup_key")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                }),
            }),
            Ok(a) => Err(PdError::Unconfirmed {
                status: a.status,
                detail: a.describe(),
            }),
            Err(e) => {
                let said = e.answer().and_then(|a| a.json()).and_then(|v| {
                    let message = v.get("message").and_then(Value::as_str)?.to_string();
                    let errors = v
                        .get("errors")
                        .and_then(Value::as_array)
                        .map(|l| {
                            l.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    Some((message, errors))
                });
                Err(match (said, e.status()) {
                    (Some((message, errors)), Some(status)) => PdError::Refused {
                        status,
                        message,
                        errors,
                        source: e,
                    },
                    _ => PdError::Http(e),
                })
            }
        }
    }

    /// `GET {url}/`: any answer proves the way there (proxy, TLS); nothing is created.
    pub async fn probe(&self) -> Result<u16, HttpError> {
        self.http.probe("/").await
    }
}
