//! A media worker: the thin async shell around one [`Sfu`]. It owns a UDP
//! socket and the calls pinned to it; signaling sessions talk to it over a
//! channel. Everything that decides is in the core; this only moves bytes,
//! messages and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::signaling::ServerSignal;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::sfu::{JoinError, PeerId, PeerInfo, Sfu, SfuConfig, SfuEvent, SignalError};

/// What a signaling session asks of its worker.
pub enum Command {
    /// A participant joins with its offer.
    Join {
        /// Who (from the join token).
        info: PeerInfo,
        /// The SDP offer.
        offer: String,
        /// Where the worker sends this peer's signaling.
        signals: mpsc::Sender<ServerSignal>,
        /// The answer, or why not.
        reply: oneshot::Sender<Result<(PeerId, String), JoinError>>,
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
    /// The peer leaves.
    Leave {
        /// The peer.
        peer: PeerId,
    },
}

/// Numbers a worker shares with the rest of the process.
#[derive(Default)]
pub struct WorkerShared {
    /// Participants now.
    pub participants: AtomicU64,
    /// Sessions connected now (join-token `session`s, for heartbeats).
    pub sessions: Mutex<Vec<Uuid>>,
}

/// A running worker.
#[derive(Clone)]
pub struct WorkerHandle {
    /// Its command channel.
    pub commands: mpsc::Sender<Command>,
    /// Its media socket's advertised address.
    pub addr: SocketAddr,
    /// Its shared numbers.
    pub shared: Arc<WorkerShared>,
}

/// A session a worker's peer belonged to, reported gone to the control plane.
pub type Gone = PeerInfo;

/// Binds a worker's socket. `advertised` is the address in its candidates
/// (the bound one unless a public IP is configured).
pub async fn bind(bind: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(bind).await
}

/// Everything a worker runs with.
pub struct Worker {
    /// Its media socket.
    pub socket: UdpSocket,
    /// The address its candidates advertise.
    pub advertised: SocketAddr,
    /// Limits and timing of its core.
    pub config: SfuConfig,
    /// Commands from signaling sessions.
    pub commands: mpsc::Receiver<Command>,
    /// Numbers shared with heartbeats.
    pub shared: Arc<WorkerShared>,
    /// Where ended sessions are reported.
    pub gone: mpsc::UnboundedSender<Gone>,
    /// Node-wide metrics.
    pub metrics: crate::metrics::EdgeMetrics,
}

/// Runs a worker until `stop` resolves or every sender is gone.
pub async fn run(worker: Worker, stop: impl std::future::Future<Output = ()>) {
    let Worker {
        socket,
        advertised,
        config,
        mut commands,
        shared,
        gone,
        metrics,
    } = worker;
    let mut sfu = Sfu::new(config, advertised);
    let mut counted = sfu.stats();
    // This worker's share of the node-wide gauges.
    let (mut participants, mut tracks, mut subscriptions) = (0i64, 0i64, 0i64);
    let mut signals: HashMap<PeerId, mpsc::Sender<ServerSignal>> = HashMap::new();
    let mut sessions: HashMap<PeerId, Uuid> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    tokio::pin!(stop);
    loop {
        let wake = sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = received {
                    sfu.handle_receive(Instant::now(), source, &buf[..n]);
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                metrics.loop_lag.observe(now.saturating_duration_since(wake).as_secs_f64());
                sfu.handle_timeout(now);
            }
            command = commands.recv() => match command {
                None => break,
                Some(Command::Join { info, offer, signals: tx, reply }) => {
                    let session = info.session;
                    let result = sfu.join(Instant::now(), info, &offer);
                    if let Ok((peer, _)) = &result {
                        signals.insert(*peer, tx);
                        sessions.insert(*peer, session);
                    }
                    let _ = reply.send(result);
                }
                Some(Command::Answer { peer, sdp, reply }) => {
                    let _ = reply.send(sfu.handle_answer(Instant::now(), peer, &sdp));
                }
                Some(Command::Leave { peer }) => sfu.leave(Instant::now(), peer),
            },
            () = &mut stop => break,
        }
        // Out with everything the core produced.
        while let Some(t) = sfu.poll_transmit() {
            if let Err(error) = socket.send_to(&t.contents, t.destination).await {
                tracing::debug!(%error, destination = %t.destination, "send failed");
            }
        }
        while let Some((peer, signal)) = sfu.poll_signal() {
            if let Some(tx) = signals.get(&peer)
                && tx.try_send(signal).is_err()
            {
                tracing::warn!(peer, "signaling session not keeping up; closing it");
                sfu.leave(Instant::now(), peer);
            }
        }
        while let Some(event) = sfu.poll_event() {
            match event {
                SfuEvent::Connected(peer) => {
                    if let Some(session) = sessions.get(&peer) {
                        lock(&shared.sessions).push(*session);
                    }
                }
                SfuEvent::Closed { peer, info } => {
                    signals.remove(&peer);
                    sessions.remove(&peer);
                    lock(&shared.sessions).retain(|s| *s != info.session);
                    let _ = gone.send(info);
                }
            }
        }
        shared
            .participants
            .store(sfu.participants() as u64, Ordering::Relaxed);
        let stats = sfu.stats();
        metrics.add(&counted, &stats);
        counted = stats;
        for (gauge, mine, now) in [
            (
                &metrics.participants,
                &mut participants,
                sfu.participants() as i64,
            ),
            (&metrics.tracks, &mut tracks, sfu.tracks() as i64),
            (
                &metrics.subscriptions,
                &mut subscriptions,
                sfu.subscriptions() as i64,
            ),
        ] {
            gauge.add(now - *mine);
            *mine = now;
        }
    }
    // Leave the node-wide gauges as if this worker had never been.
    metrics.participants.sub(participants);
    metrics.tracks.sub(tracks);
    metrics.subscriptions.sub(subscriptions);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
