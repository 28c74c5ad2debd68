//! The edge's side of the relay protocol, sans-IO ([`RelayClient`]): the
//! desired state (interests, announcements, remote tracks) kept across
//! link losses and replayed on every new link, remote tracks' packets put
//! back in order a frame at a time ([`Reassembler`]: lost video packets
//! are NACKed and waited for a bounded time; after a gap given up, video
//! waits for a keyframe and one is asked for), and remote tracks that are
//! not re-announced within [`STALE_AFTER`] removed from the sessions.
//!
//! Worker events, the relay's control messages and datagrams, link up and
//! down, and `now` go in; [`ClientOutput`]s come out of
//! [`RelayClient::poll_output`]: control messages for the relay, commands
//! for workers, NACKs to answer from the uplink's history. The shell
//! (`relay_link.rs`) owns the QUIC connection, the channels and the
//! metrics. No sockets, channels or clock here: `tests` drives it on a
//! virtual clock, like the relay's router.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use protocol::relay::{Announce, Control, Kind, MediaHeader, RtpHeader, Source};
use relay::media::{Reassembler, RecoveryConfig};
use str0m::media::MediaKind;
use uuid::Uuid;

use sfu::{RemotePacket, TrackId};

#[cfg(test)]
mod tests;

/// Remote tracks not re-announced this long after the link came back (or
/// while it is down) are removed from the sessions.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Least time between keyframe requests this edge sends per remote track.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);
/// How often the shell should call [`RelayClient::handle_timeout`]
/// (reassembly deadlines and repeated NACKs are tens of milliseconds).
pub const TICK: Duration = Duration::from_millis(20);

/// What the client asks of its shell.
#[derive(Debug)]
pub enum ClientOutput {
    /// Send this control message to the relay.
    Control(Control),
    /// Hand this command to worker `0` (a `RemoteFrame` may be dropped when
    /// the worker's queue is full; nothing else may).
    Worker(usize, RelayCommand),
    /// The relay lost these packets of a local track: resend them from
    /// the uplink's history.
    Resend {
        /// The track's alias.
        alias: u32,
        /// The RTP sequence numbers.
        sequences: Vec<u16>,
    },
    /// A local track ended: its history can go.
    Forget(u32),
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Datagrams that were not media of our version.
    pub malformed: u64,
    /// Datagrams for a track the relay never announced (or no longer).
    pub unknown_track: u64,
    /// Gaps in remote tracks given up.
    pub frame_gaps: u64,
    /// Sequence numbers NACKed to the relay.
    pub nacks_sent: u64,
    /// Missing packets that arrived later.
    pub recovered: u64,
}

/// What workers tell the relay task.
#[derive(Debug)]
pub enum RelayEvent {
    /// A call has its first participant on `worker`.
    CallActive {
        /// The worker the relay hears of the call from (its relay home).
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
    Data(CallData),
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
    Data(CallData),
}

/// A participant's data channel message on its way between edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallData {
    /// The call.
    pub call: Uuid,
    /// The sender.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// Binary (else text).
    pub binary: bool,
    /// What they sent.
    pub payload: Vec<u8>,
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

/// The edge's side of the relay protocol, sans-IO: worker events, the
/// relay's control messages and datagrams, link changes and `now` in;
/// [`ClientOutput`]s out of [`RelayClient::poll_output`].
pub struct RelayClient {
    node: String,
    calls: HashMap<Uuid, usize>,
    local: HashMap<u32, LocalTrack>,
    local_ids: HashMap<String, u32>,
    remote: HashMap<String, RemoteTrack>,
    remote_by_alias: HashMap<u32, String>,
    remote_by_key: HashMap<u32, String>,
    next_alias: u32,
    next_key: u32,
    /// A link is up: control messages go out (else they would be stale by
    /// the time one is; [`RelayClient::connected`] replays the state).
    connected: bool,
    out: VecDeque<ClientOutput>,
    stats: ClientStats,
}

impl RelayClient {
    /// A client for edge `node`, no link yet.
    pub fn new(node: &str) -> Self {
        RelayClient {
            node: node.to_owned(),
            calls: HashMap::new(),
            local: HashMap::new(),
            local_ids: HashMap::new(),
            remote: HashMap::new(),
            remote_by_alias: HashMap::new(),
            remote_by_key: HashMap::new(),
            next_alias: 1,
            next_key: 1,
            connected: false,
            out: VecDeque::new(),
            stats: ClientStats::default(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Remote tracks known now (bound or waiting to be re-announced).
    pub fn remote_tracks(&self) -> usize {
        self.remote.len()
    }

    /// The next thing for the shell to do, if any.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    fn send(&mut self, message: Control) {
        if self.connected {
            self.out.push_back(ClientOutput::Control(message));
        }
    }

    fn command(&mut self, worker: usize, command: RelayCommand) {
        self.out.push_back(ClientOutput::Worker(worker, command));
    }

    /// A worker reported a change of its calls or tracks.
    pub fn handle_event(&mut self, now: Instant, event: RelayEvent) {
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
                    self.out
                        .push_back(ClientOutput::Forget(local.announce.alias));
                    self.send(Control::Unannounce {
                        track: local.announce.track,
                    });
                }
            }
            RelayEvent::KeyframeRequest(key) => {
                if let Some(id) = self.remote_by_key.get(&key).cloned() {
                    self.request_keyframe(&id, now, true);
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
            RelayEvent::Data(data) => {
                // Only calls the relay knows we are in (it refuses others).
                if self.calls.contains_key(&data.call) {
                    let CallData {
                        call,
                        user,
                        device,
                        binary,
                        payload,
                    } = data;
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

    /// A control message from the relay.
    pub fn handle_control(&mut self, now: Instant, message: Control) {
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
                    self.command(
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
                    self.request_keyframe(&a.track, now, true);
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
                    self.out
                        .push_back(ClientOutput::Resend { alias, sequences });
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
                    let data = CallData {
                        call,
                        user,
                        device,
                        binary,
                        payload,
                    };
                    self.command(worker, RelayCommand::Data(data));
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

    /// A media datagram from the relay.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let Ok((header, packet)) = MediaHeader::decode(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok((rtp, payload)) = RtpHeader::decode(packet) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(r) = self
            .remote_by_alias
            .get(&header.alias)
            .and_then(|id| self.remote.get_mut(id))
        else {
            self.stats.unknown_track += 1;
            return;
        };
        let Some(reassembler) = r.reassemblers.get_mut(usize::from(header.layer)) else {
            self.stats.malformed += 1;
            return;
        };
        let recovered = reassembler.stats().recovered;
        let pushed = reassembler.push(now, &header, &rtp, payload);
        self.stats.recovered += reassembler.stats().recovered - recovered;
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

    /// Time passed: gives up gaps waited on too long, repeats NACKs, and
    /// removes remote tracks not re-announced within [`STALE_AFTER`]. Call
    /// every [`TICK`] or so.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.poll_reassembly(now);
        self.sweep(now);
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
            self.stats.frame_gaps += 1;
        }
        if !pushed.nacks.is_empty() {
            self.stats.nacks_sent += pushed.nacks.len() as u64;
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
            self.command(worker, command);
        }
        if waiting {
            self.request_keyframe(id, now, false);
        }
    }

    /// A link is up: the desired state is replayed on it.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
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
        self.mark_stale(now);
    }

    /// The link is down (the shell redials).
    pub fn disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.mark_stale(now);
    }

    fn mark_stale(&mut self, now: Instant) {
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
    }
}
