//! A headless WebRTC client on str0m: it joins a call through the real
//! signaling socket and a real UDP socket, publishes synthetic VP8 (a frame
//! every 33 ms, keyframes when asked) and Opus, and checks every frame it
//! receives byte for byte. `cascade bench sfu` runs the same bots with
//! bigger frames and a [`LatencyProbe`], and pairs two of them directly
//! ([`Bot::direct_pair`]) for its no-SFU baseline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::signaling::{ClientSignal, ServerSignal, TrackInfo};
use sfu::synthetic::{DELTA_BODY, KEYFRAME_BODY, check_frame, simulcast_send, vp8_frame_sized};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

type Signaling =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a bot behaves.
#[derive(Clone)]
pub struct BotOptions {
    /// Publish video and audio (else only subscribe).
    pub publish: bool,
    /// Body bytes of a delta frame (30 per second: 700 ≈ 170 kbit/s,
    /// 6,200 ≈ 1.5 Mbit/s).
    pub delta_body: usize,
    /// Body bytes of a keyframe.
    pub keyframe_body: usize,
    /// Where send and receive times of video frames go.
    pub probe: Option<Arc<LatencyProbe>>,
    /// Publish video as three simulcast layers (rids `q`, `h`, `f`): `f`
    /// with the bodies above, `h` a third of them, `q` a tenth.
    pub simulcast: bool,
    /// Send every datagram to this address (a [`crate::udp_proxy`] in front
    /// of the edge) and take what comes back from it as the edge's.
    pub via: Option<SocketAddr>,
    /// The audio level its microphone packets carry (dBov, 0 to -127;
    /// none: no level extension), for speaker detection.
    pub audio_level: Option<i8>,
    /// A publisher opens a data channel too (a subscriber always does: its
    /// offer needs something in it).
    pub data_channel: bool,
    /// How a publisher numbers the video frames it sends.
    pub numbering: FrameNumbering,
}

/// A publisher's video frame number: `offset + counter × stride` (the
/// counter counts its frames from 0). Publishers that share a
/// [`LatencyProbe`] take disjoint numbers (offset = their index, stride a
/// power of two at least their count, so the probe's slots keep them
/// apart); the frame's RTP time still follows the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameNumbering {
    /// This publisher's first number.
    pub offset: u32,
    /// The step between its numbers.
    pub stride: u32,
}

impl Default for FrameNumbering {
    fn default() -> Self {
        FrameNumbering {
            offset: 0,
            stride: 1,
        }
    }
}

impl FrameNumbering {
    /// Publisher `index` of `count` sharing one probe.
    pub fn shared(index: usize, count: usize) -> Self {
        let stride = count.max(1).next_power_of_two().min(4096) as u32;
        FrameNumbering {
            offset: index as u32 % stride,
            stride,
        }
    }

    fn number(self, counter: u32) -> u32 {
        self.offset.wrapping_add(counter.wrapping_mul(self.stride))
    }
}

impl BotOptions {
    /// Small frames, no probe; publishing if `publish`.
    pub fn new(publish: bool) -> Self {
        BotOptions {
            publish,
            delta_body: DELTA_BODY,
            keyframe_body: KEYFRAME_BODY,
            probe: None,
            simulcast: false,
            via: None,
            audio_level: None,
            data_channel: false,
            numbering: FrameNumbering::default(),
        }
    }
}

/// Frame latency from the publisher's write to a subscriber's complete
/// frame, for bots in one process (they share the clock).
pub struct LatencyProbe {
    base: Instant,
    /// Send time of frame `counter % len`, ns after `base` (+1; 0: unknown).
    sent: Vec<AtomicU64>,
    recording: AtomicBool,
    samples: Mutex<Vec<Duration>>,
}

impl LatencyProbe {
    /// A probe that records nothing until [`LatencyProbe::start`].
    pub fn new() -> Arc<Self> {
        Arc::new(LatencyProbe {
            base: Instant::now(),
            sent: (0..4096).map(|_| AtomicU64::new(0)).collect(),
            recording: AtomicBool::new(false),
            samples: Mutex::new(Vec::new()),
        })
    }

    fn slot(&self, counter: u32) -> &AtomicU64 {
        &self.sent[counter as usize % self.sent.len()]
    }

    pub(crate) fn sent(&self, counter: u32, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.slot(counter).store(ns + 1, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, counter: u32, at: Instant) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let sent = self.slot(counter).load(Ordering::Relaxed);
        if sent == 0 {
            return;
        }
        let now = at.saturating_duration_since(self.base).as_nanos() as u64;
        let latency = Duration::from_nanos(now.saturating_sub(sent - 1));
        if let Ok(mut samples) = self.samples.lock() {
            samples.push(latency);
        }
    }

    /// Clears the samples and starts recording.
    pub fn start(&self) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.clear();
        }
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops recording and returns what was recorded.
    pub fn take(&self) -> Vec<Duration> {
        self.recording.store(false, Ordering::Relaxed);
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// What a bot saw.
#[derive(Debug, Clone, Default)]
pub struct BotReport {
    /// ICE and DTLS came up.
    pub connected: bool,
    /// Video frames sent.
    pub frames_sent: u32,
    /// Received video frames per mid: the publishers' counters in arrival order.
    pub received: BTreeMap<String, Vec<u32>>,
    /// Whether each mid's first frame was a keyframe.
    pub first_was_keyframe: BTreeMap<String, bool>,
    /// Received frames whose bytes were wrong.
    pub corrupt: u32,
    /// Keyframe requests that reached this publisher.
    pub keyframe_requests: u32,
    /// The last track list from the edge.
    pub tracks: Vec<TrackInfo>,
    /// Signaling errors from the edge.
    pub errors: Vec<String>,
    /// Size of the last video frame received (tells simulcast layers
    /// apart).
    pub last_frame_bytes: usize,
    /// The edge's last `layers` report: what it sends of each video.
    pub layers: Vec<protocol::signaling::LayerInfo>,
    /// Its last bandwidth estimate towards this bot, kbit/s.
    pub estimate_kbps: Option<u64>,
    /// Audio packets received.
    pub audio_packets: u32,
    /// The dominant speaker the edge last named.
    pub dominant: Option<protocol::signaling::SpeakerInfo>,
    /// Data messages received on its data channel.
    pub data: Vec<protocol::signaling::DataEnvelope>,
    /// Its data channel is open.
    pub channel_open: bool,
    /// The close frame the edge ended signaling with (code, reason).
    pub closed: Option<(u16, String)>,
    /// The media address the edge's answer named (its worker's socket).
    pub edge_media: Option<SocketAddr>,
}

impl BotReport {
    /// Intact video frames received on the first video track.
    pub fn video_frames(&self) -> usize {
        self.received.values().next().map_or(0, Vec::len)
    }

    /// Intact video frames received on every track together.
    pub fn all_video_frames(&self) -> usize {
        self.received.values().map(Vec::len).sum()
    }
}

/// The address of an SDP's first UDP candidate
/// (`a=candidate:<foundation> <component> udp <priority> <ip> <port> typ ...`).
fn answer_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|line| {
        let fields: Vec<&str> = line
            .strip_prefix("a=candidate:")?
            .split_whitespace()
            .collect();
        if !fields.get(2)?.eq_ignore_ascii_case("udp") {
            return None;
        }
        let ip: std::net::IpAddr = fields.get(4)?.parse().ok()?;
        Some(SocketAddr::new(ip, fields.get(5)?.parse().ok()?))
    })
}

/// A running bot.
pub struct Bot {
    report: Arc<Mutex<BotReport>>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Signaling frames to send (mute, pause, ...).
    signals: tokio::sync::mpsc::UnboundedSender<ClientSignal>,
    /// Text to send on its data channel.
    data: tokio::sync::mpsc::UnboundedSender<String>,
    /// The m-line of its own video, when it publishes.
    video: Option<Mid>,
    task: tokio::task::JoinHandle<()>,
}

/// Why a bot could not join.
#[derive(Debug)]
pub struct BotError(pub String);

impl std::fmt::Display for BotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

struct State {
    rtc: Rtc,
    socket: Arc<UdpSocket>,
    video: Option<Mid>,
    audio: Option<Mid>,
    keyframe_due: bool,
    report: Arc<Mutex<BotReport>>,
    options: BotOptions,
    /// Where str0m last sent (the edge): what comes back through
    /// [`BotOptions::via`] is taken as from there.
    peer_addr: Option<SocketAddr>,
    /// Its data channel, once open.
    channel: Option<str0m::channel::ChannelId>,
}

impl State {
    /// Drains str0m's output; returns its next timeout.
    async fn drain(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    self.peer_addr = Some(t.destination);
                    let to = self.options.via.unwrap_or(t.destination);
                    let _ = self.socket.send_to(&t.contents, to).await;
                }
                Ok(Output::Timeout(at)) => return at,
                Ok(Output::Event(event)) => self.event(event),
                Err(_) => return Instant::now() + Duration::from_millis(50),
            }
        }
    }

    fn event(&mut self, event: Event) {
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Connected => report.connected = true,
            Event::ChannelOpen(id, _) => {
                self.channel = Some(id);
                report.channel_open = true;
            }
            Event::ChannelData(data) => {
                if let Ok(envelope) = serde_json::from_slice(&data.data) {
                    report.data.push(envelope);
                }
            }
            Event::MediaData(data) => {
                if data.params.spec().codec == Codec::Vp8 {
                    match check_frame(&data.data) {
                        Some((counter, keyframe)) => {
                            if let Some(probe) = &self.options.probe {
                                probe.received(counter, Instant::now());
                            }
                            let mid = data.mid.to_string();
                            report
                                .first_was_keyframe
                                .entry(mid.clone())
                                .or_insert(keyframe);
                            report.received.entry(mid).or_default().push(counter);
                            report.last_frame_bytes = data.data.len();
                        }
                        None => report.corrupt += 1,
                    }
                } else {
                    report.audio_packets += 1;
                }
            }
            Event::KeyframeRequest(_) => {
                report.keyframe_requests += 1;
                self.keyframe_due = true;
            }
            _ => {}
        }
    }

    /// Writes one video frame (then the caller drains: str0m wants its
    /// output drained after every write).
    fn send_video(&mut self, counter: u32, now: Instant) {
        let number = self.options.numbering.number(counter);
        let Some(video) = self.video else {
            return;
        };
        let keyframe = std::mem::take(&mut self.keyframe_due);
        let vp8 = self.pt(video, Codec::Vp8);
        let body = if keyframe {
            self.options.keyframe_body
        } else {
            self.options.delta_body
        };
        if let Some(probe) = &self.options.probe {
            probe.sent(number, now);
        }
        let time = MediaTime::from_90khz(u64::from(counter) * 3000);
        let Some(pt) = vp8 else {
            return;
        };
        if self.options.simulcast {
            for (rid, share) in SIMULCAST_LAYERS {
                if let Some(w) = self.rtc.writer(video) {
                    let frame = vp8_frame_sized(number, keyframe, (body / share).max(100));
                    let _ = w.rid(rid.into()).write(pt, now, time, frame);
                }
            }
        } else if let Some(w) = self.rtc.writer(video) {
            let _ = w.write(pt, now, time, vp8_frame_sized(number, keyframe, body));
        }
        // str0m packetizes on its next timeout: now, not at the timer.
        let _ = self.rtc.handle_input(Input::Timeout(now));
    }

    /// Writes one Opus packet.
    fn send_audio(&mut self, counter: u32, now: Instant) {
        let Some(audio) = self.audio else {
            return;
        };
        let opus = self.pt(audio, Codec::Opus);
        let level = self.options.audio_level;
        if let (Some(pt), Some(mut w)) = (opus, self.rtc.writer(audio)) {
            if let Some(level) = level {
                w = w.audio_level(level, level > -50);
            }
            let _ = w.write(
                pt,
                now,
                MediaTime::new(u64::from(counter) * 1600, Frequency::FORTY_EIGHT_KHZ),
                vec![0xf8, 0xff, 0xfe],
            );
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
    }

    fn pt(&mut self, mid: Mid, codec: Codec) -> Option<str0m::media::Pt> {
        let w = self.rtc.writer(mid)?;
        w.payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }
}

/// A client `Rtc` with one host candidate on `local`.
fn client_rtc(local: SocketAddr) -> Result<Rtc, BotError> {
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false)
        .build(Instant::now());
    let candidate = Candidate::host(local, "udp").map_err(|e| BotError(e.to_string()))?;
    rtc.add_local_candidate(candidate);
    Ok(rtc)
}

async fn bind_local() -> Result<(UdpSocket, SocketAddr), BotError> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| BotError(e.to_string()))?;
    let local = socket.local_addr().map_err(|e| BotError(e.to_string()))?;
    Ok((socket, local))
}

/// A simulcast publisher's layers: rid and the divisor of its frame body.
const SIMULCAST_LAYERS: [(&str, usize); 3] = [("q", 10), ("h", 3), ("f", 1)];

/// Adds send-only video (simulcast if asked) and audio if publishing, and
/// a data channel if not (an offer needs something in it) or if `channel`.
fn add_media(
    rtc: &mut Rtc,
    publish: bool,
    simulcast: bool,
    channel: bool,
) -> (Option<Mid>, Option<Mid>, SdpOffer, SdpPendingOffer) {
    let mut api = rtc.sdp_api();
    let layers = simulcast.then(|| simulcast_send(&SIMULCAST_LAYERS.map(|(rid, _)| rid)));
    let (video, audio) = if publish {
        (
            Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers)),
            Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None)),
        )
    } else {
        (None, None)
    };
    if channel || !publish {
        api.add_channel("cascade".into());
    }
    let (offer, pending) = api.apply().expect("an offer with media or a channel");
    (video, audio, offer, pending)
}

async fn next_signal(
    ws: &mut Option<Signaling>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

/// The bot's loop: socket, str0m timers, the frame ticker, signaling (if
/// any) and the stop signal.
async fn run(
    mut state: State,
    local: SocketAddr,
    mut ws: Option<Signaling>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    mut outgoing: tokio::sync::mpsc::UnboundedReceiver<ClientSignal>,
    mut data: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let socket = state.socket.clone();
    let publish = state.options.publish;
    let mut buf = vec![0u8; 2048];
    let mut ticker = tokio::time::interval(Duration::from_millis(33));
    let mut counter = 0u32;
    let mut wake = state.drain().await;
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, source)) = received else { continue };
                let source = match (state.options.via, state.peer_addr) {
                    (Some(via), Some(peer)) if via == source => peer,
                    _ => source,
                };
                if let Ok(r) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                    let _ = state.rtc.handle_input(Input::Receive(Instant::now(), r));
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let _ = state.rtc.handle_input(Input::Timeout(Instant::now()));
            }
            _ = ticker.tick() => {
                let connected = state.report.lock().map(|r| r.connected).unwrap_or(false);
                if publish && connected {
                    state.send_video(counter, Instant::now());
                    state.drain().await;
                    state.send_audio(counter, Instant::now());
                    counter += 1;
                    if let Ok(mut r) = state.report.lock() { r.frames_sent = counter; }
                }
            }
            frame = next_signal(&mut ws) => match frame {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerSignal>(&text) {
                    Ok(ServerSignal::Offer { sdp }) => {
                        let answer = SdpOffer::from_sdp_string(&sdp)
                            .ok()
                            .and_then(|offer| state.rtc.sdp_api().accept_offer(offer).ok());
                        if let (Some(answer), Some(ws)) = (answer, ws.as_mut()) {
                            let text = serde_json::to_string(&ClientSignal::Answer { sdp: answer.to_sdp_string() }).unwrap_or_default();
                            let _ = ws.send(Message::Text(text.into())).await;
                        }
                    }
                    Ok(ServerSignal::Tracks { tracks }) => {
                        if let Ok(mut r) = state.report.lock() { r.tracks = tracks; }
                    }
                    Ok(ServerSignal::Error { code, message }) => {
                        if let Ok(mut r) = state.report.lock() { r.errors.push(format!("{code}: {message}")); }
                    }
                    Ok(ServerSignal::Speakers { dominant, .. }) => {
                        if let Ok(mut r) = state.report.lock() { r.dominant = dominant; }
                    }
                    Ok(ServerSignal::Layers { layers, estimate_kbps }) => {
                        if let Ok(mut r) = state.report.lock() {
                            r.layers = layers;
                            r.estimate_kbps = estimate_kbps;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    if let (Ok(mut r), Some(frame)) = (state.report.lock(), frame) {
                        r.closed = Some((u16::from(frame.code), frame.reason.to_string()));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            Some(text) = data.recv() => {
                if let Some(mut channel) = state.channel.and_then(|id| state.rtc.channel(id)) {
                    let _ = channel.write(false, text.as_bytes());
                }
            }
            Some(signal) = outgoing.recv() => {
                if let (Some(ws), Ok(text)) = (ws.as_mut(), serde_json::to_string(&signal)) {
                    let _ = ws.send(Message::Text(text.into())).await;
                }
            }
            _ = &mut stopped => {
                if let Some(ws) = ws.as_mut() {
                    let leave = serde_json::to_string(&ClientSignal::Leave).unwrap_or_default();
                    let _ = ws.send(Message::Text(leave.into())).await;
                    let _ = ws.close(None).await;
                }
                break;
            }
        }
        wake = state.drain().await;
    }
}

impl Bot {
    /// Joins with a `POST /v1/calls/{id}/join` response (`edge.signaling_url`
    /// and `token`), publishing video and audio if `publish`.
    pub async fn join(join: &serde_json::Value, publish: bool) -> Result<Bot, BotError> {
        Bot::join_with(join, BotOptions::new(publish)).await
    }

    /// [`Bot::join`] with options.
    pub async fn join_with(join: &serde_json::Value, options: BotOptions) -> Result<Bot, BotError> {
        let url = join["edge"]["signaling_url"]
            .as_str()
            .ok_or_else(|| BotError("no signaling_url".into()))?;
        let token = join["token"]
            .as_str()
            .ok_or_else(|| BotError("no token".into()))?;
        let (socket, local) = bind_local().await?;
        let mut rtc = client_rtc(local)?;
        let (video, audio, offer, pending) = add_media(
            &mut rtc,
            options.publish,
            options.simulcast,
            options.data_channel,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
            .await
            .map_err(|e| BotError(format!("signaling: {e}")))?;
        let offer = serde_json::to_string(&ClientSignal::Offer {
            sdp: offer.to_sdp_string(),
            sources: Default::default(),
        })
        .map_err(|e| BotError(e.to_string()))?;
        ws.send(Message::Text(offer.into()))
            .await
            .map_err(|e| BotError(e.to_string()))?;
        let answer = loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .map_err(|_| BotError("no answer".into()))?
                .ok_or_else(|| BotError("signaling closed".into()))?
                .map_err(|e| BotError(e.to_string()))?;
            if let Message::Text(text) = frame {
                match serde_json::from_str::<ServerSignal>(&text) {
                    Ok(ServerSignal::Answer { sdp }) => break sdp,
                    Ok(ServerSignal::Error { code, message }) => {
                        return Err(BotError(format!("{code}: {message}")));
                    }
                    _ => {}
                }
            }
        };
        let edge_media = answer_candidate(&answer);
        let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| BotError(e.to_string()))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| BotError(e.to_string()))?;
        let bot = Bot::spawn(rtc, socket, local, video, audio, options, Some(ws));
        bot.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .edge_media = edge_media;
        Ok(bot)
    }

    /// Two bots connected to each other with no server between them (both
    /// full ICE over loopback, SDP exchanged in process): a benchmark's
    /// no-SFU baseline.
    pub async fn direct_pair(
        publisher: BotOptions,
        subscriber: BotOptions,
    ) -> Result<(Bot, Bot), BotError> {
        let (pub_socket, pub_local) = bind_local().await?;
        let (sub_socket, sub_local) = bind_local().await?;
        let mut pub_rtc = client_rtc(pub_local)?;
        let mut sub_rtc = client_rtc(sub_local)?;
        let (video, audio, offer, pending) =
            add_media(&mut pub_rtc, true, publisher.simulcast, false);
        let answer = sub_rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| BotError(e.to_string()))?;
        pub_rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| BotError(e.to_string()))?;
        let publisher = BotOptions {
            publish: true,
            ..publisher
        };
        let subscriber = BotOptions {
            publish: false,
            ..subscriber
        };
        Ok((
            Bot::spawn(
                pub_rtc, pub_socket, pub_local, video, audio, publisher, None,
            ),
            Bot::spawn(sub_rtc, sub_socket, sub_local, None, None, subscriber, None),
        ))
    }

    fn spawn(
        rtc: Rtc,
        socket: UdpSocket,
        local: SocketAddr,
        video: Option<Mid>,
        audio: Option<Mid>,
        options: BotOptions,
        ws: Option<Signaling>,
    ) -> Bot {
        let report = Arc::new(Mutex::new(BotReport::default()));
        let state = State {
            rtc,
            socket: Arc::new(socket),
            video,
            audio,
            keyframe_due: true,
            report: report.clone(),
            options,
            peer_addr: None,
            channel: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (signals, outgoing) = tokio::sync::mpsc::unbounded_channel();
        let (data, data_out) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run(state, local, ws, stopped, outgoing, data_out));
        Bot {
            report,
            stop,
            signals,
            data,
            video,
            task,
        }
    }

    /// Sends `text` on its data channel (dropped if it is not open yet:
    /// see [`BotReport::channel_open`]).
    pub fn send_data(&self, text: &str) {
        let _ = self.data.send(text.to_owned());
    }

    /// Asks for at most layer `max` (`q`, `h`, `f`) of the first video it
    /// receives (`layers` on signaling); false while it receives none yet.
    pub fn request_layer(&self, max: &str) -> bool {
        self.request_layer_where(max, |_| true)
    }

    /// [`Bot::request_layer`] for the video of one user.
    pub fn request_layer_of(&self, user: &str, max: &str) -> bool {
        self.request_layer_where(max, |t| t.user_id.to_string() == user)
    }

    fn request_layer_where(&self, max: &str, wanted: impl Fn(&TrackInfo) -> bool) -> bool {
        let report = self.report();
        let Some(video) = report
            .tracks
            .iter()
            .find(|t| t.kind == "video" && wanted(t))
        else {
            return false;
        };
        self.signals
            .send(ClientSignal::Layers {
                mid: video.mid.clone(),
                max: Some(max.to_owned()),
                height: None,
            })
            .is_ok()
    }

    /// Mutes or unmutes its own video (`mute` on signaling).
    pub fn mute_video(&self, muted: bool) {
        if let Some(mid) = self.video {
            let _ = self.signals.send(ClientSignal::Mute {
                mid: mid.to_string(),
                muted,
            });
        }
    }

    /// What it saw so far.
    pub fn report(&self) -> BotReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Leaves the call and stops.
    pub async fn leave(self) -> BotReport {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
