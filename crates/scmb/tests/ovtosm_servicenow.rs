//! `ov_to_sm --servicenow`: the one-appliance command line opening ServiceNow incidents (the
//! same sink as `scmb run`'s `[appliance.servicenow]`), run as a real process against the
//! simulated appliance (its REST API and a real RabbitMQ) and a ServiceNow simulator of each
//! test's own (real sockets). Tests wait on states (the instance's `/sim/incidents`, the
//! alert's notes), never on log wording.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{appliance, download_certs, get, raise, run_bin, Listening, Run};
use reqwest::Method;
use scmb_sim::client::SimClient;
use scmb_sim::servicenow::SnConfig;
use scmb_sim::testkit::{serve_servicenow, shared_sim, temp_dir, Served, SimInfo};
use serde_json::{json, Value};

const OV_TO_SM: &str = env!("CARGO_BIN_EXE_ov_to_sm");
const WAIT: Duration = Duration::from_secs(90);
const NOTE: &str = "Case automatically logged in ServiceNow with ID: ";
/// The ServiceNow user of these tests, and a password distinctive enough to be looked for.
const SN_USER: &str = "svc-oneview";
const SN_PASSWORD: &str = "Sn-pw-7f3a9c1e";

/// A ServiceNow simulator of the test's own, knowing [`SN_USER`].
async fn servicenow() -> Served<scmb_sim::servicenow::SnState> {
    let mut cfg = SnConfig::default();
    cfg.users.insert(SN_USER.into(), SN_PASSWORD.into());
    serve_servicenow(cfg).await
}

/// The instance's incidents, as its control route lists them.
async fn incidents(sn_url: &str) -> Vec<Value> {
    let (status, body) = get(&format!("{sn_url}/sim/incidents")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["incidents"].as_array().cloned().unwrap_or_default()
}

/// The incidents whose `correlation_id` is `key`.
async fn by_correlation(sn_url: &str, key: &str) -> Vec<Value> {
    incidents(sn_url)
        .await
        .into_iter()
        .filter(|i| i["correlation_id"] == key)
        .collect()
}

/// The alert as it is now (no session needed).
async fn alert(c: &SimClient, uri: &str) -> Value {
    let id = uri.rsplit('/').next().expect("id");
    c.call(Method::GET, &format!("/sim/alerts/{id}"), None)
        .await
        .expect("alert")
}

/// The ServiceNow incident numbers in the alert's notes.
fn noted(a: &Value) -> Vec<String> {
    a["changeLog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["notes"].as_str()?.strip_prefix(NOTE).map(str::to_string))
        .collect()
}

/// Polls `f` until it gives a value, or fails the test naming `what`.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One test's `ov_to_sm`: the shared appliance (alerts of a fresh tag only), its own
/// certificate and state directories.
struct Setup {
    tag: String,
    certs: PathBuf,
    state: PathBuf,
    appliance: String,
    amqp_port: String,
}

impl Setup {
    fn new(test: &str, sim: &SimInfo) -> Setup {
        Setup {
            tag: format!("Test.ovtosm-sn.{test}.{}", rand::random::<u32>()),
            certs: download_certs(&sim.rest_url, &format!("ovtosm-sn-{test}-certs")),
            state: temp_dir(&format!("ovtosm-sn-{test}-state")),
            appliance: appliance(&sim.rest_url),
            amqp_port: sim.amqps_port.to_string(),
        }
    }

    /// The command line: this appliance, then `extra`.
    fn args<'a>(&'a self, pattern: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "-a",
            self.appliance.as_str(),
            "-u",
            "Administrator",
            "--amqp-port",
            self.amqp_port.as_str(),
            "--cert-dir",
            path(&self.certs),
            "--state-dir",
            path(&self.state),
            "--alert-type",
            pattern,
            "--retry-cap",
            "1s",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// The `correlation_id` of the alert `uri`'s incident: `ov_to_sm` names the appliance
    /// by its address.
    fn key(&self, uri: &str) -> String {
        format!("scmb:{}:{uri}", self.appliance)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// Raises a critical alert of `tag`; its uri.
async fn critical(c: &SimClient, tag: &str) -> String {
    raise(
        c,
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.a"), "description": "Fan 2 failed"}),
    )
    .await
}

/// The process's command line as the kernel shows it to `ps`.
fn cmdline(pid: u32) -> String {
    let b = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/cmdline: {e}"));
    String::from_utf8_lossy(&b).replace('\0', " ")
}

/// The non-empty lines of stderr.
fn lines(r: &Run) -> Vec<&str> {
    r.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_opens_one_servicenow_incident_noted_back_and_resolved_on_clear() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = servicenow().await;
    let s = Setup::new("one", sim);
    let pattern = format!("{}*", s.tag);
    let l = Listening::start_env(
        OV_TO_SM,
        &s.args(
            &pattern,
            &["--servicenow", sn.url.as_str(), "--sn-user", SN_USER],
        ),
        &[
            ("SCMB_PASSWORD", "admin123"),
            ("SCMB_SN_PASSWORD", SN_PASSWORD),
            ("RUST_LOG", "info"),
        ],
    );
    // The password is nowhere `ps` looks (once the command line is the program's own: right
    // after the fork it is still the test's).
    let pid = l.child.id();
    let shown = until("ov_to_sm's command line in /proc", || async {
        Some(cmdline(pid)).filter(|c| c.contains("--servicenow"))
    })
    .await;
    assert!(!shown.contains(SN_PASSWORD), "{shown}");

    let uri = critical(&c, &s.tag).await;
    // A warning is not admitted (the sample's filter): no incident for it.
    let warning = raise(
        &c,
        json!({"severity": "Warning", "alertTypeID": format!("{}.w", s.tag)}),
    )
    .await;
    let number = until("the incident's number in the alert's notes", || async {
        noted(&alert(&c, &uri).await).first().cloned()
    })
    .await;
    assert!(number.starts_with("INC"), "{number}");
    let found = by_correlation(&sn.url, &s.key(&uri)).await;
    assert_eq!(found.len(), 1, "exactly one incident: {found:?}");
    assert_eq!(found[0]["number"], json!(number));
    assert_eq!(found[0]["state"], "1");
    assert_eq!(found[0]["urgency"], "1");
    assert!(
        found[0]["short_description"]
            .as_str()
            .is_some_and(|d| d.contains("Fan 2 failed")),
        "{:?}",
        found[0]
    );
    assert_eq!(noted(&alert(&c, &uri).await), vec![number.clone()]);
    assert!(by_correlation(&sn.url, &s.key(&warning)).await.is_empty());

    // Cleared: the incident is resolved (the default of --sn-on-clear, from --on-clear).
    let id = uri.rsplit('/').next().expect("id");
    c.call(Method::POST, &format!("/sim/alerts/{id}/clear"), None)
        .await
        .expect("clear");
    let resolved = until("the incident resolved", || async {
        let found = by_correlation(&sn.url, &s.key(&uri)).await;
        found
            .first()
            .filter(|i| i["state"] == "6")
            .cloned()
            .map(|i| (i, found.len()))
    })
    .await;
    assert_eq!(resolved.1, 1, "still one incident");
    assert_eq!(resolved.0["close_code"], "Solved (Permanently)");
    assert_eq!(incidents(&sn.url).await.len(), 1, "one incident in all");

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains(SN_PASSWORD), "no password in the logs");
    assert!(!r.stdout.contains(SN_PASSWORD), "no password on stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sm_and_servicenow_each_alert_is_ticketed_in_both() {
    let sim = shared_sim();
    let c = sim.client();
    let sn = servicenow().await;
    let s = Setup::new("both", sim);
    let pattern = format!("{}*", s.tag);
    let sm = sim
        .sm_url
        .clone()
        .expect("sm")
        .trim_start_matches("http://")
        .to_string();
    // An OAuth client this time, its secret from a file.
    let secret = s.state.join("sn-client-secret");
    std::fs::write(&secret, "secret\n").expect("secret file");
    let l = Listening::start_env(
        OV_TO_SM,
        &s.args(
            &pattern,
            &[
                "-sm",
                sm.as_str(),
                "--servicenow",
                sn.url.as_str(),
                "--sn-client-id",
                "scmb-sim",
                "--sn-client-secret-file",
                path(&secret),
            ],
        ),
        &[("SCMB_PASSWORD", "admin123"), ("RUST_LOG", "info")],
    );

    let uri = critical(&c, &s.tag).await;
    let number = until("the ServiceNow note", || async {
        noted(&alert(&c, &uri).await).first().cloned()
    })
    .await;
    until("the Service Manager incident", || async {
        common::ticketed(sim).await.contains(&uri).then_some(())
    })
    .await;
    until("the Service Manager note", || async {
        alert(&c, &uri).await["changeLog"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["notes"]
                    .as_str()
                    .is_some_and(|n| n.contains("HPE Service Manager with ID: IM"))
            })
            .then_some(())
    })
    .await;
    let found = by_correlation(&sn.url, &s.key(&uri)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["number"], json!(number));
    assert_eq!(
        common::ticketed(sim)
            .await
            .iter()
            .filter(|u| **u == uri)
            .count(),
        1,
        "one Service Manager incident"
    );
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_servicenow_password_stops_at_start_with_exit_3_naming_the_flags() {
    let sim = shared_sim();
    let sn = servicenow().await;
    let s = Setup::new("wrong", sim);
    let pattern = format!("{}*", s.tag);
    let args = s.args(
        &pattern,
        &["--servicenow", sn.url.as_str(), "--sn-user", SN_USER],
    );
    let r = run_bin(
        OV_TO_SM,
        &args,
        &[
            ("SCMB_PASSWORD", "admin123"),
            ("SCMB_SN_PASSWORD", "not-the-Pa55word"),
            ("RUST_LOG", "warn"),
        ],
    );
    // Checked by reading, at start: exit 3, the flags to fix named, nothing created.
    assert_eq!(r.code, Some(3), "{r:?}");
    let last = lines(&r).last().copied().unwrap_or("").to_string();
    assert!(last.starts_with("ov_to_sm: "), "{last}");
    assert!(
        last.contains("401") && last.contains("--sn-user") && last.contains("$SCMB_SN_PASSWORD"),
        "{last}"
    );
    assert!(!r.stderr.contains("not-the-Pa55word"), "{}", r.stderr);
    assert!(incidents(&sn.url).await.is_empty());
}

/// `ov_to_sm` with these flags after an appliance it never reaches (the run ends before any
/// connection), no terminal, no password in the environment.
fn refused(extra: &[&str]) -> Run {
    let mut args = vec!["-a", "127.0.0.1:9"];
    args.extend_from_slice(extra);
    run_bin(OV_TO_SM, &args, &[("RUST_LOG", "warn")])
}

#[test]
fn a_missing_servicenow_password_without_a_terminal_is_a_one_line_usage_error() {
    let r = refused(&["--servicenow", "http://127.0.0.1:9", "--sn-user", SN_USER]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert_eq!(
        lines(&r),
        vec!["ov_to_sm: no ServiceNow password: set $SCMB_SN_PASSWORD, give --sn-password-file FILE, or run on a terminal to be asked"],
        "{r:?}"
    );
    let r = refused(&["--servicenow", "acme", "--sn-client-id", "c"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    let l = lines(&r);
    assert_eq!(l.len(), 1, "{r:?}");
    assert!(l[0].contains("$SCMB_SN_CLIENT_SECRET"), "{r:?}");
}

#[test]
fn neither_sm_nor_servicenow_is_a_one_line_usage_error() {
    let r = refused(&[]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert_eq!(
        lines(&r),
        vec!["ov_to_sm: no ticketing system: give -sm SMHOST (HP Service Manager), --servicenow INSTANCE (ServiceNow), or both"],
        "{r:?}"
    );
}

#[test]
fn a_typo_in_sn_on_clear_is_refused_with_the_choices() {
    let r = refused(&[
        "--servicenow",
        "acme",
        "--sn-user",
        SN_USER,
        "--sn-on-clear",
        "resolv",
    ]);
    assert_eq!(r.code, Some(2), "{r:?}");
    // clap's usage error: one error line (then its pointer to --help).
    let errors: Vec<&str> = lines(&r)
        .into_iter()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{r:?}");
    assert!(
        errors[0].contains("--sn-on-clear")
            && errors[0].contains("resolv")
            && errors[0].contains("none, journal, resolve or close"),
        "{r:?}"
    );
    // The config's other checks, with the flag named.
    let r = refused(&[
        "--servicenow",
        "acme",
        "--sn-user",
        SN_USER,
        "--sn-urgency",
        "Critcal=1",
    ]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert_eq!(lines(&r).len(), 1, "{r:?}");
    assert!(
        r.stderr.contains("--sn-urgency") && r.stderr.contains("Critical, Warning"),
        "{r:?}"
    );
}

#[test]
fn help_man_page_and_completions_show_the_servicenow_group() {
    let help = run_bin(OV_TO_SM, &["--help"], &[]);
    assert_eq!(help.code, Some(0), "{help:?}");
    for word in [
        "ServiceNow:",
        "--servicenow <INSTANCE>",
        "--sn-user",
        "--sn-client-id",
        "--sn-on-clear",
        "$SCMB_SN_PASSWORD",
        "--servicenow acme --sn-user svc-oneview",
    ] {
        assert!(help.stdout.contains(word), "--help lacks {word}");
    }
    let man = common::run(&["man", "ov_to_sm"], &[]);
    assert_eq!(man.code, Some(0), "{man:?}");
    assert!(
        man.stdout.contains("\\-\\-servicenow")
            && man.stdout.contains("\\-\\-sn\\-client\\-secret\\-file"),
        "the man page lacks the ServiceNow flags"
    );
    let bash = common::run(&["completions", "bash", "ov_to_sm"], &[]);
    assert_eq!(bash.code, Some(0), "{bash:?}");
    assert!(bash.stdout.contains("--servicenow") && bash.stdout.contains("--sn-insecure"));
    let zsh = common::run(&["completions", "zsh", "ov_to_sm"], &[]);
    assert!(
        zsh.stdout.contains("--sn-on-clear") && zsh.stdout.contains("journal"),
        "the choices of --sn-on-clear complete"
    );
}
