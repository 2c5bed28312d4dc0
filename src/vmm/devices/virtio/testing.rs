//! Test driver: brings a device up through the real MMIO transport on in-memory guest memory,
//! with queues laid out by virtio-queue's mock driver. No KVM involved.

use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::transport::MmioTransport;
use super::{GuestMemory, VirtioDevice};
use crate::vmm::devices::bus::BusDevice;

pub const MEM_SIZE: usize = 0x100_0000; // 16 MiB
/// Data buffers of tests start here, above the queues.
pub const DATA_BASE: u64 = 0x10_0000;

pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test guest memory")
}

/// Queue `index` of a test device lives at `index * 64 KiB`.
pub fn mock_queue(mem: &GuestMemory, index: u64, size: u16) -> MockSplitQueue<'_, GuestMemory> {
    MockSplitQueue::create(mem, GuestAddress(index * 0x1_0000), size)
}

/// Where the tests put a queue's used ring. Not `MockSplitQueue::used_addr()`: the mock measures
/// the available ring in elements instead of bytes, so its used ring overlaps the available ring
/// (and its `used_event` field) for any queue size above a handful.
pub fn used_ring(vq: &MockSplitQueue<'_, GuestMemory>) -> GuestAddress {
    vq.desc_table_addr().unchecked_add(0x8000)
}

pub fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

pub fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Runs the driver side of device initialisation (virtio 1.2 3.1.1) up to FEATURES_OK, accepting
/// every offered feature.
pub fn negotiate(t: &mut MmioTransport) {
    negotiate_masked(t, u64::MAX);
}

/// [`negotiate`], accepting only the offered features that are also in `mask`.
pub fn negotiate_masked(t: &mut MmioTransport, mask: u64) {
    write_reg(t, 0x70, 1);
    write_reg(t, 0x70, 3);
    for sel in 0..2 {
        write_reg(t, 0x14, sel);
        let offered = read_reg(t, 0x10) & (mask >> (32 * sel)) as u32;
        write_reg(t, 0x24, sel);
        write_reg(t, 0x20, offered);
    }
    write_reg(t, 0x70, 0xb);
    assert_eq!(read_reg(t, 0x70), 0xb, "FEATURES_OK refused");
}

/// Programs queue `index` from a mock queue and marks it ready.
pub fn setup_queue(
    t: &mut MmioTransport,
    index: u32,
    vq: &MockSplitQueue<'_, GuestMemory>,
    size: u16,
) {
    write_reg(t, 0x30, index);
    write_reg(t, 0x38, u32::from(size));
    let split = |a: GuestAddress| (a.raw_value() as u32, (a.raw_value() >> 32) as u32);
    let (lo, hi) = split(vq.desc_table_addr());
    write_reg(t, 0x80, lo);
    write_reg(t, 0x84, hi);
    let (lo, hi) = split(vq.avail_addr());
    write_reg(t, 0x90, lo);
    write_reg(t, 0x94, hi);
    let (lo, hi) = split(used_ring(vq));
    write_reg(t, 0xa0, lo);
    write_reg(t, 0xa4, hi);
    write_reg(t, 0x44, 1);
}

/// A transport for `device` taken all the way to DRIVER_OK on `queues`.
pub fn activate(
    device: Box<dyn VirtioDevice>,
    mem: &GuestMemory,
    queues: &[&MockSplitQueue<'_, GuestMemory>],
    size: u16,
) -> (MmioTransport, EventFd) {
    activate_masked(device, mem, queues, size, u64::MAX)
}

/// [`activate`], accepting only the offered features that are also in `mask`.
pub fn activate_masked(
    device: Box<dyn VirtioDevice>,
    mem: &GuestMemory,
    queues: &[&MockSplitQueue<'_, GuestMemory>],
    size: u16,
    mask: u64,
) -> (MmioTransport, EventFd) {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(device, mem.clone(), irq.try_clone().expect("clone"))
        .expect("transport");
    negotiate_masked(&mut t, mask);
    for (i, vq) in queues.iter().enumerate() {
        setup_queue(&mut t, i as u32, vq, size);
    }
    write_reg(&mut t, 0x70, 0xf);
    assert_eq!(read_reg(&mut t, 0x70), 0xf, "DRIVER_OK refused");
    (t, irq)
}

/// One buffer of a test chain: (guest address, length, device-writable).
pub type TestBuf = (u64, u32, bool);

/// Writes a chain at descriptor `first` onward and makes it available. Returns the next free index.
pub fn add_chain(vq: &MockSplitQueue<'_, GuestMemory>, first: u16, bufs: &[TestBuf]) -> u16 {
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            let last = i + 1 == bufs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
        })
        .collect();
    vq.add_desc_chains(&descs, first).expect("mock chain");
    first + bufs.len() as u16
}

/// Waits (up to 5 s) until the device has returned `count` chains; the worker runs on its own
/// thread, so tests poll the used index.
pub fn wait_used(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>, count: u16) -> bool {
    wait_used_within(mem, vq, count, Duration::from_secs(5))
}

/// True once the device has used `count` chains of `vq`, false after `limit`.
pub fn wait_used_within(
    mem: &GuestMemory,
    vq: &MockSplitQueue<'_, GuestMemory>,
    count: u16,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if used_idx(mem, vq) >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

pub fn used_idx(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    mem.read_obj::<u16>(used_ring(vq).unchecked_add(2))
        .expect("used idx")
}

/// The (descriptor id, length) of used element `i`.
pub fn used_elem(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>, i: u16) -> (u32, u32) {
    let at = used_ring(vq).unchecked_add(4 + 8 * u64::from(i));
    let id: u32 = mem.read_obj(at).expect("used id");
    let len: u32 = mem.read_obj(at.unchecked_add(4)).expect("used len");
    (id, len)
}

/// Waits (up to 5 s) until the transport reports DEVICE_NEEDS_RESET.
pub fn wait_needs_reset(t: &mut MmioTransport) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if read_reg(t, 0x70) & 0x40 != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Snapshots `t` (pause, save, through the snapshot encoding and back), drops it as the old
/// process would end, and restores a transport for the device `device` builds from that state,
/// as a restored VMM would. Returns it and the saved state.
pub fn snapshot_restore(
    mut t: MmioTransport,
    device: impl FnOnce() -> Box<dyn VirtioDevice>,
    mem: &GuestMemory,
) -> (MmioTransport, super::transport::persist::TransportState) {
    t.pause();
    let saved = t.save();
    drop(t);
    let bytes = postcard::to_stdvec(&saved).expect("encode the transport state");
    let decoded: super::transport::persist::TransportState =
        postcard::from_bytes(&bytes).expect("decode the transport state");
    assert_eq!(decoded, saved);
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut restored = MmioTransport::new(device(), mem.clone(), irq).expect("transport");
    restored.restore(&decoded).expect("restore the transport");
    (restored, saved)
}
