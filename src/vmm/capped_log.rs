//! A log file that never grows past its cap: when the next write would take it over, the file is
//! renamed to `<name>.1` (replacing the previous one) and a new one is started, so a log and its
//! predecessor together hold at most twice the cap. Used for the guest's serial console and the
//! VMM's own log, both of which a guest can make write without end.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default cap of the console log and of the VMM's log.
pub const DEFAULT_CAP_BYTES: u64 = 4 << 20;

/// An append-only log file with a size cap.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    file: File,
    len: u64,
    cap: u64,
}

impl CappedLog {
    /// Appends to `path` (created if missing); rotates once it would pass `cap` bytes.
    pub fn open(path: &Path, cap: u64) -> io::Result<CappedLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_path_buf(),
            file,
            len,
            cap: cap.max(1),
        })
    }

    /// Where the previous file goes on rotation.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len > 0 && self.len.saturating_add(buf.len() as u64) > self.cap {
            self.rotate()?;
        }
        // One write never holds more than the cap: the rest comes in the next call.
        let take = buf
            .len()
            .min(usize::try_from(self.cap).unwrap_or(usize::MAX));
        let n = self.file.write(&buf[..take])?;
        self.len = self.len.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_output_stays_under_twice_the_cap_and_the_latest_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("console.log");
        let mut log = CappedLog::open(&path, 1000).unwrap();
        for i in 0..10_000u32 {
            writeln!(log, "line {i:05}").unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let before = std::fs::read_to_string(CappedLog::rotated_path(&path)).unwrap();
        assert!(now.len() <= 1000 && before.len() <= 1000);
        assert!(now.ends_with("line 09999\n"), "{now}");
        // Nothing in between was lost: the older file ends where the newer begins.
        let first_now: u32 = now[5..10].parse().unwrap();
        let last_before: u32 = before
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(first_now, last_before + 1);
        // A reopened log goes on from its size.
        drop(log);
        let reopened = CappedLog::open(&path, 1000).unwrap();
        assert_eq!(reopened.len, now.len() as u64);
    }

    #[test]
    fn one_write_larger_than_the_cap_is_split() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.log");
        let mut log = CappedLog::open(&path, 100).unwrap();
        log.write_all(&[b'a'; 350]).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }
}
