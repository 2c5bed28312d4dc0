//! The worker spawner: a thread that starts device worker threads for others. A vCPU thread
//! activates a virtio device when the guest's driver asks (an MMIO write), and a control thread
//! restarts workers on resume; if they started the worker threads themselves, the workers would
//! inherit the vCPU's or control's seccomp filter, and both would have to allow everything a
//! worker does (sockets, disk I/O). The spawner keeps the setup filter, which allows starting
//! threads; each worker then installs its own filter first thing (`ThreadKind::Worker`).
//!
//! Before confinement (and in tests) there is no spawner and threads are started directly.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the spawner thread; later [`spawn`]s go through it. Called once, by confinement,
/// after the setup filter is in place (the spawner inherits it).
pub fn start() -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    SPAWNER
        .set(Mutex::new(tx))
        .map_err(|_| io::Error::other("the worker spawner was started twice"))
}

/// Starts `f` on a new thread named `name`: through the spawner once there is one, directly
/// before that.
pub fn spawn<T, F>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let builder = std::thread::Builder::new().name(name.to_string());
    let Some(spawner) = SPAWNER.get() else {
        return builder.spawn(f);
    };
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = done_tx.send(builder.spawn(f));
    });
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the worker spawner thread has ended"))?;
    done_rx
        .recv()
        .map_err(|_| io::Error::other("the worker spawner thread has ended"))?
}
