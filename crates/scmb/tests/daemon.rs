//! `scmb run` and `scmb check` against two simulated appliances (each with its broker and its
//! Service Manager): many appliances in one process, one of them stopped; metrics after a
//! storm; health; systemd notification; SIGHUP reload; and the checks' report.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{appliance, download_certs, get, metric, run, ticketed, Listening, BIN};
use reqwest::Method;
use scmb_sim::testkit::{shared_sim, start_stoppable, temp_dir, test_config, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// One `[[appliance]]` table: console and Service Manager sinks, alerts of `tag` only.
fn appliance_toml(name: &str, sim: &SimInfo, certs: &Path, tag: &str, extra: &str) -> String {
    let sm = sim.sm_url.clone().expect("sm");
    format!(
        r#"
[[appliance]]
name = "{name}"
address = "{addr}"
password_env = "OV_PASSWORD"
cert_dir = "{certs}"
amqp_port = {port}
{extra}
[appliance.filter]
alert_types = ["{tag}*"]
[appliance.console]
[appliance.service_manager]
address = "{sm}"
password_env = "SM_PASSWORD"
retry_cap_secs = 1
"#,
        addr = appliance(&sim.rest_url),
        certs = certs.display(),
        port = sim.amqps_port,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_daemon(config: &Path, env: &[(&str, &str)]) -> Listening {
    let mut all = vec![("OV_PASSWORD", "admin123"), ("SM_PASSWORD", "")];
    all.extend_from_slice(env);
    Listening::start_env(
        BIN,
        &["run", "--config", config.to_str().expect("utf8")],
        &all,
    )
}

async fn raise(sim: &SimInfo, tag: &str) -> String {
    let a = sim
        .client()
        .call(
            Method::POST,
            "/sim/alerts",
            Some(
                serde_json::to_vec(&json!({"severity": "Critical", "alertTypeID": tag}))
                    .expect("json"),
            ),
        )
        .await
        .expect("raise");
    a["uri"].as_str().expect("uri").to_string()
}

async fn wait_ticketed(sim: &SimInfo, uri: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let have: HashSet<String> = ticketed(sim).await.into_iter().collect();
        if have.contains(uri) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliances_in_one_process_one_stopped_the_other_keeps_ticketing_with_metrics() {
    let a = shared_sim();
    // A second simulated appliance, which the test stops.
    let (b, b_stopper) = start_stoppable(test_config("daemon-b"));
    let tag = format!("daemon{}", rand::random::<u32>());
    let dir = temp_dir("daemon-run");
    let port = free_port();
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}{}",
            appliance_toml(
                "east",
                a,
                &download_certs(&a.rest_url, "daemon-a-certs"),
                &tag,
                ""
            ),
            appliance_toml(
                "west",
                &b,
                &download_certs(&b.rest_url, "daemon-b-certs"),
                &tag,
                ""
            ),
            state = dir.join("state").display(),
        ),
    )
    .expect("config");
    // systemd's notify socket, played by the test.
    let notify_path = dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(WAIT)).expect("notify timeout");
    let mut l = start_daemon(
        &config,
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("utf8"))],
    );
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY from the daemon");
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    while get(&format!("{base}/readyz")).await.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&format!("{base}/readyz")).await.0,
        200,
        "both connected"
    );
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));

    // Both appliances ticket, each into its own Service Manager.
    let ua = raise(a, &tag).await;
    let ub = raise(&b, &tag).await;
    assert!(wait_ticketed(a, &ua).await, "east ticketed");
    assert!(wait_ticketed(&b, &ub).await, "west ticketed");

    // West's appliance goes away entirely (REST, broker and Service Manager).
    b_stopper.stop();
    assert!(
        l.wait_for("not connected to the message bus", WAIT),
        "{:?}",
        l.stderr
    );
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("east connected"), "{body}");
    assert!(!body.contains("west connected"), "{body}");

    // East keeps ticketing: a storm of 200 alerts, 10 % of them critical.
    let before = get(&format!("{base}/metrics")).await.1;
    let storm = json!({"count": 200, "rate": 0, "severities": {"Critical": 1, "Warning": 9},
        "fields": {"alertTypeID": format!("{tag}.storm")}});
    let s = a
        .client()
        .call(
            Method::POST,
            "/sim/storm",
            Some(serde_json::to_vec(&storm).expect("json")),
        )
        .await
        .expect("storm");
    assert_eq!(s["bySeverity"]["Critical"], 20, "{s}");
    let deadline = Instant::now() + WAIT;
    let label = "{appliance=\"east\"}";
    let mut after = String::new();
    while Instant::now() < deadline {
        after = get(&format!("{base}/metrics")).await.1;
        if metric(&after, &format!("scmb_incidents_created_total{label}"))
            >= metric(&before, &format!("scmb_incidents_created_total{label}")) + 20
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delta = |name: &str| {
        let series = format!("{name}{label}");
        metric(&after, &series) - metric(&before, &series)
    };
    assert_eq!(delta("scmb_incidents_created_total"), 20, "{after}");
    assert_eq!(delta("scmb_messages_matched_total"), 20, "{after}");
    // 200 created plus an Updated per note written, at least; every one acked.
    assert!(delta("scmb_messages_received_total") >= 220, "{after}");
    assert_eq!(delta("scmb_messages_malformed_total"), 0, "{after}");
    assert!(
        metric(
            &after,
            "scmb_sink_latency_seconds_count{appliance=\"east\",sink=\"service_manager\"}"
        ) >= 21,
        "{after}"
    );
    assert_eq!(metric(&after, "scmb_bus_connected{appliance=\"east\"}"), 1);
    assert_eq!(metric(&after, "scmb_bus_connected{appliance=\"west\"}"), 0);
    assert!(metric(&after, "scmb_catch_up_runs_total{appliance=\"east\"}") >= 1);
    // Exactly one incident per critical alert of east's storm.
    let tickets = ticketed(a).await;
    let mine: Vec<&String> = tickets.iter().filter(|u| **u == ua).collect();
    assert_eq!(mine.len(), 1);

    // Output and log lines carry their appliance.
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "SIGTERM exits 0: {}", r.stderr);
    assert!(r.stdout.contains("[east] "), "{}", r.stdout);
    assert!(
        r.stdout
            .lines()
            .filter(|l| !l.is_empty())
            .all(|l| l.starts_with("[east] ") || l.starts_with("[west] ")),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("appliance{appliance=west}") && l.contains("reconnect failed")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("admin123"), "no password in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_good_and_a_broken_appliance_one_line_per_check() {
    let a = shared_sim();
    let tag = "check";
    let dir = temp_dir("daemon-check");
    let good = appliance_toml(
        "good",
        a,
        &download_certs(&a.rest_url, "check-certs"),
        tag,
        "",
    );
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\n{good}", dir.display()),
    )
    .expect("cfg");
    let r = run(
        &["check", "--config", config.to_str().expect("utf8")],
        &[("OV_PASSWORD", "admin123"), ("SM_PASSWORD", "")],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    for check in [
        "config",
        "rest login",
        "caroot.pem",
        "client.pem",
        "bus",
        "service manager",
    ] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check}: {}",
            r.stdout
        );
    }

    // A broken appliance: wrong password, no certificates, Service Manager unreachable.
    let broken_certs = temp_dir("check-broken");
    let broken = appliance_toml("broken", a, &broken_certs, tag, "")
        .replace("OV_PASSWORD", "BAD_PASSWORD")
        .replace(a.sm_url.as_deref().expect("sm"), "http://127.0.0.1:9");
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\n{good}{broken}", dir.display()),
    )
    .expect("cfg");
    let r = run(
        &["check", "--config", config.to_str().expect("utf8")],
        &[
            ("OV_PASSWORD", "admin123"),
            ("BAD_PASSWORD", "wrong"),
            ("SM_PASSWORD", ""),
        ],
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    let line = |who: &str, what: &str| {
        r.stdout
            .lines()
            .find(|l| l.contains(who) && l.contains(what))
            .unwrap_or_else(|| panic!("no {who} {what} line: {}", r.stdout))
            .to_string()
    };
    assert!(line("good", "bus").starts_with("ok"));
    assert!(line("broken", "rest login").starts_with("FAIL"));
    assert!(line("broken", "client.pem").starts_with("FAIL"));
    assert!(line("broken", "bus").contains("scmb setup"), "{}", r.stdout);
    assert!(line("broken", "service manager").starts_with("FAIL"));
    assert!(!r.stdout.contains("wrong") && !r.stderr.contains("wrong"));

    // An invalid config file: one FAIL line naming the key, exit 2.
    std::fs::write(&config, format!("{good}\nbogus_key = 1\n")).expect("cfg");
    let r = run(&["check", "--config", config.to_str().expect("utf8")], &[]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stdout.starts_with("FAIL") && r.stdout.contains("bogus_key"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_refuses_an_invalid_one() {
    let a = shared_sim();
    let tag = format!("reload{}", rand::random::<u32>());
    let dir = temp_dir("daemon-reload");
    let certs_dir = download_certs(&a.rest_url, "reload-certs");
    let config = dir.join("scmb.toml");
    let one = format!(
        "state_dir = \"{}\"\n{}",
        dir.join("state").display(),
        appliance_toml("first", a, &certs_dir, &tag, "")
    );
    std::fs::write(&config, &one).expect("cfg");
    // Logs as JSON here: every line an object, each appliance's with its span.
    let mut l = start_daemon(&config, &[("SCMB_LOG_FORMAT", "json")]);
    assert!(
        l.wait_until(|x| connected_json(x, "first"), WAIT),
        "{:?}",
        l.stderr
    );
    let hup = |l: &Listening| unsafe {
        // SAFETY: a plain signal to our own child.
        libc::kill(l.child.id() as libc::pid_t, libc::SIGHUP);
    };

    // Invalid: refused, and the running appliance carries on.
    std::fs::write(&config, format!("{one}\n[log]\nlevl = \"debug\"\n")).expect("cfg");
    hup(&l);
    assert!(
        l.wait_for("refused; the running one stays", WAIT),
        "{:?}",
        l.stderr
    );
    assert!(
        l.stderr
            .iter()
            .any(|x| x.contains("levl") && x.contains("\"level\":\"ERROR\"")),
        "the key is named: {:?}",
        l.stderr
    );
    let u1 = raise(a, &tag).await;
    assert!(wait_ticketed(a, &u1).await, "still ticketing");

    // Valid: a second appliance (same simulator, JSON lines only) starts; the first carries on.
    let pw_file = dir.join("second-password");
    std::fs::write(&pw_file, "admin123\n").expect("password file");
    let jsonl = format!(
        r#"
[[appliance]]
name = "second"
address = "{}"
password_file = "{}"
cert_dir = "{}"
amqp_port = {}
catch_up = false
[appliance.filter]
alert_types = ["{tag}*"]
[appliance.jsonl]
path = "events.jsonl"
"#,
        appliance(&a.rest_url),
        pw_file.display(),
        certs_dir.display(),
        a.amqps_port
    );
    std::fs::write(&config, format!("{one}{jsonl}")).expect("cfg");
    hup(&l);
    assert!(l.wait_for("configuration reloaded", WAIT), "{:?}", l.stderr);
    assert!(
        l.wait_until(|x| connected_json(x, "second"), WAIT),
        "{:?}",
        l.stderr
    );
    let u2 = raise(a, &tag).await;
    assert!(wait_ticketed(a, &u2).await, "the first still tickets");
    let file = dir.join("state/second/events.jsonl");
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains(&u2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let line: Value = serde_json::from_str(
        text.lines()
            .find(|x| x.contains(&u2))
            .unwrap_or_else(|| panic!("{u2} not in {text}")),
    )
    .expect("json line");
    assert_eq!(line["appliance"], "second");
    assert_eq!(line["message"]["resourceUri"], u2.as_str());

    // A rotated password file, config unchanged: the reload restarts that appliance with the
    // new password (a wrong one here, so its login now fails) and leaves the first alone.
    std::fs::write(&pw_file, "rotated-wrong\n").expect("rotate");
    hup(&l);
    assert!(
        l.wait_for("its password changed: restarting it", WAIT),
        "{:?}",
        l.stderr
    );
    assert!(
        l.wait_until(
            |x| serde_json::from_str::<Value>(x).is_ok_and(|v| v["appliance"] == "second"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("appliance unavailable"))),
            WAIT
        ),
        "{:?}",
        l.stderr
    );
    assert!(
        !l.stderr.iter().any(|x| x.contains("rotated-wrong")),
        "never logged"
    );
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Every log line is JSON; the first appliance was not restarted by the reload.
    for line in r.stderr.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert_eq!(
        r.stderr
            .lines()
            .filter(|x| connected_json(x, "first"))
            .count(),
        1,
        "{}",
        r.stderr
    );
}

/// A JSON log line saying `appliance` connected to its bus.
fn connected_json(line: &str, appliance: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| {
        v["appliance"] == appliance && v["message"] == "connected to the message bus"
    })
}

/// What the service says on systemd's notify socket (played by the test), one datagram each.
struct Notifications {
    socket: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Notifications {
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits for the next datagram for which `hit` holds; that datagram.
    fn wait(&mut self, hit: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(d.clone());
                if hit(&d) {
                    return d;
                }
            }
        }
        panic!("no such notification: {:?}", self.seen)
    }
}

/// The monotonic clock, in microseconds, as systemd reads it.
fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

fn has_line(d: &str, line: &str) -> bool {
    d.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_with_its_clock_watchdog_pings_and_stopping() {
    let a = shared_sim();
    let tag = format!("notify{}", rand::random::<u32>());
    let dir = temp_dir("daemon-notify");
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{}",
            dir.join("state").display(),
            appliance_toml(
                "notified",
                a,
                &download_certs(&a.rest_url, "notify-certs"),
                &tag,
                ""
            )
        ),
    )
    .expect("config");
    let socket = dir.join("notify");
    let mut n = Notifications::bind(&socket);
    // WatchdogSec=2s, as systemd passes it (no WATCHDOG_PID: any pid).
    let l = start_daemon(
        &config,
        &[
            ("NOTIFY_SOCKET", socket.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    n.wait(|d| has_line(d, "READY=1"));
    // Pinged while the appliance's pipeline is alive: several times.
    for _ in 0..3 {
        n.wait(|d| has_line(d, "WATCHDOG=1"));
    }

    // SIGHUP: RELOADING=1 with the monotonic clock at the reload, then READY=1 again.
    let before = monotonic_usec();
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(l.child.id() as libc::pid_t, libc::SIGHUP) };
    let reloading = n.wait(|d| has_line(d, "RELOADING=1"));
    let after = monotonic_usec();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("a number");
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}: CLOCK_MONOTONIC at the reload"
    );
    n.wait(|d| has_line(d, "READY=1"));
    n.wait(|d| has_line(d, "WATCHDOG=1"));

    // SIGTERM: STOPPING=1 (with a status) before it exits.
    l.terminate();
    let stopping = n.wait(|d| has_line(d, "STOPPING=1"));
    assert!(
        stopping.lines().any(|x| x.starts_with("STATUS=")),
        "{stopping:?}"
    );
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        !n.seen.iter().any(|d| d.contains("pipeline stuck")),
        "the pipeline was never stuck: {:?}",
        n.seen
    );
    assert!(
        n.seen.iter().all(|d| d.lines().all(|x| x.contains('='))),
        "every line a VARIABLE=value: {:?}",
        n.seen
    );
}
