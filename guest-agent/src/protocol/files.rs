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
