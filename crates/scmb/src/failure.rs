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

use std::fmt;

use scmb_bus::BusError;
use scmb_oneview::OneViewError;

use crate::certs::CertError;

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
