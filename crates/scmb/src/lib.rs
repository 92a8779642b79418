//! scmb: HPE OneView's State-Change Message Bus turned into action. The library behind the
//! `scmb` and `ov_to_sm` binaries: command lines, certificate bootstrap, the listener, output,
//! the durable store and ticketing.

pub mod app;
pub mod bootstrap;
pub mod certs;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod failure;
pub mod ovtosm;
pub mod pipeline;
pub mod sinks;
pub mod store;
pub mod telemetry;
