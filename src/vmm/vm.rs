//! Building a VM from its configuration: KVM objects, memory, in-kernel irqchip and PIT, devices,
//! ACPI tables, the kernel, and the vCPUs in their boot state; then starting the vCPU threads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::acpi::{self, AcpiError, VirtioMmioWindow};
use super::arch::x86_64::boot::{self, BootError};
use super::arch::x86_64::cpuid::{self, VcpuTopology};
use super::arch::x86_64::regs::{self, RegsError};
use super::config::VmConfig;
use super::confine::{ConfineError, Confinement};
use super::control::{RunState, VmStatus};
use super::device_wiring::{self, VirtioError};
use super::devices::acpi_pm::{self, AcpiSleep};
use super::devices::bus::{Bus, BusError};
use super::devices::i8042::{self, I8042};
use super::devices::serial::{ConsoleOutput, SerialDevice, SerialError};
use super::exit::{ExitNotifier, VmExit};
use super::layout::{self, RamLayout};
use super::memory::{self, GuestMemory, MemoryError};
use super::snapshot::{self, memory as snapshot_memory, PendingSnapshot, SnapshotError};
use super::vcpu::{self, VcpuError, VcpuThreads};

pub mod persist;

/// Why the VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "/dev/kvm exists but this CPU has no hardware virtualization (no vmx or svm in \
         /proc/cpuinfo): it cannot boot a stock kernel. Run deskd on a host with VT-x/AMD-V \
         enabled, or inside the rig (tests/rig/run) on a nested cloud machine"
    )]
    NoHardwareVirtualization,
    #[error(
        "cannot open /dev/kvm: {0} (is the kvm module loaded and are you root or in group kvm?)"
    )]
    OpenKvm(kvm_ioctls::Error),
    #[error("this KVM lacks {0}, which deskd needs; use a newer host kernel")]
    MissingCapability(&'static str),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    VmState(#[from] persist::VmPersistError),
    #[error("the snapshot's memory layout does not match a {memory_mib} MiB VM; the snapshot is corrupt")]
    SnapshotLayout { memory_mib: u64 },
    #[error("the snapshot has {saved} vCPUs but its configuration says {config}; the snapshot is corrupt")]
    SnapshotVcpus { saved: usize, config: u8 },
    #[error(
        "a snapshot can be taken only while the VM is paused; send {{\"cmd\":\"pause\"}} first"
    )]
    NotPaused,
    #[error("the VM is ending; it cannot be paused, resumed, snapshotted or have a disk grown")]
    Ending,
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The port I/O devices, kept for snapshots.
struct LegacyDevices {
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    acpi_pm: Arc<Mutex<AcpiSleep>>,
}

/// What a finished snapshot holds, for the control answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub memory_bytes: u64,
    pub memory_data_bytes: u64,
    pub took_ms: u64,
}

/// A running VM. Dropping it does not stop the vCPU threads: the process exits instead.
pub struct Vm {
    // Kept alive for the lifetime of the VM: KVM objects and the memory they reference.
    kvm: Kvm,
    vm_fd: Arc<VmFd>,
    mem: GuestMemory,
    devices: device_wiring::AttachedDevices,
    legacy: LegacyDevices,
    config: VmConfig,
    /// Serializes pause, resume and snapshot (each control client has its own thread).
    control: Mutex<()>,
    vcpus: VcpuThreads,
    exit: Arc<ExitNotifier>,
    power_button: EventFd,
    started: Instant,
    memory_mib: u64,
    /// When a graceful shutdown turns into a hard stop, once one was asked for.
    shutdown_deadline: Mutex<Option<Instant>>,
    shutdown_timeout: Duration,
}

/// Capabilities the VMM relies on.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
    (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
    (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
    (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID (KVM_CAP_EXT_CPUID)"),
];

impl Vm {
    /// Builds the VM described by `config` (already validated) and starts its vCPUs; with
    /// `confinement`, the VMM confines itself once everything is open, before any thread starts.
    pub fn start(config: &VmConfig, confinement: Option<Confinement>) -> Result<Vm, VmError> {
        Vm::build(config, None, confinement)
    }

    /// Builds the VM saved in the snapshot at `dir`, as `config` (the saved configuration with
    /// the command line's overrides) says, and starts its vCPUs, paused if `paused`.
    pub fn restore(
        config: &VmConfig,
        dir: &std::path::Path,
        state: &snapshot::SnapshotState,
        paused: bool,
        confinement: Option<Confinement>,
    ) -> Result<Vm, VmError> {
        Vm::build(config, Some((dir, state, paused)), confinement)
    }

    fn build(
        config: &VmConfig,
        restore: Option<(&std::path::Path, &snapshot::SnapshotState, bool)>,
        confinement: Option<Confinement>,
    ) -> Result<Vm, VmError> {
        let started = Instant::now();
        memory::check_host_memory(config.memory_mib)?;
        if !crate::vmm::host::cpu_has_hardware_virtualization() {
            return Err(VmError::NoHardwareVirtualization);
        }
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, what) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(what));
            }
        }
        if let Some((_, state, _)) = restore {
            snapshot::HostFacts::probe(&kvm)?.check(&state.host)?;
            if state.vcpus.len() != usize::from(config.vcpus) {
                return Err(VmError::SnapshotVcpus {
                    saved: state.vcpus.len(),
                    config: config.vcpus,
                });
            }
        }
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("create a VM"))?);
        // Intel needs these two regions outside guest RAM before any vCPU exists.
        vm_fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(kvm_err("set the identity map address"))?;
        vm_fd
            .set_tss_address(layout::KVM_TSS_START as usize)
            .map_err(kvm_err("set the TSS address"))?;

        tracing::debug!("KVM VM created at {:?}", started.elapsed());
        let ram = RamLayout::new(config.memory_mib << 20);
        let mem = match restore {
            None => memory::allocate(&ram)?,
            Some((dir, state, _)) => {
                let expected: Vec<(u64, u64)> = ram.ranges();
                let saved: Vec<(u64, u64)> = state
                    .memory
                    .iter()
                    .map(|r| (r.guest_addr, r.size))
                    .collect();
                if expected != saved {
                    return Err(VmError::SnapshotLayout {
                        memory_mib: config.memory_mib,
                    });
                }
                snapshot_memory::map_private(&dir.join(snapshot::MEMORY_FILE), &state.memory)
                    .map_err(SnapshotError::from)?
            }
        };
        memory::register(&vm_fd, &mem)?;
        tracing::debug!("memory registered at {:?}", started.elapsed());

        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;

        let exit = Arc::new(ExitNotifier::new().map_err(VmError::EventFd)?);
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let legacy = add_legacy_devices(
            &vm_fd,
            &mut pio,
            config,
            &exit,
            restore.map(|(_, s, _)| &s.legacy),
        )?;
        let power_button = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&power_button, layout::POWER_BUTTON_GSI)
            .map_err(kvm_err("register the power button interrupt"))?;

        let devices = device_wiring::attach(&vm_fd, &mem, &mut mmio, config)?;
        let windows: Vec<VirtioMmioWindow> = devices.windows().to_vec();
        let boot_rip = match restore {
            None => {
                acpi::build(config.vcpus, &windows)?.write_to(&mem)?;
                tracing::debug!("devices and ACPI ready at {:?}", started.elapsed());
                let (entry, format) = boot::load(
                    &mem,
                    &ram,
                    &config.kernel,
                    config.initrd.as_deref(),
                    &config.cmdline,
                    config.host_decompress,
                )?;
                tracing::debug!("kernel loaded ({format:?}) at {:?}", started.elapsed());
                regs::write_boot_tables(&mem)?;
                Some(entry.rip)
            }
            Some(_) => None,
        };
        // Everything the VMM opens is open (KVM, memory, disks, TAP, sockets, logs; the kernel
        // read), and this is still its only thread: confine it before any thread starts.
        if let Some(confinement) = confinement {
            confinement.enter()?;
            tracing::debug!("confined at {:?}", started.elapsed());
        }
        let vcpu_fds = match restore {
            None => create_vcpus(&kvm, &vm_fd, config.vcpus, boot_rip.unwrap_or_default())?,
            Some((_, state, _)) => {
                // ACPI tables, kernel and page tables are in the restored RAM already.
                persist::restore(&vm_fd, &state.vm)?;
                let mut fds = Vec::with_capacity(state.vcpus.len());
                for (index, saved) in state.vcpus.iter().enumerate() {
                    let fd = vm_fd
                        .create_vcpu(index as u64)
                        .map_err(kvm_err("create a vCPU"))?;
                    vcpu::persist::restore(index, &fd, saved).map_err(VcpuError::from)?;
                    fds.push(fd);
                }
                persist::restore_clock(&vm_fd, &state.vm)?;
                // The devices last: a restored device's worker starts at once and may interrupt
                // the guest (vsock sends its transport reset). Restoring the irqchip
                // (KVM_SET_IRQCHIP) or a vCPU's local APIC (KVM_SET_LAPIC) after that overwrote
                // the pending edge, so the guest handled the reset only at its next vsock
                // interrupt: it then reset the connection that interrupt had brought.
                devices.restore(&state.virtio)?;
                tracing::debug!("state restored at {:?}", started.elapsed());
                fds
            }
        };
        let start_paused = matches!(restore, Some((_, _, true)));
        if start_paused {
            devices.pause();
        }

        vcpu::install_kick_handler()?;
        let vcpus = VcpuThreads::start(
            vcpu_fds,
            Arc::new(pio),
            Arc::new(mmio),
            exit.clone(),
            start_paused,
        )?;
        tracing::info!(
            "VM {} in {:?}: {} vCPU(s), {} MiB, {} virtio device(s){}",
            if restore.is_some() {
                "restored"
            } else {
                "started"
            },
            started.elapsed(),
            config.vcpus,
            config.memory_mib,
            windows.len(),
            if start_paused { ", paused" } else { "" }
        );
        Ok(Vm {
            kvm,
            vm_fd,
            mem,
            devices,
            legacy,
            config: config.clone(),
            control: Mutex::new(()),
            vcpus,
            exit,
            power_button,
            started,
            memory_mib: config.memory_mib,
            shutdown_deadline: Mutex::new(None),
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
        })
    }

    /// Set once the VM should end.
    pub fn exit_notifier(&self) -> &ExitNotifier {
        &self.exit
    }

    /// Presses the ACPI power button and arms the hard-stop deadline (if not armed yet).
    pub fn request_shutdown(&self) {
        if let Err(e) = self.power_button.write(1) {
            tracing::error!("cannot press the power button: {e}");
        }
        let mut deadline = self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if deadline.is_none() {
            tracing::info!(
                "power button pressed; hard stop in {:?} unless the guest powers off",
                self.shutdown_timeout
            );
            *deadline = Some(Instant::now() + self.shutdown_timeout);
        }
        // A paused guest cannot react to the button.
        self.resume();
    }

    /// After the exit reason is set: gets the vCPU threads out of the guest. Returns false if some
    /// did not return in time; then the VM must not be dropped (its memory is still in use) and
    /// the process should just exit.
    pub fn stop_vcpus(&self) -> bool {
        self.vcpus.stop(Duration::from_millis(500))
    }

    /// Ends the VM now with a hard stop.
    pub fn force_stop(&self) {
        self.exit.request(VmExit::HardStop);
    }

    /// When the hard stop is due, if a shutdown was requested.
    pub fn shutdown_deadline(&self) -> Option<Instant> {
        *self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_control(&self) -> std::sync::MutexGuard<'_, ()> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every vCPU (outside KVM_RUN) and then every device worker (at a queue boundary).
    pub fn pause(&self) -> Result<(), VmError> {
        let _guard = self.lock_control();
        if self.exit.reason().is_some() {
            return Err(VmError::Ending);
        }
        self.vcpus.pause(Duration::from_secs(5))?;
        // No vCPU can touch a device register now, so the workers stop on a settled queue.
        self.devices.pause();
        Ok(())
    }

    /// Lets devices and then vCPUs run again.
    pub fn resume(&self) {
        let _guard = self.lock_control();
        self.devices.resume();
        self.vcpus.resume()
    }

    /// Replaces the rate limit of network card `card` while the VM runs (or is paused).
    pub fn set_net_limit(
        &self,
        card: usize,
        limit: super::config::NetRateLimit,
    ) -> Result<(), VmError> {
        Ok(self.devices.set_net_limit(card, limit)?)
    }

    /// Grows disk `disk` to `size_bytes` while the VM runs (or is paused); returns its size now.
    /// Under the control lock, so that a snapshot holds the disk as it was before the growth or
    /// after it, never half-way.
    pub fn grow_disk(&self, disk: usize, size_bytes: u64) -> Result<u64, VmError> {
        let _guard = self.lock_control();
        if self.exit.reason().is_some() {
            return Err(VmError::Ending);
        }
        Ok(self.devices.grow_disk(disk, size_bytes)?)
    }

    /// Writes a snapshot of the paused VM to `dir` (see [`snapshot`]); the VM stays paused.
    pub fn snapshot(&self, dir: &std::path::Path) -> Result<SnapshotInfo, VmError> {
        let _guard = self.lock_control();
        let started = Instant::now();
        if self.exit.reason().is_some() {
            return Err(VmError::Ending);
        }
        if !self.vcpus.is_paused() {
            return Err(VmError::NotPaused);
        }
        let msr_index = Arc::new(
            self.kvm
                .get_msr_index_list()
                .map_err(kvm_err("list the MSRs to save (KVM_GET_MSR_INDEX_LIST)"))?
                .as_slice()
                .to_vec(),
        );
        let vcpus = self
            .vcpus
            .save_states(&msr_index, Duration::from_secs(10))?;
        let vm = persist::save(&self.vm_fd)?;
        let legacy = snapshot::LegacyDevicesState {
            serial: lock(&self.legacy.serial).save(),
            i8042: lock(&self.legacy.i8042).save(),
            acpi_pm: lock(&self.legacy.acpi_pm).save(),
        };
        let virtio = self.devices.save();
        let host = snapshot::HostFacts::probe(&self.kvm)?;
        let pending = PendingSnapshot::create(dir)?;
        let stats = snapshot_memory::write_sparse(&self.mem, &pending.memory_path())
            .map_err(SnapshotError::from)?;
        // The limits in force, which `set-net-limit` may have changed since the start, so that a
        // restore keeps them (unless it is given others).
        let mut config = self.config.clone();
        for (card, limit) in config.net.iter_mut().zip(self.devices.net_limits()) {
            card.limit = limit;
        }
        let state = snapshot::SnapshotState {
            host,
            config,
            memory: snapshot_memory::layout(&self.mem),
            vm,
            vcpus,
            legacy,
            virtio,
            taken_unix_ms: snapshot::now_unix_ms(),
        };
        pending.finish(&state)?;
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            "snapshot written to {} in {took_ms} ms: {} MiB of RAM, {} MiB of it data",
            dir.display(),
            stats.ram_bytes >> 20,
            stats.data_bytes >> 20
        );
        Ok(SnapshotInfo {
            memory_bytes: stats.ram_bytes,
            memory_data_bytes: stats.data_bytes,
            took_ms,
        })
    }

    /// What the control socket's `status` reports.
    pub fn status(&self) -> VmStatus {
        let state = if self.exit.reason().is_some() {
            RunState::Stopping
        } else if self.shutdown_deadline().is_some() {
            RunState::ShuttingDown
        } else if self.vcpus.is_paused() {
            RunState::Paused
        } else {
            RunState::Running
        };
        VmStatus {
            state,
            vcpus: self.vcpus.count(),
            memory_mib: self.memory_mib,
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            pid: std::process::id(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// COM1, the i8042 and the ACPI sleep registers on the port I/O bus; in their saved state when
/// restoring (the i8042 and ACPI registers have none).
fn add_legacy_devices(
    vm_fd: &VmFd,
    pio: &mut Bus,
    config: &VmConfig,
    exit: &Arc<ExitNotifier>,
    saved: Option<&snapshot::LegacyDevicesState>,
) -> Result<LegacyDevices, VmError> {
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm_fd
        .register_irqfd(&serial_irq, layout::SERIAL_GSI)
        .map_err(kvm_err("register the serial interrupt"))?;
    let console = ConsoleOutput::new(config.console_log.as_deref(), config.console_stdout)?;
    let serial = match saved {
        None => SerialDevice::new(serial_irq, console),
        Some(s) => SerialDevice::restore(serial_irq, console, &s.serial)?,
    };
    let devices = LegacyDevices {
        serial: Arc::new(Mutex::new(serial)),
        i8042: Arc::new(Mutex::new(I8042::new(exit.clone()))),
        acpi_pm: Arc::new(Mutex::new(AcpiSleep::new(exit.clone()))),
    };
    pio.insert(
        u64::from(layout::SERIAL_PORT),
        u64::from(layout::SERIAL_PORT_COUNT),
        devices.serial.clone(),
    )?;
    pio.insert(
        u64::from(layout::I8042_DATA_PORT),
        i8042::PORT_SPAN,
        devices.i8042.clone(),
    )?;
    pio.insert(
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        acpi_pm::PORT_SPAN,
        devices.acpi_pm.clone(),
    )?;
    Ok(devices)
}

/// Creates the vCPUs with their CPUID, MSRs, FPU and LAPIC; the boot CPU also gets the boot
/// registers. The others wait for INIT/SIPI from the boot CPU (in-kernel LAPIC).
fn create_vcpus(kvm: &Kvm, vm_fd: &VmFd, count: u8, rip: u64) -> Result<Vec<VcpuFd>, VmError> {
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its supported CPUID"))?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let vcpu = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let mut entries = base_cpuid.as_slice().to_vec();
        cpuid::normalize(&mut entries, VcpuTopology { index, count }, tsc_deadline);
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VmError::Kvm {
            what: "take the CPUID list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set the CPUID"))?;
        regs::setup_msrs(&vcpu)?;
        regs::setup_fpu(&vcpu)?;
        regs::setup_lint(&vcpu)?;
        if index == 0 {
            regs::setup_sregs(&vcpu)?;
            regs::setup_regs(&vcpu, rip)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}
