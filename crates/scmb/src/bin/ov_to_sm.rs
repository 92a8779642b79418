//! `ov_to_sm`: every critical OneView alert becomes exactly one HP Service Manager incident,
//! written back into the alert's notes. Exit codes as `scmb`'s.

use std::process::ExitCode;

use clap::Parser;
use scmb::ovtosm::{self, OvToSmCli};
use scmb::{app, failure};

fn main() -> ExitCode {
    let cli = OvToSmCli::parse_from(ovtosm::normalise_args(std::env::args()));
    app::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ov_to_sm: cannot start the async runtime: {e}");
            return ExitCode::from(failure::UNEXPECTED);
        }
    };
    match rt.block_on(ovtosm::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ov_to_sm: {f}");
            ExitCode::from(f.code)
        }
    }
}
