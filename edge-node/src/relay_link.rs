//! The edge's link to its region's relay: declares interest in the calls
//! that have participants here, announces their local tracks, subscribes
//! to the remote tracks the relay announces, and moves frames both ways.
//!
//! - Workers report calls and tracks as [`RelayEvent`]s; this task keeps
//!   the desired state (interests, announcements, remote tracks) so a link
//!   that drops is redialed with backoff and the state replayed, without
//!   the clients doing anything. Remote tracks survive a short outage (the
//!   relay re-announces them and they rebind) and go after
//!   [`STALE_AFTER`].
//! - Packets of remote tracks are put in order here, a frame at a time
//!   ([`Reassembler`]: lost video packets are NACKed and waited for a
//!   bounded time; after a gap given up, video waits for a keyframe and one
//!   is asked for) and handed to the call's worker; the RTP packets of
//!   local tracks are sent by the worker itself through the shared
//!   [`Uplink`], which keeps the last video datagrams to answer the
//!   relay's NACKs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::IntCounter;
use protocol::relay::{
    Announce, Control, Hello, Kind, MEDIA_HEADER_LEN, MediaHeader, RTP_HEADER_LEN, Role, RtpHeader,
    Source,
};
use quinn::Connection;
use relay::link::{self, Backoff, ControlReader};
use relay::media::{Reassembler, RecoveryConfig, SendHistory};
use relay::metrics::{LinkCounters, LinkMetrics};
use relay::router::DropReason;
use relay::tls::{NodeTls, TlsFiles};
use serde::{Deserialize, Serialize};
use str0m::media::MediaKind;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::worker::{Command, WorkerHandle};
use sfu::{RelayPacket, RemotePacket, TrackId};

/// Remote tracks not re-announced this long after the link came back (or
/// while it is down) are removed from the sessions.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Least time between keyframe requests this edge sends per remote track.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);

/// `[edge.relay]`: the region's relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRelayConfig {
    /// The relay's QUIC address.
    pub addr: SocketAddr,
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

/// What workers tell the relay task.
#[derive(Debug)]
pub enum RelayEvent {
    /// A call has its first participant on `worker`.
    CallActive {
        /// The worker the call is pinned to.
        worker: usize,
        /// The call.
        call: Uuid,
    },
    /// A call's last participant here left.
    CallIdle(Uuid),
    /// A local track was published.
    TrackPublished {
        /// Its worker.
        worker: usize,
        /// Its id in that worker.
        track: TrackId,
        /// The call.
        call: Uuid,
        /// Audio or video.
        kind: MediaKind,
        /// What it carries.
        source: sfu::Source,
        /// Its codec.
        codec: str0m::format::Codec,
        /// The publisher.
        user: Uuid,
        /// Their device.
        device: String,
        /// Its simulcast layers (1: none).
        layers: u8,
    },
    /// A local track ended.
    TrackEnded {
        /// Its worker.
        worker: usize,
        /// Its id there.
        track: TrackId,
    },
    /// A remote track needs a keyframe.
    KeyframeRequest(u32),
    /// A local track was muted or unmuted.
    TrackMuted {
        /// Its worker.
        worker: usize,
        /// Its id there.
        track: TrackId,
        /// Muted or not.
        muted: bool,
    },
    /// The layers of a remote track the worker's sessions need changed.
    RemoteLayers {
        /// The track's key.
        key: u32,
        /// Bit per layer.
        layers: u8,
    },
    /// A local participant's data channel message, for the other edges.
    Data {
        /// The call.
        call: Uuid,
        /// The sender.
        user: Uuid,
        /// Their device.
        device: String,
        /// Binary (else text).
        binary: bool,
        /// What they sent.
        payload: Vec<u8>,
    },
}

/// What the relay task asks of a worker.
#[derive(Debug)]
pub enum RelayCommand {
    /// A remote track of a call on the worker.
    AddRemoteTrack {
        /// The key frames will carry.
        key: u32,
        /// The call.
        call: Uuid,
        /// Audio or video.
        kind: MediaKind,
        /// What it carries.
        source: sfu::Source,
        /// The publisher.
        user: Uuid,
        /// Their device.
        device: String,
        /// Its simulcast layers (1: none).
        layers: u8,
    },
    /// A remote track ended.
    RemoveRemoteTrack(u32),
    /// A remote track's publisher muted or unmuted it.
    RemoteMuted {
        /// The track's key.
        key: u32,
        /// Muted or not.
        muted: bool,
    },
    /// A frame of a remote track: its RTP packets, in order.
    RemoteFrame {
        /// The track's key.
        key: u32,
        /// The packets.
        packets: Vec<RemotePacket>,
        /// A gap was given up before it.
        after_gap: bool,
    },
    /// The relay subscribed to a local track (under this alias) or not.
    Subscribed {
        /// The local track.
        track: TrackId,
        /// Its alias, or `None`: unsubscribed.
        alias: Option<u32>,
        /// The layers wanted (bit per layer).
        layers: u8,
    },
    /// A keyframe request for a local track from behind the relay.
    KeyframeRequest(TrackId),
    /// A data channel message of a participant on another edge.
    Data {
        /// The call.
        call: Uuid,
        /// The sender.
        user: Uuid,
        /// Their device.
        device: String,
        /// Binary (else text).
        binary: bool,
        /// What they sent.
        payload: Vec<u8>,
    },
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
/// A track's source on the relay's wire.
fn wire_source(source: sfu::Source) -> Source {
    match source {
        sfu::Source::Camera => Source::Camera,
        sfu::Source::Microphone => Source::Microphone,
        sfu::Source::Screen => Source::Screen,
        sfu::Source::ScreenAudio => Source::ScreenAudio,
    }
}

/// A relayed track's source for the core.
fn core_source(source: Source) -> sfu::Source {
    match source {
        Source::Camera => sfu::Source::Camera,
        Source::Microphone => sfu::Source::Microphone,
        Source::Screen => sfu::Source::Screen,
        Source::ScreenAudio => sfu::Source::ScreenAudio,
    }
}

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
        sequence: packet.seq,
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

/// A reassembler for a remote track: video NACKs and waits, audio never.
fn reassembler(video: bool) -> Reassembler {
    let recovery = if video {
        RecoveryConfig::VIDEO
    } else {
        RecoveryConfig::AUDIO
    };
    Reassembler::new(video, recovery)
}

struct LocalTrack {
    worker: usize,
    track: TrackId,
    announce: Announce,
}

struct RemoteTrack {
    key: u32,
    worker: usize,
    call: Uuid,
    upstream_alias: Option<u32>,
    /// One per simulcast layer (each numbers its packets on its own).
    reassemblers: Vec<Reassembler>,
    last_keyframe_request: Option<Instant>,
    stale_since: Option<Instant>,
    /// The layers this edge's sessions need (bit per layer; all until the
    /// core says).
    layers: u8,
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

/// The relay task's state.
struct Client {
    node: String,
    uplink: Arc<Uplink>,
    workers: Vec<WorkerHandle>,
    metrics: EdgeRelayMetrics,
    calls: HashMap<Uuid, usize>,
    local: HashMap<u32, LocalTrack>,
    local_ids: HashMap<String, u32>,
    remote: HashMap<String, RemoteTrack>,
    remote_by_alias: HashMap<u32, String>,
    remote_by_key: HashMap<u32, String>,
    next_alias: u32,
    next_key: u32,
    control: Option<mpsc::Sender<Control>>,
    /// The relay stopped reading our control frames: drop the link.
    control_stuck: bool,
}

impl Client {
    fn send(&mut self, message: Control) {
        if let Some(control) = &self.control
            && control.try_send(message).is_err()
        {
            self.control_stuck = true;
        }
    }

    /// Hands a command to a worker: frames may be dropped when its queue
    /// is full (counted by the caller); tracks and subscriptions never are.
    fn command(&self, worker: usize, command: RelayCommand) -> bool {
        let Some(w) = self.workers.get(worker) else {
            return false;
        };
        if matches!(command, RelayCommand::RemoteFrame { .. }) {
            w.commands.try_send(Command::Relay(command)).is_ok()
        } else {
            // Fails only if the worker stopped.
            w.relay.send(command).is_ok()
        }
    }

    fn on_event(&mut self, event: RelayEvent) {
        match event {
            RelayEvent::CallActive { worker, call } => {
                self.calls.insert(call, worker);
                self.send(Control::Interest {
                    call,
                    interested: true,
                });
            }
            RelayEvent::CallIdle(call) => {
                self.calls.remove(&call);
                self.send(Control::Interest {
                    call,
                    interested: false,
                });
                // The worker dropped the call's remote tracks itself.
                let gone: Vec<String> = self
                    .remote
                    .iter()
                    .filter(|(_, r)| r.call == call)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in gone {
                    self.forget_remote(&id);
                }
            }
            RelayEvent::TrackPublished {
                worker,
                track,
                call,
                kind,
                source,
                codec,
                user,
                device,
                layers,
            } => {
                let alias = self.next_alias;
                self.next_alias = self.next_alias.wrapping_add(1).max(1);
                let video = kind == MediaKind::Video;
                let announce = Announce {
                    call,
                    track: format!("{}:{alias}", self.node),
                    alias,
                    kind: if video { Kind::Video } else { Kind::Audio },
                    // As SDP names them.
                    codec: match codec {
                        str0m::format::Codec::H264 => "H264",
                        str0m::format::Codec::Vp8 => "VP8",
                        _ => "opus",
                    }
                    .into(),
                    origin: self.node.clone(),
                    user,
                    device,
                    muted: false,
                    layers,
                    source: wire_source(source),
                };
                self.local_ids.insert(announce.track.clone(), alias);
                self.send(Control::Announce(announce.clone()));
                self.local.insert(
                    alias,
                    LocalTrack {
                        worker,
                        track,
                        announce,
                    },
                );
            }
            RelayEvent::TrackEnded { worker, track } => {
                let alias = self
                    .local
                    .iter()
                    .find(|(_, l)| l.worker == worker && l.track == track)
                    .map(|(a, _)| *a);
                if let Some(local) = alias.and_then(|a| self.local.remove(&a)) {
                    self.local_ids.remove(&local.announce.track);
                    self.uplink.forget(local.announce.alias);
                    self.send(Control::Unannounce {
                        track: local.announce.track,
                    });
                }
            }
            RelayEvent::KeyframeRequest(key) => {
                if let Some(id) = self.remote_by_key.get(&key).cloned() {
                    self.request_keyframe(&id, Instant::now(), true);
                }
            }
            RelayEvent::TrackMuted {
                worker,
                track,
                muted,
            } => {
                let local = self
                    .local
                    .values_mut()
                    .find(|l| l.worker == worker && l.track == track);
                if let Some(l) = local {
                    // Kept for announcements on a redialed link.
                    l.announce.muted = muted;
                    let track = l.announce.track.clone();
                    self.send(Control::TrackState { track, muted });
                }
            }
            RelayEvent::RemoteLayers { key, layers } => {
                let id = self.remote_by_key.get(&key).cloned();
                if let Some(r) = id.as_ref().and_then(|id| self.remote.get_mut(id))
                    && r.layers != layers
                {
                    r.layers = layers;
                    if r.upstream_alias.is_some() {
                        let track = id.unwrap_or_default();
                        self.send(Control::Subscribe { track, layers });
                    }
                }
            }
            RelayEvent::Data {
                call,
                user,
                device,
                binary,
                payload,
            } => {
                // Only calls the relay knows we are in (it refuses others).
                if self.calls.contains_key(&call) {
                    self.send(Control::Data {
                        call,
                        user,
                        device,
                        binary,
                        payload,
                    });
                }
            }
        }
    }

    fn request_keyframe(&mut self, id: &str, now: Instant, asked_by_worker: bool) {
        let Some(r) = self.remote.get_mut(id) else {
            return;
        };
        // Workers throttle their own requests; ours (after a gap) are
        // throttled here.
        let throttled = !asked_by_worker
            && r.last_keyframe_request
                .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_THROTTLE);
        if throttled || r.upstream_alias.is_none() {
            return;
        }
        r.last_keyframe_request = Some(now);
        self.send(Control::KeyframeRequest {
            track: id.to_owned(),
        });
    }

    fn forget_remote(&mut self, id: &str) {
        if let Some(r) = self.remote.remove(id) {
            self.remote_by_key.remove(&r.key);
            if let Some(alias) = r.upstream_alias {
                self.remote_by_alias.remove(&alias);
            }
        }
    }

    fn on_control(&mut self, message: Control) {
        match message {
            Control::Announce(a) => {
                let Some(&worker) = self.calls.get(&a.call) else {
                    return;
                };
                if a.origin == self.node {
                    // Our own track, echoed (a relay must not, but a
                    // reconnect race could): never receive it back.
                    return;
                }
                if let Some(old) = self.remote.get(&a.track).and_then(|r| r.upstream_alias) {
                    self.remote_by_alias.remove(&old);
                }
                let video = a.kind == Kind::Video;
                let known = self.remote.contains_key(&a.track);
                if !known {
                    let key = self.next_key;
                    self.next_key = self.next_key.wrapping_add(1).max(1);
                    let added = self.command(
                        worker,
                        RelayCommand::AddRemoteTrack {
                            key,
                            call: a.call,
                            kind: if video {
                                MediaKind::Video
                            } else {
                                MediaKind::Audio
                            },
                            source: core_source(a.source),
                            user: a.user,
                            device: a.device.clone(),
                            layers: a.layers,
                        },
                    );
                    if !added {
                        return;
                    }
                    self.remote_by_key.insert(key, a.track.clone());
                    self.remote.insert(
                        a.track.clone(),
                        RemoteTrack {
                            key,
                            worker,
                            call: a.call,
                            upstream_alias: None,
                            reassemblers: Vec::new(),
                            last_keyframe_request: None,
                            stale_since: None,
                            layers: ((1u16 << a.layers) - 1) as u8,
                        },
                    );
                }
                if let Some(r) = self.remote.get_mut(&a.track) {
                    // (Re)bound: fresh reassemblers wait for a keyframe.
                    r.upstream_alias = Some(a.alias);
                    r.stale_since = None;
                    r.reassemblers = (0..a.layers).map(|_| reassembler(video)).collect();
                }
                self.remote_by_alias.insert(a.alias, a.track.clone());
                if let Some(r) = self.remote.get(&a.track) {
                    let command = RelayCommand::RemoteMuted {
                        key: r.key,
                        muted: a.muted,
                    };
                    self.command(r.worker, command);
                }
                // Every local participant receives every track of its call;
                // the layers the core needs (every layer until it says).
                let layers = self
                    .remote
                    .get(&a.track)
                    .map_or(((1u16 << a.layers) - 1) as u8, |r| r.layers);
                self.send(Control::Subscribe {
                    track: a.track.clone(),
                    layers,
                });
                if video {
                    self.request_keyframe(&a.track, Instant::now(), true);
                }
            }
            Control::Unannounce { track } => {
                if let Some(r) = self.remote.get(&track) {
                    let (worker, key) = (r.worker, r.key);
                    self.command(worker, RelayCommand::RemoveRemoteTrack(key));
                }
                self.forget_remote(&track);
            }
            Control::TrackState { track, muted } => {
                if let Some(r) = self.remote.get(&track) {
                    self.command(r.worker, RelayCommand::RemoteMuted { key: r.key, muted });
                }
            }
            Control::Subscribe { track, layers } => self.subscribed(&track, true, layers),
            Control::Unsubscribe { track } => self.subscribed(&track, false, 0),
            Control::KeyframeRequest { track } => {
                if let Some(l) = self.local_ids.get(&track).and_then(|a| self.local.get(a)) {
                    self.command(l.worker, RelayCommand::KeyframeRequest(l.track));
                }
            }
            Control::Nack { track, sequences } => {
                if let Some(&alias) = self.local_ids.get(&track) {
                    self.uplink.resend(alias, &sequences);
                }
            }
            Control::Data {
                call,
                user,
                device,
                binary,
                payload,
            } => {
                if let Some(&worker) = self.calls.get(&call) {
                    self.command(
                        worker,
                        RelayCommand::Data {
                            call,
                            user,
                            device,
                            binary,
                            payload,
                        },
                    );
                }
            }
            Control::Ping { nonce } => self.send(Control::Pong { nonce }),
            Control::Hello(_) | Control::Interest { .. } | Control::Pong { .. } => {}
        }
    }

    fn subscribed(&mut self, track: &str, on: bool, layers: u8) {
        if let Some((&alias, l)) = self
            .local_ids
            .get(track)
            .and_then(|a| self.local.get_key_value(a))
        {
            self.command(
                l.worker,
                RelayCommand::Subscribed {
                    track: l.track,
                    alias: on.then_some(alias),
                    layers,
                },
            );
        }
    }

    fn on_datagram(&mut self, datagram: &[u8]) {
        let Ok((header, packet)) = MediaHeader::decode(datagram) else {
            self.metrics.link.dropped(DropReason::Malformed);
            return;
        };
        let Ok((rtp, payload)) = RtpHeader::decode(packet) else {
            self.metrics.link.dropped(DropReason::Malformed);
            return;
        };
        let Some(r) = self
            .remote_by_alias
            .get(&header.alias)
            .and_then(|id| self.remote.get_mut(id))
        else {
            self.metrics.link.dropped(DropReason::UnknownTrack);
            return;
        };
        let Some(reassembler) = r.reassemblers.get_mut(usize::from(header.layer)) else {
            self.metrics.link.dropped(DropReason::Malformed);
            return;
        };
        let now = Instant::now();
        let recovered = reassembler.stats().recovered;
        let pushed = reassembler.push(now, &header, &rtp, payload);
        self.metrics
            .recovered
            .inc_by(reassembler.stats().recovered - recovered);
        // Most packets complete nothing: the track id is looked up (and
        // cloned) only when there is something to hand on or ask for.
        let idle = pushed.frames.is_empty()
            && pushed.nacks.is_empty()
            && !pushed.loss
            && !reassembler.waiting_keyframe();
        if idle {
            return;
        }
        if let Some(id) = self.remote_by_alias.get(&header.alias).cloned() {
            self.handle_pushed(&id, header.layer, pushed, now);
        }
    }

    /// Gives up gaps waited on too long and repeats NACKs.
    fn poll_reassembly(&mut self, now: Instant) {
        let stalled: Vec<(String, u8)> = self
            .remote
            .iter()
            .flat_map(|(id, r)| {
                r.reassemblers
                    .iter()
                    .enumerate()
                    .filter(|(_, re)| re.stalled())
                    .map(move |(layer, _)| (id.clone(), layer as u8))
            })
            .collect();
        for (id, layer) in stalled {
            if let Some(re) = self
                .remote
                .get_mut(&id)
                .and_then(|r| r.reassemblers.get_mut(usize::from(layer)))
            {
                let pushed = re.poll(now);
                self.handle_pushed(&id, layer, pushed, now);
            }
        }
    }

    /// Frames to the worker, NACKs and keyframe requests to the relay.
    fn handle_pushed(&mut self, id: &str, layer: u8, pushed: relay::media::Pushed, now: Instant) {
        let Some(r) = self.remote.get(id) else {
            return;
        };
        let waiting = r
            .reassemblers
            .get(usize::from(layer))
            .is_some_and(Reassembler::waiting_keyframe);
        let (worker, key) = (r.worker, r.key);
        if pushed.loss {
            self.metrics.frame_gaps.inc();
        }
        if !pushed.nacks.is_empty() {
            self.metrics.nacks_sent.inc_by(pushed.nacks.len() as u64);
            self.send(Control::Nack {
                track: id.to_owned(),
                sequences: pushed.nacks,
            });
        }
        for frame in pushed.frames {
            let time = frame.rtp_time as u32;
            let packets = frame
                .packets
                .into_iter()
                .map(|p| RemotePacket {
                    layer,
                    seq: p.seq,
                    time,
                    marker: p.marker,
                    audio_level: p.audio_level.map(|l| -(l.min(127) as i8)),
                    payload: p.payload,
                })
                .collect();
            let command = RelayCommand::RemoteFrame {
                key,
                packets,
                after_gap: frame.after_gap,
            };
            if self.command(worker, command) {
                self.metrics.frames_received.inc();
            } else {
                self.metrics.frames_dropped.inc();
            }
        }
        if waiting {
            self.request_keyframe(id, now, false);
        }
    }

    /// The link is up: replay the desired state.
    fn connected(&mut self, control: mpsc::Sender<Control>) {
        self.control = Some(control);
        self.control_stuck = false;
        let mut calls: Vec<Uuid> = self.calls.keys().copied().collect();
        calls.sort();
        for call in calls {
            self.send(Control::Interest {
                call,
                interested: true,
            });
        }
        let mut local: Vec<(u32, Announce, usize, TrackId)> = self
            .local
            .iter()
            .map(|(alias, l)| (*alias, l.announce.clone(), l.worker, l.track))
            .collect();
        local.sort_by_key(|(alias, ..)| *alias);
        let mut resubscribe = Vec::new();
        for (_, announce, worker, track) in local {
            self.send(Control::Announce(announce));
            resubscribe.push((worker, track));
        }
        // The relay subscribes afresh; until then nothing is sent.
        for (worker, track) in resubscribe {
            self.command(
                worker,
                RelayCommand::Subscribed {
                    track,
                    alias: None,
                    layers: 0,
                },
            );
        }
        self.mark_stale();
    }

    /// The link is down.
    fn disconnected(&mut self) {
        self.control = None;
        self.mark_stale();
    }

    fn mark_stale(&mut self) {
        let now = Instant::now();
        self.remote_by_alias.clear();
        for r in self.remote.values_mut() {
            r.upstream_alias = None;
            r.stale_since.get_or_insert(now);
        }
    }

    /// Removes remote tracks that were not re-announced in time.
    fn sweep(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, r)| {
                r.stale_since
                    .is_some_and(|at| now.saturating_duration_since(at) >= STALE_AFTER)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(r) = self.remote.get(&id) {
                let (worker, key) = (r.worker, r.key);
                self.command(worker, RelayCommand::RemoveRemoteTrack(key));
            }
            self.forget_remote(&id);
        }
        self.metrics.remote_tracks.set(self.remote.len() as i64);
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
        let mut client = Client {
            node: hello.node.clone(),
            uplink: uplink.clone(),
            workers,
            metrics: metrics.clone(),
            calls: HashMap::new(),
            local: HashMap::new(),
            local_ids: HashMap::new(),
            remote: HashMap::new(),
            remote_by_alias: HashMap::new(),
            remote_by_key: HashMap::new(),
            next_alias: 1,
            next_key: 1,
            control: None,
            control_stuck: false,
        };
        let timeout = Duration::from_millis(config.link_timeout_ms);
        let mut backoff = Backoff::new(timeout.min(Duration::from_secs(1)));
        let mut reader: Option<ControlReader> = None;
        let mut connection: Option<Connection> = None;
        let mut redial_at = tokio::time::Instant::now();
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        // Reassembly deadlines and repeated NACKs.
        let mut gaps = tokio::time::interval(Duration::from_millis(20));
        gaps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut peer_label = String::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => client.on_event(event),
                    None => break,
                },
                message = next_control(&mut reader) => match message {
                    Ok(Some(message)) => client.on_control(message),
                    Ok(None) | Err(_) => {
                        if let Err(error) = &message {
                            tracing::info!(%error, "relay link down");
                        }
                        drop_link(&mut reader, &mut connection, &uplink, &metrics, &mut client);
                        redial_at = tokio::time::Instant::now() + backoff.next_delay();
                    }
                },
                datagram = next_datagram(&connection) => match datagram {
                    Ok(datagram) => {
                        if let Some((_, counters)) = uplink.lock().as_ref() {
                            counters.received(datagram.len());
                        }
                        client.on_datagram(&datagram);
                    }
                    Err(error) => {
                        tracing::info!(%error, "relay link down");
                        drop_link(&mut reader, &mut connection, &uplink, &metrics, &mut client);
                        redial_at = tokio::time::Instant::now() + backoff.next_delay();
                    }
                },
                () = tokio::time::sleep_until(redial_at), if connection.is_none() => {
                    // Bounded: worker events and `stop` wait meanwhile.
                    let dialed = tokio::time::timeout(
                        timeout,
                        link::dial(&endpoint, config.addr, &config.server_name, &hello),
                    )
                    .await
                    .unwrap_or(Err(link::LinkError::Handshake("no answer in time")));
                    match dialed {
                        Ok(l) => {
                            backoff.reset();
                            tracing::info!(relay = %l.hello.node, addr = %config.addr, "relay link up");
                            metrics.link.links.with_label_values(&["relay"]).inc();
                            metrics.link.links_established.with_label_values(&["relay"]).inc();
                            let counters = metrics.link.link(&l.hello.node);
                            peer_label = l.hello.node.clone();
                            *uplink.lock() = Some((l.connection.clone(), counters));
                            connection = Some(l.connection);
                            reader = Some(l.reader);
                            client.connected(link::spawn_writer(l.send));
                        }
                        Err(error) => {
                            tracing::debug!(addr = %config.addr, %error, "dialing relay failed");
                            redial_at = tokio::time::Instant::now() + backoff.next_delay();
                        }
                    }
                }
                _ = gaps.tick() => client.poll_reassembly(Instant::now()),
                _ = sweep.tick() => {
                    client.sweep(Instant::now());
                    if let Some(c) = &connection {
                        metrics.link.rtt.with_label_values(&[&peer_label]).set(c.rtt().as_secs_f64());
                    }
                }
                () = &mut stop => break,
            }
            if client.control_stuck && connection.is_some() {
                tracing::warn!("relay not reading control frames; dropping the link");
                drop_link(&mut reader, &mut connection, &uplink, &metrics, &mut client);
                redial_at = tokio::time::Instant::now() + backoff.next_delay();
            }
        }
        if let Some(c) = connection {
            c.close(0u32.into(), b"edge stopping");
        }
        endpoint.close(0u32.into(), b"edge stopping");
    }
}

fn drop_link(
    reader: &mut Option<ControlReader>,
    connection: &mut Option<Connection>,
    uplink: &Uplink,
    metrics: &EdgeRelayMetrics,
    client: &mut Client,
) {
    if let Some(c) = connection.take() {
        c.close(0u32.into(), b"link ended");
        metrics.link.links.with_label_values(&["relay"]).dec();
    }
    *reader = None;
    *uplink.lock() = None;
    client.disconnected();
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
