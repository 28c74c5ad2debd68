//! Joining, the edge's offers and their answers, track lists, leaving.
//!
//! The client offers first (its own tracks). After that the edge offers
//! whenever the tracks a peer should receive change, one offer at a time:
//! the next waits for the answer to the last.

use std::collections::HashMap;
use std::time::Instant;

use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid};

use crate::layers;
use crate::peer::{Peer, Pending, Subscription};
use crate::{
    JoinError, Output, PeerId, PeerInfo, SfuEvent, Signal, SignalError, Track, TrackId,
    TrackSource, TrackState, new_rtc, random_token,
};

impl crate::Sfu {
    /// A participant joins with its SDP offer; returns its id and the SDP
    /// answer. Offers for the other participants' tracks follow as
    /// [`Output::Signal`]s.
    pub fn join(
        &mut self,
        now: Instant,
        info: PeerInfo,
        offer: &str,
    ) -> Result<(PeerId, String), JoinError> {
        self.last_now = now;
        if self.peers.len() >= self.config.max_participants {
            return Err(JoinError::NodeFull(self.config.max_participants));
        }
        let in_call = self.calls.get(&info.call).map_or(0, Vec::len);
        if in_call >= self.config.max_participants_per_call {
            return Err(JoinError::CallFull(self.config.max_participants_per_call));
        }
        let offer_sdp = offer;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::BadSdp(e.to_string()))?;
        let ufrag = random_token(8);
        let mut rtc = new_rtc(now, &ufrag, self.cert.as_ref());
        let candidate = Candidate::host(self.local_addr, "udp")
            .map_err(|e| JoinError::BadSdp(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::BadSdp(e.to_string()))?;
        // An m-line str0m had to reject shares no codec with the call: say
        // which, rather than answer with media that will never flow.
        if let Some(problem) = rejected_media(offer_sdp, &answer.to_sdp_string()) {
            return Err(JoinError::BadSdp(problem));
        }
        let id = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        if !self.calls.contains_key(&info.call) {
            self.out
                .push_back(Output::Event(SfuEvent::CallActive(info.call)));
        }
        self.calls.entry(info.call).or_default().push(id);
        self.peers.insert(
            id,
            Peer {
                rtc,
                info,
                connected: false,
                published: HashMap::new(),
                ingress: HashMap::new(),
                estimate: None,
                bwe_targets: (0, 0),
                video_sent: Default::default(),
                egress_loss: 0.0,
                rtt: None,
                min_rtt: None,
                congested_at: None,
                last_upgrade: None,
                subscriptions: HashMap::new(),
                by_mid: HashMap::new(),
                nacks_seen: HashMap::new(),
                pending: None,
                answered: false,
                ufrag,
                written: 0,
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
        self.last_now = now;
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
                let target = if t.kind == MediaKind::Video {
                    fresh_video.push(track);
                    crate::allocation::initial_layer(&t.layer_views(now))
                } else {
                    Some(0)
                };
                p.subscriptions
                    .insert(track, Subscription::new(mid, t.codec, target));
                p.by_mid.insert(mid, track);
            }
        }
        for track in pending.removed {
            if let Some(sub) = p.subscriptions.remove(&track) {
                p.by_mid.remove(&sub.mid);
            }
        }
        let connected = p.connected;
        self.drive(peer);
        self.send_track_list(peer);
        if connected {
            for track in fresh_video {
                let target = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.subscriptions.get(&track)?.target);
                self.request_keyframe(track, target, now, true);
            }
        }
        self.renegotiate(peer);
        self.process(now);
        Ok(())
    }

    /// A peer's offered send m-line becomes a track of its call, offered to
    /// everyone else; `rids` are its simulcast layers, if it sends any.
    pub(crate) fn publish(&mut self, peer: PeerId, mid: Mid, kind: MediaKind, rids: &[Rid]) {
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
        let (user, device) = (p.info.user, p.info.device.clone());
        self.tracks.insert(
            id,
            Track::new(
                TrackSource::Local { peer, mid },
                call,
                kind,
                user,
                device.clone(),
                layers::order(rids)
                    .into_iter()
                    .map(|rid| layers::LayerSource::new(Some(rid)))
                    .collect(),
            ),
        );
        self.out.push_back(Output::Event(SfuEvent::TrackPublished {
            track: id,
            call,
            kind,
            user,
            device,
            layers: rids.len().clamp(1, layers::MAX_LAYERS) as u8,
        }));
        tracing::debug!(peer, track = id, ?kind, "track published");
        for other in self.members(call) {
            if other != peer {
                self.renegotiate(other);
            }
        }
    }

    /// Offers a peer the tracks it should receive and does not (and drops
    /// those that are gone), unless an offer is already outstanding.
    pub(crate) fn renegotiate(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.pending.is_some() || !p.answered {
            return;
        }
        let call = p.info.call;
        let mut add: Vec<(TrackId, MediaKind)> = self
            .tracks
            .iter()
            .filter(|(id, t)| {
                t.call == call
                    && !matches!(t.source, TrackSource::Local { peer: src, .. } if src == peer)
                    && !p.subscriptions.contains_key(id)
            })
            .map(|(id, t)| (*id, t.kind))
            .collect();
        add.sort_by_key(|(id, _)| *id);
        let remove: Vec<(TrackId, Mid)> = p
            .subscriptions
            .iter()
            .filter(|(id, _)| !self.tracks.contains_key(id))
            .map(|(id, sub)| (*id, sub.mid))
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
                self.out
                    .push_back(Output::Signal(peer, Signal::Offer(offer.to_sdp_string())));
            }
            None => {
                // Applied without negotiation (nothing the remote must see).
                for (track, _) in &remove {
                    if let Some(sub) = p.subscriptions.remove(track) {
                        p.by_mid.remove(&sub.mid);
                    }
                }
            }
        }
        self.drive(peer);
    }

    /// Tells a peer whose each received `mid` is.
    pub(crate) fn send_track_list(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let mut tracks: Vec<TrackState> = p
            .subscriptions
            .iter()
            .filter_map(|(track, sub)| {
                let t = self.tracks.get(track)?;
                Some(TrackState {
                    mid: sub.mid.to_string(),
                    kind: t.kind,
                    user: t.user,
                    device: t.device.clone(),
                    muted: t.muted,
                    paused: sub.paused,
                })
            })
            .collect();
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        self.out
            .push_back(Output::Signal(peer, Signal::Tracks(tracks)));
    }

    /// Removes a peer, its tracks, and their subscriptions elsewhere.
    pub(crate) fn close(&mut self, peer: PeerId) {
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
                self.out.push_back(Output::Event(SfuEvent::CallIdle(call)));
            }
        }
        for track in p.published.values() {
            self.tracks.remove(track);
            self.out
                .push_back(Output::Event(SfuEvent::TrackEnded(*track)));
        }
        self.out
            .push_back(Output::Event(SfuEvent::Closed { peer, info: p.info }));
        for other in self.members(call) {
            self.renegotiate(other);
        }
    }
}

/// The codecs this core forwards, as SDP names them.
const CALL_CODECS: &str = "VP8 video, Opus audio";

/// Why the answer rejected one of the offer's audio or video m-lines (port
/// 0 in the answer where the offer had a port): the codecs it offered, and
/// the call's. `None` when every offered m-line was accepted.
fn rejected_media(offer: &str, answer: &str) -> Option<String> {
    let sections = |sdp: &str| -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for line in sdp.lines() {
            let line = line.trim_end();
            if line.starts_with("m=") {
                out.push(Vec::new());
            }
            if let Some(section) = out.last_mut() {
                section.push(line.to_owned());
            }
        }
        out
    };
    let port_zero = |m: &str| m.split_whitespace().nth(1) == Some("0");
    let (offered, answered) = (sections(offer), sections(answer));
    for (o, a) in offered.iter().zip(&answered) {
        let (Some(om), Some(am)) = (o.first(), a.first()) else {
            continue;
        };
        let kind = om.trim_start_matches("m=").split_whitespace().next()?;
        if !matches!(kind, "audio" | "video") || port_zero(om) || !port_zero(am) {
            continue;
        }
        let mut codecs: Vec<&str> = o
            .iter()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.split('/').next())
            .filter(|c| !matches!(*c, "rtx" | "red" | "ulpfec" | "flexfec-03"))
            .collect();
        codecs.dedup();
        let offered = if codecs.is_empty() {
            "none".to_owned()
        } else {
            codecs.join(", ")
        };
        return Some(format!(
            "no {kind} codec in common: the offer has {offered}; this call uses {CALL_CODECS}"
        ));
    }
    None
}
