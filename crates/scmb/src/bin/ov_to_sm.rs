//! `ov_to_sm`: every critical OneView alert becomes exactly one HP Service Manager incident,
//! written back into the alert's notes. Exit codes as `scmb`'s.

use std::process::ExitCode;

use clap::Parser;
use scmb::flags::ov_to_sm::{normalise_args, OvToSmCli};

fn main() -> ExitCode {
    // Before anything reads a password, flags included.
    scmb::commands::forbid_core_dumps();
    scmb::commands::ov_to_sm::main(OvToSmCli::parse_from(normalise_args(std::env::args())))
}
