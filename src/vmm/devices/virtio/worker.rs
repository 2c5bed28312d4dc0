//! The worker thread of an active device and the epoll loop it sleeps in.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Worker threads that ended in a panic (tests assert it stays zero; the VMM only logs it).
pub static WORKER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Token the stop `EventFd` is registered under in every worker's epoll set.
pub const STOP_TOKEN: u64 = u64::MAX;

/// A running device thread. Dropping it (or [`Worker::stop`]) wakes the thread through its stop
/// `EventFd` and joins it, so a reset never leaves a thread touching guest memory.
#[derive(Debug)]
pub struct Worker {
    stop_evt: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread named `name`. `body` gets an [`EventLoop`] that already watches the
    /// stop `EventFd`; it must return when [`EventLoop::wait`] reports [`STOP_TOKEN`].
    pub fn spawn<F>(name: &str, body: F) -> io::Result<Worker>
    where
        F: FnOnce(EventLoop) + Send + 'static,
    {
        let stop_evt = EventFd::new(EFD_NONBLOCK)?;
        let event_loop = EventLoop::new()?;
        let thread_stop = stop_evt.try_clone()?;
        event_loop.add(thread_stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Keeps the fd registered in the epoll set alive as long as the thread runs.
                let _stop = thread_stop;
                body(event_loop)
            })?;
        Ok(Worker {
            stop_evt,
            thread: Some(thread),
        })
    }

    /// Asks the thread to end and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.stop_evt.write(1) {
                tracing::error!("virtio: cannot wake a device worker to stop it: {e}");
            }
            if thread.join().is_err() {
                WORKER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::error!("virtio: a device worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small epoll wrapper: fds are registered with a caller-chosen token.
#[derive(Debug)]
pub struct EventLoop {
    epoll: Epoll,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
        })
    }

    pub fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Blocks until at least one fd is ready; returns (token, events) pairs. EINTR is retried.
    pub fn wait(&self, events: &mut [EpollEvent]) -> io::Result<Vec<(u64, EventSet)>> {
        loop {
            match self.epoll.wait(-1, events) {
                Ok(n) => {
                    return Ok(events
                        .iter()
                        .take(n)
                        .map(|e| (e.data(), e.event_set()))
                        .collect())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Drains a non-blocking `EventFd`; a spurious wakeup (EAGAIN) is not an error.
pub fn drain(evt: &EventFd) {
    if let Err(e) = evt.read() {
        if e.kind() != io::ErrorKind::WouldBlock {
            tracing::warn!("virtio: reading a queue eventfd failed: {e}");
        }
    }
}

/// Why a queue can no longer be processed: the device must be reset by the driver.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid descriptor chain: {0}")]
    Chain(#[from] super::chain::ChainError),
    #[error("the driver's queue state is invalid: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("{0}")]
    Device(String),
}

/// The next chain the driver made available, validated (total length at most `max_len`), or
/// `None` when there is none. Before answering `None` it asks for a kick at the next new chain
/// (with EVENT_IDX the driver only kicks when asked) and looks once more, so a chain that raced
/// in is not left waiting for a kick that will not come. Two looks at most: it never spins.
pub fn next_chain(
    queue: &mut virtio_queue::Queue,
    mem: &super::GuestMemory,
    max_len: u64,
) -> Result<Option<super::chain::Chain>, QueueError> {
    use virtio_queue::{QueueOwnedT, QueueT};
    let mut desc_chain = queue.iter(mem)?.next();
    if desc_chain.is_none() && queue.enable_notification(mem)? {
        desc_chain = queue.iter(mem)?.next();
    }
    match desc_chain {
        Some(c) => Ok(Some(super::chain::Chain::parse(c, mem, max_len)?)),
        None => Ok(None),
    }
}

/// Takes every available chain of `queue`, validates it (total length at most `max_len`), lets
/// `handle` process it (returning the number of bytes written for the used ring), and returns it.
/// Raises one used-ring interrupt per batch. An error leaves the queue where it failed.
pub fn process_queue<F>(
    mem: &super::GuestMemory,
    queue: &mut virtio_queue::Queue,
    interrupt: &super::Interrupt,
    max_len: u64,
    mut handle: F,
) -> Result<(), QueueError>
where
    F: FnMut(&super::chain::Chain) -> Result<u32, QueueError>,
{
    use virtio_queue::QueueT;
    let mut used_any = false;
    let result = loop {
        let chain = match next_chain(queue, mem, max_len) {
            Ok(Some(chain)) => chain,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let len = match handle(&chain) {
            Ok(len) => len,
            Err(e) => break Err(e),
        };
        if let Err(e) = queue.add_used(mem, chain.head, len) {
            break Err(QueueError::Queue(e));
        }
        used_any = true;
    };
    signal_used(mem, queue, interrupt, used_any)?;
    result
}

/// Raises the used-ring interrupt after a batch, unless the driver (EVENT_IDX `used_event`) said
/// it does not need one yet.
pub fn signal_used(
    mem: &super::GuestMemory,
    queue: &mut virtio_queue::Queue,
    interrupt: &super::Interrupt,
    used_any: bool,
) -> Result<(), QueueError> {
    use virtio_queue::QueueT;
    if used_any && queue.needs_notification(mem)? {
        interrupt.signal_used_queue();
    }
    Ok(())
}

/// Starts the worker of a one-queue device (block, rng): checks that the transport handed over
/// exactly one queue, then runs the queue loop on a thread named `name`.
pub fn spawn_single_queue<F>(
    name: &'static str,
    mem: super::GuestMemory,
    interrupt: std::sync::Arc<super::Interrupt>,
    queues: Vec<virtio_queue::Queue>,
    queue_evts: Vec<EventFd>,
    max_len: u64,
    handle: F,
) -> Result<Worker, super::ActivateError>
where
    F: FnMut(&super::GuestMemory, &super::chain::Chain) -> Result<u32, QueueError> + Send + 'static,
{
    let got = queues.len();
    let (Ok([queue]), Ok([evt])) = (
        <[virtio_queue::Queue; 1]>::try_from(queues),
        <[EventFd; 1]>::try_from(queue_evts),
    ) else {
        return Err(super::ActivateError::QueueCount { want: 1, got });
    };
    Worker::spawn(name, move |event_loop| {
        serve_single_queue(
            name, event_loop, &mem, &interrupt, queue, &evt, max_len, handle,
        )
    })
    .map_err(super::ActivateError::Worker)
}

/// The whole life of a one-queue device's worker: sleep until the queue is notified, process it
/// with `handle`, repeat until stopped. A queue error marks the device `DEVICE_NEEDS_RESET` and
/// further notifications are ignored until the driver resets it (which stops this thread).
#[allow(clippy::too_many_arguments)]
fn serve_single_queue<F>(
    name: &str,
    event_loop: EventLoop,
    mem: &super::GuestMemory,
    interrupt: &super::Interrupt,
    mut queue: virtio_queue::Queue,
    evt: &EventFd,
    max_len: u64,
    mut handle: F,
) where
    F: FnMut(&super::GuestMemory, &super::chain::Chain) -> Result<u32, QueueError>,
{
    const QUEUE_TOKEN: u64 = 0;
    if let Err(e) = event_loop.add(evt.as_raw_fd(), QUEUE_TOKEN, EventSet::IN) {
        tracing::error!("{name}: cannot watch the queue eventfd: {e}");
        interrupt.set_needs_reset();
        return;
    }
    let mut events = vec![EpollEvent::default(); 4];
    let mut broken = false;
    loop {
        let ready = match event_loop.wait(&mut events) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("{name}: epoll_wait failed: {e}");
                interrupt.set_needs_reset();
                return;
            }
        };
        for (token, _) in ready {
            if token == STOP_TOKEN {
                return;
            }
            drain(evt);
            if broken {
                continue;
            }
            let handle = |chain: &super::chain::Chain| handle(mem, chain);
            if let Err(e) = process_queue(mem, &mut queue, interrupt, max_len, handle) {
                static NEEDS_RESET: crate::vmm::log_limit::LogLimit =
                    crate::vmm::log_limit::LogLimit::new(10_000);
                crate::warn_limited!(
                    NEEDS_RESET,
                    "{name}: {e}; the device needs a reset by the driver"
                );
                broken = true;
                interrupt.set_needs_reset();
            }
        }
    }
}
