//! Signed download URLs: `/api/files/content/{id}?expires=<unix seconds>&signature=<hex>`, the
//! signature an HMAC-SHA256 of the id and the expiry under a key of the daemon's, kept in the
//! data directory (made on first use, root only). A URL is good until it expires, for that file
//! only; one that was changed in any way is refused.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a download URL is good for.
pub const URL_LIFETIME_SECS: u64 = 3600;
/// The route that serves signed URLs (no API key).
pub const CONTENT_PREFIX: &str = "/api/files/content/";
/// The key's file in the data directory.
pub const KEY_FILE: &str = "files-url.key";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(
        "cannot read or create the URL signing key {path}: {reason}; check the data directory"
    )]
    Key { path: String, reason: String },
    #[error("this download link is not valid (it was changed or belongs to another file); ask for a new one with GET /api/files/download?id=")]
    Forged,
    #[error("this download link expired; ask for a new one with GET /api/files/download?id=")]
    Expired,
}

/// The daemon's signing key.
pub struct Signer {
    key: [u8; KEY_LEN],
}

impl Signer {
    /// The key in `data_dir`, made there (mode 0600) when it is missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Signer, SigningError> {
        let path = data_dir.join(KEY_FILE);
        let err = |reason: String| SigningError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
                    err(format!(
                        "it holds {} bytes, not {KEY_LEN}; remove it to make a new one (old links stop working)",
                        b.len()
                    ))
                })?;
                return Ok(Signer { key });
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e.to_string())),
            Err(_) => {}
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| err(e.to_string()))?;
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
        match made {
            Ok(()) => Ok(Signer { key }),
            // Another start made it at the same moment: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Signer::load_or_create(data_dir)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    fn mac(&self, file_id: &str, expires: u64) -> Hmac<Sha256> {
        // new_from_slice takes keys of any length; ours has a fixed one.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(file_id.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The path and query of a URL for `file_id` valid until `now + URL_LIFETIME_SECS`.
    pub fn url(&self, file_id: &str, now: u64) -> String {
        let expires = now + URL_LIFETIME_SECS;
        let signature = hex::encode(self.mac(file_id, expires).finalize().into_bytes());
        format!("{CONTENT_PREFIX}{file_id}?expires={expires}&signature={signature}")
    }

    /// Checks a URL's `expires` and `signature` for `file_id` at time `now`.
    pub fn verify(
        &self,
        file_id: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        now: u64,
    ) -> Result<(), SigningError> {
        let expires: u64 = expires
            .and_then(|e| e.parse().ok())
            .ok_or(SigningError::Forged)?;
        let signature = signature
            .and_then(|s| hex::decode(s).ok())
            .ok_or(SigningError::Forged)?;
        // Constant-time comparison.
        self.mac(file_id, expires)
            .verify_slice(&signature)
            .map_err(|_| SigningError::Forged)?;
        if now > expires {
            return Err(SigningError::Expired);
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, String, String) {
        let (path, query) = url.split_once('?').unwrap();
        let id = path.strip_prefix(CONTENT_PREFIX).unwrap().to_string();
        let mut e = String::new();
        let mut s = String::new();
        for kv in query.split('&') {
            match kv.split_once('=').unwrap() {
                ("expires", v) => e = v.into(),
                ("signature", v) => s = v.into(),
                other => panic!("{other:?}"),
            }
        }
        (id, e, s)
    }

    #[test]
    fn urls_verify_until_they_expire_and_only_for_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let now = 1_800_000_000;
        let (id, e, s) = parts(&signer.url("file-1", now));
        assert_eq!(id, "file-1");
        assert!(signer.verify(&id, Some(&e), Some(&s), now).is_ok());
        assert!(signer
            .verify(&id, Some(&e), Some(&s), now + URL_LIFETIME_SECS)
            .is_ok());
        assert!(matches!(
            signer.verify(&id, Some(&e), Some(&s), now + URL_LIFETIME_SECS + 1),
            Err(SigningError::Expired)
        ));
        // Another file, a later expiry, a changed signature, missing parts: forged.
        assert!(matches!(
            signer.verify("file-2", Some(&e), Some(&s), now),
            Err(SigningError::Forged)
        ));
        let later = (now + 2 * URL_LIFETIME_SECS).to_string();
        assert!(matches!(
            signer.verify(&id, Some(&later), Some(&s), now),
            Err(SigningError::Forged)
        ));
        let mut bad = s.clone().into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(matches!(
            signer.verify(&id, Some(&e), Some(&bad), now),
            Err(SigningError::Forged)
        ));
        assert!(matches!(
            signer.verify(&id, None, Some(&s), now),
            Err(SigningError::Forged)
        ));
        assert!(matches!(
            signer.verify(&id, Some(&e), None, now),
            Err(SigningError::Forged)
        ));
        assert!(matches!(
            signer.verify(&id, Some(&e), Some("zz"), now),
            Err(SigningError::Forged)
        ));
    }

    #[test]
    fn the_key_is_kept_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load_or_create(dir.path()).unwrap();
        let b = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(a.url("x", 5), b.url("x", 5));
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A different key signs differently.
        let other = tempfile::tempdir().unwrap();
        let c = Signer::load_or_create(other.path()).unwrap();
        assert_ne!(a.url("x", 5), c.url("x", 5));
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Signer::load_or_create(dir.path()),
            Err(SigningError::Key { .. })
        ));
    }
}
