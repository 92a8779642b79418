//! `[appliance.console]`

use crate::sinks::format::Output;

/// `[appliance.console]`: print admitted events on standard output, each line prefixed with
/// the appliance's name.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `human` (default) or `json` (`--output`).
    #[serde(default)]
    pub format: Output,
}
