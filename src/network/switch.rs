//! Whether the daemon gives computers a network: `[network] enabled` (`"auto"` by default, or
//! `true`/`false`) and the host's abilities decide, and the log says which it is and why.

use std::sync::Arc;

use serde::Deserialize;

use super::{Network, NetworkConfig, NetworkError};

/// `[network] enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Switch {
    /// On where the host can do it (it can run VMs, deskd has the capabilities, nf_tables and
    /// a resolver are there); otherwise off, said in the log, and computers start without one.
    #[default]
    Auto,
    /// Required: the daemon does not start without it, and a computer whose network cannot be
    /// set up does not start.
    On,
    /// No computer has a network card.
    Off,
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Switch, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Bool(bool),
            Word(String),
        }
        match Given::deserialize(d)? {
            Given::Bool(true) => Ok(Switch::On),
            Given::Bool(false) => Ok(Switch::Off),
            Given::Word(w) if w == "auto" => Ok(Switch::Auto),
            Given::Word(w) => Err(serde::de::Error::custom(format!(
                "network.enabled must be true, false or \"auto\", not {w:?}"
            ))),
        }
    }
}

/// What the daemon runs with.
pub struct Started {
    /// `None`: computers get no network card.
    pub network: Option<Arc<Network>>,
    /// A computer whose network cannot be set up fails to start (`enabled = true`); otherwise it
    /// starts without one.
    pub required: bool,
}

/// Linux capability numbers deskd's network set-up needs.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Why this process cannot make network namespaces and firewall rules, if it cannot.
fn missing_capabilities(status: &str) -> Option<String> {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "deskd lacks {} (run it as root, as systemd/deskd.service does)",
            missing.join(" and ")
        )
    })
}

/// Starts guest networking as `[network] enabled` and the host allow. `can_run_vms`: whether
/// this host can run computers at all (without, `auto` leaves the host's network untouched). An
/// error only for `enabled = true`.
pub async fn start(config: &NetworkConfig, can_run_vms: bool) -> Result<Started, NetworkError> {
    let off = |why: &str| {
        tracing::warn!(
            "guest networking is off: {why}. Computers start without a network card; set \
             [network] enabled = true to make this an error, or false to silence it."
        );
        Ok(Started {
            network: None,
            required: false,
        })
    };
    match config.enabled {
        Switch::Off => {
            tracing::info!(
                "guest networking is off ([network] enabled = false): computers have no network card"
            );
            Ok(Started {
                network: None,
                required: false,
            })
        }
        Switch::On => {
            let network = Network::start(config.clone()).await?;
            tracing::info!("guest networking is on ([network] enabled = true)");
            Ok(Started {
                network: Some(network),
                required: true,
            })
        }
        Switch::Auto => {
            if !can_run_vms {
                return off("this host cannot run computers");
            }
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            if let Some(why) = missing_capabilities(&status) {
                return off(&why);
            }
            match Network::start(config.clone()).await {
                Ok(network) => {
                    tracing::info!(
                        "guest networking is on (the host can do it; [network] enabled = \"auto\")"
                    );
                    Ok(Started {
                        network: Some(network),
                        required: false,
                    })
                }
                Err(e) => off(&e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        enabled: Switch,
    }

    #[test]
    fn enabled_is_true_false_or_auto() {
        let parse = |t: &str| toml::from_str::<Doc>(t).map(|d| d.enabled);
        assert_eq!(parse("enabled = true").unwrap(), Switch::On);
        assert_eq!(parse("enabled = false").unwrap(), Switch::Off);
        assert_eq!(parse("enabled = \"auto\"").unwrap(), Switch::Auto);
        let err = parse("enabled = \"yes\"").unwrap_err().to_string();
        assert!(err.contains("true, false or \"auto\""), "{err}");
        assert_eq!(NetworkConfig::default().enabled, Switch::Auto);
    }

    #[test]
    fn capabilities_are_read_from_the_status_file() {
        let root = "Name:\tdeskd\nCapEff:\t000001ffffffffff\n";
        assert_eq!(missing_capabilities(root), None);
        let user = "CapEff:\t0000000000000000\n";
        let why = missing_capabilities(user).unwrap();
        assert!(why.contains("CAP_NET_ADMIN and CAP_SYS_ADMIN"), "{why}");
        let net_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_NET_ADMIN);
        assert!(missing_capabilities(&net_only)
            .unwrap()
            .contains("CAP_SYS_ADMIN"));
    }

    #[tokio::test]
    async fn auto_on_a_host_that_cannot_run_computers_is_off_without_touching_the_host() {
        let started = start(&NetworkConfig::default(), false).await.unwrap();
        assert!(started.network.is_none() && !started.required);
        let off = NetworkConfig {
            enabled: Switch::Off,
            ..NetworkConfig::default()
        };
        assert!(start(&off, true).await.unwrap().network.is_none());
    }
}
