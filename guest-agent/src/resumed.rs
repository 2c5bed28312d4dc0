//! What the agent does when the daemon says the VM was restored ([`crate::protocol::resumed`]):
//! step the wall clock to the host's, and for a copy of a VM take its new identity (hostname,
//! machine-id, a reseeded kernel RNG).
//!
//! The agent runs as the desktop user, so the work that needs root is done by `deskd-agent
//! --apply-resumed`, the root helper (see [`crate::root_helper`]) behind [`HELPER_SOCKET`]
//! (`deskd-restore.socket`, which only the agent's user may open).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::resumed::{NewIdentity, Resumed, ResumedDone};
use crate::root_helper::{self, HelperError};

/// Why the agent could not apply a restore's request; shown to the daemon as a 500 or 400.
#[derive(Debug, thiserror::Error)]
pub enum ResumedError {
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot set the wall clock: {0}")]
    Clock(nix::Error),
    #[error("cannot set the hostname: {0}")]
    Hostname(String),
    #[error("cannot write {path}: {err}")]
    Write {
        path: &'static str,
        err: std::io::Error,
    },
    #[error("cannot reseed the kernel RNG: {0}")]
    Entropy(String),
    #[error("{0}")]
    Helper(String),
}

/// The socket of the root helper (`images/rootfs/etc/systemd/system/deskd-restore.socket`).
pub const HELPER_SOCKET: &str = "/run/deskd-restore.sock";
/// How long the helper may take (it writes three small files and makes a few syscalls).
const HELPER_DEADLINE: Duration = Duration::from_secs(20);

/// What the agent hands the helper: the request, and when the agent received it on
/// CLOCK_MONOTONIC, so the clock is set to the host's time plus however long the helper took to
/// start (seconds in the rig), not to a time already past.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HelperRequest {
    pub resumed: Resumed,
    pub received_monotonic_ns: u64,
}

/// CLOCK_MONOTONIC now, nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Has the root helper apply `req` (the agent's side).
pub async fn apply_through_helper(req: &Resumed) -> Result<ResumedDone, ResumedError> {
    let req = HelperRequest {
        resumed: req.clone(),
        received_monotonic_ns: monotonic_ns(),
    };
    root_helper::ask(Path::new(HELPER_SOCKET), &req, HELPER_DEADLINE)
        .await
        .map_err(|e| match e {
            HelperError::BadRequest(m) => ResumedError::BadRequest(m),
            HelperError::Failed(m) => ResumedError::Helper(m),
        })
}

/// `deskd-agent --apply-resumed`: the root helper's side (see [`root_helper::serve`]).
pub fn serve_helper() -> std::process::ExitCode {
    root_helper::serve(|req: HelperRequest| {
        apply(&req.resumed, req.received_monotonic_ns).map_err(|e| match e {
            ResumedError::BadRequest(m) => HelperError::BadRequest(m),
            e => HelperError::Failed(e.to_string()),
        })
    })
}

/// Applies `req` (as root); blocking (small file writes and syscalls).
pub fn apply(req: &Resumed, received_monotonic_ns: u64) -> Result<ResumedDone, ResumedError> {
    let entropy = match &req.identity {
        Some(id) => Some(id.check().map_err(ResumedError::BadRequest)?),
        None => None,
    };
    // The host's time, moved on by however long it took to get here since the agent received it.
    let since = monotonic_ns().saturating_sub(received_monotonic_ns);
    let clock_step_ms = step_clock(req.host_time_unix_ns.saturating_add(since))?;
    if let (Some(id), Some(entropy)) = (&req.identity, entropy) {
        // Entropy first: nothing the new identity leads to should draw from the old RNG state.
        reseed_rng(&entropy)?;
        set_hostname(&id.hostname)?;
        set_machine_id(id)?;
    }
    Ok(ResumedDone {
        clock_step_ms,
        identity_applied: req.identity.is_some(),
    })
}

/// Sets CLOCK_REALTIME to the host's time; returns the step in milliseconds.
fn step_clock(host_ns: u64) -> Result<i64, ResumedError> {
    let host = UNIX_EPOCH + Duration::from_nanos(host_ns);
    let now = SystemTime::now();
    let step_ms = match host.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
    };
    let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(host_ns));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(ResumedError::Clock)?;
    Ok(step_ms)
}

fn set_hostname(name: &str) -> Result<(), ResumedError> {
    nix::unistd::sethostname(name).map_err(|e| ResumedError::Hostname(e.to_string()))?;
    write_atomically("/etc/hostname", format!("{name}\n").as_bytes())?;
    // Tools that resolve the host's own name read /etc/hosts (Debian keeps it on 127.0.1.1).
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    write_atomically("/etc/hosts", hosts_with(&hosts, name).as_bytes())
}

/// `hosts` with its `127.0.1.1` line naming `name` (added if missing).
fn hosts_with(hosts: &str, name: &str) -> String {
    let line = format!("127.0.1.1\t{name}");
    let mut found = false;
    let mut out: Vec<String> = hosts
        .lines()
        .map(|l| {
            if l.starts_with("127.0.1.1") {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    out.join("\n") + "\n"
}

fn set_machine_id(id: &NewIdentity) -> Result<(), ResumedError> {
    write_atomically("/etc/machine-id", format!("{}\n", id.machine_id).as_bytes())
}

fn write_atomically(path: &'static str, bytes: &[u8]) -> Result<(), ResumedError> {
    let tmp = format!("{path}.deskd-tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| {
            // The files keep their usual world-readable mode.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|err| ResumedError::Write { path, err })
}

/// `struct rand_pool_info` of `<linux/random.h>` with room for the largest batch we send.
#[repr(C)]
struct EntropyBatch {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 512],
}

// RNDADDENTROPY is `_IOW('R', 0x03, int[2])`: its size field counts the two ints, not the buffer.
nix::ioctl_write_ptr!(rnd_add_entropy, b'R', 0x03, [libc::c_int; 2]);
// RNDRESEEDCRNG is `_IO('R', 0x07)`: make the CRNG take the new input now, not at its next reseed.
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Credits `entropy` to the kernel's pool and forces a CRNG reseed, so the copy's
/// `/dev/urandom` output diverges from its source's at once.
fn reseed_rng(entropy: &[u8]) -> Result<(), ResumedError> {
    use std::os::fd::AsRawFd;
    let mut batch = EntropyBatch {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; 512],
    };
    let n = entropy.len().min(batch.buf.len());
    batch.buf[..n].copy_from_slice(&entropy[..n]);
    batch.buf_size = n as libc::c_int;
    batch.entropy_count = (n * 8) as libc::c_int;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| ResumedError::Entropy(format!("cannot open /dev/random: {e}")))?;
    // SAFETY: `batch` is a live, properly laid out `rand_pool_info` whose `buf_size` bytes of
    // `buf` are initialised; the kernel only reads it during the call.
    unsafe {
        rnd_add_entropy(
            random.as_raw_fd(),
            (&batch as *const EntropyBatch).cast::<[libc::c_int; 2]>(),
        )
    }
    .map_err(|e| ResumedError::Entropy(format!("RNDADDENTROPY: {e}")))?;
    // SAFETY: an argument-less ioctl on an open /dev/random descriptor.
    unsafe { rnd_reseed_crng(random.as_raw_fd()) }
        .map_err(|e| ResumedError::Entropy(format!("RNDRESEEDCRNG: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_line_is_replaced_or_added() {
        assert_eq!(
            hosts_with("127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 x\n", "new"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n::1 x\n"
        );
        assert_eq!(
            hosts_with("127.0.0.1\tlocalhost\n", "new"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n"
        );
    }

    #[test]
    fn a_bad_identity_changes_nothing() {
        let req = Resumed {
            host_time_unix_ns: 0,
            identity: Some(NewIdentity {
                hostname: "ok".into(),
                machine_id: "nothex".into(),
                entropy_hex: String::new(),
            }),
        };
        // Refused before the clock (which would be set to 1970) is touched.
        assert!(matches!(
            apply(&req, monotonic_ns()),
            Err(ResumedError::BadRequest(_))
        ));
    }
}
