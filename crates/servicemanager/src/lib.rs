//! `scmb-servicemanager`: the HP Service Manager 9 REST client scmb opens tickets with
//! (SPEC §3) — create an incident, read it, append to its journal, resolve and close it, list
//! incidents with SM queries and paging.
//!
//! Basic auth on every request (SM has no sessions), plain HTTP like the HPE sample or HTTPS
//! verified through `scmb-tls`, a timeout on every request, and every failure a [`SmError`]
//! whose [`SmError::class`] is the one place that says whether to retry ([`ErrorClass`]);
//! the caller waits and retries (scmb with its own backoff). The client never retries on its own. The password lives in a
//! [`Secret`] and never appears in `Debug` output, logs or error messages.
//!
//! Module map: [`config`] where and how to connect; [`client`] the transport and the incident
//! calls; [`incident`] the incident type; [`error`] the error type and retry classes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scmb_servicemanager::SmError> {
//! use scmb_servicemanager::{SmClient, SmConfig};
//! use serde_json::json;
//! let sm = SmClient::new(SmConfig::from_host("smhost", "falcon", "secret"))?;
//! let mut fields = serde_json::Map::new();
//! fields.insert("Title".into(), json!("OneView Alert"));
//! fields.insert("Description".into(), json!(["line 1", "line 2"]));
//! let created = sm.create_incident(&fields).await?;
//! let mut note = serde_json::Map::new();
//! note.insert("JournalUpdates".into(), json!(["seen again"]));
//! sm.update_incident(&created.id, &note).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod incident;

pub use client::SmClient;
pub use config::{SmConfig, DEFAULT_PORT, DEFAULT_TIMEOUT, DEFAULT_USER, REST_PATH};
pub use error::{status_class, ErrorClass, SmError};
pub use incident::Incident;
pub use scmb_oneview::Secret;
pub use scmb_tls::{NameCheck, ServerTrust};
