//! vCPU threads: one per vCPU, each looping on `KVM_RUN` and dispatching port I/O and MMIO exits
//! to the buses. Pausing parks every thread outside `KVM_RUN`; a real-time signal kicks a thread
//! out of `KVM_RUN` so it notices. A parked thread runs jobs handed to it (reading its vCPU's
//! state for a snapshot), so each vCPU fd stays with its own thread.

pub mod persist;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::devices::bus::Bus;
use super::exit::{ExitNotifier, VmExit};

/// Why the vCPU threads could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot start a vCPU thread: {0}; check the process thread limit")]
    Spawn(std::io::Error),
    #[error("the vCPUs did not stop within {0:?}")]
    PauseTimeout(Duration),
    #[error("the VM is not paused; pause it first")]
    NotPaused,
    #[error("vCPU {0} did not answer within {1:?} (its thread has ended?)")]
    JobTimeout(usize, Duration),
    #[error(transparent)]
    Persist(#[from] persist::VcpuPersistError),
}

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only job is to make KVM_RUN return EINTR.
}

/// Installs the (empty) kick handler; call once before starting vCPU threads.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal)
}

/// Work for a parked vCPU thread, given its vCPU.
type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

struct GateState<T> {
    paused: bool,
    /// vCPU threads currently parked at the gate.
    parked: usize,
    /// One slot per vCPU index: a job its thread runs while parked.
    jobs: Vec<Option<Job<T>>>,
}

impl<T> Default for GateState<T> {
    fn default() -> Self {
        GateState {
            paused: false,
            parked: 0,
            jobs: Vec::new(),
        }
    }
}

/// Where vCPU threads wait while the VM is paused. `T` is what a parked thread hands its jobs
/// (its `VcpuFd`; tests use something simpler).
pub struct PauseGate<T = VcpuFd> {
    state: Mutex<GateState<T>>,
    changed: Condvar,
}

impl<T> Default for PauseGate<T> {
    fn default() -> Self {
        PauseGate {
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
        }
    }
}

impl<T> PauseGate<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by vCPU thread `index` before each `KVM_RUN`: blocks while the VM is paused,
    /// running the jobs handed to it meanwhile.
    pub fn park_if_paused(&self, index: usize, target: &mut T) {
        let mut state = self.lock();
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused {
            if let Some(job) = state.jobs.get_mut(index).and_then(Option::take) {
                drop(state);
                job(target);
                state = self.lock();
                continue;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// Hands `job` to parked thread `index`.
    fn give_job(&self, index: usize, job: Job<T>) {
        let mut state = self.lock();
        if state.jobs.len() <= index {
            state.jobs.resize_with(index + 1, || None);
        }
        state.jobs[index] = Some(job);
        self.changed.notify_all();
    }

    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Waits up to `timeout` for `count` threads to be parked.
    fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.parked < count)
            .unwrap_or_else(|e| e.into_inner());
        state.parked >= count
    }
}

/// The running vCPU threads.
pub struct VcpuThreads {
    threads: Vec<JoinHandle<()>>,
    gate: Arc<PauseGate<VcpuFd>>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU; with `paused` they park before their first `KVM_RUN`.
    pub fn start(
        vcpus: Vec<VcpuFd>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitNotifier>,
        paused: bool,
    ) -> Result<Self, VcpuError> {
        let gate = Arc::new(PauseGate::default());
        gate.set_paused(paused);
        let mut threads = Vec::with_capacity(vcpus.len());
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let (pio, mmio, exit, gate) = (pio.clone(), mmio.clone(), exit.clone(), gate.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || run_vcpu(index, vcpu, &pio, &mmio, &exit, &gate))
                .map_err(VcpuError::Spawn)?;
            threads.push(thread);
        }
        Ok(VcpuThreads { threads, gate })
    }

    fn kick_all(&self) {
        for thread in &self.threads {
            // ESRCH for a thread that already returned is fine: it is not running the guest.
            let _ = thread.kill(kick_signal());
        }
    }

    /// Stops every vCPU outside `KVM_RUN` and keeps it there until [`Self::resume`].
    pub fn pause(&self, timeout: Duration) -> Result<(), VcpuError> {
        self.gate.set_paused(true);
        let live = self.threads.iter().filter(|t| !t.is_finished()).count();
        let deadline = Instant::now() + timeout;
        // A kick that lands just before a thread enters KVM_RUN is lost, so kick until every
        // thread has parked.
        loop {
            self.kick_all();
            if self.gate.wait_parked(live, Duration::from_millis(10)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.gate.set_paused(false);
                return Err(VcpuError::PauseTimeout(timeout));
            }
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.gate.set_paused(false);
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// While paused: reads every vCPU's state on its own thread (see [`persist::save`]).
    pub fn save_states(
        &self,
        msr_index: &Arc<Vec<u32>>,
        timeout: Duration,
    ) -> Result<Vec<persist::VcpuState>, VcpuError> {
        if !self.gate.is_paused() {
            return Err(VcpuError::NotPaused);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        for index in 0..self.threads.len() {
            let (tx, msr_index) = (tx.clone(), msr_index.clone());
            self.gate.give_job(
                index,
                Box::new(move |vcpu: &mut VcpuFd| {
                    let _ = tx.send((index, persist::save(index, vcpu, &msr_index)));
                }),
            );
        }
        drop(tx);
        let mut states: Vec<Option<persist::VcpuState>> =
            (0..self.threads.len()).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        for _ in 0..self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let missing = || states.iter().position(Option::is_none).unwrap_or(0);
            match rx.recv_timeout(left) {
                Ok((index, state)) => states[index] = Some(state?),
                Err(_) => return Err(VcpuError::JobTimeout(missing(), timeout)),
            }
        }
        states
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.ok_or(VcpuError::JobTimeout(i, timeout)))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// Once the VM's exit reason is set: kicks every vCPU out of the guest and waits up to
    /// `timeout` for the threads to return. True if they all did.
    pub fn stop(&self, timeout: Duration) -> bool {
        self.gate.set_paused(false);
        let deadline = Instant::now() + timeout;
        loop {
            if self.threads.iter().all(|t| t.is_finished()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What the loop does after one exit.
enum Next {
    Continue,
    Stop(VmExit),
}

fn run_vcpu(
    index: usize,
    mut vcpu: VcpuFd,
    pio: &Bus,
    mmio: &Bus,
    exit: &ExitNotifier,
    gate: &PauseGate<VcpuFd>,
) {
    // Before the first KVM_RUN: from here on the guest drives this thread.
    if let Err(e) = crate::vmm::confine::enter_thread(crate::vmm::confine::ThreadKind::Vcpu) {
        tracing::error!("vcpu{index}: {e}");
        exit.request(VmExit::Failed);
        return;
    }
    loop {
        if exit.reason().is_some() {
            return;
        }
        gate.park_if_paused(index, &mut vcpu);
        let next = match vcpu.run() {
            Ok(vcpu_exit) => handle_exit(index, vcpu_exit, pio, mmio),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            // The VM is being torn down (guest memory may already be gone): just stop.
            Err(_) if exit.reason().is_some() => return,
            Err(e) => {
                tracing::error!("vcpu{index}: KVM_RUN failed: {e}");
                Next::Stop(VmExit::Failed)
            }
        };
        if let Next::Stop(why) = next {
            exit.request(why);
            return;
        }
    }
}

fn handle_exit(index: usize, vcpu_exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Next {
    match vcpu_exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                // Nothing decodes this port: an ISA bus floats high.
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
        }
        // With the in-kernel irqchip HLT is handled by KVM; if it ever comes here, just resume.
        VcpuExit::Hlt => {}
        VcpuExit::Shutdown => {
            tracing::info!("vcpu{index}: triple fault (guest reset)");
            return Next::Stop(VmExit::Reboot);
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Next::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                KVM_SYSTEM_EVENT_RESET => VmExit::Reboot,
                KVM_SYSTEM_EVENT_CRASH => VmExit::Failed,
                _ => {
                    tracing::error!("vcpu{index}: unknown system event {kind}");
                    VmExit::Failed
                }
            });
        }
        VcpuExit::FailEntry(reason, cpu) => {
            tracing::error!("vcpu{index}: VM entry failed (reason {reason:#x}, cpu {cpu})");
            return Next::Stop(VmExit::Failed);
        }
        VcpuExit::InternalError => {
            tracing::error!("vcpu{index}: KVM internal error");
            return Next::Stop(VmExit::Failed);
        }
        other => {
            tracing::error!("vcpu{index}: unexpected exit {other:?}");
            return Next::Stop(VmExit::Failed);
        }
    }
    Next::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_parks_until_resumed() {
        let gate = Arc::new(PauseGate::<u32>::default());
        gate.set_paused(true);
        let g = gate.clone();
        let worker = std::thread::spawn(move || {
            let mut value = 7u32;
            g.park_if_paused(0, &mut value);
            value
        });
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        assert!(!worker.is_finished());
        // A parked thread runs the jobs it is given, on its own value, and stays parked.
        let (tx, rx) = std::sync::mpsc::channel();
        gate.give_job(
            0,
            Box::new(move |v: &mut u32| {
                *v += 1;
                tx.send(*v).unwrap();
            }),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 8);
        assert!(!worker.is_finished());
        gate.resume_for_test();
        assert_eq!(worker.join().unwrap(), 8);
        assert!(gate.wait_parked(0, Duration::from_millis(1)));
    }

    impl<T> PauseGate<T> {
        fn resume_for_test(&self) {
            self.set_paused(false);
        }
    }

    #[test]
    fn unmapped_port_reads_float_high_and_mmio_reads_zero() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let mut byte = [0u8; 2];
        assert!(matches!(
            handle_exit(0, VcpuExit::IoIn(0x80, &mut byte), &pio, &mmio),
            Next::Continue
        ));
        assert_eq!(byte, [0xff, 0xff]);
        let mut word = [0xaau8; 4];
        handle_exit(0, VcpuExit::MmioRead(0xd000_0000, &mut word), &pio, &mmio);
        assert_eq!(word, [0; 4]);
        assert!(matches!(
            handle_exit(0, VcpuExit::Shutdown, &pio, &mmio),
            Next::Stop(VmExit::Reboot)
        ));
        assert!(matches!(
            handle_exit(
                0,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &pio,
                &mmio
            ),
            Next::Stop(VmExit::PowerOff)
        ));
    }
}
