//! Guest networking's host side against the real kernel (root, network namespaces, TAP,
//! nftables): two computers' namespaces with a real network stack in each guest's place (a
//! second namespace whose TAP is spliced to the computer's TAP fd, frame by frame, as the VMM
//! would), a stand-in "internet" namespace and a stand-in upstream resolver on loopback. Nothing
//! gets a route off this machine. Skips loudly when not root or without netns/TAP.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskd::network::{addresses, namespace, tap, EgressPolicy, Network, NetworkConfig};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The tests share the host's table and pool: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const OK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const BLOCKED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const INET_NS: &str = "dk-test-inet";
/// Routed to the stand-in internet namespace for the test's time, over the link 198.18.0.0/30.
const STAND_IN_NETS: [&str; 3] = ["198.51.100.0/24", "169.254.169.254/32", "192.168.77.0/24"];

/// Why the stand-in addresses cannot be used on this host: one of them is already routed or
/// assigned here (the test must never shadow a real network of the machine).
fn stand_in_clash() -> Option<String> {
    let addrs = sh("ip -4 -o addr show; ip -4 route show table all");
    ["198.18.", "198.51.100.", "169.254.", "192.168.77."]
        .into_iter()
        .find(|p| addrs.contains(p))
        .map(|p| format!("this host already uses {p}x, which the test's stand-in internet needs"))
}

/// Removes whatever a test made, also when it failed half-way.
struct Cleanup {
    ids: Vec<&'static str>,
    forwarding: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.ids {
            ip_quiet(&format!("netns del deskd-{id}"));
            ip_quiet(&format!("link del {}", addresses::host_veth_name(id)));
        }
        for g in ["dk-test-guest-a", "dk-test-guest-b", "dk-test-guest-d"] {
            ip_quiet(&format!("netns del {g}"));
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", "deskd_host"])
            .output();
        stop_internet();
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.forwarding);
    }
}

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` tool for the test's plumbing (iproute2)");
    }
    if Command::new("nft").arg("-v").output().is_err() {
        return Some("no `nft` tool to inspect the rules (nftables)");
    }
    None
}

macro_rules! skip_unless_able {
    ($name:expr) => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED {}: {why}", $name);
            return;
        }
        if let Some(why) = stand_in_clash() {
            eprintln!("SKIPPED {}: {why}", $name);
            return;
        }
    };
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &str) {
    let _ = Command::new("ip").args(args.split_whitespace()).output();
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `f` on a thread inside namespace `ns` (`None`: the host).
fn in_ns<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.map(str::to_string);
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            namespace::enter(&ns).expect("enter namespace");
        }
        f()
    })
    .join()
    .expect("namespace thread")
}

fn connects(ns: Option<&str>, to: Ipv4Addr, port: u16, from: Option<Ipv4Addr>) -> bool {
    in_ns(ns, move || {
        let sock = socket2_connect(to, port, from);
        match sock {
            Some(mut s) => {
                let mut buf = [0u8; 64];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                matches!(s.read(&mut buf), Ok(n) if n > 0)
            }
            None => false,
        }
    })
}

/// A TCP connection from `from` (if given) with a short timeout.
fn socket2_connect(to: Ipv4Addr, port: u16, from: Option<Ipv4Addr>) -> Option<TcpStream> {
    let Some(src) = from else {
        return TcpStream::connect_timeout(
            &SocketAddr::from((to, port)),
            Duration::from_millis(1500),
        )
        .ok();
    };
    // std cannot bind before connecting: a libc socket, bound to the (spoofed) source first.
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let (local, remote) = (sockaddr(src, 0), sockaddr(to, port));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 500_000,
    };
    // SAFETY: socket calls on a descriptor this function owns (closed on failure, else handed to
    // TcpStream); every pointer is to a local that outlives the call, with its exact size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let ok = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &timeout as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) == 0
            && libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) == 0;
        if !ok {
            libc::close(fd);
            return None;
        }
        use std::os::fd::FromRawFd;
        Some(TcpStream::from_raw_fd(fd))
    }
}

/// A DNS query from inside `ns` to `server`: the answer's code and A records.
fn resolve(ns: &str, server: Ipv4Addr, name: &str) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let name = name.to_string();
    in_ns(Some(ns), move || {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.queries.push(Query::query(
            Name::from_ascii(format!("{name}.")).unwrap(),
            RecordType::A,
        ));
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock.send_to(&q.to_vec().unwrap(), (server, 53)).ok()?;
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let m = Message::from_vec(&buf[..n]).ok()?;
        let ips = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        Some((m.metadata.response_code, ips))
    })
}

/// The stand-in upstream resolver on loopback: fixed A records, NXDOMAIN for the rest.
fn start_upstream(records: HashMap<&'static str, Ipv4Addr>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            r.queries = q.queries.clone();
            let qname = q.queries[0].name().to_ascii();
            match records.get(qname.trim_end_matches('.')) {
                Some(ip) if q.queries[0].query_type() == RecordType::A => {
                    r.answers.push(Record::from_rdata(
                        q.queries[0].name().clone(),
                        300,
                        RData::A((*ip).into()),
                    ));
                }
                Some(_) => {}
                None => r.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    });
    addr
}

/// A TCP server in `ns` answering every connection with "hello".
fn serve_hello(ns: Option<&str>, at: SocketAddr) {
    let l = in_ns(ns, move || {
        TcpListener::bind(at).expect("bind stand-in server")
    });
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hello");
        }
    });
}

/// The stand-in internet: a namespace behind a veth from the host with TEST-NET addresses, the
/// metadata address and a "LAN" address, all routed there (and nowhere else).
fn start_internet() {
    ip_quiet(&format!("netns del {INET_NS}"));
    ip_quiet("link del dkt-inet");
    ip(&format!("netns add {INET_NS}"));
    ip(&format!(
        "link add dkt-inet type veth peer name eth0 netns {INET_NS}"
    ));
    ip("addr add 198.18.0.1/30 dev dkt-inet");
    ip("link set dkt-inet up");
    ip(&format!("-n {INET_NS} link set lo up"));
    ip(&format!("-n {INET_NS} link set eth0 up"));
    ip(&format!("-n {INET_NS} addr add 198.18.0.2/30 dev eth0"));
    for a in [OK_IP, BLOCKED_IP, METADATA_IP, LAN_IP] {
        ip(&format!("-n {INET_NS} addr add {a}/32 dev eth0"));
    }
    ip(&format!("-n {INET_NS} route add default via 198.18.0.1"));
    for net in STAND_IN_NETS {
        ip(&format!("route add {net} via 198.18.0.2 dev dkt-inet"));
    }
    serve_hello(Some(INET_NS), "0.0.0.0:80".parse().unwrap());
}

fn stop_internet() {
    for net in STAND_IN_NETS {
        ip_quiet(&format!("route del {net} dev dkt-inet"));
    }
    ip_quiet("link del dkt-inet");
    ip_quiet(&format!("netns del {INET_NS}"));
}

/// A real network stack in the guest's place: namespace `name` with TAP `gtap` (the guest's MAC,
/// IP and route), spliced to the computer's TAP fd by a pump (both carry the same virtio-net
/// header, so frames pass unchanged).
struct Guest {
    ns: String,
    stop: Arc<AtomicBool>,
}

impl Guest {
    fn attach(name: &str, computer_tap: &OwnedFd) -> Guest {
        ip_quiet(&format!("netns del {name}"));
        ip(&format!("netns add {name}"));
        let ns = name.to_string();
        let gtap = in_ns(Some(name), || tap::open("gtap").expect("guest tap"));
        ip(&format!("-n {name} link set lo up"));
        ip(&format!(
            "-n {name} link set gtap address 02:de:5c:00:00:02"
        ));
        ip(&format!("-n {name} link set gtap up"));
        ip(&format!("-n {name} addr add 172.16.0.2/30 dev gtap"));
        ip(&format!("-n {name} route add default via 172.16.0.1"));
        let stop = Arc::new(AtomicBool::new(false));
        let a = Arc::new(computer_tap.try_clone().unwrap());
        let b = Arc::new(gtap);
        for (from, to) in [(a.clone(), b.clone()), (b, a)] {
            let stop = stop.clone();
            std::thread::spawn(move || pump(&from, &to, &stop));
        }
        Guest { ns, stop }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        ip_quiet(&format!("netns del {}", self.ns));
    }
}

fn pump(from: &OwnedFd, to: &OwnedFd, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [nix::poll::PollFd::new(
            from.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(nix::poll::poll(&mut fds, 100u16), Ok(n) if n > 0) {
            continue;
        }
        let n = nix::unistd::read(from, &mut buf).unwrap_or(0);
        if n > 0 {
            let _ = nix::unistd::write(to, &buf[..n]);
        }
    }
}

fn config(upstream: SocketAddr) -> NetworkConfig {
    NetworkConfig {
        enabled: deskd::network::Switch::On,
        upstream_dns: vec![upstream],
        ..NetworkConfig::default()
    }
}

fn policy(v: serde_json::Value) -> EgressPolicy {
    EgressPolicy::from_json(&v).unwrap()
}

fn ns_exists(id: &str) -> bool {
    namespace::path(&format!("deskd-{id}")).exists()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn table_in_ns(id: &str) -> String {
    sh(&format!(
        "ip netns exec deskd-{id} nft list table ip deskd 2>&1"
    ))
}

fn forwarding() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn isolation_nat_dns_policy_spoofing_and_teardown() {
    skip_unless_able!("isolation_nat_dns_policy_spoofing_and_teardown");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let a_id = "0a000000-0000-4000-8000-00000000000a";
    let b_id = "0b000000-0000-4000-8000-00000000000b";
    let _cleanup = Cleanup {
        ids: vec![a_id, b_id],
        forwarding: forwarding(),
    };
    start_internet();
    let upstream = start_upstream(HashMap::from([
        ("ok.test", OK_IP),
        ("blocked.test", BLOCKED_IP),
    ]));
    let host_port = {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let p = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"host");
            }
        });
        p
    };
    let rt = rt();
    let net = rt
        .block_on(Network::start(config(upstream)))
        .expect("start");
    let t0 = Instant::now();
    let a = rt
        .block_on(net.setup(a_id, &EgressPolicy::default()))
        .expect("setup a");
    eprintln!("setup of one computer: {:?}", t0.elapsed());
    let b = rt
        .block_on(net.setup(b_id, &EgressPolicy::default()))
        .expect("setup b");
    assert_ne!(a.link, b.link);
    // Every gateway has the one fixed MAC, so a resumed or cloned guest's ARP cache stays right.
    for id in [a_id, b_id] {
        let tap = sh(&format!("ip -n deskd-{id} link show tap0"));
        assert!(tap.contains("link/ether 02:de:5c:00:00:01"), "{id}: {tap}");
    }
    let ga = Guest::attach("dk-test-guest-a", &a.tap);
    let _gb = Guest::attach("dk-test-guest-b", &b.tap);
    let g = Some(ga.ns.as_str());

    // Out through both NATs to the stand-in internet.
    assert!(
        connects(g, OK_IP, 80, None),
        "guest A reaches the stand-in server"
    );
    assert!(
        connects(Some("dk-test-guest-b"), OK_IP, 80, None),
        "guest B too"
    );
    // Controls: from the host these are reachable, so a failure below is the guest's rules.
    assert!(connects(None, METADATA_IP, 80, None));
    assert!(connects(None, LAN_IP, 80, None));
    assert!(connects(None, a.link.host, host_port, None));
    // Isolation.
    assert!(
        !connects(g, METADATA_IP, 80, None),
        "metadata address blocked"
    );
    assert!(!connects(g, LAN_IP, 80, None), "private range blocked");
    assert!(
        !connects(g, a.link.host, host_port, None),
        "own host link blocked"
    );
    assert!(
        !connects(g, b.link.host, host_port, None),
        "other computer's host link blocked"
    );
    assert!(
        !connects(g, b.link.ns, 53, None),
        "other computer's namespace blocked"
    );
    assert!(
        !connects(g, Ipv4Addr::new(198, 18, 0, 1), host_port, None),
        "host's other address blocked"
    );

    // DNS at the gateway, and captured when the guest names another server.
    assert_eq!(
        resolve(&ga.ns, Ipv4Addr::new(172, 16, 0, 1), "ok.test"),
        Some((ResponseCode::NoError, vec![OK_IP]))
    );
    assert_eq!(
        resolve(&ga.ns, Ipv4Addr::new(203, 0, 113, 53), "ok.test"),
        Some((ResponseCode::NoError, vec![OK_IP]))
    );
    assert_eq!(
        resolve(&ga.ns, Ipv4Addr::new(172, 16, 0, 1), "blocked.test"),
        Some((ResponseCode::NoError, vec![BLOCKED_IP]))
    );
    assert!(connects(g, BLOCKED_IP, 80, None), "before the block rule");

    // A block rule for one name, live: the name is refused and its address unreachable; the
    // other name still works.
    let block = policy(serde_json::json!({"mode":"block","rules":[{"domain":"blocked.test"}]}));
    assert!(rt.block_on(net.set_policy(a_id, &block)).unwrap());
    assert_eq!(
        resolve(&ga.ns, Ipv4Addr::new(172, 16, 0, 1), "blocked.test").map(|r| r.0),
        Some(ResponseCode::NXDomain)
    );
    assert!(
        !connects(g, BLOCKED_IP, 80, None),
        "blocked name's address unreachable"
    );
    assert!(connects(g, OK_IP, 80, None), "other name still reachable");
    assert!(
        connects(Some("dk-test-guest-b"), BLOCKED_IP, 80, None),
        "computer B is not affected"
    );

    // Allow mode: only what a rule names, and a domain's addresses only once resolved.
    let allow = policy(
        serde_json::json!({"mode":"allow","rules":[{"domain":"ok.test","ports":[80]},{"cidr":"192.168.77.0/24"}]}),
    );
    assert!(rt.block_on(net.set_policy(a_id, &allow)).unwrap());
    assert!(!connects(g, OK_IP, 80, None), "not resolved yet");
    assert_eq!(
        resolve(&ga.ns, Ipv4Addr::new(172, 16, 0, 1), "blocked.test").map(|r| r.0),
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(
        resolve(&ga.ns, Ipv4Addr::new(172, 16, 0, 1), "ok.test").map(|r| r.1),
        Some(vec![OK_IP])
    );
    assert!(connects(g, OK_IP, 80, None), "allowed after resolving");
    assert!(
        connects(g, LAN_IP, 80, None),
        "an allow cidr opens a private range"
    );
    assert!(!connects(g, BLOCKED_IP, 80, None));
    assert!(!connects(g, METADATA_IP, 80, None));
    let table = table_in_ns(a_id);
    assert!(
        table.contains("198.51.100.10"),
        "the learnt address is in a set:\n{table}"
    );
    // The host's own networks (here the stand-in link, present when the daemon started) are
    // denied like the private ranges.
    assert!(
        table.contains("ip daddr 198.18.0.0/30 drop"),
        "host network denied:\n{table}"
    );
    rt.block_on(net.set_policy(a_id, &EgressPolicy::default()))
        .unwrap();

    // Spoofing: another source address, or another MAC, gets nowhere.
    ip(&format!("-n {} addr add 10.99.0.9/32 dev gtap", ga.ns));
    assert!(
        connects(g, OK_IP, 80, Some(Ipv4Addr::new(172, 16, 0, 2))),
        "control: own address"
    );
    assert!(
        !connects(g, OK_IP, 80, Some(Ipv4Addr::new(10, 99, 0, 9))),
        "spoofed source dropped"
    );
    ip(&format!(
        "-n {} link set gtap address 02:00:00:00:00:99",
        ga.ns
    ));
    assert!(!connects(g, OK_IP, 80, None), "spoofed MAC dropped");
    ip(&format!(
        "-n {} link set gtap address 02:de:5c:00:00:02",
        ga.ns
    ));
    assert!(connects(g, OK_IP, 80, None), "back to its own MAC");

    // Teardown leaves nothing.
    drop(ga);
    drop(a);
    rt.block_on(net.teardown(a_id)).unwrap();
    assert!(!ns_exists(a_id));
    assert!(!link_exists(&addresses::host_veth_name(a_id)));
    assert!(
        connects(Some("dk-test-guest-b"), OK_IP, 80, None),
        "B unaffected by A's teardown"
    );
    drop(b);
    rt.block_on(net.shutdown()).unwrap();
    assert!(!ns_exists(b_id));
    assert!(!link_exists(&addresses::host_veth_name(b_id)));
    assert!(!sh("nft list tables").contains("deskd_host"));
}

#[test]
fn reconcile_removes_leftovers_and_restores_running_computers() {
    skip_unless_able!("reconcile_removes_leftovers_and_restores_running_computers");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let gone = "0c000000-0000-4000-8000-00000000000c";
    let kept = "0d000000-0000-4000-8000-00000000000d";
    let _cleanup = Cleanup {
        ids: vec![gone, kept],
        forwarding: forwarding(),
    };
    start_internet();
    let upstream = start_upstream(HashMap::from([("ok.test", OK_IP)]));
    // A daemon that dies without tearing down (its runtime, tasks and sockets just vanish).
    let kept_tap = {
        let rt = rt();
        let net = rt.block_on(Network::start(config(upstream))).unwrap();
        rt.block_on(net.setup(gone, &EgressPolicy::default()))
            .unwrap();
        let h = rt
            .block_on(net.setup(kept, &EgressPolicy::default()))
            .unwrap();
        drop(net);
        drop(rt);
        h.tap
    };
    assert!(ns_exists(gone) && ns_exists(kept));
    let rt = rt();
    let net = rt.block_on(Network::start(config(upstream))).unwrap();
    let report = rt
        .block_on(net.reconcile(&[(kept.to_string(), EgressPolicy::default())]))
        .unwrap();
    assert_eq!(report.removed_namespaces, vec![format!("deskd-{gone}")]);
    assert_eq!(report.restored, vec![kept.to_string()]);
    assert!(report.lost.is_empty());
    assert!(!ns_exists(gone));
    assert!(!link_exists(&addresses::host_veth_name(gone)));
    // The running computer's guest (its VMM kept the TAP) still has DNS and its way out.
    let g = Guest::attach("dk-test-guest-d", &kept_tap);
    assert_eq!(
        resolve(&g.ns, Ipv4Addr::new(172, 16, 0, 1), "ok.test").map(|r| r.1),
        Some(vec![OK_IP])
    );
    assert!(connects(Some(g.ns.as_str()), OK_IP, 80, None));
    assert!(!connects(Some(g.ns.as_str()), METADATA_IP, 80, None));
    drop(g);
    drop(kept_tap);
    // With no computer running, everything goes.
    let report = rt.block_on(net.reconcile(&[])).unwrap();
    assert_eq!(report.removed_namespaces, vec![format!("deskd-{kept}")]);
    assert!(!ns_exists(kept));
    assert!(!link_exists(&addresses::host_veth_name(kept)));
    // A start that runs while the daemon's recovery reconciles (its VMM not spawned yet, so not
    // among the running): the network it just made is not a leftover.
    let _fresh = rt
        .block_on(net.setup(gone, &EgressPolicy::default()))
        .unwrap();
    let report = rt.block_on(net.reconcile(&[])).unwrap();
    assert!(report.removed_namespaces.is_empty(), "{report:?}");
    assert!(report.removed_links.is_empty(), "{report:?}");
    assert!(ns_exists(gone));
    rt.block_on(net.shutdown()).unwrap();
    assert!(!ns_exists(gone));
}

/// The daemon's side of the wiring, with a shell standing in for `deskd vmm` (so that the
/// lifecycle, not the VMM, is under test): a start sets up the computer's namespace and hands the
/// VMM the TAP at descriptor 3 with the card in its vmm.json, the daemon keeps no copy of the
/// TAP, and a stop, a VMM that dies and a daemon restart leave no namespace or link behind (and
/// a running VM keeps its own across the restart).
#[test]
fn the_lifecycle_gives_a_starting_vmm_its_tap_and_tears_the_network_down_after() {
    use deskd::computers::{Lifecycle, VmBackend, VmmProcessBackend};
    use deskd::store::{ComputerStatus, NewComputer, Store, WorkspaceStatus};
    let name = "the_lifecycle_gives_a_starting_vmm_its_tap_and_tears_the_network_down_after";
    skip_unless_able!(name);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let data = tempfile::tempdir().unwrap();
    let script = data.path().join("fake-deskd");
    // Like the real VMM it writes its pid file; it records what its descriptor 3 is.
    std::fs::write(
        &script,
        "#!/bin/sh\ndir=$(dirname \"$3\")\n\
         echo \"$$ $(cut -d' ' -f22 /proc/$$/stat)\" > \"$dir/vmm.pid\"\n\
         cat /proc/self/fdinfo/3 > \"$dir/fd3.tmp\" 2>&1; readlink /proc/self/fd/3 >> \"$dir/fd3.tmp\"\n\
         mv \"$dir/fd3.tmp\" \"$dir/fd3\"\nexec sleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let probe = VmmProcessBackend::new(script.clone(), data.path(), true);
    if let Err(e) = probe.host_check() {
        eprintln!("SKIPPED {name}: {e}");
        return;
    }
    let images = data.path().join("images/system/desktop/1.0.0");
    std::fs::create_dir_all(&images).unwrap();
    for f in ["kernel", "initrd", "rootfs"] {
        std::fs::write(images.join(f), b"x").unwrap();
    }
    let store = Arc::new(Store::open(data.path()).unwrap());
    let ws = store
        .create_workspace("w", WorkspaceStatus::Active, None)
        .unwrap();
    let c = store
        .insert_computer(
            &NewComputer {
                egress_policy: None,
                workspace_id: ws.id,
                name: "c".into(),
                os: "linux".into(),
                cpu: 1,
                ram_gb: 1,
                gpu: "none".into(),
                disk_size_gb: 1,
                resolution: "1280x720x24".into(),
                auto_stop_minutes: None,
                template_ref: "system/desktop@1.0.0".into(),
                image: None,
                vnc_password: "x".into(),
            },
            |_| Ok(()),
        )
        .unwrap();
    store.set_bandwidth_limit(&c.id, Some(10)).unwrap();
    let id: &'static str = Box::leak(c.id.clone().into_boxed_str());
    let _cleanup = Cleanup {
        ids: vec![id],
        forwarding: forwarding(),
    };
    let dir = data.path().join("computers").join(id);
    let upstream = start_upstream(HashMap::from([("ok.test", OK_IP)]));
    let rt = rt();
    let daemon = |rt: &tokio::runtime::Runtime| {
        let net = rt.block_on(Network::start(config(upstream))).unwrap();
        let backend = Arc::new(VmmProcessBackend::new(script.clone(), data.path(), true));
        Arc::new(
            Lifecycle::new(store.clone(), backend, data.path().to_path_buf())
                .with_network(Some(net), true),
        )
    };
    let status = || store.computer(id).unwrap().unwrap().status;
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let tun_fds_of_this_process = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l == std::path::Path::new("/dev/net/tun"))
                    .unwrap_or(false)
            })
            .count()
    };

    let lc = daemon(&rt);
    rt.block_on(lc.start(id)).unwrap();
    wait("the VMM's descriptor 3", &|| dir.join("fd3").exists());
    let fd3 = std::fs::read_to_string(dir.join("fd3")).unwrap();
    assert!(
        fd3.contains("iff:\ttap0"),
        "descriptor 3 is not the TAP: {fd3}"
    );
    assert!(ns_exists(id));
    let vmm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("vmm.json")).unwrap()).unwrap();
    assert_eq!(
        vmm["net"],
        serde_json::json!([{"tap": {"fd": 3}, "mac": "02:de:5c:00:00:02",
            "limit": {"bandwidth_bytes_per_sec": 1_250_000, "packets_per_sec": null}}])
    );
    // Once the start is over (it watches the new VMM for a moment), the daemon holds no TAP:
    // the VMM's copy alone keeps it, so a VMM that dies takes its TAP along.
    wait("the daemon to close its copy of the TAP", &|| {
        tun_fds_of_this_process() == 0
    });

    // Stop: the namespace and the host link go with the VM.
    rt.block_on(lc.stop(id)).unwrap();
    wait("stopped", &|| status() == ComputerStatus::Stopped);
    assert!(!ns_exists(id));
    assert!(!link_exists(&addresses::host_veth_name(id)));

    // A VMM that dies: the supervisor sees it and removes the network.
    std::fs::remove_file(dir.join("fd3")).unwrap();
    rt.block_on(lc.start(id)).unwrap();
    wait("the VMM's descriptor 3", &|| dir.join("fd3").exists());
    assert!(ns_exists(id));
    let pid = |dir: &std::path::Path| -> i32 {
        std::fs::read_to_string(dir.join("vmm.pid"))
            .unwrap_or_else(|e| {
                let files: Vec<_> = std::fs::read_dir(dir)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                let c = store.computer(id).unwrap().unwrap();
                panic!(
                    "no vmm.pid ({e}) in {files:?}; status {:?} {:?}; log {}",
                    c.status,
                    c.status_reason,
                    std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default()
                )
            })
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid(&dir)),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait("the supervisor to see the VMM's end", &|| {
        rt.block_on(lc.supervise());
        status() == ComputerStatus::Error
    });
    assert!(!ns_exists(id), "the network outlived its VMM");

    // A daemon restart: a VM that runs keeps its network; once it has ended, the next daemon's
    // recovery removes what is left.
    std::fs::remove_file(dir.join("fd3")).unwrap();
    rt.block_on(lc.start(id)).unwrap();
    wait("the VMM's descriptor 3", &|| dir.join("fd3").exists());
    drop(lc);
    let lc = daemon(&rt);
    rt.block_on(lc.recover()).unwrap();
    assert!(
        ns_exists(id),
        "recovery removed a running computer's network"
    );
    let vmm = pid(&dir);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait("the VMM to end", &|| {
        std::fs::read_to_string(format!("/proc/{vmm}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    });
    drop(lc);
    let lc = daemon(&rt);
    rt.block_on(lc.recover()).unwrap();
    assert!(
        !ns_exists(id),
        "a dead VM's network survived the daemon's restart"
    );
    assert!(!link_exists(&addresses::host_veth_name(id)));
}
