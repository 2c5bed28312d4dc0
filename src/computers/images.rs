//! Which guest image a template reference names: `images/install.sh` puts `system/desktop` in
//! `<data dir>/images/system/desktop/` with a manifest naming its version; a
//! `images/system/desktop/<version>/` folder, if present, wins (several versions side by side).

use std::path::{Path, PathBuf};

use super::backend::BackendError;

/// Files of one guest image (a template's boot artefacts).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

/// The guest image users' templates are built on (a document names no base of its own): their
/// builds boot it, and their computers boot it too whenever they do not start from the
/// template's golden snapshot (its disk then holds what the build made).
pub const BASE_IMAGE: &str = "system/desktop@1.0.0";

/// The image whose kernel and initrd computers of `template_ref` boot: a curated `system/...`
/// template is an installed image of its own; any other template is built on [`BASE_IMAGE`].
pub fn boot_image_ref(template_ref: &str) -> &str {
    if template_ref.starts_with("system/") {
        template_ref
    } else {
        BASE_IMAGE
    }
}

/// The guest image a template reference resolves to, under the data directory's `images/`.
pub fn resolve(images_dir: &Path, template_ref: &str) -> Result<GuestImage, BackendError> {
    let template_ref = boot_image_ref(template_ref);
    // `images/install.sh` puts `system/desktop` in `images/system/desktop/` with a
    // manifest.json naming its version; a `images/system/desktop/<version>/` folder, if
    // present, wins (several versions side by side).
    let (path, version) = template_ref
        .rsplit_once('@')
        .unwrap_or((template_ref, "latest"));
    let versioned = images_dir.join(path).join(version);
    let dir = if versioned.join("kernel").is_file() {
        versioned
    } else {
        images_dir.join(path)
    };
    let image = GuestImage {
        kernel: dir.join("kernel"),
        initrd: dir.join("initrd"),
        rootfs: dir.join("rootfs"),
    };
    for file in [&image.kernel, &image.initrd, &image.rootfs] {
        if !file.is_file() {
            return Err(BackendError::NotReady(format!(
                "the guest image for {template_ref} is not installed: {} is missing. Build and \
                 install it with `make image` (images/build.sh --install DATA_DIR).",
                file.display()
            )));
        }
    }
    let manifest_version = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| m["version"].as_str().map(str::to_string));
    if let Some(installed) = manifest_version {
        if installed != version {
            return Err(BackendError::NotReady(format!(
                "{template_ref} is not installed: {} holds version {installed}",
                dir.display()
            )));
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_image_is_named() {
        let data = tempfile::tempdir().unwrap();
        let images = data.path().join("images");
        let err = resolve(&images, "system/desktop@1.0.0").unwrap_err();
        assert!(
            err.to_string().contains("images/system/desktop/kernel"),
            "{err}"
        );
        // The layout of images/install.sh, with its manifest's version checked.
        let dir = data.path().join("images/system/desktop");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["kernel", "initrd", "rootfs"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::fs::write(dir.join("manifest.json"), br#"{"version":"1.0.0"}"#).unwrap();
        assert_eq!(
            resolve(&images, "system/desktop@1.0.0").unwrap().kernel,
            dir.join("kernel")
        );
        let err = resolve(&images, "system/desktop@2.0.0").unwrap_err();
        assert!(err.to_string().contains("holds version 1.0.0"), "{err}");
        // A user's template boots the base image.
        assert_eq!(
            resolve(&images, "default/my-app@3.1.0").unwrap().kernel,
            dir.join("kernel")
        );
    }
}
