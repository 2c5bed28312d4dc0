//! Fuzz inputs made into guests, for the devices' fuzz targets (each device's `fuzz.rs`): a byte
//! string read as queues (descriptor tables, available rings) and the data they point at, in
//! in-memory guest memory, the way a hostile driver would lay them out. Targets run on stable
//! Rust with bolero's random engine under `cargo test` (see `make fuzz` and README "Fuzzing").

use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMemory, Interrupt};

/// Guest memory of a fuzzed guest.
pub const MEM_SIZE: usize = 0x4_0000;
/// Each queue's structures take this much, queue `i` at `i * QUEUE_SPAN`.
const QUEUE_SPAN: u64 = 0x3000;
/// Buffers mostly point into `DATA..MEM_SIZE`.
pub const DATA: u64 = 0x1_0000;
const DATA_LEN: u64 = MEM_SIZE as u64 - DATA;

/// Time each target runs in a plain `cargo test` (`make fuzz` and `BOLERO_RANDOM_TEST_TIME_MS`
/// run longer).
pub const TEST_TIME: Duration = Duration::from_secs(1);

/// Reads a fuzz input front to back; past its end every number is 0, so any input is a guest.
pub struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, at: 0 }
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at = end;
        &self.data[start..end]
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// What is left of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }
}

pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("fuzz guest memory")
}

pub fn interrupt() -> Interrupt {
    Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))
}

/// A buffer address: inside the data area mostly, sometimes at its edge or anywhere at all.
pub fn addr(input: &mut Input<'_>) -> u64 {
    match input.u8() % 16 {
        0 => input.u64(),
        1 => MEM_SIZE as u64 - u64::from(input.u8()),
        _ => DATA + u64::from(input.u32()) % DATA_LEN,
    }
}

/// A buffer length: small mostly, sometimes 0, huge or anything.
pub fn len(input: &mut Input<'_>) -> u32 {
    match input.u8() % 16 {
        0 => input.u32(),
        1 => 0,
        2 => u32::from(input.u8()),
        _ => u32::from(input.u16()) % 0x2000,
    }
}

/// Queue `index` of a fuzzed guest: its descriptor table and available ring written from
/// `input` into `mem`, the queue set up as a driver would (or nearly: sizes and indices are
/// sometimes out of range), and ready.
pub fn queue(mem: &GuestMemory, input: &mut Input<'_>, index: u64) -> Queue {
    let base = index * QUEUE_SPAN;
    let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
    let size: u16 = match input.u8() % 8 {
        0 => 1,
        1 => 256,
        2 => 3, // not a power of two: the queue must refuse it
        _ => 16,
    };
    let entries = u64::from(size.min(256));
    // Half the guests are tidy (each descriptor its own buffer, chains only to the next one, so
    // most chains are valid and reach the device's own rules); the others are wild.
    let tidy = input.u8().is_multiple_of(2);
    for i in 0..entries {
        let (addr, len, flags, next) = if tidy {
            let flags = u16::from(input.u8() & 0x3);
            let next = (i as u16 + 1) % size.max(1);
            let addr = DATA + (i % (DATA_LEN / 0x1000)) * 0x1000;
            (addr, u32::from(input.u16()) % 0x1001, flags, next)
        } else {
            let mut flags = u16::from(input.u8() & 0x7);
            // Indirect tables, rarer, so that plain chains get served too.
            if flags & 4 != 0 && !input.u8().is_multiple_of(4) {
                flags &= !4;
            }
            let next = u16::from(input.u8()) % (size.saturating_add(2));
            (addr(input), len(input), flags, next)
        };
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(desc + 16 * i));
    }
    // Within the ring mostly (a driver can only have `size` chains out), else anything.
    let idx = match input.u8() % 8 {
        0 => input.u16(),
        1 => u16::from(input.u8()) % (size.saturating_mul(2).saturating_add(1)),
        _ => 1 + u16::from(input.u8()) % size.max(1),
    };
    let _ = mem.write_obj(0u16, GuestAddress(avail));
    let _ = mem.write_obj(idx, GuestAddress(avail + 2));
    for i in 0..entries {
        let head = u16::from(input.u8()) % (size.saturating_add(1));
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * i));
    }
    // used_event (EVENT_IDX) after the ring.
    let _ = mem.write_obj(input.u16(), GuestAddress(avail + 4 + 2 * entries));
    let mut q = Queue::new(256).expect("queue of 256");
    q.set_size(size);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(desc);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(avail);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(used);
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(input.u8() & 1 == 1);
    q.set_ready(true);
    q
}

/// Copies what is left of `input` into the data area (the buffers' contents).
pub fn fill_data(mem: &GuestMemory, input: &mut Input<'_>) {
    let rest = input.rest();
    let n = rest.len().min(DATA_LEN as usize);
    let _ = mem.write_slice(&rest[..n], GuestAddress(DATA));
}

/// Writes `bytes` at the start of the buffer of descriptor `i` of queue `index`, if that buffer
/// lies in memory: so a target can make a header a device reads plausible.
pub fn put_in_buffer(mem: &GuestMemory, index: u64, i: u64, bytes: &[u8]) {
    let at = GuestAddress(index * QUEUE_SPAN + 16 * i);
    if let Ok(addr) = mem.read_obj::<u64>(at) {
        let _ = mem.write_slice(bytes, GuestAddress(addr));
    }
}

/// How far a target's inputs got, printed when it ends: a target whose inputs never reach the
/// code under test is no test at all, and this says so.
#[derive(Debug, Default)]
pub struct Reach {
    inputs: std::sync::atomic::AtomicU64,
    deep: std::sync::atomic::AtomicU64,
}

impl Reach {
    pub fn input(&self) {
        self.inputs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The input reached what the target is about (a chain served, a connection open, ...).
    pub fn deep(&self) {
        self.deep.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn report(&self, target: &str, what: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let (n, d) = (self.inputs.load(Relaxed), self.deep.load(Relaxed));
        eprintln!("{target}: {n} inputs, {d} {what}");
        assert!(n > 0, "{target} ran no input");
    }
}
