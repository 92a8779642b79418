//! The Alertmanager sink end to end: `scmb run` (a real process) against the simulated
//! appliance (its REST API and its real RabbitMQ, shared by the tests of this binary) and a
//! REAL Prometheus Alertmanager of each test's own (Debian's `prometheus-alertmanager`,
//! installed by `scripts/install-deps`), started here on a free loopback port with its own
//! `--storage.path` and a minimal config, clustering off, and killed by its pid at the end.
//! Every result is read back through Alertmanager's own `GET /api/v2/alerts`, and every wait
//! is on a state (its alerts, their `updatedAt`, a metric), never on a log line.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::run::ScmbRun;
use common::{appliance, free_port, get, raise, Listening};
use scmb_sim::testkit::{shared_sim, temp_dir, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const NAME: &str = "east";

/// Alertmanager's binary: `$SCMB_ALERTMANAGER`, else Debian's, else upstream's name.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SCMB_ALERTMANAGER") {
        return p.into();
    }
    for p in [
        "/usr/bin/prometheus-alertmanager",
        "/usr/local/bin/alertmanager",
        "/usr/bin/alertmanager",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("Prometheus Alertmanager is not installed: run scripts/install-deps (Debian package prometheus-alertmanager), or set SCMB_ALERTMANAGER to its binary");
}

/// A real Alertmanager of one test: its directory (config, storage), its port, its process.
struct Alertmanager {
    dir: PathBuf,
    port: u16,
    url: String,
    resolve_timeout: String,
    /// Its `--web.config.file` (Basic authentication), when it has one.
    web: Option<String>,
    child: Option<Child>,
}

impl Alertmanager {
    /// Starts one with `global.resolve_timeout` = `resolve_timeout` and waits until ready.
    async fn start(test: &str, resolve_timeout: &str) -> Alertmanager {
        Alertmanager::start_with(test, resolve_timeout, None).await
    }

    /// [`Alertmanager::start`] with a web config (`web`, YAML: Basic authentication).
    async fn start_with(test: &str, resolve_timeout: &str, web: Option<&str>) -> Alertmanager {
        let port = free_port();
        let mut am = Alertmanager {
            dir: temp_dir(&format!("{test}-am")),
            port,
            url: format!("http://127.0.0.1:{port}"),
            resolve_timeout: resolve_timeout.to_string(),
            web: web.map(str::to_string),
            child: None,
        };
        am.up().await;
        am
    }

    /// (Re)starts the process on the same port and storage, and waits until it is ready.
    async fn up(&mut self) {
        let config = self.dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  resolve_timeout: {}\nroute:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
                self.resolve_timeout
            ),
        )
        .expect("alertmanager config");
        let log = std::fs::File::create(self.dir.join("alertmanager.log")).expect("log");
        let mut cmd = Command::new(binary());
        if let Some(web) = &self.web {
            let path = self.dir.join("web.yml");
            std::fs::write(&path, web).expect("web config");
            cmd.arg(format!("--web.config.file={}", path.display()));
        }
        let child = cmd
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            // No gossip: nothing listens beyond the one loopback port.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start alertmanager");
        self.child = Some(child);
        let url = self.url.clone();
        let ready = common::wait_until(WAIT, || {
            let url = url.clone();
            // 401 when it asks for credentials: up all the same.
            async move { matches!(get(&format!("{url}/-/ready")).await.0, 200 | 401) }
        })
        .await;
        assert!(ready, "Alertmanager never became ready: {}", self.log());
    }

    /// Kills the process (by its pid) and waits for it.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("alertmanager.log")).unwrap_or_default()
    }

    /// Its unresolved alerts (`GET /api/v2/alerts`: resolved ones are not listed).
    async fn alerts(&self) -> Vec<Value> {
        let (code, body) = get(&format!("{}/api/v2/alerts", self.url)).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body)
            .expect("alerts")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The alert of OneView's `uri`, when listed.
    async fn alert(&self, uri: &str) -> Option<Value> {
        self.alerts()
            .await
            .into_iter()
            .find(|a| a["labels"]["alert_uri"] == uri)
    }

    /// Waits until the alert of `uri` is listed and active.
    async fn wait_active(&self, uri: &str) -> Value {
        common::until(
            &format!("{uri} active in Alertmanager"),
            WAIT,
            || async move {
                self.alert(uri)
                    .await
                    .filter(|a| a["status"]["state"] == "active")
            },
        )
        .await
    }

    /// Waits until Alertmanager took the alert of `uri` again `span` after `since` (its
    /// `updatedAt`), checking at every look that it stayed listed and active meanwhile.
    async fn stays_active(&self, uri: &str, since: time::OffsetDateTime, span: Duration) {
        let until = since + span;
        let held = common::wait_until(WAIT, || async move {
            let a = self
                .alert(uri)
                .await
                .unwrap_or_else(|| panic!("{uri} was resolved while active"));
            assert_eq!(a["status"]["state"], "active", "{a}");
            updated_at(&a) >= until
        })
        .await;
        assert!(held, "{uri} not re-sent for {span:?}");
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn updated_at(a: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        a["updatedAt"].as_str().expect("updatedAt"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("updatedAt is RFC 3339")
}

/// `[appliance.alertmanager]` sending to `urls`, re-sent every `resend`.
fn table(urls: &[&str], resend: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[appliance.alertmanager]\nurls = [{}]\nresend_interval = \"{resend}\"\nretry_cap = \"1s\"\nlabels = {{ team = \"infra\" }}\n",
        urls.join(", ")
    )
}

fn setup(test: &str, sim: &SimInfo, table: &str) -> ScmbRun {
    let tag = format!("am{}{}", test.replace('-', ""), rand::random::<u32>());
    ScmbRun::new(test, sim, NAME, &tag, "", table)
}

/// The value of a series of `run`'s appliance, with the alertmanager sink's (or target's)
/// label where the series has one.
async fn am_metric(run: &ScmbRun, name: &str) -> u64 {
    run.sink_metric(name, "alertmanager").await
}

async fn clear(sim: &SimInfo, uri: &str) {
    common::clear(&sim.client(), uri).await
}

fn stop(l: Listening) -> String {
    l.stopped(WAIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_fires_with_its_labels_stays_active_past_the_resolve_timeout_and_after_a_restart_is_re_sent_from_the_store(
) {
    let sim = shared_sim();
    // Alertmanager forgets an alert not sent again within 3 s; the sink re-sends every 1 s.
    let am = &Alertmanager::start("am-fields", "3s").await;
    let s = &setup("am-fields", sim, &table(&[&am.url], "1s"));

    // `scmb check`: ready, and the resolve timeout compared with the re-send interval.
    let out = s
        .command(
            &["check", "--config", s.config.to_str().expect("utf8")],
            &[],
        )
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("alertmanager"))
        .unwrap_or_else(|| panic!("no alertmanager line: {stdout}"));
    assert!(
        line.starts_with("ok") && line.contains("resolve_timeout 3s"),
        "{line}"
    );

    let l = s.start(&[]).await;
    let c = sim.client();
    let uri = &raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{}.psu", s.tag),
            "description": "The power supply in bay 4 failed.", "correctiveAction": "Replace it."}),
    )
    .await;
    let a = am.wait_active(uri).await;
    let oneview = common::alert(&c, uri).await;
    assert_eq!(
        a["labels"],
        json!({"alertname": format!("{}.psu", s.tag), "severity": "critical", "appliance": NAME,
            "resource": oneview["associatedResource"]["resourceName"],
            "resource_category": oneview["associatedResource"]["resourceCategory"],
            "alert_uri": uri, "team": "infra"})
    );
    assert_eq!(
        a["annotations"],
        json!({"description": "The power supply in bay 4 failed.", "corrective_action": "Replace it."})
    );
    assert_eq!(
        updated_at(&json!({"updatedAt": a["startsAt"]})),
        updated_at(&json!({"updatedAt": oneview["created"]})),
        "startsAt is the alert's creation"
    );
    assert_eq!(
        a["generatorURL"],
        format!("https://{}/#/activity/r{uri}", appliance(&sim.rest_url)).as_str()
    );
    assert!(
        common::wait_until(WAIT, || async move {
            am_metric(s, "scmb_sink_incidents_created_total").await == 1
        })
        .await
    );

    // Re-sent: still active well past Alertmanager's resolve timeout (3 s).
    am.stays_active(uri, updated_at(&a), Duration::from_secs(8))
        .await;

    // Stopped: nothing re-sends it, and Alertmanager resolves it by itself.
    let log = stop(l);
    assert!(
        common::wait_until(WAIT, || async move { am.alert(uri).await.is_none() }).await,
        "resolved by Alertmanager's timeout once scmb stopped"
    );
    // Started again: re-sent from the store (its message was acked long ago), kept active.
    let l = s.start(&[]).await;
    let a = am.wait_active(uri).await;
    am.stays_active(uri, updated_at(&a), Duration::from_secs(8))
        .await;
    assert_eq!(am.alerts().await.len(), 1, "one alert, no duplicate");
    let log2 = stop(l);
    assert!(!log.contains("panicked") && !log2.contains("panicked"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_alert_is_sent_with_ends_at_and_resolved_in_alertmanager_and_never_re_sent() {
    let sim = shared_sim();
    // A resolve timeout of an hour: an alert can only leave the active list by our endsAt.
    let am = &Alertmanager::start("am-clear", "1h").await;
    let s = &setup("am-clear", sim, &table(&[&am.url], "1s"));
    let l = s.start(&[]).await;
    let c = sim.client();
    let cleared = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    let kept = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    am.wait_active(cleared).await;
    am.wait_active(kept).await;

    clear(sim, cleared).await;
    assert!(
        common::wait_until(WAIT, || async move { am.alert(cleared).await.is_none() }).await,
        "resolved in Alertmanager: {:?}",
        am.alert(cleared).await
    );
    assert!(
        common::wait_until(WAIT, || async move {
            am_metric(s, "scmb_sink_incidents_resolved_total").await == 1
        })
        .await
    );
    // The other one is re-sent for several rounds; the cleared one never comes back.
    let a = am.wait_active(kept).await;
    let since = updated_at(&a);
    let later = common::wait_until(WAIT, || async move {
        assert!(
            am.alert(cleared).await.is_none(),
            "a resolved alert fired again"
        );
        am.alert(kept)
            .await
            .is_some_and(|a| updated_at(&a) >= since + Duration::from_secs(4))
    })
    .await;
    assert!(later, "the active alert was not re-sent");
    stop(l);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_raised_while_alertmanager_is_down_are_delivered_once_it_is_back_none_lost() {
    let sim = shared_sim();
    let mut am = Alertmanager::start("am-down", "1h").await;
    let s = &setup("am-down", sim, &table(&[&am.url], "1s"));
    let l = s.start(&[]).await;
    am.down();
    let c = sim.client();
    let mut uris = Vec::new();
    for _ in 0..5 {
        uris.push(raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await);
    }
    // Retried while it is down (the deliveries stay unacked meanwhile).
    assert!(
        common::wait_until(WAIT, || async move {
            am_metric(s, "scmb_retries_total").await >= 3
        })
        .await,
        "retried while Alertmanager is down"
    );
    assert_eq!(am_metric(s, "scmb_sink_incidents_created_total").await, 0);
    // Back (empty: Alertmanager keeps alerts in memory only): every alert arrives.
    am.up().await;
    for u in &uris {
        am.wait_active(u).await;
    }
    let uris_ref = &uris;
    assert!(
        common::wait_until(WAIT, || async move {
            am_metric(s, "scmb_sink_incidents_created_total").await == uris_ref.len() as u64
        })
        .await
    );
    assert!(
        common::wait_until(WAIT, || async move {
            am_metric(s, "scmb_acks_total").await
                >= am_metric(s, "scmb_messages_received_total").await
        })
        .await,
        "every delivery acked once delivered"
    );
    assert_eq!(am.alerts().await.len(), uris.len(), "each alert once");
    stop(l);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_resend_interval_not_below_alertmanagers_resolve_timeout() {
    let sim = shared_sim();
    let am = &Alertmanager::start("am-check", "2s").await;
    let s = &setup("am-check", sim, &table(&[&am.url], "5s"));
    let out = s
        .command(
            &["check", "--config", s.config.to_str().expect("utf8")],
            &[],
        )
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("alertmanager"))
        .unwrap_or_else(|| panic!("no alertmanager line: {stdout}"));
    assert!(
        line.starts_with("FAIL") && line.contains("resolve_timeout (2s)"),
        "{line}"
    );
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// The password of the protected Alertmanager, and its bcrypt hash for `basic_auth_users`.
const AM_PASSWORD: &str = "am-s3cret";
const AM_WEB: &str =
    "basic_auth_users:\n  scmb: $2b$10$abcdefghijklmnopqrstuuSdUarRHB8WYpcnayoG3R0DXRHaWArM2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_reaches_a_protected_alertmanager_a_wrong_password_is_named_and_never_logged() {
    let sim = shared_sim();
    let am = &Alertmanager::start_with("am-auth", "1h", Some(AM_WEB)).await;
    let auth = format!(
        "{}username = \"scmb\"\npassword_env = \"AM_PASSWORD\"\n",
        table(&[&am.url], "1s")
    );
    let s = &setup("am-auth", sim, &auth);
    // A wrong password: `scmb check` fails on it, naming the settings, never the password.
    let out = s
        .command(
            &["check", "--config", s.config.to_str().expect("utf8")],
            &[("AM_PASSWORD", "wrong-pw")],
        )
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("alertmanager"))
        .unwrap_or_else(|| panic!("no alertmanager line: {stdout}"));
    assert!(
        line.starts_with("FAIL") && line.contains("401") && line.contains("alertmanager.username"),
        "{line}"
    );
    assert!(
        !stdout.contains("wrong-pw") && !String::from_utf8_lossy(&out.stderr).contains("wrong-pw")
    );

    // The right one: delivered.
    let l = s.start(&[("AM_PASSWORD", AM_PASSWORD)]).await;
    let uri = &raise(
        &sim.client(),
        json!({"severity": "Critical", "alertTypeID": s.tag}),
    )
    .await;
    let (code, _) = get(&format!("{}/api/v2/alerts", am.url)).await;
    assert_eq!(code, 401, "the Alertmanager is protected");
    let found = common::wait_until(WAIT, || async move {
        // Plain HTTP, but reqwest still wants a crypto provider chosen.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(
                scmb_tls::client_config(
                    &scmb_tls::ServerTrust::Insecure,
                    &scmb_tls::NameCheck::Skip,
                    None,
                )
                .expect("tls"),
            )
            .build()
            .expect("client");
        let resp = client
            .get(format!("{}/api/v2/alerts", am.url))
            .basic_auth("scmb", Some(AM_PASSWORD))
            .send()
            .await
            .expect("get");
        let alerts: Value = resp.json().await.expect("json");
        alerts
            .as_array()
            .is_some_and(|l| l.iter().any(|a| a["labels"]["alert_uri"] == uri.as_str()))
    })
    .await;
    assert!(found, "delivered with Basic authentication");
    let log = stop(l);
    assert!(!log.contains(AM_PASSWORD), "the password is never logged");
    let _ = std::fs::remove_dir_all(&s.dir);
}
