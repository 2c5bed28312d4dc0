//! The host end of a network card: a TAP device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! (one frame per read or write, each behind a virtio-net header), non-blocking so the device's
//! epoll worker never sleeps in it. The [`NetBackend`] trait is what the device needs of it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::vmm::config::TapSource;

use super::vnet::HDR_LEN;

/// Why a TAP device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and is the VMM root or CAP_NET_ADMIN?)")]
    OpenTun(io::Error),
    #[error("cannot attach to the TAP device {name:?}: {source} (create it with `ip tuntap add {name} mode tap vnet_hdr`, owned by the VMM's user, or let the VMM create it as root)")]
    Attach { name: String, source: io::Error },
    #[error("descriptor {fd} given for a TAP device is not open: {source}")]
    BadFd { fd: i32, source: io::Error },
    #[error("descriptor {fd} is not a TAP device opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (TUNGETIFF: {why}); open /dev/net/tun with those flags before passing it")]
    NotTap { fd: i32, why: String },
    #[error("cannot configure the TAP device {name}: {what}: {source}")]
    Configure {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// What the network device needs of its host end. Every call is non-blocking.
pub trait NetBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one frame with its virtio-net header into `buf`; `WouldBlock` when none waits.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame with its virtio-net header.
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
    /// Tells the host end which offloads the guest accepts (`TUN_F_*`).
    fn set_offload(&self, flags: u32) -> io::Result<()>;
    /// The descriptor the worker waits on for frames to read.
    fn raw_fd(&self) -> RawFd;
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ifreq_with_name(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of integers and addresses), for
    // which all zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // The config layer limits names to 15 bytes, so the terminating NUL stays.
    for (dst, src) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    ifr
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

impl Tap {
    /// Opens the TAP `source` names, or takes over the inherited descriptor it gives (which
    /// this process then owns and closes), and sets it up for the device: non-blocking,
    /// close-on-exec, a [`HDR_LEN`]-byte header and no offloads until a guest accepts some.
    pub fn open(source: &TapSource) -> Result<Tap, TapError> {
        let tap = match source {
            TapSource::Name(name) => Self::open_named(name)?,
            TapSource::Fd(fd) => Self::from_fd(*fd)?,
        };
        tap.configure()?;
        Ok(tap)
    }

    fn open_named(name: &str) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `ifr` is and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: ifreq_name(&ifr),
        })
    }

    fn from_fd(fd: i32) -> Result<Tap, TapError> {
        // SAFETY: F_GETFD only reads the descriptor's flags; an unknown fd gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::BadFd {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is open (checked above) and was handed to this process for this card
        // alone (the configuration names each descriptor once), so owning it here, and closing
        // it when the device goes, takes it from nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut ifr = ifreq_with_name("");
        // SAFETY: TUNGETIFF writes one ifreq, which `ifr` is and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        if rc < 0 {
            return Err(TapError::NotTap {
                fd,
                why: io::Error::last_os_error().to_string(),
            });
        }
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
        if flags & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::NotTap {
                fd,
                why: format!("its flags are {flags:#x}"),
            });
        }
        Ok(Tap {
            file,
            name: ifreq_name(&ifr),
        })
    }

    fn configure(&self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        let fail = |what: &'static str| TapError::Configure {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        };
        // SAFETY: F_GETFL/F_SETFL and F_SETFD only change this descriptor's flags.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(fail("make it non-blocking"));
            }
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return Err(fail("set close-on-exec"));
            }
        }
        let size = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `size` is and outlives the call.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(fail("set the virtio-net header size (TUNSETVNETHDRSZ)"));
        }
        self.set_offload(0).map_err(|source| TapError::Configure {
            name: self.name.clone(),
            what: "clear the offloads (TUNSETOFFLOAD)",
            source,
        })
    }

    /// The interface name (as the kernel reports it).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value and touches no memory of ours.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
