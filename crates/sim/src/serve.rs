//! Serving an axum `Router` on an already-bound listener, over plain HTTP or TLS, until a
//! shutdown signal. An optional [`OutageGate`] closes the listening socket for a while (clients
//! then get "connection refused", as from a service that is really down) and cuts the
//! connections that were open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Takes a service down for a while: while `until` is in the future the listener is closed and
/// existing connections are dropped.
#[derive(Debug)]
pub struct OutageGate {
    until: watch::Sender<Option<Instant>>,
}

impl Default for OutageGate {
    fn default() -> Self {
        OutageGate {
            until: watch::channel(None).0,
        }
    }
}

impl OutageGate {
    pub fn start(&self, duration: Duration) {
        self.until.send_replace(Some(Instant::now() + duration));
    }
    pub fn end(&self) {
        self.until.send_replace(None);
    }
    fn current(&self) -> Option<Instant> {
        (*self.until.borrow()).filter(|t| *t > Instant::now())
    }
}

fn load_certified_key(
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&read(cert_pem)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", cert_pem.display(), scmb_tls::pem_reason(&e)))?;
    let key = rustls::pki_types::PrivateKeyDer::pem_slice_iter(&read(key_pem)?)
        .next()
        .ok_or_else(|| format!("{}: no private key", key_pem.display()))?
        .map_err(|e| format!("{}: {}", key_pem.display(), scmb_tls::pem_reason(&e)))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", key_pem.display()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, signing)))
}

/// A server certificate that can be replaced while the server runs (the simulator regenerates
/// its PKI on request).
#[derive(Debug)]
pub struct SwappableCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl SwappableCert {
    pub fn load(
        cert_pem: &std::path::Path,
        key_pem: &std::path::Path,
    ) -> Result<Arc<Self>, String> {
        Ok(Arc::new(SwappableCert(std::sync::RwLock::new(
            load_certified_key(cert_pem, key_pem)?,
        ))))
    }

    pub fn reload(
        &self,
        cert_pem: &std::path::Path,
        key_pem: &std::path::Path,
    ) -> Result<(), String> {
        let k = load_certified_key(cert_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = k;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for SwappableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A rustls server config (TLS 1.2+, HTTP/1.1) serving `cert`.
pub fn tls_config(cert: Arc<SwappableCert>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    gate: Option<Arc<OutageGate>>,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut listener = Some(listener);
    let mut gate_rx = gate.as_ref().map(|g| g.until.subscribe());
    let (cut_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Some(until) = gate.as_ref().and_then(|g| g.current()) {
            if listener.take().is_some() {
                tracing::info!(
                    addr = addr.map(tracing::field::display),
                    "outage: listener closed"
                );
                let _ = cut_tx.send(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = async { if let Some(rx) = gate_rx.as_mut() { let _ = rx.changed().await; } } => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if listener.is_none() {
            let Some(a) = addr else { return };
            match TcpListener::bind(a).await {
                Ok(l) => {
                    tracing::info!(addr = %a, "outage over: listening again");
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "cannot listen again, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        let accepted = tokio::select! {
            r = l.accept() => r,
            _ = shutdown.changed() => continue,
            _ = async { match gate_rx.as_mut() { Some(rx) => { let _ = rx.changed().await; } None => std::future::pending().await } } => continue,
        };
        let (stream, _peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let mut cut = cut_tx.subscribe();
        tokio::spawn(async move {
            let svc = TowerToHyperService::new(app);
            let conn = async {
                match acceptor {
                    Some(acc) => match acc.accept(stream).await {
                        Ok(tls) => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        }
                        Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                    },
                    None => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                }
            };
            tokio::select! {
                _ = conn => {}
                _ = cut.recv() => {}
            }
        });
    }
}
