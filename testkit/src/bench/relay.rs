//! `cascade bench relay`: one relay hop. A publisher link sends paced media
//! datagrams (relay header + RTP + payload carrying its send time) through
//! a `cascade relay` child process to N subscriber links; beside it, in the
//! same run, the raw UDP forwarder of `bench sfu` carries the same packets
//! at the same rate. Latency baselines without any forwarder: QUIC link →
//! QUIC link, and UDP → UDP. The relay's CPU comes from its own `/proc`
//! entry, the raw forwarder's from its thread's.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::relay::{Announce, Control, Hello, Kind, MediaHeader, Role, RtpHeader, Source};
use relay::link::{self, Link};
use relay::tls::{NodeTls, TlsFiles};
use uuid::Uuid;

use super::sfu::RawForwarder;
use super::{ChildService, Measurement, cpu_secs, proc_stat};
use crate::cluster::CertDir;

/// What to run.
#[derive(Debug, Clone)]
pub struct RelayBenchOptions {
    /// Publisher packet rates of the ramp, per second.
    pub rates: Vec<u64>,
    /// Subscriber links.
    pub subscribers: usize,
    /// Bytes of payload after the RTP header (browser video: ~1100).
    pub payload: usize,
    /// How long each step is measured.
    pub step: Duration,
}

/// One measured step of one path.
#[derive(Debug, Clone)]
pub struct RelayStep {
    /// `relay` or `raw UDP`.
    pub path: &'static str,
    /// Offered packets per second.
    pub rate: u64,
    /// Packets the forwarder sent per second (all subscribers).
    pub sent_per_sec: f64,
    /// Forwarder CPU, fraction of one core.
    pub cpu_share: f64,
    /// Packet latency, publisher send → subscriber receive.
    pub latency: Measurement,
    /// Share of the offered packets that reached the subscribers.
    pub delivered: f64,
    /// The load generator's CPU (this process minus the forwarder thread),
    /// fraction of one core.
    pub loadgen_cpu_share: f64,
}

impl RelayStep {
    /// Packets out per second per core of forwarder CPU.
    pub fn per_core(&self) -> f64 {
        if self.cpu_share > 0.0 {
            self.sent_per_sec / self.cpu_share
        } else {
            0.0
        }
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct RelayBenchReport {
    /// Baselines without a forwarder, at the lowest rate.
    pub direct_quic: Measurement,
    /// See above.
    pub direct_udp: Measurement,
    /// Relay steps.
    pub relay: Vec<RelayStep>,
    /// Raw UDP steps, same rates.
    pub raw: Vec<RelayStep>,
    /// The options.
    pub options: RelayBenchOptions,
}

/// Send time → latency, for packets that carry their send time.
struct Clock {
    base: Instant,
    recording: AtomicBool,
    samples: Mutex<Vec<Duration>>,
    received: AtomicU64,
}

impl Clock {
    fn new() -> Arc<Self> {
        Arc::new(Clock {
            base: Instant::now(),
            recording: AtomicBool::new(false),
            samples: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
        })
    }

    fn stamp(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn arrived(&self, sent_ns: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            let latency = Duration::from_nanos(self.stamp().saturating_sub(sent_ns));
            if let Ok(mut s) = self.samples.lock() {
                s.push(latency);
            }
        }
    }

    fn start(&self) {
        if let Ok(mut s) = self.samples.lock() {
            s.clear();
        }
        self.recording.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> Vec<Duration> {
        self.recording.store(false, Ordering::Relaxed);
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// Sends `rate` packets per second from a thread, each built by `packet`
/// around the send time, in 1 ms batches. Returns the stop flag.
fn paced_sender(
    rate: u64,
    clock: Arc<Clock>,
    mut send: impl FnMut(u64, u64) + Send + 'static,
) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                send(sent, clock.stamp());
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    stop
}

/// A media datagram: header, RTP, then sequence and send time in the payload.
fn media_datagram(alias: u32, seq: u64, sent_ns: u64, payload: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(payload + 19);
    MediaHeader {
        alias,
        layer: 0,
        flags: MediaHeader::FRAME_START,
    }
    .encode(&mut d);
    RtpHeader {
        payload_type: 96,
        marker: true,
        sequence: seq as u16,
        timestamp: (seq * 3000) as u32,
        ssrc: alias,
        audio_level: None,
    }
    .encode(&mut d);
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&sent_ns.to_be_bytes());
    d.resize(d.len() + payload.saturating_sub(16), 0);
    d
}

/// The send time in a media datagram.
fn sent_time(datagram: &[u8]) -> Option<u64> {
    let (_, packet) = MediaHeader::decode(datagram).ok()?;
    let (_, payload) = RtpHeader::decode(packet).ok()?;
    Some(u64::from_be_bytes(
        <[u8; 8]>::try_from(payload.get(8..16)?).ok()?,
    ))
}

fn hello(node: &str) -> Hello {
    Hello {
        node: node.into(),
        region: "bench".into(),
        role: Role::Edge,
    }
}

/// Reads a link's datagrams into `clock` until the connection ends.
fn receive(connection: quinn::Connection, clock: Arc<Clock>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(d) = connection.read_datagram().await {
            if let Some(sent) = sent_time(&d) {
                clock.arrived(sent);
            }
        }
    })
}

/// Reads a UDP socket's datagrams into `clock`.
fn udp_receiver(socket: tokio::net::UdpSocket, clock: Arc<Clock>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = socket.recv(&mut buf).await {
            if let Some(sent) = sent_time(&buf[..n]) {
                clock.arrived(sent);
            }
        }
    })
}

struct RelayHop {
    child: ChildService,
    metrics_url: String,
    publisher: Link,
    subscribers: Vec<Link>,
    _endpoints: Vec<quinn::Endpoint>,
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

fn bench_endpoint(certs: &CertDir, name: &str, serve: bool) -> quinn::Endpoint {
    let tls = NodeTls::load(&TlsFiles::in_dir(&certs.dir, name)).expect("bench certificate");
    link::endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &tls,
        Duration::from_secs(5),
        serve,
    )
    .expect("bench endpoint")
}

async fn relay_hop(certs: &CertDir, subscribers: usize) -> RelayHop {
    let port = crate::cluster::free_udp_port();
    let http_port = free_tcp_port();
    let files = certs.files("bench-relay");
    let config = certs.dir.join("bench-relay.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nnode_id = \"bench-relay\"\nregion = \"bench\"\nlisten = \"127.0.0.1:{http_port}\"\n\
             quic_listen = \"127.0.0.1:{port}\"\n[relay.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            files.ca, files.cert, files.key
        ),
    )
    .expect("write the relay's configuration");
    let exe = std::env::current_exe().expect("current executable");
    let config_arg = config.to_string_lossy().into_owned();
    let child = tokio::task::spawn_blocking(move || {
        ChildService::spawn_exe(
            &exe,
            &["relay", "--config", &config_arg],
            "warn,relay=info",
            &[],
            "relay bound",
            "quic",
        )
    })
    .await
    .expect("spawn the relay");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let call = Uuid::new_v4();
    let mut endpoints = Vec::new();
    let mut dial = async |name: &str| {
        let endpoint = bench_endpoint(certs, name, false);
        let l = link::dial(
            &endpoint,
            &addr.into(),
            relay::tls::RELAY_SERVER_NAME,
            &hello(name),
        )
        .await
        .expect("dial the relay");
        endpoints.push(endpoint);
        l
    };
    let mut publisher = dial("bench-pub").await;
    link::write_control(
        &mut publisher.send,
        &Control::Announce(Announce {
            call,
            track: "bench-pub:1".into(),
            alias: 1,
            kind: Kind::Video,
            codec: "VP8".into(),
            origin: "bench-pub".into(),
            user: Uuid::new_v4(),
            device: "bench".into(),
            muted: false,
            layers: 1,
            source: Source::Camera,
        }),
    )
    .await
    .expect("announce");
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut s = dial(&format!("bench-sub-{i}")).await;
        link::write_control(
            &mut s.send,
            &Control::Interest {
                call,
                interested: true,
            },
        )
        .await
        .expect("interest");
        match s.reader.next().await {
            Ok(Some(Control::Announce(a))) => {
                link::write_control(
                    &mut s.send,
                    &Control::Subscribe {
                        track: a.track,
                        layers: 1,
                    },
                )
                .await
                .expect("subscribe");
            }
            other => panic!("expected the announcement, got {other:?}"),
        }
        subs.push(s);
    }
    // The relay subscribes the publisher once.
    match publisher.reader.next().await {
        Ok(Some(Control::Subscribe { .. })) => {}
        other => panic!("expected a subscription, got {other:?}"),
    }
    RelayHop {
        child,
        metrics_url: format!("http://127.0.0.1:{http_port}/metrics"),
        publisher,
        subscribers: subs,
        _endpoints: endpoints,
    }
}

/// The sum of a counter family on the relay's metrics page.
async fn relay_sent(url: &str) -> f64 {
    let page = match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    page.lines()
        .filter(|l| l.starts_with("cascade_relay_datagrams_sent_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Measures one step: `before` starts the traffic, the window is measured
/// against `cpu` (forwarder CPU seconds so far) and `sent` (packets it sent
/// so far).
struct Window {
    cpu: f64,
    own: f64,
    sent: f64,
    got: u64,
    began: Instant,
}

async fn relay_step(hop: &RelayHop, options: &RelayBenchOptions, rate: u64) -> RelayStep {
    let clock = Clock::new();
    let receivers: Vec<_> = hop
        .subscribers
        .iter()
        .map(|s| receive(s.connection.clone(), clock.clone()))
        .collect();
    let connection = hop.publisher.connection.clone();
    let payload = options.payload;
    let stop = paced_sender(rate, clock.clone(), move |seq, now| {
        let d = Bytes::from(media_datagram(1, seq, now, payload));
        // A refusal (the link's queue is full) shows as undelivered.
        let _ = relay::app::send_media(&connection, Kind::Video, d);
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let start = Window {
        cpu: proc_stat(hop.child.pid()).1,
        own: proc_stat(std::process::id()).1,
        sent: relay_sent(&hop.metrics_url).await,
        got: clock.received.load(Ordering::Relaxed),
        began: Instant::now(),
    };
    clock.start();
    tokio::time::sleep(options.step).await;
    let samples = clock.take();
    let elapsed = start.began.elapsed();
    let cpu = proc_stat(hop.child.pid()).1 - start.cpu;
    let own = proc_stat(std::process::id()).1 - start.own;
    let got = clock.received.load(Ordering::Relaxed) - start.got;
    let sent = relay_sent(&hop.metrics_url).await - start.sent;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in receivers {
        r.abort();
    }
    step(
        "relay",
        rate,
        options,
        elapsed,
        (cpu, own, sent, got),
        samples,
    )
}

/// A step from a window's totals: forwarder CPU, load generator CPU
/// (seconds), packets the forwarder sent, packets the subscribers got.
fn step(
    path: &'static str,
    rate: u64,
    options: &RelayBenchOptions,
    elapsed: Duration,
    (cpu, own, sent, got): (f64, f64, f64, u64),
    samples: Vec<Duration>,
) -> RelayStep {
    let secs = elapsed.as_secs_f64();
    RelayStep {
        path,
        rate,
        sent_per_sec: sent / secs,
        cpu_share: cpu / secs,
        latency: Measurement::from_samples(&format!("{path} at {rate}/s"), samples, 0, elapsed),
        delivered: (got as f64 / (rate as f64 * secs * options.subscribers as f64)).min(1.0),
        loadgen_cpu_share: own / secs,
    }
}

async fn raw_step(options: &RelayBenchOptions, rate: u64) -> RelayStep {
    let forwarder = RawForwarder::spawn(false, None);
    let clock = Clock::new();
    let mut receivers = Vec::new();
    for _ in 0..options.subscribers {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        socket
            .send_to(&[super::sfu::RAW_SUBSCRIBE], forwarder.addr)
            .await
            .expect("subscribe");
        receivers.push(udp_receiver(socket, clock.clone()));
    }
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind the publisher");
    let to = forwarder.addr;
    let payload = options.payload;
    let stop = paced_sender(rate, clock.clone(), move |seq, now| {
        let _ = socket.send_to(&media_datagram(1, seq, now, payload), to);
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let start = Window {
        cpu: cpu_secs(&forwarder.stat_path),
        own: proc_stat(std::process::id()).1,
        sent: forwarder.sent.load(Ordering::Relaxed) as f64,
        got: clock.received.load(Ordering::Relaxed),
        began: Instant::now(),
    };
    clock.start();
    tokio::time::sleep(options.step).await;
    let samples = clock.take();
    let elapsed = start.began.elapsed();
    let cpu = cpu_secs(&forwarder.stat_path) - start.cpu;
    let own = proc_stat(std::process::id()).1 - start.own - cpu;
    let got = clock.received.load(Ordering::Relaxed) - start.got;
    let sent = forwarder.sent.load(Ordering::Relaxed) as f64 - start.sent;
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.abort();
    }
    step(
        "raw UDP",
        rate,
        options,
        elapsed,
        (cpu, own, sent, got),
        samples,
    )
}

/// QUIC link → QUIC link, no relay: what the hop is compared with.
async fn direct_quic(certs: &CertDir, options: &RelayBenchOptions, rate: u64) -> Measurement {
    let server = bench_endpoint(certs, "bench-relay", true);
    let addr = server.local_addr().expect("server address");
    let accepting = tokio::spawn(async move {
        let incoming = server.accept().await.expect("a connection");
        let server_hello = Hello {
            role: Role::Relay,
            ..hello("bench-relay")
        };
        let l = link::accept(incoming, &server_hello).await.expect("accept");
        (server, l)
    });
    let client = bench_endpoint(certs, "bench-pub", false);
    let dialed = link::dial(
        &client,
        &addr.into(),
        relay::tls::RELAY_SERVER_NAME,
        &hello("bench-pub"),
    )
    .await
    .expect("dial directly");
    let (_server, accepted) = accepting.await.expect("accepted");
    let clock = Clock::new();
    let receiver = receive(accepted.connection.clone(), clock.clone());
    let connection = dialed.connection.clone();
    let payload = options.payload;
    let stop = paced_sender(rate, clock.clone(), move |seq, now| {
        let _ = connection.send_datagram(Bytes::from(media_datagram(1, seq, now, payload)));
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.start();
    let began = Instant::now();
    tokio::time::sleep(options.step).await;
    let m = Measurement::from_samples("direct QUIC → QUIC", clock.take(), 0, began.elapsed());
    stop.store(true, Ordering::Relaxed);
    receiver.abort();
    m
}

async fn direct_udp(options: &RelayBenchOptions, rate: u64) -> Measurement {
    let receiver_socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a receiver");
    let to = receiver_socket.local_addr().expect("receiver address");
    let clock = Clock::new();
    let receiver = udp_receiver(receiver_socket, clock.clone());
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind the publisher");
    let payload = options.payload;
    let stop = paced_sender(rate, clock.clone(), move |seq, now| {
        let _ = socket.send_to(&media_datagram(1, seq, now, payload), to);
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.start();
    let began = Instant::now();
    tokio::time::sleep(options.step).await;
    let m = Measurement::from_samples("direct UDP → UDP", clock.take(), 0, began.elapsed());
    stop.store(true, Ordering::Relaxed);
    receiver.abort();
    m
}

/// Runs the benchmark.
pub async fn run(options: &RelayBenchOptions) -> RelayBenchReport {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut edges = vec!["bench-pub".to_owned()];
    edges.extend((0..options.subscribers).map(|i| format!("bench-sub-{i}")));
    let refs: Vec<&str> = edges.iter().map(String::as_str).collect();
    let certs = CertDir::new(&["bench-relay"], &refs);
    let lowest = options.rates.iter().copied().min().unwrap_or(1000);
    let direct_quic = direct_quic(&certs, options, lowest).await;
    let direct_udp = direct_udp(options, lowest).await;
    let hop = relay_hop(&certs, options.subscribers).await;
    let mut relay = Vec::new();
    let mut raw = Vec::new();
    for &rate in &options.rates {
        relay.push(relay_step(&hop, options, rate).await);
        raw.push(raw_step(options, rate).await);
    }
    RelayBenchReport {
        direct_quic,
        direct_udp,
        relay,
        raw,
        options: options.clone(),
    }
}

/// The report as Markdown.
pub fn markdown(report: &RelayBenchReport) -> String {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    let added = |d: Duration, base: Duration| {
        format!("{:.3}", (d.as_secs_f64() - base.as_secs_f64()) * 1000.0)
    };
    let mut out = format!(
        "Baselines (no forwarder, {}/s): QUIC → QUIC p50 {} ms, p99 {} ms; UDP → UDP p50 {} ms, p99 {} ms.\n\n",
        report
            .options
            .rates
            .iter()
            .min()
            .copied()
            .unwrap_or_default(),
        ms(report.direct_quic.p50),
        ms(report.direct_quic.p99),
        ms(report.direct_udp.p50),
        ms(report.direct_udp.p99),
    );
    out.push_str(
        "| path | offered pkts/s | pkts out/s | forwarder CPU | pkts/s per core | relay ÷ raw per core | p50 ms | p99 ms | added p50 ms | added p99 ms | delivered | load generator CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (r, w) in report.relay.iter().zip(&report.raw) {
        for (step, base) in [(r, &report.direct_quic), (w, &report.direct_udp)] {
            let ratio = if step.path == "relay" && w.per_core() > 0.0 {
                format!("{:.3}", r.per_core() / w.per_core())
            } else {
                String::new()
            };
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} % | {:.0} | {} | {} | {} | {} | {} | {:.1} % | {:.0} % |\n",
                step.path,
                step.rate,
                step.sent_per_sec,
                step.cpu_share * 100.0,
                step.per_core(),
                ratio,
                ms(step.latency.p50),
                ms(step.latency.p99),
                added(step.latency.p50, base.p50),
                added(step.latency.p99, base.p99),
                step.delivered * 100.0,
                step.loadgen_cpu_share * 100.0,
            ));
        }
    }
    out
}
