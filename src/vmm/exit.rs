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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Reboot,
    HardStop,
    Failed,
}

/// Exit status when the VM could not be started.
pub const EXIT_START_FAILED: u8 = 1;

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
            for b in &all[i + 1..] {
                assert_ne!(a.status(), b.status());
            }
        }
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
