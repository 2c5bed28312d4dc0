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

/// What a device's worker thread runs. [`WorkerBody::run`] returns when the event loop reports
/// [`STOP_TOKEN`], always between two batches of queue work (a queue boundary: every chain it took
/// is in the used ring), and the body keeps its queues and backend state, so a paused device runs
/// on from exactly where it stopped.
pub trait WorkerBody: Send + 'static {
    fn run(&mut self, event_loop: &EventLoop);
}

enum WorkerState<B> {
    Running(JoinHandle<(B, EventLoop)>),
    Paused(B, EventLoop),
    /// The thread panicked or could not be restarted; the device waits for a driver reset.
    Lost,
}

/// A device thread that can be paused (the thread ends, its body and epoll set are kept) and
/// resumed (a new thread runs the same body). Dropping it stops the thread and joins it, so a reset
/// never leaves a thread touching guest memory.
pub struct Worker<B: WorkerBody> {
    name: &'static str,
    stop_evt: EventFd,
    state: WorkerState<B>,
}

impl<B: WorkerBody> std::fmt::Debug for Worker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            WorkerState::Running(_) => "running",
            WorkerState::Paused(..) => "paused",
            WorkerState::Lost => "lost",
        };
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("state", &state)
            .finish()
    }
}

/// Starts the worker thread (through the spawner once the VMM is confined: see
/// `confine::spawner`). Its first act is to install the worker filter: the guest drives it.
fn spawn_thread<B: WorkerBody>(
    name: &'static str,
    mut body: B,
    event_loop: EventLoop,
) -> io::Result<JoinHandle<(B, EventLoop)>> {
    use crate::vmm::confine;
    confine::spawner::spawn(name, move || {
        if let Err(e) = confine::enter_thread(confine::ThreadKind::Worker) {
            // A device that cannot run confined must not run: end the VM (status 5, failed).
            tracing::error!("{name}: {e}; ending the VM");
            std::process::exit(i32::from(crate::vmm::exit::VmExit::Failed.status()));
        }
        body.run(&event_loop);
        (body, event_loop)
    })
}

impl<B: WorkerBody> Worker<B> {
    /// Starts `body` on a thread named `name`, sleeping in `event_loop`, to which the stop
    /// `EventFd` is added here under [`STOP_TOKEN`].
    pub fn start(name: &'static str, event_loop: EventLoop, body: B) -> io::Result<Self> {
        let stop_evt = EventFd::new(EFD_NONBLOCK)?;
        // The registration lives as long as `stop_evt` (same open file), which the Worker keeps.
        event_loop.add(stop_evt.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        let thread = spawn_thread(name, body, event_loop)?;
        Ok(Worker {
            name,
            stop_evt,
            state: WorkerState::Running(thread),
        })
    }

    /// Stops the thread at its next queue boundary and keeps its body. No-op unless running.
    pub fn pause(&mut self) {
        if !matches!(self.state, WorkerState::Running(_)) {
            return;
        }
        let WorkerState::Running(thread) = std::mem::replace(&mut self.state, WorkerState::Lost)
        else {
            return;
        };
        if let Err(e) = self.stop_evt.write(1) {
            tracing::error!(
                "{}: cannot wake the device worker to stop it: {e}",
                self.name
            );
        }
        match thread.join() {
            Ok((body, event_loop)) => {
                // The next run must not see this stop request.
                drain(&self.stop_evt);
                self.state = WorkerState::Paused(body, event_loop);
            }
            Err(_) => {
                WORKER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::error!("{}: the device worker thread panicked", self.name);
            }
        }
    }

    /// Runs the paused body on a new thread. No-op unless paused.
    pub fn resume(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.state, WorkerState::Lost) {
            WorkerState::Paused(body, event_loop) => {
                self.state = WorkerState::Running(spawn_thread(self.name, body, event_loop)?);
                Ok(())
            }
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    /// The body, while paused.
    pub fn paused_body(&self) -> Option<&B> {
        match &self.state {
            WorkerState::Paused(body, _) => Some(body),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn is_paused(&self) -> bool {
        matches!(self.state, WorkerState::Paused(..))
    }
}

impl<B: WorkerBody> Drop for Worker<B> {
    fn drop(&mut self) {
        self.pause();
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
        self.wait_at_most(-1, events)
    }

    /// The fds ready now, without waiting (the fuzz targets drive devices step by step).
    #[cfg(test)]
    pub fn ready_now(&self, events: &mut [EpollEvent]) -> io::Result<Vec<(u64, EventSet)>> {
        self.wait_at_most(0, events)
    }

    /// [`EventLoop::wait`] for at most `timeout_ms` (-1: no limit).
    pub fn wait_at_most(
        &self,
        timeout_ms: i32,
        events: &mut [EpollEvent],
    ) -> io::Result<Vec<(u64, EventSet)>> {
        loop {
            match self.epoll.wait(timeout_ms, events) {
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

/// How a one-queue device serves one chain: the number of bytes it wrote for the used ring.
pub type ChainHandler =
    Box<dyn FnMut(&super::GuestMemory, &super::chain::Chain) -> Result<u32, QueueError> + Send>;

/// The worker body of a one-queue device (block, rng): sleep until the queue is notified, process
/// it with the handler, repeat until stopped. A queue error marks the device `DEVICE_NEEDS_RESET`
/// and further notifications are ignored until the driver resets it (which drops the worker).
pub struct SingleQueue {
    name: &'static str,
    mem: super::GuestMemory,
    interrupt: std::sync::Arc<super::Interrupt>,
    queue: virtio_queue::Queue,
    evt: EventFd,
    max_len: u64,
    handle: ChainHandler,
    broken: bool,
}

impl SingleQueue {
    /// The queue as the worker left it (for a snapshot, while paused).
    pub fn queue_state(&self) -> virtio_queue::QueueState {
        self.queue.state()
    }
}

const SINGLE_QUEUE_TOKEN: u64 = 0;

impl WorkerBody for SingleQueue {
    fn run(&mut self, event_loop: &EventLoop) {
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let ready = match event_loop.wait(&mut events) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("{}: epoll_wait failed: {e}", self.name);
                    self.interrupt.set_needs_reset();
                    self.broken = true;
                    // Sleeping here instead of returning keeps the stop request answerable.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            for (token, _) in ready {
                if token == STOP_TOKEN {
                    return;
                }
                drain(&self.evt);
                if self.broken {
                    continue;
                }
                let (mem, handle) = (&self.mem, &mut self.handle);
                let handle = |chain: &super::chain::Chain| handle(mem, chain);
                if let Err(e) =
                    process_queue(mem, &mut self.queue, &self.interrupt, self.max_len, handle)
                {
                    static NEEDS_RESET: crate::vmm::log_limit::LogLimit =
                        crate::vmm::log_limit::LogLimit::new(10_000);
                    crate::warn_limited!(
                        NEEDS_RESET,
                        "{}: {e}; the device needs a reset by the driver",
                        self.name
                    );
                    self.broken = true;
                    self.interrupt.set_needs_reset();
                }
            }
        }
    }
}

/// Starts the worker of a one-queue device (block, rng): checks that the transport handed over
/// exactly one queue, then runs the queue loop on a thread named `name`.
pub fn spawn_single_queue(
    name: &'static str,
    mem: super::GuestMemory,
    interrupt: std::sync::Arc<super::Interrupt>,
    queues: Vec<virtio_queue::Queue>,
    queue_evts: Vec<EventFd>,
    max_len: u64,
    handle: ChainHandler,
) -> Result<Worker<SingleQueue>, super::ActivateError> {
    let got = queues.len();
    let (Ok([queue]), Ok([evt])) = (
        <[virtio_queue::Queue; 1]>::try_from(queues),
        <[EventFd; 1]>::try_from(queue_evts),
    ) else {
        return Err(super::ActivateError::QueueCount { want: 1, got });
    };
    let event_loop = EventLoop::new().map_err(super::ActivateError::Worker)?;
    event_loop
        .add(evt.as_raw_fd(), SINGLE_QUEUE_TOKEN, EventSet::IN)
        .map_err(super::ActivateError::Worker)?;
    let broken = interrupt.needs_reset();
    let body = SingleQueue {
        name,
        mem,
        interrupt,
        queue,
        evt,
        max_len,
        handle,
        broken,
    };
    Worker::start(name, event_loop, body).map_err(super::ActivateError::Worker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Counts kicks of one eventfd; the count lives in the body (kept across pauses) and is
    /// mirrored to a shared counter for the test to watch.
    struct Counter {
        kick: EventFd,
        count: u32,
        seen: Arc<AtomicU32>,
    }

    impl WorkerBody for Counter {
        fn run(&mut self, event_loop: &EventLoop) {
            let mut events = vec![EpollEvent::default(); 4];
            loop {
                for (token, _) in event_loop.wait(&mut events).unwrap() {
                    if token == STOP_TOKEN {
                        return;
                    }
                    drain(&self.kick);
                    self.count += 1;
                    self.seen.store(self.count, Ordering::SeqCst);
                }
            }
        }
    }

    fn wait_for(seen: &AtomicU32, want: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if seen.load(Ordering::SeqCst) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn a_paused_worker_keeps_its_body_and_its_pending_kicks() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let event_loop = EventLoop::new().unwrap();
        event_loop.add(kick.as_raw_fd(), 0, EventSet::IN).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let body = Counter {
            kick: kick.try_clone().unwrap(),
            count: 0,
            seen: seen.clone(),
        };
        let mut worker = Worker::start("test-worker", event_loop, body).unwrap();
        kick.write(1).unwrap();
        assert!(wait_for(&seen, 1));
        worker.pause();
        assert!(worker.is_paused());
        assert_eq!(worker.paused_body().unwrap().count, 1);
        // A kick while paused is not lost: it is served after the resume.
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), 1, "a paused worker ran");
        worker.resume().unwrap();
        assert!(!worker.is_paused());
        assert!(worker.paused_body().is_none());
        assert!(wait_for(&seen, 2));
        // Resume twice, pause twice: harmless.
        worker.resume().unwrap();
        worker.pause();
        worker.pause();
        assert_eq!(worker.paused_body().unwrap().count, 2);
        drop(worker);
        assert_eq!(WORKER_PANICS.load(Ordering::SeqCst), 0);
    }
}
