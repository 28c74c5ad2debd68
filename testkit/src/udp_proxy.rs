//! A userspace UDP proxy that makes a loopback path look like a WAN link:
//! fixed one-way delay and random loss, both directions, and optionally a
//! bottleneck on the way back to the client ([`Downlink`]: a queue drained
//! at a rate, tail-dropping what would wait too long). (This kernel has no
//! netem delay, so the harness does it.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Counters of a proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Datagrams passed on.
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose.
    pub dropped: AtomicU64,
}

/// A bottleneck towards the client, changeable while the proxy runs.
#[derive(Debug)]
pub struct Downlink {
    /// Bits per second; 0: no limit.
    pub rate_bps: AtomicU64,
    /// When the queue is empty again.
    free_at: std::sync::Mutex<tokio::time::Instant>,
}

/// The longest a datagram waits in a [`Downlink`]'s queue before it is
/// dropped instead.
const MAX_QUEUE: Duration = Duration::from_millis(100);

impl Downlink {
    /// A downlink of `rate_bps` (0: unlimited).
    pub fn new(rate_bps: u64) -> Arc<Self> {
        Arc::new(Downlink {
            rate_bps: AtomicU64::new(rate_bps),
            free_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Changes the rate (0: lifts the limit).
    pub fn set_rate(&self, rate_bps: u64) {
        self.rate_bps.store(rate_bps, Ordering::Relaxed);
    }

    /// When a datagram of `len` bytes leaves the queue, or `None`: dropped.
    fn admit(&self, len: usize) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let rate = self.rate_bps.load(Ordering::Relaxed);
        if rate == 0 {
            return Some(now);
        }
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*free_at).max(now);
        if start - now > MAX_QUEUE {
            return None;
        }
        // IP and UDP headers count too.
        let bits = (len as u64 + 28) * 8;
        *free_at = start + Duration::from_micros(bits * 1_000_000 / rate);
        Some(*free_at)
    }
}

/// A running proxy; dropping it stops it.
pub struct UdpProxy {
    /// Where clients send (instead of the target).
    pub addr: SocketAddr,
    /// What it did.
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

/// A deterministic loss decision (xorshift), shared by both directions.
struct Loss {
    state: std::sync::Mutex<u64>,
    /// Drop probability in parts per million.
    ppm: u64,
}

impl Loss {
    fn drop_next(&self) -> bool {
        if self.ppm == 0 {
            return false;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s % 1_000_000 < self.ppm
    }
}

impl UdpProxy {
    /// Proxies datagrams to `target` with `delay` each way and `loss`
    /// (0.0–1.0) each way.
    pub async fn start(target: SocketAddr, delay: Duration, loss: f64) -> std::io::Result<Self> {
        Self::start_shaped(target, delay, loss, None).await
    }

    /// [`UdpProxy::start`] with a bottleneck on the way back to the client.
    pub async fn start_shaped(
        target: SocketAddr,
        delay: Duration,
        loss: f64,
        downlink: Option<Arc<Downlink>>,
    ) -> std::io::Result<Self> {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = listen.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let loss = Arc::new(Loss {
            state: std::sync::Mutex::new(0x9e37_79b9_7f4a_7c15),
            ppm: (loss.clamp(0.0, 1.0) * 1_000_000.0) as u64,
        });
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let task = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                let mut tasks = Vec::new();
                loop {
                    let Ok((n, client)) = listen.recv_from(&mut buf).await else {
                        break;
                    };
                    let upstream = {
                        let mut map = upstreams.lock().await;
                        if let Some(u) = map.get(&client) {
                            u.clone()
                        } else {
                            let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                                continue;
                            };
                            if u.connect(target).await.is_err() {
                                continue;
                            }
                            let u = Arc::new(u);
                            map.insert(client, u.clone());
                            // Replies: target → client.
                            let (u2, listen2, stats2, loss2, down2) = (
                                u.clone(),
                                listen.clone(),
                                stats.clone(),
                                loss.clone(),
                                downlink.clone(),
                            );
                            tasks.push(tokio::spawn(async move {
                                let mut buf = vec![0u8; 65_536];
                                while let Ok(n) = u2.recv(&mut buf).await {
                                    let leaves = match &down2 {
                                        Some(d) => match d.admit(n) {
                                            Some(at) => at,
                                            None => {
                                                stats2.dropped.fetch_add(1, Ordering::Relaxed);
                                                continue;
                                            }
                                        },
                                        None => tokio::time::Instant::now(),
                                    };
                                    pass(&loss2, &stats2, leaves + delay, buf[..n].to_vec(), {
                                        let listen = listen2.clone();
                                        move |data| async move {
                                            let _ = listen.send_to(&data, client).await;
                                        }
                                    });
                                }
                            }));
                            u
                        }
                    };
                    pass(
                        &loss,
                        &stats,
                        tokio::time::Instant::now() + delay,
                        buf[..n].to_vec(),
                        move |data| async move {
                            let _ = upstream.send(&data).await;
                        },
                    );
                }
                for t in tasks {
                    t.abort();
                }
            })
        };
        Ok(UdpProxy { addr, stats, task })
    }
}

/// Drops one datagram, or sends it at `deadline`.
fn pass<F, Fut>(
    loss: &Loss,
    stats: &ProxyStats,
    deadline: tokio::time::Instant,
    data: Vec<u8>,
    send: F,
) where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if loss.drop_next() {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        send(data).await;
    });
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
