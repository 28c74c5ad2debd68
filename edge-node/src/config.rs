//! `[edge]`: the typed configuration of `cascade edge`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::{Validate, Validator};

/// Settings of one edge node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// This node's id in the registry (unique in the cluster).
    pub node_id: String,
    /// Its region (one of the control plane's).
    pub region: String,
    /// HTTP: the signaling WebSocket (`/v1/rtc`) and `/healthz`, `/readyz`,
    /// `/metrics`.
    pub listen: SocketAddr,
    /// The IP the media sockets bind. It must be the exact address clients
    /// reach (str0m drops ICE checks sent to another), unless `public_ip`
    /// says what a 1:1 NAT maps it to.
    pub media_ip: IpAddr,
    /// First media UDP port; worker `i` binds `media_port + i` (0: any free
    /// port for each).
    pub media_port: u16,
    /// The address advertised in ICE candidates, when it differs from
    /// `media_ip` (1:1 NAT).
    pub public_ip: Option<IpAddr>,
    /// The base URL clients use to reach `listen` (`wss://edge-1.example`).
    /// Unset: `ws://<listen>`.
    pub public_url: Option<String>,
    /// Media workers, each with its own socket and calls (0: one per core).
    pub workers: usize,
    /// Send each pass's datagrams as UDP GSO runs per destination
    /// (`quinn-udp`) instead of one `sendto` each. Off by default: str0m
    /// paces a subscriber's packets one per timeout, so a run can only be
    /// formed by holding packets to the end of the pass, which delays them
    /// past the send time str0m's bandwidth estimation recorded
    /// (docs/benchmarks.md, issue 19).
    pub batch_sends: bool,
    /// A call's sessions stay on its home worker (one core) up to this
    /// many; later ones go to the least loaded worker, so a large call uses
    /// every core. Media of its tracks then crosses workers once per frame
    /// and worker, not per subscriber.
    pub spread_calls_above: usize,
    /// An overloaded media worker (its timers running late) lowers and
    /// then pauses the video of the subscribers receiving the most, audio
    /// untouched, instead of letting everyone's media queue up. Off by
    /// default until it is measured where it helps: on a 2-core test
    /// machine it also shed during join storms and probes kept the packet
    /// rate up (docs/benchmarks.md, issue 19).
    pub shed_video_when_overloaded: bool,
    /// Participants this node accepts in all.
    pub capacity: u32,
    /// Participants one call may have on this node.
    pub max_participants_per_call: usize,
    /// A session whose ICE and DTLS are not up this many seconds after its
    /// offer is closed (it would only hold a place).
    pub connect_timeout_secs: u64,
    /// The control plane (`http://cp:8080`): registration, heartbeats,
    /// join-token keys, reports. Unset: standalone, which refuses every
    /// join.
    pub control_plane_url: Option<String>,
    /// More control-plane replicas (or load balancers), tried in order
    /// after `control_plane_url` when it does not answer; the one that
    /// answered last is tried first.
    pub control_plane_fallback_urls: Vec<String>,
    /// This node's credential (`cascade admin node-credential <node_id>`).
    pub credential: Option<String>,
    /// Seconds between heartbeats.
    pub heartbeat_interval_secs: u64,
    /// After SIGTERM: how long participants get to move elsewhere before
    /// the node exits anyway, seconds.
    pub drain_timeout_secs: u64,
    /// The region's relay (`[edge.relay]`). Unset: calls stay on this
    /// node (no cascade to other edges or regions).
    pub relay: Option<crate::relay_link::EdgeRelayConfig>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            node_id: "edge-1".into(),
            region: "local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            media_ip: IpAddr::from([127, 0, 0, 1]),
            media_port: 0,
            public_ip: None,
            public_url: None,
            workers: 0,
            batch_sends: false,
            spread_calls_above: 50,
            shed_video_when_overloaded: false,
            capacity: 500,
            max_participants_per_call: 100,
            connect_timeout_secs: 10,
            control_plane_url: None,
            control_plane_fallback_urls: Vec::new(),
            credential: None,
            heartbeat_interval_secs: 2,
            drain_timeout_secs: 10,
            relay: None,
        }
    }
}

impl EdgeConfig {
    #[cfg(any(test, feature = "testing"))]
    /// A configuration for tests: loopback, free ports, one worker, fast
    /// heartbeats.
    pub fn for_tests(node_id: &str) -> Self {
        EdgeConfig {
            node_id: node_id.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            heartbeat_interval_secs: 1,
            drain_timeout_secs: 3,
            // Test machines run many edges and bots at once: late timers
            // there are the machine's, and shedding would change what
            // the tests assert (the core's tests cover shedding).
            shed_video_when_overloaded: false,
            ..EdgeConfig::default()
        }
    }

    /// Workers to run.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// [`EdgeConfig::heartbeat_interval_secs`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// [`EdgeConfig::drain_timeout_secs`] as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

impl Validate for EdgeConfig {
    fn validate(&self, v: &mut Validator) {
        v.check("node_id", service::config::node_id_problem(&self.node_id));
        if self.region.is_empty() {
            v.invalid("region", "must not be empty");
        }
        if self.media_ip.is_unspecified() {
            v.invalid(
                "media_ip",
                "must be the exact address clients reach, not 0.0.0.0 or ::",
            );
        }
        if self.workers > 256 {
            v.invalid("workers", "must be between 0 (one per core) and 256");
        }
        if !(1..=1_000_000).contains(&self.capacity) {
            v.invalid("capacity", "must be between 1 and 1000000");
        }
        if self.spread_calls_above == 0 {
            v.invalid("spread_calls_above", "must be at least 1");
        }
        if !(2..=10_000).contains(&self.max_participants_per_call) {
            v.invalid("max_participants_per_call", "must be between 2 and 10000");
        }
        if let Some(url) = &self.control_plane_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            v.invalid("control_plane_url", "must be an http(s) URL");
        }
        for (i, url) in self.control_plane_fallback_urls.iter().enumerate() {
            if !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                v.invalid(
                    "control_plane_fallback_urls",
                    format!("entry {i} must be an http(s) URL"),
                );
            }
        }
        if self.control_plane_url.is_none() && !self.control_plane_fallback_urls.is_empty() {
            v.invalid(
                "control_plane_url",
                "needed when control_plane_fallback_urls is set (it is tried first)",
            );
        }
        if self.control_plane_url.is_some() && self.credential.is_none() {
            v.invalid("credential", "needed to register with the control plane");
        }
        if !(1..=60).contains(&self.heartbeat_interval_secs) {
            v.invalid("heartbeat_interval_secs", "must be between 1 and 60");
        }
        if !(1..=120).contains(&self.connect_timeout_secs) {
            v.invalid("connect_timeout_secs", "must be between 1 and 120");
        }
        if !(1..=600).contains(&self.drain_timeout_secs) {
            v.invalid("drain_timeout_secs", "must be between 1 and 600");
        }
        if let Some(relay) = &self.relay
            && !(200..=60_000).contains(&relay.link_timeout_ms)
        {
            v.invalid("relay.link_timeout_ms", "must be between 200 and 60000");
        }
    }
}
