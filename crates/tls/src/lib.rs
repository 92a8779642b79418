//! TLS trust for talking to an appliance, shared by the REST client and the bus consumer.
//!
//! An appliance's certificates are signed by its own internal CA and often do not name the
//! address they are reached by, so verification is a policy: the chain against the appliance CA
//! (with or without the name check, or against another name), a pinned SHA-256 fingerprint of
//! the server certificate, or — only when asked loudly — nothing. TLS 1.2 is the floor; one
//! crypto provider (ring) is chosen explicitly. No I/O beyond reading PEM files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#1, PKCS#8 or SEC1 expected)")]
    NoKey { path: PathBuf },
    #[error("{path} is not valid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("the client certificate and key do not belong together or are unusable: {0}")]
    ClientAuth(String),
    #[error("invalid TLS settings: {0}")]
    Config(String),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("{0:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    Fingerprint(String),
}

/// A SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        let bad = || TlsError::Fingerprint(s.to_string());
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// What the server's certificate is checked against.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// The chain must lead to one of these CA certificates (the appliance's internal CA).
    Ca(Vec<CertificateDer<'static>>),
    /// The server certificate must have exactly this SHA-256 fingerprint.
    Pinned(Fingerprint),
    /// Nothing is checked. Only ever from an explicit, loud flag.
    Insecure,
}

/// Which name the server certificate must carry (with [`ServerTrust::Ca`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameCheck {
    /// The host that is dialled.
    Host,
    /// Another name (`--tls-server-name`).
    Name(String),
    /// Chain only (`--no-verify-hostname`): for appliances reached by an IP their certificate
    /// does not list.
    Skip,
}

/// The ring provider, chosen explicitly so that no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses every certificate in PEM text.
pub fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a PEM certificate file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&read(path)?, path)
}

/// Reads a PEM private key (PKCS#1 as appliances hand it out, PKCS#8 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })?
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            reason: pem_reason(&e),
        })
}

/// Why PEM text could not be parsed, in one line and in the words operators have seen since
/// the first release (the retired `rustls-pemfile` wording: the marker or line in quotes, the
/// base64 error as it is).
pub fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "section end {:?} missing",
                String::from_utf8_lossy(end_marker)
            )
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("illegal section start: {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(reason) => reason.clone(),
        other => other.to_string(),
    }
}

/// A verifier that checks the chain against the CA but not the name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A verifier that accepts exactly one certificate (by fingerprint), or anything (`None`).
#[derive(Debug)]
struct PinnedOrNone {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrNone {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) => {
                let got = Fingerprint::of(end_entity);
                if got == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "server certificate fingerprint {got} does not match the pinned {pin}"
                    )))
                }
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds a client config (TLS 1.2+) for `trust` and `names`, optionally presenting a client
/// certificate. With [`NameCheck::Name`] the caller must also use that name as the SNI/server
/// name of the connection; see [`server_name`].
pub fn client_config(
    trust: &ServerTrust,
    names: &NameCheck,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        ServerTrust::Ca(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in cas {
                roots
                    .add(c.clone())
                    .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            match names {
                NameCheck::Skip => Arc::new(ChainOnly(webpki)),
                _ => webpki,
            }
        }
        ServerTrust::Pinned(fp) => Arc::new(PinnedOrNone {
            pin: Some(*fp),
            provider: provider.clone(),
        }),
        ServerTrust::Insecure => Arc::new(PinnedOrNone {
            pin: None,
            provider: provider.clone(),
        }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_auth {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::ClientAuth(e.to_string())),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The name to put in SNI and check against: `--tls-server-name` if given, else the host.
pub fn server_name(host: &str, names: &NameCheck) -> Result<ServerName<'static>, TlsError> {
    let n = match names {
        NameCheck::Name(n) => n.as_str(),
        _ => host,
    };
    ServerName::try_from(n.to_string()).map_err(|_| TlsError::ServerName(n.to_string()))
}

/// Checks that a client certificate and key belong together (amqprs panics otherwise; we want
/// a clear error instead).
pub fn check_client_pair(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::ClientAuth(e.to_string()))?;
    let ck = rustls::sign::CertifiedKey::new(certs.to_vec(), signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(TlsError::ClientAuth(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_print_with_them() {
        let hex = "AB".repeat(32);
        let a: Fingerprint = hex.parse().expect("plain");
        let with_colons = a.to_string();
        assert_eq!(with_colons.len(), 32 * 3 - 1);
        let b: Fingerprint = with_colons.to_lowercase().parse().expect("colons");
        assert_eq!(a, b);
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    fn temp_pem(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scmb-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    }

    /// The PEM errors keep the one-line wording of the `rustls-pemfile` days.
    #[test]
    fn missing_empty_and_corrupt_pem_files_give_the_same_one_line_errors_as_before() {
        let missing = Path::new("/nonexistent/scmb/ca.pem");
        let e = load_certs(missing).expect_err("missing").to_string();
        assert!(
            e.starts_with("cannot read /nonexistent/scmb/ca.pem: "),
            "{e}"
        );

        let empty = temp_pem("empty.pem", "no pem here\n");
        let e = load_certs(&empty).expect_err("empty").to_string();
        assert_eq!(e, format!("{} holds no PEM certificate", empty.display()));
        let e = load_key(&empty).expect_err("empty").to_string();
        assert_eq!(
            e,
            format!(
                "{} holds no PEM private key (PKCS#1, PKCS#8 or SEC1 expected)",
                empty.display()
            )
        );

        let unterminated = temp_pem("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let e = load_certs(&unterminated).expect_err("cut").to_string();
        assert_eq!(
            e,
            format!(
                "{} is not valid PEM: section end \"CERTIFICATE\" missing",
                unterminated.display()
            )
        );

        let bad64 = temp_pem(
            "bad64.pem",
            "-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n",
        );
        let e = load_key(&bad64).expect_err("bad base64").to_string();
        assert!(
            e.starts_with(&format!("{} is not valid PEM: ", bad64.display())),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
