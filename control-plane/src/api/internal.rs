//! The internal API nodes use (`/internal/v1/...`): registration and
//! heartbeats of edges and relays, and edges reporting sessions that ended.
//! Authenticated with the cluster credential (`[control_plane.cluster]
//! secret`), never a user token; not in the public OpenAPI document.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use protocol::calls::{HeartbeatAck, NodeHeartbeat, NodeStatus, ParticipantGone};

use super::{ApiJson, ApiPath, AppState, bearer_token, now};
use crate::calls::lifecycle::{Action, LeaveReason, decide};
use crate::error::ApiError;
use crate::store::{CallRefusal, StoreError};
use uuid::Uuid;

/// A request that presented the cluster's root credential (operators'
/// tools; nodes get their own, see [`node_credential`]).
pub struct Cluster;

impl FromRequestParts<AppState> for Cluster {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let root = root_secret(state)?;
        let presented = presented(&parts.headers)?;
        constant_time_eq(presented, root)
            .then_some(Cluster)
            .ok_or_else(|| ApiError::unauthorized("invalid cluster credential"))
    }
}

fn root_secret(state: &AppState) -> Result<&str, ApiError> {
    state.config.cluster.secret.as_deref().ok_or_else(|| {
        ApiError::unauthorized("this control plane has no cluster credential configured")
    })
}

fn presented(headers: &HeaderMap) -> Result<&str, ApiError> {
    bearer_token(headers).ok_or_else(|| ApiError::unauthorized("missing cluster credential"))
}

/// Constant time: the comparison must not leak how much matched.
fn constant_time_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// The credential of node `id`: `base64url(HMAC-SHA256(root secret,
/// "cascade-node:" + id))`. Each node holds only its own
/// (`cascade admin node-credential <id>` prints it), so a node can speak
/// only for itself: register, heartbeat, report its own sessions.
pub fn node_credential(root_secret: &str, id: &str) -> String {
    use base64::Engine;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, root_secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("cascade-node:{id}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

/// Checks that the request speaks for node `id`: its own credential, or
/// the root one (operators).
fn authorize_node(state: &AppState, headers: &HeaderMap, id: &str) -> Result<(), ApiError> {
    let root = root_secret(state)?;
    let presented = presented(headers)?;
    if constant_time_eq(presented, &node_credential(root, id)) || constant_time_eq(presented, root)
    {
        Ok(())
    } else {
        Err(ApiError::unauthorized(format!(
            "not the credential of node {id:?}"
        )))
    }
}

fn check_node_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_node_id",
            "node ids are 1-64 of A-Z a-z 0-9 - _ .",
        ))
    }
}

/// Registers a node or renews its registration with its whole state.
pub async fn heartbeat(
    state: AppState,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(node): ApiJson<NodeHeartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    check_node_id(&id)?;
    authorize_node(&state, &headers, &id)?;
    for (name, url, schemes) in [
        (
            "signaling_url",
            &node.endpoints.signaling_url,
            &["wss", "ws"][..],
        ),
        ("whip_url", &node.endpoints.whip_url, &["https", "http"][..]),
        ("whep_url", &node.endpoints.whep_url, &["https", "http"][..]),
    ] {
        if let Some(url) = url
            && !url::Url::parse(url)
                .is_ok_and(|u| schemes.contains(&u.scheme()) && u.host().is_some())
        {
            return Err(ApiError::invalid(
                "invalid_endpoint",
                format!("{name} must be a {} URL", schemes.join(" or ")),
            ));
        }
    }
    if node.sessions.as_ref().is_some_and(|s| s.len() > 100_000) {
        return Err(ApiError::invalid(
            "invalid_sessions",
            "at most 100000 sessions",
        ));
    }
    let config = &state.calls.config;
    if !config.regions.iter().any(|r| r.name == node.region) {
        return Err(ApiError::invalid(
            "unknown_region",
            format!("region {:?} is not configured", node.region),
        ));
    }
    if !(1..=1_000_000).contains(&node.capacity) {
        return Err(ApiError::invalid(
            "invalid_capacity",
            "capacity must be 1-1000000",
        ));
    }
    let ttl = state.calls.node_ttl();
    let restarted_from = state
        .calls
        .registry
        .heartbeat(&id, &node, ttl)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_unavailable",
                e.to_string(),
            )
        })?;
    if let Some(previous) = restarted_from {
        // A new incarnation: the node restarted and every session placed
        // on it is gone, however quickly it came back. Its participants
        // get a fresh placement now (maybe this node again) instead of
        // being reconciled away, which would end their calls.
        state.calls.metrics.node_restarts.inc();
        tracing::warn!(node_id = %id, %previous, incarnation = ?node.incarnation,
                       "node restarted; migrating its sessions");
        if let Err(error) = state.calls.migrate_node_now(&id).await {
            tracing::warn!(node_id = %id, %error, "cannot migrate a restarted node's sessions");
        }
    }
    let mut close_sessions = Vec::new();
    if restarted_from.is_none()
        && let Some(connected) = &node.sessions
    {
        close_sessions = reconcile_sessions(&state, &id, connected).await?;
    }
    Ok(Json(HeartbeatAck {
        heartbeat_interval_secs: config.heartbeat_interval_secs,
        ttl_secs: ttl.as_secs(),
        close_sessions,
    }))
}

/// Deregisters a node (it is shutting down); its participants migrate on
/// the next sweep.
pub async fn deregister(
    state: AppState,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_node_id(&id)?;
    authorize_node(&state, &headers, &id)?;
    let removed = state.calls.registry.remove(&id).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            e.to_string(),
        )
    })?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such node"))
    }
}

/// The live nodes.
pub async fn list(state: AppState, _: Cluster) -> Result<Json<Vec<NodeStatus>>, ApiError> {
    let nodes = state.calls.registry.nodes().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(nodes))
}

/// An edge reports a participant's session gone (ICE failed, closed): it
/// leaves the call like `POST /v1/calls/{id}/leave`. An edge can only
/// remove sessions placed on itself, and only the session it names (a
/// device that rejoined has a new session).
pub async fn participant_gone(
    state: AppState,
    headers: HeaderMap,
    ApiPath(node): ApiPath<String>,
    ApiJson(gone): ApiJson<ParticipantGone>,
) -> Result<StatusCode, ApiError> {
    check_node_id(&node)?;
    authorize_node(&state, &headers, &node)?;
    // Already gone (or never here) is fine: edges retry reports.
    remove_session(&state, gone.call_id, gone.session_id, &node).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes session `session` of `call` if it is live on `node`. Whether it
/// was.
async fn remove_session(
    state: &AppState,
    call: Uuid,
    session: Uuid,
    node: &str,
) -> Result<bool, ApiError> {
    let at = now();
    let result = state
        .store
        .update_call(call, None, at, &|facts| {
            let Some(p) = facts
                .participants
                .iter()
                .find(|p| p.id == session && p.node_id == node)
            else {
                return Err(CallRefusal::NotInCall);
            };
            decide(
                facts,
                &Action::Leave {
                    user: p.user_id,
                    device: p.device_id.clone(),
                    reason: LeaveReason::Gone,
                },
                at,
            )
        })
        .await;
    match result {
        Ok(Ok(change)) => {
            state.calls.metrics.record(&change);
            tracing::info!(call_id = %call, session_id = %session, node_id = %node,
                           "participant session gone");
            Ok(true)
        }
        Ok(Err(_)) | Err(StoreError::NotFound) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// How long a session that moved to another edge may stay connected to
/// the one it left: the client keeps its old connection until the new one
/// carries media (about a second when an edge drains).
const MOVED_SESSION_GRACE: time::Duration = time::Duration::seconds(15);

/// Both directions of "the edge's sessions vs. the call state":
///
/// - sessions placed on `node` (joined, or migrated there) longer than a
///   join token's life ago that the edge does not list as connected are
///   removed (the client had its time to connect; counting from the
///   placement, not the join, keeps a migrated participant of an old call
///   while it reconnects);
/// - sessions the edge lists that are not participants there any more
///   (they left, were removed, the call ended, or they moved to another
///   edge more than [`MOVED_SESSION_GRACE`] ago) are returned, for the
///   edge to close: a join token then opens nothing that outlives its
///   participant.
async fn reconcile_sessions(
    state: &AppState,
    node: &str,
    connected: &[Uuid],
) -> Result<Vec<Uuid>, ApiError> {
    let listed: std::collections::HashSet<Uuid> = connected.iter().copied().collect();
    let at = now();
    let cutoff = at - time::Duration::seconds(state.calls.config.join_token_ttl_secs as i64);
    let placed = state.store.node_participants(node).await?;
    let mut removed = false;
    for p in placed
        .iter()
        .filter(|p| p.placed_at < cutoff && !listed.contains(&p.id))
    {
        removed |= remove_session(state, p.call_id, p.id, node).await?;
    }
    if removed {
        // Outside the request's own write, the hubs hear it from here.
        state.calls.wake().await;
    }
    let here: std::collections::HashSet<Uuid> = placed.iter().map(|p| p.id).collect();
    let strangers: Vec<Uuid> = listed.difference(&here).copied().collect();
    if strangers.is_empty() {
        return Ok(Vec::new());
    }
    let known: std::collections::HashMap<Uuid, crate::store::Participant> = state
        .store
        .participants_by_id(&strangers)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let close: Vec<Uuid> = strangers
        .into_iter()
        .filter(|id| match known.get(id) {
            // Never a participant (or its call was deleted).
            None => true,
            Some(p) if p.left_at.is_some() => true,
            // Moved elsewhere: the client is switching over.
            Some(p) => at - p.placed_at > MOVED_SESSION_GRACE,
        })
        .collect();
    if !close.is_empty() {
        tracing::info!(node_id = %node, sessions = close.len(), "edge told to close sessions that are no longer its participants");
    }
    Ok(close)
}
