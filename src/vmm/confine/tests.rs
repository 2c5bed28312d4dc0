//! Confinement seen from a forked child (confinement cannot be undone, so never in the test
//! process itself): the filters of every thread kind trap what they forbid with status 6 and
//! the exit line, and let through what the VMM's own code does (its real control server,
//! device worker, logs and snapshot writer run under them); as root, the jail holds only the
//! listed paths and the identity step leaves an unprivileged, capability-less process.
//!
//! The children report through exit codes and files opened before confinement: after a fork
//! from the multi-threaded test harness they must not take locks other threads may have held
//! (stdout, stderr), so they print nothing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::vmm::exit::{self, StatusFile, EXIT_FORBIDDEN_SYSCALL};

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signaled(i32),
}

/// Runs `f` in a forked child (killed after 60 s) and returns how it ended; `f`'s value is the
/// exit status, a panic is 101.
fn in_child(f: impl FnOnce() -> i32) -> End {
    // SAFETY: the child runs only `f` and then `_exit`s, never returning into the harness; the
    // parent only waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: alarm and _exit take integers; _exit never returns.
        unsafe {
            libc::alarm(60);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: `status` is a valid int for waitpid to write.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    if libc::WIFEXITED(status) {
        End::Exited(libc::WEXITSTATUS(status))
    } else {
        End::Signaled(libc::WTERMSIG(status))
    }
}

/// What the exit status file of a child says, for assertion messages.
fn said(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no exit file: {e})"))
}

/// The capabilities the jail and the identity step need: CAP_SETGID, CAP_SETUID, CAP_SETPCAP,
/// CAP_SYS_ADMIN, as root. Says why a test is skipped when they are missing.
fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (jail and identity drop need root's capabilities)");
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    use caps::Capability::*;
    let needed = [CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN]
        .iter()
        .fold(0u64, |bits, cap| bits | cap.bitmask());
    if eff & needed != needed {
        eprintln!(
            "SKIPPED {test}: root without CAP_SETUID/CAP_SETGID/CAP_SETPCAP/CAP_SYS_ADMIN (CapEff {eff:#x})"
        );
        return false;
    }
    true
}

#[test]
fn a_forbidden_syscall_ends_the_vmm_with_status_6_and_says_which() {
    for kind in ThreadKind::ALL {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.exit");
        let end = in_child(|| {
            let Ok(status) = StatusFile::create(&path) else {
                return 10;
            };
            if filters_only(Some(status.raw_fd())).is_err() {
                return 11;
            }
            // As a thread of this kind would: its own filter first.
            let thread = std::thread::spawn(move || {
                if kind != ThreadKind::Setup && enter_thread(kind).is_err() {
                    return 12;
                }
                forbidden_syscall();
                13
            });
            thread.join().unwrap_or(14)
        });
        assert_eq!(
            end,
            End::Exited(i32::from(EXIT_FORBIDDEN_SYSCALL)),
            "{kind:?}: {}",
            said(&path)
        );
        let record = exit::read_status_record(&path).unwrap();
        assert_eq!(record.status, 6);
        assert_eq!(
            record.forbidden_syscall,
            Some(libc::SYS_getppid),
            "{kind:?}"
        );
    }
}

#[test]
fn a_vcpu_thread_cannot_start_a_thread_or_open_a_socket() {
    for (what, call) in [("clone", 0usize), ("socket", 1), ("unknown ioctl", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.exit");
        let end = in_child(|| {
            let Ok(status) = StatusFile::create(&path) else {
                return 10;
            };
            if filters_only(Some(status.raw_fd())).is_err() {
                return 11;
            }
            let vcpu = std::thread::spawn(move || {
                if enter_thread(ThreadKind::Vcpu).is_err() {
                    return 12;
                }
                match call {
                    0 => {
                        let _ = std::thread::Builder::new().spawn(|| ());
                    }
                    1 => {
                        let _ = std::os::unix::net::UnixStream::connect("/nonexistent");
                    }
                    _ => {
                        // SAFETY: an ioctl on stdin with a request number nothing uses.
                        unsafe { libc::ioctl(0, 0x1234_5678) };
                    }
                }
                13
            });
            vcpu.join().unwrap_or(14)
        });
        // A trap inside glibc's thread start comes while it blocks every signal: the kernel
        // then kills with SIGSYS itself (the daemon says so too, from the signal).
        let forbidden = end == End::Exited(6) || end == End::Signaled(libc::SIGSYS);
        assert!(forbidden, "{what}: {end:?} {}", said(&path));
    }
}

/// A control target whose snapshots are real ones (the VMM's own snapshot writer, with a small
/// guest memory) and whose pause kicks a thread as the real one kicks vCPUs.
struct SnapshottingVm {
    mem: crate::vmm::memory::GuestMemory,
}

impl crate::vmm::control::Controllable for SnapshottingVm {
    fn status(&self) -> crate::vmm::control::VmStatus {
        crate::vmm::control::VmStatus {
            state: crate::vmm::control::RunState::Paused,
            vcpus: 1,
            memory_mib: 1,
            uptime_ms: 1,
            pid: std::process::id(),
        }
    }
    fn pause(&self) -> Result<(), String> {
        // SAFETY: signal 0 to this very thread: only checks that it may be signalled.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid(),
                libc::syscall(libc::SYS_gettid),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    }
    fn resume(&self) {}
    fn snapshot(&self, dir: &Path) -> Result<crate::vmm::control::SnapshotDone, String> {
        use crate::vmm::snapshot;
        let pending = snapshot::PendingSnapshot::create(dir).map_err(|e| e.to_string())?;
        let stats = snapshot::memory::write_sparse(&self.mem, &pending.memory_path())
            .map_err(|e| e.to_string())?;
        pending
            .finish(&snapshot::tests::sample_state())
            .map_err(|e| e.to_string())?;
        Ok(crate::vmm::control::SnapshotDone {
            memory_bytes: stats.ram_bytes,
            memory_data_bytes: stats.data_bytes,
            snapshot_ms: 1,
        })
    }
    fn set_net_limit(&self, _: usize, _: crate::vmm::config::NetRateLimit) -> Result<(), String> {
        Ok(())
    }
    fn grow_disk(&self, _: usize, size_bytes: u64) -> Result<u64, String> {
        Ok(size_bytes)
    }
    fn shutdown(&self) {}
    fn force_stop(&self) {}
}

/// A device worker doing what the devices do: waits on its epoll set, drains its kick eventfd,
/// reads and writes a disk image (positioned, flushed, a hole punched), gets random bytes, and
/// connects to a host Unix socket and talks over it, as vsock does for the guest.
struct DeviceLike {
    kick: EventFd,
    disk: std::fs::File,
    peer: PathBuf,
    done: Arc<AtomicU32>,
}

impl crate::vmm::devices::virtio::worker::WorkerBody for DeviceLike {
    fn run(&mut self, event_loop: &crate::vmm::devices::virtio::worker::EventLoop) {
        use crate::vmm::devices::virtio::worker::{drain, STOP_TOKEN};
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let Ok(ready) = event_loop.wait(&mut events) else {
                self.done.store(900, Ordering::SeqCst);
                return;
            };
            for (token, _) in ready {
                if token == STOP_TOKEN {
                    return;
                }
                drain(&self.kick);
                let step = self.serve();
                self.done.store(step, Ordering::SeqCst);
            }
        }
    }
}

impl DeviceLike {
    /// 1 when everything worked, else the step that failed (100 and up).
    fn serve(&mut self) -> u32 {
        use vmm_sys_util::write_zeroes::PunchHole;
        let mut sector = [7u8; 512];
        if self.disk.write_all_at(&sector, 4096).is_err() {
            return 100;
        }
        if self.disk.read_exact_at(&mut sector, 0).is_err() {
            return 101;
        }
        if self.disk.sync_data().is_err() {
            return 102;
        }
        if self.disk.punch_hole(8192, 4096).is_err() {
            return 103;
        }
        let mut random = [0u8; 16];
        if getrandom::fill(&mut random).is_err() {
            return 104;
        }
        let stream = match crate::vmm::devices::virtio::vsock::host::connect_nonblocking(&self.peer)
        {
            Ok(s) => s,
            Err(_) => return 105,
        };
        if (&stream).write_all(b"hello").is_err() {
            return 106;
        }
        if stream.set_nonblocking(false).is_err() {
            return 107;
        }
        let mut answer = [0u8; 2];
        if (&stream).read_exact(&mut answer).is_err() || &answer != b"ok" {
            return 108;
        }
        1
    }
}

/// The VMM's own control server, device worker (activated from a vCPU thread, started by the
/// spawner, paused and resumed), logs (rotating) and snapshot writer, each under the filter of
/// the thread kind that runs it in a VMM; then the main thread's end (poll, exit status, the
/// control socket removed). Any trap ends the child with 6 and names the call.
#[test]
fn what_the_vmm_does_is_allowed_by_its_filters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let exit_path = d.join("vmm.exit");
    let end = in_child(|| run_vmm_like(&d));
    assert_eq!(end, End::Exited(0), "{}", said(&exit_path));
    assert_eq!(std::fs::read_to_string(&exit_path).unwrap(), "0 poweroff\n");
    assert!(d.join("saved/state").is_file(), "the snapshot is whole");
    assert!(d.join("vmm.log.1").is_file(), "the log rotated");
    assert!(!d.join("control.sock").exists(), "removed at the end");
}

fn run_vmm_like(d: &Path) -> i32 {
    use crate::vmm::capped_log::CappedLog;
    use crate::vmm::control::ControlServer;
    use crate::vmm::devices::virtio::worker::{EventLoop, Worker};

    // What the VMM opens before confinement.
    let Ok(status) = StatusFile::create(&d.join("vmm.exit")) else {
        return 20;
    };
    let Ok(mut log) = CappedLog::open(&d.join("vmm.log"), 256) else {
        return 21;
    };
    let Ok(mut control) = ControlServer::bind(&d.join("control.sock")) else {
        return 22;
    };
    let Ok(disk) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.join("disk.img"))
    else {
        return 23;
    };
    if disk.set_len(1 << 20).is_err() {
        return 24;
    }
    let peer = d.join("vsock.sock_1024");
    let Ok(listener) = std::os::unix::net::UnixListener::bind(&peer) else {
        return 25;
    };
    let Ok(mem) =
        crate::vmm::memory::GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
    else {
        return 26;
    };
    let Ok(wake) = EventFd::new(EFD_NONBLOCK) else {
        return 27;
    };
    // vsock's host socket, which its activation (on a vCPU thread) shares with the worker.
    let Ok(vsock_listener) = std::os::unix::net::UnixListener::bind(d.join("vsock.sock")) else {
        return 29;
    };
    if filters_only(Some(status.raw_fd())).is_err() {
        return 28;
    }

    // The host side of the vsock peer: the test's, unfiltered in spirit (setup allows it).
    let host = std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return false;
        };
        let mut hello = [0u8; 5];
        conn.read_exact(&mut hello).is_ok() && conn.write_all(b"ok").is_ok()
    });

    // A vCPU thread activates a device (eventfds, epoll, the worker via the spawner), writes
    // its console log (rotating it), pauses and resumes the worker, resets it.
    let done = Arc::new(AtomicU32::new(0));
    let vcpu_done = done.clone();
    let vcpu_peer = peer.clone();
    let vcpu = std::thread::spawn(move || -> i32 {
        if enter_thread(ThreadKind::Vcpu).is_err() {
            return 30;
        }
        for _ in 0..8 {
            if log
                .write_all(b"vcpu0: a console line of some length\n")
                .is_err()
            {
                return 31;
            }
        }
        // An ioctl of the vCPU's list on a descriptor that is not a vCPU: refused by the kernel
        // (ENOTTY), not by the filter.
        // SAFETY: KVM_RUN takes no argument; stdin is not a vCPU, so the kernel refuses it.
        if unsafe { libc::ioctl(0, super::seccomp::tests_support::kvm_run()) } != -1 {
            return 32;
        }
        let (Ok(kick), Ok(event_loop)) = (EventFd::new(EFD_NONBLOCK), EventLoop::new()) else {
            return 33;
        };
        // vsock's activation: its host socket shared with the worker, made non-blocking
        // (FIONBIO); a boot in the rig ended with SIGSYS here while the filter lacked it.
        match vsock_listener.try_clone() {
            Ok(l) if l.set_nonblocking(true).is_ok() => {}
            _ => return 43,
        }
        let Ok(kick_copy) = kick.try_clone() else {
            return 34;
        };
        if event_loop.add(kick.as_raw_fd(), 0, EventSet::IN).is_err() {
            return 35;
        }
        let body = DeviceLike {
            kick: kick_copy,
            disk,
            peer: vcpu_peer,
            done: vcpu_done.clone(),
        };
        let Ok(mut worker) = Worker::start("test-device", event_loop, body) else {
            return 36;
        };
        if kick.write(1).is_err() {
            return 37;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while vcpu_done.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        worker.pause();
        if worker.resume().is_err() {
            return 38;
        }
        drop(worker);
        0
    });
    let vcpu_result = vcpu.join().unwrap_or(39);
    if vcpu_result != 0 {
        return vcpu_result;
    }
    match done.load(Ordering::SeqCst) {
        1 => {}
        0 => return 40,
        step => return i32::try_from(step).unwrap_or(41),
    }
    if !host.join().unwrap_or(false) {
        return 42;
    }

    // The control server, as the VMM serves it, asked for a pause and two snapshots (the
    // second replaces the first: the exchange and the removal).
    let vm = Arc::new(SnapshottingVm { mem });
    let Ok(wake_copy) = wake.try_clone() else {
        return 50;
    };
    if control.serve(vm, wake_copy).is_err() {
        return 51;
    }
    let Ok(client) = std::os::unix::net::UnixStream::connect(d.join("control.sock")) else {
        return 52;
    };
    let saved = d.join("saved");
    let request = format!(
        "{{\"cmd\":\"pause\"}}\n{{\"cmd\":\"snapshot\",\"dir\":{:?}}}\n{{\"cmd\":\"snapshot\",\"dir\":{:?}}}\n{{\"cmd\":\"status\"}}\n",
        saved, saved
    );
    if (&client).write_all(request.as_bytes()).is_err() {
        return 53;
    }
    let mut reader = std::io::BufReader::new(&client);
    for n in 0..4 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).is_err()
            || !line.contains("\"ok\":true")
        {
            return 54 + n;
        }
    }

    // The main thread's end: its filter, the wait, the exit status, the socket removed.
    if enter_thread(ThreadKind::Main).is_err() {
        return 60;
    }
    let mut fds = [libc::pollfd {
        fd: wake.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid pollfd array for the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) } < 0 {
        return 61;
    }
    let _ = wake.read();
    if status.write(crate::vmm::exit::VmExit::PowerOff).is_err() {
        return 62;
    }
    drop(control);
    0
}

/// A root-owned tree like the daemon's: a computer directory (the VMM's own), an images
/// directory, and another computer's directory the jail must not show.
struct Tree {
    _dir: tempfile::TempDir,
    computer: PathBuf,
    kernel: PathBuf,
    other: PathBuf,
}

fn tree(uid: u32) -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let computer = dir.path().join("computers/c1");
    let other = dir.path().join("computers/c2");
    let images = dir.path().join("images");
    for d in [&computer, &other, &images] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(computer.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(other.join("disk.img"), b"another tenant's disk").unwrap();
    let kernel = images.join("kernel");
    std::fs::write(&kernel, b"a kernel").unwrap();
    std::os::unix::fs::chown(&computer, Some(uid), Some(uid)).unwrap();
    Tree {
        _dir: dir,
        computer,
        kernel,
        other,
    }
}

fn vm_config(tree: &Tree, uid: u32) -> VmConfig {
    let mut config = VmConfig::from_args(&crate::vmm::config::VmmArgs {
        kernel: Some(tree.kernel.clone()),
        disks: vec![tree.computer.join("disk.img").display().to_string()],
        ..Default::default()
    })
    .unwrap();
    config.control_socket = Some(tree.computer.join("control.sock"));
    config.console_log = Some(tree.computer.join("console.log"));
    config.log_file = Some(tree.computer.join("vmm.log"));
    config.exit_status_file = Some(tree.computer.join("vmm.exit"));
    config.confine = Some(crate::vmm::config::ConfineConfig::new(uid, uid));
    config
}

/// Appends a line to the report file (opened before confinement).
fn report(file: &std::fs::File, line: &str) {
    let mut f = file;
    let _ = writeln!(f, "{line}");
}

#[test]
fn the_jail_holds_only_the_listed_paths() {
    if !privileged("the_jail_holds_only_the_listed_paths") {
        return;
    }
    let uid = 64_950;
    let t = tree(uid);
    let config = vm_config(&t, uid);
    let binds = plan::binds(&config, &|p| p.exists()).unwrap();
    let report_path = t.computer.join("../report");
    let kvm_on_host = Path::new("/dev/kvm").exists();
    let end = in_child(|| {
        let Ok(out) = std::fs::File::create(&report_path) else {
            return 10;
        };
        if let Err(e) = jail::enter(&binds) {
            report(&out, &format!("jail: {e}"));
            return 11;
        }
        let mut failures = 0;
        let mut check = |ok: bool, what: &str| {
            if !ok {
                report(&out, what);
                failures += 1;
            }
        };
        check(
            t.computer.join("disk.img").is_file(),
            "the VMM's disk is missing",
        );
        check(
            std::fs::write(t.computer.join("new-file"), b"x").is_ok(),
            "the computer directory is not writable",
        );
        check(t.kernel.is_file(), "the kernel is missing");
        check(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&t.kernel)
                .is_err(),
            "the kernel is writable",
        );
        check(!t.other.exists(), "another computer's directory is visible");
        check(!Path::new("/proc").exists(), "/proc is visible");
        check(!Path::new("/etc").exists(), "/etc is visible");
        check(
            Path::new("/dev/kvm").exists() == kvm_on_host,
            "/dev/kvm differs from the host",
        );
        check(
            std::fs::write("/dev/null", b"x").is_ok(),
            "/dev/null is not writable",
        );
        check(!Path::new("/dev/sda").exists(), "other devices are visible");
        check(
            std::fs::write("/planted", b"x").is_err(),
            "the jail's root is writable",
        );
        let top: Vec<String> = std::fs::read_dir("/")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let first = t
            .computer
            .components()
            .nth(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut expected = vec!["dev".to_string(), first];
        expected.sort();
        expected.dedup();
        let mut seen = top.clone();
        seen.sort();
        check(
            seen == expected,
            &format!("/ holds {seen:?}, expected {expected:?}"),
        );
        failures
    });
    let said = std::fs::read_to_string(&report_path).unwrap_or_default();
    assert_eq!(end, End::Exited(0), "{said}");
    // The host's tree is as it was: the other computer's disk is there, and no mount point
    // was made in it.
    assert!(t.other.join("disk.img").is_file());
    assert!(!t.computer.join("dev").exists());
}

#[test]
fn confinement_leaves_an_unprivileged_process_with_seccomp() {
    if !privileged("confinement_leaves_an_unprivileged_process_with_seccomp") {
        return;
    }
    let uid = 64_951;
    let t = tree(uid);
    let config = vm_config(&t, uid);
    let report_path = t.computer.join("../report");
    let end = in_child(|| {
        let Ok(out) = std::fs::File::create(&report_path) else {
            return 10;
        };
        // /proc is not in the jail: read the status through a descriptor opened before.
        let Ok(proc_status) = std::fs::File::open("/proc/self/status") else {
            return 11;
        };
        let Ok(proc_limits) = std::fs::File::open("/proc/self/limits") else {
            return 11;
        };
        let Ok(status_file) = StatusFile::create(config.exit_status_file.as_ref().unwrap()) else {
            return 12;
        };
        let confinement = match Confinement::prepare(&config, Some(status_file.raw_fd())) {
            Ok(Some(c)) => c,
            Ok(None) => return 13,
            Err(e) => {
                report(&out, &format!("prepare: {e}"));
                return 14;
            }
        };
        if let Err(e) = confinement.enter() {
            report(&out, &format!("enter: {e}"));
            return 15;
        }
        let mut text = vec![0u8; 8192];
        let Ok(n) = proc_status.read_at(&mut text, 0) else {
            return 16;
        };
        let text = String::from_utf8_lossy(&text[..n]).into_owned();
        report(&out, &text);
        let mut limits = vec![0u8; 8192];
        let Ok(n) = proc_limits.read_at(&mut limits, 0) else {
            return 17;
        };
        report(&out, &String::from_utf8_lossy(&limits[..n]));
        // Its own directory stays writable to it, another's is not there.
        let own = std::fs::write(t.computer.join("x"), b"x").is_ok();
        report(&out, &format!("own dir writable {own}"));
        report(&out, &format!("other disk visible {}", t.other.exists()));
        0
    });
    let said = std::fs::read_to_string(&report_path).unwrap_or_default();
    assert_eq!(end, End::Exited(0), "{said}");
    let field = |name: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), format!("{uid} {uid} {uid} {uid}"), "{said}");
    assert_eq!(field("Gid:"), format!("{uid} {uid} {uid} {uid}"), "{said}");
    assert_eq!(field("Groups:"), "", "{said}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{said}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{said}");
    assert_eq!(field("CapInh:"), "0000000000000000", "{said}");
    assert_eq!(field("CapBnd:"), "0000000000000000", "{said}");
    assert_eq!(field("CapAmb:"), "0000000000000000", "{said}");
    assert_eq!(field("NoNewPrivs:"), "1", "{said}");
    assert_eq!(field("Seccomp:"), "2", "{said}");
    // /proc/self/limits: "Max core file size  0  0  bytes" (soft, hard, unit).
    let limit = |name: &str| {
        field(name)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(limit("Max core file size"), "0", "{said}");
    assert_eq!(
        limit("Max open files"),
        limits::DEFAULT_MAX_OPEN_FILES.to_string(),
        "{said}"
    );
    let fsize: u64 = limit("Max file size").parse().unwrap_or(0);
    assert!(fsize >= (512 << 20) + (1 << 20), "{said}");
    assert_eq!(field("own dir writable"), "true", "{said}");
    assert_eq!(field("other disk visible"), "false", "{said}");
}

/// A panic on a confined thread ends the VMM with status 5 and its message in the log, also when
/// `RUST_BACKTRACE` asks the standard hook for a backtrace (reading the binary and /proc, which
/// the filters forbid: CI's VMMs ended with "seccomp" for it).
#[test]
fn a_panic_on_a_confined_thread_ends_the_vmm_with_its_message() {
    for kind in [ThreadKind::Worker, ThreadKind::Vcpu, ThreadKind::Control] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.exit");
        let log = dir.path().join("vmm.log");
        let end = in_child(|| {
            // The child has one thread: nothing else reads the environment meanwhile.
            std::env::set_var("RUST_BACKTRACE", "1");
            let Ok(out) = std::fs::File::create(&log) else {
                return 9;
            };
            // SAFETY: dup2 on two open descriptors; stderr becomes the log file.
            if unsafe { libc::dup2(out.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
                return 9;
            }
            let Ok(status) = StatusFile::create(&path) else {
                return 10;
            };
            if status.end_on_panic().is_err() || filters_only(Some(status.raw_fd())).is_err() {
                return 11;
            }
            let thread = std::thread::Builder::new()
                .name(format!("test-{}", kind.as_str()))
                .spawn(move || {
                    if enter_thread(kind).is_err() {
                        return 12;
                    }
                    let empty: Vec<u8> = Vec::new();
                    i32::from(empty[std::hint::black_box(3usize)])
                });
            match thread {
                Ok(t) => t.join().unwrap_or(14),
                Err(_) => 13,
            }
        });
        let said_log = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            end,
            End::Exited(5),
            "{kind:?}: {} / {said_log}",
            said(&path)
        );
        assert_eq!(said(&path), "5 panic\n");
        assert!(
            said_log.contains(&format!("thread 'test-{}' panicked at", kind.as_str()))
                && said_log.contains("index out of bounds"),
            "{kind:?}: {said_log}"
        );
        assert!(!said_log.contains("seccomp"), "{said_log}");
    }
}

/// An open a thread's filter does not allow fails with EACCES and the VMM goes on, the refusal in
/// its log; the next forbidden call of another kind still ends it.
#[test]
fn an_open_outside_the_filter_is_refused_and_the_vmm_goes_on() {
    for kind in [ThreadKind::Worker, ThreadKind::Vcpu, ThreadKind::Main] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.exit");
        let log = dir.path().join("vmm.log");
        let end = in_child(|| {
            let Ok(out) = std::fs::File::create(&log) else {
                return 9;
            };
            // SAFETY: dup2 on two open descriptors; stderr becomes the log file.
            if unsafe { libc::dup2(out.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
                return 9;
            }
            let Ok(status) = StatusFile::create(&path) else {
                return 10;
            };
            if filters_only(Some(status.raw_fd())).is_err() {
                return 11;
            }
            let thread = std::thread::spawn(move || {
                if enter_thread(kind).is_err() {
                    return 12;
                }
                for _ in 0..3 {
                    match std::fs::File::open("/proc/self/status") {
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                        Err(_) => return 13,
                        Ok(_) => return 14,
                    }
                }
                if std::fs::read_dir("/proc/self/task").is_ok() {
                    return 15;
                }
                // Still confined: a call of another kind ends the process.
                forbidden_syscall();
                16
            });
            thread.join().unwrap_or(17)
        });
        let said_log = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            end,
            End::Exited(i32::from(EXIT_FORBIDDEN_SYSCALL)),
            "{kind:?}: {} / {said_log}",
            said(&path)
        );
        assert_eq!(said(&path), format!("6 seccomp {}\n", libc::SYS_getppid));
        assert!(
            said_log.contains(&format!(
                "257 on a {} thread (arguments 0xffffff9c, ",
                kind.as_str()
            )) && said_log
                .contains("on \"/proc/self/status\" refused by seccomp (EACCES); the VMM goes on"),
            "{kind:?}: {said_log}"
        );
        assert_eq!(
            said_log.matches("refused by seccomp").count(),
            4,
            "{said_log}"
        );
    }
}
