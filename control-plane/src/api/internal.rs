//! The internal API nodes use (`/internal/v1/...`): registration and
//! heartbeats of edges and relays, and edges reporting sessions that ended.
//! Authenticated with the cluster credential (`[control_plane.cluster]
//! secret`), never a user token; not in the public OpenAPI document.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use protocol::calls::{NodeHeartbeat, NodeStatus, ParticipantGone};
use serde::Serialize;

use super::{ApiJson, ApiPath, AppState, bearer_token, now};
use crate::calls::lifecycle::decide;
use crate::error::ApiError;
use crate::store::{CallRefusal, StoreError};

/// A request that presented the cluster credential.
pub struct Cluster;

impl FromRequestParts<AppState> for Cluster {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = state.config.cluster.secret.as_deref().ok_or_else(|| {
            ApiError::unauthorized("this control plane has no cluster credential configured")
        })?;
        let presented = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("missing cluster credential"))?;
        // Constant time: the comparison must not leak how much matched.
        aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            expected.as_bytes(),
        )
        .map_err(|_| ApiError::unauthorized("invalid cluster credential"))?;
        Ok(Cluster)
    }
}

/// What a heartbeat is answered with.
#[derive(Debug, Serialize)]
pub struct HeartbeatAck {
    /// Send the next heartbeat within this many seconds.
    pub heartbeat_interval_secs: u64,
    /// The registration lapses after this many seconds without one.
    pub ttl_secs: u64,
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
    _: Cluster,
    ApiPath(id): ApiPath<String>,
    ApiJson(node): ApiJson<NodeHeartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    check_node_id(&id)?;
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
    state
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
    Ok(Json(HeartbeatAck {
        heartbeat_interval_secs: config.heartbeat_interval_secs,
        ttl_secs: ttl.as_secs(),
    }))
}

/// Deregisters a node (it is shutting down); its participants migrate on
/// the next sweep.
pub async fn deregister(
    state: AppState,
    _: Cluster,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_node_id(&id)?;
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
/// remove sessions placed on itself.
pub async fn participant_gone(
    state: AppState,
    _: Cluster,
    ApiPath(node): ApiPath<String>,
    ApiJson(gone): ApiJson<ParticipantGone>,
) -> Result<StatusCode, ApiError> {
    check_node_id(&node)?;
    let at = now();
    let action = super::calls::gone_action(gone.user_id, gone.device_id.clone());
    let result = state
        .store
        .update_call(gone.call_id, None, at, &|facts| {
            let on_this_node = facts.participants.iter().any(|p| {
                p.user_id == gone.user_id && p.device_id == gone.device_id && p.node_id == node
            });
            if !on_this_node {
                return Err(CallRefusal::NotInCall);
            }
            decide(facts, &action, at)
        })
        .await;
    match result {
        Ok(Ok(change)) => {
            state.calls.metrics.record(&change);
            tracing::info!(call_id = %gone.call_id, user_id = %gone.user_id, node_id = %node,
                           "edge reported participant gone");
            Ok(StatusCode::NO_CONTENT)
        }
        // Already gone (or never here): nothing to do, and edges retry
        // reports, so this is not an error for them.
        Ok(Err(CallRefusal::NotInCall | CallRefusal::State(_))) | Err(StoreError::NotFound) => {
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(Err(other)) => Err(ApiError::conflict("refused", format!("{other:?}"))),
        Err(error) => Err(error.into()),
    }
}
