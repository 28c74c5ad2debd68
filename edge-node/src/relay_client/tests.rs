//! The edge's relay client on a virtual clock: worker events, relay
//! control messages and datagrams go in, and what comes out is recorded
//! (control messages for the relay, commands for workers, NACK answers).

use super::*;

const NODE: &str = "eu-edge-1";

/// A client and what it asked for, in order.
struct Harness {
    client: RelayClient,
    now: Instant,
    control: Vec<Control>,
    worker: Vec<(usize, RelayCommand)>,
    resent: Vec<(u32, Vec<u16>)>,
    forgotten: Vec<u32>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            client: RelayClient::new(NODE),
            now: Instant::now(),
            control: Vec::new(),
            worker: Vec::new(),
            resent: Vec::new(),
            forgotten: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::Control(message) => self.control.push(message),
                ClientOutput::Worker(worker, command) => self.worker.push((worker, command)),
                ClientOutput::Resend { alias, sequences } => self.resent.push((alias, sequences)),
                ClientOutput::Forget(alias) => self.forgotten.push(alias),
            }
        }
    }

    fn event(&mut self, event: RelayEvent) {
        self.client.handle_event(self.now, event);
        self.drain();
    }

    fn relay_says(&mut self, message: Control) {
        self.client.handle_control(self.now, message);
        self.drain();
    }

    fn up(&mut self) {
        self.client.connected(self.now);
        self.drain();
    }

    fn down(&mut self) {
        self.client.disconnected(self.now);
        self.drain();
    }

    /// A media datagram from the relay: packet `seq` of a frame at `time`.
    fn datagram(&mut self, alias: u32, seq: u16, time: u32, flags: u8, marker: bool) {
        let mut d = Vec::new();
        MediaHeader {
            alias,
            layer: 0,
            flags,
        }
        .encode(&mut d);
        RtpHeader {
            payload_type: 96,
            marker,
            sequence: seq,
            timestamp: time,
            ssrc: alias,
            audio_level: None,
        }
        .encode(&mut d);
        d.extend_from_slice(&seq.to_be_bytes());
        self.client.handle_datagram(self.now, &d);
        self.drain();
    }

    /// Time passes, in ticks.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now += TICK;
            self.client.handle_timeout(self.now);
        }
        self.drain();
    }

    fn take_control(&mut self) -> Vec<Control> {
        std::mem::take(&mut self.control)
    }

    fn take_worker(&mut self) -> Vec<(usize, RelayCommand)> {
        std::mem::take(&mut self.worker)
    }

    /// The frames handed to workers: (key, first seq, packets, after a gap).
    fn frames(&mut self) -> Vec<(u32, u16, usize, bool)> {
        self.take_worker()
            .into_iter()
            .filter_map(|(_, c)| match c {
                RelayCommand::RemoteFrame {
                    key,
                    packets,
                    after_gap,
                    // The sequence number as sent (the reassembler extends it).
                } => Some((key, packets[0].seq as u16, packets.len(), after_gap)),
                _ => None,
            })
            .collect()
    }
}

fn call() -> Uuid {
    Uuid::from_u128(42)
}

fn published(track: TrackId) -> RelayEvent {
    RelayEvent::TrackPublished {
        worker: 1,
        track,
        call: call(),
        kind: MediaKind::Video,
        source: sfu::Source::Camera,
        codec: str0m::format::Codec::Vp8,
        user: Uuid::from_u128(7),
        device: "laptop".into(),
        layers: 3,
    }
}

fn remote(track: &str, alias: u32, origin: &str) -> Control {
    remote_with_layers(track, alias, origin, 1)
}

fn remote_with_layers(track: &str, alias: u32, origin: &str, layers: u8) -> Control {
    Control::Announce(Announce {
        call: call(),
        track: track.into(),
        alias,
        kind: Kind::Video,
        codec: "VP8".into(),
        origin: origin.into(),
        user: Uuid::from_u128(8),
        device: "phone".into(),
        muted: false,
        layers,
        source: Source::Camera,
    })
}

/// A harness with a call on worker 1, linked, and the relay's announcement
/// of remote video `us-edge:5` (alias 70) with `layers` simulcast layers:
/// returns the track's key.
fn with_remote_video(h: &mut Harness, layers: u8) -> u32 {
    h.up();
    h.event(RelayEvent::CallActive {
        worker: 1,
        call: call(),
    });
    h.relay_says(remote_with_layers("us-edge:5", 70, "us-edge", layers));
    let key = h
        .take_worker()
        .iter()
        .find_map(|(w, c)| match c {
            RelayCommand::AddRemoteTrack { key, .. } if *w == 1 => Some(*key),
            _ => None,
        })
        .expect("the worker gets the remote track");
    h.take_control();
    key
}

#[test]
fn the_desired_state_is_replayed_on_every_new_link() {
    let mut h = Harness::new();
    // Before any link: remembered, nothing sent.
    h.event(RelayEvent::CallActive {
        worker: 1,
        call: call(),
    });
    h.event(published(3));
    assert!(h.control.is_empty());
    h.up();
    let sent = h.take_control();
    assert!(matches!(&sent[0], Control::Interest { call: c, interested: true } if *c == call()));
    let Control::Announce(announce) = &sent[1] else {
        panic!("announced: {sent:?}");
    };
    assert_eq!(announce.track, format!("{NODE}:1"));
    assert_eq!((announce.layers, announce.codec.as_str()), (3, "VP8"));
    // Nothing flows until the relay subscribes.
    assert!(h.take_worker().iter().any(|(w, c)| *w == 1
        && matches!(
            c,
            RelayCommand::Subscribed {
                track: 3,
                alias: None,
                ..
            }
        )));
    h.relay_says(Control::Subscribe {
        track: announce.track.clone(),
        layers: 0b001,
    });
    assert!(h.take_worker().iter().any(|(_, c)| matches!(
        c,
        RelayCommand::Subscribed {
            track: 3,
            alias: Some(1),
            layers: 0b001
        }
    )));
    // The link drops and comes back: the same interest and announcement.
    h.down();
    h.event(RelayEvent::TrackMuted {
        worker: 1,
        track: 3,
        muted: true,
    });
    assert!(h.control.is_empty(), "nothing sent while down");
    h.up();
    let again = h.take_control();
    assert_eq!(again.len(), 2, "{again:?}");
    let Control::Announce(replayed) = &again[1] else {
        panic!("{again:?}");
    };
    assert_eq!(replayed.track, announce.track);
    assert!(replayed.muted, "with the state it has now");
    // The track ends: unannounced, its history forgotten.
    h.event(RelayEvent::TrackEnded {
        worker: 1,
        track: 3,
    });
    assert!(
        matches!(&h.take_control()[..], [Control::Unannounce { track }] if *track == announce.track)
    );
    assert_eq!(h.forgotten, vec![1]);
}

#[test]
fn remote_frames_come_in_order_gaps_are_nacked_then_given_up_for_a_keyframe() {
    let mut h = Harness::new();
    h.up();
    h.event(RelayEvent::CallActive {
        worker: 1,
        call: call(),
    });
    h.relay_says(remote("us-edge:5", 70, "us-edge"));
    let sent = h.take_control();
    assert!(
        sent.iter()
            .any(|c| matches!(c, Control::Subscribe { track, layers: 1 } if track == "us-edge:5"))
    );
    assert!(
        sent.iter()
            .any(|c| matches!(c, Control::KeyframeRequest { track } if track == "us-edge:5"))
    );
    let key = h
        .take_worker()
        .iter()
        .find_map(|(_, c)| match c {
            RelayCommand::AddRemoteTrack { key, layers: 1, .. } => Some(*key),
            _ => None,
        })
        .unwrap();
    let (start, keyframe) = (MediaHeader::FRAME_START, MediaHeader::KEYFRAME);
    // A keyframe in two packets: one frame.
    h.datagram(70, 100, 0, start | keyframe, false);
    h.datagram(70, 101, 0, keyframe, true);
    assert_eq!(h.frames(), vec![(key, 100, 2, false)]);
    // A packet lost: NACKed, and the frame waits for it.
    h.datagram(70, 102, 3000, start, false);
    h.datagram(70, 104, 3000, 0, true);
    assert!(
        matches!(&h.take_control()[..], [Control::Nack { sequences, .. }] if *sequences == vec![103])
    );
    assert!(h.frames().is_empty());
    h.datagram(70, 103, 3000, 0, false);
    assert_eq!(h.frames(), vec![(key, 102, 3, false)]);
    assert_eq!(h.client.stats().recovered, 1);
    // Lost for good: NACKed again, given up, and a keyframe asked for;
    // deltas after it are held back until the keyframe comes.
    h.datagram(70, 105, 6000, start, false);
    h.datagram(70, 107, 6000, 0, true);
    h.datagram(70, 108, 9000, start, true);
    h.advance(Duration::from_millis(500));
    let sent = h.take_control();
    let nacks = sent
        .iter()
        .filter(|c| matches!(c, Control::Nack { sequences, .. } if *sequences == vec![106]))
        .count();
    assert_eq!(nacks, 2, "asked, and asked again: {sent:?}");
    assert!(
        sent.iter()
            .any(|c| matches!(c, Control::KeyframeRequest { .. }))
    );
    assert_eq!(h.client.stats().frame_gaps, 1);
    assert!(h.frames().is_empty(), "no delta after the gap");
    h.datagram(70, 109, 12_000, start | keyframe, true);
    assert_eq!(
        h.frames(),
        vec![(key, 109, 1, true)],
        "the keyframe, marked"
    );
}

#[test]
fn remote_tracks_survive_a_short_outage_and_go_after_a_long_one() {
    let mut h = Harness::new();
    let key = with_remote_video(&mut h, 1);
    h.down();
    h.advance(Duration::from_secs(2));
    assert!(h.take_worker().is_empty(), "kept while it may come back");
    // Back, and the relay re-announces it under a new alias: rebound, not
    // added again.
    h.up();
    h.take_control();
    h.relay_says(remote("us-edge:5", 71, "us-edge"));
    let commands = h.take_worker();
    assert!(
        !commands
            .iter()
            .any(|(_, c)| matches!(c, RelayCommand::AddRemoteTrack { .. })),
        "{commands:?}"
    );
    h.datagram(
        71,
        5,
        0,
        MediaHeader::FRAME_START | MediaHeader::KEYFRAME,
        true,
    );
    assert_eq!(h.frames(), vec![(key, 5, 1, false)]);
    // Down for longer than STALE_AFTER: it leaves the sessions.
    h.down();
    h.advance(STALE_AFTER + Duration::from_millis(100));
    assert!(
        h.take_worker()
            .iter()
            .any(|(w, c)| *w == 1 && matches!(c, RelayCommand::RemoveRemoteTrack(k) if *k == key))
    );
    assert_eq!(h.client.remote_tracks(), 0);
}

#[test]
fn layers_data_nacks_and_bad_datagrams_go_where_they_belong() {
    let mut h = Harness::new();
    let key = with_remote_video(&mut h, 3);
    // The sessions need fewer layers: subscribed anew, once.
    h.event(RelayEvent::RemoteLayers { key, layers: 0b001 });
    h.event(RelayEvent::RemoteLayers { key, layers: 0b001 });
    assert!(matches!(
        &h.take_control()[..],
        [Control::Subscribe { layers: 0b001, .. }]
    ));
    // Data: out for a call we are in, not for another; in to its worker.
    let data = |call: Uuid| {
        RelayEvent::Data(CallData {
            call,
            user: Uuid::from_u128(7),
            device: "laptop".into(),
            binary: false,
            payload: b"hand".to_vec(),
        })
    };
    h.event(data(call()));
    h.event(data(Uuid::from_u128(99)));
    assert!(matches!(&h.take_control()[..], [Control::Data { payload, .. }] if payload == b"hand"));
    h.relay_says(Control::Data {
        call: call(),
        user: Uuid::from_u128(8),
        device: "phone".into(),
        binary: false,
        payload: b"hi".to_vec(),
    });
    assert!(
        h.take_worker()
            .iter()
            .any(|(w, c)| *w == 1 && matches!(c, RelayCommand::Data(d) if d.payload == b"hi"))
    );
    // The relay lost packets of a local track: answered from the history.
    h.event(published(4));
    let track = match &h.take_control()[..] {
        [Control::Announce(a)] => a.track.clone(),
        other => panic!("{other:?}"),
    };
    h.relay_says(Control::Nack {
        track,
        sequences: vec![1, 2],
    });
    assert_eq!(h.resent, vec![(1, vec![1, 2])]);
    // Our own track echoed back is never received.
    h.relay_says(remote(&format!("{NODE}:1"), 80, NODE));
    assert!(h.take_worker().is_empty());
    // Garbage and unknown aliases are counted, never forwarded.
    h.client.handle_datagram(h.now, &[3, 1, 2]);
    h.datagram(999, 1, 0, MediaHeader::FRAME_START, true);
    assert_eq!(h.client.stats().malformed, 1);
    assert_eq!(h.client.stats().unknown_track, 1);
    assert!(h.frames().is_empty());
}
