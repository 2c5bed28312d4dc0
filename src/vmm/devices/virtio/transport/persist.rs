//! Saving and restoring a virtio-mmio transport: its registers, the interrupt status, every queue
//! (as the device's paused worker left it) and the device's own state. Restoring re-activates a
//! device the driver had started, then kicks each queue once, because notifications that were
//! pending in the old process's eventfds are not part of any state.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::{queue_is_usable, MmioTransport};
use crate::vmm::devices::virtio::persist::{DeviceState, PersistError, SavedQueue};

/// A transport and its device, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub activated: bool,
    pub interrupt_status: u32,
    pub needs_reset: bool,
    pub bad_size: Vec<bool>,
    pub queues: Vec<SavedQueue>,
    pub device: DeviceState,
}

impl MmioTransport {
    /// Stops the device's worker at a queue boundary (vCPUs must be paused first, so that no
    /// register write races it).
    pub fn pause(&mut self) {
        if self.activated {
            self.device.pause();
        }
    }

    /// Lets the device's worker run again; a worker that cannot be restarted leaves the device
    /// needing a reset (the guest's driver then resets it), never the VMM broken.
    pub fn resume(&mut self) {
        if self.activated {
            if let Err(e) = self.device.resume() {
                tracing::error!("virtio-mmio: cannot resume the device: {e}; it needs a reset");
                self.interrupt.set_needs_reset();
            }
        }
    }

    /// The transport's state; call while paused. The queues of an active device are the worker's
    /// copies (where it really is in the rings), not the transport's configuration copies.
    pub fn save(&self) -> TransportState {
        let mut needs_reset = self.interrupt.needs_reset();
        let queues: Vec<QueueState> = match (self.activated, self.device.paused_queues()) {
            (true, Some(queues)) => queues,
            (true, None) => {
                // The worker is gone (it panicked): the restored device waits for a reset, as
                // this one does.
                needs_reset = true;
                self.queues.iter().map(|q| q.state()).collect()
            }
            (false, _) => self.queues.iter().map(|q| q.state()).collect(),
        };
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            needs_reset,
            bad_size: self.bad_size.clone(),
            queues: queues.into_iter().map(SavedQueue::from).collect(),
            device: self.device.save(),
        }
    }

    /// Puts a freshly built transport (same device kind, not yet seen by the guest) into the
    /// saved state and, if the driver had started the device, starts it on the saved queues.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), PersistError> {
        if state.device_type != self.device.device_type() {
            return Err(PersistError::Mismatch {
                what: "virtio device type",
                saved: state.device_type.to_string(),
                here: self.device.device_type().to_string(),
                hint: "restore with the devices the snapshot was taken with",
            });
        }
        let max_sizes = self.device.queue_max_sizes().to_vec();
        if state.queues.len() != max_sizes.len() || state.bad_size.len() != max_sizes.len() {
            return Err(PersistError::Mismatch {
                what: "number of queues",
                saved: state.queues.len().to_string(),
                here: max_sizes.len().to_string(),
                hint: "the snapshot was taken by another device model",
            });
        }
        self.device.restore(&state.device)?;
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, max)) in state.queues.iter().zip(max_sizes).enumerate() {
            let queue_err = |reason: String| PersistError::Queue { index, reason };
            if saved.max_size != max {
                return Err(queue_err(format!(
                    "its maximum size is {}, this device's is {max}",
                    saved.max_size
                )));
            }
            let queue =
                Queue::try_from(QueueState::from(*saved)).map_err(|e| queue_err(e.to_string()))?;
            if state.activated && !state.needs_reset && !queue_is_usable(&queue, &self.mem) {
                return Err(queue_err(
                    "its rings are not in guest memory or its size is invalid".into(),
                ));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.bad_size = state.bad_size.clone();
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.config_generation = state.config_generation;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        if state.activated {
            // The device accepted these features before the snapshot; it is told again.
            self.device.ack_features(self.driver_features);
            if state.needs_reset {
                // Broken before the snapshot: stays broken until the driver resets it.
                self.activated = false;
            } else {
                self.activate();
                for evt in &self.queue_evts {
                    // Notifications pending in the old process are lost: look at every queue.
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("virtio-mmio: cannot kick a restored queue: {e}");
                    }
                }
            }
        }
        if state.interrupt_status != 0 {
            // The edge may not have reached the guest before the snapshot; a spare one is
            // harmless (the driver reads the status register).
            self.interrupt.resend();
        }
        Ok(())
    }
}
