//! A private RabbitMQ node configured like an appliance's message bus: AMQPS only, on loopback,
//! TLS 1.2+ with `verify_peer` + `fail_if_no_peer_cert`, SASL EXTERNAL with the certificate CN as
//! user, topic exchanges `scmb` and `msmb`, a read-only CN `default` user and the simulator's
//! admin user, all booted from a definitions file.
//!
//! The node runs as a child process with every file (config, mnesia, logs, pid, Erlang cookie)
//! under its own directory, with its own node name and distribution port, so it never touches a
//! system-wide RabbitMQ. The pid we spawn *is* the Erlang VM (the start script `exec`s it when
//! `RABBITMQ_ALLOW_INPUT` is set), so it is stopped by that pid, and it gets SIGTERM from the
//! kernel if the simulator dies first (`PR_SET_PDEATHSIG`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::bus::BusTarget;
use crate::pki::{PkiPaths, ADMIN_CN, CLIENT_CN};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ is not installed ({0} not found): run scripts/install-deps or `apt-get install rabbitmq-server`")]
    NotInstalled(String),
    #[error("cannot write the broker configuration under {path}: {source}")]
    Config {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start RabbitMQ: {0}")]
    Spawn(std::io::Error),
    #[error("RabbitMQ exited during start-up ({status}); last log lines from {log}:\n{tail}")]
    Exited {
        status: String,
        log: String,
        tail: String,
    },
    #[error("RabbitMQ did not accept AMQPS connections on 127.0.0.1:{port} within {secs} s; see the logs under {log}")]
    Timeout { port: u16, secs: u64, log: String },
}

/// How to run the node.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The node's own directory (config, mnesia, logs, cookie).
    pub dir: PathBuf,
    /// AMQPS port on 127.0.0.1.
    pub port: u16,
    /// The RabbitMQ start script.
    pub server_script: PathBuf,
    /// How long to wait for the node to accept connections.
    pub start_timeout: Duration,
    /// Run as a relay target (an enterprise RabbitMQ) instead of an appliance's bus.
    pub relay: Option<RelayNode>,
}

/// A node configured as an enterprise RabbitMQ that scmb relays to: AMQPS on the port (a
/// client certificate optional), SASL PLAIN for `user` and EXTERNAL for the admin
/// certificate, plain AMQP on `plain_port`, the topic exchange `exchange`; its database kept
/// across a restart (durable queues and persistent messages survive it).
#[derive(Debug, Clone)]
pub struct RelayNode {
    pub plain_port: u16,
    pub user: String,
    pub password: String,
    pub exchange: String,
}

/// RabbitMQ's `rabbit_password_hashing_sha256` of `password`: base64(salt ++
/// sha256(salt ++ password)).
fn password_hash(password: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let salt: [u8; 4] = rand::random();
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

impl BrokerConfig {
    pub fn new(dir: PathBuf, port: u16) -> Self {
        BrokerConfig {
            dir,
            port,
            server_script: default_server_script(),
            start_timeout: Duration::from_secs(60),
            relay: None,
        }
    }
}

/// Finds RabbitMQ's start script: `$SCMB_RABBITMQ_SERVER`, Debian's location, or the PATH.
pub fn default_server_script() -> PathBuf {
    if let Some(p) = std::env::var_os("SCMB_RABBITMQ_SERVER") {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.exists() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("rabbitmq-server"))
                .find(|p| p.exists())
        })
        .unwrap_or(debian)
}

/// Finds `epmd`, the Erlang port mapper, which the node needs.
fn epmd_binary() -> PathBuf {
    let candidates = [
        PathBuf::from("/usr/lib/erlang/bin/epmd"),
        PathBuf::from("/usr/bin/epmd"),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("epmd"))
}

/// A running (or stopped) node.
#[derive(Debug)]
pub struct BrokerHandle {
    pub cfg: BrokerConfig,
    pki: PkiPaths,
    child: Mutex<Option<Child>>,
    /// A private epmd on loopback, so no daemon is left behind and no other Erlang node shares it.
    epmd: Mutex<Option<(Child, u16)>>,
}

/// Sets up a child so that it dies with us and sits in a process group of its own (a Ctrl-C
/// in the terminal reaches the simulator, which then stops the node in order).
fn guard_child(cmd: &mut Command) {
    cmd.process_group(0).kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

fn write(path: &Path, text: &str) -> Result<(), BrokerError> {
    std::fs::write(path, text).map_err(|source| BrokerError::Config {
        path: path.to_path_buf(),
        source,
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(25672)
}

impl BrokerHandle {
    /// Writes the configuration and starts the node; returns once it accepts AMQPS connections
    /// from the admin identity.
    pub async fn start(
        mut cfg: BrokerConfig,
        pki: PkiPaths,
    ) -> Result<Arc<BrokerHandle>, BrokerError> {
        // The node's HOME and working directory are both `dir`: it must not be relative.
        if let Ok(abs) = std::path::absolute(&cfg.dir) {
            cfg.dir = abs;
        }
        if !cfg.server_script.exists() {
            return Err(BrokerError::NotInstalled(
                cfg.server_script.display().to_string(),
            ));
        }
        let h = Arc::new(BrokerHandle {
            cfg,
            pki,
            child: Mutex::new(None),
            epmd: Mutex::new(None),
        });
        h.boot().await?;
        Ok(h)
    }

    /// Where the publisher connects and as whom.
    pub fn admin_target(&self) -> BusTarget {
        BusTarget {
            host: "localhost".into(),
            port: self.cfg.port,
            ca: self.pki.ca_cert.clone(),
            cert: self.pki.admin_cert.clone(),
            key: self.pki.admin_key.clone(),
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.cfg.dir.join("log")
    }

    pub async fn pid(&self) -> Option<u32> {
        self.child.lock().await.as_ref().and_then(Child::id)
    }

    fn write_config(&self) -> Result<(), BrokerError> {
        if let Some(r) = &self.cfg.relay {
            return self.write_relay_config(r);
        }
        let dir = &self.cfg.dir;
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|source| BrokerError::Config {
                path: dir.join(sub),
                source,
            })?;
        }
        let p = &self.pki;
        let conf = format!(
            "# Written by ov-sim: an appliance-like SCMB broker, loopback only.\n\
             listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             auth_mechanisms.1 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n\
             load_definitions = {defs}\n\
             log.file = rabbit.log\n\
             log.file.level = info\n\
             log.console = false\n\
             disk_free_limit.absolute = 50MB\n\
             heartbeat = 60\n",
            port = self.cfg.port,
            ca = p.ca_cert.display(),
            cert = p.broker_cert.display(),
            key = p.broker_key.display(),
            defs = dir.join("definitions.json").display(),
        );
        write(&dir.join("rabbitmq.conf"), &conf)?;
        write(
            &dir.join("enabled_plugins"),
            "[rabbitmq_auth_mechanism_ssl].\n",
        )?;
        // Empty on purpose: shadows the system-wide /etc/rabbitmq/rabbitmq-env.conf.
        write(&dir.join("rabbitmq-env.conf"), "")?;
        let defs = serde_json::json!({
            "vhosts": [{"name": "/"}],
            "users": [
                {"name": CLIENT_CN, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
                {"name": ADMIN_CN, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}
            ],
            "permissions": [
                // Read-only like an appliance's client: server-named queues only, bind them to
                // scmb/msmb, consume; no publishing, no named queues.
                {"user": CLIENT_CN, "vhost": "/", "configure": "^amq\\.gen-.*",
                 "write": "^amq\\.gen-.*", "read": "^(amq\\.gen-.*|scmb|msmb)$"},
                {"user": ADMIN_CN, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
            ],
            "exchanges": [
                {"name": "scmb", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}},
                {"name": "msmb", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
            ],
            "queues": [], "bindings": []
        });
        write(
            &dir.join("definitions.json"),
            &serde_json::to_string_pretty(&defs).unwrap_or_default(),
        )
    }

    fn write_relay_config(&self, r: &RelayNode) -> Result<(), BrokerError> {
        let dir = &self.cfg.dir;
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|source| BrokerError::Config {
                path: dir.join(sub),
                source,
            })?;
        }
        let p = &self.pki;
        let conf = format!(
            "# Written by ov-sim: a relay target, loopback only.\n\
             listeners.tcp.default = 127.0.0.1:{plain}\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n\
             loopback_users = none\n\
             load_definitions = {defs}\n\
             log.file = rabbit.log\n\
             log.file.level = info\n\
             log.console = false\n\
             disk_free_limit.absolute = 50MB\n\
             heartbeat = 60\n",
            plain = r.plain_port,
            port = self.cfg.port,
            ca = p.ca_cert.display(),
            cert = p.broker_cert.display(),
            key = p.broker_key.display(),
            defs = dir.join("definitions.json").display(),
        );
        write(&dir.join("rabbitmq.conf"), &conf)?;
        write(
            &dir.join("enabled_plugins"),
            "[rabbitmq_auth_mechanism_ssl].\n",
        )?;
        write(&dir.join("rabbitmq-env.conf"), "")?;
        let defs = serde_json::json!({
            "vhosts": [{"name": "/"}],
            "users": [
                {"name": r.user, "password_hash": password_hash(&r.password), "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
                {"name": ADMIN_CN, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}
            ],
            "permissions": [
                {"user": r.user, "vhost": "/", "configure": ".*", "write": ".*", "read": ""},
                {"user": ADMIN_CN, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
            ],
            "exchanges": [
                {"name": r.exchange, "vhost": "/", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
            ],
            "queues": [], "bindings": []
        });
        write(
            &dir.join("definitions.json"),
            &serde_json::to_string_pretty(&defs).unwrap_or_default(),
        )
    }

    async fn ensure_epmd(&self) -> Result<u16, BrokerError> {
        let mut guard = self.epmd.lock().await;
        if let Some((child, port)) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(*port);
            }
        }
        let port = free_port();
        let mut cmd = Command::new(epmd_binary());
        cmd.args(["-port", &port.to_string(), "-address", "127.0.0.1"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        guard_child(&mut cmd);
        let child = cmd.spawn().map_err(BrokerError::Spawn)?;
        // epmd answers within milliseconds; wait until it listens so the node finds it.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *guard = Some((child, port));
        Ok(port)
    }

    async fn boot(&self) -> Result<(), BrokerError> {
        self.write_config()?;
        let dir = &self.cfg.dir;
        // Definitions are only ever added on boot; start from an empty database so the node
        // holds exactly what the definitions file says (a cold boot costs what a warm one does).
        // A relay target keeps its database: its durable queues survive a restart.
        if self.cfg.relay.is_none() {
            let _ = std::fs::remove_dir_all(dir.join("mnesia"));
        }
        let _ = std::fs::create_dir_all(dir.join("mnesia"));
        let _ = std::fs::create_dir_all(dir.join("conf.d"));
        let epmd_port = self.ensure_epmd().await?;
        let node = format!("ovsim{}", self.cfg.port);
        let dist_port = free_port();
        let stdout = std::fs::File::create(dir.join("stdout.log")).map_err(|source| {
            BrokerError::Config {
                path: dir.join("stdout.log"),
                source,
            }
        })?;
        let stderr = stdout.try_clone().map_err(BrokerError::Spawn)?;
        let mut cmd = Command::new(&self.cfg.server_script);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", dir.join("conf.d"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_MNESIA_DIR", dir.join("mnesia").join(&node))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .env("RABBITMQ_NODENAME", format!("{node}@localhost"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            // With input allowed the start script `exec`s the VM: our child pid is beam.smp.
            .env("RABBITMQ_ALLOW_INPUT", "true")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-noinput +B i -kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        guard_child(&mut cmd);
        let child = cmd.spawn().map_err(BrokerError::Spawn)?;
        tracing::info!(pid = child.id(), port = self.cfg.port, dir = %dir.display(), "RabbitMQ starting");
        *self.child.lock().await = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + self.cfg.start_timeout;
        let target = self.admin_target();
        loop {
            if let Some(child) = self.child.lock().await.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // Early boot errors only reach stdout; later ones the log file.
                    let log = [
                        self.log_dir().join("rabbit.log"),
                        self.cfg.dir.join("stdout.log"),
                    ]
                    .into_iter()
                    .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
                    .unwrap_or_else(|| self.cfg.dir.join("stdout.log"));
                    let tail = std::fs::read_to_string(&log)
                        .map(|t| {
                            let lines: Vec<&str> = t.lines().collect();
                            lines[lines.len().saturating_sub(15)..].join("\n")
                        })
                        .unwrap_or_else(|_| "(no log)".into());
                    return Err(BrokerError::Exited {
                        status: status.to_string(),
                        log: log.display().to_string(),
                        tail,
                    });
                }
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.cfg.port))
                .await
                .is_ok()
                && amqp_probe(&target).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BrokerError::Timeout {
                    port: self.cfg.port,
                    secs: self.cfg.start_timeout.as_secs(),
                    log: self.log_dir().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the node we started, by its pid: SIGTERM, then SIGKILL after 20 s.
    pub async fn stop(&self) {
        let mut guard = self.child.lock().await;
        let Some(mut child) = guard.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            tracing::info!(pid, "stopping RabbitMQ");
            // SAFETY: plain syscall on the pid of our own child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(pid, "RabbitMQ ignored SIGTERM, killing it");
                let _ = child.kill().await;
            }
        }
    }

    /// Stops the node and its private epmd.
    pub async fn shutdown(&self) {
        self.stop().await;
        if let Some((mut child, _)) = self.epmd.lock().await.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops and starts the node again (same configuration, same PKI files on disk).
    pub async fn restart(&self) -> Result<(), BrokerError> {
        self.stop().await;
        self.boot().await
    }
}

/// Whether a full AMQP connection with the admin identity opens.
async fn amqp_probe(target: &BusTarget) -> bool {
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let Ok(tls) = crate::bus::tls_adaptor(target) else {
        return false;
    };
    let args = OpenConnectionArguments::new(&target.host, target.port, "", "")
        .credentials(amqprs::security::SecurityCredentials::new_external())
        .tls_adaptor(tls)
        .finish();
    match tokio::time::timeout(Duration::from_secs(3), Connection::open(&args)).await {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            true
        }
        _ => false,
    }
}
