//! The SFU core, sans-IO: datagrams, signaling and `now` in; one
//! [`Output`] at a time out of [`Sfu::poll_output`] (datagrams, signaling,
//! events, relay packets, and finally when to call again). No sockets, no
//! tokio, no clock: a worker shell feeds it, and tests drive it on a virtual
//! clock with str0m clients. The crate's dependencies enforce it.
//!
//! - One str0m `Rtc` per participant (ICE-lite, DTLS-SRTP, one DTLS
//!   certificate per core instance) in **RTP mode**: a publisher's RTP
//!   packets are forwarded as they arrive, never depacketized, and the
//!   payload bytes are shared by every subscriber (`Arc<[u8]>`).
//! - Each subscriber has a [`Subscription`](peer::Subscription) per track
//!   with its own [`rewrite::Rewriter`]: its sequence numbers, timestamps
//!   and VP8 picture ids stay continuous across pauses, mutes and (later)
//!   layer switches; str0m keeps a send buffer per subscriber and answers
//!   its NACKs with RTX.
//! - [`negotiation`]: a participant's offered send m-lines become tracks of
//!   its call; every other participant gets a send-only m-line per track
//!   through an edge offer (one at a time) and a track list.
//! - [`forward`]: keyframe gating (video starts on a keyframe's first
//!   packet), keyframe requests upstream (PLI, throttled), mute and pause.
//! - [`relay`]: tracks of other edges' participants arrive as packets from
//!   the relay and reach subscribers like local ones; local tracks the
//!   relay subscribed to come out as [`RelayPacket`]s.
//! - Demultiplexing: a datagram's source address names its peer once the
//!   peer's ICE accepted a STUN check from it; STUN checks find their peer
//!   by the ICE username (our ufrag), never by asking every peer. A timer
//!   heap wakes only peers whose str0m timeout is due.
//!
//! Architecture invariant: nothing here performs I/O or reads the clock,
//! and nothing here knows the wire formats of signaling or the relay (the
//! shell translates [`Signal`] and [`RelayPacket`]).

mod allocation;
mod data;
mod dtls;
mod dynacast;
mod forward;
pub mod layers;
mod negotiation;
pub mod overload;
mod peer;
mod relay;
pub mod rewrite;
mod speakers;
mod stun;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Rtc};
use uuid::Uuid;

pub use crate::data::{DataMessage, MAX_DATA_MESSAGE};
use crate::peer::Peer;
pub use crate::speakers::Speaker;

/// A participant session in this core.
pub type PeerId = u64;
/// A published track.
pub type TrackId = u64;

/// Most timeouts a subscriber is given in one flush of written media.
const FLUSH_ROUNDS: u32 = 64;
/// How far ahead of `now` a flush follows str0m's next timeout (it asks
/// for the next packet a microsecond after the last).
const FLUSH_SLACK: Duration = Duration::from_micros(500);
/// How long [`Sfu::poll_output`] says to wait when no peer has a timer.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Limits and timing.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Participants one call may have on this node.
    pub max_participants_per_call: usize,
    /// Participants this core serves.
    pub max_participants: usize,
    /// Least time between two keyframe requests sent upstream for a track.
    pub keyframe_throttle: Duration,
    /// A peer whose ICE and DTLS are not up this long after it joined is
    /// dropped: a session that never connects only holds a place.
    pub connect_timeout: Duration,
    /// An overloaded worker sheds subscribers' video ([`overload`]; off
    /// by default, as `edge.shed_video_when_overloaded`).
    pub shed_when_overloaded: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            max_participants_per_call: 100,
            max_participants: 1000,
            keyframe_throttle: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            shed_when_overloaded: false,
        }
    }
}

/// Why a peer was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It left, or its transport failed: the session is over.
    Gone,
    /// A newer join with the same session (the same join token) took its
    /// place: the session lives on in the new peer.
    Replaced,
    /// ICE and DTLS did not come up within the connect timeout.
    ConnectTimeout,
    /// The control plane says the session is no longer a participant here
    /// (it left, was removed, its call ended, or it moved to another edge).
    Revoked,
}

impl CloseReason {
    /// The signaling error code the peer's client is told.
    pub fn code(self) -> &'static str {
        match self {
            CloseReason::Gone => "gone",
            CloseReason::Replaced => "replaced",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::Revoked => "revoked",
        }
    }

    /// Whether the session ended with this peer (to be reported to the
    /// control plane): not when another peer carries it on, nor when the
    /// control plane itself ended it.
    pub fn ends_session(self) -> bool {
        matches!(self, CloseReason::Gone | CloseReason::ConnectTimeout)
    }
}

/// Who a peer is (from its verified join token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The call.
    pub call: Uuid,
    /// The user.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// The control plane's session id.
    pub session: Uuid,
    /// The call's one video codec (`Codec::Vp8` or `Codec::H264`): the
    /// only one its session offers or accepts.
    pub video_codec: Codec,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    /// The call has its maximum of participants here.
    #[error("the call is full ({0} participants)")]
    CallFull(usize),
    /// This node has its maximum of participants.
    #[error("this edge is full ({0} participants)")]
    NodeFull(usize),
    /// The offer is not SDP str0m can answer.
    #[error("bad SDP offer: {0}")]
    BadSdp(String),
}

impl JoinError {
    /// The signaling error code.
    pub fn code(&self) -> &'static str {
        match self {
            JoinError::CallFull(_) => "call_full",
            JoinError::NodeFull(_) => "node_full",
            JoinError::BadSdp(_) => "bad_sdp",
        }
    }
}

/// Why a signaling message from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// No such peer (it left).
    #[error("no such session")]
    UnknownPeer,
    /// An answer arrived when no offer was outstanding.
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    /// The answer is not SDP str0m can accept.
    #[error("bad SDP answer: {0}")]
    BadSdp(String),
    /// Mute or pause named an m-line the peer does not publish or receive.
    #[error("no such track: {0}")]
    UnknownTrack(String),
    /// A layer request named no layer (`q`, `h`, `f`).
    #[error("no such layer: {0} (q, h or f)")]
    BadLayer(String),
}

impl SignalError {
    /// The `code` of the signaling error frame.
    pub fn code(&self) -> &'static str {
        match self {
            SignalError::UnknownPeer => "gone",
            SignalError::NoPendingOffer => "bad_message",
            SignalError::BadSdp(_) => "bad_sdp",
            SignalError::UnknownTrack(_) => "unknown_track",
            SignalError::BadLayer(_) => "bad_message",
        }
    }
}

/// Where a track's media comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackOrigin {
    /// A participant on this node, on one of its m-lines.
    Local {
        /// The publisher.
        peer: PeerId,
        /// Its m-line.
        mid: Mid,
    },
    /// A participant of another edge, through the relay.
    Remote {
        /// The shell's key for it.
        key: u32,
    },
}

/// What a published track carries, as its publisher declared it (the
/// default: camera for video, microphone for audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A camera.
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen or window.
    Screen,
    /// The sound of a shared screen or tab.
    ScreenAudio,
}

impl Source {
    /// Its name in signaling and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Source::Camera => "camera",
            Source::Microphone => "microphone",
            Source::Screen => "screen",
            Source::ScreenAudio => "screen_audio",
        }
    }

    /// The source a name stands for.
    pub fn parse(name: &str) -> Option<Source> {
        [
            Source::Camera,
            Source::Microphone,
            Source::Screen,
            Source::ScreenAudio,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// What an undeclared track of `kind` is.
    pub fn default_for(kind: MediaKind) -> Source {
        if kind == MediaKind::Video {
            Source::Camera
        } else {
            Source::Microphone
        }
    }

    /// Whether it is a kind of video.
    pub fn is_video(self) -> bool {
        matches!(self, Source::Camera | Source::Screen)
    }
}

/// A published track.
#[derive(Debug, Clone)]
pub(crate) struct Track {
    pub origin: TrackOrigin,
    /// What it carries (a screen gets its own layer policy).
    pub source: Source,
    pub call: Uuid,
    pub kind: MediaKind,
    /// The call's codec for this kind (an SFU does not transcode).
    pub codec: Codec,
    pub user: Uuid,
    pub device: String,
    /// Its publisher muted it: nothing of it is forwarded.
    pub muted: bool,
    /// A local track the relay subscribed to, under this alias.
    pub relay_alias: Option<u32>,
    /// Its layers, lowest first (one unless its publisher sends
    /// simulcast).
    pub layers: Vec<layers::LayerSource>,
    /// A microphone's loudness history, for speaker detection.
    pub speech: Option<speakers::Activity>,
    /// The layers the relay wants of a local track it subscribed to (bit
    /// per layer).
    pub relay_layers: u8,
    /// The layers other media workers of this node want of it, for their
    /// participants of the same call (bit per layer; the shell knows which
    /// worker wants which): they come out as [`Output::Export`].
    pub export_layers: u8,
    /// What its publisher (or, for a remote track, the relay) was told to
    /// send.
    pub demand: dynacast::Demand,
}

impl Track {
    #[allow(clippy::too_many_arguments)]
    fn new(
        origin: TrackOrigin,
        call: Uuid,
        kind: MediaKind,
        video_codec: Codec,
        user: Uuid,
        device: String,
        layers: Vec<layers::LayerSource>,
    ) -> Self {
        Track {
            origin,
            source: Source::default_for(kind),
            call,
            kind,
            codec: if kind == MediaKind::Video {
                video_codec
            } else {
                Codec::Opus
            },
            user,
            device,
            muted: false,
            relay_alias: None,
            layers: if layers.is_empty() {
                vec![layers::LayerSource::new(None)]
            } else {
                layers
            },
            speech: speakers::detects(kind, Source::default_for(kind))
                .then(speakers::Activity::default),
            relay_layers: 0,
            export_layers: 0,
            demand: dynacast::Demand::default(),
        }
    }

    /// Says what it carries (only a microphone's levels pick speakers).
    fn set_source(&mut self, source: Source) {
        self.source = source;
        self.speech = speakers::detects(self.kind, source).then(speakers::Activity::default);
    }

    /// Its layers as [`layers::choose`] sees them.
    fn layer_views(&self, now: Instant) -> Vec<layers::LayerView> {
        self.layers
            .iter()
            .map(|l| layers::LayerView {
                arriving: l.arriving(now),
                bps: l.rate.bps(),
            })
            .collect()
    }
}

/// An RTP packet of a local track for the relay: the publisher's own
/// sequence number and timestamp (the relay's NACKs use them), its payload
/// untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPacket {
    /// The local track.
    pub track: TrackId,
    /// The track's alias on the relay link.
    pub alias: u32,
    /// Video (else audio).
    pub video: bool,
    /// Its simulcast layer (0 for a single-layer track).
    pub layer: u8,
    /// The publisher's extended sequence number (the relay link carries
    /// its low 16 bits).
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub time: u32,
    /// The last packet of a frame (every audio packet is a frame).
    pub frame_end: bool,
    /// The first packet of a frame.
    pub frame_start: bool,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    /// The publisher's audio level (RFC 6464, as str0m reads it: 0 the
    /// loudest, -127 silence, in dBov), if its packet had one.
    pub audio_level: Option<i8>,
    /// The RTP payload (for VP8, from the payload descriptor on).
    pub payload: Arc<[u8]>,
}

/// A packet of a remote track, from the relay, in order (per layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePacket {
    /// Its simulcast layer (0 for a single-layer track).
    pub layer: u8,
    /// The publisher's extended sequence number.
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub time: u32,
    /// The last packet of a frame.
    pub marker: bool,
    /// The publisher's audio level (dBov, 0 to -127), if it came.
    pub audio_level: Option<i8>,
    /// The RTP payload.
    pub payload: Arc<[u8]>,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// A track as one subscriber receives it (for its track list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackState {
    /// The subscriber's m-line.
    pub mid: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// What it carries.
    pub source: Source,
    /// Its publisher muted it.
    pub muted: bool,
    /// This subscriber paused it.
    pub paused: bool,
}

/// A signaling message for a peer (the shell puts it on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An edge-initiated offer (tracks to receive changed); the peer
    /// answers through [`Sfu::handle_answer`].
    Offer(String),
    /// Every track the peer receives now.
    Tracks(Vec<TrackState>),
    /// Which layer of each received video track is sent now, and the
    /// bandwidth estimate (bits per second) towards the peer.
    Layers(Vec<LayerState>, Option<u64>),
    /// Who speaks in the call: the dominant speaker, and everyone heard
    /// in the last half second, loudest first. Sent when either changes.
    Speakers {
        /// The dominant speaker (none before anyone spoke).
        dominant: Option<Speaker>,
        /// Everyone speaking now.
        active: Vec<Speaker>,
    },
    /// Which simulcast encodings of its track on `mid` the peer should
    /// send (by rid): the others nobody needs now (dynacast).
    Encodings {
        /// The peer's m-line.
        mid: String,
        /// The rids to keep sending.
        active: Vec<String>,
    },
    /// Something the peer sent was refused; the session goes on.
    Refused {
        /// The signaling error code (`bad_sdp`, `data_too_large`, ...).
        code: &'static str,
        /// For people.
        message: String,
    },
}

/// A received video track's layer choice (for [`Signal::Layers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerState {
    /// The subscriber's m-line.
    pub mid: String,
    /// The layer sent now (`q`, `h`, `f`), or none (video paused).
    pub layer: Option<&'static str>,
    /// The layer being switched to.
    pub target: Option<&'static str>,
    /// The publisher's layers arriving now.
    pub available: Vec<&'static str>,
    /// The highest layer the subscriber asked for.
    pub max: &'static str,
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// A peer connected (ICE and DTLS up).
    Connected(PeerId),
    /// A peer is gone (left, failed, its transport died, replaced,
    /// revoked); report the session to the control plane when
    /// [`CloseReason::ends_session`].
    Closed {
        /// The peer.
        peer: PeerId,
        /// Who it was.
        info: PeerInfo,
        /// Why.
        reason: CloseReason,
    },
    /// A call's first participant joined this core (the relay should hear
    /// of our interest).
    CallActive(Uuid),
    /// A call's last participant left; its remote tracks are gone too.
    CallIdle(Uuid),
    /// A local participant published a track.
    TrackPublished {
        /// The track.
        track: TrackId,
        /// Its call.
        call: Uuid,
        /// Audio or video.
        kind: MediaKind,
        /// What it carries.
        source: Source,
        /// Its codec (Opus, or the call's video codec).
        codec: Codec,
        /// The publisher.
        user: Uuid,
        /// Their device.
        device: String,
        /// How many simulcast layers it has (1: none).
        layers: u8,
    },
    /// A local track ended.
    TrackEnded(TrackId),
    /// A local track's publisher muted or unmuted it (the relay tells the
    /// other edges).
    TrackMuted {
        /// The track.
        track: TrackId,
        /// Muted or not.
        muted: bool,
    },
    /// The layers of a remote track this core needs changed: subscribe to
    /// those at the relay (bit per layer; at least the lowest).
    RemoteLayers {
        /// The shell's key of the track.
        key: u32,
        /// The layers.
        layers: u8,
    },
    /// A remote track needs a keyframe: ask upstream.
    RemoteKeyframeRequest {
        /// The shell's key of the track.
        key: u32,
        /// Of this layer.
        layer: u8,
    },
}

/// What the core has for the shell, one at a time from
/// [`Sfu::poll_output`]. `Timeout` comes last: nothing more until then (or
/// until the next input).
#[must_use]
#[derive(Debug)]
pub enum Output {
    /// Send a datagram.
    Transmit(Transmit),
    /// Send a signaling message to a peer.
    Signal(PeerId, Signal),
    /// Act on an event.
    Event(SfuEvent),
    /// Send a packet of a local track to the relay.
    Relay(RelayPacket),
    /// Hand a packet of a track (local or from the relay) to the other
    /// media workers of this node that subscribed to its layer
    /// ([`Sfu::set_export_layers`]); its `alias` means nothing here.
    Export(RelayPacket),
    /// A participant sent a data message: wrap it, give it back to
    /// [`Sfu::deliver_data`] for the others here, and send it to the relay
    /// for the other edges.
    Data(DataMessage),
    /// Call [`Sfu::handle_timeout`] at this time.
    Timeout(Instant),
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Datagrams accepted by some peer.
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams queued to send.
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Datagrams no peer took (garbage, unknown sources, late packets).
    pub dropped: u64,
    /// Of them, DTLS datagrams carrying an epoch-0 (plaintext, so
    /// unauthenticated) alert: anyone who can forge a client's address can
    /// send one, and str0m would end the session on it.
    pub forged_alerts: u64,
    /// RTP packets forwarded (one per subscriber).
    pub forwarded: u64,
    /// Timeouts handed to sessions (`Rtc::handle_input(Timeout)`): each
    /// runs the whole session's timers (ICE, DTLS, SCTP, BWE, feedback),
    /// and str0m's pacer releases at most one packet per timeout, so this
    /// over `datagrams_out` is the per-packet timer cost.
    pub session_timeouts: u64,
    /// Keyframe requests sent upstream.
    pub keyframe_requests: u64,
    /// Keyframe requests (PLI/FIR) subscribers sent.
    pub keyframe_requests_received: u64,
    /// NACKs subscribers sent (each answered by str0m with RTX from its
    /// send buffer).
    pub nacks_received: u64,
    /// NACKs sent to publishers for their lost packets.
    pub nacks_sent: u64,
    /// Video subscriptions switched from one simulcast layer to another.
    pub layer_switches: u64,
    /// Data messages participants sent, accepted.
    pub data_in: u64,
    /// Data messages written to receivers' channels.
    pub data_out: u64,
    /// Data messages refused (too large, too many).
    pub data_refused: u64,
    /// Data messages a receiver missed (its channel's buffer was full).
    pub data_dropped: u64,
    /// Peers dropped for not connecting within the connect timeout.
    pub connect_timeouts: u64,
    /// Peers replaced by a newer join of the same session.
    pub replaced: u64,
    /// Peers closed because the control plane revoked their session.
    pub revoked: u64,
    /// Steps a subscriber's video was shed because the worker was
    /// overloaded ([`overload`]).
    pub overload_sheds: u64,
}

/// What a core's subscribers receive now (the shell's gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaSummary {
    /// Video subscriptions by the layer being sent: q, h, f (a
    /// single-layer track counts as f).
    pub video_by_layer: [u64; 3],
    /// Video subscriptions sending nothing now: paused for bandwidth or by
    /// the subscriber, muted, or waiting for a keyframe.
    pub video_idle: u64,
    /// Each connected peer's bandwidth estimate, bits per second.
    pub estimates: Vec<u64>,
}

/// The SFU core of one worker.
pub struct Sfu {
    config: SfuConfig,
    local_addr: SocketAddr,
    cert: Option<DtlsCert>,
    peers: HashMap<PeerId, Peer>,
    calls: HashMap<Uuid, Vec<PeerId>>,
    tracks: HashMap<TrackId, Track>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// When each peer not yet connected must be (stale entries: the peer
    /// connected or left).
    connect_deadlines: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// str0m events waiting to be handled ([`Sfu::process`]).
    work: VecDeque<(PeerId, Event)>,
    /// What [`Sfu::poll_output`] hands out, in order.
    out: VecDeque<Output>,
    /// Peers media was written to since the last flush.
    written: Vec<PeerId>,
    /// Remote tracks by the shell's key.
    remote_tracks: HashMap<u32, TrackId>,
    /// Tracks with a keyframe request held back by the throttle.
    deferred_keyframes: Vec<TrackId>,
    /// Each call's speakers.
    speakers: HashMap<Uuid, speakers::CallSpeakers>,
    /// When speakers are next looked at.
    next_speakers: Instant,
    /// When layer choices are next looked at again (layers that stopped
    /// arriving, bitrates that changed).
    next_allocation: Instant,
    next_peer: PeerId,
    next_track: TrackId,
    /// The latest `now` passed in (for the idle wake-up).
    last_now: Instant,
    stats: SfuStats,
    overload: overload::Overload,
}

impl Sfu {
    /// A core whose UDP socket is reachable at `local_addr` (the address
    /// advertised as the host candidate: bind exactly it).
    pub fn new(config: SfuConfig, local_addr: SocketAddr, now: Instant) -> Self {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        Sfu {
            config,
            local_addr,
            cert,
            peers: HashMap::new(),
            calls: HashMap::new(),
            tracks: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            timers: BinaryHeap::new(),
            connect_deadlines: BinaryHeap::new(),
            work: VecDeque::new(),
            out: VecDeque::new(),
            written: Vec::new(),
            remote_tracks: HashMap::new(),
            deferred_keyframes: Vec::new(),
            speakers: HashMap::new(),
            next_speakers: now,
            next_allocation: now,
            next_peer: 1,
            next_track: 1,
            last_now: now,
            overload: overload::Overload::default(),
            stats: SfuStats::default(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> SfuStats {
        self.stats
    }

    /// Participants served now.
    pub fn participants(&self) -> usize {
        self.peers.len()
    }

    /// Tracks published now.
    pub fn tracks(&self) -> usize {
        self.tracks.len()
    }

    /// Subscriptions (track × subscriber) now.
    pub fn subscriptions(&self) -> usize {
        self.peers.values().map(|p| p.subscriptions.len()).sum()
    }

    /// Which layers video subscribers get, and their estimates (walks every
    /// subscription: call it for gauges, not per packet).
    pub fn media_summary(&self) -> MediaSummary {
        let mut summary = MediaSummary::default();
        for p in self.peers.values() {
            if p.connected
                && let Some(estimate) = p.estimate
            {
                summary.estimates.push(estimate);
            }
            for (track, sub) in &p.subscriptions {
                let Some(t) = self.tracks.get(track) else {
                    continue;
                };
                if t.kind != MediaKind::Video {
                    continue;
                }
                match sub.current {
                    Some(_) if sub.paused || t.muted => summary.video_idle += 1,
                    Some(layer) => {
                        // Layer 0 of a single-layer track is its only one: f.
                        let index = if t.layers.len() <= 1 { 2 } else { layer.min(2) };
                        summary.video_by_layer[index] += 1;
                    }
                    None => summary.video_idle += 1,
                }
            }
        }
        summary
    }

    /// The next thing for the shell. Call until it returns
    /// [`Output::Timeout`], after every input.
    pub fn poll_output(&mut self) -> Output {
        if !self.written.is_empty() {
            self.flush_written();
        }
        if let Some(output) = self.out.pop_front() {
            return output;
        }
        // Stale heap entries (the peer moved its timeout, or left) go.
        let mut next = None;
        while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
            if self.peers.get(&peer).is_some_and(|p| p.timeout == at) {
                next = Some(at);
                break;
            }
            self.timers.pop();
        }
        let allocation =
            (!self.peers.is_empty()).then_some(self.next_allocation.min(self.next_speakers));
        // A deferred keyframe request is due when its throttle ends.
        let deferred = self
            .deferred_keyframes
            .iter()
            .filter_map(|t| self.tracks.get(t))
            .flat_map(|t| t.layers.iter())
            .filter(|l| l.keyframe_deferred)
            .filter_map(|l| l.last_keyframe_request)
            .min()
            .map(|at| at + self.config.keyframe_throttle);
        let allocation = match (allocation, deferred) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        };
        // Stale deadlines (connected or gone) go; the next one counts.
        while let Some(Reverse((_, peer))) = self.connect_deadlines.peek().copied() {
            if self.peers.get(&peer).is_some_and(|p| !p.connected) {
                break;
            }
            self.connect_deadlines.pop();
        }
        let connect = self.connect_deadlines.peek().map(|Reverse((at, _))| *at);
        let allocation = match (allocation, connect) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        };
        let at = match (next, allocation) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(self.last_now + IDLE_WAKE),
        };
        Output::Timeout(at)
    }

    /// A datagram arrived on the socket. Returns whether a peer took it.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        self.last_now = now;
        if dtls::has_plaintext_alert(data) {
            self.stats.forged_alerts += 1;
            self.stats.dropped += 1;
            return false;
        }
        let peer = match stun::username_ufrag(data) {
            Some(ufrag) => self.by_ufrag.get(ufrag).copied(),
            None => self.by_addr.get(&source).copied(),
        };
        let Some(peer) = peer else {
            self.stats.dropped += 1;
            return false;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local_addr, data) else {
            self.stats.dropped += 1;
            return false;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            self.stats.dropped += 1;
            return false;
        };
        let input = Input::Receive(now, receive);
        if !p.rtc.accepts(&input) {
            self.stats.dropped += 1;
            return false;
        }
        if p.rtc.handle_input(input).is_err() {
            self.stats.dropped += 1;
            self.close(peer);
            self.process(now);
            return false;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        // The address is now this peer's (ICE checked the STUN integrity).
        self.by_addr.entry(source).or_insert(peer);
        self.drive(peer);
        self.process(now);
        true
    }

    /// Time passed: wakes the peers whose timeout is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        // Each due peer once: a peer whose next timeout is `now` again
        // (str0m's pacer) waits for the next call, so this always returns.
        let mut due = Vec::new();
        while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            // Stale heap entries (the peer moved its timeout) are skipped.
            if self.peers.get(&peer).is_some_and(|p| p.timeout <= now) && !due.contains(&peer) {
                due.push(peer);
            }
        }
        for peer in due {
            self.stats.session_timeouts += 1;
            if let Some(p) = self.peers.get_mut(&peer)
                && p.rtc.handle_input(Input::Timeout(now)).is_err()
            {
                self.close(peer);
                continue;
            }
            self.drive(peer);
        }
        while let Some(Reverse((at, peer))) = self.connect_deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.connect_deadlines.pop();
            if self.peers.get(&peer).is_some_and(|p| !p.connected) {
                tracing::debug!(peer, "no ICE and DTLS in time: dropped");
                self.stats.connect_timeouts += 1;
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.rtc.disconnect();
                }
                self.close_for(peer, CloseReason::ConnectTimeout);
            }
        }
        if now >= self.next_allocation {
            self.next_allocation = now + allocation::INTERVAL;
            self.allocate_all(now);
            self.dynacast(now);
        }
        if !self.deferred_keyframes.is_empty() {
            self.send_deferred_keyframes(now);
        }
        if now >= self.next_speakers {
            self.next_speakers = now + speakers::TICK;
            self.detect_speakers(now);
        }
        self.process(now);
    }

    /// Closes the peer carrying control-plane session `session`, if any
    /// (the control plane no longer has it as a participant here).
    /// Whether one was.
    pub fn revoke(&mut self, now: Instant, session: Uuid) -> bool {
        self.last_now = now;
        let Some(peer) = self.peer_of_session(session) else {
            return false;
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtc.disconnect();
        }
        self.stats.revoked += 1;
        self.close_for(peer, CloseReason::Revoked);
        self.process(now);
        true
    }

    pub(crate) fn peer_of_session(&self, session: Uuid) -> Option<PeerId> {
        self.peers
            .iter()
            .find(|(_, p)| p.info.session == session)
            .map(|(id, _)| *id)
    }

    /// The peer leaves (signaling said so, or its socket closed).
    pub fn leave(&mut self, now: Instant, peer: PeerId) {
        self.last_now = now;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtc.disconnect();
        }
        self.close(peer);
        self.process(now);
    }

    /// Sends what was written to subscribers: str0m releases queued RTP on
    /// its next timeout, so each gets one now, once however many packets a
    /// burst of input wrote to it, rather than waiting for its timer. The
    /// shell feeds a burst of datagrams, then polls.
    fn flush_written(&mut self) {
        let now = self.last_now;
        for peer in std::mem::take(&mut self.written) {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            // One round per packet written: what str0m sends beyond them
            // (padding, probes) keeps its own pace.
            let rounds = std::mem::take(&mut p.written).min(FLUSH_ROUNDS);
            // str0m releases one queued packet per timeout and wants the
            // next a microsecond later: keep going while it asks for a time
            // within the slack and sends something (bounded: its pacer can
            // ask again and again).
            let mut at = now;
            for _ in 0..rounds {
                let Some(p) = self.peers.get_mut(&peer) else {
                    break;
                };
                self.stats.session_timeouts += 1;
                if p.rtc.handle_input(Input::Timeout(at)).is_err() {
                    p.rtc.disconnect();
                }
                let sent = self.stats.datagrams_out;
                self.drive(peer);
                match self.peers.get(&peer) {
                    Some(p)
                        if p.timeout <= now + FLUSH_SLACK && self.stats.datagrams_out > sent =>
                    {
                        at = at.max(p.timeout);
                    }
                    _ => break,
                }
            }
        }
        self.process(now);
    }

    /// Drains a peer's str0m output (its rule: after every mutation),
    /// queueing datagrams, its next timeout, and events for
    /// [`Sfu::process`].
    fn drive(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        loop {
            match p.rtc.poll_output() {
                Ok(str0m::Output::Transmit(t)) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += t.contents.len() as u64;
                    self.out.push_back(Output::Transmit(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Ok(str0m::Output::Timeout(at)) => {
                    p.timeout = at;
                    self.timers.push(Reverse((at, peer)));
                    return;
                }
                Ok(str0m::Output::Event(event)) => self.work.push_back((peer, event)),
                Err(error) => {
                    tracing::debug!(peer, %error, "peer failed");
                    p.rtc.disconnect();
                    self.work.push_back((
                        peer,
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected),
                    ));
                    return;
                }
            }
        }
    }

    /// Handles queued str0m events until none is left (handling one may
    /// queue more: a write drives the subscriber, which may ask for a
    /// keyframe).
    fn process(&mut self, now: Instant) {
        while let Some((peer, event)) = self.work.pop_front() {
            match event {
                Event::Connected => self.connected(peer, now),
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    self.close(peer);
                }
                Event::MediaAdded(added) => {
                    // Lines the edge added carry subscriptions; the peer's
                    // own are kept, to publish when they send.
                    let ours = self
                        .peers
                        .get(&peer)
                        .is_none_or(|p| p.by_mid.contains_key(&added.mid));
                    if ours {
                        continue;
                    }
                    // The publisher's send layers are our receive layers
                    // (whichever side the SDP named them on).
                    let rids: Vec<Rid> = added
                        .simulcast
                        .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
                        .unwrap_or_default()
                        .into_iter()
                        .map(|l| l.rid)
                        .collect();
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.offered.insert(added.mid, (added.kind, rids));
                    }
                    self.media_changed(peer, added.mid, added.direction);
                }
                Event::MediaChanged(changed) => {
                    self.media_changed(peer, changed.mid, changed.direction);
                }
                Event::RtpPacket(packet) => self.on_rtp(peer, packet, now),
                Event::ChannelOpen(id, _) => self.channel_open(peer, id),
                Event::ChannelData(data) => self.on_data(peer, data, now),
                Event::ChannelClose(id) => self.channel_closed(peer, id),
                Event::MediaEgressStats(stats) => {
                    self.count_nacks(peer, stats.mid, false, stats.nacks);
                }
                Event::MediaIngressStats(stats) => {
                    self.count_nacks(peer, stats.mid, true, stats.nacks);
                }
                Event::KeyframeRequest(request) => {
                    self.stats.keyframe_requests_received += 1;
                    let asked = self.peers.get(&peer).and_then(|p| {
                        let track = p.by_mid.get(&request.mid)?;
                        let sub = p.subscriptions.get(track)?;
                        Some((*track, sub.current.or(sub.target)))
                    });
                    if let Some((track, Some(layer))) = asked {
                        self.request_keyframe(track, Some(layer), now, false);
                    }
                }
                Event::PeerStats(stats) => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.egress_loss = stats.egress_loss_fraction.unwrap_or(0.0);
                        p.rtt = stats.rtt;
                        if let Some(rtt) = stats.rtt {
                            p.min_rtt = Some(p.min_rtt.map_or(rtt, |m| m.min(rtt)));
                        }
                    }
                }
                Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                    let changed = self.peers.get_mut(&peer).is_some_and(|p| {
                        let estimate = Some(estimate.as_u64());
                        std::mem::replace(&mut p.estimate, estimate) != estimate
                    });
                    if changed {
                        self.allocate(peer, now);
                    }
                }
                _ => {}
            }
        }
    }

    /// A peer's transport is up: what it receives starts on a keyframe,
    /// asked for now (media written before this was dropped).
    fn connected(&mut self, peer: PeerId, now: Instant) {
        let videos: Vec<TrackId> = match self.peers.get_mut(&peer) {
            Some(p) => {
                p.connected = true;
                p.subscriptions.keys().copied().collect()
            }
            None => return,
        };
        self.out.push_back(Output::Event(SfuEvent::Connected(peer)));
        for track in videos {
            let target = self
                .peers
                .get(&peer)
                .and_then(|p| p.subscriptions.get(&track)?.target);
            self.request_keyframe(track, target, now, true);
        }
    }

    /// Adds the growth of a cumulative NACK count str0m reported.
    fn count_nacks(&mut self, peer: PeerId, mid: Mid, ingress: bool, total: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let seen = p.nacks_seen.entry((mid, ingress)).or_insert(0);
        let new = total.saturating_sub(*seen);
        *seen = total.max(*seen);
        if ingress {
            self.stats.nacks_sent += new;
        } else {
            self.stats.nacks_received += new;
        }
    }

    /// The participants of a call here (a copy: callers mutate peers).
    fn members(&self, call: Uuid) -> Vec<PeerId> {
        self.calls.get(&call).cloned().unwrap_or_default()
    }
}

/// The call's codec for a kind of media (an SFU does not transcode).
pub(crate) fn codec_for(kind: MediaKind) -> Codec {
    if kind == MediaKind::Video {
        Codec::Vp8
    } else {
        Codec::Opus
    }
}

/// A random ICE token (ufrag or password) of `len` ≤ 32 hex characters:
/// UUIDv4 carries 122 random bits from the system source.
fn random_token(len: usize) -> String {
    let mut token = Uuid::new_v4().simple().to_string();
    token.truncate(len);
    token
}

/// Builds the `Rtc` of a participant: ICE-lite, RTP mode, the call's
/// codecs.
fn new_rtc(now: Instant, ufrag: &str, cert: Option<&DtlsCert>, video: Codec) -> Rtc {
    let mut config = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(video == Codec::Vp8);
    if video == Codec::H264 {
        // Constrained baseline, packetization mode 1: what every browser
        // sends, and one format, so every subscriber's payload type means
        // what the publisher's did.
        config
            .codec_config()
            .add_h264(108.into(), Some(109.into()), true, 0x42e01f);
    }
    let mut config = config
        // NACK and keyframe-request counts for the metrics.
        .set_stats_interval(Some(Duration::from_secs(1)))
        // TWCC bandwidth estimation towards the peer: layer choice and
        // video pausing follow it.
        .enable_bwe(Some(Bitrate::kbps(allocation::INITIAL_ESTIMATE_KBPS)))
        .set_local_ice_credentials(str0m::IceCreds {
            ufrag: ufrag.to_owned(),
            pass: random_token(32),
        });
    if let Some(cert) = cert {
        config = config.set_dtls_cert(cert.clone());
    }
    config.build(now)
}
