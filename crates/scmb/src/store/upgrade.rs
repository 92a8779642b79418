//! Upgrades a state database written by scmb 0.1 (redb 2, file format v2) to the format this
//! version writes (redb 4, file format v3), in place, on the first open.
//!
//! The old file is first copied beside it (`<name>.v2-backup`, or `.v2-backup.N` when that
//! name is taken), then every table is copied into a new file (`<name>.upgrading`) that
//! replaces the old one with one rename. A crash or an error at any point leaves the old file
//! where it was, unchanged: the next start upgrades it again.

use std::path::{Path, PathBuf};

use redb2::{ReadableTable as _, ReadableTableMetadata as _};

use super::{io_failure, StoreError, ALERTS, META, PRINTED};

/// The file format redb 2 wrote, which this version upgrades.
pub(super) const V2: u8 = 2;

/// What an upgrade did, for the log.
#[derive(Debug)]
pub(super) struct Upgraded {
    pub backup: PathBuf,
    pub records: usize,
}

fn failed(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Upgrade {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// A name beside `path`: `<file name><suffix>`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The first free backup name beside `path`.
fn backup_name(path: &Path) -> PathBuf {
    let first = beside(path, ".v2-backup");
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| beside(path, &format!(".v2-backup.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Copies `src` to `dst` and makes the copy durable.
fn durable_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::copy(src, dst)?;
    std::fs::File::open(dst)?.sync_all()
}

/// Upgrades the v2 store at `path` (see the module's documentation).
pub(super) fn upgrade(path: &Path) -> Result<Upgraded, StoreError> {
    let backup = backup_name(path);
    durable_copy(path, &backup).map_err(|e| {
        let _ = std::fs::remove_file(&backup);
        match io_failure(path, &e) {
            e @ (StoreError::NoSpace { .. } | StoreError::Denied { .. }) => e,
            _ => failed(path, format!("cannot copy it to {}: {e}", backup.display())),
        }
    })?;

    // Held open (and so locked against other processes) until the new file is in its place.
    let old = redb2::Database::open(path).map_err(|e| match e {
        redb2::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        e => failed(path, format!("the old file cannot be read: {e}")),
    })?;
    let fresh = beside(path, ".upgrading");
    let _ = std::fs::remove_file(&fresh);
    let records = copy_tables(&old, &fresh).map_err(|detail| {
        let _ = std::fs::remove_file(&fresh);
        failed(path, detail)
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&fresh, meta.permissions());
    }
    std::fs::rename(&fresh, path).map_err(|e| failed(path, format!("cannot replace it: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    drop(old);
    Ok(Upgraded { backup, records })
}

/// Every row of the old table `name` (none when it does not exist), read with `read`,
/// checked against the number of rows the table says it holds.
fn rows<V: redb2::Value + 'static, T>(
    r: &redb2::ReadTransaction,
    name: &str,
    read: impl Fn(<V as redb2::Value>::SelfType<'_>) -> T,
) -> Result<Vec<(String, T)>, String> {
    let e = |e: &dyn std::fmt::Display| format!("table {name}: {e}");
    let t = match r.open_table(redb2::TableDefinition::<&str, V>::new(name)) {
        Ok(t) => t,
        Err(redb2::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(x) => return Err(e(&x)),
    };
    let mut out = Vec::new();
    for row in t.iter().map_err(|x| e(&x))? {
        let (k, v) = row.map_err(|x| e(&x))?;
        out.push((k.value().to_string(), read(v.value())));
    }
    let held = t.len().map_err(|x| e(&x))?;
    if u64::try_from(out.len()).ok() != Some(held) {
        return Err(e(&format!(
            "read {} records of the {held} it holds: the old file may be damaged",
            out.len()
        )));
    }
    Ok(out)
}

/// Copies the store's three tables from `old` into a new database at `to`, in one
/// transaction, and checks that every record arrived.
fn copy_tables(old: &redb2::Database, to: &Path) -> Result<usize, String> {
    let r = old.begin_read().map_err(|e| e.to_string())?;
    let alerts_rows = rows::<&[u8], _>(&r, "alerts", |v| v.to_vec())?;
    let meta_rows = rows::<&str, _>(&r, "meta", |v| v.to_string())?;
    let printed_rows = rows::<&str, _>(&r, "printed", |v| v.to_string())?;
    let new = redb::Database::create(to).map_err(|e| e.to_string())?;
    let w = new.begin_write().map_err(|e| e.to_string())?;
    {
        let e = |e: redb::Error| format!("the new file: {e}");
        let mut alerts = w.open_table(ALERTS).map_err(|x| e(x.into()))?;
        for (k, v) in &alerts_rows {
            alerts
                .insert(k.as_str(), v.as_slice())
                .map_err(|x| e(x.into()))?;
        }
        let mut meta = w.open_table(META).map_err(|x| e(x.into()))?;
        for (k, v) in &meta_rows {
            meta.insert(k.as_str(), v.as_str())
                .map_err(|x| e(x.into()))?;
        }
        let mut printed = w.open_table(PRINTED).map_err(|x| e(x.into()))?;
        for (k, v) in &printed_rows {
            printed
                .insert(k.as_str(), v.as_str())
                .map_err(|x| e(x.into()))?;
        }
    }
    w.commit().map_err(|e| format!("the new file: {e}"))?;
    Ok(alerts_rows.len() + meta_rows.len() + printed_rows.len())
}

#[cfg(test)]
mod tests {
    use super::super::{Step, Store, StoreError, CHECKPOINT};
    use std::path::{Path, PathBuf};

    /// A store written by scmb 0.1.0 (redb 2.6, file format v2), kept compressed in testdata/
    /// (see testdata/README.md for what it holds), unpacked into a fresh directory.
    fn store_from_0_1(name: &str) -> (PathBuf, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("scmb-upgrade-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/store-v2/scmb.redb.gz");
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .expect("gzip");
        assert!(out.status.success(), "gzip -dc {}", gz.display());
        let path = dir.join("scmb.redb");
        std::fs::write(&path, &out.stdout).expect("write");
        (path, out.stdout)
    }

    #[test]
    fn a_store_written_by_scmb_0_1_is_upgraded_in_place_keeping_every_record_and_a_backup() {
        let (path, original) = store_from_0_1("ok");
        let dir = path.parent().expect("dir").to_path_buf();
        // A backup of an earlier upgrade is never overwritten.
        std::fs::write(dir.join("scmb.redb.v2-backup"), b"older").expect("older backup");
        {
            let s = Store::open(&path).expect("the old store opens");
            let r = s.get("/rest/alerts/1").expect("get").expect("alert 1");
            assert_eq!(
                (r.incident.as_deref(), &r.step),
                (Some("IM10001"), &Step::Noted)
            );
            assert_eq!(r.updated, "2026-11-29T10:00:00.000Z");
            let r = s.get("/rest/alerts/2").expect("get").expect("alert 2");
            assert_eq!(r.step, Step::Creating);
            assert_eq!(r.reference.as_deref(), Some("scmb:dc1:/rest/alerts/2"));
            let r = s.get("/rest/alerts/4").expect("get").expect("alert 4");
            assert_eq!(r.step, Step::Failed);
            assert!(r.reason.is_some());
            let r = s
                .get("servicenow:/rest/alerts/5")
                .expect("get")
                .expect("alert 5");
            assert_eq!(
                (r.incident.as_deref(), &r.step),
                (Some("INC0010005"), &Step::Closed)
            );
            assert_eq!(s.all().expect("all").len(), 5);
            assert_eq!(
                s.meta(CHECKPOINT).expect("meta").as_deref(),
                Some("2026-11-29T09:59:59.123Z")
            );
            assert_eq!(
                s.meta("instance_id").expect("meta").as_deref(),
                Some("0f3c2a9e-store-fixture")
            );
            assert_eq!(
                s.printed("/rest/alerts/6").expect("printed").as_deref(),
                Some("2026-11-29T10:00:05.000Z")
            );
            // And it is written in the new format from now on.
            s.set_meta(CHECKPOINT, "2026-11-30T00:00:00.000Z")
                .expect("write");
        }
        let backup = dir.join("scmb.redb.v2-backup.1");
        assert_eq!(
            std::fs::read(&backup).expect("the backup"),
            original,
            "the backup is the old file, byte for byte"
        );
        assert_eq!(
            std::fs::read(dir.join("scmb.redb.v2-backup")).expect("older"),
            b"older"
        );
        assert!(!dir.join("scmb.redb.upgrading").exists());
        // Opened again: no second upgrade, the write kept.
        let s = Store::open(&path).expect("reopen");
        assert_eq!(
            s.meta(CHECKPOINT).expect("meta").as_deref(),
            Some("2026-11-30T00:00:00.000Z")
        );
        drop(s);
        assert!(!dir.join("scmb.redb.v2-backup.2").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_upgrade_that_cannot_finish_leaves_the_old_file_as_it_was_and_says_so() {
        let (path, original) = store_from_0_1("fail");
        let dir = path.parent().expect("dir").to_path_buf();
        // The new file cannot be made where it should be.
        std::fs::create_dir(dir.join("scmb.redb.upgrading")).expect("in the way");
        let e = Store::open(&path).expect_err("an error");
        assert!(matches!(e, StoreError::Upgrade { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("scmb.redb") && m.contains("unchanged"), "{m}");
        assert_eq!(std::fs::read(&path).expect("old"), original);
        // With the obstacle gone, the next start upgrades it.
        std::fs::remove_dir(dir.join("scmb.redb.upgrading")).expect("rmdir");
        let s = Store::open(&path).expect("open");
        assert_eq!(s.all().expect("all").len(), 5);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
