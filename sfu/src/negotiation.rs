//! Joining, the edge's offers and their answers, track lists, leaving.
//!
//! The client offers first (its own tracks). After that the edge offers
//! whenever the tracks a peer should receive change, one offer at a time:
//! the next waits for the answer to the last. The client may offer again
//! at any time (a screen share starts or stops). When both offers cross
//! (glare), the edge gives way, like the polite peer of WebRTC's "perfect
//! negotiation": it drops its own offer, answers the client's, and offers
//! again afterwards; the client ignores an edge offer that reaches it while
//! its own is outstanding.
//!
//! Receiving m-lines are recycled: a line whose track ended is made
//! inactive and carries the next track of its kind, so a long session
//! does not grow by two m-lines per participant who came and went.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Instant;

use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid};

use crate::layers;
use crate::peer::{IdleLine, Peer, Pending, Subscription};
use crate::{
    CloseReason, JoinError, Output, PeerId, PeerInfo, SfuEvent, Signal, SignalError, Source, Track,
    TrackId, TrackOrigin, TrackState, new_rtc, random_token,
};

/// What a client is told of SDP the parser refused: a fixed sentence. The
/// parser's own message quotes internals (heap addresses among them); it
/// goes to the log only.
fn unparsable(error: &dyn std::fmt::Display) -> String {
    tracing::debug!(%error, "unparsable SDP");
    "the SDP could not be parsed".to_owned()
}

/// Likewise for SDP that parsed but could not be applied to the session.
fn unanswerable(error: &dyn std::fmt::Display) -> String {
    tracing::debug!(%error, "SDP not applicable to the session");
    "the SDP does not fit this session".to_owned()
}

impl crate::Sfu {
    /// A participant joins with its SDP offer (and what its send m-lines
    /// carry, by mid, where it said); returns its id and the SDP answer.
    /// Offers for the other participants' tracks follow as
    /// [`Output::Signal`]s.
    pub fn join(
        &mut self,
        now: Instant,
        info: PeerInfo,
        offer: &str,
        sources: &[(String, Source)],
    ) -> Result<(PeerId, String), JoinError> {
        self.last_now = now;
        // One peer per session: a join token used again (a reconnect, or a
        // replay) replaces the peer it opened before, so one token can
        // never hold more than one place.
        let earlier = self.peer_of_session(info.session);
        let (here, in_call_earlier) = match earlier.and_then(|e| self.peers.get(&e)) {
            Some(p) => (1, usize::from(p.info.call == info.call)),
            None => (0, 0),
        };
        if self.peers.len() - here >= self.config.max_participants {
            return Err(JoinError::NodeFull(self.config.max_participants));
        }
        let in_call = self.calls.get(&info.call).map_or(0, Vec::len) - in_call_earlier;
        if in_call >= self.config.max_participants_per_call {
            return Err(JoinError::CallFull(self.config.max_participants_per_call));
        }
        let offer_sdp = offer;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::BadSdp(unparsable(&e)))?;
        let ufrag = random_token(8);
        let video_codec = info.video_codec;
        if !matches!(video_codec, Codec::Vp8 | Codec::H264) {
            return Err(JoinError::BadSdp(format!(
                "this edge forwards VP8 or H264 video, not {video_codec}"
            )));
        }
        let mut rtc = new_rtc(now, &ufrag, self.cert.as_ref(), video_codec);
        let candidate = Candidate::host(self.local_addr, "udp")
            .map_err(|e| JoinError::BadSdp(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::BadSdp(unanswerable(&e)))?;
        // An m-line str0m had to reject shares no codec with the call: say
        // which, rather than answer with media that will never flow.
        if let Some(problem) = rejected_media(offer_sdp, &answer.to_sdp_string(), video_codec) {
            return Err(JoinError::BadSdp(problem));
        }
        if let Some(earlier) = earlier {
            if let Some(p) = self.peers.get_mut(&earlier) {
                p.rtc.disconnect();
            }
            self.stats.replaced += 1;
            self.close_for(earlier, CloseReason::Replaced);
        }
        let id = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.connect_deadlines
            .push(Reverse((now + self.config.connect_timeout, id)));
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
                offered: HashMap::new(),
                sources: sources.iter().cloned().collect(),
                idle: Vec::new(),
                ingress: HashMap::new(),
                estimate: None,
                bwe_targets: (0, 0),
                video_sent: Default::default(),
                egress_loss: 0.0,
                rtt: None,
                min_rtt: None,
                congested_at: None,
                last_upgrade: None,
                shed: 0,
                channel: None,
                data_limiter: Default::default(),
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
        // Everything already published in the call, offered after the
        // answer, and who speaks.
        self.renegotiate(id);
        self.send_speakers(id);
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
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SignalError::BadSdp(unparsable(&e)))?;
        let p = self.peers.get_mut(&peer).ok_or(SignalError::UnknownPeer)?;
        let pending = p.pending.take().ok_or(SignalError::NoPendingOffer)?;
        if let Err(e) = p.rtc.sdp_api().accept_answer(pending.offer, answer) {
            // The session cannot continue in a known state.
            self.drive(peer);
            self.close(peer);
            self.process(now);
            return Err(SignalError::BadSdp(unanswerable(&e)));
        }
        let mut fresh_video = Vec::new();
        for (track, mid, kind, reused) in pending.added {
            // A track that ended meanwhile still gets its subscription:
            // the next offer makes its line idle.
            let (codec, target) = match self.tracks.get(&track) {
                Some(t) if t.kind == MediaKind::Video => {
                    fresh_video.push(track);
                    let target = crate::allocation::initial_layer(&t.layer_views(now));
                    (t.codec, target)
                }
                Some(t) => (t.codec, Some(0)),
                None => (crate::codec_for(kind), None),
            };
            p.subscriptions
                .insert(track, Subscription::new(mid, kind, codec, target, reused));
            p.by_mid.insert(mid, track);
        }
        for track in pending.removed {
            retire(p, track);
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
        // A declared source of the other kind is ignored.
        let source = p
            .sources
            .get(&*mid)
            .copied()
            .filter(|s| s.is_video() == (kind == MediaKind::Video))
            .unwrap_or(Source::default_for(kind));
        let mut track = Track::new(
            TrackOrigin::Local { peer, mid },
            call,
            kind,
            p.info.video_codec,
            user,
            device.clone(),
            layers::order(rids)
                .into_iter()
                .map(|rid| layers::LayerSource::new(Some(rid)))
                .collect(),
        );
        track.set_source(source);
        let codec = track.codec;
        self.tracks.insert(id, track);
        self.out.push_back(Output::Event(SfuEvent::TrackPublished {
            track: id,
            call,
            kind,
            source,
            codec,
            user,
            device,
            layers: rids.len().clamp(1, layers::MAX_LAYERS) as u8,
        }));
        tracing::debug!(
            peer,
            track = id,
            ?kind,
            source = source.name(),
            "track published"
        );
        for other in self.members(call) {
            if other != peer {
                self.renegotiate(other);
            }
        }
    }

    /// A peer stopped sending on one of its m-lines (a later offer made it
    /// inactive, receive-only, or rejected it): its track ends for
    /// everyone.
    pub(crate) fn unpublish(&mut self, peer: PeerId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(track) = p.published.remove(&mid) else {
            return;
        };
        p.ingress.retain(|_, (t, _)| *t != track);
        let call = p.info.call;
        self.tracks.remove(&track);
        self.deferred_keyframes.retain(|t| *t != track);
        self.out
            .push_back(Output::Event(SfuEvent::TrackEnded(track)));
        tracing::debug!(peer, track, "track unpublished");
        for other in self.members(call) {
            if other != peer {
                self.renegotiate(other);
            }
        }
    }

    /// An m-line of the peer's changed direction (its own offer, or its
    /// answer to ours): a send line it stopped ends its track, one it
    /// starts again is published anew.
    pub(crate) fn media_changed(&mut self, peer: PeerId, mid: Mid, direction: Direction) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let Some((kind, rids)) = p.offered.get(&mid).cloned() else {
            return;
        };
        let sending = matches!(direction, Direction::RecvOnly | Direction::SendRecv);
        match (p.published.contains_key(&mid), sending) {
            (true, false) => self.unpublish(peer, mid),
            (false, true) => self.publish(peer, mid, kind, &rids),
            _ => {}
        }
    }

    /// The peer offers again (to add or remove its own tracks, or to answer
    /// nothing in particular: any offer is accepted). An edge offer still
    /// waiting for its answer is dropped (the client ignores it, as the
    /// impolite side of a glare) and made again after this answer.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        sdp: &str,
        sources: &[(String, Source)],
    ) -> Result<String, SignalError> {
        self.last_now = now;
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| SignalError::BadSdp(unparsable(&e)))?;
        let p = self.peers.get_mut(&peer).ok_or(SignalError::UnknownPeer)?;
        p.sources.extend(sources.iter().cloned());
        let rolled_back = match p.pending.take() {
            Some(pending) => {
                // Lines this offer would have reused go back to idle (str0m
                // applied their direction already; the client never saw
                // it), and lines it would have retired are retired: the
                // session has them inactive, and the client's offer cannot
                // activate a line the edge created.
                let mut api = p.rtc.sdp_api();
                let mut back = Vec::new();
                for (_, mid, _, reused) in pending.added {
                    if let Some(line) = reused {
                        api.set_direction(mid, Direction::Inactive);
                        back.push(line);
                    }
                }
                drop(api);
                p.idle.extend(back);
                for track in pending.removed {
                    retire(p, track);
                }
                true
            }
            None => false,
        };
        let answer = match p.rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => answer.to_sdp_string(),
            Err(e) => {
                // The session cannot continue in a known state.
                self.drive(peer);
                self.close(peer);
                self.process(now);
                return Err(SignalError::BadSdp(unanswerable(&e)));
            }
        };
        let video_codec = self
            .peers
            .get(&peer)
            .map_or(Codec::Vp8, |p| p.info.video_codec);
        if let Some(problem) = rejected_media(sdp, &answer, video_codec) {
            // Answered all the same (the line rejected, port 0): the
            // session goes on without it.
            self.out.push_back(Output::Signal(
                peer,
                Signal::Refused {
                    code: "bad_sdp",
                    message: problem,
                },
            ));
        }
        self.drive(peer);
        self.process(now);
        if rolled_back {
            self.send_track_list(peer);
        }
        self.renegotiate(peer);
        self.process(now);
        Ok(answer)
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
                    && !matches!(t.origin, TrackOrigin::Local { peer: src, .. } if src == peer)
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
        let Peer { rtc, idle, .. } = p;
        let mut api = rtc.sdp_api();
        let mut added = Vec::new();
        for (track, kind) in &add {
            // An idle line of the kind first; a new one only without.
            if let Some(at) = idle.iter().position(|l| l.kind == *kind) {
                let line = idle.swap_remove(at);
                api.set_direction(line.mid, Direction::SendOnly);
                added.push((*track, line.mid, *kind, Some(line)));
                continue;
            }
            let mid = api.add_media(
                *kind,
                Direction::SendOnly,
                Some(format!("t{track}")),
                Some(format!("t{track}")),
                None,
            );
            added.push((*track, mid, *kind, None));
        }
        for (_, mid) in &remove {
            api.set_direction(*mid, Direction::Inactive);
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
                    retire(p, *track);
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
                    source: t.source,
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
        self.close_for(peer, CloseReason::Gone);
    }

    /// Removes the peer, its tracks and subscriptions, saying why.
    pub(crate) fn close_for(&mut self, peer: PeerId, reason: CloseReason) {
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
        self.out.push_back(Output::Event(SfuEvent::Closed {
            peer,
            info: p.info,
            reason,
        }));
        for other in self.members(call) {
            self.renegotiate(other);
        }
    }
}

/// Ends a subscription whose line the edge made inactive: the line waits
/// for the next track of its kind.
fn retire(p: &mut Peer, track: TrackId) {
    if let Some(mut sub) = p.subscriptions.remove(&track) {
        p.by_mid.remove(&sub.mid);
        sub.rewriter.stop();
        p.idle.push(IdleLine {
            mid: sub.mid,
            kind: sub.kind,
            rewriter: sub.rewriter,
        });
    }
}

/// Why the answer rejected one of the offer's audio or video m-lines (port
/// 0 in the answer where the offer had a port): the codecs it offered, and
/// the call's. `None` when every offered m-line was accepted.
fn rejected_media(offer: &str, answer: &str, video: Codec) -> Option<String> {
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
        // As SDP names them.
        let video = if video == Codec::H264 { "H264" } else { "VP8" };
        return Some(format!(
            "no {kind} codec in common: the offer has {offered}; this call uses {video} video, Opus audio"
        ));
    }
    None
}
