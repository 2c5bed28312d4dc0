//! What one VM is made of: read from a JSON file (`--config`) and/or command-line arguments,
//! then checked before anything is allocated.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout;

mod confine;
mod net;

pub use confine::{ConfineConfig, ConfineConfigError, FIRST_POOL_ID, MIN_OPEN_FILES};
pub use net::{MacAddr, NetArg, NetConfig, NetConfigError, NetRateLimit, TapSource};

/// Most vCPUs a VM may have (the MADT, CPUID topology and tests are sized for this).
pub const MAX_VCPUS: u8 = 16;
/// Command line used when none is given: serial console, reboot through the i8042, reboot (and
/// so end the VMM with the reboot status) one second after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Seconds between the ACPI power button press (SIGTERM, control `shutdown`) and a hard stop.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// Lowest guest context ID a VM may use (0-2 are reserved by vsock: hypervisor, local, host).
pub const MIN_GUEST_CID: u64 = 3;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {source}")]
    ParseFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no kernel given: pass --kernel PATH or set \"kernel\" in the config file")]
    NoKernel,
    #[error("cannot open the kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the disk {path} for {mode}: {source} (pass it read-only with ',ro' if it is not writable)")]
    Disk {
        path: PathBuf,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("bad --disk value {0:?}: expected PATH or PATH,ro")]
    DiskSyntax(String),
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u64),
    #[error("memory must be between {min} and {max} MiB, got {0} MiB", min = layout::MIN_MEMORY_MIB, max = layout::MAX_MEMORY_MIB)]
    Memory(u64),
    #[error("the guest vsock CID must be at least {MIN_GUEST_CID} and below 2^32, got {0}")]
    GuestCid(u64),
    #[error("--vsock-socket and --vsock-cid go together: give both or neither")]
    VsockHalf,
    #[error("the directory of {path} does not exist; create it first")]
    NoParentDir { path: PathBuf },
    #[error("too many virtio devices ({0}); at most {max} fit", max = layout::VIRTIO_MMIO_MAX_DEVICES)]
    TooManyDevices(usize),
    #[error("the kernel command line is {0} bytes; at most {max} fit", max = layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error(
        "{0} cannot change when restoring a snapshot (the guest already has it); leave it out"
    )]
    NotOnRestore(&'static str),
    #[error("--restore-paused needs --restore DIR")]
    PausedWithoutRestore,
    #[error(
        "the snapshot has {saved} disks; --disk was given {given} times, give all of them or none"
    )]
    RestoreDiskCount { saved: usize, given: usize },
    #[error(transparent)]
    Net(#[from] NetConfigError),
    #[error(transparent)]
    Confine(#[from] ConfineConfigError),
    #[error(
        "the snapshot has {saved} network cards; --net was given {given} times, give all of them or none"
    )]
    RestoreNetCount { saved: usize, given: usize },
    #[error("network card {index}: the MAC cannot change when restoring a snapshot (the guest already has {saved}); leave mac= out")]
    RestoreMac { index: usize, saved: MacAddr },
}

/// One virtio-blk disk: a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Open read-only and make guest writes fail.
    #[serde(default)]
    pub read_only: bool,
}

/// The virtio-vsock device (hybrid Unix-socket model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host Unix socket the VMM listens on; guest-initiated connections to port P go to
    /// `<socket>_<P>`.
    pub socket: PathBuf,
    /// The guest's context ID.
    pub guest_cid: u64,
}

/// A complete VM description, as in the JSON config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// bzImage to boot (Debian's `vmlinuz-*`).
    pub kernel: PathBuf,
    /// Initial ramdisk, if any.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Number of vCPUs, 1-16.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// virtio-vsock, if wanted.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-net cards, in the order the guest sees them (eth0, eth1, ...).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Whether to give the guest a virtio-rng.
    #[serde(default = "default_true")]
    pub rng: bool,
    /// File the serial console is appended to.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Also copy the serial console to the VMM's stdout.
    #[serde(default)]
    pub console_stdout: bool,
    /// Unix socket for JSON-lines control commands (status, pause, resume, shutdown).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Seconds from the power-button press to a hard stop.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// Decompress the bzImage's kernel on the host when its format allows (LZ4), instead of
    /// letting the guest's decompressor do it. Same kernel, much faster boot.
    #[serde(default = "default_true")]
    pub host_decompress: bool,
    /// File the VMM writes its exit status to (`<status> <word>`) when the VM ends, for a
    /// supervisor that is not its parent (a restarted daemon cannot collect the exit status).
    #[serde(default)]
    pub exit_status_file: Option<PathBuf>,
    /// File the VMM's own log goes to, capped in size (rotated to `<file>.1`); stderr otherwise.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// File the VMM writes `<pid> <start time>` to before the guest runs (see `vmm::pidfile`).
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Confine the VMM (its own mount namespace, this unprivileged identity, limits, seccomp;
    /// see `vmm::confine`) once it has opened what it needs. Absent: not confined. Never saved
    /// in a snapshot: a restore is given it again.
    #[serde(default, with = "confine::runtime_only")]
    pub confine: Option<ConfineConfig>,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory_mib() -> u64 {
    512
}
fn default_true() -> bool {
    true
}
fn default_shutdown_timeout() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_SECS
}

/// Options of `deskd vmm`. Anything given here overrides the config file.
#[derive(clap::Args, Debug, Default)]
pub struct VmmArgs {
    /// JSON file with the VM description: kernel, initrd, cmdline, disks [{path, read_only}],
    /// vcpus, memory_mib, vsock {socket, guest_cid}, net [{tap: {fd}|{name}, mac, limit}], rng, console_log, console_stdout,
    /// control_socket, shutdown_timeout_secs, host_decompress, exit_status_file, log_file,
    /// pid_file, confine {uid, gid, max_open_files, max_file_size_bytes}.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// bzImage to boot.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Raw disk image as virtio-blk; `PATH,ro` for read-only. Repeat for more disks.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    pub disks: Vec<String>,
    /// Number of vCPUs (1-16); default 1.
    #[arg(long)]
    pub vcpus: Option<u64>,
    /// Guest memory in MiB; default 512.
    #[arg(long = "memory", value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// Host Unix socket of the virtio-vsock device.
    #[arg(long, value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// Guest context ID of the virtio-vsock device (>= 3).
    #[arg(long, value_name = "CID")]
    pub vsock_cid: Option<u64>,
    /// A virtio-net card on a TAP device, opened by name (`tap=NAME`) or inherited open
    /// (`fd=N`), with its MAC and optional limits in bytes and frames per second:
    /// `tap=NAME|fd=N,mac=52:54:00:12:34:56[,bandwidth=BYTES][,pps=N]`. Repeat for more cards.
    #[arg(long = "net", value_name = "tap=NAME,mac=MAC")]
    pub net: Vec<String>,
    /// Do not give the guest a virtio-rng.
    #[arg(long)]
    pub no_rng: bool,
    /// File the serial console is appended to.
    #[arg(long, value_name = "PATH")]
    pub console_log: Option<PathBuf>,
    /// Also copy the serial console to stdout.
    #[arg(long)]
    pub console_stdout: bool,
    /// Unix socket for control commands (JSON lines).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Seconds from the power-button press (SIGTERM) to a hard stop; default 30.
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// Let the guest decompress the kernel (the classic bzImage boot) instead of the host.
    #[arg(long)]
    pub guest_decompress: bool,
    /// File to write the exit status to when the VM ends (`<status> <word>`, e.g. `3 reboot`).
    #[arg(long, value_name = "PATH")]
    pub exit_status_file: Option<PathBuf>,
    /// File for the VMM's own log, capped in size (rotated to `PATH.1`); default stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// File to write `<pid> <start time>` to before the guest runs.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Confine the VMM as this unprivileged user (with --confine-gid): its own mount namespace
    /// holding only its files, no capabilities, limits, seccomp filters. Needs root.
    #[arg(long, value_name = "UID")]
    pub confine_uid: Option<u32>,
    /// The group of --confine-uid.
    #[arg(long, value_name = "GID")]
    pub confine_gid: Option<u32>,
    /// Do not confine the VMM even if its configuration says so (development only: a VMM escape
    /// then owns the host).
    #[arg(long)]
    pub no_confine: bool,
    /// Start the VM from the snapshot in DIR (written by the control request `snapshot`) instead
    /// of booting. Its saved configuration is used; --control-socket, --vsock-socket/--vsock-cid,
    /// --console-log, --console-stdout, --exit-status-file, --log-file, --pid-file,
    /// --shutdown-timeout, --disk (same count and sizes) and --net (same count and MACs: a new
    /// TAP, and limits) override it; confinement is given anew (--confine-uid/--confine-gid).
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    /// With --restore: keep vCPUs and devices paused until the control request `resume`.
    #[arg(long)]
    pub restore_paused: bool,
}

/// Parses `PATH` or `PATH,ro`.
fn parse_disk(arg: &str) -> Result<DiskConfig, ConfigError> {
    let (path, read_only) = match arg.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some(_) => return Err(ConfigError::DiskSyntax(arg.to_string())),
        None => (arg, false),
    };
    if path.is_empty() {
        return Err(ConfigError::DiskSyntax(arg.to_string()));
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        read_only,
    })
}

impl VmConfig {
    /// Builds the configuration from the file named by `--config` (if any) and the arguments.
    pub fn from_args(args: &VmmArgs) -> Result<VmConfig, ConfigError> {
        let file: Option<VmConfig> = match &args.config {
            Some(path) => Some(Self::from_file(path)?),
            None => None,
        };
        let kernel = args
            .kernel
            .clone()
            .or_else(|| file.as_ref().map(|f| f.kernel.clone()))
            .ok_or(ConfigError::NoKernel)?;
        let mut config = file.unwrap_or(VmConfig {
            kernel: kernel.clone(),
            initrd: None,
            cmdline: default_cmdline(),
            disks: Vec::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            vsock: None,
            net: Vec::new(),
            rng: true,
            console_log: None,
            console_stdout: false,
            control_socket: None,
            shutdown_timeout_secs: default_shutdown_timeout(),
            host_decompress: true,
            exit_status_file: None,
            log_file: None,
            pid_file: None,
            confine: None,
        });
        config.kernel = kernel;
        if let Some(initrd) = &args.initrd {
            config.initrd = Some(initrd.clone());
        }
        if let Some(cmdline) = &args.cmdline {
            config.cmdline = cmdline.clone();
        }
        if !args.disks.is_empty() {
            config.disks = args
                .disks
                .iter()
                .map(|d| parse_disk(d))
                .collect::<Result<_, _>>()?;
        }
        if let Some(vcpus) = args.vcpus {
            config.vcpus = u8::try_from(vcpus)
                .ok()
                .filter(|v| (1..=MAX_VCPUS).contains(v))
                .ok_or(ConfigError::Vcpus(vcpus))?;
        }
        if let Some(mib) = args.memory_mib {
            config.memory_mib = mib;
        }
        match (&args.vsock_socket, args.vsock_cid) {
            (Some(socket), Some(cid)) => {
                config.vsock = Some(VsockConfig {
                    socket: socket.clone(),
                    guest_cid: cid,
                })
            }
            (None, None) => {}
            _ => return Err(ConfigError::VsockHalf),
        }
        if !args.net.is_empty() {
            config.net = args
                .net
                .iter()
                .map(|a| a.parse::<NetArg>().and_then(|n| n.into_config(a)))
                .collect::<Result<_, _>>()?;
        }
        if args.no_rng {
            config.rng = false;
        }
        if let Some(log) = &args.console_log {
            config.console_log = Some(log.clone());
        }
        if args.console_stdout {
            config.console_stdout = true;
        }
        if let Some(sock) = &args.control_socket {
            config.control_socket = Some(sock.clone());
        }
        if let Some(secs) = args.shutdown_timeout {
            config.shutdown_timeout_secs = secs;
        }
        if args.guest_decompress {
            config.host_decompress = false;
        }
        if let Some(path) = &args.exit_status_file {
            config.exit_status_file = Some(path.clone());
        }
        if let Some(path) = &args.log_file {
            config.log_file = Some(path.clone());
        }
        if let Some(path) = &args.pid_file {
            config.pid_file = Some(path.clone());
        }
        config.confine = confine::from_args(
            config.confine.take(),
            args.no_confine,
            args.confine_uid,
            args.confine_gid,
        )?;
        Ok(config)
    }

    /// The configuration of a VM restored from a snapshot: `saved` (what it ran with) with the
    /// runtime options `args` overrides. Options the guest already depends on (kernel, command
    /// line, vCPUs, memory, the device set) cannot change.
    pub fn for_restore(saved: VmConfig, args: &VmmArgs) -> Result<VmConfig, ConfigError> {
        let fixed: [(&'static str, bool); 9] = [
            ("--config", args.config.is_some()),
            ("--kernel", args.kernel.is_some()),
            ("--initrd", args.initrd.is_some()),
            ("--cmdline", args.cmdline.is_some()),
            ("--vcpus", args.vcpus.is_some()),
            ("--memory", args.memory_mib.is_some()),
            ("--no-rng", args.no_rng),
            ("--guest-decompress", args.guest_decompress),
            (
                "vsock (the snapshot has none)",
                saved.vsock.is_none() && (args.vsock_socket.is_some() || args.vsock_cid.is_some()),
            ),
        ];
        if let Some((name, _)) = fixed.iter().find(|(_, given)| *given) {
            return Err(ConfigError::NotOnRestore(name));
        }
        let mut config = saved;
        if !args.disks.is_empty() {
            if args.disks.len() != config.disks.len() {
                return Err(ConfigError::RestoreDiskCount {
                    saved: config.disks.len(),
                    given: args.disks.len(),
                });
            }
            config.disks = args
                .disks
                .iter()
                .map(|d| parse_disk(d))
                .collect::<Result<_, _>>()?;
        }
        if !args.net.is_empty() {
            if args.net.len() != config.net.len() {
                return Err(ConfigError::RestoreNetCount {
                    saved: config.net.len(),
                    given: args.net.len(),
                });
            }
            for (index, (card, arg)) in config.net.iter_mut().zip(&args.net).enumerate() {
                let arg: NetArg = arg.parse()?;
                if arg.mac.is_some_and(|mac| mac != card.mac) {
                    return Err(ConfigError::RestoreMac {
                        index,
                        saved: card.mac,
                    });
                }
                card.tap = arg.tap;
                if arg.limit.is_some() {
                    card.limit = arg.limit;
                }
            }
        }
        if let Some(vsock) = config.vsock.as_mut() {
            match (&args.vsock_socket, args.vsock_cid) {
                (Some(socket), Some(cid)) => {
                    vsock.socket = socket.clone();
                    vsock.guest_cid = cid;
                }
                (Some(socket), None) => vsock.socket = socket.clone(),
                (None, Some(_)) => return Err(ConfigError::VsockHalf),
                (None, None) => {}
            }
        }
        if let Some(log) = &args.console_log {
            config.console_log = Some(log.clone());
        }
        config.console_stdout |= args.console_stdout;
        if let Some(sock) = &args.control_socket {
            config.control_socket = Some(sock.clone());
        }
        if let Some(secs) = args.shutdown_timeout {
            config.shutdown_timeout_secs = secs;
        }
        if let Some(path) = &args.exit_status_file {
            config.exit_status_file = Some(path.clone());
        }
        if let Some(path) = &args.log_file {
            config.log_file = Some(path.clone());
        }
        if let Some(path) = &args.pid_file {
            config.pid_file = Some(path.clone());
        }
        config.confine = confine::from_args(
            config.confine.take(),
            args.no_confine,
            args.confine_uid,
            args.confine_gid,
        )?;
        Ok(config)
    }

    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Number of virtio-mmio devices this configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
    }

    /// Checks the values and that every file can be opened as needed. Does not touch /dev/kvm.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_runtime()?;
        File::open(&self.kernel).map_err(|source| ConfigError::Kernel {
            path: self.kernel.clone(),
            source,
        })?;
        if let Some(initrd) = &self.initrd {
            File::open(initrd).map_err(|source| ConfigError::Initrd {
                path: initrd.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// What [`Self::validate`] checks except the boot files (kernel, initrd), which a VM
    /// restored from a snapshot does not read.
    pub fn validate_runtime(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(u64::from(self.vcpus)));
        }
        if !(layout::MIN_MEMORY_MIB..=layout::MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if self.cmdline.len() >= layout::CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        let devices = self.virtio_device_count();
        if devices > layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        for disk in &self.disks {
            OpenOptions::new()
                .read(true)
                .write(!disk.read_only)
                .open(&disk.path)
                .map_err(|source| ConfigError::Disk {
                    path: disk.path.clone(),
                    mode: if disk.read_only {
                        "reading"
                    } else {
                        "reading and writing"
                    },
                    source,
                })?;
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < MIN_GUEST_CID || vsock.guest_cid > u64::from(u32::MAX) {
                return Err(ConfigError::GuestCid(vsock.guest_cid));
            }
            require_parent_dir(&vsock.socket)?;
        }
        if let Some(confine) = &self.confine {
            confine.validate()?;
        }
        for (i, card) in self.net.iter().enumerate() {
            card.validate()?;
            if let TapSource::Fd(fd) = card.tap {
                if self.net[..i].iter().any(|c| c.tap == card.tap) {
                    return Err(NetConfigError::DuplicateFd(fd).into());
                }
            }
        }
        for path in [
            &self.console_log,
            &self.control_socket,
            &self.exit_status_file,
            &self.log_file,
            &self.pid_file,
        ]
        .into_iter()
        .flatten()
        {
            require_parent_dir(path)?;
        }
        Ok(())
    }
}

fn require_parent_dir(path: &Path) -> Result<(), ConfigError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::NoParentDir {
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "deskd-vmm-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn args_with_kernel(dir: &Path) -> VmmArgs {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        VmmArgs {
            kernel: Some(kernel),
            ..Default::default()
        }
    }

    #[test]
    fn disk_argument_syntax() {
        assert_eq!(
            parse_disk("/a/b.img").unwrap(),
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: false
            }
        );
        assert!(parse_disk("/a/b.img,ro").unwrap().read_only);
        assert!(!parse_disk("/a/b.img,rw").unwrap().read_only);
        assert!(matches!(
            parse_disk("/a,b"),
            Err(ConfigError::DiskSyntax(_))
        ));
        assert!(matches!(parse_disk(",ro"), Err(ConfigError::DiskSyntax(_))));
    }

    #[test]
    fn defaults_from_arguments() {
        let dir = scratch();
        let config = VmConfig::from_args(&args_with_kernel(&dir)).unwrap();
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.memory_mib, 512);
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
        assert!(config.rng);
        assert_eq!(config.virtio_device_count(), 1);
        config.validate().unwrap();
    }

    #[test]
    fn missing_kernel_is_reported() {
        assert!(matches!(
            VmConfig::from_args(&VmmArgs::default()),
            Err(ConfigError::NoKernel)
        ));
        let config = VmConfig::from_args(&VmmArgs {
            kernel: Some("/nonexistent/vmlinuz".into()),
            ..Default::default()
        })
        .unwrap();
        let err = config.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Kernel { .. }));
        assert!(err.to_string().contains("/nonexistent/vmlinuz"));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let dir = scratch();
        let mut args = args_with_kernel(&dir);
        args.vcpus = Some(17);
        assert!(matches!(
            VmConfig::from_args(&args),
            Err(ConfigError::Vcpus(17))
        ));
        args.vcpus = Some(0);
        assert!(matches!(
            VmConfig::from_args(&args),
            Err(ConfigError::Vcpus(0))
        ));
        args.vcpus = Some(16);
        args.memory_mib = Some(64);
        let config = VmConfig::from_args(&args).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::Memory(64))));
        args.memory_mib = Some(256);
        args.vsock_socket = Some(dir.join("v.sock"));
        assert!(matches!(
            VmConfig::from_args(&args),
            Err(ConfigError::VsockHalf)
        ));
        args.vsock_cid = Some(2);
        let config = VmConfig::from_args(&args).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::GuestCid(2))));
        args.vsock_cid = Some(3);
        VmConfig::from_args(&args).unwrap().validate().unwrap();
    }

    #[test]
    fn unreadable_disk_is_reported() {
        let dir = scratch();
        let mut args = args_with_kernel(&dir);
        args.disks = vec![dir.join("missing.img").display().to_string()];
        let err = VmConfig::from_args(&args).unwrap().validate().unwrap_err();
        assert!(matches!(err, ConfigError::Disk { .. }), "{err}");
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        args.disks = vec![format!("{},ro", disk.display())];
        let config = VmConfig::from_args(&args).unwrap();
        config.validate().unwrap();
        assert!(config.disks[0].read_only);
    }

    #[test]
    fn config_file_with_overrides() {
        let dir = scratch();
        let kernel = dir.join("k");
        std::fs::write(&kernel, b"k").unwrap();
        let file = dir.join("vm.json");
        std::fs::write(
            &file,
            format!(
                r#"{{"kernel": "{}", "vcpus": 2, "memory_mib": 1024,
                    "disks": [{{"path": "/x.img", "read_only": true}}],
                    "vsock": {{"socket": "/tmp/v.sock", "guest_cid": 42}}}}"#,
                kernel.display()
            ),
        )
        .unwrap();
        let config = VmConfig::from_args(&VmmArgs {
            config: Some(file.clone()),
            memory_mib: Some(2048),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.memory_mib, 2048);
        assert_eq!(config.disks.len(), 1);
        assert_eq!(config.vsock.as_ref().unwrap().guest_cid, 42);
        assert_eq!(config.virtio_device_count(), 3);
        let config = VmConfig::from_args(&VmmArgs {
            config: Some(file.clone()),
            net: vec!["tap=tap0,mac=52:54:00:00:00:01".into(), "fd=4".into()],
            ..Default::default()
        });
        assert!(config.unwrap_err().to_string().contains("no mac"));
        let config = VmConfig::from_args(&VmmArgs {
            config: Some(file.clone()),
            net: vec!["tap=tap0,mac=52:54:00:00:00:01".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.net[0].tap, TapSource::Name("tap0".into()));
        assert_eq!(config.virtio_device_count(), 4);
        let mut twice = config.clone();
        twice.disks.clear();
        twice.net = vec!["fd=5,mac=52:54:00:00:00:01", "fd=5,mac=52:54:00:00:00:02"]
            .into_iter()
            .map(|a| a.parse::<NetArg>().unwrap().into_config(a).unwrap())
            .collect();
        let err = twice.validate_runtime().unwrap_err();
        assert!(
            err.to_string().contains("more than one network card"),
            "{err}"
        );

        std::fs::write(&file, r#"{"kernel": "/k", "vcpu": 2}"#).unwrap();
        let err = VmConfig::from_file(&file).unwrap_err();
        assert!(err.to_string().contains("vcpu"), "{err}");
    }

    /// Confinement is kept in the JSON config file the daemon writes, but never in a snapshot
    /// (postcard): the bytes are those of an unconfined config, and a restore starts without it.
    #[test]
    fn confinement_is_in_the_config_file_but_not_in_snapshots() {
        let dir = scratch();
        let mut config = VmConfig::from_args(&args_with_kernel(&dir)).unwrap();
        let plain = postcard::to_stdvec(&config).unwrap();
        config.confine = Some(ConfineConfig::new(64_007, 64_007));
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<VmConfig>(&json).unwrap().confine,
            config.confine
        );
        let saved = postcard::to_stdvec(&config).unwrap();
        assert_eq!(saved, plain, "the snapshot format must not change");
        let back: VmConfig = postcard::from_bytes(&saved).unwrap();
        assert_eq!(back.confine, None);
        // A restore gets it from its arguments.
        let restored = VmConfig::for_restore(
            back,
            &VmmArgs {
                confine_uid: Some(64_008),
                confine_gid: Some(64_009),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(restored.confine, Some(ConfineConfig::new(64_008, 64_009)));
        // Root is no confinement.
        let mut root = restored;
        root.confine = Some(ConfineConfig::new(0, 0));
        assert!(matches!(
            root.validate_runtime(),
            Err(ConfigError::Confine(_))
        ));
    }

    #[test]
    fn a_restore_takes_the_saved_config_with_runtime_overrides_only() {
        let dir = scratch();
        let mut args = args_with_kernel(&dir);
        args.disks = vec!["/saved.img".into()];
        args.vsock_socket = Some("/old/v.sock".into());
        args.vsock_cid = Some(3);
        args.control_socket = Some("/old/c.sock".into());
        let saved = VmConfig::from_args(&args).unwrap();

        let restore = |args: VmmArgs| VmConfig::for_restore(saved.clone(), &args);
        // Nothing given: the saved configuration as it was.
        assert_eq!(restore(VmmArgs::default()).unwrap(), saved);
        // A copy elsewhere: its own sockets, log, exit file and disk.
        let copy = restore(VmmArgs {
            disks: vec!["/copy.img,ro".into()],
            vsock_socket: Some("/new/v.sock".into()),
            control_socket: Some("/new/c.sock".into()),
            console_log: Some("/new/console.log".into()),
            exit_status_file: Some("/new/exit".into()),
            shutdown_timeout: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(copy.disks[0].path, PathBuf::from("/copy.img"));
        assert!(copy.disks[0].read_only);
        let vsock = copy.vsock.unwrap();
        assert_eq!((vsock.socket, vsock.guest_cid), ("/new/v.sock".into(), 3));
        assert_eq!(copy.control_socket, Some("/new/c.sock".into()));
        assert_eq!(copy.console_log, Some("/new/console.log".into()));
        assert_eq!(copy.exit_status_file, Some("/new/exit".into()));
        assert_eq!(copy.shutdown_timeout_secs, 5);
        assert_eq!(
            (copy.kernel, copy.memory_mib),
            (saved.kernel.clone(), saved.memory_mib)
        );
        // What the guest already depends on cannot change.
        let err = restore(VmmArgs {
            memory_mib: Some(1024),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--memory cannot change"), "{err}");
        let err = restore(VmmArgs {
            disks: vec!["/a.img".into(), "/b.img".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::RestoreDiskCount { saved: 1, given: 2 }
        ));
        // Network cards: a new TAP (and limit) per card, the same MAC.
        let mut with_net = saved.clone();
        with_net.net = vec![NetConfig {
            tap: TapSource::Name("tap0".into()),
            mac: "52:54:00:00:00:07".parse().unwrap(),
            limit: None,
        }];
        let net_restore = |net: &[&str]| {
            VmConfig::for_restore(
                with_net.clone(),
                &VmmArgs {
                    net: net.iter().map(|n| n.to_string()).collect(),
                    ..Default::default()
                },
            )
        };
        let moved = net_restore(&["fd=5,pps=100"]).unwrap();
        assert_eq!(moved.net[0].tap, TapSource::Fd(5));
        assert_eq!(moved.net[0].mac, with_net.net[0].mac);
        assert_eq!(moved.net[0].limit.unwrap().packets_per_sec, Some(100));
        net_restore(&["fd=5,mac=52:54:00:00:00:07"]).unwrap();
        let err = net_restore(&["fd=5,mac=52:54:00:00:00:08"]).unwrap_err();
        assert!(err.to_string().contains("MAC cannot change"), "{err}");
        assert!(matches!(
            net_restore(&["fd=5", "fd=6"]),
            Err(ConfigError::RestoreNetCount { saved: 1, given: 2 })
        ));
        let mut no_vsock = saved.clone();
        no_vsock.vsock = None;
        let err = VmConfig::for_restore(
            no_vsock,
            &VmmArgs {
                vsock_socket: Some("/v".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("vsock"), "{err}");
    }
}
