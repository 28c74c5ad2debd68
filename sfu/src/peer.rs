//! A participant's session and what it receives: one [`Subscription`] per
//! track, each with its own forwarding state and rewriter (str0m's chat
//! example keeps a `TrackOut` with a state enum the same way), instead of
//! parallel sets of mids, pauses and keyframe waits.

use std::collections::HashMap;
use std::time::Instant;

use str0m::change::SdpPendingOffer;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::Ssrc;
use str0m::{Rtc, format::Codec};

use crate::rewrite::Rewriter;
use crate::{PeerInfo, Source, TrackId};

/// One participant's session in this core.
pub(crate) struct Peer {
    pub rtc: Rtc,
    pub info: PeerInfo,
    /// ICE and DTLS are up: media written now reaches the peer (before
    /// this str0m drops it).
    pub connected: bool,
    /// The peer's own send m-lines → its tracks.
    pub published: HashMap<Mid, TrackId>,
    /// Every m-line the peer offered to send on, with its kind and
    /// simulcast rids (a line it stops and starts again is published
    /// again from this).
    pub offered: HashMap<Mid, (MediaKind, Vec<Rid>)>,
    /// What its offers declared its m-lines carry, by mid as the client
    /// wrote it (undeclared: camera or microphone).
    pub sources: HashMap<String, Source>,
    /// Receiving m-lines whose track ended, made inactive and kept for the
    /// next track of their kind (RFC 8829 recycles only stopped lines, and
    /// a stopped line is never reused: a session would grow by two m-lines
    /// per participant who came and went). Each keeps its rewriter, so
    /// the SSRC's sequence numbers stay continuous.
    pub idle: Vec<IdleLine>,
    /// Incoming SSRCs → the track and layer they carry, learned from
    /// str0m's streams on the first packet so later packets need no lookup.
    pub ingress: HashMap<Ssrc, (TrackId, usize)>,
    /// str0m's estimate of the bandwidth towards this peer, bits per
    /// second (TWCC), once there is one.
    pub estimate: Option<u64>,
    /// The (minimum, desired) rates last given str0m's estimator.
    pub bwe_targets: (u64, u64),
    /// The video rate actually sent to this peer.
    pub video_sent: crate::layers::RateMeter,
    /// What str0m's last peer stats said: the fraction of packets to the
    /// peer lost, the round-trip time, the least round-trip time seen.
    pub egress_loss: f32,
    pub rtt: Option<std::time::Duration>,
    pub min_rtt: Option<std::time::Duration>,
    /// When the estimate last fell below what was being sent (congestion):
    /// for a while after, layer choices must fit the estimate.
    pub congested_at: Option<Instant>,
    /// When a layer was last raised for a subscription of this peer
    /// without the estimate's say-so (upgrades outside congestion go one
    /// layer at a time).
    pub last_upgrade: Option<Instant>,
    /// Steps its video is shed below what the allocation would choose,
    /// because the worker is overloaded ([`crate::overload`]).
    pub shed: u8,
    /// The data channel it receives data messages on (its first).
    pub channel: Option<str0m::channel::ChannelId>,
    /// How many data messages it may still send.
    pub data_limiter: crate::data::DataLimiter,
    /// The tracks it receives.
    pub subscriptions: HashMap<TrackId, Subscription>,
    /// The reverse: its receiving m-lines → their tracks.
    pub by_mid: HashMap<Mid, TrackId>,
    /// Last cumulative NACK counts str0m reported, per m-line and
    /// direction (`true`: ingress), to count the differences.
    pub nacks_seen: HashMap<(Mid, bool), u64>,
    /// The outstanding edge offer and what it adds and removes.
    pub pending: Option<Pending>,
    /// Whether the peer has received its answer (offers wait for that).
    pub answered: bool,
    pub ufrag: String,
    /// Packets written since the last flush ([`crate::Sfu::poll_output`]
    /// gives str0m the timeouts that send them).
    pub written: u32,
    /// When str0m next wants a timeout (the timer heap may hold older
    /// entries for this peer; only this one is live).
    pub timeout: Instant,
}

impl Peer {
    /// The track this peer receives on the m-line named `mid` (as the
    /// client wrote it; compared exactly, never parsed into a `Mid`, which
    /// would map and truncate what the network sent).
    pub fn received_mut(&mut self, mid: &str) -> Option<(TrackId, &mut Subscription)> {
        let track = *self.by_mid.iter().find(|(m, _)| &***m == mid)?.1;
        Some((track, self.subscriptions.get_mut(&track)?))
    }

    /// The track this peer publishes on the m-line named `mid`.
    pub fn published_on(&self, mid: &str) -> Option<TrackId> {
        self.published
            .iter()
            .find(|(m, _)| &***m == mid)
            .map(|(_, t)| *t)
    }
}

/// An edge offer waiting for its answer.
pub(crate) struct Pending {
    pub offer: SdpPendingOffer,
    /// Tracks it adds: on a new m-line, or on an idle one (with that
    /// line's rewriter).
    pub added: Vec<(TrackId, Mid, MediaKind, Option<IdleLine>)>,
    /// Tracks it removes (their lines become idle once answered).
    pub removed: Vec<TrackId>,
}

/// An inactive receiving m-line waiting for a track of its kind.
pub(crate) struct IdleLine {
    pub mid: Mid,
    pub kind: MediaKind,
    pub rewriter: Rewriter,
}

/// One track as one subscriber receives it.
pub(crate) struct Subscription {
    /// The subscriber's m-line.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// The subscriber paused it (e.g. off screen): nothing is forwarded.
    pub paused: bool,
    /// The layer forwarded now, or `None`: nothing since the subscription
    /// began, resumed, its publisher unmuted or its video was paused for
    /// bandwidth. Video (re)starts on the first packet of a keyframe of the
    /// [`Subscription::target`] (a delta frame would not decode); audio with
    /// its next packet. The rewriter starts a new run there.
    pub current: Option<usize>,
    /// The layer to forward (switched to on its next keyframe), or `None`:
    /// video paused (nothing arriving, or no bandwidth for any layer).
    pub target: Option<usize>,
    /// The highest layer the subscriber asked for.
    pub max_layer: usize,
    /// What the subscriber was last told of this track: `(current,
    /// target, max_layer)`. The ceiling is in it so a request that moves
    /// only the ceiling (the layer sent stays, e.g. the estimate already
    /// held it down) is still answered.
    pub reported: Option<(Option<usize>, Option<usize>, usize)>,
    /// The payload type the subscriber's m-line uses for the track's codec,
    /// found on the first write.
    pub pt: Option<Pt>,
    /// Whether the m-line's send stream has been set up (its
    /// retransmission cache sized) on the first write.
    pub stream_ready: bool,
    pub rewriter: Rewriter,
}

impl Subscription {
    /// A new subscription on `mid` (on an idle line: `reused`, whose
    /// rewriter goes on); `target` is the layer to start with.
    pub fn new(
        mid: Mid,
        kind: MediaKind,
        codec: Codec,
        target: Option<usize>,
        reused: Option<IdleLine>,
    ) -> Self {
        let rewriter = match reused {
            Some(line) => line.rewriter,
            None => {
                let clock = if codec == Codec::Opus { 48_000 } else { 90_000 };
                // A random start, as RFC 3550 §5.1 asks, in the lower half
                // so the first packets are far from a wrap.
                let first_seq = (uuid::Uuid::new_v4().as_u128() as u16) & 0x7fff;
                Rewriter::new(clock, first_seq)
            }
        };
        Subscription {
            mid,
            kind,
            paused: false,
            current: None,
            target,
            max_layer: crate::layers::MAX_LAYERS - 1,
            reported: None,
            pt: None,
            stream_ready: false,
            rewriter,
        }
    }

    /// Forwarding starts over (resumed, unmuted): a new run on the next
    /// packet the decoder can start from.
    pub fn restart(&mut self) {
        self.current = None;
        self.rewriter.stop();
    }
}
