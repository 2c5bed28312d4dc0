//! A template computer's secrets (one JSON row per computer: see `crate::templates::secrets` for
//! why they are kept) and its launch log: what each start did in its guest, newest
//! [`MAX_LAUNCH_EVENTS`] kept.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now_iso, Store, StoreError};
use crate::templates::secrets::Secrets;

/// Launch-log lines kept per computer (older ones are dropped): a few starts' worth of a hook's
/// output.
pub const MAX_LAUNCH_EVENTS: i64 = 1000;

/// One line of a computer's launch log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchEvent {
    pub ts: String,
    /// `info`, `success`, `warn` or `error`.
    pub level: String,
    /// What it is about: `files`, `hooks.on_every_boot`, `hooks.on_resume`, `hooks.on_shutdown`,
    /// `streaming.NAME`, `launch`.
    pub step: String,
    pub line: String,
}

/// The readiness probe's record of what a computer's start did in its guest.
impl crate::computers::SetupLog for Store {
    fn record(
        &self,
        computer_id: &str,
        level: crate::computers::SetupLevel,
        step: &str,
        line: &str,
    ) {
        if let Err(e) = self.add_launch_event(computer_id, level.as_str(), step, line) {
            tracing::warn!(computer = %computer_id, "cannot keep a launch-log line: {e}");
        }
    }
}

impl Store {
    /// Keeps `secrets` as computer `computer_id`'s (none: removes them).
    pub fn set_computer_secrets(
        &self,
        computer_id: &str,
        secrets: &Secrets,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(secrets)
            .map_err(|e| StoreError::Corrupt(format!("secrets do not serialize: {e}")))?;
        self.write(|conn| {
            if secrets.is_empty() {
                conn.execute(
                    "DELETE FROM computer_secrets WHERE computer_id = ?1",
                    [computer_id],
                )?;
                return Ok(());
            }
            let changed = conn.execute(
                "INSERT INTO computer_secrets (computer_id, secrets)
                 SELECT id, ?2 FROM computers WHERE id = ?1
                 ON CONFLICT (computer_id) DO UPDATE SET secrets = excluded.secrets",
                params![computer_id, text],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound { what: "computer" });
            }
            Ok(())
        })
    }

    /// Computer `computer_id`'s secrets (none when it was given none).
    pub fn computer_secrets(&self, computer_id: &str) -> Result<Secrets, StoreError> {
        let conn = self.reader()?;
        let text: Option<String> = conn
            .query_row(
                "SELECT secrets FROM computer_secrets WHERE computer_id = ?1",
                [computer_id],
                |r| r.get(0),
            )
            .optional()?;
        match text {
            None => Ok(Secrets::default()),
            // The message names the computer, never the text.
            Some(t) => serde_json::from_str(&t).map_err(|_| {
                StoreError::Corrupt(format!(
                    "the secrets of computer {computer_id} do not parse"
                ))
            }),
        }
    }

    /// Gives computer `to` the secrets of computer `from` (a clone).
    pub fn copy_computer_secrets(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO computer_secrets (computer_id, secrets)
                 SELECT ?2, secrets FROM computer_secrets WHERE computer_id = ?1
                 ON CONFLICT (computer_id) DO UPDATE SET secrets = excluded.secrets",
                params![from, to],
            )?;
            Ok(())
        })
    }

    /// Appends a line to computer `computer_id`'s launch log (a computer deleted meanwhile
    /// takes nothing), dropping the oldest beyond [`MAX_LAUNCH_EVENTS`].
    pub fn add_launch_event(
        &self,
        computer_id: &str,
        level: &str,
        step: &str,
        line: &str,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM computer_launch_events WHERE computer_id = ?1",
                [computer_id],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO computer_launch_events (computer_id, seq, ts, level, step, line)
                 SELECT id, ?2, ?3, ?4, ?5, ?6 FROM computers WHERE id = ?1",
                params![computer_id, next, now_iso(), level, step, line],
            )?;
            tx.execute(
                "DELETE FROM computer_launch_events WHERE computer_id = ?1 AND seq <= ?2",
                params![computer_id, next - MAX_LAUNCH_EVENTS],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Computer `computer_id`'s launch log, oldest first.
    pub fn launch_events(&self, computer_id: &str) -> Result<Vec<LaunchEvent>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT ts, level, step, line FROM computer_launch_events
             WHERE computer_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([computer_id], |r| {
            Ok(LaunchEvent {
                ts: r.get(0)?,
                level: r.get(1)?,
                step: r.get(2)?,
                line: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_store, NewComputer, WorkspaceStatus};

    fn computer(store: &Store, ws: &str, name: &str) -> String {
        store
            .insert_computer(
                &NewComputer {
                    egress_policy: None,
                    workspace_id: ws.into(),
                    name: name.into(),
                    os: "linux".into(),
                    cpu: 1,
                    ram_gb: 4,
                    gpu: "none".into(),
                    disk_size_gb: 8,
                    resolution: "1280x720x24".into(),
                    auto_stop_minutes: None,
                    template_ref: "default/a@1.0.0".into(),
                    image: None,
                    vnc_password: "p".into(),
                },
                |_| Ok(()),
            )
            .unwrap()
            .id
    }

    #[test]
    fn secrets_are_kept_copied_and_go_with_their_computer() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let a = computer(&store, &ws.id, "a");
        let b = computer(&store, &ws.id, "b");
        assert!(store.computer_secrets(&a).unwrap().is_empty());
        let s = Secrets([("api_key".to_string(), "sk-'1'\n".to_string())].into());
        store.set_computer_secrets(&a, &s).unwrap();
        assert_eq!(store.computer_secrets(&a).unwrap(), s);
        store.copy_computer_secrets(&a, &b).unwrap();
        assert_eq!(store.computer_secrets(&b).unwrap(), s);
        assert!(matches!(
            store.set_computer_secrets("nope", &s),
            Err(StoreError::NotFound { .. })
        ));
        store.delete_computer(&a).unwrap();
        assert!(store.computer_secrets(&a).unwrap().is_empty());
        store.set_computer_secrets(&b, &Secrets::default()).unwrap();
        assert!(store.computer_secrets(&b).unwrap().is_empty());
    }

    #[test]
    fn the_launch_log_keeps_the_newest_lines_in_order() {
        let (_d, store) = test_store();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let a = computer(&store, &ws.id, "a");
        for i in 0..MAX_LAUNCH_EVENTS + 5 {
            store
                .add_launch_event(&a, "info", "hooks.on_resume", &format!("line {i}"))
                .unwrap();
        }
        let log = store.launch_events(&a).unwrap();
        assert_eq!(log.len() as i64, MAX_LAUNCH_EVENTS);
        assert_eq!(log[0].line, "line 5");
        assert_eq!(log.last().unwrap().step, "hooks.on_resume");
        // A computer that is gone takes nothing.
        store.add_launch_event("gone", "info", "x", "y").unwrap();
        assert!(store.launch_events("gone").unwrap().is_empty());
    }
}
