//! Where the certificates live and how they are written: one directory per appliance (default
//! under the user's config dir, `--cert-dir`, or the current directory like the HPE sample),
//! files written atomically, the private key with mode 0600 from its first byte. Also the
//! trust-on-first-use store of the REST API's certificate fingerprint.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const CA_FILE: &str = "caroot.pem";
pub const CERT_FILE: &str = "client.pem";
pub const KEY_FILE: &str = "key.pem";
pub const FINGERPRINT_FILE: &str = "rest-fingerprint";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write {path}: {source} (choose a writable --cert-dir)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no home directory to keep certificates in: give --cert-dir DIR")]
    NoHome,
}

/// The per-appliance certificate directory.
pub fn cert_dir(explicit: Option<&Path>, cwd: bool, host: &str) -> Result<PathBuf, CertError> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if cwd {
        return Ok(PathBuf::from("."));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or(CertError::NoHome)?;
    // One directory per appliance; ':' of HOST:PORT is kept out of the name.
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(base.join("scmb").join(safe))
}

/// Writes `data` to `path` atomically (temporary file + rename) with `mode` set before the
/// first byte, so a key is never world-readable and never half-written.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
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
    let written = f.write_all(data).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })
}

/// The fingerprint pinned for this appliance's REST API, if any.
pub fn pinned_fingerprint(dir: &Path) -> Result<Option<String>, CertError> {
    let p = dir.join(FINGERPRINT_FILE);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertError::Read { path: p, source }),
    }
}

pub fn pin_fingerprint(dir: &Path, fp: &str) -> Result<(), CertError> {
    write_atomic(
        &dir.join(FINGERPRINT_FILE),
        format!("{fp}\n").as_bytes(),
        0o644,
    )
}
