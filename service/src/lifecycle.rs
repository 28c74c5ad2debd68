//! The one startup shape every service follows:
//!
//! ```text
//! let app = MyService::build(config).await?;   // binds every listener (port 0 allowed)
//! let addrs = app.addrs();                     // what it actually bound
//! app.run(shutdown).await?;                    // serves until shutdown, then drains
//! ```
//!
//! The binary, `cascade dev` and the tests all go through this path, so what
//! the tests start is what operators run.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A long-running Cascade service.
pub trait Service: Sized + Send + 'static {
    /// Typed, validated configuration.
    type Config;
    /// The addresses the service bound (after port 0 was resolved).
    type Addrs: std::fmt::Debug + Clone + Send;
    /// Why start-up failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Binds listeners and connects what must exist before serving, without
    /// accepting work yet.
    fn build(config: Self::Config) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// The bound addresses.
    fn addrs(&self) -> Self::Addrs;

    /// Serves until `shutdown` fires, then stops taking new work and drains
    /// in-flight work within the service's drain timeout.
    fn run(self, shutdown: Shutdown) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Fires a [`Shutdown`]. Dropping the trigger fires it too, so a forgotten
/// trigger can never leave a service running forever.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves when shutdown is requested. Cheap to clone; every clone fires.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Asks every holder of the matching [`Shutdown`] to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown has been requested already.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until shutdown is requested (or the trigger is dropped).
    pub async fn wait(mut self) {
        // An error means the trigger was dropped: treat it as a request.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// A signal that fires on SIGTERM or Ctrl-C (SIGINT).
    pub fn on_termination_signal() -> Shutdown {
        let (trigger, shutdown) = shutdown_channel();
        tokio::spawn(async move {
            let name = termination_signal().await;
            tracing::info!(signal = name, "shutdown requested");
            trigger.trigger();
        });
        shutdown
    }
}

/// Waits for SIGTERM or SIGINT and names the one that came.
async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// What one HTTP listener allows, against slow or numerous clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; more are accepted and closed at once
    /// (a flood of idle connections cannot exhaust file descriptors).
    pub max_connections: usize,
    /// A request's headers must arrive within this long, or the
    /// connection is closed (slowloris).
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound HTTP listener that serves an axum router with graceful shutdown.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    limits: HttpLimits,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(HttpServer {
            listener,
            local_addr,
            limits: HttpLimits::default(),
        })
    }

    /// Serves with these limits instead of the defaults.
    pub fn with_limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `router` until `shutdown` fires, then stops accepting and lets
    /// in-flight requests finish for at most `drain_timeout`; connections
    /// still open after that are dropped. `on_shutdown` runs the moment the
    /// shutdown begins (e.g. to fail readiness while draining).
    ///
    /// HTTP/1.1 through hyper directly (not `axum::serve`) for what that
    /// hides: the header-read timeout and the connection cap
    /// ([`HttpLimits`]). WebSocket upgrades work as with `axum::serve`; an
    /// upgraded connection belongs to its handler from then on.
    pub async fn serve(
        self,
        router: Router,
        shutdown: Shutdown,
        drain_timeout: Duration,
        on_shutdown: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        use axum::extract::ConnectInfo;
        use hyper_util::rt::{TokioIo, TokioTimer};
        use tower::ServiceExt;

        let HttpServer {
            listener, limits, ..
        } = self;
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut stop => break,
                // Finished connections are reaped as we go.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, or a connection reset
                        // before it was accepted: wait a moment, go on.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; closing a new connection");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                },
            );
            let mut stopping = stop_rx.clone();
            connections.spawn(async move {
                let _permit = permit;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                    }
                    () = async { let _ = stopping.wait_for(|s| *s).await.map(|_| ()); } => {
                        // Finish the request in flight, then close.
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        drop(listener);
        on_shutdown();
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?drain_timeout,
                "drain timeout reached; closing remaining connections"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn in_flight_request_finishes_after_shutdown_and_hook_runs() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (trigger, shutdown) = shutdown_channel();
        let hook_ran = Arc::new(AtomicBool::new(false));
        let flag = hook_ran.clone();
        let serving = tokio::spawn(server.serve(
            router,
            shutdown,
            Duration::from_secs(5),
            move || flag.store(true, Ordering::SeqCst),
        ));

        let request = tokio::spawn(http_get(addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.trigger();
        let response = request.await.unwrap();
        assert!(response.ends_with("done"), "{response}");
        serving.await.unwrap().unwrap();
        assert!(hook_ran.load(Ordering::SeqCst));
        // The listener is closed: new connections are refused.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    /// Slowloris: a client that never finishes its headers is cut off at
    /// the header-read timeout, and beyond the connection cap new
    /// connections are closed at once while the others are served.
    #[tokio::test]
    async fn slow_headers_are_cut_off_and_connections_are_capped() {
        let router = Router::new().route("/", get(|| async { "ok" }));
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_limits(HttpLimits {
                max_connections: 2,
                header_read_timeout: Duration::from_millis(500),
            });
        let addr = server.local_addr();
        let (trigger, shutdown) = shutdown_channel();
        let serving = tokio::spawn(server.serve(router, shutdown, Duration::from_secs(1), || {}));

        let started = std::time::Instant::now();
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: te").await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Two connections hold the two places: a third is closed at once.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .expect("closed at once, not left waiting")
            .unwrap_or(0);
        assert_eq!(n, 0, "the third connection is closed");
        // The slow client is cut off at the header-read timeout (hyper
        // answers 408 or just closes).
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut rest))
            .await
            .expect("cut off")
            .ok();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        let answer = String::from_utf8_lossy(&rest);
        assert!(!answer.contains("200 OK"), "{answer}");
        tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest))
            .await
            .expect("the idle one too")
            .ok();
        // With the places free again, a normal request is served.
        let response = http_get(addr, "/").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok"), "{response}");
        trigger.trigger();
        serving.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn drain_is_bounded_by_the_timeout() {
        let router = Router::new().route(
            "/forever",
            get(|| async {
                std::future::pending::<()>().await;
                "never"
            }),
        );
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let (trigger, shutdown) = shutdown_channel();
        let serving =
            tokio::spawn(server.serve(router, shutdown, Duration::from_millis(200), || {}));
        let _stuck = tokio::spawn(http_get(addr, "/forever"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        trigger.trigger();
        serving.await.unwrap().unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn dropping_the_trigger_requests_shutdown() {
        let (trigger, shutdown) = shutdown_channel();
        assert!(!shutdown.requested());
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(1), shutdown.wait())
            .await
            .expect("a dropped trigger counts as shutdown");
    }
}
