//! One WebSocket connection: authentication, then a loop that writes the
//! hub's frames, reads the client's, and checks the connection is alive.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::gateway::{ClientFrame, PresenceStatus, ServerFrame};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use super::Gateway;
use super::bus::BusMessage;
use super::hub::Connected;
use crate::auth::AccessClaims;
use crate::store::EventCursor;

/// Close codes we send (RFC 6455 and the 4000-4999 private range).
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const TIMEOUT: u16 = 4408;
    /// Too many sockets opened (or open) by this user: wait and retry.
    pub const TOO_MANY: u16 = 4429;
}

/// Serves one upgraded connection until either side closes it.
pub async fn serve(
    socket: WebSocket,
    gateway: Gateway,
    claims: Option<AccessClaims>,
    cursor: Option<String>,
) {
    let _alive = gateway.track();
    let (mut sink, mut stream) = socket.split();
    let settings = gateway.settings;

    // Authenticate: from the upgrade request, or the first frame.
    let (claims, cursor) = match claims {
        Some(claims) => (claims, cursor),
        None => {
            let first = tokio::time::timeout(settings.auth_timeout, stream.next()).await;
            let frame = match first {
                Ok(Some(Ok(Message::Text(text)))) => {
                    serde_json::from_str::<ClientFrame>(&text).ok()
                }
                _ => None,
            };
            let authed = match frame {
                // The frame's cursor wins; without one, the URL's
                // (`/v1/ws?cursor=…` then an `auth` frame is how browsers,
                // which cannot set headers on a WebSocket, resume).
                Some(ClientFrame::Auth {
                    token,
                    cursor: frame_cursor,
                }) => gateway
                    .tokens
                    .verify_access(&token)
                    .ok()
                    .map(|claims| (claims, frame_cursor.or(cursor))),
                _ => None,
            };
            match authed {
                Some(found) => found,
                None => {
                    let _ = send_bounded(
                        &mut sink,
                        close_message(
                            close::UNAUTHORIZED,
                            "authenticate first: {\"type\":\"auth\",\"token\":...}",
                        ),
                        settings.idle_timeout,
                    )
                    .await;
                    return;
                }
            }
        }
    };
    // A signed, unexpired access token of a login that was since ended
    // (logout, password change elsewhere, refresh-token reuse) opens
    // nothing: sockets of the login were closed when it ended, and a new
    // one must not come back with the same token.
    match gateway.store.login_active(claims.sid).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = send_bounded(
                &mut sink,
                close_message(close::UNAUTHORIZED, "this login was revoked"),
                settings.idle_timeout,
            )
            .await;
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot check the login of a new socket");
            let _ = send_bounded(
                &mut sink,
                close_message(1011, "gateway unavailable"),
                settings.idle_timeout,
            )
            .await;
            return;
        }
    }
    let _place = match gateway.admit(claims.sub).await {
        Ok(place) => place,
        Err(retry) => {
            let reason = match retry {
                Some(_) => "too many connections opened; try again later",
                None => "too many open connections for this user",
            };
            let _ = send_bounded(
                &mut sink,
                close_message(close::TOO_MANY, reason),
                settings.idle_timeout,
            )
            .await;
            return;
        }
    };
    let resume = match cursor.as_deref().map(str::parse::<EventCursor>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(())) => {
            let _ = send_bounded(
                &mut sink,
                close_message(close::POLICY, "invalid cursor"),
                settings.idle_timeout,
            )
            .await;
            return;
        }
    };
    let user = claims.sub;
    let Ok(connected) = gateway.hub.connect(user, claims.sid, resume).await else {
        let _ = send_bounded(
            &mut sink,
            close_message(1011, "gateway unavailable"),
            settings.idle_timeout,
        )
        .await;
        return;
    };
    let span = tracing::info_span!("ws", %user, conn = connected.conn);
    session(sink, stream, gateway, claims, connected)
        .instrument(span)
        .await;
}

/// Presence updates of one device, applied in order by a worker so that
/// slow Redis calls never hold up the socket.
enum PresenceUpdate {
    Report(PresenceStatus),
    Touch,
    Gone,
}

async fn session(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    gateway: Gateway,
    claims: AccessClaims,
    mut connected: Connected,
) {
    let user = claims.sub;
    let conn = connected.conn;
    // The socket lives no longer than the token that opened it: the client
    // reconnects with a fresh one (and its cursor, so it misses nothing).
    let lifetime =
        u64::try_from(claims.exp - time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    let expiry = tokio::time::sleep(Duration::from_secs(lifetime));
    tokio::pin!(expiry);
    let settings = gateway.settings;
    tracing::debug!("connected");
    let (presence, mut updates) = mpsc::channel::<PresenceUpdate>(8);
    let worker = {
        let presence_store = gateway.presence.clone();
        tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                match update {
                    PresenceUpdate::Report(status) => {
                        presence_store.report(user, conn, status).await
                    }
                    PresenceUpdate::Touch => presence_store.touch(user, conn).await,
                    PresenceUpdate::Gone => {
                        presence_store.gone(user, conn).await;
                        break;
                    }
                }
            }
        })
    };
    let _ = presence.try_send(PresenceUpdate::Report(PresenceStatus::Online));

    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    let mut bucket = TokenBucket::new(settings.inbound_per_sec, settings.inbound_burst);
    let mut throttle = Throttle::default();
    let reason: (u16, String) = loop {
        tokio::select! {
            frame = connected.frames.recv() => match frame {
                Some(text) => {
                    if !send_bounded(&mut sink, Message::Text(Utf8Bytes::from(&*text)), settings.idle_timeout).await {
                        break (close::TIMEOUT, "client not reading".to_owned());
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
                        let reply = error_frame("binary_not_supported", "send JSON text frames");
                        if !send_frame(&mut sink, &reply, settings.idle_timeout).await {
                            break (close::TIMEOUT, "client not reading".to_owned());
                        }
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
                    Ok(frame) => handle(&gateway, conn, user, frame, &mut throttle, &presence).await,
                };
                if let Some(reply) = reply
                    && !send_frame(&mut sink, &reply, settings.idle_timeout).await
                {
                    break (close::TIMEOUT, "client not reading".to_owned());
                }
            },
            () = &mut expiry => {
                break (close::UNAUTHORIZED, "access token expired; reconnect with a fresh one".to_owned());
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > settings.idle_timeout {
                    break (close::TIMEOUT, "no frames or pongs within the idle timeout".to_owned());
                }
                if !send_bounded(&mut sink, Message::Ping(Default::default()), settings.idle_timeout).await {
                    break (close::TIMEOUT, "client not reading".to_owned());
                }
                let _ = presence.try_send(PresenceUpdate::Touch);
            },
        }
    };
    gateway.hub.disconnect(conn);
    // `Gone` must not be lost: wait for room rather than try.
    let _ = presence.send(PresenceUpdate::Gone).await;
    let _ = send_bounded(
        &mut sink,
        close_message(reason.0, &reason.1),
        Duration::from_secs(1),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    tracing::debug!(code = reason.0, "closed");
}

/// Per-connection limits on ephemeral frames.
#[derive(Default)]
struct Throttle {
    /// Last forwarded typing event per conversation.
    typing: HashMap<Uuid, Instant>,
    /// Last accepted presence change.
    presence: Option<Instant>,
}

/// Conversations whose typing times one connection remembers.
const TYPING_MEMORY: usize = 64;
/// Presence changes accepted per connection at most this often.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// Handles one client frame; returns an immediate reply, if any.
async fn handle(
    gateway: &Gateway,
    conn: u64,
    user: Uuid,
    frame: ClientFrame,
    throttle: &mut Throttle,
    presence: &mpsc::Sender<PresenceUpdate>,
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
            if throttle
                .typing
                .get(&conversation_id)
                .is_some_and(|at| now.duration_since(*at) < gateway.settings.typing_throttle)
            {
                return None;
            }
            match gateway.store.membership(conversation_id, user).await {
                Ok(Some(_)) => {
                    if throttle.typing.len() >= TYPING_MEMORY {
                        throttle.typing.clear();
                    }
                    throttle.typing.insert(conversation_id, now);
                    let bus = gateway.bus.clone();
                    tokio::spawn(async move {
                        bus.publish(BusMessage::Typing {
                            conversation: conversation_id,
                            user,
                        })
                        .await;
                    });
                    None
                }
                // Same answer for "not a member" and "does not exist".
                _ => Some(error_frame("not_found", "no such conversation")),
            }
        }
        ClientFrame::Presence {
            status: PresenceStatus::Offline,
        } => Some(error_frame(
            "invalid_status",
            "a connected device is online or away; disconnect to go offline",
        )),
        ClientFrame::Presence { status } => {
            let now = Instant::now();
            if throttle
                .presence
                .is_some_and(|at| now.duration_since(at) < PRESENCE_EVERY)
            {
                return Some(error_frame(
                    "too_frequent",
                    "at most one presence change per second",
                ));
            }
            throttle.presence = Some(now);
            let _ = presence.try_send(PresenceUpdate::Report(status));
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

/// Sends a message, giving up after `within` (a client that does not read
/// must not hold this task forever). Returns whether it was sent.
async fn send_bounded(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    within: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(within, sink.send(message)).await,
        Ok(Ok(()))
    )
}

async fn send_frame(
    sink: &mut SplitSink<WebSocket, Message>,
    frame: &ServerFrame,
    within: Duration,
) -> bool {
    let text = serde_json::to_string(frame).unwrap_or_default();
    send_bounded(sink, Message::Text(text.into()), within).await
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
