//! The daemon's configuration file (`/etc/deskd/deskd.toml`): host quotas, the public URL, rate
//! and upload limits. Every key is optional; a missing file means all defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where `deskd serve` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/deskd/deskd.toml";

/// Errors reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message} (see the keys documented in systemd/deskd.toml.example)")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base URL clients use to reach this daemon (through a reverse proxy); it is the prefix of a
    /// computer's `url`, `connection_url` and `hostname` (that one without the scheme).
    pub public_url: String,
    pub quotas: Quotas,
    pub rate_limit: RateLimit,
    pub limits: Limits,
    /// Guest networking's host side (src/network); off by default.
    pub network: crate::network::NetworkConfig,
    /// Disk I/O limits of each VM's cgroup (src/computers/cgroup.rs); none by default.
    pub vm_io: crate::computers::cgroup::IoConfig,
    /// Package sources of template builds (src/templates/package_sources.rs); the image's own
    /// by default.
    pub build: crate::templates::package_sources::PackageSources,
}

/// Host quotas: the self-hosted form of the service's plan limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Most computers that may exist at once (running or not).
    pub max_computers: u32,
    /// Sum of all computers' vCPUs may be at most this many times the host's CPU count.
    pub vcpu_commit_ratio: f64,
    /// Sum of all computers' RAM may be at most this many times the host's memory.
    pub ram_commit_ratio: f64,
    /// Largest disk one computer may have, in GB.
    pub max_disk_gb_per_computer: u32,
    /// GB that must stay free on the data directory's filesystem: a create or clone that would
    /// leave less is refused (507), so a full disk never corrupts the database or a VM's disk.
    pub min_free_disk_gb: u32,
}

/// Per-key token bucket, and the per-peer one for requests without a valid key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second (sustained requests per second per key).
    pub requests_per_second: f64,
    /// Bucket size (largest burst per key).
    pub burst: u32,
    /// Requests with a missing or wrong key one peer (a uid on the Unix socket, an address on
    /// TCP) gets answered with 401 before it is limited (429 with Retry-After).
    pub bad_key_burst: u32,
    /// Such requests per second a limited peer is answered after its burst.
    pub bad_key_per_second: f64,
    /// Whether the TCP listener is behind a reverse proxy that sets `X-Forwarded-For`: the last
    /// address in it (the one the proxy saw) is then the peer of requests from loopback. Leave
    /// off unless the proxy overwrites or appends the header, or clients could name any peer.
    pub trust_forwarded_for: bool,
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON body accepted, in bytes.
    pub max_json_body_bytes: usize,
    /// Largest file upload accepted, in bytes (the service's limit is 10 MB).
    pub max_upload_bytes: usize,
    /// Most bytes the stored files (uploads and exports) of one workspace may take together.
    pub max_workspace_files_bytes: u64,
    /// Most calls to guest agents (actions, screenshots, bash, the desktop proxy, file exports)
    /// one API key may have in flight at once; past it, 429 with Retry-After. WebSocket relays,
    /// which authenticate with a computer's token, count per computer.
    pub max_agent_calls_per_key: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            public_url: "http://localhost".to_string(),
            quotas: Quotas::default(),
            rate_limit: RateLimit::default(),
            limits: Limits::default(),
            network: crate::network::NetworkConfig::default(),
            vm_io: crate::computers::cgroup::IoConfig::default(),
            build: Default::default(),
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_computers: 32,
            vcpu_commit_ratio: 4.0,
            ram_commit_ratio: 1.5,
            max_disk_gb_per_computer: 256,
            min_free_disk_gb: 2,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests_per_second: 50.0,
            burst: 200,
            bad_key_burst: 20,
            bad_key_per_second: 1.0,
            trust_forwarded_for: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_body_bytes: 1024 * 1024,
            max_upload_bytes: 10 * 1024 * 1024,
            max_workspace_files_bytes: 1024 * 1024 * 1024,
            max_agent_calls_per_key: 32,
        }
    }
}

impl Config {
    /// Reads `path`; `None` means the default path if that file exists, else all defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::parse(&text, &path)
    }

    /// Parses the TOML text of a config file and checks its values.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(format!(
                "public_url must start with http:// or https://, got {:?}",
                self.public_url
            ));
        }
        let q = &self.quotas;
        if !(q.vcpu_commit_ratio > 0.0 && q.vcpu_commit_ratio.is_finite()) {
            return Err("quotas.vcpu_commit_ratio must be a positive number".into());
        }
        if !(q.ram_commit_ratio > 0.0 && q.ram_commit_ratio.is_finite()) {
            return Err("quotas.ram_commit_ratio must be a positive number".into());
        }
        let r = &self.rate_limit;
        if !(r.requests_per_second > 0.0 && r.requests_per_second.is_finite()) {
            return Err("rate_limit.requests_per_second must be a positive number".into());
        }
        if r.burst == 0 {
            return Err("rate_limit.burst must be at least 1".into());
        }
        if !(r.bad_key_per_second > 0.0 && r.bad_key_per_second.is_finite()) {
            return Err("rate_limit.bad_key_per_second must be a positive number".into());
        }
        if r.bad_key_burst == 0 {
            return Err("rate_limit.bad_key_burst must be at least 1".into());
        }
        if self.limits.max_json_body_bytes < 1024 {
            return Err("limits.max_json_body_bytes must be at least 1024".into());
        }
        if self.limits.max_agent_calls_per_key == 0 {
            return Err("limits.max_agent_calls_per_key must be at least 1".into());
        }
        self.network.check()?;
        self.build.check()?;
        Ok(())
    }

    /// `public_url` without a trailing slash.
    pub fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn reads_every_section() {
        let text = r#"
            public_url = "https://desk.example.org/"
            [quotas]
            max_computers = 3
            vcpu_commit_ratio = 2.0
            ram_commit_ratio = 1.0
            max_disk_gb_per_computer = 40
            [rate_limit]
            requests_per_second = 5.0
            burst = 10
            [limits]
            max_json_body_bytes = 4096
            max_upload_bytes = 1000
            [vm_io]
            write_bytes_per_second = 104857600
            device = "/dev/vda"
        "#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.public_base(), "https://desk.example.org");
        assert_eq!(c.quotas.max_computers, 3);
        assert_eq!(c.rate_limit.burst, 10);
        assert_eq!(c.limits.max_upload_bytes, 1000);
        assert_eq!(c.vm_io.write_bytes_per_second, 100 << 20);
        assert_eq!(c.vm_io.read_iops, 0);
        assert_eq!(c.vm_io.device, "/dev/vda");
    }

    #[test]
    fn the_shipped_example_is_valid_and_documents_the_defaults() {
        let text = include_str!("../systemd/deskd.toml.example");
        let c = Config::parse(text, Path::new("deskd.toml.example")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(Config::parse("nope = 1", Path::new("x")).is_err());
        assert!(Config::parse("[rate_limit]\nburst = 0", Path::new("x")).is_err());
        assert!(Config::parse("[rate_limit]\nbad_key_burst = 0", Path::new("x")).is_err());
        assert!(Config::parse("[rate_limit]\nbad_key_per_second = 0.0", Path::new("x")).is_err());
        assert!(Config::parse("public_url = \"ftp://x\"", Path::new("x")).is_err());
        let e = Config::parse(
            "[build]\napt_sources = [\"http://x/debian\"]",
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("build.apt_sources[0]"), "{e}");
    }

    #[test]
    fn build_package_sources_are_read() {
        let c = Config::parse(
            "[build]\napt_sources = [\"deb [trusted=yes] http://web.test/debian ./\"]\npip_index_url = \"http://web.test/simple/\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.build.apt_sources.len(), 1);
        assert_eq!(c.build.pip_index_url, "http://web.test/simple/");
        assert_eq!(c.build.npm_registry, "");
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert!(Config::load(Some(&missing)).is_err());
    }
}
