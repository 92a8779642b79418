//! The durable record of what was done for each alert: alert uri → incident id and the step
//! reached, in an embedded ACID database (redb) under the state directory. Every write is
//! committed (fsync) before the call returns, so a crash at any instant leaves either the
//! previous record or the new one — never a half — and a restart resumes from the last step.
//!
//! Blocking I/O: callers on the async runtime go through [`Store::call`] (a blocking thread),
//! or, for the writes of the hot path, [`Store::put_async`] and [`Store::set_printed_async`]:
//! a writer thread commits every write queued meanwhile in one transaction (group commit), so
//! 64 lanes writing at once pay for one fsync, not 64 — and each caller still returns only
//! once its write is durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

mod upgrade;

const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// For `scmb --catch-up`: the eTag last printed for each alert uri.
const PRINTED: TableDefinition<&str, &str> = TableDefinition::new("printed");

/// The catch-up checkpoint: every alert modified before it has been handled.
pub const CHECKPOINT: &str = "checkpoint";

/// What can go wrong with the store. Opening it says why it cannot be used, each reason with
/// what to do: locked by another process, damaged or truncated, no space left, permission
/// denied, or anything else the file system answered.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database {path} is in use by another process (another scmb run, or an ov_to_sm with the same --state-dir): stop it, or give each its own state directory")]
    Locked { path: PathBuf },
    #[error("the state database {path} is damaged or truncated ({detail}): restore it from a copy, or move it aside and start again (the notes on the alerts and Service Manager's reference lookups still prevent duplicate incidents)")]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot write the state database {path}: no space left on its file system ({detail}): free space in {dir} and start again")]
    NoSpace {
        path: PathBuf,
        dir: PathBuf,
        detail: String,
    },
    #[error("cannot write the state database {path}: {detail}: make {dir} and the file writable by the user scmb runs as")]
    Denied {
        path: PathBuf,
        dir: PathBuf,
        detail: String,
    },
    #[error("cannot open the state database {path}: {detail}: check the file and the file system holding it")]
    Open { path: PathBuf, detail: String },
    #[error("cannot upgrade the state database {path} from scmb 0.1's file format ({detail}): the file is unchanged: fix the cause and start again")]
    Upgrade { path: PathBuf, detail: String },
    #[error("state database error: {0}")]
    Db(String),
    #[error("corrupt record for {uri}: {detail}")]
    Corrupt { uri: String, detail: String },
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Why the store at `path` cannot be opened, from what the file system answered.
fn io_failure(path: &Path, e: &std::io::Error) -> StoreError {
    use std::io::ErrorKind as K;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (path, detail) = (path.to_path_buf(), e.to_string());
    match e.kind() {
        K::StorageFull | K::QuotaExceeded => StoreError::NoSpace { path, dir, detail },
        K::PermissionDenied | K::ReadOnlyFilesystem => StoreError::Denied { path, dir, detail },
        // Shorter than its header or its own layout says: a partial copy.
        K::InvalidData | K::UnexpectedEof => StoreError::Damaged { path, detail },
        _ => StoreError::Open { path, detail },
    }
}

/// Why the store at `path` cannot be opened, from what redb answered.
fn open_failure(path: &Path, e: redb::Error) -> StoreError {
    let damaged = |detail: String| StoreError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    match e {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        redb::Error::Io(io) => io_failure(path, &io),
        redb::Error::Corrupted(detail) => damaged(detail),
        redb::Error::UpgradeRequired(v) => damaged(format!(
            "written in another version of the file format ({v})"
        )),
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => {
            damaged(format!("not a store written by scmb: {e}"))
        }
        e => StoreError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    }
}

thread_local! {
    /// Set while this thread runs redb where a panic is caught and reported as an error: the
    /// panic hook then stays silent, so that the user sees the one line of that error.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it (redb asserts on files it cannot make sense of, e.g. a
/// truncated one) into `Err` with the panic's message, without the panic hook's output.
fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        format!("redb stopped: {message}")
    })
}

/// How far the work for one alert got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// About to create the incident, tagged with `reference`: after a crash here, the system
    /// is asked for an incident with that reference before creating another. (A provable first
    /// attempt writes it only once its create ends in doubt: `Ticketer::first_attempt`.)
    Creating,
    /// The incident exists in Service Manager; the note is not written yet.
    Created,
    /// The note carrying the incident id is in the alert's change log: done.
    Noted,
    /// Service Manager refused the incident for good (e.g. validation); not retried.
    Failed,
    /// The alert was cleared or deleted and its incident updated/resolved/closed.
    Closed,
}

/// What is known about one alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub incident: Option<String>,
    pub step: Step,
    /// The correlation reference sent with the incident, for [`Step::Creating`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Why it failed, for [`Step::Failed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the record was last written (RFC 3339).
    pub updated: String,
}

impl Record {
    pub fn new(incident: Option<String>, step: Step) -> Record {
        Record {
            incident,
            step,
            reference: None,
            reason: None,
            updated: scmb_model::message::format_rfc3339_ms(time::OffsetDateTime::now_utc()),
        }
    }
}

/// The state database. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// The file, for the message when a read finds it damaged.
    path: PathBuf,
    writer: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Printed notes waiting for their commit (see [`Store::note_printed`]).
    notes: Arc<std::sync::Mutex<Notes>>,
    /// Batches the writer thread committed (failed ones not counted).
    commits: Arc<std::sync::atomic::AtomicU64>,
}

/// Printed notes not yet in the database: waiting for the next batch, or in the batch being
/// committed. [`Store::printed`] reads them first, so what was printed is known from the
/// moment it was noted, not only once committed.
/// By uri (the newest eTag noted wins): a burst notes hundreds within one linger, and every
/// delivery that is not a first sight asks for its alert.
#[derive(Default)]
struct Notes {
    waiting: std::collections::HashMap<String, String>,
    /// Shared with the writer while it commits them (not copied).
    committing: Arc<std::collections::HashMap<String, String>>,
}

impl Notes {
    /// The newest eTag noted for `uri` and not yet committed.
    fn find(&self, uri: &str) -> Option<String> {
        self.waiting
            .get(uri)
            .or_else(|| self.committing.get(uri))
            .cloned()
    }
}

/// The store's page cache where a sink tickets: each event reads and writes its alert's
/// records, and a storm keeps thousands of them hot.
pub const TICKETING_CACHE_BYTES: usize = 4 << 20;

/// The page cache otherwise (what was printed, the checkpoint): small, because a service with
/// a hundred appliances has a hundred stores, and a fresh store's own pages would fill a
/// larger cache.
pub const SMALL_CACHE_BYTES: usize = 128 << 10;

impl Drop for Inner {
    /// The last clone closes the database for good: the writer thread is stopped and joined,
    /// so that the file can be opened again at once (a reload restarts an appliance).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A write for the group-commit thread.
enum Write {
    Alert(String, Vec<u8>),
    Printed(String, String),
    /// Printed notes are waiting in the shared buffer: commit them after [`NOTE_LINGER`].
    Notes,
}

struct Job {
    write: Write,
    /// Who waits for the commit (nobody for [`Write::Notes`] and buffered records).
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    /// How long the write may wait for company before its commit starts, counted from when
    /// it was queued (a commit in progress meanwhile counts too).
    linger: std::time::Duration,
    queued: std::time::Instant,
}

/// How long writes nobody waits for (printed notes, [`Store::note_printed`]; buffered
/// records, [`Store::put_buffered`]) may wait for company before their commit: one fsync for a
/// burst instead of one per write. A write somebody awaits ends the wait at once.
const NOTE_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a durable write made beside a network call ([`Store::put_beside`]) may wait for
/// company: shorter than the call it runs beside (a OneView PUT takes 10 ms or more), so the
/// caller waits no longer, while a storm's writes share one commit (one fsync) instead of
/// taking one each.
const BESIDE_LINGER: std::time::Duration = std::time::Duration::from_millis(4);

/// Commits queued writes in batches until every [`Store`] clone is gone.
fn group_commit(
    db: Arc<Database>,
    jobs: std::sync::mpsc::Receiver<Job>,
    notes: Arc<std::sync::Mutex<Notes>>,
    commits: Arc<std::sync::atomic::AtomicU64>,
) {
    while let Ok(first) = jobs.recv() {
        // The batch's commit starts when its most impatient write says: at once for a write
        // somebody waits for on the critical path (what is queued already goes with it), a
        // few milliseconds for one that runs beside a slower call, and `NOTE_LINGER` for
        // writes nobody waits for (printed notes, buffered records).
        let mut until = first.queued + first.linger;
        let mut batch = vec![first];
        while batch.len() < 4096 {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let next = if left.is_zero() {
                jobs.try_recv().ok()
            } else {
                jobs.recv_timeout(left).ok()
            };
            match next {
                Some(j) => {
                    until = until.min(j.queued + j.linger);
                    batch.push(j);
                }
                None => break,
            }
        }
        // Taken into the batch, but still readable until committed.
        let noted = notes
            .lock()
            .map(|mut n| {
                let w = Arc::new(std::mem::take(&mut n.waiting));
                n.committing = w.clone();
                w
            })
            .unwrap_or_default();
        // A panic inside redb fails this batch instead of ending the writer thread.
        let result = catching_panics(|| -> Result<(), String> {
            let e = |e: redb::Error| e.to_string();
            let w = db.begin_write().map_err(|x| e(x.into()))?;
            {
                let mut alerts = w.open_table(ALERTS).map_err(|x| e(x.into()))?;
                let mut printed = w.open_table(PRINTED).map_err(|x| e(x.into()))?;
                for j in &batch {
                    match &j.write {
                        Write::Alert(uri, bytes) => {
                            alerts
                                .insert(uri.as_str(), bytes.as_slice())
                                .map_err(|x| e(x.into()))?;
                        }
                        Write::Printed(uri, etag) => {
                            printed
                                .insert(uri.as_str(), etag.as_str())
                                .map_err(|x| e(x.into()))?;
                        }
                        Write::Notes => {}
                    }
                }
                for (uri, etag) in noted.iter() {
                    printed
                        .insert(uri.as_str(), etag.as_str())
                        .map_err(|x| e(x.into()))?;
                }
            }
            w.commit().map_err(|x| e(x.into()))
        })
        .unwrap_or_else(Err);
        if result.is_ok() {
            commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut n) = notes.lock() {
            n.committing = Arc::default();
        }
        if let Err(e) = &result {
            if !noted.is_empty() {
                tracing::warn!(error = %e, notes = noted.len(), "cannot record what was printed; a catch-up may print it again");
            }
        }
        for j in batch {
            if let Some(done) = j.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Why [`open_database`] failed.
enum Opened {
    Redb(redb::Error),
    /// redb panicked on the file (its message).
    Panicked(String),
}

/// Opens (or creates) the database file and its tables.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, Opened> {
    catching_panics(|| -> Result<Database, redb::Error> {
        // A bounded page cache: redb's default (up to 1 GiB) would grow with every page
        // written.
        let database = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)?;
        let w = database.begin_write()?;
        w.open_table(ALERTS)?;
        w.open_table(META)?;
        w.open_table(PRINTED)?;
        w.commit()?;
        Ok(database)
    })
    .map_err(Opened::Panicked)?
    .map_err(Opened::Redb)
}

impl Store {
    /// Opens (or creates) the database at `path`, with the small page cache.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, SMALL_CACHE_BYTES)
    }

    /// Opens (or creates) the database at `path` with a page cache of `cache_bytes`. A file
    /// that cannot be used is an error saying why (never a panic, whatever the file holds).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_failure(path, &e))?;
        }
        let database = match open_database(path, cache_bytes) {
            Err(Opened::Redb(redb::Error::UpgradeRequired(upgrade::V2))) => {
                let done = upgrade::upgrade(path)?;
                tracing::warn!(
                    path = %path.display(),
                    backup = %done.backup.display(),
                    records = done.records,
                    "upgraded the state database from scmb 0.1's file format; the old file is kept as the backup (remove it once this version runs well)"
                );
                open_database(path, cache_bytes)
            }
            other => other,
        }
        .map_err(|e| match e {
            Opened::Redb(e) => open_failure(path, e),
            Opened::Panicked(detail) => StoreError::Damaged {
                path: path.to_path_buf(),
                detail,
            },
        })?;
        let database = Arc::new(database);
        let (writer, jobs) = std::sync::mpsc::channel();
        let d = database.clone();
        let notes: Arc<std::sync::Mutex<Notes>> = Arc::default();
        let n = notes.clone();
        let commits: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let c = commits.clone();
        let thread = std::thread::Builder::new()
            .name("scmb-store".into())
            .spawn(move || group_commit(d, jobs, n, c))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                db: database,
                path: path.to_path_buf(),
                writer: Some(writer),
                thread: Some(thread),
                notes,
                commits,
            }),
        })
    }

    async fn write(&self, write: Write, linger: std::time::Duration) -> Result<(), StoreError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.queue(Job {
            write,
            done: Some(done),
            linger,
            queued: std::time::Instant::now(),
        })?;
        rx.await
            .map_err(|_| StoreError::Db("the store's writer stopped".into()))?
            .map_err(StoreError::Db)
    }

    /// [`Store::put`] through the group commit: durable when it returns.
    pub async fn put_async(&self, uri: &str, rec: &Record) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(db)?;
        self.write(
            Write::Alert(uri.to_string(), bytes),
            std::time::Duration::ZERO,
        )
        .await
    }

    /// [`Store::put_async`] for a write made beside a slower call (a network round trip the
    /// caller waits for anyway): its commit may wait up to [`BESIDE_LINGER`] for other writes
    /// to share it. Durable when it returns.
    pub async fn put_beside(&self, uri: &str, rec: &Record) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(db)?;
        self.write(Write::Alert(uri.to_string(), bytes), BESIDE_LINGER)
            .await
    }

    /// Queues a record for the group commit without waiting for it: committed with the next
    /// batch (within [`NOTE_LINGER`]) and at the latest when the store closes. Only for a
    /// record whose loss in a crash is harmless, because the durable one before it leads to
    /// the same place (a step the next delivery confirms with one read). Reads see it once it
    /// is committed.
    pub fn put_buffered(&self, uri: &str, rec: &Record) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(db)?;
        self.queue(Job {
            write: Write::Alert(uri.to_string(), bytes),
            done: None,
            linger: NOTE_LINGER,
            queued: std::time::Instant::now(),
        })
    }

    /// How many batches the writer thread has committed (failed ones not counted).
    pub fn commits(&self) -> u64 {
        self.inner
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands a job to the group-commit thread.
    fn queue(&self, job: Job) -> Result<(), StoreError> {
        self.inner
            .writer
            .as_ref()
            .ok_or_else(|| StoreError::Db("the store is closed".into()))?
            .send(job)
            .map_err(|_| StoreError::Db("the store's writer stopped".into()))
    }

    /// Queues "printed" for the group commit without waiting for it: it is committed with the
    /// next batch, and at the latest when the store closes (a clean stop). A crash can lose
    /// the last batch; the alert may then be printed once more by a later catch-up, as it
    /// could be anyway by a crash between printing and recording.
    pub fn note_printed(&self, uri: &str, etag: &str) -> Result<(), StoreError> {
        let first = {
            let mut n = self
                .inner
                .notes
                .lock()
                .map_err(|_| StoreError::Db("the store's note buffer is poisoned".into()))?;
            let first = n.waiting.is_empty();
            n.waiting.insert(uri.to_string(), etag.to_string());
            first
        };
        if !first {
            return Ok(()); // the writer was woken for the burst already
        }
        self.queue(Job {
            write: Write::Notes,
            done: None,
            linger: NOTE_LINGER,
            queued: std::time::Instant::now(),
        })
    }

    /// [`Store::set_printed`] through the group commit: durable when it returns.
    pub async fn set_printed_async(&self, uri: &str, etag: &str) -> Result<(), StoreError> {
        self.write(
            Write::Printed(uri.to_string(), etag.to_string()),
            std::time::Duration::ZERO,
        )
        .await
    }

    pub fn get(&self, uri: &str) -> Result<Option<Record>, StoreError> {
        self.guarded(|| self.get_unguarded(uri))
    }

    /// Runs a read or a direct write, turning a panic inside redb (a page damaged after the
    /// open) into [`StoreError::Damaged`] instead of the end of the task that called.
    fn guarded<T>(&self, read: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        catching_panics(read).unwrap_or_else(|detail| {
            Err(StoreError::Damaged {
                path: self.inner.path.clone(),
                detail,
            })
        })
    }

    fn get_unguarded(&self, uri: &str) -> Result<Option<Record>, StoreError> {
        let r = self.inner.db.begin_read().map_err(db)?;
        let t = r.open_table(ALERTS).map_err(db)?;
        let Some(v) = t.get(uri).map_err(db)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                uri: uri.to_string(),
                detail: e.to_string(),
            })
    }

    /// Writes `rec` for `uri`, durably.
    pub fn put(&self, uri: &str, rec: &Record) -> Result<(), StoreError> {
        self.guarded(|| self.put_unguarded(uri, rec))
    }

    fn put_unguarded(&self, uri: &str, rec: &Record) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(db)?;
        let w = self.inner.db.begin_write().map_err(db)?;
        {
            let mut t = w.open_table(ALERTS).map_err(db)?;
            t.insert(uri, bytes.as_slice()).map_err(db)?;
        }
        w.commit().map_err(db)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.guarded(|| {
            let r = self.inner.db.begin_read().map_err(db)?;
            let t = r.open_table(META).map_err(db)?;
            Ok(t.get(key).map_err(db)?.map(|v| v.value().to_string()))
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.guarded(|| {
            let w = self.inner.db.begin_write().map_err(db)?;
            {
                let mut t = w.open_table(META).map_err(db)?;
                t.insert(key, value).map_err(db)?;
            }
            w.commit().map_err(db)
        })
    }

    /// The eTag last printed for `uri` (scmb's de-duplication across restarts), noted but not
    /// yet committed included.
    pub fn printed(&self, uri: &str) -> Result<Option<String>, StoreError> {
        if let Some(etag) = self.inner.notes.lock().ok().and_then(|n| n.find(uri)) {
            return Ok(Some(etag));
        }
        self.guarded(|| {
            let r = self.inner.db.begin_read().map_err(db)?;
            let t = r.open_table(PRINTED).map_err(db)?;
            Ok(t.get(uri).map_err(db)?.map(|v| v.value().to_string()))
        })
    }

    pub fn set_printed(&self, uri: &str, etag: &str) -> Result<(), StoreError> {
        self.guarded(|| {
            let w = self.inner.db.begin_write().map_err(db)?;
            {
                let mut t = w.open_table(PRINTED).map_err(db)?;
                t.insert(uri, etag).map_err(db)?;
            }
            w.commit().map_err(db)
        })
    }

    /// Every record (for reports and tests).
    pub fn all(&self) -> Result<Vec<(String, Record)>, StoreError> {
        self.guarded(|| self.all_unguarded())
    }

    fn all_unguarded(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let r = self.inner.db.begin_read().map_err(db)?;
        let t = r.open_table(ALERTS).map_err(db)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let uri = k.value().to_string();
            let rec = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                uri: uri.clone(),
                detail: e.to_string(),
            })?;
            out.push((uri, rec));
        }
        Ok(out)
    }

    /// Runs a store operation on a blocking thread.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("scmb-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.redb");
        {
            let s = Store::open(&path).expect("open");
            assert_eq!(s.get("/rest/alerts/1").expect("get"), None);
            s.put(
                "/rest/alerts/1",
                &Record::new(Some("IM10001".into()), Step::Created),
            )
            .expect("put");
            s.put(
                "/rest/alerts/1",
                &Record::new(Some("IM10001".into()), Step::Noted),
            )
            .expect("put");
        }
        let s = Store::open(&path).expect("reopen");
        let r = s.get("/rest/alerts/1").expect("get").expect("record");
        assert_eq!(r.incident.as_deref(), Some("IM10001"));
        assert_eq!(r.step, Step::Noted);
        assert_eq!(s.all().expect("all").len(), 1);
        assert_eq!(s.meta(CHECKPOINT).expect("meta"), None);
        s.set_meta(CHECKPOINT, "2026-11-25T10:00:00.000Z")
            .expect("set");
        assert_eq!(
            s.meta(CHECKPOINT).expect("meta").as_deref(),
            Some("2026-11-25T10:00:00.000Z")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn fresh(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "scmb-store-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("state.redb")
    }

    #[test]
    fn a_truncated_store_is_an_error_naming_the_file_not_a_panic() {
        let path = fresh("truncated");
        {
            let s = Store::open(&path).expect("open");
            s.put("/rest/alerts/1", &Record::new(None, Step::Noted))
                .expect("put");
        }
        let full = std::fs::read(&path).expect("read");
        // Every length a copy onto a full disk may leave, from nothing to one byte short.
        for cut in [1, 100, 512, 4096, full.len() / 2, full.len() - 1] {
            std::fs::write(&path, &full[..cut]).expect("truncate");
            let e = Store::open(&path).expect_err("truncated");
            assert!(matches!(e, StoreError::Damaged { .. }), "{cut}: {e:?}");
            let m = e.to_string();
            assert!(m.contains(path.to_str().expect("utf8")), "{m}");
            assert!(
                m.contains("restore it") && m.contains("move it aside"),
                "{m}"
            );
            assert!(!m.contains('\n') && !m.contains("another"), "{m}");
        }
        // An empty file is a new store (nothing was ever committed to it).
        std::fs::write(&path, b"").expect("empty");
        assert!(Store::open(&path).is_ok());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_store_open_elsewhere_is_locked_and_says_so() {
        let path = fresh("locked");
        let _held = Store::open(&path).expect("open");
        let e = Store::open(&path).expect_err("second open");
        assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn no_space_and_permission_denied_each_say_what_to_do_and_never_blame_another_scmb() {
        let path = Path::new("/var/lib/scmb/dc1/scmb.redb");
        let nospace = io_failure(path, &std::io::Error::from_raw_os_error(libc::ENOSPC));
        let quota = io_failure(path, &std::io::Error::from_raw_os_error(libc::EDQUOT));
        for e in [&nospace, &quota] {
            assert!(matches!(e, StoreError::NoSpace { .. }), "{e:?}");
            let m = e.to_string();
            assert!(
                m.contains("no space left") && m.contains("free space in /var/lib/scmb/dc1"),
                "{m}"
            );
        }
        for errno in [libc::EACCES, libc::EPERM, libc::EROFS] {
            let e = io_failure(path, &std::io::Error::from_raw_os_error(errno));
            assert!(matches!(e, StoreError::Denied { .. }), "{errno}: {e:?}");
            assert!(e.to_string().contains("writable by the user"), "{e}");
        }
        let other = io_failure(path, &std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, StoreError::Open { .. }), "{other:?}");
        for e in [nospace, quota, other] {
            let m = e.to_string();
            assert!(!m.contains("another") && !m.contains("message bus"), "{m}");
            assert!(m.contains("/var/lib/scmb/dc1/scmb.redb"), "{m}");
        }
    }

    #[test]
    fn a_print_noted_but_not_yet_committed_is_already_known() {
        let path = fresh("noted");
        let store = Store::open(&path).expect("open");
        store.note_printed("/rest/alerts/1", "e1").expect("note");
        store.note_printed("/rest/alerts/1", "e2").expect("note");
        // Asked at once, well before the batch's linger is over: the newest eTag noted.
        assert_eq!(
            store.printed("/rest/alerts/1").expect("read").as_deref(),
            Some("e2")
        );
        assert_eq!(store.printed("/rest/alerts/2").expect("read"), None);
        drop(store);
        let again = Store::open(&path).expect("reopen");
        assert_eq!(
            again.printed("/rest/alerts/1").expect("read").as_deref(),
            Some("e2"),
            "committed at the latest when the store closed"
        );
    }

    #[tokio::test]
    async fn a_buffered_record_rides_with_the_next_awaited_write_and_keeps_its_order() {
        let path = fresh("buffered");
        let store = Store::open(&path).expect("open");
        let rec = |step| Record::new(Some("IM1".into()), step);
        store
            .put_async("/rest/alerts/1", &rec(Step::Created))
            .await
            .expect("created");
        store
            .put_buffered("/rest/alerts/1", &rec(Step::Noted))
            .expect("noted");
        // An awaited write of another alert commits what was queued before it, in order.
        store
            .put_async("/rest/alerts/2", &rec(Step::Creating))
            .await
            .expect("another");
        assert_eq!(
            store.get("/rest/alerts/1").expect("get").map(|r| r.step),
            Some(Step::Noted)
        );
        // A later awaited write of the same alert wins over the buffered one before it.
        store
            .put_buffered("/rest/alerts/2", &rec(Step::Noted))
            .expect("noted");
        store
            .put_async("/rest/alerts/2", &rec(Step::Closed))
            .await
            .expect("closed");
        assert_eq!(
            store.get("/rest/alerts/2").expect("get").map(|r| r.step),
            Some(Step::Closed)
        );
        // Nobody awaiting it: committed at the latest when the store closes.
        store
            .put_buffered("/rest/alerts/3", &rec(Step::Noted))
            .expect("noted");
        drop(store);
        let again = Store::open(&path).expect("reopen");
        assert_eq!(
            again.get("/rest/alerts/3").expect("get").map(|r| r.step),
            Some(Step::Noted)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lingering_write_waits_for_company_and_commits_with_the_next_urgent_one() {
        let path = fresh("linger");
        let store = Store::open(&path).expect("open");
        let before = store.commits();
        // Two writes that may wait, queued now (a long linger, so that nothing but company
        // ends it).
        let lingering = |uri: &str, id: &str| {
            let (done, rx) = tokio::sync::oneshot::channel();
            let rec = Record::new(Some(id.to_string()), Step::Created);
            store
                .queue(Job {
                    write: Write::Alert(uri.to_string(), serde_json::to_vec(&rec).expect("json")),
                    done: Some(done),
                    linger: std::time::Duration::from_secs(30),
                    queued: std::time::Instant::now(),
                })
                .expect("queued");
            rx
        };
        let mut first = lingering("/rest/alerts/1", "IM1");
        let mut second = lingering("/rest/alerts/2", "IM2");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            store.commits(),
            before,
            "nothing committed while they linger"
        );
        assert!(first.try_recv().is_err() && second.try_recv().is_err());
        // An urgent write ends the wait: one commit for the three, all durable.
        let urgent = async {
            store
                .put_async("/rest/alerts/3", &Record::new(None, Step::Creating))
                .await
                .expect("urgent");
            first.await.expect("answer").expect("first");
            second.await.expect("answer").expect("second");
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), urgent)
            .await
            .expect("the urgent write ended the linger");
        assert_eq!(store.commits(), before + 1, "one commit for the three");
        assert_eq!(
            store
                .get("/rest/alerts/1")
                .expect("get")
                .and_then(|r| r.incident),
            Some("IM1".into())
        );
        // put_beside lingers only briefly: alone, it commits and returns by itself.
        store
            .put_beside("/rest/alerts/4", &Record::new(None, Step::Creating))
            .await
            .expect("beside");
        assert_eq!(store.commits(), before + 2);
        drop(store);
        let again = Store::open(&path).expect("reopen");
        assert_eq!(again.all().expect("all").len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_committed_together_and_all_durable() {
        let dir = std::env::temp_dir().join(format!("scmb-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.redb");
        {
            let s = Store::open(&path).expect("open");
            let writes = (0..200).map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let uri = format!("/rest/alerts/{i}");
                    s.put_async(&uri, &Record::new(Some(format!("IM{i}")), Step::Noted))
                        .await
                        .expect("put");
                    s.set_printed_async(&uri, "etag").await.expect("printed");
                })
            });
            for w in writes.collect::<Vec<_>>() {
                w.await.expect("task");
            }
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(s.all().expect("all").len(), 200);
        assert_eq!(
            s.printed("/rest/alerts/199").expect("printed").as_deref(),
            Some("etag")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
