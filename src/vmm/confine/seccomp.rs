//! Seccomp filters, one per kind of VMM thread, built with rust-vmm's `seccompiler`. A system
//! call outside its thread's list traps (`SECCOMP_RET_TRAP`, see `sigsys`) and ends the VMM.
//!
//! Filters stack and are inherited: a thread starts with its parent's filter and narrows it with
//! its own, so what a thread may do is what both allow. Hence:
//! - [`ThreadKind::Setup`], installed by the main thread when it confines the process (the
//!   process has one thread then), allows what every thread may need, plus setting up the vCPUs
//!   and restoring a snapshot. Every other thread inherits it; the worker spawner keeps it.
//! - [`ThreadKind::Vcpu`]: `KVM_RUN` and reading its vCPU's state (snapshots), the port I/O and
//!   MMIO devices (console log), and activating a virtio device (its eventfds, epoll set, timer,
//!   TAP offloads, vsock's host socket made non-blocking). It starts no thread: device workers
//!   are started by the spawner (`super::spawner`), so a vCPU thread never needs `clone`,
//!   sockets or file system calls.
//! - [`ThreadKind::Worker`]: a virtio device's queue work: epoll, eventfds, the disk image
//!   (read, write, flush, discard), the TAP, vsock's Unix sockets (accepting host clients,
//!   connecting to `<socket>_<port>`), the rate limiter's timer.
//! - [`ThreadKind::Control`]: the control socket's listener and the per-client threads it starts
//!   (they inherit it): pause and resume (kicking vCPUs, stopping and restarting workers),
//!   snapshots (reading VM state, writing and syncing files, renaming the directory into place).
//! - [`ThreadKind::Main`]: the main thread once the VM runs: waits for its end, stops the vCPUs,
//!   writes the exit status and exits.
//!
//! Every kind may allocate memory, use futexes, write its log (and rotate it: an `openat` with
//! exactly the append flags, `rename`), read clocks, get random bytes (hash maps), end itself.
//! `clone3` is made to fail with ENOSYS by a first, separate filter (its flags are in memory,
//! which seccomp cannot read), so glibc falls back to `clone`, which is allowed only with
//! `CLONE_THREAD`: no thread can make a process.
//!
//! What the lists cannot do: threads share one address space, so code running in one thread can
//! corrupt another; the filters bound what a simple exploit in one thread can call, the jail and
//! the identity bound what any of it can reach.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of threads of a VMM, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    Setup,
    Vcpu,
    Worker,
    Control,
    Main,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Setup,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::Control,
        ThreadKind::Main,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ThreadKind::Setup => "setup",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
            ThreadKind::Control => "control",
            ThreadKind::Main => "main",
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("this architecture ({0}) has no seccomp filters in deskd; pass --no-confine")]
    Arch(&'static str),
    #[error("cannot build the {kind} seccomp filter: {reason}")]
    Build { kind: &'static str, reason: String },
    #[error("cannot install the {kind} seccomp filter: {reason}")]
    Install { kind: &'static str, reason: String },
}

/// The KVM ioctls the VMM makes, by the kind of thread that makes them.
mod kvm {
    use kvm_bindings::*;
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
    ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
    ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
    ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
    ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);

    /// What a vCPU thread asks of its vCPU: run it, and read its state for a snapshot
    /// (`vcpu::persist::save`, which also runs it once with `immediate_exit`).
    pub fn vcpu() -> Vec<u64> {
        vec![
            KVM_RUN(),
            KVM_GET_MP_STATE(),
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_LAPIC(),
            KVM_GET_MSRS(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_TSC_KHZ(),
            KVM_GET_CPUID2(),
        ]
    }

    /// What a snapshot reads of the VM and the host (`vm::persist::save`, `HostFacts::probe`,
    /// the MSR list).
    pub fn control() -> Vec<u64> {
        vec![
            KVM_GET_IRQCHIP(),
            KVM_GET_PIT2(),
            KVM_GET_CLOCK(),
            KVM_GET_MSR_INDEX_LIST(),
            KVM_GET_SUPPORTED_CPUID(),
            KVM_CHECK_EXTENSION(),
            KVM_GET_API_VERSION(),
        ]
    }

    /// Creating the vCPUs in their boot state, or as a snapshot saved them, and the VM's
    /// restored irqchip, PIT and clock (`vm::Vm::build` after confinement).
    pub fn setup() -> Vec<u64> {
        vec![
            KVM_GET_VCPU_MMAP_SIZE(),
            KVM_CREATE_VCPU(),
            KVM_SET_CPUID2(),
            KVM_SET_MSRS(),
            KVM_GET_FPU(),
            KVM_SET_FPU(),
            KVM_SET_LAPIC(),
            KVM_SET_REGS(),
            KVM_SET_SREGS(),
            KVM_SET_MP_STATE(),
            KVM_SET_XSAVE(),
            KVM_SET_XCRS(),
            KVM_SET_DEBUGREGS(),
            KVM_SET_VCPU_EVENTS(),
            KVM_SET_TSC_KHZ(),
            KVM_SET_IRQCHIP(),
            KVM_SET_PIT2(),
            KVM_SET_CLOCK(),
        ]
    }
}

/// Flags of the one `openat` every thread may make: appending to a log file it starts after a
/// rotation (`OpenOptions::new().create(true).append(true)`).
const LOG_OPEN_FLAGS: u64 =
    (libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC) as u64;

/// One argument check: argument index, comparison, value.
type Check = (u8, SeccompCmpOp, u64);

/// The allowed system calls: each with any arguments (`None`), or only when one of its rules
/// (all of a rule's checks) matches.
#[derive(Default)]
struct Allowed {
    calls: BTreeMap<i64, Option<Vec<Vec<Check>>>>,
}

impl Allowed {
    /// `nrs` with any arguments.
    fn any(&mut self, nrs: &[libc::c_long]) -> &mut Self {
        for &nr in nrs {
            self.calls.insert(nr, None);
        }
        self
    }

    /// `nr` when argument `arg` equals one of `values` (unless it is allowed with any already).
    fn arg_in(&mut self, nr: libc::c_long, arg: u8, values: &[u64]) -> &mut Self {
        for &value in values {
            self.rule(nr, vec![(arg, SeccompCmpOp::Eq, value)]);
        }
        self
    }

    /// `nr` when argument `arg` has all the bits of `bits` set.
    fn arg_has(&mut self, nr: libc::c_long, arg: u8, bits: u64) -> &mut Self {
        self.rule(nr, vec![(arg, SeccompCmpOp::MaskedEq(bits), bits)])
    }

    fn rule(&mut self, nr: libc::c_long, checks: Vec<Check>) -> &mut Self {
        if let Some(rules) = self.calls.entry(nr).or_insert_with(|| Some(Vec::new())) {
            rules.push(checks);
        }
        self
    }

    fn build(&self, kind: ThreadKind, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
        let err = |reason: String| SeccompError::Build {
            kind: kind.as_str(),
            reason,
        };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (&nr, conditions) in &self.calls {
            let built = match conditions {
                None => Vec::new(),
                Some(list) => list
                    .iter()
                    .map(|conds| {
                        let conds = conds
                            .iter()
                            .map(|(arg, op, value)| {
                                // Arguments compared are ints, flags and ioctl numbers: their low
                                // 32 bits are all there is.
                                SeccompCondition::new(
                                    *arg,
                                    SeccompCmpArgLen::Dword,
                                    op.clone(),
                                    *value,
                                )
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| err(e.to_string()))?;
                        SeccompRule::new(conds).map_err(|e| err(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rules.insert(nr, built);
        }
        let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
            .map_err(|e| err(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| err(e.to_string()))
    }
}

/// What every thread may do.
fn base(a: &mut Allowed) {
    a.any(&[
        // Memory (allocation, thread stacks, guest memory mappings going away).
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mremap,
        // Locks, condition variables, channels.
        libc::SYS_futex,
        libc::SYS_sched_yield,
        // Signals: the vCPU kick and SIGTERM handlers return; a thread's alternate signal stack
        // is set up and torn down by Rust's runtime.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        // Clocks and sleeps (the vDSO normally answers clock reads; these are its fallback).
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        // Hash map keys.
        libc::SYS_getrandom,
        // The log and the console log: written, rotated (see LOG_OPEN_FLAGS for the open).
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_rename,
        libc::SYS_close,
        libc::SYS_getpid,
        libc::SYS_gettid,
        // The end of a thread, or of the process (the SIGSYS handler's _exit among them).
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]);
    a.arg_in(libc::SYS_openat, 2, &[LOG_OPEN_FLAGS]);
    // Installing a thread's own filter on the inherited one: seccompiler sets no_new_privs
    // (already set) before each filter, and seccomp(2) adds it.
    a.arg_in(libc::SYS_prctl, 0, &[libc::PR_SET_NO_NEW_PRIVS as u64]);
    a.any(&[libc::SYS_seccomp]);
    // Closing a file: Rust's standard library first checks the descriptor is open
    // (F_GETFD) when debug assertions are on.
    a.arg_in(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
}

/// What a thread that starts threads needs, for itself and for the new thread before its own
/// filter is in place (glibc's and Rust's thread start-up run first).
fn starts_threads(a: &mut Allowed) {
    a.arg_has(libc::SYS_clone, 0, libc::CLONE_THREAD as u64);
    // Made to fail with ENOSYS by the first filter (see module docs); allowed here so that the
    // ENOSYS is what the caller gets.
    // The new thread's own start: robust futex list, restartable sequences, and (glibc's
    // pthread_getattr_np, for Rust's stack guard) its CPU affinity.
    a.any(&[
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
    ]);
    a.arg_in(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64]);
}

/// Activating a virtio device (`transport::activate`), which a vCPU does when the driver sets
/// DRIVER_OK, the setup does when it restores a snapshot: duplicated queue eventfds, the
/// worker's epoll set and stop eventfd, virtio-net's timer and TAP offloads; then handing the
/// worker to the spawner. A driver reset joins the worker and drains its stop eventfd.
fn activates_devices(a: &mut Allowed) {
    a.any(&[
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_timerfd_create,
        libc::SYS_read,
    ]);
    a.arg_in(
        libc::SYS_fcntl,
        1,
        &[
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    );
    // TAP offloads (virtio-net); FIONBIO: vsock's activation makes its copy of the host socket
    // non-blocking (it only sets O_NONBLOCK on a descriptor the VMM already holds).
    a.arg_in(libc::SYS_ioctl, 1, &[libc::TUNSETOFFLOAD, libc::FIONBIO]);
}

fn vcpu(a: &mut Allowed) {
    base(a);
    activates_devices(a);
    a.arg_in(libc::SYS_ioctl, 1, &kvm::vcpu());
}

fn worker(a: &mut Allowed) {
    base(a);
    a.any(&[
        // Its epoll loop, eventfds (queue kicks, interrupts, stop), the TAP.
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        // The disk image: positioned reads and writes, flush, discard and write-zeroes.
        libc::SYS_lseek,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fdatasync,
        libc::SYS_fsync,
        libc::SYS_fallocate,
        // virtio-net's rate limiter.
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        // vsock: host clients accepted, guest connections made to `<socket>_<port>`.
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
    ]);
    a.arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    a.arg_in(
        libc::SYS_fcntl,
        1,
        &[
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    );
    a.arg_in(libc::SYS_ioctl, 1, &[libc::FIONBIO]);
}

fn control(a: &mut Allowed) {
    base(a);
    starts_threads(a);
    a.any(&[
        // The control socket: clients accepted, lines read and answered.
        libc::SYS_accept4,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
        // Pause: vCPUs kicked out of KVM_RUN, device workers stopped and started again (the
        // stop eventfd is drained).
        libc::SYS_tgkill,
        // Snapshots: the directory written beside its final name, synced, renamed into place (or
        // exchanged with the old one, which is then removed).
        libc::SYS_mkdir,
        libc::SYS_mkdirat,
        libc::SYS_openat,
        libc::SYS_lseek,
        libc::SYS_pwrite64,
        libc::SYS_ftruncate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_renameat2,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_rmdir,
        libc::SYS_getdents64,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fstat,
        libc::SYS_lstat,
        libc::SYS_stat,
    ]);
    a.arg_in(
        libc::SYS_fcntl,
        1,
        &[
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    );
    a.arg_in(libc::SYS_ioctl, 1, &kvm::control());
}

fn main_loop(a: &mut Allowed) {
    base(a);
    a.any(&[
        // Waiting for the end: its eventfds and SIGTERM's.
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_read,
        // Stopping the vCPUs (kicks) and, on a power button press, resuming a paused VM.
        libc::SYS_tgkill,
        // The exit status, written into the file opened at start.
        libc::SYS_pwrite64,
        libc::SYS_ftruncate,
        // The control socket's file is removed at the end.
        libc::SYS_unlink,
    ]);
}

/// Everything any thread needs (each inherits this filter), and the rest of the VM's setup.
fn setup(a: &mut Allowed) {
    vcpu(a);
    worker(a);
    control(a);
    main_loop(a);
    // The vCPU kick handler is installed after confinement (`vcpu::install_kick_handler`).
    a.any(&[libc::SYS_rt_sigaction]);
    a.arg_in(libc::SYS_ioctl, 1, &kvm::setup());
}

fn allowed(kind: ThreadKind) -> Allowed {
    let mut a = Allowed::default();
    match kind {
        ThreadKind::Setup => setup(&mut a),
        ThreadKind::Vcpu => vcpu(&mut a),
        ThreadKind::Worker => worker(&mut a),
        ThreadKind::Control => control(&mut a),
        ThreadKind::Main => main_loop(&mut a),
    }
    a
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// The compiled filters of every kind, and the one that turns `clone3` into ENOSYS.
pub struct Filters {
    by_kind: BTreeMap<ThreadKind, BpfProgram>,
    no_clone3: BpfProgram,
}

impl Filters {
    /// Builds them all (before confinement, so that a mistake is reported before anything
    /// changes).
    pub fn build() -> Result<Filters, SeccompError> {
        let arch = arch()?;
        let mut by_kind = BTreeMap::new();
        for kind in ThreadKind::ALL {
            by_kind.insert(kind, allowed(kind).build(kind, arch)?);
        }
        let mut clone3 = BTreeMap::new();
        clone3.insert(libc::SYS_clone3, Vec::new());
        let no_clone3 = SeccompFilter::new(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|e| SeccompError::Build {
            kind: "clone3",
            reason: e.to_string(),
        })?;
        Ok(Filters { by_kind, no_clone3 })
    }

    /// Installs the filter of `kind` on the calling thread; with `Setup`, the clone3 filter
    /// first. Sets `PR_SET_NO_NEW_PRIVS` (seccompiler does), which filters need.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let fail = |e: seccompiler::Error| SeccompError::Install {
            kind: kind.as_str(),
            reason: e.to_string(),
        };
        if kind == ThreadKind::Setup {
            seccompiler::apply_filter(&self.no_clone3).map_err(fail)?;
        }
        let program = self.by_kind.get(&kind).ok_or(SeccompError::Install {
            kind: kind.as_str(),
            reason: "not built".into(),
        })?;
        seccompiler::apply_filter(program).map_err(fail)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// `KVM_RUN`'s request number.
    pub fn kvm_run() -> libc::c_ulong {
        super::kvm::KVM_RUN()
    }
}

#[cfg(test)]
pub(crate) fn allows(kind: ThreadKind, nr: libc::c_long) -> bool {
    allowed(kind).calls.contains_key(&nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        let filters = Filters::build().unwrap();
        for kind in ThreadKind::ALL {
            assert!(!filters.by_kind[&kind].is_empty(), "{kind:?}");
        }
    }

    /// Each thread inherits the setup filter: whatever a kind allows, setup must allow too, or
    /// the call would trap in the inherited filter.
    #[test]
    fn setup_allows_whatever_any_kind_does() {
        let setup = allowed(ThreadKind::Setup);
        for kind in ThreadKind::ALL {
            for (nr, rules) in &allowed(kind).calls {
                let in_setup = setup
                    .calls
                    .get(nr)
                    .unwrap_or_else(|| panic!("{kind:?} allows syscall {nr}, setup does not"));
                if let (Some(kind_rules), Some(setup_rules)) = (rules, in_setup) {
                    for rule in kind_rules {
                        let same = setup_rules.iter().any(|r| {
                            r.len() == rule.len()
                                && r.iter().zip(rule).all(|(a, b)| {
                                    a.0 == b.0
                                        && a.2 == b.2
                                        && format!("{:?}", a.1) == format!("{:?}", b.1)
                                })
                        });
                        assert!(same, "{kind:?}: syscall {nr} rule {rule:?} is not in setup");
                    }
                }
            }
        }
    }

    #[test]
    fn vcpus_start_no_thread_and_open_no_socket() {
        for nr in [
            libc::SYS_clone,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_mkdir,
        ] {
            assert!(!allows(ThreadKind::Vcpu, nr), "{nr}");
        }
        for kind in ThreadKind::ALL {
            for nr in [
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_unshare,
                libc::SYS_setuid,
                libc::SYS_fork,
                libc::SYS_getppid,
            ] {
                assert!(!allows(kind, nr), "{kind:?} allows {nr}");
            }
        }
    }
}
