//! The webhook sink (`[[appliance.webhook]]`, several per appliance): every admitted event
//! (and, with `lifecycle = true`, the clears and deletions of the alerts the filter admits)
//! POSTed to a URL as JSON, as a CloudEvents 1.0 structured event, or rendered by a template
//! (Microsoft Teams and Slack examples in `examples/`).
//!
//! Each POST carries an id stable per alert version (`Idempotency-Key`, the CloudEvents `id`)
//! so that a receiver can drop a repeat, and, with a secret, an HMAC-SHA256 signature of the
//! body. The delivery stays unacked until the receiver answers 2xx: 5xx, 408, 429 (after its
//! `Retry-After`) and timeouts are retried here with a capped backoff; 401, 403 and 407 pause
//! with one line naming the setting and try again; any other answer fails the event for good
//! (logged, counted in `scmb_sink_incidents_failed_total{sink="webhook:NAME"}`). A stop ends
//! any wait or request in flight at once (the event comes again). What the HTTP client does
//! (trust, proxy, timeout, classification) is [`crate::sinks::http`]'s.
//!
//! Metrics: a webhook's `sink` label is `webhook:NAME` (its name, given or derived from the
//! URL's host), so that several webhooks of an appliance are told apart. Only the URL's
//! scheme and host are ever logged: a webhook URL often is its own secret.
//!
//! What it sent is recorded as the printers' is (an alert, as it is now, is not sent again by
//! a catch-up after a restart); a repeat after a crash carries the same id. With `lifecycle`,
//! it also keeps a store record per alert it announced (`webhook:NAME:<uri>`, Created until
//! its clear or deletion was delivered, then Closed), so that a clear or deletion that
//! happened while scmb was stopped is found after the restart and sent.

mod body;
mod config;

use std::time::Duration;

use reqwest::Method;
use scmb_model::{Event, Filter, Peek};
use scmb_oneview::Secret;
use tokio::sync::watch;

pub use body::{event_id, event_type, id_of, signature, Body};
pub use config::{names, Format, WebhookConfig};

use crate::failure;
use crate::sinks::http::{retry_delay, Decision, HttpClient, HttpError, HttpSettings};
use crate::sinks::lifecycle::Lifecycle;
use crate::sinks::oneview_retry::pause;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::SinkContext;
use crate::telemetry::ApplianceMetrics;

/// The header of the signature when `signature_header` is not set.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Signature-256";
/// The header of the event's id when `idempotency_header` is not set.
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// A webhook's secrets, read: its URL and its HMAC secret.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSecrets {
    pub url: Secret,
    pub hmac: Option<Secret>,
}

/// What the sink needs, from one `[[appliance.webhook]]` table.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Its name (given or derived): `webhook:NAME` labels its metrics.
    pub name: String,
    pub url: Secret,
    pub body: Body,
    pub content_type: String,
    /// Added to every POST.
    pub headers: Vec<(String, String)>,
    /// The HMAC secret and the header carrying the signature.
    pub signature: Option<(Secret, String)>,
    /// The header carrying the event's id, if any.
    pub idempotency_header: Option<String>,
    /// Also send the clears and deletions of admitted alerts.
    pub lifecycle: bool,
    pub http: HttpSettings,
    /// Longest pause between retries, and the pause while the receiver refuses us.
    pub retry_cap: Duration,
    /// The appliance's name and address (the CloudEvents `source`, templates).
    pub appliance: String,
    pub address: String,
}

/// `webhook:NAME`, for the life of the process: a `&'static str` as [`Sink::name`] wants,
/// made once per distinct name (a reload does not make it again).
fn label(name: &str) -> &'static str {
    static LABELS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let want = format!("webhook:{name}");
    let mut labels = LABELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = labels.iter().find(|l| **l == want) {
        return l;
    }
    let l: &'static str = Box::leak(want.into_boxed_str());
    labels.push(l);
    l
}

/// The URL split: its origin (`scheme://host[:port]`, the only part ever shown) and the
/// rest (path and query, maybe secret).
fn split_url(url: &str) -> Result<(String, String), String> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("the URL is not a URL ({e})"))?;
    let origin = u.origin().ascii_serialization();
    let mut rest = u.path().to_string();
    if let Some(q) = u.query() {
        rest.push('?');
        rest.push_str(q);
    }
    Ok((origin, rest))
}

pub struct Webhook {
    s: WebhookSettings,
    label: &'static str,
    client: HttpClient,
    /// Path and query under the client's origin.
    path: String,
    metrics: ApplianceMetrics,
    stop: watch::Receiver<bool>,
    retry_base: Duration,
    /// With `lifecycle`: the clears and deletions wanted, and what is owed.
    lifecycle: Lifecycle,
}

/// The client of one webhook: its label, the client for the URL's origin, and the rest of
/// the URL.
fn endpoint(s: &WebhookSettings) -> Result<(&'static str, HttpClient, String), SinkError> {
    let label = label(&s.name);
    let (origin, path) =
        split_url(s.url.expose()).map_err(|e| SinkError::new(label, failure::USAGE, e))?;
    let mut secrets = vec![s.url.clone()];
    secrets.extend(s.signature.as_ref().map(|(k, _)| k.clone()));
    let client = HttpClient::new(
        label,
        &origin,
        &s.http,
        format!(
            "check the credentials webhook {:?} sends (its headers, e.g. Authorization, or its URL)",
            s.name
        ),
        secrets,
    )
    .map_err(|e| SinkError::new(label, e.failure_code(), e.to_string()))?;
    Ok((label, client, path))
}

/// `text` without `path` (a URL's path, which may be its secret).
fn redact(path: &str, text: String) -> String {
    let path = path.split('?').next().unwrap_or("");
    if path.len() > 1 && text.contains(path) {
        return text.replace(path, "/***");
    }
    text
}

impl Webhook {
    pub fn new(s: &WebhookSettings, ctx: &SinkContext) -> Result<Webhook, SinkError> {
        let (label, client, path) = endpoint(s)?;
        Ok(Webhook {
            s: s.clone(),
            label,
            client,
            path,
            metrics: ctx.metrics.clone(),
            stop: ctx.stop.clone(),
            retry_base: Duration::from_millis(250),
            lifecycle: Lifecycle::new(s.lifecycle, label, ctx),
        })
    }

    /// `text` without the URL's path and query (they may be its secret).
    fn redact(&self, text: String) -> String {
        redact(&self.path, text)
    }

    /// Sends the body once.
    async fn post(&self, id: &str, bytes: &[u8]) -> Result<u16, HttpError> {
        let mut req = self
            .client
            .request(Method::POST, &self.path)
            .header(reqwest::header::CONTENT_TYPE, &self.s.content_type)
            .body(bytes.to_vec());
        for (k, v) in &self.s.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(h) = &self.s.idempotency_header {
            req = req.header(h.as_str(), id);
        }
        if let Some((secret, h)) = &self.s.signature {
            req = req.header(
                h.as_str(),
                body::signature(secret.expose().as_bytes(), bytes),
            );
        }
        self.client.send(req).await.map(|a| a.status)
    }

    /// Whether a stop came.
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

#[async_trait::async_trait]
impl Sink for Webhook {
    fn name(&self) -> &'static str {
        self.label
    }

    /// Admitted events; with `lifecycle`, also the clears and deletions of the alerts the
    /// filter admits (see [`Lifecycle::wants`]).
    fn wants(&self, filter: &Filter, ev: &Peek<'_>) -> bool {
        self.lifecycle.wants(filter, ev)
    }

    /// Recorded as the printers' work is: a catch-up does not send an alert, as it is now,
    /// a second time.
    fn prints(&self) -> bool {
        true
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        let uri = ev.resource_uri.as_str();
        let id = event_id(&self.s.appliance, ev);
        let json = self.s.content_type.contains("json");
        let origin = body::Origin {
            appliance: &self.s.appliance,
            address: &self.s.address,
        };
        let bytes = match body::render(&self.s.body, &origin, ev, json) {
            Ok(b) => b,
            Err(reason) => {
                let reason = format!("webhook {:?}: {reason}", self.s.name);
                self.metrics.sink_incident_failed(self.label, uri, &reason);
                return Ok(Outcome::Failed(reason));
            }
        };
        let mut backoff = crate::retry::Backoff::new(self.retry_base, self.s.retry_cap);
        loop {
            if self.stopping() {
                return Ok(Outcome::Interrupted);
            }
            let mut stop = self.stop.clone();
            let sent = tokio::select! {
                r = self.post(&id, &bytes) => r,
                _ = stop.wait_for(|s| *s) => return Ok(Outcome::Interrupted),
            };
            let e = match sent {
                Ok(status) => {
                    self.metrics
                        .sink_event_delivered(self.label, uri, &id, status);
                    self.lifecycle.delivered(ev).await?;
                    return Ok(Outcome::Done(format!("delivered (HTTP {status})")));
                }
                Err(e) => e,
            };
            let message = self.redact(e.to_string());
            let wait = match e.decision() {
                Decision::Ok | Decision::Fail => {
                    self.metrics.sink_incident_failed(self.label, uri, &message);
                    return Ok(Outcome::Failed(message));
                }
                Decision::Pause => {
                    tracing::error!(
                        alert = uri,
                        sink = self.label,
                        webhook = %self.s.name,
                        error = %message,
                        pause_secs = self.s.retry_cap.as_secs(),
                        "the webhook receiver refused us; pausing (the event is kept)"
                    );
                    self.s.retry_cap
                }
                Decision::Retry { after } => {
                    let d = retry_delay(after, &mut backoff);
                    self.metrics
                        .retry(self.label, "webhook POST", backoff.attempt(), d, &message);
                    d
                }
            };
            if !pause(&self.stop, wait).await {
                return Ok(Outcome::Interrupted);
            }
        }
    }

    /// With `lifecycle`: the alerts announced whose clear or deletion was not sent yet. After
    /// each (re)connect the pipeline reads them over REST and feeds back what it missed.
    async fn open_alerts(&self) -> Result<Vec<String>, SinkError> {
        self.lifecycle.open_alerts().await
    }

    /// A `HEAD` of the URL: any answer but a refused connection, a TLS failure or a proxy's
    /// 407 proves the way there. Nothing is sent, so nothing proves that the receiver takes
    /// our events (credentials, signature, body): only an event can.
    async fn healthcheck(&self) -> Result<String, SinkError> {
        head(self.label, &self.client, &self.path).await
    }
}

/// A `HEAD` of the URL: any answer but a refused connection, a TLS failure or a proxy's 407
/// proves the way there (proxy, TLS, a server at that address). Nothing is sent, so nothing
/// proves that the receiver takes our events (credentials, signature, body): only an event
/// can, and the line says so.
async fn head(label: &'static str, client: &HttpClient, path: &str) -> Result<String, SinkError> {
    let status = match client.send(client.request(Method::HEAD, path)).await {
        Ok(a) => a.status,
        Err(HttpError::Status { answer, .. }) if answer.status != 407 => answer.status,
        Err(e) => {
            return Err(SinkError::new(
                label,
                e.failure_code(),
                redact(path, e.to_string()),
            ))
        }
    };
    Ok(format!(
        "{}/... answered a HEAD (HTTP {status}, {}); not verified without sending an event: that it takes ours (credentials, signature, body)",
        client.base_url(),
        client.trust()
    ))
}

/// The health check of a webhook for `scmb check` (see [`head`]).
pub async fn probe(s: &WebhookSettings) -> Result<String, SinkError> {
    let (label, client, path) = endpoint(s)?;
    head(label, &client, &path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_splits_into_a_shown_origin_and_a_hidden_rest() {
        let (o, r) = split_url("https://hooks.slack.com/services/T0/B0/XYZ").expect("url");
        assert_eq!(o, "https://hooks.slack.com");
        assert_eq!(r, "/services/T0/B0/XYZ");
        let (o, r) =
            split_url("https://x.logic.azure.com:443/workflows/1/invoke?api-version=1&sig=S")
                .expect("url");
        assert_eq!(o, "https://x.logic.azure.com");
        assert_eq!(r, "/workflows/1/invoke?api-version=1&sig=S");
        assert!(label("a") == label("a") && std::ptr::eq(label("a"), label("a")));
        assert_eq!(label("teams"), "webhook:teams");
    }
}
