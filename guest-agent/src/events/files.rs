//! `file_change`: inotify on the user's Desktop and Downloads folders. A folder that does not
//! exist yet is watched from the moment it appears (checked every few seconds).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use super::EventHub;
use crate::protocol::{EventData, FileAction, FileChangeData};

const RETRY: Duration = Duration::from_secs(3);

/// Lets tokio poll the inotify descriptor.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn action_of(mask: AddWatchFlags) -> Option<FileAction> {
    if mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        Some(FileAction::Created)
    } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
        Some(FileAction::Deleted)
    } else if mask.intersects(AddWatchFlags::IN_CLOSE_WRITE) {
        Some(FileAction::Modified)
    } else {
        None
    }
}

pub fn start(hub: EventHub, dirs: Vec<PathBuf>) {
    tokio::spawn(async move {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("inotify unavailable ({e}); no file_change events");
                return;
            }
        };
        // SAFETY: the Inotify owns its descriptor and keeps it open for as long as the AsyncFd
        // (which owns the Inotify) exists.
        let fd = match unsafe { AsyncFd::register(Watched(inotify)) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("inotify not pollable ({e}); no file_change events");
                return;
            }
        };
        let flags = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE_SELF;
        let mut watches: HashMap<WatchDescriptor, PathBuf> = HashMap::new();
        loop {
            for d in &dirs {
                if !watches.values().any(|w| w == d) && d.is_dir() {
                    match fd.get_ref().0.add_watch(d, flags) {
                        Ok(wd) => {
                            watches.insert(wd, d.clone());
                        }
                        Err(e) => tracing::debug!("cannot watch {}: {e}", d.display()),
                    }
                }
            }
            let ready = tokio::time::timeout(RETRY, fd.readable()).await;
            let Ok(Ok(mut guard)) = ready else {
                continue;
            };
            let events = match guard.try_io(|i| i.get_ref().0.read_events().map_err(Into::into)) {
                Ok(Ok(ev)) => ev,
                Ok(Err(_)) | Err(_) => continue,
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_IGNORED)
                    || ev.mask.contains(AddWatchFlags::IN_DELETE_SELF)
                {
                    // The folder itself went away; watch it again if it comes back.
                    watches.remove(&ev.wd);
                    continue;
                }
                let (Some(dir), Some(name), Some(action)) =
                    (watches.get(&ev.wd), ev.name.as_ref(), action_of(ev.mask))
                else {
                    continue;
                };
                let path = dir.join(name);
                hub.emit(EventData::FileChange(FileChangeData {
                    path: path.to_string_lossy().into_owned(),
                    action,
                }));
            }
        }
    });
}
