//! Fuzz target: virtio-blk's request processing on a fuzzed queue (see `../fuzzing.rs`): any
//! descriptor chains and request headers, against a real 64-sector disk file.

use vmm_sys_util::tempfile::TempFile;

use super::{Block, BlockConfig};
use crate::vmm::devices::virtio::fuzzing::{self, Input};
use crate::vmm::devices::virtio::worker::process_queue;

#[test]
fn fuzz_block_queue() {
    let tmp = TempFile::new().expect("temp file");
    tmp.as_file().set_len(64 * 512).expect("disk size");
    let block = Block::new(BlockConfig {
        path: tmp.as_path().to_path_buf(),
        read_only: false,
        serial: "fuzz".into(),
    })
    .expect("block device");
    let block = std::panic::AssertUnwindSafe(block);
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut disk = block.disk.try_clone().expect("disk clone");
            disk.read_only = data.first().is_some_and(|b| b & 0x80 != 0);
            let mut input = Input::new(data);
            let mem = fuzzing::memory();
            let mut queue = fuzzing::queue(&mem, &mut input, 0);
            // Plausible headers (type, reserved, sector) at the start of some buffers.
            for i in 0..4 {
                let kind = [0u32, 1, 4, 8, 11, 13, input.u32()][usize::from(input.u8() % 7)];
                let sector = u64::from(input.u8() % 80);
                let mut hdr = [0u8; 16];
                hdr[..4].copy_from_slice(&kind.to_le_bytes());
                hdr[8..].copy_from_slice(&sector.to_le_bytes());
                fuzzing::put_in_buffer(&mem, 0, i, &hdr);
            }
            fuzzing::fill_data(&mem, &mut input);
            let irq = fuzzing::interrupt();
            let _ = process_queue(&mem, &mut queue, &irq, super::MAX_REQUEST_LEN, |chain| {
                reach.deep();
                Ok(disk.execute(&mem, chain))
            });
        });
    reach.report("fuzz_block_queue", "requests served");
}
