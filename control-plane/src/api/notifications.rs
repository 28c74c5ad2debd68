//! `/v1/notifications` (the feed and its read state) and `/v1/push/...`
//! (Web Push subscriptions for browsers that are offline).

use axum::Json;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::conversations::page_limit;
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::store::{NewEvent, Notification, PushSubscription};

/// A browser keeps this many subscriptions per user at most (one per
/// browser profile is normal); subscribing another drops the oldest.
const MAX_SUBSCRIPTIONS_PER_USER: usize = 10;

/// `GET /v1/notifications` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Only unread ones.
    #[serde(default)]
    pub unread: bool,
    /// A `next_cursor` from the previous page.
    pub before: Option<Uuid>,
    /// Page size, 1-100 (default 50).
    pub limit: Option<i64>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    /// Newest first.
    pub notifications: Vec<Notification>,
    /// How many of all the caller's notifications are unread (the bell).
    pub unread_count: i64,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<Uuid>,
}

/// `POST /v1/notifications/read` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// These notifications (at most 100); absent or null: all of them.
    #[serde(default)]
    pub ids: Option<Vec<Uuid>>,
}

/// The unread count after marking.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadCount {
    /// Unread notifications left.
    pub unread_count: i64,
}

/// The caller's notifications, newest first, with the unread count.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", params(FeedQuery),
    responses((status = 200, body = FeedPage), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let mut notifications = state
        .store
        .notifications(caller.user_id, query.unread, query.before, limit + 1)
        .await?;
    let more = notifications.len() as i64 > limit;
    notifications.truncate(limit as usize);
    let next_cursor = more.then(|| notifications.last().map(|n| n.id)).flatten();
    let unread_count = state.store.unread_notifications(caller.user_id).await?;
    Ok(Json(FeedPage {
        notifications,
        unread_count,
        next_cursor,
    }))
}

/// Marks notifications read (some, or all); the caller's other devices get
/// `notification.read` with the new unread count.
#[utoipa::path(post, path = "/v1/notifications/read", tag = "notifications",
    request_body = MarkRead,
    responses((status = 200, body = UnreadCount), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn mark_read(
    state: AppState,
    caller: Caller,
    ApiJson(body): ApiJson<MarkRead>,
) -> Result<Json<UnreadCount>, ApiError> {
    if body.ids.as_ref().is_some_and(|ids| ids.len() > 100) {
        return Err(ApiError::bad_request(
            "too_many_ids",
            "mark at most 100 notifications at once (or all: omit ids)",
        ));
    }
    let user = caller.user_id;
    let ids = body.ids.clone();
    let render = move |unread: i64| NewEvent {
        conversation_id: None,
        user_id: Some(user),
        kind: "notification.read",
        payload: serde_json::json!({ "ids": ids, "unread_count": unread }).to_string(),
    };
    let unread_count = state
        .store
        .mark_notifications_read(user, body.ids.as_deref(), &render, super::now())
        .await?;
    Ok(Json(UnreadCount { unread_count }))
}

/// The application server key browsers subscribe with.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushKey {
    /// VAPID public key, base64url (`applicationServerKey`).
    pub public_key: String,
}

/// The VAPID public key for `pushManager.subscribe`. 404 when push is off.
#[utoipa::path(get, path = "/v1/push/key", tag = "notifications",
    responses((status = 200, body = PushKey), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key(state: AppState, _caller: Caller) -> Result<Json<PushKey>, ApiError> {
    let vapid = state
        .vapid
        .as_ref()
        .ok_or_else(|| ApiError::not_found("push notifications are off on this server"))?;
    Ok(Json(PushKey {
        public_key: vapid.public_key(),
    }))
}

/// A browser's subscription keys (`PushSubscription.toJSON().keys`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key, base64url.
    pub p256dh: String,
    /// The browser's auth secret, base64url.
    pub auth: String,
}

/// `POST /v1/push/subscriptions` body: `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Subscribe {
    /// The push service URL.
    pub endpoint: String,
    /// Its keys.
    pub keys: SubscriptionKeys,
    /// Sent by browsers, ignored.
    #[serde(default, rename = "expirationTime")]
    #[schema(value_type = Option<f64>)]
    pub expiration_time: Option<serde_json::Value>,
}

/// The stored subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct Subscribed {
    /// Its id (for `DELETE`).
    pub id: Uuid,
}

fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// Subscribes this browser: while the caller has no live connection, their
/// notifications are pushed to it. The endpoint must be on a known push
/// service.
#[utoipa::path(post, path = "/v1/push/subscriptions", tag = "notifications",
    request_body = Subscribe,
    responses((status = 201, body = Subscribed), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn subscribe(
    state: AppState,
    caller: Caller,
    ApiJson(body): ApiJson<Subscribe>,
) -> Result<(StatusCode, Json<Subscribed>), ApiError> {
    if state.vapid.is_none() {
        return Err(ApiError::not_found(
            "push notifications are off on this server",
        ));
    }
    if body.endpoint.len() > 2048 {
        return Err(ApiError::bad_request(
            "invalid_endpoint",
            "endpoint is too long",
        ));
    }
    state
        .config
        .push
        .check_endpoint(&body.endpoint)
        .map_err(|reason| ApiError::bad_request("invalid_endpoint", reason))?;
    let p256dh = decode_b64url(&body.keys.p256dh)
        .filter(|k| k.len() == 65 && k[0] == 0x04)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_keys", "keys.p256dh is not a P-256 public key")
        })?;
    let auth = decode_b64url(&body.keys.auth)
        .filter(|k| k.len() == 16)
        .ok_or_else(|| ApiError::bad_request("invalid_keys", "keys.auth is not 16 bytes"))?;
    // A key that is not on the curve would fail every push: refuse it now.
    crate::notifications::webpush::encrypt(&p256dh, &auth, b"")
        .map_err(|_| ApiError::bad_request("invalid_keys", "keys.p256dh is not a P-256 point"))?;
    let existing = state.store.push_subscriptions(caller.user_id).await?;
    if !existing.iter().any(|s| s.endpoint == body.endpoint) {
        let excess = (existing.len() + 1).saturating_sub(MAX_SUBSCRIPTIONS_PER_USER);
        for old in existing.iter().take(excess) {
            state
                .store
                .remove_push_subscription(caller.user_id, old.id)
                .await?;
        }
    }
    let id = state
        .store
        .add_push_subscription(&PushSubscription {
            id: Uuid::now_v7(),
            user_id: caller.user_id,
            endpoint: body.endpoint,
            p256dh,
            auth,
            created_at: super::now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Subscribed { id })))
}

/// Unsubscribes a browser.
#[utoipa::path(delete, path = "/v1/push/subscriptions/{id}", tag = "notifications",
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn unsubscribe(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if state
        .store
        .remove_push_subscription(caller.user_id, id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such subscription"))
    }
}
