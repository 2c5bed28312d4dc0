use super::*;
use crate::vmm::devices::virtio::testing::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn fills_buffers_with_random_bytes() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    let next = add_chain(
        &vq,
        0,
        &[(DATA_BASE, 256, true), (DATA_BASE + 0x1000, 256, true)],
    );
    add_chain(&vq, next, &[(DATA_BASE + 0x2000, 32, true)]);
    write_reg(&mut t, 0x50, 0);
    assert!(wait_used(&mem, &vq, 2));
    assert_eq!(used_elem(&mem, &vq, 0), (0, 512));
    assert_eq!(used_elem(&mem, &vq, 1), (2, 32));
    let mut a = [0u8; 256];
    let mut b = [0u8; 256];
    mem.read_slice(&mut a, GuestAddress(DATA_BASE))
        .expect("read");
    mem.read_slice(&mut b, GuestAddress(DATA_BASE + 0x1000))
        .expect("read");
    // 256 zero bytes from getrandom has probability 2^-2048; equal halves likewise.
    assert!(a.iter().any(|&x| x != 0));
    assert_ne!(a, b);
}

#[test]
fn huge_buffer_is_filled_only_up_to_the_cap() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    add_chain(&vq, 0, &[(DATA_BASE, 4 << 20, true)]);
    write_reg(&mut t, 0x50, 0);
    assert!(wait_used(&mem, &vq, 1));
    assert_eq!(used_elem(&mem, &vq, 0).1, MAX_FILL as u32);
}

#[test]
fn chain_outside_memory_marks_device_broken() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    add_chain(&vq, 0, &[(MEM_SIZE as u64 - 16, 64, true)]);
    write_reg(&mut t, 0x50, 0);
    assert!(wait_needs_reset(&mut t));
    assert_eq!(used_idx(&mem, &vq), 0);
}

#[test]
fn wrong_queue_count_is_refused_with_the_real_count() {
    let mem = memory();
    let irq = Arc::new(Interrupt::new(
        EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd"),
    ));
    let queues = || (0..2).map(|_| Queue::new(16).expect("queue")).collect();
    let evts = || {
        (0..2)
            .map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd"))
            .collect()
    };
    let err = Rng::new()
        .activate(mem.clone(), irq.clone(), queues(), evts())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { want: 1, got: 2 }));
    let err = Rng::new()
        .activate(mem, irq, Vec::new(), Vec::new())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { want: 1, got: 0 }));
}

#[test]
fn a_restored_rng_continues_the_queue_and_keeps_a_broken_device_broken() {
    let mem = memory();
    let vq = mock_queue(&mem, 0, 16);
    let (mut t, _irq) = activate(Box::new(Rng::new()), &mem, &[&vq], 16);
    let next = add_chain(&vq, 0, &[(DATA_BASE, 64, true)]);
    write_reg(&mut t, 0x50, 0);
    assert!(wait_used(&mem, &vq, 1));
    let (mut t, saved) = snapshot_restore(t, || Box::new(Rng::new()), &mem);
    assert_eq!(saved.queues[0].next_used, 1);
    let next = add_chain(&vq, next, &[(DATA_BASE + 0x1000, 32, true)]);
    write_reg(&mut t, 0x50, 0);
    assert!(
        wait_used(&mem, &vq, 2),
        "the restored device serves the next chain"
    );
    assert_eq!(used_elem(&mem, &vq, 1), (1, 32));

    // Broken before the snapshot: still DEVICE_NEEDS_RESET after it, and serving nothing.
    add_chain(&vq, next, &[(MEM_SIZE as u64 - 16, 64, true)]);
    write_reg(&mut t, 0x50, 0);
    assert!(wait_needs_reset(&mut t));
    let (mut t, saved) = snapshot_restore(t, || Box::new(Rng::new()), &mem);
    assert!(saved.needs_reset);
    assert!(wait_needs_reset(&mut t));
    assert_eq!(used_idx(&mem, &vq), 2);
    // A driver reset brings it back, as before the snapshot.
    write_reg(&mut t, 0x70, 0);
    assert_eq!(read_reg(&mut t, 0x70), 0);
}
