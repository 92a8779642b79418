//! `[appliance.jsonl]`

use std::path::PathBuf;

/// `[appliance.jsonl]`: append admitted events to a file as JSON lines.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file, created if missing (mode 0640) and appended to; a relative path is relative
    /// to the appliance's state directory.
    pub path: PathBuf,
}
