//! The egress policy of a computer (`egress_policy` at create, `GET/PUT
//! /computers/{id}/egress-policy`, and templates): its one typed home, its JSON form and its
//! validation.
//!
//! `mode` says what the rules do. `"block"`: the rules name what the guest may NOT reach and
//! everything else public is allowed (the default, with no rules). `"allow"`: the rules name the
//! only destinations the guest may reach. Domain rules hold for every port (the computer's DNS
//! resolver feeds the answers' addresses into nftables sets); `ports` narrows any rule to those
//! TCP/UDP destination ports.
//!
//! What no policy opens in `block` mode and only an `ip`/`cidr` rule of an `allow` policy opens: the
//! private ranges (RFC 1918, CGNAT 100.64/10), link-local 169.254/16. Addresses learnt from DNS answers
//! never open those ranges (a name resolving to 10.0.0.1 must not be a way into the host's LAN).
//! The host itself, loopback, other guests and multicast are never reachable.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most rules one policy may hold (each becomes nftables rules and set lookups).
pub const MAX_RULES: usize = 256;
/// Most ports one rule may list.
pub const MAX_PORTS_PER_RULE: usize = 16;

/// What the rules of a policy do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only the rules' destinations are reachable.
    Allow,
    /// The rules' destinations are unreachable; everything else public is reachable.
    #[default]
    Block,
}

/// What one rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `example.com` (that name only) or `*.example.com` (every name below it, not the name itself).
    Domain(String),
    Ip(Ipv4Addr),
    Cidr(Cidr),
}

/// An IPv4 network with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The netmask as a number.
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// True when `ip` is inside this network.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// The last address of the network.
    pub fn last(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Parses `a.b.c.d/n`, refusing host bits (the message names the network meant).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR: write it as a.b.c.d/prefix"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| {
            format!("{s:?} is not an IPv4 CIDR (guests have IPv4 only): write it as a.b.c.d/prefix")
        })?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(|| format!("{s:?} has a prefix length that is not 0-32"))?;
        let c = Cidr { addr, prefix };
        let net = Ipv4Addr::from(u32::from(addr) & c.mask());
        if net != addr {
            return Err(format!(
                "{s:?} has host bits set: the network is {net}/{prefix}"
            ));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One rule: a target and, optionally, the only ports it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(flatten)]
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
}

/// A computer's egress policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EgressPolicy {
    pub mode: Mode,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Why a policy was refused; the message names the field or the rule index (for a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress_policy: {0}")]
pub struct PolicyError(pub String);

fn rule_err(i: usize, msg: impl fmt::Display) -> PolicyError {
    PolicyError(format!("rules[{i}]: {msg}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a domain name or `*.`-wildcard and returns it lowercased without a trailing dot.
pub fn check_domain(raw: &str) -> Result<String, String> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    let (wild, rest) = match name.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, name.as_str()),
    };
    if rest.is_empty() || rest.len() > 253 {
        return Err(format!("domain {raw:?} must be 1-253 characters"));
    }
    let labels: Vec<&str> = rest.split('.').collect();
    if wild && labels.len() < 2 {
        return Err(format!(
            "domain {raw:?}: a wildcard must cover a name with at least two labels, e.g. *.example.com"
        ));
    }
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if !ok {
            return Err(format!(
                "domain {raw:?} is not a valid name (letters, digits, '-' per label; a wildcard only as a leading \"*.\")"
            ));
        }
    }
    if rest.parse::<Ipv4Addr>().is_ok() {
        return Err(format!("{raw:?} is an address: use {{\"ip\": {raw:?}}}"));
    }
    Ok(name)
}

fn parse_rule(i: usize, v: &Value) -> Result<Rule, PolicyError> {
    let obj = v
        .as_object()
        .ok_or_else(|| rule_err(i, format!("must be an object, not {}", kind(v))))?;
    let mut target = None;
    let mut ports = None;
    for (k, val) in obj {
        let t = match k.as_str() {
            "domain" => {
                let s = val
                    .as_str()
                    .ok_or_else(|| rule_err(i, "domain must be a string"))?;
                Target::Domain(check_domain(s).map_err(|m| rule_err(i, m))?)
            }
            "ip" => {
                let s = val
                    .as_str()
                    .ok_or_else(|| rule_err(i, "ip must be a string"))?;
                Target::Ip(s.parse().map_err(|_| {
                    rule_err(i, format!("ip {s:?} is not an IPv4 address (guests have IPv4 only)"))
                })?)
            }
            "cidr" => {
                let s = val
                    .as_str()
                    .ok_or_else(|| rule_err(i, "cidr must be a string"))?;
                Target::Cidr(Cidr::parse(s).map_err(|m| rule_err(i, m))?)
            }
            "ports" => {
                ports = Some(parse_ports(i, val)?);
                continue;
            }
            other => {
                return Err(rule_err(
                    i,
                    format!("unknown key {other:?} (a rule has one of domain, ip, cidr, and optional ports)"),
                ))
            }
        };
        if target.replace(t).is_some() {
            return Err(rule_err(
                i,
                "has more than one of domain, ip, cidr: one per rule",
            ));
        }
    }
    let target = target.ok_or_else(|| rule_err(i, "needs one of domain, ip or cidr"))?;
    Ok(Rule { target, ports })
}

fn parse_ports(i: usize, v: &Value) -> Result<Vec<u16>, PolicyError> {
    let list = v.as_array().ok_or_else(|| {
        rule_err(
            i,
            format!("ports must be an array of numbers, not {}", kind(v)),
        )
    })?;
    if list.is_empty() || list.len() > MAX_PORTS_PER_RULE {
        return Err(rule_err(
            i,
            format!("ports must list 1-{MAX_PORTS_PER_RULE} ports (leave it out for every port)"),
        ));
    }
    let mut seen = BTreeSet::new();
    for p in list {
        let n = p
            .as_u64()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| rule_err(i, format!("port {p} is not a number 1-65535")))?;
        seen.insert(n as u16);
    }
    Ok(seen.into_iter().collect())
}

impl EgressPolicy {
    /// Parses and checks the JSON form a client sent.
    pub fn from_json(v: &Value) -> Result<EgressPolicy, PolicyError> {
        let obj = v.as_object().ok_or_else(|| {
            PolicyError(format!(
                "must be an object with mode and rules, not {}",
                kind(v)
            ))
        })?;
        if let Some(k) = obj.keys().find(|k| *k != "mode" && *k != "rules") {
            return Err(PolicyError(format!(
                "unknown key {k:?} (a policy has mode and rules)"
            )));
        }
        let mode = match obj.get("mode") {
            Some(Value::String(s)) if s == "allow" => Mode::Allow,
            Some(Value::String(s)) if s == "block" => Mode::Block,
            None => {
                return Err(PolicyError(
                    "mode is required: \"allow\" or \"block\"".into(),
                ))
            }
            Some(other) => {
                return Err(PolicyError(format!(
                    "mode must be \"allow\" or \"block\", not {other}"
                )))
            }
        };
        let rules = match obj.get("rules") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                if list.len() > MAX_RULES {
                    return Err(PolicyError(format!(
                        "at most {MAX_RULES} rules, got {}",
                        list.len()
                    )));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, r)| parse_rule(i, r))
                    .collect::<Result<_, _>>()?
            }
            Some(other) => {
                return Err(PolicyError(format!(
                    "rules must be an array, not {}",
                    kind(other)
                )))
            }
        };
        Ok(EgressPolicy { mode, rules })
    }

    /// The JSON form (what GET answers and the store keeps).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The policy decision for a DNS name: `Some(rule index)` of the first domain rule that
    /// matches `name` (lowercase, no trailing dot).
    pub fn matching_domain_rule(&self, name: &str) -> Option<usize> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().position(|r| match &r.target {
            Target::Domain(d) => match d.strip_prefix("*.") {
                Some(base) => name.len() > base.len() && name.ends_with(&format!(".{base}")),
                None => *d == name,
            },
            _ => false,
        })
    }

    /// Whether the resolver answers a query for `name`: in `block` mode a name matching a domain
    /// rule is refused only if that rule covers every port (a ports-limited block still lets the
    /// name resolve, the firewall blocks those ports); in `allow` mode a name must match a rule.
    pub fn resolves(&self, name: &str) -> bool {
        match (self.mode, self.matching_domain_rule(name)) {
            (Mode::Allow, m) => m.is_some(),
            (Mode::Block, Some(i)) => self.rules[i].ports.is_some(),
            (Mode::Block, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        EgressPolicy::from_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_rule_kind_and_round_trips() {
        let v = json!({"mode":"allow","rules":[
            {"domain":"Example.COM."},
            {"domain":"*.example.org","ports":[443, 80, 443]},
            {"ip":"1.2.3.4"},
            {"cidr":"10.0.0.0/8","ports":[22]}
        ]});
        let p = EgressPolicy::from_json(&v).unwrap();
        assert_eq!(p.mode, Mode::Allow);
        assert_eq!(p.rules[0].target, Target::Domain("example.com".into()));
        assert_eq!(p.rules[1].ports, Some(vec![80, 443]));
        let back = EgressPolicy::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            p.to_json()["rules"][3],
            json!({"cidr":"10.0.0.0/8","ports":[22]})
        );
    }

    #[test]
    fn errors_name_the_rule_and_the_problem() {
        assert!(err(json!({"mode":"deny"})).contains("mode must be"));
        assert!(err(json!({"rules":[]})).contains("mode is required"));
        assert!(
            err(json!({"mode":"block","rules":[{"ip":"1.2.3.4"},{"ip":"::1"}]}))
                .contains("rules[1]: ip \"::1\"")
        );
        assert!(err(json!({"mode":"block","rules":[{"cidr":"10.0.0.1/8"}]}))
            .contains("rules[0]: \"10.0.0.1/8\" has host bits set: the network is 10.0.0.0/8"));
        assert!(err(json!({"mode":"block","rules":[{"domain":"a.*.com"}]})).contains("rules[0]"));
        assert!(err(json!({"mode":"block","rules":[{"domain":"*.com"}]})).contains("two labels"));
        assert!(
            err(json!({"mode":"block","rules":[{"ip":"1.2.3.4","domain":"x.com"}]}))
                .contains("more than one")
        );
        assert!(err(json!({"mode":"block","rules":[{"ports":[1]}]})).contains("needs one of"));
        assert!(
            err(json!({"mode":"block","rules":[{"ip":"1.1.1.1","ports":[0]}]})).contains("port 0")
        );
        assert!(
            err(json!({"mode":"block","rules":[{"ip":"1.1.1.1","ports":[]}]}))
                .contains("1-16 ports")
        );
        assert!(
            err(json!({"mode":"block","rules":[{"host":"x"}]})).contains("unknown key \"host\"")
        );
        assert!(err(json!({"mode":"block","extra":1})).contains("unknown key \"extra\""));
        assert!(err(json!({"mode":"block","rules":[{"domain":"1.2.3.4"}]})).contains("use {\"ip\""));
        let many: Vec<Value> = (0..=MAX_RULES).map(|_| json!({"ip":"1.1.1.1"})).collect();
        assert!(err(json!({"mode":"block","rules":many})).contains("at most 256"));
    }

    #[test]
    fn domain_matching_and_resolver_decision() {
        let p = EgressPolicy::from_json(&json!({"mode":"block","rules":[
            {"domain":"blocked.test"},{"domain":"*.wild.test"},{"domain":"ports.test","ports":[25]}
        ]}))
        .unwrap();
        assert!(!p.resolves("blocked.test"));
        assert!(!p.resolves("BLOCKED.test."));
        assert!(p.resolves("sub.blocked.test"));
        assert!(!p.resolves("a.wild.test"));
        assert!(p.resolves("wild.test"));
        assert!(p.resolves("ports.test"));
        assert!(p.resolves("other.test"));
        let a = EgressPolicy::from_json(&json!({"mode":"allow","rules":[{"domain":"ok.test"}]}))
            .unwrap();
        assert!(a.resolves("ok.test"));
        assert!(!a.resolves("other.test"));
    }

    #[test]
    fn cidr_math() {
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(c.contains("192.168.9.9".parse().unwrap()));
        assert!(!c.contains("192.169.0.0".parse().unwrap()));
        assert_eq!(c.last(), "192.168.255.255".parse::<Ipv4Addr>().unwrap());
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().mask(), 0);
    }
}
