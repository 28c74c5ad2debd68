//! One call across a node's media workers.
//!
//! A call's sessions go to its home worker (by hash) until it has
//! `spread_calls_above` of them; later ones go to the worker with the
//! fewest sessions, so one large call uses every core. Each worker owns its
//! own peers' `Rtc`s; what crosses workers is what the relay would carry
//! between edges, and it enters each core the same way: a track published
//! on one worker is a *remote track* (a key ≥ [`MESH_KEY_BASE`]) on every
//! other worker of its call, fed whole frames of the layers that worker's
//! subscribers want over a bounded channel (full: the frame is dropped and
//! video waits for the next keyframe, as after a relay gap). Keyframe
//! requests, layer demand, mute and data messages go the other way.
//!
//! The relay link stays one per node and hears of each call from one
//! worker (its *relay home*): tracks of other edges arrive there and that
//! worker exports them to the others like its own.
//!
//! [`Spread`] is the bookkeeping, plain data behind one lock that only
//! signaling and track or call changes take, never a forwarded packet.
//! Each worker keeps its own export table ([`Exports`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use str0m::media::MediaKind;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::relay_client::CallData;
use sfu::{RelayPacket, RemotePacket, Source, TrackId};

/// Keys of tracks from other workers start here; the relay's keys stay
/// below it.
pub const MESH_KEY_BASE: u32 = 0x8000_0000;

/// Whether a remote-track key names another worker's track (else the
/// relay's).
pub fn is_mesh_key(key: u32) -> bool {
    key >= MESH_KEY_BASE
}

/// What one worker asks of another (control: never dropped).
#[derive(Debug, Clone)]
pub enum MeshCommand {
    /// A track of another worker joins a call here under `key`.
    Add(MeshTrack),
    /// That track ended.
    Remove(u32),
    /// Its publisher muted or unmuted it.
    Muted {
        /// The track's key.
        key: u32,
        /// Muted or not.
        muted: bool,
    },
    /// Worker `to` wants `layers` (bit per layer; 0: nothing) of this
    /// worker's `track`, which it knows as `key`.
    Layers {
        /// The track here.
        track: TrackId,
        /// The worker that wants it.
        to: usize,
        /// Its key there.
        key: u32,
        /// Bit per layer.
        layers: u8,
    },
    /// A subscriber on another worker needs a keyframe of `track`.
    Keyframe(TrackId),
    /// A data message of a participant on another worker.
    Data(CallData),
}

/// Frames of another worker's track (bounded: dropped when full).
#[derive(Debug)]
pub struct MeshFrame {
    /// The track's key here.
    pub key: u32,
    /// A whole frame of one layer, in order.
    pub packets: Vec<RemotePacket>,
    /// Frames were dropped before this one (video: it is a keyframe).
    pub after_gap: bool,
}

/// A track as the other workers of its call learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTrack {
    /// Its key on every other worker.
    pub key: u32,
    /// The worker it lives on.
    pub origin: usize,
    /// Its id there.
    pub track: TrackId,
    /// The call.
    pub call: Uuid,
    /// Audio or video.
    pub kind: MediaKind,
    /// What it carries.
    pub source: Source,
    /// The publisher.
    pub user: Uuid,
    /// Their device.
    pub device: String,
    /// Simulcast layers (1: none).
    pub layers: u8,
    /// Muted by its publisher.
    pub muted: bool,
}

impl MeshTrack {
    /// A track of `call`, before [`Spread::track_added`] gives it its key
    /// and origin.
    pub fn new(
        call: Uuid,
        kind: MediaKind,
        source: Source,
        user: Uuid,
        device: String,
        layers: u8,
    ) -> Self {
        MeshTrack {
            key: 0,
            origin: 0,
            track: 0,
            call,
            kind,
            source,
            user,
            device,
            layers,
            muted: false,
        }
    }
}

/// One call's spread over the workers.
#[derive(Debug, Default)]
struct CallSpread {
    /// Sessions placed on each worker.
    placed: Vec<usize>,
    /// Whether each worker's core has the call (a participant there).
    active: Vec<bool>,
    /// The worker the relay link hears of this call from.
    relay_home: Option<usize>,
}

/// What a worker does when its core went idle for a call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Idle {
    /// It was the call's relay home: the relay hears the call went idle.
    pub was_relay_home: bool,
    /// Another worker still has the call and is its relay home now (the
    /// relay hears the call is active there).
    pub new_relay_home: Option<usize>,
    /// Tracks it imported: tell each origin worker it wants none of them.
    pub unsubscribe: Vec<(usize, TrackId, u32)>,
    /// Tracks it exported (relay tracks its core dropped with the call):
    /// key, id here, and the workers that remove them.
    pub removed: Vec<(u32, TrackId, Vec<usize>)>,
}

/// Why a session was not placed.
#[derive(Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// The call has `max` sessions on this node.
    CallFull(usize),
}

/// The node's bookkeeping of calls across workers (sans-IO).
#[derive(Debug)]
pub struct Spread {
    workers: usize,
    spread_above: usize,
    max_per_call: usize,
    calls: HashMap<Uuid, CallSpread>,
    /// Sessions placed on each worker, every call.
    load: Vec<usize>,
    /// Where each live session was placed, and by how many placements (a
    /// session that reconnects holds two for a moment).
    sessions: HashMap<Uuid, (usize, usize)>,
    tracks: HashMap<u32, MeshTrack>,
    keys: HashMap<(usize, TrackId), u32>,
    next_key: u32,
}

impl Spread {
    /// Bookkeeping for `workers` workers: a call spreads past
    /// `spread_above` sessions on its home worker, and takes at most
    /// `max_per_call` on the node.
    pub fn new(workers: usize, spread_above: usize, max_per_call: usize) -> Self {
        Spread {
            workers: workers.max(1),
            spread_above: spread_above.max(1),
            max_per_call,
            calls: HashMap::new(),
            load: vec![0; workers.max(1)],
            sessions: HashMap::new(),
            tracks: HashMap::new(),
            keys: HashMap::new(),
            next_key: MESH_KEY_BASE,
        }
    }

    fn call(&mut self, call: Uuid) -> &mut CallSpread {
        let workers = self.workers;
        self.calls.entry(call).or_insert_with(|| CallSpread {
            placed: vec![0; workers],
            active: vec![false; workers],
            relay_home: None,
        })
    }

    /// Picks the worker of a new session of `call` whose home is `home`:
    /// the one its session already has (a reconnect replaces its old peer
    /// there), else home until the call has `spread_above` sessions there,
    /// else the least loaded worker (home on a tie).
    pub fn place(&mut self, call: Uuid, session: Uuid, home: usize) -> Result<usize, PlaceError> {
        let home = home.min(self.workers - 1);
        let worker = if let Some((worker, _)) = self.sessions.get(&session) {
            *worker
        } else {
            let (max, spread_above) = (self.max_per_call, self.spread_above);
            let least_loaded = (0..self.load.len())
                .min_by_key(|w| (self.load[*w], *w != home))
                .unwrap_or(home);
            let spread = self.call(call);
            if spread.placed.iter().sum::<usize>() >= max {
                return Err(PlaceError::CallFull(max));
            }
            if spread.placed[home] < spread_above {
                home
            } else {
                least_loaded
            }
        };
        self.call(call).placed[worker] += 1;
        self.load[worker] += 1;
        self.sessions.entry(session).or_insert((worker, 0)).1 += 1;
        Ok(worker)
    }

    /// A placed session ended.
    pub fn unplace(&mut self, call: Uuid, session: Uuid, worker: usize) {
        if let Some(spread) = self.calls.get_mut(&call) {
            spread.placed[worker] = spread.placed[worker].saturating_sub(1);
        }
        self.load[worker] = self.load[worker].saturating_sub(1);
        if let Some(entry) = self.sessions.get_mut(&session) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.sessions.remove(&session);
            }
        }
        self.forget_if_empty(call);
    }

    fn forget_if_empty(&mut self, call: Uuid) {
        if let Some(spread) = self.calls.get(&call)
            && spread.placed.iter().all(|n| *n == 0)
            && !spread.active.iter().any(|a| *a)
        {
            self.calls.remove(&call);
        }
    }

    /// The workers whose cores have `call`, but `except`.
    pub fn others(&self, call: Uuid, except: usize) -> Vec<usize> {
        self.calls.get(&call).map_or_else(Vec::new, |s| {
            (0..self.workers)
                .filter(|w| *w != except && s.active[*w])
                .collect()
        })
    }

    /// `worker`'s core has its first participant of `call`. Returns
    /// whether the relay must hear of the call from it (no other worker
    /// has the call) and the tracks of the call on other workers, which it
    /// adds as remote tracks.
    pub fn call_active(&mut self, worker: usize, call: Uuid) -> (bool, Vec<MeshTrack>) {
        let spread = self.call(call);
        spread.active[worker] = true;
        let relay = spread.relay_home.is_none();
        if relay {
            spread.relay_home = Some(worker);
        }
        let imports = self
            .tracks
            .values()
            .filter(|r| r.call == call && r.origin != worker)
            .cloned()
            .collect();
        (relay, imports)
    }

    /// `worker`'s core has no participant of `call` left.
    pub fn call_idle(&mut self, worker: usize, call: Uuid) -> Idle {
        let Some(spread) = self.calls.get_mut(&call) else {
            return Idle::default();
        };
        spread.active[worker] = false;
        let mut idle = Idle::default();
        if spread.relay_home == Some(worker) {
            idle.was_relay_home = true;
            spread.relay_home = spread.active.iter().position(|a| *a);
            idle.new_relay_home = spread.relay_home;
        }
        let others = self.others(call, worker);
        for r in self.tracks.values().filter(|r| r.call == call) {
            if r.origin != worker {
                idle.unsubscribe.push((r.origin, r.track, r.key));
            }
        }
        let own: Vec<(u32, TrackId)> = self
            .tracks
            .values()
            .filter(|r| r.call == call && r.origin == worker)
            .map(|r| (r.key, r.track))
            .collect();
        for (key, track) in own {
            self.tracks.remove(&key);
            self.keys.remove(&(worker, track));
            idle.removed.push((key, track, others.clone()));
        }
        self.forget_if_empty(call);
        idle
    }

    /// A track of `worker` (its own participant's, or the relay's) joined
    /// `call`: its key, and the workers that add it.
    pub fn track_added(
        &mut self,
        worker: usize,
        track: TrackId,
        mut announce: MeshTrack,
    ) -> (MeshTrack, Vec<usize>) {
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1).max(MESH_KEY_BASE);
        announce.key = key;
        announce.origin = worker;
        announce.track = track;
        self.tracks.insert(key, announce.clone());
        self.keys.insert((worker, track), key);
        let others = self.others(announce.call, worker);
        (announce, others)
    }

    /// A track of `worker` ended: its key and the workers that remove it.
    pub fn track_ended(&mut self, worker: usize, track: TrackId) -> Option<(u32, Vec<usize>)> {
        let key = self.keys.remove(&(worker, track))?;
        let r = self.tracks.remove(&key)?;
        Some((key, self.others(r.call, worker)))
    }

    /// A track of `worker` was muted or unmuted: its key and the workers
    /// that hear it.
    pub fn track_muted(
        &mut self,
        worker: usize,
        track: TrackId,
        muted: bool,
    ) -> Option<(u32, Vec<usize>)> {
        let key = *self.keys.get(&(worker, track))?;
        let r = self.tracks.get_mut(&key)?;
        r.muted = muted;
        let call = r.call;
        Some((key, self.others(call, worker)))
    }

    /// Where the track of `key` lives: its worker and its id there.
    pub fn origin(&self, key: u32) -> Option<(usize, TrackId)> {
        self.tracks.get(&key).map(|r| (r.origin, r.track))
    }
}

/// The node's workers' mesh: the bookkeeping and every worker's channels.
pub struct Mesh {
    spread: Mutex<Spread>,
    control: Vec<mpsc::UnboundedSender<MeshCommand>>,
    frames: Vec<mpsc::Sender<MeshFrame>>,
}

impl Mesh {
    /// A mesh over workers with these channels (index = worker).
    pub fn new(
        spread: Spread,
        control: Vec<mpsc::UnboundedSender<MeshCommand>>,
        frames: Vec<mpsc::Sender<MeshFrame>>,
    ) -> Self {
        Mesh {
            spread: Mutex::new(spread),
            control,
            frames,
        }
    }

    /// The bookkeeping, locked (never held across an await).
    pub fn spread(&self) -> MutexGuard<'_, Spread> {
        self.spread.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a control command to a worker (lost only if it stopped).
    pub fn tell(&self, worker: usize, command: MeshCommand) {
        if let Some(tx) = self.control.get(worker) {
            let _ = tx.send(command);
        }
    }

    /// Sends a control command to each of `workers`.
    pub fn tell_all(&self, workers: &[usize], command: &MeshCommand) {
        for worker in workers {
            self.tell(*worker, command.clone());
        }
    }

    /// Worker `to` wants `layers` of `track` on worker `origin`, which it
    /// knows as `key` (0: none of them).
    pub fn want(&self, origin: usize, track: TrackId, to: usize, key: u32, layers: u8) {
        self.tell(
            origin,
            MeshCommand::Layers {
                track,
                to,
                key,
                layers,
            },
        );
    }

    /// A data message for the other workers of its call than `from`.
    pub fn share_data(&self, from: usize, data: &CallData) {
        // The lock is let go before the sends.
        let others = self.spread().others(data.call, from);
        self.tell_all(&others, &MeshCommand::Data(data.clone()));
    }

    /// Offers a frame to a worker; false when its queue is full.
    pub fn offer(&self, worker: usize, frame: MeshFrame) -> bool {
        self.frames
            .get(worker)
            .is_some_and(|tx| match tx.try_send(frame) {
                Ok(()) => true,
                // A stopped worker wants nothing: not a gap.
                Err(mpsc::error::TrySendError::Closed(_)) => true,
                Err(mpsc::error::TrySendError::Full(_)) => false,
            })
    }
}

/// A session's place on a worker; dropping it (the session ended) frees
/// the place.
pub struct Placement {
    mesh: Arc<Mesh>,
    call: Uuid,
    session: Uuid,
    /// The worker.
    pub worker: usize,
}

impl Placement {
    /// Places a session of `call` (see [`Spread::place`]).
    pub fn new(
        mesh: &Arc<Mesh>,
        call: Uuid,
        session: Uuid,
        home: usize,
    ) -> Result<Self, PlaceError> {
        let worker = mesh.spread().place(call, session, home)?;
        Ok(Placement {
            mesh: mesh.clone(),
            call,
            session,
            worker,
        })
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.mesh
            .spread()
            .unplace(self.call, self.session, self.worker);
    }
}

/// What one worker sends other workers of its tracks: per track, who
/// wants which layers, and the frame being gathered for each.
#[derive(Default)]
pub struct Exports {
    tracks: HashMap<TrackId, Vec<Export>>,
}

struct Export {
    to: usize,
    key: u32,
    layers: u8,
    /// The frame being gathered, per layer.
    pending: Vec<(u8, Vec<RemotePacket>)>,
    /// A frame of a layer was dropped (bit per layer): the next one that
    /// goes says so, and video waits for a keyframe first.
    gap: u8,
}

/// What [`Exports::packet`] found to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Frames handed to another worker.
    pub sent: usize,
    /// Frames were dropped at a full queue.
    pub dropped: usize,
    /// A video layer lost a frame and waits for a keyframe: ask the
    /// publisher.
    pub keyframe_needed: bool,
}

impl Exports {
    /// Worker `to` now wants `layers` of `track` (under `key` there).
    /// Returns every worker's layers together, for
    /// [`sfu::Sfu::set_export_layers`].
    pub fn set(&mut self, track: TrackId, to: usize, key: u32, layers: u8) -> u8 {
        let list = self.tracks.entry(track).or_default();
        match list.iter_mut().position(|e| e.to == to) {
            Some(i) if layers == 0 => {
                list.swap_remove(i);
            }
            Some(i) => {
                list[i].key = key;
                list[i].layers = layers;
            }
            None if layers == 0 => {}
            None => list.push(Export {
                to,
                key,
                layers,
                pending: Vec::new(),
                gap: 0,
            }),
        }
        let union = list.iter().fold(0, |all, e| all | e.layers);
        if list.is_empty() {
            self.tracks.remove(&track);
        }
        union
    }

    /// The track ended: nobody gets more of it.
    pub fn forget(&mut self, track: TrackId) {
        self.tracks.remove(&track);
    }

    /// A packet of an exported track: gathered into its frame for each
    /// worker that wants its layer, the frame offered when complete.
    pub fn packet(&mut self, mesh: &Mesh, packet: RelayPacket) -> Exported {
        let mut done = Exported::default();
        let Some(list) = self.tracks.get_mut(&packet.track) else {
            return done;
        };
        let bit = 1u8 << packet.layer.min(7);
        for e in list.iter_mut().filter(|e| e.layers & bit != 0) {
            // After a drop, video resumes on a keyframe's first packet.
            if packet.video && e.gap & bit != 0 && !(packet.keyframe && packet.frame_start) {
                continue;
            }
            let slot = match e.pending.iter().position(|(l, _)| *l == packet.layer) {
                Some(i) => i,
                None => {
                    e.pending.push((packet.layer, Vec::new()));
                    e.pending.len() - 1
                }
            };
            let frame = &mut e.pending[slot].1;
            if packet.frame_start {
                // A frame whose end never came (its last packet was lost
                // upstream) goes no further.
                frame.clear();
            }
            frame.push(RemotePacket {
                layer: packet.layer,
                seq: packet.seq,
                time: packet.time,
                marker: packet.frame_end,
                audio_level: packet.audio_level,
                payload: packet.payload.clone(),
            });
            if !packet.frame_end {
                continue;
            }
            let frame = MeshFrame {
                key: e.key,
                packets: std::mem::take(frame),
                after_gap: e.gap & bit != 0,
            };
            if mesh.offer(e.to, frame) {
                done.sent += 1;
                e.gap &= !bit;
            } else {
                done.dropped += 1;
                e.gap |= bit;
                done.keyframe_needed |= packet.video;
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(call: Uuid) -> MeshTrack {
        let camera = Source::default_for(MediaKind::Video);
        MeshTrack::new(call, MediaKind::Video, camera, Uuid::nil(), "d".into(), 1)
    }

    #[test]
    fn a_call_stays_home_until_it_spreads_to_the_least_loaded_worker() {
        let mut spread = Spread::new(3, 2, 10);
        let call = Uuid::now_v7();
        let other = Uuid::now_v7();
        // Another call loads worker 1.
        assert_eq!(spread.place(other, Uuid::now_v7(), 1), Ok(1));
        let placed: Vec<usize> = (0..5)
            .map(|_| spread.place(call, Uuid::now_v7(), 0).unwrap())
            .collect();
        // Two at home, then the least loaded: 2 (empty), then 1 and 2 at
        // one each (the lower index first), then 2.
        assert_eq!(placed, vec![0, 0, 2, 1, 2]);
    }

    #[test]
    fn a_reconnecting_session_goes_where_it_was_and_the_call_limit_holds() {
        let mut spread = Spread::new(2, 1, 2);
        let call = Uuid::now_v7();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(spread.place(call, a, 0), Ok(0));
        assert_eq!(spread.place(call, b, 0), Ok(1));
        assert_eq!(
            spread.place(call, Uuid::now_v7(), 0),
            Err(PlaceError::CallFull(2))
        );
        // b reconnects: same worker, even though the call is full.
        assert_eq!(spread.place(call, b, 0), Ok(1));
        spread.unplace(call, b, 1);
        spread.unplace(call, b, 1);
        spread.unplace(call, a, 0);
        assert!(spread.calls.is_empty(), "nothing left of the call");
        assert!(spread.sessions.is_empty());
        assert_eq!(spread.load, vec![0, 0]);
    }

    #[test]
    fn tracks_reach_the_workers_of_their_call_whenever_they_join() {
        let mut spread = Spread::new(3, 1, 10);
        let call = Uuid::now_v7();
        assert_eq!(spread.call_active(0, call), (true, Vec::new()));
        let (t, to) = spread.track_added(0, 7, announce(call));
        assert!(is_mesh_key(t.key));
        assert!(to.is_empty(), "no other worker has the call yet");
        let (relay, imports) = spread.call_active(2, call);
        assert!(!relay, "the relay hears of the call from worker 0 only");
        assert_eq!(imports, vec![t.clone()]);
        assert_eq!(spread.origin(t.key), Some((0, 7)));
        assert_eq!(spread.track_muted(0, 7, true), Some((t.key, vec![2])));
        // Worker 0 goes idle: worker 2 is the relay home, its import goes.
        let idle = spread.call_idle(0, call);
        assert!(idle.was_relay_home);
        assert_eq!(idle.new_relay_home, Some(2));
        assert_eq!(idle.removed, vec![(t.key, 7, vec![2])]);
        assert_eq!(spread.origin(t.key), None);
        let idle = spread.call_idle(2, call);
        assert_eq!(idle.new_relay_home, None);
        assert!(spread.calls.is_empty());
    }

    fn packet(layer: u8, seq: u64, start: bool, end: bool, key: bool) -> RelayPacket {
        RelayPacket {
            track: 7,
            alias: 0,
            video: true,
            layer,
            seq,
            time: seq as u32,
            frame_end: end,
            frame_start: start,
            keyframe: key && start,
            audio_level: None,
            payload: Arc::from(&b"x"[..]),
        }
    }

    #[test]
    fn exports_send_whole_frames_and_resume_on_a_keyframe_after_a_full_queue() {
        let (frames_tx, mut frames_rx) = mpsc::channel(1);
        let (control_tx, _control_rx) = mpsc::unbounded_channel();
        let mesh = Mesh::new(
            Spread::new(2, 1, 10),
            vec![control_tx.clone(), control_tx],
            vec![frames_tx.clone(), frames_tx],
        );
        let mut exports = Exports::default();
        assert_eq!(exports.set(7, 1, MESH_KEY_BASE, 0b01), 0b01);
        // Layer 1 is not wanted.
        exports.packet(&mesh, packet(1, 1, true, true, true));
        exports.packet(&mesh, packet(0, 1, true, false, true));
        assert!(frames_rx.try_recv().is_err(), "half a frame is not sent");
        exports.packet(&mesh, packet(0, 2, false, true, false));
        let frame = frames_rx.try_recv().unwrap();
        assert_eq!(frame.packets.len(), 2);
        assert!(!frame.after_gap);
        // The queue (one place) fills: the next frame is dropped.
        exports.packet(&mesh, packet(0, 3, true, true, false));
        let dropped = exports.packet(&mesh, packet(0, 4, true, true, false));
        assert_eq!(
            dropped,
            Exported {
                sent: 0,
                dropped: 1,
                keyframe_needed: true
            }
        );
        frames_rx.try_recv().unwrap();
        // A delta frame after the drop waits; the keyframe goes, flagged.
        exports.packet(&mesh, packet(0, 5, true, true, false));
        assert!(frames_rx.try_recv().is_err());
        exports.packet(&mesh, packet(0, 6, true, true, true));
        let frame = frames_rx.try_recv().unwrap();
        assert!(frame.after_gap);
        assert_eq!(frame.packets[0].seq, 6);
        // Nobody wants it any more.
        assert_eq!(exports.set(7, 1, MESH_KEY_BASE, 0), 0);
        exports.packet(&mesh, packet(0, 7, true, true, true));
        assert!(frames_rx.try_recv().is_err());
    }
}
