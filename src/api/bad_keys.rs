//! Requests without a valid API key, limited per peer: a token bucket per peer (the uid of the
//! Unix socket's client from SO_PEERCRED; the TCP client's address, or with
//! `rate_limit.trust_forwarded_for` the last `X-Forwarded-For` address a loopback proxy gives;
//! IPv6 by /64, which one host usually holds whole). Each request with a missing or wrong key
//! takes a token; an empty bucket answers 429 with `Retry-After` before the key is looked up, so
//! a flood of bad keys costs neither key lookups (SHA-256 and a database read each) nor log
//! lines: the access log gets at most one line per peer per [`LOG_EVERY`] for them, with the
//! number left out since the last.
//!
//! A limited peer may share its uid or proxy address with honest clients. So that one tenant
//! hammering with bad keys cannot lock the others out, keys that have authenticated since the
//! daemon started (their SHA-256, [`MAX_GOOD_KEYS`] of them) still go to the full check while
//! their peer is limited; only a key never seen waits for the bucket.
//!
//! Memory is bounded: at most [`MAX_PEERS`] peers are tracked; past that, peers whose bucket has
//! refilled (the same as a new one) are dropped first, then the least recently seen.
//!
//! Not `governor`: its keyed limiter's map grows with every key until it is swept
//! (`retain_recent`), with no cap, and it keeps nothing per key beyond the bucket (the log
//! window here).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most peers tracked at once.
pub const MAX_PEERS: usize = 4096;
/// Most keys remembered as valid (honest clients that share a limited peer).
pub const MAX_GOOD_KEYS: usize = 1024;
/// At most one log line per peer this often for requests without a valid key.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Who sent a request, as far as the connection tells (set per connection by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnPeer {
    /// A Unix socket client: its uid (SO_PEERCRED), when the kernel gave it.
    Unix(Option<u32>),
    /// A TCP client's address.
    Tcp(IpAddr),
}

/// What one bucket is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Uid(u32),
    /// An IPv4 address, or an IPv6 one cut to its /64.
    Address(IpAddr),
    /// Connections that say nothing (in-process tests, a failed SO_PEERCRED): one bucket.
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Uid(uid) => write!(f, "uid {uid}"),
            Peer::Address(IpAddr::V6(a)) => write!(f, "{a}/64"),
            Peer::Address(a) => write!(f, "{a}"),
            Peer::Unknown => f.write_str("an unknown peer"),
        }
    }
}

impl Peer {
    /// The peer of a request on connection `conn` with `forwarded_for` (its `X-Forwarded-For`
    /// values, in order), used only when `trust_forwarded_for` and the connection is from
    /// loopback (the reverse proxy): its last address is the one the proxy saw.
    pub fn of<'a>(
        conn: Option<ConnPeer>,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
        trust_forwarded_for: bool,
    ) -> Peer {
        match conn {
            Some(ConnPeer::Unix(Some(uid))) => Peer::Uid(uid),
            Some(ConnPeer::Unix(None)) | None => Peer::Unknown,
            Some(ConnPeer::Tcp(ip)) => {
                let forwarded = (trust_forwarded_for && ip.is_loopback())
                    .then(|| last_forwarded(forwarded_for))
                    .flatten();
                Peer::address(forwarded.unwrap_or(ip))
            }
        }
    }

    fn address(ip: IpAddr) -> Peer {
        match ip {
            IpAddr::V4(_) => Peer::Address(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer::Address(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Peer::Address(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

/// The last address of the last `X-Forwarded-For` value, if it is one (a proxy appends the
/// address it saw; what comes before is the client's to write).
fn last_forwarded<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<IpAddr> {
    let last = values.last()?;
    let text = std::str::from_utf8(last).ok()?;
    text.rsplit(',').next()?.trim().parse().ok()
}

/// What to answer a request without a valid key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// `None`: 401 (a token was left); `Some`: 429, retry after this long.
    pub retry_after: Option<Duration>,
    /// `Some(n)`: write a log line, saying `n` such requests of this peer went unlogged since
    /// the last; `None`: write none.
    pub log: Option<u64>,
}

#[derive(Debug)]
struct PeerState {
    tokens: f64,
    last: Instant,
    /// When this peer's last log line was written; `None` before the first.
    logged_at: Option<Instant>,
    unlogged: u64,
}

#[derive(Debug, Default)]
struct State {
    peers: HashMap<Peer, PeerState>,
    /// SHA-256 of keys that authenticated, with when they last did.
    good: HashMap<[u8; 32], Instant>,
}

/// The per-peer buckets of requests without a valid key.
#[derive(Debug)]
pub struct BadKeyLimiter {
    rate: f64,
    burst: f64,
    max_peers: usize,
    state: Mutex<State>,
}

impl BadKeyLimiter {
    /// `burst` bad requests per peer, then `rate_per_second`.
    pub fn new(rate_per_second: f64, burst: u32) -> BadKeyLimiter {
        BadKeyLimiter::with_capacity(rate_per_second, burst, MAX_PEERS)
    }

    fn with_capacity(rate_per_second: f64, burst: u32, max_peers: usize) -> BadKeyLimiter {
        BadKeyLimiter {
            rate: rate_per_second,
            burst: f64::from(burst),
            max_peers,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tokens `p` has at `now`, refilled since it was last seen.
    fn refilled(&self, p: &PeerState, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(p.last).as_secs_f64();
        (p.tokens + elapsed * self.rate).min(self.burst)
    }

    fn wait_for_token(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.rate).max(0.0))
    }

    /// Whether `peer`'s bucket is empty at `now` (then a key it sends is looked up only if it
    /// is one of the known good ones).
    pub fn limited(&self, peer: &Peer, now: Instant) -> bool {
        self.state()
            .peers
            .get(peer)
            .is_some_and(|p| self.refilled(p, now) < 1.0)
    }

    /// Records a request of `peer` without a valid key at `now` and says how to answer it.
    pub fn refuse(&self, peer: Peer, now: Instant) -> Refusal {
        let mut state = self.state();
        if !state.peers.contains_key(&peer) && state.peers.len() >= self.max_peers {
            self.make_room(&mut state.peers, now);
        }
        let entry = state.peers.entry(peer).or_insert(PeerState {
            tokens: self.burst,
            last: now,
            logged_at: None,
            unlogged: 0,
        });
        let mut tokens = self.refilled(entry, now);
        entry.last = now;
        let retry_after = if tokens >= 1.0 {
            tokens -= 1.0;
            None
        } else {
            Some(self.wait_for_token(tokens))
        };
        entry.tokens = tokens;
        let log = match entry.logged_at {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => {
                entry.unlogged += 1;
                None
            }
            _ => {
                entry.logged_at = Some(now);
                Some(std::mem::take(&mut entry.unlogged))
            }
        };
        Refusal { retry_after, log }
    }

    /// Drops the peers whose buckets are full again and whose log window has passed (nothing
    /// distinguishes them from new ones), or if there are none, the least recently seen.
    fn make_room(&self, peers: &mut HashMap<Peer, PeerState>, now: Instant) {
        peers.retain(|_, p| {
            let quiet = p
                .logged_at
                .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
            !(quiet && self.refilled(p, now) >= self.burst)
        });
        if peers.len() >= self.max_peers {
            if let Some(oldest) = peers.iter().min_by_key(|(_, p)| p.last).map(|(k, _)| *k) {
                peers.remove(&oldest);
            }
        }
    }

    /// Remembers `hash` (a key's SHA-256) as one that authenticated at `now`.
    pub fn remember_good(&self, hash: [u8; 32], now: Instant) {
        let mut state = self.state();
        if !state.good.contains_key(&hash) && state.good.len() >= MAX_GOOD_KEYS {
            if let Some(oldest) = state.good.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                state.good.remove(&oldest);
            }
        }
        state.good.insert(hash, now);
    }

    /// Whether `hash` is the SHA-256 of a key that has authenticated (it may be revoked since:
    /// the full check still runs).
    pub fn known_good(&self, hash: &[u8; 32]) -> bool {
        self.state().good.contains_key(hash)
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.state().peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_one_a_second() {
        let l = BadKeyLimiter::new(1.0, 20);
        let t0 = Instant::now();
        let peer = Peer::Uid(1000);
        for i in 0..20 {
            assert_eq!(l.refuse(peer, t0).retry_after, None, "attempt {i}");
        }
        assert!(l.limited(&peer, t0));
        let wait = l.refuse(peer, t0).retry_after.expect("limited");
        assert!(wait > Duration::from_millis(900) && wait <= S, "{wait:?}");
        // Refusals do not dig the hole deeper: one second later one more is answered.
        assert_eq!(l.refuse(peer, t0 + S).retry_after, None);
        assert!(l.refuse(peer, t0 + S).retry_after.is_some());
        // Other peers have their own bucket.
        assert!(!l.limited(&Peer::Uid(0), t0));
        assert_eq!(l.refuse(Peer::Uid(0), t0).retry_after, None);
        // After 20 s of quiet the whole burst is back.
        assert!(!l.limited(&peer, t0 + 22 * S));
    }

    #[test]
    fn one_log_line_per_peer_per_minute() {
        let l = BadKeyLimiter::new(1.0, 20);
        let t0 = Instant::now();
        let peer = Peer::Uid(7);
        assert_eq!(l.refuse(peer, t0).log, Some(0));
        let lines = (1..1000)
            .filter(|i| {
                l.refuse(peer, t0 + Duration::from_millis(*i * 50))
                    .log
                    .is_some()
            })
            .count();
        assert_eq!(lines, 0, "nothing more within the minute");
        // The next line, a minute on, counts what was left out.
        assert_eq!(l.refuse(peer, t0 + 61 * S).log, Some(999));
        assert_eq!(l.refuse(peer, t0 + 62 * S).log, None);
        // Another peer logs on its own schedule.
        assert_eq!(l.refuse(Peer::Uid(8), t0 + 62 * S).log, Some(0));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_peer_goes() {
        let l = BadKeyLimiter::with_capacity(0.01, 2, 3);
        let t0 = Instant::now();
        for uid in 0..3 {
            l.refuse(Peer::Uid(uid), t0 + S * uid);
            l.refuse(Peer::Uid(uid), t0 + S * uid);
        }
        assert!(l.limited(&Peer::Uid(0), t0 + 2 * S));
        l.refuse(Peer::Uid(99), t0 + 2 * S);
        assert_eq!(l.peers(), 3);
        // uid 0, the least recently seen, was dropped; the others keep their state.
        assert!(!l.limited(&Peer::Uid(0), t0 + 2 * S));
        assert!(l.limited(&Peer::Uid(2), t0 + 2 * S));
        // A million peers later, still at most the cap.
        for i in 0..10_000u32 {
            l.refuse(Peer::Uid(1000 + i), t0 + 3 * S);
        }
        assert_eq!(l.peers(), 3);
    }

    #[test]
    fn good_keys_are_remembered_within_a_cap() {
        let l = BadKeyLimiter::new(1.0, 1);
        let t0 = Instant::now();
        l.remember_good([1; 32], t0);
        assert!(l.known_good(&[1; 32]));
        assert!(!l.known_good(&[2; 32]));
        for i in 0..MAX_GOOD_KEYS {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64 + 10).to_le_bytes());
            l.remember_good(h, t0 + S);
        }
        assert!(!l.known_good(&[1; 32]), "the oldest went");
        assert_eq!(l.state().good.len(), MAX_GOOD_KEYS);
    }

    #[test]
    fn peers_come_from_the_connection_or_a_trusted_proxy() {
        let none = std::iter::empty::<&[u8]>;
        assert_eq!(
            Peer::of(Some(ConnPeer::Unix(Some(1000))), none(), true),
            Peer::Uid(1000)
        );
        assert_eq!(
            Peer::of(Some(ConnPeer::Unix(None)), none(), true),
            Peer::Unknown
        );
        assert_eq!(Peer::of(None, none(), false), Peer::Unknown);
        let proxy = Some(ConnPeer::Tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let xff: [&[u8]; 2] = [b"9.9.9.9", b"1.1.1.1, 203.0.113.7"];
        let client = Peer::Address("203.0.113.7".parse().unwrap());
        assert_eq!(Peer::of(proxy, xff.iter().copied(), true), client);
        // Not trusted: every request through the proxy is the proxy's.
        assert_eq!(
            Peer::of(proxy, xff.iter().copied(), false),
            Peer::Address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        // A client that is not the local proxy cannot name another peer.
        let remote = Some(ConnPeer::Tcp("198.51.100.1".parse().unwrap()));
        assert_eq!(
            Peer::of(remote, xff.iter().copied(), true),
            Peer::Address("198.51.100.1".parse().unwrap())
        );
        // Garbage in the header: the proxy's address.
        let junk: [&[u8]; 1] = [b"1.1.1.1, not-an-ip"];
        assert_eq!(
            Peer::of(proxy, junk.iter().copied(), true),
            Peer::Address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let bad_utf8: [&[u8]; 1] = [b"\xff\xfe"];
        assert_eq!(
            Peer::of(proxy, bad_utf8.iter().copied(), true),
            Peer::Address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        // IPv6 by /64; v4-mapped as v4.
        let a = Peer::of(
            Some(ConnPeer::Tcp("2001:db8:1:2:3:4:5:6".parse().unwrap())),
            none(),
            false,
        );
        let b = Peer::of(
            Some(ConnPeer::Tcp("2001:db8:1:2:ffff::1".parse().unwrap())),
            none(),
            false,
        );
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            Peer::of(
                Some(ConnPeer::Tcp("::ffff:192.0.2.1".parse().unwrap())),
                none(),
                false
            ),
            Peer::Address("192.0.2.1".parse().unwrap())
        );
    }
}
