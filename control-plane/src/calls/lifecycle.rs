//! The call rules: pure functions from what is true of a call now
//! ([`CallFacts`]) and what someone does ([`Action`]) to what changes
//! ([`CallChange`], events included) or why not ([`CallRefusal`]). No
//! clock (`now` is passed in), no I/O: the store runs [`decide`] under the
//! call's row lock and applies the answer atomically.
//!
//! Direct calls: ringing → accepted (`active`) → ended `completed`; or
//! ended `declined` (callee), `cancelled` (caller hangs up while ringing),
//! `missed` (ring timeout). Either party leaving an active direct call ends
//! it. Group calls: ringing until someone other than the initiator joins;
//! anyone in the conversation may join while it is not ended; it ends when
//! the last device leaves or when the initiator or a conversation admin
//! ends it. A user's busy lock is taken when they start, accept or join,
//! and released when their last device leaves or the call ends.

use time::OffsetDateTime;
use uuid::Uuid;

use super::view::{call_event, participant_event};
use crate::store::{
    Call, CallChange, CallFacts, CallOutcome, CallRefusal, CallState, NewEvent, OptionalOutcome,
    Participant,
};

/// Why a device left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client said so (`POST /v1/calls/{id}/leave`).
    Left,
    /// Its edge reported the session gone.
    Gone,
    /// The user left the call's group or was removed from it.
    Removed,
}

impl LeaveReason {
    fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Gone => "gone",
            LeaveReason::Removed => "removed",
        }
    }
}

/// Something that happens to a call.
#[derive(Debug, Clone)]
pub enum Action {
    /// The callee answers (direct); in a group call it only stops the
    /// user's other devices ringing.
    Accept {
        /// Who.
        user: Uuid,
    },
    /// The callee declines (direct: the call ends); a group member
    /// declines for themselves.
    Decline {
        /// Who.
        user: Uuid,
    },
    /// The initiator hangs up while it rings.
    Cancel {
        /// Who.
        user: Uuid,
    },
    /// Someone ends the call for everyone.
    End {
        /// Who.
        user: Uuid,
        /// They manage the conversation (owner or admin).
        admin: bool,
    },
    /// The ring deadline passed (a sweeper noticed).
    RingTimeout,
    /// An answered call has had no device in it since `since` (nobody
    /// joined after answering, or their sessions never connected).
    Idle {
        /// The call must have been answered before this.
        since: OffsetDateTime,
    },
    /// A device joins (placed already: the participant carries its node).
    Join {
        /// The new session.
        participant: Participant,
    },
    /// A device leaves.
    Leave {
        /// Who.
        user: Uuid,
        /// Which device.
        device: String,
        /// Why.
        reason: LeaveReason,
    },
    /// A device turns media on or off.
    Media {
        /// Who.
        user: Uuid,
        /// Which device.
        device: String,
        /// Microphone.
        audio: bool,
        /// Camera.
        video: bool,
        /// Screen share.
        screen: bool,
    },
    /// A live session moves off a node that left placement.
    Migrate {
        /// The session.
        session: Uuid,
        /// The node it must leave (if it is elsewhere already, nothing).
        from_node: String,
        /// The new node (the client's region stays what it was).
        to_node: String,
        /// The `call.migrate` event for the user.
        event: NewEvent,
    },
}

/// What `action` changes in the call described by `facts`, at `now`.
pub fn decide(
    facts: &CallFacts,
    action: &Action,
    now: OffsetDateTime,
) -> Result<CallChange, CallRefusal> {
    let call = &facts.call;
    if call.state == CallState::Ended {
        return Err(CallRefusal::State("the call has ended"));
    }
    match action {
        Action::Accept { user } => accept(facts, *user, now),
        Action::Decline { user } => decline(facts, *user, now),
        Action::Cancel { user } => {
            if *user != call.initiator_id {
                return Err(CallRefusal::Forbidden("only the caller can cancel"));
            }
            if call.state != CallState::Ringing {
                return Err(CallRefusal::State("the call was answered; end it instead"));
            }
            Ok(finish(
                facts,
                CallOutcome::Cancelled,
                Some(*user),
                now,
                "call.cancelled",
            ))
        }
        Action::End { user, admin } => {
            let party = *user == call.initiator_id || Some(*user) == call.callee_id;
            let allowed = if call.direct {
                party
            } else {
                *user == call.initiator_id || *admin
            };
            if !allowed {
                return Err(CallRefusal::Forbidden(
                    "only the initiator or a conversation admin can end a group call",
                ));
            }
            let (outcome, kind) = match call.state {
                CallState::Ringing if *user == call.initiator_id => {
                    (CallOutcome::Cancelled, "call.cancelled")
                }
                CallState::Ringing if call.direct => (CallOutcome::Declined, "call.declined"),
                _ => (CallOutcome::Completed, "call.ended"),
            };
            Ok(finish(facts, outcome, Some(*user), now, kind))
        }
        Action::RingTimeout => {
            let due = call
                .ring_deadline_us
                .is_some_and(|deadline| deadline <= crate::store::unix_micros(now));
            if call.state != CallState::Ringing || !due {
                return Err(CallRefusal::State("not ringing past its deadline"));
            }
            Ok(finish(facts, CallOutcome::Missed, None, now, "call.missed"))
        }
        Action::Idle { since } => {
            let idle = call.state == CallState::Active
                && facts.participants.is_empty()
                && call.answered_at.is_some_and(|answered| answered <= *since);
            if !idle {
                return Err(CallRefusal::State("not idle"));
            }
            Ok(finish(
                facts,
                CallOutcome::Completed,
                None,
                now,
                "call.ended",
            ))
        }
        Action::Join { participant } => join(facts, participant, now),
        Action::Leave {
            user,
            device,
            reason,
        } => leave(facts, *user, device, *reason, now),
        Action::Media {
            user,
            device,
            audio,
            video,
            screen,
        } => {
            let session = live_session(facts, *user, device)?;
            let updated = Participant {
                audio: *audio,
                video: *video,
                screen: *screen,
                ..session.clone()
            };
            Ok(CallChange {
                events: vec![participant_event("call.media_state", call, &updated, None)],
                update: Some(updated),
                ..CallChange::default()
            })
        }
        Action::Migrate {
            session,
            from_node,
            to_node,
            event,
        } => {
            let Some(current) = facts
                .participants
                .iter()
                .find(|p| p.id == *session && p.node_id == *from_node)
            else {
                return Err(CallRefusal::NotInCall);
            };
            Ok(CallChange {
                update: Some(Participant {
                    node_id: to_node.clone(),
                    placed_at: now,
                    ..current.clone()
                }),
                events: vec![event.clone()],
                ..CallChange::default()
            })
        }
    }
}

fn accept(facts: &CallFacts, user: Uuid, now: OffsetDateTime) -> Result<CallChange, CallRefusal> {
    let call = &facts.call;
    if !call.direct {
        // Joining is what counts in a group; accepting only tells the
        // user's other devices to stop ringing.
        if user == call.initiator_id {
            return Err(CallRefusal::Forbidden("you started this call"));
        }
        return Ok(CallChange {
            events: vec![call_event("call.accepted", call, Some(user))],
            ..CallChange::default()
        });
    }
    if Some(user) != call.callee_id {
        return Err(CallRefusal::Forbidden("only the callee can accept"));
    }
    if call.state != CallState::Ringing {
        return Err(CallRefusal::State("the call is not ringing"));
    }
    if facts.actor_lock.is_some_and(|other| other != call.id) {
        return Err(CallRefusal::Busy);
    }
    let answered = Call {
        state: CallState::Active,
        ring_deadline_us: None,
        answered_at: Some(now),
        ..call.clone()
    };
    Ok(CallChange {
        events: vec![call_event("call.accepted", &answered, Some(user))],
        call: Some(answered),
        lock: Some(user),
        ..CallChange::default()
    })
}

fn decline(facts: &CallFacts, user: Uuid, now: OffsetDateTime) -> Result<CallChange, CallRefusal> {
    let call = &facts.call;
    if call.direct {
        if Some(user) != call.callee_id {
            return Err(CallRefusal::Forbidden("only the callee can decline"));
        }
        if call.state != CallState::Ringing {
            return Err(CallRefusal::State("the call is not ringing"));
        }
        // The caller may already be in with a device: `finish` closes it.
        return Ok(finish(
            facts,
            CallOutcome::Declined,
            Some(user),
            now,
            "call.declined",
        ));
    }
    if user == call.initiator_id {
        return Err(CallRefusal::Forbidden(
            "you started this call; cancel or end it",
        ));
    }
    Ok(CallChange {
        events: vec![call_event("call.declined", call, Some(user))],
        declined: Some(user),
        ..CallChange::default()
    })
}

fn join(
    facts: &CallFacts,
    participant: &Participant,
    now: OffsetDateTime,
) -> Result<CallChange, CallRefusal> {
    let call = &facts.call;
    let user = participant.user_id;
    if facts.actor_lock.is_some_and(|other| other != call.id) {
        return Err(CallRefusal::Busy);
    }
    let mut events = Vec::new();
    let mut next = None;
    if call.direct {
        let party = user == call.initiator_id || Some(user) == call.callee_id;
        if !party {
            return Err(CallRefusal::Forbidden("not a party to this call"));
        }
        // The callee joining a ringing call answers it.
        if call.state == CallState::Ringing && Some(user) == call.callee_id {
            let answered = Call {
                state: CallState::Active,
                ring_deadline_us: None,
                answered_at: Some(now),
                ..call.clone()
            };
            events.push(call_event("call.accepted", &answered, Some(user)));
            next = Some(answered);
        }
    } else if call.state == CallState::Ringing && user != call.initiator_id {
        next = Some(Call {
            state: CallState::Active,
            ring_deadline_us: None,
            answered_at: Some(now),
            ..call.clone()
        });
    }
    let current = next.as_ref().unwrap_or(call);
    // The same device joining again replaces its old session.
    let close: Vec<Uuid> = facts
        .participants
        .iter()
        .filter(|p| p.user_id == user && p.device_id == participant.device_id)
        .map(|p| p.id)
        .collect();
    for old in facts.participants.iter().filter(|p| close.contains(&p.id)) {
        events.push(participant_event(
            "call.participant_left",
            current,
            old,
            Some("replaced"),
        ));
    }
    events.push(participant_event(
        "call.participant_joined",
        current,
        participant,
        None,
    ));
    Ok(CallChange {
        call: next,
        lock: Some(user),
        joined: Some(user),
        close,
        insert: Some(participant.clone()),
        events,
        ..CallChange::default()
    })
}

fn leave(
    facts: &CallFacts,
    user: Uuid,
    device: &str,
    reason: LeaveReason,
    now: OffsetDateTime,
) -> Result<CallChange, CallRefusal> {
    let call = &facts.call;
    let session = live_session(facts, user, device)?;
    let others: Vec<&Participant> = facts
        .participants
        .iter()
        .filter(|p| p.id != session.id)
        .collect();
    let user_still_in = others.iter().any(|p| p.user_id == user);
    let ends = if user_still_in {
        false
    } else if call.direct {
        // A 1:1 call is over when either side hangs up.
        true
    } else {
        others.is_empty()
    };
    if ends {
        let (outcome, kind) = match call.state {
            CallState::Ringing => (CallOutcome::Cancelled, "call.cancelled"),
            _ => (CallOutcome::Completed, "call.ended"),
        };
        let mut change = finish(facts, outcome, Some(user), now, kind);
        change.events.insert(
            0,
            participant_event(
                "call.participant_left",
                call,
                session,
                Some(reason.as_str()),
            ),
        );
        return Ok(change);
    }
    Ok(CallChange {
        close: vec![session.id],
        unlock: if user_still_in {
            Vec::new()
        } else {
            vec![user]
        },
        events: vec![participant_event(
            "call.participant_left",
            call,
            session,
            Some(reason.as_str()),
        )],
        ..CallChange::default()
    })
}

fn live_session<'a>(
    facts: &'a CallFacts,
    user: Uuid,
    device: &str,
) -> Result<&'a Participant, CallRefusal> {
    facts
        .participants
        .iter()
        .find(|p| p.user_id == user && p.device_id == device)
        .ok_or(CallRefusal::NotInCall)
}

/// The call ended with `outcome`.
fn ended(call: &Call, outcome: CallOutcome, by: Option<Uuid>, now: OffsetDateTime) -> Call {
    let duration_ms = call.answered_at.map_or(0, |answered| {
        (now - answered).whole_milliseconds().max(0) as i64
    });
    Call {
        state: CallState::Ended,
        outcome: OptionalOutcome(Some(outcome)),
        ring_deadline_us: None,
        ended_at: Some(now),
        ended_by: by,
        duration_ms,
        ..call.clone()
    }
}

/// Ends the call for everyone: every session closes, every lock goes.
fn finish(
    facts: &CallFacts,
    outcome: CallOutcome,
    by: Option<Uuid>,
    now: OffsetDateTime,
    kind: &'static str,
) -> CallChange {
    let ended = ended(&facts.call, outcome, by, now);
    CallChange {
        events: vec![call_event(kind, &ended, by)],
        call: Some(ended),
        unlock_all: true,
        close: facts.participants.iter().map(|p| p.id).collect(),
        declined: (outcome == CallOutcome::Declined).then_some(by).flatten(),
        ..CallChange::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CallKind;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn direct(caller: Uuid, callee: Uuid) -> Call {
        Call {
            id: Uuid::now_v7(),
            conversation_id: Uuid::now_v7(),
            direct: true,
            kind: CallKind::Video,
            video_codec: crate::store::CallVideoCodec::Vp8,
            initiator_id: caller,
            callee_id: Some(callee),
            state: CallState::Ringing,
            outcome: OptionalOutcome(None),
            created_at: t(0),
            ring_deadline_us: Some(crate::store::unix_micros(t(45))),
            answered_at: None,
            ended_at: None,
            ended_by: None,
            duration_ms: 0,
        }
    }

    fn session(call: &Call, user: Uuid, device: &str) -> Participant {
        Participant {
            id: Uuid::now_v7(),
            call_id: call.id,
            user_id: user,
            device_id: device.into(),
            node_id: "edge-1".into(),
            region: "eu".into(),
            audio: true,
            video: true,
            screen: false,
            joined_at: t(1),
            placed_at: t(1),
            left_at: None,
        }
    }

    fn facts(call: Call, participants: Vec<Participant>, lock: Option<Uuid>) -> CallFacts {
        CallFacts {
            call,
            participants,
            actor_lock: lock,
        }
    }

    fn kinds(change: &CallChange) -> Vec<&'static str> {
        change.events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_migration_places_the_session_anew_but_keeps_its_join_time() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let call = Call {
            state: CallState::Active,
            ..direct(a, b)
        };
        let old = session(&call, a, "d");
        let migrate = |from: &str| Action::Migrate {
            session: old.id,
            from_node: from.into(),
            to_node: "edge-2".into(),
            event: crate::calls::view::migrate_event(&old, from, serde_json::json!({})),
        };
        let change = decide(
            &facts(call.clone(), vec![old.clone()], None),
            &migrate("edge-1"),
            t(600),
        )
        .expect("moves");
        let moved = change.update.clone().expect("the session is updated");
        assert_eq!(moved.node_id, "edge-2");
        assert_eq!(
            moved.placed_at,
            t(600),
            "reconciliation counts a join token's life from here"
        );
        assert_eq!(moved.joined_at, t(1), "the call's history keeps the join");
        assert_eq!(kinds(&change), ["call.migrate"]);
        // Moved already (or by another replica): nothing.
        assert!(
            decide(
                &facts(call, vec![old.clone()], None),
                &migrate("edge-9"),
                t(600)
            )
            .is_err()
        );
    }

    #[test]
    fn ring_timeout_misses_once_and_only_when_due() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let call = direct(a, b);
        let early = decide(
            &facts(call.clone(), vec![], None),
            &Action::RingTimeout,
            t(44),
        );
        assert!(early.is_err(), "not due yet");
        let change = decide(&facts(call, vec![], None), &Action::RingTimeout, t(45)).unwrap();
        let ended = change.call.clone().unwrap();
        assert_eq!(
            (ended.state, ended.outcome.0),
            (CallState::Ended, Some(CallOutcome::Missed))
        );
        assert_eq!(kinds(&change), ["call.missed"]);
        assert!(change.unlock_all);
        // The second sweeper sees the ended call and is refused.
        assert!(decide(&facts(ended, vec![], None), &Action::RingTimeout, t(46)).is_err());
    }

    #[test]
    fn accepting_while_in_another_call_is_busy_and_answering_locks() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let call = direct(a, b);
        let other_call = Uuid::now_v7();
        assert_eq!(
            decide(
                &facts(call.clone(), vec![], Some(other_call)),
                &Action::Accept { user: b },
                t(3)
            ),
            Err(CallRefusal::Busy)
        );
        assert!(matches!(
            decide(
                &facts(call.clone(), vec![], None),
                &Action::Accept { user: a },
                t(3)
            ),
            Err(CallRefusal::Forbidden(_))
        ));
        let change = decide(
            &facts(call, vec![], None),
            &Action::Accept { user: b },
            t(3),
        )
        .unwrap();
        assert_eq!(change.lock, Some(b));
        let active = change.call.unwrap();
        assert_eq!(active.state, CallState::Active);
        assert_eq!(
            active.ring_deadline_us, None,
            "an answered call cannot be missed"
        );
    }

    #[test]
    fn either_side_leaving_ends_a_direct_call_with_its_duration() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut call = direct(a, b);
        call.state = CallState::Active;
        call.answered_at = Some(t(5));
        let (pa, pb) = (session(&call, a, "laptop"), session(&call, b, "phone"));
        let change = decide(
            &facts(call, vec![pa.clone(), pb.clone()], Some(Uuid::nil())),
            &Action::Leave {
                user: b,
                device: "phone".into(),
                reason: LeaveReason::Left,
            },
            t(65),
        )
        .unwrap();
        let ended = change.call.clone().unwrap();
        assert_eq!(ended.outcome.0, Some(CallOutcome::Completed));
        assert_eq!(ended.duration_ms, 60_000);
        assert_eq!(kinds(&change), ["call.participant_left", "call.ended"]);
        assert_eq!(change.close.len(), 2, "both sessions close");
    }

    #[test]
    fn a_group_call_ends_when_its_last_device_leaves() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut call = direct(a, b);
        call.direct = false;
        call.callee_id = None;
        let pa = session(&call, a, "laptop");
        // b joins: the call becomes active.
        let pb = session(&call, b, "phone");
        let joined = decide(
            &facts(call.clone(), vec![pa.clone()], None),
            &Action::Join {
                participant: pb.clone(),
            },
            t(2),
        )
        .unwrap();
        let active = joined.call.unwrap();
        assert_eq!(active.state, CallState::Active);
        assert_eq!(joined.lock, Some(b));
        // a leaves: b remains, no end; a's lock goes.
        let leave_a = decide(
            &facts(active.clone(), vec![pa.clone(), pb.clone()], None),
            &Action::Leave {
                user: a,
                device: "laptop".into(),
                reason: LeaveReason::Left,
            },
            t(10),
        )
        .unwrap();
        assert_eq!(leave_a.call, None);
        assert_eq!(leave_a.unlock, vec![a]);
        // b (the last) leaves: ended, completed.
        let leave_b = decide(
            &facts(active, vec![pb], None),
            &Action::Leave {
                user: b,
                device: "phone".into(),
                reason: LeaveReason::Gone,
            },
            t(20),
        )
        .unwrap();
        assert_eq!(
            leave_b.call.unwrap().outcome.0,
            Some(CallOutcome::Completed)
        );
    }

    #[test]
    fn declining_closes_the_callers_early_session_and_idle_calls_end() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let call = direct(a, b);
        let early = session(&call, a, "laptop");
        let change = decide(
            &facts(call.clone(), vec![early.clone()], None),
            &Action::Decline { user: b },
            t(3),
        )
        .unwrap();
        assert_eq!(change.close, vec![early.id]);
        assert_eq!(change.declined, Some(b));
        assert!(change.unlock_all);

        let mut answered = call;
        answered.state = CallState::Active;
        answered.answered_at = Some(t(5));
        let idle = Action::Idle { since: t(10) };
        assert!(
            decide(
                &facts(answered.clone(), vec![session(&answered, a, "x")], None),
                &idle,
                t(200)
            )
            .is_err()
        );
        assert!(
            decide(
                &facts(answered.clone(), vec![], None),
                &Action::Idle { since: t(4) },
                t(200)
            )
            .is_err()
        );
        let ended = decide(&facts(answered, vec![], None), &idle, t(200)).unwrap();
        assert_eq!(ended.call.unwrap().outcome.0, Some(CallOutcome::Completed));
    }

    #[test]
    fn only_the_initiator_or_an_admin_ends_a_group_call() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut call = direct(a, b);
        call.direct = false;
        call.callee_id = None;
        call.state = CallState::Active;
        let f = facts(call, vec![], None);
        assert!(
            decide(
                &f,
                &Action::End {
                    user: b,
                    admin: false
                },
                t(5)
            )
            .is_err()
        );
        assert!(
            decide(
                &f,
                &Action::End {
                    user: b,
                    admin: true
                },
                t(5)
            )
            .is_ok()
        );
        assert!(
            decide(
                &f,
                &Action::End {
                    user: a,
                    admin: false
                },
                t(5)
            )
            .is_ok()
        );
    }
}
