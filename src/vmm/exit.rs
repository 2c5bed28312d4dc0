//! How a VM ended, the process exit status for each, and the one-shot notifier devices and vCPU
//! threads use to end the VM.

use std::process::ExitCode;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped. Each has its own process exit status so the daemon can tell them apart:
///
/// | status | meaning |
/// |---|---|
/// | 0 | the guest powered off (ACPI S5) |
/// | 1 | the VMM could not start the VM (bad config, missing kernel, no KVM, ...) |
/// | 2 | bad command line (from the argument parser) |
/// | 3 | the guest rebooted (i8042 reset, ACPI reset, triple fault): start it again |
/// | 4 | hard stop: the guest ignored the power button until the timeout, or a forced shutdown |
/// | 5 | the VM failed while running (KVM internal error, entry failure, vCPU thread died) |
/// | 6 | a confined VMM made a system call its seccomp filter forbids (`vmm::confine`); the exit status file says which: `6 seccomp <number>` |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Reboot,
    HardStop,
    Failed,
}

/// Exit status when the VM could not be started.
pub const EXIT_START_FAILED: u8 = 1;
/// Exit status clap gives a bad command line.
pub const EXIT_BAD_ARGUMENTS: u8 = 2;
/// Exit status of a confined VMM that made a forbidden system call (`vmm::confine::sigsys`).
pub const EXIT_FORBIDDEN_SYSCALL: u8 = 6;

/// What a `deskd vmm` exit status means, for messages (the table above).
pub fn meaning(status: i32) -> &'static str {
    match status {
        0 => "the guest powered off",
        s if s == i32::from(EXIT_START_FAILED) => "the VM could not start",
        s if s == i32::from(EXIT_BAD_ARGUMENTS) => "the VMM rejected its arguments",
        3 => "the guest rebooted",
        4 => "the guest did not power off in time and was stopped hard",
        5 => "the VM failed",
        s if s == i32::from(EXIT_FORBIDDEN_SYSCALL) => "the VMM made a forbidden system call",
        _ => "unknown exit status",
    }
}

/// Whether an exit status is [`VmExit::Reboot`]'s: the guest should be booted again.
pub fn is_reboot(status: i32) -> bool {
    status == i32::from(VmExit::Reboot.status())
}

/// The exit status file, opened (empty) when the VMM starts and kept open: the VMM writes
/// `<status> <word>` into it when its VM ends, and a confined VMM's SIGSYS handler writes
/// `6 seccomp <number>` through the same descriptor (it can open nothing then). A daemon that is
/// not the VMM's parent (it was restarted) reads it with [`read_status_file`] to tell a reboot
/// from a failure. An empty file says nothing, as a missing one does.
#[derive(Debug)]
pub struct StatusFile {
    file: std::fs::File,
}

impl StatusFile {
    /// Creates or empties the file at `path`.
    pub fn create(path: &std::path::Path) -> std::io::Result<StatusFile> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(StatusFile { file })
    }

    /// The descriptor, for the SIGSYS handler.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Makes a panic on any thread end the VMM at once with [`VmExit::Failed`]'s status and
    /// `5 panic` in this file, after one line on stderr (the VMM's log) naming the thread, the
    /// place and the message.
    ///
    /// Without it a panicking device worker dies alone and its guest waits forever on a queue,
    /// and the standard hook, when `RUST_BACKTRACE` is set in the environment the daemon passed
    /// on, reads the binary and `/proc` for the backtrace: calls a confined VMM's seccomp
    /// filters forbid, so the panic became a "forbidden system call" that hid its message.
    pub fn end_on_panic(&self) -> std::io::Result<()> {
        let file = self.file.try_clone()?;
        std::panic::set_hook(Box::new(move |info| {
            use std::io::Write;
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current();
            let _ = writeln!(
                std::io::stderr(),
                "deskd vmm: thread '{}' panicked at {place}: {message}; the VMM ends (exit status {})",
                thread.name().unwrap_or("unnamed"),
                VmExit::Failed.status()
            );
            // The file is still empty while the VM runs, so a plain write puts the line at its
            // start (as the SIGSYS handler's does): positioned writes and truncation are not in
            // every thread's filter.
            let _ = (&file).write_all(format!("{} panic\n", VmExit::Failed.status()).as_bytes());
            // SAFETY: _exit ends the process at once; other threads may hold guest memory, which
            // the exit releases with everything else.
            unsafe { libc::_exit(i32::from(VmExit::Failed.status())) };
        }));
        Ok(())
    }

    /// Writes how the VM ended, in one write at the start of the file.
    pub fn write(&self, how: VmExit) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let line = format!("{} {}\n", how.status(), how.as_str());
        self.file.write_all_at(line.as_bytes(), 0)?;
        self.file.set_len(line.len() as u64)
    }
}

/// What an exit status file says: the status and, for a forbidden system call, its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRecord {
    pub status: i32,
    pub forbidden_syscall: Option<i64>,
}

/// The exit status file's record, if it has one that makes sense.
pub fn read_status_record(path: &std::path::Path) -> Option<StatusRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let status = words.next()?.parse().ok()?;
    let forbidden_syscall = match (words.next(), words.next()) {
        (Some("seccomp"), Some(nr)) => nr.parse().ok(),
        _ => None,
    };
    Some(StatusRecord {
        status,
        forbidden_syscall,
    })
}

/// The status in an exit status file, if there is one that makes sense.
pub fn read_status_file(path: &std::path::Path) -> Option<i32> {
    read_status_record(path).map(|r| r.status)
}

/// How a VMM that ended with `status` is described to people (a computer's `status_reason`),
/// with the exit status file's detail when there is one.
pub fn describe(status: i32, record: Option<StatusRecord>) -> String {
    match record.and_then(|r| r.forbidden_syscall) {
        Some(nr) if status == i32::from(EXIT_FORBIDDEN_SYSCALL) => format!(
            "the VMM made a forbidden system call {nr} (its seccomp filter stopped it: a guest \
             attacking the VMM, or a call deskd's filter lacks; the VMM log has the details)"
        ),
        _ => meaning(status).to_string(),
    }
}

impl VmExit {
    /// The process exit status for this ending.
    pub fn status(self) -> u8 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Reboot => 3,
            VmExit::HardStop => 4,
            VmExit::Failed => 5,
        }
    }

    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self.status())
    }

    /// A word for logs and the control socket.
    pub fn as_str(self) -> &'static str {
        match self {
            VmExit::PowerOff => "poweroff",
            VmExit::Reboot => "reboot",
            VmExit::HardStop => "hard-stop",
            VmExit::Failed => "failed",
        }
    }
}

/// Records the first reason the VM should end and wakes whoever waits on [`Self::eventfd`].
#[derive(Debug)]
pub struct ExitNotifier {
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Asks for the VM to end; only the first request counts.
    pub fn request(&self, why: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if reason.is_none() {
            *reason = Some(why);
            // The counter cannot overflow from one write; a failure would only delay the waiter
            // until its next timeout.
            if let Err(e) = self.evt.write(1) {
                tracing::error!("cannot signal the VM exit: {e}");
            }
        }
    }

    /// The reason, once one was requested.
    pub fn reason(&self) -> Option<VmExit> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Becomes readable once [`Self::request`] was called.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct_and_not_the_start_failure() {
        let all = [
            VmExit::PowerOff,
            VmExit::Reboot,
            VmExit::HardStop,
            VmExit::Failed,
        ];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a.status(), EXIT_START_FAILED);
            assert_ne!(a.status(), 2, "2 is the argument parser's");
            assert_ne!(a.status(), EXIT_FORBIDDEN_SYSCALL);
            for b in &all[i + 1..] {
                assert_ne!(a.status(), b.status());
            }
        }
    }

    #[test]
    fn the_status_file_reads_back_what_was_written() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("vmm.exit");
        assert_eq!(read_status_file(&path), None);
        let file = StatusFile::create(&path).unwrap();
        assert_eq!(read_status_file(&path), None, "empty: says nothing yet");
        file.write(VmExit::PowerOff).unwrap();
        file.write(VmExit::Reboot).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3 reboot\n");
        let status = read_status_file(&path).unwrap();
        assert!(is_reboot(status));
        assert_eq!(meaning(status), "the guest rebooted");
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(read_status_file(&path), None);
        assert_eq!(meaning(99), "unknown exit status");
        // What the SIGSYS handler writes (confine::sigsys).
        std::fs::write(&path, "6 seccomp 41\n").unwrap();
        let record = read_status_record(&path).unwrap();
        assert_eq!(record.forbidden_syscall, Some(41));
        let said = describe(record.status, Some(record));
        assert!(said.contains("forbidden system call 41"), "{said}");
        assert_eq!(describe(5, None), "the VM failed");
    }

    #[test]
    fn first_request_wins_and_signals() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.reason(), None);
        assert!(n.eventfd().read().is_err(), "nothing pending yet");
        n.request(VmExit::Reboot);
        n.request(VmExit::PowerOff);
        assert_eq!(n.reason(), Some(VmExit::Reboot));
        assert_eq!(n.eventfd().read().unwrap(), 1);
    }
}
