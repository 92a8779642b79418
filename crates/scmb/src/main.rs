//! `scmb`: listens to HPE OneView's State-Change Message Bus and sets up its certificates,
//! with the HPE sample's command line kept verbatim. Exit codes: see `scmb::failure`.

use std::process::ExitCode;

use clap::Parser;
use scmb::{app, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::run_to_exit("scmb", app::run(cli))
}
