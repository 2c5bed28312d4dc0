//! What happens at a forbidden system call: the seccomp filters answer `SECCOMP_RET_TRAP`, the
//! kernel sends SIGSYS to the thread that made it, and this handler writes
//! `6 seccomp <syscall number>` to the VMM's exit status file (opened before confinement; the
//! daemon reads it as the computer's `status_reason`) and a line to stderr (the VMM's log), then
//! ends the whole process with status 6. Nothing of the thread's work goes on.
//!
//! The handler only formats into a stack buffer and calls `write` and `_exit`, which every
//! filter allows: it is async-signal-safe and cannot itself trip a filter.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::vmm::exit::EXIT_FORBIDDEN_SYSCALL;

/// The exit status file's descriptor (-1: there is none).
static EXIT_FD: AtomicI32 = AtomicI32::new(-1);

/// The start of `siginfo_t` for SIGSYS on Linux (`_sigsys` in the kernel's `siginfo`): three
/// ints, padding to pointer alignment, then the address of the call, the syscall number and the
/// audit architecture. The libc crate has no accessor for these fields.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Why the handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the SIGSYS handler: {0}")]
pub struct SigsysError(std::io::Error);

/// Writes `n` in decimal at the end of `buf[..at]`; returns the new end.
fn push_number(buf: &mut [u8], mut at: usize, n: i64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let negative = n < 0;
    let mut value = n.unsigned_abs();
    loop {
        digits[len] = b'0' + (value % 10) as u8;
        len += 1;
        value /= 10;
        if value == 0 || len == digits.len() {
            break;
        }
    }
    if negative && at < buf.len() {
        buf[at] = b'-';
        at += 1;
    }
    while len > 0 && at < buf.len() {
        len -= 1;
        buf[at] = digits[len];
        at += 1;
    }
    at
}

/// Writes `n` in hexadecimal (`0x...`) at `buf[at..]`; returns the new end.
fn push_hex(buf: &mut [u8], mut at: usize, n: u64) -> usize {
    for &b in b"0x" {
        if at < buf.len() {
            buf[at] = b;
            at += 1;
        }
    }
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        if at < buf.len() {
            buf[at] = b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize];
            at += 1;
        }
    }
    at
}

/// Appends `bytes` at `buf[at..]`; returns the new end.
fn push_bytes(buf: &mut [u8], mut at: usize, bytes: &[u8]) -> usize {
    for &b in bytes {
        if at < buf.len() {
            buf[at] = b;
            at += 1;
        }
    }
    at
}

/// The stderr line for a forbidden call of `nr` with its first two arguments (for an ioctl, the
/// descriptor and the request number: what a missing filter entry needs).
pub fn log_line(buf: &mut [u8; 160], nr: i64, args: Option<(u64, u64)>) -> usize {
    let mut at = push_bytes(buf, 0, b"deskd vmm: forbidden system call ");
    at = push_number(buf, at, nr);
    if let Some((a0, a1)) = args {
        at = push_bytes(buf, at, b" (arguments ");
        at = push_hex(buf, at, a0);
        at = push_bytes(buf, at, b", ");
        at = push_hex(buf, at, a1);
        at = push_bytes(buf, at, b", ...)");
    }
    push_bytes(buf, at, b" stopped by seccomp; the VMM ends\n")
}

/// The first two system call arguments at the trap, from the saved registers.
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn first_args(context: *mut libc::c_void) -> Option<(u64, u64)> {
    if context.is_null() {
        return None;
    }
    // SAFETY: with SA_SIGINFO the third handler argument is the ucontext_t of the interrupted
    // thread, valid for the whole handler; RDI and RSI hold the first two syscall arguments.
    let regs = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    Some((
        regs[libc::REG_RDI as usize] as u64,
        regs[libc::REG_RSI as usize] as u64,
    ))
}

#[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
fn first_args(_: *mut libc::c_void) -> Option<(u64, u64)> {
    None
}

/// `prefix` then `n` then `suffix` into `buf`; returns the length.
fn line(buf: &mut [u8], prefix: &[u8], n: i64, suffix: &[u8]) -> usize {
    let mut at = 0;
    for &b in prefix {
        if at < buf.len() {
            buf[at] = b;
            at += 1;
        }
    }
    at = push_number(buf, at, n);
    for &b in suffix {
        if at < buf.len() {
            buf[at] = b;
            at += 1;
        }
    }
    at
}

/// The exit status file's line for a forbidden call of `nr`.
pub fn status_line(buf: &mut [u8; 48], nr: i64) -> usize {
    line(buf, b"6 seccomp ", nr, b"\n")
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: for SIGSYS the kernel fills `info` with the `_sigsys` layout SigsysInfo
        // describes; it is valid for the whole handler.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let mut status = [0u8; 48];
    let len = status_line(&mut status, nr);
    let fd = EXIT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is valid for `len` bytes.
        unsafe { libc::write(fd, status.as_ptr().cast(), len) };
    }
    let mut message = [0u8; 160];
    let len = log_line(&mut message, nr, first_args(context));
    // SAFETY: as above, to stderr (the VMM's log).
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), len) };
    // SAFETY: _exit(2) is async-signal-safe and ends the process without running anything else.
    unsafe { libc::_exit(i32::from(EXIT_FORBIDDEN_SYSCALL)) };
}

/// Installs the handler for the whole process; `exit_fd` is the exit status file's descriptor,
/// which must stay open until the process ends.
pub fn install(exit_fd: Option<i32>) -> Result<(), SigsysError> {
    EXIT_FD.store(exit_fd.unwrap_or(-1), Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is a valid starting point; the handler has the SA_SIGINFO
    // signature and `sa_mask` is initialised by sigemptyset before use.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SigsysError(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_formatted_without_allocating() {
        let mut buf = [0u8; 48];
        let n = status_line(&mut buf, 41);
        assert_eq!(&buf[..n], b"6 seccomp 41\n");
        let n = status_line(&mut buf, 0);
        assert_eq!(&buf[..n], b"6 seccomp 0\n");
        let n = status_line(&mut buf, -1);
        assert_eq!(&buf[..n], b"6 seccomp -1\n");
        let mut small = [0u8; 4];
        assert_eq!(
            line(&mut small, b"ab", 12345, b"\n"),
            4,
            "never past the end"
        );
        let mut log = [0u8; 160];
        let n = log_line(&mut log, 16, Some((7, 0xc008_ae88)));
        assert_eq!(
            std::str::from_utf8(&log[..n]).unwrap(),
            "deskd vmm: forbidden system call 16 (arguments 0x7, 0xc008ae88, ...) stopped by seccomp; the VMM ends\n"
        );
        let n = log_line(&mut log, 110, None);
        assert!(std::str::from_utf8(&log[..n])
            .unwrap()
            .ends_with("110 stopped by seccomp; the VMM ends\n"));
        let mut hex = [0u8; 24];
        let n = push_hex(&mut hex, 0, 0);
        assert_eq!(&hex[..n], b"0x0");
        let n = push_hex(&mut hex, 0, u64::MAX);
        assert_eq!(&hex[..n], b"0xffffffffffffffff");
        // The layout read in the handler: the syscall number at offset 24 on 64-bit Linux.
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
    }
}
