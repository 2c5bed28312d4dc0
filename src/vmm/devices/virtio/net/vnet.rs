//! The virtio-net header in front of every frame (virtio 1.2 5.1.6), the features this device
//! offers, and what the guest's accepted features allow in a header each way.
//!
//! The TAP device is opened with `IFF_VNET_HDR` and a header size of [`HDR_LEN`], so the same
//! header travels unchanged between the guest's buffers and the TAP; the device only checks it
//! against the negotiated features and fills in `num_buffers` on receive.

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;

/// `struct virtio_net_hdr_v1`: with `VIRTIO_F_VERSION_1` (always, see the transport) the header
/// has `num_buffers` whether or not mergeable buffers were negotiated.
pub const HDR_LEN: usize = 12;
/// Longest frame the device moves: a 64 KiB IP packet (TSO) behind an Ethernet and a VLAN
/// header. Bigger ones are dropped.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// A frame with its header.
pub const MAX_BUF_LEN: usize = HDR_LEN + MAX_FRAME_LEN;

const fn bit(feature: u32) -> u64 {
    1u64 << feature
}

/// What the device offers. Offloads are the ones a TAP does for us without extra code:
/// checksums both ways and TCP segmentation both ways (TSO4/6). Not offered: UFO (Linux guests
/// stopped producing it in 4.14, and the TAP would have to be trusted with it), ECN with TSO,
/// USO, the control queue and multiqueue.
pub const OFFERED_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6);

pub fn has(features: u64, feature: u32) -> bool {
    features & bit(feature) != 0
}

/// The `TUNSETOFFLOAD` flags for `acked` guest features: what the TAP may hand us for the guest
/// (partial checksums, TCP super-frames). TSO needs the checksum offload too, in the spec
/// (5.1.3.1) and in the TAP driver, so a driver that took TSO without GUEST_CSUM gets neither.
pub fn tap_offload(acked: u64) -> u32 {
    if !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(acked, VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(acked, VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// Which way a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest to TAP: the HOST_* features and CSUM apply.
    Tx,
    /// TAP to guest: the GUEST_* features apply.
    Rx,
}

/// The fields of a header the device looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub gso_type: u8,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HDR_LEN {
            return None;
        }
        Some(Header {
            flags: bytes[0],
            gso_type: bytes[1],
        })
    }

    /// Whether `acked` features allow this header going `direction`; the reason if not. A header
    /// asking for an offload nobody agreed on is refused rather than passed on: the TAP would
    /// accept it, but the other side never promised to handle it.
    pub fn check(&self, acked: u64, direction: Direction) -> Result<(), &'static str> {
        let (csum, tso4, tso6) = match direction {
            Direction::Tx => (
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
            ),
            Direction::Rx => (
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
            ),
        };
        if u32::from(self.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(acked, csum) {
            return Err("a partial checksum without the checksum offload");
        }
        match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV4 if has(acked, tso4) => Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV6 if has(acked, tso6) => Ok(()),
            _ => Err("a segmentation offload that was not negotiated"),
        }
    }
}

/// Writes `num_buffers` into a header at the start of `frame` (at least [`HDR_LEN`] bytes).
pub fn set_num_buffers(frame: &mut [u8], count: u16) {
    frame[10..12].copy_from_slice(&count.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_what_the_guest_accepted() {
        assert_eq!(tap_offload(0), 0);
        assert_eq!(
            tap_offload(OFFERED_FEATURES),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        assert_eq!(tap_offload(bit(VIRTIO_NET_F_GUEST_CSUM)), libc::TUN_F_CSUM);
        // TSO without the checksum offload is not a valid combination: nothing is offloaded.
        assert_eq!(tap_offload(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        // Host-side features (what the guest sends) do not change what the TAP hands over.
        assert_eq!(
            tap_offload(bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4)),
            0
        );
        assert_eq!(OFFERED_FEATURES & bit(VIRTIO_NET_F_GUEST_UFO), 0);
        assert_eq!(OFFERED_FEATURES & bit(VIRTIO_NET_F_CTRL_VQ), 0);
    }

    #[test]
    fn headers_are_checked_against_the_direction_s_features() {
        let plain = Header {
            flags: 0,
            gso_type: 0,
        };
        assert!(plain.check(0, Direction::Tx).is_ok());
        let csum = Header {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: 0,
        };
        assert!(csum.check(0, Direction::Tx).is_err());
        assert!(csum.check(bit(VIRTIO_NET_F_CSUM), Direction::Tx).is_ok());
        assert!(csum.check(bit(VIRTIO_NET_F_CSUM), Direction::Rx).is_err());
        let tso4 = Header {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        };
        let host = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4);
        assert!(tso4.check(host, Direction::Tx).is_ok());
        assert!(tso4.check(host, Direction::Rx).is_err());
        let tso6 = Header {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
            ..tso4
        };
        assert!(tso6.check(host, Direction::Tx).is_err());
        for gso in [
            VIRTIO_NET_HDR_GSO_UDP,
            VIRTIO_NET_HDR_GSO_UDP_L4,
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            77,
        ] {
            let h = Header {
                gso_type: gso as u8,
                ..tso4
            };
            assert!(h.check(OFFERED_FEATURES, Direction::Tx).is_err(), "{gso}");
        }
        assert_eq!(Header::parse(&[0; 11]), None);
        let mut frame = [0u8; 12];
        set_num_buffers(&mut frame, 0x0102);
        assert_eq!(&frame[10..], &[2, 1]);
    }
}
