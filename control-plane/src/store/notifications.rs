//! The notification feed and the Web Push outbox behind
//! [`NotificationStore`], for both backends (like `sql.rs`).
//!
//! A notification row and its `notification.created` event are written in
//! one transaction ([`insert_notifications!`], also used by
//! `CallStore::update_call` for missed calls), so the live event, the feed
//! and a resume agree. Rows carry a `dedupe_key` so a retried trigger
//! notifies once. The same rows are the push outbox: a push worker claims
//! `pending` ones ([`NotificationStore::claim_pushes`]) with a compare on
//! the claim columns, so two replicas never push one notification twice.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::sql::{PgStore, SqliteStore};
use super::*;

text_enum!(
    /// Why someone is notified.
    NotificationKind, "notification kind" {
        /// A call to them ended without them answering.
        MissedCall = "missed_call",
        /// Someone asked to be their contact.
        ContactRequest = "contact_request",
        /// Someone added them to a group.
        AddedToGroup = "added_to_group",
        /// A message names them (`@username`).
        Mention = "mention",
        /// A message replies to one of theirs.
        Reply = "reply",
    }
);

impl Serialize for NotificationKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One entry of a user's feed (also the `notification.created` payload).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Notification {
    /// Id (UUIDv7: the feed's order and cursor).
    pub id: Uuid,
    /// Whose feed.
    #[serde(skip)]
    pub user_id: Uuid,
    /// `missed_call`, `contact_request`, `added_to_group`, `mention`, `reply`.
    #[sqlx(try_from = "String")]
    #[schema(value_type = String)]
    pub kind: NotificationKind,
    /// Who caused it.
    pub actor_id: Option<Uuid>,
    /// Their display name (or username) at the time.
    pub actor_name: Option<String>,
    /// The conversation it is about.
    pub conversation_id: Option<Uuid>,
    /// The message it is about (mention, reply).
    pub message_id: Option<Uuid>,
    /// The call it is about (missed call).
    pub call_id: Option<Uuid>,
    /// A short plain-text preview: the message's start, the group's name.
    pub excerpt: Option<String>,
    /// One notification per (user, key).
    #[serde(skip)]
    pub dedupe_key: Option<String>,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When its user read it (None: unread).
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

impl Notification {
    /// A new unread notification for `user`.
    pub fn new(user: Uuid, kind: NotificationKind, now: OffsetDateTime) -> Self {
        Notification {
            id: Uuid::now_v7(),
            user_id: user,
            kind,
            actor_id: None,
            actor_name: None,
            conversation_id: None,
            message_id: None,
            call_id: None,
            excerpt: None,
            dedupe_key: None,
            created_at: now,
            read_at: None,
        }
    }

    /// Its `notification.created` event, to its user.
    pub fn event(&self) -> NewEvent {
        NewEvent {
            conversation_id: None,
            user_id: Some(self.user_id),
            kind: "notification.created",
            // Our own type always serializes.
            payload: serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned()),
        }
    }
}

/// What a push worker did with a claimed notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Delivered to at least one push service.
    Sent,
    /// The user had a live connection: the event reached them.
    Online,
    /// The user has no push subscription.
    NoSubscription,
    /// Every push service refused it, or it was read before a worker got to it.
    Failed,
    /// A push service failed for now: let a worker claim it again later
    /// (until the attempts run out).
    Retry,
}

impl PushOutcome {
    fn state(self) -> &'static str {
        match self {
            PushOutcome::Sent => "sent",
            PushOutcome::Online => "online",
            PushOutcome::NoSubscription => "none",
            PushOutcome::Failed | PushOutcome::Retry => "failed",
        }
    }
}

/// A browser's Web Push subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PushSubscription {
    /// Id.
    pub id: Uuid,
    /// Whose.
    pub user_id: Uuid,
    /// The push service URL to POST to.
    pub endpoint: String,
    /// The browser's P-256 public key (65 bytes, uncompressed).
    pub p256dh: Vec<u8>,
    /// The browser's authentication secret (16 bytes).
    pub auth: Vec<u8>,
    /// When subscribed.
    pub created_at: OffsetDateTime,
}

/// Columns of `notifications`.
macro_rules! notification_cols {
    () => {
        "id, user_id, kind, actor_id, actor_name, conversation_id, message_id, call_id, excerpt, \
         dedupe_key, created_at, read_at"
    };
}

/// Inserts notifications in transaction `$tx` (skipping any whose
/// `(user_id, dedupe_key)` exists) and appends the `notification.created`
/// event of each one inserted; evaluates to the ones inserted.
macro_rules! insert_notifications {
    ($tx:ident, $notes:expr, $now:expr) => {{
        let mut inserted: Vec<Notification> = Vec::new();
        for note in $notes {
            let rows = sqlx::query(
                "INSERT INTO notifications (id, user_id, kind, actor_id, actor_name, \
                 conversation_id, message_id, call_id, excerpt, dedupe_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (user_id, dedupe_key) DO NOTHING",
            )
            .bind(note.id)
            .bind(note.user_id)
            .bind(note.kind.as_str())
            .bind(note.actor_id)
            .bind(&note.actor_name)
            .bind(note.conversation_id)
            .bind(note.message_id)
            .bind(note.call_id)
            .bind(&note.excerpt)
            .bind(&note.dedupe_key)
            .bind(note.created_at)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
            if rows == 1 {
                inserted.push(note.clone());
            }
        }
        let events: Vec<NewEvent> = inserted.iter().map(Notification::event).collect();
        append_events!($tx, &events, $now);
        inserted
    }};
}

/// The feed, its read state, the push outbox and push subscriptions.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores notifications with their events (skipping duplicates by
    /// `dedupe_key`); returns the ones stored now.
    async fn notify(
        &self,
        notes: &[Notification],
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Notification>>;
    /// `user`'s notifications, newest first, older than `before`.
    async fn notifications(
        &self,
        user: Uuid,
        unread_only: bool,
        before: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<Notification>>;
    /// How many of `user`'s notifications are unread.
    async fn unread_notifications(&self, user: Uuid) -> StoreResult<i64>;
    /// Marks `user`'s notifications read: the ones in `ids`, or all when
    /// `ids` is `None`, appending `render(unread_after)` if any changed.
    /// Returns the unread count after.
    async fn mark_notifications_read(
        &self,
        user: Uuid,
        ids: Option<&[Uuid]>,
        render: &(dyn Fn(i64) -> NewEvent + Send + Sync),
        now: OffsetDateTime,
    ) -> StoreResult<i64>;

    /// Claims up to `limit` notifications waiting for a push (never
    /// claimed, or claimed before `stale_before` by a worker that did not
    /// finish), oldest first.
    async fn claim_pushes(
        &self,
        stale_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: i64,
    ) -> StoreResult<Vec<Notification>>;
    /// Records what a worker did with a claimed notification. `Retry`
    /// releases the claim unless `max_attempts` are used up.
    async fn finish_push(
        &self,
        id: Uuid,
        outcome: PushOutcome,
        max_attempts: i32,
    ) -> StoreResult<()>;

    /// Stores a subscription (an endpoint already stored moves to this
    /// user with these keys). Returns the stored row's id.
    async fn add_push_subscription(&self, subscription: &PushSubscription) -> StoreResult<Uuid>;
    /// `user`'s subscriptions.
    async fn push_subscriptions(&self, user: Uuid) -> StoreResult<Vec<PushSubscription>>;
    /// Removes one of `user`'s subscriptions. Whether it existed.
    async fn remove_push_subscription(&self, user: Uuid, id: Uuid) -> StoreResult<bool>;
    /// Removes a subscription the push service says is gone (404/410).
    async fn drop_push_subscription(&self, id: Uuid) -> StoreResult<()>;
    /// The VAPID key all replicas share: inserts `candidate` if there is
    /// none yet and returns whichever is stored.
    async fn vapid_key(&self, candidate: &SigningKeyRecord) -> StoreResult<SigningKeyRecord>;
}

macro_rules! notification_store {
    ($store:ident) => {
        #[async_trait]
        impl NotificationStore for $store {
            async fn notify(
                &self,
                notes: &[Notification],
                now: OffsetDateTime,
            ) -> StoreResult<Vec<Notification>> {
                if notes.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.pool.begin().await?;
                let inserted = insert_notifications!(tx, notes, now);
                tx.commit().await?;
                Ok(inserted)
            }

            async fn notifications(
                &self,
                user: Uuid,
                unread_only: bool,
                before: Option<Uuid>,
                limit: i64,
            ) -> StoreResult<Vec<Notification>> {
                Ok(sqlx::query_as::<_, Notification>(concat!(
                    "SELECT ",
                    notification_cols!(),
                    " FROM notifications WHERE user_id = $1 \
                      AND ($2 = FALSE OR read_at IS NULL) \
                      AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
                ))
                .bind(user)
                .bind(unread_only)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn unread_notifications(&self, user: Uuid) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
                )
                .bind(user)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn mark_notifications_read(
                &self,
                user: Uuid,
                ids: Option<&[Uuid]>,
                render: &(dyn Fn(i64) -> NewEvent + Send + Sync),
                now: OffsetDateTime,
            ) -> StoreResult<i64> {
                let mut tx = self.pool.begin().await?;
                let changed = match ids {
                    None => sqlx::query(
                        "UPDATE notifications SET read_at = $2 \
                         WHERE user_id = $1 AND read_at IS NULL",
                    )
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                    Some(ids) => {
                        let mut changed = 0;
                        for id in ids {
                            changed += sqlx::query(
                                "UPDATE notifications SET read_at = $3 \
                                 WHERE id = $1 AND user_id = $2 AND read_at IS NULL",
                            )
                            .bind(id)
                            .bind(user)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        }
                        changed
                    }
                };
                let unread: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
                )
                .bind(user)
                .fetch_one(&mut *tx)
                .await?;
                if changed > 0 {
                    append_events!(tx, [render(unread)], now);
                }
                tx.commit().await?;
                Ok(unread)
            }

            async fn claim_pushes(
                &self,
                stale_before: OffsetDateTime,
                now: OffsetDateTime,
                limit: i64,
            ) -> StoreResult<Vec<Notification>> {
                // The claim conditions stand in the outer WHERE as well, so
                // Postgres re-checks them on a row another replica claimed
                // meanwhile and skips it (the inner select ran on an older
                // snapshot).
                Ok(sqlx::query_as::<_, Notification>(concat!(
                    "UPDATE notifications SET push_claimed_at = $1, \
                     push_attempts = push_attempts + 1 \
                     WHERE push_state = 'pending' \
                       AND (push_claimed_at IS NULL OR push_claimed_at < $2) \
                       AND id IN (SELECT id FROM notifications WHERE push_state = 'pending' \
                         AND (push_claimed_at IS NULL OR push_claimed_at < $2) \
                         ORDER BY created_at LIMIT $3) \
                     RETURNING ",
                    notification_cols!()
                ))
                .bind(now)
                .bind(stale_before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn finish_push(
                &self,
                id: Uuid,
                outcome: PushOutcome,
                max_attempts: i32,
            ) -> StoreResult<()> {
                if outcome == PushOutcome::Retry {
                    sqlx::query(
                        "UPDATE notifications SET \
                         push_state = CASE WHEN push_attempts >= $2 THEN 'failed' ELSE 'pending' END, \
                         push_claimed_at = NULL WHERE id = $1",
                    )
                    .bind(id)
                    .bind(max_attempts)
                    .execute(&self.pool)
                    .await?;
                } else {
                    sqlx::query("UPDATE notifications SET push_state = $2 WHERE id = $1")
                        .bind(id)
                        .bind(outcome.state())
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }

            async fn add_push_subscription(
                &self,
                subscription: &PushSubscription,
            ) -> StoreResult<Uuid> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (endpoint) DO UPDATE SET user_id = $2, p256dh = $4, auth = $5, \
                     created_at = $6 RETURNING id",
                )
                .bind(subscription.id)
                .bind(subscription.user_id)
                .bind(&subscription.endpoint)
                .bind(&subscription.p256dh)
                .bind(&subscription.auth)
                .bind(subscription.created_at)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn push_subscriptions(&self, user: Uuid) -> StoreResult<Vec<PushSubscription>> {
                Ok(sqlx::query_as::<_, PushSubscription>(
                    "SELECT id, user_id, endpoint, p256dh, auth, created_at \
                     FROM push_subscriptions WHERE user_id = $1 ORDER BY created_at",
                )
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn remove_push_subscription(&self, user: Uuid, id: Uuid) -> StoreResult<bool> {
                Ok(sqlx::query("DELETE FROM push_subscriptions WHERE id = $1 AND user_id = $2")
                    .bind(id)
                    .bind(user)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn drop_push_subscription(&self, id: Uuid) -> StoreResult<()> {
                sqlx::query("DELETE FROM push_subscriptions WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn vapid_key(
                &self,
                candidate: &SigningKeyRecord,
            ) -> StoreResult<SigningKeyRecord> {
                first_key!(self.pool, "vapid", candidate)
            }
        }
    };
}

notification_store!(PgStore);
notification_store!(SqliteStore);
