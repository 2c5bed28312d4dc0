//! nftables over netlink: the computer's table inside its namespace (isolation, anti-spoofing,
//! the egress policy, DNS capture, NAT to the veth) and the host's table (isolation of the host
//! and of the guests from each other, NAT to the uplink). Every change is one nftables
//! transaction (a netlink batch), so a packet sees the old rules or the new ones, never a mix.
//!
//! Crate choice: `netlink-packet-netfilter` (rust-netlink, the maintainers of `rtnetlink`, MIT):
//! pure netlink messages, no C library and no `nft` process, with set timeouts, lookups and
//! batches. The three expressions it does not type (ct, nat, masq) are written here as plain
//! attributes. Not chosen: `rustables` (GPL-3.0, which the Apache-2.0 deskd binary cannot take,
//! and it has neither element timeouts nor interval sets), `nftnl`/`mnl` (bindings to the
//! GPL-2.0 libnftnl, a C build dependency), `nftables` (JSON through the `nft` binary: a process
//! per change, and the DNS resolver changes sets per answer).

use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, Immediate, InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage,
    Operator, Payload, Register, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage, Verdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::addresses::{GATEWAY_IP, GUEST_IP, GUEST_MAC, HOST_VETH_PREFIX, NS_VETH_NAME, TAP_NAME};
use super::policy::{Cidr, EgressPolicy, Mode, Target};
use super::NetworkError;

/// The computer's table inside its namespace.
pub const NS_TABLE: &str = "deskd";
/// The host's table.
pub const HOST_TABLE: &str = "deskd_host";
/// The set of addresses learnt from DNS for domain rules that cover every port.
pub const LEARNT_ANY: &str = "learnt_any";

/// The set of addresses learnt for domain rule `i` (one with ports).
pub fn learnt_set(i: usize) -> String {
    format!("learnt_{i}")
}

/// Destinations no guest reaches unless an `ip`/`cidr` rule of an `allow` policy names them:
/// "this network", RFC 1918, CGNAT, loopback, link-local (cloud metadata), multicast, reserved.
pub const DENIED_RANGES: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

const NF_DROP: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NF_ACCEPT: u32 = 1;
const NFPROTO_IPV4: u32 = 2;
const KEY_TYPE_IPV4: u32 = 7;
const CT_ESTABLISHED: u32 = 1 << 1;
const CT_RELATED: u32 = 1 << 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Payload bases (NFT_PAYLOAD_*_HEADER).
const LL: u32 = 0;
const NH: u32 = 1;
const TH: u32 = 2;
/// How long one transaction may take before the kernel is taken to be stuck.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

type Expr = ListAttribute<ExpressionAttribute>;

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn meta(key: MetaKey) -> Expr {
    Expressions::Meta(vec![
        Meta::DestinationRegister(Register::Reg1),
        Meta::Key(key),
    ])
    .into()
}

fn cmp(op: Operator, data: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn mask(len: u32, mask: Vec<u8>) -> Expr {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(len),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(vec![0; len as usize])),
    ])
    .into()
}

fn verdict(code: u32) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(code),
        )])),
    ])
    .into()
}

fn jump(chain: &str) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![
            VerdictAttribute::Code(Verdict::Jump),
            VerdictAttribute::Chain(chain.to_string()),
        ])),
    ])
    .into()
}

fn other(name: &str, attrs: Vec<DefaultNla>) -> Expr {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes: attrs,
    }
    .into()
}

/// `ct state established,related`.
fn ct_established() -> Vec<Expr> {
    // NFTA_CT_DREG = 1, NFTA_CT_KEY = 2 (NFT_CT_STATE = 0).
    vec![
        other(
            "ct",
            vec![
                DefaultNla::new(1, be32(NFT_REG_1)),
                DefaultNla::new(2, be32(0)),
            ],
        ),
        // ct state is a host-order bit mask.
        mask(4, (CT_ESTABLISHED | CT_RELATED).to_ne_bytes().to_vec()),
        cmp(Operator::NotEqual, vec![0; 4]),
    ]
}

fn masquerade() -> Expr {
    other("masq", vec![])
}

/// `dnat to addr:port` (loads both into registers 1 and 2 first).
fn dnat(addr: Ipv4Addr, port: u16) -> Vec<Expr> {
    let imm = |reg: Register, data: Vec<u8>| -> Expr {
        Expressions::Immediate(vec![
            Immediate::DestinationRegister(reg),
            Immediate::Data(DataAttribute::Value(data)),
        ])
        .into()
    };
    vec![
        imm(Register::Reg1, addr.octets().to_vec()),
        imm(Register::Reg2, port.to_be_bytes().to_vec()),
        // NFTA_NAT_TYPE = 1 (NFT_NAT_DNAT = 1), NFTA_NAT_FAMILY = 2, NFTA_NAT_REG_ADDR_MIN = 3,
        // NFTA_NAT_REG_PROTO_MIN = 5.
        other(
            "nat",
            vec![
                DefaultNla::new(1, be32(1)),
                DefaultNla::new(2, be32(NFPROTO_IPV4)),
                DefaultNla::new(3, be32(NFT_REG_1)),
                DefaultNla::new(5, be32(NFT_REG_2)),
            ],
        ),
    ]
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

fn iif(name: &str) -> Vec<Expr> {
    vec![meta(MetaKey::Iifname), cmp(Operator::Equal, ifname(name))]
}

fn oif(name: &str) -> Vec<Expr> {
    vec![meta(MetaKey::Oifname), cmp(Operator::Equal, ifname(name))]
}

/// Interface name starts with `prefix` (`iifname "dkv*"`: compare without the NUL).
fn iif_prefix(prefix: &str, op: Operator) -> Vec<Expr> {
    vec![meta(MetaKey::Iifname), cmp(op, prefix.as_bytes().to_vec())]
}

fn oif_prefix(prefix: &str, op: Operator) -> Vec<Expr> {
    vec![meta(MetaKey::Oifname), cmp(op, prefix.as_bytes().to_vec())]
}

fn l4proto(p: u8) -> Vec<Expr> {
    vec![meta(MetaKey::L4Proto), cmp(Operator::Equal, vec![p])]
}

fn dport(p: u16) -> Vec<Expr> {
    vec![
        payload(TH, 2, 2),
        cmp(Operator::Equal, p.to_be_bytes().to_vec()),
    ]
}

/// `ip saddr`/`ip daddr` in `net`.
fn addr_in(offset: u32, net: Cidr, op: Operator) -> Vec<Expr> {
    let mut v = vec![payload(NH, offset, 4)];
    if net.prefix < 32 {
        v.push(mask(4, net.mask().to_be_bytes().to_vec()));
    }
    v.push(cmp(op, net.addr.octets().to_vec()));
    v
}

fn daddr_in(net: Cidr) -> Vec<Expr> {
    addr_in(16, net, Operator::Equal)
}

fn host(ip: Ipv4Addr) -> Cidr {
    Cidr {
        addr: ip,
        prefix: 32,
    }
}

fn daddr_in_set(set: &str) -> Vec<Expr> {
    vec![
        payload(NH, 16, 4),
        Expressions::Lookup(vec![
            Lookup::Set(set.to_string()),
            Lookup::SourceRegister(Register::Reg1),
        ])
        .into(),
    ]
}

/// One address learnt from DNS: which set, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learnt {
    pub set: String,
    pub addr: Ipv4Addr,
    pub timeout: Duration,
}

/// One nftables transaction under construction.
pub struct Batch {
    family: NetfilterProtoFamily,
    msgs: Vec<(NfTablesMessage, u16)>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            family: NetfilterProtoFamily::IPv4,
            msgs: Vec::new(),
        }
    }

    fn push(&mut self, m: NfTablesMessage, flags: u16) {
        self.msgs.push((m, flags));
    }

    /// `add table; delete table; add table`: replaces the table whether or not it exists, in
    /// the same transaction as what follows (the `nft -f` idiom).
    fn replace_table(&mut self, table: &str) {
        let t = || TableMessage {
            attributes: vec![TableAttribute::Name(table.to_string())],
        };
        self.push(NfTablesMessage::NewTable(t()), NLM_F_CREATE);
        self.push(NfTablesMessage::DeleteTable(t()), 0);
        self.push(NfTablesMessage::NewTable(t()), NLM_F_CREATE);
    }

    fn delete_table(&mut self, table: &str) {
        let t = || TableMessage {
            attributes: vec![TableAttribute::Name(table.to_string())],
        };
        self.push(NfTablesMessage::NewTable(t()), NLM_F_CREATE);
        self.push(NfTablesMessage::DeleteTable(t()), 0);
    }

    /// A base chain (`hook` Some) or a regular one.
    fn chain(&mut self, table: &str, name: &str, hook: Option<(InetHookNumber, i32, &str, u32)>) {
        let mut attributes = vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(name.to_string()),
        ];
        if let Some((number, priority, kind, policy)) = hook {
            attributes.push(ChainAttribute::Hook(vec![
                Hook::Number(number.into()),
                Hook::Priority(priority as u32),
            ]));
            attributes.push(ChainAttribute::Type(kind.to_string()));
            attributes.push(ChainAttribute::Policy(policy));
        }
        self.push(
            NfTablesMessage::NewChain(ChainMessage { attributes }),
            NLM_F_CREATE,
        );
    }

    fn rule(&mut self, table: &str, chain: &str, exprs: Vec<Expr>) {
        self.push(
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.to_string()),
                    RuleAttribute::Chain(chain.to_string()),
                    RuleAttribute::Expressions(exprs),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
        );
    }

    fn ipv4_timeout_set(&mut self, table: &str, name: &str, id: u32) {
        self.push(
            NfTablesMessage::NewSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(table.to_string()),
                    SetAttribute::Name(name.to_string()),
                    SetAttribute::Flags(SetFlags::Timeout),
                    SetAttribute::KeyType(KEY_TYPE_IPV4),
                    SetAttribute::KeyLen(4),
                    SetAttribute::Id(id),
                ],
            }),
            NLM_F_CREATE,
        );
    }

    /// Adds (or refreshes) addresses in sets of `table`.
    pub fn add_elements(&mut self, table: &str, items: &[Learnt]) {
        let mut by_set: std::collections::BTreeMap<&str, Vec<&Learnt>> = Default::default();
        for l in items {
            by_set.entry(l.set.as_str()).or_default().push(l);
        }
        for (set, list) in by_set {
            let elements = list
                .iter()
                .map(|l| {
                    ListAttribute::Element(vec![
                        SetElementAttribute::Key(DataAttribute::Value(l.addr.octets().to_vec())),
                        SetElementAttribute::Timeout(l.timeout.as_millis().max(1) as u64),
                    ])
                })
                .collect();
            self.push(
                NfTablesMessage::NewSetElement(SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(table.to_string()),
                        SetElementList::Set(set.to_string()),
                        SetElementList::Elements(elements),
                    ],
                }),
                NLM_F_CREATE,
            );
        }
    }

    /// A batch that only adds learnt addresses to the computer's sets.
    pub fn learnt(items: &[Learnt]) -> Batch {
        let mut b = Batch::new();
        b.add_elements(NS_TABLE, items);
        b
    }

    /// Sends the batch as one transaction on `sock` (a NETLINK_NETFILTER socket of the namespace
    /// the rules are for) and waits for the kernel's answer to every message.
    pub fn commit(self, sock: &Socket) -> Result<(), NetworkError> {
        if self.msgs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let seq0: u32 = 1;
        let count = self.msgs.len() as u32;
        let mut emit = |mut m: NetlinkMessage<NetfilterMessage>, seq: u32, flags: u16| {
            m.header.flags = NLM_F_REQUEST | flags;
            m.header.sequence_number = seq;
            m.finalize();
            let start = buf.len();
            buf.resize(start + m.buffer_len(), 0);
            m.serialize(&mut buf[start..]);
        };
        let control = |c: ControlMessage| {
            NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 10),
                c,
            ))
        };
        emit(control(ControlMessage::BatchBegin), 0, 0);
        for (i, (m, flags)) in self.msgs.into_iter().enumerate() {
            let msg = NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(self.family, 0, 0),
                m,
            ));
            emit(msg, seq0 + i as u32, flags | NLM_F_ACK);
        }
        emit(control(ControlMessage::BatchEnd), seq0 + count, 0);
        sock.send(&buf, 0)
            .map_err(|e| NetworkError::Firewall(format!("cannot send to nftables: {e}")))?;
        let last = seq0 + count - 1;
        let mut first_error = None;
        let deadline = std::time::Instant::now() + ACK_TIMEOUT;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(NetworkError::Firewall(
                    "nftables did not answer within 5 s".into(),
                ));
            }
            let (data, _) = sock
                .recv_from_full()
                .map_err(|e| NetworkError::Firewall(format!("no answer from nftables: {e}")))?;
            let mut off = 0;
            while off + 16 <= data.len() {
                let len =
                    u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                        as usize;
                if len < 16 || off + len > data.len() {
                    break;
                }
                let msg = &data[off..off + len];
                let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
                if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(msg) {
                    if let NetlinkPayload::Error(e) = m.payload {
                        if let Some(code) = e.code {
                            first_error.get_or_insert((seq, code.get()));
                        }
                    }
                }
                if seq >= last {
                    return match first_error {
                        None => Ok(()),
                        Some((seq, code)) => Err(NetworkError::Firewall(format!(
                            "nftables refused message {} of the transaction: {}",
                            seq - seq0,
                            std::io::Error::from_raw_os_error(-code)
                        ))),
                    };
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// A NETLINK_NETFILTER socket in the calling thread's namespace; it stays tied to that
/// namespace wherever it is used later.
pub fn socket() -> Result<Socket, NetworkError> {
    let mut s = Socket::new(NETLINK_NETFILTER)
        .map_err(|e| NetworkError::Firewall(format!("cannot open a netfilter socket: {e}")))?;
    s.bind_auto()
        .map_err(|e| NetworkError::Firewall(format!("cannot bind the netfilter socket: {e}")))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|e| NetworkError::Firewall(format!("cannot connect the netfilter socket: {e}")))?;
    set_rcv_timeout(&s, ACK_TIMEOUT);
    Ok(s)
}

fn set_rcv_timeout(s: &Socket, t: Duration) {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a `struct timeval` of the given size from the pointer, which
    // stays valid for the call; the fd is the socket's own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// The whole table of a computer's namespace for `policy`, with the addresses learnt so far.
///
/// `host_nets`: the networks of the host's own addresses (its LANs, whatever their range), denied
/// like the private ranges.
pub fn namespace_ruleset(
    policy: &EgressPolicy,
    pool: Cidr,
    host_nets: &[Cidr],
    learnt: &[Learnt],
) -> Batch {
    let t = NS_TABLE;
    let mut b = Batch::new();
    b.replace_table(t);
    b.ipv4_timeout_set(t, LEARNT_ANY, 1);
    let port_rules: Vec<(usize, &Vec<u16>)> = policy
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match (&r.target, &r.ports) {
            (Target::Domain(_), Some(p)) => Some((i, p)),
            _ => None,
        })
        .collect();
    for (n, (i, _)) in port_rules.iter().enumerate() {
        b.ipv4_timeout_set(t, &learnt_set(*i), 2 + n as u32);
    }
    b.add_elements(t, learnt);

    // Anti-spoofing, before conntrack (raw priority): from the TAP only the guest's MAC and IP.
    b.chain(
        t,
        "pre",
        Some((InetHookNumber::PreRouting, -300, "filter", NF_ACCEPT)),
    );
    let mut r = iif(TAP_NAME);
    r.extend([
        payload(LL, 6, 6),
        cmp(Operator::NotEqual, GUEST_MAC.to_vec()),
        verdict(NF_DROP),
    ]);
    b.rule(t, "pre", r);
    let mut r = iif(TAP_NAME);
    r.extend(addr_in(12, host(GUEST_IP), Operator::NotEqual));
    r.push(verdict(NF_DROP));
    b.rule(t, "pre", r);

    // Every DNS query of the guest goes to its resolver, whatever server it names.
    b.chain(
        t,
        "dns",
        Some((InetHookNumber::PreRouting, -100, "nat", NF_ACCEPT)),
    );
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        let mut r = iif(TAP_NAME);
        r.extend(l4proto(proto));
        r.extend(dport(53));
        r.extend(dnat(GATEWAY_IP, 53));
        b.rule(t, "dns", r);
    }

    // The namespace itself offers the guest its resolver and ping, nothing else.
    b.chain(
        t,
        "input",
        Some((InetHookNumber::LocalIn, 0, "filter", NF_DROP)),
    );
    let mut r = iif("lo");
    r.push(verdict(NF_ACCEPT));
    b.rule(t, "input", r);
    let mut r = ct_established();
    r.push(verdict(NF_ACCEPT));
    b.rule(t, "input", r);
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        let mut r = iif(TAP_NAME);
        r.extend(daddr_in(host(GATEWAY_IP)));
        r.extend(l4proto(proto));
        r.extend(dport(53));
        r.push(verdict(NF_ACCEPT));
        b.rule(t, "input", r);
    }
    let mut r = iif(TAP_NAME);
    r.extend(l4proto(IPPROTO_ICMP));
    r.push(verdict(NF_ACCEPT));
    b.rule(t, "input", r);

    // Forwarding: replies, and what the egress chain lets out of the TAP to the veth.
    b.chain(
        t,
        "forward",
        Some((InetHookNumber::Forward, 0, "filter", NF_DROP)),
    );
    let mut r = ct_established();
    r.push(verdict(NF_ACCEPT));
    b.rule(t, "forward", r);
    b.chain(t, "egress", None);
    let mut r = iif(TAP_NAME);
    r.extend(oif(NS_VETH_NAME));
    r.push(jump("egress"));
    b.rule(t, "forward", r);

    egress_rules(&mut b, policy, pool, host_nets);

    b.chain(
        t,
        "post",
        Some((InetHookNumber::PostRouting, 100, "nat", NF_ACCEPT)),
    );
    let mut r = oif(NS_VETH_NAME);
    r.push(masquerade());
    b.rule(t, "post", r);
    b
}

/// The rules of one `ip`/`cidr` policy rule, each ending in `code`.
fn address_rule(b: &mut Batch, net: Cidr, ports: &Option<Vec<u16>>, code: u32) {
    match ports {
        None => {
            let mut r = daddr_in(net);
            r.push(verdict(code));
            b.rule(NS_TABLE, "egress", r);
        }
        Some(ports) => {
            for &p in ports {
                for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                    let mut r = daddr_in(net);
                    r.extend(l4proto(proto));
                    r.extend(dport(p));
                    r.push(verdict(code));
                    b.rule(NS_TABLE, "egress", r);
                }
            }
        }
    }
}

fn egress_rules(b: &mut Batch, policy: &EgressPolicy, pool: Cidr, host_nets: &[Cidr]) {
    let t = NS_TABLE;
    let (hit, miss) = match policy.mode {
        Mode::Allow => (NF_ACCEPT, NF_DROP),
        Mode::Block => (NF_DROP, NF_ACCEPT),
    };
    // Other computers' links and the host's end of every link: never.
    let mut r = daddr_in(pool);
    r.push(verdict(NF_DROP));
    b.rule(t, "egress", r);
    let nets = |r: &super::policy::Rule| match r.target {
        Target::Ip(ip) => Some(host(ip)),
        Target::Cidr(c) => Some(c),
        Target::Domain(_) => None,
    };
    // An allow policy's addresses may open the denied ranges, so they come first.
    if policy.mode == Mode::Allow {
        for rule in &policy.rules {
            if let Some(net) = nets(rule) {
                address_rule(b, net, &rule.ports, NF_ACCEPT);
            }
        }
    }
    let denied = DENIED_RANGES
        .iter()
        .map(|&(addr, prefix)| Cidr { addr, prefix })
        .chain(host_nets.iter().copied());
    for net in denied {
        let mut r = daddr_in(net);
        r.push(verdict(NF_DROP));
        b.rule(t, "egress", r);
    }
    if policy.mode == Mode::Block {
        for rule in &policy.rules {
            if let Some(net) = nets(rule) {
                address_rule(b, net, &rule.ports, NF_DROP);
            }
        }
    }
    let mut r = daddr_in_set(LEARNT_ANY);
    r.push(verdict(hit));
    b.rule(t, "egress", r);
    for (i, rule) in policy.rules.iter().enumerate() {
        if let (Target::Domain(_), Some(ports)) = (&rule.target, &rule.ports) {
            for &p in ports {
                for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                    let mut r = daddr_in_set(&learnt_set(i));
                    r.extend(l4proto(proto));
                    r.extend(dport(p));
                    r.push(verdict(hit));
                    b.rule(t, "egress", r);
                }
            }
        }
    }
    b.rule(t, "egress", vec![verdict(miss)]);
}

/// The host's table: guests reach nothing of the host itself (its addresses, loopback, the
/// daemon's port; only replies to what the host started), not each other through it, and leave
/// through the uplink with the host's address.
pub fn host_ruleset(pool: Cidr) -> Batch {
    let t = HOST_TABLE;
    let mut b = Batch::new();
    b.replace_table(t);
    b.chain(
        t,
        "input",
        Some((InetHookNumber::LocalIn, 0, "filter", NF_ACCEPT)),
    );
    let mut r = iif_prefix(HOST_VETH_PREFIX, Operator::Equal);
    r.extend(ct_established());
    r.push(verdict(NF_ACCEPT));
    b.rule(t, "input", r);
    let mut r = iif_prefix(HOST_VETH_PREFIX, Operator::Equal);
    r.push(verdict(NF_DROP));
    b.rule(t, "input", r);
    b.chain(
        t,
        "forward",
        Some((InetHookNumber::Forward, 0, "filter", NF_ACCEPT)),
    );
    let mut r = iif_prefix(HOST_VETH_PREFIX, Operator::Equal);
    r.extend(oif_prefix(HOST_VETH_PREFIX, Operator::Equal));
    r.push(verdict(NF_DROP));
    b.rule(t, "forward", r);
    b.chain(
        t,
        "post",
        Some((InetHookNumber::PostRouting, 100, "nat", NF_ACCEPT)),
    );
    let mut r = addr_in(12, pool, Operator::Equal);
    r.extend(oif_prefix(HOST_VETH_PREFIX, Operator::NotEqual));
    r.push(masquerade());
    b.rule(t, "post", r);
    b
}

/// Removes the host's table (absent is fine).
pub fn delete_host_table() -> Batch {
    let mut b = Batch::new();
    b.delete_table(HOST_TABLE);
    b
}
