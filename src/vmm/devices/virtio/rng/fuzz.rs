//! Fuzz target: virtio-rng's request processing on a fuzzed queue (see `../fuzzing.rs`).

use crate::vmm::devices::virtio::fuzzing::{self, Input};
use crate::vmm::devices::virtio::worker::process_queue;

#[test]
fn fuzz_rng_queue() {
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut input = Input::new(data);
            let mem = fuzzing::memory();
            let mut queue = fuzzing::queue(&mem, &mut input, 0);
            let irq = fuzzing::interrupt();
            let _ = process_queue(&mem, &mut queue, &irq, u64::MAX, |chain| {
                reach.deep();
                super::serve(&mem, chain)
            });
        });
    reach.report("fuzz_rng_queue", "requests served");
}
