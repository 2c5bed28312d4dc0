use std::io::{Read, Seek, SeekFrom, Write};

use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::vmm::devices::virtio::testing::*;
use crate::vmm::devices::virtio::MmioTransport;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

const SECTORS: u64 = 64;
const HDR: u64 = DATA_BASE;
const DATA: u64 = DATA_BASE + 0x1000;
const STATUS: u64 = DATA_BASE + 0x100;

/// An image of 64 sectors where byte i of sector s is (s + i) mod 251.
fn image() -> TempFile {
    let tmp = TempFile::new().expect("temp file");
    let mut bytes = Vec::new();
    for s in 0..SECTORS {
        for i in 0..SECTOR_SIZE {
            bytes.push(((s + i) % 251) as u8);
        }
    }
    tmp.as_file().write_all(&bytes).expect("fill image");
    tmp
}

fn block(tmp: &TempFile, read_only: bool) -> Block {
    Block::new(BlockConfig {
        path: tmp.as_path().to_path_buf(),
        read_only,
        serial: "deskd-disk-0".into(),
    })
    .expect("open image")
}

fn header(mem: &GuestMemory, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).expect("header");
    mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
}

fn status(mem: &GuestMemory) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(STATUS)).expect("status"))
}

struct Rig<'a> {
    mem: &'a GuestMemory,
    vq: virtio_queue::mock::MockSplitQueue<'a, GuestMemory>,
    t: MmioTransport,
    next_desc: u16,
    done: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemory, dev: Block) -> Self {
        let vq = mock_queue(mem, 0, 256);
        let (t, _irq) = activate(Box::new(dev), mem, &[&vq], 256);
        Rig {
            mem,
            vq,
            t,
            next_desc: 0,
            done: 0,
        }
    }

    /// Submits one chain and waits for it; returns its used length.
    fn submit(&mut self, bufs: &[TestBuf]) -> u32 {
        self.next_desc = add_chain(&self.vq, self.next_desc, bufs);
        write_reg(&mut self.t, 0x50, 0);
        self.done += 1;
        assert!(
            wait_used(self.mem, &self.vq, self.done),
            "request not completed"
        );
        used_elem(self.mem, &self.vq, self.done - 1).1
    }

    fn request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u32, u32) {
        header(self.mem, kind, sector);
        let mut bufs = vec![(HDR, 16, false)];
        if let Some((len, writable)) = data {
            bufs.push((DATA, len, writable));
        }
        bufs.push((STATUS, 1, true));
        let used = self.submit(&bufs);
        (status(self.mem), used)
    }
}

#[test]
fn read_write_round_trip_through_the_file() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));

    let (st, used) = rig.request(VIRTIO_BLK_T_IN, 5, Some((1024, true)));
    assert_eq!((st, used), (VIRTIO_BLK_S_OK, 1025));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).expect("read");
    let want: Vec<u8> = (0..1024u64)
        .map(|i| ((5 + i / 512 + i % 512) % 251) as u8)
        .collect();
    assert_eq!(got, want);

    mem.write_slice(&[0xab; 512], GuestAddress(DATA))
        .expect("data");
    let (st, used) = rig.request(VIRTIO_BLK_T_OUT, 63, Some((512, false)));
    assert_eq!((st, used), (VIRTIO_BLK_S_OK, 1));
    let mut file = tmp.as_file();
    file.seek(SeekFrom::Start(63 * 512)).expect("seek");
    let mut on_disk = vec![0u8; 512];
    file.read_exact(&mut on_disk).expect("read back");
    assert_eq!(on_disk, vec![0xab; 512]);

    let (st, _) = rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

#[test]
fn get_id_returns_the_serial() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    let (st, used) = rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, true)));
    assert_eq!((st, used), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    assert_eq!(&id[..12], b"deskd-disk-0");
    assert!(id[12..].iter().all(|&b| b == 0));
}

#[test]
fn capacity_and_features_are_advertised() {
    let tmp = image();
    let mem = memory();
    let vq = mock_queue(&mem, 0, 256);
    let (mut t, _irq) = activate(Box::new(block(&tmp, true)), &mem, &[&vq], 256);
    let mut cap = [0u8; 8];
    crate::vmm::devices::bus::BusDevice::read(&mut t, 0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    write_reg(&mut t, 0x14, 0);
    let low = read_reg(&mut t, 0x10);
    assert_ne!(low & (1 << 5), 0, "VIRTIO_BLK_F_RO");
    assert_ne!(low & (1 << 9), 0, "VIRTIO_BLK_F_FLUSH");
    write_reg(&mut t, 0x14, 1);
    assert_ne!(read_reg(&mut t, 0x10) & 1, 0, "VIRTIO_F_VERSION_1");
    assert_eq!(block(&tmp, false).features() & (1 << 5), 0);
}

#[test]
fn write_to_read_only_disk_fails_with_ioerr() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, true));
    mem.write_slice(&[0xcd; 512], GuestAddress(DATA))
        .expect("data");
    let (st, used) = rig.request(VIRTIO_BLK_T_OUT, 0, Some((512, false)));
    assert_eq!((st, used), (VIRTIO_BLK_S_IOERR, 1));
    let mut first = [0u8; 4];
    tmp.as_file().seek(SeekFrom::Start(0)).expect("seek");
    tmp.as_file().read_exact(&mut first).expect("read");
    assert_eq!(first, [0, 1, 2, 3], "image unchanged");
    // Reads still work.
    let (st, _) = rig.request(VIRTIO_BLK_T_IN, 0, Some((512, true)));
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

#[test]
fn out_of_range_and_malformed_requests_get_error_status() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    // One sector past the end, and a sector number that overflows.
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 64, Some((512, true))).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 63, Some((1024, true))).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, u64::MAX, Some((512, false)))
            .0,
        VIRTIO_BLK_S_IOERR
    );
    // Length not a multiple of 512.
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 0, Some((100, true))).0,
        VIRTIO_BLK_S_IOERR
    );
    // Unknown request type.
    assert_eq!(rig.request(99, 0, None).0, VIRTIO_BLK_S_UNSUPP);
    // Header shorter than 16 bytes.
    mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
    rig.submit(&[(HDR, 8, false), (STATUS, 1, true)]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    // The device still works afterwards.
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 0, Some((512, true))).0,
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn chain_outside_guest_memory_marks_device_broken() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    rig.next_desc = add_chain(
        &rig.vq,
        0,
        &[
            (HDR, 16, false),
            (MEM_SIZE as u64 + 0x1000, 512, true),
            (STATUS, 1, true),
        ],
    );
    write_reg(&mut rig.t, 0x50, 0);
    assert!(wait_needs_reset(&mut rig.t));
    assert_eq!(status(&mem), 0xff, "nothing written");
}

#[test]
fn descriptor_loop_marks_device_broken() {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let looped = [
        crate::vmm::devices::virtio::chain::tests::desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        crate::vmm::devices::virtio::chain::tests::desc(DATA, 512, VRING_DESC_F_NEXT, 0),
    ];
    rig.vq.add_desc_chains(&looped, 0).expect("chain");
    write_reg(&mut rig.t, 0x50, 0);
    assert!(wait_needs_reset(&mut rig.t));
    // Reset and bring it up again: the device serves requests after a reset.
    write_reg(&mut rig.t, 0x70, 0);
    let vq2 = mock_queue(&mem, 2, 256);
    negotiate(&mut rig.t);
    setup_queue(&mut rig.t, 0, &vq2, 256);
    write_reg(&mut rig.t, 0x70, 0xf);
    header(&mem, VIRTIO_BLK_T_IN, 1);
    add_chain(
        &vq2,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    write_reg(&mut rig.t, 0x50, 0);
    assert!(wait_used(&mem, &vq2, 1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn avail_index_far_ahead_marks_device_broken() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    // avail.idx claims 1000 new entries in a 256-entry queue.
    mem.write_obj(1000u16, rig.vq.avail_addr().unchecked_add(2))
        .expect("idx");
    write_reg(&mut rig.t, 0x50, 0);
    assert!(wait_needs_reset(&mut rig.t));
}

#[test]
fn open_errors_are_clear() {
    let err = Block::new(BlockConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: false,
        serial: String::new(),
    })
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    let empty = TempFile::new().expect("temp");
    let err = Block::new(BlockConfig {
        path: empty.as_path().to_path_buf(),
        read_only: true,
        serial: String::new(),
    })
    .unwrap_err();
    assert!(matches!(err, BlockError::TooSmall { .. }));
}

const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

fn segments(mem: &GuestMemory, segs: &[(u64, u32, u32)]) -> u32 {
    let mut raw = Vec::new();
    for &(sector, count, flags) in segs {
        raw.extend_from_slice(&sector.to_le_bytes());
        raw.extend_from_slice(&count.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
    }
    mem.write_slice(&raw, GuestAddress(DATA)).expect("segments");
    raw.len() as u32
}

fn sectors_of(tmp: &TempFile, first: u64, count: u64) -> Vec<u8> {
    let mut buf = vec![0u8; (count * 512) as usize];
    let mut f = tmp.as_file();
    f.seek(SeekFrom::Start(first * 512)).expect("seek");
    f.read_exact(&mut buf).expect("read");
    buf
}

fn pattern(first: u64, count: u64) -> Vec<u8> {
    (first..first + count)
        .flat_map(|s| (0..512u64).map(move |i| ((s + i) % 251) as u8))
        .collect()
}

#[test]
fn discard_punches_a_hole_that_reads_back_as_zeroes() {
    use std::os::unix::fs::MetadataExt;
    let tmp = image();
    let blocks_before = tmp.as_file().metadata().expect("meta").blocks();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    let len = segments(&mem, &[(8, 8, 0)]);
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((len, false))).0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(sectors_of(&tmp, 8, 8), vec![0u8; 8 * 512]);
    assert_eq!(
        sectors_of(&tmp, 7, 1),
        pattern(7, 1),
        "neighbours untouched"
    );
    assert_eq!(sectors_of(&tmp, 16, 1), pattern(16, 1));
    let blocks_after = tmp.as_file().metadata().expect("meta").blocks();
    assert!(
        blocks_after < blocks_before,
        "space given back: {blocks_before} -> {blocks_after}"
    );
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    let len = segments(&mem, &[(20, 3, 0), (30, 2, 1)]);
    assert_eq!(
        rig.request(T_WRITE_ZEROES, 0, Some((len, false))).0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(sectors_of(&tmp, 20, 3), vec![0u8; 3 * 512]);
    assert_eq!(sectors_of(&tmp, 30, 2), vec![0u8; 2 * 512]);
    assert_eq!(sectors_of(&tmp, 19, 1), pattern(19, 1));
    assert_eq!(sectors_of(&tmp, 23, 7), pattern(23, 7));
    assert_eq!(sectors_of(&tmp, 32, 1), pattern(32, 1));
}

#[test]
fn bad_discard_requests_change_nothing() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    // The first segment is fine, the second runs past the end: nothing may be applied.
    let len = segments(&mem, &[(0, 4, 0), (62, 4, 0)]);
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((len, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    let len = segments(&mem, &[(0, 4, 0), (u64::MAX, 2, 0)]);
    assert_eq!(
        rig.request(T_WRITE_ZEROES, 0, Some((len, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    // The unmap flag is for write-zeroes only; unknown flags are unsupported.
    let len = segments(&mem, &[(0, 4, 1)]);
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((len, false))).0,
        VIRTIO_BLK_S_UNSUPP
    );
    let len = segments(&mem, &[(0, 4, 2)]);
    assert_eq!(
        rig.request(T_WRITE_ZEROES, 0, Some((len, false))).0,
        VIRTIO_BLK_S_UNSUPP
    );
    // Payloads that are not whole segments, too many segments, a huge segment.
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((15, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    let many: Vec<(u64, u32, u32)> = (0..17).map(|i| (i, 1, 0)).collect();
    let len = segments(&mem, &many);
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((len, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    let len = segments(&mem, &[(0, u32::MAX, 0)]);
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((len, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(sectors_of(&tmp, 0, 64), pattern(0, 64), "image unchanged");
}

#[test]
fn read_only_disk_refuses_discard_and_does_not_offer_it() {
    let tmp = image();
    assert_eq!(block(&tmp, true).features() & (3 << 13), 0);
    let rw = block(&tmp, false);
    assert_eq!(
        rw.features() & (3 << 13),
        3 << 13,
        "DISCARD and WRITE_ZEROES offered"
    );
    let mut max_discard = [0u8; 4];
    rw.read_config(36, &mut max_discard);
    assert_eq!(u32::from_le_bytes(max_discard), 1 << 16);
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, true));
    let len = segments(&mem, &[(0, 4, 0)]);
    assert_eq!(
        rig.request(T_DISCARD, 0, Some((len, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        rig.request(T_WRITE_ZEROES, 0, Some((len, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(sectors_of(&tmp, 0, 4), pattern(0, 4));
}

#[test]
fn a_writable_image_opens_in_one_vmm_only() {
    let tmp = image();
    let config = |read_only| BlockConfig {
        path: tmp.as_path().to_path_buf(),
        read_only,
        serial: "x".into(),
    };
    let first = Block::new(config(false)).unwrap();
    let err = Block::new(config(false)).unwrap_err();
    assert!(matches!(err, BlockError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use by another VMM"), "{err}");
    // A read-only user does not take the lock.
    drop(Block::new(config(true)).unwrap());
    // Once the first VMM's device is gone, the disk may be opened again.
    drop(first);
    drop(Block::new(config(false)).unwrap());
}

#[test]
fn a_restored_disk_continues_the_queue_where_it_stopped() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    mem.write_slice(&[0xab; 512], GuestAddress(DATA))
        .expect("data");
    let (st, _) = rig.request(VIRTIO_BLK_T_OUT, 63, Some((512, false)));
    assert_eq!(st, VIRTIO_BLK_S_OK);

    // Paused: a request the driver makes available (and notifies) is not served.
    rig.t.pause();
    mem.write_slice(&[0u8; 512], GuestAddress(DATA))
        .expect("clear");
    header(&mem, VIRTIO_BLK_T_IN, 63);
    rig.next_desc = add_chain(
        &rig.vq,
        rig.next_desc,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    write_reg(&mut rig.t, 0x50, 0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        used_idx(&mem, &rig.vq),
        1,
        "a paused device served a request"
    );

    // Saved mid-queue: one chain used, the pending one not taken yet.
    let (t, saved) = snapshot_restore(rig.t, || Box::new(block(&tmp, false)), &mem);
    rig.t = t;
    assert!(saved.activated);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[0].next_used),
        (1, 1)
    );
    // The restored device looks at its queue by itself and serves the pending request.
    assert!(
        wait_used(&mem, &rig.vq, 2),
        "pending request not served after restore"
    );
    rig.done = 2;
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).expect("read");
    assert_eq!(got, vec![0xab; 512]);
    // And the next request continues the ring.
    let (st, used) = rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, true)));
    assert_eq!((st, used), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(
        used_elem(&mem, &rig.vq, 2).0,
        6,
        "third chain starts at descriptor 6"
    );
}

#[test]
fn pause_and_resume_keep_the_device_serving() {
    let tmp = image();
    let mem = memory();
    let mut rig = Rig::new(&mem, block(&tmp, false));
    rig.t.pause();
    rig.t.pause(); // twice is harmless
    rig.t.resume();
    let (st, _) = rig.request(VIRTIO_BLK_T_IN, 1, Some((512, true)));
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

#[test]
fn a_disk_of_another_size_or_mode_is_refused_on_restore() {
    let tmp = image();
    let mem = memory();
    let rig = Rig::new(&mem, block(&tmp, false));
    let mut t = rig.t;
    t.pause();
    let saved = t.save();
    let small = TempFile::new().expect("temp file");
    small.as_file().set_len(8 * 512).expect("size");
    let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let mut other = MmioTransport::new(Box::new(block(&small, false)), mem.clone(), irq).unwrap();
    let err = other.restore(&saved).unwrap_err();
    assert!(err.to_string().contains("disk size"), "{err}");
    let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let mut ro = MmioTransport::new(Box::new(block(&tmp, true)), mem.clone(), irq).unwrap();
    let err = ro.restore(&saved).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let mut rng = MmioTransport::new(
        Box::new(crate::vmm::devices::virtio::rng::Rng::new()),
        mem.clone(),
        irq,
    )
    .unwrap();
    let err = rng.restore(&saved).unwrap_err();
    assert!(err.to_string().contains("device type"), "{err}");
}
