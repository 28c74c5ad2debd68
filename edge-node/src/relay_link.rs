//! The edge's link to its region's relay, the shell around
//! [`RelayClient`](crate::relay_client::RelayClient) (which decides:
//! interests, announcements, subscriptions, reassembly, replay after a
//! redial): it dials and redials the QUIC link with backoff, feeds the
//! client worker events, control messages, datagrams and time, and carries
//! out what it asks (control frames, worker commands, NACK answers).
//!
//! The RTP packets of local tracks do not pass through here: workers send
//! them through the shared [`Uplink`], which keeps the last video
//! datagrams to answer the relay's NACKs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::IntCounter;
use protocol::relay::{
    Control, Hello, Kind, MEDIA_HEADER_LEN, MediaHeader, RTP_HEADER_LEN, Role, RtpHeader,
};
use quinn::Connection;
use relay::NodeAddr;
use relay::link::{self, Backoff, ControlReader};
use relay::media::SendHistory;
use relay::metrics::{LinkCounters, LinkMetrics};
use relay::router::DropReason;
use relay::tls::{NodeTls, TlsFiles};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::relay_client::{self, ClientOutput, ClientStats, RelayClient};
use crate::worker::{Command, WorkerHandle};
use sfu::RelayPacket;

pub use crate::relay_client::{RelayCommand, RelayEvent, STALE_AFTER};

/// `[edge.relay]`: the region's relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRelayConfig {
    /// The relay's QUIC address (`ip:port` or `host:port`, resolved at
    /// each dial).
    pub addr: NodeAddr,
    /// Other relays of the region, dialed in turn when the current one
    /// does not answer (the edge re-homes; every announcement and
    /// subscription is replayed on the new link).
    #[serde(default)]
    pub fallback_addrs: Vec<NodeAddr>,
    /// The name its certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Cluster CA, this edge's certificate and key.
    pub tls: TlsFiles,
    /// A link with no packet for this long is dead, milliseconds.
    #[serde(default = "default_link_timeout")]
    pub link_timeout_ms: u64,
}

fn default_server_name() -> String {
    relay::tls::RELAY_SERVER_NAME.to_owned()
}

fn default_link_timeout() -> u64 {
    2000
}

/// The sending half workers share: the current connection (none while the
/// link is down) and the link's counters.
pub struct Uplink {
    current: Mutex<Option<(Connection, LinkCounters)>>,
    /// Recent video datagrams by alias, for NACKs.
    history: Mutex<HashMap<u32, SendHistory>>,
    metrics: LinkMetrics,
    retransmissions: IntCounter,
}

impl Uplink {
    fn lock(&self) -> MutexGuard<'_, Option<(Connection, LinkCounters)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an RTP packet of a local track the relay subscribed to
    /// (dropped, and counted, while the link is down or when it does not
    /// fit a datagram).
    pub fn send_packet(&self, packet: RelayPacket) {
        let Some((connection, counters)) = self.lock().clone() else {
            self.metrics.dropped(DropReason::LinkClosed);
            return;
        };
        let datagram = encode_packet(&packet);
        if connection
            .max_datagram_size()
            .is_none_or(|max| datagram.len() > max)
        {
            self.metrics.dropped(DropReason::TooLarge);
            return;
        }
        let datagram = Bytes::from(datagram);
        let kind = if packet.video {
            Kind::Video
        } else {
            Kind::Audio
        };
        if packet.video {
            self.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(packet.alias)
                .or_insert_with(|| SendHistory::new(relay::router::HISTORY))
                .insert(datagram.clone());
        }
        let len = datagram.len();
        match relay::app::send_media(&connection, kind, datagram) {
            Ok(()) => counters.sent(len),
            Err(reason) => self.metrics.dropped(reason),
        }
    }

    /// Resends what the history still holds of a local track.
    fn resend(&self, alias: u32, sequences: &[u16]) {
        let Some((connection, counters)) = self.lock().clone() else {
            return;
        };
        let found: Vec<Bytes> = {
            let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            let Some(h) = history.get(&alias) else {
                return;
            };
            sequences.iter().filter_map(|s| h.get(*s)).collect()
        };
        for datagram in found {
            let len = datagram.len();
            match relay::app::send_media(&connection, Kind::Video, datagram) {
                Ok(()) => {
                    counters.sent(len);
                    self.retransmissions.inc();
                }
                Err(reason) => self.metrics.dropped(reason),
            }
        }
    }

    /// A local track ended: its history goes.
    fn forget(&self, alias: u32) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&alias);
    }
}

/// A local RTP packet as a relay datagram: the media header (the track's
/// alias, frame flags), then the packet with the publisher's sequence
/// number and timestamp, the marker on a frame's last packet.
fn encode_packet(packet: &RelayPacket) -> Vec<u8> {
    let mut flags = 0;
    if packet.keyframe {
        flags |= MediaHeader::KEYFRAME;
    }
    if packet.frame_start {
        flags |= MediaHeader::FRAME_START;
    }
    let mut datagram = Vec::with_capacity(MEDIA_HEADER_LEN + RTP_HEADER_LEN + packet.payload.len());
    MediaHeader {
        alias: packet.alias,
        layer: packet.layer,
        flags,
    }
    .encode(&mut datagram);
    RtpHeader {
        payload_type: if packet.video { 96 } else { 111 },
        marker: packet.frame_end,
        sequence: packet.seq as u16,
        timestamp: packet.time,
        ssrc: packet.alias,
        // RFC 6464's level is -dBov: str0m reads it as a negative number.
        audio_level: packet.audio_level.map(|l| l.unsigned_abs().min(127)),
    }
    .encode(&mut datagram);
    datagram.extend_from_slice(&packet.payload);
    datagram
}

/// What a worker needs to take part.
#[derive(Clone)]
pub struct WorkerRelay {
    /// Where it reports calls and tracks.
    pub events: mpsc::UnboundedSender<RelayEvent>,
    /// Where it sends frames.
    pub uplink: Arc<Uplink>,
}

/// Edge relay counters beyond the link's.
#[derive(Clone)]
pub struct EdgeRelayMetrics {
    link: LinkMetrics,
    remote_tracks: prometheus::IntGauge,
    frames_received: IntCounter,
    frame_gaps: IntCounter,
    frames_dropped: IntCounter,
    nacks_sent: IntCounter,
    recovered: IntCounter,
    retransmissions: IntCounter,
}

impl EdgeRelayMetrics {
    /// Creates and registers them.
    pub fn new(metrics: &service::Metrics) -> Self {
        EdgeRelayMetrics {
            link: LinkMetrics::new(metrics, "cascade_edge_relay"),
            remote_tracks: metrics.gauge(
                "cascade_edge_remote_tracks",
                "Tracks of other edges' participants received through the relay.",
            ),
            frames_received: metrics.counter(
                "cascade_edge_relay_frames_received_total",
                "Frames of remote tracks reassembled and handed to subscribers.",
            ),
            frame_gaps: metrics.counter(
                "cascade_edge_relay_frame_gaps_total",
                "Gaps in remote tracks given up (packets that never came).",
            ),
            nacks_sent: metrics.counter(
                "cascade_edge_relay_nacks_sent_total",
                "Sequence numbers of remote tracks NACKed to the relay.",
            ),
            recovered: metrics.counter(
                "cascade_edge_relay_recovered_packets_total",
                "Missing packets of remote tracks that arrived later (retransmitted).",
            ),
            retransmissions: metrics.counter(
                "cascade_edge_relay_retransmitted_datagrams_total",
                "Datagrams of local tracks resent to answer the relay's NACKs.",
            ),
            frames_dropped: metrics.counter(
                "cascade_edge_relay_frames_dropped_total",
                "Remote frames dropped because a worker's queue was full.",
            ),
        }
    }
}

/// The relay side of an edge, before it runs.
pub struct RelayLink {
    config: EdgeRelayConfig,
    endpoint: quinn::Endpoint,
    hello: Hello,
    metrics: EdgeRelayMetrics,
    uplink: Arc<Uplink>,
    events_tx: mpsc::UnboundedSender<RelayEvent>,
    events: mpsc::UnboundedReceiver<RelayEvent>,
}

/// Why the relay link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayLinkError {
    /// TLS files.
    #[error(transparent)]
    Tls(#[from] relay::tls::TlsError),
    /// The QUIC endpoint.
    #[error(transparent)]
    Endpoint(#[from] link::EndpointError),
}

impl RelayLink {
    /// Loads TLS and binds the QUIC endpoint (client only) on `ip`.
    pub fn new(
        config: EdgeRelayConfig,
        ip: std::net::IpAddr,
        node: &str,
        region: &str,
        metrics: &service::Metrics,
    ) -> Result<Self, RelayLinkError> {
        let tls = NodeTls::load(&config.tls)?;
        // A certificate that names another node would have every link
        // refused by the relay: say so at start, not in a redial loop.
        tls.require_identity(Role::Edge, node)?;
        relay::metrics::record_certificate_expiry(metrics, tls.expiry());
        let timeout = Duration::from_millis(config.link_timeout_ms);
        let endpoint = link::endpoint(SocketAddr::new(ip, 0), &tls, timeout, false)?;
        let metrics = EdgeRelayMetrics::new(metrics);
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(RelayLink {
            config,
            endpoint,
            hello: Hello {
                node: node.to_owned(),
                region: region.to_owned(),
                role: Role::Edge,
            },
            uplink: Arc::new(Uplink {
                current: Mutex::new(None),
                history: Mutex::new(HashMap::new()),
                metrics: metrics.link.clone(),
                retransmissions: metrics.retransmissions.clone(),
            }),
            metrics,
            events_tx,
            events,
        })
    }

    /// What each worker gets.
    pub fn worker_relay(&self) -> WorkerRelay {
        WorkerRelay {
            events: self.events_tx.clone(),
            uplink: self.uplink.clone(),
        }
    }

    /// Runs until `stop` resolves.
    pub async fn run(
        self,
        workers: Vec<WorkerHandle>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let RelayLink {
            config,
            endpoint,
            hello,
            metrics,
            uplink,
            events_tx,
            mut events,
        } = self;
        drop(events_tx);
        let mut client = RelayClient::new(&hello.node);
        let mut shell = Shell {
            workers,
            uplink: uplink.clone(),
            metrics: metrics.clone(),
            control: None,
            control_stuck: false,
            counted: ClientStats::default(),
        };
        let timeout = Duration::from_millis(config.link_timeout_ms);
        let mut backoff = Backoff::new(timeout.min(Duration::from_secs(1)));
        let mut reader: Option<ControlReader> = None;
        let mut connection: Option<Connection> = None;
        let mut redial_at = tokio::time::Instant::now();
        // Where to dial: the configured relay, then each fallback. A link
        // that dropped is dialed again once (a restart is quick); a dial
        // that fails moves on to the next relay.
        let relays: Vec<NodeAddr> = std::iter::once(config.addr.clone())
            .chain(config.fallback_addrs.iter().cloned())
            .collect();
        let mut target = 0usize;
        let mut rtt = tokio::time::interval(Duration::from_secs(1));
        // Reassembly deadlines, repeated NACKs, stale tracks.
        let mut ticks = tokio::time::interval(relay_client::TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut peer_label = String::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => client.handle_event(Instant::now(), event),
                    None => break,
                },
                message = next_control(&mut reader) => match message {
                    Ok(Some(message)) => client.handle_control(Instant::now(), message),
                    Ok(None) | Err(_) => {
                        if let Err(error) = &message {
                            tracing::info!(%error, "relay link down");
                        }
                        drop_link(&mut reader, &mut connection, &mut shell, &mut client);
                        redial_at = tokio::time::Instant::now() + backoff.next_delay();
                    }
                },
                datagram = next_datagram(&connection) => match datagram {
                    Ok(datagram) => {
                        if let Some((_, counters)) = uplink.lock().as_ref() {
                            counters.received(datagram.len());
                        }
                        client.handle_datagram(Instant::now(), &datagram);
                    }
                    Err(error) => {
                        tracing::info!(%error, "relay link down");
                        drop_link(&mut reader, &mut connection, &mut shell, &mut client);
                        redial_at = tokio::time::Instant::now() + backoff.next_delay();
                    }
                },
                () = tokio::time::sleep_until(redial_at), if connection.is_none() => {
                    // Bounded: worker events and `stop` wait meanwhile.
                    let dialed = tokio::time::timeout(
                        timeout,
                        link::dial(&endpoint, &relays[target], &config.server_name, &hello),
                    )
                    .await
                    .unwrap_or(Err(link::LinkError::Handshake("no answer in time")));
                    match dialed {
                        Ok(l) => {
                            backoff.reset();
                            tracing::info!(relay = %l.hello.node, addr = %relays[target], "relay link up");
                            metrics.link.links.with_label_values(&["relay"]).inc();
                            metrics.link.links_established.with_label_values(&["relay"]).inc();
                            let counters = metrics.link.link(&l.hello.node);
                            peer_label = l.hello.node.clone();
                            *uplink.lock() = Some((l.connection.clone(), counters));
                            connection = Some(l.connection);
                            reader = Some(l.reader);
                            shell.control = Some(link::spawn_writer(l.send));
                            shell.control_stuck = false;
                            client.connected(Instant::now());
                        }
                        Err(error) => {
                            tracing::debug!(addr = %relays[target], %error, "dialing relay failed");
                            let previous = target;
                            target = (target + 1) % relays.len();
                            if target != previous {
                                tracing::info!(from = %relays[previous], to = %relays[target],
                                               "relay not answering; trying the next one");
                                // Another relay deserves a prompt try.
                                redial_at = tokio::time::Instant::now();
                            } else {
                                redial_at = tokio::time::Instant::now() + backoff.next_delay();
                            }
                        }
                    }
                }
                _ = ticks.tick() => client.handle_timeout(Instant::now()),
                _ = rtt.tick() => {
                    if let Some(c) = &connection {
                        metrics.link.rtt.with_label_values(&[&peer_label]).set(c.rtt().as_secs_f64());
                    }
                    metrics.remote_tracks.set(client.remote_tracks() as i64);
                }
                () = &mut stop => break,
            }
            shell.act(&mut client);
            if shell.control_stuck && connection.is_some() {
                tracing::warn!("relay not reading control frames; dropping the link");
                drop_link(&mut reader, &mut connection, &mut shell, &mut client);
                shell.act(&mut client);
                redial_at = tokio::time::Instant::now() + backoff.next_delay();
            }
        }
        if let Some(c) = connection {
            c.close(0u32.into(), b"edge stopping");
        }
        endpoint.close(0u32.into(), b"edge stopping");
    }
}

/// What the shell needs to carry out the client's outputs.
struct Shell {
    workers: Vec<WorkerHandle>,
    uplink: Arc<Uplink>,
    metrics: EdgeRelayMetrics,
    /// The current link's control writer.
    control: Option<mpsc::Sender<Control>>,
    /// The relay stopped reading our control frames: drop the link.
    control_stuck: bool,
    /// The client's counters as last added to the metrics.
    counted: ClientStats,
}

impl Shell {
    /// Carries out everything the client asked for, and counts.
    fn act(&mut self, client: &mut RelayClient) {
        while let Some(output) = client.poll_output() {
            match output {
                ClientOutput::Control(message) => {
                    if let Some(control) = &self.control
                        && control.try_send(message).is_err()
                    {
                        self.control_stuck = true;
                    }
                }
                ClientOutput::Worker(worker, command) => {
                    let Some(w) = self.workers.get(worker) else {
                        continue;
                    };
                    if matches!(command, RelayCommand::RemoteFrame { .. }) {
                        // Frames may be dropped when the worker is behind;
                        // tracks and subscriptions never are.
                        if w.commands.try_send(Command::Relay(command)).is_ok() {
                            self.metrics.frames_received.inc();
                        } else {
                            self.metrics.frames_dropped.inc();
                        }
                    } else {
                        // Fails only if the worker stopped.
                        let _ = w.relay.send(command);
                    }
                }
                ClientOutput::Resend { alias, sequences } => {
                    self.uplink.resend(alias, &sequences);
                }
                ClientOutput::Forget(alias) => self.uplink.forget(alias),
            }
        }
        let stats = client.stats();
        let before = std::mem::replace(&mut self.counted, stats);
        let m = &self.metrics;
        for _ in before.malformed..stats.malformed {
            m.link.dropped(DropReason::Malformed);
        }
        for _ in before.unknown_track..stats.unknown_track {
            m.link.dropped(DropReason::UnknownTrack);
        }
        m.frame_gaps.inc_by(stats.frame_gaps - before.frame_gaps);
        m.nacks_sent.inc_by(stats.nacks_sent - before.nacks_sent);
        m.recovered.inc_by(stats.recovered - before.recovered);
    }
}

fn drop_link(
    reader: &mut Option<ControlReader>,
    connection: &mut Option<Connection>,
    shell: &mut Shell,
    client: &mut RelayClient,
) {
    if let Some(c) = connection.take() {
        c.close(0u32.into(), b"link ended");
        shell.metrics.link.links.with_label_values(&["relay"]).dec();
    }
    *reader = None;
    *shell.uplink.lock() = None;
    shell.control = None;
    client.disconnected(Instant::now());
}

async fn next_control(
    reader: &mut Option<ControlReader>,
) -> Result<Option<Control>, link::LinkError> {
    match reader {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn next_datagram(connection: &Option<Connection>) -> Result<Bytes, quinn::ConnectionError> {
    match connection {
        Some(c) => c.read_datagram().await,
        None => std::future::pending().await,
    }
}
