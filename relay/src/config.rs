//! `[relay]`: the typed configuration of `cascade relay`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::{Validate, Validator};

use crate::addr::NodeAddr;
use crate::tls::{RELAY_SERVER_NAME, TlsFiles};

/// A relay of another region this one dials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its QUIC address (`ip:port` or `host:port`, resolved at each dial).
    pub addr: NodeAddr,
    /// The name its certificate must carry (default
    /// `relay.cascade.internal`, which `cascade certs` puts in every relay's).
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    RELAY_SERVER_NAME.to_owned()
}

/// Settings of one relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// This node's id (unique in the cluster).
    pub node_id: String,
    /// Its region.
    pub region: String,
    /// HTTP: `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// The QUIC endpoint (UDP): edges of the region and other relays.
    pub quic_listen: SocketAddr,
    /// Cluster CA and this node's certificate and key.
    pub tls: TlsFiles,
    /// Relays of other regions to dial. One side of a pair is enough; if
    /// both list each other, the link the smaller node id dialed is kept.
    pub peers: Vec<PeerConfig>,
    /// A link with no packet for this long is dead, milliseconds
    /// (keep-alives go every quarter of it).
    pub link_timeout_ms: u64,
    /// Least time between keyframe requests sent upstream per track, ms.
    pub keyframe_throttle_ms: u64,
    /// After SIGTERM: how long in-flight work gets, seconds.
    pub drain_timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            node_id: "relay-1".into(),
            region: "local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 4470)),
            tls: TlsFiles::in_dir(std::path::Path::new("certs"), "relay-1"),
            peers: Vec::new(),
            link_timeout_ms: 2000,
            keyframe_throttle_ms: 300,
            drain_timeout_secs: 2,
        }
    }
}

impl RelayConfig {
    /// [`RelayConfig::link_timeout_ms`] as a duration.
    pub fn link_timeout(&self) -> Duration {
        Duration::from_millis(self.link_timeout_ms)
    }
}

impl Validate for RelayConfig {
    fn validate(&self, v: &mut Validator) {
        v.check("node_id", service::config::node_id_problem(&self.node_id));
        if self.region.is_empty() {
            v.invalid("region", "must not be empty");
        }
        if !(200..=60_000).contains(&self.link_timeout_ms) {
            v.invalid("link_timeout_ms", "must be between 200 and 60000");
        }
        if self.keyframe_throttle_ms > 10_000 {
            v.invalid("keyframe_throttle_ms", "must be at most 10000");
        }
        if !(1..=600).contains(&self.drain_timeout_secs) {
            v.invalid("drain_timeout_secs", "must be between 1 and 600");
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.addr.as_socket() == Some(self.quic_listen) {
                v.invalid(&format!("peers[{i}].addr"), "is this relay's own address");
            }
        }
    }
}
