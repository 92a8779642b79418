//! scmb: HPE OneView's State-Change Message Bus turned into action. The library behind the
//! `scmb` and `ov_to_sm` binaries. Data flows one way: `flags` | `config` → `settings` →
//! `pipeline` → `sinks` → (`store`, `telemetry`); `commands` on top wire them together.

pub mod bootstrap;
pub mod certs;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod failure;
pub mod flags;
pub mod password;
pub mod pipeline;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod sinks;
pub mod store;
pub mod telemetry;
