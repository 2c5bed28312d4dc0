//! The identity step: from root to the VMM's own unprivileged user, with nothing left to regain
//! root by. No supplementary groups, the gid then the uid set (real, effective, saved), every
//! capability set emptied (bounding and ambient first, while `CAP_SETPCAP` still allows it, then
//! effective, permitted and inheritable), `PR_SET_NO_NEW_PRIVS` (no setuid binary or file
//! capability can add privilege, and seccomp filters need no privilege), and not dumpable (no
//! core file, `/proc/PID` files stay root's, a same-uid process cannot ptrace it).
//!
//! Capabilities are per thread: this runs while the process has one thread, and every thread
//! started later inherits the empty sets.

/// Why the identity could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot {what}: {source} (dropping to the VMM's own user needs root; or pass --no-confine)"
    )]
    Sys {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot drop the {set} capabilities: {reason}")]
    Caps { set: &'static str, reason: String },
    #[error("the identity did not stick: {0}; refusing to run a guest with it")]
    Check(String),
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), IdentityError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(IdentityError::Sys {
            what,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Becomes `uid`/`gid` with no capabilities, no new privileges and no core dumps.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), IdentityError> {
    // SAFETY: setgroups with a count of 0 reads no memory.
    check("clear the supplementary groups", unsafe {
        libc::setgroups(0, std::ptr::null())
    })?;
    clear_caps(caps::CapSet::Bounding, "bounding")?;
    clear_caps(caps::CapSet::Ambient, "ambient")?;
    // SAFETY: plain integer arguments. glibc applies them to every thread of the process.
    check("set the group id", unsafe {
        libc::setresgid(gid, gid, gid)
    })?;
    // SAFETY: as above. Leaving uid 0 clears the permitted and effective capabilities.
    check("set the user id", unsafe { libc::setresuid(uid, uid, uid) })?;
    for (set, name) in [
        (caps::CapSet::Effective, "effective"),
        (caps::CapSet::Permitted, "permitted"),
        (caps::CapSet::Inheritable, "inheritable"),
    ] {
        clear_caps(set, name)?;
    }
    // SAFETY: prctl with integer arguments only.
    check("set no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    // SAFETY: as above.
    check("make the process not dumpable", unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)
    })?;
    verify(uid, gid)
}

fn clear_caps(set: caps::CapSet, name: &'static str) -> Result<(), IdentityError> {
    caps::clear(None, set).map_err(|e| IdentityError::Caps {
        set: name,
        reason: e.to_string(),
    })
}

/// Reads back what was set, and checks that root cannot be had again.
fn verify(uid: u32, gid: u32) -> Result<(), IdentityError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are to live u32s for the duration of the call.
    check("read the user ids", unsafe {
        libc::getresuid(&mut r, &mut e, &mut s)
    })?;
    if [r, e, s] != [uid; 3] {
        return Err(IdentityError::Check(format!("uids are {r}/{e}/{s}")));
    }
    // SAFETY: as above.
    check("read the group ids", unsafe {
        libc::getresgid(&mut r, &mut e, &mut s)
    })?;
    if [r, e, s] != [gid; 3] {
        return Err(IdentityError::Check(format!("gids are {r}/{e}/{s}")));
    }
    // SAFETY: setuid with an integer; it must fail now.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(IdentityError::Check("setuid(0) still works".into()));
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        match caps::read(None, set) {
            Ok(held) if held.is_empty() => {}
            Ok(held) => {
                return Err(IdentityError::Check(format!(
                    "capabilities {held:?} remain"
                )))
            }
            Err(e) => return Err(IdentityError::Check(e.to_string())),
        }
    }
    Ok(())
}
