//! Every way the tool can fail, as one line for the user and a documented exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also after Ctrl-C / SIGTERM) |
//! | 1 | unexpected error |
//! | 2 | usage error (bad flags, no password available) |
//! | 3 | authentication failed (wrong user or password, client certificate refused) |
//! | 4 | certificates missing or unusable |
//! | 5 | appliance or message bus unreachable |
//! | 6 | TLS verification failed (CA, name or pinned fingerprint mismatch) |
//! | 7 | the appliance refused the request (API error) |
//! | 8 | the state store is in use by another process (locked) |
//! | 9 | the state store is damaged or truncated |
//! | 10 | the state store cannot be written (no space left, permission denied, other I/O errors) |

use std::fmt;

use scmb_bus::BusError;
use scmb_oneview::OneViewError;

use crate::certs::CertError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub const UNEXPECTED: u8 = 1;
pub const USAGE: u8 = 2;
pub const AUTH: u8 = 3;
pub const CERTS: u8 = 4;
pub const UNREACHABLE: u8 = 5;
pub const TLS: u8 = 6;
pub const API: u8 = 7;
pub const STORE_LOCKED: u8 = 8;
pub const STORE_DAMAGED: u8 = 9;
pub const STORE_UNWRITABLE: u8 = 10;

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<BusError> for Failure {
    fn from(e: BusError) -> Self {
        let code = match &e {
            BusError::MissingFile { .. } | BusError::KeyReadable { .. } | BusError::Tls(_) => CERTS,
            BusError::Unreachable { .. } => UNREACHABLE,
            BusError::UnknownCa { .. }
            | BusError::NameMismatch { .. }
            | BusError::Handshake { .. }
            | BusError::NotTls { .. } => TLS,
            BusError::CertificateRefused { .. } | BusError::Refused { .. } => AUTH,
            BusError::RouteTooLong(_) => USAGE,
            _ => UNEXPECTED,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<OneViewError> for Failure {
    fn from(e: OneViewError) -> Self {
        let code = match &e {
            OneViewError::Unreachable { .. } => UNREACHABLE,
            OneViewError::Tls { .. } => TLS,
            OneViewError::AuthFailed { .. } => AUTH,
            OneViewError::Api { .. } | OneViewError::TaskFailed { .. } => API,
            OneViewError::Config(_) => USAGE,
            _ => UNEXPECTED,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<CertError> for Failure {
    fn from(e: CertError) -> Self {
        Failure::new(CERTS, e.to_string())
    }
}

impl From<scmb_tls::TlsError> for Failure {
    fn from(e: scmb_tls::TlsError) -> Self {
        Failure::new(CERTS, e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::Locked { .. } => STORE_LOCKED,
            StoreError::Damaged { .. } | StoreError::Corrupt { .. } => STORE_DAMAGED,
            StoreError::NoSpace { .. }
            | StoreError::Denied { .. }
            | StoreError::Open { .. }
            | StoreError::Upgrade { .. }
            | StoreError::Db(_) => STORE_UNWRITABLE,
        };
        Failure::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_failure_has_its_documented_exit_code() {
        let path = std::path::PathBuf::from("/var/lib/scmb/dc1/scmb.redb");
        let dir = std::path::PathBuf::from("/var/lib/scmb/dc1");
        let code = |e: StoreError| Failure::from(e).code;
        assert_eq!(code(StoreError::Locked { path: path.clone() }), 8);
        let detail = String::from("x");
        assert_eq!(
            code(StoreError::Damaged {
                path: path.clone(),
                detail: detail.clone()
            }),
            9
        );
        assert_eq!(
            code(StoreError::NoSpace {
                path: path.clone(),
                dir: dir.clone(),
                detail: detail.clone()
            }),
            10
        );
        assert_eq!(
            code(StoreError::Upgrade {
                path: path.clone(),
                detail: detail.clone()
            }),
            10
        );
        assert_eq!(code(StoreError::Denied { path, dir, detail }), 10);
    }
}
