//! The call tables behind [`CallStore`], for both backends (like `sql.rs`).
//!
//! Every change to a live call goes through [`CallStore::update_call`]: it
//! locks the call's row with a no-op `UPDATE` (the first statement, so
//! SQLite takes its write lock and Postgres serialises writers of one
//! call), reads the [`CallFacts`], lets the pure rules decide, and applies
//! the [`CallChange`] with its events in the same transaction. So two
//! replicas that both see a ring deadline pass produce one `call.missed`,
//! and the last two participants leaving at once end the call once.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::sql::{PgStore, SqliteStore};
use super::*;

/// Columns of `calls`, bare (for `RETURNING`: SQLite allows no
/// qualified names there) or qualified with `c.`.
macro_rules! call_cols {
    () => {
        "id, conversation_id, direct, kind, video_codec, initiator_id, callee_id, state, \
         outcome, created_at, ring_deadline_us, answered_at, ended_at, ended_by, duration_ms"
    };
    (c) => {
        "c.id, c.conversation_id, c.direct, c.kind, c.video_codec, c.initiator_id, c.callee_id, \
         c.state, c.outcome, c.created_at, c.ring_deadline_us, c.answered_at, c.ended_at, \
         c.ended_by, c.duration_ms"
    };
}

macro_rules! participant_cols {
    () => {
        "id, call_id, user_id, device_id, node_id, region, audio, video, screen, joined_at, placed_at, \
         left_at"
    };
}

/// The query for the live sessions of call `$call`, by join time.
macro_rules! live_participants {
    ($call:expr) => {
        sqlx::query_as::<_, Participant>(concat!(
            "SELECT ",
            participant_cols!(),
            " FROM call_participants WHERE call_id = $1 AND left_at IS NULL \
             ORDER BY joined_at, id"
        ))
        .bind($call)
    };
}

/// A user's outcome of a call (see [`CallHistoryEntry::outcome`]), as SQL
/// over `calls c` joined with `call_users cu`.
macro_rules! user_outcome {
    () => {
        "CASE WHEN c.state <> 'ended' THEN NULL \
              WHEN c.initiator_id = cu.user_id THEN c.outcome \
              WHEN cu.joined THEN 'completed' \
              WHEN cu.declined THEN 'declined' \
              WHEN c.outcome = 'busy' THEN 'busy' \
              ELSE 'missed' END"
    };
}

/// In transaction `$tx`, after call `$call` ended: notifies everyone whose
/// outcome of it is `missed` (see `user_outcome!`) and evaluates to the
/// notifications stored. The call id is the dedupe key, so a call is one
/// missed-call notification per person however it ended.
macro_rules! missed_call_notifications {
    ($tx:ident, $call:expr, $now:expr) => {{
        let missed: Vec<(Uuid, Uuid, Option<Uuid>, Option<String>, Option<String>)> =
            sqlx::query_as(concat!(
                "SELECT cu.user_id, c.conversation_id, c.initiator_id, u.username, u.display_name \
                 FROM call_users cu JOIN calls c ON c.id = cu.call_id \
                 LEFT JOIN users u ON u.id = c.initiator_id WHERE cu.call_id = $1 AND ",
                user_outcome!(),
                " = 'missed'"
            ))
            .bind($call)
            .fetch_all(&mut *$tx)
            .await?;
        let notes: Vec<Notification> = missed
            .into_iter()
            .map(|(user, conversation, caller, username, display_name)| {
                let mut note = Notification::new(user, NotificationKind::MissedCall, $now);
                note.actor_id = caller;
                note.actor_name = display_name.filter(|d| !d.is_empty()).or(username);
                note.conversation_id = Some(conversation);
                note.call_id = Some($call);
                note.dedupe_key = Some(format!("call:{}", $call));
                note
            })
            .collect();
        insert_notifications!($tx, &notes, $now)
    }};
}

/// The rules `update_call` applies (`calls::lifecycle::decide` with the
/// action bound).
pub type DecideCall<'a> =
    dyn for<'f> Fn(&'f CallFacts) -> Result<CallChange, CallRefusal> + Send + Sync + 'a;

#[derive(sqlx::FromRow)]
struct HistoryRow {
    #[sqlx(flatten)]
    call: Call,
    user_outcome: Option<String>,
}

/// Calls: start, every later change, history and the background sweeps.
#[async_trait]
pub trait CallStore: Send + Sync + 'static {
    /// Starts `call` (state `Ringing`, with its deadline): records it for
    /// every member of its conversation and takes the initiator's busy
    /// lock; for a direct call whose callee is in another call, records it
    /// as ended `busy` instead. Appends `render(outcome)`.
    async fn start_call(
        &self,
        call: &Call,
        render: RenderStartEvents,
        now: OffsetDateTime,
    ) -> StoreResult<StartOutcome>;

    /// Changes call `id` atomically: reads the facts (with `actor`'s busy
    /// lock) under the call's row lock, asks `decide`, applies its answer.
    /// `NotFound` when there is no such call.
    async fn update_call(
        &self,
        id: Uuid,
        actor: Option<Uuid>,
        now: OffsetDateTime,
        decide: &DecideCall<'_>,
    ) -> StoreResult<Result<CallChange, CallRefusal>>;

    /// A call.
    async fn call(&self, id: Uuid) -> StoreResult<Option<Call>>;
    /// Whether `user` was rung for or joined `call`.
    async fn call_invited(&self, call: Uuid, user: Uuid) -> StoreResult<bool>;
    /// The devices still in `call`, by join time.
    async fn live_participants(&self, call: Uuid) -> StoreResult<Vec<Participant>>;

    /// `user`'s calls, newest first, older than the call `before`.
    async fn call_history(
        &self,
        user: Uuid,
        before: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<CallHistoryEntry>>;
    /// How many calls to `user` they missed (after the call `after`, if
    /// given); calls they started are never missed by them.
    async fn missed_calls(&self, user: Uuid, after: Option<Uuid>) -> StoreResult<i64>;
    /// `user`'s ended calls grouped by kind and their outcome for the user.
    async fn call_stats(&self, user: Uuid) -> StoreResult<Vec<CallStatsRow>>;
    /// Removes an ended `call` from `user`'s history (history, missed
    /// count and stats skip it; the other people keep theirs). Whether
    /// `user` had it.
    async fn hide_call(&self, call: Uuid, user: Uuid) -> StoreResult<bool>;
    /// The call `user` is in now (ringing as its caller, accepted or
    /// joined: the one the busy rule holds them to), if any.
    async fn current_call(&self, user: Uuid) -> StoreResult<Option<Uuid>>;

    /// Calls still ringing whose deadline is at or before `now_us`.
    async fn due_ringing_calls(&self, now_us: i64, limit: i64) -> StoreResult<Vec<Uuid>>;
    /// Active calls with no live participant.
    async fn empty_active_calls(&self, limit: i64) -> StoreResult<Vec<Uuid>>;
    /// The nodes that have live participants.
    async fn participant_nodes(&self) -> StoreResult<Vec<String>>;
    /// The live participants placed on `node`.
    async fn node_participants(&self, node: &str) -> StoreResult<Vec<Participant>>;
    /// The call of `conversation` that has not ended, if any (there is at
    /// most one).
    async fn live_call_of(&self, conversation: Uuid) -> StoreResult<Option<Uuid>>;
    /// The participant sessions with these ids, live or left (unknown ids
    /// are missing from the answer).
    async fn participants_by_id(&self, ids: &[Uuid]) -> StoreResult<Vec<Participant>>;
}

macro_rules! call_store {
    ($store:ident) => {
        #[async_trait]
        impl CallStore for $store {
            async fn start_call(
                &self,
                call: &Call,
                render: RenderStartEvents,
                now: OffsetDateTime,
            ) -> StoreResult<StartOutcome> {
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO calls (id, conversation_id, direct, kind, initiator_id, callee_id, \
                     state, outcome, created_at, ring_deadline_us, answered_at, ended_at, ended_by, \
                     duration_ms, video_codec) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9, NULL, NULL, NULL, 0, $10)",
                )
                .bind(call.id)
                .bind(call.conversation_id)
                .bind(call.direct)
                .bind(call.kind.as_str())
                .bind(call.initiator_id)
                .bind(call.callee_id)
                .bind(call.state.as_str())
                .bind(call.created_at)
                .bind(call.ring_deadline_us)
                .bind(call.video_codec.as_str())
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        tx.rollback().await?;
                        let live: Option<Uuid> = sqlx::query_scalar(
                            "SELECT id FROM calls WHERE conversation_id = $1 AND state <> 'ended'",
                        )
                        .bind(call.conversation_id)
                        .fetch_optional(&self.pool)
                        .await?;
                        // Ended in between: the caller may simply try again.
                        return live
                            .map(StartOutcome::InProgress)
                            .ok_or(StoreError::Conflict("call_in_progress"));
                    }
                    Err(e) => return Err(e.into()),
                }
                sqlx::query(
                    "INSERT INTO call_users (call_id, user_id, joined, declined) \
                     SELECT $1, user_id, $3, $3 FROM members WHERE conversation_id = $2",
                )
                .bind(call.id)
                .bind(call.conversation_id)
                .bind(false)
                .execute(&mut *tx)
                .await?;
                let locked = sqlx::query(
                    "INSERT INTO call_locks (user_id, call_id) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(call.initiator_id)
                .bind(call.id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !locked {
                    tx.rollback().await?;
                    return Ok(StartOutcome::CallerBusy);
                }
                let mut outcome = StartOutcome::Ringing(call.clone());
                if let Some(callee) = call.callee_id {
                    let callee_busy: Option<Uuid> =
                        sqlx::query_scalar("SELECT call_id FROM call_locks WHERE user_id = $1")
                            .bind(callee)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if callee_busy.is_some() {
                        let ended = sqlx::query_as::<_, Call>(concat!(
                            "UPDATE calls SET state = 'ended', outcome = 'busy', \
                             ring_deadline_us = NULL, ended_at = $2 WHERE id = $1 RETURNING ",
                            call_cols!()
                        ))
                        .bind(call.id)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        sqlx::query("DELETE FROM call_locks WHERE call_id = $1")
                            .bind(call.id)
                            .execute(&mut *tx)
                            .await?;
                        outcome = StartOutcome::CalleeBusy(ended);
                    }
                }
                let events = render(&outcome);
                append_events!(tx, &events, now);
                tx.commit().await?;
                Ok(outcome)
            }

            async fn update_call(
                &self,
                id: Uuid,
                actor: Option<Uuid>,
                now: OffsetDateTime,
                decide: &DecideCall<'_>,
            ) -> StoreResult<Result<CallChange, CallRefusal>> {
                let mut tx = self.pool.begin().await?;
                let Some(call) = sqlx::query_as::<_, Call>(concat!(
                    "UPDATE calls SET state = state WHERE id = $1 RETURNING ",
                    call_cols!()
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    return Err(StoreError::NotFound);
                };
                let participants = live_participants!(id).fetch_all(&mut *tx).await?;
                let actor_lock = match actor {
                    Some(user) => {
                        sqlx::query_scalar("SELECT call_id FROM call_locks WHERE user_id = $1")
                            .bind(user)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                    None => None,
                };
                let facts = CallFacts {
                    call,
                    participants,
                    actor_lock,
                };
                let change = match decide(&facts) {
                    Ok(change) => change,
                    Err(refusal) => {
                        tx.rollback().await?;
                        return Ok(Err(refusal));
                    }
                };
                if let Some(next) = &change.call {
                    sqlx::query(
                        "UPDATE calls SET state = $2, outcome = $3, ring_deadline_us = $4, \
                         answered_at = $5, ended_at = $6, ended_by = $7, duration_ms = $8 \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(next.state.as_str())
                    .bind(next.outcome.0.map(CallOutcome::as_str))
                    .bind(next.ring_deadline_us)
                    .bind(next.answered_at)
                    .bind(next.ended_at)
                    .bind(next.ended_by)
                    .bind(next.duration_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(user) = change.lock {
                    sqlx::query(
                        "INSERT INTO call_locks (user_id, call_id) VALUES ($1, $2) \
                         ON CONFLICT (user_id) DO NOTHING",
                    )
                    .bind(user)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    let holder: Option<Uuid> =
                        sqlx::query_scalar("SELECT call_id FROM call_locks WHERE user_id = $1")
                            .bind(user)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if holder != Some(id) {
                        tx.rollback().await?;
                        return Ok(Err(CallRefusal::Busy));
                    }
                }
                for user in &change.unlock {
                    sqlx::query("DELETE FROM call_locks WHERE user_id = $1 AND call_id = $2")
                        .bind(user)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                if change.unlock_all {
                    sqlx::query("DELETE FROM call_locks WHERE call_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                for (user, column) in [(change.joined, "joined"), (change.declined, "declined")] {
                    let Some(user) = user else { continue };
                    let sql = if column == "joined" {
                        "INSERT INTO call_users (call_id, user_id, joined, declined) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (call_id, user_id) DO UPDATE SET joined = $3"
                    } else {
                        "INSERT INTO call_users (call_id, user_id, joined, declined) \
                         VALUES ($1, $2, $4, $3) ON CONFLICT (call_id, user_id) DO UPDATE SET declined = $3"
                    };
                    sqlx::query(sql)
                        .bind(id)
                        .bind(user)
                        .bind(true)
                        .bind(false)
                        .execute(&mut *tx)
                        .await?;
                }
                for session in &change.close {
                    sqlx::query(
                        "UPDATE call_participants SET left_at = $2 WHERE id = $1 AND left_at IS NULL",
                    )
                    .bind(session)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(p) = &change.insert {
                    sqlx::query(
                        "INSERT INTO call_participants (id, call_id, user_id, device_id, node_id, \
                         region, audio, video, screen, joined_at, placed_at, left_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL)",
                    )
                    .bind(p.id)
                    .bind(id)
                    .bind(p.user_id)
                    .bind(&p.device_id)
                    .bind(&p.node_id)
                    .bind(&p.region)
                    .bind(p.audio)
                    .bind(p.video)
                    .bind(p.screen)
                    .bind(p.joined_at)
                    .bind(p.placed_at)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(p) = &change.update {
                    sqlx::query(
                        "UPDATE call_participants SET node_id = $2, region = $3, audio = $4, \
                         video = $5, screen = $6, placed_at = $7 WHERE id = $1 AND left_at IS NULL",
                    )
                    .bind(p.id)
                    .bind(&p.node_id)
                    .bind(&p.region)
                    .bind(p.audio)
                    .bind(p.video)
                    .bind(p.screen)
                    .bind(p.placed_at)
                    .execute(&mut *tx)
                    .await?;
                }
                append_events!(tx, &change.events, now);
                let mut change = change;
                if change.call.as_ref().is_some_and(|c| c.state == CallState::Ended) {
                    change.notified = missed_call_notifications!(tx, id, now);
                }
                tx.commit().await?;
                Ok(Ok(change))
            }

            async fn call(&self, id: Uuid) -> StoreResult<Option<Call>> {
                Ok(sqlx::query_as::<_, Call>(concat!(
                    "SELECT ",
                    call_cols!(c),
                    " FROM calls c WHERE c.id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn call_invited(&self, call: Uuid, user: Uuid) -> StoreResult<bool> {
                let found: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM call_users WHERE call_id = $1 AND user_id = $2",
                )
                .bind(call)
                .bind(user)
                .fetch_one(&self.pool)
                .await?;
                Ok(found > 0)
            }

            async fn live_participants(&self, call: Uuid) -> StoreResult<Vec<Participant>> {
                Ok(live_participants!(call).fetch_all(&self.pool).await?)
            }

            async fn call_history(
                &self,
                user: Uuid,
                before: Option<Uuid>,
                limit: i64,
            ) -> StoreResult<Vec<CallHistoryEntry>> {
                let rows = sqlx::query_as::<_, HistoryRow>(concat!(
                    "SELECT ",
                    call_cols!(c),
                    ", ",
                    user_outcome!(),
                    " AS user_outcome FROM call_users cu JOIN calls c ON c.id = cu.call_id \
                     WHERE cu.user_id = $1 AND NOT cu.hidden AND ($2 IS NULL OR c.id < $2) \
                     ORDER BY c.id DESC LIMIT $3"
                ))
                .bind(user)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| CallHistoryEntry {
                        call: row.call,
                        outcome: row.user_outcome.as_deref().and_then(CallOutcome::parse),
                    })
                    .collect())
            }

            async fn missed_calls(&self, user: Uuid, after: Option<Uuid>) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(concat!(
                    "SELECT COUNT(*) FROM (SELECT ",
                    user_outcome!(),
                    " AS o FROM call_users cu JOIN calls c ON c.id = cu.call_id \
                     WHERE cu.user_id = $1 AND NOT cu.hidden AND c.initiator_id <> $1 \
                       AND ($2 IS NULL OR c.id > $2)) t WHERE t.o = 'missed'"
                ))
                .bind(user)
                .bind(after)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn call_stats(&self, user: Uuid) -> StoreResult<Vec<CallStatsRow>> {
                let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(concat!(
                    "SELECT t.kind, t.o, COUNT(*), CAST(COALESCE(SUM(t.duration_ms), 0) AS BIGINT) \
                     FROM (SELECT c.kind AS kind, c.duration_ms AS duration_ms, ",
                    user_outcome!(),
                    " AS o FROM call_users cu JOIN calls c ON c.id = cu.call_id \
                     WHERE cu.user_id = $1 AND NOT cu.hidden AND c.state = 'ended') t \
                     GROUP BY t.kind, t.o ORDER BY t.kind, t.o"
                ))
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(kind, outcome, calls, total)| {
                        Some(CallStatsRow {
                            kind: CallKind::parse(&kind)?,
                            outcome: CallOutcome::parse(&outcome)?,
                            calls,
                            total_duration_ms: total,
                        })
                    })
                    .collect())
            }

            async fn hide_call(&self, call: Uuid, user: Uuid) -> StoreResult<bool> {
                let hidden = sqlx::query(
                    "UPDATE call_users SET hidden = TRUE WHERE call_id = $1 AND user_id = $2",
                )
                .bind(call)
                .bind(user)
                .execute(&self.pool)
                .await?;
                Ok(hidden.rows_affected() > 0)
            }

            async fn current_call(&self, user: Uuid) -> StoreResult<Option<Uuid>> {
                Ok(
                    sqlx::query_scalar("SELECT call_id FROM call_locks WHERE user_id = $1")
                        .bind(user)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            async fn due_ringing_calls(&self, now_us: i64, limit: i64) -> StoreResult<Vec<Uuid>> {
                Ok(sqlx::query_scalar(
                    "SELECT id FROM calls WHERE state = 'ringing' AND ring_deadline_us <= $1 \
                     ORDER BY ring_deadline_us LIMIT $2",
                )
                .bind(now_us)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn empty_active_calls(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
                Ok(sqlx::query_scalar(
                    "SELECT c.id FROM calls c WHERE c.state = 'active' AND NOT EXISTS \
                     (SELECT 1 FROM call_participants p WHERE p.call_id = c.id AND p.left_at IS NULL) \
                     ORDER BY c.id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn participant_nodes(&self) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT node_id FROM call_participants WHERE left_at IS NULL",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn node_participants(&self, node: &str) -> StoreResult<Vec<Participant>> {
                Ok(sqlx::query_as::<_, Participant>(concat!(
                    "SELECT ",
                    participant_cols!(),
                    " FROM call_participants WHERE node_id = $1 AND left_at IS NULL \
                     ORDER BY joined_at, id"
                ))
                .bind(node)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn live_call_of(&self, conversation: Uuid) -> StoreResult<Option<Uuid>> {
                Ok(sqlx::query_scalar(
                    "SELECT id FROM calls WHERE conversation_id = $1 AND state <> 'ended' LIMIT 1",
                )
                .bind(conversation)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn participants_by_id(&self, ids: &[Uuid]) -> StoreResult<Vec<Participant>> {
                let mut found = Vec::new();
                // Bounded statements (SQLite allows 32766 parameters).
                for chunk in ids.chunks(500) {
                    let mut query = sqlx::QueryBuilder::new(concat!(
                        "SELECT ",
                        participant_cols!(),
                        " FROM call_participants WHERE id IN ("
                    ));
                    let mut list = query.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    query.push(")");
                    found.extend(
                        query
                            .build_query_as::<Participant>()
                            .fetch_all(&self.pool)
                            .await?,
                    );
                }
                Ok(found)
            }
        }
    };
}

call_store!(PgStore);
call_store!(SqliteStore);
