//! Who is speaking: the audio level each publisher's packets carry (RFC
//! 6464 header extension, read for local tracks by str0m and carried by the
//! relay for remote ones) becomes, per microphone track, a loudness per
//! [`TICK`]; each call's dominant speaker is chosen from those, on three
//! time scales, the way Jitsi's dominant speaker identification does it
//! (after Volfin and Cohen): a challenger takes over only when it is
//! louder than the current speaker over the last half second, second *and*
//! two seconds, so a cough or a laugh does not steal the tile, and a new
//! speaker keeps it for at least [`HOLD`].
//!
//! Every edge computes this for the calls it serves from the same levels
//! (local and relayed), so participants in different regions see the same
//! speaker within a tick or two, with nothing extra on the wire.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use str0m::media::MediaKind;
use uuid::Uuid;

use crate::{Output, Sfu, Signal, Source, TrackId};

/// How often loudness is sampled and speakers are chosen.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// A level at or below this many dB under full scale is speech (or at least
/// sound); quieter is background. LiveKit's default is 35; a laptop
/// microphone across a room speaks at about 40–50.
const VOICED_DBOV: u8 = 50;
/// Ticks in the immediate, medium and long windows (0.5, 1 and 2 s).
const IMMEDIATE: usize = 2;
const MEDIUM: usize = 4;
const LONG: usize = 8;
/// The least time a dominant speaker keeps the role.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// One microphone track's loudness history.
#[derive(Debug, Clone, Default)]
pub(crate) struct Activity {
    /// Loudness summed over this tick's packets, and their number.
    sum: u32,
    packets: u32,
    /// The loudness of the last [`LONG`] ticks, newest first.
    history: VecDeque<f32>,
}

impl Activity {
    /// A packet arrived with `level` (dBov as str0m reads it: 0 to -127).
    pub fn add(&mut self, level: i8) {
        let dbov = level.unsigned_abs().min(127);
        // Loudness above the voiced floor; background counts as silence.
        self.sum += u32::from(VOICED_DBOV.saturating_sub(dbov));
        self.packets += 1;
    }

    /// Closes a tick: its mean loudness joins the history.
    fn tick(&mut self) {
        let loudness = if self.packets == 0 {
            0.0
        } else {
            self.sum as f32 / self.packets as f32
        };
        self.sum = 0;
        self.packets = 0;
        self.history.push_front(loudness);
        self.history.truncate(LONG);
    }

    /// Mean loudness over the newest `ticks`.
    fn mean(&self, ticks: usize) -> f32 {
        self.history.iter().take(ticks).sum::<f32>() / ticks as f32
    }

    /// Whether it has spoken in the immediate window.
    fn active(&self) -> bool {
        self.mean(IMMEDIATE) > 0.0
    }

    /// Whether it beats `other` on every time scale.
    fn beats(&self, other: &Activity) -> bool {
        [IMMEDIATE, MEDIUM, LONG]
            .into_iter()
            .all(|n| self.mean(n) > other.mean(n))
    }

    /// Silence from now on (muted).
    pub fn clear(&mut self) {
        *self = Activity::default();
    }
}

/// A speaker as signaling reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    /// The user.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// How loud over the last half second, 0–100.
    pub level: u8,
}

/// A call's speaker state.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallSpeakers {
    /// The dominant speaker's track, and since when.
    dominant: Option<(TrackId, Instant)>,
    /// What its participants were last told: the dominant speaker and who
    /// was active.
    reported: Option<(Option<TrackId>, Vec<TrackId>)>,
}

impl Sfu {
    /// Closes a tick for every microphone track, picks each call's
    /// dominant speaker, and tells the call when it or the set of active
    /// speakers changed.
    pub(crate) fn detect_speakers(&mut self, now: Instant) {
        for t in self.tracks.values_mut() {
            if let Some(activity) = &mut t.speech {
                activity.tick();
            }
        }
        let calls: Vec<Uuid> = self.calls.keys().copied().collect();
        for call in calls {
            self.call_speakers(call, now);
        }
        self.speakers
            .retain(|call, _| self.calls.contains_key(call));
    }

    fn call_speakers(&mut self, call: Uuid, now: Instant) {
        let mut mics: Vec<(TrackId, &Activity)> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.call == call && !t.muted)
            .filter_map(|(id, t)| Some((*id, t.speech.as_ref()?)))
            .collect();
        mics.sort_by_key(|(id, _)| *id);
        let state = self.speakers.entry(call).or_default();
        let current = state
            .dominant
            .filter(|(track, _)| mics.iter().any(|(id, _)| id == track));
        // The loudest challenger on every time scale, if any beats the
        // current speaker (after its hold).
        let held = current.is_some_and(|(_, since)| now.saturating_duration_since(since) < HOLD);
        let challenger = mics
            .iter()
            .filter(|(_, a)| a.active())
            .filter(|(id, a)| match current {
                Some((track, _)) => {
                    *id != track
                        && mics
                            .iter()
                            .find(|(t, _)| *t == track)
                            .is_none_or(|(_, d)| a.beats(d))
                }
                None => true,
            })
            .max_by(|a, b| a.1.mean(MEDIUM).total_cmp(&b.1.mean(MEDIUM)))
            .map(|(id, _)| *id);
        state.dominant = match (current, challenger) {
            (Some(c), _) if held => Some(c),
            (_, Some(track)) => Some((track, now)),
            (c, None) => c,
        };
        let mut active: Vec<(TrackId, f32)> = mics
            .iter()
            .filter(|(_, a)| a.active())
            .map(|(id, a)| (*id, a.mean(IMMEDIATE)))
            .collect();
        active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let dominant = state.dominant.map(|(t, _)| t);
        let mut ids: Vec<TrackId> = active.iter().map(|(id, _)| *id).collect();
        ids.sort();
        let report = (dominant, ids);
        if state.reported.as_ref() == Some(&report) {
            return;
        }
        state.reported = Some(report);
        let speaker = |track: TrackId, loudness: f32| {
            let t = &self.tracks[&track];
            Speaker {
                user: t.user,
                device: t.device.clone(),
                level: (loudness / f32::from(VOICED_DBOV) * 100.0).clamp(0.0, 100.0) as u8,
            }
        };
        let dominant = dominant.map(|track| {
            let loudness = active
                .iter()
                .find(|(t, _)| *t == track)
                .map_or(0.0, |a| a.1);
            speaker(track, loudness)
        });
        let active: Vec<Speaker> = active.iter().map(|(t, l)| speaker(*t, *l)).collect();
        for peer in self.members(call) {
            self.out.push_back(Output::Signal(
                peer,
                Signal::Speakers {
                    dominant: dominant.clone(),
                    active: active.clone(),
                },
            ));
        }
    }

    /// What a newcomer is told of its call's speakers (nothing before
    /// anyone spoke).
    pub(crate) fn send_speakers(&mut self, peer: crate::PeerId) {
        let Some(call) = self.peers.get(&peer).map(|p| p.info.call) else {
            return;
        };
        let Some((track, _)) = self.speakers.get(&call).and_then(|s| s.dominant) else {
            return;
        };
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        let dominant = Speaker {
            user: t.user,
            device: t.device.clone(),
            level: 0,
        };
        self.out.push_back(Output::Signal(
            peer,
            Signal::Speakers {
                dominant: Some(dominant),
                active: Vec::new(),
            },
        ));
    }
}

/// Whether a track's levels take part in speaker detection.
pub(crate) fn detects(kind: MediaKind, source: Source) -> bool {
    kind == MediaKind::Audio && source == Source::Microphone
}
