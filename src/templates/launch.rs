//! A new computer of a built template starts from its golden snapshot: before its first start
//! it gets a copy of the golden disk and, when its hardware is the snapshot's, the snapshot
//! itself (shared, marked as a copy), so the start restores the template's VM and gives it a new
//! identity instead of cold-booting. A computer whose hardware differs cold-boots the golden
//! disk (what the build installed is there; what only ran in memory, such as a service started
//! by `on_first_boot` without a unit, is not). A template that is not built boots the base image.
//!
//! At every start of a template's computer, [`guest_setup`] plans what its guest then gets
//! (`super::secrets`): `/root/.env` with its secrets, the runtime files, and after a restore
//! `hooks.on_resume`; the readiness probe carries it out (`crate::computers::GuestSetup`).

use std::sync::Arc;

use super::build::BuildStatus;
use super::builds::Builds;
use super::refs::TemplateRef;
use super::secrets::{self, Secrets};
use super::vm_builder::{GoldenManifest, BUILD_WORKSPACE};
use crate::computers::golden;
use crate::computers::{Lifecycle, LifecycleError, SetupHook};
use crate::store::{Computer, Store, StoreError};
use deskd_agent::protocol::files::InstallFile;

/// Where a computer's first start begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchFrom {
    /// The image (not built, or a built template whose snapshot is gone).
    Image,
    /// The golden snapshot, restored; `shared` when its files are links to the golden ones.
    Snapshot { digest: String, shared: bool },
    /// The golden disk, cold-booted: the computer's hardware is not the snapshot's.
    GoldenDisk { digest: String, why: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot give the computer its template's golden snapshot: {0}")]
    Seed(#[from] LifecycleError),
    #[error("the stored document of {0} no longer validates")]
    Invalid(String),
}

/// What a template's computer gets at a start, from [`guest_setup`].
pub struct LaunchSetup {
    /// `/root/.env` first, then the runtime files.
    pub files: Vec<InstallFile>,
    pub hook: Option<SetupHook>,
    /// Its secrets, to mask them out of what is recorded.
    pub secrets: Secrets,
}

/// What computer `id`'s guest gets at this start (`restored`: from a saved VM, which adds
/// `hooks.on_resume`), or `None` when its template asks for nothing of the kind (or it is a
/// build computer, or its template is gone: a deleted template leaves its computers running
/// as they are). Builds never get any: their computers are of no template and have no secrets.
pub fn guest_setup(
    store: &Store,
    id: &str,
    restored: bool,
) -> Result<Option<LaunchSetup>, LaunchError> {
    let Some(c) = store.computer(id)? else {
        return Ok(None);
    };
    if store
        .workspace(&c.workspace_id)?
        .is_some_and(|w| w.name == BUILD_WORKSPACE)
    {
        return Ok(None);
    }
    let Some(t) = super::find_for_launch(store, &c.template_ref)? else {
        return Ok(None);
    };
    let valid = super::validate_value(t.document.clone())
        .map_err(|_| LaunchError::Invalid(t.reference.to_string()))?;
    let given = store.computer_secrets(id)?;
    let plan = secrets::plan(&valid.document, &given, restored);
    for field in &plan.skipped {
        store.add_launch_event(
            id,
            "warn",
            "files",
            &format!("{field} was not written: the optional secret it comes from was not given"),
        )?;
    }
    if plan.files.is_empty() && plan.hook.is_none() {
        return Ok(None);
    }
    Ok(Some(LaunchSetup {
        files: plan.files,
        hook: plan.hook.map(|(label, commands, timeout)| SetupHook {
            label,
            commands,
            timeout,
        }),
        secrets: given,
    }))
}

/// Gives the new computer `c` its template's golden snapshot if the template is built.
pub async fn prepare(
    store: &Store,
    builds: &Builds,
    lifecycle: &Arc<Lifecycle>,
    c: &Computer,
) -> Result<LaunchFrom, LaunchError> {
    let Some(r) = TemplateRef::parse(&c.template_ref) else {
        return Ok(LaunchFrom::Image);
    };
    let t = match store.template(&r) {
        Ok(t) => t,
        Err(StoreError::NotFound { .. }) => return Ok(LaunchFrom::Image),
        Err(e) => return Err(e.into()),
    };
    let built = store.latest_build(&t.digest)?;
    if built.map(|b| b.status) != Some(BuildStatus::Ready) {
        return Ok(LaunchFrom::Image);
    }
    let dir = builds.snapshot_dir(&t.digest);
    let manifest = match GoldenManifest::read(&dir) {
        Some(m) if golden::is_complete(&dir) => m,
        _ => {
            tracing::warn!(template = %r, dir = %dir.display(), "the template is recorded as built but its golden snapshot is missing or incomplete; booting the image (build it again)");
            return Ok(LaunchFrom::Image);
        }
    };
    let restore = manifest.fits(c.cpu, c.ram_gb, c.disk_size_gb, &c.resolution);
    let seeded = lifecycle.seed_from_golden(&c.id, dir, restore).await?;
    let digest = t.digest.clone();
    Ok(if restore {
        LaunchFrom::Snapshot {
            digest,
            shared: seeded.linked,
        }
    } else {
        LaunchFrom::GoldenDisk {
            digest,
            why: format!(
                "the snapshot is of {} vCPU, {} GB, {} GB disk, {} and this computer is {} vCPU, {} GB, {} GB disk, {}",
                manifest.cpu,
                manifest.ram_gb,
                manifest.disk_size_gb,
                manifest.resolution,
                c.cpu,
                c.ram_gb,
                c.disk_size_gb,
                c.resolution
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewComputer, WorkspaceStatus};

    fn computer(store: &Store, ws: &str, template_ref: &str) -> String {
        store
            .insert_computer(
                &NewComputer {
                    egress_policy: None,
                    workspace_id: ws.into(),
                    name: uuid::Uuid::new_v4().to_string(),
                    os: "linux".into(),
                    cpu: 1,
                    ram_gb: 4,
                    gpu: "none".into(),
                    disk_size_gb: 8,
                    resolution: "1280x720x24".into(),
                    auto_stop_minutes: None,
                    template_ref: template_ref.into(),
                    image: None,
                    vnc_password: "p".into(),
                },
                |_| Ok(()),
            )
            .unwrap()
            .id
    }

    #[test]
    fn only_a_template_computer_of_a_user_workspace_gets_a_setup() {
        let (_d, store) = crate::store::test_store();
        super::super::seed(&store).unwrap();
        let t = super::super::validate_bytes(
            b"api_version: orgo.ai/v1\nname: k@1.0.0\nsecrets: [{name: tok}]\nhooks: {on_resume: \"echo hi\"}\n",
        )
        .unwrap();
        store
            .publish_template(&t.reference("default"), &t.digest, &t.canonical, false)
            .unwrap();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let c = computer(&store, &ws.id, "default/k@1.0.0");
        store
            .set_computer_secrets(&c, &Secrets([("tok".into(), "v-1".into())].into()))
            .unwrap();
        let after_restore = guest_setup(&store, &c, true).unwrap().unwrap();
        assert_eq!(after_restore.files[0].path, secrets::ENV_FILE);
        assert_eq!(
            after_restore.files[0].content.lines().last(),
            Some("TOK='v-1'")
        );
        assert_eq!(after_restore.hook.unwrap().label, "hooks.on_resume");
        // A cold boot: the file, no hook.
        let booted = guest_setup(&store, &c, false).unwrap().unwrap();
        assert!(booted.hook.is_none() && booted.files.len() == 1);
        // The default desktop asks for nothing; a build computer never gets anything, whatever
        // its template.
        let plain = computer(&store, &ws.id, "system/desktop@1.0.0");
        assert!(guest_setup(&store, &plain, true).unwrap().is_none());
        let builds = store
            .create_workspace(BUILD_WORKSPACE, WorkspaceStatus::Active, None)
            .unwrap();
        let build = computer(&store, &builds.id, "default/k@1.0.0");
        assert!(guest_setup(&store, &build, true).unwrap().is_none());
        assert!(guest_setup(&store, "gone", true).unwrap().is_none());
    }
}
