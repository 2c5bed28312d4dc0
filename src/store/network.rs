//! Per-computer network settings: the egress policy (src/network/policy.rs is its type) and the
//! bandwidth limit.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError};
use crate::network::EgressPolicy;

/// Writes `policy` for `computer_id` inside the caller's transaction or connection.
pub(super) fn put_egress_policy(
    conn: &Connection,
    computer_id: &str,
    policy: &EgressPolicy,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(policy)
        .map_err(|e| StoreError::Corrupt(format!("egress policy does not serialize: {e}")))?;
    conn.execute(
        "INSERT INTO computer_egress (computer_id, policy) VALUES (?1, ?2)
         ON CONFLICT (computer_id) DO UPDATE SET policy = excluded.policy",
        params![computer_id, text],
    )?;
    Ok(())
}

impl Store {
    /// The computer's egress policy (the default when none was ever set).
    pub fn egress_policy(&self, computer_id: &str) -> Result<EgressPolicy, StoreError> {
        let conn = self.reader()?;
        let text: Option<String> = conn
            .query_row(
                "SELECT policy FROM computer_egress WHERE computer_id = ?1",
                [computer_id],
                |r| r.get(0),
            )
            .optional()?;
        match text {
            None => Ok(EgressPolicy::default()),
            Some(t) => serde_json::from_str(&t).map_err(|e| {
                StoreError::Corrupt(format!("egress policy of computer {computer_id}: {e}"))
            }),
        }
    }

    /// Replaces the computer's egress policy.
    pub fn set_egress_policy(
        &self,
        computer_id: &str,
        policy: &EgressPolicy,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let exists: Option<String> = tx
                .query_row(
                    "SELECT id FROM computers WHERE id = ?1",
                    [computer_id],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound { what: "computer" });
            }
            put_egress_policy(&tx, computer_id, policy)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The computer's bandwidth limit in megabits per second (`None`: unlimited).
    pub fn bandwidth_limit(&self, computer_id: &str) -> Result<Option<u32>, StoreError> {
        let conn = self.reader()?;
        Ok(conn
            .query_row(
                "SELECT mbps FROM computer_bandwidth WHERE computer_id = ?1",
                [computer_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets (or with `None` removes) the computer's bandwidth limit.
    pub fn set_bandwidth_limit(
        &self,
        computer_id: &str,
        mbps: Option<u32>,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            match mbps {
                None => {
                    conn.execute(
                        "DELETE FROM computer_bandwidth WHERE computer_id = ?1",
                        [computer_id],
                    )?;
                }
                Some(m) => {
                    let changed = conn.execute(
                        "INSERT INTO computer_bandwidth (computer_id, mbps)
                     SELECT id, ?2 FROM computers WHERE id = ?1
                     ON CONFLICT (computer_id) DO UPDATE SET mbps = excluded.mbps",
                        params![computer_id, m],
                    )?;
                    if changed == 0 {
                        return Err(StoreError::NotFound { what: "computer" });
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::network::{EgressPolicy, Mode};
    use crate::store::{test_store, NewComputer, WorkspaceStatus};

    #[test]
    fn policy_stored_at_insert_replaced_and_gone_with_the_computer() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let policy = EgressPolicy::from_json(
            &serde_json::json!({"mode":"allow","rules":[{"domain":"a.test","ports":[443]}]}),
        )
        .unwrap();
        let c = store
            .insert_computer(
                &NewComputer {
                    workspace_id: ws.id.clone(),
                    name: "c".into(),
                    os: "linux".into(),
                    cpu: 1,
                    ram_gb: 1,
                    gpu: "none".into(),
                    disk_size_gb: 8,
                    resolution: "1280x720x24".into(),
                    auto_stop_minutes: None,
                    template_ref: "system/desktop@1.0.0".into(),
                    image: None,
                    vnc_password: "x".into(),
                    egress_policy: Some(policy.clone()),
                },
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(store.egress_policy(&c.id).unwrap(), policy);
        store
            .set_egress_policy(&c.id, &EgressPolicy::default())
            .unwrap();
        assert_eq!(store.egress_policy(&c.id).unwrap().mode, Mode::Block);
        store.delete_computer(&c.id).unwrap();
        assert!(store.set_egress_policy(&c.id, &policy).is_err());
        assert_eq!(store.egress_policy(&c.id).unwrap(), EgressPolicy::default());
    }

    #[test]
    fn bandwidth_limit_set_replaced_removed_and_gone_with_the_computer() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let c = store
            .insert_computer(
                &NewComputer {
                    workspace_id: ws.id.clone(),
                    name: "c".into(),
                    os: "linux".into(),
                    cpu: 1,
                    ram_gb: 1,
                    gpu: "none".into(),
                    disk_size_gb: 8,
                    resolution: "1280x720x24".into(),
                    auto_stop_minutes: None,
                    template_ref: "system/desktop@1.0.0".into(),
                    image: None,
                    vnc_password: "x".into(),
                    egress_policy: None,
                },
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(store.bandwidth_limit(&c.id).unwrap(), None);
        store.set_bandwidth_limit(&c.id, Some(10)).unwrap();
        store.set_bandwidth_limit(&c.id, Some(25)).unwrap();
        assert_eq!(store.bandwidth_limit(&c.id).unwrap(), Some(25));
        store.set_bandwidth_limit(&c.id, None).unwrap();
        assert_eq!(store.bandwidth_limit(&c.id).unwrap(), None);
        store.set_bandwidth_limit(&c.id, Some(5)).unwrap();
        store.delete_computer(&c.id).unwrap();
        assert_eq!(store.bandwidth_limit(&c.id).unwrap(), None);
        assert!(store.set_bandwidth_limit(&c.id, Some(5)).is_err());
    }
}
