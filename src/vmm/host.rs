//! What this host must have to run VMs: hardware virtualization in the CPU and a usable
//! `/dev/kvm`. Checked by the daemon before it starts a computer and by the VMM before it builds a
//! VM, so both say the same thing the same way.

/// Why this host cannot run VMs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(
        "its CPU has no hardware virtualization (no vmx or svm flag in /proc/cpuinfo; a nested \
         cloud's /dev/kvm without them cannot boot stock guest kernels)"
    )]
    NoHardwareVirtualization,
    #[error(
        "/dev/kvm cannot be opened ({0}); load kvm-intel or kvm-amd and make sure deskd may use /dev/kvm"
    )]
    NoKvm(String),
}

/// Whether `/proc/cpuinfo` lists `vmx` or `svm`.
pub fn cpu_has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| cpuinfo_has_hardware_virtualization(&info))
        .unwrap_or(false)
}

fn cpuinfo_has_hardware_virtualization(info: &str) -> bool {
    info.lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Whether `/dev/kvm` opens for reading and writing.
pub fn check_kvm_device() -> Result<(), HostError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| HostError::NoKvm(e.to_string()))
}

/// Both checks: the CPU first (a PVM `/dev/kvm` opens, yet cannot run stock kernels).
pub fn check(cpu_has_hardware_virtualization: bool) -> Result<(), HostError> {
    if !cpu_has_hardware_virtualization {
        return Err(HostError::NoHardwareVirtualization);
    }
    check_kvm_device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_lines_decide() {
        assert!(cpuinfo_has_hardware_virtualization(
            "processor : 0\nflags : fpu vme svm sse\n"
        ));
        assert!(cpuinfo_has_hardware_virtualization("flags\t\t: vmx\n"));
        // A flag name inside another word or outside the flags line does not count.
        assert!(!cpuinfo_has_hardware_virtualization(
            "model name : svm-like\nflags : fpu vmxx\n"
        ));
        assert_eq!(check(false), Err(HostError::NoHardwareVirtualization));
    }
}
