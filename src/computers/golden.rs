//! Golden snapshots on disk: a build computer's disk and saved VM kept as a template's (`keep`),
//! and the copy a computer launched from it starts with (`seed`).
//!
//! # Layout of a golden snapshot directory
//!
//! ```text
//! <golden>/disk.img       the build computer's disk at the snapshot (sparse, read-only)
//! <golden>/saved/state    its VM state   } the snapshot (`crate::vmm::snapshot`), read-only
//! <golden>/saved/memory   its RAM        }
//! <golden>/golden.json    what was built and on what hardware (the templates code writes it)
//! ```
//!
//! The directory is made beside its final place and renamed into it when whole, so it is complete
//! or absent. A launch gets its own copy of the disk (a reflink where the filesystem has them, a
//! sparse copy otherwise) but only **hard links** to the snapshot's files: the VMM maps the memory
//! file `MAP_PRIVATE`, so every computer restored from one golden file shares its unchanged pages
//! in the page cache, where a copy would give each its own. Nothing writes a snapshot file in place
//! (a restore only reads them; a later suspend writes a new directory and renames it), and the
//! computer's restore discards only its `saved/` links, never the golden files they point to.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::backend::BackendError;
use super::saved_vm;
use super::vmm_config::files;

/// The description of what was built, written by whoever keeps the snapshot.
pub const MANIFEST: &str = "golden.json";

/// Whether `golden` holds a whole golden snapshot.
pub fn is_complete(golden: &Path) -> bool {
    golden.join(files::DISK).is_file()
        && saved_vm::present(golden)
        && golden.join(MANIFEST).is_file()
}

fn fail(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Process(format!("cannot {what} {}: {e}", path.display()))
}

/// A directory beside `path` for building it before the rename.
fn staging(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Moves the disk and saved VM of the (suspended, VM-less) computer in `computer_dir` into the
/// golden snapshot `golden`, with `manifest` beside them; an older golden snapshot there is
/// replaced. The computer is left without a disk or saved VM (it is to be destroyed).
pub fn keep(computer_dir: &Path, golden: &Path, manifest: &[u8]) -> Result<(), BackendError> {
    if !saved_vm::present(computer_dir) || !computer_dir.join(files::DISK).is_file() {
        return Err(BackendError::NotReady(format!(
            "{} has no suspended VM to keep (a disk and {}/ are needed)",
            computer_dir.display(),
            files::SAVED_VM
        )));
    }
    let parent = golden.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| fail("create", parent, e))?;
    let tmp = staging(golden);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail("create", &tmp, e))?;
    let moved = (|| {
        // Renames, not copies: the data directory is one filesystem, so this is instant.
        for name in [files::DISK, files::SAVED_VM] {
            let (from, to) = (computer_dir.join(name), tmp.join(name));
            std::fs::rename(&from, &to).map_err(|e| fail("move", &from, e))?;
        }
        let m = tmp.join(MANIFEST);
        std::fs::write(&m, manifest).map_err(|e| fail("write", &m, e))?;
        read_only(&tmp.join(files::DISK))?;
        for entry in std::fs::read_dir(tmp.join(files::SAVED_VM))
            .map_err(|e| fail("read", &tmp.join(files::SAVED_VM), e))?
        {
            read_only(&entry.map_err(|e| fail("read", &tmp, e))?.path())?;
        }
        if golden.exists() {
            std::fs::remove_dir_all(golden).map_err(|e| fail("replace", golden, e))?;
        }
        std::fs::rename(&tmp, golden).map_err(|e| fail("create", golden, e))
    })();
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    moved
}

/// Golden files are never written again: read-only says so to anyone (and any tool) that looks.
fn read_only(path: &Path) -> Result<(), BackendError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| fail("make read-only", path, e))
}

/// How a computer was given a golden snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    /// Its saved VM is the golden one (its start restores it as a copy); else it cold-boots the
    /// golden disk.
    pub restore: bool,
    /// The snapshot files are hard links to the golden ones (shared page cache), not copies.
    pub linked: bool,
}

/// Gives the computer in `computer_dir` (without a disk yet) a copy of `golden`'s disk and, when
/// `restore`, its saved VM as links marked as a copy. The disk is copied before the saved VM so
/// that a failure leaves no saved VM without its disk; a failure leaves neither.
pub fn seed(golden: &Path, computer_dir: &Path, restore: bool) -> Result<Seeded, BackendError> {
    if !is_complete(golden) {
        return Err(BackendError::NotReady(format!(
            "the golden snapshot {} is incomplete; build the template again",
            golden.display()
        )));
    }
    std::fs::create_dir_all(computer_dir).map_err(|e| fail("create", computer_dir, e))?;
    let disk = computer_dir.join(files::DISK);
    if disk.exists() {
        return Err(BackendError::Process(format!(
            "{} has a disk already; a golden snapshot is only for a new computer",
            computer_dir.display()
        )));
    }
    let partial = computer_dir.join("disk.img.partial");
    super::disk::copy_sparse(&golden.join(files::DISK), &partial)
        .and_then(|()| {
            // The golden disk is read-only; the computer's copy is its own to write.
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| std::fs::rename(&partial, &disk))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            fail("copy the golden disk to", &disk, e)
        })?;
    if !restore {
        return Ok(Seeded {
            restore: false,
            linked: false,
        });
    }
    match link_saved(golden, computer_dir) {
        Ok(linked) => Ok(Seeded {
            restore: true,
            linked,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&disk);
            Err(e)
        }
    }
}

/// Links (or, across filesystems, copies) every file of `golden`'s saved VM into the computer's
/// `saved/`, built beside it and renamed when whole, then marks it a copy. True when all linked.
fn link_saved(golden: &Path, computer_dir: &Path) -> Result<bool, BackendError> {
    let target = saved_vm::saved_dir(computer_dir);
    let tmp = staging(&target);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail("create", &tmp, e))?;
    let mut all_linked = true;
    let done = (|| {
        let source = saved_vm::saved_dir(golden);
        for entry in std::fs::read_dir(&source).map_err(|e| fail("read", &source, e))? {
            let entry = entry.map_err(|e| fail("read", &source, e))?;
            let to = tmp.join(entry.file_name());
            if std::fs::hard_link(entry.path(), &to).is_err() {
                // Another filesystem (or no links there): a copy works, without the sharing.
                all_linked = false;
                super::disk::copy_sparse(&entry.path(), &to)
                    .map_err(|e| fail("copy", &entry.path(), e))?;
            }
        }
        std::fs::rename(&tmp, &target).map_err(|e| fail("create", &target, e))?;
        saved_vm::mark_copy(computer_dir)
    })();
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = saved_vm::discard(computer_dir);
    }
    done.map(|()| all_linked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A suspended computer's files as the process backend leaves them.
    fn suspended(dir: &Path) {
        std::fs::create_dir_all(dir.join(files::SAVED_VM)).unwrap();
        let disk = std::fs::File::create(dir.join(files::DISK)).unwrap();
        disk.set_len(8 << 20).unwrap();
        std::fs::write(dir.join(files::SAVED_VM).join("state"), b"state").unwrap();
        std::fs::write(dir.join(files::SAVED_VM).join("memory"), vec![7u8; 8192]).unwrap();
    }

    #[test]
    fn keep_moves_disk_and_saved_vm_into_a_whole_read_only_golden_dir() {
        let d = tempfile::tempdir().unwrap();
        let (build, golden) = (d.path().join("computers/b"), d.path().join("snapshots/abc"));
        assert!(keep(&build, &golden, b"{}").is_err(), "nothing to keep yet");
        suspended(&build);
        keep(&build, &golden, br#"{"digest":"sha256:abc"}"#).unwrap();
        assert!(is_complete(&golden));
        assert!(!build.join(files::DISK).exists() && !saved_vm::present(&build));
        let mode = std::fs::metadata(golden.join("saved/memory"))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o444);
        assert_eq!(
            std::fs::metadata(golden.join(files::DISK)).unwrap().len(),
            8 << 20
        );
        // No staging directory is left beside it.
        let left: Vec<_> = std::fs::read_dir(d.path().join("snapshots"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1);
        // A second keep replaces the first.
        suspended(&build);
        keep(&build, &golden, b"{\"second\":true}").unwrap();
        assert_eq!(
            std::fs::read(golden.join(MANIFEST)).unwrap(),
            b"{\"second\":true}"
        );
    }

    #[test]
    fn seed_links_the_snapshot_copies_the_disk_and_a_discard_spares_the_golden_files() {
        let d = tempfile::tempdir().unwrap();
        let (build, golden) = (d.path().join("computers/b"), d.path().join("snapshots/abc"));
        suspended(&build);
        keep(&build, &golden, b"{}").unwrap();
        let golden_memory = std::fs::metadata(golden.join("saved/memory")).unwrap();

        let c1 = d.path().join("computers/c1");
        let s = seed(&golden, &c1, true).unwrap();
        assert_eq!(
            s,
            Seeded {
                restore: true,
                linked: true
            }
        );
        assert!(saved_vm::present(&c1) && saved_vm::is_copy(&c1));
        let linked = std::fs::metadata(c1.join("saved/memory")).unwrap();
        assert_eq!(
            linked.ino(),
            golden_memory.ino(),
            "the memory file is shared, not copied"
        );
        let disk = std::fs::metadata(c1.join(files::DISK)).unwrap();
        assert_ne!(
            disk.ino(),
            std::fs::metadata(golden.join(files::DISK)).unwrap().ino()
        );
        assert_eq!(
            disk.mode() & 0o200,
            0o200,
            "the computer's disk is writable"
        );
        assert_eq!(disk.len(), 8 << 20);
        // What a restore does once its VMM runs: the computer's links go, the golden files stay.
        saved_vm::discard(&c1).unwrap();
        assert!(is_complete(&golden));
        assert_eq!(
            std::fs::read(golden.join("saved/memory")).unwrap(),
            vec![7u8; 8192]
        );
        assert_eq!(
            std::fs::metadata(golden.join("saved/memory"))
                .unwrap()
                .nlink(),
            1
        );

        // A cold boot from the golden disk gets the disk only; a second seed is refused.
        let c2 = d.path().join("computers/c2");
        assert_eq!(
            seed(&golden, &c2, false).unwrap(),
            Seeded {
                restore: false,
                linked: false
            }
        );
        assert!(!saved_vm::present(&c2) && c2.join(files::DISK).is_file());
        assert!(seed(&golden, &c2, true).is_err());
        assert!(!saved_vm::present(&c2), "a refused seed adds nothing");

        // An incomplete golden directory is refused and leaves the computer without a disk.
        std::fs::remove_file(golden.join(MANIFEST)).unwrap();
        let c3 = d.path().join("computers/c3");
        assert!(seed(&golden, &c3, true).is_err());
        assert!(!c3.join(files::DISK).exists());
    }
}
