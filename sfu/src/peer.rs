//! A participant's session and what it receives: one [`Subscription`] per
//! track, each with its own forwarding state and rewriter (str0m's chat
//! example keeps a `TrackOut` with a state enum the same way), instead of
//! parallel sets of mids, pauses and keyframe waits.

use std::collections::HashMap;
use std::time::Instant;

use str0m::change::SdpPendingOffer;
use str0m::media::{Mid, Pt};
use str0m::rtp::Ssrc;
use str0m::{Rtc, format::Codec};

use crate::rewrite::Rewriter;
use crate::{PeerInfo, TrackId};

/// One participant's session in this core.
pub(crate) struct Peer {
    pub rtc: Rtc,
    pub info: PeerInfo,
    /// ICE and DTLS are up: media written now reaches the peer (before
    /// this str0m drops it).
    pub connected: bool,
    /// The peer's own send m-lines → its tracks.
    pub published: HashMap<Mid, TrackId>,
    /// Incoming SSRCs → the track they carry, learned from str0m's streams
    /// on the first packet so later packets need no lookup.
    pub ingress: HashMap<Ssrc, TrackId>,
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
    /// When str0m next wants a timeout (the timer heap may hold older
    /// entries for this peer; only this one is live).
    pub timeout: Instant,
}

/// An edge offer waiting for its answer.
pub(crate) struct Pending {
    pub offer: SdpPendingOffer,
    pub added: Vec<(TrackId, Mid)>,
    pub removed: Vec<TrackId>,
}

/// Where a subscription is in forwarding its track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// Nothing forwarded since the subscription began, resumed, or its
    /// publisher unmuted: video waits for the first packet of a keyframe (a
    /// delta frame would not decode); audio starts with its next packet.
    /// The rewriter starts a new run there.
    Starting,
    /// Packets are forwarded through the current run.
    Live,
}

/// One track as one subscriber receives it.
pub(crate) struct Subscription {
    /// The subscriber's m-line.
    pub mid: Mid,
    /// The subscriber paused it (e.g. off screen): nothing is forwarded.
    pub paused: bool,
    pub state: OutState,
    /// The payload type the subscriber's m-line uses for the track's codec,
    /// found on the first write.
    pub pt: Option<Pt>,
    /// Whether the m-line's send stream has been set up (its
    /// retransmission cache sized) on the first write.
    pub stream_ready: bool,
    pub rewriter: Rewriter,
}

impl Subscription {
    pub fn new(mid: Mid, codec: Codec) -> Self {
        let clock = if codec == Codec::Opus { 48_000 } else { 90_000 };
        // A random start, as RFC 3550 §5.1 asks, in the lower half so the
        // first packets are far from a wrap.
        let first_seq = (uuid::Uuid::new_v4().as_u128() as u16) & 0x7fff;
        Subscription {
            mid,
            paused: false,
            state: OutState::Starting,
            pt: None,
            stream_ready: false,
            rewriter: Rewriter::new(clock, first_seq),
        }
    }

    /// Forwarding starts over (resumed, unmuted): a new run on the next
    /// packet the decoder can start from.
    pub fn restart(&mut self) {
        self.state = OutState::Starting;
        self.rewriter.stop();
    }
}
