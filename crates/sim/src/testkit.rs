//! Helpers for tests that drive the simulated appliance: a shared simulator (one RabbitMQ boot
//! per test binary, state isolated by fresh queues and alert ids), and a minimal AMQPS consumer
//! authenticating as the appliance's read-only CN `default` client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use amqprs::channel::{
    BasicConsumeArguments, Channel, ConsumerMessage, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::bus::BusTarget;
use crate::client::SimClient;
use crate::httpsim::{HttpSim, SimState};
use crate::pagerduty::{PdConfig, PdState};
use crate::servicenow::{SnConfig, SnState};
use crate::{Sim, SimConfig};

/// What tests need to know about a running simulator.
#[derive(Debug, Clone)]
pub struct SimInfo {
    pub ready: Value,
    pub state_dir: PathBuf,
    pub amqps_port: u16,
    pub rest_url: String,
    pub sm_url: Option<String>,
}

impl SimInfo {
    pub fn client(&self) -> SimClient {
        SimClient::from_ready(&self.ready).expect("ready file")
    }
    /// Base URL of the ServiceNow simulator, when it runs.
    pub fn servicenow_url(&self) -> Option<String> {
        self.ready["servicenowUrl"].as_str().map(str::to_string)
    }
    /// Base URL of the PagerDuty Events API simulator, when it runs.
    pub fn pagerduty_url(&self) -> Option<String> {
        self.ready["pagerdutyUrl"].as_str().map(str::to_string)
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
    /// Where the CN `default` client connects with the files on disk now.
    pub fn default_target(&self) -> BusTarget {
        let p = self.pki_dir();
        BusTarget {
            host: "localhost".into(),
            port: self.amqps_port,
            ca: p.join("ca.pem"),
            cert: p.join("client-default.pem"),
            key: p.join("client-default-key.pem"),
        }
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "scmb-test-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Starts a simulator on a thread of its own that lives as long as the test process (the
/// RabbitMQ child gets SIGTERM from the kernel when the process ends).
pub fn start_in_background(cfg: SimConfig) -> SimInfo {
    let (info, stopper) = start_stoppable(cfg);
    // Never stopped: the sender lives on, so the simulator's thread waits forever.
    std::mem::forget(stopper);
    info
}

/// Stops a simulator started by [`start_stoppable`].
pub struct Stopper {
    stop: std::sync::mpsc::Sender<()>,
    stopped: std::sync::mpsc::Receiver<()>,
}

impl Stopper {
    /// Stops the simulator (REST, broker, Service Manager) and waits until it is down.
    pub fn stop(&self) {
        let _ = self.stop.send(());
        self.stopped
            .recv_timeout(Duration::from_secs(60))
            .expect("simulator stopped");
    }
}

/// Starts a simulator on a thread of its own, which the test can stop (an appliance that
/// goes away entirely); dropping the [`Stopper`] stops it too.
pub fn start_stoppable(cfg: SimConfig) -> (SimInfo, Stopper) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    let state_dir = cfg.state_dir.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            match Sim::start(cfg).await {
                Ok(sim) => {
                    let _ = tx.send(Ok((sim.info.clone(), sim.amqps_port)));
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    sim.stop().await;
                    let _ = stopped_tx.send(());
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (ready, amqps_port) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("simulator start timed out")
        .unwrap_or_else(|e| panic!("simulator did not start: {e}"));
    let info = SimInfo {
        rest_url: ready["restUrl"].as_str().unwrap_or_default().to_string(),
        sm_url: ready["smUrl"].as_str().map(str::to_string),
        ready,
        state_dir,
        amqps_port,
    };
    (info, Stopper { stop, stopped })
}

/// A full simulated appliance for tests: every port chosen by the kernel, the client keypair
/// already generated, the EULA already accepted, state in a fresh directory named after `name`.
pub fn test_config(name: &str) -> SimConfig {
    let mut cfg = SimConfig::new(temp_dir(name));
    cfg.rest_port = 0;
    cfg.amqps_port = 0;
    cfg.sm_port = Some(0);
    cfg.servicenow_port = Some(0);
    cfg.pagerduty_port = Some(0);
    cfg.keypair_pregenerated = true;
    cfg.ov.eula_pending = false;
    cfg
}

/// A config that starts only the ticketing simulators (ServiceNow and PagerDuty, any free
/// ports): no broker, and the OneView REST API on any free port.
pub fn ticketing_config(name: &str) -> SimConfig {
    let mut cfg = SimConfig::new(temp_dir(name));
    cfg.rest_port = 0;
    cfg.broker = false;
    cfg.sm_port = None;
    cfg.servicenow_port = Some(0);
    cfg.pagerduty_port = Some(0);
    cfg
}

/// One simulator served alone on 127.0.0.1 (any free port) in the current async runtime, for
/// tests that need no appliance; stopped when dropped.
pub struct Served<S> {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    pub state: Arc<S>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for Served<S> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// One HTTP simulator served alone (see [`Served`]).
pub async fn serve<D: HttpSim>(state: Arc<SimState<D>>) -> Served<SimState<D>> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", l.local_addr().expect("local address"));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let app = D::router(state.clone());
    let task = tokio::spawn(crate::serve::serve(l, None, app, rx, Some(state.gate())));
    Served {
        url,
        state,
        stop,
        task,
    }
}

/// The ServiceNow simulator alone (see [`Served`]).
pub async fn serve_servicenow(cfg: SnConfig) -> Served<SnState> {
    serve(SnState::new(cfg)).await
}

/// The PagerDuty Events API simulator alone (see [`Served`]).
pub async fn serve_pagerduty(cfg: PdConfig) -> Served<PdState> {
    serve(PdState::new(cfg)).await
}

/// A webhook receiver alone (see [`Served`]).
pub async fn serve_webhook() -> Served<crate::webhook::WebhookState> {
    serve(crate::webhook::WebhookState::new(
        crate::webhook::WebhookConfig::default(),
    ))
    .await
}

/// One full simulated appliance shared by every test of a test binary.
pub fn shared_sim() -> &'static SimInfo {
    static SIM: OnceLock<SimInfo> = OnceLock::new();
    SIM.get_or_init(|| start_in_background(test_config("shared")))
}

/// A consumer of the SCMB with a server-named, exclusive, auto-delete queue.
pub struct TestConsumer {
    pub conn: Connection,
    pub channel: Channel,
    pub queue: String,
    rx: Option<mpsc::UnboundedReceiver<ConsumerMessage>>,
}

/// Opens an AMQPS connection with a client certificate and SASL EXTERNAL.
pub async fn open(target: &BusTarget) -> Result<(Connection, Channel), String> {
    let tls = crate::bus::tls_adaptor(target)?;
    let args = OpenConnectionArguments::new(&target.host, target.port, "", "")
        .credentials(SecurityCredentials::new_external())
        .tls_adaptor(tls)
        .finish();
    let conn = tokio::time::timeout(Duration::from_secs(10), Connection::open(&args))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let ch = conn.open_channel(None).await.map_err(|e| e.to_string())?;
    Ok((conn, ch))
}

impl TestConsumer {
    /// Connects as CN `default`, declares a server-named queue and binds it to `exchange` with
    /// every routing key in `routes`.
    pub async fn bind(target: &BusTarget, exchange: &str, routes: &[&str]) -> Result<Self, String> {
        let (conn, channel) = open(target).await?;
        let (queue, _, _) = channel
            .queue_declare(QueueDeclareArguments::exclusive_server_named())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no queue name")?;
        for r in routes {
            channel
                .queue_bind(QueueBindArguments::new(&queue, exchange, r))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(TestConsumer {
            conn,
            channel,
            queue,
            rx: None,
        })
    }

    /// The next message (routing key, body), or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        if self.rx.is_none() {
            let args = BasicConsumeArguments::new(&self.queue, "")
                .manual_ack(false)
                .finish();
            let (_, rx) = self.channel.basic_consume_rx(args).await.ok()?;
            self.rx = Some(rx);
        }
        let rx = self.rx.as_mut()?;
        let msg = tokio::time::timeout(timeout, rx.recv()).await.ok()??;
        let key = msg.deliver.as_ref()?.routing_key().to_string();
        Some((key, msg.content.unwrap_or_default()))
    }

    /// The next message whose routing key ends with `suffix` (others are skipped).
    pub async fn next_for(&mut self, suffix: &str, timeout: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (k, body) = self.next(left).await?;
            if k.ends_with(suffix) {
                return Some((k, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            }
        }
    }
}

/// Reads a PEM file into a string (panics with the path in tests).
pub fn read_pem(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Records why the broker closed a channel (reply code and text), e.g. 403 ACCESS_REFUSED.
#[derive(Clone, Default)]
pub struct CloseRecorder(pub Arc<std::sync::Mutex<Vec<(u16, String)>>>);

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for CloseRecorder {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: amqprs::CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        if let Ok(mut v) = self.0.lock() {
            v.push((close.reply_code(), close.reply_text().clone()));
        }
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: amqprs::Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: amqprs::Ack) {}
    async fn publish_nack(&mut self, _: &Channel, _: amqprs::Nack) {}
    async fn publish_return(
        &mut self,
        _: &Channel,
        _: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
    }
}

impl CloseRecorder {
    /// Waits until the broker has closed the channel; returns the reply code and text.
    pub async fn wait(&self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.0.lock().ok().and_then(|v| v.first().cloned()) {
                return Some(c);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
