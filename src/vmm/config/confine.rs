//! The confinement settings of one VMM (what `crate::vmm::confine` applies): the unprivileged
//! user it runs as and its resource limits. The daemon gives each running VMM its own uid/gid
//! (from [`FIRST_POOL_ID`] up) and writes them here (`vmm.json`) or passes them on the command
//! line (`--confine-uid`/`--confine-gid`, for a restore). No settings: the VMM is not confined.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// First uid/gid of the daemon's pool of VMM identities by default: VMM N runs as 70000+N
/// (`deskd serve --vmm-uid-base` moves it). Chosen inside the range systemd leaves unused
/// (65536–524287, <https://systemd.io/UIDS-GIDS/>): clear of regular users (1000–60000),
/// systemd-homed (60001–60513), DynamicUser= (61184–65519), `nobody` (65534), and of the
/// container ranges (524288 and up); and below 100000, where `useradd` starts the
/// subordinate ids of /etc/subuid and /etc/subgid that rootless containers map.
pub const FIRST_POOL_ID: u32 = 70_000;

/// Why confinement settings were rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfineConfigError {
    #[error(
        "confinement to uid {uid} gid {gid} keeps root's identity; give an unprivileged uid and \
         gid (the daemon uses {FIRST_POOL_ID} and up by default), or pass --no-confine"
    )]
    Root { uid: u32, gid: u32 },
    #[error("--confine-uid and --confine-gid go together: give both or neither")]
    Half,
    #[error("confine.max_open_files must be at least {min}, got {0}", min = MIN_OPEN_FILES)]
    TooFewFiles(u64),
}

/// Fewest descriptors a confined VMM may be limited to (its devices alone take dozens).
pub const MIN_OPEN_FILES: u64 = 64;

/// A confined VMM's identity and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfineConfig {
    /// The user the VMM runs as once confined (never 0).
    pub uid: u32,
    /// Its group (never 0); it has no supplementary groups.
    pub gid: u32,
    /// `RLIMIT_NOFILE`; by default enough for every vsock connection and device.
    #[serde(default)]
    pub max_open_files: Option<u64>,
    /// `RLIMIT_FSIZE` in bytes; by default the guest's RAM (a snapshot's memory file is that
    /// long) plus its disks plus some slack.
    #[serde(default)]
    pub max_file_size_bytes: Option<u64>,
}

impl ConfineConfig {
    /// Confinement as `uid`/`gid` with the default limits.
    pub fn new(uid: u32, gid: u32) -> ConfineConfig {
        ConfineConfig {
            uid,
            gid,
            max_open_files: None,
            max_file_size_bytes: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfineConfigError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(ConfineConfigError::Root {
                uid: self.uid,
                gid: self.gid,
            });
        }
        if let Some(n) = self.max_open_files.filter(|n| *n < MIN_OPEN_FILES) {
            return Err(ConfineConfigError::TooFewFiles(n));
        }
        Ok(())
    }
}

/// Applies the command line's confinement options to `current`: `--no-confine` turns it off,
/// `--confine-uid`/`--confine-gid` (both) set the identity (keeping configured limits).
pub fn from_args(
    current: Option<ConfineConfig>,
    no_confine: bool,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<Option<ConfineConfig>, ConfineConfigError> {
    if no_confine {
        return Ok(None);
    }
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok(Some(match current {
            Some(c) => ConfineConfig { uid, gid, ..c },
            None => ConfineConfig::new(uid, gid),
        })),
        (None, None) => Ok(current),
        _ => Err(ConfineConfigError::Half),
    }
}

/// `VmConfig::confine` is decided anew at each start (the daemon hands out identities to the
/// VMMs running now): it is kept in the JSON config file, but never in a snapshot's state file
/// (postcard, which is not human-readable), so a restored VM never takes on an identity given to
/// another VMM since, and the snapshot format stays what it was.
pub(crate) mod runtime_only {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<ConfineConfig>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            value.serialize(serializer)
        } else {
            serializer.serialize_unit()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<ConfineConfig>, D::Error> {
        if deserializer.is_human_readable() {
            Option::<ConfineConfig>::deserialize(deserializer)
        } else {
            <()>::deserialize(deserializer).map(|()| None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_tiny_limits_are_refused() {
        assert!(ConfineConfig::new(70_000, 70_000).validate().is_ok());
        let err = ConfineConfig::new(0, 70_000).validate().unwrap_err();
        assert!(err.to_string().contains("--no-confine"), "{err}");
        assert!(ConfineConfig::new(70_000, 0).validate().is_err());
        let mut c = ConfineConfig::new(70_001, 70_001);
        c.max_open_files = Some(3);
        assert!(matches!(
            c.validate(),
            Err(ConfineConfigError::TooFewFiles(3))
        ));
    }

    #[test]
    fn arguments_override_or_turn_it_off() {
        let mut configured = ConfineConfig::new(70_000, 70_000);
        configured.max_open_files = Some(500);
        let set = from_args(Some(configured.clone()), false, Some(64_002), Some(64_003))
            .unwrap()
            .unwrap();
        assert_eq!(
            (set.uid, set.gid, set.max_open_files),
            (64_002, 64_003, Some(500))
        );
        assert_eq!(
            from_args(Some(configured.clone()), false, None, None).unwrap(),
            Some(configured.clone())
        );
        assert_eq!(
            from_args(Some(configured), true, Some(1), Some(1)).unwrap(),
            None
        );
        assert!(matches!(
            from_args(None, false, Some(1), None),
            Err(ConfineConfigError::Half)
        ));
    }
}
