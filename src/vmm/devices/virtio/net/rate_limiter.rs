//! Token buckets for a network card: one for bytes, one for frames, each optional. A frame may
//! pass when both buckets hold enough; the device asks how long to wait otherwise and sleeps on
//! a timer for that long. Time comes from a [`Clock`] so tests can move it by hand.
//!
//! Each bucket holds at most 100 ms of its rate (so a burst after a quiet spell stays short), but
//! never less than one largest frame (bytes) or one frame (frames), or a big frame could never
//! pass. A new limit starts with full buckets.

use std::time::{Duration, Instant};

use crate::vmm::config::NetRateLimit;

const NANOS: u128 = 1_000_000_000;
/// How much of its rate a bucket can store.
pub const BURST_DIVISOR: u64 = 10;

/// Monotonic time since an arbitrary start.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> Duration;
}

/// The real clock (CLOCK_MONOTONIC through `Instant`).
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// One bucket; its level is kept in billionths of a token, so slow refills are not rounded away.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u64,
    capacity: u128,
    level: u128,
    last: Duration,
}

impl Bucket {
    fn new(rate: u64, min_capacity: u64, now: Duration) -> Bucket {
        let capacity = u128::from((rate / BURST_DIVISOR).max(min_capacity).max(1)) * NANOS;
        Bucket {
            rate: rate.max(1),
            capacity,
            level: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_nanos();
        self.last = self.last.max(now);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(u128::from(self.rate)))
            .min(self.capacity);
    }

    /// `amount` in bucket units, no more than a full bucket (more could never be there).
    fn need(&self, amount: u64) -> u128 {
        (u128::from(amount) * NANOS).min(self.capacity)
    }

    fn wait_for(&self, amount: u64) -> Duration {
        let need = self.need(amount);
        if self.level >= need {
            return Duration::ZERO;
        }
        let nanos = (need - self.level).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn take(&mut self, amount: u64) {
        self.level = self.level.saturating_sub(self.need(amount));
    }
}

/// The limiter of one direction of one card.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bytes: Option<Bucket>,
    frames: Option<Bucket>,
}

impl RateLimiter {
    /// A limiter for `limit` (none: everything passes) with full buckets at `now`;
    /// `max_frame_len` is the largest frame a byte bucket must be able to hold.
    pub fn new(limit: Option<NetRateLimit>, max_frame_len: u64, now: Duration) -> RateLimiter {
        let limit = limit.unwrap_or_default();
        RateLimiter {
            bytes: limit
                .bandwidth_bytes_per_sec
                .map(|rate| Bucket::new(rate, max_frame_len, now)),
            frames: limit.packets_per_sec.map(|rate| Bucket::new(rate, 1, now)),
        }
    }

    /// Zero when a frame of `len` bytes may pass at `now`, else how long until it may.
    pub fn wait(&mut self, len: u64, now: Duration) -> Duration {
        let mut wait = Duration::ZERO;
        if let Some(b) = self.bytes.as_mut() {
            b.refill(now);
            wait = wait.max(b.wait_for(len));
        }
        if let Some(b) = self.frames.as_mut() {
            b.refill(now);
            wait = wait.max(b.wait_for(1));
        }
        wait
    }

    /// Takes the tokens of a frame of `len` bytes that passed (after [`Self::wait`] said zero).
    pub fn consume(&mut self, len: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.take(len);
        }
        if let Some(b) = self.frames.as_mut() {
            b.take(1);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock that moves only when told.
    #[derive(Debug, Default)]
    pub struct FakeClock(AtomicU64);

    impl FakeClock {
        pub fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn limit(bytes: Option<u64>, frames: Option<u64>) -> Option<NetRateLimit> {
        Some(NetRateLimit {
            bandwidth_bytes_per_sec: bytes,
            packets_per_sec: frames,
        })
    }

    /// Sends `len`-byte frames as fast as the limiter allows for `span`; returns how many passed.
    fn run(limiter: &mut RateLimiter, len: u64, span: Duration) -> u64 {
        let mut now = Duration::ZERO;
        let mut passed = 0;
        while now <= span {
            let wait = limiter.wait(len, now);
            if wait.is_zero() {
                limiter.consume(len);
                passed += 1;
            } else {
                now += wait;
            }
        }
        passed
    }

    #[test]
    fn no_limit_never_waits() {
        let mut l = RateLimiter::new(None, 1500, Duration::ZERO);
        for _ in 0..10_000 {
            assert_eq!(l.wait(65_000, Duration::ZERO), Duration::ZERO);
            l.consume(65_000);
        }
    }

    #[test]
    fn frames_per_second_hold_over_time_with_a_short_burst() {
        // 1000 frames/s: a burst of 100, then one per millisecond.
        let mut l = RateLimiter::new(limit(None, Some(1000)), 1500, Duration::ZERO);
        for _ in 0..100 {
            assert!(l.wait(60, Duration::ZERO).is_zero());
            l.consume(60);
        }
        assert_eq!(l.wait(60, Duration::ZERO), Duration::from_millis(1));
        let mut l = RateLimiter::new(limit(None, Some(1000)), 1500, Duration::ZERO);
        assert_eq!(run(&mut l, 60, Duration::from_secs(10)), 100 + 10_000);
    }

    #[test]
    fn bandwidth_holds_and_slow_rates_are_not_rounded_away() {
        // 10 Mbit/s in 1500-byte frames for 20 s: within one burst of the exact figure.
        let rate = 1_250_000;
        let mut l = RateLimiter::new(limit(Some(rate), None), 65_562, Duration::ZERO);
        let bytes = run(&mut l, 1500, Duration::from_secs(20)) * 1500;
        let exact = rate * 20;
        assert!(
            bytes >= exact && bytes <= exact + rate / BURST_DIVISOR + 1500,
            "{bytes}"
        );
        // 3 bytes/s: the bucket still reaches a frame's worth; nothing is lost to rounding.
        let mut l = RateLimiter::new(limit(Some(3), None), 10, Duration::ZERO);
        l.consume(10);
        let wait = l.wait(10, Duration::ZERO);
        assert_eq!(wait, Duration::from_nanos(3_333_333_334));
        assert!(!l.wait(10, wait - Duration::from_millis(1)).is_zero());
        assert!(l.wait(10, wait).is_zero());
    }

    #[test]
    fn a_frame_bigger_than_the_bucket_still_passes_at_the_rate() {
        // A bucket holds at least max_frame_len; a bigger frame waits for a full bucket only.
        let mut l = RateLimiter::new(limit(Some(1000), None), 100, Duration::ZERO);
        assert!(l.wait(5000, Duration::ZERO).is_zero());
        l.consume(5000);
        assert_eq!(l.wait(5000, Duration::ZERO), Duration::from_millis(100));
    }

    #[test]
    fn both_buckets_must_allow_a_frame() {
        let mut l = RateLimiter::new(limit(Some(100_000), Some(10)), 1000, Duration::ZERO);
        // The frame bucket (1 token) runs out first.
        assert!(l.wait(10, Duration::ZERO).is_zero());
        l.consume(10);
        assert_eq!(l.wait(10, Duration::ZERO), Duration::from_millis(100));
        // Then the byte bucket (10 000 bytes) for big frames.
        let mut l = RateLimiter::new(limit(Some(10_000), Some(1_000_000)), 1000, Duration::ZERO);
        l.consume(10_000);
        assert_eq!(l.wait(1000, Duration::ZERO), Duration::from_millis(100));
    }
}
