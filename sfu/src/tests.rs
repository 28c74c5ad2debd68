//! The SFU core with str0m clients in one process, on a virtual clock:
//! datagrams go straight from one side's output to the other's input.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::Receive;
use str0m::{Candidate, Event, Input, Rtc};
use uuid::Uuid;

use super::*;
use crate::synthetic::{
    check_frame, check_h264_frame, h264_frame, simulcast_send, vp8_frame, vp8_frame_sized,
};

const EDGE: &str = "10.0.0.1:5000";
const FRAME: Duration = Duration::from_millis(33);

/// A received frame: the publisher's counter and whether it was a keyframe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    mid: Mid,
    counter: u32,
    keyframe: bool,
    /// Its size: tells a simulcast layer from another.
    len: usize,
}

/// Simulcast layers a publisher may send, and their frame bodies: about
/// 80, 300 and 1,500 kbit/s at 30 frames a second.
const LAYERS: [(&str, usize); 3] = [("q", 300), ("h", 1_200), ("f", 6_000)];

/// Body bytes of a screen frame: about 650 kbit/s at 30 frames a second.
const SCREEN_BODY: usize = 2_500;

/// A one-way bottleneck towards a client: a queue drained at `rate_bps`,
/// dropping what would wait more than [`MAX_QUEUE`].
struct Bottleneck {
    rate_bps: u64,
    /// When the queue is empty again.
    free_at: Instant,
}

/// The longest a datagram waits in a bottleneck before it is dropped.
const MAX_QUEUE: Duration = Duration::from_millis(100);

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    peer: PeerId,
    video: Option<Mid>,
    audio: Option<Mid>,
    connected: bool,
    received: Vec<Frame>,
    corrupt: usize,
    /// Keyframe requests that reached this (publishing) client.
    keyframe_requests: usize,
    /// NACKs this client sent for what it receives (its cumulative count
    /// per m-line, from str0m's ingress stats).
    nacks: std::collections::HashMap<Mid, u64>,
    /// Send a keyframe next (asked for, or the first frame).
    keyframe_due: bool,
    frames_sent: u32,
    track_lists: Vec<Vec<TrackState>>,
    /// Publishes video as three simulcast layers.
    simulcast: bool,
    /// Audio packets received.
    audio_received: usize,
    /// The layer reports it got.
    layers: Vec<(Vec<LayerState>, Option<u64>)>,
    /// A screen track it publishes (sent like its camera).
    screen: Option<Mid>,
    /// Edge offers are kept here unanswered (to make a glare).
    hold_offers: bool,
    held: Vec<String>,
    /// Refusals the edge sent.
    refused: Vec<(&'static str, String)>,
    /// Its data channel, once open, and the messages received on it.
    channel: Option<str0m::channel::ChannelId>,
    data: Vec<Vec<u8>>,
    /// When it was told of a dominant speaker (by device), in order.
    speakers: Vec<(Instant, Option<String>)>,
    /// The audio level its microphone sends (dBov, 0 to -127).
    level: i8,
    /// Dynacast: the encodings it was told to send, when.
    encodings: Vec<(Instant, Vec<String>)>,
}

struct World {
    now: Instant,
    /// Drop every n-th datagram the SFU sends to this address (a lossy link).
    lossy: Option<(SocketAddr, usize)>,
    lossy_count: usize,
    /// An attacker who can forge this client's source address: after each
    /// of its DTLS datagrams it sends a plaintext fatal alert.
    spoof_alerts_from: Option<SocketAddr>,
    sfu: Sfu,
    clients: Vec<Client>,
    call: Uuid,
    /// Events the core reported, in order (tests drain what they check).
    events: Vec<SfuEvent>,
    /// Packets the core gave the relay.
    relay: Vec<RelayPacket>,
    exported: Vec<RelayPacket>,
    /// Bottlenecks towards clients, by their address.
    bottlenecks: std::collections::HashMap<SocketAddr, Bottleneck>,
    /// Datagrams in flight through a bottleneck: when they arrive.
    in_flight: Vec<(Instant, Transmit)>,
    /// Data messages the core handed out.
    data: Vec<DataMessage>,
    /// The call's video codec (what clients offer and send).
    video_codec: Codec,
    /// A codec the next client offers instead (a client that lacks the
    /// call's).
    client_codec: Option<Codec>,
    /// The session id the next client's join token carries (else a new one).
    next_session: Option<Uuid>,
}

impl World {
    fn new(config: SfuConfig) -> Self {
        str0m::crypto::from_feature_flags().install_process_default();
        let now = Instant::now();
        World {
            now,
            lossy: None,
            lossy_count: 0,
            spoof_alerts_from: None,
            sfu: Sfu::new(config, EDGE.parse().unwrap(), now),
            clients: Vec::new(),
            call: Uuid::now_v7(),
            events: Vec::new(),
            relay: Vec::new(),
            exported: Vec::new(),
            bottlenecks: Default::default(),
            in_flight: Vec::new(),
            data: Vec::new(),
            video_codec: Codec::Vp8,
            client_codec: None,
            next_session: None,
        }
    }

    /// A world whose call uses H.264.
    fn h264(config: SfuConfig) -> Self {
        World {
            video_codec: Codec::H264,
            ..World::new(config)
        }
    }

    /// A client joins, publishing video and audio if `publish`, else
    /// offering a data channel only (a pure subscriber).
    fn join(&mut self, publish: bool) -> Result<usize, JoinError> {
        self.join_with(publish, false)
    }

    /// A client joins; a publisher sends `simulcast` video (rids q, h, f).
    fn join_with(&mut self, publish: bool, simulcast: bool) -> Result<usize, JoinError> {
        let index = self.clients.len();
        let addr: SocketAddr = format!("10.0.1.{}:4000", index + 1).parse().unwrap();
        let offers = self.client_codec.unwrap_or(self.video_codec);
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_vp8(offers == Codec::Vp8)
            .enable_h264(offers == Codec::H264)
            .enable_opus(true, false)
            // NACK counts: a subscriber that sees a sequence gap NACKs it.
            .set_stats_interval(Some(Duration::from_millis(500)))
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let layers = simulcast.then(|| simulcast_send(&LAYERS.map(|(rid, _)| rid)));
        let (video, audio) = if publish {
            (
                Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers)),
                Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None)),
            )
        } else {
            api.add_channel("cascade".into());
            (None, None)
        };
        let (offer, pending) = api.apply().unwrap();
        let info = PeerInfo {
            call: self.call,
            user: Uuid::now_v7(),
            device: format!("d{index}"),
            session: self.next_session.take().unwrap_or_else(Uuid::now_v7),
            video_codec: self.video_codec,
        };
        let (peer, answer) = self.sfu.join(self.now, info, &offer.to_sdp_string(), &[])?;
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.clients.push(Client {
            rtc,
            addr,
            peer,
            video,
            audio,
            connected: false,
            received: Vec::new(),
            corrupt: 0,
            keyframe_requests: 0,
            nacks: Default::default(),
            keyframe_due: true,
            frames_sent: 0,
            track_lists: Vec::new(),
            simulcast,
            audio_received: 0,
            layers: Vec::new(),
            screen: None,
            hold_offers: false,
            held: Vec::new(),
            refused: Vec::new(),
            channel: None,
            data: Vec::new(),
            speakers: Vec::new(),
            level: -127,
            encodings: Vec::new(),
        });
        self.pump();
        Ok(index)
    }

    /// Moves datagrams and signaling both ways until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i);
            }
            loop {
                match self.sfu.poll_output() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        moved = true;
                        self.deliver(t);
                    }
                    Output::Signal(peer, signal) => {
                        moved = true;
                        self.signal(peer, signal);
                    }
                    Output::Event(event) => self.events.push(event),
                    Output::Relay(packet) => self.relay.push(packet),
                    Output::Export(packet) => self.exported.push(packet),
                    Output::Data(message) => {
                        // The shell's part: an envelope naming the sender.
                        moved = true;
                        let mut envelope = format!("{}|", message.device).into_bytes();
                        envelope.extend_from_slice(&message.payload);
                        self.sfu.deliver_data(
                            self.now,
                            message.call,
                            Some(message.from),
                            message.binary,
                            &envelope,
                        );
                        self.data.push(message);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// A datagram from the SFU reaches its client (unless the lossy link
    /// drops it), at once or through its bottleneck.
    fn deliver(&mut self, t: Transmit) {
        if let Some(b) = self.bottlenecks.get_mut(&t.destination) {
            let start = b.free_at.max(self.now);
            if start.saturating_duration_since(self.now) > MAX_QUEUE {
                return;
            }
            let bits = (t.contents.len() as u64 + 28) * 8;
            b.free_at = start + Duration::from_micros(bits * 1_000_000 / b.rate_bps.max(1));
            self.in_flight.push((b.free_at, t));
            return;
        }
        self.arrive(t);
    }

    /// Datagrams whose bottleneck has let them through.
    fn release_due(&mut self) {
        let now = self.now;
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.in_flight = waiting;
        for (_, t) in due {
            self.arrive(t);
        }
    }

    /// A datagram reaches its client now.
    fn arrive(&mut self, t: Transmit) {
        if let Some((addr, every)) = self.lossy
            && addr == t.destination
        {
            self.lossy_count += 1;
            if self.lossy_count.is_multiple_of(every) {
                return;
            }
        }
        if let Some(i) = self.clients.iter().position(|c| c.addr == t.destination) {
            let c = &mut self.clients[i];
            let receive = Receive::new(
                str0m::net::Protocol::Udp,
                EDGE.parse().unwrap(),
                c.addr,
                &t.contents,
            )
            .unwrap();
            let _ = c.rtc.handle_input(Input::Receive(self.now, receive));
        }
    }

    /// A signaling message reaches its client, which answers offers.
    fn signal(&mut self, peer: PeerId, signal: Signal) {
        let Some(i) = self.clients.iter().position(|c| c.peer == peer) else {
            return;
        };
        match signal {
            Signal::Offer(sdp) if self.clients[i].hold_offers => self.clients[i].held.push(sdp),
            Signal::Offer(sdp) => {
                let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                let answer = self.clients[i].rtc.sdp_api().accept_offer(offer).unwrap();
                self.drain_client(i);
                self.sfu
                    .handle_answer(self.now, peer, &answer.to_sdp_string())
                    .unwrap();
            }
            Signal::Tracks(tracks) => self.clients[i].track_lists.push(tracks),
            Signal::Layers(layers, estimate) => self.clients[i].layers.push((layers, estimate)),
            Signal::Refused { code, message } => self.clients[i].refused.push((code, message)),
            Signal::Encodings { active, .. } => self.clients[i].encodings.push((self.now, active)),
            Signal::Speakers { dominant, .. } => self.clients[i]
                .speakers
                .push((self.now, dominant.map(|s| s.device))),
        }
    }

    /// Takes the events reported so far.
    fn take_events(&mut self) -> Vec<SfuEvent> {
        std::mem::take(&mut self.events)
    }

    /// NACKs a client has sent so far, over all it receives.
    fn nacks_sent_by(&self, i: usize) -> u64 {
        self.clients[i].nacks.values().sum()
    }

    /// Sends a client's datagrams to the SFU and handles its events.
    fn drain_client(&mut self, i: usize) -> bool {
        let mut moved = false;
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output().unwrap() {
                str0m::Output::Transmit(t) => {
                    moved = true;
                    let (source, contents) = (t.source, t.contents.to_vec());
                    self.sfu.handle_receive(self.now, source, &contents);
                    if self.spoof_alerts_from == Some(source)
                        && contents.first().is_some_and(|b| (20..=63).contains(b))
                    {
                        self.sfu.handle_receive(self.now, source, &SPOOFED_ALERT);
                    }
                }
                str0m::Output::Timeout(_) => return moved,
                str0m::Output::Event(event) => match event {
                    Event::Connected => c.connected = true,
                    Event::ChannelOpen(id, _) => c.channel = Some(id),
                    Event::ChannelData(data) => c.data.push(data.data),
                    Event::MediaData(data) if data.params.spec().codec.is_video() => {
                        let checked = if data.params.spec().codec == Codec::H264 {
                            check_h264_frame(&data.data)
                        } else {
                            check_frame(&data.data)
                        };
                        match checked {
                            Some((counter, keyframe)) => c.received.push(Frame {
                                mid: data.mid,
                                counter,
                                keyframe,
                                len: data.data.len(),
                            }),
                            None => c.corrupt += 1,
                        }
                    }
                    Event::MediaData(_) => c.audio_received += 1,
                    Event::KeyframeRequest(_) => {
                        c.keyframe_requests += 1;
                        c.keyframe_due = true;
                    }
                    Event::MediaIngressStats(stats) => {
                        c.nacks.insert(stats.mid, stats.nacks);
                    }
                    _ => {}
                },
            }
        }
    }

    /// Runs `duration` of virtual time: publishers send a frame every
    /// 33 ms (and 20 ms of Opus), timers fire, datagrams move.
    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        let mut next_frame = self.now;
        while self.now < end {
            if self.now >= next_frame {
                next_frame += FRAME;
                for i in 0..self.clients.len() {
                    self.send_frame(i);
                }
            }
            for c in &mut self.clients {
                let _ = c.rtc.handle_input(Input::Timeout(self.now));
            }
            self.sfu.handle_timeout(self.now);
            self.release_due();
            self.pump();
            self.now += Duration::from_millis(1);
        }
    }

    fn send_frame(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        let (Some(video), Some(audio)) = (c.video, c.audio) else {
            return;
        };
        if !c.connected {
            return;
        }
        let keyframe = std::mem::take(&mut c.keyframe_due);
        let counter = c.frames_sent;
        c.frames_sent += 1;
        let codec = self.video_codec;
        let c = &mut self.clients[i];
        let pt = c
            .rtc
            .writer(video)
            .unwrap()
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .unwrap()
            .pt();
        let time = MediaTime::from_90khz(u64::from(counter) * 3000);
        if c.simulcast {
            for (rid, body) in LAYERS {
                let w = c.rtc.writer(video).unwrap().rid(rid.into());
                w.write(pt, now, time, vp8_frame_sized(counter, keyframe, body))
                    .unwrap();
            }
        } else if codec == Codec::H264 {
            let w = c.rtc.writer(video).unwrap();
            w.write(pt, now, time, h264_frame(counter, keyframe, 2_500))
                .unwrap();
        } else {
            let w = c.rtc.writer(video).unwrap();
            w.write(pt, now, time, vp8_frame(counter, keyframe))
                .unwrap();
        }
        if let Some(screen) = c.screen
            && let Some(w) = c.rtc.writer(screen)
        {
            // The same frames (a receiver tells them apart by mid), of
            // their own size.
            let frame = vp8_frame_sized(counter, keyframe, SCREEN_BODY);
            let _ = w.write(pt, now, time, frame);
        }
        self.drain_client(i);
        let c = &mut self.clients[i];
        let level = c.level;
        let w = c.rtc.writer(audio).unwrap();
        let pt = w
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        w.audio_level(level, level > -50)
            .write(
                pt,
                now,
                MediaTime::new(u64::from(counter) * 1600, Frequency::FORTY_EIGHT_KHZ),
                vec![0xf8, 0xff, 0xfe],
            )
            .unwrap();
        self.drain_client(i);
    }
}

#[test]
fn one_publisher_reaches_five_subscribers_with_every_frame_intact() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    let subscribers: Vec<usize> = (0..5).map(|_| world.join(false).unwrap()).collect();
    world.run(Duration::from_secs(3));
    let sent = world.clients[publisher].frames_sent;
    assert!(sent > 60, "the publisher connected and sent ({sent})");
    assert_eq!(world.sfu.tracks(), 2);
    assert_eq!(world.sfu.subscriptions(), 10, "5 × (video + audio)");
    for &s in &subscribers {
        let c = &world.clients[s];
        assert_eq!(c.corrupt, 0, "payloads arrive byte for byte");
        assert!(
            c.received.first().is_some_and(|f| f.keyframe),
            "starts on a keyframe"
        );
        let counters: Vec<u32> = c.received.iter().map(|f| f.counter).collect();
        let first = counters[0];
        let expected: Vec<u32> = (first..first + counters.len() as u32).collect();
        assert_eq!(counters, expected, "no gaps or reordering after the first");
        assert!(
            counters.len() as u32 + first + 5 >= sent,
            "got {} of {sent}",
            counters.len()
        );
        let tracks = c.track_lists.last().unwrap();
        assert_eq!(tracks.len(), 2, "told whose video and audio it receives");
        assert!(tracks.iter().all(|t| t.device == "d0"));
    }
}

#[test]
fn a_late_joiner_gets_a_keyframe_within_a_second() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    world.join(false).unwrap();
    world.run(Duration::from_secs(2));
    let requests_before = world.clients[publisher].keyframe_requests;
    let late = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    let c = &world.clients[late];
    assert!(
        c.received.first().is_some_and(|f| f.keyframe),
        "{:?}",
        c.received.first()
    );
    assert!(world.clients[publisher].keyframe_requests > requests_before);
}

#[test]
fn leaving_removes_the_tracks_from_the_others() {
    let mut world = World::new(SfuConfig::default());
    let a = world.join(true).unwrap();
    let b = world.join(true).unwrap();
    world.run(Duration::from_secs(2));
    assert!(!world.clients[b].received.is_empty(), "b receives a");
    assert!(!world.clients[a].received.is_empty(), "a receives b");
    assert_eq!(world.sfu.subscriptions(), 4);
    world.sfu.leave(world.now, world.clients[a].peer);
    world.pump();
    let closed = world
        .take_events()
        .into_iter()
        .any(|e| matches!(e, SfuEvent::Closed { peer, .. } if peer == world.clients[a].peer));
    assert!(closed, "the shell hears that the session ended");
    assert_eq!(world.sfu.tracks(), 2);
    assert_eq!(
        world.sfu.subscriptions(),
        0,
        "b's subscriptions to a were removed"
    );
    assert_eq!(world.clients[b].track_lists.last().unwrap().len(), 0);
}

#[test]
fn limits_and_bad_input_are_refused_without_harm() {
    let mut world = World::new(SfuConfig {
        max_participants_per_call: 2,
        ..SfuConfig::default()
    });
    world.join(true).unwrap();
    world.join(false).unwrap();
    assert_eq!(world.join(false).err(), Some(JoinError::CallFull(2)));
    let info = PeerInfo {
        call: Uuid::now_v7(),
        user: Uuid::now_v7(),
        device: "x".into(),
        session: Uuid::now_v7(),
        video_codec: Codec::Vp8,
    };
    assert!(matches!(
        world.sfu.join(world.now, info, "v=0 nonsense", &[]),
        Err(JoinError::BadSdp(_))
    ));
    // Garbage datagrams from anywhere: dropped, nobody hurt.
    let stranger: SocketAddr = "10.9.9.9:9".parse().unwrap();
    for junk in [
        &b""[..],
        &[0u8; 3],
        &[0x16; 50],
        &[0x80; 200],
        &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42],
    ] {
        assert!(!world.sfu.handle_receive(world.now, stranger, junk));
        let known = world.clients[0].addr;
        world.sfu.handle_receive(world.now, known, junk);
    }
    assert!(world.sfu.handle_answer(world.now, 999, "v=0").is_err());
    let subscriber = world.clients[1].peer;
    assert!(matches!(
        world.sfu.handle_answer(world.now, subscriber, "v=0"),
        Err(SignalError::BadSdp(_))
    ));
    world.run(Duration::from_secs(2));
    assert!(!world.clients[1].received.is_empty(), "the call carried on");
    assert_eq!(world.clients[1].corrupt, 0);
}

#[test]
fn a_subscriber_on_a_lossy_link_recovers_frames_through_nack() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    let lossy = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    // From now on every 10th datagram to the subscriber is lost.
    world.lossy = Some((world.clients[lossy].addr, 10));
    world.run(Duration::from_secs(4));
    world.lossy = None;
    world.run(Duration::from_millis(500));
    let c = &world.clients[lossy];
    assert!(
        world.lossy_count > 100,
        "the link really dropped ({})",
        world.lossy_count / 10
    );
    assert_eq!(c.corrupt, 0);
    let counters: Vec<u32> = c.received.iter().map(|f| f.counter).collect();
    let first = counters[0];
    let missing: Vec<u32> = (first..world.clients[publisher].frames_sent - 5)
        .filter(|n| !counters.contains(n))
        .collect();
    assert!(missing.is_empty(), "frames lost for good: {missing:?}");
    let stats = world.sfu.stats();
    assert!(
        stats.nacks_received > 0,
        "the subscriber's NACKs are counted: {stats:?}"
    );
    assert!(world.nacks_sent_by(lossy) > 0, "the client saw the gaps");
}

/// The virtual clock advances 1 ms per step; a frame the publisher writes
/// must reach subscribers in the same step (the core gives str0m a timeout
/// right after each write instead of waiting for the timer).
#[test]
fn a_frame_is_forwarded_without_waiting_for_a_timer() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    let subscriber = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    let before = world.clients[subscriber].received.len();
    assert!(before > 10);
    // One frame (a keyframe: several packets), then only datagrams move:
    // no timer of the SFU fires.
    world.clients[publisher].keyframe_due = true;
    world.send_frame(publisher);
    // The client packetizes on its own timeout (str0m's rule for writes).
    let now = world.now;
    let _ = world.clients[publisher]
        .rtc
        .handle_input(Input::Timeout(now));
    world.pump();
    assert_eq!(world.clients[subscriber].received.len(), before + 1);
}

#[test]
fn a_muted_track_reaches_nobody_until_unmuted() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    let subscriber = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    let peer = world.clients[publisher].peer;
    let video = world.clients[publisher].video.unwrap().to_string();
    world.sfu.set_muted(world.now, peer, &video, true).unwrap();
    world.pump();
    let tracks = world.clients[subscriber]
        .track_lists
        .last()
        .unwrap()
        .clone();
    assert!(
        tracks.iter().any(|t| t.kind == MediaKind::Video && t.muted),
        "subscribers are told: {tracks:?}"
    );
    assert!(
        tracks
            .iter()
            .any(|t| t.kind == MediaKind::Audio && !t.muted)
    );
    let before = world.clients[subscriber].received.len();
    let sent_before = world.sfu.stats().forwarded;
    world.run(Duration::from_secs(1));
    assert_eq!(
        world.clients[subscriber].received.len(),
        before,
        "no video while muted"
    );
    assert!(
        world.sfu.stats().forwarded > sent_before,
        "audio still flows"
    );
    world.sfu.set_muted(world.now, peer, &video, false).unwrap();
    world.run(Duration::from_millis(500));
    let after: Vec<&Frame> = world.clients[subscriber].received[before..]
        .iter()
        .collect();
    assert!(after.len() > 5, "video is back");
    assert!(after[0].keyframe, "starting on a keyframe");
    world.run(Duration::from_secs(1));
    assert_eq!(
        world.nacks_sent_by(subscriber),
        0,
        "sequence numbers ran on across the mute: nothing looked lost"
    );
    assert_eq!(
        world.sfu.set_muted(world.now, peer, "nope", true),
        Err(SignalError::UnknownTrack("nope".into()))
    );
}

#[test]
fn a_paused_track_stops_for_that_subscriber_only() {
    let mut world = World::new(SfuConfig::default());
    world.join(true).unwrap();
    let pausing = world.join(false).unwrap();
    let other = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    let peer = world.clients[pausing].peer;
    let video_mid = world.clients[pausing]
        .track_lists
        .last()
        .unwrap()
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .unwrap()
        .mid
        .clone();
    world
        .sfu
        .set_paused(world.now, peer, &video_mid, true)
        .unwrap();
    world.pump();
    assert!(
        world.clients[pausing]
            .track_lists
            .last()
            .unwrap()
            .iter()
            .any(|t| t.mid == video_mid && t.paused)
    );
    let (p_before, o_before) = (
        world.clients[pausing].received.len(),
        world.clients[other].received.len(),
    );
    world.run(Duration::from_secs(1));
    assert_eq!(world.clients[pausing].received.len(), p_before, "paused");
    assert!(
        world.clients[other].received.len() > o_before + 20,
        "the other subscriber carries on"
    );
    world
        .sfu
        .set_paused(world.now, peer, &video_mid, false)
        .unwrap();
    world.run(Duration::from_millis(500));
    let resumed = &world.clients[pausing].received[p_before..];
    assert!(resumed.len() > 5, "resumed");
    assert!(resumed[0].keyframe, "on a keyframe");
    world.run(Duration::from_secs(1));
    assert_eq!(
        world.nacks_sent_by(pausing),
        0,
        "sequence numbers ran on across the pause: nothing looked lost"
    );
    // A mid it does not receive is refused.
    assert!(matches!(
        world.sfu.set_paused(world.now, peer, "zz", true),
        Err(SignalError::UnknownTrack(_))
    ));
}

/// A synthetic VP8 frame cut into RTP payloads the way a relay carries
/// them: a one-byte payload descriptor (S set on the first packet), then
/// up to 1,000 bytes of the frame.
fn vp8_packets(counter: u32, keyframe: bool, first_seq: u64) -> Vec<RemotePacket> {
    let frame = vp8_frame(counter, keyframe);
    let chunks: Vec<&[u8]> = frame.chunks(1000).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut payload = vec![if i == 0 { 0x10 } else { 0x00 }];
            payload.extend_from_slice(chunk);
            RemotePacket {
                layer: 0,
                seq: first_seq + i as u64,
                time: counter * 3000,
                marker: i == last,
                audio_level: None,
                payload: payload.into(),
            }
        })
        .collect()
}

/// Puts relay packets back into frames (first to last packet, the VP8
/// payload descriptor stripped): what a receiving edge's subscribers see.
fn relay_frames(packets: &[RelayPacket]) -> Vec<(Vec<u8>, bool)> {
    let mut frames = Vec::new();
    let mut current: Option<(Vec<u8>, bool)> = None;
    for p in packets {
        if p.frame_start {
            current = Some((Vec::new(), p.keyframe));
        }
        if let Some((data, _)) = current.as_mut() {
            data.extend_from_slice(&p.payload[vp8_descriptor_len(&p.payload)..]);
        }
        if p.frame_end
            && let Some(frame) = current.take()
        {
            frames.push(frame);
        }
    }
    frames
}

/// Bytes of a VP8 payload descriptor (RFC 7741 §4.2).
fn vp8_descriptor_len(payload: &[u8]) -> usize {
    let mut len = 1;
    if payload[0] & 0x80 != 0 {
        let x = payload[1];
        len += 1;
        if x & 0x80 != 0 {
            len += if payload[len] & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1;
        }
        if x & 0x30 != 0 {
            len += 1;
        }
    }
    len
}

#[test]
fn a_remote_track_reaches_local_subscribers_like_a_local_one() {
    let mut world = World::new(SfuConfig::default());
    let a = world.join(false).unwrap();
    let b = world.join(false).unwrap();
    world.run(Duration::from_millis(300));
    let active = world
        .take_events()
        .iter()
        .filter(|e| matches!(e, SfuEvent::CallActive(c) if *c == world.call))
        .count();
    assert_eq!(active, 1, "the relay hears of the call once");
    // No local participant in another call: refused.
    assert!(!world.sfu.add_remote_track(
        world.now,
        1,
        Uuid::now_v7(),
        MediaKind::Video,
        Source::Camera,
        Uuid::now_v7(),
        "x".into(),
        1
    ));
    let far_user = Uuid::now_v7();
    assert!(world.sfu.add_remote_track(
        world.now,
        7,
        world.call,
        MediaKind::Video,
        Source::Camera,
        far_user,
        "far".into(),
        1
    ));
    world.pump();
    assert_eq!(world.sfu.subscriptions(), 2, "both were offered it");
    let mut seq = 40_000;
    for counter in 0..40u32 {
        // The relay's first frames are deltas: gated until the keyframe.
        let keyframe = counter == 5 || counter == 30;
        let packets = vp8_packets(counter, keyframe, seq);
        seq += packets.len() as u64;
        world.sfu.remote_packets(world.now, 7, &packets, false);
        world.pump();
        world.run(FRAME);
    }
    for &c in &[a, b] {
        let client = &world.clients[c];
        assert_eq!(client.corrupt, 0);
        let counters: Vec<u32> = client.received.iter().map(|f| f.counter).collect();
        assert_eq!(
            counters,
            (5..40).collect::<Vec<u32>>(),
            "from the keyframe on"
        );
        let tracks = client.track_lists.last().unwrap();
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].user, far_user);
        assert_eq!(tracks[0].device, "far");
        assert_eq!(world.nacks_sent_by(c), 0, "a continuous stream");
    }
    // The relay link gives up a gap (frames 40–44 never come) and resumes
    // on a keyframe: the subscribers' numbering runs on, nothing to NACK.
    seq += 100;
    for counter in 45..60u32 {
        let keyframe = counter == 45;
        let packets = vp8_packets(counter, keyframe, seq);
        seq += packets.len() as u64;
        world.sfu.remote_packets(world.now, 7, &packets, keyframe);
        world.pump();
        world.run(FRAME);
    }
    world.run(Duration::from_secs(1));
    for &c in &[a, b] {
        let client = &world.clients[c];
        let counters: Vec<u32> = client.received.iter().map(|f| f.counter).collect();
        assert_eq!(counters[35..], (45..60).collect::<Vec<u32>>()[..]);
        assert_eq!(world.nacks_sent_by(c), 0, "no hole after the gap");
    }
    // Waiting subscribers asked upstream for a keyframe (via the relay).
    let asked = world
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, SfuEvent::RemoteKeyframeRequest { key: 7, .. }))
        .count();
    assert!(asked >= 1, "a keyframe was asked of the relay");
    // The far publisher mutes: the local track lists say so.
    world.sfu.set_remote_muted(world.now, 7, true);
    world.pump();
    assert!(world.clients[a].track_lists.last().unwrap()[0].muted);
    world.sfu.remove_remote_track(world.now, 7);
    world.pump();
    assert_eq!(world.sfu.subscriptions(), 0);
    assert_eq!(world.sfu.tracks(), 0);
}

#[test]
fn a_local_track_the_relay_subscribed_to_comes_out_as_relay_packets() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    world.run(Duration::from_millis(300));
    let video = world
        .take_events()
        .into_iter()
        .find_map(|e| match e {
            SfuEvent::TrackPublished {
                track,
                kind: MediaKind::Video,
                call,
                ..
            } if call == world.call => Some(track),
            _ => None,
        })
        .expect("the relay hears of the published track");
    world.run(Duration::from_secs(1));
    assert!(world.relay.is_empty(), "nothing before a subscription");
    let requests = world.clients[publisher].keyframe_requests;
    world.sfu.set_relay_subscribed(world.now, video, Some(3), 1);
    world.run(Duration::from_secs(1));
    assert!(
        world.clients[publisher].keyframe_requests > requests,
        "a relay subscription starts with a keyframe"
    );
    let packets = std::mem::take(&mut world.relay);
    assert!(packets.iter().all(|p| p.alias == 3 && p.video));
    let seqs: Vec<u16> = packets.iter().map(|p| p.seq as u16).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "the publisher's own, consecutive sequence numbers"
    );
    let frames = relay_frames(&packets);
    assert!(frames.len() > 25, "{} frames", frames.len());
    assert!(frames.iter().any(|(_, keyframe)| *keyframe));
    assert!(
        frames
            .iter()
            .all(|(data, keyframe)| check_frame(data).is_some_and(|(_, k)| k == *keyframe)),
        "whole frames, intact, keyframes marked"
    );
    world.sfu.set_relay_subscribed(world.now, video, None, 0);
    world.run(Duration::from_millis(200));
    assert!(world.relay.is_empty());
    // The publisher leaves: its track ends and the call goes idle.
    world.sfu.leave(world.now, world.clients[publisher].peer);
    world.pump();
    let events = world.take_events();
    assert!(events.contains(&SfuEvent::TrackEnded(video)), "{events:?}");
    assert!(
        events.contains(&SfuEvent::CallIdle(world.call)),
        "{events:?}"
    );
}

/// The mid a subscriber receives a publisher's video on.
/// The encodings a publisher was last told to send.
fn told_encodings(world: &World, publisher: usize) -> Option<Vec<String>> {
    world.clients[publisher]
        .encodings
        .last()
        .map(|(_, a)| a.clone())
}

/// The core's (first) video track.
fn video_track(world: &World) -> TrackId {
    world
        .sfu
        .tracks
        .iter()
        .find(|(_, t)| t.kind == MediaKind::Video)
        .map(|(id, _)| *id)
        .expect("a video track")
}

fn video_mid(world: &World, subscriber: usize) -> String {
    world.clients[subscriber]
        .track_lists
        .last()
        .unwrap()
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .unwrap()
        .mid
        .clone()
}

/// A DTLS 1.2 record, epoch 0 (so unauthenticated): a fatal
/// handshake_failure alert, with a sequence number ahead of the client's
/// (a replayed one would be discarded anyway).
const SPOOFED_ALERT: [u8; 15] = [21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0x03, 0xe8, 0, 2, 2, 40];

#[test]
fn a_forged_plaintext_dtls_alert_does_not_end_a_session_in_setup() {
    let mut world = World::new(SfuConfig::default());
    // The attacker knows the client's address (on the path, or guessed):
    // every DTLS flight of the client is followed by a forged alert.
    world.spoof_alerts_from = Some("10.0.1.1:4000".parse().unwrap());
    let publisher = world.join(true).unwrap();
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    world.spoof_alerts_from = None;
    world.run(Duration::from_secs(2));
    assert!(
        world.clients[publisher].connected,
        "the publisher connected"
    );
    assert!(
        world.clients[viewer].received.len() > 30,
        "and its video flows: {} frames",
        world.clients[viewer].received.len()
    );
    assert!(closed_reasons(&world.take_events()).is_empty());
    assert!(
        world.sfu.stats.forged_alerts > 0,
        "the alerts were seen and dropped"
    );
}

/// The layer a received frame came from, by its size.
fn layer_of(frame: &Frame) -> &'static str {
    let (rid, _) = LAYERS
        .iter()
        .min_by_key(|(_, body)| frame.len.abs_diff(*body))
        .unwrap();
    rid
}

/// The layer the edge last said it sends a subscriber.
fn reported_layer(world: &World, subscriber: usize) -> Option<&'static str> {
    world.clients[subscriber]
        .layers
        .last()
        .and_then(|(layers, _)| layers.first())
        .and_then(|l| l.layer)
}

/// The ceiling the edge last said a subscriber asked for.
fn reported_max(world: &World, subscriber: usize) -> Option<&'static str> {
    world.clients[subscriber]
        .layers
        .last()
        .and_then(|(layers, _)| layers.first())
        .map(|l| l.max)
}

#[test]
fn simulcast_subscribers_get_the_layer_they_ask_for_and_switch_on_a_keyframe() {
    let mut world = World::new(SfuConfig::default());
    world.join_with(true, true).unwrap();
    let small = world.join(false).unwrap();
    let large = world.join(false).unwrap();
    world.run(Duration::from_millis(300));
    let mid = video_mid(&world, small);
    let peer = world.clients[small].peer;
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, None, Some(180))
        .unwrap();
    world.run(Duration::from_secs(3));
    let recent = |world: &World, c: usize| -> Vec<&'static str> {
        let r = &world.clients[c].received;
        r[r.len() - 20..].iter().map(layer_of).collect()
    };
    assert!(
        recent(&world, small).iter().all(|l| *l == "q"),
        "a 180 px tile gets q: {:?}",
        recent(&world, small)
    );
    assert!(
        recent(&world, large).iter().all(|l| *l == "f"),
        "no limit: f"
    );
    assert_eq!(reported_layer(&world, small), Some("q"));
    assert_eq!(reported_layer(&world, large), Some("f"));
    // The tile grows: the switch to f happens on a keyframe, and the
    // stream stays one stream (no gap to NACK, counters in order).
    let before = world.clients[small].received.len();
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, Some("f"), None)
        .unwrap();
    // The request is answered at once, though the layer sent stays q
    // until the estimate makes room (a client waits for this answer).
    world.run(Duration::from_millis(20));
    assert_eq!(reported_max(&world, small), Some("f"));
    assert_eq!(reported_layer(&world, small), Some("q"));
    // Climbing waits for the estimate (probes) to make room for h, then f.
    world.run(Duration::from_secs(10));
    let after = &world.clients[small].received[before..];
    let first_f = after
        .iter()
        .position(|f| layer_of(f) == "f")
        .expect("switched up");
    assert!(after[first_f].keyframe, "the switch starts on a keyframe");
    assert!(
        after[first_f..].iter().all(|f| layer_of(f) == "f"),
        "and stays"
    );
    let counters: Vec<u32> = world.clients[small]
        .received
        .iter()
        .map(|f| f.counter)
        .collect();
    // In order; the switch may show one frame twice (the q and then the f
    // picture of it), under a new timestamp.
    assert!(counters.windows(2).all(|w| w[1] >= w[0]), "in order");
    assert_eq!(world.clients[small].corrupt, 0);
    assert_eq!(
        world.nacks_sent_by(small),
        0,
        "continuous across the switch"
    );
    assert_eq!(reported_layer(&world, small), Some("f"));
    assert!(matches!(
        world
            .sfu
            .set_max_layer(world.now, peer, &mid, Some("x"), None),
        Err(SignalError::BadLayer(_))
    ));
}

#[test]
fn a_congested_subscriber_steps_down_then_keeps_only_audio_then_climbs_back() {
    let mut world = World::new(SfuConfig::default());
    world.join_with(true, true).unwrap();
    let sub = world.join(false).unwrap();
    let free = world.join(false).unwrap();
    world.run(Duration::from_secs(3));
    let layer_now = |world: &World, c: usize| world.clients[c].received.last().map(layer_of);
    assert_eq!(layer_now(&world, sub), Some("f"));
    // A 300 kbit/s link: video steps down to the layer that fits.
    let addr = world.clients[sub].addr;
    world.bottlenecks.insert(
        addr,
        Bottleneck {
            rate_bps: 300_000,
            free_at: world.now,
        },
    );
    world.run(Duration::from_secs(8));
    assert_eq!(
        layer_now(&world, sub),
        Some("q"),
        "{:?}",
        world.clients[sub].layers.last()
    );
    assert_eq!(
        layer_now(&world, free),
        Some("f"),
        "the others are not affected"
    );
    let estimate = world.clients[sub].layers.last().and_then(|(_, e)| *e);
    assert!(
        estimate.is_some_and(|e| e < 500_000),
        "estimate {estimate:?}"
    );
    // Its tile shrinks to 180 px meanwhile: the estimate already holds the
    // layer at q or below, so the choice does not change, and the request
    // is still answered (a client waits for `max` to say q).
    let mid = video_mid(&world, sub);
    let peer = world.clients[sub].peer;
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, None, Some(180))
        .unwrap();
    world.run(Duration::from_millis(20));
    assert_eq!(reported_max(&world, sub), Some("q"));
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, Some("f"), None)
        .unwrap();
    // 100 kbit/s: no video layer fits beside audio; audio carries on.
    // (Below ~90 kbit/s str0m's fixed 50 kbit/s padding floor starts to
    // crowd audio out: a known limit.)
    world.bottlenecks.get_mut(&addr).unwrap().rate_bps = 100_000;
    world.run(Duration::from_secs(6));
    let (frames, audio) = (
        world.clients[sub].received.len(),
        world.clients[sub].audio_received,
    );
    world.run(Duration::from_secs(2));
    assert_eq!(world.clients[sub].received.len(), frames, "video paused");
    assert_eq!(reported_layer(&world, sub), None);
    // 2 s is 60 audio packets. At 100 kbit/s str0m's padding floor and
    // the probes for q share the link with audio, so a few are lost (the
    // real-UDP test at 300 kbit/s loses none).
    assert!(
        world.clients[sub].audio_received >= audio + 42,
        "audio still arrives ({audio} → {})",
        world.clients[sub].audio_received
    );
    // The limit goes: probing finds the room and video climbs back to f.
    world.bottlenecks.remove(&addr);
    world.run(Duration::from_secs(15));
    assert_eq!(
        layer_now(&world, sub),
        Some("f"),
        "{:?}",
        world.clients[sub].layers.last()
    );
    assert_eq!(world.clients[sub].corrupt, 0);
}

#[test]
fn an_offer_without_the_calls_codecs_is_refused_by_name_and_harms_no_one() {
    let mut world = World::new(SfuConfig::default());
    world.join(true).unwrap();
    let sub = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    // A client that can only send H.264.
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(world.now);
    rtc.add_local_candidate(Candidate::host("10.0.2.1:4000".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let info = PeerInfo {
        call: world.call,
        user: Uuid::now_v7(),
        device: "h264".into(),
        session: Uuid::now_v7(),
        video_codec: Codec::Vp8,
    };
    let refused = world.sfu.join(world.now, info, &offer.to_sdp_string(), &[]);
    match refused {
        Err(JoinError::BadSdp(message)) => {
            assert!(
                message.contains("H264") && message.contains("VP8"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(world.sfu.participants(), 2, "nothing was added");
    let before = world.clients[sub].received.len();
    world.run(Duration::from_secs(1));
    assert!(
        world.clients[sub].received.len() > before + 20,
        "the call goes on"
    );
}

impl World {
    /// Client `i` offers again with `change` applied to its session (a
    /// track added or stopped), declaring `sources`; the edge's answer is
    /// applied. Returns the mids `change` added.
    fn reoffer(
        &mut self,
        i: usize,
        sources: impl Fn(&[Mid]) -> Vec<(String, Source)>,
        change: impl FnOnce(&mut str0m::change::SdpApi<'_>) -> Vec<Mid>,
    ) -> Vec<Mid> {
        let peer = self.clients[i].peer;
        let mut api = self.clients[i].rtc.sdp_api();
        let mids = change(&mut api);
        let (offer, pending) = api.apply().expect("the change needs an offer");
        let answer = self
            .sfu
            .handle_offer(self.now, peer, &offer.to_sdp_string(), &sources(&mids))
            .unwrap();
        self.clients[i]
            .rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.pump();
        mids
    }

    /// The m-lines of client `i`'s session (from its own next offer).
    fn mlines(&mut self, i: usize) -> usize {
        let mut api = self.clients[i].rtc.sdp_api();
        // A throwaway change to see the whole session as an offer.
        api.ice_restart(true);
        let (offer, _) = api.apply().unwrap();
        offer.to_sdp_string().matches("\nm=").count()
    }

    /// The latest track list client `i` received.
    fn tracks_of(&self, i: usize) -> Vec<TrackState> {
        self.clients[i]
            .track_lists
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

#[test]
fn a_screen_track_offered_mid_call_reaches_the_others_as_screen_and_ends_when_stopped() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_millis(500));
    assert_eq!(world.tracks_of(viewer).len(), 2, "camera and microphone");
    world.take_events();
    // The publisher shares its screen: a new send m-line, declared.
    let added = world.reoffer(
        publisher,
        |mids| vec![(mids[0].to_string(), Source::Screen)],
        |api| vec![api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None)],
    );
    world.clients[publisher].screen = Some(added[0]);
    world.run(Duration::from_secs(1));
    let published: Vec<Source> = world
        .take_events()
        .iter()
        .filter_map(|e| match e {
            SfuEvent::TrackPublished { source, .. } => Some(*source),
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![Source::Screen]);
    let tracks = world.tracks_of(viewer);
    let screen = tracks
        .iter()
        .find(|t| t.source == Source::Screen)
        .expect("the viewer's track list shows the screen");
    assert_eq!(screen.kind, MediaKind::Video);
    let camera = tracks.iter().find(|t| t.source == Source::Camera).unwrap();
    let frames_on = |world: &World, mid: &str| {
        world.clients[viewer]
            .received
            .iter()
            .filter(|f| &*f.mid == mid)
            .count()
    };
    assert!(
        frames_on(&world, &screen.mid) >= 20,
        "screen frames arrive: {}",
        frames_on(&world, &screen.mid)
    );
    assert_eq!(world.clients[viewer].corrupt, 0);
    // It stops sharing: the line goes inactive in a new offer.
    world.reoffer(
        publisher,
        |_| vec![],
        |api| {
            api.set_direction(added[0], Direction::Inactive);
            vec![]
        },
    );
    world.clients[publisher].screen = None;
    world.run(Duration::from_millis(300));
    assert!(
        world
            .take_events()
            .iter()
            .any(|e| matches!(e, SfuEvent::TrackEnded(_))),
        "the screen track ended"
    );
    let tracks = world.tracks_of(viewer);
    assert_eq!(tracks.len(), 2, "{tracks:?}");
    assert!(tracks.iter().all(|t| t.source != Source::Screen));
    // The camera never stopped.
    let before = frames_on(&world, &camera.mid);
    world.run(Duration::from_millis(500));
    assert!(frames_on(&world, &camera.mid) > before + 10);
}

#[test]
fn receiving_mlines_are_recycled_as_participants_come_and_go() {
    let mut world = World::new(SfuConfig::default());
    let stayer = world.join(false).unwrap();
    world.run(Duration::from_millis(300));
    let first = world.mlines(stayer);
    let mut counts = Vec::new();
    let mut last_mids = Vec::new();
    for _ in 0..6 {
        let visitor = world.join(true).unwrap();
        world.run(Duration::from_millis(600));
        let tracks = world.tracks_of(stayer);
        assert_eq!(tracks.len(), 2, "the visitor's two tracks: {tracks:?}");
        // Its video arrives on whichever line was reused.
        let video = tracks.iter().find(|t| t.kind == MediaKind::Video).unwrap();
        let frames = world.clients[stayer]
            .received
            .iter()
            .filter(|f| *f.mid == video.mid)
            .count();
        assert!(frames >= 5, "video on a recycled line arrives ({frames})");
        last_mids = tracks.iter().map(|t| t.mid.clone()).collect();
        let peer = world.clients[visitor].peer;
        world.sfu.leave(world.now, peer);
        world.run(Duration::from_millis(300));
        assert!(world.tracks_of(stayer).is_empty());
        counts.push(world.mlines(stayer));
    }
    // A data channel, then one audio and one video line, reused each time.
    assert_eq!(first, 1);
    assert!(
        counts.iter().all(|n| *n == 3),
        "m-lines per round: {counts:?}"
    );
    assert_eq!(last_mids.len(), 2);
    assert_eq!(world.clients[stayer].corrupt, 0);
}

#[test]
fn crossed_offers_resolve_with_the_edge_giving_way() {
    let mut world = World::new(SfuConfig::default());
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_millis(300));
    // The edge's offer of a newcomer's tracks reaches the viewer while the
    // viewer is making an offer of its own: it ignores the edge's.
    world.clients[viewer].hold_offers = true;
    let publisher = world.join(true).unwrap();
    world.run(Duration::from_millis(200));
    assert_eq!(world.clients[viewer].held.len(), 1, "the edge offered");
    world.clients[viewer].hold_offers = false;
    world.clients[viewer].held.clear();
    world.reoffer(
        viewer,
        |mids| vec![(mids[0].to_string(), Source::Microphone)],
        |api| vec![api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None)],
    );
    world.run(Duration::from_secs(1));
    // The edge offered again after its answer: the viewer has the tracks.
    let tracks = world.tracks_of(viewer);
    assert_eq!(tracks.len(), 2, "{tracks:?}");
    let video = tracks.iter().find(|t| t.kind == MediaKind::Video).unwrap();
    let frames = world.clients[viewer]
        .received
        .iter()
        .filter(|f| *f.mid == video.mid)
        .count();
    assert!(frames >= 20, "video after the glare ({frames})");
    // And the viewer's new microphone is a track the publisher receives.
    assert!(
        world
            .tracks_of(publisher)
            .iter()
            .any(|t| t.kind == MediaKind::Audio && t.source == Source::Microphone)
    );
    assert!(world.clients[viewer].refused.is_empty());
}

impl World {
    /// Client `i` sends `bytes` as text on its data channel.
    fn send_data(&mut self, i: usize, bytes: &[u8]) -> bool {
        let c = &mut self.clients[i];
        let id = c.channel.expect("the data channel is open");
        let sent = c.rtc.channel(id).unwrap().write(false, bytes).unwrap();
        self.drain_client(i);
        sent
    }
}

#[test]
fn data_messages_reach_every_other_participant_within_limits() {
    let mut world = World::new(SfuConfig::default());
    let clients: Vec<usize> = (0..3).map(|_| world.join(false).unwrap()).collect();
    world.run(Duration::from_millis(500));
    assert!(world.clients.iter().all(|c| c.channel.is_some()));
    assert!(world.send_data(clients[0], b"hand up"));
    world.run(Duration::from_millis(100));
    for &other in &clients[1..] {
        assert_eq!(world.clients[other].data, vec![b"d0|hand up".to_vec()]);
    }
    assert!(world.clients[clients[0]].data.is_empty(), "not echoed");
    assert_eq!(world.data.len(), 1);
    assert_eq!(world.data[0].device, "d0");
    assert_eq!(world.data[0].user, {
        let p = world.clients[clients[0]].peer;
        world.sfu.peers[&p].info.user
    });
    // Too large: refused with a clear error, delivered to nobody.
    assert!(world.send_data(clients[1], &vec![b'x'; MAX_DATA_MESSAGE + 1]));
    world.run(Duration::from_millis(200));
    assert_eq!(
        world.clients[clients[1]].refused.first().map(|r| r.0),
        Some("data_too_large")
    );
    assert_eq!(world.clients[clients[0]].data.len(), 0);
    assert_eq!(world.clients[clients[2]].data.len(), 1);
    // A flood: the burst goes through, the rest is refused, and the
    // sender is told once, not per message.
    for n in 0..200 {
        world.send_data(clients[2], format!("spam {n}").as_bytes());
    }
    // SCTP takes a few round trips (and a retransmission timer) to
    // deliver a burst.
    world.run(Duration::from_millis(3000));
    let got = world.clients[clients[0]].data.len();
    assert!(
        (50..=60).contains(&got),
        "the burst of 50 (+ refill): {got}, {:?}",
        world.sfu.stats()
    );
    let told: Vec<_> = world.clients[clients[2]]
        .refused
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(told, vec!["data_rate_limited"]);
    assert!(world.sfu.stats().data_refused >= 140);
    // In order, as sent.
    let texts: Vec<String> = world.clients[clients[0]]
        .data
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    for (n, text) in texts.iter().enumerate() {
        assert_eq!(text, &format!("d2|spam {n}"));
    }
    // Later the sender may speak again.
    world.run(Duration::from_millis(500));
    world.send_data(clients[2], b"again");
    world.run(Duration::from_millis(100));
    assert_eq!(
        world.clients[clients[0]].data.last().map(Vec::as_slice),
        Some(&b"d2|again"[..])
    );
    // A message from another edge reaches everyone here.
    let call = world.call;
    world
        .sfu
        .deliver_data(world.now, call, None, false, b"far|hello");
    world.run(Duration::from_millis(100));
    for &c in &clients {
        assert_eq!(
            world.clients[c].data.last().map(Vec::as_slice),
            Some(&b"far|hello"[..])
        );
    }
}

impl World {
    /// The dominant speaker client `i` was last told of, by device.
    fn dominant_for(&self, i: usize) -> Option<String> {
        self.clients[i].speakers.last().and_then(|(_, d)| d.clone())
    }

    /// When client `i` was first told `device` dominates, after `since`.
    fn told_dominant_at(&self, i: usize, device: &str, since: Instant) -> Option<Instant> {
        self.clients[i]
            .speakers
            .iter()
            .find(|(at, d)| *at >= since && d.as_deref() == Some(device))
            .map(|(at, _)| *at)
    }
}

#[test]
fn the_dominant_speaker_changes_after_the_hold_and_not_on_a_cough() {
    let mut world = World::new(SfuConfig::default());
    let alice = world.join(true).unwrap(); // device d0
    let bob = world.join(true).unwrap(); // d1
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_millis(500));
    assert_eq!(world.dominant_for(viewer), None, "nobody spoke yet");
    // Alice speaks; background noise (-70 dBov) from Bob is not speech.
    world.clients[alice].level = -25;
    world.clients[bob].level = -70;
    world.run(Duration::from_secs(3));
    for c in [alice, bob, viewer] {
        assert_eq!(world.dominant_for(c).as_deref(), Some("d0"), "client {c}");
    }
    // Bob coughs (loud, 300 ms) while Alice goes on: no change.
    let told = world.clients[viewer].speakers.len();
    world.clients[bob].level = -10;
    world.run(Duration::from_millis(300));
    world.clients[bob].level = -70;
    world.run(Duration::from_secs(2));
    assert_eq!(world.dominant_for(viewer).as_deref(), Some("d0"));
    assert!(
        world.clients[viewer].speakers.len() > told,
        "the cough made Bob an active speaker for a moment"
    );
    assert!(
        world.clients[viewer].speakers[told..]
            .iter()
            .all(|(_, d)| d.as_deref() == Some("d0")),
        "the cough never took the role: {:?}",
        &world.clients[viewer].speakers[told..]
    );
    // Alice stops and Bob speaks: Bob takes over, not at once.
    let start = world.now;
    world.clients[alice].level = -127;
    world.clients[bob].level = -30;
    world.run(Duration::from_secs(3));
    let at = world
        .told_dominant_at(viewer, "d1", start)
        .expect("Bob became the dominant speaker");
    let after = at.duration_since(start);
    assert!(
        after >= Duration::from_millis(250) && after <= Duration::from_millis(2500),
        "switched after {after:?}"
    );
    // A muted microphone is no speaker: Bob mutes while talking, Alice
    // speaks softly, and she becomes the speaker again.
    let mid = world.clients[bob].audio.unwrap().to_string();
    let peer = world.clients[bob].peer;
    world.sfu.set_muted(world.now, peer, &mid, true).unwrap();
    world.clients[alice].level = -45;
    let start = world.now;
    world.run(Duration::from_secs(3));
    assert!(world.told_dominant_at(viewer, "d0", start).is_some());
}

#[test]
fn layers_nobody_needs_are_paused_at_the_publisher_and_come_back_when_asked() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join_with(true, true).unwrap();
    world.run(Duration::from_millis(500));
    let told = |world: &World| told_encodings(world, publisher);
    let all: Vec<String> = ["q", "h", "f"].map(String::from).to_vec();
    let low: Vec<String> = vec!["q".into()];
    assert_eq!(
        told(&world),
        Some(low.clone()),
        "alone: only the lowest layer"
    );
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_millis(500));
    assert_eq!(
        told(&world),
        Some(all.clone()),
        "a viewer with no limit: every layer"
    );
    // The viewer's tile shrinks: the upper layers go, but only after the
    // hold (a tile that grows again soon costs no encoder restart).
    let mid = video_mid(&world, viewer);
    let peer = world.clients[viewer].peer;
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, Some("q"), None)
        .unwrap();
    let shrunk = world.now;
    world.run(Duration::from_secs(3));
    assert_eq!(told(&world), Some(all.clone()), "not before the hold");
    world.run(Duration::from_secs(3));
    let (at, active) = world.clients[publisher].encodings.last().cloned().unwrap();
    assert_eq!(active, low);
    let after = at.duration_since(shrunk);
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_secs(6),
        "{after:?}"
    );
    // It grows: back at once.
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, Some("h"), None)
        .unwrap();
    let grown = world.now;
    world.run(Duration::from_millis(500));
    let (at, active) = world.clients[publisher].encodings.last().cloned().unwrap();
    assert_eq!(active, vec!["q".to_owned(), "h".to_owned()]);
    assert!(at.duration_since(grown) <= Duration::from_millis(300));
    // The relay wants every layer (another region has a large tile): all
    // of them, whatever the viewer here asks.
    let track = video_track(&world);
    world
        .sfu
        .set_relay_subscribed(world.now, track, Some(9), 0b111);
    world.run(Duration::from_millis(300));
    assert_eq!(told(&world), Some(all));
    // Only what the relay subscribed goes to the relay.
    world.relay.clear();
    world
        .sfu
        .set_relay_subscribed(world.now, track, Some(9), 0b001);
    world.run(Duration::from_millis(500));
    assert!(!world.relay.is_empty());
    assert!(
        world.relay.iter().all(|p| p.layer == 0 || !p.video),
        "q only"
    );
}

#[test]
fn other_workers_get_the_layers_they_want_and_the_publisher_keeps_sending_them() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join_with(true, true).unwrap();
    world.run(Duration::from_millis(500));
    let told = |world: &World| told_encodings(world, publisher);
    assert_eq!(told(&world), Some(vec!["q".to_owned()]), "alone: q only");
    assert!(world.exported.is_empty(), "nobody else wants it");
    let video = video_track(&world);
    // Another worker has a viewer of f: f goes to it, and the publisher
    // is told to send every layer up to it, starting with a keyframe.
    let before = world.clients[publisher].keyframe_requests;
    world.sfu.set_export_layers(world.now, video, 0b100);
    world.run(Duration::from_millis(500));
    assert_eq!(
        told(&world),
        Some(["q", "h", "f"].map(String::from).to_vec())
    );
    assert!(world.clients[publisher].keyframe_requests > before);
    let video_packets: Vec<&RelayPacket> = world.exported.iter().filter(|p| p.video).collect();
    assert!(!video_packets.is_empty());
    assert!(
        video_packets
            .iter()
            .all(|p| p.layer == 2 && p.track == video),
        "f only"
    );
    assert!(video_packets.iter().any(|p| p.keyframe && p.frame_start));
    assert!(world.relay.is_empty(), "the relay did not subscribe");
    // It wants nothing any more: nothing goes, and the layers pause
    // after the hold.
    world.sfu.set_export_layers(world.now, video, 0);
    world.run(Duration::from_millis(100));
    world.exported.clear();
    world.run(Duration::from_secs(6));
    assert!(world.exported.is_empty());
    assert_eq!(told(&world), Some(vec!["q".to_owned()]));
}

#[test]
fn a_remote_tracks_needed_layers_are_what_the_edge_subscribes_to() {
    let mut world = World::new(SfuConfig::default());
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_millis(300));
    assert!(world.sfu.add_remote_track(
        world.now,
        5,
        world.call,
        MediaKind::Video,
        Source::Camera,
        Uuid::now_v7(),
        "far".into(),
        3
    ));
    world.run(Duration::from_millis(500));
    let wanted = |world: &mut World| {
        world
            .take_events()
            .iter()
            .filter_map(|e| match e {
                SfuEvent::RemoteLayers { key: 5, layers } => Some(*layers),
                _ => None,
            })
            .next_back()
    };
    assert_eq!(
        wanted(&mut world),
        None,
        "every layer, as the shell subscribed it"
    );
    let mid = video_mid(&world, viewer);
    let peer = world.clients[viewer].peer;
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, None, Some(360))
        .unwrap();
    world.run(Duration::from_secs(6));
    assert_eq!(wanted(&mut world), Some(0b011), "q and h cross, f does not");
}

#[test]
fn a_receive_only_client_may_offer_recvonly_transceivers_instead_of_a_data_channel() {
    let mut world = World::new(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    world.run(Duration::from_millis(300));
    world.take_events();
    // A client with nothing to send offers to receive audio and video.
    let addr: SocketAddr = "10.0.1.99:4000".parse().unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false)
        .build(world.now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let info = PeerInfo {
        call: world.call,
        user: Uuid::now_v7(),
        device: "recvonly".into(),
        session: Uuid::now_v7(),
        video_codec: Codec::Vp8,
    };
    let (peer, answer) = world
        .sfu
        .join(world.now, info, &offer.to_sdp_string(), &[])
        .expect("a recvonly offer is accepted");
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let published: Vec<_> = world
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, SfuEvent::TrackPublished { .. }))
        .collect();
    assert!(published.is_empty(), "receive-only lines publish nothing");
    world.clients.push(Client {
        rtc,
        addr,
        peer,
        video: None,
        audio: None,
        connected: false,
        received: Vec::new(),
        corrupt: 0,
        keyframe_requests: 0,
        nacks: Default::default(),
        keyframe_due: false,
        frames_sent: 0,
        track_lists: Vec::new(),
        simulcast: false,
        audio_received: 0,
        layers: Vec::new(),
        screen: None,
        hold_offers: false,
        held: Vec::new(),
        refused: Vec::new(),
        channel: None,
        data: Vec::new(),
        speakers: Vec::new(),
        level: -127,
        encodings: Vec::new(),
    });
    let viewer = world.clients.len() - 1;
    world.pump();
    world.run(Duration::from_secs(1));
    assert_eq!(
        world.tracks_of(viewer).len(),
        2,
        "the edge offered the publisher's tracks"
    );
    assert!(world.clients[viewer].received.len() >= 20);
    assert!(world.clients[viewer].audio_received >= 20);
    assert_eq!(world.clients[viewer].corrupt, 0);
    let _ = publisher;
}

#[test]
fn an_h264_call_forwards_h264_and_refuses_a_vp8_only_client_by_name() {
    let mut world = World::h264(SfuConfig::default());
    let publisher = world.join(true).unwrap();
    let subscribers: Vec<usize> = (0..2).map(|_| world.join(false).unwrap()).collect();
    world.run(Duration::from_secs(2));
    for &s in &subscribers {
        let c = &world.clients[s];
        assert_eq!(c.corrupt, 0, "every NAL unit arrives byte for byte");
        let counters: Vec<u32> = c.received.iter().map(|f| f.counter).collect();
        assert!(counters.len() > 40, "{} frames", counters.len());
        assert!(c.received[0].keyframe, "starts on an IDR with its SPS");
        let first = counters[0];
        let expected: Vec<u32> = (first..first + counters.len() as u32).collect();
        assert_eq!(counters, expected, "every frame after the first, in order");
        assert!(c.audio_received > 40);
    }
    // A late joiner starts on a keyframe too.
    let late = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    let c = &world.clients[late];
    assert!(!c.received.is_empty() && c.received[0].keyframe);
    // A client that offers only VP8 cannot join an H.264 call: told why.
    let before = world.clients[subscribers[0]].received.len();
    world.client_codec = Some(Codec::Vp8);
    let refused = world.join(true).err();
    world.client_codec = None;
    match refused {
        Some(JoinError::BadSdp(message)) => {
            assert!(
                message.contains("VP8") && message.contains("this call uses H264"),
                "{message}"
            )
        }
        other => panic!("expected bad_sdp, got {other:?}"),
    }
    world.run(Duration::from_millis(500));
    assert!(
        world.clients[subscribers[0]].received.len() > before + 10,
        "the others go on"
    );
    let _ = publisher;
}

#[test]
fn a_shared_screen_gets_the_larger_share_of_a_thin_link() {
    let mut world = World::new(SfuConfig::default());
    let presenter = world.join_with(true, true).unwrap();
    let viewer = world.join(false).unwrap();
    let added = world.reoffer(
        presenter,
        |mids| vec![(mids[0].to_string(), Source::Screen)],
        |api| vec![api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None)],
    );
    world.clients[presenter].screen = Some(added[0]);
    world.run(Duration::from_secs(2));
    let target_of = |world: &World, source: Source| {
        let p = &world.sfu.peers[&world.clients[viewer].peer];
        p.subscriptions
            .iter()
            .find(|(t, _)| world.sfu.tracks[t].source == source)
            .and_then(|(_, s)| s.target)
    };
    assert!(
        target_of(&world, Source::Camera) >= Some(1),
        "room for more than q at first"
    );
    assert_eq!(target_of(&world, Source::Screen), Some(0), "its one layer");
    // The link turns out to carry 900 kbit/s, congested: the screen
    // (~650 kbit/s) keeps its layer, the camera steps down to fit what is
    // left (an equal share, ~420 kbit/s each, would starve the screen and
    // keep the camera at h).
    let now = world.now;
    let peer = world.clients[viewer].peer;
    let p = world.sfu.peers.get_mut(&peer).unwrap();
    p.estimate = Some(900_000);
    p.congested_at = Some(now);
    world.sfu.allocate(peer, now);
    assert_eq!(
        target_of(&world, Source::Screen),
        Some(0),
        "the screen stays"
    );
    assert_eq!(
        target_of(&world, Source::Camera),
        Some(0),
        "the camera gives way"
    );
}

fn closed_reasons(events: &[SfuEvent]) -> Vec<(PeerId, crate::CloseReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::Closed { peer, reason, .. } => Some((*peer, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_token_used_again_replaces_its_earlier_session() {
    let mut world = World::new(SfuConfig {
        max_participants: 2,
        ..SfuConfig::default()
    });
    let publisher = world.join(true).unwrap();
    let session = Uuid::now_v7();
    world.next_session = Some(session);
    let first = world.join(false).unwrap();
    world.run(Duration::from_secs(1));
    assert_eq!(world.sfu.participants(), 2);
    world.take_events();
    // The same token (session) twice more: each replaces the one before,
    // even with the node otherwise full.
    for _ in 0..2 {
        world.next_session = Some(session);
        world.join(false).unwrap();
    }
    let closed = closed_reasons(&world.take_events());
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(
        closed
            .iter()
            .all(|(_, r)| *r == crate::CloseReason::Replaced)
    );
    assert_eq!(closed[0].0, world.clients[first].peer);
    assert!(!crate::CloseReason::Replaced.ends_session());
    assert_eq!(world.sfu.participants(), 2, "one place per token");
    assert_eq!(world.sfu.stats().replaced, 2);
    assert!(
        matches!(world.join(false), Err(JoinError::NodeFull(2))),
        "another token still finds the node full"
    );
    // The newest session is the one that works.
    let newest = world.clients.len() - 1;
    world.run(Duration::from_secs(2));
    assert!(world.clients[newest].connected);
    assert!(
        !world.clients[newest].received.is_empty(),
        "the replacing session receives the publisher"
    );
    assert!(world.clients[publisher].connected);
}

#[test]
fn a_peer_that_never_connects_is_dropped_after_the_connect_timeout() {
    let mut world = World::new(SfuConfig {
        connect_timeout: Duration::from_secs(3),
        ..SfuConfig::default()
    });
    let connected = world.join(true).unwrap();
    // An offer whose client never answers ICE: only the SDP reaches the edge.
    let mut silent = Rtc::builder().enable_opus(true, false).build(world.now);
    silent.add_local_candidate(Candidate::host("10.9.9.9:4000".parse().unwrap(), "udp").unwrap());
    let mut api = silent.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    let info = PeerInfo {
        call: world.call,
        user: Uuid::now_v7(),
        device: "silent".into(),
        session: Uuid::now_v7(),
        video_codec: world.video_codec,
    };
    let (ghost, _) = world
        .sfu
        .join(world.now, info, &offer.to_sdp_string(), &[])
        .unwrap();
    world.run(Duration::from_millis(2500));
    assert_eq!(world.sfu.participants(), 2, "not yet");
    world.run(Duration::from_secs(1));
    let closed = closed_reasons(&world.take_events());
    assert_eq!(closed, vec![(ghost, crate::CloseReason::ConnectTimeout)]);
    assert!(crate::CloseReason::ConnectTimeout.ends_session());
    assert_eq!(world.sfu.participants(), 1);
    assert_eq!(world.sfu.stats().connect_timeouts, 1);
    // The connected peer is never timed out.
    world.run(Duration::from_secs(5));
    assert!(world.clients[connected].connected);
    assert_eq!(world.sfu.participants(), 1);
}

#[test]
fn a_revoked_session_is_closed_and_others_stay() {
    let mut world = World::new(SfuConfig::default());
    let a = world.join(true).unwrap();
    let session = Uuid::now_v7();
    world.next_session = Some(session);
    let b = world.join(true).unwrap();
    world.run(Duration::from_secs(1));
    world.take_events();
    assert!(
        !world.sfu.revoke(world.now, Uuid::now_v7()),
        "unknown session"
    );
    assert!(world.sfu.revoke(world.now, session));
    world.pump();
    let closed = closed_reasons(&world.take_events());
    assert_eq!(
        closed,
        vec![(world.clients[b].peer, crate::CloseReason::Revoked)]
    );
    assert_eq!(world.sfu.participants(), 1);
    assert_eq!(world.sfu.tracks(), 2, "b's tracks went with it");
    assert!(world.clients[a].connected);
}

#[test]
fn an_overloaded_worker_sheds_the_costliest_video_first_keeps_audio_and_restores_later() {
    let mut world = World::new(SfuConfig {
        shed_when_overloaded: true,
        ..SfuConfig::default()
    });
    world.join_with(true, true).unwrap();
    let full = world.join(false).unwrap();
    let small = world.join(false).unwrap();
    world.run(Duration::from_secs(2));
    let mid = video_mid(&world, small);
    let peer = world.clients[small].peer;
    world
        .sfu
        .set_max_layer(world.now, peer, &mid, Some("q"), None)
        .unwrap();
    world.run(Duration::from_secs(3));
    let layer_now = |world: &World, c: usize| world.clients[c].received.last().map(layer_of);
    assert_eq!(layer_now(&world, full), Some("f"));
    assert_eq!(layer_now(&world, small), Some("q"));
    // Busy but keeping up, or late once with CPU to spare: nothing
    // changes.
    let (late, on_time) = (Duration::from_millis(30), Duration::from_millis(2));
    world.sfu.report_load(world.now, 0.99, on_time);
    world.sfu.report_load(world.now, 0.5, late);
    world.sfu.report_load(world.now, 0.5, on_time);
    world.run(Duration::from_secs(1));
    assert_eq!(world.sfu.shed_subscribers(), 0);
    // Overloaded: the subscriber receiving the most video steps down, a
    // layer at a time; the one on q is left alone.
    world.sfu.report_load(world.now, 0.95, late);
    world.run(Duration::from_secs(1));
    assert_eq!(layer_now(&world, full), Some("h"));
    assert_eq!(layer_now(&world, small), Some("q"));
    world.sfu.report_load(world.now, 0.95, late);
    world.run(Duration::from_secs(1));
    assert_eq!(layer_now(&world, full), Some("q"));
    assert_eq!(world.sfu.shed_subscribers(), 1);
    // The small one leaves; still overloaded: the last step pauses the
    // video, and the audio goes on.
    world.sfu.leave(world.now, peer);
    world.run(Duration::from_millis(200));
    world.sfu.report_load(world.now, 0.95, late);
    world.run(Duration::from_secs(1));
    let (frames, audio) = (
        world.clients[full].received.len(),
        world.clients[full].audio_received,
    );
    world.run(Duration::from_secs(2));
    assert_eq!(world.clients[full].received.len(), frames, "video paused");
    // 2 s is 60 audio packets: all of them.
    assert!(
        world.clients[full].audio_received >= audio + 58,
        "audio goes on ({audio} → {})",
        world.clients[full].audio_received
    );
    assert_eq!(world.sfu.stats().overload_sheds, 3);
    // Room again: nothing for the first 5 s after the last shed, then a
    // step a second, back to f.
    world.sfu.report_load(world.now, 0.3, on_time);
    world.run(Duration::from_secs(1));
    assert_eq!(world.clients[full].received.len(), frames, "not yet");
    world.run(Duration::from_secs(4));
    for _ in 0..3 {
        world.sfu.report_load(world.now, 0.3, on_time);
        world.run(Duration::from_millis(1100));
    }
    assert_eq!(world.sfu.shed_subscribers(), 0);
    world.run(Duration::from_secs(3));
    assert_eq!(layer_now(&world, full), Some("f"));
    assert_eq!(world.clients[full].corrupt, 0);
}

#[test]
fn a_single_layer_video_shed_for_overload_pauses_and_comes_back() {
    let mut world = World::new(SfuConfig {
        shed_when_overloaded: true,
        ..SfuConfig::default()
    });
    world.join(true).unwrap();
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_secs(2));
    let (late, on_time) = (Duration::from_millis(30), Duration::from_millis(2));
    world.sfu.report_load(world.now, 0.95, late);
    world.run(Duration::from_secs(1));
    let frames = world.clients[viewer].received.len();
    world.run(Duration::from_secs(1));
    assert_eq!(world.clients[viewer].received.len(), frames, "paused");
    world.run(Duration::from_secs(4));
    world.sfu.report_load(world.now, 0.3, on_time);
    world.run(Duration::from_secs(2));
    assert_eq!(world.sfu.shed_subscribers(), 0);
    assert!(
        world.clients[viewer].received.len() > frames + 30,
        "back ({frames} → {})",
        world.clients[viewer].received.len()
    );
}

#[test]
fn a_worker_not_told_to_shed_never_does() {
    let mut world = World::new(SfuConfig::default());
    world.join(true).unwrap();
    let viewer = world.join(false).unwrap();
    world.run(Duration::from_secs(2));
    for _ in 0..3 {
        world
            .sfu
            .report_load(world.now, 0.99, Duration::from_millis(100));
        world.run(Duration::from_secs(1));
    }
    assert_eq!(world.sfu.shed_subscribers(), 0);
    let frames = world.clients[viewer].received.len();
    world.run(Duration::from_secs(1));
    assert!(world.clients[viewer].received.len() > frames + 20);
}
