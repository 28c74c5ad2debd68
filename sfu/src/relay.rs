//! The relay's side of the core: tracks of other edges' participants
//! ([`TrackOrigin::Remote`]) join a call and reach its local subscribers
//! exactly like local tracks (same renegotiation, gating, rewriting,
//! keyframe requests, counters); local tracks the relay subscribed to come
//! out as [`crate::RelayPacket`]s from [`crate::Sfu::poll_output`].

use std::time::Instant;

use str0m::media::MediaKind;
use uuid::Uuid;

use crate::forward::Forwarded;
use crate::layers::{LayerSource, MAX_LAYERS};
use crate::{RemotePacket, Source, Track, TrackId, TrackOrigin};

impl crate::Sfu {
    /// A track of another edge's participant, announced by the relay, joins
    /// the call: every local participant is offered it. It has `layers`
    /// simulcast layers (1: none). Returns false (and adds nothing) when the
    /// call has no participant here.
    #[allow(clippy::too_many_arguments)]
    pub fn add_remote_track(
        &mut self,
        now: Instant,
        key: u32,
        call: Uuid,
        kind: MediaKind,
        source: Source,
        user: Uuid,
        device: String,
        layers: u8,
    ) -> bool {
        self.last_now = now;
        if !self.calls.contains_key(&call) {
            return false;
        }
        if self.remote_tracks.contains_key(&key) {
            return true;
        }
        let id = self.next_track;
        self.next_track += 1;
        // The call's codec, as its sessions here have it.
        let video_codec = self
            .members(call)
            .first()
            .and_then(|p| self.peers.get(p))
            .map_or(str0m::format::Codec::Vp8, |p| p.info.video_codec);
        let mut track = Track::new(
            TrackOrigin::Remote { key },
            call,
            kind,
            video_codec,
            user,
            device,
            (0..layers.clamp(1, MAX_LAYERS as u8))
                .map(|_| LayerSource::new(None))
                .collect(),
        );
        if source.is_video() == (kind == MediaKind::Video) {
            track.set_source(source);
        }
        // The shell subscribes to every layer of a new remote track until
        // told otherwise: fewer are told after the hold, not at once (the
        // subscribers here may not have their sessions' m-lines yet, and
        // an early "the lowest only" would cut another worker's or
        // edge's viewers off their layer).
        track.demand.told = Some(((1u16 << track.layers.len()) - 1) as u8);
        self.tracks.insert(id, track);
        self.remote_tracks.insert(key, id);
        tracing::debug!(track = id, key, ?kind, "remote track added");
        for peer in self.members(call) {
            self.renegotiate(peer);
        }
        self.process(now);
        true
    }

    /// A remote track ended: it leaves every local session.
    pub fn remove_remote_track(&mut self, now: Instant, key: u32) {
        self.last_now = now;
        let Some(id) = self.remote_tracks.remove(&key) else {
            return;
        };
        if let Some(t) = self.tracks.remove(&id) {
            for peer in self.members(t.call) {
                self.renegotiate(peer);
            }
        }
        self.process(now);
    }

    /// The publisher of a remote track muted or unmuted it (its edge said
    /// so through the relay).
    pub fn set_remote_muted(&mut self, now: Instant, key: u32, muted: bool) {
        self.last_now = now;
        if let Some(track) = self.remote_tracks.get(&key).copied() {
            self.change_muted(now, track, muted);
        }
    }

    /// Packets of a remote track arrived from the relay (a whole frame of
    /// one layer, in order). `after_gap`: the relay link gave up packets
    /// before them, so the sequence numbers jump; subscriptions on that
    /// layer start a new run here (video: this is the keyframe the link
    /// waited for), and their subscribers see no hole to wait for.
    pub fn remote_packets(
        &mut self,
        now: Instant,
        key: u32,
        packets: &[RemotePacket],
        after_gap: bool,
    ) {
        self.last_now = now;
        let Some(track) = self.remote_tracks.get(&key).copied() else {
            return;
        };
        if after_gap && let (Some(first), Some(t)) = (packets.first(), self.tracks.get(&track)) {
            let layer = Some(usize::from(first.layer));
            for peer in self.members(t.call) {
                if let Some(sub) = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|p| p.subscriptions.get_mut(&track))
                    && sub.current == layer
                {
                    sub.restart();
                }
            }
        }
        let Some(codec) = self.tracks.get(&track).map(|t| t.codec) else {
            return;
        };
        for p in packets {
            if p.payload.is_empty() {
                continue;
            }
            let mut forwarded = Forwarded::new(
                codec,
                usize::from(p.layer),
                p.seq,
                p.time,
                p.marker,
                p.payload.clone(),
                now,
            );
            // Subscribers here get the level too (their clients may show
            // it), and the speaker detector hears remote speakers.
            forwarded.exts.audio_level = p.audio_level;
            self.fan_out(track, None, &forwarded, now);
        }
        self.process(now);
    }

    /// The relay subscribed to `layers` (bit per layer) of a local track
    /// under `alias`, or ended its subscription (`None`). Layers new to the
    /// subscription start with a keyframe; only subscribed layers go to
    /// the relay.
    pub fn set_relay_subscribed(
        &mut self,
        now: Instant,
        track: TrackId,
        alias: Option<u32>,
        layers: u8,
    ) {
        self.last_now = now;
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if !matches!(t.origin, TrackOrigin::Local { .. }) {
            return;
        }
        let before = if t.relay_alias.is_some() && t.relay_alias == alias {
            t.relay_layers
        } else {
            0
        };
        t.relay_alias = alias;
        t.relay_layers = if alias.is_some() { layers.max(1) } else { 0 };
        let added = t.relay_layers & !before;
        for layer in (0..MAX_LAYERS).filter(|i| added & (1 << i) != 0) {
            self.request_keyframe(track, Some(layer), now, true);
        }
        self.process(now);
    }

    /// Other media workers of this node want `layers` (bit per layer; 0:
    /// none) of a track, local or remote, for their participants of its
    /// call. Layers new to them start with a keyframe.
    pub fn set_export_layers(&mut self, now: Instant, track: TrackId, layers: u8) {
        self.last_now = now;
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        let added = layers & !t.export_layers;
        if layers & !t.export_layers == 0 && t.export_layers & !layers != 0 {
            // Fewer layers: the other worker held its subscribers' demand
            // for the dynacast hold already; holding again here would
            // double how long an unwanted layer keeps crossing the relay.
            t.demand.fewer_since = Some(now.checked_sub(crate::dynacast::HOLD).unwrap_or(now));
        }
        t.export_layers = layers;
        for layer in (0..MAX_LAYERS).filter(|i| added & (1 << i) != 0) {
            self.request_keyframe(track, Some(layer), now, true);
        }
        self.process(now);
    }

    /// The id here of the remote track the relay (or another worker) calls
    /// `key`.
    pub fn remote_track_id(&self, key: u32) -> Option<TrackId> {
        self.remote_tracks.get(&key).copied()
    }

    /// A subscriber behind the relay (or on another worker) asks for a
    /// keyframe of a track.
    pub fn relay_keyframe_request(&mut self, now: Instant, track: TrackId) {
        self.last_now = now;
        self.stats.keyframe_requests_received += 1;
        self.request_keyframe(track, None, now, false);
        self.process(now);
    }
}
