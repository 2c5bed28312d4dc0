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
use super::control::{RunState, VmStatus};
use super::device_wiring::{self, VirtioError};
use super::devices::acpi_pm::{self, AcpiSleep};
use super::devices::bus::{Bus, BusError};
use super::devices::i8042::{self, I8042};
use super::devices::serial::{ConsoleOutput, SerialDevice, SerialError};
use super::exit::{ExitNotifier, VmExit};
use super::layout::{self, RamLayout};
use super::memory::{self, GuestMemory, MemoryError};
use super::vcpu::{self, VcpuError, VcpuThreads};

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
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A running VM. Dropping it does not stop the vCPU threads: the process exits instead.
pub struct Vm {
    // Kept alive for the lifetime of the VM: KVM objects and the memory they reference.
    _kvm: Kvm,
    _vm_fd: Arc<VmFd>,
    _mem: GuestMemory,
    _devices: device_wiring::AttachedDevices,
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
    /// Builds the VM described by `config` (already validated) and starts its vCPUs.
    pub fn start(config: &VmConfig) -> Result<Vm, VmError> {
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
        let mem = memory::allocate(&ram)?;
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
        add_legacy_devices(&vm_fd, &mut pio, config, &exit)?;
        let power_button = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&power_button, layout::POWER_BUTTON_GSI)
            .map_err(kvm_err("register the power button interrupt"))?;

        let devices = device_wiring::attach(&vm_fd, &mem, &mut mmio, config)?;
        let windows: Vec<VirtioMmioWindow> = devices.windows().to_vec();
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
        let vcpu_fds = create_vcpus(&kvm, &vm_fd, config.vcpus, entry.rip)?;

        vcpu::install_kick_handler()?;
        let vcpus = VcpuThreads::start(vcpu_fds, Arc::new(pio), Arc::new(mmio), exit.clone())?;
        tracing::info!(
            "VM started in {:?}: {} vCPU(s), {} MiB, {} virtio device(s)",
            started.elapsed(),
            config.vcpus,
            config.memory_mib,
            windows.len()
        );
        Ok(Vm {
            _kvm: kvm,
            _vm_fd: vm_fd,
            _mem: mem,
            _devices: devices,
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
        self.vcpus.resume();
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

    pub fn pause(&self) -> Result<(), VcpuError> {
        self.vcpus.pause(Duration::from_secs(5))
    }

    pub fn resume(&self) {
        self.vcpus.resume()
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

/// COM1, the i8042 and the ACPI sleep registers on the port I/O bus.
fn add_legacy_devices(
    vm_fd: &VmFd,
    pio: &mut Bus,
    config: &VmConfig,
    exit: &Arc<ExitNotifier>,
) -> Result<(), VmError> {
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm_fd
        .register_irqfd(&serial_irq, layout::SERIAL_GSI)
        .map_err(kvm_err("register the serial interrupt"))?;
    let console = ConsoleOutput::new(config.console_log.as_deref(), config.console_stdout)?;
    let serial = SerialDevice::new(serial_irq, console);
    pio.insert(
        u64::from(layout::SERIAL_PORT),
        u64::from(layout::SERIAL_PORT_COUNT),
        Arc::new(Mutex::new(serial)),
    )?;
    pio.insert(
        u64::from(layout::I8042_DATA_PORT),
        i8042::PORT_SPAN,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        acpi_pm::PORT_SPAN,
        Arc::new(Mutex::new(AcpiSleep::new(exit.clone()))),
    )?;
    Ok(())
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
