//! Changes to a running VM through its VMM's control socket (a live resize): the network card's
//! bandwidth limit, and the root disk's size. The guest's side of a disk growth (its root
//! filesystem) is the agent's: see `super::disk_growth`.

use std::path::Path;
use std::time::Duration;

use crate::vmm::control::protocol::ControlRequest;

use super::backend::BackendError;
use super::saved_vm::control_request;

/// Neither request makes the VM do much work (a sparse file is extended in one call).
const DEADLINE: Duration = Duration::from_secs(10);

/// The computer's root disk: the first (and only) disk of its VM (`super::vmm_config`).
const ROOT_DISK: usize = 0;

/// Sets the bandwidth limit of the VM's network card (card 0) live, in megabits per second.
pub fn set_net_limit(dir: &Path, mbps: u32) -> Result<(), BackendError> {
    let request = ControlRequest::SetNetLimit {
        card: 0,
        limit: crate::vmm::config::NetRateLimit::from_megabits_per_sec(mbps),
    };
    control_request(dir, &request, DEADLINE)
        .map(|_| ())
        .map_err(|e| {
            BackendError::NotReady(format!(
                "the VM's network card did not take the limit ({e}); a computer without a \
                 network (guest networking off on this host) has no card to limit"
            ))
        })
}

/// Grows the VM's root disk to `gb` GiB live (the guest is told by an interrupt and sees the
/// new size at once); returns the disk's size in bytes as the VMM answered it.
pub fn grow_disk(dir: &Path, gb: u32) -> Result<u64, BackendError> {
    let request = ControlRequest::GrowDisk {
        disk: ROOT_DISK,
        size_bytes: u64::from(gb) << 30,
    };
    let answer = control_request(dir, &request, DEADLINE)
        .map_err(|e| BackendError::NotReady(format!("the VM's disk was not grown: {e}")))?;
    answer.grown.map(|g| g.disk_bytes).ok_or_else(|| {
        BackendError::Process(
            "the VMM's answer to grow-disk carried no size (is it an older deskd vmm?)".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::control::{ControlServer, Controllable, SnapshotDone, VmStatus};
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A VMM's control side with one disk of `size` bytes that grows as asked.
    struct OneDisk(Mutex<u64>);
    impl Controllable for OneDisk {
        fn status(&self) -> VmStatus {
            unimplemented!("not asked")
        }
        fn pause(&self) -> Result<(), String> {
            Err("not asked".into())
        }
        fn resume(&self) {}
        fn snapshot(&self, _: &Path) -> Result<SnapshotDone, String> {
            Err("not asked".into())
        }
        fn set_net_limit(
            &self,
            _: usize,
            _: crate::vmm::config::NetRateLimit,
        ) -> Result<(), String> {
            Err("no network card".into())
        }
        fn grow_disk(&self, disk: usize, size_bytes: u64) -> Result<u64, String> {
            let mut size = self.0.lock().unwrap();
            if disk != 0 {
                return Err(format!("no disk {disk}"));
            }
            if size_bytes < *size {
                return Err("a disk can only grow".into());
            }
            *size = size_bytes;
            Ok(*size)
        }
        fn shutdown(&self) {}
        fn force_stop(&self) {}
    }

    #[test]
    fn the_root_disk_is_grown_through_the_control_socket_and_a_refusal_says_why() {
        let d = tempfile::tempdir().unwrap();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let _server = ControlServer::start(
            &d.path().join(crate::computers::files::CONTROL),
            Arc::new(OneDisk(Mutex::new(8 << 30))),
            wake,
        )
        .unwrap();
        assert_eq!(grow_disk(d.path(), 12).unwrap(), 12 << 30);
        let err = grow_disk(d.path(), 10).unwrap_err().to_string();
        assert!(
            err.contains("was not grown") && err.contains("only grow"),
            "{err}"
        );
        let err = set_net_limit(d.path(), 10).unwrap_err().to_string();
        assert!(err.contains("no network card"), "{err}");
    }

    #[test]
    fn a_vm_that_is_not_there_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let err = grow_disk(d.path(), 12).unwrap_err().to_string();
        assert!(err.contains("cannot reach"), "{err}");
    }
}
