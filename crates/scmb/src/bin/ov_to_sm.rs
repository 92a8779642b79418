//! `ov_to_sm`: every critical OneView alert becomes exactly one HP Service Manager incident,
//! written back into the alert's notes. Exit codes as `scmb`'s.

use std::process::ExitCode;

use clap::Parser;
use scmb::app;
use scmb::ovtosm::{self, OvToSmCli};

fn main() -> ExitCode {
    let cli = OvToSmCli::parse_from(ovtosm::normalise_args(std::env::args()));
    let log = app::log_settings(&cli.log, None);
    app::run_to_exit("ov_to_sm", log, ovtosm::run(cli))
}
