//! The simulator's publishing side of the message bus: a background task holding one AMQP
//! connection to the broker with the simulator's admin identity (client certificate, SASL
//! EXTERNAL). Handlers hand it messages without waiting; while the broker is down messages are
//! dropped and counted, as they are on a real appliance whose RabbitMQ is restarting (clients
//! need a REST catch-up for exactly that reason).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::BasicPublishArguments;
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::tls::TlsAdaptor;
use amqprs::BasicProperties;
use tokio::sync::{mpsc, watch};

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub exchange: &'static str,
    pub routing_key: String,
    pub body: Vec<u8>,
}

/// Counters of the publisher.
#[derive(Debug, Default)]
pub struct BusStats {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
}

/// Handle to the publisher task. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Bus {
    tx: Option<mpsc::UnboundedSender<Outgoing>>,
    pub stats: Arc<BusStats>,
    connected: watch::Receiver<bool>,
}

/// Where and as whom the publisher connects.
#[derive(Debug, Clone)]
pub struct BusTarget {
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Bus {
    /// A bus that publishes nothing (REST-only simulator).
    pub fn disconnected() -> Bus {
        Bus {
            tx: None,
            stats: Arc::default(),
            connected: watch::channel(false).1,
        }
    }

    /// Starts the publisher task.
    pub fn start(target: BusTarget) -> Bus {
        let (tx, rx) = mpsc::unbounded_channel();
        let (conn_tx, conn_rx) = watch::channel(false);
        let stats: Arc<BusStats> = Arc::default();
        tokio::spawn(run(target, rx, conn_tx, stats.clone()));
        Bus {
            tx: Some(tx),
            stats,
            connected: conn_rx,
        }
    }

    /// Queues a message; never blocks.
    pub fn publish(&self, exchange: &'static str, routing_key: String, body: Vec<u8>) {
        match &self.tx {
            Some(tx) => {
                if tx
                    .send(Outgoing {
                        exchange,
                        routing_key,
                        body,
                    })
                    .is_err()
                {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the publisher is connected (or `timeout` passes).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the publisher has seen its connection drop.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| !*c))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Builds the TLS adaptor for an AMQPS connection with a client certificate. The chain is
/// verified against the simulator's CA but the name is not: the simulator's own connections
/// must work whatever names the broker certificate was issued for (CN-only included).
pub fn tls_adaptor(target: &BusTarget) -> Result<TlsAdaptor, String> {
    Ok(TlsAdaptor::new(
        tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(target)?)),
        target.host.clone(),
    ))
}

/// The TLS client configuration behind [`tls_adaptor`]: the target's client certificate, the
/// chain verified against its CA, the name not checked.
pub fn tls_client_config(target: &BusTarget) -> Result<rustls::ClientConfig, String> {
    let ca = scmb_tls::load_certs(&target.ca).map_err(|e| e.to_string())?;
    let certs = scmb_tls::load_certs(&target.cert).map_err(|e| e.to_string())?;
    let key = scmb_tls::load_key(&target.key).map_err(|e| e.to_string())?;
    scmb_tls::client_config(
        &scmb_tls::ServerTrust::Ca(ca),
        &scmb_tls::NameCheck::Skip,
        Some((certs, key)),
    )
    .map_err(|e| e.to_string())
}

async fn connect(target: &BusTarget) -> Result<(Connection, amqprs::channel::Channel), String> {
    let tls = tls_adaptor(target)?;
    let args = OpenConnectionArguments::new(&target.host, target.port, "", "")
        .credentials(SecurityCredentials::new_external())
        .tls_adaptor(tls)
        .connection_name("ov-sim-publisher")
        .heartbeat(10)
        .finish();
    let conn = tokio::time::timeout(Duration::from_secs(5), Connection::open(&args))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let ch = conn.open_channel(None).await.map_err(|e| e.to_string())?;
    Ok((conn, ch))
}

async fn run(
    target: BusTarget,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    connected: watch::Sender<bool>,
    stats: Arc<BusStats>,
) {
    let mut logged_down = false;
    loop {
        let (conn, ch) = match connect(&target).await {
            Ok(c) => c,
            Err(e) => {
                if !logged_down {
                    tracing::info!(error = %e, "publisher: broker not reachable, retrying");
                    logged_down = true;
                }
                // Whatever was raised while the bus is down is lost, as on an appliance.
                while let Ok(_m) = rx.try_recv() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                if rx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        logged_down = false;
        tracing::info!(host = %target.host, port = target.port, "publisher connected to the broker");
        connected.send_replace(true);
        let props = BasicProperties::default()
            .with_content_type("application/json")
            .with_delivery_mode(1)
            .finish();
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if conn.is_open() && ch.is_open() { continue } else { break }
                }
            };
            let Some(m) = msg else {
                let _ = conn.close().await;
                return;
            };
            let args = BasicPublishArguments::new(m.exchange, &m.routing_key);
            match ch.basic_publish(props.clone(), m.body, args).await {
                Ok(()) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(error = %e, "publisher: connection lost");
                    break;
                }
            }
        }
        connected.send_replace(false);
        let _ = conn.close().await;
    }
}
