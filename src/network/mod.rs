//! Guest networking, host side (issue 12; architecture decision 10): per computer a network
//! namespace holding the VM's TAP, a veth pair to the host with NAT, nftables isolation and the
//! egress policy, and a DNS resolver at the guest's gateway that feeds domain rules.
//!
//! How the daemon uses it (behind `[network] enabled`, see `switch`):
//! - [`Network::start`] once at daemon start (host table, IPv4 forwarding; `switch::start`),
//!   then [`Network::reconcile`] with the computers whose VMs still run (`Lifecycle::recover`);
//! - [`Network::setup`] before a VMM spawns (`Lifecycle::boot`): its [`NetworkHandle::tap`]
//!   goes to the VMM as an inherited descriptor (`TapSource::Fd`, see
//!   `computers::backend::GuestNic`) with [`NetworkHandle::mac`];
//! - [`Network::teardown`] after the VMM ended (stop, suspend, a VMM that exited) and at delete;
//! - [`Network::set_policy`] on `PUT /computers/{id}/egress-policy` (src/api).
//!
//! The guest side needs no DHCP: the addresses are fixed (see `addresses`), so the image carries
//! `172.16.0.2/30`, default route via `172.16.0.1`, resolver `172.16.0.1`, on the virtio-net
//! card with MAC `02:de:5c:00:00:02`.

pub mod addresses;
mod dns;
pub mod firewall;
mod links;
pub mod namespace;
pub mod policy;
pub mod switch;
pub mod tap;

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

pub use addresses::{LinkNet, GATEWAY_IP, GUEST_IP, GUEST_MAC, INNER_PREFIX};
pub use policy::{EgressPolicy, Mode, PolicyError, Rule, Target};
pub use switch::Switch;

use addresses::{host_veth_name, link_index_of, link_net, netns_name, pool_size};
use firewall::Learnt;

/// Errors of the host-side network set-up; each says what failed and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace: {0}")]
    Namespace(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("TAP device: {0}")]
    Tap(String),
    #[error("nftables: {0} (deskd needs a kernel with nf_tables, NAT and conntrack)")]
    Firewall(String),
    #[error("DNS resolver: {0}")]
    Dns(String),
    #[error("the network pool {pool} is full ({size} computers); widen [network] pool")]
    PoolFull { pool: String, size: u32 },
    #[error("networking is off: set [network] enabled = true")]
    Disabled,
}

/// `[network]` in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Give computers a network: `"auto"` (default: where the host can), `true` (required),
    /// `false`. See `switch`.
    pub enabled: Switch,
    /// Where the per-computer /30 host links come from.
    pub pool: policy::Cidr,
    /// Upstream resolvers (`ip:port`); empty means the nameservers of /etc/resolv.conf.
    pub upstream_dns: Vec<SocketAddr>,
    /// Most DNS queries one computer may have in flight; more are dropped.
    pub max_dns_in_flight: usize,
    /// Most addresses one computer's resolver may hold in its sets; beyond, answers that would
    /// need a new one are SERVFAIL (the policy is never bypassed for lack of room).
    pub max_learnt_addresses: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: Switch::Auto,
            pool: policy::Cidr {
                addr: Ipv4Addr::new(10, 203, 0, 0),
                prefix: 16,
            },
            upstream_dns: Vec::new(),
            max_dns_in_flight: 64,
            max_learnt_addresses: 4096,
        }
    }
}

impl NetworkConfig {
    /// Checks the values (called from the config file's own check).
    pub fn check(&self) -> Result<(), String> {
        if !(8..=30).contains(&self.pool.prefix) {
            return Err(format!(
                "network.pool {} must be a /8 to /30 network",
                self.pool
            ));
        }
        if self.pool.contains(GUEST_IP) || self.pool.contains(GATEWAY_IP) {
            return Err(format!(
                "network.pool {} overlaps the guests' fixed link 172.16.0.0/30",
                self.pool
            ));
        }
        if self.max_dns_in_flight == 0 || self.max_learnt_addresses == 0 {
            return Err(
                "network.max_dns_in_flight and max_learnt_addresses must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// What the VMM needs for the computer's card.
#[derive(Debug)]
pub struct NetworkHandle {
    /// The TAP, opened in the computer's namespace; pass a copy to the VMM (`TapSource::Fd`).
    pub tap: OwnedFd,
    /// The card's MAC (fixed; see `addresses`).
    pub mac: [u8; 6],
    pub guest_ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The computer's host link.
    pub link: LinkNet,
}

impl NetworkHandle {
    /// The VMM's card for this network, given the descriptor number the TAP has in the VMM
    /// process (the daemon dup2()s a copy of [`NetworkHandle::tap`] there before exec). The rate
    /// limit is the caller's (`bandwidth_limit_mbps`).
    pub fn net_config(
        &self,
        fd_in_vmm: i32,
        limit: Option<crate::vmm::config::NetRateLimit>,
    ) -> Result<crate::vmm::config::NetConfig, crate::vmm::config::NetConfigError> {
        let card = crate::vmm::config::NetConfig {
            tap: crate::vmm::config::TapSource::Fd(fd_in_vmm),
            mac: crate::vmm::config::MacAddr::new(self.mac)?,
            limit,
        };
        card.validate()?;
        Ok(card)
    }
}

/// What `reconcile` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Namespaces of computers not running, removed.
    pub removed_namespaces: Vec<String>,
    /// Host veths without a running computer, removed.
    pub removed_links: Vec<String>,
    /// Running computers whose firewall and resolver were restored.
    pub restored: Vec<String>,
    /// Running computers whose namespace was gone: their VM has no network; restart them.
    pub lost: Vec<String>,
}

/// One computer's live network state in the daemon.
pub(crate) struct ComputerNet {
    id: String,
    link: LinkNet,
    /// A NETLINK_NETFILTER socket inside the computer's namespace: every rule change for it.
    nft: Mutex<netlink_sys::Socket>,
    policy: Mutex<Arc<EgressPolicy>>,
    learnt: Mutex<dns::LearntCache>,
    resolver: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Made by `setup` (not taken over by `reconcile`): a start of this daemon's, which a
    /// reconcile running at the same time must not take for a leftover.
    made_by_setup: bool,
}

impl ComputerNet {
    fn commit(&self, batch: firewall::Batch) -> Result<(), NetworkError> {
        let sock = self.nft.lock().unwrap_or_else(|p| p.into_inner());
        batch.commit(&sock)
    }

    fn stop_resolver(&self) {
        for h in self
            .resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

/// The host side of every computer's network.
pub struct Network {
    config: NetworkConfig,
    upstreams: Vec<SocketAddr>,
    /// The networks of the host's own addresses at start (its LANs): denied to guests.
    host_nets: Vec<policy::Cidr>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    computers: HashMap<String, Arc<ComputerNet>>,
    used: BTreeSet<u32>,
    /// Computers whose `setup` is under way: `reconcile` leaves their namespace alone (a start
    /// may run while the daemon's start-up recovery reconciles).
    building: BTreeSet<String>,
}

/// What the namespace thread hands back.
struct Built {
    tap: Option<OwnedFd>,
    nft: netlink_sys::Socket,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    link: LinkNet,
}

fn runtime() -> Result<tokio::runtime::Runtime, NetworkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| NetworkError::Namespace(format!("cannot start a runtime: {e}")))
}

fn bind_resolver_sockets() -> Result<(std::net::UdpSocket, std::net::TcpListener), NetworkError> {
    let at = SocketAddr::from((GATEWAY_IP, 53));
    let udp = std::net::UdpSocket::bind(at)
        .map_err(|e| NetworkError::Dns(format!("cannot bind UDP {at}: {e}")))?;
    let tcp = std::net::TcpListener::bind(at)
        .map_err(|e| NetworkError::Dns(format!("cannot bind TCP {at}: {e}")))?;
    udp.set_nonblocking(true)
        .and_then(|_| tcp.set_nonblocking(true))
        .map_err(|e| NetworkError::Dns(format!("cannot make the sockets non-blocking: {e}")))?;
    Ok((udp, tcp))
}

/// On a namespace thread: makes the namespace and everything in it, and the host end of the veth.
fn build(
    id: &str,
    link: LinkNet,
    policy: &EgressPolicy,
    pool: policy::Cidr,
    host_nets: &[policy::Cidr],
) -> Result<Built, NetworkError> {
    let rt = runtime()?;
    let name = netns_name(id);
    let veth = host_veth_name(id);
    rt.block_on(async {
        let host_ns = namespace::current()?;
        let host = links::connect()?;
        namespace::create_and_enter(&name)?;
        let inner = async {
            namespace::sysctl("net.ipv4.ip_forward", "1")?;
            // Guests have IPv4 only: no IPv6 link-local for them to talk to either.
            namespace::sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            namespace::sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            let ns = links::connect()?;
            ns.up("lo").await?;
            let tap = tap::open(addresses::TAP_NAME)?;
            ns.set_mac(addresses::TAP_NAME, addresses::GATEWAY_MAC)
                .await?;
            ns.add_address(addresses::TAP_NAME, GATEWAY_IP, INNER_PREFIX)
                .await?;
            ns.up(addresses::TAP_NAME).await?;
            ns.add_veth(addresses::NS_VETH_NAME, &veth, &host_ns)
                .await?;
            ns.add_address(addresses::NS_VETH_NAME, link.ns, addresses::LINK_PREFIX)
                .await?;
            ns.up(addresses::NS_VETH_NAME).await?;
            ns.add_default_route(link.host).await?;
            let nft = firewall::socket()?;
            firewall::namespace_ruleset(policy, pool, host_nets, &[]).commit(&nft)?;
            let (udp, tcp) = bind_resolver_sockets()?;
            host.add_address(&veth, link.host, addresses::LINK_PREFIX)
                .await?;
            host.up(&veth).await?;
            Ok::<_, NetworkError>(Built {
                tap: Some(tap),
                nft,
                udp,
                tcp,
                link,
            })
        };
        let result = inner.await;
        namespace::enter_fd(&host_ns)?;
        if result.is_err() {
            let _ = host.delete(&veth).await;
            let _ = namespace::remove(&name);
        }
        result
    })
}

/// On a namespace thread: the firewall socket, ruleset and resolver sockets of an existing
/// namespace (after a daemon restart).
fn reopen(
    id: &str,
    policy: &EgressPolicy,
    pool: policy::Cidr,
    host_nets: &[policy::Cidr],
    link: LinkNet,
) -> Result<Built, NetworkError> {
    let host_ns = namespace::current()?;
    namespace::enter(&netns_name(id))?;
    let result = (|| {
        let nft = firewall::socket()?;
        firewall::namespace_ruleset(policy, pool, host_nets, &[]).commit(&nft)?;
        let (udp, tcp) = bind_resolver_sockets()?;
        Ok(Built {
            tap: None,
            nft,
            udp,
            tcp,
            link,
        })
    })();
    namespace::enter_fd(&host_ns)?;
    result
}

/// On a namespace thread: removes the host veth (which takes its peer along) and the namespace.
fn destroy(id: &str) -> Result<(), NetworkError> {
    let rt = runtime()?;
    rt.block_on(async {
        let host = links::connect()?;
        host.delete(&host_veth_name(id)).await
    })?;
    namespace::remove(&netns_name(id))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    tokio::task::spawn_blocking(move || namespace::on_new_thread(f))
        .await
        .map_err(|e| NetworkError::Namespace(format!("the set-up task failed: {e}")))?
}

/// The nameservers of /etc/resolv.conf, port 53.
pub fn system_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Network {
    /// Installs the host's table and turns on IPv4 forwarding (the host must route the guests'
    /// traffic to its uplink). Call once at daemon start, from the host's namespace.
    pub async fn start(config: NetworkConfig) -> Result<Arc<Network>, NetworkError> {
        if config.enabled == Switch::Off {
            return Err(NetworkError::Disabled);
        }
        let upstreams = if config.upstream_dns.is_empty() {
            system_resolvers()
        } else {
            config.upstream_dns.clone()
        };
        if upstreams.is_empty() {
            return Err(NetworkError::Dns(
                "no upstream resolver: /etc/resolv.conf has no nameserver; set [network] upstream_dns".into(),
            ));
        }
        let pool = config.pool;
        let host_nets = blocking(move || {
            namespace::sysctl("net.ipv4.ip_forward", "1")?;
            firewall::host_ruleset(pool).commit(&firewall::socket()?)?;
            runtime()?.block_on(async {
                links::connect()?
                    .ipv4_networks(addresses::HOST_VETH_PREFIX)
                    .await
            })
        })
        .await?;
        let host_nets: Vec<policy::Cidr> = host_nets
            .into_iter()
            .map(|(ip, prefix)| {
                let c = policy::Cidr { addr: ip, prefix };
                policy::Cidr {
                    addr: Ipv4Addr::from(u32::from(ip) & c.mask()),
                    prefix,
                }
            })
            .collect();
        Ok(Arc::new(Network {
            config,
            upstreams,
            host_nets,
            state: Mutex::new(State::default()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserve(&self, wanted: Option<u32>) -> Result<LinkNet, NetworkError> {
        let mut st = self.lock();
        let pool = self.config.pool;
        let index = match wanted {
            Some(i) => i,
            None => (0..pool_size(pool)).find(|i| !st.used.contains(i)).ok_or(
                NetworkError::PoolFull {
                    pool: pool.to_string(),
                    size: pool_size(pool),
                },
            )?,
        };
        st.used.insert(index);
        link_net(pool, index).ok_or(NetworkError::PoolFull {
            pool: pool.to_string(),
            size: pool_size(pool),
        })
    }

    fn release(&self, index: u32) {
        self.lock().used.remove(&index);
    }

    fn register(
        &self,
        id: &str,
        built: Built,
        policy: EgressPolicy,
        made_by_setup: bool,
    ) -> Result<Arc<ComputerNet>, NetworkError> {
        let comp = Arc::new(ComputerNet {
            id: id.to_string(),
            link: built.link,
            nft: Mutex::new(built.nft),
            policy: Mutex::new(Arc::new(policy)),
            learnt: Mutex::new(dns::LearntCache::new(self.config.max_learnt_addresses)),
            resolver: Mutex::new(Vec::new()),
            made_by_setup,
        });
        let handles = dns::spawn(
            comp.clone(),
            built.udp,
            built.tcp,
            self.upstreams.clone(),
            self.config.max_dns_in_flight,
        )?;
        *comp.resolver.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        self.lock().computers.insert(id.to_string(), comp.clone());
        Ok(comp)
    }

    /// Builds the computer's network; call before its VMM spawns. Anything left from an earlier
    /// life of this computer (a crash) is removed first.
    pub async fn setup(
        &self,
        id: &str,
        policy: &EgressPolicy,
    ) -> Result<NetworkHandle, NetworkError> {
        self.lock().building.insert(id.to_string());
        let result = self.setup_inner(id, policy).await;
        self.lock().building.remove(id);
        result
    }

    async fn setup_inner(
        &self,
        id: &str,
        policy: &EgressPolicy,
    ) -> Result<NetworkHandle, NetworkError> {
        self.teardown(id).await?;
        let link = self.reserve(None)?;
        let (owned, pol, pool) = (id.to_string(), policy.clone(), self.config.pool);
        let nets = self.host_nets.clone();
        let built = match blocking(move || build(&owned, link, &pol, pool, &nets)).await {
            Ok(b) => b,
            Err(e) => {
                self.release(link.index);
                return Err(e);
            }
        };
        let mut built = built;
        let tap = built
            .tap
            .take()
            .ok_or_else(|| NetworkError::Tap("the namespace thread returned no TAP".into()))?;
        if let Err(e) = self.register(id, built, policy.clone(), true) {
            let _ = self.teardown(id).await;
            return Err(e);
        }
        Ok(NetworkHandle {
            tap,
            mac: GUEST_MAC,
            guest_ip: GUEST_IP,
            gateway: GATEWAY_IP,
            prefix: INNER_PREFIX,
            link,
        })
    }

    /// Removes everything of the computer's network (its resolver, veth, namespace, and with the
    /// namespace its TAP and table). Idempotent; call after the VMM ended and at delete.
    pub async fn teardown(&self, id: &str) -> Result<(), NetworkError> {
        let comp = self.lock().computers.remove(id);
        if let Some(c) = &comp {
            c.stop_resolver();
        }
        let owned = id.to_string();
        let result = blocking(move || destroy(&owned)).await;
        if let Some(c) = comp {
            self.release(c.link.index);
        }
        result
    }

    /// Replaces the computer's egress policy live, as one nftables transaction (addresses learnt
    /// from DNS are kept where the new policy still has a set for them). `Ok(false)`: the
    /// computer has no network now; the stored policy applies at its next set-up.
    pub async fn set_policy(&self, id: &str, policy: &EgressPolicy) -> Result<bool, NetworkError> {
        let Some(comp) = self.lock().computers.get(id).cloned() else {
            return Ok(false);
        };
        let policy = Arc::new(policy.clone());
        let pool = self.config.pool;
        let host_nets = self.host_nets.clone();
        let p2 = policy.clone();
        let c2 = comp.clone();
        tokio::task::spawn_blocking(move || {
            let learnt: Vec<Learnt> = c2
                .learnt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rebind(&p2);
            c2.commit(firewall::namespace_ruleset(&p2, pool, &host_nets, &learnt))
        })
        .await
        .map_err(|e| NetworkError::Firewall(format!("the policy task failed: {e}")))??;
        *comp.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        Ok(true)
    }

    /// At daemon start: removes namespaces and host veths of computers not in `running`, and
    /// restores the firewall and resolver of those that are (their VMMs kept their TAPs).
    pub async fn reconcile(
        &self,
        running: &[(String, EgressPolicy)],
    ) -> Result<ReconcileReport, NetworkError> {
        let mut report = ReconcileReport::default();
        let wanted: HashMap<&str, &EgressPolicy> =
            running.iter().map(|(id, p)| (id.as_str(), p)).collect();
        for name in namespace::list(addresses::NETNS_PREFIX) {
            let id = &name[addresses::NETNS_PREFIX.len()..];
            // Networks this daemon made or is making since it started are not leftovers.
            if !wanted.contains_key(id) && !self.busy(id) {
                self.teardown(id).await?;
                report.removed_namespaces.push(name);
            }
        }
        let keep: BTreeSet<String> = {
            let st = self.lock();
            let made = st
                .computers
                .iter()
                .filter(|(_, c)| c.made_by_setup)
                .map(|(id, _)| id);
            running
                .iter()
                .map(|(id, _)| id)
                .chain(made)
                .chain(st.building.iter())
                .map(|id| host_veth_name(id))
                .collect()
        };
        let pool = self.config.pool;
        let (leftovers, addrs) = blocking(move || {
            runtime()?.block_on(async {
                let host = links::connect()?;
                let mut gone = Vec::new();
                let mut addrs = HashMap::new();
                for (_, name) in host.with_prefix(addresses::HOST_VETH_PREFIX).await? {
                    if keep.contains(&name) {
                        // A veth being made or removed right now may have no address.
                        addrs.insert(name.clone(), host.first_ipv4(&name).await.unwrap_or(None));
                    } else {
                        host.delete(&name).await?;
                        gone.push(name);
                    }
                }
                Ok::<_, NetworkError>((gone, addrs))
            })
        })
        .await?;
        report.removed_links = leftovers;
        for (id, policy) in running {
            if self.lock().computers.contains_key(id) {
                continue;
            }
            let has_ns = namespace::path(&netns_name(id)).exists();
            let index = addrs
                .get(&host_veth_name(id))
                .copied()
                .flatten()
                .and_then(|a| link_index_of(pool, a));
            let (true, Some(index)) = (has_ns, index) else {
                let _ = self.teardown(id).await;
                report.lost.push(id.clone());
                continue;
            };
            let link = self.reserve(Some(index))?;
            let (owned, pol) = (id.clone(), policy.clone());
            let nets = self.host_nets.clone();
            match blocking(move || reopen(&owned, &pol, pool, &nets, link)).await {
                Ok(built) => {
                    self.register(id, built, policy.clone(), false)?;
                    report.restored.push(id.clone());
                }
                Err(e) => {
                    self.release(index);
                    tracing::warn!(computer = %id, error = %e, "cannot restore the computer's network");
                    report.lost.push(id.clone());
                }
            }
        }
        Ok(report)
    }

    /// Whether computer `id` has a network `setup` made, or one being made.
    fn busy(&self, id: &str) -> bool {
        let st = self.lock();
        st.building.contains(id) || st.computers.get(id).is_some_and(|c| c.made_by_setup)
    }

    /// The computers that have a network now.
    pub fn active(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().computers.keys().cloned().collect();
        v.sort();
        v
    }

    /// Tears every computer's network down and removes the host's table (for tests and for a
    /// daemon that turns networking off).
    pub async fn shutdown(&self) -> Result<(), NetworkError> {
        for id in self.active() {
            self.teardown(&id).await?;
        }
        blocking(|| firewall::delete_host_table().commit(&firewall::socket()?)).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fixed_mac_is_a_card_address_the_vmm_accepts() {
        let mac = crate::vmm::config::MacAddr::new(super::GUEST_MAC).unwrap();
        assert_eq!(mac.to_string(), "02:de:5c:00:00:02");
    }
}
