//! The addresses and names of a computer's network, with the reason for each.
//!
//! ```text
//!  guest (VM)                 computer's namespace "deskd-<id>"                 host
//!  eth0 172.16.0.2/30 ──TAP── tap0 172.16.0.1/30   eth0 10.203.x.4i+2/30 ──veth── dkv<id12> 10.203.x.4i+1/30 ── uplink
//!  MAC 02:de:5c:00:00:02      DNS resolver :53      masquerade → veth              masquerade → uplink
//! ```
//!
//! The inner side (TAP, guest address, guest MAC, gateway) is the same in every namespace: a VM
//! restored from a snapshot or cloned into another computer finds the very network it was saved
//! with, so its static configuration keeps working. Each namespace is its own Ethernet segment, so
//! equal addresses and MACs in different namespaces never meet. Only the veth /30 differs per
//! computer; it comes from `[network] pool`.

use std::net::Ipv4Addr;

use super::policy::Cidr;

/// The guest's address (static in the image: `172.16.0.2/30`).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
/// The TAP's address in the namespace: the guest's default gateway and DNS resolver.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// Prefix of the guest-gateway link: a /30 holds exactly the two.
pub const INNER_PREFIX: u8 = 30;
/// The guest's MAC: locally administered (0x02), unicast. Fixed for the same reason as the
/// addresses: the anti-spoofing rule checks it, and a restored VM keeps the MAC it was saved with.
pub const GUEST_MAC: [u8; 6] = [0x02, 0xde, 0x5c, 0x00, 0x00, 0x02];
/// The gateway's MAC (the TAP's, in the namespace). Fixed, not the kernel's random one: a
/// suspended computer's namespace is rebuilt at resume, and the guest's ARP cache, saved with
/// it, still holds the gateway's old MAC; a new one left the resumed guest without DNS or routes
/// until that entry went stale.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xde, 0x5c, 0x00, 0x00, 0x01];
/// The TAP's name inside the namespace.
pub const TAP_NAME: &str = "tap0";
/// The veth end inside the namespace.
pub const NS_VETH_NAME: &str = "eth0";
/// Prefix of the host-side veth names (`dkv` + 12 hex digits of the computer id = 15 bytes, the
/// kernel's limit); reconcile finds leftovers by it.
pub const HOST_VETH_PREFIX: &str = "dkv";
/// Prefix of the namespace names under /run/netns (the full computer id follows).
pub const NETNS_PREFIX: &str = "deskd-";

/// The name of the computer's namespace.
pub fn netns_name(computer_id: &str) -> String {
    format!("{NETNS_PREFIX}{computer_id}")
}

/// The host-side veth name: 12 hex digits of a SHA-256 of the id (48 bits, evenly spread
/// whatever the ids look like; the namespace name carries the full id, and reconcile maps running
/// computers to their veth names with this same function).
pub fn host_veth_name(computer_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(computer_id.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_VETH_PREFIX}{hex}")
}

/// The host link of one computer: the `index`-th /30 of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkNet {
    pub index: u32,
    /// The host end (what the namespace routes to).
    pub host: Ipv4Addr,
    /// The namespace end.
    pub ns: Ipv4Addr,
}

/// Prefix of each host link.
pub const LINK_PREFIX: u8 = 30;

/// How many /30 links `pool` holds.
pub fn pool_size(pool: Cidr) -> u32 {
    if pool.prefix > LINK_PREFIX {
        0
    } else {
        1u32 << (LINK_PREFIX - pool.prefix)
    }
}

/// The `index`-th link of `pool`, if the pool has that many.
pub fn link_net(pool: Cidr, index: u32) -> Option<LinkNet> {
    if index >= pool_size(pool) {
        return None;
    }
    let base = u32::from(pool.addr) + index * 4;
    Some(LinkNet {
        index,
        host: Ipv4Addr::from(base + 1),
        ns: Ipv4Addr::from(base + 2),
    })
}

/// The index of the link whose host end is `host`, if it is one of `pool`'s.
pub fn link_index_of(pool: Cidr, host: Ipv4Addr) -> Option<u32> {
    if !pool.contains(host) {
        return None;
    }
    let off = u32::from(host) - u32::from(pool.addr);
    (off % 4 == 1).then_some(off / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_tile_the_pool() {
        let pool = Cidr::parse("10.203.0.0/16").unwrap();
        assert_eq!(pool_size(pool), 16384);
        let l = link_net(pool, 0).unwrap();
        assert_eq!(
            (l.host, l.ns),
            (Ipv4Addr::new(10, 203, 0, 1), Ipv4Addr::new(10, 203, 0, 2))
        );
        let last = link_net(pool, 16383).unwrap();
        assert_eq!(last.ns, Ipv4Addr::new(10, 203, 255, 254));
        assert!(link_net(pool, 16384).is_none());
        assert_eq!(link_index_of(pool, last.host), Some(16383));
        assert_eq!(link_index_of(pool, last.ns), None);
    }

    #[test]
    fn names_fit_the_kernel() {
        let id = "0f8e3c2a-1b2c-4d5e-8f90-123456789abc";
        let name = host_veth_name(id);
        assert!(name.starts_with("dkv") && name.len() == 15, "{name}");
        assert_ne!(name, host_veth_name("0f8e3c2a-1b2c-4d5e-8f90-123456789abd"));
        assert_eq!(netns_name(id), format!("deskd-{id}"));
    }
}
