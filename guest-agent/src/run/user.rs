//! The desktop user that commands and terminals run as, and the environment they get.

use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

use super::RunError;

#[derive(Debug, Clone)]
pub struct DesktopUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: PathBuf,
    pub shell: PathBuf,
    pub display: String,
    /// Variables copied from the agent's own environment when set (locale, X authority, PATH).
    inherited: Vec<(String, String)>,
    /// The user's runtime directory (`/run/user/UID`, made by systemd-logind for a lingering or
    /// logged-in user) when it exists: where the session's PulseAudio and D-Bus listen, so that
    /// programs started through the agent play into the desktop's speaker.
    runtime_dir: Option<PathBuf>,
}

/// Credentials to drop to in a forked child (computed beforehand: nothing here allocates).
#[derive(Debug, Clone)]
pub struct Switch {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Switch {
    /// Only async-signal-safe system calls: safe in a `pre_exec` hook.
    pub fn apply(&self) -> std::io::Result<()> {
        nix::unistd::setgroups(&self.groups)?;
        nix::unistd::setgid(self.gid)?;
        nix::unistd::setuid(self.uid)?;
        Ok(())
    }
}

impl DesktopUser {
    /// Looks up `name`, or the user the agent runs as when `None`. `home` overrides the home
    /// directory (tests use a scratch directory).
    pub fn resolve(
        name: Option<&str>,
        home: Option<PathBuf>,
        display: &str,
    ) -> Result<DesktopUser, RunError> {
        let user = match name {
            Some(n) => User::from_name(n)
                .map_err(|e| RunError::UserLookup(e.to_string()))?
                .ok_or_else(|| RunError::NoSuchUser(n.to_string()))?,
            None => User::from_uid(Uid::current())
                .map_err(|e| RunError::UserLookup(e.to_string()))?
                .ok_or_else(|| {
                    RunError::UserLookup("the agent's own uid has no passwd entry".into())
                })?,
        };
        let cname = std::ffi::CString::new(user.name.clone())
            .map_err(|_| RunError::UserLookup("user name contains NUL".into()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| RunError::UserLookup(format!("groups of {}: {e}", user.name)))?;
        let inherited = ["PATH", "LANG", "LC_ALL", "XAUTHORITY", "TZ"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        let shell = if user.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/bash")
        } else {
            user.shell.clone()
        };
        let runtime_dir =
            Some(PathBuf::from(format!("/run/user/{}", user.uid))).filter(|d| d.is_dir());
        Ok(DesktopUser {
            runtime_dir,
            home: home.unwrap_or(user.dir.clone()),
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups,
            shell,
            display: display.to_string(),
            inherited,
        })
    }

    /// The credential switch a child needs, or `None` when it already runs as this user.
    pub fn switch(&self) -> Option<Switch> {
        if Uid::current() == self.uid {
            return None;
        }
        Some(Switch {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        })
    }

    /// A clean login-like environment.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOME".to_string(), self.home.to_string_lossy().into_owned()),
            ("USER".to_string(), self.name.clone()),
            ("LOGNAME".to_string(), self.name.clone()),
            (
                "SHELL".to_string(),
                self.shell.to_string_lossy().into_owned(),
            ),
            ("DISPLAY".to_string(), self.display.clone()),
        ];
        env.extend(self.inherited.iter().cloned());
        if let Some(dir) = &self.runtime_dir {
            env.push(("XDG_RUNTIME_DIR".into(), dir.to_string_lossy().into_owned()));
            let bus = dir.join("bus");
            if bus.exists() {
                env.push((
                    "DBUS_SESSION_BUS_ADDRESS".into(),
                    format!("unix:path={}", bus.display()),
                ));
            }
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".into(),
            ));
        }
        if !env.iter().any(|(k, _)| k == "LANG") {
            env.push(("LANG".into(), "C.UTF-8".into()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_find_the_users_session_services() {
        let u = DesktopUser::resolve(None, None, ":9").unwrap();
        let env = u.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("DISPLAY").as_deref(), Some(":9"));
        let dir = format!("/run/user/{}", Uid::current());
        if std::path::Path::new(&dir).is_dir() {
            assert_eq!(get("XDG_RUNTIME_DIR"), Some(dir));
        } else {
            assert_eq!(
                get("XDG_RUNTIME_DIR"),
                None,
                "no runtime directory, none named"
            );
        }
    }
}
