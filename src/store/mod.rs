//! SQLite state: keys, workspaces, computers, files. One database file (`deskd.db`) in the data
//! directory, WAL mode, versioned migrations; every change that touches more than one row runs in
//! one transaction, so a `kill -9` at any moment leaves a consistent database.

mod cli;
mod computers;
mod files;
mod keys;
mod migrations;
mod network;
mod workspaces;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use cli::{keys_command, KeysCommand};
pub use computers::{Commitment, Computer, ComputerStatus, NewComputer};
pub use files::{FileSource, NewFile, StoredFile};
pub use keys::{generate_key, hash_key, ApiKey, CreatedKey, KEY_PREFIX};
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

/// The open database. Cheap operations only: callers hold the lock for one statement or one
/// transaction.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
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
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction (rusqlite rolls back
        // on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the single account this host serves (the `user_id` of workspaces).
    pub fn account_id(&self) -> Result<String, StoreError> {
        let conn = self.lock();
        let id: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'account_id'", [], |r| {
                r.get(0)
            })?;
        Ok(id)
    }
}

/// The database holds key hashes and VNC passwords: only root may read it.
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
