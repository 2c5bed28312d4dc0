//! The computer's DNS resolver: UDP and TCP on the gateway address inside its namespace, served
//! by the daemon, forwarding to the host's upstream resolvers. It refuses names the policy
//! blocks (NXDOMAIN) and, before it answers, puts the answer's IPv4 addresses into the
//! computer's nftables set for the domain rule that matched, with the records' TTL, so a domain
//! rule holds for every port. Bounded: a cap on queries in flight and on learnt addresses.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

use super::firewall::{self, Learnt, LEARNT_ANY};
use super::policy::{EgressPolicy, Target};
use super::{ComputerNet, NetworkError};

/// How long one upstream may take to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP client may stay connected.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Learnt addresses stay a little longer than the TTL (the guest's cache may hold an answer to
/// its very end), at least 2 minutes, at most a day.
const TTL_GRACE: u64 = 60;
const MIN_TIMEOUT: u64 = 120;
const MAX_TIMEOUT: u64 = 86_400;

/// The set a name's addresses go to under `policy`, if a domain rule matches it.
pub fn set_for(policy: &EgressPolicy, name: &str) -> Option<String> {
    let i = policy.matching_domain_rule(name)?;
    match (&policy.rules[i].target, &policy.rules[i].ports) {
        (Target::Domain(_), Some(_)) => Some(firewall::learnt_set(i)),
        _ => Some(LEARNT_ANY.to_string()),
    }
}

/// What the resolver put into the computer's sets: address and name, and until when.
pub struct LearntCache {
    max: usize,
    entries: HashMap<(String, Ipv4Addr), Instant>,
}

impl LearntCache {
    pub fn new(max: usize) -> LearntCache {
        LearntCache {
            max,
            entries: HashMap::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, until| *until > now);
    }

    /// Records `name`'s addresses; `None` when that would go over the cap.
    fn admit(&mut self, name: &str, set: &str, addrs: &[(Ipv4Addr, u32)]) -> Option<Vec<Learnt>> {
        let now = Instant::now();
        self.prune(now);
        let fresh = addrs
            .iter()
            .filter(|(a, _)| !self.entries.contains_key(&(name.to_string(), *a)))
            .count();
        if self.entries.len() + fresh > self.max {
            return None;
        }
        let mut out = Vec::new();
        for &(addr, ttl) in addrs {
            let secs = (u64::from(ttl) + TTL_GRACE).clamp(MIN_TIMEOUT, MAX_TIMEOUT);
            let until = now + Duration::from_secs(secs);
            let e = self
                .entries
                .entry((name.to_string(), addr))
                .or_insert(until);
            if *e < until {
                *e = until;
            }
            out.push(Learnt {
                set: set.to_string(),
                addr,
                timeout: Duration::from_secs(secs),
            });
        }
        Some(out)
    }

    /// The entries still alive, placed in the sets of `policy` (after a policy change).
    pub fn rebind(&mut self, policy: &EgressPolicy) -> Vec<Learnt> {
        let now = Instant::now();
        self.prune(now);
        self.entries
            .retain(|(name, _), _| set_for(policy, name).is_some());
        self.entries
            .iter()
            .filter_map(|((name, addr), until)| {
                Some(Learnt {
                    set: set_for(policy, name)?,
                    addr: *addr,
                    timeout: until
                        .saturating_duration_since(now)
                        .max(Duration::from_secs(1)),
                })
            })
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

struct Ctx {
    comp: Arc<ComputerNet>,
    upstreams: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
}

/// Starts the resolver's UDP and TCP tasks on the current runtime.
pub(super) fn spawn(
    comp: Arc<ComputerNet>,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    upstreams: Vec<SocketAddr>,
    max_in_flight: usize,
) -> Result<Vec<tokio::task::AbortHandle>, NetworkError> {
    let udp = UdpSocket::from_std(udp)
        .map_err(|e| NetworkError::Dns(format!("cannot adopt the UDP socket: {e}")))?;
    let tcp = TcpListener::from_std(tcp)
        .map_err(|e| NetworkError::Dns(format!("cannot adopt the TCP socket: {e}")))?;
    let ctx = Arc::new(Ctx {
        comp,
        upstreams,
        in_flight: Arc::new(Semaphore::new(max_in_flight)),
    });
    let u = tokio::spawn(serve_udp(Arc::new(udp), ctx.clone()));
    let t = tokio::spawn(serve_tcp(tcp, ctx));
    Ok(vec![u.abort_handle(), t.abort_handle()])
}

async fn serve_udp(sock: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        // Over the cap the query is dropped; the guest's resolver retries.
        let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, ctx) = (sock.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&ctx, &query).await {
                let _ = sock.send_to(&answer, from).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TCP_TIMEOUT, async {
                loop {
                    let len = stream.read_u16().await? as usize;
                    let mut q = vec![0u8; len];
                    stream.read_exact(&mut q).await?;
                    let Some(a) = answer(&ctx, &q).await else {
                        return Ok::<(), std::io::Error>(());
                    };
                    let Ok(alen) = u16::try_from(a.len()) else {
                        return Ok(());
                    };
                    stream.write_u16(alen).await?;
                    stream.write_all(&a).await?;
                }
            })
            .await;
            drop(permit);
        });
    }
}

fn reply(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = query.queries.clone();
    m.to_vec().ok()
}

async fn forward(upstreams: &[SocketAddr], raw: &[u8], id: u16) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(raw).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            // An answer must carry our query's id (anything else is stale or forged).
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

/// The answer to one query (None: drop it).
async fn answer(ctx: &Ctx, raw: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    if query.queries.len() != 1 {
        return reply(&query, ResponseCode::FormErr);
    }
    let name = query.queries[0]
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let policy = ctx
        .comp
        .policy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let resolves = policy.resolves(&name);
    let set = set_for(&policy, &name);
    if !resolves && set.is_none() {
        // An allow policy that does not name it: nothing to learn, just refuse.
        return reply(&query, ResponseCode::NXDomain);
    }
    let Some(up) = forward(&ctx.upstreams, raw, query.metadata.id).await else {
        return reply(&query, ResponseCode::ServFail);
    };
    if let Some(set) = set {
        let Ok(resp) = Message::from_vec(&up) else {
            return reply(&query, ResponseCode::ServFail);
        };
        let addrs: Vec<(Ipv4Addr, u32)> = resp
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((a.0, r.ttl)),
                _ => None,
            })
            .collect();
        if !addrs.is_empty() {
            let learnt = ctx
                .comp
                .learnt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(&name, &set, &addrs);
            // No room, or the set could not be fed: no answer that would escape the policy.
            let Some(learnt) = learnt else {
                tracing::warn!(computer = %ctx.comp.id, "DNS: learnt-address cap reached");
                return reply(&query, ResponseCode::ServFail);
            };
            let comp = ctx.comp.clone();
            let fed =
                tokio::task::spawn_blocking(move || comp.commit(firewall::Batch::learnt(&learnt)))
                    .await;
            if !matches!(fed, Ok(Ok(()))) {
                tracing::warn!(computer = %ctx.comp.id, "DNS: cannot add addresses to the firewall: {fed:?}");
                return reply(&query, ResponseCode::ServFail);
            }
        }
    }
    if resolves {
        Some(up)
    } else {
        // A block rule: its addresses are now in the drop set, and the guest gets no answer.
        reply(&query, ResponseCode::NXDomain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_caps_refreshes_and_rebinds() {
        let p = EgressPolicy::from_json(&json!({"mode":"allow","rules":[
            {"domain":"a.test"},{"domain":"b.test","ports":[443]}
        ]}))
        .unwrap();
        let mut c = LearntCache::new(2);
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let b = Ipv4Addr::new(192, 0, 2, 2);
        let l = c
            .admit("a.test", &set_for(&p, "a.test").unwrap(), &[(a, 30)])
            .unwrap();
        assert_eq!(l[0].set, LEARNT_ANY);
        assert_eq!(l[0].timeout, Duration::from_secs(MIN_TIMEOUT));
        // The same address again is no new entry.
        assert!(c.admit("a.test", LEARNT_ANY, &[(a, 100_000_000)]).is_some());
        assert!(c
            .admit("b.test", &set_for(&p, "b.test").unwrap(), &[(b, 30)])
            .is_some());
        assert!(c
            .admit("b.test", "learnt_1", &[(Ipv4Addr::new(192, 0, 2, 3), 30)])
            .is_none());
        assert_eq!(c.len(), 2);
        let only_b = EgressPolicy::from_json(&json!({"mode":"allow","rules":[
            {"domain":"b.test"}
        ]}))
        .unwrap();
        let re = c.rebind(&only_b);
        assert_eq!(re.len(), 1);
        assert_eq!((re[0].addr, re[0].set.as_str()), (b, LEARNT_ANY));
    }
}
