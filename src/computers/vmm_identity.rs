//! The unprivileged identities of confined VMMs: each running VMM gets its own uid (and the gid
//! of the same number) from a pool starting at [`FIRST_POOL_ID`], unique among the VMMs that
//! run, reused once its VMM has ended. Nothing is persisted: an identity is taken only if no
//! live process on the host has it (so a VMM a previous daemon started keeps its own), and a
//! restarted daemon re-attaching to a VMM takes back the identity the VMM runs as.
//!
//! Before a VMM starts, its computer's directory and what is in it (disk, logs, sockets,
//! snapshot) are handed to its identity: the VMM must be able to write there once confined
//! (rotate its logs, bind nothing new, write snapshots). When it has ended they go back to
//! root, so a later VMM that gets the same identity owns nothing of this computer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub use crate::vmm::config::FIRST_POOL_ID;

/// How many identities the pool holds (more than the computers one host runs at once).
pub const POOL_SIZE: u32 = 1000;

/// The identities given to running VMMs, by computer.
#[derive(Debug, Default)]
pub struct IdentityPool {
    given: Mutex<HashMap<String, u32>>,
}

impl IdentityPool {
    fn given(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.given.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity for the next VMM of `computer_id`: the one it holds already, or the
    /// lowest of the pool that no other computer holds and no live process runs as.
    pub fn acquire(&self, computer_id: &str) -> Result<u32, String> {
        let mut given = self.given();
        if let Some(&id) = given.get(computer_id) {
            return Ok(id);
        }
        let live = uids_of_live_processes();
        let taken: std::collections::HashSet<u32> = given.values().copied().collect();
        let id = (FIRST_POOL_ID..FIRST_POOL_ID + POOL_SIZE)
            .find(|id| !taken.contains(id) && !live.contains(id))
            .ok_or_else(|| {
                format!(
                    "all {POOL_SIZE} VMM identities (uids {FIRST_POOL_ID} and up) are in use; stop a computer"
                )
            })?;
        given.insert(computer_id.to_string(), id);
        Ok(id)
    }

    /// The identity `computer_id`'s VMM holds, if any.
    pub fn held(&self, computer_id: &str) -> Option<u32> {
        self.given().get(computer_id).copied()
    }

    /// Records the identity of a VMM found running (re-attach), from its process.
    pub fn adopt(&self, computer_id: &str, pid: i32) {
        if let Some(uid) = uid_of(pid).filter(|uid| in_pool(*uid)) {
            self.given().insert(computer_id.to_string(), uid);
        }
    }

    /// Frees `computer_id`'s identity once its VMM has ended.
    pub fn release(&self, computer_id: &str) -> Option<u32> {
        self.given().remove(computer_id)
    }
}

/// Whether `uid` is one of the pool's.
pub fn in_pool(uid: u32) -> bool {
    (FIRST_POOL_ID..FIRST_POOL_ID + POOL_SIZE).contains(&uid)
}

/// The real uid of process `pid` (its `/proc/PID/status` Uid line).
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The real uids of every live process, as far as /proc shows them.
fn uids_of_live_processes() -> std::collections::HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(uid_of)
        .collect()
}

/// Gives `dir` and everything directly in it (disk, logs, sockets, the saved VM's directory) to
/// `uid`:`gid`: what a confined VMM writes (it rotates its logs and writes snapshots into its
/// directory). Not handed over: what is inside subdirectories (a saved VM's files may be hard
/// links to a golden snapshot's, shared by every computer seeded from it: the VMM only reads
/// them and must never own them), any file with more than one link, and symbolic links (deskd
/// makes none there; they are left alone, never followed).
pub fn hand_over(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    chown_tree(dir, uid, gid, 1)
}

/// Gives `dir` and what [`hand_over`] gave back to root.
pub fn take_back(dir: &Path) {
    if let Err(e) = chown_tree(dir, 0, 0, 1) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot give {} back to root: {e}", dir.display());
        }
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32, depth: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || (!meta.is_dir() && meta.nlink() > 1) {
        tracing::warn!(
            "{} is {}: not handed to a VMM's user",
            path.display(),
            if meta.file_type().is_symlink() {
                "a symbolic link (deskd makes none in a computer's directory)"
            } else {
                "linked elsewhere too"
            }
        );
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if depth == 0 || !meta.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        match chown_tree(&entry.path(), uid, gid, depth - 1) {
            // Removed meanwhile (a log rotated, an unfinished snapshot cleaned up): fine.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn identities_are_unique_and_reused() {
        let pool = IdentityPool::default();
        let a = pool.acquire("a").unwrap();
        let b = pool.acquire("b").unwrap();
        assert_ne!(a, b);
        assert!(in_pool(a) && in_pool(b));
        assert_eq!(pool.acquire("a").unwrap(), a, "a computer keeps its own");
        assert_eq!(pool.release("a"), Some(a));
        assert_eq!(pool.held("a"), None);
        // The lowest free one comes back.
        assert_eq!(pool.acquire("c").unwrap(), a);
        assert!(!in_pool(0) && !in_pool(FIRST_POOL_ID + POOL_SIZE));
    }

    #[test]
    fn a_running_process_keeps_its_identity() {
        // SAFETY: getuid has no arguments and cannot fail.
        let me = unsafe { libc::getuid() };
        assert_eq!(uid_of(std::process::id() as i32), Some(me));
        assert!(uids_of_live_processes().contains(&me));
        let pool = IdentityPool::default();
        // Not a pool identity: not adopted.
        pool.adopt("x", std::process::id() as i32);
        assert_eq!(pool.held("x"), None);
    }

    #[test]
    fn a_directory_is_handed_over_and_taken_back() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED a_directory_is_handed_over_and_taken_back: chown needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c1");
        std::fs::create_dir_all(dir.join("saved")).unwrap();
        std::fs::write(dir.join("disk.img"), b"d").unwrap();
        std::fs::write(dir.join("saved/memory"), b"m").unwrap();
        // A golden snapshot's file, linked into this computer's directory.
        let golden = d.path().join("golden-state");
        std::fs::write(&golden, b"g").unwrap();
        std::fs::hard_link(&golden, dir.join("state-link")).unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"o").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        let id = FIRST_POOL_ID + 999;
        hand_over(&dir, id, id).unwrap();
        for p in ["", "disk.img", "saved"] {
            let meta = std::fs::symlink_metadata(dir.join(p)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (id, id), "{p}");
        }
        let root_owned = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid() == 0;
        assert!(
            root_owned(&dir.join("saved/memory")),
            "inside a subdirectory"
        );
        assert!(root_owned(&golden), "a shared file is never handed over");
        assert!(root_owned(&outside), "links are not followed");
        assert!(root_owned(&dir.join("link")), "nor changed");
        take_back(&dir);
        assert!(root_owned(&dir) && root_owned(&dir.join("disk.img")));
    }
}
