//! What a template gives a computer launched from it beyond its hardware
//! ([`super::vm_builder::template_hardware`]): its idle suspend, its egress policy and its
//! bandwidth. Fields of the create request override each of these (templates.md); a clone keeps
//! its source's.

use serde_json::json;

use super::document::Document;
use super::rules::rule_json;
use crate::network::EgressPolicy;

/// The API's most for `bandwidth_limit_mbps`, which the template's `bandwidth_mbps` feeds.
pub const MAX_BANDWIDTH_MBPS: u64 = 100_000;

/// A new computer's settings taken from its template where the create leaves them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchDefaults {
    /// `hardware.auto_stop_minutes` (0 = never, as in the API).
    pub auto_stop_minutes: Option<u32>,
    /// `egress_policy`, in the network module's typed form.
    pub egress_policy: Option<EgressPolicy>,
    /// `hardware.bandwidth_mbps`; 0 (unlimited) is no limit.
    pub bandwidth_limit_mbps: Option<u32>,
}

/// The defaults of a validated document. Its egress rules passed the network module's grammar at
/// validation (`rules::check_egress`), so converting them cannot fail; if it ever did, the launch
/// would refuse rather than run a computer without the policy its template asked for.
pub fn launch_defaults(doc: &Document) -> Result<LaunchDefaults, String> {
    let hw = doc.hardware.clone().unwrap_or_default();
    let egress_policy = match &doc.egress_policy {
        None => None,
        Some(p) => {
            let rules: Vec<_> = p.rules.iter().flatten().map(|r| rule_json(r)).collect();
            let policy = EgressPolicy::from_json(&json!({"mode": p.mode, "rules": rules}))
                .map_err(|e| format!("the template's {e}"))?;
            Some(policy)
        }
    };
    let bandwidth_limit_mbps = match hw.bandwidth_mbps {
        None | Some(0) => None,
        Some(n) if n > MAX_BANDWIDTH_MBPS => {
            return Err(format!(
                "the template's hardware.bandwidth_mbps {n} is over {MAX_BANDWIDTH_MBPS}: use 0 for no limit"
            ))
        }
        Some(n) => Some(n as u32),
    };
    Ok(LaunchDefaults {
        auto_stop_minutes: hw.auto_stop_minutes,
        egress_policy,
        bandwidth_limit_mbps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::policy::{Mode, Target};

    fn doc(yaml: &str) -> Document {
        super::super::validate_bytes(yaml.as_bytes())
            .unwrap_or_else(|e| panic!("{yaml}: {e:?}"))
            .document
    }

    #[test]
    fn a_template_without_them_gives_nothing() {
        let d = doc("api_version: orgo.ai/v1\nname: plain@1.0.0\n");
        assert_eq!(launch_defaults(&d).unwrap(), LaunchDefaults::default());
    }

    #[test]
    fn egress_rules_become_the_network_policy() {
        let d = doc(concat!(
            "api_version: orgo.ai/v1\nname: fenced@1.0.0\n",
            "egress_policy: {mode: allow, rules: [\"pypi.org\", \"*.pythonhosted.org\", \"10.0.2.0/24\", \"192.0.2.7\"]}\n",
        ));
        let p = launch_defaults(&d).unwrap().egress_policy.unwrap();
        assert_eq!(p.mode, Mode::Allow);
        let targets: Vec<String> = p
            .rules
            .iter()
            .map(|r| match &r.target {
                Target::Domain(d) => format!("domain {d}"),
                Target::Ip(ip) => format!("ip {ip}"),
                Target::Cidr(c) => format!("cidr {c}"),
            })
            .collect();
        assert_eq!(
            targets,
            [
                "domain pypi.org",
                "domain *.pythonhosted.org",
                "cidr 10.0.2.0/24",
                "ip 192.0.2.7"
            ]
        );
    }

    #[test]
    fn bandwidth_and_idle_suspend_carry_over_and_zero_bandwidth_is_no_limit() {
        let d = doc(concat!(
            "api_version: orgo.ai/v1\nname: slow@1.0.0\n",
            "hardware: {bandwidth_mbps: 10, auto_stop_minutes: 15}\n",
        ));
        let got = launch_defaults(&d).unwrap();
        assert_eq!(got.bandwidth_limit_mbps, Some(10));
        assert_eq!(got.auto_stop_minutes, Some(15));
        let d = doc("api_version: orgo.ai/v1\nname: free@1.0.0\nhardware: {bandwidth_mbps: 0}\n");
        assert_eq!(launch_defaults(&d).unwrap().bandwidth_limit_mbps, None);
    }

    #[test]
    fn a_bandwidth_over_the_apis_most_is_refused_by_validation() {
        let e = super::super::validate_bytes(
            b"api_version: orgo.ai/v1\nname: fast@1.0.0\nhardware: {bandwidth_mbps: 100001}\n",
        )
        .expect_err("100001 Mbit/s validated");
        assert!(
            format!("{e:?}").contains("hardware.bandwidth_mbps"),
            "{e:?}"
        );
    }
}
