//! `scmb run` as a service is run: a config file of the test's own (one appliance on a
//! simulator, admitting the alerts of one fresh alert type, with the sink tables the test
//! gives), its state directory and metrics address; started and waited on until `/readyz`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scmb_sim::testkit::{temp_dir, SimInfo};

use super::{appliance, download_certs, free_port, get, wait_until, Listening};

/// How long `scmb run` may take to connect.
pub const READY: Duration = Duration::from_secs(120);

/// Proxy variables a test machine may have: the tests talk to loopback, directly.
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// One `scmb run`'s config, state and metrics address.
pub struct ScmbRun {
    /// The appliance's name in the config (and so in `correlation_id`s and dedup keys).
    pub name: String,
    /// The alert type (a prefix) its filter admits.
    pub tag: String,
    /// The test's directory: the config, and the state under `state/`.
    pub dir: PathBuf,
    pub config: PathBuf,
    /// `http://127.0.0.1:PORT`, serving `/metrics` and `/readyz`.
    pub metrics: String,
}

impl ScmbRun {
    /// A config in a fresh directory named after `test`, with the simulator's certificates
    /// downloaded for it; see [`ScmbRun::write`].
    pub fn new(
        test: &str,
        sim: &SimInfo,
        name: &str,
        tag: &str,
        filter: &str,
        sinks: &str,
    ) -> Self {
        let dir = temp_dir(test);
        let certs = download_certs(&sim.rest_url, &format!("{test}-certs"));
        Self::write(dir, sim, &certs, name, tag, filter, sinks)
    }

    /// Writes `dir/scmb.toml`: state in `dir/state`, metrics on a free port, one appliance
    /// `name` on `sim` (certificates in `certs`) whose `[appliance.filter]` admits the alert
    /// types `tag*` and whatever `filter` adds; `sinks` (the sink tables) follows verbatim.
    pub fn write(
        dir: PathBuf,
        sim: &SimInfo,
        certs: &Path,
        name: &str,
        tag: &str,
        filter: &str,
        sinks: &str,
    ) -> Self {
        let port = free_port();
        let config = dir.join("scmb.toml");
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
[metrics]
listen = "127.0.0.1:{port}"
[[appliance]]
name = "{name}"
address = "{addr}"
password_env = "OV_PASSWORD"
cert_dir = "{certs}"
amqp_port = {amqp}
[appliance.filter]
alert_types = ["{tag}*"]
{filter}
{sinks}
"#,
                state = dir.join("state").display(),
                addr = appliance(&sim.rest_url),
                certs = certs.display(),
                amqp = sim.amqps_port,
            ),
        )
        .expect("config");
        ScmbRun {
            name: name.to_string(),
            tag: tag.to_string(),
            dir,
            config,
            metrics: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A second instance of the same service: the same appliance, filter and sinks, with a
    /// state directory and a metrics address of its own (an HA pair on separate disks).
    pub fn second(&self, test: &str) -> Self {
        let dir = temp_dir(test);
        let port = free_port();
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text
            .replace(
                &format!("state_dir = \"{}\"", self.dir.join("state").display()),
                &format!("state_dir = \"{}\"", dir.join("state").display()),
            )
            .replace(
                &format!(
                    "listen = \"{}\"",
                    self.metrics.trim_start_matches("http://")
                ),
                &format!("listen = \"127.0.0.1:{port}\""),
            );
        let config = dir.join("scmb.toml");
        std::fs::write(&config, text).expect("config");
        ScmbRun {
            name: self.name.clone(),
            tag: self.tag.clone(),
            dir,
            config,
            metrics: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `scmb ARGS` with the OneView password in `$OV_PASSWORD`, `RUST_LOG=info`, then `env`,
    /// and no proxy variables.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut all = vec![("OV_PASSWORD", "admin123"), ("RUST_LOG", "info")];
        all.extend_from_slice(env);
        let mut c = super::command(args, &all);
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        c
    }

    /// Starts `scmb run --config` and waits until its bus is connected (`/readyz`).
    pub async fn start(&self, env: &[(&str, &str)]) -> Listening {
        let l = Listening::spawn(self.command(
            &["run", "--config", self.config.to_str().expect("utf8")],
            env,
        ));
        let ready = wait_until(READY, || async {
            get(&format!("{}/readyz", self.metrics)).await.0 == 200
        })
        .await;
        assert!(ready, "scmb run never became ready: {:?}", l.stderr);
        l
    }

    /// The text of its `/metrics`.
    pub async fn metrics_text(&self) -> String {
        get(&format!("{}/metrics", self.metrics)).await.1
    }

    /// The value of a series of its appliance, with `sink`'s label where the series has one
    /// (`scmb_sink_*`: `sink`, `scmb_retries_total`: `target`); 0 when absent.
    pub async fn sink_metric(&self, name: &str, sink: &str) -> u64 {
        let labels = if name.starts_with("scmb_sink_") {
            format!("{{appliance=\"{}\",sink=\"{sink}\"}}", self.name)
        } else if name == "scmb_retries_total" {
            format!("{{appliance=\"{}\",target=\"{sink}\"}}", self.name)
        } else {
            format!("{{appliance=\"{}\"}}", self.name)
        };
        super::metric(&self.metrics_text().await, &format!("{name}{labels}"))
    }

    /// Its store (what it did for each alert).
    pub fn store(&self) -> PathBuf {
        self.dir.join("state").join(&self.name).join("scmb.redb")
    }
}

/// The sum of a metric's series (every label set), 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
