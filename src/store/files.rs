//! The `files` table: files uploaded to computers or exported from them (api.md section 7),
//! counted per workspace against a quota checked in the same transaction as the insert.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{now_iso, require_workspace, Store, StoreError};

/// Where a file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileSource {
    Upload,
    Export,
}

impl FileSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FileSource::Upload => "upload",
            FileSource::Export => "export",
        }
    }

    fn parse(s: &str) -> Result<FileSource, StoreError> {
        match s {
            "upload" => Ok(FileSource::Upload),
            "export" => Ok(FileSource::Export),
            other => Err(StoreError::Corrupt(format!("file source {other:?}"))),
        }
    }
}

/// A stored file's record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    pub id: String,
    pub workspace_id: String,
    pub computer_id: Option<String>,
    pub filename: String,
    pub size_bytes: u64,
    pub content_type: String,
    pub source: FileSource,
    pub created_at: String,
}

/// What [`Store::insert_file`] records; `id` is chosen by the caller, who has already written
/// the bytes under it.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: String,
    pub workspace_id: String,
    pub computer_id: Option<String>,
    pub filename: String,
    pub size_bytes: u64,
    pub content_type: String,
    pub source: FileSource,
}

const COLUMNS: &str =
    "id, workspace_id, computer_id, filename, size_bytes, content_type, source, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(StoredFile, String)> {
    let size: i64 = r.get(4)?;
    Ok((
        StoredFile {
            id: r.get(0)?,
            workspace_id: r.get(1)?,
            computer_id: r.get(2)?,
            filename: r.get(3)?,
            size_bytes: u64::try_from(size).unwrap_or(0),
            content_type: r.get(5)?,
            source: FileSource::Upload,
            created_at: r.get(7)?,
        },
        r.get(6)?,
    ))
}

fn finish(row: (StoredFile, String)) -> Result<StoredFile, StoreError> {
    let (mut f, source) = row;
    f.source = FileSource::parse(&source)?;
    Ok(f)
}

fn used(conn: &Connection, workspace_id: &str) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(size_bytes), 0) FROM files WHERE workspace_id = ?1",
        [workspace_id],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl Store {
    /// Records a file, unless the workspace's files would then take more than `quota_bytes`
    /// (`QuotaExceeded`, saying how much is used) or the workspace does not exist.
    pub fn insert_file(&self, new: &NewFile, quota_bytes: u64) -> Result<StoredFile, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            require_workspace(&tx, &new.workspace_id)?;
            let before = used(&tx, &new.workspace_id)?;
            if before.saturating_add(new.size_bytes) > quota_bytes {
                return Err(StoreError::QuotaExceeded(format!(
                    "the workspace's files would take {} bytes, over its quota of {quota_bytes} \
                 (limits.max_workspace_files_bytes; {before} in use): delete files first",
                    before.saturating_add(new.size_bytes)
                )));
            }
            let created_at = now_iso();
            let size = i64::try_from(new.size_bytes)
                .map_err(|_| StoreError::Corrupt(format!("file size {}", new.size_bytes)))?;
            tx.execute(
                &format!("INSERT INTO files ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    new.id,
                    new.workspace_id,
                    new.computer_id,
                    new.filename,
                    size,
                    new.content_type,
                    new.source.as_str(),
                    created_at
                ],
            )?;
            tx.commit()?;
            Ok(StoredFile {
                id: new.id.clone(),
                workspace_id: new.workspace_id.clone(),
                computer_id: new.computer_id.clone(),
                filename: new.filename.clone(),
                size_bytes: new.size_bytes,
                content_type: new.content_type.clone(),
                source: new.source,
                created_at,
            })
        })
    }

    /// The file `id`, if it exists.
    pub fn file(&self, id: &str) -> Result<Option<StoredFile>, StoreError> {
        let conn = self.reader()?;
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM files WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?;
        row.map(finish).transpose()
    }

    /// Files of a workspace (all workspaces for `None`), of one computer when `computer_id` is
    /// given, oldest first.
    pub fn files(
        &self,
        workspace_id: Option<&str>,
        computer_id: Option<&str>,
    ) -> Result<Vec<StoredFile>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM files
             WHERE (?1 IS NULL OR workspace_id = ?1) AND (?2 IS NULL OR computer_id = ?2)
             ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![workspace_id, computer_id], from_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Bytes the files of a workspace take.
    pub fn workspace_files_bytes(&self, workspace_id: &str) -> Result<u64, StoreError> {
        let conn = self.reader()?;
        used(&conn, workspace_id)
    }

    /// Forgets the file `id` and returns what it was (the caller removes its bytes).
    pub fn delete_file(&self, id: &str) -> Result<StoredFile, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let row = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM files WHERE id = ?1"),
                    [id],
                    from_row,
                )
                .optional()?;
            let file = row
                .map(finish)
                .transpose()?
                .ok_or(StoreError::NotFound { what: "file" })?;
            tx.execute("DELETE FROM files WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(file)
        })
    }

    /// Claims putting upload `file_id` in computer `computer_id`: false when it is there already
    /// or another task is putting it there now, so no computer gets an upload twice.
    pub fn claim_delivery(&self, file_id: &str, computer_id: &str) -> Result<bool, StoreError> {
        self.write(|conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO file_deliveries (file_id, computer_id, claimed_at)
             VALUES (?1, ?2, ?3)",
                params![file_id, computer_id, now_iso()],
            )?;
            Ok(n == 1)
        })
    }

    /// Gives up a claim whose delivery failed (the next start of the computer tries again).
    pub fn release_delivery(&self, file_id: &str, computer_id: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "DELETE FROM file_deliveries WHERE file_id = ?1 AND computer_id = ?2",
                params![file_id, computer_id],
            )?;
            Ok(())
        })
    }

    /// Records that computer `to` holds what computer `from` holds (a clone has its disk), so
    /// that it does not get those uploads a second time.
    pub fn copy_deliveries(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO file_deliveries (file_id, computer_id, claimed_at)
                 SELECT file_id, ?2, ?3 FROM file_deliveries WHERE computer_id = ?1",
                params![from, to, now_iso()],
            )?;
            Ok(())
        })
    }

    /// Uploads meant for computer `computer_id` (to it, or to its workspace without a computer)
    /// that are not in it yet, oldest first.
    pub fn pending_uploads(&self, computer_id: &str) -> Result<Vec<StoredFile>, StoreError> {
        let conn = self.reader()?;
        let columns: String = COLUMNS
            .split(", ")
            .map(|c| format!("f.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare(&format!(
            "SELECT {columns} FROM files f JOIN computers c ON c.id = ?1
             WHERE f.source = 'upload'
               AND (f.computer_id = c.id OR (f.computer_id IS NULL AND f.workspace_id = c.workspace_id))
               AND NOT EXISTS (SELECT 1 FROM file_deliveries d
                               WHERE d.file_id = f.id AND d.computer_id = c.id)
             ORDER BY f.created_at, f.id"
        ))?;
        let rows = stmt.query_map([computer_id], from_row)?;
        rows.map(|r| finish(r?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_store, WorkspaceStatus};

    fn new_file(ws: &str, id: &str, size: u64) -> NewFile {
        NewFile {
            id: id.into(),
            workspace_id: ws.into(),
            computer_id: Some("c1".into()),
            filename: format!("{id}.txt"),
            size_bytes: size,
            content_type: "text/plain".into(),
            source: FileSource::Upload,
        }
    }

    #[test]
    fn files_are_recorded_listed_and_deleted() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let a = store.insert_file(&new_file(&ws.id, "a", 10), 100).unwrap();
        let mut b = new_file(&ws.id, "b", 5);
        b.computer_id = None;
        b.source = FileSource::Export;
        store.insert_file(&b, 100).unwrap();
        assert_eq!(store.file("a").unwrap(), Some(a.clone()));
        assert_eq!(store.file("b").unwrap().unwrap().source, FileSource::Export);
        assert_eq!(store.files(Some(&ws.id), None).unwrap().len(), 2);
        assert_eq!(store.files(Some(&ws.id), Some("c1")).unwrap(), vec![a]);
        assert_eq!(store.files(Some("other"), None).unwrap(), vec![]);
        assert_eq!(store.workspace_files_bytes(&ws.id).unwrap(), 15);
        assert_eq!(store.delete_file("a").unwrap().id, "a");
        assert!(matches!(
            store.delete_file("a"),
            Err(StoreError::NotFound { what: "file" })
        ));
        assert_eq!(store.workspace_files_bytes(&ws.id).unwrap(), 5);
    }

    #[test]
    fn the_quota_counts_the_workspace_and_unknown_workspaces_are_refused() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let other = store
            .create_workspace("o", WorkspaceStatus::Active, None)
            .unwrap();
        store.insert_file(&new_file(&ws.id, "a", 60), 100).unwrap();
        let e = store
            .insert_file(&new_file(&ws.id, "b", 41), 100)
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::QuotaExceeded(m) if m.contains("101") && m.contains("60 in use")),
            "{e}"
        );
        assert!(store.file("b").unwrap().is_none());
        // Exactly at the quota is fine; another workspace has its own.
        store.insert_file(&new_file(&ws.id, "c", 40), 100).unwrap();
        store
            .insert_file(&new_file(&other.id, "d", 100), 100)
            .unwrap();
        assert!(matches!(
            store.insert_file(&new_file("nope", "e", 1), 100),
            Err(StoreError::NotFound { what: "workspace" })
        ));
    }

    #[test]
    fn uploads_are_pending_for_their_computers_until_claimed() {
        use crate::store::NewComputer;
        let computer = |ws: &str, name: &str| NewComputer {
            workspace_id: ws.into(),
            name: name.into(),
            os: "linux".into(),
            cpu: 1,
            ram_gb: 1,
            gpu: "none".into(),
            disk_size_gb: 8,
            resolution: "1280x720x24".into(),
            auto_stop_minutes: None,
            template_ref: "system/desktop@1.0.0".into(),
            image: None,
            vnc_password: "pw".into(),
            egress_policy: None,
        };
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let other = store
            .create_workspace("o", WorkspaceStatus::Active, None)
            .unwrap();
        let c1 = store
            .insert_computer(&computer(&ws.id, "c1"), |_| Ok(()))
            .unwrap();
        let c2 = store
            .insert_computer(&computer(&ws.id, "c2"), |_| Ok(()))
            .unwrap();
        let mut to_ws = new_file(&ws.id, "ws", 1);
        to_ws.computer_id = None;
        store.insert_file(&to_ws, 100).unwrap();
        let mut to_c1 = new_file(&ws.id, "c1f", 1);
        to_c1.computer_id = Some(c1.id.clone());
        store.insert_file(&to_c1, 100).unwrap();
        let mut export = new_file(&ws.id, "exp", 1);
        export.computer_id = Some(c1.id.clone());
        export.source = FileSource::Export;
        store.insert_file(&export, 100).unwrap();
        let mut elsewhere = new_file(&other.id, "else", 1);
        elsewhere.computer_id = None;
        store.insert_file(&elsewhere, 100).unwrap();
        let ids = |c: &str| -> Vec<String> {
            let mut ids: Vec<String> = store
                .pending_uploads(c)
                .unwrap()
                .into_iter()
                .map(|f| f.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&c1.id), vec!["c1f", "ws"]);
        assert_eq!(ids(&c2.id), vec!["ws"]);
        assert!(store.claim_delivery("ws", &c2.id).unwrap());
        assert!(!store.claim_delivery("ws", &c2.id).unwrap(), "claimed once");
        assert_eq!(ids(&c2.id), Vec::<String>::new());
        store.release_delivery("ws", &c2.id).unwrap();
        assert_eq!(ids(&c2.id), vec!["ws"]);
        // A clone of c1 holds what c1 holds.
        assert!(store.claim_delivery("ws", &c1.id).unwrap());
        let c3 = store
            .insert_computer(&computer(&ws.id, "c3"), |_| Ok(()))
            .unwrap();
        store.copy_deliveries(&c1.id, &c3.id).unwrap();
        assert_eq!(ids(&c3.id), Vec::<String>::new());
        store.release_delivery("ws", &c1.id).unwrap();
        // Claims go with their file and their computer.
        assert!(store.claim_delivery("ws", &c1.id).unwrap());
        store.delete_file("ws").unwrap();
        store.delete_computer(&c1.id).unwrap();
        assert!(store.claim_delivery("nope", &c2.id).is_err());
    }

    #[test]
    fn files_go_with_their_workspace() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        store.insert_file(&new_file(&ws.id, "a", 1), 100).unwrap();
        store.delete_workspace(&ws.id).unwrap();
        assert!(store.file("a").unwrap().is_none());
        assert_eq!(store.files(None, None).unwrap(), vec![]);
    }
}
