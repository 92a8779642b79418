//! `scmb`: listens to HPE OneView's State-Change Message Bus and sets up its certificates,
//! with the HPE sample's command line kept verbatim. Exit codes: see `scmb::failure`.

use std::process::ExitCode;

use clap::Parser;
use scmb::{app, cli::Cli, failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scmb: cannot start the async runtime: {e}");
            return ExitCode::from(failure::UNEXPECTED);
        }
    };
    match rt.block_on(app::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("scmb: {f}");
            ExitCode::from(f.code)
        }
    }
}
