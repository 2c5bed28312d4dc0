//! The curated `system/...` templates shipped inside deskd (`curated/*.yaml`), written to the
//! store at every start so that each deskd serves its own versions of them.

use super::validate::{validate_bytes, Template};

/// `(file name, document)` of every curated template.
pub const CURATED: &[(&str, &str)] = &[
    ("desktop.yaml", include_str!("curated/desktop.yaml")),
    (
        "desktop-minimal.yaml",
        include_str!("curated/desktop-minimal.yaml"),
    ),
];

/// The default template of `POST /computers` (api.md section 2).
pub const DEFAULT_TEMPLATE: &str = "system/desktop@1.0.0";

/// Every curated template, validated.
pub fn templates() -> Vec<Template> {
    CURATED
        .iter()
        .filter_map(|(file, text)| match validate_bytes(text.as_bytes()) {
            Ok(t) => Some(t),
            Err(e) => {
                // Caught by the test below before any release.
                tracing::error!("curated template {file} is not valid: {e:?}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_curated_template_is_valid_and_the_default_is_among_them() {
        let all = templates();
        assert_eq!(all.len(), CURATED.len());
        let refs: Vec<String> = all
            .iter()
            .map(|t| t.reference("system").to_string())
            .collect();
        assert!(refs.contains(&DEFAULT_TEMPLATE.to_string()), "{refs:?}");
        assert!(
            refs.iter()
                .any(|r| r.starts_with("system/desktop-minimal@")),
            "{refs:?}"
        );
    }
}
