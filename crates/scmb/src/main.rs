//! `scmb`: listens to HPE OneView's State-Change Message Bus and sets up its certificates,
//! with the HPE sample's command line kept verbatim; `scmb run` serves many appliances as a
//! service. Exit codes: see `scmb::failure`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything reads a password, flags included.
    scmb::commands::forbid_core_dumps();
    scmb::commands::scmb(scmb::flags::Cli::parse())
}
