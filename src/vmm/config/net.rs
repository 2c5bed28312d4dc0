//! The network cards of a VM: which TAP device backs each virtio-net card, its MAC address and
//! its rate limit. The daemon's network set-up produces these; the VMM's device consumes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest TAP interface name the kernel accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;

/// Why a network card's configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    #[error("bad MAC address {0:?}: expected six hex pairs like 52:54:00:12:34:56")]
    MacSyntax(String),
    #[error("the MAC address {0} is a multicast address (lowest bit of the first byte set); use a unicast one such as 52:54:00:12:34:56")]
    MacMulticast(MacAddr),
    #[error("the MAC address 00:00:00:00:00:00 is not a valid card address; give a unicast one such as 52:54:00:12:34:56")]
    MacZero,
    #[error(
        "bad TAP name {0:?}: it must be 1-{MAX_TAP_NAME_LEN} bytes without '/', whitespace or NUL"
    )]
    TapName(String),
    #[error("bad TAP descriptor {0}: it must be an inherited descriptor above 2 (0-2 are stdio)")]
    TapFd(i32),
    #[error("TAP descriptor {0} is given to more than one network card; give each card its own")]
    DuplicateFd(i32),
    #[error("the {0} limit is 0, which would stop all traffic; leave it out for no limit")]
    ZeroLimit(&'static str),
    #[error("bad --net value {arg:?}: {why}; expected tap=NAME|fd=N,mac=MAC[,bandwidth=BYTES_PER_SEC][,pps=PACKETS_PER_SEC]")]
    Syntax { arg: String, why: String },
}

/// An Ethernet MAC address, written as `52:54:00:12:34:56`. Parsing and deserialising accept
/// only addresses a network card may own: unicast and not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The address from its bytes, if a card may own it.
    pub fn new(bytes: [u8; 6]) -> Result<MacAddr, NetConfigError> {
        let mac = MacAddr(bytes);
        if bytes == [0; 6] {
            Err(NetConfigError::MacZero)
        } else if bytes[0] & 1 != 0 {
            Err(NetConfigError::MacMulticast(mac))
        } else {
            Ok(mac)
        }
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<MacAddr, NetConfigError> {
        let syntax = || NetConfigError::MacSyntax(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        MacAddr::new(bytes)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = NetConfigError;

    fn try_from(s: String) -> Result<MacAddr, NetConfigError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Where a card's TAP device comes from: `{"fd":3}` (already open, inherited from the process
/// that started the VMM, e.g. opened inside the computer's network namespace) or
/// `{"name":"tap0"}` (opened by the VMM in its own network namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TapSource {
    Fd(i32),
    Name(String),
}

impl TapSource {
    pub fn validate(&self) -> Result<(), NetConfigError> {
        match self {
            TapSource::Fd(fd) if *fd < 3 => Err(NetConfigError::TapFd(*fd)),
            TapSource::Fd(_) => Ok(()),
            TapSource::Name(name) => {
                let bad = name.is_empty()
                    || name.len() > MAX_TAP_NAME_LEN
                    || name
                        .chars()
                        .any(|c| c == '/' || c == '\0' || c.is_whitespace());
                if bad {
                    Err(NetConfigError::TapName(name.clone()))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A card's token-bucket limit. One configuration applies to each direction separately: a card
/// limited to 1 MB/s may receive 1 MB/s and send 1 MB/s at the same time. Either rate may be
/// absent (not limited); a rate of 0 is refused rather than meaning "no traffic".
///
/// Absent rates serialise as `null`, never left out: the snapshot's configuration is encoded with
/// postcard, which needs every field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRateLimit {
    /// Frame bytes per second (Ethernet frame without the virtio-net header).
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Frames per second.
    #[serde(default)]
    pub packets_per_sec: Option<u64>,
}

impl NetRateLimit {
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.bandwidth_bytes_per_sec == Some(0) {
            return Err(NetConfigError::ZeroLimit("bandwidth_bytes_per_sec"));
        }
        if self.packets_per_sec == Some(0) {
            return Err(NetConfigError::ZeroLimit("packets_per_sec"));
        }
        Ok(())
    }

    /// A bandwidth limit of `mbps` megabits (10^6 bits) per second, as the API's
    /// `bandwidth_limit_mbps` means it.
    pub fn from_megabits_per_sec(mbps: u32) -> NetRateLimit {
        NetRateLimit {
            bandwidth_bytes_per_sec: Some(u64::from(mbps) * 125_000),
            packets_per_sec: None,
        }
    }

    /// True when neither rate is limited.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth_bytes_per_sec.is_none() && self.packets_per_sec.is_none()
    }
}

/// One virtio-net card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP device frames go to and come from.
    pub tap: TapSource,
    /// The card's address as the guest sees it.
    pub mac: MacAddr,
    /// Rate limit; none means unlimited. Changeable while the VM runs (control `set-net-limit`).
    #[serde(default)]
    pub limit: Option<NetRateLimit>,
}

impl NetConfig {
    pub fn validate(&self) -> Result<(), NetConfigError> {
        self.tap.validate()?;
        if let Some(limit) = &self.limit {
            limit.validate()?;
        }
        Ok(())
    }

    /// This card as a `--net` argument (what [`NetArg`] parses), e.g. for a restore that gives
    /// the saved card a new TAP: the MAC is included so that the VMM refuses a snapshot whose
    /// card has another one.
    pub fn to_arg(&self) -> String {
        let mut arg = match &self.tap {
            TapSource::Fd(fd) => format!("fd={fd}"),
            TapSource::Name(name) => format!("tap={name}"),
        };
        arg.push_str(&format!(",mac={}", self.mac));
        if let Some(limit) = &self.limit {
            if let Some(b) = limit.bandwidth_bytes_per_sec {
                arg.push_str(&format!(",bandwidth={b}"));
            }
            if let Some(p) = limit.packets_per_sec {
                arg.push_str(&format!(",pps={p}"));
            }
        }
        arg
    }
}

/// A `--net` argument: `tap=NAME` or `fd=N`, `mac=MAC`, optionally `bandwidth=BYTES_PER_SEC` and
/// `pps=PACKETS_PER_SEC`, comma-separated in any order. `mac` may be left out only where the
/// caller has one already (a restore keeps the saved MAC), hence the `Option`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    pub tap: TapSource,
    pub mac: Option<MacAddr>,
    pub limit: Option<NetRateLimit>,
}

impl FromStr for NetArg {
    type Err = NetConfigError;

    fn from_str(arg: &str) -> Result<NetArg, NetConfigError> {
        let syntax = |why: String| NetConfigError::Syntax {
            arg: arg.to_string(),
            why,
        };
        let number = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| syntax(format!("{key}={value:?} is not a number")))
        };
        let mut tap = None;
        let mut mac = None;
        let mut limit = NetRateLimit::default();
        for item in arg.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| syntax(format!("{item:?} is not key=value")))?;
            let seen = match key {
                "tap" => tap.replace(TapSource::Name(value.to_string())).is_some(),
                "fd" => {
                    let fd = value
                        .parse::<i32>()
                        .map_err(|_| syntax(format!("fd={value:?} is not a descriptor number")))?;
                    tap.replace(TapSource::Fd(fd)).is_some()
                }
                "mac" => mac.replace(value.parse::<MacAddr>()?).is_some(),
                "bandwidth" => limit
                    .bandwidth_bytes_per_sec
                    .replace(number(key, value)?)
                    .is_some(),
                "pps" => limit.packets_per_sec.replace(number(key, value)?).is_some(),
                _ => return Err(syntax(format!("unknown key {key:?}"))),
            };
            if seen {
                return Err(syntax(format!("the TAP or {key:?} is given twice")));
            }
        }
        let tap = tap.ok_or_else(|| syntax("no tap=NAME or fd=N".to_string()))?;
        tap.validate()?;
        limit.validate()?;
        Ok(NetArg {
            tap,
            mac,
            limit: (!limit.is_unlimited()).then_some(limit),
        })
    }
}

impl NetArg {
    /// The card this argument describes, for a VM that boots (a MAC is required).
    pub fn into_config(self, arg: &str) -> Result<NetConfig, NetConfigError> {
        let mac = self.mac.ok_or_else(|| NetConfigError::Syntax {
            arg: arg.to_string(),
            why: "no mac=MAC".to_string(),
        })?;
        Ok(NetConfig {
            tap: self.tap,
            mac,
            limit: self.limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_written_as_an_argument_parses_back_to_itself() {
        for limit in [
            None,
            Some(NetRateLimit::from_megabits_per_sec(10)),
            Some(NetRateLimit {
                bandwidth_bytes_per_sec: None,
                packets_per_sec: Some(500),
            }),
        ] {
            let card = NetConfig {
                tap: TapSource::Fd(3),
                mac: "02:de:5c:00:00:02".parse().unwrap(),
                limit,
            };
            let arg = card.to_arg();
            let back = arg.parse::<NetArg>().unwrap().into_config(&arg).unwrap();
            assert_eq!(back, card, "{arg}");
        }
        assert_eq!(
            NetRateLimit::from_megabits_per_sec(10).bandwidth_bytes_per_sec,
            Some(1_250_000)
        );
    }

    #[test]
    fn mac_addresses_parse_print_and_refuse_what_a_card_cannot_own() {
        let mac: MacAddr = "52:54:00:12:34:5E".parse().unwrap();
        assert_eq!(mac.bytes(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x5e]);
        assert_eq!(mac.to_string(), "52:54:00:12:34:5e");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:zz",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(NetConfigError::MacSyntax(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(NetConfigError::MacZero)
        );
        let err = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(matches!(err, NetConfigError::MacMulticast(_)));
        assert!(err.to_string().contains("multicast"), "{err}");
        assert!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().is_err());
    }

    #[test]
    fn the_json_shape_the_daemon_writes() {
        let card = NetConfig {
            tap: TapSource::Fd(3),
            mac: "52:54:00:12:34:56".parse().unwrap(),
            limit: Some(NetRateLimit {
                bandwidth_bytes_per_sec: Some(1_250_000),
                packets_per_sec: None,
            }),
        };
        let json = serde_json::to_string(&card).unwrap();
        assert_eq!(
            json,
            r#"{"tap":{"fd":3},"mac":"52:54:00:12:34:56","limit":{"bandwidth_bytes_per_sec":1250000,"packets_per_sec":null}}"#
        );
        assert_eq!(serde_json::from_str::<NetConfig>(&json).unwrap(), card);
        // Absent rates may be left out in JSON.
        let short = r#"{"tap":{"fd":3},"mac":"52:54:00:12:34:56","limit":{"bandwidth_bytes_per_sec":1250000}}"#;
        assert_eq!(serde_json::from_str::<NetConfig>(short).unwrap(), card);
        // The snapshot encodes the configuration with postcard: every shape must survive it.
        for c in [
            card.clone(),
            NetConfig {
                tap: TapSource::Name("tap0".into()),
                limit: None,
                ..card.clone()
            },
        ] {
            let bytes = postcard::to_stdvec(&c).unwrap();
            assert_eq!(postcard::from_bytes::<NetConfig>(&bytes).unwrap(), c);
        }
        let named: NetConfig =
            serde_json::from_str(r#"{"tap":{"name":"tap0"},"mac":"52:54:00:00:00:01"}"#).unwrap();
        assert_eq!(named.tap, TapSource::Name("tap0".into()));
        assert_eq!(named.limit, None);

        let err =
            serde_json::from_str::<NetConfig>(r#"{"tap":{"fd":3},"mac":"01:00:00:00:00:00"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("multicast"), "{err}");
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap":{"fd":3},"mac":"x"}"#).is_err());
        assert!(serde_json::from_str::<NetConfig>(
            r#"{"tap":{"fd":3,"name":"a"},"mac":"52:54:00:00:00:01"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<NetConfig>(
            r#"{"tap":{"fd":3},"mac":"52:54:00:00:00:01","limits":{}}"#
        )
        .is_err());
    }

    #[test]
    fn sources_and_limits_are_validated() {
        assert!(TapSource::Fd(3).validate().is_ok());
        assert_eq!(TapSource::Fd(2).validate(), Err(NetConfigError::TapFd(2)));
        assert!(TapSource::Name("tap-0123456789a".into()).validate().is_ok());
        for bad in ["", "tap-0123456789ab", "a/b", "a b"] {
            assert!(TapSource::Name(bad.into()).validate().is_err(), "{bad}");
        }
        let zero = NetRateLimit {
            bandwidth_bytes_per_sec: None,
            packets_per_sec: Some(0),
        };
        assert_eq!(
            zero.validate(),
            Err(NetConfigError::ZeroLimit("packets_per_sec"))
        );
        assert!(NetRateLimit::default().is_unlimited());
    }

    #[test]
    fn net_argument_syntax() {
        let arg: NetArg = "tap=tap0,mac=52:54:00:00:00:02,bandwidth=1000,pps=50"
            .parse()
            .unwrap();
        assert_eq!(arg.tap, TapSource::Name("tap0".into()));
        assert_eq!(
            arg.limit,
            Some(NetRateLimit {
                bandwidth_bytes_per_sec: Some(1000),
                packets_per_sec: Some(50)
            })
        );
        let card = arg.into_config("x").unwrap();
        assert_eq!(card.mac.to_string(), "52:54:00:00:00:02");
        let arg: NetArg = "fd=7".parse().unwrap();
        assert_eq!(
            (arg.tap.clone(), arg.mac, arg.limit),
            (TapSource::Fd(7), None, None)
        );
        assert!(arg
            .into_config("fd=7")
            .unwrap_err()
            .to_string()
            .contains("no mac"));
        for bad in [
            "mac=52:54:00:00:00:02",
            "tap=a,fd=4,mac=52:54:00:00:00:02",
            "tap=a,speed=3",
            "tap=a,pps=x",
            "tap=a,pps=0",
            "tap",
            "fd=1",
        ] {
            assert!(bad.parse::<NetArg>().is_err(), "{bad}");
        }
    }
}
