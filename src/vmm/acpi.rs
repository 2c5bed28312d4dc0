//! ACPI tables: the only way the Debian cloud kernel (no MP table, no `virtio_mmio.device=`)
//! learns about the vCPUs, the IOAPIC and the virtio-mmio devices.
//!
//! Hardware-reduced ACPI (no PM1 blocks, no SCI): power-off goes through the FADT's sleep
//! control register, the power button is a Generic Event Device (`ACPI0013`) whose interrupt
//! makes `_EVT` notify the `PNP0C0C` button device.
//!
//! Tables, in guest memory from `layout::ACPI_START`: RSDP -> XSDT -> {FADT -> DSDT, MADT}.

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use super::memory::GuestMemory;

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"DESKD ";
/// OEM table id in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"DESKDVMM";
const OEM_REVISION: u32 = 1;
/// The sleep type the DSDT's `\_S5_` announces; written to the sleep control register on poweroff.
pub const S5_SLEEP_TYPE: u8 = 5;
/// FADT IA-PC boot architecture flags: no VGA (bit 2), no MSI (bit 3, there is no PCI), no CMOS
/// RTC (bit 5, kvmclock gives the time). No 8042 flag: the guest has no keyboard, only the reset
/// line reached by writing 0xfe to port 0x64.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
/// MADT flags: the platform also has dual 8259 PICs (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT revision for ACPI 6.x.
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// `Notify` value for a power button press.
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;
/// Tables are placed on 16-byte boundaries.
const TABLE_ALIGN: u64 = 16;

/// Why the tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {needed} bytes but only {room} fit below 1 MiB")]
    TooBig { needed: u64, room: u64 },
    #[error("cannot write the ACPI tables into guest memory: {0}")]
    GuestWrite(String),
    #[error("{0} virtio-mmio devices do not fit the platform (at most {max})", max = layout::VIRTIO_MMIO_MAX_DEVICES)]
    TooManyDevices(usize),
}

/// One virtio-mmio device as the guest must see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioWindow {
    /// Base of its 4 KiB register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its interrupt (edge-triggered, active high).
    pub gsi: u32,
}

/// The tables, each with the guest-physical address it goes to.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// (address, bytes), RSDP first.
    pub tables: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// Copies every table into guest memory.
    pub fn write_to(&self, mem: &GuestMemory) -> Result<(), AcpiError> {
        for (addr, bytes) in &self.tables {
            mem.write_slice(bytes, GuestAddress(*addr))
                .map_err(|e| AcpiError::GuestWrite(e.to_string()))?;
        }
        Ok(())
    }

    /// The table with this signature ("RSD " for the RSDP).
    #[cfg(test)]
    pub fn find(&self, signature: &[u8; 4]) -> Option<&(u64, Vec<u8>)> {
        self.tables.iter().find(|(_, b)| b.starts_with(signature))
    }
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Already-encoded AML, so objects can be encoded one statement at a time (the builders borrow
/// their children, which then only need to live until the end of that statement).
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn encode(aml: &dyn Aml) -> RawAml {
    RawAml(aml_bytes(aml))
}

/// The DSDT: COM1, one `LNRO0005` per virtio-mmio window, the power button and `\_S5_`.
fn dsdt(windows: &[VirtioMmioWindow]) -> Vec<u8> {
    let com1 = encode(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(
                        layout::SERIAL_PORT,
                        layout::SERIAL_PORT,
                        1,
                        layout::SERIAL_PORT_COUNT as u8,
                    ),
                    &Interrupt::new(true, true, false, false, layout::SERIAL_GSI),
                ]),
            ),
        ],
    ));
    let button = encode(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ));
    // The GED's only event is the power button: `_EVT` notifies the button device.
    let ged = encode(&Device::new(
        "GED0".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Interrupt::new(
                    true,
                    true,
                    false,
                    false,
                    layout::POWER_BUTTON_GSI,
                )]),
            ),
            &Method::new(
                "_EVT".into(),
                1,
                false,
                vec![&Notify::new(
                    &Path::new("\\_SB_.PWRB"),
                    &NOTIFY_BUTTON_PRESSED,
                )],
            ),
        ],
    ));
    let virtio: Vec<RawAml> = windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            encode(&Device::new(
                format!("VR{i:02X}").as_str().into(),
                vec![
                    &Name::new("_HID".into(), &"LNRO0005"),
                    &Name::new("_UID".into(), &(i as u32)),
                    &Name::new(
                        "_CRS".into(),
                        &ResourceTemplate::new(vec![
                            // The windows sit in the 32-bit MMIO hole: base and size fit in u32.
                            &Memory32Fixed::new(true, w.base as u32, w.size as u32),
                            &Interrupt::new(true, true, false, false, w.gsi),
                        ]),
                    ),
                ],
            ))
        })
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &button, &ged];
    for dev in &virtio {
        sb_children.push(dev);
    }
    let mut body = aml_bytes(&aml::Scope::new("\\_SB_".into(), sb_children));
    // Sleep type values for S5 (SLP_TYPa, SLP_TYPb, reserved, reserved).
    Name::new(
        "_S5_".into(),
        &Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);

    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT: hardware-reduced, with the sleep registers used for poweroff.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    builder.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    builder.sleep_control_reg = io_register(layout::ACPI_SLEEP_CONTROL_PORT);
    builder.sleep_status_reg = io_register(layout::ACPI_SLEEP_STATUS_PORT);
    builder.hypervisor_vendor_identity = u64::from_le_bytes(*b"DESKDVMM").into();
    aml_bytes(&builder.finalize())
}

/// The MADT: one enabled local APIC per vCPU (APIC id = index), the IOAPIC, and LINT1 as NMI.
fn madt(vcpus: u8) -> Vec<u8> {
    let mut table = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.write_u32(36, layout::LAPIC_START as u32);
    table.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        // Processor Local APIC: type 0, length 8, ACPI processor UID, APIC id, flags (enabled).
        entries.extend_from_slice(&[0, 8, cpu, cpu]);
        entries.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, id 0 (KVM's IOAPIC id register resets to 0), address, GSI base 0.
    entries.extend_from_slice(&[1, 12, 0, 0]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    entries.extend_from_slice(&0u32.to_le_bytes());
    // Local APIC NMI: type 4, length 6, all processors (0xff), default polarity/trigger, LINT1.
    entries.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    table.append_slice(&entries);
    table.as_slice().to_vec()
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Builds every table for `vcpus` vCPUs and the given virtio-mmio windows.
pub fn build(vcpus: u8, windows: &[VirtioMmioWindow]) -> Result<AcpiTables, AcpiError> {
    if windows.len() > layout::VIRTIO_MMIO_MAX_DEVICES {
        return Err(AcpiError::TooManyDevices(windows.len()));
    }
    let rsdp_len = Rsdp::len() as u64;
    let dsdt_addr = align_up(layout::RSDP_START + rsdp_len);
    let dsdt = dsdt(windows);
    let fadt_addr = align_up(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align_up(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let xsdt_addr = align_up(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooBig {
            needed: end - layout::ACPI_START,
            room: layout::ACPI_END - layout::ACPI_START,
        });
    }
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        tables: vec![
            (layout::RSDP_START, rsdp),
            (dsdt_addr, dsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (xsdt_addr, xsdt),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }
    fn windows(n: usize) -> Vec<VirtioMmioWindow> {
        (0..n)
            .map(|i| VirtioMmioWindow {
                base: layout::virtio_mmio_base(i),
                size: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::virtio_gsi(i),
            })
            .collect()
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_length() {
        let t = build(4, &windows(3)).unwrap();
        let (rsdp_addr, rsdp) = &t.tables[0];
        assert_eq!(*rsdp_addr, layout::RSDP_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        for (_, table) in &t.tables[1..] {
            assert_eq!(sum(table), 0, "{:?}", std::str::from_utf8(&table[..4]));
            assert_eq!(u32_at(table, 4) as usize, table.len());
            assert_eq!(&table[10..16], &OEM_ID);
        }
    }

    #[test]
    fn pointers_link_the_tables() {
        let t = build(1, &[]).unwrap();
        let rsdp = &t.tables[0].1;
        let (xsdt_addr, xsdt) = t.find(b"XSDT").unwrap();
        assert_eq!(u64_at(rsdp, 24), *xsdt_addr);
        let (fadt_addr, fadt) = t.find(b"FACP").unwrap();
        let (madt_addr, _) = t.find(b"APIC").unwrap();
        assert_eq!(xsdt.len(), 36 + 16);
        assert_eq!(u64_at(xsdt, 36), *fadt_addr);
        assert_eq!(u64_at(xsdt, 44), *madt_addr);
        let (dsdt_addr, _) = t.find(b"DSDT").unwrap();
        assert_eq!(u64_at(fadt, 140), *dsdt_addr, "X_DSDT");
        // Tables do not overlap and stay in the ACPI area.
        let mut spans: Vec<(u64, u64)> = t
            .tables
            .iter()
            .map(|(a, b)| (*a, a + b.len() as u64))
            .collect();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0);
        }
        assert!(spans.last().unwrap().1 <= layout::ACPI_END);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_registers() {
        let t = build(1, &[]).unwrap();
        let (_, fadt) = t.find(b"FACP").unwrap();
        assert_eq!(fadt.len(), 276);
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::PwrButton as u32, 0);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256: system I/O, 8 bits, the ports.
        assert_eq!(fadt[244], 1);
        assert_eq!(fadt[245], 8);
        assert_eq!(
            u64_at(fadt, 248),
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT)
        );
        assert_eq!(fadt[256], 1);
        assert_eq!(u64_at(fadt, 260), u64::from(layout::ACPI_SLEEP_STATUS_PORT));
        assert_eq!(&fadt[268..276], b"DESKDVMM");
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for vcpus in [1u8, 2, 16] {
            let t = build(vcpus, &[]).unwrap();
            let (_, madt) = t.find(b"APIC").unwrap();
            assert_eq!(u32_at(madt, 36), layout::LAPIC_START as u32);
            let mut off = 44;
            let mut lapic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut nmis = 0;
            while off < madt.len() {
                let (kind, len) = (madt[off], madt[off + 1] as usize);
                assert!(len >= 2 && off + len <= madt.len());
                match kind {
                    0 => {
                        assert_eq!(u32_at(madt, off + 4), 1, "enabled");
                        lapic_ids.push(madt[off + 3]);
                    }
                    1 => ioapics.push((u32_at(madt, off + 4), u32_at(madt, off + 8))),
                    4 => nmis += 1,
                    other => panic!("unexpected MADT entry {other}"),
                }
                off += len;
            }
            assert_eq!(lapic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(layout::IOAPIC_START as u32, 0)]);
            assert_eq!(nmis, 1);
        }
    }

    #[test]
    fn dsdt_describes_each_virtio_device_and_the_platform() {
        let w = windows(5);
        let t = build(2, &w).unwrap();
        let (_, dsdt) = t.find(b"DSDT").unwrap();
        assert_eq!(count(dsdt, b"LNRO0005\0"), w.len());
        for (i, win) in w.iter().enumerate() {
            let name = format!("VR{i:02X}");
            assert_eq!(count(dsdt, name.as_bytes()), 1, "{name}");
            // Memory32Fixed descriptor: 0x86, length 9, read-write, base, size.
            let mut mem_desc = vec![0x86, 9, 0, 1];
            mem_desc.extend_from_slice(&(win.base as u32).to_le_bytes());
            mem_desc.extend_from_slice(&(win.size as u32).to_le_bytes());
            assert_eq!(count(dsdt, &mem_desc), 1, "{name} window");
            // Extended interrupt descriptor: 0x89, length 6, consumer+edge, one GSI.
            let mut irq_desc = vec![0x89, 6, 0, 0b11, 1];
            irq_desc.extend_from_slice(&win.gsi.to_le_bytes());
            assert_eq!(count(dsdt, &irq_desc), 1, "{name} interrupt");
        }
        assert_eq!(count(dsdt, b"VR05"), 0);
        // PWRB twice: the device and the `Notify` target in `_EVT`.
        for (needle, n) in [
            (&b"COM1"[..], 1),
            (b"PWRB", 2),
            (b"GED0", 1),
            (b"_EVT", 1),
            (b"_S5_", 1),
            (b"ACPI0013\0", 1),
        ] {
            assert_eq!(count(dsdt, needle), n, "{:?}", std::str::from_utf8(needle));
        }
        // EISA id of PNP0C0C, as AML DWord: 0x41d00c0c byte-swapped.
        assert_eq!(count(dsdt, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]), 1);
    }

    #[test]
    fn largest_vm_fits() {
        let t = build(16, &windows(layout::VIRTIO_MMIO_MAX_DEVICES)).unwrap();
        let (addr, last) = t.tables.last().unwrap();
        assert!(addr + last.len() as u64 <= layout::ACPI_END);
        assert!(matches!(
            build(1, &windows(layout::VIRTIO_MMIO_MAX_DEVICES + 1)),
            Err(AcpiError::TooManyDevices(_))
        ));
    }
}

#[cfg(test)]
mod iasl_tests {
    use super::*;

    /// Disassembles every table with ACPICA's `iasl` (package acpica-tools), which rejects
    /// malformed AML and bad checksums; skipped loudly when it is not installed.
    #[test]
    fn iasl_accepts_the_tables() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED iasl_accepts_the_tables: iasl not installed (apt-get install acpica-tools)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("deskd-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let windows: Vec<VirtioMmioWindow> = (0..3)
            .map(|i| VirtioMmioWindow {
                base: layout::virtio_mmio_base(i),
                size: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::virtio_gsi(i),
            })
            .collect();
        let tables = build(2, &windows).unwrap();
        for (_, bytes) in &tables.tables[1..] {
            let name = std::str::from_utf8(&bytes[..4]).unwrap().to_lowercase();
            let file = dir.join(format!("{name}.dat"));
            std::fs::write(&file, bytes).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&file)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "iasl -d {name}: {text}");
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            assert!(!dsl.contains("Invalid"), "{name}: {dsl}");
            if name == "dsdt" {
                for needle in [
                    "LNRO0005",
                    "\\_SB.PWRB",
                    "0x80",
                    "_S5_",
                    "0xD0002000",
                    "ACPI0013",
                ] {
                    assert!(dsl.contains(needle), "{needle} missing from\n{dsl}");
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
