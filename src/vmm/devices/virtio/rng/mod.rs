//! virtio-rng: the guest's hardware RNG (`/dev/hwrng`), fed from the host's getrandom(2).

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::chain::Chain;
use super::cursor::Cursor;
use super::persist::{DeviceState, PersistError};
use super::worker::{spawn_single_queue, QueueError, SingleQueue, Worker};
use super::{ActivateError, GuestMemory, Interrupt, VirtioDevice};

pub mod persist;

const QUEUE_SIZES: [u16; 1] = [256];
/// Most bytes given for one request; bigger buffers are filled only this far (the driver reads
/// the used length), so a huge guest buffer cannot keep the worker busy for long.
const MAX_FILL: usize = 64 * 1024;

/// The virtio-rng device model.
#[derive(Debug, Default)]
pub struct Rng {
    worker: Option<Worker<SingleQueue>>,
}

impl Rng {
    pub fn new() -> Self {
        Rng::default()
    }
}

/// Fills `buf` from the kernel's CSPRNG.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(io::Error::from)
}

/// Serves one request: fill the device-writable buffers (up to [`MAX_FILL`]).
fn serve(mem: &GuestMemory, chain: &Chain) -> Result<u32, QueueError> {
    let mut out = Cursor::new(mem, &chain.writable);
    let mut chunk = [0u8; 4096];
    let mut left = out.remaining().min(MAX_FILL as u64) as usize;
    while left > 0 {
        let piece = &mut chunk[..left.min(4096)];
        fill_random(piece).map_err(|e| QueueError::Device(format!("getrandom failed: {e}")))?;
        out.write_all(piece)
            .map_err(|e| QueueError::Device(e.to_string()))?;
        left -= piece.len();
    }
    Ok(out.done() as u32)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        // serve() never writes past MAX_FILL, so the chain length needs no cap of its own.
        self.worker = Some(spawn_single_queue(
            "virtio-rng",
            mem,
            interrupt,
            queues,
            queue_evts,
            u64::MAX,
            Box::new(serve),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn pause(&mut self) {
        if let Some(w) = self.worker.as_mut() {
            w.pause();
        }
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        match self.worker.as_mut() {
            Some(w) => w.resume().map_err(ActivateError::Worker),
            None => Ok(()),
        }
    }

    fn paused_queues(&self) -> Option<Vec<virtio_queue::QueueState>> {
        let body = self.worker.as_ref()?.paused_body()?;
        Some(vec![body.queue_state()])
    }

    fn save(&self) -> DeviceState {
        DeviceState::Rng(persist::RngState {})
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        match state {
            DeviceState::Rng(_) => Ok(()),
            other => Err(PersistError::WrongKind {
                saved: other.kind(),
                here: "virtio-rng",
            }),
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
