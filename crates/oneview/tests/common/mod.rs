//! Shared by the test binaries: a REST-only simulated appliance on a free port, with a client
//! configuration that trusts its CA, and calls to its `/sim/` control surface.
#![allow(dead_code)]

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use scmb_oneview::{Client, Config, Credentials, ServerTrust, Session};
use scmb_sim::client::SimClient;
use scmb_sim::{Sim, SimConfig};
use serde_json::Value;

pub const USER: &str = "Administrator";
pub const PASSWORD: &str = "admin123";

pub struct TestSim {
    pub sim: Sim,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub port: u16,
    pub ca: Vec<CertificateDer<'static>>,
    pub ca_pem: String,
    pub ctl: SimClient,
}

pub async fn start(tweak: impl FnOnce(&mut SimConfig)) -> TestSim {
    let mut cfg = SimConfig::new(scmb_sim::testkit::temp_dir("oneview"));
    cfg.broker = false;
    cfg.rest_port = 0;
    cfg.sm_port = None;
    cfg.ov.task_duration = Duration::from_millis(300);
    tweak(&mut cfg);
    let sim = Sim::start(cfg).await.expect("simulator starts");
    let ca_path = sim.info["caCert"].as_str().expect("caCert").to_string();
    let ca_pem = std::fs::read_to_string(&ca_path).expect("ca.pem");
    let ca = scmb_tls::load_certs(std::path::Path::new(&ca_path)).expect("CA certificate");
    let ctl = SimClient::from_ready(&sim.info).expect("control client");
    TestSim {
        host: format!("127.0.0.1:{}", sim.rest_addr.port()),
        port: sim.rest_addr.port(),
        sim,
        ca,
        ca_pem,
        ctl,
    }
}

impl TestSim {
    /// Trusts the simulator's CA, checks the host name, 5 s per request.
    pub fn config(&self) -> Config {
        let mut c = Config::new(self.host.clone(), ServerTrust::Ca(self.ca.clone()));
        c.timeout = Duration::from_secs(5);
        c
    }

    pub async fn session(&self) -> Session {
        Client::connect(self.config())
            .await
            .expect("connect")
            .login(Credentials::new(USER, PASSWORD))
            .await
            .expect("login")
    }

    /// A control call (`/sim/...`); panics on failure.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.ctl
            .call(method, path, body.map(|b| b.to_string().into_bytes()))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Raises an alert with these fields; returns it.
    pub async fn raise(&self, fields: Value) -> Value {
        self.control(reqwest::Method::POST, "/sim/alerts", Some(fields))
            .await
    }

    pub async fn stop(self) {
        self.sim.stop().await;
    }
}
