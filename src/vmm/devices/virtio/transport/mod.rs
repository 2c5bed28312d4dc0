//! The virtio-mmio transport, version 2 ("modern") register layout (virtio 1.2 section 4.2.2).

use std::io;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMemory, Interrupt, VirtioDevice};
use crate::vmm::devices::bus::BusDevice;

/// Size of the MMIO window of one transport.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VMM puts the ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x6b73_6564; // "desk"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("device declares queue max size {0}, which is not a power of two in 1..=32768; this is a device bug")]
    QueueMaxSize(u16),
    #[error("cannot create a queue notification eventfd: {0}; check the process fd limit")]
    EventFd(#[source] io::Error),
}

/// A virtio device as the guest sees it through one MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// The driver wrote an invalid QueueNum for this queue; it may not become ready.
    bad_size: Vec<bool>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl MmioTransport {
    /// Wraps `device`. `irq_evt` is the eventfd the VMM registers as this device's irqfd.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq_evt: EventFd,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|_| MmioError::QueueMaxSize(max))?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq_evt)),
            bad_size: vec![false; queues.len()],
            queues,
            queue_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// One eventfd per queue, in queue order: register each as an ioeventfd on
    /// `base + QUEUE_NOTIFY_OFFSET` with datamatch = its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The virtio device ID (for logs and the DSDT description).
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device status register as the driver would read it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// The device changed its configuration space by itself (a disk grew): the generation moves
    /// on, so a driver in the middle of a multi-register read starts over, and a driver that is
    /// up gets a configuration-change interrupt. One that is not up yet reads the new values
    /// when it probes.
    pub fn signal_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only after FEATURES_OK and before DRIVER_OK (virtio 1.2 3.1.1).
    fn queue_config_allowed(&self) -> bool {
        self.status
            & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED)
            == VIRTIO_CONFIG_S_FEATURES_OK
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            // No shared memory regions: a length of all ones says "does not exist".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    /// Version 2 of the transport requires VIRTIO_F_VERSION_1; the transport adds it, and
    /// VIRTIO_RING_F_EVENT_IDX, which every device's queue processing honours (see `worker`).
    fn offered_features(&self) -> u64 {
        self.device.features() | (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                let mut outcome = None;
                self.with_queue_config(|q| {
                    // Sizes must be powers of two no larger than the maximum (checked by the crate).
                    let valid = u16::try_from(value).is_ok_and(|size| q.try_set_size(size).is_ok());
                    if !valid {
                        tracing::debug!("virtio-mmio: driver chose invalid queue size {value}");
                    }
                    outcome = Some(valid);
                });
                if let (Some(valid), Some(bad)) =
                    (outcome, self.bad_size.get_mut(self.queue_sel as usize))
                {
                    *bad = !valid;
                }
            }
            reg::QUEUE_READY => {
                let mem = self.mem.clone();
                let bad_size = self
                    .bad_size
                    .get(self.queue_sel as usize)
                    .copied()
                    .unwrap_or(true);
                self.with_queue_config(|q| match value {
                    0 => q.set_ready(false),
                    1 => {
                        q.set_ready(true);
                        if bad_size || !queue_is_usable(q, &mem) {
                            tracing::debug!("virtio-mmio: queue refused: bad size or rings outside guest memory");
                            q.set_ready(false);
                        }
                    }
                    _ => {}
                })
            }
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_DESC_LOW => {
                self.with_queue_config(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.with_queue_config(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.with_queue_config(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue_config(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.with_queue_config(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.with_queue_config(|q| q.set_used_ring_address(None, Some(value)))
            }
            _ => tracing::debug!("virtio-mmio: ignored write of {value:#x} at {offset:#x}"),
        }
    }

    fn with_queue_config<F: FnOnce(&mut Queue)>(&mut self, f: F) {
        if !self.queue_config_allowed() {
            tracing::debug!(
                "virtio-mmio: queue register written outside FEATURES_OK state; ignored"
            );
            return;
        }
        match self.selected_queue() {
            Some(q) => f(q),
            None => tracing::debug!(
                "virtio-mmio: queue register written for a queue that does not exist; ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating = self.status
            & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_FAILED)
            == VIRTIO_CONFIG_S_DRIVER;
        if !negotiating {
            tracing::debug!("virtio-mmio: driver features written outside negotiation; ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => {}
        }
    }

    fn notify_queue(&self, index: u32) {
        // Reached only when no ioeventfd is registered (or in tests): same effect.
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => tracing::debug!("virtio-mmio: notify for queue {index} that does not exist"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Drivers write back what they read; NEEDS_RESET is the device's bit, not theirs.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let old = self.status;
        // The driver only ever adds bits (except through reset).
        if value & old != old {
            tracing::debug!("virtio-mmio: status {value:#x} clears bits of {old:#x}; ignored");
            return;
        }
        let added = value & !old;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let ack = VIRTIO_CONFIG_S_ACKNOWLEDGE;
        let driver = ack | VIRTIO_CONFIG_S_DRIVER;
        let features_ok = driver | VIRTIO_CONFIG_S_FEATURES_OK;
        let driver_ok = features_ok | VIRTIO_CONFIG_S_DRIVER_OK;
        match (old, value) {
            (0, v) if v == ack => self.status = v,
            (o, v) if o == ack && v == driver => self.status = v,
            (o, v) if o == driver && v == features_ok => {
                if self.features_acceptable() {
                    self.device.ack_features(self.driver_features);
                    self.status = v;
                } else {
                    // Leaving FEATURES_OK unset tells the driver its choice was refused.
                    tracing::debug!(
                        "virtio-mmio: driver features {:#x} not acceptable (offered {:#x})",
                        self.driver_features,
                        self.offered_features()
                    );
                }
            }
            (o, v) if o == features_ok && v == driver_ok => {
                self.status = v;
                self.activate();
            }
            _ => tracing::debug!("virtio-mmio: status transition {old:#x} -> {value:#x} refused"),
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        self.driver_features & !offered == 0
            && self.driver_features & (1u64 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let all_ready = self
            .queues
            .iter()
            .all(|q| q.ready() && queue_is_usable(q, &self.mem));
        if !all_ready {
            tracing::warn!(
                "virtio-mmio: DRIVER_OK with a queue not ready or invalid; device needs reset"
            );
            self.interrupt.set_needs_reset();
            return;
        }
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut evts = Vec::with_capacity(self.queue_evts.len());
        for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
            let copy = Queue::try_from(q.state());
            let evt = evt.try_clone();
            match (copy, evt) {
                (Ok(mut q), Ok(e)) => {
                    q.set_event_idx(event_idx);
                    queues.push(q);
                    evts.push(e);
                }
                _ => {
                    tracing::error!("virtio-mmio: cannot hand the queues to the device");
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        match self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), queues, evts)
        {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::error!("virtio-mmio: device activation failed: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_size.fill(false);
        // Drop notifications that arrived for the old queues.
        for evt in &self.queue_evts {
            super::worker::drain(evt);
        }
        self.interrupt.reset();
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

/// A queue may be used when its size is valid and its rings lie in guest memory (with the
/// alignment the virtio-queue crate enforces on the address setters).
fn queue_is_usable(q: &Queue, mem: &GuestMemory) -> bool {
    let state: QueueState = q.state();
    let size_ok = state.size != 0 && state.size <= state.max_size && state.size.is_power_of_two();
    let aligned = state.desc_table.is_multiple_of(16)
        && state.avail_ring.is_multiple_of(2)
        && state.used_ring.is_multiple_of(4);
    size_ok && aligned && q.is_valid(mem)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if offset < MMIO_WINDOW_SIZE {
                self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                data.fill(0);
            }
            return;
        }
        // Registers below the config space are 32-bit and aligned; anything else reads as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if offset < MMIO_WINDOW_SIZE {
                self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                "virtio-mmio: {}-byte register write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod fuzz;
pub mod persist;
#[cfg(test)]
mod tests;
