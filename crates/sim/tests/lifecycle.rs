//! Broker restarts, certificate regeneration and shutdown of a simulated appliance of its own
//! (these disturb the broker, so they do not share it with other tests).

use std::time::Duration;

use reqwest::Method;
use scmb_sim::testkit::{open, temp_dir, TestConsumer};
use scmb_sim::{Sim, SimConfig};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_and_certificate_regeneration_behave_like_an_appliance() {
    let dir = temp_dir("lifecycle");
    let mut cfg = SimConfig::new(&dir);
    cfg.rest_port = 0;
    cfg.amqps_port = 0;
    cfg.sm_port = None;
    cfg.keypair_pregenerated = true;
    let t0 = std::time::Instant::now();
    let sim = Sim::start(cfg).await.expect("sim starts");
    eprintln!("simulated appliance up in {:?}", t0.elapsed());
    let info = scmb_sim::testkit::SimInfo {
        ready: sim.info.clone(),
        state_dir: dir.clone(),
        amqps_port: sim.amqps_port,
        rest_url: sim.info["restUrl"].as_str().expect("url").to_string(),
        sm_url: None,
    };
    let ready: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ready.json")).expect("ready file"))
            .expect("json");
    assert_eq!(ready["amqpsPort"], sim.amqps_port);
    let broker_pid = ready["brokerPid"].as_u64().expect("broker pid") as u32;
    assert!(pid_alive(broker_pid));

    // 1. Restart: the old consumer's connection drops; after the restart a new one gets alerts.
    let c = info.client();
    let old = TestConsumer::bind(&info.default_target(), "scmb", &["scmb.alerts.#"])
        .await
        .expect("bind");
    let r = c
        .call(Method::POST, "/sim/broker/restart", None)
        .await
        .expect("restart");
    assert_eq!(r["publisherConnected"], true, "{r}");
    let mut dropped = false;
    for _ in 0..100 {
        if !old.conn.is_open() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped, "the restart closes existing connections");
    let mut q = TestConsumer::bind(&info.default_target(), "scmb", &["scmb.alerts.#"])
        .await
        .expect("bind after restart");
    let a = c
        .call(Method::POST, "/sim/alerts", Some(b"{}".to_vec()))
        .await
        .expect("raise");
    let uri = a["uri"].as_str().expect("uri");
    assert!(
        q.next_for(uri, WAIT).await.is_some(),
        "alerts flow again after the restart"
    );

    // 2. Regeneration: the certificate held before is refused, the new one works.
    let held = scmb_sim::bus::BusTarget {
        ca: dir.join("old-ca.pem"),
        cert: dir.join("old-client.pem"),
        key: dir.join("old-client-key.pem"),
        ..info.default_target()
    };
    std::fs::copy(dir.join("pki/ca.pem"), &held.ca).expect("copy");
    std::fs::copy(dir.join("pki/client-default.pem"), &held.cert).expect("copy");
    std::fs::copy(dir.join("pki/client-default-key.pem"), &held.key).expect("copy");
    assert!(open(&held).await.is_ok());
    let r = c
        .call(Method::POST, "/sim/certificates/regenerate", None)
        .await
        .expect("regenerate");
    assert_eq!(r["regenerated"], true);
    assert!(
        open(&held).await.is_err(),
        "the old client certificate (and CA) no longer work"
    );
    let with_old_ca = scmb_sim::bus::BusTarget {
        ca: held.ca.clone(),
        ..info.default_target()
    };
    assert!(
        open(&with_old_ca).await.is_err(),
        "the broker certificate is signed by the new CA"
    );
    // The REST API serves a certificate from the new CA too (the old client no longer trusts it).
    let old_trust = scmb_sim::client::SimClient {
        http: scmb_sim::client::http_client(Some(&held.ca)).expect("client"),
        ..c.clone()
    };
    assert!(old_trust
        .call(Method::GET, "/sim/info", None)
        .await
        .is_err());
    let fresh = info.client();
    assert!(fresh.call(Method::GET, "/sim/info", None).await.is_ok());
    let mut q = TestConsumer::bind(&info.default_target(), "scmb", &["scmb.alerts.#"])
        .await
        .expect("new cert works");
    let a = fresh
        .call(Method::POST, "/sim/alerts", Some(b"{}".to_vec()))
        .await
        .expect("raise");
    assert!(q
        .next_for(a["uri"].as_str().expect("uri"), WAIT)
        .await
        .is_some());

    // 3. Stop: the node we started is gone, and so is the ready file.
    let broker_pid = sim
        .broker
        .as_ref()
        .expect("broker")
        .pid()
        .await
        .expect("pid");
    sim.stop().await;
    assert!(!pid_alive(broker_pid), "the broker process is stopped");
    assert!(!dir.join("ready.json").exists());
}

/// The README's own `ov-sim --state ./state`: a relative state directory (and the default,
/// `./state`) used to crash the broker at boot (`.erlang.cookie: enoent`, the relative path
/// being both HOME and working directory).
#[test]
fn a_relative_state_directory_works() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let cwd = temp_dir("relative-state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ov-sim"))
        .current_dir(&cwd)
        .env_remove("OV_SIM_STATE")
        .args([
            "--state",
            "./state",
            "--rest-port",
            "0",
            "--amqps-port",
            "0",
            "--no-sm",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ov-sim");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let Ok(ready) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "ov-sim with a relative state directory never became ready:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(ready.contains("ready"), "{ready}");
    assert!(cwd.join("state/ready.json").exists());
    // SIGTERM stops it, broker included.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}
