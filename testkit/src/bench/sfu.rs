//! `cascade bench sfu`: one publisher (VP8 at a set bitrate + Opus) to N
//! subscribers through a real edge, ramped, side by side with the same load
//! through a raw UDP forwarder in the same run. With `calls` and
//! `publishers`, the step's N subscribers are dealt over that many calls,
//! each with that many publishers, and every subscriber receives all of its
//! call's (the raw forwarders keep the one-publisher shape: their rows
//! compare the cost per datagram, not the same packet rate).
//!
//! - The control plane and the edge run as child processes (this binary),
//!   so the edge's CPU time and memory are its own (read from `/proc`). The
//!   edge runs one media worker: a call is pinned to one worker anyway, so
//!   this is the per-core figure.
//! - Bots are the testkit's str0m clients in this process. They get tokens
//!   from the real API and check every frame byte for byte.
//! - Latency is per video frame: from the publisher's `write` to the
//!   subscriber's complete frame, both in this process on one clock. The
//!   same two bots connected directly (no SFU) give the baseline that is
//!   subtracted; that removes the clients' own packetizing, encryption and
//!   scheduling.
//! - The raw forwarder is a thread with a blocking UDP socket that copies
//!   each datagram to every subscriber: no crypto, no RTP, no WebRTC. It is
//!   the floor this machine sets. Its packets are sized like the edge's.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::{ChildService, Measurement, cpu_secs, proc_stat};
use crate::bot::{Bot, BotOptions, FrameNumbering, LatencyProbe};
use crate::client::{ApiClient, TestUser};

/// What to run.
#[derive(Debug, Clone)]
pub struct SfuBenchOptions {
    /// Subscriber counts, in ramp order.
    pub subscribers: Vec<usize>,
    /// How long each step is measured.
    pub step: Duration,
    /// The publisher's video bitrate, kbit/s (30 frames per second).
    pub video_kbps: u32,
    /// The publisher sends simulcast (its top layer at `video_kbps`) and
    /// the subscribers ask for the layers q, h, f in turn.
    pub simulcast: bool,
    /// The edge's media workers.
    pub workers: usize,
    /// Its `spread_calls_above`.
    pub spread_above: usize,
    /// Calls the subscribers are spread over (subscriber i in call i %
    /// calls).
    pub calls: usize,
    /// Publishers in each call; every subscriber receives all of its
    /// call's.
    pub publishers: usize,
    /// Pins the edge to CPUs `0..workers` and the load generator and
    /// control plane to the others, so that neither takes the other's
    /// cores (it needs more CPUs than workers).
    pub pin_cpus: bool,
}

/// One step of the ramp through one forwarder.
#[derive(Debug, Clone)]
pub struct SfuStep {
    /// `edge` or `raw UDP`.
    pub path: &'static str,
    /// Subscribers.
    pub subscribers: usize,
    /// Datagrams the forwarder sent per second.
    pub sent_per_sec: f64,
    /// Mean size of those datagrams, bytes.
    pub mean_datagram_bytes: f64,
    /// Datagrams per send call (1: one `sendto` each; more with GSO).
    pub datagrams_per_send: f64,
    /// The forwarder's CPU time over wall time (1.0: one core busy).
    pub cpu_share: f64,
    /// Frame latency, publisher write → subscriber complete frame.
    pub latency: Measurement,
    /// Frames that arrived over frames the subscribers should have got.
    pub delivered: f64,
    /// The same for audio packets (the edge only).
    pub audio_delivered: Option<f64>,
    /// Subscribers whose video the edge shed for overload at the step's
    /// end, and the shed steps taken during it (the edge only).
    pub shed: Option<(u64, u64)>,
    /// Heap allocations the edge made per datagram it sent (bench builds
    /// count them; `None` for the raw forwarders or an uncounted edge).
    pub allocations_per_datagram: Option<f64>,
    /// Timeouts the edge handed its sessions per datagram it sent (`None`
    /// for the raw forwarders).
    pub timeouts_per_datagram: Option<f64>,
    /// The forwarder's resident memory, bytes.
    pub rss: u64,
    /// This process's (the load generator's) CPU share.
    pub loadgen_cpu_share: f64,
}

impl SfuStep {
    /// Datagrams sent per second of forwarder CPU time: the rate one core
    /// would sustain at this per-packet cost.
    pub fn per_core(&self) -> f64 {
        if self.cpu_share > 0.0 {
            self.sent_per_sec / self.cpu_share
        } else {
            0.0
        }
    }
}

/// Results of one run.
#[derive(Debug)]
pub struct SfuBenchReport {
    /// Str0m publisher → str0m subscriber, directly.
    pub direct_webrtc: Measurement,
    /// UDP sender → UDP receiver, directly.
    pub direct_udp: Measurement,
    /// The edge's steps.
    pub edge: Vec<SfuStep>,
    /// The raw forwarder's steps (one `sendto` per datagram).
    pub raw: Vec<SfuStep>,
    /// The batched raw forwarder's steps (a frame's datagrams to one
    /// subscriber in one UDP GSO send).
    pub raw_batched: Vec<SfuStep>,
    /// The edge's resident memory with no participant, bytes.
    pub edge_idle_rss: u64,
    /// Frame body bytes used (delta frames).
    pub delta_body: usize,
    /// Publishers on the edge in every step (all calls together).
    pub publishers: usize,
}

const SECRET: &str = "bench-cluster-secret";
const EDGE_ID: &str = "bench-edge";
/// Payload bytes per raw datagram: what str0m puts in one RTP packet of
/// these frames (measured: the edge's mean video datagram is ~1.1 kB).
const RAW_CHUNK: usize = 1100;

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Sets the CPU affinity of `id` with util-linux's `taskset`: a process
/// and all its threads, or one thread (a thread id). Threads started later
/// inherit it.
fn pin(id: &str, cpus: &str, whole_process: bool) {
    let mut args = vec!["-p", "-c", cpus, id];
    if whole_process {
        args.insert(0, "-a");
    }
    let status = std::process::Command::new("taskset")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "taskset {} failed (is util-linux installed?)",
        args.join(" ")
    );
}

/// Reads one counter from a Prometheus text page.
fn scrape(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The edge's counters one step reads before and after.
#[derive(Debug, Clone, Copy)]
struct EdgeCounters {
    datagrams: f64,
    bytes: f64,
    send_calls: f64,
    sheds: f64,
    shed_now: f64,
    session_timeouts: f64,
    /// `None` when the edge does not count them.
    allocations: Option<f64>,
}

async fn edge_counters(http: &reqwest::Client, metrics_url: &str) -> EdgeCounters {
    let page = match http.get(metrics_url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    EdgeCounters {
        datagrams: scrape(&page, "cascade_edge_datagrams_sent_total"),
        bytes: scrape(&page, "cascade_edge_sent_bytes_total"),
        send_calls: scrape(&page, "cascade_edge_send_calls_total"),
        sheds: scrape(&page, "cascade_edge_overload_sheds_total"),
        shed_now: scrape(&page, "cascade_edge_shed_subscribers"),
        session_timeouts: scrape(&page, "cascade_edge_session_timeouts_total"),
        allocations: page
            .contains("\ncascade_heap_allocations_total ")
            .then(|| scrape(&page, "cascade_heap_allocations_total")),
    }
}

/// Runs the benchmark.
pub async fn run(options: &SfuBenchOptions) -> SfuBenchReport {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    str0m::crypto::from_feature_flags().install_process_default();
    let max = options
        .subscribers
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    // 30 frames per second; the frame header is 11 bytes.
    let delta_body = (options.video_kbps as usize * 1000 / 8 / 30)
        .saturating_sub(11)
        .max(100);
    let bot_options = |probe: &Arc<LatencyProbe>, publish| BotOptions {
        publish,
        delta_body,
        keyframe_body: delta_body * 3,
        probe: Some(probe.clone()),
        simulcast: false,
        via: None,
        audio_level: None,
        data_channel: false,
        numbering: FrameNumbering::default(),
    };

    // Baseline: the same bots, directly connected.
    let probe = LatencyProbe::new();
    let (publisher, subscriber) =
        Bot::direct_pair(bot_options(&probe, true), bot_options(&probe, false))
            .await
            .expect("a direct pair connects");
    assert!(
        wait_for_frames(&[&subscriber], Duration::from_secs(10)).await,
        "the direct subscriber got no video within 10 s"
    );
    probe.start();
    let began = Instant::now();
    tokio::time::sleep(options.step).await;
    let direct_webrtc =
        Measurement::from_samples("direct str0m → str0m", probe.take(), 0, began.elapsed());
    publisher.leave().await;
    subscriber.leave().await;

    // The calls' shape: each holds its publishers and its share of the
    // subscribers (subscriber i is in call i % calls).
    let calls = options.calls.max(1);
    let per_call = options.publishers.max(1);
    let publisher_count = calls * per_call;
    let call_size = per_call + max.div_ceil(calls);

    // The cluster.
    let scratch = std::env::temp_dir().join(format!("cascade-bench-sfu-{}", std::process::id()));
    let control_plane = ChildService::spawn(
        "control-plane",
        "warn,control_plane::app=info",
        &env(&[
            (
                "CASCADE_CONTROL_PLANE__DATA_DIR",
                scratch.to_string_lossy().into_owned(),
            ),
            ("CASCADE_CONTROL_PLANE__LISTEN", "127.0.0.1:0".into()),
            ("CASCADE_CONTROL_PLANE__CLUSTER__SECRET", SECRET.into()),
            (
                "CASCADE_CONTROL_PLANE__LIMITS__MAX_GROUP_MEMBERS",
                (call_size + 1).to_string(),
            ),
            (
                "CASCADE_CONTROL_PLANE__AUTH__ARGON2_MEMORY_KIB",
                "1024".into(),
            ),
            ("CASCADE_CONTROL_PLANE__AUTH__ARGON2_ITERATIONS", "1".into()),
            // Every bot signs up from 127.0.0.1.
            (
                "CASCADE_CONTROL_PLANE__RATE_LIMITS__SIGNUPS_PER_ADDRESS",
                "{limit = 100000, window_secs = 3600}".into(),
            ),
        ]),
        "control plane bound",
        "addr",
    );
    let edge = ChildService::spawn(
        "edge",
        "warn,edge_node::app=info",
        &env(&[
            ("CASCADE_EDGE__NODE_ID", EDGE_ID.into()),
            ("CASCADE_EDGE__LISTEN", "127.0.0.1:0".into()),
            ("CASCADE_EDGE__WORKERS", options.workers.to_string()),
            (
                "CASCADE_EDGE__SPREAD_CALLS_ABOVE",
                options.spread_above.to_string(),
            ),
            (
                "CASCADE_EDGE__CAPACITY",
                (max + publisher_count + 10).to_string(),
            ),
            (
                "CASCADE_EDGE__MAX_PARTICIPANTS_PER_CALL",
                (call_size + 1).to_string(),
            ),
            (
                "CASCADE_EDGE__CONTROL_PLANE_URL",
                format!("http://{}", control_plane.addr),
            ),
            (
                "CASCADE_EDGE__CREDENTIAL",
                control_plane::api::node_credential(SECRET, EDGE_ID),
            ),
            ("CASCADE_EDGE__HEARTBEAT_INTERVAL_SECS", "1".into()),
        ]),
        "edge bound",
        "http",
    );
    let api = ApiClient::new(&control_plane.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = api
            .call(Method::GET, "/internal/v1/nodes", Some(SECRET), None)
            .await
            .body;
        if nodes
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == EDGE_ID))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the edge never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With pinning, the raw forwarders' thread takes the edge's CPUs.
    let mut pinned = None;
    if options.pin_cpus {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let edge_cpus = format!("0-{}", options.workers.max(1) - 1);
        let other_cpus = format!("{}-{}", options.workers.max(1), cpus.saturating_sub(1));
        pin(&edge.pid().to_string(), &edge_cpus, true);
        pin(&control_plane.pid().to_string(), &other_cpus, true);
        pin(&std::process::id().to_string(), &other_cpus, true);
        eprintln!(
            "pinned: the edge (and the raw forwarders) to CPUs {edge_cpus}, the load generator and control plane to {other_cpus}"
        );
        pinned = Some(edge_cpus);
    }
    let metrics_url = format!("http://{}/metrics", edge.addr);
    let (edge_idle_rss, _) = proc_stat(edge.pid());

    // The calls, each a group.
    let mut call_ids = Vec::new();
    let mut members: Vec<Vec<TestUser>> = Vec::new();
    for c in 0..calls {
        let mut users: Vec<TestUser> = Vec::new();
        for i in 0..call_size {
            users.push(api.register(&format!("bench{c:03}x{i:04}")).await);
        }
        let others: Vec<&TestUser> = users.iter().skip(1).collect();
        let group = api.group(&users[0], &format!("bench {c}"), &others).await;
        let call = api
            .post(
                "/v1/calls",
                &users[0],
                json!({"conversation_id": group, "kind": "video"}),
            )
            .await
            .expect(201)
            .body["id"]
            .as_str()
            .expect("call id")
            .to_owned();
        call_ids.push(call);
        members.push(users);
    }
    let join = |call: usize, user: TestUser| {
        let (api, call) = (api.clone(), call_ids[call].clone());
        async move {
            api.post(
                &format!("/v1/calls/{call}/join"),
                &user,
                json!({"device_id": "bench"}),
            )
            .await
            .expect(200)
            .body
        }
    };

    // One probe for every publisher: their frame numbers are disjoint.
    let probe = LatencyProbe::new();
    let mut publishers: Vec<(usize, Bot)> = Vec::new();
    for (c, users) in members.iter().enumerate() {
        for (k, user) in users.iter().take(per_call).enumerate() {
            let index = c * per_call + k;
            let publisher_options = BotOptions {
                simulcast: options.simulcast,
                numbering: FrameNumbering::shared(index, publisher_count),
                ..bot_options(&probe, true)
            };
            let bot = Bot::join_with(&join(c, user.clone()).await, publisher_options)
                .await
                .expect("a publisher joins");
            publishers.push((c, bot));
        }
    }
    // Frames the publishers of each call have sent so far.
    let sent_by_call = |publishers: &[(usize, Bot)]| {
        let mut sent = vec![0u64; calls];
        for (c, bot) in publishers {
            sent[*c] += u64::from(bot.report().frames_sent);
        }
        sent
    };
    let mut subscribers: Vec<(usize, Bot)> = Vec::new();
    let http = reqwest::Client::new();
    let mut edge_steps = Vec::new();
    for &n in &options.subscribers {
        while subscribers.len() < n {
            let i = subscribers.len();
            let (c, seat) = (i % calls, per_call + i / calls);
            let joined = join(c, members[c][seat].clone()).await;
            subscribers.push((
                c,
                Bot::join_with(&joined, bot_options(&probe, false))
                    .await
                    .expect("a subscriber joins"),
            ));
        }
        let active: Vec<&Bot> = subscribers.iter().take(n).map(|(_, b)| b).collect();
        if !wait_for_frames(&active, Duration::from_secs(20)).await {
            // Past capacity some subscribers may never get video: the
            // step is measured anyway (its delivery says so).
            eprintln!("{n} subscribers: not all got video within 20 s; measuring anyway");
        }
        if options.simulcast {
            for (i, bot) in active.iter().enumerate() {
                bot.request_layer(["q", "h", "f"][i % 3]);
            }
            // Switches wait for keyframes.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Let the keyframes the joins asked for pass.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Subscribers per call in this step.
        let mut audience = vec![0u64; calls];
        for (c, _) in subscribers.iter().take(n) {
            audience[*c] += 1;
        }

        let frames_before: usize = active.iter().map(|b| b.report().all_video_frames()).sum();
        let audio_before: u64 = active
            .iter()
            .map(|b| u64::from(b.report().audio_packets))
            .sum();
        let sent_before = sent_by_call(&publishers);
        let before = edge_counters(&http, &metrics_url).await;
        let (_, edge_cpu_before) = proc_stat(edge.pid());
        let (_, own_cpu_before) = proc_stat(std::process::id());
        probe.start();
        let began = Instant::now();
        tokio::time::sleep(options.step).await;
        let samples = probe.take();
        let elapsed = began.elapsed();
        let (rss, edge_cpu_after) = proc_stat(edge.pid());
        let (_, own_cpu_after) = proc_stat(std::process::id());
        let after = edge_counters(&http, &metrics_url).await;
        let audio_after: u64 = active
            .iter()
            .map(|b| u64::from(b.report().audio_packets))
            .sum();
        let sent_after = sent_by_call(&publishers);
        // What the subscribers should have got: each of their call's
        // publishers' frames (one audio packet goes with each frame).
        let expected: u64 = (0..calls)
            .map(|c| (sent_after[c] - sent_before[c]) * audience[c])
            .sum();
        let frames_after: usize = active.iter().map(|b| b.report().all_video_frames()).sum();
        let datagrams = after.datagrams - before.datagrams;
        let secs = elapsed.as_secs_f64();
        edge_steps.push(SfuStep {
            path: if options.simulcast {
                "edge, simulcast"
            } else {
                "edge"
            },
            subscribers: n,
            sent_per_sec: datagrams / secs,
            mean_datagram_bytes: (after.bytes - before.bytes) / datagrams.max(1.0),
            datagrams_per_send: datagrams / (after.send_calls - before.send_calls).max(1.0),
            cpu_share: (edge_cpu_after - edge_cpu_before) / secs,
            latency: Measurement::from_samples(
                &format!("edge, {n} subscribers"),
                samples,
                0,
                elapsed,
            ),
            delivered: (frames_after - frames_before) as f64 / (expected as f64).max(1.0),
            audio_delivered: Some((audio_after - audio_before) as f64 / (expected as f64).max(1.0)),
            shed: Some((after.shed_now as u64, (after.sheds - before.sheds) as u64)),
            allocations_per_datagram: after
                .allocations
                .zip(before.allocations)
                .map(|(a, b)| (a - b) / datagrams.max(1.0)),
            timeouts_per_datagram: Some(
                (after.session_timeouts - before.session_timeouts) / datagrams.max(1.0),
            ),
            rss,
            loadgen_cpu_share: (own_cpu_after - own_cpu_before) / secs,
        });
    }
    for (_, bot) in subscribers {
        bot.leave().await;
    }
    for (_, bot) in publishers {
        bot.leave().await;
    }
    drop(edge);
    drop(control_plane);
    let _ = std::fs::remove_dir_all(&scratch);

    // The raw forwarder.
    let frame_bytes = delta_body + 11;
    let direct_udp = raw_direct(frame_bytes, options.step).await;
    let mut raw = Vec::new();
    let mut raw_batched = Vec::new();
    for &n in &options.subscribers {
        raw.push(raw_step(n, frame_bytes, options.step, false, pinned.as_deref()).await);
        raw_batched.push(raw_step(n, frame_bytes, options.step, true, pinned.as_deref()).await);
    }

    SfuBenchReport {
        direct_webrtc,
        direct_udp,
        edge: edge_steps,
        raw,
        raw_batched,
        edge_idle_rss,
        delta_body,
        publishers: publisher_count,
    }
}

/// Waits until every bot has had a few video frames; false if some had
/// not within `limit`.
async fn wait_for_frames(bots: &[&Bot], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while bots.iter().any(|b| b.report().video_frames() < 5) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// A raw datagram: kind (1 video, 2 audio), last-of-frame flag, frame
/// counter, padding to size.
fn raw_datagram(counter: u32, last: bool, audio: bool, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len.max(6)];
    d[0] = if audio { 2 } else { 1 };
    d[1] = u8::from(last);
    d[2..6].copy_from_slice(&counter.to_be_bytes());
    d
}

/// Sends 30 frames per second from a thread: each frame as `RAW_CHUNK`
/// datagrams (+12 bytes of RTP header's worth) and one 60-byte audio
/// datagram, like the bot. Returns the stop flag.
fn raw_publisher(to: SocketAddr, frame_bytes: usize, probe: Arc<LatencyProbe>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind the raw publisher");
        let start = Instant::now();
        let mut counter = 0u32;
        while !stopping.load(Ordering::Relaxed) {
            let chunks = frame_bytes.div_ceil(RAW_CHUNK);
            probe.sent(counter, Instant::now());
            for i in 0..chunks {
                let len = if i + 1 == chunks {
                    frame_bytes - i * RAW_CHUNK
                } else {
                    RAW_CHUNK
                };
                let _ =
                    socket.send_to(&raw_datagram(counter, i + 1 == chunks, false, len + 12), to);
            }
            let _ = socket.send_to(&raw_datagram(counter, false, true, 60), to);
            counter += 1;
            let next = start + Duration::from_millis(33) * counter;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    stop
}

/// A receiving socket task: frame latency at each frame's last datagram.
async fn raw_receiver(
    socket: tokio::net::UdpSocket,
    probe: Arc<LatencyProbe>,
    frames: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = socket.recv_from(&mut buf).await {
        if n >= 6 && buf[0] == 1 && buf[1] == 1 {
            let counter = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
            probe.received(counter, Instant::now());
            frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn raw_direct(frame_bytes: usize, step: Duration) -> Measurement {
    let probe = LatencyProbe::new();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a receiver");
    let to = socket.local_addr().expect("receiver address");
    let receiver = tokio::spawn(raw_receiver(socket, probe.clone(), Arc::default()));
    let stop = raw_publisher(to, frame_bytes, probe.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    probe.start();
    let began = Instant::now();
    tokio::time::sleep(step).await;
    let m = Measurement::from_samples("direct UDP → UDP", probe.take(), 0, began.elapsed());
    stop.store(true, Ordering::Relaxed);
    receiver.abort();
    m
}

/// The physical floor: recv a datagram, send a copy to every subscriber
/// (`batched`: hold a frame's video datagrams until its last one, then
/// send each subscriber the frame in one UDP GSO send, as the edge does).
pub(super) struct RawForwarder {
    pub(super) addr: SocketAddr,
    /// `/proc/self/task/<tid>/stat` of its thread.
    pub(super) stat_path: String,
    pub(super) sent: Arc<AtomicU64>,
    sent_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// First byte of a datagram that subscribes its source.
pub(super) const RAW_SUBSCRIBE: u8 = 0xff;

impl RawForwarder {
    /// `pinned`: the CPUs its thread runs on.
    pub(super) fn spawn(batched: bool, pinned: Option<String>) -> RawForwarder {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind the raw forwarder");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("forwarder address");
        let sent = Arc::new(AtomicU64::new(0));
        let sent_bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (counted, counted_bytes, stopping) = (sent.clone(), sent_bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            // "<pid>/task/<tid>"
            let me = std::fs::read_link("/proc/thread-self")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = tid_tx.send(format!("/proc/{me}/stat"));
            if let (Some(cpus), Some(tid)) = (&pinned, me.rsplit('/').next()) {
                pin(tid, cpus, false);
            }
            let mut subscribers: Vec<SocketAddr> = Vec::new();
            let mut buf = vec![0u8; 2048];
            let gso = batched
                .then(|| quinn_udp::UdpSocketState::new((&socket).into()).ok())
                .flatten()
                .filter(|state| state.max_gso_segments() > 1);
            // quinn-udp makes the socket non-blocking; this thread blocks
            // (with its read timeout) so its CPU time is work, not spinning.
            let _ = socket.set_nonblocking(false);
            if batched && gso.is_none() {
                eprintln!(
                    "raw forwarder: this kernel has no UDP GSO; the batched path sends one datagram per call"
                );
            }
            // A frame's video datagrams so far (batched mode), and their
            // sizes.
            let mut frame: Vec<u8> = Vec::new();
            let mut sizes: Vec<usize> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, source)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if buf[..n].first() == Some(&RAW_SUBSCRIBE) {
                    if !subscribers.contains(&source) {
                        subscribers.push(source);
                    }
                    continue;
                }
                let video = buf[0] == 1;
                if let (Some(state), true) = (&gso, video) {
                    frame.extend_from_slice(&buf[..n]);
                    sizes.push(n);
                    if buf[1] == 0 {
                        continue;
                    }
                    // The frame is complete: one send per subscriber (the
                    // datagrams are RAW_CHUNK long but the last).
                    let segment = sizes[0];
                    for to in &subscribers {
                        let transmit = quinn_udp::Transmit {
                            destination: *to,
                            ecn: None,
                            contents: &frame,
                            segment_size: (sizes.len() > 1).then_some(segment),
                            src_ip: None,
                        };
                        if state.send((&socket).into(), &transmit).is_ok() {
                            counted.fetch_add(sizes.len() as u64, Ordering::Relaxed);
                            counted_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                        }
                    }
                    frame.clear();
                    sizes.clear();
                    continue;
                }
                for to in &subscribers {
                    if socket.send_to(&buf[..n], to).is_ok() {
                        counted.fetch_add(1, Ordering::Relaxed);
                        counted_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        let stat_path = tid_rx.recv().expect("forwarder thread started");
        RawForwarder {
            addr,
            stat_path,
            sent,
            sent_bytes,
            stop,
        }
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn raw_step(
    n: usize,
    frame_bytes: usize,
    step: Duration,
    batched: bool,
    pinned: Option<&str>,
) -> SfuStep {
    let forwarder = RawForwarder::spawn(batched, pinned.map(str::to_owned));
    let probe = LatencyProbe::new();
    let frames = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        socket
            .send_to(&[RAW_SUBSCRIBE], forwarder.addr)
            .await
            .expect("subscribe");
        receivers.push(tokio::spawn(raw_receiver(
            socket,
            probe.clone(),
            frames.clone(),
        )));
    }
    let stop = raw_publisher(forwarder.addr, frame_bytes, probe.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let frames_before = frames.load(Ordering::Relaxed);
    let sent_before = forwarder.sent.load(Ordering::Relaxed);
    let bytes_before = forwarder.sent_bytes.load(Ordering::Relaxed);
    let cpu_before = cpu_secs(&forwarder.stat_path);
    let (_, own_before) = proc_stat(std::process::id());
    probe.start();
    let began = Instant::now();
    tokio::time::sleep(step).await;
    let samples = probe.take();
    let elapsed = began.elapsed();
    let cpu_after = cpu_secs(&forwarder.stat_path);
    let (rss, own_after) = proc_stat(std::process::id());
    let sent = forwarder.sent.load(Ordering::Relaxed) - sent_before;
    let bytes = forwarder.sent_bytes.load(Ordering::Relaxed) - bytes_before;
    let frames_got = frames.load(Ordering::Relaxed) - frames_before;
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.abort();
    }
    let secs = elapsed.as_secs_f64();
    // Frames the publisher sent in the window: 30 per second.
    let expected = (secs * 1000.0 / 33.0) * n as f64;
    let forwarder_cpu = cpu_after - cpu_before;
    SfuStep {
        path: if batched { "raw UDP, GSO" } else { "raw UDP" },
        subscribers: n,
        sent_per_sec: sent as f64 / secs,
        mean_datagram_bytes: bytes as f64 / (sent.max(1)) as f64,
        // A frame's video datagrams per send, its audio datagram alone.
        datagrams_per_send: if batched {
            let per_frame = frame_bytes.div_ceil(RAW_CHUNK) as f64;
            (per_frame + 1.0) / 2.0
        } else {
            1.0
        },
        cpu_share: forwarder_cpu / secs,
        latency: Measurement::from_samples(
            &format!("raw UDP, {n} subscribers"),
            samples,
            0,
            elapsed,
        ),
        delivered: (frames_got as f64 / expected.max(1.0)).min(1.0),
        // The forwarder is a thread of this process: its memory is not
        // separable, so report the process's.
        audio_delivered: None,
        shed: None,
        allocations_per_datagram: None,
        timeouts_per_datagram: None,
        rss,
        loadgen_cpu_share: ((own_after - own_before) - forwarder_cpu) / secs,
    }
}

/// The report as Markdown tables.
pub fn markdown(report: &SfuBenchReport) -> String {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    let added = |d: Duration, base: Duration| {
        format!("{:.2}", (d.as_secs_f64() - base.as_secs_f64()) * 1000.0)
    };
    let mut out = format!(
        "Baselines (no forwarder): str0m → str0m frame latency p50 {} ms, p99 {} ms; \
         UDP → UDP p50 {} ms, p99 {} ms.\n\n",
        ms(report.direct_webrtc.p50),
        ms(report.direct_webrtc.p99),
        ms(report.direct_udp.p50),
        ms(report.direct_udp.p99),
    );
    out.push_str(
        "| path | subscribers | datagrams out/s | mean bytes | datagrams per send | forwarder CPU | datagrams/s per core | edge ÷ raw per core | edge ÷ raw GSO per core | frame p50 ms | p99 ms | added p50 ms | added p99 ms | delivered | audio delivered | video shed (now, steps) | heap allocations per datagram | session timeouts per datagram | RSS MiB | load generator CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ratio = |edge: &SfuStep, raw: Option<&SfuStep>| match raw {
        Some(raw) if raw.per_core() > 0.0 => format!("{:.3}", edge.per_core() / raw.per_core()),
        _ => String::new(),
    };
    for (i, edge) in report.edge.iter().enumerate() {
        let (raw, batched) = (report.raw.get(i), report.raw_batched.get(i));
        let rows = [
            Some((
                edge,
                &report.direct_webrtc,
                ratio(edge, raw),
                ratio(edge, batched),
            )),
            raw.map(|r| (r, &report.direct_udp, String::new(), String::new())),
            batched.map(|r| (r, &report.direct_udp, String::new(), String::new())),
        ];
        for (step, base, to_raw, to_batched) in rows.into_iter().flatten() {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} % | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} % | {} | {} | {} | {} | {:.1} | {:.0} % |\n",
                step.path,
                step.subscribers,
                step.sent_per_sec,
                step.mean_datagram_bytes,
                step.datagrams_per_send,
                step.cpu_share * 100.0,
                step.per_core(),
                to_raw,
                to_batched,
                ms(step.latency.p50),
                ms(step.latency.p99),
                added(step.latency.p50, base.p50),
                added(step.latency.p99, base.p99),
                step.delivered * 100.0,
                step.audio_delivered
                    .map_or_else(String::new, |a| format!("{:.1} %", a * 100.0)),
                step.shed
                    .map_or_else(String::new, |(now, steps)| format!("{now}, {steps}")),
                step.allocations_per_datagram
                    .map_or_else(String::new, |a| format!("{a:.2}")),
                step.timeouts_per_datagram
                    .map_or_else(String::new, |t| format!("{t:.2}")),
                step.rss as f64 / 1048576.0,
                step.loadgen_cpu_share * 100.0,
            ));
        }
    }
    if let (Some(first), Some(last)) = (report.edge.first(), report.edge.last()) {
        let participants = |s: &SfuStep| (s.subscribers + report.publishers) as f64;
        let slope = if last.subscribers > first.subscribers {
            (last.rss as f64 - first.rss as f64) / (participants(last) - participants(first))
        } else {
            0.0
        };
        out.push_str(&format!(
            "\nEdge memory: {:.1} MiB idle; {:.1} MiB with {} participants; \
             {:.0} KiB per added participant (between {} and {} subscribers).\n",
            report.edge_idle_rss as f64 / 1048576.0,
            last.rss as f64 / 1048576.0,
            participants(last),
            slope / 1024.0,
            first.subscribers,
            last.subscribers,
        ));
    }
    out
}
