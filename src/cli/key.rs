//! Where the CLI's API key comes from, in order: `--api-key`, `$DESKD_API_KEY`, `$ORGO_API_KEY`
//! (what the official SDK reads), and, only when run as root, the daemon's root-only first-key
//! file `<data-dir>/initial-api-key`.

use std::path::Path;

use super::error::CliError;
use crate::api::INITIAL_KEY_FILE;

/// The key variables, in the order they are read.
pub const KEY_VARS: [&str; 2] = ["DESKD_API_KEY", "ORGO_API_KEY"];

/// A key and where it came from (named in the message when the daemon refuses it).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub secret: String,
    pub source: String,
}

/// Finds the key; `env` reads a variable, `is_root` says whether the key file may be read.
pub fn resolve(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    data_dir: &Path,
    is_root: bool,
) -> Result<Key, CliError> {
    let found = |secret: &str, source: String| Key {
        secret: secret.trim().to_string(),
        source,
    };
    if let Some(k) = flag.filter(|k| !k.trim().is_empty()) {
        return Ok(found(k, "--api-key".into()));
    }
    for var in KEY_VARS {
        if let Some(k) = env(var).filter(|k| !k.trim().is_empty()) {
            return Ok(found(&k, format!("${var}")));
        }
    }
    let path = data_dir.join(INITIAL_KEY_FILE);
    let hint = "pass --api-key KEY or set DESKD_API_KEY (or ORGO_API_KEY); `deskd keys create` makes a new key";
    if !is_root {
        return Err(CliError::NoKey(format!(
            "no API key: {hint}. (Run as root, deskd reads the daemon's first key from {}.)",
            path.display()
        )));
    }
    let why = match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok(found(&k, path.display().to_string())),
        Ok(_) => "it is empty".to_string(),
        Err(e) => e.to_string(),
    };
    Err(CliError::NoKey(format!(
        "no API key: {hint}. The daemon's first key, {}, cannot be read ({why}; --data-dir names the daemon's data directory).",
        path.display()
    )))
}

/// Whether this process runs as root (and so may read the root-only key file).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn flag_then_deskd_then_orgo_then_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INITIAL_KEY_FILE), "sk_live_file\n").unwrap();
        let both = env_of(&[("DESKD_API_KEY", "sk_d"), ("ORGO_API_KEY", "sk_o")]);
        let k = resolve(Some("sk_flag"), &both, dir.path(), true).unwrap();
        assert_eq!(
            (k.secret.as_str(), k.source.as_str()),
            ("sk_flag", "--api-key")
        );
        let k = resolve(None, &both, dir.path(), true).unwrap();
        assert_eq!(
            (k.secret.as_str(), k.source.as_str()),
            ("sk_d", "$DESKD_API_KEY")
        );
        let orgo = env_of(&[("DESKD_API_KEY", " "), ("ORGO_API_KEY", "sk_o")]);
        let k = resolve(None, orgo, dir.path(), true).unwrap();
        assert_eq!(
            (k.secret.as_str(), k.source.as_str()),
            ("sk_o", "$ORGO_API_KEY")
        );
        let k = resolve(Some(""), env_of(&[]), dir.path(), true).unwrap();
        assert_eq!(k.secret, "sk_live_file", "the file's newline is trimmed");
    }

    #[test]
    fn the_key_file_is_read_only_as_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INITIAL_KEY_FILE), "sk_live_file\n").unwrap();
        let err = resolve(None, env_of(&[]), dir.path(), false).unwrap_err();
        assert!(matches!(err, CliError::NoKey(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("DESKD_API_KEY") && msg.contains("Run as root"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_key_file_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let msg = resolve(None, env_of(&[]), dir.path(), true)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(INITIAL_KEY_FILE) && msg.contains("--data-dir"),
            "{msg}"
        );
    }
}
