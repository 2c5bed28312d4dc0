//! `orgo.ai/v1` templates (shared/spec/templates.md): the document and its checks, storage
//! helpers, builds and the launch checks. The API routes are in `crate::api::templates`.
//!
//! Layout, in the order a document goes through them: `parse` (JSON or YAML), `sugar` (short
//! forms to the canonical form), `document` (the typed canonical form, source of the JSON
//! Schema), `schema` (the schema and the structural check), `interpolate` (`${var.X}`,
//! `${env.X}`), `rules` (semantic checks), `validate` (the whole pipeline, [`Template`]),
//! `canonical` (canonical text and digest), `issue` (findings), `refs` (`ns/name@version`),
//! `curated` (the `system/...` templates shipped inside deskd), `host` (what a launch refuses on
//! this host), `build` (build records, events and the [`BuildRunner`] contract), `builds` (the
//! build manager), `build_plan` (the shell steps a build runs in its VM), `vm_builder` (the VM
//! [`BuildRunner`]: boot, steps, golden snapshot), `launch` (a new computer of a built template
//! starts from its golden snapshot), `secrets` (a computer's secrets, `/root/.env`, runtime
//! files and `hooks.on_resume`: what the guest gets at every start).

pub mod build;
pub mod build_plan;
pub mod builds;
pub mod canonical;
pub mod curated;
pub mod defaults;
pub mod document;
pub mod host;
pub mod interpolate;
pub mod issue;
pub mod launch;
pub mod package_sources;
pub mod parse;
pub mod refs;
pub mod rules;
pub mod schema;
pub mod secrets;
pub mod sugar;
pub mod validate;
pub mod vm_builder;

pub use build::{BuildRunner, NoVmBuilder};
pub use builds::Builds;
pub use document::Document;
pub use host::{
    check_hardware, check_runtime_files, check_secrets, HostCapabilities, LaunchRefused,
};
pub use issue::{Code, Issue};
pub use refs::TemplateRef;
pub use validate::{validate_bytes, validate_value, Rejection, Template};
pub use vm_builder::VmBuilder;

use crate::store::{Store, StoreError, StoredTemplate};

/// Writes the curated templates into the store (at every start).
pub fn seed(store: &Store) -> Result<(), StoreError> {
    let all: Vec<(TemplateRef, String, serde_json::Value)> = curated::templates()
        .into_iter()
        .map(|t| (t.reference(refs::SYSTEM_NAMESPACE), t.digest, t.canonical))
        .collect();
    store.seed_templates(&all)
}

/// The published template a create's `template_ref` or legacy `image` names, if any: a full
/// ref, or (the SDK's `Computer(template="name")`) a bare `name`, `name@version` or `ns/name`,
/// the newest version when none is given, users' templates before curated ones.
pub fn find_for_launch(store: &Store, name: &str) -> Result<Option<StoredTemplate>, StoreError> {
    if let Some(r) = TemplateRef::parse(name) {
        return match store.template(&r) {
            Ok(t) => Ok(Some(t)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        };
    }
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let (namespaces, bare): (Vec<&str>, &str) = match path.split_once('/') {
        Some((ns, n)) => (vec![ns], n),
        None => (vec![refs::USER_NAMESPACE, refs::SYSTEM_NAMESPACE], path),
    };
    if !refs::is_kebab(bare) {
        return Ok(None);
    }
    for ns in namespaces {
        let versions = store.template_versions(ns, bare)?;
        let found = match version {
            Some(v) => versions.into_iter().find(|t| t.reference.version == v),
            None => versions.into_iter().last(),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_templates_are_found_for_launch_by_every_spelling() {
        let (_d, store) = crate::store::test_store();
        seed(&store).unwrap();
        seed(&store).unwrap();
        let t = validate_bytes(b"api_version: orgo.ai/v1\nname: my-app@1.2.0\n").unwrap();
        store
            .publish_template(&t.reference("default"), &t.digest, &t.canonical, false)
            .unwrap();
        let found = |s: &str| {
            find_for_launch(&store, s)
                .unwrap()
                .map(|t| t.reference.to_string())
        };
        assert_eq!(
            found("system/desktop@1.0.0").as_deref(),
            Some("system/desktop@1.0.0")
        );
        assert_eq!(found("desktop").as_deref(), Some("system/desktop@1.0.0"));
        assert_eq!(found("my-app").as_deref(), Some("default/my-app@1.2.0"));
        assert_eq!(
            found("my-app@1.2.0").as_deref(),
            Some("default/my-app@1.2.0")
        );
        assert_eq!(
            found("default/my-app").as_deref(),
            Some("default/my-app@1.2.0")
        );
        assert_eq!(
            found("system/desktop-minimal").as_deref(),
            Some("system/desktop-minimal@1.0.0")
        );
        assert_eq!(found("nope"), None);
        assert_eq!(found("registry.fly.io/x:latest"), None);
        assert_eq!(found("my-app@9.9.9"), None);
    }
}
