//! Template references, `NAMESPACE/NAME@VERSION`: `default` holds what users publish, `system`
//! the curated templates shipped with deskd.

use std::fmt;

/// Where users' templates go.
pub const USER_NAMESPACE: &str = "default";
/// The curated templates shipped with deskd (read-only through the API).
pub const SYSTEM_NAMESPACE: &str = "system";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TemplateRef {
    pub namespace: String,
    pub name: String,
    pub version: String,
}

impl fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.namespace, self.name, self.version)
    }
}

impl TemplateRef {
    /// Parses `ns/name@version`.
    pub fn parse(s: &str) -> Option<TemplateRef> {
        let (path, version) = s.split_once('@')?;
        let (namespace, name) = path.split_once('/')?;
        (is_kebab(namespace) && is_kebab(name) && semver::Version::parse(version).is_ok()).then(
            || TemplateRef {
                namespace: namespace.into(),
                name: name.into(),
                version: version.into(),
            },
        )
    }

    pub fn is_system(&self) -> bool {
        self.namespace == SYSTEM_NAMESPACE
    }
}

/// A namespace or name: lowercase kebab case, 1-64 characters.
pub fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let r = TemplateRef::parse("system/desktop@1.0.0").unwrap();
        assert!(r.is_system());
        assert_eq!(r.to_string(), "system/desktop@1.0.0");
        assert_eq!(
            TemplateRef::parse("default/my-app@2.1.0-rc.1")
                .unwrap()
                .name,
            "my-app"
        );
        for bad in [
            "desktop@1.0.0",
            "system/desktop",
            "System/d@1.0.0",
            "a/b@1.0",
            "a/-b@1.0.0",
            "a/b/c@1.0.0",
        ] {
            assert!(TemplateRef::parse(bad).is_none(), "{bad}");
        }
    }
}
