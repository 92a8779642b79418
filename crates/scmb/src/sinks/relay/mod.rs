//! The AMQP relay sink (`[appliance.relay]`): every admitted event published to an exchange
//! on an enterprise RabbitMQ, the scale-out path (many consumers behind one queue of your
//! own, instead of each one holding a certificate for the appliance).
//!
//! Each message is persistent (`delivery_mode` 2) and published on a channel in confirm mode:
//! the sink answers [`Outcome::Done`], and so the pipeline acks the appliance's delivery, only
//! after the broker's `basic.ack` of that publish. A `basic.nack`, a lost connection or no
//! confirm within `confirm_timeout` publishes it again after a backoff (the delivery stays
//! unacked meanwhile). So delivery is at-least-once: a message whose confirm was lost (a broker
//! restart between taking it and confirming it) is published a second time, with the same
//! `message-id` (stable per alert version, as the webhook's `Idempotency-Key`), which a
//! consumer drops repeats by. The pipeline itself never relays an alert, as it is now, twice
//! (the printers' record: a catch-up or a redelivery does not publish it again once done).
//!
//! Routing key: the SCMB one as it came (`scmb.alerts.Created./rest/alerts/7`), after
//! `routing_key_prefix` when set. Body: the message's JSON bytes as they came off the
//! appliance's bus; an event a REST catch-up built has none and is serialised from its JSON.
//! Headers: `x-scmb-appliance` (the appliance's name), `x-scmb-address`,
//! `x-scmb-resource-uri`, `x-scmb-change-type`, `x-scmb-category`, `x-scmb-severity` (alerts),
//! plus `headers` from the table.
//!
//! The connection (TLS with a CA, SASL PLAIN or EXTERNAL; plain TCP only with `plain_tcp =
//! true`, warned about at every start) is [`client`]'s, the AMQP is `scmb_bus::publish`'s.
//! Ordering: one alert's events run one after another in the pipeline's lanes, and each is
//! confirmed before the next of that alert is published, so they reach the exchange in order.
//!
//! Metrics: `scmb_sink_events_delivered_total{sink="relay"}` (confirmed publishes),
//! `scmb_retries_total{target="relay"}` (nacks, losses, failed connects),
//! `scmb_sink_latency_seconds{sink="relay"}`.

mod client;
mod config;

use std::collections::BTreeMap;
use std::time::Duration;

use scmb_bus::publish::{Message, PublishError};
use scmb_model::Event;
use scmb_oneview::Secret;
use tokio::sync::watch;

pub use client::{connect, describe};
pub use config::{RelayConfig, MAX_CONCURRENCY, OWN_HEADERS};

use crate::sinks::oneview_retry::pause;
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::webhook::event_id;
use crate::sinks::SinkContext;
use crate::telemetry::ApplianceMetrics;

/// The sink's name: its table, its metrics label.
pub const NAME: &str = "relay";

/// How the relay logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// SASL PLAIN: a user and password.
    Plain,
    /// SASL EXTERNAL: the client certificate's identity.
    External,
}

/// What the sink needs, from `[appliance.relay]` (see [`RelayConfig`] for each field).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub exchange: String,
    /// Declare the exchange, of this type; none: check that it exists.
    pub declare: Option<String>,
    /// Before the SCMB routing key ("" for none).
    pub prefix: String,
    pub mechanism: Mechanism,
    pub username: String,
    pub password: Option<Secret>,
    pub ca: Option<std::path::PathBuf>,
    pub tls_server_name: Option<String>,
    /// The client certificate and key.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub plain_tcp: bool,
    /// Added to every message.
    pub headers: BTreeMap<String, String>,
    pub confirm_timeout: Duration,
    pub retry_cap: Duration,
    /// AMQP heartbeat, seconds.
    pub heartbeat: u16,
    /// The appliance's name and address (headers, the message id).
    pub appliance: String,
    pub address: String,
}

impl RelaySettings {
    /// `amqps://host:port/vhost` (no credentials), for lines.
    pub fn url(&self) -> String {
        format!(
            "{}://{}:{}{}{}",
            if self.plain_tcp { "amqp" } else { "amqps" },
            self.host,
            self.port,
            if self.vhost.starts_with('/') { "" } else { "/" },
            self.vhost
        )
    }

    /// Warns, loudly, that events and the password travel in clear.
    fn warn_plain(&self) {
        if self.plain_tcp {
            tracing::warn!(
                broker = %self.url(),
                "relay.plain_tcp = true: events and the relay password travel UNENCRYPTED to the relay broker; use TLS (remove plain_tcp) outside a test or this host"
            );
        }
    }
}

pub struct Relay {
    s: RelaySettings,
    client: client::Client,
    metrics: ApplianceMetrics,
    stop: watch::Receiver<bool>,
    retry_base: Duration,
}

impl Relay {
    pub fn new(s: &RelaySettings, ctx: &SinkContext) -> Result<Relay, SinkError> {
        s.warn_plain();
        Ok(Relay {
            s: s.clone(),
            client: client::Client::new(s),
            metrics: ctx.metrics.clone(),
            stop: ctx.stop.clone(),
            retry_base: Duration::from_millis(250),
        })
    }

    /// The message's headers.
    fn headers(&self, ev: &Event) -> BTreeMap<String, String> {
        let mut h = self.s.headers.clone();
        let peek = ev.peek();
        let own = [
            ("x-scmb-appliance", Some(self.s.appliance.as_str())),
            ("x-scmb-address", Some(self.s.address.as_str())),
            ("x-scmb-resource-uri", Some(ev.resource_uri.as_str())),
            ("x-scmb-change-type", Some(ev.change_type.as_str())),
            ("x-scmb-category", Some(ev.category.as_str())),
            ("x-scmb-severity", peek.severity.as_deref()),
        ];
        for (k, v) in own {
            if let Some(v) = v {
                h.insert(k.to_string(), v.to_string());
            }
        }
        h
    }
}

/// The body: the bytes as they came off the bus, else the event's JSON.
fn body(ev: &Event) -> Vec<u8> {
    match &ev.raw {
        Some(raw) => raw.clone(),
        None => serde_json::to_vec(ev.body()).unwrap_or_default(),
    }
}

#[async_trait::async_trait]
impl Sink for Relay {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Recorded as the printers' work is: a catch-up does not relay an alert, as it is now,
    /// a second time.
    fn prints(&self) -> bool {
        true
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        let uri = ev.resource_uri.as_str();
        let id = event_id(&self.s.appliance, ev);
        let routing_key = format!("{}{}", self.s.prefix, ev.routing_key);
        let bytes = body(ev);
        let headers = self.headers(ev);
        let message = Message {
            routing_key: &routing_key,
            body: &bytes,
            content_type: "application/json",
            message_id: &id,
            headers: &headers,
            persistent: true,
        };
        let mut backoff = crate::retry::Backoff::new(self.retry_base, self.s.retry_cap);
        loop {
            if *self.stop.borrow() {
                return Ok(Outcome::Interrupted);
            }
            let mut stop = self.stop.clone();
            let publisher = tokio::select! {
                p = self.client.publisher() => p,
                _ = stop.wait_for(|s| *s) => return Ok(Outcome::Interrupted),
            };
            let (wait, error) = match publisher {
                Err(down) => {
                    if down.permanent {
                        tracing::error!(
                            alert = uri,
                            sink = NAME,
                            error = %down.message,
                            pause_secs = down.after.as_secs(),
                            "the relay broker cannot be used; pausing (the event is kept)"
                        );
                    }
                    (down.after, down.message)
                }
                Ok(p) => {
                    // Published and confirmed, or not: the delivery is acked only after the
                    // broker's confirm (a stop while waiting leaves it unacked, to come again).
                    let sent = tokio::select! {
                        r = p.publish(&message, self.s.confirm_timeout) => r,
                        _ = stop.wait_for(|s| *s) => return Ok(Outcome::Interrupted),
                    };
                    match sent {
                        Ok(()) => {
                            self.metrics.sink_event_published(NAME, uri, &id);
                            return Ok(Outcome::Done(format!(
                                "published to {} (confirmed)",
                                self.s.exchange
                            )));
                        }
                        Err(PublishError::RouteTooLong(k)) => {
                            let reason = format!(
                                "relay: routing key {k:?} is longer than 255 bytes (shorten relay.routing_key_prefix)"
                            );
                            self.metrics.sink_incident_failed(NAME, uri, &reason);
                            return Ok(Outcome::Failed(reason));
                        }
                        Err(e) => {
                            if matches!(e, PublishError::NoConfirm(_)) {
                                self.client.drop_publisher(&p).await;
                            }
                            (backoff.next_delay(), e.to_string())
                        }
                    }
                }
            };
            self.metrics.retry(
                NAME,
                "relay publish",
                backoff.attempt().max(1),
                wait,
                &error,
            );
            if !pause(&self.stop, wait).await {
                return Ok(Outcome::Interrupted);
            }
        }
    }

    /// Connects, logs in and checks (or declares) the exchange; publishes nothing.
    async fn healthcheck(&self) -> Result<String, SinkError> {
        probe(&self.s).await
    }
}

/// The health check of the relay for `scmb check`: connect, log in, check the exchange.
pub async fn probe(s: &RelaySettings) -> Result<String, SinkError> {
    s.warn_plain();
    match connect(s).await {
        Ok(p) => {
            p.close().await;
            Ok(format!(
                "{} accepted the login and exchange {:?} {}; nothing published",
                s.url(),
                s.exchange,
                if s.declare.is_some() {
                    "is declared"
                } else {
                    "exists"
                }
            ))
        }
        Err(e) => Err(SinkError::new(NAME, client::code(&e), describe(s, &e))),
    }
}
