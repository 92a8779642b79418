//! A small HTTP client for the simulator's control surface and REST API, trusting the
//! appliance CA from the ready file. Used by the `ov-sim` subcommands and by tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// A JSON body to send, if any.
type Body = Option<Vec<u8>>;

/// The JSON answer, or the error message.
type Answer = Result<Value, String>;

/// The HTTP simulators a [`SimClient`] calls besides the OneView side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Sm,
    ServiceNow,
    PagerDuty,
}

/// Builds a reqwest client that trusts only the PEM CA at `ca` (or nothing extra when `None`).
pub fn http_client(ca: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(c.map_err(|e| scmb_tls::pem_reason(&e))?)
                .map_err(|e| e.to_string())?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())
}

/// A client of a running simulator found through its ready file.
#[derive(Clone, Debug)]
pub struct SimClient {
    pub http: reqwest::Client,
    pub rest_url: String,
    pub sm_url: Option<String>,
    pub servicenow_url: Option<String>,
    pub pagerduty_url: Option<String>,
}

impl SimClient {
    pub fn from_ready(ready: &Value) -> Result<SimClient, String> {
        let ca = ready["caCert"].as_str().ok_or("ready file has no caCert")?;
        Ok(SimClient {
            http: http_client(Some(Path::new(ca)))?,
            rest_url: ready["restUrl"]
                .as_str()
                .ok_or("ready file has no restUrl")?
                .to_string(),
            sm_url: ready["smUrl"].as_str().map(str::to_string),
            servicenow_url: ready["servicenowUrl"].as_str().map(str::to_string),
            pagerduty_url: ready["pagerdutyUrl"].as_str().map(str::to_string),
        })
    }

    /// Calls the OneView side (REST port) and returns the JSON answer, or the error message.
    pub async fn call(&self, method: Method, path: &str, body: Body) -> Answer {
        self.send(&self.rest_url, method, path, body).await
    }

    /// Calls one of the HTTP simulators (their `/sim/...` control routes need no auth).
    pub async fn call_service(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Body,
    ) -> Answer {
        let (url, name) = match service {
            Service::Sm => (&self.sm_url, "Service Manager"),
            Service::ServiceNow => (&self.servicenow_url, "ServiceNow"),
            Service::PagerDuty => (&self.pagerduty_url, "PagerDuty"),
        };
        let base = url
            .as_deref()
            .ok_or_else(|| format!("this simulator runs without {name}"))?;
        self.send(base, method, path, body).await
    }

    /// Calls the Service Manager simulator.
    pub async fn call_sm(&self, method: Method, path: &str, body: Body) -> Answer {
        self.call_service(Service::Sm, method, path, body).await
    }

    /// Calls the ServiceNow simulator.
    pub async fn call_servicenow(&self, method: Method, path: &str, body: Body) -> Answer {
        self.call_service(Service::ServiceNow, method, path, body)
            .await
    }

    /// Calls the PagerDuty simulator.
    pub async fn call_pagerduty(&self, method: Method, path: &str, body: Body) -> Answer {
        self.call_service(Service::PagerDuty, method, path, body)
            .await
    }

    async fn send(&self, base: &str, method: Method, path: &str, body: Body) -> Answer {
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| format!("{base}{path}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!(
                "{status}: {}",
                v.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            ))
        }
    }
}
