//! `scmb run --config FILE`: load the file, start logging as it says, and hand it to the
//! service ([`crate::daemon`]).

use std::process::ExitCode;

use crate::config::Config;
use crate::daemon::{self, Service};
use crate::failure;
use crate::flags::DaemonArgs;

pub fn main(args: DaemonArgs) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scmb: {e}");
            return ExitCode::from(failure::USAGE);
        }
    };
    let log = args.log.settings(Some(&cfg.log));
    let service = Service {
        config: args.config,
        state_dir: args.state_dir,
        metrics_listen: args.metrics_listen,
    };
    let threads = cfg.worker_threads;
    super::run_to_exit("scmb", &log, threads, daemon::run(cfg, service))
}
