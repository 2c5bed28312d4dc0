//! The VMM's pid file: `<pid> <start time>` (the start time in clock ticks since boot, field 22 of
//! `/proc/PID/stat`, so that a recycled pid is never taken for the VMM). The VMM writes it itself
//! before its guest runs, and a failure to write it stops the start: a VMM nobody can find again
//! after a daemon restart must never run. The daemon reads it to re-attach.

use std::path::Path;

/// Writes this process's pid file atomically.
pub fn write_own(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = start_time(i32::try_from(pid).unwrap_or(i32::MAX)).ok_or_else(|| {
        std::io::Error::other("cannot read this process's start time from /proc/self/stat")
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {start}\n"))?;
    std::fs::rename(tmp, path)
}

/// The pid and start time in a pid file, if it holds both.
pub fn read(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    Some((pid, start))
}

/// The start time of a live process (none for a finished zombie or a missing one).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19. A zombie is not alive, unless it is
    // a thread-group leader waiting for its other threads: they still share its open files
    // (a VMM's disk lock among them) and may be tearing down gigabytes of guest memory.
    if fields.first() == Some(&"Z") && !has_other_threads(pid) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process `pid` still has threads besides its leader (exited threads other than the
/// leader leave `/proc/PID/task` at once).
fn has_other_threads(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .any(|t| t.file_name().to_str() != Some(&pid.to_string()))
        })
        .unwrap_or(false)
}

/// Whether the process a pid file names is still that process.
pub fn is_alive(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_file_names_this_live_process() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("vmm.pid");
        write_own(&path).unwrap();
        let (pid, start) = read(&path).unwrap();
        assert_eq!(pid as u32, std::process::id());
        assert!(is_alive(pid, start));
        assert!(
            !is_alive(pid, start + 1),
            "another start time is another process"
        );
        assert!(start_time(i32::MAX).is_none());
        std::fs::write(&path, "12 x\n").unwrap();
        assert_eq!(read(&path), None);
    }

    #[test]
    fn other_threads_are_seen() {
        let pid = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(has_other_threads(pid));
        drop(tx);
        t.join().unwrap().unwrap_err();
        assert!(!has_other_threads(i32::MAX), "no such process");
    }
}
