//! What happens at a forbidden system call: the seccomp filters answer `SECCOMP_RET_TRAP`, the
//! kernel sends SIGSYS to the thread that made it, and this handler decides.
//! - An `openat` a thread's filter does not allow is *refused*: the handler makes the call
//!   return `EACCES` (the result register in the saved context, which the kernel puts back when
//!   the handler returns), logs what was opened, and the thread goes on. Nothing was opened, so
//!   the confinement is whole; but libraries open files lazily and best-effort (CI's VMMs ended,
//!   now and then, with "seccomp 257" mid-run), and a VM must not die for a read of `/proc` or
//!   `/sys` that its code can do without.
//! - Any other call writes `6 seccomp <syscall number>` to the VMM's exit status file (opened
//!   before confinement; the daemon reads it as the computer's `status_reason`) and a line to
//!   stderr (the VMM's log), then ends the whole process with status 6. Nothing of the thread's
//!   work goes on.
//!
//! The handler only formats into a stack buffer and calls `write` and `_exit`, which every
//! filter allows: it is async-signal-safe and cannot itself trip a filter.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

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

/// What the handler knows of a trapped call besides its number: the thread's kind, its first
/// three arguments, and for a call that names a file, the start of that name.
#[derive(Default)]
pub struct Trapped<'a> {
    pub thread: &'a str,
    pub args: Option<[u64; 3]>,
    pub path: &'a [u8],
    /// Refused with an error (the VMM goes on) rather than ending the VMM.
    pub refused: bool,
}

/// The stderr line for a forbidden call of `nr` (for an ioctl the descriptor and the request
/// number, for an `openat` the flags and the file: what a missing filter entry needs).
pub fn log_line(buf: &mut [u8; 320], nr: i64, trapped: &Trapped) -> usize {
    let mut at = push_bytes(buf, 0, b"deskd vmm: forbidden system call ");
    at = push_number(buf, at, nr);
    if !trapped.thread.is_empty() {
        at = push_bytes(buf, at, b" on a ");
        at = push_bytes(buf, at, trapped.thread.as_bytes());
        at = push_bytes(buf, at, b" thread");
    }
    if let Some(args) = trapped.args {
        at = push_bytes(buf, at, b" (arguments ");
        for (i, arg) in args.iter().enumerate() {
            if i > 0 {
                at = push_bytes(buf, at, b", ");
            }
            at = push_hex(buf, at, *arg);
        }
        at = push_bytes(buf, at, b", ...)");
    }
    if !trapped.path.is_empty() {
        at = push_bytes(buf, at, b" on \"");
        for &b in trapped.path {
            at = push_bytes(
                buf,
                at,
                if b.is_ascii_graphic() || b == b' ' {
                    std::slice::from_ref(&b)
                } else {
                    b"?"
                },
            );
        }
        at = push_bytes(buf, at, b"\"");
    }
    if trapped.refused {
        push_bytes(buf, at, b" refused by seccomp (EACCES); the VMM goes on\n")
    } else {
        push_bytes(buf, at, b" stopped by seccomp; the VMM ends\n")
    }
}

/// The first three system call arguments at the trap, from the saved registers.
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn first_args(context: *mut libc::c_void) -> Option<[u64; 3]> {
    if context.is_null() {
        return None;
    }
    // SAFETY: with SA_SIGINFO the third handler argument is the ucontext_t of the interrupted
    // thread, valid for the whole handler; RDI, RSI and RDX hold the first three arguments.
    let regs = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    Some([
        regs[libc::REG_RDI as usize] as u64,
        regs[libc::REG_RSI as usize] as u64,
        regs[libc::REG_RDX as usize] as u64,
    ])
}

#[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
fn first_args(_: *mut libc::c_void) -> Option<[u64; 3]> {
    None
}

/// The start of the NUL-terminated file name at `ptr` (an `openat`'s second argument), copied
/// into `out`; empty for a null pointer.
///
/// # Safety
/// `ptr` must be null or point to readable memory up to its NUL or `out.len()` bytes: true of
/// the name a thread of this process just passed to the kernel, which had not read it yet.
unsafe fn file_name(ptr: u64, out: &mut [u8; 96]) -> &[u8] {
    if ptr == 0 {
        return &[];
    }
    let mut len = 0;
    while len < out.len() {
        // SAFETY: within the caller's promise, one byte at a time, stopping at the NUL.
        let b = unsafe { *(ptr as *const u8).add(len) };
        if b == 0 {
            break;
        }
        out[len] = b;
        len += 1;
    }
    &out[..len]
}

std::thread_local! {
    /// The kind of the thread's own filter, set by `super::enter_thread`; a thread that installs
    /// none runs under the setup filter it inherited. Read by the handler: a const-initialised
    /// thread local without a destructor is safe to read in a signal handler.
    static THREAD_KIND: std::cell::Cell<&'static str> = const { std::cell::Cell::new("setup") };
}

/// Records the calling thread's kind for the handler's line.
pub fn set_thread_kind(kind: &'static str) {
    THREAD_KIND.with(|k| k.set(kind));
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

/// Refused opens so far: the first [`REFUSALS_LOGGED`] are logged, then one in 1000, so code
/// that retries an open in a loop cannot fill the log.
static REFUSALS: AtomicU64 = AtomicU64::new(0);
const REFUSALS_LOGGED: u64 = 20;

/// Whether a trapped call is refused with an error rather than ending the VMM.
fn is_refused(nr: i64) -> bool {
    nr == libc::SYS_openat
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: for SIGSYS the kernel fills `info` with the `_sigsys` layout SigsysInfo
        // describes; it is valid for the whole handler.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let refuse = is_refused(nr) && set_result(context, -i64::from(libc::EACCES));
    if !refuse {
        let mut status = [0u8; 48];
        let len = status_line(&mut status, nr);
        let fd = EXIT_FD.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; the buffer is valid for `len` bytes.
            unsafe { libc::write(fd, status.as_ptr().cast(), len) };
        }
    } else {
        let n = REFUSALS.fetch_add(1, Ordering::Relaxed);
        if n >= REFUSALS_LOGGED && !n.is_multiple_of(1000) {
            return;
        }
    }
    let args = first_args(context);
    let mut name = [0u8; 96];
    let path = match args {
        // SAFETY: openat's second argument is the file name the thread was passing to the
        // kernel (see `file_name`). For a call that ends the VMM the status line is already
        // written, so even a fault here leaves the reason recorded.
        Some([_, ptr, _]) if nr == libc::SYS_openat => unsafe { file_name(ptr, &mut name) },
        _ => &[],
    };
    let trapped = Trapped {
        thread: THREAD_KIND.with(|k| k.get()),
        args,
        path,
        refused: refuse,
    };
    let mut message = [0u8; 320];
    let len = log_line(&mut message, nr, &trapped);
    // SAFETY: as above, to stderr (the VMM's log).
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), len) };
    if refuse {
        return;
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process without running anything else.
    unsafe { libc::_exit(i32::from(EXIT_FORBIDDEN_SYSCALL)) };
}

/// Makes the trapped call return `value` when the handler returns: with `SECCOMP_RET_TRAP` the
/// call was not made, and the result register of the saved context is what the thread sees.
/// False where this cannot be done (then the VMM ends, as for any other call).
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn set_result(context: *mut libc::c_void, value: i64) -> bool {
    if context.is_null() {
        return false;
    }
    // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext_t, valid
    // and writable for the whole handler; the kernel restores RAX from it on return.
    unsafe {
        (*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RAX as usize] = value;
    }
    true
}

#[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
fn set_result(_: *mut libc::c_void, _: i64) -> bool {
    false
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
        let mut log = [0u8; 320];
        let ioctl = Trapped {
            thread: "vcpu",
            args: Some([7, 0xc008_ae88, 0]),
            path: &[],
            refused: false,
        };
        let n = log_line(&mut log, 16, &ioctl);
        assert_eq!(
            std::str::from_utf8(&log[..n]).unwrap(),
            "deskd vmm: forbidden system call 16 on a vcpu thread (arguments 0x7, 0xc008ae88, 0x0, ...) stopped by seccomp; the VMM ends\n"
        );
        let mut name = [0u8; 96];
        let c_name = b"/sys/devices/system/cpu/online\0";
        // SAFETY: a NUL-terminated byte string.
        let path = unsafe { file_name(c_name.as_ptr() as u64, &mut name) };
        let open = Trapped {
            thread: "worker",
            args: Some([0xffff_ff9c, 0x1234, 0x80000]),
            path,
            refused: true,
        };
        let n = log_line(&mut log, 257, &open);
        assert_eq!(
            std::str::from_utf8(&log[..n]).unwrap(),
            "deskd vmm: forbidden system call 257 on a worker thread (arguments 0xffffff9c, 0x1234, 0x80000, ...) on \"/sys/devices/system/cpu/online\" refused by seccomp (EACCES); the VMM goes on\n"
        );
        let long = [b'a'; 200];
        let mut named = long.to_vec();
        named.push(0);
        // SAFETY: NUL-terminated; only the first 96 bytes are read.
        let cut = unsafe { file_name(named.as_ptr() as u64, &mut name) };
        assert_eq!(cut.len(), 96, "names are cut, never read past the buffer");
        let n = log_line(&mut log, 110, &Trapped::default());
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
