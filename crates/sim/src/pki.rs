//! The simulated appliance's PKI: its internal CA, the broker's and the REST API's server
//! certificates and the RabbitMQ client keypair for CN `default`, all RSA 2048 like an
//! appliance's (the client key PKCS#1 PEM, exactly as an appliance hands it out), and the
//! simulator's own admin identity for publishing (ECDSA P-256: no appliance has it).
//!
//! Everything is generated under `DIR/pki` on first start and reused after. Private keys are
//! written atomically with mode 0600. RSA keys come from `openssl genpkey` when it is installed
//! (milliseconds) and from the `rsa` crate otherwise (seconds in a debug build, where its
//! big-integer arithmetic is unoptimised). This module does file I/O and key generation only: it
//! knows nothing of HTTP or AMQP.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_RSA_SHA256,
};
use rsa::pkcs8::EncodePrivateKey;
use serde::{Deserialize, Serialize};

/// The CN of the client certificate an appliance hands out for the SCMB.
pub const CLIENT_CN: &str = "default";
/// The CN the simulator itself uses to publish (full permissions on the broker).
pub const ADMIN_CN: &str = "ov-sim-admin";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e.to_string())
    }
}

/// Which names the broker's server certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerCertNames {
    /// Subject CN.
    pub common_name: String,
    /// subjectAltNames: IP addresses become IP SANs, everything else DNS SANs. Empty = CN only,
    /// like old appliances whose certificate names neither the IP nor the DNS name you dial.
    pub sans: Vec<String>,
}

impl Default for BrokerCertNames {
    fn default() -> Self {
        BrokerCertNames {
            common_name: "localhost".into(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

/// Paths of every PEM file of the simulated appliance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PkiPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
    pub rest_cert: PathBuf,
    pub rest_key: PathBuf,
    /// The client certificate for CN `default` (what `/keypair/default` hands out).
    pub client_cert: PathBuf,
    /// The client key, PKCS#1 PEM.
    pub client_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: &Path) -> Self {
        let p = |n: &str| dir.join(n);
        PkiPaths {
            dir: dir.to_path_buf(),
            ca_cert: p("ca.pem"),
            ca_key: p("ca-key.pem"),
            broker_cert: p("broker.pem"),
            broker_key: p("broker-key.pem"),
            rest_cert: p("rest.pem"),
            rest_key: p("rest-key.pem"),
            client_cert: p("client-default.pem"),
            client_key: p("client-default-key.pem"),
            admin_cert: p("admin.pem"),
            admin_key: p("admin-key.pem"),
        }
    }
}

/// The loaded PKI, with the PEM texts the REST API serves.
#[derive(Debug, Clone)]
pub struct Pki {
    pub paths: PkiPaths,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// Bumped each time the certificates are regenerated.
    pub generation: u64,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct PkiMeta {
    generation: u64,
    broker_names: Option<BrokerCertNames>,
    /// Whether `POST /rest/certificates/client/rabbitmq` has been done (the keypair endpoint
    /// answers 404 until then, like a fresh appliance).
    #[serde(default)]
    client_generated: bool,
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("pki.json")
}

fn read_meta(dir: &Path) -> PkiMeta {
    fs::read(meta_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_meta(dir: &Path, meta: &PkiMeta) -> Result<(), PkiError> {
    let body = serde_json::to_vec_pretty(meta).map_err(|e| PkiError::Generate(e.to_string()))?;
    write_atomic(&meta_path(dir), &body, 0o644)
}

/// Writes `data` to `path` through a temporary file and a rename, so that the file is never seen
/// half-written, with `mode` set before any byte is written.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "OneView Simulator Internal CA");
    dn.push(DnType::OrganizationName, "scmb simulated appliance");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    Ok(params)
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial[..]));
}

fn leaf_params(
    cn: &str,
    sans: &[String],
    eku: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    for san in sans {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| PkiError::Generate(format!("{san}: {e}")))?,
            ),
        });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    validity(&mut params);
    Ok(params)
}

fn ca_issuer(paths: &PkiPaths) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&read(&paths.ca_key)?)?;
    Ok(Issuer::new(ca_params()?, key))
}

/// Fresh RSA 2048 keys (PKCS#8 DER), made ahead and handed out one at a time. With `openssl`
/// installed they come from `openssl genpkey` processes running side by side (a fraction of a
/// second for all of them); without it, or when it fails, from the `rsa` crate (seconds each in
/// a debug build, where its big-integer arithmetic is unoptimised).
struct RsaKeys(Vec<Vec<u8>>);

impl RsaKeys {
    /// Starts making `n` keys at once.
    fn new(n: usize) -> RsaKeys {
        let children: Vec<_> = (0..n)
            .filter_map(|_| {
                std::process::Command::new("openssl")
                    .args([
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                    ])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        RsaKeys(
            children
                .into_iter()
                .filter_map(|c| c.wait_with_output().ok())
                .filter(|o| o.status.success())
                .filter_map(|o| {
                    use rustls::pki_types::pem::PemObject;
                    match rustls::pki_types::PrivateKeyDer::from_pem_slice(&o.stdout) {
                        Ok(rustls::pki_types::PrivateKeyDer::Pkcs8(k)) => {
                            Some(k.secret_pkcs8_der().to_vec())
                        }
                        _ => None,
                    }
                })
                .collect(),
        )
    }

    /// One key: a ready one, or one made now. Returns the key and its PKCS#1 PEM.
    fn take(&mut self) -> Result<(KeyPair, String), PkiError> {
        let pkcs8 = match self.0.pop() {
            Some(der) => der,
            None => {
                let gen_err = |e: &dyn std::fmt::Display| PkiError::Generate(e.to_string());
                let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                    .map_err(|e| gen_err(&e))?;
                key.to_pkcs8_der()
                    .map_err(|e| gen_err(&e))?
                    .as_bytes()
                    .to_vec()
            }
        };
        // PKCS#1 is the private-key field of PKCS#8: no arithmetic needed to convert.
        let info = rsa::pkcs8::PrivateKeyInfo::try_from(pkcs8.as_slice())
            .map_err(|e| PkiError::Generate(format!("a new RSA key does not parse: {e}")))?;
        let pkcs1_pem = pem("RSA PRIVATE KEY", info.private_key);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
            &PKCS_RSA_SHA256,
        )?;
        Ok((key, pkcs1_pem))
    }
}

/// PEM text of `der` under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// How a leaf certificate's key is made and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// RSA 2048, written as PKCS#8 (`PRIVATE KEY`).
    Rsa,
    /// RSA 2048, written as PKCS#1 (`RSA PRIVATE KEY`), as an appliance hands out its client key.
    RsaPkcs1,
    /// ECDSA P-256 (the simulator's own identity only).
    Ec,
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    leaf: (&str, &[String], ExtendedKeyUsagePurpose),
    kind: KeyKind,
    keys: &mut RsaKeys,
    (cert_path, key_path): (&Path, &Path),
) -> Result<(), PkiError> {
    let (cn, sans, eku) = leaf;
    let (key, key_pem) = match kind {
        KeyKind::Ec => {
            let k = KeyPair::generate()?;
            let pem = k.serialize_pem();
            (k, pem)
        }
        KeyKind::Rsa => {
            let (k, _) = keys.take()?;
            let pem = k.serialize_pem();
            (k, pem)
        }
        KeyKind::RsaPkcs1 => keys.take()?,
    };
    let cert = leaf_params(cn, sans, eku)?.signed_by(&key, issuer)?;
    write_atomic(key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(cert_path, cert.pem().as_bytes(), 0o644)
}

impl Pki {
    /// Loads the PKI under `dir`, generating whatever is missing. The broker certificate is
    /// re-issued when `broker_names` differ from the ones it was issued for.
    pub fn load_or_create(
        dir: &Path,
        broker_names: &BrokerCertNames,
        rest_sans: &[String],
    ) -> Result<Pki, PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let paths = PkiPaths::new(dir);
        let mut meta = read_meta(dir);
        if !paths.ca_cert.exists() || !paths.ca_key.exists() {
            Self::generate_all(&paths, broker_names, rest_sans)?;
            meta.broker_names = Some(broker_names.clone());
            meta.generation = meta.generation.max(1);
            write_meta(dir, &meta)?;
        } else {
            let issuer = ca_issuer(&paths)?;
            let mut keys = RsaKeys::new(0);
            if issuer.key().algorithm() != &PKCS_RSA_SHA256 {
                tracing::warn!(
                    dir = %dir.display(),
                    "this state directory's CA key is not RSA (made by an older ov-sim); \
                     `ov-sim certs regenerate` makes RSA keys like an appliance's"
                );
            }
            if meta.broker_names.as_ref() != Some(broker_names) || !paths.broker_cert.exists() {
                Self::issue_broker(&issuer, &paths, broker_names, &mut keys)?;
                meta.broker_names = Some(broker_names.clone());
                write_meta(dir, &meta)?;
            }
            if !paths.rest_cert.exists() {
                Self::issue_rest(&issuer, &paths, rest_sans, &mut keys)?;
            }
            if !paths.client_cert.exists() || !paths.client_key.exists() {
                Self::issue_client(&issuer, &paths, &mut keys)?;
            }
            if !paths.admin_cert.exists() {
                Self::issue_admin(&issuer, &paths)?;
            }
        }
        Self::load(paths, meta.generation)
    }

    fn load(paths: PkiPaths, generation: u64) -> Result<Pki, PkiError> {
        Ok(Pki {
            ca_pem: read(&paths.ca_cert)?,
            client_cert_pem: read(&paths.client_cert)?,
            client_key_pem: read(&paths.client_key)?,
            paths,
            generation,
        })
    }

    fn generate_all(
        paths: &PkiPaths,
        broker_names: &BrokerCertNames,
        rest_sans: &[String],
    ) -> Result<(), PkiError> {
        Self::generate_ca_and_certs(paths, broker_names, Some(rest_sans))
    }

    /// A new CA and everything it signs; the REST certificate only when `rest_sans` is given.
    fn generate_ca_and_certs(
        paths: &PkiPaths,
        broker_names: &BrokerCertNames,
        rest_sans: Option<&[String]>,
    ) -> Result<(), PkiError> {
        // CA, broker, client and (perhaps) REST keys, made side by side.
        let mut keys = RsaKeys::new(3 + usize::from(rest_sans.is_some()));
        let (ca_key, _) = keys.take()?;
        let ca_cert = ca_params()?.self_signed(&ca_key)?;
        write_atomic(&paths.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&paths.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        Self::issue_broker(&issuer, paths, broker_names, &mut keys)?;
        if let Some(sans) = rest_sans {
            Self::issue_rest(&issuer, paths, sans, &mut keys)?;
        }
        Self::issue_client(&issuer, paths, &mut keys)?;
        Self::issue_admin(&issuer, paths)
    }

    fn issue_client(
        issuer: &Issuer<'_, KeyPair>,
        paths: &PkiPaths,
        keys: &mut RsaKeys,
    ) -> Result<(), PkiError> {
        issue(
            issuer,
            (CLIENT_CN, &[], ExtendedKeyUsagePurpose::ClientAuth),
            KeyKind::RsaPkcs1,
            keys,
            (&paths.client_cert, &paths.client_key),
        )
    }

    fn issue_broker(
        issuer: &Issuer<'_, KeyPair>,
        paths: &PkiPaths,
        names: &BrokerCertNames,
        keys: &mut RsaKeys,
    ) -> Result<(), PkiError> {
        issue(
            issuer,
            (
                &names.common_name,
                &names.sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            KeyKind::Rsa,
            keys,
            (&paths.broker_cert, &paths.broker_key),
        )
    }

    fn issue_rest(
        issuer: &Issuer<'_, KeyPair>,
        paths: &PkiPaths,
        sans: &[String],
        keys: &mut RsaKeys,
    ) -> Result<(), PkiError> {
        issue(
            issuer,
            (
                sans.first().map(String::as_str).unwrap_or("localhost"),
                sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            KeyKind::Rsa,
            keys,
            (&paths.rest_cert, &paths.rest_key),
        )
    }

    fn issue_admin(issuer: &Issuer<'_, KeyPair>, paths: &PkiPaths) -> Result<(), PkiError> {
        issue(
            issuer,
            (ADMIN_CN, &[], ExtendedKeyUsagePurpose::ClientAuth),
            KeyKind::Ec,
            &mut RsaKeys(Vec::new()),
            (&paths.admin_cert, &paths.admin_key),
        )
    }

    /// Regenerates the PKI (new CA, so certificates issued before no longer verify: the old
    /// client certificate is refused by the broker once it restarts, like a revocation). With
    /// `keep_rest` the REST API keeps its certificate, like an appliance whose web certificate
    /// is not issued by its internal CA: clients that pinned it can still download the new ones.
    pub fn regenerate(
        &self,
        broker_names: &BrokerCertNames,
        rest_sans: &[String],
        keep_rest: bool,
    ) -> Result<Pki, PkiError> {
        let dir = &self.paths.dir;
        Self::generate_ca_and_certs(&self.paths, broker_names, (!keep_rest).then_some(rest_sans))?;
        let mut meta = read_meta(dir);
        meta.generation = self.generation + 1;
        meta.broker_names = Some(broker_names.clone());
        write_meta(dir, &meta)?;
        Self::load(self.paths.clone(), meta.generation)
    }

    /// Whether the client keypair has been "generated" through the REST API.
    pub fn client_generated(&self) -> bool {
        read_meta(&self.paths.dir).client_generated
    }

    pub fn set_client_generated(&self, generated: bool) -> Result<(), PkiError> {
        let mut meta = read_meta(&self.paths.dir);
        meta.client_generated = generated;
        write_meta(&self.paths.dir, &meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("scmb-pki-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keys_are_rsa_2048_the_client_key_pkcs1_and_private_files_0600() {
        let dir = tmpdir("pkcs1");
        let pki = Pki::load_or_create(&dir, &BrokerCertNames::default(), &["localhost".into()])
            .expect("pki");
        assert!(pki
            .client_key_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(pki
            .client_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        for key in [
            &pki.paths.ca_key,
            &pki.paths.client_key,
            &pki.paths.broker_key,
            &pki.paths.admin_key,
            &pki.paths.rest_key,
        ] {
            let mode = fs::metadata(key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // The appliance's certificates are RSA 2048; the client key PKCS#1, the others PKCS#8.
        for key in [
            &pki.paths.ca_key,
            &pki.paths.broker_key,
            &pki.paths.rest_key,
            &pki.paths.client_key,
        ] {
            let pem = fs::read_to_string(key).expect("key");
            let rsa_key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
                .unwrap_or_else(|e| panic!("{} is not an RSA key: {e}", key.display()));
            assert_eq!(rsa_key.size() * 8, 2048, "{}", key.display());
        }
        // Reused on the second start: same CA.
        let again = Pki::load_or_create(&dir, &BrokerCertNames::default(), &["localhost".into()])
            .expect("pki");
        assert_eq!(again.ca_pem, pki.ca_pem);
        // Regeneration makes a new CA.
        let regen = again
            .regenerate(&BrokerCertNames::default(), &["localhost".into()], false)
            .expect("regen");
        assert_ne!(regen.ca_pem, pki.ca_pem);
        assert_eq!(regen.generation, pki.generation + 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
