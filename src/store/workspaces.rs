//! Workspace rows (the service's old name for them is "projects").

use rusqlite::{params, OptionalExtension};

use super::{is_unique_violation, now_iso, require_workspace, Computer, Store, StoreError};

/// `active` or `inactive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceStatus {
    Active,
    Inactive,
}

impl WorkspaceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceStatus::Active => "active",
            WorkspaceStatus::Inactive => "inactive",
        }
    }

    pub fn parse(s: &str) -> Option<WorkspaceStatus> {
        match s {
            "active" => Some(WorkspaceStatus::Active),
            "inactive" => Some(WorkspaceStatus::Inactive),
            _ => None,
        }
    }
}

/// One workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub status: WorkspaceStatus,
    pub icon_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn row_to_workspace(row: &rusqlite::Row<'_>) -> rusqlite::Result<Workspace> {
    let status: String = row.get("status")?;
    Ok(Workspace {
        id: row.get("id")?,
        name: row.get("name")?,
        status: WorkspaceStatus::parse(&status).unwrap_or(WorkspaceStatus::Active),
        icon_url: row.get("icon_url")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

const COLUMNS: &str = "id, name, status, icon_url, created_at, updated_at";

impl Store {
    /// Creates a workspace; its name must be unused.
    pub fn create_workspace(
        &self,
        name: &str,
        status: WorkspaceStatus,
        icon_url: Option<&str>,
    ) -> Result<Workspace, StoreError> {
        let now = now_iso();
        let ws = Workspace {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            status,
            icon_url: icon_url.map(str::to_string),
            created_at: now.clone(),
            updated_at: now,
        };
        self.write(|conn| {
            conn.execute(
                "INSERT INTO workspaces (id, name, status, icon_url, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    ws.id,
                    ws.name,
                    ws.status.as_str(),
                    ws.icon_url,
                    ws.created_at,
                    ws.updated_at
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::NameTaken(format!("A workspace named {name:?} already exists."))
                } else {
                    e.into()
                }
            })?;
            Ok(ws)
        })
    }

    /// All workspaces, oldest first.
    pub fn list_workspaces(&self) -> Result<Vec<Workspace>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM workspaces ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map([], row_to_workspace)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One workspace.
    pub fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM workspaces WHERE id = ?1"))?;
        Ok(stmt.query_row([id], row_to_workspace).optional()?)
    }

    /// Marks every computer of a workspace `deleting` (one transaction) and returns them: the first
    /// step of deleting a workspace, so a crash before the VMs are gone leaves records that
    /// start-up recovery finishes deleting instead of orphaned VMs.
    pub fn mark_workspace_deleting(&self, id: &str) -> Result<Vec<Computer>, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            require_workspace(&tx, id)?;
            tx.execute(
                "UPDATE computers SET status = 'deleting', updated_at = ?2 WHERE workspace_id = ?1",
                params![id, now_iso()],
            )?;
            let computers = super::computers::in_workspace(&tx, id)?;
            tx.commit()?;
            Ok(computers)
        })
    }

    /// Deletes a workspace and all its computers in one transaction; returns the computers that
    /// were deleted so their VMs and disks can be cleaned up.
    pub fn delete_workspace(&self, id: &str) -> Result<Vec<Computer>, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let computers = super::computers::in_workspace(&tx, id)?;
            tx.execute("DELETE FROM computers WHERE workspace_id = ?1", [id])?;
            // The files' bytes go with the workspace's directory (files::workspace_dir).
            tx.execute("DELETE FROM files WHERE workspace_id = ?1", [id])?;
            let n = tx.execute("DELETE FROM workspaces WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "workspace" });
            }
            tx.commit()?;
            Ok(computers)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[test]
    fn names_are_unique() {
        let (_d, store) = test_store();
        store
            .create_workspace("a", WorkspaceStatus::Active, None)
            .unwrap();
        assert!(matches!(
            store.create_workspace("a", WorkspaceStatus::Inactive, None),
            Err(StoreError::NameTaken(_))
        ));
        assert_eq!(store.list_workspaces().unwrap().len(), 1);
    }

    #[test]
    fn delete_missing_is_not_found() {
        let (_d, store) = test_store();
        assert!(matches!(
            store.delete_workspace("x"),
            Err(StoreError::NotFound { .. })
        ));
    }
}
