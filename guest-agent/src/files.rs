//! Files in and out of the desktop user's home: uploads streamed to `~/Desktop` (owned by the
//! user, never overwriting: the clash rule of `protocol::files`) and reads confined to the home
//! (`..` and symlinks that leave it are refused), and files installed anywhere as root
//! ([`install`]: the launch's `/root/.env` and a template's runtime files).

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::protocol::files::{
    clash_name, sanitize_filename, FileWritten, FilesInstalled, InstallFiles, DESKTOP_DIR,
    MAX_CLASH_TRIES,
};
use crate::run::DesktopUser;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Outside(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the guest's disk is full; free space in the computer or delete files")]
    DiskFull,
    #[error("{0}")]
    Io(String),
}

impl FileError {
    fn io(what: &str, path: &Path, e: std::io::Error) -> FileError {
        if e.raw_os_error() == Some(nix::libc::ENOSPC) {
            return FileError::DiskFull;
        }
        FileError::Io(format!("{what} {}: {e}", path.display()))
    }
}

/// Streams `body` into `~/Desktop/<name>` (or the clash rule's next free name), owned by `user`.
/// The bytes go to a hidden part file first, so nothing half-written carries the name.
pub async fn write(user: &DesktopUser, name: &str, body: Body) -> Result<FileWritten, FileError> {
    match sanitize_filename(name) {
        Ok(clean) if clean == name => {}
        _ => {
            return Err(FileError::BadRequest(format!(
                "name {:?} is not a plain file name; send it as sanitize_filename returns it",
                name.chars().take(60).collect::<String>()
            )))
        }
    }
    let dir = user.home.join(DESKTOP_DIR);
    if !dir.is_dir() {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| FileError::io("cannot create", &dir, e))?;
        chown(&dir, user)?;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let part = dir.join(format!(
        ".deskd-upload-{}-{}.part",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let result = fill(&part, user, body).await;
    let size = match result {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    // A hard link fails when the name is taken, so two uploads never take the same name.
    let mut placed = None;
    for n in 0..MAX_CLASH_TRIES {
        let candidate = clash_name(name, n);
        let target = dir.join(&candidate);
        match std::fs::hard_link(&part, &target) {
            Ok(()) => {
                placed = Some((candidate, target));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(FileError::io("cannot name", &target, e));
            }
        }
    }
    let _ = tokio::fs::remove_file(&part).await;
    let Some((name, path)) = placed else {
        return Err(FileError::BadRequest(format!(
            "{MAX_CLASH_TRIES} files named like {name:?} are on the Desktop already; rename or delete some"
        )));
    };
    Ok(FileWritten {
        success: true,
        name,
        path: path.display().to_string(),
        size_bytes: size,
    })
}

/// How long one file's install may take (a shell, a few coreutils; the rig is slow).
const INSTALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Run as root for each file of [`install`], with the path, mode, owner, group and the parent
/// directories as arguments (never in the text, so no quoting matters) and the content on stdin
/// (never in an argument, which every user of the guest could read in /proc). Missing parents
/// are made owned like the file (a `~/.config` made for `~/.config/app.json` stays the user's);
/// the content goes to a temporary file in the same directory, made 0600 by `mktemp`, and gets
/// its owner and mode before it is renamed over the path, so nobody ever reads it half-written
/// or with looser permissions.
const INSTALL_SCRIPT: &str = r#"set -eu
path=$1 mode=$2 owner=$3 group=$4
shift 4
for d in "$@"; do
  if [ ! -d "$d" ]; then mkdir -m 0755 -- "$d"; chown -- "$owner:$group" "$d"; fi
done
if [ -d "$path" ]; then echo "$path is a directory" >&2; exit 1; fi
dir=${path%/*}
[ -n "$dir" ] || dir=/
tmp=$(mktemp -- "$dir/.deskd-install.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chown -- "$owner:$group" "$tmp"
chmod -- "$mode" "$tmp"
mv -f -- "$tmp" "$path"
trap - EXIT
"#;

/// Writes every file of `req` in order as root (the agent runs as the desktop user, so through
/// `sudo -n`, which the image grants it; directly when the agent is root itself, as in tests).
/// The first failure ends it, naming the file by path; no message carries content.
pub async fn install(req: &InstallFiles) -> Result<FilesInstalled, FileError> {
    req.check().map_err(FileError::BadRequest)?;
    let as_root = nix::unistd::geteuid().is_root();
    let mut paths = Vec::with_capacity(req.files.len());
    for f in &req.files {
        let mut cmd = if as_root {
            tokio::process::Command::new("/bin/sh")
        } else {
            let mut c = tokio::process::Command::new("sudo");
            c.args(["-n", "/bin/sh"]);
            c
        };
        cmd.arg("-c")
            .arg(INSTALL_SCRIPT)
            .arg("deskd-install")
            .args([&f.path, &f.mode, &f.owner, &f.group])
            .args(f.parents())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| FileError::Io(format!("cannot run the installer for {}: {e}", f.path)))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| FileError::Io("the installer has no stdin".into()))?;
        let content = f.content.clone().into_bytes();
        let run = async move {
            // A failed write (the script ended early) shows in its exit status and stderr.
            let _ = stdin.write_all(&content).await;
            drop(stdin);
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(INSTALL_DEADLINE, run)
            .await
            .map_err(|_| {
                FileError::Io(format!(
                    "writing {} took longer than {} s",
                    f.path,
                    INSTALL_DEADLINE.as_secs()
                ))
            })?
            .map_err(|e| FileError::Io(format!("the installer for {} failed: {e}", f.path)))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.trim();
            if why.contains("No space left") {
                return Err(FileError::DiskFull);
            }
            return Err(FileError::Io(format!(
                "cannot write {} ({}): {}",
                f.path,
                out.status,
                if why.is_empty() { "no message" } else { why }
            )));
        }
        paths.push(f.path.clone());
    }
    Ok(FilesInstalled {
        success: true,
        paths,
    })
}

async fn fill(part: &Path, user: &DesktopUser, mut body: Body) -> Result<u64, FileError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await
        .map_err(|e| FileError::io("cannot create", part, e))?;
    chown(part, user)?;
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            FileError::BadRequest(format!("the upload stopped before its end: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data)
                .await
                .map_err(|e| FileError::io("cannot write", part, e))?;
            size += data.len() as u64;
        }
    }
    file.flush()
        .await
        .map_err(|e| FileError::io("cannot write", part, e))?;
    Ok(size)
}

fn chown(path: &Path, user: &DesktopUser) -> Result<(), FileError> {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
        FileError::Io(format!(
            "cannot give {} to {}: {e}",
            path.display(),
            user.name
        ))
    })
}

/// `asked` (absolute, relative to `home`, or `~/...`) as a path without `.` and `..`, or a 403
/// when those lead out of `home`. No file system access: symlinks are checked by [`resolve`].
fn lexical(home: &Path, asked: &str) -> Result<PathBuf, FileError> {
    let joined = if asked == "~" {
        home.to_path_buf()
    } else if let Some(rest) = asked.strip_prefix("~/") {
        home.join(rest)
    } else {
        home.join(asked) // An absolute `asked` replaces `home`.
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if !out.starts_with(home) {
        return Err(outside(home, asked));
    }
    Ok(out)
}

fn outside(home: &Path, asked: &str) -> FileError {
    FileError::Outside(format!(
        "{:?} is outside {}; only files below it can be read",
        asked.chars().take(200).collect::<String>(),
        home.display()
    ))
}

/// The real path of the regular file `asked` names below `home`, symlinks resolved.
pub fn resolve(home: &Path, asked: &str) -> Result<PathBuf, FileError> {
    if asked.trim().is_empty() {
        return Err(FileError::BadRequest(
            "path is empty; name a file below the home directory".into(),
        ));
    }
    let home = home
        .canonicalize()
        .map_err(|e| FileError::io("cannot resolve", home, e))?;
    let path = lexical(&home, asked)?;
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::NotFound(format!("no file at {asked:?}")))
        }
        Err(e) => return Err(FileError::io("cannot resolve", &path, e)),
    };
    if !real.starts_with(&home) {
        return Err(outside(&home, asked));
    }
    if !real.is_file() {
        return Err(FileError::BadRequest(format!(
            "{asked:?} is not a regular file (a directory?); export one file at a time"
        )));
    }
    Ok(real)
}

/// Opens the file `asked` names below `home`: the open file and its size.
pub async fn open(home: &Path, asked: &str) -> Result<(tokio::fs::File, u64), FileError> {
    let real = resolve(home, asked)?;
    // The last component cannot have become a symlink since it was resolved.
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&real)
        .await
        .map_err(|e| FileError::io("cannot open", &real, e))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| FileError::io("cannot stat", &real, e))?
        .len();
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_home() {
        let dir = tempfile_dir();
        let home = dir.join("home");
        std::fs::create_dir_all(home.join("Desktop")).unwrap();
        std::fs::write(home.join("Desktop/a.txt"), b"a").unwrap();
        std::fs::write(dir.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), home.join("Desktop/link")).unwrap();
        std::os::unix::fs::symlink(&dir, home.join("Desktop/up")).unwrap();
        std::os::unix::fs::symlink(home.join("Desktop/a.txt"), home.join("inside")).unwrap();
        let real_a = home.join("Desktop/a.txt").canonicalize().unwrap();
        let abs = home.join("Desktop/a.txt").display().to_string();
        for ok in [
            "Desktop/a.txt",
            "~/Desktop/a.txt",
            abs.as_str(),
            "inside",
            "./Desktop/../Desktop/a.txt",
        ] {
            assert_eq!(resolve(&home, ok).unwrap(), real_a, "{ok}");
        }
        for out in [
            "../secret",
            "/etc/passwd",
            "Desktop/link",
            "Desktop/up/secret",
            "~/../secret",
            "/etc/nonexistent",
            "../../../../etc/shadow",
        ] {
            assert!(
                matches!(resolve(&home, out), Err(FileError::Outside(_))),
                "{out}"
            );
        }
        assert!(matches!(
            resolve(&home, "Desktop/none"),
            Err(FileError::NotFound(_))
        ));
        assert!(matches!(
            resolve(&home, "Desktop"),
            Err(FileError::BadRequest(_))
        ));
        assert!(matches!(resolve(&home, ""), Err(FileError::BadRequest(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "deskd-agent-files-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
