//! Published templates (their canonical documents and digests), template builds and their
//! events. A ref is immutable: publishing other content under it is refused unless forced.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{now_iso, Store, StoreError};
use crate::templates::build::{BuildEvent, BuildRecord, BuildStatus};
use crate::templates::refs::TemplateRef;

/// A published template.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTemplate {
    pub reference: TemplateRef,
    pub digest: String,
    /// The canonical document.
    pub document: Value,
    pub published_at: String,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A new ref.
    Created,
    /// The ref already held this very content.
    Unchanged,
    /// `force`: the ref held other content and now holds this.
    Replaced,
}

/// What asking for a build found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStart {
    /// A new build record, status `building`.
    Started(BuildRecord),
    /// This digest is already being built.
    AlreadyBuilding(BuildRecord),
    /// This digest was built; reuse it.
    Ready(BuildRecord),
}

fn template_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, String, String)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_template(
    row: (String, String, String, String, String, String),
) -> Result<StoredTemplate, StoreError> {
    let (namespace, name, version, digest, document, published_at) = row;
    let document = serde_json::from_str(&document)
        .map_err(|e| StoreError::Corrupt(format!("template {namespace}/{name}@{version}: {e}")))?;
    Ok(StoredTemplate {
        reference: TemplateRef {
            namespace,
            name,
            version,
        },
        digest,
        document,
        published_at,
    })
}

const TEMPLATE_COLUMNS: &str = "namespace, name, version, digest, document, published_at";
const BUILD_COLUMNS: &str =
    "id, digest, reference, status, started_at, finished_at, build_time_ms, error";

fn build_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRecord> {
    let status: String = r.get(3)?;
    let ms: Option<i64> = r.get(6)?;
    Ok(BuildRecord {
        id: r.get(0)?,
        digest: r.get(1)?,
        reference: r.get(2)?,
        status: BuildStatus::parse(&status).unwrap_or(BuildStatus::Failed),
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        build_time_ms: ms.map(|m| m.max(0) as u64),
        error: r.get(7)?,
    })
}

fn find_template(conn: &Connection, r: &TemplateRef) -> Result<Option<StoredTemplate>, StoreError> {
    let row = conn
        .query_row(
            &format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE namespace = ?1 AND name = ?2 AND version = ?3"),
            params![r.namespace, r.name, r.version],
            template_row,
        )
        .optional()?;
    row.map(to_template).transpose()
}

fn sort_by_version(list: &mut [StoredTemplate]) {
    list.sort_by(|a, b| {
        let key = |t: &StoredTemplate| semver::Version::parse(&t.reference.version).ok();
        (&a.reference.namespace, &a.reference.name, key(a)).cmp(&(
            &b.reference.namespace,
            &b.reference.name,
            key(b),
        ))
    });
}

impl Store {
    /// Publishes `document` (canonical) under `r`. The same content again is `Unchanged`; other
    /// content is refused (`NameTaken`, a 409) unless `force`.
    pub fn publish_template(
        &self,
        r: &TemplateRef,
        digest: &str,
        document: &Value,
        force: bool,
    ) -> Result<(StoredTemplate, Published), StoreError> {
        self.write(|conn| {
        let tx = conn.transaction()?;
        let outcome = match find_template(&tx, r)? {
            Some(existing) if existing.digest == digest => return Ok((existing, Published::Unchanged)),
            Some(existing) if !force => {
                return Err(StoreError::NameTaken(format!(
                    "{r} is already published with other content (digest {}): refs are immutable; publish a new version, or pass force=true to replace it",
                    existing.digest
                )))
            }
            Some(_) => Published::Replaced,
            None => Published::Created,
        };
        let now = now_iso();
        tx.execute(
            "INSERT INTO templates (namespace, name, version, digest, document, published_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (namespace, name, version) DO UPDATE
             SET digest = excluded.digest, document = excluded.document, published_at = excluded.published_at",
            params![r.namespace, r.name, r.version, digest, document.to_string(), now],
        )?;
        tx.commit()?;
        Ok((
            StoredTemplate {
                reference: r.clone(),
                digest: digest.to_string(),
                document: document.clone(),
                published_at: now,
            },
            outcome,
        ))
        })
    }

    /// One published template.
    pub fn template(&self, r: &TemplateRef) -> Result<StoredTemplate, StoreError> {
        let conn = self.reader()?;
        find_template(&conn, r)?.ok_or(StoreError::NotFound { what: "template" })
    }

    /// Published templates, of one namespace or all, by namespace, name and version.
    pub fn templates(&self, namespace: Option<&str>) -> Result<Vec<StoredTemplate>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE ?1 IS NULL OR namespace = ?1"
        ))?;
        let rows = stmt
            .query_map([namespace], template_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut list = rows
            .into_iter()
            .map(to_template)
            .collect::<Result<Vec<_>, _>>()?;
        sort_by_version(&mut list);
        Ok(list)
    }

    /// Every version of `namespace/name`, oldest first (semver order).
    pub fn template_versions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<StoredTemplate>, StoreError> {
        let mut list = self.templates(Some(namespace))?;
        list.retain(|t| t.reference.name == name);
        Ok(list)
    }

    /// Removes a published template (its builds stay: another ref may share the digest).
    pub fn delete_template(&self, r: &TemplateRef) -> Result<(), StoreError> {
        self.write(|conn| {
            let n = conn.execute(
                "DELETE FROM templates WHERE namespace = ?1 AND name = ?2 AND version = ?3",
                params![r.namespace, r.name, r.version],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "template" });
            }
            Ok(())
        })
    }

    /// Writes the curated templates shipped with this deskd, replacing what an older one wrote.
    pub fn seed_templates(
        &self,
        templates: &[(TemplateRef, String, Value)],
    ) -> Result<(), StoreError> {
        for (r, digest, doc) in templates {
            self.publish_template(r, digest, doc, true)?;
        }
        Ok(())
    }

    /// The newest build of `digest`, if any.
    pub fn latest_build(&self, digest: &str) -> Result<Option<BuildRecord>, StoreError> {
        self.newest_build(digest, "")
    }

    /// The newest build of `digest` that succeeded: what launches restore while a newer build
    /// runs or after one failed (its golden snapshot is replaced only by a build that succeeds).
    pub fn ready_build(&self, digest: &str) -> Result<Option<BuildRecord>, StoreError> {
        self.newest_build(digest, "AND status = 'ready'")
    }

    /// The newest build of `digest` that `filter` (a fixed SQL condition, never input) keeps.
    fn newest_build(&self, digest: &str, filter: &str) -> Result<Option<BuildRecord>, StoreError> {
        let conn = self.reader()?;
        Ok(conn
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE digest = ?1 {filter} ORDER BY started_at DESC, rowid DESC LIMIT 1"),
                [digest],
                build_row,
            )
            .optional()?)
    }

    /// One build by id.
    pub fn build(&self, id: &str) -> Result<BuildRecord, StoreError> {
        let conn = self.reader()?;
        conn.query_row(
            &format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE id = ?1"),
            [id],
            build_row,
        )
        .optional()?
        .ok_or(StoreError::NotFound { what: "build" })
    }

    /// Starts a build of `digest` unless one runs or one succeeded (checked and written in one
    /// transaction: two requests at once start one build).
    pub fn begin_build(&self, digest: &str, reference: &str) -> Result<BuildStart, StoreError> {
        self.start_build(digest, reference, true)
    }

    /// Starts a new build of `digest` although it was built (its golden snapshot is outdated),
    /// unless one is being built now. The ready build stays on record until the new one ends.
    pub fn begin_rebuild(&self, digest: &str, reference: &str) -> Result<BuildStart, StoreError> {
        self.start_build(digest, reference, false)
    }

    fn start_build(
        &self,
        digest: &str,
        reference: &str,
        reuse_ready: bool,
    ) -> Result<BuildStart, StoreError> {
        let statuses = if reuse_ready {
            "'building', 'ready'"
        } else {
            "'building'"
        };
        self.write(|conn| {
        let tx = conn.transaction()?;
        let existing: Option<BuildRecord> = tx
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE digest = ?1 AND status IN ({statuses}) ORDER BY status = 'ready' DESC, started_at DESC LIMIT 1"),
                [digest],
                build_row,
            )
            .optional()?;
        match existing {
            Some(b) if b.status == BuildStatus::Ready => return Ok(BuildStart::Ready(b)),
            Some(b) => return Ok(BuildStart::AlreadyBuilding(b)),
            None => {}
        }
        let record = BuildRecord {
            id: uuid::Uuid::new_v4().to_string(),
            digest: digest.to_string(),
            reference: reference.to_string(),
            status: BuildStatus::Building,
            started_at: now_iso(),
            finished_at: None,
            build_time_ms: None,
            error: None,
        };
        tx.execute(
            "INSERT INTO template_builds (id, digest, reference, status, started_at) VALUES (?1, ?2, ?3, 'building', ?4)",
            params![record.id, record.digest, record.reference, record.started_at],
        )?;
        tx.commit()?;
        Ok(BuildStart::Started(record))
        })
    }

    /// Ends a build as `ready` or `failed`.
    pub fn finish_build(
        &self,
        id: &str,
        status: BuildStatus,
        build_time_ms: u64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
        conn.execute(
            "UPDATE template_builds SET status = ?2, finished_at = ?3, build_time_ms = ?4, error = ?5
             WHERE id = ?1 AND status = 'building'",
            params![id, status.as_str(), now_iso(), build_time_ms as i64, error],
        )?;
        Ok(())
        })
    }

    /// Builds left `building` by a daemon that stopped: their runner is gone, so they failed.
    pub fn fail_interrupted_builds(&self) -> Result<usize, StoreError> {
        self.write(|conn| {
            let n = conn.execute(
                "UPDATE template_builds SET status = 'failed', finished_at = ?1,
             error = 'the daemon stopped during this build: build again'
             WHERE status = 'building'",
                [now_iso()],
            )?;
            Ok(n)
        })
    }

    /// Appends an event to a build's log; returns its sequence number.
    pub fn add_build_event(&self, build_id: &str, event: &BuildEvent) -> Result<i64, StoreError> {
        self.write(|conn| {
        let text = serde_json::to_string(event)
            .map_err(|e| StoreError::Corrupt(format!("build event does not serialize: {e}")))?;
        conn.execute(
            "INSERT INTO template_build_events (build_id, seq, event)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM template_build_events WHERE build_id = ?1), ?2)",
            params![build_id, text],
        )?;
        Ok(conn.query_row(
            "SELECT MAX(seq) FROM template_build_events WHERE build_id = ?1",
            [build_id],
            |r| r.get(0),
        )?)
        })
    }

    /// A build's events after sequence number `after`, in order.
    pub fn build_events(
        &self,
        build_id: &str,
        after: i64,
    ) -> Result<Vec<(i64, BuildEvent)>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(
            "SELECT seq, event FROM template_build_events WHERE build_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![build_id, after], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(seq, text)| {
                serde_json::from_str(&text)
                    .map(|e| (seq, e))
                    .map_err(|e| StoreError::Corrupt(format!("build event {build_id}/{seq}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;
    use crate::templates::build::{Level, Phase};
    use serde_json::json;

    fn r(v: &str) -> TemplateRef {
        TemplateRef::parse(&format!("default/app@{v}")).unwrap()
    }

    #[test]
    fn refs_are_immutable_unless_forced() {
        let (_d, store) = test_store();
        let (_, p) = store
            .publish_template(&r("1.0.0"), "sha256:a", &json!({"a": 1}), false)
            .unwrap();
        assert_eq!(p, Published::Created);
        let (_, p) = store
            .publish_template(&r("1.0.0"), "sha256:a", &json!({"a": 1}), false)
            .unwrap();
        assert_eq!(p, Published::Unchanged);
        let e = store
            .publish_template(&r("1.0.0"), "sha256:b", &json!({"a": 2}), false)
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::NameTaken(m) if m.contains("force")),
            "{e}"
        );
        assert_eq!(store.template(&r("1.0.0")).unwrap().digest, "sha256:a");
        let (_, p) = store
            .publish_template(&r("1.0.0"), "sha256:b", &json!({"a": 2}), true)
            .unwrap();
        assert_eq!(p, Published::Replaced);
        assert_eq!(
            store.template(&r("1.0.0")).unwrap().document,
            json!({"a": 2})
        );
    }

    #[test]
    fn versions_sort_by_semver_and_delete_removes_one() {
        let (_d, store) = test_store();
        for v in ["1.10.0", "1.2.0", "1.2.0-rc.1"] {
            store
                .publish_template(&r(v), &format!("sha256:{v}"), &json!({}), false)
                .unwrap();
        }
        let versions: Vec<String> = store
            .template_versions("default", "app")
            .unwrap()
            .into_iter()
            .map(|t| t.reference.version)
            .collect();
        assert_eq!(versions, ["1.2.0-rc.1", "1.2.0", "1.10.0"]);
        store.delete_template(&r("1.2.0")).unwrap();
        assert!(matches!(
            store.delete_template(&r("1.2.0")),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.templates(Some("default")).unwrap().len(), 2);
        assert!(store.templates(Some("system")).unwrap().is_empty());
    }

    #[test]
    fn one_build_per_digest_and_a_ready_one_is_reused() {
        let (_d, store) = test_store();
        let BuildStart::Started(b) = store.begin_build("sha256:x", "default/app@1.0.0").unwrap()
        else {
            panic!("not started");
        };
        assert!(
            matches!(store.begin_build("sha256:x", "default/other@1.0.0").unwrap(), BuildStart::AlreadyBuilding(o) if o.id == b.id)
        );
        store
            .add_build_event(
                &b.id,
                &BuildEvent::now(Level::Info, Phase::Boot, None, "booting"),
            )
            .unwrap();
        let seq = store
            .add_build_event(
                &b.id,
                &BuildEvent::now(Level::Success, Phase::Ready, None, "done"),
            )
            .unwrap();
        assert_eq!(seq, 2);
        assert_eq!(store.build_events(&b.id, 1).unwrap().len(), 1);
        store
            .finish_build(&b.id, BuildStatus::Ready, 1234, None)
            .unwrap();
        let BuildStart::Ready(again) = store.begin_build("sha256:x", "default/app@1.0.0").unwrap()
        else {
            panic!("not reused");
        };
        assert_eq!((again.id, again.build_time_ms), (b.id.clone(), Some(1234)));
        // A failed build does not block the next one; an interrupted one is failed at start-up.
        let BuildStart::Started(c) = store.begin_build("sha256:y", "default/app@2.0.0").unwrap()
        else {
            panic!();
        };
        assert_eq!(store.fail_interrupted_builds().unwrap(), 1);
        assert_eq!(store.build(&c.id).unwrap().status, BuildStatus::Failed);
        assert!(matches!(
            store.begin_build("sha256:y", "default/app@2.0.0").unwrap(),
            BuildStart::Started(_)
        ));
    }

    #[test]
    fn a_rebuild_starts_beside_a_ready_build_which_stays_the_one_launches_use() {
        let (_d, store) = test_store();
        let BuildStart::Started(old) = store.begin_build("sha256:x", "default/app@1.0.0").unwrap()
        else {
            panic!("not started");
        };
        store
            .finish_build(&old.id, BuildStatus::Ready, 1, None)
            .unwrap();
        let BuildStart::Started(new) = store
            .begin_rebuild("sha256:x", "default/app@1.0.0")
            .unwrap()
        else {
            panic!("a rebuild did not start beside the ready build");
        };
        assert!(
            matches!(store.begin_rebuild("sha256:x", "default/app@1.0.0").unwrap(), BuildStart::AlreadyBuilding(b) if b.id == new.id),
            "two rebuilds at once"
        );
        assert_eq!(store.ready_build("sha256:x").unwrap().unwrap().id, old.id);
        store
            .finish_build(&new.id, BuildStatus::Failed, 2, Some("step 1 failed"))
            .unwrap();
        assert_eq!(store.latest_build("sha256:x").unwrap().unwrap().id, new.id);
        assert_eq!(
            store.ready_build("sha256:x").unwrap().unwrap().id,
            old.id,
            "a failed rebuild hid the ready one"
        );
        assert!(store.ready_build("sha256:none").unwrap().is_none());
    }
}
