//! The SFU core, sans-IO: datagrams, signaling messages and `now` in;
//! datagrams to send, signaling messages and events out. No sockets, no
//! tokio, no clock: a worker shell feeds it, and tests drive it on a
//! virtual clock with str0m clients.
//!
//! - One str0m `Rtc` per participant (ICE-lite, DTLS-SRTP, one DTLS
//!   certificate per core instance), in frame mode: str0m keeps sequence
//!   numbers, timestamps, packetization, NACK/RTX and sender reports per
//!   subscriber.
//! - A participant's offered send m-lines become [`Track`]s of its call.
//!   Every other participant subscribes: the core adds a send-only m-line to
//!   their session and offers it (edge-initiated renegotiation), one offer
//!   at a time, then tells them whose track each `mid` is.
//! - Media data from a publisher is written to each subscriber's m-line
//!   (`match_params` maps payload types). Keyframe requests from
//!   subscribers go upstream as PLI, at most one per track per
//!   [`SfuConfig::keyframe_throttle`]; a new subscription asks for one.
//! - Demultiplexing: a datagram's source address names its peer once the
//!   peer's ICE accepted a STUN check from it; STUN checks find their peer by
//!   the ICE username (our ufrag), never by asking every peer.
//! - A timer heap wakes only peers whose str0m timeout is due.
//!
//! A track's source is a [`TrackSource`]: a local publisher, or a remote
//! one whose frames the relay brings ([`Sfu::add_remote_track`],
//! [`Sfu::remote_frame`]). Remote tracks reach subscribers exactly like
//! local ones (same renegotiation, gating, keyframe requests, counters);
//! their keyframe requests come out as [`SfuEvent::RemoteKeyframeRequest`].
//! Local tracks the relay subscribed to ([`Sfu::set_relay_subscribed`])
//! also come out as [`RelayFrame`]s.

mod stun;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::signaling::{ServerSignal, TrackInfo};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use uuid::Uuid;

/// Video packets kept per subscription for retransmission.
const SEND_BUFFER_VIDEO: usize = 400;

/// A participant session in this core.
pub type PeerId = u64;
/// A published track.
pub type TrackId = u64;

/// Limits and timing.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Participants one call may have on this node.
    pub max_participants_per_call: usize,
    /// Participants this core serves.
    pub max_participants: usize,
    /// Least time between two keyframe requests sent upstream for a track.
    pub keyframe_throttle: Duration,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            max_participants_per_call: 100,
            max_participants: 1000,
            keyframe_throttle: Duration::from_millis(500),
        }
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
}

impl SignalError {
    /// The `code` of the signaling error frame.
    pub fn code(&self) -> &'static str {
        match self {
            SignalError::UnknownPeer => "gone",
            SignalError::NoPendingOffer => "bad_message",
            SignalError::BadSdp(_) => "bad_sdp",
            SignalError::UnknownTrack(_) => "unknown_track",
        }
    }
}

/// Where a track's media comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackSource {
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

/// A published track.
#[derive(Debug, Clone)]
pub struct Track {
    /// Where its media comes from.
    pub source: TrackSource,
    /// The call it belongs to.
    pub call: Uuid,
    /// Audio or video.
    pub kind: MediaKind,
    /// Whose it is.
    pub user: Uuid,
    /// From which device.
    pub device: String,
    /// Its publisher muted it: nothing of it is forwarded.
    pub muted: bool,
    /// A local track the relay subscribed to, under this alias.
    pub relay_alias: Option<u32>,
    last_keyframe_request: Option<Instant>,
}

/// A frame of a local track for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFrame {
    /// The local track.
    pub track: TrackId,
    /// The track's alias on the relay link.
    pub alias: u32,
    /// Video (else audio).
    pub video: bool,
    /// RTP time in the codec's clock.
    pub rtp_time: u64,
    /// A keyframe.
    pub keyframe: bool,
    /// The frame.
    pub data: Vec<u8>,
}

/// A frame on its way to subscribers, from a local publisher or the relay.
struct FrameRef<'a> {
    /// The publisher's payload parameters (local frames).
    params: Option<PayloadParams>,
    codec: Codec,
    time: MediaTime,
    network_time: Instant,
    keyframe: bool,
    data: &'a [u8],
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// A peer connected (ICE and DTLS up).
    Connected(PeerId),
    /// A peer is gone (left, failed, or its transport died); report the
    /// session to the control plane.
    Closed {
        /// The peer.
        peer: PeerId,
        /// Who it was.
        info: PeerInfo,
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
        /// The publisher.
        user: Uuid,
        /// Their device.
        device: String,
    },
    /// A local track ended.
    TrackEnded(TrackId),
    /// A remote track needs a keyframe: ask upstream.
    RemoteKeyframeRequest {
        /// The shell's key of the track.
        key: u32,
    },
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
    /// Media frames/packets forwarded (one per subscriber).
    pub forwarded: u64,
    /// Keyframe requests sent upstream.
    pub keyframe_requests: u64,
    /// Keyframe requests (PLI/FIR) subscribers sent.
    pub keyframe_requests_received: u64,
    /// NACKs subscribers sent (each answered by str0m with RTX from its
    /// send buffer).
    pub nacks_received: u64,
    /// NACKs sent to publishers for their lost packets.
    pub nacks_sent: u64,
}

struct Peer {
    rtc: Rtc,
    info: PeerInfo,
    connected: bool,
    /// The peer's own send m-lines → its tracks.
    published: HashMap<Mid, TrackId>,
    /// Tracks it receives, on which of its m-lines (answered).
    subscribed: HashMap<TrackId, Mid>,
    /// The reverse of `subscribed`.
    out_mids: HashMap<Mid, TrackId>,
    /// Received tracks the peer paused (not forwarded to it).
    paused: HashSet<TrackId>,
    /// Received video tracks that start (again) only on a keyframe: new,
    /// resumed or unmuted. A delta frame before it would not decode.
    awaiting_keyframe: HashSet<TrackId>,
    /// Last cumulative NACK counts str0m reported, per m-line and
    /// direction (`true`: ingress), to count the differences.
    nacks_seen: HashMap<(Mid, bool), u64>,
    /// The outstanding edge offer and what it adds and removes.
    pending: Option<Pending>,
    /// Whether the peer has received its answer (offers wait for that).
    answered: bool,
    ufrag: String,
    timeout: Instant,
}

struct Pending {
    offer: SdpPendingOffer,
    added: Vec<(TrackId, Mid)>,
    removed: Vec<TrackId>,
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
    work: VecDeque<(PeerId, Event)>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<(PeerId, ServerSignal)>,
    events: VecDeque<SfuEvent>,
    relay_frames: VecDeque<RelayFrame>,
    /// Remote tracks by the shell's key.
    remote_tracks: HashMap<u32, TrackId>,
    next_peer: PeerId,
    next_track: TrackId,
    stats: SfuStats,
}

impl Sfu {
    /// A core whose UDP socket is reachable at `local_addr` (the address
    /// advertised as the host candidate: bind exactly it).
    pub fn new(config: SfuConfig, local_addr: SocketAddr) -> Self {
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
            work: VecDeque::new(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            relay_frames: VecDeque::new(),
            remote_tracks: HashMap::new(),
            next_peer: 1,
            next_track: 1,
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
        self.peers.values().map(|p| p.subscribed.len()).sum()
    }

    /// A participant joins with its SDP offer; returns its id and the SDP
    /// answer. Offers for the other participants' tracks follow through
    /// [`Sfu::poll_signal`].
    pub fn join(
        &mut self,
        now: Instant,
        info: PeerInfo,
        offer: &str,
    ) -> Result<(PeerId, String), JoinError> {
        if self.peers.len() >= self.config.max_participants {
            return Err(JoinError::NodeFull(self.config.max_participants));
        }
        let in_call = self.calls.get(&info.call).map_or(0, Vec::len);
        if in_call >= self.config.max_participants_per_call {
            return Err(JoinError::CallFull(self.config.max_participants_per_call));
        }
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::BadSdp(e.to_string()))?;
        let ufrag = random_token(8);
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            // str0m keeps 1000 sent video packets per stream for NACKs by
            // default: ~1 MB per subscription. 400 is ~2 s of 1.5 Mbit/s
            // video, far beyond any retransmission that can still help.
            .set_send_buffer_video(SEND_BUFFER_VIDEO)
            // NACK and keyframe-request counts for the metrics.
            .set_stats_interval(Some(Duration::from_secs(1)))
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass: random_token(32),
            });
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(self.local_addr, "udp")
            .map_err(|e| JoinError::BadSdp(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::BadSdp(e.to_string()))?;
        let id = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        if !self.calls.contains_key(&info.call) {
            self.events.push_back(SfuEvent::CallActive(info.call));
        }
        self.calls.entry(info.call).or_default().push(id);
        self.peers.insert(
            id,
            Peer {
                rtc,
                info,
                connected: false,
                published: HashMap::new(),
                subscribed: HashMap::new(),
                out_mids: HashMap::new(),
                paused: HashSet::new(),
                awaiting_keyframe: HashSet::new(),
                nacks_seen: HashMap::new(),
                pending: None,
                answered: false,
                ufrag,
                timeout: now,
            },
        );
        self.drive(id);
        self.process(now);
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.answered = true;
        }
        // Everything already published in the call, offered after the answer.
        self.renegotiate(id);
        self.process(now);
        Ok((id, answer.to_sdp_string()))
    }

    /// The peer's answer to the edge's last offer.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        peer: PeerId,
        sdp: &str,
    ) -> Result<(), SignalError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        let p = self.peers.get_mut(&peer).ok_or(SignalError::UnknownPeer)?;
        let pending = p.pending.take().ok_or(SignalError::NoPendingOffer)?;
        if let Err(e) = p.rtc.sdp_api().accept_answer(pending.offer, answer) {
            // The session cannot continue in a known state.
            self.drive(peer);
            self.close(peer);
            self.process(now);
            return Err(SignalError::BadSdp(e.to_string()));
        }
        let mut fresh_video = Vec::new();
        for (track, mid) in pending.added {
            if let Some(t) = self.tracks.get(&track) {
                p.subscribed.insert(track, mid);
                p.out_mids.insert(mid, track);
                if t.kind == MediaKind::Video {
                    p.awaiting_keyframe.insert(track);
                    fresh_video.push(track);
                }
            }
        }
        for track in pending.removed {
            if let Some(mid) = p.subscribed.remove(&track) {
                p.out_mids.remove(&mid);
            }
            p.paused.remove(&track);
            p.awaiting_keyframe.remove(&track);
        }
        let connected = p.connected;
        self.drive(peer);
        self.send_track_list(peer);
        if connected {
            for track in fresh_video {
                self.request_keyframe(track, now, true);
            }
        }
        self.renegotiate(peer);
        self.process(now);
        Ok(())
    }

    /// The peer mutes or unmutes one of its published m-lines: a muted
    /// track is forwarded to nobody, and every subscriber's track list says
    /// so. Unmuting asks for a keyframe so video resumes at once.
    pub fn set_muted(
        &mut self,
        now: Instant,
        peer: PeerId,
        mid: &str,
        muted: bool,
    ) -> Result<(), SignalError> {
        let p = self.peers.get(&peer).ok_or(SignalError::UnknownPeer)?;
        let track = p
            .published
            .iter()
            .find(|(m, _)| m.to_string() == mid)
            .map(|(_, t)| *t)
            .ok_or_else(|| SignalError::UnknownTrack(mid.to_owned()))?;
        let call = p.info.call;
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or_else(|| SignalError::UnknownTrack(mid.to_owned()))?;
        if t.muted == muted {
            return Ok(());
        }
        t.muted = muted;
        let video = t.kind == MediaKind::Video;
        for other in self.calls.get(&call).cloned().unwrap_or_default() {
            let Some(o) = self.peers.get_mut(&other) else {
                continue;
            };
            if o.subscribed.contains_key(&track) {
                if video && !muted {
                    o.awaiting_keyframe.insert(track);
                }
                self.send_track_list(other);
            }
        }
        if !muted {
            self.request_keyframe(track, now, true);
        }
        self.process(now);
        Ok(())
    }

    /// The peer pauses or resumes one of the tracks it receives (its `mid`):
    /// a paused track is not forwarded to it, so it costs no bandwidth.
    /// Resuming asks for a keyframe.
    pub fn set_paused(
        &mut self,
        now: Instant,
        peer: PeerId,
        mid: &str,
        paused: bool,
    ) -> Result<(), SignalError> {
        let p = self.peers.get_mut(&peer).ok_or(SignalError::UnknownPeer)?;
        let track = p
            .out_mids
            .iter()
            .find(|(m, _)| m.to_string() == mid)
            .map(|(_, t)| *t)
            .ok_or_else(|| SignalError::UnknownTrack(mid.to_owned()))?;
        let video = self
            .tracks
            .get(&track)
            .is_some_and(|t| t.kind == MediaKind::Video);
        let changed = if paused {
            p.paused.insert(track)
        } else {
            p.paused.remove(&track)
        };
        if changed && !paused && video {
            p.awaiting_keyframe.insert(track);
        }
        if changed {
            self.send_track_list(peer);
            if !paused {
                self.request_keyframe(track, now, true);
            }
            self.process(now);
        }
        Ok(())
    }

    /// The peer leaves (signaling said so, or its socket closed).
    pub fn leave(&mut self, now: Instant, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtc.disconnect();
        }
        self.close(peer);
        self.process(now);
    }

    /// A datagram arrived on the socket. Returns whether a peer took it.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
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
        while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            // Stale heap entries (the peer moved its timeout) are skipped.
            let due = self.peers.get(&peer).is_some_and(|p| p.timeout <= now);
            if !due {
                continue;
            }
            if let Some(p) = self.peers.get_mut(&peer)
                && p.rtc.handle_input(Input::Timeout(now)).is_err()
            {
                self.close(peer);
                continue;
            }
            self.drive(peer);
        }
        self.process(now);
    }

    /// When [`Sfu::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next signaling message for a peer.
    pub fn poll_signal(&mut self) -> Option<(PeerId, ServerSignal)> {
        self.signals.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// Drains a peer's output (str0m's rule: after every mutation), queueing
    /// datagrams, its next timeout, and events for [`Sfu::process`].
    fn drive(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += t.contents.len() as u64;
                    self.transmits.push_back(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    });
                }
                Ok(Output::Timeout(at)) => {
                    p.timeout = at;
                    self.timers.push(Reverse((at, peer)));
                    return;
                }
                Ok(Output::Event(event)) => self.work.push_back((peer, event)),
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

    /// Handles queued events until none is left (handling one may queue
    /// more: a write drives the subscriber, which may ask for a keyframe).
    fn process(&mut self, now: Instant) {
        while let Some((peer, event)) = self.work.pop_front() {
            match event {
                Event::Connected => {
                    let videos: Vec<TrackId> = match self.peers.get_mut(&peer) {
                        Some(p) => {
                            p.connected = true;
                            p.subscribed.keys().copied().collect()
                        }
                        None => continue,
                    };
                    self.events.push_back(SfuEvent::Connected(peer));
                    // Media written before this was dropped: ask again.
                    for track in videos {
                        self.request_keyframe(track, now, true);
                    }
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    self.close(peer);
                }
                Event::MediaAdded(added) => {
                    let publishes =
                        matches!(added.direction, Direction::RecvOnly | Direction::SendRecv);
                    if publishes {
                        self.publish(peer, added.mid, added.kind);
                    }
                }
                Event::MediaData(data) => self.forward(peer, data, now),
                Event::MediaEgressStats(stats) => {
                    self.count_nacks(peer, stats.mid, false, stats.nacks);
                }
                Event::MediaIngressStats(stats) => {
                    self.count_nacks(peer, stats.mid, true, stats.nacks);
                }
                Event::KeyframeRequest(request) => {
                    self.stats.keyframe_requests_received += 1;
                    let track = self
                        .peers
                        .get(&peer)
                        .and_then(|p| p.out_mids.get(&request.mid).copied());
                    if let Some(track) = track {
                        self.request_keyframe(track, now, false);
                    }
                }
                _ => {}
            }
        }
    }

    fn publish(&mut self, peer: PeerId, mid: Mid, kind: MediaKind) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.published.contains_key(&mid) {
            return;
        }
        let id = self.next_track;
        self.next_track += 1;
        p.published.insert(mid, id);
        let call = p.info.call;
        self.tracks.insert(
            id,
            Track {
                source: TrackSource::Local { peer, mid },
                call,
                kind,
                user: p.info.user,
                device: p.info.device.clone(),
                muted: false,
                relay_alias: None,
                last_keyframe_request: None,
            },
        );
        self.events.push_back(SfuEvent::TrackPublished {
            track: id,
            call,
            kind,
            user: p.info.user,
            device: p.info.device.clone(),
        });
        tracing::debug!(peer, track = id, ?kind, "track published");
        for other in self.calls.get(&call).cloned().unwrap_or_default() {
            if other != peer {
                self.renegotiate(other);
            }
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

    fn forward(&mut self, peer: PeerId, data: MediaData, now: Instant) {
        let Some(track) = self
            .peers
            .get(&peer)
            .and_then(|p| p.published.get(&data.mid).copied())
        else {
            return;
        };
        let frame = FrameRef {
            params: Some(data.params),
            codec: data.params.spec().codec,
            time: data.time,
            network_time: data.network_time,
            keyframe: data.is_keyframe(),
            data: &data.data,
        };
        self.fan_out(track, Some(peer), &frame, now);
    }

    /// Writes a frame of `track` to each subscriber (and to the relay if it
    /// subscribed), keyframe gating included.
    fn fan_out(
        &mut self,
        track: TrackId,
        publisher: Option<PeerId>,
        frame: &FrameRef<'_>,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        if t.muted {
            return;
        }
        let call = t.call;
        if let Some(alias) = t.relay_alias {
            self.relay_frames.push_back(RelayFrame {
                track,
                alias,
                video: t.kind == MediaKind::Video,
                rtp_time: frame.time.numer(),
                keyframe: frame.keyframe,
                data: frame.data.to_vec(),
            });
        }
        let mut waiting = false;
        let subscribers = self.calls.get(&call).cloned().unwrap_or_default();
        for sub in subscribers {
            if Some(sub) == publisher {
                continue;
            }
            let Some(s) = self.peers.get_mut(&sub) else {
                continue;
            };
            let Some(mid) = s.subscribed.get(&track).copied() else {
                continue;
            };
            if !s.connected || s.paused.contains(&track) {
                continue;
            }
            if s.awaiting_keyframe.contains(&track) {
                if !frame.keyframe {
                    waiting = true;
                    continue;
                }
                s.awaiting_keyframe.remove(&track);
            }
            let written = s.rtc.writer(mid).and_then(|w| {
                let pt = match frame.params {
                    Some(params) => w.match_params(params)?,
                    None => w
                        .payload_params()
                        .find(|p| p.spec().codec == frame.codec)?
                        .pt(),
                };
                w.write(pt, frame.network_time, frame.time, frame.data.to_vec())
                    .ok()
            });
            if written.is_some() {
                self.stats.forwarded += 1;
                // str0m packetizes written media on its next timeout; give
                // it one now rather than waiting for the timer.
                if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                    s.rtc.disconnect();
                }
            }
            self.drive(sub);
        }
        // Someone waits for a keyframe: ask again (throttled), in case the
        // first request or its answer was lost.
        if waiting {
            self.request_keyframe(track, now, false);
        }
    }

    /// A track of another edge's participant, announced by the relay, joins
    /// the call: every local participant is offered it. Returns false (and
    /// adds nothing) when the call has no participant here.
    pub fn add_remote_track(
        &mut self,
        now: Instant,
        key: u32,
        call: Uuid,
        kind: MediaKind,
        user: Uuid,
        device: String,
    ) -> bool {
        if !self.calls.contains_key(&call) {
            return false;
        }
        if self.remote_tracks.contains_key(&key) {
            return true;
        }
        let id = self.next_track;
        self.next_track += 1;
        self.tracks.insert(
            id,
            Track {
                source: TrackSource::Remote { key },
                call,
                kind,
                user,
                device,
                muted: false,
                relay_alias: None,
                last_keyframe_request: None,
            },
        );
        self.remote_tracks.insert(key, id);
        tracing::debug!(track = id, key, ?kind, "remote track added");
        for peer in self.calls.get(&call).cloned().unwrap_or_default() {
            self.renegotiate(peer);
        }
        self.process(now);
        true
    }

    /// A remote track ended: it leaves every local session.
    pub fn remove_remote_track(&mut self, now: Instant, key: u32) {
        let Some(id) = self.remote_tracks.remove(&key) else {
            return;
        };
        if let Some(t) = self.tracks.remove(&id) {
            for peer in self.calls.get(&t.call).cloned().unwrap_or_default() {
                self.renegotiate(peer);
            }
        }
        self.process(now);
    }

    /// A frame of a remote track arrived from the relay.
    pub fn remote_frame(
        &mut self,
        now: Instant,
        key: u32,
        rtp_time: u64,
        keyframe: bool,
        data: &[u8],
    ) {
        let Some(track) = self.remote_tracks.get(&key).copied() else {
            return;
        };
        let Some(kind) = self.tracks.get(&track).map(|t| t.kind) else {
            return;
        };
        let (codec, clock) = if kind == MediaKind::Video {
            (Codec::Vp8, Frequency::NINETY_KHZ)
        } else {
            (Codec::Opus, Frequency::FORTY_EIGHT_KHZ)
        };
        let frame = FrameRef {
            params: None,
            codec,
            time: MediaTime::new(rtp_time, clock),
            network_time: now,
            keyframe,
            data,
        };
        self.fan_out(track, None, &frame, now);
        self.process(now);
    }

    /// The relay subscribed to a local track under `alias` (or ended its
    /// subscription: `None`). A new subscription starts with a keyframe.
    pub fn set_relay_subscribed(&mut self, now: Instant, track: TrackId, alias: Option<u32>) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if !matches!(t.source, TrackSource::Local { .. }) {
            return;
        }
        t.relay_alias = alias;
        if alias.is_some() {
            self.request_keyframe(track, now, true);
        }
        self.process(now);
    }

    /// A subscriber behind the relay asks for a keyframe of a local track.
    pub fn relay_keyframe_request(&mut self, now: Instant, track: TrackId) {
        self.stats.keyframe_requests_received += 1;
        self.request_keyframe(track, now, false);
        self.process(now);
    }

    /// The next frame for the relay.
    pub fn poll_relay_frame(&mut self) -> Option<RelayFrame> {
        self.relay_frames.pop_front()
    }

    /// Asks a track's publisher for a keyframe, unless one was asked for
    /// within the throttle (`force`: a new subscriber always gets one).
    fn request_keyframe(&mut self, track: TrackId, now: Instant, force: bool) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        let throttled = t
            .last_keyframe_request
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.keyframe_throttle);
        if throttled && !force {
            return;
        }
        t.last_keyframe_request = Some(now);
        let (peer, mid) = match t.source {
            TrackSource::Local { peer, mid } => (peer, mid),
            TrackSource::Remote { key } => {
                self.stats.keyframe_requests += 1;
                self.events
                    .push_back(SfuEvent::RemoteKeyframeRequest { key });
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(mut writer) = p.rtc.writer(mid)
            && writer
                .request_keyframe(None, KeyframeRequestKind::Pli)
                .is_ok()
        {
            self.stats.keyframe_requests += 1;
        }
        self.drive(peer);
    }

    /// Offers a peer the tracks it should receive and does not (and drops
    /// those that are gone), unless an offer is already outstanding.
    fn renegotiate(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.pending.is_some() || !p.answered {
            return;
        }
        let call = p.info.call;
        let mut wanted: Vec<(TrackId, MediaKind)> = self
            .tracks
            .iter()
            .filter(|(_, t)| {
                t.call == call
                    && !matches!(t.source, TrackSource::Local { peer: src, .. } if src == peer)
            })
            .map(|(id, t)| (*id, t.kind))
            .collect();
        wanted.sort_by_key(|(id, _)| *id);
        let add: Vec<(TrackId, MediaKind)> = wanted
            .iter()
            .filter(|(id, _)| !p.subscribed.contains_key(id))
            .copied()
            .collect();
        let remove: Vec<(TrackId, Mid)> = p
            .subscribed
            .iter()
            .filter(|(id, _)| !self.tracks.contains_key(id))
            .map(|(id, mid)| (*id, *mid))
            .collect();
        if add.is_empty() && remove.is_empty() {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut api = p.rtc.sdp_api();
        let mut added = Vec::new();
        for (track, kind) in &add {
            let mid = api.add_media(
                *kind,
                Direction::SendOnly,
                Some(format!("t{track}")),
                Some(format!("t{track}")),
                None,
            );
            added.push((*track, mid));
        }
        for (_, mid) in &remove {
            api.stop_media(*mid);
        }
        match api.apply() {
            Some((offer, pending)) => {
                p.pending = Some(Pending {
                    offer: pending,
                    added,
                    removed: remove.iter().map(|(t, _)| *t).collect(),
                });
                self.signals.push_back((
                    peer,
                    ServerSignal::Offer {
                        sdp: offer.to_sdp_string(),
                    },
                ));
            }
            None => {
                // Applied without negotiation (nothing the remote must see).
                for (track, _) in &remove {
                    if let Some(mid) = p.subscribed.remove(track) {
                        p.out_mids.remove(&mid);
                    }
                    p.paused.remove(track);
                    p.awaiting_keyframe.remove(track);
                }
            }
        }
        self.drive(peer);
    }

    /// Tells a peer whose each received `mid` is.
    fn send_track_list(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let mut tracks: Vec<TrackInfo> = p
            .subscribed
            .iter()
            .filter_map(|(track, mid)| {
                let t = self.tracks.get(track)?;
                Some(TrackInfo {
                    mid: mid.to_string(),
                    kind: if t.kind == MediaKind::Video {
                        "video"
                    } else {
                        "audio"
                    }
                    .to_owned(),
                    user_id: t.user,
                    device_id: t.device.clone(),
                    muted: t.muted,
                    paused: p.paused.contains(track),
                })
            })
            .collect();
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        self.signals
            .push_back((peer, ServerSignal::Tracks { tracks }));
    }

    /// Removes a peer, its tracks, and their subscriptions elsewhere.
    fn close(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        self.by_ufrag.remove(&p.ufrag);
        self.by_addr.retain(|_, id| *id != peer);
        let call = p.info.call;
        if let Some(members) = self.calls.get_mut(&call) {
            members.retain(|id| *id != peer);
            if members.is_empty() {
                self.calls.remove(&call);
                // Nobody here receives the call's remote tracks any more.
                let tracks = &mut self.tracks;
                self.remote_tracks.retain(|_, id| {
                    let keep = tracks.get(id).is_some_and(|t| t.call != call);
                    if !keep {
                        tracks.remove(id);
                    }
                    keep
                });
                self.events.push_back(SfuEvent::CallIdle(call));
            }
        }
        for track in p.published.values() {
            self.tracks.remove(track);
            self.events.push_back(SfuEvent::TrackEnded(*track));
        }
        self.events
            .push_back(SfuEvent::Closed { peer, info: p.info });
        for other in self.calls.get(&call).cloned().unwrap_or_default() {
            self.renegotiate(other);
        }
    }
}

/// A random ICE token (ufrag or password) of `len` ≤ 32 hex characters:
/// UUIDv4 carries 122 random bits from the system source.
fn random_token(len: usize) -> String {
    let mut token = Uuid::new_v4().simple().to_string();
    token.truncate(len);
    token
}
