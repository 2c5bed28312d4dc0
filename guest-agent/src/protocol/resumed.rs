//! After a restore from a snapshot: what the daemon tells the agent before anyone uses the
//! computer again. A restored guest's wall clock is behind by the time it was away (kvmclock goes on
//! from the snapshot instant), and a *copy* of a VM (a clone, a template launch) would otherwise
//! share its source's hostname, machine-id and kernel RNG state, so the daemon gives it a new
//! identity here (Debian's 6.1 cloud kernel has no VMGenID driver to reseed the RNG by itself).

use serde::{Deserialize, Serialize};

/// Smallest and largest amount of fresh entropy a new identity may carry.
pub const ENTROPY_BYTES: std::ops::RangeInclusive<usize> = 32..=512;

/// `POST` [`super::paths::RESUMED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resumed {
    /// The host's wall clock when the request was sent, nanoseconds since the Unix epoch.
    pub host_time_unix_ns: u64,
    /// Present for a copy of a VM: the identity it takes before it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<NewIdentity>,
}

/// Who a copied VM becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIdentity {
    /// One DNS label: letters, digits and `-`, at most 63, not starting or ending with `-`.
    pub hostname: String,
    /// 32 lowercase hex digits, not all zero (the `/etc/machine-id` format).
    pub machine_id: String,
    /// Fresh host entropy for the kernel's RNG, hex ([`ENTROPY_BYTES`] bytes).
    pub entropy_hex: String,
}

/// The answer: what the agent changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedDone {
    /// How far the guest's wall clock was stepped, milliseconds (positive: it was behind).
    pub clock_step_ms: i64,
    /// Whether a new identity was taken.
    pub identity_applied: bool,
}

impl NewIdentity {
    /// Checks every field; the error names the field and the rule.
    pub fn check(&self) -> Result<Vec<u8>, String> {
        if !is_hostname(&self.hostname) {
            return Err(format!(
                "hostname {:?} is not one DNS label (letters, digits, '-', at most 63)",
                self.hostname
            ));
        }
        let id = &self.machine_id;
        if id.len() != 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            || id.bytes().all(|b| b == b'0')
        {
            return Err("machine_id must be 32 lowercase hex digits, not all zero".into());
        }
        let entropy = hex_decode(&self.entropy_hex)
            .ok_or_else(|| "entropy_hex must be an even number of hex digits".to_string())?;
        if !ENTROPY_BYTES.contains(&entropy.len()) {
            return Err(format!(
                "entropy_hex must carry {} to {} bytes (got {})",
                ENTROPY_BYTES.start(),
                ENTROPY_BYTES.end(),
                entropy.len()
            ));
        }
        Ok(entropy)
    }
}

/// Whether `name` is one DNS label (RFC 1123).
pub fn is_hostname(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> NewIdentity {
        NewIdentity {
            hostname: "deskd-0011aabb".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            entropy_hex: hex_encode(&[7u8; 32]),
        }
    }

    #[test]
    fn a_good_identity_passes_and_yields_its_entropy() {
        assert_eq!(identity().check().unwrap(), vec![7u8; 32]);
    }

    #[test]
    fn each_bad_field_is_named() {
        for (patch, field) in [
            (
                NewIdentity {
                    hostname: "-bad".into(),
                    ..identity()
                },
                "hostname",
            ),
            (
                NewIdentity {
                    hostname: "a".repeat(64),
                    ..identity()
                },
                "hostname",
            ),
            (
                NewIdentity {
                    machine_id: "0".repeat(32),
                    ..identity()
                },
                "machine_id",
            ),
            (
                NewIdentity {
                    machine_id: "ABCDEF0123456789ABCDEF0123456789".into(),
                    ..identity()
                },
                "machine_id",
            ),
            (
                NewIdentity {
                    entropy_hex: "abc".into(),
                    ..identity()
                },
                "entropy_hex",
            ),
            (
                NewIdentity {
                    entropy_hex: hex_encode(&[1u8; 8]),
                    ..identity()
                },
                "entropy_hex",
            ),
            (
                NewIdentity {
                    entropy_hex: "zz".repeat(32),
                    ..identity()
                },
                "entropy_hex",
            ),
        ] {
            let err = patch.check().unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
    }

    #[test]
    fn the_wire_form_is_strict() {
        let r = Resumed {
            host_time_unix_ns: 5,
            identity: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"host_time_unix_ns":5}"#);
        assert!(serde_json::from_str::<Resumed>(r#"{"host_time_unix_ns":5,"x":1}"#).is_err());
    }
}
