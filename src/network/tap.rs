//! Opening the computer's TAP device. The daemon opens it inside the computer's namespace and
//! keeps the descriptor; the VMM inherits a copy (`TapSource::Fd`) and never needs to see the
//! namespace. The device is not persistent: it disappears when the last descriptor closes.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetworkError;

/// `_IOW('T', 202, int)` from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union unused).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TAP `name` in the calling thread's namespace. Flags: no packet-info header, and a
/// virtio-net header on every frame (IFF_VNET_HDR, as Firecracker and Cloud Hypervisor open
/// theirs) so the VMM's device can pass checksum and segmentation offloads through; the VMM
/// sets the header size and offloads on its copy (TUNSETVNETHDRSZ, TUNSETOFFLOAD).
pub fn open(name: &str) -> Result<OwnedFd, NetworkError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetworkError::Tap(format!("bad TAP name {name:?}")));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| {
            NetworkError::Tap(format!(
                "cannot open /dev/net/tun: {e} (load the tun module, run deskd as root)"
            ))
        })?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` (name then flags, 40 bytes, which IfReq matches in
    // layout and size) from the pointer, which stays valid for the call; the fd is ours and open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(NetworkError::Tap(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}
