//! `scmb-sim`: a simulated HPE OneView appliance — its REST API, its State-Change Message Bus on
//! a real RabbitMQ node, and an HP Service Manager — for trying scmb without hardware and for
//! testing SCMB integrations. The wire contract is `shared/SPEC.md`; this crate answers it,
//! awkward parts included (API-version differences, 401 on expired sessions, 409 on a second
//! keypair generation, 412 on stale eTags).
//!
//! Module map: [`pki`] certificates on disk; [`broker`] the RabbitMQ child process; [`bus`] the
//! publisher; [`ov`] the OneView REST API; [`control`] the `/sim/` control surface; [`sm`] the
//! Service Manager; [`servicenow`] a ServiceNow instance (Table API, OAuth, Event Management);
//! [`pagerduty`] PagerDuty's Events API v2; [`webhook`] a webhook receiver that records requests; [`httpsim`] what those three share (state, faults
//! and their middleware, control routes, persistence); [`latency`] injected latency to the
//! fraction of a millisecond; [`serve`] HTTP(S) serving; [`sim`] wiring
//! it all together; [`client`] a small client of the control surface for the CLI and tests;
//! [`rawamqp`] a minimal AMQP client for routing keys that are not UTF-8.

// Handlers return `Result<T, Response>` so that `?`-style early answers stay readable; the
// size of an error `Response` does not matter on these paths.
#![allow(clippy::result_large_err)]

pub mod broker;
pub mod bus;
pub mod client;
pub mod clock;
pub mod control;
pub mod filter;
pub mod httpsim;
pub mod latency;
pub mod ov;
pub mod pagerduty;
pub mod pki;
pub mod rawamqp;
pub mod serve;
pub mod servicenow;
pub mod sim;
pub mod sm;
pub mod testkit;
pub mod webhook;

pub use sim::{Sim, SimConfig};
