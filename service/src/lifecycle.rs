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

/// A bound HTTP listener that serves an axum router with graceful shutdown.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(HttpServer {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `router` until `shutdown` fires, then stops accepting and lets
    /// in-flight requests finish for at most `drain_timeout`; connections
    /// still open after that are dropped. `on_shutdown` runs the moment the
    /// shutdown begins (e.g. to fail readiness while draining).
    pub async fn serve(
        self,
        router: Router,
        shutdown: Shutdown,
        drain_timeout: Duration,
        on_shutdown: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            on_shutdown();
            let _ = draining_tx.send(());
        });
        let deadline = async move {
            if draining_rx.await.is_ok() {
                tokio::time::sleep(drain_timeout).await;
            } else {
                // The server ended on its own; nothing to time out.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => result,
            () = deadline => {
                tracing::warn!(?drain_timeout, "drain timeout reached; closing remaining connections");
                Ok(())
            }
        }
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
