//! What a launch checks before it makes a computer from a template: fields this host cannot
//! honour (a GPU, a region: deskd is one machine without GPUs for guests) and the secrets the
//! template requires. A document with them is valid (validate and publish accept it, so one file
//! serves the hosted service and deskd alike); a launch answers 400 naming each of them. So does
//! a runtime file whose source this deskd cannot fetch at launch (only inline text and
//! `secret://NAME` are).

use std::collections::BTreeMap;

use super::document::{Document, Gpu, When};
use super::refs::TemplateRef;

/// What this host can give a computer beyond CPU, memory and disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCapabilities {
    /// GPUs that can be passed to guests (none today).
    pub gpus: Vec<Gpu>,
    /// Region names this host counts as (none: a self-hosted machine is not in a region).
    pub regions: Vec<String>,
}

/// Why a launch of a template is refused (400); the message names every field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LaunchRefused {
    /// The document fields (or create fields) at fault, e.g. `hardware.gpu`, `secrets.api_key`.
    pub fields: Vec<String>,
    pub message: String,
}

/// Refuses a launch of `doc` (the resolved document of `reference`) when it asks for hardware
/// this host does not have.
pub fn check_hardware(
    reference: &TemplateRef,
    doc: &Document,
    host: &HostCapabilities,
) -> Result<(), LaunchRefused> {
    let Some(hw) = &doc.hardware else {
        return Ok(());
    };
    let mut fields = Vec::new();
    let mut reasons = Vec::new();
    if let Some(gpu) = hw.gpu.filter(|g| *g != Gpu::None) {
        if !host.gpus.contains(&gpu) {
            let name = serde_json::to_value(gpu)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            fields.push("hardware.gpu".to_string());
            reasons.push(format!(
                "hardware.gpu {name:?} (this host has no GPU to give a computer)"
            ));
        }
    }
    if let Some(n) = hw.gpu_count.filter(|n| *n > 0) {
        if host.gpus.is_empty() {
            fields.push("hardware.gpu_count".to_string());
            reasons.push(format!(
                "hardware.gpu_count {n} (this host has no GPU to give a computer)"
            ));
        }
    }
    if let Some(region) = hw.region {
        let name = serde_json::to_value(region)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if !host.regions.contains(&name) {
            fields.push("hardware.region".to_string());
            reasons.push(format!(
                "hardware.region {name:?} (deskd is one machine, not a region)"
            ));
        }
    }
    if fields.is_empty() {
        return Ok(());
    }
    Err(LaunchRefused {
        message: format!(
            "Template {reference} cannot run on this host: it asks for {}. Publish a version without {} (gpu: none, no region) to launch it here.",
            reasons.join(" and "),
            fields.join(" and ")
        ),
        fields,
    })
}

/// Refuses a launch that lacks a required secret or gives one the template does not declare.
pub fn check_secrets(
    reference: &TemplateRef,
    doc: &Document,
    given: &BTreeMap<String, String>,
) -> Result<(), LaunchRefused> {
    let declared = doc.secrets.as_deref().unwrap_or_default();
    let missing: Vec<&str> = declared
        .iter()
        .filter(|s| !s.optional.unwrap_or(false))
        .filter(|s| given.get(&s.name).is_none_or(|v| v.is_empty()))
        .map(|s| s.name.as_str())
        .collect();
    let unknown: Vec<&str> = given
        .keys()
        .filter(|k| !declared.iter().any(|s| &s.name == *k))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "it needs the secret{} {} (give them in the create body: \"secrets\": {{\"{}\": \"...\"}})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            missing[0]
        ));
    }
    if !unknown.is_empty() {
        parts.push(format!(
            "it declares no secret named {} (remove it from secrets)",
            unknown.join(", ")
        ));
    }
    Err(LaunchRefused {
        fields: missing
            .iter()
            .chain(unknown.iter())
            .map(|n| format!("secrets.{n}"))
            .collect(),
        message: format!("Template {reference}: {}.", parts.join("; ")),
    })
}

/// Refuses a launch of `doc` when a runtime file comes from a source other than inline text or
/// `secret://NAME`: a launch has no builder to fetch `file://`, `http(s)://` or `git://` with, and
/// a file silently missing at every start would be worse than a clear 400.
pub fn check_runtime_files(reference: &TemplateRef, doc: &Document) -> Result<(), LaunchRefused> {
    let fields: Vec<String> = doc
        .files
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, f)| f.when == Some(When::Runtime) && f.inline.is_none())
        .filter(|(_, f)| {
            !f.from
                .as_deref()
                .is_some_and(|s| s.starts_with("secret://"))
        })
        .map(|(i, _)| format!("files[{i}].from"))
        .collect();
    if fields.is_empty() {
        return Ok(());
    }
    Err(LaunchRefused {
        message: format!(
            "Template {reference} cannot run on this host: {} fetch{} a runtime file from a source this deskd cannot reach at launch (only inline text and secret://NAME are). Make {} a build-time file (when: build) or put its content inline.",
            fields.join(", "),
            if fields.len() > 1 { "" } else { "es" },
            if fields.len() > 1 { "them" } else { "it" },
        ),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::validate::validate_bytes;

    fn doc(yaml: &str) -> (TemplateRef, Document) {
        let t = validate_bytes(yaml.as_bytes()).unwrap();
        (t.reference("default"), t.document)
    }

    #[test]
    fn gpus_and_regions_are_refused_by_name() {
        let (r, d) = doc("api_version: orgo.ai/v1\nname: ml@1.0.0\nhardware: {gpu: h100, gpu_count: 1, region: iad, cpu: 2}\n");
        let e = check_hardware(&r, &d, &HostCapabilities::default()).unwrap_err();
        assert_eq!(
            e.fields,
            ["hardware.gpu", "hardware.gpu_count", "hardware.region"]
        );
        assert!(
            e.message.contains("\"h100\"") && e.message.contains("default/ml@1.0.0"),
            "{}",
            e.message
        );
        let (r, d) = doc(
            "api_version: orgo.ai/v1\nname: ok@1.0.0\nhardware: {gpu: none, cpu: 2, audio: true}\n",
        );
        assert!(check_hardware(&r, &d, &HostCapabilities::default()).is_ok());
        let (r, d) = doc("api_version: orgo.ai/v1\nname: ml@1.0.0\nhardware: {gpu: t4}\n");
        let host = HostCapabilities {
            gpus: vec![Gpu::T4],
            regions: vec![],
        };
        assert!(check_hardware(&r, &d, &host).is_ok());
    }

    #[test]
    fn runtime_files_from_afar_are_refused_by_field() {
        let (r, d) = doc("api_version: orgo.ai/v1\nname: f@1.0.0\nsecrets: [{name: k}]\nfiles:\n  - {to: /a, inline: x, when: runtime}\n  - {to: /b, from: \"secret://k\", when: runtime}\n  - {to: /c, from: \"https://example.com/c\", when: runtime}\n  - {to: /d, from: \"https://example.com/d\"}\n");
        let e = check_runtime_files(&r, &d).unwrap_err();
        assert_eq!(e.fields, ["files[2].from"]);
        assert!(
            e.message.contains("files[2].from fetches") && e.message.contains("f@1.0.0"),
            "{}",
            e.message
        );
        let (r, d) = doc("api_version: orgo.ai/v1\nname: f@1.0.0\nfiles:\n  - {to: /a, inline: x, when: runtime}\n");
        assert!(check_runtime_files(&r, &d).is_ok());
    }

    #[test]
    fn required_secrets_must_be_given() {
        let (r, d) = doc("api_version: orgo.ai/v1\nname: a@1.0.0\nsecrets: [{name: api_key}, {name: extra, optional: true}]\n");
        let mut given = BTreeMap::new();
        let e = check_secrets(&r, &d, &given).unwrap_err();
        assert_eq!(e.fields, ["secrets.api_key"]);
        assert!(e.message.contains("api_key"), "{}", e.message);
        given.insert("api_key".to_string(), "sk-1".to_string());
        assert!(check_secrets(&r, &d, &given).is_ok());
        given.insert("stray".to_string(), "x".to_string());
        assert_eq!(
            check_secrets(&r, &d, &given).unwrap_err().fields,
            ["secrets.stray"]
        );
    }
}
