//! API keys: `sk_live_<40 random base62 chars>` (about 238 bits). Only a SHA-256 of the key is
//! stored: a salted slow hash buys nothing for a key this random, and SHA-256 keeps every request's
//! check cheap. The first characters after `sk_live_` are kept in clear as a lookup prefix, so a
//! request touches one row and compares its hash in constant time.

use rand::Rng;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{now_iso, require_workspace, Store, StoreError};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "sk_live_";
const RANDOM_LEN: usize = 40;
const LOOKUP_LEN: usize = 12;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// `sk_live_` and the first characters: enough to recognise a key, useless to use it.
    pub prefix: String,
    /// `Some` for a key that may only touch one workspace.
    pub workspace_id: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A key just made: the only moment its secret exists outside the client.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

/// Makes a new random key string.
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    let random: String = (0..RANDOM_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

/// SHA-256 of a key string.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The lookup prefix of a well-formed key; `None` for anything that cannot be one of ours.
fn lookup_prefix(secret: &str) -> Option<&str> {
    let random = secret.strip_prefix(KEY_PREFIX)?;
    if random.len() != RANDOM_LEN || !random.bytes().all(|b| ALPHABET.contains(&b)) {
        return None;
    }
    Some(&secret[..KEY_PREFIX.len() + LOOKUP_LEN])
}

/// The columns `row_to_key` reads.
const KEY_COLUMNS: &str = "id, name, prefix, workspace_id, created_at, revoked_at";

fn row_to_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: row.get("id")?,
        name: row.get("name")?,
        prefix: row.get("prefix")?,
        workspace_id: row.get("workspace_id")?,
        created_at: row.get("created_at")?,
        revoked_at: row.get("revoked_at")?,
    })
}

impl Store {
    /// Creates a key; `workspace_id` scopes it to one existing workspace.
    pub fn create_key(
        &self,
        name: &str,
        workspace_id: Option<&str>,
    ) -> Result<CreatedKey, StoreError> {
        self.write(|conn| {
            if let Some(ws) = workspace_id {
                require_workspace(conn, ws)?;
            }
            let secret = generate_key();
            let prefix = lookup_prefix(&secret)
                .ok_or_else(|| StoreError::Corrupt("generated key is malformed".into()))?
                .to_string();
            let key = ApiKey {
                id: uuid::Uuid::new_v4().to_string(),
                name: name.to_string(),
                prefix,
                workspace_id: workspace_id.map(str::to_string),
                created_at: now_iso(),
                revoked_at: None,
            };
            conn.execute(
                "INSERT INTO api_keys (id, name, prefix, hash, workspace_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.id,
                    key.name,
                    key.prefix,
                    hash_key(&secret).to_vec(),
                    key.workspace_id,
                    key.created_at
                ],
            )?;
            Ok(CreatedKey { key, secret })
        })
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let keys = stmt
            .query_map([], row_to_key)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Number of keys that still work.
    pub fn active_key_count(&self) -> Result<u64, StoreError> {
        let conn = self.reader()?;
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Revokes a key by id (or by its displayed prefix). Revoking twice is not an error.
    pub fn revoke_key(&self, id_or_prefix: &str) -> Result<ApiKey, StoreError> {
        self.write(|conn| {
            let key = conn
                .query_row(
                    &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1 OR prefix = ?1"),
                    [id_or_prefix],
                    row_to_key,
                )
                .optional()?
                .ok_or(StoreError::NotFound { what: "key" })?;
            conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                params![key.id, now_iso()],
            )?;
            Ok(key)
        })
    }

    /// The live key matching `secret`, if any. The hash comparison is constant-time.
    pub fn authenticate(&self, secret: &str) -> Result<Option<ApiKey>, StoreError> {
        let Some(prefix) = lookup_prefix(secret) else {
            return Ok(None);
        };
        let wanted = hash_key(secret);
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS}, hash FROM api_keys WHERE prefix = ?1 AND revoked_at IS NULL"
        ))?;
        let mut rows = stmt.query([prefix])?;
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get("hash")?;
            if bool::from(hash.as_slice().ct_eq(&wanted)) {
                return Ok(Some(row_to_key(row)?));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[test]
    fn keys_have_the_documented_shape() {
        let k = generate_key();
        assert!(k.starts_with("sk_live_"));
        assert_eq!(k.len(), KEY_PREFIX.len() + RANDOM_LEN);
        assert_ne!(generate_key(), k);
    }

    #[test]
    fn create_authenticate_revoke() {
        let (_d, store) = test_store();
        let created = store.create_key("ci", None).unwrap();
        let found = store.authenticate(&created.secret).unwrap().unwrap();
        assert_eq!(found.id, created.key.id);
        // One character off: rejected.
        let mut wrong = created.secret.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'a' { 'b' } else { 'a' });
        assert!(store.authenticate(&wrong).unwrap().is_none());
        assert!(store.authenticate("sk_live_short").unwrap().is_none());
        assert!(store.authenticate("").unwrap().is_none());
        store.revoke_key(&created.key.id).unwrap();
        assert!(store.authenticate(&created.secret).unwrap().is_none());
        assert_eq!(store.active_key_count().unwrap(), 0);
        assert!(store.list_keys().unwrap()[0].revoked_at.is_some());
    }

    #[test]
    fn the_secret_is_not_stored() {
        let (dir, store) = test_store();
        let created = store.create_key("x", None).unwrap();
        drop(store);
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let needle = created.secret.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn scoped_key_needs_an_existing_workspace() {
        let (_d, store) = test_store();
        assert!(matches!(
            store.create_key("x", Some("nope")),
            Err(StoreError::NotFound { .. })
        ));
    }
}
