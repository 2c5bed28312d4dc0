//! A hostile guest: random descriptor tables, rings, request headers and register writes thrown at
//! every device through the real transport. Nothing may panic (worker threads included), and a
//! driver reset must always come back, i.e. no worker is stuck.

use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

use super::block::{Block, BlockConfig};
use super::net::Net;
use super::rng::Rng;
use super::testing::*;
use super::vsock::{Vsock, VsockConfig};
use super::worker::WORKER_PANICS;
use super::{GuestMemory, VirtioDevice};
use crate::vmm::devices::bus::BusDevice;

/// xorshift64*: deterministic, so a failing seed can be replayed.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_addr(r: &mut Prng) -> u64 {
    match r.below(24) {
        0 => MEM_SIZE as u64 - r.below(64),
        1 => u64::MAX - r.below(64),
        2 => r.next(),
        _ => DATA_BASE + r.below(0x8_0000),
    }
}

fn random_len(r: &mut Prng) -> u32 {
    match r.below(20) {
        0..=5 => r.pick(&[0, 1, 8, 16, 44, 45, 512, 513, 4096]),
        6 => u32::MAX - r.below(16) as u32,
        7 => r.next() as u32,
        _ => r.below(0x2000) as u32,
    }
}

/// Fills the queue's descriptor table and available ring with garbage, and the data area with
/// bytes that look like requests often enough to get past the first checks.
fn scribble(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>, r: &mut Prng, cid: u64) {
    for i in 0..256u64 {
        // NEXT, WRITE and INDIRECT in any combination, indirect rarer so that chains get served.
        let mut flags = 0u16;
        if r.below(3) == 0 {
            flags |= 1;
        }
        if r.below(2) == 0 {
            flags |= 2;
        }
        if r.below(16) == 0 {
            flags |= 4;
        }
        let next = if r.below(4) == 0 {
            r.next() as u16
        } else {
            r.below(256) as u16
        };
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&random_addr(r).to_le_bytes());
        raw[8..12].copy_from_slice(&random_len(r).to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, vq.desc_table_addr().unchecked_add(16 * i))
            .expect("desc");
    }
    for i in 0..256u64 {
        let head = if r.below(8) == 0 {
            r.next() as u16
        } else {
            r.below(256) as u16
        };
        mem.write_obj(head, vq.avail_addr().unchecked_add(4 + 2 * i))
            .expect("ring");
    }
    let idx = if r.below(5) == 0 {
        r.next() as u16
    } else {
        r.below(64) as u16
    };
    mem.write_obj(idx, vq.avail_addr().unchecked_add(2))
        .expect("avail idx");
    // Request-like data: a block header or a vsock header every 64 bytes.
    for slot in 0..(0x8_0000 / 64) {
        let at = GuestAddress(DATA_BASE + 64 * slot);
        let mut b = [0u8; 64];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&r.next().to_le_bytes()[..chunk.len()]);
        }
        if r.below(2) == 0 && cid == 0 {
            // virtio-blk: type, reserved, sector near the 64-sector disk.
            b[..4].copy_from_slice(&(r.pick(&[0u32, 1, 4, 8, 11, 13, 99])).to_le_bytes());
            b[8..16].copy_from_slice(&r.below(80).to_le_bytes());
        } else if r.below(2) == 0 {
            // virtio-vsock: our CID as source, host as destination, stream, any op, short length.
            b[0..8].copy_from_slice(&cid.to_le_bytes());
            b[8..16].copy_from_slice(&2u64.to_le_bytes());
            b[24..28].copy_from_slice(&(r.below(100) as u32).to_le_bytes());
            b[28..30].copy_from_slice(&1u16.to_le_bytes());
            b[30..32].copy_from_slice(&(r.below(9) as u16).to_le_bytes());
        }
        mem.write_slice(&b, at).expect("data");
    }
}

fn abuse(make: &dyn Fn() -> Box<dyn VirtioDevice>, queues: usize, seeds: u64, cid: u64) {
    let (mut served, mut broken) = (0, 0);
    for seed in 1..=seeds {
        let mut r = Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mem = memory();
        let vqs: Vec<_> = (0..queues)
            .map(|i| mock_queue(&mem, i as u64, 256))
            .collect();
        let refs: Vec<_> = vqs.iter().collect();
        let (mut t, _irq) = activate(make(), &mem, &refs, 256);
        for vq in &vqs {
            scribble(&mem, vq, &mut r, cid);
        }
        for q in 0..queues {
            write_reg(&mut t, 0x50, q as u32);
        }
        std::thread::sleep(Duration::from_millis(15));
        if vqs.iter().any(|vq| used_idx(&mem, vq) > 0) {
            served += 1;
        }
        if read_reg(&mut t, 0x70) & 0x40 != 0 {
            broken += 1;
        }
        // Register garbage while the worker may still be busy.
        for _ in 0..20 {
            let offset = r.below(0x140);
            let len = r.pick(&[1usize, 2, 4, 8]);
            let bytes = r.next().to_le_bytes();
            if offset == 0x70 && r.below(2) == 0 {
                continue; // leave status writes to the reset below most of the time
            }
            t.write(offset, &bytes[..len]);
            let mut out = [0u8; 8];
            t.read(r.below(0x1100), &mut out[..len]);
        }
        // A reset must return: it joins the worker, so a stuck worker hangs the test here.
        write_reg(&mut t, 0x70, 0);
        assert_eq!(read_reg(&mut t, 0x70), 0, "seed {seed}: reset");
    }
    assert_eq!(
        WORKER_PANICS.load(Ordering::SeqCst),
        0,
        "a worker thread panicked"
    );
    // Both outcomes must occur, or the garbage is not reaching the interesting paths.
    assert!(
        served > 0 && broken > 0,
        "served {served}, broken {broken} of {seeds}"
    );
    eprintln!("hostile guest: {seeds} rounds, {served} with chains served, {broken} marked broken");
}

#[test]
fn hostile_guest_cannot_break_block() {
    let tmp = TempFile::new().expect("temp");
    tmp.as_file().set_len(64 * 512).expect("size");
    let path = tmp.as_path().to_path_buf();
    let make = move || -> Box<dyn VirtioDevice> {
        Box::new(
            Block::new(BlockConfig {
                path: path.clone(),
                read_only: false,
                serial: "fuzz".into(),
            })
            .expect("block"),
        )
    };
    abuse(&make, 1, 40, 0);
}

#[test]
fn hostile_guest_cannot_break_rng() {
    abuse(&|| Box::new(Rng::new()), 1, 40, 0);
}

#[test]
fn hostile_guest_cannot_break_net() {
    use super::net::rate_limiter::MonotonicClock;
    use std::sync::{Arc, Mutex};
    // The network ends stay open (and unread) for the whole run; each sends a few frames first
    // so the receive path has work: plain, oversized for small buffers, a runt, a bad header.
    let peers = Mutex::new(Vec::new());
    let make = move || -> Box<dyn VirtioDevice> {
        let (backend, peer) = super::net::tests::pair();
        for (len, flags) in [(60usize, 0u8), (3000, 0), (2, 0), (100, 1), (1500, 0)] {
            let mut f = vec![0u8; 12 + len];
            f[0] = flags;
            let _ = peer.send(&f[..len.max(2)]);
        }
        peers.lock().unwrap().push(peer);
        Box::new(
            Net::with_backend(
                super::net::tests::mac(),
                backend,
                None,
                Arc::new(MonotonicClock::new()),
            )
            .expect("net"),
        )
    };
    abuse(&make, 2, 40, 0);
}

#[test]
fn hostile_guest_cannot_break_vsock() {
    let dir = TempDir::new_with_prefix("/tmp/deskd-vsock-fuzz-").expect("dir");
    let path = dir.as_path().join("v.sock");
    let make = move || -> Box<dyn VirtioDevice> {
        Box::new(
            Vsock::new(VsockConfig {
                guest_cid: 3,
                uds_path: path.clone(),
            })
            .expect("vsock"),
        )
    };
    abuse(&make, 3, 40, 3);
}
