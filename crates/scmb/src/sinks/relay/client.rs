//! The relay's connection to its broker: one [`Publisher`] shared by the lanes, made on first
//! use and made again after a loss with the consumer's backoff ([`crate::pipeline::backoff`])
//! and its idea of what is transient ([`crate::pipeline::transient`]): the lanes that find it
//! down while a connect is due wait for it instead of each dialling the broker.

use std::time::Duration;

use scmb_bus::publish::{Login, Publisher, PublisherConfig, Tls};
use scmb_bus::BusError;
use scmb_tls::{NameCheck, ServerTrust};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Mechanism, RelaySettings};
use crate::failure;

/// Why no publisher is at hand, and when to try again.
#[derive(Debug, Clone)]
pub struct Down {
    pub message: String,
    /// Waiting cannot help without a fix (credentials, a missing exchange, a CA).
    pub permanent: bool,
    pub after: Duration,
}

struct State {
    publisher: Option<std::sync::Arc<Publisher>>,
    /// The delays between failed connects in a row (the consumer's reconnect policy).
    reconnect: crate::retry::Backoff,
    /// No connect before this (after a failure), and the failure.
    not_before: Option<(Instant, Down)>,
}

/// The publisher, connected on demand.
pub struct Client {
    s: RelaySettings,
    state: Mutex<State>,
}

/// The exit code for a connect failure.
pub fn code(e: &BusError) -> u8 {
    match e {
        BusError::Refused { .. } | BusError::CertificateRefused { .. } => failure::AUTH,
        BusError::Unreachable { .. } => failure::UNREACHABLE,
        BusError::UnknownCa { .. }
        | BusError::NameMismatch { .. }
        | BusError::Handshake { .. }
        | BusError::NotTls { .. }
        | BusError::Tls(_) => failure::TLS,
        BusError::MissingFile { .. } | BusError::KeyReadable { .. } => failure::CERTS,
        BusError::ExchangeNotFound { .. } | BusError::RouteTooLong(_) => failure::USAGE,
        _ => failure::UNEXPECTED,
    }
}

/// A connect failure as one line about the relay broker (the consumer's hints about the
/// appliance do not apply to it).
pub fn describe(s: &RelaySettings, e: &BusError) -> String {
    let broker = format!("relay broker {}:{}", s.host, s.port);
    match e {
        BusError::Unreachable { detail, .. } => {
            format!("cannot reach the {broker}: {detail} (is it up, and the port open?)")
        }
        BusError::UnknownCa { detail, .. } => format!(
            "the {broker}'s certificate is not signed by {}: {detail} (set relay.ca to the CA that signed it)",
            s.ca.as_ref()
                .map_or("the system's CA certificates".to_string(), |c| c.display().to_string())
        ),
        BusError::NameMismatch { name, detail } => format!(
            "the {broker}'s certificate does not name {name}: {detail} (set relay.tls_server_name to a name it lists)"
        ),
        BusError::CertificateRefused { detail } => format!(
            "the {broker} refused our client certificate: {detail} (check relay.cert and relay.key)"
        ),
        BusError::NotTls { .. } => format!(
            "the {broker} answered in plain text, not TLS: give its AMQPS port in relay.port (or, for a plain AMQP port, plain_tcp = true)"
        ),
        BusError::Refused { detail } => format!(
            "the {broker} refused the login: {detail} (check relay.username and its password, or the client certificate's user and its permissions on the vhost and exchange)"
        ),
        BusError::ExchangeNotFound { .. } => e.to_string(),
        other => format!("{broker}: {other}"),
    }
}

/// The trust for the broker's certificate: the CA file, else the system's CA certificates.
fn trust(s: &RelaySettings) -> Result<Tls, BusError> {
    let (trust, source) = match &s.ca {
        Some(ca) => (ServerTrust::Ca(scmb_tls::load_certs(ca)?), ca.clone()),
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(BusError::Tls(scmb_tls::TlsError::Config(
                    "no CA certificate found on this system: install ca-certificates or set relay.ca".into(),
                )));
            }
            (
                ServerTrust::Ca(found.certs),
                scmb_bus::publish::system_trust(),
            )
        }
    };
    Ok(Tls {
        trust,
        trust_source: source,
        names: s
            .tls_server_name
            .clone()
            .map_or(NameCheck::Host, NameCheck::Name),
        client: s.client.clone(),
    })
}

/// The publisher's configuration (the password exposed only into it).
pub fn publisher_config(s: &RelaySettings) -> Result<PublisherConfig, BusError> {
    let tls = if s.plain_tcp { None } else { Some(trust(s)?) };
    let login = match (s.mechanism, &s.password) {
        (Mechanism::Plain, Some(p)) => Login::Plain {
            user: s.username.clone(),
            password: p.expose().to_string(),
        },
        _ => Login::External,
    };
    Ok(PublisherConfig {
        host: s.host.clone(),
        port: s.port,
        vhost: s.vhost.clone(),
        tls,
        login,
        heartbeat: s.heartbeat,
        connect_timeout: Duration::from_secs(15),
        exchange: s.exchange.clone(),
        declare: s.declare.clone(),
        connection_name: format!("scmb relay {}", s.appliance),
    })
}

/// Connects once (for `scmb check` and the client).
pub async fn connect(s: &RelaySettings) -> Result<Publisher, BusError> {
    Publisher::connect(&publisher_config(s)?).await
}

impl Client {
    pub fn new(s: &RelaySettings) -> Client {
        Client {
            s: s.clone(),
            state: Mutex::new(State {
                publisher: None,
                reconnect: crate::retry::reconnect(),
                not_before: None,
            }),
        }
    }

    /// The open publisher, connecting when there is none; the failure (and when to try
    /// again) otherwise.
    pub async fn publisher(&self) -> Result<std::sync::Arc<Publisher>, Down> {
        let mut st = self.state.lock().await;
        if let Some(p) = &st.publisher {
            if p.is_open() {
                return Ok(p.clone());
            }
            tracing::warn!(
                host = %self.s.host,
                port = self.s.port,
                "the connection to the relay broker was lost; reconnecting"
            );
            st.publisher = None;
        }
        if let Some((at, down)) = &st.not_before {
            let now = Instant::now();
            if now < *at {
                let mut down = down.clone();
                down.after = *at - now;
                return Err(down);
            }
        }
        match connect(&self.s).await {
            Ok(p) => {
                let p = std::sync::Arc::new(p);
                if st.reconnect.attempt() > 0 {
                    tracing::info!(host = %self.s.host, port = self.s.port, exchange = %self.s.exchange, "reconnected to the relay broker");
                }
                st.reconnect.reset();
                st.not_before = None;
                st.publisher = Some(p.clone());
                Ok(p)
            }
            Err(e) => {
                let permanent = !crate::pipeline::transient(&e);
                let delay = st.reconnect.next_delay();
                let after = if permanent {
                    self.s.retry_cap
                } else {
                    delay.min(self.s.retry_cap)
                };
                let down = Down {
                    message: describe(&self.s, &e),
                    permanent,
                    after,
                };
                st.not_before = Some((Instant::now() + after, down.clone()));
                Err(down)
            }
        }
    }

    /// Forgets a publisher that failed a publish while it still looked open (a confirm that
    /// never came): the next publish connects again.
    pub async fn drop_publisher(&self, p: &std::sync::Arc<Publisher>) {
        let mut st = self.state.lock().await;
        if st
            .publisher
            .as_ref()
            .is_some_and(|q| std::sync::Arc::ptr_eq(p, q))
        {
            st.publisher = None;
        }
    }
}
