//! The console sink: every admitted event on standard output, in the HPE sample's human form
//! or as one JSON object per line; each line labelled with its appliance under `scmb run`.
//! Standard output carries events only: everything else is logged on standard error.

mod config;

use std::io::Stdout;
use std::sync::Mutex;

pub use config::ConsoleConfig;

use crate::sinks::format::{Output, Printer};
use crate::sinks::sink::{Outcome, Sink, SinkError};
use scmb_model::Event;

pub struct Console {
    printer: Mutex<Printer<Stdout>>,
}

impl Console {
    /// `label`: the appliance every line is marked with (`scmb run`), none for one appliance.
    pub fn new(format: Output, label: Option<&str>) -> Console {
        let colour = format == Output::Human
            && crate::telemetry::colour(std::io::IsTerminal::is_terminal(&std::io::stdout()));
        let mut p = Printer::new(std::io::stdout(), format, colour);
        if let Some(l) = label {
            p = p.with_label(l);
        }
        Console {
            printer: Mutex::new(p),
        }
    }
}

#[async_trait::async_trait]
impl Sink for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn prints(&self) -> bool {
        true
    }

    async fn handle(&self, ev: &Event) -> Result<Outcome, SinkError> {
        crate::sinks::format::print_to(&self.printer, ev, self.name())?;
        Ok(Outcome::Done("printed".into()))
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        Ok("standard output".into())
    }
}
