//! The simulated appliance under the benchmark, started in-process on a thread and runtime of
//! its own (its RabbitMQ child is tied to that thread), and the few REST calls the harness
//! makes itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use scmb_sim::bus::BusTarget;
use scmb_sim::client::SimClient;
use scmb_sim::{Sim, SimConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// A running simulator.
pub struct Appliance {
    pub info: Value,
    pub client: SimClient,
    pub amqps_port: u16,
    /// `127.0.0.1:PORT` of the REST API, as `-a` takes it.
    pub rest: String,
    /// `127.0.0.1:PORT` of the Service Manager simulator, as `-sm` takes it.
    pub sm: String,
    /// Base URL (`http://127.0.0.1:PORT`) of the ServiceNow simulator.
    pub servicenow: String,
    /// Base URL (`http://127.0.0.1:PORT`) of the PagerDuty Events API simulator.
    pub pagerduty: String,
    pub pki: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Appliance {
    pub fn start(state_dir: &Path) -> Result<Appliance> {
        let mut cfg = SimConfig::new(state_dir);
        cfg.rest_port = 0;
        cfg.amqps_port = 0;
        cfg.sm_port = Some(0);
        cfg.servicenow_port = Some(0);
        cfg.pagerduty_port = Some(0);
        cfg.keypair_pregenerated = true;
        cfg.ov.eula_pending = false;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ov-sim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("ov-sim-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Sim::start(cfg).await {
                        Ok(sim) => {
                            let _ = ready_tx.send(Ok((sim.info.clone(), sim.amqps_port)));
                            let _ = stop_rx.await;
                            sim.stop().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                        }
                    }
                });
            })
            .context("cannot start the simulator thread")?;
        let (info, amqps_port) = match ready_rx.recv_timeout(Duration::from_secs(180)) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => bail!("the simulated appliance did not start: {e}"),
            Err(_) => bail!("the simulated appliance did not start within 180 s"),
        };
        let client = SimClient::from_ready(&info).map_err(|e| anyhow!("simulator client: {e}"))?;
        let host_port = |k: &str| -> Result<String> {
            let url = info[k]
                .as_str()
                .with_context(|| format!("the simulator reports no {k}"))?;
            Ok(url.split("://").nth(1).unwrap_or(url).to_string())
        };
        let url = |k: &str| -> Result<String> {
            Ok(info[k]
                .as_str()
                .with_context(|| format!("the simulator reports no {k}"))?
                .to_string())
        };
        Ok(Appliance {
            rest: host_port("restUrl")?,
            sm: host_port("smUrl")?,
            servicenow: url("servicenowUrl")?,
            pagerduty: url("pagerdutyUrl")?,
            pki: state_dir.join("pki"),
            client,
            amqps_port,
            info,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops the servers and the RabbitMQ node.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Where the bench itself connects to the broker: as CN `default` or as the admin.
    pub fn bus_target(&self, admin: bool) -> BusTarget {
        let (cert, key) = if admin {
            ("admin.pem", "admin-key.pem")
        } else {
            ("client-default.pem", "client-default-key.pem")
        };
        BusTarget {
            host: "localhost".into(),
            port: self.amqps_port,
            ca: self.pki.join("ca.pem"),
            cert: self.pki.join(cert),
            key: self.pki.join(key),
        }
    }

    /// A `/sim/...` call on the OneView side.
    pub async fn ov_control(&self, method: Method, path: &str, body: Value) -> Result<Value> {
        let body = (!body.is_null()).then(|| body.to_string().into_bytes());
        self.client
            .call(method.clone(), path, body)
            .await
            .map_err(|e| anyhow!("{method} {path} on the simulator: {e}"))
    }

    /// A `/sim/...` call on the Service Manager side.
    pub async fn sm_control(&self, method: Method, path: &str, body: Value) -> Result<Value> {
        let body = (!body.is_null()).then(|| body.to_string().into_bytes());
        self.client
            .call_sm(method.clone(), path, body)
            .await
            .map_err(|e| anyhow!("{method} {path} on the SM simulator: {e}"))
    }

    /// A `/sim/...` call on the ServiceNow side.
    pub async fn servicenow_control(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<Value> {
        let body = (!body.is_null()).then(|| body.to_string().into_bytes());
        self.client
            .call_servicenow(method.clone(), path, body)
            .await
            .map_err(|e| anyhow!("{method} {path} on the ServiceNow simulator: {e}"))
    }

    /// A `/sim/...` call on the PagerDuty side.
    pub async fn pagerduty_control(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<Value> {
        let body = (!body.is_null()).then(|| body.to_string().into_bytes());
        self.client
            .call_pagerduty(method.clone(), path, body)
            .await
            .map_err(|e| anyhow!("{method} {path} on the PagerDuty simulator: {e}"))
    }

    /// Copies the CN `default` client files into a directory laid out as the tools expect:
    /// `caroot.pem`, `client.pem` and `key.pem` (mode 0600).
    pub fn make_cert_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (from, to) in [
            ("ca.pem", "caroot.pem"),
            ("client-default.pem", "client.pem"),
            ("client-default-key.pem", "key.pem"),
        ] {
            let dst = dir.join(to);
            std::fs::copy(self.pki.join(from), &dst)
                .with_context(|| format!("copying {from} to {}", dst.display()))?;
            let mode = if to == "key.pem" { 0o600 } else { 0o644 };
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", dst.display()))?;
        }
        Ok(())
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A logged-in OneView REST session of the harness (the baseline's and the clean-up's).
pub struct OvSession {
    http: reqwest::Client,
    base: String,
    token: String,
    version: String,
}

impl OvSession {
    pub async fn login(app: &Appliance) -> Result<OvSession> {
        let http = app.client.http.clone();
        let base = app.client.rest_url.clone();
        let v: Value = http
            .get(format!("{base}/rest/version"))
            .send()
            .await
            .context("GET /rest/version")?
            .json()
            .await
            .context("GET /rest/version")?;
        let version = v["currentVersion"]
            .as_u64()
            .context("GET /rest/version: no currentVersion")?
            .to_string();
        let r = http
            .post(format!("{base}/rest/login-sessions"))
            .header("X-API-Version", &version)
            .json(
                &json!({"userName": "Administrator", "password": "admin123", "loginMsgAck": true}),
            )
            .send()
            .await
            .context("POST /rest/login-sessions")?;
        let status = r.status();
        let v: Value = r.json().await.context("POST /rest/login-sessions")?;
        let token = v["sessionID"]
            .as_str()
            .with_context(|| format!("login refused ({status}): {v}"))?
            .to_string();
        Ok(OvSession {
            http,
            base,
            token,
            version,
        })
    }

    /// A REST call with the version and session headers; the JSON answer (Null when empty).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-API-Version", &self.version)
            .header("Auth", &self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = r.status();
        let bytes = r
            .bytes()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if !status.is_success() {
            bail!("{method} {path}: {status}: {v}");
        }
        Ok(v)
    }
}
