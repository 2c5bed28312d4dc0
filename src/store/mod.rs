//! SQLite state: keys, workspaces, computers, files, templates and their builds, RTMP stream
//! connections. One database file (`deskd.db`) in the data
//! directory, WAL mode, versioned migrations; every change that touches more than one row runs in
//! one transaction, so a `kill -9` at any moment leaves a consistent database.

mod cli;
mod computers;
mod files;
mod keys;
mod migrations;
mod network;
mod secrets;
mod streams;
mod templates;
mod workspaces;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use cli::{keys_command, KeysCommand};
pub use computers::{Commitment, Computer, ComputerStatus, NewComputer, Shape};
pub use files::{FileSource, NewFile, StoredFile};
pub use keys::{generate_key, hash_key, ApiKey, CreatedKey, KEY_PREFIX};
pub use secrets::{LaunchEvent, MAX_LAUNCH_EVENTS};
pub use streams::StreamConnection;
pub use templates::{BuildStart, Published, StoredTemplate};
pub use workspaces::{Workspace, WorkspaceStatus};

/// Default data directory of the daemon and the key commands.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/deskd";
/// File name of the database inside the data directory.
pub const DB_FILE: &str = "deskd.db";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database error: {0} (check that the data directory is writable and not on a full disk)"
    )]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database was written by a newer deskd (schema version {found}, this build knows {known}); upgrade deskd")]
    TooNew { found: i64, known: i64 },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{0}")]
    NameTaken(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("stored value is not valid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database could not grow because its filesystem is full (nothing was written: SQLite
    /// rolls the statement or transaction back).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// The open database: one connection that writes, behind a lock, and a few that only read.
///
/// A write waits for the lock and then for its commit's `fsync` (`synchronous = FULL`), which on a
/// busy disk takes milliseconds or more; it runs with [`tokio::task::block_in_place`] so that the
/// async worker it was called on hands its other tasks to another thread meanwhile, and a burst
/// of writes never stalls the requests that only read. Reads run where they are called: in WAL
/// mode a reader waits for neither the writer nor its `fsync`.
pub struct Store {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

/// Read connections kept open when idle (more are opened while more readers run at once).
const MAX_IDLE_READERS: usize = 8;

/// A read connection taken from the pool; it goes back when dropped.
struct Reader<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Only `drop` takes the connection out.
        self.conn.as_ref().expect("reader used after drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.store.idle_readers();
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        if !data_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            // Keys' hashes, VNC passwords and disks live here: root only.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(|source| StoreError::DataDir {
                    path: data_dir.to_path_buf(),
                    source,
                })?;
        }
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed answer (201) must survive a power cut, not only a process kill.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::apply(&mut conn)?;
        restrict_permissions(&path);
        Ok(Store {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writing connection, off the async workers (see [`Store`]). `f` holds the
    /// lock for one statement or one transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        off_the_async_workers(|| {
            // A panic while holding the lock cannot leave a half-done transaction (rusqlite rolls
            // back on drop), so a poisoned lock is still safe to use.
            let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
    }

    /// A connection that may only read (`query_only`: a write through it fails).
    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let idle = self.idle_readers().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.pragma_update(None, "query_only", "ON")?;
                conn
            }
        };
        Ok(Reader {
            store: self,
            conn: Some(conn),
        })
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the single account this host serves (the `user_id` of workspaces).
    pub fn account_id(&self) -> Result<String, StoreError> {
        let conn = self.reader()?;
        let id: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'account_id'", [], |r| {
                r.get(0)
            })?;
        Ok(id)
    }
}

/// Runs `f`, which may block for a while, so that no async task waits behind it: on a worker of
/// a multi-threaded runtime the worker's other tasks move to another thread first. Elsewhere (a
/// plain thread, a blocking-pool thread, a single-threaded runtime as in tests) `f` just runs.
fn off_the_async_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The database holds key hashes, VNC passwords and stream keys: only root may read it.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for p in [
        path.to_path_buf(),
        path.with_extension("db-wal"),
        path.with_extension("db-shm"),
    ] {
        if p.exists() {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Current time as ISO-8601 UTC with milliseconds, the format of every stored timestamp.
pub fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Fails with `NotFound` unless workspace `id` exists; run inside the caller's transaction when the
/// answer must still hold at commit.
fn require_workspace(conn: &Connection, id: &str) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let found: Option<String> = conn
        .query_row("SELECT id FROM workspaces WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound { what: "workspace" }),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}
