//! The syslog sink end to end: `scmb run` (a real process) against the simulated appliance
//! (its REST API and its real RabbitMQ, shared by the tests of this binary) and a REAL rsyslog
//! of each test's own (Debian's `rsyslog` with `rsyslog-gnutls`, installed by
//! `scripts/install-deps`): `rsyslogd -n -f CONF -i PIDFILE` with its own work directory,
//! listening on loopback with imudp, imtcp (octet counting) and imtcp over TLS (gtls,
//! client certificates required), with certificates the test makes with the openssl CLI, and
//! killed by its pid at the end. rsyslog writes what it received to one file per transport,
//! one JSON object per message (the raw message, PRI, facility, severity, the header fields,
//! and the structured data as rsyslog's `mmpstrucdata` parsed it). Every wait is on a state
//! (a line in those files, a metric), never on a log line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::run::ScmbRun;
use common::{raise, Listening};
use scmb_sim::testkit::{shared_sim, temp_dir, SimInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const NAME: &str = "east";

/// rsyslogd: `$SCMB_RSYSLOGD`, else Debian's.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SCMB_RSYSLOGD") {
        return p.into();
    }
    let p = Path::new("/usr/sbin/rsyslogd");
    assert!(
        p.exists(),
        "rsyslog is not installed: run scripts/install-deps (Debian packages rsyslog and rsyslog-gnutls), or set SCMB_RSYSLOGD"
    );
    p.into()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (install it: scripts/install-deps)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `NAME.key` and `NAME.pem` in `dir`: a CA (`ext` none), or a certificate signed by
/// `dir`'s CA with the extensions `ext`.
fn make_cert(dir: &Path, name: &str, cn: &str, ext: Option<&str>) {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subj = format!("/CN={cn}");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    match ext {
        None => {
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(dir, &a);
        }
        Some(ext) => {
            let csr = format!("{name}.csr");
            let cnf = format!("{name}.cnf");
            std::fs::write(dir.join(&cnf), ext).expect("ext");
            let mut a = vec!["req"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &a);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &cnf,
                ],
            );
        }
    }
}

/// A free UDP port on loopback now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

/// A real rsyslog of one test: its directory (config, certificates, work dir, output
/// files), its ports, its process.
struct Rsyslog {
    dir: PathBuf,
    udp: u16,
    tcp: u16,
    tls: u16,
    child: Option<Child>,
}

impl Rsyslog {
    async fn start(test: &str) -> Rsyslog {
        let dir = temp_dir(&format!("{test}-rsyslog"));
        std::fs::create_dir_all(dir.join("work")).expect("work dir");
        make_cert(&dir, "ca", "scmb test syslog CA", None);
        make_cert(
            &dir,
            "server",
            "localhost",
            Some("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        );
        make_cert(
            &dir,
            "client",
            "scmb-client",
            Some("extendedKeyUsage=clientAuth\n"),
        );
        let mut r = Rsyslog {
            dir,
            udp: free_udp_port(),
            tcp: common::free_port(),
            tls: common::free_port(),
            child: None,
        };
        r.write_config();
        r.up().await;
        r
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn write_config(&self) {
        let d = |f: &str| self.path(f);
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp" maxSessions="100")
module(load="mmpstrucdata")
template(name="j" type="list") {{
  constant(value="{{")
  property(name="rawmsg" format="jsonf" outname="raw") constant(value=",")
  property(name="pri" format="jsonf") constant(value=",")
  property(name="syslogfacility" format="jsonf" outname="facility") constant(value=",")
  property(name="syslogseverity" format="jsonf" outname="severity") constant(value=",")
  property(name="hostname" format="jsonf") constant(value=",")
  property(name="app-name" format="jsonf" outname="app") constant(value=",")
  property(name="procid" format="jsonf") constant(value=",")
  property(name="msgid" format="jsonf") constant(value=",")
  property(name="timereported" dateFormat="rfc3339" format="jsonf" outname="time") constant(value=",")
  property(name="structured-data" format="jsonf" outname="sd") constant(value=",")
  property(name="msg" format="jsonf") constant(value=",\"params\":")
  property(name="$!rfc5424-sd")
  constant(value="}}\n")
}}
ruleset(name="udp") {{ action(type="mmpstrucdata" sd_name.lowercase="off") action(type="omfile" file="{udp}" template="j") }}
ruleset(name="tcp") {{ action(type="mmpstrucdata" sd_name.lowercase="off") action(type="omfile" file="{tcp}" template="j") }}
ruleset(name="tls") {{ action(type="mmpstrucdata" sd_name.lowercase="off") action(type="omfile" file="{tls}" template="j") }}
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls_port}" ruleset="tls"
  streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
"#,
            work = d("work"),
            ca = d("ca.pem"),
            cert = d("server.pem"),
            key = d("server.key"),
            udp = d("udp.log"),
            tcp = d("tcp.log"),
            tls = d("tls.log"),
            udp_port = self.udp,
            tcp_port = self.tcp,
            tls_port = self.tls,
        );
        std::fs::write(self.dir.join("rsyslog.conf"), conf).expect("rsyslog.conf");
    }

    /// (Re)starts rsyslogd on the same ports and files; waits until every input takes
    /// messages (TCP: accepts; UDP: a probe datagram reaches its file).
    async fn up(&mut self) {
        let log = std::fs::File::create(self.dir.join("rsyslogd.out")).expect("log");
        let child = Command::new(binary())
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        for port in [self.tcp, self.tls] {
            let up = common::wait_until(WAIT, || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await;
            assert!(up, "rsyslogd never listened on {port}: {}", self.out());
        }
        let probe = format!("probe-{}", rand::random::<u32>());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let this = &*self;
        let got = common::wait_until(WAIT, || {
            let _ = udp.send_to(
                format!("<14>1 - probe probe - - [probe@32473 x=\"1\"] {probe}").as_bytes(),
                ("127.0.0.1", this.udp),
            );
            let probe = probe.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                this.lines("udp.log").iter().any(|l| l["msg"] == probe)
            }
        })
        .await;
        assert!(got, "rsyslogd never took UDP: {}", self.out());
    }

    /// Kills rsyslogd by its pid and waits for it.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn out(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.out")).unwrap_or_default()
    }

    /// What rsyslog wrote to `file`, one object per message.
    fn lines(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The messages in `file` about the alert `uri`.
    fn about(&self, file: &str, uri: &str) -> Vec<Value> {
        self.lines(file)
            .into_iter()
            .filter(|l| l["params"][SD_ID]["uri"] == uri)
            .collect()
    }

    /// Waits until `file` holds `n` messages about `uri`; they.
    async fn wait_for(&self, file: &str, uri: &str, n: usize) -> Vec<Value> {
        common::until(
            &format!("{n} message(s) about {uri} in {file}"),
            WAIT,
            || async move {
                let got = self.about(file, uri);
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The SD-ID the tests configure.
const SD_ID: &str = "oneview@32473";

/// `[appliance.syslog]` sending over `transport` to `rs`.
fn table(rs: &Rsyslog, transport: &str, extra: &str) -> String {
    let port = match transport {
        "udp" => rs.udp,
        "tcp" => rs.tcp,
        _ => rs.tls,
    };
    let tls = if transport == "tls" {
        format!(
            "ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nserver_name = \"localhost\"\n",
            rs.path("ca.pem"),
            rs.path("client.pem"),
            rs.path("client.key")
        )
    } else {
        String::new()
    };
    format!(
        "[appliance.syslog]\naddress = \"127.0.0.1:{port}\"\ntransport = \"{transport}\"\nfacility = \"local4\"\nsd_id = \"{SD_ID}\"\nretry_cap = \"1s\"\ntimeout = \"5s\"\n{tls}{extra}"
    )
}

fn setup(test: &str, sim: &SimInfo, table: &str) -> ScmbRun {
    let tag = format!("sl{}{}", test.replace('-', ""), rand::random::<u32>());
    ScmbRun::new(
        test,
        sim,
        NAME,
        &tag,
        "severities = [\"Critical\", \"Warning\"]\n",
        table,
    )
}

/// A series of `run`'s appliance, with the syslog sink's (or target's) label.
async fn sl_metric(run: &ScmbRun, name: &str) -> u64 {
    run.sink_metric(name, "syslog").await
}

async fn clear(sim: &SimInfo, uri: &str) {
    common::clear(&sim.client(), uri).await
}

fn stop(l: Listening) -> String {
    l.stopped(WAIT)
}

/// `scmb check`'s line for the syslog sink.
fn check_line(s: &ScmbRun) -> (String, Option<i32>) {
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
        .find(|l| l.contains("syslog"))
        .unwrap_or_else(|| panic!("no syslog line: {stdout}"))
        .to_string();
    (line, out.status.code())
}

/// A description with every character RFC 5424 escapes in a value, and non-ASCII text.
const DESCRIPTION: &str = r#"PSU "4" [bay\2] failed: température"#;

/// Raises a critical alert (its description and corrective action full of characters to
/// escape) and a warning through `transport`, and checks what rsyslog wrote of each: the
/// header fields, PRI (facility local4 = 20, crit = 2, warning = 4), the structured data
/// rsyslog parsed back to the alert's values, the message text. With `lifecycle`, the
/// critical alert's clear too (notice = 5).
async fn delivers_over(transport: &str) {
    let sim = shared_sim();
    let test = format!("sl-{transport}");
    let rs = &Rsyslog::start(&test).await;
    let s = &setup(&test, sim, &table(rs, transport, "lifecycle = true\n"));
    let file = format!("{transport}.log");
    let l = s.start(&[]).await;
    let c = sim.client();
    let crit = &raise(
        &c,
        json!({"severity": "Critical", "alertTypeID": format!("{}.psu", s.tag),
            "description": DESCRIPTION, "correctiveAction": "Replace \"it\" ]now["}),
    )
    .await;
    let warn = &raise(&c, json!({"severity": "Warning", "alertTypeID": s.tag})).await;
    let m = &rs.wait_for(&file, crit, 1).await[0];
    let oneview = common::alert(&c, crit).await;
    assert_eq!(m["pri"], "162", "local4 (20) * 8 + crit (2): {m}");
    assert_eq!(
        (&m["facility"], &m["severity"]),
        (&json!("20"), &json!("2"))
    );
    assert_eq!(m["hostname"], NAME);
    assert_eq!(m["app"], "scmb");
    assert_eq!(m["msgid"], "Created");
    assert!(
        m["procid"]
            .as_str()
            .is_some_and(|p| p.parse::<u32>().is_ok()),
        "{m}"
    );
    assert!(
        m["raw"].as_str().expect("raw").starts_with("<162>1 "),
        "{m}"
    );
    let p = &m["params"][SD_ID];
    assert_eq!(p["appliance"], NAME, "{m}");
    assert_eq!(p["uri"], crit.as_str());
    assert_eq!(p["severity"], "Critical");
    assert_eq!(p["alertState"], "Active");
    assert_eq!(p["alertTypeID"], format!("{}.psu", s.tag).as_str());
    assert_eq!(p["changeType"], "Created");
    assert_eq!(p["eTag"], oneview["eTag"]);
    assert_eq!(
        p["description"],
        Value::Null,
        "the text is MSG, not a param"
    );
    assert_eq!(p["correctiveAction"], "Replace \"it\" ]now[", "{m}");
    assert_eq!(
        p["resourceName"],
        oneview["associatedResource"]["resourceName"]
    );
    // The UTF-8 text, after the BOM RFC 5424 asks for.
    assert_eq!(
        m["msg"].as_str().map(|t| t.trim_start_matches('\u{feff}')),
        Some(DESCRIPTION),
        "{m}"
    );
    // The time: RFC 3339, the alert's own.
    let reported = time::OffsetDateTime::parse(
        m["time"].as_str().expect("time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an RFC 3339 time");
    assert!(reported.year() >= 2026, "{m}");

    let w = &rs.wait_for(&file, warn, 1).await[0];
    assert_eq!(
        (&w["pri"], &w["severity"]),
        (&json!("164"), &json!("4")),
        "{w}"
    );
    assert!(
        common::wait_until(WAIT, || async move {
            sl_metric(s, "scmb_sink_events_delivered_total").await == 2
        })
        .await
    );

    // Lifecycle: the clear of the critical alert, as notice.
    clear(sim, crit).await;
    let both = rs.wait_for(&file, crit, 2).await;
    let cleared = &both[1];
    assert_eq!(cleared["severity"], "5", "{cleared}");
    assert_eq!(cleared["msgid"], "Updated");
    assert_eq!(cleared["params"][SD_ID]["alertState"], "Cleared");
    assert!(
        common::wait_until(WAIT, || async move {
            sl_metric(s, "scmb_acks_total").await
                >= sl_metric(s, "scmb_messages_received_total").await
        })
        .await,
        "every delivery acked"
    );
    assert_eq!(rs.about(&file, warn).len(), 1, "one message per event");
    let log = stop(l);
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_delivers_an_rfc_5424_message_with_the_alerts_structured_data_severity_and_facility() {
    delivers_over("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_octet_counted_delivers_an_rfc_5424_message_with_the_alerts_structured_data_severity_and_facility(
) {
    delivers_over("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_delivers_an_rfc_5424_message_with_the_alerts_structured_data(
) {
    delivers_over("tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connects_over_tls_and_fails_without_the_client_certificate_against_another_ca_or_a_closed_port(
) {
    let sim = shared_sim();
    let rs = &Rsyslog::start("sl-check").await;
    let s = setup("sl-check", sim, &table(rs, "tls", ""));
    let (line, code) = check_line(&s);
    assert!(
        line.starts_with("ok") && line.contains("connected, TLS verified against"),
        "{line}"
    );
    assert_eq!(code, Some(0), "{line}");

    // No client certificate: this receiver wants one, and check says it refused us.
    let original = std::fs::read_to_string(&s.config).expect("config");
    let without: String = original
        .lines()
        .filter(|l| !l.starts_with("client_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s.config, without).expect("config");
    let (line, code) = check_line(&s);
    assert!(
        line.starts_with("FAIL") && line.contains("TLS handshake failed"),
        "{line}"
    );
    assert_ne!(code, Some(0));
    std::fs::write(&s.config, &original).expect("config");

    // Another CA: the receiver's certificate is not trusted.
    let other = temp_dir("sl-check-other-ca");
    make_cert(&other, "ca", "another CA", None);
    let text = std::fs::read_to_string(&s.config).expect("config").replace(
        &rs.path("ca.pem"),
        &other.join("ca.pem").display().to_string(),
    );
    std::fs::write(&s.config, text).expect("config");
    let (line, code) = check_line(&s);
    assert!(
        line.starts_with("FAIL") && line.contains("TLS handshake failed"),
        "{line}"
    );
    assert_ne!(code, Some(0));

    // Nothing listening (TCP): the connection is refused.
    let closed = setup(
        "sl-check-closed",
        sim,
        &format!(
            "[appliance.syslog]\naddress = \"127.0.0.1:{}\"\ntransport = \"tcp\"\n",
            common::free_port()
        ),
    );
    let (line, code) = check_line(&closed);
    assert!(
        line.starts_with("FAIL") && line.contains("cannot connect"),
        "{line}"
    );
    assert_ne!(code, Some(0));
    // UDP: only what can be checked without an answer, said so.
    let udp = setup("sl-check-udp", sim, &table(rs, "udp", ""));
    let (line, _) = check_line(&udp);
    assert!(
        line.starts_with("ok") && line.contains("nothing proves a receiver listens"),
        "{line}"
    );
    for d in [&s.dir, &closed.dir, &udp.dir, &other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_rsyslog_is_down_the_sink_retries_with_the_message_unacked_and_delivers_it_once_rsyslog_is_back(
) {
    let sim = shared_sim();
    let mut rs = Rsyslog::start("sl-down").await;
    let s = &setup("sl-down", sim, &table(&rs, "tcp", ""));
    let l = s.start(&[]).await;
    let c = sim.client();
    // A first alert: the connection is up and used.
    let first = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    rs.wait_for("tcp.log", first, 1).await;
    assert!(
        common::wait_until(WAIT, || async move {
            let acks = sl_metric(s, "scmb_acks_total").await;
            acks >= 1 && acks >= sl_metric(s, "scmb_messages_received_total").await
        })
        .await
    );

    // rsyslog dies: its connection is closed under the sink.
    rs.down();
    let second = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    assert!(
        common::wait_until(WAIT, || async move {
            sl_metric(s, "scmb_retries_total").await >= 3
        })
        .await,
        "retried while rsyslog is down"
    );
    let received = sl_metric(s, "scmb_messages_received_total").await;
    let acked = sl_metric(s, "scmb_acks_total").await;
    assert!(
        acked < received,
        "the message stays unacked ({acked} of {received})"
    );
    assert_eq!(sl_metric(s, "scmb_sink_events_delivered_total").await, 1);

    // Back on the same port: delivered, then acked.
    rs.up().await;
    let got = rs.wait_for("tcp.log", second, 1).await;
    assert_eq!(got[0]["params"][SD_ID]["uri"], second.as_str());
    assert!(
        common::wait_until(WAIT, || async move {
            sl_metric(s, "scmb_acks_total").await
                >= sl_metric(s, "scmb_messages_received_total").await
        })
        .await,
        "acked once delivered"
    );
    assert_eq!(sl_metric(s, "scmb_sink_events_delivered_total").await, 2);
    assert_eq!(
        rs.about("tcp.log", first).len(),
        1,
        "the first not sent again"
    );
    assert_eq!(rs.about("tcp.log", second).len(), 1, "the second once");
    stop(l);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_while_scmb_was_stopped_is_sent_after_the_restart_where_lifecycle_is_on() {
    let sim = shared_sim();
    let test = "sl-away";
    let rs = &Rsyslog::start(test).await;
    let s = &setup(test, sim, &table(rs, "tcp", "lifecycle = true\n"));
    let l = s.start(&[]).await;
    let c = sim.client();
    let crit = &raise(&c, json!({"severity": "Critical", "alertTypeID": s.tag})).await;
    rs.wait_for("tcp.log", crit, 1).await;
    stop(l);

    clear(sim, crit).await; // nobody listens

    let l = s.start(&[]).await;
    let got = rs.wait_for("tcp.log", crit, 2).await;
    assert_eq!(
        got[1]["params"][SD_ID]["alertState"], "Cleared",
        "{:?}",
        got[1]
    );
    assert_eq!(got[1]["severity"], "5", "a clear is a notice: {:?}", got[1]);
    stop(l);
    // Sent once: the next start owes nothing.
    let l = s.start(&[]).await;
    assert!(
        common::wait_until(WAIT, || async {
            sl_metric(s, "scmb_catch_up_runs_total").await >= 1
        })
        .await
    );
    assert_eq!(sl_metric(s, "scmb_catch_up_alerts_total").await, 0);
    stop(l);
    assert_eq!(rs.about("tcp.log", crit).len(), 2);
}
