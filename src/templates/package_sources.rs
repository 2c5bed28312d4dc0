//! Where a template build's package managers fetch from (`[build]` in the config file): by default
//! the image's own sources (Debian's mirrors, PyPI, the npm registry); a host behind a mirror, or
//! one with no internet, names its own. Only the build's `build.apt`, `build.pip` and `build.npm`
//! steps use them: a launched computer's apt, pip and npm keep the image's settings.

use serde::Deserialize;

/// Where the apt step's sources list is written in the build VM (outside `sources.list.d`, so
/// nothing else in the guest reads it; it is removed when the step ends well).
pub const APT_SOURCES_FILE: &str = "/etc/deskd-build/apt-sources.list";

/// The `[build]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PackageSources {
    /// One-line-style apt sources (`deb [trusted=yes] http://mirror.lan/debian ./`); when given,
    /// `build.apt` uses these instead of the image's.
    pub apt_sources: Vec<String>,
    /// `build.pip`'s index (`http://mirror.lan/simple/`); a plain-http one is trusted as pip
    /// requires (`--trusted-host`). Empty: PyPI.
    pub pip_index_url: String,
    /// `build.npm`'s registry (`http://mirror.lan/npm/`). Empty: npm's default.
    pub npm_registry: String,
}

impl PackageSources {
    /// Checks the values; the message names the key and says what it wants.
    pub fn check(&self) -> Result<(), String> {
        for (i, line) in self.apt_sources.iter().enumerate() {
            let ok = (line.starts_with("deb ") || line.starts_with("deb-src "))
                && !line.contains(['\n', '\r', '\0']);
            if !ok {
                return Err(format!(
                    "build.apt_sources[{i}] must be one sources.list line starting with \"deb \" (e.g. \"deb [trusted=yes] http://mirror.lan/debian ./\"), got {line:?}"
                ));
            }
        }
        for (key, url) in [
            ("pip_index_url", &self.pip_index_url),
            ("npm_registry", &self.npm_registry),
        ] {
            if !url.is_empty() && host_of(url).is_none() {
                return Err(format!(
                    "build.{key} must be an http:// or https:// URL with a host and no spaces, got {url:?}"
                ));
            }
        }
        Ok(())
    }

    /// The apt step's script for `packages` (already quoted for bash).
    pub fn apt_script(&self, packages: &str) -> String {
        let head = "export DEBIAN_FRONTEND=noninteractive\n";
        if self.apt_sources.is_empty() {
            return format!(
                "{head}apt-get update\napt-get install -y --no-install-recommends {packages}\n"
            );
        }
        let list: String = self.apt_sources.iter().map(|l| format!("{l}\n")).collect();
        let file = super::build_plan::quote(APT_SOURCES_FILE);
        let only = format!("-o Dir::Etc::SourceList={file} -o Dir::Etc::SourceParts=-");
        format!(
            "{head}mkdir -p \"$(dirname {file})\"\nprintf '%s' {} > {file}\napt-get {only} update\napt-get {only} install -y --no-install-recommends {packages}\nrm -f {file}\n",
            super::build_plan::quote(&list)
        )
    }

    /// The pip step's script for `packages` (already quoted for bash).
    pub fn pip_script(&self, packages: &str) -> String {
        // Debian's Python is "externally managed" (PEP 668): a template owns its VM.
        let mut cmd = String::from("python3 -m pip install --no-input --break-system-packages");
        if let Some(host) = host_of(&self.pip_index_url) {
            let q = super::build_plan::quote;
            cmd += &format!(" --index-url {}", q(&self.pip_index_url));
            if self.pip_index_url.starts_with("http://") {
                cmd += &format!(" --trusted-host {}", q(host));
            }
        }
        format!("{cmd} {packages}\n")
    }

    /// The npm step's script for `packages` (already quoted for bash).
    pub fn npm_script(&self, packages: &str) -> String {
        let mut cmd = String::from("npm install --global");
        if !self.npm_registry.is_empty() {
            cmd += &format!(
                " --registry {}",
                super::build_plan::quote(&self.npm_registry)
            );
        }
        format!("{cmd} {packages}\n")
    }
}

/// `host[:port]` of an http(s) URL without whitespace, or None.
fn host_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    let clean = !host.is_empty()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        && !host.contains('@');
    clean.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors() -> PackageSources {
        PackageSources {
            apt_sources: vec!["deb [trusted=yes] http://web.test/debian ./".into()],
            pip_index_url: "http://web.test:8080/simple/".into(),
            npm_registry: "https://npm.lan/".into(),
        }
    }

    #[test]
    fn defaults_use_the_images_own_sources() {
        let d = PackageSources::default();
        assert!(d.check().is_ok());
        assert_eq!(
            d.apt_script("'jq'"),
            "export DEBIAN_FRONTEND=noninteractive\napt-get update\napt-get install -y --no-install-recommends 'jq'\n"
        );
        assert_eq!(
            d.pip_script("'requests'"),
            "python3 -m pip install --no-input --break-system-packages 'requests'\n"
        );
        assert_eq!(
            d.npm_script("'left-pad'"),
            "npm install --global 'left-pad'\n"
        );
    }

    #[test]
    fn mirrors_replace_them_for_the_build_steps_only() {
        let m = mirrors();
        assert!(m.check().is_ok());
        let apt = m.apt_script("'rig-hello'");
        assert!(apt.contains("'deb [trusted=yes] http://web.test/debian ./\n' > '/etc/deskd-build/apt-sources.list'"), "{apt}");
        assert!(apt.contains("apt-get -o Dir::Etc::SourceList='/etc/deskd-build/apt-sources.list' -o Dir::Etc::SourceParts=- update\n"), "{apt}");
        assert!(apt.ends_with("install -y --no-install-recommends 'rig-hello'\nrm -f '/etc/deskd-build/apt-sources.list'\n"), "{apt}");
        assert_eq!(
            m.pip_script("'rig-hello'"),
            "python3 -m pip install --no-input --break-system-packages --index-url 'http://web.test:8080/simple/' --trusted-host 'web.test:8080' 'rig-hello'\n"
        );
        assert_eq!(
            m.npm_script("'x'"),
            "npm install --global --registry 'https://npm.lan/' 'x'\n"
        );
        // An https index needs no trust flag.
        let s = PackageSources {
            pip_index_url: "https://pypi.lan/simple/".into(),
            ..Default::default()
        };
        assert!(!s.pip_script("'a'").contains("--trusted-host"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases = [
            (
                PackageSources {
                    apt_sources: vec!["http://x/debian".into()],
                    ..Default::default()
                },
                "build.apt_sources[0]",
            ),
            (
                PackageSources {
                    apt_sources: vec!["deb http://x/ ./\ndeb http://y/ ./".into()],
                    ..Default::default()
                },
                "build.apt_sources[0]",
            ),
            (
                PackageSources {
                    pip_index_url: "ftp://x/simple".into(),
                    ..Default::default()
                },
                "build.pip_index_url",
            ),
            (
                PackageSources {
                    pip_index_url: "http://x/ simple".into(),
                    ..Default::default()
                },
                "build.pip_index_url",
            ),
            (
                PackageSources {
                    npm_registry: "https://".into(),
                    ..Default::default()
                },
                "build.npm_registry",
            ),
            (
                PackageSources {
                    npm_registry: "https://user:pw@npm.lan/".into(),
                    ..Default::default()
                },
                "build.npm_registry",
            ),
        ];
        for (s, key) in cases {
            let e = s.check().expect_err(key);
            assert!(e.starts_with(key), "{e}");
        }
    }
}
