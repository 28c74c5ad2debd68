//! `cascade relay`: the async shell around [`Router`]. One QUIC endpoint
//! accepts edges and relays and dials the configured peer relays; each
//! link has a task for its control stream and one for its datagrams, and
//! every decision is the router's (under one lock, never held across an
//! await).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::relay::{Hello, Kind, MediaHeader, Role};
use quinn::Connection;
use service::{HttpServer, Metrics, Readiness, Service, Shutdown};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::RelayConfig;
use crate::link::{self, Backoff, Link, LinkError};
use crate::metrics::{LinkCounters, RelayMetrics};
use crate::router::{DropReason, LinkId, Router, RouterConfig};
use crate::tls::NodeTls;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP listener could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS files could not be loaded.
    #[error("relay TLS")]
    Tls(#[from] crate::tls::TlsError),
    /// The QUIC endpoint could not start.
    #[error("relay QUIC endpoint")]
    Endpoint(#[from] link::EndpointError),
    /// Serving HTTP failed.
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// Where a running relay can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddrs {
    /// Operator endpoints.
    pub http: SocketAddr,
    /// The QUIC endpoint.
    pub quic: SocketAddr,
}

/// Sends a media datagram on a link under the drop policy: too large for
/// the link, or video when the link's queue is short of room (audio goes
/// first), is refused with the reason.
pub fn send_media(connection: &Connection, kind: Kind, datagram: Bytes) -> Result<(), DropReason> {
    let max = connection.max_datagram_size().ok_or(DropReason::TooLarge)?;
    if datagram.len() > max {
        return Err(DropReason::TooLarge);
    }
    let free = connection.datagram_send_buffer_space();
    if !crate::router::admit(kind, datagram.len(), free, crate::tls::DATAGRAM_SEND_BUFFER) {
        return Err(DropReason::Congestion);
    }
    connection.send_datagram(datagram).map_err(|e| match e {
        quinn::SendDatagramError::TooLarge => DropReason::TooLarge,
        _ => DropReason::LinkClosed,
    })
}

struct LinkHandle {
    connection: Connection,
    control: mpsc::Sender<protocol::relay::Control>,
    counters: LinkCounters,
    peer: String,
    /// We dialed it (else accepted).
    dialed: bool,
}

struct Shared {
    router: Router,
    links: HashMap<LinkId, LinkHandle>,
}

impl Shared {
    /// Sends what the router queued: control messages, and datagrams
    /// resent to answer NACKs.
    fn flush(&mut self, metrics: &RelayMetrics) {
        while let Some((link, message)) = self.router.poll_control() {
            if let Some(l) = self.links.get(&link)
                && l.control.try_send(message).is_err()
            {
                // Its peer stopped reading control frames: end the link
                // (it redials and the state is replayed) rather than queue
                // without bound.
                l.connection.close(0u32.into(), b"control stream not read");
            }
        }
        while let Some((link, datagram, kind)) = self.router.poll_resend() {
            if let Some(l) = self.links.get(&link) {
                let len = datagram.len();
                match send_media(&l.connection, kind, datagram) {
                    Ok(()) => l.counters.sent(len),
                    Err(reason) => metrics.link.dropped(reason),
                }
            }
        }
    }
}

struct State {
    shared: Mutex<Shared>,
    metrics: RelayMetrics,
    hello: Hello,
    next_link: AtomicU64,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere must not take routing down with it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes one datagram: rewritten once, shared by every target link.
    /// `to` and `targets` are the caller's buffers, reused per datagram.
    fn forward(
        &self,
        from: LinkId,
        datagram: Bytes,
        to: &mut Vec<LinkId>,
        targets: &mut Vec<(Connection, LinkCounters)>,
    ) {
        let (kind, rewritten) = {
            let mut shared = self.lock();
            let (alias, kind) = match shared.router.route(from, &datagram, to) {
                Ok(route) => route,
                Err(reason) => {
                    drop(shared);
                    self.metrics.link.dropped(reason);
                    return;
                }
            };
            if to.is_empty() {
                return;
            }
            targets.clear();
            targets.extend(
                to.iter()
                    .filter_map(|l| shared.links.get(l))
                    .map(|h| (h.connection.clone(), h.counters.clone())),
            );
            // Rewritten once (route checked the header), kept for NACKs,
            // shared by every link.
            let mut rewritten = datagram.to_vec();
            let _ = MediaHeader::rewrite_alias(&mut rewritten, alias);
            let rewritten = Bytes::from(rewritten);
            shared.router.remember(alias, rewritten.clone());
            (kind, rewritten)
        };
        for (connection, counters) in targets.drain(..) {
            let len = rewritten.len();
            match send_media(&connection, kind, rewritten.clone()) {
                Ok(()) => counters.sent(len),
                Err(reason) => self.metrics.link.dropped(reason),
            }
        }
    }
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Edge => "edge",
        Role::Relay => "relay",
    }
}

/// Runs one link until it ends. Returns false when it was refused as a
/// duplicate of a link to the same peer.
async fn serve_link(state: Arc<State>, link: Link, dialed: bool) -> bool {
    let Link {
        connection,
        hello,
        mut reader,
        send,
    } = link;
    let id = state.next_link.fetch_add(1, Ordering::Relaxed);
    let role = role_label(hello.role);
    let peer = hello.node.clone();
    let counters = state.metrics.link.link(&peer);
    {
        let mut shared = state.lock();
        let same_peer: Vec<(LinkId, bool)> = shared
            .links
            .iter()
            .filter(|(_, l)| l.peer == peer)
            .map(|(id, l)| (*id, l.dialed))
            .collect();
        for (old, old_dialed) in same_peer {
            // The same direction: the peer reconnected, and the new link
            // replaces the old at once (not after its timeout). Opposite
            // directions: both sides dial each other; the link dialed by
            // the smaller node id is kept, on both sides alike.
            let keep_new = old_dialed == dialed || dialed == (state.hello.node < peer);
            if !keep_new {
                drop(shared);
                connection.close(0u32.into(), b"duplicate link");
                return false;
            }
            if let Some(l) = shared.links.remove(&old) {
                l.connection.close(0u32.into(), b"replaced by a new link");
            }
            // Gone from routing before the new link's first message.
            shared.router.link_down(old);
        }
        shared.links.insert(
            id,
            LinkHandle {
                connection: connection.clone(),
                control: link::spawn_writer(send),
                counters: counters.clone(),
                peer: peer.clone(),
                dialed,
            },
        );
        shared.router.link_up(id, hello.clone());
        shared.flush(&state.metrics);
    }
    state.metrics.link.links.with_label_values(&[role]).inc();
    state
        .metrics
        .link
        .links_established
        .with_label_values(&[role])
        .inc();
    tracing::info!(link = id, role, region = %hello.region, "link up");
    let datagrams = async {
        let (mut to, mut targets) = (Vec::new(), Vec::new());
        loop {
            let datagram = connection.read_datagram().await?;
            counters.received(datagram.len());
            state.forward(id, datagram, &mut to, &mut targets);
        }
    };
    let control = async {
        while let Some(message) = reader.next().await? {
            let mut shared = state.lock();
            shared.router.handle_control(Instant::now(), id, message);
            shared.flush(&state.metrics);
        }
        Ok::<(), LinkError>(())
    };
    let ended: Result<(), LinkError> = tokio::select! {
        r = datagrams => r,
        r = control => r,
    };
    connection.close(0u32.into(), b"link ended");
    {
        let mut shared = state.lock();
        shared.router.link_down(id);
        shared.links.remove(&id);
        shared.flush(&state.metrics);
    }
    state.metrics.link.links.with_label_values(&[role]).dec();
    let _ = state.metrics.link.rtt.remove_label_values(&[&peer]);
    match ended {
        Ok(()) => tracing::info!(link = id, "link closed by peer"),
        Err(error) => tracing::info!(link = id, %error, "link down"),
    }
    true
}

/// One relay, bound and ready to run.
pub struct Relay {
    config: RelayConfig,
    http: HttpServer,
    router: axum::Router,
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    readiness: Readiness,
}

impl Service for Relay {
    type Config = RelayConfig;
    type Addrs = RelayAddrs;
    type Error = StartError;

    async fn build(config: RelayConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new("relay");
        let http = HttpServer::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let tls = NodeTls::load(&config.tls)?;
        tls.require_identity(Role::Relay, &config.node_id)?;
        crate::metrics::record_certificate_expiry(&metrics, tls.expiry());
        let endpoint = link::endpoint(config.quic_listen, &tls, config.link_timeout(), true)?;
        let state = Arc::new(State {
            shared: Mutex::new(Shared {
                router: Router::new(RouterConfig {
                    keyframe_throttle: Duration::from_millis(config.keyframe_throttle_ms),
                }),
                links: HashMap::new(),
            }),
            metrics: RelayMetrics::new(&metrics),
            hello: Hello {
                node: config.node_id.clone(),
                region: config.region.clone(),
                role: Role::Relay,
            },
            next_link: AtomicU64::new(1),
        });
        let readiness = Readiness::new(Vec::new());
        let router = service::ops::routes(metrics.clone(), readiness.clone());
        let router = service::ops::measure(router, metrics);
        let quic = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.quic_listen,
            source,
        })?;
        tracing::info!(
            node_id = %config.node_id,
            region = %config.region,
            http = %http.local_addr(),
            quic = %quic,
            peers = config.peers.len(),
            "relay bound"
        );
        Ok(Relay {
            config,
            http,
            router,
            endpoint,
            state,
            readiness,
        })
    }

    fn addrs(&self) -> RelayAddrs {
        RelayAddrs {
            http: self.http.local_addr(),
            quic: self
                .endpoint
                .local_addr()
                .unwrap_or(self.config.quic_listen),
        }
    }

    async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        let Relay {
            config,
            http,
            router,
            endpoint,
            state,
            readiness,
        } = self;
        let mut tasks = Vec::new();
        // Accept edges and relays.
        {
            let (endpoint, state) = (endpoint.clone(), state.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    let state = state.clone();
                    let remote = incoming.remote_address();
                    tokio::spawn(async move {
                        match link::accept(incoming, &state.hello).await {
                            Ok(link) => {
                                let span = tracing::info_span!(
                                    "relay_link",
                                    peer = %link.hello.node,
                                    %remote
                                );
                                serve_link(state, link, false).instrument(span).await;
                            }
                            Err(error) => {
                                let reason = match error {
                                    link::LinkError::Identity { .. } => "identity",
                                    _ => "handshake",
                                };
                                state
                                    .metrics
                                    .links_refused
                                    .with_label_values(&[reason])
                                    .inc();
                                // Anyone who can reach the port can cause
                                // this: the counter has every one.
                                static THROTTLE: service::telemetry::LogThrottle =
                                    service::telemetry::LogThrottle::new();
                                if let Some(unlogged) = THROTTLE.admit() {
                                    tracing::warn!(%remote, %error, reason, unlogged, "link refused");
                                }
                            }
                        }
                    });
                }
            }));
        }
        // Dial the configured peers, redialing with backoff.
        for peer in config.peers.clone() {
            let (endpoint, state, link_timeout) =
                (endpoint.clone(), state.clone(), config.link_timeout());
            tasks.push(tokio::spawn(async move {
                let mut backoff = Backoff::new(link_timeout.min(Duration::from_secs(2)));
                // The peer's node id, once a hello told it.
                let mut known: Option<String> = None;
                loop {
                    // It dialed us and that link is up: nothing to do.
                    let linked = known
                        .as_ref()
                        .is_some_and(|n| state.lock().links.values().any(|l| &l.peer == n));
                    if linked {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    match link::dial(&endpoint, &peer.addr, &peer.server_name, &state.hello).await {
                        Ok(link) => {
                            known = Some(link.hello.node.clone());
                            let span = tracing::info_span!(
                                "relay_link",
                                peer = %link.hello.node,
                                remote = %peer.addr
                            );
                            if serve_link(state.clone(), link, true).instrument(span).await {
                                backoff.reset();
                            }
                        }
                        Err(error) => {
                            tracing::debug!(addr = %peer.addr, %error, "dialing peer relay failed");
                        }
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }));
        }
        // Gauges once a second.
        {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let shared = state.lock();
                    let m = &state.metrics;
                    m.tracks.set(shared.router.tracks() as i64);
                    m.tracks_relayed.set(shared.router.tracks_relayed() as i64);
                    m.subscriptions.set(shared.router.subscriptions() as i64);
                    let stats = shared.router.stats();
                    // The router counts; the metrics follow its totals.
                    for (counter, total) in [
                        (
                            &m.keyframe_requests_forwarded,
                            stats.keyframe_requests_forwarded,
                        ),
                        (
                            &m.keyframe_requests_throttled,
                            stats.keyframe_requests_throttled,
                        ),
                        (&m.control_refused, stats.control_refused),
                        (&m.retransmissions, stats.retransmissions),
                        (&m.nacks_forwarded, stats.nacks_forwarded),
                        (&m.data_messages_forwarded, stats.data_forwarded),
                    ] {
                        counter.inc_by(total.saturating_sub(counter.get()));
                    }
                    for l in shared.links.values() {
                        m.link
                            .rtt
                            .with_label_values(&[&l.peer])
                            .set(l.connection.rtt().as_secs_f64());
                    }
                }
            }));
        }
        let served = http
            .serve(
                router,
                shutdown,
                Duration::from_secs(config.drain_timeout_secs),
                move || readiness.start_draining(),
            )
            .await;
        for task in &tasks {
            task.abort();
        }
        // Tell every peer at once, so edges and relays redial elsewhere (or
        // to our successor) without waiting for a timeout.
        endpoint.close(0u32.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        tracing::info!("relay stopped");
        served.map_err(StartError::Serve)
    }
}
