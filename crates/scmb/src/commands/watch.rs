//! The listener (`scmb`, `scmb watch`): the pipeline with the console sink, one alert at a
//! time in order, and the metrics endpoint when asked for.

use std::process::ExitCode;

use crate::failure::{self, Failure};
use crate::flags::{ConnArgs, ListenArgs, LogArgs};
use crate::pipeline::Pipeline;
use crate::telemetry::Metrics;

pub fn main(log: &LogArgs, conn: ConnArgs, listen: ListenArgs) -> ExitCode {
    super::run_to_exit("scmb", &log.settings(None), 1, watch(conn, listen))
}

async fn watch(conn: ConnArgs, listen: ListenArgs) -> Result<(), Failure> {
    let settings = listen.appliance(&conn)?;
    let metrics = Metrics::new();
    if let Some(addr) = &listen.metrics_listen {
        crate::telemetry::serve_metrics(addr, metrics.clone(), std::future::pending())
            .await
            .map_err(|m| Failure::new(failure::USAGE, m))?;
    }
    let appliance = metrics.appliance(&settings.rest.host);
    let pipeline = Pipeline::build(settings, appliance).await?;
    // The stop handlers are installed here, after any password prompt (Ctrl-C must still
    // interrupt a prompt) and before the subscription.
    pipeline.run(crate::shutdown::signal()).await
}
