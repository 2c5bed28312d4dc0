//! Versioned schema migrations. `PRAGMA user_version` holds the number of migrations applied;
//! each migration runs in its own transaction together with the version bump, so a crash leaves
//! the schema either before or after a step, never half-way.

use rusqlite::Connection;

use super::StoreError;

/// Migrations in order. Never edit a released one: append a new step.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        prefix       TEXT NOT NULL,
        hash         BLOB NOT NULL,
        workspace_id TEXT,
        created_at   TEXT NOT NULL,
        revoked_at   TEXT
    );
    CREATE INDEX api_keys_by_prefix ON api_keys (prefix);

    CREATE TABLE workspaces (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        status     TEXT NOT NULL,
        icon_url   TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE computers (
        id                TEXT PRIMARY KEY,
        instance_id       TEXT NOT NULL UNIQUE,
        workspace_id      TEXT NOT NULL REFERENCES workspaces (id),
        name              TEXT NOT NULL,
        os                TEXT NOT NULL,
        cpu               INTEGER NOT NULL,
        ram_gb            INTEGER NOT NULL,
        gpu               TEXT NOT NULL,
        disk_size_gb      INTEGER NOT NULL,
        resolution        TEXT NOT NULL,
        status            TEXT NOT NULL,
        status_reason     TEXT,
        auto_stop_minutes INTEGER,
        template_ref      TEXT NOT NULL,
        image             TEXT,
        vnc_password      TEXT NOT NULL,
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL,
        UNIQUE (workspace_id, name)
    );
    CREATE INDEX computers_by_workspace ON computers (workspace_id);
    "#,
    // 2: files uploaded to or exported from computers (api.md section 7). The bytes live in the
    // data directory (`files::blob_path`); a row is written only once they are complete.
    // `computer_id` is not a foreign key: a file outlives the computer it came from.
    r#"
    CREATE TABLE files (
        id           TEXT PRIMARY KEY,
        workspace_id TEXT NOT NULL REFERENCES workspaces (id),
        computer_id  TEXT,
        filename     TEXT NOT NULL,
        size_bytes   INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        source       TEXT NOT NULL,
        created_at   TEXT NOT NULL
    );
    CREATE INDEX files_by_workspace ON files (workspace_id, created_at);
    "#,
    // 3: a computer's egress policy (issue 12); no row means the default policy.
    r#"
    CREATE TABLE computer_egress (
        computer_id TEXT PRIMARY KEY REFERENCES computers (id) ON DELETE CASCADE,
        policy      TEXT NOT NULL
    );
    "#,
    // 4: which computers a stored upload was put in (or is being put in right now), so that a
    // computer that starts later gets each of its workspace's uploads once.
    r#"
    CREATE TABLE file_deliveries (
        file_id     TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        computer_id TEXT NOT NULL REFERENCES computers (id) ON DELETE CASCADE,
        claimed_at  TEXT NOT NULL,
        PRIMARY KEY (file_id, computer_id)
    );
    CREATE INDEX file_deliveries_by_computer ON file_deliveries (computer_id);
    "#,
    // 5: orgo.ai/v1 templates (issue 14): published documents by ref, builds keyed by the
    // document's digest (one `building` row per digest at a time), and each build's event log.
    r#"
    CREATE TABLE templates (
        namespace    TEXT NOT NULL,
        name         TEXT NOT NULL,
        version      TEXT NOT NULL,
        digest       TEXT NOT NULL,
        document     TEXT NOT NULL,
        published_at TEXT NOT NULL,
        PRIMARY KEY (namespace, name, version)
    );
    CREATE INDEX templates_by_digest ON templates (digest);

    CREATE TABLE template_builds (
        id            TEXT PRIMARY KEY,
        digest        TEXT NOT NULL,
        reference     TEXT NOT NULL,
        status        TEXT NOT NULL,
        started_at    TEXT NOT NULL,
        finished_at   TEXT,
        build_time_ms INTEGER,
        error         TEXT
    );
    CREATE INDEX template_builds_by_digest ON template_builds (digest, started_at);
    CREATE UNIQUE INDEX template_builds_one_running ON template_builds (digest) WHERE status = 'building';

    CREATE TABLE template_build_events (
        build_id TEXT NOT NULL REFERENCES template_builds (id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        event    TEXT NOT NULL,
        PRIMARY KEY (build_id, seq)
    );
    "#,
    // 6: a computer's bandwidth limit (issue 12: `bandwidth_limit_mbps` at create and resize);
    // no row means unlimited.
    r#"
    CREATE TABLE computer_bandwidth (
        computer_id TEXT PRIMARY KEY REFERENCES computers (id) ON DELETE CASCADE,
        mbps        INTEGER NOT NULL
    );
    "#,
    // 7: RTMP stream connections (api.md section 5, issue 15). The stream key is a secret kept
    // here because the database is root-only (0600 in a 0700 directory, see `Store::open`);
    // answers mask it and nothing logs it.
    r#"
    CREATE TABLE stream_connections (
        name         TEXT PRIMARY KEY,
        rtmp_url     TEXT NOT NULL,
        stream_key   TEXT NOT NULL,
        bitrate_kbps INTEGER NOT NULL,
        width        INTEGER NOT NULL,
        height       INTEGER NOT NULL,
        framerate    INTEGER NOT NULL,
        created_at   TEXT NOT NULL
    );
    "#,
    // 8: a template computer's secrets (issue 14), JSON name → value, kept here (root-only, like
    // the stream keys) because every restore writes `/root/.env` again; and what each start did
    // in its guest (`/root/.env`, runtime files, `hooks.on_resume` and its output), read through
    // `GET /computers/{id}/launch-log`.
    r#"
    CREATE TABLE computer_secrets (
        computer_id TEXT PRIMARY KEY REFERENCES computers (id) ON DELETE CASCADE,
        secrets     TEXT NOT NULL
    );
    CREATE TABLE computer_launch_events (
        computer_id TEXT NOT NULL REFERENCES computers (id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        ts          TEXT NOT NULL,
        level       TEXT NOT NULL,
        step        TEXT NOT NULL,
        line        TEXT NOT NULL,
        PRIMARY KEY (computer_id, seq)
    );
    "#,
];

/// Brings the schema up to date.
pub(super) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    // The account id is data, not schema: made once, kept for ever.
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('account_id', ?1)",
        [uuid::Uuid::new_v4().to_string()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn).unwrap();
        apply(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let id: String = conn
            .query_row("SELECT value FROM meta WHERE key='account_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(
            apply(&mut conn),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }
}
