//! Certificate bootstrap over REST: log in (EULA like the sample), generate the RabbitMQ client
//! keypair (409 = already there), wait for the task, download the CA and the keypair. REST
//! trust is the appliance CA (`--rest-ca`), a pinned fingerprint (trust on first use, stored per
//! appliance; a changed fingerprint is refused loudly), or `--insecure` with a loud warning.

use std::path::Path;
use std::time::Duration;

use scmb_oneview::{Client, Config, Credentials, Generation, Session};
use scmb_tls::{Fingerprint, NameCheck, ServerTrust};

use crate::certs::{self, CA_FILE, CERT_FILE, FINGERPRINT_FILE, KEY_FILE};
use crate::failure::{self, Failure};
use crate::settings::Rest;

const TASK_TIMEOUT: Duration = Duration::from_secs(300);

/// How the REST API's certificate is trusted.
pub async fn rest_trust(rest: &Rest) -> Result<ServerTrust, Failure> {
    let (host, dir) = (rest.host.as_str(), rest.cert_dir.as_path());
    if rest.insecure {
        tracing::warn!(
            host,
            "--insecure: the REST API's certificate is NOT verified; anyone on the path can read the password"
        );
        return Ok(ServerTrust::Insecure);
    }
    if let Some(ca) = &rest.ca {
        return Ok(ServerTrust::Ca(scmb_tls::load_certs(ca)?));
    }
    if let Some(fp) = &rest.fingerprint {
        let fp: Fingerprint = fp
            .parse()
            .map_err(|e: scmb_tls::TlsError| Failure::new(failure::USAGE, e.to_string()))?;
        // A value given by hand that does not match is most likely a typo, not an attack on
        // a pin: say so, with what the appliance presents (the connection itself stays pinned).
        if let Ok(seen) = Client::server_fingerprint(host, Duration::from_secs(15)).await {
            if seen != fp {
                return Err(Failure::new(
                    failure::TLS,
                    format!(
                        "the appliance's REST certificate has SHA-256 fingerprint {seen}, not the {fp} given with --rest-fingerprint (rest_fingerprint in a config file): check the value you gave against the appliance's console"
                    ),
                ));
            }
        }
        return Ok(ServerTrust::Pinned(fp));
    }
    if let Some(stored) = certs::pinned_fingerprint(dir)? {
        let fp: Fingerprint = stored.parse().map_err(|_| {
            Failure::new(
                failure::CERTS,
                format!(
                    "{} holds no valid fingerprint: delete it to trust the appliance again",
                    dir.join(FINGERPRINT_FILE).display()
                ),
            )
        })?;
        return Ok(ServerTrust::Pinned(fp));
    }
    let fp = Client::server_fingerprint(host, Duration::from_secs(15)).await?;
    tracing::warn!(
        host,
        fingerprint = %fp,
        file = %dir.join(FINGERPRINT_FILE).display(),
        "first connection to this appliance: trusting its REST certificate on first use; compare the fingerprint with the appliance's"
    );
    certs::pin_fingerprint(dir, &fp.to_string())?;
    Ok(ServerTrust::Pinned(fp))
}

/// Connects, negotiates the API version, logs in and accepts the EULA like the sample.
pub async fn login(rest: &Rest) -> Result<Session, Failure> {
    let (host, dir) = (rest.host.as_str(), rest.cert_dir.as_path());
    let trust = rest_trust(rest).await?;
    let mut cfg = Config::new(host, trust);
    if let Some(n) = &rest.server_name {
        cfg.names = NameCheck::Name(n.clone());
    }
    let client = Client::connect(cfg).await.map_err(|e| pin_hint(e, dir))?;
    tracing::info!(
        host,
        api_version = client.api_version(),
        "connected to the appliance"
    );
    let creds = Credentials {
        user: rest.user.clone(),
        password: rest
            .password
            .read()
            .map_err(|m| Failure::new(failure::USAGE, m))?,
        domain: rest.login_domain.clone(),
    };
    let session = client.login(creds).await?;
    if session.eula_status().await? {
        if !rest.accept_eula {
            return Err(Failure::new(
                failure::API,
                "the appliance's EULA has not been accepted; accept it in the OneView UI, or run without --no-accept-eula",
            ));
        }
        tracing::info!("accepting the EULA (support access: no), as the HPE sample does");
        session.accept_eula(false).await?;
    }
    Ok(session)
}

/// A changed pinned fingerprint is an error the user must act on: say where the pin lives.
fn pin_hint(e: scmb_oneview::OneViewError, dir: &Path) -> Failure {
    let mut f = Failure::from(e);
    if f.code == failure::TLS && f.message.contains("fingerprint") {
        f.message = format!(
            "REFUSING TO CONNECT: {}. If the appliance's certificate was legitimately replaced, delete {} (or pass --rest-fingerprint NEW) and try again",
            f.message,
            dir.join(FINGERPRINT_FILE).display()
        );
    }
    f
}

/// `-g`: asks the appliance for the keypair (409 means it is already there) and waits for the
/// task; returns what happened, for the caller to print or log. Progress goes to the log.
pub async fn generate(session: &Session) -> Result<&'static str, Failure> {
    match session.generate_keypair().await? {
        Generation::AlreadyExists => {
            Ok("The RabbitMQ client keypair already exists on the appliance (409): nothing to do.")
        }
        Generation::Started { task_uri } => {
            let mut last = None;
            session
                .wait_task(&task_uri, TASK_TIMEOUT, |t| {
                    if t.percent_complete != last {
                        last = t.percent_complete;
                        tracing::info!(state = %t.state, percent = t.percent_complete.unwrap_or(0), "keypair generation");
                    }
                })
                .await?;
            Ok("The RabbitMQ client keypair has been generated.")
        }
    }
}

/// `-d`: writes caroot.pem, client.pem and key.pem (0600) into `dir`; returns what was written,
/// for the caller to print (a command) or log (a service: its standard output is for events).
pub async fn download(session: &Session, dir: &Path) -> Result<String, Failure> {
    let ca = session.ca_certificate().await?;
    let Some(kp) = session.keypair().await? else {
        return Err(Failure::new(
            failure::CERTS,
            "the appliance has no RabbitMQ client keypair yet: run `scmb -a HOST -g` first (or `scmb setup`)",
        ));
    };
    // Refuse to write what is not PEM (some clients wrote "[object Object]" here).
    for (name, pem) in [(CA_FILE, &ca), (CERT_FILE, &kp.cert_pem)] {
        scmb_tls::certs_from_pem(pem.as_bytes(), &dir.join(name))?;
    }
    certs::write_atomic(&dir.join(CA_FILE), ca.as_bytes(), 0o644)?;
    certs::write_atomic(&dir.join(CERT_FILE), kp.cert_pem.as_bytes(), 0o644)?;
    certs::write_atomic(&dir.join(KEY_FILE), kp.key_pem.as_bytes(), 0o600)?;
    Ok(format!(
        "Wrote {CA_FILE}, {CERT_FILE} and {KEY_FILE} (mode 0600) in {}",
        dir.display()
    ))
}

/// `setup` (or `-g -d`): GET the keypair; only if missing, generate and wait; then download.
/// Returns the lines to print.
pub async fn setup(session: &Session, dir: &Path) -> Result<Vec<String>, Failure> {
    let mut said = Vec::new();
    if session.keypair().await?.is_none() {
        said.push(generate(session).await?.to_string());
    } else {
        tracing::info!("the appliance already has a RabbitMQ client keypair");
    }
    said.push(download(session, dir).await?);
    Ok(said)
}

/// `--auto-bootstrap` / `auto_bootstrap`: when the broker refuses the certificates on disk
/// (the appliance regenerated them) or there are none yet, downloads the appliance's current
/// ones. True when that worked and a (re)connect should follow. Everything is logged: a
/// service's standard output carries only events.
pub async fn refresh_certificates(session: &Session, dir: &Path, e: &scmb_bus::BusError) -> bool {
    match e {
        scmb_bus::BusError::MissingFile { .. } => {
            tracing::info!(dir = %dir.display(), "no client certificates here yet: downloading them from the appliance (auto-bootstrap)")
        }
        scmb_bus::BusError::UnknownCa { .. } | scmb_bus::BusError::CertificateRefused { .. } => {
            tracing::warn!(error = %e, "the broker refused the certificates on disk (the appliance regenerated them?): downloading them again (auto-bootstrap)")
        }
        _ => return false,
    }
    match download(session, dir).await {
        Ok(wrote) => {
            tracing::info!("{wrote}");
            true
        }
        Err(f) => {
            tracing::error!(error = %f, "cannot download the certificates");
            false
        }
    }
}
