//! Host-side Unix socket plumbing of the hybrid vsock model: the `CONNECT <port>` line host clients
//! send, and connecting to `<path>_<port>` for the guest without ever blocking the device thread.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to a Unix stream socket without ever blocking: a listener whose backlog is full
/// answers EAGAIN (treated like "nobody listens") instead of stalling the device thread.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (the newline already stripped; a trailing `\r` is tolerated).
pub fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "line is not UTF-8")?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or("line does not start with `CONNECT `")?;
    port.trim()
        .parse::<u32>()
        .map_err(|_| "port is not a number")
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT 99999999999").is_err());
        assert!(parse_connect(b"HELLO 5").is_err());
        assert!(parse_connect(&[0xff, 0xfe]).is_err());
    }
}
