//! Brings up a whole simulated appliance: PKI, the RabbitMQ node, the publisher, the OneView
//! REST API with its control surface, and (optionally) the Service Manager, ServiceNow and
//! PagerDuty simulators; writes the ready file; stops everything it started.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{BrokerConfig, BrokerHandle};
use crate::bus::Bus;
use crate::control::{self, Control};
use crate::httpsim::{HttpSim, SimState};
use crate::ov::{self, OvConfig, OvState};
use crate::pagerduty::{PdConfig, PdState};
use crate::pki::{BrokerCertNames, Pki};
use crate::serve::{self, SwappableCert};
use crate::servicenow::{SnConfig, SnState};
use crate::sm::{SmConfig, SmState};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(
        "cannot listen on {addr}: {source} (is another simulator running? choose another port)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("the publisher could not connect to the broker within 30 s")]
    Publisher,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything the simulated appliance can be told at start.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub state_dir: PathBuf,
    /// Address the REST API, the SM simulator and the broker listen on (loopback).
    pub bind: IpAddr,
    /// HTTPS port of the REST API (0 = any free port).
    pub rest_port: u16,
    /// AMQPS port of the broker (0 = any free port).
    pub amqps_port: u16,
    /// Start the RabbitMQ node (off: REST only, nothing is published).
    pub broker: bool,
    /// Port of the SM simulator (`None`: not started).
    pub sm_port: Option<u16>,
    /// Serve the SM simulator over HTTPS with the appliance CA.
    pub sm_tls: bool,
    /// Port of the ServiceNow simulator (`None`: not started; 0 = any free port).
    pub servicenow_port: Option<u16>,
    /// Serve the ServiceNow simulator over HTTPS with the appliance CA.
    pub servicenow_tls: bool,
    /// Port of the PagerDuty Events API simulator (`None`: not started; 0 = any free port).
    pub pagerduty_port: Option<u16>,
    /// Serve the PagerDuty simulator over HTTPS with the appliance CA.
    pub pagerduty_tls: bool,
    pub ov: OvConfig,
    pub sm: SmConfig,
    pub servicenow: SnConfig,
    pub pagerduty: PdConfig,
    pub broker_names: BrokerCertNames,
    /// Make the keypair available without `POST /rest/certificates/client/rabbitmq`.
    pub keypair_pregenerated: bool,
}

impl SimConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SimConfig {
            state_dir: state_dir.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rest_port: 8443,
            amqps_port: 5671,
            broker: true,
            sm_port: Some(13080),
            sm_tls: false,
            servicenow_port: None,
            servicenow_tls: false,
            pagerduty_port: None,
            pagerduty_tls: false,
            ov: OvConfig::default(),
            sm: SmConfig::default(),
            servicenow: SnConfig::default(),
            pagerduty: PdConfig::default(),
            broker_names: BrokerCertNames::default(),
            keypair_pregenerated: false,
        }
    }
}

/// A running simulated appliance.
pub struct Sim {
    pub ov: Arc<OvState>,
    pub sm: Option<Arc<SmState>>,
    pub servicenow: Option<Arc<SnState>>,
    pub pagerduty: Option<Arc<PdState>>,
    pub broker: Option<Arc<BrokerHandle>>,
    /// The endpoints (also in `state_dir/ready.json`).
    pub info: Value,
    pub rest_addr: SocketAddr,
    pub sm_addr: Option<SocketAddr>,
    pub servicenow_addr: Option<SocketAddr>,
    pub pagerduty_addr: Option<SocketAddr>,
    pub amqps_port: u16,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    ready_file: PathBuf,
}

fn rest_sans(bind: IpAddr) -> Vec<String> {
    let mut v = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if bind.to_string() != "127.0.0.1" {
        v.push(bind.to_string());
    }
    v
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Listen { addr, source })
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(5671)
}

impl Sim {
    pub async fn start(mut cfg: SimConfig) -> Result<Sim, SimError> {
        // Absolute from here on: the broker runs with the state directory as both HOME and
        // working directory, where a relative path would name a directory that is not there.
        cfg.state_dir = std::path::absolute(&cfg.state_dir).map_err(|source| SimError::Write {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let dir = &cfg.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
            path: dir.clone(),
            source,
        })?;
        let sans = rest_sans(cfg.bind);
        let pki = Pki::load_or_create(&dir.join("pki"), &cfg.broker_names, &sans)?;
        if cfg.keypair_pregenerated {
            pki.set_client_generated(true)?;
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let amqps_port = if cfg.amqps_port == 0 {
            free_port(cfg.bind)
        } else {
            cfg.amqps_port
        };
        let (broker, bus) = if cfg.broker {
            let b = BrokerHandle::start(
                BrokerConfig::new(dir.join("broker"), amqps_port),
                pki.paths.clone(),
            )
            .await?;
            let bus = Bus::start(b.admin_target());
            if !bus.wait_connected(Duration::from_secs(30)).await {
                b.shutdown().await;
                return Err(SimError::Publisher);
            }
            (Some(b), bus)
        } else {
            (None, Bus::disconnected())
        };

        let ov = OvState::new(cfg.ov.clone(), pki.clone(), bus, broker.clone());
        let rest_listener = bind(SocketAddr::new(cfg.bind, cfg.rest_port)).await?;
        let rest_addr = rest_listener
            .local_addr()
            .map_err(|source| SimError::Listen {
                addr: SocketAddr::new(cfg.bind, cfg.rest_port),
                source,
            })?;
        let rest_cert = SwappableCert::load(&pki.paths.rest_cert, &pki.paths.rest_key)
            .map_err(SimError::Tls)?;

        let cert = |tls: bool| tls.then(|| rest_cert.clone());
        let (sm_state, sm_addr) = start_http_sim(
            cfg.sm_port.map(|p| SocketAddr::new(cfg.bind, p)),
            cert(cfg.sm_tls),
            || SmState::new(cfg.sm.clone()),
            &shutdown_rx,
            &mut tasks,
        )
        .await?;
        let (sn_state, sn_addr) = start_http_sim(
            cfg.servicenow_port.map(|p| SocketAddr::new(cfg.bind, p)),
            cert(cfg.servicenow_tls),
            || {
                SnState::new(SnConfig {
                    tls: cfg.servicenow_tls,
                    ..cfg.servicenow.clone()
                })
            },
            &shutdown_rx,
            &mut tasks,
        )
        .await?;
        let (pd_state, pd_addr) = start_http_sim(
            cfg.pagerduty_port.map(|p| SocketAddr::new(cfg.bind, p)),
            cert(cfg.pagerduty_tls),
            || PdState::new(cfg.pagerduty.clone()),
            &shutdown_rx,
            &mut tasks,
        )
        .await?;
        let url = |addr: Option<SocketAddr>, tls: bool| {
            addr.map(|a| format!("{}://{}", if tls { "https" } else { "http" }, host_port(a)))
        };

        let info = json!({
            "restUrl": format!("https://{}", host_port(rest_addr)),
            "amqpsHost": cfg.bind.to_string(),
            "amqpsPort": amqps_port,
            "broker": cfg.broker,
            "smUrl": url(sm_addr, cfg.sm_tls),
            "servicenowUrl": url(sn_addr, cfg.servicenow_tls),
            "pagerdutyUrl": url(pd_addr, cfg.pagerduty_tls),
            "caCert": pki.paths.ca_cert,
            "clientCert": pki.paths.client_cert,
            "clientKey": pki.paths.client_key,
            "restCert": pki.paths.rest_cert,
            "stateDir": dir,
            "apiVersion": cfg.ov.current_version,
            "pid": std::process::id(),
            "brokerPid": match &broker { Some(b) => json!(b.pid().await), None => Value::Null },
        });

        let regen_ov = ov.clone();
        let regen_cert = rest_cert.clone();
        let regen_names = cfg.broker_names.clone();
        let regen_sans = sans.clone();
        let ctl = Arc::new(Control {
            ov: ov.clone(),
            info: info.clone(),
            regenerate: Box::new(move |keep_rest| {
                let ov = regen_ov.clone();
                let cert = regen_cert.clone();
                let names = regen_names.clone();
                let sans = regen_sans.clone();
                Box::pin(async move { regenerate(&ov, &cert, &names, &sans, keep_rest).await })
            }),
        });
        let app = ov::router(ov.clone()).merge(control::router(ctl));
        let tls = serve::tls_config(rest_cert).map_err(SimError::Tls)?;
        tasks.push(tokio::spawn(serve::serve(
            rest_listener,
            Some(tls),
            app,
            shutdown_rx.clone(),
            None,
        )));

        let ready_file = dir.join("ready.json");
        crate::pki::write_atomic(
            &ready_file,
            serde_json::to_string_pretty(&info)
                .unwrap_or_default()
                .as_bytes(),
            0o644,
        )?;
        Ok(Sim {
            ov,
            sm: sm_state,
            servicenow: sn_state,
            pagerduty: pd_state,
            broker,
            info,
            rest_addr,
            sm_addr,
            servicenow_addr: sn_addr,
            pagerduty_addr: pd_addr,
            amqps_port,
            shutdown,
            tasks,
            ready_file,
        })
    }

    /// The one-line ready message printed on stdout.
    pub fn ready_line(&self) -> String {
        let amqps = if self.broker.is_some() {
            format!(
                "{}:{}",
                self.info["amqpsHost"].as_str().unwrap_or(""),
                self.amqps_port
            )
        } else {
            "none".into()
        };
        format!(
            "ov-sim ready: rest={} amqps={} sm={} servicenow={} pagerduty={} state={}",
            self.info["restUrl"].as_str().unwrap_or(""),
            amqps,
            self.info["smUrl"].as_str().unwrap_or("none"),
            self.info["servicenowUrl"].as_str().unwrap_or("none"),
            self.info["pagerdutyUrl"].as_str().unwrap_or("none"),
            self.info["stateDir"].as_str().unwrap_or(""),
        )
    }

    /// Stops the servers and the broker node we started.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
        }
        if let Some(b) = &self.broker {
            b.shutdown().await;
        }
        let _ = std::fs::remove_file(&self.ready_file);
    }
}

/// Starts one HTTP simulator (Service Manager, ServiceNow, PagerDuty) when it has an address:
/// binds it, serves the state `new` makes on it (TLS with `cert` if given) until shutdown, with
/// its outage gate; its state and address.
async fn start_http_sim<D: HttpSim>(
    addr: Option<SocketAddr>,
    cert: Option<Arc<SwappableCert>>,
    new: impl FnOnce() -> Arc<SimState<D>>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(Option<Arc<SimState<D>>>, Option<SocketAddr>), SimError> {
    let Some(addr) = addr else {
        return Ok((None, None));
    };
    let l = bind(addr).await?;
    let local = l
        .local_addr()
        .map_err(|source| SimError::Listen { addr, source })?;
    let tls = cert
        .map(serve::tls_config)
        .transpose()
        .map_err(SimError::Tls)?;
    let st = new();
    tasks.push(tokio::spawn(serve::serve(
        l,
        tls,
        D::router(st.clone()),
        shutdown.clone(),
        Some(st.gate()),
    )));
    Ok((Some(st), Some(local)))
}

fn host_port(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", a.port()),
    }
}

/// New CA, broker, REST and client certificates, then a broker restart: the old client
/// certificate no longer verifies.
async fn regenerate(
    ov: &Arc<OvState>,
    rest_cert: &SwappableCert,
    names: &BrokerCertNames,
    sans: &[String],
    keep_rest: bool,
) -> Result<(), String> {
    let new = ov
        .pki()
        .regenerate(names, sans, keep_rest)
        .map_err(|e| e.to_string())?;
    if !keep_rest {
        rest_cert
            .reload(&new.paths.rest_cert, &new.paths.rest_key)
            .map_err(|e| format!("reloading the REST certificate: {e}"))?;
    }
    *ov.pki.lock().unwrap_or_else(|p| p.into_inner()) = new;
    if let Some(b) = &ov.broker {
        b.restart().await.map_err(|e| e.to_string())?;
        ov.bus.wait_connected(Duration::from_secs(30)).await;
    }
    tracing::info!("certificates regenerated");
    Ok(())
}

/// Reads a ready file written by a running simulator.
pub fn read_ready(state_dir: &Path) -> Result<Value, String> {
    let p = state_dir.join("ready.json");
    let bytes = std::fs::read(&p).map_err(|e| {
        format!(
            "{}: {e} (is the simulator running with --state {}?)",
            p.display(),
            state_dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))
}
