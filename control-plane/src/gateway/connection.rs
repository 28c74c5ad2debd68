//! One WebSocket connection: authentication, then a loop that writes the
//! hub's frames, reads the client's, and checks the connection is alive.

use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::gateway::{ClientFrame, PresenceStatus, ServerFrame};
use uuid::Uuid;

use super::Gateway;
use super::bus::BusMessage;
use crate::store::EventCursor;

/// Close codes we send (RFC 6455 and the 4000-4999 private range).
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const TIMEOUT: u16 = 4408;
}

/// Serves one upgraded connection until either side closes it.
pub async fn serve(
    socket: WebSocket,
    gateway: Gateway,
    user: Option<Uuid>,
    cursor: Option<String>,
) {
    let (mut sink, mut stream) = socket.split();
    let settings = gateway.settings;

    // Authenticate: from the upgrade request, or the first frame.
    let (user, cursor) = match user {
        Some(user) => (user, cursor),
        None => {
            let first = tokio::time::timeout(settings.auth_timeout, stream.next()).await;
            let frame = match first {
                Ok(Some(Ok(Message::Text(text)))) => {
                    serde_json::from_str::<ClientFrame>(&text).ok()
                }
                _ => None,
            };
            let authed = match frame {
                Some(ClientFrame::Auth { token, cursor }) => gateway
                    .tokens
                    .verify_access(&token)
                    .ok()
                    .map(|claims| (claims.sub, cursor)),
                _ => None,
            };
            match authed {
                Some(found) => found,
                None => {
                    let _ = sink
                        .send(close_message(
                            close::UNAUTHORIZED,
                            "authenticate first: {\"type\":\"auth\",\"token\":...}",
                        ))
                        .await;
                    return;
                }
            }
        }
    };
    let resume = match cursor.as_deref().map(str::parse::<EventCursor>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(())) => {
            let _ = sink
                .send(close_message(close::POLICY, "invalid cursor"))
                .await;
            return;
        }
    };
    let Ok(mut connected) = gateway.hub.connect(user, resume).await else {
        let _ = sink.send(close_message(1011, "gateway unavailable")).await;
        return;
    };
    let conn = connected.conn;
    let span = tracing::info_span!("ws", %user, conn);
    let _enter = span.enter();
    tracing::debug!("connected");
    gateway
        .presence
        .report(user, conn, PresenceStatus::Online)
        .await;

    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    let mut bucket = TokenBucket::new(settings.inbound_per_sec, settings.inbound_burst);
    let mut last_typing: Option<(Uuid, Instant)> = None;
    let reason: (u16, String) = loop {
        tokio::select! {
            frame = connected.frames.recv() => match frame {
                Some(text) => {
                    if sink.send(Message::Text(Utf8Bytes::from(&*text))).await.is_err() {
                        break (close::GOING_AWAY, String::new());
                    }
                }
                None => {
                    let (code, why) = connected
                        .close
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .unwrap_or((close::GOING_AWAY, "server shutting down"));
                    break (code, why.to_owned());
                }
            },
            incoming = stream.next() => {
                last_heard = Instant::now();
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        gateway.metrics.rejected_frames.inc();
                        let _ = send_frame(&mut sink, &error_frame("binary_not_supported", "send JSON text frames")).await;
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break (1000, String::new()),
                    // Oversized frames, protocol violations: the library
                    // already failed the connection.
                    Some(Err(error)) => {
                        tracing::debug!(%error, "websocket error");
                        break (close::POLICY, "protocol error".to_owned());
                    }
                };
                if !bucket.take(Instant::now()) {
                    gateway.metrics.rejected_frames.inc();
                    break (close::POLICY, "rate limit exceeded".to_owned());
                }
                let reply = match serde_json::from_str::<ClientFrame>(&text) {
                    Err(error) => {
                        gateway.metrics.rejected_frames.inc();
                        Some(error_frame("invalid_frame", &format!("not a client frame: {error}")))
                    }
                    Ok(frame) => handle(&gateway, conn, user, frame, &mut last_typing).await,
                };
                if let Some(reply) = reply
                    && send_frame(&mut sink, &reply).await.is_err()
                {
                    break (close::GOING_AWAY, String::new());
                }
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > settings.idle_timeout {
                    break (close::TIMEOUT, "no frames or pongs within the idle timeout".to_owned());
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break (close::GOING_AWAY, String::new());
                }
                gateway.presence.touch(user, conn).await;
            },
        }
    };
    gateway.hub.disconnect(conn);
    gateway.presence.gone(user, conn).await;
    let _ = sink.send(close_message(reason.0, &reason.1)).await;
    tracing::debug!(code = reason.0, "closed");
}

/// Handles one client frame; returns an immediate reply, if any.
async fn handle(
    gateway: &Gateway,
    conn: u64,
    user: Uuid,
    frame: ClientFrame,
    last_typing: &mut Option<(Uuid, Instant)>,
) -> Option<ServerFrame> {
    match frame {
        ClientFrame::Ping {} => Some(ServerFrame::Pong),
        ClientFrame::Auth { .. } => Some(error_frame(
            "already_authenticated",
            "this connection is authenticated",
        )),
        ClientFrame::Resume { cursor } => {
            let Ok(cursor) = cursor.parse::<EventCursor>() else {
                return Some(error_frame(
                    "invalid_cursor",
                    "cursor must be a value from an event",
                ));
            };
            match gateway.hub.resume(conn, cursor).await {
                Ok(()) => None,
                Err(error) => Some(error_frame("resume_refused", &error.to_string())),
            }
        }
        ClientFrame::Typing { conversation_id } => {
            // At most one typing event per conversation per throttle period.
            let now = Instant::now();
            if let Some((last, at)) = *last_typing
                && last == conversation_id
                && now.duration_since(at) < gateway.settings.typing_throttle
            {
                return None;
            }
            match gateway.store.membership(conversation_id, user).await {
                Ok(Some(_)) => {
                    *last_typing = Some((conversation_id, now));
                    gateway
                        .bus
                        .publish(BusMessage::Typing {
                            conversation: conversation_id,
                            user,
                        })
                        .await;
                    None
                }
                // Same answer for "not a member" and "does not exist".
                _ => Some(error_frame("not_found", "no such conversation")),
            }
        }
        ClientFrame::Presence { status } => {
            gateway.presence.report(user, conn, status).await;
            None
        }
    }
}

fn error_frame(code: &str, message: &str) -> ServerFrame {
    ServerFrame::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

async fn send_frame<S>(sink: &mut S, frame: &ServerFrame) -> Result<(), axum::Error>
where
    S: SinkExt<Message, Error = axum::Error> + Unpin,
{
    let text = serde_json::to_string(frame).unwrap_or_default();
    sink.send(Message::Text(text.into())).await
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Inbound frame budget: `rate` per second with bursts up to `burst`.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5);
        bucket.at = start;
        assert!((0..5).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(
            bucket.take(start + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!bucket.take(start + Duration::from_millis(100)));
    }
}
