//! A WebSocket client for the control plane's gateway, for tests and
//! benchmarks: real sockets, JSON frames, timeouts on every wait.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How a connection ended, as the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// WebSocket close code (1006 if the socket just dropped).
    pub code: u16,
    /// Close reason.
    pub reason: String,
}

/// One gateway connection.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `ws://addr/v1/ws` with an optional bearer token and
    /// `?cursor=`.
    pub async fn connect(
        addr: impl std::fmt::Display,
        token: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Self, String> {
        let url = match cursor {
            Some(c) => format!("ws://{addr}/v1/ws?cursor={c}"),
            None => format!("ws://{addr}/v1/ws"),
        };
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "bad token".to_owned())?;
            request.headers_mut().insert("authorization", value);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(WsClient { socket })
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, frame: &Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Sends raw text (for malformed-input tests).
    pub async fn send_text(&mut self, text: String) {
        let _ = self.socket.send(Message::text(text)).await;
    }

    /// The next JSON frame within `within`: `Ok(None)` on timeout,
    /// `Err(Closed)` if the server closed the connection.
    pub async fn next(&mut self, within: Duration) -> Result<Option<Value>, Closed> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = match tokio::time::timeout(remaining, self.socket.next()).await {
                Err(_) => return Ok(None),
                Ok(message) => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(
                        serde_json::from_str(&text).unwrap_or(Value::String(text.to_string())),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(
                        Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                        |f| Closed {
                            code: f.code.into(),
                            reason: f.reason.to_string(),
                        },
                    ));
                }
                Some(Ok(_)) => continue, // pings are answered by the library
                Some(Err(_)) | None => {
                    return Err(Closed {
                        code: 1006,
                        reason: String::new(),
                    });
                }
            }
        }
    }

    /// The next frame whose `type` is `kind`, skipping others, within
    /// `within`. Panics on timeout or close, naming what it waited for.
    pub async fn expect(&mut self, kind: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(remaining).await {
                Ok(Some(frame)) if frame["type"] == kind => return frame,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no {kind:?} frame within {within:?}"),
                Err(closed) => panic!("closed ({closed:?}) while waiting for {kind:?}"),
            }
        }
    }

    /// Frames of type `kind` received within `within` (until quiet).
    pub async fn collect(&mut self, kind: &str, within: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = self.next(within).await {
            if frame["type"] == kind {
                frames.push(frame);
            }
        }
        frames
    }

    /// Waits for the server to close the connection.
    pub async fn closed(&mut self, within: Duration) -> Option<Closed> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return None;
            }
            match self.next(remaining).await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(closed) => return Some(closed),
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
