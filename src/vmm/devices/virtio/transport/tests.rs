use super::*;
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::devices::virtio::testing::*;

fn transport(mem: &GuestMemory) -> MmioTransport {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    MmioTransport::new(Box::new(Rng::new()), mem.clone(), irq).expect("transport")
}

#[test]
fn identity_registers() {
    let mem = memory();
    let mut t = transport(&mem);
    assert_eq!(read_reg(&mut t, 0x000), 0x7472_6976);
    assert_eq!(read_reg(&mut t, 0x004), 2);
    assert_eq!(read_reg(&mut t, 0x008), 4);
    assert_eq!(read_reg(&mut t, 0x00c), VENDOR_ID);
    write_reg(&mut t, 0x030, 0);
    assert_eq!(read_reg(&mut t, 0x034), 256);
    write_reg(&mut t, 0x030, 1);
    assert_eq!(read_reg(&mut t, 0x034), 0, "queue 1 does not exist");
    assert_eq!(t.queue_evts().len(), 1);
}

#[test]
fn version_1_is_offered_and_required() {
    let mem = memory();
    let mut t = transport(&mem);
    write_reg(&mut t, 0x14, 1);
    assert_eq!(
        read_reg(&mut t, 0x10) & 1,
        1,
        "VIRTIO_F_VERSION_1 is bit 32"
    );
    write_reg(&mut t, 0x70, 1);
    write_reg(&mut t, 0x70, 3);
    // The driver accepts nothing: legacy is not supported, FEATURES_OK stays clear.
    write_reg(&mut t, 0x70, 0xb);
    assert_eq!(read_reg(&mut t, 0x70), 3);
    // A feature that was never offered is refused too.
    write_reg(&mut t, 0x24, 1);
    write_reg(&mut t, 0x20, 1 | 0x80);
    write_reg(&mut t, 0x70, 0xb);
    assert_eq!(read_reg(&mut t, 0x70), 3);
    write_reg(&mut t, 0x20, 1);
    write_reg(&mut t, 0x70, 0xb);
    assert_eq!(read_reg(&mut t, 0x70), 0xb);
}

#[test]
fn status_steps_cannot_be_skipped_or_undone() {
    let mem = memory();
    let mut t = transport(&mem);
    write_reg(&mut t, 0x70, 0xf);
    assert_eq!(read_reg(&mut t, 0x70), 0, "DRIVER_OK straight from reset");
    write_reg(&mut t, 0x70, 1);
    write_reg(&mut t, 0x70, 0x5);
    assert_eq!(
        read_reg(&mut t, 0x70),
        1,
        "DRIVER_OK without DRIVER/FEATURES_OK"
    );
    write_reg(&mut t, 0x70, 3);
    write_reg(&mut t, 0x70, 1);
    assert_eq!(
        read_reg(&mut t, 0x70),
        3,
        "bits cannot be cleared except by reset"
    );
    write_reg(&mut t, 0x70, 0x83);
    assert_eq!(read_reg(&mut t, 0x70), 0x83, "FAILED is accepted");
}

#[test]
fn queue_setup_is_validated() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 256);
    let mut t = transport(&mem);
    // Queue registers before FEATURES_OK are ignored.
    setup_queue(&mut t, 0, &vq, 256);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    negotiate(&mut t);
    // Not a power of two.
    setup_queue(&mut t, 0, &vq, 100);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    // Larger than the maximum.
    setup_queue(&mut t, 0, &vq, 512);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    // Rings outside guest memory.
    write_reg(&mut t, 0x38, 256);
    write_reg(&mut t, 0x80, 0);
    write_reg(&mut t, 0x84, 0x10);
    write_reg(&mut t, 0x44, 1);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    // Used ring that runs past the end of memory.
    setup_queue(&mut t, 0, &vq, 256);
    write_reg(&mut t, 0x44, 0);
    write_reg(&mut t, 0xa0, (MEM_SIZE - 64) as u32);
    write_reg(&mut t, 0x44, 1);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    // DRIVER_OK with the queue not ready: the device asks for a reset instead of starting.
    write_reg(&mut t, 0x70, 0xf);
    assert_eq!(read_reg(&mut t, 0x70), 0xf | 0x40);
    assert_ne!(
        read_reg(&mut t, 0x60) & 2,
        0,
        "config-change interrupt raised"
    );
    // A good setup after reset works.
    write_reg(&mut t, 0x70, 0);
    negotiate(&mut t);
    setup_queue(&mut t, 0, &vq, 256);
    assert_eq!(read_reg(&mut t, 0x44), 1);
    write_reg(&mut t, 0x70, 0xf);
    assert_eq!(read_reg(&mut t, 0x70), 0xf);
}

#[test]
fn any_offset_and_length_is_harmless() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    for offset in (0..0x1100u64).chain([u64::MAX - 3, u64::MAX]) {
        for len in [0usize, 1, 2, 3, 4, 8, 16] {
            let mut data = vec![0xffu8; len];
            t.read(offset, &mut data);
            if offset % 4 != 0 && offset < 0x100 {
                assert!(
                    data.iter().all(|&b| b == 0),
                    "unaligned read at {offset:#x}"
                );
            }
            // Writes of garbage must not panic either (status writes may reset the device).
            t.write(offset, &data);
        }
    }
    // Sub-word reads of registers read as zero, not as part of the register.
    let mut half = [0xffu8; 2];
    t.read(0, &mut half);
    assert_eq!(half, [0, 0]);
}

#[test]
fn reset_returns_to_power_on_state() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    write_reg(&mut t, 0x70, 0);
    assert_eq!(read_reg(&mut t, 0x70), 0);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    assert_eq!(read_reg(&mut t, 0x60), 0);
    // And it can be brought up again.
    negotiate(&mut t);
    setup_queue(&mut t, 0, &vq, 16);
    write_reg(&mut t, 0x70, 0xf);
    assert_eq!(read_reg(&mut t, 0x70), 0xf);
}

#[test]
fn notify_raises_used_interrupt_until_acked() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    add_chain(&vq, 0, &[(DATA_BASE, 64, true)]);
    // No ioeventfd in tests: the MMIO write path signals the queue eventfd itself.
    write_reg(&mut t, QUEUE_NOTIFY_OFFSET, 0);
    assert!(wait_used(&mem, &vq, 1));
    assert_eq!(read_reg(&mut t, 0x60) & 1, 1);
    assert!(irq.read().expect("irqfd was written") >= 1);
    write_reg(&mut t, 0x64, 1);
    assert_eq!(read_reg(&mut t, 0x60) & 1, 0);
}

#[test]
fn config_space_reads_past_end_as_zero() {
    let mem = memory();
    let mut t = transport(&mem);
    let mut data = [0xffu8; 8];
    t.read(0x100, &mut data);
    assert_eq!(data, [0; 8]);
    t.read(0xffe, &mut data);
    assert_eq!(data, [0; 8]);
}

#[test]
fn queue_eventfd_alone_triggers_processing() {
    // What KVM does with a registered ioeventfd: the eventfd is signalled, no MMIO exit happens.
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    add_chain(&vq, 0, &[(DATA_BASE, 16, true)]);
    t.queue_evts()[0].write(1).expect("ioeventfd");
    assert!(wait_used(&mem, &vq, 1));
}

fn wait_irq_status(t: &mut MmioTransport) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if read_reg(t, 0x60) & 1 != 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

#[test]
fn event_idx_lets_the_driver_suppress_interrupts_and_kicks() {
    use vm_memory::{Address, Bytes};
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    write_reg(&mut t, 0x14, 0);
    assert_ne!(
        read_reg(&mut t, 0x10) & (1 << 29),
        0,
        "VIRTIO_RING_F_EVENT_IDX offered"
    );
    // used_event = 1: "interrupt me once used.idx moves past 1", i.e. not for the first chain.
    let used_event = vq.avail_addr().unchecked_add(4 + 2 * 16);
    mem.write_obj(1u16, used_event).expect("used_event");
    add_chain(&vq, 0, &[(DATA_BASE, 16, true)]);
    write_reg(&mut t, QUEUE_NOTIFY_OFFSET, 0);
    assert!(wait_used(&mem, &vq, 1));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(read_reg(&mut t, 0x60) & 1, 0, "first chain: no interrupt");
    assert!(irq.read().is_err(), "irqfd not written");
    add_chain(&vq, 1, &[(DATA_BASE + 0x100, 16, true)]);
    write_reg(&mut t, QUEUE_NOTIFY_OFFSET, 0);
    assert!(wait_used(&mem, &vq, 2));
    assert!(
        wait_irq_status(&mut t),
        "second chain crosses used_event: interrupt"
    );
    // The device asked to be kicked for the next chain after the two it consumed.
    let avail_event = used_ring(&vq).unchecked_add(4 + 8 * 16);
    assert_eq!(mem.read_obj::<u16>(avail_event).expect("avail_event"), 2);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    use vm_memory::{Address, Bytes};
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(
        Box::new(Rng::new()),
        mem.clone(),
        irq.try_clone().expect("clone"),
    )
    .expect("transport");
    write_reg(&mut t, 0x70, 1);
    write_reg(&mut t, 0x70, 3);
    write_reg(&mut t, 0x24, 1);
    write_reg(&mut t, 0x20, 1); // VERSION_1 only
    write_reg(&mut t, 0x70, 0xb);
    setup_queue(&mut t, 0, &vq, 16);
    write_reg(&mut t, 0x70, 0xf);
    assert_eq!(read_reg(&mut t, 0x70), 0xf);
    // A stale used_event must not matter when EVENT_IDX was not negotiated.
    mem.write_obj(7u16, vq.avail_addr().unchecked_add(4 + 2 * 16))
        .expect("used_event");
    for i in 0..2u16 {
        add_chain(&vq, i, &[(DATA_BASE + 0x100 * u64::from(i), 16, true)]);
        write_reg(&mut t, QUEUE_NOTIFY_OFFSET, 0);
        assert!(wait_used(&mem, &vq, i + 1));
        assert!(wait_irq_status(&mut t), "batch {i} interrupts");
        write_reg(&mut t, 0x64, 1);
    }
}
