//! Rate limits for log lines a guest can trigger over and over: at most one line per interval per
//! call site, with a count of the ones left out, so a hostile guest cannot fill the host's disk
//! through the VMM's log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One call site's limit.
pub struct LogLimit {
    interval_ms: u64,
    /// When the last line was let through (ms since the epoch; 0 = never).
    last_ms: AtomicU64,
    /// Lines left out since then.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// At most one line every `interval_ms`.
    pub const fn new(interval_ms: u64) -> LogLimit {
        LogLimit {
            interval_ms,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this line may be logged (`n` lines were left out before it), `None` if not.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
            .max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another thread logged this very moment.
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// `tracing::warn!` at most once per `LogLimit` interval, saying how many were left out.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(left_out) = $limit.allow() {
            if left_out > 0 {
                tracing::warn!("{} ({left_out} more like it left out)", format_args!($($arg)+));
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let limit = LogLimit::new(60_000);
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(limit.allow(), None);
        }
        // Pretend the interval passed.
        limit.last_ms.store(1, Ordering::Relaxed);
        assert_eq!(limit.allow(), Some(1000));
    }
}
