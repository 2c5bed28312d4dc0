//! Links, addresses and routes over rtnetlink: one netlink connection per namespace, no `ip`
//! process. A connection works in the namespace of the thread that opened its socket.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetworkError;

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> NetworkError {
    NetworkError::Netlink(format!("{what}: {e}"))
}

/// An rtnetlink connection to the calling thread's current namespace. Needs a tokio runtime
/// (the connection task is spawned on the current one).
pub fn connect() -> Result<Links, NetworkError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| err("cannot open an rtnetlink socket", e))?;
    tokio::spawn(conn);
    Ok(Links { handle })
}

/// Link operations in one namespace.
pub struct Links {
    handle: Handle,
}

impl Links {
    /// The index of link `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        let mut s = self.handle.link().get().match_name(name).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(err(format!("cannot look up link {name}"), e)),
        }
    }

    async fn need_index(&self, name: &str) -> Result<u32, NetworkError> {
        self.index(name)
            .await?
            .ok_or_else(|| NetworkError::Netlink(format!("link {name} is missing")))
    }

    /// Every link whose name starts with `prefix`, as (index, name).
    pub async fn with_prefix(&self, prefix: &str) -> Result<Vec<(u32, String)>, NetworkError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| err("cannot list links", e))?
        {
            for a in &m.attributes {
                if let LinkAttribute::IfName(n) = a {
                    if n.starts_with(prefix) {
                        out.push((m.header.index, n.clone()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sets link `name` up.
    pub async fn up(&self, name: &str) -> Result<(), NetworkError> {
        let index = self.need_index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| err(format!("cannot set {name} up"), e))
    }

    /// Sets link `name`'s hardware address.
    pub async fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<(), NetworkError> {
        let index = self.need_index(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(format!("cannot set the MAC of {name}"), e))
    }

    /// Adds `addr/prefix` to link `name`.
    pub async fn add_address(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        let index = self.need_index(name).await?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
            .map_err(|e| err(format!("cannot add {addr}/{prefix} to {name}"), e))
    }

    /// The first IPv4 address of link `name`.
    pub async fn first_ipv4(&self, name: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(None);
        };
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| err(format!("cannot list addresses of {name}"), e))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    return Ok(Some(*ip));
                }
            }
        }
        Ok(None)
    }

    /// The IPv4 networks of every address on links other than loopback and those whose name
    /// starts with `skip` (the host's LANs, as seen from its own addresses).
    pub async fn ipv4_networks(&self, skip: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetworkError> {
        let mut names = std::collections::HashMap::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| err("cannot list links", e))?
        {
            for a in &m.attributes {
                if let LinkAttribute::IfName(n) = a {
                    names.insert(m.header.index, n.clone());
                }
            }
        }
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| err("cannot list addresses", e))?
        {
            let name = names.get(&m.header.index).map(String::as_str).unwrap_or("");
            if name == "lo" || name.starts_with(skip) {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// The default route via `gateway`.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetworkError> {
        self.handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(format!("cannot add the default route via {gateway}"), e))
    }

    /// A veth pair: `name` here, `peer` created directly in the namespace `peer_ns` refers to (one
    /// request; no move afterwards, no name clash in between).
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &OwnedFd,
    ) -> Result<(), NetworkError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| err(format!("cannot create veth {name}/{peer}"), e))
    }

    /// Deletes link `name`; absent is fine.
    pub async fn delete(&self, name: &str) -> Result<(), NetworkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(err(format!("cannot delete link {name}"), e)),
        }
    }
}
