//! The console sink: every admitted event on standard output, in the HPE sample's human form
//! or as one JSON object per line; each line labelled with its appliance under `scmb run`.
//! Standard output carries events only: everything else is logged on standard error.

mod config;

use std::io::Stdout;
use std::sync::Mutex;

pub use config::ConsoleConfig;

use crate::sinks::format::{Output, Printer};
use crate::sinks::sink::{Outcome, Sink, SinkError};
use crate::sinks::SinkContext;
use scmb_model::Event;

/// The console's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleSettings {
    pub format: Output,
    /// Print this many events, then ask the pipeline to stop (`--count`).
    pub limit: Option<u64>,
}

pub struct Console {
    /// The printer, and how many events may still be printed.
    printer: Mutex<(Printer<Stdout>, Option<u64>)>,
    finish: std::sync::Arc<tokio::sync::Notify>,
}

impl Console {
    /// Lines are marked with the context's label (the appliance, under `scmb run`).
    pub fn new(s: &ConsoleSettings, ctx: &SinkContext) -> Console {
        let colour = s.format == Output::Human
            && crate::telemetry::colour(std::io::IsTerminal::is_terminal(&std::io::stdout()));
        let mut p = Printer::new(std::io::stdout(), s.format, colour);
        if let Some(l) = &ctx.label {
            p = p.with_label(l);
        }
        Console {
            printer: Mutex::new((p, s.limit)),
            finish: ctx.finish.clone(),
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
        let mut guard = self.printer.lock().map_err(|_| {
            SinkError::new(
                self.name(),
                crate::failure::UNEXPECTED,
                "the console panicked",
            )
        })?;
        let (printer, left) = &mut *guard;
        if *left == Some(0) {
            // Enough printed: the rest is left for whoever listens next.
            return Ok(Outcome::Interrupted);
        }
        crate::sinks::format::print_with(printer, ev, self.name())?;
        if let Some(n) = left {
            *n -= 1;
            if *n == 0 {
                self.finish.notify_one();
            }
        }
        Ok(Outcome::Done("printed".into()))
    }

    async fn healthcheck(&self) -> Result<String, SinkError> {
        Ok("standard output".into())
    }
}
