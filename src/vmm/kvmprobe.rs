//! A tiny real-mode KVM guest used to tell real hardware virtualization from emulation.
//!
//! The guest counts a register down in a tight loop, writes a marker byte to an I/O port and
//! halts. Timing the loop gives an instruction rate: on hardware virtualization (or real KVM
//! inside the rig) it runs at native speed; on a PVM `/dev/kvm` real-mode code goes through the
//! instruction emulator and runs thousands of times slower. The rig's self-test prints both.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::vmm::host::cpu_has_hardware_virtualization;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Where the guest's code is loaded and starts (real mode, CS = 0).
const CODE_ADDR: u64 = 0x1000;
/// Size of the guest's memory: code only, no stack needed.
const MEM_SIZE: usize = 0x10000;
/// The port the guest writes its marker to.
pub const MARKER_PORT: u16 = 0x3f8;
/// The byte the guest writes once its loop is done.
pub const MARKER_BYTE: u8 = b'K';

/// Options of `deskd probe-kvm`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Loop iterations the guest runs (two instructions each).
    #[arg(long, default_value_t = 1_000_000)]
    pub iterations: u32,
    /// Give up after this many seconds of guest run time.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// Why the probe could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot open /dev/kvm: {0} (is the kvm module loaded and are you root or in group kvm?)"
    )]
    Open(kvm_ioctls::Error),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up guest memory: {0}")]
    Memory(String),
    #[error("the guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
    #[error("the guest wrote {got:#04x} to port {port:#x}, expected {MARKER_BYTE:#04x} to {MARKER_PORT:#x}")]
    WrongMarker { port: u16, got: u8 },
    #[error(
        "the guest did not finish within {0:?}; /dev/kvm may be emulating real mode very slowly"
    )]
    Timeout(Duration),
}

/// What one run of the probe measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeReport {
    /// Instructions the guest executed (loop plus set-up and marker).
    pub instructions: u64,
    /// Wall time from the first `KVM_RUN` to the halt.
    pub seconds: f64,
    /// Instructions per second.
    pub rate: f64,
    /// Whether the host CPU advertises `vmx` or `svm`.
    pub hardware_virtualization: bool,
}

/// Real-mode code: `mov ecx, N; l: dec ecx; jnz l; mov dx, port; mov al, byte; out dx, al; hlt`.
fn guest_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9]; // mov ecx, imm32
    code.extend_from_slice(&iterations.max(1).to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49]); // dec ecx
    code.extend_from_slice(&[0x75, 0xfc]); // jnz back to `dec ecx` (-4)
    code.push(0xba); // mov dx, imm16
    code.extend_from_slice(&MARKER_PORT.to_le_bytes());
    code.extend_from_slice(&[0xb0, MARKER_BYTE]); // mov al, imm8
    code.push(0xee); // out dx, al
    code.push(0xf4); // hlt
    code
}

/// Runs the probe guest once on `/dev/kvm`.
pub fn probe(iterations: u32, timeout: Duration) -> Result<ProbeReport, ProbeError> {
    let kvm = Kvm::new().map_err(ProbeError::Open)?;
    let vm = kvm.create_vm().map_err(|source| ProbeError::Kvm {
        what: "create a VM",
        source,
    })?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    mem.write_slice(&guest_code(iterations), GuestAddress(CODE_ADDR))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let host_addr = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region is backed by `mem`, a live mapping of MEM_SIZE bytes; `vm` and `vcpu`
    // are dropped explicitly before `mem` below, so KVM never sees the mapping go away.
    unsafe { vm.set_user_memory_region(region) }.map_err(|source| ProbeError::Kvm {
        what: "map guest memory",
        source,
    })?;
    let mut vcpu = vm.create_vcpu(0).map_err(|source| ProbeError::Kvm {
        what: "create a vCPU",
        source,
    })?;
    let mut sregs = vcpu.get_sregs().map_err(|source| ProbeError::Kvm {
        what: "read segment registers",
        source,
    })?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|source| ProbeError::Kvm {
        what: "set segment registers",
        source,
    })?;
    let mut regs = vcpu.get_regs().map_err(|source| ProbeError::Kvm {
        what: "read registers",
        source,
    })?;
    regs.rip = CODE_ADDR;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(|source| ProbeError::Kvm {
        what: "set registers",
        source,
    })?;

    let started = Instant::now();
    let mut marker_seen = false;
    loop {
        if started.elapsed() > timeout {
            return Err(ProbeError::Timeout(timeout));
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let got = data.first().copied().unwrap_or(0);
                if port != MARKER_PORT || got != MARKER_BYTE {
                    return Err(ProbeError::WrongMarker { port, got });
                }
                marker_seen = true;
            }
            Ok(VcpuExit::Hlt) if marker_seen => break,
            Ok(other) => return Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(source) => {
                return Err(ProbeError::Kvm {
                    what: "run the vCPU",
                    source,
                })
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(vcpu);
    drop(vm);
    drop(mem);
    // Two per loop iteration plus mov ecx, mov dx, mov al, out, hlt.
    let instructions = 2 * u64::from(iterations.max(1)) + 5;
    Ok(ProbeReport {
        instructions,
        seconds,
        rate: instructions as f64 / seconds.max(1e-9),
        hardware_virtualization: cpu_has_hardware_virtualization(),
    })
}

/// `deskd probe-kvm`: runs the probe and prints what it measured.
pub fn run(args: ProbeArgs) -> ExitCode {
    match probe(args.iterations, Duration::from_secs(args.timeout)) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
                );
            } else {
                println!(
                    "kvm probe: {} instructions in {:.4} s = {:.2} million instructions/s (vmx/svm in cpuinfo: {})",
                    report.instructions,
                    report.seconds,
                    report.rate / 1e6,
                    if report.hardware_virtualization { "yes" } else { "no" }
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deskd probe-kvm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_code_loops_back_to_the_decrement() {
        let code = guest_code(5);
        // mov ecx, 5 (6 bytes), then dec ecx at offset 6, jnz at 8 whose target is 8 + 2 - 4 = 6.
        assert_eq!(&code[..6], &[0x66, 0xb9, 5, 0, 0, 0]);
        assert_eq!(&code[6..8], &[0x66, 0x49]);
        assert_eq!(code[8], 0x75);
        let target = 10i32 + i32::from(code[9] as i8);
        assert_eq!(target, 6);
        assert_eq!(*code.last().unwrap(), 0xf4);
    }

    #[test]
    fn zero_iterations_still_terminates() {
        // A zero count would make `dec ecx` wrap to 2^32 - 1.
        assert_eq!(&guest_code(0)[2..6], &[1, 0, 0, 0]);
    }
}
