//! `scmb check --config FILE`: is everything in place before the service starts? Validates
//! the config, then for each appliance logs in to REST, completes a TLS + EXTERNAL handshake
//! with its broker (queue declared and bound, then closed), reports the certificates' expiry
//! (a warning under 30 days), checks Service Manager's and ServiceNow's reachability and
//! credentials (reading, never creating), and PagerDuty's reachability, the form of its
//! routing keys and the alerts it refused.
//! One line per check on stdout; exit 0 only when none failed (warnings do not fail).

use std::path::Path;
use std::time::Duration;

use x509_cert::der::Decode;

use crate::config::{ApplianceConfig, Config, ConfigError};
use crate::failure::{self, Failure};
use crate::flags::DaemonArgs;
use crate::{bootstrap, certs};

/// Loads the config (a broken one is the first FAIL line) and checks everything in it.
pub fn main(args: DaemonArgs) -> std::process::ExitCode {
    let cfg = Config::load(&args.config);
    let mut log = args.log.settings(cfg.as_ref().ok().map(|c| &c.log));
    if log.level == crate::telemetry::DEFAULT_LOG_LEVEL {
        // The check lines are the report; routine log lines would only interleave.
        log.level = "warn".into();
    }
    super::run_to_exit("scmb", &log, 1, run(cfg, args))
}

/// Certificates expiring sooner than this are reported as a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

struct Report {
    /// The exit code of the first failure.
    failed: Option<u8>,
}

impl Report {
    fn line(&mut self, v: Verdict, who: &str, what: &str, detail: &str) {
        let tag = match v {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        println!("{tag}  {who:<12} {what:<16} {detail}");
    }

    fn fail(&mut self, who: &str, what: &str, f: &Failure) {
        self.line(Verdict::Fail, who, what, &f.message);
        self.failed.get_or_insert(f.code);
    }
}

/// When a PEM file's certificates expire: (subject, seconds since the epoch) for each.
pub fn expiry(path: &Path) -> Result<Vec<(String, i64)>, String> {
    let certs = scmb_tls::load_certs(path).map_err(|e| e.to_string())?;
    certs
        .iter()
        .map(|c| {
            let cert = x509_cert::Certificate::from_der(c.as_ref())
                .map_err(|e| format!("{}: not a certificate: {e}", path.display()))?;
            let tbs = &cert.tbs_certificate;
            let not_after = tbs.validity.not_after.to_unix_duration().as_secs() as i64;
            Ok((tbs.subject.to_string(), not_after))
        })
        .collect()
}

fn check_expiry(r: &mut Report, who: &str, dir: &Path) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for file in [certs::CA_FILE, certs::CERT_FILE] {
        let path = dir.join(file);
        match expiry(&path) {
            Err(e) => r.fail(
                who,
                file,
                &Failure::new(
                    failure::CERTS,
                    format!("{e} (run `scmb setup` for this appliance)"),
                ),
            ),
            Ok(list) if list.is_empty() => r.fail(
                who,
                file,
                &Failure::new(
                    failure::CERTS,
                    format!("{} holds no certificate", path.display()),
                ),
            ),
            Ok(list) => {
                for (subject, not_after) in list {
                    let days = (not_after - now).div_euclid(86_400);
                    let when = time::OffsetDateTime::from_unix_timestamp(not_after)
                        .map(|t| t.date().to_string())
                        .unwrap_or_else(|_| not_after.to_string());
                    if not_after <= now {
                        r.fail(
                            who,
                            file,
                            &Failure::new(
                                failure::CERTS,
                                format!("{subject} EXPIRED on {when}: regenerate it on the appliance, then `scmb setup`"),
                            ),
                        );
                    } else if days < EXPIRY_WARNING_DAYS {
                        r.line(
                            Verdict::Warn,
                            who,
                            file,
                            &format!("{subject} expires on {when}, in {days} days: renew it soon"),
                        );
                    } else {
                        r.line(
                            Verdict::Ok,
                            who,
                            file,
                            &format!("{subject} expires on {when} ({days} days)"),
                        );
                    }
                }
            }
        }
    }
}

async fn check_appliance(r: &mut Report, a: &ApplianceConfig, state_dir: &Path) {
    let who = a.name.as_str();
    let s = match a.settings(state_dir) {
        Ok(s) => s,
        Err(e) => return r.fail(who, "secrets", &Failure::new(failure::USAGE, e.to_string())),
    };
    let host = a.address.as_str();
    let dir = s.rest.cert_dir.clone();
    match tokio::time::timeout(Duration::from_secs(60), bootstrap::login(&s.rest)).await {
        Ok(Ok(session)) => {
            r.line(
                Verdict::Ok,
                who,
                "rest login",
                &format!(
                    "logged in to {host} as {} (API version {})",
                    a.user,
                    session.api_version()
                ),
            );
            let _ = session.logout().await;
        }
        Ok(Err(f)) => r.fail(who, "rest login", &f),
        Err(_) => r.fail(
            who,
            "rest login",
            &Failure::new(
                failure::UNREACHABLE,
                format!("{host} did not answer within 60 s"),
            ),
        ),
    }
    check_expiry(r, who, &dir);
    let bus = &s.bus.config;
    match scmb_bus::subscribe(bus).await {
        Ok(sub) => {
            r.line(
                Verdict::Ok,
                who,
                "bus",
                &format!(
                    "TLS + EXTERNAL handshake with {}:{}, queue bound to {}",
                    bus.host,
                    bus.port,
                    bus.routes.join(", ")
                ),
            );
            sub.close().await;
        }
        Err(e) => r.fail(who, "bus", &e.into()),
    }
    if let Some(sm) = &s.sinks.service_manager {
        let line = match scmb_servicemanager::SmClient::new(sm.client.clone()) {
            Err(e) => Err(Failure::new(failure::USAGE, e.to_string())),
            Ok(client) => crate::sinks::service_manager::probe(&client)
                .await
                .map(|()| {
                    format!(
                        "{} answered and accepted user {}",
                        client.base_url(),
                        sm.client.user
                    )
                })
                .map_err(Failure::from),
        };
        match line {
            Ok(l) => r.line(Verdict::Ok, who, "service manager", &l),
            Err(f) => r.fail(who, "service manager", &f),
        }
    }
    if let Some(pd) = &s.sinks.pagerduty {
        match crate::sinks::pagerduty::probe(pd).await {
            Ok(l) => r.line(Verdict::Ok, who, "pagerduty", &l),
            Err(e) => r.fail(who, "pagerduty", &e.into()),
        }
        let store = s.store.clone();
        let (fine, line) = tokio::task::spawn_blocking(move || {
            crate::sinks::pagerduty::recorded_failures(store.as_deref())
        })
        .await
        .unwrap_or_else(|e| (false, format!("cannot read the state store: {e}")));
        let v = if fine { Verdict::Ok } else { Verdict::Warn };
        r.line(v, who, "pagerduty store", &line);
    }
    if let Some(am) = &s.sinks.alertmanager {
        match crate::sinks::alertmanager::probe(am).await {
            Ok(l) => r.line(Verdict::Ok, who, "alertmanager", &l),
            Err(e) => r.fail(who, "alertmanager", &e.into()),
        }
    }
    if let Some(sn) = &s.sinks.servicenow {
        let line = crate::sinks::servicenow::check(sn)
            .await
            .map_err(Failure::from);
        match line {
            Ok(l) => r.line(Verdict::Ok, who, "servicenow", &l),
            Err(f) => r.fail(who, "servicenow", &f),
        }
    }
    if let Some(sl) = &s.sinks.syslog {
        match crate::sinks::syslog::probe(sl).await {
            Ok(l) => r.line(Verdict::Ok, who, "syslog", &l),
            Err(e) => r.fail(who, "syslog", &e.into()),
        }
    }
    if let Some(relay) = &s.sinks.relay {
        match crate::sinks::relay::probe(relay).await {
            Ok(l) => r.line(Verdict::Ok, who, "relay", &l),
            Err(e) => r.fail(who, "relay", &e.into()),
        }
    }
    for w in &s.sinks.webhooks {
        let what = format!("webhook {}", w.name);
        match crate::sinks::webhook::probe(w).await {
            Ok(l) => r.line(Verdict::Ok, who, &what, &l),
            Err(e) => r.fail(who, &what, &e.into()),
        }
    }
}

/// `scmb check`.
async fn run(cfg: Result<Config, ConfigError>, args: DaemonArgs) -> Result<(), Failure> {
    let mut r = Report { failed: None };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            r.fail("-", "config", &Failure::new(failure::USAGE, e.to_string()));
            return Err(Failure::new(failure::USAGE, "the config file is invalid"));
        }
    };
    r.line(
        Verdict::Ok,
        "-",
        "config",
        &format!(
            "{}: {} appliance(s)",
            args.config.display(),
            cfg.appliances.len()
        ),
    );
    let state_dir = cfg.state_dir(args.state_dir.as_deref());
    for a in &cfg.appliances {
        check_appliance(&mut r, a, &state_dir).await;
    }
    match r.failed {
        None => Ok(()),
        Some(code) => Err(Failure::new(
            code,
            "some checks failed (see the FAIL lines)",
        )),
    }
}
