//! The transports of the syslog sink: one UDP datagram per message (RFC 5426), or a TCP
//! connection carrying octet-counted frames (`LEN SP MSG`, RFC 6587 3.4.1), plain or inside
//! TLS (RFC 5425, TLS 1.2+, rustls). One connection per sink, shared by its lanes under a
//! lock, opened on the first message and again whenever it broke.
//!
//! Before each write the connection is polled once without waiting: a syslog receiver never
//! speaks, so anything readable is its close (or an error), and the sink reconnects instead of
//! writing into a dead socket; a new TLS connection waits a moment for the receiver to refuse
//! our certificate (`SyslogClient::settle`). The client never retries by itself: a failed
//! send is the caller's to retry.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;

use super::{SyslogSettings, Transport};
use crate::failure;

/// The largest UDP payload (IPv4).
const MAX_DATAGRAM: usize = 65_507;

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A setting or a file it names (the CA, the client certificate) is unusable.
    #[error("{message}")]
    Config { code: u8, message: String },
    #[error("{target}: cannot resolve the host: {detail}")]
    Resolve { target: String, detail: String },
    #[error("{target}: cannot connect: {detail}")]
    Connect { target: String, detail: String },
    #[error("{target}: TLS handshake failed: {detail}")]
    Tls { target: String, detail: String },
    #[error("{target}: {what} took longer than {secs} s (syslog.timeout)")]
    Timeout {
        target: String,
        what: &'static str,
        secs: u64,
    },
    #[error("{target}: the connection broke while sending: {detail}")]
    Write { target: String, detail: String },
    #[error("{target}: the message has {len} bytes, more than a UDP datagram carries ({MAX_DATAGRAM}); use transport = \"tcp\" or \"tls\"")]
    TooLarge { target: String, len: usize },
}

impl SendError {
    /// Whether sending it again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::TooLarge { .. } | SendError::Config { .. })
    }

    /// The exit code a command reports for it.
    pub fn failure_code(&self) -> u8 {
        match self {
            SendError::Config { code, .. } => *code,
            SendError::Tls { .. } => failure::TLS,
            SendError::TooLarge { .. } => failure::USAGE,
            _ => failure::UNREACHABLE,
        }
    }
}

/// A byte stream to the receiver: TCP, or TLS over TCP.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// The TLS side of a client: its config, the name checked, and how trust is described.
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    trust: String,
}

/// The client of one syslog receiver.
pub struct SyslogClient {
    transport: Transport,
    host: String,
    port: u16,
    /// `tls://host:port`: in every line, and the only thing logged of the settings.
    target: String,
    timeout: Duration,
    tls: Option<Tls>,
    conn: Mutex<Option<Box<dyn Conn>>>,
    udp: Mutex<Option<UdpSocket>>,
}

fn config(code: u8, message: String) -> SendError {
    SendError::Config { code, message }
}

/// The TLS config of `s`: its CA file or the system's CA certificates, its client
/// certificate, and the name the receiver's certificate must carry.
fn tls(s: &SyslogSettings) -> Result<Tls, SendError> {
    let (roots, trust) = match &s.ca {
        Some(ca) => {
            let certs = scmb_tls::load_certs(ca)
                .map_err(|e| config(failure::CERTS, format!("syslog.ca: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots.add(c).map_err(|e| {
                    config(
                        failure::CERTS,
                        format!(
                            "syslog.ca: {}: not a usable CA certificate: {e}",
                            ca.display()
                        ),
                    )
                })?;
            }
            (
                Arc::new(roots),
                format!("verified against {}", ca.display()),
            )
        }
        None => (
            crate::sinks::http::system_roots()
                .map_err(|e| config(failure::CERTS, format!("syslog: {e}")))?,
            "verified against the system's CA certificates".to_string(),
        ),
    };
    let builder = rustls::ClientConfig::builder_with_provider(scmb_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config(failure::TLS, format!("syslog: TLS: {e}")))?
        .with_root_certificates(roots);
    let (config_, trust) = match &s.client {
        Some((cert, key)) => {
            let certs = scmb_tls::load_certs(cert)
                .map_err(|e| config(failure::CERTS, format!("syslog.client_cert: {e}")))?;
            let key = scmb_tls::load_key(key)
                .map_err(|e| config(failure::CERTS, format!("syslog.client_key: {e}")))?;
            scmb_tls::check_client_pair(&certs, &key)
                .map_err(|e| config(failure::CERTS, format!("syslog.client_cert: {e}")))?;
            let c = builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| config(failure::CERTS, format!("syslog.client_cert: {e}")))?;
            (c, format!("{trust}, client certificate {}", cert.display()))
        }
        None => (builder.with_no_client_auth(), trust),
    };
    let n = s.server_name.clone().unwrap_or_else(|| s.host.clone());
    let name = ServerName::try_from(n.clone()).map_err(|_| {
        config(
            failure::USAGE,
            format!("syslog: {n:?} is not a valid TLS server name: set syslog.server_name"),
        )
    })?;
    Ok(Tls {
        config: Arc::new(config_),
        name,
        trust: format!("{trust}, name {n}"),
    })
}

/// Whether a connection is closed: polled once without waiting (a receiver never speaks, so
/// something readable is its close or an error; stray bytes are dropped).
fn closed(c: &mut dyn Conn) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut buf = [0u8; 512];
    for _ in 0..64 {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut *c).poll_read(&mut cx, &mut rb) {
            Poll::Pending => return false,
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return true,
            Poll::Ready(Ok(())) => continue,
            Poll::Ready(Err(_)) => return true,
        }
    }
    false
}

impl SyslogClient {
    /// Builds the client (reads the TLS files; no I/O on the network).
    pub fn new(s: &SyslogSettings) -> Result<SyslogClient, SendError> {
        let tls = match s.transport {
            Transport::Tls => Some(tls(s)?),
            _ => None,
        };
        let host = if s.host.contains(':') {
            format!("[{}]", s.host)
        } else {
            s.host.clone()
        };
        Ok(SyslogClient {
            transport: s.transport,
            host: s.host.clone(),
            port: s.port,
            target: format!("{}://{host}:{}", s.transport.as_str(), s.port),
            timeout: s.timeout,
            tls,
            conn: Mutex::new(None),
            udp: Mutex::new(None),
        })
    }

    /// `tls://host:port`.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn timeout(&self, what: &'static str) -> SendError {
        SendError::Timeout {
            target: self.target.clone(),
            what,
            secs: self.timeout.as_secs(),
        }
    }

    async fn resolve(&self) -> Result<Vec<std::net::SocketAddr>, SendError> {
        let found = tokio::time::timeout(
            self.timeout,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.timeout("resolving the host"))?
        .map_err(|e| SendError::Resolve {
            target: self.target.clone(),
            detail: e.to_string(),
        })?;
        let addrs: Vec<_> = found.collect();
        if addrs.is_empty() {
            return Err(SendError::Resolve {
                target: self.target.clone(),
                detail: "no address".into(),
            });
        }
        Ok(addrs)
    }

    /// A new connection (TCP, then the TLS handshake).
    async fn connect(&self) -> Result<Box<dyn Conn>, SendError> {
        let mut last = String::new();
        for addr in self.resolve().await? {
            let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Err(_) => return Err(self.timeout("connecting")),
                Ok(Err(e)) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
                Ok(Ok(t)) => t,
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(Box::new(tcp));
            };
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            return match tokio::time::timeout(
                self.timeout,
                connector.connect(tls.name.clone(), tcp),
            )
            .await
            {
                Err(_) => Err(self.timeout("the TLS handshake")),
                Ok(Err(e)) => Err(SendError::Tls {
                    target: self.target.clone(),
                    detail: e.to_string(),
                }),
                Ok(Ok(s)) => {
                    let mut c: Box<dyn Conn> = Box::new(s);
                    self.settle(&mut c).await?;
                    Ok(c)
                }
            };
        }
        Err(SendError::Connect {
            target: self.target.clone(),
            detail: last,
        })
    }

    /// Waits a moment on a new TLS connection for the receiver's verdict on it: TLS 1.3 ends
    /// the client's handshake before the receiver has judged our certificate (or its absence),
    /// and a refusal comes right after as an alert or a close. Without this wait the first
    /// message would be written into a connection about to be refused. Silence is fine: a
    /// receiver never speaks.
    async fn settle(&self, c: &mut Box<dyn Conn>) -> Result<(), SendError> {
        let mut buf = [0u8; 64];
        let wait = self.timeout.min(Duration::from_millis(500));
        match tokio::time::timeout(wait, tokio::io::AsyncReadExt::read(c, &mut buf)).await {
            Err(_) | Ok(Ok(1..)) => Ok(()),
            Ok(Ok(_)) => Err(SendError::Tls {
                target: self.target.clone(),
                detail: "the receiver closed the connection right after the handshake (does it want a client certificate: client_cert, client_key?)".into(),
            }),
            Ok(Err(e)) => Err(SendError::Tls {
                target: self.target.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// Sends one message: for TCP and TLS, written (octet-counted) and flushed on a healthy
    /// connection; for UDP, one datagram handed to the network.
    pub async fn send(&self, msg: &[u8]) -> Result<(), SendError> {
        if self.transport == Transport::Udp {
            return self.send_udp(msg).await;
        }
        let mut frame = Vec::with_capacity(msg.len() + 8);
        frame.extend_from_slice(msg.len().to_string().as_bytes());
        frame.push(b' ');
        frame.extend_from_slice(msg);
        let mut held = self.conn.lock().await;
        let dead = match held.as_deref_mut() {
            Some(c) => closed(c),
            None => false,
        };
        if dead {
            tracing::debug!(target = %self.target, "the syslog receiver closed the connection; reconnecting");
            *held = None;
        }
        let conn = match held.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let mut conn = conn;
        let written = tokio::time::timeout(self.timeout, async {
            conn.write_all(&frame).await?;
            conn.flush().await
        })
        .await;
        match written {
            Err(_) => Err(self.timeout("writing")),
            Ok(Err(e)) => Err(SendError::Write {
                target: self.target.clone(),
                detail: e.to_string(),
            }),
            Ok(Ok(())) => {
                *held = Some(conn);
                Ok(())
            }
        }
    }

    async fn send_udp(&self, msg: &[u8]) -> Result<(), SendError> {
        if msg.len() > MAX_DATAGRAM {
            return Err(SendError::TooLarge {
                target: self.target.clone(),
                len: msg.len(),
            });
        }
        let mut held = self.udp.lock().await;
        let sock = match held.take() {
            Some(s) => s,
            None => self.udp_socket().await?,
        };
        match sock.send(msg).await {
            Ok(_) => {
                *held = Some(sock);
                Ok(())
            }
            // E.g. the ICMP "port unreachable" of an earlier datagram: a new socket next time.
            Err(e) => Err(SendError::Write {
                target: self.target.clone(),
                detail: e.to_string(),
            }),
        }
    }

    async fn udp_socket(&self) -> Result<UdpSocket, SendError> {
        let addr = self.resolve().await?[0];
        let local = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let fail = |e: std::io::Error| SendError::Connect {
            target: self.target.clone(),
            detail: e.to_string(),
        };
        let sock = UdpSocket::bind(local).await.map_err(fail)?;
        sock.connect(addr).await.map_err(fail)?;
        Ok(sock)
    }

    /// Checks the way to the receiver without sending a message: TCP and TLS connect (and
    /// shake hands); UDP has no answer, so only the address and a socket are checked.
    pub async fn probe(&self) -> Result<String, SendError> {
        match self.transport {
            Transport::Udp => {
                let sock = self.udp_socket().await?;
                let peer = sock
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into());
                Ok(format!(
                    "{} resolves to {peer} and a UDP socket opens; UDP has no answer: nothing proves a receiver listens (use tcp or tls for that)",
                    self.target
                ))
            }
            _ => {
                let mut c = self.connect().await?;
                let _ = c.shutdown().await;
                let how = match &self.tls {
                    Some(t) => format!("connected, TLS {}", t.trust),
                    None => "connected (plain TCP)".to_string(),
                };
                Ok(format!(
                    "{} {how}; nothing sent: that it files our messages is not verified without sending one",
                    self.target
                ))
            }
        }
    }
}
