//! The State-Change Message Bus consumer: AMQP 0-9-1 over TLS with the appliance's client
//! certificate and SASL EXTERNAL, a server-named exclusive auto-delete queue bound to `scmb`
//! with the user's routes, a bounded prefetch, heartbeats, and deliveries that carry their own
//! acker so that the caller acks only once the work is done.
//!
//! Only this crate knows AMQP. It does not decode bodies (that is `scmb-model`) and it does not
//! reconnect by itself: a closed [`Subscription`] returns `None` and the caller decides.
//!
//! [`publish`] is the other direction (the relay sink): a confirmed publisher to an exchange
//! on another broker.

pub mod publish;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicNackArguments, BasicQosArguments, Channel,
    ConsumerMessage, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::tls::TlsAdaptor;
use scmb_tls::{NameCheck, ServerTrust};
use tokio::sync::mpsc;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub host: String,
    pub port: u16,
    /// The appliance CA (verifies the broker's certificate).
    pub ca: PathBuf,
    /// The client certificate and its key (PKCS#1 as the appliance hands it out).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: NameCheck,
    /// AMQP heartbeat interval in seconds (0 = off, not recommended).
    pub heartbeat: u16,
    /// How many unacked deliveries the broker may send ahead.
    pub prefetch: u16,
    pub exchange: String,
    /// Binding keys, e.g. `scmb.alerts.#`.
    pub routes: Vec<String>,
    pub connect_timeout: Duration,
    /// Consume this existing queue (declared and bound by someone else, e.g. a durable
    /// `amq.gen-…` queue that outlives us) instead of declaring a server-named exclusive one.
    pub queue: Option<String>,
}

impl BusConfig {
    pub fn new(host: &str, cert_dir: &Path) -> Self {
        BusConfig {
            host: host.to_string(),
            port: 5671,
            ca: cert_dir.join("caroot.pem"),
            cert: cert_dir.join("client.pem"),
            key: cert_dir.join("key.pem"),
            names: NameCheck::Host,
            heartbeat: 10,
            prefetch: 1000,
            exchange: "scmb".into(),
            routes: vec!["scmb.alerts.#".into()],
            connect_timeout: Duration::from_secs(15),
            queue: None,
        }
    }
}

/// What went wrong, each with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("{what} not found at {path}: download the certificates first (`scmb -a HOST -g` then `scmb -a HOST -d`, or `scmb setup`)")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("the client key {path} is readable by group or others (mode {mode:03o}): run `chmod 600 {path}`")]
    KeyReadable { path: PathBuf, mode: u32 },
    #[error(transparent)]
    Tls(#[from] scmb_tls::TlsError),
    #[error("cannot reach the message bus at {addr}: {detail} (is the appliance up and port {port} open?)")]
    Unreachable {
        addr: String,
        port: u16,
        detail: String,
    },
    #[error("the broker's certificate is not signed by the appliance CA in {ca}: {detail} (download the CA again with `scmb -d`)")]
    UnknownCa { ca: PathBuf, detail: String },
    #[error("the broker's certificate does not name {name}: {detail} (use --tls-server-name NAME with a name it lists, or --no-verify-hostname to check the chain only)")]
    NameMismatch { name: String, detail: String },
    #[error("the broker refused our client certificate: {detail} (the appliance may have regenerated its certificates: run `scmb -d` again)")]
    CertificateRefused { detail: String },
    #[error("TLS handshake with the message bus failed: {detail}")]
    Handshake { detail: String },
    #[error("{addr} answered in plain text, not TLS (a plain AMQP or HTTP port?): give the appliance's AMQPS port with --amqp-port (5671 by default)")]
    NotTls { addr: String },
    #[error("the broker refused: {detail}")]
    Refused { detail: String },
    #[error("routing key {0:?} is longer than 255 bytes")]
    RouteTooLong(String),
    #[error("exchange {exchange:?} not found on broker {broker}: create it or set declare = true")]
    ExchangeNotFound { exchange: String, broker: String },
    #[error("AMQP error: {0}")]
    Amqp(String),
}

fn classify(cfg: &BusConfig, detail: String) -> BusError {
    let name = match &cfg.names {
        NameCheck::Name(n) => n.clone(),
        _ => cfg.host.clone(),
    };
    classify_at(&cfg.host, cfg.port, &name, &cfg.ca, detail)
}

/// Sorts a connection failure to `host:port` (whose certificate must name `name`, signed by
/// the CA in `ca`) into what to do about it.
fn classify_at(host: &str, port: u16, name: &str, ca: &Path, detail: String) -> BusError {
    let d = detail.to_ascii_lowercase();
    let addr = format!("{host}:{port}");
    if d.contains("connection refused")
        || d.contains("timed out")
        || d.contains("no route")
        || d.contains("failed to lookup")
        || d.contains("name or service not known")
        || d.contains("network unreachable")
    {
        BusError::Unreachable { addr, port, detail }
    } else if d.contains("invalidcontenttype") || d.contains("corrupt message") {
        BusError::NotTls { addr }
    } else if d.contains("notvalidforname") || d.contains("not valid for name") {
        BusError::NameMismatch {
            name: name.to_string(),
            detail,
        }
    } else if d.contains("unknownissuer")
        || d.contains("unknown issuer")
        || d.contains("badsignature")
        || d.contains("invalid peer certificate")
    {
        BusError::UnknownCa {
            ca: ca.to_path_buf(),
            detail,
        }
    } else if d.contains("unknownca")
        || d.contains("unknown_ca")
        || d.contains("badcertificate")
        || d.contains("bad_certificate")
        || d.contains("certificaterequired")
        || d.contains("certificateunknown")
        || d.contains("decrypterror")
        || d.contains("received fatal alert")
    {
        BusError::CertificateRefused { detail }
    } else if d.contains("access_refused") || d.contains("403") || d.contains("auth") {
        BusError::Refused { detail }
    } else if d.contains("tls") || d.contains("handshake") || d.contains("certificate") {
        BusError::Handshake { detail }
    } else if d.contains("connection reset")
        || d.contains("unexpected eof")
        || d.contains("broken pipe")
    {
        // The broker closes the socket when it rejects the client certificate after the
        // handshake (TLS 1.3 reports the alert late).
        BusError::CertificateRefused { detail }
    } else {
        BusError::Amqp(detail)
    }
}

fn tls_adaptor(cfg: &BusConfig) -> Result<TlsAdaptor, BusError> {
    for (what, path) in [
        ("the appliance CA certificate", &cfg.ca),
        ("the client certificate", &cfg.cert),
        ("the client key", &cfg.key),
    ] {
        if !path.exists() {
            return Err(BusError::MissingFile {
                what,
                path: path.clone(),
            });
        }
    }
    // A private key others can read is refused, as ssh refuses one.
    if let Ok(meta) = std::fs::metadata(&cfg.key) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(BusError::KeyReadable {
                path: cfg.key.clone(),
                mode,
            });
        }
    }
    let ca = scmb_tls::load_certs(&cfg.ca)?;
    let certs = scmb_tls::load_certs(&cfg.cert)?;
    let key = scmb_tls::load_key(&cfg.key)?;
    scmb_tls::check_client_pair(&certs, &key)?;
    let tls = scmb_tls::client_config(&ServerTrust::Ca(ca), &cfg.names, Some((certs, key)))?;
    let name = match &cfg.names {
        NameCheck::Name(n) => n.clone(),
        _ => cfg.host.clone(),
    };
    // Validate the name now for a clear error (amqprs would fail later with less context).
    scmb_tls::server_name(&cfg.host, &cfg.names)?;
    Ok(TlsAdaptor::new(
        tokio_rustls::TlsConnector::from(Arc::new(tls)),
        name,
    ))
}

/// One delivery, acked or rejected by the caller once its work is done.
pub struct Delivery {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub delivery_tag: u64,
    pub redelivered: bool,
    channel: Channel,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("routing_key", &self.routing_key)
            .field("delivery_tag", &self.delivery_tag)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Delivery {
    /// Acknowledges this delivery (the broker forgets it).
    pub async fn ack(&self) -> Result<(), BusError> {
        self.channel
            .basic_ack(BasicAckArguments::new(self.delivery_tag, false))
            .await
            .map_err(|e| BusError::Amqp(e.to_string()))
    }
    /// Rejects it for good (malformed: redelivery would not help).
    pub async fn reject(&self) -> Result<(), BusError> {
        self.channel
            .basic_nack(BasicNackArguments::new(self.delivery_tag, false, false))
            .await
            .map_err(|e| BusError::Amqp(e.to_string()))
    }
    /// Gives it back to the broker for redelivery (work could not be done now).
    pub async fn requeue(&self) -> Result<(), BusError> {
        self.channel
            .basic_nack(BasicNackArguments::new(self.delivery_tag, false, true))
            .await
            .map_err(|e| BusError::Amqp(e.to_string()))
    }
}

/// How often a subscription waiting for deliveries checks that its connection is open.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A bound, consuming queue. Exists only after a successful connect, declare, bind and consume.
pub struct Subscription {
    conn: Connection,
    channel: Channel,
    pub queue: String,
    rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    /// When [`Subscription::next`] next checks that the connection is still open: one timer
    /// for the subscription, not one per wait for a delivery.
    check: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("queue", &self.queue)
            .finish()
    }
}

/// Connects, declares a server-named exclusive auto-delete queue, binds every route and starts
/// consuming with manual acks and a bounded prefetch.
pub async fn subscribe(cfg: &BusConfig) -> Result<Subscription, BusError> {
    for r in &cfg.routes {
        if r.len() > 255 {
            return Err(BusError::RouteTooLong(r.clone()));
        }
    }
    if cfg.exchange.len() > 255 {
        return Err(BusError::RouteTooLong(cfg.exchange.clone()));
    }
    let tls = tls_adaptor(cfg)?;
    let args = OpenConnectionArguments::new(&cfg.host, cfg.port, "", "")
        .credentials(SecurityCredentials::new_external())
        .tls_adaptor(tls)
        .heartbeat(cfg.heartbeat)
        .connection_name("scmb")
        .finish();
    let conn = match tokio::time::timeout(cfg.connect_timeout, Connection::open(&args)).await {
        Err(_) => {
            return Err(BusError::Unreachable {
                addr: format!("{}:{}", cfg.host, cfg.port),
                port: cfg.port,
                detail: format!("no answer within {} s", cfg.connect_timeout.as_secs()),
            })
        }
        Ok(Err(e)) => return Err(classify(cfg, e.to_string())),
        Ok(Ok(c)) => c,
    };
    let amqp = |e: amqprs::error::Error| classify(cfg, e.to_string());
    let channel = conn.open_channel(None).await.map_err(amqp)?;
    channel
        .basic_qos(BasicQosArguments::new(0, cfg.prefetch, false))
        .await
        .map_err(amqp)?;
    let queue = match &cfg.queue {
        Some(q) => q.clone(),
        None => {
            let declare = QueueDeclareArguments::new("")
                .exclusive(true)
                .auto_delete(true)
                .durable(false)
                .finish();
            let (queue, _, _) = channel
                .queue_declare(declare)
                .await
                .map_err(amqp)?
                .ok_or_else(|| BusError::Amqp("the broker did not name the queue".into()))?;
            for r in &cfg.routes {
                channel
                    .queue_bind(QueueBindArguments::new(&queue, &cfg.exchange, r))
                    .await
                    .map_err(amqp)?;
            }
            queue
        }
    };
    let consume = BasicConsumeArguments::new(&queue, "")
        .manual_ack(true)
        .exclusive(cfg.queue.is_none())
        .finish();
    let (_, rx) = channel.basic_consume_rx(consume).await.map_err(amqp)?;
    tracing::info!(host = %cfg.host, port = cfg.port, queue = %queue, routes = %cfg.routes.join(","), "subscribed to the message bus");
    Ok(Subscription {
        conn,
        channel,
        queue,
        rx,
        check: Box::pin(tokio::time::sleep(CHECK_EVERY)),
    })
}

impl Subscription {
    fn delivery(&self, m: ConsumerMessage) -> Option<Delivery> {
        let deliver = m.deliver?;
        Some(Delivery {
            routing_key: deliver.routing_key().to_string(),
            body: m.content.unwrap_or_default(),
            delivery_tag: deliver.delivery_tag(),
            redelivered: deliver.redelivered(),
            channel: self.channel.clone(),
        })
    }

    /// A delivery already received, without waiting: `None` when there is none right now.
    pub fn try_next(&mut self) -> Option<Delivery> {
        while let Ok(m) = self.rx.try_recv() {
            if let Some(d) = self.delivery(m) {
                return Some(d);
            }
        }
        None
    }

    /// The next delivery, or `None` once the connection or channel is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(d) = self.try_next() {
            return Some(d);
        }
        loop {
            tokio::select! {
                m = self.rx.recv() => {
                    if let Some(d) = self.delivery(m?) {
                        return Some(d);
                    }
                }
                _ = self.check.as_mut() => {
                    self.check.as_mut().reset(tokio::time::Instant::now() + CHECK_EVERY);
                    if !self.conn.is_open() || !self.channel.is_open() {
                        return None;
                    }
                }
            }
        }
    }

    /// Acks every delivery up to and including `tag` in one frame (AMQP `multiple`). Only for
    /// a consumer that finishes its deliveries in order: each one's work must be done.
    pub async fn ack_through(&self, tag: u64) -> Result<(), BusError> {
        self.channel
            .basic_ack(BasicAckArguments::new(tag, true))
            .await
            .map_err(|e| BusError::Amqp(e.to_string()))
    }

    pub fn is_open(&self) -> bool {
        self.conn.is_open() && self.channel.is_open()
    }

    /// Closes the channel and the connection (the server-named queue goes with them).
    pub async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.conn.close().await;
    }
}
