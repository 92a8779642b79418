//! Running the `scmb` binary as a user would, against simulated appliances: processes and
//! their output here, `scmb run` with a config of its own in [`run`], the ServiceNow and
//! PagerDuty simulators as the tests see them in [`servicenow`] and [`pagerduty`]. Everything
//! waits on states (the simulators' lists, the alerts' notes, `/readyz`, metrics).
#![allow(dead_code)]

pub mod pagerduty;
pub mod run;
pub mod servicenow;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_scmb");

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `scmb` to completion with `args` (and a clean environment apart from `env`).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_bin(BIN, args, env)
}

/// Runs `bin` (`scmb` or `ov_to_sm`) to completion, like [`run`].
pub fn run_bin(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = command_for(bin, args, env).output().expect("run");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    command_for(BIN, args, env)
}

pub fn command_for(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .env_remove("SCMB_PASSWORD")
        .env("RUST_LOG", "debug")
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A running listener whose stderr is read line by line.
pub struct Listening {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
    /// stdout, drained continuously so that a full pipe never blocks the tool.
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stdout_reader: Option<std::thread::JoinHandle<()>>,
}

impl Listening {
    pub fn start(args: &[&str]) -> Listening {
        Self::start_bin(BIN, args)
    }

    pub fn start_bin(bin: &str, args: &[&str]) -> Listening {
        Self::start_env(bin, args, &[])
    }

    pub fn start_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Listening {
        Self::spawn(command_for(bin, args, env))
    }

    /// What the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_until(|l| l.contains(needle), timeout)
    }

    /// Waits for a stderr line for which `hit` holds (lines read before count too).
    pub fn wait_until(&mut self, hit: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if self.stderr.iter().any(|l| hit(l)) {
            return true;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let found = hit(&l);
                    self.stderr.push(l);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for the process to exit; returns its code and stdout.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = self.child.wait().expect("wait");
        if let Some(r) = self.stdout_reader.take() {
            let _ = r.join();
        }
        let stdout = self.stdout.lock().map(|s| s.clone()).unwrap_or_default();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr.push(l);
        }
        Run {
            code: status.code(),
            stdout,
            stderr: self.stderr.join("\n"),
        }
    }

    /// Sends SIGTERM.
    /// SIGTERM, then its exit: code 0 within `timeout` (asserted); its stderr.
    pub fn stopped(self, timeout: Duration) -> String {
        self.terminate();
        let r = self.finish(timeout);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        r.stderr
    }

    pub fn terminate(&self) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Host:port of a simulator's REST API, as `-a` takes it.
pub fn appliance(rest_url: &str) -> String {
    rest_url.trim_start_matches("https://").to_string()
}

pub fn cert_dir(name: &str) -> PathBuf {
    scmb_sim::testkit::temp_dir(name)
}

/// Downloads a simulated appliance's certificates with the HPE sample's `-d` into a fresh
/// directory named after `name`.
pub fn download_certs(rest_url: &str, name: &str) -> PathBuf {
    let dir = cert_dir(name);
    let r = run(
        &[
            "-a",
            &appliance(rest_url),
            "-u",
            "Administrator",
            "-d",
            "--cert-dir",
            dir.to_str().expect("utf8"),
        ],
        &[("SCMB_PASSWORD", "admin123")],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    dir
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The alert uris of the incidents in a simulator's Service Manager (one entry per incident,
/// so a duplicate shows as a repeated uri).
pub async fn ticketed(sim: &scmb_sim::testkit::SimInfo) -> Vec<String> {
    let all = sim
        .client()
        .call_sm(reqwest::Method::GET, "/sim/incidents", None)
        .await
        .expect("incidents");
    all["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|inc| {
            inc["Description"]
                .as_array()?
                .iter()
                .filter_map(serde_json::Value::as_str)
                .find_map(|l| l.strip_prefix("alertUri: "))
                .map(str::to_string)
        })
        .collect()
}

/// GET over plain HTTP: status and body (status 0 and the error when it fails).
pub async fn get(url: &str) -> (u16, String) {
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
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The value of one sample line of the Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Raises an alert with these fields on a simulator; its uri.
pub async fn raise(c: &scmb_sim::client::SimClient, fields: serde_json::Value) -> String {
    let a = c
        .call(
            reqwest::Method::POST,
            "/sim/alerts",
            Some(serde_json::to_vec(&fields).expect("json")),
        )
        .await
        .expect("raise");
    a["uri"].as_str().expect("uri").to_string()
}

impl Listening {
    /// Starts a command prepared by the caller (its own working directory, limits or user),
    /// reading its stderr line by line and draining its stdout, like [`Listening::start_env`].
    pub fn spawn(mut command: Command) -> Listening {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let err = child.stderr.take().expect("stderr");
        let out = child.stdout.take().expect("stdout");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stdout.clone();
        let stdout_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        }));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Listening {
            child,
            lines: rx,
            stderr: Vec::new(),
            stdout,
            stdout_reader,
        }
    }
}

/// A port free on 127.0.0.1 now (for a metrics address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` every 200 ms until it holds or `timeout` passes; whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `f` every 200 ms until it gives a value, or fails the test naming `what`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Raises a storm through `/sim/storm` (`body`: `count`, `rate`, `fields` with an
/// `alertTypeID`, `severities`, ...); the uris of its alerts, oldest first. They are numbered
/// from its first to its last; when a test sharing the simulator raised others in between
/// (a storm with a rate takes its time), only those of this storm's `alertTypeID` count.
pub async fn storm(c: &scmb_sim::client::SimClient, body: serde_json::Value) -> Vec<String> {
    let count = body["count"].as_u64().expect("count");
    let r = c
        .call(
            reqwest::Method::POST,
            "/sim/storm",
            Some(serde_json::to_vec(&body).expect("json")),
        )
        .await
        .expect("storm");
    let number = |k: &str| -> u64 {
        r[k].as_str()
            .and_then(|u| u.rsplit('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{k}: {r}"))
    };
    let (first, last) = (number("firstUri"), number("lastUri"));
    let uris: Vec<String> = (first..=last)
        .map(|n| format!("/rest/alerts/{n}"))
        .collect();
    if uris.len() as u64 == count {
        return uris;
    }
    let tag = body["fields"]["alertTypeID"]
        .as_str()
        .expect("a storm on a shared simulator needs an alertTypeID to find its alerts");
    let mut ours = Vec::new();
    for u in uris {
        if alert(c, &u).await["alertTypeID"] == tag {
            ours.push(u);
        }
    }
    assert_eq!(ours.len() as u64, count, "the storm's alerts");
    ours
}

/// The alert as the appliance has it now (no session needed).
/// Clears the alert `uri` on the simulated appliance, as a user would.
pub async fn clear(c: &scmb_sim::client::SimClient, uri: &str) {
    c.call(
        reqwest::Method::POST,
        &format!("{}/clear", uri.replace("/rest/alerts/", "/sim/alerts/")),
        Some(b"{}".to_vec()),
    )
    .await
    .expect("clear");
}

pub async fn alert(c: &scmb_sim::client::SimClient, uri: &str) -> serde_json::Value {
    c.call(
        reqwest::Method::GET,
        &uri.replace("/rest/alerts/", "/sim/alerts/"),
        None,
    )
    .await
    .expect("alert")
}

/// The notes of the alert's change log that start with `prefix`, oldest first.
pub fn notes(a: &serde_json::Value, prefix: &str) -> Vec<String> {
    a["changeLog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["notes"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
