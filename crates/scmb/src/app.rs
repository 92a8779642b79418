//! The `scmb` command: from parsed flags to a mode (bootstrap or listen), and the helpers the
//! `ov_to_sm` command shares with it (tracing, signals, filter and bus settings).

use scmb_bus::BusConfig;
use scmb_model::{ChangeType, Filter};
use scmb_tls::NameCheck;

use crate::cli::{CertsCmd, Cli, Cmd, ConnArgs, WatchArgs};
use crate::failure::{self, Failure};
use crate::{bootstrap, certs, listen};

enum Mode {
    Generate,
    Download,
    Setup,
    Show,
    Watch,
}

/// Runs a tool's async main on a small runtime and maps the outcome to its exit code, printing
/// a failure as one line prefixed with the tool's name.
pub fn run_to_exit(
    name: &str,
    log: (String, crate::telemetry::LogFormat),
    main: impl std::future::Future<Output = Result<(), Failure>>,
) -> std::process::ExitCode {
    run_to_exit_on(name, log, false, main)
}

/// [`run_to_exit`] on a single-threaded runtime when `single` (one consumer, in order: no
/// cross-thread wake-ups between the AMQP reader and the consumer), else on two workers.
pub fn run_to_exit_on(
    name: &str,
    log: (String, crate::telemetry::LogFormat),
    single: bool,
    main: impl std::future::Future<Output = Result<(), Failure>>,
) -> std::process::ExitCode {
    crate::telemetry::init_logging(&log.0, log.1);
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(failure::UNEXPECTED);
        }
    };
    match rt.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{name}: {f}");
            std::process::ExitCode::from(f.code)
        }
    }
}

/// The log settings from the flags (and their environment variables), `RUST_LOG` and a
/// config file's `[log]`, in that order of precedence.
pub fn log_settings(
    flags: &crate::cli::LogArgs,
    file: Option<&crate::config::LogConfig>,
) -> (String, crate::telemetry::LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let level = crate::telemetry::log_level(
        flags.log_level.as_deref(),
        rust_log.as_deref(),
        file.and_then(|f| f.level.as_deref()),
    );
    let format = flags
        .log_format
        .or(file.and_then(|f| f.format))
        .unwrap_or_default();
    (level, format)
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("stopping: finishing the message in hand");
}

pub fn filter(w: &WatchArgs) -> Result<Filter, Failure> {
    let mut f = Filter::default();
    if !w.severity.is_empty() {
        f.severities = w.severity.clone();
    }
    if !w.states.is_empty() {
        f.states = w.states.clone();
    }
    if !w.change_types.is_empty() {
        f.change_types = w
            .change_types
            .iter()
            .map(|c| {
                ChangeType::parse(c).ok_or_else(|| {
                    Failure::new(
                        failure::USAGE,
                        format!("--change-type {c:?}: use Created, Updated or Deleted"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    f.escalations = w.escalations;
    if !w.categories.is_empty() {
        f.categories = w.categories.clone();
    }
    f.alert_types = w.alert_types.clone();
    Ok(f)
}

/// The message bus settings from the flags.
pub fn bus_config(conn: &ConnArgs, w: &WatchArgs, host: &str, dir: &std::path::Path) -> BusConfig {
    let mut bus = BusConfig::new(bus_host(host), dir);
    bus.port = conn.amqp_port;
    bus.names = match (&conn.tls_server_name, conn.no_verify_hostname) {
        (Some(n), _) => NameCheck::Name(n.clone()),
        (None, true) => NameCheck::Skip,
        (None, false) => NameCheck::Host,
    };
    bus.heartbeat = w.heartbeat;
    bus.prefetch = w.prefetch.max(1);
    if !w.routes.is_empty() {
        bus.routes = w.routes.clone();
    }
    bus.queue = w.queue.clone();
    bus
}

/// The appliance host (`-a`), required.
pub fn host(conn: &ConnArgs) -> Result<&str, Failure> {
    conn.host
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Failure::new(
                failure::USAGE,
                "the appliance address is missing: give -a HOST",
            )
        })
}

/// The bus host is the appliance host without any REST port.
pub fn bus_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let mode = match &cli.cmd {
        Some(Cmd::Setup) => Mode::Setup,
        Some(Cmd::Certs(CertsCmd::Generate)) => Mode::Generate,
        Some(Cmd::Certs(CertsCmd::Download)) => Mode::Download,
        Some(Cmd::Certs(CertsCmd::Show)) => Mode::Show,
        Some(Cmd::Watch) => Mode::Watch,
        Some(Cmd::Run(_) | Cmd::Check(_) | Cmd::Completions { .. } | Cmd::Man { .. }) => {
            return Err(Failure::new(
                failure::UNEXPECTED,
                "this command is dispatched by main",
            ))
        }
        None if cli.generate && cli.download => Mode::Setup,
        None if cli.generate => Mode::Generate,
        None if cli.download => Mode::Download,
        None => Mode::Watch,
    };
    let conn = &cli.conn;
    let host = conn
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Failure::new(
                failure::USAGE,
                "the appliance address is missing: give -a HOST",
            )
        })?;
    let dir = certs::cert_dir(conn.cert_dir.as_deref(), conn.cwd_certs, host)?;
    match mode {
        Mode::Generate => bootstrap::generate(&bootstrap::login(conn, host, &dir).await?).await,
        Mode::Download => {
            bootstrap::download(&bootstrap::login(conn, host, &dir).await?, &dir).await
        }
        Mode::Setup => bootstrap::setup(&bootstrap::login(conn, host, &dir).await?, &dir).await,
        Mode::Show => show(&dir),
        Mode::Watch => {
            if conn.password.is_some() {
                tracing::debug!("listening needs no REST login: the password is not used");
            }
            let w = &cli.watch;
            let session = if w.catch_up || w.auto_bootstrap {
                Some(std::sync::Arc::new(
                    bootstrap::login(conn, host, &dir).await?,
                ))
            } else {
                None
            };
            let catch_up = if let (true, Some(session)) = (w.catch_up, &session) {
                let store = crate::store::Store::open(&dir.join("scmb.redb"))
                    .map_err(|e| Failure::new(failure::UNEXPECTED, e.to_string()))?;
                Some(listen::CatchUp {
                    store: Some(store),
                    session: session.clone(),
                    look_back: crate::ovtosm::look_back(w.look_back.as_deref().unwrap_or("none"))?,
                })
            } else {
                None
            };
            let listener = listen::Listener {
                catch_up,
                bootstrap: session.filter(|_| w.auto_bootstrap),
                bus: bus_config(conn, w, host, &dir),
                filter: filter(w)?,
                output: w.output,
                max_bytes: w.max_message_bytes,
                count: w.count,
            };
            let stats = listener.run(shutdown_signal()).await?;
            tracing::info!(
                received = stats.received,
                printed = stats.printed,
                malformed = stats.malformed,
                reconnects = stats.reconnects,
                "stopped"
            );
            Ok(())
        }
    }
}

fn show(dir: &std::path::Path) -> Result<(), Failure> {
    println!("certificate directory: {}", dir.display());
    for name in [
        certs::CA_FILE,
        certs::CERT_FILE,
        certs::KEY_FILE,
        certs::FINGERPRINT_FILE,
    ] {
        let p = dir.join(name);
        match std::fs::metadata(&p) {
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                println!(
                    "  {name:<16} {:o} {} bytes",
                    m.permissions().mode() & 0o777,
                    m.len()
                );
            }
            Err(_) => println!("  {name:<16} missing"),
        }
    }
    for name in [certs::CA_FILE, certs::CERT_FILE] {
        if let Ok(certs) = scmb_tls::load_certs(&dir.join(name)) {
            for c in certs {
                println!("  {name} SHA-256 {}", scmb_tls::Fingerprint::of(&c));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_host_drops_the_rest_port() {
        assert_eq!(bus_host("oneview.example:8443"), "oneview.example");
        assert_eq!(bus_host("10.0.0.5"), "10.0.0.5");
        assert_eq!(bus_host("[::1]:443"), "::1");
        assert_eq!(bus_host("fe80::1"), "fe80::1");
    }
}
