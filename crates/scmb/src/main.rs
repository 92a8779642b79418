//! `scmb`: listens to HPE OneView's State-Change Message Bus and sets up its certificates,
//! with the HPE sample's command line kept verbatim; `scmb run` serves many appliances as a
//! service. Exit codes: see `scmb::failure`.

use std::process::ExitCode;

use clap::Parser;
use scmb::cli::{CertsCmd, Cli, Cmd};
use scmb::config::Config;
use scmb::{app, check, daemon, failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Some(Cmd::Completions { shell, tool }) => {
            let (mut cmd, name) = tool.command();
            clap_complete::generate(*shell, &mut cmd, name, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Cmd::Man { tool }) => {
            match clap_mangen::Man::new(tool.command().0).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("scmb: cannot write the man page: {e}");
                    ExitCode::from(failure::UNEXPECTED)
                }
            }
        }
        Some(Cmd::Run(args)) => {
            let cfg = match Config::load(&args.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("scmb: {e}");
                    return ExitCode::from(failure::USAGE);
                }
            };
            let log = app::log_settings(&args.log, Some(&cfg.log));
            let args = args.clone();
            app::run_to_exit("scmb", log, daemon::run(cfg, args))
        }
        Some(Cmd::Check(args)) => {
            let cfg = Config::load(&args.config);
            let mut log = app::log_settings(&args.log, cfg.as_ref().ok().map(|c| &c.log));
            if log.0 == scmb::telemetry::DEFAULT_LOG_LEVEL {
                // The check lines are the report; routine log lines would only interleave.
                log.0 = "warn".into();
            }
            let args = args.clone();
            app::run_to_exit("scmb", log, check::run(cfg, args))
        }
        cmd => {
            let (flags, listening) = match cmd {
                Some(Cmd::Setup(c)) => (&c.log, false),
                Some(Cmd::Certs(CertsCmd::Generate(c) | CertsCmd::Download(c))) => (&c.log, false),
                Some(Cmd::Watch(w)) => (&w.log, true),
                _ => (&cli.log, cmd.is_none() && !cli.generate && !cli.download),
            };
            let log = app::log_settings(flags, None);
            app::run_to_exit_on("scmb", log, listening, app::run(cli))
        }
    }
}
