//! Local faults from the issue "Exactly once for real": a damaged, locked or full state store,
//! a core dump holding the passwords, and a reload naming a file that cannot be read. Each test
//! starts the real binaries (`ov_to_sm`, `scmb run`) and waits on states: an exit code, a log
//! line, a file, `/proc`, the process's wait status.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{appliance, command_for, download_certs, run_bin, Listening, BIN};
use reqwest::Method;
use scmb_sim::testkit::{shared_sim, temp_dir, SimInfo};
use serde_json::json;

const OV_TO_SM: &str = env!("CARGO_BIN_EXE_ov_to_sm");
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The state store

/// `ov_to_sm` arguments for an appliance and a Service Manager nobody answers at: it opens its
/// store (`STATE/ov_to_sm.redb`) first, then fails to log in (exit 5).
fn unreachable_ov_to_sm(certs: &Path, state: &Path) -> Vec<String> {
    [
        "-a",
        "127.0.0.1:1",
        "-u",
        "Administrator",
        "-sm",
        "127.0.0.1:9",
        "--cert-dir",
        certs.to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ov_to_sm(args: &[String]) -> common::Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_bin(
        OV_TO_SM,
        &args,
        &[
            ("SCMB_PASSWORD", "admin123"),
            ("SM_PASSWORD", ""),
            ("RUST_LOG", "warn"),
        ],
    )
}

/// A store written by a real `ov_to_sm` (it opens it, then cannot log in): its path.
fn store_written_by_ov_to_sm(name: &str) -> (Vec<String>, PathBuf) {
    let dir = temp_dir(name);
    let args = unreachable_ov_to_sm(&dir.join("certs"), &dir.join("state"));
    let first = ov_to_sm(&args);
    assert_eq!(first.code, Some(5), "unreachable appliance: {first:?}");
    let store = dir.join("state/ov_to_sm.redb");
    assert!(store.is_file(), "the first run wrote {}", store.display());
    (args, store)
}

/// The lines of `stderr` naming `path`.
fn lines_naming<'a>(stderr: &'a str, path: &Path) -> Vec<&'a str> {
    let p = path.to_str().expect("utf8");
    stderr.lines().filter(|l| l.contains(p)).collect()
}

#[test]
fn a_truncated_store_stops_ov_to_sm_with_one_line_naming_the_file_instead_of_a_panic() {
    let (args, store) = store_written_by_ov_to_sm("store-truncated");
    // What a copy onto a full disk leaves: the first half of the file.
    let len = std::fs::metadata(&store).expect("store").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .expect("open store");
    f.set_len(len / 2).expect("truncate");
    drop(f);

    let r = ov_to_sm(&args);
    assert_eq!(r.code, Some(9), "exit 9, the store is damaged: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let named = lines_naming(&r.stderr, &store);
    assert_eq!(named.len(), 1, "one line naming the file: {}", r.stderr);
    let line = named[0];
    assert!(line.starts_with("ov_to_sm: "), "{line}");
    assert!(
        line.contains("damaged or truncated")
            && line.contains("restore it")
            && line.contains("move it aside"),
        "{line}"
    );
    assert!(
        !line.contains("another scmb") && !line.contains("message bus"),
        "{line}"
    );
}

#[test]
fn a_truncated_store_under_scmb_run_is_reported_and_retried_instead_of_killing_the_appliance() {
    let dir = temp_dir("run-truncated");
    let state = dir.join("state");
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[appliance]]\nname = \"dc1\"\naddress = \"127.0.0.1:1\"\npassword_env = \"OV_PASSWORD\"\n[appliance.console]\n",
            state.display()
        ),
    )
    .expect("config");
    let store = state.join("dc1/scmb.redb");
    let start = || {
        Listening::start_env(
            BIN,
            &["run", "--config", config.to_str().expect("utf8")],
            &[("OV_PASSWORD", "admin123"), ("RUST_LOG", "info")],
        )
    };
    // A first run creates the store, then cannot reach the appliance.
    let mut l = start();
    assert!(l.wait_for("appliance unavailable", WAIT), "{:?}", l.stderr);
    l.terminate();
    assert_eq!(l.finish(WAIT).code, Some(0));
    let len = std::fs::metadata(&store).expect("store").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");

    let mut l = start();
    let p = store.to_str().expect("utf8").to_string();
    let reported =
        |x: &str| x.contains("appliance unavailable") && x.contains(&p) && x.contains("damaged");
    assert!(l.wait_until(reported, WAIT), "{:?}", l.stderr);
    // And retried: the supervisor comes back to it (2 s later), not a task that died.
    let seen = std::cell::Cell::new(0);
    let second = l.wait_until(
        |x| {
            if reported(x) {
                seen.set(seen.get() + 1);
            }
            seen.get() >= 2
        },
        WAIT,
    );
    assert!(second, "retried: {:?}", l.stderr);
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn a_store_locked_by_another_process_is_named_as_such() {
    let (args, store) = store_written_by_ov_to_sm("store-locked");
    // Another process holds it, as a second ov_to_sm on the same --state-dir would.
    let holder = Command::new("flock")
        .args(["--exclusive", store.to_str().expect("utf8"), "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("flock(1)");
    let _holder = KillOnDrop(holder);
    let deadline = Instant::now() + WAIT;
    while !locked(&store) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(locked(&store), "flock holds {}", store.display());

    let r = ov_to_sm(&args);
    assert_eq!(r.code, Some(8), "exit 8, the store is in use: {r:?}");
    let named = lines_naming(&r.stderr, &store);
    assert_eq!(named.len(), 1, "{}", r.stderr);
    assert!(
        named[0].contains("in use by another process") && named[0].contains("--state-dir"),
        "{}",
        named[0]
    );
    assert!(!named[0].contains("damaged"), "{}", named[0]);
}

/// Whether someone holds an exclusive lock on `path` (a shared lock would then be refused).
fn locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: plain syscalls on a file we own; the lock (if taken) goes with the file.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this machine lets us mount a tmpfs in a user namespace of our own (`unshare -Urm`).
fn can_mount_tmpfs() -> bool {
    Command::new("unshare")
        .args([
            "-Urm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=4k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=4k tmpfs /tmp",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_full_disk_is_reported_as_no_space_not_as_another_scmb() {
    if !can_mount_tmpfs() {
        eprintln!("SKIPPED: no user namespace with a tmpfs here; store::tests covers the message for ENOSPC");
        return;
    }
    // A 4 KiB tmpfs as the state directory (one page: a new redb 4 store needs more), in a
    // mount namespace of the process's own: the store's first write meets the kernel's own "No
    // space left on device".
    let dir = temp_dir("store-full");
    let full = dir.join("full");
    std::fs::create_dir_all(&full).expect("dir");
    let args = unreachable_ov_to_sm(&dir.join("certs"), &full);
    let script = format!(
        "mount -t tmpfs -o size=4k tmpfs '{}' && exec \"$0\" \"$@\"",
        full.display()
    );
    let mut unshare_args = vec!["-Urm", "sh", "-c", script.as_str(), OV_TO_SM];
    unshare_args.extend(args.iter().map(String::as_str));
    let r = run_bin(
        "unshare",
        &unshare_args,
        &[
            ("SCMB_PASSWORD", "admin123"),
            ("SM_PASSWORD", ""),
            ("RUST_LOG", "warn"),
        ],
    );
    let store = full.join("ov_to_sm.redb");
    assert_eq!(
        r.code,
        Some(10),
        "exit 10, the store cannot be written: {r:?}"
    );
    let named = lines_naming(&r.stderr, &store);
    assert_eq!(named.len(), 1, "{}", r.stderr);
    assert!(
        named[0].contains("no space left") && named[0].contains("free space"),
        "{}",
        named[0]
    );
    assert!(
        !named[0].contains("another scmb") && !named[0].contains("another process"),
        "{}",
        named[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Core dumps

/// Who runs the binaries of the core dump tests: as root, an unprivileged user, so that the
/// owner of the files in `/proc/PID` shows the dumpable flag (those of a process that is not
/// dumpable belong to root); otherwise ourselves.
fn child_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    if me == 0 {
        65534
    } else {
        me
    }
}

/// Starts `bin` in `cwd` as [`child_uid`], with the largest core size the hard limit allows,
/// so that only the binary itself can turn core dumps off.
fn start_dumpable(bin: &str, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Listening {
    let uid = child_uid();
    let mut c = command_for(bin, args, env);
    c.current_dir(cwd);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_CORE, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_CORE, &lim);
            }
            if libc::getuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Listening::spawn(c)
}

/// The soft "Max core file size" of a process, from `/proc/PID/limits` (`None`: unlimited).
fn core_limit(pid: u32) -> Option<Option<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max core file size"))?;
    let soft = line
        .trim_start_matches("Max core file size")
        .split_whitespace()
        .next()?;
    Some(soft.parse().ok())
}

/// The owner of `/proc/PID/status`: the process's user while it is dumpable, else root.
fn proc_owner(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .uid()
}

/// Sends SIGABRT and waits: whether the kernel wrote a core dump.
fn abort_and_dumped(l: Listening) -> bool {
    // SAFETY: a plain signal to our own child.
    unsafe {
        libc::kill(l.child.id() as libc::pid_t, libc::SIGABRT);
    }
    let mut child = l.child;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
            return status.core_dumped();
        }
        assert!(Instant::now() < deadline, "still running after SIGABRT");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a core dump would land in the process's directory (`core_pattern` a plain name);
/// with a pipe (systemd-coredump, apport) the wait status still tells whether one was made.
fn core_pattern_is_a_pipe() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/core_pattern").is_ok_and(|p| p.starts_with('|'))
}

/// A directory anyone may write into (the child user's working directory, where a core goes).
fn open_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = temp_dir(name);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

/// `scmb run` with one appliance that cannot be reached: it runs (retrying) until stopped.
fn unreachable_service(dir: &Path) -> PathBuf {
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[appliance]]\nname = \"dc1\"\naddress = \"127.0.0.1:1\"\npassword_env = \"OV_PASSWORD\"\n[appliance.console]\n",
            dir.join("state").display()
        ),
    )
    .expect("config");
    config
}

/// A Service Manager that accepts connections and never answers: `ov_to_sm -l` waits on it.
fn silent_service_manager() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, format!("127.0.0.1:{port}"))
}

/// The two binaries, each started so that it keeps running: `scmb run` and `ov_to_sm -l`.
fn each_binary(tag: &str, env: &[(&str, &str)], mut check: impl FnMut(&str, Listening, &Path)) {
    let dir = open_dir(tag);
    let config = unreachable_service(&dir);
    let mut all = vec![("OV_PASSWORD", "admin123"), ("RUST_LOG", "info")];
    all.extend_from_slice(env);
    let l = start_dumpable(
        BIN,
        &["run", "--config", config.to_str().expect("utf8")],
        &all,
        &dir,
    );
    check("scmb run", l, &dir);

    let dir = open_dir(&format!("{tag}-ov-to-sm"));
    let (_sm, sm) = silent_service_manager();
    let mut all = vec![("SM_PASSWORD", ""), ("RUST_LOG", "info")];
    all.extend_from_slice(env);
    let l = start_dumpable(OV_TO_SM, &["-sm", &sm, "-l"], &all, &dir);
    check("ov_to_sm -l", l, &dir);
}

#[test]
fn without_the_opt_in_neither_binary_can_dump_core_or_be_read_through_proc() {
    each_binary("no-core", &[], |what, l, _dir| {
        let pid = l.child.id();
        let deadline = Instant::now() + WAIT;
        while core_limit(pid) != Some(Some(0)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(core_limit(pid), Some(Some(0)), "{what}: Max core file size");
        assert_eq!(
            proc_owner(pid),
            0,
            "{what}: not dumpable, so /proc/{pid}/status is root's"
        );
        assert!(!abort_and_dumped(l), "{what}: no core dump after SIGABRT");
    });
}

#[test]
fn scmb_allow_core_dumps_keeps_them_and_says_so() {
    let pipe = core_pattern_is_a_pipe();
    each_binary(
        "core-allowed",
        &[("SCMB_ALLOW_CORE_DUMPS", "1")],
        |what, mut l, dir| {
            assert!(
                l.wait_until(
                    |x| x.contains("WARN") && x.contains("SCMB_ALLOW_CORE_DUMPS"),
                    WAIT
                ),
                "{what}: {:?}",
                l.stderr
            );
            let pid = l.child.id();
            assert_ne!(core_limit(pid), Some(Some(0)), "{what}: Max core file size");
            assert_eq!(proc_owner(pid), child_uid(), "{what}: dumpable");
            let dumped = abort_and_dumped(l);
            if pipe {
                eprintln!("{what}: core_pattern is a pipe; core dumped: {dumped}");
            } else {
                assert!(
                    dumped,
                    "{what}: a core dump after SIGABRT, in {}",
                    dir.display()
                );
            }
            let _ = std::fs::remove_dir_all(dir);
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Reload

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

/// Waits until the JSON-lines file has a line for `uri`.
async fn written(file: &Path, uri: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if std::fs::read_to_string(file).is_ok_and(|t| t.contains(&format!("\"{uri}\""))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits for a datagram on systemd's notify socket (played by the test) containing `needle`.
fn notified(sock: &std::os::unix::net::UnixDatagram, needle: &str) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains(needle) {
                return Some(msg);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_a_password_file_that_cannot_be_read_keeps_the_running_appliance() {
    let sim = shared_sim();
    let tag = format!("keep{}", rand::random::<u32>());
    let dir = temp_dir("reload-missing-secret");
    let certs = download_certs(&sim.rest_url, "reload-missing-certs");
    let pw = dir.join("ov-password");
    std::fs::write(&pw, "admin123\n").expect("password file");
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let table = |password_file: &Path, heartbeat: &str| {
        format!(
            r#"state_dir = "{state}"
[metrics]
listen = "{metrics_addr}"
[[appliance]]
name = "keep"
address = "{addr}"
password_file = "{pw}"
cert_dir = "{certs}"
amqp_port = {port}
heartbeat = "{heartbeat}"
[appliance.filter]
alert_types = ["{tag}*"]
[appliance.jsonl]
path = "events.jsonl"
"#,
            state = dir.join("state").display(),
            addr = appliance(&sim.rest_url),
            pw = password_file.display(),
            certs = certs.display(),
            port = sim.amqps_port,
        )
    };
    let config = dir.join("scmb.toml");
    std::fs::write(&config, table(&pw, "10s")).expect("config");
    let notify_path = dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut l = Listening::start_env(
        BIN,
        &["run", "--config", config.to_str().expect("utf8")],
        &[
            ("RUST_LOG", "info"),
            ("NOTIFY_SOCKET", notify_path.to_str().expect("utf8")),
        ],
    );
    assert!(
        l.wait_for("connected to the message bus", WAIT),
        "{:?}",
        l.stderr
    );
    let events = dir.join("state/keep/events.jsonl");
    let first = raise(sim, &tag).await;
    assert!(written(&events, &first).await, "working before the reload");

    // The appliance's table changed (a new password file), and that file does not exist.
    let missing = dir.join("no-such-password");
    std::fs::write(&config, table(&missing, "11s")).expect("config");
    let hup = |l: &Listening| unsafe {
        // SAFETY: a plain signal to our own child.
        libc::kill(l.child.id() as libc::pid_t, libc::SIGHUP);
    };
    hup(&l);
    let m = missing.to_str().expect("utf8").to_string();
    let refused = |x: &str| {
        x.contains("ERROR")
            && x.contains("refused; the running one stays")
            && x.contains("\"keep\"")
            && x.contains(&m)
    };
    assert!(l.wait_until(refused, WAIT), "{:?}", l.stderr);
    let status = notified(&notify, &m).expect("a STATUS for systemctl status");
    assert!(
        status.contains("STATUS=configuration reload refused"),
        "{status}"
    );

    // Still connected and working, never stopped.
    let second = raise(sim, &tag).await;
    assert!(written(&events, &second).await, "{:?}", l.stderr);

    // The same with the table unchanged: the running file removed, then a reload.
    std::fs::write(&config, table(&pw, "10s")).expect("config");
    std::fs::remove_file(&pw).expect("remove the password file");
    hup(&l);
    let p = pw.to_str().expect("utf8").to_string();
    assert!(
        l.wait_until(
            |x| x.contains("refused; the running one stays")
                && x.contains("\"keep\"")
                && x.contains(&p),
            WAIT
        ),
        "{:?}",
        l.stderr
    );
    let third = raise(sim, &tag).await;
    assert!(written(&events, &third).await, "{:?}", l.stderr);
    let (_, text) = common::get(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(
        common::metric(&text, "scmb_config_reload_failures_total"),
        2,
        "both refusals counted: {text}"
    );

    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|x| x.contains(" connected to the message bus"))
            .count(),
        1,
        "never restarted: {}",
        r.stderr
    );
    assert!(
        !lines
            .iter()
            .any(|x| x.contains("appliance unavailable") || x.contains("configuration reloaded")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("admin123"), "no password in the logs");
}
