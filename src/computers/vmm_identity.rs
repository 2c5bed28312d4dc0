//! The unprivileged identities of confined VMMs: each running VMM gets its own uid (and the gid
//! of the same number) from a pool starting at [`FIRST_POOL_ID`] (or the base the operator
//! chose, checked at start by [`check_pool`]), unique among the VMMs that
//! run, reused once its VMM has ended. Nothing is persisted: an identity is taken only if no
//! live process on the host has it (so a VMM a previous daemon started keeps its own), and a
//! restarted daemon re-attaching to a VMM takes back the identity the VMM runs as.
//!
//! Before a VMM starts, its computer's directory and what is in it (disk, logs, sockets,
//! snapshot) are handed to its identity: the VMM must be able to write there once confined
//! (rotate its logs, bind nothing new, write snapshots). When it has ended they go back to
//! root, so a later VMM that gets the same identity owns nothing of this computer.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

pub use crate::vmm::config::FIRST_POOL_ID;

/// How many identities the pool holds (more than the computers one host runs at once).
pub const POOL_SIZE: u32 = 1000;

/// Where a pool may lie: the uid ranges systemd assigns to no one
/// (<https://systemd.io/UIDS-GIDS/>, its table of ranges: "Unused"). Below them are system and
/// regular users, systemd-homed, DynamicUser= (61184–65519), `nobody` and the 16-bit -1; between
/// them the container ranges (systemd-nspawn, 524288–1879048191); above 2^31 ids that some
/// tools treat as negative.
pub const ALLOWED_RANGES: [Range<u32>; 2] = [65_536..524_288, 1_879_048_192..2_147_483_648];

// The default pool lies above every 16-bit uid (DynamicUser='s range ends at 65519, nobody is
// 65534) and below 100000, where `useradd` starts subordinate ids.
const _: () = assert!(FIRST_POOL_ID > 65_535 && FIRST_POOL_ID + POOL_SIZE <= 100_000);

/// The setting that moves the pool, for error messages.
const BASE_SETTING: &str = "deskd serve --vmm-uid-base (DESKD_VMM_UID_BASE)";

/// Why the pool cannot be used or cannot give an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "the VMM identity pool (uids and gids {first}–{last}) is outside the ranges systemd leaves \
         unused (65536–524287 and 1879048192–2147483647, see https://systemd.io/UIDS-GIDS/): it \
         could collide with system users, DynamicUser= services or containers; choose a base in \
         one of them with {BASE_SETTING}",
        last = .first.saturating_add(POOL_SIZE - 1)
    )]
    OutsideAllowed { first: u32 },
    #[error(
        "{what} {id} is in the VMM identity pool ({first}–{last}) but already belongs to {owner} \
         ({file}): a confined VMM running as it would share that identity's files and processes. \
         Move the pool with {BASE_SETTING}, or remove that entry",
        last = .first + POOL_SIZE - 1
    )]
    Taken {
        what: &'static str,
        id: u32,
        first: u32,
        owner: String,
        file: String,
    },
    #[error("cannot read {file} to check the VMM identity pool against it: {message}")]
    Unreadable { file: String, message: String },
    #[error(
        "all {POOL_SIZE} VMM identities (uids {first}–{last}) are in use; stop a computer",
        last = .first + POOL_SIZE - 1
    )]
    Exhausted { first: u32 },
}

/// The identities given to running VMMs, by computer.
#[derive(Debug)]
pub struct IdentityPool {
    first: u32,
    given: Mutex<HashMap<String, u32>>,
}

impl Default for IdentityPool {
    fn default() -> IdentityPool {
        IdentityPool::new(FIRST_POOL_ID)
    }
}

impl IdentityPool {
    /// The pool `first`..`first + POOL_SIZE`, unchecked (see [`check_pool`]).
    pub fn new(first: u32) -> IdentityPool {
        IdentityPool {
            first,
            given: Mutex::new(HashMap::new()),
        }
    }

    fn given(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.given.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ids(&self) -> Range<u32> {
        self.first..self.first.saturating_add(POOL_SIZE)
    }

    /// The identity for the next VMM of `computer_id`: the one it holds already, or the
    /// lowest of the pool that no other computer holds and no live process runs as.
    pub fn acquire(&self, computer_id: &str) -> Result<u32, IdentityError> {
        let mut given = self.given();
        if let Some(&id) = given.get(computer_id) {
            return Ok(id);
        }
        let live = uids_of_live_processes();
        let taken: std::collections::HashSet<u32> = given.values().copied().collect();
        let id = self
            .ids()
            .find(|id| !taken.contains(id) && !live.contains(id))
            .ok_or(IdentityError::Exhausted { first: self.first })?;
        given.insert(computer_id.to_string(), id);
        Ok(id)
    }

    /// The identity `computer_id`'s VMM holds, if any.
    pub fn held(&self, computer_id: &str) -> Option<u32> {
        self.given().get(computer_id).copied()
    }

    /// Records the identity of a VMM found running (re-attach), from its process.
    pub fn adopt(&self, computer_id: &str, pid: i32) {
        if let Some(uid) = uid_of(pid).filter(|uid| self.contains(*uid)) {
            self.given().insert(computer_id.to_string(), uid);
        }
    }

    /// Frees `computer_id`'s identity once its VMM has ended.
    pub fn release(&self, computer_id: &str) -> Option<u32> {
        self.given().remove(computer_id)
    }

    /// Whether `uid` is one of the pool's.
    pub fn contains(&self, uid: u32) -> bool {
        self.ids().contains(&uid)
    }
}

/// Checks, before any VMM is confined, that the pool starting at `first` lies in a range systemd
/// leaves unused and that no user, group or subordinate id range of this host (the files under
/// `etc`: passwd, group, subuid, subgid) holds one of its ids. A pool identity that also names
/// a user would give a VMM escape that user's files; one inside a subuid range, the files of
/// that user's rootless containers. Users known only to NSS services (LDAP, systemd-userdb) are
/// not seen; the allowed ranges keep clear of where those allocate by default.
pub fn check_pool(first: u32, etc: &Path) -> Result<(), IdentityError> {
    let last = u64::from(first) + u64::from(POOL_SIZE) - 1;
    if !ALLOWED_RANGES
        .iter()
        .any(|r| r.contains(&first) && last < u64::from(r.end))
    {
        return Err(IdentityError::OutsideAllowed { first });
    }
    let pool = IdentityPool::new(first);
    let read = |name: &str| -> Result<Option<(String, String)>, IdentityError> {
        let path = etc.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((path.display().to_string(), text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IdentityError::Unreadable {
                file: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    };
    // passwd: name:x:uid:gid:...; group: name:x:gid:members.
    for (name, what, field) in [("passwd", "uid", 2), ("group", "gid", 2)] {
        let Some((file, text)) = read(name)? else {
            continue;
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split(':').collect();
            let Some(id) = fields.get(field).and_then(|f| f.trim().parse::<u32>().ok()) else {
                continue;
            };
            if pool.contains(id) {
                return Err(IdentityError::Taken {
                    what,
                    id,
                    first,
                    owner: format!(
                        "{} {:?}",
                        if what == "uid" { "user" } else { "group" },
                        fields[0]
                    ),
                    file,
                });
            }
        }
    }
    // subuid/subgid: owner:first:count.
    for (name, what) in [("subuid", "uid"), ("subgid", "gid")] {
        let Some((file, text)) = read(name)? else {
            continue;
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(start), Some(count)) = (
                fields.get(1).and_then(|f| f.trim().parse::<u64>().ok()),
                fields.get(2).and_then(|f| f.trim().parse::<u64>().ok()),
            ) else {
                continue;
            };
            let overlap_start = start.max(u64::from(first));
            let overlap_end = start.saturating_add(count).min(last + 1);
            if overlap_start < overlap_end {
                return Err(IdentityError::Taken {
                    what,
                    // Inside the pool, so it fits in u32.
                    id: u32::try_from(overlap_start).unwrap_or(first),
                    first,
                    owner: format!(
                        "the subordinate {what}s {start}–{} of {:?}",
                        start.saturating_add(count) - 1,
                        fields[0]
                    ),
                    file,
                });
            }
        }
    }
    Ok(())
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
        assert!(pool.contains(a) && pool.contains(b));
        assert_eq!(pool.acquire("a").unwrap(), a, "a computer keeps its own");
        assert_eq!(pool.release("a"), Some(a));
        assert_eq!(pool.held("a"), None);
        // The lowest free one comes back.
        assert_eq!(pool.acquire("c").unwrap(), a);
        assert!(!pool.contains(0) && !pool.contains(FIRST_POOL_ID + POOL_SIZE));
        assert_eq!(a, FIRST_POOL_ID);
        let moved = IdentityPool::new(200_000);
        assert_eq!(moved.acquire("a").unwrap(), 200_000);
        assert!(!moved.contains(FIRST_POOL_ID));
    }

    fn etc(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn the_default_pool_collides_with_no_reserved_range() {
        assert_eq!(check_pool(FIRST_POOL_ID, Path::new("/nonexistent")), Ok(()));
        // The old base sat inside DynamicUser='s range; the container range; past 2^31.
        for first in [64_000, 600_000, 3_000_000_000, 524_000, 0] {
            assert_eq!(
                check_pool(first, Path::new("/nonexistent")),
                Err(IdentityError::OutsideAllowed { first }),
                "{first}"
            );
        }
        let err = IdentityError::OutsideAllowed { first: 64_000 }.to_string();
        assert!(
            err.contains("64000–64999") && err.contains("--vmm-uid-base"),
            "{err}"
        );
    }

    #[test]
    fn existing_users_groups_and_subordinate_ids_are_conflicts() {
        let first = FIRST_POOL_ID;
        let clean = etc(&[
            ("passwd", "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nbob:x:1000:1000::/home/bob:/bin/sh\n"),
            ("group", "root:x:0:\nbob:x:1000:\n"),
            ("subuid", "bob:100000:65536\n"),
            ("subgid", "bob:100000:65536\n"),
        ]);
        assert_eq!(check_pool(first, clean.path()), Ok(()));

        let user = etc(&[("passwd", "vm:x:70005:100::/:/bin/false\n")]);
        let err = check_pool(first, user.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                IdentityError::Taken {
                    what: "uid",
                    id: 70_005,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("user \"vm\"") && text.contains("passwd"),
            "{text}"
        );
        assert!(text.contains("--vmm-uid-base"), "{text}");
        // The same host is fine with the pool moved past that user.
        assert_eq!(check_pool(71_000, user.path()), Ok(()));

        let group = etc(&[("group", "kvmusers:x:70999:\n")]);
        assert!(matches!(
            check_pool(first, group.path()),
            Err(IdentityError::Taken {
                what: "gid",
                id: 70_999,
                ..
            })
        ));
        assert_eq!(check_pool(first + 1000, group.path()), Ok(()));

        // A subordinate range that starts below the pool and reaches into it.
        let sub = etc(&[("subuid", "alice:69000:2000\n")]);
        let err = check_pool(first, sub.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                IdentityError::Taken {
                    what: "uid",
                    id: 70_000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("69000–70999"), "{err}");
        let huge = etc(&[("subgid", "x:4294967000:18446744073709551615\n")]);
        assert_eq!(check_pool(first, huge.path()), Ok(()));
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
