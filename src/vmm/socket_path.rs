//! Taking a Unix socket path to listen on: a stale socket file (its VMM is gone) is replaced; a
//! live one (something accepts on it, or its backlog is full) is another VMM's and is refused;
//! anything that is not a socket is never touched. Used by the vsock device and the control socket.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Why a socket path cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0} is in use by another process (it accepts connections); pick another path or stop that VM")]
    InUse(PathBuf),
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
}

/// Makes `path` free to bind, or says why it is not.
pub fn claim(path: &Path) -> Result<(), SocketPathError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SocketPathError::NotASocket(path.to_path_buf()));
    }
    // Never a blocking connect: a listener whose backlog is full would hold us forever.
    match crate::vmm::devices::virtio::vsock::host::connect_nonblocking(path) {
        Ok(_) => return Err(SocketPathError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(SocketPathError::InUse(path.to_path_buf()))
        }
        Err(_) => {}
    }
    std::fs::remove_file(path).map_err(|source| SocketPathError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sockets_go_live_ones_and_files_stay() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.sock");
        assert!(claim(&path).is_ok(), "nothing there");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(claim(&path), Err(SocketPathError::InUse(_))));
        drop(listener);
        claim(&path).unwrap();
        assert!(!path.exists(), "the stale socket was removed");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(claim(&path), Err(SocketPathError::NotASocket(_))));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
