//! The JSON-lines sink: every admitted event appended to a file as one JSON object per line,
//! carrying its appliance, for log shippers.

mod config;

use std::path::Path;
use std::sync::Mutex;

pub use config::JsonlConfig;

use crate::failure;
use crate::sinks::format::{Output, Printer};
use crate::sinks::sink::{Outcome, Sink, SinkError};
use scmb_model::Event;

pub struct Jsonl {
    printer: Mutex<Printer<std::fs::File>>,
    path: std::path::PathBuf,
}

impl Jsonl {
    /// Opens (creates, mode 0640) `path` for appending; `label` is the appliance.
    pub fn open(path: &Path, label: &str) -> Result<Jsonl, SinkError> {
        let file = open_append(path)?;
        Ok(Jsonl {
            printer: Mutex::new(Printer::new(file, Output::Json, false).with_label(label)),
            path: path.to_path_buf(),
        })
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, SinkError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            SinkError::new(
                "jsonl",
                failure::USAGE,
                format!("cannot open the JSON-lines file {}: {e}", path.display()),
            )
        })
}

#[async_trait::async_trait]
impl Sink for Jsonl {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn prints(&self) -> bool {
        true
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        crate::sinks::format::print_to(&self.printer, ev, self.name())?;
        Ok(Outcome::Done("written".into()))
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        open_append(&self.path).map(|_| format!("{} is writable", self.path.display()))
    }
}
