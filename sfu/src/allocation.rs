//! Per subscriber: which layer of each received video track it gets, from
//! what it asked for, what arrives, and its share of str0m's bandwidth
//! estimate (TWCC); and the rates str0m's estimator should sustain and
//! probe for, so a subscriber whose estimate recovers climbs back.
//!
//! Audio is never part of the choice: its share is set aside first, and a
//! subscriber whose estimate fits no video layer keeps its audio.

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::MediaKind;

use crate::layers::{self, LayerView};
use crate::{LayerState, Output, PeerId, Signal, TrackId};

/// How often layer choices are looked at again (layers that stopped
/// arriving, bitrates that moved).
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);
/// The estimate a session starts with: high enough that a good link starts
/// at full quality (the estimate falls fast on a congested one).
pub(crate) const INITIAL_ESTIMATE_KBPS: u64 = 2500;
/// Set aside per received audio track before video is allocated.
const AUDIO_BPS: u64 = 64_000;
/// Congestion: the estimate is below this share of the video sent.
const CONGESTED_BELOW: f64 = 0.9;
/// Congestion shows as this fraction of packets lost (where GoogCC's
/// loss controller starts cutting; less is a lossy link NACKs repair)...
const LOSS_CONGESTED: f32 = 0.1;
/// ...or as a round trip this much above the least seen (a queue).
const QUEUE_DELAY: Duration = Duration::from_millis(40);
/// How long after congestion layer choices must fit the estimate (while
/// probing looks for the capacity to climb back).
const CONGESTION_HOLD: Duration = Duration::from_secs(5);
/// For this long after congestion a paused video starts again only on a
/// layer that fits the estimate (else pausing and resuming would repeat
/// the congestion).
const CONGESTION_MEMORY: Duration = Duration::from_secs(30);
/// Outside congestion, a subscription climbs one layer per this.
const UPGRADE_STEP: Duration = Duration::from_secs(1);
/// A shared screen's weight in the video share, a camera's being 1: the
/// slides matter more than the faces, and a screen needs its detail
/// (LiveKit gives screen shares priority too).
const SCREEN_WEIGHT: u64 = 3;

impl crate::Sfu {
    /// Looks at every subscriber's layer choices again.
    pub(crate) fn allocate_all(&mut self, now: Instant) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.allocate(peer, now);
        }
    }

    /// Chooses the layer of each video track `peer` receives; switches
    /// start on the target's next keyframe, asked for now.
    pub(crate) fn allocate(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut videos: Vec<TrackId> = Vec::new();
        let mut audio = 0u64;
        for (track, sub) in &p.subscriptions {
            let Some(t) = self.tracks.get(track) else {
                continue;
            };
            if sub.paused || t.muted {
                continue;
            }
            match t.kind {
                MediaKind::Video => videos.push(*track),
                MediaKind::Audio => audio += 1,
            }
        }
        videos.sort_unstable();
        // Congestion: the estimate is below the video actually sent, and
        // the path shows it (packets lost, or queues: the round trip well
        // above its least). For a while after, choices must fit the
        // estimate, down to pausing video. Otherwise the estimate only
        // limits climbing (it sinks towards what is sent while little is: a
        // mute, a lower layer, so it takes nothing away).
        let sent = p.video_sent.bps();
        let over = p
            .estimate
            .is_some_and(|e| sent > 0 && (e as f64) < sent as f64 * CONGESTED_BELOW);
        let queued =
            matches!((p.rtt, p.min_rtt), (Some(rtt), Some(min)) if rtt > min + QUEUE_DELAY);
        if over && (p.egress_loss > LOSS_CONGESTED || queued) {
            p.congested_at = Some(now);
        }
        let constrained = p
            .congested_at
            .is_some_and(|at| now.saturating_duration_since(at) < CONGESTION_HOLD);
        // Shared by weight: a screen gets more than a camera.
        let weight = |track: &TrackId| match self.tracks.get(track).map(|t| t.source) {
            Some(crate::Source::Screen) => SCREEN_WEIGHT,
            _ => 1,
        };
        let total_weight: u64 = videos.iter().map(weight).sum::<u64>().max(1);
        let video_budget = p
            .estimate
            .map(|estimate| estimate.saturating_sub(audio * AUDIO_BPS));
        let may_step_up = p
            .last_upgrade
            .is_none_or(|at| now.saturating_duration_since(at) >= UPGRADE_STEP);
        let mut stepped_up = false;
        let mut keyframes = Vec::new();
        // Video only: audio needs no padding to be discovered.
        let (mut sending, mut desired) = (0u64, 0u64);
        let mut changed = false;
        for track in &videos {
            let (Some(t), Some(sub)) = (self.tracks.get(track), p.subscriptions.get_mut(track))
            else {
                continue;
            };
            let views = t.layer_views(now);
            let share = video_budget.map(|budget| budget * weight(track) / total_weight);
            // What fits the estimate; what requests and arrivals allow.
            let fitting = layers::choose(sub.max_layer, &views, share, sub.current);
            let allowed = layers::choose(sub.max_layer, &views, None, sub.current);
            let mut target = if constrained {
                fitting
            } else {
                // Outside congestion the estimate lags what is sent (it
                // grows with it, and with what probes find): it takes no
                // layer away, but a layer up must fit it. A start with
                // nothing fitting takes the lowest layer arriving, unless
                // the link was congested lately.
                let keep = match (sub.current, allowed) {
                    (Some(c), Some(a)) => Some(c.min(a)),
                    _ => None,
                };
                let start_anyway = p
                    .congested_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= CONGESTION_MEMORY);
                fitting.max(keep).or_else(|| {
                    start_anyway
                        .then(|| layers::choose(0, &views, None, None))
                        .flatten()
                })
            };
            // An overloaded worker sheds this subscriber's video: its
            // steps count down from the best layer it could get (probes
            // go on, so its estimate is there when the steps come back).
            if p.shed > 0 {
                let best = layers::choose(sub.max_layer, &views, None, None);
                let ceiling = crate::overload::shed_layer(best, p.shed);
                target = match (target, ceiling) {
                    (Some(t), Some(c)) => Some(t.min(c)),
                    _ => None,
                };
            }
            if let (Some(want), Some(now_at)) = (target, sub.current)
                && want > now_at
            {
                // One layer up, then wait a step.
                target = Some(if may_step_up { now_at + 1 } else { now_at });
                stepped_up |= may_step_up;
            }
            let best = layers::choose(sub.max_layer, &views, None, None);
            // Probe for what would be sent with no limit; under congestion
            // only for the next layer up, so probes stay small next to
            // the audio they share the link with.
            let probe_for = if constrained {
                match (target, best) {
                    (Some(t), Some(b)) => Some((t + 1).min(b)),
                    (None, b) => b.map(|_| 0),
                    (t, None) => t,
                }
            } else {
                best
            };
            sending += target.map_or(0, |l| views[l].bps);
            desired += probe_for.map_or(0, |l| views[l].bps);
            if target != sub.target {
                tracing::debug!(peer, track, ?target, from = ?sub.target, ?share, "layer choice");
                sub.target = target;
                if target.is_none() {
                    // Nothing fits (or arrives): stop now, not at a keyframe.
                    sub.restart();
                }
            }
            if let Some(target) = target
                && sub.current != Some(target)
            {
                keyframes.push((*track, target));
            }
            changed |= sub.reported != Some((sub.current, sub.target, sub.max_layer));
        }
        if stepped_up {
            p.last_upgrade = Some(now);
        }
        if p.estimate.is_some() {
            // Sustain what is sent and probe towards `desired`. No padding
            // floor beyond what is sent: on a thin link it would crowd out
            // the audio, and the probes are what let a layer up fit.
            let targets = (sending, desired.max(sending));
            if std::mem::replace(&mut p.bwe_targets, targets) != targets {
                p.rtc
                    .bwe()
                    .set_bitrate(Bitrate::bps(targets.0), Bitrate::bps(targets.1));
            }
        }
        if changed {
            self.send_layers(peer, now);
        }
        for (track, layer) in keyframes {
            self.request_keyframe(track, Some(layer), now, false);
        }
        self.drive(peer);
    }

    /// Tells a peer which layer of each received video track it gets.
    pub(crate) fn send_layers(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut list = Vec::new();
        for (track, sub) in &mut p.subscriptions {
            let Some(t) = self.tracks.get(track) else {
                continue;
            };
            if t.kind != MediaKind::Video {
                continue;
            }
            sub.reported = Some((sub.current, sub.target, sub.max_layer));
            let count = t.layers.len();
            list.push(LayerState {
                mid: sub.mid.to_string(),
                layer: sub.current.map(|l| layers::name(l, count)),
                target: sub.target.map(|l| layers::name(l, count)),
                available: (0..count)
                    .filter(|l| t.layers[*l].arriving(now))
                    .map(|l| layers::name(l, count))
                    .collect(),
                max: layers::name(sub.max_layer.min(count - 1), count),
            });
        }
        list.sort_by(|a, b| a.mid.cmp(&b.mid));
        self.out
            .push_back(Output::Signal(peer, Signal::Layers(list, p.estimate)));
    }

    /// The peer asks for at most a layer of a received video track (by
    /// name or by the height it shows the video at).
    pub fn set_max_layer(
        &mut self,
        now: Instant,
        peer: PeerId,
        mid: &str,
        max: Option<&str>,
        height: Option<u32>,
    ) -> Result<(), crate::SignalError> {
        self.last_now = now;
        let max_layer = match (max, height) {
            (Some(name), _) => {
                layers::parse(name).ok_or_else(|| crate::SignalError::BadLayer(name.to_owned()))?
            }
            (None, Some(height)) => layers::for_height(height),
            (None, None) => layers::MAX_LAYERS - 1,
        };
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(crate::SignalError::UnknownPeer)?;
        let (_, sub) = p
            .received_mut(mid)
            .ok_or_else(|| crate::SignalError::UnknownTrack(mid.to_owned()))?;
        if sub.max_layer != max_layer {
            sub.max_layer = max_layer;
            self.allocate(peer, now);
            self.process(now);
        }
        Ok(())
    }
}

/// The layer a new video subscription starts with: the best arriving now
/// (the next allocation weighs the estimate). None while nothing arrives:
/// the first packet of a layer sets it.
pub(crate) fn initial_layer(views: &[LayerView]) -> Option<usize> {
    layers::choose(layers::MAX_LAYERS - 1, views, None, None)
}
