//! `[control_plane.calls]` and `[control_plane.cluster]`.

use serde::{Deserialize, Serialize};
use service::{Validate, Validator};

/// Calls, regions, ICE servers and node liveness.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// An unanswered call becomes missed after this long, seconds.
    pub ring_timeout_secs: u64,
    /// Lifetime of join tokens, seconds (they only open an edge session).
    /// Also how long a placed session may take to show up in its edge's
    /// heartbeat, and an answered call may stay empty, before removal.
    pub join_token_ttl_secs: u64,
    /// How often nodes heartbeat, seconds. A node silent for three
    /// intervals leaves placement and its participants migrate.
    pub heartbeat_interval_secs: u64,
    /// How often each replica looks for due ring deadlines and dead nodes,
    /// milliseconds.
    pub sweep_interval_ms: u64,
    /// The regions edges may register in.
    pub regions: Vec<RegionConfig>,
    /// Where clients go when nothing else says.
    pub default_region: String,
    /// Header the operator's load balancer sets to the client's region
    /// (e.g. `cf-ipcountry` mapped to a region, or `x-cascade-region`).
    pub region_header: Option<String>,
    /// Client address ranges and their regions, most specific first.
    pub region_cidrs: Vec<CidrRegionConfig>,
    /// STUN server URLs handed to clients (`stun:host:3478`).
    pub stun_urls: Vec<String>,
    /// TURN server URLs (`turn:host:3478?transport=udp`, `turns:…`).
    pub turn_urls: Vec<String>,
    /// Shared secret of the TURN servers' REST API (coturn
    /// `static-auth-secret`). Unset: TURN URLs are not handed out.
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials, seconds.
    pub turn_credential_ttl_secs: u64,
    /// Where edges' signaling may live, as Content-Security-Policy sources
    /// (`wss://*.example.com`, `ws://127.0.0.1:*`): the web page may open
    /// WebSockets there. The origins of the edges registered when a page
    /// is served are allowed too, but a page opened before an edge joined
    /// only reaches it through these.
    pub edge_origins: Vec<String>,
}

/// One region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Name (`eu-west`): what nodes register with and clients hint.
    pub name: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// URL clients time to measure their RTT to the region.
    #[serde(default)]
    pub probe_url: Option<String>,
}

/// A client address range that belongs to a region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRegionConfig {
    /// `10.1.0.0/16` or `2001:db8::/32`.
    pub cidr: String,
    /// The region's name.
    pub region: String,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_secs: 45,
            join_token_ttl_secs: 120,
            heartbeat_interval_secs: 2,
            sweep_interval_ms: 1000,
            regions: vec![RegionConfig {
                name: "local".into(),
                latitude: 0.0,
                longitude: 0.0,
                probe_url: None,
            }],
            default_region: "local".into(),
            region_header: None,
            region_cidrs: Vec::new(),
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_credential_ttl_secs: 3600,
            edge_origins: Vec::new(),
        }
    }
}

impl Validate for CallsConfig {
    fn validate(&self, v: &mut Validator) {
        let range = |v: &mut Validator, key: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                v.invalid(key, format!("must be between {min} and {max}"));
            }
        };
        range(v, "ring_timeout_secs", self.ring_timeout_secs, 1, 600);
        range(v, "join_token_ttl_secs", self.join_token_ttl_secs, 5, 3600);
        range(
            v,
            "heartbeat_interval_secs",
            self.heartbeat_interval_secs,
            1,
            60,
        );
        range(v, "sweep_interval_ms", self.sweep_interval_ms, 50, 60_000);
        range(
            v,
            "turn_credential_ttl_secs",
            self.turn_credential_ttl_secs,
            60,
            7 * 24 * 3600,
        );
        if self.regions.is_empty() {
            v.invalid("regions", "at least one region is needed");
        }
        let mut seen = std::collections::HashSet::new();
        for region in &self.regions {
            if !super::regions::valid_name(&region.name) {
                v.invalid(
                    "regions",
                    format!(
                        "{:?} is not a region name (1-32 of a-z, 0-9, -)",
                        region.name
                    ),
                );
            }
            if !seen.insert(region.name.as_str()) {
                v.invalid("regions", format!("{:?} appears twice", region.name));
            }
            if !(-90.0..=90.0).contains(&region.latitude)
                || !(-180.0..=180.0).contains(&region.longitude)
            {
                v.invalid(
                    "regions",
                    format!("{}: latitude/longitude out of range", region.name),
                );
            }
        }
        if !seen.contains(self.default_region.as_str()) {
            v.invalid("default_region", "must be one of `regions`");
        }
        for entry in &self.region_cidrs {
            if super::regions::Cidr::parse(&entry.cidr).is_none() {
                v.invalid(
                    "region_cidrs",
                    format!("{:?} is not an address range", entry.cidr),
                );
            }
            if !seen.contains(entry.region.as_str()) {
                v.invalid(
                    "region_cidrs",
                    format!("{:?} is not one of `regions`", entry.region),
                );
            }
        }
        if let Some(header) = &self.region_header
            && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            v.invalid("region_header", "not a valid HTTP header name");
        }
        for (key, urls, schemes) in [
            ("stun_urls", &self.stun_urls, &["stun:", "stuns:"][..]),
            ("turn_urls", &self.turn_urls, &["turn:", "turns:"][..]),
        ] {
            for url in urls {
                if !schemes.iter().any(|s| url.starts_with(s)) {
                    v.invalid(
                        key,
                        format!("{url:?} must start with {}", schemes.join(" or ")),
                    );
                }
            }
        }
        for source in &self.edge_origins {
            if !crate::web::valid_source(source) {
                v.invalid(
                    "edge_origins",
                    format!("{source:?} is not a scheme://host[:port] source (ws, wss, http or https; the host may start with *., the port may be *)"),
                );
            }
        }
        for region in &self.regions {
            if let Some(url) = &region.probe_url
                && crate::web::origin_of(url).is_none()
            {
                v.invalid(
                    "regions",
                    format!("probe_url {url:?} is not an http(s) URL"),
                );
            }
        }
        if !self.turn_urls.is_empty() && self.turn_secret.as_deref().is_none_or(str::is_empty) {
            v.invalid("turn_secret", "TURN URLs need the TURN REST secret");
        }
    }
}

/// `[control_plane.cluster]`: how nodes prove they belong to the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The credential edges and relays present (`Authorization: Bearer`)
    /// on `/internal/v1/...`. Unset: the internal API refuses everyone.
    pub secret: Option<String>,
}

impl Validate for ClusterConfig {
    fn validate(&self, v: &mut Validator) {
        if let Some(secret) = &self.secret
            && secret.len() < 16
        {
            v.invalid("secret", "must be at least 16 characters");
        }
    }
}
