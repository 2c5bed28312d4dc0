//! Every guest-physical address the VMM uses, in one place, and the e820 map derived from them.
//!
//! Low memory (below 1 MiB) holds what the 64-bit boot protocol needs before the kernel runs:
//!
//! ```text
//! 0x0000_0500  GDT (5 entries) ................ BOOT_GDT_START
//! 0x0000_0540  IDT (empty) .................... BOOT_IDT_START
//! 0x0000_7000  zero page (struct boot_params) . ZERO_PAGE_START
//! 0x0000_8ff0  initial stack (grows down) ..... BOOT_STACK_POINTER
//! 0x0000_9000  PML4, PDPT, 4 PDs .............. PML4_START .. PAGE_TABLES_END
//! 0x0002_0000  kernel command line ............ CMDLINE_START
//! 0x0009_fc00  EBDA: end of low RAM in e820 ... EBDA_START
//! 0x000e_0000  RSDP then the other ACPI tables  ACPI_START .. HIMEM_START
//! 0x0010_0000  bzImage protected-mode part .... HIMEM_START
//!     ...      RAM up to min(memory, 3 GiB); the initrd sits at its top
//! 0xc000_0000  32-bit MMIO hole (no RAM) ...... MMIO32_START
//! 0xd000_0000    virtio-mmio windows, 4 KiB each
//! 0xfec0_0000    IOAPIC (in-kernel)
//! 0xfee0_0000    local APICs (in-kernel)
//! 0xfffb_c000    KVM identity-map page and TSS (Intel only, must not overlap anything)
//! 0x1_0000_0000 RAM beyond 3 GiB continues here
//! ```

use linux_loader::loader::bootparam::boot_e820_entry;

/// 1 MiB: everything below is the legacy PC area.
const MIB: u64 = 1 << 20;
/// 1 GiB, for the page tables and the MMIO hole.
const GIB: u64 = 1 << 30;

/// The boot GDT; the 64-bit boot protocol wants flat segments at selectors 0x10 (code) and 0x18
/// (data). Placed above the real-mode IVT (0x0-0x3ff) and BIOS data area (0x400-0x4ff) so a kernel
/// reading those finds zeros rather than our descriptors.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of GDT entries: null, unused, code (0x10), data (0x18), TSS (0x20).
pub const BOOT_GDT_ENTRIES: usize = 5;
/// An empty IDT: the kernel installs its own before enabling interrupts. Right after the GDT.
pub const BOOT_IDT_START: u64 = 0x540;

/// The zero page (`struct boot_params`, 4 KiB); `rsi` points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer: top of the page below the page tables (16-byte aligned, minus a slot).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity-mapping page tables for the first 4 GiB (2 MiB pages): one PML4, one PDPT, four PDs.
/// The decompressor builds its own tables soon after entry; these only need to cover the kernel,
/// the zero page, the command line and the initrd, which all live below 4 GiB.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table (first 4 entries used).
pub const PDPT_START: u64 = 0xa000;
/// Four page directories, one per GiB.
pub const PD_START: u64 = 0xb000;
/// Number of GiB identity-mapped (one page directory each).
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// First byte after the page tables.
pub const PAGE_TABLES_END: u64 = PD_START + IDENTITY_MAPPED_GIB * 0x1000;

/// The kernel command line, NUL-terminated. Well clear of the page tables, below the EBDA.
pub const CMDLINE_START: u64 = 0x20000;
/// Upper bound for the command line including its NUL; x86 kernels accept 2048 bytes
/// (`COMMAND_LINE_SIZE`) and also announce their limit in the setup header's `cmdline_size`.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the Extended BIOS Data Area on a PC: low RAM ends here in the e820 map, and the area
/// up to 1 MiB is reported reserved.
pub const EBDA_START: u64 = 0x9fc00;

/// ACPI tables. The RSDP goes first, on a 16-byte boundary inside 0xe0000-0xfffff, the range
/// Linux scans when `boot_params.acpi_rsdp_addr` is not used; the other tables follow it.
pub const ACPI_START: u64 = 0xe0000;
/// Where the RSDP is written.
pub const RSDP_START: u64 = ACPI_START;
/// End (exclusive) of the room for ACPI tables.
pub const ACPI_END: u64 = HIMEM_START;

/// 1 MiB: the protected-mode kernel of a bzImage is loaded here (its `code32_start`).
pub const HIMEM_START: u64 = MIB;
/// Where the bzImage's protected-mode code is loaded.
pub const KERNEL_START: u64 = HIMEM_START;
/// Offset of `startup_64` in the protected-mode code (64-bit boot protocol entry point).
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Start of the 32-bit MMIO hole: RAM above 3 GiB is moved above 4 GiB.
pub const MMIO32_START: u64 = 3 * GIB;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO32_END: u64 = 4 * GIB;
/// Where RAM that does not fit below the hole continues.
pub const HIGH_RAM_START: u64 = MMIO32_END;

/// The first virtio-mmio window; window `i` is at `VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// One virtio-mmio window: the register block of the virtio-mmio spec (0x100) plus config space.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// How many virtio-mmio devices one VM can have: one GSI each, `VIRTIO_GSI_BASE..=23`.
pub const VIRTIO_MMIO_MAX_DEVICES: usize = (IOAPIC_PINS - VIRTIO_GSI_BASE) as usize;

/// The in-kernel IOAPIC's fixed address (KVM places it here).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Number of IOAPIC input pins (GSIs 0-23) of KVM's IOAPIC.
pub const IOAPIC_PINS: u32 = 24;
/// The local APICs' fixed address (KVM places them here).
pub const LAPIC_START: u64 = 0xfee0_0000;
/// One page KVM needs for its identity map on Intel (`KVM_SET_IDENTITY_MAP_ADDR`); unused by AMD.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// Three pages KVM needs for the real-mode TSS on Intel (`KVM_SET_TSS_ADDR`); right after the above.
pub const KVM_TSS_START: u64 = 0xfffb_d000;

/// ISA IRQ / GSI of COM1 (the PC standard).
pub const SERIAL_GSI: u32 = 4;
/// I/O port of COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Number of ports of an 8250.
pub const SERIAL_PORT_COUNT: u16 = 8;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port; writing 0xfe here resets the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI sleep control register (FADT `SLEEP_CONTROL_REG`, hardware-reduced ACPI), 1 byte.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (FADT `SLEEP_STATUS_REG`), 1 byte.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// GSI of the ACPI Generic Event Device that signals the power button.
pub const POWER_BUTTON_GSI: u32 = 5;
/// GSI of virtio-mmio window 0; window `i` uses `VIRTIO_GSI_BASE + i`. Starts above the ISA IRQs
/// a PC conventionally uses (8 RTC, 9 SCI) so no legacy assumption of the kernel collides.
pub const VIRTIO_GSI_BASE: u32 = 10;

/// The smallest guest the VMM accepts: the Debian cloud kernel decompresses into ~50 MiB.
pub const MIN_MEMORY_MIB: u64 = 128;
/// The largest guest, in MiB (1 TiB); well within 4-level paging and KVM's slot size.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Base address of virtio-mmio window `index`.
pub fn virtio_mmio_base(index: usize) -> u64 {
    VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE
}

/// GSI of virtio-mmio window `index`.
pub fn virtio_gsi(index: usize) -> u32 {
    VIRTIO_GSI_BASE + index as u32
}

// Fixed regions that must not collide, checked at compile time.
const _: () = assert!(PAGE_TABLES_END <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
// The i8042 device is registered at its data port and answers the command port in the same span.
const _: () = assert!(I8042_COMMAND_PORT == I8042_DATA_PORT + 4);
const _: () = assert!(LAPIC_START + 0x1000 <= KVM_IDENTITY_MAP_START);
const _: () = assert!(KVM_IDENTITY_MAP_START + 0x1000 <= KVM_TSS_START);
const _: () = assert!(KVM_TSS_START + 3 * 0x1000 <= MMIO32_END);

/// e820 entry types (Linux `arch/x86/include/asm/e820/types.h`).
pub const E820_RAM: u32 = 1;
/// Reserved memory: not RAM for the kernel.
pub const E820_RESERVED: u32 = 2;

/// Where guest RAM lives for a given memory size: below the hole, and possibly above 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamLayout {
    /// Bytes of RAM mapped at guest address 0.
    pub low_size: u64,
    /// Bytes of RAM mapped at `HIGH_RAM_START` (zero if everything fits below the hole).
    pub high_size: u64,
}

impl RamLayout {
    /// Splits `memory_bytes` of RAM around the 32-bit MMIO hole.
    pub fn new(memory_bytes: u64) -> Self {
        let low_size = memory_bytes.min(MMIO32_START);
        RamLayout {
            low_size,
            high_size: memory_bytes - low_size,
        }
    }

    /// The guest-physical ranges backed by RAM, as (start, size).
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges = vec![(0, self.low_size)];
        if self.high_size > 0 {
            ranges.push((HIGH_RAM_START, self.high_size));
        }
        ranges
    }

    /// End (exclusive) of the RAM below the MMIO hole.
    pub fn low_end(&self) -> u64 {
        self.low_size
    }

    /// The e820 map the guest gets: usable RAM except the legacy PC area between the EBDA and
    /// 1 MiB, which holds the ACPI tables and is reported reserved.
    pub fn e820(&self) -> Vec<boot_e820_entry> {
        let mut map = vec![
            boot_e820_entry {
                addr: 0,
                size: EBDA_START,
                r#type: E820_RAM,
            },
            boot_e820_entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                r#type: E820_RESERVED,
            },
        ];
        if self.low_size > HIMEM_START {
            map.push(boot_e820_entry {
                addr: HIMEM_START,
                size: self.low_size - HIMEM_START,
                r#type: E820_RAM,
            });
        }
        if self.high_size > 0 {
            map.push(boot_e820_entry {
                addr: HIGH_RAM_START,
                size: self.high_size,
                r#type: E820_RAM,
            });
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(e: &boot_e820_entry) -> u64 {
        e.addr + e.size
    }

    #[test]
    fn small_guest_fits_below_the_hole() {
        let ram = RamLayout::new(256 * MIB);
        assert_eq!(ram.low_size, 256 * MIB);
        assert_eq!(ram.high_size, 0);
        assert_eq!(ram.ranges(), vec![(0, 256 * MIB)]);
        let e820 = ram.e820();
        assert_eq!(e820.len(), 3);
        assert_eq!(
            (e820[0].addr, end(&e820[0]), e820[0].r#type),
            (0, EBDA_START, E820_RAM)
        );
        assert_eq!(
            (e820[1].addr, end(&e820[1]), e820[1].r#type),
            (EBDA_START, HIMEM_START, E820_RESERVED)
        );
        assert_eq!(
            (e820[2].addr, end(&e820[2]), e820[2].r#type),
            (HIMEM_START, 256 * MIB, E820_RAM)
        );
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_hole() {
        let ram = RamLayout::new(6 * GIB);
        assert_eq!(ram.low_size, 3 * GIB);
        assert_eq!(ram.high_size, 3 * GIB);
        assert_eq!(ram.ranges(), vec![(0, 3 * GIB), (4 * GIB, 3 * GIB)]);
        let e820 = ram.e820();
        let last = e820.last().unwrap();
        assert_eq!(
            (last.addr, end(last), last.r#type),
            (4 * GIB, 7 * GIB, E820_RAM)
        );
        // No RAM entry touches the hole.
        for e in &e820 {
            let addr = e.addr;
            assert!(end(e) <= MMIO32_START || addr >= MMIO32_END, "{addr:x}");
        }
        let ram_total: u64 = e820
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_total, 6 * GIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn exactly_three_gib_has_no_high_ram() {
        let ram = RamLayout::new(3 * GIB);
        assert_eq!(ram.high_size, 0);
        assert_eq!(ram.e820().len(), 3);
    }

    #[test]
    fn e820_entries_are_sorted_and_disjoint() {
        for mib in [MIN_MEMORY_MIB, 512, 3072, 3073, 16384] {
            let e820 = RamLayout::new(mib * MIB).e820();
            for pair in e820.windows(2) {
                assert!(end(&pair[0]) <= pair[1].addr, "{mib} MiB: overlap");
            }
        }
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, end) of every fixed structure below 1 MiB, in address order.
        let regions = [
            (BOOT_GDT_START, BOOT_GDT_START + 8 * BOOT_GDT_ENTRIES as u64),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (BOOT_STACK_POINTER - 0x800, BOOT_STACK_POINTER + 0x10),
            (PML4_START, PAGE_TABLES_END),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (ACPI_START, ACPI_END),
        ];
        for pair in regions.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(PDPT_START, PML4_START + 0x1000);
        assert_eq!(PD_START, PDPT_START + 0x1000);
    }

    #[test]
    fn mmio_windows_and_gsis_fit_the_hole_and_the_ioapic() {
        let last = virtio_mmio_base(VIRTIO_MMIO_MAX_DEVICES - 1) + VIRTIO_MMIO_SIZE;
        assert!(virtio_mmio_base(0) >= MMIO32_START);
        assert!(last <= IOAPIC_START);
        assert_eq!(virtio_gsi(VIRTIO_MMIO_MAX_DEVICES - 1), IOAPIC_PINS - 1);
        for gsi in [SERIAL_GSI, POWER_BUTTON_GSI] {
            assert!(gsi < VIRTIO_GSI_BASE);
        }
    }
}
