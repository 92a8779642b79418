//! `ov_to_sm`: `-l` lists the incidents; `-g`/`-d` set up the certificates; otherwise the
//! pipeline of one appliance with the Service Manager sink, until a stop.

use std::process::ExitCode;

use scmb_servicemanager::SmClient;

use super::certs::{self, Mode};
use crate::failure::{self, Failure};
use crate::flags::ov_to_sm::OvToSmCli;
use crate::pipeline::Pipeline;
use crate::sinks::format::Output;
use crate::sinks::service_manager;
use crate::telemetry::Metrics;

pub fn main(cli: OvToSmCli) -> ExitCode {
    let log = cli.log.settings(None);
    super::run_to_exit("ov_to_sm", &log, 2, run(cli))
}

async fn run(cli: OvToSmCli) -> Result<(), Failure> {
    if cli.list {
        return list(&cli).await;
    }
    if let Some(mode) = Mode::of(cli.generate, cli.download) {
        return certs::rest(mode, cli.conn).await;
    }
    let settings = cli.appliance()?;
    let metrics = Metrics::new().appliance(&settings.rest.host);
    let pipeline = Pipeline::build(settings, metrics).await?;
    // Installed after any password prompt, before the subscription (see `watch`).
    pipeline.run(crate::shutdown::signal()).await
}

/// `-l`: every incident, as a table or JSON lines.
async fn list(cli: &OvToSmCli) -> Result<(), Failure> {
    let sm = SmClient::new(cli.service_manager()?.client)
        .map_err(|e| Failure::new(failure::USAGE, e.to_string()))?;
    let all = sm
        .list(None, cli.list_page_size.max(1))
        .await
        .map_err(|e| {
            Failure::new(
                service_manager::failure_code(&e),
                service_manager::message(&e),
            )
        })?;
    if cli.output == Output::Json {
        for inc in &all {
            println!("{}", serde_json::Value::Object(inc.fields.clone()));
        }
    } else {
        println!(
            "{:<10} {:<10} {:<7} {:<25} TITLE",
            "ID", "STATUS", "URGENCY", "OPENED"
        );
        for inc in &all {
            let f = |k: &str| {
                inc.fields
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            println!(
                "{:<10} {:<10} {:<7} {:<25} {}",
                inc.id,
                f("Status"),
                f("Urgency"),
                f("OpenTime"),
                f("Title")
            );
        }
        println!("{} incident(s)", all.len());
    }
    Ok(())
}
