//! A computer's saved VM: the snapshot its VMM wrote into `<dir>/saved/` (see
//! [`crate::vmm::snapshot`]), which the computer's next start restores instead of booting. A
//! suspend writes it for the same computer; a clone of a running computer writes it into the
//! clone's directory, marked as a copy (the clone then takes a new identity once it runs).
//!
//! The snapshot holds memory and device state but not the disk: it is valid only with the disk as
//! it was when the VM was paused. So it is discarded as soon as a VM restored from it runs (its
//! memory mapping keeps the file's pages), and whenever the computer is stopped or rebooted.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::vmm::control::client::{ControlClient, ControlClientError};
use crate::vmm::control::protocol::{ControlRequest, ControlResponse, SnapshotDone};

use super::backend::BackendError;
use super::vmm_config::files;

/// A pause waits for every vCPU to leave guest code and every device worker to settle.
const PAUSE_DEADLINE: Duration = Duration::from_secs(30);
/// Writing the memory file: the rig writes a few hundred MB/s at best, and RAM may be 64 GiB.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(600);
/// Answers that need no work from the VM.
const QUICK_DEADLINE: Duration = Duration::from_secs(10);

/// The snapshot directory of the computer whose directory is `dir`.
pub fn saved_dir(dir: &Path) -> PathBuf {
    dir.join(files::SAVED_VM)
}

/// Whether the computer has a saved VM to restore.
pub fn present(dir: &Path) -> bool {
    saved_dir(dir).join("state").is_file()
}

/// Whether the saved VM is a copy of another computer's (it needs a new identity once it runs).
pub fn is_copy(dir: &Path) -> bool {
    dir.join(files::SAVED_VM_IS_COPY).exists()
}

/// What the saved VM costs on disk (allocated blocks: the memory file is sparse), if present.
pub fn allocated_bytes(dir: &Path) -> Option<u64> {
    let saved = saved_dir(dir);
    let entries = std::fs::read_dir(&saved).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum(),
    )
}

/// Removes the saved VM, its copy mark and any unfinished snapshot a dead VMM left beside it.
pub fn discard(dir: &Path) -> Result<(), BackendError> {
    let saved = saved_dir(dir);
    remove_dir(&saved)?;
    let _ = std::fs::remove_file(dir.join(files::SAVED_VM_IS_COPY));
    remove_unfinished(dir);
    Ok(())
}

/// Removes `.<saved>.tmp-<pid>` directories (snapshots whose VMM died while writing them) and
/// clone staging directories a daemon that died while cloning left.
pub fn remove_unfinished(dir: &Path) {
    let prefix = format!(".{}.tmp-", files::SAVED_VM);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) || name.starts_with(CLONE_STAGING_PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Prefix of the directory in a running computer's own directory where its VMM writes the
/// snapshot of a clone (a confined VMM reaches nothing outside its directory).
const CLONE_STAGING_PREFIX: &str = ".clone-";

/// Where the VMM of the computer in `dir` writes the snapshot for clone `to_id`.
pub fn clone_staging_dir(dir: &Path, to_id: &str) -> PathBuf {
    dir.join(format!("{CLONE_STAGING_PREFIX}{to_id}"))
}

/// Moves the saved VM written into `staging` (a computer-like directory) to the computer
/// directory `to`, replacing any it had.
pub fn move_saved(staging: &Path, to: &Path) -> Result<(), BackendError> {
    remove_dir(&saved_dir(to))?;
    std::fs::rename(saved_dir(staging), saved_dir(to)).map_err(|e| {
        BackendError::Process(format!(
            "cannot move the clone's saved VM into {}: {e}",
            to.display()
        ))
    })
}

/// The arguments that confine a restored VMM (a snapshot never carries them).
pub fn confine_args(confine: &crate::vmm::config::ConfineConfig) -> Vec<OsString> {
    vec![
        "--confine-uid".into(),
        confine.uid.to_string().into(),
        "--confine-gid".into(),
        confine.gid.to_string().into(),
    ]
}

fn remove_dir(path: &Path) -> Result<(), BackendError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackendError::Process(format!(
            "cannot remove the saved VM {}: {e}",
            path.display()
        ))),
    }
}

/// Runs one control request on a private runtime: backend calls are blocking.
fn control(
    dir: &Path,
    request: &ControlRequest,
    deadline: Duration,
) -> Result<(), ControlClientError> {
    control_request(dir, request, deadline).map(|_| ())
}

fn control_answer(
    dir: &Path,
    request: &ControlRequest,
    deadline: Duration,
) -> Result<Option<SnapshotDone>, ControlClientError> {
    control_request(dir, request, deadline).map(|answer| answer.snapshot)
}

/// One control request to the VMM of the computer directory `dir`, and its whole answer, on a
/// private runtime (backend calls are blocking).
pub(super) fn control_request(
    dir: &Path,
    request: &ControlRequest,
    deadline: Duration,
) -> Result<ControlResponse, ControlClientError> {
    let client = ControlClient::new(&dir.join(files::CONTROL));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ControlClientError::Io {
            path: dir.join(files::CONTROL),
            source,
        })?;
    runtime.block_on(client.request(request, deadline))
}

/// Pauses the VM of `dir` and writes its snapshot to `into` (a computer directory). On failure the
/// VM runs again and nothing is left in `into`.
pub fn pause_and_save(dir: &Path, into: &Path) -> Result<SnapshotDone, BackendError> {
    control(dir, &ControlRequest::PAUSE, PAUSE_DEADLINE)
        .map_err(|e| BackendError::Process(format!("cannot pause the VM: {e}")))?;
    let saved = control_answer(
        dir,
        &ControlRequest::Snapshot {
            dir: saved_dir(into),
        },
        SNAPSHOT_DEADLINE,
    );
    match saved {
        Ok(Some(done)) => Ok(done),
        outcome => {
            let why = match outcome {
                Err(e) => e.to_string(),
                _ => "the VMM's answer carried no snapshot".to_string(),
            };
            let _ = discard(into);
            resume(dir);
            Err(BackendError::Process(format!(
                "cannot save the VM (it runs on): {why}"
            )))
        }
    }
}

/// Lets a paused VM run again; a VM that is not paused is left as it is.
pub fn resume(dir: &Path) {
    if let Err(e) = control(dir, &ControlRequest::RESUME, QUICK_DEADLINE) {
        tracing::warn!("cannot resume the VM of {}: {e}", dir.display());
    }
}

/// [`resume`], waiting as long as a snapshot may take: the VMM carries out control requests one
/// at a time, so a resume sent while a snapshot is being written (by a daemon that died since)
/// is answered once the snapshot is complete.
pub fn resume_after_any_snapshot(dir: &Path) {
    if let Err(e) = control(dir, &ControlRequest::RESUME, SNAPSHOT_DEADLINE) {
        tracing::warn!("cannot resume the VM of {}: {e}", dir.display());
    }
}

/// Ends the VM at once (no power button: a saved VM must not run on past its snapshot).
pub fn force_shutdown(dir: &Path) -> Result<(), ControlClientError> {
    control(
        dir,
        &ControlRequest::Shutdown { force: true },
        QUICK_DEADLINE,
    )
}

/// Copies the saved VM of `from` (a suspended computer) to `to` as a copy: written beside the
/// target and renamed when whole, so `to` has a saved VM or none.
pub fn copy(from: &Path, to: &Path) -> Result<(), BackendError> {
    let target = saved_dir(to);
    let tmp = to.join(format!(".{}.tmp-{}", files::SAVED_VM, std::process::id()));
    let fail = |e: std::io::Error| {
        BackendError::Process(format!(
            "cannot copy the saved VM of {} to {}: {e}",
            from.display(),
            to.display()
        ))
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(fail)?;
    let copied = std::fs::read_dir(saved_dir(from))
        .and_then(|entries| {
            for entry in entries {
                let entry = entry?;
                super::disk::copy_sparse(&entry.path(), &tmp.join(entry.file_name()))?;
            }
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(e));
    }
    mark_copy(to)
}

/// Marks the saved VM in `dir` as a copy of another computer's.
pub fn mark_copy(dir: &Path) -> Result<(), BackendError> {
    std::fs::write(dir.join(files::SAVED_VM_IS_COPY), b"")
        .map_err(|e| BackendError::Process(format!("cannot mark {} as a copy: {e}", dir.display())))
}

/// How many network cards the saved VM of `dir` has (each needs a TAP given on restore).
pub fn saved_cards(dir: &Path) -> Result<usize, BackendError> {
    crate::vmm::snapshot::read_state(&saved_dir(dir))
        .map(|state| state.config.net.len())
        .map_err(|e| BackendError::Process(format!("cannot read the saved VM: {e}")))
}

/// The arguments of `deskd vmm` that restore the saved VM of the computer in `dir`, with every
/// runtime path the computer's own (a clone's snapshot names its source's), and the computer's
/// card `net` as the new TAP of a saved VM that has one (`saved_cards`): the namespace's inner
/// addresses and MAC are the same for every computer, so a restored or cloned guest's network
/// works unchanged on the new TAP (the VMM refuses a card whose MAC differs from the saved one).
pub fn restore_args(
    dir: &Path,
    saved_cards: usize,
    net: Option<&crate::vmm::config::NetConfig>,
) -> Result<Vec<OsString>, BackendError> {
    let path = |name: &str| dir.join(name).into_os_string();
    let mut args: Vec<OsString> = vec!["vmm".into(), "--restore".into()];
    args.push(saved_dir(dir).into_os_string());
    for (flag, file) in [
        ("--disk", files::DISK),
        ("--vsock-socket", files::VSOCK),
        ("--control-socket", files::CONTROL),
        ("--console-log", files::CONSOLE_LOG),
        ("--exit-status-file", files::EXIT_STATUS),
        ("--log-file", files::VMM_LOG),
        ("--pid-file", files::PID),
    ] {
        args.push(flag.into());
        args.push(path(file));
    }
    match (saved_cards, net) {
        (0, _) => {}
        (1, Some(card)) => {
            args.push("--net".into());
            args.push(card.to_arg().into());
        }
        (1, None) => {
            return Err(BackendError::NotReady(
                "the saved VM has a network card but this computer has no network now \
                 (guest networking is off or could not be set up; see the daemon's log)"
                    .into(),
            ))
        }
        (n, _) => {
            return Err(BackendError::Process(format!(
                "the saved VM has {n} network cards; deskd gives a computer one"
            )))
        }
    }
    Ok(args)
}

/// Whether the VMM of `dir` answers on its control socket (a restore has finished loading).
pub fn answers(dir: &Path) -> bool {
    control(dir, &ControlRequest::STATUS, Duration::from_secs(2)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_args_name_only_the_computers_own_files() {
        let dir = Path::new("/var/lib/deskd/computers/c2");
        let args = restore_args(dir, 0, None).unwrap();
        assert_eq!(args[0], "vmm");
        assert_eq!(args[1], "--restore");
        assert_eq!(args[2], "/var/lib/deskd/computers/c2/saved");
        // Every value after a flag is inside the computer's directory.
        for pair in args[3..].chunks(2) {
            assert!(pair[0].to_string_lossy().starts_with("--"));
            assert!(Path::new(&pair[1]).starts_with(dir), "{pair:?}");
        }
        // The VMM's own parser takes them.
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            vmm: crate::vmm::config::VmmArgs,
        }
        let parsed = Cli::try_parse_from(
            std::iter::once(OsString::from("deskd")).chain(args.into_iter().skip(1)),
        )
        .unwrap();
        assert_eq!(
            parsed.vmm.disks,
            vec!["/var/lib/deskd/computers/c2/disk.img"]
        );
        assert!(parsed.vmm.net.is_empty());
        // With its confinement, which the VMM's parser takes too.
        let confine = crate::vmm::config::ConfineConfig::new(64_003, 64_003);
        let with = confine_args(&confine);
        let parsed = Cli::try_parse_from(
            ["deskd", "--restore", "/s"]
                .into_iter()
                .map(OsString::from)
                .chain(with),
        )
        .unwrap();
        assert_eq!(
            (parsed.vmm.confine_uid, parsed.vmm.confine_gid),
            (Some(64_003), Some(64_003))
        );
    }

    #[test]
    fn a_saved_card_gets_the_computers_new_tap_and_is_refused_without_one() {
        use crate::vmm::config::{MacAddr, NetArg, NetConfig, NetRateLimit, TapSource};
        let dir = Path::new("/var/lib/deskd/computers/c2");
        let card = NetConfig {
            tap: TapSource::Fd(3),
            mac: MacAddr::new(crate::network::GUEST_MAC).unwrap(),
            limit: Some(NetRateLimit::from_megabits_per_sec(10)),
        };
        let args = restore_args(dir, 1, Some(&card)).unwrap();
        let at = args.iter().position(|a| a == "--net").unwrap();
        let given: NetArg = args[at + 1].to_str().unwrap().parse().unwrap();
        assert_eq!(given.tap, TapSource::Fd(3));
        assert_eq!(given.mac, Some(card.mac));
        assert_eq!(given.limit, card.limit);
        // A saved VM without a card restores without one, whatever the computer has now.
        let args = restore_args(dir, 0, Some(&card)).unwrap();
        assert!(!args.iter().any(|a| a == "--net"));
        let err = restore_args(dir, 1, None).unwrap_err();
        assert!(err.to_string().contains("no network now"), "{err}");
        assert!(restore_args(dir, 2, Some(&card)).is_err());
    }

    #[test]
    fn discard_removes_the_snapshot_its_mark_and_unfinished_ones() {
        let d = tempfile::tempdir().unwrap();
        let saved = saved_dir(d.path());
        std::fs::create_dir_all(&saved).unwrap();
        std::fs::write(saved.join("state"), b"s").unwrap();
        std::fs::write(saved.join("memory"), vec![1u8; 8192]).unwrap();
        mark_copy(d.path()).unwrap();
        let unfinished = d.path().join(format!(".{}.tmp-77", files::SAVED_VM));
        std::fs::create_dir_all(&unfinished).unwrap();
        std::fs::write(d.path().join(files::DISK), b"disk").unwrap();
        assert!(present(d.path()) && is_copy(d.path()));
        assert!(allocated_bytes(d.path()).unwrap() >= 8192);
        discard(d.path()).unwrap();
        assert!(!present(d.path()) && !is_copy(d.path()) && !unfinished.exists());
        assert_eq!(allocated_bytes(d.path()), None);
        assert!(d.path().join(files::DISK).exists(), "the disk stays");
        // Discarding nothing is fine.
        discard(d.path()).unwrap();
    }

    #[test]
    fn a_vm_that_does_not_answer_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let err = pause_and_save(d.path(), d.path()).unwrap_err();
        assert!(err.to_string().contains("cannot pause"), "{err}");
        assert!(!answers(d.path()));
    }
}
