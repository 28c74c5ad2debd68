//! Forwarding RTP: a publisher's packet (or a relay's) goes to every
//! subscriber of its track through that subscriber's rewriter, the payload
//! shared, never copied. Video starts on a keyframe; keyframe requests go
//! upstream, throttled; mute and pause stop forwarding and restart it on
//! a keyframe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Vp8Descriptor};

use crate::peer::Peer;
use crate::rewrite::Position;
use crate::{Output, PeerId, RelayPacket, SfuEvent, SignalError, TrackId, TrackOrigin};

/// Video packets each subscriber's send stream keeps for NACKs. str0m's
/// default (1024) is ~1 MB per subscription; 400 is ~2 s of 1.5 Mbit/s
/// video, far beyond any retransmission that can still help.
const SEND_BUFFER_VIDEO: usize = 400;
/// How old a packet a NACK may still ask for.
const SEND_BUFFER_AGE: Duration = Duration::from_secs(3);

/// A packet on its way to subscribers, from a local publisher or the relay.
#[derive(Clone)]
pub(crate) struct Forwarded {
    /// The simulcast layer it belongs to (0 for a single-layer track).
    pub layer: usize,
    pub position: Position,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    /// When it arrived (str0m's sender reports map RTP time to it).
    pub arrival: Instant,
    /// The first packet of a frame.
    pub frame_start: bool,
    /// The first packet of a keyframe: a subscriber can start here.
    pub keyframe: bool,
    /// Its VP8 payload descriptor, when it has one (to patch picture ids).
    pub vp8: Option<Vp8Descriptor>,
    /// Header extensions that describe the media, not the hop.
    pub exts: ExtensionValues,
}

impl Forwarded {
    /// Reads what forwarding needs from a packet's payload.
    pub fn new(
        codec: Codec,
        layer: usize,
        seq: u64,
        time: u32,
        marker: bool,
        payload: Arc<[u8]>,
        arrival: Instant,
    ) -> Self {
        let (vp8, frame_start, keyframe) = match codec {
            Codec::Vp8 => {
                let descriptor = Vp8Descriptor::parse(&payload).ok();
                // S=1 and partition index 0: the frame's first packet.
                let start = payload
                    .first()
                    .is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0);
                let key = descriptor.is_some_and(|d| d.starts_keyframe(&payload));
                (descriptor, start, key)
            }
            Codec::H264 => {
                // What the payload alone says: a NAL unit starts here, and
                // it is (or a STAP-A holds) an SPS or IDR slice. Which NAL
                // unit starts the frame, the fan-out decides by timestamp.
                let (starts_nal, key) = h264_start(&payload);
                (None, starts_nal, key)
            }
            // Every audio packet is a frame the decoder can start with.
            _ => (None, true, true),
        };
        Forwarded {
            layer,
            position: Position {
                seq,
                time,
                picture_id: vp8.and_then(|d| d.picture_id()),
                tl0: vp8.and_then(|d| d.tl0_pic_idx()),
            },
            marker,
            payload,
            arrival,
            frame_start,
            keyframe,
            vp8,
            exts: ExtensionValues::default(),
        }
    }
}

impl crate::Sfu {
    /// An RTP packet from a publisher.
    pub(crate) fn on_rtp(&mut self, peer: PeerId, packet: RtpPacket, now: Instant) {
        if packet.payload.is_empty() {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let (track, layer) = match p.ingress.get(&ssrc) {
            Some(known) => *known,
            None => {
                let Some((mid, rid)) = p
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                let Some(track) = p.published.get(&mid).copied() else {
                    return;
                };
                let Some(t) = self.tracks.get(&track) else {
                    return;
                };
                let layer = match rid {
                    None => 0,
                    Some(rid) => match t.layers.iter().position(|l| l.rid == Some(rid)) {
                        Some(layer) => layer,
                        // A rid the SDP did not declare.
                        None => return,
                    },
                };
                p.ingress.insert(ssrc, (track, layer));
                (track, layer)
            }
        };
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        let mut forwarded = Forwarded::new(
            t.codec,
            layer,
            *packet.seq_no,
            packet.header.timestamp,
            packet.header.marker,
            packet.payload,
            packet.timestamp,
        );
        let exts = &packet.header.ext_vals;
        forwarded.exts = ExtensionValues {
            audio_level: exts.audio_level,
            voice_activity: exts.voice_activity,
            video_orientation: exts.video_orientation,
            ..ExtensionValues::default()
        };
        self.fan_out(track, Some(peer), &forwarded, now);
    }

    /// Writes a packet of `track` to each subscriber (and to the relay if
    /// it subscribed), keyframe gating and layer switching included.
    pub(crate) fn fan_out(
        &mut self,
        track: TrackId,
        publisher: Option<PeerId>,
        packet: &Forwarded,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some(source) = t.layers.get_mut(packet.layer) else {
            return;
        };
        // H.264 has no frame-start bit: a frame starts with the first NAL
        // unit of a new timestamp, and a keyframe is such a start with an
        // SPS or IDR slice (a decoder must get the SPS before the IDR).
        let h264;
        let packet = if t.codec == Codec::H264 {
            // Newer than the last frame's (a late retransmission of an
            // older frame starts nothing).
            let time = packet.position.time;
            let new_frame = source
                .last_time
                .is_none_or(|last| (time.wrapping_sub(last) as i32) > 0);
            let frame_start = packet.frame_start && new_frame;
            if frame_start {
                source.last_time = Some(time);
            }
            h264 = Forwarded {
                frame_start,
                keyframe: frame_start && packet.keyframe,
                ..packet.clone()
            };
            &h264
        } else {
            packet
        };
        let started = !source.arriving(now);
        source.last_packet = Some(now);
        source.rate.add(now, packet.payload.len());
        if t.muted {
            return;
        }
        if let (Some(speech), Some(level)) = (&mut t.speech, packet.exts.audio_level) {
            speech.add(level);
        }
        let (call, codec) = (t.call, t.codec);
        let video = t.kind == MediaKind::Video;
        let bit = 1 << packet.layer.min(7);
        let to_relay = t.relay_alias.filter(|_| t.relay_layers & bit != 0);
        let exported = t.export_layers & bit != 0;
        if to_relay.is_some() || exported {
            let relay_packet = RelayPacket {
                track,
                alias: to_relay.unwrap_or(0),
                video,
                layer: packet.layer as u8,
                seq: packet.position.seq,
                time: packet.position.time,
                // A relay frame ends on the marker (video) or with the
                // packet (audio, one frame each).
                frame_end: packet.marker || !video,
                frame_start: packet.frame_start,
                keyframe: packet.keyframe && video,
                audio_level: packet.exts.audio_level,
                payload: packet.payload.clone(),
            };
            match (to_relay.is_some(), exported) {
                (true, true) => {
                    self.out.push_back(Output::Export(relay_packet.clone()));
                    self.out.push_back(Output::Relay(relay_packet));
                }
                (true, false) => self.out.push_back(Output::Relay(relay_packet)),
                _ => self.out.push_back(Output::Export(relay_packet)),
            }
        }
        if started && video {
            // A layer began (or came back): subscribers may want it.
            for sub in self.members(call) {
                if Some(sub) != publisher {
                    self.allocate(sub, now);
                }
            }
        }
        let mut waiting = false;
        for sub in self.members(call) {
            if Some(sub) == publisher {
                continue;
            }
            let Some(s) = self.peers.get_mut(&sub) else {
                continue;
            };
            match write(s, track, codec, video, packet, now) {
                Written::Yes { started, switched } => {
                    if switched {
                        self.stats.layer_switches += 1;
                    }
                    self.stats.forwarded += 1;
                    // Sent when the shell next polls (one timeout per
                    // subscriber for a burst of packets, not one each).
                    if s.written == 0 {
                        self.written.push(sub);
                    }
                    s.written += 1;
                    if started && video {
                        self.send_layers(sub, now);
                    }
                }
                Written::WaitingKeyframe => waiting = true,
                Written::No => {}
            }
        }
        // Someone waits for a keyframe of this layer: ask again
        // (throttled), in case the first request or its answer was lost.
        if waiting {
            self.request_keyframe(track, Some(packet.layer), now, false);
        }
    }

    /// Asks a track's publisher for a keyframe of a layer (`None`: of every
    /// layer), unless one was asked for within the throttle (`force`: a new
    /// subscriber always gets one).
    pub(crate) fn request_keyframe(
        &mut self,
        track: TrackId,
        layer: Option<usize>,
        now: Instant,
        force: bool,
    ) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        let throttle = self.config.keyframe_throttle;
        let mut asked = Vec::new();
        let mut deferred = false;
        for (index, l) in t.layers.iter_mut().enumerate() {
            if layer.is_some_and(|wanted| wanted != index) {
                continue;
            }
            let throttled = l
                .last_keyframe_request
                .is_some_and(|at| now.saturating_duration_since(at) < throttle);
            if throttled && !force {
                // Asked again once the throttle allows, not dropped: the
                // asker may not ask again for a while.
                l.keyframe_deferred = true;
                deferred = true;
                continue;
            }
            l.last_keyframe_request = Some(now);
            l.keyframe_deferred = false;
            asked.push((index, l.rid));
        }
        if deferred && !self.deferred_keyframes.contains(&track) {
            self.deferred_keyframes.push(track);
        }
        if asked.is_empty() {
            return;
        }
        let (peer, mid) = match t.origin {
            TrackOrigin::Local { peer, mid } => (peer, mid),
            TrackOrigin::Remote { key } => {
                for (index, _) in asked {
                    self.stats.keyframe_requests += 1;
                    self.out
                        .push_back(Output::Event(SfuEvent::RemoteKeyframeRequest {
                            key,
                            layer: index as u8,
                        }));
                }
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut direct = p.rtc.direct_api();
        for (_, rid) in asked {
            // Nothing received of a layer yet: its first packets bring a
            // keyframe.
            if let Some(stream) = direct.stream_rx_by_mid(mid, rid) {
                stream.request_keyframe(KeyframeRequestKind::Pli);
                self.stats.keyframe_requests += 1;
            }
        }
        self.drive(peer);
    }

    /// Sends the keyframe requests the throttle held back, once it allows.
    pub(crate) fn send_deferred_keyframes(&mut self, now: Instant) {
        let throttle = self.config.keyframe_throttle;
        for track in std::mem::take(&mut self.deferred_keyframes) {
            let Some(t) = self.tracks.get(&track) else {
                continue;
            };
            let due: Vec<usize> = (0..t.layers.len())
                .filter(|i| {
                    let l = &t.layers[*i];
                    l.keyframe_deferred
                        && l.last_keyframe_request
                            .is_none_or(|at| now.saturating_duration_since(at) >= throttle)
                })
                .collect();
            for layer in due {
                self.request_keyframe(track, Some(layer), now, false);
            }
            let still = self
                .tracks
                .get(&track)
                .is_some_and(|t| t.layers.iter().any(|l| l.keyframe_deferred));
            if still && !self.deferred_keyframes.contains(&track) {
                self.deferred_keyframes.push(track);
            }
        }
    }

    /// The peer mutes or unmutes one of its published m-lines: a muted
    /// track is forwarded to nobody, and every subscriber's track list says
    /// so. Unmuting restarts each subscription on a keyframe, asked for now.
    pub fn set_muted(
        &mut self,
        now: Instant,
        peer: PeerId,
        mid: &str,
        muted: bool,
    ) -> Result<(), SignalError> {
        self.last_now = now;
        let p = self.peers.get(&peer).ok_or(SignalError::UnknownPeer)?;
        let track = p
            .published_on(mid)
            .ok_or_else(|| SignalError::UnknownTrack(mid.to_owned()))?;
        self.change_muted(now, track, muted);
        Ok(())
    }

    /// Mutes or unmutes a track (local, or remote when its publisher's edge
    /// says so).
    pub(crate) fn change_muted(&mut self, now: Instant, track: TrackId, muted: bool) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if t.muted == muted {
            return;
        }
        t.muted = muted;
        if let Some(speech) = &mut t.speech {
            speech.clear();
        }
        let call = t.call;
        if matches!(t.origin, TrackOrigin::Local { .. }) {
            self.out
                .push_back(Output::Event(SfuEvent::TrackMuted { track, muted }));
        }
        for other in self.members(call) {
            let Some(o) = self.peers.get_mut(&other) else {
                continue;
            };
            if let Some(sub) = o.subscriptions.get_mut(&track) {
                if !muted {
                    sub.restart();
                }
                self.send_track_list(other);
            }
        }
        if !muted {
            self.request_keyframe(track, None, now, true);
        }
        self.process(now);
    }

    /// The peer pauses or resumes one of the tracks it receives (its `mid`):
    /// a paused track is not forwarded to it, so it costs no bandwidth.
    /// Resuming restarts it on a keyframe, asked for now.
    pub fn set_paused(
        &mut self,
        now: Instant,
        peer: PeerId,
        mid: &str,
        paused: bool,
    ) -> Result<(), SignalError> {
        self.last_now = now;
        let p = self.peers.get_mut(&peer).ok_or(SignalError::UnknownPeer)?;
        let (track, sub) = p
            .received_mut(mid)
            .ok_or_else(|| SignalError::UnknownTrack(mid.to_owned()))?;
        if sub.paused == paused {
            return Ok(());
        }
        sub.paused = paused;
        if !paused {
            sub.restart();
        }
        let target = sub.target;
        self.send_track_list(peer);
        if !paused {
            self.request_keyframe(track, target, now, true);
        }
        self.process(now);
        Ok(())
    }
}

/// What happened to a packet at one subscriber.
enum Written {
    /// Forwarded (`started`: the first of a new run; `switched`: of
    /// another layer than the last run).
    Yes {
        started: bool,
        switched: bool,
    },
    /// The subscription waits for a keyframe of this packet's layer; this
    /// was not one.
    WaitingKeyframe,
    No,
}

/// Writes a packet to one subscriber's m-line, through its rewriter.
fn write(
    s: &mut Peer,
    track: TrackId,
    codec: Codec,
    video: bool,
    packet: &Forwarded,
    now: Instant,
) -> Written {
    let Peer {
        rtc,
        subscriptions,
        connected,
        video_sent,
        ..
    } = s;
    if !*connected {
        return Written::No;
    }
    let Some(sub) = subscriptions.get_mut(&track) else {
        return Written::No;
    };
    if sub.paused {
        return Written::No;
    }
    // Known before anything moves the rewriter, so a packet that cannot be
    // written leaves no gap behind.
    let Some(pt) = sub.pt.or_else(|| payload_type(rtc, sub.mid, codec)) else {
        return Written::No;
    };
    sub.pt = Some(pt);
    let (mut started, mut switched) = (false, false);
    if sub.current != Some(packet.layer) {
        // Not the layer being sent: the start of the target, or nothing.
        if sub.target != Some(packet.layer) {
            return Written::No;
        }
        if !packet.keyframe {
            return if video {
                Written::WaitingKeyframe
            } else {
                Written::No
            };
        }
        sub.rewriter.begin(now, &packet.position);
        started = true;
        switched = sub.current.is_some();
        sub.current = Some(packet.layer);
    }
    let Some(out) = sub.rewriter.rewrite(now, &packet.position) else {
        return Written::No;
    };
    let first_write = !std::mem::replace(&mut sub.stream_ready, true);
    let mut direct = rtc.direct_api();
    let Some(stream) = direct.stream_tx_by_mid(sub.mid, None) else {
        return Written::No;
    };
    if first_write {
        let size = if video { SEND_BUFFER_VIDEO } else { 0 };
        // Every NACK answered (no cap on the share of retransmissions):
        // the buffer's size and age bound them, and a subscriber on a lossy
        // link needs them all to lose no frame.
        stream.set_rtx_cache(size, SEND_BUFFER_AGE, None);
        // Forwarded as it arrives: the publisher's encoder paced it
        // already, and str0m's pacer (on with BWE) would hold each frame
        // back by its burst. Padding and probes stay paced.
        stream.set_unpaced(true);
    }
    let mut rtp = RtpWrite::new(
        pt,
        out.seq.into(),
        out.time,
        packet.arrival,
        packet.payload.clone(),
    )
    .marker(packet.marker)
    .nackable(video)
    .ext_vals(packet.exts.clone());
    if let Some(patch) = packet
        .vp8
        .and_then(|d| vp8_patch(d, &packet.position, &out))
    {
        rtp = rtp.vp8_patch(patch);
    }
    stream.write_rtp(rtp);
    if video {
        video_sent.add(now, packet.payload.len());
    }
    Written::Yes { started, switched }
}

/// Whether an H.264 RTP payload (RFC 6184) starts a NAL unit, and whether
/// that unit is an SPS or an IDR slice (a STAP-A: whether any it holds is).
fn h264_start(payload: &[u8]) -> (bool, bool) {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let Some(&first) = payload.first() else {
        return (false, false);
    };
    match first & 0x1f {
        t @ 1..=23 => (true, t == IDR || t == SPS),
        // STAP-A: (16-bit size, NAL unit) after the header.
        24 => {
            let mut key = false;
            let mut at = 1;
            while let Some(size) = payload.get(at..at + 2) {
                let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                if let Some(&nal) = payload.get(at + 2) {
                    key |= matches!(nal & 0x1f, IDR | SPS);
                }
                at += 2 + size;
            }
            (true, key)
        }
        // FU-A: a unit in fragments; the FU header's S bit starts it.
        28 => match payload.get(1) {
            Some(&fu) if fu & 0x80 != 0 => (true, fu & 0x1f == IDR),
            _ => (false, false),
        },
        _ => (false, false),
    }
}

/// The payload type the subscriber's m-line uses for `codec`.
fn payload_type(rtc: &str0m::Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let media = rtc.media(mid)?;
    let remote = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec && (remote.is_empty() || remote.contains(&p.pt())))
        .map(|p| p.pt())
}

/// The descriptor patch that gives a packet the subscriber's picture id
/// and TL0PICIDX, if they differ from the source's.
fn vp8_patch(
    descriptor: Vp8Descriptor,
    source: &Position,
    out: &Position,
) -> Option<str0m::rtp::Vp8Patch> {
    if source.picture_id == out.picture_id && source.tl0 == out.tl0 {
        return None;
    }
    let with = |picture_id: Option<u16>| {
        let mut b = descriptor.patch();
        if let Some(id) = picture_id {
            b = b.picture_id(id);
        }
        if let Some(tl0) = out.tl0 {
            b = b.tl0_pic_idx(tl0);
        }
        b.build()
    };
    // A 7-bit picture id wraps at 128: the low bits are the same rewrite.
    with(out.picture_id)
        .or_else(|_| with(out.picture_id.map(|id| id & 0x7f)))
        .ok()
}
