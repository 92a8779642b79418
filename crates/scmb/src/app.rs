//! The `scmb` command: from parsed flags to a mode (bootstrap or listen), and the helpers the
//! `ov_to_sm` command shares with it (tracing, signals, filter and bus settings).

use scmb_bus::BusConfig;
use scmb_model::{ChangeType, Filter};
use scmb_tls::NameCheck;

use crate::cli::{BusArgs, CertsCmd, Cli, Cmd, ConnArgs, FilterArgs, ListenArgs};
use crate::failure::{self, Failure};
use crate::{bootstrap, certs};

/// What a REST-only command does.
pub enum Mode {
    Generate,
    Download,
    Setup,
}

/// Runs a tool's async main on a small runtime and maps the outcome to its exit code, printing
/// a failure as one line prefixed with the tool's name.
pub fn run_to_exit(
    name: &str,
    log: LogSettings,
    main: impl std::future::Future<Output = Result<(), Failure>>,
) -> std::process::ExitCode {
    run_to_exit_on(name, log, false, main)
}

/// [`run_to_exit`] on a single-threaded runtime when `single` (one consumer, in order: no
/// cross-thread wake-ups between the AMQP reader and the consumer), else on two workers.
pub fn run_to_exit_on(
    name: &str,
    log: LogSettings,
    single: bool,
    main: impl std::future::Future<Output = Result<(), Failure>>,
) -> std::process::ExitCode {
    crate::telemetry::init_logging(&log.0, log.1, log.2);
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

/// Level, format and colour of the logs.
pub type LogSettings = (String, crate::telemetry::LogFormat, crate::cli::Color);

/// The log settings from the flags (and their environment variables), `RUST_LOG` and a
/// config file's `[log]`, in that order of precedence.
pub fn log_settings(
    flags: &crate::cli::LogArgs,
    file: Option<&crate::config::LogConfig>,
) -> LogSettings {
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
    (level, format, flags.color)
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("stopping: finishing the message in hand");
}

/// The filter from the flags (or a config file's table), checked: a value of a closed set
/// that OneView never sends is a usage error; an unknown category or alert type is warned
/// about.
pub fn filter(w: &FilterArgs) -> Result<Filter, Failure> {
    let (f, warnings) = checked_filter(w)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(f)
}

/// [`filter`], with the warnings returned instead of logged.
pub fn checked_filter(w: &FilterArgs) -> Result<(Filter, Vec<String>), Failure> {
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
                        format!("change type {c:?} is not one OneView sends: use Created, Updated or Deleted"),
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
    let warnings = f
        .check()
        .map_err(|p| Failure::new(failure::USAGE, p.to_string()))?;
    Ok((f, warnings))
}

/// The message bus settings from the flags.
pub fn bus_config(conn: &ConnArgs, b: &BusArgs, host: &str, dir: &std::path::Path) -> BusConfig {
    let mut bus = BusConfig::new(bus_host(host), dir);
    bus.port = b.amqp_port;
    bus.names = match (&conn.tls_server_name, b.no_verify_hostname) {
        (Some(n), _) => NameCheck::Name(n.clone()),
        (None, true) => NameCheck::Skip,
        (None, false) => NameCheck::Host,
    };
    bus.heartbeat = b.heartbeat.as_secs().min(u16::MAX as u64) as u16;
    bus.prefetch = b.prefetch.max(1);
    if !b.routes.is_empty() {
        bus.routes = b.routes.clone();
    }
    bus.queue = b.queue.clone();
    bus
}

/// The appliance host (`-a`), required.
pub fn host(conn: &ConnArgs) -> Result<&str, Failure> {
    conn.host
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or_else(missing_host)
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

/// The commands that are not `run`, `check`, `completions` or `man`.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Some(Cmd::Setup(c)) => rest_command(Mode::Setup, &c.conn).await,
        Some(Cmd::Certs(CertsCmd::Generate(c))) => rest_command(Mode::Generate, &c.conn).await,
        Some(Cmd::Certs(CertsCmd::Download(c))) => rest_command(Mode::Download, &c.conn).await,
        Some(Cmd::Certs(CertsCmd::Show(s))) => {
            let host = s
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .ok_or_else(missing_host)?;
            show(&certs::cert_dir(s.cert_dir.as_deref(), s.cwd_certs, host)?)
        }
        Some(Cmd::Watch(w)) => watch(&w.conn, &w.listen).await,
        Some(Cmd::Run(_) | Cmd::Check(_) | Cmd::Completions { .. } | Cmd::Man { .. }) => Err(
            Failure::new(failure::UNEXPECTED, "this command is dispatched by main"),
        ),
        None if cli.generate && cli.download => rest_command(Mode::Setup, &cli.conn).await,
        None if cli.generate => rest_command(Mode::Generate, &cli.conn).await,
        None if cli.download => rest_command(Mode::Download, &cli.conn).await,
        None => watch(&cli.conn, &cli.listen).await,
    }
}

fn missing_host() -> Failure {
    Failure::new(
        failure::USAGE,
        "the appliance address is missing: give -a HOST",
    )
}

/// `-g`, `-d`, `setup` (and `ov_to_sm -g/-d`): log in, act, print what was done.
pub async fn rest_command(mode: Mode, conn: &ConnArgs) -> Result<(), Failure> {
    let host = host(conn)?;
    let dir = certs::cert_dir(conn.cert_dir.as_deref(), conn.cwd_certs, host)?;
    let session = bootstrap::login(conn, host, &dir).await?;
    let said = match mode {
        Mode::Generate => vec![bootstrap::generate(&session).await?.to_string()],
        Mode::Download => vec![bootstrap::download(&session, &dir).await?],
        Mode::Setup => bootstrap::setup(&session, &dir).await?,
    };
    for line in said {
        println!("{line}");
    }
    Ok(())
}

/// The listener: the pipeline with the console sink.
async fn watch(conn: &ConnArgs, w: &ListenArgs) -> Result<(), Failure> {
    let host = host(conn)?;
    let dir = certs::cert_dir(conn.cert_dir.as_deref(), conn.cwd_certs, host)?;
    let metrics = crate::telemetry::Metrics::new();
    if let Some(addr) = &w.metrics_listen {
        crate::daemon::serve_metrics(addr, metrics.clone(), std::future::pending()).await?;
    }
    let pipeline = crate::pipeline::Pipeline::build(crate::pipeline::Spec {
        conn,
        bus: &w.bus,
        filter: &w.filter,
        catch_up: w.catch_up,
        look_back: w
            .look_back
            .unwrap_or(crate::duration::LookBack::default_for(false)),
        lanes: 1,
        keep_alive: None,
        sinks: crate::sinks::SinkSettings {
            console: Some(crate::sinks::console::ConsoleSettings {
                format: w.output,
                limit: w.count,
            }),
            ..Default::default()
        },
        label: None,
        store: Some(dir.join("scmb.redb")),
        metrics: metrics.appliance(host),
    })
    .await?;
    pipeline.run(shutdown_signal()).await
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
