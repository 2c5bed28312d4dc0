//! Guest RAM: allocation (anonymous, populated lazily) and registration with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::RamLayout;

/// The guest memory type used throughout the VMM (and by the virtio devices).
pub type GuestMemory = GuestMemoryMmap<()>;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "the VM needs {wanted_mib} MiB but the host has only {available_mib} MiB available; \
         give the VM less memory or free some on the host"
    )]
    HostTooSmall { wanted_mib: u64, available_mib: u64 },
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Allocate { mib: u64, reason: String },
    #[error("KVM refused guest memory slot {slot}: {source}")]
    Register {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// Reads `MemAvailable` from `/proc/meminfo`, in MiB; `None` if the kernel does not say.
pub fn host_available_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available_mib(&info)
}

fn parse_mem_available_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Refuses a guest larger than what the host can give it right now. Guest memory is populated
/// lazily, but a guest that later touches more than the host has gets the VMM OOM-killed, which
/// is a worse way to learn the same thing.
pub fn check_host_memory(wanted_mib: u64) -> Result<(), MemoryError> {
    match host_available_mib() {
        Some(available_mib) if available_mib < wanted_mib => Err(MemoryError::HostTooSmall {
            wanted_mib,
            available_mib,
        }),
        _ => Ok(()),
    }
}

/// Maps the guest's RAM (private anonymous memory, no swap reservation).
pub fn allocate(ram: &RamLayout) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram
        .ranges()
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate {
        mib: (ram.low_size + ram.high_size) >> 20,
        reason: e.to_string(),
    })
}

/// Tells KVM about every region of `mem`, one slot each.
pub fn register(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host_addr =
            mem.get_host_address(region.start_addr())
                .map_err(|e| MemoryError::Allocate {
                    mib: region.len() >> 20,
                    reason: e.to_string(),
                })?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the range is a live mapping owned by `mem`, which the VM keeps alive for as long
        // as the VM exists (the process exits with the VM; the mapping is never unmapped first).
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_available() {
        let info = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(parse_mem_available_mib(info), Some(2048));
        assert_eq!(parse_mem_available_mib("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn absurd_request_is_refused_with_both_sizes() {
        let err = check_host_memory(u64::MAX / 2).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("MiB available"), "{msg}");
    }

    #[test]
    fn allocation_follows_the_layout() {
        let ram = RamLayout::new(128 << 20);
        let mem = allocate(&ram).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((128 << 20) - 1));
    }
}
