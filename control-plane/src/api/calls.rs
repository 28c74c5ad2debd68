//! Calls (`/v1/calls...`) and regions. A call is visible to the people it
//! rang or who joined it, and to current members of its conversation;
//! everyone else gets 404 whether or not it exists. Every change goes
//! through the rules in `calls::lifecycle`, applied under the call's row
//! lock by `CallStore::update_call`.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::conversations::page_limit;
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, ClientAddr, now};
use crate::calls::JoinResponse;
use crate::calls::lifecycle::{Action, LeaveReason, decide};
use crate::calls::regions::{ClientLocation, Probe};
use crate::calls::view::{CallView, busy_event, start_events};
use crate::error::{ApiError, ErrorBody};
use crate::store::{
    Call, CallChange, CallKind, CallOutcome, CallRefusal, CallState, CallVideoCodec,
    ConversationKind, OptionalOutcome, Participant, StartOutcome, StoreError,
};

/// `POST /v1/calls`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCall {
    /// The conversation to ring.
    pub conversation_id: Uuid,
    /// `audio` or `video`.
    pub kind: String,
    /// The call's one video codec: `vp8` (default) or `h264`. Every
    /// participant's client must support it (an SFU does not transcode).
    #[serde(default)]
    pub video_codec: Option<String>,
}

/// `POST /v1/calls/{id}/join`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JoinCall {
    /// Which of the caller's devices (default `default`); a device that
    /// joins again replaces its earlier session.
    pub device_id: Option<String>,
    /// The region the client asks for (used when it names one).
    pub region: Option<String>,
    /// RTTs the client measured to the regions' probe URLs.
    pub probes: Vec<Probe>,
    /// Start with the microphone on (default true).
    pub audio: Option<bool>,
    /// Start with the camera on (default: on in video calls).
    pub video: Option<bool>,
    /// Rejoining because this edge (node id) stopped answering: the
    /// control plane probes it, moves everyone off it when it is down, and
    /// places this device elsewhere in any case.
    pub unreachable_edge: Option<String>,
}

/// `POST /v1/calls/{id}/leave`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LeaveCall {
    /// The device leaving (default `default`).
    pub device_id: Option<String>,
}

/// `POST /v1/calls/{id}/media`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaState {
    /// The device (default `default`).
    #[serde(default)]
    pub device_id: Option<String>,
    /// Microphone on.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Screen share on.
    #[serde(default)]
    pub screen: bool,
}

/// `GET /v1/calls` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// A `next_cursor` from the previous page.
    pub before: Option<Uuid>,
    /// Page size, 1-100 (default 50).
    pub limit: Option<i64>,
}

/// One call in a user's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    /// The call.
    pub call: CallView,
    /// How it went for the caller of this API: `completed`, `missed`,
    /// `declined`, `cancelled`, `busy`; `null` while it is not over.
    pub outcome: Option<&'static str>,
}

/// A page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// The calls.
    pub items: Vec<HistoryItem>,
    /// Pass as `before` for the next page; absent on the last.
    pub next_cursor: Option<Uuid>,
}

/// `GET /v1/calls/missed/count` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MissedQuery {
    /// Count only calls newer than this call id (the newest one the client
    /// has shown).
    pub after: Option<Uuid>,
}

/// The call the caller is in now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentCall {
    /// The call (ringing as its caller, accepted or joined), or null when
    /// the caller is in none.
    pub call: Option<CallView>,
}

/// The missed-call count.
#[derive(Debug, Serialize, ToSchema)]
pub struct MissedCount {
    /// Calls missed.
    pub count: i64,
}

/// Totals of a group of calls.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StatsTotals {
    /// Calls.
    pub calls: i64,
    /// Summed duration (answer to end), milliseconds.
    pub total_duration_ms: i64,
    /// Mean duration of the answered calls, milliseconds.
    pub average_duration_ms: i64,
    #[serde(skip)]
    answered: i64,
}

impl StatsTotals {
    fn add(&mut self, calls: i64, duration_ms: i64, answered: bool) {
        self.calls += calls;
        self.total_duration_ms += duration_ms;
        if answered {
            self.answered += calls;
        }
        self.average_duration_ms = if self.answered > 0 {
            self.total_duration_ms / self.answered
        } else {
            0
        };
    }
}

/// A user's call statistics (ended calls).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct CallStats {
    /// All calls.
    pub total: StatsTotals,
    /// By `audio` / `video`.
    pub by_kind: std::collections::BTreeMap<&'static str, StatsTotals>,
    /// By the outcome for the user.
    pub by_outcome: std::collections::BTreeMap<&'static str, StatsTotals>,
}

/// A region clients may probe.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionView {
    /// Name.
    pub name: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// URL to time for an RTT probe.
    pub probe_url: Option<String>,
}

/// The regions.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionList {
    /// Every configured region.
    pub regions: Vec<RegionView>,
    /// Where clients go when nothing else says.
    pub default_region: String,
}

fn device(id: Option<String>) -> Result<String, ApiError> {
    let id = id.unwrap_or_else(|| "default".to_owned());
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !ok {
        return Err(ApiError::invalid(
            "invalid_device_id",
            "device_id must be 1-64 of A-Z a-z 0-9 - _ . :",
        ));
    }
    Ok(id)
}

fn refusal(refusal: CallRefusal) -> ApiError {
    match refusal {
        CallRefusal::State(why) => ApiError::conflict("invalid_call_state", why),
        CallRefusal::Busy => ApiError::conflict("busy", "you are in another call"),
        CallRefusal::NotInCall => ApiError::not_found("that device is not in the call"),
        CallRefusal::Forbidden(why) => ApiError::forbidden(why),
    }
}

impl AppState {
    /// The call, if `user` may see it (else 404).
    async fn visible_call(&self, id: Uuid, user: Uuid) -> Result<Call, ApiError> {
        let missing = || ApiError::not_found("no such call");
        let call = self.store.call(id).await?.ok_or_else(missing)?;
        if self.store.call_invited(id, user).await?
            || self
                .store
                .membership(call.conversation_id, user)
                .await?
                .is_some()
        {
            Ok(call)
        } else {
            Err(missing())
        }
    }

    /// A block either way ends calling between two people, as it ends
    /// messaging: 403 `blocked`.
    async fn refuse_if_blocked(&self, me: Uuid, other: Uuid) -> Result<(), ApiError> {
        if self.blocked_between(me, other).await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "blocked",
                "you cannot call this user",
            ));
        }
        Ok(())
    }

    /// [`AppState::refuse_if_blocked`] against the other person of direct
    /// call `call`.
    async fn refuse_if_blocked_in(&self, call: &Call, me: Uuid) -> Result<(), ApiError> {
        let other = if call.initiator_id == me {
            call.callee_id
        } else {
            Some(call.initiator_id)
        };
        match other {
            Some(other) => self.refuse_if_blocked(me, other).await,
            None => Ok(()),
        }
    }

    /// `user` is no longer in group `conversation`: each of their devices
    /// leaves its live call (`call.participant_left`, reason `removed`).
    pub(crate) async fn leave_group_call(
        &self,
        conversation: Uuid,
        user: Uuid,
    ) -> Result<(), ApiError> {
        let Some(call) = self.store.live_call_of(conversation).await? else {
            return Ok(());
        };
        let devices: Vec<String> = self
            .store
            .live_participants(call)
            .await?
            .into_iter()
            .filter(|p| p.user_id == user)
            .map(|p| p.device_id)
            .collect();
        for device in devices {
            let at = now();
            let action = Action::Leave {
                user,
                device,
                reason: LeaveReason::Removed,
            };
            match self
                .store
                .update_call(call, None, at, &|facts| decide(facts, &action, at))
                .await
            {
                Ok(Ok(change)) => self.calls.metrics.record(&change),
                // Left or ended meanwhile: nothing to do.
                Ok(Err(_)) | Err(StoreError::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.calls.wake().await;
        Ok(())
    }

    /// Runs `action` on call `id` for `actor`.
    async fn act(&self, id: Uuid, actor: Uuid, action: Action) -> Result<CallChange, ApiError> {
        let at = now();
        match self
            .store
            .update_call(id, Some(actor), at, &|facts| decide(facts, &action, at))
            .await
        {
            Ok(Ok(change)) => {
                self.calls.metrics.record(&change);
                Ok(change)
            }
            Ok(Err(why)) => Err(refusal(why)),
            Err(StoreError::NotFound) => Err(ApiError::not_found("no such call")),
            Err(error) => Err(error.into()),
        }
    }

    /// The usual shape of a lifecycle route: the caller must see the call;
    /// the action runs; the call's new state is the answer.
    async fn act_as_caller(
        &self,
        id: Uuid,
        caller: Caller,
        action: Action,
    ) -> Result<Json<CallView>, ApiError> {
        self.visible_call(id, caller.user_id).await?;
        self.act(id, caller.user_id, action).await?;
        Ok(Json(self.call_view(id).await?))
    }

    async fn call_view(&self, id: Uuid) -> Result<CallView, ApiError> {
        let call = self
            .store
            .call(id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such call"))?;
        let participants = self.store.live_participants(id).await?;
        Ok(CallView::with_participants(&call, &participants))
    }
}

/// Starts a call: the conversation's members get `call.ringing` on every
/// device. A direct call to someone in another call is recorded as `busy`
/// (the caller gets 409 `busy` and `call.busy`).
#[utoipa::path(post, path = "/v1/calls", tag = "calls", request_body = StartCall,
    responses(
        (status = 201, body = CallView, description = "Ringing"),
        (status = 403, body = ErrorBody, description = "`blocked`: one of you blocked the other (direct calls)"),
        (status = 404, body = ErrorBody, description = "No such conversation (or not a member)"),
        (status = 409, body = ErrorBody, description = "`busy` (you or the callee are in a call) or `call_in_progress`"),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "`rate_limited`"),
    ),
    security(("bearer" = [])))]
pub async fn start(
    state: AppState,
    caller: Caller,
    ApiJson(body): ApiJson<StartCall>,
) -> Result<(StatusCode, Json<CallView>), ApiError> {
    let kind = CallKind::parse(&body.kind)
        .ok_or_else(|| ApiError::invalid("invalid_kind", "kind must be audio or video"))?;
    let video_codec = match body.video_codec.as_deref() {
        None => CallVideoCodec::Vp8,
        Some(name) => CallVideoCodec::parse(name).ok_or_else(|| {
            ApiError::invalid("invalid_video_codec", "video_codec must be vp8 or h264")
        })?,
    };
    let (conversation, _) = state
        .member_of(body.conversation_id, caller.user_id)
        .await?;
    state
        .throttle(
            "calls",
            caller.user_id,
            state.config.rate_limits.calls_per_user,
        )
        .await?;
    let direct = conversation.kind == ConversationKind::Direct;
    let callee_id = if direct {
        let members = state.store.members(conversation.id).await?;
        let other = members
            .iter()
            .map(|m| m.user.id)
            .find(|id| *id != caller.user_id)
            .ok_or_else(|| {
                ApiError::conflict("no_callee", "nobody else is in this conversation")
            })?;
        state.refuse_if_blocked(caller.user_id, other).await?;
        Some(other)
    } else {
        None
    };
    let at = now();
    let call = Call {
        id: Uuid::now_v7(),
        conversation_id: conversation.id,
        direct,
        kind,
        video_codec,
        initiator_id: caller.user_id,
        callee_id,
        state: CallState::Ringing,
        outcome: OptionalOutcome(None),
        created_at: at,
        ring_deadline_us: Some(state.calls.ring_deadline(at)),
        answered_at: None,
        ended_at: None,
        ended_by: None,
        duration_ms: 0,
    };
    match state.store.start_call(&call, start_events, at).await? {
        StartOutcome::Ringing(call) => {
            state
                .calls
                .metrics
                .started
                .with_label_values(&[call.kind.as_str()])
                .inc();
            tracing::info!(call_id = %call.id, conversation_id = %call.conversation_id, "call started");
            Ok((StatusCode::CREATED, Json(CallView::new(&call))))
        }
        StartOutcome::CallerBusy => Err(ApiError::conflict("busy", "you are in another call")),
        StartOutcome::CalleeBusy(call) => {
            state
                .calls
                .metrics
                .started
                .with_label_values(&[call.kind.as_str()])
                .inc();
            state.calls.metrics.ended.with_label_values(&["busy"]).inc();
            // A 409 does not wake the hubs (only successes do): call.busy
            // was written, so wake them here.
            state.calls.wake().await;
            Err(ApiError::conflict(
                "busy",
                format!(
                    "the callee is in another call (call {} recorded as busy)",
                    call.id
                ),
            ))
        }
        StartOutcome::InProgress(id) => Err(ApiError::conflict(
            "call_in_progress",
            format!("this conversation already has call {id}; join it"),
        )),
    }
}

/// The call's state and the devices in it.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls",
    responses((status = 200, body = CallView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CallView>, ApiError> {
    state.visible_call(id, caller.user_id).await?;
    Ok(Json(state.call_view(id).await?))
}

/// Remove a call from the caller's own history (the other people keep
/// theirs). Only an ended call; removing it again is a no-op.
#[utoipa::path(delete, path = "/v1/calls/{id}", tag = "calls",
    responses((status = 204, description = "gone from your history, missed count and stats"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_from_history(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::http::StatusCode, ApiError> {
    let call = state.visible_call(id, caller.user_id).await?;
    if call.state != CallState::Ended {
        return Err(ApiError::conflict(
            "call_not_ended",
            "a call leaves your history once it has ended",
        ));
    }
    // A member who was never rung (joined the group later) has no entry.
    if !state.store.hide_call(id, caller.user_id).await? {
        return Err(ApiError::not_found("no such call in your history"));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The call the caller is in now: ringing as its caller, accepted or
/// joined (a person is in at most one).
#[utoipa::path(get, path = "/v1/calls/current", tag = "calls",
    responses((status = 200, body = CurrentCall)), security(("bearer" = [])))]
pub async fn current(state: AppState, caller: Caller) -> Result<Json<CurrentCall>, ApiError> {
    let call = match state.store.current_call(caller.user_id).await? {
        Some(id) => Some(state.call_view(id).await?),
        None => None,
    };
    Ok(Json(CurrentCall { call }))
}

/// The callee answers a direct call (`call.accepted`). While in another
/// call: 409 `busy`, and the caller gets `call.busy`.
#[utoipa::path(post, path = "/v1/calls/{id}/accept", tag = "calls",
    responses((status = 200, body = CallView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn accept(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CallView>, ApiError> {
    let call = state.visible_call(id, caller.user_id).await?;
    if call.direct {
        state.refuse_if_blocked_in(&call, caller.user_id).await?;
    }
    let result = state
        .act(
            id,
            caller.user_id,
            Action::Accept {
                user: caller.user_id,
            },
        )
        .await;
    if let Err(error) = &result
        && error.code == "busy"
    {
        // Tell the caller, without changing the call: the callee may still
        // hang up elsewhere and answer.
        let event = busy_event(&call, caller.user_id);
        let at = now();
        let _ = state
            .store
            .update_call(id, None, at, &|_| {
                Ok(CallChange {
                    events: vec![event.clone()],
                    ..CallChange::default()
                })
            })
            .await;
        state.calls.wake().await;
    }
    result?;
    Ok(Json(state.call_view(id).await?))
}

/// Declines: a direct call ends (`call.declined`); in a group call only the
/// caller's own ringing stops.
#[utoipa::path(post, path = "/v1/calls/{id}/decline", tag = "calls",
    responses((status = 200, body = CallView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn decline(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CallView>, ApiError> {
    state
        .act_as_caller(
            id,
            caller,
            Action::Decline {
                user: caller.user_id,
            },
        )
        .await
}

/// The initiator hangs up while it rings (`call.cancelled`).
#[utoipa::path(post, path = "/v1/calls/{id}/cancel", tag = "calls",
    responses((status = 200, body = CallView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CallView>, ApiError> {
    state
        .act_as_caller(
            id,
            caller,
            Action::Cancel {
                user: caller.user_id,
            },
        )
        .await
}

/// Ends the call for everyone (`call.ended`): either party of a direct
/// call; the initiator or a conversation admin of a group call.
#[utoipa::path(post, path = "/v1/calls/{id}/end", tag = "calls",
    responses((status = 200, body = CallView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn end(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CallView>, ApiError> {
    let call = state.visible_call(id, caller.user_id).await?;
    let admin = state
        .store
        .membership(call.conversation_id, caller.user_id)
        .await?
        .is_some_and(|(_, member)| member.role.can_manage());
    state
        .act(
            id,
            caller.user_id,
            Action::End {
                user: caller.user_id,
                admin,
            },
        )
        .await?;
    Ok(Json(state.call_view(id).await?))
}

/// Joins from one device: places it on an edge in the client's region (or
/// the nearest with room), and returns the edge, ICE servers and a join
/// token. Joining a ringing direct call as the callee answers it.
#[utoipa::path(post, path = "/v1/calls/{id}/join", tag = "calls", request_body = JoinCall,
    responses((status = 200, body = JoinResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "`rate_limited`"),
              (status = 503, body = ErrorBody, description = "`no_edge`: no healthy edge has room")),
    security(("bearer" = [])))]
pub async fn join(
    state: AppState,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<JoinCall>,
) -> Result<Json<JoinResponse>, ApiError> {
    let call = state.visible_call(id, caller.user_id).await?;
    if !call.direct
        && state
            .store
            .membership(call.conversation_id, caller.user_id)
            .await?
            .is_none()
    {
        return Err(ApiError::forbidden(
            "only members of the conversation may join",
        ));
    }
    if call.state == CallState::Ended {
        return Err(ApiError::conflict(
            "invalid_call_state",
            "the call has ended",
        ));
    }
    if call.direct {
        state.refuse_if_blocked_in(&call, caller.user_id).await?;
    }
    state
        .throttle(
            "call joins",
            caller.user_id,
            state.config.rate_limits.call_joins_per_user,
        )
        .await?;
    let device_id = device(body.device_id)?;
    if body.probes.len() > 64 {
        return Err(ApiError::invalid("invalid_probes", "at most 64 probes"));
    }
    let header = state
        .calls
        .config
        .region_header
        .as_deref()
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok());
    let client_region = state.calls.regions.resolve(&ClientLocation {
        hint: body.region.as_deref(),
        probes: &body.probes,
        header,
        addr,
    });
    let current = state.store.live_participants(id).await?;
    let avoid = body.unreachable_edge.as_deref().filter(|node| {
        // Only this device's own edge is worth a probe: anything else is
        // a stale report (it was moved already) or not its business.
        current
            .iter()
            .any(|p| p.user_id == caller.user_id && p.device_id == device_id && p.node_id == *node)
    });
    if let Some(node) = avoid {
        let found = state.calls.report_unreachable(node).await;
        tracing::info!(call_id = %id, user_id = %caller.user_id, node_id = %node,
                       probe = ?found, "rejoin: edge unreachable for the client");
    }
    let placed = match avoid {
        Some(node) => {
            state
                .calls
                .place_avoiding(id, &client_region.0, &current, node)
                .await
        }
        None => state.calls.place(id, &client_region.0, &current).await,
    };
    let edge = placed.map_err(|e| ApiError::internal(&e))?.ok_or_else(|| {
        state.calls.metrics.placement_failures.inc();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_edge",
            "no healthy edge node has room for this call; try again shortly",
        )
    })?;
    let at = now();
    let participant = Participant {
        id: Uuid::now_v7(),
        call_id: id,
        user_id: caller.user_id,
        device_id,
        node_id: edge.id.clone(),
        region: client_region.0.clone(),
        audio: body.audio.unwrap_or(true),
        video: body.video.unwrap_or(call.kind == CallKind::Video) && call.kind == CallKind::Video,
        screen: false,
        joined_at: at,
        placed_at: at,
        left_at: None,
    };
    state
        .act(
            id,
            caller.user_id,
            Action::Join {
                participant: participant.clone(),
            },
        )
        .await?;
    state.calls.metrics.joins.inc();
    tracing::info!(call_id = %id, user_id = %caller.user_id, node_id = %edge.id,
                   region = %client_region.0, "participant placed");
    Ok(Json(state.calls.join_response(
        &participant,
        &call,
        &edge,
        client_region,
        at,
    )))
}

/// Leaves from one device (`call.participant_left`); the call ends when
/// its last device leaves (either side of a direct call).
#[utoipa::path(post, path = "/v1/calls/{id}/leave", tag = "calls",
    request_body(content = Option<LeaveCall>, description = "Optional: no body leaves from the default device"),
    responses((status = 204, description = "Left"), (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn leave(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    state.visible_call(id, caller.user_id).await?;
    // The body is optional: an empty one means the default device.
    let body: LeaveCall = if body.iter().all(u8::is_ascii_whitespace) {
        LeaveCall::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("malformed_json", e.to_string()))?
    };
    let device = device(body.device_id)?;
    state
        .act(
            id,
            caller.user_id,
            Action::Leave {
                user: caller.user_id,
                device,
                reason: LeaveReason::Left,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Turns a device's audio, video or screen share on or off
/// (`call.media_state`).
#[utoipa::path(post, path = "/v1/calls/{id}/media", tag = "calls", request_body = MediaState,
    responses((status = 204, description = "Broadcast"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn media(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MediaState>,
) -> Result<StatusCode, ApiError> {
    state.visible_call(id, caller.user_id).await?;
    let device = device(body.device_id)?;
    state
        .act(
            id,
            caller.user_id,
            Action::Media {
                user: caller.user_id,
                device,
                audio: body.audio,
                video: body.video,
                screen: body.screen,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's calls, newest first.
#[utoipa::path(get, path = "/v1/calls", tag = "calls", params(HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let entries = state
        .store
        .call_history(caller.user_id, query.before, limit + 1)
        .await?;
    let more = entries.len() as i64 > limit;
    let items: Vec<HistoryItem> = entries
        .into_iter()
        .take(limit as usize)
        .map(|e| HistoryItem {
            call: CallView::new(&e.call),
            outcome: e.outcome.map(CallOutcome::as_str),
        })
        .collect();
    let next_cursor = more.then(|| items.last().map(|i| i.call.id)).flatten();
    Ok(Json(HistoryPage { items, next_cursor }))
}

/// How many calls the caller missed.
#[utoipa::path(get, path = "/v1/calls/missed/count", tag = "calls", params(MissedQuery),
    responses((status = 200, body = MissedCount)), security(("bearer" = [])))]
pub async fn missed_count(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<MissedQuery>,
) -> Result<Json<MissedCount>, ApiError> {
    let count = state
        .store
        .missed_calls(caller.user_id, query.after)
        .await?;
    Ok(Json(MissedCount { count }))
}

/// The caller's call statistics: counts and durations in total, by kind
/// and by outcome.
#[utoipa::path(get, path = "/v1/calls/stats", tag = "calls",
    responses((status = 200, body = CallStats)), security(("bearer" = [])))]
pub async fn stats(state: AppState, caller: Caller) -> Result<Json<CallStats>, ApiError> {
    let mut stats = CallStats::default();
    for row in state.store.call_stats(caller.user_id).await? {
        let answered = row.total_duration_ms > 0 || row.outcome == CallOutcome::Completed;
        stats.total.add(row.calls, row.total_duration_ms, answered);
        stats.by_kind.entry(row.kind.as_str()).or_default().add(
            row.calls,
            row.total_duration_ms,
            answered,
        );
        stats
            .by_outcome
            .entry(row.outcome.as_str())
            .or_default()
            .add(row.calls, row.total_duration_ms, answered);
    }
    Ok(Json(stats))
}

/// The regions and their probe URLs (no login needed: clients probe
/// before they join).
#[utoipa::path(get, path = "/v1/regions", tag = "calls",
    responses((status = 200, body = RegionList)))]
pub async fn regions(state: AppState) -> Json<RegionList> {
    let config = &state.calls.config;
    Json(RegionList {
        regions: config
            .regions
            .iter()
            .map(|r| RegionView {
                name: r.name.clone(),
                latitude: r.latitude,
                longitude: r.longitude,
                probe_url: r.probe_url.clone(),
            })
            .collect(),
        default_region: config.default_region.clone(),
    })
}
