//! The commands: the only place that wires flags or a config file to the parts below. Each
//! turns what was typed into [`crate::settings`], runs one job, and maps its outcome to an
//! exit code (see [`crate::failure`]); a failure is printed as one line prefixed with the
//! tool's name.

pub mod certs;
pub mod check;
pub mod ov_to_sm;
pub mod service;
pub mod watch;

use std::process::ExitCode;

use crate::failure::{self, Failure};
use crate::flags::{CertsCmd, Cli, Cmd};
use crate::telemetry::LogSettings;

/// The environment variable that, set to `1`, leaves core dumps possible (to debug a crash).
pub const ALLOW_CORE_DUMPS: &str = "SCMB_ALLOW_CORE_DUMPS";

/// Keeps the passwords out of core dumps: the process is made non-dumpable (no core file, no
/// `ptrace` or `/proc/PID/mem` by the same user; its `/proc/PID` belongs to root) and its core
/// size limit is set to 0, soft and hard. Called first thing in `main`, before the flags are
/// parsed (a password typed as a flag is in memory from then on). `SCMB_ALLOW_CORE_DUMPS=1`
/// leaves both as they are, with a warning once logging starts.
pub fn forbid_core_dumps() {
    use crate::telemetry::early_warn;
    if std::env::var_os(ALLOW_CORE_DUMPS).is_some_and(|v| v == "1") {
        early_warn(format!(
            "{ALLOW_CORE_DUMPS}=1: core dumps are allowed, and a dump of this process holds its passwords: unset it once the crash is understood"
        ));
        return;
    }
    // SAFETY: prctl with integer arguments only changes this process's dumpable flag.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        early_warn(format!(
            "cannot make the process non-dumpable: {}: a core dump may hold the passwords",
            std::io::Error::last_os_error()
        ));
    }
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the limit we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        let e = std::io::Error::last_os_error();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let zero_already =
            unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut now) } == 0 && now.rlim_cur == 0;
        if !zero_already {
            early_warn(format!(
                "cannot set the core size limit to 0: {e}: set it before starting (ulimit -c 0, or LimitCORE=0 in the unit)"
            ));
        }
    }
}

/// `scmb`, whatever its subcommand.
pub fn scmb(cli: Cli) -> ExitCode {
    match cli.cmd {
        Some(Cmd::Completions { shell, tool }) => {
            let (mut cmd, name) = tool.command();
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
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
        Some(Cmd::Run(args)) => service::main(args),
        Some(Cmd::Check(args)) => check::main(args),
        Some(Cmd::Setup(c)) => rest_only(&c.log, certs::rest(certs::Mode::Setup, c.conn)),
        Some(Cmd::Certs(CertsCmd::Generate(c))) => {
            rest_only(&c.log, certs::rest(certs::Mode::Generate, c.conn))
        }
        Some(Cmd::Certs(CertsCmd::Download(c))) => {
            rest_only(&c.log, certs::rest(certs::Mode::Download, c.conn))
        }
        Some(Cmd::Certs(CertsCmd::Show(s))) => {
            rest_only(&Default::default(), async move { certs::show(&s) })
        }
        Some(Cmd::Watch(w)) => watch::main(&w.log, w.conn, w.listen),
        None => match certs::Mode::of(cli.generate, cli.download) {
            Some(mode) => rest_only(&cli.log, certs::rest(mode, cli.conn)),
            None => watch::main(&cli.log, cli.conn, cli.listen),
        },
    }
}

fn rest_only(
    log: &crate::flags::LogArgs,
    job: impl std::future::Future<Output = Result<(), Failure>>,
) -> ExitCode {
    run_to_exit("scmb", &log.settings(None), 1, job)
}

/// Starts logging, runs a tool's async main on a small runtime and maps the outcome to its
/// exit code. One thread (`threads` 1) is a single-threaded runtime: no cross-thread wake-ups
/// between the AMQP reader, the consumer and the sinks, which on the broker-bound path costs
/// more CPU than a second core saves (docs/PERFORMANCE.md).
pub fn run_to_exit(
    name: &str,
    log: &LogSettings,
    threads: usize,
    main: impl std::future::Future<Output = Result<(), Failure>>,
) -> ExitCode {
    crate::telemetry::init_logging(log);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::from(failure::UNEXPECTED);
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{name}: {f}");
            ExitCode::from(f.code)
        }
    }
}
