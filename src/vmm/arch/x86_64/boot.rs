//! Loading a bzImage, its initrd and command line, and writing the zero page for the 64-bit
//! Linux boot protocol (Documentation/arch/x86/boot.rst).

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_params, setup_header};
use std::io::Cursor;

use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, ReadVolatile};

use super::payload;

use crate::vmm::layout::{self, RamLayout};
use crate::vmm::memory::GuestMemory;

/// `boot_flag` value every valid setup header carries.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS", the setup header signature.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// xloadflags bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol 2.12 introduced xloadflags.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Initrd placement alignment (the boot protocol asks for page alignment).
const INITRD_ALIGN: u64 = 0x1000;

/// Why the kernel, initrd or command line could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open the kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a bootable x86 bzImage ({reason}); pass a vmlinuz from a linux-image package")]
    NotBzImage { path: PathBuf, reason: String },
    #[error("{path} uses boot protocol {version:#x} or lacks the 64-bit entry point; a Linux >= 3.8 x86_64 kernel is needed")]
    No64BitEntry { path: PathBuf, version: u16 },
    #[error("the kernel needs {needed_mib} MiB to decompress but the VM has {have_mib} MiB below 3 GiB; give the VM more memory")]
    KernelTooBig { needed_mib: u64, have_mib: u64 },
    #[error("cannot open the initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the initrd {path} ({size_mib} MiB) does not fit in guest memory above the kernel; give the VM more memory")]
    InitrdTooBig { path: PathBuf, size_mib: u64 },
    #[error("cannot read the initrd {path} into guest memory: {reason}")]
    ReadInitrd { path: PathBuf, reason: String },
    #[error("the kernel command line is {len} bytes but this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write {what} into guest memory: {reason}")]
    GuestWrite { what: &'static str, reason: String },
}

/// Where the boot CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// The 64-bit entry point (`startup_64`).
    pub rip: u64,
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// How the kernel was put into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// The bzImage's payload was decompressed on the host and its `vmlinux` ELF loaded; the
    /// boot CPU starts at the ELF entry (`startup_64` of the real kernel).
    HostDecompressed,
    /// The bzImage was loaded as is; the guest runs its own decompressor first.
    BzImage,
}

/// Puts kernel, initrd, command line and zero page into `mem`; returns the entry point.
/// With `host_decompress`, a payload format the host can decompress skips the guest's
/// decompressor (see [`super::payload`]).
pub fn load(
    mem: &GuestMemory,
    ram: &RamLayout,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    host_decompress: bool,
) -> Result<(BootEntry, KernelFormat), BootError> {
    let image = std::fs::read(kernel).map_err(|source| BootError::OpenKernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    let not_bzimage = |reason: &str| BootError::NotBzImage {
        path: kernel.to_path_buf(),
        reason: reason.to_string(),
    };
    let header_bytes = image
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>())
        .ok_or_else(|| not_bzimage("file too short"))?;
    let header = *setup_header::from_slice(header_bytes).ok_or_else(|| not_bzimage("header"))?;
    if header.header != HEADER_MAGIC {
        return Err(not_bzimage("no HdrS signature"));
    }
    check_header(&header, kernel)?;

    let vmlinux = if host_decompress {
        match payload::extract_vmlinux(&image) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot decompress the kernel on the host ({e}); the guest will");
                None
            }
        }
    } else {
        None
    };
    let (rip, kernel_end, format) = match vmlinux {
        Some(vmlinux) => {
            let loaded = Elf::load(
                mem,
                None,
                &mut Cursor::new(&vmlinux),
                Some(GuestAddress(layout::HIMEM_START)),
            )
            .map_err(|e| not_bzimage(&format!("its vmlinux does not load: {e}")))?;
            let end = kernel_footprint_end(&header, loaded.kernel_end);
            (loaded.kernel_load.0, end, KernelFormat::HostDecompressed)
        }
        None => {
            let loaded = BzImage::load(
                mem,
                Some(GuestAddress(layout::KERNEL_START)),
                &mut Cursor::new(&image),
                Some(GuestAddress(layout::HIMEM_START)),
            )
            .map_err(|e| not_bzimage(&e.to_string()))?;
            let end = kernel_footprint_end(&header, loaded.kernel_end);
            (
                layout::KERNEL_START + layout::KERNEL_64BIT_ENTRY_OFFSET,
                end,
                KernelFormat::BzImage,
            )
        }
    };
    if kernel_end > ram.low_end() {
        return Err(BootError::KernelTooBig {
            needed_mib: kernel_end.div_ceil(1 << 20),
            have_mib: ram.low_end() >> 20,
        });
    }

    let initrd = match initrd {
        Some(path) => Some(load_initrd(mem, ram, &header, kernel_end, path)?),
        None => None,
    };
    let cmdline_len = write_cmdline(mem, &header, cmdline)?;
    let params = zero_page(header, ram, initrd, cmdline_len);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|e| BootError::GuestWrite {
            what: "the zero page",
            reason: e.to_string(),
        })?;
    Ok((BootEntry { rip }, format))
}

fn check_header(header: &setup_header, path: &Path) -> Result<(), BootError> {
    let version = header.version;
    let xloadflags = header.xloadflags;
    if version < MIN_BOOT_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry {
            path: path.to_path_buf(),
            version,
        });
    }
    Ok(())
}

/// End of the memory the kernel may occupy early on: `init_size` bytes from the bzImage load
/// address (room for decompressing), or the end of what was loaded if that is further.
fn kernel_footprint_end(header: &setup_header, loaded_end: u64) -> u64 {
    let init_size = u64::from(header.init_size);
    (layout::KERNEL_START + init_size).max(loaded_end)
}

/// Highest page-aligned address at which `size` bytes end below both the end of low RAM and the
/// kernel's `initrd_addr_max`, or `None` if that would overlap `[0, floor)`.
pub fn initrd_address(low_end: u64, initrd_addr_max: u32, floor: u64, size: u64) -> Option<u64> {
    let top = low_end.min(u64::from(initrd_addr_max) + 1);
    let start = top.checked_sub(size)? & !(INITRD_ALIGN - 1);
    (start >= floor).then_some(start)
}

fn load_initrd(
    mem: &GuestMemory,
    ram: &RamLayout,
    header: &setup_header,
    kernel_end: u64,
    path: &Path,
) -> Result<InitrdPlacement, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let addr = initrd_address(ram.low_end(), header.initrd_addr_max, kernel_end, size).ok_or(
        BootError::InitrdTooBig {
            path: path.to_path_buf(),
            size_mib: size >> 20,
        },
    )?;
    read_file_into(mem, &mut file, addr, size).map_err(|reason| BootError::ReadInitrd {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(InitrdPlacement { addr, size })
}

fn read_file_into<F: ReadVolatile>(
    mem: &GuestMemory,
    file: &mut F,
    addr: u64,
    size: u64,
) -> Result<(), String> {
    let size = usize::try_from(size).map_err(|e| e.to_string())?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, size)
        .map_err(|e| e.to_string())
}

/// Writes the NUL-terminated command line; returns its length without the NUL.
fn write_cmdline(
    mem: &GuestMemory,
    header: &setup_header,
    cmdline: &str,
) -> Result<usize, BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    // Protocol >= 2.06 announces the limit (without the NUL); never exceed our reserved room.
    let max = (header.cmdline_size as usize).min(layout::CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|e| BootError::GuestWrite {
            what: "the command line",
            reason: e.to_string(),
        })?;
    Ok(cmdline.len())
}

/// The zero page: the kernel's own setup header plus what a boot loader fills in.
fn zero_page(
    mut header: setup_header,
    ram: &RamLayout,
    initrd: Option<InitrdPlacement>,
    cmdline_len: usize,
) -> boot_params {
    header.type_of_loader = LOADER_TYPE_UNDEFINED;
    header.boot_flag = BOOT_FLAG_MAGIC;
    header.header = HEADER_MAGIC;
    header.cmd_line_ptr = layout::CMDLINE_START as u32;
    header.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        // Both fit in 32 bits: the initrd lies below 3 GiB.
        header.ramdisk_image = initrd.addr as u32;
        header.ramdisk_size = initrd.size as u32;
    }
    let mut params = boot_params {
        hdr: header,
        acpi_rsdp_addr: layout::RSDP_START,
        ..Default::default()
    };
    let e820 = ram.e820();
    for (slot, entry) in params.e820_table.iter_mut().zip(e820.iter()) {
        *slot = *entry;
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory;

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mib = 1u64 << 20;
        // 256 MiB guest, 10 MiB + 1 byte initrd: ends at 256 MiB, start rounded down to a page.
        let addr = initrd_address(256 * mib, 0x7fff_ffff, 64 * mib, 10 * mib + 1).unwrap();
        assert_eq!(addr, (246 * mib - 1) & !0xfff);
        assert!(addr + 10 * mib < 256 * mib);
        // initrd_addr_max caps it below the end of RAM.
        let addr = initrd_address(3072 * mib, 0x37ff_ffff, 64 * mib, mib).unwrap();
        assert_eq!(addr, 0x3800_0000 - mib);
        // Too big to stay above the kernel.
        assert_eq!(
            initrd_address(128 * mib, 0x7fff_ffff, 64 * mib, 65 * mib),
            None
        );
        assert_eq!(initrd_address(mib, 0x7fff_ffff, 0, 2 * mib), None);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_rsdp_and_e820() {
        let ram = RamLayout::new(256 << 20);
        let header = setup_header {
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        let params = zero_page(
            header,
            &ram,
            Some(InitrdPlacement {
                addr: 0x0800_0000,
                size: 1234,
            }),
            17,
        );
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HEADER_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 17);
        assert_eq!({ hdr.ramdisk_image }, 0x0800_0000);
        assert_eq!({ hdr.ramdisk_size }, 1234);
        assert_eq!({ params.acpi_rsdp_addr }, layout::RSDP_START);
        assert_eq!(params.e820_entries as usize, ram.e820().len());
        let last = params.e820_table[params.e820_entries as usize - 1];
        assert_eq!({ last.addr } + { last.size }, 256 << 20);
    }

    #[test]
    fn header_without_64bit_entry_is_rejected() {
        let old = setup_header {
            version: 0x020b,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        assert!(check_header(&old, Path::new("k")).is_err());
        let no64 = setup_header {
            version: 0x020f,
            ..Default::default()
        };
        assert!(check_header(&no64, Path::new("k")).is_err());
    }

    #[test]
    fn cmdline_limits() {
        let mem = memory::allocate(&RamLayout::new(128 << 20)).unwrap();
        let header = setup_header {
            cmdline_size: 10,
            ..Default::default()
        };
        assert_eq!(write_cmdline(&mem, &header, "console=x").unwrap(), 9);
        let mut back = [0u8; 10];
        mem.read_slice(&mut back, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=x\0");
        assert!(matches!(
            write_cmdline(&mem, &header, "console=xyz"),
            Err(BootError::CmdlineTooLong { len: 11, max: 10 })
        ));
        assert!(matches!(
            write_cmdline(&mem, &header, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
    }

    #[test]
    fn non_bzimage_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("deskd-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("vmlinuz");
        std::fs::write(&fake, vec![0u8; 8192]).unwrap();
        let ram = RamLayout::new(128 << 20);
        let mem = memory::allocate(&ram).unwrap();
        let err = load(&mem, &ram, &fake, None, "", true).unwrap_err();
        assert!(matches!(err, BootError::NotBzImage { .. }), "{err}");
        let err = load(&mem, &ram, &dir.join("missing"), None, "", true).unwrap_err();
        assert!(matches!(err, BootError::OpenKernel { .. }), "{err}");
    }

    /// Debian's cloud kernel (fetched by `tests/rig/kernel cloud`), loaded both ways.
    #[test]
    fn debian_cloud_kernel_loads_both_ways() {
        let Some(kernel) = cached_cloud_kernel() else {
            eprintln!("SKIPPED debian_cloud_kernel_loads_both_ways: no kernel under /var/cache/deskd/kernels (run tests/rig/kernel cloud)");
            return;
        };
        let ram = RamLayout::new(256 << 20);
        let mem = memory::allocate(&ram).unwrap();
        let (entry, format) = load(&mem, &ram, &kernel, None, "console=ttyS0", true).unwrap();
        assert_eq!(format, KernelFormat::HostDecompressed);
        // vmlinux's entry is startup_64 at the kernel's physical start (16 MiB on Debian).
        assert_eq!(entry.rip, 0x100_0000);
        let code: [u8; 16] = mem.read_obj(GuestAddress(entry.rip)).unwrap();
        assert_ne!(code, [0u8; 16]);
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.header }, HEADER_MAGIC);

        let mem = memory::allocate(&ram).unwrap();
        let (entry, format) = load(&mem, &ram, &kernel, None, "console=ttyS0", false).unwrap();
        assert_eq!(format, KernelFormat::BzImage);
        assert_eq!(entry.rip, 0x10_0200);
        // Too little memory for this kernel is a clear error.
        let small = RamLayout::new(32 << 20);
        let mem = memory::allocate(&small).unwrap();
        let err = load(&mem, &small, &kernel, None, "", false).unwrap_err();
        assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
    }

    fn cached_cloud_kernel() -> Option<std::path::PathBuf> {
        let dirs = std::fs::read_dir("/var/cache/deskd/kernels").ok()?;
        dirs.flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("cloud-amd64"))
            .flat_map(|e| {
                std::fs::read_dir(e.path().join("boot"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .map(|f| f.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
    }
}
