//! Computer rows.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{is_unique_violation, now_iso, require_workspace, Store, StoreError};

/// Lifecycle status, exactly the strings of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComputerStatus {
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Restarting,
    Suspended,
    Deleting,
    Error,
}

impl ComputerStatus {
    pub const ALL: [ComputerStatus; 9] = [
        ComputerStatus::Creating,
        ComputerStatus::Starting,
        ComputerStatus::Running,
        ComputerStatus::Stopping,
        ComputerStatus::Stopped,
        ComputerStatus::Restarting,
        ComputerStatus::Suspended,
        ComputerStatus::Deleting,
        ComputerStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComputerStatus::Creating => "creating",
            ComputerStatus::Starting => "starting",
            ComputerStatus::Running => "running",
            ComputerStatus::Stopping => "stopping",
            ComputerStatus::Stopped => "stopped",
            ComputerStatus::Restarting => "restarting",
            ComputerStatus::Suspended => "suspended",
            ComputerStatus::Deleting => "deleting",
            ComputerStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<ComputerStatus> {
        ComputerStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Statuses in which a VMM process is supposed to exist.
    pub fn expects_vm(self) -> bool {
        matches!(
            self,
            ComputerStatus::Starting
                | ComputerStatus::Running
                | ComputerStatus::Stopping
                | ComputerStatus::Restarting
        )
    }
}

/// One computer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Computer {
    pub id: String,
    pub instance_id: String,
    pub workspace_id: String,
    pub name: String,
    pub os: String,
    pub cpu: u32,
    pub ram_gb: u32,
    pub gpu: String,
    pub disk_size_gb: u32,
    pub resolution: String,
    pub status: ComputerStatus,
    /// Why the computer is in `error` (or why its last start failed); `None` when all is well.
    pub status_reason: Option<String>,
    pub auto_stop_minutes: Option<u32>,
    pub template_ref: String,
    /// The legacy `image` name the client asked for, kept as given.
    pub image: Option<String>,
    pub vnc_password: String,
    pub created_at: String,
    pub updated_at: String,
}

/// What a new computer is made of; ids, timestamps and status are filled in by the store.
#[derive(Debug, Clone)]
pub struct NewComputer {
    pub workspace_id: String,
    pub name: String,
    pub os: String,
    pub cpu: u32,
    pub ram_gb: u32,
    pub gpu: String,
    pub disk_size_gb: u32,
    pub resolution: String,
    pub auto_stop_minutes: Option<u32>,
    pub template_ref: String,
    pub image: Option<String>,
    pub vnc_password: String,
    /// Stored in the same transaction as the computer; `None` means the default policy.
    pub egress_policy: Option<crate::network::EgressPolicy>,
}

/// What all existing computers hold together: what quotas are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Commitment {
    pub computers: u32,
    pub vcpus: u64,
    pub ram_gb: u64,
    pub disk_gb: u64,
}

/// A computer's hardware as a resize changes it; `None` keeps what it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub cpu: Option<u32>,
    pub ram_gb: Option<u32>,
    pub disk_size_gb: Option<u32>,
}

const COLUMNS: &str = "id, instance_id, workspace_id, name, os, cpu, ram_gb, gpu, disk_size_gb, \
     resolution, status, status_reason, auto_stop_minutes, template_ref, image, vnc_password, \
     created_at, updated_at";

fn row_to_computer(row: &rusqlite::Row<'_>) -> rusqlite::Result<Computer> {
    let status: String = row.get("status")?;
    Ok(Computer {
        id: row.get("id")?,
        instance_id: row.get("instance_id")?,
        workspace_id: row.get("workspace_id")?,
        name: row.get("name")?,
        os: row.get("os")?,
        cpu: row.get("cpu")?,
        ram_gb: row.get("ram_gb")?,
        gpu: row.get("gpu")?,
        disk_size_gb: row.get("disk_size_gb")?,
        resolution: row.get("resolution")?,
        // An unknown status can only come from a newer deskd; showing it as `error` is honest.
        status: ComputerStatus::parse(&status).unwrap_or(ComputerStatus::Error),
        status_reason: row.get("status_reason")?,
        auto_stop_minutes: row.get("auto_stop_minutes")?,
        template_ref: row.get("template_ref")?,
        image: row.get("image")?,
        vnc_password: row.get("vnc_password")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

pub(super) fn in_workspace(
    conn: &rusqlite::Connection,
    workspace_id: &str,
) -> Result<Vec<Computer>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM computers WHERE workspace_id = ?1 ORDER BY created_at, id"
    ))?;
    let rows = stmt
        .query_map([workspace_id], row_to_computer)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn commitment(tx: &Transaction<'_>) -> Result<Commitment, StoreError> {
    let c = tx.query_row(
        "SELECT count(*), coalesce(sum(cpu), 0), coalesce(sum(ram_gb), 0), coalesce(sum(disk_size_gb), 0)
         FROM computers",
        [],
        |r| {
            Ok(Commitment {
                computers: r.get::<_, i64>(0)? as u32,
                vcpus: r.get::<_, i64>(1)? as u64,
                ram_gb: r.get::<_, i64>(2)? as u64,
                disk_gb: r.get::<_, i64>(3)? as u64,
            })
        },
    )?;
    Ok(c)
}

fn new_instance_id() -> String {
    let bytes: [u8; 4] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn name_taken(name: &str) -> StoreError {
    StoreError::NameTaken(format!(
        "A computer named {name:?} already exists in this workspace."
    ))
}

impl Store {
    /// Inserts a computer in status `creating`. `admit` sees what all existing computers already
    /// hold and refuses (with a message naming the limit) if this one would exceed a quota; the
    /// check and the insert are one transaction, so two concurrent creates cannot both squeeze in.
    pub fn insert_computer(
        &self,
        new: &NewComputer,
        admit: impl FnOnce(&Commitment) -> Result<(), String>,
    ) -> Result<Computer, StoreError> {
        self.write(|conn| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        require_workspace(&tx, &new.workspace_id)?;
        admit(&commitment(&tx)?).map_err(StoreError::QuotaExceeded)?;
        let now = now_iso();
        let mut computer = Computer {
            id: uuid::Uuid::new_v4().to_string(),
            instance_id: String::new(),
            workspace_id: new.workspace_id.clone(),
            name: new.name.clone(),
            os: new.os.clone(),
            cpu: new.cpu,
            ram_gb: new.ram_gb,
            gpu: new.gpu.clone(),
            disk_size_gb: new.disk_size_gb,
            resolution: new.resolution.clone(),
            status: ComputerStatus::Creating,
            status_reason: None,
            auto_stop_minutes: new.auto_stop_minutes,
            template_ref: new.template_ref.clone(),
            image: new.image.clone(),
            vnc_password: new.vnc_password.clone(),
            created_at: now.clone(),
            updated_at: now,
        };
        // 32 bits of instance id collide rarely; retry instead of failing the create.
        let mut attempts = 0;
        loop {
            computer.instance_id = new_instance_id();
            let result = tx.execute(
                &format!("INSERT INTO computers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"),
                params![
                    computer.id,
                    computer.instance_id,
                    computer.workspace_id,
                    computer.name,
                    computer.os,
                    computer.cpu,
                    computer.ram_gb,
                    computer.gpu,
                    computer.disk_size_gb,
                    computer.resolution,
                    computer.status.as_str(),
                    computer.status_reason,
                    computer.auto_stop_minutes,
                    computer.template_ref,
                    computer.image,
                    computer.vnc_password,
                    computer.created_at,
                    computer.updated_at,
                ],
            );
            match result {
                Ok(_) => {
                    if let Some(p) = &new.egress_policy {
                        super::network::put_egress_policy(&tx, &computer.id, p)?;
                    }
                    break;
                }
                Err(e) if is_unique_violation(&e) => {
                    let same_name: Option<String> = tx
                        .query_row(
                            "SELECT id FROM computers WHERE workspace_id = ?1 AND name = ?2",
                            params![computer.workspace_id, computer.name],
                            |r| r.get(0),
                        )
                        .optional()?;
                    attempts += 1;
                    if same_name.is_some() || attempts > 8 {
                        return Err(name_taken(&computer.name));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit()?;
        Ok(computer)
        })
    }

    /// One computer by id.
    pub fn computer(&self, id: &str) -> Result<Option<Computer>, StoreError> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM computers WHERE id = ?1"))?;
        Ok(stmt.query_row([id], row_to_computer).optional()?)
    }

    /// One computer by its id or its 8-hex-digit instance id.
    pub fn computer_by_id_or_instance(&self, key: &str) -> Result<Option<Computer>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM computers WHERE id = ?1 OR instance_id = ?1"
        ))?;
        Ok(stmt.query_row([key], row_to_computer).optional()?)
    }

    /// Computers of one workspace, oldest first.
    pub fn computers_in_workspace(&self, workspace_id: &str) -> Result<Vec<Computer>, StoreError> {
        let conn = self.reader()?;
        in_workspace(&conn, workspace_id)
    }

    /// Every computer, oldest first.
    pub fn all_computers(&self) -> Result<Vec<Computer>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM computers ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map([], row_to_computer)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Names already used in a workspace that start with `prefix` (for picking clone names).
    pub fn computer_names_like(
        &self,
        workspace_id: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT name FROM computers WHERE workspace_id = ?1 AND substr(name, 1, length(?2)) = ?2",
        )?;
        let rows = stmt
            .query_map(params![workspace_id, prefix], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// Sets status and reason (`None` clears the reason).
    pub fn set_computer_status(
        &self,
        id: &str,
        status: ComputerStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_one(
            "UPDATE computers SET status = ?2, status_reason = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, status.as_str(), reason, now_iso()],
        )
    }

    /// Sets status only if it is still `expected` (the supervisor must not overwrite a status a
    /// request changed meanwhile). Returns whether it changed.
    pub fn compare_and_set_status(
        &self,
        id: &str,
        expected: ComputerStatus,
        status: ComputerStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write(|conn| {
            let n = conn.execute(
                "UPDATE computers SET status = ?3, status_reason = ?4, updated_at = ?5
             WHERE id = ?1 AND status = ?2",
                params![id, expected.as_str(), status.as_str(), reason, now_iso()],
            )?;
            Ok(n == 1)
        })
    }

    /// Stores a new VNC password (rotated on every start).
    pub fn set_vnc_password(&self, id: &str, password: &str) -> Result<(), StoreError> {
        self.update_one(
            "UPDATE computers SET vnc_password = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, password, now_iso()],
        )
    }

    /// Sets the auto-stop delay (`None` = off).
    pub fn set_auto_stop(&self, id: &str, minutes: Option<u32>) -> Result<(), StoreError> {
        self.update_one(
            "UPDATE computers SET auto_stop_minutes = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, minutes, now_iso()],
        )
    }

    /// Stores a computer's new shape (each `None` keeps what it has). `admit` sees what all the
    /// *other* computers hold and refuses (with a message naming the limit) if this one's new
    /// shape would exceed a quota; the check and the update are one transaction, as at create.
    pub fn resize_computer(
        &self,
        id: &str,
        shape: Shape,
        admit: impl FnOnce(&Commitment, &Shape) -> Result<(), String>,
    ) -> Result<Computer, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now: Computer = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM computers WHERE id = ?1"),
                    [id],
                    row_to_computer,
                )
                .optional()?
                .ok_or(StoreError::NotFound { what: "computer" })?;
            let all = commitment(&tx)?;
            let others = Commitment {
                computers: all.computers.saturating_sub(1),
                vcpus: all.vcpus.saturating_sub(u64::from(now.cpu)),
                ram_gb: all.ram_gb.saturating_sub(u64::from(now.ram_gb)),
                disk_gb: all.disk_gb.saturating_sub(u64::from(now.disk_size_gb)),
            };
            let new = Shape {
                cpu: shape.cpu.or(Some(now.cpu)),
                ram_gb: shape.ram_gb.or(Some(now.ram_gb)),
                disk_size_gb: shape.disk_size_gb.or(Some(now.disk_size_gb)),
            };
            admit(&others, &new).map_err(StoreError::QuotaExceeded)?;
            tx.execute(
                "UPDATE computers SET cpu = ?2, ram_gb = ?3, disk_size_gb = ?4, updated_at = ?5
                 WHERE id = ?1",
                params![id, new.cpu, new.ram_gb, new.disk_size_gb, now_iso()],
            )?;
            let updated = tx.query_row(
                &format!("SELECT {COLUMNS} FROM computers WHERE id = ?1"),
                [id],
                row_to_computer,
            )?;
            tx.commit()?;
            Ok(updated)
        })
    }

    /// Records the size a running computer's disk was grown to (never smaller than it was).
    pub fn set_disk_size(&self, id: &str, disk_size_gb: u32) -> Result<(), StoreError> {
        self.update_one(
            "UPDATE computers SET disk_size_gb = max(disk_size_gb, ?2), updated_at = ?3 WHERE id = ?1",
            params![id, disk_size_gb, now_iso()],
        )
    }

    /// Moves a computer to another workspace; its name must be free there.
    pub fn move_computer(&self, id: &str, workspace_id: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            require_workspace(&tx, workspace_id)?;
            let name: String = tx
                .query_row("SELECT name FROM computers WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or(StoreError::NotFound { what: "computer" })?;
            tx.execute(
                "UPDATE computers SET workspace_id = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, workspace_id, now_iso()],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    name_taken(&name)
                } else {
                    e.into()
                }
            })?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Deletes a computer row.
    pub fn delete_computer(&self, id: &str) -> Result<(), StoreError> {
        self.update_one("DELETE FROM computers WHERE id = ?1", params![id])
    }

    fn update_one(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
        self.write(|conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            match stmt.execute(params)? {
                0 => Err(StoreError::NotFound { what: "computer" }),
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_store, WorkspaceStatus};

    fn new(ws: &str, name: &str) -> NewComputer {
        NewComputer {
            egress_policy: None,
            workspace_id: ws.into(),
            name: name.into(),
            os: "linux".into(),
            cpu: 2,
            ram_gb: 4,
            gpu: "none".into(),
            disk_size_gb: 8,
            resolution: "1280x720x24".into(),
            auto_stop_minutes: None,
            template_ref: "system/desktop@1.0.0".into(),
            image: None,
            vnc_password: "pw".into(),
        }
    }

    #[test]
    fn insert_checks_quota_and_names_atomically() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let c = store
            .insert_computer(&new(&ws.id, "a"), |_| Ok(()))
            .unwrap();
        assert_eq!(c.status, ComputerStatus::Creating);
        assert_eq!(c.instance_id.len(), 8);
        assert!(matches!(
            store.insert_computer(&new(&ws.id, "a"), |_| Ok(())),
            Err(StoreError::NameTaken(_))
        ));
        let err = store
            .insert_computer(&new(&ws.id, "b"), |c| {
                assert_eq!(c.computers, 1);
                assert_eq!(c.vcpus, 2);
                Err("max_computers is 1".into())
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded(m) if m.contains("max_computers")));
        assert_eq!(store.all_computers().unwrap().len(), 1);
    }

    #[test]
    fn deleting_a_workspace_deletes_its_computers_together() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        for n in ["a", "b"] {
            store.insert_computer(&new(&ws.id, n), |_| Ok(())).unwrap();
        }
        let gone = store.delete_workspace(&ws.id).unwrap();
        assert_eq!(gone.len(), 2);
        assert!(store.all_computers().unwrap().is_empty());
    }

    #[test]
    fn compare_and_set_only_changes_the_expected_status() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let c = store
            .insert_computer(&new(&ws.id, "a"), |_| Ok(()))
            .unwrap();
        assert!(!store
            .compare_and_set_status(&c.id, ComputerStatus::Running, ComputerStatus::Error, None)
            .unwrap());
        assert!(store
            .compare_and_set_status(
                &c.id,
                ComputerStatus::Creating,
                ComputerStatus::Error,
                Some("x")
            )
            .unwrap());
        let c = store.computer(&c.id).unwrap().unwrap();
        assert_eq!(c.status, ComputerStatus::Error);
        assert_eq!(c.status_reason.as_deref(), Some("x"));
    }

    #[test]
    fn a_resize_is_admitted_against_the_other_computers_and_stored_whole() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let a = store
            .insert_computer(&new(&ws.id, "a"), |_| Ok(()))
            .unwrap();
        store
            .insert_computer(&new(&ws.id, "b"), |_| Ok(()))
            .unwrap();
        let grown = store
            .resize_computer(
                &a.id,
                Shape {
                    cpu: Some(4),
                    ram_gb: None,
                    disk_size_gb: Some(12),
                },
                |others, shape| {
                    // Only b is counted, and the shape is complete.
                    assert_eq!((others.computers, others.vcpus, others.ram_gb), (1, 2, 4));
                    assert_eq!(others.disk_gb, 8);
                    assert_eq!(
                        (shape.cpu, shape.ram_gb, shape.disk_size_gb),
                        (Some(4), Some(4), Some(12))
                    );
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!((grown.cpu, grown.ram_gb, grown.disk_size_gb), (4, 4, 12));
        // Refused: nothing changes.
        let err = store
            .resize_computer(
                &a.id,
                Shape {
                    ram_gb: Some(64),
                    ..Shape::default()
                },
                |_, _| Err("ram_commit_ratio".into()),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded(_)));
        assert_eq!(store.computer(&a.id).unwrap().unwrap().ram_gb, 4);
        assert!(matches!(
            store.resize_computer("nope", Shape::default(), |_, _| Ok(())),
            Err(StoreError::NotFound { .. })
        ));
        // A live growth is recorded, never as a shrink.
        store.set_disk_size(&a.id, 20).unwrap();
        store.set_disk_size(&a.id, 10).unwrap();
        assert_eq!(store.computer(&a.id).unwrap().unwrap().disk_size_gb, 20);
    }

    #[test]
    fn move_keeps_names_unique() {
        let (_d, store) = test_store();
        let a = store
            .create_workspace("a", WorkspaceStatus::Active, None)
            .unwrap();
        let b = store
            .create_workspace("b", WorkspaceStatus::Active, None)
            .unwrap();
        let c1 = store.insert_computer(&new(&a.id, "x"), |_| Ok(())).unwrap();
        store.insert_computer(&new(&b.id, "x"), |_| Ok(())).unwrap();
        assert!(matches!(
            store.move_computer(&c1.id, &b.id),
            Err(StoreError::NameTaken(_))
        ));
        assert!(matches!(
            store.move_computer(&c1.id, "nope"),
            Err(StoreError::NotFound { .. })
        ));
    }
}
