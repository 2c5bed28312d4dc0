//! RTMP stream connections (api.md section 5): where a computer's stream goes and how it is
//! encoded, by name. The stream key is stored as given (the database is root-only) and leaves
//! this module only for the agent that pushes the stream; `Debug` hides it.

use deskd_agent::protocol::stream::{StreamSettings, KEY_MASK};
use rusqlite::{params, OptionalExtension, Row};

use super::{is_unique_violation, now_iso, Store, StoreError};

/// One saved connection.
#[derive(Clone, PartialEq)]
pub struct StreamConnection {
    pub name: String,
    pub rtmp_url: String,
    pub stream_key: String,
    pub settings: StreamSettings,
    pub created_at: String,
}

impl std::fmt::Debug for StreamConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConnection")
            .field("name", &self.name)
            .field("rtmp_url", &self.rtmp_url)
            .field("stream_key", &KEY_MASK)
            .field("settings", &self.settings)
            .field("created_at", &self.created_at)
            .finish()
    }
}

const COLUMNS: &str =
    "name, rtmp_url, stream_key, bitrate_kbps, width, height, framerate, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<StreamConnection> {
    Ok(StreamConnection {
        name: r.get(0)?,
        rtmp_url: r.get(1)?,
        stream_key: r.get(2)?,
        settings: StreamSettings {
            bitrate_kbps: r.get(3)?,
            width: r.get(4)?,
            height: r.get(5)?,
            framerate: r.get(6)?,
        },
        created_at: r.get(7)?,
    })
}

impl Store {
    /// Saves a new connection (its fields already checked); `NameTaken` if the name is in use.
    pub fn create_stream_connection(
        &self,
        name: &str,
        rtmp_url: &str,
        stream_key: &str,
        settings: StreamSettings,
    ) -> Result<StreamConnection, StoreError> {
        let c = StreamConnection {
            name: name.to_string(),
            rtmp_url: rtmp_url.to_string(),
            stream_key: stream_key.to_string(),
            settings,
            created_at: now_iso(),
        };
        self.write(|conn| {
        conn.execute(
            &format!("INSERT INTO stream_connections ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![
                c.name,
                c.rtmp_url,
                c.stream_key,
                settings.bitrate_kbps,
                settings.width,
                settings.height,
                settings.framerate,
                c.created_at
            ],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken(format!(
                    "A stream connection named {name} exists; delete it first to replace it."
                ))
            } else {
                e.into()
            }
        })?;
        Ok(c)
        })
    }

    /// Every connection, by name.
    pub fn stream_connections(&self) -> Result<Vec<StreamConnection>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM stream_connections ORDER BY name"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The connection `name`, if saved.
    pub fn stream_connection(&self, name: &str) -> Result<Option<StreamConnection>, StoreError> {
        let conn = self.reader()?;
        Ok(conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM stream_connections WHERE name = ?1"),
                [name],
                from_row,
            )
            .optional()?)
    }

    /// Removes the connection `name`; false if there was none.
    pub fn delete_stream_connection(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|conn| {
            Ok(conn.execute("DELETE FROM stream_connections WHERE name = ?1", [name])? > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;
    use deskd_agent::protocol::stream::DEFAULT_SETTINGS;

    #[test]
    fn saved_listed_unique_and_deleted() {
        let (dir, store) = test_store();
        let a = store
            .create_stream_connection("yt", "rtmp://h/live", "k-123", DEFAULT_SETTINGS)
            .unwrap();
        assert!(!format!("{a:?}").contains("k-123"), "{a:?}");
        let other = StreamSettings {
            bitrate_kbps: 800,
            ..DEFAULT_SETTINGS
        };
        store
            .create_stream_connection("a", "rtmps://h:443/app", "k2", other)
            .unwrap();
        assert!(matches!(
            store.create_stream_connection("yt", "rtmp://x/y", "z", DEFAULT_SETTINGS),
            Err(StoreError::NameTaken(_))
        ));
        let all = store.stream_connections().unwrap();
        assert_eq!(
            all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "yt"]
        );
        assert_eq!(all[0].settings, other);
        let got = store.stream_connection("yt").unwrap().unwrap();
        assert_eq!(got, a);
        assert_eq!(got.stream_key, "k-123");
        assert!(store.delete_stream_connection("yt").unwrap());
        assert!(!store.delete_stream_connection("yt").unwrap());
        assert!(store.stream_connection("yt").unwrap().is_none());
        // Kept across a reopen, in the root-only file.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.stream_connections().unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the database is root-only");
    }
}
