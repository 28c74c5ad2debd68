//! How calls look on the wire (REST bodies and event payloads), and the
//! call events rendered from them. Event names are `shared/api.md`'s.

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::{Call, NewEvent, Participant, StartOutcome};

/// A call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallView {
    /// Id.
    pub id: Uuid,
    /// The conversation it rings in.
    pub conversation_id: Uuid,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// The call's one video codec: `vp8` or `h264`.
    pub video_codec: &'static str,
    /// A direct (1:1) call, else a group call.
    pub direct: bool,
    /// Who started it.
    pub initiator_id: Uuid,
    /// The callee of a direct call.
    pub callee_id: Option<Uuid>,
    /// `ringing`, `active` or `ended`.
    pub state: &'static str,
    /// Once ended: `completed`, `missed`, `declined`, `cancelled` or `busy`.
    pub outcome: Option<&'static str>,
    /// When started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// While ringing: when it becomes missed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ring_deadline: Option<OffsetDateTime>,
    /// When answered.
    #[serde(with = "time::serde::rfc3339::option")]
    pub answered_at: Option<OffsetDateTime>,
    /// When ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Answer to end, milliseconds.
    pub duration_ms: i64,
    /// The devices in the call now (on `GET /v1/calls/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<ParticipantView>>,
}

impl CallView {
    /// The call without its participants.
    pub fn new(call: &Call) -> Self {
        CallView {
            id: call.id,
            conversation_id: call.conversation_id,
            kind: call.kind.as_str(),
            video_codec: call.video_codec.as_str(),
            direct: call.direct,
            initiator_id: call.initiator_id,
            callee_id: call.callee_id,
            state: call.state.as_str(),
            outcome: call.outcome.0.map(|o| o.as_str()),
            created_at: call.created_at,
            ring_deadline: call.ring_deadline_us.and_then(from_micros),
            answered_at: call.answered_at,
            ended_at: call.ended_at,
            duration_ms: call.duration_ms,
            participants: None,
        }
    }

    /// With its live participants.
    pub fn with_participants(call: &Call, participants: &[Participant]) -> Self {
        CallView {
            participants: Some(participants.iter().map(ParticipantView::from).collect()),
            ..CallView::new(call)
        }
    }
}

/// Unix microseconds as a time.
pub fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
}

/// One device in a call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParticipantView {
    /// Who.
    pub user_id: Uuid,
    /// Which of their devices.
    pub device_id: String,
    /// The edge node serving it.
    pub node_id: String,
    /// The client's region (the edge may be in the nearest other one).
    pub region: String,
    /// Microphone on.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Sharing a screen.
    pub screen: bool,
    /// When it joined.
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

impl From<&Participant> for ParticipantView {
    fn from(p: &Participant) -> Self {
        ParticipantView {
            user_id: p.user_id,
            device_id: p.device_id.clone(),
            node_id: p.node_id.clone(),
            region: p.region.clone(),
            audio: p.audio,
            video: p.video,
            screen: p.screen,
            joined_at: p.joined_at,
        }
    }
}

fn event(
    conversation_id: Option<Uuid>,
    user_id: Option<Uuid>,
    kind: &'static str,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        conversation_id,
        user_id,
        kind,
        payload: data.to_string(),
    }
}

/// `call.ringing`, `call.accepted`, `call.cancelled`, `call.missed`,
/// `call.ended` (and `call.declined` of a direct call): the call's new
/// state, to its conversation's members; `user_id` names who acted.
pub fn call_event(kind: &'static str, call: &Call, user_id: Option<Uuid>) -> NewEvent {
    event(
        Some(call.conversation_id),
        None,
        kind,
        serde_json::json!({ "call": CallView::new(call), "user_id": user_id }),
    )
}

/// `call.participant_joined`, `call.participant_left` (with why) and
/// `call.media_state`, to the conversation's members.
pub fn participant_event(
    kind: &'static str,
    call: &Call,
    participant: &Participant,
    reason: Option<&'static str>,
) -> NewEvent {
    let mut data = serde_json::json!({
        "call_id": call.id,
        "participant": ParticipantView::from(participant),
    });
    if let Some(reason) = reason {
        data["reason"] = reason.into();
    }
    event(Some(call.conversation_id), None, kind, data)
}

/// The events of a start: `call.ringing` to the members, or `call.busy`
/// to the caller (on all their devices) when the callee is in a call.
pub fn start_events(outcome: &StartOutcome) -> Vec<NewEvent> {
    match outcome {
        StartOutcome::Ringing(call) => vec![call_event("call.ringing", call, None)],
        StartOutcome::CalleeBusy(call) => vec![event(
            None,
            Some(call.initiator_id),
            "call.busy",
            serde_json::json!({ "call": CallView::new(call), "user_id": call.callee_id }),
        )],
        StartOutcome::CallerBusy | StartOutcome::InProgress(_) => Vec::new(),
    }
}

/// `call.busy` to the caller of `call` when `user` tried to accept it while
/// in another call.
pub fn busy_event(call: &Call, user: Uuid) -> NewEvent {
    event(
        None,
        Some(call.initiator_id),
        "call.busy",
        serde_json::json!({ "call": CallView::new(call), "user_id": user }),
    )
}

/// `call.migrate` to one user: their device `device_id` must move to the
/// new assignment (`join`: the body `POST /v1/calls/{id}/join` returns).
pub fn migrate_event(
    participant: &Participant,
    from_node: &str,
    join: serde_json::Value,
) -> NewEvent {
    event(
        None,
        Some(participant.user_id),
        "call.migrate",
        serde_json::json!({
            "call_id": participant.call_id,
            "device_id": participant.device_id,
            "from_node_id": from_node,
            "join": join,
        }),
    )
}
