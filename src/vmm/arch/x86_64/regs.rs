//! vCPU state for the 64-bit boot protocol: identity page tables, GDT, long-mode segment and
//! control registers, general registers, FPU, boot MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::vmm::layout;
use crate::vmm::memory::GuestMemory;

/// Why a vCPU could not be put into its boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot {what} into guest memory: {reason}")]
    GuestWrite { what: &'static str, reason: String },
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

// Control register and EFER bits.
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_HUGE: u64 = 1 << 7;

/// GDT access/flags words (bits 40-55 of a descriptor): flat 64-bit code, flat data, busy TSS.
const GDT_CODE64: u16 = 0xa09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x808b;
/// GDT indexes; the boot protocol wants `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18.
const GDT_CODE_INDEX: u16 = 2;
const GDT_DATA_INDEX: u16 = 3;
const GDT_TSS_INDEX: u16 = 4;

/// x87 control word after FNINIT and the SSE control/status default.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

// MSRs set at boot.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast string operations (what firmware leaves on).
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: without it the guest may treat RAM as
/// uncacheable and run very slowly.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

// Local APIC registers and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_DELIVERY_MODE_EXTINT: u32 = 0b111;
const APIC_DELIVERY_MODE_NMI: u32 = 0b100;

/// Encodes a GDT descriptor.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of a GDT descriptor loaded with selector `index * 8`.
fn kvm_segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = bit(55) == 1;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT.
fn boot_gdt() -> [u64; layout::BOOT_GDT_ENTRIES] {
    [
        0,
        0,
        gdt_entry(GDT_CODE64, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0xfffff),
    ]
}

/// Writes the GDT, the empty IDT and page tables identity-mapping the first 4 GiB.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    let write = |what: &'static str, value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|e| RegsError::GuestWrite {
                what,
                reason: e.to_string(),
            })
    };
    for (i, entry) in boot_gdt().iter().enumerate() {
        write("GDT", *entry, layout::BOOT_GDT_START + 8 * i as u64)?;
    }
    write("IDT", 0, layout::BOOT_IDT_START)?;
    write(
        "PML4",
        layout::PDPT_START | PTE_PRESENT | PTE_WRITABLE,
        layout::PML4_START,
    )?;
    for gib in 0..layout::IDENTITY_MAPPED_GIB {
        let pd = layout::PD_START + gib * 0x1000;
        write(
            "PDPT",
            pd | PTE_PRESENT | PTE_WRITABLE,
            layout::PDPT_START + gib * 8,
        )?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            write(
                "page directory",
                phys | PTE_PRESENT | PTE_WRITABLE | PDE_HUGE,
                pd + i * 8,
            )?;
        }
    }
    Ok(())
}

/// Long mode with paging, flat segments from the boot GDT (boot CPU only).
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("read segment registers"))?;
    let gdt = boot_gdt();
    let code = kvm_segment_from_gdt(gdt[GDT_CODE_INDEX as usize], GDT_CODE_INDEX);
    let data = kvm_segment_from_gdt(gdt[GDT_DATA_INDEX as usize], GDT_DATA_INDEX);
    let tss = kvm_segment_from_gdt(gdt[GDT_TSS_INDEX as usize], GDT_TSS_INDEX);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (8 * layout::BOOT_GDT_ENTRIES - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("set segment registers"))
}

/// Entry point, stack, and `rsi` pointing at the zero page (boot CPU only).
pub fn setup_regs(vcpu: &VcpuFd, rip: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("set registers"))
}

/// x87/SSE state as after reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set the FPU state"))
}

/// The MSR values every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Loads [`boot_msrs`] into the vCPU.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|e| RegsError::MsrList(format!("{e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// New LVT value with the delivery mode (bits 8-10) replaced.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, as firmware leaves them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("read the local APIC"))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_DELIVERY_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_DELIVERY_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(kvm("set the local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::layout::RamLayout;
    use crate::vmm::memory;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let gdt = boot_gdt();
        let code = kvm_segment_from_gdt(gdt[2], 2);
        assert_eq!(code.selector, 0x10);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!(
            (code.type_, code.present, code.s, code.l, code.g),
            (0xb, 1, 1, 1, 1)
        );
        assert_eq!((code.db, code.dpl, code.unusable), (0, 0, 0));
        let data = kvm_segment_from_gdt(gdt[3], 3);
        assert_eq!(data.selector, 0x18);
        assert_eq!((data.type_, data.db, data.l, data.s), (0x3, 1, 0, 1));
        let tss = kvm_segment_from_gdt(gdt[4], 4);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn gdt_entry_matches_known_encoding() {
        // The classic flat 64-bit code descriptor.
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map_4gib_with_2mib_pages() {
        let mem = memory::allocate(&RamLayout::new(128 << 20)).unwrap();
        write_boot_tables(&mem).unwrap();
        let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).unwrap();
        assert_eq!(read(layout::PML4_START) & !0xfff, layout::PDPT_START);
        // Walk a few addresses through the tables.
        for vaddr in [
            0u64,
            0x20_0000,
            0x100_0000 + 0x1234,
            0xbfff_ffff,
            0xfee0_0000,
        ] {
            let pdpte = read(layout::PDPT_START + ((vaddr >> 30) & 0x1ff) * 8);
            assert_eq!(pdpte & 1, 1);
            let pde = read((pdpte & !0xfff) + ((vaddr >> 21) & 0x1ff) * 8);
            assert_eq!(pde & (PTE_PRESENT | PDE_HUGE), PTE_PRESENT | PDE_HUGE);
            assert_eq!((pde & !0x1f_ffff) | (vaddr & 0x1f_ffff), vaddr);
        }
        assert_eq!(read(layout::BOOT_GDT_START + 0x10), boot_gdt()[2]);
    }

    #[test]
    fn lvt_delivery_mode_keeps_other_bits() {
        // Masked (bit 16) with vector 0x20 stays masked with the same vector.
        assert_eq!(
            with_delivery_mode(0x1_0020, APIC_DELIVERY_MODE_NMI),
            0x1_0420
        );
        assert_eq!(with_delivery_mode(0x700, APIC_DELIVERY_MODE_EXTINT), 0x700);
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&regs, APIC_LVT1), 0xdead_beef);
    }

    #[test]
    fn boot_msrs_enable_writeback_mtrrs() {
        let msrs = boot_msrs();
        let def = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(def.data, 0x806);
    }
}
