//! Per-vCPU CPUID: KVM's supported CPUID as the base, then the identity and topology of each vCPU
//! filled in so the guest sees one socket with `count` single-threaded cores whose APIC ids are
//! 0..count (the same ids the MADT lists), and hardware virtualization hidden: a guest is
//! untrusted, and nested virtualization would hand it the host KVM's nested-SVM/VMX emulation as
//! attack surface (and a guest kernel that loads `kvm_amd` for nothing at every boot).

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: the TSC-deadline mode of the local APIC timer (KVM emulates it).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: "running under a hypervisor".
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: Intel VMX.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: AMD SVM.
const EXT1_ECX_SVM: u32 = 1 << 2;
/// AMD's SVM revision and feature leaf, meaningful only with SVM.
const LEAF_SVM_FEATURES: u32 = 0x8000_000a;
/// Leaf 1 EDX: the package has more than one logical processor (the EBX[23:16] count is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units, reported in leaf 1 EBX[15:8].
const CLFLUSH_LINE_QWORDS: u32 = 8;

/// Extended-topology level types (leaves 0xb and 0x1f, ECX[15:8]).
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Identity of one vCPU within the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC id.
    pub index: u8,
    /// Number of vCPUs in the VM (all cores of one socket, one thread per core).
    pub count: u8,
}

/// Bits needed to number `count` items (0 for a single one): the APIC-id shift of a level.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `entries` (a copy of KVM's supported CPUID) for the vCPU `topo`.
/// `tsc_deadline` says whether KVM can emulate the TSC-deadline timer.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], topo: VcpuTopology, tsc_deadline: bool) {
    let apic_id = u32::from(topo.index);
    let count = u32::from(topo.count.max(1));
    let core_bits = id_bits(count);
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (apic_id << 24) | (count << 16) | (CLFLUSH_LINE_QWORDS << 8);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                entry.ecx &= !LEAF1_ECX_VMX;
                if tsc_deadline {
                    entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Deterministic cache parameters (Intel): cores per package in EAX[31:26]; caches
            // up to L2 are private to a core (one thread), L3 is shared by the whole socket.
            4 => {
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
            }
            // Extended topology (Intel; AMD Zen also reports it): SMT level with one thread,
            // core level with all vCPUs, then the terminating invalid level.
            0xb | 0x1f => {
                let (shift, logical, level_type) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (core_bits, count, LEVEL_TYPE_CORE),
                    _ => (0, 0, LEVEL_TYPE_INVALID),
                };
                entry.eax = shift;
                entry.ebx = logical;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = apic_id;
            }
            0x8000_0001 => entry.ecx &= !EXT1_ECX_SVM,
            LEAF_SVM_FEATURES => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            // AMD: number of cores in ECX[7:0] (minus one) and the APIC-id bits for them.
            0x8000_0008 => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            // AMD topology extensions: extended APIC id, core id with one thread per core,
            // a single node.
            0x8000_001e => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn base() -> Vec<kvm_cpuid_entry2> {
        let mut leaf4_l3 = entry(4, 3);
        leaf4_l3.eax = (3 << 5) | 3; // level 3, unified cache
        let mut leaf1 = entry(1, 0);
        leaf1.ebx = 0xdead_beef; // whatever the host said must go
        leaf1.ecx = LEAF1_ECX_TSC_DEADLINE;
        vec![
            leaf1,
            leaf4_l3,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ]
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 16].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 4]
        );
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_id() {
        for index in 0..4u8 {
            let mut entries = base();
            normalize(&mut entries, VcpuTopology { index, count: 4 }, true);
            let leaf1 = find(&entries, 1, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(index));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_eq!((leaf1.ebx >> 8) & 0xff, 8);
            assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_ne!(leaf1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
            assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
            for sub in 0..3 {
                assert_eq!(find(&entries, 0xb, sub).edx, u32::from(index));
            }
            assert_eq!(find(&entries, 0x8000_001e, 0).eax, u32::from(index));
        }
    }

    #[test]
    fn topology_levels_describe_one_socket() {
        let mut entries = base();
        normalize(&mut entries, VcpuTopology { index: 2, count: 6 }, false);
        let smt = find(&entries, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, (LEVEL_TYPE_SMT << 8)));
        let core = find(&entries, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx),
            (3, 6, (LEVEL_TYPE_CORE << 8) | 1)
        );
        let end = find(&entries, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx), (0, 0, 2));
        let amd = find(&entries, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xff, 5);
        assert_eq!((amd.ecx >> 12) & 0xf, 3);
        let l3 = find(&entries, 4, 3);
        assert_eq!(l3.eax >> 26, 5);
        assert_eq!((l3.eax >> 14) & 0xfff, 5);
        assert_eq!(l3.eax & 0x1f, 3, "cache type bits survive");
        let leaf1 = find(&entries, 1, 0);
        assert_eq!(leaf1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn hardware_virtualization_is_hidden_from_the_guest() {
        let mut entries = base();
        entries[0].ecx |= LEAF1_ECX_VMX | 1; // VMX and SSE3
        let mut ext1 = entry(0x8000_0001, 0);
        ext1.ecx = EXT1_ECX_SVM | 1; // SVM and LAHF/SAHF
        let mut svm = entry(LEAF_SVM_FEATURES, 0);
        (svm.eax, svm.ebx, svm.edx) = (1, 0x8000, 0x1_beff);
        entries.extend([ext1, svm]);
        normalize(&mut entries, VcpuTopology { index: 0, count: 1 }, true);
        let leaf1 = find(&entries, 1, 0);
        assert_eq!(leaf1.ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(leaf1.ecx & 1, 1, "other features stay");
        let ext1 = find(&entries, 0x8000_0001, 0);
        assert_eq!((ext1.ecx & EXT1_ECX_SVM, ext1.ecx & 1), (0, 1));
        let svm = find(&entries, LEAF_SVM_FEATURES, 0);
        assert_eq!((svm.eax, svm.ebx, svm.ecx, svm.edx), (0, 0, 0, 0));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut entries = base();
        entries[0].edx = LEAF1_EDX_HTT;
        normalize(&mut entries, VcpuTopology { index: 0, count: 1 }, true);
        assert_eq!(find(&entries, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&entries, 0x8000_0008, 0).ecx & 0xf0ff, 0);
    }
}
