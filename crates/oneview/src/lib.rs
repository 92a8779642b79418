//! `scmb-oneview`: the HPE OneView REST client scmb uses (SPEC §1) — API version negotiation,
//! EULA, login sessions that re-login on expiry, the appliance CA and the message-bus client
//! keypair (both API generations), tasks, and alerts (list with filters and paging, get, notes
//! written back with the current eTag).
//!
//! Liberal in what it accepts (unknown fields, nulls, both forms of old and new APIs, absolute
//! or relative task locations), strict in what it sends; every request has a timeout and every
//! failure is a [`OneViewError`] that says what to do. Passwords, session ids and private keys
//! never appear in `Debug` output, logs or error messages.
//!
//! Module map: [`config`] where and how to connect; [`client`] transport, version negotiation,
//! login and the TLS fingerprint; [`session`] the authenticated calls; [`types`] keypair and
//! task; [`error`] the error type; [`secret`] redacted secrets and credentials.
//!
//! ```no_run
//! # async fn demo(ca: Vec<rustls::pki_types::CertificateDer<'static>>) -> Result<(), scmb_oneview::OneViewError> {
//! use scmb_oneview::{Client, Config, Credentials};
//! let client = Client::connect(Config::new("ov.example.com", scmb_tls::ServerTrust::Ca(ca))).await?;
//! let session = client.login(Credentials::new("Administrator", "secret")).await?;
//! let active = session.alerts(&["alertState='Active'".to_string()], 500).await?;
//! # let _ = active; Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod secret;
pub mod session;
pub mod types;

pub use client::Client;
pub use config::{Config, DEFAULT_TIMEOUT, MAX_API_VERSION};
pub use error::OneViewError;
pub use scmb_tls::{Fingerprint, NameCheck, ServerTrust};
pub use secret::{Credentials, Secret};
pub use session::{AlertPage, Session};
pub use types::{Generation, Keypair, Task, TaskOutcome};

/// Helpers for turning HTTP failures into one-line explanations, shared with the other REST
/// clients of the project (Service Manager).
pub mod diagnostics {
    pub use crate::client::snippet;
    pub use crate::error::{chain, find_rustls};
}
