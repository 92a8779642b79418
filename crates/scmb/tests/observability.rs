//! What operators watch, checked on a real `scmb run`: its JSON log lines, the syslog
//! priorities it gives the journal, the metrics it serves (process, build, certificate, last
//! message), and the shipped alerting rules and Grafana dashboard, whose every metric must be
//! one the running process serves (and whose rules must pass `promtool check rules`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::run::ScmbRun;
use common::{metric, raise, wait_until};
use scmb_sim::testkit::{shared_sim, temp_dir};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The metric names of a Prometheus text exposition: every sample's name, and the family
/// name and type of each `# TYPE` line (a family may have no sample yet).
struct Exposition {
    samples: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples = BTreeSet::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut w = t.split_whitespace();
                if let (Some(n), Some(k)) = (w.next(), w.next()) {
                    types.insert(n.to_string(), k.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exposition { samples, types }
    }

    /// Whether a query may name `name`: a sample's name, a family's, or a family's series
    /// (`_total` of a counter; `_bucket`, `_sum`, `_count` of a histogram).
    fn has(&self, name: &str) -> bool {
        if self.samples.contains(name) || self.types.contains_key(name) {
            return true;
        }
        let family = |suffix: &str, kinds: &[&str]| {
            name.strip_suffix(suffix)
                .and_then(|base| self.types.get(base))
                .is_some_and(|k| kinds.contains(&k.as_str()))
        };
        family("_total", &["counter"])
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| family(s, &["histogram"]))
    }
}

/// The metric names a PromQL expression uses: the identifiers starting with `scmb_` or
/// `process_` (functions, labels, keywords and `$variables` never do).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("scmb_") || word.starts_with("process_") {
                names.push(word.clone());
            }
            word.clear();
        }
    }
    names
}

/// Every query of a Grafana dashboard: the panels' `expr`s and the variables' queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The `expr:` of every rule of a Prometheus rules file (each written on one line).
fn rule_expressions(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerting_rules_name_only_metrics_scmb_run_serves() {
    let sim = shared_sim();
    let tag = format!("obs{}", rand::random::<u32>());
    let run = ScmbRun::new("obs-metrics", sim, "obs", &tag, "", "[appliance.console]\n");
    let l = run.start(&[]).await;
    let label = format!("{{appliance=\"{}\"}}", run.name);
    raise(
        &sim.client(),
        json!({"severity": "Critical", "alertTypeID": format!("{tag}.one")}),
    )
    .await;
    let received = wait_until(WAIT, || async {
        metric(
            &run.metrics_text().await,
            &format!("scmb_messages_received_total{label}"),
        ) >= 1
    })
    .await;
    assert!(received, "no message received: {:?}", l.stderr);
    let text = run.metrics_text().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;

    // The process, its build, the appliance's certificate and last message.
    assert!(
        text.contains(&format!(
            "scmb_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes ") > 1_000_000,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds ") >= 3, "{text}");
    assert!(metric(&text, "process_max_fds ") >= 64, "{text}");
    assert!(metric(&text, "process_threads ") >= 2, "{text}");
    assert!(text.contains("process_cpu_seconds_total "), "{text}");
    let started = metric(&text, "process_start_time_seconds ");
    assert!(started > now - 3600 && started <= now, "{started} {now}");
    let expiry = metric(
        &text,
        &format!("scmb_appliance_cert_expiry_timestamp_seconds{label}"),
    );
    assert!(expiry > now, "the simulator's certificate is valid: {text}");
    let last = metric(
        &text,
        &format!("scmb_appliance_last_message_timestamp_seconds{label}"),
    );
    assert!(last + 3600 > now && last <= now, "{last} {now}");
    assert_eq!(
        metric(&text, &format!("scmb_appliance_failures_total{label}")),
        0
    );
    assert!(text.contains(&format!("scmb_appliance_restarts_total{label} 0")));

    // Every metric the dashboard and the rules name is served.
    let exposition = Exposition::parse(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("contrib/grafana/scmb-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let rules =
        std::fs::read_to_string(repo_file("contrib/prometheus/scmb-rules.yml")).expect("rules");
    let expressions = rule_expressions(&rules);
    assert!(expressions.len() >= 10, "{expressions:?}");
    for (what, exprs, at_least) in [
        ("the dashboard", &queries, 25),
        ("the rules", &expressions, 10),
    ] {
        let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(names.len() >= at_least, "{what}: {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !exposition.has(n)).collect();
        assert!(
            missing.is_empty(),
            "{what} names metrics scmb does not serve: {missing:?}\n{text}"
        );
    }
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn the_name_check_refuses_a_metric_scmb_does_not_serve() {
    let e = Exposition::parse(
        "# TYPE scmb_acks counter\nscmb_acks_total{appliance=\"a\"} 1\n\
         # TYPE scmb_sink_latency_seconds histogram\n# TYPE scmb_bus_connected gauge\n",
    );
    assert!(e.has("scmb_acks_total"));
    assert!(e.has("scmb_sink_latency_seconds_bucket"));
    assert!(e.has("scmb_bus_connected"));
    assert!(!e.has("scmb_acks_bucket"), "a counter has no buckets");
    assert!(!e.has("scmb_bus_connected_total"), "a gauge has no _total");
    assert!(!e.has("scmb_nothing_total"));
    assert_eq!(
        metric_names("sum by (appliance) (rate(scmb_acks_total{appliance=~\"$appliance\"}[5m])) / process_max_fds"),
        ["scmb_acks_total", "process_max_fds"]
    );
}

/// `promtool`, from Debian's `prometheus` package (scripts/install-deps).
fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|f| f.is_file())
    })
}

#[test]
fn the_alerting_rules_pass_promtool() {
    let Some(promtool) = promtool() else {
        // CI installs it (scripts/install-deps); a developer machine may not have it.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing on CI: scripts/install-deps installs Debian's prometheus package"
        );
        eprintln!("\n\n*** SKIPPED: promtool not found (apt-get install prometheus, or run scripts/install-deps): the alerting rules were NOT checked ***\n\n");
        return;
    };
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo_file("contrib/prometheus/scmb-rules.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_flat_objects_with_the_appliance_at_the_top_level() {
    let sim = shared_sim();
    let tag = format!("objson{}", rand::random::<u32>());
    let run = ScmbRun::new(
        "obs-json",
        sim,
        "jsonlog",
        &tag,
        "",
        "[appliance.console]\n",
    );
    let l = run.start(&[("SCMB_LOG_FORMAT", "json")]).await;
    l.terminate();
    let r = l.finish(WAIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{}", r.stderr);
    for v in &lines {
        let o = v.as_object().expect("an object");
        for key in ["message", "level", "timestamp", "target"] {
            assert!(o.get(key).is_some_and(Value::is_string), "no {key}: {v}");
        }
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .contains(&o["level"].as_str().unwrap_or("")),
            "{v}"
        );
        let ts = o["timestamp"].as_str().unwrap_or("");
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "timestamp {ts}"
        );
        assert!(
            o.get("fields").is_none() && o.get("span").is_none(),
            "nested: {v}"
        );
        for (k, value) in o {
            if let Some(s) = value.as_str() {
                assert!(
                    !s.starts_with("Some(") && s != "None" && !s.starts_with('"'),
                    "{k} in Rust debug form: {v}"
                );
            }
        }
    }
    // The appliance's own lines (its span) carry its name at the top level.
    assert!(
        lines.iter().any(|v| v["appliance"] == "jsonlog"
            && v["message"] == "connected to the message bus"
            && v["queue"].is_string()),
        "{}",
        r.stderr
    );
}

/// A config whose one appliance cannot start (no certificates): its supervisor logs errors
/// and retries, the process keeps running.
fn failing_config(test: &str) -> PathBuf {
    let dir = temp_dir(test);
    let config = dir.join("scmb.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[[appliance]]\nname = \"nowhere\"\naddress = \"127.0.0.1:1\"\n\
             password_env = \"OV_PASSWORD\"\ncert_dir = \"{certs}\"\n[appliance.console]\n",
            state = dir.join("state").display(),
            certs = dir.join("no-certs").display(),
        ),
    )
    .expect("config");
    config
}

/// Runs `scmb run` on `config` with stderr in a file and `$JOURNAL_STREAM` set to `journal`
/// (or to that file's own `DEVICE:INODE` when `None`, as systemd does) until `done` holds for
/// the lines written; those lines.
fn stderr_lines(
    config: &Path,
    journal: Option<&str>,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let log = config.with_file_name("stderr.log");
    let file = std::fs::File::create(&log).expect("log file");
    let m = file.metadata().expect("metadata");
    let stream = journal
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}:{}", m.dev(), m.ino()));
    let mut child = common::command(
        &["run", "--config", config.to_str().expect("utf8")],
        &[
            ("OV_PASSWORD", "x"),
            ("RUST_LOG", "info"),
            ("JOURNAL_STREAM", &stream),
        ],
    )
    .stdout(Stdio::null())
    .stderr(file)
    .spawn()
    .expect("spawn");
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if done(&lines) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    lines
}

#[test]
fn under_the_journal_each_log_line_starts_with_its_syslog_priority() {
    let config = failing_config("obs-journal");
    let lines = stderr_lines(&config, None, |l| {
        l.iter().any(|x| x.starts_with("<3>")) && l.iter().any(|x| x.starts_with("<6>"))
    });
    assert!(
        lines
            .iter()
            .any(|x| x.starts_with("<3>") && x.contains("ERROR")),
        "an error is priority 3 (journalctl -p err): {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|x| x.starts_with("<6>") && x.contains("INFO")),
        "{lines:?}"
    );
    for x in &lines {
        let level = ["ERROR", "WARN", "INFO", "DEBUG"]
            .into_iter()
            .find(|lv| x.contains(lv))
            .unwrap_or("?");
        let want = match level {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            _ => "<7>",
        };
        assert!(x.starts_with(want), "{level} line without {want}: {x}");
        assert!(!x.contains('\u{1b}'), "no colour for the journal: {x}");
    }

    // JSON lines get the same prefixes.
    let json = config.with_file_name("json.toml");
    std::fs::write(
        &json,
        std::fs::read_to_string(&config)
            .expect("config")
            .replace("[[appliance]]", "[log]\nformat = \"json\"\n[[appliance]]"),
    )
    .expect("json config");
    let lines = stderr_lines(&json, None, |l| l.iter().any(|x| x.starts_with("<3>{")));
    let errors: Vec<Value> = lines
        .iter()
        .filter_map(|x| x.strip_prefix("<3>"))
        .map(|x| serde_json::from_str(x).expect("JSON after the prefix"))
        .collect();
    assert!(
        !errors.is_empty() && errors.iter().all(|v| v["level"] == "ERROR"),
        "{lines:?}"
    );

    // Another file than the journal's stream (stderr redirected by a wrapper): no prefixes.
    let lines = stderr_lines(&config, Some("1:1"), |l| {
        l.iter().any(|x| x.contains("ERROR"))
    });
    assert!(lines.iter().any(|x| x.contains("ERROR")), "{lines:?}");
    assert!(!lines.iter().any(|x| x.starts_with('<')), "{lines:?}");
}
