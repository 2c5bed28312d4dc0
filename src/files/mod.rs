//! Stored files (api.md section 7): where their bytes live under the data directory and the
//! signed download URLs that serve them without an API key. The records are in the store
//! (`store::StoredFile`); the routes that tie the two together are in `api`.

pub mod delivery;
pub mod signing;

use std::path::{Path, PathBuf};

/// Directory of all stored files, inside the data directory.
pub const FILES_DIR: &str = "files";

/// The directory of one workspace's files: removed with the workspace.
pub fn workspace_dir(data_dir: &Path, workspace_id: &str) -> PathBuf {
    data_dir.join(FILES_DIR).join(safe(workspace_id))
}

/// Where the bytes of file `file_id` of workspace `workspace_id` are kept. Ids are ours (UUIDs),
/// but anything else is made harmless rather than trusted: a path never leaves the directory.
pub fn blob_path(data_dir: &Path, workspace_id: &str, file_id: &str) -> PathBuf {
    workspace_dir(data_dir, workspace_id).join(safe(file_id))
}

fn safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where bodies being received are written before they have a record (the name of a workspace
/// directory never starts with a dot, see `safe`).
pub fn incoming_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(FILES_DIR).join(".incoming")
}

/// Empties [`incoming_dir`] (start-up: what is there was cut off by a stop) and makes sure it
/// exists.
pub fn reset_incoming(data_dir: &Path) -> std::io::Result<()> {
    let dir = incoming_dir(data_dir);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(dir)
}

/// Removes a workspace's stored files (nothing there is fine).
pub fn remove_workspace(data_dir: &Path, workspace_id: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(workspace_dir(data_dir, workspace_id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_files_directory() {
        let d = Path::new("/var/lib/deskd");
        assert_eq!(
            blob_path(d, "ws-1", "0b8a3c1e-6f5e"),
            Path::new("/var/lib/deskd/files/ws-1/0b8a3c1e-6f5e")
        );
        let p = blob_path(d, "../..", "../../etc/passwd");
        assert!(p.starts_with("/var/lib/deskd/files/"), "{}", p.display());
        assert_eq!(p.components().count(), 7, "{}", p.display());
    }

    #[test]
    fn a_workspace_directory_is_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let blob = blob_path(dir.path(), "w", "f");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        remove_workspace(dir.path(), "w").unwrap();
        assert!(!workspace_dir(dir.path(), "w").exists());
        remove_workspace(dir.path(), "w").unwrap();
    }
}
