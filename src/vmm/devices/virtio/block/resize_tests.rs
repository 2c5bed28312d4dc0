//! Live growth on in-memory guest memory: what the driver reads after it (capacity, the
//! interrupt status bit, the configuration generation), requests to the new sectors, hostile
//! sizes, and what a snapshot keeps.

use std::os::unix::fs::MetadataExt;

use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::vmm::devices::bus::BusDevice;
use crate::vmm::devices::virtio::persist::DeviceState;
use crate::vmm::devices::virtio::testing::*;
use crate::vmm::devices::virtio::{MmioTransport, INTERRUPT_CONFIG_CHANGE};

const SECTORS: u64 = 64;
const HDR: u64 = DATA_BASE;
const STATUS: u64 = DATA_BASE + 0x100;
const DATA: u64 = DATA_BASE + 0x1000;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const CONFIG_GENERATION: u64 = 0xfc;

fn image(sectors: u64) -> TempFile {
    let tmp = TempFile::new().expect("temp file");
    tmp.as_file()
        .set_len(sectors * SECTOR_SIZE)
        .expect("size the image");
    tmp
}

fn block(tmp: &TempFile, read_only: bool) -> Block {
    Block::new(BlockConfig {
        path: tmp.as_path().to_path_buf(),
        read_only,
        serial: "grow".into(),
    })
    .expect("open image")
}

/// The 64-bit `capacity` field as a driver reads it: two 32-bit reads, as Linux's virtio-mmio
/// does.
fn capacity(t: &mut MmioTransport) -> u64 {
    let (mut low, mut high) = ([0u8; 4], [0u8; 4]);
    t.read(0x100, &mut low);
    t.read(0x104, &mut high);
    u64::from(u32::from_le_bytes(low)) | (u64::from(u32::from_le_bytes(high)) << 32)
}

fn interrupts(irq: &EventFd) -> u64 {
    irq.read().unwrap_or(0)
}

/// A request of `kind` on `sector` with one data buffer of 512 bytes; the status byte.
fn request(
    mem: &GuestMemory,
    t: &mut MmioTransport,
    vq: &virtio_queue::mock::MockSplitQueue<'_, GuestMemory>,
    n: u16,
    kind: u32,
    sector: u64,
) -> u8 {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).expect("header");
    mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
    let data_writable = kind == VIRTIO_BLK_T_IN;
    add_chain(
        vq,
        n * 3,
        &[
            (HDR, 16, false),
            (DATA, 512, data_writable),
            (STATUS, 1, true),
        ],
    );
    write_reg(t, 0x50, 0);
    assert!(wait_used(mem, vq, n + 1), "request {n} not completed");
    mem.read_obj(GuestAddress(STATUS)).expect("status")
}

#[test]
fn a_grown_disk_shows_its_new_capacity_raises_a_config_interrupt_and_serves_the_new_sectors() {
    let tmp = image(SECTORS);
    let mem = memory();
    let vq = mock_queue(&mem, 0, 256);
    let dev = block(&tmp, false);
    let handle = dev.handle();
    let (mut t, irq) = activate(Box::new(dev), &mem, &[&vq], 256);
    assert_eq!(capacity(&mut t), SECTORS);
    // Sector 100 is past the end before the growth.
    assert_ne!(
        request(&mem, &mut t, &vq, 0, VIRTIO_BLK_T_IN, 100),
        VIRTIO_BLK_S_OK as u8
    );
    interrupts(&irq);
    let pending = read_reg(&mut t, INTERRUPT_STATUS);
    write_reg(&mut t, INTERRUPT_ACK, pending);
    let generation = read_reg(&mut t, CONFIG_GENERATION);

    let want = 4 * SECTORS * SECTOR_SIZE;
    assert_eq!(grow_live(&mut t, &handle, want).unwrap(), want);
    assert_eq!(capacity(&mut t), 4 * SECTORS);
    assert_eq!(handle.size_bytes(), want);
    assert_ne!(
        read_reg(&mut t, INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE,
        0,
        "InterruptStatus bit 1 (VIRTIO_MMIO_INT_CONFIG)"
    );
    assert!(interrupts(&irq) >= 1, "the interrupt line was not raised");
    assert_ne!(read_reg(&mut t, CONFIG_GENERATION), generation);
    // The file is longer and sparse: nothing was written to grow it.
    let meta = tmp.as_file().metadata().unwrap();
    assert_eq!(meta.len(), want);
    assert!(
        meta.blocks() * 512 < 64 << 10,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    // The driver acknowledges the change.
    write_reg(&mut t, INTERRUPT_ACK, INTERRUPT_CONFIG_CHANGE);
    assert_eq!(
        read_reg(&mut t, INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE,
        0
    );

    // The new sectors read as zeroes and take writes, up to the new end and not past it.
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&mem, &mut t, &vq, 1, VIRTIO_BLK_T_OUT, 4 * SECTORS - 1),
        VIRTIO_BLK_S_OK as u8
    );
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&mem, &mut t, &vq, 2, VIRTIO_BLK_T_IN, 100),
        VIRTIO_BLK_S_OK as u8
    );
    let mut got = [0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0u8; 512], "a grown sector is not zeroes");
    assert_ne!(
        request(&mem, &mut t, &vq, 3, VIRTIO_BLK_T_IN, 4 * SECTORS),
        VIRTIO_BLK_S_OK as u8
    );
}

#[test]
fn hostile_sizes_are_refused_and_change_nothing() {
    let tmp = image(SECTORS);
    let mem = memory();
    let vq = mock_queue(&mem, 0, 256);
    let dev = block(&tmp, false);
    let handle = dev.handle();
    let (mut t, irq) = activate(Box::new(dev), &mem, &[&vq], 256);
    interrupts(&irq);
    let generation = read_reg(&mut t, CONFIG_GENERATION);
    let have = SECTORS * SECTOR_SIZE;
    for (want, expected) in [
        (0, "can only grow"),
        (have - SECTOR_SIZE, "can only grow"),
        (have + 1, "multiple of 512"),
        (u64::MAX, "multiple of 512"),
        (u64::MAX - 511, "16 TiB"),
        (resize::MAX_DISK_BYTES + SECTOR_SIZE, "16 TiB"),
    ] {
        let err = grow_live(&mut t, &handle, want).unwrap_err();
        assert!(err.to_string().contains(expected), "{want}: {err}");
    }
    // The same size again is not an error, and not a change either.
    assert_eq!(grow_live(&mut t, &handle, have).unwrap(), have);
    assert_eq!(capacity(&mut t), SECTORS);
    assert_eq!(tmp.as_file().metadata().unwrap().len(), have);
    assert_eq!(read_reg(&mut t, CONFIG_GENERATION), generation);
    assert_eq!(
        read_reg(&mut t, INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE,
        0
    );
    assert_eq!(interrupts(&irq), 0);

    // A read-only disk never grows.
    let ro = block(&tmp, true);
    let ro_handle = ro.handle();
    let (mut ro_t, _irq) = activate(Box::new(ro), &mem, &[&mock_queue(&mem, 1, 256)], 256);
    let err = grow_live(&mut ro_t, &ro_handle, 2 * have).unwrap_err();
    assert!(matches!(err, GrowError::ReadOnly), "{err}");
    assert_eq!(capacity(&mut ro_t), SECTORS);
    assert_eq!(tmp.as_file().metadata().unwrap().len(), have);
}

#[test]
fn a_driver_that_is_not_up_reads_the_new_size_at_probe_without_an_interrupt() {
    let tmp = image(SECTORS);
    let mem = memory();
    let dev = block(&tmp, false);
    let handle = dev.handle();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq.try_clone().unwrap()).unwrap();
    grow_live(&mut t, &handle, 2 * SECTORS * SECTOR_SIZE).unwrap();
    assert_eq!(read_reg(&mut t, INTERRUPT_STATUS), 0);
    assert_eq!(interrupts(&irq), 0);
    assert_eq!(capacity(&mut t), 2 * SECTORS);
}

#[test]
fn a_snapshot_after_growth_keeps_the_grown_disk_and_restores_onto_it() {
    let tmp = image(SECTORS);
    let mem = memory();
    let vq = mock_queue(&mem, 0, 256);
    let dev = block(&tmp, false);
    let handle = dev.handle();
    let (mut t, _irq) = activate(Box::new(dev), &mem, &[&vq], 256);
    let grown = 3 * SECTORS * SECTOR_SIZE;
    grow_live(&mut t, &handle, grown).unwrap();
    // A smaller copy of the disk (as it was before the growth), for the refusal below.
    let before = image(SECTORS);
    // The VMM releases its lock on the image before a restore opens it again.
    let (mut restored, saved) = snapshot_restore(t, || Box::new(block(&tmp, false)), &mem);
    match &saved.device {
        DeviceState::Block(state) => assert_eq!(state.capacity, 3 * SECTORS),
        other => panic!("not a disk: {other:?}"),
    }
    assert_eq!(capacity(&mut restored), 3 * SECTORS);
    // The restored guest keeps using the grown part.
    mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(
            &mem,
            &mut restored,
            &vq,
            0,
            VIRTIO_BLK_T_OUT,
            3 * SECTORS - 1
        ),
        VIRTIO_BLK_S_OK as u8
    );
    drop(restored);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut old = MmioTransport::new(Box::new(block(&before, false)), mem.clone(), irq).unwrap();
    let err = old.restore(&saved).unwrap_err();
    assert!(err.to_string().contains("disk size"), "{err}");
}
