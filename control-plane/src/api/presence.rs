//! Presence over REST: what a client asks for when it connects (the
//! WebSocket only reports changes after that).

use axum::Json;

use super::wire::{PresenceList, PresenceView};
use super::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};

/// Most users one answer covers.
const MAX_ENTRIES: usize = 1000;

/// Presence and last-seen time of the caller's accepted contacts and
/// fellow group members (nobody else's is visible: a direct conversation
/// one side opened alone is not consent).
#[utoipa::path(get, path = "/v1/presence", tag = "users",
    responses((status = 200, body = PresenceList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(state: AppState, caller: Caller) -> Result<Json<PresenceList>, ApiError> {
    let mut audience = state.store.presence_audience(caller.user_id).await?;
    audience.sort_unstable();
    audience.dedup();
    audience.truncate(MAX_ENTRIES);
    let presence = &state.gateway.presence;
    let mut entries = Vec::with_capacity(audience.len());
    for user in audience {
        let status = presence.status(user).await;
        let last_seen_at = presence.last_seen(user).await.and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::try_from(ms).ok()? * 1_000_000)
                .ok()
        });
        entries.push(PresenceView {
            user_id: user,
            status: serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            last_seen_at,
        });
    }
    Ok(Json(PresenceList { presence: entries }))
}
