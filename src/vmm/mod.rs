//! The embedded VMM run as `deskd vmm` (one process per VM).
//!
//! It boots an unmodified Debian cloud kernel (bzImage + initrd) with the 64-bit boot protocol,
//! describes the platform with ACPI, and runs until the guest powers off or reboots. The process
//! exit status says how the VM ended (see [`exit::VmExit`]): 0 poweroff, 1 could not start,
//! 2 bad arguments, 3 guest reboot, 4 hard stop after the shutdown timeout, 5 VM failure.
//!
//! SIGTERM and SIGINT press the ACPI power button; if the guest has not powered off after the
//! shutdown timeout, the VMM stops it hard. A control socket (optional) accepts JSON-line
//! commands: status, pause, resume, snapshot, shutdown (see [`control`]).
//!
//! `deskd vmm --restore DIR [--restore-paused]` starts the VM saved in a snapshot instead of
//! booting one (see [`snapshot`] for the layout, the overridable options and what a restored guest
//! sees).

// The VMM's face to the rest of deskd: its configuration, how it ended (and the file that says
// so), the control protocol, the host check, the hybrid-vsock client and the KVM probe. Everything
// else is the VMM's own business.
pub mod config;
pub mod confine;
pub mod control;
pub mod exit;
pub mod host;
pub mod kvmprobe;
pub mod pidfile;
pub mod snapshot;
pub mod vsock_client;

pub(crate) mod acpi;
pub(crate) mod arch;
pub(crate) mod capped_log;
pub(crate) mod device_wiring;
pub(crate) mod devices;
pub(crate) mod layout;
pub(crate) mod log_limit;
pub(crate) mod memory;
pub(crate) mod socket_path;
pub(crate) mod vcpu;
pub(crate) mod vm;

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use config::VmConfig;
pub use config::VmmArgs;
use control::{ControlServer, Controllable};
use exit::{VmExit, EXIT_START_FAILED};
use vm::Vm;

/// The VMM's `oom_score_adj`: well above the daemon's (systemd/deskd.service sets -500).
const VMM_OOM_SCORE_ADJ: &str = "500";

/// Eventfd the SIGTERM/SIGINT handler writes to (-1 before it exists).
static SIGNAL_EVENTFD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGNAL_EVENTFD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer and `fd` is an
        // eventfd that lives until the process exits.
        unsafe {
            libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>());
        }
    }
}

impl Controllable for Vm {
    fn status(&self) -> control::VmStatus {
        Vm::status(self)
    }
    fn pause(&self) -> Result<(), String> {
        Vm::pause(self).map_err(|e| e.to_string())
    }
    fn resume(&self) {
        Vm::resume(self)
    }
    fn snapshot(&self, dir: &std::path::Path) -> Result<control::SnapshotDone, String> {
        Vm::snapshot(self, dir)
            .map(|info| control::SnapshotDone {
                memory_bytes: info.memory_bytes,
                memory_data_bytes: info.memory_data_bytes,
                snapshot_ms: info.took_ms,
            })
            .map_err(|e| e.to_string())
    }
    fn set_net_limit(&self, card: usize, limit: config::NetRateLimit) -> Result<(), String> {
        Vm::set_net_limit(self, card, limit).map_err(|e| e.to_string())
    }
    fn grow_disk(&self, disk: usize, size_bytes: u64) -> Result<u64, String> {
        Vm::grow_disk(self, disk, size_bytes).map_err(|e| e.to_string())
    }
    fn shutdown(&self) {
        self.request_shutdown()
    }
    fn force_stop(&self) {
        Vm::force_stop(self)
    }
}

/// The VMM's log goes to stderr, or to a size-capped file when one is configured (a guest can
/// make the VMM log, so the file must not grow without end).
fn init_logging(log_file: Option<&std::path::Path>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DESKD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let capped = log_file.map(|path| {
        capped_log::CappedLog::open(path, capped_log::DEFAULT_CAP_BYTES).map_err(|e| (path, e))
    });
    let _ = match capped {
        Some(Ok(log)) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(log))
            .try_init(),
        Some(Err((path, e))) => {
            eprintln!(
                "deskd vmm: cannot open the log file {}: {e}; logging to stderr",
                path.display()
            );
            builder.with_writer(std::io::stderr).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Boots and runs one VM until it ends; the exit status says how it ended.
pub fn run(args: VmmArgs) -> ExitCode {
    let started = Instant::now();
    let (config, restore) = match load_config(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("deskd vmm: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    init_logging(config.log_file.as_deref());
    // Under memory pressure the kernel should end a VM (one computer) before the daemon (all of
    // them): the daemon's unit lowers its own score, each VMM raises its own, which needs no
    // privilege.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", VMM_OOM_SCORE_ADJ) {
        tracing::debug!("cannot raise this VMM's OOM score: {e}");
    }
    if let Some(path) = &config.pid_file {
        if let Err(e) = pidfile::write_own(path) {
            eprintln!(
                "deskd vmm: cannot write the pid file {}: {e}; not starting a VM nobody could find again",
                path.display()
            );
            return ExitCode::from(EXIT_START_FAILED);
        }
    }
    let signal_evt = match setup_signals() {
        Ok(evt) => evt,
        Err(e) => {
            eprintln!("deskd vmm: cannot set up signal handling: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    // Opened now and kept: a confined VMM can open nothing in its directory's place later, and
    // its SIGSYS handler writes through this descriptor.
    let status_file = match config
        .exit_status_file
        .as_deref()
        .map(exit::StatusFile::create)
    {
        None => None,
        Some(Ok(file)) => Some(file),
        Some(Err(e)) => {
            eprintln!("deskd vmm: cannot create the exit status file: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    if let Some(Err(e)) = status_file.as_ref().map(exit::StatusFile::end_on_panic) {
        eprintln!("deskd vmm: cannot prepare the exit status file for panics: {e}");
        return ExitCode::from(EXIT_START_FAILED);
    }
    // Bound before confinement, while the VMM may still create files anywhere it is told to;
    // served once the VM exists (clients wait in the backlog until then).
    let mut control = match config.control_socket.as_deref().map(ControlServer::bind) {
        None => None,
        Some(Ok(server)) => Some(server),
        Some(Err(e)) => {
            eprintln!("deskd vmm: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let confinement = match confine::Confinement::prepare(
        &config,
        status_file.as_ref().map(exit::StatusFile::raw_fd),
    ) {
        Ok(confinement) => confinement,
        Err(e) => {
            eprintln!("deskd vmm: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    if confinement.is_none() {
        tracing::info!("this VMM is not confined (no confine settings, or --no-confine)");
    }
    let built = match &restore {
        None => Vm::start(&config, confinement),
        Some((dir, state)) => Vm::restore(&config, dir, state, args.restore_paused, confinement),
    };
    drop(restore);
    let vm = match built {
        Ok(vm) => Arc::new(vm),
        Err(e) => {
            eprintln!("deskd vmm: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let wake = match EventFd::new(EFD_NONBLOCK) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("deskd vmm: cannot create an eventfd: {e}");
            return VmExit::Failed.exit_code();
        }
    };
    if let Some(server) = control.as_mut() {
        let served = wake
            .try_clone()
            .map_err(|e| e.to_string())
            .and_then(|w| server.serve(vm.clone(), w).map_err(|e| e.to_string()));
        if let Err(e) = served {
            eprintln!("deskd vmm: {e}");
            vm.force_stop();
            if !vm.stop_vcpus() {
                std::mem::forget(vm);
            }
            return ExitCode::from(EXIT_START_FAILED);
        }
    }
    confine::arm_debug_hook();
    // From here the main thread only waits for the end, stops the vCPUs and writes the status.
    if let Err(e) = confine::enter_thread(confine::ThreadKind::Main) {
        tracing::error!("{e}; stopping the VM");
        vm.force_stop();
    }
    let how = wait_for_end(&vm, &signal_evt, &wake);
    drop(control);
    if !vm.stop_vcpus() {
        // A vCPU still runs guest code: unmapping guest memory under it would fault, so leave
        // the VM to the process exit.
        std::mem::forget(vm);
    }
    tracing::info!(
        "VM ended: {} after {:?} (exit status {})",
        how.as_str(),
        started.elapsed(),
        how.status()
    );
    if let Some(file) = &status_file {
        if let Err(e) = file.write(how) {
            tracing::warn!("cannot write the exit status file: {e}");
        }
    }
    how.exit_code()
}

/// The configuration to run with, and the snapshot to restore (if `--restore`), checked.
#[allow(clippy::type_complexity)]
fn load_config(
    args: &VmmArgs,
) -> Result<
    (
        VmConfig,
        Option<(std::path::PathBuf, snapshot::SnapshotState)>,
    ),
    String,
> {
    let Some(dir) = &args.restore else {
        if args.restore_paused {
            return Err(config::ConfigError::PausedWithoutRestore.to_string());
        }
        let config = VmConfig::from_args(args).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        return Ok((config, None));
    };
    let mut state = snapshot::read_state(dir).map_err(|e| e.to_string())?;
    let config = VmConfig::for_restore(state.config.clone(), args).map_err(|e| e.to_string())?;
    config.validate_runtime().map_err(|e| e.to_string())?;
    state.config = config.clone();
    Ok((config, Some((dir.clone(), state))))
}

/// Routes SIGTERM and SIGINT to an eventfd the lifecycle loop watches.
fn setup_signals() -> std::io::Result<EventFd> {
    let evt = EventFd::new(EFD_NONBLOCK)?;
    SIGNAL_EVENTFD.store(evt.as_raw_fd(), Ordering::SeqCst);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(signal, on_terminate)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(evt)
}

/// Waits until the VM ends: guest poweroff/reboot/failure, a termination signal followed by the
/// guest's poweroff, or the hard-stop deadline.
fn wait_for_end(vm: &Vm, signal_evt: &EventFd, wake: &EventFd) -> VmExit {
    loop {
        if let Some(how) = vm.exit_notifier().reason() {
            return how;
        }
        let timeout_ms = match vm.shutdown_deadline() {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    tracing::warn!("the guest did not power off in time; stopping it hard");
                    vm.force_stop();
                    continue;
                }
                i32::try_from((deadline - now).as_millis() + 1).unwrap_or(i32::MAX)
            }
            None => -1,
        };
        let mut fds = [
            libc::pollfd {
                fd: vm.exit_notifier().eventfd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signal_evt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd for its whole length during the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            // EINTR from our own signal handlers; anything else would repeat, so back off.
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!("poll failed: {err}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let _ = signal_evt.read();
            tracing::info!("termination signal: pressing the power button");
            vm.request_shutdown();
        }
        if fds[2].revents & libc::POLLIN != 0 {
            let _ = wake.read();
        }
    }
}
