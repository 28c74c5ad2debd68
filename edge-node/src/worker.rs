//! A media worker: the thin async shell around one [`Sfu`]. It owns a UDP
//! socket and the sessions placed on it (a call may spread over several
//! workers: [`crate::mesh`]); signaling sessions talk to it over a
//! channel. Everything that decides is in the core; this only moves bytes,
//! messages and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::signaling::{DataEnvelope, LayerInfo, ServerSignal, SpeakerInfo, TrackInfo};
use str0m::media::MediaKind;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::mesh::{Exports, Mesh, MeshCommand, MeshFrame, MeshTrack, is_mesh_key};
use crate::relay_client::CallData;
use crate::relay_link::{RelayCommand, RelayEvent, WorkerRelay};
use crate::send_batch::SendBatch;
use sfu::{
    CloseReason, JoinError, Output, PeerId, PeerInfo, Sfu, SfuConfig, SfuEvent, Signal, SignalError,
};

/// Most datagrams read from the socket before the core's output is sent.
const RECEIVE_BURST: usize = 32;
/// Datagrams one `recvmmsg` reads (each buffer may hold several with GRO).
const RECEIVE_BATCH: usize = 8;
/// The largest datagram a participant sends (what a buffer holds without
/// GRO; with it, one buffer holds `gro_segments` of them).
const MAX_DATAGRAM: usize = 2048;

/// What a signaling session asks of its worker.
pub enum Command {
    /// A participant joins with its offer.
    Join {
        /// Who (from the join token).
        info: PeerInfo,
        /// The SDP offer.
        offer: String,
        /// What its send m-lines carry, where it said.
        sources: Vec<(String, sfu::Source)>,
        /// Where the worker sends this peer's signaling.
        signals: mpsc::Sender<ServerSignal>,
        /// The answer, or why not.
        reply: oneshot::Sender<Result<(PeerId, String), JoinError>>,
    },
    /// A later offer of the peer (a track added or stopped).
    Offer {
        /// The peer.
        peer: PeerId,
        /// SDP.
        sdp: String,
        /// What its send m-lines carry, where it said.
        sources: Vec<(String, sfu::Source)>,
        /// The answer, or why not.
        reply: oneshot::Sender<Result<String, SignalError>>,
    },
    /// The answer to an edge offer.
    Answer {
        /// The peer.
        peer: PeerId,
        /// SDP.
        sdp: String,
        /// Accepted, or why not.
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    /// The peer mutes one of its tracks or pauses one it receives.
    Track {
        /// The peer.
        peer: PeerId,
        /// The m-line in its session.
        mid: String,
        /// What changes.
        change: TrackChange,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    /// The peer leaves.
    Leave {
        /// The peer.
        peer: PeerId,
    },
    /// The control plane no longer has this session as a participant
    /// here: close its peer, if this worker has it.
    Revoke {
        /// The join token's session.
        session: Uuid,
    },
    /// From the relay link: remote tracks and frames, relay subscriptions.
    Relay(RelayCommand),
}

/// A change to one track of a peer.
#[derive(Debug, Clone)]
pub enum TrackChange {
    /// Its own published track: muted or not.
    Mute(bool),
    /// A track it receives: paused or not.
    Pause(bool),
    /// A video track it receives: the highest layer wanted, by name or by
    /// the rendered height.
    MaxLayer {
        /// `q`, `h` or `f`.
        max: Option<String>,
        /// Pixels.
        height: Option<u32>,
    },
}

/// Numbers a worker shares with the rest of the process (heartbeats read
/// them).
#[derive(Default)]
pub struct WorkerShared {
    /// Participants now.
    pub participants: AtomicU64,
    /// Published tracks now.
    pub tracks: AtomicU64,
    /// Subscriptions now.
    pub subscriptions: AtomicU64,
    /// Datagrams received since start.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent since start.
    pub datagrams_out: AtomicU64,
    /// Bytes received since start.
    pub bytes_in: AtomicU64,
    /// Bytes sent since start.
    pub bytes_out: AtomicU64,
    /// Sessions connected now (join-token `session`s, for heartbeats).
    pub sessions: Mutex<Vec<Uuid>>,
}

/// A running worker.
#[derive(Clone)]
pub struct WorkerHandle {
    /// Its command channel.
    pub commands: mpsc::Sender<Command>,
    /// Relay commands that must not be lost (tracks, subscriptions); the
    /// relay's frames go through `commands`, where a full queue drops them.
    pub relay: mpsc::UnboundedSender<RelayCommand>,
    /// Its media socket's advertised address.
    pub addr: SocketAddr,
    /// Its shared numbers.
    pub shared: Arc<WorkerShared>,
}

/// A session a worker's peer belonged to, reported gone to the control plane.
pub type Gone = PeerInfo;

/// Binds a worker's socket (non-blocking, for the worker's own runtime).
pub fn bind(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Starts a worker on its own thread with a single-threaded runtime: a
/// call's media never crosses threads, and the thread's CPU time is the
/// worker's. The receiver resolves when the worker has stopped.
pub fn spawn(
    worker: Worker,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<oneshot::Receiver<()>> {
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("media-worker-{}", worker.index))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(run(worker, stop)),
                Err(error) => tracing::error!(%error, "media worker runtime"),
            }
            let _ = done.send(());
        })?;
    Ok(stopped)
}

/// User + system CPU seconds from a `/proc/.../stat` file (a process's or
/// a thread's); `None` where there is no such file.
pub fn proc_cpu_secs(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which may contain spaces).
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s.
    Some((utime + stime) / 100.0)
}

/// CPU seconds the calling thread has used.
fn thread_cpu_secs() -> Option<f64> {
    proc_cpu_secs("/proc/thread-self/stat")
}

/// Everything a worker runs with.
pub struct Worker {
    /// Its number on this node (for metrics).
    pub index: usize,
    /// Its media socket (from [`bind`]).
    pub socket: std::net::UdpSocket,
    /// The address its candidates advertise.
    pub advertised: SocketAddr,
    /// Limits and timing of its core.
    pub config: SfuConfig,
    /// Commands from signaling sessions.
    pub commands: mpsc::Receiver<Command>,
    /// Relay commands that must not be lost.
    pub relay_commands: mpsc::UnboundedReceiver<RelayCommand>,
    /// Numbers shared with heartbeats.
    pub shared: Arc<WorkerShared>,
    /// Where ended sessions are reported.
    pub gone: mpsc::UnboundedSender<Gone>,
    /// Node-wide metrics.
    pub metrics: crate::metrics::EdgeMetrics,
    /// The relay link, if the edge has one.
    pub relay: Option<WorkerRelay>,
    /// GSO runs per destination (`EdgeConfig::batch_sends`).
    pub batch_sends: bool,
    /// The node's workers, for calls spread over them.
    pub mesh: Arc<Mesh>,
    /// What other workers ask of this one.
    pub mesh_commands: mpsc::UnboundedReceiver<MeshCommand>,
    /// Frames of other workers' tracks.
    pub mesh_frames: mpsc::Receiver<MeshFrame>,
}

/// Runs a worker until `stop` resolves or every sender is gone.
pub async fn run(worker: Worker, stop: impl std::future::Future<Output = ()>) {
    let Worker {
        index,
        socket,
        advertised,
        config,
        mut commands,
        mut relay_commands,
        shared,
        gone,
        metrics,
        relay,
        batch_sends,
        mesh,
        mut mesh_commands,
        mut mesh_frames,
    } = worker;
    let mut spread = Spreading {
        index,
        mesh,
        exports: Exports::default(),
        relay_tracks: HashMap::new(),
    };
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::error!(%error, "media socket");
            return;
        }
    };
    let worker_label = index.to_string();
    let cpu_counter = metrics
        .worker_cpu
        .with_label_values(&[worker_label.as_str()]);
    let mut cpu_seen = thread_cpu_secs().unwrap_or(0.0);
    let mut cpu_seen_at = Instant::now();
    // The latest a timer ran since the last load report.
    let mut latest_lag = Duration::ZERO;
    // This worker's share of the shed-subscribers gauge.
    let mut shed_mine = 0i64;
    let mut cpu_tick = tokio::time::interval(Duration::from_secs(1));
    // Whether the last pass handled an overdue timer without waiting (the
    // next one waits, so a stream of due timers cannot starve the socket).
    let mut handled_overdue = false;
    let mut sfu = Sfu::new(config, advertised, Instant::now());
    let mut counted = sfu.stats();
    // This worker's share of the node-wide gauges.
    let (mut participants, mut tracks, mut subscriptions) = (0i64, 0i64, 0i64);
    // Its share of the video-layer gauges (q, h, f, none).
    let mut layers = [0i64; 4];
    let mut signals: HashMap<PeerId, mpsc::Sender<ServerSignal>> = HashMap::new();
    let mut sessions: HashMap<PeerId, Uuid> = HashMap::new();
    // The socket's batched sends (UDP GSO where the kernel has it; else
    // one datagram per call, as before).
    let udp = match quinn_udp::UdpSocketState::new((&socket).into()) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(%error, "media socket: no batched sends, one datagram per call");
            None
        }
    };
    let mut batch = SendBatch::default();
    let mut receive = ReceiveBuffers::new(udp.as_ref());
    tokio::pin!(stop);
    loop {
        // Out with everything the core produced; it then says when to wake.
        let wake = loop {
            match sfu.poll_output() {
                Output::Timeout(at) => break at,
                Output::Transmit(t) if batch_sends => batch.push(t.destination, t.contents),
                Output::Transmit(t) => {
                    metrics.send_calls.inc();
                    if let Err(error) = socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(%error, destination = %t.destination, "send failed");
                    }
                }
                Output::Signal(peer, signal) => {
                    if let Some(tx) = signals.get(&peer)
                        && tx.try_send(server_signal(signal)).is_err()
                    {
                        tracing::warn!(peer, "signaling session not keeping up; closing it");
                        sfu.leave(Instant::now(), peer);
                    }
                }
                Output::Relay(packet) => {
                    if let Some(r) = &relay {
                        r.uplink.send_packet(packet);
                    }
                }
                Output::Export(packet) => {
                    let track = packet.track;
                    let exported = spread.exports.packet(&spread.mesh, packet);
                    if exported.sent > 0 {
                        metrics.mesh_frames.inc_by(exported.sent as u64);
                    }
                    if exported.dropped > 0 {
                        metrics.mesh_frames_dropped.inc_by(exported.dropped as u64);
                    }
                    if exported.keyframe_needed {
                        sfu.relay_keyframe_request(Instant::now(), track);
                    }
                }
                Output::Data(message) => {
                    let data = CallData {
                        call: message.call,
                        user: message.user,
                        device: message.device,
                        binary: message.binary,
                        payload: message.payload.to_vec(),
                    };
                    let envelope = data_envelope(&data);
                    let now = Instant::now();
                    sfu.deliver_data(
                        now,
                        data.call,
                        Some(message.from),
                        false,
                        envelope.as_bytes(),
                    );
                    spread.mesh.share_data(index, &data);
                    relay_event(&relay, RelayEvent::Data(data));
                }
                Output::Event(event) => {
                    let Some(event) = spread.event(&mut sfu, &relay, event) else {
                        continue;
                    };
                    on_event(
                        event,
                        index,
                        &relay,
                        &shared,
                        &gone,
                        &mut signals,
                        &mut sessions,
                    );
                }
            }
        };
        if !batch.is_empty() {
            send_batch(&socket, udp.as_ref(), &mut batch, &metrics).await;
        }
        let now = Instant::now();
        // A timer already due runs at once: the runtime's timer would round
        // it up to its next millisecond tick.
        if wake <= now && !handled_overdue {
            handled_overdue = true;
            let lag = now.saturating_duration_since(wake);
            latest_lag = latest_lag.max(lag);
            metrics.loop_lag.observe(lag.as_secs_f64());
            sfu.handle_timeout(now);
        } else {
            handled_overdue = false;
            tokio::select! {
                readable = socket.readable() => {
                    if readable.is_ok() {
                        // A burst (a video frame is several packets) before
                        // the core is polled: it sends what the burst wrote
                        // to each subscriber in one go.
                        receive_burst(&socket, udp.as_ref(), &mut receive, &mut sfu);
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    let lag = now.saturating_duration_since(wake);
                    latest_lag = latest_lag.max(lag);
                    metrics.loop_lag.observe(lag.as_secs_f64());
                    sfu.handle_timeout(now);
                }
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Join { info, offer, sources, signals: tx, reply }) => {
                        let session = info.session;
                        let result = sfu.join(Instant::now(), info, &offer, &sources);
                        if let Ok((peer, _)) = &result {
                            signals.insert(*peer, tx);
                            sessions.insert(*peer, session);
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::Offer { peer, sdp, sources, reply }) => {
                        let _ = reply.send(sfu.handle_offer(Instant::now(), peer, &sdp, &sources));
                    }
                    Some(Command::Answer { peer, sdp, reply }) => {
                        let _ = reply.send(sfu.handle_answer(Instant::now(), peer, &sdp));
                    }
                    Some(Command::Track { peer, mid, change, reply }) => {
                        let now = Instant::now();
                        let _ = reply.send(match change {
                            TrackChange::Mute(muted) => sfu.set_muted(now, peer, &mid, muted),
                            TrackChange::Pause(paused) => sfu.set_paused(now, peer, &mid, paused),
                            TrackChange::MaxLayer { max, height } => {
                                sfu.set_max_layer(now, peer, &mid, max.as_deref(), height)
                            }
                        });
                    }
                    Some(Command::Leave { peer }) => sfu.leave(Instant::now(), peer),
                    Some(Command::Revoke { session }) => {
                        if sfu.revoke(Instant::now(), session) {
                            tracing::info!(%session, "session revoked by the control plane");
                        }
                    }
                    Some(Command::Relay(command)) => spread.relay_command(&mut sfu, command),
                },
                Some(command) = relay_commands.recv() => spread.relay_command(&mut sfu, command),
                Some(command) = mesh_commands.recv() => spread.command(&mut sfu, command),
                Some(frame) = mesh_frames.recv() => {
                    sfu.remote_packets(Instant::now(), frame.key, &frame.packets, frame.after_gap);
                }
                _ = cpu_tick.tick() => {
                    if let Some(cpu) = thread_cpu_secs() {
                        let used = (cpu - cpu_seen).max(0.0);
                        cpu_counter.inc_by(used);
                        cpu_seen = cpu;
                        // The share of the last tick this thread was busy:
                        // an overloaded worker sheds video, not queues.
                        let now = Instant::now();
                        let wall = now.saturating_duration_since(cpu_seen_at).as_secs_f64();
                        cpu_seen_at = now;
                        if wall > 0.5 {
                            sfu.report_load(now, used / wall, std::mem::take(&mut latest_lag));
                        }
                    }
                    let shed = sfu.shed_subscribers() as i64;
                    metrics.shed_subscribers.add(shed - shed_mine);
                    shed_mine = shed;
                    metrics.media(&sfu.media_summary(), &mut layers);
                }
                () = &mut stop => break,
            }
        }
        let stats = sfu.stats();
        if stats != counted {
            metrics.add(&counted, &stats);
            counted = stats;
            shared
                .datagrams_in
                .store(stats.datagrams_in, Ordering::Relaxed);
            shared
                .datagrams_out
                .store(stats.datagrams_out, Ordering::Relaxed);
            shared.bytes_in.store(stats.bytes_in, Ordering::Relaxed);
            shared.bytes_out.store(stats.bytes_out, Ordering::Relaxed);
        }
        // Read once per pass (`subscriptions` walks every peer), then
        // shared with heartbeats and added to the node-wide gauges.
        for (now, shared_value, gauge, mine) in [
            (
                sfu.participants() as i64,
                &shared.participants,
                &metrics.participants,
                &mut participants,
            ),
            (
                sfu.tracks() as i64,
                &shared.tracks,
                &metrics.tracks,
                &mut tracks,
            ),
            (
                sfu.subscriptions() as i64,
                &shared.subscriptions,
                &metrics.subscriptions,
                &mut subscriptions,
            ),
        ] {
            shared_value.store(now as u64, Ordering::Relaxed);
            gauge.add(now - *mine);
            *mine = now;
        }
    }
    // Leave the node-wide gauges as if this worker had never been.
    metrics.media(&sfu::MediaSummary::default(), &mut layers);
    metrics.participants.sub(participants);
    metrics.shed_subscribers.sub(shed_mine);
    metrics.tracks.sub(tracks);
    metrics.subscriptions.sub(subscriptions);
}

/// Where a worker reads datagrams: `RECEIVE_BATCH` buffers for one
/// `recvmmsg`, each big enough for what GRO may coalesce into it (the
/// kernel truncates what does not fit).
struct ReceiveBuffers {
    buffers: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl ReceiveBuffers {
    fn new(udp: Option<&quinn_udp::UdpSocketState>) -> Self {
        let (count, size) = match udp {
            Some(state) => (RECEIVE_BATCH, MAX_DATAGRAM * state.gro_segments().max(1)),
            None => (1, MAX_DATAGRAM),
        };
        ReceiveBuffers {
            buffers: vec![vec![0u8; size]; count],
            meta: vec![quinn_udp::RecvMeta::default(); count],
        }
    }
}

/// Reads up to [`RECEIVE_BURST`] datagrams that are already waiting into
/// the core (batched with `recvmmsg`, GRO runs cut at their stride).
fn receive_burst(
    socket: &UdpSocket,
    udp: Option<&quinn_udp::UdpSocketState>,
    receive: &mut ReceiveBuffers,
    sfu: &mut Sfu,
) {
    let now = Instant::now();
    let mut taken = 0;
    while taken < RECEIVE_BURST {
        let Some(state) = udp else {
            let buffer = &mut receive.buffers[0];
            match socket.try_recv_from(buffer) {
                Ok((n, source)) => {
                    sfu.handle_receive(now, source, &buffer[..n]);
                    taken += 1;
                    continue;
                }
                Err(_) => return,
            }
        };
        let read = {
            // On the stack: no allocation per read.
            let mut buffers = receive.buffers.iter_mut();
            let mut slices: [std::io::IoSliceMut<'_>; RECEIVE_BATCH] = std::array::from_fn(|_| {
                std::io::IoSliceMut::new(buffers.next().map_or(&mut [][..], |b| b.as_mut_slice()))
            });
            socket.try_io(tokio::io::Interest::READABLE, || {
                state.recv(socket.into(), &mut slices, &mut receive.meta)
            })
        };
        let Ok(count) = read else {
            return;
        };
        for (meta, buffer) in receive.meta.iter().zip(&receive.buffers).take(count) {
            let stride = if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            };
            for datagram in buffer[..meta.len].chunks(stride.max(1)) {
                sfu.handle_receive(now, meta.addr, datagram);
                taken += 1;
            }
        }
    }
}

/// Sends one pass's datagrams, regrouped into GSO runs per destination.
async fn send_batch(
    socket: &UdpSocket,
    udp: Option<&quinn_udp::UdpSocketState>,
    batch: &mut SendBatch,
    metrics: &crate::metrics::EdgeMetrics,
) {
    batch.seal(udp.map_or(1, quinn_udp::UdpSocketState::max_gso_segments));
    for run in batch.runs() {
        let contents = &batch.buffer()[run.bytes.clone()];
        metrics.send_calls.inc();
        let sent = match udp {
            Some(state) => {
                let transmit = quinn_udp::Transmit {
                    destination: run.destination,
                    ecn: None,
                    contents,
                    segment_size: run.segment,
                    src_ip: None,
                };
                // `send` logs (rate-limited) and swallows what is not
                // "try again"; that one waits for the socket.
                socket
                    .async_io(tokio::io::Interest::WRITABLE, || {
                        state.send(socket.into(), &transmit)
                    })
                    .await
            }
            None => socket.send_to(contents, run.destination).await.map(drop),
        };
        if let Err(error) = sent {
            tracing::debug!(%error, destination = %run.destination, "send failed");
        }
    }
}

/// What receivers get on their data channel for a data message (the
/// signaling contract's envelope, one JSON text message).
fn data_envelope(data: &CallData) -> String {
    use base64::Engine;
    let payload = &data.payload;
    // Text that is not UTF-8 (a client's bug) goes as bytes.
    let text = (!data.binary)
        .then(|| std::str::from_utf8(payload).ok())
        .flatten();
    let envelope = DataEnvelope {
        kind: "data".into(),
        user_id: data.user,
        device_id: data.device.clone(),
        text: text.map(str::to_owned),
        base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(payload)),
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// The wire form of a core signal.
fn server_signal(signal: Signal) -> ServerSignal {
    match signal {
        Signal::Offer(sdp) => ServerSignal::Offer { sdp },
        Signal::Speakers { dominant, active } => {
            let info = |s: sfu::Speaker| SpeakerInfo {
                user_id: s.user,
                device_id: s.device,
                level: s.level,
            };
            ServerSignal::Speakers {
                dominant: dominant.map(info),
                active: active.into_iter().map(info).collect(),
            }
        }
        Signal::Encodings { mid, active } => ServerSignal::Encodings { mid, active },
        Signal::Refused { code, message } => ServerSignal::Error {
            code: code.to_owned(),
            message,
        },
        Signal::Layers(layers, estimate) => ServerSignal::Layers {
            layers: layers
                .into_iter()
                .map(|l| LayerInfo {
                    mid: l.mid,
                    layer: l.layer.map(str::to_owned),
                    target: l.target.map(str::to_owned),
                    available: l.available.into_iter().map(str::to_owned).collect(),
                    max: l.max.to_owned(),
                })
                .collect(),
            estimate_kbps: estimate.map(|bps| bps / 1000),
        },
        Signal::Tracks(tracks) => ServerSignal::Tracks {
            tracks: tracks
                .into_iter()
                .map(|t| TrackInfo {
                    mid: t.mid,
                    kind: if t.kind == MediaKind::Video {
                        "video"
                    } else {
                        "audio"
                    }
                    .to_owned(),
                    user_id: t.user,
                    device_id: t.device,
                    source: t.source.name().to_owned(),
                    muted: t.muted,
                    paused: t.paused,
                })
                .collect(),
        },
    }
}

/// Acts on an event of the core: sessions for heartbeats, ended sessions
/// for the control plane, calls and tracks for the relay.
fn on_event(
    event: SfuEvent,
    index: usize,
    relay: &Option<WorkerRelay>,
    shared: &WorkerShared,
    gone: &mpsc::UnboundedSender<Gone>,
    signals: &mut HashMap<PeerId, mpsc::Sender<ServerSignal>>,
    sessions: &mut HashMap<PeerId, Uuid>,
) {
    match event {
        SfuEvent::Connected(peer) => {
            if let Some(session) = sessions.get(&peer) {
                lock(&shared.sessions).push(*session);
            }
        }
        SfuEvent::Closed { peer, info, reason } => {
            if let Some(tx) = signals.remove(&peer)
                && reason != CloseReason::Gone
            {
                // The client hears why before its socket closes.
                let _ = tx.try_send(ServerSignal::Error {
                    code: reason.code().into(),
                    message: match reason {
                        CloseReason::Replaced => "the same join token opened a newer session",
                        CloseReason::ConnectTimeout => "ICE and DTLS did not connect in time",
                        CloseReason::Revoked => "no longer a participant of this call here",
                        CloseReason::Gone => "",
                    }
                    .into(),
                });
            }
            sessions.remove(&peer);
            lock(&shared.sessions).retain(|s| *s != info.session);
            if reason.ends_session() {
                let _ = gone.send(info);
            }
        }
        SfuEvent::CallActive(call) => relay_event(
            relay,
            RelayEvent::CallActive {
                worker: index,
                call,
            },
        ),
        SfuEvent::CallIdle(call) => relay_event(relay, RelayEvent::CallIdle(call)),
        SfuEvent::TrackPublished {
            track,
            call,
            kind,
            source,
            codec,
            user,
            device,
            layers,
        } => relay_event(
            relay,
            RelayEvent::TrackPublished {
                worker: index,
                track,
                call,
                kind,
                source,
                codec,
                user,
                device,
                layers,
            },
        ),
        SfuEvent::TrackEnded(track) => relay_event(
            relay,
            RelayEvent::TrackEnded {
                worker: index,
                track,
            },
        ),
        SfuEvent::RemoteLayers { key, layers } => {
            relay_event(relay, RelayEvent::RemoteLayers { key, layers });
        }
        SfuEvent::RemoteKeyframeRequest { key, .. } => {
            relay_event(relay, RelayEvent::KeyframeRequest(key));
        }
        SfuEvent::TrackMuted { track, muted } => relay_event(
            relay,
            RelayEvent::TrackMuted {
                worker: index,
                track,
                muted,
            },
        ),
    }
}

fn relay_event(relay: &Option<WorkerRelay>, event: RelayEvent) {
    if let Some(r) = relay {
        let _ = r.events.send(event);
    }
}

/// This worker's part in calls spread over the node's workers
/// ([`crate::mesh`]): its tracks' exports, and the relay's tracks it
/// shares with the others.
struct Spreading {
    index: usize,
    mesh: Arc<Mesh>,
    exports: Exports,
    /// Tracks the relay gave this worker, by the relay's key: the other
    /// workers of their call get them from here.
    relay_tracks: HashMap<u32, sfu::TrackId>,
}

impl Spreading {
    /// Acts on what the mesh must hear of an event; returns the event
    /// when the rest of the shell (the relay, heartbeats) must hear it too.
    fn event(
        &mut self,
        sfu: &mut Sfu,
        relay: &Option<WorkerRelay>,
        event: SfuEvent,
    ) -> Option<SfuEvent> {
        let index = self.index;
        let now = Instant::now();
        match event {
            SfuEvent::CallActive(call) => {
                let imports = {
                    let mut spread = self.mesh.spread();
                    let (relay_home, imports) = spread.call_active(index, call);
                    // Under the lock: the relay hears of the call's
                    // workers in the order the mesh changed.
                    if relay_home {
                        relay_event(
                            relay,
                            RelayEvent::CallActive {
                                worker: index,
                                call,
                            },
                        );
                    }
                    imports
                };
                for track in imports {
                    self.import(sfu, now, track);
                }
                None
            }
            SfuEvent::CallIdle(call) => {
                let idle = {
                    let mut spread = self.mesh.spread();
                    let idle = spread.call_idle(index, call);
                    if idle.was_relay_home {
                        relay_event(relay, RelayEvent::CallIdle(call));
                        if let Some(worker) = idle.new_relay_home {
                            relay_event(relay, RelayEvent::CallActive { worker, call });
                        }
                    }
                    idle
                };
                for (origin, track, key) in idle.unsubscribe {
                    self.mesh.want(origin, track, index, key, 0);
                }
                for (key, track, workers) in idle.removed {
                    self.exports.forget(track);
                    self.relay_tracks.retain(|_, t| *t != track);
                    self.mesh.tell_all(&workers, &MeshCommand::Remove(key));
                }
                None
            }
            SfuEvent::TrackPublished {
                track,
                call,
                kind,
                source,
                user,
                ref device,
                layers,
                ..
            } => {
                self.publish(
                    track,
                    MeshTrack::new(call, kind, source, user, device.clone(), layers),
                );
                Some(event)
            }
            SfuEvent::TrackEnded(track) => {
                self.unpublish(track);
                Some(event)
            }
            SfuEvent::TrackMuted { track, muted } => {
                self.muted(track, muted);
                Some(event)
            }
            SfuEvent::RemoteLayers { key, layers } if is_mesh_key(key) => {
                let origin = self.mesh.spread().origin(key);
                if let Some((origin, track)) = origin {
                    self.mesh.want(origin, track, index, key, layers);
                }
                None
            }
            SfuEvent::RemoteKeyframeRequest { key, .. } if is_mesh_key(key) => {
                let origin = self.mesh.spread().origin(key);
                if let Some((origin, track)) = origin {
                    self.mesh.tell(origin, MeshCommand::Keyframe(track));
                }
                None
            }
            event => Some(event),
        }
    }

    /// Adds another worker's track to this core, and asks for every layer
    /// of it until the core says which it needs (as the relay does).
    fn import(&mut self, sfu: &mut Sfu, now: Instant, t: MeshTrack) {
        let added = sfu.add_remote_track(
            now,
            t.key,
            t.call,
            t.kind,
            t.source,
            t.user,
            t.device.clone(),
            t.layers,
        );
        if !added {
            return;
        }
        if t.muted {
            sfu.set_remote_muted(now, t.key, true);
        }
        let layers = ((1u16 << t.layers.clamp(1, 7)) - 1) as u8;
        self.mesh.want(t.origin, t.track, self.index, t.key, layers);
    }

    /// A track of this worker (its participant's or the relay's) joined
    /// its call: the other workers of the call add it.
    fn publish(&mut self, track: sfu::TrackId, announce: MeshTrack) {
        let (announce, workers) = self.mesh.spread().track_added(self.index, track, announce);
        self.mesh.tell_all(&workers, &MeshCommand::Add(announce));
    }

    fn unpublish(&mut self, track: sfu::TrackId) {
        self.exports.forget(track);
        let ended = self.mesh.spread().track_ended(self.index, track);
        if let Some((key, workers)) = ended {
            self.mesh.tell_all(&workers, &MeshCommand::Remove(key));
        }
    }

    fn muted(&mut self, track: sfu::TrackId, muted: bool) {
        let changed = self.mesh.spread().track_muted(self.index, track, muted);
        if let Some((key, workers)) = changed {
            self.mesh
                .tell_all(&workers, &MeshCommand::Muted { key, muted });
        }
    }

    /// What another worker asks.
    fn command(&mut self, sfu: &mut Sfu, command: MeshCommand) {
        let now = Instant::now();
        match command {
            MeshCommand::Add(track) => self.import(sfu, now, track),
            MeshCommand::Remove(key) => sfu.remove_remote_track(now, key),
            MeshCommand::Muted { key, muted } => sfu.set_remote_muted(now, key, muted),
            MeshCommand::Layers {
                track,
                to,
                key,
                layers,
            } => {
                let all = self.exports.set(track, to, key, layers);
                sfu.set_export_layers(now, track, all);
            }
            MeshCommand::Keyframe(track) => sfu.relay_keyframe_request(now, track),
            MeshCommand::Data(data) => {
                let envelope = data_envelope(&data);
                sfu.deliver_data(now, data.call, None, false, envelope.as_bytes());
            }
        }
    }

    /// What the relay link asks.
    fn relay_command(&mut self, sfu: &mut Sfu, command: RelayCommand) {
        let now = Instant::now();
        match command {
            RelayCommand::AddRemoteTrack {
                key,
                call,
                kind,
                source,
                user,
                device,
                layers,
            } => {
                let known = self.relay_tracks.contains_key(&key);
                let added = sfu.add_remote_track(
                    now,
                    key,
                    call,
                    kind,
                    source,
                    user,
                    device.clone(),
                    layers,
                );
                if let (false, true, Some(id)) = (known, added, sfu.remote_track_id(key)) {
                    self.relay_tracks.insert(key, id);
                    let announce = MeshTrack::new(call, kind, source, user, device, layers);
                    self.publish(id, announce);
                }
            }
            RelayCommand::RemoveRemoteTrack(key) => {
                sfu.remove_remote_track(now, key);
                if let Some(id) = self.relay_tracks.remove(&key) {
                    self.unpublish(id);
                }
            }
            RelayCommand::RemoteMuted { key, muted } => {
                sfu.set_remote_muted(now, key, muted);
                if let Some(id) = self.relay_tracks.get(&key).copied() {
                    self.muted(id, muted);
                }
            }
            RelayCommand::RemoteFrame {
                key,
                packets,
                after_gap,
            } => sfu.remote_packets(now, key, &packets, after_gap),
            RelayCommand::Subscribed {
                track,
                alias,
                layers,
            } => sfu.set_relay_subscribed(now, track, alias, layers),
            RelayCommand::KeyframeRequest(track) => sfu.relay_keyframe_request(now, track),
            RelayCommand::Data(data) => {
                if data.payload.len() <= sfu::MAX_DATA_MESSAGE {
                    let envelope = data_envelope(&data);
                    sfu.deliver_data(now, data.call, None, false, envelope.as_bytes());
                    self.mesh.share_data(self.index, &data);
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
