//! Virtio devices behind a virtio-mmio (version 2) transport.
//!
//! # Contract for the VMM (how to wire a device)
//!
//! ```text
//! let irq_evt = EventFd::new(EFD_NONBLOCK)?;                 // interrupt line of this device
//! let block = Block::new(BlockConfig { path, read_only, serial })?;
//! let transport = MmioTransport::new(Box::new(block), guest_mem.clone(), irq_evt.try_clone()?)?;
//! vm_fd.register_irqfd(&irq_evt, gsi)?;                     // one GSI per device
//! for (index, evt) in transport.queue_evts().iter().enumerate() {
//!     vm_fd.register_ioevent(evt, &IoEventAddress::Mmio(base + transport::QUEUE_NOTIFY_OFFSET),
//!                            index as u32)?;              // datamatch = queue index (u32)
//! }
//! mmio_bus.insert(base, transport::MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)));
//! ```
//!
//! - **Memory window**: each transport answers [`transport::MMIO_WINDOW_SIZE`] (4 KiB) bytes at its base;
//!   the VMM dispatches MMIO exits in that window to [`crate::vmm::devices::bus::BusDevice`] with
//!   offsets relative to the base.
//! - **Interrupts**: one GSI per device, **edge-triggered, active high** (describe it so in the
//!   DSDT `Interrupt` resource of the `LNRO0005` device). The transport writes the `EventFd` it was
//!   given each time it wants an interrupt; the VMM registers that `EventFd` with `KVM_IRQFD` on the
//!   device's GSI. The interrupt status register (bit 0 used buffer, bit 1 configuration change) is
//!   kept by the transport, so no resample fd is needed.
//! - **Queue notifications**: the transport owns one `EventFd` per queue ([`MmioTransport::queue_evts`]);
//!   the VMM registers each as an ioeventfd on `base + 0x50` with a 4-byte datamatch equal to the
//!   queue index. Notifications then wake the device's worker thread without a VM exit. If the VMM does
//!   not register them, a write to QueueNotify still reaches [`MmioTransport`] as an MMIO write and is
//!   forwarded to the same `EventFd`, so both paths work.
//! - **Threads**: an activated device runs one worker thread that sleeps in `epoll_wait` on its queue
//!   `EventFd`s, its backend fds and a stop `EventFd`; it ends when the driver resets the device or the
//!   transport is dropped.
//! - **Broken devices**: when the guest hands a device something it cannot process (descriptor chain
//!   outside guest memory, a descriptor loop, an impossible available index), the device sets
//!   `DEVICE_NEEDS_RESET` in its status and raises a configuration-change interrupt; it stops
//!   processing until the driver resets it. The VMM is never affected.
//! - **Features every device gets from the transport**: `VIRTIO_F_VERSION_1` (required by the
//!   version 2 layout; legacy drivers are refused at FEATURES_OK) and `VIRTIO_RING_F_EVENT_IDX`
//!   (the driver suppresses kicks and interrupts it does not need; Linux always takes it).
//! - **Logging**: everything a guest can trigger over and over (bad requests, bad packets, register
//!   misuse) is logged at `debug` so a guest cannot flood the host's logs; a device giving up
//!   (`DEVICE_NEEDS_RESET`) is a `warn`.
//!
//! Devices:
//! - [`block::Block`]: virtio-blk on a raw image (read, write, flush = fdatasync, get-id = the
//!   serial, discard and write-zeroes by hole punching, read-only mode with `VIRTIO_BLK_F_RO`).
//! - [`vsock::Vsock`]: virtio-vsock with Firecracker's hybrid Unix-socket host side (host clients
//!   `CONNECT <port>\n` / `OK <hostport>\n`; guest connections to `<path>_<port>`). The socket is
//!   bound by `Vsock::new`, so clients may connect before the guest driver is up; a driver reset
//!   drops every connection.
//! - [`rng::Rng`]: virtio-rng from getrandom(2).
//! - [`net::Net`]: virtio-net on a TAP device, with offloads, mergeable receive buffers and a
//!   rate limiter the control socket can change while the VM runs.
//!
//! Verified with Debian 12's stock cloud kernel (6.1) in the rig: `/dev/vda` with its serial, reads,
//! writes, O_DIRECT multi-MiB transfers and `blkdiscard`; `virtio_rng.0` as the current hwrng; vsock
//! both ways with multi-MiB transfers checked by md5. virtio-net is tested on in-memory guest
//! memory and a real TAP (frames from guest memory reach the kernel), not yet in a booted guest.

pub mod block;
pub mod chain;
pub mod cursor;
#[cfg(test)]
pub(crate) mod fuzzing;
#[cfg(test)]
mod hostile_guest_tests;
pub mod net;
pub mod persist;
pub mod rng;
#[cfg(test)]
mod testing;
pub mod transport;
pub mod vsock;
pub(crate) mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use transport::MmioTransport;

/// Guest memory as the devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Interrupt status bit: the device used a buffer in one of its queues.
pub const INTERRUPT_USED_RING: u32 = 1;
/// Interrupt status bit: the device configuration (or `DEVICE_NEEDS_RESET`) changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// The interrupt line of one device plus the state the transport reports to the driver. Shared
/// between the transport (register reads) and the device's worker thread (raising interrupts).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq_evt: EventFd,
}

impl Interrupt {
    /// Wraps the `EventFd` that the VMM registered as this device's irqfd.
    pub fn new(irq_evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq_evt,
        }
    }

    /// Tells the driver that buffers were placed in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(INTERRUPT_USED_RING);
    }

    /// Tells the driver that the configuration space (or the device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(INTERRUPT_CONFIG_CHANGE);
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`) and tells the driver, per virtio 1.2 2.1.2.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// True once the device gave up on the guest's queues and waits for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The interrupt status register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Back to the power-on state (driver reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// On restore: the status register and broken flag as saved.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Signals the interrupt line again without changing the status.
    pub fn resend(&self) {
        if let Err(e) = self.irq_evt.write(1) {
            tracing::warn!("virtio: cannot signal the interrupt eventfd: {e}");
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter (2^64 - 2 pending writes) cannot happen in practice, and a lost
        // edge would only delay the guest until the next one, so the error is logged, not fatal.
        if let Err(e) = self.irq_evt.write(1) {
            tracing::warn!("virtio: cannot signal the interrupt eventfd: {e}");
        }
    }
}

/// Why a device could not start on the queues the driver configured.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the transport passed {got} queues but the device needs {want}; this is a VMM bug")]
    QueueCount { want: usize, got: usize },
    #[error("cannot start the device worker thread: {0}; check the process thread/fd limits")]
    Worker(#[source] io::Error),
    #[error("the device backend failed to start: {0}")]
    Backend(String),
}

/// A virtio device model, independent of the transport that exposes it.
///
/// The transport calls these from the vCPU thread that handles the MMIO exit; `activate` hands the
/// queues over to the device, which processes them on its own worker thread.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// The features the driver accepted (always a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; devices with a read-only space ignore this.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts processing `queues` (validated by the transport) on a worker thread; `queue_evts[i]`
    /// is signalled when the driver notifies queue `i`.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: std::sync::Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError>;
    /// Stops the worker thread and drops the queues; the device can be activated again after.
    fn reset(&mut self);
    /// Stops the worker at a queue boundary, keeping its queues and backend state (open host
    /// connections too); a no-op when the device is not active.
    fn pause(&mut self);
    /// Lets a paused worker run on from where it stopped.
    fn resume(&mut self) -> Result<(), ActivateError>;
    /// The queues as the paused worker left them; `None` when the device is not active (or not
    /// paused), in which case the transport's own copies are the state.
    fn paused_queues(&self) -> Option<Vec<virtio_queue::QueueState>>;
    /// The device's own state for a snapshot (see each device's `persist` module).
    fn save(&self) -> persist::DeviceState;
    /// On restore, before the transport re-activates the device: checks that `state` was saved
    /// from a device like this one and takes what the device needs from it.
    fn restore(&mut self, state: &persist::DeviceState) -> Result<(), persist::PersistError>;
}

/// Copies `data` out of a little config-space image, zero-filling past its end. Shared by devices
/// whose configuration space is a plain byte array.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}
