//! Files between the daemon and the agent: the routes, their queries and answers, the filename
//! rule (what an uploaded name becomes) and the name-clash rule (a file never overwrites another:
//! `report.pdf` becomes `report (1).pdf`, `report (2).pdf`...). The daemon applies the filename
//! rule to what it stores and the agent checks it again on what it writes.

use serde::{Deserialize, Serialize};

/// `POST`: the request body (raw bytes, streamed) becomes `~/Desktop/<name>` of the desktop user,
/// see [`WriteQuery`]; the answer is a [`FileWritten`].
pub const WRITE: &str = "/files/write";
/// `GET`: the bytes of a file below the desktop user's home, see [`ReadQuery`]; anything that
/// resolves outside it is a 403.
pub const READ: &str = "/files/read";
/// Where uploads land, relative to the desktop user's home.
pub const DESKTOP_DIR: &str = "Desktop";
/// Read answers: the file's size in bytes (also its `Content-Length`).
pub const HEADER_FILE_SIZE: &str = "x-deskd-file-size";
/// Longest file name, in bytes (the usual file system limit).
pub const MAX_NAME_BYTES: usize = 255;
/// Names tried for one upload before giving up: `name`, `name (1)` ... `name (999)`.
pub const MAX_CLASH_TRIES: u32 = 1000;

/// Query of [`WRITE`]: the name, already sanitised ([`sanitize_filename`] returns it unchanged).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WriteQuery {
    pub name: String,
}

/// Query of [`READ`]: absolute (`/home/user/x`), relative to the home (`Desktop/x`) or `~/x`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadQuery {
    pub path: String,
}

/// Answer of [`WRITE`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileWritten {
    pub success: bool,
    /// The name the file got (differs from the asked one after a clash).
    pub name: String,
    /// Its absolute path in the guest.
    pub path: String,
    pub size_bytes: u64,
}

/// `POST`: an [`InstallFiles`] → [`FilesInstalled`]. Each file is written anywhere in the guest
/// as root, with its mode, owner and group, atomically (a reader sees the old file or the whole
/// new one, never a part, and never the content under looser permissions): the launch's
/// `/root/.env` (mode 0600) and a template's runtime `files`. The content is never logged or
/// echoed, by either side: it may hold secrets.
pub const INSTALL: &str = "/files/install";
/// Most files one [`INSTALL`] request may carry.
pub const MAX_INSTALL_FILES: usize = 256;
/// Most content bytes one [`INSTALL`] request may carry, all files together (the daemon's secret
/// limits are far below this; runtime files are inline template text).
pub const MAX_INSTALL_BYTES: usize = 8 << 20;
/// Longest path an [`InstallFile`] may name (Linux's `PATH_MAX`).
pub const MAX_INSTALL_PATH: usize = 4096;

/// Body of [`INSTALL`]: written in order; the first failure ends the request.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstallFiles {
    pub files: Vec<InstallFile>,
}

/// One file of [`InstallFiles`].
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstallFile {
    /// Absolute, normal (no `.`, `..` or empty components), no NUL.
    pub path: String,
    /// The text the file holds.
    pub content: String,
    /// Octal permissions, e.g. `0600` (three or four digits, at most `07777`).
    pub mode: String,
    /// User and group names (or numeric ids) the file and any directory made for it get.
    pub owner: String,
    pub group: String,
}

// By hand: a derived Debug would print the content, which may be a secret.
impl std::fmt::Debug for InstallFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallFile")
            .field("path", &self.path)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("mode", &self.mode)
            .field("owner", &self.owner)
            .field("group", &self.group)
            .finish()
    }
}

impl std::fmt::Debug for InstallFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallFiles")
            .field("files", &self.files)
            .finish()
    }
}

/// Answer of [`INSTALL`]: the paths written, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilesInstalled {
    pub success: bool,
    pub paths: Vec<String>,
}

impl InstallFiles {
    /// Checks the whole request (counts, sizes, every file); the message names the file at fault
    /// by its index and path, never by its content.
    pub fn check(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Err("files is empty: send at least one file".into());
        }
        if self.files.len() > MAX_INSTALL_FILES {
            return Err(format!(
                "at most {MAX_INSTALL_FILES} files per request (got {})",
                self.files.len()
            ));
        }
        let total: usize = self.files.iter().map(|f| f.content.len()).sum();
        if total > MAX_INSTALL_BYTES {
            return Err(format!(
                "the files hold {total} bytes together; at most {MAX_INSTALL_BYTES} per request"
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            f.check()
                .map_err(|e| format!("files[{i}] ({:?}): {e}", f.path))?;
        }
        Ok(())
    }
}

impl InstallFile {
    /// Checks the path, mode, owner and group (the content is any text).
    pub fn check(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/') || p.len() < 2 || p.len() > MAX_INSTALL_PATH {
            return Err(format!(
                "path must be absolute, at most {MAX_INSTALL_PATH} bytes, and not / itself"
            ));
        }
        if p.contains('\0') {
            return Err("path holds a NUL byte".into());
        }
        if p[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(
                "path must be normal: no empty, '.' or '..' components, no trailing /".into(),
            );
        }
        let m = self.mode.strip_prefix('0').unwrap_or(&self.mode);
        if !(3..=4).contains(&m.len())
            || !m.bytes().all(|b| (b'0'..=b'7').contains(&b))
            || self.mode.len() > 5
        {
            return Err(format!(
                "mode {:?} is not octal permissions such as 0644",
                self.mode
            ));
        }
        for (what, name) in [("owner", &self.owner), ("group", &self.group)] {
            if !is_account_name(name) {
                return Err(format!(
                    "{what} {name:?} is not a user or group name (letters, digits, '_', '-', '.', not starting with '-'; at most 32) or a numeric id"
                ));
            }
        }
        Ok(())
    }

    /// The directories above [`InstallFile::path`], outermost first (`/a/b/f` → `/a`, `/a/b`):
    /// those missing are made for the file, owned like it.
    pub fn parents(&self) -> Vec<String> {
        let comps: Vec<&str> = self.path[1..].split('/').collect();
        (1..comps.len())
            .map(|n| format!("/{}", comps[..n].join("/")))
            .collect()
    }
}

/// A user or group name `chown` takes without surprises (no `:`, no option look-alikes, no
/// spaces), or a numeric id.
pub fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The file name an uploaded `raw` name becomes: the last component of any path (`/` or `\`),
/// without control characters, leading dots (no hidden files) and surrounding spaces, cut to
/// [`MAX_NAME_BYTES`] keeping a short extension. A name with nothing left is an error (a 400).
pub fn sanitize_filename(raw: &str) -> Result<String, String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return Err(format!(
            "filename {:?} has no usable name once paths, control characters and leading dots are removed",
            raw.chars().take(60).collect::<String>()
        ));
    }
    if cleaned.len() <= MAX_NAME_BYTES {
        return Ok(cleaned.to_string());
    }
    let (stem, ext) = split_ext(cleaned);
    let ext = if ext.len() <= 16 { ext } else { "" };
    let mut stem = stem.to_string();
    while stem.len() + ext.len() > MAX_NAME_BYTES {
        stem.pop();
    }
    Ok(format!("{stem}{ext}"))
}

/// `name` split before its extension's dot (`a.tar.gz` -> `a.tar`, `.gz`; `a` -> `a`, ``).
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// The name tried at attempt `n` of the clash rule: `name` itself for 0, then `stem (n).ext`.
pub fn clash_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    let (stem, ext) = split_ext(name);
    let suffix = format!(" ({n})");
    let mut stem = stem.to_string();
    while stem.len() + suffix.len() + ext.len() > MAX_NAME_BYTES && !stem.is_empty() {
        stem.pop();
    }
    format!("{stem}{suffix}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: &str, owner: &str) -> InstallFile {
        InstallFile {
            path: path.into(),
            content: "secret value".into(),
            mode: mode.into(),
            owner: owner.into(),
            group: owner.into(),
        }
    }

    #[test]
    fn install_requests_are_checked_and_never_show_content() {
        assert!(file("/root/.env", "0600", "root").check().is_ok());
        assert!(file("/home/user/a b/c.json", "644", "user").check().is_ok());
        assert!(file("/x", "04755", "1000").check().is_ok());
        for (path, mode, owner, expected) in [
            ("relative", "0600", "root", "absolute"),
            ("/", "0600", "root", "absolute"),
            ("/a/../etc/passwd", "0600", "root", "normal"),
            ("/a//b", "0600", "root", "normal"),
            ("/a/b/", "0600", "root", "normal"),
            ("/a/./b", "0600", "root", "normal"),
            ("/a", "0800", "root", "mode"),
            ("/a", "rw", "root", "mode"),
            ("/a", "000644", "root", "mode"),
            ("/a", "0644", "ro:ot", "owner"),
            ("/a", "0644", "-R", "owner"),
            ("/a", "0644", "", "owner"),
        ] {
            let e = file(path, mode, owner).check().unwrap_err();
            assert!(e.contains(expected), "{path} {mode} {owner}: {e}");
        }
        let f = file("/root/.env", "0600", "root");
        assert!(!format!("{f:?}").contains("secret value"));
        let req = InstallFiles {
            files: vec![f.clone(), file("/a/../b", "0600", "root")],
        };
        let e = req.check().unwrap_err();
        assert!(e.starts_with("files[1]") && !e.contains("secret"), "{e}");
        assert!(!format!("{req:?}").contains("secret value"));
        assert!(InstallFiles { files: vec![] }.check().is_err());
        assert_eq!(file("/a/b c/f", "0600", "root").parents(), ["/a", "/a/b c"]);
        assert!(file("/f", "0600", "root").parents().is_empty());
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(sanitize_filename("report.pdf").unwrap(), "report.pdf");
        assert_eq!(sanitize_filename("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(
            sanitize_filename("C:\\Users\\me\\a b.txt").unwrap(),
            "a b.txt"
        );
        assert_eq!(sanitize_filename(".bashrc").unwrap(), "bashrc");
        assert_eq!(sanitize_filename("  x\u{0}y\n.txt ").unwrap(), "xy.txt");
        assert_eq!(sanitize_filename("日本語.txt").unwrap(), "日本語.txt");
        for bad in ["", "..", ".", "a/", "/", " \t ", "\u{1}"] {
            assert!(sanitize_filename(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.pdf", "é".repeat(200));
        let s = sanitize_filename(&long).unwrap();
        assert!(s.len() <= MAX_NAME_BYTES && s.ends_with(".pdf"), "{s}");
        // Sanitising is idempotent: the agent's check accepts what the daemon produced.
        for raw in ["../x.y", &long, "  .a"] {
            let once = sanitize_filename(raw).unwrap();
            assert_eq!(sanitize_filename(&once).unwrap(), once);
        }
    }

    #[test]
    fn clashes_number_the_stem() {
        assert_eq!(clash_name("report.pdf", 0), "report.pdf");
        assert_eq!(clash_name("report.pdf", 1), "report (1).pdf");
        assert_eq!(clash_name("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(clash_name("README", 3), "README (3)");
        let long = "x".repeat(MAX_NAME_BYTES);
        assert!(clash_name(&long, 999).len() <= MAX_NAME_BYTES);
    }
}
