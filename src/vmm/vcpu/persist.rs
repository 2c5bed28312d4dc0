//! One vCPU's state in a snapshot, read from KVM and written back in the orders KVM needs.
//!
//! Reading: pending port I/O or MMIO is completed first (a `KVM_RUN` with `immediate_exit` set
//! finishes the instruction without entering the guest), then `KVM_GET_MP_STATE` before the rest,
//! because it makes the in-kernel LAPIC accept pending INIT/SIPI events, which changes the other
//! state. MSRs are every index in `KVM_GET_MSR_INDEX_LIST` this vCPU can read (TSC and kvmclock
//! MSRs among them); one KVM cannot read is left out.
//!
//! Writing: CPUID first (it decides which MSRs and XSAVE features exist), then the TSC frequency,
//! MP state, registers, XSAVE, XCRs, debug registers, LAPIC before the MSRs (the TSC deadline
//! timer lives in the LAPIC) with `IA32_TSC` before `IA32_TSC_DEADLINE`, and the pending events
//! last (they refer to the LAPIC and MP state).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VcpuPersistError {
    #[error("KVM refused to {what} of vCPU {index}: {source}")]
    Kvm {
        index: usize,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM did not take MSR {msr:#x} from the snapshot; the host's KVM differs from the one the snapshot was taken on")]
    Msr { index: usize, msr: u32 },
    #[error("vCPU {index}: the snapshot's {what} list is too long ({len} entries)")]
    TooMany {
        index: usize,
        what: &'static str,
        len: usize,
    },
    #[error("vCPU {index}: the snapshot's TSC runs at {saved} kHz and this host cannot scale the guest's TSC to it ({source}); restore on a host with the same TSC frequency")]
    TscFrequency {
        index: usize,
        saved: u32,
        source: kvm_ioctls::Error,
    },
}

/// Everything KVM keeps about one vCPU that a restored guest needs.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    /// `None` when KVM could not say (no `KVM_CAP_GET_TSC_KHZ`).
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .field("cpuid", &self.cpuid.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish_non_exhaustive()
    }
}

/// Reads the state of vCPU `index`, which must be out of `KVM_RUN` (parked while paused).
pub fn save(
    index: usize,
    vcpu: &mut VcpuFd,
    msr_index: &[u32],
) -> Result<VcpuState, VcpuPersistError> {
    let kvm = |what: &'static str| {
        move |source| VcpuPersistError::Kvm {
            index,
            what,
            source,
        }
    };
    // Finish an exit that was handled but whose result (an MMIO or port read) KVM applies only on
    // the next KVM_RUN; with immediate_exit KVM does that and returns EINTR at once.
    vcpu.set_kvm_immediate_exit(1);
    let completed = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match completed {
        Err(e) if e.errno() == libc::EINTR => {}
        Err(e) => return Err(kvm("complete the pending I/O")(e)),
        // With immediate_exit set KVM does not enter the guest, so no new exit can come out.
        Ok(()) => {}
    }
    let mp_state = vcpu.get_mp_state().map_err(kvm("read the MP state"))?;
    let regs = vcpu.get_regs().map_err(kvm("read the registers"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(kvm("read the special registers"))?;
    let xsave = vcpu.get_xsave().map_err(kvm("read the XSAVE area"))?;
    let xcrs = vcpu.get_xcrs().map_err(kvm("read the XCRs"))?;
    let debug_regs = vcpu
        .get_debug_regs()
        .map_err(kvm("read the debug registers"))?;
    let lapic = vcpu.get_lapic().map_err(kvm("read the LAPIC"))?;
    let msrs = save_msrs(index, vcpu, msr_index)?;
    let vcpu_events = vcpu
        .get_vcpu_events()
        .map_err(kvm("read the pending events"))?;
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("read the CPUID"))?
        .as_slice()
        .to_vec();
    let tsc_khz = vcpu.get_tsc_khz().ok();
    Ok(VcpuState {
        cpuid,
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        mp_state,
        vcpu_events,
        tsc_khz,
    })
}

/// Reads every listed MSR this vCPU has. `KVM_GET_MSRS` stops at the first index it cannot read
/// and says how many it did; that one is skipped and the rest read on.
fn save_msrs(
    index: usize,
    vcpu: &VcpuFd,
    msr_index: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuPersistError> {
    let kvm = |what: &'static str| {
        move |source| VcpuPersistError::Kvm {
            index,
            what,
            source,
        }
    };
    let mut saved = Vec::with_capacity(msr_index.len());
    let mut rest = msr_index;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&msr| kvm_msr_entry {
                index: msr,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuPersistError::TooMany {
            index,
            what: "MSR",
            len: entries.len(),
        })?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("read the MSRs"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // Skip the one KVM could not read (if it stopped early).
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(saved)
}

/// Writes `state` into a freshly created vCPU, before its first `KVM_RUN`.
pub fn restore(index: usize, vcpu: &VcpuFd, state: &VcpuState) -> Result<(), VcpuPersistError> {
    let kvm = |what: &'static str| {
        move |source| VcpuPersistError::Kvm {
            index,
            what,
            source,
        }
    };
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuPersistError::TooMany {
        index,
        what: "CPUID",
        len: state.cpuid.len(),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("set the CPUID"))?;
    if let Some(saved) = state.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(saved) {
            vcpu.set_tsc_khz(saved)
                .map_err(|source| VcpuPersistError::TscFrequency {
                    index,
                    saved,
                    source,
                })?;
        }
    }
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm("set the MP state"))?;
    vcpu.set_regs(&state.regs)
        .map_err(kvm("set the registers"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(kvm("set the special registers"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (the 4 KiB legacy layout KVM_GET_XSAVE filled);
    // KVM_SET_XSAVE reads exactly that struct and nothing past it.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm("set the XSAVE area"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(kvm("set the XCRs"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(kvm("set the debug registers"))?;
    vcpu.set_lapic(&state.lapic).map_err(kvm("set the LAPIC"))?;
    restore_msrs(index, vcpu, &state.msrs)?;
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(kvm("set the pending events"))?;
    Ok(())
}

fn restore_msrs(
    index: usize,
    vcpu: &VcpuFd,
    saved: &[kvm_msr_entry],
) -> Result<(), VcpuPersistError> {
    let mut ordered: Vec<kvm_msr_entry> = saved.to_vec();
    // The deadline is relative to the TSC: set the TSC first, the deadline last.
    ordered.sort_by_key(|e| match e.index {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
    for chunk in ordered.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuPersistError::TooMany {
            index,
            what: "MSR",
            len: chunk.len(),
        })?;
        let written = vcpu
            .set_msrs(&msrs)
            .map_err(|source| VcpuPersistError::Kvm {
                index,
                what: "set the MSRs",
                source,
            })?;
        if written < chunk.len() {
            return Err(VcpuPersistError::Msr {
                index,
                msr: chunk[written].index,
            });
        }
    }
    Ok(())
}
