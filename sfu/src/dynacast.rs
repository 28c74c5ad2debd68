//! Dynacast: simulcast layers nobody needs are not sent at all. A layer
//! above the highest any subscriber asked for (here, or behind the relay)
//! is paused at its publisher, who is told over signaling
//! ([`Signal::Encodings`]; a browser sets `encodings[i].active = false`).
//! Lower layers stay on: a subscriber whose bandwidth falls needs one to
//! step down to without waiting for an encoder to start. A layer comes
//! back as soon as someone asks for it, and goes only after nobody has for
//! [`HOLD`] (a tile that shrinks and grows again does not flap the
//! encoder).
//!
//! For a remote track the same need is what this edge subscribes to at
//! the relay ([`SfuEvent::RemoteLayers`]), so a layer crosses the WAN only
//! for regions that need it, and the publisher's edge pauses what no region
//! wants.

use std::time::{Duration, Instant};

use crate::{Output, SfuEvent, Signal, TrackId, TrackOrigin, layers};

/// How long a layer must be unneeded before it is paused.
pub(crate) const HOLD: Duration = Duration::from_secs(5);

/// What a track's publisher (or the relay) was last told it must send.
#[derive(Debug, Clone, Default)]
pub(crate) struct Demand {
    /// Layers told (bit per layer index); `None` before the first telling.
    pub told: Option<u8>,
    /// Since when fewer layers than told have been needed.
    pub fewer_since: Option<Instant>,
}

impl crate::Sfu {
    /// Looks at what each simulcast track's subscribers need, and tells
    /// publishers (and the relay) what changed.
    pub(crate) fn dynacast(&mut self, now: Instant) {
        let mut tracks: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.layers.len() > 1)
            .map(|(id, _)| *id)
            .collect();
        tracks.sort_unstable();
        for track in tracks {
            self.dynacast_track(track, now);
        }
    }

    /// The layers of `track` someone needs: every layer up to the highest
    /// any subscriber (or the relay) asked for; at least the lowest.
    fn needed_layers(&self, track: TrackId) -> u8 {
        let Some(t) = self.tracks.get(&track) else {
            return 1;
        };
        let count = t.layers.len();
        let mut top: Option<usize> = None;
        for peer in self.calls.get(&t.call).into_iter().flatten() {
            let Some(sub) = self
                .peers
                .get(peer)
                .and_then(|p| p.subscriptions.get(&track))
            else {
                continue;
            };
            if sub.paused {
                continue;
            }
            top = top.max(Some(sub.max_layer.min(count - 1)));
        }
        if t.relay_alias.is_some() && t.relay_layers != 0 {
            let highest = 7 - t.relay_layers.leading_zeros() as usize;
            top = top.max(Some(highest.min(count - 1)));
        }
        if t.export_layers != 0 {
            let highest = 7 - t.export_layers.leading_zeros() as usize;
            top = top.max(Some(highest.min(count - 1)));
        }
        let top = top.unwrap_or(0);
        ((1u16 << (top + 1)) - 1) as u8
    }

    fn dynacast_track(&mut self, track: TrackId, now: Instant) {
        let needed = self.needed_layers(track);
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        let demand = &mut t.demand;
        let tell = match demand.told {
            None => true,
            Some(told) if told == needed => {
                demand.fewer_since = None;
                false
            }
            // More than told (some layer is missing): at once.
            Some(told) if needed & !told != 0 => true,
            // Fewer: once that has lasted.
            Some(_) => {
                let since = *demand.fewer_since.get_or_insert(now);
                now.saturating_duration_since(since) >= HOLD
            }
        };
        if !tell {
            return;
        }
        demand.told = Some(needed);
        demand.fewer_since = None;
        match t.origin {
            TrackOrigin::Local { peer, mid } => {
                let count = t.layers.len();
                // By the publisher's own rids: what its encodings are named.
                let active: Vec<String> = (0..count)
                    .filter(|i| needed & (1 << i) != 0)
                    .map(|i| {
                        t.layers[i]
                            .rid
                            .map_or_else(|| layers::name(i, count).to_owned(), |r| r.to_string())
                    })
                    .collect();
                tracing::debug!(peer, track, ?active, "dynacast");
                self.out.push_back(Output::Signal(
                    peer,
                    Signal::Encodings {
                        mid: mid.to_string(),
                        active,
                    },
                ));
            }
            TrackOrigin::Remote { key } => {
                self.out.push_back(Output::Event(SfuEvent::RemoteLayers {
                    key,
                    layers: needed,
                }));
            }
        }
    }
}
