//! Overload: a worker whose thread is busy nearly all the time would let
//! its socket's and str0m's queues grow, and every participant's media
//! would come later and later. Instead it sheds video: the subscribers
//! receiving the most video step down a layer (a single-layer video, or
//! one already at its lowest, pauses), a tenth of them per second while
//! the overload lasts. Audio is never shed. Once the worker has had room
//! for a while, they climb back a step at a time.
//!
//! Overload shows as timers handled late (a queue forming): at once when
//! the thread is also busy nearly all the time (the worker itself is
//! saturated), or when they stay late for two reports in a row whatever
//! the worker's own share (it does not get the CPU it needs: neighbours,
//! a container's CPU limit). A busy worker that keeps up sheds nothing.
//!
//! The shell measures the load (its thread's CPU time over wall time, and
//! the latest a timer ran, once a second) and reports it with
//! [`crate::Sfu::report_load`]; the allocation applies each subscriber's
//! shed steps below what its bandwidth and requests would choose.

use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use crate::PeerId;

/// A worker busier than this share of the time sheds...
pub const SHED_ABOVE: f64 = 0.9;
/// ...when its timers also ran this late.
pub const SHED_LAG: Duration = Duration::from_millis(20);
/// Below this share, shed video comes back.
pub const RESTORE_BELOW: f64 = 0.7;
/// How long after the last shed the first step back waits.
const RESTORE_AFTER: Duration = Duration::from_secs(5);
/// Between steps back.
const RESTORE_EVERY: Duration = Duration::from_secs(1);
/// Steps a subscriber's video can be shed: two layers down, then paused.
pub(crate) const MAX_SHED: u8 = 3;
/// One subscriber in this many is shed (or restored) per step, at least
/// one.
const STEP_SHARE: usize = 10;

/// The worker's shedding state.
#[derive(Debug, Default)]
pub(crate) struct Overload {
    last_shed: Option<Instant>,
    last_restore: Option<Instant>,
    /// The last report's timers were late.
    was_late: bool,
}

impl crate::Sfu {
    /// The shell measured its worker's load over the last interval: the
    /// share of it its thread was busy (0.0 to 1.0), and how late its
    /// latest timer ran. Sheds or restores video.
    pub fn report_load(&mut self, now: Instant, busy: f64, lag: Duration) {
        self.last_now = now;
        if !self.config.shed_when_overloaded {
            return;
        }
        // Only a subscriber whose video is flowing costs what shedding
        // saves (a paused one is not shed further).
        let receives_video = |p: &crate::peer::Peer| {
            p.subscriptions.iter().any(|(t, sub)| {
                sub.current.is_some()
                    && self
                        .tracks
                        .get(t)
                        .is_some_and(|t| t.kind == MediaKind::Video)
            })
        };
        let late = lag >= SHED_LAG;
        let shedding = late && (busy >= SHED_ABOVE || self.overload.was_late);
        self.overload.was_late = late;
        let chosen: Vec<PeerId> = if shedding {
            // The most video first: they cost the most packets.
            let mut costly: Vec<(u64, PeerId)> = self
                .peers
                .iter()
                .filter(|(_, p)| p.connected && p.shed < MAX_SHED && receives_video(p))
                .map(|(id, p)| (p.video_sent.bps(), *id))
                .collect();
            costly.sort_unstable_by(|a, b| b.cmp(a));
            let take = costly.len().div_ceil(STEP_SHARE);
            self.overload.last_shed = Some(now);
            costly.into_iter().take(take).map(|(_, id)| id).collect()
        } else if busy <= RESTORE_BELOW
            && !late
            && self
                .overload
                .last_shed
                .is_some_and(|at| now.saturating_duration_since(at) >= RESTORE_AFTER)
            && self
                .overload
                .last_restore
                .is_none_or(|at| now.saturating_duration_since(at) >= RESTORE_EVERY)
        {
            // The most shed first.
            let mut shed: Vec<(u8, PeerId)> = self
                .peers
                .iter()
                .filter(|(_, p)| p.shed > 0)
                .map(|(id, p)| (p.shed, *id))
                .collect();
            shed.sort_unstable_by(|a, b| b.cmp(a));
            let take = self.peers.len().div_ceil(STEP_SHARE).max(1);
            if !shed.is_empty() {
                self.overload.last_restore = Some(now);
            }
            shed.into_iter().take(take).map(|(_, id)| id).collect()
        } else {
            Vec::new()
        };
        for peer in chosen {
            if let Some(p) = self.peers.get_mut(&peer) {
                if shedding {
                    p.shed += 1;
                    self.stats.overload_sheds += 1;
                    tracing::info!(peer, steps = p.shed, busy, ?lag, "overloaded: video shed");
                } else {
                    p.shed -= 1;
                    tracing::info!(
                        peer,
                        steps = p.shed,
                        busy,
                        "room again: video restored a step"
                    );
                }
            }
            self.allocate(peer, now);
        }
        self.process(now);
    }

    /// Subscribers whose video is shed now.
    pub fn shed_subscribers(&self) -> usize {
        self.peers.values().filter(|p| p.shed > 0).count()
    }
}

/// The highest layer a subscription may get after `shed` steps below the
/// best it could get (`None`: paused).
pub(crate) fn shed_layer(target: Option<usize>, shed: u8) -> Option<usize> {
    target.and_then(|layer| layer.checked_sub(usize::from(shed)))
}

#[cfg(test)]
mod tests {
    use super::shed_layer;

    #[test]
    fn shedding_lowers_the_layer_then_pauses() {
        assert_eq!(shed_layer(Some(2), 0), Some(2));
        assert_eq!(shed_layer(Some(2), 1), Some(1));
        assert_eq!(shed_layer(Some(2), 2), Some(0));
        assert_eq!(shed_layer(Some(2), 3), None);
        assert_eq!(shed_layer(Some(0), 1), None, "a single layer pauses");
        assert_eq!(shed_layer(None, 1), None);
    }
}
