//! A new computer of a built template starts from its golden snapshot: before its first start
//! it gets a copy of the golden disk and, when its hardware is the snapshot's, the snapshot
//! itself (shared, marked as a copy), so the start restores the template's VM and gives it a new
//! identity instead of cold-booting. A computer whose hardware differs cold-boots the golden
//! disk (what the build installed is there; what only ran in memory, such as a service started
//! by `on_first_boot` without a unit, is not). A template that is not built boots the base image.
//!
//! At every start of a template's computer, [`guest_setup`] plans what its guest then gets
//! (`super::secrets`): `/root/.env` with its secrets, the runtime files, `hooks.on_resume` after a
//! restore or `hooks.on_every_boot` after a cold boot, then the autostart stream; the readiness
//! probe carries it out (`crate::computers::GuestSetup`). Before a stop, a restart or a delete
//! powers its VM off, [`shutdown_setup`] gives the lifecycle `hooks.on_shutdown`.
//!
//! Build computers get none of these (they are of no template and have no secrets), so the build
//! does not run `on_every_boot` either, although it boots: the hook is promised `/root/.env` and
//! the runtime files, which a build never has, and what it starts would be frozen into the golden
//! snapshot. A launch from that snapshot is a restore (`on_resume`); `on_every_boot` runs at each
//! cold boot of a launched computer (a golden disk booted because the hardware differs, an
//! unbuilt template's image, a stop then start, a restart, a reboot by the guest).

use std::sync::Arc;

use super::builds::Builds;
use super::refs::TemplateRef;
use super::secrets::{self, AutoStream, Secrets};
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
    pub stream: Option<AutoStream>,
    /// Its secrets, to mask them out of what is recorded (a literal stream key among them).
    pub secrets: Secrets,
}

/// What a stop runs in a template's computer before its VM is powered off.
pub struct ShutdownSetup {
    pub hook: SetupHook,
    /// To mask them out of the hook's recorded output.
    pub secrets: Secrets,
}

/// What a start hook's failure leaves; a start goes on whatever its hook did.
const START_GOES_ON: &str = "the computer runs on";
/// What a shutdown hook's failure leaves.
const STOP_GOES_ON: &str = "the stop goes on";

/// The document and secrets of computer `id`'s template, or `None` when it has none to apply (a
/// build computer, a template that is gone: a deleted template leaves its computers as they are).
fn template_of(
    store: &Store,
    id: &str,
) -> Result<Option<(super::document::Document, Secrets)>, LaunchError> {
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
    Ok(Some((valid.document, store.computer_secrets(id)?)))
}

/// What computer `id`'s guest gets at this start (`restored`: from a saved VM, which runs
/// `hooks.on_resume`; else a cold boot, which runs `hooks.on_every_boot`), or `None` when its
/// template asks for nothing of the kind (or it is a build computer, or its template is gone).
/// What cannot be given (a runtime file or the stream key from an optional secret not given) is
/// a `warn` line of the launch log.
pub fn guest_setup(
    store: &Store,
    id: &str,
    restored: bool,
) -> Result<Option<LaunchSetup>, LaunchError> {
    let Some((doc, given)) = template_of(store, id)? else {
        return Ok(None);
    };
    let plan = secrets::plan(&doc, &given, restored);
    for field in &plan.skipped {
        store.add_launch_event(
            id,
            "warn",
            "files",
            &format!("{field} was not written: the optional secret it comes from was not given"),
        )?;
    }
    let stream = match plan.stream {
        Some(Ok(s)) => Some(s),
        Some(Err((label, why))) => {
            store.add_launch_event(id, "warn", &label, &why)?;
            None
        }
        None => None,
    };
    if plan.files.is_empty() && plan.hook.is_none() && stream.is_none() {
        return Ok(None);
    }
    // A literal key is no secret of the computer's, but it is kept out of the log all the same.
    let mut mask = given;
    if let Some(s) = &stream {
        mask.0
            .entry(s.label.clone())
            .or_insert_with(|| s.request.stream_key.clone());
    }
    Ok(Some(LaunchSetup {
        files: plan.files,
        hook: plan.hook.map(|(label, commands, timeout)| SetupHook {
            label,
            commands,
            timeout,
            on_failure: START_GOES_ON,
        }),
        stream,
        secrets: mask,
    }))
}

/// The `hooks.on_shutdown` of computer `id`'s template, if it has one (not for a build computer
/// or a template that is gone).
pub fn shutdown_setup(store: &Store, id: &str) -> Result<Option<ShutdownSetup>, LaunchError> {
    let Some((doc, given)) = template_of(store, id)? else {
        return Ok(None);
    };
    Ok(
        secrets::shutdown_hook(&doc).map(|(label, commands, timeout)| ShutdownSetup {
            hook: SetupHook {
                label,
                commands,
                timeout,
                on_failure: STOP_GOES_ON,
            },
            secrets: given,
        }),
    )
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
    if store.ready_build(&t.digest)?.is_none() {
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
    if let Some(why) = manifest.outdated() {
        // Still restored: it works, it only lacks what newer builds add; a build replaces it.
        tracing::warn!(template = %r, "{why}; launching from it anyway (POST /api/templates/{}/{}/{}/build makes a new one)", r.namespace, r.name, r.version);
    }
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
        // A cold boot: the file, no hook (this template has no on_every_boot).
        let booted = guest_setup(&store, &c, false).unwrap().unwrap();
        assert!(booted.hook.is_none() && booted.files.len() == 1);
        assert!(booted.stream.is_none());
        assert!(shutdown_setup(&store, &c).unwrap().is_none());
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

    #[test]
    fn every_boot_shutdown_and_stream_come_from_the_template() {
        let (_d, store) = crate::store::test_store();
        super::super::seed(&store).unwrap();
        let t = super::super::validate_bytes(
            br#"api_version: orgo.ai/v1
name: h@1.0.0
secrets: [{name: sk, optional: true}]
hooks: {on_every_boot: "echo boot", on_resume: "echo resumed", on_shutdown: "echo bye"}
streaming: [{name: live, url: "rtmp://127.0.0.1/live", key: {secret: sk}, autostart: true}]
"#,
        )
        .unwrap();
        store
            .publish_template(&t.reference("default"), &t.digest, &t.canonical, false)
            .unwrap();
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let keyed = computer(&store, &ws.id, "default/h@1.0.0");
        store
            .set_computer_secrets(
                &keyed,
                &Secrets([("sk".into(), "sk-Stream-1".into())].into()),
            )
            .unwrap();
        let cold = guest_setup(&store, &keyed, false).unwrap().unwrap();
        let hook = cold.hook.unwrap();
        assert_eq!(hook.label, "hooks.on_every_boot");
        assert_eq!(hook.on_failure, "the computer runs on");
        let stream = cold.stream.unwrap();
        assert_eq!(
            (stream.label.as_str(), stream.request.stream_key.as_str()),
            ("streaming.live", "sk-Stream-1")
        );
        assert_eq!(
            guest_setup(&store, &keyed, true)
                .unwrap()
                .unwrap()
                .hook
                .unwrap()
                .label,
            "hooks.on_resume"
        );
        let stop = shutdown_setup(&store, &keyed).unwrap().unwrap();
        assert_eq!(
            (stop.hook.label.as_str(), stop.hook.on_failure),
            ("hooks.on_shutdown", "the stop goes on")
        );
        // The optional key not given: no stream, a warning that names it, no key anywhere.
        let bare = computer(&store, &ws.id, "default/h@1.0.0");
        assert!(guest_setup(&store, &bare, false)
            .unwrap()
            .unwrap()
            .stream
            .is_none());
        let log = store.launch_events(&bare).unwrap();
        let last = log.last().unwrap();
        assert_eq!(
            (last.level.as_str(), last.step.as_str()),
            ("warn", "streaming.live")
        );
        assert!(last.line.contains("not given"), "{}", last.line);
        // A build computer gets no shutdown hook either.
        let builds = store
            .create_workspace(BUILD_WORKSPACE, WorkspaceStatus::Active, None)
            .unwrap();
        let build = computer(&store, &builds.id, "default/h@1.0.0");
        assert!(shutdown_setup(&store, &build).unwrap().is_none());
        assert!(guest_setup(&store, &build, false).unwrap().is_none());
    }
}
