//! The relay's routing core, sans-IO: links come and go, control messages
//! and datagrams arrive, `now` is passed in; control messages to send and
//! the links each datagram goes to come out. No sockets, no clock.
//!
//! Invariants:
//! - **Each track crosses each link once.** A track is subscribed upstream
//!   (on the link that announced it) once, with the union of the layers its
//!   downstream links want, however many of them there are; a datagram is
//!   fanned out from that one copy. The last downstream unsubscribe (or
//!   link loss) unsubscribes upstream.
//! - **Split horizon.** Relays form a full mesh, so a track learned from a
//!   relay is announced only to edges, never to another relay, and a
//!   relay's interest in a call is declared to other relays only on behalf
//!   of its own edges. Nothing loops.
//! - **Aliases.** A track gets one alias of ours, used on every downstream
//!   link, so a datagram's header is rewritten once per hop.
//! - Keyframe requests go upstream at most once per track per
//!   [`RouterConfig::keyframe_throttle`].
//! - NACKs are answered hop by hop: from the last [`HISTORY`] datagrams of
//!   a video track this relay forwarded, and what it no longer (or never)
//!   had is asked of the link upstream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::relay::{Announce, Control, Hello, Kind, MediaHeader, Role};

use crate::media::SendHistory;

/// Datagrams of each video track kept to answer NACKs (~1.5 s of
/// 1.5 Mbit/s video).
pub const HISTORY: usize = 256;
/// A sequence number NACKed upstream is not asked again within this (the
/// answer is on its way; a receiver re-NACKs after 150 ms).
const NACK_DEDUP: Duration = Duration::from_millis(100);
use uuid::Uuid;

/// A link (one QUIC connection), numbered by the shell.
pub type LinkId = u64;

/// Timing.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Least time between two keyframe requests sent upstream for a track.
    pub keyframe_throttle: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            keyframe_throttle: Duration::from_millis(300),
        }
    }
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a media datagram of our version.
    Malformed,
    /// Its alias names no track announced on its link.
    UnknownTrack,
    /// The link it must go to has no room for video (audio goes first).
    Congestion,
    /// Larger than the link's largest datagram.
    TooLarge,
    /// The link closed while sending.
    LinkClosed,
}

impl DropReason {
    /// The `reason` label of the drop counter.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownTrack => "unknown_track",
            DropReason::Congestion => "congestion",
            DropReason::TooLarge => "too_large",
            DropReason::LinkClosed => "link_closed",
        }
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The alias to write into its header (ours).
    pub alias: u32,
    /// Audio or video (for the link's drop policy).
    pub kind: Kind,
    /// The downstream links.
    pub links: Vec<LinkId>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Keyframe requests sent upstream.
    pub keyframe_requests_forwarded: u64,
    /// Keyframe requests swallowed by the throttle.
    pub keyframe_requests_throttled: u64,
    /// Control messages that named an unknown track or broke the rules
    /// (subscribing to a track never announced to the link, a second hello).
    pub control_refused: u64,
    /// Datagrams resent from the history to answer NACKs.
    pub retransmissions: u64,
    /// Sequence numbers NACKed upstream (not in the history).
    pub nacks_forwarded: u64,
    /// Data messages sent on (one per link).
    pub data_forwarded: u64,
}

/// Whether a datagram of `kind` may join a link's send queue that has
/// `free` of `capacity` bytes free: video leaves the last quarter to audio,
/// so audio is never stuck behind a queue full of video.
pub fn admit(kind: Kind, size: usize, free: usize, capacity: usize) -> bool {
    match kind {
        Kind::Audio => size <= free,
        Kind::Video => free >= size + capacity / 4,
    }
}

struct Link {
    hello: Hello,
    /// Calls the link wants announcements for.
    interests: HashSet<Uuid>,
    /// Our aliases of the tracks announced to it.
    announced: HashSet<u32>,
    /// Its aliases of the tracks it announced → ours.
    aliases: HashMap<u32, u32>,
}

struct Track {
    announce: Announce,
    /// The link it came from, and its alias there.
    from: LinkId,
    upstream_alias: u32,
    /// Downstream links and the layers each wants.
    subscribers: Vec<(LinkId, u8)>,
    /// The layers subscribed upstream (0: not subscribed).
    upstream_layers: u8,
    last_keyframe_request: Option<Instant>,
    /// Recent datagrams as forwarded (video only).
    history: Option<SendHistory>,
    /// Sequence numbers recently NACKed upstream: several downstream links
    /// missing one packet ask upstream once.
    nacked: HashMap<u16, Instant>,
}

/// The routing state of one relay.
#[derive(Default)]
pub struct Router {
    config: RouterConfig,
    links: HashMap<LinkId, Link>,
    /// By our alias.
    tracks: HashMap<u32, Track>,
    by_id: HashMap<String, u32>,
    next_alias: u32,
    /// Calls we declared interest in to the other relays.
    relay_interest: HashSet<Uuid>,
    out: VecDeque<(LinkId, Control)>,
    resend: VecDeque<(LinkId, Bytes, Kind)>,
    stats: RouterStats,
}

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig) -> Self {
        Router {
            config,
            next_alias: 1,
            ..Router::default()
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// Links up now.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Tracks known now.
    pub fn tracks(&self) -> usize {
        self.tracks.len()
    }

    /// Tracks flowing through this relay now (subscribed upstream).
    pub fn tracks_relayed(&self) -> usize {
        self.tracks
            .values()
            .filter(|t| t.upstream_layers != 0)
            .count()
    }

    /// Downstream subscriptions (track × link) now.
    pub fn subscriptions(&self) -> usize {
        self.tracks.values().map(|t| t.subscribers.len()).sum()
    }

    /// The hello of a link.
    pub fn hello(&self, link: LinkId) -> Option<&Hello> {
        self.links.get(&link).map(|l| &l.hello)
    }

    /// The next control message to send.
    pub fn poll_control(&mut self) -> Option<(LinkId, Control)> {
        self.out.pop_front()
    }

    /// The next datagram to resend (answering a NACK).
    pub fn poll_resend(&mut self) -> Option<(LinkId, Bytes, Kind)> {
        self.resend.pop_front()
    }

    /// Keeps a forwarded datagram (already carrying our alias) of a video
    /// track for NACKs.
    pub fn remember(&mut self, alias: u32, datagram: Bytes) {
        if let Some(history) = self.tracks.get_mut(&alias).and_then(|t| t.history.as_mut()) {
            history.insert(datagram);
        }
    }

    /// A link completed its hello.
    pub fn link_up(&mut self, link: LinkId, hello: Hello) {
        let role = hello.role;
        self.links.insert(
            link,
            Link {
                hello,
                interests: HashSet::new(),
                announced: HashSet::new(),
                aliases: HashMap::new(),
            },
        );
        if role == Role::Relay {
            let mut calls: Vec<Uuid> = self.relay_interest.iter().copied().collect();
            calls.sort();
            for call in calls {
                self.out.push_back((
                    link,
                    Control::Interest {
                        call,
                        interested: true,
                    },
                ));
            }
        }
    }

    /// A link is gone: its tracks are unannounced everywhere, its
    /// subscriptions end, its interest ends.
    pub fn link_down(&mut self, link: LinkId) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        let from_it: Vec<u32> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.from == link)
            .map(|(alias, _)| *alias)
            .collect();
        for alias in from_it {
            self.remove_track(alias);
        }
        let subscribed: Vec<u32> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.subscribers.iter().any(|(s, _)| *s == link))
            .map(|(alias, _)| *alias)
            .collect();
        for alias in subscribed {
            self.set_subscription(alias, link, 0);
        }
        if l.hello.role == Role::Edge {
            for call in l.interests {
                self.update_relay_interest(call);
            }
        }
    }

    /// A control message arrived on a link.
    pub fn handle_control(&mut self, now: Instant, link: LinkId, message: Control) {
        if !self.links.contains_key(&link) {
            self.stats.control_refused += 1;
            return;
        }
        match message {
            Control::Hello(_) => self.stats.control_refused += 1,
            Control::Interest { call, interested } => self.interest(link, call, interested),
            Control::Announce(announce) => self.announce(link, announce),
            Control::Unannounce { track } => match self.by_id.get(&track).copied() {
                Some(alias) if self.tracks.get(&alias).is_some_and(|t| t.from == link) => {
                    self.remove_track(alias);
                }
                _ => self.stats.control_refused += 1,
            },
            Control::Subscribe { track, layers } => match self.announced_to(link, &track) {
                Some(alias) => self.set_subscription(alias, link, layers),
                None => self.stats.control_refused += 1,
            },
            Control::Unsubscribe { track } => match self.announced_to(link, &track) {
                Some(alias) => self.set_subscription(alias, link, 0),
                None => self.stats.control_refused += 1,
            },
            Control::KeyframeRequest { track } => match self.announced_to(link, &track) {
                Some(alias) => self.request_keyframe(now, alias),
                None => self.stats.control_refused += 1,
            },
            Control::Ping { nonce } => self.out.push_back((link, Control::Pong { nonce })),
            Control::Pong { .. } => {}
            Control::Nack { track, sequences } => match self.announced_to(link, &track) {
                Some(alias) => self.nack(now, link, alias, &sequences),
                None => self.stats.control_refused += 1,
            },
            Control::TrackState { track, muted } => match self.by_id.get(&track).copied() {
                Some(alias) if self.tracks.get(&alias).is_some_and(|t| t.from == link) => {
                    self.track_state(alias, muted);
                }
                _ => self.stats.control_refused += 1,
            },
            Control::Data {
                call,
                user,
                device,
                binary,
                payload,
            } => {
                let message = Control::Data {
                    call,
                    user,
                    device,
                    binary,
                    payload,
                };
                self.data(link, call, message);
            }
        }
    }

    /// A call's data message: to every other link interested in the call,
    /// a relay's to edges only (split horizon, as for tracks). A link that
    /// has not declared interest in the call may not send into it.
    fn data(&mut self, link: LinkId, call: Uuid, message: Control) {
        let Some(from) = self.links.get(&link) else {
            return;
        };
        if !from.interests.contains(&call) {
            self.stats.control_refused += 1;
            return;
        }
        let from_relay = from.hello.role == Role::Relay;
        let mut to: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| {
                **id != link
                    && l.interests.contains(&call)
                    && !(from_relay && l.hello.role == Role::Relay)
            })
            .map(|(id, _)| *id)
            .collect();
        to.sort();
        self.stats.data_forwarded += to.len() as u64;
        for id in to {
            self.out.push_back((id, message.clone()));
        }
    }

    /// A track's publisher muted or unmuted it: remembered for later
    /// announcements and told to every link it was announced to.
    fn track_state(&mut self, alias: u32, muted: bool) {
        let Some(track) = self.tracks.get_mut(&alias) else {
            return;
        };
        if track.announce.muted == muted {
            return;
        }
        track.announce.muted = muted;
        let id = track.announce.track.clone();
        let mut told: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.announced.contains(&alias))
            .map(|(link, _)| *link)
            .collect();
        told.sort();
        for link in told {
            self.out.push_back((
                link,
                Control::TrackState {
                    track: id.clone(),
                    muted,
                },
            ));
        }
    }

    /// Where a datagram from `link` goes (`to` is filled with the links).
    pub fn route(
        &self,
        link: LinkId,
        datagram: &[u8],
        to: &mut Vec<LinkId>,
    ) -> Result<(u32, Kind), DropReason> {
        to.clear();
        let (header, _) = MediaHeader::decode(datagram).map_err(|_| DropReason::Malformed)?;
        let alias = self
            .links
            .get(&link)
            .and_then(|l| l.aliases.get(&header.alias))
            .copied()
            .ok_or(DropReason::UnknownTrack)?;
        let track = self.tracks.get(&alias).ok_or(DropReason::UnknownTrack)?;
        let bit = 1u8.checked_shl(u32::from(header.layer)).unwrap_or(0);
        to.extend(
            track
                .subscribers
                .iter()
                .filter(|(_, layers)| layers & bit != 0)
                .map(|(l, _)| *l),
        );
        Ok((alias, track.announce.kind))
    }

    /// Our alias of a track if it was announced to `link`.
    fn announced_to(&self, link: LinkId, track: &str) -> Option<u32> {
        let alias = *self.by_id.get(track)?;
        self.links
            .get(&link)
            .is_some_and(|l| l.announced.contains(&alias))
            .then_some(alias)
    }

    fn interest(&mut self, link: LinkId, call: Uuid, interested: bool) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let role = l.hello.role;
        if interested {
            if !l.interests.insert(call) {
                return;
            }
            let mut eligible: Vec<u32> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.announce.call == call)
                .map(|(alias, _)| *alias)
                .collect();
            eligible.sort();
            for alias in eligible {
                self.announce_to(link, alias);
            }
        } else {
            if !l.interests.remove(&call) {
                return;
            }
            let dropped: Vec<u32> = l
                .announced
                .iter()
                .copied()
                .filter(|a| self.tracks.get(a).is_some_and(|t| t.announce.call == call))
                .collect();
            for alias in dropped {
                self.set_subscription(alias, link, 0);
                if let Some(l) = self.links.get_mut(&link) {
                    l.announced.remove(&alias);
                }
            }
        }
        if role == Role::Edge {
            self.update_relay_interest(call);
        }
    }

    /// Declares or withdraws our interest in a call to the other relays,
    /// following whether any of our edges is interested.
    fn update_relay_interest(&mut self, call: Uuid) {
        let wanted = self
            .links
            .values()
            .any(|l| l.hello.role == Role::Edge && l.interests.contains(&call));
        let changed = if wanted {
            self.relay_interest.insert(call)
        } else {
            self.relay_interest.remove(&call)
        };
        if !changed {
            return;
        }
        let mut relays: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.hello.role == Role::Relay)
            .map(|(id, _)| *id)
            .collect();
        relays.sort();
        for link in relays {
            self.out.push_back((
                link,
                Control::Interest {
                    call,
                    interested: wanted,
                },
            ));
        }
        if !wanted {
            // The other relays stop telling us about the call's tracks
            // (they do not unannounce on a withdrawn interest): forget
            // what we learned from them, or it would outlive the tracks.
            let learned: Vec<u32> = self
                .tracks
                .iter()
                .filter(|(_, t)| {
                    t.announce.call == call
                        && self
                            .links
                            .get(&t.from)
                            .is_some_and(|l| l.hello.role == Role::Relay)
                })
                .map(|(alias, _)| *alias)
                .collect();
            for alias in learned {
                self.remove_track(alias);
            }
        }
    }

    fn announce(&mut self, link: LinkId, announce: Announce) {
        if let Some(&alias) = self.by_id.get(&announce.track) {
            let same_link = self.tracks.get(&alias).is_some_and(|t| t.from == link);
            if !same_link {
                // Two links claim one track: keep the first.
                self.stats.control_refused += 1;
                return;
            }
            self.remove_track(alias);
        }
        let alias = self.next_alias;
        self.next_alias = self.next_alias.wrapping_add(1).max(1);
        let upstream_alias = announce.alias;
        if let Some(l) = self.links.get_mut(&link) {
            l.aliases.insert(upstream_alias, alias);
        }
        self.by_id.insert(announce.track.clone(), alias);
        let call = announce.call;
        let history = (announce.kind == Kind::Video).then(|| SendHistory::new(HISTORY));
        self.tracks.insert(
            alias,
            Track {
                announce,
                from: link,
                upstream_alias,
                subscribers: Vec::new(),
                upstream_layers: 0,
                last_keyframe_request: None,
                history,
                nacked: HashMap::new(),
            },
        );
        let mut interested: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.interests.contains(&call))
            .map(|(id, _)| *id)
            .collect();
        interested.sort();
        for to in interested {
            self.announce_to(to, alias);
        }
    }

    /// Announces a track to a link if the rules allow it.
    fn announce_to(&mut self, link: LinkId, alias: u32) {
        let Some(track) = self.tracks.get(&alias) else {
            return;
        };
        let from_relay = self
            .links
            .get(&track.from)
            .is_some_and(|l| l.hello.role == Role::Relay);
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if track.from == link || (from_relay && l.hello.role == Role::Relay) {
            return;
        }
        if !l.announced.insert(alias) {
            return;
        }
        let mut announce = track.announce.clone();
        announce.alias = alias;
        self.out.push_back((link, Control::Announce(announce)));
    }

    fn remove_track(&mut self, alias: u32) {
        let Some(track) = self.tracks.remove(&alias) else {
            return;
        };
        self.by_id.remove(&track.announce.track);
        if let Some(l) = self.links.get_mut(&track.from) {
            l.aliases.remove(&track.upstream_alias);
        }
        let mut told: Vec<LinkId> = Vec::new();
        for (id, l) in &mut self.links {
            if l.announced.remove(&alias) {
                told.push(*id);
            }
        }
        told.sort();
        for link in told {
            self.out.push_back((
                link,
                Control::Unannounce {
                    track: track.announce.track.clone(),
                },
            ));
        }
    }

    /// Sets the layers a downstream link wants of a track (0: none) and
    /// keeps the upstream subscription the union of them all.
    fn set_subscription(&mut self, alias: u32, link: LinkId, layers: u8) {
        let Some(track) = self.tracks.get_mut(&alias) else {
            return;
        };
        track.subscribers.retain(|(l, _)| *l != link);
        if layers != 0 {
            track.subscribers.push((link, layers));
        }
        let union = track.subscribers.iter().fold(0, |acc, (_, l)| acc | l);
        if union == track.upstream_layers {
            return;
        }
        track.upstream_layers = union;
        let id = track.announce.track.clone();
        let from = track.from;
        if !self.links.contains_key(&from) {
            return;
        }
        let message = if union == 0 {
            Control::Unsubscribe { track: id }
        } else {
            Control::Subscribe {
                track: id,
                layers: union,
            }
        };
        self.out.push_back((from, message));
    }

    /// Resends what the history holds; asks upstream for the rest.
    fn nack(&mut self, now: Instant, link: LinkId, alias: u32, sequences: &[u16]) {
        let Some(track) = self.tracks.get_mut(&alias) else {
            return;
        };
        let kind = track.announce.kind;
        let mut missing = Vec::new();
        for &seq in sequences {
            match track.history.as_ref().and_then(|h| h.get(seq)) {
                Some(datagram) => {
                    self.stats.retransmissions += 1;
                    self.resend.push_back((link, datagram, kind));
                }
                None => {
                    let recent = track
                        .nacked
                        .get(&seq)
                        .is_some_and(|at| now.saturating_duration_since(*at) < NACK_DEDUP);
                    if !recent {
                        missing.push(seq);
                    }
                }
            }
        }
        if missing.is_empty() || !self.links.contains_key(&track.from) {
            return;
        }
        if track.nacked.len() > 1024 {
            track
                .nacked
                .retain(|_, at| now.saturating_duration_since(*at) < NACK_DEDUP);
        }
        for &seq in &missing {
            track.nacked.insert(seq, now);
        }
        self.stats.nacks_forwarded += missing.len() as u64;
        self.out.push_back((
            track.from,
            Control::Nack {
                track: track.announce.track.clone(),
                sequences: missing,
            },
        ));
    }

    fn request_keyframe(&mut self, now: Instant, alias: u32) {
        let Some(track) = self.tracks.get_mut(&alias) else {
            return;
        };
        let throttled = track
            .last_keyframe_request
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.keyframe_throttle);
        if throttled {
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        track.last_keyframe_request = Some(now);
        self.stats.keyframe_requests_forwarded += 1;
        self.out.push_back((
            track.from,
            Control::KeyframeRequest {
                track: track.announce.track.clone(),
            },
        ));
    }
}

#[cfg(test)]
mod tests;
