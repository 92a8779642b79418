//! `scmb setup`, `scmb certs generate|download|show`, the sample's `-g`/`-d` (and
//! `ov_to_sm -g/-d`): REST only, print what was done.

use crate::bootstrap;
use crate::certs;
use crate::failure::Failure;
use crate::flags::common::required_host;
use crate::flags::{ConnArgs, ShowArgs};

/// What a REST-only command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Generate,
    Download,
    Setup,
}

impl Mode {
    /// The sample's `-g` and `-d` (both: setup); none when neither is given.
    pub fn of(generate: bool, download: bool) -> Option<Mode> {
        match (generate, download) {
            (true, true) => Some(Mode::Setup),
            (true, false) => Some(Mode::Generate),
            (false, true) => Some(Mode::Download),
            (false, false) => None,
        }
    }
}

/// Logs in, acts, prints what was done.
pub async fn rest(mode: Mode, conn: ConnArgs) -> Result<(), Failure> {
    let rest = conn.rest()?;
    let session = bootstrap::login(&rest).await?;
    let said = match mode {
        Mode::Generate => vec![bootstrap::generate(&session).await?.to_string()],
        Mode::Download => vec![bootstrap::download(&session, &rest.cert_dir).await?],
        Mode::Setup => bootstrap::setup(&session, &rest.cert_dir).await?,
    };
    for line in said {
        println!("{line}");
    }
    Ok(())
}

/// `scmb certs show`: where the certificates are, their modes, sizes and fingerprints.
pub fn show(s: &ShowArgs) -> Result<(), Failure> {
    let host = required_host(s.host.as_deref())?;
    let dir = certs::cert_dir(s.cert_dir.as_deref(), s.cwd_certs, host)?;
    println!("certificate directory: {}", dir.display());
    for name in [
        certs::CA_FILE,
        certs::CERT_FILE,
        certs::KEY_FILE,
        certs::FINGERPRINT_FILE,
    ] {
        let p = dir.join(name);
        match std::fs::metadata(&p) {
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                println!(
                    "  {name:<16} {:o} {} bytes",
                    m.permissions().mode() & 0o777,
                    m.len()
                );
            }
            Err(_) => println!("  {name:<16} missing"),
        }
    }
    for name in [certs::CA_FILE, certs::CERT_FILE] {
        if let Ok(certs) = scmb_tls::load_certs(&dir.join(name)) {
            for c in certs {
                println!("  {name} SHA-256 {}", scmb_tls::Fingerprint::of(&c));
            }
        }
    }
    Ok(())
}
