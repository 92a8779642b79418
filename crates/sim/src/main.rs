//! `ov-sim`: runs the simulated OneView appliance (and Service Manager, ServiceNow, PagerDuty),
//! or drives a running one.
//!
//! Exit codes: 0 success; 1 the request failed or the simulator could not start; 2 usage error.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use scmb_sim::client::{Service, SimClient};
use scmb_sim::httpsim::{HttpSim, SimState};
use scmb_sim::pagerduty::{PdConfig, PdState};
use scmb_sim::pki::BrokerCertNames;
use scmb_sim::servicenow::{OauthClient, SnConfig, SnState};
use scmb_sim::sm::{SmConfig, SmState};
use scmb_sim::{Sim, SimConfig};
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(
    name = "ov-sim",
    version,
    about = "A simulated HPE OneView appliance (REST API + SCMB on a real RabbitMQ) and HP Service Manager",
    after_help = "Examples:\n  ov-sim --state ./state                 # start everything, print a ready line\n  ov-sim alert raise --state ./state --severity Critical --description 'Fan failed'\n  ov-sim storm --state ./state --count 1000 --rate 0 --critical 1 --warning 9\n  ov-sim broker restart --state ./state\n  ov-sim sm --port 13080                 # Service Manager alone
  ov-sim servicenow --port 13081         # ServiceNow alone
  ov-sim pagerduty --port 13082          # PagerDuty Events API v2 alone
  ov-sim webhook --port 13083            # a webhook receiver alone (GET /sim/requests)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct StateArg {
    /// State directory of the simulator (PKI, broker, ready file).
    #[arg(long, default_value = "./state", env = "OV_SIM_STATE")]
    state: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    state: StateArg,
    /// Address to listen on (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// HTTPS port of the OneView REST API (443 works when permitted; 0 = any free port).
    #[arg(long, default_value_t = 8443)]
    rest_port: u16,
    /// AMQPS port of the message bus (0 = any free port).
    #[arg(long, default_value_t = 5671)]
    amqps_port: u16,
    /// Port of the Service Manager simulator.
    #[arg(long, default_value_t = 13080)]
    sm_port: u16,
    /// Do not start the Service Manager simulator.
    #[arg(long)]
    no_sm: bool,
    /// Serve Service Manager over HTTPS (certificate signed by the appliance CA).
    #[arg(long)]
    sm_tls: bool,
    /// Port of the ServiceNow simulator (0 = any free port; the ready line says which).
    #[arg(long, default_value_t = 0)]
    servicenow_port: u16,
    /// Do not start the ServiceNow simulator.
    #[arg(long)]
    no_servicenow: bool,
    /// Serve ServiceNow over HTTPS (certificate signed by the appliance CA).
    #[arg(long)]
    servicenow_tls: bool,
    /// ServiceNow user as NAME:PASSWORD (repeatable; default admin:admin).
    #[arg(long = "servicenow-user", value_name = "NAME:PASSWORD")]
    servicenow_users: Vec<String>,
    /// ServiceNow OAuth client as ID:SECRET[:USER] (repeatable; default scmb-sim:secret:admin).
    #[arg(long = "servicenow-oauth-client", value_name = "ID:SECRET[:USER]")]
    servicenow_oauth_clients: Vec<String>,
    /// Lifetime of ServiceNow OAuth access tokens (e.g. 30m, 90s).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    servicenow_token_lifetime: Duration,
    /// Keep ServiceNow's tables in this JSON file across restarts.
    #[arg(long)]
    servicenow_persist: Option<PathBuf>,
    /// Port of the PagerDuty Events API v2 simulator (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pagerduty_port: u16,
    /// Do not start the PagerDuty simulator.
    #[arg(long)]
    no_pagerduty: bool,
    /// Serve PagerDuty over HTTPS (certificate signed by the appliance CA).
    #[arg(long)]
    pagerduty_tls: bool,
    /// A PagerDuty integration key that exists (32 characters, repeatable; none = any).
    #[arg(long = "pagerduty-routing-key", value_name = "KEY")]
    pagerduty_routing_keys: Vec<String>,
    /// Keep PagerDuty's events and incidents in this JSON file across restarts.
    #[arg(long)]
    pagerduty_persist: Option<PathBuf>,
    /// Do not start RabbitMQ (REST only; nothing is published).
    #[arg(long)]
    no_broker: bool,
    /// currentVersion of /rest/version (e.g. 300, 600, 4200, 8200).
    #[arg(long, default_value_t = 4200)]
    api_version: u32,
    /// minimumVersion of /rest/version.
    #[arg(long, default_value_t = 120)]
    min_api_version: u32,
    /// OneView user as NAME:PASSWORD (repeatable; default Administrator:admin123).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// Demand loginMsgAck with this login banner.
    #[arg(long)]
    login_banner: Option<String>,
    /// Session idle timeout in seconds.
    #[arg(long, default_value_t = 86_400)]
    idle_timeout: u64,
    /// Start with the EULA already accepted.
    #[arg(long)]
    eula_accepted: bool,
    /// The keypair can be downloaded without generating it first.
    #[arg(long)]
    keypair_pregenerated: bool,
    /// subjectAltNames of the broker certificate, comma-separated; "" = CN only.
    #[arg(long, default_value = "localhost,127.0.0.1")]
    broker_cert_sans: String,
    /// CN of the broker certificate.
    #[arg(long, default_value = "localhost")]
    broker_cert_cn: String,
    /// Service Manager user as NAME:PASSWORD (repeatable; default falcon with an empty password).
    #[arg(long = "sm-user", value_name = "NAME:PASSWORD")]
    sm_users: Vec<String>,
    /// Keep Service Manager incidents in this JSON file across restarts.
    #[arg(long)]
    sm_persist: Option<PathBuf>,
    /// Milliseconds the keypair generation task runs.
    #[arg(long, default_value_t = 1500)]
    task_ms: u64,
    /// Run the appliance's clock off ours, like an unsynchronised appliance: `-15m` (behind),
    /// `90s` (ahead). Every timestamp it writes and its `Date` header follow it.
    #[arg(long, value_name = "[-]DURATION", allow_hyphen_values = true, value_parser = clock_offset)]
    clock_offset: Option<i64>,
}

/// `--clock-offset`: a signed human duration, in milliseconds.
fn clock_offset(s: &str) -> Result<i64, String> {
    let (sign, d) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = humantime::parse_duration(d).map_err(|e| format!("{s:?}: {e}; write -15m, 90s, 2h"))?;
    i64::try_from(d.as_millis())
        .map(|ms| sign * ms)
        .map_err(|_| format!("{s:?}: too large"))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the simulated appliance (the default).
    Run(RunArgs),
    /// Run the Service Manager simulator alone.
    Sm(SmArgs),
    /// Run the ServiceNow simulator alone (Table API, OAuth, Event Management).
    Servicenow(ServicenowArgs),
    /// Run the PagerDuty Events API v2 simulator alone.
    Pagerduty(PagerdutyArgs),
    /// Run a webhook receiver alone: records every request (GET /sim/requests), answers 200.
    Webhook(WebhookArgs),
    /// Raise, update, clear, lock or delete alerts on a running simulator.
    #[command(subcommand)]
    Alert(AlertCmd),
    /// Raise N alerts at R per second.
    Storm(StormArgs),
    /// Expire every REST session.
    Sessions(StateArg),
    /// Make the REST API answer an error status (e.g. 503) or add latency for a while.
    RestFault(RestFaultArgs),
    /// Restart the broker.
    #[command(subcommand)]
    Broker(BrokerCmd),
    /// Regenerate the certificates (the old client certificate stops working).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Publish a raw body (possibly malformed) with any routing key.
    Publish(PublishArgs),
    /// Inject Service Manager faults (JSON, e.g. '{"latencyMs":50,"errorRate":0.1}' or
    /// '{"createGarbage":"empty","createFaultCount":1}'; '{}' clears).
    SmFault {
        #[command(flatten)]
        state: StateArg,
        json: String,
    },
    /// Print every Service Manager incident.
    Incidents(StateArg),
    /// Inject ServiceNow faults (JSON, e.g. '{"rateLimitNext":3}' or
    /// '{"createLateMs":60000,"createFaultCount":1}'; '{}' clears).
    ServicenowFault {
        #[command(flatten)]
        state: StateArg,
        json: String,
    },
    /// Inject PagerDuty faults (JSON, e.g. '{"throttleNext":2}'; '{}' clears).
    PagerdutyFault {
        #[command(flatten)]
        state: StateArg,
        json: String,
    },
    /// Print the simulator's endpoints and counters.
    Info(StateArg),
    /// Print what the bus publishes, as the appliance's CN `default` client sees it.
    Tap {
        #[command(flatten)]
        state: StateArg,
        /// Binding key (repeatable).
        #[arg(long = "route", default_value = "scmb.#")]
        routes: Vec<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum AlertCmd {
    /// Raise an alert.
    Raise(RaiseArgs),
    /// Clear an alert (Updated, newState Cleared).
    Clear {
        #[command(flatten)]
        state: StateArg,
        id: u64,
    },
    /// Lock an alert (Updated, newState Locked).
    Lock {
        #[command(flatten)]
        state: StateArg,
        id: u64,
    },
    /// Delete an alert (Deleted).
    Delete {
        #[command(flatten)]
        state: StateArg,
        id: u64,
    },
    /// Change any fields of an alert (e.g. escalate: '{"severity":"Critical"}').
    Update {
        #[command(flatten)]
        state: StateArg,
        id: u64,
        json: String,
    },
}

#[derive(Subcommand, Debug)]
enum BrokerCmd {
    Restart(StateArg),
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    Regenerate {
        #[command(flatten)]
        state: StateArg,
        /// Keep the REST API's certificate (as when the appliance's web certificate is not
        /// issued by its internal CA).
        #[arg(long)]
        keep_rest_certificate: bool,
    },
}

#[derive(Args, Debug)]
struct SmArgs {
    #[arg(long, default_value_t = 13080)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Service Manager user as NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// Keep incidents in this JSON file across restarts.
    #[arg(long)]
    persist: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServicenowArgs {
    #[arg(long, default_value_t = 13081)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// User as NAME:PASSWORD (repeatable; default admin:admin).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// OAuth client as ID:SECRET[:USER] (repeatable; default scmb-sim:secret:admin).
    #[arg(long = "oauth-client", value_name = "ID:SECRET[:USER]")]
    oauth_clients: Vec<String>,
    /// Lifetime of OAuth access tokens (e.g. 30m, 90s).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,
    /// Allow resolving and closing without close_code and close_notes (no data policy).
    #[arg(long)]
    no_close_policy: bool,
    /// Keep the tables in this JSON file across restarts.
    #[arg(long)]
    persist: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PagerdutyArgs {
    #[arg(long, default_value_t = 13082)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// An integration key that exists (32 characters, repeatable; none = any well-formed key).
    #[arg(long = "routing-key", value_name = "KEY")]
    routing_keys: Vec<String>,
    /// Also serve the API under this path (e.g. /pd: /pd/v2/enqueue).
    #[arg(long)]
    base_path: Option<String>,
    /// Keep events and incidents in this JSON file across restarts.
    #[arg(long)]
    persist: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct WebhookArgs {
    #[arg(long, default_value_t = 13083)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

#[derive(Args, Debug)]
struct RaiseArgs {
    #[command(flatten)]
    state: StateArg,
    /// OK, Warning, Critical, Unknown, Disabled.
    #[arg(long, default_value = "Critical")]
    severity: String,
    /// Active, Locked or Cleared.
    #[arg(long)]
    alert_state: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Send description: null.
    #[arg(long)]
    null_description: bool,
    #[arg(long)]
    corrective_action: Option<String>,
    /// Send correctiveAction: null.
    #[arg(long)]
    null_corrective_action: bool,
    #[arg(long)]
    health_category: Option<String>,
    #[arg(long)]
    alert_type_id: Option<String>,
    /// Name of the associated resource.
    #[arg(long)]
    resource_name: Option<String>,
    /// Any other fields, as a JSON object.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args, Debug)]
struct StormArgs {
    #[command(flatten)]
    state: StateArg,
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Alerts per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Weight of Critical alerts.
    #[arg(long, default_value_t = 1)]
    critical: u64,
    /// Weight of Warning alerts.
    #[arg(long, default_value_t = 0)]
    warning: u64,
    /// Weight of OK alerts.
    #[arg(long, default_value_t = 0)]
    ok: u64,
    /// Weight of Active alerts (OK alerts are always created Cleared).
    #[arg(long, default_value_t = 1)]
    active: u64,
    /// Weight of Locked alerts.
    #[arg(long, default_value_t = 0)]
    locked: u64,
}

#[derive(Args, Debug)]
struct RestFaultArgs {
    #[command(flatten)]
    state: StateArg,
    /// Status to answer (e.g. 503); none = latency only.
    #[arg(long)]
    status: Option<u16>,
    /// For how long.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Latency added to every call.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Only calls with this HTTP method (e.g. PUT); default all.
    #[arg(long)]
    method: Option<String>,
    /// Answer an HTML page instead of JSON.
    #[arg(long)]
    html: bool,
    /// Clear the fault.
    #[arg(long)]
    clear: bool,
}

#[derive(Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    state: StateArg,
    /// The routing key, as text (bytes that are not UTF-8: --routing-key-hex).
    #[arg(long, required_unless_present = "routing_key_hex")]
    routing_key: Option<String>,
    /// The routing key as hex bytes, for keys that are not UTF-8 (e.g. 73636d622eff).
    #[arg(long, conflicts_with = "routing_key")]
    routing_key_hex: Option<String>,
    /// scmb or msmb.
    #[arg(long, default_value = "scmb")]
    exchange: String,
    /// Read the body from this file ('-' = stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The body as text.
    #[arg(long)]
    body: Option<String>,
}

fn pairs(list: &[String], default: (&str, &str)) -> anyhow::Result<HashMap<String, String>> {
    if list.is_empty() {
        return Ok(HashMap::from([(
            default.0.to_string(),
            default.1.to_string(),
        )]));
    }
    list.iter()
        .map(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .with_context(|| format!("{s:?}: expected NAME:PASSWORD"))
        })
        .collect()
}

/// `ID:SECRET[:USER]` OAuth clients (default `scmb-sim:secret:admin`).
fn oauth_clients(list: &[String]) -> anyhow::Result<HashMap<String, OauthClient>> {
    if list.is_empty() {
        return Ok(SnConfig::default().oauth_clients);
    }
    list.iter()
        .map(|s| {
            let mut parts = s.splitn(3, ':');
            let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
                bail!("{s:?}: expected ID:SECRET[:USER]");
            };
            let user = parts.next().unwrap_or("admin").to_string();
            Ok((
                id.to_string(),
                OauthClient {
                    secret: secret.to_string(),
                    user,
                },
            ))
        })
        .collect()
}

/// Serves one HTTP simulator alone until SIGTERM/SIGINT, after printing its ready line.
async fn run_alone<D: HttpSim>(
    name: &str,
    bind: IpAddr,
    port: u16,
    st: Arc<SimState<D>>,
) -> anyhow::Result<()> {
    let addr = std::net::SocketAddr::new(bind, port);
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = l.local_addr().unwrap_or(addr);
    let stop = shutdown_signal();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let gate = Some(st.gate());
    let server = tokio::spawn(scmb_sim::serve::serve(l, None, D::router(st), rx, gate));
    println!("ov-sim {name} ready: {name}=http://{local}");
    stop.await;
    let _ = tx.send(true);
    server.abort();
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is
/// first polled: a signal right after the ready line must stop the simulator cleanly, not
/// kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(int) => {}
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut cfg = SimConfig::new(&a.state.state);
    cfg.bind = a.bind;
    cfg.rest_port = a.rest_port;
    cfg.amqps_port = a.amqps_port;
    cfg.broker = !a.no_broker;
    cfg.sm_port = (!a.no_sm).then_some(a.sm_port);
    cfg.sm_tls = a.sm_tls;
    cfg.keypair_pregenerated = a.keypair_pregenerated;
    cfg.ov.current_version = a.api_version;
    cfg.ov.minimum_version = a.min_api_version;
    cfg.ov.users = pairs(&a.users, ("Administrator", "admin123"))?;
    cfg.ov.login_banner = a.login_banner;
    cfg.ov.idle_timeout = Duration::from_secs(a.idle_timeout.max(1));
    cfg.ov.eula_pending = !a.eula_accepted;
    cfg.ov.task_duration = Duration::from_millis(a.task_ms);
    cfg.ov.clock_offset_ms = a.clock_offset.unwrap_or(0);
    cfg.sm.users = pairs(&a.sm_users, ("falcon", ""))?;
    cfg.sm.persist = a.sm_persist;
    cfg.servicenow_port = (!a.no_servicenow).then_some(a.servicenow_port);
    cfg.servicenow_tls = a.servicenow_tls;
    cfg.servicenow.users = pairs(&a.servicenow_users, ("admin", "admin"))?;
    cfg.servicenow.oauth_clients = oauth_clients(&a.servicenow_oauth_clients)?;
    cfg.servicenow.token_lifetime = a.servicenow_token_lifetime;
    cfg.servicenow.persist = a.servicenow_persist;
    cfg.pagerduty_port = (!a.no_pagerduty).then_some(a.pagerduty_port);
    cfg.pagerduty_tls = a.pagerduty_tls;
    cfg.pagerduty.routing_keys = a.pagerduty_routing_keys;
    cfg.pagerduty.persist = a.pagerduty_persist;
    cfg.broker_names = BrokerCertNames {
        common_name: a.broker_cert_cn,
        sans: a
            .broker_cert_sans
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if a.min_api_version > a.api_version {
        bail!(
            "--min-api-version {} is above --api-version {}",
            a.min_api_version,
            a.api_version
        );
    }
    let stop = shutdown_signal();
    let sim = Sim::start(cfg)
        .await
        .context("cannot start the simulated appliance")?;
    println!("{}", sim.ready_line());
    stop.await;
    tracing::info!("shutting down");
    sim.stop().await;
    Ok(())
}

async fn run_sm(a: SmArgs) -> anyhow::Result<()> {
    let cfg = SmConfig {
        users: pairs(&a.users, ("falcon", ""))?,
        persist: a.persist,
        ..SmConfig::default()
    };
    run_alone("sm", a.bind, a.port, SmState::new(cfg)).await
}

async fn run_servicenow(a: ServicenowArgs) -> anyhow::Result<()> {
    let cfg = SnConfig {
        users: pairs(&a.users, ("admin", "admin"))?,
        oauth_clients: oauth_clients(&a.oauth_clients)?,
        token_lifetime: a.token_lifetime,
        require_close_fields: !a.no_close_policy,
        persist: a.persist,
        ..SnConfig::default()
    };
    run_alone("servicenow", a.bind, a.port, SnState::new(cfg)).await
}

async fn run_pagerduty(a: PagerdutyArgs) -> anyhow::Result<()> {
    let cfg = PdConfig {
        routing_keys: a.routing_keys,
        base_path: a.base_path,
        persist: a.persist,
    };
    run_alone("pagerduty", a.bind, a.port, PdState::new(cfg)).await
}

async fn run_webhook(a: WebhookArgs) -> anyhow::Result<()> {
    let st = scmb_sim::webhook::WebhookState::new(scmb_sim::webhook::WebhookConfig::default());
    run_alone("webhook", a.bind, a.port, st).await
}

fn client(state: &StateArg) -> anyhow::Result<SimClient> {
    let ready = scmb_sim::sim::read_ready(&state.state).map_err(anyhow::Error::msg)?;
    SimClient::from_ready(&ready).map_err(anyhow::Error::msg)
}

fn parse_object(s: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(s).context("invalid JSON")? {
        Value::Object(m) => Ok(m),
        _ => bail!("expected a JSON object"),
    }
}

async fn show(r: Result<Value, String>) -> anyhow::Result<()> {
    let v = r.map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

fn body(v: Value) -> Option<Vec<u8>> {
    serde_json::to_vec(&v).ok()
}

/// `POST /sim/faults` on one of the HTTP simulators, with the faults given as JSON.
async fn set_faults(state: &StateArg, service: Service, json: &str) -> anyhow::Result<()> {
    let f = body(Value::Object(parse_object(json)?));
    show(
        client(state)?
            .call_service(service, Method::POST, "/sim/faults", f)
            .await,
    )
    .await
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => run(a).await,
        Cmd::Sm(a) => run_sm(a).await,
        Cmd::Servicenow(a) => run_servicenow(a).await,
        Cmd::Pagerduty(a) => run_pagerduty(a).await,
        Cmd::Webhook(a) => run_webhook(a).await,
        Cmd::ServicenowFault { state, json } => {
            set_faults(&state, Service::ServiceNow, &json).await
        }
        Cmd::PagerdutyFault { state, json } => set_faults(&state, Service::PagerDuty, &json).await,
        Cmd::Alert(AlertCmd::Raise(a)) => {
            let mut f = match &a.json {
                Some(j) => parse_object(j)?,
                None => Map::new(),
            };
            f.insert("severity".into(), json!(a.severity));
            let mut set = |k: &str, v: Option<String>, null: bool| {
                if null {
                    f.insert(k.into(), Value::Null);
                } else if let Some(v) = v {
                    f.insert(k.into(), json!(v));
                }
            };
            set("alertState", a.alert_state, false);
            set("description", a.description, a.null_description);
            set(
                "correctiveAction",
                a.corrective_action,
                a.null_corrective_action,
            );
            set("healthCategory", a.health_category, false);
            set("alertTypeID", a.alert_type_id, false);
            if let Some(n) = a.resource_name {
                f.insert("associatedResource".into(), json!({"resourceName": n}));
            }
            show(
                client(&a.state)?
                    .call(Method::POST, "/sim/alerts", body(Value::Object(f)))
                    .await,
            )
            .await
        }
        Cmd::Alert(AlertCmd::Clear { state, id }) => {
            show(
                client(&state)?
                    .call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
                    .await,
            )
            .await
        }
        Cmd::Alert(AlertCmd::Lock { state, id }) => {
            show(
                client(&state)?
                    .call(Method::POST, &format!("/sim/alerts/{id}/lock"), None)
                    .await,
            )
            .await
        }
        Cmd::Alert(AlertCmd::Delete { state, id }) => {
            show(
                client(&state)?
                    .call(Method::DELETE, &format!("/sim/alerts/{id}"), None)
                    .await,
            )
            .await
        }
        Cmd::Alert(AlertCmd::Update { state, id, json }) => {
            let f = parse_object(&json)?;
            show(
                client(&state)?
                    .call(
                        Method::PATCH,
                        &format!("/sim/alerts/{id}"),
                        body(Value::Object(f)),
                    )
                    .await,
            )
            .await
        }
        Cmd::Storm(a) => {
            let req = json!({"count": a.count, "rate": a.rate,
                "severities": {"Critical": a.critical, "Warning": a.warning, "OK": a.ok},
                "states": {"Active": a.active, "Locked": a.locked}});
            show(
                client(&a.state)?
                    .call(Method::POST, "/sim/storm", body(req))
                    .await,
            )
            .await
        }
        Cmd::Sessions(s) => {
            show(
                client(&s)?
                    .call(Method::POST, "/sim/sessions/expire", None)
                    .await,
            )
            .await
        }
        Cmd::RestFault(a) => {
            let c = client(&a.state)?;
            if a.clear {
                return show(c.call(Method::DELETE, "/sim/faults/rest", None).await).await;
            }
            let req = json!({"status": a.status, "seconds": a.seconds, "latencyMs": a.latency_ms, "html": a.html, "method": a.method});
            show(c.call(Method::POST, "/sim/faults/rest", body(req)).await).await
        }
        Cmd::Broker(BrokerCmd::Restart(s)) => {
            show(
                client(&s)?
                    .call(Method::POST, "/sim/broker/restart", None)
                    .await,
            )
            .await
        }
        Cmd::Certs(CertsCmd::Regenerate {
            state,
            keep_rest_certificate,
        }) => {
            let path = if keep_rest_certificate {
                "/sim/certificates/regenerate?keepRestCertificate=true"
            } else {
                "/sim/certificates/regenerate"
            };
            show(client(&state)?.call(Method::POST, path, None).await).await
        }
        Cmd::Publish(a) => {
            let data = match (&a.file, &a.body) {
                (Some(f), _) if f.as_os_str() == "-" => {
                    let mut b = Vec::new();
                    std::io::stdin().read_to_end(&mut b)?;
                    b
                }
                (Some(f), _) => {
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, Some(b)) => b.clone().into_bytes(),
                (None, None) => bail!("give --file or --body"),
            };
            let mut query = form_urlencoded::Serializer::new(String::new());
            match (&a.routing_key, &a.routing_key_hex) {
                (_, Some(hex)) => query.append_pair("routingKeyHex", hex),
                (Some(key), None) => query.append_pair("routingKey", key),
                (None, None) => bail!("give --routing-key or --routing-key-hex"),
            };
            let path = format!(
                "/sim/publish?{}",
                query.append_pair("exchange", &a.exchange).finish()
            );
            let c = client(&a.state)?;
            let resp = c
                .http
                .post(format!("{}{path}", c.rest_url))
                .body(data)
                .send()
                .await
                .context("publish")?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{status}: {text}");
            }
            println!("{text}");
            Ok(())
        }
        Cmd::SmFault { state, json } => set_faults(&state, Service::Sm, &json).await,
        Cmd::Incidents(s) => {
            show(
                client(&s)?
                    .call_sm(Method::GET, "/sim/incidents", None)
                    .await,
            )
            .await
        }
        Cmd::Tap {
            state,
            routes,
            count,
        } => {
            let ready = scmb_sim::sim::read_ready(&state.state).map_err(anyhow::Error::msg)?;
            let pki = state.state.join("pki");
            let target = scmb_sim::bus::BusTarget {
                host: "localhost".into(),
                port: ready["amqpsPort"]
                    .as_u64()
                    .context("ready file has no amqpsPort")? as u16,
                ca: pki.join("ca.pem"),
                cert: pki.join("client-default.pem"),
                key: pki.join("client-default-key.pem"),
            };
            let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
            let mut q = scmb_sim::testkit::TestConsumer::bind(&target, "scmb", &routes)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "ov-sim tap: queue {} bound to scmb with {routes:?}",
                q.queue
            );
            let mut n = 0;
            while count.is_none_or(|c| n < c) {
                let Some((key, body)) = q.next(Duration::from_secs(60)).await else {
                    if !q.conn.is_open() {
                        bail!("the connection to the broker was lost");
                    }
                    continue;
                };
                println!("{key} {}", String::from_utf8_lossy(&body));
                n += 1;
            }
            Ok(())
        }
        Cmd::Info(s) => {
            let c = client(&s)?;
            let mut info = c
                .call(Method::GET, "/sim/info", None)
                .await
                .map_err(anyhow::Error::msg)?;
            info["stats"] = c
                .call(Method::GET, "/sim/stats", None)
                .await
                .map_err(anyhow::Error::msg)?;
            show(Ok(info)).await
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ov-sim: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let cmd = cli.cmd.unwrap_or(Cmd::Run(cli.run));
    match rt.block_on(dispatch(cmd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ov-sim: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
