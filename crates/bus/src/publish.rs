//! A confirmed publisher to an exchange on another broker (the relay sink): AMQP 0-9-1 over
//! TLS (a CA, SASL PLAIN or EXTERNAL with a client certificate) or, only when asked for, plain
//! TCP; the exchange checked passively (or declared) at connect; the channel in confirm mode.
//!
//! [`Publisher::publish`] returns only once the broker confirmed the message (its `basic.ack`):
//! a `basic.nack`, a closed channel or connection, or no confirm in time is an error, and the
//! caller publishes again later (the message may then arrive twice: at-least-once). Like
//! [`crate::subscribe`] it does not reconnect by itself: a [`Publisher`] that is no longer
//! [`Publisher::is_open`] is dropped and the caller connects again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::tls::TlsAdaptor;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use scmb_tls::{NameCheck, ServerTrust};
use tokio::sync::oneshot;

use crate::{classify_at, BusError};

/// How the publisher logs in.
#[derive(Clone)]
pub enum Login {
    /// SASL EXTERNAL: the client certificate's identity (needs [`Tls::client`]).
    External,
    /// SASL PLAIN with a user and password.
    Plain { user: String, password: String },
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::External => f.write_str("External"),
            Login::Plain { user, .. } => write!(f, "Plain {{ user: {user:?}, password: *** }}"),
        }
    }
}

/// TLS to the broker.
#[derive(Debug, Clone)]
pub struct Tls {
    /// What the broker's certificate must chain to.
    pub trust: ServerTrust,
    /// Where the CA came from, for messages (a file, or "the system's CA certificates").
    pub trust_source: PathBuf,
    pub names: NameCheck,
    /// A client certificate and its key to present (PEM files).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub host: String,
    pub port: u16,
    pub vhost: String,
    /// None: plain TCP (only when the configuration says so).
    pub tls: Option<Tls>,
    pub login: Login,
    pub heartbeat: u16,
    pub connect_timeout: Duration,
    pub exchange: String,
    /// Declare the exchange (durable, of this type) instead of only checking that it exists.
    pub declare: Option<String>,
    /// Shown by the broker's management UI for our connection.
    pub connection_name: String,
}

impl PublisherConfig {
    /// `host:port`, as messages name the broker.
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub content_type: &'a str,
    /// The AMQP `message-id` (stable per alert version: a consumer drops repeats by it).
    pub message_id: &'a str,
    /// String headers.
    pub headers: &'a BTreeMap<String, String>,
    /// `delivery_mode` 2 (kept on disk by the broker) when true.
    pub persistent: bool,
}

/// The confirms awaited on one channel, by delivery tag.
#[derive(Default)]
struct Pending {
    /// The tag of the next publish (the broker numbers them from 1 on a channel in confirm
    /// mode).
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<bool>>,
    /// The broker's reply code when it closed the channel (404: no such exchange).
    closed: Option<u16>,
}

impl Pending {
    /// Settles `tag` (and every tag below it with `multiple`): `ok` is the broker's ack.
    fn settle(&mut self, tag: u64, multiple: bool, ok: bool) {
        if multiple {
            let rest = self.waiting.split_off(&(tag.saturating_add(1)));
            for (_, tx) in std::mem::replace(&mut self.waiting, rest) {
                let _ = tx.send(ok);
            }
        } else if let Some(tx) = self.waiting.remove(&tag) {
            let _ = tx.send(ok);
        }
    }
}

type Shared = Arc<Mutex<Pending>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Routes the broker's confirms to the publishes waiting for them.
struct Confirms(Shared);

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::debug!(reason = %close, "the relay broker closed the channel");
        // The waiting publishes learn it at once (their senders are dropped).
        let mut p = lock(&self.0);
        p.waiting.clear();
        p.closed = Some(close.reply_code());
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        lock(&self.0).settle(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        lock(&self.0).settle(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// Why a publish was not confirmed: each may be tried again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (basic.nack)")]
    Nacked,
    #[error("the connection to the broker was lost before its confirm")]
    Lost,
    #[error("no confirm within {} s", .0.as_secs())]
    NoConfirm(Duration),
    #[error("routing key {0:?} is longer than 255 bytes")]
    RouteTooLong(String),
    #[error("cannot publish: {0}")]
    Amqp(String),
}

/// A connection and a channel in confirm mode, the exchange checked.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    pending: Shared,
    /// Serialises publishes so that delivery tags follow the order on the wire.
    order: tokio::sync::Mutex<()>,
    exchange: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange)
            .finish()
    }
}

fn tls_adaptor(cfg: &PublisherConfig, tls: &Tls) -> Result<TlsAdaptor, BusError> {
    let client = match &tls.client {
        None => None,
        Some((cert, key)) => {
            for (what, path) in [("the client certificate", cert), ("the client key", key)] {
                if !path.exists() {
                    return Err(BusError::MissingFile {
                        what,
                        path: path.clone(),
                    });
                }
            }
            let certs = scmb_tls::load_certs(cert)?;
            let key = scmb_tls::load_key(key)?;
            scmb_tls::check_client_pair(&certs, &key)?;
            Some((certs, key))
        }
    };
    let config = scmb_tls::client_config(&tls.trust, &tls.names, client)?;
    scmb_tls::server_name(&cfg.host, &tls.names)?;
    let name = match &tls.names {
        NameCheck::Name(n) => n.clone(),
        _ => cfg.host.clone(),
    };
    Ok(TlsAdaptor::new(
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    ))
}

/// How often a publish waiting for its confirm checks that the connection is still open.
const CHECK_EVERY: Duration = Duration::from_millis(500);

impl Publisher {
    /// Connects, logs in, checks (or declares) the exchange and puts the channel in confirm
    /// mode.
    pub async fn connect(cfg: &PublisherConfig) -> Result<Publisher, BusError> {
        if cfg.exchange.len() > 255 {
            return Err(BusError::RouteTooLong(cfg.exchange.clone()));
        }
        let (user, password, creds) = match &cfg.login {
            Login::External => ("", "", SecurityCredentials::new_external()),
            Login::Plain { user, password } => (
                user.as_str(),
                password.as_str(),
                SecurityCredentials::new_plain(user, password),
            ),
        };
        let mut args = OpenConnectionArguments::new(&cfg.host, cfg.port, user, password);
        args.credentials(creds)
            .virtual_host(&cfg.vhost)
            .heartbeat(cfg.heartbeat)
            .connection_name(&cfg.connection_name);
        if let Some(tls) = &cfg.tls {
            args.tls_adaptor(tls_adaptor(cfg, tls)?);
        }
        let args = args.finish();
        let (name, ca) = match &cfg.tls {
            Some(t) => (
                match &t.names {
                    NameCheck::Name(n) => n.clone(),
                    _ => cfg.host.clone(),
                },
                t.trust_source.clone(),
            ),
            None => (cfg.host.clone(), PathBuf::new()),
        };
        let classify = |detail: String| classify_at(&cfg.host, cfg.port, &name, &ca, detail);
        let conn = match tokio::time::timeout(cfg.connect_timeout, Connection::open(&args)).await {
            Err(_) => {
                return Err(BusError::Unreachable {
                    addr: cfg.broker(),
                    port: cfg.port,
                    detail: format!("no answer within {} s", cfg.connect_timeout.as_secs()),
                })
            }
            Ok(Err(e)) => return Err(classify(e.to_string())),
            Ok(Ok(c)) => c,
        };
        let amqp = |e: amqprs::error::Error| classify(e.to_string());
        let channel = conn.open_channel(None).await.map_err(amqp)?;
        let pending: Shared = Arc::new(Mutex::new(Pending {
            next: 1,
            ..Pending::default()
        }));
        // Registered first: a failed passive declare closes the channel, and the reply code
        // (404) reaches only the callback.
        channel
            .register_callback(Confirms(pending.clone()))
            .await
            .map_err(amqp)?;
        let declare = match &cfg.declare {
            Some(kind) => ExchangeDeclareArguments::new(&cfg.exchange, kind)
                .durable(true)
                .finish(),
            None => ExchangeDeclareArguments::new(&cfg.exchange, "topic")
                .passive(true)
                .finish(),
        };
        if let Err(e) = channel.exchange_declare(declare).await {
            let detail = e.to_string();
            // The close reaches the callback at about the time the error reaches us.
            let mut code = None;
            for _ in 0..20 {
                code = lock(&pending).closed;
                if code.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = conn.clone().close().await;
            if code == Some(404) || detail.contains("NOT_FOUND") {
                return Err(BusError::ExchangeNotFound {
                    exchange: cfg.exchange.clone(),
                    broker: cfg.broker(),
                });
            }
            return Err(classify(detail));
        }
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(amqp)?;
        Ok(Publisher {
            conn,
            channel,
            pending,
            order: tokio::sync::Mutex::new(()),
            exchange: cfg.exchange.clone(),
        })
    }

    /// Whether the connection and the channel are still open.
    pub fn is_open(&self) -> bool {
        self.conn.is_open() && self.channel.is_open()
    }

    /// Publishes `m` and waits for the broker's confirm, at most `confirm_timeout`.
    pub async fn publish(
        &self,
        m: &Message<'_>,
        confirm_timeout: Duration,
    ) -> Result<(), PublishError> {
        if m.routing_key.len() > 255 {
            return Err(PublishError::RouteTooLong(m.routing_key.to_string()));
        }
        let mut headers = FieldTable::new();
        for (k, v) in m.headers {
            if let Ok(name) = k.as_str().try_into() {
                headers.insert(name, FieldValue::from(v.as_str()));
            }
        }
        let mut props = BasicProperties::default();
        props
            .with_content_type(m.content_type)
            .with_message_id(m.message_id)
            .with_delivery_mode(if m.persistent { 2 } else { 1 })
            .with_headers(headers);
        let props = props.finish();
        let args = BasicPublishArguments::new(&self.exchange, m.routing_key);
        let rx = {
            let _order = self.order.lock().await;
            if !self.is_open() {
                return Err(PublishError::Lost);
            }
            let (tx, rx) = oneshot::channel();
            let tag = {
                let mut p = lock(&self.pending);
                let tag = p.next;
                p.next += 1;
                p.waiting.insert(tag, tx);
                tag
            };
            if let Err(e) = self
                .channel
                .basic_publish(props, m.body.to_vec(), args)
                .await
            {
                lock(&self.pending).waiting.remove(&tag);
                return Err(PublishError::Amqp(e.to_string()));
            }
            rx
        };
        let deadline = tokio::time::Instant::now() + confirm_timeout;
        let mut rx = rx;
        loop {
            tokio::select! {
                r = &mut rx => return match r {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(PublishError::Nacked),
                    Err(_) => Err(PublishError::Lost),
                },
                _ = tokio::time::sleep(CHECK_EVERY) => {
                    if !self.is_open() {
                        return Err(PublishError::Lost);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PublishError::NoConfirm(confirm_timeout));
                    }
                }
            }
        }
    }

    /// Closes the channel and the connection.
    pub async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.conn.close().await;
    }
}

/// A path for messages about the system's CA certificates.
pub fn system_trust() -> PathBuf {
    Path::new("the system's CA certificates").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiple_ack_settles_every_tag_up_to_it_and_no_later_one() {
        let mut p = Pending::default();
        let mut rx = Vec::new();
        for tag in 1..=4 {
            let (tx, r) = oneshot::channel();
            p.waiting.insert(tag, tx);
            rx.push(r);
        }
        p.settle(3, true, true);
        assert_eq!(p.waiting.keys().copied().collect::<Vec<_>>(), vec![4]);
        for r in rx.iter_mut().take(3) {
            assert_eq!(r.try_recv(), Ok(true));
        }
        p.settle(4, false, false);
        assert_eq!(rx[3].try_recv(), Ok(false));
        assert!(p.waiting.is_empty());
    }
}
