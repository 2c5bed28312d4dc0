//! Fuzz target: the virtio-mmio transport's register interface driven by a fuzzed driver: any
//! sequence of reads and writes of any width at any offset (the known registers mostly, with
//! values that are often sensible: feature bits, queue sizes, queue addresses inside memory,
//! status bits in and out of order), in front of a device whose worker really runs (virtio-rng)
//! on fuzzed guest memory. Nothing may panic, and a reset must always come back.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{reg as regs, MmioTransport};
use crate::vmm::devices::bus::BusDevice;
use crate::vmm::devices::virtio::fuzzing::{self, Input};
use crate::vmm::devices::virtio::rng::Rng;

const REGISTERS: &[u64] = &[
    regs::DEVICE_FEATURES,
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_STATUS,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_LEN_LOW,
];

fn value_for(offset: u64, input: &mut Input<'_>) -> u32 {
    if input.u8().is_multiple_of(4) {
        return input.u32();
    }
    match offset {
        regs::STATUS => [0u32, 1, 3, 0xb, 0xf, 0x40, 0x80][usize::from(input.u8() % 7)],
        regs::QUEUE_NUM => [0u32, 1, 3, 16, 256, 512][usize::from(input.u8() % 6)],
        regs::QUEUE_DESC_LOW => 0,
        regs::QUEUE_DRIVER_LOW => 0x1000,
        regs::QUEUE_DEVICE_LOW => 0x2000,
        regs::QUEUE_DESC_HIGH | regs::QUEUE_DRIVER_HIGH | regs::QUEUE_DEVICE_HIGH => 0,
        regs::DEVICE_FEATURES_SEL | regs::DRIVER_FEATURES_SEL | regs::QUEUE_SEL => {
            u32::from(input.u8() % 3)
        }
        regs::QUEUE_READY => u32::from(input.u8() % 2),
        _ => input.u32(),
    }
}

#[test]
fn fuzz_mmio_transport() {
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut input = Input::new(data);
            let mem = fuzzing::memory();
            // Queue 0's structures at 0, 0x1000 and 0x2000, where the sensible values point.
            let _ = fuzzing::queue(&mem, &mut input, 0);
            let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            let mut t =
                MmioTransport::new(Box::new(Rng::new()), mem.clone(), irq).expect("transport");
            if input.u8().is_multiple_of(2) {
                // A driver that does the set-up right first (virtio 1.2 3.1.1), so that the
                // random steps after it meet a live device.
                for (offset, value) in [
                    (regs::STATUS, 1u32),
                    (regs::STATUS, 3),
                    (regs::DRIVER_FEATURES_SEL, 1),
                    (regs::DRIVER_FEATURES, 1), // VIRTIO_F_VERSION_1
                    (regs::STATUS, 0xb),
                    (regs::QUEUE_SEL, 0),
                    (regs::QUEUE_NUM, 16),
                    (regs::QUEUE_DESC_LOW, 0),
                    (regs::QUEUE_DRIVER_LOW, 0x1000),
                    (regs::QUEUE_DEVICE_LOW, 0x2000),
                    (regs::QUEUE_READY, 1),
                    (regs::STATUS, 0xf),
                ] {
                    t.write(offset, &value.to_le_bytes());
                }
                t.write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
            }
            for _ in 0..(input.u8() % 64) {
                let offset = match input.u8() % 8 {
                    0 => u64::from(input.u16()),
                    1 => 0x100 + u64::from(input.u8()),
                    _ => REGISTERS[usize::from(input.u8()) % REGISTERS.len()],
                };
                let width = [1usize, 2, 4, 8][usize::from(input.u8() % 4)];
                if input.u8().is_multiple_of(3) {
                    let mut out = [0u8; 8];
                    t.read(offset, &mut out[..width]);
                } else {
                    let v =
                        u64::from(value_for(offset, &mut input)) | (u64::from(input.u8()) << 32);
                    let bytes = v.to_le_bytes();
                    t.write(
                        offset,
                        &bytes[..if width == 8 && input.u8().is_multiple_of(2) {
                            4
                        } else {
                            width
                        }],
                    );
                }
            }
            fuzzing::fill_data(&mem, &mut input);
            let mut status = [0u8; 4];
            t.read(regs::STATUS, &mut status);
            if u32::from_le_bytes(status) & 0x4 != 0 {
                reach.deep();
            }
            // A reset joins the device's worker: a stuck worker hangs the target here.
            t.write(regs::STATUS, &0u32.to_le_bytes());
            let mut status = [0u8; 4];
            t.read(regs::STATUS, &mut status);
            assert_eq!(u32::from_le_bytes(status), 0, "status after a reset");
        });
    reach.report("fuzz_mmio_transport", "drove the device to DRIVER_OK");
}

#[test]
fn fuzz_transport_restore() {
    // A real saved state to start from, so that most inputs get past the device-kind check.
    let mem = fuzzing::memory();
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(Box::new(Rng::new()), mem.clone(), irq).expect("transport");
    t.pause();
    let valid = postcard::to_stdvec(&t.save()).expect("encode the transport state");
    drop(t);
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut input = Input::new(data);
            let mut bytes = valid.clone();
            for _ in 0..(input.u8() % 6) {
                let at = usize::from(input.u8()) % bytes.len();
                bytes[at] ^= input.u8() | 1;
            }
            let raw = input.rest();
            for candidate in [&bytes[..], raw] {
                let Ok(state) = postcard::from_bytes::<super::persist::TransportState>(candidate)
                else {
                    continue;
                };
                let mem = fuzzing::memory();
                let mut input = Input::new(raw);
                let _ = fuzzing::queue(&mem, &mut input, 0);
                let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
                let mut t = MmioTransport::new(Box::new(Rng::new()), mem, irq).expect("transport");
                if t.restore(&state).is_ok() {
                    reach.deep();
                    // A restored device runs on: a notification, then a reset that must return.
                    t.write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
                    t.write(regs::STATUS, &0u32.to_le_bytes());
                }
            }
        });
    reach.report("fuzz_transport_restore", "restored");
}
