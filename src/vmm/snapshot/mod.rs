//! VM snapshots: what `{"cmd":"snapshot","dir":DIR}` writes and `deskd vmm --restore DIR` reads.
//!
//! # Directory layout
//!
//! ```text
//! DIR/state    header + the VM's state (vCPUs, irqchip, PIT, clock, devices, the VMM config)
//! DIR/memory   guest RAM, every region back to back, sparse (zero pages are holes)
//! ```
//!
//! The snapshot is written into `.<name>.tmp-<pid>` beside DIR, synced, and renamed to DIR only
//! when complete, so DIR is whole or absent. An existing DIR is replaced atomically (the two are
//! exchanged with `renameat2(RENAME_EXCHANGE)` and the old one is removed afterwards). The disk
//! images are not in the snapshot: the restored VM opens the images its configuration names (the
//! saved ones, or the `--disk` paths given to `--restore`), which must hold what the disks held
//! when the snapshot was taken (keep the VM paused or gone meanwhile; a clone copies them).
//!
//! # The state file
//!
//! ```text
//! 0..8    magic "DESKDSNP"
//! 8..12   format version, u32 little-endian (FORMAT_VERSION)
//! 12..20  body length, u64 little-endian
//! 20..52  SHA-256 of the body
//! 52..    body: SnapshotState in postcard (serde, compact, a documented stable wire format)
//! ```
//!
//! The body carries the host facts it depends on ([`HostFacts`]: KVM's API version,
//! `KVM_GET_SUPPORTED_CPUID` less the APIC IDs of whichever CPU answered, the KVM capabilities the
//! VMM uses): a snapshot is refused on a host
//! where they differ, as it is when it is truncated, corrupt or of another format version, always
//! with an error that says which, never a crash. The memory file is checked by its length only;
//! checking its contents would mean reading all of RAM, which restore avoids.
//!
//! # Restoring
//!
//! `deskd vmm --restore DIR` starts the VM in a new process: RAM is `DIR/memory` mapped
//! `MAP_PRIVATE` (restore time does not grow with RAM; VMs restored from one file share its
//! unchanged pages), then the VM, vCPU and device state are set before the first `KVM_RUN`.
//! The saved configuration is used, with these overridable on the command line for a copy that
//! lives elsewhere: `--control-socket`, `--vsock-socket`/`--vsock-cid`, `--console-log`,
//! `--console-stdout`, `--exit-status-file`, `--shutdown-timeout`, `--disk` (same count and sizes),
//! `--net` (same count and MACs: each card's TAP, `tap=NAME` or `fd=N`, and optionally its limit;
//! the limits saved are those in force at the snapshot, `set-net-limit` included).
//! `--restore-paused` leaves vCPUs and devices paused until `{"cmd":"resume"}`, so the daemon can
//! prepare a copy before it runs. After the restore the guest's vsock connections are reset (the
//! device sends `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`; listeners stay), its monotonic clock goes on
//! from the snapshot instant, and its wall clock is behind by the time it was away until the agent
//! sets it. A frame a network card held for the guest at the snapshot is lost (the guest's TCP
//! sends again); a clone in its own network namespace keeps the MAC and addresses it had.

//! # What the daemon does with it
//!
//! - **Suspend**: `{"cmd":"pause"}`, `{"cmd":"snapshot","dir":D}`, then
//!   `{"cmd":"shutdown","force":true}`; the VMM exits with status 4 (hard stop), which after a
//!   successful snapshot means "suspended", not a failure. Until the VMM has exited, the disk images
//!   must not change (the guest is paused, so it does not write them).
//! - **Resume**: `deskd vmm --restore D` with the same runtime options the computer had (or
//!   none: the saved ones are used). The guest's agent is reachable on vsock again once the guest
//!   has handled the transport reset; connect with retries, as after a boot. Then have the agent
//!   set the wall clock (its job, not the VMM's). `--restore` refuses, with exit status 1 and one
//!   line saying why, a snapshot that is truncated, corrupt, of another format version or from
//!   another host; the daemon should then discard it and boot the computer afresh.
//! - **Clone of a running computer**: pause the source, snapshot it to the clone's directory, copy
//!   its disks (reflink where possible) while it is still paused, resume it; start the clone with
//!   `deskd vmm --restore CLONE_SNAPSHOT --disk CLONE_DISK --vsock-socket ... --control-socket ...
//!   --console-log ... --exit-status-file ...` (`--restore-paused` and a later `resume` if it must
//!   be prepared before it runs), then have the agent give it its new identity before anyone uses
//!   it. Several VMs may be restored from one snapshot at once; each needs its own disk copy.
//! - **Stop of a suspended computer**: delete D. A snapshot is never rewritten in place, so
//!   deleting or replacing D while a VM restored from it runs is safe (its mapping keeps the old
//!   file); never truncate or write a memory file in place.
//! - **Crash safety**: a directory named `.<name>.tmp-<pid>` beside D is an unfinished snapshot
//!   (the VMM died while writing it): delete it. D itself is always complete.
//! - **Disk quota**: `DIR/memory` is sparse; its allocated size (`st_blocks`, or the
//!   `memory_data_bytes` of the snapshot answer) is what it costs, not its length.

pub mod memory;

use std::io::Write;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::VmConfig;
use super::devices::acpi_pm::persist::AcpiPmState;
use super::devices::i8042::persist::I8042State;
use super::devices::serial::persist::SerialSnapshot;
use super::devices::virtio::transport::persist::TransportState;
use super::vcpu::persist::VcpuState;
use super::vm::persist::VmState;
pub use memory::{MemoryFileError, MemoryRegion, WriteStats};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"DESKDSNP";
/// The state layout this VMM writes and the only one it reads. Bump it with any change to
/// `SnapshotState` or anything in it (postcard is not self-describing). 2: the configuration's
/// network cards (`VmConfig::net`) and the virtio-net device state.
pub const FORMAT_VERSION: u32 = 2;
/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// A state file bigger than this is not one of ours (a 16-vCPU VM's state is well under 1 MiB).
const MAX_BODY_LEN: u64 = 64 << 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a deskd snapshot state file (bad magic)")]
    NotASnapshot { path: PathBuf },
    #[error("{path} is a snapshot of format version {found}; this deskd reads only version {FORMAT_VERSION}; restore it with the deskd that wrote it, or boot the VM afresh")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is truncated: it has {found} bytes, its header promises {expected}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path} is corrupt: its checksum does not match its contents")]
    Corrupt { path: PathBuf },
    #[error("{path} cannot be decoded ({reason}); it is corrupt or from an incompatible deskd")]
    Decode { path: PathBuf, reason: String },
    #[error("cannot encode the snapshot state: {0}")]
    Encode(String),
    #[error("this snapshot does not fit this host: {0}; restore it on the host it was taken on (same CPU model and kernel), or boot the VM afresh")]
    Host(String),
    #[error("cannot probe KVM for the host facts: {0}")]
    Probe(String),
    #[error("the snapshot directory {0} has no file name or parent; give a path like /var/lib/deskd/computers/ID/snapshot")]
    BadDir(PathBuf),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

/// Facts about the host a snapshot depends on; equal on the host that restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub kvm_api_version: i32,
    /// `KVM_GET_SUPPORTED_CPUID` (see [`host_cpuid`]), which the guest's CPUID was derived from.
    pub cpuid: Vec<CpuidLeaf>,
    /// The KVM capabilities the VMM and the saved state rely on, present or not.
    pub capabilities: Vec<(String, bool)>,
}

/// Capabilities whose presence changes what a VM's state means or whether it can be restored.
const FACT_CAPS: [(Cap, &str); 13] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
    (Cap::Xsave, "KVM_CAP_XSAVE"),
    (Cap::Xsave2, "KVM_CAP_XSAVE2"),
    (Cap::Xcrs, "KVM_CAP_XCRS"),
    (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    (Cap::AdjustClock, "KVM_CAP_ADJUST_CLOCK"),
    (Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ"),
    (Cap::TscControl, "KVM_CAP_TSC_CONTROL"),
];

impl HostFacts {
    /// The facts of this host, from its KVM.
    pub fn probe(kvm: &Kvm) -> Result<HostFacts, SnapshotError> {
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| SnapshotError::Probe(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
        Ok(HostFacts {
            kvm_api_version: kvm.get_api_version(),
            cpuid: host_cpuid(cpuid.as_slice()),
            capabilities: FACT_CAPS
                .iter()
                .map(|(cap, name)| (name.to_string(), kvm.check_extension(*cap)))
                .collect(),
        })
    }

    /// Whether a snapshot taken on `saved` can be restored on this host (`self`); the error
    /// names the first difference.
    pub fn check(&self, saved: &HostFacts) -> Result<(), SnapshotError> {
        if saved.kvm_api_version != self.kvm_api_version {
            return Err(SnapshotError::Host(format!(
                "KVM API version {} in the snapshot, {} here",
                saved.kvm_api_version, self.kvm_api_version
            )));
        }
        if saved.cpuid != self.cpuid {
            let leaf = |l: &CpuidLeaf| {
                format!(
                    "leaf {:#x}/{:#x} = {:08x} {:08x} {:08x} {:08x}",
                    l.function, l.index, l.eax, l.ebx, l.ecx, l.edx
                )
            };
            let first = saved
                .cpuid
                .iter()
                .zip(&self.cpuid)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("{} in the snapshot, {} here", leaf(a), leaf(b)))
                .unwrap_or_else(|| {
                    format!(
                        "{} leaves in the snapshot, {} here",
                        saved.cpuid.len(),
                        self.cpuid.len()
                    )
                });
            return Err(SnapshotError::Host(format!(
                "the CPUID KVM reports differs from the one the snapshot was taken with (another CPU model, microcode or kernel): {first}"
            )));
        }
        if saved.capabilities != self.capabilities {
            let diff = saved
                .capabilities
                .iter()
                .find(|c| !self.capabilities.contains(c))
                .map(|(name, had)| {
                    format!(
                        "{name} {} in the snapshot's host",
                        if *had { "present" } else { "absent" }
                    )
                })
                .unwrap_or_else(|| "the set of KVM capabilities differs".into());
            return Err(SnapshotError::Host(diff));
        }
        Ok(())
    }
}

/// One leaf of KVM's supported CPUID as a host fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A CPUID list as a host fact: without the fields that name the host CPU the ioctl happened to
/// run on (KVM fills some leaves from the current CPU, so its APIC IDs differ from one call to
/// the next).
pub fn host_cpuid(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Vec<CpuidLeaf> {
    entries
        .iter()
        .map(|e| {
            let mut leaf = CpuidLeaf {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            };
            match e.function {
                // Initial APIC ID (bits 31-24) of leaf 1.
                1 => leaf.ebx &= 0x00ff_ffff,
                // Extended topology: EDX is the x2APIC ID of the current CPU.
                0xb | 0x1f => leaf.edx = 0,
                // AMD: extended APIC ID, core (compute unit) ID, node ID of the current CPU.
                0x8000_001e => {
                    leaf.eax = 0;
                    leaf.ebx &= !0xff;
                    leaf.ecx &= !0xff;
                }
                _ => {}
            }
            leaf
        })
        .collect()
}

/// The legacy devices' state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyDevicesState {
    pub serial: SerialSnapshot,
    pub i8042: I8042State,
    pub acpi_pm: AcpiPmState,
}

/// Everything in a state file's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub host: HostFacts,
    /// The configuration the VM ran with (paths as they were; `--restore` may override some).
    pub config: VmConfig,
    /// Where each RAM region is in the memory file.
    pub memory: Vec<MemoryRegion>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub legacy: LegacyDevicesState,
    /// Virtio devices in attach order (the order of `device_wiring`).
    pub virtio: Vec<TransportState>,
    /// When the snapshot was taken (milliseconds since the Unix epoch), for the daemon's records.
    pub taken_unix_ms: u64,
}

/// The state file's bytes for `state`.
pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, SnapshotError> {
    let body = postcard::to_stdvec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses a state file's bytes (`path` is for messages). Never panics, whatever the bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<SnapshotState, SnapshotError> {
    let p = || path.to_path_buf();
    if bytes.len() < 12 {
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot { path: p() });
        }
        return Err(SnapshotError::Truncated {
            path: p(),
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path: p() });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: p(),
            found: version,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            path: p(),
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let body_len = u64::from_le_bytes(len);
    let found = (bytes.len() - HEADER_LEN) as u64;
    if body_len > MAX_BODY_LEN || body_len != found {
        if body_len > found {
            return Err(SnapshotError::Truncated {
                path: p(),
                expected: body_len.saturating_add(HEADER_LEN as u64),
                found: bytes.len() as u64,
            });
        }
        return Err(SnapshotError::Corrupt { path: p() });
    }
    let body = &bytes[HEADER_LEN..];
    if Sha256::digest(body).as_slice() != &bytes[20..52] {
        return Err(SnapshotError::Corrupt { path: p() });
    }
    let state: SnapshotState = postcard::from_bytes(body).map_err(|e| SnapshotError::Decode {
        path: p(),
        reason: e.to_string(),
    })?;
    if state.vcpus.is_empty() || state.memory.is_empty() {
        return Err(SnapshotError::Decode {
            path: p(),
            reason: "no vCPUs or no memory".into(),
        });
    }
    Ok(state)
}

/// Reads and checks `DIR/state` (the header and checksum; not yet the host facts).
pub fn read_state(dir: &Path) -> Result<SnapshotState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
    decode(&path, &bytes)
}

/// A snapshot being written: a temporary directory beside the final one.
pub struct PendingSnapshot {
    tmp: PathBuf,
    dir: PathBuf,
}

impl PendingSnapshot {
    /// Creates the temporary directory for a snapshot that will become `dir`.
    pub fn create(dir: &Path) -> Result<PendingSnapshot, SnapshotError> {
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Err(SnapshotError::BadDir(dir.to_path_buf()));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = parent.join(tmp_name);
        if tmp.exists() {
            // Left by an earlier attempt of this same process id: never a finished snapshot.
            std::fs::remove_dir_all(&tmp).map_err(io_err("remove the stale", &tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io_err("create the directory", &tmp))?;
        Ok(PendingSnapshot {
            tmp,
            dir: dir.to_path_buf(),
        })
    }

    /// Where the memory file goes.
    pub fn memory_path(&self) -> PathBuf {
        self.tmp.join(MEMORY_FILE)
    }

    /// Writes the state file, syncs, and moves the directory into place.
    pub fn finish(self, state: &SnapshotState) -> Result<(), SnapshotError> {
        let bytes = encode(state)?;
        let path = self.tmp.join(STATE_FILE);
        let mut file = std::fs::File::create(&path).map_err(io_err("create", &path))?;
        file.write_all(&bytes).map_err(io_err("write", &path))?;
        file.sync_all().map_err(io_err("sync", &path))?;
        sync_dir(&self.tmp)?;
        publish(&self.tmp, &self.dir)?;
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        // Finished: the temporary name is gone (or holds the replaced snapshot, removed already).
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory", dir))
}

/// Moves `tmp` to `dir`: a rename, or an atomic exchange with an existing `dir` whose old
/// contents (now at `tmp`) are then removed.
fn publish(tmp: &Path, dir: &Path) -> Result<(), SnapshotError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return std::fs::rename(tmp, dir).map_err(io_err("rename the snapshot to", dir));
    }
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(from), Ok(to)) = (c(tmp), c(dir)) else {
        return Err(SnapshotError::BadDir(dir.to_path_buf()));
    };
    // SAFETY: both arguments are valid NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(io_err("replace the snapshot", dir)(
            std::io::Error::last_os_error(),
        ));
    }
    std::fs::remove_dir_all(tmp).map_err(io_err("remove the replaced snapshot", tmp))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(crate) mod tests;
