//! Multi-region pieces on loopback: development certificates in a
//! temporary directory, relays run in-process through their production
//! `build`/`run`, edges wired to a control plane and a relay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edge_node::relay_link::EdgeRelayConfig;
use edge_node::{Edge, EdgeConfig};
use protocol::relay::Role;
use relay::tls::{CertFor, TlsFiles};
use relay::{PeerConfig, Relay, RelayAddrs, RelayConfig};
use service::Service;

/// A directory of development certificates, removed on drop.
pub struct CertDir {
    /// Where the files are.
    pub dir: PathBuf,
}

impl CertDir {
    /// A CA and one certificate per node, each naming its node and role.
    pub fn new(relays: &[&str], edges: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("cascade-certs-{}", uuid::Uuid::new_v4()));
        let certs: Vec<CertFor> = relays
            .iter()
            .map(|n| CertFor::Node(Role::Relay, (*n).to_owned()))
            .chain(
                edges
                    .iter()
                    .map(|n| CertFor::Node(Role::Edge, (*n).to_owned())),
            )
            .collect();
        relay::tls::write_dev_certs(&dir, &certs).expect("write development certificates");
        CertDir { dir }
    }

    /// The files of `name`.
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, name)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay configuration on loopback (free ports unless `quic_port`),
/// dialing `peers`.
pub fn relay_config(
    certs: &CertDir,
    id: &str,
    region: &str,
    quic_port: u16,
    peers: &[SocketAddr],
) -> RelayConfig {
    RelayConfig {
        node_id: id.into(),
        region: region.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        quic_listen: SocketAddr::from(([127, 0, 0, 1], quic_port)),
        tls: certs.files(id),
        peers: peers
            .iter()
            .map(|addr| PeerConfig {
                addr: (*addr).into(),
                server_name: relay::tls::RELAY_SERVER_NAME.into(),
            })
            .collect(),
        link_timeout_ms: 1000,
        ..RelayConfig::default()
    }
}

/// A relay running in this process.
pub struct RunningRelay {
    /// Where it listens.
    pub addrs: RelayAddrs,
    stop: service::ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), relay::StartError>>,
}

impl RunningRelay {
    /// Builds and runs a relay.
    pub async fn start(config: RelayConfig) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let relay = Relay::build(config).await.expect("relay starts");
        let addrs = relay.addrs();
        let (stop, shutdown) = service::lifecycle::shutdown_channel();
        let task = tokio::spawn(relay.run(shutdown));
        RunningRelay { addrs, stop, task }
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addrs.http))
            .await
            .expect("relay metrics")
            .text()
            .await
            .expect("relay metrics body")
    }

    /// Stops it (its peers are told at once).
    pub async fn stop(self) {
        self.stop.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// An edge configuration for a cluster test: registered with the control
/// plane at `control_plane_url` in `region`, linked to the relay at
/// `relay` (certificate `id` from `certs`).
pub fn edge_config(
    id: &str,
    region: &str,
    control_plane_url: &str,
    secret: &str,
    relay: Option<(&CertDir, SocketAddr)>,
) -> EdgeConfig {
    let mut config = EdgeConfig::for_tests(id);
    config.region = region.into();
    config.control_plane_url = Some(control_plane_url.into());
    config.credential = Some(control_plane::api::node_credential(secret, id));
    config.relay = relay.map(|(certs, addr)| EdgeRelayConfig {
        addr: addr.into(),
        fallback_addrs: Vec::new(),
        server_name: relay::tls::RELAY_SERVER_NAME.into(),
        tls: certs.files(id),
        link_timeout_ms: 1000,
    });
    config
}

/// An edge running in this process.
pub struct RunningEdge {
    /// Where it listens.
    pub addrs: edge_node::EdgeAddrs,
    stop: service::ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), edge_node::StartError>>,
}

impl RunningEdge {
    /// Builds and runs an edge.
    pub async fn start(config: EdgeConfig) -> Self {
        str0m::crypto::from_feature_flags().install_process_default();
        let edge = Edge::build(config).await.expect("edge starts");
        let addrs = edge.addrs();
        let (stop, shutdown) = service::lifecycle::shutdown_channel();
        let task = tokio::spawn(edge.run(shutdown));
        RunningEdge { addrs, stop, task }
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addrs.http))
            .await
            .expect("edge metrics")
            .text()
            .await
            .expect("edge metrics body")
    }

    /// Stops it.
    pub async fn stop(self) {
        self.stop.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The value of a metric sample (`name{labels}` exactly as exposed, or a
/// bare name), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A UDP port free now (for a process that must come back on the same one).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}
