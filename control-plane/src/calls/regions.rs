//! Which region a client belongs to (pure). In order: a valid client hint,
//! the lowest RTT among the probes the client reports, the region header
//! the operator's load balancer sets, the client address's range, and the
//! default region. Each step ignores what names no configured region, so a
//! client cannot pick a region that does not exist.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::config::CallsConfig;

/// The largest RTT a probe may report, ms (anything above is junk).
const MAX_PROBE_RTT_MS: f64 = 60_000.0;

/// Whether `name` can be a region name: 1–32 of `a-z 0-9 -`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.split_once('/')?;
        let network: IpAddr = addr.trim().parse().ok()?;
        let prefix: u8 = prefix.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    /// Whether `addr` is in the range (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(a)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_eq(u128::from(net), u128::from(a), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    a & mask == b & mask
}

/// An RTT the client measured to a region's probe URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// The region.
    pub region: String,
    /// Round-trip time, milliseconds.
    pub rtt_ms: f64,
}

/// Which rule picked the region (returned to the client, and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegionSource {
    /// The client's hint.
    Hint,
    /// The client's RTT probes.
    Probe,
    /// The load balancer's header.
    Header,
    /// The client address's range.
    Cidr,
    /// Nothing else applied.
    Default,
}

/// What is known about a client when it joins.
#[derive(Debug, Default)]
pub struct ClientLocation<'a> {
    /// The region it asked for.
    pub hint: Option<&'a str>,
    /// Its probe results.
    pub probes: &'a [Probe],
    /// The load balancer's region header.
    pub header: Option<&'a str>,
    /// Its address.
    pub addr: Option<IpAddr>,
}

/// The configured regions, ready to resolve clients.
#[derive(Debug, Clone)]
pub struct Regions {
    names: Vec<String>,
    cidrs: Vec<(Cidr, String)>,
    default: String,
}

impl Regions {
    /// From validated configuration (unparsable ranges are skipped; the
    /// validator has already refused them).
    pub fn new(config: &CallsConfig) -> Self {
        Regions {
            names: config.regions.iter().map(|r| r.name.clone()).collect(),
            cidrs: config
                .region_cidrs
                .iter()
                .filter_map(|c| Some((Cidr::parse(&c.cidr)?, c.region.clone())))
                .collect(),
            default: config.default_region.clone(),
        }
    }

    fn known(&self, name: &str) -> Option<&str> {
        let name = name.trim();
        self.names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    /// The client's region and the rule that chose it.
    pub fn resolve(&self, client: &ClientLocation<'_>) -> (String, RegionSource) {
        if let Some(name) = client.hint.and_then(|h| self.known(h)) {
            return (name.to_owned(), RegionSource::Hint);
        }
        let best_probe = client
            .probes
            .iter()
            .filter(|p| p.rtt_ms.is_finite() && (0.0..=MAX_PROBE_RTT_MS).contains(&p.rtt_ms))
            .filter_map(|p| Some((self.known(&p.region)?, p.rtt_ms)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((name, _)) = best_probe {
            return (name.to_owned(), RegionSource::Probe);
        }
        if let Some(name) = client.header.and_then(|h| self.known(h)) {
            return (name.to_owned(), RegionSource::Header);
        }
        if let Some(addr) = client.addr
            && let Some((_, name)) = self.cidrs.iter().find(|(cidr, _)| cidr.contains(addr))
        {
            return (name.clone(), RegionSource::Cidr);
        }
        (self.default.clone(), RegionSource::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::config::{CidrRegionConfig, RegionConfig};

    fn regions() -> Regions {
        let region = |name: &str| RegionConfig {
            name: name.into(),
            latitude: 0.0,
            longitude: 0.0,
            probe_url: None,
        };
        Regions::new(&CallsConfig {
            regions: vec![region("eu"), region("us"), region("ap")],
            default_region: "eu".into(),
            region_cidrs: vec![
                CidrRegionConfig {
                    cidr: "10.2.0.0/16".into(),
                    region: "ap".into(),
                },
                CidrRegionConfig {
                    cidr: "10.0.0.0/8".into(),
                    region: "us".into(),
                },
                CidrRegionConfig {
                    cidr: "2001:db8::/32".into(),
                    region: "ap".into(),
                },
            ],
            ..CallsConfig::default()
        })
    }

    #[test]
    fn each_rule_applies_in_order_and_unknown_names_fall_through() {
        let r = regions();
        let probes = [
            Probe {
                region: "us".into(),
                rtt_ms: 80.0,
            },
            Probe {
                region: "ap".into(),
                rtt_ms: 20.0,
            },
            Probe {
                region: "mars".into(),
                rtt_ms: 1.0,
            },
            Probe {
                region: "us".into(),
                rtt_ms: f64::NAN,
            },
        ];
        let addr = Some("10.2.3.4".parse().unwrap());
        let all = ClientLocation {
            hint: Some("US"),
            probes: &probes,
            header: Some("eu"),
            addr,
        };
        assert_eq!(r.resolve(&all), ("us".into(), RegionSource::Hint));
        let bad_hint = ClientLocation {
            hint: Some("mars"),
            ..all
        };
        assert_eq!(r.resolve(&bad_hint), ("ap".into(), RegionSource::Probe));
        let no_probes = ClientLocation {
            probes: &[],
            ..bad_hint
        };
        assert_eq!(r.resolve(&no_probes), ("eu".into(), RegionSource::Header));
        let no_header = ClientLocation {
            header: Some("nowhere"),
            ..no_probes
        };
        assert_eq!(
            r.resolve(&no_header),
            ("ap".into(), RegionSource::Cidr),
            "most specific range first"
        );
        let other_addr = ClientLocation {
            addr: Some("10.9.0.1".parse().unwrap()),
            ..no_header
        };
        assert_eq!(r.resolve(&other_addr), ("us".into(), RegionSource::Cidr));
        let mapped = ClientLocation {
            addr: Some("::ffff:10.2.0.9".parse().unwrap()),
            ..other_addr
        };
        assert_eq!(r.resolve(&mapped), ("ap".into(), RegionSource::Cidr));
        let nothing = ClientLocation {
            addr: Some("192.0.2.1".parse().unwrap()),
            ..mapped
        };
        assert_eq!(r.resolve(&nothing), ("eu".into(), RegionSource::Default));
    }

    #[test]
    fn ranges_parse_and_match() {
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0.0").is_none());
        assert!(Cidr::parse("nope/8").is_none());
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("203.0.113.7".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }
}
