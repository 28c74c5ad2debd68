//! `cascade edge`: what `build` binds and what `run` serves.
//!
//! Shutdown (SIGTERM): the node says it is draining in an immediate
//! heartbeat (the control plane stops placing calls here and sends its
//! participants `call.migrate`), refuses new sessions, waits for its
//! participants to leave (bounded by `drain_timeout_secs`), deregisters,
//! and stops its workers.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use service::{HttpServer, Metrics, Readiness, Service, Shutdown};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::EdgeConfig;
use crate::mesh::{Mesh, MeshCommand, MeshFrame, PlaceError, Placement, Spread};
use crate::registration::ControlPlaneLink;
use crate::worker::{self, WorkerHandle, WorkerShared};
use sfu::SfuConfig;

/// Why the edge could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
    /// A media worker's thread could not start.
    #[error("cannot start a media worker thread")]
    Worker(#[source] std::io::Error),
    /// The relay link could not be set up (TLS files, QUIC endpoint).
    #[error("relay link")]
    Relay(#[from] crate::relay_link::RelayLinkError),
}

/// Where a running edge can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeAddrs {
    /// Signaling and operator endpoints.
    pub http: SocketAddr,
    /// Each worker's media socket (as advertised).
    pub media: Vec<SocketAddr>,
}

/// What handlers share.
#[derive(Clone)]
pub struct EdgeState(Arc<Inner>);

/// The parts of [`EdgeState`].
pub struct Inner {
    /// The control plane.
    pub link: Arc<ControlPlaneLink>,
    /// The media workers.
    pub workers: Vec<WorkerHandle>,
    /// How calls spread over them.
    pub mesh: Arc<Mesh>,
    draining: AtomicBool,
}

impl std::ops::Deref for EdgeState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl EdgeState {
    /// A call's home worker: all its sessions share that core until it has
    /// `spread_calls_above` of them ([`crate::mesh`]).
    pub fn home_worker(&self, call: Uuid) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        call.hash(&mut hasher);
        (hasher.finish() % self.workers.len().max(1) as u64) as usize
    }

    /// Places a new session of `call` on a worker; the place is held until
    /// the returned value is dropped.
    pub fn place(&self, call: Uuid, session: Uuid) -> Result<Placement, PlaceError> {
        Placement::new(&self.mesh, call, session, self.home_worker(call))
    }

    /// Whether the node is shutting down (no new sessions).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn participants(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.shared.participants.load(Ordering::Relaxed))
            .sum()
    }
}

struct PendingWorker {
    metrics: crate::metrics::EdgeMetrics,
    socket: std::net::UdpSocket,
    advertised: SocketAddr,
    commands: mpsc::Receiver<worker::Command>,
    relay_commands: mpsc::UnboundedReceiver<crate::relay_link::RelayCommand>,
    shared: Arc<WorkerShared>,
    mesh_commands: mpsc::UnboundedReceiver<MeshCommand>,
    mesh_frames: mpsc::Receiver<MeshFrame>,
}

/// Frames of other workers' tracks a worker may have waiting (a frame per
/// track and layer, not per subscriber: a few hundred milliseconds of a
/// large call's media).
const MESH_FRAME_QUEUE: usize = 512;

/// One edge node, bound and ready to run.
pub struct Edge {
    config: EdgeConfig,
    http: HttpServer,
    router: Router,
    state: EdgeState,
    pending: Vec<PendingWorker>,
    readiness: Readiness,
    relay: Option<crate::relay_link::RelayLink>,
}

impl Service for Edge {
    type Config = EdgeConfig;
    type Addrs = EdgeAddrs;
    type Error = StartError;

    async fn build(mut config: EdgeConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new("edge");
        let http = HttpServer::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        // Clients must reach the port actually bound (port 0 in tests).
        if config.public_url.is_none() {
            config.public_url = Some(format!("ws://{}", http.local_addr()));
        }
        let edge_metrics = crate::metrics::EdgeMetrics::new(&metrics);
        let relay = match &config.relay {
            Some(relay) => Some(crate::relay_link::RelayLink::new(
                relay.clone(),
                config.media_ip,
                &config.node_id,
                &config.region,
                &metrics,
            )?),
            None => None,
        };
        let mut workers = Vec::new();
        let mut pending = Vec::new();
        let (mut mesh_control, mut mesh_frames) = (Vec::new(), Vec::new());
        for i in 0..config.worker_count() {
            let port = if config.media_port == 0 {
                0
            } else {
                config.media_port.saturating_add(i as u16)
            };
            let bind = SocketAddr::new(config.media_ip, port);
            let socket =
                worker::bind(bind).map_err(|source| StartError::Bind { addr: bind, source })?;
            let local = socket
                .local_addr()
                .map_err(|source| StartError::Bind { addr: bind, source })?;
            let advertised = SocketAddr::new(config.public_ip.unwrap_or(local.ip()), local.port());
            let (tx, rx) = mpsc::channel(256);
            let (relay_tx, relay_rx) = mpsc::unbounded_channel();
            let (mesh_tx, mesh_rx) = mpsc::unbounded_channel::<MeshCommand>();
            let (frames_tx, frames_rx) = mpsc::channel::<MeshFrame>(MESH_FRAME_QUEUE);
            mesh_control.push(mesh_tx);
            mesh_frames.push(frames_tx);
            let shared = Arc::new(WorkerShared::default());
            workers.push(WorkerHandle {
                commands: tx,
                relay: relay_tx,
                addr: advertised,
                shared: shared.clone(),
            });
            pending.push(PendingWorker {
                metrics: edge_metrics.clone(),
                socket,
                advertised,
                commands: rx,
                relay_commands: relay_rx,
                shared,
                mesh_commands: mesh_rx,
                mesh_frames: frames_rx,
            });
        }
        let mesh = Arc::new(Mesh::new(
            Spread::new(
                workers.len(),
                config.spread_calls_above,
                config.max_participants_per_call,
            ),
            mesh_control,
            mesh_frames,
        ));
        let state = EdgeState(Arc::new(Inner {
            link: Arc::new(ControlPlaneLink::new(&config)),
            workers,
            mesh: mesh.clone(),
            draining: AtomicBool::new(false),
        }));
        let readiness = Readiness::new(Vec::new());
        let router = Router::new()
            .route("/v1/rtc", axum::routing::get(crate::signaling::upgrade))
            .with_state(state.clone())
            .merge(service::ops::routes(metrics.clone(), readiness.clone()));
        let router = service::ops::measure(router, metrics);
        tracing::info!(
            node_id = %config.node_id,
            http = %http.local_addr(),
            media = ?state.workers.iter().map(|w| w.addr).collect::<Vec<_>>(),
            "edge bound"
        );
        Ok(Edge {
            config,
            http,
            router,
            state,
            pending,
            readiness,
            relay,
        })
    }

    fn addrs(&self) -> EdgeAddrs {
        EdgeAddrs {
            http: self.http.local_addr(),
            media: self.state.workers.iter().map(|w| w.addr).collect(),
        }
    }

    async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        let Edge {
            config,
            http,
            router,
            state,
            pending,
            readiness,
            relay,
        } = self;
        let (stop_workers, workers_stop) = service::lifecycle::shutdown_channel();
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let sfu_config = SfuConfig {
            max_participants_per_call: config.max_participants_per_call,
            max_participants: config.capacity as usize,
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            shed_when_overloaded: config.shed_video_when_overloaded,
            ..SfuConfig::default()
        };
        let mut tasks = Vec::new();
        for (index, w) in pending.into_iter().enumerate() {
            let spawned = worker::spawn(
                worker::Worker {
                    index,
                    socket: w.socket,
                    advertised: w.advertised,
                    config: sfu_config.clone(),
                    commands: w.commands,
                    relay_commands: w.relay_commands,
                    shared: w.shared,
                    gone: gone_tx.clone(),
                    metrics: w.metrics,
                    relay: relay.as_ref().map(|r| r.worker_relay()),
                    batch_sends: config.batch_sends,
                    mesh: state.mesh.clone(),
                    mesh_commands: w.mesh_commands,
                    mesh_frames: w.mesh_frames,
                },
                workers_stop.clone().wait(),
            );
            tasks.push(spawned.map_err(StartError::Worker)?);
        }
        drop(gone_tx);
        let relay_task = relay.map(|r| {
            let workers = state.workers.clone();
            tokio::spawn(r.run(workers, workers_stop.clone().wait()))
        });
        let reporter = tokio::spawn(state.link.clone().report_gone(gone_rx));
        // Keys first, so the first joins need no fetch; then heartbeats.
        state.link.refresh_keys().await;
        let heartbeats = {
            let (state, config, shutdown) = (state.clone(), config.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(config.heartbeat_interval());
                let stop = shutdown.clone().wait();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = &mut stop, if !state.draining() => {
                            state.draining.store(true, Ordering::SeqCst);
                        }
                    }
                    state
                        .link
                        .heartbeat(&config, &state.workers, state.draining())
                        .await;
                }
            })
        };
        let drain_state = state.clone();
        let served = http
            .serve(router, shutdown, config.drain_timeout(), move || {
                drain_state.draining.store(true, Ordering::SeqCst);
                readiness.start_draining();
            })
            .await;
        // Participants move elsewhere (the control plane saw us draining);
        // give them until the drain timeout.
        let deadline = tokio::time::Instant::now() + config.drain_timeout();
        while state.participants() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        heartbeats.abort();
        state.link.deregister().await;
        stop_workers.trigger();
        for task in tasks {
            let _ = task.await;
        }
        if let Some(task) = relay_task {
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
        tracing::info!("edge stopped");
        served.map_err(StartError::Serve)
    }
}
