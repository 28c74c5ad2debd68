//! Is an edge alive? The control plane's own look when a client reports
//! that it cannot reach its edge: a client's word alone must not move a
//! whole call (its own network may be what broke), and waiting for three
//! missed heartbeats is what made failover take 8-10 s.
//!
//! The probe connects to the edge's signaling listener (from its
//! registered `signaling_url`) within [`PROBE_TIMEOUT`]: a killed process
//! refuses at once, a dead host times out. On a plain `ws://` listener it
//! also asks `GET /healthz`, which a hung process would not answer; on
//! `wss://` the TCP connect is the whole test (no TLS client here).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the edge has to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Up,
    /// Refused, timed out, or answered something other than 200.
    Down,
    /// It registered no usable signaling URL: nothing to probe.
    Unknown,
}

/// Probes the edge whose signaling URL is `signaling_url`.
pub async fn probe(signaling_url: Option<&str>) -> Probe {
    let Some(url) = signaling_url.and_then(|u| url::Url::parse(u).ok()) else {
        return Probe::Unknown;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Probe::Unknown;
    };
    let plain = url.scheme() == "ws";
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let attempt = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await.ok()?;
        if !plain {
            return Some(());
        }
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: cascade-probe\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        (head.starts_with(b"HTTP/1.") && &head[9..12] == b"200").then_some(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Some(())) => Probe::Up,
        _ => Probe::Down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_down_and_a_serving_one_is_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /healthz "));
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        });
        let url = format!("ws://127.0.0.1:{port}/v1/rtc");
        assert_eq!(probe(Some(&url)).await, Probe::Up);
        server.await.unwrap();
        // Nothing listens there any more.
        assert_eq!(probe(Some(&url)).await, Probe::Down);
        assert_eq!(probe(None).await, Probe::Unknown);
        assert_eq!(probe(Some("not a url")).await, Probe::Unknown);
    }

    #[tokio::test]
    async fn a_listener_that_never_answers_is_down_within_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepted by the kernel's backlog, never served: a hung process.
        let started = std::time::Instant::now();
        let found = probe(Some(&format!("ws://127.0.0.1:{port}/v1/rtc"))).await;
        assert_eq!(found, Probe::Down);
        assert!(started.elapsed() < PROBE_TIMEOUT * 3);
        drop(listener);
    }
}
