//! `cascade dev`: the whole system in one process, with no servers: a
//! control plane on SQLite in a data directory (in-process presence and
//! fan-out), and per region one relay and one or more edges, all through
//! their production `build` → `run`, with development certificates. Ctrl-C
//! stops everything; a second run keeps the first one's accounts, messages,
//! cluster secret and certificates (all in the data directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use control_plane::calls::config::RegionConfig;
use control_plane::{ControlPlane, ControlPlaneConfig};
use edge_node::relay_link::EdgeRelayConfig;
use edge_node::{Edge, EdgeConfig};
use relay::tls::CertFor;
use relay::tls::Role;
use relay::{PeerConfig, Relay, RelayConfig};
use service::Service;
use service::lifecycle::Shutdown;

/// The regions `cascade dev` can start, in order, with their coordinates
/// (for nearest-region fallback).
const REGIONS: [(&str, f64, f64); 4] = [
    ("eu", 50.1, 8.7),
    ("us", 39.0, -77.5),
    ("ap", 1.35, 103.8),
    ("sa", -23.5, -46.6),
];

/// What `cascade dev` runs.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where SQLite, the cluster secret and the certificates live.
    pub data_dir: PathBuf,
    /// The control plane's HTTP port (the API and, later, the web client).
    pub port: u16,
    /// Regions (1–4: eu, us, ap, sa).
    pub regions: usize,
    /// Edges per region.
    pub edges_per_region: usize,
}

/// The cluster secret of this data directory: made once, then reused so
/// node credentials stay valid across runs.
fn cluster_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("cluster-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_owned();
        if secret.len() >= 16 {
            return Ok(secret);
        }
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    relay::tls::write_private(&path, &secret).context("cannot store the cluster secret")?;
    Ok(secret)
}

/// Runs until `shutdown` fires.
pub async fn run(options: DevOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=REGIONS.len()).contains(&options.regions),
        "--regions must be between 1 and {}",
        REGIONS.len()
    );
    anyhow::ensure!(
        (1..=8).contains(&options.edges_per_region),
        "--edges-per-region must be between 1 and 8"
    );
    let data_dir = &options.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let secret = cluster_secret(data_dir)?;
    let regions = &REGIONS[..options.regions];
    let relay_id = |region: &str| format!("relay-{region}");
    let edge_id = |region: &str, i: usize| format!("edge-{region}-{}", i + 1);

    // Certificates for every node, once (the CA is kept across runs).
    let certs = data_dir.join("certs");
    let mut wanted = Vec::new();
    for (region, ..) in regions {
        wanted.push(CertFor::Node(Role::Relay, relay_id(region)));
        wanted.extend(
            (0..options.edges_per_region).map(|i| CertFor::Node(Role::Edge, edge_id(region, i))),
        );
    }
    // Kept across runs, unless from before certificates named their node.
    let missing: Vec<CertFor> = wanted
        .into_iter()
        .filter(|cert| {
            let CertFor::Node(role, name) = cert else {
                return true;
            };
            relay::tls::NodeTls::load(&relay::tls::TlsFiles::in_dir(&certs, name))
                .and_then(|tls| tls.require_identity(*role, name))
                .is_err()
        })
        .collect();
    if !missing.is_empty() {
        relay::tls::write_dev_certs(&certs, &missing).context("cannot write dev certificates")?;
    }

    let mut tasks = tokio::task::JoinSet::new();

    // One relay per region, each dialing the ones started before it (a full
    // mesh, one dialer per pair). Relays first: the control plane names
    // their health URLs as the regions' probe URLs.
    let mut relay_addrs: Vec<SocketAddr> = Vec::new();
    let mut relay_metrics = Vec::new();
    let mut relay_http = Vec::new();
    for (region, ..) in regions {
        let id = relay_id(region);
        let config = RelayConfig {
            node_id: id.clone(),
            region: (*region).into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: relay::tls::TlsFiles::in_dir(&certs, &id),
            peers: relay_addrs
                .iter()
                .map(|addr| PeerConfig {
                    addr: (*addr).into(),
                    server_name: relay::tls::RELAY_SERVER_NAME.into(),
                })
                .collect(),
            ..RelayConfig::default()
        };
        let relay = Relay::build(config)
            .await
            .with_context(|| format!("relay {id} did not start"))?;
        let quic = relay.addrs().quic;
        relay_addrs.push(quic);
        relay_metrics.push(format!("{id}=http://{}/metrics", relay.addrs().http));
        relay_http.push(relay.addrs().http);
        tasks.spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await.map_err(anyhow::Error::from) }
        });
    }

    // The control plane.
    let mut cp = ControlPlaneConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], options.port)),
        data_dir: data_dir.clone(),
        drain_timeout_secs: 2,
        ..ControlPlaneConfig::default()
    };
    cp.cluster.secret = Some(secret.clone());
    // Clients time a region's probe URL to find the nearest; here each
    // region's relay answers for it.
    cp.calls.regions = regions
        .iter()
        .zip(&relay_http)
        .map(|((name, lat, lon), http)| RegionConfig {
            name: (*name).into(),
            latitude: *lat,
            longitude: *lon,
            probe_url: Some(format!("http://{http}/healthz")),
        })
        .collect();
    cp.calls.default_region = regions[0].0.into();
    // The edges start after the control plane, on ports chosen then: the
    // page may reach any loopback WebSocket (CSP connect-src).
    cp.calls.edge_origins = vec!["ws://127.0.0.1:*".into()];
    let control_plane = ControlPlane::build(cp)
        .await
        .context("the control plane did not start")?;
    let url = format!("http://{}", control_plane.addrs().http);
    tasks.spawn({
        let shutdown = shutdown.clone();
        async move {
            control_plane
                .run(shutdown)
                .await
                .map_err(anyhow::Error::from)
        }
    });

    // The edges, registered with the control plane, linked to their relay.
    let mut edges = Vec::new();
    for ((region, ..), relay_addr) in regions.iter().zip(&relay_addrs) {
        for i in 0..options.edges_per_region {
            let id = edge_id(region, i);
            let config = EdgeConfig {
                node_id: id.clone(),
                region: (*region).into(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                workers: 1,
                control_plane_url: Some(url.clone()),
                credential: Some(control_plane::api::node_credential(&secret, &id)),
                drain_timeout_secs: 2,
                // One machine runs the browser, every service and any bots:
                // its late timers are the machine's, not an edge's
                // overload, and paused video would only puzzle.
                shed_video_when_overloaded: false,
                relay: Some(EdgeRelayConfig {
                    addr: (*relay_addr).into(),
                    fallback_addrs: Vec::new(),
                    server_name: relay::tls::RELAY_SERVER_NAME.into(),
                    tls: relay::tls::TlsFiles::in_dir(&certs, &id),
                    link_timeout_ms: 2000,
                }),
                ..EdgeConfig::default()
            };
            let edge = Edge::build(config)
                .await
                .with_context(|| format!("edge {id} did not start"))?;
            edges.push(id);
            tasks.spawn({
                let shutdown = shutdown.clone();
                async move { edge.run(shutdown).await.map_err(anyhow::Error::from) }
            });
        }
    }

    let region_names: Vec<&str> = regions.iter().map(|(name, ..)| *name).collect();
    tracing::info!(
        url = %url,
        data_dir = %data_dir.display(),
        regions = ?region_names,
        edges = ?edges,
        relay_metrics = %relay_metrics.join(" "),
        "cascade dev ready"
    );
    print_welcome(&url, data_dir, &region_names, &edges);

    // Runs until Ctrl-C; a service that fails stops the rest.
    let mut failure = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(join) => {
                failure.get_or_insert(anyhow::anyhow!("a service panicked: {join}"));
            }
        }
        if failure.is_some() && !shutdown.requested() {
            // Bring the others down rather than run half a cluster.
            tasks.abort_all();
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the welcome text is the command's output"
)]
fn print_welcome(url: &str, data_dir: &Path, regions: &[&str], edges: &[String]) {
    println!(
        "\nCascade is running: open {url} in two browser windows (one private), sign up twice.\n\
         regions: {}; edges: {}; one QUIC relay per region, meshed.\n\
         For a cross-region call pick \"{}\" as Call region in one window and \"{}\" in the other;\n\
         the media meets through the relays. API reference: {url}/docs/\n\
         data: {} (a second run keeps accounts and messages). Ctrl-C stops everything.\n",
        regions.join(", "),
        edges.join(", "),
        regions[0],
        regions.get(1).unwrap_or(&regions[0]),
        data_dir.display(),
    );
}

/// How long Ctrl-C may take before the process exits anyway.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
