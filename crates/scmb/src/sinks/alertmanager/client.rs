//! Alertmanager's API v2, as far as the sink needs it: `POST /api/v2/alerts` with a JSON
//! array of alerts (`200 OK` is taken; `400` says the alerts are invalid and is final; 5xx,
//! 429 and timeouts are worth sending again, which is harmless: Alertmanager identifies an
//! alert by its label set and merges what it is sent again), `GET /-/ready` and
//! `GET /api/v2/status` for the health check. The client never retries by itself: it
//! classifies (through [`crate::sinks::http`]) and the caller decides.

use reqwest::Method;
use serde_json::Value;

use super::{AlertmanagerSettings, Auth, NAME};
use crate::sinks::http::{HttpClient, HttpError};

/// Where alerts are posted, under the base URL.
pub const ALERTS: &str = "/api/v2/alerts";

/// Said when an Alertmanager (or a proxy before it) refuses our credentials.
const CREDENTIALS_FIX: &str = "check alertmanager.username and its password (password_env, password_file or password_credential), or the bearer token (bearer_token_env, bearer_token_file or bearer_token_credential)";

/// A failed post.
#[derive(Debug, thiserror::Error)]
pub enum AmError {
    /// Anything HTTP: unreachable, a timeout, a refusal (400: invalid alerts), a TLS failure.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A success other than `200 OK` (a proxy's page, say): the alerts may not have arrived.
    #[error("{url} answered HTTP {status} instead of 200 OK: {detail}")]
    Unconfirmed {
        url: String,
        status: u16,
        detail: String,
    },
}

/// The client of one Alertmanager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AmClient {
    http: HttpClient,
    auth: Auth,
}

impl AmClient {
    /// Builds the client for `url` (no I/O); the secret is scrubbed from every answer kept.
    pub fn new(url: &str, s: &AlertmanagerSettings) -> Result<AmClient, HttpError> {
        let secrets = match &s.auth {
            Auth::None => Vec::new(),
            Auth::Basic { password, .. } => vec![password.clone()],
            Auth::Bearer(t) => vec![t.clone()],
        };
        Ok(AmClient {
            http: HttpClient::with_url_key(NAME, "urls", url, &s.http, CREDENTIALS_FIX, secrets)?,
            auth: s.auth.clone(),
        })
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, path);
        match &self.auth {
            Auth::None => r,
            Auth::Basic { user, password } => r.basic_auth(user, Some(password.expose())),
            Auth::Bearer(t) => r.bearer_auth(t.expose()),
        }
    }

    /// Posts `alerts` (a JSON array): `Ok` for `200 OK`.
    pub async fn post(&self, alerts: &Value) -> Result<(), AmError> {
        let body = serde_json::to_vec(alerts).map_err(|e| HttpError::Config {
            sink: NAME,
            message: format!("cannot encode the alerts: {e}"),
        })?;
        let a = self
            .http
            .send(
                self.request(Method::POST, ALERTS)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::ACCEPT, "application/json")
                    .body(body),
            )
            .await?;
        if a.status == 200 {
            return Ok(());
        }
        Err(AmError::Unconfirmed {
            url: self.http.base_url().to_string(),
            status: a.status,
            detail: a.describe(),
        })
    }

    /// `GET /-/ready`: `Ok` when the Alertmanager says it is ready (200).
    pub async fn ready(&self) -> Result<(), HttpError> {
        self.http
            .send(self.request(Method::GET, "/-/ready"))
            .await
            .map(|_| ())
    }

    /// `GET /api/v2/status`: its version and configuration (for `resolve_timeout`).
    pub async fn status(&self) -> Result<Value, HttpError> {
        let a = self
            .http
            .send(self.request(Method::GET, "/api/v2/status"))
            .await?;
        Ok(a.json().unwrap_or(Value::Null))
    }
}
