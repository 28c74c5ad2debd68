//! The real-time gateway: `GET /v1/ws`.
//!
//! - [`hub`]: one task per replica that reads the durable event log in order
//!   and routes each event to local connections ([`fanout`] decides which,
//!   as plain data).
//! - [`connection`]: one task per WebSocket: authentication, heartbeats,
//!   inbound limits, client frames.
//! - [`bus`]: wake-ups and ephemeral events between replicas (Redis pub/sub,
//!   or in process).
//! - [`presence`]: online/away/offline per user across devices and replicas.
//!
//! Architecture invariant: durable events reach clients only from the log
//! (never from the bus), so live delivery and resume cannot disagree and a
//! lost bus message costs latency, not data.

pub mod bus;
pub mod connection;
pub mod fanout;
pub mod hub;
pub mod metrics;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State, WebSocketUpgrade};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use service::{Validate, Validator};

use crate::api::{AppState, bearer_token};
use crate::auth::Tokens;
use crate::store::Store;
use bus::{Bus, BusMessage};
use hub::Hub;
use metrics::GatewayMetrics;
use presence::Presence;

/// `[control_plane.gateway]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Frames queued to one client before it is disconnected as too slow.
    pub outbound_queue: usize,
    /// Largest client frame, bytes.
    pub max_frame_bytes: usize,
    /// Client frames allowed per second (sustained) ...
    pub inbound_per_sec: u32,
    /// ... and in a burst.
    pub inbound_burst: u32,
    /// Time to send the `auth` frame when not authenticated by header, s.
    pub auth_timeout_secs: u64,
    /// Interval of server pings, s.
    pub heartbeat_interval_secs: u64,
    /// A connection silent for this long is closed, s.
    pub idle_timeout_secs: u64,
    /// How often the event log is read without a wake-up, ms.
    pub poll_interval_ms: u64,
    /// Most events a resume replays before it asks for a resync (at most
    /// `outbound_queue - 2`: the replay is queued before the client reads).
    pub max_replay: usize,
    /// Presence of a device lapses this long after its last sign of life, s.
    pub presence_ttl_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            outbound_queue: 1024,
            max_frame_bytes: 64 * 1024,
            inbound_per_sec: 20,
            inbound_burst: 60,
            auth_timeout_secs: 5,
            heartbeat_interval_secs: 15,
            idle_timeout_secs: 30,
            poll_interval_ms: 500,
            max_replay: 1000,
            presence_ttl_secs: 45,
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self, v: &mut Validator) {
        let mut range = |key: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                v.invalid(key, format!("must be between {min} and {max}"));
            }
        };
        range("outbound_queue", self.outbound_queue as u64, 16, 1 << 20);
        range(
            "max_frame_bytes",
            self.max_frame_bytes as u64,
            1024,
            16 << 20,
        );
        range(
            "inbound_per_sec",
            u64::from(self.inbound_per_sec),
            1,
            10_000,
        );
        range("inbound_burst", u64::from(self.inbound_burst), 1, 100_000);
        range("auth_timeout_secs", self.auth_timeout_secs, 1, 60);
        range(
            "heartbeat_interval_secs",
            self.heartbeat_interval_secs,
            1,
            300,
        );
        range("idle_timeout_secs", self.idle_timeout_secs, 2, 3600);
        range("poll_interval_ms", self.poll_interval_ms, 10, 60_000);
        range("max_replay", self.max_replay as u64, 1, 1_000_000);
        range("presence_ttl_secs", self.presence_ttl_secs, 5, 3600);
        if self.max_replay + 2 > self.outbound_queue {
            v.invalid(
                "max_replay",
                "must be at most outbound_queue - 2 (a replay is queued before the client reads it)",
            );
        }
        if self.idle_timeout_secs <= self.heartbeat_interval_secs {
            v.invalid(
                "idle_timeout_secs",
                "must be longer than heartbeat_interval_secs",
            );
        }
    }
}

/// Settings the connection tasks read.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// See [`GatewayConfig::auth_timeout_secs`].
    pub auth_timeout: Duration,
    /// See [`GatewayConfig::heartbeat_interval_secs`].
    pub heartbeat_interval: Duration,
    /// See [`GatewayConfig::idle_timeout_secs`].
    pub idle_timeout: Duration,
    /// See [`GatewayConfig::inbound_per_sec`].
    pub inbound_per_sec: u32,
    /// See [`GatewayConfig::inbound_burst`].
    pub inbound_burst: u32,
    /// Typing events per conversation per connection at most this often.
    pub typing_throttle: Duration,
    /// See [`GatewayConfig::max_frame_bytes`].
    pub max_frame_bytes: usize,
}

impl From<&GatewayConfig> for ConnectionSettings {
    fn from(c: &GatewayConfig) -> Self {
        ConnectionSettings {
            auth_timeout: Duration::from_secs(c.auth_timeout_secs),
            heartbeat_interval: Duration::from_secs(c.heartbeat_interval_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            inbound_per_sec: c.inbound_per_sec,
            inbound_burst: c.inbound_burst,
            typing_throttle: Duration::from_secs(3),
            max_frame_bytes: c.max_frame_bytes,
        }
    }
}

/// What WebSocket handlers share.
#[derive(Clone)]
pub struct Gateway {
    /// The replica's hub.
    pub hub: Hub,
    /// Between replicas.
    pub bus: Arc<dyn Bus>,
    /// Presence across devices and replicas.
    pub presence: Arc<Presence>,
    /// Membership checks for typing.
    pub store: Arc<dyn Store>,
    /// Verifies access tokens.
    pub tokens: Tokens,
    /// Connection settings.
    pub settings: ConnectionSettings,
    /// Metrics.
    pub metrics: GatewayMetrics,
    /// Sockets being served, so shutdown can wait for their close frames.
    pub active: Arc<std::sync::atomic::AtomicUsize>,
    /// Counts socket openings per user (shared with the REST limits).
    pub limiter: Arc<dyn crate::ratelimit::RateLimiter>,
    /// Openings allowed per user and window.
    pub opens_per_user: crate::config::Quota,
    /// Sockets one user may hold open at once on this replica.
    pub max_open_per_user: u32,
    /// Sockets open now, by user (this replica).
    pub open_by_user: Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, u32>>>,
}

/// One user's place among their open sockets, given back on drop.
pub struct UserSocket {
    user: uuid::Uuid,
    open: Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, u32>>>,
}

impl Drop for UserSocket {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Counts one served socket for as long as it lives.
pub struct Tracked(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Gateway {
    /// Marks a socket as being served until the returned guard drops.
    pub fn track(&self) -> Tracked {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Tracked(self.active.clone())
    }

    /// Admits one more socket of `user`, or says why not: too many
    /// openings in the window (`Some(retry)`), or too many open now.
    pub async fn admit(&self, user: uuid::Uuid) -> Result<UserSocket, Option<Duration>> {
        let key = format!("quota:websockets:{user}");
        match self
            .limiter
            .hit(
                &key,
                self.opens_per_user.limit,
                self.opens_per_user.window(),
            )
            .await
        {
            Ok(Some(wait)) => return Err(Some(wait)),
            Ok(None) => {}
            // Fail open, as every limit does; the open-socket cap holds.
            Err(error) => tracing::warn!(%error, "rate limiter unavailable; not limiting"),
        }
        let mut open = self.open_by_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user).or_insert(0);
        if *n >= self.max_open_per_user {
            return Err(None);
        }
        *n += 1;
        Ok(UserSocket {
            user,
            open: self.open_by_user.clone(),
        })
    }

    /// Waits (at most `within`) until every socket has been closed.
    pub async fn closed(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.active.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `?cursor=` on the upgrade request.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Resume after this event cursor.
    pub cursor: Option<String>,
}

/// `GET /v1/ws`: upgrades to the gateway protocol (`docs/websocket.md`).
pub async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
    headers: axum::http::HeaderMap,
) -> Response {
    let gateway = state.gateway.clone();
    // A bad header token is refused before the upgrade; no header means the
    // client authenticates with its first frame.
    let user = match bearer_token(&headers) {
        Some(token) => match gateway.tokens.verify_access(token) {
            Ok(claims) => Some(claims),
            Err(_) => {
                return axum::response::IntoResponse::into_response(
                    crate::error::ApiError::unauthorized("invalid or expired access token"),
                );
            }
        },
        None => None,
    };
    upgrade
        // Frames are small JSON; the 128 KiB default read buffer would cost
        // more than everything else a connection holds.
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(gateway.settings.max_frame_bytes)
        .max_frame_size(gateway.settings.max_frame_bytes)
        .on_upgrade(move |socket| connection::serve(socket, gateway, user, query.cursor))
}

/// Middleware: after a successful write (`POST`, `PUT`, `PATCH`, `DELETE`
/// answered 2xx), wakes every replica's hub to read the log at once
/// instead of at its next poll.
pub async fn wake_hubs(State(bus): State<Arc<dyn Bus>>, request: Request, next: Next) -> Response {
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let response = next.run(request).await;
    if writes && response.status().is_success() {
        // Not awaited: a slow or absent Redis must not delay responses.
        tokio::spawn(async move { bus.publish(BusMessage::EventsWritten).await });
    }
    response
}
